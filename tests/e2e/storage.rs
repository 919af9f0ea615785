//! Storage conformance: the same checks against local storage and the real
//! S3-compatible server.

use bytes::Bytes;
use cutpoint_core::{
    CheckpointId, CheckpointMetadata, CheckpointType, JobId, OperatorId, SubtaskIndex,
    METADATA_VERSION,
};
use cutpoint_storage::{CheckpointStorage, StateScope, StorageError, MULTIPART_THRESHOLD};

use crate::common::*;

fn meta(job: &JobId, id: u64, files: Vec<cutpoint_core::StateFile>) -> CheckpointMetadata {
    CheckpointMetadata {
        version: METADATA_VERSION,
        job_id: job.clone(),
        checkpoint_id: CheckpointId(id),
        checkpoint_type: CheckpointType::Incremental,
        trigger_timestamp: 1,
        complete_timestamp: 2,
        parallelism: 1,
        max_parallelism: 128,
        writer_epoch: None,
        subtasks: vec![serde_json::from_value(serde_json::json!({
            "task": {"operator": "agg", "subtask": 0},
            "files": files,
            "state_size": 0, "checkpointed_size": 0, "sync_duration_ms": 0,
            "async_duration_ms": 0, "ack_timestamp": 0
        }))
        .unwrap()],
    }
}

