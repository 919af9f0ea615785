//! Event time and watermarks through whole jobs (Dataflow II, first part):
//! every task's watermark trails what its inputs sent (sampled while the
//! job runs, through two exchanges), every checkpoint keeps each source
//! partition's largest event time exactly (computed plainly here from the
//! input), and a restored source resumes from it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cutpoint_coordinator::{spawn_job, JobConfig, JobOutcome, TaskProgress};
use cutpoint_core::{CheckpointMetadata, JobId, JobSpec, Key};
use cutpoint_runtime::source::{generator_range, generator_ts};

use crate::common::*;
use crate::stages::stage_counts;

const EVENTS: u64 = 300_000;
const KEYS: u64 = 1_000;
const DISORDER: u64 = 100;
const SEED: u64 = 42;

/// Every readable checkpoint of `job` under `dir/chk`, oldest first.
pub(crate) async fn metadata(dir: &Path, job: &str) -> Vec<CheckpointMetadata> {
    let storage = storage_at(dir.join("chk").to_str().unwrap());
    let mut metas: Vec<_> = storage
        .list_checkpoints(&JobId::new(job).unwrap())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|l| l.metadata.ok())
        .collect();
    metas.sort_by_key(|m| m.checkpoint_id);
    metas
}

fn watermark_of(p: &[TaskProgress], operator: &str) -> Vec<Option<i64>> {
    p.iter()
        .filter(|t| t.task.operator.as_str() == operator)
        .map(|t| t.watermark_ms)
        .collect()
}

/// The smallest of some watermarks (`None` if any task has none yet).
fn min_of(w: &[Option<i64>]) -> Option<i64> {
    w.iter()
        .copied()
        .try_fold(i64::MAX, |m, w| w.map(|w| m.min(w)))
}

