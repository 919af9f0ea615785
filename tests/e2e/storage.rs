//! The storage conformance suite (`cutpoint_storage::conformance`, library
//! code also run by that crate's unit tests against an in-memory store, the
//! local file system and `FaultyStore`) against the local file system
//! through `--checkpoint-dir` parsing and against the real S3-compatible
//! server — whose absence fails this test unless S3 is skipped on purpose
//! (`CUTPOINT_SKIP_S3=1`).

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_conformance_local_and_s3() {
    let dir = tempfile::tempdir().unwrap();
    for location in locations(dir.path(), "conformance") {
        cutpoint_storage::conformance::run_all(&storage_at(&location), dir.path()).await;
    }
}
