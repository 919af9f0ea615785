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
//!
//! Renewing the lease creates the next epoch: it is [`Fence::claim`]ed
//! first, so a check racing the renewal does not mistake it for another
//! writer's; if the renewal's outcome is unknown the claim is withdrawn
//! (better to fence ourselves than to overlook a writer that took it).

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
    /// The newest epoch that is ours: the current lease's, or the next one
    /// while a renewal creates it.
    claimed: AtomicU64,
    reason: OnceLock<String>,
    notify: Notify,
}

impl Fence {
    pub fn new(storage: CheckpointStorage, job: JobId, epoch: u64) -> Self {
        Self {
            storage,
            job,
            claimed: AtomicU64::new(epoch),
            reason: OnceLock::new(),
            notify: Notify::new(),
        }
    }

    /// A renewal is about to create `epoch`.
    pub fn claim(&self, epoch: u64) {
        self.claimed.fetch_max(epoch, Ordering::SeqCst);
    }

    /// The renewal's outcome is unknown: only `current` is surely ours.
    pub fn unclaim(&self, current: u64) {
        self.claimed.store(current, Ordering::SeqCst);
    }

    /// A renewed lease's epoch.
    pub fn renewed(&self, epoch: u64) {
        self.claim(epoch);
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
        let epoch = self.claimed.load(Ordering::SeqCst);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cutpoint_storage::StorageLocation;
    use object_store::memory::InMemory;

    use super::*;

    fn storage() -> CheckpointStorage {
        CheckpointStorage::new(StorageLocation {
            store: Arc::new(InMemory::new()),
            root: object_store::path::Path::from("root"),
            url: "memory:///root".into(),
        })
    }

    #[tokio::test]
    async fn a_renewal_in_progress_is_not_another_writer_but_a_new_writer_is() {
        let (storage, job) = (storage(), JobId::new("f").unwrap());
        let lease = storage.take_writer_lease(&job, 1).await.unwrap();
        let fence = Fence::new(storage.clone(), job.clone(), lease.epoch);
        assert!(fence.check().await);
        // A renewal creates epoch 2 while a check runs (the GC task's).
        fence.claim(lease.epoch + 1);
        let renewed = storage
            .renew_writer_lease(&job, lease.clone(), 0)
            .await
            .unwrap();
        assert!(fence.check().await, "our own renewal does not fence us");
        fence.renewed(renewed.epoch);
        // Another process takes the job: fenced for good.
        storage.take_writer_lease(&job, 1).await.unwrap();
        assert!(!fence.check().await);
        assert!(fence.reason().unwrap().contains("fenced"));
        assert!(!fence.check().await);
    }

    #[tokio::test]
    async fn a_withdrawn_claim_does_not_hide_a_writer_that_took_that_epoch() {
        let (storage, job) = (storage(), JobId::new("g").unwrap());
        let lease = storage.take_writer_lease(&job, 1).await.unwrap();
        let fence = Fence::new(storage.clone(), job.clone(), lease.epoch);
        fence.claim(lease.epoch + 1);
        fence.unclaim(lease.epoch);
        storage.take_writer_lease(&job, 1).await.unwrap();
        assert!(!fence.check().await);
    }
}
