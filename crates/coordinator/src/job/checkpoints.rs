//! Carrying out the tracker's checkpoint decisions: acks and declines,
//! publishing `_metadata` (the commit point), aborts, user deletes and
//! savepoints — storage work goes to GC.

use super::*;

impl Runner {
    /// Applies an acknowledgement; publishes the checkpoint when it was the
    /// last one. `Err`: the ack was not applied.
    pub(super) async fn ack(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        checkpoint: CheckpointId,
        state: SubtaskState,
    ) -> Result<Verdict, AckRejection> {
        if let Err(e) = cutpoint_core::failpoint::check("coordinator::ack") {
            // As if the acknowledgement was lost: the checkpoint times out.
            return Err(AckRejection::Rejected(e.to_string()));
        }
        let copy = state.clone();
        match tracker.ack(checkpoint, state) {
            AckOutcome::Pending => {
                self.stats_mut().acked(checkpoint, &copy);
                Ok(Verdict::Continue)
            }
            AckOutcome::AllAcked(p) => {
                self.stats_mut().acked(checkpoint, &copy);
                Ok(self.publish(tracker, attempt, *p).await)
            }
            AckOutcome::Ignored(why) => Err(AckRejection::Rejected(why)),
            AckOutcome::Stale(state) => {
                if !tracker.was_triggered(checkpoint) {
                    return Err(AckRejection::UnknownCheckpoint(checkpoint));
                }
                if !tracker.is_retained(checkpoint) {
                    // A late ack of an aborted checkpoint: its uploads go.
                    self.clean_up(tracker, checkpoint, &state.files);
                }
                Err(AckRejection::NotPending(checkpoint))
            }
        }
    }

    /// A task declines a checkpoint: the checkpoint fails.
    pub(super) async fn decline(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        checkpoint: CheckpointId,
        task: TaskId,
        reason: String,
    ) -> Result<Verdict, AckRejection> {
        match tracker.expects(checkpoint, &task) {
            None if !tracker.was_triggered(checkpoint) => {
                Err(AckRejection::UnknownCheckpoint(checkpoint))
            }
            None => Err(AckRejection::NotPending(checkpoint)),
            Some(false) => Err(AckRejection::Rejected(format!(
                "task {task} is not part of checkpoint {checkpoint} or already acknowledged it"
            ))),
            Some(true) => {
                let a = tracker
                    .abort(checkpoint, AbortReason::Declined { task, reason })
                    .expect("pending");
                Ok(self.discard(tracker, attempt, a).await)
            }
        }
    }

    /// Deletes a retained checkpoint on a user's request, if the rules
    /// allow it; `reply` is answered once GC deleted it (or could not).
    pub(super) fn delete_retained(
        &mut self,
        tracker: &mut CheckpointTracker,
        id: CheckpointId,
        force: bool,
        reply: oneshot::Sender<Result<(), DeleteRefusal>>,
    ) {
        let retained: Vec<CheckpointId> = tracker.retained().map(|r| r.id).collect();
        if let Err(refusal) = gc::may_delete(id, &retained, self.reuse_base, force) {
            let _ = reply.send(Err(refusal));
            return;
        }
        if self.reuse_base == Some(id) {
            self.reuse_base = None;
        }
        tracker.remove_retained(id);
        let (done, deleted) = oneshot::channel();
        self.retire(tracker, id, Some(done));
        tokio::spawn(async move {
            let r = match deleted.await {
                Ok(true) => Ok(()),
                _ => Err(DeleteRefusal::NotDeletedYet(id)),
            };
            tracing::info!(checkpoint = %id, result = ?r, "checkpoint deleted on request");
            let _ = reply.send(r);
        });
    }

    /// Deletes a checkpoint that is no longer retained: its folder
    /// (`_metadata` first), then the shared files only it used — only once
    /// `_metadata` is gone, so a checkpoint that still looks restorable
    /// never loses files.
    pub(super) fn discard_retained(&mut self, tracker: &CheckpointTracker, id: CheckpointId) {
        self.retire(tracker, id, None);
    }

    /// Hands a checkpoint that is no longer retained to GC.
    fn retire(
        &mut self,
        tracker: &CheckpointTracker,
        id: CheckpointId,
        done: Option<oneshot::Sender<bool>>,
    ) {
        self.stats_mut().discarded(id);
        self.gc().send(GcRequest::Discard {
            id,
            facts: facts(tracker),
            done,
        });
    }

