//! What tasks tell the coordinator, and the barrier they pass along.

use std::time::Instant;

use cutpoint_core::{CheckpointId, CheckpointType, SubtaskState, TaskId};
use cutpoint_state::{ResultTable, StateError};

/// Checkpoint barrier `n`, injected by sources between two records. Plain
/// data (no process-local clock or handle): it can cross a process
/// boundary as it is, e.g. as JSON over a network exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Barrier {
    pub id: CheckpointId,
    pub checkpoint_type: CheckpointType,
    /// Wall-clock trigger time (ms since epoch).
    pub trigger_timestamp: u64,
    /// The checkpoint whose shared files this snapshot may reuse: the
    /// newest one this run completed before the trigger (or the one it
    /// restored from). `None`: reuse nothing, upload every file. Carried by
    /// the barrier, so no notification can be missed or arrive late.
    pub reuse: Option<CheckpointId>,
}

/// Why a task failed, typed up to the coordinator (which words it).
#[derive(Debug, thiserror::Error)]
pub enum TaskFailure {
    #[error("restore failed: {0}")]
    Restore(#[source] crate::RuntimeError),
    #[error("snapshot worker: {0}")]
    Worker(#[source] StateError),
    #[error(transparent)]
    Task(crate::RuntimeError),
    #[error("task panicked: {0}")]
    Panic(String),
}

/// How bad a task's failure is: what the coordinator's recovery needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A restart may help (a task error, storage that did not answer).
    Transient,
    /// The state or input of the restored checkpoint is bad (a file missing
    /// or corrupt, an offset that no longer fits the input): restoring the
    /// same checkpoint again cannot work.
    CorruptRestore,
    /// Nothing a restart could fix.
    Fatal,
}

impl FailureKind {
    /// The kind of `e`, raised while restoring (`restoring`) or running.
    pub fn of(e: &crate::RuntimeError, restoring: bool) -> Self {
        match (e.is_fatal(), restoring) {
            (false, _) => FailureKind::Transient,
            (true, true) => FailureKind::CorruptRestore,
            (true, false) => FailureKind::Fatal,
        }
    }
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
        reason: StateError,
    },
    /// The task failed; `kind` says whether a restart can help.
    Failed {
        task: TaskId,
        error: TaskFailure,
        kind: FailureKind,
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
        table: Option<Box<ResultTable>>,
    },
}
