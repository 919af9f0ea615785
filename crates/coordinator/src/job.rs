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

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutpoint_core::spec::SinkSpec;
use cutpoint_core::{
    now_millis, CheckpointId, CheckpointMetadata, CheckpointType, JobSpec, SavepointId,
    SubtaskState, TaskId, METADATA_VERSION,
};
use cutpoint_runtime::sink::StagingInUse;
use cutpoint_runtime::{
    Barrier, Execution, ExecutionConfig, FailureKind, RuntimeError, TaskCounters, TaskEvent,
};
use cutpoint_state::StateTable;
use cutpoint_storage::{CheckpointStorage, StorageError, WriterLease};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::fence::Fence;
use crate::gc::registry::SharedRegistry;
use crate::gc::{self, DeleteRefusal, GcConfig, GcFacts, GcHandle, GcRequest, SystemClock};
use crate::recovery::{self, AfterFailure, AttemptFailure, ChosenBy, RecoveryPolicy};
use crate::restore::{self, RestoreFrom};
use crate::stats::StatsBook;
use crate::tracker::{
    Abort, AbortReason, AckOutcome, CheckpointTracker, PendingCheckpoint, Retained, TriggerRefusal,
};
use crate::workdir::WorkDir;
use crate::JobError;

/// How to run a job.
pub struct JobConfig {
    pub spec: JobSpec,
    pub storage: CheckpointStorage,
    /// Restore from storage before starting (`None`: start fresh).
    pub restore_from: Option<RestoreFrom>,
    /// Local working directory (RocksDB instances); created if missing,
    /// locked for the job's lifetime and emptied at its start (see
    /// [`crate::workdir`]).
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

impl JobState {
    /// Finished, failed or cancelled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Failed | JobState::Cancelled
        )
    }
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
    /// Corrupt checkpoints skipped while restoring, and why.
    pub restore_fallbacks: Vec<String>,
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
    /// Corrupt checkpoints skipped while restoring, and why.
    pub restore_fallbacks: Vec<String>,
    pub duration: Duration,
}

impl JobOutcome {
    fn new() -> Self {
        Self {
            final_state: Vec::new(),
            records_read: 0,
            checkpoints_completed: 0,
            checkpoints_failed: 0,
            restarts: 0,
            restored_from: Vec::new(),
            restore_ms: Vec::new(),
            failures: Vec::new(),
            restore_fallbacks: Vec::new(),
            duration: Duration::ZERO,
        }
    }
}

/// Every series exists from the start (at 0), so `increase()` alerts see
/// the first failure or restart too.
fn register_metrics(job: &cutpoint_core::JobId) {
    for name in [
        "cutpoint_checkpoints_completed_total",
        "cutpoint_checkpoints_failed_total",
        "cutpoint_job_restarts_total",
        "cutpoint_records_read_total",
    ] {
        metrics::counter!(name, "job" => job.to_string()).increment(0);
    }
}

/// What GC must respect: the tracker's retained and pending checkpoints
/// and the shared files pending acks name.
fn facts(tracker: &CheckpointTracker) -> GcFacts {
    GcFacts {
        retained: tracker.retained().map(|r| r.id).collect(),
        pending: tracker.pending().map(|p| p.id).collect(),
        pending_files: tracker.pending_files().map(|f| f.path.clone()).collect(),
    }
}

impl From<FailureKind> for AttemptFailure {
    fn from(k: FailureKind) -> Self {
        match k {
            FailureKind::Transient => AttemptFailure::Transient,
            FailureKind::CorruptRestore => AttemptFailure::CorruptRestore,
            FailureKind::Fatal => AttemptFailure::Fatal,
        }
    }
}

enum Command {
    Trigger {
        checkpoint_type: CheckpointType,
        reply: oneshot::Sender<Result<CheckpointId, TriggerRefusal>>,
    },
    ExternalAck {
        checkpoint: CheckpointId,
        state: Box<SubtaskState>,
        reply: oneshot::Sender<Result<(), AckRejection>>,
    },
    ExternalDecline {
        checkpoint: CheckpointId,
        task: TaskId,
        reason: String,
        reply: oneshot::Sender<Result<(), AckRejection>>,
    },
    DeleteCheckpoint {
        id: CheckpointId,
        force: bool,
        reply: oneshot::Sender<Result<(), DeleteRefusal>>,
    },
    TriggerSavepoint {
        reply: oneshot::Sender<Result<SavepointInfo, String>>,
    },
}

/// A savepoint that was taken.
#[derive(Debug, Clone, Serialize)]
pub struct SavepointInfo {
    pub savepoint_id: SavepointId,
    /// The (full) checkpoint it was copied from.
    pub checkpoint_id: CheckpointId,
    pub external_path: String,
}

/// Why an external task's ack or decline was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckRejection {
    #[error("checkpoint {0} was never triggered")]
    UnknownCheckpoint(CheckpointId),
    #[error("checkpoint {0} is not in progress (it completed or was aborted)")]
    NotPending(CheckpointId),
    #[error("{0}")]
    Rejected(String),
    #[error("the job is not running")]
    NotRunning,
}

/// Where a savepoint request's answer goes.
type SavepointReply = oneshot::Sender<Result<SavepointInfo, String>>;

/// Live counters of the running attempt's tasks.
type LiveCounters = Arc<Mutex<Option<Arc<[(TaskId, Arc<TaskCounters>)]>>>>;

