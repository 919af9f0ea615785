//! Runtime errors: why a task or an execution failed.

use cutpoint_state::StateError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("source partition {partition} ({path}): {reason}")]
    Source {
        partition: u32,
        path: String,
        reason: String,
    },
    #[error("bad input line in {path} at byte {offset}: {reason}")]
    BadLine {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("sink: {0}")]
    Sink(String),
    /// A transaction the restored checkpoint pre-committed is gone: the
    /// checkpoint cannot be restored as it is.
    #[error("sink: {0}")]
    MissingTransaction(String),
    #[error("state: {0}")]
    State(#[from] StateError),
    #[error("operator: {0}")]
    Operator(#[from] cutpoint_operator::OperatorError),
    /// A keyed stage that counts, sums or buckets got a value that is not
    /// an integer (e.g. the stage before it emitted strings).
    #[error("a keyed stage needs integers: {0}")]
    NotAnInteger(#[from] cutpoint_core::NotAnInteger),
    #[error("cannot restore: {0}")]
    Restore(String),
    #[error("downstream task is gone")]
    Disconnected,
    #[error("cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("injected failure (inject_failure in the job spec)")]
    Injected,
    #[error(transparent)]
    FailPoint(#[from] cutpoint_core::failpoint::InjectedFault),
}

impl RuntimeError {
    /// True if restarting the job cannot help: the state or input to
    /// restore from is bad (corrupt or missing checkpoint files, an offset
    /// that no longer fits the input).
    pub fn is_fatal(&self) -> bool {
        use cutpoint_operator::OperatorError;
        // (A spec naming a function or step the program lacks is refused
        // before any task starts: `Execution::start`.)
        match self {
            RuntimeError::Restore(_) | RuntimeError::MissingTransaction(_) => true,
            RuntimeError::State(StateError::Storage(e)) => e.is_data_error(),
            RuntimeError::State(StateError::CorruptState { .. }) => true,
            RuntimeError::State(StateError::Overflow { .. }) => true,
            // The same input fails the same way after every restart.
            RuntimeError::NotAnInteger(_) => true,
            RuntimeError::Operator(OperatorError::NotAnInteger(_)) => true,
            _ => false,
        }
    }
}
