//! Storage errors: precise variants, each naming the object involved.

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("invalid checkpoint location {location:?}: {reason}")]
    InvalidLocation { location: String, reason: String },
    #[error("object store {op} of {path} failed: {source}")]
    ObjectStore {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{path} already exists (immutable objects are never overwritten)")]
    AlreadyExists { path: String },
    #[error(
        "checkpoint {checkpoint} of job {job} has no _metadata: it never completed or was deleted"
    )]
    MetadataMissing { job: String, checkpoint: u64 },
    #[error("corrupt checkpoint metadata {path}: {reason}")]
    CorruptMetadata { path: String, reason: String },
    #[error("savepoint {id} has no _metadata: it does not exist or was never completed")]
    SavepointMissing { id: String },
    #[error("state file {path} is missing from storage")]
    StateFileMissing { path: String },
    #[error("state file {path} is corrupt: expected {expected_size} bytes with crc32c {expected_crc:08x}, found {actual_size} bytes with crc32c {actual_crc:08x}")]
    ChecksumMismatch {
        path: String,
        expected_size: u64,
        expected_crc: u32,
        actual_size: u64,
        actual_crc: u32,
    },
    #[error("local file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("job spec {path} is unreadable: {reason}")]
    CorruptJobSpec { path: String, reason: String },
    #[error("no job spec stored for job {job}")]
    JobSpecMissing { job: String },
    #[error("savepoint path {path} is not a savepoint of this storage ({root}/savepoints/…): restore with its storage as the checkpoint location, or copy it there")]
    SavepointElsewhere { path: String, root: String },
    #[error("channel state {path} is corrupt at line {line}: {reason}")]
    CorruptChannelState {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("job {job}: writer epoch {epoch} is fenced: writer epoch {newer} took over the job's storage (one writer per job); this writer stops and deletes nothing")]
    Fenced { job: String, epoch: u64, newer: u64 },
    #[error(transparent)]
    FailPoint(#[from] cutpoint_core::failpoint::InjectedFault),
}

impl StorageError {
    pub(crate) fn store(
        op: &'static str,
        path: &object_store::path::Path,
        source: object_store::Error,
    ) -> Self {
        match source {
            object_store::Error::AlreadyExists { .. } => StorageError::AlreadyExists {
                path: path.to_string(),
            },
            source => StorageError::ObjectStore {
                op,
                path: path.to_string(),
                source,
            },
        }
    }

    /// True for errors that say the data itself is bad or gone (as opposed
    /// to storage being unreachable): restoring this checkpoint cannot work.
    pub fn is_data_error(&self) -> bool {
        matches!(
            self,
            StorageError::MetadataMissing { .. }
                | StorageError::SavepointMissing { .. }
                | StorageError::CorruptMetadata { .. }
                | StorageError::StateFileMissing { .. }
                | StorageError::ChecksumMismatch { .. }
                | StorageError::CorruptChannelState { .. }
        )
    }
}
