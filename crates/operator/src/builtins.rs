//! The JSON job spec's keyed operators with typed state, written on the
//! operator API ([`KeyedProcessFunction`]) like a user's: count-distinct
//! (a `MapState` of the values seen and a `ValueState` count per key),
//! dedup (a `ValueState` of the kept value per key), min, max, avg, and
//! the keyed two-input join ([`Join`]: a `ValueState` of the count and the
//! latest dimension, records told apart by their [`Input`]; with a state
//! TTL, the row expires after its last write).
//!
//! The runtime runs them through [`RecordOperator`], the object-safe face
//! of a [`KeyedOperator`] over the runtime's records (`key`, a [`Value`])
//! whose outputs are updates `(key, new value)`; each names the value
//! state holding a key's latest update (the job's result).
//!
//! Count-distinct and dedup take any value (integers, strings, lists);
//! min, max and avg integers (the sources project only integers for
//! them; anything else fails the task with [`OperatorError::NotAnInteger`]).
//! Their states' codec versions are 2 where the stored type became
//! [`Value`] (count-distinct's map, dedup's kept value): a restore of a
//! checkpoint written before is refused, naming both versions.

use cutpoint_core::metadata::DeclaredState;
use cutpoint_core::spec::{AggregateSpec, Keep};
use cutpoint_core::window::WindowSpec;
use cutpoint_core::{Key, KeyGroupRange, Record, Value};
use cutpoint_state::layout::StateDescriptor;
use cutpoint_state::typed::{TypedDelta, TypedTable};
use serde::de::DeserializeOwned;

use crate::interval::IntervalJoin;
use crate::session::SessionAggregate;
use crate::timers::{Fired, ProcessingClock, TimeDomain};
use crate::window::{WindowAggregate, WindowFunction};
use crate::{integer, KeyedContext, KeyedOperator, KeyedProcessFunction, OperatorError};

/// Which input of a keyed operator a record came on: a two-input operator
/// (the join) tells them apart, like Flink's `processElement1` /
/// `processElement2`; a one-input function takes every input's records
/// alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    First,
    Second,
}

/// What a keyed function run by the runtime takes: a [`Record`] (one
/// input) or `(Input, Record)` (two inputs).
pub trait FromRecord: Sized + 'static {
    fn from_record(input: Input, record: Record) -> Self;
    /// The record's key.
    fn key(&self) -> &Key;
}

impl FromRecord for Record {
    #[inline]
    fn from_record(_: Input, record: Record) -> Self {
        record
    }

    fn key(&self) -> &Key {
        &self.key
    }
}

impl FromRecord for (Input, Record) {
    #[inline]
    fn from_record(input: Input, record: Record) -> Self {
        (input, record)
    }

    fn key(&self) -> &Key {
        &self.1.key
    }
}

/// A keyed operator over records, as a task runs it.
pub trait RecordOperator: Send {
    /// Processes one record of `input`; its updates are appended to `out`.
    fn process(
        &mut self,
        input: Input,
        record: Record,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError>;
    /// Sets processing time (ms since the epoch): expired TTL state goes.
    fn set_time(&mut self, now_ms: u64) -> Result<(), OperatorError>;
    /// Checkpoint `checkpoint` completed (the function's hook).
    fn notify_checkpoint_complete(
        &mut self,
        checkpoint: cutpoint_core::CheckpointId,
    ) -> Result<(), OperatorError>;
    /// The changed entries since the last snapshot (O(1)).
    fn snapshot(&mut self) -> TypedDelta;
    /// Loads one entry of a restored key-group range.
    fn restore_entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), OperatorError>;
    /// Every key's latest update.
    fn results(&self) -> Result<Vec<(Key, Value)>, OperatorError>;
    /// Its declared states, by id (recorded with each snapshot).
    fn declared(&self) -> Vec<DeclaredState>;
    /// Its typed state (memory budget, statistics).
    fn table(&self) -> &TypedTable;
    fn table_mut(&mut self) -> &mut TypedTable;
    /// `domain`'s clock reached `t` (the watermark; the wall clock, or
    /// the last timer's time at the end of the input): up to `max` of its
    /// timers at or before it fire (call again on [`Fired::More`]); their
    /// updates go to `out` with the timer's time.
    fn on_time(
        &mut self,
        domain: TimeDomain,
        t: i64,
        max: usize,
        out: &mut Vec<(i64, Key, Value)>,
    ) -> Result<Fired, OperatorError>;
    /// A restore: the watermark each restored key-group range had.
    fn restore_watermarks(&mut self, floors: &[(KeyGroupRange, i64)]);
    /// Where its processing-time timers stand (what they fired up to is
    /// kept with a snapshot).
    fn processing_clock(&self) -> ProcessingClock;
    /// A restore: processing-time timers had fired up to `t`.
    fn restore_processing_time(&mut self, t: i64);
    /// The RocksDB key prefixes of key group `key_group`'s timers (none:
    /// no timers), read at a restore even when the rest of the state
    /// reads through under a memory budget.
    fn timer_prefixes(&self, key_group: u16) -> Vec<[u8; 4]>;
    /// Timers waiting, and records dropped as late so far.
    fn time_stats(&self) -> (usize, u64);
    /// Moves the records dropped as late since the last call to `out`.
    fn take_late(&mut self, out: &mut Vec<Record>);
}

