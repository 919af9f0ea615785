//! Choosing the checkpoint to restore from, from storage alone.

use std::fmt;
use std::str::FromStr;

use cutpoint_core::{CheckpointId, CheckpointMetadata, JobId};
use cutpoint_storage::{CheckpointStorage, StorageError};

use crate::JobError;

/// Which checkpoint a restore starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreFrom {
    /// The newest checkpoint whose metadata verifies.
    Latest,
    /// Exactly this checkpoint (no fallback).
    Checkpoint(CheckpointId),
}

impl FromStr for RestoreFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "latest" {
            return Ok(RestoreFrom::Latest);
        }
        s.parse::<CheckpointId>()
            .map(RestoreFrom::Checkpoint)
            .map_err(|_| format!("expected `latest` or a checkpoint id, got {s:?}"))
    }
}

impl fmt::Display for RestoreFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreFrom::Latest => f.write_str("latest"),
            RestoreFrom::Checkpoint(id) => write!(f, "{id}"),
        }
    }
}

/// Reads and verifies the metadata of the checkpoint to restore.
pub async fn resolve(
    storage: &CheckpointStorage,
    job: &JobId,
    from: RestoreFrom,
) -> Result<CheckpointMetadata, JobError> {
    match from {
        RestoreFrom::Checkpoint(id) => storage.read_metadata(job, id).await.map_err(|e| {
            if let StorageError::MetadataMissing { .. } = e {
                JobError::CheckpointNotFound {
                    job: job.to_string(),
                    checkpoint: id.0,
                }
            } else if e.is_data_error() {
                JobError::Restore(format!("checkpoint {id} of job {job}: {e}"))
            } else {
                JobError::Storage(e)
            }
        }),
        RestoreFrom::Latest => {
            let mut skipped = Vec::new();
            for listing in storage.list_checkpoints(job).await? {
                match listing.metadata {
                    Ok(meta) => {
                        for s in &skipped {
                            tracing::warn!(job = %job, "skipped unusable checkpoint: {s}");
                        }
                        return Ok(meta);
                    }
                    Err(e) => skipped.push(format!("chk-{}: {e}", listing.checkpoint_id)),
                }
            }
            Err(JobError::NoCheckpoint {
                job: job.to_string(),
                detail: if skipped.is_empty() {
                    String::new()
                } else {
                    format!(" (unusable: {})", skipped.join("; "))
                },
            })
        }
    }
}
