//! The state and logic of one keyed subtask ([`KeyedState`]): one integer
//! per key in a [`StateTable`] (count, sum), or typed state run by an
//! operator on the operator API (the two-input join, count-distinct,
//! dedup, min, max, avg, a program's function) — both under the memory
//! budget with eviction and read-through. [`input_of`]: which of the
//! operator's inputs (first, or a join's second) an input channel is.
//!
//! Both hand the snapshot worker a [`Delta`] of what changed since the
//! last snapshot (O(1) to take) and end as a table of each key's latest
//! update (the job's result).

use cutpoint_core::metadata::{AggregateKind, StateSchema};
use cutpoint_core::{JobSpec, Key, KeyGroupRange, NotAnInteger, Record, Value};
use cutpoint_operator::builtins::{Input, RecordOperator};
use cutpoint_operator::{Fired, ProcessingClock, TimeDomain};
use cutpoint_state::typed::TypedDelta;
use cutpoint_state::{FrozenDelta, Residency, ResultTable, StateReader, StateTable};

use crate::exchange::Output;
use crate::task::Upstream;
use crate::RuntimeError;

/// Which of the operator's inputs input channel `input` is: a join's
/// dimension source (an interval join's right source) is its second;
/// everything else is a first input.
pub(crate) fn input_of(spec: &JobSpec, upstream: Upstream, input: u32) -> Input {
    if upstream == Upstream::Stage {
        return Input::First;
    }
    match (spec.aggregate.second_input(), spec.source_of(input)) {
        (Some(second), Some((s, _, _))) if s == second => Input::Second,
        _ => Input::First,
    }
}

/// What changed since the last snapshot, for the snapshot worker.
pub(crate) enum Delta {
    Counts(FrozenDelta),
    Typed(TypedDelta),
}

impl Delta {
    pub(crate) fn len(&self) -> usize {
        match self {
            Delta::Counts(d) => d.entries.len(),
            Delta::Typed(d) => d.len(),
        }
    }
}

/// A keyed subtask's state and the logic that changes it.
// One per task, so its size does not matter; boxing the table would add an
// indirection to the hot path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum KeyedState {
    Counts(StateTable),
    Typed {
        op: Box<dyn RecordOperator>,
        /// Reused buffer of one record's updates.
        updates: Vec<(Key, Value)>,
    },
}

impl KeyedState {
    /// Applies a batch of one input; the updates go to `out`.
    pub(crate) fn apply(
        &mut self,
        out: &mut Output,
        input: Input,
        batch: Vec<Record>,
    ) -> Result<(), RuntimeError> {
        match self {
            KeyedState::Counts(table) => apply_counts(table, out, batch),
            KeyedState::Typed { op, updates } => {
                // Processing time, once per batch (TTL state expires).
                op.set_time(cutpoint_core::now_millis())?;
                for r in batch {
                    let ts = r.ts;
                    op.process(input, r, updates)?;
                    for (k, v) in updates.drain(..) {
                        out.emit(&k, &v, ts)?;
                    }
                }
                out.late(|late| op.take_late(late))
            }
        }
    }

    /// `domain`'s clock reached `t` (the task's watermark, or the wall
    /// clock): up to `max` of typed state's timers at or before it fire,
    /// their updates (at the timer's time) go to `out`; [`Fired::More`]
    /// while more are due.
    pub(crate) fn fire(
        &mut self,
        domain: TimeDomain,
        t: i64,
        max: usize,
        out: &mut Output,
    ) -> Result<Fired, RuntimeError> {
        let KeyedState::Typed { op, .. } = self else {
            return Ok(Fired::All);
        };
        let mut fired = Vec::new();
        let more = op.on_time(domain, t, max, &mut fired)?;
        for (ts, k, v) in fired {
            out.emit(&k, &v, ts)?;
        }
        Ok(more)
    }

    /// Where typed state's processing-time timers stand.
    pub(crate) fn processing_clock(&self) -> ProcessingClock {
        match self {
            KeyedState::Typed { op, .. } => op.processing_clock(),
            KeyedState::Counts(_) => ProcessingClock::default(),
        }
    }

    /// A restore: processing-time timers had fired up to `t`.
    pub(crate) fn restore_processing_time(&mut self, t: i64) {
        if let KeyedState::Typed { op, .. } = self {
            op.restore_processing_time(t);
        }
    }

    /// Typed state's timers waiting and records dropped as late.
    pub(crate) fn time_stats(&self) -> Option<(usize, u64)> {
        match self {
            KeyedState::Typed { op, .. } => Some(op.time_stats()),
            KeyedState::Counts(_) => None,
        }
    }

