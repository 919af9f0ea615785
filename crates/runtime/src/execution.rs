//! One attempt of a job: wiring channels, restoring state, spawning tasks,
//! and the [`Execution`] handle the coordinator drives it with.
//!
//! Restoring happens inside each task thread, in parallel; a task reports
//! [`TaskEvent::Started`] once its state is loaded. Any task failure (an
//! error or a panic) is reported as [`TaskEvent::Failed`]; the coordinator
//! then cancels the execution, joins it, and decides whether to restart.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use cutpoint_core::{CheckpointId, CheckpointMetadata, JobSpec, KeyGroupRange, OperatorId, TaskId};
use cutpoint_state::snapshot::LocalDirs;
use cutpoint_storage::CheckpointStorage;
use tokio_util::sync::CancellationToken;

use crate::channel::{Message, CHANNEL_CAPACITY};
use crate::context::AbortRegistry;
use crate::context::{TaskContext, TaskCounters};
use crate::events::TaskFailure;
use crate::task::{AggregateTask, SourceControl, SourceTask};
use crate::{Barrier, FailureKind, RuntimeError, TaskEvent, AGGREGATE_OPERATOR, SOURCE_OPERATOR};

/// Everything needed to start one attempt.
pub struct ExecutionConfig {
    pub spec: Arc<JobSpec>,
    pub storage: CheckpointStorage,
    /// Checkpoint to restore from; `None` starts from the beginning.
    pub restore: Option<Arc<CheckpointMetadata>>,
    pub attempt: u32,
    /// Local working directory of this attempt (RocksDB instances); the
    /// caller removes it after joining the execution.
    pub local_dir: PathBuf,
    pub events: tokio::sync::mpsc::UnboundedSender<TaskEvent>,
    pub runtime: tokio::runtime::Handle,
    /// Staging files of transactional sinks that restorable checkpoints
    /// name: kept when the sinks recover (see [`crate::sink::SinkRecovery`]).
    pub staging_in_use: crate::sink::StagingInUse,
}

/// A running attempt of a job.
pub struct Execution {
    sources: Vec<Sender<SourceControl>>,
    commits: Vec<Sender<CheckpointId>>,
    aborts: Arc<AbortRegistry>,
    cancel: CancellationToken,
    any_completed: Arc<AtomicBool>,
    tasks: Vec<TaskId>,
    counters: Arc<[(TaskId, Arc<TaskCounters>)]>,
    threads: Vec<JoinHandle<()>>,
}

fn operator(name: &str) -> OperatorId {
    OperatorId::new(name).expect("static operator id")
}

impl Execution {
    /// Wires and starts every task. Fails only on what can be checked
    /// before any thread runs (a checkpoint that does not fit the job).
    pub fn start(cfg: ExecutionConfig) -> Result<Self, RuntimeError> {
        let spec = cfg.spec.clone();
        let sources_n = spec.source_parallelism();
        let aggs_n = spec.parallelism;
        let src_op = operator(SOURCE_OPERATOR);
        let agg_op = operator(AGGREGATE_OPERATOR);

        let mut source_offsets = vec![None; sources_n as usize];
        let mut agg_states = Vec::new();
        if let Some(meta) = &cfg.restore {
            if meta.max_parallelism != spec.max_parallelism {
                return Err(RuntimeError::Restore(format!(
                    "checkpoint {} has max_parallelism {}, the job {}: key groups cannot be remapped",
                    meta.checkpoint_id, meta.max_parallelism, spec.max_parallelism
                )));
            }
            for s in &meta.subtasks {
                if s.task.operator == src_op {
                    let o = s.source_offset.ok_or_else(|| {
                        RuntimeError::Restore(format!("source {} has no offset", s.task))
                    })?;
                    let slot = source_offsets
                        .get_mut(o.partition as usize)
                        .ok_or_else(|| {
                            RuntimeError::Restore(format!(
                            "checkpoint {} has partition {}, the job has {sources_n} partitions",
                            meta.checkpoint_id, o.partition
                        ))
                        })?;
                    *slot = Some(o);
                } else if s.task.operator == agg_op {
                    agg_states.push(s.clone());
                }
            }
            if let Some(p) = source_offsets.iter().position(|o| o.is_none()) {
                return Err(RuntimeError::Restore(format!(
                    "checkpoint {} has no offset for partition {p}",
                    meta.checkpoint_id
                )));
            }
        }

        let cancel = CancellationToken::new();
        let ctx = Arc::new(TaskContext {
            spec: spec.clone(),
            storage: cfg.storage.clone(),
            events: cfg.events.clone(),
            cancel: cancel.clone(),
            rt: cfg.runtime.clone(),
            aborts: Arc::new(AbortRegistry::new(cancel.clone())),
            attempt: cfg.attempt,
            any_completed: Arc::new(AtomicBool::new(false)),
            staging_in_use: cfg.staging_in_use.clone(),
        });

        // channel[s][a]: source s -> aggregate a.
        let mut agg_inputs: Vec<Vec<_>> = (0..aggs_n).map(|_| Vec::new()).collect();
        let mut source_outputs = Vec::new();
        for _ in 0..sources_n {
            let mut outs = Vec::new();
            for inputs in agg_inputs.iter_mut() {
                let (tx, rx) = crossbeam_channel::bounded::<Message>(CHANNEL_CAPACITY);
                outs.push(tx);
                inputs.push(rx);
            }
            source_outputs.push(outs);
        }

        // Unaligned mode: one priority channel per aggregate, on which every
        // source sends its barriers ahead of the queued records.
        let unaligned = spec.checkpoint.mode == cutpoint_core::spec::CheckpointingMode::Unaligned;
        let (priority_tx, mut priority_rx): (Vec<_>, Vec<_>) = (0..aggs_n)
            .filter(|_| unaligned)
            .map(|_| {
                let (tx, rx) = crossbeam_channel::unbounded::<Barrier>();
                (tx, Some(rx))
            })
            .unzip();
        priority_rx.resize_with(aggs_n as usize, || None);

        let mut threads = Vec::new();
        let mut tasks = Vec::new();
        let mut counters = Vec::new();
        let mut controls = Vec::new();
        for (s, outputs) in source_outputs.into_iter().enumerate() {
            let task = TaskId::new(&src_op, s as u32);
            let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
            controls.push(ctl_tx);
            let c = Arc::new(TaskCounters::default());
            counters.push((task.clone(), c.clone()));
            let t = SourceTask {
                ctx: ctx.clone(),
                task: task.clone(),
                counters: c,
                from: source_offsets[s],
                outputs,
                priority: priority_tx.clone(),
                control: ctl_rx,
            };
            threads.push(spawn(&ctx, task.clone(), move || t.run()));
            tasks.push(task);
        }
        let mut commit_senders = Vec::new();
        for (a, (inputs, priority)) in agg_inputs.into_iter().zip(priority_rx).enumerate() {
            let task = TaskId::new(&agg_op, a as u32);
            let (commit_tx, commits) = crossbeam_channel::unbounded();
            commit_senders.push(commit_tx);
            let base = cfg.local_dir.join(format!("agg-{a}"));
            let c = Arc::new(TaskCounters::default());
            counters.push((task.clone(), c.clone()));
            let t = AggregateTask {
                ctx: ctx.clone(),
                task: task.clone(),
                counters: c,
                range: KeyGroupRange::for_subtask(spec.max_parallelism, aggs_n, a as u32),
                restore: agg_states.clone(),
                restored_from: cfg.restore.as_ref().map(|m| m.checkpoint_id),
                dirs: LocalDirs {
                    db: base.join("db"),
                    scratch: base.join("scratch"),
                },
                inputs,
                commits,
                priority,
            };
            let events = ctx.events.clone();
            let id = task.clone();
            threads.push(spawn(&ctx, task.clone(), move || {
                let (state, replay) = t.open_state().map_err(|e| {
                    // A failed restore is reported as such, with the file named.
                    let kind = FailureKind::of(&e, true);
                    let _ = events.send(TaskEvent::Failed {
                        task: id,
                        error: TaskFailure::Restore(e),
                        kind,
                    });
                    RuntimeError::Cancelled
                })?;
                t.run(state, replay)
            }));
            tasks.push(task);
        }
        Ok(Self {
            sources: controls,
            commits: commit_senders,
            aborts: ctx.aborts.clone(),
            cancel,
            any_completed: ctx.any_completed.clone(),
            tasks,
            counters: counters.into(),
            threads,
        })
    }

