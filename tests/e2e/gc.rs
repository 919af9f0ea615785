//! Garbage collection runs off the coordinator's loop (the GC task of
//! `cutpoint_coordinator::gc`): a slow store for deletes and sweeps never
//! delays a checkpoint, and a job cancelled while GC is stuck in a sweep
//! ends cleanly within the drain deadline.

use std::time::{Duration, Instant};

use cutpoint_coordinator::{spawn_job, JobConfig, JobError};
use cutpoint_storage::faults::{FaultAction, FaultOp, FaultRule};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_gc_never_delays_checkpoints_and_shutdown_is_clean() {
    const SLOW: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = faulty_storage(&dir.path().join("chk"));
    // Every delete, and every listing of the job folder (what sweeps and
    // the abandoned-folder cleanup list), takes 2 s.
    faults.add_rule(FaultRule {
        op: FaultOp::Delete,
        path_contains: "jobs/pv-slow-gc/".into(),
        action: FaultAction::Delay(SLOW),
        remaining: None,
    });
    faults.add_rule(FaultRule {
        op: FaultOp::List,
        path_contains: "jobs/pv-slow-gc$".into(),
        action: FaultAction::Delay(SLOW),
        remaining: None,
    });
    let spec = pv_spec(
        "pv-slow-gc",
        50_000_000,
        10_000,
        Some(1_000_000),
        r#","checkpoint":{"interval_ms":100,"retention":1,"orphan_sweep_interval_ms":200}"#,
    );
    let mut job = spawn_job(JobConfig {
        spec,
        storage,
        restore_from: None,
        local_dir: dir.path().join("work"),
        functions: Default::default(),
    });
    job.wait_for(|s| s.checkpoints_completed >= 8).await;
    let durations: Vec<u64> = job
        .stats()
        .completed_entries()
        .map(|c| c.end_to_end_duration)
        .collect();
    eprintln!("checkpoint durations under a slow GC: {durations:?} ms");
    assert!(durations.len() >= 8);
    assert!(
        durations.iter().all(|d| *d < SLOW.as_millis() as u64 / 2),
        "a checkpoint waited for GC: {durations:?}"
    );
    // Cancelled while GC is busy: the job ends within the drain deadline.
    let t = Instant::now();
    job.cancel();
    let end = job.join().await;
    assert!(matches!(end, Err(JobError::Cancelled)), "{end:?}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}