    /// A restore: the watermark each restored key-group range had.
    pub(crate) fn restore_watermarks(&mut self, floors: &[(KeyGroupRange, i64)]) {
        if let KeyedState::Typed { op, .. } = self {
            op.restore_watermarks(floors);
        }
    }

    /// The synchronous phase: what changed since the last freeze (O(1)).
    pub(crate) fn freeze(&mut self) -> Delta {
        match self {
            KeyedState::Counts(t) => Delta::Counts(t.freeze()),
            KeyedState::Typed { op, .. } => Delta::Typed(op.snapshot()),
        }
    }

    /// A read-through failure of the integer table, if one happened.
    pub(crate) fn take_error(&mut self) -> Option<RuntimeError> {
        match self {
            KeyedState::Counts(t) => t.take_error().map(Into::into),
            KeyedState::Typed { .. } => None,
        }
    }

    /// Puts the state under a memory budget of about `budget` entries,
    /// read back through `reader`; `residency`: whether RocksDB holds
    /// entries memory does not (a lazy restore).
    pub(crate) fn set_budget(&mut self, reader: StateReader, budget: usize, residency: Residency) {
        match self {
            KeyedState::Counts(t) => t.set_budget(reader, budget, residency),
            KeyedState::Typed { op, .. } => op.table_mut().set_budget(reader, budget, residency),
        }
    }

    /// Sets processing time (TTL state expires; typed state only).
    pub(crate) fn set_time(&mut self) -> Result<(), RuntimeError> {
        if let KeyedState::Typed { op, .. } = self {
            op.set_time(cutpoint_core::now_millis())?;
        }
        Ok(())
    }

    /// Checkpoint `id` completed: a typed operator's function hears of it.
    pub(crate) fn checkpoint_complete(
        &mut self,
        id: cutpoint_core::CheckpointId,
    ) -> Result<(), RuntimeError> {
        if let KeyedState::Typed { op, .. } = self {
            op.notify_checkpoint_complete(id)?;
        }
        Ok(())
    }

    /// Every delta handed to the snapshot worker is written.
    pub(crate) fn deltas_written(&mut self) {
        if let KeyedState::Typed { op, .. } = self {
            op.table_mut().deltas_written();
        }
    }

    /// Entries in memory.
    pub(crate) fn len(&self) -> usize {
        match self {
            KeyedState::Counts(t) => t.len(),
            KeyedState::Typed { op, .. } => op.table().len(),
        }
    }

    pub(crate) fn over_budget(&self) -> bool {
        match self {
            KeyedState::Counts(t) => t.over_budget(),
            KeyedState::Typed { op, .. } => op.table().over_budget(),
        }
    }

    /// Evicts clean entries (every frozen delta must be written).
    pub(crate) fn evict_clean(&mut self) -> usize {
        match self {
            KeyedState::Counts(t) => t.evict_clean(),
            KeyedState::Typed { op, .. } => op.table_mut().evict_clean(),
        }
    }

    /// The integer table (its final state is read back from RocksDB under
    /// a budget; typed state reads through by itself).
    pub(crate) fn counts(&mut self) -> Option<&mut StateTable> {
        match self {
            KeyedState::Counts(t) => Some(t),
            KeyedState::Typed { .. } => None,
        }
    }

    /// The form of this state, for the snapshots' metadata.
    pub(crate) fn schema(&self, aggregate: AggregateKind) -> StateSchema {
        StateSchema {
            aggregate,
            states: match self {
                KeyedState::Counts(_) => Vec::new(),
                KeyedState::Typed { op, .. } => op.declared(),
            },
        }
    }

    /// Each key's latest update, as a table (the job's result).
    pub(crate) fn into_result(self) -> Result<ResultTable, RuntimeError> {
        match self {
            KeyedState::Counts(t) => Ok(ResultTable::Counts(t)),
            KeyedState::Typed { op, .. } => Ok(ResultTable::Values {
                entries: op.results()?,
                peak: op.table().peak_len(),
            }),
        }
    }
}

fn apply_counts(
    table: &mut StateTable,
    out: &mut Output,
    batch: Vec<Record>,
) -> Result<(), RuntimeError> {
    for r in batch {
        let Value::Int(add) = r.value else {
            return Err(not_an_integer(r));
        };
        let v = table.add(r.key.clone(), add);
        out.emit_int(&r.key, v, r.ts)?;
    }
    Ok(())
}

/// A record whose value is not the integer count and sum need (the
/// sources and stages project integers for them: a defect, named).
#[cold]
fn not_an_integer(r: Record) -> RuntimeError {
    RuntimeError::NotAnInteger(NotAnInteger {
        key: r.key,
        value: r.value,
    })
}
