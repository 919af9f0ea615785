//! [`RecoveryPolicy`]: which checkpoint a job restores from (pure).
//!
//! Storage code reads what it must (the checkpoints' `_metadata`, newest
//! first) and hands the facts here; the policy returns a decision and the
//! caller carries it out. The one rule for "the newest restorable
//! checkpoint" lives in [`newest_restorable`]; the start-up, restart and
//! fallback paths and the API's listing all use it.
//!
//! Rules:
//! - Only a data error (metadata missing, corrupt, of an unknown version; a
//!   state file missing or corrupt) makes a checkpoint skippable. A storage
//!   error (unreachable, timed out) says nothing about the data: the choice
//!   stops there and the start fails, so an outage never silently restores
//!   an older checkpoint (which would later delete the newer one as
//!   superseded and replay output a two-phase-commit sink already committed).
//! - Checkpoints of earlier runs newer than where this run started are
//!   excluded from automatic restores: they belong to a timeline the user
//!   chose not to continue. A fresh start excludes every existing one.
//! - A checkpoint the user chose is never replaced by another: if it cannot
//!   be restored, the job fails.
//! - A checkpoint picked automatically whose files turn out corrupt during
//!   the restore is excluded and the next older one tried, if
//!   `restart.fallback_to_older_checkpoint` is on.

use std::collections::BTreeSet;

use cutpoint_core::CheckpointId;

/// What reading a checkpoint's `_metadata` told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataRead {
    /// It verifies: the checkpoint can be restored (as far as metadata goes).
    Readable,
    /// The data is bad or gone (missing, corrupt, unknown version).
    Unusable(String),
    /// Storage did not answer: nothing is known about the data.
    Unreachable(String),
}

/// One checkpoint found in storage, as recovery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: CheckpointId,
    pub read: MetadataRead,
}

/// The outcome of looking for the newest restorable checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Restore this one; `skipped` names newer ones with bad data, and why.
    Restore {
        id: CheckpointId,
        skipped: Vec<String>,
    },
    /// Nothing restorable (all skipped, excluded, or none at all).
    Nothing { skipped: Vec<String> },
    /// Storage failed while reading `id`: fail instead of skipping it.
    Unreachable { id: CheckpointId, reason: String },
}

/// The newest candidate not in `excluded` whose metadata is readable,
/// skipping (and naming) only those with bad data. `candidates` may come in
/// any order.
pub fn newest_restorable(candidates: &[Candidate], excluded: &BTreeSet<CheckpointId>) -> Choice {
    let mut sorted: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !excluded.contains(&c.id))
        .collect();
    sorted.sort_by_key(|c| std::cmp::Reverse(c.id));
    let mut skipped = Vec::new();
    for c in sorted {
        match &c.read {
            MetadataRead::Readable => return Choice::Restore { id: c.id, skipped },
            MetadataRead::Unusable(why) => skipped.push(format!(
                "{}: {why}",
                cutpoint_core::layout::checkpoint_dir(c.id)
            )),
            MetadataRead::Unreachable(why) => {
                return Choice::Unreachable {
                    id: c.id,
                    reason: why.clone(),
                }
            }
        }
    }
    Choice::Nothing { skipped }
}

/// Checkpoints of earlier runs an automatic restore must not pick: every
/// one newer than `start` (all of them on a fresh start).
pub fn excluded_at_start(
    existing: impl IntoIterator<Item = CheckpointId>,
    start: Option<CheckpointId>,
) -> BTreeSet<CheckpointId> {
    existing
        .into_iter()
        .filter(|id| start.is_none_or(|s| *id > s))
        .collect()
}

/// Who picked the checkpoint an attempt restored from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChosenBy {
    User,
    Policy,
}

/// How an attempt ended, as far as recovery cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The restored checkpoint's data is bad (found while restoring it).
    CorruptRestore,
    /// Anything that may go away on a restart (a task error, storage).
    Transient,
    /// A failure no restart fixes (a bad job spec, a fenced writer).
    Fatal,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Exclude this checkpoint and restore the next older one at once.
    FallBack { bad: CheckpointId },
    /// Restart from the newest restorable checkpoint after the delay.
    Restart,
    /// Give up: the job fails.
    Fail,
}

/// The recovery settings of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPolicy {
    pub fallback_to_older_checkpoint: bool,
    pub max_restarts: u32,
}

