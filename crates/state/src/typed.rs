//! [`TypedTable`]: typed keyed state of one keyed subtask — value, list,
//! map and reducing states of many keys and namespaces — worked on in
//! memory, with the entries changed since the last snapshot kept as a
//! delta that the snapshot worker writes behind into RocksDB
//! ([`crate::RocksStore::apply_entries`]), in the layout of
//! [`crate::layout`] (Dataflow I).
//!
//! Invariants:
//! - Every write (put or delete) lands in the working entries and in the
//!   delta; [`TypedTable::freeze`] swaps the delta out (O(1)); the worker
//!   sorts it. Point reads and writes are hash lookups; each list's and
//!   map's user keys are also kept in order for iteration. A delete is
//!   kept in the delta as a tombstone, so an entry written to an earlier
//!   SST file does not come back after a restore.
//! - A list append writes one entry (user key: the next sequence number)
//!   without reading the list. Sequence numbers only grow within a table;
//!   a restored table continues above every number it loaded.
//! - A restore loads a key-group range ([`TypedTable::load`]); rescaling
//!   loads the ranges of several old subtasks into one table.
//! - TTL (processing time, [`TypedTable::set_time`]): an entry of a state
//!   with a TTL carries its expiry time in its value; from then on it
//!   reads as absent (values, list elements, map entries, results), and
//!   the next `set_time` deletes it (a tombstone in the delta, so RocksDB
//!   drops it too). Each state's entries wait in a queue in the order they
//!   were first written (expiry order: one TTL per state, time only moves
//!   forward); a rewritten entry is re-queued when its old expiry comes
//!   up, so each entry is queued once.
//!
//! - Under a memory budget ([`TypedTable::set_budget`]) the owner evicts
//!   clean entries (not in the delta) once every frozen delta is written
//!   to RocksDB, so an evicted entry's latest value is there. An entry not
//!   in memory is then read through from RocksDB: point reads one entry,
//!   list and map iteration merge RocksDB's entries under the prefix with
//!   the ones in memory (memory wins). A delete is remembered (`shadow`)
//!   until its tombstone is known to be in RocksDB, so a stale value never
//!   reads back. A list append on state restored or evicted to RocksDB
//!   first finds the list's last sequence number there (one seek, once per
//!   list), so appends stay in order without reading the list.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;

use cutpoint_core::{keygroup, Key};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::layout::{
    decode_entry, decode_value, encode_expiring, encode_value, entry_key, entry_prefix, expires_at,
    list_element, LayoutError, StateDescriptor, StateKind, StateNames,
};
use crate::{Residency, StateReader};

/// The key (and namespace) a keyed operator works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyContext {
    pub key: Key,
    pub key_group: u16,
    pub namespace: Vec<u8>,
}

impl KeyContext {
    /// `key` in the default (empty) namespace.
    pub fn new(key: Key, max_parallelism: u32) -> Self {
        let key_group = keygroup::key_group(key.stable_hash(), max_parallelism) as u16;
        Self {
            key,
            key_group,
            namespace: Vec::new(),
        }
    }
}

/// The encoded entries changed since the previous snapshot (`None`:
/// deleted), unordered: the snapshot worker sorts them
/// ([`crate::RocksStore::apply_entries`]), off the task thread.
pub type TypedDelta = FxHashMap<Vec<u8>, Option<Vec<u8>>>;

/// Typed keyed state of one subtask, in memory.
///
/// Point reads and writes are one hash lookup of the whole RocksDB key
/// (plus a RocksDB read for an entry evicted under a budget);
/// the user keys of each list and map (per state, key and namespace) are
/// also kept in `index`, for iteration by prefix (sorted then) — for the
/// states that were ever iterated only: a state's index is built by one
/// pass the first time it is scanned and kept from then on, so a map that
/// is only read and written by key (count-distinct's) costs no index.
///
#[derive(Debug, Default)]
pub struct TypedTable {
    names: StateNames,
    entries: FxHashMap<Vec<u8>, Vec<u8>>,
    /// The user keys of each list and map (by entry prefix); sorted when
    /// iterated (lists: sequence numbers, so in append order).
    index: FxHashMap<Vec<u8>, FxHashSet<Vec<u8>>>,
    /// The states whose user keys `index` holds.
    indexed: FxHashSet<u16>,
    delta: TypedDelta,
    next_seq: u64,
    /// Processing time (ms since the epoch) as of the last `set_time`.
    now_ms: u64,
    /// Per state with a TTL: (expiry, entry key), in expiry order unless
    /// `expiry_unsorted` (after a load).
    expiry: FxHashMap<u16, VecDeque<(u64, Vec<u8>)>>,
    expiry_unsorted: bool,
    /// The keys in some expiry queue (each is queued once).
    queued: FxHashSet<Vec<u8>>,
    /// Where evicted (or not loaded) entries are read back from.
    backing: Option<Backing>,
    /// The most entries held at once (what a memory budget bounds).
    peak: usize,
}

/// A budgeted table's RocksDB side.
#[derive(Debug)]
struct Backing {
    reader: StateReader,
    /// Entries to keep in memory at most (about).
    budget: usize,
    /// RocksDB holds entries memory does not (evicted, or not loaded).
    on_disk: bool,
    /// Deleted keys whose tombstones may not be in RocksDB yet.
    shadow: FxHashSet<Vec<u8>>,
    /// Lists whose last sequence number in RocksDB was looked up.
    sequenced: FxHashSet<Vec<u8>>,
    evicted: u64,
    /// Reads that went to RocksDB (point reads take `&self`).
    read_through: std::cell::Cell<u64>,
}

impl Backing {
    /// The stored value of `key` unless deleted since it was written.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LayoutError> {
        if !self.on_disk || self.shadow.contains(key) {
            return Ok(None);
        }
        self.read_through.set(self.read_through.get() + 1);
        self.reader.get_raw(key).map_err(read_err)
    }
}

fn read_err(e: crate::StateError) -> LayoutError {
    LayoutError::ReadThrough(e.to_string())
}

impl TypedTable {
    pub fn new(names: StateNames) -> Self {
        Self {
            names,
            ..Self::default()
        }
    }

    /// The value of a [`StateKind::Value`] state for `ctx`.
    pub fn value<T: DeserializeOwned>(
        &mut self,
        d: &StateDescriptor,
        ctx: &KeyContext,
    ) -> Result<Option<T>, LayoutError> {
        self.get(d, StateKind::Value, ctx, &[])
    }

