//! The RocksDB layout of typed keyed state (Dataflow I): how a state entry
//! — which state, which key, which namespace, which user key — becomes a
//! RocksDB key, and how values are encoded. Pure encoding, no I/O.
//!
//! Key: `[key group: u16 BE][state id: u16 BE][len: u32 BE][key]`
//! `[len: u32 BE][namespace][user key]`.
//!
//! - **Key group first**, as in today's `key → i64` layout: a key-group
//!   range is one contiguous RocksDB range, so a rescaled restore reads
//!   ranges and every state type rescales the same way.
//! - **A state-id prefix, not a column family per state**: one column
//!   family keeps one set of SST files per subtask, so a checkpoint is one
//!   RocksDB checkpoint and the incremental upload plan (only new SSTs) is
//!   unchanged; a column family per state would multiply SST files (and
//!   small uploads) by the number of states. States are told apart by a
//!   16-bit id the job's [`StateNames`] assigns by name.
//! - **Length-prefixed key and namespace**: `(state, key, namespace)` is a
//!   prefix of exactly the entries of one map (or list) — a key that is a
//!   byte prefix of another (`"a"`, `"ab"`) cannot interleave — so
//!   `MapState` iterates by prefix ([`entry_prefix`]).
//! - **User key last**: a `MapState`'s map key, or a `ListState`'s element
//!   sequence number (`u64` BE, so elements iterate in append order and
//!   appending writes one entry without reading the list); empty for
//!   `ValueState` and `ReducingState`.
//!
//! Values: `[codec version: u8][postcard bytes]`. postcard (serde, varint
//! integers, a documented stable wire format, no allocation to encode
//! into a reused buffer) keeps small values small — a count is 1–3 bytes,
//! not 8 — and any serde type works. The version byte is the descriptor's:
//! a value written under another version is refused by name
//! ([`LayoutError::CodecVersion`]) instead of decoded as garbage.

use std::collections::BTreeMap;

use cutpoint_core::Key;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What goes wrong reading or naming typed state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("state entry key is malformed: {0}")]
    MalformedKey(&'static str),
    #[error("state {state:?}: value written with codec version {found}, this job reads version {expected}")]
    CodecVersion {
        state: String,
        found: u8,
        expected: u8,
    },
    #[error("state {state:?}: value cannot be decoded: {why}")]
    Decode { state: String, why: String },
    #[error("state {0:?} is declared twice with different kinds (or used as another kind)")]
    KindConflict(String),
    #[error("state {0:?} was not declared")]
    Undeclared(String),
    #[error("a job has at most 65536 states")]
    TooManyStates,
    #[error("state {state:?}: codec version {version} is not in 0..=127")]
    BadCodecVersion { state: String, version: u8 },
    /// Reading evicted state back from RocksDB failed.
    #[error("state could not be read back from RocksDB: {0}")]
    ReadThrough(String),
}

/// The kinds of keyed state (defined in core: checkpoint metadata records
/// them).
pub use cutpoint_core::metadata::StateKind;

/// A named state as an operator declares it (Flink's state descriptor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDescriptor {
    pub name: String,
    pub kind: StateKind,
    /// Of the value encoding (0..=127); stored with every value.
    pub codec_version: u8,
    /// Time to live (processing time) of each value, list element and map
    /// entry, from its last write: then it reads as absent and is deleted
    /// (Flink's `StateTtlConfig` with `OnCreateAndWrite` and
    /// `NeverReturnExpired`). `None`: kept until cleared.
    pub ttl: Option<std::time::Duration>,
}

impl StateDescriptor {
    fn new(name: &str, kind: StateKind) -> Self {
        Self {
            name: name.into(),
            kind,
            codec_version: 1,
            ttl: None,
        }
    }

    /// The same state, its entries expiring `ttl` after their last write.
    pub fn with_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The same state, its values encoded in codec version `version`
    /// (0..=127): a restore of state written in another version is
    /// refused, naming both (raise it when the stored type changes).
    ///
    /// # Panics
    /// If `version` is 128 or more (the high bit marks expiring values).
    pub fn with_codec_version(mut self, version: u8) -> Self {
        assert!(version < 128, "codec versions are 0..=127, got {version}");
        self.codec_version = version;
        self
    }

    /// A `ValueState` named `name` (codec version 1).
    pub fn value(name: &str) -> Self {
        Self::new(name, StateKind::Value)
    }

    /// A `ListState` named `name` (codec version 1).
    pub fn list(name: &str) -> Self {
        Self::new(name, StateKind::List)
    }

