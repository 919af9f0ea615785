//! Regression tests for the correctness defects of issue #14, one or more
//! per defect, each written to fail on the code before its fix.

use std::path::Path;

use cutpoint_coordinator::{restore, spawn_job, JobConfig, JobError, RestoreFrom};
use cutpoint_core::{CheckpointId, JobId, JobSpec};
use cutpoint_storage::faults::{FaultAction, FaultOp, FaultRule};
use cutpoint_storage::CheckpointStorage;

use crate::common::*;

/// Runs `spec` fresh to the end; returns the checkpoint ids in storage,
/// newest first.
async fn run_to_end(spec: &JobSpec, storage: &CheckpointStorage, work: &Path) -> Vec<CheckpointId> {
    spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: None,
        local_dir: work.to_path_buf(),
        functions: Default::default(),
    })
    .join()
    .await
    .unwrap();
    storage
        .list_checkpoints(&spec.job_id)
        .await
        .unwrap()
        .iter()
        .map(|l| l.checkpoint_id)
        .collect()
}

/// Rewrites `chk-{id}/_metadata` of a local store as a newer release would
/// (`"version": 2`); returns the relative paths of the files it names.
fn make_unreadable(chk_root: &Path, job: &JobId, id: CheckpointId) -> Vec<String> {
    let path = chk_root.join(format!("jobs/{job}/chk-{}/_metadata", id.0));
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    meta["version"] = 2.into();
    std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
    meta["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["files"].as_array().cloned().unwrap_or_default())
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

fn missing_files(chk_root: &Path, job: &JobId, files: &[String]) -> Vec<String> {
    files
        .iter()
        .filter(|f| !chk_root.join(format!("jobs/{job}/{f}")).exists())
        .cloned()
        .collect()
}

/// Defect 1: a checkpoint whose `_metadata` cannot be read (a newer
/// release wrote it) keeps every file it names, whether the next run
/// starts fresh or restores an older checkpoint; `checkpoints usage` says
/// shared-file GC is suspended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_checkpoint_keeps_its_shared_files() {
    for restore_from in [None, Some(RestoreFrom::Checkpoint(CheckpointId(1)))] {
        let dir = tempfile::tempdir().unwrap();
        let chk = dir.path().join("chk");
        let storage = storage_at(chk.to_str().unwrap());
        let spec = pv_spec(
            "pv-unreadable",
            1_200_000,
            20_000,
            Some(1_000_000),
            r#","checkpoint":{"interval_ms":100,"retention":20}"#,
        );
        let ids = run_to_end(&spec, &storage, &dir.path().join("w1")).await;
        assert!(ids.len() >= 3, "{ids:?}");
        let newest = ids[0];
        let files = make_unreadable(&chk, &spec.job_id, newest);
        assert!(files.iter().any(|f| f.starts_with("shared/")), "{files:?}");

        spawn_job(JobConfig {
            spec: spec.clone(),
            storage: storage.clone(),
            restore_from: restore_from.clone(),
            local_dir: dir.path().join("w2"),
            functions: Default::default(),
        })
        .join()
        .await
        .unwrap();
        assert_eq!(
            missing_files(&chk, &spec.job_id, &files),
            Vec::<String>::new(),
            "restore_from {restore_from:?}: files of the unreadable chk-{newest} deleted"
        );
        let usage = storage.usage(&spec.job_id).await.unwrap();
        assert_eq!(usage.unreadable.len(), 1, "{usage:?}");
        assert!(usage.shared_gc_suspended.is_some(), "{usage:?}");
    }
}

/// Defect 3: `latest` skips a checkpoint only for bad data. When reading
/// the newest `_metadata` fails in storage (its HEAD answers, its GET does
/// not), the start fails instead of restoring an older checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_fails_on_a_storage_error_instead_of_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = faulty_storage(&dir.path().join("chk"));
    let spec = pv_spec(
        "pv-latest",
        600_000,
        5_000,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":100,"retention":5}"#,
    );
    let ids = run_to_end(&spec, &storage, &dir.path().join("w1")).await;
    assert!(ids.len() >= 2, "{ids:?}");
    faults.add_rule(FaultRule {
        op: FaultOp::Get,
        path_contains: format!("chk-{}/_metadata", ids[0].0),
        action: FaultAction::Fail,
        remaining: None,
    });
    let resolved = restore::resolve(&storage, &spec.job_id, RestoreFrom::Latest).await;
    assert!(
        matches!(resolved, Err(JobError::Storage(_))),
        "a storage error is not skipped: {resolved:?}"
    );
    let run = spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: Some(RestoreFrom::Latest),
        local_dir: dir.path().join("w2"),
        functions: Default::default(),
    })
    .join()
    .await;
    assert!(matches!(run, Err(JobError::Storage(_))), "{run:?}");
    // The newer checkpoint is still there once storage answers again.
    faults.clear();
    let again = restore::resolve(&storage, &spec.job_id, RestoreFrom::Latest)
        .await
        .unwrap();
    assert_eq!(again.checkpoint_id, ids[0]);
}

