//! Messages between tasks and back-pressured sends over bounded channels.
//!
//! Records travel in batches, so the hot path is one channel operation per
//! [`BATCH_SIZE`] records. A barrier is a message of its own, between two
//! batches; it never overtakes records in the same channel (aligned mode).
//! Watermarks travel the same way, in band.

use std::time::Duration;

use crossbeam_channel::{SendTimeoutError, Sender};
use cutpoint_core::time::TimeSignal;
use cutpoint_core::Record;
use tokio_util::sync::CancellationToken;

use crate::{Barrier, RuntimeError};

/// Records per batch.
pub const BATCH_SIZE: usize = 1024;
/// Batches buffered per channel before the sender blocks (back-pressure).
pub const CHANNEL_CAPACITY: usize = 16;

/// A message on a data channel.
#[derive(Debug)]
pub enum Message {
    Records(Vec<Record>),
    Barrier(Barrier),
    /// A watermark, or the sender turned idle (event time only).
    Time(TimeSignal),
    EndOfStream,
}

/// Sends, blocking while the channel is full, until sent, cancelled or the
/// receiver is gone.
pub fn send(
    tx: &Sender<Message>,
    mut msg: Message,
    cancel: &CancellationToken,
) -> Result<(), RuntimeError> {
    loop {
        match tx.send_timeout(msg, Duration::from_millis(50)) {
            Ok(()) => return Ok(()),
            Err(SendTimeoutError::Timeout(m)) => {
                if cancel.is_cancelled() {
                    return Err(RuntimeError::Cancelled);
                }
                msg = m;
            }
            Err(SendTimeoutError::Disconnected(_)) => {
                return Err(if cancel.is_cancelled() {
                    RuntimeError::Cancelled
                } else {
                    RuntimeError::Disconnected
                })
            }
        }
    }
}
