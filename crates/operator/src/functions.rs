//! [`Functions`]: the keyed process functions a Rust program registers by
//! name, so a job spec (built in the program, or JSON over REST) can run
//! them: `"aggregate": {"type": "process", "function": "fraud_detector"}`;
//! and its stateless steps ([`Step`]: map, filter, flat map), which a
//! spec's `"transforms": [{"flat_map": "words"}]` runs in the source task
//! (and a stage's `transforms` on the updates of the stage before); and
//! full window functions ([`WindowFn`]), which a spec's
//! `"aggregate": {"type": "process_window", "function": "median"}` runs
//! over each window's values. Keyed functions, steps and window functions
//! share one namespace: a name means one thing.
//!
//! A registry is a value the program hands to the coordinator, the server
//! and the CLI (no global): the stock `cutpoint` binary registers none,
//! and a spec naming a function the running program does not have is
//! refused before the job starts, with the names it does have.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use cutpoint_core::spec::{AggregateSpec, Transform};
use cutpoint_core::window::Window;
use cutpoint_core::{FunctionName, JobSpec, Key, Record, Value};

use crate::builtins::{FromRecord, RecordOperator, WithResult};
use crate::stateless::{Step, Steps};
use crate::window::WindowFn;
use crate::{KeyedOperator, OperatorError};

/// Makes one subtask's operator (given the job's max parallelism).
type Factory = Arc<dyn Fn(u32) -> Result<Box<dyn RecordOperator>, OperatorError> + Send + Sync>;

/// Registered keyed process functions and stateless steps, by name
/// (cheap to clone).
#[derive(Clone, Default)]
pub struct Functions {
    by_name: Arc<BTreeMap<FunctionName, Factory>>,
    steps: Arc<BTreeMap<FunctionName, Step>>,
    windows: Arc<BTreeMap<FunctionName, WindowFn>>,
}