/// Defect 2: a killed run's RocksDB left in a fixed work dir is never
/// reopened: the next run (fresh here, under a memory budget so evicted
/// keys are read through from RocksDB) starts from an empty directory and
/// counts exactly; and two jobs never share one work dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_work_dir_starts_empty_and_is_never_shared() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let (events, keys) = (400_000, 20_000);
    // What a killed run leaves: its lock file, RocksDB instances with its counts.
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join(".lock"), b"").unwrap();
    for a in 0..2 {
        let base = work.join(format!("attempt-0/agg-{a}"));
        let mut db =
            cutpoint_state::RocksStore::open(&base.join("db"), &base.join("scratch"), 128).unwrap();
        let mut stale = cutpoint_state::FrozenDelta::default();
        for k in 0..keys as i64 {
            stale.entries.insert(cutpoint_core::Key::Int(k), 1_000_000);
        }
        db.apply(stale).unwrap();
    }
    let storage = storage_at(dir.path().join("chk").to_str().unwrap());
    let spec = pv_spec(
        "pv-workdir",
        events,
        keys,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":100},"state":{"memory_budget_mb":1}"#,
    );
    let mut job = spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: None,
        local_dir: work.clone(),
        functions: Default::default(),
    });
    job.wait_for(|s| s.state == cutpoint_coordinator::JobState::Running)
        .await;
    // A second job on the same work dir is refused while the first runs.
    let mut other = spec.clone();
    other.job_id = JobId::new("pv-workdir-2").unwrap();
    let second = spawn_job(JobConfig {
        spec: other,
        storage: storage.clone(),
        restore_from: None,
        local_dir: work.clone(),
        functions: Default::default(),
    })
    .join()
    .await;
    assert!(
        matches!(second, Err(JobError::WorkDirInUse { .. })),
        "{second:?}"
    );
    let outcome = job.join().await.unwrap();
    assert_exact(&final_counts(&outcome), &expected_counts(42, keys, events));
    // Its checkpoints hold this run's counts only.
    for l in storage.list_checkpoints(&spec.job_id).await.unwrap() {
        assert_checkpoint_state(&storage, &l.metadata.unwrap(), keys, events).await;
    }
}

/// An unaligned PV job whose partition 1 delivers each barrier 300 ms late,
/// so every snapshot persists in-flight records as channel state.
fn unaligned_spec(job: &str, extra_checkpoint: &str) -> JobSpec {
    pv_spec(
        job,
        20_000_000,
        2_000,
        Some(1_000_000),
        &format!(
            r#","checkpoint":{{"interval_ms":null,"retention":5,"mode":"unaligned"{extra_checkpoint}}},
               "inject_barrier_delay":{{"partition":1,"delay_ms":300}}"#
        ),
    )
}

/// Triggers checkpoints until one completes (the first may fail on purpose).
async fn trigger_until_completed(job: &mut cutpoint_coordinator::JobHandle, completed: u64) {
    for _ in 0..40 {
        if job.status().checkpoints_completed >= completed {
            return;
        }
        let _ = job
            .trigger_checkpoint(cutpoint_core::CheckpointType::Incremental)
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    panic!("no checkpoint completed: {:?}", job.status());
}

/// Defect 7a: a snapshot whose channel-state upload fails after its state
/// files were uploaded deletes those files (no ack names them, so nothing
/// else would until an orphan sweep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_channel_state_upload_leaves_no_state_files() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = faulty_storage(&dir.path().join("chk"));
    faults.add_rule(FaultRule {
        op: FaultOp::Put,
        path_contains: "channel-state.jsonl".into(),
        action: FaultAction::Fail,
        remaining: Some(1),
    });
    let spec = unaligned_spec("pv-channel-fail", "");
    let mut job = spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.path().join("work"),
        functions: Default::default(),
    });
    job.wait_for(|s| s.state == cutpoint_coordinator::JobState::Running)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    job.trigger_checkpoint(cutpoint_core::CheckpointType::Incremental)
        .await
        .unwrap();
    job.wait_for(|s| s.checkpoints_failed >= 1).await;
    trigger_until_completed(&mut job, 1).await;
    job.cancel();
    assert!(matches!(job.join().await, Err(JobError::Cancelled)));
    // Cancelled: no end-of-job sweep ran, yet nothing is left over.
    let usage = storage.usage(&spec.job_id).await.unwrap();
    assert_eq!(usage.unreferenced, Vec::<String>::new(), "{usage:?}");
}

