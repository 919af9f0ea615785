//! `cutpoint bench pv`: the PV workload of the Flink reference runs, through
//! the real job path, one JSON line per variant.
//!
//! Workload: generator with 2 partitions (event `i`: `app_id =
//! splitmix64(42 + i·0x9E3779B97F4A7C15) mod K`), `key_by(app_id)`, keyed
//! count, discard sink, parallelism 2, checkpoint every 1 s, retention 1;
//! K = 1,000,000 and N = 20,000,000 (`--quick`: 100,000 and 2,000,000).
//! Every key's final count is checked against a direct computation.
//! Each variant runs in its own process so peak RSS is its own.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cutpoint_coordinator::stats::CheckpointStats;
use cutpoint_coordinator::{spawn_job, JobConfig};
use cutpoint_core::spec::{
    AggregateSpec, CheckpointingMode, InjectFailure, RestartConfig, SinkSpec, SourceSpec,
};
use cutpoint_core::{CheckpointConfig, CheckpointType, JobId, JobSpec, Key};
use cutpoint_runtime::source::generator_app_id;
use serde_json::json;

use crate::jobs::{final_counts, open_storage};

/// The benchmark variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// No checkpointing.
    None,
    /// Aligned exactly-once, incremental (the headline).
    Aligned,
    /// No alignment (at-least-once), incremental.
    AtLeastOnce,
    /// Aligned, full snapshots every time.
    Full,
    /// Aligned incremental to S3 (needs AWS_ENDPOINT_URL and S3_BUCKET).
    S3,
    /// Aligned incremental with a task failure at N/2; reports recovery.
    Recovery,
    /// Unaligned exactly-once, incremental.
    Unaligned,
    /// Aligned incremental with a keyed-state memory budget of ~10% of the
    /// state: evicted entries are read through from RocksDB.
    Budget,
    /// Back-pressure (aggregates need 4 ms per batch, sources unpaced;
    /// 1M events, 10k keys, 250 ms interval), aligned: checkpoints wait for
    /// the full queues.
    BackpressureAligned,
    /// The same, unaligned: barriers overtake the queues.
    BackpressureUnaligned,
}

impl Variant {
    const ALL: [Variant; 10] = [
        Variant::None,
        Variant::Aligned,
        Variant::AtLeastOnce,
        Variant::Unaligned,
        Variant::Full,
        Variant::Budget,
        Variant::Recovery,
        Variant::BackpressureAligned,
        Variant::BackpressureUnaligned,
        Variant::S3,
    ];

    fn backpressured(self) -> bool {
        matches!(
            self,
            Variant::BackpressureAligned | Variant::BackpressureUnaligned
        )
    }

    fn name(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Aligned => "aligned",
            Variant::AtLeastOnce => "at-least-once",
            Variant::Full => "full",
            Variant::S3 => "s3",
            Variant::Recovery => "recovery",
            Variant::Unaligned => "unaligned",
            Variant::Budget => "budget",
            Variant::BackpressureAligned => "backpressure-aligned",
            Variant::BackpressureUnaligned => "backpressure-unaligned",
        }
    }
}

