//! The Rust example program `examples/word_count.rs` (stateless steps —
//! a flat map, a map and a filter, written as closures — before a keyed
//! count of string keys), driven as a real process over two input files.
//! Checked against a word count written plainly in this file: the final
//! count of every word, and, with the two-phase-commit sink, every count
//! update committed exactly once (a word counted `n` times has the updates
//! `1..=n`), after an injected failure (aligned and unaligned), a rescaled
//! restore, and SIGKILL with restores of `latest` and of an older id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cutpoint_core::Key;
use serde_json::json;

use crate::binary::run_program_to_end;
use crate::common::ints;
use crate::stages::{completed_ids, kill_program_after_checkpoints};

const LINES: u64 = 20_000;
const VOCABULARY: [&str; 14] = [
    "The",
    "the",
    "quick",
    "Brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog,",
    "and",
    "Ünïcode",
    "x-ray",
    "42nd",
];

/// The example program, built beside the `cutpoint` binary.
fn program() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_cutpoint"));
    let p = bin.parent().unwrap().join("examples").join("word_count");
    assert!(
        p.exists(),
        "{} is missing: cargo build --examples",
        p.display()
    );
    p
}

/// Line `i` of input file `file` (a pseudo-random text).
fn text(file: u64, i: u64) -> String {
    let mut x = file.wrapping_mul(1_000_003).wrapping_add(i);
    let n = 1 + (i % 11);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            VOCABULARY[(x >> 33) as usize % VOCABULARY.len()]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Two input files (two source partitions).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    (0..2)
        .map(|f| {
            let path = dir.join(format!("input-{f}.jsonl"));
            let lines: String = (0..LINES)
                .map(|i| format!("{}\n", json!({"doc": i, "text": text(f, i)})))
                .collect();
            std::fs::write(&path, lines).unwrap();
            path
        })
        .collect()
}

/// The word count, plainly: split at anything not a letter or digit,
/// lower-case, drop words under three characters, count.
fn expected() -> BTreeMap<Key, i64> {
    let mut counts = BTreeMap::new();
    for f in 0..2 {
        for i in 0..LINES {
            for word in text(f, i).split(|c: char| !c.is_alphanumeric()) {
                let word = word.to_lowercase();
                if word.chars().count() >= 3 {
                    *counts.entry(Key::Str(word.as_str().into())).or_insert(0) += 1;
                }
            }
        }
    }
    counts
}

/// A run's spec; `sink`: `transactional_file` for the first run of a job,
/// `file` for a restore into a new folder (the restored checkpoint's
/// transactions live in the first run's folder).
fn spec(dir: &Path, name: &str, job: (&str, u32), mode: &str, sink: &str, extra: &str) -> PathBuf {
    let (job, parallelism) = job;
    let out = dir.join(name);
    let paths = inputs(dir);
    let path = dir.join(format!("{name}.json"));
    let text = format!(
        r#"{{"job_id":"{job}","parallelism":{parallelism},
            "source":{{"type":"files","paths":{paths:?}}},
            "key_by":"text",
            "transforms":[{{"flat_map":"words"}},{{"map":"lowercase"}},{{"filter":"no_short_words"}}],
            "aggregate":{{"type":"count"}},
            "sink":{{"type":"{sink}","dir":{out:?}}},
            "inject_processing_delay_us":3000,
            "checkpoint":{{"interval_ms":100,"retention":100,"mode":"{mode}"}}{extra}}}"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The final counts `--final-state` wrote (string keys).
