//! Task loops: sources inject barriers; aggregate tasks align them, take
//! the synchronous snapshot and hand the rest to their snapshot worker.
//!
//! Aligned (exactly-once) barrier handling: once barrier `n` arrived on an
//! input channel, that channel is not read until barrier `n` arrived on every
//! input that has not ended; then the task snapshots "everything before
//! barrier n" and unblocks all inputs. A task with one input never blocks.
//!
//! At-least-once: no input is ever blocked; the task snapshots when the last
//! barrier `n` arrived. Records read from an early input in between are in
//! the snapshot and are counted (`records_beyond_barrier`): after a restore
//! they are replayed, so they count twice.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};
use cutpoint_core::metadata::{PendingTransaction, SourceOffset};
use cutpoint_core::spec::{CheckpointingMode, SourceSpec};
use cutpoint_core::{
    keygroup, now_millis, CheckpointId, JobId, JobSpec, KeyGroupRange, Record, SubtaskState, TaskId,
};
use cutpoint_state::snapshot::{self, LocalDirs, RestoredState};
use cutpoint_storage::CheckpointStorage;
use tokio_util::sync::CancellationToken;

use crate::channel::{self, Message, BATCH_SIZE};
use crate::sink::Sink;
use crate::source::open_reader;
use crate::worker::{AbortRegistry, SnapshotJob, Worker, WorkerSignal};
use crate::{Barrier, RuntimeError, TaskEvent};

/// What every task of one execution shares.
pub(crate) struct TaskContext {
    pub spec: Arc<JobSpec>,
    pub storage: CheckpointStorage,
    pub events: tokio::sync::mpsc::UnboundedSender<TaskEvent>,
    pub cancel: CancellationToken,
    pub rt: tokio::runtime::Handle,
    pub aborts: Arc<AbortRegistry>,
    pub attempt: u32,
    pub any_completed: Arc<AtomicBool>,
}

/// Live counters of one task, read by the API while the job runs (one
/// atomic update per batch, not per record).
#[derive(Debug, Default)]
pub struct TaskCounters {
    records: AtomicU64,
    offset: AtomicU64,
}

impl TaskCounters {
    fn add(&self, records: u64, offset: Option<u64>) {
        self.records.fetch_add(records, Ordering::Relaxed);
        if let Some(o) = offset {
            self.offset.store(o, Ordering::Relaxed);
        }
    }

    /// Records read (sources) or processed (aggregates) by this attempt.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// A source's current offset (0 for other tasks).
    pub fn offset(&self) -> u64 {
        self.offset.load(Ordering::Relaxed)
    }
}

/// Commands to a source task.
#[derive(Debug)]
pub(crate) enum SourceControl {
    Trigger(Barrier),
    /// A checkpoint taken after every source reached its end completed:
    /// end the stream (see [`cutpoint_core::JobSpec::takes_final_checkpoint`]).
    Finish,
}

pub(crate) struct SourceTask {
    pub ctx: Arc<TaskContext>,
    pub task: TaskId,
    pub counters: Arc<TaskCounters>,
    pub from: Option<SourceOffset>,
    pub outputs: Vec<Sender<Message>>,
    pub control: Receiver<SourceControl>,
}

