//! Barrier handling of a task with several inputs, as a pure state
//! machine: the task tells [`BarrierHandler`] what arrived on which input
//! and gets back, as a value, what to do — process the records, snapshot
//! now (aligned), start an unaligned snapshot, or nothing. No I/O, no
//! clock: time comes in as an argument, so every scenario is a unit test
//! with a scripted message sequence.
//!
//! Modes ([`CheckpointingMode`]):
//! - **exactly-once (aligned)**: once barrier `n` arrived on an input, that
//!   input is not read ([`BarrierHandler::readable`]) until barrier `n`
//!   arrived on every input that has not ended; then the task snapshots
//!   and every input is read again. With `aligned_checkpoint_timeout`, an
//!   alignment that waits longer turns unaligned
//!   ([`BarrierHandler::check_timeout`]).
//! - **at-least-once**: no input is blocked; the task snapshots when the
//!   last barrier `n` arrived, and counts the records read from inputs
//!   after their barrier (they are in the snapshot and replayed after a
//!   restore: `records_beyond_barrier`).
//! - **unaligned**: the first copy of barrier `n` to arrive (the priority
//!   copy that overtook the queues, or the in-band one) starts a snapshot
//!   at once; while the task still collects the channel state of an
//!   earlier snapshot, a newer in-band barrier is deferred until that
//!   collection is done ([`BarrierHandler::take_deferred`]).
//!
//! Invariants:
//! - A checkpoint is snapshotted at most once per task: barriers with an id
//!   at or below the newest one started are stale and ignored.
//! - A newer barrier overtaking one being aligned (concurrent or expired
//!   checkpoints) replaces it: the older can no longer complete here.
//! - An input that ended counts as having delivered every barrier.
//!
//! The collection of channel state itself (which records are in flight)
//! stays with the task's loop (`running.rs`); this module only decides.

use std::time::{Duration, Instant};

use cutpoint_core::spec::CheckpointingMode;
use cutpoint_core::CheckpointId;

use crate::Barrier;

/// What the task does after a barrier, an end of input or a timeout check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing more to do for this message.
    Continue,
    /// Every live input delivered `barrier`: snapshot now (aligned or
    /// at-least-once).
    Snapshot {
        barrier: Barrier,
        /// From the first arrival of the barrier to now.
        alignment: Duration,
        /// Records read from inputs after their barrier (at-least-once).
        records_beyond: u64,
    },
    /// Start an unaligned snapshot of `barrier` now.
    StartUnaligned {
        barrier: Barrier,
        /// Time spent aligned before (an aligned checkpoint that timed out).
        alignment: Duration,
    },
}

/// The barrier being aligned.
#[derive(Debug, Clone)]
struct Alignment {
    barrier: Barrier,
    first_arrival: Instant,
    /// Inputs that delivered it.
    arrived: Vec<bool>,
    /// Records read from inputs after their barrier (at-least-once mode).
    beyond: u64,
}

/// The barrier decisions of one task with `inputs` input channels.
#[derive(Debug, Clone)]
pub(crate) struct BarrierHandler {
    mode: CheckpointingMode,
    aligned_timeout: Option<Duration>,
    ended: Vec<bool>,
    /// The newest barrier seen in band, per input.
    seen: Vec<CheckpointId>,
    aligning: Option<Alignment>,
    /// The newest checkpoint this task snapshotted (or is snapshotting).
    last_started: CheckpointId,
    /// Unaligned: a barrier to start once the current collection is done.
    deferred: Option<Barrier>,
}

impl BarrierHandler {
    pub(crate) fn new(
        inputs: usize,
        mode: CheckpointingMode,
        aligned_timeout: Option<Duration>,
    ) -> Self {
        Self {
            mode,
            aligned_timeout,
            ended: vec![false; inputs],
            seen: vec![CheckpointId(0); inputs],
            aligning: None,
            last_started: CheckpointId(0),
            deferred: None,
        }
    }

