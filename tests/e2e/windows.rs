//! Event-time windows through whole jobs, each compared with windows
//! computed plainly here from the input: out-of-order events (the
//! generator's `disorder_ms`, within the watermark's bound), a tumbling
//! count, a sliding sum, a sliding top-3, session counts and the median
//! by a full window function per key, and a global tumbling count (no
//! `key_by`), into a two-phase-commit sink. After a failure (aligned and unaligned) every
//! window's result is committed exactly once; a restore of an early
//! checkpoint at another parallelism emits exactly the windows that had
//! not fired by the checkpoint's watermark, each once; so do a SIGKILL and
//! restores of the latest and an older checkpoint. A file with a few very
//! late lines: they are left out, also when replayed after a restore.

use std::collections::BTreeMap;
use std::path::Path;

use cutpoint_coordinator::RestoreFrom;
use cutpoint_core::{keygroup, CheckpointMetadata, JobSpec, Key, KeyGroupRange, Value};
use cutpoint_runtime::source::{generator_amount, generator_app_id, generator_range, generator_ts};

use crate::common::*;
use crate::event_time::metadata;
use crate::stages::{run, run_with};
use cutpoint_operator::Functions;

const EVENTS: u64 = 300_000;
const KEYS: u64 = 20;
const SEED: u64 = 42;
const MAXP: u32 = 128;

/// `(key, window start, window end)` → result.
type Windows = BTreeMap<(Key, i64, i64), Value>;

/// Every generated event as `(key, event time, index)`.
fn events(disorder: u64) -> Vec<(Key, i64, u64)> {
    let mut out = Vec::new();
    for p in 0..2 {
        let (start, end) = generator_range(EVENTS, 2, p);
        for i in start..end {
            let ts = generator_ts(SEED, disorder, i, i - start);
            let key = Key::Int(generator_app_id(SEED, KEYS, i) as i64);
            out.push((key, ts, i));
        }
    }
    out
}

/// The windows of `[start, start + size)` starting every `slide` that
/// hold `ts`.
fn starts(ts: i64, size: i64, slide: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut s = ts.div_euclid(slide) * slide;
    while s > ts - size {
        out.push(s);
        s -= slide;
    }
    out
}

/// Every generated event's windows of `size` every `slide`, with
/// `value(i)` added per window.
fn sums(disorder: u64, size: i64, slide: i64, value: impl Fn(u64) -> i64) -> Windows {
    let mut w = BTreeMap::new();
    for (key, ts, i) in events(disorder) {
        for s in starts(ts, size, slide) {
            *w.entry((key.clone(), s, s + size)).or_insert(0) += value(i);
        }
    }
    w.into_iter().map(|(w, n)| (w, Value::Int(n))).collect()
}

/// The 3 largest amounts per key and sliding window, largest first.
fn top3(disorder: u64) -> Windows {
    let mut w: BTreeMap<_, Vec<i64>> = BTreeMap::new();
    for (key, ts, i) in events(disorder) {
        for s in starts(ts, 2000, 500) {
            let amount = generator_amount(SEED, i) as i64;
            w.entry((key.clone(), s, s + 2000))
                .or_default()
                .push(amount);
        }
    }
    let top = |mut v: Vec<i64>| {
        v.sort_by(|a, b| b.cmp(a));
        v.truncate(3);
        Value::list(v.into_iter().map(Value::Int))
    };
    w.into_iter().map(|(w, v)| (w, top(v))).collect()
}

/// One count per tumbling second over every key's events (a global
/// window).
fn global_counts(disorder: u64) -> Windows {
    let mut w = BTreeMap::new();
    for (_, ts, _) in events(disorder) {
        let s = ts.div_euclid(1000) * 1000;
        *w.entry((JobSpec::GLOBAL_KEY, s, s + 1000)).or_insert(0) += 1;
    }
    w.into_iter().map(|(w, n)| (w, Value::Int(n))).collect()
}

const GAP: i64 = 40;

