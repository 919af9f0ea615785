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
//! integer. A function may use timers ([`timers`]: event time, fired in
//! time order as the watermark passes them, and processing time, as the
//! wall clock does; kept in its state; `on_timer`, which tells which by
//! [`KeyedContext::time_domain`]);
//! [`window`] and [`session`]: the JSON spec's windows on them;
//! [`interval`]: its interval join. Not built yet: operator (non-keyed)
//! state, records with several named fields.

pub use cutpoint_core::{Key, Record, Value};
use cutpoint_state::layout::{LayoutError, StateNames};
pub use cutpoint_state::layout::{StateDescriptor, StateKind};
use cutpoint_state::typed::{KeyContext, TypedDelta, TypedTable};
use serde::de::DeserializeOwned;
use serde::Serialize;
pub use timers::{Fired, ProcessingClock, TimeDomain, TimerService, Timers};

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
    /// A function declared a state whose name starts with `__` (reserved:
    /// its timers are kept under one).
    #[error("state {0:?}: names starting with __ are reserved")]
    ReservedName(String),
    /// A function registered a timer without saying it uses timers.
    #[error("a function registered a timer but its uses_timers() is false (its timers would not be kept in state)")]
    NoTimers,
    /// A function registered a processing-time timer without saying it
    /// uses them.
    #[error("a function registered a processing-time timer but its uses_processing_time_timers() is false (its timers would not be kept in state)")]
    NoProcessingTimers,
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

    /// Whether the function registers event-time timers
    /// ([`KeyedContext::register_event_time_timer`]); its timers are then
    /// kept in its state (the reserved state [`timers::TIMER_STATE`]).
    fn uses_timers(&self) -> bool {
        false
    }

    /// Whether it registers processing-time timers
    /// ([`KeyedContext::register_processing_time_timer`]; kept in the
    /// reserved state [`timers::PROCESSING_TIMER_STATE`]). A separate
    /// switch, so the states of functions that use none stay as they
    /// were (a restore compares them). It implies event-time timers too
    /// (their state is declared either way: part of the state's layout).
    fn uses_processing_time_timers(&self) -> bool {
        false
    }

    /// A timer of the context's key and namespace fired: the watermark
    /// (event time) or the wall clock (processing time,
    /// [`KeyedContext::time_domain`]) reached `time`. Outputs go
    /// downstream at event time `time`.
    fn on_timer(
        &mut self,
        time: i64,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<Self::Out>,
    ) -> Result<(), OperatorError> {
        let _ = (time, ctx, out);
        Ok(())
    }

    /// Records this function dropped as late so far (a window's).
    fn late_records(&self) -> u64 {
        0
    }

    /// Moves the records it dropped as late since the last call to `out`
    /// (for the job's side output); none by default.
    fn take_late(&mut self, _out: &mut Vec<Record>) {}
}

/// Typed state and timers of the current key (and namespace).
pub struct KeyedContext<'a> {
    table: &'a mut TypedTable,
    key: KeyContext,
    timers: Option<&'a mut Timers>,
    /// Of the timer firing (event time while processing a record).
    domain: TimeDomain,
}

