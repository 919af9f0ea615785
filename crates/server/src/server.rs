//! Building the router with its layers, binding, and serving until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};
use cutpoint_storage::CheckpointStorage;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::{auth, routes, AppState};

/// How to run the server.
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub storage: CheckpointStorage,
    /// Local working directory for the jobs' RocksDB instances.
    pub work_dir: PathBuf,
    /// Bearer token; required to bind a non-loopback address.
    pub token: Option<String>,
    /// Largest request body accepted (413 beyond).
    pub body_limit: usize,
    /// Longest a request may take (408 beyond).
    pub request_timeout: Duration,
    /// Accept the job spec's test knobs (`inject_*`) from `POST /v1/jobs`.
    pub test_knobs: bool,
    /// The program's keyed process functions, which submitted specs may
    /// name (empty in the stock binary).
    pub functions: cutpoint_coordinator::Functions,
}

impl ServerConfig {
    pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("refusing to listen on {0} without a token: set CUTPOINT_TOKEN or --token-file, or bind 127.0.0.1")]
    NoToken(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(#[source] std::io::Error),
}

/// The v1 API with every layer.
pub fn router(state: Arc<AppState>, body_limit: usize, timeout: Duration) -> Router {
    Router::new()
        .route("/", get(routes::dashboard))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/v1/openapi.yaml", get(routes::openapi))
        .route("/v1/jobs", get(routes::list_jobs).post(routes::submit_job))
        .route("/v1/jobs/{job_id}", get(routes::get_job))
        .route("/v1/jobs/{job_id}/cancel", post(routes::cancel_job))
        .route("/v1/jobs/{job_id}/restore", post(routes::restore_job))
        .route(
            "/v1/jobs/{job_id}/checkpoints",
            get(routes::list_checkpoints).post(routes::trigger_checkpoint),
        )
        .route("/v1/jobs/{job_id}/checkpoints/config", get(routes::checkpoint_config))
        .route("/v1/jobs/{job_id}/checkpoints/latest", get(routes::latest_checkpoint))
        .route("/v1/jobs/{job_id}/checkpoints/pending", get(routes::pending_checkpoints))
        .route(
            "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}",
            get(routes::get_checkpoint).delete(routes::delete_checkpoint),
        )
        .route("/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/acks", post(routes::ack_checkpoint))
        .route(
            "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/declines",
            post(routes::decline_checkpoint),
        )
        .route("/v1/jobs/{job_id}/savepoints", post(routes::trigger_savepoint))
        .route("/v1/savepoints", get(routes::list_savepoints))
        .route("/v1/storage/jobs", get(routes::storage_jobs))
        .route("/v1/storage/jobs/{job_id}/checkpoints", get(routes::storage_checkpoints))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(body_limit, reject_oversized))
        .layer(middleware::from_fn_with_state(timeout, time_limit))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Bodies read and discarded before a 413, so the client receives the
/// answer instead of a connection reset (beyond this the connection drops).
const DRAIN_CAP: usize = 16 * 1024 * 1024;

/// Answers 413 (problem+json) to a request whose declared length exceeds
/// the limit, after draining its body.
async fn reject_oversized(
    axum::extract::State(limit): axum::extract::State<usize>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(n) if n > limit => {
            let _ = axum::body::to_bytes(req.into_body(), DRAIN_CAP).await;
            crate::ApiError::new(
                crate::ErrorKind::TooLarge,
                format!("request body of {n} bytes exceeds the limit of {limit} bytes"),
            )
            .into_response()
        }
        _ => next.run(req).await,
    }
}

/// Answers 408 (problem+json) to a request still running after `limit`
/// (its handler is dropped, as a disconnect would).
async fn time_limit(
    axum::extract::State(limit): axum::extract::State<Duration>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => crate::ApiError::new(
            crate::ErrorKind::Timeout,
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

/// Binds, reports the bound address through `bound`, and serves until
/// `shutdown` fires (then drains in-flight requests and cancels the jobs).
pub async fn serve(
    config: ServerConfig,
    shutdown: CancellationToken,
    bound: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    if !config.listen.ip().is_loopback() && config.token.is_none() {
        return Err(ServerError::NoToken(config.listen));
    }
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
        .ok();
    let mut state = AppState::new(config.storage, config.work_dir, config.token, metrics);
    state.test_knobs = config.test_knobs;
    state.functions = config.functions;
    let state = Arc::new(state);
    let app = router(state.clone(), config.body_limit, config.request_timeout);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServerError::Serve)?;
    tracing::info!(%addr, auth = state.token.is_some(), test_knobs = state.test_knobs, "cutpoint server listening");
    bound(addr);
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .map_err(ServerError::Serve)?;
    for (id, entry) in state.jobs() {
        if entry.result().is_none() {
            tracing::info!(job = %id, "stopping job at shutdown");
            entry.control.cancel();
        }
    }
    Ok(())
}