/// Defect 7b: aborting a checkpoint stops its channel-state upload: a hung
/// upload does not hold the snapshot worker, and the next checkpoint
/// completes long before the hang would end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_stops_a_hanging_channel_state_upload() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = faulty_storage(&dir.path().join("chk"));
    faults.add_rule(FaultRule {
        op: FaultOp::Put,
        path_contains: "channel-state.jsonl".into(),
        action: FaultAction::Delay(std::time::Duration::from_secs(600)),
        remaining: Some(2),
    });
    let spec = unaligned_spec("pv-channel-hang", r#","timeout_ms":1500"#);
    let mut job = spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.path().join("work"),
        functions: Default::default(),
    });
    job.wait_for(|s| s.state == cutpoint_coordinator::JobState::Running)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    job.trigger_checkpoint(cutpoint_core::CheckpointType::Incremental)
        .await
        .unwrap();
    job.wait_for(|s| s.checkpoints_failed >= 1).await;
    // Within ~20 s (the hang is 10 minutes) a checkpoint completes.
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        trigger_until_completed(&mut job, 1),
    )
    .await
    .expect("the hung upload was not cancelled");
    job.cancel();
    let _ = job.join().await;
}

/// Defect 7d: a multipart upload whose future is dropped (its snapshot
/// cancelled) is aborted, so no hidden parts stay on S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_multipart_upload_is_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = faulty_storage(&dir.path().join("chk"));
    faults.add_rule(FaultRule {
        op: FaultOp::Part,
        path_contains: "big.sst".into(),
        action: FaultAction::Delay(std::time::Duration::from_secs(600)),
        remaining: None,
    });
    let local = dir.path().join("big.sst");
    let size = cutpoint_storage::MULTIPART_THRESHOLD + 3 * 1024 * 1024;
    std::fs::write(&local, vec![7u8; size as usize]).unwrap();
    let job = JobId::new("mp").unwrap();
    let op = cutpoint_core::OperatorId::new("agg").unwrap();
    let upload = storage.upload_file(
        &job,
        cutpoint_storage::StateScope::Shared,
        &op,
        cutpoint_core::SubtaskIndex(0),
        &local,
        "big.sst",
    );
    let cut = tokio::time::timeout(std::time::Duration::from_millis(500), upload).await;
    assert!(cut.is_err(), "the upload hangs on its parts");
    for _ in 0..50 {
        if faults.open_multipart_uploads() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the dropped multipart upload was never aborted");
}

/// Defect 9: one writer per job. A second run of the same job on the same
/// storage (the old process still alive) takes over: the first is fenced at
/// its next publish or delete, stops with a clear error and deletes
/// nothing; the second restores the latest checkpoint and ends exact, and
/// every checkpoint left in storage is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_fences_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_at(dir.path().join("chk").to_str().unwrap());
    let (events, keys) = (3_000_000, 10_000);
    let spec = pv_spec(
        "pv-two-writers",
        events,
        keys,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":100,"retention":3}"#,
    );
    let mut first = spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.path().join("w1"),
        functions: Default::default(),
    });
    first.wait_for(|s| s.checkpoints_completed >= 3).await;
    let second = spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: Some(RestoreFrom::Latest),
        local_dir: dir.path().join("w2"),
        functions: Default::default(),
    });
    let err = first.join().await.expect_err("the first writer is fenced");
    assert!(err.to_string().contains("fenced"), "{err}");
    let outcome = second.join().await.unwrap();
    assert_exact(&final_counts(&outcome), &expected_counts(42, keys, events));
    let usage = storage.usage(&spec.job_id).await.unwrap();
    assert!(
        usage.unreadable.is_empty() && usage.missing.is_empty() && !usage.checkpoints.is_empty(),
        "{usage:?}"
    );
    let metas: Vec<_> = storage
        .list_checkpoints(&spec.job_id)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.metadata.unwrap())
        .collect();
    assert_eq!(
        metas[0].writer_epoch,
        Some(2),
        "the newest is the new writer's"
    );
    for meta in &metas {
        assert_checkpoint_state(&storage, meta, keys, events).await;
    }
}