/// A function whose per-key result is one value state (what a job's final
/// state reports per key), holding a `Result` (e.g. `i64` or [`Value`]).
pub trait WithResult: KeyedProcessFunction<In: FromRecord, Out = (Key, Value)> {
    type Result: DeserializeOwned + Into<Value>;

    fn result_state(&self) -> &StateDescriptor;
}

impl<F: WithResult> RecordOperator for KeyedOperator<F> {
    fn process(
        &mut self,
        input: Input,
        record: Record,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        KeyedOperator::process(self, F::In::from_record(input, record), out)
    }

    fn set_time(&mut self, now_ms: u64) -> Result<(), OperatorError> {
        KeyedOperator::set_time(self, now_ms)
    }

    fn notify_checkpoint_complete(
        &mut self,
        checkpoint: cutpoint_core::CheckpointId,
    ) -> Result<(), OperatorError> {
        KeyedOperator::notify_checkpoint_complete(self, checkpoint)
    }

    fn snapshot(&mut self) -> TypedDelta {
        KeyedOperator::snapshot(self)
    }

    fn restore_entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), OperatorError> {
        KeyedOperator::restore_entry(self, key, value)
    }

    fn results(&self) -> Result<Vec<(Key, Value)>, OperatorError> {
        let results = self
            .table
            .values::<F::Result>(self.function.result_state())?;
        Ok(results.into_iter().map(|(k, v)| (k, v.into())).collect())
    }

    fn declared(&self) -> Vec<DeclaredState> {
        self.table.names().declared()
    }

    fn table(&self) -> &TypedTable {
        &self.table
    }

    fn table_mut(&mut self) -> &mut TypedTable {
        &mut self.table
    }

    fn on_time(
        &mut self,
        domain: TimeDomain,
        t: i64,
        max: usize,
        out: &mut Vec<(i64, Key, Value)>,
    ) -> Result<Fired, OperatorError> {
        let mut fired = Vec::new();
        let more = self.advance(domain, t, max, &mut fired)?;
        out.extend(fired.into_iter().map(|(t, (k, v))| (t, k, v)));
        Ok(more)
    }

    fn restore_watermarks(&mut self, floors: &[(KeyGroupRange, i64)]) {
        KeyedOperator::restore_watermarks(self, floors)
    }

    fn processing_clock(&self) -> ProcessingClock {
        ProcessingClock::of(self.processing_timers())
    }

    fn restore_processing_time(&mut self, t: i64) {
        KeyedOperator::restore_processing_time(self, t)
    }

    fn timer_prefixes(&self, key_group: u16) -> Vec<[u8; 4]> {
        let services = [self.timers(), self.processing_timers()];
        services
            .into_iter()
            .flatten()
            .map(|t| t.prefix(key_group))
            .collect()
    }

    fn time_stats(&self) -> (usize, u64) {
        let services = [self.timers(), self.processing_timers()];
        let pending = services.into_iter().flatten().map(|t| t.len()).sum();
        (pending, self.function.late_records())
    }

    fn take_late(&mut self, out: &mut Vec<Record>) {
        self.function.take_late(out)
    }
}

