//! What tasks tell the coordinator, and the barrier they pass along.

use std::time::Instant;

use cutpoint_core::{CheckpointId, CheckpointType, SubtaskState, TaskId};
use cutpoint_state::StateTable;

/// Checkpoint barrier `n`, injected by sources between two records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    pub id: CheckpointId,
    pub checkpoint_type: CheckpointType,
    /// Wall-clock trigger time (ms since epoch).
    pub trigger_timestamp: u64,
    /// Monotonic trigger instant, for alignment durations.
    pub triggered_at: Instant,
}

/// Messages from tasks to the coordinator.
#[derive(Debug)]
pub enum TaskEvent {
    /// The task restored its state (if any) and is processing.
    Started { task: TaskId, at: Instant },
    /// The task's snapshot for a checkpoint is stored.
    Ack {
        checkpoint: CheckpointId,
        state: Box<SubtaskState>,
    },
    /// The task could not snapshot this checkpoint.
    Decline {
        checkpoint: CheckpointId,
        task: TaskId,
        reason: String,
    },
    /// The task failed. `fatal` means retrying cannot help (e.g. the state to
    /// restore is corrupt), so the job fails instead of restarting.
    Failed {
        task: TaskId,
        error: String,
        fatal: bool,
        /// The task failed while restoring its state.
        during_restore: bool,
    },
    /// A source read all its input and waits for the final checkpoint
    /// (only when the job takes one).
    EndOfInput { task: TaskId },
    /// The task reached the end of its input.
    Finished {
        task: TaskId,
        records: u64,
        /// A source's offset at the end of its input.
        offset: Option<cutpoint_core::metadata::SourceOffset>,
        /// Final keyed state (aggregate tasks).
        table: Option<Box<StateTable>>,
    },
}
