//! The event-time interval join through whole jobs, compared with the
//! pairs computed plainly here: two generated streams (a left and a right
//! source, each out of order within the watermark's bound, so no record is
//! late), joined per key when `l.ts - 5 <= r.ts <= l.ts + 5`, into a
//! two-phase-commit sink. After a failure (aligned and unaligned), and
//! after a SIGKILL and a restore of the latest checkpoint, every pair is
//! committed exactly once. A restore of an early checkpoint at another
//! parallelism (aligned) emits exactly the pairs with a record after the
//! checkpoint's source offsets: those of records before it were emitted
//! before it, and their buffered records are in its state.
//!
//! The window join on the same two streams (tumbling windows of
//! [`WINDOW`] ms): every pair of a left and a right record of one key and
//! window exactly once after a failure (aligned and unaligned); a restore
//! of an early checkpoint at another parallelism emits exactly the pairs
//! of the windows that had not fired by its watermarks.

use std::collections::BTreeMap;
use std::path::Path;

use cutpoint_coordinator::RestoreFrom;
use cutpoint_core::{CheckpointMetadata, Key, Value};
use cutpoint_runtime::source::{generator_amount, generator_app_id, generator_range, generator_ts};

use crate::common::*;
use crate::event_time::metadata;
use crate::stages::run;

const EVENTS: u64 = 100_000;
const KEYS: u64 = 20;
const LEFT_SEED: u64 = 42;
const RIGHT_SEED: u64 = 7;
const LOWER: i64 = -5;
const UPPER: i64 = 5;

/// One generated record: its job-wide partition, its event index (what
/// the partition's offset counts), key, event time and amount.
#[derive(Clone)]
struct Event {
    partition: u32,
    i: u64,
    key: Key,
    ts: i64,
    amount: i64,
}

/// The events of one generator source (seed) whose partitions are
/// job-wide `first` and `first + 1`.
fn events(seed: u64, first: u32) -> Vec<Event> {
    let mut out = Vec::new();
    for p in 0..2 {
        let (start, end) = generator_range(EVENTS, 2, p);
        for i in start..end {
            out.push(Event {
                partition: first + p,
                i,
                key: Key::Int(generator_app_id(seed, KEYS, i) as i64),
                ts: generator_ts(seed, 300, i, i - start),
                amount: generator_amount(seed, i) as i64,
            });
        }
    }
    out
}

/// `(key, l.ts, r.ts, l.amount, r.amount)` → how many times.
type Pairs = BTreeMap<(Key, i64, i64, i64, i64), usize>;

/// Every pair of a left and a right event of one key within the bounds
/// for which `keep(l, r)` holds: the right events sorted by key and time,
/// each left event's partners found by range.
fn pairs(keep: impl Fn(&Event, &Event) -> bool) -> Pairs {
    let left = events(LEFT_SEED, 0);
    let mut right = events(RIGHT_SEED, 2);
    right.sort_by(|a, b| (&a.key, a.ts).cmp(&(&b.key, b.ts)));
    let mut out = Pairs::new();
    for l in &left {
        let from = right.partition_point(|r| (&r.key, r.ts) < (&l.key, l.ts + LOWER));
        for r in right[from..]
            .iter()
            .take_while(|r| r.key == l.key && r.ts <= l.ts + UPPER)
        {
            if keep(l, r) {
                let p = (l.key.clone(), l.ts, r.ts, l.amount, r.amount);
                *out.entry(p).or_insert(0) += 1;
            }
        }
    }
    out
}

/// What a sink folder committed, each pair with how many times.
fn committed(out: &Path) -> Pairs {
    let output = cutpoint_runtime::sink::read_output(out).unwrap();
    let mut got = Pairs::new();
    for (key, values) in output.updates {
        for v in values {
            let Value::List(l) = &v else {
                panic!("{key}: {v} is not a pair")
            };
            let [lt, rt, la, ra] = l.as_slice() else {
                panic!("{key}: {v}")
            };
            let p = (key.clone(), int(lt), int(rt), int(la), int(ra));
            *got.entry(p).or_insert(0) += 1;
        }
    }
    got
}

fn assert_pairs(got: &Pairs, want: &Pairs) {
    assert_same_entries("pairs", got, want);
}

