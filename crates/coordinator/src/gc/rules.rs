//! Garbage-collection rules (pure): which checkpoints a user may delete.
//!
//! One set of rules for a running job and for storage alone (no job runs):
//! - only a retained (restorable) checkpoint can be deleted;
//! - the only restorable checkpoint needs `force`: without it nothing would
//!   be left to restore;
//! - the base of a running job's next incremental snapshot (the newest
//!   checkpoint it completed, or restored from) needs `force`: its shared
//!   files are reused by that snapshot. With `force` the job forgets the
//!   base and its next snapshot uploads every file; snapshots already in
//!   flight keep what they reference (shared-file release waits for them).

use cutpoint_core::CheckpointId;

/// Why a retained checkpoint was not deleted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeleteRefusal {
    #[error("checkpoint {0} is not a retained checkpoint of this job")]
    NotFound(CheckpointId),
    #[error("checkpoint {0} is the only restorable checkpoint; pass force to delete it anyway")]
    OnlyRestorable(CheckpointId),
    #[error("checkpoint {0} is the base of the next incremental checkpoint; pass force to delete it anyway (the next checkpoint then uploads every file)")]
    Newest(CheckpointId),
    #[error("the job is not running")]
    NotRunning,
    #[error("checkpoint {0} is no longer restorable, but deleting its files failed (storage); they are deleted on a retry")]
    NotDeletedYet(CheckpointId),
}

/// Whether the user may delete `id`, given the `retained` checkpoints, the
/// running job's incremental `base` (`None` without a running job) and
/// `force`.
pub fn may_delete(
    id: CheckpointId,
    retained: &[CheckpointId],
    base: Option<CheckpointId>,
    force: bool,
) -> Result<(), DeleteRefusal> {
    if !retained.contains(&id) {
        return Err(DeleteRefusal::NotFound(id));
    }
    if force {
        return Ok(());
    }
    if retained.len() == 1 {
        return Err(DeleteRefusal::OnlyRestorable(id));
    }
    if base == Some(id) {
        return Err(DeleteRefusal::Newest(id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<CheckpointId> {
        v.iter().map(|i| CheckpointId(*i)).collect()
    }

    #[test]
    fn the_same_rules_with_and_without_a_running_job() {
        let c = CheckpointId;
        assert_eq!(
            may_delete(c(9), &ids(&[1, 2]), None, false),
            Err(DeleteRefusal::NotFound(c(9)))
        );
        assert_eq!(
            may_delete(c(9), &ids(&[1, 2]), None, true),
            Err(DeleteRefusal::NotFound(c(9)))
        );
        // Storage alone: any of several, the only one with force.
        assert_eq!(may_delete(c(2), &ids(&[1, 2]), None, false), Ok(()));
        assert_eq!(
            may_delete(c(1), &ids(&[1]), None, false),
            Err(DeleteRefusal::OnlyRestorable(c(1)))
        );
        assert_eq!(may_delete(c(1), &ids(&[1]), None, true), Ok(()));
        // A running job: its base needs force, older ones do not.
        assert_eq!(
            may_delete(c(2), &ids(&[1, 2]), Some(c(2)), false),
            Err(DeleteRefusal::Newest(c(2)))
        );
        assert_eq!(may_delete(c(2), &ids(&[1, 2]), Some(c(2)), true), Ok(()));
        assert_eq!(may_delete(c(1), &ids(&[1, 2]), Some(c(2)), false), Ok(()));
        // The only one, which is also the base: force deletes it.
        assert_eq!(may_delete(c(2), &ids(&[2]), Some(c(2)), true), Ok(()));
    }
}