/// Defect 5: a restore under a memory budget stays within it. 200k keys
/// are checkpointed without a budget, then restored under a 1 MB budget
/// (about 3,300 entries per subtask at parallelism 2, 2,200 at 3): the
/// working table never holds more than its cap, at the same parallelism
/// and rescaled. The cap is `BUDGET_CAP` budgets (dirty entries are evicted
/// only once written behind, so the table may run ahead of the snapshot
/// worker that far before the task waits for it) plus one input batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_under_a_memory_budget_stays_within_it() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_at(dir.path().join("chk").to_str().unwrap());
    let (events, keys) = (1_500_000, 200_000);
    let spec = pv_spec(
        "pv-budget-restore",
        events,
        keys,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":150,"retention":20}"#,
    );
    let ids = run_to_end(&spec, &storage, &dir.path().join("w1")).await;
    let middle = ids[ids.len() / 2];
    for parallelism in [2u32, 3] {
        let mut budgeted = spec.clone();
        budgeted.parallelism = parallelism;
        budgeted.state.memory_budget_mb = Some(1);
        let budget = budgeted.state.budget_entries(parallelism).unwrap();
        let outcome = spawn_job(JobConfig {
            spec: budgeted,
            storage: storage.clone(),
            restore_from: Some(RestoreFrom::Checkpoint(middle)),
            local_dir: dir.path().join(format!("w-{parallelism}")),
            functions: Default::default(),
        })
        .join()
        .await
        .unwrap();
        assert_exact(&final_counts(&outcome), &expected_counts(42, keys, events));
        let cap = budget * cutpoint_runtime::BUDGET_CAP + cutpoint_runtime::channel::BATCH_SIZE;
        for t in &outcome.final_state {
            assert!(
                t.peak_len() <= cap,
                "parallelism {parallelism}: peak {} entries, budget {budget}",
                t.peak_len()
            );
        }
    }
}

/// Puts back, as staging files, the transactions checkpoint `meta` lists as
/// pre-committed: the state a crash between its pre-commit and its commit
/// leaves. Returns how many were uncommitted.
fn uncommit(out: &Path, meta: &cutpoint_core::CheckpointMetadata) -> usize {
    let mut n = 0;
    for s in &meta.subtasks {
        for t in &s.pending_transactions {
            let committed = out.join(format!(
                "part-{}-{:020}.jsonl",
                s.task.subtask.0, t.checkpoint.0
            ));
            if committed.exists() {
                std::fs::rename(&committed, out.join(&t.handle)).unwrap();
                n += 1;
            }
        }
    }
    n
}

/// A PV job with the two-phase-commit file sink into `out`.
fn txn_spec(job: &str, out: &Path, parallelism: u32) -> JobSpec {
    let mut spec = pv_spec(
        job,
        600_000,
        2_000,
        Some(1_000_000),
        &format!(
            r#","checkpoint":{{"interval_ms":100,"retention":20}},"sink":{{"type":"transactional_file","dir":{:?}}}"#,
            out.display().to_string()
        ),
    );
    spec.parallelism = parallelism;
    spec
}

/// Every update of every key once in the committed output, none staged.
fn assert_output_exactly_once(out: &Path, keys: u64, events: u64) {
    let output = cutpoint_runtime::sink::read_output(out).unwrap();
    let expected = expected_counts(42, keys, events);
    assert_eq!(output.updates.len(), expected.len());
    for (k, want) in &expected {
        let mut got = ints(&output.updates[k]);
        got.sort_unstable();
        assert_eq!(got, (1..=*want).collect::<Vec<_>>(), "key {k}");
    }
}

/// Defect 4: a rescaled restore (3 → 2) with the two-phase-commit sink
/// commits the pre-committed transactions of the removed subtask too,
/// exactly once (each under its own name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescaled_two_phase_commit_restore_commits_every_transaction_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let storage = storage_at(dir.path().join("chk").to_str().unwrap());
    let spec = txn_spec("pv-2pc-rescale", &out, 3);
    let ids = run_to_end(&spec, &storage, &dir.path().join("w1")).await;
    let newest = storage.read_metadata(&spec.job_id, ids[0]).await.unwrap();
    assert!(uncommit(&out, &newest) >= 3, "every subtask pre-committed");
    let mut smaller = spec.clone();
    smaller.parallelism = 2;
    spawn_job(JobConfig {
        spec: smaller,
        storage: storage.clone(),
        restore_from: Some(RestoreFrom::Checkpoint(ids[0])),
        local_dir: dir.path().join("w2"),
        functions: Default::default(),
    })
    .join()
    .await
    .unwrap();
    assert_output_exactly_once(&out, 2_000, 600_000);
}