impl RecoveryPolicy {
    /// Decides how to go on after an attempt that restored `restored`
    /// (chosen by `chosen_by`) failed with `failure`; `restarts` so far.
    pub fn after_failure(
        &self,
        failure: AttemptFailure,
        restored: Option<(CheckpointId, ChosenBy)>,
        restarts: u32,
    ) -> AfterFailure {
        match (failure, restored) {
            (AttemptFailure::CorruptRestore, Some((bad, ChosenBy::Policy)))
                if self.fallback_to_older_checkpoint =>
            {
                AfterFailure::FallBack { bad }
            }
            (AttemptFailure::CorruptRestore | AttemptFailure::Fatal, _) => AfterFailure::Fail,
            (AttemptFailure::Transient, _) if restarts >= self.max_restarts => AfterFailure::Fail,
            (AttemptFailure::Transient, _) => AfterFailure::Restart,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, read: MetadataRead) -> Candidate {
        Candidate {
            id: CheckpointId(id),
            read,
        }
    }
    fn ok(id: u64) -> Candidate {
        c(id, MetadataRead::Readable)
    }
    fn set(ids: &[u64]) -> BTreeSet<CheckpointId> {
        ids.iter().map(|i| CheckpointId(*i)).collect()
    }

    #[test]
    fn latest_is_the_newest_readable() {
        let got = newest_restorable(&[ok(1), ok(3), ok(2)], &set(&[]));
        assert_eq!(
            got,
            Choice::Restore {
                id: CheckpointId(3),
                skipped: vec![]
            }
        );
    }

    #[test]
    fn a_chosen_id_is_the_only_candidate() {
        // A user's choice is looked up alone: no fallback to another id.
        let policy = RecoveryPolicy {
            fallback_to_older_checkpoint: true,
            max_restarts: 3,
        };
        assert_eq!(
            policy.after_failure(
                AttemptFailure::CorruptRestore,
                Some((CheckpointId(2), ChosenBy::User)),
                0
            ),
            AfterFailure::Fail
        );
    }

    #[test]
    fn corrupt_newest_is_skipped_with_its_reason() {
        let got = newest_restorable(
            &[ok(1), c(2, MetadataRead::Unusable("version 2".into()))],
            &set(&[]),
        );
        assert_eq!(
            got,
            Choice::Restore {
                id: CheckpointId(1),
                skipped: vec!["chk-2: version 2".into()]
            }
        );
    }

    #[test]
    fn a_storage_error_is_never_skipped() {
        let got = newest_restorable(
            &[ok(1), c(2, MetadataRead::Unreachable("timeout".into()))],
            &set(&[]),
        );
        assert_eq!(
            got,
            Choice::Unreachable {
                id: CheckpointId(2),
                reason: "timeout".into()
            }
        );
        // ... unless it is excluded anyway.
        assert!(matches!(
            newest_restorable(
                &[ok(1), c(2, MetadataRead::Unreachable("t".into()))],
                &set(&[2])
            ),
            Choice::Restore {
                id: CheckpointId(1),
                ..
            }
        ));
    }

    #[test]
    fn corrupt_files_fall_back_only_when_enabled_and_picked_by_policy() {
        let on = RecoveryPolicy {
            fallback_to_older_checkpoint: true,
            max_restarts: 3,
        };
        let off = RecoveryPolicy {
            fallback_to_older_checkpoint: false,
            ..on
        };
        let picked = Some((CheckpointId(5), ChosenBy::Policy));
        assert_eq!(
            on.after_failure(AttemptFailure::CorruptRestore, picked, 0),
            AfterFailure::FallBack {
                bad: CheckpointId(5)
            }
        );
        assert_eq!(
            off.after_failure(AttemptFailure::CorruptRestore, picked, 0),
            AfterFailure::Fail
        );
        assert_eq!(
            on.after_failure(AttemptFailure::CorruptRestore, None, 0),
            AfterFailure::Fail
        );
    }

    #[test]
    fn excluded_newer_checkpoints_of_an_earlier_run_are_not_picked() {
        let existing = [1, 2, 3, 4].map(CheckpointId);
        let excluded = excluded_at_start(existing, Some(CheckpointId(2)));
        assert_eq!(excluded, set(&[3, 4]));
        let all: Vec<_> = existing.iter().map(|id| ok(id.0)).collect();
        assert!(matches!(
            newest_restorable(&all, &excluded),
            Choice::Restore {
                id: CheckpointId(2),
                ..
            }
        ));
        // A fresh start excludes them all.
        let fresh = excluded_at_start(existing, None);
        assert_eq!(
            newest_restorable(&all, &fresh),
            Choice::Nothing { skipped: vec![] }
        );
    }

    #[test]
    fn no_checkpoint_at_all() {
        assert_eq!(
            newest_restorable(&[], &set(&[])),
            Choice::Nothing { skipped: vec![] }
        );
        let bad = [c(1, MetadataRead::Unusable("gone".into()))];
        assert_eq!(
            newest_restorable(&bad, &set(&[])),
            Choice::Nothing {
                skipped: vec!["chk-1: gone".into()]
            }
        );
    }

    #[test]
    fn transient_failures_restart_until_the_limit_and_fatal_ones_fail() {
        let p = RecoveryPolicy {
            fallback_to_older_checkpoint: true,
            max_restarts: 2,
        };
        assert_eq!(
            p.after_failure(AttemptFailure::Transient, None, 1),
            AfterFailure::Restart
        );
        assert_eq!(
            p.after_failure(AttemptFailure::Transient, None, 2),
            AfterFailure::Fail
        );
        assert_eq!(
            p.after_failure(AttemptFailure::Fatal, None, 0),
            AfterFailure::Fail
        );
    }
}