/// Session counts per key: each key's event times sorted; a session ends
/// where the next time is `GAP` or more after the last.
fn sessions(disorder: u64) -> Windows {
    let mut times: BTreeMap<Key, Vec<i64>> = BTreeMap::new();
    for (key, ts, _) in events(disorder) {
        times.entry(key).or_default().push(ts);
    }
    let mut w = Windows::new();
    for (key, mut ts) in times {
        ts.sort();
        let (mut first, mut n) = (ts[0], 1);
        for pair in ts.windows(2) {
            if pair[1] - pair[0] >= GAP {
                w.insert((key.clone(), first, pair[0] + GAP), Value::Int(n));
                (first, n) = (pair[1], 0);
            }
            n += 1;
        }
        w.insert((key.clone(), first, ts[ts.len() - 1] + GAP), Value::Int(n));
    }
    w
}

/// What a sink folder committed: `(key, start, end)` → every result for
/// it.
fn committed(out: &Path) -> BTreeMap<(Key, i64, i64), Vec<Value>> {
    let output = cutpoint_runtime::sink::read_output(out).unwrap();
    let mut got: BTreeMap<_, Vec<Value>> = BTreeMap::new();
    for (key, values) in output.updates {
        for v in values {
            let Value::List(l) = &v else {
                panic!("{key}: {v} is not [start, end, result]")
            };
            let [s, e, r] = l.as_slice() else {
                panic!("{key}: {v}")
            };
            got.entry((key.clone(), int(s), int(e)))
                .or_default()
                .push(r.clone());
        }
    }
    got
}

/// Each window in `want` committed exactly once with its result, and
/// nothing else.
fn assert_each_window_once(got: &BTreeMap<(Key, i64, i64), Vec<Value>>, want: &Windows) {
    let once = want.iter().map(|(w, r)| (w.clone(), vec![r.clone()]));
    assert_same_entries("windows", got, &once.collect());
}

/// With late records (which ones depends on timing): each window at
/// most once, none above what all its records give, none outside `want`,
/// and most of them there.
fn assert_each_window_at_most_once(got: &BTreeMap<(Key, i64, i64), Vec<Value>>, want: &Windows) {
    for (w, results) in got {
        assert_eq!(results.len(), 1, "{w:?} committed {results:?}");
        let all = want
            .get(w)
            .unwrap_or_else(|| panic!("{w:?} should not be there"));
        assert!(
            int(&results[0]) <= int(all),
            "{w:?}: {results:?} above {all}"
        );
    }
    assert!(
        got.len() * 2 > want.len(),
        "{} of {} windows",
        got.len(),
        want.len()
    );
}

/// What a run must commit: every window exactly (no record late), or
/// with late records at most once each.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Exact,
    AtMostOnce,
}

fn check(expect: Expect, got: &BTreeMap<(Key, i64, i64), Vec<Value>>, want: &Windows) {
    match expect {
        Expect::Exact => assert_each_window_once(got, want),
        Expect::AtMostOnce => assert_each_window_at_most_once(got, want),
    }
}

struct Case {
    job: &'static str,
    mode: &'static str,
    /// The field records are grouped by; empty: a global window.
    key_by: &'static str,
    /// The functions the program running the job registered.
    functions: fn() -> Functions,
    /// The input's disorder and the watermark's bound: with the bound well
    /// above the disorder no record is late, and windows whose records all
    /// came before a checkpoint often fire only after it (so only their
    /// restored timers fire them); below it, many are late.
    disorder: u64,
    bound: u64,
    window: String,
    aggregate: &'static str,
    /// Every window's result, computed plainly from the input of this
    /// disorder.
    want: fn(u64) -> Windows,
}

fn spec(c: &Case, job: &str, parallelism: u32, out: (&str, &Path), extra: &str) -> String {
    let (sink, out) = out;
    let slow = if c.mode == "unaligned" {
        r#","inject_processing_delay_us":1500"#
    } else {
        ""
    };
    let key_by = match c.key_by {
        "" => String::new(),
        field => format!(r#""key_by":"{field}","#),
    };
    format!(
        r#"{{"job_id":"{job}","parallelism":{parallelism},
            "source":{{"type":"generator","partitions":2,"events":{EVENTS},"keys":{KEYS},"seed":{SEED},
                "rate_per_s":300000,"disorder_ms":{}}},
            {key_by}"aggregate":{},
            "event_time":{{"field":"ts","max_out_of_orderness_ms":{},"watermark_interval_ms":10}},
            "window":{},
            "sink":{{"type":"{sink}","dir":{out:?}}},
            "checkpoint":{{"interval_ms":100,"retention":100,"mode":"{}"}}{slow}{extra}}}"#,
        c.disorder, c.aggregate, c.bound, c.window, c.mode
    )
}

