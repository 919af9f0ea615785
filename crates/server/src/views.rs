//! Response bodies, as typed structs. Field names follow Flink's REST API
//! where Flink has the same thing (`/jobs/:id/checkpoints`,
//! `/checkpoints/details/:id`, `/checkpoints/config`), so Flink users can
//! read them without a guide; `api/openapi.yaml` documents each.

use std::collections::BTreeMap;

use cutpoint_coordinator::stats::{
    CheckpointStats, CheckpointStatus, Counts, RestoredStats, StatsBook,
};
use cutpoint_coordinator::{JobState, SavepointInfo, TaskProgress};
use cutpoint_core::spec::CheckpointingMode;
use cutpoint_core::{CheckpointId, CheckpointMetadata, JobId, JobSpec, OperatorId, SubtaskState};
use cutpoint_storage::CheckpointListing;
use serde::Serialize;

use crate::app::{JobEntry, JobResult, RestoreRecord};

/// A view as the JSON body of a response.
pub fn json<T: Serialize>(view: T) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::to_value(view).expect("views serialize"))
}

/// A source partition's current offset.
#[derive(Debug, Serialize)]
pub struct PartitionOffset {
    pub partition: cutpoint_core::SubtaskIndex,
    pub offset: u64,
}

/// A job as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub job_id: JobId,
    pub state: JobState,
    pub records_in: u64,
    pub records_out: u64,
    pub current_offsets: Vec<PartitionOffset>,
    pub task_progress: Vec<TaskProgress>,
    pub start_timestamp: u64,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub source_parallelism: u32,
    pub tasks: Vec<String>,
    pub external_tasks: Vec<OperatorId>,
    pub attempt: u32,
    pub restarts: u32,
    pub checkpoints_completed: u64,
    pub checkpoints_failed: u64,
    pub last_restore: Option<RestoreRecord>,
    pub latest_completed_checkpoint: Option<CheckpointId>,
    pub restored_from: Vec<CheckpointId>,
    pub restore_fallbacks: Vec<String>,
    pub last_checkpoint_failure: Option<String>,
    pub failure_message: Option<String>,
    pub result: Option<JobResult>,
}

/// A job view with what a cancel answers besides.
#[derive(Debug, Serialize)]
pub struct CancelView {
    #[serde(flatten)]
    pub job: JobView,
    pub final_checkpoint: Option<CheckpointId>,
    pub savepoint: Option<SavepointInfo>,
}

/// A job view with what a restore was asked for.
#[derive(Debug, Serialize)]
pub struct RestoreView {
    #[serde(flatten)]
    pub job: JobView,
    /// A checkpoint id, or `"latest"` / `"savepoint:…"`.
    pub restoring_from: serde_json::Value,
}

pub fn job(entry: &JobEntry) -> JobView {
    let status = entry.control.status();
    let spec = entry.control.spec();
    let result = entry.result();
    let mut tasks: Vec<String> = (0..spec.source_parallelism())
        .map(|i| format!("source[{i}]"))
        .collect();
    for stage in spec.keyed_stages() {
        tasks.extend((0..stage.parallelism).map(|i| format!("{}[{i}]", stage.id)));
    }
    tasks.extend(spec.external_tasks.iter().map(|t| format!("{t}[0]")));
    let progress = entry.control.progress();
    let sum = |op: &str| -> u64 {
        progress
            .iter()
            .filter(|p| p.task.operator.as_str() == op)
            .map(|p| p.records)
            .sum()
    };
    JobView {
        job_id: spec.job_id.clone(),
        state: result.as_ref().map_or(status.state, |r| r.state),
        records_in: sum("source"),
        records_out: sum(spec.result_stage().id.as_str()),
        current_offsets: progress
            .iter()
            .filter_map(|p| {
                p.offset.map(|offset| PartitionOffset {
                    partition: p.task.subtask,
                    offset,
                })
            })
            .collect(),
        start_timestamp: entry.start_timestamp,
        parallelism: spec.parallelism,
        max_parallelism: spec.max_parallelism,
        source_parallelism: spec.source_parallelism(),
        tasks,
        external_tasks: spec.external_tasks.clone(),
        attempt: status.attempt,
        restarts: status.attempt,
        checkpoints_completed: status.checkpoints_completed,
        checkpoints_failed: status.checkpoints_failed,
        last_restore: entry.last_restore(),
        latest_completed_checkpoint: status.latest_completed,
        restored_from: status.restored_from,
        restore_fallbacks: status.restore_fallbacks,
        last_checkpoint_failure: status.last_checkpoint_failure,
        failure_message: status.last_failure,
        result,
        task_progress: progress,
    }
}

