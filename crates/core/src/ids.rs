//! Id newtypes. Ids that end up in object paths ([`JobId`], [`OperatorId`])
//! can only be built through validation: 1–64 characters of `[A-Za-z0-9_-]`,
//! not starting with `-`. That is the one guard that keeps user strings from
//! becoming path traversal in the storage layout.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::CoreError;

const MAX_ID_LEN: usize = 64;

fn validate_name(kind: &'static str, value: &str) -> Result<(), CoreError> {
    let err = |reason| CoreError::InvalidId {
        kind,
        value: value.chars().take(80).collect(),
        reason,
    };
    if value.is_empty() {
        return Err(err("must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(err("must be at most 64 characters"));
    }
    if value.starts_with('-') {
        return Err(err("must not start with '-'"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(err("may only contain ASCII letters, digits, '_' and '-'"));
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(value: impl Into<String>) -> Result<Self, CoreError> {
                let value = value.into();
                validate_name($kind, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = CoreError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// Identifies a job; also the job's folder name in storage.
    JobId,
    "job id"
);
name_id!(
    /// Identifies an operator of the job graph (e.g. `source`, `agg`).
    OperatorId,
    "operator id"
);

name_id!(
    /// Names a keyed process function or a stateless step a Rust program
    /// registers (the JSON spec's `process` aggregate and `transforms`
    /// refer to it by this name).
    FunctionName,
    "function name"
);

name_id!(
    /// Identifies a savepoint; its folder name under `savepoints/`.
    SavepointId,
    "savepoint id"
);

/// Checkpoint number, increasing per job (never reused, even across restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckpointId(pub u64);

impl CheckpointId {
    pub fn next(self) -> Self {
        CheckpointId(self.0 + 1)
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for CheckpointId {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Digits only: no sign, no whitespace, at most 19 digits.
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CoreError::InvalidId {
                kind: "checkpoint id",
                value: s.chars().take(80).collect(),
                reason: "must be a non-negative integer",
            });
        }
        s.parse()
            .map(CheckpointId)
            .map_err(|_| CoreError::InvalidId {
                kind: "checkpoint id",
                value: s.to_string(),
                reason: "out of range",
            })
    }
}

/// Index of a parallel instance of an operator, `0..parallelism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SubtaskIndex(pub u32);

impl fmt::Display for SubtaskIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One task of the running job: an operator and one of its subtasks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId {
    pub operator: OperatorId,
    pub subtask: SubtaskIndex,
}

impl TaskId {
    pub fn new(operator: &OperatorId, subtask: u32) -> Self {
        Self {
            operator: operator.clone(),
            subtask: SubtaskIndex(subtask),
        }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.operator, self.subtask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(JobId::new("pv-job_1").is_ok());
        for bad in ["", "../etc", "a/b", "-x", "a b", "é", &"x".repeat(65)] {
            assert!(JobId::new(bad).is_err(), "{bad:?} accepted");
        }
        let e: Result<JobId, _> = serde_json::from_str("\"../x\"");
        assert!(e.is_err());
    }

    #[test]
    fn checkpoint_ids_parse_strictly() {
        assert_eq!("12".parse::<CheckpointId>().unwrap(), CheckpointId(12));
        for bad in ["", "-1", "+1", " 1", "1.0", "99999999999999999999"] {
            assert!(bad.parse::<CheckpointId>().is_err(), "{bad:?} accepted");
        }
    }
}
