//! Timers of one keyed subtask (Flink's `InternalTimerService`), event
//! time and processing time ([`Timers`], one [`TimerService`] each):
//! registered and deleted per key and namespace, deduplicated per
//! (key, namespace, time), fired in time order once the watermark
//! ([`crate::KeyedOperator::advance_watermark`]) or the wall clock
//! ([`crate::KeyedOperator::advance_processing_time`]) reaches them.
//!
//! Invariants:
//! - A timer lives in keyed state: an entry of the reserved map state
//!   [`TIMER_STATE`] (event time) or [`PROCESSING_TIMER_STATE`] under its
//!   key and namespace, its user key the time
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

use cutpoint_core::{keygroup, Key, KeyGroupRange};
use cutpoint_state::layout::{decode_entry, LayoutError, StateDescriptor};
use cutpoint_state::typed::{KeyContext, TypedTable};

/// The reserved name of the state that holds a function's event-time
/// timers.
pub const TIMER_STATE: &str = "__event_timers";
/// The reserved name of the state that holds its processing-time timers
/// (a restore brings them back; those whose time passed meanwhile fire
/// at once).
pub const PROCESSING_TIMER_STATE: &str = "__processing_timers";

/// Which clock a timer follows (Flink's `TimeDomain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeDomain {
    EventTime,
    ProcessingTime,
}

/// Where a function's processing-time timers stand: when the first and
/// the last waiting are due, and the time they fired up to (all `None`
/// for a function without them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessingClock {
    pub next: Option<i64>,
    pub last: Option<i64>,
    pub fired: Option<i64>,
}

impl ProcessingClock {
    /// The clock of `service` (none: the default).
    pub fn of(service: Option<&TimerService>) -> Self {
        service.map_or_else(Self::default, |t| Self {
            next: t.next(),
            last: t.last(),
            fired: t.watermark(),
        })
    }

    /// Whether a timer is due at `now`.
    pub fn is_due(&self, now: i64) -> bool {
        self.next.is_some_and(|t| t <= now)
    }
}

/// A function's timers: event time, and processing time if it says it
/// uses them (so functions that do not declare no state for them).
#[derive(Debug)]
pub struct Timers {
    pub(crate) event: TimerService,
    pub(crate) processing: Option<TimerService>,
}

impl Timers {
    pub(crate) fn of(&mut self, domain: TimeDomain) -> Option<&mut TimerService> {
        match domain {
            TimeDomain::EventTime => Some(&mut self.event),
            TimeDomain::ProcessingTime => self.processing.as_mut(),
        }
    }
}

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

/// The timers of one subtask in one domain.
#[derive(Debug)]
pub struct TimerService {
    queue: BTreeSet<Timer>,
    state: StateDescriptor,
    /// The state id its state has in this subtask's table.
    state_id: u16,
    /// The time timers fired up to (the watermark, or the wall clock).
    watermark: Option<i64>,
    /// A restore: the watermark each restored key-group range had at the
    /// checkpoint (its subtask's). A key of one of them sees at least it,
    /// so what fired there before the checkpoint stays fired after a
    /// rescale that joined it with a subtask that was behind.
    floors: Vec<(KeyGroupRange, i64)>,
}

/// Whether a pass of firing timers fired every due one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    All,
    /// The limit was reached; more are due.
    More,
}

impl TimerService {
    /// The state a function with timers declares for `domain`'s.
    pub fn descriptor(domain: TimeDomain) -> StateDescriptor {
        match domain {
            TimeDomain::EventTime => StateDescriptor::map(TIMER_STATE),
            TimeDomain::ProcessingTime => StateDescriptor::map(PROCESSING_TIMER_STATE),
        }
    }

    /// `domain`'s timers, kept in state `state_id` of a table.
    pub(crate) fn new(domain: TimeDomain, state_id: u16) -> Self {
        Self {
            queue: BTreeSet::new(),
            state: Self::descriptor(domain),
            state_id,
            watermark: None,
            floors: Vec::new(),
        }
    }

    /// The time of the first timer waiting.
    pub fn next(&self) -> Option<i64> {
        self.queue.first().map(|t| t.0)
    }

