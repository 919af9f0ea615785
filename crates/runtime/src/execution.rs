//! One attempt of a job: wiring channels, restoring state, spawning tasks,
//! and the [`Execution`] handle the coordinator drives it with.
//!
//! The tasks: one per source partition, then one per subtask of each keyed
//! stage ([`JobSpec::keyed_stages`]); between two operators a hash exchange
//! (every upstream subtask to every downstream one, plus a priority channel
//! per downstream subtask in unaligned mode). The last stage's sink is
//! chained into its tasks.
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
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use crossbeam_channel::{Receiver, Sender};
use cutpoint_core::metadata::{AggregateKind, SourceOffset};
use cutpoint_core::stage::KeyedStage;
use cutpoint_core::{
    CheckpointId, CheckpointMetadata, JobSpec, KeyGroupRange, OperatorId, SubtaskState, TaskId,
};
use cutpoint_state::snapshot::LocalDirs;
use cutpoint_storage::CheckpointStorage;
use tokio_util::sync::CancellationToken;

use crate::channel::{Message, CHANNEL_CAPACITY};
use crate::context::AbortRegistry;
use crate::context::{TaskContext, TaskCounters};
use crate::events::TaskFailure;
use crate::exchange::{Exchange, LocalTransport};
use crate::gate::LocalGate;
use crate::task::{AggregateTask, SourceControl, SourceTask, Upstream};
use crate::{Barrier, FailureKind, RuntimeError, TaskEvent, SOURCE_OPERATOR};

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
    /// The program's keyed process functions (a `process` aggregate names
    /// one).
    pub functions: cutpoint_operator::Functions,
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

/// The channels of one hash exchange: `up` senders to `down` receivers.
struct Wiring {
    /// Per upstream subtask: its sender to each downstream subtask.
    senders: Vec<Vec<Sender<Message>>>,
    /// Per downstream subtask: its receiver from each upstream subtask.
    inputs: Vec<Vec<Receiver<Message>>>,
    /// Unaligned mode: one priority channel per downstream subtask, on which
    /// every upstream sends its barriers ahead of the queued records.
    priority_tx: Vec<Sender<Barrier>>,
    priority_rx: Vec<Option<Receiver<Barrier>>>,
}

impl Wiring {
    fn new(up: u32, down: u32, unaligned: bool) -> Self {
        let mut inputs: Vec<Vec<_>> = (0..down).map(|_| Vec::new()).collect();
        let mut senders = Vec::new();
        for _ in 0..up {
            let mut outs = Vec::new();
            for ins in inputs.iter_mut() {
                let (tx, rx) = crossbeam_channel::bounded::<Message>(CHANNEL_CAPACITY);
                outs.push(tx);
                ins.push(rx);
            }
            senders.push(outs);
        }
        let (priority_tx, mut priority_rx): (Vec<_>, Vec<_>) = (0..down)
            .filter(|_| unaligned)
            .map(|_| {
                let (tx, rx) = crossbeam_channel::unbounded::<Barrier>();
                (tx, Some(rx))
            })
            .unzip();
        priority_rx.resize_with(down as usize, || None);
        Self {
            senders,
            inputs,
            priority_tx,
            priority_rx,
        }
    }

    /// The exchanges of the upstream subtasks, in order.
    fn exchanges(&mut self, ctx: &TaskContext) -> Vec<Exchange> {
        std::mem::take(&mut self.senders)
            .into_iter()
            .map(|outs| {
                let transport = LocalTransport {
                    outputs: outs,
                    priority: self.priority_tx.clone(),
                    cancel: ctx.cancel.clone(),
                };
                Exchange::new(Box::new(transport), ctx.spec.max_parallelism)
            })
            .collect()
    }
}

/// What a checkpoint holds for this job: every source partition's offset
/// and, per keyed stage, the state of its old subtasks.
struct Restore {
    offsets: Vec<Option<SourceOffset>>,
    states: BTreeMap<OperatorId, Vec<SubtaskState>>,
}

