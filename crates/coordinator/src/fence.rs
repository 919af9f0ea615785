//! [`Fence`]: one writer per job, checked where it matters.
//!
//! A run holds a writer lease (`_writer/{epoch}` in storage, see
//! `CheckpointStorage::take_writer_lease`). Before it publishes a
//! checkpoint and before every batch of deletes, it checks that no newer
//! epoch exists. Once a newer one does, the run is fenced for good: every
//! later check fails, nothing more is published or deleted, and whoever
//! waits on [`Fence::fenced`] (the coordinator's loop) learns why. A check
//! that cannot be made (storage does not answer) fails that one attempt
//! only: the publish fails or the delete waits for a later try.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use cutpoint_core::JobId;
use cutpoint_storage::{CheckpointStorage, StorageError};
use tokio::sync::Notify;

/// The writer fence of one run of a job.
#[derive(Debug)]
pub struct Fence {
    storage: CheckpointStorage,
    job: JobId,
    /// The epoch of the current lease (changes when the lease is renewed).
    epoch: AtomicU64,
    reason: OnceLock<String>,
    notify: Notify,
}

impl Fence {
    pub fn new(storage: CheckpointStorage, job: JobId, epoch: u64) -> Self {
        Self {
            storage,
            job,
            epoch: AtomicU64::new(epoch),
            reason: OnceLock::new(),
            notify: Notify::new(),
        }
    }

    /// A renewed lease's epoch.
    pub fn renewed(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// Why the run is fenced, if it is.
    pub fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }

    /// Records that a newer writer took the job.
    pub fn fence(&self, why: String) {
        if self.reason.set(why).is_ok() {
            tracing::error!(job = %self.job, reason = self.reason().unwrap_or(""), "fenced: this run stops and deletes nothing more");
            self.notify.notify_waiters();
        }
    }

    /// Whether this run may publish or delete now.
    pub async fn check(&self) -> bool {
        if self.reason.get().is_some() {
            return false;
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        match self.storage.check_writer(&self.job, epoch).await {
            Ok(()) => true,
            Err(e @ StorageError::Fenced { .. }) => {
                self.fence(e.to_string());
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the writer epoch; not deleting or publishing now");
                false
            }
        }
    }

    /// Completes once the run is fenced (at once if it is already).
    pub async fn fenced(&self) -> String {
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self.reason.get() {
                return r.clone();
            }
            notified.await;
        }
    }
}
