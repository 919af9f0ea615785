//! [`CheckpointTracker`]: pure checkpoint decisions (Flink's
//! `CheckpointCoordinator` logic without its I/O).
//!
//! Invariants:
//! - Checkpoint ids strictly increase and are never reused: the coordinator
//!   hands the tracker ids from its writer lease (a range no earlier writer
//!   of the job used, recorded in storage before any of them is), and the
//!   tracker refuses triggers past the lease until it gets more.
//! - A checkpoint is complete only when every expected task acked it; the
//!   caller then writes `_metadata` and reports back with
//!   [`CheckpointTracker::completed`], which returns what retention subsumes.
//! - Declines and timeouts fail a checkpoint and count towards the tolerable
//!   consecutive failures; aborts because the job is finishing, failing or
//!   because a newer checkpoint completed do not.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use cutpoint_core::{
    CheckpointConfig, CheckpointId, CheckpointType, StateFile, SubtaskState, TaskId,
};

/// A checkpoint in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingCheckpoint {
    pub id: CheckpointId,
    pub checkpoint_type: CheckpointType,
    pub trigger_timestamp: u64,
    pub expected: BTreeSet<TaskId>,
    pub acks: BTreeMap<TaskId, SubtaskState>,
}

/// Why a trigger was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerRefusal {
    #[error("{0} checkpoint(s) already in progress (max_concurrent)")]
    TooManyConcurrent(usize),
    #[error("min_pause_ms since the last completed checkpoint has not passed")]
    MinPause,
    #[error("the job is not running ({0})")]
    NotRunning(String),
    #[error("no checkpoint ids left in the writer lease (renewing it)")]
    NoIds,
    #[error(transparent)]
    FailPoint(#[from] cutpoint_core::failpoint::InjectedFault),
}

/// What an acknowledgement did.
#[derive(Debug, PartialEq)]
pub enum AckOutcome {
    /// Recorded; more acks needed.
    Pending,
    /// Every task acked: write the metadata, then call `completed`.
    AllAcked(Box<PendingCheckpoint>),
    /// Not applied: unexpected or duplicate task.
    Ignored(String),
    /// The checkpoint is not pending (aborted, or already settled): the
    /// caller cleans up what this late ack uploaded unless it is retained.
    Stale(Box<SubtaskState>),
}

/// Why a checkpoint stopped without completing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortReason {
    Declined {
        task: TaskId,
        reason: String,
    },
    Expired,
    MetadataWriteFailed(String),
    /// Not the checkpoint's fault; not counted as a failure.
    JobFinishing,
    JobFailing,
    Subsumed,
}

impl AbortReason {
    pub fn counts_as_failure(&self) -> bool {
        matches!(
            self,
            AbortReason::Declined { .. }
                | AbortReason::Expired
                | AbortReason::MetadataWriteFailed(_)
        )
    }

    pub fn message(&self) -> String {
        match self {
            AbortReason::Declined { task, reason } => format!("declined by {task}: {reason}"),
            AbortReason::Expired => "expired before completing (checkpoint timeout)".into(),
            AbortReason::MetadataWriteFailed(e) => format!("writing _metadata failed: {e}"),
            AbortReason::JobFinishing => "the job finished first".into(),
            AbortReason::JobFailing => "the job failed".into(),
            AbortReason::Subsumed => "subsumed by a newer completed checkpoint".into(),
        }
    }
}

/// A decision to abort one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort {
    pub id: CheckpointId,
    pub reason: AbortReason,
    /// True when this failure exceeded `tolerable_failures`: fail the job.
    pub fail_job: bool,
    /// Files the tasks that did ack had stored for it (to clean up).
    pub files: Vec<StateFile>,
}

/// What completing a checkpoint implies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// Retained checkpoints to delete now (retention).
    pub subsumed: Vec<CheckpointId>,
    /// Older pending checkpoints, aborted (a newer one completed).
    pub aborted: Vec<Abort>,
}

/// A completed checkpoint the tracker retains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    pub id: CheckpointId,
    pub complete_timestamp: u64,
}