/// Samples the running job: a task's watermark never passes what its
/// inputs sent. Downstream is read before upstream (watermarks only grow),
/// so the check holds whatever the tasks do in between. How many samples
/// saw a keyed task of each stage with a watermark short of the end.
async fn sample_watermarks(handle: &cutpoint_coordinator::JobHandle) -> (u32, u32) {
    let (mut agg_seen, mut hist_seen) = (0, 0);
    let mut last: BTreeMap<String, Option<i64>> = BTreeMap::new();
    while !handle.status().state.is_final() {
        let first = handle.progress();
        let second = handle.progress();
        let third = handle.progress();
        if first.is_empty() || second.is_empty() || third.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let hist = watermark_of(&first, "hist");
        let agg = watermark_of(&second, "agg");
        let sources = watermark_of(&third, "source");
        // No task's watermark ever goes back (one attempt: no failure).
        for t in &third {
            let w = t.watermark_ms;
            let before = last.insert(t.task.to_string(), w).flatten();
            assert!(before <= w, "{}: {before:?} then {w:?}", t.task);
        }
        for h in hist.iter().flatten() {
            assert!(Some(*h) <= min_of(&agg), "hist {h} ahead of agg {agg:?}");
            hist_seen += u32::from(*h < i64::MAX);
        }
        for a in agg.iter().flatten() {
            assert!(
                Some(*a) <= min_of(&sources),
                "agg {a} ahead of sources {sources:?}"
            );
            agg_seen += u32::from(*a < i64::MAX);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (agg_seen, hist_seen)
}

/// Largest event time of partition `p` before each offset, from the
/// generator's definition of `ts`.
fn prefix_max(p: u32) -> BTreeMap<u64, Option<i64>> {
    let (start, end) = generator_range(EVENTS, 2, p);
    let mut out = BTreeMap::from([(start, None)]);
    let mut max = None::<i64>;
    for i in start..end {
        let ts = generator_ts(SEED, DISORDER, i, i - start);
        max = Some(max.map_or(ts, |m| m.max(ts)));
        out.insert(i + 1, max);
    }
    out
}

async fn run_generator_job(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let job = format!("watermarks-{}", mode.replace('_', "-"));
    let slow = if mode == "unaligned" {
        r#","inject_processing_delay_us":1500"#
    } else {
        ""
    };
    let spec = format!(
        r#"{{"job_id":"{job}","parallelism":2,
            "source":{{"type":"generator","partitions":2,"events":{EVENTS},"keys":{KEYS},"seed":{SEED},
                "rate_per_s":300000,"disorder_ms":{DISORDER}}},
            "key_by":"app_id","aggregate":{{"type":"count"}},
            "event_time":{{"field":"ts","max_out_of_orderness_ms":{DISORDER},"watermark_interval_ms":10}},
            "stages":[{{"id":"hist","key_by":{{"type":"value_bucket","width":16}},"aggregate":{{"type":"count"}}}}],
            "checkpoint":{{"interval_ms":100,"retention":100,"mode":"{mode}"}}{slow}}}"#
    );
    let handle = spawn_job(JobConfig {
        spec: JobSpec::from_json(&spec).expect("valid spec"),
        storage: storage_at(dir.path().join("chk").to_str().unwrap()),
        restore_from: None,
        local_dir: dir.path().join("work"),
        functions: Default::default(),
    });
    let (agg_seen, hist_seen) = sample_watermarks(&handle).await;
    let o: JobOutcome = handle.join().await.unwrap();
    assert_exact(
        &stage_counts(&o, "agg"),
        &expected_counts(SEED, KEYS, EVENTS),
    );
    assert!(
        agg_seen > 0 && hist_seen > 0,
        "watermarks reached both stages mid-run: {agg_seen} {hist_seen}"
    );
    let metas = metadata(dir.path(), &job).await;
    assert!(metas.len() >= 3, "{} checkpoints", metas.len());
    let expected = [prefix_max(0), prefix_max(1)];
    for m in &metas {
        for s in m
            .subtasks
            .iter()
            .filter(|s| s.task.operator.as_str() == "source")
        {
            let o = s.source_offset.expect("a source's offset");
            assert_eq!(
                o.max_timestamp, expected[o.partition as usize][&o.offset],
                "checkpoint {} partition {} at {}",
                m.checkpoint_id, o.partition, o.offset
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_trail_their_inputs_and_checkpoints_keep_the_largest_event_time_aligned() {
    run_generator_job("exactly_once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_trail_their_inputs_and_checkpoints_keep_the_largest_event_time_unaligned() {
    run_generator_job("unaligned").await;
}

/// Each file's event times fall line by line from `TOP`: a source that
/// forgot its checkpointed largest event time on restore would report a
/// smaller one in every checkpoint after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_source_resumes_its_largest_event_time_from_the_checkpoint() {
    const LINES: i64 = 100_000;
    const TOP: i64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for p in 0..2 {
        let path = dir.path().join(format!("p{p}.jsonl"));
        let text: String = (0..LINES)
            .map(|j| format!("{{\"k\":{},\"t\":{}}}\n", j % 50, TOP - j))
            .collect();
        std::fs::write(&path, text).unwrap();
        paths.push(path.display().to_string());
    }
    // A two-phase-commit sink: the job ends with a final checkpoint, so
    // one is taken after the restore whatever the timing.
    let out = dir.path().join("out");
    let spec = format!(
        r#"{{"job_id":"falling-time","parallelism":2,
            "source":{{"type":"files","paths":{paths:?}}},
            "key_by":"k","aggregate":{{"type":"count"}},
            "event_time":{{"field":"t"}},
            "sink":{{"type":"transactional_file","dir":{out:?}}},
            "checkpoint":{{"interval_ms":50,"retention":100}},
            "inject_processing_delay_us":5000,
            "inject_failure":{{"subtask":0,"after_records":50000,"after_completed_checkpoint":true}}}}"#
    );
    let o = spawn_job(JobConfig {
        spec: JobSpec::from_json(&spec).expect("valid spec"),
        storage: storage_at(dir.path().join("chk").to_str().unwrap()),
        restore_from: None,
        local_dir: dir.path().join("work"),
        functions: Default::default(),
    })
    .join()
    .await
    .unwrap();
    assert_eq!(o.restarts, 1, "{o:?}");
    let counts: BTreeMap<Key, i64> = (0..50).map(|k| (Key::Int(k), 2 * LINES / 50)).collect();
    assert_exact(&final_counts(&o), &counts);
    let restored = o.restored_from[0];
    let metas = metadata(dir.path(), "falling-time").await;
    assert!(
        metas.iter().any(|m| m.checkpoint_id > restored),
        "a checkpoint after the restore from {restored}"
    );
    for m in &metas {
        for s in m
            .subtasks
            .iter()
            .filter(|s| s.task.operator.as_str() == "source")
        {
            let o = s.source_offset.expect("a source's offset");
            let expected = (o.offset > 0).then_some(TOP);
            assert_eq!(
                o.max_timestamp, expected,
                "checkpoint {}: {o:?}",
                m.checkpoint_id
            );
        }
    }
}
