//! The JSON spec's event-time interval join ([`IntervalJoin`], Flink's
//! `IntervalJoinOperator`): a left record `l` and a right record `r` of
//! one key join when `l.ts + lower <= r.ts <= l.ts + upper`.
//!
//! Each input's records are buffered per key in a map state from event
//! time to the values at that time (`interval_left` / `interval_right`);
//! a record is matched against every buffered record of the other input
//! (each pair is emitted once, by whichever of the two came second) and
//! then buffered itself, with a timer (namespace `L` or `R`) at the last
//! watermark a partner of it can come before: `ts + max(upper, 0)` for a
//! left record, `ts + max(-lower, 0)` for a right one. The timer removes
//! the time's entry, so once the watermark passed it no state and no
//! timer of the record remains.
//!
//! A record at or behind its key's watermark is late: dropped and counted
//! (as Flink's). This makes the output exact whatever the timing: a pair
//! whose first record was removed before the second came has a late
//! second record (the watermark passed the first's cleanup time, which is
//! at or after the second's time). The buffers and timers are keyed
//! state: snapshotted, restored and rescaled with their key groups.

use cutpoint_core::{Key, Record, Value};
use cutpoint_state::layout::StateDescriptor;

use crate::builtins::{Input, WithResult};
use crate::{KeyedContext, KeyedProcessFunction, OperatorError};

const LEFT: &[u8] = b"L";
const RIGHT: &[u8] = b"R";

/// The interval join of a left and a right input.
pub struct IntervalJoin {
    lower: i64,
    upper: i64,
    left: StateDescriptor,
    right: StateDescriptor,
    pairs: StateDescriptor,
    late: u64,
}

impl IntervalJoin {
    /// Joins `l` and `r` when `l.ts + lower <= r.ts <= l.ts + upper`
    /// (`lower <= upper`). The buffers are named after the bounds, so a
    /// restore into other bounds is refused, both named.
    pub fn new(lower: i64, upper: i64) -> Self {
        debug_assert!(lower <= upper);
        let name = |side: &str| format!("interval_{side}({lower} ms, {upper} ms)");
        Self {
            lower,
            upper,
            left: StateDescriptor::map(&name("left")),
            right: StateDescriptor::map(&name("right")),
            pairs: StateDescriptor::value("interval_pairs"),
            late: 0,
        }
    }

    /// How long after its own time a record of `input` is kept.
    fn keep(&self, input: Input) -> i64 {
        match input {
            Input::First => self.upper.max(0),
            Input::Second => (-self.lower).max(0),
        }
    }

    fn buffer(&self, input: Input) -> &StateDescriptor {
        match input {
            Input::First => &self.left,
            Input::Second => &self.right,
        }
    }

    /// Whether a left record at `l` and a right one at `r` join.
    fn joins(&self, l: i64, r: i64) -> bool {
        l.saturating_add(self.lower) <= r && r <= l.saturating_add(self.upper)
    }

    /// Emits `record` with every buffered record of the other input it
    /// joins; the number of pairs.
    fn match_other(
        &self,
        input: Input,
        ts: i64,
        record: &Record,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<i64, OperatorError> {
        let other = match input {
            Input::First => Input::Second,
            Input::Second => Input::First,
        };
        let buffered: Vec<(i64, Vec<Value>)> = ctx.map_entries(self.buffer(other))?;
        let mut n = 0;
        for (t, values) in buffered {
            let (l, r) = match input {
                Input::First => (ts, t),
                Input::Second => (t, ts),
            };
            if !self.joins(l, r) {
                continue;
            }
            for v in values {
                let (lv, rv) = match input {
                    Input::First => (record.value.clone(), v),
                    Input::Second => (v, record.value.clone()),
                };
                let pair = [Value::Int(l), Value::Int(r), lv, rv];
                out.push((record.key.clone(), Value::list(pair)));
                n += 1;
            }
        }
        Ok(n)
    }
}

impl KeyedProcessFunction for IntervalJoin {
    type In = (Input, Record);
    type Out = (Key, Value);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![self.left.clone(), self.right.clone(), self.pairs.clone()]
    }

    fn uses_timers(&self) -> bool {
        true
    }

    fn process(
        &mut self,
        (input, record): (Input, Record),
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let ts = record.time().ok_or_else(|| {
            OperatorError::User(format!(
                "key {}: a record without an event time",
                record.key
            ))
        })?;
        let watermark = ctx.current_watermark().unwrap_or(i64::MIN);
        let Some(cleanup) = ts.checked_add(self.keep(input)).filter(|_| ts > watermark) else {
            self.late += 1;
            return Ok(());
        };
        ctx.set_namespace(&[]);
        let n = self.match_other(input, ts, &record, ctx, out)?;
        if n > 0 {
            let total = ctx.value::<i64>(&self.pairs)?.unwrap_or(0) + n;
            ctx.set_value(&self.pairs, &total)?;
        }
        let buffer = self.buffer(input);
        let mut values: Vec<Value> = ctx.map_get(buffer, &ts)?.unwrap_or_default();
        values.push(record.value);
        ctx.map_put(buffer, &ts, &values)?;
        ctx.set_namespace(match input {
            Input::First => LEFT,
            Input::Second => RIGHT,
        });
        ctx.register_event_time_timer(cleanup)
    }

