//! The loop of a running keyed task ([`Running`]): one message at a time
//! from its [`InputGate`], the decisions of its
//! [`crate::barrier::BarrierHandler`] carried out — records applied to the
//! state (and its output), snapshots taken, unaligned snapshots' channel
//! state collected — and the memory budget kept ([`Budget`]).
//!
//! Aligned and at-least-once snapshots: the handler says when every live
//! input delivered barrier `n`; the task freezes the state's delta and
//! pre-commits the sink ([`sync_phase`]) and hands the rest to its snapshot
//! worker.
//!
//! Unaligned (exactly-once): barrier `n` also arrives on the priority
//! channel, ahead of the queued records; the task snapshots at once and
//! collects, as channel state, every record still ahead of `n` on each
//! input until `n` arrives there in band ([`Collecting`]); the worker
//! persists them with the snapshot and a restore replays them first.
//! Records taken off an input while collecting wait in that input's
//! buffer, in order, ahead of its channel. While collecting for barrier
//! `n`, an input that already delivered a newer barrier is not read: its
//! records after that barrier must not enter the state before the newer
//! snapshot is taken.
//!
//! Watermarks (event time) are read in band like records: an input held
//! back for alignment holds its watermarks back too, and while collecting
//! channel state they wait in the input's buffer in order; the task's
//! watermark (the minimum over its inputs, `crate::time`) goes on to the
//! next stage after the updates before it.
//!
//! Under a memory budget the working table evicts clean entries (read
//! through from RocksDB) and hands dirty ones to the worker to write
//! behind; past [`BUDGET_CAP`] budgets the task waits for the worker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use cutpoint_core::metadata::PendingTransaction;
use cutpoint_core::spec::InjectFailure;
use cutpoint_core::{CheckpointId, Record};
use cutpoint_operator::builtins::Input;
use tokio_util::sync::CancellationToken;

use crate::barrier::{BarrierHandler, Decision};
use crate::channel::{Message, CHANNEL_CAPACITY};
use crate::context::{TaskContext, TaskCounters};
use crate::exchange::Output;
use crate::gate::{InputGate, Polled};
use crate::keyed::{Delta, KeyedState};
use crate::time::{self, KeptTime, RestoredTime, TaskTime};
use crate::worker::{SnapshotJob, WorkerJob};
use crate::{Barrier, RuntimeError};
use cutpoint_core::time::TimeSignal;
use cutpoint_operator::{Fired, TimeDomain};

/// The working table may run ahead of the write-behind up to this many
/// budgets; beyond, the task waits for the snapshot worker (back-pressure).
pub const BUDGET_CAP: usize = 2;

/// Batches an unaligned snapshot takes off its inputs ahead of processing.
const COLLECT_AHEAD: usize = 4 * CHANNEL_CAPACITY;

/// Timers fired per pass before the memory budget is kept.
const FIRE_BATCH: usize = 1024;

/// The longest the loop waits for input before it looks at its timers
/// (the aligned-checkpoint timeout, processing-time timers: they fire up
/// to this late) and at cancellation again.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// The memory budget of a keyed subtask's state (integer or typed), kept
/// after each batch.
pub(crate) struct Budget {
    pub entries: usize,
    /// Deltas handed to the worker to write.
    pub handed: u64,
    /// Deltas the worker wrote so far.
    pub applied: Arc<AtomicU64>,
    /// The `handed` count at which shadowed deletes were last trimmed.
    pub trimmed: u64,
}

