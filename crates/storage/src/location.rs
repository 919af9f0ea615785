//! Turns a `--checkpoint-dir` value into an object store and a root path.
//!
//! - a plain path or `file:///path`: `LocalFileSystem` rooted there (the
//!   directory is created), with empty folders cleaned up on delete;
//! - `s3://bucket/prefix`: `AmazonS3Builder::from_env()` — the standard
//!   `AWS_*` variables, `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` for MinIO —
//!   with tuned retries ([`s3_retry`]) behind a `LimitStore` capping
//!   concurrent requests ([`S3_MAX_REQUESTS`]).

use std::sync::Arc;

use std::time::Duration;

use object_store::{
    limit::LimitStore, local::LocalFileSystem, path::Path, BackoffConfig, ObjectStore, RetryConfig,
};

use crate::StorageError;

/// Concurrent requests to S3 per process (uploads, downloads, deletes).
pub const S3_MAX_REQUESTS: usize = 32;

/// Retries of transient S3 errors (5xx, `SlowDown`, connection resets):
/// exponential backoff from 100 ms up to 5 s, at most 8 retries and 60 s
/// per request — well inside a checkpoint timeout, so a request that still
/// fails makes its checkpoint fail cleanly rather than hang it.
pub fn s3_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 8,
        retry_timeout: Duration::from_secs(60),
    }
}

/// A store and the root path of the cutpoint layout inside it.
#[derive(Debug, Clone)]
pub struct StorageLocation {
    pub store: Arc<dyn ObjectStore>,
    pub root: Path,
    /// The location as users write it, for `external_path`.
    pub url: String,
}

impl StorageLocation {
    pub fn parse(location: &str) -> Result<Self, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidLocation {
            location: location.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("s3:// needs a bucket name"));
            }
            let root = Path::parse(prefix.trim_end_matches('/'))
                .map_err(|e| invalid(&format!("bad prefix: {e}")))?;
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(s3_retry())
                .build()
                .map_err(|e| invalid(&e.to_string()))?;
            let store = LimitStore::new(store, S3_MAX_REQUESTS);
            let url = if root.as_ref().is_empty() {
                format!("s3://{bucket}")
            } else {
                format!("s3://{bucket}/{root}")
            };
            return Ok(Self {
                store: Arc::new(store),
                root,
                url,
            });
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(invalid(
                "supported schemes are s3:// and file://, or a plain path",
            ));
        }
        let dir = location.strip_prefix("file://").unwrap_or(location);
        if dir.is_empty() {
            return Err(invalid("empty path"));
        }
        std::fs::create_dir_all(dir).map_err(|e| invalid(&e.to_string()))?;
        let abs = std::fs::canonicalize(dir).map_err(|e| invalid(&e.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(&abs)
            .map_err(|e| invalid(&e.to_string()))?
            .with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(store),
            root: Path::default(),
            url: format!("file://{}", abs.display()),
        })
    }

    /// Same location with the store wrapped by a decorator.
    pub fn with_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.store = store;
        self
    }
}
