//! Core vocabulary of cutpoint, shared by every other crate.
//!
//! What lives here: validated id newtypes ([`JobId`], [`OperatorId`],
//! [`CheckpointId`], [`SubtaskIndex`]), key groups, the job specification,
//! checkpoint options, state handles, the versioned checkpoint metadata,
//! records and their values ([`record`], [`value`]), keyed stages ([`stage`]), the job graph ([`graph`]: operators, partitioned edges, chains) and the
//! relative layout of a job's folder ([`layout`]).
//! Nothing here does I/O; everything is plain data with serde support, so the
//! storage, runtime and coordinator crates agree on one set of types.

pub mod checksum;
pub mod error;
pub mod failpoint;
pub mod filter;
pub mod graph;
pub mod ids;
pub mod keygroup;
pub mod layout;
pub mod metadata;
pub mod record;
pub mod spec;
pub mod stage;
pub mod time;
pub mod value;
pub mod window;

pub use error::CoreError;
pub use graph::JobGraph;
pub use ids::{CheckpointId, FunctionName, JobId, OperatorId, SavepointId, SubtaskIndex, TaskId};
pub use keygroup::KeyGroupRange;
pub use metadata::{CheckpointMetadata, StateFile, SubtaskState, METADATA_VERSION};
pub use record::{Key, NotAnInteger, Record};
pub use spec::{CheckpointConfig, CheckpointType, JobSpec};
pub use value::Value;

/// Milliseconds since the Unix epoch (wall clock), as used in metadata and stats.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
