//! The checkpoint coordinator and the job runner around it.
//!
//! Pure decisions (no I/O, unit-tested directly):
//! - [`tracker`]: checkpoint decisions — ids from the writer lease, when a
//!   checkpoint is complete, which fail, which retention subsumes, when
//!   failures exceed the tolerable count.
//! - [`recovery`]: which checkpoint to restore, what a storage error means,
//!   fallback past corrupt data, exclusions, restarts.
//! - [`gc::rules`], [`gc::registry`], [`gc::sweep`]: which checkpoints a
//!   user may delete, shared-file reference counts, the orphan sweep's
//!   classification.
//!
//! The imperative shell:
//! - [`job`]: runs one job — starts executions, feeds task events and
//!   timers into the tracker, writes `_metadata` last, hands deletions to
//!   GC, restarts as recovery decides.
//! - [`gc`]: the GC task: deletes, sweeps, retries and savepoint copies off
//!   the coordinator's loop.
//! - [`restore`]: resolving a restore point from storage.
//! - [`fence`]: one writer per job, checked before publishing and deleting.
//! - [`workdir`]: the job's local directory: locked, emptied at start.
//! - [`stats`]: checkpoint statistics in Flink's shape, for the API.

pub mod error;
pub mod fence;
pub mod gc;
pub mod job;
pub mod recovery;
pub mod restore;
pub mod stats;
pub mod tracker;
pub mod workdir;

pub use cutpoint_runtime::Functions;
pub use error::JobError;
pub use gc::DeleteRefusal;
pub use job::{
    spawn_job, AckRejection, JobConfig, JobControl, JobHandle, JobOutcome, JobState, JobStatus,
    SavepointError, SavepointInfo, TaskProgress,
};
pub use restore::RestoreFrom;
pub use tracker::{CheckpointTracker, TriggerRefusal};