    pub fn set_value<T: Serialize>(
        &mut self,
        d: &StateDescriptor,
        ctx: &KeyContext,
        value: &T,
    ) -> Result<(), LayoutError> {
        self.put(d, StateKind::Value, ctx, &[], value)
    }

    /// Combines `value` into a [`StateKind::Reducing`] state with `reduce`;
    /// returns the new aggregate.
    pub fn reduce<T: Serialize + DeserializeOwned + Clone>(
        &mut self,
        d: &StateDescriptor,
        ctx: &KeyContext,
        value: T,
        reduce: impl FnOnce(T, T) -> T,
    ) -> Result<T, LayoutError> {
        let next = match self.get(d, StateKind::Reducing, ctx, &[])? {
            Some(old) => reduce(old, value),
            None => value,
        };
        self.put(d, StateKind::Reducing, ctx, &[], &next)?;
        Ok(next)
    }

    /// Appends to a [`StateKind::List`] state (one write, no read).
    pub fn list_add<T: Serialize>(
        &mut self,
        d: &StateDescriptor,
        ctx: &KeyContext,
        value: &T,
    ) -> Result<(), LayoutError> {
        if self.backing.as_ref().is_some_and(|b| b.on_disk) {
            let prefix = self.prefix(d, StateKind::List, ctx)?;
            self.sequence_after_stored(prefix)?;
        }
        self.next_seq += 1;
        let seq = list_element(self.next_seq);
        self.put(d, StateKind::List, ctx, &seq, value)
    }

    /// Continues the sequence numbers above the last one RocksDB holds for
    /// the list at `prefix` (looked up once per list).
    #[cold]
    fn sequence_after_stored(&mut self, prefix: Vec<u8>) -> Result<(), LayoutError> {
        let Some(b) = self.backing.as_mut() else {
            return Ok(());
        };
        if b.sequenced.contains(&prefix) {
            return Ok(());
        }
        if let Some(last) = b.reader.last_with_prefix(&prefix).map_err(read_err)? {
            let seq: [u8; 8] = last[prefix.len()..].try_into().map_err(|_| {
                LayoutError::MalformedKey("a list element without a sequence number")
            })?;
            self.next_seq = self.next_seq.max(u64::from_be_bytes(seq));
        }
        b.sequenced.insert(prefix);
        Ok(())
    }

    /// A list's elements in append order.
    pub fn list<T: DeserializeOwned>(
        &mut self,
        d: &StateDescriptor,
        ctx: &KeyContext,
    ) -> Result<Vec<T>, LayoutError> {
        self.scan(d, StateKind::List, ctx)?
            .into_iter()
            .map(|(_, v)| decode_value(d, &v))
            .collect()
    }

    pub fn map_put<K: Serialize, V: Serialize>(
        &mut self,
        d: &StateDescriptor,
        ctx: &KeyContext,
        key: &K,
        value: &V,
    ) -> Result<(), LayoutError> {
        self.put(d, StateKind::Map, ctx, &map_key(key), value)
    }

    pub fn map_get<K: Serialize, V: DeserializeOwned>(
        &mut self,
        d: &StateDescriptor,
        ctx: &KeyContext,
        key: &K,
    ) -> Result<Option<V>, LayoutError> {
        self.get(d, StateKind::Map, ctx, &map_key(key))
    }

    pub fn map_remove<K: Serialize>(
        &mut self,
        d: &StateDescriptor,
        ctx: &KeyContext,
        key: &K,
    ) -> Result<(), LayoutError> {
        let prefix = self.prefix(d, StateKind::Map, ctx)?;
        self.delete(&prefix, &map_key(key));
        Ok(())
    }

    /// A map's entries, in the order of their encoded keys.
    pub fn map_entries<K: DeserializeOwned, V: DeserializeOwned>(
        &mut self,
        d: &StateDescriptor,
        ctx: &KeyContext,
    ) -> Result<Vec<(K, V)>, LayoutError> {
        self.scan(d, StateKind::Map, ctx)?
            .into_iter()
            .map(|(user, v)| {
                let key = postcard::from_bytes(&user).map_err(|e| LayoutError::Decode {
                    state: d.name.clone(),
                    why: format!("map key: {e}"),
                })?;
                Ok((key, decode_value(d, &v)?))
            })
            .collect()
    }

    /// Removes everything state `d` holds for `ctx` (any kind).
    pub fn clear(&mut self, d: &StateDescriptor, ctx: &KeyContext) -> Result<(), LayoutError> {
        let prefix = self.prefix(d, d.kind, ctx)?;
        match d.kind {
            StateKind::Value | StateKind::Reducing => self.delete(&prefix, &[]),
            StateKind::List | StateKind::Map => {
                let users: Vec<Vec<u8>> = self
                    .scan(d, d.kind, ctx)?
                    .into_iter()
                    .map(|(user, _)| user)
                    .collect();
                for user in users {
                    self.delete(&prefix, &user);
                }
            }
        }
        Ok(())
    }

    /// The changes since the last freeze, for the snapshot worker (O(1)).
    pub fn freeze(&mut self) -> TypedDelta {
        std::mem::take(&mut self.delta)
    }

    /// Loads entries read from RocksDB (a restore; several ranges when
    /// rescaling); list sequence numbers continue above the loaded ones.
    pub fn load(&mut self, key: &[u8], value: &[u8]) -> Result<(), LayoutError> {
        let e = decode_entry(key)?;
        let kind = self
            .names
            .kind_of(e.state)
            .ok_or(LayoutError::MalformedKey(
                "a state id no declared state has",
            ))?;
        if kind == StateKind::List {
            let seq: [u8; 8] = e.user_key.as_slice().try_into().map_err(|_| {
                LayoutError::MalformedKey("a list element without a sequence number")
            })?;
            self.next_seq = self.next_seq.max(u64::from_be_bytes(seq));
        }
        if self.indexed.contains(&e.state) {
            let prefix = &key[..key.len() - e.user_key.len()];
            match self.index.get_mut(prefix) {
                Some(users) => {
                    users.insert(e.user_key);
                }
                None => {
                    let users = FxHashSet::from_iter([e.user_key]);
                    self.index.insert(prefix.to_vec(), users);
                }
            }
        }
        if let Some(at) = expires_at(value) {
            if self.queued.insert(key.to_vec()) {
                let q = self.expiry.entry(e.state).or_default();
                q.push_back((at, key.to_vec()));
                self.expiry_unsorted = true;
            }
        }
        self.entries.insert(key.to_vec(), value.to_vec());
        self.peak = self.peak.max(self.entries.len());
        Ok(())
    }

