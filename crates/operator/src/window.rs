//! The JSON spec's event-time windows ([`WindowAggregate`]): count, sum,
//! min, max or avg per key and window, built like Flink's
//! `WindowOperator` from typed state and event-time timers.
//!
//! Per key and window (the namespace: [`Window::encode`]) one value state
//! holds the accumulator (named after the function and the window, so a
//! restore into another shape is refused); a timer at the window's last millisecond emits
//! `[start, end, result]`, one at its cleanup time (the same, without
//! allowed lateness) deletes the accumulator — so once the watermark
//! passed a window's cleanup time no state and no timer of it remains. A
//! record for a window past its cleanup time is late: left out (a record
//! left out of every window it falls in is counted,
//! [`KeyedProcessFunction::late_records`]). A record for a window that
//! fired but is not yet cleaned up (allowed lateness) updates it and emits
//! the updated result at once. Each key's latest result is also kept in
//! the default namespace (the job's final state).
//!
//! Exactly-once across restores rests on the subtask's watermark being
//! checkpointed with its state: a window fired (and cleaned up) before a
//! snapshot stays late for every record replayed after a restore from it.

use cutpoint_core::window::{Window, WindowSpec};
use cutpoint_core::{Key, Record, Value};
use cutpoint_state::layout::StateDescriptor;
use serde::{Deserialize, Serialize};

use crate::builtins::WithResult;
use crate::{integer, KeyedContext, KeyedProcessFunction, OperatorError};

/// What a window computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowFunction {
    Count,
    Sum,
    Min,
    Max,
    /// The mean, rounded down.
    Avg,
}

/// A window's accumulator: the count, sum or extreme in `a`; avg's count
/// in `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Acc {
    a: i64,
    b: i64,
}

impl WindowFunction {
    fn name(self) -> &'static str {
        match self {
            WindowFunction::Count => "count",
            WindowFunction::Sum => "sum",
            WindowFunction::Min => "min",
            WindowFunction::Max => "max",
            WindowFunction::Avg => "avg",
        }
    }

    fn first(self, v: i64) -> Acc {
        match self {
            WindowFunction::Count => Acc { a: 1, b: 0 },
            WindowFunction::Avg => Acc { a: v, b: 1 },
            _ => Acc { a: v, b: 0 },
        }
    }

    fn add(self, acc: Acc, v: i64) -> Acc {
        match self {
            WindowFunction::Count => Acc { a: acc.a + 1, b: 0 },
            WindowFunction::Sum => Acc {
                a: acc.a.saturating_add(v),
                b: 0,
            },
            WindowFunction::Min => Acc {
                a: acc.a.min(v),
                b: 0,
            },
            WindowFunction::Max => Acc {
                a: acc.a.max(v),
                b: 0,
            },
            WindowFunction::Avg => Acc {
                a: acc.a.saturating_add(v),
                b: acc.b.saturating_add(1),
            },
        }
    }

    fn result(self, acc: Acc) -> i64 {
        match self {
            WindowFunction::Avg => acc.a.div_euclid(acc.b.max(1)),
            _ => acc.a,
        }
    }
}

/// Count, sum, min, max or avg per key and event-time window.
pub struct WindowAggregate {
    spec: WindowSpec,
    function: WindowFunction,
    acc: StateDescriptor,
    last: StateDescriptor,
    late: u64,
    /// Reused: the windows of the current record.
    windows: Vec<Window>,
}

impl WindowAggregate {
    /// Its accumulator state is named after the function and the window
    /// (`window_acc(count, tumbling 1000 ms, lateness 0 ms)`), so a restore
    /// into another function or window is refused, both named, instead of
    /// reading accumulators and timers of another shape.
    pub fn new(spec: WindowSpec, function: WindowFunction) -> Self {
        let shape = match spec {
            WindowSpec::Tumbling { size_ms, .. } => format!("tumbling {size_ms} ms"),
            WindowSpec::Sliding {
                size_ms, slide_ms, ..
            } => format!("sliding {size_ms} ms every {slide_ms} ms"),
        };
        let name = format!(
            "window_acc({}, {shape}, lateness {} ms)",
            function.name(),
            spec.allowed_lateness()
        );
        Self {
            spec,
            function,
            acc: StateDescriptor::value(&name),
            last: StateDescriptor::value("window_last"),
            late: 0,
            windows: Vec::new(),
        }
    }

