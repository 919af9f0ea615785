//! Shared state of the server: checkpoint storage and the jobs it runs.
//!
//! A job id runs at most once at a time in a server. Finished jobs stay
//! listed with their result until the server stops; after a restart, their
//! checkpoints are found through storage (`/v1/storage/...`).
//!
//! A restore is one operation the server owns, not the request that asked
//! for it: it runs in its own task (a request that times out or goes away
//! does not stop it half-way), one at a time per job, and ends with the job
//! running — restored, or, if the restored job could not start, rolled back
//! to its latest checkpoint — and its outcome recorded on the job.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cutpoint_coordinator::{
    restore, spawn_job, JobConfig, JobControl, JobError, JobState, RestoreFrom,
};
use cutpoint_core::{now_millis, JobId, JobSpec};
use cutpoint_storage::CheckpointStorage;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::error::{ApiError, ErrorKind};

/// How a job that is no longer running ended.
#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    /// Finished, failed or cancelled.
    pub state: JobState,
    pub records_read: u64,
    pub restarts: u32,
    pub duration_ms: u64,
    pub keys: usize,
    pub failures: Vec<String>,
    pub error: Option<String>,
    pub end_timestamp: u64,
}

impl JobResult {
    fn of(r: Result<cutpoint_coordinator::JobOutcome, JobError>) -> Self {
        match r {
            Ok(o) => JobResult {
                state: JobState::Finished,
                records_read: o.records_read,
                restarts: o.restarts,
                duration_ms: o.duration.as_millis() as u64,
                keys: o.final_state.iter().map(|t| t.len()).sum(),
                failures: o.failures,
                error: None,
                end_timestamp: now_millis(),
            },
            Err(e) => JobResult {
                state: match e {
                    JobError::Cancelled => JobState::Cancelled,
                    _ => JobState::Failed,
                },
                records_read: 0,
                restarts: 0,
                duration_ms: 0,
                keys: 0,
                failures: Vec::new(),
                error: Some(e.to_string()),
                end_timestamp: now_millis(),
            },
        }
    }
}

/// A job this server started.
#[derive(Clone)]
pub struct JobEntry {
    pub control: JobControl,
    pub start_timestamp: u64,
    pub result: Arc<Mutex<Option<JobResult>>>,
    /// The last restore operation that ended with this entry current.
    pub last_restore: Arc<Mutex<Option<RestoreRecord>>>,
}

impl JobEntry {
    pub fn result(&self) -> Option<JobResult> {
        self.result.lock().expect("result lock").clone()
    }

    pub fn last_restore(&self) -> Option<RestoreRecord> {
        self.last_restore.lock().expect("restore lock").clone()
    }

    fn record(&self, r: RestoreRecord) {
        *self.last_restore.lock().expect("restore lock") = Some(r);
    }
}

/// What a restore operation did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreRecord {
    /// What the restore asked for (`latest`, a checkpoint id, `savepoint:…`).
    pub requested: String,
    pub end_timestamp: u64,
    #[serde(flatten)]
    pub outcome: RestoreOutcome,
}

/// How a restore operation ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RestoreOutcome {
    /// The job runs from what was asked.
    Restored,
    /// The restored job could not start; the job that ran before was
    /// started again from its latest checkpoint.
    RolledBack { error: String },
    /// Neither the restore nor the rollback could start the job.
    Failed { error: String },
}

/// How long a restore waits to see the restored job running before it
/// counts as restored anyway (its tasks may take long to download state).
const RESTORE_CONFIRM: std::time::Duration = std::time::Duration::from_secs(120);

