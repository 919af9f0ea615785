//! Garbage collection of a job's checkpoint storage, as a task of its own.
//!
//! The coordinator's loop decides *what* is no longer needed (retention,
//! aborts, user deletes) and hands it here as [`GcRequest`]s; the GC task
//! does the I/O — deletes, the orphan sweep, retries, savepoint copies — so
//! acknowledgements and timeouts never wait for a listing or a slow delete.
//! Like SlateDB's garbage collector, it has one owner (the job's runner),
//! its own ticker, an injected [`Clock`], a cancellation token, and a
//! shutdown that either drains its queue or abandons it.
//!
//! Homes:
//! - [`rules`]: which checkpoints a user may delete (pure).
//! - [`registry`]: reference counts of shared files (pure), owned by the task.
//! - [`sweep`]: the orphan sweep's classification (pure).
//!
//! Invariants:
//! - Requests are applied in the order the coordinator sent them: a
//!   checkpoint's files are registered ([`GcRequest::Published`]) before any
//!   later request may release what it references, and a savepoint is
//!   copied before any request that deletes its checkpoint.
//! - A shared file is deleted only when no retained checkpoint references
//!   it, no pending one has acked it, no checkpoint pending when its count
//!   dropped can still reference it (deferred release), and no `_metadata`
//!   that cannot be read exists (it may reference any shared file: while one
//!   does, shared-file GC is suspended, and the logs and `checkpoints usage`
//!   say so).
//! - A checkpoint folder is deleted `_metadata` first; its shared files are
//!   released only once that succeeded. A folder that cannot be deleted
//!   keeps every shared file it names registered until a retry succeeds.
//! - Nothing is deleted once the run is fenced ([`crate::fence`]).
//! - The task only ends when shut down. If it ends otherwise (a panic)
//!   while an attempt runs or before the finished job's last sweep, the
//!   runner starts a new one on what storage holds, discards again the
//!   checkpoints the run retained and no longer does that are still there
//!   (never one unreadable at the start or with another writer's ids), and
//!   sweeps no shared file until every checkpoint pending then has settled (the lost task may have released files one of them
//!   reuses; [`GcConfig::hold_shared_until`]). Lost savepoint copies fail
//!   their request.
//! - Periodic sweeps read the coordinator's latest [`GcFacts`], and first
//!   apply every request sent before those facts (each fact set carries the
//!   number of requests sent before it): a checkpoint the facts call
//!   retained is registered before its files are judged. While a
//!   checkpoint's `_metadata` is written (the tracker no longer holds it
//!   as pending), the facts still name it and its files as pending.
//!   Periodic sweeps spare objects younger than the checkpoint timeout, so
//!   an upload in flight is never collected. Sweeps with a minimum age of 0 are only sent as requests,
//!   after everything they depend on.

pub mod registry;
pub mod rules;
pub mod sweep;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cutpoint_core::{CheckpointId, CheckpointMetadata, JobId, SavepointId, StateFile};
use cutpoint_storage::{CheckpointStorage, StorageError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::fence::Fence;
use registry::SharedRegistry;
pub use rules::{may_delete, DeleteRefusal};
use sweep::{orphans, SweepFacts};

/// Why a delete through storage alone did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error(transparent)]
    Refused(#[from] DeleteRefusal),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Deletes checkpoint `id` of a job that does not run in this process, by
/// the same rules and in the same order as the GC task: it takes a writer
/// lease first (a run of the job elsewhere is fenced: one writer per job),
/// deletes the folder `_metadata` first, then the shared files only it
/// referenced — none while a checkpoint with unreadable metadata exists.
pub async fn delete_from_storage(
    storage: &CheckpointStorage,
    job: &JobId,
    id: CheckpointId,
    force: bool,
) -> Result<(), DeleteError> {
    let mut metas = Vec::new();
    let mut unreadable = false;
    for l in storage.list_checkpoints(job).await? {
        match l.metadata {
            Ok(m) => metas.push(m),
            Err(e) if e.is_data_error() => unreadable = true,
            Err(e) => return Err(e.into()),
        }
    }
    let ids: Vec<_> = metas.iter().map(|m| m.checkpoint_id).collect();
    may_delete(id, &ids, None, force)?;
    let lease = storage.take_writer_lease(job, 1).await?;
    tracing::info!(%job, epoch = lease.epoch, checkpoint = %id, "took the job's storage to delete a checkpoint");
    let mut registry = SharedRegistry::new();
    for m in &metas {
        registry.register(m);
    }
    let free = registry.release(id, None, None);
    storage.delete_checkpoint(job, id).await?;
    if unreadable {
        tracing::warn!(%job, checkpoint = %id, "shared files kept: a checkpoint with unreadable _metadata may reference them");
    } else {
        storage.delete_state_files(job, &free).await?;
    }
    Ok(())
}

/// Wall-clock time in ms since the epoch (injected so tests control age).
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        cutpoint_core::now_millis()
    }
}

