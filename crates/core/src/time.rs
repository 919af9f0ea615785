//! Event time (Dataflow II): where a job's records take their timestamps
//! and how its sources make watermarks ([`EventTimeSpec`]), and the two
//! decisions every task makes about watermarks, as values:
//!
//! - [`WatermarkGenerator`]: one per source partition. Bounded
//!   out-of-orderness: the partition's watermark is the largest event time
//!   it read, minus the bound, minus 1 (Flink's
//!   `BoundedOutOfOrdernessWatermarks`). Sent at most every
//!   `watermark_interval_ms` when it advanced; a partition that sent no
//!   record for `idle_timeout_ms` (time blocked on a full channel does not
//!   count) says it is idle, and when records come again sends its
//!   watermark ahead of them.
//! - [`WatermarkTracker`]: one per task with inputs. Its watermark is the
//!   minimum over its active inputs; idle inputs are left out, ended
//!   inputs count as the end of time; when every live input is idle the
//!   task is idle too.
//!
//! Invariants:
//! - A watermark `w` says no record with event time `<= w` follows on that
//!   channel (records that do are late). What a task sends never goes
//!   back within an attempt, idle periods included; a restored keyed task
//!   starts at the watermark its checkpoint kept.
//! - Watermarks travel in band with records and barriers, so a snapshot
//!   cuts them consistently. A checkpoint keeps each source partition's
//!   largest event time with its offset ([`crate::metadata::SourceOffset`]);
//!   a restore resumes from it, so the first watermark after a restore is
//!   the one the checkpoint's position had. Downstream tasks start at no
//!   watermark and take the sources' again.

use serde::{Deserialize, Serialize};

/// A job's event time: the field that holds it and how its sources make
/// watermarks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeSpec {
    /// Field of the input events holding their event time, integer
    /// milliseconds (the generator's is `ts`).
    pub field: String,
    /// How far a record may trail the latest one of its partition: the
    /// partition's watermark is its largest event time minus this, minus 1.
    #[serde(default)]
    pub max_out_of_orderness_ms: u64,
    /// A partition that sent no record for this long (time blocked on a
    /// full channel does not count) is idle: it stops holding the
    /// watermark back until it sends again. Absent: never idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// How often a source partition sends its watermark when it advanced
    /// (Flink's auto-watermark interval).
    #[serde(default = "default_interval")]
    pub watermark_interval_ms: u64,
}

fn default_interval() -> u64 {
    200
}

impl EventTimeSpec {
    /// The most out-of-orderness allowed: a week.
    pub const MAX_OUT_OF_ORDERNESS_MS: u64 = 7 * 24 * 3_600_000;

    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.field.is_empty() {
            return Some("event_time.field must name a field".into());
        }
        if self.max_out_of_orderness_ms > Self::MAX_OUT_OF_ORDERNESS_MS {
            return Some(format!(
                "event_time.max_out_of_orderness_ms must be at most {} (a week)",
                Self::MAX_OUT_OF_ORDERNESS_MS
            ));
        }
        if self.idle_timeout_ms == Some(0) {
            return Some("event_time.idle_timeout_ms must be positive (or absent)".into());
        }
        if !(1..=60_000).contains(&self.watermark_interval_ms) {
            return Some("event_time.watermark_interval_ms must be in 1..=60000".into());
        }
        None
    }
}

/// What a source partition or a task sends downstream about time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSignal {
    /// No record at or before this event time follows (it also means the
    /// sender is active again after [`TimeSignal::Idle`]).
    Watermark(i64),
    /// The sender holds nothing back until it sends a watermark again.
    Idle,
    /// The sender's input ended: no record follows before the job's final
    /// checkpoint (sent by every source partition, with or without event
    /// time; a task passes it on once every input sent it, after acting
    /// on it: its processing-time timers fire). Not a watermark.
    EndOfInput,
}

/// Whether a partition reads (and what it last sent), or is idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// The last watermark sent (`None`: none since the start or since idle).
    Active {
        sent: Option<i64>,
    },
    Idle,
}

/// Whether a turn of a source task sent records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Sent,
    Quiet,
}

