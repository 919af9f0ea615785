//! A two-stage keyed job: count per key (`agg`), re-key each update by the
//! bucket of the new count, count again (`hist`: how many updates reached
//! each bucket). Every task of both stages takes part in every checkpoint;
//! the second exchange carries barriers (and, unaligned, channel state)
//! like the first. Checked against a plain computation of both stages:
//! after a failure injected in either stage, in aligned, unaligned and
//! at-least-once mode (whose duplicates are counted exactly), after
//! rescaled restores (2 → 3 → 1), and after SIGKILL of the real binary and
//! a restore of `latest` and of an older id.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cutpoint_coordinator::{spawn_job, JobConfig, JobOutcome, RestoreFrom};
use cutpoint_core::{CheckpointMetadata, JobSpec, Key};

use crate::binary::{read_state, run_to_end};
use crate::common::*;

const EVENTS: u64 = 400_000;
const KEYS: u64 = 5_000;
const WIDTH: i64 = 16;

/// The second stage's answer, computed plainly: a key counted to `c` sent
/// the updates 1, 2, …, c; update `i` falls in bucket `i / WIDTH`.
fn histogram(counts: &BTreeMap<Key, i64>) -> BTreeMap<Key, i64> {
    let mut h = BTreeMap::new();
    for c in counts.values() {
        for i in 1..=*c {
            *h.entry(Key::Int(i.div_euclid(WIDTH))).or_insert(0) += 1;
        }
    }
    h
}

fn spec_json(job: &str, parallelism: u32, mode: &str, extra: &str) -> String {
    format!(
        r#"{{"job_id":"{job}","parallelism":{parallelism},
            "source":{{"type":"generator","partitions":2,"events":{EVENTS},"keys":{KEYS},"seed":42,"rate_per_s":400000}},
            "key_by":"app_id","aggregate":{{"type":"count"}},
            "stages":[{{"id":"hist","key_by":{{"type":"value_bucket","width":{WIDTH}}},"aggregate":{{"type":"count"}}}}],
            "checkpoint":{{"interval_ms":100,"retention":100,"mode":"{mode}"}}{extra}}}"#
    )
}

pub(crate) fn stage_counts(o: &JobOutcome, stage: &str) -> BTreeMap<Key, i64> {
    o.stage_state
        .iter()
        .filter(|(op, _)| op.as_str() == stage)
        .flat_map(|(_, t)| t.iter().map(|(k, v)| (k.clone(), int(&v))))
        .collect()
}

pub(crate) async fn run(
    spec: String,
    dir: &Path,
    restore_from: Option<RestoreFrom>,
    work: &str,
) -> JobOutcome {
    run_with(Default::default(), spec, dir, restore_from, work).await
}

/// [`run`] in a program that registered `functions`.
pub(crate) async fn run_with(
    functions: cutpoint_operator::Functions,
    spec: String,
    dir: &Path,
    restore_from: Option<RestoreFrom>,
    work: &str,
) -> JobOutcome {
    spawn_job(JobConfig {
        spec: JobSpec::from_json(&spec).expect("valid spec"),
        storage: storage_at(dir.join("chk").to_str().unwrap()),
        restore_from,
        local_dir: dir.join(work),
        functions,
    })
    .join()
    .await
    .unwrap()
}

/// Both stages exact: `agg` against the generator, `hist` against it.
fn assert_both_stages(o: &JobOutcome) {
    let counts = expected_counts(42, KEYS, EVENTS);
    assert_exact(&stage_counts(o, "agg"), &counts);
    assert_exact(&final_counts(o), &histogram(&counts));
}