fn spec(job: &str, mode: &str, parallelism: u32, sink: (&str, &Path), extra: &str) -> String {
    let interval = format!(
        r#""aggregate":{{"type":"interval_join","right_source":1,"field":"amount",
            "lower_ms":{LOWER},"upper_ms":{UPPER}}}"#
    );
    join_spec(&interval, job, mode, parallelism, sink, extra)
}

/// A job joining the two sources with `join` (the aggregate, and a
/// window if it has one).
fn join_spec(
    join: &str,
    job: &str,
    mode: &str,
    parallelism: u32,
    sink: (&str, &Path),
    extra: &str,
) -> String {
    let (sink, out) = sink;
    let slow = match mode {
        "unaligned" => r#","inject_processing_delay_us":1500"#,
        _ => "",
    };
    let generator = |seed| {
        format!(
            r#"{{"type":"generator","partitions":2,"events":{EVENTS},"keys":{KEYS},"seed":{seed},
                "rate_per_s":100000,"disorder_ms":300}}"#
        )
    };
    format!(
        r#"{{"job_id":"{job}","parallelism":{parallelism},
            "source":{},"union":[{}],
            "key_by":"app_id",{join},
            "event_time":{{"field":"ts","max_out_of_orderness_ms":3000,"watermark_interval_ms":10}},
            "sink":{{"type":"{sink}","dir":{out:?}}},
            "checkpoint":{{"interval_ms":100,"retention":100,"mode":"{mode}"}}{slow}{extra}}}"#,
        generator(LEFT_SEED),
        generator(RIGHT_SEED),
    )
}

/// Whether an event was read before the checkpoint: its partition's
/// offset was past it.
fn before(m: &CheckpointMetadata, e: &Event) -> bool {
    m.subtasks
        .iter()
        .filter_map(|s| s.source_offset.as_ref())
        .any(|o| o.partition == e.partition && e.i < o.offset)
}

async fn failure(job: &str, mode: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("first");
    let failing = r#","inject_failure":{"subtask":1,"after_records":40000,"after_completed_checkpoint":true}"#;
    let first = spec(job, mode, 2, ("transactional_file", &out), failing);
    let o = run(first, dir.path(), None, "w1").await;
    assert_eq!(o.restarts, 1, "the injected failure happened: {o:?}");
    let want = pairs(|_, _| true);
    assert!(want.len() > 50_000, "{} pairs", want.len());
    assert_pairs(&committed(&out), &want);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pair_once_after_a_failure_unaligned() {
    failure("interval-unaligned", "unaligned").await;
}

/// After the failure, an early checkpoint restored at parallelism 3 into a
/// new folder (a plain file sink): exactly the pairs with a record read
/// after it, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pair_once_after_a_failure_and_a_rescale_aligned() {
    let job = "interval-aligned";
    let dir = failure(job, "exactly_once").await;
    let metas = metadata(dir.path(), job).await;
    let m = metas[metas.len() / 4].clone();
    let out = dir.path().join("rescaled");
    let restored = run(
        spec(job, "exactly_once", 3, ("file", &out), ""),
        dir.path(),
        Some(RestoreFrom::Checkpoint(m.checkpoint_id)),
        "w2",
    )
    .await;
    assert_eq!(restored.restored_from, vec![m.checkpoint_id]);
    let later = pairs(|l, r| !before(&m, l) || !before(&m, r));
    assert!(!later.is_empty());
    assert_pairs(&committed(&out), &later);
}

