//! The sending side of a hash exchange, and where a keyed task's updates
//! go ([`Output`]: the chained sink, or the exchange to the next stage).
//!
//! An [`Exchange`] routes each record to the downstream subtask owning its
//! key group, batching per target. Order on each channel is the order of
//! [`Exchange::push`] calls; [`Exchange::barrier`] sends what is batched
//! first, so a barrier never overtakes an earlier record in band. In
//! unaligned mode the barrier is also sent on every target's priority
//! channel first, ahead of what is queued; the in-band copy marks where
//! the cut lies on that channel.

use crossbeam_channel::Sender;
use cutpoint_core::metadata::PendingTransaction;
use cutpoint_core::stage::Forward;
use cutpoint_core::{keygroup, CheckpointId, Key, Record};
use tokio_util::sync::CancellationToken;

use crate::channel::{self, Message, BATCH_SIZE};
use crate::sink::Sink;
use crate::{Barrier, RuntimeError};

/// Hash-partitioned, batched sending to every subtask of the next operator.
pub(crate) struct Exchange {
    outputs: Vec<Sender<Message>>,
    /// Unaligned mode: each target's priority channel (else empty).
    priority: Vec<Sender<Barrier>>,
    batches: Vec<Vec<Record>>,
    max_parallelism: u32,
    cancel: CancellationToken,
}

impl Exchange {
    pub(crate) fn new(
        outputs: Vec<Sender<Message>>,
        priority: Vec<Sender<Barrier>>,
        max_parallelism: u32,
        cancel: CancellationToken,
    ) -> Self {
        let batches = outputs
            .iter()
            .map(|_| Vec::with_capacity(BATCH_SIZE))
            .collect();
        Self {
            outputs,
            priority,
            batches,
            max_parallelism,
            cancel,
        }
    }

    /// Routes `record` by its key group; sends the target's batch when full.
    #[inline]
    pub(crate) fn push(&mut self, record: Record) -> Result<(), RuntimeError> {
        let maxp = self.max_parallelism;
        let group = keygroup::key_group(record.key.stable_hash(), maxp);
        let t = keygroup::subtask_for_group(group, maxp, self.outputs.len() as u32) as usize;
        let batch = &mut self.batches[t];
        batch.push(record);
        if batch.len() == BATCH_SIZE {
            let full = std::mem::replace(batch, Vec::with_capacity(BATCH_SIZE));
            channel::send(&self.outputs[t], Message::Records(full), &self.cancel)?;
        }
        Ok(())
    }

    /// Sends every non-empty batch.
    pub(crate) fn flush(&mut self) -> Result<(), RuntimeError> {
        for (t, batch) in self.batches.iter_mut().enumerate() {
            if !batch.is_empty() {
                let full = std::mem::replace(batch, Vec::with_capacity(BATCH_SIZE));
                channel::send(&self.outputs[t], Message::Records(full), &self.cancel)?;
            }
        }
        Ok(())
    }

    /// Barrier `b` to every target: on the priority channels first (if
    /// any), then in band after everything pushed before it.
    pub(crate) fn barrier(&mut self, b: Barrier) -> Result<(), RuntimeError> {
        for p in &self.priority {
            // A target that is gone fails on the in-band send below.
            let _ = p.send(b);
        }
        self.flush()?;
        for out in &self.outputs {
            channel::send(out, Message::Barrier(b), &self.cancel)?;
        }
        Ok(())
    }

    /// The end of this input: what is batched, then end of stream.
    pub(crate) fn end(&mut self) -> Result<(), RuntimeError> {
        self.flush()?;
        for out in &self.outputs {
            channel::send(out, Message::EndOfStream, &self.cancel)?;
        }
        Ok(())
    }
}

/// Where a keyed task's updates `(key, new value)` go.
pub(crate) enum Output {
    /// The chained sink (the last stage).
    Sink(Sink),
    /// The next stage, each update made a record of it by `forward`.
    Next {
        exchange: Exchange,
        forward: Forward,
    },
}

impl Output {
    #[inline]
    pub(crate) fn emit(&mut self, key: &Key, value: i64) -> Result<(), RuntimeError> {
        match self {
            Output::Sink(s) => s.emit(key, value),
            Output::Next { exchange, forward } => exchange.push(forward.record(key, value)),
        }
    }

    /// When the task has no input ready (before it waits): what the
    /// exchange batched goes now, so updates never wait for a full batch
    /// (a sink buffers on its own).
    pub(crate) fn flush(&mut self) -> Result<(), RuntimeError> {
        match self {
            Output::Sink(_) => Ok(()),
            Output::Next { exchange, .. } => exchange.flush(),
        }
    }

    /// The synchronous part of snapshot `b`: the sink pre-commits (its
    /// pending transactions are returned), the exchange forwards `b`.
    pub(crate) fn snapshot(&mut self, b: Barrier) -> Result<Vec<PendingTransaction>, RuntimeError> {
        match self {
            Output::Sink(s) => s.snapshot(b.id),
            Output::Next { exchange, .. } => exchange.barrier(b).map(|()| Vec::new()),
        }
    }

    pub(crate) fn checkpoint_complete(&mut self, id: CheckpointId) -> Result<(), RuntimeError> {
        match self {
            Output::Sink(s) => s.checkpoint_complete(id),
            Output::Next { .. } => Ok(()),
        }
    }

    /// Every input ended and every snapshot succeeded.
    pub(crate) fn finish(&mut self) -> Result<(), RuntimeError> {
        match self {
            Output::Sink(s) => s.finish(),
            Output::Next { exchange, .. } => exchange.end(),
        }
    }
}