/// A restorable checkpoint of `job` taken at `parallelism`.
pub(crate) async fn checkpoint_at(dir: &Path, job: &str, parallelism: u32) -> CheckpointMetadata {
    let storage = storage_at(dir.join("chk").to_str().unwrap());
    let job = cutpoint_core::JobId::new(job).unwrap();
    let mut metas: Vec<_> = storage
        .list_checkpoints(&job)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|l| l.metadata.map_err(|e| eprintln!("unreadable: {e}")).ok())
        .filter(|m| m.parallelism == parallelism)
        .collect();
    // An early one (much input left to go) with records in flight into
    // the second stage, if any (an unaligned checkpoint whose channel state
    // is replayed there), else a third into the run.
    metas.sort_by_key(|m| m.checkpoint_id);
    let early = metas.get(metas.len() / 3).cloned();
    metas
        .into_iter()
        .find(|m| hist_inflight(m) > 0)
        .or(early)
        .expect("a checkpoint at that parallelism")
}

/// Bytes of in-flight records the tasks of later stages (neither a source
/// nor `agg`) persisted.
pub(crate) fn hist_inflight(m: &CheckpointMetadata) -> u64 {
    m.subtasks
        .iter()
        .filter(|s| !["source", "agg"].contains(&s.task.operator.as_str()))
        .map(|s| s.persisted_data_size)
        .sum()
}

async fn failure_and_rescales(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let job = format!("two-stage-{}", mode.replace('_', "-"));
    // Unaligned: a slow second stage, so records queue on its inputs and
    // its snapshots persist some of them.
    let unaligned = mode == "unaligned";
    let slow = if unaligned {
        r#","inject_processing_delay_us":3000"#
    } else {
        ""
    };
    // The second stage fails: both stages restore, the sources rewind.
    let failing = spec_json(
        &job,
        2,
        mode,
        &format!(
            r#"{slow},"inject_failure":{{"operator":"hist","subtask":1,"after_records":60000}}"#
        ),
    );
    let o = run(failing, dir.path(), None, "w1").await;
    assert_eq!(o.restarts, 1, "the injected failure happened: {o:?}");
    assert_both_stages(&o);
    let tasks = checkpoint_at(dir.path(), &job, 2).await.subtasks;
    assert_eq!(
        tasks
            .iter()
            .filter(|s| s.task.operator.as_str() == "hist")
            .count(),
        2,
        "every task of the second stage acknowledged"
    );

    // 2 -> 3, then 3 -> 1: each stage's key groups move to new subtasks
    // (with its channel state, when unaligned).
    let two = checkpoint_at(dir.path(), &job, 2).await;
    assert_eq!(hist_inflight(&two) > 0, unaligned, "{two:?}");
    let two = two.checkpoint_id;
    let o = run(
        spec_json(&job, 3, mode, slow),
        dir.path(),
        Some(RestoreFrom::Checkpoint(two)),
        "w3",
    )
    .await;
    assert_eq!(o.restored_from, vec![two]);
    assert_both_stages(&o);
    let three = checkpoint_at(dir.path(), &job, 3).await;
    assert_eq!(hist_inflight(&three) > 0, unaligned, "{three:?}");
    let three = three.checkpoint_id;
    let o = run(
        spec_json(&job, 1, mode, slow),
        dir.path(),
        Some(RestoreFrom::Checkpoint(three)),
        "w4",
    )
    .await;
    assert_eq!(o.restored_from, vec![three]);
    assert_both_stages(&o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stages_exact_after_a_failure_and_rescales_aligned() {
    failure_and_rescales("exactly_once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stages_exact_after_a_failure_and_rescales_unaligned() {
    failure_and_rescales("unaligned").await;
}

pub(crate) fn beyond(meta: &CheckpointMetadata, stage: &str) -> i64 {
    meta.subtasks
        .iter()
        .filter(|s| s.task.operator.as_str() == stage)
        .map(|s| s.records_beyond_barrier as i64)
        .sum()
}

/// At-least-once: a late barrier lets records through before the
/// snapshot; after the restore they count again. The first stage is over
/// by exactly its records beyond the barrier, the second by both stages'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stages_at_least_once_duplicates_are_the_records_beyond_the_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let job = "two-stage-alo";
    let spec = spec_json(
        job,
        2,
        "at_least_once",
        r#","inject_barrier_delay":{"partition":1,"delay_ms":150},
           "inject_failure":{"subtask":0,"after_records":100000}"#,
    );
    let o = run(spec, dir.path(), None, "w").await;
    assert_eq!(o.restarts, 1, "the injected failure happened: {o:?}");
    let storage = storage_at(dir.path().join("chk").to_str().unwrap());
    let meta = storage
        .read_metadata(&cutpoint_core::JobId::new(job).unwrap(), o.restored_from[0])
        .await
        .unwrap();
    let (beyond_agg, beyond_hist) = (beyond(&meta, "agg"), beyond(&meta, "hist"));
    assert!(beyond_agg > 0, "the late barrier let records through");

    let counts = expected_counts(42, KEYS, EVENTS);
    let actual = stage_counts(&o, "agg");
    let mut over = 0;
    for (k, want) in &counts {
        let got = actual[k];
        assert!(got >= *want, "key {k}: {got} < {want}: a record was lost");
        over += got - want;
    }
    assert_eq!(actual.len(), counts.len());
    assert_eq!(over, beyond_agg, "agg's duplicates");
    let total: i64 = final_counts(&o).values().sum();
    let want: i64 = counts.values().sum();
    assert_eq!(
        total - want,
        beyond_agg + beyond_hist,
        "hist's duplicates: agg's re-sent updates and its own"
    );
    eprintln!("at-least-once duplicates: agg {beyond_agg}, hist {beyond_agg} + {beyond_hist}");
}

pub(crate) fn completed_ids(chk: &Path, job: &str) -> Vec<u64> {
    let Ok(rd) = std::fs::read_dir(chk.join("jobs").join(job)) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.path().join("_metadata").exists())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok())
        .collect()
}

