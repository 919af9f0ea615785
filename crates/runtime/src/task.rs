//! Task loops: sources inject barriers; aggregate tasks carry out the
//! barrier decisions of [`crate::barrier::BarrierHandler`] (which input to
//! read, when to snapshot, when to start an unaligned snapshot), take the
//! synchronous snapshot and hand the rest to their snapshot worker.
//!
//! Aligned and at-least-once snapshots: the handler says when every live
//! input delivered barrier `n`; the task freezes the state's delta and
//! pre-commits the sink (`AggregateTask::sync_phase`).
//!
//! Unaligned (exactly-once): barrier `n` also arrives on a priority channel
//! that overtakes the queued records; the task snapshots at once and
//! collects, as channel state, every record still ahead of `n` on each
//! input until `n` arrives there in band; the worker persists them with the
//! snapshot and a restore replays them first. The collection lives here
//! (`Collecting`); which barrier starts when is the handler's decision.
//!
//! Under a memory budget the working table evicts clean entries (read
//! through from RocksDB) and hands dirty ones to the worker to write
//! behind; past [`BUDGET_CAP`] budgets the task waits for the worker.
//!
//! Shared with the snapshot workers: [`crate::context`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};
use cutpoint_core::metadata::{PendingTransaction, SourceOffset};
use cutpoint_core::spec::SourceSpec;
use cutpoint_core::stage::KeyedStage;
use cutpoint_core::{now_millis, CheckpointId, JobId, KeyGroupRange, Record, SubtaskState, TaskId};
use cutpoint_state::snapshot::{self, ConfirmedFiles, LocalDirs};
use cutpoint_state::{RocksStore, StateError};
use tokio_util::sync::CancellationToken;

use crate::barrier::{BarrierHandler, Decision};
use crate::channel::{Message, BATCH_SIZE};
use crate::context::{TaskContext, TaskCounters};
use crate::exchange::{Exchange, Output};
use crate::keyed::{input_of, Delta, KeyedState};
use crate::sink::{Sink, SinkRecovery};
use crate::source::open_reader;
use crate::worker::{SnapshotJob, Worker, WorkerJob};
use crate::{Barrier, RuntimeError, TaskEvent};
use cutpoint_operator::builtins::Input;

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
    /// To the first keyed stage.
    pub exchange: Exchange,
    pub control: Receiver<SourceControl>,
}

