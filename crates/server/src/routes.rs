//! Handlers of the v1 API. Every error is an [`ApiError`]; every id is
//! validated by an extractor before anything touches storage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cutpoint_coordinator::stats::CheckpointStatus;
use cutpoint_coordinator::{recovery, restore, RestoreFrom};
use cutpoint_core::layout::StatePath;
use cutpoint_core::{
    now_millis, CheckpointId, CheckpointType, JobId, JobSpec, OperatorId, StateFile, SubtaskIndex,
    SubtaskState, TaskId,
};
use cutpoint_storage::{JobPaths, StateScope};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, ErrorKind};
use crate::extract::{non_null, ApiJson, CheckpointPath, JobPath, OptionalJson};
use crate::{views, AppState};

type S = State<Arc<AppState>>;
type ApiResult<T> = Result<T, ApiError>;

fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> ApiResult<T> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::invalid(e.body_text()))
}

// ---- ops ------------------------------------------------------------------

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(st): S) -> Response {
    match st.storage.list_jobs().await {
        Ok(_) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => ApiError::new(ErrorKind::Unavailable, format!("checkpoint storage: {e}"))
            .into_response(),
    }
}

pub async fn metrics(State(st): S) -> Response {
    let body = st.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

pub const OPENAPI_YAML: &str = include_str!("../../../api/openapi.yaml");

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML).into_response()
}

