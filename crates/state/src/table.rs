//! [`StateTable`]: the in-memory working state of one keyed subtask.
//!
//! Invariant: every entry changed since the last [`StateTable::freeze`] is in
//! `delta` with its current value, so `freeze` hands over exactly what the
//! next snapshot must write, without scanning the table.

use cutpoint_core::Key;
use rustc_hash::FxHashMap;

/// Entries changed since the previous snapshot, frozen by the synchronous
/// phase and written by the asynchronous one.
#[derive(Debug, Default)]
pub struct FrozenDelta {
    pub entries: FxHashMap<Key, i64>,
}

/// Working keyed state (`key -> i64` aggregate) with change tracking.
#[derive(Debug, Default)]
pub struct StateTable {
    table: FxHashMap<Key, i64>,
    delta: FxHashMap<Key, i64>,
}

impl StateTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` to the key's aggregate and returns the new aggregate.
    #[inline]
    pub fn add(&mut self, key: Key, value: i64) -> i64 {
        let new = match self.table.get_mut(&key) {
            Some(v) => {
                *v += value;
                *v
            }
            None => {
                self.table.insert(key.clone(), value);
                value
            }
        };
        self.delta.insert(key, new);
        new
    }

    pub fn get(&self, key: &Key) -> Option<i64> {
        self.table.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Number of entries changed since the last freeze.
    pub fn changed(&self) -> usize {
        self.delta.len()
    }

    /// Synchronous snapshot phase: hands over the changed entries (O(1)).
    pub fn freeze(&mut self) -> FrozenDelta {
        FrozenDelta {
            entries: std::mem::take(&mut self.delta),
        }
    }

    /// Loads a restored entry (not counted as a change: it is in RocksDB).
    pub fn load(&mut self, key: Key, value: i64) {
        self.table.insert(key, value);
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &i64)> {
        self.table.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_tracks_changes_since_freeze() {
        let mut t = StateTable::new();
        t.add(Key::Int(1), 1);
        t.add(Key::Int(1), 1);
        t.add(Key::Str("a".into()), 5);
        let d = t.freeze();
        assert_eq!(d.entries.len(), 2);
        assert_eq!(d.entries[&Key::Int(1)], 2);
        assert_eq!(t.changed(), 0);
        t.add(Key::Int(1), 3);
        let d = t.freeze();
        assert_eq!(d.entries.len(), 1);
        assert_eq!(d.entries[&Key::Int(1)], 5);
        assert_eq!(t.get(&Key::Str("a".into())), Some(5));
        t.load(Key::Int(9), 9);
        assert_eq!(t.changed(), 0);
        assert_eq!(t.len(), 3);
    }
}
