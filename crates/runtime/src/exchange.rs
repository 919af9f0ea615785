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

use std::time::{Duration, Instant};

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
    /// When what is batched was last sent.
    flushed_at: Instant,
}

/// The longest a batched record waits while the sender stays busy (Flink's
/// buffer timeout); an idle sender flushes at once.
pub(crate) const LINGER: Duration = Duration::from_millis(10);

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
            flushed_at: Instant::now(),
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
        self.flushed_at = Instant::now();
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
    /// exchange batched goes now (a sink buffers on its own); a busy task
    /// flushes after [`LINGER`] ([`Output::flush_if_lingering`]).
    pub(crate) fn flush(&mut self) -> Result<(), RuntimeError> {
        match self {
            Output::Sink(_) => Ok(()),
            Output::Next { exchange, .. } => exchange.flush(),
        }
    }

    /// While the task stays busy: flushes once what is batched waited
    /// [`LINGER`] (so a stage that rarely fills a batch, e.g. a min, still
    /// sends its updates promptly).
    pub(crate) fn flush_if_lingering(&mut self, now: Instant) -> Result<(), RuntimeError> {
        match self {
            Output::Next { exchange, .. } if now >= exchange.flushed_at + LINGER => {
                exchange.flush()
            }
            _ => Ok(()),
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

#[cfg(test)]
mod tests {
    use cutpoint_core::stage::{Forward, Rekey, StageAggregate};

    use super::*;

    #[test]
    fn a_busy_stage_sends_what_it_batched_after_the_linger() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let exchange = Exchange::new(vec![tx], Vec::new(), 128, CancellationToken::new());
        let start = exchange.flushed_at;
        let forward = Forward {
            rekey: Rekey::Key,
            aggregate: StageAggregate::Sum,
        };
        let mut out = Output::Next { exchange, forward };
        out.emit(&Key::Int(7), 3).unwrap();
        out.flush_if_lingering(start + LINGER / 2).unwrap();
        assert!(rx.try_recv().is_err(), "batched, not sent yet");
        out.flush_if_lingering(start + LINGER).unwrap();
        match rx.try_recv() {
            Ok(Message::Records(batch)) => assert_eq!(
                batch,
                vec![Record {
                    key: Key::Int(7),
                    value: 3
                }]
            ),
            other => panic!("{other:?}"),
        }
        // A barrier sends what is batched ahead of itself.
        out.emit(&Key::Int(8), 1).unwrap();
        let b = Barrier {
            id: CheckpointId(1),
            checkpoint_type: cutpoint_core::CheckpointType::Full,
            trigger_timestamp: 0,
            reuse: None,
        };
        out.snapshot(b).unwrap();
        assert!(matches!(rx.try_recv(), Ok(Message::Records(r)) if r.len() == 1));
        assert!(matches!(rx.try_recv(), Ok(Message::Barrier(x)) if x.id == CheckpointId(1)));
    }
}