/// The dashboard: one self-contained page (no external assets) that uses
/// only the public API, with the token the user types in.
pub async fn dashboard() -> Response {
    const PAGE: &str = include_str!("../assets/dashboard.html");
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint (see /v1/openapi.yaml)")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

// ---- jobs -----------------------------------------------------------------

/// A restore point as JSON: a checkpoint id (an integer), `"latest"` or,
/// where `savepoints` is set, `"savepoint:ID"` / `"savepoint:PATH"`.
fn parse_restore(field: &str, v: &Value, savepoints: bool) -> ApiResult<RestoreFrom> {
    let expected = if savepoints {
        "a checkpoint id, \"latest\" or \"savepoint:ID\""
    } else {
        "a checkpoint id or \"latest\""
    };
    let wrong = || ApiError::invalid(format!("{field} must be {expected}, got {v}"));
    match v {
        Value::String(s) if s == "latest" || (savepoints && s.starts_with("savepoint:")) => s
            .parse()
            .map_err(|e| ApiError::invalid(format!("{field}: {e}"))),
        Value::Number(n) => n
            .as_u64()
            .map(|n| RestoreFrom::Checkpoint(CheckpointId(n)))
            .ok_or_else(wrong),
        _ => Err(wrong()),
    }
}

/// Job spec fields that exist for tests only; refused unless the server runs
/// with `--enable-test-knobs` (`inject_processing_delay_us` alone could make
/// a job that never stops).
pub const TEST_KNOBS: [&str; 3] = [
    "inject_failure",
    "inject_barrier_delay",
    "inject_processing_delay_us",
];

/// `POST /v1/jobs`: the body is a job spec, plus optional `restore_from`.
pub async fn submit_job(State(st): S, ApiJson(body): ApiJson<Value>) -> ApiResult<Response> {
    let Value::Object(mut obj) = body else {
        return Err(ApiError::invalid(
            "the body must be a JSON object (a job spec)",
        ));
    };
    if !st.test_knobs {
        if let Some(knob) = TEST_KNOBS.iter().find(|k| obj.contains_key(**k)) {
            return Err(ApiError::invalid(format!(
                "{knob} is a test knob, refused by this server (start it with --enable-test-knobs to allow it)"
            )));
        }
    }
    let restore = obj
        .remove("restore_from")
        .map(|v| parse_restore("restore_from", &v, true))
        .transpose()?;
    let spec: JobSpec = serde_json::from_value(Value::Object(obj))
        .map_err(|e| ApiError::invalid(format!("invalid job spec: {e}")))?;
    spec.validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let id = spec.job_id.clone();
    if st.restoring(&id) {
        return Err(ApiError::conflict(format!(
            "a restore of job {id} is in progress"
        )));
    }
    let entry = st.start_job(spec, restore).await?;
    let mut resp = (StatusCode::CREATED, views::json(views::job(&entry))).into_response();
    if let Ok(v) = format!("/v1/jobs/{id}").parse() {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

pub async fn list_jobs(State(st): S) -> Json<Value> {
    let jobs: Vec<views::JobView> = st.jobs().iter().map(|(_, e)| views::job(e)).collect();
    Json(json!({ "jobs": jobs }))
}

fn known(st: &AppState, job: &JobId) -> ApiResult<crate::app::JobEntry> {
    st.job(job).ok_or_else(|| {
        ApiError::not_found(format!(
            "job {job} is not known to this server (stored checkpoints: /v1/storage/jobs/{job}/checkpoints)"
        ))
    })
}

pub async fn get_job(State(st): S, JobPath(job): JobPath) -> ApiResult<Json<Value>> {
    Ok(views::json(views::job(&known(&st, &job)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Take a final checkpoint first; if it fails the job keeps running.
    #[serde(default)]
    checkpoint: bool,
    /// Take a savepoint first ("stop with savepoint"); if it fails the job
    /// keeps running.
    #[serde(default)]
    savepoint: bool,
    #[serde(rename = "type", default, deserialize_with = "non_null")]
    checkpoint_type: Option<CheckpointType>,
}

pub async fn cancel_job(
    State(st): S,
    JobPath(job): JobPath,
    OptionalJson(req): OptionalJson<CancelRequest>,
) -> ApiResult<Json<Value>> {
    let mut final_checkpoint = None;
    let mut savepoint = None;
    if req.as_ref().is_some_and(|r| r.savepoint) {
        let entry = st.running(&job)?;
        let sp = entry.control.trigger_savepoint().await.map_err(|e| {
            let e = ApiError::from(e);
            ApiError::new(e.kind, format!("{}; the job keeps running", e.detail))
        })?;
        savepoint = Some(sp);
    }
    if let Some(req) = req.filter(|r| r.checkpoint) {
        let entry = st.running(&job)?;
        let spec = entry.control.spec();
        let t = req
            .checkpoint_type
            .unwrap_or(spec.checkpoint.checkpoint_type);
        let deadline = Instant::now()
            + Duration::from_millis(spec.checkpoint.timeout_ms)
            + Duration::from_secs(1);
        let id = entry.control.trigger_checkpoint(t).await?;
        loop {
            match entry
                .control
                .stats()
                .get(id)
                .map(|c| (c.status, c.failure_message.clone()))
            {
                Some((CheckpointStatus::Completed, _)) => break,
                Some((CheckpointStatus::Failed, why)) => {
                    return Err(ApiError::conflict(format!(
                        "final checkpoint {id} failed ({}); the job keeps running",
                        why.unwrap_or_default()
                    )))
                }
                _ if entry.result().is_some() => {
                    return Err(ApiError::conflict(format!(
                        "job {job} ended before its final checkpoint {id} completed"
                    )))
                }
                _ if Instant::now() > deadline => {
                    return Err(ApiError::conflict(format!(
                        "final checkpoint {id} did not complete; the job keeps running"
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        final_checkpoint = Some(id);
    }
    st.stop_job(&job).await?;
    Ok(views::json(views::CancelView {
        job: views::job(&known(&st, &job)?),
        final_checkpoint,
        savepoint,
    }))
}

/// `POST /v1/jobs/{id}/savepoints`: take a savepoint (full, self-contained,
/// never deleted by retention); answers when it is stored.
pub async fn trigger_savepoint(State(st): S, JobPath(job): JobPath) -> ApiResult<Response> {
    let entry = st.running(&job)?;
    let sp = entry.control.trigger_savepoint().await?;
    Ok((StatusCode::CREATED, Json(json!(sp))).into_response())
}

/// `GET /v1/savepoints`: every savepoint in storage.
pub async fn list_savepoints(State(st): S) -> ApiResult<Json<Value>> {
    let rows: Vec<Value> = st
        .storage
        .list_savepoints()
        .await?
        .into_iter()
        .map(|(id, meta)| match meta {
            Ok(m) => json!({
                "savepoint_id": id,
                "job_id": m.job_id,
                "checkpoint_id": m.checkpoint_id,
                "trigger_timestamp": m.trigger_timestamp,
                "state_size": m.state_size(),
                "external_path": st.storage.savepoint_path(&id),
                "restorable": true,
            }),
            Err(e) => json!({
                "savepoint_id": id,
                "external_path": st.storage.savepoint_path(&id),
                "restorable": false,
                "failure_message": e.to_string(),
            }),
        })
        .collect();
    Ok(Json(json!({ "savepoints": rows })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    #[serde(default, deserialize_with = "non_null")]
    checkpoint_id: Option<Value>,
    #[serde(default, deserialize_with = "non_null")]
    savepoint_id: Option<String>,
}

/// `POST /v1/jobs/{id}/restore`: (re)start the job from a checkpoint, with
/// the spec of the running job or, on a fresh server, from storage.
pub async fn restore_job(
    State(st): S,
    JobPath(job): JobPath,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> ApiResult<Response> {
    let from = match (&req.checkpoint_id, &req.savepoint_id) {
        (Some(c), None) => parse_restore("checkpoint_id", c, false)?,
        // An id, or the savepoint's path (its `external_path`).
        (None, Some(sp)) if sp.contains('/') => RestoreFrom::SavepointPath(sp.clone()),
        (None, Some(sp)) => RestoreFrom::Savepoint(
            cutpoint_core::SavepointId::new(sp.as_str())
                .map_err(|e| ApiError::invalid(e.to_string()))?,
        ),
        _ => {
            return Err(ApiError::invalid(
                "give exactly one of checkpoint_id and savepoint_id",
            ))
        }
    };
    let entry = st.restore_job(job, from.clone()).await?;
    let body = views::RestoreView {
        job: views::job(&entry),
        restoring_from: match from {
            RestoreFrom::Checkpoint(id) => json!(id),
            other => json!(other.to_string()),
        },
    };
    Ok((StatusCode::ACCEPTED, views::json(body)).into_response())
}

// ---- checkpoints ------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    #[serde(rename = "type", default, deserialize_with = "non_null")]
    checkpoint_type: Option<CheckpointType>,
}

pub async fn trigger_checkpoint(
    State(st): S,
    JobPath(job): JobPath,
    OptionalJson(req): OptionalJson<TriggerRequest>,
) -> ApiResult<Response> {
    let entry = st.running(&job)?;
    let t = req
        .and_then(|r| r.checkpoint_type)
        .unwrap_or(entry.control.spec().checkpoint.checkpoint_type);
    let id = entry.control.trigger_checkpoint(t).await?;
    let location = format!("/v1/jobs/{job}/checkpoints/{id}");
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(json!({"checkpoint_id": id, "checkpoint_type": t.as_str(), "location": location})),
    )
        .into_response();
    if let Ok(v) = location.parse() {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

pub async fn list_checkpoints(State(st): S, JobPath(job): JobPath) -> ApiResult<Json<Value>> {
    Ok(views::json(views::overview(
        &known(&st, &job)?.control.stats(),
    )))
}

pub async fn checkpoint_config(State(st): S, JobPath(job): JobPath) -> ApiResult<Json<Value>> {
    let spec = st.job_spec(&job).await?;
    Ok(views::json(views::config(&spec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatestQuery {
    status: Option<String>,
}

/// `GET .../checkpoints/latest?status=completed|failed`: cheap, no history.
pub async fn latest_checkpoint(
    State(st): S,
    JobPath(job): JobPath,
    q: Result<Query<LatestQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let status = query(q)?.status.unwrap_or_else(|| "completed".into());
    if status != "completed" && status != "failed" {
        return Err(ApiError::invalid("status must be completed or failed"));
    }
    if let Some(e) = st.job(&job) {
        let stats = e.control.stats();
        let c = if status == "completed" {
            stats.latest_completed
        } else {
            stats.latest_failed
        };
        return c
            .as_ref()
            .map(|c| views::json(views::checkpoint(c, false)))
            .ok_or_else(|| {
                ApiError::not_found(format!("job {job} has no {status} checkpoint yet"))
            });
    }
    if status == "failed" {
        return Err(ApiError::not_found(format!(
            "job {job} is not running here; storage keeps no failed checkpoints"
        )));
    }
    // The newest restorable checkpoint, by the recovery policy's one rule.
    let mut listing = st.storage.list_checkpoints(&job).await?;
    let candidates: Vec<_> = listing.iter().map(restore::candidate).collect();
    let choice = recovery::newest_restorable(&candidates, &Default::default());
    let id = match choice {
        recovery::Choice::Restore { id, .. } => id,
        recovery::Choice::Nothing { .. } => {
            return Err(ApiError::not_found(format!(
                "no completed checkpoint of job {job} in storage"
            )))
        }
        recovery::Choice::Unreachable { id, .. } => {
            let at = listing.iter().position(|l| l.checkpoint_id == id);
            let l = listing.swap_remove(at.expect("chosen from the listing"));
            return Err(l.metadata.expect_err("unreachable").into());
        }
    };
    let newest = listing
        .iter()
        .find(|l| l.checkpoint_id == id)
        .expect("chosen from the listing");
    Ok(views::json(views::listing(&job, newest)))
}

pub async fn get_checkpoint(
    State(st): S,
    CheckpointPath(job, id): CheckpointPath,
) -> ApiResult<Json<Value>> {
    if let Some(e) = st.job(&job) {
        if let Some(c) = e.control.stats().get(id) {
            return Ok(views::json(views::checkpoint(c, true)));
        }
    }
    match st.storage.read_metadata(&job, id).await {
        Ok(m) => Ok(views::json(views::stored(
            &m,
            &st.storage.external_path(&job, id),
        ))),
        Err(cutpoint_storage::StorageError::MetadataMissing { .. }) => Err(ApiError::not_found(
            format!("checkpoint {id} of job {job} not found"),
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

/// Deletes a retained checkpoint and the shared files only it referenced.
pub async fn delete_checkpoint(
    State(st): S,
    CheckpointPath(job, id): CheckpointPath,
    q: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<StatusCode> {
    let force = query(q)?.force;
    if let Ok(e) = st.running(&job) {
        e.control.delete_checkpoint(id, force).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    // The job does not run here: work on storage alone, while no restore
    // or start of it can begin here.
    let _op = st.begin_operation(&job)?;
    let _claim = st.claim_start(&job)?;
    cutpoint_coordinator::gc::delete_from_storage(&st.storage, &job, id, force).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- external tasks -----------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingQuery {
    after: Option<u64>,
    wait_ms: Option<u64>,
    task: Option<String>,
}

/// Longest a long-poll waits.
pub const MAX_WAIT_MS: u64 = 20_000;

/// The external task `name` of the running job: 400 if `name` is not a task
/// name, 409 if the job (as it runs now) has no such external task.
fn external_task(spec: &JobSpec, name: &str) -> ApiResult<OperatorId> {
    let task = OperatorId::new(name).map_err(|e| ApiError::invalid(e.to_string()))?;
    if spec.external_tasks.contains(&task) {
        return Ok(task);
    }
    Err(ApiError::conflict(format!(
        "{name:?} is not an external task of job {} (its external tasks: {:?})",
        spec.job_id, spec.external_tasks
    )))
}

/// `GET .../checkpoints/pending?after=N&wait_ms=M&task=T`: checkpoints in
/// progress newer than `after`, waiting up to `wait_ms` for one to appear.
pub async fn pending_checkpoints(
    State(st): S,
    JobPath(job): JobPath,
    q: Result<Query<PendingQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query(q)?;
    let entry = st.running(&job)?;
    let task = q
        .task
        .as_deref()
        .map(|t| external_task(entry.control.spec(), t))
        .transpose()?;
    let after = q.after.unwrap_or(0);
    let deadline = Instant::now() + Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    loop {
        let stats = entry.control.stats();
        let pending: Vec<Value> = stats
            .history
            .iter()
            .filter(|c| c.status == CheckpointStatus::InProgress && c.id.0 > after)
            .map(|c| {
                let mut v = json!({
                    "checkpoint_id": c.id,
                    "checkpoint_type": c.checkpoint_type.as_str(),
                    "trigger_timestamp": c.trigger_timestamp,
                    "ack_url": format!("/v1/jobs/{job}/checkpoints/{}/acks", c.id),
                    "decline_url": format!("/v1/jobs/{job}/checkpoints/{}/declines", c.id),
                });
                if let Some(t) = &task {
                    let prefix = |scope: StateScope| scope.prefix(t, SubtaskIndex(0));
                    v["upload_prefix"] = json!(prefix(StateScope::Checkpoint(c.id)));
                    v["shared_prefix"] = json!(prefix(StateScope::Shared));
                }
                v
            })
            .collect();
        if !pending.is_empty() || Instant::now() >= deadline || entry.result().is_some() {
            return Ok(Json(json!({ "checkpoints": pending })));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHandle {
    path: String,
    size: u64,
    crc32c: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    task: String,
    #[serde(default)]
    files: Vec<FileHandle>,
}

/// An external task's file handle, checked (pure): a state file path of
/// the task's own subtask 0, under checkpoint `id`'s folder or `shared/`
/// (one valid file name, no `..`); else 400.
fn handle_path<'a>(path: &'a str, id: CheckpointId, task: &OperatorId) -> ApiResult<StatePath<'a>> {
    let parsed = StatePath::parse(path).map_err(|e| ApiError::invalid(e.to_string()))?;
    let canonical = JobPaths::state_file_relative(parsed.scope, task, SubtaskIndex(0), parsed.name);
    let mine = canonical == path
        && parsed.operator == task.as_str()
        && parsed.subtask == 0
        && parsed.checkpoint().is_none_or(|c| c == id);
    if !mine {
        return Err(ApiError::invalid(format!(
            "{path:?} lies outside {} and {}",
            StateScope::Checkpoint(id).prefix(task, SubtaskIndex(0)),
            StateScope::Shared.prefix(task, SubtaskIndex(0)),
        )));
    }
    Ok(parsed)
}

/// Checks a handle lies under `chk-{n}/{task}/0/` or `shared/{task}/0/`
/// (one valid file name, no `..`; else 400) and exists in storage with that
/// size (else 409: upload it first).
async fn validate_handle(
    st: &AppState,
    job: &JobId,
    id: CheckpointId,
    task: &OperatorId,
    h: FileHandle,
) -> ApiResult<StateFile> {
    let path = handle_path(&h.path, id, task)?;
    let relative = JobPaths::state_file_relative(path.scope, task, SubtaskIndex(0), path.name);
    let size = st
        .storage
        .object_size(job, &relative)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "{relative} does not exist in checkpoint storage: upload it before acknowledging"
            ))
        })?;
    if size != h.size {
        return Err(ApiError::conflict(format!(
            "{relative} has {size} bytes in storage, the ack says {}",
            h.size
        )));
    }
    Ok(StateFile {
        path: relative,
        local_name: path.name.to_string(),
        size: h.size,
        crc32c: h.crc32c,
    })
}

pub async fn ack_checkpoint(
    State(st): S,
    CheckpointPath(job, id): CheckpointPath,
    ApiJson(req): ApiJson<AckRequest>,
) -> ApiResult<Json<Value>> {
    let entry = st.running(&job)?;
    let task = external_task(entry.control.spec(), &req.task)?;
    let mut files = Vec::with_capacity(req.files.len());
    for h in req.files {
        files.push(validate_handle(&st, &job, id, &task, h).await?);
    }
    let size: u64 = files.iter().map(|f| f.size).sum();
    let uploaded: u64 = files
        .iter()
        .filter(|f| !f.is_shared())
        .map(|f| f.size)
        .sum();
    let state = SubtaskState {
        files_uploaded: files.len() as u32,
        files,
        state_size: size,
        checkpointed_size: uploaded,
        ack_timestamp: now_millis(),
        ..SubtaskState::empty(TaskId::new(&task, 0))
    };
    entry.control.external_ack(id, state).await?;
    Ok(Json(
        json!({"checkpoint_id": id, "task": format!("{task}[0]"), "accepted": true}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclineRequest {
    task: String,
    reason: String,
}

pub async fn decline_checkpoint(
    State(st): S,
    CheckpointPath(job, id): CheckpointPath,
    ApiJson(req): ApiJson<DeclineRequest>,
) -> ApiResult<Json<Value>> {
    let entry = st.running(&job)?;
    let task = external_task(entry.control.spec(), &req.task)?;
    let reason: String = req.reason.chars().take(1000).collect();
    entry
        .control
        .external_decline(id, TaskId::new(&task, 0), reason)
        .await?;
    Ok(Json(
        json!({"checkpoint_id": id, "task": format!("{task}[0]"), "declined": true}),
    ))
}

// ---- storage browsing -------------------------------------------------------------

pub async fn storage_jobs(State(st): S) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "jobs": st.storage.list_jobs().await? })))
}

/// Restorable checkpoints storage holds for a job, running or not.
pub async fn storage_checkpoints(State(st): S, JobPath(job): JobPath) -> ApiResult<Json<Value>> {
    let listing = st.storage.list_checkpoints(&job).await?;
    let spec_stored = st.storage.read_job_spec(&job).await.is_ok();
    if listing.is_empty() && !spec_stored {
        return Err(ApiError::not_found(format!(
            "storage holds nothing for job {job}"
        )));
    }
    let rows: Vec<views::ListingView> = listing.iter().map(|l| views::listing(&job, l)).collect();
    Ok(Json(
        json!({"job_id": job, "job_spec_stored": spec_stored, "checkpoints": rows}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn external_handles_must_lie_in_the_tasks_own_folders() {
        let task = OperatorId::new("ext").unwrap();
        let id = CheckpointId(7);
        for ok in ["chk-7/ext/0/state.bin", "shared/ext/0/a-1.sst"] {
            assert!(handle_path(ok, id, &task).is_ok(), "{ok}");
        }
        for bad in [
            "chk-6/ext/0/state.bin",    // another checkpoint
            "chk-7/agg/0/state.bin",    // another task
            "shared/ext/1/a.sst",       // another subtask
            "chk-7/ext/0/../x",         // not a file name
            "chk-7/ext/0",              // no file
            "chk-7/shared/ext/0/a.sst", // an old release's import form
            "elsewhere/ext/0/a.sst",    // outside both
        ] {
            let e = handle_path(bad, id, &task).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Invalid, "{bad}: {e:?}");
        }
    }
}
