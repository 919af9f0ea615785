//! Keyed state: an in-memory table with change tracking in front of one
//! RocksDB instance per keyed subtask, and its snapshots.
//!
//! - [`StateTable`] is the working state. Records touch memory only; every
//!   update also lands in the *delta* (entries changed since the last
//!   snapshot), so the synchronous snapshot phase is an O(1) swap.
//! - [`RocksStore`] owns the RocksDB instance. The asynchronous phase writes a
//!   frozen delta as one sorted SST file and ingests it (no memtable, no
//!   WAL), then takes a RocksDB checkpoint (hard links).
//! - [`snapshot`] uploads a RocksDB checkpoint to checkpoint storage and
//!   restores one (verified download into a fresh directory).
//!
//! RocksDB keys are `[key group: u16 BE][encoded key]`, values are `i64` LE,
//! so a key-group range is one contiguous key range (rescaling reads ranges).
//! [`layout`] is the layout of typed keyed state (value, list, map,
//! reducing; Dataflow I) and [`typed`] its in-memory table, written behind
//! into the same kind of RocksDB store (the operator API's state; TTL and
//! the memory budget included). [`ResultTable`]: what a keyed subtask ends
//! with (each key's latest update).

pub mod channel;
mod error;
pub mod layout;
pub mod results;
mod rocks;
pub mod snapshot;
mod table;
pub mod typed;

pub use error::StateError;
pub use results::ResultTable;
pub use rocks::{RocksStore, StateReader};
pub use table::{FrozenDelta, Residency, StateTable};