/// A checkpoint a quarter into the run, with each first-stage subtask's
/// key groups and watermark.
pub(crate) async fn early_checkpoint(
    dir: &Path,
    job: &str,
) -> (CheckpointMetadata, Vec<(KeyGroupRange, i64)>) {
    let metas = metadata(dir, job).await;
    let owners = |m: &CheckpointMetadata| -> Option<Vec<(KeyGroupRange, i64)>> {
        let agg = m
            .subtasks
            .iter()
            .filter(|s| s.task.operator.as_str() == "agg");
        agg.map(|s| Some((s.key_group_range?, s.watermark?)))
            .collect()
    };
    let with: Vec<_> = metas.into_iter().filter(|m| owners(m).is_some()).collect();
    let m = with[with.len() / 4].clone();
    let o = owners(&m).unwrap();
    (m, o)
}

/// Whether window `(key, _, end)` fired before the checkpoint: its old
/// subtask's watermark had passed its last millisecond.
pub(crate) fn fired_before(owners: &[(KeyGroupRange, i64)], key: &Key, end: i64) -> bool {
    let group = keygroup::key_group(key.stable_hash(), MAXP);
    let (_, w) = owners
        .iter()
        .find(|(r, _)| r.contains(group))
        .expect("an owner");
    end - 1 <= *w
}

async fn failure_and_rescale(c: Case) {
    let dir = tempfile::tempdir().unwrap();
    let want = (c.want)(c.disorder);
    let expect = match c.disorder <= c.bound {
        true => Expect::Exact,
        false => Expect::AtMostOnce,
    };
    let out = dir.path().join("first");
    // Subtask 1, or (a global window) the one that gets every record.
    let subtask = match c.key_by {
        "" => {
            let group = keygroup::key_group(JobSpec::GLOBAL_KEY.stable_hash(), MAXP);
            keygroup::subtask_for_group(group, MAXP, 2)
        }
        _ => 1,
    };
    let failing = format!(
        r#","inject_failure":{{"subtask":{subtask},"after_records":60000,"after_completed_checkpoint":true}}"#
    );
    let first = spec(&c, c.job, 2, ("transactional_file", &out), &failing);
    let o = run_with((c.functions)(), first, dir.path(), None, "w1").await;
    assert_eq!(o.restarts, 1, "the injected failure happened: {o:?}");
    check(expect, &committed(&out), &want);

    // An early checkpoint, restored at parallelism 3 into a new folder (a
    // plain file sink: the checkpoint's own transaction went to the first
    // folder): exactly the windows that had not fired by then, each by
    // its old subtask's watermark.
    let (m, owners) = early_checkpoint(dir.path(), c.job).await;
    let out = dir.path().join("rescaled");
    let restored = run_with(
        (c.functions)(),
        spec(&c, c.job, 3, ("file", &out), ""),
        dir.path(),
        Some(RestoreFrom::Checkpoint(m.checkpoint_id)),
        "w2",
    )
    .await;
    assert_eq!(restored.restored_from, vec![m.checkpoint_id]);
    let later: Windows = want
        .into_iter()
        .filter(|((k, _, e), _)| !fired_before(&owners, k, *e))
        .collect();
    assert!(!later.is_empty());
    check(expect, &committed(&out), &later);
}

fn tumbling_count(job: &'static str, mode: &'static str) -> Case {
    Case {
        job,
        mode,
        key_by: "app_id",
        functions: Functions::new,
        disorder: 300,
        bound: 3_000,
        window: r#"{"type":"tumbling","size_ms":1000}"#.into(),
        aggregate: r#"{"type":"count"}"#,
        want: |d| sums(d, 1000, 1000, |_| 1),
    }
}

