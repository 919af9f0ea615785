//! Checkpoint statistics of a running job, in Flink's shape and field names
//! (`/jobs/:id/checkpoints`): counts, latest completed/failed/restored, and a
//! bounded history, newest first. Updated by the job's event loop; read by
//! the API through [`crate::JobControl::stats`].

use std::collections::VecDeque;

use cutpoint_core::{CheckpointId, CheckpointType, SubtaskState};
use serde::Serialize;

/// Checkpoints kept in the history.
pub const HISTORY_LEN: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckpointStatus {
    InProgress,
    Completed,
    Failed,
}

/// One checkpoint's statistics (Flink's names where Flink has the field).
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointStats {
    pub id: CheckpointId,
    pub status: CheckpointStatus,
    pub checkpoint_type: CheckpointType,
    pub trigger_timestamp: u64,
    pub latest_ack_timestamp: Option<u64>,
    /// Trigger to completion (or failure, or now while in progress), ms.
    pub end_to_end_duration: u64,
    pub state_size: u64,
    pub checkpointed_size: u64,
    /// Bytes of in-flight data persisted as channel state (unaligned).
    pub persisted_data: u64,
    /// Some subtask took it unaligned (unaligned mode, or an alignment
    /// that ran past `aligned_checkpoint_timeout_ms`).
    pub unaligned: bool,
    pub alignment_duration: u64,
    pub sync_duration: u64,
    pub async_duration: u64,
    pub num_subtasks: usize,
    pub num_acknowledged_subtasks: usize,
    pub failure_message: Option<String>,
    pub failure_timestamp: Option<u64>,
    pub external_path: Option<String>,
    /// Completed and still retained in storage.
    pub restorable: bool,
    /// Acknowledgements received so far, per subtask.
    pub tasks: Vec<SubtaskState>,
}

/// The checkpoint a job (attempt) restored from.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredStats {
    pub id: CheckpointId,
    pub restore_timestamp: u64,
    pub external_path: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub restored: u64,
    pub total: u64,
    pub in_progress: u64,
    pub completed: u64,
    pub failed: u64,
}

/// All statistics of one job.
#[derive(Debug, Clone, Default)]
pub struct StatsBook {
    pub counts: Counts,
    /// Oldest first; at most [`HISTORY_LEN`].
    pub history: VecDeque<CheckpointStats>,
    pub latest_completed: Option<CheckpointStats>,
    pub latest_failed: Option<CheckpointStats>,
    pub latest_restored: Option<RestoredStats>,
}

impl StatsBook {
    pub fn get(&self, id: CheckpointId) -> Option<&CheckpointStats> {
        self.history.iter().rev().find(|c| c.id == id)
    }

    fn get_mut(&mut self, id: CheckpointId) -> Option<&mut CheckpointStats> {
        self.history.iter_mut().rev().find(|c| c.id == id)
    }

    pub(crate) fn triggered(
        &mut self,
        id: CheckpointId,
        t: CheckpointType,
        now: u64,
        num_subtasks: usize,
    ) {
        self.counts.total += 1;
        self.counts.in_progress += 1;
        self.history.push_back(CheckpointStats {
            id,
            status: CheckpointStatus::InProgress,
            checkpoint_type: t,
            trigger_timestamp: now,
            latest_ack_timestamp: None,
            end_to_end_duration: 0,
            state_size: 0,
            checkpointed_size: 0,
            persisted_data: 0,
            unaligned: false,
            alignment_duration: 0,
            sync_duration: 0,
            async_duration: 0,
            num_subtasks,
            num_acknowledged_subtasks: 0,
            failure_message: None,
            failure_timestamp: None,
            external_path: None,
            restorable: false,
            tasks: Vec::new(),
        });
        while self.history.len() > HISTORY_LEN {
            self.history.pop_front();
        }
    }

    pub(crate) fn acked(&mut self, id: CheckpointId, s: &SubtaskState) {
        if let Some(c) = self.get_mut(id) {
            c.num_acknowledged_subtasks += 1;
            c.latest_ack_timestamp = Some(c.latest_ack_timestamp.unwrap_or(0).max(s.ack_timestamp));
            c.state_size += s.state_size;
            c.checkpointed_size += s.checkpointed_size;
            c.persisted_data += s.persisted_data_size;
            c.unaligned |= s.unaligned;
            c.alignment_duration = c.alignment_duration.max(s.alignment_duration_ms);
            c.sync_duration = c.sync_duration.max(s.sync_duration_ms);
            c.async_duration = c.async_duration.max(s.async_duration_ms);
            c.end_to_end_duration = s.ack_timestamp.saturating_sub(c.trigger_timestamp);
            c.tasks.push(s.clone());
        }
    }

    pub(crate) fn completed(&mut self, id: CheckpointId, now: u64, external_path: String) {
        self.counts.in_progress = self.counts.in_progress.saturating_sub(1);
        self.counts.completed += 1;
        if let Some(c) = self.get_mut(id) {
            c.status = CheckpointStatus::Completed;
            c.end_to_end_duration = now.saturating_sub(c.trigger_timestamp);
            c.external_path = Some(external_path);
            c.restorable = true;
            let c = c.clone();
            self.latest_completed = Some(c);
        }
    }

    pub(crate) fn failed(&mut self, id: CheckpointId, now: u64, message: String) {
        self.counts.in_progress = self.counts.in_progress.saturating_sub(1);
        self.counts.failed += 1;
        if let Some(c) = self.get_mut(id) {
            c.status = CheckpointStatus::Failed;
            c.end_to_end_duration = now.saturating_sub(c.trigger_timestamp);
            c.failure_message = Some(message);
            c.failure_timestamp = Some(now);
            let c = c.clone();
            self.latest_failed = Some(c);
        }
    }

    /// The checkpoint was deleted (subsumed or by a user).
    pub(crate) fn discarded(&mut self, id: CheckpointId) {
        if let Some(c) = self.get_mut(id) {
            c.restorable = false;
        }
        if let Some(c) = self.latest_completed.as_mut().filter(|c| c.id == id) {
            c.restorable = false;
        }
    }

    pub(crate) fn restored(&mut self, id: CheckpointId, now: u64, external_path: String) {
        self.counts.restored += 1;
        self.latest_restored = Some(RestoredStats {
            id,
            restore_timestamp: now,
            external_path,
        });
    }

    /// Durations of completed checkpoints etc., for summaries.
    pub fn completed_entries(&self) -> impl Iterator<Item = &CheckpointStats> {
        self.history
            .iter()
            .filter(|c| c.status == CheckpointStatus::Completed)
    }
}
