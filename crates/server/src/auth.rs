//! Bearer-token authentication. Every route except the probes (`/healthz`,
//! `/readyz`) and the dashboard page (`/`, static: its data comes from the
//! API with the token the user types in) requires
//! `Authorization: Bearer <token>` when a token is configured. The
//! comparison is constant-time; the token is never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorKind};
use crate::AppState;

/// Paths reachable without a token (probes, the static dashboard page).
pub const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/"];

pub async fn require_token(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.token.as_deref() else {
        return next.run(req).await;
    };
    if OPEN_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok: bool = presented.as_bytes().ct_eq(expected.as_bytes()).into();
    if ok {
        next.run(req).await
    } else {
        ApiError::new(
            ErrorKind::Unauthorized,
            "send Authorization: Bearer <token>",
        )
        .into_response()
    }
}