/// Distinct values per key.
pub struct CountDistinct {
    seen: StateDescriptor,
    count: StateDescriptor,
}

impl Default for CountDistinct {
    fn default() -> Self {
        Self {
            seen: StateDescriptor::map("distinct_values").with_codec_version(2),
            count: StateDescriptor::value("distinct_count"),
        }
    }
}

impl KeyedProcessFunction for CountDistinct {
    type In = Record;
    type Out = (Key, Value);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![self.seen.clone(), self.count.clone()]
    }

    fn process(
        &mut self,
        record: Record,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        if ctx
            .map_get::<Value, ()>(&self.seen, &record.value)?
            .is_some()
        {
            return Ok(());
        }
        ctx.map_put(&self.seen, &record.value, &())?;
        let n = ctx.value::<i64>(&self.count)?.unwrap_or(0) + 1;
        ctx.set_value(&self.count, &n)?;
        out.push((record.key, Value::Int(n)));
        Ok(())
    }
}

impl WithResult for CountDistinct {
    type Result = i64;

    fn result_state(&self) -> &StateDescriptor {
        &self.count
    }
}

/// One kept value per key.
pub struct Dedup {
    keep: Keep,
    kept: StateDescriptor,
}

impl Dedup {
    pub fn new(keep: Keep) -> Self {
        Self {
            keep,
            kept: StateDescriptor::value("dedup_kept").with_codec_version(2),
        }
    }
}

impl KeyedProcessFunction for Dedup {
    type In = Record;
    type Out = (Key, Value);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![self.kept.clone()]
    }

    fn process(
        &mut self,
        record: Record,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let kept = ctx.value::<Value>(&self.kept)?;
        let emit = match self.keep {
            Keep::First => kept.is_none(),
            Keep::Last => kept.as_ref() != Some(&record.value),
        };
        if emit {
            ctx.set_value(&self.kept, &record.value)?;
            out.push((record.key, record.value));
        }
        Ok(())
    }
}

impl WithResult for Dedup {
    type Result = Value;

    fn result_state(&self) -> &StateDescriptor {
        &self.kept
    }
}

/// Which extreme [`Extreme`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Min,
    Max,
}

/// The smallest or largest value per key.
pub struct Extreme {
    which: Which,
    extreme: StateDescriptor,
}

impl Extreme {
    pub fn new(which: Which) -> Self {
        let name = match which {
            Which::Min => "min_value",
            Which::Max => "max_value",
        };
        Self {
            which,
            extreme: StateDescriptor::value(name),
        }
    }
}

impl KeyedProcessFunction for Extreme {
    type In = Record;
    type Out = (Key, Value);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![self.extreme.clone()]
    }

    fn process(
        &mut self,
        record: Record,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let value = integer(&record)?;
        let beats = |old: i64| match self.which {
            Which::Min => value < old,
            Which::Max => value > old,
        };
        if ctx.value::<i64>(&self.extreme)?.is_none_or(beats) {
            ctx.set_value(&self.extreme, &value)?;
            out.push((record.key, Value::Int(value)));
        }
        Ok(())
    }
}

impl WithResult for Extreme {
    type Result = i64;

    fn result_state(&self) -> &StateDescriptor {
        &self.extreme
    }
}

/// The mean of an integer field per key, rounded down (records carry
/// integers): a value state of the sum and count, and one of the mean,
/// emitted when it changes.
pub struct Avg {
    sum_count: StateDescriptor,
    mean: StateDescriptor,
}

impl Default for Avg {
    fn default() -> Self {
        Self {
            sum_count: StateDescriptor::value("avg_sum_count"),
            mean: StateDescriptor::value("avg_mean"),
        }
    }
}

