//! [`StateTable`]: the in-memory working state of one keyed subtask.
//!
//! Invariant: every entry changed since the last [`StateTable::freeze`] is in
//! `delta` with its current value, so `freeze` hands over exactly what the
//! next snapshot must write, without scanning the table.
//!
//! Under a memory budget ([`StateTable::set_budget`]) the table holds at most
//! about `budget` entries: beyond it the owner evicts clean entries — only
//! once every frozen delta has been written to RocksDB, so an evicted entry's
//! latest value is always there — or hands the dirty ones to be written
//! behind ([`StateTable::freeze`] outside a checkpoint). A key missing from
//! the table is then read through from RocksDB. A failed read is latched
//! ([`StateTable::take_error`]) so the hot path keeps its signature; the
//! owner checks it after every batch and fails before anything is snapshotted.
//! So is an aggregate that overflows an `i64` (the value saturates until
//! the owner fails).

use cutpoint_core::Key;
use rustc_hash::FxHashMap;

use crate::{StateError, StateReader};

/// Where a subtask's state is when a memory budget is set on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// The table holds every entry (a fresh start, or a restore that loaded
    /// them all).
    AllInMemory,
    /// RocksDB holds entries the table does not (a lazy restore): reads go
    /// through to it.
    PartlyOnDisk,
}