async fn conformance(storage: &CheckpointStorage, location: &str, scratch: &std::path::Path) {
    let job = JobId::new("conf").unwrap();
    let op = OperatorId::new("agg").unwrap();
    let st = SubtaskIndex(0);

    // Create-only state files.
    let f = storage
        .put_state_file(
            &job,
            StateScope::Checkpoint(CheckpointId(1)),
            &op,
            st,
            "a.sst",
            Bytes::from_static(b"hello"),
        )
        .await
        .unwrap();
    assert_eq!(f.path, "chk-1/agg/0/a.sst");
    let again = storage
        .put_state_file(
            &job,
            StateScope::Checkpoint(CheckpointId(1)),
            &op,
            st,
            "a.sst",
            Bytes::from_static(b"other"),
        )
        .await;
    assert!(
        matches!(again, Err(StorageError::AlreadyExists { .. })),
        "{location}: {again:?}"
    );

    // No metadata yet: not restorable, not listed.
    let missing = storage.read_metadata(&job, CheckpointId(1)).await;
    assert!(
        matches!(missing, Err(StorageError::MetadataMissing { .. })),
        "{location}"
    );
    assert!(storage.list_checkpoints(&job).await.unwrap().is_empty());

    // Metadata is create-only and makes the checkpoint listed.
    let m1 = meta(&job, 1, vec![f.clone()]);
    storage.write_metadata(&m1).await.unwrap();
    assert!(matches!(
        storage.write_metadata(&m1).await,
        Err(StorageError::AlreadyExists { .. })
    ));
    assert_eq!(
        storage.read_metadata(&job, CheckpointId(1)).await.unwrap(),
        m1
    );
    storage
        .write_metadata(&meta(&job, 3, vec![]))
        .await
        .unwrap();
    let listed: Vec<_> = storage
        .list_checkpoints(&job)
        .await
        .unwrap()
        .iter()
        .map(|l| l.checkpoint_id.0)
        .collect();
    assert_eq!(listed, vec![3, 1], "{location}: newest first");
    assert_eq!(storage.list_jobs().await.unwrap(), vec![job.clone()]);

    // Verified downloads: good, corrupt (named), missing (named).
    let out = scratch.join(format!("dl-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&out).unwrap();
    storage.download_verified(&job, &f, &out).await.unwrap();
    assert_eq!(std::fs::read(out.join("a.sst")).unwrap(), b"hello");
    let mut wrong = f.clone();
    wrong.crc32c ^= 1;
    let e = storage
        .download_verified(&job, &wrong, &out)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StorageError::ChecksumMismatch { .. })
            && e.to_string().contains("chk-1/agg/0/a.sst"),
        "{e}"
    );
    // The stored object itself damaged: truncated, then one bit flipped.
    let stored = storage.paths(&job).resolve(&f.path);
    for damaged in [&b"hel"[..], &b"hellm"[..]] {
        storage
            .store()
            .put(&stored, damaged.to_vec().into())
            .await
            .unwrap();
        let e = storage.download_verified(&job, &f, &out).await.unwrap_err();
        assert!(
            matches!(e, StorageError::ChecksumMismatch { .. })
                && e.to_string().contains("chk-1/agg/0/a.sst"),
            "{e}"
        );
    }
    storage
        .store()
        .put(&stored, b"hello".to_vec().into())
        .await
        .unwrap();
    let mut gone = f.clone();
    gone.path = "chk-1/agg/0/nope.sst".into();
    let e = storage
        .download_verified(&job, &gone, &out)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StorageError::StateFileMissing { .. }) && e.to_string().contains("nope.sst"),
        "{e}"
    );

    // Corrupt (garbage, truncated) and unknown-version metadata are named errors.
    let p = storage.paths(&job).metadata(CheckpointId(3));
    let good = serde_json::to_vec(&meta(&job, 3, vec![])).unwrap();
    for bad in [b"{oops".to_vec(), good[..good.len() / 2].to_vec()] {
        storage.store().put(&p, bad.into()).await.unwrap();
        let e = storage
            .read_metadata(&job, CheckpointId(3))
            .await
            .unwrap_err();
        assert!(
            matches!(e, StorageError::CorruptMetadata { .. })
                && e.to_string().contains("chk-3/_metadata"),
            "{e}"
        );
    }
    let mut future = meta(&job, 3, vec![]);
    future.version = 99;
    storage
        .store()
        .put(&p, serde_json::to_vec(&future).unwrap().into())
        .await
        .unwrap();
    let e = storage
        .read_metadata(&job, CheckpointId(3))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("version 99"), "{e}");

    // Large files go up in parts and come back verified.
    let big = scratch.join(format!("big-{}.sst", uuid::Uuid::new_v4().simple()));
    let data: Vec<u8> = (0..MULTIPART_THRESHOLD + 3 * 1024 * 1024)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    std::fs::write(&big, &data).unwrap();
    let h = storage
        .upload_file(&job, StateScope::Shared, &op, st, &big, "big-remote.sst")
        .await
        .unwrap();
    assert_eq!(
        (h.size, h.crc32c),
        (data.len() as u64, cutpoint_core::checksum::crc32c(&data))
    );
    storage.download_verified(&job, &h, &out).await.unwrap();
    assert_eq!(std::fs::read(out.join(&h.local_name)).unwrap(), data);

    // A multipart upload whose second part fails: an error, and no object
    // (the upload is aborted, never completed).
    {
        use cutpoint_storage::faults::{FaultAction, FaultOp, FaultRule, FaultyStore};
        let loc = cutpoint_storage::StorageLocation::parse(location).unwrap();
        let faulty = FaultyStore::new(loc.store.clone());
        for action in [
            FaultAction::Delay(std::time::Duration::ZERO),
            FaultAction::Fail,
        ] {
            faulty.add_rule(FaultRule {
                op: FaultOp::Part,
                path_contains: "partial-remote".into(),
                action,
                remaining: Some(1),
            });
        }
        let flaky = CheckpointStorage::new(loc.with_store(faulty));
        let e = flaky
            .upload_file(
                &job,
                StateScope::Shared,
                &op,
                st,
                &big,
                "partial-remote.sst",
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("injected Part failure"), "{e}");
        let partial = cutpoint_storage::JobPaths::state_file_relative(
            StateScope::Shared,
            &op,
            st,
            "partial-remote.sst",
        );
        assert_eq!(storage.object_size(&job, &partial).await.unwrap(), None);
    }

    // Deleting a checkpoint removes everything under it, idempotently.
    storage
        .delete_checkpoint(&job, CheckpointId(1))
        .await
        .unwrap();
    storage
        .delete_checkpoint(&job, CheckpointId(1))
        .await
        .unwrap();
    assert!(storage
        .list_checkpoint_objects(&job, CheckpointId(1))
        .await
        .unwrap()
        .is_empty());
    storage
        .delete_checkpoint(&job, CheckpointId(3))
        .await
        .unwrap();
    storage
        .delete_state_files(&job, std::slice::from_ref(&h.path))
        .await
        .unwrap();
    assert!(
        storage.list_job_objects(&job).await.unwrap().is_empty(),
        "{location}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_conformance_local_and_s3() {
    let dir = tempfile::tempdir().unwrap();
    for location in locations(dir.path(), "conformance") {
        conformance(&storage_at(&location), &location, dir.path()).await;
    }
}