impl SourceTask {
    pub(crate) fn run(mut self) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let spec = &ctx.spec;
        let partition = self.task.subtask.0;
        let mut reader = open_reader(spec, partition, self.from)?;
        let mut steps = ctx.functions.steps(&spec.transforms)?;
        let _ = ctx.events.send(TaskEvent::Started {
            task: self.task.clone(),
            at: Instant::now(),
        });
        let mut buf = Vec::with_capacity(BATCH_SIZE);
        let mut records: u64 = 0;
        let own_source = spec.source_of(partition).map(|(_, s, _)| s);
        let (read_size, pace) = match own_source {
            Some(SourceSpec::Generator {
                rate_per_s: Some(r),
                partitions,
                ..
            }) => {
                let per = (*r / *partitions as u64).max(1);
                ((per / 100).clamp(1, BATCH_SIZE as u64) as usize, Some(per))
            }
            _ => (BATCH_SIZE, None),
        };
        let started = Instant::now();
        // Pacing counts events read (the generator's offset is its event
        // index), not records sent: a filter does not speed the input up.
        let first = reader.offset().offset;
        loop {
            while let Ok(control) = self.control.try_recv() {
                if let SourceControl::Trigger(barrier) = control {
                    self.inject(barrier, reader.offset())?;
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
            if !steps.is_empty() {
                steps.apply(&mut buf);
            }
            for record in buf.drain(..) {
                self.exchange.push(record)?;
            }
            if !more {
                break;
            }
            if let Some(per_s) = pace {
                let read = reader.offset().offset.saturating_sub(first);
                let due = Duration::from_secs_f64(read as f64 / per_s as f64);
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
                    Ok(SourceControl::Trigger(barrier)) => self.inject(barrier, reader.offset())?,
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
        self.exchange.end()?;
        let _ = ctx.events.send(TaskEvent::Finished {
            task: self.task,
            records,
            offset: Some(reader.offset()),
            table: None,
        });
        Ok(())
    }

    /// Injects `barrier`: acknowledges with the offset it was injected
    /// at, then sends it downstream (after what is batched; in unaligned
    /// mode also ahead of the queues).
    fn inject(&mut self, barrier: Barrier, offset: SourceOffset) -> Result<(), RuntimeError> {
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
        let _ = ctx.events.send(TaskEvent::Ack {
            checkpoint: barrier.id,
            state: Box::new(SubtaskState {
                source_offset: Some(offset),
                ack_timestamp: now_millis(),
                ..SubtaskState::empty(self.task.clone())
            }),
        });
        self.exchange.barrier(barrier)
    }
}

/// The working table may run ahead of the write-behind up to this many
/// budgets; beyond, the task waits for the snapshot worker (back-pressure).
pub const BUDGET_CAP: usize = 2;

/// The memory budget of a keyed subtask's state (integer or typed), kept
/// after each batch.
struct Budget<'a> {
    entries: usize,
    /// Deltas the worker wrote so far.
    applied: &'a AtomicU64,
    worker: &'a crossbeam_channel::Sender<WorkerJob>,
    cancel: &'a CancellationToken,
}

impl Budget<'_> {
    /// Evicts clean entries once the worker wrote every delta `handed` to
    /// it; hands it the dirty ones to write behind when that is not
    /// enough (not while an unaligned snapshot's delta waits to be sent:
    /// `collecting`). Far over the budget, waits for the worker first.
    fn keep(
        &self,
        state: &mut KeyedState,
        handed: &mut u64,
        trimmed: &mut u64,
        collecting: bool,
    ) -> Result<(), RuntimeError> {
        if state.len() > self.entries * BUDGET_CAP && !collecting {
            wait_written(self.applied, *handed, self.cancel)?;
        }
        let written = self.applied.load(Ordering::SeqCst) == *handed;
        // Once per written delta, not per batch (it scans the shadow).
        if written && *trimmed != *handed {
            state.deltas_written();
            *trimmed = *handed;
        }
        if state.over_budget() && written {
            state.evict_clean();
            if state.over_budget() && !collecting {
                *handed += 1;
                let spill = WorkerJob::Spill(state.freeze());
                if self.worker.send(spill).is_err() {
                    return Err(RuntimeError::Internal("snapshot worker stopped".into()));
                }
            }
        }
        Ok(())
    }
}

/// Waits until the worker has written every delta it was handed.
fn wait_written(
    applied: &AtomicU64,
    handed: u64,
    cancel: &CancellationToken,
) -> Result<(), RuntimeError> {
    while applied.load(Ordering::SeqCst) != handed {
        if cancel.is_cancelled() {
            return Err(RuntimeError::Cancelled);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// A keyed subtask's state, opened (restored or empty).
pub(crate) struct Opened {
    store: RocksStore,
    state: KeyedState,
    confirmed: ConfirmedFiles,
    /// Whether RocksDB holds entries the state in memory does not.
    residency: cutpoint_state::Residency,
}

/// Where a keyed stage's input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// The sources (input `i` is source partition `i`).
    Sources,
    /// The stage before (every input adds its record's value).
    Stage,
}

/// One subtask of a keyed stage: its state, and its sink (the last stage)
/// or the exchange to the next stage.
pub(crate) struct AggregateTask {
    pub ctx: Arc<TaskContext>,
    pub task: TaskId,
    pub counters: Arc<TaskCounters>,
    pub stage: KeyedStage,
    pub upstream: Upstream,
    /// To the next stage (`None`: the last stage, with the sink).
    pub next: Option<Exchange>,
    pub range: KeyGroupRange,
    /// State of the old aggregate subtasks to restore from (empty: fresh).
    pub restore: Vec<SubtaskState>,
    /// The checkpoint restored from (its shared files may be reused).
    pub restored_from: Option<CheckpointId>,
    pub dirs: LocalDirs,
    pub inputs: Vec<Receiver<Message>>,
    /// Completed checkpoints, for the sink's commits.
    pub commits: Receiver<CheckpointId>,
    /// Unaligned mode: barriers that overtake the data channels.
    pub priority: Option<Receiver<Barrier>>,
}

/// The index of the priority channel in a select.
const PRIORITY: usize = usize::MAX;
/// Batches an unaligned snapshot takes off its inputs ahead of processing.
const COLLECT_AHEAD: usize = 4 * crate::channel::CHANNEL_CAPACITY;

/// The error for a channel whose other end is gone.
fn gone(cancel: &CancellationToken) -> RuntimeError {
    if cancel.is_cancelled() {
        RuntimeError::Cancelled
    } else {
        RuntimeError::Disconnected
    }
}

/// An unaligned snapshot taken, whose channel state — the records in
/// flight before barrier `n` on the inputs that had not delivered it — is
/// being collected. Those records are processed after the snapshot (so
/// they are not in its state) and replayed after a restore from it.
struct Collecting {
    barrier: Barrier,
    delta: Delta,
    sync_duration: Duration,
    alignment: Duration,
    pending_transactions: Vec<PendingTransaction>,
    /// Inputs still before barrier `n`.
    before: Vec<bool>,
    /// In-flight records with the input they came on.
    records: Vec<(u32, Record)>,
}

impl Collecting {
    /// A message taken off input `j` (still before the barrier): records
    /// become channel state and wait in `buffer` to be processed.
    fn take(&mut self, j: usize, msg: Message, buffer: &mut VecDeque<Message>) {
        match msg {
            Message::Records(batch) => {
                self.records
                    .extend(batch.iter().map(|r| (j as u32, r.clone())));
                buffer.push_back(Message::Records(batch));
            }
            Message::Barrier(b) if b.id == self.barrier.id => self.before[j] = false,
            // Stale: nothing to do.
            Message::Barrier(b) if b.id < self.barrier.id => {}
            newer @ Message::Barrier(_) => buffer.push_back(newer),
            Message::EndOfStream => {
                self.before[j] = false;
                buffer.push_back(Message::EndOfStream);
            }
        }
    }

    fn into_job(self) -> SnapshotJob {
        SnapshotJob {
            barrier: self.barrier,
            delta: self.delta,
            sync_duration: self.sync_duration,
            alignment_duration: self.alignment,
            records_beyond_barrier: 0,
            pending_transactions: self.pending_transactions,
            channel_state: Some(self.records),
        }
    }
}

impl AggregateTask {
    /// Snapshots now for barrier `b` (unaligned): the state as it is, and
    /// the channel state to collect from every input that has not delivered
    /// `b` (`seen`: the newest in-band barrier per input) — first from what
    /// earlier collections buffered, then from the input.
    #[allow(clippy::too_many_arguments)]
    fn start_unaligned(
        &self,
        state: &mut KeyedState,
        sink: &mut Output,
        b: Barrier,
        seen: &[CheckpointId],
        ended: &[bool],
        buffers: &mut [VecDeque<Message>],
        alignment: Duration,
    ) -> Result<Collecting, RuntimeError> {
        cutpoint_core::failpoint::check("task::sync_phase")?;
        let t0 = Instant::now();
        let delta = state.freeze();
        let pending_transactions = sink.snapshot(b)?;
        let mut c = Collecting {
            barrier: b,
            delta,
            sync_duration: t0.elapsed(),
            alignment,
            pending_transactions,
            before: (0..seen.len())
                .map(|j| seen[j] < b.id && !ended[j])
                .collect(),
            records: Vec::new(),
        };
        for (j, buffer) in buffers.iter_mut().enumerate() {
            if !c.before[j] {
                continue;
            }
            // Everything buffered is in order; re-take it up to barrier n.
            for msg in std::mem::take(buffer) {
                if c.before[j] {
                    c.take(j, msg, buffer);
                } else {
                    buffer.push_back(msg);
                }
            }
        }
        Ok(c)
    }

    /// The synchronous phase of an aligned (or at-least-once) snapshot:
    /// the state's delta frozen, the sink's transaction pre-committed.
    fn sync_phase(
        state: &mut KeyedState,
        sink: &mut Output,
        barrier: Barrier,
        alignment: Duration,
        records_beyond: u64,
    ) -> Result<SnapshotJob, RuntimeError> {
        cutpoint_core::failpoint::check("task::align")?;
        let t0 = Instant::now();
        cutpoint_core::failpoint::check("task::sync_phase")?;
        let delta = state.freeze();
        let pending_transactions = sink.snapshot(barrier)?;
        Ok(SnapshotJob {
            barrier,
            delta,
            sync_duration: t0.elapsed(),
            alignment_duration: alignment,
            records_beyond_barrier: records_beyond,
            pending_transactions,
            channel_state: None,
        })
    }

    /// The sink (last stage; it recovers its transactions from the
    /// restored state) or the exchange to the next stage.
    fn output(&mut self) -> Result<Output, RuntimeError> {
        let ctx = &self.ctx;
        let Some(forward) = self.stage.forward else {
            let recovery = SinkRecovery::for_subtask(
                self.task.subtask.0,
                self.stage.parallelism,
                &self.restore,
                ctx.staging_in_use.clone(),
            );
            let sink = Sink::open(&ctx.spec.sink, self.task.subtask.0, &recovery)?;
            return Ok(Output::Sink(sink));
        };
        let exchange = self.next.take().ok_or_else(|| {
            RuntimeError::Internal(format!("{}: no exchange to the next stage", self.task))
        })?;
        Ok(Output::Next { exchange, forward })
    }

    /// Typed state restores only into an operator that declares the same
    /// states under the same ids (a checkpoint of an older release records
    /// none: not checked).
    fn check_declared(
        &self,
        declared: Vec<cutpoint_core::metadata::DeclaredState>,
    ) -> Result<(), RuntimeError> {
        let recorded = self.restore.iter().filter_map(|s| s.schema.as_ref());
        for schema in recorded {
            if schema.states != declared {
                let names = |d: &[cutpoint_core::metadata::DeclaredState]| {
                    d.iter()
                        .map(|s| {
                            format!(
                                "{} {} ({:?}, codec v{})",
                                s.id, s.name, s.kind, s.codec_version
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(RuntimeError::Restore(format!(
                    "{}: the checkpoint's typed states [{}] are not the operator's [{}]",
                    self.task,
                    names(&schema.states),
                    names(&declared)
                )));
            }
        }
        Ok(())
    }

    /// Restores (or opens empty) state, and reads the channel state to
    /// replay; errors here are restore failures.
    pub(crate) fn open_state(&self) -> Result<(Opened, Vec<(u32, Record)>), RuntimeError> {
        let spec = &self.ctx.spec;
        let maxp = spec.max_parallelism;
        let typed = match self.upstream {
            Upstream::Sources => {
                cutpoint_operator::builtins::builtin(&spec.aggregate, maxp, &self.ctx.functions)?
            }
            Upstream::Stage => None,
        };
        let restored = if self.restore.is_empty() {
            snapshot::open_empty(&self.dirs, maxp)?
        } else {
            // Under a memory budget the table reads through from RocksDB
            // instead of loading the whole range; typed state loads below.
            let load = match (spec.state.memory_budget_mb, &typed) {
                (None, None) => snapshot::TableLoad::Eager,
                _ => snapshot::TableLoad::Lazy,
            };
            snapshot::restore(
                &self.ctx.rt,
                &self.ctx.storage,
                &spec.job_id,
                &self.restore,
                self.range,
                &self.dirs,
                maxp,
                load,
            )?
        };
        let state = match typed {
            None => KeyedState::Counts(restored.table),
            // Under a memory budget typed state reads through instead.
            Some(op) if spec.state.memory_budget_mb.is_some() => {
                self.check_declared(op.declared())?;
                KeyedState::Typed {
                    op,
                    updates: Vec::new(),
                }
            }
            Some(mut op) => {
                self.check_declared(op.declared())?;
                restored.store.scan_raw(self.range, |k, v| {
                    op.restore_entry(k, v)
                        .map_err(|e| StateError::CorruptState {
                            dir: self.dirs.db.display().to_string(),
                            reason: e.to_string(),
                        })
                })?;
                KeyedState::Typed {
                    op,
                    updates: Vec::new(),
                }
            }
        };
        let replay = cutpoint_state::channel::read_channel_state(
            &self.ctx.rt,
            &self.ctx.storage,
            &spec.job_id,
            &self.restore,
            self.range,
            &self.dirs.scratch,
            maxp,
        )?;
        let opened = Opened {
            store: restored.store,
            state,
            confirmed: restored.confirmed,
            residency: restored.residency,
        };
        Ok((opened, replay))
    }

    pub(crate) fn run(
        mut self,
        opened: Opened,
        mut replay: Vec<(u32, Record)>,
    ) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let Opened {
            store,
            mut state,
            confirmed,
            residency,
        } = opened;
        let mut sink = self.output()?;
        let (snap_tx, snap_rx) = crossbeam_channel::unbounded::<WorkerJob>();
        // Memory budget: deltas handed to the worker vs written by it; clean
        // entries may be evicted only when the two are equal.
        let applied = Arc::new(AtomicU64::new(0));
        let mut handed: u64 = 0;
        // The `handed` count at which shadowed deletes were last trimmed.
        let mut trimmed: u64 = 0;
        let budget = ctx.spec.state.budget_entries(ctx.spec.keyed_subtasks());
        if let Some(b) = budget {
            state.set_budget(store.reader(), b, residency);
            state.evict_clean();
        }
        // The clock of TTL state, before any input (a restored task that
        // only sees the end of its input reports nothing expired).
        state.set_time()?;
        let worker = Worker {
            ctx: ctx.clone(),
            task: self.task.clone(),
            range: self.range,
            store,
            job: JobId::clone(&ctx.spec.job_id),
            confirmed,
            confirmed_from: self.restored_from,
            pending: Default::default(),
            scratch: self.dirs.scratch.clone(),
            applied: applied.clone(),
            schema: state.schema(self.stage.aggregate),
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
        let mode = ctx.spec.checkpoint.mode;
        let aligned_timeout = ctx
            .spec
            .checkpoint
            .aligned_checkpoint_timeout_ms
            .map(Duration::from_millis);
        let processing_delay = ctx
            .spec
            .inject_processing_delay_us
            .map(Duration::from_micros);
        let kinds: Vec<Input> = (0..n as u32)
            .map(|i| input_of(&ctx.spec, self.upstream, i))
            .collect();
        let mut barriers = BarrierHandler::new(n, mode, aligned_timeout);
        // Unaligned snapshots: messages taken off an input while collecting
        // channel state wait here (in order, ahead of that input's channel)
        // to be processed.
        let mut buffers: Vec<VecDeque<Message>> = (0..n).map(|_| VecDeque::new()).collect();
        let mut collecting: Option<Collecting> = None;
        // Closed once every source finished (they hold its senders).
        let mut priority = self.priority.as_ref();
        let first_stage = cutpoint_core::OperatorId::new(cutpoint_core::stage::FIRST_STAGE)
            .expect("static operator id");
        let inject = ctx
            .spec
            .inject_failure
            .as_ref()
            .filter(|f| ctx.attempt == 0 && f.subtask == self.task.subtask.0)
            .filter(|f| f.operator.as_ref().unwrap_or(&first_stage) == &self.task.operator);
        let mut records: u64 = 0;
        let mut snapshots: u64 = 0;
        // An unaligned snapshot to take at the top of the next iteration.
        let mut start: Option<(Barrier, Duration)> = None;
        // The channel state of the checkpoint restored from comes first.
        for (input, r) in std::mem::take(&mut replay) {
            // After a rescale the stage before may have had more subtasks.
            let kind = match self.upstream {
                Upstream::Stage => Some(Input::First),
                Upstream::Sources => kinds.get(input as usize).copied(),
            };
            let kind = kind.ok_or_else(|| {
                RuntimeError::Restore(format!(
                    "channel state names input {input}, the job has {n}"
                ))
            })?;
            state.apply(&mut sink, kind, vec![r])?;
            records += 1;
            self.counters.add(1, None);
        }
        if let Some(e) = state.take_error() {
            return Err(e);
        }
        let result = loop {
            if let Err(e) = self.commits.try_iter().try_for_each(|id| {
                state.checkpoint_complete(id)?;
                sink.checkpoint_complete(id)
            }) {
                break Err(e);
            }
            if let Some((b, alignment)) = start.take() {
                debug_assert!(collecting.is_none(), "one collection at a time");
                match self.start_unaligned(
                    &mut state,
                    &mut sink,
                    b,
                    barriers.seen(),
                    barriers.ended(),
                    &mut buffers,
                    alignment,
                ) {
                    Ok(c) => collecting = Some(c),
                    Err(e) => break Err(e),
                }
                handed += 1;
                snapshots += 1;
                barriers.started(b.id);
            }
            if collecting
                .as_ref()
                .is_some_and(|c| !c.before.iter().any(|b| *b))
            {
                let c = collecting.take().expect("collecting");
                if snap_tx.send(WorkerJob::Snapshot(c.into_job())).is_err() {
                    break Err(RuntimeError::Internal("snapshot worker stopped".into()));
                }
                // A newer barrier an input delivered meanwhile starts now,
                // before that input (held back) is read again.
                start = barriers.take_deferred().map(|b| (b, Duration::ZERO));
                continue;
            }
            if barriers.all_ended() {
                break Ok(());
            }
            // An alignment past the aligned-checkpoint timeout turns unaligned.
            if let Decision::StartUnaligned { barrier, alignment } =
                barriers.check_timeout(Instant::now(), collecting.is_some())
            {
                start = Some((barrier, alignment));
                continue;
            }
            // While collecting, drain what is queued before the barrier
            // first (without processing it), so the snapshot does not wait
            // for back-pressured queues; bounded, then processing resumes.
            if let Some(c) = &mut collecting {
                let buffered: usize = buffers.iter().map(VecDeque::len).sum();
                if buffered < COLLECT_AHEAD {
                    let took = (0..n)
                        .filter(|j| c.before[*j])
                        .find_map(|j| self.inputs[j].try_recv().ok().map(|m| (j, m)));
                    if let Some((j, msg)) = took {
                        if let Message::Barrier(b) = &msg {
                            barriers.note_seen(j, b.id);
                        }
                        c.take(j, msg, &mut buffers[j]);
                        continue;
                    }
                }
            }
            // The next message: what collection buffered comes first.
            // While collecting for barrier n, an input that already delivered
            // a newer barrier is not read: its records after that barrier
            // must not enter the state before the newer snapshot is taken.
            let current = collecting.as_ref().map(|c| c.barrier.id);
            let ahead = |j: usize| current.is_some_and(|id| barriers.seen()[j] > id);
            let (i, msg) = if let Some(j) = (0..n).find(|j| !buffers[*j].is_empty() && !ahead(*j)) {
                (j, buffers[j].pop_front().expect("non-empty"))
            } else {
                let mut sel = Select::new();
                let mut index = Vec::with_capacity(n + 1);
                for (i, rx) in self.inputs.iter().enumerate() {
                    if barriers.readable(i) && !ahead(i) {
                        sel.recv(rx);
                        index.push(i);
                    }
                }
                if let (Some(p), None) = (priority, &collecting) {
                    sel.recv(p);
                    index.push(PRIORITY);
                }
                let wait = barriers.wait(Instant::now(), Duration::from_millis(50));
                // Nothing ready: what the exchange batched goes before waiting,
                // so updates never wait for a full batch (nor for the input).
                let op = match sel.try_select() {
                    Ok(op) => op,
                    Err(_) => {
                        if let Err(e) = sink.flush() {
                            break Err(e);
                        }
                        match sel.select_timeout(wait) {
                            Ok(op) => op,
                            Err(_) => {
                                if ctx.cancel.is_cancelled() {
                                    break Err(RuntimeError::Cancelled);
                                }
                                continue;
                            }
                        }
                    }
                };
                let i = index[op.index()];
                if i == PRIORITY {
                    // A barrier that overtook the queues (unaligned mode).
                    let Ok(b) = op.recv(priority.expect("priority")) else {
                        // Every source finished; their streams end in-band.
                        priority = None;
                        continue;
                    };
                    if let Decision::StartUnaligned { barrier, alignment } =
                        barriers.on_priority_barrier(b)
                    {
                        start = Some((barrier, alignment));
                    }
                    continue;
                }
                let Ok(msg) = op.recv(&self.inputs[i]) else {
                    break Err(gone(&ctx.cancel));
                };
                if let Some(c) = collecting.as_mut().filter(|c| c.before[i]) {
                    // Still before the barrier on this input: channel state.
                    if let Message::Barrier(b) = &msg {
                        barriers.note_seen(i, b.id);
                    }
                    c.take(i, msg, &mut buffers[i]);
                    continue;
                }
                (i, msg)
            };
            let decision = match msg {
                Message::Records(batch) => {
                    records += batch.len() as u64;
                    barriers.on_records(i, batch.len() as u64);
                    self.counters.add(batch.len() as u64, None);
                    if let Some(d) = processing_delay {
                        std::thread::sleep(d);
                    }
                    if let Err(e) = state
                        .apply(&mut sink, kinds[i], batch)
                        .and_then(|()| sink.flush_if_lingering(Instant::now()))
                    {
                        break Err(e);
                    }
                    if let Some(e) = state.take_error() {
                        break Err(e);
                    }
                    if let Some(b) = budget {
                        let budget = Budget {
                            entries: b,
                            applied: &applied,
                            worker: &snap_tx,
                            cancel: &ctx.cancel,
                        };
                        if let Err(e) =
                            budget.keep(&mut state, &mut handed, &mut trimmed, collecting.is_some())
                        {
                            break Err(e);
                        }
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
                    Decision::Continue
                }
                Message::Barrier(b) => {
                    barriers.on_barrier(i, b, Instant::now(), collecting.is_some())
                }
                Message::EndOfStream => barriers.on_end(i, Instant::now()),
            };
            match decision {
                Decision::Continue => {}
                Decision::StartUnaligned { barrier, alignment } => {
                    start = Some((barrier, alignment))
                }
                Decision::Snapshot {
                    barrier,
                    alignment,
                    records_beyond,
                } => {
                    let job = match Self::sync_phase(
                        &mut state,
                        &mut sink,
                        barrier,
                        alignment,
                        records_beyond,
                    ) {
                        Ok(job) => job,
                        Err(e) => break Err(e),
                    };
                    snapshots += 1;
                    handed += 1;
                    if snap_tx.send(WorkerJob::Snapshot(job)).is_err() {
                        break Err(RuntimeError::Internal("snapshot worker stopped".into()));
                    }
                }
            }
        };
        drop(snap_tx);
        let worker_result = worker_thread.join();
        result?;
        let store = match worker_result {
            Ok(Ok(store)) => store,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(RuntimeError::Internal("snapshot worker panicked".into())),
        };
        self.finish(store, state, sink, budget, records)
    }

    /// Every input ended and every snapshot succeeded: the sink's last
    /// epoch becomes final and the task reports its final state.
    fn finish(
        self,
        mut store: RocksStore,
        mut state: KeyedState,
        mut sink: Output,
        budget: Option<usize>,
        records: u64,
    ) -> Result<(), RuntimeError> {
        if let (Some(_), Some(table)) = (budget, state.counts()) {
            // The final state in full: what is left in memory written, then
            // everything read back (the job's result, not a hot path).
            store.apply(table.freeze())?;
            let mut all = Vec::new();
            store.scan(self.range, |k, v| all.push((k, v)))?;
            let (evicted, read_through) = table.budget_stats();
            tracing::debug!(task = %self.task, evicted, read_through, peak = table.peak_len(), "memory budget");
            *table = cutpoint_state::StateTable::materialized(all, table);
        }
        // Only a task whose snapshots all succeeded makes its last epoch final.
        sink.finish()?;
        let _ = self.ctx.events.send(TaskEvent::Finished {
            task: self.task,
            records,
            offset: None,
            table: Some(Box::new(state.into_result()?)),
        });
        Ok(())
    }
}