    fn on_timer(
        &mut self,
        time: i64,
        ctx: &mut KeyedContext<'_>,
        _out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let input = match ctx.namespace() {
            LEFT => Input::First,
            RIGHT => Input::Second,
            _ => {
                return Err(OperatorError::User(
                    "an interval join timer of no side".into(),
                ))
            }
        };
        let ts = time - self.keep(input);
        ctx.set_namespace(&[]);
        Ok(ctx.map_remove(self.buffer(input), &ts)?)
    }

    fn late_records(&self) -> u64 {
        self.late
    }
}

impl WithResult for IntervalJoin {
    type Result = i64;

    fn result_state(&self) -> &StateDescriptor {
        &self.pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::stored_states;
    use crate::KeyedOperator;

    fn op(lower: i64, upper: i64) -> KeyedOperator<IntervalJoin> {
        KeyedOperator::new(
            IntervalJoin::new(lower, upper),
            |(_, r): &(Input, Record)| r.key.clone(),
            128,
        )
        .unwrap()
    }

    fn feed(op: &mut KeyedOperator<IntervalJoin>, input: Input, v: i64, ts: i64) -> Vec<String> {
        let mut out = Vec::new();
        let r = Record::int(Key::Int(1), v).at(ts);
        op.process((input, r), &mut out).unwrap();
        out.iter().map(|(_, v)| v.to_string()).collect()
    }

    fn advance(op: &mut KeyedOperator<IntervalJoin>, w: i64) {
        let mut out = Vec::new();
        op.advance_watermark(w, usize::MAX, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn pairs_within_the_bounds_are_emitted_once_by_the_second_of_them() {
        // r.ts in [l.ts - 2, l.ts + 3].
        let mut op = op(-2, 3);
        assert!(feed(&mut op, Input::First, 1, 10).is_empty());
        assert_eq!(feed(&mut op, Input::Second, 7, 13), ["[10,13,1,7]"]);
        assert_eq!(feed(&mut op, Input::Second, 8, 8), ["[10,8,1,8]"]);
        assert!(feed(&mut op, Input::Second, 9, 14).is_empty(), "past upper");
        assert!(
            feed(&mut op, Input::Second, 9, 7).is_empty(),
            "before lower"
        );
        // A second left record at 11 meets 13, 8 is too early: 11-2 > 8.
        assert_eq!(
            feed(&mut op, Input::First, 2, 11),
            ["[11,13,2,7]", "[11,14,2,9]"]
        );
    }

    #[test]
    fn the_watermark_removes_records_no_partner_can_reach_and_late_ones_are_dropped() {
        let mut op = op(-2, 3);
        feed(&mut op, Input::First, 1, 10);
        feed(&mut op, Input::Second, 5, 20);
        // Left 10 is kept until 13, right 20 until 22.
        assert_eq!(op.timers().unwrap().len(), 2);
        advance(&mut op, 12);
        assert_eq!(feed(&mut op, Input::Second, 6, 13), ["[10,13,1,6]"]);
        advance(&mut op, 13);
        // Left 10 is gone; a right record at 13 would be late anyway.
        assert!(feed(&mut op, Input::Second, 7, 13).is_empty());
        assert_eq!(op.function.late_records(), 1);
        advance(&mut op, 100);
        assert_eq!(op.timers().unwrap().len(), 0);
        assert_eq!(stored_states(&mut op), ["interval_pairs"]);
        let mut out = Vec::new();
        let e = op.process((Input::First, Record::int(Key::Int(1), 1)), &mut out);
        assert!(e.unwrap_err().to_string().contains("without an event time"));
    }

    #[test]
    fn negative_bounds_keep_only_the_right_input() {
        // r.ts in [l.ts - 5, l.ts - 1]: right records come first in time.
        let mut op = op(-5, -1);
        feed(&mut op, Input::Second, 1, 10);
        feed(&mut op, Input::First, 2, 10);
        assert_eq!(op.timers().unwrap().len(), 2, "left at 10, right at 15");
        assert_eq!(feed(&mut op, Input::First, 3, 14), ["[14,10,3,1]"]);
        advance(&mut op, 14);
        // Right 10 is kept until 15: left 15 still meets it.
        assert_eq!(feed(&mut op, Input::First, 4, 15), ["[15,10,4,1]"]);
        advance(&mut op, 15);
        assert!(feed(&mut op, Input::First, 5, 16).is_empty());
    }
}
