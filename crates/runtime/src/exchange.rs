//! The sending side of a hash exchange, and where a keyed task's updates
//! go ([`Output`]: the chained sink, or the exchange to the next stage —
//! [`Downstream`] — and the late records' sink).
//!
//! What carries the messages is a [`Transport`]: in-process bounded
//! channels today ([`LocalTransport`]); a network transport to tasks in
//! another process would implement the same trait (docs/scaling.md).
//! Routing, batching and barrier order are decided here, above it.
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
use cutpoint_core::time::TimeSignal;
use cutpoint_core::{keygroup, CheckpointId, Key, Record, Value};
use tokio_util::sync::CancellationToken;

use crate::channel::{self, Message, BATCH_SIZE};
use crate::sink::Sink;
use crate::{Barrier, RuntimeError};
use cutpoint_operator::stateless::Steps;

/// Carries an exchange's messages to the subtasks of the next operator.
pub(crate) trait Transport: Send {
    /// Downstream subtasks.
    fn targets(&self) -> usize;
    /// Sends `msg` to target `t` after everything sent to it before,
    /// waiting while its queue is full; fails when the job is cancelled or
    /// the target is gone.
    fn send(&mut self, t: usize, msg: Message) -> Result<(), RuntimeError>;
    /// Unaligned mode: barrier `b` to every target ahead of what is queued
    /// (no-op otherwise; a target that is gone fails on its next `send`).
    fn overtake(&mut self, b: Barrier);
}

/// In-process bounded channels, one per target, and (unaligned) one
/// priority channel per target.
pub(crate) struct LocalTransport {
    pub(crate) outputs: Vec<Sender<Message>>,
    pub(crate) priority: Vec<Sender<Barrier>>,
    pub(crate) cancel: CancellationToken,
}

impl Transport for LocalTransport {
    fn targets(&self) -> usize {
        self.outputs.len()
    }

    fn send(&mut self, t: usize, msg: Message) -> Result<(), RuntimeError> {
        channel::send(&self.outputs[t], msg, &self.cancel)
    }

    fn overtake(&mut self, b: Barrier) {
        for p in &self.priority {
            let _ = p.send(b);
        }
    }
}

/// Hash-partitioned, batched sending to every subtask of the next operator.
pub(crate) struct Exchange {
    transport: Box<dyn Transport>,
    batches: Vec<Vec<Record>>,
    max_parallelism: u32,
    /// When what is batched was last sent.
    flushed_at: Instant,
}

/// The longest a batched record waits while the sender stays busy (Flink's
/// buffer timeout); an idle sender flushes at once.
pub(crate) const LINGER: Duration = Duration::from_millis(10);

impl Exchange {
    pub(crate) fn new(transport: Box<dyn Transport>, max_parallelism: u32) -> Self {
        let batches = (0..transport.targets())
            .map(|_| Vec::with_capacity(BATCH_SIZE))
            .collect();
        Self {
            transport,
            batches,
            max_parallelism,
            flushed_at: Instant::now(),
        }
    }

    /// Routes `record` by its key group; sends the target's batch when full.
    #[inline]
    pub(crate) fn push(&mut self, record: Record) -> Result<(), RuntimeError> {
        let maxp = self.max_parallelism;
        let group = keygroup::key_group(record.key.stable_hash(), maxp);
        let t = keygroup::subtask_for_group(group, maxp, self.batches.len() as u32) as usize;
        let batch = &mut self.batches[t];
        batch.push(record);
        if batch.len() == BATCH_SIZE {
            let full = std::mem::replace(batch, Vec::with_capacity(BATCH_SIZE));
            self.transport.send(t, Message::Records(full))?;
        }
        Ok(())
    }

    /// Sends every non-empty batch.
    pub(crate) fn flush(&mut self) -> Result<(), RuntimeError> {
        self.flushed_at = Instant::now();
        for (t, batch) in self.batches.iter_mut().enumerate() {
            if !batch.is_empty() {
                let full = std::mem::replace(batch, Vec::with_capacity(BATCH_SIZE));
                self.transport.send(t, Message::Records(full))?;
            }
        }
        Ok(())
    }

    /// Barrier `b` to every target: on the priority channels first (if
    /// any), then in band after everything pushed before it.
    pub(crate) fn barrier(&mut self, b: Barrier) -> Result<(), RuntimeError> {
        self.transport.overtake(b);
        self.flush()?;
        for t in 0..self.batches.len() {
            self.transport.send(t, Message::Barrier(b))?;
        }
        Ok(())
    }

