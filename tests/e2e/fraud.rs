//! The Rust example program `examples/fraud_detection.rs` (a keyed process
//! function with value, map and list state per account, on the library's
//! operator API and command line), driven as a real process. Checked
//! against a plain computation of its rule in this file, never through the
//! engine: every alert (account, risk) and every account's payment count,
//! after an injected failure in aligned and unaligned mode, after rescaled
//! restores (2 → 3 → 1), after SIGKILL with restores of `latest` and of an
//! older id, and in at-least-once mode (duplicates counted). Its `serve`
//! runs the same job over REST; the stock binary refuses it with 400.
//!
//! The exactly-once jobs read one source partition: the rule depends on
//! the order of an account's payments, which one partition fixes (a hash
//! exchange keeps each channel's order, through restores too).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use cutpoint_core::keygroup::key_group;
use cutpoint_core::{CheckpointMetadata, JobId, Key, KeyGroupRange, SubtaskState};
use cutpoint_runtime::source::{generator_amount, generator_app_id};
use cutpoint_state::channel::read_channel_state;
use reqwest::StatusCode;
use serde_json::json;

use crate::api::Server;
use crate::binary::{read_state, run_program_to_end};
use crate::common::{assert_exact, ints, storage_at};
use crate::stages::{completed_ids, kill_program_after_checkpoints};

const EVENTS: u64 = 300_000;
const ACCOUNTS: u64 = 2_000;
const SEED: u64 = 11;

/// The example program, built beside the `cutpoint` binary (`cargo test`
/// builds the examples).
fn program() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_cutpoint"));
    let p = bin
        .parent()
        .unwrap()
        .join("examples")
        .join("fraud_detection");
    assert!(
        p.exists(),
        "{} is missing: cargo build --examples",
        p.display()
    );
    p
}

/// The rule of examples/fraud_detection.rs, written out plainly: every
/// alert `(event index, account, risk)` and every account's payments.
struct Expected {
    alerts: Vec<(u64, Key, i64)>,
    payments: BTreeMap<Key, i64>,
}

fn expected() -> Expected {
    #[derive(Default)]
    struct Account {
        payments: i64,
        last_small: bool,
        bands: HashMap<i64, i64>,
        flagged: Vec<i64>,
    }
    let mut accounts: HashMap<i64, Account> = HashMap::new();
    let mut alerts = Vec::new();
    for i in 0..EVENTS {
        let id = generator_app_id(SEED, ACCOUNTS, i) as i64;
        let amount = generator_amount(SEED, i) as i64;
        let a = accounts.entry(id).or_default();
        let band = a.bands.entry(amount / 100).or_insert(0);
        if amount >= 800 && a.last_small && *band * 10 <= a.payments {
            a.flagged.push(amount);
            alerts.push((i, Key::Int(id), a.flagged.iter().sum()));
        }
        *band += 1;
        a.payments += 1;
        a.last_small = amount < 100;
    }
    let payments = accounts
        .iter()
        .map(|(k, a)| (Key::Int(*k), a.payments))
        .collect();
    Expected { alerts, payments }
}

impl Expected {
    /// The alerts of the events from `offset` on, per account, in order.
    fn alerts_from(&self, offset: u64) -> BTreeMap<Key, Vec<i64>> {
        self.alerts_after(&Cut::at(offset))
    }

    /// The alerts of the events a restore from `cut` processes again.
    fn alerts_after(&self, cut: &Cut) -> BTreeMap<Key, Vec<i64>> {
        let mut m: BTreeMap<Key, Vec<i64>> = BTreeMap::new();
        for (i, k, risk) in &self.alerts {
            if *i >= cut.offset || cut.in_flight.contains(i) {
                m.entry(k.clone()).or_default().push(*risk);
            }
        }
        m
    }
}

/// Where a checkpoint cuts the input: the source's offset, and the events
/// before it still in flight to the keyed subtasks (unaligned channel
/// state), which a restore processes again.
struct Cut {
    offset: u64,
    in_flight: std::collections::HashSet<u64>,
}

impl Cut {
    fn at(offset: u64) -> Self {
        Self {
            offset,
            in_flight: Default::default(),
        }
    }

    /// One source partition and FIFO channels: the `n` records in flight
    /// to a keyed subtask are the last `n` events before the offset whose
    /// key group is the subtask's.
    async fn of(m: &CheckpointMetadata, chk: &Path) -> Self {
        let mut cut = Cut::at(offset(m));
        for s in m
            .subtasks
            .iter()
            .filter(|s| s.task.operator.as_str() == "agg")
        {
            let range = s.key_group_range.unwrap();
            let mut n = in_flight_records(chk, m, s).await;
            let mut i = cut.offset;
            while n > 0 {
                i -= 1;
                let key = Key::Int(generator_app_id(SEED, ACCOUNTS, i) as i64);
                if range.contains(key_group(key.stable_hash(), m.max_parallelism)) {
                    cut.in_flight.insert(i);
                    n -= 1;
                }
            }
        }
        cut
    }
}