/// Min, max, average and percentiles of a statistic.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub min: u64,
    pub max: u64,
    pub avg: u64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
}

fn summary_of(values: &[u64]) -> Summary {
    let mut v = values.to_vec();
    v.sort_unstable();
    let pct = |p: f64| match v.len() {
        0 => 0.0,
        n => v[((p * n as f64).ceil() as usize).clamp(1, n) - 1] as f64,
    };
    Summary {
        min: v.first().copied().unwrap_or(0),
        max: v.last().copied().unwrap_or(0),
        avg: v.iter().sum::<u64>() / v.len().max(1) as u64,
        p50: pct(0.50),
        p90: pct(0.90),
        p95: pct(0.95),
        p99: pct(0.99),
        p999: pct(0.999),
    }
}

fn status_class(s: CheckpointStatus) -> &'static str {
    match s {
        CheckpointStatus::InProgress => "in_progress",
        CheckpointStatus::Completed => "completed",
        CheckpointStatus::Failed => "failed",
    }
}

/// One operator's share of a checkpoint.
#[derive(Debug, Serialize)]
pub struct OperatorView<'a> {
    pub num_acknowledged_subtasks: usize,
    pub state_size: u64,
    pub checkpointed_size: u64,
    pub latest_ack_timestamp: Option<u64>,
    pub subtasks: Vec<&'a SubtaskState>,
}

/// One checkpoint (Flink's checkpoint details).
#[derive(Debug, Serialize)]
pub struct CheckpointView<'a> {
    #[serde(rename = "className")]
    pub class_name: &'static str,
    pub id: CheckpointId,
    pub status: CheckpointStatus,
    pub is_savepoint: bool,
    pub checkpoint_type: &'static str,
    pub trigger_timestamp: u64,
    pub latest_ack_timestamp: Option<u64>,
    pub end_to_end_duration: u64,
    pub state_size: u64,
    pub checkpointed_size: u64,
    pub persisted_data: u64,
    pub unaligned: bool,
    pub alignment_duration: u64,
    pub sync_duration: u64,
    pub async_duration: u64,
    pub num_subtasks: usize,
    pub num_acknowledged_subtasks: usize,
    pub external_path: Option<&'a str>,
    pub restorable: bool,
    pub discarded: bool,
    pub failure_message: Option<&'a str>,
    pub failure_timestamp: Option<u64>,
    /// Per operator (with `tasks` requested).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<BTreeMap<String, OperatorView<'a>>>,
}

