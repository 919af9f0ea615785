//! [`ResultTable`]: what a keyed subtask ends with — each key's latest
//! update (the job's result, compared with an expectation by tests and
//! written by `run --final-state`).
//!
//! Integer aggregates (count, sum) end with their working
//! [`StateTable`] as it is (no copy of a large table at the end); typed
//! state ends with the values its result state holds, any [`Value`].

use cutpoint_core::{Key, Value};

use crate::StateTable;

/// A keyed subtask's final state.
// One per subtask at the end of a job: its size does not matter, and
// boxing the table would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ResultTable {
    /// An integer aggregate's table.
    Counts(StateTable),
    /// Typed state's results; `peak` is the typed table's most entries.
    Values {
        entries: Vec<(Key, Value)>,
        peak: usize,
    },
}

impl Default for ResultTable {
    fn default() -> Self {
        ResultTable::Counts(StateTable::default())
    }
}

impl ResultTable {
    /// Number of keys.
    pub fn len(&self) -> usize {
        match self {
            ResultTable::Counts(t) => t.len(),
            ResultTable::Values { entries, .. } => entries.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries the subtask's state held at once.
    pub fn peak_len(&self) -> usize {
        match self {
            ResultTable::Counts(t) => t.peak_len(),
            ResultTable::Values { entries, peak } => (*peak).max(entries.len()),
        }
    }

    /// Every key's result, in no particular order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&Key, Value)> + '_> {
        match self {
            ResultTable::Counts(t) => Box::new(t.iter().map(|(k, v)| (k, Value::Int(*v)))),
            ResultTable::Values { entries, .. } => {
                Box::new(entries.iter().map(|(k, v)| (k, v.clone())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_list_every_key_and_their_peak() {
        let mut t = StateTable::default();
        t.add(Key::Int(1), 2);
        t.add(Key::Int(2), 3);
        let counts = ResultTable::Counts(t);
        let mut got: Vec<_> = counts.iter().map(|(k, v)| (k.clone(), v)).collect();
        got.sort();
        assert_eq!(
            got,
            [(Key::Int(1), Value::Int(2)), (Key::Int(2), Value::Int(3))]
        );
        assert_eq!((counts.len(), counts.peak_len()), (2, 2));
        let values = ResultTable::Values {
            entries: vec![(Key::Int(7), Value::from("x"))],
            peak: 5,
        };
        assert_eq!((values.len(), values.peak_len()), (1, 5));
        assert_eq!(values.iter().next().unwrap().1, Value::from("x"));
    }
}
