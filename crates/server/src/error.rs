//! API errors as `application/problem+json` (RFC 9457) with a stable `type`.
//! Internal errors are mapped here, once, to a few kinds a caller can act on.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cutpoint_coordinator::{AckRejection, DeleteRefusal, JobError, SavepointError, TriggerRefusal};
use cutpoint_storage::StorageError;
use serde_json::json;

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Fix the request (400).
    Invalid,
    /// Send a valid bearer token (401).
    Unauthorized,
    /// The job or checkpoint does not exist (404).
    NotFound,
    /// Wrong method for this path (405).
    MethodNotAllowed,
    /// The resource is not in a state that allows this (409).
    Conflict,
    /// The request took longer than the server allows (408).
    Timeout,
    /// Request body too large (413).
    TooLarge,
    /// The stored data is corrupt or inconsistent (422).
    Data,
    /// Storage or the job is temporarily unavailable; retry (503).
    Unavailable,
    /// A bug (500).
    Internal,
}

impl ErrorKind {
    fn status(self) -> StatusCode {
        match self {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Data => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid-request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not-found",
            ErrorKind::MethodNotAllowed => "method-not-allowed",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Timeout => "request-timeout",
            ErrorKind::TooLarge => "payload-too-large",
            ErrorKind::Data => "corrupt-data",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    fn title(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "The request is invalid",
            ErrorKind::Unauthorized => "Missing or wrong bearer token",
            ErrorKind::NotFound => "Not found",
            ErrorKind::MethodNotAllowed => "Method not allowed",
            ErrorKind::Conflict => "Conflict with the current state",
            ErrorKind::Timeout => "Request timed out",
            ErrorKind::TooLarge => "Request body too large",
            ErrorKind::Data => "Stored checkpoint data is unusable",
            ErrorKind::Unavailable => "Temporarily unavailable",
            ErrorKind::Internal => "Internal error",
        }
    }
}

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, detail)
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let body = json!({
            "type": format!("urn:cutpoint:problem:{}", self.kind.slug()),
            "title": self.kind.title(),
            "status": status.as_u16(),
            "detail": self.detail,
        });
        let mut resp = (status, axum::Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.kind == ErrorKind::Unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl ApiError {
    /// The kind of answer a storage error gets.
    fn from_storage_kind(e: &StorageError) -> ErrorKind {
        match e {
            StorageError::MetadataMissing { .. } | StorageError::JobSpecMissing { .. } => {
                ErrorKind::NotFound
            }
            e if e.is_data_error() => ErrorKind::Data,
            StorageError::CorruptJobSpec { .. } => ErrorKind::Data,
            StorageError::InvalidLocation { .. } | StorageError::SavepointElsewhere { .. } => {
                ErrorKind::Invalid
            }
            StorageError::AlreadyExists { .. } => ErrorKind::Conflict,
            _ => ErrorKind::Unavailable,
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        ApiError::new(ApiError::from_storage_kind(&e), e.to_string())
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Storage(s) => s.into(),
            JobError::NoCheckpoint { .. }
            | JobError::CheckpointNotFound { .. }
            | JobError::SavepointNotFound(_) => ApiError::not_found(e.to_string()),
            JobError::Restore(_) => ApiError::new(ErrorKind::Data, e.to_string()),
            JobError::Invalid(_) => ApiError::invalid(e.to_string()),
            JobError::Cancelled | JobError::Failed { .. } | JobError::WorkDirInUse { .. } => {
                ApiError::conflict(e.to_string())
            }
            _ => ApiError::new(ErrorKind::Internal, e.to_string()),
        }
    }
}

impl From<cutpoint_coordinator::gc::DeleteError> for ApiError {
    fn from(e: cutpoint_coordinator::gc::DeleteError) -> Self {
        match e {
            cutpoint_coordinator::gc::DeleteError::Refused(r) => r.into(),
            cutpoint_coordinator::gc::DeleteError::Storage(s) => s.into(),
        }
    }
}

impl From<SavepointError> for ApiError {
    /// A storage failure while copying is the storage's kind (503, …); the
    /// rest conflict with the job's state.
    fn from(e: SavepointError) -> Self {
        match e {
            SavepointError::Copy { ref source, .. } => {
                let kind = ApiError::from_storage_kind(source);
                ApiError::new(kind, e.to_string())
            }
            SavepointError::Name { .. } => ApiError::new(ErrorKind::Internal, e.to_string()),
            e => ApiError::conflict(e.to_string()),
        }
    }
}

impl From<TriggerRefusal> for ApiError {
    fn from(e: TriggerRefusal) -> Self {
        ApiError::conflict(e.to_string())
    }
}

impl From<AckRejection> for ApiError {
    fn from(e: AckRejection) -> Self {
        match e {
            AckRejection::UnknownCheckpoint(_) => ApiError::not_found(e.to_string()),
            AckRejection::Rejected(_) => ApiError::invalid(e.to_string()),
            AckRejection::NotPending(_) | AckRejection::NotRunning => {
                ApiError::conflict(e.to_string())
            }
        }
    }
}

impl From<DeleteRefusal> for ApiError {
    fn from(e: DeleteRefusal) -> Self {
        match e {
            DeleteRefusal::NotFound(_) => ApiError::not_found(e.to_string()),
            DeleteRefusal::NotDeletedYet(_) => ApiError::new(ErrorKind::Unavailable, e.to_string()),
            _ => ApiError::conflict(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutpoint_core::CheckpointId;

    fn store_error() -> StorageError {
        StorageError::ObjectStore {
            op: "get",
            path: "p".into(),
            source: object_store::Error::Generic {
                store: "test",
                source: "down".into(),
            },
        }
    }

    #[test]
    fn errors_map_to_the_statuses_the_contract_documents() {
        let status = |e: ApiError| e.kind.status().as_u16();
        assert_eq!(status(store_error().into()), 503);
        let missing = StorageError::MetadataMissing {
            job: "j".into(),
            checkpoint: 3,
        };
        assert_eq!(status(missing.into()), 404);
        let corrupt = StorageError::CorruptMetadata {
            path: "p".into(),
            reason: "r".into(),
        };
        assert_eq!(status(corrupt.into()), 422);
        assert_eq!(status(JobError::Storage(store_error()).into()), 503);
        assert_eq!(status(JobError::Restore("x".into()).into()), 422);
        assert_eq!(
            status(JobError::WorkDirInUse { path: "w".into() }.into()),
            409
        );
        // A savepoint whose copy failed in storage is the storage's kind, not 409.
        let copy = SavepointError::Copy {
            checkpoint: CheckpointId(1),
            source: store_error(),
        };
        assert_eq!(status(copy.into()), 503);
        assert_eq!(status(SavepointError::JobEnded.into()), 409);
        assert_eq!(status(DeleteRefusal::NotFound(CheckpointId(1)).into()), 404);
        assert_eq!(status(DeleteRefusal::Newest(CheckpointId(1)).into()), 409);
        assert_eq!(
            status(DeleteRefusal::NotDeletedYet(CheckpointId(1)).into()),
            503
        );
    }
}
