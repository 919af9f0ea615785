//! [`SharedRegistry`]: reference counts of shared state files (pure).
//!
//! Counts are derived from the retained checkpoints' metadata (rebuilt from
//! storage on start). A shared file may be deleted only when no retained
//! checkpoint references it *and* no checkpoint that was pending when its
//! count dropped to zero can still reference it: such files wait in a
//! deferred list until every checkpoint up to the highest one pending at
//! release time has settled (completed or aborted), and are deleted only if
//! still unreferenced then. A checkpoint triggered later cannot reference
//! them: its barrier names the newest completed checkpoint (or none) as the
//! one whose shared files its snapshots may reuse, and that one is retained.
//! Checkpoints whose folder could not be deleted (their `_metadata` may
//! exist) hold references too, until the folder is gone.

use std::collections::{BTreeMap, HashMap};

use cutpoint_core::{CheckpointId, CheckpointMetadata};

#[derive(Debug, Default)]
pub struct SharedRegistry {
    counts: HashMap<String, u32>,
    by_checkpoint: BTreeMap<CheckpointId, Vec<String>>,
    /// (settles after checkpoint, path)
    deferred: Vec<(CheckpointId, String)>,
}

impl SharedRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A retained checkpoint's shared files gain a reference.
    pub fn register(&mut self, meta: &CheckpointMetadata) {
        self.register_files(meta.checkpoint_id, meta.shared_files());
    }

    /// The shared ones among `files` gain a reference held by checkpoint
    /// `id` (retained, or one whose folder could not be deleted yet: its
    /// `_metadata` may exist, so its files must stay), until `release(id)`.
    pub fn register_files<'a>(
        &mut self,
        id: CheckpointId,
        files: impl Iterator<Item = &'a cutpoint_core::StateFile>,
    ) {
        if self.by_checkpoint.contains_key(&id) {
            return;
        }
        let mut paths: Vec<String> = files
            .filter(|f| f.is_shared())
            .map(|f| f.path.clone())
            .collect();
        paths.sort();
        paths.dedup();
        for p in &paths {
            *self.counts.entry(p.clone()).or_insert(0) += 1;
        }
        self.by_checkpoint.insert(id, paths);
    }

    /// A checkpoint is no longer retained. Files it was the last reference
    /// of are deferred until every checkpoint up to `highest_pending`
    /// settles; returns what may be deleted right away.
    pub fn release(
        &mut self,
        id: CheckpointId,
        highest_pending: Option<CheckpointId>,
        lowest_pending: Option<CheckpointId>,
    ) -> Vec<String> {
        for p in self.by_checkpoint.remove(&id).unwrap_or_default() {
            let c = self
                .counts
                .get_mut(&p)
                .expect("registered path has a count");
            *c -= 1;
            if *c == 0 {
                self.counts.remove(&p);
                self.deferred
                    .push((highest_pending.unwrap_or(CheckpointId(0)), p));
            }
        }
        self.collect(lowest_pending)
    }

    /// Deferred files that are now safe to delete (nothing pending at or
    /// below their settle point, still unreferenced).
    pub fn collect(&mut self, lowest_pending: Option<CheckpointId>) -> Vec<String> {
        let settled = |after: CheckpointId| lowest_pending.is_none_or(|lp| lp > after);
        let mut out = Vec::new();
        let counts = &self.counts;
        self.deferred.retain(|(after, p)| {
            if !settled(*after) {
                return true;
            }
            if !counts.contains_key(p) {
                out.push(p.clone());
            }
            false
        });
        out
    }

    /// Referenced by a retained checkpoint, or waiting to be collected.
    pub fn is_protected(&self, path: &str) -> bool {
        self.counts.contains_key(path) || self.deferred.iter().any(|(_, p)| p == path)
    }

    /// Number of references (0 if unknown).
    pub fn count(&self, path: &str) -> u32 {
        self.counts.get(path).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutpoint_core::{CheckpointType, JobId, OperatorId, StateFile, SubtaskState, TaskId};

    fn meta(id: u64, shared: &[&str]) -> CheckpointMetadata {
        CheckpointMetadata {
            version: 1,
            job_id: JobId::new("j").unwrap(),
            checkpoint_id: CheckpointId(id),
            checkpoint_type: CheckpointType::Incremental,
            trigger_timestamp: 0,
            complete_timestamp: 0,
            parallelism: 1,
            max_parallelism: 128,
            writer_epoch: None,
            subtasks: vec![SubtaskState {
                files: shared
                    .iter()
                    .map(|s| StateFile {
                        path: format!("shared/agg/0/{s}"),
                        local_name: s.to_string(),
                        size: 1,
                        crc32c: 0,
                    })
                    .chain(std::iter::once(StateFile {
                        path: format!("chk-{id}/agg/0/MANIFEST-1"),
                        local_name: "MANIFEST-1".into(),
                        size: 1,
                        crc32c: 0,
                    }))
                    .collect(),
                ..SubtaskState::empty(TaskId::new(&OperatorId::new("agg").unwrap(), 0))
            }],
        }
    }

    #[test]
    fn last_reference_releases_the_file() {
        let mut r = SharedRegistry::new();
        r.register(&meta(1, &["a", "b"]));
        r.register(&meta(2, &["b", "c"]));
        assert_eq!(r.count("shared/agg/0/b"), 2);
        assert_eq!(
            r.release(CheckpointId(1), None, None),
            vec!["shared/agg/0/a".to_string()]
        );
        assert!(r.is_protected("shared/agg/0/b"));
        let mut gone = r.release(CheckpointId(2), None, None);
        gone.sort();
        assert_eq!(
            gone,
            vec!["shared/agg/0/b".to_string(), "shared/agg/0/c".to_string()]
        );
        assert!(!r.is_protected("shared/agg/0/b"));
        assert!(
            !r.is_protected("chk-1/agg/0/MANIFEST-1"),
            "private files are not counted"
        );
    }

    #[test]
    fn release_waits_for_pending_checkpoints_and_rechecks() {
        let mut r = SharedRegistry::new();
        r.register(&meta(1, &["a", "b"]));
        // Checkpoint 3 is pending while 1 is released: nothing goes yet.
        assert!(r
            .release(
                CheckpointId(1),
                Some(CheckpointId(3)),
                Some(CheckpointId(3))
            )
            .is_empty());
        assert!(r.is_protected("shared/agg/0/a"));
        // 3 completes and turns out to reference `a`: only `b` goes.
        r.register(&meta(3, &["a"]));
        assert_eq!(r.collect(None), vec!["shared/agg/0/b".to_string()]);
        assert!(r.is_protected("shared/agg/0/a"));
    }
}