/// What the coordinator knows that GC must respect.
#[derive(Debug, Clone, Default)]
pub struct GcFacts {
    pub retained: BTreeSet<CheckpointId>,
    pub pending: BTreeSet<CheckpointId>,
    /// Shared files named by acks of pending checkpoints.
    pub pending_files: HashSet<String>,
    /// Requests the coordinator had sent when it stated these facts (set
    /// by [`GcHandle::set_facts`]).
    pub seq: u64,
}

impl GcFacts {
    fn highest_pending(&self) -> Option<CheckpointId> {
        self.pending.last().copied()
    }

    fn lowest_pending(&self) -> Option<CheckpointId> {
        self.pending.first().copied()
    }
}

/// Work for the GC task, applied in order.
#[derive(Debug)]
pub enum GcRequest {
    /// A checkpoint was published: its shared files gain references.
    Published(Arc<CheckpointMetadata>),
    /// Copy a published checkpoint into `savepoints/{id}/` (before anything
    /// can delete it) and answer with its path.
    Savepoint {
        meta: Arc<CheckpointMetadata>,
        id: SavepointId,
        reply: oneshot::Sender<Result<String, StorageError>>,
    },
    /// A checkpoint is no longer retained (retention, a superseded timeline,
    /// a user's delete): its folder goes, then the shared files only it
    /// referenced. `done` learns whether the folder is gone (else a retry
    /// deletes it later).
    Discard {
        id: CheckpointId,
        facts: GcFacts,
        done: Option<oneshot::Sender<bool>>,
    },
    /// A checkpoint that will never complete: its folder and the shared
    /// files only its acks named (`files`).
    Abort {
        id: CheckpointId,
        files: Vec<StateFile>,
        facts: GcFacts,
    },
    /// Folders of this run's checkpoints (ids from `from`, its first) below
    /// `below` that are neither retained nor pending and have no
    /// `_metadata`: leftovers of its aborts. (Earlier runs' leftovers are
    /// the age-gated sweep's: a writer fenced a moment ago may still be
    /// about to publish one of its folders.)
    Abandoned {
        from: CheckpointId,
        below: CheckpointId,
        facts: GcFacts,
    },
    /// An orphan sweep now, sparing objects younger than `min_age_ms`.
    Sweep { facts: GcFacts, min_age_ms: u64 },
    /// Answered once every request before it was applied.
    Flush(oneshot::Sender<()>),
}

/// How the GC task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Apply every request sent so far, then stop — but stop anyway after
    /// `within` (slow storage must not hold the job's end for long).
    Drain { within: Duration },
    /// Stop now, even in the middle of a sweep or a delete.
    Abandon,
}

/// How long a job's end waits for GC to finish its queue (the final sweep,
/// aborted checkpoints); what is left then is collected by the next
/// start's orphan sweep.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Settings of the GC task.
#[derive(Debug, Clone)]
pub struct GcConfig {
    /// Periodic orphan sweeps (and retries of failed deletes); `None`: only
    /// retries, every [`GcConfig::RETRY_EVERY`].
    pub sweep_every: Option<Duration>,
    /// Minimum age of what a periodic sweep deletes.
    pub min_age_ms: u64,
    /// A task started after its predecessor panicked: shared files that
    /// one released may still be reused by checkpoints pending now, so no
    /// shared file is swept until every checkpoint up to this id settled.
    pub hold_shared_until: Option<CheckpointId>,
}

impl GcConfig {
    /// How often failed deletes are retried without periodic sweeps.
    pub const RETRY_EVERY: Duration = Duration::from_secs(1);
}

/// The owner's handle: send requests, publish facts, shut down.
#[derive(Debug)]
pub struct GcHandle {
    requests: mpsc::UnboundedSender<GcRequest>,
    /// Requests sent so far.
    sent: std::sync::atomic::AtomicU64,
    facts: watch::Sender<GcFacts>,
    cancel: CancellationToken,
    join: tokio::task::JoinHandle<()>,
}

