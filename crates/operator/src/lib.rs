//! The Rust operator API (Dataflow I): what a user's keyed operator
//! implements, modelled on Flink's `KeyedProcessFunction`, and
//! [`KeyedOperator`], which runs one over the typed state of one keyed
//! subtask ([`cutpoint_state::typed::TypedTable`]).
//!
//! A [`KeyedProcessFunction`] names its states ([`StateDescriptor`]s), and
//! for every record gets a [`KeyedContext`] bound to the record's key:
//! value, list, map and reducing state of that key only, in the current
//! namespace. It emits any number of outputs.
//!
//! Records are typed (`In`, `Out`: any Rust type; state values any serde
//! type): a general value type would cost a per-record allocation and a
//! dynamic check that Rust's types make unnecessary. The JSON job spec's
//! built-in operators are implemented on the same traits.
//!
//! [`KeyedOperator`] is the part a task runs: it routes a record to its
//! key group, calls the function, and takes part in checkpoints
//! ([`KeyedOperator::snapshot`]: the changed entries, O(1), for the
//! snapshot worker; [`KeyedOperator::restore_entry`]: the entries of a
//! restored key-group range). [`builtins`]: the JSON spec's typed keyed
//! aggregates (count-distinct, dedup, min, max) on this API, which the
//! runtime runs; [`functions`]: a program's own functions, registered by
//! name, which the runtime runs the same way. A function hears of
//! completed checkpoints ([`KeyedProcessFunction::notify_checkpoint_complete`]).
//! Records are a key and a [`Value`] in running jobs (the runtime's one
//! record type); [`integer`] reads the value a function needs as an
//! integer. Not built yet: timers, operator (non-keyed) state, records
//! with several named fields.

pub use cutpoint_core::{Key, Record, Value};
use cutpoint_state::layout::{LayoutError, StateNames};
pub use cutpoint_state::layout::{StateDescriptor, StateKind};
use cutpoint_state::typed::{KeyContext, TypedDelta, TypedTable};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why an operator could not process a record.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(transparent)]
    State(#[from] LayoutError),
    /// The user's function failed.
    #[error("{0}")]
    User(String),
    /// A record's value is not the integer the operator needs (min, max,
    /// avg).
    #[error(transparent)]
    NotAnInteger(#[from] cutpoint_core::NotAnInteger),
    /// The spec names a process function this program did not register.
    #[error("aggregate.function: no function {name:?} is registered in this program; registered: {registered}")]
    UnknownFunction { name: String, registered: String },
    /// A job's `transforms` name a step this program did not register.
    #[error(
        "transforms: no {kind} {name:?} is registered in this program; registered: {registered}"
    )]
    UnknownStep {
        kind: &'static str,
        name: String,
        registered: String,
    },
    /// A job uses a name as another kind of function than registered
    /// (a step as a keyed function, a map as a filter, …).
    #[error("{name:?} is registered as a {registered}, not a {used}")]
    StepKind {
        name: String,
        registered: &'static str,
        used: &'static str,
    },
}

/// The record's value as an integer, or [`OperatorError::NotAnInteger`]
/// naming the key and the value (for functions that need integers).
pub fn integer(record: &Record) -> Result<i64, OperatorError> {
    Ok(record.int_value()?)
}

/// A keyed operator's logic (Flink's `KeyedProcessFunction`).
pub trait KeyedProcessFunction: Send {
    type In;
    type Out;

    /// The states this function uses; declared before any record.
    fn states(&self) -> Vec<StateDescriptor>;

    /// Processes one record of the context's key.
    fn process(
        &mut self,
        record: Self::In,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<Self::Out>,
    ) -> Result<(), OperatorError>;

    /// Checkpoint `checkpoint` completed (every task acknowledged it and
    /// its metadata is written): what a function that talks to the outside
    /// world commits on, like Flink's `notifyCheckpointComplete`. Called
    /// on the task's thread between records, at most once per checkpoint,
    /// possibly not at all for a checkpoint a later one subsumes before
    /// the notice arrives (none is sent again after a restore). An error
    /// fails the task.
    fn notify_checkpoint_complete(
        &mut self,
        checkpoint: cutpoint_core::CheckpointId,
    ) -> Result<(), OperatorError> {
        let _ = checkpoint;
        Ok(())
    }
}

/// Typed state of the current key (and namespace).
pub struct KeyedContext<'a> {
    table: &'a mut TypedTable,
    key: KeyContext,
}

