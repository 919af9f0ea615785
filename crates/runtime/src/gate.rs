//! The receiving side of an exchange: what a keyed task reads its inputs
//! through ([`InputGate`], Flink's input gate).
//!
//! In-process bounded channels implement it today ([`LocalGate`]); a
//! network exchange from tasks in another process would implement the same
//! trait (docs/scaling.md), as [`crate::exchange::Transport`] is the
//! sending side's. Which inputs may be read, and what a message means, is
//! decided above it (the task and its [`crate::barrier::BarrierHandler`]).
//!
//! Invariants: each input delivers its messages in the order they were
//! sent; a barrier polled from the priority channel (unaligned mode) is a
//! copy of one that also arrives in band, and may come before records
//! sent ahead of it.

use std::time::Duration;

use crossbeam_channel::{Receiver, Select};

use crate::channel::Message;
use crate::Barrier;

/// What [`InputGate::poll`] found.
#[derive(Debug)]
pub(crate) enum Polled {
    /// The next message of input `i`.
    Message(usize, Message),
    /// A barrier that overtook the queued records (unaligned mode).
    Priority(Barrier),
    /// Nothing within the wait (or, without a wait, nothing ready now).
    Idle,
    /// An input's sender is gone (cancelled, or it failed).
    Gone,
}

/// Reads a keyed task's inputs.
pub(crate) trait InputGate: Send {
    /// The number of inputs.
    fn inputs(&self) -> usize;

    /// The next message of an input `readable` accepts, or (with
    /// `priority`) a barrier from the priority channel: what is ready now,
    /// else what comes within `wait` (`None`: do not wait).
    fn poll(
        &mut self,
        readable: &dyn Fn(usize) -> bool,
        priority: bool,
        wait: Option<Duration>,
    ) -> Polled;

    /// Input `i`'s next message if one is queued (never waits).
    fn try_recv(&mut self, i: usize) -> Option<Message>;
}

/// In-process channels: one bounded channel per upstream subtask and
/// (unaligned mode) one priority channel shared by them.
pub(crate) struct LocalGate {
    pub(crate) inputs: Vec<Receiver<Message>>,
    /// Closed once every upstream subtask finished; dropped then.
    pub(crate) priority: Option<Receiver<Barrier>>,
}

/// The index of the priority channel in a select.
const PRIORITY: usize = usize::MAX;

impl LocalGate {
    /// What [`InputGate::poll`] finds; `None`: the priority channel closed.
    fn select(
        &self,
        readable: &dyn Fn(usize) -> bool,
        priority: bool,
        wait: Option<Duration>,
    ) -> Option<Polled> {
        let mut sel = Select::new();
        let mut index = Vec::with_capacity(self.inputs.len() + 1);
        for (i, rx) in self.inputs.iter().enumerate() {
            if readable(i) {
                sel.recv(rx);
                index.push(i);
            }
        }
        if let (Some(p), true) = (&self.priority, priority) {
            sel.recv(p);
            index.push(PRIORITY);
        }
        let selected = match wait {
            None => sel.try_select().ok(),
            Some(wait) => sel.select_timeout(wait).ok(),
        };
        let Some(op) = selected else {
            return Some(Polled::Idle);
        };
        match index[op.index()] {
            PRIORITY => op
                .recv(self.priority.as_ref().expect("selected"))
                .ok()
                .map(Polled::Priority),
            i => Some(match op.recv(&self.inputs[i]) {
                Ok(msg) => Polled::Message(i, msg),
                Err(_) => Polled::Gone,
            }),
        }
    }
}

impl InputGate for LocalGate {
    fn inputs(&self) -> usize {
        self.inputs.len()
    }

    fn poll(
        &mut self,
        readable: &dyn Fn(usize) -> bool,
        priority: bool,
        wait: Option<Duration>,
    ) -> Polled {
        match self.select(readable, priority, wait) {
            Some(polled) => polled,
            None => {
                // Every upstream finished; their streams end in band.
                self.priority = None;
                Polled::Idle
            }
        }
    }

    fn try_recv(&mut self, i: usize) -> Option<Message> {
        self.inputs[i].try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use cutpoint_core::CheckpointId;

    use super::*;

    fn barrier(id: u64) -> Barrier {
        Barrier {
            id: CheckpointId(id),
            checkpoint_type: cutpoint_core::CheckpointType::Incremental,
            trigger_timestamp: 0,
            reuse: None,
        }
    }

    #[test]
    fn reads_only_readable_inputs_in_order_and_the_priority_channel_on_request() {
        let (a_tx, a) = crossbeam_channel::bounded(4);
        let (b_tx, b) = crossbeam_channel::bounded(4);
        let (p_tx, p) = crossbeam_channel::bounded(4);
        let mut gate = LocalGate {
            inputs: vec![a, b],
            priority: Some(p),
        };
        assert_eq!(gate.inputs(), 2);
        assert!(matches!(gate.poll(&|_| true, true, None), Polled::Idle));
        a_tx.send(Message::Records(Vec::new())).unwrap();
        a_tx.send(Message::EndOfStream).unwrap();
        b_tx.send(Message::Barrier(barrier(1))).unwrap();
        // Input 0 blocked: input 1's barrier.
        let only_b = |i: usize| i == 1;
        assert!(matches!(
            gate.poll(&only_b, false, None),
            Polled::Message(1, Message::Barrier(_))
        ));
        assert!(matches!(
            gate.poll(&only_b, false, Some(Duration::from_millis(5))),
            Polled::Idle
        ));
        // Input 0 in order, first without waiting.
        assert!(matches!(gate.try_recv(0), Some(Message::Records(_))));
        assert!(matches!(
            gate.poll(&|_| true, false, None),
            Polled::Message(0, Message::EndOfStream)
        ));
        // The priority channel only when asked for.
        p_tx.send(barrier(2)).unwrap();
        assert!(matches!(gate.poll(&|_| false, false, None), Polled::Idle));
        assert!(matches!(
            gate.poll(&|_| false, true, None),
            Polled::Priority(b) if b.id == CheckpointId(2)
        ));
        // A closed priority channel is dropped; a gone input is named.
        drop(p_tx);
        assert!(matches!(gate.poll(&|_| false, true, None), Polled::Idle));
        assert!(gate.priority.is_none());
        drop(b_tx);
        assert!(matches!(gate.poll(&|i| i == 1, true, None), Polled::Gone));
    }
}