    /// `[start, end, result]`, also kept as the key's latest result.
    fn emit(
        &self,
        w: &Window,
        acc: Acc,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let result = Value::list([
            Value::Int(w.start),
            Value::Int(w.end),
            Value::Int(self.function.result(acc)),
        ]);
        ctx.set_namespace(&[]);
        ctx.set_value(&self.last, &result)?;
        ctx.set_namespace(&w.encode());
        out.push((ctx.current_key().clone(), result));
        Ok(())
    }
}

impl KeyedProcessFunction for WindowAggregate {
    type In = Record;
    type Out = (Key, Value);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![self.acc.clone(), self.last.clone()]
    }

    fn uses_timers(&self) -> bool {
        true
    }

    fn process(
        &mut self,
        record: Record,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let ts = record.time().ok_or_else(|| {
            OperatorError::User(format!(
                "key {}: a record without an event time",
                record.key
            ))
        })?;
        let v = match self.function {
            WindowFunction::Count => 1,
            _ => integer(&record)?,
        };
        let watermark = ctx.current_watermark().unwrap_or(i64::MIN);
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
                Some(acc) => (self.function.add(acc, v), false),
                None => (self.function.first(v), true),
            };
            ctx.set_value(&self.acc, &acc)?;
            if w.max_timestamp() <= watermark {
                // Fired already, within the allowed lateness: update now.
                self.emit(w, acc, ctx, out)?;
            } else if first {
                ctx.register_event_time_timer(w.max_timestamp())?;
            }
            // A window's timers are registered with its first record (an
            // accumulator and its timers are snapshotted and restored
            // together, so one that exists has them).
            if first {
                ctx.register_event_time_timer(cleanup)?;
            }
        }
        self.windows = windows;
        if !counted {
            self.late += 1;
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
                self.emit(&w, acc, ctx, out)?;
            }
        }
        if time == self.spec.cleanup_time(&w) {
            ctx.clear(&self.acc)?;
        }
        Ok(())
    }

    fn late_records(&self) -> u64 {
        self.late
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
    use cutpoint_core::KeyGroupRange;
    use cutpoint_state::RocksStore;

    use super::*;
    use crate::KeyedOperator;

    const MAXP: u32 = 128;

    fn op(spec: WindowSpec, f: WindowFunction) -> KeyedOperator<WindowAggregate> {
        KeyedOperator::new(
            WindowAggregate::new(spec, f),
            |r: &Record| r.key.clone(),
            MAXP,
        )
        .unwrap()
    }

    fn tumbling(size_ms: u64, allowed_lateness_ms: u64) -> WindowSpec {
        WindowSpec::Tumbling {
            size_ms,
            allowed_lateness_ms,
        }
    }

    fn feed(op: &mut KeyedOperator<WindowAggregate>, key: i64, v: i64, ts: i64) -> Vec<String> {
        let mut out = Vec::new();
        op.process(Record::int(Key::Int(key), v).at(ts), &mut out)
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

    /// The state names of every entry RocksDB holds after the operator's
    /// snapshot is written.
    fn stored_states(op: &mut KeyedOperator<WindowAggregate>) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let mut db = RocksStore::open(&dir.path().join("db"), &dir.path().join("s"), MAXP).unwrap();
        db.apply_entries(&op.snapshot()).unwrap();
        let declared = op.table.names().declared();
        let mut names = Vec::new();
        let all = KeyGroupRange {
            start: 0,
            end: MAXP - 1,
        };
        db.scan_raw(all, |k, _| {
            let id = u16::from_be_bytes([k[2], k[3]]);
            let d = declared.iter().find(|d| d.id == id).unwrap();
            names.push(d.name.clone());
            Ok(())
        })
        .unwrap();
        names
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

    #[test]
    fn a_record_without_an_event_time_is_an_error_that_names_its_key() {
        let mut op = op(tumbling(10, 0), WindowFunction::Count);
        let e = op
            .process(Record::int(Key::Int(3), 1), &mut Vec::new())
            .unwrap_err();
        assert!(e.to_string().contains("key 3"), "{e}");
    }
}
