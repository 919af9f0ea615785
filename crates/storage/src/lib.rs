//! Checkpoint storage on any `object_store` backend.
//!
//! What lives here: where a checkpoint's objects go ([`paths`]), how the
//! `--checkpoint-dir` string becomes a store ([`location`]), the operations
//! the coordinator and the state backend need ([`CheckpointStorage`]): create-
//! only state files and metadata, verified downloads, listing what is
//! restorable, deleting a checkpoint metadata-first, writer leases (one
//! writer per job, checkpoint ids never repeated) — a fault-injecting store
//! decorator for tests ([`faults`]) and the conformance suite every store
//! must pass ([`conformance`]).
//!
//! Nothing above this crate builds an object path; nothing in it knows what
//! backend it talks to beyond `Arc<dyn ObjectStore>`.

pub mod conformance;
pub mod error;
pub mod faults;
pub mod location;
pub mod paths;
mod storage;

pub use error::StorageError;
pub use location::StorageLocation;
pub use paths::{JobPaths, StateScope};
pub use storage::{
    CheckpointListing, CheckpointStorage, JobObject, JobUsage, WriterLease, IDS_PER_LEASE,
    MULTIPART_THRESHOLD,
};
