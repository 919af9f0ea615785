//! Response bodies. Field names follow Flink's REST API where Flink has the
//! same thing (`/jobs/:id/checkpoints`, `/checkpoints/details/:id`,
//! `/checkpoints/config`), so Flink users can read them without a guide.

use std::collections::BTreeMap;

use cutpoint_coordinator::stats::{CheckpointStats, CheckpointStatus, StatsBook};
use cutpoint_core::{CheckpointConfig, CheckpointMetadata, JobSpec};
use cutpoint_storage::CheckpointListing;
use serde_json::{json, Value};

use crate::app::JobEntry;

/// A job as `GET /v1/jobs/{id}` shows it.
pub fn job(entry: &JobEntry) -> Value {
    let status = entry.control.status();
    let spec = entry.control.spec();
    let result = entry.result();
    let state = match &result {
        Some(r) => json!(r.state),
        None => json!(status.state),
    };
    let mut tasks: Vec<String> = (0..spec.source_parallelism())
        .map(|i| format!("source[{i}]"))
        .collect();
    tasks.extend((0..spec.parallelism).map(|i| format!("agg[{i}]")));
    tasks.extend(spec.external_tasks.iter().map(|t| format!("{t}[0]")));
    let progress = entry.control.progress();
    let sum = |op: &str| -> u64 {
        progress
            .iter()
            .filter(|p| p.task.operator.as_str() == op)
            .map(|p| p.records)
            .sum()
    };
    let offsets: Vec<Value> = progress
        .iter()
        .filter_map(|p| {
            p.offset
                .map(|o| json!({"partition": p.task.subtask, "offset": o}))
        })
        .collect();
    json!({
        "job_id": spec.job_id,
        "state": state,
        "records_in": sum("source"),
        "records_out": sum("agg"),
        "current_offsets": offsets,
        "task_progress": progress,
        "start_timestamp": entry.start_timestamp,
        "parallelism": spec.parallelism,
        "max_parallelism": spec.max_parallelism,
        "source_parallelism": spec.source_parallelism(),
        "tasks": tasks,
        "external_tasks": spec.external_tasks,
        "attempt": status.attempt,
        "restarts": status.attempt,
        "checkpoints_completed": status.checkpoints_completed,
        "checkpoints_failed": status.checkpoints_failed,
        "last_restore": entry.last_restore(),
        "latest_completed_checkpoint": status.latest_completed,
        "restored_from": status.restored_from,
        "restore_fallbacks": status.restore_fallbacks,
        "last_checkpoint_failure": status.last_checkpoint_failure,
        "failure_message": status.last_failure,
        "result": result,
    })
}