/// Waits until every task of the started job restored its state (or the
/// job ended by itself): an error if it failed or was cancelled.
async fn started(entry: &JobEntry) -> Result<(), ApiError> {
    let mut control = entry.control.clone();
    let wait = control.wait_for(|s| s.tasks_running || s.state.is_final());
    let Ok(s) = tokio::time::timeout(RESTORE_CONFIRM, wait).await else {
        return Ok(());
    };
    if matches!(s.state, JobState::Failed | JobState::Cancelled) {
        // Its result is recorded right after; a rollback needs it ended.
        for _ in 0..200 {
            if entry.result().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    match s.state {
        // The restore point does not fit the job as it is (a file gone, an
        // offset outside the input, …): a conflict with the job, not a
        // malformed request.
        JobState::Failed | JobState::Cancelled => Err(ApiError::new(
            ErrorKind::Conflict,
            format!(
                "the restored job did not start: {}",
                s.last_failure.unwrap_or_else(|| "it ended".into())
            ),
        )),
        _ => Ok(()),
    }
}

/// Removes a job from the starting ones when dropped.
pub(crate) struct StartGuard {
    state: Arc<AppState>,
    job: JobId,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        self.state
            .starting
            .lock()
            .expect("starting lock")
            .remove(&self.job);
    }
}

/// Removes a job from the operations in progress when dropped.
pub(crate) struct OperationGuard {
    state: Arc<AppState>,
    job: JobId,
}

impl Drop for OperationGuard {
    fn drop(&mut self) {
        self.state
            .operations
            .lock()
            .expect("operations lock")
            .remove(&self.job);
    }
}

pub struct AppState {
    pub storage: CheckpointStorage,
    pub work_dir: PathBuf,
    pub token: Option<String>,
    pub metrics: Option<PrometheusHandle>,
    /// Whether `POST /v1/jobs` accepts the spec's test knobs
    /// ([`crate::routes::TEST_KNOBS`]); off unless `--enable-test-knobs`.
    pub test_knobs: bool,
    /// The program's keyed process functions (a spec's `process` aggregate
    /// names one; others are refused with 400).
    pub functions: cutpoint_coordinator::Functions,
    jobs: Mutex<BTreeMap<JobId, JobEntry>>,
    /// Jobs with a restore operation in progress.
    operations: Mutex<std::collections::BTreeSet<JobId>>,
    /// Jobs being started (between the check and the spawn).
    starting: Mutex<std::collections::BTreeSet<JobId>>,
}

impl AppState {
    pub fn new(
        storage: CheckpointStorage,
        work_dir: PathBuf,
        token: Option<String>,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        Self {
            storage,
            work_dir,
            token,
            metrics,
            test_knobs: false,
            functions: Default::default(),
            jobs: Mutex::new(BTreeMap::new()),
            operations: Mutex::new(Default::default()),
            starting: Mutex::new(Default::default()),
        }
    }

    pub fn job(&self, id: &JobId) -> Option<JobEntry> {
        self.jobs.lock().expect("jobs lock").get(id).cloned()
    }

    pub fn jobs(&self) -> Vec<(JobId, JobEntry)> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The spec of a job this server knows, else the one stored beside its
    /// checkpoints (so a fresh server can restore from storage alone).
    pub async fn job_spec(&self, id: &JobId) -> Result<JobSpec, ApiError> {
        match self.job(id) {
            Some(e) => Ok(e.control.spec().clone()),
            None => Ok(self.storage.read_job_spec(id).await?),
        }
    }

    /// The entry of a job this server runs now, or 404/409.
    pub fn running(&self, id: &JobId) -> Result<JobEntry, ApiError> {
        let entry = self.job(id).ok_or_else(|| {
            ApiError::not_found(format!(
                "job {id} is not running on this server (see /v1/storage/jobs/{id}/checkpoints)"
            ))
        })?;
        if entry.result().is_some() {
            return Err(ApiError::conflict(format!(
                "job {id} is not running (it ended)"
            )));
        }
        Ok(entry)
    }

    /// Starts a job, after checking that what it restores from exists.
    pub async fn start_job(
        self: &Arc<Self>,
        spec: JobSpec,
        restore_from: Option<RestoreFrom>,
    ) -> Result<JobEntry, ApiError> {
        let id = spec.job_id.clone();
        // Claimed before anything is awaited: two starts of one job never
        // both spawn (the second would take the storage from the first).
        let _starting = self.claim_start(&id)?;
        self.functions
            .check(&spec)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        if let Some(from) = &restore_from {
            restore::resolve(&self.storage, &id, from.clone()).await?;
        }
        // One work dir per job: locked while the job runs, emptied when it
        // starts again (a killed run's files go then).
        let local_dir = self.work_dir.join(id.as_str());
        let handle = spawn_job(JobConfig {
            spec,
            storage: self.storage.clone(),
            restore_from,
            local_dir,
            functions: self.functions.clone(),
        });
        let entry = JobEntry {
            control: handle.control(),
            start_timestamp: now_millis(),
            result: Arc::new(Mutex::new(None)),
            last_restore: Arc::new(Mutex::new(None)),
        };
        self.jobs
            .lock()
            .expect("jobs lock")
            .insert(id.clone(), entry.clone());
        let result = entry.result.clone();
        tokio::spawn(async move {
            let r = JobResult::of(handle.join().await);
            tracing::info!(job = %id, state = ?r.state, error = ?r.error, "job ended");
            *result.lock().expect("result lock") = Some(r);
        });
        Ok(entry)
    }

    /// Marks `job` as starting, unless it runs or starts already.
    pub(crate) fn claim_start(self: &Arc<Self>, job: &JobId) -> Result<StartGuard, ApiError> {
        let jobs = self.jobs.lock().expect("jobs lock");
        if jobs.get(job).is_some_and(|e| e.result().is_none()) {
            return Err(ApiError::conflict(format!(
                "job {job} is already running; cancel it first"
            )));
        }
        if !self
            .starting
            .lock()
            .expect("starting lock")
            .insert(job.clone())
        {
            return Err(ApiError::conflict(format!("job {job} is starting already")));
        }
        Ok(StartGuard {
            state: self.clone(),
            job: job.clone(),
        })
    }

    /// Whether a restore of `job` is in progress (a submit must wait).
    pub fn restoring(&self, job: &JobId) -> bool {
        self.operations
            .lock()
            .expect("operations lock")
            .contains(job)
    }

    /// Restores `job` from `from` (see the module docs): stops the running
    /// job, starts it from `from`, rolls back to its latest checkpoint if
    /// that start fails. Runs in a task of its own; the returned future
    /// only waits for it.
    pub async fn restore_job(
        self: &Arc<Self>,
        job: JobId,
        from: RestoreFrom,
    ) -> Result<JobEntry, ApiError> {
        let guard = self.begin_operation(&job)?;
        let op = tokio::spawn(async move {
            let state = guard.state.clone();
            state.restore_op(&guard.job, from).await
        });
        op.await
            .map_err(|e| ApiError::new(ErrorKind::Internal, format!("restore task: {e}")))?
    }

    pub(crate) fn begin_operation(
        self: &Arc<Self>,
        job: &JobId,
    ) -> Result<OperationGuard, ApiError> {
        if !self
            .operations
            .lock()
            .expect("operations lock")
            .insert(job.clone())
        {
            return Err(ApiError::conflict(format!(
                "a restore of job {job} is in progress"
            )));
        }
        Ok(OperationGuard {
            state: self.clone(),
            job: job.clone(),
        })
    }

    async fn restore_op(
        self: &Arc<Self>,
        job: &JobId,
        from: RestoreFrom,
    ) -> Result<JobEntry, ApiError> {
        restore::resolve(&self.storage, job, from.clone()).await?;
        let spec = self.job_spec(job).await?;
        let previous = self.job(job).filter(|e| e.result().is_none());
        if previous.is_some() {
            self.stop_job(job).await?;
        }
        let record = |outcome| RestoreRecord {
            requested: from.to_string(),
            end_timestamp: now_millis(),
            outcome,
        };
        let error = match self.start_job(spec.clone(), Some(from.clone())).await {
            Ok(entry) => match started(&entry).await {
                Ok(()) => {
                    entry.record(record(RestoreOutcome::Restored));
                    return Ok(entry);
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        let Some(previous) = previous else {
            return Err(error);
        };
        tracing::error!(job = %job, error = %error.detail, "restore failed; rolling back to the job's latest checkpoint");
        match self.start_job(spec, Some(RestoreFrom::Latest)).await {
            Ok(entry) => {
                entry.record(record(RestoreOutcome::RolledBack {
                    error: error.detail.clone(),
                }));
                Err(ApiError::new(
                    error.kind,
                    format!(
                        "{}; the job was started again from its latest checkpoint",
                        error.detail
                    ),
                ))
            }
            Err(e) => {
                previous.record(record(RestoreOutcome::Failed {
                    error: format!("{}; rolling back failed too: {}", error.detail, e.detail),
                }));
                Err(error)
            }
        }
    }

    /// Cancels a running job and waits until it ended.
    pub async fn stop_job(&self, id: &JobId) -> Result<(), ApiError> {
        let entry = self.running(id)?;
        let mut control = entry.control.clone();
        control.cancel();
        control.wait_for(|s| s.state.is_final()).await;
        // The monitor stores the result right after; wait for it briefly.
        for _ in 0..200 {
            if entry.result().is_some() {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(())
    }
}