    /// Whether `input` may be read now (aligned mode blocks an input that
    /// delivered the barrier being aligned).
    pub(crate) fn readable(&self, input: usize) -> bool {
        if self.ended[input] {
            return false;
        }
        match (&self.aligning, self.mode) {
            (Some(a), CheckpointingMode::ExactlyOnce) => !a.arrived[input],
            _ => true,
        }
    }

    /// Every input ended.
    pub(crate) fn all_ended(&self) -> bool {
        self.ended.iter().all(|e| *e)
    }

    /// Inputs that ended, by index.
    pub(crate) fn ended(&self) -> &[bool] {
        &self.ended
    }

    /// The newest in-band barrier per input.
    pub(crate) fn seen(&self) -> &[CheckpointId] {
        &self.seen
    }

    /// Records that `count` records were read from `input`.
    pub(crate) fn on_records(&mut self, input: usize, count: u64) {
        if let Some(a) = &mut self.aligning {
            if a.arrived[input] {
                a.beyond += count;
            }
        }
    }

    /// Notes an in-band barrier taken off `input` without handling it (an
    /// unaligned snapshot's collection reads ahead).
    pub(crate) fn note_seen(&mut self, input: usize, id: CheckpointId) {
        self.seen[input] = self.seen[input].max(id);
    }

    /// Barrier `b` arrived in band on `input`. `collecting`: an unaligned
    /// snapshot's channel state is still being collected.
    pub(crate) fn on_barrier(
        &mut self,
        input: usize,
        b: Barrier,
        now: Instant,
        collecting: bool,
    ) -> Decision {
        self.note_seen(input, b.id);
        if b.id <= self.last_started {
            return Decision::Continue;
        }
        if self.mode == CheckpointingMode::Unaligned {
            return self.unaligned(b, collecting);
        }
        match &mut self.aligning {
            Some(a) if b.id < a.barrier.id => return Decision::Continue,
            Some(a) if b.id == a.barrier.id => a.arrived[input] = true,
            // None, or a newer barrier overtook the one being aligned.
            _ => {
                let mut arrived = vec![false; self.ended.len()];
                arrived[input] = true;
                self.aligning = Some(Alignment {
                    barrier: b,
                    first_arrival: now,
                    arrived,
                    beyond: 0,
                });
            }
        }
        self.aligned_if_complete(now)
    }

    /// The priority copy of barrier `b` overtook the queues (unaligned).
    pub(crate) fn on_priority_barrier(&mut self, b: Barrier) -> Decision {
        if b.id <= self.last_started {
            return Decision::Continue;
        }
        Decision::StartUnaligned {
            barrier: b,
            alignment: Duration::ZERO,
        }
    }

    /// `input` ended: it no longer holds an alignment back.
    pub(crate) fn on_end(&mut self, input: usize, now: Instant) -> Decision {
        self.ended[input] = true;
        self.aligned_if_complete(now)
    }

    /// An alignment past the aligned-checkpoint timeout turns unaligned
    /// (not while a collection is under way: it would be replaced before
    /// its snapshot reached the worker).
    pub(crate) fn check_timeout(&mut self, now: Instant, collecting: bool) -> Decision {
        let (Some(limit), Some(a), false) = (self.aligned_timeout, &self.aligning, collecting)
        else {
            return Decision::Continue;
        };
        let waited = now.saturating_duration_since(a.first_arrival);
        if waited < limit {
            return Decision::Continue;
        }
        let barrier = a.barrier;
        self.aligning = None;
        Decision::StartUnaligned {
            barrier,
            alignment: waited,
        }
    }

    /// How long the task may wait for a message before checking the
    /// timeout again (at most `max`).
    pub(crate) fn wait(&self, now: Instant, max: Duration) -> Duration {
        match (self.aligned_timeout, &self.aligning) {
            (Some(limit), Some(a)) => limit
                .saturating_sub(now.saturating_duration_since(a.first_arrival))
                .min(max),
            _ => max,
        }
    }

    /// The task started a snapshot of `id` (unaligned).
    pub(crate) fn started(&mut self, id: CheckpointId) {
        self.last_started = self.last_started.max(id);
    }