/// Records a keyed subtask persisted as channel state.
async fn in_flight_records(chk: &Path, m: &CheckpointMetadata, s: &SubtaskState) -> usize {
    if s.channel_state.is_empty() {
        return 0;
    }
    let (storage, job, old) = (
        storage_at(chk.to_str().unwrap()),
        m.job_id.clone(),
        vec![s.clone()],
    );
    let (rt, maxp) = (tokio::runtime::Handle::current(), m.max_parallelism);
    tokio::task::spawn_blocking(move || {
        let scratch = tempfile::tempdir().unwrap();
        let all = KeyGroupRange::for_subtask(maxp, 1, 0);
        read_channel_state(&rt, &storage, &job, &old, all, scratch.path(), maxp)
            .unwrap()
            .len()
    })
    .await
    .unwrap()
}

/// Alerts a sink committed, per account, in order (risks only grow).
fn alerts_in(dir: &Path) -> BTreeMap<Key, Vec<i64>> {
    let out = cutpoint_runtime::sink::read_output(dir).unwrap();
    assert!(
        out.others.is_empty(),
        "no staging file left: {:?}",
        out.others
    );
    out.updates
        .into_iter()
        .map(|(k, v)| {
            let mut v = ints(&v);
            v.sort_unstable();
            (k, v)
        })
        .collect()
}

/// One source partition (the order of each account's payments is fixed).
fn spec(
    dir: &Path,
    name: &str,
    (job, mode): (&str, &str),
    parallelism: u32,
    sink: &str,
    extra: &str,
) -> PathBuf {
    spec_with(dir, name, job, parallelism, 1, mode, sink, extra)
}

#[allow(clippy::too_many_arguments)]
fn spec_with(
    dir: &Path,
    name: &str,
    job: &str,
    parallelism: u32,
    partitions: u32,
    mode: &str,
    sink: &str,
    extra: &str,
) -> PathBuf {
    let out = dir.join(name);
    let path = dir.join(format!("{name}.json"));
    let text = format!(
        r#"{{"job_id":"{job}","parallelism":{parallelism},
            "source":{{"type":"generator","partitions":{partitions},"events":{EVENTS},"keys":{ACCOUNTS},"seed":{SEED},"rate_per_s":250000}},
            "key_by":"app_id","aggregate":{{"type":"process","function":"fraud_detector","field":"amount"}},
            "sink":{{"type":"{sink}","dir":{out:?}}},
            "checkpoint":{{"interval_ms":100,"retention":100,"mode":"{mode}"}}{extra}}}"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Checkpoint `id` of `job` in the local storage at `chk`.
pub(crate) async fn metadata(chk: &Path, job: &str, id: u64) -> CheckpointMetadata {
    storage_at(chk.to_str().unwrap())
        .read_metadata(&JobId::new(job).unwrap(), cutpoint_core::CheckpointId(id))
        .await
        .unwrap()
}

/// The events before checkpoint `m` (one source partition: its offset).
fn offset(m: &CheckpointMetadata) -> u64 {
    let offsets: Vec<u64> = m
        .subtasks
        .iter()
        .filter_map(|s| s.source_offset.as_ref().map(|o| o.offset))
        .collect();
    assert_eq!(offsets.len(), 1, "one source partition");
    offsets[0]
}

/// A checkpoint at `parallelism` with records in flight (unaligned), else
/// one a third of the way into the run.
async fn early_checkpoint(chk: &Path, job: &str, parallelism: u32) -> CheckpointMetadata {
    let mut ids = completed_ids(chk, job);
    ids.sort_unstable();
    let mut at = Vec::new();
    for id in ids {
        let m = metadata(chk, job, id).await;
        if m.parallelism == parallelism && offset(&m) < EVENTS {
            at.push(m);
        }
    }
    assert!(!at.is_empty(), "a checkpoint at parallelism {parallelism}");
    let in_flight = at
        .iter()
        .position(|m| m.subtasks.iter().any(|s| s.persisted_data_size > 0));
    at.swap_remove(in_flight.unwrap_or(at.len() / 3))
}

