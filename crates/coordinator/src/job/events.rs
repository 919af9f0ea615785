//! The coordinator's event loop for one attempt: task events, commands,
//! timers, fencing — each handled and turned into tracker decisions.

use super::*;

impl Runner {
    /// Runs the attempt's event loop until the attempt ends.
    pub(super) async fn drive(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        mut events: mpsc::UnboundedReceiver<TaskEvent>,
        outcome: &mut JobOutcome,
    ) -> AttemptEnd {
        let interval = tracker.config().interval_ms.map(Duration::from_millis);
        let mut ticker = tokio::time::interval(interval.unwrap_or(Duration::from_secs(3600)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate; start one interval in
        let mut housekeeping = tokio::time::interval(Duration::from_millis(50));
        let fence = self.fence.clone().expect("the lease is taken at the start");
        loop {
            // What GC must respect, as of the last event.
            self.gc().set_facts(facts(tracker));
            let next = tokio::select! {
                why = fence.fenced() => Next::End(
                    self.end_failed_with(tracker, attempt, why, AttemptFailure::Fatal).await,
                ),
                ev = events.recv() => self.on_event(tracker, attempt, ev, outcome).await,
                _ = ticker.tick(), if interval.is_some() => {
                    let t = tracker.config().checkpoint_type;
                    let _ = self.trigger(tracker, attempt, true, t);
                    Next::Continue
                }
                Some(cmd) = self.commands.recv() => self.on_command(tracker, attempt, cmd).await.into(),
                _ = housekeeping.tick() => self.housekeeping(tracker, attempt).await.into(),
                _ = self.cancel.cancelled() => Next::End(self.cancelled(tracker, attempt).await),
            };
            match next {
                Next::Continue => {}
                Next::FailJob(reason) => return self.end_failed(tracker, attempt, reason).await,
                Next::End(end) => return end,
            }
        }
    }

    /// A task's event.
    async fn on_event(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        ev: Option<TaskEvent>,
        outcome: &mut JobOutcome,
    ) -> Next {
        let Some(ev) = ev else {
            return Next::FailJob("all tasks vanished".into());
        };
        match ev {
            TaskEvent::Started { at, .. } => {
                attempt.started += 1;
                if attempt.started == attempt.internal {
                    self.status.send_modify(|s| s.tasks_running = true);
                    if let Some(f) = attempt.failure_at.take() {
                        outcome
                            .restore_ms
                            .push(at.saturating_duration_since(f).as_millis() as u64);
                    }
                }
                Next::Continue
            }
            TaskEvent::Ack { checkpoint, state } => {
                match self.ack(tracker, attempt, checkpoint, *state).await {
                    Ok(v) => v.into(),
                    Err(why) => {
                        tracing::debug!(%why, "ack not applied");
                        Next::Continue
                    }
                }
            }
            TaskEvent::Decline {
                checkpoint,
                task,
                reason,
            } => self
                .decline(tracker, attempt, checkpoint, task, reason.to_string())
                .await
                .map_or(Next::Continue, Next::from),
            TaskEvent::Failed { task, error, kind } => {
                let error = format!("task {task} failed: {error}");
                Next::End(
                    self.end_failed_with(tracker, attempt, error, kind.into())
                        .await,
                )
            }
            TaskEvent::EndOfInput { .. } => {
                attempt.sources_ended += 1;
                self.advance_final(tracker, attempt);
                Next::Continue
            }
            TaskEvent::Finished {
                task,
                records,
                table,
                offset,
            } => {
                self.on_finished(tracker, attempt, task, records, table, offset, outcome)
                    .await
            }
        }
    }

    /// A task reached the end of its input.
    #[allow(clippy::too_many_arguments)]
    async fn on_finished(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        task: TaskId,
        records: u64,
        table: Option<Box<ResultTable>>,
        offset: Option<cutpoint_core::metadata::SourceOffset>,
        outcome: &mut JobOutcome,
    ) -> Next {
        attempt.finished += 1;
        match (table, offset) {
            (Some(t), _) => attempt.tables.push((task.operator.clone(), *t)),
            (None, _) => {
                outcome.records_read += records;
                self.report_records(attempt);
            }
        }
        if let Some(offset) = offset {
            if let Verdict::FailJob(r) = self.source_finished(tracker, attempt, task, offset).await
            {
                return Next::FailJob(r);
            }
        } else {
            for a in tracker.task_finished(&task) {
                let _ = self.discard(tracker, attempt, a).await;
            }
        }
        if attempt.finished < attempt.internal {
            return Next::Continue;
        }
        for a in tracker.abort_all(AbortReason::JobFinishing) {
            let _ = self.discard(tracker, attempt, a).await;
        }
        self.join(attempt).await;
        Next::End(AttemptEnd::Finished(std::mem::take(&mut attempt.tables)))
    }

    /// A finished source takes part in every later checkpoint with its end
    /// offset: everything it read is before any later barrier.
    async fn source_finished(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        task: TaskId,
        offset: cutpoint_core::metadata::SourceOffset,
    ) -> Verdict {
        let state = SubtaskState {
            source_offset: Some(offset),
            ack_timestamp: now_millis(),
            ..SubtaskState::empty(task.clone())
        };
        attempt.finished_sources.push(state.clone());
        let owed: Vec<CheckpointId> = tracker
            .pending()
            .filter(|p| p.expected.contains(&task) && !p.acks.contains_key(&task))
            .map(|p| p.id)
            .collect();
        for id in owed {
            if let Ok(Verdict::FailJob(r)) = self.ack(tracker, attempt, id, state.clone()).await {
                return Verdict::FailJob(r);
            }
        }
        if attempt.finished_sources.len() as u32 == self.spec.source_parallelism() {
            tracker.stop("every source finished");
        }
        Verdict::Continue
    }

    /// A command from a [`JobControl`].
    async fn on_command(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
        cmd: Command,
    ) -> Verdict {
        /// Answers an external task and passes on what the ack decided.
        fn answer(
            r: Result<Verdict, AckRejection>,
            reply: oneshot::Sender<Result<(), AckRejection>>,
        ) -> Verdict {
            let (answer, verdict) = match r {
                Ok(v) => (Ok(()), v),
                Err(e) => (Err(e), Verdict::Continue),
            };
            let _ = reply.send(answer);
            verdict
        }
        match cmd {
            Command::Trigger {
                checkpoint_type,
                reply,
            } => {
                let _ = reply.send(self.trigger(tracker, attempt, false, checkpoint_type));
                Verdict::Continue
            }
            Command::ExternalAck {
                checkpoint,
                state,
                reply,
            } => answer(self.ack(tracker, attempt, checkpoint, *state).await, reply),
            Command::ExternalDecline {
                checkpoint,
                task,
                reason,
                reply,
            } => answer(
                self.decline(tracker, attempt, checkpoint, task, reason)
                    .await,
                reply,
            ),
            Command::DeleteCheckpoint { id, force, reply } => {
                self.delete_retained(tracker, id, force, reply);
                Verdict::Continue
            }
            Command::TriggerSavepoint { reply } => {
                match self.trigger(tracker, attempt, false, CheckpointType::Full) {
                    Ok(id) => {
                        self.savepoints.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
                Verdict::Continue
            }
        }
    }

    /// Every 50 ms: the writer lease, expired checkpoints, the final
    /// checkpoint, the records counter.
    async fn housekeeping(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
    ) -> Verdict {
        self.renew_lease(tracker).await;
        self.restart_gc_if_stopped(tracker).await;
        for a in tracker.expire(now_millis()) {
            if let Verdict::FailJob(r) = self.discard(tracker, attempt, a).await {
                return Verdict::FailJob(r);
            }
        }
        self.advance_final(tracker, attempt);
        self.report_records(attempt);
        Verdict::Continue
    }

    /// The job is cancelled: pending checkpoints are aborted once every
    /// task stopped, and handed to GC.
    async fn cancelled(
        &mut self,
        tracker: &mut CheckpointTracker,
        attempt: &mut Attempt,
    ) -> AttemptEnd {
        let aborted = tracker.abort_all(AbortReason::JobFailing);
        self.join(attempt).await;
        for a in aborted {
            self.clean_up(tracker, a.id, &a.files);
        }
        AttemptEnd::Cancelled
    }

    pub(super) fn trigger(
        &self,
        tracker: &mut CheckpointTracker,
        attempt: &Attempt,
        periodic: bool,
        checkpoint_type: CheckpointType,
    ) -> Result<CheckpointId, TriggerRefusal> {
        let exec = attempt
            .exec
            .as_ref()
            .ok_or_else(|| TriggerRefusal::NotRunning("restarting".into()))?;
        cutpoint_core::failpoint::check("coordinator::trigger")?;
        let now = now_millis();
        let id = tracker.trigger(now, periodic, checkpoint_type, &attempt.tasks)?;
        self.stats_mut()
            .triggered(id, checkpoint_type, now, attempt.tasks.len());
        // Finished sources acknowledge at once, with their end offsets.
        for s in &attempt.finished_sources {
            let _ = tracker.ack(id, s.clone());
            self.stats_mut().acked(id, s);
        }
        let barrier = Barrier {
            id,
            checkpoint_type,
            trigger_timestamp: now,
            reuse: self.reuse_base,
        };
        if !exec.trigger(barrier) {
            tracing::debug!(checkpoint = %id, "a source is gone; the checkpoint will be aborted");
        }
        tracing::debug!(checkpoint = %id, periodic, "triggered");
        Ok(id)
    }

    /// Drives the final checkpoint once every source read all its input:
    /// triggers it (retrying while another checkpoint is in flight or after
    /// it failed, up to the tolerable failures), and when one completed,
    /// lets the sources end their streams.
    pub(super) fn advance_final(&self, tracker: &mut CheckpointTracker, attempt: &mut Attempt) {
        if attempt.sources_ended < self.spec.source_parallelism() {
            return;
        }
        let Some(exec) = &attempt.exec else { return };
        if let (Some(from), Some(done)) = (attempt.final_from, tracker.latest_retained()) {
            if done.id >= from {
                exec.finish_sources();
                return;
            }
        }
        let in_flight = attempt
            .final_from
            .is_some_and(|f| tracker.pending().any(|p| p.id >= f));
        if !in_flight {
            let t = tracker.config().checkpoint_type;
            if let Ok(id) = self.trigger(tracker, attempt, false, t) {
                tracing::debug!(checkpoint = %id, "final checkpoint triggered");
                attempt.final_from.get_or_insert(id);
            }
        }
    }
}