    /// A watermark (or idleness) to every target, after what is batched.
    pub(crate) fn time(&mut self, signal: TimeSignal) -> Result<(), RuntimeError> {
        self.flush()?;
        for t in 0..self.batches.len() {
            self.transport.send(t, Message::Time(signal))?;
        }
        Ok(())
    }

    /// The end of this input: what is batched, then end of stream.
    pub(crate) fn end(&mut self) -> Result<(), RuntimeError> {
        self.flush()?;
        for t in 0..self.batches.len() {
            self.transport.send(t, Message::EndOfStream)?;
        }
        Ok(())
    }
}

/// Where a keyed task's updates `(key, new value)` go (besides its late
/// records, [`Output`]).
pub(crate) enum Downstream {
    /// The chained sink (the last stage).
    Sink(Sink),
    /// The next stage, each update made a record of it by `forward`,
    /// after the next stage's stateless steps (if any).
    Next {
        exchange: Exchange,
        forward: Forward,
        steps: Steps,
        /// Reused for an update's records through the steps.
        updates: Vec<Record>,
    },
}

impl Downstream {
    /// An update at event time `ts` (the time of the record or timer that
    /// caused it; [`Record::NO_TIME`] without event time): the next stage
    /// gets it at that time, a sink writes key and value.
    #[inline]
    pub(crate) fn emit(&mut self, key: &Key, value: &Value, ts: i64) -> Result<(), RuntimeError> {
        match self {
            Downstream::Sink(s) => s.emit(key, value),
            Downstream::Next {
                exchange,
                forward,
                steps,
                updates,
            } => {
                if steps.is_empty() {
                    return exchange.push(forward.record(key, value)?.at(ts));
                }
                updates.clear();
                updates.push(Record::new(key.clone(), value.clone()).at(ts));
                steps.apply(updates);
                for u in updates.drain(..) {
                    exchange.push(forward.record(&u.key, &u.value)?.at(u.ts))?;
                }
                Ok(())
            }
        }
    }

    /// [`Downstream::emit`] of an integer (the integer table's hot path: no
    /// `Value` is built for the discard sink; measured on PV).
    #[inline]
    pub(crate) fn emit_int(&mut self, key: &Key, value: i64, ts: i64) -> Result<(), RuntimeError> {
        match self {
            Downstream::Sink(Sink::Discard) => Ok(()),
            _ => self.emit(key, &Value::Int(value), ts),
        }
    }

    /// When the task has no input ready (before it waits): what the
    /// exchange batched goes now (a sink buffers on its own); a busy task
    /// flushes after [`LINGER`] ([`Downstream::flush_if_lingering`]).
    pub(crate) fn flush(&mut self) -> Result<(), RuntimeError> {
        match self {
            Downstream::Sink(_) => Ok(()),
            Downstream::Next { exchange, .. } => exchange.flush(),
        }
    }

    /// While the task stays busy: flushes once what is batched waited
    /// [`LINGER`] (so a stage that rarely fills a batch, e.g. a min, still
    /// sends its updates promptly).
    pub(crate) fn flush_if_lingering(&mut self, now: Instant) -> Result<(), RuntimeError> {
        match self {
            Downstream::Next { exchange, .. } if now >= exchange.flushed_at + LINGER => {
                exchange.flush()
            }
            _ => Ok(()),
        }
    }

    /// The synchronous part of snapshot `b`: the sink pre-commits (its
    /// pending transactions are returned), the exchange forwards `b`.
    pub(crate) fn snapshot(&mut self, b: Barrier) -> Result<Vec<PendingTransaction>, RuntimeError> {
        match self {
            Downstream::Sink(s) => s.snapshot(b.id),
            Downstream::Next { exchange, .. } => exchange.barrier(b).map(|()| Vec::new()),
        }
    }

    /// The task's watermark moved (or it turned idle): on to the next
    /// stage, after the updates before it; a sink has no use for it.
    pub(crate) fn time(&mut self, signal: TimeSignal) -> Result<(), RuntimeError> {
        match self {
            Downstream::Sink(_) => Ok(()),
            Downstream::Next { exchange, .. } => exchange.time(signal),
        }
    }

    pub(crate) fn checkpoint_complete(&mut self, id: CheckpointId) -> Result<(), RuntimeError> {
        match self {
            Downstream::Sink(s) => s.checkpoint_complete(id),
            Downstream::Next { .. } => Ok(()),
        }
    }