impl Functions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `make` (called once per keyed subtask) as `name`.
    ///
    /// # Panics
    /// If `name` is not a valid name (1–64 of `[A-Za-z0-9_-]`) or is taken:
    /// a program's function names are fixed in its code.
    pub fn register<F>(mut self, name: &str, make: impl Fn() -> F + Send + Sync + 'static) -> Self
    where
        F: WithResult + 'static,
    {
        let name = self.free_name(name);
        let factory: Factory = Arc::new(move |max_parallelism| {
            let key = |r: &F::In| -> Key { r.key().clone() };
            Ok(Box::new(KeyedOperator::new(make(), key, max_parallelism)?))
        });
        Arc::make_mut(&mut self.by_name).insert(name, factory);
        self
    }

    /// Registers a stateless map (one record in, one out; it may change
    /// the key) as `name`. Panics as [`Functions::register`] does.
    pub fn map(self, name: &str, f: impl Fn(Record) -> Record + Send + Sync + 'static) -> Self {
        self.step(name, Step::Map(Arc::new(f)))
    }

    /// Registers a stateless filter (keeps the records `f` accepts).
    pub fn filter(self, name: &str, f: impl Fn(&Record) -> bool + Send + Sync + 'static) -> Self {
        self.step(name, Step::Filter(Arc::new(f)))
    }

    /// Registers a stateless flat map (pushes any number of records).
    pub fn flat_map(
        self,
        name: &str,
        f: impl Fn(Record, &mut Vec<Record>) + Send + Sync + 'static,
    ) -> Self {
        self.step(name, Step::FlatMap(Arc::new(f)))
    }

    /// Registers a full window function (Flink's
    /// `ProcessWindowFunction`: the key, the window and every value in it,
    /// in arrival order, to the window's result) as `name`. Panics as
    /// [`Functions::register`] does.
    pub fn window_function(
        mut self,
        name: &str,
        f: impl Fn(&Key, &Window, &[Value]) -> Value + Send + Sync + 'static,
    ) -> Self {
        let name = self.free_name(name);
        Arc::make_mut(&mut self.windows).insert(name, Arc::new(f));
        self
    }

    /// The window function registered as `name`.
    pub fn window(&self, name: &FunctionName) -> Result<WindowFn, OperatorError> {
        if let Some(f) = self.windows.get(name) {
            return Ok(f.clone());
        }
        let registered = match (self.by_name.contains_key(name), self.steps.get(name)) {
            (true, _) => KEYED,
            (false, Some(step)) => step.kind(),
            (false, None) => return Err(self.unknown(name)),
        };
        Err(OperatorError::StepKind {
            name: name.to_string(),
            registered,
            used: WINDOW,
        })
    }

    fn step(mut self, name: &str, step: Step) -> Self {
        let name = self.free_name(name);
        Arc::make_mut(&mut self.steps).insert(name, step);
        self
    }

    /// `name`, checked to be valid and not taken (a program's names are
    /// fixed in its code, so a clash is a bug: panics).
    fn free_name(&self, name: &str) -> FunctionName {
        let name = FunctionName::new(name).unwrap_or_else(|e| panic!("Functions::register: {e}"));
        assert!(
            !self.by_name.contains_key(&name)
                && !self.steps.contains_key(&name)
                && !self.windows.contains_key(&name),
            "Functions::register: {name} is registered twice"
        );
        name
    }

    /// The registered names (keyed functions and steps), in order.
    pub fn names(&self) -> Vec<&FunctionName> {
        let mut names: Vec<_> = self
            .by_name
            .keys()
            .chain(self.steps.keys())
            .chain(self.windows.keys())
            .collect();
        names.sort();
        names
    }

    /// The steps a job's `transforms` name, in order; refuses a name this
    /// program does not have, or one registered as another kind.
    pub fn steps(&self, transforms: &[Transform]) -> Result<Steps, OperatorError> {
        let steps = transforms
            .iter()
            .map(|t| match self.steps.get(t.function()) {
                Some(step) if step.kind() == t.kind() => Ok(step.clone()),
                Some(step) => Err(OperatorError::StepKind {
                    name: t.function().to_string(),
                    registered: step.kind(),
                    used: t.kind(),
                }),
                None if self.by_name.contains_key(t.function()) => Err(OperatorError::StepKind {
                    name: t.function().to_string(),
                    registered: KEYED,
                    used: t.kind(),
                }),
                None => Err(OperatorError::UnknownStep {
                    kind: t.kind(),
                    name: t.function().to_string(),
                    registered: self.registered(),
                }),
            })
            .collect::<Result<_, _>>()?;
        Ok(Steps::new(steps))
    }

    /// A new operator running function `name`.
    pub fn make(
        &self,
        name: &FunctionName,
        max_parallelism: u32,
    ) -> Result<Box<dyn RecordOperator>, OperatorError> {
        match (self.by_name.get(name), self.steps.get(name)) {
            (Some(make), _) => make(max_parallelism),
            (None, Some(step)) => Err(OperatorError::StepKind {
                name: name.to_string(),
                registered: step.kind(),
                used: KEYED,
            }),
            (None, None) => Err(self.unknown(name)),
        }
    }

    /// Refuses a job naming a function or step this program does not have
    /// (or has as another kind), or a function whose states cannot be
    /// declared (built once to see).
    pub fn check(&self, spec: &JobSpec) -> Result<(), OperatorError> {
        self.steps(&spec.transforms)?;
        for stage in &spec.stages {
            self.steps(&stage.transforms)?;
        }
        match &spec.aggregate {
            AggregateSpec::Process { function, .. } => self.make(function, 128).map(|_| ()),
            AggregateSpec::ProcessWindow { function, .. } => self.window(function).map(|_| ()),
            _ => Ok(()),
        }
    }

    fn unknown(&self, name: &FunctionName) -> OperatorError {
        OperatorError::UnknownFunction {
            name: name.to_string(),
            registered: self.registered(),
        }
    }

    /// The registered names, for an error message.
    fn registered(&self) -> String {
        if self.names().is_empty() {
            return "none (functions run in a Rust program that registers them; see examples/fraud_detection.rs)".into();
        }
        self.names()
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Debug for Functions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// What a keyed function is called in an error naming a kind.
const KEYED: &str = "keyed process function";
/// What a full window function is called there.
const WINDOW: &str = "window function";

#[cfg(test)]
mod tests {
    use cutpoint_core::FunctionName;

    use super::*;

    fn name(n: &str) -> FunctionName {
        FunctionName::new(n).unwrap()
    }

    #[test]
    fn steps_resolve_by_name_and_kind() {
        let functions = Functions::new()
            .map("m", |r| r)
            .filter("f", |_| true)
            .flat_map("fm", |r, out| out.push(r));
        assert_eq!(functions.names(), [&name("f"), &name("fm"), &name("m")]);
        let ok = [
            Transform::FlatMap(name("fm")),
            Transform::Map(name("m")),
            Transform::Filter(name("f")),
        ];
        assert!(!functions.steps(&ok).unwrap().is_empty());
        let err = functions
            .steps(&[Transform::Map(name("f"))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("registered as a filter, not a map"), "{err}");
        let err = functions.make(&name("m"), 128).err().unwrap().to_string();
        assert!(
            err.contains("registered as a map, not a keyed process function"),
            "{err}"
        );
        let err = functions
            .steps(&[Transform::Filter(name("nope"))])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no filter \"nope\"") && err.contains("f, fm, m"),
            "{err}"
        );
    }

    #[test]
    fn window_functions_resolve_by_name_and_kind() {
        let functions = Functions::new()
            .map("m", |r| r)
            .window_function("n", |_, _, values| Value::Int(values.len() as i64));
        let f = functions.window(&name("n")).unwrap();
        let w = Window { start: 0, end: 10 };
        assert_eq!(
            f(&Key::Int(1), &w, &[Value::Null, Value::Null]),
            Value::Int(2)
        );
        let err = functions.window(&name("m")).err().unwrap().to_string();
        assert!(
            err.contains("registered as a map, not a window function"),
            "{err}"
        );
        let err = functions.window(&name("x")).err().unwrap().to_string();
        assert!(
            err.contains("no function \"x\"") && err.contains("m, n"),
            "{err}"
        );
        let spec = |f: &str| {
            JobSpec::from_json(&format!(
                r#"{{"job_id":"j","source":{{"type":"generator","events":10,"keys":3}},
                    "key_by":"app_id","event_time":{{"field":"ts"}},
                    "window":{{"type":"tumbling","size_ms":100}},
                    "aggregate":{{"type":"process_window","function":"{f}"}}}}"#
            ))
            .unwrap()
        };
        functions.check(&spec("n")).unwrap();
        assert!(functions.check(&spec("m")).is_err());
    }

    #[test]
    fn a_jobs_check_covers_every_stages_steps() {
        let spec = |stage_steps: &str| {
            JobSpec::from_json(&format!(
                r#"{{"job_id":"j","source":{{"type":"generator","events":10,"keys":3}},
                    "key_by":"app_id","aggregate":{{"type":"count"}},
                    "stages":[{{"id":"s","transforms":{stage_steps},"key_by":{{"type":"key"}},"aggregate":{{"type":"count"}}}}]}}"#
            ))
        };
        let functions = Functions::new().map("m", |r| r);
        functions.check(&spec(r#"[{"map":"m"}]"#).unwrap()).unwrap();
        let err = functions
            .check(&spec(r#"[{"flat_map":"x"}]"#).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no flat_map \"x\""), "{err}");
        let seventeen = format!("[{}]", [r#"{"map":"m"}"#; 17].join(","));
        let err = spec(&seventeen).unwrap_err().to_string();
        assert!(err.contains("more than 16 transforms"), "{err}");
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_name_is_registered_once() {
        let _ = Functions::new().map("same", |r| r).filter("same", |_| true);
    }
}