    /// Every key's value of [`StateKind::Value`] state `d` in the default
    /// namespace (a job's final result; not a hot path: scans the table).
    pub fn values<T: DeserializeOwned>(
        &self,
        d: &StateDescriptor,
    ) -> Result<Vec<(Key, T)>, LayoutError> {
        let state = self.state_id(d, StateKind::Value)?.to_be_bytes();
        let mut out = Vec::new();
        // What only RocksDB holds (budgeted), then what memory holds.
        let mut stored = Vec::new();
        if let Some(b) = self.backing.as_ref().filter(|b| b.on_disk) {
            b.reader
                .scan_prefix(&[], |k, v| {
                    let ours = k.get(2..4) == Some(&state);
                    if ours && !self.entries.contains_key(k) && !b.shadow.contains(k) {
                        stored.push((k.to_vec(), v.to_vec()));
                    }
                })
                .map_err(read_err)?;
        }
        let stored = stored.iter().map(|(k, v)| (k, v));
        // The state id is bytes 2..4: only its entries are decoded.
        for (k, v) in self
            .entries
            .iter()
            .chain(stored)
            .filter(|(k, v)| k.get(2..4) == Some(&state) && self.live(v))
        {
            let e = decode_entry(k)?;
            if !e.namespace.is_empty() || !e.user_key.is_empty() {
                continue;
            }
            let key = Key::decode(&e.key).ok_or(LayoutError::MalformedKey("bad key"))?;
            out.push((key, decode_value(d, v)?));
        }
        Ok(out)
    }

    /// The declared states.
    pub fn names(&self) -> &StateNames {
        &self.names
    }

    /// Entries in memory.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The most entries held in memory at once.
    pub fn peak_len(&self) -> usize {
        self.peak
    }

    /// Puts the table under a memory budget of about `budget` entries,
    /// reading what it evicts back through `reader`; `residency` says
    /// whether RocksDB already holds entries the table does not.
    pub fn set_budget(&mut self, reader: StateReader, budget: usize, residency: Residency) {
        self.backing = Some(Backing {
            reader,
            budget: budget.max(1),
            on_disk: residency == Residency::PartlyOnDisk,
            shadow: FxHashSet::default(),
            sequenced: FxHashSet::default(),
            evicted: 0,
            read_through: Default::default(),
        });
    }

    /// Whether the table holds more entries than its budget allows.
    pub fn over_budget(&self) -> bool {
        self.backing
            .as_ref()
            .is_some_and(|b| self.entries.len() > b.budget)
    }

    /// Evicts clean entries (not changed since the last freeze) down to
    /// three quarters of the budget; returns how many. Call only when
    /// every frozen delta has been written to RocksDB: then its tombstones
    /// are there too, and only the current delta's deletes stay shadowed.
    pub fn evict_clean(&mut self) -> usize {
        let Some(b) = self.backing.as_mut() else {
            return 0;
        };
        let delta = &self.delta;
        b.shadow.retain(|k| matches!(delta.get(k), Some(None)));
        let mut excess = self.entries.len().saturating_sub(b.budget * 3 / 4);
        let mut gone = Vec::new();
        self.entries.retain(|k, _| {
            if excess == 0 || delta.contains_key(k) {
                return true;
            }
            excess -= 1;
            gone.push(k.clone());
            false
        });
        for k in &gone {
            let Ok(e) = decode_entry(k) else { continue };
            if !self.indexed.contains(&e.state) {
                continue;
            }
            let prefix = &k[..k.len() - e.user_key.len()];
            if let Some(users) = self.index.get_mut(prefix) {
                users.remove(&e.user_key);
                if users.is_empty() {
                    self.index.remove(prefix);
                }
            }
        }
        b.evicted += gone.len() as u64;
        b.on_disk |= !gone.is_empty();
        // Lists get their last sequence number looked up again (a cache).
        if !gone.is_empty() {
            b.sequenced.clear();
        }
        // Evicted keys leave the expiry queues (memory stays within the
        // budget): expired in RocksDB, they read as absent.
        if !gone.is_empty() && !self.queued.is_empty() {
            for k in &gone {
                self.queued.remove(k);
            }
            let queued = &self.queued;
            for q in self.expiry.values_mut() {
                q.retain(|(_, k)| queued.contains(k));
            }
        }
        gone.len()
    }

    /// Every frozen delta is written to RocksDB: deletes other than the
    /// current delta's need no shadow any more.
    pub fn deltas_written(&mut self) {
        if let Some(b) = self.backing.as_mut() {
            let delta = &self.delta;
            b.shadow.retain(|k| matches!(delta.get(k), Some(None)));
        }
    }

