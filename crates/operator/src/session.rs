//! The JSON spec's event-time session windows ([`SessionAggregate`]): a
//! [`WindowFunction`] per key and session, like Flink's `WindowOperator`
//! over `EventTimeSessionWindows`, on typed state and event-time timers.
//!
//! Per key, one value state in the default namespace holds the key's open
//! sessions, sorted and disjoint, each with its accumulator (a key has few
//! open at once: those whose cleanup time the watermark has not reached).
//! A record opens its own window `[ts, ts + gap)` and merges with every
//! session it overlaps ([`merge_session`]: the merged accumulator is the
//! merge of theirs and the record's). Each session has a timer at its last
//! millisecond (emit `[start, end, result]`) and one at its cleanup time
//! (remove it), in the namespace of its window; a merge deletes the timers
//! of the sessions it replaces and registers the merged one's, so a
//! session that merged away never fires. A record whose merged session is
//! past its cleanup time is late: dropped (the sessions are left as they
//! were), counted and kept for the late side output. Within the allowed lateness, a record that changes a
//! fired session emits its updated result at once.
//!
//! Once the watermark passes a session's cleanup time no state and no
//! timer of it remains; a key with no open session has no session state.
//! The sessions and their timers are in the key's state, so they are
//! snapshotted, restored and rescaled with it; exactly-once across
//! restores rests on the checkpointed watermark as for
//! [`crate::window`].

use cutpoint_core::window::{merge_session, Window, WindowSpec};
use cutpoint_core::{Key, Record, Value};
use cutpoint_state::layout::StateDescriptor;
use serde::{Deserialize, Serialize};

use crate::builtins::{Input, WithResult};
use crate::late::LateRecords;
use crate::window::{domain, emit_result, record_time, Acc, WindowFn, WindowFunction};
use crate::{KeyedContext, KeyedProcessFunction, OperatorError, TimeDomain};

/// One open session of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    start: i64,
    end: i64,
    acc: Acc,
}

impl Session {
    fn window(&self) -> Window {
        Window {
            start: self.start,
            end: self.end,
        }
    }
}

/// A window function per key and event-time session.
pub struct SessionAggregate {
    spec: WindowSpec,
    domain: TimeDomain,
    function: WindowFunction,
    sessions: StateDescriptor,
    last: StateDescriptor,
    late: LateRecords,
    /// A full window function over the collected values.
    process: Option<WindowFn>,
    /// Reused: the record's own window; the key's session windows.
    own: Vec<Window>,
    windows: Vec<Window>,
}

impl SessionAggregate {
    /// Its sessions' state is named after the function and the gap
    /// (`session_windows(count, session gap 500 ms, lateness 0 ms)`).
    pub fn new(spec: WindowSpec, function: WindowFunction) -> Self {
        debug_assert!(spec.is_merging());
        Self {
            spec,
            domain: domain(&spec),
            function,
            sessions: StateDescriptor::value(&function.state_name("session_windows", &spec)),
            last: StateDescriptor::value("window_last"),
            late: LateRecords::default(),
            process: None,
            own: Vec::new(),
            windows: Vec::new(),
        }
    }

    /// With `f` run over each session's values when it fires (the
    /// function should be [`WindowFunction::Collect`]).
    pub fn with_process(mut self, f: Option<WindowFn>) -> Self {
        self.process = f;
        self
    }

    fn load(&self, ctx: &mut KeyedContext<'_>) -> Result<Vec<Session>, OperatorError> {
        ctx.set_namespace(&[]);
        Ok(ctx.value(&self.sessions)?.unwrap_or_default())
    }

    fn store(&self, ctx: &mut KeyedContext<'_>, sessions: &[Session]) -> Result<(), OperatorError> {
        ctx.set_namespace(&[]);
        if sessions.is_empty() {
            ctx.clear(&self.sessions)?;
        } else {
            ctx.set_value(&self.sessions, &sessions)?;
        }
        Ok(())
    }

    /// `w`'s timers: at its last millisecond unless the watermark passed
    /// it (then it fired), and at its cleanup time.
    fn register(
        &self,
        w: &Window,
        watermark: i64,
        ctx: &mut KeyedContext<'_>,
    ) -> Result<(), OperatorError> {
        ctx.set_namespace(&w.encode());
        if w.max_timestamp() > watermark {
            ctx.register(self.domain, w.max_timestamp())?;
        }
        ctx.register(self.domain, self.spec.cleanup_time(w))
    }