impl Restore {
    /// Splits `meta` by operator; fails if it does not fit the job (other
    /// key groups, other partitions, an operator the job does not have).
    fn of(spec: &JobSpec, meta: Option<&CheckpointMetadata>) -> Result<Self, RuntimeError> {
        let sources_n = spec.source_parallelism();
        let mut r = Restore {
            offsets: vec![None; sources_n as usize],
            states: BTreeMap::new(),
        };
        let Some(meta) = meta else {
            return Ok(r);
        };
        let id = meta.checkpoint_id;
        let bad = |m: String| Err(RuntimeError::Restore(format!("checkpoint {id} {m}")));
        if meta.max_parallelism != spec.max_parallelism {
            return bad(format!(
                "has max_parallelism {}, the job {}: key groups cannot be remapped",
                meta.max_parallelism, spec.max_parallelism
            ));
        }
        let stages = spec.keyed_stages();
        let result = spec.result_stage().id;
        for s in &meta.subtasks {
            if s.task.operator.as_str() == SOURCE_OPERATOR {
                let Some(o) = s.source_offset else {
                    return bad(format!("has no offset for source {}", s.task));
                };
                let Some(slot) = r.offsets.get_mut(o.partition as usize) else {
                    return bad(format!(
                        "has partition {}, the job has {sources_n} partitions",
                        o.partition
                    ));
                };
                *slot = Some(o);
            } else if let Some(stage) = stages.iter().find(|st| st.id == s.task.operator) {
                if let Some(why) = older_form(s, stage) {
                    return bad(why);
                }
                if let Some(had) = s.schema.as_ref().map(|c| c.aggregate) {
                    if had != stage.aggregate {
                        return bad(format!(
                            "holds {} state of a {} aggregate; the job's {} is a {} (state cannot be converted: restore into a job with the same aggregate there)",
                            s.task,
                            had.as_str(),
                            stage.id,
                            stage.aggregate.as_str()
                        ));
                    }
                }
                // The last stage's, and the first stage's late sink's.
                let late = spec.late_sink_index();
                let first = s.task.operator.as_str() == cutpoint_core::stage::FIRST_STAGE;
                let ours = |t: &cutpoint_core::metadata::PendingTransaction| {
                    s.task.operator == result || (first && t.sink == late)
                };
                if !s.pending_transactions.iter().all(ours) {
                    // Its output would never be committed by this job.
                    return bad(format!(
                        "has sink transactions of {}, which no longer feeds the sink (stages were added after it): restore it into a job whose last stage is {:?}",
                        s.task,
                        s.task.operator.as_str()
                    ));
                }
                let list = r.states.entry(s.task.operator.clone()).or_default();
                list.push(s.clone());
            } else if !spec.external_tasks.contains(&s.task.operator) {
                return bad(format!(
                    "has state of operator {:?}, which the job does not have",
                    s.task.operator.as_str()
                ));
            }
        }
        if let Some(p) = r.offsets.iter().position(|o| o.is_none()) {
            return bad(format!("has no offset for partition {p}"));
        }
        Ok(r)
    }
}

/// How long [`Execution::join`] waits before it names the tasks that
/// have not stopped.
pub const STUCK_AFTER: Duration = Duration::from_secs(10);

/// The tasks of an execution as they are spawned.
#[derive(Default)]
struct Spawned {
    threads: Vec<JoinHandle<()>>,
    tasks: Vec<TaskId>,
    counters: Vec<(TaskId, Arc<TaskCounters>)>,
    controls: Vec<Sender<SourceControl>>,
    commits: Vec<Sender<CheckpointId>>,
}

impl Spawned {
    fn add(&mut self, task: &TaskId, thread: JoinHandle<()>) {
        self.threads.push(thread);
        self.tasks.push(task.clone());
    }

    fn counters(&mut self, task: &TaskId) -> Arc<TaskCounters> {
        let c = Arc::new(TaskCounters::default());
        self.counters.push((task.clone(), c.clone()));
        c
    }
}