impl SourceTask {
    pub(crate) fn run(self) -> Result<(), RuntimeError> {
        let ctx = &self.ctx;
        let spec = &ctx.spec;
        let partition = self.task.subtask.0;
        let mut reader = open_reader(spec, partition, self.from)?;
        let _ = ctx.events.send(TaskEvent::Started {
            task: self.task.clone(),
            at: Instant::now(),
        });
        let targets = self.outputs.len() as u32;
        let maxp = spec.max_parallelism;
        let mut batches: Vec<Vec<Record>> = (0..targets)
            .map(|_| Vec::with_capacity(BATCH_SIZE))
            .collect();
        let mut buf = Vec::with_capacity(BATCH_SIZE);
        let mut records: u64 = 0;
        let (read_size, pace) = match &spec.source {
            SourceSpec::Generator {
                rate_per_s: Some(r),
                partitions,
                ..
            } => {
                let per = (*r / *partitions as u64).max(1);
                ((per / 100).clamp(1, BATCH_SIZE as u64) as usize, Some(per))
            }
            _ => (BATCH_SIZE, None),
        };
        let started = Instant::now();
        loop {
            while let Ok(control) = self.control.try_recv() {
                if let SourceControl::Trigger(barrier) = control {
                    self.inject(barrier, &mut batches, reader.offset())?;
                }
            }
            if ctx.cancel.is_cancelled() {
                return Err(RuntimeError::Cancelled);
            }
            buf.clear();
            let more = reader.read_batch(&mut buf, read_size)?;
            records += buf.len() as u64;
            self.counters
                .add(buf.len() as u64, Some(reader.offset().offset));
            for record in buf.drain(..) {
                let group = keygroup::key_group(record.key.stable_hash(), maxp);
                let t = keygroup::subtask_for_group(group, maxp, targets) as usize;
                let batch = &mut batches[t];
                batch.push(record);
                if batch.len() == BATCH_SIZE {
                    let full = std::mem::replace(batch, Vec::with_capacity(BATCH_SIZE));
                    channel::send(&self.outputs[t], Message::Records(full), &ctx.cancel)?;
                }
            }
            if !more {
                break;
            }
            if let Some(per_s) = pace {
                let due = Duration::from_secs_f64(records as f64 / per_s as f64);
                let elapsed = started.elapsed();
                if due > elapsed {
                    std::thread::sleep((due - elapsed).min(Duration::from_millis(20)));
                }
            }
        }
        if spec.takes_final_checkpoint() {
            // Stay in the job until a checkpoint that covers the whole input
            // completed, so no sink commits output a restore could replay.
            let _ = ctx.events.send(TaskEvent::EndOfInput {
                task: self.task.clone(),
            });
            loop {
                match self.control.recv_timeout(Duration::from_millis(20)) {
                    Ok(SourceControl::Trigger(barrier)) => {
                        self.inject(barrier, &mut batches, reader.offset())?
                    }
                    Ok(SourceControl::Finish) => break,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        if ctx.cancel.is_cancelled() {
                            return Err(RuntimeError::Cancelled);
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                        return Err(RuntimeError::Cancelled)
                    }
                }
            }
        }
        for (t, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() {
                channel::send(&self.outputs[t], Message::Records(batch), &ctx.cancel)?;
            }
            channel::send(&self.outputs[t], Message::EndOfStream, &ctx.cancel)?;
        }
        let _ = ctx.events.send(TaskEvent::Finished {
            task: self.task,
            records,
            table: None,
        });
        Ok(())
    }

    /// Injects `barrier`: sends what is batched, acknowledges with the
    /// offset it was injected at, then sends the barrier downstream.
    fn inject(
        &self,
        barrier: Barrier,
        batches: &mut [Vec<Record>],
        offset: SourceOffset,
    ) -> Result<(), RuntimeError> {
        let ctx = &self.ctx;
        if let Some(d) = ctx
            .spec
            .inject_barrier_delay
            .as_ref()
            .filter(|d| d.partition == self.task.subtask.0)
        {
            std::thread::sleep(Duration::from_millis(d.delay_ms));
        }
        cutpoint_core::failpoint::check("source::inject_barrier")?;
        for (t, batch) in batches.iter_mut().enumerate() {
            if !batch.is_empty() {
                let full = std::mem::replace(batch, Vec::with_capacity(BATCH_SIZE));
                channel::send(&self.outputs[t], Message::Records(full), &ctx.cancel)?;
            }
        }
        let _ = ctx.events.send(TaskEvent::Ack {
            checkpoint: barrier.id,
            state: Box::new(SubtaskState {
                source_offset: Some(offset),
                ack_timestamp: now_millis(),
                ..SubtaskState::empty(self.task.clone())
            }),
        });
        for out in &self.outputs {
            channel::send(out, Message::Barrier(barrier), &ctx.cancel)?;
        }
        Ok(())
    }
}