    /// The commit point of a checkpoint: `_metadata`, create-only, written
    /// only while this run is the job's writer, and only if every file the
    /// acks (external ones too) name lies where it may.
    pub(super) async fn write_metadata(&self, meta: &CheckpointMetadata) -> Result<(), String> {
        meta.verify(&meta.job_id, meta.checkpoint_id)
            .map_err(|e| e.to_string())?;
        cutpoint_core::failpoint::check("coordinator::write_metadata")
            .map_err(|e| e.to_string())?;
        if !self.fence().check().await {
            return Err(self
                .fence()
                .reason()
                .unwrap_or("the writer epoch could not be checked")
                .to_string());
        }
        self.storage
            .write_metadata(meta)
            .await
            .map_err(|e| e.to_string())
    }

    /// Writes `_metadata` for an all-acked checkpoint and applies retention.
    /// Returns a job-failure reason if failures exceeded the tolerable count.
    pub(super) async fn publish(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        p: PendingCheckpoint,
    ) -> Verdict {
        let job = self.spec.job_id.clone();
        let now = now_millis();
        let meta = CheckpointMetadata {
            version: METADATA_VERSION,
            job_id: job.clone(),
            checkpoint_id: p.id,
            checkpoint_type: p.checkpoint_type,
            trigger_timestamp: p.trigger_timestamp,
            complete_timestamp: now,
            parallelism: self.spec.parallelism,
            max_parallelism: self.spec.max_parallelism,
            writer_epoch: self.lease.as_ref().map(|l| l.epoch),
            subtasks: p.acks.values().cloned().collect(),
        };
        self.gc().set_facts(publishing_facts(tracker, &p));
        let written = self.write_metadata(&meta).await;
        if let Err(e) = written {
            let a = tracker.publish_failed(p, e);
            return self.discard(tracker, attempt, a).await;
        }
        // Only a crash or a delay makes sense here: the checkpoint is published.
        let _ = cutpoint_core::failpoint::check("coordinator::after_metadata");
        let meta = Arc::new(meta);
        self.gc().send(GcRequest::Published(meta.clone()));
        self.reuse_base = Some(p.id);
        let done = tracker.completed(p.id, now);
        self.stats_mut()
            .completed(p.id, now, self.storage.external_path(&job, p.id));
        record_completion(&meta, now.saturating_sub(p.trigger_timestamp));
        if let Some(exec) = &attempt.exec {
            // An injected error drops this notification, as if it was lost:
            // tasks learn of completion from the next one.
            if cutpoint_core::failpoint::check("coordinator::notify_complete").is_ok() {
                exec.notify_complete(p.id);
            }
        }
        self.advance_final(tracker, attempt);
        self.status.send_modify(|s| {
            s.checkpoints_completed = tracker.completed_count;
            s.latest_completed = Some(p.id);
        });
        if let Some(reply) = self.savepoints.remove(&p.id) {
            self.copy_to_savepoint(meta.clone(), reply);
        }
        for a in done.aborted {
            let _ = self.discard(tracker, attempt, a).await;
        }
        for old in done.subsumed {
            self.discard_retained(tracker, old);
        }
        for old in std::mem::take(&mut self.superseded) {
            if tracker.remove_retained(old) {
                tracing::info!(checkpoint = %old, "deleting a checkpoint of the timeline this run replaced");
                self.discard_retained(tracker, old);
            }
        }
        self.gc().send(GcRequest::Abandoned {
            from: self.first_id,
            below: p.id,
            facts: facts(tracker),
        });
        Verdict::Continue
    }

