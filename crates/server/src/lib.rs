//! The REST admin API (v1) on axum + tower-http.
//!
//! - [`error`]: the one mapping from internal errors to a few caller-
//!   actionable kinds, rendered as `application/problem+json`.
//! - [`extract`]: JSON and id extractors whose rejections are problems too.
//! - [`auth`]: bearer-token check (constant-time) on every route but health.
//! - [`app`]: shared state — storage, the jobs this server runs.
//! - [`routes`]: the handlers; [`views`]: response bodies in Flink's shape.
//! - [`serve`]: binding (loopback unless a token is set), layers (request
//!   ids, tracing, body limit, timeout) and graceful shutdown.
//!
//! Nothing here builds an object path: ids are validated newtypes and all
//! paths come from `cutpoint-storage`.

pub mod app;
pub mod auth;
pub mod error;
pub mod extract;
pub mod routes;
mod server;
pub mod views;

pub use app::AppState;
pub use error::{ApiError, ErrorKind};
pub use server::{router, serve, ServerConfig, ServerError};