/// Defect 6: restoring an older checkpoint keeps the staging files a newer
/// ("superseded", still restorable) checkpoint pre-committed, so going back
/// to it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_an_older_checkpoint_keeps_the_newer_ones_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let storage = storage_at(dir.path().join("chk").to_str().unwrap());
    let spec = txn_spec("pv-2pc-back", &out, 2);
    let ids = run_to_end(&spec, &storage, &dir.path().join("w1")).await;
    assert!(ids.len() >= 3, "{ids:?}");
    let newest = storage.read_metadata(&spec.job_id, ids[0]).await.unwrap();
    assert!(uncommit(&out, &newest) >= 2);
    // Restore an older one, and stop once its sinks opened (they process
    // records), before it completes a checkpoint.
    let mut no_checkpoints = spec.clone();
    no_checkpoints.checkpoint.interval_ms = None;
    let older = spawn_job(JobConfig {
        spec: no_checkpoints,
        storage: storage.clone(),
        restore_from: Some(RestoreFrom::Checkpoint(ids[ids.len() - 1])),
        local_dir: dir.path().join("w2"),
        functions: Default::default(),
    });
    for _ in 0..1000 {
        let p = older.progress();
        if p.iter().any(|t| t.offset.is_none() && t.records > 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(older.status().checkpoints_completed, 0);
    older.cancel();
    let _ = older.join().await;
    // Going back to the newest works, and its output is whole.
    let back = spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: Some(RestoreFrom::Checkpoint(ids[0])),
        local_dir: dir.path().join("w3"),
        functions: Default::default(),
    })
    .join()
    .await;
    assert!(back.is_ok(), "{back:?}");
    assert_output_exactly_once(&out, 2_000, 600_000);
}

/// Confirm or refute (a): a `_metadata` PUT that landed but was reported as
/// failed, then a failed `_metadata` delete. Confirmed on the code before
/// the fix: the aborted checkpoint's own shared files were deleted anyway,
/// leaving a restorable-looking checkpoint without them. Now its files stay
/// until its folder is gone, so whatever storage lists as restorable is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_landed_metadata_that_cannot_be_deleted_keeps_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = faulty_storage(&dir.path().join("chk"));
    faults.add_rule(FaultRule {
        op: FaultOp::Put,
        path_contains: "/chk-3/_metadata".into(),
        action: FaultAction::FailAfter,
        remaining: Some(1),
    });
    faults.add_rule(FaultRule {
        op: FaultOp::Delete,
        path_contains: "/chk-3/_metadata".into(),
        action: FaultAction::Fail,
        remaining: None,
    });
    let spec = pv_spec(
        "pv-landed",
        800_000,
        20_000,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":100,"retention":2}"#,
    );
    let outcome = spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.path().join("w"),
        functions: Default::default(),
    })
    .join()
    .await
    .unwrap();
    assert!(outcome.checkpoints_failed >= 1, "{outcome:?}");
    let usage = storage.usage(&spec.job_id).await.unwrap();
    assert!(
        usage.checkpoints.contains(&CheckpointId(3)),
        "the landed _metadata is there: {usage:?}"
    );
    assert_eq!(usage.missing, Vec::<String>::new(), "{usage:?}");
    let meta = storage
        .read_metadata(&spec.job_id, CheckpointId(3))
        .await
        .unwrap();
    assert_checkpoint_state(&storage, &meta, 20_000, 800_000).await;
}