impl Execution {
    /// Wires and starts every task: the sources, then each keyed stage,
    /// each fed by a hash exchange from the operator before it. Fails only
    /// on what can be checked before any thread runs (a checkpoint that
    /// does not fit the job).
    pub fn start(cfg: ExecutionConfig) -> Result<Self, RuntimeError> {
        let spec = cfg.spec.clone();
        cfg.functions.check(&spec)?;
        let mut restore = Restore::of(&spec, cfg.restore.as_deref())?;
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
            functions: cfg.functions.clone(),
        });
        let unaligned = spec.checkpoint.mode == cutpoint_core::spec::CheckpointingMode::Unaligned;
        let stages = spec.keyed_stages();
        let mut up = spec.source_parallelism();
        let mut wirings: Vec<Wiring> = stages
            .iter()
            .map(|s| {
                Wiring::new(
                    std::mem::replace(&mut up, s.parallelism),
                    s.parallelism,
                    unaligned,
                )
            })
            .collect();
        let mut spawned = Spawned::default();
        let src_op = operator(SOURCE_OPERATOR);
        for (s, exchange) in wirings[0].exchanges(&ctx).into_iter().enumerate() {
            let task = TaskId::new(&src_op, s as u32);
            let (ctl_tx, control) = crossbeam_channel::unbounded();
            spawned.controls.push(ctl_tx);
            let t = SourceTask {
                ctx: ctx.clone(),
                task: task.clone(),
                counters: spawned.counters(&task),
                from: restore.offsets[s],
                exchange,
                control,
            };
            spawned.add(&task, spawn(&ctx, task.clone(), move || t.run()));
        }
        for (k, stage) in stages.iter().enumerate() {
            let (before, after) = wirings.split_at_mut(k + 1);
            let wiring = &mut before[k];
            let mut next = after.first_mut().map(|w| w.exchanges(&ctx).into_iter());
            let states = restore.states.remove(&stage.id).unwrap_or_default();
            let upstream = if k == 0 {
                Upstream::Sources
            } else {
                Upstream::Stage
            };
            let inputs = std::mem::take(&mut wiring.inputs);
            let priority = std::mem::take(&mut wiring.priority_rx);
            for (a, (inputs, priority)) in inputs.into_iter().zip(priority).enumerate() {
                let task = TaskId::new(&stage.id, a as u32);
                let (commit_tx, commits) = crossbeam_channel::unbounded();
                spawned.commits.push(commit_tx);
                let base = cfg.local_dir.join(format!("{}-{a}", stage.id));
                let t = AggregateTask {
                    ctx: ctx.clone(),
                    task: task.clone(),
                    counters: spawned.counters(&task),
                    stage: stage.clone(),
                    upstream,
                    next: next.as_mut().and_then(Iterator::next),
                    range: KeyGroupRange::for_subtask(
                        spec.max_parallelism,
                        stage.parallelism,
                        a as u32,
                    ),
                    restore: states.clone(),
                    restored_from: cfg.restore.as_ref().map(|m| m.checkpoint_id),
                    dirs: LocalDirs {
                        db: base.join("db"),
                        scratch: base.join("scratch"),
                    },
                    gate: Some(Box::new(LocalGate { inputs, priority })),
                    commits,
                };
                spawned.add(&task, spawn_keyed(&ctx, task.clone(), t));
            }
        }
        Ok(Self {
            sources: spawned.controls,
            commits: spawned.commits,
            aborts: ctx.aborts.clone(),
            cancel,
            any_completed: ctx.any_completed.clone(),
            tasks: spawned.tasks,
            counters: spawned.counters.into(),
            threads: spawned.threads,
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
    /// Tasks still running [`STUCK_AFTER`] into the wait are logged, by
    /// name, once: a task blocked in a call that cancellation cannot reach
    /// (RocksDB, a file system) holds its job's restart until it returns.
    pub fn join(mut self) {
        let threads = std::mem::take(&mut self.threads);
        let deadline = Instant::now() + STUCK_AFTER;
        while Instant::now() < deadline && threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let stuck: Vec<String> = threads
            .iter()
            .zip(&self.tasks)
            .filter(|(t, _)| !t.is_finished())
            .map(|(_, task)| task.to_string())
            .collect();
        if !stuck.is_empty() {
            tracing::warn!(
                tasks = %stuck.join(", "),
                after_s = STUCK_AFTER.as_secs(),
                "tasks have not stopped; waiting for them before the job goes on"
            );
        }
        for t in threads {
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

/// Spawns a keyed task: restores its state (a failure is reported as a
/// restore failure, with the file named), then runs it.
fn spawn_keyed(ctx: &Arc<TaskContext>, task: TaskId, t: AggregateTask) -> JoinHandle<()> {
    let events = ctx.events.clone();
    spawn(ctx, task.clone(), move || {
        let (state, replay) = t.open_state().map_err(|e| {
            let kind = FailureKind::of(&e, true);
            let _ = events.send(TaskEvent::Failed {
                task,
                error: TaskFailure::Restore(e),
                kind,
            });
            RuntimeError::Cancelled
        })?;
        t.run(state, replay)
    })
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

/// Why subtask state `s` cannot restore into `stage`, if it was written
/// in a form an older release used: a checkpoint that records no schema
/// holds the integer table (typed state records its schema), and a join
/// recorded without typed states packed its dimension into that table.
fn older_form(s: &cutpoint_core::SubtaskState, stage: &KeyedStage) -> Option<String> {
    let wanted = stage.aggregate;
    match &s.schema {
        None if !wanted.is_integer() => Some(format!(
            "holds {} state of an older release (the integer table, no schema recorded); the job's {} keeps typed state for its {} aggregate: state cannot be converted",
            s.task,
            stage.id,
            wanted.as_str()
        )),
        Some(c) if c.aggregate == AggregateKind::Join && c.states.is_empty() && wanted == AggregateKind::Join => Some(format!(
            "holds {} join state of the integer form (count and an integer dimension packed in one i64, before the join kept a real dimension value): it cannot be converted; start the join from its sources",
            s.task
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use cutpoint_core::metadata::{PendingTransaction, SourceOffset};
    use cutpoint_core::{CheckpointType, JobId, METADATA_VERSION};

    use super::*;

    fn spec(stages: &str) -> JobSpec {
        JobSpec::from_json(&format!(
            r#"{{"job_id":"j","parallelism":2,"source":{{"type":"generator","partitions":1,"events":10,"keys":3}},
                "key_by":"app_id","aggregate":{{"type":"count"}},"stages":{stages}}}"#
        ))
        .unwrap()
    }

    const HIST: &str = r#"[{"id":"hist","key_by":{"type":"value_bucket","width":4},"aggregate":{"type":"count"}}]"#;

    /// A checkpoint of `source[0]` and one subtask of each of `ops`, the
    /// last one's with a pending sink transaction.
    fn meta(ops: &[&str]) -> CheckpointMetadata {
        let op = |s: &str| OperatorId::new(s).unwrap();
        let mut subtasks = vec![SubtaskState {
            source_offset: Some(SourceOffset {
                partition: 0,
                offset: 5,
                bad_records: 0,
                max_timestamp: None,
            }),
            ..SubtaskState::empty(TaskId::new(&op("source"), 0))
        }];
        for (i, name) in ops.iter().enumerate() {
            let mut s = SubtaskState::empty(TaskId::new(&op(name), 0));
            if i + 1 == ops.len() {
                s.pending_transactions = vec![PendingTransaction {
                    checkpoint: CheckpointId(4),
                    handle: "txn".into(),
                    sink: 0,
                }];
            }
            subtasks.push(s);
        }
        CheckpointMetadata {
            version: METADATA_VERSION,
            job_id: JobId::new("j").unwrap(),
            checkpoint_id: CheckpointId(4),
            checkpoint_type: CheckpointType::Full,
            trigger_timestamp: 1,
            complete_timestamp: 2,
            parallelism: 2,
            max_parallelism: 128,
            writer_epoch: None,
            subtasks,
        }
    }

    #[test]
    fn a_restore_splits_state_by_stage() {
        let r = Restore::of(&spec(HIST), Some(&meta(&["agg", "hist"]))).unwrap();
        assert_eq!(r.offsets[0].map(|o| o.offset), Some(5));
        let ops: Vec<_> = r.states.keys().map(|o| o.as_str()).collect();
        assert_eq!(ops, ["agg", "hist"]);
    }

    #[test]
    fn state_of_another_aggregate_is_refused_with_both_named() {
        use cutpoint_core::metadata::{AggregateKind, StateSchema};
        let mut m = meta(&["agg"]);
        m.subtasks[1].pending_transactions.clear();
        m.subtasks[1].schema = Some(StateSchema {
            aggregate: AggregateKind::Count,
            states: Vec::new(),
        });
        let distinct = JobSpec::from_json(
            r#"{"job_id":"j","source":{"type":"generator","partitions":1,"events":10,"keys":3},
                "key_by":"app_id","aggregate":{"type":"count_distinct","field":"user_id"}}"#,
        )
        .unwrap();
        let err = Restore::of(&distinct, Some(&m)).err().unwrap().to_string();
        assert!(
            err.contains("a count aggregate") && err.contains("count_distinct"),
            "{err}"
        );
        // The same aggregate restores; so does a checkpoint recording none
        // into an integer aggregate, but not into typed state.
        assert!(Restore::of(&spec("[]"), Some(&m)).is_ok());
        m.subtasks[1].schema = None;
        assert!(Restore::of(&spec("[]"), Some(&m)).is_ok());
        let err = Restore::of(&distinct, Some(&m)).err().unwrap().to_string();
        assert!(
            err.contains("older release") && err.contains("count_distinct"),
            "{err}"
        );
    }

    #[test]
    fn a_join_of_the_integer_form_is_refused_not_misread() {
        use cutpoint_core::metadata::{AggregateKind, StateSchema};
        let join = JobSpec::from_json(
            r#"{"job_id":"j","source":{"type":"generator","partitions":1,"events":10,"keys":3},
                "union":[{"type":"generator","partitions":1,"events":10,"keys":3}],
                "key_by":"app_id","aggregate":{"type":"join","dimension_source":1,"field":"user_id"}}"#,
        )
        .unwrap();
        let mut m = meta(&["agg"]);
        m.subtasks[1].pending_transactions.clear();
        m.subtasks.push(m.subtasks[0].clone());
        m.subtasks[2].source_offset.as_mut().unwrap().partition = 1;
        // Written before the join kept typed state: no states recorded.
        m.subtasks[1].schema = Some(StateSchema {
            aggregate: AggregateKind::Join,
            states: Vec::new(),
        });
        let err = Restore::of(&join, Some(&m)).err().unwrap().to_string();
        assert!(
            err.contains("integer form") && err.contains("join"),
            "{err}"
        );
        m.subtasks[1].schema = None;
        let err = Restore::of(&join, Some(&m)).err().unwrap().to_string();
        assert!(err.contains("older release"), "{err}");
    }

    #[test]
    fn state_of_an_operator_the_job_lacks_is_refused() {
        let err = Restore::of(&spec("[]"), Some(&meta(&["agg", "hist"])))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("\"hist\"") && err.contains("does not have"),
            "{err}"
        );
    }

    #[test]
    fn a_stage_added_after_the_sink_stage_refuses_its_transactions() {
        // The checkpoint's agg fed the sink; now hist does: agg's
        // pre-committed output would never be committed.
        let err = Restore::of(&spec(HIST), Some(&meta(&["agg"])))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no longer feeds the sink"), "{err}");
        // Without transactions the new stage simply starts empty.
        let mut m = meta(&["agg"]);
        m.subtasks[1].pending_transactions.clear();
        let r = Restore::of(&spec(HIST), Some(&m)).unwrap();
        assert!(!r.states.contains_key(&OperatorId::new("hist").unwrap()));
    }
}
