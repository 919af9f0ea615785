//! The snapshot worker: one thread per keyed subtask that runs the
//! asynchronous phase of each snapshot in checkpoint order.
//!
//! For barrier `n` it writes the frozen delta into RocksDB (always — later
//! checkpoints build on it even if `n` is aborted), takes a RocksDB
//! checkpoint, uploads it unless `n` was aborted, and acks or declines.
//! It owns the subtask's RocksDB instance; the task thread never touches it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use cutpoint_core::{
    now_millis, CheckpointId, JobId, KeyGroupRange, StateFile, SubtaskState, TaskId,
};
use cutpoint_state::channel::upload_channel_state;
use cutpoint_state::snapshot::{
    shared_files, upload_snapshot, ConfirmedFiles, SnapshotTarget, UploadedSnapshot,
};
use cutpoint_state::{FrozenDelta, RocksStore, StateError};
use tokio_util::sync::CancellationToken;

use crate::context::TaskContext;
use crate::keyed::Delta;
use crate::{Barrier, TaskEvent};

/// Work handed from the task thread (synchronous phase) to the worker.
pub(crate) struct SnapshotJob {
    pub barrier: Barrier,
    pub delta: Delta,
    pub sync_duration: Duration,
    pub alignment_duration: Duration,
    pub records_beyond_barrier: u64,
    pub pending_transactions: Vec<cutpoint_core::metadata::PendingTransaction>,
    /// Unaligned: the records in flight before the barrier, to persist.
    pub channel_state: Option<Vec<(u32, cutpoint_core::Record)>>,
    /// Event time: the task's watermark (and floors) at the snapshot.
    pub time: crate::time::KeptTime,
}

/// What a task hands its snapshot worker.
pub(crate) enum WorkerJob {
    /// Write the delta, take a RocksDB checkpoint, upload, acknowledge.
    Snapshot(SnapshotJob),
    /// Memory budget: write dirty entries behind (no checkpoint), so they
    /// can be evicted from the table once written.
    Spill(crate::keyed::Delta),
}

pub(crate) struct Worker {
    pub ctx: Arc<TaskContext>,
    pub task: TaskId,
    pub range: KeyGroupRange,
    pub store: RocksStore,
    pub job: JobId,
    /// Shared files of `confirmed_from`, reusable by the next snapshot.
    pub confirmed: ConfirmedFiles,
    /// The completed checkpoint `confirmed` belongs to.
    pub confirmed_from: Option<CheckpointId>,
    /// Files of the newest snapshots acked (at most `max_concurrent`: only
    /// those can still complete and become a base).
    pub pending: BTreeMap<CheckpointId, Vec<StateFile>>,
    /// Local scratch space (channel state files before upload).
    pub scratch: std::path::PathBuf,
    /// Deltas written to RocksDB so far (snapshots and spills): the task
    /// evicts clean entries only when this equals the deltas it handed over.
    pub applied: Arc<std::sync::atomic::AtomicU64>,
    /// The form of the state, recorded with every snapshot.
    pub schema: cutpoint_core::metadata::StateSchema,
}

