//! [`Functions`]: the keyed process functions a Rust program registers by
//! name, so a job spec (built in the program, or JSON over REST) can run
//! them: `"aggregate": {"type": "process", "function": "fraud_detector"}`.
//!
//! A registry is a value the program hands to the coordinator, the server
//! and the CLI (no global): the stock `cutpoint` binary registers none,
//! and a spec naming a function the running program does not have is
//! refused before the job starts, with the names it does have.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use cutpoint_core::spec::AggregateSpec;
use cutpoint_core::{FunctionName, Key};

use crate::builtins::{FromRecord, RecordOperator, WithResult};
use crate::{KeyedOperator, OperatorError};

/// Makes one subtask's operator (given the job's max parallelism).
type Factory = Arc<dyn Fn(u32) -> Result<Box<dyn RecordOperator>, OperatorError> + Send + Sync>;

/// Registered keyed process functions, by name (cheap to clone).
#[derive(Clone, Default)]
pub struct Functions {
    by_name: Arc<BTreeMap<FunctionName, Factory>>,
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
        let name = FunctionName::new(name).unwrap_or_else(|e| panic!("Functions::register: {e}"));
        let factory: Factory = Arc::new(move |max_parallelism| {
            let key = |r: &F::In| -> Key { r.key().clone() };
            Ok(Box::new(KeyedOperator::new(make(), key, max_parallelism)?))
        });
        let map = Arc::make_mut(&mut self.by_name);
        assert!(
            map.insert(name.clone(), factory).is_none(),
            "Functions::register: {name} is registered twice"
        );
        self
    }

    /// The registered names, in order.
    pub fn names(&self) -> Vec<&FunctionName> {
        self.by_name.keys().collect()
    }

    /// A new operator running function `name`.
    pub fn make(
        &self,
        name: &FunctionName,
        max_parallelism: u32,
    ) -> Result<Box<dyn RecordOperator>, OperatorError> {
        match self.by_name.get(name) {
            Some(make) => make(max_parallelism),
            None => Err(self.unknown(name)),
        }
    }

    /// Refuses an aggregate naming a function this program does not have,
    /// or one whose states cannot be declared (built once to see).
    pub fn check(&self, aggregate: &AggregateSpec) -> Result<(), OperatorError> {
        match aggregate {
            AggregateSpec::Process { function, .. } => self.make(function, 128).map(|_| ()),
            _ => Ok(()),
        }
    }

    fn unknown(&self, name: &FunctionName) -> OperatorError {
        OperatorError::UnknownFunction {
            name: name.to_string(),
            registered: if self.by_name.is_empty() {
                "none (a process function runs in a Rust program that registers it; see examples/fraud_detection.rs)".into()
            } else {
                self.names()
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }
    }
}

impl fmt::Debug for Functions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}
