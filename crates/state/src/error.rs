//! State backend errors.

use cutpoint_storage::StorageError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("rocksdb {op} in {dir}: {source}")]
    Rocks {
        op: &'static str,
        dir: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("local state directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state in {dir} holds an undecodable entry: {reason}")]
    CorruptState { dir: String, reason: String },
    #[error("local state directory {path} is not empty: a fresh start or a restore never opens state left behind")]
    NotEmpty { path: String },
    #[error("snapshot cancelled (checkpoint aborted)")]
    Cancelled,
    /// Restarting cannot help: the same input overflows again.
    #[error("the aggregate of key {key} overflows a 64-bit integer (kept at the limit); the input's values are too large for a sum")]
    Overflow { key: String },
    #[error(transparent)]
    FailPoint(#[from] cutpoint_core::failpoint::InjectedFault),
}

impl StateError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        StateError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
