//! The storage layout, built in this one place from validated parts:
//!
//! ```text
//! {root}/jobs/{job_id}/job.json
//! {root}/jobs/{job_id}/_writer/{epoch:020}          one per writer that took the job
//! {root}/jobs/{job_id}/chk-{n}/_metadata
//! {root}/jobs/{job_id}/chk-{n}/{operator}/{subtask}/{file}
//! {root}/jobs/{job_id}/shared/{operator}/{subtask}/{file}
//! ```
//!
//! Job and operator ids are validated newtypes; file names are checked here.
//! State file paths inside metadata are stored relative to the job folder.

use cutpoint_core::{CheckpointId, JobId, OperatorId, SubtaskIndex};
use object_store::path::Path;

/// Paths of one job under a storage root.
#[derive(Debug, Clone)]
pub struct JobPaths {
    job_root: Path,
}

/// Whether a state file belongs to one checkpoint or is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateScope {
    Checkpoint(CheckpointId),
    Shared,
}

/// Prefix of every checkpoint folder name.
pub const CHECKPOINT_PREFIX: &str = "chk-";
/// Name of the metadata object inside a checkpoint folder.
pub const METADATA_NAME: &str = "_metadata";
/// Folder of the writer epochs inside a job folder.
pub const WRITERS_DIR: &str = "_writer";

/// Parses a writer epoch object's name.
pub fn parse_writer_epoch(name: &str) -> Option<u64> {
    (name.len() == 20).then(|| name.parse().ok())?
}

/// `chk-{n}/_metadata`, relative to the job folder.
pub fn metadata_relative(id: CheckpointId) -> String {
    format!("{CHECKPOINT_PREFIX}{}/{METADATA_NAME}", id.0)
}

/// Parses `chk-{n}` into `n`.
pub fn parse_checkpoint_dir(name: &str) -> Option<CheckpointId> {
    name.strip_prefix(CHECKPOINT_PREFIX)?.parse().ok()
}

/// A state file name: 1–255 characters of `[A-Za-z0-9._-]`, not `.`/`..`.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl JobPaths {
    pub fn new(root: &Path, job: &JobId) -> Self {
        Self {
            job_root: root.child("jobs").child(job.as_str()),
        }
    }

    /// `{root}/savepoints/{id}` — a savepoint's folder.
    pub fn savepoint_root(root: &Path, id: &cutpoint_core::SavepointId) -> Path {
        root.child("savepoints").child(id.as_str())
    }

    /// `{root}/jobs` — parent of every job folder.
    pub fn jobs_root(root: &Path) -> Path {
        root.child("jobs")
    }

    pub fn job_root(&self) -> &Path {
        &self.job_root
    }

    pub fn job_spec(&self) -> Path {
        self.job_root.child("job.json")
    }

    pub fn checkpoint_dir(&self, id: CheckpointId) -> Path {
        self.job_root.child(format!("{CHECKPOINT_PREFIX}{}", id.0))
    }

    pub fn metadata(&self, id: CheckpointId) -> Path {
        self.checkpoint_dir(id).child(METADATA_NAME)
    }

    /// `_writer/`: the writer epochs of the job (see
    /// [`crate::CheckpointStorage::take_writer_epoch`]).
    pub fn writers_dir(&self) -> Path {
        self.job_root.child(WRITERS_DIR)
    }

    /// `_writer/{epoch:020}`: the object a writer takes the job with.
    pub fn writer_epoch(&self, epoch: u64) -> Path {
        self.writers_dir().child(format!("{epoch:020}"))
    }

    pub fn shared_dir(&self) -> Path {
        self.job_root.child("shared")
    }

    /// Relative path (as stored in metadata) of a subtask's state file.
    /// Panics on a file name outside `[A-Za-z0-9._-]`: names come from
    /// RocksDB or from this crate, never from users.
    pub fn state_file_relative(
        scope: StateScope,
        operator: &OperatorId,
        subtask: SubtaskIndex,
        name: &str,
    ) -> String {
        assert!(valid_file_name(name), "invalid state file name {name:?}");
        let dir = match scope {
            StateScope::Checkpoint(id) => format!("{CHECKPOINT_PREFIX}{}", id.0),
            StateScope::Shared => "shared".to_string(),
        };
        format!("{dir}/{operator}/{subtask}/{name}")
    }

    /// Absolute object path of a relative state file path (already checked
    /// by `CheckpointMetadata::verify` or built by `state_file_relative`).
    pub fn resolve(&self, relative: &str) -> Path {
        relative
            .split('/')
            .fold(self.job_root.clone(), |p, seg| p.child(seg))
    }

    /// Path relative to the job folder, if `path` lies under it.
    pub fn relative(&self, path: &Path) -> Option<String> {
        let parts: Vec<_> = path
            .prefix_match(&self.job_root)?
            .map(|p| p.as_ref().to_string())
            .collect();
        Some(parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = JobPaths::new(&Path::from("base"), &JobId::new("pv").unwrap());
        assert_eq!(
            p.metadata(CheckpointId(7)).as_ref(),
            "base/jobs/pv/chk-7/_metadata"
        );
        let op = OperatorId::new("agg").unwrap();
        let rel =
            JobPaths::state_file_relative(StateScope::Shared, &op, SubtaskIndex(1), "000009.sst");
        assert_eq!(rel, "shared/agg/1/000009.sst");
        assert_eq!(
            p.resolve(&rel).as_ref(),
            "base/jobs/pv/shared/agg/1/000009.sst"
        );
        assert_eq!(p.relative(&p.resolve(&rel)).unwrap(), rel);
        assert_eq!(parse_checkpoint_dir("chk-12"), Some(CheckpointId(12)));
        assert_eq!(parse_checkpoint_dir("chk-x"), None);
    }

    #[test]
    #[should_panic]
    fn bad_file_names_panic() {
        let op = OperatorId::new("agg").unwrap();
        JobPaths::state_file_relative(StateScope::Shared, &op, SubtaskIndex(0), "../x");
    }
}
