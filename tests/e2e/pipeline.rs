//! Jobs driven through the library API: failure + restore, hanging uploads,
//! declining tasks.

use std::time::Duration;

use cutpoint_coordinator::{spawn_job, JobConfig};
use cutpoint_core::{CheckpointId, CheckpointType, JobId};
use cutpoint_storage::faults::{FaultAction, FaultOp, FaultRule};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pv_job_recovers_from_task_failure_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    for location in locations(dir.path(), "pv-fail") {
        pv_failure_run(&location, dir.path()).await;
    }
}

async fn pv_failure_run(location: &str, dir: &std::path::Path) {
    let storage = storage_at(location);
    let (events, keys) = (2_000_000, 20_000);
    let spec = pv_spec(
        "pv-fail",
        events,
        keys,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":100},"inject_failure":{"subtask":0,"after_records":500000}"#,
    );
    let job = spawn_job(JobConfig {
        spec,
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.join("work"),
        functions: Default::default(),
    });
    let outcome = job.join().await.expect("job finishes");
    assert_eq!(
        outcome.restarts, 1,
        "exactly one injected failure: {:?}",
        outcome.failures
    );
    assert!(
        outcome.failures[0].contains("injected failure"),
        "{:?}",
        outcome.failures
    );
    assert_eq!(
        outcome.restored_from.len(),
        1,
        "restored from a completed checkpoint"
    );
    assert!(outcome.restored_from[0] >= CheckpointId(1));
    assert!(
        outcome.records_read < events,
        "the last attempt resumed from the checkpoint's offsets, not from the start"
    );
    assert_exact(&final_counts(&outcome), &expected_counts(42, keys, events));
    let job_id = JobId::new("pv-fail").unwrap();
    assert_storage_is_exactly_referenced(&storage, &job_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_under_a_memory_budget_is_exact_after_a_restore() {
    // 1 MB for 20,000 keys: ~3,300 entries per subtask of ~10,000 — most
    // state lives in RocksDB only, evicted and read through; dirty entries
    // are written behind between checkpoints.
    let dir = tempfile::tempdir().unwrap();
    let (events, keys) = (600_000, 20_000);
    let spec = pv_spec(
        "pv-budget",
        events,
        keys,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":150},"state":{"memory_budget_mb":1},
           "inject_failure":{"subtask":0,"after_records":120000}"#,
    );
    for mode in ["exactly_once", "unaligned"] {
        let mut spec = spec.clone();
        spec.checkpoint.mode = serde_json::from_value(serde_json::json!(mode)).unwrap();
        let outcome = spawn_job(JobConfig {
            spec,
            storage: storage_at(dir.path().join(mode).to_str().unwrap()),
            restore_from: None,
            local_dir: dir.path().join(format!("work-{mode}")),
            functions: Default::default(),
        })
        .join()
        .await
        .unwrap();
        assert_eq!(outcome.restarts, 1, "{mode}: {outcome:?}");
        assert_exact(&final_counts(&outcome), &expected_counts(42, keys, events));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_upload_times_out_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = faulty_storage(&dir.path().join("chk"));
    faults.add_rule(FaultRule {
        op: FaultOp::Put,
        path_contains: "/chk-1/agg/".into(),
        action: FaultAction::Delay(Duration::from_secs(3600)),
        remaining: None,
    });
    let spec = pv_spec(
        "pv-hang",
        3_000_000,
        10_000,
        Some(500_000),
        r#","checkpoint":{"interval_ms":null,"timeout_ms":1500}"#,
    );
    let job_id = spec.job_id.clone();
    let mut job = spawn_job(JobConfig {
        spec,
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.path().join("work"),
        functions: Default::default(),
    });
    job.wait_for(|s| s.state == cutpoint_coordinator::job::JobState::Running)
        .await;
    let first = job
        .trigger_checkpoint(CheckpointType::Incremental)
        .await
        .unwrap();
    assert_eq!(first, CheckpointId(1));
    let s = job.wait_for(|s| s.checkpoints_failed >= 1).await;
    let msg = s.last_checkpoint_failure.unwrap_or_default();
    assert!(
        msg.contains("checkpoint 1") && msg.contains("timeout"),
        "{msg}"
    );
    assert!(storage
        .list_checkpoint_objects(&job_id, first)
        .await
        .unwrap()
        .is_empty());

    let second = job
        .trigger_checkpoint(CheckpointType::Incremental)
        .await
        .unwrap();
    let s = job
        .wait_for(|s| {
            s.checkpoints_completed >= 1 || s.state != cutpoint_coordinator::job::JobState::Running
        })
        .await;
    assert_eq!(s.latest_completed, Some(second), "{s:?}");
    // After the next completion nothing of checkpoint 1 is left anywhere.
    assert!(storage
        .list_checkpoint_objects(&job_id, first)
        .await
        .unwrap()
        .is_empty());
    let objects = storage.list_job_objects(&job_id).await.unwrap();
    assert!(
        objects.iter().all(|p| !p.starts_with("chk-1/")),
        "{objects:?}"
    );
    assert!(
        objects.contains(&"chk-2/_metadata".to_string()),
        "{objects:?}"
    );
    job.cancel();
    assert!(matches!(
        job.join().await,
        Err(cutpoint_coordinator::JobError::Cancelled)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_declining_task_fails_the_whole_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = faulty_storage(&dir.path().join("chk"));
    faults.add_rule(FaultRule {
        op: FaultOp::Put,
        path_contains: "/chk-1/agg/1/".into(),
        action: FaultAction::Fail,
        remaining: None,
    });
    let spec = pv_spec(
        "pv-decline",
        3_000_000,
        10_000,
        Some(500_000),
        r#","checkpoint":{"interval_ms":null}"#,
    );
    let job_id: JobId = spec.job_id.clone();
    let mut job = spawn_job(JobConfig {
        spec,
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.path().join("work"),
        functions: Default::default(),
    });
    job.wait_for(|s| s.state == cutpoint_coordinator::job::JobState::Running)
        .await;
    let first = job.trigger_checkpoint(CheckpointType::Full).await.unwrap();
    let s = job.wait_for(|s| s.checkpoints_failed >= 1).await;
    let msg = s.last_checkpoint_failure.unwrap_or_default();
    assert!(msg.contains("declined by agg[1]"), "{msg}");
    assert_eq!(
        s.checkpoints_completed, 0,
        "agg[0] acked, yet the checkpoint must not complete"
    );
    let second = job.trigger_checkpoint(CheckpointType::Full).await.unwrap();
    let s = job.wait_for(|s| s.checkpoints_completed >= 1).await;
    assert_eq!(s.latest_completed, Some(second));
    let objects = storage.list_job_objects(&job_id).await.unwrap();
    assert!(
        objects
            .iter()
            .all(|p| !p.starts_with(&format!("chk-{}/", first.0))),
        "{objects:?}"
    );
    // The completed checkpoint restores: list it from storage and verify.
    let listed = storage.list_checkpoints(&job_id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].metadata.is_ok());
    job.cancel();
    let _ = job.join().await;
}

/// The source article's example: two partitions, two PV tasks, the barrier
/// of partition 1 late. Returns (final counts, expected counts, the
/// restored checkpoint's metadata).
async fn article_scenario(
    mode: &str,
    extra: &str,
) -> (
    std::collections::BTreeMap<cutpoint_core::Key, i64>,
    std::collections::BTreeMap<cutpoint_core::Key, i64>,
    cutpoint_core::CheckpointMetadata,
) {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_at(dir.path().join("chk").to_str().unwrap());
    let (events, keys) = (2_000_000, 1_000);
    let spec = pv_spec(
        &format!("article-{}", mode.replace('_', "-")),
        events,
        keys,
        Some(1_000_000),
        &format!(
            r#","checkpoint":{{"interval_ms":null,"retention":10,"mode":"{mode}"{extra}}},
               "inject_barrier_delay":{{"partition":1,"delay_ms":300}},
               "inject_failure":{{"subtask":0,"after_records":1}}"#
        ),
    );
    let job_id = spec.job_id.clone();
    let mut job = spawn_job(JobConfig {
        spec,
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.path().join("work"),
        functions: Default::default(),
    });
    job.wait_for(|s| s.state == cutpoint_coordinator::JobState::Running)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = job
        .trigger_checkpoint(CheckpointType::Incremental)
        .await
        .unwrap();
    let outcome = job.join().await.unwrap();
    assert_eq!(outcome.restored_from, vec![id], "{outcome:?}");
    let meta = storage.read_metadata(&job_id, id).await.unwrap();
    (
        final_counts(&outcome),
        expected_counts(42, keys, events),
        meta,
    )
}

fn beyond_barrier(meta: &cutpoint_core::CheckpointMetadata) -> u64 {
    meta.subtasks.iter().map(|s| s.records_beyond_barrier).sum()
}

fn persisted(meta: &cutpoint_core::CheckpointMetadata) -> u64 {
    meta.subtasks.iter().map(|s| s.persisted_data_size).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn article_example_at_least_once_overcounts_by_the_records_beyond_the_barrier() {
    let (actual, expected, meta) = article_scenario("at_least_once", "").await;
    let beyond = beyond_barrier(&meta);
    assert!(
        beyond > 0,
        "the late barrier let records of partition 0 through"
    );
    let mut over = 0i64;
    for (k, want) in &expected {
        let got = actual[k];
        assert!(
            got >= *want,
            "key {k}: {got} < {want}: at-least-once must never lose records"
        );
        over += got - want;
    }
    assert_eq!(actual.len(), expected.len());
    assert!(over > 0, "some app is over-counted");
    assert_eq!(
        over as u64, beyond,
        "the over-count is exactly the records processed beyond the barrier"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn article_example_exactly_once_is_exact() {
    let (actual, expected, meta) = article_scenario("exactly_once", "").await;
    assert_eq!(
        beyond_barrier(&meta),
        0,
        "aligned: nothing passes the barrier"
    );
    assert_eq!(persisted(&meta), 0, "aligned: no in-flight data");
    assert_exact(&actual, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn article_example_unaligned_is_exact() {
    // The early barrier overtakes; partition 1's records before its late
    // barrier are persisted as channel state and replayed after the restore.
    let (actual, expected, meta) = article_scenario("unaligned", "").await;
    assert!(meta.subtasks.iter().any(|s| s.unaligned), "{meta:?}");
    assert!(
        persisted(&meta) > 0,
        "the late partition's in-flight records were persisted"
    );
    assert_eq!(beyond_barrier(&meta), 0);
    assert_exact(&actual, &expected);
}

/// Two unaligned checkpoints overlap at the aggregates: partition 1 injects
/// each barrier 300 ms late, so while a task still collects channel state
/// for n, partition 0 has already delivered n + 1. Its records after n + 1
/// must wait for snapshot n + 1 (a restore from n + 1 would count them twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_unaligned_checkpoints_restore_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_at(dir.path().join("chk").to_str().unwrap());
    let (events, keys) = (2_000_000, 1_000);
    let spec = pv_spec(
        "overlap",
        events,
        keys,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":null,"retention":10,"mode":"unaligned","max_concurrent":2},
           "inject_barrier_delay":{"partition":1,"delay_ms":300}"#,
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
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = job
        .trigger_checkpoint(CheckpointType::Incremental)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let second = job
        .trigger_checkpoint(CheckpointType::Incremental)
        .await
        .unwrap();
    assert_eq!(second.0, first.0 + 1);
    let outcome = job.join().await.unwrap();
    assert_exact(&final_counts(&outcome), &expected_counts(42, keys, events));
    // Both checkpoints restore exactly.
    for id in [first, second] {
        let mut again = spec.clone();
        again.inject_barrier_delay = None;
        let outcome = spawn_job(JobConfig {
            spec: again,
            storage: storage.clone(),
            restore_from: Some(cutpoint_coordinator::RestoreFrom::Checkpoint(id)),
            local_dir: dir.path().join(format!("restore-{id}")),
            functions: Default::default(),
        })
        .join()
        .await
        .unwrap();
        assert_eq!(outcome.restored_from, vec![id]);
        assert_exact(&final_counts(&outcome), &expected_counts(42, keys, events));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alignment_past_the_aligned_timeout_turns_unaligned_and_stays_exact() {
    let (actual, expected, meta) =
        article_scenario("exactly_once", r#","aligned_checkpoint_timeout_ms":40"#).await;
    let aggs: Vec<_> = meta
        .subtasks
        .iter()
        .filter(|s| s.key_group_range.is_some())
        .collect();
    assert!(
        aggs.iter().all(|s| s.unaligned),
        "switched after 40 ms: {aggs:?}"
    );
    assert!(aggs.iter().all(|s| s.alignment_duration_ms >= 40));
    assert!(persisted(&meta) > 0);
    assert_exact(&actual, &expected);
}

/// Events and keys of the sink scenarios (the PV job's generator, seed 42).
const SINK_EVENTS: u64 = 1_000_000;
const SINK_KEYS: u64 = 2_000;

/// Runs the PV job into `sink` (a sink's JSON, or a list of them) in `dir`
/// with one injected failure (optionally between the pre-commit of
/// checkpoint 1 and its completion: `delay_first_metadata`); returns the
/// checkpoints restored from.
async fn run_into_sinks(
    dir: &std::path::Path,
    sink: &str,
    after_completed_checkpoint: bool,
    delay_first_metadata: bool,
) -> Vec<CheckpointId> {
    let (storage, faults) = faulty_storage(&dir.join("chk"));
    if delay_first_metadata {
        // The failure falls between the sinks' pre-commit of checkpoint 1
        // and its completion.
        faults.add_rule(FaultRule {
            op: FaultOp::Put,
            path_contains: "/chk-1/_metadata".into(),
            action: FaultAction::Delay(Duration::from_millis(800)),
            remaining: Some(1),
        });
    }
    let spec = pv_spec(
        "pv-sink",
        SINK_EVENTS,
        SINK_KEYS,
        Some(1_000_000),
        &format!(
            r#","checkpoint":{{"interval_ms":150}},"sink":{sink},
               "inject_failure":{{"subtask":0,"after_records":150000,"after_completed_checkpoint":{after_completed_checkpoint}}}"#
        ),
    );
    let job = spawn_job(JobConfig {
        spec,
        storage,
        restore_from: None,
        local_dir: dir.join("work"),
        functions: Default::default(),
    });
    let outcome = job.join().await.unwrap();
    assert_eq!(outcome.restarts, 1, "{outcome:?}");
    outcome.restored_from
}

/// Every update a file sink's folder made visible, per key, and the names
/// of its other files.
fn sink_updates(
    out: &std::path::Path,
) -> (
    std::collections::BTreeMap<cutpoint_core::Key, Vec<i64>>,
    Vec<String>,
) {
    let output = cutpoint_runtime::sink::read_output(out).unwrap();
    let updates = output.updates.iter();
    (
        updates.map(|(k, v)| (k.clone(), ints(v))).collect(),
        output.others,
    )
}

/// Runs the PV job into a sink with one injected failure; returns every
/// update the sink made visible, per key, and the checkpoint restored from.
async fn sink_scenario(
    sink: &str,
    after_completed_checkpoint: bool,
    delay_first_metadata: bool,
) -> (
    std::collections::BTreeMap<cutpoint_core::Key, Vec<i64>>,
    std::collections::BTreeMap<cutpoint_core::Key, i64>,
    Vec<CheckpointId>,
    Vec<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let json = format!(
        r#"{{"type":"{sink}","dir":{:?}}}"#,
        out.display().to_string()
    );
    let restored = run_into_sinks(
        dir.path(),
        &json,
        after_completed_checkpoint,
        delay_first_metadata,
    )
    .await;
    let (updates, others) = sink_updates(&out);
    (
        updates,
        expected_counts(42, SINK_KEYS, SINK_EVENTS),
        restored,
        others,
    )
}

/// Committed output: no staging file left, every update of every key once.
fn assert_every_update_exactly_once(
    others: &[String],
    updates: &std::collections::BTreeMap<cutpoint_core::Key, Vec<i64>>,
    expected: &std::collections::BTreeMap<cutpoint_core::Key, i64>,
) {
    assert!(others.is_empty(), "no staging file left: {others:?}");
    assert_eq!(updates.len(), expected.len());
    for (k, want) in expected {
        let mut got = updates[k].clone();
        got.sort_unstable();
        assert_eq!(
            got,
            (1..=*want).collect::<Vec<_>>(),
            "key {k}: every update exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_commit_sink_is_exactly_once_when_failing_after_commit() {
    let (updates, expected, restored, others) =
        sink_scenario("transactional_file", true, false).await;
    assert_eq!(restored.len(), 1);
    assert_every_update_exactly_once(&others, &updates, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_commit_sink_is_exactly_once_when_failing_between_precommit_and_commit() {
    let (updates, expected, restored, others) =
        sink_scenario("transactional_file", false, true).await;
    assert_eq!(
        restored,
        vec![CheckpointId(1)],
        "restored from the checkpoint the sinks pre-committed"
    );
    assert_every_update_exactly_once(&others, &updates, &expected);
}

/// Three sinks (two-phase commit, plain file, two-phase commit) fed the
/// same updates; the failure falls between the pre-commit of checkpoint 1
/// and its completion, so the restore commits each transactional sink's
/// own transactions: both hold every update exactly once, the plain one
/// every update at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_sinks_each_get_every_update_after_a_failure_between_precommit_and_commit() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).display().to_string();
    let sinks = format!(
        r#"[{{"type":"transactional_file","dir":{:?}}},{{"type":"file","dir":{:?}}},
            {{"type":"transactional_file","dir":{:?}}}]"#,
        out("a"),
        out("plain"),
        out("b")
    );
    let restored = run_into_sinks(dir.path(), &sinks, false, true).await;
    assert_eq!(restored, vec![CheckpointId(1)]);
    let expected = expected_counts(42, SINK_KEYS, SINK_EVENTS);
    for name in ["a", "b"] {
        let (updates, others) = sink_updates(&dir.path().join(name));
        assert_every_update_exactly_once(&others, &updates, &expected);
    }
    let (plain, _) = sink_updates(&dir.path().join("plain"));
    assert_eq!(plain.len(), expected.len());
    for (k, want) in &expected {
        let mut got = plain[k].clone();
        got.sort_unstable();
        got.dedup();
        assert_eq!(
            got,
            (1..=*want).collect::<Vec<_>>(),
            "key {k}: every update"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_file_sink_repeats_updates_after_a_restore() {
    let (updates, expected, restored, _) = sink_scenario("file", true, false).await;
    assert_eq!(restored.len(), 1);
    let duplicated = updates.values().filter(|vs| {
        let mut v = (*vs).clone();
        v.sort_unstable();
        v.windows(2).any(|w| w[0] == w[1])
    });
    assert!(
        duplicated.count() > 0,
        "a sink that writes on its own clock duplicates output after a restore"
    );
    // Its last value per key is still the exact final count.
    for (k, want) in &expected {
        assert_eq!(updates[k].iter().max(), Some(want));
    }
}

/// A savepoint of `job`, triggered again while a periodic checkpoint
/// holds the one in-flight slot (`TooManyConcurrent`, the documented
/// refusal when a savepoint races a periodic checkpoint).
async fn savepoint_when_a_slot_is_free(
    job: &cutpoint_coordinator::job::JobHandle,
) -> cutpoint_coordinator::job::SavepointInfo {
    use cutpoint_coordinator::job::SavepointError;
    use cutpoint_coordinator::tracker::TriggerRefusal;
    for _ in 0..200 {
        match job.trigger_savepoint().await {
            Err(SavepointError::Refused(TriggerRefusal::TooManyConcurrent(_))) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other.expect("savepoint"),
        }
    }
    panic!("a periodic checkpoint held the only slot for 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_outlives_retention_and_restores_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for location in locations(dir.path(), "savepoint") {
        let storage = storage_at(&location);
        let (events, keys) = (2_000_000, 10_000);
        let spec = pv_spec(
            "pv-sp",
            events,
            keys,
            Some(1_000_000),
            r#","checkpoint":{"interval_ms":100,"retention":1}"#,
        );
        let mut job = spawn_job(JobConfig {
            spec: spec.clone(),
            storage: storage.clone(),
            restore_from: None,
            local_dir: dir.path().join("work"),
            functions: Default::default(),
        });
        job.wait_for(|s| s.checkpoints_completed >= 1).await;
        let sp = savepoint_when_a_slot_is_free(&job).await;
        // Retention 1: let several newer checkpoints subsume the one copied.
        let after = sp.checkpoint_id.0 + 3;
        job.wait_for(|s| s.latest_completed.is_some_and(|c| c.0 >= after))
            .await;
        job.cancel();
        let _ = job.join().await;
        let job_id = spec.job_id.clone();
        let listed: Vec<_> = storage
            .list_checkpoints(&job_id)
            .await
            .unwrap()
            .iter()
            .map(|l| l.checkpoint_id)
            .collect();
        assert!(
            !listed.contains(&sp.checkpoint_id),
            "retention deleted the checkpoint: {listed:?}"
        );
        let stored = storage.list_savepoints().await.unwrap();
        assert_eq!(stored.len(), 1, "{location}");
        assert!(stored[0].1.is_ok());

        // By path (its external_path) as well as by id; a path outside
        // this storage is refused, naming both.
        let elsewhere: cutpoint_coordinator::RestoreFrom =
            format!("savepoint:/elsewhere/savepoints/{}", sp.savepoint_id)
                .parse()
                .unwrap();
        let e = cutpoint_coordinator::restore::resolve(&storage, &spec.job_id, elsewhere)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/elsewhere/") && e.contains("not a savepoint of this storage"),
            "{e}"
        );
        let by_path = format!("savepoint:{}", sp.external_path);
        let from: cutpoint_coordinator::RestoreFrom = by_path.parse().unwrap();
        assert!(
            matches!(from, cutpoint_coordinator::RestoreFrom::SavepointPath(_)),
            "{by_path}"
        );
        let outcome = spawn_job(JobConfig {
            spec,
            storage: storage.clone(),
            restore_from: Some(from),
            local_dir: dir.path().join("work2"),
            functions: Default::default(),
        })
        .join()
        .await
        .unwrap();
        assert_eq!(outcome.restored_from.len(), 1, "{location}");
        assert!(
            outcome.restored_from[0] > *listed.iter().max().unwrap(),
            "imported as a new checkpoint id"
        );
        assert_exact(&final_counts(&outcome), &expected_counts(42, keys, events));
        assert_eq!(
            storage.list_savepoints().await.unwrap().len(),
            1,
            "the savepoint stays"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_down_fails_the_job_clearly_and_it_resumes_when_storage_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = faulty_storage(&dir.path().join("chk"));
    let (events, keys) = (3_000_000, 10_000);
    let spec = pv_spec(
        "pv-down",
        events,
        keys,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":100,"tolerable_failures":2},"restart":{"max_attempts":0}"#,
    );
    let mut job = spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.path().join("work"),
        functions: Default::default(),
    });
    job.wait_for(|s| s.checkpoints_completed >= 2).await;
    // Storage goes down for writes.
    faults.add_rule(FaultRule {
        op: FaultOp::Put,
        path_contains: "jobs/pv-down/".into(),
        action: FaultAction::Fail,
        remaining: None,
    });
    let err = job
        .join()
        .await
        .expect_err("the job fails once failures exceed the tolerable count");
    let msg = err.to_string();
    assert!(
        msg.contains("exceed tolerable_failures=2") && msg.contains("injected Put failure"),
        "{msg}"
    );
    let before = storage.list_checkpoints(&spec.job_id).await.unwrap();
    assert!(!before.is_empty());

    // Storage is back: restart from the latest completed checkpoint.
    faults.clear();
    let outcome = spawn_job(JobConfig {
        spec,
        storage: storage.clone(),
        restore_from: Some(cutpoint_coordinator::RestoreFrom::Latest),
        local_dir: dir.path().join("work2"),
        functions: Default::default(),
    })
    .join()
    .await
    .unwrap();
    assert_eq!(outcome.restored_from, vec![before[0].checkpoint_id]);
    assert_exact(&final_counts(&outcome), &expected_counts(42, keys, events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_never_jumps_to_a_newer_checkpoint_of_an_earlier_run() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_at(dir.path().join("chk").to_str().unwrap());
    let (events, keys) = (1_500_000, 5_000);
    let spec = pv_spec(
        "pv-runs",
        events,
        keys,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":100,"retention":20}"#,
    );
    spawn_job(JobConfig {
        spec: spec.clone(),
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.path().join("w1"),
        functions: Default::default(),
    })
    .join()
    .await
    .unwrap();
    let ids: Vec<CheckpointId> = storage
        .list_checkpoints(&spec.job_id)
        .await
        .unwrap()
        .iter()
        .map(|l| l.checkpoint_id)
        .collect();
    let (newest, oldest) = (ids[0], *ids.last().unwrap());
    assert!(newest > oldest, "{ids:?}");

    // Restore the oldest; a task fails right after its first snapshot.
    let mut failing = spec.clone();
    failing.inject_failure = Some(cutpoint_core::spec::InjectFailure {
        operator: None,
        subtask: 0,
        after_records: 1,
        after_completed_checkpoint: false,
    });
    let outcome = spawn_job(JobConfig {
        spec: failing,
        storage: storage.clone(),
        restore_from: Some(cutpoint_coordinator::RestoreFrom::Checkpoint(oldest)),
        local_dir: dir.path().join("w2"),
        functions: Default::default(),
    })
    .join()
    .await
    .unwrap();
    assert_eq!(outcome.restored_from.len(), 2, "{outcome:?}");
    assert_eq!(outcome.restored_from[0], oldest);
    let again = outcome.restored_from[1];
    assert!(again == oldest || again > newest, "restarted from {again}, a checkpoint of the earlier run (oldest {oldest}, newest {newest})");
    assert_exact(&final_counts(&outcome), &expected_counts(42, keys, events));
    // The abandoned timeline is gone once this run completed checkpoints of
    // its own: `latest` can only find this run's (or the restored one).
    let left: Vec<CheckpointId> = storage
        .list_checkpoints(&spec.job_id)
        .await
        .unwrap()
        .iter()
        .map(|l| l.checkpoint_id)
        .collect();
    assert!(outcome.checkpoints_completed > 0);
    assert!(
        left.iter().all(|id| *id <= oldest || *id > newest),
        "checkpoints of the abandoned run left: {left:?} (restored {oldest}, old newest {newest})"
    );
    assert_storage_is_exactly_referenced(&storage, &spec.job_id).await;
}
