//! The JSON spec's tumbling and sliding event-time windows
//! ([`WindowAggregate`]): a [`WindowFunction`] (count, sum, min, max, avg,
//! count-distinct, top-n, or a window join of two inputs) per key and
//! window, built like Flink's
//! `WindowOperator` from typed state and event-time timers. Session
//! windows, which merge, are [`crate::session`]'s, on the same functions.
//!
//! Per key and window (the namespace: [`Window::encode`]) one value state
//! holds the accumulator ([`Acc`]: numbers, or a count-distinct's values,
//! all of them in the one state value, or a top-n's n values, or a join's
//! values of each input — its pairs, `[start, end, l, r]` each, are the
//! updates when the window fires; named after
//! the function and the window, so a restore into another shape is
//! refused); a timer at the window's last millisecond emits
//! `[start, end, result]`, one at its cleanup time (the same, without
//! allowed lateness) deletes the accumulator — so once the watermark
//! passed a window's cleanup time no state and no timer of it remains. A
//! record for a window past its cleanup time is late: left out (a record
//! left out of every window it falls in is counted,
//! [`KeyedProcessFunction::late_records`], and kept for the job's late
//! side output, [`KeyedProcessFunction::take_late`]). A record for a window that
//! fired but is not yet cleaned up (allowed lateness) updates it and emits
//! the updated result at once. Each key's latest result is also kept in
//! the default namespace (the job's final state).
//!
//! Exactly-once across restores rests on the subtask's watermark being
//! checkpointed with its state: a window fired (and cleaned up) before a
//! snapshot stays late for every record replayed after a restore from it.

use cutpoint_core::window::{Window, WindowSpec, WindowTime};
use cutpoint_core::{Key, Record, Value};
use cutpoint_state::layout::StateDescriptor;
use serde::{Deserialize, Serialize};

use crate::builtins::{Input, WithResult};
use crate::late::LateRecords;
use crate::{integer, KeyedContext, KeyedProcessFunction, OperatorError, TimeDomain};

/// What a window computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowFunction {
    Count,
    Sum,
    Min,
    Max,
    /// The mean, rounded down.
    Avg,
    /// The number of distinct values (any value).
    CountDistinct,
    /// The `n` largest integers, largest first, repeats kept.
    TopN(u32),
    /// A window join: every pair of a left and a right value, each its
    /// own update `[start, end, l, r]` (the result kept: the number of
    /// pairs).
    Join,
    /// Every value, in arrival order (a full window function's input,
    /// [`WindowFn`]; without one, the list is the result).
    Collect,
}

/// A full window function (Flink's `ProcessWindowFunction`): the key, the
/// window and every value in it, in arrival order, to the window's result.
pub type WindowFn = std::sync::Arc<dyn Fn(&Key, &Window, &[Value]) -> Value + Send + Sync>;

/// A window's accumulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Acc {
    /// Count, sum, min, max: `a`; avg: the sum in `a`, the count in `b`.
    Num { a: i64, b: i64 },
    /// Count-distinct: the distinct values, ascending; top-n: at most n
    /// values, largest first.
    Values(Vec<Value>),
    /// A window join: the values of each input, in arrival order.
    Sides { left: Vec<Value>, right: Vec<Value> },
}

impl WindowFunction {
    fn name(self) -> String {
        match self {
            WindowFunction::Count => "count".into(),
            WindowFunction::Sum => "sum".into(),
            WindowFunction::Min => "min".into(),
            WindowFunction::Max => "max".into(),
            WindowFunction::Avg => "avg".into(),
            WindowFunction::CountDistinct => "count_distinct".into(),
            WindowFunction::TopN(n) => format!("top {n}"),
            WindowFunction::Join => "join".into(),
            WindowFunction::Collect => "collect".into(),
        }
    }

    /// The name of a window operator's accumulator state: the function,
    /// the window's shape and its lateness
    /// (`window_acc(count, tumbling 1000 ms, lateness 0 ms)`), so a restore
    /// into another function or window is refused, both named, instead of
    /// reading accumulators and timers of another shape.
    pub(crate) fn state_name(self, prefix: &str, spec: &WindowSpec) -> String {
        format!(
            "{prefix}({}, {}, lateness {} ms)",
            self.name(),
            spec.shape(),
            spec.allowed_lateness()
        )
    }