impl GcHandle {
    pub fn send(&self, r: GcRequest) {
        // The task only stops after `shutdown`, which consumes the handle.
        self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self.requests.send(r);
    }

    /// The coordinator's current facts, for periodic sweeps (stamped with
    /// the requests sent before them).
    pub fn set_facts(&self, mut facts: GcFacts) {
        facts.seq = self.sent.load(std::sync::atomic::Ordering::SeqCst);
        self.facts.send_replace(facts);
    }

    /// Waits until every request sent so far was applied.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(GcRequest::Flush(tx));
        let _ = rx.await;
    }

    /// Whether the task ended without being shut down (it panicked).
    pub fn has_stopped(&self) -> bool {
        self.join.is_finished()
    }

    /// Why a task that [has stopped](Self::has_stopped) ended.
    pub async fn stopped(self) -> String {
        match self.join.await {
            Ok(()) => "it returned".to_string(),
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .map_or("it panicked".to_string(), |m| format!("it panicked: {m}"))
            }
            Err(e) => e.to_string(),
        }
    }

    /// Stops the task as `how` says and waits for it. Whatever it did not
    /// get to is found by the next start's orphan sweep.
    pub async fn shutdown(self, how: Shutdown) {
        let GcHandle {
            requests,
            cancel,
            mut join,
            ..
        } = self;
        match how {
            Shutdown::Drain { within } => {
                drop(requests);
                if let Ok(ended) = tokio::time::timeout(within, &mut join).await {
                    log_panic(ended);
                    return;
                }
                tracing::warn!(
                    ?within,
                    "GC did not finish its queue in time; the next start's sweep collects the rest"
                );
                cancel.cancel();
            }
            Shutdown::Abandon => cancel.cancel(),
        }
        log_panic(join.await);
    }
}

/// A GC task found ended at shutdown may have panicked: say so.
fn log_panic(ended: Result<(), tokio::task::JoinError>) {
    if ended.is_err_and(|e| e.is_panic()) {
        tracing::error!("the GC task had panicked; the next start's sweep collects what it left");
    }
}

/// Starts the GC task of `job` with the registry and unreadable
/// checkpoints found at start.
pub fn spawn(
    storage: CheckpointStorage,
    job: JobId,
    fence: Arc<Fence>,
    registry: SharedRegistry,
    unreadable: BTreeSet<CheckpointId>,
    config: GcConfig,
    clock: Arc<dyn Clock>,
) -> GcHandle {
    let (requests, rx) = mpsc::unbounded_channel();
    let (facts, facts_rx) = watch::channel(GcFacts::default());
    let cancel = CancellationToken::new();
    let task = GcTask {
        storage,
        job,
        fence,
        registry,
        unreadable,
        undeleted: BTreeSet::new(),
        doomed: BTreeSet::new(),
        config,
        clock,
        facts: facts_rx,
        applied: 0,
    };
    let join = tokio::spawn(task.run(rx, cancel.clone()));
    GcHandle {
        requests,
        sent: Default::default(),
        facts,
        cancel,
        join,
    }
}

struct GcTask {
    storage: CheckpointStorage,
    job: JobId,
    fence: Arc<Fence>,
    registry: SharedRegistry,
    /// Checkpoints whose `_metadata` exists but cannot be read: while any
    /// exists, no shared file is deleted.
    unreadable: BTreeSet<CheckpointId>,
    /// No longer retained, but deleting the folder failed: retried.
    undeleted: BTreeSet<CheckpointId>,
    /// Aborted, but deleting the folder failed (its `_metadata` may have
    /// landed): their files stay registered; retried.
    doomed: BTreeSet<CheckpointId>,
    config: GcConfig,
    clock: Arc<dyn Clock>,
    facts: watch::Receiver<GcFacts>,
    /// Requests applied so far.
    applied: u64,
}