    /// The time of the last timer waiting.
    pub fn last(&self) -> Option<i64> {
        self.queue.last().map(|t| t.0)
    }

    /// A restore: timers had fired up to `t` (never goes back).
    pub(crate) fn restore_fired(&mut self, t: i64) {
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
    }

    /// The watermark timers fired up to.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// The watermark a key of key group `key_group` sees: the subtask's,
    /// or its range's at the restored checkpoint if that is later.
    pub fn watermark_for(&self, key_group: u16) -> Option<i64> {
        let floor = self
            .floors
            .iter()
            .filter(|(r, _)| r.contains(u32::from(key_group)))
            .map(|(_, w)| *w)
            .max();
        self.watermark.max(floor)
    }

    /// Whether a timer at or before `w` waits.
    pub fn is_due(&self, w: i64) -> bool {
        self.queue.first().is_some_and(|t| t.0 <= w)
    }

    /// Timers waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A restore: the watermark each restored key-group range had.
    pub(crate) fn restore_watermarks(&mut self, floors: &[(KeyGroupRange, i64)]) {
        self.floors = floors.to_vec();
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

    /// The RocksDB key prefix of every timer of key group `key_group`.
    pub fn prefix(&self, key_group: u16) -> [u8; 4] {
        let mut p = [0; 4];
        p[..2].copy_from_slice(&key_group.to_be_bytes());
        p[2..].copy_from_slice(&self.state_id.to_be_bytes());
        p
    }

    /// One restored entry: a timer if it is one of this service's state.
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

#[cfg(test)]
mod tests {
    use cutpoint_core::{KeyGroupRange, Record, Value};
    use cutpoint_state::RocksStore;

    use crate::{KeyedContext, KeyedOperator, KeyedProcessFunction, OperatorError};

    const MAXP: u32 = 128;

    /// Registers a timer at each record's value (deleting it instead for a
    /// negative one); a firing at an even time registers one more at
    /// time + 1. Emits `(key, time)` per firing.
    struct Alarms;

    impl KeyedProcessFunction for Alarms {
        type In = Record;
        type Out = (i64, i64);

        fn states(&self) -> Vec<cutpoint_state::layout::StateDescriptor> {
            Vec::new()
        }

        fn uses_timers(&self) -> bool {
            true
        }

        fn process(
            &mut self,
            r: Record,
            ctx: &mut KeyedContext<'_>,
            _: &mut Vec<(i64, i64)>,
        ) -> Result<(), OperatorError> {
            let t = r.value.as_int().unwrap();
            match t < 0 {
                true => ctx.delete_event_time_timer(-t),
                false => ctx.register_event_time_timer(t),
            }
        }

        fn on_timer(
            &mut self,
            time: i64,
            ctx: &mut KeyedContext<'_>,
            out: &mut Vec<(i64, i64)>,
        ) -> Result<(), OperatorError> {
            let Some(k) = ctx.current_key().to_string().parse().ok() else {
                return Err(OperatorError::User("key".into()));
            };
            out.push((k, time));
            if time % 2 == 0 {
                ctx.register_event_time_timer(time + 1)?;
            }
            Ok(())
        }
    }

    fn op() -> KeyedOperator<Alarms> {
        KeyedOperator::new(Alarms, |r: &Record| r.key.clone(), MAXP).unwrap()
    }

    fn set(op: &mut KeyedOperator<Alarms>, key: i64, t: i64) {
        op.process(Record::new(key, Value::Int(t)), &mut Vec::new())
            .unwrap();
    }

    fn fire(op: &mut KeyedOperator<Alarms>, w: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        op.advance_watermark(w, usize::MAX, &mut out).unwrap();
        out.into_iter().map(|(_, o)| o).collect()
    }

    #[test]
    fn timers_fire_once_in_time_order_and_are_deduplicated() {
        let mut op = op();
        for (k, t) in [
            (1, 31),
            (2, 11),
            (1, 11),
            (1, 31),
            (2, 21),
            (2, -21),
            (3, 12),
        ] {
            set(&mut op, k, t);
        }
        assert_eq!(op.timers().unwrap().len(), 4, "one per key and time");
        assert_eq!(fire(&mut op, 10), []);
        // 12 fires and registers 13, which is due too: the same pass.
        assert_eq!(fire(&mut op, 13), [(1, 11), (2, 11), (3, 12), (3, 13)]);
        assert_eq!(fire(&mut op, 100), [(1, 31)], "21 was deleted");
        assert_eq!(fire(&mut op, 200), []);
        assert_eq!(op.timers().unwrap().watermark(), Some(200));
    }

    #[test]
    fn a_function_without_timers_cannot_register_one() {
        struct Plain;
        impl KeyedProcessFunction for Plain {
            type In = Record;
            type Out = ();
            fn states(&self) -> Vec<cutpoint_state::layout::StateDescriptor> {
                Vec::new()
            }
            fn process(
                &mut self,
                _: Record,
                ctx: &mut KeyedContext<'_>,
                _: &mut Vec<()>,
            ) -> Result<(), OperatorError> {
                ctx.register_event_time_timer(5)
            }
        }
        let mut op = KeyedOperator::new(Plain, |r: &Record| r.key.clone(), MAXP).unwrap();
        let e = op.process(Record::new(1, 1), &mut Vec::new()).unwrap_err();
        assert!(matches!(e, OperatorError::NoTimers), "{e}");
        // Event-time timers only: no processing-time one, and no state
        // for them.
        let mut alarms = super::tests::op();
        assert!(alarms.processing_timers().is_none());
        struct Late;
        impl KeyedProcessFunction for Late {
            type In = Record;
            type Out = ();
            fn states(&self) -> Vec<cutpoint_state::layout::StateDescriptor> {
                Vec::new()
            }
            fn uses_timers(&self) -> bool {
                true
            }
            fn process(
                &mut self,
                _: Record,
                ctx: &mut KeyedContext<'_>,
                _: &mut Vec<()>,
            ) -> Result<(), OperatorError> {
                ctx.register_processing_time_timer(5)
            }
        }
        let mut late = KeyedOperator::new(Late, |r: &Record| r.key.clone(), MAXP).unwrap();
        let e = late
            .process(Record::new(1, 1), &mut Vec::new())
            .unwrap_err();
        assert!(matches!(e, OperatorError::NoProcessingTimers), "{e}");
        set(&mut alarms, 1, 5);
    }

    /// Timers of many keys in two subtasks' RocksDB, some fired before the
    /// snapshot: restored into one subtask (a rescale), each remaining
    /// timer fires once and none that fired comes back; afterwards RocksDB
    /// holds no timer.
    #[test]
    fn timers_are_restored_and_rescaled_with_their_key_groups() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let open = |d: &tempfile::TempDir| {
            RocksStore::open(&d.path().join("db"), &d.path().join("s"), MAXP).unwrap()
        };
        let mut stores: Vec<RocksStore> = dirs.iter().map(open).collect();
        let mut ops = [op(), op()];
        let group = |k: i64| {
            cutpoint_core::keygroup::key_group(cutpoint_core::Key::Int(k).stable_hash(), MAXP)
        };
        for k in 0..200 {
            let sub = usize::from(group(k) >= 64);
            set(&mut ops[sub], k, 101 + 2 * (k % 10));
        }
        let mut fired_before: Vec<(i64, i64)> = Vec::new();
        for (op, db) in ops.iter_mut().zip(&mut stores) {
            fired_before.extend(fire(op, 104));
            db.apply_entries(&op.snapshot()).unwrap();
        }
        assert_eq!(fired_before.len(), 40, "times 101 and 103");
        let mut one = op();
        let all = KeyGroupRange {
            start: 0,
            end: MAXP - 1,
        };
        for db in &stores {
            db.scan_raw(all, |k, v| {
                one.restore_entry(k, v).unwrap();
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(one.timers().unwrap().len(), 160);
        let mut after = fire(&mut one, i64::MAX);
        after.sort_unstable();
        let mut want: Vec<(i64, i64)> = (0..200)
            .map(|k| (k, 101 + 2 * (k % 10)))
            .filter(|(_, t)| *t > 104)
            .collect();
        want.sort_unstable();
        assert_eq!(after, want);
        let delta = one.snapshot();
        let mut left = 0;
        for db in &mut stores {
            db.apply_entries(&delta).unwrap();
            db.scan_raw(all, |k, _| {
                left += usize::from(one.timers().unwrap().is_timer(k));
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(left, 0, "every fired timer's entry is deleted in RocksDB");
    }

    /// Registers a processing-time timer at each record's value and an
    /// event-time one at its negation; emits `(time, 1)` for a
    /// processing-time firing, `(time, 0)` for an event-time one.
    struct Both;

    impl KeyedProcessFunction for Both {
        type In = Record;
        type Out = (i64, i64);

        fn states(&self) -> Vec<cutpoint_state::layout::StateDescriptor> {
            Vec::new()
        }

        fn uses_timers(&self) -> bool {
            true
        }

        fn uses_processing_time_timers(&self) -> bool {
            true
        }

        fn process(
            &mut self,
            r: Record,
            ctx: &mut KeyedContext<'_>,
            _: &mut Vec<(i64, i64)>,
        ) -> Result<(), OperatorError> {
            let t = r.value.as_int().unwrap();
            ctx.register_processing_time_timer(t)?;
            ctx.register_event_time_timer(-t)
        }

        fn on_timer(
            &mut self,
            time: i64,
            ctx: &mut KeyedContext<'_>,
            out: &mut Vec<(i64, i64)>,
        ) -> Result<(), OperatorError> {
            let domain = ctx.time_domain();
            out.push((time, i64::from(domain == super::TimeDomain::ProcessingTime)));
            Ok(())
        }
    }

    /// Processing-time timers fire by the wall clock, apart from the
    /// event-time ones, in time order and once; they are kept in their own
    /// reserved state, so a restore brings back those that had not fired.
    #[test]
    fn processing_time_timers_fire_by_the_clock_apart_and_survive_a_restore() {
        let mut op = KeyedOperator::new(Both, |r: &Record| r.key.clone(), MAXP).unwrap();
        for (k, t) in [(1, 30), (2, 10), (1, 30), (3, 20)] {
            op.process(Record::new(k, Value::Int(t)), &mut Vec::new())
                .unwrap();
        }
        assert_eq!(op.processing_timers().unwrap().len(), 3, "deduplicated");
        assert_eq!(op.processing_timers().unwrap().next(), Some(10));
        let mut out = Vec::new();
        op.advance_processing_time(20, usize::MAX, &mut out)
            .unwrap();
        let fired: Vec<_> = out.drain(..).map(|(_, o)| o).collect();
        assert_eq!(fired, [(10, 1), (20, 1)]);
        assert_eq!(op.timers().unwrap().len(), 3, "event-time ones wait");
        // What fired is remembered: the context's clock reads past it.
        assert_eq!(op.processing_timers().unwrap().watermark(), Some(20));

        let dir = tempfile::tempdir().unwrap();
        let mut db = RocksStore::open(&dir.path().join("db"), &dir.path().join("s"), MAXP).unwrap();
        db.apply_entries(&op.snapshot()).unwrap();
        let mut restored = KeyedOperator::new(Both, |r: &Record| r.key.clone(), MAXP).unwrap();
        let all = KeyGroupRange {
            start: 0,
            end: MAXP - 1,
        };
        db.scan_raw(all, |k, v| {
            restored.restore_entry(k, v).unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(restored.processing_timers().unwrap().len(), 1);
        assert_eq!(restored.timers().unwrap().len(), 3);
        let mut out = Vec::new();
        restored
            .advance_processing_time(i64::MAX, usize::MAX, &mut out)
            .unwrap();
        assert_eq!(
            out.into_iter().map(|(_, o)| o).collect::<Vec<_>>(),
            [(30, 1)]
        );
        let mut out = Vec::new();
        restored
            .advance_watermark(-15, usize::MAX, &mut out)
            .unwrap();
        let event: Vec<_> = out.into_iter().map(|(_, o)| o).collect();
        assert_eq!(event, [(-30, 0), (-20, 0)]);
    }
}
