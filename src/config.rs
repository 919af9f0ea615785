//! The server's configuration: one TOML file, overridden by `CUTPOINT_*`
//! environment variables, overridden by command-line flags — in that order.
//! [`OPTIONS`] is the single list of options; `docs/configuration.md` is
//! tested to document exactly these.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One documented option.
pub struct OptionDoc {
    /// `section.key` in the TOML file.
    pub key: &'static str,
    pub env: &'static str,
    pub flag: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Every option, with its default.
pub const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        key: "server.listen",
        env: "CUTPOINT_LISTEN",
        flag: "--listen",
        default: "127.0.0.1:8080",
        help: "address of the REST API; a non-loopback address needs a token",
    },
    OptionDoc {
        key: "server.token_file",
        env: "CUTPOINT_TOKEN_FILE",
        flag: "--token-file",
        default: "(none)",
        help: "file holding the bearer token; CUTPOINT_TOKEN gives the token itself",
    },
    OptionDoc {
        key: "server.body_limit_bytes",
        env: "CUTPOINT_BODY_LIMIT_BYTES",
        flag: "",
        default: "1048576",
        help: "largest request body (413 beyond)",
    },
    OptionDoc {
        key: "server.request_timeout_ms",
        env: "CUTPOINT_REQUEST_TIMEOUT_MS",
        flag: "",
        default: "30000",
        help: "longest a request may take (408 beyond)",
    },
    OptionDoc {
        key: "server.enable_test_knobs",
        env: "CUTPOINT_ENABLE_TEST_KNOBS",
        flag: "--enable-test-knobs",
        default: "false",
        help: "accept the job spec's test knobs (inject_failure, inject_barrier_delay, inject_processing_delay_us) from POST /v1/jobs; for tests only",
    },
    OptionDoc {
        key: "storage.checkpoint_dir",
        env: "CUTPOINT_CHECKPOINT_DIR",
        flag: "--checkpoint-dir",
        default: "(required)",
        help: "checkpoint storage: a directory, file:///dir or s3://bucket/prefix (AWS_* variables for S3)",
    },
    OptionDoc {
        key: "storage.work_dir",
        env: "CUTPOINT_WORK_DIR",
        flag: "--work-dir",
        default: "(a temporary directory)",
        help: "local working directory for the jobs' RocksDB instances (each job's folder is locked by one process and emptied when the job starts: state is only ever restored or built, never reopened); set it in production (a temporary one is left behind by a kill -9)",
    },
];

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    server: ServerSection,
    storage: StorageSection,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct ServerSection {
    listen: Option<String>,
    token_file: Option<PathBuf>,
    body_limit_bytes: Option<u64>,
    request_timeout_ms: Option<u64>,
    enable_test_knobs: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct StorageSection {
    checkpoint_dir: Option<String>,
    work_dir: Option<PathBuf>,
}

/// Values given on the command line (highest precedence).
#[derive(Debug, Default)]
pub struct Flags {
    pub listen: Option<String>,
    pub checkpoint_dir: Option<String>,
    pub work_dir: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// `--enable-test-knobs` (a switch: absent means "not given").
    pub enable_test_knobs: bool,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub checkpoint_dir: String,
    pub work_dir: Option<PathBuf>,
    pub token: Option<String>,
    /// Where the token came from (never the token itself).
    pub token_source: String,
    pub body_limit: usize,
    pub request_timeout: Duration,
    /// Accept the job spec's test knobs from the API.
    pub test_knobs: bool,
}

/// A configuration error names the option.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("{option}: {reason}")]
    Invalid {
        option: &'static str,
        reason: String,
    },
}

/// An on/off option: on if its flag is given, else its environment variable
/// (`true`/`false`, `1`/`0`), else the file, else off.
fn switch(
    option: &'static str,
    flag: bool,
    env: Option<String>,
    file: Option<bool>,
) -> Result<bool, ConfigError> {
    if flag {
        return Ok(true);
    }
    match env.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
        Some(s) if s == "true" || s == "1" => Ok(true),
        Some(s) if s == "false" || s == "0" => Ok(false),
        Some(s) => Err(invalid(option, format!("{s:?} is not true or false"))),
        None => Ok(file.unwrap_or(false)),
    }
}

fn invalid(option: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        reason: reason.into(),
    }
}

