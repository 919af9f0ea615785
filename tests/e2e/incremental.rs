//! Incremental snapshots and the lifecycle of shared files, on local
//! storage and on the real S3-compatible test server.

use std::time::Duration;

use cutpoint_coordinator::{spawn_job, JobConfig};
use cutpoint_core::{
    CheckpointId, CheckpointType, JobId, Key, OperatorId, SubtaskIndex, SubtaskState, TaskId,
};
use cutpoint_state::snapshot::{self, shared_files, ConfirmedFiles, LocalDirs, SnapshotTarget};
use cutpoint_state::{RocksStore, StateTable};
use cutpoint_storage::faults::{FaultAction, FaultOp, FaultRule};
use tokio_util::sync::CancellationToken;

use crate::common::*;

fn agg_state(files: Vec<cutpoint_core::StateFile>) -> SubtaskState {
    SubtaskState {
        key_group_range: Some(cutpoint_core::KeyGroupRange { start: 0, end: 127 }),
        files,
        ..SubtaskState::empty(TaskId::new(&OperatorId::new("agg").unwrap(), 0))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_checkpoint_uploads_only_the_changed_fraction_and_both_restore() {
    let dir = tempfile::tempdir().unwrap();
    for location in locations(dir.path(), "incremental") {
        let storage = storage_at(&location);
        let job = JobId::new("inc").unwrap();
        let op = OperatorId::new("agg").unwrap();
        let mut rocks =
            RocksStore::open(&dir.path().join("db"), &dir.path().join("scratch"), 128).unwrap();
        let mut table = StateTable::new();
        const KEYS: i64 = 100_000;
        for k in 0..KEYS {
            table.add(Key::Int(k), k % 1000 + 1);
        }
        let first_state: Vec<(Key, i64)> = table.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let token = CancellationToken::new();
        let target = |n| SnapshotTarget {
            storage: &storage,
            job: &job,
            operator: &op,
            subtask: SubtaskIndex(0),
            checkpoint: CheckpointId(n),
        };
        rocks.apply(table.freeze()).unwrap();
        let cp1 = rocks.checkpoint("chk-1").unwrap();
        let up1 = snapshot::upload_snapshot(
            &target(1),
            &cp1,
            CheckpointType::Incremental,
            &ConfirmedFiles::new(),
            &token,
        )
        .await
        .unwrap();
        assert_eq!(up1.reused_files, 0);
        assert_eq!(up1.uploaded_bytes, up1.state_size());

        // Touch 1% of the keys.
        for k in (0..KEYS).step_by(100) {
            table.add(Key::Int(k), 7);
        }
        assert_eq!(table.changed(), 1000);
        rocks.apply(table.freeze()).unwrap();
        let cp2 = rocks.checkpoint("chk-2").unwrap();
        let up2 = snapshot::upload_snapshot(
            &target(2),
            &cp2,
            CheckpointType::Incremental,
            &shared_files(&up1.files),
            &token,
        )
        .await
        .unwrap();
        assert!(up2.reused_files >= 1, "{up2:?}");
        assert!(
            (up2.uploaded_bytes as f64) < 0.2 * up2.state_size() as f64,
            "{location}: uploaded {} of {} bytes",
            up2.uploaded_bytes,
            up2.state_size()
        );
        // A full checkpoint of the same state references no shared file.
        let cp3 = rocks.checkpoint("chk-3").unwrap();
        let full = snapshot::upload_snapshot(
            &target(3),
            &cp3,
            CheckpointType::Full,
            &shared_files(&up2.files),
            &token,
        )
        .await
        .unwrap();
        assert!(full.files.iter().all(|f| f.path.starts_with("chk-3/")));
        let second_state: Vec<(Key, i64)> = table.iter().map(|(k, v)| (k.clone(), *v)).collect();

        // Each checkpoint restores exactly its own state, from its handles alone.
        for (files, want) in [
            (up1.files, &first_state),
            (up2.files, &second_state),
            (full.files, &second_state),
        ] {
            let (storage, job) = (storage.clone(), job.clone());
            let rt = tokio::runtime::Handle::current();
            let restored = tokio::task::spawn_blocking(move || {
                let d = tempfile::tempdir().unwrap();
                let dirs = LocalDirs {
                    db: d.path().join("db"),
                    scratch: d.path().join("s"),
                };
                let state = agg_state(files);
                let r = snapshot::restore(
                    &rt,
                    &storage,
                    &job,
                    std::slice::from_ref(&state),
                    state.key_group_range.unwrap(),
                    &dirs,
                    128,
                    snapshot::TableLoad::Eager,
                )
                .unwrap();
                r.table
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect::<std::collections::BTreeMap<_, _>>()
            })
            .await
            .unwrap();
            let want: std::collections::BTreeMap<_, _> = want.iter().cloned().collect();
            assert_exact(&restored, &want);
        }
        drop(rocks);
        let _ = std::fs::remove_dir_all(dir.path().join("db"));
        let _ = std::fs::remove_dir_all(dir.path().join("scratch"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_exactly_the_referenced_files_and_both_restore() {
    let dir = tempfile::tempdir().unwrap();
    let (events, keys) = (2_000_000, 50_000);
    for location in locations(dir.path(), "retention") {
        let storage = storage_at(&location);
        let spec = pv_spec(
            "pv-retain",
            events,
            keys,
            Some(1_000_000),
            r#","checkpoint":{"interval_ms":100,"retention":2}"#,
        );
        let job_id = spec.job_id.clone();
        let job = spawn_job(JobConfig {
            spec,
            storage: storage.clone(),
            restore_from: None,
            local_dir: dir.path().join("work"),
            functions: Default::default(),
        });
        let outcome = job.join().await.unwrap();
        assert!(
            outcome.checkpoints_completed >= 6,
            "{location}: {outcome:?}"
        );
        let metas = assert_storage_is_exactly_referenced(&storage, &job_id).await;
        assert_eq!(metas.len(), 2, "{location}");
        assert!(
            metas
                .iter()
                .any(|m| m.subtasks.iter().any(|s| s.files_reused > 0)),
            "{location}: incremental checkpoints reuse shared files"
        );
        for m in &metas {
            assert_checkpoint_state(&storage, m, keys, events).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_aborted_mid_upload_leaves_nothing_unreferenced() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = faulty_storage(&dir.path().join("chk"));
    // SST files of checkpoint 2 reach shared/, then its MANIFEST hangs.
    faults.add_rule(FaultRule {
        op: FaultOp::Put,
        path_contains: "/chk-2/agg/0/MANIFEST".into(),
        action: FaultAction::Delay(Duration::from_secs(3600)),
        remaining: None,
    });
    let (events, keys) = (2_500_000, 20_000);
    let spec = pv_spec(
        "pv-abort",
        events,
        keys,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":100,"timeout_ms":1000,"retention":2}"#,
    );
    let job_id = spec.job_id.clone();
    let job = spawn_job(JobConfig {
        spec,
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.path().join("work"),
        functions: Default::default(),
    });
    let outcome = job.join().await.unwrap();
    assert!(outcome.checkpoints_failed >= 1, "{outcome:?}");
    assert!(outcome.checkpoints_completed >= 3, "{outcome:?}");
    assert_exact(&final_counts(&outcome), &expected_counts(42, keys, events));
    let metas = assert_storage_is_exactly_referenced(&storage, &job_id).await;
    for m in &metas {
        assert_checkpoint_state(&storage, m, keys, events).await;
    }
}
