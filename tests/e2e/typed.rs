//! JSON jobs whose first stage keeps typed state through the operator API:
//! count-distinct (a map of the users seen per app and a count) and dedup
//! (the first user per app), each followed by a second keyed stage over
//! its updates; min, max and avg (value states per app). Checked against
//! plain computations from the generator: after a failure, aligned,
//! unaligned and at-least-once (duplicates counted; these operators are
//! idempotent), after rescaled restores (2 → 3 → 1), after SIGKILL of the
//! binary with restores of `latest` and an older id, and under a memory
//! budget far below the state's size.

use std::collections::{BTreeMap, BTreeSet};

use cutpoint_coordinator::{JobOutcome, RestoreFrom};
use cutpoint_core::Key;
use cutpoint_runtime::source::{generator_app_id, generator_user_id};

use crate::binary::{read_state, run_to_end};
use crate::common::*;
use crate::fraud::metadata;
use crate::stages::*;

const EVENTS: u64 = 300_000;
const KEYS: u64 = 500;
const USERS: u64 = 2_000;
const WIDTH: i64 = 64;

/// The users of each app, computed plainly from the generator.
fn users_per_app() -> BTreeMap<Key, BTreeSet<u64>> {
    let mut m: BTreeMap<Key, BTreeSet<u64>> = BTreeMap::new();
    for i in 0..EVENTS {
        let app = Key::Int(generator_app_id(42, KEYS, i) as i64);
        m.entry(app)
            .or_default()
            .insert(generator_user_id(42, USERS, i));
    }
    m
}

fn spec_json(
    job: &str,
    parallelism: u32,
    mode: &str,
    aggregate: &str,
    then: &str,
    extra: &str,
) -> String {
    format!(
        r#"{{"job_id":"{job}","parallelism":{parallelism},
            "source":{{"type":"generator","partitions":2,"events":{EVENTS},"keys":{KEYS},"users":{USERS},"seed":42,"rate_per_s":300000}},
            "key_by":"app_id","aggregate":{aggregate},
            "stages":[{{"id":"hist","key_by":{then},"aggregate":{{"type":"count"}}}}],
            "checkpoint":{{"interval_ms":100,"retention":100,"mode":"{mode}"}}{extra}}}"#
    )
}

const DISTINCT: &str = r#"{"type":"count_distinct","field":"user_id"}"#;
const BUCKET: &str = r#"{"type":"value_bucket","width":64}"#;
const DEDUP: &str = r#"{"type":"dedup","field":"user_id","keep":"first"}"#;
const SAME_KEY: &str = r#"{"type":"key"}"#;

/// Count-distinct: each app's distinct users; the second stage counts the
/// updates 1, 2, …, d of each app by bucket `i / WIDTH`.
fn assert_distinct(o: &JobOutcome) {
    let (distinct, hist) = distinct_and_histogram();
    assert_exact(&stage_counts(o, "agg"), &distinct);
    assert_exact(&final_counts(o), &hist);
}

/// Each app's distinct users, and the second stage's count of the
/// updates 1, 2, …, d per bucket `i / WIDTH`.
fn distinct_and_histogram() -> (BTreeMap<Key, i64>, BTreeMap<Key, i64>) {
    let distinct: BTreeMap<Key, i64> = users_per_app()
        .iter()
        .map(|(k, s)| (k.clone(), s.len() as i64))
        .collect();
    let mut hist = BTreeMap::new();
    for d in distinct.values() {
        for i in 1..=*d {
            *hist.entry(Key::Int(i.div_euclid(WIDTH))).or_insert(0) += 1;
        }
    }
    (distinct, hist)
}

/// Dedup (keep first): each app keeps one of its users, and emitted it
/// exactly once (the second stage counts the emissions per app).
fn assert_dedup(o: &JobOutcome) {
    assert_kept_users(o);
    assert_exact(&final_counts(o), &once_per_app());
}

/// Each app kept one of its own users.
fn assert_kept_users(o: &JobOutcome) {
    let users = users_per_app();
    let kept = stage_counts(o, "agg");
    assert_eq!(kept.len(), users.len());
    for (app, user) in &kept {
        assert!(
            users[app].contains(&(*user as u64)),
            "{app} kept {user}, not one of its users"
        );
    }
}

fn once_per_app() -> BTreeMap<Key, i64> {
    users_per_app().keys().map(|k| (k.clone(), 1)).collect()
}