/// The binary killed with SIGKILL after a few checkpoints, then restored
/// from `latest` into the same two-phase-commit folder: every pair in it
/// exactly once across both runs; then the oldest retained checkpoint
/// restored into a new folder: exactly the pairs with a record after it.
#[test]
fn every_pair_once_after_sigkill_and_restores_of_latest_and_an_older_id() {
    let job = "interval-kill";
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let job_file = |name: &str, sink: (&str, &Path)| {
        let path = dir.path().join(name);
        let json = spec(job, "exactly_once", 2, sink, "")
            .replace(r#""rate_per_s":100000"#, r#""rate_per_s":50000"#);
        std::fs::write(&path, json).unwrap();
        path
    };
    let out = dir.path().join("out");
    let first = job_file("job.json", ("transactional_file", &out));
    crate::stages::kill_after_checkpoints(&first, &chk, job, 3);
    let oldest = *crate::stages::completed_ids(&chk, job)
        .iter()
        .min()
        .unwrap();
    let summary = crate::binary::run_to_end(&first, &chk, Some("latest"), &dir.path().join("s1"));
    assert!(
        summary["events"].as_u64().unwrap() < 2 * EVENTS,
        "resumed: {summary}"
    );
    assert_pairs(&committed(&out), &pairs(|_, _| true));

    let older = dir.path().join("older");
    let second = job_file("older.json", ("file", &older));
    let summary = crate::binary::run_to_end(
        &second,
        &chk,
        Some(&oldest.to_string()),
        &dir.path().join("s2"),
    );
    assert_eq!(summary["restored_from"], serde_json::json!([oldest]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metas = rt.block_on(metadata(dir.path(), job));
    let m = metas
        .into_iter()
        .find(|m| m.checkpoint_id.0 == oldest)
        .expect("the oldest checkpoint");
    let later = pairs(|l, r| !before(&m, l) || !before(&m, r));
    assert_pairs(&committed(&older), &later);
}

/// The window join's windows.
const WINDOW: i64 = 20;

fn window_join_spec(
    job: &str,
    mode: &str,
    parallelism: u32,
    sink: (&str, &Path),
    extra: &str,
) -> String {
    let join = format!(
        r#""aggregate":{{"type":"window_join","right_source":1,"field":"amount"}},
            "window":{{"type":"tumbling","size_ms":{WINDOW}}}"#
    );
    join_spec(&join, job, mode, parallelism, sink, extra)
}

/// `(key, window start, window end, l.amount, r.amount)` → how many
/// times, for every pair of a left and a right event of one key and
/// tumbling window; `keep(key, end)` says which windows count.
fn window_pairs(keep: impl Fn(&Key, i64) -> bool) -> Pairs {
    let by_window = |seed, first| {
        let mut w: BTreeMap<(Key, i64), Vec<i64>> = BTreeMap::new();
        for e in events(seed, first) {
            let start = e.ts.div_euclid(WINDOW) * WINDOW;
            w.entry((e.key, start)).or_default().push(e.amount);
        }
        w
    };
    let right = by_window(RIGHT_SEED, 2);
    let mut out = Pairs::new();
    for ((key, start), left) in by_window(LEFT_SEED, 0) {
        let end = start + WINDOW;
        let Some(right) = right.get(&(key.clone(), start)) else {
            continue;
        };
        if !keep(&key, end) {
            continue;
        }
        for l in &left {
            for r in right {
                *out.entry((key.clone(), start, end, *l, *r)).or_insert(0) += 1;
            }
        }
    }
    out
}

async fn window_join_failure(job: &str, mode: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("first");
    let failing = r#","inject_failure":{"subtask":1,"after_records":40000,"after_completed_checkpoint":true}"#;
    let first = window_join_spec(job, mode, 2, ("transactional_file", &out), failing);
    let o = run(first, dir.path(), None, "w1").await;
    assert_eq!(o.restarts, 1, "the injected failure happened: {o:?}");
    let want = window_pairs(|_, _| true);
    assert!(want.len() > 50_000, "{} pairs", want.len());
    assert_pairs(&committed(&out), &want);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_join_every_pair_once_after_a_failure_unaligned() {
    window_join_failure("window-join-unaligned", "unaligned").await;
}

/// After the failure, an early checkpoint restored at parallelism 3 into a
/// new folder (a plain file sink): exactly the pairs of the windows that
/// had not fired by its watermarks, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_join_every_pair_once_after_a_failure_and_a_rescale_aligned() {
    let job = "window-join-aligned";
    let dir = window_join_failure(job, "exactly_once").await;
    let (m, owners) = crate::windows::early_checkpoint(dir.path(), job).await;
    let out = dir.path().join("rescaled");
    let restored = run(
        window_join_spec(job, "exactly_once", 3, ("file", &out), ""),
        dir.path(),
        Some(RestoreFrom::Checkpoint(m.checkpoint_id)),
        "w2",
    )
    .await;
    assert_eq!(restored.restored_from, vec![m.checkpoint_id]);
    let later = window_pairs(|k, end| !crate::windows::fired_before(&owners, k, end));
    assert!(!later.is_empty());
    assert_pairs(&committed(&out), &later);
}