pub(crate) struct AggregateTask {
    pub ctx: Arc<TaskContext>,
    pub task: TaskId,
    pub counters: Arc<TaskCounters>,
    pub range: KeyGroupRange,
    /// State of the old aggregate subtasks to restore from (empty: fresh).
    pub restore: Vec<SubtaskState>,
    pub dirs: LocalDirs,
    pub inputs: Vec<Receiver<Message>>,
    pub signals: Receiver<WorkerSignal>,
    /// Completed checkpoints, for the sink's commits.
    pub commits: Receiver<CheckpointId>,
}

/// Bookkeeping for the barrier in progress.
struct Alignment {
    barrier: Option<Barrier>,
    first_arrival: Option<Instant>,
    /// Inputs that delivered the barrier.
    arrived: Vec<bool>,
    /// Aligned mode: arrived inputs are not read until all arrived.
    block: bool,
    /// Records read from inputs after their barrier (at-least-once mode).
    beyond: u64,
}

impl Alignment {
    fn readable(&self, input: usize) -> bool {
        !(self.block && self.arrived[input])
    }
}

impl AggregateTask {
    /// Restores (or opens empty) state; errors here are restore failures.
    pub(crate) fn open_state(&self) -> Result<RestoredState, RuntimeError> {
        let maxp = self.ctx.spec.max_parallelism;
        let state = if self.restore.is_empty() {
            snapshot::open_empty(&self.dirs, maxp)?
        } else {
            snapshot::restore(
                &self.ctx.rt,
                &self.ctx.storage,
                &self.ctx.spec.job_id,
                &self.restore,
                self.range,
                &self.dirs,
                maxp,
            )?
        };
        Ok(state)
    }

    pub(crate) fn run(self, state: RestoredState) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let RestoredState {
            store,
            mut table,
            confirmed,
        } = state;
        let pending: &[PendingTransaction] = self
            .restore
            .iter()
            .find(|s| s.task.subtask == self.task.subtask)
            .map(|s| s.pending_transactions.as_slice())
            .unwrap_or(&[]);
        let mut sink = Sink::open(&ctx.spec.sink, self.task.subtask.0, pending)?;
        let (snap_tx, snap_rx) = crossbeam_channel::unbounded::<SnapshotJob>();
        let worker = Worker {
            ctx: ctx.clone(),
            task: self.task.clone(),
            range: self.range,
            store,
            job: JobId::clone(&ctx.spec.job_id),
            signals: self.signals.clone(),
            confirmed,
            pending: Default::default(),
        };
        let worker_thread = std::thread::Builder::new()
            .name(format!("snap-{}", self.task))
            .spawn(move || worker.run(snap_rx))
            .expect("spawn snapshot worker");
        let _ = ctx.events.send(TaskEvent::Started {
            task: self.task.clone(),
            at: Instant::now(),
        });

