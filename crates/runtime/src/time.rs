//! Event time in the tasks: a source task's watermarks ([`SourceTime`])
//! and a keyed task's ([`TaskTime`]), around the pure decisions of
//! [`cutpoint_core::time`]. A job without `event_time` has neither: no
//! watermark is ever sent and nothing is done per record.
//!
//! Invariants:
//! - A source task counts the event times of the records it sends (after
//!   the job's steps) and sends its watermark after the batch it covers,
//!   in band; a partition coming back from idle says so before its records.
//! - At the end of its input a source partition sends the end of time
//!   (`i64::MAX`), then waits for the final checkpoint. (Aligned, what it
//!   releases is in that checkpoint; unaligned, the barrier may overtake
//!   it, and what it releases is committed when the job finishes.)
//! - A keyed task acts on a new watermark (timers fire) before it sends
//!   the watermark on, so what it emitted for it goes first.
//! - A checkpoint keeps a partition's largest event time with its offset,
//!   and a keyed task's watermark with its state; a restore resumes both.

use std::time::Instant;

use cutpoint_core::metadata::SourceOffset;
use cutpoint_core::time::{Activity, TimeSignal, WatermarkGenerator, WatermarkTracker};
use cutpoint_core::{JobSpec, KeyGroupRange, Record, SubtaskState};

use crate::context::TaskCounters;
use crate::exchange::{Exchange, Output};
use crate::RuntimeError;

/// A source partition's event time.
pub(crate) struct SourceTime {
    generator: Option<WatermarkGenerator>,
    started: Instant,
}