impl Config {
    /// File, then environment (`env`), then flags.
    pub fn resolve(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: Flags,
    ) -> Result<Self, ConfigError> {
        let fc: FileConfig = match file {
            Some(p) => {
                let err = |reason: String| ConfigError::File {
                    path: p.display().to_string(),
                    reason,
                };
                let text = std::fs::read_to_string(p).map_err(|e| err(e.to_string()))?;
                toml::from_str(&text).map_err(|e| err(e.to_string()))?
            }
            None => FileConfig::default(),
        };
        let pick = |flag: Option<String>, env_name: &str, file: Option<String>| {
            flag.or_else(|| env(env_name)).or(file)
        };

        let listen = pick(flags.listen, "CUTPOINT_LISTEN", fc.server.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("{listen:?} is not an address like 127.0.0.1:8080"),
            )
        })?;
        let checkpoint_dir = pick(flags.checkpoint_dir, "CUTPOINT_CHECKPOINT_DIR", fc.storage.checkpoint_dir)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                invalid(
                    "storage.checkpoint_dir",
                    "required: a directory, file:///dir or s3://bucket/prefix (flag --checkpoint-dir, CUTPOINT_CHECKPOINT_DIR or the config file)",
                )
            })?;
        let work_dir = flags
            .work_dir
            .or_else(|| env("CUTPOINT_WORK_DIR").map(PathBuf::from))
            .or(fc.storage.work_dir);
        let number =
            |option: &'static str, env_name: &str, file: Option<u64>, default: u64, min: u64| {
                let v = match env(env_name) {
                    Some(s) => s
                        .parse::<u64>()
                        .map_err(|_| invalid(option, format!("{s:?} is not a whole number")))?,
                    None => file.unwrap_or(default),
                };
                if v < min {
                    return Err(invalid(option, format!("must be at least {min}, got {v}")));
                }
                Ok(v)
            };
        let body_limit = number(
            "server.body_limit_bytes",
            "CUTPOINT_BODY_LIMIT_BYTES",
            fc.server.body_limit_bytes,
            1 << 20,
            1024,
        )?;
        let timeout = number(
            "server.request_timeout_ms",
            "CUTPOINT_REQUEST_TIMEOUT_MS",
            fc.server.request_timeout_ms,
            30_000,
            100,
        )?;

        let test_knobs = switch(
            "server.enable_test_knobs",
            flags.enable_test_knobs,
            env("CUTPOINT_ENABLE_TEST_KNOBS"),
            fc.server.enable_test_knobs,
        )?;
        let token_file = flags
            .token_file
            .or_else(|| env("CUTPOINT_TOKEN_FILE").map(PathBuf::from))
            .or(fc.server.token_file);
        let (token, token_source) =
            match (token_file, env("CUTPOINT_TOKEN").filter(|t| !t.is_empty())) {
                (Some(f), _) => {
                    let t = std::fs::read_to_string(&f)
                        .map_err(|e| invalid("server.token_file", format!("{}: {e}", f.display())))?
                        .trim()
                        .to_string();
                    if t.is_empty() {
                        return Err(invalid(
                            "server.token_file",
                            format!("{} is empty", f.display()),
                        ));
                    }
                    (Some(t), format!("file {}", f.display()))
                }
                (None, Some(t)) => (Some(t), "CUTPOINT_TOKEN".into()),
                (None, None) => (None, "none (no authentication)".into()),
            };
        Ok(Config {
            listen,
            checkpoint_dir,
            work_dir,
            token,
            token_source,
            body_limit: body_limit as usize,
            request_timeout: Duration::from_millis(timeout),
            test_knobs,
        })
    }

    /// The effective configuration as TOML, the token masked.
    pub fn show(&self) -> String {
        let masked = FileConfig {
            server: ServerSection {
                listen: Some(self.listen.to_string()),
                token_file: None,
                body_limit_bytes: Some(self.body_limit as u64),
                request_timeout_ms: Some(self.request_timeout.as_millis() as u64),
                enable_test_knobs: Some(self.test_knobs),
            },
            storage: StorageSection {
                checkpoint_dir: Some(self.checkpoint_dir.clone()),
                work_dir: self.work_dir.clone(),
            },
        };
        let token = match &self.token {
            Some(_) => format!("# token: ******** (from {})\n", self.token_source),
            None => "# token: none (no authentication)\n".to_string(),
        };
        format!(
            "{token}{}",
            toml::to_string(&masked).expect("config serializes")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    const FULL: &str = r#"
[server]
listen = "127.0.0.1:9000"
token_file = "TOKEN"
body_limit_bytes = 2048
request_timeout_ms = 5000
enable_test_knobs = true
[storage]
checkpoint_dir = "/tmp/chk"
work_dir = "/tmp/work"
"#;

    #[test]
    fn every_option_parses_from_the_file() {
        let token = file("sekret\n");
        let f = file(&FULL.replace("TOKEN", &token.path().display().to_string()));
        let c = Config::resolve(Some(f.path()), &env_of(&[]), Flags::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.token.as_deref(), Some("sekret"));
        assert_eq!(
            (c.body_limit, c.request_timeout),
            (2048, Duration::from_millis(5000))
        );
        assert_eq!(c.checkpoint_dir, "/tmp/chk");
        assert_eq!(c.work_dir, Some(PathBuf::from("/tmp/work")));
        assert!(c.test_knobs);
        let shown = c.show();
        assert!(shown.contains("enable_test_knobs = true"), "{shown}");
        assert!(
            !shown.contains("sekret") && shown.contains("********"),
            "{shown}"
        );
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let f = file("[server]\nlisten = \"127.0.0.1:1\"\n[storage]\ncheckpoint_dir = \"/a\"\n");
        let env = env_of(&[
            ("CUTPOINT_LISTEN", "127.0.0.1:2"),
            ("CUTPOINT_CHECKPOINT_DIR", "/b"),
            ("CUTPOINT_WORK_DIR", "/w"),
            ("CUTPOINT_BODY_LIMIT_BYTES", "4096"),
            ("CUTPOINT_REQUEST_TIMEOUT_MS", "700"),
            ("CUTPOINT_TOKEN", "t"),
        ]);
        let c = Config::resolve(Some(f.path()), &env, Flags::default()).unwrap();
        assert_eq!((c.listen.port(), c.checkpoint_dir.as_str()), (2, "/b"));
        assert_eq!((c.body_limit, c.request_timeout.as_millis()), (4096, 700));
        assert_eq!(
            (c.token.as_deref(), c.work_dir),
            (Some("t"), Some(PathBuf::from("/w")))
        );
        let flags = Flags {
            listen: Some("127.0.0.1:3".into()),
            checkpoint_dir: Some("/c".into()),
            ..Flags::default()
        };
        let c = Config::resolve(Some(f.path()), &env, flags).unwrap();
        assert_eq!((c.listen.port(), c.checkpoint_dir.as_str()), (3, "/c"));
    }

    #[test]
    fn test_knobs_are_off_unless_enabled_by_file_env_or_flag() {
        let dir = [("CUTPOINT_CHECKPOINT_DIR", "/a")];
        let off = Config::resolve(None, &env_of(&dir), Flags::default()).unwrap();
        assert!(!off.test_knobs);
        let on_file = file("[server]\nenable_test_knobs = true\n");
        let c = Config::resolve(Some(on_file.path()), &env_of(&dir), Flags::default()).unwrap();
        assert!(c.test_knobs);
        let env = env_of(&[dir[0], ("CUTPOINT_ENABLE_TEST_KNOBS", "false")]);
        let c = Config::resolve(Some(on_file.path()), &env, Flags::default()).unwrap();
        assert!(!c.test_knobs, "the environment overrides the file");
        let flags = Flags {
            enable_test_knobs: true,
            ..Flags::default()
        };
        assert!(Config::resolve(None, &env, flags).unwrap().test_knobs);
        let env = env_of(&[dir[0], ("CUTPOINT_ENABLE_TEST_KNOBS", "maybe")]);
        let e = Config::resolve(None, &env, Flags::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.enable_test_knobs"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_option() {
        let cases = [
            (
                "[server]\nlisten = \"nope\"\n[storage]\ncheckpoint_dir = \"/a\"",
                "server.listen",
            ),
            (
                "[server]\nbody_limit_bytes = 1\n[storage]\ncheckpoint_dir = \"/a\"",
                "server.body_limit_bytes",
            ),
            ("[server]\nlistenn = \"x\"", "listenn"),
            (
                "[server]\nrequest_timeout_ms = \"soon\"",
                "request_timeout_ms",
            ),
            ("[storage]\nwork_dir = \"/w\"", "storage.checkpoint_dir"),
        ];
        for (text, option) in cases {
            let f = file(text);
            let e = Config::resolve(Some(f.path()), &env_of(&[]), Flags::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(option), "{text:?}: {e}");
        }
        let e = Config::resolve(
            None,
            &env_of(&[
                ("CUTPOINT_REQUEST_TIMEOUT_MS", "x"),
                ("CUTPOINT_CHECKPOINT_DIR", "/a"),
            ]),
            Flags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("server.request_timeout_ms"), "{e}");
    }

    #[test]
    fn docs_list_exactly_the_options() {
        let doc = include_str!("../docs/configuration.md");
        for o in OPTIONS {
            assert!(
                doc.contains(&format!("`{}`", o.key)),
                "{} is not documented",
                o.key
            );
            assert!(
                doc.contains(&format!("`{}`", o.env)),
                "{} is not documented",
                o.env
            );
            assert!(
                doc.contains(o.default),
                "default of {} is not documented",
                o.key
            );
        }
        let documented = doc
            .lines()
            .filter(|l| l.starts_with("| `server.") || l.starts_with("| `storage."))
            .count();
        assert_eq!(
            documented,
            OPTIONS.len(),
            "docs/configuration.md documents options that do not exist"
        );
        // The example in the doc parses.
        let example = doc
            .split("```toml")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        toml::from_str::<FileConfig>(example).expect("the documented example parses");
    }
}