    /// A `MapState` named `name` (codec version 1).
    pub fn map(name: &str) -> Self {
        Self::new(name, StateKind::Map)
    }

    /// A `ReducingState` named `name` (codec version 1).
    pub fn reducing(name: &str) -> Self {
        Self::new(name, StateKind::Reducing)
    }
}

/// The job's states by name, each with its 16-bit id (in order of first
/// declaration; recorded in checkpoint metadata so a restore maps names to
/// the same ids).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateNames {
    by_name: BTreeMap<String, (u16, StateKind, u8)>,
}

impl StateNames {
    /// The id of `d`'s state, assigned on first declaration.
    pub fn declare(&mut self, d: &StateDescriptor) -> Result<u16, LayoutError> {
        if d.codec_version & EXPIRES != 0 {
            return Err(LayoutError::BadCodecVersion {
                state: d.name.clone(),
                version: d.codec_version,
            });
        }
        if let Some((id, kind, _)) = self.by_name.get(&d.name) {
            return match *kind == d.kind {
                true => Ok(*id),
                false => Err(LayoutError::KindConflict(d.name.clone())),
            };
        }
        let id = u16::try_from(self.by_name.len()).map_err(|_| LayoutError::TooManyStates)?;
        self.by_name
            .insert(d.name.clone(), (id, d.kind, d.codec_version));
        Ok(id)
    }

    pub fn id(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).map(|(id, _, _)| *id)
    }

    /// Every declared state, by id.
    pub fn declared(&self) -> Vec<cutpoint_core::metadata::DeclaredState> {
        let mut out: Vec<_> = self
            .by_name
            .iter()
            .map(
                |(name, (id, kind, codec))| cutpoint_core::metadata::DeclaredState {
                    id: *id,
                    name: name.clone(),
                    kind: *kind,
                    codec_version: *codec,
                },
            )
            .collect();
        out.sort_by_key(|d| d.id);
        out
    }

    /// The kind of the state with id `id`.
    pub fn kind_of(&self, id: u16) -> Option<StateKind> {
        self.by_name
            .values()
            .find(|(i, _, _)| *i == id)
            .map(|(_, kind, _)| *kind)
    }
}

/// One entry of typed state, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryKey {
    pub key_group: u16,
    pub state: u16,
    pub key: Vec<u8>,
    pub namespace: Vec<u8>,
    pub user_key: Vec<u8>,
}

/// Appends `[key group][state][len][key][len][namespace]`: the prefix of
/// every entry of one state for one key and namespace.
pub fn entry_prefix(key_group: u16, state: u16, key: &Key, namespace: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&key_group.to_be_bytes());
    out.extend_from_slice(&state.to_be_bytes());
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    key.encode_into(out);
    let key_len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&key_len.to_be_bytes());
    out.extend_from_slice(&(namespace.len() as u32).to_be_bytes());
    out.extend_from_slice(namespace);
}

/// The whole RocksDB key of an entry: its prefix, then `user_key`.
pub fn entry_key(
    key_group: u16,
    state: u16,
    key: &Key,
    namespace: &[u8],
    user_key: &[u8],
    out: &mut Vec<u8>,
) {
    entry_prefix(key_group, state, key, namespace, out);
    out.extend_from_slice(user_key);
}

/// A `ListState` element's user key: its sequence number, in append order.
pub fn list_element(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Splits a RocksDB key written by [`entry_key`].
pub fn decode_entry(bytes: &[u8]) -> Result<EntryKey, LayoutError> {
    let (key_group, rest) = take_u16(bytes)?;
    let (state, rest) = take_u16(rest)?;
    let (key, rest) = take_prefixed(rest)?;
    let (namespace, user_key) = take_prefixed(rest)?;
    Ok(EntryKey {
        key_group,
        state,
        key: key.to_vec(),
        namespace: namespace.to_vec(),
        user_key: user_key.to_vec(),
    })
}

fn take_u16(b: &[u8]) -> Result<(u16, &[u8]), LayoutError> {
    let (head, rest) = b
        .split_first_chunk::<2>()
        .ok_or(LayoutError::MalformedKey("too short"))?;
    Ok((u16::from_be_bytes(*head), rest))
}

fn take_prefixed(b: &[u8]) -> Result<(&[u8], &[u8]), LayoutError> {
    let (len, rest) = b
        .split_first_chunk::<4>()
        .ok_or(LayoutError::MalformedKey("length missing"))?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(LayoutError::MalformedKey("length past the end"));
    }
    Ok(rest.split_at(len))
}