/// Confirm or refute (c): after an aborted checkpoint's folder is deleted
/// and the process restarts, does its id repeat? Confirmed on the code
/// before the fix (the next id was the highest folder + 1). Now ids come
/// from writer leases recorded in storage, so a restart continues above
/// every id handed out before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_ids_never_repeat_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = faulty_storage(&dir.path().join("chk"));
    let spec = pv_spec(
        "pv-ids",
        5_000_000,
        2_000,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":100,"retention":3,"tolerable_failures":100}"#,
    );
    let mut first = spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.path().join("w1"),
        functions: Default::default(),
    });
    first.wait_for(|s| s.checkpoints_completed >= 1).await;
    // Every later checkpoint fails to publish; its folder is deleted.
    faults.add_rule(FaultRule {
        op: FaultOp::Put,
        path_contains: "/_metadata".into(),
        action: FaultAction::Fail,
        remaining: None,
    });
    let s = first.wait_for(|s| s.checkpoints_failed >= 2).await;
    first.cancel();
    let _ = first.join().await;
    let completed = s.latest_completed.unwrap();
    let dirs = storage.checkpoint_dirs(&spec.job_id).await.unwrap();
    assert_eq!(
        dirs.last(),
        Some(&completed),
        "aborted checkpoints left nothing"
    );
    faults.clear();
    let mut second = spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: Some(RestoreFrom::Latest),
        local_dir: dir.path().join("w2"),
        functions: Default::default(),
    });
    let s = second
        .wait_for(|s| s.latest_completed.is_some_and(|c| c != completed))
        .await;
    second.cancel();
    let _ = second.join().await;
    let id = s.latest_completed.unwrap();
    assert!(
        id.0 > completed.0 + 2,
        "checkpoint id {id} repeats one the first run handed out (it completed {completed} and failed two after it)"
    );
}

/// `cutpoint serve` with extra environment; killed when dropped.
struct Serve {
    child: std::process::Child,
    url: String,
    http: reqwest::Client,
}