impl KeyedProcessFunction for Avg {
    type In = Record;
    type Out = (Key, Value);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![self.sum_count.clone(), self.mean.clone()]
    }

    fn process(
        &mut self,
        record: Record,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let (sum, count) = ctx.value::<(i64, i64)>(&self.sum_count)?.unwrap_or((0, 0));
        let sum = sum.checked_add(integer(&record)?).ok_or_else(|| {
            OperatorError::User(format!(
                "avg: the sum of key {} overflows an i64",
                record.key
            ))
        })?;
        let count = count + 1;
        ctx.set_value(&self.sum_count, &(sum, count))?;
        let mean = sum.div_euclid(count);
        if ctx.value::<i64>(&self.mean)? != Some(mean) {
            ctx.set_value(&self.mean, &mean)?;
            out.push((record.key, Value::Int(mean)));
        }
        Ok(())
    }
}

impl WithResult for Avg {
    type Result = i64;

    fn result_state(&self) -> &StateDescriptor {
        &self.mean
    }
}

/// The keyed two-input join: records of the second input (the dimension
/// source) set the key's dimension — any value, the latest wins, no
/// update; each record of the first input (every other source) counts
/// and emits `[count, dimension]` (null until a dimension arrived). One
/// `ValueState<(i64, Value)>` per key, the job's result; with a TTL, a
/// row expires that long after its last write (either input's record
/// writes it).
pub struct Join {
    row: StateDescriptor,
}

impl Join {
    pub fn new(ttl: Option<std::time::Duration>) -> Self {
        let row = StateDescriptor::value("join_row");
        Self {
            row: match ttl {
                Some(ttl) => row.with_ttl(ttl),
                None => row,
            },
        }
    }
}

/// A join key's state: records of the first input counted, and the
/// latest dimension.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct JoinRow(pub i64, pub Value);

impl From<JoinRow> for Value {
    fn from(JoinRow(count, dimension): JoinRow) -> Value {
        Value::list([Value::Int(count), dimension])
    }
}

impl KeyedProcessFunction for Join {
    type In = (Input, Record);
    type Out = (Key, Value);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![self.row.clone()]
    }

    fn process(
        &mut self,
        (input, record): (Input, Record),
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let JoinRow(count, dimension) = ctx
            .value::<JoinRow>(&self.row)?
            .unwrap_or(JoinRow(0, Value::Null));
        match input {
            // With a TTL every record refreshes the row, the same
            // dimension too.
            Input::Second if dimension != record.value || self.row.ttl.is_some() => {
                ctx.set_value(&self.row, &JoinRow(count, record.value))?;
            }
            Input::Second => {}
            Input::First => {
                let row = JoinRow(count + 1, dimension);
                ctx.set_value(&self.row, &row)?;
                out.push((record.key, row.into()));
            }
        }
        Ok(())
    }
}

impl WithResult for Join {
    type Result = JoinRow;

    fn result_state(&self) -> &StateDescriptor {
        &self.row
    }
}

/// `function` as a subtask's operator, keyed by the record's key.
fn boxed<F: WithResult + 'static>(
    function: F,
    max_parallelism: u32,
) -> Result<Option<Box<dyn RecordOperator>>, OperatorError> {
    let key = |r: &F::In| r.key().clone();
    Ok(Some(Box::new(KeyedOperator::new(
        function,
        key,
        max_parallelism,
    )?)))
}