impl KeyedContext<'_> {
    pub fn current_key(&self) -> &Key {
        &self.key.key
    }

    /// Works in `namespace` (e.g. a window) until set again.
    pub fn set_namespace(&mut self, namespace: &[u8]) {
        self.key.namespace = namespace.to_vec();
    }

    pub fn value<T: DeserializeOwned>(
        &mut self,
        d: &StateDescriptor,
    ) -> Result<Option<T>, LayoutError> {
        self.table.value(d, &self.key)
    }

    pub fn set_value<T: Serialize>(
        &mut self,
        d: &StateDescriptor,
        v: &T,
    ) -> Result<(), LayoutError> {
        self.table.set_value(d, &self.key, v)
    }

    pub fn list_add<T: Serialize>(
        &mut self,
        d: &StateDescriptor,
        v: &T,
    ) -> Result<(), LayoutError> {
        self.table.list_add(d, &self.key, v)
    }

    pub fn list<T: DeserializeOwned>(
        &mut self,
        d: &StateDescriptor,
    ) -> Result<Vec<T>, LayoutError> {
        self.table.list(d, &self.key)
    }

    pub fn map_put<K: Serialize, V: Serialize>(
        &mut self,
        d: &StateDescriptor,
        k: &K,
        v: &V,
    ) -> Result<(), LayoutError> {
        self.table.map_put(d, &self.key, k, v)
    }

    pub fn map_get<K: Serialize, V: DeserializeOwned>(
        &mut self,
        d: &StateDescriptor,
        k: &K,
    ) -> Result<Option<V>, LayoutError> {
        self.table.map_get(d, &self.key, k)
    }

    pub fn map_remove<K: Serialize>(
        &mut self,
        d: &StateDescriptor,
        k: &K,
    ) -> Result<(), LayoutError> {
        self.table.map_remove(d, &self.key, k)
    }

    pub fn map_entries<K: DeserializeOwned, V: DeserializeOwned>(
        &mut self,
        d: &StateDescriptor,
    ) -> Result<Vec<(K, V)>, LayoutError> {
        self.table.map_entries(d, &self.key)
    }

    pub fn reduce<T: Serialize + DeserializeOwned + Clone>(
        &mut self,
        d: &StateDescriptor,
        v: T,
        f: impl FnOnce(T, T) -> T,
    ) -> Result<T, LayoutError> {
        self.table.reduce(d, &self.key, v, f)
    }

    pub fn clear(&mut self, d: &StateDescriptor) -> Result<(), LayoutError> {
        self.table.clear(d, &self.key)
    }
}

/// Extracts a record's key.
type KeyFn<In> = Box<dyn Fn(&In) -> Key + Send>;

/// A keyed process function over the typed state of one subtask.
pub struct KeyedOperator<F: KeyedProcessFunction> {
    function: F,
    key_of: KeyFn<F::In>,
    table: TypedTable,
    max_parallelism: u32,
}

impl<F: KeyedProcessFunction> KeyedOperator<F> {
    /// `function`, keyed by `key_of`; its states declared.
    pub fn new(
        function: F,
        key_of: impl Fn(&F::In) -> Key + Send + 'static,
        max_parallelism: u32,
    ) -> Result<Self, OperatorError> {
        let mut names = StateNames::default();
        for d in function.states() {
            names.declare(&d)?;
        }
        Ok(Self {
            function,
            key_of: Box::new(key_of),
            table: TypedTable::new(names),
            max_parallelism,
        })
    }

    /// Processes one record; its outputs are appended to `out`.
    pub fn process(&mut self, record: F::In, out: &mut Vec<F::Out>) -> Result<(), OperatorError> {
        let key = KeyContext::new((self.key_of)(&record), self.max_parallelism);
        let mut ctx = KeyedContext {
            table: &mut self.table,
            key,
        };
        self.function.process(record, &mut ctx, out)
    }

    /// Checkpoint `checkpoint` completed: the function's hook.
    pub fn notify_checkpoint_complete(
        &mut self,
        checkpoint: cutpoint_core::CheckpointId,
    ) -> Result<(), OperatorError> {
        self.function.notify_checkpoint_complete(checkpoint)
    }

    /// Sets processing time (ms since the epoch; it never goes back):
    /// state entries with a TTL that expired by then are deleted.
    pub fn set_time(&mut self, now_ms: u64) -> Result<(), OperatorError> {
        self.table.set_time(now_ms)?;
        Ok(())
    }

    /// The synchronous phase of a snapshot: the entries changed since the
    /// last one (O(1)), for the snapshot worker to write behind.
    pub fn snapshot(&mut self) -> TypedDelta {
        self.table.freeze()
    }

    /// Loads one entry of a restored key-group range.
    pub fn restore_entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), OperatorError> {
        Ok(self.table.load(key, value)?)
    }
}

pub mod builtins;
pub mod functions;
pub mod stateless;

pub use builtins::{FromRecord, Input, RecordOperator, WithResult};
pub use functions::Functions;

#[cfg(test)]
mod tests;