    /// Every input ended and every snapshot succeeded.
    pub(crate) fn finish(&mut self) -> Result<(), RuntimeError> {
        match self {
            Downstream::Sink(s) => s.finish(),
            Downstream::Next { exchange, .. } => exchange.end(),
        }
    }
}

/// A keyed task's outputs: its updates [`Downstream`], and the records
/// its operator drops as late to the job's `late_sink` (the first keyed
/// stage's subtasks only; dropped without one). The late sink takes part
/// in checkpoints like the others: its transactions carry the job's
/// [`cutpoint_core::JobSpec::late_sink_index`].
pub(crate) struct Output {
    to: Downstream,
    late: Option<(Sink, u32)>,
    /// Reused: the late records taken from the operator.
    late_records: Vec<Record>,
}

impl From<Downstream> for Output {
    fn from(to: Downstream) -> Self {
        Self {
            to,
            late: None,
            late_records: Vec::new(),
        }
    }
}

impl Output {
    /// With `late` as the late records' sink, its transactions carrying
    /// `index`.
    pub(crate) fn with_late_sink(mut self, late: Option<Sink>, index: u32) -> Self {
        self.late = late.map(|s| (s, index));
        self
    }

    #[inline]
    pub(crate) fn emit(&mut self, key: &Key, value: &Value, ts: i64) -> Result<(), RuntimeError> {
        self.to.emit(key, value, ts)
    }

    #[inline]
    pub(crate) fn emit_int(&mut self, key: &Key, value: i64, ts: i64) -> Result<(), RuntimeError> {
        self.to.emit_int(key, value, ts)
    }