/// The coordinator's state machine.
#[derive(Debug)]
pub struct CheckpointTracker {
    config: CheckpointConfig,
    /// The next id to hand out (from the writer lease, never reused).
    next_id: CheckpointId,
    /// The last id the tracker may hand out (`None`: no limit).
    last_id: Option<CheckpointId>,
    /// Checkpoints in flight, by id (each knows its trigger time, to find
    /// expired ones).
    pending: BTreeMap<CheckpointId, PendingCheckpoint>,
    /// Completed checkpoints managed by retention, oldest first.
    retained: VecDeque<Retained>,
    /// Failures since the last completion (against `tolerable_failures`).
    consecutive_failures: u32,
    /// When the last checkpoint completed (for `min_pause_ms`).
    last_completion_ms: Option<u64>,
    /// Why no checkpoint may be triggered (tasks finishing, restarting).
    stopped: Option<String>,
    /// Checkpoints completed since the tracker was made.
    pub completed_count: u64,
    /// Checkpoints failed (declined, expired, not published) since.
    pub failed_count: u64,
}

impl CheckpointTracker {
    /// `first_id`: the first id to hand out (above every id used before);
    /// `retained`: the completed checkpoints to manage by retention, oldest
    /// first.
    pub fn new(config: CheckpointConfig, first_id: CheckpointId, retained: Vec<Retained>) -> Self {
        Self {
            config,
            next_id: first_id,
            last_id: None,
            pending: BTreeMap::new(),
            retained: retained.into(),
            consecutive_failures: 0,
            last_completion_ms: None,
            stopped: None,
            completed_count: 0,
            failed_count: 0,
        }
    }

    pub fn config(&self) -> &CheckpointConfig {
        &self.config
    }

    pub fn pending(&self) -> impl Iterator<Item = &PendingCheckpoint> {
        self.pending.values()
    }

    pub fn retained(&self) -> impl Iterator<Item = &Retained> {
        self.retained.iter()
    }

    pub fn latest_retained(&self) -> Option<Retained> {
        self.retained.back().copied()
    }

    /// Ids up to `last` (inclusive) may be handed out; ids below the next
    /// one are skipped if the range starts higher.
    pub fn grant_ids(&mut self, first: CheckpointId, last: CheckpointId) {
        self.next_id = self.next_id.max(first);
        self.last_id = Some(last);
    }

    /// The last id that may be handed out (`None`: no limit).
    pub fn last_granted(&self) -> Option<CheckpointId> {
        self.last_id
    }

    /// Ids left before the tracker needs [`Self::grant_ids`] (`u64::MAX`
    /// without a limit).
    pub fn ids_left(&self) -> u64 {
        self.last_id
            .map_or(u64::MAX, |l| (l.0 + 1).saturating_sub(self.next_id.0))
    }

    /// Whether a periodic (`periodic = true`) or manual trigger may start now.
    pub fn check_trigger(&self, now_ms: u64, periodic: bool) -> Result<(), TriggerRefusal> {
        if let Some(why) = &self.stopped {
            return Err(TriggerRefusal::NotRunning(why.clone()));
        }
        if self.ids_left() == 0 {
            return Err(TriggerRefusal::NoIds);
        }
        if self.pending.len() >= self.config.max_concurrent as usize {
            return Err(TriggerRefusal::TooManyConcurrent(self.pending.len()));
        }
        if periodic {
            if let Some(last) = self.last_completion_ms {
                if now_ms.saturating_sub(last) < self.config.min_pause_ms {
                    return Err(TriggerRefusal::MinPause);
                }
            }
        }
        Ok(())
    }

