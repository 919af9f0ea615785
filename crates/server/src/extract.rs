//! Extractors whose failures are problem+json: a strict JSON body and
//! validated path ids. An id that is not a valid id is a 400 (and never
//! reaches storage); a valid id that does not exist is a 404 later.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{request::Parts, StatusCode};
use cutpoint_core::{CheckpointId, JobId};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorKind};

/// A JSON body; an empty body is `{}`-less `None` only via [`OptionalJson`].
pub struct ApiJson<T>(pub T);

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    if let Some(ct) = req.headers().get(axum::http::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct.starts_with("application/json") {
            return Err(ApiError::invalid(format!(
                "content-type must be application/json, got {ct:?}"
            )));
        }
    }
    Bytes::from_request(req, state).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorKind::TooLarge, r.body_text())
        } else {
            ApiError::invalid(r.body_text())
        }
    })
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("malformed JSON body: {e}")))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::invalid("a JSON body is required"));
        }
        parse(&bytes).map(ApiJson)
    }
}

/// A JSON body that may be empty.
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(OptionalJson(None));
        }
        parse(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

/// `{job_id}` of the path, validated.
pub struct JobPath(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw): Path<Vec<String>> = Path::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        let job = raw
            .first()
            .ok_or_else(|| ApiError::invalid("missing job id"))?;
        JobId::new(job.as_str())
            .map(JobPath)
            .map_err(|e| ApiError::invalid(e.to_string()))
    }
}

/// `{job_id}` and `{checkpoint_id}` of the path, validated.
pub struct CheckpointPath(pub JobId, pub CheckpointId);

impl<S: Send + Sync> FromRequestParts<S> for CheckpointPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw): Path<Vec<String>> = Path::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        let (Some(job), Some(id)) = (raw.first(), raw.get(1)) else {
            return Err(ApiError::invalid("missing job or checkpoint id"));
        };
        let job = JobId::new(job.as_str()).map_err(|e| ApiError::invalid(e.to_string()))?;
        let id = id
            .parse::<CheckpointId>()
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok(CheckpointPath(job, id))
    }
}