impl Worker {
    /// Runs until the task drops its sender (after finishing queued jobs)
    /// or the execution is cancelled. An error here means local state is
    /// broken (RocksDB write failed): the task must fail.
    /// Returns the RocksDB instance when the task is done with it.
    pub(crate) fn run(mut self, rx: Receiver<WorkerJob>) -> Result<RocksStore, StateError> {
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(job) => {
                    let done = match job {
                        WorkerJob::Snapshot(job) => self.snapshot(job),
                        WorkerJob::Spill(delta) => self.spill(delta).map(|_| {
                            self.applied
                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }),
                    };
                    if let Err(e) = done {
                        // Reported here, with the error; the task then
                        // stops as cancelled.
                        let _ = self.ctx.events.send(TaskEvent::Failed {
                            task: self.task.clone(),
                            error: crate::events::TaskFailure::Worker(e),
                            kind: crate::FailureKind::Transient,
                        });
                        return Err(StateError::Cancelled);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.ctx.cancel.is_cancelled() {
                        return Ok(self.store);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(self.store),
            }
        }
    }

    /// Makes `confirmed` the shared files of `base`, the completed
    /// checkpoint the barrier says this snapshot may build on: its own
    /// earlier snapshot, or the restored one. A base this worker has no
    /// files of (or none) means nothing is reused. Snapshots up to `base`
    /// can never be a base again.
    fn use_base(&mut self, base: Option<CheckpointId>) {
        if base != self.confirmed_from {
            match base.and_then(|b| self.pending.remove(&b)) {
                Some(files) => self.confirmed = shared_files(&files),
                None => self.confirmed.clear(),
            }
            self.confirmed_from = base;
        }
        if let Some(b) = base {
            self.pending.retain(|k, _| *k > b);
        }
    }

    /// Remembers the files of an acked snapshot. A base is the newest
    /// checkpoint completed before a trigger; at most `max_concurrent` are
    /// in flight, so older entries (aborted, or completed and subsumed)
    /// can go.
    fn remember(&mut self, id: CheckpointId, files: Vec<StateFile>) {
        self.pending.insert(id, files);
        let keep = self.ctx.spec.checkpoint.max_concurrent.max(1) as usize;
        while self.pending.len() > keep {
            self.pending.pop_first();
        }
    }

    /// Writes a delta behind between snapshots (a memory budget).
    fn spill(&mut self, delta: Delta) -> Result<usize, StateError> {
        match delta {
            Delta::Counts(d) => self.store.apply(d),
            Delta::Typed(d) => self.store.apply_entries(&d),
        }
    }

    fn snapshot(&mut self, mut job: SnapshotJob) -> Result<(), StateError> {
        let started = Instant::now();
        let id = job.barrier.id;
        self.use_base(job.barrier.reuse);
        let token = self.ctx.aborts.token(id);
        let entries = job.delta.len();
        match std::mem::replace(&mut job.delta, Delta::Counts(FrozenDelta::default())) {
            Delta::Counts(d) => self.store.apply(d)?,
            Delta::Typed(d) => self.store.apply_entries(&d)?,
        };
        self.applied
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let applied = started.elapsed();
        if token.is_cancelled() {
            return Ok(());
        }
        let dir = self
            .store
            .checkpoint(&cutpoint_core::layout::checkpoint_dir(id))?;
        let checkpointed = started.elapsed();
        let uploaded = self.upload(&dir, &job, &token);
        let _ = std::fs::remove_dir_all(&dir);
        tracing::debug!(
            task = %self.task,
            checkpoint = %id,
            entries,
            apply_ms = applied.as_millis() as u64,
            rocksdb_checkpoint_ms = (checkpointed - applied).as_millis() as u64,
            upload_ms = (started.elapsed() - checkpointed).as_millis() as u64,
            "asynchronous phase"
        );
        let event = match uploaded {
            Ok((up, channel)) => {
                self.remember(id, up.files.clone());
                self.ack(job, up, channel, started)
            }
            Err(StateError::Cancelled) => return Ok(()),
            Err(e) => TaskEvent::Decline {
                checkpoint: id,
                task: self.task.clone(),
                reason: e,
            },
        };
        let _ = self.ctx.events.send(event);
        Ok(())
    }

    /// Uploads the RocksDB checkpoint in `dir` and, unaligned, the records
    /// in flight; if the latter fails, the state files just uploaded are
    /// deleted (no ack will name them), so a failed snapshot leaves
    /// nothing.
    fn upload(
        &self,
        dir: &Path,
        job: &SnapshotJob,
        token: &CancellationToken,
    ) -> Result<(UploadedSnapshot, Option<StateFile>), StateError> {
        let target = SnapshotTarget {
            storage: &self.ctx.storage,
            job: &self.job,
            operator: &self.task.operator,
            subtask: self.task.subtask,
            checkpoint: job.barrier.id,
        };
        let kind = job.barrier.checkpoint_type;
        let up =
            (self.ctx.rt).block_on(upload_snapshot(&target, dir, kind, &self.confirmed, token))?;
        let records = job.channel_state.as_deref().unwrap_or(&[]);
        let scratch = &self.scratch;
        match upload_channel_state(&self.ctx.rt, &target, records, scratch, token) {
            Ok(channel) => Ok((up, channel)),
            Err(e) => {
                let storage = &self.ctx.storage;
                let _ = (self.ctx.rt)
                    .block_on(storage.delete_state_files(&self.job, &up.uploaded_paths));
                Err(e)
            }
        }
    }

    /// The acknowledgement of a snapshot uploaded.
    fn ack(
        &self,
        job: SnapshotJob,
        up: UploadedSnapshot,
        channel: Option<StateFile>,
        started: Instant,
    ) -> TaskEvent {
        TaskEvent::Ack {
            checkpoint: job.barrier.id,
            state: Box::new(SubtaskState {
                key_group_range: Some(self.range),
                state_size: up.state_size(),
                checkpointed_size: up.uploaded_bytes,
                files_uploaded: up.uploaded_files,
                files_reused: up.reused_files,
                files: up.files,
                sync_duration_ms: job.sync_duration.as_millis() as u64,
                async_duration_ms: started.elapsed().as_millis() as u64,
                alignment_duration_ms: job.alignment_duration.as_millis() as u64,
                records_beyond_barrier: job.records_beyond_barrier,
                pending_transactions: job.pending_transactions,
                persisted_data_size: channel.as_ref().map_or(0, |f| f.size),
                channel_state: channel.into_iter().collect(),
                unaligned: job.channel_state.is_some(),
                schema: Some(self.schema.clone()),
                watermark: job.time.watermark,
                watermark_floors: job.time.floors,
                processing_time_ms: job.time.processing,
                ack_timestamp: now_millis(),
                ..SubtaskState::empty(self.task.clone())
            }),
        }
    }
}
