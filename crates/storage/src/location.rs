//! Turns a `--checkpoint-dir` value into an object store and a root path.
//!
//! - a plain path or `file:///path`: `LocalFileSystem` rooted there (the
//!   directory is created), with empty folders cleaned up on delete;
//! - `s3://bucket/prefix`: `AmazonS3Builder::from_env()` — the standard
//!   `AWS_*` variables, `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` for MinIO.

use std::sync::Arc;

use object_store::{local::LocalFileSystem, path::Path, ObjectStore};

use crate::StorageError;

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
                .build()
                .map_err(|e| invalid(&e.to_string()))?;
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