async fn failure_and_rescales(
    name: &str,
    aggregate: &str,
    then: &str,
    mode: &str,
    check: fn(&JobOutcome),
) {
    let dir = tempfile::tempdir().unwrap();
    let job = format!("{name}-{}", mode.replace('_', "-"));
    let slow = if mode == "unaligned" {
        r#","inject_processing_delay_us":3000"#
    } else {
        ""
    };
    let failing = format!(r#"{slow},"inject_failure":{{"subtask":1,"after_records":40000}}"#);
    let o = run(
        spec_json(&job, 2, mode, aggregate, then, &failing),
        dir.path(),
        None,
        "w1",
    )
    .await;
    assert_eq!(o.restarts, 1, "the injected failure happened: {o:?}");
    check(&o);
    // Each snapshot records its state's form: the typed states by id.
    let meta = checkpoint_at(dir.path(), &job, 2).await;
    let schema = |op: &str| {
        let s = meta
            .subtasks
            .iter()
            .find(|s| s.task.operator.as_str() == op);
        s.and_then(|s| s.schema.clone()).expect("a recorded schema")
    };
    let names: Vec<String> = schema("agg").states.into_iter().map(|d| d.name).collect();
    let want = match name {
        "distinct" => vec!["distinct_values", "distinct_count"],
        _ => vec!["dedup_kept"],
    };
    assert_eq!(names, want);
    assert!(schema("hist").states.is_empty(), "an integer stage");
    for (from, to, work) in [(2, 3, "w3"), (3, 1, "w4")] {
        let id = checkpoint_at(dir.path(), &job, from).await.checkpoint_id;
        let spec = spec_json(&job, to, mode, aggregate, then, slow);
        let o = run(spec, dir.path(), Some(RestoreFrom::Checkpoint(id)), work).await;
        assert_eq!(o.restored_from, vec![id]);
        check(&o);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_distinct_exact_after_a_failure_and_rescales_aligned() {
    failure_and_rescales(
        "distinct",
        DISTINCT,
        BUCKET,
        "exactly_once",
        assert_distinct,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_distinct_exact_after_a_failure_and_rescales_unaligned() {
    failure_and_rescales("distinct", DISTINCT, BUCKET, "unaligned", assert_distinct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_emits_each_key_once_after_a_failure_and_rescales_aligned() {
    failure_and_rescales("dedup", DEDUP, SAME_KEY, "exactly_once", assert_dedup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_emits_each_key_once_after_a_failure_and_rescales_unaligned() {
    failure_and_rescales("dedup", DEDUP, SAME_KEY, "unaligned", assert_dedup).await;
}

#[test]
fn count_distinct_exact_after_sigkill_and_restores_of_latest_and_an_older_id() {
    let dir = tempfile::tempdir().unwrap();
    let (chk, job) = (dir.path().join("chk"), "distinct-kill");
    let spec = dir.path().join("job.json");
    std::fs::write(
        &spec,
        spec_json(job, 2, "exactly_once", DISTINCT, BUCKET, ""),
    )
    .unwrap();
    kill_after_checkpoints(&spec, &chk, job, 3);
    let oldest = *completed_ids(&chk, job).iter().min().unwrap();
    let mut hist = BTreeMap::new();
    for s in users_per_app().values() {
        for i in 1..=s.len() as i64 {
            *hist.entry(Key::Int(i.div_euclid(WIDTH))).or_insert(0) += 1;
        }
    }
    for (restore, file) in [
        ("latest".to_string(), "latest.jsonl"),
        (oldest.to_string(), "older.jsonl"),
    ] {
        let out = dir.path().join(file);
        let summary = run_to_end(&spec, &chk, Some(&restore), &out);
        assert!(
            summary["events"].as_u64().unwrap() < EVENTS,
            "resumed: {summary}"
        );
        assert_exact(&read_state(&out), &hist);
    }
}

/// The mean `user_id` of each app's events, rounded down, computed plainly.
fn mean_user_per_app() -> BTreeMap<Key, i64> {
    let mut sums: BTreeMap<Key, (i64, i64)> = BTreeMap::new();
    for i in 0..EVENTS {
        let app = Key::Int(generator_app_id(42, KEYS, i) as i64);
        let s = sums.entry(app).or_default();
        s.0 += generator_user_id(42, USERS, i) as i64;
        s.1 += 1;
    }
    sums.into_iter()
        .map(|(k, (sum, n))| (k, sum.div_euclid(n)))
        .collect()
}

/// Min, max and avg of the users per app (min and max: a key's first
/// value counts, 0 too), exact after a failure and rescaled restores.
async fn extreme(kind: &str, mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let job = format!("{kind}-{}", mode.replace('_', "-"));
    let spec = |p: u32, extra: &str| {
        format!(
            r#"{{"job_id":"{job}","parallelism":{p},
                "source":{{"type":"generator","partitions":2,"events":{EVENTS},"keys":{KEYS},"users":{USERS},"seed":42,"rate_per_s":300000}},
                "key_by":"app_id","aggregate":{{"type":"{kind}","field":"user_id"}},
                "checkpoint":{{"interval_ms":100,"retention":100,"mode":"{mode}"}}{extra}}}"#
        )
    };
    let users = users_per_app();
    let want: BTreeMap<Key, i64> = match kind {
        "avg" => mean_user_per_app(),
        _ => users
            .iter()
            .map(|(k, s)| {
                let v = if kind == "min" { s.first() } else { s.last() };
                (k.clone(), *v.unwrap() as i64)
            })
            .collect(),
    };
    let failing = r#","inject_failure":{"subtask":0,"after_records":40000}"#;
    let o = run(spec(2, failing), dir.path(), None, "w1").await;
    assert_eq!(o.restarts, 1, "the injected failure happened: {o:?}");
    assert_exact(&final_counts(&o), &want);
    for (from, to, work) in [(2, 3, "w3"), (3, 1, "w4")] {
        let id = checkpoint_at(dir.path(), &job, from).await.checkpoint_id;
        let o = run(
            spec(to, ""),
            dir.path(),
            Some(RestoreFrom::Checkpoint(id)),
            work,
        )
        .await;
        assert_eq!(o.restored_from, vec![id]);
        assert_exact(&final_counts(&o), &want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_exact_after_a_failure_and_rescales_aligned() {
    extreme("min", "exactly_once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_exact_after_a_failure_and_rescales_unaligned() {
    extreme("max", "unaligned").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avg_exact_after_a_failure_and_rescales_aligned() {
    extreme("avg", "exactly_once").await;
}

/// Count-distinct under a 1 MB memory budget (~3,300 entries per subtask
/// of ~130,000 map entries): most typed state lives in RocksDB only,
/// evicted and read through, written behind between checkpoints. Exact
/// after a failure and after a rescaled restore (itself budgeted, so it
/// reads the restored state through instead of loading it); the table
/// never held more than the budget allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_distinct_under_a_memory_budget_exact_after_a_failure_and_a_rescale() {
    let dir = tempfile::tempdir().unwrap();
    let job = "distinct-budget";
    let budget = r#","state":{"memory_budget_mb":1}"#;
    let failing = format!(r#"{budget},"inject_failure":{{"subtask":1,"after_records":40000}}"#);
    let spec = spec_json(job, 2, "exactly_once", DISTINCT, BUCKET, &failing);
    let o = run(spec, dir.path(), None, "w1").await;
    assert_eq!(o.restarts, 1, "the injected failure happened: {o:?}");
    assert_distinct(&o);
    let within = |o: &JobOutcome, parallelism: u32| {
        let entries = cutpoint_core::spec::StateConfig {
            memory_budget_mb: Some(1),
        }
        .budget_entries(parallelism)
        .unwrap();
        let cap = entries * cutpoint_runtime::BUDGET_CAP + cutpoint_runtime::channel::BATCH_SIZE;
        let agg = o.stage_state.iter().filter(|(op, _)| op.as_str() == "agg");
        for (_, t) in agg {
            assert!(
                t.peak_len() <= cap,
                "peak {} entries, budget {entries}",
                t.peak_len()
            );
        }
        // The map entries alone (one per app and user), computed plainly.
        let pairs: usize = users_per_app().values().map(|s| s.len()).sum();
        let per_subtask = pairs / parallelism as usize;
        assert!(
            per_subtask > 10 * entries,
            "the state outgrows the budget: {pairs}"
        );
    };
    within(&o, 2);
    let id = checkpoint_at(dir.path(), job, 2).await.checkpoint_id;
    let spec = spec_json(job, 3, "exactly_once", DISTINCT, BUCKET, budget);
    let o = run(spec, dir.path(), Some(RestoreFrom::Checkpoint(id)), "w2").await;
    assert_eq!(o.restored_from, vec![id]);
    assert_distinct(&o);
    within(&o, 3);
}

/// At-least-once with typed state: a late barrier lets records through
/// before the snapshot, and they are processed again after the restore —
/// counted in the checkpoint's `records_beyond_barrier`. Count-distinct
/// and dedup (keep first) are idempotent: the first stage stays exact.
/// The second stage counts again exactly the updates it had taken beyond
/// its own barrier (the first stage sends every update after its snapshot
/// again), so it is over by exactly its records beyond the barrier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_state_at_least_once_duplicates_are_the_records_beyond_the_barrier() {
    for (name, aggregate, then) in [("distinct", DISTINCT, BUCKET), ("dedup", DEDUP, SAME_KEY)] {
        let dir = tempfile::tempdir().unwrap();
        let job = format!("{name}-alo");
        let knobs = r#","inject_barrier_delay":{"partition":1,"delay_ms":150},
            "inject_failure":{"subtask":0,"after_records":100000}"#;
        let spec = spec_json(&job, 2, "at_least_once", aggregate, then, knobs);
        let o = run(spec, dir.path(), None, "w").await;
        assert_eq!(o.restarts, 1, "the injected failure happened: {o:?}");
        let meta = metadata(&dir.path().join("chk"), &job, o.restored_from[0].0).await;
        assert!(
            beyond(&meta, "agg") > 0,
            "{name}: the late barrier let records through"
        );
        let want = match name {
            "distinct" => {
                let (distinct, hist) = distinct_and_histogram();
                assert_exact(&stage_counts(&o, "agg"), &distinct);
                hist
            }
            _ => {
                assert_kept_users(&o);
                once_per_app()
            }
        };
        let got = final_counts(&o);
        let mut over = 0;
        for (k, w) in &want {
            let g = got.get(k).copied().unwrap_or(0);
            assert!(g >= *w, "{name} {k}: {g} < {w}: an update was lost");
            over += g - w;
        }
        assert!(
            got.keys().all(|k| want.contains_key(k)),
            "{name}: no key of its own"
        );
        assert_eq!(
            over,
            beyond(&meta, "hist"),
            "{name}: the second stage's duplicates"
        );
        eprintln!("{name} at-least-once: second stage over by {over}");
    }
}

/// A function registered in-process hears of completed checkpoints
/// (`notify_checkpoint_complete`, what a function committing to the
/// outside world commits on): every subtask, in increasing order, only
/// checkpoints that completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_functions_checkpoint_hook_hears_each_completed_checkpoint() {
    use std::sync::{Arc, Mutex};

    use cutpoint_coordinator::{spawn_job, JobConfig};
    use cutpoint_core::CheckpointId;
    use cutpoint_operator::{
        KeyedContext, KeyedProcessFunction, OperatorError, Record, StateDescriptor, Value,
        WithResult,
    };

    type Heard = Arc<Mutex<Vec<Vec<u64>>>>;
    struct Counting {
        count: StateDescriptor,
        /// This instance's notices, one list per subtask instance.
        heard: Heard,
        me: usize,
    }
    impl KeyedProcessFunction for Counting {
        type In = Record;
        type Out = (Key, Value);
        fn states(&self) -> Vec<StateDescriptor> {
            vec![self.count.clone()]
        }
        fn process(
            &mut self,
            r: Record,
            ctx: &mut KeyedContext<'_>,
            out: &mut Vec<(Key, Value)>,
        ) -> Result<(), OperatorError> {
            let n = ctx.value::<i64>(&self.count)?.unwrap_or(0) + 1;
            ctx.set_value(&self.count, &n)?;
            out.push((r.key, Value::Int(n)));
            Ok(())
        }
        fn notify_checkpoint_complete(&mut self, id: CheckpointId) -> Result<(), OperatorError> {
            self.heard.lock().unwrap()[self.me].push(id.0);
            Ok(())
        }
    }
    impl WithResult for Counting {
        type Result = i64;

        fn result_state(&self) -> &StateDescriptor {
            &self.count
        }
    }

    let heard: Heard = Arc::default();
    let shared = heard.clone();
    let functions = cutpoint_operator::Functions::new().register("counting", move || {
        let mut h = shared.lock().unwrap();
        h.push(Vec::new());
        Counting {
            count: StateDescriptor::value("count"),
            heard: shared.clone(),
            me: h.len() - 1,
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let spec = r#"{"job_id":"hook","parallelism":2,
        "source":{"type":"generator","partitions":2,"events":300000,"keys":500,"seed":42,"rate_per_s":300000},
        "key_by":"app_id","aggregate":{"type":"process","function":"counting"},
        "checkpoint":{"interval_ms":100,"retention":100}}"#;
    let storage = storage_at(dir.path().join("chk").to_str().unwrap());
    let o = spawn_job(JobConfig {
        spec: cutpoint_core::JobSpec::from_json(spec).unwrap(),
        storage: storage.clone(),
        restore_from: None,
        local_dir: dir.path().join("w"),
        functions,
    })
    .join()
    .await
    .unwrap();
    assert_exact(&final_counts(&o), &expected_counts(42, 500, 300_000));
    let completed: BTreeSet<u64> = completed_ids(&dir.path().join("chk"), "hook")
        .into_iter()
        .collect();
    assert!(completed.len() >= 3, "{completed:?}");
    let heard = heard.lock().unwrap();
    // One instance per subtask (and one the spec check built and dropped).
    let subtasks: Vec<&Vec<u64>> = heard.iter().filter(|ids| !ids.is_empty()).collect();
    assert_eq!(
        subtasks.len(),
        2,
        "every subtask hears of completions: {heard:?}"
    );
    for ids in subtasks {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "in order, once: {ids:?}"
        );
        assert!(
            ids.iter().all(|id| completed.contains(id)),
            "{ids:?} vs {completed:?}"
        );
    }
}
