//! The runner's lifecycle: taking the job (work dir, writer lease, GC),
//! its attempts, and what recovery decides after each failure.

use super::*;

impl Runner {
    pub(super) async fn run(
        mut self,
        restore_from: Option<RestoreFrom>,
    ) -> Result<JobOutcome, JobError> {
        let result = self.run_inner(restore_from).await;
        // Whatever was handed to GC (aborted checkpoints, the final sweep)
        // is done before the job counts as ended.
        if let Some(gc) = self.gc.take() {
            gc.shutdown(gc::Shutdown::Drain {
                within: gc::DRAIN_DEADLINE,
            })
            .await;
        }
        // The work dir is free before the job counts as ended (a restore
        // starts the job again in it at once).
        drop(self.work.take());
        self.status.send_modify(|s| {
            s.state = match &result {
                Ok(_) => JobState::Finished,
                Err(JobError::Cancelled) => JobState::Cancelled,
                Err(e) => {
                    s.last_failure = Some(e.to_string());
                    JobState::Failed
                }
            }
        });
        result
    }

    pub(super) async fn run_inner(
        &mut self,
        restore_from: Option<RestoreFrom>,
    ) -> Result<JobOutcome, JobError> {
        let job = self.spec.job_id.clone();
        let started = Instant::now();
        let (mut tracker, mut restore) = self.take_job(&restore_from).await?;
        let mut outcome = JobOutcome::new();
        let mut excluded = recovery::excluded_at_start(
            tracker.retained().map(|r| r.id),
            restore.as_ref().map(|m| m.checkpoint_id),
        );
        // The abandoned timeline: once this run completed a checkpoint of
        // its own, it goes (until then it stays, in case the restore itself
        // was the mistake).
        self.superseded = excluded.clone();
        let policy = RecoveryPolicy {
            fallback_to_older_checkpoint: self.spec.restart.fallback_to_older_checkpoint,
            max_restarts: self.spec.restart.max_attempts,
        };
        let mut chosen_by = match restore_from {
            Some(RestoreFrom::Latest) | None => ChosenBy::Policy,
            Some(_) => ChosenBy::User,
        };
        let mut attempt_no = 0u32;
        let mut failure_at: Option<Instant> = None;
        loop {
            let end = self
                .run_attempt(&mut tracker, &restore, attempt_no, failure_at, &mut outcome)
                .await?;
            // The last attempt's counters stay visible after the job ended.
            outcome.checkpoints_completed = tracker.completed_count;
            outcome.checkpoints_failed = tracker.failed_count;
            let (error, failure, at) = match end {
                AttemptEnd::Finished(tables) => {
                    self.sweep_finished(&tracker).await;
                    let result = self.spec.result_stage().id;
                    let (last, before): (Vec<_>, Vec<_>) =
                        tables.into_iter().partition(|(op, _)| *op == result);
                    outcome.final_state = last.into_iter().map(|(_, t)| t).collect();
                    outcome.stage_state = before;
                    outcome.duration = started.elapsed();
                    return Ok(outcome);
                }
                AttemptEnd::Cancelled => return Err(JobError::Cancelled),
                AttemptEnd::Failed { error, failure, at } => (error, failure, at),
            };
            tracing::warn!(job = %job, attempt = attempt_no, %error, ?failure, "job attempt failed");
            let restored = restore.as_ref().map(|m| (m.checkpoint_id, chosen_by));
            chosen_by = ChosenBy::Policy;
            attempt_no += 1;
            match policy.after_failure(failure, restored, outcome.restarts) {
                AfterFailure::FallBack { bad } => {
                    excluded.insert(bad);
                    restore = Some(
                        self.fall_back(&tracker, &excluded, bad, &error, &mut outcome)
                            .await?,
                    );
                }
                AfterFailure::Fail => {
                    self.record_failure(&error, &mut outcome);
                    let reason = match failure {
                        AttemptFailure::Transient => {
                            format!("{error} (gave up after {} restarts)", outcome.restarts)
                        }
                        _ => error,
                    };
                    return Err(JobError::Failed { reason });
                }
                AfterFailure::Restart => {
                    self.record_failure(&error, &mut outcome);
                    outcome.restarts += 1;
                    metrics::counter!("cutpoint_job_restarts_total", "job" => job.to_string())
                        .increment(1);
                    failure_at = Some(at);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(self.spec.restart.delay_ms)) => {}
                        _ = self.cancel.cancelled() => return Err(JobError::Cancelled),
                    }
                    restore = self.latest_restorable(&tracker, &excluded).await?;
                }
            }
        }
    }

    /// Takes the job: its work dir (locked, emptied), its storage (a writer
    /// lease: older writers are fenced, the ids are this run's), the restore
    /// point (a savepoint is imported under the lease's first id), what
    /// storage retains, and the GC task, which sweeps first.
    async fn take_job(
        &mut self,
        restore_from: &Option<RestoreFrom>,
    ) -> Result<(CheckpointTracker, Option<Arc<CheckpointMetadata>>), JobError> {
        let job = self.spec.job_id.clone();
        let dir = self.local_dir.clone();
        let work = tokio::task::spawn_blocking(move || WorkDir::take(&dir))
            .await
            .map_err(|e| JobError::Internal(e.to_string()))??;
        self.work = Some(Arc::new(work));
        // A restore point that does not exist fails here, before this run
        // takes the job's storage (fencing whoever writes it now).
        if let Some(from) = restore_from {
            restore::resolve(&self.storage, &job, from.clone()).await?;
        }
        let above = self
            .storage
            .checkpoint_dirs(&job)
            .await?
            .last()
            .map_or(1, |m| m.0 + 1);
        let lease = self.storage.take_writer_lease(&job, above).await?;
        self.lease = Some(lease.clone());
        self.first_id = CheckpointId(lease.first_id);
        let fence = Arc::new(Fence::new(self.storage.clone(), job.clone(), lease.epoch));
        self.fence = Some(fence.clone());
        tracing::info!(job = %job, epoch = lease.epoch, ids = ?(lease.first_id..=lease.last_id), "took the job's storage (older writers are fenced)");
        self.storage.write_job_spec(&self.spec).await?;
        let restore = match restore_from {
            Some(from) => Some(Arc::new(
                restore::prepare(
                    &self.storage,
                    &job,
                    from.clone(),
                    CheckpointId(lease.first_id),
                )
                .await?,
            )),
            None => None,
        };
        let (retained, registry, unreadable) = self.load_retained().await?;
        self.retained_at_start = retained.iter().map(|r| r.id).collect();
        register_metrics(&job);
        // A savepoint imported as the lease's first id: the next one is free.
        let first = restore.as_ref().map_or(lease.first_id, |m| {
            m.checkpoint_id.0.max(lease.first_id - 1) + 1
        });
        let mut tracker =
            CheckpointTracker::new(self.spec.checkpoint.clone(), CheckpointId(first), retained);
        tracker.grant_ids(CheckpointId(first), CheckpointId(lease.last_id));
        self.gc = Some(self.spawn_gc(&tracker, registry, unreadable, &[], None));
        Ok((tracker, restore))
    }

    /// Starts the GC task with what storage holds (`registry`,
    /// `unreadable`) and the tracker's facts; it discards `discard` (no
    /// longer retained), then sweeps. `hold_shared_until`: see
    /// [`GcConfig::hold_shared_until`].
    fn spawn_gc(
        &self,
        tracker: &CheckpointTracker,
        registry: SharedRegistry,
        unreadable: BTreeSet<CheckpointId>,
        discard: &[CheckpointId],
        hold_shared_until: Option<CheckpointId>,
    ) -> GcHandle {
        let config = GcConfig {
            sweep_every: tracker
                .config()
                .orphan_sweep_interval_ms
                .map(Duration::from_millis),
            min_age_ms: tracker.config().timeout_ms,
            hold_shared_until,
        };
        let gc = gc::spawn(
            self.storage.clone(),
            self.spec.job_id.clone(),
            self.fence.clone().expect("the lease is taken first"),
            registry,
            unreadable,
            config,
            Arc::new(SystemClock),
        );
        for id in discard {
            gc.send(GcRequest::Discard {
                id: *id,
                facts: facts(tracker),
                done: None,
            });
        }
        gc.send(GcRequest::Sweep {
            facts: facts(tracker),
            min_age_ms: tracker.config().timeout_ms,
        });
        gc.set_facts(facts(tracker));
        gc
    }

    /// The GC task stopped on its own while the attempt runs (it only
    /// stops when shut down, so it panicked): starts a new one on what
    /// storage holds now. Its requests were lost: every checkpoint still in
    /// storage that this run retained (at the start, or one of its own ids)
    /// and no longer retains is discarded again; the shared files the old
    /// task had released are unreferenced now, and the new task deletes none
    /// until every checkpoint pending now has settled (one of them may
    /// reuse them). Checkpoints that were unreadable at the start, or carry
    /// another writer's ids, are left alone.
    pub(super) async fn restart_gc_if_stopped(&mut self, tracker: &CheckpointTracker) {
        if !self.gc().has_stopped() {
            return;
        }
        if self.fence().reason().is_some() || self.gc_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let (found, registry, unreadable) = match self.load_retained().await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(job = %self.spec.job_id, error = %e, "the GC task stopped; listing storage to restart it failed (retried in 1 s)");
                self.gc_retry_at = Some(Instant::now() + Duration::from_secs(1));
                return;
            }
        };
        let ours = self.first_id..=tracker.last_granted().unwrap_or(CheckpointId(u64::MAX));
        let kept: BTreeSet<CheckpointId> = tracker.retained().map(|r| r.id).collect();
        let discard: Vec<CheckpointId> = found
            .iter()
            .map(|r| r.id)
            .filter(|id| self.retained_at_start.contains(id) || ours.contains(id))
            .filter(|id| !kept.contains(id))
            .collect();
        let hold = tracker.pending().map(|p| p.id).max();
        let new = self.spawn_gc(tracker, registry, unreadable, &discard, hold);
        let why = self.gc.replace(new).expect("GC runs").stopped().await;
        tracing::error!(job = %self.spec.job_id, why = %why, discard = ?discard, "the GC task stopped; restarted it on what storage holds");
        metrics::counter!("cutpoint_gc_restarts_total", "job" => self.spec.job_id.to_string())
            .increment(1);
    }

    /// Every completed checkpoint in storage, oldest first; the registry
    /// that counts the shared files they reference; the checkpoints whose
    /// metadata cannot be read (corrupt, a newer format): while any exists,
    /// shared files are never deleted (they may be its files). A storage
    /// error is an error.
    pub(super) async fn load_retained(
        &mut self,
    ) -> Result<(Vec<Retained>, SharedRegistry, BTreeSet<CheckpointId>), JobError> {
        let mut retained = Vec::new();
        let mut registry = SharedRegistry::new();
        let mut unreadable = BTreeSet::new();
        let listings = self.storage.list_checkpoints(&self.spec.job_id).await?;
        for l in listings.into_iter().rev() {
            match l.metadata {
                Ok(m) => {
                    registry.register(&m);
                    retained.push(Retained {
                        id: m.checkpoint_id,
                        complete_timestamp: m.complete_timestamp,
                    });
                }
                Err(e) if e.is_data_error() => {
                    tracing::warn!(checkpoint = %l.checkpoint_id, error = %e, "unusable checkpoint in storage: shared files are not deleted while it exists");
                    unreadable.insert(l.checkpoint_id);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((retained, registry, unreadable))
    }

    /// Starts attempt `attempt_no` (restoring `restore`) and drives it to
    /// its end.
    pub(super) async fn run_attempt(
        &mut self,
        tracker: &mut CheckpointTracker,
        restore: &Option<Arc<CheckpointMetadata>>,
        attempt_no: u32,
        failure_at: Option<Instant>,
        outcome: &mut JobOutcome,
    ) -> Result<AttemptEnd, JobError> {
        let job = self.spec.job_id.clone();
        if let Some(meta) = restore {
            outcome.restored_from.push(meta.checkpoint_id);
            self.stats_mut().restored(
                meta.checkpoint_id,
                now_millis(),
                self.storage.external_path(&job, meta.checkpoint_id),
            );
            tracing::info!(job = %job, checkpoint = %meta.checkpoint_id, attempt = attempt_no, "restoring");
        }
        let (events_tx, events) = mpsc::unbounded_channel();
        let staging_in_use = self.staging_in_use().await?;
        let work = self.work.clone().expect("taken at start");
        let attempt_dir = tokio::task::spawn_blocking(move || work.attempt(attempt_no))
            .await
            .map_err(|e| JobError::Internal(e.to_string()))??;
        let exec = Execution::start(ExecutionConfig {
            spec: self.spec.clone(),
            storage: self.storage.clone(),
            restore: restore.clone(),
            attempt: attempt_no,
            local_dir: attempt_dir.clone(),
            events: events_tx,
            runtime: tokio::runtime::Handle::current(),
            staging_in_use,
            functions: self.functions.clone(),
        })
        .map_err(|e| match e {
            RuntimeError::Restore(m) => JobError::Restore(m),
            // (Before any task: the spec's function does not exist or
            // cannot declare its states.)
            RuntimeError::Operator(e) => JobError::Invalid(e.to_string()),
            e => JobError::Internal(e.to_string()),
        })?;
        tracker.resume();
        self.reuse_base = restore.as_ref().map(|m| m.checkpoint_id);
        *self.live.lock().expect("live lock") = Some(exec.counters());
        self.status.send_modify(|s| {
            s.state = JobState::Running;
            s.tasks_running = false;
            s.attempt = attempt_no;
            s.restored_from = outcome.restored_from.clone();
        });
        let internal = exec.tasks().len();
        let mut tasks = exec.tasks().to_vec();
        tasks.extend(self.spec.external_tasks.iter().map(|t| TaskId::new(t, 0)));
        let mut attempt = Attempt {
            dir: attempt_dir,
            internal,
            tasks,
            exec: Some(exec),
            started: 0,
            finished: 0,
            tables: Vec::new(),
            failure_at,
            sources_ended: 0,
            records_reported: 0,
            finished_sources: Vec::new(),
            final_from: None,
        };
        Ok(self.drive(tracker, &mut attempt, events, outcome).await)
    }

    /// The staging files of the transactional sinks that checkpoints and
    /// savepoints of this job name as pre-committed: a sink recovering from
    /// one checkpoint keeps them, so the others stay restorable. All of
    /// them when any metadata cannot be read.
    pub(super) async fn staging_in_use(&self) -> Result<StagingInUse, JobError> {
        let mut handles = BTreeSet::new();
        if !self.spec.any_transactional_sink() {
            return Ok(StagingInUse::Only(handles));
        }
        let mut add = |m: &CheckpointMetadata| {
            let txns = m.subtasks.iter().flat_map(|s| &s.pending_transactions);
            handles.extend(txns.map(|t| t.handle.clone()));
        };
        for l in self.storage.list_checkpoints(&self.spec.job_id).await? {
            match l.metadata {
                Ok(m) => add(&m),
                Err(e) if e.is_data_error() => return Ok(StagingInUse::All),
                Err(e) => return Err(e.into()),
            }
        }
        for (_, meta) in self.storage.list_savepoints().await? {
            match meta {
                Ok(m) if m.job_id == self.spec.job_id => add(&m),
                Ok(_) => {}
                Err(e) if e.is_data_error() => return Ok(StagingInUse::All),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(StagingInUse::Only(handles))
    }

    /// After the job finished: every task of this process has stopped, so
    /// nothing of ours is still uploading and leftovers of aborted or crashed
    /// checkpoints can go regardless of age (external tasks may still
    /// upload: for them the usual minimum age). A GC task that stopped on
    /// the way (a panic) is restarted and the sweep sent again, once.
    pub(super) async fn sweep_finished(&mut self, tracker: &CheckpointTracker) {
        let min_age_ms = if self.spec.external_tasks.is_empty() {
            0
        } else {
            tracker.config().timeout_ms
        };
        for _ in 0..2 {
            self.restart_gc_if_stopped(tracker).await;
            self.gc().send(GcRequest::Sweep {
                facts: facts(tracker),
                min_age_ms,
            });
            self.gc().flush().await;
            if !self.gc().has_stopped() {
                return;
            }
        }
    }

    /// The checkpoint restored from turned out corrupt: the next older
    /// restorable one, said in the logs, the status and the outcome.
    pub(super) async fn fall_back(
        &mut self,
        tracker: &CheckpointTracker,
        excluded: &BTreeSet<CheckpointId>,
        bad: CheckpointId,
        error: &str,
        outcome: &mut JobOutcome,
    ) -> Result<Arc<CheckpointMetadata>, JobError> {
        let Some(next) = self.latest_restorable(tracker, excluded).await? else {
            return Err(JobError::Restore(format!(
                "checkpoint {bad} cannot be restored ({error}) and no older intact checkpoint is retained"
            )));
        };
        let msg = format!(
            "checkpoint {bad} cannot be restored ({error}); falling back to checkpoint {}",
            next.checkpoint_id
        );
        tracing::error!(job = %self.spec.job_id, "{msg}");
        outcome.restore_fallbacks.push(msg.clone());
        self.status.send_modify(|s| s.restore_fallbacks.push(msg));
        Ok(next)
    }

    pub(super) fn record_failure(&self, error: &str, outcome: &mut JobOutcome) {
        outcome.failures.push(error.to_string());
        self.status.send_modify(|s| {
            s.state = JobState::Restarting;
            s.last_failure = Some(error.to_string());
        });
    }

    /// The newest retained checkpoint, not `excluded`, whose metadata
    /// verifies (the rule of [`recovery::newest_restorable`]): bad data is
    /// skipped, a storage error fails.
    pub(super) async fn latest_restorable(
        &self,
        tracker: &CheckpointTracker,
        excluded: &BTreeSet<CheckpointId>,
    ) -> Result<Option<Arc<CheckpointMetadata>>, JobError> {
        let ids: Vec<_> = tracker
            .retained()
            .map(|r| r.id)
            .filter(|id| !excluded.contains(id))
            .collect();
        let mut candidates = Vec::new();
        let mut read = None;
        // Newest first, up to the first that is not skippable.
        for id in ids.into_iter().rev() {
            let r = self.storage.read_metadata(&self.spec.job_id, id).await;
            let outcome = restore::read_outcome(&r);
            let done = !matches!(outcome, recovery::MetadataRead::Unusable(_));
            candidates.push(recovery::Candidate { id, read: outcome });
            if done {
                read = Some(r);
                break;
            }
        }
        match (recovery::newest_restorable(&candidates, excluded), read) {
            (recovery::Choice::Restore { skipped, .. }, Some(Ok(meta))) => {
                for s in skipped {
                    tracing::error!("retained checkpoint is unusable; trying an older one: {s}");
                }
                Ok(Some(Arc::new(meta)))
            }
            (recovery::Choice::Unreachable { .. }, Some(Err(e))) => Err(e.into()),
            (recovery::Choice::Nothing { .. }, _) => Ok(None),
            (choice, _) => Err(JobError::Internal(format!(
                "recovery chose {choice:?} from facts it was not given"
            ))),
        }
    }

    /// Takes the next writer lease when the ids run low (see
    /// [`CheckpointStorage::renew_writer_lease`]).
    pub(super) async fn renew_lease(&mut self, tracker: &mut CheckpointTracker) {
        const RENEW_BELOW: u64 = 64;
        let Some(lease) = self
            .lease
            .clone()
            .filter(|_| tracker.ids_left() < RENEW_BELOW)
        else {
            return;
        };
        // The next epoch is ours while we create it: the GC task's checks
        // must not take it for a newer writer.
        self.fence().claim(lease.epoch + 1);
        match self
            .storage
            .renew_writer_lease(&self.spec.job_id, lease.clone(), 0)
            .await
        {
            Ok(new) => {
                tracing::info!(epoch = new.epoch, ids = ?(new.first_id..=new.last_id), "writer lease renewed");
                tracker.grant_ids(CheckpointId(new.first_id), CheckpointId(new.last_id));
                self.fence().renewed(new.epoch);
                self.lease = Some(new);
            }
            Err(e @ StorageError::Fenced { .. }) => self.fence().fence(e.to_string()),
            Err(e) => {
                // Unknown whether it landed: rather fence ourselves later
                // than ever overlook a writer that took that epoch.
                self.fence().unclaim(lease.epoch);
                tracing::warn!(error = %e, "renewing the writer lease failed; retrying");
            }
        }
    }

    pub(super) fn gc(&self) -> &GcHandle {
        self.gc.as_ref().expect("GC runs from the start of the job")
    }

    pub(super) fn fence(&self) -> &Fence {
        self.fence
            .as_ref()
            .expect("the lease is taken at the start")
    }

    /// Cancels the execution, waits for all its threads, then deletes the
    /// folders of the checkpoints that were pending. The attempt ended with
    /// a failure a restart may fix.
    pub(super) async fn end_failed(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        error: String,
    ) -> AttemptEnd {
        self.end_failed_with(tracker, attempt, error, AttemptFailure::Transient)
            .await
    }

    pub(super) async fn end_failed_with(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        error: String,
        failure: AttemptFailure,
    ) -> AttemptEnd {
        let at = Instant::now();
        let aborted = tracker.abort_all(AbortReason::JobFailing);
        tracker.stop("restarting");
        self.join(attempt).await;
        for a in aborted {
            self.clean_up(tracker, a.id, &a.files);
        }
        AttemptEnd::Failed { error, failure, at }
    }

    /// Cancels and joins the execution, then removes its local files.
    pub(super) async fn join(&self, attempt: &mut Attempt) {
        if let Some(exec) = attempt.exec.take() {
            exec.cancel();
            let _ = tokio::task::spawn_blocking(move || exec.join()).await;
            if let Err(e) = tokio::fs::remove_dir_all(&attempt.dir).await {
                tracing::debug!(dir = %attempt.dir.display(), error = %e, "removing local state failed");
            }
        }
    }

    pub(super) fn stats_mut(&self) -> std::sync::MutexGuard<'_, StatsBook> {
        self.stats.lock().expect("stats lock")
    }

    /// Adds what the sources read since the last report to
    /// `cutpoint_records_read_total` (every attempt's reads, replays
    /// included), and sets each task's `cutpoint_task_watermark_ms` (event
    /// time only) and each keyed task's timers and late records (event
    /// time or a window).
    pub(super) fn report_records(&self, attempt: &mut Attempt) {
        let Some(exec) = &attempt.exec else { return };
        let windowed = self.spec.window.is_some();
        for (task, c) in exec.counters().iter() {
            let labels = [
                ("job", self.spec.job_id.to_string()),
                ("task", task.to_string()),
            ];
            let watermark = c.watermark();
            if let Some(w) = watermark {
                metrics::gauge!("cutpoint_task_watermark_ms", &labels).set(w as f64);
            }
            let keyed = task.operator.as_str() != cutpoint_runtime::SOURCE_OPERATOR;
            if keyed && (watermark.is_some() || windowed) {
                let (timers, late) = c.time_stats();
                metrics::gauge!("cutpoint_task_timers_pending", &labels).set(timers as f64);
                metrics::gauge!("cutpoint_task_late_records", &labels).set(late as f64);
            }
        }
        let read: u64 = exec
            .counters()
            .iter()
            .filter(|(t, _)| t.operator.as_str() == cutpoint_runtime::SOURCE_OPERATOR)
            .map(|(_, c)| c.records())
            .sum();
        if read > attempt.records_reported {
            metrics::counter!("cutpoint_records_read_total", "job" => self.spec.job_id.to_string())
                .increment(read - attempt.records_reported);
            attempt.records_reported = read;
        }
    }
}
