//! Keyed stages: the first keyed aggregate of a [`JobSpec`] (operator
//! `agg`, fed by the sources) and the further stages of `stages`, each fed
//! by the updates of the stage before it, re-keyed. The last stage feeds
//! the sink. Pure data: the runtime builds one exchange and one keyed task
//! per subtask for each stage from [`JobSpec::keyed_stages`].
//!
//! A stage's input record is an update of the stage before — the key it
//! changed and its new aggregate value — after the stage's `transforms`
//! (a program's stateless steps, run in the stage before: a map may change
//! the key or value, a filter or flat map drop or multiply updates).
//! [`Rekey`] says which key the update is grouped by downstream and
//! [`StageAggregate`] what it adds.
//!
//! Invariants of a validated spec: stage ids are unique and none is
//! `source`, `agg`, `sink` or an external task, ignoring ASCII case; every stage's parallelism
//! is within `1..=max_parallelism`; there are at most
//! [`JobSpec::MAX_STAGES`] of them, each with at most 16 `transforms`; the stage after a join neither
//! groups by a bucket of its updates nor sums them (they are
//! `[count, dimension]` lists). Other updates that are not integers (a
//! dedup of strings, a program's function) fail the task there, named
//! ([`NotAnInteger`]).

use serde::{Deserialize, Serialize};

use crate::metadata::AggregateKind;
use crate::spec::{AggregateSpec, JobSpec};
use crate::{CoreError, Key, NotAnInteger, OperatorId, Record, Value};

/// A keyed stage after the first one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Operator id (names its state in checkpoints and its tasks).
    pub id: OperatorId,
    /// Default: the job's `parallelism` (so rescaling the job rescales it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Stateless steps on the previous stage's updates `(key, new value)`,
    /// run in that stage's task before `key_by` (see
    /// [`crate::spec::Transform`]): a map may give an update another key
    /// (kept by `{"type":"key"}`), a filter drop it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<crate::spec::Transform>,
    /// The key the previous stage's updates are grouped by here.
    pub key_by: Rekey,
    pub aggregate: StageAggregate,
}

/// The new key of an update `(key, value)` of the previous stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rekey {
    /// The bucket of the new value: `floor(value / width)` (an integer key).
    ValueBucket { width: i64 },
    /// The same key.
    Key,
}

/// What a later stage aggregates per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StageAggregate {
    /// Number of updates received per key.
    Count,
    /// Sum of the updates' values per key.
    Sum,
}

/// How a stage's updates become the next stage's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub rekey: Rekey,
    pub aggregate: StageAggregate,
}

impl Forward {
    /// The downstream record for an update of `key` to `value`; a bucket
    /// or a sum needs an integer value (an update a stage cannot take: e.g.
    /// a dedup of a string field).
    #[inline]
    pub fn record(&self, key: &Key, value: &Value) -> Result<Record, NotAnInteger> {
        let int = || {
            value.as_int().ok_or_else(|| NotAnInteger {
                key: key.clone(),
                value: value.clone(),
            })
        };
        let key = match self.rekey {
            Rekey::ValueBucket { width } => Key::Int(int()?.div_euclid(width)),
            Rekey::Key => key.clone(),
        };
        let value = match self.aggregate {
            StageAggregate::Count => 1,
            StageAggregate::Sum => int()?,
        };
        Ok(Record::int(key, value))
    }
}

/// A keyed stage as the runtime runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedStage {
    pub id: OperatorId,
    pub parallelism: u32,
    /// What it aggregates (the form of its state).
    pub aggregate: AggregateKind,
    /// Where its updates go: the next stage, or `None` for the sink.
    pub forward: Option<Forward>,
    /// The next stage's `transforms`, run here on each update before
    /// `forward`.
    pub forward_transforms: Vec<crate::spec::Transform>,
}

/// Operator id of the first keyed stage.
pub const FIRST_STAGE: &str = "agg";