    fn delete(&self, w: &Window, ctx: &mut KeyedContext<'_>) -> Result<(), OperatorError> {
        ctx.set_namespace(&w.encode());
        ctx.delete(self.domain, w.max_timestamp())?;
        ctx.delete(self.domain, self.spec.cleanup_time(w))
    }
}

impl KeyedProcessFunction for SessionAggregate {
    type In = (Input, Record);
    type Out = (Key, Value);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![self.sessions.clone(), self.last.clone()]
    }

    fn uses_timers(&self) -> bool {
        true
    }

    fn uses_processing_time_timers(&self) -> bool {
        self.domain == TimeDomain::ProcessingTime
    }

    fn process(
        &mut self,
        (input, record): (Input, Record),
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let (ts, watermark) = record_time(self.domain, &record, ctx)?;
        let single = self.function.single(input, &record)?;
        self.spec.assign(ts, &mut self.own);
        let Some(&own) = self.own.first() else {
            self.late.push(record); // its window would end past the end of time
            return Ok(());
        };
        let mut sessions = self.load(ctx)?;
        self.windows.clear();
        self.windows.extend(sessions.iter().map(Session::window));
        let (merged, range) = merge_session(&self.windows, own);
        if self.spec.cleanup_time(&merged) <= watermark {
            self.late.push(record);
            return Ok(());
        }
        let unchanged = range.len() == 1 && self.windows[range.start] == merged;
        let mut acc = single;
        for s in sessions.drain(range.clone()).rev() {
            let w = s.window();
            acc = self.function.merge(s.acc, acc)?;
            if !unchanged {
                self.delete(&w, ctx)?;
            }
        }
        let session = Session {
            start: merged.start,
            end: merged.end,
            acc,
        };
        sessions.insert(range.start, session.clone());
        self.store(ctx, &sessions)?;
        if !unchanged {
            self.register(&merged, watermark, ctx)?;
        }
        if merged.max_timestamp() <= watermark {
            // Fired already, within the allowed lateness: update now.
            let how = (self.function, self.process.as_ref());
            emit_result(how, &self.last, &merged, &session.acc, ctx, out)?;
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        time: i64,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let w = Window::decode(ctx.namespace())
            .ok_or_else(|| OperatorError::User("a session timer without its window".into()))?;
        let mut sessions = self.load(ctx)?;
        let Some(at) = sessions.iter().position(|s| s.window() == w) else {
            return Ok(()); // merged away (its timers were deleted then)
        };
        if time == w.max_timestamp() {
            let how = (self.function, self.process.as_ref());
            emit_result(how, &self.last, &w, &sessions[at].acc, ctx, out)?;
        }
        if time == self.spec.cleanup_time(&w) {
            sessions.remove(at);
            self.store(ctx, &sessions)?;
        }
        Ok(())
    }

    fn late_records(&self) -> u64 {
        self.late.count()
    }

    fn take_late(&mut self, out: &mut Vec<Record>) {
        self.late.take(out)
    }
}

impl WithResult for SessionAggregate {
    type Result = Value;

