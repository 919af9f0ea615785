//! Object paths, built in this one place from validated parts: a job's
//! folder under the storage root, and in it the relative names of
//! `cutpoint_core::layout` (which documents every name; metadata stores
//! state file paths relative to the job folder):
//!
//! ```text
//! {root}/jobs/{job_id}/{relative}            job.json, _writer/…, chk-{n}/…, shared/…
//! {root}/savepoints/{savepoint_id}/_metadata a savepoint (self-contained, user-owned)
//! {root}/savepoints/{savepoint_id}/{relative to it}
//! ```
//!
//! Job, operator and savepoint ids are validated newtypes; file names are
//! checked by the layout.

use cutpoint_core::layout;
use cutpoint_core::{CheckpointId, JobId, OperatorId, SavepointId, SubtaskIndex};
use object_store::path::Path;

pub use cutpoint_core::layout::{
    parse_checkpoint_dir, parse_writer_epoch, valid_file_name, StateScope, CHECKPOINT_PREFIX,
    METADATA_NAME, WRITERS_DIR,
};

/// Paths of one job under a storage root.
#[derive(Debug, Clone)]
pub struct JobPaths {
    job_root: Path,
}

/// `chk-{n}/_metadata`, relative to the job folder.
pub fn metadata_relative(id: CheckpointId) -> String {
    layout::metadata(id)
}

/// `root/a/b/c` for a relative path `a/b/c` (no empty or dot segments:
/// callers pass names of the layout).
fn under(root: &Path, relative: &str) -> Path {
    relative
        .split('/')
        .fold(root.clone(), |p, seg| p.child(seg))
}

impl JobPaths {
    pub fn new(root: &Path, job: &JobId) -> Self {
        Self {
            job_root: root.child("jobs").child(job.as_str()),
        }
    }

    /// `{root}/savepoints/{id}` — a savepoint's folder.
    pub fn savepoint_root(root: &Path, id: &SavepointId) -> Path {
        root.child("savepoints").child(id.as_str())
    }

    /// An object of a savepoint, by its path relative to the savepoint.
    pub fn savepoint_file(root: &Path, id: &SavepointId, relative: &str) -> Path {
        under(&Self::savepoint_root(root, id), relative)
    }

    /// `{root}/savepoints` — parent of every savepoint.
    pub fn savepoints_root(root: &Path) -> Path {
        root.child("savepoints")
    }

    /// `{root}/jobs` — parent of every job folder.
    pub fn jobs_root(root: &Path) -> Path {
        root.child("jobs")
    }

    pub fn job_root(&self) -> &Path {
        &self.job_root
    }

    pub fn job_spec(&self) -> Path {
        self.job_root.child(layout::JOB_SPEC)
    }

    pub fn checkpoint_dir(&self, id: CheckpointId) -> Path {
        self.job_root.child(layout::checkpoint_dir(id))
    }

    pub fn metadata(&self, id: CheckpointId) -> Path {
        self.checkpoint_dir(id).child(METADATA_NAME)
    }

    /// `_writer/`: the writer leases of the job.
    pub fn writers_dir(&self) -> Path {
        self.job_root.child(WRITERS_DIR)
    }

    /// `_writer/{epoch:020}`: the lease a writer takes the job with.
    pub fn writer_epoch(&self, epoch: u64) -> Path {
        under(&self.job_root, &layout::writer_lease(epoch))
    }

    pub fn shared_dir(&self) -> Path {
        self.job_root.child(layout::SHARED_DIR)
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
        layout::state_file(scope, operator, subtask, name)
    }

    /// Absolute object path of a relative path (a state file already
    /// checked by `CheckpointMetadata::verify` or built by the layout).
    pub fn resolve(&self, relative: &str) -> Path {
        under(&self.job_root, relative)
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
        assert_eq!(
            p.writer_epoch(3).as_ref(),
            "base/jobs/pv/_writer/00000000000000000003"
        );
        let sp = SavepointId::new("pv-12").unwrap();
        assert_eq!(
            JobPaths::savepoint_file(&Path::from("base"), &sp, "shared/agg/0/a.sst").as_ref(),
            "base/savepoints/pv-12/shared/agg/0/a.sst"
        );
    }
}