impl Serve {
    fn start(chk: &Path, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutpoint"))
            .args(["serve", "--listen", "127.0.0.1:0", "--checkpoint-dir"])
            .arg(chk)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        Serve {
            url: format!("http://{}", v["listening"].as_str().unwrap()),
            child,
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Triggers a checkpoint of `job_type` and waits for it to complete.
    async fn checkpoint(&self, job: &str, checkpoint_type: &str) -> u64 {
        let t = self
            .post(
                &format!("/v1/jobs/{job}/checkpoints"),
                serde_json::json!({ "type": checkpoint_type }),
            )
            .await;
        let location = format!("{}{}", self.url, t["location"].as_str().unwrap());
        for _ in 0..600 {
            let c: serde_json::Value = self
                .http
                .get(&location)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            match c["status"].as_str() {
                Some("COMPLETED") => return t["checkpoint_id"].as_u64().unwrap(),
                Some("IN_PROGRESS") => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                _ => panic!("checkpoint did not complete: {c}"),
            }
        }
        panic!("checkpoint still in progress: {t}");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Confirm or refute (b): a lost "checkpoint n complete" notice after a
/// full checkpoint, with retention 1 — can the next incremental checkpoint
/// reference SSTs that retention deleted? Confirmed on the code before the
/// fix: snapshot workers reused the files of the last checkpoint they were
/// told about (1), whose shared files retention had deleted when the full
/// checkpoint (2) completed. Now each barrier says which completed
/// checkpoint its snapshot may build on, and notices only drive sinks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_completion_notice_never_makes_a_checkpoint_reference_deleted_files() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    // The second completion notice (of the full checkpoint) is lost.
    let server = Serve::start(
        &chk,
        &[(
            "CUTPOINT_FAILPOINTS",
            "coordinator::notify_complete=1*off->1*return->off",
        )],
    );
    let (events, keys) = (20_000_000, 20_000);
    server
        .post(
            "/v1/jobs",
            serde_json::json!({
                "job_id": "pv-lost",
                "source": {"type": "generator", "partitions": 2, "events": events, "keys": keys, "seed": 42, "rate_per_s": 500_000},
                "key_by": "app_id",
                "aggregate": {"type": "count"},
                "checkpoint": {"interval_ms": null, "retention": 1},
            }),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.checkpoint("pv-lost", "incremental").await;
    server.checkpoint("pv-lost", "full").await;
    let third = server.checkpoint("pv-lost", "incremental").await;
    let storage = storage_at(chk.to_str().unwrap());
    let job = JobId::new("pv-lost").unwrap();
    let usage = storage.usage(&job).await.unwrap();
    assert_eq!(usage.checkpoints, vec![CheckpointId(third)], "{usage:?}");
    assert_eq!(usage.missing, Vec::<String>::new(), "{usage:?}");
    let meta = storage
        .read_metadata(&job, CheckpointId(third))
        .await
        .unwrap();
    assert_checkpoint_state(&storage, &meta, keys, events).await;
}

impl Serve {
    async fn get(&self, path: &str) -> serde_json::Value {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    async fn wait_job(
        &self,
        job: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        for _ in 0..1200 {
            let v = self.get(&format!("/v1/jobs/{job}")).await;
            if pred(&v) {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "job {job} never got there: {}",
            self.get(&format!("/v1/jobs/{job}")).await
        );
    }
}

fn pv_json(job: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "job_id": job,
        "source": {"type": "generator", "partitions": 2, "events": 50_000_000u64, "keys": 5_000, "seed": 42, "rate_per_s": 200_000},
        "key_by": "app_id",
        "aggregate": {"type": "count"},
        "checkpoint": {"interval_ms": null, "retention": 5},
    });
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

/// Defect 8a: a restore is one operation the server owns. Here the
/// request times out (1 s) while the running job is still stopping (its
/// pending checkpoint's cleanup is slow): the restore still completes, and
/// the job runs, restored, with the outcome on it. Before, the dropped
/// handler left the job cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_completes_when_its_request_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(
        &dir.path().join("chk"),
        &[
            ("CUTPOINT_REQUEST_TIMEOUT_MS", "1000"),
            // Checkpoint 2 hangs in upload; deleting its folder takes 3 s.
            (
                "CUTPOINT_FAULTS",
                "put:/chk-2/:delay=600000;delete:/chk-2/:delay=3000",
            ),
        ],
    );
    server
        .post("/v1/jobs", pv_json("pv-restore-op", serde_json::json!({})))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let first = server.checkpoint("pv-restore-op", "incremental").await;
    server
        .post("/v1/jobs/pv-restore-op/checkpoints", serde_json::json!({}))
        .await;
    let (status, _) = server
        .send(
            reqwest::Method::POST,
            "/v1/jobs/pv-restore-op/restore",
            serde_json::json!({ "checkpoint_id": first }),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::REQUEST_TIMEOUT);
    let job = server
        .wait_job("pv-restore-op", |j| {
            j["last_restore"]["outcome"] == "restored" && j["state"] == "RUNNING"
        })
        .await;
    assert_eq!(job["last_restore"]["requested"], first.to_string(), "{job}");
}

/// Defect 8c: `?force=true` deletes a running job's only restorable
/// checkpoint (also its incremental base, so the next checkpoint uploads
/// every file), as the 409 without it says; the next checkpoint is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_deletes_a_running_jobs_only_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let server = Serve::start(&chk, &[]);
    server
        .post("/v1/jobs", pv_json("pv-force", serde_json::json!({})))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let only = server.checkpoint("pv-force", "incremental").await;
    let path = format!("/v1/jobs/pv-force/checkpoints/{only}");
    let (status, problem) = server
        .send(reqwest::Method::DELETE, &path, serde_json::json!(null))
        .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("force"),
        "{problem}"
    );
    let (status, _) = server
        .send(
            reqwest::Method::DELETE,
            &format!("{path}?force=true"),
            serde_json::json!(null),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
    let storage = storage_at(chk.to_str().unwrap());
    let job = JobId::new("pv-force").unwrap();
    assert!(storage.list_checkpoints(&job).await.unwrap().is_empty());
    let next = server.checkpoint("pv-force", "incremental").await;
    let meta = storage
        .read_metadata(&job, CheckpointId(next))
        .await
        .unwrap();
    assert!(
        meta.subtasks.iter().all(|s| s.files_reused == 0),
        "nothing reused from the deleted base"
    );
    assert_checkpoint_state(&storage, &meta, 5_000, 50_000_000).await;
}

/// Review finding: two concurrent submits of one job. Exactly one starts;
/// the other is refused before it takes the job's storage, so the one that
/// runs is never fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_of_one_job_start_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(&dir.path().join("chk"), &[]);
    let spec = pv_json("pv-twice", serde_json::json!({}));
    let ((a, _), (b, _)) = tokio::join!(
        server.send(reqwest::Method::POST, "/v1/jobs", spec.clone()),
        server.send(reqwest::Method::POST, "/v1/jobs", spec.clone()),
    );
    let mut statuses = [a.as_u16(), b.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409]);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.checkpoint("pv-twice", "incremental").await;
    let job = server.get("/v1/jobs/pv-twice").await;
    assert_eq!(job["state"], "RUNNING", "not fenced: {job}");
}