/// One checkpoint; with per-task detail when `with_tasks` is set.
pub fn checkpoint(c: &CheckpointStats, with_tasks: bool) -> CheckpointView<'_> {
    let tasks = with_tasks.then(|| {
        let mut by_op: BTreeMap<String, Vec<&SubtaskState>> = BTreeMap::new();
        for t in &c.tasks {
            by_op
                .entry(t.task.operator.to_string())
                .or_default()
                .push(t);
        }
        by_op
            .into_iter()
            .map(|(op, subtasks)| {
                let v = OperatorView {
                    num_acknowledged_subtasks: subtasks.len(),
                    state_size: subtasks.iter().map(|s| s.state_size).sum(),
                    checkpointed_size: subtasks.iter().map(|s| s.checkpointed_size).sum(),
                    latest_ack_timestamp: subtasks.iter().map(|s| s.ack_timestamp).max(),
                    subtasks,
                };
                (op, v)
            })
            .collect()
    });
    CheckpointView {
        class_name: status_class(c.status),
        id: c.id,
        status: c.status,
        is_savepoint: false,
        checkpoint_type: c.checkpoint_type.as_str(),
        trigger_timestamp: c.trigger_timestamp,
        latest_ack_timestamp: c.latest_ack_timestamp,
        end_to_end_duration: c.end_to_end_duration,
        state_size: c.state_size,
        checkpointed_size: c.checkpointed_size,
        persisted_data: c.persisted_data,
        unaligned: c.unaligned,
        alignment_duration: c.alignment_duration,
        sync_duration: c.sync_duration,
        async_duration: c.async_duration,
        num_subtasks: c.num_subtasks,
        num_acknowledged_subtasks: c.num_acknowledged_subtasks,
        external_path: c.external_path.as_deref(),
        restorable: c.restorable,
        discarded: c.status == CheckpointStatus::Completed && !c.restorable,
        failure_message: c.failure_message.as_deref(),
        failure_timestamp: c.failure_timestamp,
        tasks,
    }
}

/// The summaries of the overview.
#[derive(Debug, Serialize)]
pub struct Summaries {
    pub state_size: Summary,
    pub checkpointed_size: Summary,
    pub end_to_end_duration: Summary,
    pub alignment_duration: Summary,
    pub persisted_data: Summary,
}

/// `GET /v1/jobs/{id}/checkpoints`: Flink's overview shape.
#[derive(Debug, Serialize)]
pub struct OverviewView<'a> {
    pub counts: &'a Counts,
    pub summary: Summaries,
    pub latest: LatestView<'a>,
    pub history: Vec<CheckpointView<'a>>,
}

pub fn overview(stats: &StatsBook) -> OverviewView<'_> {
    let done: Vec<&CheckpointStats> = stats.completed_entries().collect();
    let field =
        |f: fn(&CheckpointStats) -> u64| summary_of(&done.iter().map(|c| f(c)).collect::<Vec<_>>());
    OverviewView {
        counts: &stats.counts,
        summary: Summaries {
            state_size: field(|c| c.state_size),
            checkpointed_size: field(|c| c.checkpointed_size),
            end_to_end_duration: field(|c| c.end_to_end_duration),
            alignment_duration: field(|c| c.alignment_duration),
            persisted_data: field(|c| c.persisted_data),
        },
        latest: latest(stats),
        history: stats
            .history
            .iter()
            .rev()
            .map(|c| checkpoint(c, false))
            .collect(),
    }
}

/// The latest completed, failed and restored checkpoints.
#[derive(Debug, Serialize)]
pub struct LatestView<'a> {
    pub completed: Option<CheckpointView<'a>>,
    pub failed: Option<CheckpointView<'a>>,
    pub restored: Option<&'a RestoredStats>,
    /// Savepoints are listed under `/v1/savepoints`.
    pub savepoint: Option<()>,
}

pub fn latest(stats: &StatsBook) -> LatestView<'_> {
    LatestView {
        completed: stats
            .latest_completed
            .as_ref()
            .map(|c| checkpoint(c, false)),
        failed: stats.latest_failed.as_ref().map(|c| checkpoint(c, false)),
        restored: stats.latest_restored.as_ref(),
        savepoint: None,
    }
}

/// `GET /v1/jobs/{id}/checkpoints/config`.
#[derive(Debug, Serialize)]
pub struct ConfigView {
    pub mode: CheckpointingMode,
    pub interval: Option<u64>,
    pub timeout: u64,
    pub min_pause: u64,
    pub max_concurrent: u32,
    pub tolerable_failed_checkpoints: u32,
    pub retention: u32,
    pub checkpoint_type: &'static str,
    pub orphan_sweep_interval: Option<u64>,
    pub unaligned_checkpoints: bool,
    pub aligned_checkpoint_timeout: Option<u64>,
    pub state_backend: &'static str,
    pub externalization: Externalization,
}