    /// The collection is done: the deferred barrier to start now, if it is
    /// still newer than every snapshot started.
    pub(crate) fn take_deferred(&mut self) -> Option<Barrier> {
        self.deferred.take().filter(|b| b.id > self.last_started)
    }

    fn unaligned(&mut self, b: Barrier, collecting: bool) -> Decision {
        if !collecting {
            return Decision::StartUnaligned {
                barrier: b,
                alignment: Duration::ZERO,
            };
        }
        if self.deferred.is_none_or(|d| d.id < b.id) {
            self.deferred = Some(b);
        }
        Decision::Continue
    }

    fn aligned_if_complete(&mut self, now: Instant) -> Decision {
        let Some(a) = &self.aligning else {
            return Decision::Continue;
        };
        if !(0..self.ended.len()).all(|j| a.arrived[j] || self.ended[j]) {
            return Decision::Continue;
        }
        let a = self.aligning.take().expect("aligning");
        self.last_started = a.barrier.id;
        Decision::Snapshot {
            barrier: a.barrier,
            alignment: now.saturating_duration_since(a.first_arrival),
            records_beyond: a.beyond,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutpoint_core::CheckpointType;

    fn barrier(id: u64, _at: Instant) -> Barrier {
        Barrier {
            id: CheckpointId(id),
            checkpoint_type: CheckpointType::Incremental,
            trigger_timestamp: 0,
            reuse: None,
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn snapshot_of(d: Decision) -> (u64, Duration, u64) {
        match d {
            Decision::Snapshot {
                barrier,
                alignment,
                records_beyond,
            } => (barrier.id.0, alignment, records_beyond),
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }

    #[test]
    fn aligned_blocks_an_input_until_every_input_delivered_the_barrier() {
        let t0 = Instant::now();
        let mut h = BarrierHandler::new(3, CheckpointingMode::ExactlyOnce, None);
        assert_eq!(
            h.on_barrier(0, barrier(1, t0), t0, false),
            Decision::Continue
        );
        assert!(!h.readable(0), "blocked after its barrier");
        assert!(h.readable(1) && h.readable(2));
        h.on_records(1, 10);
        assert_eq!(
            h.on_barrier(2, barrier(1, t0), ms(t0, 5), false),
            Decision::Continue
        );
        assert!(!h.readable(2));
        let (id, alignment, beyond) =
            snapshot_of(h.on_barrier(1, barrier(1, t0), ms(t0, 9), false));
        assert_eq!((id, alignment, beyond), (1, Duration::from_millis(9), 0));
        assert!(
            (0..3).all(|i| h.readable(i)),
            "unblocked after the snapshot"
        );
        // A late copy of the same barrier is stale.
        assert_eq!(
            h.on_barrier(0, barrier(1, t0), ms(t0, 10), false),
            Decision::Continue
        );
        assert!(h.readable(0));
    }

    #[test]
    fn a_task_with_one_input_snapshots_at_once() {
        let t0 = Instant::now();
        let mut h = BarrierHandler::new(1, CheckpointingMode::ExactlyOnce, None);
        assert_eq!(snapshot_of(h.on_barrier(0, barrier(4, t0), t0, false)).0, 4);
        assert!(h.readable(0));
    }

    #[test]
    fn at_least_once_never_blocks_and_counts_records_beyond_the_barrier() {
        let t0 = Instant::now();
        let mut h = BarrierHandler::new(2, CheckpointingMode::AtLeastOnce, None);
        h.on_records(0, 3); // before any barrier: not beyond
        assert_eq!(
            h.on_barrier(0, barrier(1, t0), t0, false),
            Decision::Continue
        );
        assert!(h.readable(0), "at-least-once reads on");
        h.on_records(0, 5); // after input 0's barrier: beyond
        h.on_records(1, 7); // input 1 before its barrier: not beyond
        let (id, _, beyond) = snapshot_of(h.on_barrier(1, barrier(1, t0), t0, false));
        assert_eq!((id, beyond), (1, 5));
        h.on_records(0, 2); // nothing being aligned: not beyond
        h.on_barrier(1, barrier(2, t0), t0, false);
        h.on_records(1, 4); // after input 1's barrier 2: beyond
        h.on_records(0, 1); // input 0 before its barrier 2: not beyond
        let (_, _, beyond) = snapshot_of(h.on_barrier(0, barrier(2, t0), t0, false));
        assert_eq!(beyond, 4, "the count starts over per checkpoint");
    }

    #[test]
    fn a_newer_barrier_replaces_the_one_being_aligned() {
        let t0 = Instant::now();
        let mut h = BarrierHandler::new(2, CheckpointingMode::AtLeastOnce, None);
        h.on_barrier(0, barrier(1, t0), t0, false);
        // Checkpoint 1 expired; 2 arrives on the same input first.
        assert_eq!(
            h.on_barrier(0, barrier(2, t0), t0, false),
            Decision::Continue
        );
        assert_eq!(
            h.on_barrier(1, barrier(1, t0), t0, false),
            Decision::Continue,
            "1 cannot complete any more"
        );
        assert_eq!(snapshot_of(h.on_barrier(1, barrier(2, t0), t0, false)).0, 2);
        assert_eq!(
            h.on_barrier(0, barrier(1, t0), t0, false),
            Decision::Continue
        );
    }

    #[test]
    fn an_ended_input_does_not_hold_an_alignment_back() {
        let t0 = Instant::now();
        let mut h = BarrierHandler::new(3, CheckpointingMode::ExactlyOnce, None);
        assert_eq!(h.on_end(2, t0), Decision::Continue, "nothing being aligned");
        assert!(!h.readable(2), "an ended input is not read");
        h.on_barrier(0, barrier(1, t0), t0, false);
        assert_eq!(
            snapshot_of(h.on_end(1, ms(t0, 3))).0,
            1,
            "the end completes it"
        );
        assert!(!h.all_ended());
        h.on_end(0, t0);
        assert!(h.all_ended());
    }

    #[test]
    fn an_aligned_checkpoint_past_its_timeout_turns_unaligned() {
        let t0 = Instant::now();
        let limit = Duration::from_millis(100);
        let mut h = BarrierHandler::new(2, CheckpointingMode::ExactlyOnce, Some(limit));
        assert_eq!(
            h.wait(t0, Duration::from_millis(50)),
            Duration::from_millis(50)
        );
        h.on_barrier(0, barrier(1, t0), t0, false);
        assert_eq!(
            h.wait(ms(t0, 80), Duration::from_millis(50)),
            Duration::from_millis(20)
        );
        assert_eq!(h.check_timeout(ms(t0, 99), false), Decision::Continue);
        // Not while an unaligned collection is under way.
        assert_eq!(h.check_timeout(ms(t0, 120), true), Decision::Continue);
        match h.check_timeout(ms(t0, 130), false) {
            Decision::StartUnaligned { barrier, alignment } => {
                assert_eq!((barrier.id.0, alignment), (1, Duration::from_millis(130)))
            }
            other => panic!("expected unaligned, got {other:?}"),
        }
        assert!(h.readable(0), "the blocked input is read again");
        h.started(CheckpointId(1));
        // Its in-band copy on the other input is stale now.
        assert_eq!(
            h.on_barrier(1, barrier(1, t0), ms(t0, 140), false),
            Decision::Continue
        );
        assert_eq!(h.check_timeout(ms(t0, 500), false), Decision::Continue);
    }

    #[test]
    fn unaligned_starts_on_the_first_copy_and_defers_while_collecting() {
        let t0 = Instant::now();
        let mut h = BarrierHandler::new(2, CheckpointingMode::Unaligned, None);
        let start = h.on_priority_barrier(barrier(1, t0));
        assert!(matches!(start, Decision::StartUnaligned { barrier, .. } if barrier.id.0 == 1));
        h.started(CheckpointId(1));
        // The in-band copies of 1 are stale; the priority copy again too.
        assert_eq!(
            h.on_barrier(0, barrier(1, t0), t0, true),
            Decision::Continue
        );
        assert_eq!(h.on_priority_barrier(barrier(1, t0)), Decision::Continue);
        // 2 and 3 arrive in band while 1 is still collecting: the newest waits.
        assert_eq!(
            h.on_barrier(0, barrier(2, t0), t0, true),
            Decision::Continue
        );
        assert_eq!(
            h.on_barrier(0, barrier(3, t0), t0, true),
            Decision::Continue
        );
        assert_eq!(
            h.on_barrier(1, barrier(2, t0), t0, true),
            Decision::Continue
        );
        assert_eq!(h.seen(), &[CheckpointId(3), CheckpointId(2)]);
        assert_eq!(h.take_deferred().map(|b| b.id.0), Some(3));
        assert_eq!(h.take_deferred(), None);
        // Not collecting: an in-band barrier starts at once.
        let d = h.on_barrier(1, barrier(4, t0), t0, false);
        assert!(matches!(d, Decision::StartUnaligned { barrier, .. } if barrier.id.0 == 4));
    }

    #[test]
    fn an_aligned_barrier_arriving_while_collecting_is_aligned_not_deferred() {
        // Exactly-once after a timeout: checkpoint 1 turned unaligned and is
        // still collecting when barrier 2 arrives in band.
        let t0 = Instant::now();
        let limit = Duration::from_millis(10);
        let mut h = BarrierHandler::new(2, CheckpointingMode::ExactlyOnce, Some(limit));
        h.on_barrier(0, barrier(1, t0), t0, false);
        assert!(matches!(
            h.check_timeout(ms(t0, 20), false),
            Decision::StartUnaligned { .. }
        ));
        h.started(CheckpointId(1));
        assert_eq!(
            h.on_barrier(0, barrier(2, t0), ms(t0, 21), true),
            Decision::Continue
        );
        assert!(!h.readable(0), "aligned: blocked, not deferred");
        assert_eq!(h.take_deferred(), None);
        assert_eq!(
            snapshot_of(h.on_barrier(1, barrier(2, t0), ms(t0, 22), true)).0,
            2
        );
    }

    #[test]
    fn a_newer_aligned_barrier_unblocks_the_input_held_for_the_older() {
        let t0 = Instant::now();
        let mut h = BarrierHandler::new(2, CheckpointingMode::ExactlyOnce, None);
        h.on_barrier(0, barrier(1, t0), t0, false);
        assert!(!h.readable(0));
        // Checkpoint 1 expired; 2 arrives first on input 1.
        h.on_barrier(1, barrier(2, t0), t0, false);
        assert!(h.readable(0), "input 0 waits for 2 now, not for 1");
        assert!(!h.readable(1));
        assert_eq!(snapshot_of(h.on_barrier(0, barrier(2, t0), t0, false)).0, 2);
    }

    #[test]
    fn unaligned_never_counts_records_beyond_or_snapshots_aligned() {
        let t0 = Instant::now();
        let mut h = BarrierHandler::new(2, CheckpointingMode::Unaligned, None);
        let d = h.on_barrier(0, barrier(1, t0), t0, false);
        assert!(matches!(d, Decision::StartUnaligned { .. }));
        h.started(CheckpointId(1));
        h.on_records(0, 100);
        assert_eq!(h.on_end(1, t0), Decision::Continue);
        assert!(h.readable(0) && !h.readable(1));
        assert_eq!(h.on_end(0, t0), Decision::Continue);
        assert!(h.all_ended());
    }

    #[test]
    fn a_barrier_crosses_a_process_boundary_as_plain_data() {
        let mut b = barrier(7, Instant::now());
        b.reuse = Some(CheckpointId(5));
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<Barrier>(&text).unwrap(), b);
    }

    #[test]
    fn a_deferred_barrier_already_started_is_dropped() {
        let t0 = Instant::now();
        let mut h = BarrierHandler::new(2, CheckpointingMode::Unaligned, None);
        h.started(CheckpointId(1));
        h.on_barrier(0, barrier(2, t0), t0, true);
        // Its priority copy started it meanwhile.
        h.started(CheckpointId(2));
        assert_eq!(h.take_deferred(), None);
    }
}