    /// (entries evicted, reads through RocksDB) so far.
    pub fn budget_stats(&self) -> (u64, u64) {
        self.backing
            .as_ref()
            .map_or((0, 0), |b| (b.evicted, b.read_through.get()))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The prefix of state `d`'s entries for `ctx`.
    fn prefix(
        &self,
        d: &StateDescriptor,
        kind: StateKind,
        ctx: &KeyContext,
    ) -> Result<Vec<u8>, LayoutError> {
        let state = self.state_id(d, kind)?;
        let mut k = Vec::new();
        entry_prefix(ctx.key_group, state, &ctx.key, &ctx.namespace, &mut k);
        Ok(k)
    }

    fn state_id(&self, d: &StateDescriptor, kind: StateKind) -> Result<u16, LayoutError> {
        let id = self
            .names
            .id(&d.name)
            .ok_or_else(|| LayoutError::Undeclared(d.name.clone()))?;
        match d.kind == kind {
            true => Ok(id),
            false => Err(LayoutError::KindConflict(d.name.clone())),
        }
    }

    /// One entry, decoded. An entry read through from RocksDB stays in
    /// memory, clean (evictable), for the next read.
    fn get<T: DeserializeOwned>(
        &mut self,
        d: &StateDescriptor,
        kind: StateKind,
        ctx: &KeyContext,
        user_key: &[u8],
    ) -> Result<Option<T>, LayoutError> {
        let state = self.state_id(d, kind)?;
        let mut k = Vec::with_capacity(32);
        entry_key(
            ctx.key_group,
            state,
            &ctx.key,
            &ctx.namespace,
            user_key,
            &mut k,
        );
        if !self.entries.contains_key(&k) {
            let stored = match &self.backing {
                Some(b) => b.get(&k)?,
                None => None,
            };
            match stored {
                Some(v) => self.cache(state, k.clone(), v),
                None => return Ok(None),
            }
        }
        self.entries
            .get(&k)
            .filter(|v| self.live(v))
            .map(|v| decode_value(d, v))
            .transpose()
    }

    /// Keeps an entry read through from RocksDB in memory, clean (not in
    /// the delta): indexed and queued for expiry like a loaded one.
    fn cache(&mut self, state: u16, key: Vec<u8>, value: Vec<u8>) {
        if self.indexed.contains(&state) {
            if let Ok(e) = decode_entry(&key) {
                let prefix = key[..key.len() - e.user_key.len()].to_vec();
                self.index.entry(prefix).or_default().insert(e.user_key);
            }
        }
        if let Some(at) = expires_at(&value) {
            if self.queued.insert(key.clone()) {
                self.expiry
                    .entry(state)
                    .or_default()
                    .push_back((at, key.clone()));
                self.expiry_unsorted = true;
            }
        }
        self.entries.insert(key, value);
        self.peak = self.peak.max(self.entries.len());
    }

    /// Whether an encoded value has not expired.
    fn live(&self, value: &[u8]) -> bool {
        expires_at(value).is_none_or(|at| at > self.now_ms)
    }

    /// Sets processing time to `now_ms` (it never goes back) and deletes
    /// the entries that expired by then; returns how many.
    pub fn set_time(&mut self, now_ms: u64) -> Result<usize, LayoutError> {
        self.now_ms = self.now_ms.max(now_ms);
        if self.expiry.is_empty() {
            return Ok(0);
        }
        if std::mem::take(&mut self.expiry_unsorted) {
            for q in self.expiry.values_mut() {
                q.make_contiguous().sort_unstable();
            }
        }
        let mut expired = Vec::new();
        for q in self.expiry.values_mut() {
            while q.front().is_some_and(|(at, _)| *at <= self.now_ms) {
                let (_, key) = q.pop_front().expect("a front");
                self.queued.remove(&key);
                let stored = match (self.entries.get(&key), &self.backing) {
                    (Some(v), _) => expires_at(v),
                    // Evicted since: its current expiry is in RocksDB.
                    (None, Some(b)) => b.get(&key)?.as_deref().and_then(expires_at),
                    (None, None) => None,
                };
                match stored {
                    Some(at) if at <= self.now_ms => expired.push(key),
                    // Rewritten since: queued again for its new expiry.
                    Some(at) => {
                        self.queued.insert(key.clone());
                        q.push_back((at, key));
                    }
                    None => {}
                }
            }
        }
        let n = expired.len();
        for key in expired {
            let user = decode_entry(&key).map(|e| e.user_key.len()).unwrap_or(0);
            let (prefix, user_key) = key.split_at(key.len() - user);
            self.delete(prefix, user_key);
        }
        Ok(n)
    }

    /// A list's or map's entries in user-key order: (user key, value).
    /// Builds state `state`'s index (one pass over the table) unless it
    /// is kept already.
    fn ensure_indexed(&mut self, state: u16) -> Result<(), LayoutError> {
        if !self.indexed.insert(state) {
            return Ok(());
        }
        let id = state.to_be_bytes();
        for k in self.entries.keys().filter(|k| k.get(2..4) == Some(&id)) {
            let user = decode_entry(k)?.user_key;
            let prefix = k[..k.len() - user.len()].to_vec();
            self.index.entry(prefix).or_default().insert(user);
        }
        Ok(())
    }

    fn scan(
        &mut self,
        d: &StateDescriptor,
        kind: StateKind,
        ctx: &KeyContext,
    ) -> Result<Vec<UserEntry>, LayoutError> {
        self.ensure_indexed(self.state_id(d, kind)?)?;
        let prefix = self.prefix(d, kind, ctx)?;
        let mut out: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
        if let Some(b) = self.backing.as_mut().filter(|b| b.on_disk) {
            b.read_through.set(b.read_through.get() + 1);
            let shadow = &b.shadow;
            b.reader
                .scan_prefix(&prefix, |k, v| {
                    if !shadow.contains(k) {
                        out.insert(k[prefix.len()..].to_vec(), v.to_vec());
                    }
                })
                .map_err(read_err)?;
        }
        if let Some(users) = self.index.get(&prefix) {
            let mut k = prefix.clone();
            for user in users {
                k.truncate(prefix.len());
                k.extend_from_slice(user);
                if let Some(v) = self.entries.get(&k) {
                    out.insert(user.clone(), v.clone());
                }
            }
        }
        let now = self.now_ms;
        Ok(out
            .into_iter()
            .filter(|(_, v)| expires_at(v).is_none_or(|at| at > now))
            .collect())
    }

    fn put<T: Serialize>(
        &mut self,
        d: &StateDescriptor,
        kind: StateKind,
        ctx: &KeyContext,
        user_key: &[u8],
        value: &T,
    ) -> Result<(), LayoutError> {
        let state = self.state_id(d, kind)?;
        let mut k = Vec::with_capacity(32);
        entry_prefix(ctx.key_group, state, &ctx.key, &ctx.namespace, &mut k);
        let prefix_len = k.len();
        k.extend_from_slice(user_key);
        let mut v = Vec::new();
        let expires = d
            .ttl
            .map(|ttl| self.now_ms.saturating_add(ttl.as_millis() as u64));
        match expires {
            Some(at) => encode_expiring(d, value, at, &mut v),
            None => encode_value(d, value, &mut v),
        }
        self.delta.insert(k.clone(), Some(v.clone()));
        if let Some(b) = self.backing.as_mut() {
            b.shadow.remove(&k);
        }
        if let Some(at) = expires {
            // Queued once; a rewrite is re-queued when its old expiry
            // comes up.
            if self.queued.insert(k.clone()) {
                let q = self.expiry.entry(state).or_default();
                q.push_back((at, k.clone()));
            }
        }
        match self.entries.entry(k) {
            Entry::Occupied(mut e) => {
                e.insert(v);
            }
            Entry::Vacant(e) => {
                // A new element of an indexed list or map: indexed once.
                if self.indexed.contains(&state) {
                    let prefix = &e.key()[..prefix_len];
                    match self.index.get_mut(prefix) {
                        Some(users) => {
                            users.insert(user_key.to_vec());
                        }
                        None => {
                            let users = FxHashSet::from_iter([user_key.to_vec()]);
                            self.index.insert(prefix.to_vec(), users);
                        }
                    }
                }
                e.insert(v);
                self.peak = self.peak.max(self.entries.len());
            }
        }
        Ok(())
    }

    fn delete(&mut self, prefix: &[u8], user_key: &[u8]) {
        let mut k = prefix.to_vec();
        k.extend_from_slice(user_key);
        if let Some(users) = self.index.get_mut(prefix) {
            users.remove(user_key);
            if users.is_empty() {
                self.index.remove(prefix);
            }
        }
        // Shadowed under any budget: RocksDB may hold the key from a
        // snapshot, and reads go there from the first eviction on.
        let on_disk = match self.backing.as_mut() {
            Some(b) => {
                b.shadow.insert(k.clone());
                b.on_disk
            }
            None => false,
        };
        if self.entries.remove(&k).is_some() || self.delta.contains_key(&k) || on_disk {
            self.delta.insert(k, None);
        }
    }
}

/// A list's or map's entry: (user key, encoded value).
type UserEntry = (Vec<u8>, Vec<u8>);

/// A map key as a user key: its postcard encoding.
fn map_key<K: Serialize>(key: &K) -> Vec<u8> {
    postcard::to_stdvec(key).expect("serde into a Vec")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RocksStore;
    use cutpoint_core::KeyGroupRange;

    const MAXP: u32 = 128;

    fn desc(name: &str, kind: StateKind) -> StateDescriptor {
        StateDescriptor {
            name: name.into(),
            kind,
            codec_version: 1,
            ttl: None,
        }
    }

    /// The fraud-detection example's states: a balance (value), recent
    /// amounts (list), totals per merchant (map), the largest amount
    /// (reducing).
    struct States {
        balance: StateDescriptor,
        recent: StateDescriptor,
        per_merchant: StateDescriptor,
        largest: StateDescriptor,
    }

    fn states() -> (States, StateNames) {
        let s = States {
            balance: desc("balance", StateKind::Value),
            recent: desc("recent", StateKind::List),
            per_merchant: desc("per_merchant", StateKind::Map),
            largest: desc("largest", StateKind::Reducing),
        };
        let mut names = StateNames::default();
        for d in [&s.balance, &s.recent, &s.per_merchant, &s.largest] {
            names.declare(d).unwrap();
        }
        (s, names)
    }

    fn account(n: i64) -> KeyContext {
        KeyContext::new(Key::Int(n), MAXP)
    }

    /// Applies one payment to the table.
    fn pay(t: &mut TypedTable, s: &States, who: i64, merchant: &str, amount: i64) {
        let ctx = account(who);
        let b: i64 = t.value(&s.balance, &ctx).unwrap().unwrap_or(0);
        t.set_value(&s.balance, &ctx, &(b - amount)).unwrap();
        t.list_add(&s.recent, &ctx, &amount).unwrap();
        let m: i64 = t
            .map_get(&s.per_merchant, &ctx, &merchant)
            .unwrap()
            .unwrap_or(0);
        t.map_put(&s.per_merchant, &ctx, &merchant, &(m + amount))
            .unwrap();
        t.reduce(&s.largest, &ctx, amount, i64::max).unwrap();
    }

    #[test]
    fn each_state_kind_keeps_its_own_values_per_key_and_namespace() {
        let (s, names) = states();
        let mut t = TypedTable::new(names);
        pay(&mut t, &s, 1, "m1", 10);
        pay(&mut t, &s, 1, "m2", 5);
        pay(&mut t, &s, 1, "m1", 7);
        pay(&mut t, &s, 2, "m1", 3);
        let one = account(1);
        assert_eq!(t.value::<i64>(&s.balance, &one).unwrap(), Some(-22));
        assert_eq!(t.list::<i64>(&s.recent, &one).unwrap(), vec![10, 5, 7]);
        assert_eq!(
            t.map_entries::<String, i64>(&s.per_merchant, &one).unwrap(),
            vec![("m1".into(), 17), ("m2".into(), 5)]
        );
        assert_eq!(t.reduce(&s.largest, &one, 0, i64::max).unwrap(), 10);
        assert_eq!(t.list::<i64>(&s.recent, &account(2)).unwrap(), vec![3]);
        // Another namespace of the same key is separate.
        let mut window = account(1);
        window.namespace = b"w-1".to_vec();
        assert_eq!(
            t.list::<i64>(&s.recent, &window).unwrap(),
            Vec::<i64>::new()
        );
        // A state used as another kind is refused by name.
        assert_eq!(
            t.list::<i64>(&s.balance, &one),
            Err(LayoutError::KindConflict("balance".into()))
        );
        let unknown = desc("nope", StateKind::Value);
        assert_eq!(
            t.value::<i64>(&unknown, &one),
            Err(LayoutError::Undeclared("nope".into()))
        );
    }

    /// A map only read and written by key costs no index; the first
    /// iteration of a state builds its index by one pass, kept from then on
    /// (also across a restore's load).
    #[test]
    fn only_iterated_states_are_indexed() {
        let (s, names) = states();
        let mut t = TypedTable::new(names);
        pay(&mut t, &s, 1, "m1", 10);
        pay(&mut t, &s, 2, "m1", 3);
        assert!(t.index.is_empty(), "nothing iterated yet");
        let one = account(1);
        assert_eq!(
            t.map_entries::<String, i64>(&s.per_merchant, &one)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(t.index.len(), 2, "both accounts' maps, in one pass");
        pay(&mut t, &s, 1, "m2", 4);
        let m: Vec<(String, i64)> = t.map_entries(&s.per_merchant, &one).unwrap();
        assert_eq!(m, [("m1".to_string(), 10), ("m2".to_string(), 4)]);
        assert_eq!(t.index.len(), 2, "the list was never iterated");
        t.map_remove(&s.per_merchant, &one, &"m1").unwrap();
        assert_eq!(
            t.map_entries::<String, i64>(&s.per_merchant, &one)
                .unwrap()
                .len(),
            1
        );
        // The list: indexed on its first iteration, in append order.
        t.list_add(&s.recent, &one, &99).unwrap();
        assert_eq!(t.list::<i64>(&s.recent, &one).unwrap(), [10, 4, 99]);
    }

    #[test]
    fn clear_and_remove_leave_tombstones_in_the_delta() {
        let (s, names) = states();
        let mut t = TypedTable::new(names);
        pay(&mut t, &s, 1, "m1", 10);
        pay(&mut t, &s, 1, "m2", 4);
        let first = t.freeze();
        assert!(first.values().all(Option::is_some));
        assert!(t.freeze().is_empty(), "freeze takes the delta");
        let one = account(1);
        t.map_remove(&s.per_merchant, &one, &"m1").unwrap();
        t.clear(&s.recent, &one).unwrap();
        let second = t.freeze();
        assert_eq!(second.len(), 3, "one map entry, two list elements");
        assert!(second.values().all(Option::is_none));
        assert_eq!(t.list::<i64>(&s.recent, &one).unwrap(), Vec::<i64>::new());
        // Removing what is not there writes nothing.
        t.map_remove(&s.per_merchant, &one, &"m9").unwrap();
        assert!(t.freeze().is_empty());
    }

    fn store(dir: &std::path::Path) -> RocksStore {
        RocksStore::open(&dir.join("db"), &dir.join("scratch"), MAXP).unwrap()
    }

    fn restore(stores: &[&RocksStore], range: KeyGroupRange, names: StateNames) -> TypedTable {
        let mut t = TypedTable::new(names);
        for s in stores {
            s.scan_raw(range, |k, v| {
                t.load(k, v).unwrap();
                Ok(())
            })
            .unwrap();
        }
        t
    }

    /// Written behind into RocksDB over two snapshots (with deletes), then
    /// restored into a fresh table: the same answers, deleted entries stay
    /// deleted, and appends continue after the restored list.
    #[test]
    fn a_restore_from_rocksdb_gives_the_same_state() {
        let (s, names) = states();
        let dir = tempfile::tempdir().unwrap();
        let mut db = store(dir.path());
        let mut t = TypedTable::new(names.clone());
        for i in 0..50 {
            pay(&mut t, &s, i % 7, ["m1", "m2", "m3"][i as usize % 3], i);
        }
        db.apply_entries(&t.freeze()).unwrap();
        t.map_remove(&s.per_merchant, &account(3), &"m1").unwrap();
        t.clear(&s.recent, &account(4)).unwrap();
        pay(&mut t, &s, 5, "m9", 1000);
        db.apply_entries(&t.freeze()).unwrap();

        let all = KeyGroupRange {
            start: 0,
            end: MAXP - 1,
        };
        let mut back = restore(&[&db], all, names);
        assert_eq!(back.len(), t.len());
        for who in 0..7 {
            let ctx = account(who);
            assert_eq!(
                back.value::<i64>(&s.balance, &ctx).unwrap(),
                t.value::<i64>(&s.balance, &ctx).unwrap()
            );
            assert_eq!(
                back.list::<i64>(&s.recent, &ctx).unwrap(),
                t.list::<i64>(&s.recent, &ctx).unwrap()
            );
            assert_eq!(
                back.map_entries::<String, i64>(&s.per_merchant, &ctx)
                    .unwrap(),
                t.map_entries::<String, i64>(&s.per_merchant, &ctx).unwrap()
            );
        }
        assert_eq!(
            back.map_get::<_, i64>(&s.per_merchant, &account(3), &"m1")
                .unwrap(),
            None
        );
        back.list_add(&s.recent, &account(5), &1).unwrap();
        let recent: Vec<i64> = back.list(&s.recent, &account(5)).unwrap();
        assert_eq!(
            recent.last(),
            Some(&1),
            "appended after the restored elements: {recent:?}"
        );
        assert_eq!(recent[recent.len() - 2], 1000);
    }

    /// Rescaling: two subtasks' stores (key groups 0..=63 and 64..=127)
    /// restored into one table (scale in), and one store's range split
    /// (scale out): every key ends up exactly where its key group says.
    #[test]
    fn a_rescaled_restore_loads_key_group_ranges() {
        let (s, names) = states();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let ranges = [
            KeyGroupRange { start: 0, end: 63 },
            KeyGroupRange {
                start: 64,
                end: 127,
            },
        ];
        let mut stores = Vec::new();
        for (i, range) in ranges.iter().enumerate() {
            let mut t = TypedTable::new(names.clone());
            for who in (0..200).filter(|w| range.contains(account(*w).key_group as u32)) {
                pay(&mut t, &s, who, "m", who + i as i64);
            }
            let mut db = store(dirs[i].path());
            db.apply_entries(&t.freeze()).unwrap();
            stores.push(db);
        }
        let all = KeyGroupRange { start: 0, end: 127 };
        let mut merged = restore(&[&stores[0], &stores[1]], all, names.clone());
        for who in 0..200 {
            let b = merged.value::<i64>(&s.balance, &account(who)).unwrap();
            assert_eq!(b, Some(-who - (account(who).key_group >= 64) as i64));
        }
        let part = KeyGroupRange { start: 32, end: 95 };
        let mut split = restore(&[&stores[0], &stores[1]], part, names);
        for who in 0..200 {
            let has = split
                .value::<i64>(&s.balance, &account(who))
                .unwrap()
                .is_some();
            assert_eq!(
                has,
                part.contains(account(who).key_group as u32),
                "key {who}"
            );
        }
    }

    fn ttl_states(
        ttl_ms: u64,
    ) -> (
        StateDescriptor,
        StateDescriptor,
        StateDescriptor,
        StateNames,
    ) {
        let ttl = std::time::Duration::from_millis(ttl_ms);
        let flag = desc("flag", StateKind::Value).with_ttl(ttl);
        let recent = desc("recent", StateKind::List).with_ttl(ttl);
        let seen = desc("seen", StateKind::Map).with_ttl(ttl);
        let mut names = StateNames::default();
        for d in [&flag, &recent, &seen] {
            names.declare(d).unwrap();
        }
        (flag, recent, seen, names)
    }

    /// Values, list elements and map entries expire `ttl` after their last
    /// write: they read as absent from then on, and `set_time` deletes
    /// them with tombstones; a rewrite pushes the expiry back.
    #[test]
    fn ttl_entries_expire_after_their_last_write_and_leave_tombstones() {
        let (flag, recent, seen, names) = ttl_states(100);
        let mut t = TypedTable::new(names);
        let a = account(1);
        t.set_time(1_000).unwrap();
        t.set_value(&flag, &a, &true).unwrap();
        t.list_add(&recent, &a, &10).unwrap();
        t.map_put(&seen, &a, &"m1", &1).unwrap();
        t.map_put(&seen, &a, &"m2", &1).unwrap();
        t.set_time(1_060).unwrap();
        t.list_add(&recent, &a, &20).unwrap();
        t.map_put(&seen, &a, &"m2", &2).unwrap(); // rewritten: lives to 1160
        assert_eq!(t.set_time(1_099).unwrap(), 0);
        assert_eq!(t.value::<bool>(&flag, &a).unwrap(), Some(true));
        t.freeze();

        assert_eq!(t.set_time(1_100).unwrap(), 3, "flag, the first element, m1");
        assert_eq!(t.value::<bool>(&flag, &a).unwrap(), None);
        assert_eq!(t.list::<i64>(&recent, &a).unwrap(), vec![20]);
        assert_eq!(
            t.map_entries::<String, i64>(&seen, &a).unwrap(),
            vec![("m2".into(), 2)]
        );
        let delta = t.freeze();
        assert_eq!(delta.len(), 3);
        assert!(delta.values().all(Option::is_none), "tombstones only");

        assert_eq!(t.set_time(1_160).unwrap(), 2);
        assert!(t.is_empty());
        assert_eq!(t.list::<i64>(&recent, &a).unwrap(), Vec::<i64>::new());
    }

    /// An expired entry is absent before any `set_time` deletes it (reads
    /// never return it), and results skip it too.
    #[test]
    fn expired_entries_are_never_returned() {
        let (flag, _, _, names) = ttl_states(50);
        let mut t = TypedTable::new(names);
        t.set_time(10).unwrap();
        t.set_value(&flag, &account(1), &true).unwrap();
        t.set_value(&flag, &account(2), &true).unwrap();
        t.now_ms = 60; // time moved, no sweep yet
        assert_eq!(t.value::<bool>(&flag, &account(1)).unwrap(), None);
        assert!(t.values::<bool>(&flag).unwrap().is_empty());
        assert_eq!(t.len(), 2, "still in memory until the sweep");
    }

    /// Expiry times travel with the values through RocksDB: a restored
    /// (and rescaled) table expires them at the same time, and deletes them
    /// with tombstones so RocksDB drops them as well.
    #[test]
    fn ttl_survives_a_restore_and_a_rescale() {
        let (flag, recent, _, names) = ttl_states(100);
        let dir = tempfile::tempdir().unwrap();
        let mut db = store(dir.path());
        let mut t = TypedTable::new(names.clone());
        t.set_time(1_000).unwrap();
        for who in 0..40 {
            t.set_value(&flag, &account(who), &(who % 2 == 0)).unwrap();
        }
        t.set_time(1_050).unwrap();
        for who in 0..40 {
            t.list_add(&recent, &account(who), &who).unwrap();
        }
        db.apply_entries(&t.freeze()).unwrap();

        let half = KeyGroupRange { start: 0, end: 63 };
        let mut back = restore(&[&db], half, names.clone());
        let mine: Vec<i64> = (0..40)
            .filter(|w| half.contains(account(*w).key_group as u32))
            .collect();
        assert!(!mine.is_empty());
        assert_eq!(back.set_time(1_099).unwrap(), 0);
        for who in &mine {
            let ctx = account(*who);
            assert_eq!(back.value::<bool>(&flag, &ctx).unwrap(), Some(who % 2 == 0));
        }
        assert_eq!(back.set_time(1_100).unwrap(), mine.len(), "the flags");
        assert_eq!(
            back.set_time(1_150).unwrap(),
            mine.len(),
            "the list elements"
        );
        assert!(back.is_empty());
        db.apply_entries(&back.freeze()).unwrap();
        let again = restore(&[&db], half, names);
        assert!(again.is_empty(), "the tombstones reached RocksDB");
    }

    /// The same operations on a budgeted table and on an unbudgeted twin
    /// give the same answers for every state kind.
    fn assert_same(t: &mut TypedTable, twin: &mut TypedTable, s: &States, accounts: i64) {
        for who in 0..accounts {
            let c = account(who);
            assert_eq!(
                t.value::<i64>(&s.balance, &c).unwrap(),
                twin.value::<i64>(&s.balance, &c).unwrap(),
                "balance of {who}"
            );
            assert_eq!(
                t.list::<i64>(&s.recent, &c).unwrap(),
                twin.list::<i64>(&s.recent, &c).unwrap(),
                "recent of {who}"
            );
            assert_eq!(
                t.map_entries::<String, i64>(&s.per_merchant, &c).unwrap(),
                twin.map_entries::<String, i64>(&s.per_merchant, &c)
                    .unwrap(),
                "per merchant of {who}"
            );
            assert_eq!(
                t.map_get::<_, i64>(&s.per_merchant, &c, &"m1").unwrap(),
                twin.map_get::<_, i64>(&s.per_merchant, &c, &"m1").unwrap()
            );
        }
        let mut a = t.values::<i64>(&s.balance).unwrap();
        let mut b = twin.values::<i64>(&s.balance).unwrap();
        a.sort();
        b.sort();
        assert_eq!(a, b, "the results");
    }

    fn pay_both(t: &mut TypedTable, twin: &mut TypedTable, s: &States, i: i64, accounts: i64) {
        let merchant = ["m1", "m2", "m3"][i as usize % 3];
        pay(t, s, i % accounts, merchant, i);
        pay(twin, s, i % accounts, merchant, i);
    }

    /// Under a budget the table evicts only clean entries, down to 3/4 of
    /// the budget, and reads every kind back from RocksDB: values, list
    /// appends after eviction (in order), map entries, reducing state,
    /// deletes of evicted entries (never read back stale), results.
    #[test]
    fn a_budgeted_table_evicts_clean_entries_and_reads_every_kind_back() {
        let (s, names) = states();
        let dir = tempfile::tempdir().unwrap();
        let mut db = store(dir.path());
        let mut t = TypedTable::new(names.clone());
        let mut twin = TypedTable::new(names);
        t.set_budget(db.reader(), 40, Residency::AllInMemory);
        let accounts = 30;
        for i in 0..300 {
            pay_both(&mut t, &mut twin, &s, i, accounts);
        }
        assert!(t.over_budget());
        assert_eq!(t.evict_clean(), 0, "dirty entries are never evicted");
        db.apply_entries(&t.freeze()).unwrap();
        let n = t.len();
        assert_eq!(t.evict_clean(), n - 30, "down to 3/4 of the budget");
        assert_same(&mut t, &mut twin, &s, accounts);
        // Writes to evicted state: appends continue in order, deletes hide
        // what RocksDB still holds until their tombstones are written.
        for i in 300..400 {
            pay_both(&mut t, &mut twin, &s, i, accounts);
        }
        for who in [3, 4, 5] {
            t.map_remove(&s.per_merchant, &account(who), &"m1").unwrap();
            twin.map_remove(&s.per_merchant, &account(who), &"m1")
                .unwrap();
            t.clear(&s.recent, &account(who + 10)).unwrap();
            twin.clear(&s.recent, &account(who + 10)).unwrap();
        }
        assert_same(&mut t, &mut twin, &s, accounts);
        let frozen = t.freeze();
        assert_same(&mut t, &mut twin, &s, accounts);
        db.apply_entries(&frozen).unwrap();
        t.evict_clean();
        assert!(t.len() <= 30);
        assert_same(&mut t, &mut twin, &s, accounts);
        let (evicted, read_through) = t.budget_stats();
        assert!(evicted > 0 && read_through > 0);
    }

    /// A lazy restore loads nothing: every read goes through RocksDB, and
    /// list appends continue after the restored elements.
    #[test]
    fn a_lazily_restored_table_reads_through_and_appends_after_the_stored_list() {
        let (s, names) = states();
        let dir = tempfile::tempdir().unwrap();
        let mut db = store(dir.path());
        let mut twin = TypedTable::new(names.clone());
        for i in 0..200 {
            pay(&mut twin, &s, i % 20, ["m1", "m2"][i as usize % 2], i);
        }
        db.apply_entries(&twin.freeze()).unwrap();
        let mut t = TypedTable::new(names);
        t.set_budget(db.reader(), 1_000, Residency::PartlyOnDisk);
        assert!(t.is_empty());
        assert_same(&mut t, &mut twin, &s, 20);
        for i in 200..260 {
            pay_both(&mut t, &mut twin, &s, i, 20);
        }
        assert_same(&mut t, &mut twin, &s, 20);
        let recent: Vec<i64> = t.list(&s.recent, &account(7)).unwrap();
        assert_eq!(recent.last(), Some(&247), "appended last: {recent:?}");
    }

    /// A delete before the table's first eviction stays deleted once it
    /// reads through (RocksDB still holds the value from a snapshot).
    #[test]
    fn a_delete_before_the_first_eviction_is_not_read_back() {
        let (s, names) = states();
        let dir = tempfile::tempdir().unwrap();
        let mut db = store(dir.path());
        let mut t = TypedTable::new(names.clone());
        let mut twin = TypedTable::new(names);
        t.set_budget(db.reader(), 8, Residency::AllInMemory);
        for i in 0..40 {
            pay_both(&mut t, &mut twin, &s, i, 10);
        }
        db.apply_entries(&t.freeze()).unwrap();
        for who in [1, 2] {
            t.map_remove(&s.per_merchant, &account(who), &"m1").unwrap();
            twin.map_remove(&s.per_merchant, &account(who), &"m1")
                .unwrap();
            t.clear(&s.balance, &account(who)).unwrap();
            twin.clear(&s.balance, &account(who)).unwrap();
        }
        assert!(t.evict_clean() > 0, "the first eviction");
        assert_same(&mut t, &mut twin, &s, 10);
        t.deltas_written();
        assert_same(&mut t, &mut twin, &s, 10);
    }

    /// Each TTL entry is queued once however often it is rewritten (also
    /// after a delete and a put), and evicted entries leave the queue.
    #[test]
    fn ttl_queues_hold_each_entry_once_and_not_evicted_ones() {
        let (flag, _, seen, names) = ttl_states(1_000);
        let dir = tempfile::tempdir().unwrap();
        let mut db = store(dir.path());
        let mut t = TypedTable::new(names);
        t.set_budget(db.reader(), 8, Residency::AllInMemory);
        t.set_time(1).unwrap();
        let a = account(1);
        for i in 0..50 {
            t.set_value(&flag, &a, &(i % 2 == 0)).unwrap();
            t.map_put(&seen, &a, &"m", &i).unwrap();
            t.map_remove(&seen, &a, &"m").unwrap();
            t.map_put(&seen, &a, &"m", &i).unwrap();
        }
        let queued: usize = t.expiry.values().map(|q| q.len()).sum();
        assert_eq!(queued, 2, "the flag and the map entry");
        for who in 2..40 {
            t.set_value(&flag, &account(who), &true).unwrap();
        }
        db.apply_entries(&t.freeze()).unwrap();
        t.evict_clean();
        let queued: usize = t.expiry.values().map(|q| q.len()).sum();
        assert_eq!(queued, t.len(), "only what is in memory is queued");
        let in_memory = t.len();
        assert_eq!(t.set_time(1_001).unwrap(), in_memory, "each expires once");
        assert_eq!(
            t.value::<bool>(&flag, &account(30)).unwrap(),
            None,
            "evicted ones read as absent"
        );
    }

    /// A point read through RocksDB keeps the entry in memory (clean): the
    /// next read of it is a memory hit, and it is evicted again like any
    /// clean entry.
    #[test]
    fn an_entry_read_through_stays_in_memory_until_evicted() {
        let (s, names) = states();
        let dir = tempfile::tempdir().unwrap();
        let mut db = store(dir.path());
        let mut t = TypedTable::new(names);
        t.set_budget(db.reader(), 8, Residency::AllInMemory);
        for who in 0..40 {
            t.set_value(&s.balance, &account(who), &who).unwrap();
        }
        db.apply_entries(&t.freeze()).unwrap();
        t.evict_clean();
        let cold = (0..40).find(|w| {
            t.entries.len() < 40 && {
                let mut k = Vec::new();
                let c = account(*w);
                entry_key(c.key_group, 0, &c.key, &c.namespace, &[], &mut k);
                !t.entries.contains_key(&k)
            }
        });
        let cold = account(cold.expect("an evicted account"));
        let before = t.budget_stats().1;
        assert!(t.value::<i64>(&s.balance, &cold).unwrap().is_some());
        assert!(t.value::<i64>(&s.balance, &cold).unwrap().is_some());
        assert_eq!(
            t.budget_stats().1,
            before + 1,
            "one read through, then a hit"
        );
        assert!(t.freeze().is_empty(), "cached clean, not changed");
        for who in 0..40 {
            t.value::<i64>(&s.balance, &account(who)).unwrap();
        }
        assert_eq!(t.len(), 40, "all read back");
        t.evict_clean();
        assert!(t.len() <= 6, "and evicted again");
    }
}