impl KeyedContext<'_> {
    pub fn current_key(&self) -> &Key {
        &self.key.key
    }

    /// Works in `namespace` (e.g. a window) until set again.
    pub fn set_namespace(&mut self, namespace: &[u8]) {
        self.key.namespace.clear();
        self.key.namespace.extend_from_slice(namespace);
    }

    /// The current namespace (a fired timer's, in `on_timer`).
    pub fn namespace(&self) -> &[u8] {
        &self.key.namespace
    }

    /// The watermark of the current key (event time; `None` before the
    /// first): its subtask's, or after a restore the one its key group had
    /// at the checkpoint, if later.
    pub fn current_watermark(&self) -> Option<i64> {
        let t = self.timers.as_ref()?;
        t.event.watermark_for(self.key.key_group)
    }

    /// The wall clock (ms since the epoch), never behind a processing-time
    /// timer that fired: at least 1 ms past the time they fired up to, so
    /// a window assigned by it has not fired yet.
    pub fn current_processing_time(&self) -> i64 {
        let now = cutpoint_core::now_millis() as i64;
        let fired = self
            .timers
            .as_ref()
            .and_then(|t| t.processing.as_ref()?.watermark());
        fired.map_or(now, |f| now.max(f.saturating_add(1)))
    }

    /// In `on_timer`: which clock the timer followed.
    pub fn time_domain(&self) -> TimeDomain {
        self.domain
    }

    /// Calls `on_timer` for this key and namespace once the watermark
    /// reaches `time` (once per key, namespace and time). Needs
    /// [`KeyedProcessFunction::uses_timers`].
    pub fn register_event_time_timer(&mut self, time: i64) -> Result<(), OperatorError> {
        self.register(TimeDomain::EventTime, time)
    }

    /// Deletes this key's and namespace's event-time timer at `time`, if
    /// any.
    pub fn delete_event_time_timer(&mut self, time: i64) -> Result<(), OperatorError> {
        self.delete(TimeDomain::EventTime, time)
    }

    /// Calls `on_timer` for this key and namespace once the wall clock
    /// reaches `time` (ms since the epoch; once per key, namespace and
    /// time; at the end of the input at the latest). Needs
    /// [`KeyedProcessFunction::uses_timers`].
    pub fn register_processing_time_timer(&mut self, time: i64) -> Result<(), OperatorError> {
        self.register(TimeDomain::ProcessingTime, time)
    }

    /// Deletes this key's and namespace's processing-time timer at
    /// `time`, if any.
    pub fn delete_processing_time_timer(&mut self, time: i64) -> Result<(), OperatorError> {
        self.delete(TimeDomain::ProcessingTime, time)
    }

    /// Registers a timer of `domain`.
    pub fn register(&mut self, domain: TimeDomain, time: i64) -> Result<(), OperatorError> {
        let service = service(self.timers.as_deref_mut(), domain)?;
        Ok(service.register(self.table, &self.key, time)?)
    }

    /// Deletes a timer of `domain`, if any.
    pub fn delete(&mut self, domain: TimeDomain, time: i64) -> Result<(), OperatorError> {
        let service = service(self.timers.as_deref_mut(), domain)?;
        Ok(service.delete(self.table, &self.key, time)?)
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

/// `domain`'s timers, or the error of a function that did not say it
/// uses them.
fn service(
    timers: Option<&mut Timers>,
    domain: TimeDomain,
) -> Result<&mut TimerService, OperatorError> {
    match (timers, domain) {
        (Some(t), d) => t.of(d).ok_or(OperatorError::NoProcessingTimers),
        (None, TimeDomain::EventTime) => Err(OperatorError::NoTimers),
        (None, TimeDomain::ProcessingTime) => Err(OperatorError::NoProcessingTimers),
    }
}

/// Extracts a record's key.
type KeyFn<In> = Box<dyn Fn(&In) -> Key + Send>;

/// A keyed process function over the typed state of one subtask.
pub struct KeyedOperator<F: KeyedProcessFunction> {
    function: F,
    key_of: KeyFn<F::In>,
    table: TypedTable,
    timers: Option<Timers>,
    max_parallelism: u32,
}

impl<F: KeyedProcessFunction> KeyedOperator<F> {
    /// `function`, keyed by `key_of`; its states (and timers) declared.
    pub fn new(
        function: F,
        key_of: impl Fn(&F::In) -> Key + Send + 'static,
        max_parallelism: u32,
    ) -> Result<Self, OperatorError> {
        let mut names = StateNames::default();
        for d in function.states() {
            if d.name.starts_with("__") {
                return Err(OperatorError::ReservedName(d.name));
            }
            names.declare(&d)?;
        }
        let service = |names: &mut StateNames, domain| -> Result<_, LayoutError> {
            let id = names.declare(&TimerService::descriptor(domain))?;
            Ok(TimerService::new(domain, id))
        };
        let processing = function.uses_processing_time_timers();
        let timers = match function.uses_timers() || processing {
            true => Some(Timers {
                event: service(&mut names, TimeDomain::EventTime)?,
                processing: match processing {
                    true => Some(service(&mut names, TimeDomain::ProcessingTime)?),
                    false => None,
                },
            }),
            false => None,
        };
        Ok(Self {
            function,
            key_of: Box::new(key_of),
            table: TypedTable::new(names),
            timers,
            max_parallelism,
        })
    }

    /// Processes one record; its outputs are appended to `out`.
    pub fn process(&mut self, record: F::In, out: &mut Vec<F::Out>) -> Result<(), OperatorError> {
        let key = KeyContext::new((self.key_of)(&record), self.max_parallelism);
        let mut ctx = KeyedContext {
            table: &mut self.table,
            key,
            timers: self.timers.as_mut(),
            domain: TimeDomain::EventTime,
        };
        self.function.process(record, &mut ctx, out)
    }

    /// The watermark reached `w`: timers at or before it fire, in time
    /// order, at most `max` of them this pass (call again while it says
    /// [`Fired::More`]); each one's outputs are appended to `out` with its
    /// time.
    pub fn advance_watermark(
        &mut self,
        w: i64,
        max: usize,
        out: &mut Vec<(i64, F::Out)>,
    ) -> Result<Fired, OperatorError> {
        self.advance(TimeDomain::EventTime, w, max, out)
    }

    /// The wall clock reached `now` (ms since the epoch; at the end of the
    /// input, the last timer's time): processing-time timers at or before
    /// it fire, as
    /// [`KeyedOperator::advance_watermark`]'s.
    pub fn advance_processing_time(
        &mut self,
        now: i64,
        max: usize,
        out: &mut Vec<(i64, F::Out)>,
    ) -> Result<Fired, OperatorError> {
        self.advance(TimeDomain::ProcessingTime, now, max, out)
    }

    /// `domain`'s clock reached `w`: its timers at or before it fire, as
    /// [`KeyedOperator::advance_watermark`]'s.
    pub fn advance(
        &mut self,
        domain: TimeDomain,
        w: i64,
        max: usize,
        out: &mut Vec<(i64, F::Out)>,
    ) -> Result<Fired, OperatorError> {
        let Some(timers) = self.timers.as_mut() else {
            return Ok(Fired::All);
        };
        let mut fired = Vec::new();
        if timers.of(domain).is_none() {
            return Ok(Fired::All);
        }
        for _ in 0..max {
            let service = timers.of(domain).expect("checked above");
            let Some((time, key)) = service.pop_due(&mut self.table, w, self.max_parallelism)?
            else {
                return Ok(Fired::All);
            };
            let mut ctx = KeyedContext {
                table: &mut self.table,
                key,
                timers: Some(&mut *timers),
                domain,
            };
            self.function.on_timer(time, &mut ctx, &mut fired)?;
            out.extend(fired.drain(..).map(|o| (time, o)));
        }
        Ok(match timers.of(domain).is_some_and(|t| t.is_due(w)) {
            true => Fired::More,
            false => Fired::All,
        })
    }

    /// A restore: the watermark each restored key-group range had.
    pub fn restore_watermarks(&mut self, floors: &[(cutpoint_core::KeyGroupRange, i64)]) {
        if let Some(t) = &mut self.timers {
            t.event.restore_watermarks(floors);
        }
    }

    /// The event-time timers waiting (`None`: the function uses none).
    pub fn timers(&self) -> Option<&TimerService> {
        self.timers.as_ref().map(|t| &t.event)
    }

    /// The processing-time timers waiting (`None`: the function uses
    /// none).
    pub fn processing_timers(&self) -> Option<&TimerService> {
        self.timers.as_ref()?.processing.as_ref()
    }

    /// A restore: processing-time timers had fired up to `t` (the
    /// latest of the old subtasks'); the context's clock reads past it.
    pub fn restore_processing_time(&mut self, t: i64) {
        if let Some(p) = self.timers.as_mut().and_then(|t| t.processing.as_mut()) {
            p.restore_fired(t);
        }
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

    /// Loads one entry of a restored key-group range (a timer's entry
    /// also goes back in the queue).
    pub fn restore_entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), OperatorError> {
        self.table.load(key, value)?;
        if let Some(t) = &mut self.timers {
            t.event.restore(key)?;
            if let Some(p) = &mut t.processing {
                p.restore(key)?;
            }
        }
        Ok(())
    }
}

pub mod builtins;
pub mod functions;
pub mod interval;
pub mod late;
pub mod session;
pub mod stateless;
pub mod timers;
pub mod window;

pub use builtins::{FromRecord, Input, RecordOperator, WithResult};
pub use functions::Functions;

#[cfg(test)]
mod tests;
