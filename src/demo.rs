//! `cutpoint demo`: the PV job on generated events with one injected task
//! failure, recovered from the latest completed checkpoint, and every key's
//! final count compared with a direct computation of the same events.

use std::process::ExitCode;

use anyhow::{Context, Result};
use cutpoint_core::spec::{AggregateSpec, InjectFailure, SinkSpec, SourceSpec};
use cutpoint_core::{CheckpointConfig, JobId, JobSpec, Key};
use cutpoint_runtime::source::generator_app_id;
use serde_json::json;

use crate::jobs::{final_counts, open_storage, run_job};

const SEED: u64 = 42;

pub async fn run(
    checkpoint_dir: Option<String>,
    events: u64,
    rate: u64,
    keys: u64,
) -> Result<ExitCode> {
    let tmp = tempfile::Builder::new()
        .prefix("cutpoint-demo-")
        .tempdir()?;
    let location =
        checkpoint_dir.unwrap_or_else(|| tmp.path().join("checkpoints").display().to_string());
    let parallelism = 2;
    let spec = JobSpec {
        job_id: JobId::new(format!("pv-demo-{}", std::process::id()))?,
        parallelism,
        max_parallelism: 128,
        source: SourceSpec::Generator {
            partitions: 2,
            events,
            keys,
            seed: SEED,
            users: 1000,
            rate_per_s: (rate > 0).then_some(rate),
            disorder_ms: 0,
        },
        union: Vec::new(),
        filter: Vec::new(),
        key_by: Some("app_id".into()),
        transforms: Vec::new(),
        event_time: None,
        window: None,
        aggregate: AggregateSpec::Count,
        stages: Vec::new(),
        sink: SinkSpec::Discard.into(),
        late_sink: None,
        checkpoint: CheckpointConfig {
            interval_ms: Some(1000),
            ..Default::default()
        },
        restart: Default::default(),
        external_tasks: Vec::new(),
        inject_barrier_delay: None,
        inject_processing_delay_us: None,
        state: Default::default(),
        inject_failure: Some(InjectFailure {
            operator: None,
            subtask: 0,
            after_records: events / 2 / parallelism as u64,
            after_completed_checkpoint: true,
        }),
    };
    spec.validate()?;
    eprintln!(
        "cutpoint demo: PV job, {events} events over {keys} keys (source limited to {rate} events/s), \
         2 partitions, parallelism {parallelism}, 1 s checkpoints to {location}; one task fails half-way"
    );
    let storage = open_storage(&location)?;
    let outcome = run_job(
        spec,
        storage,
        None,
        Some(tmp.path().join("work")),
        Default::default(),
    )
    .await
    .context("running the PV job")?;

    // Independent computation of the expected counts.
    let mut expected = vec![0i64; keys as usize];
    for i in 0..events {
        expected[generator_app_id(SEED, keys, i) as usize] += 1;
    }
    let actual = final_counts(&outcome);
    let expected_keys = expected.iter().filter(|c| **c > 0).count();
    let mismatches = expected
        .iter()
        .enumerate()
        .filter(|(k, c)| **c > 0 && actual.get(&Key::Int(*k as i64)).copied() != Some(**c))
        .count();
    let exact = mismatches == 0 && actual.len() == expected_keys;
    let restored_from_checkpoint = !outcome.restored_from.is_empty();
    let secs = outcome.duration.as_secs_f64().max(1e-9);
    let summary = json!({
        "events": events,
        "rate_limit": rate,
        "events_per_s": (events as f64 / secs).round(),
        "checkpoints_completed": outcome.checkpoints_completed,
        "checkpoints_failed": outcome.checkpoints_failed,
        "restarts": outcome.restarts,
        "restored_from": outcome.restored_from,
        "restore_ms": outcome.restore_ms.first().copied(),
        "keys": actual.len(),
        "mismatched_keys": mismatches,
        "exact": exact,
    });
    println!("{summary}");
    if !restored_from_checkpoint {
        eprintln!("warning: the job did not restore from a checkpoint (no failure was injected)");
    }
    Ok(if exact && restored_from_checkpoint {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