impl Budget {
    /// Evicts clean entries once the worker wrote every delta handed to
    /// it; hands it the dirty ones to write behind when that is not
    /// enough (not while an unaligned snapshot's delta waits to be sent:
    /// `collecting`). Far over the budget, waits for the worker first.
    fn keep(
        &mut self,
        state: &mut KeyedState,
        worker: &Sender<WorkerJob>,
        cancel: &CancellationToken,
        collecting: bool,
    ) -> Result<(), RuntimeError> {
        if state.len() > self.entries * BUDGET_CAP && !collecting {
            wait_written(&self.applied, self.handed, cancel)?;
        }
        let written = self.applied.load(Ordering::SeqCst) == self.handed;
        // Once per written delta, not per batch (it scans the shadow).
        if written && self.trimmed != self.handed {
            state.deltas_written();
            self.trimmed = self.handed;
        }
        if state.over_budget() && written {
            state.evict_clean();
            if state.over_budget() && !collecting {
                self.handed += 1;
                if worker.send(WorkerJob::Spill(state.freeze())).is_err() {
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
    /// The task's event time at the snapshot.
    time: KeptTime,
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
            // In order with the records around it.
            time @ Message::Time(_) => buffer.push_back(time),
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
            time: self.time,
        }
    }
}

/// The synchronous phase of an aligned (or at-least-once) snapshot: the
/// state's delta frozen, the sink's transaction pre-committed.
fn sync_phase(
    state: &mut KeyedState,
    sink: &mut Output,
    barrier: Barrier,
    (alignment, records_beyond): (Duration, u64),
    time: KeptTime,
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
        time,
    })
}

/// Whether the loop goes on.
enum Flow {
    Continue,
    /// Every input ended.
    Done,
}

/// A keyed task between two messages: what it reads, what it keeps, what
/// it has handed its snapshot worker.
pub(crate) struct Running {
    ctx: Arc<TaskContext>,
    counters: Arc<TaskCounters>,
    /// Completed checkpoints, for the state's and the sink's commits.
    commits: Receiver<CheckpointId>,
    gate: Box<dyn InputGate>,
    /// What each input is to the operator (a join's first or second).
    kinds: Vec<Input>,
    state: KeyedState,
    sink: Output,
    barriers: BarrierHandler,
    /// Event time: the task's watermark over its inputs.
    time: TaskTime,
    /// Per input: messages taken off it while collecting channel state,
    /// to be processed before its channel is read again.
    buffers: Vec<VecDeque<Message>>,
    /// The unaligned snapshot whose channel state is being collected.
    collecting: Option<Collecting>,
    /// An unaligned snapshot to take at the top of the next step.
    start: Option<(Barrier, Duration)>,
    records: u64,
    /// Snapshots taken (synchronous phases) in this run.
    snapshots: u64,
    worker: Sender<WorkerJob>,
    budget: Option<Budget>,
    /// Test knob: sleep per batch.
    processing_delay: Option<Duration>,
    /// Test knob: fail once after this many records.
    inject: Option<InjectFailure>,
    /// Every input ended: processing-time timers fired for the last time
    /// (those registered since wait in state for a restore).
    input_ended: bool,
}