fn sliding_sum(job: &'static str, mode: &'static str) -> Case {
    Case {
        job,
        mode,
        key_by: "app_id",
        functions: Functions::new,
        disorder: 300,
        bound: 3_000,
        window: r#"{"type":"sliding","size_ms":2000,"slide_ms":500}"#.into(),
        aggregate: r#"{"type":"sum","field":"amount"}"#,
        want: |d| sums(d, 2000, 500, |i| generator_amount(SEED, i) as i64),
    }
}

fn sliding_top3(job: &'static str, mode: &'static str) -> Case {
    Case {
        job,
        mode,
        key_by: "app_id",
        functions: Functions::new,
        disorder: 300,
        bound: 3_000,
        window: r#"{"type":"sliding","size_ms":2000,"slide_ms":500}"#.into(),
        aggregate: r#"{"type":"top_n","field":"amount","n":3}"#,
        want: top3,
    }
}

/// The upper median of each key's amounts per tumbling second, by a full
/// window function the program registered.
fn median(job: &'static str, mode: &'static str) -> Case {
    Case {
        functions: || {
            Functions::new().window_function("median", |_, _, values| {
                let mut v: Vec<i64> = values.iter().map(int).collect();
                v.sort();
                Value::Int(v[v.len() / 2])
            })
        },
        aggregate: r#"{"type":"process_window","function":"median","field":"amount"}"#,
        want: medians,
        ..tumbling_count(job, mode)
    }
}

/// The upper median of each key's amounts per tumbling second.
fn medians(disorder: u64) -> Windows {
    let mut w: BTreeMap<_, Vec<i64>> = BTreeMap::new();
    for (key, ts, i) in events(disorder) {
        let s = ts.div_euclid(1000) * 1000;
        w.entry((key, s, s + 1000))
            .or_default()
            .push(generator_amount(SEED, i) as i64);
    }
    let median = |mut v: Vec<i64>| {
        v.sort();
        Value::Int(v[v.len() / 2])
    };
    w.into_iter().map(|(w, v)| (w, median(v))).collect()
}

/// A tumbling count of every record (no `key_by`): one window per second.
fn global_count(job: &'static str, mode: &'static str) -> Case {
    Case {
        key_by: "",
        want: global_counts,
        ..tumbling_count(job, mode)
    }
}