/// Records and offsets of one task of the running attempt.
#[derive(Debug, Clone, Serialize)]
pub struct TaskProgress {
    pub task: TaskId,
    pub records: u64,
    /// A source's current offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// A cloneable handle to control and observe a running job.
#[derive(Clone)]
pub struct JobControl {
    live: LiveCounters,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<JobStatus>,
    cancel: CancellationToken,
    stats: Arc<Mutex<StatsBook>>,
    spec: Arc<JobSpec>,
}

impl JobControl {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Triggers a checkpoint now; returns its id.
    pub async fn trigger_checkpoint(
        &self,
        checkpoint_type: CheckpointType,
    ) -> Result<CheckpointId, TriggerRefusal> {
        self.ask(|reply| Command::Trigger {
            checkpoint_type,
            reply,
        })
        .await
        .unwrap_or_else(|| Err(TriggerRefusal::NotRunning("the job ended".into())))
    }

    /// An external task acknowledges a checkpoint with its state.
    pub async fn external_ack(
        &self,
        checkpoint: CheckpointId,
        state: SubtaskState,
    ) -> Result<(), AckRejection> {
        self.ask(|reply| Command::ExternalAck {
            checkpoint,
            state: Box::new(state),
            reply,
        })
        .await
        .unwrap_or(Err(AckRejection::NotRunning))
    }

    /// An external task declines a checkpoint (the checkpoint fails).
    pub async fn external_decline(
        &self,
        checkpoint: CheckpointId,
        task: TaskId,
        reason: String,
    ) -> Result<(), AckRejection> {
        self.ask(|reply| Command::ExternalDecline {
            checkpoint,
            task,
            reason,
            reply,
        })
        .await
        .unwrap_or(Err(AckRejection::NotRunning))
    }

    /// Takes a savepoint: a full checkpoint, copied to `savepoints/` when it
    /// completes (self-contained, never deleted by retention).
    pub async fn trigger_savepoint(&self) -> Result<SavepointInfo, String> {
        self.ask(|reply| Command::TriggerSavepoint { reply })
            .await
            .unwrap_or_else(|| Err("the job ended".into()))
    }