    /// The accumulator of one record of `input` (a join's side; the
    /// others have one input).
    pub(crate) fn single(self, input: Input, record: &Record) -> Result<Acc, OperatorError> {
        Ok(match self {
            WindowFunction::Count => Acc::Num { a: 1, b: 0 },
            WindowFunction::Avg => Acc::Num {
                a: integer(record)?,
                b: 1,
            },
            WindowFunction::Sum | WindowFunction::Min | WindowFunction::Max => Acc::Num {
                a: integer(record)?,
                b: 0,
            },
            WindowFunction::CountDistinct | WindowFunction::Collect => {
                Acc::Values(vec![record.value.clone()])
            }
            WindowFunction::TopN(_) => Acc::Values(vec![Value::Int(integer(record)?)]),
            WindowFunction::Join => {
                let value = vec![record.value.clone()];
                match input {
                    Input::First => Acc::Sides {
                        left: value,
                        right: Vec::new(),
                    },
                    Input::Second => Acc::Sides {
                        left: Vec::new(),
                        right: value,
                    },
                }
            }
        })
    }

    /// Two accumulators as one (a record added to a window, or two
    /// session windows merged).
    pub(crate) fn merge(self, x: Acc, y: Acc) -> Result<Acc, OperatorError> {
        match (x, y) {
            (Acc::Num { a, b }, Acc::Num { a: a2, b: b2 }) => {
                let a = match self {
                    WindowFunction::Min => a.min(a2),
                    WindowFunction::Max => a.max(a2),
                    _ => a.saturating_add(a2),
                };
                Ok(Acc::Num {
                    a,
                    b: b.saturating_add(b2),
                })
            }
            (Acc::Values(x), Acc::Values(y)) => Ok(Acc::Values(self.merge_values(x, y))),
            (
                Acc::Sides {
                    mut left,
                    mut right,
                },
                Acc::Sides {
                    left: l2,
                    right: r2,
                },
            ) => {
                left.extend(l2);
                right.extend(r2);
                Ok(Acc::Sides { left, right })
            }
            _ => Err(OperatorError::User(format!(
                "a {} window's accumulator is of another function",
                self.name()
            ))),
        }
    }

    /// Count-distinct: the sorted union; top-n: the n largest of both;
    /// collect: `x`'s then `y`'s.
    fn merge_values(self, mut x: Vec<Value>, y: Vec<Value>) -> Vec<Value> {
        if self == WindowFunction::Collect {
            x.extend(y);
            return x;
        }
        let (mut big, small) = if x.len() >= y.len() { (x, y) } else { (y, x) };
        match self {
            WindowFunction::TopN(n) => {
                for v in small {
                    let at = big.partition_point(|b| *b >= v);
                    if at < n as usize {
                        big.insert(at, v);
                        big.truncate(n as usize);
                    }
                }
            }
            _ => {
                for v in small {
                    if let Err(at) = big.binary_search(&v) {
                        big.insert(at, v);
                    }
                }
            }
        }
        big
    }

    pub(crate) fn result(self, acc: &Acc) -> Value {
        match (self, acc) {
            (WindowFunction::Avg, Acc::Num { a, b }) => Value::Int(a.div_euclid((*b).max(1))),
            (_, Acc::Num { a, .. }) => Value::Int(*a),
            (WindowFunction::CountDistinct, Acc::Values(v)) => Value::Int(v.len() as i64),
            (_, Acc::Values(v)) => Value::list(v.iter().cloned()),
            (_, Acc::Sides { left, right }) => Value::Int((left.len() * right.len()) as i64),
        }
    }
}

