//! Records as they flow between tasks: the key already extracted by the
//! source (`key_by` field) and the value the operator needs (1 for
//! `count`, the field's value for `sum`, any [`Value`] for dedup,
//! count-distinct or a program's function). Projecting at the source keeps
//! the per-record hot path free of JSON.

use std::fmt;

use arcstr::ArcStr;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::Value;

/// A grouping key. Integer keys (the generator's `app_id`) need no
/// allocation; a string key is one thin, reference-counted pointer
/// (cloning it, as every state update does, copies no bytes). 16 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Key {
    Int(i64),
    Str(ArcStr),
}

const TAG_INT: u8 = 0;
const TAG_STR: u8 = 1;

impl Key {
    /// Stable 64-bit hash (same value in every process and build).
    #[inline]
    pub fn stable_hash(&self) -> u64 {
        match self {
            Key::Int(v) => xxh3_64(&v.to_le_bytes()),
            Key::Str(s) => xxh3_64(s.as_bytes()) ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// Appends the order-preserving binary encoding of the key.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Key::Int(v) => {
                out.push(TAG_INT);
                out.extend_from_slice(&((*v as u64) ^ (1 << 63)).to_be_bytes());
            }
            Key::Str(s) => {
                out.push(TAG_STR);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// Decodes a key written by [`Key::encode_into`]; `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<Key> {
        match bytes.split_first()? {
            (&TAG_INT, rest) => {
                let arr: [u8; 8] = rest.try_into().ok()?;
                Some(Key::Int((u64::from_be_bytes(arr) ^ (1 << 63)) as i64))
            }
            (&TAG_STR, rest) => std::str::from_utf8(rest).ok().map(|s| Key::Str(s.into())),
            _ => None,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(v) => write!(f, "{v}"),
            Key::Str(s) => f.write_str(s),
        }
    }
}

impl From<i64> for Key {
    fn from(v: i64) -> Self {
        Key::Int(v)
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key::Str(s.into())
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Key::Str(s.into())
    }
}

/// One record: a key, its value and its event time. Its JSON form,
/// `{"key":…,"value":…}` (with `"ts":…` when it has an event time), is a
/// sink's line (and, with the input, a channel-state line).
///
/// The event time is a plain `i64` (milliseconds since the epoch) with
/// [`Record::NO_TIME`] for none, not an `Option`: a record stays 40 bytes
/// on the hot path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: Key,
    pub value: Value,
    /// Event time (ms); [`Record::NO_TIME`] when the job has none.
    #[serde(default = "no_time", skip_serializing_if = "is_no_time")]
    pub ts: i64,
}

fn no_time() -> i64 {
    Record::NO_TIME
}

fn is_no_time(ts: &i64) -> bool {
    *ts == Record::NO_TIME
}

impl Record {
    /// The event time of a record that has none.
    pub const NO_TIME: i64 = i64::MIN;

    /// A record of `key` and `value`, without an event time.
    #[inline]
    pub fn new(key: impl Into<Key>, value: impl Into<Value>) -> Self {
        Record {
            key: key.into(),
            value: value.into(),
            ts: Self::NO_TIME,
        }
    }

    /// A record whose value is the integer `value`, without an event time.
    #[inline]
    pub fn int(key: Key, value: i64) -> Self {
        Record {
            key,
            value: Value::Int(value),
            ts: Self::NO_TIME,
        }
    }

    /// The same record at event time `ts` (ms).
    #[inline]
    pub fn at(mut self, ts: i64) -> Self {
        self.ts = ts;
        self
    }

    /// Its event time, if it has one.
    #[inline]
    pub fn time(&self) -> Option<i64> {
        (self.ts != Self::NO_TIME).then_some(self.ts)
    }

    /// Its value as an integer, or [`NotAnInteger`] naming the key and the
    /// value (for an operator that needs integers).
    #[inline]
    pub fn int_value(&self) -> Result<i64, NotAnInteger> {
        self.value.as_int().ok_or_else(|| NotAnInteger {
            key: self.key.clone(),
            value: self.value.clone(),
        })
    }
}

/// A value that is not the integer an operator needs (min, max, avg, a
/// stage that buckets or sums its input): e.g. a dedup of a string field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {key} has the value {value}, not an integer")]
pub struct NotAnInteger {
    pub key: Key,
    pub value: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_orders_ints() {
        let keys = [
            Key::Int(i64::MIN),
            Key::Int(-1),
            Key::Int(0),
            Key::Int(7),
            Key::Str("app".into()),
        ];
        let mut prev: Option<Vec<u8>> = None;
        for k in &keys {
            let mut buf = Vec::new();
            k.encode_into(&mut buf);
            assert_eq!(Key::decode(&buf).as_ref(), Some(k));
            if let Some(p) = &prev {
                assert!(p < &buf);
            }
            prev = Some(buf);
        }
        assert_eq!(Key::decode(&[9, 1]), None);
    }

    #[test]
    fn a_records_time_is_written_only_when_set() {
        let plain = Record::new(1, 2);
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"key":1,"value":2}"#
        );
        let timed = Record::new("a", 2).at(1_000);
        let json = serde_json::to_string(&timed).unwrap();
        assert_eq!(json, r#"{"key":"a","value":2,"ts":1000}"#);
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), timed);
        let back: Record = serde_json::from_str(r#"{"key":1,"value":2}"#).unwrap();
        assert_eq!(back.time(), None);
    }

    #[test]
    fn hash_is_stable() {
        // Pinned: changing the hash would move restored state to other groups.
        assert_eq!(Key::Int(1).stable_hash(), xxh3_64(&1i64.to_le_bytes()));
        assert_ne!(
            Key::Int(1).stable_hash(),
            Key::Str("1".into()).stable_hash()
        );
    }
}
