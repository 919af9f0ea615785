//! The storage conformance suite: what checkpoint storage must do on every
//! store, one `pub async fn` per property (as `object_store`'s own
//! integration suite is), run here against an in-memory store, the local
//! file system and [`FaultyStore`] over memory, and by the end-to-end tests
//! against a real S3-compatible server.
//!
//! Each property works in a job of its own, so they can run against one
//! store in any order; [`run_all`] runs every one. They panic with the
//! store's name on failure (they are tests).

use std::path::Path;

use bytes::Bytes;
use cutpoint_core::{
    checksum, CheckpointId, CheckpointMetadata, CheckpointType, JobId, OperatorId, StateFile,
    SubtaskIndex, SubtaskState, TaskId, METADATA_VERSION,
};

use crate::faults::{FaultAction, FaultOp, FaultRule, FaultyStore};
use crate::{CheckpointStorage, StateScope, StorageError, MULTIPART_THRESHOLD};

fn job(name: &str) -> JobId {
    JobId::new(name).expect("valid job id")
}

fn agg() -> OperatorId {
    OperatorId::new("agg").expect("valid operator id")
}

/// A checkpoint's metadata naming `files` (one aggregate subtask).
pub fn metadata(job: &JobId, id: u64, files: Vec<StateFile>) -> CheckpointMetadata {
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
        subtasks: vec![SubtaskState {
            files,
            ..SubtaskState::empty(TaskId::new(&agg(), 0))
        }],
    }
}

/// Every property, each in a job of its own; `scratch` is a local
/// directory for downloads and large files.
pub async fn run_all(storage: &CheckpointStorage, scratch: &Path) {
    state_files_are_create_only(storage).await;
    metadata_is_the_commit_point_and_lists_newest_first(storage).await;
    downloads_are_verified_and_name_bad_files(storage, scratch).await;
    corrupt_metadata_is_a_named_error(storage).await;
    large_files_go_up_in_parts_and_come_back_verified(storage, scratch).await;
    a_failed_multipart_upload_leaves_no_object(storage, scratch).await;
    deleting_a_checkpoint_removes_it_idempotently(storage).await;
    writer_leases_fence_older_writers_and_never_repeat_ids(storage).await;
}

/// A state file is written create-only: a second put of the same name is
/// `AlreadyExists`, and the first content stays.
pub async fn state_files_are_create_only(storage: &CheckpointStorage) {
    let job = job("conf-create");
    let op = agg();
    let put = |data: &'static [u8]| {
        storage.put_state_file(
            &job,
            StateScope::Checkpoint(CheckpointId(1)),
            &op,
            SubtaskIndex(0),
            "a.sst",
            Bytes::from_static(data),
        )
    };
    let f = put(b"hello").await.expect("first put");
    assert_eq!(f.path, "chk-1/agg/0/a.sst");
    let again = put(b"other").await;
    assert!(
        matches!(again, Err(StorageError::AlreadyExists { .. })),
        "{storage:?}: {again:?}"
    );
    let stored = storage
        .store()
        .get(&storage.paths(&job).resolve(&f.path))
        .await;
    let bytes = stored.expect("stored").bytes().await.expect("read");
    assert_eq!(&bytes[..], b"hello", "{storage:?}: the first content stays");
}

/// A checkpoint is listed only once its `_metadata` exists; `_metadata` is
/// create-only; listings are newest first; the job is listed.
pub async fn metadata_is_the_commit_point_and_lists_newest_first(storage: &CheckpointStorage) {
    let job = job("conf-meta");
    let f = storage
        .put_state_file(
            &job,
            StateScope::Checkpoint(CheckpointId(1)),
            &agg(),
            SubtaskIndex(0),
            "a.sst",
            Bytes::from_static(b"x"),
        )
        .await
        .expect("put");
    let missing = storage.read_metadata(&job, CheckpointId(1)).await;
    assert!(matches!(missing, Err(StorageError::MetadataMissing { .. })));
    assert!(storage
        .list_checkpoints(&job)
        .await
        .expect("list")
        .is_empty());
    let m1 = metadata(&job, 1, vec![f]);
    storage.write_metadata(&m1).await.expect("publish");
    assert!(matches!(
        storage.write_metadata(&m1).await,
        Err(StorageError::AlreadyExists { .. })
    ));
    assert_eq!(
        storage
            .read_metadata(&job, CheckpointId(1))
            .await
            .expect("read"),
        m1
    );
    storage
        .write_metadata(&metadata(&job, 3, vec![]))
        .await
        .expect("publish 3");
    let listed: Vec<u64> = storage
        .list_checkpoints(&job)
        .await
        .expect("list")
        .iter()
        .map(|l| l.checkpoint_id.0)
        .collect();
    assert_eq!(listed, vec![3, 1], "{storage:?}: newest first");
    assert!(storage.list_jobs().await.expect("jobs").contains(&job));
}