/// A record's time and the time up to which windows fired: its event time
/// and its key's watermark, or the wall clock (never behind what fired,
/// [`KeyedContext::current_processing_time`]) and the millisecond before
/// it — so in processing time no record is late.
pub(crate) fn record_time(
    domain: TimeDomain,
    record: &Record,
    ctx: &KeyedContext<'_>,
) -> Result<(i64, i64), OperatorError> {
    match domain {
        TimeDomain::EventTime => {
            let ts = record.time().ok_or_else(|| {
                OperatorError::User(format!(
                    "key {}: a record without an event time",
                    record.key
                ))
            })?;
            Ok((ts, ctx.current_watermark().unwrap_or(i64::MIN)))
        }
        TimeDomain::ProcessingTime => {
            let now = ctx.current_processing_time();
            Ok((now, now - 1))
        }
    }
}

/// The timer domain of a window's clock.
pub(crate) fn domain(spec: &WindowSpec) -> TimeDomain {
    match spec.time() {
        WindowTime::Event => TimeDomain::EventTime,
        WindowTime::Processing => TimeDomain::ProcessingTime,
    }
}

/// A window's result, `[start, end, result]` (`process`'s of the values,
/// if the window has a full window function), also kept as the key's
/// latest result (`last`, in the default namespace); a join's updates are
/// its pairs, `[start, end, l, r]` each. The namespace is `w`'s
/// afterwards.
pub(crate) fn emit_result(
    (function, process): (WindowFunction, Option<&WindowFn>),
    last: &StateDescriptor,
    w: &Window,
    acc: &Acc,
    ctx: &mut KeyedContext<'_>,
    out: &mut Vec<(Key, Value)>,
) -> Result<(), OperatorError> {
    let value = match (process, acc) {
        (Some(f), Acc::Values(v)) => f(ctx.current_key(), w, v),
        _ => function.result(acc),
    };
    let result = Value::list([Value::Int(w.start), Value::Int(w.end), value]);
    ctx.set_namespace(&[]);
    ctx.set_value(last, &result)?;
    ctx.set_namespace(&w.encode());
    let key = ctx.current_key();
    match acc {
        Acc::Sides { left, right } => {
            let (start, end) = (Value::Int(w.start), Value::Int(w.end));
            for l in left {
                for r in right {
                    let pair = [start.clone(), end.clone(), l.clone(), r.clone()];
                    out.push((key.clone(), Value::list(pair)));
                }
            }
        }
        _ => out.push((key.clone(), result)),
    }
    Ok(())
}

/// A window function per key and tumbling or sliding event-time window.
pub struct WindowAggregate {
    spec: WindowSpec,
    domain: TimeDomain,
    function: WindowFunction,
    acc: StateDescriptor,
    last: StateDescriptor,
    late: LateRecords,
    /// A full window function over the collected values.
    process: Option<WindowFn>,
    /// Reused: the windows of the current record.
    windows: Vec<Window>,
}

impl WindowAggregate {
    /// Its accumulator state is named by [`WindowFunction::state_name`].
    /// Session windows are [`crate::session::SessionAggregate`]'s.
    pub fn new(spec: WindowSpec, function: WindowFunction) -> Self {
        debug_assert!(!spec.is_merging());
        let name = function.state_name("window_acc", &spec);
        Self {
            spec,
            domain: domain(&spec),
            function,
            // Version 2: the accumulator became an enum (count-distinct
            // and top-n keep values).
            acc: StateDescriptor::value(&name).with_codec_version(2),
            last: StateDescriptor::value("window_last"),
            late: LateRecords::default(),
            process: None,
            windows: Vec::new(),
        }
    }

    /// With `f` run over each window's values when it fires (the function
    /// should be [`WindowFunction::Collect`]).
    pub fn with_process(mut self, f: Option<WindowFn>) -> Self {
        self.process = f;
        self
    }
}