/// The operator for a typed aggregate, a built-in or one of `functions`
/// (`None`: the aggregate keeps one integer per key and runs without the
/// operator API).
pub fn builtin(
    aggregate: &AggregateSpec,
    window: Option<&WindowSpec>,
    max_parallelism: u32,
    functions: &crate::Functions,
) -> Result<Option<Box<dyn RecordOperator>>, OperatorError> {
    let p = max_parallelism;
    if let Some(w) = window {
        let function = match aggregate {
            AggregateSpec::Count => WindowFunction::Count,
            AggregateSpec::Sum { .. } => WindowFunction::Sum,
            AggregateSpec::Min { .. } => WindowFunction::Min,
            AggregateSpec::Max { .. } => WindowFunction::Max,
            AggregateSpec::Avg { .. } => WindowFunction::Avg,
            AggregateSpec::CountDistinct { .. } => WindowFunction::CountDistinct,
            AggregateSpec::TopN { n, .. } => WindowFunction::TopN(*n),
            AggregateSpec::WindowJoin { .. } => WindowFunction::Join,
            AggregateSpec::ProcessWindow { .. } => WindowFunction::Collect,
            other => {
                return Err(OperatorError::User(format!(
                    "a {} is not windowed",
                    other.name()
                )))
            }
        };
        let process = match aggregate {
            AggregateSpec::ProcessWindow { function, .. } => Some(functions.window(function)?),
            _ => None,
        };
        return match w.is_merging() {
            true => boxed(SessionAggregate::new(*w, function).with_process(process), p),
            false => boxed(WindowAggregate::new(*w, function).with_process(process), p),
        };
    }
    match aggregate {
        AggregateSpec::Process { function, .. } => Ok(Some(functions.make(function, p)?)),
        AggregateSpec::CountDistinct { .. } => boxed(CountDistinct::default(), p),
        AggregateSpec::Dedup { keep, .. } => boxed(Dedup::new(*keep), p),
        AggregateSpec::Min { .. } => boxed(Extreme::new(Which::Min), p),
        AggregateSpec::Max { .. } => boxed(Extreme::new(Which::Max), p),
        AggregateSpec::Avg { .. } => boxed(Avg::default(), p),
        AggregateSpec::Join { state_ttl_ms, .. } => {
            let ttl = state_ttl_ms.map(std::time::Duration::from_millis);
            boxed(Join::new(ttl), p)
        }
        AggregateSpec::IntervalJoin {
            lower_ms, upper_ms, ..
        } => boxed(IntervalJoin::new(*lower_ms, *upper_ms), p),
        AggregateSpec::TopN { .. }
        | AggregateSpec::WindowJoin { .. }
        | AggregateSpec::ProcessWindow { .. } => Err(OperatorError::User(format!(
            "aggregate: {} needs a window",
            aggregate.name()
        ))),
        AggregateSpec::Count | AggregateSpec::Sum { .. } => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(updates: Vec<(Key, Value)>) -> Vec<(Key, i64)> {
        let int = |(k, v): (Key, Value)| (k, v.as_int().expect("an integer"));
        updates.into_iter().map(int).collect()
    }

    fn run(op: &mut dyn RecordOperator, input: &[(i64, i64)]) -> Vec<(Key, i64)> {
        let mut out = Vec::new();
        for (k, v) in input {
            op.process(Input::First, Record::int(Key::Int(*k), *v), &mut out)
                .unwrap();
        }
        ints(out)
    }

    const INPUT: [(i64, i64); 7] = [(1, 5), (1, 5), (2, 7), (1, 6), (1, 5), (2, 7), (1, 9)];

    #[test]
    fn count_distinct_emits_each_new_value_once() {
        let agg = AggregateSpec::CountDistinct { field: "v".into() };
        let mut op = builtin(&agg, None, 128, &Default::default())
            .unwrap()
            .unwrap();
        let out = run(op.as_mut(), &INPUT);
        let int = |k, v| (Key::Int(k), v);
        assert_eq!(out, [int(1, 1), int(2, 1), int(1, 2), int(1, 3)]);
        let mut results = ints(op.results().unwrap());
        results.sort();
        assert_eq!(results, [int(1, 3), int(2, 1)]);
    }

    #[test]
    fn dedup_keeps_first_or_follows_changes() {
        let int = |k, v| (Key::Int(k), v);
        let first = AggregateSpec::Dedup {
            field: "v".into(),
            keep: Keep::First,
        };
        let mut op = builtin(&first, None, 128, &Default::default())
            .unwrap()
            .unwrap();
        assert_eq!(run(op.as_mut(), &INPUT), [int(1, 5), int(2, 7)]);
        let last = AggregateSpec::Dedup {
            field: "v".into(),
            keep: Keep::Last,
        };
        let mut op = builtin(&last, None, 128, &Default::default())
            .unwrap()
            .unwrap();
        let out = run(op.as_mut(), &INPUT);
        assert_eq!(out, [int(1, 5), int(2, 7), int(1, 6), int(1, 5), int(1, 9)]);
        let mut results = ints(op.results().unwrap());
        results.sort();
        assert_eq!(results, [int(1, 9), int(2, 7)]);
    }

    #[test]
    fn min_and_max_emit_each_new_extreme() {
        let int = |k, v| (Key::Int(k), v);
        let input = [(1, 5), (1, 7), (1, 0), (2, -3), (1, 0), (1, 9), (2, -4)];
        let min = AggregateSpec::Min { field: "v".into() };
        let mut op = builtin(&min, None, 128, &Default::default())
            .unwrap()
            .unwrap();
        // 0 is a value like any other: the first value of a key counts.
        assert_eq!(
            run(op.as_mut(), &input),
            [int(1, 5), int(1, 0), int(2, -3), int(2, -4)]
        );
        let mut results = ints(op.results().unwrap());
        results.sort();
        assert_eq!(results, [int(1, 0), int(2, -4)]);
        let max = AggregateSpec::Max { field: "v".into() };
        let mut op = builtin(&max, None, 128, &Default::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            run(op.as_mut(), &input),
            [int(1, 5), int(1, 7), int(2, -3), int(1, 9)]
        );
    }

    #[test]
    fn a_restored_operator_goes_on_where_the_snapshot_was() {
        let agg = AggregateSpec::CountDistinct { field: "v".into() };
        let mut op = builtin(&agg, None, 128, &Default::default())
            .unwrap()
            .unwrap();
        run(op.as_mut(), &INPUT[..4]);
        let delta = op.snapshot();
        let mut restored = builtin(&agg, None, 128, &Default::default())
            .unwrap()
            .unwrap();
        for (k, v) in &delta {
            restored.restore_entry(k, v.as_ref().unwrap()).unwrap();
        }
        let int = |k, v| (Key::Int(k), v);
        // 5 and 6 were seen before the snapshot: only 9 is new.
        assert_eq!(run(restored.as_mut(), &INPUT[4..]), [int(1, 3)]);
    }

    #[test]
    fn avg_emits_the_mean_rounded_down_when_it_changes() {
        let agg = AggregateSpec::Avg { field: "v".into() };
        let mut op = builtin(&agg, None, 128, &Default::default())
            .unwrap()
            .unwrap();
        let out = run(op.as_mut(), &[(1, 4), (1, 5), (1, 6), (1, -30), (2, 7)]);
        // Means of key 1: 4, 4 (9/2), 5, -4 (-15/4 rounded down).
        assert_eq!(
            out,
            vec![
                (Key::Int(1), 4),
                (Key::Int(1), 5),
                (Key::Int(1), -4),
                (Key::Int(2), 7)
            ]
        );
        let mut results = ints(op.results().unwrap());
        results.sort();
        assert_eq!(results, vec![(Key::Int(1), -4), (Key::Int(2), 7)]);
        let big = run(op.as_mut(), &[(3, i64::MAX)]);
        assert_eq!(big, vec![(Key::Int(3), i64::MAX)]);
        let r = Record::int(Key::Int(3), 1);
        let err = op
            .process(Input::First, r, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("overflows"), "{err}");
    }

    #[test]
    fn count_distinct_and_dedup_take_any_value_min_needs_an_integer() {
        let text = |k, v: &str| Record::new(Key::Int(k), Value::from(v));
        let agg = AggregateSpec::CountDistinct { field: "v".into() };
        let mut op = builtin(&agg, None, 128, &Default::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let five = Record::int(Key::Int(1), 5);
        for r in [text(1, "a"), text(1, "b"), text(1, "a"), five, text(1, "5")] {
            op.process(Input::First, r, &mut out).unwrap();
        }
        // 5 and "5" are two values.
        let counts: Vec<i64> = ints(out).into_iter().map(|(_, n)| n).collect();
        assert_eq!(counts, [1, 2, 3, 4]);
        let last = AggregateSpec::Dedup {
            field: "v".into(),
            keep: Keep::Last,
        };
        let mut op = builtin(&last, None, 128, &Default::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        for r in [text(1, "a"), text(1, "a"), text(1, "b")] {
            op.process(Input::First, r, &mut out).unwrap();
        }
        assert_eq!(out, [(Key::Int(1), "a".into()), (Key::Int(1), "b".into())]);
        assert_eq!(op.results().unwrap(), [(Key::Int(1), Value::from("b"))]);
        let min = AggregateSpec::Min { field: "v".into() };
        let mut op = builtin(&min, None, 128, &Default::default())
            .unwrap()
            .unwrap();
        let err = op
            .process(Input::First, text(4, "z"), &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, OperatorError::NotAnInteger(_)), "{err}");
        assert!(err.to_string().contains("\"z\""), "{err}");
    }

    #[test]
    fn join_counts_the_first_input_with_the_latest_dimension_of_the_second() {
        let agg = AggregateSpec::Join {
            dimension_source: 1,
            field: "category".into(),
            state_ttl_ms: None,
        };
        let mut op = builtin(&agg, None, 128, &Default::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let dim = |k, v: &str| Record::new(Key::Int(k), Value::from(v));
        let click = |k| Record::int(Key::Int(k), 1);
        op.process(Input::First, click(1), &mut out).unwrap();
        op.process(Input::Second, dim(1, "games"), &mut out)
            .unwrap();
        op.process(Input::Second, dim(2, "news"), &mut out).unwrap();
        op.process(Input::First, click(1), &mut out).unwrap();
        op.process(Input::Second, dim(1, "tools"), &mut out)
            .unwrap();
        op.process(Input::First, click(1), &mut out).unwrap();
        let row = |n, d: Value| Value::list([Value::Int(n), d]);
        // Only clicks emit: the count so far, with the dimension known then.
        assert_eq!(
            out,
            [
                (Key::Int(1), row(1, Value::Null)),
                (Key::Int(1), row(2, "games".into())),
                (Key::Int(1), row(3, "tools".into())),
            ]
        );
        let mut results = op.results().unwrap();
        results.sort();
        assert_eq!(
            results,
            [
                (Key::Int(1), row(3, "tools".into())),
                (Key::Int(2), row(0, "news".into()))
            ]
        );
    }

    /// With a state TTL, a key's row (count and dimension) expires that
    /// long after its last write, by either input; the key starts afresh.
    #[test]
    fn a_join_row_expires_its_ttl_after_its_last_write() {
        let agg = AggregateSpec::Join {
            dimension_source: 1,
            field: "category".into(),
            state_ttl_ms: Some(100),
        };
        let mut op = builtin(&agg, None, 128, &Default::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let dim = |k, v: &str| Record::new(Key::Int(k), Value::from(v));
        let click = |k| Record::int(Key::Int(k), 1);
        op.set_time(1_000).unwrap();
        op.process(Input::Second, dim(1, "games"), &mut out)
            .unwrap();
        op.process(Input::Second, dim(2, "news"), &mut out).unwrap();
        op.process(Input::Second, dim(3, "docs"), &mut out).unwrap();
        op.set_time(1_050).unwrap();
        // Key 1's row written again by a click, key 2's by the same
        // dimension again: they live until 1_150.
        op.process(Input::First, click(1), &mut out).unwrap();
        op.process(Input::Second, dim(2, "news"), &mut out).unwrap();
        // Key 3's row (written at 1_000) is gone at 1_100; 1's and 2's not.
        op.set_time(1_120).unwrap();
        op.process(Input::First, click(1), &mut out).unwrap();
        op.process(Input::First, click(2), &mut out).unwrap();
        op.process(Input::First, click(3), &mut out).unwrap();
        // The rows were written at 1_120: gone at 1_220.
        op.set_time(1_219).unwrap();
        assert_eq!(op.results().unwrap().len(), 3);
        op.set_time(1_220).unwrap();
        assert_eq!(op.results().unwrap(), []);
        op.process(Input::First, click(1), &mut out).unwrap();
        let row = |n, d: Value| Value::list([Value::Int(n), d]);
        assert_eq!(
            out,
            [
                (Key::Int(1), row(1, "games".into())),
                (Key::Int(1), row(2, "games".into())),
                (Key::Int(2), row(1, "news".into())),
                (Key::Int(3), row(1, Value::Null)),
                (Key::Int(1), row(1, Value::Null)),
            ]
        );
        assert_eq!(op.results().unwrap(), [(Key::Int(1), row(1, Value::Null))]);
    }
}