impl GcTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<GcRequest>, cancel: CancellationToken) {
        let every = self.config.sweep_every.unwrap_or(GcConfig::RETRY_EVERY);
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            let work = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                r = rx.recv() => match r {
                    Some(r) => Work::Request(r),
                    None => return,
                },
                _ = ticker.tick() => Work::Tick,
            };
            // Cancelling abandons whatever is under way at its next await.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = self.apply(work, &mut rx) => {}
            }
        }
    }

    async fn apply(&mut self, work: Work, rx: &mut mpsc::UnboundedReceiver<GcRequest>) {
        match work {
            Work::Request(r) => self.handle(r).await,
            Work::Tick => {
                self.retry().await;
                if self.config.sweep_every.is_some() {
                    let facts = self.facts.borrow().clone();
                    // Everything the facts already reflect is applied first.
                    while self.applied < facts.seq {
                        match rx.recv().await {
                            Some(r) => self.handle(r).await,
                            None => return,
                        }
                    }
                    self.sweep(&facts, self.config.min_age_ms).await;
                }
            }
        }
    }

    async fn handle(&mut self, r: GcRequest) {
        self.applied += 1;
        match r {
            GcRequest::Published(meta) => self.registry.register(&meta),
            GcRequest::Savepoint { meta, id, reply } => {
                let r = self.storage.create_savepoint(&meta, &id).await;
                tracing::info!(job = %self.job, checkpoint = %meta.checkpoint_id, savepoint = %id, ok = r.is_ok(), "savepoint copy");
                let _ = reply.send(r);
            }
            GcRequest::Discard { id, facts, done } => {
                let deleted = self.discard(id, &facts).await;
                if let Some(done) = done {
                    let _ = done.send(deleted);
                }
            }
            GcRequest::Abort { id, files, facts } => self.abort(id, &files, &facts).await,
            GcRequest::Abandoned { from, below, facts } => {
                self.abandoned(from, below, &facts).await
            }
            GcRequest::Sweep { facts, min_age_ms } => {
                self.retry().await;
                self.sweep(&facts, min_age_ms).await;
            }
            GcRequest::Flush(reply) => {
                let _ = reply.send(());
            }
        }
    }

    /// Deletes a checkpoint that is no longer retained: its folder
    /// (`_metadata` first), then the shared files only it referenced — only
    /// once `_metadata` is gone, so a checkpoint that still looks
    /// restorable never loses files.
    async fn discard(&mut self, id: CheckpointId, facts: &GcFacts) -> bool {
        let deleted = match cutpoint_core::failpoint::check("coordinator::subsume") {
            Ok(()) => self.delete_checkpoint(id).await,
            Err(e) => {
                tracing::warn!(checkpoint = %id, error = %e, "not deleting a discarded checkpoint");
                false
            }
        };
        if deleted {
            self.undeleted.remove(&id);
            let free = self
                .registry
                .release(id, facts.highest_pending(), facts.lowest_pending());
            self.delete_shared(&free).await;
        } else {
            self.undeleted.insert(id);
        }
        deleted
    }

    /// Deletes a checkpoint that will never complete: its folder, and the
    /// shared files among `files` that nothing retained or pending protects
    /// (new uploads have unique names, so only this checkpoint knew them).
    /// If the folder cannot be deleted, its `_metadata` may exist (a
    /// publish reported as failed can have landed): every shared file it
    /// names stays registered until a retry deletes the folder.
    async fn abort(&mut self, id: CheckpointId, files: &[StateFile], facts: &GcFacts) {
        if self.delete_checkpoint(id).await {
            let own: Vec<String> = files
                .iter()
                .filter(|f| {
                    f.is_shared()
                        && !self.registry.is_protected(&f.path)
                        && !facts.pending_files.contains(&f.path)
                })
                .map(|f| f.path.clone())
                .collect();
            self.delete_shared(&own).await;
        } else {
            self.registry.register_files(id, files.iter());
            self.doomed.insert(id);
        }
        let free = self.registry.collect(facts.lowest_pending());
        self.delete_shared(&free).await;
    }

    /// Retries failed deletes: discarded checkpoints, then doomed ones.
    async fn retry(&mut self) {
        let facts = self.facts.borrow().clone();
        for id in std::mem::take(&mut self.undeleted) {
            let _ = self.discard(id, &facts).await;
        }
        for id in std::mem::take(&mut self.doomed) {
            if self.delete_checkpoint(id).await {
                let free =
                    self.registry
                        .release(id, facts.highest_pending(), facts.lowest_pending());
                self.delete_shared(&free).await;
            } else {
                self.doomed.insert(id);
            }
        }
        let free = self.registry.collect(facts.lowest_pending());
        self.delete_shared(&free).await;
    }

    /// Deletes what no retained or pending checkpoint needs and is older
    /// than `min_age_ms` (see [`sweep`]); updates the unreadable ones.
    async fn sweep(&mut self, facts: &GcFacts, min_age_ms: u64) {
        if let Err(e) = cutpoint_core::failpoint::check("coordinator::orphan_sweep") {
            tracing::warn!(error = %e, "orphan sweep skipped");
            return;
        }
        if !self.fence.check().await {
            return;
        }
        let objects = match self.storage.list_job_objects_detailed(&self.job).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "orphan sweep: listing failed");
                return;
            }
        };
        let mut plan = orphans(&SweepFacts {
            objects: &objects,
            retained: &facts.retained,
            pending: &facts.pending,
            pending_files: &facts.pending_files,
            registry: &self.registry,
            now_ms: self.clock.now_ms(),
            min_age_ms,
        });
        // Folders this task is still deleting are not a person's to judge.
        let unreadable: BTreeSet<_> = plan.unaccounted.difference(&self.doomed).copied().collect();
        if unreadable != self.unreadable {
            tracing::warn!(job = %self.job, ?unreadable, "checkpoints with unreadable _metadata: shared files are not deleted while any exists");
            self.unreadable = unreadable;
        }
        if let Some(until) = self.config.hold_shared_until {
            if facts.lowest_pending().is_some_and(|lp| lp <= until) {
                plan.delete.retain(|p| !cutpoint_core::layout::is_shared(p));
            } else {
                self.config.hold_shared_until = None;
            }
        }
        if plan.delete.is_empty() {
            return;
        }
        tracing::info!(job = %self.job, objects = plan.delete.len(), "orphan sweep: deleting leftovers");
        // `_metadata` objects first, then the rest.
        let (metas, rest): (Vec<_>, Vec<_>) = plan
            .delete
            .into_iter()
            .partition(|p| p.ends_with("/_metadata"));
        if self.delete_files(&metas).await {
            self.delete_files(&rest).await;
        }
    }

    /// Deletes checkpoint folders below `below` that are neither retained
    /// nor pending and have no `_metadata`.
    async fn abandoned(&mut self, from: CheckpointId, below: CheckpointId, facts: &GcFacts) {
        if !self.fence.check().await {
            return;
        }
        let dirs = match self.storage.checkpoint_dirs(&self.job).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "listing checkpoint folders failed");
                return;
            }
        };
        for id in dirs.into_iter().filter(|id| (from..below).contains(id)) {
            if facts.retained.contains(&id)
                || facts.pending.contains(&id)
                || self.doomed.contains(&id)
                || self.undeleted.contains(&id)
            {
                continue;
            }
            // A `_metadata` here that is not retained could not be read: keep it.
            let meta = cutpoint_storage::paths::metadata_relative(id);
            match self.storage.object_size(&self.job, &meta).await {
                Ok(None) => {
                    let _ = self.delete_checkpoint(id).await;
                }
                Ok(Some(_)) => {
                    tracing::warn!(checkpoint = %id, "unreadable checkpoint left in place")
                }
                Err(e) => {
                    tracing::warn!(checkpoint = %id, error = %e, "cannot check checkpoint folder")
                }
            }
        }
    }

    /// Deletes a checkpoint folder (`_metadata` first); false if that failed.
    async fn delete_checkpoint(&self, id: CheckpointId) -> bool {
        if !self.fence.check().await {
            return false;
        }
        match self.storage.delete_checkpoint(&self.job, id).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(checkpoint = %id, error = %e, "deleting checkpoint failed; retried later");
                false
            }
        }
    }

    /// Deletes shared files nothing references any more — unless a
    /// checkpoint with unreadable metadata exists (it may reference them).
    async fn delete_shared(&self, paths: &[String]) {
        if paths.is_empty() {
            return;
        }
        if !self.unreadable.is_empty() {
            tracing::warn!(files = paths.len(), unreadable = ?self.unreadable, "not deleting shared files: a checkpoint with unreadable _metadata may reference them");
            return;
        }
        self.delete_files(paths).await;
    }

    /// Deletes files of the job (relative paths); false if that failed
    /// (the orphan sweep retries).
    async fn delete_files(&self, paths: &[String]) -> bool {
        if paths.is_empty() {
            return true;
        }
        if !self.fence.check().await {
            return false;
        }
        let deleted = match cutpoint_core::failpoint::check("coordinator::delete_shared") {
            Ok(()) => self.storage.delete_state_files(&self.job, paths).await,
            Err(e) => Err(e.into()),
        };
        match deleted {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "deleting files failed; the orphan sweep retries");
                false
            }
        }
    }
}