impl KeyedProcessFunction for WindowAggregate {
    type In = (Input, Record);
    type Out = (Key, Value);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![self.acc.clone(), self.last.clone()]
    }

    fn uses_timers(&self) -> bool {
        true
    }

    fn uses_processing_time_timers(&self) -> bool {
        self.domain == TimeDomain::ProcessingTime
    }

    fn process(
        &mut self,
        (input, record): (Input, Record),
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let (ts, watermark) = record_time(self.domain, &record, ctx)?;
        let single = self.function.single(input, &record)?;
        let mut windows = std::mem::take(&mut self.windows);
        self.spec.assign(ts, &mut windows);
        let mut counted = false;
        for w in &windows {
            let cleanup = self.spec.cleanup_time(w);
            if cleanup <= watermark {
                continue;
            }
            counted = true;
            ctx.set_namespace(&w.encode());
            let (acc, first) = match ctx.value::<Acc>(&self.acc)? {
                Some(acc) => (self.function.merge(acc, single.clone())?, false),
                None => (single.clone(), true),
            };
            ctx.set_value(&self.acc, &acc)?;
            if w.max_timestamp() <= watermark {
                // Fired already, within the allowed lateness: update now.
                let how = (self.function, self.process.as_ref());
                emit_result(how, &self.last, w, &acc, ctx, out)?;
            } else if first {
                ctx.register(self.domain, w.max_timestamp())?;
            }
            // A window's timers are registered with its first record (an
            // accumulator and its timers are snapshotted and restored
            // together, so one that exists has them).
            if first {
                ctx.register(self.domain, cleanup)?;
            }
        }
        self.windows = windows;
        if !counted {
            self.late.push(record);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        time: i64,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let w = Window::decode(ctx.namespace())
            .ok_or_else(|| OperatorError::User("a window timer without its window".into()))?;
        if time == w.max_timestamp() {
            if let Some(acc) = ctx.value::<Acc>(&self.acc)? {
                let how = (self.function, self.process.as_ref());
                emit_result(how, &self.last, &w, &acc, ctx, out)?;
            }
        }
        if time == self.spec.cleanup_time(&w) {
            ctx.clear(&self.acc)?;
        }
        Ok(())
    }

    fn late_records(&self) -> u64 {
        self.late.count()
    }

    fn take_late(&mut self, out: &mut Vec<Record>) {
        self.late.take(out)
    }
}

impl WithResult for WindowAggregate {
    type Result = Value;