    /// The records the operator dropped as late (`take` moves them here):
    /// each `(key, [ts, value])` to the late sink, if the job has one.
    pub(crate) fn late(&mut self, take: impl FnOnce(&mut Vec<Record>)) -> Result<(), RuntimeError> {
        take(&mut self.late_records);
        let Some((sink, _)) = &mut self.late else {
            self.late_records.clear();
            return Ok(());
        };
        for r in self.late_records.drain(..) {
            sink.emit(&r.key, &Value::list([Value::Int(r.ts), r.value]))?;
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<(), RuntimeError> {
        self.to.flush()
    }

    pub(crate) fn flush_if_lingering(&mut self, now: Instant) -> Result<(), RuntimeError> {
        self.to.flush_if_lingering(now)
    }

    /// [`Downstream::snapshot`], and the late sink pre-commits too.
    pub(crate) fn snapshot(&mut self, b: Barrier) -> Result<Vec<PendingTransaction>, RuntimeError> {
        let mut pending = self.to.snapshot(b)?;
        if let Some((sink, index)) = &mut self.late {
            let late = sink.snapshot(b.id)?;
            pending.extend(
                late.into_iter()
                    .map(|t| PendingTransaction { sink: *index, ..t }),
            );
        }
        Ok(pending)
    }

    pub(crate) fn time(&mut self, signal: TimeSignal) -> Result<(), RuntimeError> {
        self.to.time(signal)
    }

    pub(crate) fn checkpoint_complete(&mut self, id: CheckpointId) -> Result<(), RuntimeError> {
        self.to.checkpoint_complete(id)?;
        match &mut self.late {
            Some((sink, _)) => sink.checkpoint_complete(id),
            None => Ok(()),
        }
    }

    /// Every input ended and every snapshot succeeded.
    pub(crate) fn finish(&mut self) -> Result<(), RuntimeError> {
        self.to.finish()?;
        match &mut self.late {
            Some((sink, _)) => sink.finish(),
            None => Ok(()),
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
        let local = LocalTransport {
            outputs: vec![tx],
            priority: Vec::new(),
            cancel: CancellationToken::new(),
        };
        let exchange = Exchange::new(Box::new(local), 128);
        let start = exchange.flushed_at;
        let forward = Forward {
            rekey: Rekey::Key,
            aggregate: StageAggregate::Sum,
        };
        let mut out = Output::from(Downstream::Next {
            exchange,
            forward,
            steps: Steps::default(),
            updates: Vec::new(),
        });
        out.emit(&Key::Int(7), &Value::Int(3), Record::NO_TIME)
            .unwrap();
        out.flush_if_lingering(start + LINGER / 2).unwrap();
        assert!(rx.try_recv().is_err(), "batched, not sent yet");
        out.flush_if_lingering(start + LINGER).unwrap();
        match rx.try_recv() {
            Ok(Message::Records(batch)) => assert_eq!(batch, vec![Record::int(Key::Int(7), 3)]),
            other => panic!("{other:?}"),
        }
        // A barrier sends what is batched ahead of itself.
        out.emit(&Key::Int(8), &Value::Int(1), Record::NO_TIME)
            .unwrap();
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

    #[test]
    fn the_next_stages_steps_run_on_each_update_before_its_key_by() {
        use cutpoint_operator::stateless::Step;
        let (tx, rx) = crossbeam_channel::unbounded();
        let local = LocalTransport {
            outputs: vec![tx],
            priority: Vec::new(),
            cancel: CancellationToken::new(),
        };
        // Updates of 10 or more, keyed by their value's tens.
        let steps = Steps::new(vec![
            Step::Filter(std::sync::Arc::new(|r: &Record| {
                r.int_value().unwrap() >= 10
            })),
            Step::Map(std::sync::Arc::new(|r: Record| {
                let tens = r.int_value().unwrap() / 10;
                Record::new(Key::Int(tens), r.value)
            })),
        ]);
        let mut out = Output::from(Downstream::Next {
            exchange: Exchange::new(Box::new(local), 128),
            forward: Forward {
                rekey: Rekey::Key,
                aggregate: StageAggregate::Sum,
            },
            steps,
            updates: Vec::new(),
        });
        for (k, v) in [(1, 5), (2, 12), (3, 31)] {
            out.emit(&Key::Int(k), &Value::Int(v), Record::NO_TIME)
                .unwrap();
        }
        out.flush().unwrap();
        match rx.try_recv() {
            Ok(Message::Records(batch)) => assert_eq!(
                batch,
                vec![Record::int(Key::Int(1), 12), Record::int(Key::Int(3), 31)]
            ),
            other => panic!("{other:?}"),
        }
    }

    /// What an exchange hands its transport, recorded.
    #[derive(Default, Clone)]
    struct Recorded(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    struct Recording {
        targets: usize,
        log: Recorded,
    }

    impl Transport for Recording {
        fn targets(&self) -> usize {
            self.targets
        }
        fn send(&mut self, t: usize, msg: Message) -> Result<(), RuntimeError> {
            let m = match msg {
                Message::Records(r) => format!("{t}:records({})", r.len()),
                Message::Barrier(b) => format!("{t}:barrier({})", b.id),
                Message::EndOfStream => format!("{t}:end"),
                Message::Time(s) => format!("{t}:{s:?}"),
            };
            self.log.0.lock().unwrap().push(m);
            Ok(())
        }
        fn overtake(&mut self, b: Barrier) {
            self.log
                .0
                .lock()
                .unwrap()
                .push(format!("*:overtake({})", b.id));
        }
    }

    /// Each record goes to the subtask of its key group; a barrier first
    /// overtakes (unaligned), then follows everything batched before it
    /// on every target; a watermark follows what was batched before it
    /// on every target too; the end comes last.
    #[test]
    fn routing_and_barrier_order_are_decided_above_the_transport() {
        let log = Recorded::default();
        let transport = Recording {
            targets: 2,
            log: log.clone(),
        };
        let mut x = Exchange::new(Box::new(transport), 128);
        let owner = |k: i64| {
            let g = keygroup::key_group(Key::Int(k).stable_hash(), 128);
            keygroup::subtask_for_group(g, 128, 2)
        };
        let a = (0..).find(|k| owner(*k) == 0);
        let b = (0..).find(|k| owner(*k) == 1);
        for _ in 0..3 {
            x.push(Record::int(Key::Int(a.unwrap()), 1)).unwrap();
        }
        x.push(Record::int(Key::Int(b.unwrap()), 1)).unwrap();
        let barrier = Barrier {
            id: CheckpointId(4),
            checkpoint_type: cutpoint_core::CheckpointType::Full,
            trigger_timestamp: 0,
            reuse: None,
        };
        x.barrier(barrier).unwrap();
        x.push(Record::int(Key::Int(b.unwrap()), 1)).unwrap();
        x.time(TimeSignal::Watermark(9)).unwrap();
        x.end().unwrap();
        assert_eq!(
            *log.0.lock().unwrap(),
            vec![
                "*:overtake(4)",
                "0:records(3)",
                "1:records(1)",
                "0:barrier(4)",
                "1:barrier(4)",
                "1:records(1)",
                "0:Watermark(9)",
                "1:Watermark(9)",
                "0:end",
                "1:end"
            ]
        );
    }
}