    fn result_state(&self) -> &StateDescriptor {
        &self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::stored_states;
    use crate::KeyedOperator;

    const MAXP: u32 = 128;

    fn op(gap_ms: u64, lateness: u64, f: WindowFunction) -> KeyedOperator<SessionAggregate> {
        let spec = WindowSpec::Session {
            gap_ms,
            allowed_lateness_ms: lateness,
            time: cutpoint_core::window::WindowTime::Event,
        };
        KeyedOperator::new(
            SessionAggregate::new(spec, f),
            |(_, r): &(Input, Record)| r.key.clone(),
            MAXP,
        )
        .unwrap()
    }

    fn feed(op: &mut KeyedOperator<SessionAggregate>, key: i64, v: i64, ts: i64) -> Vec<String> {
        let mut out = Vec::new();
        op.process(
            (Input::First, Record::int(Key::Int(key), v).at(ts)),
            &mut out,
        )
        .unwrap();
        out.iter().map(|(k, v)| format!("{k}:{v}")).collect()
    }

    fn advance(op: &mut KeyedOperator<SessionAggregate>, w: i64) -> Vec<String> {
        let mut out = Vec::new();
        op.advance_watermark(w, usize::MAX, &mut out).unwrap();
        out.iter()
            .map(|(t, (k, v))| format!("{t}/{k}:{v}"))
            .collect()
    }

    #[test]
    fn out_of_order_records_merge_into_sessions_that_fire_once_and_leave_nothing() {
        let mut op = op(10, 0, WindowFunction::Count);
        // Key 1: 0, 22, 5 (joins 0: [0, 15)), later 13 (bridges [0, 15)
        // and [22, 32)). Key 2: 3 and 13 touch only: two sessions.
        for (k, ts) in [(1, 0), (1, 22), (2, 3), (1, 5), (2, 13)] {
            assert!(feed(&mut op, k, 1, ts).is_empty());
        }
        // One per session (without lateness, firing is cleaning up).
        assert_eq!(op.timers().unwrap().len(), 4);
        assert_eq!(advance(&mut op, 12), ["12/2:[3,13,1]"]);
        assert!(feed(&mut op, 1, 1, 13).is_empty());
        // [0,15) and [22,32) merged: their timers went, the merged one's
        // came, beside key 2's second session's.
        assert_eq!(op.timers().unwrap().len(), 2);
        assert_eq!(advance(&mut op, 100), ["22/2:[13,23,1]", "31/1:[0,32,4]"]);
        assert_eq!(op.timers().unwrap().len(), 0);
        assert_eq!(stored_states(&mut op), ["window_last", "window_last"]);
    }

    /// A session-window join: merged sessions hold both inputs' values;
    /// the merged session's pairs are emitted once, when it fires.
    #[test]
    fn a_session_window_join_pairs_the_values_of_merged_sessions() {
        let mut op = op(10, 0, WindowFunction::Join);
        let mut side = |input, v: i64, ts| {
            let mut out = Vec::new();
            op.process((input, Record::int(Key::Int(1), v).at(ts)), &mut out)
                .unwrap();
            assert!(out.is_empty());
        };
        // Left 1 at 5, right 2 at 22, then left 3 at 13 bridges them.
        side(Input::First, 1, 5);
        side(Input::Second, 2, 22);
        side(Input::First, 3, 13);
        assert_eq!(
            advance(&mut op, 100),
            ["31/1:[5,32,1,2]", "31/1:[5,32,3,2]"]
        );
        assert_eq!(stored_states(&mut op), ["window_last"]);
    }

    #[test]
    fn a_late_record_is_dropped_and_leaves_the_sessions_as_they_were() {
        let mut op = op(10, 0, WindowFunction::Sum);
        feed(&mut op, 1, 5, 100);
        advance(&mut op, 95);
        // [80, 90) ends before the watermark: late, counted.
        assert!(feed(&mut op, 1, 7, 80).is_empty());
        assert_eq!(op.function.late_records(), 1);
        // [92, 102) is not late by itself and joins [100, 110).
        assert!(feed(&mut op, 1, 1, 92).is_empty());
        assert_eq!(advance(&mut op, 200), ["109/1:[92,110,6]"]);
    }

    #[test]
    fn allowed_lateness_updates_a_fired_session_then_cleans_it_up() {
        let mut op = op(10, 20, WindowFunction::Max);
        feed(&mut op, 1, 4, 0);
        assert_eq!(advance(&mut op, 9), ["9/1:[0,10,4]"]);
        // Within [0, 10), late but allowed: the updated result at once.
        assert_eq!(feed(&mut op, 1, 9, 0), ["1:[0,10,9]"]);
        // Extends the fired session past the watermark: fires again later.
        assert!(feed(&mut op, 1, 2, 8).is_empty());
        assert_eq!(advance(&mut op, 17), ["17/1:[0,18,9]"]);
        assert_eq!(advance(&mut op, 37), Vec::<String>::new());
        assert_eq!(op.timers().unwrap().len(), 0, "cleaned up at 17 + 20");
        assert_eq!(stored_states(&mut op), ["window_last"]);
        assert!(feed(&mut op, 1, 1, 5).is_empty());
        assert_eq!(op.function.late_records(), 1);
    }

    #[test]
    fn top_n_and_count_distinct_merge_across_sessions() {
        let mut top = op(10, 0, WindowFunction::TopN(3));
        let mut distinct = op(10, 0, WindowFunction::CountDistinct);
        for (v, ts) in [(5, 0), (9, 30), (1, 4), (9, 25), (7, 12), (3, 20)] {
            feed(&mut top, 1, v, ts);
            feed(&mut distinct, 1, v, ts);
        }
        // One session [0, 40): 5, 1, 7, 3, 9, 9.
        assert_eq!(advance(&mut top, 100), ["39/1:[0,40,[9,9,7]]"]);
        assert_eq!(advance(&mut distinct, 100), ["39/1:[0,40,5]"]);
    }
}