impl Running {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: Arc<TaskContext>,
        counters: Arc<TaskCounters>,
        commits: Receiver<CheckpointId>,
        gate: Box<dyn InputGate>,
        kinds: Vec<Input>,
        (state, sink): (KeyedState, Output),
        worker: Sender<WorkerJob>,
        budget: Option<Budget>,
    ) -> Self {
        let n = gate.inputs();
        let spec = &ctx.spec;
        let aligned_timeout = spec
            .checkpoint
            .aligned_checkpoint_timeout_ms
            .map(Duration::from_millis);
        Self {
            input_ended: false,
            barriers: BarrierHandler::new(n, spec.checkpoint.mode, aligned_timeout),
            time: TaskTime::new(spec, n, RestoredTime::default()),
            processing_delay: spec.inject_processing_delay_us.map(Duration::from_micros),
            buffers: (0..n).map(|_| VecDeque::new()).collect(),
            ctx,
            counters,
            commits,
            gate,
            kinds,
            state,
            sink,
            collecting: None,
            start: None,
            records: 0,
            snapshots: 0,
            worker,
            budget,
            inject: None,
        }
    }

    /// Test knob: fail once after `inject.after_records` records.
    pub(crate) fn with_inject(mut self, inject: Option<InjectFailure>) -> Self {
        self.inject = inject;
        self
    }

    /// A restore (event time): starts at the watermark the checkpoint
    /// kept for this subtask's key groups (the least of them: it never
    /// sends less), and each key group's keys see at least the watermark
    /// their old subtask had.
    pub(crate) fn with_watermarks(mut self, restored: RestoredTime) -> Self {
        if let Some(w) = restored.start {
            self.counters.set_watermark(w);
        }
        self.state.restore_watermarks(&restored.floors);
        if let Some(t) = restored.processing {
            self.state.restore_processing_time(t);
        }
        self.time = TaskTime::new(&self.ctx.spec, self.gate.inputs(), restored);
        self
    }

    /// What a snapshot keeps of time: the event time's, and what the
    /// processing-time timers fired up to.
    fn kept_time(&self) -> time::KeptTime {
        time::KeptTime {
            processing: self.state.processing_clock().fired,
            ..self.time.kept()
        }
    }

    /// What each input is to the operator.
    pub(crate) fn kinds(&self) -> &[Input] {
        &self.kinds
    }

    /// The loop's results once it ended: the state, the output and the
    /// records processed. Drops the worker's sender (the worker finishes
    /// what it was handed, then stops).
    pub(crate) fn into_results(self) -> (KeyedState, Output, u64) {
        (self.state, self.sink, self.records)
    }

    /// Applies the channel state of the checkpoint restored from (before
    /// any input), each record on the input it was in flight on.
    pub(crate) fn replay(
        &mut self,
        replay: Vec<(u32, Record)>,
        input: impl Fn(u32) -> Option<Input>,
    ) -> Result<(), RuntimeError> {
        let n = self.gate.inputs();
        for (i, r) in replay {
            let kind = input(i).ok_or_else(|| {
                RuntimeError::Restore(format!("channel state names input {i}, the job has {n}"))
            })?;
            self.state.apply(&mut self.sink, kind, vec![r])?;
            self.records += 1;
            self.counters.add(1, None);
        }
        match self.state.take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs until every input ended (`Ok`) or something failed.
    pub(crate) fn run(&mut self) -> Result<(), RuntimeError> {
        loop {
            if let Flow::Done = self.step()? {
                return Ok(());
            }
        }
    }

    /// One turn of the loop: commits heard of, a pending unaligned start,
    /// a finished collection, then one message.
    fn step(&mut self) -> Result<Flow, RuntimeError> {
        for id in self.commits.try_iter() {
            self.state.checkpoint_complete(id)?;
            self.sink.checkpoint_complete(id)?;
        }
        if let Some((b, alignment)) = self.start.take() {
            self.start_unaligned(b, alignment)?;
        }
        if !self.input_ended && self.state.processing_clock().next.is_some() {
            self.on_processing_time(cutpoint_core::now_millis() as i64)?;
        }
        if self
            .collecting
            .as_ref()
            .is_some_and(|c| !c.before.iter().any(|b| *b))
        {
            let c = self.collecting.take().expect("collecting");
            self.hand(WorkerJob::Snapshot(c.into_job()))?;
            // A newer barrier an input delivered meanwhile starts now,
            // before that input (held back) is read again.
            self.start = self.barriers.take_deferred().map(|b| (b, Duration::ZERO));
            return Ok(Flow::Continue);
        }
        if self.barriers.all_ended() {
            return Ok(Flow::Done);
        }
        // An alignment past the aligned-checkpoint timeout turns unaligned.
        if let Decision::StartUnaligned { barrier, alignment } = self
            .barriers
            .check_timeout(Instant::now(), self.collecting.is_some())
        {
            self.start = Some((barrier, alignment));
            return Ok(Flow::Continue);
        }
        if self.collect_ahead() {
            return Ok(Flow::Continue);
        }
        let Some((i, msg)) = self.next_message()? else {
            return Ok(Flow::Continue);
        };
        let decision = match msg {
            Message::Records(batch) => self.on_records(i, batch)?,
            Message::Barrier(b) => {
                self.barriers
                    .on_barrier(i, b, Instant::now(), self.collecting.is_some())
            }
            Message::Time(signal) => {
                let next = self.time.on_signal(i, signal);
                self.on_time(next)?;
                Decision::Continue
            }
            Message::EndOfStream => {
                let next = self.time.on_end(i);
                self.on_time(next)?;
                self.barriers.on_end(i, Instant::now())
            }
        };
        self.carry_out(decision)?;
        Ok(Flow::Continue)
    }

    /// The task's watermark moved (or it turned idle): the state acts on
    /// it (timers fire, their output goes first), then it goes on.
    fn on_time(&mut self, next: Option<TimeSignal>) -> Result<(), RuntimeError> {
        let Some(signal) = next else { return Ok(()) };
        match signal {
            TimeSignal::Watermark(w) => self.fire(TimeDomain::EventTime, w)?,
            // Every input ended (before the final checkpoint): every
            // processing-time timer waiting fires — those registered
            // meanwhile only up to the last of them, so a timer that
            // registers the next one ends.
            TimeSignal::EndOfInput => {
                if let Some(last) = self.state.processing_clock().last {
                    self.on_processing_time(last)?;
                }
                self.input_ended = true;
            }
            TimeSignal::Idle => {}
        }
        time::forward(signal, &mut self.sink, &self.counters)
    }

    /// The wall clock reached `now`: the processing-time timers due fire.
    fn on_processing_time(&mut self, now: i64) -> Result<(), RuntimeError> {
        match self.state.processing_clock().is_due(now) {
            true => self.fire(TimeDomain::ProcessingTime, now),
            false => Ok(()),
        }
    }

    /// `domain`'s clock reached `t`: its timers due fire, in passes,
    /// keeping the memory budget between them.
    fn fire(&mut self, domain: TimeDomain, t: i64) -> Result<(), RuntimeError> {
        while self.state.fire(domain, t, FIRE_BATCH, &mut self.sink)? == Fired::More {
            self.keep_budget()?;
        }
        self.keep_budget()?;
        self.report_time();
        Ok(())
    }

    fn keep_budget(&mut self) -> Result<(), RuntimeError> {
        let collecting = self.collecting.is_some();
        match &mut self.budget {
            Some(b) => b.keep(&mut self.state, &self.worker, &self.ctx.cancel, collecting),
            None => Ok(()),
        }
    }

    /// Timers waiting and late records, for the job view and metrics.
    fn report_time(&self) {
        if let Some((timers, late)) = self.state.time_stats() {
            self.counters.set_time_stats(timers, late);
        }
    }

    /// Counts a delta frozen for the worker (the budget evicts only once
    /// the worker wrote every one).
    fn count_handed(&mut self) {
        if let Some(b) = &mut self.budget {
            b.handed += 1;
        }
    }

    /// Hands the worker a job (a snapshot's asynchronous phase).
    fn hand(&mut self, job: WorkerJob) -> Result<(), RuntimeError> {
        self.worker
            .send(job)
            .map_err(|_| RuntimeError::Internal("snapshot worker stopped".into()))
    }

    /// Snapshots now for barrier `b` (unaligned): the state as it is, and
    /// the channel state to collect from every input that has not
    /// delivered `b` — first from what earlier collections buffered, then
    /// from the input.
    fn start_unaligned(&mut self, b: Barrier, alignment: Duration) -> Result<(), RuntimeError> {
        debug_assert!(self.collecting.is_none(), "one collection at a time");
        cutpoint_core::failpoint::check("task::sync_phase")?;
        let t0 = Instant::now();
        let delta = self.state.freeze();
        let pending_transactions = self.sink.snapshot(b)?;
        let (seen, ended) = (self.barriers.seen(), self.barriers.ended());
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
            time: self.kept_time(),
        };
        for (j, buffer) in self.buffers.iter_mut().enumerate() {
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
        self.collecting = Some(c);
        // Counted now: the delta is frozen, and the worker's once sent.
        self.count_handed();
        self.snapshots += 1;
        self.barriers.started(b.id);
        Ok(())
    }

    /// While collecting, takes what is queued before the barrier first
    /// (without processing it), so the snapshot does not wait for
    /// back-pressured queues; bounded, then processing resumes. Whether it
    /// took a message.
    fn collect_ahead(&mut self) -> bool {
        let Some(c) = &mut self.collecting else {
            return false;
        };
        let buffered: usize = self.buffers.iter().map(VecDeque::len).sum();
        if buffered >= COLLECT_AHEAD {
            return false;
        }
        let gate = &mut self.gate;
        let took = (0..c.before.len())
            .filter(|j| c.before[*j])
            .find_map(|j| gate.try_recv(j).map(|m| (j, m)));
        let Some((j, msg)) = took else {
            return false;
        };
        if let Message::Barrier(b) = &msg {
            self.barriers.note_seen(j, b.id);
        }
        c.take(j, msg, &mut self.buffers[j]);
        true
    }

    /// The next message to process: what collection buffered comes first,
    /// then the gate. `None`: nothing to process this turn (nothing came,
    /// a priority barrier was noted, or the message became channel state).
    fn next_message(&mut self) -> Result<Option<(usize, Message)>, RuntimeError> {
        let current = self.collecting.as_ref().map(|c| c.barrier.id);
        let seen = self.barriers.seen();
        let ahead = |j: usize| current.is_some_and(|id| seen[j] > id);
        if let Some(j) =
            (0..self.buffers.len()).find(|j| !self.buffers[*j].is_empty() && !ahead(*j))
        {
            return Ok(self.buffers[j].pop_front().map(|m| (j, m)));
        }
        let wait = self.barriers.wait(Instant::now(), MAX_WAIT);
        let barriers = &self.barriers;
        let readable = |i: usize| barriers.readable(i) && !ahead(i);
        let priority = self.collecting.is_none();
        let polled = match self.gate.poll(&readable, priority, None) {
            // Nothing ready: what the output batched goes before waiting,
            // so updates never wait for a full batch (nor for the input).
            Polled::Idle => {
                self.sink.flush()?;
                self.gate.poll(&readable, priority, Some(wait))
            }
            polled => polled,
        };
        match polled {
            Polled::Idle if self.ctx.cancel.is_cancelled() => Err(RuntimeError::Cancelled),
            Polled::Idle => Ok(None),
            Polled::Gone => Err(gone(&self.ctx.cancel)),
            Polled::Priority(b) => {
                if let Decision::StartUnaligned { barrier, alignment } =
                    self.barriers.on_priority_barrier(b)
                {
                    self.start = Some((barrier, alignment));
                }
                Ok(None)
            }
            Polled::Message(i, msg) => match self.collecting.as_mut().filter(|c| c.before[i]) {
                // Still before the barrier on this input: channel state.
                Some(c) => {
                    if let Message::Barrier(b) = &msg {
                        self.barriers.note_seen(i, b.id);
                    }
                    c.take(i, msg, &mut self.buffers[i]);
                    Ok(None)
                }
                None => Ok(Some((i, msg))),
            },
        }
    }

    /// A batch of input `i`: into the state (and its output), then the
    /// budget kept.
    fn on_records(&mut self, i: usize, batch: Vec<Record>) -> Result<Decision, RuntimeError> {
        let len = batch.len() as u64;
        self.records += len;
        self.barriers.on_records(i, len);
        self.counters.add(len, None);
        if let Some(d) = self.processing_delay {
            std::thread::sleep(d);
        }
        self.state.apply(&mut self.sink, self.kinds[i], batch)?;
        self.report_time();
        self.sink.flush_if_lingering(Instant::now())?;
        if let Some(e) = self.state.take_error() {
            return Err(e);
        }
        self.keep_budget()?;
        if let Some(f) = &self.inject {
            let ready = if f.after_completed_checkpoint {
                self.ctx.any_completed.load(Ordering::SeqCst)
            } else {
                self.snapshots > 0
            };
            if self.records >= f.after_records && ready {
                return Err(RuntimeError::Injected);
            }
        }
        Ok(Decision::Continue)
    }

    /// Carries out the barrier handler's decision.
    fn carry_out(&mut self, decision: Decision) -> Result<(), RuntimeError> {
        match decision {
            Decision::Continue => Ok(()),
            Decision::StartUnaligned { barrier, alignment } => {
                self.start = Some((barrier, alignment));
                Ok(())
            }
            Decision::Snapshot {
                barrier,
                alignment,
                records_beyond,
            } => {
                let kept = self.kept_time();
                let job = sync_phase(
                    &mut self.state,
                    &mut self.sink,
                    barrier,
                    (alignment, records_beyond),
                    kept,
                )?;
                self.snapshots += 1;
                self.count_handed();
                self.hand(WorkerJob::Snapshot(job))
            }
        }
    }
}