    fn result_state(&self) -> &StateDescriptor {
        &self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtins::RecordOperator;
    use crate::tests::stored_states;
    use crate::KeyedOperator;

    const MAXP: u32 = 128;

    fn op(spec: WindowSpec, f: WindowFunction) -> KeyedOperator<WindowAggregate> {
        KeyedOperator::new(
            WindowAggregate::new(spec, f),
            |(_, r): &(Input, Record)| r.key.clone(),
            MAXP,
        )
        .unwrap()
    }

    fn tumbling(size_ms: u64, allowed_lateness_ms: u64) -> WindowSpec {
        WindowSpec::Tumbling {
            size_ms,
            allowed_lateness_ms,
            time: cutpoint_core::window::WindowTime::Event,
        }
    }

    fn feed(op: &mut KeyedOperator<WindowAggregate>, key: i64, v: i64, ts: i64) -> Vec<String> {
        let mut out = Vec::new();
        op.process(
            (Input::First, Record::int(Key::Int(key), v).at(ts)),
            &mut out,
        )
        .unwrap();
        out.iter().map(|(k, v)| format!("{k}:{v}")).collect()
    }

    fn advance(op: &mut KeyedOperator<WindowAggregate>, w: i64) -> Vec<String> {
        let mut out = Vec::new();
        op.advance_watermark(w, usize::MAX, &mut out).unwrap();
        out.iter()
            .map(|(t, (k, v))| format!("{t}/{k}:{v}"))
            .collect()
    }

    #[test]
    fn a_tumbling_window_fires_once_at_its_end_and_leaves_only_the_last_result() {
        let mut op = op(tumbling(10, 0), WindowFunction::Count);
        for ts in [1, 9, 5, 12] {
            assert!(feed(&mut op, 7, 1, ts).is_empty());
        }
        assert_eq!(advance(&mut op, 8), Vec::<String>::new());
        assert_eq!(advance(&mut op, 9), ["9/7:[0,10,3]"]);
        assert_eq!(advance(&mut op, 9), Vec::<String>::new(), "once");
        assert_eq!(advance(&mut op, 100), ["19/7:[10,20,1]"]);
        assert_eq!(op.timers().unwrap().len(), 0);
        // In RocksDB too: no accumulator, no timer; the key's last result.
        assert_eq!(stored_states(&mut op), ["window_last"]);
    }

    #[test]
    fn the_accumulator_is_named_after_the_function_and_the_window() {
        let names = |op: &KeyedOperator<WindowAggregate>| {
            let d = op.table.names().declared();
            d.into_iter().map(|d| d.name).collect::<Vec<_>>()
        };
        let count = op(tumbling(1000, 0), WindowFunction::Count);
        let sum = op(tumbling(1000, 0), WindowFunction::Sum);
        let later = op(tumbling(1000, 50), WindowFunction::Count);
        assert_eq!(
            names(&count),
            [
                "window_acc(count, tumbling 1000 ms, lateness 0 ms)",
                "window_last",
                "__event_timers"
            ]
        );
        assert_ne!(names(&count), names(&sum));
        assert_ne!(names(&count), names(&later));
    }

    #[test]
    fn allowed_lateness_updates_a_fired_window_then_drops_and_counts() {
        let mut op = op(tumbling(10, 5), WindowFunction::Sum);
        feed(&mut op, 1, 4, 2);
        feed(&mut op, 1, 6, 3);
        assert_eq!(advance(&mut op, 9), ["9/1:[0,10,10]"]);
        // Late, within the lateness: the updated result at once.
        assert_eq!(feed(&mut op, 1, 5, 1), ["1:[0,10,15]"]);
        assert_eq!(advance(&mut op, 13), Vec::<String>::new());
        assert_eq!(op.function.late_records(), 0);
        assert_eq!(advance(&mut op, 14), Vec::<String>::new(), "cleaned up");
        assert!(feed(&mut op, 1, 5, 1).is_empty());
        assert_eq!(op.function.late_records(), 1);
        assert_eq!(stored_states(&mut op), ["window_last"]);
    }

    #[test]
    fn sliding_windows_put_a_record_in_each_window_it_falls_in() {
        let spec = WindowSpec::Sliding {
            size_ms: 10,
            slide_ms: 5,
            allowed_lateness_ms: 0,
            time: cutpoint_core::window::WindowTime::Event,
        };
        let mut op = op(spec, WindowFunction::Avg);
        for (v, ts) in [(1, 3), (4, 6), (8, 11)] {
            feed(&mut op, 2, v, ts);
        }
        // [-5,5): 1; [0,10): 1,4 → 2; [5,15): 4,8 → 6; [10,20): 8.
        assert_eq!(
            advance(&mut op, i64::MAX),
            [
                "4/2:[-5,5,1]",
                "9/2:[0,10,2]",
                "14/2:[5,15,6]",
                "19/2:[10,20,8]"
            ]
        );
        let mut min = self::op(spec, WindowFunction::Min);
        let mut max = self::op(spec, WindowFunction::Max);
        for (v, ts) in [(5, 6), (-3, 7), (9, 8)] {
            feed(&mut min, 1, v, ts);
            feed(&mut max, 1, v, ts);
        }
        assert_eq!(advance(&mut min, 9), ["9/1:[0,10,-3]"]);
        assert_eq!(advance(&mut max, 9), ["9/1:[0,10,9]"]);
    }

    /// A window join: when a key's window fires, each pair of its left and
    /// right values is one update; a window with one side only emits
    /// nothing; a record for a fired window is late; nothing is left.
    #[test]
    fn a_window_join_emits_each_pair_of_a_window_once() {
        let mut op = op(tumbling(10, 0), WindowFunction::Join);
        let mut side = |input, key, v: i64, ts| {
            let mut out = Vec::new();
            op.process((input, Record::int(Key::Int(key), v).at(ts)), &mut out)
                .unwrap();
            assert!(out.is_empty());
        };
        side(Input::First, 1, 10, 2);
        side(Input::Second, 1, 20, 4);
        side(Input::First, 1, 11, 9);
        side(Input::Second, 2, 30, 5); // key 2 has no left value
        side(Input::Second, 1, 21, 12); // the next window, no left value
        assert_eq!(
            advance(&mut op, 19),
            ["9/1:[0,10,10,20]", "9/1:[0,10,11,20]"]
        );
        assert_eq!(op.function.late_records(), 0);
        feed(&mut op, 1, 12, 3);
        assert_eq!(op.function.late_records(), 1);
        assert_eq!(op.timers().unwrap().len(), 0);
        assert_eq!(stored_states(&mut op), ["window_last", "window_last"]);
        // The kept result: the number of pairs of each key's last window.
        let mut results = RecordOperator::results(&op).unwrap();
        results.sort();
        let last = |s, e, n| Value::list([Value::Int(s), Value::Int(e), Value::Int(n)]);
        assert_eq!(
            results,
            [
                (Key::Int(1), last(10, 20, 0)),
                (Key::Int(2), last(0, 10, 0))
            ]
        );
    }

    /// A full window function gets the key, the window and every value in
    /// it in arrival order when it fires; what it returns is the result.
    #[test]
    fn a_full_window_function_runs_over_every_value_of_the_window() {
        let f: WindowFn = std::sync::Arc::new(|key, w, values| {
            let spread = values.iter().map(|v| v.as_int().unwrap());
            let spread = spread.clone().max().unwrap() - spread.min().unwrap();
            let first = values[0].clone();
            let key = match key {
                Key::Int(k) => Value::Int(*k),
                Key::Str(s) => Value::Str(s.clone()),
            };
            Value::list([key, Value::Int(w.end - w.start), first, Value::Int(spread)])
        });
        let spec = tumbling(10, 0);
        let mut op = KeyedOperator::new(
            WindowAggregate::new(spec, WindowFunction::Collect).with_process(Some(f)),
            |(_, r): &(Input, Record)| r.key.clone(),
            MAXP,
        )
        .unwrap();
        for (v, ts) in [(5, 1), (3, 9), (8, 5), (4, 12)] {
            assert!(feed(&mut op, 7, v, ts).is_empty());
        }
        assert_eq!(
            advance(&mut op, 100),
            ["9/7:[0,10,[7,10,5,5]]", "19/7:[10,20,[7,10,4,0]]"]
        );
        assert_eq!(stored_states(&mut op), ["window_last"]);
        // Without a function the values are the result.
        let mut collect = self::op(spec, WindowFunction::Collect);
        feed(&mut collect, 1, 2, 3);
        feed(&mut collect, 1, 1, 4);
        assert_eq!(advance(&mut collect, 9), ["9/1:[0,10,[2,1]]"]);
    }

    #[test]
    fn a_record_without_an_event_time_is_an_error_that_names_its_key() {
        let mut op = op(tumbling(10, 0), WindowFunction::Count);
        let e = op
            .process((Input::First, Record::int(Key::Int(3), 1)), &mut Vec::new())
            .unwrap_err();
        assert!(e.to_string().contains("key 3"), "{e}");
    }

    /// Processing time: records go to the window of the wall clock when
    /// processed, none is late, and each window fires once, when the clock
    /// passes it or at the end of the input (the clock at `i64::MAX`).
    #[test]
    fn processing_time_windows_count_every_record_once() {
        let spec = WindowSpec::Tumbling {
            size_ms: 2,
            allowed_lateness_ms: 0,
            time: cutpoint_core::window::WindowTime::Processing,
        };
        let mut op = op(spec, WindowFunction::Count);
        for i in 0..2_000 {
            // No event time needed; a few ms of wall clock pass.
            op.process(
                (Input::First, Record::int(Key::Int(i % 3), 1)),
                &mut Vec::new(),
            )
            .unwrap();
        }
        assert_eq!(op.timers().unwrap().len(), 0, "no event-time timer");
        assert!(op.processing_timers().unwrap().len() >= 3);
        let mut out = Vec::new();
        op.advance_processing_time(i64::MAX, usize::MAX, &mut out)
            .unwrap();
        let mut total = 0;
        let mut seen = std::collections::BTreeSet::new();
        for (_, (k, v)) in out {
            let Value::List(l) = v else { panic!() };
            assert!(
                seen.insert((k, l[0].as_int().unwrap())),
                "a window fired twice"
            );
            total += l[2].as_int().unwrap();
        }
        assert_eq!(total, 2_000);
        assert_eq!(stored_states(&mut op), ["window_last"; 3]);
    }
}