/// Runs one variant here, or every variant in child processes.
pub async fn run(variant: Option<Variant>, quick: bool, interval_ms: u64) -> Result<ExitCode> {
    let Some(variant) = variant else {
        let exe = std::env::current_exe()?;
        let mut ok = true;
        for v in Variant::ALL {
            if v == Variant::S3 && std::env::var("AWS_ENDPOINT_URL").is_err() {
                eprintln!("bench: skipping s3 (AWS_ENDPOINT_URL not set)");
                continue;
            }
            let mut cmd = std::process::Command::new(&exe);
            cmd.args([
                "bench",
                "pv",
                "--variant",
                v.name(),
                "--interval-ms",
                &interval_ms.to_string(),
            ]);
            if quick {
                cmd.arg("--quick");
            }
            ok &= cmd.status()?.success();
        }
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        });
    };
    let (keys, events) = match (variant.backpressured(), quick) {
        (true, _) => (10_000, 1_000_000),
        (false, true) => (100_000, 2_000_000),
        (false, false) => (1_000_000, 20_000_000),
    };
    let interval_ms = if variant.backpressured() {
        250
    } else {
        interval_ms
    };
    let tmp = tempfile::Builder::new()
        .prefix("cutpoint-bench-")
        .tempdir()?;
    let location = match variant {
        Variant::S3 => {
            let bucket = std::env::var("S3_BUCKET").context("S3_BUCKET is not set")?;
            format!("s3://{bucket}/bench-{}", std::process::id())
        }
        _ => tmp.path().join("chk").display().to_string(),
    };
    let spec = JobSpec {
        job_id: JobId::new(format!("bench-{}", variant.name()))?,
        parallelism: 2,
        max_parallelism: 128,
        source: SourceSpec::Generator {
            partitions: 2,
            events,
            keys,
            seed: 42,
            users: 1000,
            rate_per_s: None,
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
            interval_ms: (variant != Variant::None).then_some(interval_ms),
            retention: 1,
            mode: match variant {
                Variant::AtLeastOnce => CheckpointingMode::AtLeastOnce,
                Variant::Unaligned | Variant::BackpressureUnaligned => CheckpointingMode::Unaligned,
                _ => CheckpointingMode::ExactlyOnce,
            },
            checkpoint_type: if variant == Variant::Full {
                CheckpointType::Full
            } else {
                CheckpointType::Incremental
            },
            ..Default::default()
        },
        restart: RestartConfig {
            max_attempts: 1,
            delay_ms: 0,
            ..Default::default()
        },
        external_tasks: Vec::new(),
        inject_barrier_delay: None,
        inject_processing_delay_us: variant.backpressured().then_some(4000),
        // ~10% of the state's estimated memory (160 B per entry).
        state: cutpoint_core::spec::StateConfig {
            memory_budget_mb: (variant == Variant::Budget).then(|| {
                (keys * cutpoint_core::spec::StateConfig::BYTES_PER_ENTRY / 10 / (1 << 20)).max(1)
            }),
        },
        inject_failure: (variant == Variant::Recovery).then_some(InjectFailure {
            operator: None,
            subtask: 0,
            after_records: events / 4,
            after_completed_checkpoint: true,
        }),
    };
    let job_id = spec.job_id.clone();
    let storage = open_storage(&location)?;
    let handle = spawn_job(JobConfig {
        spec,
        storage: storage.clone(),
        restore_from: None,
        local_dir: tmp.path().join("work"),
        functions: Default::default(),
    });
    let control = handle.control();
    let progress = crate::progress::follow_job(control.clone());
    let outcome = handle.join().await;
    progress.abort();
    let outcome = outcome?;
    let stats = control.stats();

    let mut expected = vec![0i64; keys as usize];
    for i in 0..events {
        expected[generator_app_id(42, keys, i) as usize] += 1;
    }
    let actual = final_counts(&outcome);
    // At-least-once may count records twice after a restore; without a
    // failure it is exact as well.
    let exact = actual.len() == expected.iter().filter(|c| **c > 0).count()
        && expected
            .iter()
            .enumerate()
            .all(|(k, c)| *c == 0 || actual.get(&Key::Int(k as i64)) == Some(c));
    if variant == Variant::Recovery && outcome.restored_from.is_empty() {
        bail!("the recovery variant did not restore from a checkpoint");
    }
    // The job's own peak, before the restore below loads a second copy.
    let peak_rss = peak_rss_mb();
    let fresh = fresh_restore(&storage, &job_id, tmp.path()).await?;

    let done: Vec<&CheckpointStats> = stats.completed_entries().collect();
    let pct = |f: fn(&CheckpointStats) -> u64, p: f64| -> Option<u64> {
        let mut v: Vec<u64> = done.iter().map(|c| f(c)).collect();
        v.sort_unstable();
        (!v.is_empty()).then(|| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1])
    };
    let secs = outcome.duration.as_secs_f64();
    let line = json!({
        "variant": variant.name(),
        "interval_ms": interval_ms,
        "keys": keys,
        "events": events,
        "events_per_s": (events as f64 / secs).round(),
        "duration_ms": outcome.duration.as_millis() as u64,
        "checkpoints_completed": outcome.checkpoints_completed,
        "checkpoints_failed": outcome.checkpoints_failed,
        "e2e_duration_p50_ms": pct(|c| c.end_to_end_duration, 0.5),
        "e2e_duration_p99_ms": pct(|c| c.end_to_end_duration, 0.99),
        "e2e_duration_max_ms": pct(|c| c.end_to_end_duration, 1.0),
        "sync_p50_ms": pct(|c| c.sync_duration, 0.5),
        "sync_max_ms": pct(|c| c.sync_duration, 1.0),
        "alignment_p50_ms": pct(|c| c.alignment_duration, 0.5),
        "checkpointed_size_p50": pct(|c| c.checkpointed_size, 0.5),
        "state_size_last": done.last().map(|c| c.state_size),
        "restore_ms": outcome.restore_ms.first(),
        "fresh_restore_ms": fresh.as_ref().map(|f| f.ms),
        "fresh_restore_mb": fresh.as_ref().map(|f| (f.bytes as f64 / 1e6 * 10.0).round() / 10.0),
        "fresh_restore_mb_per_s": fresh.as_ref().map(|f| (f.bytes as f64 / 1e6 / (f.ms.max(1) as f64 / 1e3)).round()),
        "fresh_restore_keys": fresh.as_ref().map(|f| f.keys),
        "peak_rss_mb": peak_rss,
        "exact": exact,
    });
    println!("{line}");
    Ok(if exact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// A restore of the last retained checkpoint into fresh directories.
struct FreshRestore {
    ms: u64,
    bytes: u64,
    keys: usize,
}

/// Restores every keyed subtask of the newest retained checkpoint from
/// storage into empty directories, in parallel as a job's restore does:
/// download, verify, open RocksDB, load the table. `None` without one.
async fn fresh_restore(
    storage: &cutpoint_storage::CheckpointStorage,
    job: &JobId,
    dir: &std::path::Path,
) -> Result<Option<FreshRestore>> {
    let Some(meta) = storage
        .list_checkpoints(job)
        .await?
        .into_iter()
        .find_map(|l| l.metadata.ok())
    else {
        return Ok(None);
    };
    let aggs: Vec<cutpoint_core::SubtaskState> = meta
        .subtasks
        .iter()
        .filter(|s| s.key_group_range.is_some())
        .cloned()
        .collect();
    let bytes = aggs.iter().flat_map(|s| &s.files).map(|f| f.size).sum();
    let t0 = std::time::Instant::now();
    let mut tasks = Vec::new();
    for s in &aggs {
        let (storage, job, aggs) = (storage.clone(), job.clone(), aggs.clone());
        let range = s.key_group_range.expect("keyed");
        let base = dir.join(format!("fresh-restore-{}", s.task.subtask.0));
        let rt = tokio::runtime::Handle::current();
        tasks.push(tokio::task::spawn_blocking(move || {
            let dirs = cutpoint_state::snapshot::LocalDirs {
                db: base.join("db"),
                scratch: base.join("scratch"),
            };
            cutpoint_state::snapshot::restore(
                &rt,
                &storage,
                &job,
                &aggs,
                range,
                &dirs,
                meta.max_parallelism,
                cutpoint_state::snapshot::TableLoad::Eager,
            )
            .map(|r| r.table.len())
        }));
    }
    let mut keys = 0;
    for t in tasks {
        keys += t.await??;
    }
    Ok(Some(FreshRestore {
        ms: t0.elapsed().as_millis() as u64,
        bytes,
        keys,
    }))
}

/// Peak resident set size of this process (Linux `VmHWM`), in MiB.
fn peak_rss_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}