        let n = self.inputs.len();
        let mut ended = vec![false; n];
        let mut align = Alignment {
            barrier: None,
            first_arrival: None,
            arrived: vec![false; n],
            block: ctx.spec.checkpoint.mode == CheckpointingMode::ExactlyOnce,
            beyond: 0,
        };
        let inject = ctx
            .spec
            .inject_failure
            .as_ref()
            .filter(|f| ctx.attempt == 0 && f.subtask == self.task.subtask.0);
        let mut records: u64 = 0;
        let mut snapshots: u64 = 0;
        let result = loop {
            if let Err(e) = self
                .commits
                .try_iter()
                .try_for_each(|id| sink.checkpoint_complete(id))
            {
                break Err(e);
            }
            if ended.iter().all(|e| *e) {
                break Ok(());
            }
            let mut sel = Select::new();
            let mut index = Vec::with_capacity(n);
            for (i, rx) in self.inputs.iter().enumerate() {
                if !ended[i] && align.readable(i) {
                    sel.recv(rx);
                    index.push(i);
                }
            }
            let op = match sel.select_timeout(Duration::from_millis(50)) {
                Ok(op) => op,
                Err(_) => {
                    if ctx.cancel.is_cancelled() {
                        break Err(RuntimeError::Cancelled);
                    }
                    continue;
                }
            };
            let i = index[op.index()];
            let msg = match op.recv(&self.inputs[i]) {
                Ok(m) => m,
                Err(_) => {
                    break Err(if ctx.cancel.is_cancelled() {
                        RuntimeError::Cancelled
                    } else {
                        RuntimeError::Disconnected
                    })
                }
            };
            match msg {
                Message::Records(batch) => {
                    records += batch.len() as u64;
                    if align.arrived[i] {
                        // Read after this input's barrier: at-least-once only.
                        align.beyond += batch.len() as u64;
                    }
                    self.counters.add(batch.len() as u64, None);
                    let mut failed = None;
                    for r in batch {
                        let v = table.add(r.key.clone(), r.value);
                        if let Err(e) = sink.emit(&r.key, v) {
                            failed = Some(e);
                            break;
                        }
                    }
                    if let Some(e) = failed {
                        break Err(e);
                    }
                    if let Some(f) = inject {
                        let ready = if f.after_completed_checkpoint {
                            ctx.any_completed.load(Ordering::SeqCst)
                        } else {
                            snapshots > 0
                        };
                        if records >= f.after_records && ready {
                            break Err(RuntimeError::Injected);
                        }
                    }
                }
                Message::Barrier(b) => match align.barrier {
                    // An older barrier after a newer one: that checkpoint
                    // was given up here already.
                    Some(cur) if b.id < cur.id => {}
                    Some(cur) if b.id == cur.id => align.arrived[i] = true,
                    // None, or a newer barrier overtook the one in progress
                    // (at-least-once with concurrent or expired checkpoints):
                    // align the newer one; the older cannot complete here.
                    _ => {
                        align.barrier = Some(b);
                        align.first_arrival = Some(Instant::now());
                        align.beyond = 0;
                        align.arrived.iter_mut().for_each(|a| *a = false);
                        align.arrived[i] = true;
                    }
                },
                Message::EndOfStream => ended[i] = true,
            }
            // Snapshot once every live input delivered the barrier.
            if let Some(barrier) = align.barrier {
                if (0..n).all(|j| align.arrived[j] || ended[j]) {
                    if let Err(e) = cutpoint_core::failpoint::check("task::align") {
                        break Err(e.into());
                    }
                    let alignment = align.first_arrival.map(|t| t.elapsed()).unwrap_or_default();
                    let t0 = Instant::now();
                    if let Err(e) = cutpoint_core::failpoint::check("task::sync_phase") {
                        break Err(e.into());
                    }
                    let delta = table.freeze();
                    let pending_transactions = match sink.snapshot(barrier.id) {
                        Ok(p) => p,
                        Err(e) => break Err(e),
                    };
                    snapshots += 1;
                    let job = SnapshotJob {
                        barrier,
                        delta,
                        sync_duration: t0.elapsed(),
                        alignment_duration: alignment,
                        records_beyond_barrier: align.beyond,
                        pending_transactions,
                    };
                    if snap_tx.send(job).is_err() {
                        break Err(RuntimeError::Internal("snapshot worker stopped".into()));
                    }
                    align.barrier = None;
                    align.first_arrival = None;
                    align.beyond = 0;
                    align.arrived.iter_mut().for_each(|b| *b = false);
                }
            }
        };
        drop(snap_tx);
        let worker_result = worker_thread.join();
        result?;
        match worker_result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(RuntimeError::Internal("snapshot worker panicked".into())),
        }
        // Only a task whose snapshots all succeeded makes its last epoch final.
        sink.finish()?;
        let _ = ctx.events.send(TaskEvent::Finished {
            task: self.task,
            records,
            table: Some(Box::new(table)),
        });
        Ok(())
    }
}
