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

use cutpoint_core::{
    now_millis, CheckpointId, CheckpointMetadata, CheckpointType, JobSpec, OperatorId, SavepointId,
    SubtaskState, TaskId, METADATA_VERSION,
};
use cutpoint_runtime::sink::StagingInUse;
use cutpoint_runtime::{
    Barrier, Execution, ExecutionConfig, FailureKind, RuntimeError, TaskCounters, TaskEvent,
};
use cutpoint_state::ResultTable;
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
    /// The program's keyed process functions (the spec's `process`
    /// aggregate names one; empty for JSON jobs of built-ins).
    pub functions: cutpoint_runtime::Functions,
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
    /// Every task of the current attempt restored its state and runs.
    pub tasks_running: bool,
}

/// The result of a job that ran to the end of its input.
#[derive(Debug)]
pub struct JobOutcome {
    /// Final keyed state of the last keyed stage (the one feeding the
    /// sink: the job's result), one table per subtask.
    pub final_state: Vec<ResultTable>,
    /// Final state of the stages before the last, one table per subtask.
    pub stage_state: Vec<(OperatorId, ResultTable)>,
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
    /// The final state of every subtask, merged and sorted by key (the
    /// job's result).
    pub fn final_values(
        &self,
    ) -> std::collections::BTreeMap<cutpoint_core::Key, cutpoint_core::Value> {
        let merged = self.final_state.iter().flat_map(|t| t.iter());
        merged.map(|(k, v)| (k.clone(), v)).collect()
    }

    fn new() -> Self {
        Self {
            final_state: Vec::new(),
            stage_state: Vec::new(),
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
        seq: 0,
    }
}

/// The facts while checkpoint `p`'s `_metadata` is written (it may hang):
/// GC's sweeps must still count it and its files as pending, though the
/// tracker no longer holds it and the loop states facts only after this.
fn publishing_facts(tracker: &CheckpointTracker, p: &PendingCheckpoint) -> GcFacts {
    let mut f = facts(tracker);
    f.pending.insert(p.id);
    f.pending_files.extend(
        p.acks
            .values()
            .flat_map(|s| &s.files)
            .map(|f| f.path.clone()),
    );
    f
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
        reply: SavepointReply,
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
type SavepointReply = oneshot::Sender<Result<SavepointInfo, SavepointError>>;

/// Why a savepoint was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SavepointError {
    /// Its checkpoint could not be triggered (the job is not running, too
    /// many in flight, …).
    #[error("savepoint not triggered: {0}")]
    Refused(#[from] TriggerRefusal),
    /// Its checkpoint failed (declined, expired, or the job failed).
    #[error("checkpoint {checkpoint} of the savepoint failed: {reason}")]
    CheckpointFailed {
        checkpoint: CheckpointId,
        reason: String,
    },
    /// Copying the completed checkpoint into `savepoints/` failed.
    #[error("copying checkpoint {checkpoint} to a savepoint: {source}")]
    Copy {
        checkpoint: CheckpointId,
        #[source]
        source: StorageError,
    },
    /// `{job}-{checkpoint}` is not a valid savepoint id (too long).
    #[error("no savepoint id for checkpoint {checkpoint}: {source}")]
    Name {
        checkpoint: CheckpointId,
        #[source]
        source: cutpoint_core::CoreError,
    },
    /// The job ended before the savepoint was stored.
    #[error("the job ended before the savepoint was stored")]
    JobEnded,
}

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
    /// Event time: the watermark the task sent last (ms; the end of
    /// time, `i64::MAX`, once its input ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
    /// Event time, keyed tasks: timers waiting in the task's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timers_pending: Option<u64>,
    /// Event time, keyed tasks: records its windows dropped as late in
    /// this attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_records: Option<u64>,
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
    pub async fn trigger_savepoint(&self) -> Result<SavepointInfo, SavepointError> {
        self.ask(|reply| Command::TriggerSavepoint { reply })
            .await
            .unwrap_or(Err(SavepointError::JobEnded))
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

    /// Records, offsets and watermarks of the running attempt's tasks (empty while
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
                    watermark_ms: c.watermark(),
                    timers_pending: self.time_stat(task, c).map(|(t, _)| t),
                    late_records: self.time_stat(task, c).map(|(_, l)| l),
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// A keyed task's timers and late records, in a job with event time
    /// or a window (of processing time too).
    fn time_stat(&self, task: &TaskId, c: &TaskCounters) -> Option<(u64, u64)> {
        let keyed = task.operator.as_str() != cutpoint_runtime::SOURCE_OPERATOR;
        let timed = self.spec.event_time.is_some()
            || self.spec.window.is_some()
            || matches!(
                self.spec.aggregate,
                cutpoint_core::spec::AggregateSpec::Process { .. }
            );
        (keyed && timed).then(|| c.time_stats())
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
        retained_at_start: BTreeSet::new(),
        gc_retry_at: None,
        savepoints: Default::default(),
        spec: spec.clone(),
        storage: cfg.storage,
        functions: cfg.functions,
        local_dir: cfg.local_dir,
        work: None,
        lease: None,
        first_id: CheckpointId(0),
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
    /// The checkpoints storage held at the start, all retained then: with
    /// the ids of this run's leases, the checkpoints this run may have
    /// handed to GC to delete (see `restart_gc_if_stopped`).
    retained_at_start: BTreeSet<CheckpointId>,
    /// A failed GC restart is tried again after this.
    gc_retry_at: Option<Instant>,
    savepoints: std::collections::HashMap<CheckpointId, SavepointReply>,
    spec: Arc<JobSpec>,
    storage: CheckpointStorage,
    functions: cutpoint_runtime::Functions,
    local_dir: PathBuf,
    /// The locked work dir, from the start of the run to its end.
    work: Option<Arc<WorkDir>>,
    /// This run's writer lease (one writer per job): its epoch is checked
    /// before every publish and delete; its ids are the checkpoint ids.
    lease: Option<WriterLease>,
    /// The first checkpoint id of this run (its first lease's).
    first_id: CheckpointId,
    /// One writer per job: checked before publishing (and by GC before
    /// deleting); once fenced, the run stops.
    fence: Option<Arc<Fence>>,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<JobStatus>,
    cancel: CancellationToken,
    stats: Arc<Mutex<StatsBook>>,
    live: LiveCounters,
}

/// What carrying out a decision means for the attempt.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Continue,
    /// Checkpoint failures exceeded `tolerable_failures`: the attempt fails.
    FailJob(String),
}

/// What the event loop does after one event.
enum Next {
    Continue,
    FailJob(String),
    End(AttemptEnd),
}

impl From<Verdict> for Next {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Continue => Next::Continue,
            Verdict::FailJob(r) => Next::FailJob(r),
        }
    }
}

/// How one attempt ended.
enum AttemptEnd {
    Finished(Vec<(OperatorId, ResultTable)>),
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
    tables: Vec<(OperatorId, ResultTable)>,
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

mod checkpoints;
mod events;
mod runner;
