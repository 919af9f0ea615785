//! The JSON job spec's keyed operators with typed state, written on the
//! operator API ([`KeyedProcessFunction`]) like a user's: count-distinct
//! (a `MapState` of the values seen and a `ValueState` count per key) and
//! dedup (a `ValueState` of the kept value per key).
//!
//! The runtime runs them through [`RecordOperator`], the object-safe face
//! of a [`KeyedOperator`] over the runtime's records (`key`, integer
//! `value`) whose outputs are updates `(key, new value)`; each names the
//! value state holding a key's latest update (the job's result).

use cutpoint_core::metadata::DeclaredState;
use cutpoint_core::spec::{AggregateSpec, Keep};
use cutpoint_core::{Key, Record};
use cutpoint_state::layout::StateDescriptor;
use cutpoint_state::typed::{TypedDelta, TypedTable};

use crate::{KeyedContext, KeyedOperator, KeyedProcessFunction, OperatorError};

/// A keyed operator over records, as a task runs it.
pub trait RecordOperator: Send {
    /// Processes one record; its updates are appended to `out`.
    fn process(&mut self, record: Record, out: &mut Vec<(Key, i64)>) -> Result<(), OperatorError>;
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
    fn results(&self) -> Result<Vec<(Key, i64)>, OperatorError>;
    /// Its declared states, by id (recorded with each snapshot).
    fn declared(&self) -> Vec<DeclaredState>;
    /// Its typed state (memory budget, statistics).
    fn table(&self) -> &TypedTable;
    fn table_mut(&mut self) -> &mut TypedTable;
}

/// A function whose per-key result is one value state (what a job's final
/// state reports per key).
pub trait WithResult: KeyedProcessFunction<In = Record, Out = (Key, i64)> {
    fn result_state(&self) -> &StateDescriptor;
}

impl<F: WithResult> RecordOperator for KeyedOperator<F> {
    fn process(&mut self, record: Record, out: &mut Vec<(Key, i64)>) -> Result<(), OperatorError> {
        KeyedOperator::process(self, record, out)
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

    fn results(&self) -> Result<Vec<(Key, i64)>, OperatorError> {
        Ok(self.table.values(self.function.result_state())?)
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
}

/// Distinct values per key.
pub struct CountDistinct {
    seen: StateDescriptor,
    count: StateDescriptor,
}

impl Default for CountDistinct {
    fn default() -> Self {
        Self {
            seen: StateDescriptor::map("distinct_values"),
            count: StateDescriptor::value("distinct_count"),
        }
    }
}

impl KeyedProcessFunction for CountDistinct {
    type In = Record;
    type Out = (Key, i64);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![self.seen.clone(), self.count.clone()]
    }

    fn process(
        &mut self,
        record: Record,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, i64)>,
    ) -> Result<(), OperatorError> {
        if ctx.map_get::<i64, ()>(&self.seen, &record.value)?.is_some() {
            return Ok(());
        }
        ctx.map_put(&self.seen, &record.value, &())?;
        let n = ctx.value::<i64>(&self.count)?.unwrap_or(0) + 1;
        ctx.set_value(&self.count, &n)?;
        out.push((record.key, n));
        Ok(())
    }
}

impl WithResult for CountDistinct {
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
            kept: StateDescriptor::value("dedup_kept"),
        }
    }
}

impl KeyedProcessFunction for Dedup {
    type In = Record;
    type Out = (Key, i64);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![self.kept.clone()]
    }

    fn process(
        &mut self,
        record: Record,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, i64)>,
    ) -> Result<(), OperatorError> {
        let kept = ctx.value::<i64>(&self.kept)?;
        let emit = match self.keep {
            Keep::First => kept.is_none(),
            Keep::Last => kept != Some(record.value),
        };
        if emit {
            ctx.set_value(&self.kept, &record.value)?;
            out.push((record.key, record.value));
        }
        Ok(())
    }
}

impl WithResult for Dedup {
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
    type Out = (Key, i64);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![self.extreme.clone()]
    }

    fn process(
        &mut self,
        record: Record,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, i64)>,
    ) -> Result<(), OperatorError> {
        let beats = |old: i64| match self.which {
            Which::Min => record.value < old,
            Which::Max => record.value > old,
        };
        if ctx.value::<i64>(&self.extreme)?.is_none_or(beats) {
            ctx.set_value(&self.extreme, &record.value)?;
            out.push((record.key, record.value));
        }
        Ok(())
    }
}

impl WithResult for Extreme {
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
    type Out = (Key, i64);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![self.sum_count.clone(), self.mean.clone()]
    }

    fn process(
        &mut self,
        record: Record,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, i64)>,
    ) -> Result<(), OperatorError> {
        let (sum, count) = ctx.value::<(i64, i64)>(&self.sum_count)?.unwrap_or((0, 0));
        let sum = sum.checked_add(record.value).ok_or_else(|| {
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
            out.push((record.key, mean));
        }
        Ok(())
    }
}