/// The watermarks of one source partition (bounded out-of-orderness).
#[derive(Debug, Clone)]
pub struct WatermarkGenerator {
    bound: i64,
    interval_ms: u64,
    idle_timeout_ms: Option<u64>,
    /// Largest event time sent; `None` before the first.
    max_ts: Option<i64>,
    status: Status,
    /// When the partition last sent records (after the send returned: time
    /// blocked on a full channel never counts as quiet).
    last_sent_ms: u64,
    next_send_ms: u64,
}

impl WatermarkGenerator {
    /// A partition's generator at `now_ms`, resuming from `restored_max`
    /// (the largest event time a checkpoint kept), if any.
    pub fn new(spec: &EventTimeSpec, restored_max: Option<i64>, now_ms: u64) -> Self {
        Self {
            bound: spec.max_out_of_orderness_ms as i64,
            interval_ms: spec.watermark_interval_ms,
            idle_timeout_ms: spec.idle_timeout_ms,
            max_ts: restored_max,
            status: Status::Active { sent: None },
            last_sent_ms: now_ms,
            next_send_ms: now_ms,
        }
    }

    /// Records are about to be sent while the partition is idle: it is
    /// active again, and announces so with its watermark as it stood
    /// before them (sent ahead of them; `None` if it never had one).
    pub fn wake(&mut self, now_ms: u64) -> Option<TimeSignal> {
        if self.status != Status::Idle {
            return None;
        }
        let w = self.watermark();
        self.status = Status::Active { sent: w };
        self.last_sent_ms = now_ms;
        self.next_send_ms = now_ms + self.interval_ms;
        w.map(TimeSignal::Watermark)
    }

    /// A record of event time `ts` is sent.
    #[inline]
    pub fn on_event(&mut self, ts: i64) {
        if self.max_ts.is_none_or(|m| ts > m) {
            self.max_ts = Some(ts);
        }
    }

    /// Largest event time sent (what a checkpoint keeps).
    pub fn max_timestamp(&self) -> Option<i64> {
        self.max_ts
    }

    /// The current watermark, once a record was sent.
    pub fn watermark(&self) -> Option<i64> {
        self.max_ts
            .map(|m| m.saturating_sub(self.bound).saturating_sub(1))
    }

    /// After a turn of the task at `now_ms`: what to send, if anything —
    /// the watermark when it advanced and the interval passed, or `Idle`
    /// once the partition sent nothing for the idle timeout.
    pub fn poll(&mut self, now_ms: u64, turn: Activity) -> Option<TimeSignal> {
        let Status::Active { sent } = self.status else {
            return None;
        };
        if turn == Activity::Sent {
            self.last_sent_ms = now_ms;
        }
        if let Some(t) = self.idle_timeout_ms {
            if now_ms.saturating_sub(self.last_sent_ms) >= t {
                self.status = Status::Idle;
                return Some(TimeSignal::Idle);
            }
        }
        if now_ms < self.next_send_ms {
            return None;
        }
        let w = self.watermark()?;
        if sent.is_some_and(|s| w <= s) {
            return None;
        }
        self.status = Status::Active { sent: Some(w) };
        self.next_send_ms = now_ms + self.interval_ms;
        Some(TimeSignal::Watermark(w))
    }
}

/// One input of a task, as far as time goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputTime {
    /// Its last watermark (`None`: none yet).
    Active(Option<i64>),
    /// Idle, with the last watermark it had.
    Idle(Option<i64>),
    Ended,
}

/// What a task last said downstream about its activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    Active,
    Idle,
}

/// A task's watermark: the minimum over its inputs.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    inputs: Vec<InputTime>,
    /// The watermark sent on (never goes back).
    current: Option<i64>,
    said: Said,
}

impl WatermarkTracker {
    /// A task with `inputs` inputs, at `restored` (the watermark its
    /// checkpoint kept, if any): it never sends less.
    pub fn new(inputs: usize, restored: Option<i64>) -> Self {
        Self {
            inputs: vec![InputTime::Active(None); inputs],
            current: restored,
            said: Said::Active,
        }
    }

