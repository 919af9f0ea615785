//! The JSON spec's event-time interval join ([`IntervalJoin`], Flink's
//! `IntervalJoinOperator`): a left record `l` and a right record `r` of
//! one key join when `l.ts + lower <= r.ts <= l.ts + upper`.
//!
//! Each input's records are buffered per key in a map state from a time
//! bucket (`upper - lower + 1` ms wide, so a record's partners are in at
//! most two buckets of the other input) to the `(time, value)`s in it
//! (`interval_left` / `interval_right`). A record is matched against the
//! buffered records of the other input in the buckets its bounds reach
//! (each pair is emitted once, by whichever of the two came second) and
//! then buffered itself, with a timer (namespace `L` or `R`) per bucket at
//! the last watermark a partner of the bucket's latest possible record
//! can come before: its last millisecond plus `max(upper, 0)` on the left,
//! plus `max(-lower, 0)` on the right. The timer removes the bucket, so
//! once the watermark passed it no state and no timer of its records
//! remains.
//!
//! A record at or behind its key's watermark is late: dropped, counted and
//! kept for the late side output (as Flink's). This makes the output exact whatever the timing: a pair
//! whose first record was removed before the second came has a late
//! second record (the watermark passed the first's cleanup time, which is
//! at or after the second's time). The buffers and timers are keyed
//! state: snapshotted, restored and rescaled with their key groups.

use cutpoint_core::{Key, Record, Value};
use cutpoint_state::layout::StateDescriptor;

use crate::builtins::{Input, WithResult};
use crate::late::LateRecords;
use crate::{KeyedContext, KeyedProcessFunction, OperatorError};

const LEFT: &[u8] = b"L";
const RIGHT: &[u8] = b"R";

/// A bucket of buffered records: `(time, value)`s.
type Bucket = Vec<(i64, Value)>;

/// The interval join of a left and a right input.
pub struct IntervalJoin {
    lower: i64,
    upper: i64,
    /// The buckets' width (ms).
    width: i64,
    left: StateDescriptor,
    right: StateDescriptor,
    pairs: StateDescriptor,
    late: LateRecords,
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
            width: upper.saturating_sub(lower).saturating_add(1).max(1),
            left: StateDescriptor::map(&name("left")),
            right: StateDescriptor::map(&name("right")),
            pairs: StateDescriptor::value("interval_pairs"),
            late: LateRecords::default(),
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

    fn bucket(&self, ts: i64) -> i64 {
        ts.div_euclid(self.width)
    }

    /// When bucket `b` of `input` goes: its last millisecond plus how
    /// long a record of `input` is kept (`None`: past the end of time).
    fn cleanup(&self, input: Input, b: i64) -> Option<i64> {
        b.checked_add(1)?
            .checked_mul(self.width)?
            .checked_sub(1)?
            .checked_add(self.keep(input))
    }

    /// The bucket a cleanup timer of `input` at `time` removes.
    fn bucket_of_cleanup(&self, input: Input, time: i64) -> i64 {
        (time - self.keep(input) + 1).div_euclid(self.width) - 1
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
        let (other, from, to) = match input {
            Input::First => (
                Input::Second,
                ts.saturating_add(self.lower),
                ts.saturating_add(self.upper),
            ),
            Input::Second => (
                Input::First,
                ts.saturating_sub(self.upper),
                ts.saturating_sub(self.lower),
            ),
        };
        let mut n = 0;
        for b in self.bucket(from)..=self.bucket(to) {
            let Some(bucket) = ctx.map_get::<_, Bucket>(self.buffer(other), &b)? else {
                continue;
            };
            for (t, v) in bucket {
                let (l, r, lv, rv) = match input {
                    Input::First => (ts, t, record.value.clone(), v),
                    Input::Second => (t, ts, v, record.value.clone()),
                };
                if self.joins(l, r) {
                    let pair = [Value::Int(l), Value::Int(r), lv, rv];
                    out.push((record.key.clone(), Value::list(pair)));
                    n += 1;
                }
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
        let b = self.bucket(ts);
        let Some(cleanup) = self.cleanup(input, b).filter(|_| ts > watermark) else {
            self.late.push(record);
            return Ok(());
        };
        ctx.set_namespace(&[]);
        let n = self.match_other(input, ts, &record, ctx, out)?;
        if n > 0 {
            let total = ctx.value::<i64>(&self.pairs)?.unwrap_or(0) + n;
            ctx.set_value(&self.pairs, &total)?;
        }
        let buffer = self.buffer(input);
        let mut bucket: Bucket = ctx.map_get(buffer, &b)?.unwrap_or_default();
        bucket.push((ts, record.value));
        ctx.map_put(buffer, &b, &bucket)?;
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
        let b = self.bucket_of_cleanup(input, time);
        ctx.set_namespace(&[]);
        Ok(ctx.map_remove(self.buffer(input), &b)?)
    }

    fn late_records(&self) -> u64 {
        self.late.count()
    }

    fn take_late(&mut self, out: &mut Vec<Record>) {
        self.late.take(out)
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
    fn the_watermark_removes_buckets_no_partner_can_reach_and_late_ones_are_dropped() {
        let mut op = op(-2, 3);
        // Buckets of 6 ms: left 10 is in [6, 11], kept until 11 + 3;
        // right 20 in [18, 23], kept until 23 + 2.
        feed(&mut op, Input::First, 1, 10);
        feed(&mut op, Input::Second, 5, 20);
        assert_eq!(op.timers().unwrap().len(), 2);
        advance(&mut op, 12);
        assert_eq!(feed(&mut op, Input::Second, 6, 13), ["[10,13,1,6]"]);
        assert!(feed(&mut op, Input::Second, 6, 14).is_empty(), "past upper");
        advance(&mut op, 14);
        // Left 10 is gone; a right record at 14 would be late anyway.
        assert!(feed(&mut op, Input::Second, 7, 14).is_empty());
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
        // Buckets of 5 ms: right 10 is in [10, 14], kept until 14 + 5.
        feed(&mut op, Input::Second, 1, 10);
        feed(&mut op, Input::First, 2, 10);
        assert_eq!(op.timers().unwrap().len(), 2, "left at 14, right at 19");
        assert_eq!(feed(&mut op, Input::First, 3, 14), ["[14,10,3,1]"]);
        advance(&mut op, 14);
        assert_eq!(feed(&mut op, Input::First, 4, 15), ["[15,10,4,1]"]);
        advance(&mut op, 18);
        // Right 10 is still kept, but no left record after 18 reaches it.
        assert!(feed(&mut op, Input::First, 5, 19).is_empty());
        advance(&mut op, 19);
        assert_eq!(op.timers().unwrap().len(), 0);
        assert_eq!(stored_states(&mut op), ["interval_pairs"]);
    }
}
