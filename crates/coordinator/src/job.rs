//! Running one job: the coordinator's event loop (the imperative shell
//! around [`CheckpointTracker`]) and the restart strategy.
//!
//! Order of effects for checkpoint `n`:
//! 1. trigger: the tracker assigns `n`; every source injects barrier `n`;
//! 2. acks arrive (sources: offsets; aggregates: uploaded files);
//! 3. all acked: write `chk-n/_metadata` create-only — the commit point;
//! 4. notify the execution, then delete what retention subsumed (metadata
//!    first) and any checkpoint folder left without metadata below `n`.
//!
//! A declined or expired checkpoint is aborted: its uploads are cancelled
//! and its folder deleted. When a task fails, the execution is cancelled and
//! joined *before* the pending checkpoints' folders are deleted, so no late
//! upload can land after the delete; then the job restarts from the newest
//! retained checkpoint (fixed delay, bounded attempts).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutpoint_core::{
    now_millis, CheckpointId, CheckpointMetadata, CheckpointType, JobSpec, TaskId, METADATA_VERSION,
};
use cutpoint_runtime::{Barrier, Execution, ExecutionConfig, RuntimeError, TaskEvent};
use cutpoint_state::StateTable;
use cutpoint_storage::CheckpointStorage;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::registry::SharedRegistry;
use crate::restore::{self, RestoreFrom};
use crate::sweep::{orphans, SweepFacts};
use crate::tracker::{
    Abort, AbortReason, AckOutcome, CheckpointTracker, PendingCheckpoint, Retained, TriggerRefusal,
};
use crate::JobError;

/// How to run a job.
pub struct JobConfig {
    pub spec: JobSpec,
    pub storage: CheckpointStorage,
    /// Restore from storage before starting (`None`: start fresh).
    pub restore_from: Option<RestoreFrom>,
    /// Local working directory (RocksDB instances); created if missing.
    pub local_dir: PathBuf,
}

/// Lifecycle state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    #[default]
    Created,
    Running,
    Restarting,
    Finished,
    Failed,
    Cancelled,
}

/// A snapshot of a running job, for callers polling it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobStatus {
    pub state: JobState,
    pub attempt: u32,
    pub checkpoints_completed: u64,
    pub checkpoints_failed: u64,
    pub latest_completed: Option<CheckpointId>,
    pub last_checkpoint_failure: Option<String>,
    pub restored_from: Vec<CheckpointId>,
    pub last_failure: Option<String>,
}

/// The result of a job that ran to the end of its input.
#[derive(Debug)]
pub struct JobOutcome {
    /// Final keyed state, one table per aggregate subtask.
    pub final_state: Vec<StateTable>,
    /// Records the sources read in the last attempt (after its restore).
    pub records_read: u64,
    pub checkpoints_completed: u64,
    pub checkpoints_failed: u64,
    pub restarts: u32,
    /// Checkpoint each attempt restored from, in order.
    pub restored_from: Vec<CheckpointId>,
    /// Per restart: failure detected -> every task restored and running.
    pub restore_ms: Vec<u64>,
    pub failures: Vec<String>,
    pub duration: Duration,
}

enum Command {
    Trigger {
        checkpoint_type: CheckpointType,
        reply: oneshot::Sender<Result<CheckpointId, TriggerRefusal>>,
    },
}

/// Handle to a job running on the tokio runtime.
pub struct JobHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<JobStatus>,
    cancel: CancellationToken,
    join: tokio::task::JoinHandle<Result<JobOutcome, JobError>>,
}

