//! Event-time timers of one keyed subtask (Flink's `InternalTimerService`):
//! registered and deleted per key and namespace, deduplicated per
//! (key, namespace, time), fired in time order once the watermark reaches
//! them ([`crate::KeyedOperator::advance_watermark`]).
//!
//! Invariants:
//! - A timer lives in keyed state: an entry of the reserved map state
//!   [`TIMER_STATE`] under its key and namespace, its user key the time
//!   (8 bytes, ordered). So it is in every snapshot — incrementally, with
//!   the rest of the state — restored with it and rescaled with its key
//!   group. The queue in memory is an index of those entries, rebuilt from
//!   them on restore ([`TimerService::restore`]); it holds every timer
//!   whatever the memory budget (their entries follow the budget).
//! - A timer fires once: it leaves the queue and its entry is deleted
//!   before the function runs, so a snapshot taken after has no such
//!   timer; a restore from one taken before fires it again (its output,
//!   after that snapshot, was not committed).
//! - Timers fire in (time, key, namespace) order; one registered while
//!   firing, at or before the watermark, fires in the same pass.

use std::collections::BTreeSet;

use cutpoint_core::{keygroup, Key};
use cutpoint_state::layout::{decode_entry, LayoutError, StateDescriptor};
use cutpoint_state::typed::{KeyContext, TypedTable};

/// The reserved name of the state that holds a function's timers.
pub const TIMER_STATE: &str = "__event_timers";

/// A timer: when, and for which key and namespace.
pub type Timer = (i64, Key, Vec<u8>);

/// A timer's user key: its time, sign-flipped big-endian (ordered).
fn time_key(time: i64) -> [u8; 8] {
    ((time as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_of(user_key: &[u8]) -> Result<i64, LayoutError> {
    let bytes: [u8; 8] = user_key
        .try_into()
        .map_err(|_| LayoutError::MalformedKey("a timer without its time"))?;
    Ok((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// The event-time timers of one subtask.
#[derive(Debug)]
pub struct TimerService {
    queue: BTreeSet<Timer>,
    state: StateDescriptor,
    /// The state id [`TIMER_STATE`] has in this subtask's table.
    state_id: u16,
    watermark: Option<i64>,
}

impl TimerService {
    /// The state a function with timers declares.
    pub fn descriptor() -> StateDescriptor {
        StateDescriptor::map(TIMER_STATE)
    }

    /// Timers kept in state `state_id` of a table.
    pub(crate) fn new(state_id: u16) -> Self {
        Self {
            queue: BTreeSet::new(),
            state: Self::descriptor(),
            state_id,
            watermark: None,
        }
    }

    /// The watermark timers fired up to.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Timers waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A restore: the watermark the checkpoint kept.
    pub(crate) fn restore_watermark(&mut self, w: i64) {
        self.watermark = Some(self.watermark.map_or(w, |c| c.max(w)));
    }

    /// A timer at `time` for `ctx`'s key and namespace (once per triple).
    pub(crate) fn register(
        &mut self,
        table: &mut TypedTable,
        ctx: &KeyContext,
        time: i64,
    ) -> Result<(), LayoutError> {
        if self
            .queue
            .insert((time, ctx.key.clone(), ctx.namespace.clone()))
        {
            table.map_put(&self.state, ctx, &time_key(time), &())?;
        }
        Ok(())
    }

    /// Deletes the timer at `time` for `ctx`'s key and namespace, if any.
    pub(crate) fn delete(
        &mut self,
        table: &mut TypedTable,
        ctx: &KeyContext,
        time: i64,
    ) -> Result<(), LayoutError> {
        if self
            .queue
            .remove(&(time, ctx.key.clone(), ctx.namespace.clone()))
        {
            table.map_remove(&self.state, ctx, &time_key(time))?;
        }
        Ok(())
    }

    /// The watermark reached `w`: the next timer due, taken out of the
    /// queue and the state (the caller fires it).
    pub(crate) fn pop_due(
        &mut self,
        table: &mut TypedTable,
        w: i64,
        max_parallelism: u32,
    ) -> Result<Option<(i64, KeyContext)>, LayoutError> {
        self.watermark = Some(self.watermark.map_or(w, |c| c.max(w)));
        let due = self.queue.first().is_some_and(|t| t.0 <= w);
        let Some((time, key, namespace)) = due.then(|| self.queue.pop_first()).flatten() else {
            return Ok(None);
        };
        let key_group = keygroup::key_group(key.stable_hash(), max_parallelism) as u16;
        let ctx = KeyContext {
            key,
            key_group,
            namespace,
        };
        table.map_remove(&self.state, &ctx, &time_key(time))?;
        Ok(Some((time, ctx)))
    }

    /// One restored entry: a timer if it is one of [`TIMER_STATE`]'s.
    pub(crate) fn restore(&mut self, entry: &[u8]) -> Result<(), LayoutError> {
        if entry.get(2..4) != Some(&self.state_id.to_be_bytes()) {
            return Ok(());
        }
        let e = decode_entry(entry)?;
        let key = Key::decode(&e.key).ok_or(LayoutError::MalformedKey("bad key"))?;
        self.queue.insert((time_of(&e.user_key)?, key, e.namespace));
        Ok(())
    }

    /// Whether `entry` (a RocksDB key) is a timer.
    pub fn is_timer(&self, entry: &[u8]) -> bool {
        entry.get(2..4) == Some(&self.state_id.to_be_bytes())
    }
}