impl SourceTime {
    /// The partition's watermarks, resumed from `from` (a restore).
    pub(crate) fn new(spec: &JobSpec, from: Option<&SourceOffset>) -> Self {
        let restored = from.and_then(|o| o.max_timestamp);
        Self {
            generator: spec
                .event_time
                .as_ref()
                .map(|t| WatermarkGenerator::new(t, restored, 0)),
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// `batch` (after the job's steps) is about to be sent: an idle
    /// partition first says it is active again; its event times count.
    pub(crate) fn before_send(
        &mut self,
        batch: &[Record],
        exchange: &mut Exchange,
        counters: &TaskCounters,
    ) -> Result<(), RuntimeError> {
        if batch.is_empty() || self.generator.is_none() {
            return Ok(());
        }
        let now = self.now_ms();
        let Some(g) = &mut self.generator else {
            return Ok(());
        };
        let wake = g.wake(now);
        for r in batch {
            g.on_event(r.ts);
        }
        send(wake, exchange, counters)
    }

    /// After a turn that sent records or not: the watermark (or idleness)
    /// if it is due.
    pub(crate) fn after_send(
        &mut self,
        turn: Activity,
        exchange: &mut Exchange,
        counters: &TaskCounters,
    ) -> Result<(), RuntimeError> {
        if self.generator.is_none() {
            return Ok(());
        }
        let now = self.now_ms();
        let signal = self.generator.as_mut().and_then(|g| g.poll(now, turn));
        send(signal, exchange, counters)
    }

    /// The end of the partition's input: the end of time.
    pub(crate) fn end(
        &mut self,
        exchange: &mut Exchange,
        counters: &TaskCounters,
    ) -> Result<(), RuntimeError> {
        if self.generator.is_none() {
            return Ok(());
        }
        counters.set_watermark(i64::MAX);
        exchange.time(TimeSignal::Watermark(i64::MAX))
    }

    /// `offset` with the largest event time read (what a checkpoint keeps).
    pub(crate) fn offset(&self, mut offset: SourceOffset) -> SourceOffset {
        offset.max_timestamp = self.generator.as_ref().and_then(|g| g.max_timestamp());
        offset
    }
}

fn send(
    signal: Option<TimeSignal>,
    exchange: &mut Exchange,
    counters: &TaskCounters,
) -> Result<(), RuntimeError> {
    let Some(signal) = signal else { return Ok(()) };
    if let TimeSignal::Watermark(w) = signal {
        counters.set_watermark(w);
    }
    exchange.time(signal)
}

/// What a restored keyed subtask knows of event time.
#[derive(Debug, Default)]
pub(crate) struct RestoredTime {
    /// Its watermark: the least over the old subtasks whose key groups it
    /// takes (`None` if one had none).
    pub start: Option<i64>,
    /// The watermark each restored key-group range had at the checkpoint
    /// (its old subtask's, or a floor that subtask kept from a restore
    /// before), clipped to the new subtask's range.
    pub floors: Vec<(KeyGroupRange, i64)>,
}

/// `r` cut to `range`, if they meet.
fn clip(r: KeyGroupRange, range: KeyGroupRange) -> Option<KeyGroupRange> {
    let (start, end) = (r.start.max(range.start), r.end.min(range.end));
    (start <= end).then_some(KeyGroupRange { start, end })
}

impl RestoredTime {
    /// From the restored subtasks' states, for a subtask owning `range`.
    pub(crate) fn of(restore: &[SubtaskState], range: KeyGroupRange) -> Self {
        let overlapping: Vec<_> = restore
            .iter()
            .filter(|s| s.key_group_range.is_some_and(|r| r.intersects(&range)))
            .collect();
        let own = overlapping
            .iter()
            .filter_map(|s| Some((s.key_group_range?, s.watermark?)));
        let kept = overlapping
            .iter()
            .flat_map(|s| s.watermark_floors.iter().copied());
        Self {
            start: overlapping.iter().map(|s| s.watermark).min().flatten(),
            floors: own
                .chain(kept)
                .filter_map(|(r, w)| Some((clip(r, range)?, w)))
                .collect(),
        }
    }
}

/// What a snapshot keeps of a keyed task's event time.
#[derive(Debug, Default)]
pub(crate) struct KeptTime {
    /// Its watermark, unless it is the end of time (a job restored from a
    /// final checkpoint into more input must not find every record late).
    pub watermark: Option<i64>,
    /// The restored floors still above it: a key group's windows fired up
    /// to its floor before the restore, so the next restore must know it
    /// too (a rescale joined subtasks at different watermarks).
    pub floors: Vec<(KeyGroupRange, i64)>,
}

/// A keyed task's event time: the minimum watermark over its inputs.
pub(crate) struct TaskTime {
    tracker: Option<WatermarkTracker>,
    /// The restored floors of its key groups (see [`RestoredTime`]).
    floors: Vec<(KeyGroupRange, i64)>,
}

impl TaskTime {
    /// A task with `inputs` inputs, at the watermark its checkpoint kept.
    pub(crate) fn new(spec: &JobSpec, inputs: usize, restored: RestoredTime) -> Self {
        Self {
            tracker: spec
                .event_time
                .as_ref()
                .map(|_| WatermarkTracker::new(inputs, restored.start)),
            floors: restored.floors,
        }
    }

    /// What a snapshot keeps.
    pub(crate) fn kept(&self) -> KeptTime {
        let w = self.tracker.as_ref().and_then(WatermarkTracker::current);
        KeptTime {
            watermark: w.filter(|w| *w != i64::MAX),
            floors: self
                .floors
                .iter()
                .filter(|(_, f)| w.is_none_or(|w| *f > w))
                .copied()
                .collect(),
        }
    }

    /// Input `i` sent `signal`: what the task's watermark became, if it
    /// changed (to act on, then [`forward`]).
    pub(crate) fn on_signal(&mut self, i: usize, signal: TimeSignal) -> Option<TimeSignal> {
        self.tracker.as_mut()?.on_signal(i, signal)
    }

    /// Input `i` ended.
    pub(crate) fn on_end(&mut self, i: usize) -> Option<TimeSignal> {
        self.tracker.as_mut()?.on_end(i)
    }
}

/// What the task's watermark became, on to the next stage (after what
/// the task emitted for it).
pub(crate) fn forward(
    signal: TimeSignal,
    out: &mut Output,
    counters: &TaskCounters,
) -> Result<(), RuntimeError> {
    if let TimeSignal::Watermark(w) = signal {
        counters.set_watermark(w);
    }
    out.time(signal)
}

#[cfg(test)]
mod tests {
    use cutpoint_core::{OperatorId, TaskId};

    use super::*;

    fn range(start: u32, end: u32) -> KeyGroupRange {
        KeyGroupRange { start, end }
    }

    fn old(
        i: u32,
        r: KeyGroupRange,
        w: Option<i64>,
        floors: Vec<(KeyGroupRange, i64)>,
    ) -> SubtaskState {
        SubtaskState {
            key_group_range: Some(r),
            watermark: w,
            watermark_floors: floors,
            ..SubtaskState::empty(TaskId::new(&OperatorId::new("agg").unwrap(), i))
        }
    }

    fn spec() -> JobSpec {
        JobSpec::from_json(
            r#"{"job_id":"t","source":{"type":"generator","events":10,"keys":3},
                "key_by":"app_id","aggregate":{"type":"count"},"event_time":{"field":"ts"}}"#,
        )
        .unwrap()
    }

    /// Two subtasks at different watermarks (unaligned) joined by a
    /// rescale: the new one starts at the lower, each range keeps its own
    /// as a floor, and a snapshot before the watermark moves keeps the
    /// higher floor, so a second restore still knows it.
    #[test]
    fn floors_survive_a_rescale_and_the_next_checkpoint() {
        let a = old(0, range(0, 63), Some(100), Vec::new());
        let b = old(1, range(64, 127), Some(50), Vec::new());
        let joined = RestoredTime::of(&[a, b], range(0, 127));
        assert_eq!(joined.start, Some(50));
        assert_eq!(joined.floors, [(range(0, 63), 100), (range(64, 127), 50)]);
        let kept = TaskTime::new(&spec(), 2, joined).kept();
        assert_eq!(kept.watermark, Some(50));
        assert_eq!(
            kept.floors,
            [(range(0, 63), 100)],
            "the one above the watermark"
        );
        // The next restore, rescaled again: clipped to the new range.
        let c = old(0, range(0, 127), kept.watermark, kept.floors);
        let again = RestoredTime::of(&[c], range(32, 95));
        assert_eq!(again.start, Some(50));
        assert_eq!(again.floors, [(range(32, 95), 50), (range(32, 63), 100)]);
        // A subtask without a watermark: none to start from.
        let none = old(1, range(64, 127), None, Vec::new());
        assert_eq!(RestoredTime::of(&[none], range(0, 127)).start, None);
    }
}