/// The generator's 20 keys stand for users: each sees an event every
/// 10 ms on average, so a gap of 40 ms gives a few thousand sessions of
/// many lengths.
fn session_count(job: &'static str, mode: &'static str) -> Case {
    Case {
        job,
        mode,
        key_by: "app_id",
        functions: Functions::new,
        disorder: 300,
        bound: 3_000,
        window: format!(r#"{{"type":"session","gap_ms":{GAP}}}"#),
        aggregate: r#"{"type":"count"}"#,
        want: sessions,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_counts_each_window_once_after_a_failure_and_a_rescale_aligned() {
    failure_and_rescale(tumbling_count("tumbling-aligned", "exactly_once")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_counts_each_window_once_after_a_failure_and_a_rescale_unaligned() {
    failure_and_rescale(tumbling_count("tumbling-unaligned", "unaligned")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_windows_count_every_record_once_after_a_failure_and_a_rescale_aligned() {
    let c = global_count("global-aligned", "exactly_once");
    assert!((c.want)(c.disorder).len() > 100);
    failure_and_rescale(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_windows_count_every_record_once_after_a_failure_and_a_rescale_unaligned() {
    failure_and_rescale(global_count("global-unaligned", "unaligned")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_function_each_window_once_after_a_failure_and_a_rescale_aligned() {
    failure_and_rescale(median("median-aligned", "exactly_once")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_function_each_window_once_after_a_failure_and_a_rescale_unaligned() {
    failure_and_rescale(median("median-unaligned", "unaligned")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_sums_each_window_once_after_a_failure_and_a_rescale_aligned() {
    failure_and_rescale(sliding_sum("sliding-aligned", "exactly_once")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_sums_each_window_once_after_a_failure_and_a_rescale_unaligned() {
    failure_and_rescale(sliding_sum("sliding-unaligned", "unaligned")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_top_3_each_window_once_after_a_failure_and_a_rescale_aligned() {
    failure_and_rescale(sliding_top3("top3-aligned", "exactly_once")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_top_3_each_window_once_after_a_failure_and_a_rescale_unaligned() {
    failure_and_rescale(sliding_top3("top3-unaligned", "unaligned")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_each_once_after_a_failure_and_a_rescale_aligned() {
    let c = session_count("sessions-aligned", "exactly_once");
    let n = (c.want)(c.disorder).len();
    assert!((1_000..20_000).contains(&n), "{n} sessions");
    failure_and_rescale(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_each_once_after_a_failure_and_a_rescale_unaligned() {
    failure_and_rescale(session_count("sessions-unaligned", "unaligned")).await;
}

/// Input far more out of order than the watermark's bound: many records
/// are late (which ones depends on timing). After a failure and after a
/// rescaled restore, no window is committed twice or above its records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_late_records_each_window_is_committed_at_most_once_unaligned() {
    let mut c = tumbling_count("late-unaligned", "unaligned");
    c.disorder = 3_000;
    c.bound = 200;
    failure_and_rescale(c).await;
}

/// One partition (so which lines are late does not depend on how two
/// partitions interleave): line `j` has event time `j`, except a few very
/// late ones 50 s back, long after their windows fired. They are left out
/// of every window, also when a restore replays them, and go to the late
/// side output (a two-phase-commit sink) exactly once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn very_late_lines_are_left_out_also_after_a_restore() {
    very_late_lines("late-lines", "").await;
}

/// The same with a second stage counting each key's windows: the late
/// sink's transactions are the first stage's, the others the second's;
/// the restore after the failure commits both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn very_late_lines_go_to_the_late_sink_of_a_job_with_stages() {
    let stage =
        r#","stages":[{"id":"windows","key_by":{"type":"key"},"aggregate":{"type":"count"}}]"#;
    very_late_lines("late-lines-stages", stage).await;
}

async fn very_late_lines(job: &str, stages: &str) {
    const LINES: i64 = 100_000;
    // Dense after the failure point, so some are replayed right after the
    // restore, before the source's first watermark.
    let late = |j: i64| j >= 60_000 && j % 50 == 0;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("p0.jsonl");
    let text: String = (0..LINES)
        .map(|j| {
            let t = if late(j) { j - 50_000 } else { j };
            format!("{{\"k\":{},\"t\":{t}}}\n", j % 10)
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("out");
    let late_out = dir.path().join("late");
    let spec = format!(
        r#"{{"job_id":"{job}","parallelism":2,
            "source":{{"type":"files","paths":[{input:?}]}},
            "key_by":"k","aggregate":{{"type":"count"}},
            "event_time":{{"field":"t","watermark_interval_ms":1}},
            "window":{{"type":"tumbling","size_ms":1000}},
            "sink":{{"type":"transactional_file","dir":{out:?}}},
            "late_sink":{{"type":"transactional_file","dir":{late_out:?}}},
            "checkpoint":{{"interval_ms":50,"retention":100}},
            "inject_processing_delay_us":3000,
            "inject_failure":{{"subtask":0,"after_records":35000,"after_completed_checkpoint":true}}{stages}}}"#
    );
    let o = run(spec, dir.path(), None, "w").await;
    assert_eq!(o.restarts, 1, "{o:?}");
    let mut want = BTreeMap::new();
    for j in (0..LINES).filter(|j| !late(*j)) {
        let start = j.div_euclid(1000) * 1000;
        *want
            .entry((Key::Int(j % 10), start, start + 1000))
            .or_insert(0) += 1;
    }
    let want: Windows = want.into_iter().map(|(w, n)| (w, Value::Int(n))).collect();
    if stages.is_empty() {
        assert_each_window_once(&committed(&out), &want);
    } else {
        // Each key's windows counted: its updates are 1, 2, …, n once
        // (in the order of the files read, not of time).
        let mut per_key: BTreeMap<Key, i64> = BTreeMap::new();
        want.keys()
            .for_each(|(k, _, _)| *per_key.entry(k.clone()).or_default() += 1);
        let output = cutpoint_runtime::sink::read_output(&out).unwrap();
        let got: BTreeMap<Key, Vec<i64>> = output
            .updates
            .into_iter()
            .map(|(k, v)| {
                let mut n: Vec<i64> = v.iter().map(int).collect();
                n.sort();
                (k, n)
            })
            .collect();
        let want: BTreeMap<Key, Vec<i64>> = per_key
            .into_iter()
            .map(|(k, n)| (k, (1..=n).collect()))
            .collect();
        assert_same_entries("window counts", &got, &want);
    }
    // The side output: every late line exactly once, `[t, 1]` under its key.
    let mut want_late = BTreeMap::new();
    for j in (0..LINES).filter(|j| late(*j)) {
        *want_late
            .entry((Key::Int(j % 10), j - 50_000, 1))
            .or_insert(0) += 1;
    }
    let mut got_late = BTreeMap::new();
    let output = cutpoint_runtime::sink::read_output(&late_out).unwrap();
    for (key, values) in output.updates {
        for v in values {
            let Value::List(l) = &v else {
                panic!("{key}: {v}")
            };
            let [t, n] = l.as_slice() else {
                panic!("{key}: {v}")
            };
            *got_late.entry((key.clone(), int(t), int(n))).or_insert(0) += 1;
        }
    }
    assert_same_entries("late lines", &got_late, &want_late);
}

/// The binary killed with SIGKILL after a few checkpoints, then restored
/// from `latest` into the same two-phase-commit folder: every window in it
/// exactly once across both runs. Then restored from the oldest retained
/// checkpoint into a new folder (a plain file sink): exactly the windows
/// its old subtasks had not fired.
fn each_window_once_after_sigkill_and_restores(c: Case) {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let want = (c.want)(c.disorder);
    let job_file = |name: &str, sink: (&str, &Path)| {
        let path = dir.path().join(name);
        let json = spec(&c, c.job, 2, sink, "")
            .replace(r#""rate_per_s":300000"#, r#""rate_per_s":150000"#);
        std::fs::write(&path, json).unwrap();
        path
    };
    let out = dir.path().join("out");
    let first = job_file("job.json", ("transactional_file", &out));
    crate::stages::kill_after_checkpoints(&first, &chk, c.job, 3);
    let oldest = *crate::stages::completed_ids(&chk, c.job)
        .iter()
        .min()
        .unwrap();

    let summary = crate::binary::run_to_end(&first, &chk, Some("latest"), &dir.path().join("s1"));
    assert!(
        summary["events"].as_u64().unwrap() < EVENTS,
        "resumed: {summary}"
    );
    assert_each_window_once(&committed(&out), &want);

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
    let metas = rt.block_on(metadata(dir.path(), c.job));
    let m = metas
        .into_iter()
        .find(|m| m.checkpoint_id.0 == oldest)
        .expect("the oldest checkpoint");
    let owners: Option<Vec<(KeyGroupRange, i64)>> = m
        .subtasks
        .iter()
        .filter(|s| s.task.operator.as_str() == "agg")
        .map(|s| Some((s.key_group_range?, s.watermark?)))
        .collect();
    let later: Windows = want
        .into_iter()
        .filter(|((k, _, e), _)| !owners.as_ref().is_some_and(|o| fired_before(o, k, *e)))
        .collect();
    assert_each_window_once(&committed(&older), &later);
}

#[test]
fn each_tumbling_window_once_after_sigkill_and_restores_of_latest_and_an_older_id() {
    each_window_once_after_sigkill_and_restores(tumbling_count("windows-kill", "exactly_once"));
}

#[test]
fn each_sliding_top_3_once_after_sigkill_and_restores_of_latest_and_an_older_id() {
    each_window_once_after_sigkill_and_restores(sliding_top3("top3-kill", "exactly_once"));
}

#[test]
fn each_session_once_after_sigkill_and_restores_of_latest_and_an_older_id() {
    each_window_once_after_sigkill_and_restores(session_count("sessions-kill", "exactly_once"));
}

/// Exactly-once state into the plain (at-least-once) file sink, through a
/// failure: windows fired between the restored checkpoint and the failure
/// are written again. Every window is there, every copy with its exact
/// result; the copies are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sink_gets_every_window_at_least_once_each_copy_exact() {
    let c = tumbling_count("plain-sink", "exactly_once");
    let dir = tempfile::tempdir().unwrap();
    let want = (c.want)(c.disorder);
    let out = dir.path().join("out");
    let failing = r#","inject_failure":{"subtask":0,"after_records":60000,"after_completed_checkpoint":true}"#;
    let o = run(
        spec(&c, c.job, 2, ("file", &out), failing),
        dir.path(),
        None,
        "w",
    )
    .await;
    assert_eq!(o.restarts, 1, "the injected failure happened: {o:?}");
    let got = committed(&out);
    let mut copies = 0;
    for (w, r) in &want {
        let results = got.get(w).unwrap_or_else(|| panic!("{w:?} missing"));
        assert!(
            results.iter().all(|x| x == r),
            "{w:?}: want {r}, got {results:?}"
        );
        copies += results.len() - 1;
    }
    assert_eq!(got.len(), want.len(), "no other windows");
    eprintln!(
        "plain sink: {} windows, {copies} written again after the restore",
        want.len()
    );
}

const KNOB: &str =
    r#","inject_failure":{"subtask":1,"after_records":60000,"after_completed_checkpoint":true}"#;

/// Processing-time tumbling counts: which window a record falls in
/// depends on when it is processed, so the check is what holds whatever
/// the timing — each window committed once, and a key's window counts add
/// up to its events, computed plainly — through a failure into a
/// two-phase-commit sink (the open windows restored with their timers,
/// fired once the clock passes them or at the end of the input).
async fn processing_time_counts(job: &str, mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let slow = match mode {
        "unaligned" => r#","inject_processing_delay_us":1500"#,
        _ => "",
    };
    let spec = format!(
        r#"{{"job_id":"{job}","parallelism":2,
            "source":{{"type":"generator","partitions":2,"events":{EVENTS},"keys":{KEYS},"seed":{SEED},
                "rate_per_s":300000}},
            "key_by":"app_id","aggregate":{{"type":"count"}},
            "window":{{"type":"tumbling","size_ms":100,"time":"processing"}},
            "sink":{{"type":"transactional_file","dir":{out:?}}},
            "checkpoint":{{"interval_ms":100,"retention":10,"mode":"{mode}"}}{KNOB}{slow}}}"#
    );
    let o = run(spec.clone(), dir.path(), None, "w").await;
    assert_eq!(o.restarts, 1, "the injected failure happened: {o:?}");
    // Aligned, the open windows fired at the end of the input before the
    // final checkpoint: restored into a plain sink (its input already
    // read), the job emits no window again. (Unaligned, the final barrier
    // may overtake the end of the input: docs/guarantees.md.)
    if mode == "unaligned" {
        return check_processing_time_counts(&out);
    }
    let again = dir.path().join("again");
    let restored = spec
        .replace(KNOB, "")
        .replace(r#""type":"transactional_file""#, r#""type":"file""#)
        .replace(&format!("{out:?}"), &format!("{again:?}"));
    let o = run(restored, dir.path(), Some(RestoreFrom::Latest), "w2").await;
    assert_eq!(o.restored_from.len(), 1, "{o:?}");
    assert!(again.exists(), "the restored job opened its sink");
    let repeated = committed(&again);
    assert!(repeated.is_empty(), "windows fired again: {repeated:?}");
    check_processing_time_counts(&out);
}

/// Each window committed once; a key's window counts add up to its
/// events.
fn check_processing_time_counts(out: &Path) {
    let mut want: BTreeMap<Key, i64> = BTreeMap::new();
    for i in 0..EVENTS {
        *want
            .entry(Key::Int(generator_app_id(SEED, KEYS, i) as i64))
            .or_insert(0) += 1;
    }
    let mut got: BTreeMap<Key, i64> = BTreeMap::new();
    for ((key, start, end), results) in committed(out) {
        assert_eq!(results.len(), 1, "{key} [{start}, {end}): {results:?}");
        assert_eq!(end - start, 100);
        *got.entry(key).or_insert(0) += int(&results[0]);
    }
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_time_windows_count_every_event_once_after_a_failure_aligned() {
    processing_time_counts("proc-aligned", "exactly_once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_time_windows_count_every_event_once_after_a_failure_unaligned() {
    processing_time_counts("proc-unaligned", "unaligned").await;
}
