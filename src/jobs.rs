//! What the subcommands share: opening storage, running a job to its end,
//! its final counts. (`cli` dispatches to `bench`, `chaos` and `demo`; all
//! of them use this module, which uses none of them.)

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use cutpoint_coordinator::{spawn_job, JobConfig, JobOutcome, RestoreFrom};
use cutpoint_core::{JobSpec, Key, Value};
use cutpoint_storage::faults::{FaultRule, FaultyStore};
use cutpoint_storage::{CheckpointStorage, StorageLocation};

/// `dir`, or a temporary directory (removed when the guard drops).
pub fn dir_or_temp(
    dir: Option<PathBuf>,
    prefix: &str,
) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    Ok(match dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new().prefix(prefix).tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    })
}

/// Opens checkpoint storage. For testing only, `CUTPOINT_FAULTS` wraps the
/// store in a fault injector (see `FaultRule::parse_list`).
pub fn open_storage(location: &str) -> Result<CheckpointStorage> {
    let mut loc = StorageLocation::parse(location)?;
    if let Ok(rules) = std::env::var("CUTPOINT_FAULTS") {
        let rules = FaultRule::parse_list(&rules).map_err(anyhow::Error::msg)?;
        tracing::warn!(?rules, "CUTPOINT_FAULTS: injecting storage faults");
        let faulty = FaultyStore::new(loc.store.clone());
        for r in rules {
            faulty.add_rule(r);
        }
        loc = loc.with_store(faulty);
    }
    Ok(CheckpointStorage::new(loc))
}

/// Runs a job to its end with a temporary work dir unless one is given.
pub async fn run_job(
    spec: JobSpec,
    storage: CheckpointStorage,
    restore_from: Option<RestoreFrom>,
    work_dir: Option<PathBuf>,
    functions: cutpoint_operator::Functions,
) -> Result<JobOutcome> {
    let (local_dir, _tmp) = dir_or_temp(work_dir, "cutpoint-work-")?;
    let handle = spawn_job(JobConfig {
        spec,
        storage,
        restore_from,
        local_dir,
        functions,
    });
    let cancel = handle.canceller();
    let progress = crate::progress::follow_job(handle.control());
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("interrupted: stopping the job");
            cancel.cancel();
        }
    });
    let outcome = handle.join().await;
    ctrl_c.abort();
    progress.abort();
    Ok(outcome?)
}

/// The integer results of the final state (a key whose result is not an
/// integer is left out: a comparison with integers finds it missing).
pub fn final_counts(outcome: &JobOutcome) -> BTreeMap<Key, i64> {
    let int = |(k, v): (&Key, Value)| v.as_int().map(|v| (k.clone(), v));
    outcome
        .final_state
        .iter()
        .flat_map(|t| t.iter().filter_map(int))
        .collect()
}