/// Encodes `value` as `[version][postcard]` into `out` (cleared first).
pub fn encode_value<T: Serialize>(d: &StateDescriptor, value: &T, out: &mut Vec<u8>) {
    out.clear();
    out.push(d.codec_version);
    let body = postcard::to_extend(value, std::mem::take(out)).expect("serde into a Vec");
    *out = body;
}

/// The version byte's flag of a value that expires: 8 bytes of its
/// expiry time (ms since the epoch, big-endian) follow the byte. Values
/// say for themselves whether they expire, so a state whose TTL was
/// switched on or off between a checkpoint and its restore reads both.
const EXPIRES: u8 = 0x80;

/// Encodes `value` expiring at `expires_at_ms` (see [`EXPIRES`]).
pub fn encode_expiring<T: Serialize>(
    d: &StateDescriptor,
    value: &T,
    expires_at_ms: u64,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.push(d.codec_version | EXPIRES);
    out.extend_from_slice(&expires_at_ms.to_be_bytes());
    let body = postcard::to_extend(value, std::mem::take(out)).expect("serde into a Vec");
    *out = body;
}

/// When an encoded value expires (`None`: never).
pub fn expires_at(bytes: &[u8]) -> Option<u64> {
    match bytes.split_first() {
        Some((v, rest)) if v & EXPIRES != 0 => {
            Some(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?))
        }
        _ => None,
    }
}

