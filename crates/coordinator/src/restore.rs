//! Resolving what a restore starts from, from storage alone: the I/O side
//! of [`crate::recovery`] (which decides) for `latest`, and the lookups of
//! a chosen checkpoint or savepoint.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use cutpoint_core::{CheckpointId, CheckpointMetadata, JobId, SavepointId};
use cutpoint_storage::{CheckpointListing, CheckpointStorage, StorageError};

use crate::recovery::{newest_restorable, Candidate, Choice, MetadataRead};
use crate::JobError;

/// Which checkpoint a restore starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreFrom {
    /// The newest checkpoint whose metadata verifies.
    Latest,
    /// Exactly this checkpoint (no fallback).
    Checkpoint(CheckpointId),
    /// A savepoint (imported as a new checkpoint of the job first).
    Savepoint(SavepointId),
    /// A savepoint by its path (`external_path`, e.g.
    /// `s3://bucket/prefix/savepoints/pv-12` or a local path); it must lie
    /// in the job's storage.
    SavepointPath(String),
}

impl FromStr for RestoreFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "latest" {
            return Ok(RestoreFrom::Latest);
        }
        if let Some(sp) = s.strip_prefix("savepoint:") {
            if sp.contains('/') {
                return Ok(RestoreFrom::SavepointPath(sp.to_string()));
            }
            return SavepointId::new(sp)
                .map(RestoreFrom::Savepoint)
                .map_err(|e| e.to_string());
        }
        s.parse::<CheckpointId>()
            .map(RestoreFrom::Checkpoint)
            .map_err(|_| {
                format!("expected `latest`, a checkpoint id, `savepoint:ID` or `savepoint:PATH`, got {s:?}")
            })
    }
}

impl fmt::Display for RestoreFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreFrom::Latest => f.write_str("latest"),
            RestoreFrom::Checkpoint(id) => write!(f, "{id}"),
            RestoreFrom::Savepoint(id) => write!(f, "savepoint:{id}"),
            RestoreFrom::SavepointPath(p) => write!(f, "savepoint:{p}"),
        }
    }
}

/// Makes the restore point a checkpoint of `job` and returns its metadata:
/// a savepoint is imported as checkpoint `import_as` (an id of the writer's
/// lease, never used before); checkpoints are resolved as by [`resolve`].
pub async fn prepare(
    storage: &CheckpointStorage,
    job: &JobId,
    from: RestoreFrom,
    import_as: CheckpointId,
) -> Result<CheckpointMetadata, JobError> {
    let from = by_id(storage, from)?;
    match from {
        RestoreFrom::Savepoint(sp) => {
            let next = import_as;
            let meta = storage
                .import_savepoint(&sp, job, next)
                .await
                .map_err(savepoint_error(&sp))?;
            tracing::info!(job = %job, savepoint = %sp, checkpoint = %next, "imported savepoint");
            Ok(meta)
        }
        other => resolve(storage, job, other).await,
    }
}

/// A savepoint named by path becomes one named by id (checked to lie in
/// `storage`); everything else passes through.
fn by_id(storage: &CheckpointStorage, from: RestoreFrom) -> Result<RestoreFrom, JobError> {
    match from {
        RestoreFrom::SavepointPath(p) => storage
            .savepoint_at(&p)
            .map(RestoreFrom::Savepoint)
            .map_err(JobError::Storage),
        other => Ok(other),
    }
}

fn savepoint_error(sp: &SavepointId) -> impl Fn(StorageError) -> JobError + '_ {
    move |e| match e {
        StorageError::SavepointMissing { .. } => JobError::SavepointNotFound(sp.to_string()),
        e if e.is_data_error() => JobError::Restore(format!("savepoint {sp}: {e}")),
        e => JobError::Storage(e),
    }
}

/// Reads and verifies the metadata of the checkpoint (or savepoint) to
/// restore, without changing storage.
pub async fn resolve(
    storage: &CheckpointStorage,
    job: &JobId,
    from: RestoreFrom,
) -> Result<CheckpointMetadata, JobError> {
    let from = by_id(storage, from)?;
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
        RestoreFrom::Savepoint(sp) => storage
            .read_savepoint(&sp)
            .await
            .map_err(savepoint_error(&sp)),
        RestoreFrom::SavepointPath(_) => unreachable!("by_id resolved the path"),
        RestoreFrom::Latest => {
            let mut listings = storage.list_checkpoints(job).await?;
            let candidates: Vec<Candidate> = listings.iter().map(candidate).collect();
            match newest_restorable(&candidates, &BTreeSet::new()) {
                Choice::Restore { id, skipped } => {
                    for s in &skipped {
                        tracing::warn!(job = %job, "skipped unusable checkpoint: {s}");
                    }
                    let at = listings
                        .iter()
                        .position(|l| l.checkpoint_id == id)
                        .expect("chosen from the listing");
                    Ok(listings.swap_remove(at).metadata.expect("readable"))
                }
                Choice::Nothing { skipped } => Err(JobError::NoCheckpoint {
                    job: job.to_string(),
                    detail: if skipped.is_empty() {
                        String::new()
                    } else {
                        format!(" (unusable: {})", skipped.join("; "))
                    },
                }),
                Choice::Unreachable { id, .. } => {
                    let at = listings
                        .iter()
                        .position(|l| l.checkpoint_id == id)
                        .expect("chosen from the listing");
                    Err(JobError::Storage(
                        listings.swap_remove(at).metadata.expect_err("unreachable"),
                    ))
                }
            }
        }
    }
}

/// What a metadata read says to recovery: data errors make a checkpoint
/// skippable, storage errors do not.
pub fn candidate(l: &CheckpointListing) -> Candidate {
    Candidate {
        id: l.checkpoint_id,
        read: read_outcome(&l.metadata),
    }
}

/// [`MetadataRead`] of a metadata read's result.
pub fn read_outcome<T>(r: &Result<T, StorageError>) -> MetadataRead {
    match r {
        Ok(_) => MetadataRead::Readable,
        Err(e) if e.is_data_error() => MetadataRead::Unusable(e.to_string()),
        Err(e) => MetadataRead::Unreachable(e.to_string()),
    }
}
