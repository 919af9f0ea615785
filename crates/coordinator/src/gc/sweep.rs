//! The orphan sweep's classification (pure): which objects of a job no
//! retained or pending checkpoint needs, and are old enough to delete.
//!
//! Kept: `job.json`, anything of a retained or pending checkpoint, shared
//! files the registry protects or a pending checkpoint's acks reference,
//! anything younger than `min_age_ms` (an upload may still be in flight),
//! anything this version does not recognise, and every folder that has a
//! `_metadata` object (if it is not retained, it could not be read — a
//! storage error or a newer format — and is left for a person to judge).
//!
//! While such an unaccounted `_metadata` exists, no shared file is swept at
//! all: it may reference any of them, and nothing can tell which. The plan
//! names the unaccounted checkpoints so the caller suspends every other
//! shared-file delete too, and says why.

use std::collections::{BTreeSet, HashSet};

use cutpoint_core::{layout, CheckpointId};
use cutpoint_storage::JobObject;

use super::registry::SharedRegistry;

/// What the sweep knows when it classifies.
#[derive(Clone, Copy)]
pub struct SweepFacts<'a> {
    pub objects: &'a [JobObject],
    pub retained: &'a BTreeSet<CheckpointId>,
    pub pending: &'a BTreeSet<CheckpointId>,
    pub pending_files: &'a HashSet<String>,
    pub registry: &'a SharedRegistry,
    pub now_ms: u64,
    pub min_age_ms: u64,
}

/// What the sweep decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepPlan {
    /// Relative paths to delete, `_metadata` objects first.
    pub delete: Vec<String>,
    /// Checkpoints with a `_metadata` that is neither retained nor pending
    /// (it could not be read): while any exists, no shared file may go.
    pub unaccounted: BTreeSet<CheckpointId>,
}

/// Classifies the objects of a job.
pub fn orphans(f: &SweepFacts<'_>) -> SweepPlan {
    // A folder with a `_metadata` the coordinator does not retain could not
    // be read (storage error, newer version): never delete it blindly.
    let with_metadata: BTreeSet<CheckpointId> = f
        .objects
        .iter()
        .filter_map(|o| {
            let (dir, name) = o.path.split_once('/')?;
            (name == layout::METADATA_NAME).then(|| layout::parse_checkpoint_dir(dir))?
        })
        .collect();
    let unaccounted: BTreeSet<CheckpointId> = with_metadata
        .iter()
        .filter(|id| !f.retained.contains(id) && !f.pending.contains(id))
        .copied()
        .collect();
    let mut out: Vec<String> = f
        .objects
        .iter()
        .filter(|o| f.now_ms.saturating_sub(o.last_modified_ms) >= f.min_age_ms)
        .filter(|o| {
            let mut parts = o.path.splitn(2, '/');
            let (first, rest) = (parts.next().unwrap_or(""), parts.next());
            if let Some(id) = layout::parse_checkpoint_dir(first) {
                return rest.is_some()
                    && !f.retained.contains(&id)
                    && !f.pending.contains(&id)
                    && !with_metadata.contains(&id);
            }
            if layout::is_shared(&o.path) {
                return unaccounted.is_empty()
                    && !f.registry.is_protected(&o.path)
                    && !f.pending_files.contains(&o.path);
            }
            false
        })
        .map(|o| o.path.clone())
        .collect();
    out.sort_by_key(|p| (!p.ends_with("/_metadata"), p.clone()));
    SweepPlan {
        delete: out,
        unaccounted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(path: &str, age: u64) -> JobObject {
        JobObject {
            path: path.into(),
            last_modified_ms: 10_000 - age,
            size: 1,
        }
    }

    #[test]
    fn classifies_by_reference_and_age() {
        let objects = vec![
            obj("job.json", 5000),
            obj("chk-1/_metadata", 5000),
            obj("chk-1/agg/0/MANIFEST-5", 5000),
            obj("chk-2/agg/0/MANIFEST-6", 5000),
            obj("chk-3/agg/0/MANIFEST-7", 5000),
            obj("chk-4/agg/0/MANIFEST-8", 10),
            obj("chk-5/agg/0/MANIFEST-9", 5000),
            obj("shared/agg/0/a.sst", 5000),
            obj("shared/agg/0/b.sst", 5000),
            obj("shared/agg/0/c.sst", 5000),
            obj("shared/agg/0/d.sst", 10),
            obj("savepoints-unknown/x", 5000),
        ];
        let retained = BTreeSet::from([CheckpointId(2)]);
        let pending = BTreeSet::from([CheckpointId(3)]);
        let pending_files = HashSet::from(["shared/agg/0/c.sst".to_string()]);
        let mut registry = SharedRegistry::new();
        let mut meta: cutpoint_core::CheckpointMetadata = serde_json::from_value(serde_json::json!({
            "version": 1, "job_id": "j", "checkpoint_id": 2, "checkpoint_type": "incremental",
            "trigger_timestamp": 0, "complete_timestamp": 0, "parallelism": 1, "max_parallelism": 128,
            "subtasks": []
        }))
        .unwrap();
        meta.subtasks.push(serde_json::from_value(serde_json::json!({
            "task": {"operator": "agg", "subtask": 0},
            "files": [{"path": "shared/agg/0/a.sst", "local_name": "a.sst", "size": 1, "crc32c": 0}],
            "state_size": 1, "checkpointed_size": 1, "sync_duration_ms": 0,
            "async_duration_ms": 0, "ack_timestamp": 0
        }))
        .unwrap());
        registry.register(&meta);
        let facts = SweepFacts {
            objects: &objects,
            retained: &retained,
            pending: &pending,
            pending_files: &pending_files,
            registry: &registry,
            now_ms: 10_000,
            min_age_ms: 1000,
        };
        // chk-1 has a `_metadata` it cannot account for: its folder is left
        // alone, and so is every shared file (it may reference any).
        let plan = orphans(&facts);
        assert_eq!(plan.delete, vec!["chk-5/agg/0/MANIFEST-9"]);
        assert_eq!(plan.unaccounted, BTreeSet::from([CheckpointId(1)]));
        // Without it, the unreferenced shared file goes too.
        let without: Vec<_> = objects
            .iter()
            .filter(|o| o.path != "chk-1/_metadata")
            .cloned()
            .collect();
        let plan = orphans(&SweepFacts {
            objects: &without,
            ..facts
        });
        assert_eq!(
            plan.delete,
            vec![
                "chk-1/agg/0/MANIFEST-5",
                "chk-5/agg/0/MANIFEST-9",
                "shared/agg/0/b.sst"
            ]
        );
        assert!(plan.unaccounted.is_empty());
    }
}
