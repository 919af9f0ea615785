//! The checkpoint coordinator and the job runner around it.
//!
//! - [`tracker`]: the functional core. A state machine over facts (trigger,
//!   ack, decline, timeout, completion, task finished) that decides what
//!   happens — which checkpoint id to use, when one is complete, which fail,
//!   which completed ones are subsumed by retention, when failures exceed the
//!   tolerable count. No I/O; unit-tested directly.
//! - [`job`]: the imperative shell. Runs one job: starts executions, feeds
//!   task events and timers into the tracker, and carries out its decisions
//!   against storage (write `_metadata` last, delete aborted and subsumed
//!   checkpoints) and the execution (trigger, abort, notify, restart).
//! - [`registry`]: reference counts of shared (incremental) state files,
//!   with deferred release while checkpoints are pending.
//! - [`workdir`]: the job's local directory: locked, emptied at start.
//! - [`stats`]: checkpoint statistics in Flink's shape, for the API.
//! - [`gc`]: the deletion rules users' deletes follow (pure).
//! - [`sweep`]: classifying orphans (what crashed writers left) for deletion.
//! - [`recovery`]: the recovery policy (pure): which checkpoint to restore,
//!   what a storage error means, fallback, exclusions, restarts.
//! - [`restore`]: its I/O side: resolving a restore point from storage.

pub mod error;
pub mod gc;
pub mod job;
pub mod recovery;
pub mod registry;
pub mod restore;
pub mod stats;
pub mod sweep;
pub mod tracker;
pub mod workdir;

pub use error::JobError;
pub use gc::DeleteRefusal;
pub use job::{
    spawn_job, AckRejection, JobConfig, JobControl, JobHandle, JobOutcome, JobState, JobStatus,
    SavepointInfo, TaskProgress,
};
pub use restore::RestoreFrom;
pub use tracker::{CheckpointTracker, TriggerRefusal};