impl JobSpec {
    /// Every keyed stage in order: `agg`, then `stages`.
    pub fn keyed_stages(&self) -> Vec<KeyedStage> {
        let first = KeyedStage {
            id: OperatorId::new(FIRST_STAGE).expect("static operator id"),
            parallelism: self.parallelism,
            aggregate: match self.aggregate {
                _ if self.window.is_some() => AggregateKind::Window,
                AggregateSpec::Count => AggregateKind::Count,
                AggregateSpec::Sum { .. } => AggregateKind::Sum,
                AggregateSpec::Join { .. } => AggregateKind::Join,
                AggregateSpec::CountDistinct { .. } => AggregateKind::CountDistinct,
                AggregateSpec::Dedup { .. } => AggregateKind::Dedup,
                AggregateSpec::Min { .. } => AggregateKind::Min,
                AggregateSpec::Max { .. } => AggregateKind::Max,
                AggregateSpec::Process { .. } => AggregateKind::Process,
                AggregateSpec::Avg { .. } => AggregateKind::Avg,
                // Windowed only (validated).
                AggregateSpec::TopN { .. }
                | AggregateSpec::WindowJoin { .. }
                | AggregateSpec::ProcessWindow { .. } => AggregateKind::Window,
                AggregateSpec::IntervalJoin { .. } => AggregateKind::IntervalJoin,
            },
            forward: None,
            forward_transforms: Vec::new(),
        };
        let mut out = vec![first];
        for s in &self.stages {
            if let Some(prev) = out.last_mut() {
                prev.forward = Some(Forward {
                    rekey: s.key_by,
                    aggregate: s.aggregate,
                });
                prev.forward_transforms = s.transforms.clone();
            }
            out.push(KeyedStage {
                id: s.id.clone(),
                parallelism: s.parallelism.unwrap_or(self.parallelism),
                aggregate: match s.aggregate {
                    StageAggregate::Count => AggregateKind::Count,
                    StageAggregate::Sum => AggregateKind::Sum,
                },
                forward: None,
                forward_transforms: Vec::new(),
            });
        }
        out
    }

    /// The stage whose updates reach the sink (the job's result).
    pub fn result_stage(&self) -> KeyedStage {
        self.keyed_stages().pop().expect("at least one stage")
    }

    /// Keyed subtasks of all stages together (they share the memory budget).
    pub fn keyed_subtasks(&self) -> u32 {
        self.keyed_stages().iter().map(|s| s.parallelism).sum()
    }

    /// At most this many stages after the first.
    pub const MAX_STAGES: usize = 16;