fn summary_of(values: &[u64]) -> Value {
    if values.is_empty() {
        return json!({"min": 0, "max": 0, "avg": 0, "p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0, "p999": 0.0});
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let pct = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1] as f64;
    json!({
        "min": v[0],
        "max": v[v.len() - 1],
        "avg": v.iter().sum::<u64>() / v.len() as u64,
        "p50": pct(0.50), "p90": pct(0.90), "p95": pct(0.95), "p99": pct(0.99), "p999": pct(0.999),
    })
}

fn status_class(s: CheckpointStatus) -> &'static str {
    match s {
        CheckpointStatus::InProgress => "in_progress",
        CheckpointStatus::Completed => "completed",
        CheckpointStatus::Failed => "failed",
    }
}

/// One checkpoint; with per-task detail when `tasks` is set.
pub fn checkpoint(c: &CheckpointStats, with_tasks: bool) -> Value {
    let mut v = json!({
        "className": status_class(c.status),
        "id": c.id,
        "status": c.status,
        "is_savepoint": false,
        "checkpoint_type": c.checkpoint_type.as_str(),
        "trigger_timestamp": c.trigger_timestamp,
        "latest_ack_timestamp": c.latest_ack_timestamp,
        "end_to_end_duration": c.end_to_end_duration,
        "state_size": c.state_size,
        "checkpointed_size": c.checkpointed_size,
        "persisted_data": c.persisted_data,
        "unaligned": c.unaligned,
        "alignment_duration": c.alignment_duration,
        "sync_duration": c.sync_duration,
        "async_duration": c.async_duration,
        "num_subtasks": c.num_subtasks,
        "num_acknowledged_subtasks": c.num_acknowledged_subtasks,
        "external_path": c.external_path,
        "restorable": c.restorable,
        "discarded": c.status == CheckpointStatus::Completed && !c.restorable,
        "failure_message": c.failure_message,
        "failure_timestamp": c.failure_timestamp,
    });
    if with_tasks {
        let mut by_op: BTreeMap<String, Vec<&cutpoint_core::SubtaskState>> = BTreeMap::new();
        for t in &c.tasks {
            by_op
                .entry(t.task.operator.to_string())
                .or_default()
                .push(t);
        }
        let tasks: BTreeMap<String, Value> = by_op
            .into_iter()
            .map(|(op, subs)| {
                let v = json!({
                    "num_acknowledged_subtasks": subs.len(),
                    "state_size": subs.iter().map(|s| s.state_size).sum::<u64>(),
                    "checkpointed_size": subs.iter().map(|s| s.checkpointed_size).sum::<u64>(),
                    "latest_ack_timestamp": subs.iter().map(|s| s.ack_timestamp).max(),
                    "subtasks": subs,
                });
                (op, v)
            })
            .collect();
        v["tasks"] = json!(tasks);
    }
    v
}

/// `GET /v1/jobs/{id}/checkpoints`: Flink's overview shape.
pub fn overview(stats: &StatsBook) -> Value {
    let done: Vec<&CheckpointStats> = stats.completed_entries().collect();
    let field =
        |f: fn(&CheckpointStats) -> u64| summary_of(&done.iter().map(|c| f(c)).collect::<Vec<_>>());
    json!({
        "counts": stats.counts,
        "summary": {
            "state_size": field(|c| c.state_size),
            "checkpointed_size": field(|c| c.checkpointed_size),
            "end_to_end_duration": field(|c| c.end_to_end_duration),
            "alignment_duration": field(|c| c.alignment_duration),
            "persisted_data": field(|c| c.persisted_data),
        },
        "latest": latest(stats),
        "history": stats.history.iter().rev().map(|c| checkpoint(c, false)).collect::<Vec<_>>(),
    })
}

pub fn latest(stats: &StatsBook) -> Value {
    json!({
        "completed": stats.latest_completed.as_ref().map(|c| checkpoint(c, false)),
        "failed": stats.latest_failed.as_ref().map(|c| checkpoint(c, false)),
        "restored": stats.latest_restored,
        "savepoint": null,
    })
}

/// `GET /v1/jobs/{id}/checkpoints/config`.
pub fn config(spec: &JobSpec) -> Value {
    let c: &CheckpointConfig = &spec.checkpoint;
    json!({
        "mode": c.mode,
        "interval": c.interval_ms,
        "timeout": c.timeout_ms,
        "min_pause": c.min_pause_ms,
        "max_concurrent": c.max_concurrent,
        "tolerable_failed_checkpoints": c.tolerable_failures,
        "retention": c.retention,
        "checkpoint_type": c.checkpoint_type.as_str(),
        "orphan_sweep_interval": c.orphan_sweep_interval_ms,
        "unaligned_checkpoints": c.mode == cutpoint_core::spec::CheckpointingMode::Unaligned,
        "aligned_checkpoint_timeout": c.aligned_checkpoint_timeout_ms,
        "state_backend": "rocksdb-incremental",
        "externalization": {"enabled": true, "delete_on_cancellation": false},
    })
}

/// A completed checkpoint as its metadata in storage describes it.
pub fn stored(meta: &CheckpointMetadata, external_path: &str) -> Value {
    json!({
        "id": meta.checkpoint_id,
        "checkpoint_id": meta.checkpoint_id,
        "job_id": meta.job_id,
        "status": "COMPLETED",
        "restorable": true,
        "checkpoint_type": meta.checkpoint_type.as_str(),
        "trigger_timestamp": meta.trigger_timestamp,
        "latest_ack_timestamp": meta.subtasks.iter().map(|s| s.ack_timestamp).max().unwrap_or(0),
        "end_to_end_duration": meta.complete_timestamp.saturating_sub(meta.trigger_timestamp),
        "state_size": meta.state_size(),
        "checkpointed_size": meta.checkpointed_size(),
        "num_subtasks": meta.subtasks.len(),
        "num_acknowledged_subtasks": meta.subtasks.len(),
        "external_path": external_path,
    })
}

/// A row of a storage listing: restorable, or why not.
pub fn listing(job: &cutpoint_core::JobId, l: &CheckpointListing) -> Value {
    match &l.metadata {
        Ok(m) => stored(m, &l.external_path),
        Err(e) => json!({
            "id": l.checkpoint_id,
            "checkpoint_id": l.checkpoint_id,
            "job_id": job,
            "status": "CORRUPT",
            "restorable": false,
            "external_path": l.external_path,
            "failure_message": e.to_string(),
        }),
    }
}