/// Review finding: a restore whose job fails while restoring (a state
/// file of the chosen checkpoint is gone) rolls back to the job's latest
/// checkpoint, and says so on the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_fails_after_starting_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let server = Serve::start(&chk, &[]);
    server
        .post("/v1/jobs", pv_json("pv-rollback", serde_json::json!({})))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let broken = server.checkpoint("pv-rollback", "incremental").await;
    let latest = server.checkpoint("pv-rollback", "full").await;
    // A shared file of the incremental one goes missing (the full one has none).
    let storage = storage_at(chk.to_str().unwrap());
    let job = JobId::new("pv-rollback").unwrap();
    let meta = storage
        .read_metadata(&job, CheckpointId(broken))
        .await
        .unwrap();
    let shared = meta
        .shared_files()
        .next()
        .expect("an incremental checkpoint has shared files");
    storage.delete_state_file(&job, &shared.path).await.unwrap();
    let (status, problem) = server
        .send(
            reqwest::Method::POST,
            "/v1/jobs/pv-rollback/restore",
            serde_json::json!({ "checkpoint_id": broken }),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("started again from its latest checkpoint"),
        "{problem}"
    );
    let view = server
        .wait_job("pv-rollback", |j| j["state"] == "RUNNING")
        .await;
    assert_eq!(view["last_restore"]["outcome"], "rolled_back", "{view}");
    assert_eq!(view["restored_from"][0], latest, "{view}");
}

/// Found by the 1000-cycle chaos run: a `_metadata` write that hangs past
/// the checkpoint timeout. The checkpoint publishes when the write ends,
/// but meanwhile the orphan sweep judged its files by facts that no longer
/// held it as pending (the last ack had taken it out of the tracker) and
/// deleted the last-acking task's new SSTs: a completed checkpoint with
/// missing files. Now its files count as pending while `_metadata` is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_metadata_write_keeps_the_checkpoints_files() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = faulty_storage(&dir.path().join("chk"));
    faults.add_rule(FaultRule {
        op: FaultOp::Put,
        path_contains: "/_metadata".into(),
        action: FaultAction::Delay(std::time::Duration::from_millis(2500)),
        remaining: Some(1),
    });
    let spec = pv_spec(
        "pv-hanging-meta",
        20_000_000,
        2_000,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":null,"retention":5,"timeout_ms":800,"orphan_sweep_interval_ms":100}"#,
    );
    let mut job = spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.path().join("work"),
        functions: Default::default(),
    });
    job.wait_for(|s| s.state == cutpoint_coordinator::JobState::Running)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let id = job
        .trigger_checkpoint(cutpoint_core::CheckpointType::Incremental)
        .await
        .unwrap();
    job.wait_for(|s| s.checkpoints_completed >= 1).await;
    job.cancel();
    assert!(matches!(job.join().await, Err(JobError::Cancelled)));
    let usage = storage.usage(&spec.job_id).await.unwrap();
    assert_eq!(usage.checkpoints, vec![id], "{usage:?}");
    assert_eq!(usage.missing, Vec::<String>::new(), "{usage:?}");
}

/// Found by the 1000-cycle chaos run: a panic in the GC task (here at its
/// delete of shared files) ended the task, and the job ran on without GC,
/// leaking every file retention released from then on. Now the job starts
/// a new GC task on what storage holds; its sweeps collect what the old
/// one left, and the end of the job leaves exactly what checkpoints name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_gc_task_is_restarted_and_nothing_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let server = Serve::start(
        &chk,
        &[("CUTPOINT_FAILPOINTS", "coordinator::delete_shared=1*panic")],
    );
    let mut spec = pv_json("pv-gc-panic", serde_json::json!({}));
    spec["source"]["events"] = 3_000_000.into();
    spec["source"]["rate_per_s"] = 1_000_000.into();
    spec["checkpoint"] = serde_json::json!({"interval_ms": null, "retention": 1});
    server.post("/v1/jobs", spec).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Retention 1: when the full checkpoint completes, the first one's
    // shared files are deleted (the fail point's hit).
    for t in ["incremental", "full", "incremental"] {
        server.checkpoint("pv-gc-panic", t).await;
    }
    server
        .wait_job("pv-gc-panic", |j| j["state"] == "FINISHED")
        .await;
    let metrics = server
        .http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"cutpoint_gc_restarts_total{job="pv-gc-panic"} 1"#),
        "{metrics}"
    );
    let storage = storage_at(chk.to_str().unwrap());
    let usage = storage
        .usage(&JobId::new("pv-gc-panic").unwrap())
        .await
        .unwrap();
    assert_eq!(usage.unreferenced, Vec::<String>::new(), "{usage:?}");
    assert_eq!(usage.missing, Vec::<String>::new(), "{usage:?}");
}