enum Work {
    Request(GcRequest),
    Tick,
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use cutpoint_storage::faults::{FaultAction, FaultOp, FaultRule, FaultyStore};
    use cutpoint_storage::StorageLocation;
    use object_store::memory::InMemory;

    use super::*;

    /// Storage over memory whose listings of the job folder hang for a
    /// minute (a sweep lists it; the writer check lists `_writer/` only).
    async fn slow_listing() -> (CheckpointStorage, JobId, Arc<Fence>) {
        let faulty = FaultyStore::new(Arc::new(InMemory::new()));
        faulty.add_rule(FaultRule {
            op: FaultOp::List,
            path_contains: "jobs/gc$".into(),
            action: FaultAction::Delay(Duration::from_secs(60)),
            remaining: None,
        });
        let storage = CheckpointStorage::new(StorageLocation {
            store: faulty,
            root: object_store::path::Path::from("root"),
            url: "memory:///root".into(),
        });
        let job = JobId::new("gc").unwrap();
        let lease = storage.take_writer_lease(&job, 1).await.unwrap();
        let fence = Arc::new(Fence::new(storage.clone(), job.clone(), lease.epoch));
        (storage, job, fence)
    }

    fn spawn_on(storage: &CheckpointStorage, job: &JobId, fence: Arc<Fence>) -> GcHandle {
        spawn(
            storage.clone(),
            job.clone(),
            fence,
            SharedRegistry::new(),
            BTreeSet::new(),
            GcConfig {
                sweep_every: None,
                min_age_ms: 0,
                hold_shared_until: None,
            },
            Arc::new(SystemClock),
        )
    }