    /// Starts a checkpoint that `tasks` must acknowledge.
    pub fn trigger(
        &mut self,
        now_ms: u64,
        periodic: bool,
        checkpoint_type: CheckpointType,
        tasks: &[TaskId],
    ) -> Result<CheckpointId, TriggerRefusal> {
        self.check_trigger(now_ms, periodic)?;
        let id = self.next_id;
        self.next_id = id.next();
        self.pending.insert(
            id,
            PendingCheckpoint {
                id,
                checkpoint_type,
                trigger_timestamp: now_ms,
                expected: tasks.iter().cloned().collect(),
                acks: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    /// Records a task's acknowledgement.
    pub fn ack(&mut self, id: CheckpointId, state: SubtaskState) -> AckOutcome {
        let Some(p) = self.pending.get_mut(&id) else {
            return AckOutcome::Stale(Box::new(state));
        };
        if !p.expected.contains(&state.task) {
            return AckOutcome::Ignored(format!(
                "task {} is not part of checkpoint {id}",
                state.task
            ));
        }
        if p.acks.contains_key(&state.task) {
            return AckOutcome::Ignored(format!(
                "task {} already acknowledged checkpoint {id}",
                state.task
            ));
        }
        p.acks.insert(state.task.clone(), state);
        if p.acks.len() == p.expected.len() {
            let p = self.pending.remove(&id).expect("present");
            AckOutcome::AllAcked(Box::new(p))
        } else {
            AckOutcome::Pending
        }
    }

    /// Fails a pending checkpoint; `None` if it is not pending.
    pub fn abort(&mut self, id: CheckpointId, reason: AbortReason) -> Option<Abort> {
        let p = self.pending.remove(&id)?;
        Some(self.failed(p, reason))
    }

    /// The metadata write of an all-acked checkpoint failed.
    pub fn publish_failed(&mut self, p: PendingCheckpoint, error: String) -> Abort {
        self.failed(p, AbortReason::MetadataWriteFailed(error))
    }

    fn failed(&mut self, p: PendingCheckpoint, reason: AbortReason) -> Abort {
        let id = p.id;
        let files = p
            .acks
            .into_values()
            .flat_map(|s| s.files.into_iter().chain(s.channel_state))
            .collect();
        let mut fail_job = false;
        if reason.counts_as_failure() {
            self.failed_count += 1;
            self.consecutive_failures += 1;
            fail_job = self.consecutive_failures > self.config.tolerable_failures;
        }
        Abort {
            id,
            reason,
            fail_job,
            files,
        }
    }

    /// Whether `id` was ever handed out by this tracker (or lies below).
    pub fn was_triggered(&self, id: CheckpointId) -> bool {
        id < self.next_id
    }

    /// `None` if `id` is not pending; else whether `task` still owes an ack.
    pub fn expects(&self, id: CheckpointId, task: &TaskId) -> Option<bool> {
        let p = self.pending.get(&id)?;
        Some(p.expected.contains(task) && !p.acks.contains_key(task))
    }

    pub fn lowest_pending(&self) -> Option<CheckpointId> {
        self.pending.keys().next().copied()
    }

    pub fn highest_pending(&self) -> Option<CheckpointId> {
        self.pending.keys().next_back().copied()
    }

    pub fn is_retained(&self, id: CheckpointId) -> bool {
        self.retained.iter().any(|r| r.id == id)
    }

    /// Shared files referenced by acks of pending checkpoints.
    pub fn pending_files(&self) -> impl Iterator<Item = &StateFile> {
        self.pending
            .values()
            .flat_map(|p| p.acks.values())
            .flat_map(|s| &s.files)
    }

    /// Pending checkpoints older than the timeout, aborted.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Abort> {
        let timeout = self.config.timeout_ms;
        let expired: Vec<_> = self
            .pending
            .values()
            .filter(|p| now_ms.saturating_sub(p.trigger_timestamp) >= timeout)
            .map(|p| p.id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.abort(id, AbortReason::Expired))
            .collect()
    }

    /// The metadata of `id` is written: retain it, apply retention.
    pub fn completed(&mut self, id: CheckpointId, now_ms: u64) -> Completion {
        self.completed_count += 1;
        self.consecutive_failures = 0;
        self.last_completion_ms = Some(now_ms);
        self.retained.push_back(Retained {
            id,
            complete_timestamp: now_ms,
        });
        let mut out = Completion::default();
        while self.retained.len() > self.config.retention as usize {
            out.subsumed
                .push(self.retained.pop_front().expect("non-empty").id);
        }
        let older: Vec<_> = self.pending.range(..id).map(|(k, _)| *k).collect();
        for old in older {
            out.aborted.extend(self.abort(old, AbortReason::Subsumed));
        }
        out
    }

    /// Forgets a retained checkpoint (deleted by a user). False if unknown.
    pub fn remove_retained(&mut self, id: CheckpointId) -> bool {
        let before = self.retained.len();
        self.retained.retain(|r| r.id != id);
        before != self.retained.len()
    }

    /// A task finished its input: no new checkpoints; pending ones it has not
    /// acknowledged can never complete and are returned, aborted.
    pub fn task_finished(&mut self, task: &TaskId) -> Vec<Abort> {
        self.stopped = Some("tasks are finishing".into());
        let stuck: Vec<_> = self
            .pending
            .values()
            .filter(|p| p.expected.contains(task) && !p.acks.contains_key(task))
            .map(|p| p.id)
            .collect();
        stuck
            .into_iter()
            .filter_map(|id| self.abort(id, AbortReason::JobFinishing))
            .collect()
    }

    /// Stops triggering and aborts everything pending (job failing/ending).
    pub fn abort_all(&mut self, reason: AbortReason) -> Vec<Abort> {
        let ids: Vec<_> = self.pending.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.abort(id, reason.clone()))
            .collect()
    }

    /// Allows triggering again (a new execution started).
    pub fn resume(&mut self) {
        self.stopped = None;
        self.consecutive_failures = 0;
    }

    /// Stops triggering with a reason.
    pub fn stop(&mut self, why: &str) {
        self.stopped = Some(why.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutpoint_core::OperatorId;

    fn tasks() -> Vec<TaskId> {
        let s = OperatorId::new("source").unwrap();
        let a = OperatorId::new("agg").unwrap();
        vec![TaskId::new(&s, 0), TaskId::new(&a, 0)]
    }

    fn ack(task: &TaskId) -> SubtaskState {
        SubtaskState::empty(task.clone())
    }

    fn config() -> CheckpointConfig {
        CheckpointConfig {
            retention: 2,
            tolerable_failures: 1,
            timeout_ms: 100,
            min_pause_ms: 50,
            ..Default::default()
        }
    }

    #[test]
    fn ids_continue_above_storage_and_complete_after_all_acks() {
        let t = tasks();
        let mut tr = CheckpointTracker::new(config(), CheckpointId(8), vec![]);
        let id = tr.trigger(0, true, CheckpointType::Full, &t).unwrap();
        assert_eq!(id, CheckpointId(8));
        assert_eq!(tr.ack(id, ack(&t[0])), AckOutcome::Pending);
        assert!(matches!(tr.ack(id, ack(&t[0])), AckOutcome::Ignored(_)));
        assert!(matches!(tr.ack(id, ack(&t[1])), AckOutcome::AllAcked(_)));
        assert!(matches!(tr.ack(id, ack(&t[1])), AckOutcome::Stale(_)));
    }

    #[test]
    fn concurrency_and_min_pause_limit_triggers() {
        let t = tasks();
        let mut tr = CheckpointTracker::new(config(), CheckpointId(1), vec![]);
        let id = tr.trigger(0, true, CheckpointType::Full, &t).unwrap();
        assert_eq!(
            tr.trigger(1, false, CheckpointType::Full, &t),
            Err(TriggerRefusal::TooManyConcurrent(1))
        );
        tr.ack(id, ack(&t[0]));
        tr.ack(id, ack(&t[1]));
        tr.completed(id, 10);
        assert_eq!(tr.check_trigger(20, true), Err(TriggerRefusal::MinPause));
        assert_eq!(tr.check_trigger(20, false), Ok(()));
        assert_eq!(tr.check_trigger(60, true), Ok(()));
    }

    #[test]
    fn retention_subsumes_oldest() {
        let t = tasks();
        let mut tr = CheckpointTracker::new(config(), CheckpointId(1), vec![]);
        let mut subsumed = vec![];
        for i in 0..4 {
            let id = tr
                .trigger(i * 100, false, CheckpointType::Full, &t)
                .unwrap();
            tr.ack(id, ack(&t[0]));
            tr.ack(id, ack(&t[1]));
            subsumed.extend(tr.completed(id, i * 100 + 1).subsumed);
        }
        assert_eq!(subsumed, vec![CheckpointId(1), CheckpointId(2)]);
        let kept: Vec<_> = tr.retained().map(|r| r.id.0).collect();
        assert_eq!(kept, vec![3, 4]);
    }

    #[test]
    fn failures_beyond_tolerable_fail_the_job() {
        let t = tasks();
        let mut tr = CheckpointTracker::new(config(), CheckpointId(1), vec![]);
        let a = tr.trigger(0, false, CheckpointType::Full, &t).unwrap();
        let d = tr
            .abort(
                a,
                AbortReason::Declined {
                    task: t[1].clone(),
                    reason: "x".into(),
                },
            )
            .unwrap();
        assert!(!d.fail_job);
        let b = tr.trigger(10, false, CheckpointType::Full, &t).unwrap();
        assert!(tr.expire(50).is_empty());
        let e = tr.expire(110);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].id, b);
        assert!(
            e[0].fail_job,
            "second consecutive failure exceeds tolerable=1"
        );
        assert_eq!(tr.failed_count, 2);
        // Aborts that are not the checkpoint's fault do not count.
        let c = tr.trigger(200, false, CheckpointType::Full, &t).unwrap();
        let f = tr.abort(c, AbortReason::JobFinishing).unwrap();
        assert!(!f.reason.counts_as_failure());
        assert_eq!(tr.failed_count, 2);
    }

    #[test]
    fn finished_task_aborts_what_it_cannot_ack_and_stops_triggers() {
        let t = tasks();
        let mut tr = CheckpointTracker::new(
            CheckpointConfig {
                max_concurrent: 2,
                ..config()
            },
            CheckpointId(1),
            vec![],
        );
        let a = tr.trigger(0, false, CheckpointType::Full, &t).unwrap();
        let b = tr.trigger(0, false, CheckpointType::Full, &t).unwrap();
        tr.ack(a, ack(&t[0]));
        let aborted = tr.task_finished(&t[0]);
        assert_eq!(aborted.iter().map(|x| x.id).collect::<Vec<_>>(), vec![b]);
        assert!(matches!(
            tr.check_trigger(0, false),
            Err(TriggerRefusal::NotRunning(_))
        ));
        assert!(matches!(tr.ack(a, ack(&t[1])), AckOutcome::AllAcked(_)));
    }

    #[test]
    fn completion_aborts_older_pending() {
        let t = tasks();
        let mut tr = CheckpointTracker::new(
            CheckpointConfig {
                max_concurrent: 2,
                ..config()
            },
            CheckpointId(1),
            vec![],
        );
        let a = tr.trigger(0, false, CheckpointType::Full, &t).unwrap();
        let b = tr.trigger(0, false, CheckpointType::Full, &t).unwrap();
        tr.ack(b, ack(&t[0]));
        tr.ack(b, ack(&t[1]));
        let c = tr.completed(b, 5);
        assert_eq!(c.aborted.iter().map(|x| x.id).collect::<Vec<_>>(), vec![a]);
        assert_eq!(tr.pending().count(), 0);
    }

    #[test]
    fn ids_come_from_the_lease_and_never_repeat() {
        let t = tasks();
        let mut tr = CheckpointTracker::new(config(), CheckpointId(5), vec![]);
        tr.grant_ids(CheckpointId(5), CheckpointId(6));
        assert_eq!(tr.ids_left(), 2);
        let a = tr.trigger(0, false, CheckpointType::Full, &t).unwrap();
        tr.abort(a, AbortReason::Expired);
        let b = tr.trigger(0, false, CheckpointType::Full, &t).unwrap();
        assert_eq!((a, b), (CheckpointId(5), CheckpointId(6)));
        tr.abort(b, AbortReason::Expired);
        assert_eq!(
            tr.trigger(0, false, CheckpointType::Full, &t),
            Err(TriggerRefusal::NoIds)
        );
        // A new lease may start higher; never lower.
        tr.grant_ids(CheckpointId(3), CheckpointId(20));
        assert_eq!(
            tr.trigger(0, false, CheckpointType::Full, &t),
            Ok(CheckpointId(7))
        );
        tr.grant_ids(CheckpointId(1001), CheckpointId(2000));
        let c = tr.next_id;
        assert_eq!(c, CheckpointId(1001));
    }
}