    pub(crate) fn validate_stages(&self) -> Result<(), CoreError> {
        let bad = |m: String| Err(CoreError::InvalidSpec(m));
        if self.stages.len() > Self::MAX_STAGES {
            return bad(format!("stages: at most {} stages", Self::MAX_STAGES));
        }
        // Compared without case: ids name local folders and objects, and
        // `Agg` and `agg` are one folder on a case-insensitive file system.
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.stages {
            let id = s.id.as_str();
            let lower = id.to_ascii_lowercase();
            let external = self
                .external_tasks
                .iter()
                .any(|t| t.as_str().eq_ignore_ascii_case(id));
            let reserved = ["source", FIRST_STAGE, "sink"].contains(&lower.as_str());
            if reserved || external || !seen.insert(lower) {
                return bad(format!(
                    "stages: id {id:?} is taken (stage ids must be unique and not source, agg, sink or an external task)"
                ));
            }
            if s.transforms.len() > 16 {
                return bad(format!("stages: {id:?} has more than 16 transforms"));
            }
            if let Some(p) = s.parallelism {
                if p == 0 || p > self.max_parallelism {
                    return bad(format!(
                        "stages: {id}.parallelism must be in 1..={}, got {p}",
                        self.max_parallelism
                    ));
                }
            }
            let needs_integers =
                matches!(s.key_by, Rekey::ValueBucket { .. }) || s.aggregate == StageAggregate::Sum;
            let after_join = self.aggregate.is_join() && std::ptr::eq(s, &self.stages[0]);
            if needs_integers && after_join {
                return bad(format!(
                    "stages: {id} groups by a bucket of agg's updates or sums them, but a join's updates are lists ([count, dimension], or an interval join's pairs), not integers (count them instead)"
                ));
            }
            let after_window = self.window.is_some() && std::ptr::eq(s, &self.stages[0]);
            if needs_integers && after_window {
                return bad(format!(
                    "stages: {id} groups by a bucket of agg's updates or sums them, but a window's updates are [start, end, result] lists, not integers (count them instead)"
                ));
            }
            if let Rekey::ValueBucket { width } = s.key_by {
                if width <= 0 {
                    return bad(format!(
                        "stages: {id}.key_by.width must be positive, got {width}"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stages: &str) -> Result<JobSpec, CoreError> {
        JobSpec::from_json(&format!(
            r#"{{"job_id":"two","parallelism":3,"source":{{"type":"generator","events":10,"keys":3}},
            "key_by":"app_id","aggregate":{{"type":"count"}},"stages":{stages}}}"#
        ))
    }

    #[test]
    fn stages_follow_agg_and_take_the_job_parallelism() {
        let s = spec(
            r#"[{"id":"hist","key_by":{"type":"value_bucket","width":10},"aggregate":{"type":"count"}},
                {"id":"total","parallelism":1,"key_by":{"type":"key"},"aggregate":{"type":"sum"}}]"#,
        )
        .unwrap();
        let stages = s.keyed_stages();
        let ids: Vec<_> = stages.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["agg", "hist", "total"]);
        assert_eq!(
            stages.iter().map(|s| s.parallelism).collect::<Vec<_>>(),
            [3, 3, 1]
        );
        assert!(stages[2].forward.is_none());
        assert_eq!(s.result_stage().id.as_str(), "total");
        assert_eq!(s.keyed_subtasks(), 7);
        // agg's updates are bucketed and counted; hist's summed under their key.
        let f = stages[0].forward.unwrap();
        let int = |k, v| Ok(Record::int(Key::Int(k), v));
        assert_eq!(f.record(&Key::Int(5), &Value::Int(27)), int(2, 1));
        assert_eq!(f.record(&Key::Int(5), &Value::Int(-1)), int(-1, 1));
        let g = stages[1].forward.unwrap();
        assert_eq!(g.record(&Key::Int(2), &Value::Int(4)), int(2, 4));
        // A bucket or a sum of a value that is not an integer is refused.
        let text = Value::from("x");
        let refused = f.record(&Key::Int(5), &text).unwrap_err();
        assert_eq!(refused.value, text);
        assert!(g.record(&Key::Int(5), &text).is_err());
    }

    #[test]
    fn a_stage_that_needs_integers_cannot_follow_a_join() {
        let join = |stages: &str| {
            JobSpec::from_json(&format!(
                r#"{{"job_id":"j","source":{{"type":"generator","events":10,"keys":3}},
                "union":[{{"type":"generator","events":10,"keys":3}}],
                "key_by":"app_id","aggregate":{{"type":"join","dimension_source":1,"field":"user_id"}},
                "stages":{stages}}}"#
            ))
        };
        let bucket = r#"[{"id":"h","key_by":{"type":"value_bucket","width":10},"aggregate":{"type":"count"}}]"#;
        let err = join(bucket).unwrap_err().to_string();
        assert!(err.contains("[count, dimension]"), "{err}");
        let sum = r#"[{"id":"h","key_by":{"type":"key"},"aggregate":{"type":"sum"}}]"#;
        assert!(join(sum).is_err());
        let count = r#"[{"id":"h","key_by":{"type":"key"},"aggregate":{"type":"count"}},
                        {"id":"t","key_by":{"type":"value_bucket","width":2},"aggregate":{"type":"sum"}}]"#;
        assert!(
            join(count).is_ok(),
            "counting a join's updates gives integers"
        );
    }

    #[test]
    fn bad_stages_are_rejected_with_the_reason() {
        let dup = r#"[{"id":"h","key_by":{"type":"key"},"aggregate":{"type":"count"}},
                      {"id":"h","key_by":{"type":"key"},"aggregate":{"type":"count"}}]"#;
        assert!(spec(dup).unwrap_err().to_string().contains("taken"));
        let agg = r#"[{"id":"agg","key_by":{"type":"key"},"aggregate":{"type":"count"}}]"#;
        assert!(spec(agg).unwrap_err().to_string().contains("taken"));
        // One folder on a case-insensitive file system.
        let case = r#"[{"id":"AGG","key_by":{"type":"key"},"aggregate":{"type":"count"}}]"#;
        assert!(spec(case).unwrap_err().to_string().contains("taken"));
        let case = r#"[{"id":"h","key_by":{"type":"key"},"aggregate":{"type":"count"}},
                       {"id":"H","key_by":{"type":"key"},"aggregate":{"type":"count"}}]"#;
        assert!(spec(case).unwrap_err().to_string().contains("taken"));
        let width = r#"[{"id":"h","key_by":{"type":"value_bucket","width":0},"aggregate":{"type":"count"}}]"#;
        assert!(spec(width).unwrap_err().to_string().contains("width"));
        let p =
            r#"[{"id":"h","parallelism":0,"key_by":{"type":"key"},"aggregate":{"type":"count"}}]"#;
        assert!(spec(p).unwrap_err().to_string().contains("parallelism"));
        let unknown = r#"[{"id":"h","key_by":{"type":"key"},"aggregate":{"type":"max"}}]"#;
        assert!(spec(unknown).is_err());
    }
}