    /// Live counters of every task of this attempt.
    pub fn counters(&self) -> Arc<[(TaskId, Arc<TaskCounters>)]> {
        self.counters.clone()
    }

    /// Every task that must acknowledge a checkpoint.
    pub fn tasks(&self) -> &[TaskId] {
        &self.tasks
    }

    /// Tells every source to inject `barrier`. False if a source is gone.
    pub fn trigger(&self, barrier: Barrier) -> bool {
        // Send to every source even if one is gone (no short-circuit).
        let sent: Vec<bool> = self
            .sources
            .iter()
            .map(|s| s.send(SourceControl::Trigger(barrier)).is_ok())
            .collect();
        sent.into_iter().all(|ok| ok)
    }

    /// Stops the uploads of checkpoint `id` wherever they are.
    pub fn abort(&self, id: CheckpointId) {
        self.aborts.abort(id);
    }

    /// Checkpoint `id` completed: sinks commit up to it. (Which shared files
    /// a snapshot may reuse travels with each barrier, not with this.)
    pub fn notify_complete(&self, id: CheckpointId) {
        self.any_completed.store(true, Ordering::SeqCst);
        self.aborts.forget_below(id);
        for c in &self.commits {
            let _ = c.send(id);
        }
    }

    /// A checkpoint covering every source's whole input completed (and was
    /// notified): the sources end their streams.
    pub fn finish_sources(&self) {
        for s in &self.sources {
            let _ = s.send(SourceControl::Finish);
        }
    }

    /// Asks every task to stop; [`Execution::join`] waits for them.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for every thread (blocking: call from a blocking context).
    pub fn join(mut self) {
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

impl Drop for Execution {
    /// An execution dropped without `join` (e.g. its coordinator is gone)
    /// must not leave task threads running.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn spawn(
    ctx: &Arc<TaskContext>,
    task: TaskId,
    body: impl FnOnce() -> Result<(), RuntimeError> + Send + 'static,
) -> JoinHandle<()> {
    let events = ctx.events.clone();
    let cancel = ctx.cancel.clone();
    std::thread::Builder::new()
        .name(format!("task-{task}"))
        .spawn(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(body));
            let failure = match outcome {
                // A task whose neighbour is gone reports nothing: the neighbour
                // reports why it went (its failure is the one to name).
                Ok(Ok(())) | Ok(Err(RuntimeError::Cancelled | RuntimeError::Disconnected)) => None,
                Ok(Err(e)) if cancel.is_cancelled() => {
                    tracing::debug!(%task, error = %e, "task stopped after cancellation");
                    None
                }
                Ok(Err(e)) => {
                    let kind = FailureKind::of(&e, false);
                    Some((TaskFailure::Task(e), kind))
                }
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into());
                    Some((TaskFailure::Panic(msg), FailureKind::Transient))
                }
            };
            if let Some((error, kind)) = failure {
                let _ = events.send(TaskEvent::Failed { task, error, kind });
            }
        })
        .expect("spawn task thread")
}
