//! Why a job could not run or failed.

use cutpoint_storage::StorageError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    #[error("cannot restore: {0}")]
    Restore(String),
    /// The spec cannot run in this program (e.g. it names a function the
    /// program did not register).
    #[error("invalid job: {0}")]
    Invalid(String),
    #[error(
        "checkpoint {checkpoint} of job {job} has no _metadata: it never completed or was deleted"
    )]
    CheckpointNotFound { job: String, checkpoint: u64 },
    #[error("savepoint {0} does not exist (no _metadata under savepoints/{0}/)")]
    SavepointNotFound(String),
    #[error("no restorable checkpoint of job {job} in storage{detail}")]
    NoCheckpoint { job: String, detail: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("job failed: {reason}")]
    Failed { reason: String },
    #[error("job was cancelled")]
    Cancelled,
    #[error("work dir {path} is in use by another process (each running job needs its own; pass another --work-dir)")]
    WorkDirInUse { path: String },
    #[error("work dir {path}: {reason}")]
    WorkDir { path: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}
