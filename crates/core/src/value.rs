//! [`Value`]: what a record carries besides its key, and what an update to
//! a sink says — an integer, a string, a list of values, or null.
//!
//! Why one general value type rather than typed records in the runtime:
//! tasks, exchanges, channel-state files and sinks are built once for
//! every job a JSON spec can describe, so what flows between them has to
//! be one type. It stays cheap where it matters: an integer is stored
//! inline (no allocation per record on the PV path), strings and lists
//! behind one thin, reference-counted pointer: a value is 16 bytes, like a
//! [`crate::Key`], so a [`crate::Record`] is 32 — as when values were
//! only integers (a larger record measurably slowed the PV job). A user's keyed
//! function is still typed where it keeps state (any serde type).
//!
//! Two encodings, chosen by the serializer:
//!
//! - human-readable (JSON: sink lines, channel-state files, the REST API):
//!   the plain JSON value — `42`, `"a"`, `[1,"b"]`, `null` — so integer
//!   updates read exactly as before values were general;
//! - binary (postcard, in typed state): tagged, one varint tag then the
//!   payload; the tags are fixed (changing them changes the state codec).
//!
//! Not built yet: floating-point numbers, booleans and objects (an NDJSON
//! field holding one is a bad line where a value is read).

use std::fmt;
use std::sync::Arc;

use arcstr::ArcStr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// A record's value. Ordered: null < integers < strings < lists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Value {
    #[default]
    Null,
    Int(i64),
    /// One thin, reference-counted pointer.
    Str(ArcStr),
    /// One thin, reference-counted pointer.
    List(Arc<Vec<Value>>),
}

impl Value {
    /// The integer, if it is one.
    #[inline]
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A list of `items`.
    pub fn list(items: impl IntoIterator<Item = Value>) -> Value {
        Value::List(Arc::new(items.into_iter().collect()))
    }

    /// The value of a JSON field: integers, strings, null and lists of
    /// them; anything else is refused with the reason.
    pub fn from_json(v: &serde_json::Value) -> Result<Value, &'static str> {
        match v {
            serde_json::Value::Null => Ok(Value::Null),
            serde_json::Value::Number(n) => n
                .as_i64()
                .map(Value::Int)
                .ok_or("a number that is not a 64-bit integer"),
            serde_json::Value::String(s) => Ok(Value::Str(s.as_str().into())),
            serde_json::Value::Array(items) => items
                .iter()
                .map(Value::from_json)
                .collect::<Result<Vec<_>, _>>()
                .map(Value::list),
            serde_json::Value::Bool(_) => Err("a boolean"),
            serde_json::Value::Object(_) => Err("an object"),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.into())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v.into())
    }
}

/// The JSON form (`42`, `"a"`, `[1,"b"]`, `null`).
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Str(_) | Value::List(_) => {
                let text = serde_json::to_string(self).map_err(|_| fmt::Error)?;
                f.write_str(&text)
            }
        }
    }
}

/// The binary form's tags (their order is the codec: never reorder).
#[derive(Serialize)]
#[serde(rename = "Value")]
enum TaggedRef<'a> {
    Null,
    Int(i64),
    Str(&'a str),
    List(&'a [Value]),
}

#[derive(Deserialize)]
#[serde(rename = "Value")]
enum Tagged {
    Null,
    Int(i64),
    Str(ArcStr),
    List(Vec<Value>),
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return match self {
                Value::Null => s.serialize_unit(),
                Value::Int(v) => s.serialize_i64(*v),
                Value::Str(v) => s.serialize_str(v),
                Value::List(items) => s.collect_seq(items.iter()),
            };
        }
        match self {
            Value::Null => TaggedRef::Null,
            Value::Int(v) => TaggedRef::Int(*v),
            Value::Str(v) => TaggedRef::Str(v),
            Value::List(items) => TaggedRef::List(items),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            return d.deserialize_any(JsonVisitor);
        }
        Ok(match Tagged::deserialize(d)? {
            Tagged::Null => Value::Null,
            Tagged::Int(v) => Value::Int(v),
            Tagged::Str(v) => Value::Str(v),
            Tagged::List(items) => Value::list(items),
        })
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer, a string, a list or null")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("{v} is not a 64-bit signed integer")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.into()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::list(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Value> {
        vec![
            Value::Null,
            Value::Int(i64::MIN),
            Value::Int(42),
            Value::from("naïve \"quoted\""),
            Value::list([Value::Int(1), Value::from("b"), Value::Null]),
            Value::list([]),
            Value::list([Value::list([Value::Int(1)]), Value::list([])]),
        ]
    }

    #[test]
    fn json_form_is_the_plain_value() {
        let texts: Vec<String> = samples()
            .iter()
            .map(|v| serde_json::to_string(v).unwrap())
            .collect();
        assert_eq!(
            texts,
            [
                "null",
                "-9223372036854775808",
                "42",
                r#""naïve \"quoted\"""#,
                r#"[1,"b",null]"#,
                "[]",
                "[[1],[]]"
            ]
        );
        for v in samples() {
            assert_eq!(v.to_string(), serde_json::to_string(&v).unwrap());
            let back: Value = serde_json::from_str(&v.to_string()).unwrap();
            assert_eq!(back, v);
            let parsed = serde_json::from_str::<serde_json::Value>(&v.to_string()).unwrap();
            assert_eq!(Value::from_json(&parsed), Ok(v));
        }
    }

    #[test]
    fn json_refuses_what_is_not_a_value() {
        for text in ["1.5", "true", r#"{"a":1}"#, "18446744073709551615"] {
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
            let parsed = serde_json::from_str::<serde_json::Value>(text).unwrap();
            assert!(Value::from_json(&parsed).is_err(), "{text}");
        }
    }

    #[test]
    fn binary_form_round_trips_with_pinned_tags() {
        for v in samples() {
            let bytes = postcard::to_allocvec(&v).unwrap();
            assert_eq!(postcard::from_bytes::<Value>(&bytes).unwrap(), v);
        }
        // Pinned: the tag is the codec (typed state holds these bytes).
        assert_eq!(postcard::to_allocvec(&Value::Null).unwrap(), [0]);
        assert_eq!(postcard::to_allocvec(&Value::Int(-1)).unwrap(), [1, 1]);
        assert_eq!(
            postcard::to_allocvec(&Value::from("a")).unwrap(),
            [2, 1, b'a']
        );
        assert_eq!(
            postcard::to_allocvec(&Value::list([Value::Int(1)])).unwrap(),
            [3, 1, 1, 2]
        );
    }

    #[test]
    fn values_keys_and_records_stay_small() {
        assert_eq!(std::mem::size_of::<Value>(), 16);
        assert_eq!(std::mem::size_of::<crate::Key>(), 16);
        // Key, value and the event time.
        assert_eq!(std::mem::size_of::<crate::Record>(), 40);
    }

    #[test]
    fn orders_null_ints_strings_lists() {
        let mut v = samples();
        v.reverse();
        v.sort();
        assert_eq!(v[0], Value::Null);
        assert_eq!(v[1], Value::Int(i64::MIN));
        assert!(matches!(v[3], Value::Str(_)));
    }
}
