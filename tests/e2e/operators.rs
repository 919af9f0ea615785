//! Operators with several kinds of input: a union of two sources into the
//! keyed count, and a keyed two-input join of a click stream with an
//! app-metadata stream — exact after a failure and restore, aligned and
//! unaligned, because the barrier is aligned (or its in-flight records
//! persisted) across inputs of different sources. And the spec's filters,
//! chained into the source tasks: a sum over the generated events that
//! pass two conditions, and a count over the NDJSON lines of one country.

use std::collections::BTreeMap;

use cutpoint_coordinator::{spawn_job, JobConfig};
use cutpoint_core::{Key, Value};

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
/// `{"app_id","category"}` lines, some apps recategorised later; the
/// categories are strings, a few of them lists).
async fn join_scenario(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (keys, clicks) = (1_000u64, 400_000u64);
    let apps = dir.path().join("apps.jsonl");
    let mut lines = String::new();
    let mut category = BTreeMap::new();
    for k in 0..keys {
        let c = serde_json::json!(format!("cat-{}", (k * 7) % 13));
        lines.push_str(&format!("{{\"app_id\":{k},\"category\":{c}}}\n"));
        category.insert(k, c);
    }
    for k in (0..keys).step_by(3) {
        let c = serde_json::json!(["recat", 100 + k % 5]);
        lines.push_str(&format!("{{\"app_id\":{k},\"category\":{c}}}\n"));
        category.insert(k, c);
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
    let state: BTreeMap<Key, Value> = outcome.final_values();
    assert_eq!(state.len() as u64, keys);
    for k in 0..keys {
        let clicks = counts.get(&Key::Int(k as i64)).copied().unwrap_or(0);
        let category = Value::from_json(&category[&k]).unwrap();
        assert_eq!(
            state[&Key::Int(k as i64)],
            Value::list([Value::Int(clicks), category]),
            "key {k}: [clicks, category]"
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

/// One NDJSON line of the string-valued scenario: user `i % 89` visits
/// page `p{…}` (a string), with status `s` — a string, or now and then a
/// list or null; every 50th line's page is a float and every 61st's status
/// a boolean (bad lines where that field is read).
fn visit(i: u64) -> (String, String, serde_json::Value) {
    let user = format!("u{}", i % 89);
    let page = match i % 50 {
        7 => "1.5".to_string(),
        _ => format!("\"p{}\"", (i * 7919) % 23),
    };
    let status = match i % 61 {
        5 => serde_json::json!(true),
        9 => serde_json::json!(["retry", i % 3]),
        17 => serde_json::Value::Null,
        _ => serde_json::json!(["ok", "slow", "err"][((i / 89) % 3) as usize]),
    };
    (user, page, status)
}

/// Count-distinct and dedup over string values (no longer only integers):
/// exact after an injected failure and restore (unaligned: records in
/// flight at a barrier go into the checkpoint with their string values;
/// whether the restored one held any is not asserted here — fraud.rs
/// asserts channel-state replay), the committed output holding each
/// update once, compared with a plain computation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_distinct_and_dedup_over_string_values_are_exact_after_a_restore() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("visits.jsonl");
    let lines: String = (0..120_000u64)
        .map(|i| {
            let (user, page, status) = visit(i);
            format!("{{\"user\":{user:?},\"page\":{page},\"status\":{status}}}\n")
        })
        .collect();
    std::fs::write(&input, lines).unwrap();
    let job = |id: &str, aggregate: &str, out: &std::path::Path| {
        format!(
            r#"{{"job_id":"{id}","parallelism":2,
            "source":{{"type":"files","paths":[{input:?}],"on_bad_line":"skip"}},
            "key_by":"user","aggregate":{aggregate},
            "checkpoint":{{"interval_ms":50,"mode":"unaligned"}},"inject_processing_delay_us":2000,
            "sink":{{"type":"transactional_file","dir":{out:?}}},
            "inject_failure":{{"subtask":1,"after_records":6000,"after_completed_checkpoint":true}}}}"#
        )
    };
    // Plainly: distinct pages per user (float pages are bad lines), and the
    // changes of each user's status (boolean statuses are bad lines).
    let mut pages: BTreeMap<Key, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut changes: BTreeMap<Key, Vec<Value>> = BTreeMap::new();
    for i in 0..120_000u64 {
        let (user, page, status) = visit(i);
        let key = Key::Str(user.into());
        if !page.contains('.') {
            pages.entry(key.clone()).or_default().insert(page);
        }
        if !status.is_boolean() {
            let v = Value::from_json(&status).unwrap();
            let seen = changes.entry(key).or_default();
            if seen.last() != Some(&v) {
                seen.push(v);
            }
        }
    }

    let out = dir.path().join("distinct-out");
    let spec = job(
        "distinct",
        r#"{"type":"count_distinct","field":"page"}"#,
        &out,
    );
    let outcome = run(spec, &dir.path().join("distinct")).await;
    let expected: BTreeMap<Key, i64> = pages
        .iter()
        .map(|(k, s)| (k.clone(), s.len() as i64))
        .collect();
    assert_exact(&final_counts(&outcome), &expected);
    let committed = cutpoint_runtime::sink::read_output(&out).unwrap();
    assert!(committed.others.is_empty(), "{:?}", committed.others);
    for (k, n) in &expected {
        let mut got = ints(&committed.updates[k]);
        got.sort_unstable();
        assert_eq!(
            got,
            (1..=*n).collect::<Vec<_>>(),
            "key {k}: each count once"
        );
    }

    let out = dir.path().join("dedup-out");
    let spec = job(
        "dedup",
        r#"{"type":"dedup","field":"status","keep":"last"}"#,
        &out,
    );
    let outcome = run(spec, &dir.path().join("dedup")).await;
    let finals: BTreeMap<Key, Value> = outcome.final_values();
    let last: BTreeMap<Key, Value> = changes
        .iter()
        .map(|(k, c)| (k.clone(), c.last().unwrap().clone()))
        .collect();
    assert_eq!(finals, last);
    let committed = cutpoint_runtime::sink::read_output(&out).unwrap();
    assert_eq!(committed.updates.len(), changes.len());
    for (k, want) in &changes {
        let (mut got, mut want) = (committed.updates[k].clone(), want.clone());
        got.sort();
        want.sort();
        assert_eq!(got, want, "key {k}: every change once");
    }
}
