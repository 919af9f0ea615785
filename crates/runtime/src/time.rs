//! Event time in the tasks: a source task's watermarks ([`SourceTime`])
//! and a keyed task's ([`TaskTime`]), around the pure decisions of
//! [`cutpoint_core::time`]. A job without `event_time` has neither: no
//! watermark is ever sent and nothing is done per record.
//!
//! Invariants:
//! - A source task observes each record's event time before the job's
//!   steps run, and sends its watermark after the batch it covers, in band.
//! - At the end of its input a source partition sends the end of time
//!   (`i64::MAX`), before it waits for the final checkpoint, so everything
//!   the watermark releases happens before that checkpoint's barrier.
//! - A checkpoint keeps a partition's largest event time with its offset;
//!   a restored source resumes its watermark from it.

use std::time::Instant;

use cutpoint_core::metadata::SourceOffset;
use cutpoint_core::time::{TimeSignal, WatermarkGenerator, WatermarkTracker};
use cutpoint_core::{JobSpec, Record};

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

    /// Notes the event times of `batch` (as read, before any step).
    #[inline]
    pub(crate) fn observe(&mut self, batch: &[Record]) {
        let now = self.now_ms();
        let Some(g) = &mut self.generator else { return };
        for r in batch {
            g.on_event(r.ts);
        }
        if !batch.is_empty() {
            g.on_read(now);
        }
    }

    /// Sends the watermark (or idleness) if it is due.
    pub(crate) fn emit(
        &mut self,
        exchange: &mut Exchange,
        counters: &TaskCounters,
    ) -> Result<(), RuntimeError> {
        let now = self.now_ms();
        let Some(signal) = self.generator.as_mut().and_then(|g| g.poll(now)) else {
            return Ok(());
        };
        if let TimeSignal::Watermark(w) = signal {
            counters.set_watermark(w);
        }
        exchange.time(signal)
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

/// A keyed task's event time: the minimum watermark over its inputs.
pub(crate) struct TaskTime {
    tracker: Option<WatermarkTracker>,
}

impl TaskTime {
    pub(crate) fn new(spec: &JobSpec, inputs: usize) -> Self {
        Self {
            tracker: spec
                .event_time
                .as_ref()
                .map(|_| WatermarkTracker::new(inputs)),
        }
    }

    /// Input `i` sent `signal`: what the task's watermark became goes on.
    pub(crate) fn on_signal(
        &mut self,
        i: usize,
        signal: TimeSignal,
        out: &mut Output,
        counters: &TaskCounters,
    ) -> Result<(), RuntimeError> {
        let Some(t) = &mut self.tracker else {
            return Ok(());
        };
        let next = t.on_signal(i, signal);
        forward(next, out, counters)
    }

    /// Input `i` ended.
    pub(crate) fn on_end(
        &mut self,
        i: usize,
        out: &mut Output,
        counters: &TaskCounters,
    ) -> Result<(), RuntimeError> {
        let Some(t) = &mut self.tracker else {
            return Ok(());
        };
        let next = t.on_end(i);
        forward(next, out, counters)
    }
}

fn forward(
    next: Option<TimeSignal>,
    out: &mut Output,
    counters: &TaskCounters,
) -> Result<(), RuntimeError> {
    let Some(signal) = next else { return Ok(()) };
    if let TimeSignal::Watermark(w) = signal {
        counters.set_watermark(w);
    }
    out.time(signal)
}