/// Starts `cutpoint run` on `spec` and kills it (SIGKILL) once `n`
/// checkpoints of `job` completed.
pub(crate) fn kill_after_checkpoints(spec: &Path, chk: &Path, job: &str, n: usize) {
    kill_program_after_checkpoints(Path::new(env!("CARGO_BIN_EXE_cutpoint")), spec, chk, job, n)
}

/// [`kill_after_checkpoints`] for the program `bin`.
pub(crate) fn kill_program_after_checkpoints(
    bin: &Path,
    spec: &Path,
    chk: &Path,
    job: &str,
    n: usize,
) {
    let mut child = Command::new(bin)
        .args(["run", "--job"])
        .arg(spec)
        .arg("--checkpoint-dir")
        .arg(chk)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while completed_ids(chk, job).len() < n {
        assert!(Instant::now() < deadline, "no checkpoints completed");
        assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn two_stages_exact_after_sigkill_and_restores_of_latest_and_an_older_id() {
    let dir = tempfile::tempdir().unwrap();
    let (chk, job) = (dir.path().join("chk"), "two-stage-kill");
    let spec = dir.path().join("job.json");
    let json = spec_json(job, 2, "exactly_once", "")
        .replace(r#""rate_per_s":400000"#, r#""rate_per_s":200000"#);
    std::fs::write(&spec, json).unwrap();
    kill_after_checkpoints(&spec, &chk, job, 3);
    let oldest = *completed_ids(&chk, job).iter().min().unwrap();

    let expected = histogram(&expected_counts(42, KEYS, EVENTS));
    let out = dir.path().join("latest.jsonl");
    let summary = run_to_end(&spec, &chk, Some("latest"), &out);
    assert!(
        summary["events"].as_u64().unwrap() < EVENTS,
        "resumed: {summary}"
    );
    assert_exact(&read_state(&out), &expected);

    let out = dir.path().join("older.jsonl");
    let summary = run_to_end(&spec, &chk, Some(&oldest.to_string()), &out);
    assert_eq!(summary["restored_from"], serde_json::json!([oldest]));
    assert_exact(&read_state(&out), &expected);
}
