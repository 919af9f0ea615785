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
//!   (`i64::MAX`, with event time) and the end of its input (always), then
//!   waits for the final checkpoint. (Aligned, what they release is in
//!   that checkpoint; unaligned, the barrier may overtake them, and what
//!   they release is committed when the job finishes.) A keyed task passes
//!   the end of the input on once every input sent it, after its
//!   processing-time timers fired.
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

    /// The end of the partition's input: the end of time (with event
    /// time), then the end of the input (always: processing-time timers
    /// fire on it).
    pub(crate) fn end(
        &mut self,
        exchange: &mut Exchange,
        counters: &TaskCounters,
    ) -> Result<(), RuntimeError> {
        if self.generator.is_some() {
            counters.set_watermark(i64::MAX);
            exchange.time(TimeSignal::Watermark(i64::MAX))?;
        }
        exchange.time(TimeSignal::EndOfInput)
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
    /// The latest time processing-time timers fired up to in the old
    /// subtasks whose key groups it takes.
    pub processing: Option<i64>,
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
            processing: overlapping
                .iter()
                .filter_map(|s| s.processing_time_ms)
                .max(),
            start: overlapping.iter().map(|s| s.watermark).min().flatten(),
            floors: own
                .chain(kept)
                .filter_map(|(r, w)| Some((clip(r, range)?, w)))
                .collect(),
        }
    }
}

/// What a snapshot keeps of a keyed task's event time (and the time its
/// processing-time timers fired up to).
#[derive(Debug, Default)]
pub(crate) struct KeptTime {
    /// The wall-clock time processing-time timers fired up to: after a
    /// restore the task's clock reads past it, so a window that fired is
    /// not opened again even by a clock behind this one.
    pub processing: Option<i64>,
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
    /// Inputs that sent the end of their input; whether the task passed
    /// it on.
    input_ended: Vec<bool>,
    said_end: bool,
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
            input_ended: vec![false; inputs],
            said_end: false,
            floors: restored.floors,
        }
    }

    /// What a snapshot keeps.
    pub(crate) fn kept(&self) -> KeptTime {
        let w = self.tracker.as_ref().and_then(WatermarkTracker::current);
        KeptTime {
            processing: None,
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
        if signal == TimeSignal::EndOfInput {
            self.input_ended[i] = true;
            let all = self.input_ended.iter().all(|e| *e);
            let first = all && !std::mem::replace(&mut self.said_end, all);
            return first.then_some(TimeSignal::EndOfInput);
        }
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

    #[test]
    fn the_end_of_the_input_is_passed_on_once_every_input_sent_it() {
        use cutpoint_core::time::TimeSignal::{EndOfInput, Watermark};
        // With event time: it is not a watermark, and it is said once.
        let mut t = TaskTime::new(&spec(), 2, RestoredTime::default());
        assert_eq!(t.on_signal(0, Watermark(5)), None);
        assert_eq!(t.on_signal(0, EndOfInput), None);
        assert_eq!(t.on_signal(1, Watermark(7)), Some(Watermark(5)));
        assert_eq!(t.on_signal(1, EndOfInput), Some(EndOfInput));
        assert_eq!(t.on_signal(1, EndOfInput), None, "once");
        // Without event time too.
        let plain = JobSpec::from_json(
            r#"{"job_id":"t","source":{"type":"generator","events":10,"keys":3},
                "key_by":"app_id","aggregate":{"type":"count"}}"#,
        )
        .unwrap();
        let mut t = TaskTime::new(&plain, 1, RestoredTime::default());
        assert_eq!(t.on_signal(0, Watermark(5)), None);
        assert_eq!(t.on_signal(0, EndOfInput), Some(EndOfInput));
    }

    #[test]
    fn a_restore_takes_the_latest_processing_time_of_its_old_subtasks() {
        let mut a = old(0, range(0, 63), None, Vec::new());
        let mut b = old(1, range(64, 127), None, Vec::new());
        a.processing_time_ms = Some(1_000);
        b.processing_time_ms = Some(2_000);
        assert_eq!(
            RestoredTime::of(&[a.clone(), b], range(0, 127)).processing,
            Some(2_000)
        );
        assert_eq!(RestoredTime::of(&[a], range(0, 31)).processing, Some(1_000));
    }
}