/// Downloads check size and CRC32C: a damaged object (truncated, one bit
/// flipped) is `ChecksumMismatch`, a missing one `StateFileMissing`, both
/// naming the object.
pub async fn downloads_are_verified_and_name_bad_files(
    storage: &CheckpointStorage,
    scratch: &Path,
) {
    let job = job("conf-verify");
    let f = storage
        .put_state_file(
            &job,
            StateScope::Checkpoint(CheckpointId(1)),
            &agg(),
            SubtaskIndex(0),
            "a.sst",
            Bytes::from_static(b"hello"),
        )
        .await
        .expect("put");
    let out = scratch.join(format!("dl-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&out).expect("scratch dir");
    storage
        .download_verified(&job, &f, &out)
        .await
        .expect("download");
    assert_eq!(std::fs::read(out.join("a.sst")).expect("file"), b"hello");
    let stored = storage.paths(&job).resolve(&f.path);
    for damaged in [&b"hel"[..], &b"hellm"[..]] {
        storage
            .store()
            .put(&stored, damaged.to_vec().into())
            .await
            .expect("damage");
        let e = storage.download_verified(&job, &f, &out).await.unwrap_err();
        assert!(
            matches!(e, StorageError::ChecksumMismatch { .. })
                && e.to_string().contains("chk-1/agg/0/a.sst"),
            "{e}"
        );
    }
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
}

/// Garbage, truncated and unknown-version `_metadata` are named errors.
pub async fn corrupt_metadata_is_a_named_error(storage: &CheckpointStorage) {
    let job = job("conf-corrupt");
    let p = storage.paths(&job).metadata(CheckpointId(3));
    let good = serde_json::to_vec(&metadata(&job, 3, vec![])).expect("json");
    for bad in [b"{oops".to_vec(), good[..good.len() / 2].to_vec()] {
        storage.store().put(&p, bad.into()).await.expect("put");
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
    let mut future = metadata(&job, 3, vec![]);
    future.version = 99;
    let body = serde_json::to_vec(&future).expect("json");
    storage.store().put(&p, body.into()).await.expect("put");
    let e = storage
        .read_metadata(&job, CheckpointId(3))
        .await
        .unwrap_err();
    assert!(
        e.is_data_error() && e.to_string().contains("version 99"),
        "{e}"
    );
}

/// A local file of `MULTIPART_THRESHOLD` plus 3 MiB, in `scratch`.
fn large_file(scratch: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = scratch.join(format!("big-{}.sst", uuid::Uuid::new_v4().simple()));
    let data: Vec<u8> = (0..MULTIPART_THRESHOLD + 3 * 1024 * 1024)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    std::fs::write(&path, &data).expect("write large file");
    (path, data)
}

/// Files over the multipart threshold go up in parts and come back whole.
pub async fn large_files_go_up_in_parts_and_come_back_verified(
    storage: &CheckpointStorage,
    scratch: &Path,
) {
    let job = job("conf-large");
    let (big, data) = large_file(scratch);
    let h = storage
        .upload_file(
            &job,
            StateScope::Shared,
            &agg(),
            SubtaskIndex(0),
            &big,
            "big.sst",
        )
        .await
        .expect("upload");
    assert_eq!(
        (h.size, h.crc32c),
        (data.len() as u64, checksum::crc32c(&data))
    );
    let out = scratch.join(format!("dl-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&out).expect("scratch dir");
    storage
        .download_verified(&job, &h, &out)
        .await
        .expect("download");
    assert_eq!(std::fs::read(out.join(&h.local_name)).expect("file"), data);
    let _ = std::fs::remove_file(big);
}

/// A multipart upload whose second part fails is an error and leaves no
/// object (it is aborted, never completed) and no open upload.
pub async fn a_failed_multipart_upload_leaves_no_object(
    storage: &CheckpointStorage,
    scratch: &Path,
) {
    let job = job("conf-partial");
    let (big, _) = large_file(scratch);
    let faulty = FaultyStore::new(storage.store().clone());
    for action in [
        FaultAction::Delay(std::time::Duration::ZERO),
        FaultAction::Fail,
    ] {
        faulty.add_rule(FaultRule {
            op: FaultOp::Part,
            path_contains: "partial.sst".into(),
            action,
            remaining: Some(1),
        });
    }
    let flaky = storage.with_store(faulty.clone());
    let e = flaky
        .upload_file(
            &job,
            StateScope::Shared,
            &agg(),
            SubtaskIndex(0),
            &big,
            "partial.sst",
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("injected Part failure"), "{e}");
    let partial = crate::JobPaths::state_file_relative(
        StateScope::Shared,
        &agg(),
        SubtaskIndex(0),
        "partial.sst",
    );
    assert_eq!(
        storage.object_size(&job, &partial).await.expect("head"),
        None
    );
    assert_eq!(faulty.open_multipart_uploads(), 0, "{storage:?}: aborted");
    let _ = std::fs::remove_file(big);
}

/// Deleting a checkpoint removes everything under it (`_metadata` first),
/// and deleting what is gone succeeds.
pub async fn deleting_a_checkpoint_removes_it_idempotently(storage: &CheckpointStorage) {
    let job = job("conf-delete");
    let f = storage
        .put_state_file(
            &job,
            StateScope::Checkpoint(CheckpointId(1)),
            &agg(),
            SubtaskIndex(0),
            "a.sst",
            Bytes::from_static(b"x"),
        )
        .await
        .expect("put");
    storage
        .write_metadata(&metadata(&job, 1, vec![f]))
        .await
        .expect("publish");
    for _ in 0..2 {
        storage
            .delete_checkpoint(&job, CheckpointId(1))
            .await
            .expect("delete");
    }
    assert!(
        storage
            .list_job_objects(&job)
            .await
            .expect("list")
            .is_empty(),
        "{storage:?}"
    );
}

/// Writer leases: each new lease fences the older ones, and grants ids
/// above every id granted before (and every checkpoint folder).
pub async fn writer_leases_fence_older_writers_and_never_repeat_ids(storage: &CheckpointStorage) {
    let job = job("conf-lease");
    let first = storage.take_writer_lease(&job, 1).await.expect("lease");
    storage
        .check_writer(&job, first.epoch)
        .await
        .expect("current");
    let second = storage.take_writer_lease(&job, 1).await.expect("lease");
    assert!(second.epoch > first.epoch && second.first_id > first.last_id);
    let fenced = storage.check_writer(&job, first.epoch).await;
    assert!(
        matches!(fenced, Err(StorageError::Fenced { .. })),
        "{fenced:?}"
    );
    // A fenced writer cannot renew over the newer one.
    let renewed = storage.renew_writer_lease(&job, first, 0).await;
    assert!(
        matches!(renewed, Err(StorageError::Fenced { .. })),
        "{renewed:?}"
    );
    let third = storage.take_writer_lease(&job, 5_000).await.expect("lease");
    assert!(third.first_id >= 5_000);
    assert!(storage.writer_epochs(&job).await.expect("epochs").len() <= 2);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;
    use object_store::ObjectStore;

    use super::*;
    use crate::StorageLocation;

    fn on(store: Arc<dyn ObjectStore>, url: &str) -> CheckpointStorage {
        CheckpointStorage::new(StorageLocation {
            store,
            root: object_store::path::Path::from("root"),
            url: url.into(),
        })
    }

    #[tokio::test]
    async fn in_memory() {
        let scratch = tempfile::tempdir().unwrap();
        run_all(
            &on(Arc::new(InMemory::new()), "memory:///root"),
            scratch.path(),
        )
        .await;
    }

    #[tokio::test]
    async fn local_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        run_all(&on(Arc::new(store), "file:///root"), dir.path()).await;
    }

    #[tokio::test]
    async fn faulty_store_over_memory() {
        let scratch = tempfile::tempdir().unwrap();
        let store = FaultyStore::new(Arc::new(InMemory::new()));
        run_all(&on(store, "memory:///root"), scratch.path()).await;
    }
}