    #[tokio::test]
    async fn abandon_stops_in_the_middle_of_a_hanging_sweep() {
        let (storage, job, fence) = slow_listing().await;
        let gc = spawn_on(&storage, &job, fence);
        gc.send(GcRequest::Sweep {
            facts: GcFacts::default(),
            min_age_ms: 0,
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), gc.shutdown(Shutdown::Abandon))
            .await
            .expect("abandoned at once");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn drain_applies_the_queue_and_gives_up_after_its_deadline() {
        let (storage, job, fence) = slow_listing().await;
        // A retained checkpoint to discard (its folder has a file).
        storage
            .put_state_file(
                &job,
                cutpoint_storage::StateScope::Checkpoint(CheckpointId(1)),
                &cutpoint_core::OperatorId::new("agg").unwrap(),
                cutpoint_core::SubtaskIndex(0),
                "MANIFEST-1",
                bytes::Bytes::from_static(b"m"),
            )
            .await
            .unwrap();
        let gc = spawn_on(&storage, &job, fence.clone());
        gc.send(GcRequest::Discard {
            id: CheckpointId(1),
            facts: GcFacts::default(),
            done: None,
        });
        gc.flush().await;
        let left = storage
            .list_checkpoint_objects(&job, CheckpointId(1))
            .await
            .unwrap();
        assert!(left.is_empty(), "discarded: {left:?}");
        // A sweep that hangs: the drain gives up after its deadline.
        gc.send(GcRequest::Sweep {
            facts: GcFacts::default(),
            min_age_ms: 0,
        });
        let t = Instant::now();
        gc.shutdown(Shutdown::Drain {
            within: Duration::from_millis(300),
        })
        .await;
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_fenced_gc_deletes_nothing() {
        let (storage, job, fence) = slow_listing().await;
        storage
            .put_state_file(
                &job,
                cutpoint_storage::StateScope::Checkpoint(CheckpointId(1)),
                &cutpoint_core::OperatorId::new("agg").unwrap(),
                cutpoint_core::SubtaskIndex(0),
                "MANIFEST-1",
                bytes::Bytes::from_static(b"m"),
            )
            .await
            .unwrap();
        // Another writer takes the job.
        storage.take_writer_lease(&job, 1).await.unwrap();
        let gc = spawn_on(&storage, &job, fence.clone());
        gc.send(GcRequest::Discard {
            id: CheckpointId(1),
            facts: GcFacts::default(),
            done: None,
        });
        gc.flush().await;
        assert!(fence.reason().is_some(), "fenced");
        let left = storage
            .list_checkpoint_objects(&job, CheckpointId(1))
            .await
            .unwrap();
        assert_eq!(left.len(), 1, "nothing deleted");
        gc.shutdown(Shutdown::Abandon).await;
    }
}
