//! The in-process operator DAG and its barrier handling.
//!
//! Shape of a job: `source[p] --key_by (hash exchange)--> aggregate[q] -> sink`
//! with the sink chained into the aggregate task (one thread per task, as
//! Flink chains operators). Every source partition is one source task; every
//! aggregate subtask has one bounded input channel per source task, so a
//! barrier must be *aligned* across them (exactly-once).
//!
//! - [`source`]: replayable partition readers (generator, NDJSON files).
//! - [`channel`]: the messages on the wire between tasks (batches of records,
//!   barriers, watermarks, end of stream) and back-pressured sends.
//! - [`sink`]: where aggregate updates go.
//! - [`barrier`]: barrier handling as a pure state machine (aligned,
//!   at-least-once, unaligned, the aligned timeout, overlapping
//!   checkpoints, end of input): decisions as values, unit-tested.
//! - `gate`: the receiving side of an exchange (`InputGate`), what a keyed
//!   task reads its inputs through; in-process channels implement it.
//! - [`task`]: the source task (reading, the program's stateless steps,
//!   barrier injection) and a keyed task's opening, restore and final
//!   report.
//! - `running`: a keyed task's loop, driven by those decisions (the
//!   synchronous snapshot phase, unaligned channel-state collection, the
//!   memory budget).
//! - [`worker`]: the per-subtask snapshot worker that runs the asynchronous
//!   phase (RocksDB write, checkpoint, upload, ack) off the task thread.
//! - `time`: event time in the tasks (a source's watermarks, a keyed
//!   task's minimum over its inputs), around `cutpoint_core::time`.
//! - [`execution`]: starting one attempt of a job (restoring state if asked)
//!   and the handle the coordinator drives it with.
//!
//! Tasks and workers are plain threads: RocksDB and file I/O never run on
//! the async runtime. They report to the coordinator through [`TaskEvent`]s
//! and stop when the execution's cancellation token fires.

mod barrier;
pub mod channel;
mod context;
mod error;
pub mod events;
mod exchange;
pub mod execution;
mod gate;
mod keyed;
mod running;
pub mod sink;
pub mod source;
mod task;
mod time;
mod worker;

pub use context::TaskCounters;
pub use cutpoint_operator::{Functions, OperatorError};
pub use error::RuntimeError;
pub use events::{Barrier, FailureKind, TaskEvent};
pub use execution::{Execution, ExecutionConfig};
pub use running::BUDGET_CAP;

/// Operator id of the source tasks.
pub const SOURCE_OPERATOR: &str = "source";
/// Operator id of the first keyed stage.
pub const AGGREGATE_OPERATOR: &str = cutpoint_core::stage::FIRST_STAGE;
