//! What the tasks and snapshot workers of one execution share: the
//! [`TaskContext`], live [`TaskCounters`], and the [`AbortRegistry`] of
//! per-checkpoint cancellation tokens. (Tasks and workers both use this
//! module; it uses neither.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cutpoint_core::{CheckpointId, JobSpec};
use cutpoint_storage::CheckpointStorage;
use tokio_util::sync::CancellationToken;

use crate::sink::StagingInUse;
use crate::TaskEvent;

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
    /// Staging files of transactional sinks a restorable checkpoint names.
    pub staging_in_use: StagingInUse,
    /// The program's keyed process functions.
    pub functions: cutpoint_operator::Functions,
}

/// Live counters of one task, read by the API while the job runs (one
/// atomic update per batch, not per record).
#[derive(Debug)]
pub struct TaskCounters {
    records: AtomicU64,
    offset: AtomicU64,
    /// The watermark it sent last ([`cutpoint_core::Record::NO_TIME`]: none).
    watermark: AtomicI64,
    /// Timers waiting in its state (event and processing time).
    timers: AtomicU64,
    /// Records its windows dropped as late.
    late: AtomicU64,
}

impl Default for TaskCounters {
    fn default() -> Self {
        Self {
            records: AtomicU64::new(0),
            offset: AtomicU64::new(0),
            watermark: AtomicI64::new(cutpoint_core::Record::NO_TIME),
            timers: AtomicU64::new(0),
            late: AtomicU64::new(0),
        }
    }
}

impl TaskCounters {
    pub(crate) fn set_watermark(&self, w: i64) {
        self.watermark.store(w, Ordering::Release);
    }

    /// The watermark the task sent last (event time only).
    pub fn watermark(&self) -> Option<i64> {
        let w = self.watermark.load(Ordering::Acquire);
        (w != cutpoint_core::Record::NO_TIME).then_some(w)
    }

    pub(crate) fn set_time_stats(&self, timers: usize, late: u64) {
        self.timers.store(timers as u64, Ordering::Relaxed);
        self.late.store(late, Ordering::Relaxed);
    }

    /// Timers (event and processing time) waiting in the task's state,
    /// and records its windows dropped as late in this attempt.
    pub fn time_stats(&self) -> (u64, u64) {
        (
            self.timers.load(Ordering::Relaxed),
            self.late.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn add(&self, records: u64, offset: Option<u64>) {
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

/// Cancellation tokens per checkpoint, children of the execution's token:
/// aborting checkpoint `n` cancels its uploads everywhere.
///
/// Bounded: tokens are dropped below each completed checkpoint, and only
/// the newest [`AbortRegistry::KEEP`] are kept while checkpoints keep
/// failing. A snapshot that finds no token for an old checkpoint uploads
/// and acks it; the coordinator treats that as a late ack of an aborted
/// checkpoint and deletes its files: wasted work, never wrong.
#[derive(Debug)]
pub(crate) struct AbortRegistry {
    parent: CancellationToken,
    tokens: Mutex<BTreeMap<CheckpointId, CancellationToken>>,
}

impl AbortRegistry {
    pub(crate) fn new(parent: CancellationToken) -> Self {
        Self {
            parent,
            tokens: Mutex::new(BTreeMap::new()),
        }
    }

    /// Tokens kept at most.
    pub(crate) const KEEP: usize = 64;

    pub(crate) fn token(&self, id: CheckpointId) -> CancellationToken {
        let mut tokens = self.tokens.lock().unwrap();
        let token = tokens
            .entry(id)
            .or_insert_with(|| self.parent.child_token())
            .clone();
        while tokens.len() > Self::KEEP {
            tokens.pop_first();
        }
        token
    }

    pub(crate) fn abort(&self, id: CheckpointId) {
        self.token(id).cancel();
    }

    /// Drops tokens of checkpoints older than `id` (they are settled).
    pub(crate) fn forget_below(&self, id: CheckpointId) {
        self.tokens.lock().unwrap().retain(|k, _| *k >= id);
    }
}