impl WithResult for Avg {
    fn result_state(&self) -> &StateDescriptor {
        &self.mean
    }
}

/// `function` as a subtask's operator, keyed by the record's key.
fn boxed<F: WithResult + 'static>(
    function: F,
    max_parallelism: u32,
) -> Result<Option<Box<dyn RecordOperator>>, OperatorError> {
    let key = |r: &Record| r.key.clone();
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
    max_parallelism: u32,
    functions: &crate::Functions,
) -> Result<Option<Box<dyn RecordOperator>>, OperatorError> {
    let p = max_parallelism;
    match aggregate {
        AggregateSpec::Process { function, .. } => Ok(Some(functions.make(function, p)?)),
        AggregateSpec::CountDistinct { .. } => boxed(CountDistinct::default(), p),
        AggregateSpec::Dedup { keep, .. } => boxed(Dedup::new(*keep), p),
        AggregateSpec::Min { .. } => boxed(Extreme::new(Which::Min), p),
        AggregateSpec::Max { .. } => boxed(Extreme::new(Which::Max), p),
        AggregateSpec::Avg { .. } => boxed(Avg::default(), p),
        AggregateSpec::Count | AggregateSpec::Sum { .. } | AggregateSpec::Join { .. } => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(op: &mut dyn RecordOperator, input: &[(i64, i64)]) -> Vec<(Key, i64)> {
        let mut out = Vec::new();
        for (k, v) in input {
            let r = Record {
                key: Key::Int(*k),
                value: *v,
            };
            op.process(r, &mut out).unwrap();
        }
        out
    }

    const INPUT: [(i64, i64); 7] = [(1, 5), (1, 5), (2, 7), (1, 6), (1, 5), (2, 7), (1, 9)];

    #[test]
    fn count_distinct_emits_each_new_value_once() {
        let agg = AggregateSpec::CountDistinct { field: "v".into() };
        let mut op = builtin(&agg, 128, &Default::default()).unwrap().unwrap();
        let out = run(op.as_mut(), &INPUT);
        let int = |k, v| (Key::Int(k), v);
        assert_eq!(out, [int(1, 1), int(2, 1), int(1, 2), int(1, 3)]);
        let mut results = op.results().unwrap();
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
        let mut op = builtin(&first, 128, &Default::default()).unwrap().unwrap();
        assert_eq!(run(op.as_mut(), &INPUT), [int(1, 5), int(2, 7)]);
        let last = AggregateSpec::Dedup {
            field: "v".into(),
            keep: Keep::Last,
        };
        let mut op = builtin(&last, 128, &Default::default()).unwrap().unwrap();
        let out = run(op.as_mut(), &INPUT);
        assert_eq!(out, [int(1, 5), int(2, 7), int(1, 6), int(1, 5), int(1, 9)]);
        let mut results = op.results().unwrap();
        results.sort();
        assert_eq!(results, [int(1, 9), int(2, 7)]);
    }

    #[test]
    fn min_and_max_emit_each_new_extreme() {
        let int = |k, v| (Key::Int(k), v);
        let input = [(1, 5), (1, 7), (1, 0), (2, -3), (1, 0), (1, 9), (2, -4)];
        let min = AggregateSpec::Min { field: "v".into() };
        let mut op = builtin(&min, 128, &Default::default()).unwrap().unwrap();
        // 0 is a value like any other: the first value of a key counts.
        assert_eq!(
            run(op.as_mut(), &input),
            [int(1, 5), int(1, 0), int(2, -3), int(2, -4)]
        );
        let mut results = op.results().unwrap();
        results.sort();
        assert_eq!(results, [int(1, 0), int(2, -4)]);
        let max = AggregateSpec::Max { field: "v".into() };
        let mut op = builtin(&max, 128, &Default::default()).unwrap().unwrap();
        assert_eq!(
            run(op.as_mut(), &input),
            [int(1, 5), int(1, 7), int(2, -3), int(1, 9)]
        );
    }

    #[test]
    fn a_restored_operator_goes_on_where_the_snapshot_was() {
        let agg = AggregateSpec::CountDistinct { field: "v".into() };
        let mut op = builtin(&agg, 128, &Default::default()).unwrap().unwrap();
        run(op.as_mut(), &INPUT[..4]);
        let delta = op.snapshot();
        let mut restored = builtin(&agg, 128, &Default::default()).unwrap().unwrap();
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
        let mut op = builtin(&agg, 128, &Default::default()).unwrap().unwrap();
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
        let mut results = op.results().unwrap();
        results.sort();
        assert_eq!(results, vec![(Key::Int(1), -4), (Key::Int(2), 7)]);
        let big = run(op.as_mut(), &[(3, i64::MAX)]);
        assert_eq!(big, vec![(Key::Int(3), i64::MAX)]);
        let r = Record {
            key: Key::Int(3),
            value: 1,
        };
        let err = op.process(r, &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("overflows"), "{err}");
    }
}