    /// Aborts a checkpoint: cancel its uploads, delete its folder and the
    /// shared files only it uploaded. Returns a job-failure reason if this
    /// exceeded the tolerable failures.
    pub(super) async fn discard(
        &mut self,
        tracker: &CheckpointTracker,
        attempt: &Attempt,
        a: Abort,
    ) -> Verdict {
        if let Some(exec) = &attempt.exec {
            exec.abort(a.id);
        }
        let message = a.reason.message();
        if a.reason.counts_as_failure() {
            metrics::counter!("cutpoint_checkpoints_failed_total", "job" => self.spec.job_id.to_string())
                .increment(1);
            tracing::warn!(checkpoint = %a.id, reason = %message, "checkpoint failed");
        } else {
            tracing::debug!(checkpoint = %a.id, reason = %message, "checkpoint aborted");
        }
        if let Some(reply) = self.savepoints.remove(&a.id) {
            let _ = reply.send(Err(SavepointError::CheckpointFailed {
                checkpoint: a.id,
                reason: message.clone(),
            }));
        }
        self.clean_up(tracker, a.id, &a.files);
        self.stats_mut().failed(a.id, now_millis(), message.clone());
        self.status.send_modify(|s| {
            s.checkpoints_failed = tracker.failed_count;
            if a.reason.counts_as_failure() {
                s.last_checkpoint_failure = Some(format!("checkpoint {}: {message}", a.id));
            }
        });
        if !a.fail_job {
            return Verdict::Continue;
        }
        Verdict::FailJob(format!(
            "checkpoint {} failed ({message}) and {} consecutive failures exceed tolerable_failures={}",
            a.id,
            tracker.config().tolerable_failures + 1,
            tracker.config().tolerable_failures
        ))
    }

    /// Has GC copy a just-published checkpoint into a savepoint (before
    /// any request that could delete it) and answers `reply` when it is done.
    pub(super) fn copy_to_savepoint(&self, meta: Arc<CheckpointMetadata>, reply: SavepointReply) {
        let (job, id) = (meta.job_id.clone(), meta.checkpoint_id);
        let sp = match SavepointId::new(format!("{job}-{}", id.0)) {
            Ok(sp) => sp,
            Err(e) => {
                let _ = reply.send(Err(SavepointError::Name {
                    checkpoint: id,
                    source: e,
                }));
                return;
            }
        };
        let (tx, rx) = oneshot::channel();
        self.gc().send(GcRequest::Savepoint {
            meta,
            id: sp.clone(),
            reply: tx,
        });
        tokio::spawn(async move {
            let r = match rx.await {
                Ok(Ok(external_path)) => Ok(SavepointInfo {
                    savepoint_id: sp,
                    checkpoint_id: id,
                    external_path,
                }),
                Ok(Err(source)) => Err(SavepointError::Copy {
                    checkpoint: id,
                    source,
                }),
                Err(_) => Err(SavepointError::JobEnded),
            };
            tracing::info!(job = %job, checkpoint = %id, result = ?r, "savepoint");
            let _ = reply.send(r);
        });
    }

    /// Hands a checkpoint that will never complete to GC: its folder, and
    /// the shared files only its acks named (see [`crate::gc`]).
    pub(super) fn clean_up(
        &mut self,
        tracker: &CheckpointTracker,
        id: CheckpointId,
        files: &[cutpoint_core::StateFile],
    ) {
        if let Some(reply) = self.savepoints.remove(&id) {
            let _ = reply.send(Err(SavepointError::CheckpointFailed {
                checkpoint: id,
                reason: "the job failed or stopped first".into(),
            }));
        }
        self.gc().send(GcRequest::Abort {
            id,
            files: files.to_vec(),
            facts: facts(tracker),
        });
    }
}

/// The metrics and the log line of a completed checkpoint.
fn record_completion(meta: &CheckpointMetadata, duration_ms: u64) {
    let labels = [("job", meta.job_id.to_string())];
    metrics::counter!("cutpoint_checkpoints_completed_total", &labels).increment(1);
    metrics::histogram!("cutpoint_checkpoint_duration_seconds", &labels)
        .record(duration_ms as f64 / 1000.0);
    metrics::histogram!("cutpoint_checkpoint_state_size_bytes", &labels)
        .record(meta.state_size() as f64);
    metrics::histogram!("cutpoint_checkpoint_checkpointed_size_bytes", &labels)
        .record(meta.checkpointed_size() as f64);
    let alignment = meta
        .subtasks
        .iter()
        .map(|s| s.alignment_duration_ms)
        .max()
        .unwrap_or(0);
    metrics::histogram!("cutpoint_checkpoint_alignment_seconds", &labels)
        .record(alignment as f64 / 1000.0);
    tracing::info!(
        job = %meta.job_id,
        checkpoint = %meta.checkpoint_id,
        checkpoint_type = meta.checkpoint_type.as_str(),
        duration_ms,
        state_size = meta.state_size(),
        checkpointed_size = meta.checkpointed_size(),
        "checkpoint completed"
    );
}