fn final_counts(path: &Path) -> BTreeMap<Key, i64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                serde_json::from_value(v["key"].clone()).unwrap(),
                v["value"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// After a restore into a new folder (plain file sink): each word's
/// updates from the restore point on, every one, up to its final count.
fn assert_updates_up_to_the_end(dir: &Path, want: &BTreeMap<Key, i64>) {
    let out = cutpoint_runtime::sink::read_output(dir).unwrap();
    for (word, values) in &out.updates {
        let mut got = ints(values);
        got.sort_unstable();
        got.dedup();
        let from = got[0];
        assert_eq!(
            got,
            (from..=want[word]).collect::<Vec<_>>(),
            "updates of {word:?}"
        );
    }
}

/// Every committed count update is there once: `1..=n` per word.
fn assert_each_update_once(dir: &Path, want: &BTreeMap<Key, i64>) {
    let out = cutpoint_runtime::sink::read_output(dir).unwrap();
    assert!(
        out.others.is_empty(),
        "staging files left: {:?}",
        out.others
    );
    assert_eq!(out.updates.len(), want.len(), "every word has output");
    for (word, n) in want {
        let mut got = ints(&out.updates[word]);
        got.sort_unstable();
        assert_eq!(got, (1..=*n).collect::<Vec<_>>(), "updates of {word:?}");
    }
}

/// Runs `job` (with the spec fields `extra`) through a failure in the count
/// stage: the final state is `want` and every committed update is there
/// once. Then a restore of an early checkpoint at parallelism 3 into a new
/// folder: the final state is `want` again, and every update after the
/// restore point is written (the plain sink may repeat some).
fn failure_and_rescale(mode: &str, job: &str, extra: &str, want: &BTreeMap<Key, i64>) {
    let dir = tempfile::tempdir().unwrap();
    let (bin, chk) = (program(), dir.path().join("chk"));
    let failing = format!(r#"{extra},"inject_failure":{{"subtask":1,"after_records":40000}}"#);
    let first = spec(
        dir.path(),
        "first",
        (job, 2),
        mode,
        "transactional_file",
        &failing,
    );
    let state = dir.path().join("first.jsonl");
    let summary = run_program_to_end(&bin, &first, &chk, None, &state);
    assert_eq!(
        summary["restarts"], 1,
        "the injected failure happened: {summary}"
    );
    assert_eq!(&final_counts(&state), want);
    assert_each_update_once(&dir.path().join("first"), want);

    let mut ids = completed_ids(&chk, job);
    ids.sort_unstable();
    let early = ids[ids.len() / 4];
    let rescaled = spec(dir.path(), "rescaled", (job, 3), mode, "file", extra);
    let state = dir.path().join("rescaled.jsonl");
    let summary = run_program_to_end(&bin, &rescaled, &chk, Some(&early.to_string()), &state);
    assert_eq!(summary["restored_from"], json!([early]));
    assert_eq!(&final_counts(&state), want);
    assert_updates_up_to_the_end(&dir.path().join("rescaled"), want);
}

/// The word count through [`failure_and_rescale`].
fn word_count_failure_and_rescale(mode: &str, job: &str) {
    let want = expected();
    for kept in ["the", "brown", "ünïcode", "ray", "42nd"] {
        assert!(want.contains_key(&Key::from(kept)), "{kept}");
    }
    for dropped in ["The", "a", "x", "dog,"] {
        assert!(!want.contains_key(&Key::from(dropped)), "{dropped}");
    }
    failure_and_rescale(mode, job, "", &want);
}

#[test]
fn word_count_steps_exact_after_a_failure_and_a_rescale_aligned() {
    word_count_failure_and_rescale("exactly_once", "words-aligned");
}

#[test]
fn word_count_steps_exact_after_a_failure_and_a_rescale_unaligned() {
    word_count_failure_and_rescale("unaligned", "words-unaligned");
}

/// A second stage whose steps (`first_letter`, run in the count's task on
/// each of its updates) re-key them: it counts the updates per first
/// letter — each word counted `n` times updates `n` times, so a letter's
/// total is the sum of its words' counts. Exact after a failure in the
/// count stage and a rescaled restore.
#[test]
fn steps_between_stages_rekey_updates_exactly_after_a_failure_and_a_rescale_aligned() {
    steps_between_stages("exactly_once", "letters-aligned");
}

#[test]
fn steps_between_stages_rekey_updates_exactly_after_a_failure_and_a_rescale_unaligned() {
    steps_between_stages("unaligned", "letters-unaligned");
}

fn steps_between_stages(mode: &str, job: &str) {
    let mut want: BTreeMap<Key, i64> = BTreeMap::new();
    for (word, n) in expected() {
        let Key::Str(w) = word else { unreachable!() };
        let first: String = w.chars().take(1).collect();
        *want.entry(Key::from(first)).or_insert(0) += n;
    }
    assert!(want.len() >= 5, "{want:?}");
    // Every committed update of the letters stage once: 1..=total.
    let stage = r#","stages":[{"id":"letters","transforms":[{"map":"first_letter"}],
        "key_by":{"type":"key"},"aggregate":{"type":"count"}}]"#;
    failure_and_rescale(mode, job, stage, &want);
}

#[test]
fn word_count_steps_exact_after_sigkill_and_restores_of_latest_and_an_older_id() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, chk, job, want) = (program(), dir.path().join("chk"), "words-kill", expected());
    let first = spec(
        dir.path(),
        "counts",
        (job, 2),
        "exactly_once",
        "transactional_file",
        "",
    );
    // Slower than the other tests' runs, so the job does not finish before
    // three checkpoints on a loaded machine (it did, once, in CI).
    let text = std::fs::read_to_string(&first).unwrap();
    let slower = text.replace(
        r#""inject_processing_delay_us":3000"#,
        r#""inject_processing_delay_us":20000"#,
    );
    assert_ne!(text, slower);
    std::fs::write(&first, slower).unwrap();
    kill_program_after_checkpoints(&bin, &first, &chk, job, 3);
    let oldest = *completed_ids(&chk, job).iter().min().unwrap();
    let state = dir.path().join("latest.jsonl");
    let summary = run_program_to_end(&bin, &first, &chk, Some("latest"), &state);
    assert_eq!(
        summary["restored_from"].as_array().map(Vec::len),
        Some(1),
        "{summary}"
    );
    assert_eq!(final_counts(&state), want);
    // Committed before the kill and after the restore: each update once.
    assert_each_update_once(&dir.path().join("counts"), &want);

    let older = spec(dir.path(), "older", (job, 2), "exactly_once", "file", "");
    let state = dir.path().join("older.jsonl");
    let summary = run_program_to_end(&bin, &older, &chk, Some(&oldest.to_string()), &state);
    assert_eq!(summary["restored_from"], json!([oldest]));
    assert_eq!(final_counts(&state), want);
    assert_updates_up_to_the_end(&dir.path().join("older"), &want);
}
