//! Operators with several kinds of input: a union of two sources into the
//! keyed count, and a keyed two-input join of a click stream with an
//! app-metadata stream — exact after a failure and restore, aligned and
//! unaligned, because the barrier is aligned (or its in-flight records
//! persisted) across inputs of different sources. And the spec's filters,
//! chained into the source tasks: a sum over the generated events that
//! pass two conditions, and a count over the NDJSON lines of one country.

use std::collections::BTreeMap;

use cutpoint_coordinator::{spawn_job, JobConfig};
use cutpoint_core::spec::join;
use cutpoint_core::Key;

use crate::common::*;

async fn run(spec_json: String, dir: &std::path::Path) -> cutpoint_coordinator::JobOutcome {
    let spec = cutpoint_core::JobSpec::from_json(&spec_json).expect("valid spec");
    let outcome = spawn_job(JobConfig {
        spec,
        storage: storage_at(dir.join("chk").to_str().unwrap()),
        restore_from: None,
        local_dir: dir.join("work"),
        functions: Default::default(),
    })
    .join()
    .await
    .unwrap();
    assert_eq!(
        outcome.restarts, 1,
        "the injected failure happened: {outcome:?}"
    );
    assert!(!outcome.restored_from.is_empty());
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_union_of_two_sources_counts_both_exactly_after_a_restore() {
    let dir = tempfile::tempdir().unwrap();
    let spec = r#"{"job_id":"union","parallelism":2,
        "source":{"type":"generator","partitions":2,"events":400000,"keys":2000,"seed":42,"rate_per_s":800000},
        "union":[{"type":"generator","partitions":3,"events":300000,"keys":2000,"seed":7,"rate_per_s":600000}],
        "key_by":"app_id","aggregate":{"type":"count"},
        "checkpoint":{"interval_ms":100},
        "inject_failure":{"subtask":1,"after_records":150000}}"#;
    let outcome = run(spec.into(), dir.path()).await;
    let mut expected = expected_counts(42, 2000, 400_000);
    for (k, v) in expected_counts(7, 2000, 300_000) {
        *expected.entry(k).or_insert(0) += v;
    }
    assert_exact(&final_counts(&outcome), &expected);
}

/// Clicks (generator) joined with app metadata (a file of
/// `{"app_id","category"}` lines, some apps recategorised later).
async fn join_scenario(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (keys, clicks) = (1_000u64, 400_000u64);
    let apps = dir.path().join("apps.jsonl");
    let mut lines = String::new();
    let mut category = BTreeMap::new();
    for k in 0..keys {
        let c = (k * 7) % 13;
        lines.push_str(&format!("{{\"app_id\":{k},\"category\":{c}}}\n"));
        category.insert(k, c as i64);
    }
    for k in (0..keys).step_by(3) {
        let c = 100 + k % 5;
        lines.push_str(&format!("{{\"app_id\":{k},\"category\":{c}}}\n"));
        category.insert(k, c as i64);
    }
    std::fs::write(&apps, lines).unwrap();
    let spec = format!(
        r#"{{"job_id":"join-{mode}","parallelism":2,
        "source":{{"type":"generator","partitions":2,"events":{clicks},"keys":{keys},"seed":42,"rate_per_s":800000}},
        "union":[{{"type":"files","paths":[{apps:?}]}}],
        "key_by":"app_id","aggregate":{{"type":"join","dimension_source":1,"field":"category"}},
        "checkpoint":{{"interval_ms":100,"mode":"{mode}"}},
        "inject_failure":{{"subtask":0,"after_records":150000}}}}"#,
        apps = apps.display().to_string(),
    );
    let outcome = run(spec, dir.path()).await;
    let counts = expected_counts(42, keys, clicks);
    let state: BTreeMap<Key, i64> = final_counts(&outcome);
    assert_eq!(state.len() as u64, keys);
    for k in 0..keys {
        let v = state[&Key::Int(k as i64)];
        assert_eq!(
            (join::count(v), join::dimension(v)),
            (
                counts.get(&Key::Int(k as i64)).copied().unwrap_or(0),
                category[&k]
            ),
            "key {k}: (clicks, category)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_two_input_join_is_exact_after_a_restore_aligned() {
    join_scenario("exactly_once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_two_input_join_is_exact_after_a_restore_unaligned() {
    join_scenario("unaligned").await;
}

/// Filters on the generator's fields: the sum of `amount` per app over the
/// events with `amount >= 500` and `user_id != 3`, computed plainly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_drop_events_in_the_source_task_exactly_after_a_restore() {
    use cutpoint_runtime::source::{generator_amount, generator_app_id, generator_user_id};
    let dir = tempfile::tempdir().unwrap();
    let (events, keys, users) = (400_000u64, 1_000u64, 10u64);
    let spec = format!(
        r#"{{"job_id":"filtered","parallelism":2,
        "source":{{"type":"generator","partitions":2,"events":{events},"keys":{keys},"users":{users},"seed":42,"rate_per_s":800000}},
        "filter":[{{"field":"amount","op":"ge","value":500}},{{"field":"user_id","op":"ne","value":3}}],
        "key_by":"app_id","aggregate":{{"type":"sum","field":"amount"}},
        "checkpoint":{{"interval_ms":100}},
        "inject_failure":{{"subtask":0,"after_records":60000}}}}"#
    );
    let outcome = run(spec, dir.path()).await;
    let mut expected = BTreeMap::new();
    for i in 0..events {
        let amount = generator_amount(42, i) as i64;
        if amount >= 500 && generator_user_id(42, users, i) != 3 {
            let app = Key::Int(generator_app_id(42, keys, i) as i64);
            *expected.entry(app).or_insert(0) += amount;
        }
    }
    assert_exact(&final_counts(&outcome), &expected);
}

/// A string filter on NDJSON lines: only `"country":"de"` counts; lines
/// without the field, or with a number there, do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_filter_keeps_the_matching_ndjson_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("clicks.jsonl");
    let mut lines = String::new();
    let mut expected = BTreeMap::new();
    for i in 0..300_000u64 {
        let (user, country) = (i % 97, ["de", "fr", "nl"][(i % 7 % 3) as usize]);
        match i % 11 {
            0 => lines.push_str(&format!("{{\"user\":\"u{user}\"}}\n")),
            1 => lines.push_str(&format!("{{\"user\":\"u{user}\",\"country\":1}}\n")),
            _ => {
                lines.push_str(&format!(
                    "{{\"user\":\"u{user}\",\"country\":\"{country}\"}}\n"
                ));
                if country == "de" {
                    *expected
                        .entry(Key::Str(format!("u{user}").into()))
                        .or_insert(0) += 1;
                }
            }
        }
    }
    std::fs::write(&input, lines).unwrap();
    let spec = format!(
        r#"{{"job_id":"de-only","parallelism":2,
        "source":{{"type":"files","paths":[{input:?}]}},
        "filter":[{{"field":"country","op":"eq","value":"de"}}],
        "key_by":"user","aggregate":{{"type":"count"}},
        "checkpoint":{{"interval_ms":50}},"inject_processing_delay_us":10000,
        "inject_failure":{{"subtask":1,"after_records":10000,"after_completed_checkpoint":true}}}}"#
    );
    let outcome = run(spec, dir.path()).await;
    assert_exact(&final_counts(&outcome), &expected);
}