/// Checkpoints are always kept in storage (Flink's externalized checkpoints).
#[derive(Debug, Serialize)]
pub struct Externalization {
    pub enabled: bool,
    pub delete_on_cancellation: bool,
}

pub fn config(spec: &JobSpec) -> ConfigView {
    let c = &spec.checkpoint;
    ConfigView {
        mode: c.mode,
        interval: c.interval_ms,
        timeout: c.timeout_ms,
        min_pause: c.min_pause_ms,
        max_concurrent: c.max_concurrent,
        tolerable_failed_checkpoints: c.tolerable_failures,
        retention: c.retention,
        checkpoint_type: c.checkpoint_type.as_str(),
        orphan_sweep_interval: c.orphan_sweep_interval_ms,
        unaligned_checkpoints: c.mode == CheckpointingMode::Unaligned,
        aligned_checkpoint_timeout: c.aligned_checkpoint_timeout_ms,
        state_backend: "rocksdb-incremental",
        externalization: Externalization {
            enabled: true,
            delete_on_cancellation: false,
        },
    }
}

/// A completed checkpoint as its metadata in storage describes it.
#[derive(Debug, Serialize)]
pub struct StoredView<'a> {
    pub id: CheckpointId,
    pub checkpoint_id: CheckpointId,
    pub job_id: &'a JobId,
    pub status: &'static str,
    pub restorable: bool,
    pub checkpoint_type: &'static str,
    pub trigger_timestamp: u64,
    pub latest_ack_timestamp: u64,
    pub end_to_end_duration: u64,
    pub state_size: u64,
    pub checkpointed_size: u64,
    pub num_subtasks: usize,
    pub num_acknowledged_subtasks: usize,
    pub external_path: &'a str,
}

pub fn stored<'a>(meta: &'a CheckpointMetadata, external_path: &'a str) -> StoredView<'a> {
    StoredView {
        id: meta.checkpoint_id,
        checkpoint_id: meta.checkpoint_id,
        job_id: &meta.job_id,
        status: "COMPLETED",
        restorable: true,
        checkpoint_type: meta.checkpoint_type.as_str(),
        trigger_timestamp: meta.trigger_timestamp,
        latest_ack_timestamp: meta
            .subtasks
            .iter()
            .map(|s| s.ack_timestamp)
            .max()
            .unwrap_or(0),
        end_to_end_duration: meta
            .complete_timestamp
            .saturating_sub(meta.trigger_timestamp),
        state_size: meta.state_size(),
        checkpointed_size: meta.checkpointed_size(),
        num_subtasks: meta.subtasks.len(),
        num_acknowledged_subtasks: meta.subtasks.len(),
        external_path,
    }
}

/// A checkpoint folder whose metadata cannot be used, and why.
#[derive(Debug, Serialize)]
pub struct CorruptView<'a> {
    pub id: CheckpointId,
    pub checkpoint_id: CheckpointId,
    pub job_id: &'a JobId,
    pub status: &'static str,
    pub restorable: bool,
    pub external_path: &'a str,
    pub failure_message: String,
}

/// A row of a storage listing: restorable, or why not.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ListingView<'a> {
    Stored(StoredView<'a>),
    Corrupt(CorruptView<'a>),
}

pub fn listing<'a>(job: &'a JobId, l: &'a CheckpointListing) -> ListingView<'a> {
    match &l.metadata {
        Ok(m) => ListingView::Stored(stored(m, &l.external_path)),
        Err(e) => ListingView::Corrupt(CorruptView {
            id: l.checkpoint_id,
            checkpoint_id: l.checkpoint_id,
            job_id: job,
            status: "CORRUPT",
            restorable: false,
            external_path: &l.external_path,
            failure_message: e.to_string(),
        }),
    }
}
