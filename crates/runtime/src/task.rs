//! Tasks: a source task reads its partition, runs the job's stateless
//! steps, sends its watermarks (event time) and injects barriers; a keyed task ([`AggregateTask`]) opens or
//! restores its state, starts its snapshot worker and runs its loop
//! ([`crate::running::Running`]: barrier decisions, snapshots, channel
//! state, the memory budget) until every input ended, then reports its
//! final state.
//!
//! Shared with the snapshot workers: [`crate::context`].

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use cutpoint_core::metadata::SourceOffset;
use cutpoint_core::spec::{SinkSpec, SourceSpec};
use cutpoint_core::stage::{KeyedStage, FIRST_STAGE};
use cutpoint_core::{
    now_millis, CheckpointId, JobId, JobSpec, KeyGroupRange, Record, SubtaskState, TaskId,
};
use cutpoint_state::snapshot::{self, ConfirmedFiles, LocalDirs};
use cutpoint_state::{RocksStore, StateError};

use crate::channel::BATCH_SIZE;
use crate::context::{TaskContext, TaskCounters};
use crate::exchange::{Downstream, Exchange, Output};
use crate::gate::InputGate;
use crate::keyed::{input_of, KeyedState};
use crate::running::{Budget, Running};
use crate::sink::{Sink, SinkRecovery};
use crate::source::open_reader;
use crate::time::{RestoredTime, SourceTime};
use crate::worker::{Worker, WorkerJob};
use crate::{Barrier, RuntimeError, TaskEvent};
use cutpoint_core::time::Activity;
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
        let (read_size, pace) = pacing(spec.source_of(partition).map(|(_, s, _)| s));
        let started = Instant::now();
        let mut time = SourceTime::new(spec, self.from.as_ref());
        // Pacing counts events read (the generator's offset is its event
        // index), not records sent: a filter does not speed the input up.
        let first = reader.offset().offset;
        loop {
            while let Ok(control) = self.control.try_recv() {
                if let SourceControl::Trigger(barrier) = control {
                    self.inject(barrier, time.offset(reader.offset()))?;
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
            // A global window: every record under one key, the one the
            // steps see too (whatever the source), and kept after them.
            let global = spec.is_global();
            if global {
                buf.iter_mut().for_each(|r| r.key = JobSpec::GLOBAL_KEY);
            }
            if !steps.is_empty() {
                steps.apply(&mut buf);
                if global {
                    buf.iter_mut().for_each(|r| r.key = JobSpec::GLOBAL_KEY);
                }
            }
            time.before_send(&buf, &mut self.exchange, &self.counters)?;
            let turn = if buf.is_empty() {
                Activity::Quiet
            } else {
                Activity::Sent
            };
            for record in buf.drain(..) {
                self.exchange.push(record)?;
            }
            time.after_send(turn, &mut self.exchange, &self.counters)?;
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
        time.end(&mut self.exchange, &self.counters)?;
        let offset = time.offset(reader.offset());
        if spec.takes_final_checkpoint() {
            self.await_final_checkpoint(offset)?;
        }
        self.exchange.end()?;
        let _ = ctx.events.send(TaskEvent::Finished {
            task: self.task,
            records,
            offset: Some(offset),
            table: None,
        });
        Ok(())
    }

    /// At the end of the input: stays in the job, injecting barriers at
    /// `offset`, until a checkpoint that covers the whole input completed
    /// (`Finish`), so no sink commits output a restore could replay.
    fn await_final_checkpoint(&mut self, offset: SourceOffset) -> Result<(), RuntimeError> {
        let _ = self.ctx.events.send(TaskEvent::EndOfInput {
            task: self.task.clone(),
        });
        loop {
            match self.control.recv_timeout(Duration::from_millis(20)) {
                Ok(SourceControl::Trigger(barrier)) => self.inject(barrier, offset)?,
                Ok(SourceControl::Finish) => return Ok(()),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if self.ctx.cancel.is_cancelled() {
                        return Err(RuntimeError::Cancelled);
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(RuntimeError::Cancelled)
                }
            }
        }
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

/// A restored entry the operator could not take.
fn corrupt(dirs: &LocalDirs, e: cutpoint_operator::OperatorError) -> StateError {
    StateError::CorruptState {
        dir: dirs.db.display().to_string(),
        reason: e.to_string(),
    }
}

/// Records per read and events per second of a partition of `source`: a
/// rate-limited generator reads about 100 times a second.
fn pacing(source: Option<&SourceSpec>) -> (usize, Option<u64>) {
    match source {
        Some(SourceSpec::Generator {
            rate_per_s: Some(r),
            partitions,
            ..
        }) => {
            let per = (*r / *partitions as u64).max(1);
            ((per / 100).clamp(1, BATCH_SIZE as u64) as usize, Some(per))
        }
        _ => (BATCH_SIZE, None),
    }
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
    /// Its inputs (taken by the loop when it runs).
    pub gate: Option<Box<dyn InputGate>>,
    /// Completed checkpoints, for the sink's commits.
    pub commits: Receiver<CheckpointId>,
}

impl AggregateTask {
    /// The sink (last stage; it recovers its transactions from the
    /// restored state) or the exchange to the next stage, and (first
    /// stage) the late records' sink.
    fn output(&mut self) -> Result<Output, RuntimeError> {
        let ctx = &self.ctx;
        let recovery = SinkRecovery::for_subtask(
            self.task.subtask.0,
            self.stage.parallelism,
            &self.restore,
            ctx.staging_in_use.clone(),
        );
        let index = ctx.spec.late_sink_index();
        let late_recovery = recovery.for_sink(index);
        let late = match &ctx.spec.late_sink {
            Some(spec) if self.stage.id.as_str() == FIRST_STAGE => {
                Some(Sink::open(spec, self.task.subtask.0, &late_recovery)?)
            }
            _ => None,
        };
        let transactional = matches!(ctx.spec.late_sink, Some(SinkSpec::TransactionalFile { .. }));
        if !late_recovery.adopted.is_empty() && !transactional {
            // As when a job's sink is replaced: nothing here commits them.
            tracing::warn!(
                task = %self.task,
                transactions = late_recovery.adopted.len(),
                "the restored checkpoint has pre-committed late-sink transactions, but the job has no transactional late_sink: they are not committed (restore with the late_sink as when the checkpoint was taken)"
            );
        }
        let to = match self.stage.forward {
            None => {
                let main = recovery.below(index);
                Downstream::Sink(Sink::open_all(&ctx.spec.sink, self.task.subtask.0, &main)?)
            }
            Some(forward) => Downstream::Next {
                exchange: self.next.take().ok_or_else(|| {
                    RuntimeError::Internal(format!("{}: no exchange to the next stage", self.task))
                })?,
                forward,
                steps: ctx.functions.steps(&self.stage.forward_transforms)?,
                updates: Vec::new(),
            },
        };
        Ok(Output::from(to).with_late_sink(late, index))
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

    /// Under a memory budget: loads only the timers of the subtask's key
    /// groups (one seek each), so they are in the operator's index.
    fn restore_timers(
        &self,
        store: &RocksStore,
        op: &mut dyn cutpoint_operator::builtins::RecordOperator,
    ) -> Result<(), StateError> {
        let reader = store.reader();
        for kg in self.range.start..=self.range.end {
            for prefix in op.timer_prefixes(kg as u16) {
                let mut entries = Vec::new();
                reader.scan_prefix(&prefix, |k, v| entries.push((k.to_vec(), v.to_vec())))?;
                for (k, v) in entries {
                    op.restore_entry(&k, &v)
                        .map_err(|e| corrupt(&self.dirs, e))?;
                }
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
            Upstream::Sources => cutpoint_operator::builtins::builtin(
                &spec.aggregate,
                spec.window.as_ref(),
                maxp,
                &self.ctx.functions,
            )?,
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
            Some(mut op) if spec.state.memory_budget_mb.is_some() => {
                self.check_declared(op.declared())?;
                // The rest reads through; timers are indexed in memory.
                self.restore_timers(&restored.store, op.as_mut())?;
                KeyedState::Typed {
                    op,
                    updates: Vec::new(),
                }
            }
            Some(mut op) => {
                self.check_declared(op.declared())?;
                restored.store.scan_raw(self.range, |k, v| {
                    op.restore_entry(k, v).map_err(|e| corrupt(&self.dirs, e))
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

    /// Runs the subtask on its opened state: starts its snapshot worker,
    /// replays the restored channel state, then loops ([`Running`]) until
    /// every input ended; then its result is final.
    pub(crate) fn run(
        mut self,
        opened: Opened,
        replay: Vec<(u32, Record)>,
    ) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let Opened {
            store,
            mut state,
            confirmed,
            residency,
        } = opened;
        let sink = self.output()?;
        let (snap_tx, snap_rx) = crossbeam_channel::unbounded::<WorkerJob>();
        // Memory budget: deltas handed to the worker vs written by it; clean
        // entries may be evicted only when the two are equal.
        let applied = Arc::new(AtomicU64::new(0));
        let entries = ctx.spec.state.budget_entries(ctx.spec.keyed_subtasks());
        if let Some(b) = entries {
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
        let mut running = self.running(state, sink, snap_tx, entries, applied);
        let upstream = self.upstream;
        let kinds = running.kinds().to_vec();
        let result = running
            .replay(replay, |i| match upstream {
                // After a rescale the stage before may have had more subtasks.
                Upstream::Stage => Some(Input::First),
                Upstream::Sources => kinds.get(i as usize).copied(),
            })
            .and_then(|()| running.run());
        let (state, sink, records) = running.into_results();
        let worker_result = worker_thread.join();
        result?;
        let store = match worker_result {
            Ok(Ok(store)) => store,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(RuntimeError::Internal("snapshot worker panicked".into())),
        };
        self.finish(store, state, sink, entries, records)
    }

    /// The loop's state at the start: this subtask's inputs, state, output
    /// and worker, its budget and test knobs.
    fn running(
        &mut self,
        state: KeyedState,
        sink: Output,
        worker: crossbeam_channel::Sender<WorkerJob>,
        entries: Option<usize>,
        applied: Arc<AtomicU64>,
    ) -> Running {
        let ctx = self.ctx.clone();
        let gate = self.gate.take().expect("a task runs once");
        let kinds: Vec<Input> = (0..gate.inputs() as u32)
            .map(|i| input_of(&ctx.spec, self.upstream, i))
            .collect();
        let budget = entries.map(|entries| Budget {
            entries,
            handed: 0,
            applied,
            trimmed: 0,
        });
        let first_stage = cutpoint_core::OperatorId::new(cutpoint_core::stage::FIRST_STAGE)
            .expect("static operator id");
        let inject = ctx
            .spec
            .inject_failure
            .clone()
            .filter(|f| ctx.attempt == 0 && f.subtask == self.task.subtask.0)
            .filter(|f| f.operator.as_ref().unwrap_or(&first_stage) == &self.task.operator);
        let commits = self.commits.clone();
        Running::new(
            ctx,
            self.counters.clone(),
            commits,
            gate,
            kinds,
            (state, sink),
            worker,
            budget,
        )
        .with_inject(inject)
        .with_watermarks(RestoredTime::of(&self.restore, self.range))
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