/// Decodes a value written by [`encode_value`] under the same descriptor.
pub fn decode_value<T: DeserializeOwned>(
    d: &StateDescriptor,
    bytes: &[u8],
) -> Result<T, LayoutError> {
    let (&version, mut body) = bytes.split_first().ok_or_else(|| LayoutError::Decode {
        state: d.name.clone(),
        why: "empty value".into(),
    })?;
    if version & EXPIRES != 0 {
        body = body.get(8..).ok_or_else(|| LayoutError::Decode {
            state: d.name.clone(),
            why: "an expiring value without its expiry time".into(),
        })?;
    }
    let version = version & !EXPIRES;
    if version != d.codec_version {
        return Err(LayoutError::CodecVersion {
            state: d.name.clone(),
            found: version,
            expected: d.codec_version,
        });
    }
    postcard::from_bytes(body).map_err(|e| LayoutError::Decode {
        state: d.name.clone(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(name: &str, kind: StateKind) -> StateDescriptor {
        StateDescriptor {
            name: name.into(),
            kind,
            codec_version: 1,
            ttl: None,
        }
    }

    fn key(kg: u16, state: u16, k: &Key, ns: &[u8], user: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        entry_key(kg, state, k, ns, user, &mut out);
        out
    }

    #[test]
    fn an_entry_key_decodes_to_its_parts() {
        let k = Key::Str("user-7".into());
        let bytes = key(42, 3, &k, b"window-1", b"mapkey");
        let e = decode_entry(&bytes).unwrap();
        let mut encoded_key = Vec::new();
        k.encode_into(&mut encoded_key);
        assert_eq!(
            e,
            EntryKey {
                key_group: 42,
                state: 3,
                key: encoded_key,
                namespace: b"window-1".to_vec(),
                user_key: b"mapkey".to_vec(),
            }
        );
        assert_eq!(
            decode_entry(&bytes[..bytes.len() - 20]),
            Err(LayoutError::MalformedKey("length past the end"))
        );
        assert!(decode_entry(&[0]).is_err());
    }

    #[test]
    fn one_maps_entries_are_exactly_the_keys_with_its_prefix() {
        // Keys "a" and "ab" (one a byte prefix of the other), two states,
        // two namespaces, neighbouring key groups: sorted as RocksDB sorts.
        let mut all = Vec::new();
        for kg in [6u16, 7] {
            for state in [0u16, 1] {
                for k in ["a", "ab"] {
                    for ns in [&b""[..], b"n"] {
                        for user in [&b"x"[..], b"y", b"z"] {
                            all.push(key(kg, state, &Key::Str(k.into()), ns, user));
                        }
                    }
                }
            }
        }
        all.sort();
        let mut prefix = Vec::new();
        entry_prefix(7, 1, &Key::Str("a".into()), b"", &mut prefix);
        let hits: Vec<usize> = (0..all.len())
            .filter(|i| all[*i].starts_with(&prefix))
            .collect();
        assert_eq!(hits.len(), 3, "the map's three entries and nothing else");
        assert!(
            hits.windows(2).all(|w| w[1] == w[0] + 1),
            "contiguous: {hits:?}"
        );
        for i in hits {
            let e = decode_entry(&all[i]).unwrap();
            assert_eq!(
                (e.key_group, e.state, e.namespace.as_slice()),
                (7, 1, &b""[..])
            );
        }
    }

    #[test]
    fn a_key_group_range_is_one_contiguous_range() {
        let mut all: Vec<Vec<u8>> = (0..10u16)
            .flat_map(|kg| (0..3i64).map(move |k| key(kg, (k % 2) as u16, &Key::Int(k), b"", b"")))
            .collect();
        all.sort();
        let (lo, hi) = (3u16.to_be_bytes(), 6u16.to_be_bytes());
        let inside: Vec<usize> = (0..all.len())
            .filter(|i| all[*i][..2] >= lo[..] && all[*i][..2] < hi[..])
            .collect();
        assert_eq!(inside.len(), 9);
        assert!(inside.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn list_elements_iterate_in_append_order() {
        let k = Key::Int(1);
        let mut keys: Vec<Vec<u8>> = [300u64, 2, 1 << 40, 17]
            .iter()
            .map(|s| key(0, 0, &k, b"", &list_element(*s)))
            .collect();
        keys.sort();
        let seqs: Vec<u64> = keys
            .iter()
            .map(|b| u64::from_be_bytes(decode_entry(b).unwrap().user_key.try_into().unwrap()))
            .collect();
        assert_eq!(seqs, vec![2, 17, 300, 1 << 40]);
    }

    #[test]
    fn values_round_trip_small_and_refuse_another_codec_version() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Account {
            balance: i64,
            flags: Vec<String>,
        }
        let d = desc("account", StateKind::Value);
        let mut buf = Vec::new();
        encode_value(&d, &3i64, &mut buf);
        assert_eq!(buf.len(), 2, "a small count is small: {buf:?}");
        assert_eq!(decode_value::<i64>(&d, &buf), Ok(3));
        let a = Account {
            balance: -12,
            flags: vec!["new".into()],
        };
        encode_value(&d, &a, &mut buf);
        assert_eq!(decode_value::<Account>(&d, &buf).unwrap(), a);
        let v2 = StateDescriptor {
            codec_version: 2,
            ..d.clone()
        };
        assert_eq!(
            decode_value::<Account>(&v2, &buf),
            Err(LayoutError::CodecVersion {
                state: "account".into(),
                found: 1,
                expected: 2
            })
        );
        assert!(matches!(
            decode_value::<Account>(&d, &[1, 0xff]),
            Err(LayoutError::Decode { .. })
        ));
    }

    #[test]
    fn state_ids_are_stable_by_name_and_kinds_do_not_change() {
        let mut names = StateNames::default();
        assert_eq!(names.declare(&desc("count", StateKind::Value)), Ok(0));
        assert_eq!(names.declare(&desc("seen", StateKind::Map)), Ok(1));
        assert_eq!(names.declare(&desc("count", StateKind::Value)), Ok(0));
        assert_eq!(names.id("seen"), Some(1));
        assert_eq!(
            names.declare(&desc("count", StateKind::List)),
            Err(LayoutError::KindConflict("count".into()))
        );
    }

    /// The layout on a real RocksDB: a map's entries come back by prefix
    /// iteration, in user-key order, and nothing of its neighbours.
    #[test]
    fn rocksdb_iterates_one_map_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let db = rocksdb::DB::open_default(dir.path()).unwrap();
        let d = desc("per-merchant", StateKind::Map);
        let mut v = Vec::new();
        for (k, merchant, amount) in [
            (1i64, "m2", 5i64),
            (1, "m1", 7),
            (12, "m1", 1),
            (1, "m3", 2),
        ] {
            encode_value(&d, &amount, &mut v);
            db.put(key(9, 4, &Key::Int(k), b"", merchant.as_bytes()), &v)
                .unwrap();
        }
        db.put(key(9, 5, &Key::Int(1), b"", b"m9"), b"\x01\x00")
            .unwrap();
        let mut prefix = Vec::new();
        entry_prefix(9, 4, &Key::Int(1), b"", &mut prefix);
        let got: Vec<(String, i64)> = db
            .prefix_iterator(&prefix)
            .map(|r| r.unwrap())
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| {
                let e = decode_entry(&k).unwrap();
                (
                    String::from_utf8(e.user_key).unwrap(),
                    decode_value::<i64>(&d, &v).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("m1".into(), 7), ("m2".into(), 5), ("m3".into(), 2)]
        );
    }
}