    /// Deletes a retained checkpoint (and the shared files only it used).
    pub async fn delete_checkpoint(
        &self,
        id: CheckpointId,
        force: bool,
    ) -> Result<(), DeleteRefusal> {
        self.ask(|reply| Command::DeleteCheckpoint { id, force, reply })
            .await
            .unwrap_or(Err(DeleteRefusal::NotRunning))
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

    /// Waits for any status change (false once the job is gone).
    pub async fn changed(&mut self) -> bool {
        self.status.changed().await.is_ok()
    }

    /// Records and offsets of the running attempt's tasks (empty while
    /// restarting or after the end).
    pub fn progress(&self) -> Vec<TaskProgress> {
        let live = self.live.lock().expect("live lock").clone();
        live.map(|c| {
            c.iter()
                .map(|(task, c)| TaskProgress {
                    task: task.clone(),
                    records: c.records(),
                    offset: (task.operator.as_str() == cutpoint_runtime::SOURCE_OPERATOR)
                        .then(|| c.offset()),
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// A copy of the job's checkpoint statistics.
    pub fn stats(&self) -> StatsBook {
        self.stats.lock().expect("stats lock").clone()
    }

    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels the job (e.g. from a signal handler).
    pub fn canceller(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// A running job: its control handle and its result.
pub struct JobHandle {
    control: JobControl,
    join: tokio::task::JoinHandle<Result<JobOutcome, JobError>>,
}

impl std::ops::Deref for JobHandle {
    type Target = JobControl;
    fn deref(&self) -> &JobControl {
        &self.control
    }
}

impl std::ops::DerefMut for JobHandle {
    fn deref_mut(&mut self) -> &mut JobControl {
        &mut self.control
    }
}

impl JobHandle {
    pub fn control(&self) -> JobControl {
        self.control.clone()
    }

    /// Waits for the job to end.
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
    let stats = Arc::new(Mutex::new(StatsBook::default()));
    let live: LiveCounters = Arc::new(Mutex::new(None));
    let spec = Arc::new(cfg.spec);
    let runner = Runner {
        reuse_base: None,
        superseded: Default::default(),
        gc: None,
        savepoints: Default::default(),
        spec: spec.clone(),
        storage: cfg.storage,
        local_dir: cfg.local_dir,
        work: None,
        lease: None,
        fence: None,
        commands: command_rx,
        status: status_tx,
        cancel: cancel.clone(),
        stats: stats.clone(),
        live: live.clone(),
    };
    let join = tokio::spawn(runner.run(cfg.restore_from));
    JobHandle {
        control: JobControl {
            live,
            commands,
            status,
            cancel,
            stats,
            spec,
        },
        join,
    }
}

struct Runner {
    /// The base of the next incremental snapshot, sent with each barrier:
    /// the checkpoint the attempt restored from, then the newest one it
    /// completed. Its shared files are reused, so deleting it needs force
    /// (and then there is no base until the next completion).
    reuse_base: Option<CheckpointId>,
    /// Checkpoints of earlier runs newer than where this run started
    /// (all of them on a fresh start): deleted when this run completes its
    /// first checkpoint, so `latest` never resumes an abandoned timeline.
    superseded: BTreeSet<CheckpointId>,
    /// The GC task (deletes, sweeps, savepoint copies), from the start of
    /// the job to its end.
    gc: Option<GcHandle>,
    savepoints: std::collections::HashMap<CheckpointId, SavepointReply>,
    spec: Arc<JobSpec>,
    storage: CheckpointStorage,
    local_dir: PathBuf,
    /// The locked work dir, from the start of the run to its end.
    work: Option<Arc<WorkDir>>,
    /// This run's writer lease (one writer per job): its epoch is checked
    /// before every publish and delete; its ids are the checkpoint ids.
    lease: Option<WriterLease>,
    /// One writer per job: checked before publishing (and by GC before
    /// deleting); once fenced, the run stops.
    fence: Option<Arc<Fence>>,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<JobStatus>,
    cancel: CancellationToken,
    stats: Arc<Mutex<StatsBook>>,
    live: LiveCounters,
}

/// How one attempt ended.
enum AttemptEnd {
    Finished(Vec<StateTable>),
    Failed {
        error: String,
        failure: AttemptFailure,
        at: Instant,
    },
    Cancelled,
}

/// Per-attempt bookkeeping of the event loop.
struct Attempt {
    /// Local working directory of this attempt.
    dir: PathBuf,
    /// Tasks of this process (the rest of `tasks` are external).
    internal: usize,
    exec: Option<Execution>,
    tasks: Vec<TaskId>,
    started: usize,
    finished: usize,
    tables: Vec<StateTable>,
    failure_at: Option<Instant>,
    /// Sources that read all their input and wait for the final checkpoint.
    sources_ended: u32,
    /// Source records already added to `cutpoint_records_read_total`.
    records_reported: u64,
    /// Sources that reached the end of their input, as they acknowledge
    /// every later checkpoint.
    finished_sources: Vec<SubtaskState>,
    /// The first checkpoint triggered after every source ended: it, or any
    /// later one, is the final checkpoint.
    final_from: Option<CheckpointId>,
}

impl Runner {
    async fn run(mut self, restore_from: Option<RestoreFrom>) -> Result<JobOutcome, JobError> {
        let result = self.run_inner(restore_from).await;
        // Whatever was handed to GC (aborted checkpoints, the final sweep)
        // is done before the job counts as ended.
        if let Some(gc) = self.gc.take() {
            gc.shutdown(gc::Shutdown::Drain).await;
        }
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
        let dir = self.local_dir.clone();
        let work = tokio::task::spawn_blocking(move || WorkDir::take(&dir))
            .await
            .map_err(|e| JobError::Internal(e.to_string()))??;
        self.work = Some(Arc::new(work));
        self.storage.write_job_spec(&self.spec).await?;
        let above = self
            .storage
            .checkpoint_dirs(&job)
            .await?
            .last()
            .map_or(1, |m| m.0 + 1);
        let lease = self.storage.take_writer_lease(&job, above).await?;
        self.lease = Some(lease);
        let fence = Arc::new(Fence::new(self.storage.clone(), job.clone(), lease.epoch));
        self.fence = Some(fence.clone());
        tracing::info!(job = %job, epoch = lease.epoch, ids = ?(lease.first_id..=lease.last_id), "took the job's storage (older writers are fenced)");
        let mut restore = match &restore_from {
            Some(from) => Some(Arc::new(
                restore::prepare(
                    &self.storage,
                    &job,
                    from.clone(),
                    CheckpointId(lease.first_id),
                )
                .await?,
            )),
            None => None,
        };
        let (retained, registry, unreadable) = self.load_retained().await?;
        register_metrics(&job);
        // A savepoint imported as the lease's first id: the next one is free.
        let first = restore.as_ref().map_or(lease.first_id, |m| {
            m.checkpoint_id.0.max(lease.first_id - 1) + 1
        });
        let mut tracker =
            CheckpointTracker::new(self.spec.checkpoint.clone(), CheckpointId(first), retained);
        tracker.grant_ids(CheckpointId(first), CheckpointId(lease.last_id));
        let timeout = tracker.config().timeout_ms;
        let gc = gc::spawn(
            self.storage.clone(),
            job.clone(),
            fence,
            registry,
            unreadable,
            GcConfig {
                sweep_every: tracker
                    .config()
                    .orphan_sweep_interval_ms
                    .map(Duration::from_millis),
                min_age_ms: timeout,
            },
            Arc::new(SystemClock),
        );
        gc.send(GcRequest::Sweep {
            facts: facts(&tracker),
            min_age_ms: timeout,
        });
        self.gc = Some(gc);

        let mut outcome = JobOutcome::new();
        let mut excluded = recovery::excluded_at_start(
            tracker.retained().map(|r| r.id),
            restore.as_ref().map(|m| m.checkpoint_id),
        );
        // The abandoned timeline: once this run completed a checkpoint of
        // its own, it goes (until then it stays, in case the restore itself
        // was the mistake).
        self.superseded = excluded.clone();
        let policy = RecoveryPolicy {
            fallback_to_older_checkpoint: self.spec.restart.fallback_to_older_checkpoint,
            max_restarts: self.spec.restart.max_attempts,
        };
        let mut chosen_by = match restore_from {
            Some(RestoreFrom::Latest) | None => ChosenBy::Policy,
            Some(_) => ChosenBy::User,
        };
        let mut attempt_no = 0u32;
        let mut failure_at: Option<Instant> = None;
        loop {
            let end = self
                .run_attempt(&mut tracker, &restore, attempt_no, failure_at, &mut outcome)
                .await?;
            // The last attempt's counters stay visible after the job ended.
            outcome.checkpoints_completed = tracker.completed_count;
            outcome.checkpoints_failed = tracker.failed_count;
            let (error, failure, at) = match end {
                AttemptEnd::Finished(tables) => {
                    self.sweep_finished(&tracker);
                    outcome.final_state = tables;
                    outcome.duration = started.elapsed();
                    return Ok(outcome);
                }
                AttemptEnd::Cancelled => return Err(JobError::Cancelled),
                AttemptEnd::Failed { error, failure, at } => (error, failure, at),
            };
            tracing::warn!(job = %job, attempt = attempt_no, %error, ?failure, "job attempt failed");
            let restored = restore.as_ref().map(|m| (m.checkpoint_id, chosen_by));
            chosen_by = ChosenBy::Policy;
            attempt_no += 1;
            match policy.after_failure(failure, restored, outcome.restarts) {
                AfterFailure::FallBack { bad } => {
                    excluded.insert(bad);
                    restore = Some(
                        self.fall_back(&tracker, &excluded, bad, &error, &mut outcome)
                            .await?,
                    );
                }
                AfterFailure::Fail => {
                    self.record_failure(&error, &mut outcome);
                    let reason = match failure {
                        AttemptFailure::Transient => {
                            format!("{error} (gave up after {} restarts)", outcome.restarts)
                        }
                        _ => error,
                    };
                    return Err(JobError::Failed { reason });
                }
                AfterFailure::Restart => {
                    self.record_failure(&error, &mut outcome);
                    outcome.restarts += 1;
                    metrics::counter!("cutpoint_job_restarts_total", "job" => job.to_string())
                        .increment(1);
                    failure_at = Some(at);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(self.spec.restart.delay_ms)) => {}
                        _ = self.cancel.cancelled() => return Err(JobError::Cancelled),
                    }
                    restore = self.latest_restorable(&tracker, &excluded).await?;
                }
            }
        }
    }

    /// Every completed checkpoint in storage, oldest first; the registry
    /// that counts the shared files they reference; the checkpoints whose
    /// metadata cannot be read (corrupt, a newer format): while any exists,
    /// shared files are never deleted (they may be its files). A storage
    /// error is an error.
    async fn load_retained(
        &mut self,
    ) -> Result<(Vec<Retained>, SharedRegistry, BTreeSet<CheckpointId>), JobError> {
        let mut retained = Vec::new();
        let mut registry = SharedRegistry::new();
        let mut unreadable = BTreeSet::new();
        let listings = self.storage.list_checkpoints(&self.spec.job_id).await?;
        for l in listings.into_iter().rev() {
            match l.metadata {
                Ok(m) => {
                    registry.register(&m);
                    retained.push(Retained {
                        id: m.checkpoint_id,
                        complete_timestamp: m.complete_timestamp,
                    });
                }
                Err(e) if e.is_data_error() => {
                    tracing::warn!(checkpoint = %l.checkpoint_id, error = %e, "unusable checkpoint in storage: shared files are not deleted while it exists");
                    unreadable.insert(l.checkpoint_id);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((retained, registry, unreadable))
    }

    /// Starts attempt `attempt_no` (restoring `restore`) and drives it to
    /// its end.
    async fn run_attempt(
        &mut self,
        tracker: &mut CheckpointTracker,
        restore: &Option<Arc<CheckpointMetadata>>,
        attempt_no: u32,
        failure_at: Option<Instant>,
        outcome: &mut JobOutcome,
    ) -> Result<AttemptEnd, JobError> {
        let job = self.spec.job_id.clone();
        if let Some(meta) = restore {
            outcome.restored_from.push(meta.checkpoint_id);
            self.stats_mut().restored(
                meta.checkpoint_id,
                now_millis(),
                self.storage.external_path(&job, meta.checkpoint_id),
            );
            tracing::info!(job = %job, checkpoint = %meta.checkpoint_id, attempt = attempt_no, "restoring");
        }
        let (events_tx, events) = mpsc::unbounded_channel();
        let staging_in_use = self.staging_in_use().await?;
        let work = self.work.clone().expect("taken at start");
        let attempt_dir = tokio::task::spawn_blocking(move || work.attempt(attempt_no))
            .await
            .map_err(|e| JobError::Internal(e.to_string()))??;
        let exec = Execution::start(ExecutionConfig {
            spec: self.spec.clone(),
            storage: self.storage.clone(),
            restore: restore.clone(),
            attempt: attempt_no,
            local_dir: attempt_dir.clone(),
            events: events_tx,
            runtime: tokio::runtime::Handle::current(),
            staging_in_use,
        })
        .map_err(|e| match e {
            RuntimeError::Restore(m) => JobError::Restore(m),
            e => JobError::Internal(e.to_string()),
        })?;
        tracker.resume();
        self.reuse_base = restore.as_ref().map(|m| m.checkpoint_id);
        *self.live.lock().expect("live lock") = Some(exec.counters());
        self.status.send_modify(|s| {
            s.state = JobState::Running;
            s.attempt = attempt_no;
            s.restored_from = outcome.restored_from.clone();
        });
        let internal = exec.tasks().len();
        let mut tasks = exec.tasks().to_vec();
        tasks.extend(self.spec.external_tasks.iter().map(|t| TaskId::new(t, 0)));
        let mut attempt = Attempt {
            dir: attempt_dir,
            internal,
            tasks,
            exec: Some(exec),
            started: 0,
            finished: 0,
            tables: Vec::new(),
            failure_at,
            sources_ended: 0,
            records_reported: 0,
            finished_sources: Vec::new(),
            final_from: None,
        };
        Ok(self.drive(tracker, &mut attempt, events, outcome).await)
    }

    /// The staging files of a transactional sink that checkpoints and
    /// savepoints of this job name as pre-committed: a sink recovering from
    /// one checkpoint keeps them, so the others stay restorable. All of
    /// them when any metadata cannot be read.
    async fn staging_in_use(&self) -> Result<StagingInUse, JobError> {
        let mut handles = BTreeSet::new();
        if !matches!(self.spec.sink, SinkSpec::TransactionalFile { .. }) {
            return Ok(StagingInUse::Only(handles));
        }
        let mut add = |m: &CheckpointMetadata| {
            let txns = m.subtasks.iter().flat_map(|s| &s.pending_transactions);
            handles.extend(txns.map(|t| t.handle.clone()));
        };
        for l in self.storage.list_checkpoints(&self.spec.job_id).await? {
            match l.metadata {
                Ok(m) => add(&m),
                Err(e) if e.is_data_error() => return Ok(StagingInUse::All),
                Err(e) => return Err(e.into()),
            }
        }
        for (_, meta) in self.storage.list_savepoints().await? {
            match meta {
                Ok(m) if m.job_id == self.spec.job_id => add(&m),
                Ok(_) => {}
                Err(e) if e.is_data_error() => return Ok(StagingInUse::All),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(StagingInUse::Only(handles))
    }

    /// After the job finished: every task of this process has stopped, so
    /// nothing of ours is still uploading and leftovers of aborted or crashed
    /// checkpoints can go regardless of age (external tasks may still
    /// upload: for them the usual minimum age).
    fn sweep_finished(&mut self, tracker: &CheckpointTracker) {
        let min_age_ms = if self.spec.external_tasks.is_empty() {
            0
        } else {
            tracker.config().timeout_ms
        };
        self.gc().send(GcRequest::Sweep {
            facts: facts(tracker),
            min_age_ms,
        });
    }

    /// The checkpoint restored from turned out corrupt: the next older
    /// restorable one, said in the logs, the status and the outcome.
    async fn fall_back(
        &mut self,
        tracker: &CheckpointTracker,
        excluded: &BTreeSet<CheckpointId>,
        bad: CheckpointId,
        error: &str,
        outcome: &mut JobOutcome,
    ) -> Result<Arc<CheckpointMetadata>, JobError> {
        let Some(next) = self.latest_restorable(tracker, excluded).await? else {
            return Err(JobError::Restore(format!(
                "checkpoint {bad} cannot be restored ({error}) and no older intact checkpoint is retained"
            )));
        };
        let msg = format!(
            "checkpoint {bad} cannot be restored ({error}); falling back to checkpoint {}",
            next.checkpoint_id
        );
        tracing::error!(job = %self.spec.job_id, "{msg}");
        outcome.restore_fallbacks.push(msg.clone());
        self.status.send_modify(|s| s.restore_fallbacks.push(msg));
        Ok(next)
    }

    fn record_failure(&self, error: &str, outcome: &mut JobOutcome) {
        outcome.failures.push(error.to_string());
        self.status.send_modify(|s| {
            s.state = JobState::Restarting;
            s.last_failure = Some(error.to_string());
        });
    }

    /// The newest retained checkpoint, not `excluded`, whose metadata
    /// verifies (the rule of [`recovery::newest_restorable`]): bad data is
    /// skipped, a storage error fails.
    async fn latest_restorable(
        &self,
        tracker: &CheckpointTracker,
        excluded: &BTreeSet<CheckpointId>,
    ) -> Result<Option<Arc<CheckpointMetadata>>, JobError> {
        let ids: Vec<_> = tracker
            .retained()
            .map(|r| r.id)
            .filter(|id| !excluded.contains(id))
            .collect();
        let mut candidates = Vec::new();
        let mut read = None;
        // Newest first, up to the first that is not skippable.
        for id in ids.into_iter().rev() {
            let r = self.storage.read_metadata(&self.spec.job_id, id).await;
            let outcome = restore::read_outcome(&r);
            let done = !matches!(outcome, recovery::MetadataRead::Unusable(_));
            candidates.push(recovery::Candidate { id, read: outcome });
            if done {
                read = Some(r);
                break;
            }
        }
        match (recovery::newest_restorable(&candidates, excluded), read) {
            (recovery::Choice::Restore { skipped, .. }, Some(Ok(meta))) => {
                for s in skipped {
                    tracing::error!("retained checkpoint is unusable; trying an older one: {s}");
                }
                Ok(Some(Arc::new(meta)))
            }
            (recovery::Choice::Unreachable { .. }, Some(Err(e))) => Err(e.into()),
            (recovery::Choice::Nothing { .. }, _) => Ok(None),
            (choice, _) => Err(JobError::Internal(format!(
                "recovery chose {choice:?} from facts it was not given"
            ))),
        }
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
        let fence = self.fence.clone().expect("the lease is taken at the start");
        loop {
            // What GC must respect, as of the last event.
            self.gc().set_facts(facts(tracker));
            tokio::select! {
                why = fence.fenced() => {
                    return self
                        .end_failed_with(tracker, attempt, why, AttemptFailure::Fatal)
                        .await;
                }
                ev = events.recv() => {
                    let Some(ev) = ev else {
                        return self.end_failed(tracker, attempt, "all tasks vanished".into()).await;
                    };
                    match ev {
                        TaskEvent::Started { at, .. } => {
                            attempt.started += 1;
                            if attempt.started == attempt.internal {
                                if let Some(f) = attempt.failure_at.take() {
                                    outcome.restore_ms.push(at.saturating_duration_since(f).as_millis() as u64);
                                }
                            }
                        }
                        TaskEvent::Ack { checkpoint, state } => {
                            match self.ack(tracker, attempt, checkpoint, *state).await {
                                Ok(Some(reason)) => return self.end_failed(tracker, attempt, reason).await,
                                Ok(None) => {}
                                Err(why) => tracing::debug!(%why, "ack not applied"),
                            }
                        }
                        TaskEvent::Decline { checkpoint, task, reason } => {
                            if let Ok(Some(reason)) = self.decline(tracker, attempt, checkpoint, task, reason).await {
                                return self.end_failed(tracker, attempt, reason).await;
                            }
                        }
                        TaskEvent::Failed { task, error, kind } => {
                            let error = format!("task {task} failed: {error}");
                            return self.end_failed_with(tracker, attempt, error, kind.into()).await;
                        }
                        TaskEvent::EndOfInput { .. } => {
                            attempt.sources_ended += 1;
                            self.advance_final(tracker, attempt);
                        }
                        TaskEvent::Finished { task, records, table, offset } => {
                            attempt.finished += 1;
                            if table.is_none() {
                                outcome.records_read += records;
                                self.report_records(attempt);
                            }
                            if let Some(t) = table {
                                attempt.tables.push(*t);
                            }
                            if let Some(offset) = offset {
                                // A finished source takes part in every later
                                // checkpoint with its end offset: everything it
                                // read is before any later barrier.
                                let state = SubtaskState {
                                    source_offset: Some(offset),
                                    ack_timestamp: now_millis(),
                                    ..SubtaskState::empty(task.clone())
                                };
                                attempt.finished_sources.push(state.clone());
                                let owed: Vec<CheckpointId> = tracker
                                    .pending()
                                    .filter(|p| p.expected.contains(&task) && !p.acks.contains_key(&task))
                                    .map(|p| p.id)
                                    .collect();
                                for id in owed {
                                    if let Ok(Some(reason)) = self.ack(tracker, attempt, id, state.clone()).await {
                                        return self.end_failed(tracker, attempt, reason).await;
                                    }
                                }
                                if attempt.finished_sources.len() as u32 == self.spec.source_parallelism() {
                                    tracker.stop("every source finished");
                                }
                            } else {
                                for a in tracker.task_finished(&task) {
                                    let _ = self.discard(tracker, attempt, a).await;
                                }
                            }
                            if attempt.finished == attempt.internal {
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
                Some(cmd) = self.commands.recv() => {
                    let fail = match cmd {
                        Command::Trigger { checkpoint_type, reply } => {
                            let _ = reply.send(self.trigger(tracker, attempt, false, checkpoint_type));
                            None
                        }
                        Command::ExternalAck { checkpoint, state, reply } => {
                            let r = self.ack(tracker, attempt, checkpoint, *state).await;
                            let (answer, fail) = match r {
                                Ok(fail) => (Ok(()), fail),
                                Err(e) => (Err(e), None),
                            };
                            let _ = reply.send(answer);
                            fail
                        }
                        Command::ExternalDecline { checkpoint, task, reason, reply } => {
                            let r = self.decline(tracker, attempt, checkpoint, task, reason).await;
                            let (answer, fail) = match r {
                                Ok(fail) => (Ok(()), fail),
                                Err(e) => (Err(e), None),
                            };
                            let _ = reply.send(answer);
                            fail
                        }
                        Command::DeleteCheckpoint { id, force, reply } => {
                            let _ = reply.send(self.delete_retained(tracker, id, force).await);
                            None
                        }
                        Command::TriggerSavepoint { reply } => {
                            match self.trigger(tracker, attempt, false, CheckpointType::Full) {
                                Ok(id) => {
                                    self.savepoints.insert(id, reply);
                                }
                                Err(e) => {
                                    let _ = reply.send(Err(e.to_string()));
                                }
                            }
                            None
                        }
                    };
                    if let Some(reason) = fail {
                        return self.end_failed(tracker, attempt, reason).await;
                    }
                }
                _ = sweep.tick() => {
                    self.renew_lease(tracker).await;
                    for a in tracker.expire(now_millis()) {
                        if let Some(reason) = self.discard(tracker, attempt, a).await {
                            return self.end_failed(tracker, attempt, reason).await;
                        }
                    }
                    self.advance_final(tracker, attempt);
                    self.report_records(attempt);
                }
                _ = self.cancel.cancelled() => {
                    let aborted = tracker.abort_all(AbortReason::JobFailing);
                    self.join(attempt).await;
                    for a in aborted {
                        self.clean_up(tracker, a.id, &a.files);
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
        cutpoint_core::failpoint::check("coordinator::trigger")?;
        let now = now_millis();
        let id = tracker.trigger(now, periodic, checkpoint_type, &attempt.tasks)?;
        self.stats_mut()
            .triggered(id, checkpoint_type, now, attempt.tasks.len());
        // Finished sources acknowledge at once, with their end offsets.
        for s in &attempt.finished_sources {
            let _ = tracker.ack(id, s.clone());
            self.stats_mut().acked(id, s);
        }
        let barrier = Barrier {
            id,
            checkpoint_type,
            trigger_timestamp: now,
            triggered_at: Instant::now(),
            reuse: self.reuse_base,
        };
        if !exec.trigger(barrier) {
            tracing::debug!(checkpoint = %id, "a source is gone; the checkpoint will be aborted");
        }
        tracing::debug!(checkpoint = %id, periodic, "triggered");
        Ok(id)
    }

    /// Drives the final checkpoint once every source read all its input:
    /// triggers it (retrying while another checkpoint is in flight or after
    /// it failed, up to the tolerable failures), and when one completed,
    /// lets the sources end their streams.
    fn advance_final(&self, tracker: &mut CheckpointTracker, attempt: &mut Attempt) {
        if attempt.sources_ended < self.spec.source_parallelism() {
            return;
        }
        let Some(exec) = &attempt.exec else { return };
        if let (Some(from), Some(done)) = (attempt.final_from, tracker.latest_retained()) {
            if done.id >= from {
                exec.finish_sources();
                return;
            }
        }
        let in_flight = attempt
            .final_from
            .is_some_and(|f| tracker.pending().any(|p| p.id >= f));
        if !in_flight {
            let t = tracker.config().checkpoint_type;
            if let Ok(id) = self.trigger(tracker, attempt, false, t) {
                tracing::debug!(checkpoint = %id, "final checkpoint triggered");
                attempt.final_from.get_or_insert(id);
            }
        }
    }

    /// Adds what the sources read since the last report to
    /// `cutpoint_records_read_total` (every attempt's reads, replays included).
    fn report_records(&self, attempt: &mut Attempt) {
        let Some(exec) = &attempt.exec else { return };
        let read: u64 = exec
            .counters()
            .iter()
            .filter(|(t, _)| t.operator.as_str() == cutpoint_runtime::SOURCE_OPERATOR)
            .map(|(_, c)| c.records())
            .sum();
        if read > attempt.records_reported {
            metrics::counter!("cutpoint_records_read_total", "job" => self.spec.job_id.to_string())
                .increment(read - attempt.records_reported);
            attempt.records_reported = read;
        }
    }

    fn stats_mut(&self) -> std::sync::MutexGuard<'_, StatsBook> {
        self.stats.lock().expect("stats lock")
    }

    /// Applies an acknowledgement; publishes the checkpoint when it was the
    /// last one. `Ok(Some(reason))`: the job must fail (tolerable failures
    /// exceeded). `Err`: the ack was not applied.
    async fn ack(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        checkpoint: CheckpointId,
        state: SubtaskState,
    ) -> Result<Option<String>, AckRejection> {
        if let Err(e) = cutpoint_core::failpoint::check("coordinator::ack") {
            // As if the acknowledgement was lost: the checkpoint times out.
            return Err(AckRejection::Rejected(e.to_string()));
        }
        let copy = state.clone();
        match tracker.ack(checkpoint, state) {
            AckOutcome::Pending => {
                self.stats_mut().acked(checkpoint, &copy);
                Ok(None)
            }
            AckOutcome::AllAcked(p) => {
                self.stats_mut().acked(checkpoint, &copy);
                Ok(self.publish(tracker, attempt, *p).await)
            }
            AckOutcome::Ignored(why) => Err(AckRejection::Rejected(why)),
            AckOutcome::Stale(state) => {
                if !tracker.was_triggered(checkpoint) {
                    return Err(AckRejection::UnknownCheckpoint(checkpoint));
                }
                if !tracker.is_retained(checkpoint) {
                    // A late ack of an aborted checkpoint: its uploads go.
                    self.clean_up(tracker, checkpoint, &state.files);
                }
                Err(AckRejection::NotPending(checkpoint))
            }
        }
    }

    /// A task declines a checkpoint: the checkpoint fails.
    async fn decline(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        checkpoint: CheckpointId,
        task: TaskId,
        reason: String,
    ) -> Result<Option<String>, AckRejection> {
        match tracker.expects(checkpoint, &task) {
            None if !tracker.was_triggered(checkpoint) => {
                Err(AckRejection::UnknownCheckpoint(checkpoint))
            }
            None => Err(AckRejection::NotPending(checkpoint)),
            Some(false) => Err(AckRejection::Rejected(format!(
                "task {task} is not part of checkpoint {checkpoint} or already acknowledged it"
            ))),
            Some(true) => {
                let a = tracker
                    .abort(checkpoint, AbortReason::Declined { task, reason })
                    .expect("pending");
                Ok(self.discard(tracker, attempt, a).await)
            }
        }
    }

    /// Deletes a retained checkpoint on a user's request.
    async fn delete_retained(
        &mut self,
        tracker: &mut CheckpointTracker,
        id: CheckpointId,
        force: bool,
    ) -> Result<(), DeleteRefusal> {
        let retained: Vec<CheckpointId> = tracker.retained().map(|r| r.id).collect();
        gc::may_delete(id, &retained, self.reuse_base, force)?;
        if self.reuse_base == Some(id) {
            self.reuse_base = None;
        }
        tracker.remove_retained(id);
        self.discard_retained(tracker, id);
        tracing::info!(checkpoint = %id, "checkpoint deleted on request");
        Ok(())
    }

    /// Deletes a checkpoint that is no longer retained: its folder
    /// (`_metadata` first), then the shared files only it used — only once
    /// `_metadata` is gone, so a checkpoint that still looks restorable
    /// never loses files.
    fn discard_retained(&mut self, tracker: &CheckpointTracker, id: CheckpointId) {
        self.stats_mut().discarded(id);
        self.gc().send(GcRequest::Discard {
            id,
            facts: facts(tracker),
        });
    }

    /// The commit point of a checkpoint: `_metadata`, create-only, written
    /// only while this run is the job's writer, and only if every file the
    /// acks (external ones too) name lies where it may.
    async fn write_metadata(&self, meta: &CheckpointMetadata) -> Result<(), String> {
        meta.verify(&meta.job_id, meta.checkpoint_id)
            .map_err(|e| e.to_string())?;
        cutpoint_core::failpoint::check("coordinator::write_metadata")
            .map_err(|e| e.to_string())?;
        if !self.fence().check().await {
            return Err(self
                .fence()
                .reason()
                .unwrap_or("the writer epoch could not be checked")
                .to_string());
        }
        self.storage
            .write_metadata(meta)
            .await
            .map_err(|e| e.to_string())
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
            writer_epoch: self.lease.map(|l| l.epoch),
            subtasks: p.acks.values().cloned().collect(),
        };
        let written = self.write_metadata(&meta).await;
        if let Err(e) = written {
            let a = tracker.publish_failed(p, e);
            return self.discard(tracker, attempt, a).await;
        }
        // Only a crash or a delay makes sense here: the checkpoint is published.
        let _ = cutpoint_core::failpoint::check("coordinator::after_metadata");
        let meta = Arc::new(meta);
        self.gc().send(GcRequest::Published(meta.clone()));
        self.reuse_base = Some(p.id);
        let done = tracker.completed(p.id, now);
        self.stats_mut()
            .completed(p.id, now, self.storage.external_path(&job, p.id));
        let labels = [("job", job.to_string())];
        metrics::counter!("cutpoint_checkpoints_completed_total", &labels).increment(1);
        metrics::histogram!("cutpoint_checkpoint_duration_seconds", &labels)
            .record(now.saturating_sub(p.trigger_timestamp) as f64 / 1000.0);
        metrics::histogram!("cutpoint_checkpoint_state_size_bytes", &labels)
            .record(meta.state_size() as f64);
        metrics::histogram!("cutpoint_checkpoint_checkpointed_size_bytes", &labels)
            .record(meta.checkpointed_size() as f64);
        let alignment = meta
            .subtasks
            .iter()
            .map(|s| s.alignment_duration_ms)
            .max()
            .unwrap_or(0);
        metrics::histogram!("cutpoint_checkpoint_alignment_seconds", &labels)
            .record(alignment as f64 / 1000.0);
        if let Some(exec) = &attempt.exec {
            // An injected error drops this notification, as if it was lost:
            // tasks learn of completion from the next one.
            if cutpoint_core::failpoint::check("coordinator::notify_complete").is_ok() {
                exec.notify_complete(p.id);
            }
        }
        self.advance_final(tracker, attempt);
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
        if let Some(reply) = self.savepoints.remove(&p.id) {
            self.copy_to_savepoint(meta.clone(), reply);
        }
        for a in done.aborted {
            let _ = self.discard(tracker, attempt, a).await;
        }
        for old in done.subsumed {
            self.discard_retained(tracker, old);
        }
        for old in std::mem::take(&mut self.superseded) {
            if tracker.remove_retained(old) {
                tracing::info!(checkpoint = %old, "deleting a checkpoint of the timeline this run replaced");
                self.discard_retained(tracker, old);
            }
        }
        self.gc().send(GcRequest::Abandoned {
            below: p.id,
            facts: facts(tracker),
        });
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
            metrics::counter!("cutpoint_checkpoints_failed_total", "job" => self.spec.job_id.to_string())
                .increment(1);
            tracing::warn!(checkpoint = %a.id, reason = %message, "checkpoint failed");
        } else {
            tracing::debug!(checkpoint = %a.id, reason = %message, "checkpoint aborted");
        }
        if let Some(reply) = self.savepoints.remove(&a.id) {
            let _ = reply.send(Err(format!("checkpoint {} failed: {message}", a.id)));
        }
        self.clean_up(tracker, a.id, &a.files);
        self.stats_mut().failed(a.id, now_millis(), message.clone());
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

    /// Has GC copy a just-published checkpoint into a savepoint (before
    /// any request that could delete it) and answers `reply` when it is done.
    fn copy_to_savepoint(&self, meta: Arc<CheckpointMetadata>, reply: SavepointReply) {
        let (job, id) = (meta.job_id.clone(), meta.checkpoint_id);
        let sp = match SavepointId::new(format!("{job}-{}", id.0)) {
            Ok(sp) => sp,
            Err(e) => {
                let _ = reply.send(Err(format!("no savepoint id for job {job}: {e}")));
                return;
            }
        };
        let (tx, rx) = oneshot::channel();
        self.gc().send(GcRequest::Savepoint {
            meta,
            id: sp.clone(),
            reply: tx,
        });
        tokio::spawn(async move {
            let r = match rx.await {
                Ok(Ok(external_path)) => Ok(SavepointInfo {
                    savepoint_id: sp,
                    checkpoint_id: id,
                    external_path,
                }),
                Ok(Err(e)) => Err(format!("copying checkpoint {id} to a savepoint: {e}")),
                Err(_) => Err("the job ended before the savepoint was copied".into()),
            };
            tracing::info!(job = %job, checkpoint = %id, result = ?r, "savepoint");
            let _ = reply.send(r);
        });
    }

    /// Hands a checkpoint that will never complete to GC: its folder, and
    /// the shared files only its acks named (see [`crate::gc`]).
    fn clean_up(
        &mut self,
        tracker: &CheckpointTracker,
        id: CheckpointId,
        files: &[cutpoint_core::StateFile],
    ) {
        if let Some(reply) = self.savepoints.remove(&id) {
            let _ = reply.send(Err(format!(
                "checkpoint {id} did not complete (the job failed or stopped)"
            )));
        }
        self.gc().send(GcRequest::Abort {
            id,
            files: files.to_vec(),
            facts: facts(tracker),
        });
    }

    /// Takes the next writer lease when the ids run low (see
    /// [`CheckpointStorage::renew_writer_lease`]).
    async fn renew_lease(&mut self, tracker: &mut CheckpointTracker) {
        const RENEW_BELOW: u64 = 64;
        let Some(lease) = self.lease.filter(|_| tracker.ids_left() < RENEW_BELOW) else {
            return;
        };
        match self
            .storage
            .renew_writer_lease(&self.spec.job_id, lease, 0)
            .await
        {
            Ok(new) => {
                tracing::info!(epoch = new.epoch, ids = ?(new.first_id..=new.last_id), "writer lease renewed");
                tracker.grant_ids(CheckpointId(new.first_id), CheckpointId(new.last_id));
                self.fence().renewed(new.epoch);
                self.lease = Some(new);
            }
            Err(e @ StorageError::Fenced { .. }) => self.fence().fence(e.to_string()),
            Err(e) => tracing::warn!(error = %e, "renewing the writer lease failed; retrying"),
        }
    }

    fn gc(&self) -> &GcHandle {
        self.gc.as_ref().expect("GC runs from the start of the job")
    }

    fn fence(&self) -> &Fence {
        self.fence
            .as_ref()
            .expect("the lease is taken at the start")
    }

    /// Cancels the execution, waits for all its threads, then deletes the
    /// folders of the checkpoints that were pending. The attempt ended with
    /// a failure a restart may fix.
    async fn end_failed(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        error: String,
    ) -> AttemptEnd {
        self.end_failed_with(tracker, attempt, error, AttemptFailure::Transient)
            .await
    }

    async fn end_failed_with(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        error: String,
        failure: AttemptFailure,
    ) -> AttemptEnd {
        let at = Instant::now();
        let aborted = tracker.abort_all(AbortReason::JobFailing);
        tracker.stop("restarting");
        self.join(attempt).await;
        for a in aborted {
            self.clean_up(tracker, a.id, &a.files);
        }
        AttemptEnd::Failed { error, failure, at }
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