impl JobHandle {
    /// Triggers a checkpoint now; returns its id.
    pub async fn trigger_checkpoint(
        &self,
        checkpoint_type: CheckpointType,
    ) -> Result<CheckpointId, TriggerRefusal> {
        let (reply, rx) = oneshot::channel();
        let gone = || TriggerRefusal::NotRunning("job ended".into());
        self.commands
            .send(Command::Trigger {
                checkpoint_type,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub fn status(&self) -> JobStatus {
        self.status.borrow().clone()
    }

    /// Waits until `pred` holds for the status (or the job ends).
    pub async fn wait_for(&mut self, pred: impl Fn(&JobStatus) -> bool) -> JobStatus {
        if let Ok(s) = self.status.wait_for(|s| pred(s)).await {
            return s.clone();
        }
        self.status.borrow().clone()
    }

    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels the job (e.g. from a signal handler).
    pub fn canceller(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub async fn join(self) -> Result<JobOutcome, JobError> {
        self.join
            .await
            .map_err(|e| JobError::Internal(format!("job task panicked: {e}")))?
    }
}

/// Starts a job on the current tokio runtime.
pub fn spawn_job(cfg: JobConfig) -> JobHandle {
    let (commands, command_rx) = mpsc::channel(16);
    let (status_tx, status) = watch::channel(JobStatus::default());
    let cancel = CancellationToken::new();
    let runner = Runner {
        registry: SharedRegistry::new(),
        spec: Arc::new(cfg.spec),
        storage: cfg.storage,
        local_dir: cfg.local_dir,
        commands: command_rx,
        status: status_tx,
        cancel: cancel.clone(),
    };
    let join = tokio::spawn(runner.run(cfg.restore_from));
    JobHandle {
        commands,
        status,
        cancel,
        join,
    }
}

struct Runner {
    registry: SharedRegistry,
    spec: Arc<JobSpec>,
    storage: CheckpointStorage,
    local_dir: PathBuf,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<JobStatus>,
    cancel: CancellationToken,
}

/// How one attempt ended.
enum AttemptEnd {
    Finished(Vec<StateTable>),
    Failed {
        error: String,
        fatal: bool,
        at: Instant,
    },
    Cancelled,
}

/// Per-attempt bookkeeping of the event loop.
struct Attempt {
    /// Local working directory of this attempt.
    dir: PathBuf,
    exec: Option<Execution>,
    tasks: Vec<TaskId>,
    started: usize,
    finished: usize,
    tables: Vec<StateTable>,
    failure_at: Option<Instant>,
}

impl Runner {
    async fn run(mut self, restore_from: Option<RestoreFrom>) -> Result<JobOutcome, JobError> {
        let result = self.run_inner(restore_from).await;
        self.status.send_modify(|s| {
            s.state = match &result {
                Ok(_) => JobState::Finished,
                Err(JobError::Cancelled) => JobState::Cancelled,
                Err(e) => {
                    s.last_failure = Some(e.to_string());
                    JobState::Failed
                }
            }
        });
        result
    }

    async fn run_inner(
        &mut self,
        restore_from: Option<RestoreFrom>,
    ) -> Result<JobOutcome, JobError> {
        let job = self.spec.job_id.clone();
        let started = Instant::now();
        self.storage.write_job_spec(&self.spec).await?;
        let mut restore = match restore_from {
            Some(from) => Some(Arc::new(restore::resolve(&self.storage, &job, from).await?)),
            None => None,
        };
        let existing_max = self.storage.checkpoint_dirs(&job).await?.last().copied();
        // Every completed checkpoint in storage is retained (oldest first);
        // the registry counts the shared files they reference.
        let mut retained = Vec::new();
        for l in self.storage.list_checkpoints(&job).await?.into_iter().rev() {
            match l.metadata {
                Ok(m) => {
                    self.registry.register(&m);
                    retained.push(Retained {
                        id: m.checkpoint_id,
                        complete_timestamp: m.complete_timestamp,
                    });
                }
                Err(e) => {
                    tracing::warn!(checkpoint = %l.checkpoint_id, error = %e, "unusable checkpoint in storage")
                }
            }
        }
        let mut tracker =
            CheckpointTracker::new(self.spec.checkpoint.clone(), existing_max, retained);
        self.sweep_orphans(&tracker).await;

        let mut outcome = JobOutcome {
            final_state: Vec::new(),
            records_read: 0,
            checkpoints_completed: 0,
            checkpoints_failed: 0,
            restarts: 0,
            restored_from: Vec::new(),
            restore_ms: Vec::new(),
            failures: Vec::new(),
            duration: Duration::ZERO,
        };
        let mut attempt_no = 0u32;
        let mut failure_at: Option<Instant> = None;
        loop {
            if let Some(meta) = &restore {
                outcome.restored_from.push(meta.checkpoint_id);
                tracing::info!(job = %job, checkpoint = %meta.checkpoint_id, attempt = attempt_no, "restoring");
            }
            let (events_tx, events) = mpsc::unbounded_channel();
            let attempt_dir = self.local_dir.join(format!("attempt-{attempt_no}"));
            let exec = Execution::start(ExecutionConfig {
                spec: self.spec.clone(),
                storage: self.storage.clone(),
                restore: restore.clone(),
                attempt: attempt_no,
                local_dir: attempt_dir.clone(),
                events: events_tx,
                runtime: tokio::runtime::Handle::current(),
            })
            .map_err(|e| match e {
                RuntimeError::Restore(m) => JobError::Restore(m),
                e => JobError::Internal(e.to_string()),
            })?;
            tracker.resume();
            self.status.send_modify(|s| {
                s.state = JobState::Running;
                s.attempt = attempt_no;
                s.restored_from = outcome.restored_from.clone();
            });
            let mut attempt = Attempt {
                dir: attempt_dir,
                tasks: exec.tasks().to_vec(),
                exec: Some(exec),
                started: 0,
                finished: 0,
                tables: Vec::new(),
                failure_at,
            };
            let end = self
                .drive(&mut tracker, &mut attempt, events, &mut outcome)
                .await;
            outcome.checkpoints_completed = tracker.completed_count;
            outcome.checkpoints_failed = tracker.failed_count;
            match end {
                AttemptEnd::Finished(tables) => {
                    outcome.final_state = tables;
                    outcome.duration = started.elapsed();
                    return Ok(outcome);
                }
                AttemptEnd::Cancelled => return Err(JobError::Cancelled),
                AttemptEnd::Failed { error, fatal, at } => {
                    tracing::warn!(job = %job, attempt = attempt_no, %error, fatal, "job attempt failed");
                    outcome.failures.push(error.clone());
                    self.status.send_modify(|s| {
                        s.state = JobState::Restarting;
                        s.last_failure = Some(error.clone());
                    });
                    if fatal {
                        return Err(JobError::Failed { reason: error });
                    }
                    if outcome.restarts >= self.spec.restart.max_attempts {
                        return Err(JobError::Failed {
                            reason: format!(
                                "{error} (gave up after {} restarts)",
                                outcome.restarts
                            ),
                        });
                    }
                    outcome.restarts += 1;
                    attempt_no += 1;
                    failure_at = Some(at);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(self.spec.restart.delay_ms)) => {}
                        _ = self.cancel.cancelled() => return Err(JobError::Cancelled),
                    }
                    restore = self.latest_restorable(&tracker).await?;
                }
            }
        }
    }

    /// Newest retained checkpoint whose metadata still verifies.
    async fn latest_restorable(
        &self,
        tracker: &CheckpointTracker,
    ) -> Result<Option<Arc<CheckpointMetadata>>, JobError> {
        let ids: Vec<_> = tracker.retained().map(|r| r.id).collect();
        for id in ids.into_iter().rev() {
            match self.storage.read_metadata(&self.spec.job_id, id).await {
                Ok(m) => return Ok(Some(Arc::new(m))),
                Err(e) if e.is_data_error() => {
                    tracing::error!(checkpoint = %id, error = %e, "retained checkpoint is unusable; trying an older one");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    async fn drive(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        mut events: mpsc::UnboundedReceiver<TaskEvent>,
        outcome: &mut JobOutcome,
    ) -> AttemptEnd {
        let interval = tracker.config().interval_ms.map(Duration::from_millis);
        let mut ticker = tokio::time::interval(interval.unwrap_or(Duration::from_secs(3600)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate; start one interval in
        let mut sweep = tokio::time::interval(Duration::from_millis(50));
        let orphan_every = tracker
            .config()
            .orphan_sweep_interval_ms
            .map(Duration::from_millis);
        let mut orphan_sweep =
            tokio::time::interval(orphan_every.unwrap_or(Duration::from_secs(3600)));
        orphan_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        orphan_sweep.tick().await;
        loop {
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else {
                        return self.end_failed(tracker, attempt, "all tasks vanished".into(), false).await;
                    };
                    match ev {
                        TaskEvent::Started { at, .. } => {
                            attempt.started += 1;
                            if attempt.started == attempt.tasks.len() {
                                if let Some(f) = attempt.failure_at.take() {
                                    outcome.restore_ms.push(at.saturating_duration_since(f).as_millis() as u64);
                                }
                            }
                        }
                        TaskEvent::Ack { checkpoint, state } => {
                            match tracker.ack(checkpoint, *state) {
                                AckOutcome::AllAcked(p) => {
                                    if let Some(reason) = self.publish(tracker, attempt, *p).await {
                                        return self.end_failed(tracker, attempt, reason, false).await;
                                    }
                                }
                                AckOutcome::Pending => {}
                                AckOutcome::Ignored(why) => tracing::debug!(%why, "ack ignored"),
                                AckOutcome::Stale(state) => {
                                    if !tracker.is_retained(checkpoint) {
                                        // A late ack of an aborted checkpoint: its uploads go.
                                        self.clean_up(tracker, checkpoint, &state.files).await;
                                    }
                                }
                            }
                        }
                        TaskEvent::Decline { checkpoint, task, reason } => {
                            if let Some(a) = tracker.abort(checkpoint, AbortReason::Declined { task, reason }) {
                                if let Some(reason) = self.discard(tracker, attempt, a).await {
                                    return self.end_failed(tracker, attempt, reason, false).await;
                                }
                            }
                        }
                        TaskEvent::Failed { task, error, fatal } => {
                            return self.end_failed(tracker, attempt, format!("task {task} failed: {error}"), fatal).await;
                        }
                        TaskEvent::Finished { task, records, table } => {
                            attempt.finished += 1;
                            if table.is_none() {
                                outcome.records_read += records;
                            }
                            if let Some(t) = table {
                                attempt.tables.push(*t);
                            }
                            for a in tracker.task_finished(&task) {
                                let _ = self.discard(tracker, attempt, a).await;
                            }
                            if attempt.finished == attempt.tasks.len() {
                                for a in tracker.abort_all(AbortReason::JobFinishing) {
                                    let _ = self.discard(tracker, attempt, a).await;
                                }
                                self.join(attempt).await;
                                return AttemptEnd::Finished(std::mem::take(&mut attempt.tables));
                            }
                        }
                    }
                }
                _ = ticker.tick(), if interval.is_some() => {
                    let t = tracker.config().checkpoint_type;
                    let _ = self.trigger(tracker, attempt, true, t);
                }
                cmd = self.commands.recv() => {
                    if let Some(Command::Trigger { checkpoint_type, reply }) = cmd {
                        let _ = reply.send(self.trigger(tracker, attempt, false, checkpoint_type));
                    }
                }
                _ = orphan_sweep.tick(), if orphan_every.is_some() => {
                    self.sweep_orphans(tracker).await;
                }
                _ = sweep.tick() => {
                    for a in tracker.expire(now_millis()) {
                        if let Some(reason) = self.discard(tracker, attempt, a).await {
                            return self.end_failed(tracker, attempt, reason, false).await;
                        }
                    }
                }
                _ = self.cancel.cancelled() => {
                    let aborted = tracker.abort_all(AbortReason::JobFailing);
                    self.join(attempt).await;
                    for a in aborted {
                        self.clean_up(tracker, a.id, &a.files).await;
                    }
                    return AttemptEnd::Cancelled;
                }
            }
        }
    }

    fn trigger(
        &self,
        tracker: &mut CheckpointTracker,
        attempt: &Attempt,
        periodic: bool,
        checkpoint_type: CheckpointType,
    ) -> Result<CheckpointId, TriggerRefusal> {
        let exec = attempt
            .exec
            .as_ref()
            .ok_or_else(|| TriggerRefusal::NotRunning("restarting".into()))?;
        let now = now_millis();
        let id = tracker.trigger(now, periodic, checkpoint_type, &attempt.tasks)?;
        let barrier = Barrier {
            id,
            checkpoint_type,
            trigger_timestamp: now,
            triggered_at: Instant::now(),
        };
        if !exec.trigger(barrier) {
            tracing::debug!(checkpoint = %id, "a source is gone; the checkpoint will be aborted");
        }
        tracing::debug!(checkpoint = %id, periodic, "triggered");
        Ok(id)
    }

    /// Writes `_metadata` for an all-acked checkpoint and applies retention.
    /// Returns a job-failure reason if failures exceeded the tolerable count.
    async fn publish(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        p: PendingCheckpoint,
    ) -> Option<String> {
        let job = self.spec.job_id.clone();
        let now = now_millis();
        let meta = CheckpointMetadata {
            version: METADATA_VERSION,
            job_id: job.clone(),
            checkpoint_id: p.id,
            checkpoint_type: p.checkpoint_type,
            trigger_timestamp: p.trigger_timestamp,
            complete_timestamp: now,
            parallelism: self.spec.parallelism,
            max_parallelism: self.spec.max_parallelism,
            subtasks: p.acks.values().cloned().collect(),
        };
        if let Err(e) = self.storage.write_metadata(&meta).await {
            let a = tracker.publish_failed(p, e.to_string());
            return self.discard(tracker, attempt, a).await;
        }
        self.registry.register(&meta);
        let done = tracker.completed(p.id, now);
        if let Some(exec) = &attempt.exec {
            exec.notify_complete(p.id);
        }
        tracing::info!(
            job = %job,
            checkpoint = %p.id,
            checkpoint_type = p.checkpoint_type.as_str(),
            duration_ms = now.saturating_sub(p.trigger_timestamp),
            state_size = meta.state_size(),
            checkpointed_size = meta.checkpointed_size(),
            "checkpoint completed"
        );
        self.status.send_modify(|s| {
            s.checkpoints_completed = tracker.completed_count;
            s.latest_completed = Some(p.id);
        });
        for a in done.aborted {
            let _ = self.discard(tracker, attempt, a).await;
        }
        for old in done.subsumed {
            // Metadata first (inside delete_checkpoint), then what only it used.
            self.delete_checkpoint(old).await;
            let free =
                self.registry
                    .release(old, tracker.highest_pending(), tracker.lowest_pending());
            self.delete_shared(&free).await;
        }
        self.sweep_abandoned(tracker, p.id).await;
        None
    }

    /// Aborts a checkpoint: cancel its uploads, delete its folder and the
    /// shared files only it uploaded. Returns a job-failure reason if this
    /// exceeded the tolerable failures.
    async fn discard(
        &mut self,
        tracker: &CheckpointTracker,
        attempt: &Attempt,
        a: Abort,
    ) -> Option<String> {
        if let Some(exec) = &attempt.exec {
            exec.abort(a.id);
        }
        let message = a.reason.message();
        if a.reason.counts_as_failure() {
            tracing::warn!(checkpoint = %a.id, reason = %message, "checkpoint failed");
        } else {
            tracing::debug!(checkpoint = %a.id, reason = %message, "checkpoint aborted");
        }
        self.clean_up(tracker, a.id, &a.files).await;
        self.status.send_modify(|s| {
            s.checkpoints_failed = tracker.failed_count;
            if a.reason.counts_as_failure() {
                s.last_checkpoint_failure = Some(format!("checkpoint {}: {message}", a.id));
            }
        });
        a.fail_job.then(|| {
            format!(
                "checkpoint {} failed ({message}) and {} consecutive failures exceed tolerable_failures={}",
                a.id,
                tracker.config().tolerable_failures + 1,
                tracker.config().tolerable_failures
            )
        })
    }

    /// Deletes a checkpoint that will never complete: its folder, and the
    /// shared files among `files` that nothing retained protects (new
    /// uploads have unique names, so only this checkpoint knew them).
    /// Then collects deferred shared files that became free.
    async fn clean_up(
        &mut self,
        tracker: &CheckpointTracker,
        id: CheckpointId,
        files: &[cutpoint_core::StateFile],
    ) {
        self.delete_checkpoint(id).await;
        let own: Vec<String> = files
            .iter()
            .filter(|f| f.path.starts_with("shared/") && !self.registry.is_protected(&f.path))
            .map(|f| f.path.clone())
            .collect();
        self.delete_shared(&own).await;
        let free = self.registry.collect(tracker.lowest_pending());
        self.delete_shared(&free).await;
    }

    async fn delete_shared(&self, paths: &[String]) {
        if paths.is_empty() {
            return;
        }
        if let Err(e) = self
            .storage
            .delete_state_files(&self.spec.job_id, paths)
            .await
        {
            tracing::warn!(error = %e, "deleting shared files failed; the orphan sweep retries");
        }
    }

    /// Deletes what no retained or pending checkpoint needs and is older
    /// than the checkpoint timeout (see [`crate::sweep`]).
    async fn sweep_orphans(&self, tracker: &CheckpointTracker) {
        let job = &self.spec.job_id;
        let objects = match self.storage.list_job_objects_detailed(job).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "orphan sweep: listing failed");
                return;
            }
        };
        let retained = tracker.retained().map(|r| r.id).collect();
        let pending = tracker.pending().map(|p| p.id).collect();
        let pending_files = tracker.pending_files().map(|f| f.path.clone()).collect();
        let doomed = orphans(&SweepFacts {
            objects: &objects,
            retained: &retained,
            pending: &pending,
            pending_files: &pending_files,
            registry: &self.registry,
            now_ms: now_millis(),
            min_age_ms: tracker.config().timeout_ms,
        });
        if doomed.is_empty() {
            return;
        }
        tracing::info!(job = %job, objects = doomed.len(), "orphan sweep: deleting leftovers");
        // `_metadata` objects come first; delete them before the rest.
        let (metas, rest): (Vec<_>, Vec<_>) =
            doomed.into_iter().partition(|p| p.ends_with("/_metadata"));
        for m in &metas {
            if let Err(e) = self.storage.delete_state_file(job, m).await {
                tracing::warn!(error = %e, "orphan sweep failed");
                return;
            }
        }
        self.delete_shared(&rest).await;
    }

    /// Deletes checkpoint folders below `below` that are neither retained
    /// nor pending: leftovers of aborted uploads or of a crashed process.
    async fn sweep_abandoned(&self, tracker: &CheckpointTracker, below: CheckpointId) {
        let job = &self.spec.job_id;
        let dirs = match self.storage.checkpoint_dirs(job).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "listing checkpoint folders failed");
                return;
            }
        };
        for id in dirs.into_iter().filter(|id| *id < below) {
            let keep =
                tracker.retained().any(|r| r.id == id) || tracker.pending().any(|p| p.id == id);
            if !keep {
                self.delete_checkpoint(id).await;
            }
        }
    }

    async fn delete_checkpoint(&self, id: CheckpointId) {
        if let Err(e) = self.storage.delete_checkpoint(&self.spec.job_id, id).await {
            tracing::warn!(checkpoint = %id, error = %e, "deleting checkpoint failed; the next sweep retries");
        }
    }

    /// Cancels the execution, waits for all its threads, then deletes the
    /// folders of the checkpoints that were pending.
    async fn end_failed(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        error: String,
        fatal: bool,
    ) -> AttemptEnd {
        let at = Instant::now();
        let aborted = tracker.abort_all(AbortReason::JobFailing);
        tracker.stop("restarting");
        self.join(attempt).await;
        for a in aborted {
            self.clean_up(tracker, a.id, &a.files).await;
        }
        AttemptEnd::Failed { error, fatal, at }
    }

    /// Cancels and joins the execution, then removes its local files.
    async fn join(&self, attempt: &mut Attempt) {
        if let Some(exec) = attempt.exec.take() {
            exec.cancel();
            let _ = tokio::task::spawn_blocking(move || exec.join()).await;
            if let Err(e) = tokio::fs::remove_dir_all(&attempt.dir).await {
                tracing::debug!(dir = %attempt.dir.display(), error = %e, "removing local state failed");
            }
        }
    }
}
