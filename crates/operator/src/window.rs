//! The JSON spec's event-time windows ([`WindowAggregate`]): count, sum,
//! min, max or avg per key and window, built like Flink's
//! `WindowOperator` from typed state and event-time timers.
//!
//! Per key and window (the namespace: [`Window::encode`]) one value state
//! holds the accumulator; a timer at the window's last millisecond emits
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
                b: acc.b + 1,
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
    pub fn new(spec: WindowSpec, function: WindowFunction) -> Self {
        Self {
            spec,
            function,
            acc: StateDescriptor::value("window_acc"),
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
            let acc = match ctx.value::<Acc>(&self.acc)? {
                Some(acc) => self.function.add(acc, v),
                None => self.function.first(v),
            };
            ctx.set_value(&self.acc, &acc)?;
            if w.max_timestamp() <= watermark {
                // Fired already, within the allowed lateness: update now.
                self.emit(w, acc, ctx, out)?;
            } else {
                ctx.register_event_time_timer(w.max_timestamp())?;
            }
            ctx.register_event_time_timer(cleanup)?;
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