    /// The task's watermark, once every active input sent one.
    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// Input `i` sent `signal`; what the task sends on, if anything.
    pub fn on_signal(&mut self, i: usize, signal: TimeSignal) -> Option<TimeSignal> {
        self.inputs[i] = match (self.inputs[i], signal) {
            // Not about event time (the end of time comes as a watermark).
            (_, TimeSignal::EndOfInput) => return None,
            (InputTime::Ended, _) => InputTime::Ended,
            (InputTime::Active(w) | InputTime::Idle(w), TimeSignal::Idle) => InputTime::Idle(w),
            (InputTime::Active(w) | InputTime::Idle(w), TimeSignal::Watermark(n)) => {
                InputTime::Active(Some(w.map_or(n, |w| w.max(n))))
            }
        };
        self.combine()
    }

    /// Input `i` ended: it holds nothing back any more.
    pub fn on_end(&mut self, i: usize) -> Option<TimeSignal> {
        self.inputs[i] = InputTime::Ended;
        self.combine()
    }

    fn combine(&mut self) -> Option<TimeSignal> {
        let mut active = false;
        let mut min = Some(i64::MAX);
        for input in &self.inputs {
            match input {
                InputTime::Active(w) => {
                    active = true;
                    min = min.zip(*w).map(|(a, b)| a.min(b));
                }
                InputTime::Idle(_) => {}
                InputTime::Ended => {}
            }
        }
        let all_ended = self.inputs.iter().all(|i| *i == InputTime::Ended);
        if !active && !all_ended {
            if self.said == Said::Idle {
                return None;
            }
            self.said = Said::Idle;
            return Some(TimeSignal::Idle);
        }
        let was_idle = std::mem::replace(&mut self.said, Said::Active) == Said::Idle;
        let Some(min) = min else {
            // An active input has sent nothing yet.
            return None;
        };
        match self.current {
            Some(c) if min <= c => was_idle.then_some(TimeSignal::Watermark(c)),
            _ => {
                self.current = Some(min);
                Some(TimeSignal::Watermark(min))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Activity::{Quiet, Sent};
    use TimeSignal::{Idle, Watermark};

    fn spec(bound: u64, idle: Option<u64>) -> EventTimeSpec {
        EventTimeSpec {
            field: "ts".into(),
            max_out_of_orderness_ms: bound,
            idle_timeout_ms: idle,
            watermark_interval_ms: 100,
        }
    }

    #[test]
    fn a_partition_sends_its_largest_time_minus_the_bound_at_most_every_interval() {
        let mut g = WatermarkGenerator::new(&spec(10, None), None, 0);
        assert_eq!(g.poll(0, Quiet), None, "nothing sent yet");
        for ts in [50, 30, 70, 60] {
            g.on_event(ts);
        }
        assert_eq!(g.poll(0, Sent), Some(Watermark(59)));
        g.on_event(90);
        assert_eq!(g.poll(50, Sent), None, "within the interval");
        assert_eq!(g.poll(100, Sent), Some(Watermark(79)));
        g.on_event(20);
        assert_eq!(g.poll(300, Sent), None, "an older record does not move it");
        assert_eq!(g.max_timestamp(), Some(90));
    }

    #[test]
    fn a_restored_partition_resumes_from_its_checkpointed_time() {
        let mut g = WatermarkGenerator::new(&spec(5, None), Some(1_000), 0);
        assert_eq!(g.poll(0, Quiet), Some(Watermark(994)));
        g.on_event(900);
        assert_eq!(g.poll(500, Sent), None);
    }

    #[test]
    fn a_quiet_partition_turns_idle_then_announces_itself_before_its_records() {
        let mut g = WatermarkGenerator::new(&spec(0, Some(1_000)), None, 0);
        assert_eq!(g.wake(0), None, "not idle");
        g.on_event(10);
        assert_eq!(g.poll(0, Sent), Some(Watermark(9)));
        assert_eq!(g.poll(999, Quiet), None);
        assert_eq!(g.poll(1_000, Quiet), Some(Idle));
        assert_eq!(g.poll(5_000, Quiet), None, "idle is said once");
        // Records come: the watermark as it stood goes ahead of them.
        assert_eq!(g.wake(6_000), Some(Watermark(9)));
        g.on_event(50);
        assert_eq!(g.poll(6_000, Sent), None, "the interval runs from the wake");
        assert_eq!(g.poll(6_100, Sent), Some(Watermark(49)));
    }

    #[test]
    fn time_blocked_sending_is_not_quiet() {
        let mut g = WatermarkGenerator::new(&spec(0, Some(1_000)), None, 0);
        g.on_event(10);
        assert_eq!(g.poll(0, Sent), Some(Watermark(9)));
        // A send blocked for 5 s on a full channel, then returned.
        assert_eq!(g.poll(5_000, Sent), None);
        assert_eq!(g.poll(5_500, Quiet), None);
        assert_eq!(g.poll(6_000, Quiet), Some(Idle));
    }

    #[test]
    fn a_task_takes_the_minimum_of_its_inputs_once_each_sent_one() {
        let mut t = WatermarkTracker::new(3, None);
        assert_eq!(t.on_signal(0, Watermark(10)), None);
        assert_eq!(t.on_signal(1, Watermark(5)), None);
        assert_eq!(t.on_signal(2, Watermark(7)), Some(Watermark(5)));
        assert_eq!(t.on_signal(1, Watermark(20)), Some(Watermark(7)));
        assert_eq!(t.on_signal(2, Watermark(30)), Some(Watermark(10)));
        assert_eq!(
            t.on_signal(0, Watermark(8)),
            None,
            "an input never goes back"
        );
        assert_eq!(t.current(), Some(10));
    }

    #[test]
    fn idle_inputs_do_not_hold_the_task_back_and_it_never_goes_back() {
        let mut t = WatermarkTracker::new(2, None);
        t.on_signal(0, Watermark(100));
        assert_eq!(t.on_signal(1, Idle), Some(Watermark(100)));
        assert_eq!(t.on_signal(0, Watermark(150)), Some(Watermark(150)));
        // The idle input comes back behind: the task does not go back.
        assert_eq!(t.on_signal(1, Watermark(120)), None);
        assert_eq!(t.current(), Some(150));
        assert_eq!(t.on_signal(1, Watermark(200)), None, "still 150 on input 0");
        assert_eq!(t.on_signal(0, Watermark(300)), Some(Watermark(200)));
    }

    #[test]
    fn a_task_whose_inputs_are_all_idle_is_idle_until_one_comes_back() {
        let mut t = WatermarkTracker::new(2, None);
        t.on_signal(0, Watermark(10));
        t.on_signal(1, Watermark(20));
        assert_eq!(t.on_signal(0, Idle), Some(Watermark(20)));
        assert_eq!(t.on_signal(1, Idle), Some(Idle));
        assert_eq!(t.on_signal(0, Idle), None);
        // Back with an older watermark: active again, at what it had sent.
        assert_eq!(t.on_signal(0, Watermark(15)), Some(Watermark(20)));
        assert_eq!(t.on_signal(0, Watermark(25)), Some(Watermark(25)));
    }

    #[test]
    fn a_restored_task_never_sends_less_than_its_checkpointed_watermark() {
        let mut t = WatermarkTracker::new(2, Some(100));
        assert_eq!(t.current(), Some(100));
        t.on_signal(0, Watermark(50));
        assert_eq!(t.on_signal(1, Watermark(80)), None);
        assert_eq!(t.on_signal(0, Watermark(120)), None, "input 1 is at 80");
        assert_eq!(t.on_signal(1, Watermark(130)), Some(Watermark(120)));
    }

    #[test]
    fn ended_inputs_count_as_the_end_of_time() {
        let mut t = WatermarkTracker::new(2, None);
        t.on_signal(0, Watermark(10));
        assert_eq!(t.on_end(1), Some(Watermark(10)));
        assert_eq!(t.on_end(0), Some(Watermark(i64::MAX)));
        let mut idle_then_end = WatermarkTracker::new(2, None);
        idle_then_end.on_signal(0, Idle);
        assert_eq!(idle_then_end.on_signal(1, Idle), Some(Idle));
        assert_eq!(idle_then_end.on_end(0), None, "still idle");
        assert_eq!(idle_then_end.on_end(1), Some(Watermark(i64::MAX)));
    }
}