async fn failure_and_rescales(mode: &str, job: &str) {
    // Unaligned: slowed, so its checkpoints hold records in flight.
    let mode_extra = match mode {
        "unaligned" => r#","inject_processing_delay_us":2000"#,
        _ => "",
    };
    let dir = tempfile::tempdir().unwrap();
    let (bin, chk, want) = (program(), dir.path().join("chk"), expected());
    assert!(
        want.alerts.len() > 1_000,
        "the rule fires: {}",
        want.alerts.len()
    );
    let failing = format!(r#"{mode_extra},"inject_failure":{{"subtask":1,"after_records":60000}}"#);
    let first = spec(
        dir.path(),
        "first",
        (job, mode),
        2,
        "transactional_file",
        &failing,
    );
    let summary = run_program_to_end(&bin, &first, &chk, None, &dir.path().join("s1.jsonl"));
    assert_eq!(
        summary["restarts"], 1,
        "the injected failure happened: {summary}"
    );
    assert_eq!(alerts_in(&dir.path().join("first")), want.alerts_from(0));
    assert_exact(&read_state(&dir.path().join("s1.jsonl")), &want.payments);
    // Rescaled restores: the alerts after the checkpoint, exactly.
    for (from, to) in [(2, 3), (3, 1)] {
        let m = early_checkpoint(&chk, job, from).await;
        let name = format!("to{to}");
        let spec = spec(dir.path(), &name, (job, mode), to, "file", mode_extra);
        let state = dir.path().join(format!("{name}.jsonl"));
        let id = m.checkpoint_id.0.to_string();
        let summary = run_program_to_end(&bin, &spec, &chk, Some(&id), &state);
        assert_eq!(summary["restored_from"], json!([m.checkpoint_id.0]));
        let cut = Cut::of(&m, &chk).await;
        if mode == "unaligned" {
            assert!(!cut.in_flight.is_empty(), "restored records in flight");
        }
        assert_eq!(alerts_in(&dir.path().join(&name)), want.alerts_after(&cut));
        assert_exact(&read_state(&state), &want.payments);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_program_exact_after_a_failure_and_rescaled_restores_aligned() {
    failure_and_rescales("exactly_once", "fraud-aligned").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_program_exact_after_a_failure_and_rescaled_restores_unaligned() {
    failure_and_rescales("unaligned", "fraud-unaligned").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_program_exact_after_sigkill_and_restores_of_latest_and_an_older_id() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, chk, job, want) = (program(), dir.path().join("chk"), "fraud-kill", expected());
    let first = spec(
        dir.path(),
        "alerts",
        (job, "exactly_once"),
        2,
        "transactional_file",
        "",
    );
    kill_program_after_checkpoints(&bin, &first, &chk, job, 3);
    let oldest = *completed_ids(&chk, job).iter().min().unwrap();
    let state = dir.path().join("latest.jsonl");
    let summary = run_program_to_end(&bin, &first, &chk, Some("latest"), &state);
    assert!(
        summary["events"].as_u64().unwrap() < EVENTS,
        "resumed: {summary}"
    );
    // Committed before the kill and after the restore: each alert once.
    assert_eq!(alerts_in(&dir.path().join("alerts")), want.alerts_from(0));
    assert_exact(&read_state(&state), &want.payments);

    let m = metadata(&chk, job, oldest).await;
    let older = spec(dir.path(), "older", (job, "exactly_once"), 2, "file", "");
    let state = dir.path().join("older.jsonl");
    let summary = run_program_to_end(&bin, &older, &chk, Some(&oldest.to_string()), &state);
    assert_eq!(summary["restored_from"], json!([oldest]));
    assert_eq!(
        alerts_in(&dir.path().join("older")),
        want.alerts_from(offset(&m))
    );
    assert_exact(&read_state(&state), &want.payments);
}

/// At-least-once, two source partitions and a late barrier: records pass
/// the barrier before the snapshot and count again after the restore.
/// Each account's payments are over by exactly those records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_program_at_least_once_duplicates_are_the_records_beyond_the_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, chk, job, want) = (program(), dir.path().join("chk"), "fraud-alo", expected());
    let knobs = r#","inject_barrier_delay":{"partition":1,"delay_ms":150},
        "inject_failure":{"subtask":0,"after_records":100000}"#;
    let path = spec_with(dir.path(), "alo", job, 2, 2, "at_least_once", "file", knobs);
    let state = dir.path().join("alo.jsonl");
    let summary = run_program_to_end(&bin, &path, &chk, None, &state);
    assert_eq!(
        summary["restarts"], 1,
        "the injected failure happened: {summary}"
    );
    let restored = summary["restored_from"][0].as_u64().unwrap();
    let beyond: i64 = metadata(&chk, job, restored)
        .await
        .subtasks
        .iter()
        .filter(|s| s.task.operator.as_str() == "agg")
        .map(|s| s.records_beyond_barrier as i64)
        .sum();
    assert!(beyond > 0, "the late barrier let records through");
    let got = read_state(&state);
    assert_eq!(got.len(), want.payments.len());
    let mut over = 0;
    for (k, n) in &want.payments {
        assert!(
            got[k] >= *n,
            "account {k}: {} < {n}: a payment was lost",
            got[k]
        );
        over += got[k] - n;
    }
    assert_eq!(
        over, beyond,
        "the duplicates are the records beyond the barrier"
    );
}

/// The program's `serve` runs its function over REST; the stock binary
/// has no such function and says so (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_runs_the_programs_function_and_the_stock_binary_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let body: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(spec(
            dir.path(),
            "rest",
            ("fraud-rest", "exactly_once"),
            2,
            "transactional_file",
            "",
        ))
        .unwrap(),
    )
    .unwrap();
    let stock = Server::start(&chk, None);
    let (status, problem) = stock.post("/v1/jobs", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("fraud_detector") && detail.contains("none"),
        "{detail}"
    );
    drop(stock);

    let server = Server::start_program(&program(), &chk, None, None, &[]);
    let (status, v) = server.post("/v1/jobs", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    server
        .wait("/v1/jobs/fraud-rest", |v| v["state"] == "FINISHED")
        .await;
    assert_eq!(
        alerts_in(&dir.path().join("rest")),
        expected().alerts_from(0)
    );
}