/// Where a budgeted table finds evicted entries.
#[derive(Debug)]
struct Backing {
    reader: StateReader,
    budget: usize,
    /// Some entries live only in RocksDB (evicted, or restored lazily).
    on_disk: bool,
    error: Option<StateError>,
    evicted: u64,
    read_through: u64,
}

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
    backing: Option<Backing>,
    /// The most entries the table held at once (what the memory budget
    /// bounds).
    peak: usize,
    /// The first key whose aggregate overflowed (latched like a failed
    /// read; the value saturates).
    overflow: Option<Key>,
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
                *v = match v.checked_add(value) {
                    Some(n) => n,
                    None => Self::overflowed(&mut self.overflow, &key, *v, value),
                };
                *v
            }
            None => {
                let old = self.stored(&key);
                let v = match old.checked_add(value) {
                    Some(n) => n,
                    None => Self::overflowed(&mut self.overflow, &key, old, value),
                };
                self.table.insert(key.clone(), v);
                self.peak = self.peak.max(self.table.len());
                v
            }
        };
        self.delta.insert(key, new);
        new
    }

    #[cold]
    fn overflowed(latch: &mut Option<Key>, key: &Key, old: i64, value: i64) -> i64 {
        latch.get_or_insert_with(|| key.clone());
        old.saturating_add(value)
    }

    /// The value of a key not in the table: 0, or what RocksDB holds.
    #[cold]
    fn stored(&mut self, key: &Key) -> i64 {
        let Some(b) = self.backing.as_mut().filter(|b| b.on_disk) else {
            return 0;
        };
        b.read_through += 1;
        match b.reader.get(key) {
            Ok(v) => v.unwrap_or(0),
            Err(e) => {
                b.error.get_or_insert(e);
                0
            }
        }
    }

    /// The key's aggregate (read through from RocksDB when evicted).
    pub fn get(&mut self, key: &Key) -> Option<i64> {
        if let Some(v) = self.table.get(key) {
            return Some(*v);
        }
        self.backing.as_ref().filter(|b| b.on_disk)?;
        Some(self.stored(key)).filter(|v| *v != 0)
    }

    /// Puts the table under a memory budget of about `budget` entries,
    /// reading evicted entries through `reader`; `residency` says whether
    /// RocksDB already holds entries the table does not.
    pub fn set_budget(&mut self, reader: StateReader, budget: usize, residency: Residency) {
        self.backing = Some(Backing {
            reader,
            budget: budget.max(1),
            on_disk: residency == Residency::PartlyOnDisk,
            error: None,
            evicted: 0,
            read_through: 0,
        });
    }

    /// Whether the table holds more entries than its budget allows.
    pub fn over_budget(&self) -> bool {
        self.backing
            .as_ref()
            .is_some_and(|b| self.table.len() > b.budget)
    }

    /// Evicts clean entries (not changed since the last freeze) down to
    /// three quarters of the budget; returns how many. Call only when every
    /// frozen delta has been written to RocksDB.
    pub fn evict_clean(&mut self) -> usize {
        let Some(b) = self.backing.as_mut() else {
            return 0;
        };
        let target = b.budget * 3 / 4;
        let mut excess = self.table.len().saturating_sub(target);
        let before = self.table.len();
        let delta = &self.delta;
        self.table.retain(|k, _| {
            if excess == 0 || delta.contains_key(k) {
                return true;
            }
            excess -= 1;
            false
        });
        let n = before - self.table.len();
        b.evicted += n as u64;
        b.on_disk |= n > 0;
        n
    }

    /// A read-through error or an overflow since the last call (the task
    /// must fail).
    pub fn take_error(&mut self) -> Option<StateError> {
        if let Some(key) = self.overflow.take() {
            return Some(StateError::Overflow {
                key: key.to_string(),
            });
        }
        self.backing.as_mut().and_then(|b| b.error.take())
    }

    /// (entries evicted, reads through RocksDB) so far.
    pub fn budget_stats(&self) -> (u64, u64) {
        self.backing
            .as_ref()
            .map_or((0, 0), |b| (b.evicted, b.read_through))
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
        self.peak = self.peak.max(self.table.len());
    }

    /// The most entries the table held at once.
    pub fn peak_len(&self) -> usize {
        self.peak
    }

    /// A table of `entries` (the final state of a budgeted job, read back
    /// from RocksDB) that reports `working` table's peak, not its own size.
    pub fn materialized(entries: impl IntoIterator<Item = (Key, i64)>, working: &Self) -> Self {
        Self {
            table: entries.into_iter().collect(),
            peak: working.peak,
            ..Self::default()
        }
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &i64)> {
        self.table.iter()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_overflowing_sum_is_a_named_error_not_a_wrapped_value() {
        let mut t = StateTable::new();
        t.add(Key::Int(1), i64::MAX - 1);
        assert!(t.take_error().is_none());
        assert_eq!(t.add(Key::Int(1), 5), i64::MAX, "saturates, never wraps");
        let err = t.take_error().expect("latched").to_string();
        assert!(err.contains("key 1") && err.contains("overflows"), "{err}");
        assert!(t.take_error().is_none(), "reported once");
        assert_eq!(t.add(Key::Int(2), i64::MIN), i64::MIN);
        t.add(Key::Int(2), -1);
        assert!(t.take_error().is_some(), "below the limit too");
    }

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
        assert_eq!(t.get(&Key::Str("b".into())), None);
        t.load(Key::Int(9), 9);
        assert_eq!(t.changed(), 0);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_budgeted_table_evicts_only_written_clean_entries_and_reads_them_back() {
        let d = tempfile::tempdir().unwrap();
        let mut store =
            crate::RocksStore::open(&d.path().join("db"), &d.path().join("s"), 128).unwrap();
        let mut t = StateTable::new();
        t.set_budget(store.reader(), 10, Residency::AllInMemory);
        for i in 0..100 {
            t.add(Key::Int(i), i);
        }
        assert!(t.over_budget());
        assert_eq!(t.evict_clean(), 0, "dirty entries are never evicted");
        store.apply(t.freeze()).unwrap();
        assert_eq!(t.evict_clean(), 93, "down to 3/4 of the budget");
        assert_eq!(t.len(), 7);
        for i in 0..100 {
            assert_eq!(t.add(Key::Int(i), 1), i + 1, "read through");
        }
        assert_eq!(t.get(&Key::Int(5)), Some(6));
        assert!(t.take_error().is_none());
        assert_eq!(t.budget_stats(), (93, 93));
        // Written again and evicted, the new values come back.
        store.apply(t.freeze()).unwrap();
        t.evict_clean();
        assert_eq!(t.get(&Key::Int(42)), Some(43));
        assert_eq!(t.get(&Key::Int(1000)), None);
    }
}
