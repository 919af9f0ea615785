//! Errors raised while validating core values (ids, specs, metadata).

/// A value failed validation. Every variant names what was wrong so the
/// caller can show it to a user unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidId {
        kind: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid job spec: {0}")]
    InvalidSpec(String),
    #[error(
        "unsupported checkpoint metadata version {found} (this build reads version {supported})"
    )]
    UnsupportedMetadataVersion { found: u32, supported: u32 },
    #[error("checkpoint metadata is inconsistent: {0}")]
    InconsistentMetadata(String),
}
