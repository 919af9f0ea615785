//! Fail points: named places in the checkpoint lifecycle where tests inject
//! a failure (an error, a panic, a crash, a delay) into the production code.
//!
//! Compiled in only with the `failpoints` feature (the test build turns it
//! on); without it [`check`] is an empty inline function and the `fail`
//! crate is not even a dependency. Every fail point is listed in [`ALL`], so
//! a configuration naming an unknown one is rejected instead of silently
//! doing nothing.
//!
//! Actions are those of the `fail` crate (`panic`, `sleep(ms)`, `N*action`,
//! `P%action`, `off`, …) plus two `return` forms this module gives meaning
//! to: `return` / `return(error)` makes [`check`] return [`InjectedFault`],
//! which the call site turns into the failure natural at that point; and
//! `return(crash)` ends the process on the spot, without unwinding,
//! flushing or cleanup, like `kill -9` at exactly that step.

/// Every fail point, in lifecycle order.
pub const ALL: &[&str] = &[
    "coordinator::trigger",
    "source::inject_barrier",
    "task::align",
    "task::sync_phase",
    "snapshot::upload",
    "coordinator::ack",
    "coordinator::write_metadata",
    "coordinator::after_metadata",
    "coordinator::notify_complete",
    "coordinator::subsume",
    "coordinator::delete_shared",
    "coordinator::orphan_sweep",
    "restore::download",
    "sink::pre_commit",
    "sink::commit",
];

/// The failure a fail point configured with `return` injects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected failure at fail point {0}")]
pub struct InjectedFault(pub &'static str);

/// Evaluates fail point `name`: `Err` when it is configured to return an
/// error; ends the process when configured `return(crash)`; otherwise runs
/// the configured action (panic, sleep, …) or nothing.
#[inline(always)]
pub fn check(name: &'static str) -> Result<(), InjectedFault> {
    #[cfg(feature = "failpoints")]
    {
        debug_assert!(ALL.contains(&name), "undeclared fail point {name}");
        fail::fail_point!(name, |arg: Option<String>| {
            if arg.as_deref() == Some("crash") {
                eprintln!("fail point {name}: crashing the process");
                std::process::exit(137);
            }
            eprintln!("fail point {name}: injecting an error");
            Err(InjectedFault(name))
        });
    }
    let _ = name;
    Ok(())
}

/// Whether this build has fail points compiled in.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Configures fail points from `spec` (`name=actions;name=actions`, the
/// `CUTPOINT_FAILPOINTS` variable of the binary). Unknown names, bad
/// actions, or any configuration in a build without fail points are errors.
pub fn configure(spec: &str) -> Result<(), String> {
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, actions) = part
            .split_once('=')
            .ok_or_else(|| format!("fail point setting {part:?}: expected name=actions"))?;
        let name = name.trim();
        if !ALL.contains(&name) {
            return Err(format!(
                "unknown fail point {name:?}; known: {}",
                ALL.join(", ")
            ));
        }
        #[cfg(feature = "failpoints")]
        fail::cfg(name, actions.trim()).map_err(|e| format!("fail point {name}: {e}"))?;
        #[cfg(not(feature = "failpoints"))]
        {
            let _ = actions;
            return Err("this build has no fail points (build with --features failpoints)".into());
        }
    }
    Ok(())
}

/// Turns every fail point off.
pub fn clear() {
    #[cfg(feature = "failpoints")]
    for name in ALL {
        fail::remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_and_malformed_settings_are_rejected() {
        assert!(configure("nope=return")
            .unwrap_err()
            .contains("unknown fail point"));
        assert!(configure("coordinator::trigger")
            .unwrap_err()
            .contains("name=actions"));
        assert_eq!(configure(""), Ok(()));
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn return_injects_an_error_once() {
        configure("sink::commit=1*return").unwrap();
        assert_eq!(check("sink::commit"), Err(InjectedFault("sink::commit")));
        assert_eq!(check("sink::commit"), Ok(()));
        assert!(configure("sink::commit=bogus(").is_err());
        clear();
    }

    #[cfg(not(feature = "failpoints"))]
    #[test]
    fn builds_without_fail_points_refuse_configuration() {
        assert!(configure("sink::commit=return")
            .unwrap_err()
            .contains("no fail points"));
        assert_eq!(check("sink::commit"), Ok(()));
    }
}
