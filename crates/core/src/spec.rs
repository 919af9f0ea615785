//! The job specification (`examples/pv.json` is one) and checkpoint options.
//!
//! A spec is plain JSON with unknown fields rejected, so a typo is an error
//! and never a silently ignored option. [`JobSpec::validate`] checks what
//! serde cannot (ranges, field names the source can produce).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{CoreError, JobGraph, JobId, OperatorId};

/// What to run and how to checkpoint it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub job_id: JobId,
    /// Parallelism of the keyed aggregate (and its chained sink).
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,
    /// Number of key groups; the upper bound for any future parallelism.
    #[serde(default = "default_max_parallelism")]
    pub max_parallelism: u32,
    pub source: SourceSpec,
    /// More sources, unioned with `source` into the keyed exchange (Flink's
    /// `union`); their partitions follow `source`'s. Source index 0 is
    /// `source`, 1.. are these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub union: Vec<SourceSpec>,
    /// Conditions every input event must meet (see [`crate::filter`]);
    /// the others are dropped in the source task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<crate::filter::Filter>,
    /// Field of the input events to group by. A windowed job may leave
    /// it out: a global window (Flink's `windowAll`), every record in one
    /// group with the key [`JobSpec::GLOBAL_KEY`] (so one subtask does the
    /// window's work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_by: Option<String>,
    /// Stateless steps every record takes in the source task, in order,
    /// after the filters and before it is routed by its key (see
    /// [`Transform`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<Transform>,
    /// The records' event time and the sources' watermarks (see
    /// [`crate::time`]); absent: records have no event time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<crate::time::EventTimeSpec>,
    /// Aggregates per key and window instead of per key (see
    /// [`crate::window`]); needs `event_time` (unless of processing time)
    /// and a count, sum, min, max, avg, count-distinct, top-n or window
    /// join. Each window's result is an update `[start, end, result]` (a
    /// window join's: one `[start, end, l, r]` per pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::window::WindowSpec>,
    pub aggregate: AggregateSpec,
    /// Further keyed stages after `aggregate` (see [`crate::stage`]): each
    /// re-keys the updates of the stage before and aggregates them again;
    /// the last one feeds the sink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<crate::stage::StageSpec>,
    /// Where the last stage's updates go: one sink, or several that each
    /// get every update (fan-out).
    #[serde(default)]
    pub sink: Sinks,
    /// The side output for late records (Flink's `sideOutputLateData`):
    /// each record the first keyed stage drops as late (a window's or a
    /// join's) goes here as `(key, [ts, value])`; absent: late records are
    /// dropped (and counted either way). Needs `event_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_sink: Option<SinkSpec>,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub restart: RestartConfig,
    #[serde(default)]
    pub state: StateConfig,
    /// Tasks outside this process that take part in every checkpoint: each
    /// must acknowledge (with its state handles) or decline through the REST
    /// API. Each is one task, `{name}[0]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_tasks: Vec<crate::OperatorId>,
    /// Test knob (like the two below): fault injection for demos and tests,
    /// absent in production specs. `cutpoint serve` refuses specs with test
    /// knobs unless started with `--enable-test-knobs`; `cutpoint run`
    /// accepts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject_failure: Option<InjectFailure>,
    /// Test knob: one source partition waits this long after a trigger
    /// before it injects the barrier (makes alignment observable); at most
    /// [`JobSpec::MAX_BARRIER_DELAY_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject_barrier_delay: Option<BarrierDelay>,
    /// Test knob: every aggregate subtask sleeps this long per batch of
    /// records (a slow, back-pressuring consumer); at most
    /// [`JobSpec::MAX_PROCESSING_DELAY_US`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject_processing_delay_us: Option<u64>,
}

/// A stateless step on the records of the sources, naming a function the
/// running program registered (Flink's `map`, `filter`, `flat_map`):
/// `{"map": "name"}`, `{"filter": "name"}` or `{"flat_map": "name"}`.
///
/// They run in the source task (chained, no exchange): on each record the
/// source projected (`key_by` and the aggregate's value field), after the
/// field filters. A map may change the key: records are routed to the
/// keyed stage by the key the last step leaves. They keep no state, so a
/// checkpoint holds nothing of them; for exactly-once results a step must
/// be deterministic (a replay after a restore runs it again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Transform {
    /// One record in, one record out.
    Map(crate::FunctionName),
    /// Keeps the records the function accepts.
    Filter(crate::FunctionName),
    /// One record in, any number out.
    FlatMap(crate::FunctionName),
}

impl Transform {
    /// The function the step runs.
    pub fn function(&self) -> &crate::FunctionName {
        match self {
            Transform::Map(f) | Transform::Filter(f) | Transform::FlatMap(f) => f,
        }
    }

    /// `map`, `filter` or `flat_map`.
    pub fn kind(&self) -> &'static str {
        match self {
            Transform::Map(_) => "map",
            Transform::Filter(_) => "filter",
            Transform::FlatMap(_) => "flat_map",
        }
    }
}

/// Delays barrier injection on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BarrierDelay {
    pub partition: u32,
    pub delay_ms: u64,
}

/// How a task with several inputs treats barriers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointingMode {
    /// Aligned barriers: an input that delivered barrier `n` is not read
    /// until every input did. After a restore every record counts once.
    #[default]
    ExactlyOnce,
    /// No alignment: every input is read on; the task snapshots when the
    /// last barrier `n` arrives. Records that came after the barrier on an
    /// early input are in the snapshot *and* replayed after a restore, so
    /// results can be too high, never too low.
    AtLeastOnce,
    /// Unaligned barriers (exactly-once): barrier `n` overtakes the records
    /// queued ahead of it; a task snapshots as soon as it learns of `n` and
    /// persists the records still in flight before `n` on its inputs as
    /// channel state, replayed first after a restore. Checkpoints no longer
    /// wait for back-pressured queues to drain.
    Unaligned,
}

fn default_parallelism() -> u32 {
    2
}
fn default_max_parallelism() -> u32 {
    128
}

/// Where events come from. Each partition is one source subtask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    /// Deterministic events: event `i` has
    /// `app_id = splitmix64(seed + i * 0x9E3779B97F4A7C15) % keys` and
    /// `value = 1`. Partition `p` of `P` reads the indices
    /// `[p*events/P, (p+1)*events/P)`; the offset is the index.
    Generator {
        #[serde(default = "default_partitions")]
        partitions: u32,
        events: u64,
        keys: u64,
        #[serde(default = "default_seed")]
        seed: u64,
        /// Distinct `user_id`s: event `i` has
        /// `user_id = splitmix64((seed ^ 0x5DEECE66D) + i * 0xD1B54A32D192ED03) % users`.
        /// (Event `i` also has an `amount` in 1..=1000:
        /// `1 + splitmix64((seed ^ 0xA3B195354A39B70D) + i * 0xA24BAED4963EE407) % 1000`.)
        #[serde(default = "default_users")]
        users: u64,
        /// Total events per second over all partitions; unlimited if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate_per_s: Option<u64>,
        /// Event time: event `i`, the `k`-th of its partition, has
        /// `ts = k - splitmix64((seed ^ 0x7E57_0DD5) + i * 0x94D049BB133111EB) % (disorder_ms + 1)`
        /// (one event per millisecond per partition, each up to
        /// `disorder_ms` late).
        #[serde(default, skip_serializing_if = "is_zero")]
        disorder_ms: u64,
    },
    /// One newline-delimited JSON file per partition (like a Kafka
    /// partition); the offset is the byte position of the next line.
    Files {
        paths: Vec<PathBuf>,
        #[serde(default)]
        on_bad_line: BadLinePolicy,
    },
}

impl SourceSpec {
    /// Its number of partitions (source subtasks).
    pub fn partitions(&self) -> u32 {
        match self {
            SourceSpec::Generator { partitions, .. } => *partitions,
            SourceSpec::Files { paths, .. } => paths.len() as u32,
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn default_partitions() -> u32 {
    2
}
fn default_seed() -> u64 {
    42
}
fn default_users() -> u64 {
    1000
}

/// What the files source does with a line that is not a JSON object with
/// the needed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadLinePolicy {
    /// Count it, log it with its position, and go on.
    #[default]
    Skip,
    /// Fail the task (the job restarts and fails again: fix the input).
    Fail,
}

/// The keyed aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AggregateSpec {
    /// Number of events per key (the PV job).
    Count,
    /// Sum of an integer field per key.
    Sum { field: String },
    /// A keyed two-input join (e.g. a click stream with an app-metadata
    /// stream): records of source `dimension_source` set the key's
    /// dimension to their `field` (any value: an integer, a string, a
    /// list; the latest wins); records of every other source count per
    /// key, and each emits `[count, dimension]` (null until a dimension
    /// arrived). Typed state: one value `(count, dimension)` per key.
    /// With `state_ttl_ms`, a key's row expires that long (processing
    /// time) after its last write (Flink's state TTL for a regular
    /// join): an idle key's count and dimension go, and its next record
    /// starts afresh.
    Join {
        dimension_source: u32,
        field: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state_ttl_ms: Option<u64>,
    },
    /// Number of distinct values of a field (any value) per key (typed state:
    /// a map of the values seen and the count); updates carry the count
    /// when it grows.
    CountDistinct { field: String },
    /// One value of a field (any value) per key kept (typed state): `first` emits the first
    /// value of each key and drops the rest; `last` emits every value that
    /// differs from the kept one. Updates carry the kept value.
    Dedup {
        field: String,
        #[serde(default)]
        keep: Keep,
    },
    /// The smallest value of an integer field per key (typed state: a
    /// value state, so a key's first value counts whatever it is); updates
    /// carry the new minimum when it falls.
    Min { field: String },
    /// The largest value of an integer field per key; updates carry the new
    /// maximum when it rises.
    Max { field: String },
    /// The mean of an integer field per key, rounded down (typed state:
    /// the sum and count, and the mean); updates carry the mean when it
    /// changes.
    Avg { field: String },
    /// The `n` largest values of an integer field per key and window,
    /// largest first, repeats kept (windowed only): a window's result is
    /// the list.
    TopN { field: String, n: u32 },
    /// An event-time interval join of two inputs (Flink's `intervalJoin`):
    /// records of source `right_source` are the right input, every other
    /// source's the left; a left record `l` and a right record `r` of one
    /// key join when `l.ts + lower_ms <= r.ts <= l.ts + upper_ms`, and
    /// each pair emits `[l.ts, r.ts, l.field, r.field]` (any values) once.
    /// Needs `event_time`; a record at or behind the watermark is late
    /// (dropped, counted); each record is kept until the watermark passes
    /// the last time a partner of it can have. The job's final state: the
    /// pairs emitted per key.
    IntervalJoin {
        right_source: u32,
        field: String,
        lower_ms: i64,
        upper_ms: i64,
    },
    /// A window join of two inputs (Flink's
    /// `join(…).where(…).equalTo(…).window(…)`): records of source
    /// `right_source` are the right input, every other source's the left;
    /// when a key's window fires, each pair of a left and a right record
    /// of that key in it emits `[start, end, l.field, r.field]` (any
    /// values). Needs a `window` (tumbling, sliding or session; event or
    /// processing time) without allowed lateness; a record for a window
    /// that fired is late (dropped, counted). The key's latest window
    /// result (the job's final state): `[start, end, pairs]`.
    WindowJoin { right_source: u32, field: String },
    /// A full window function written in Rust and registered by the
    /// program that runs the job (Flink's `ProcessWindowFunction`; see
    /// `cutpoint::Program::window_function`): each key's window buffers
    /// its records' values of `field` (any value; 1 per event if absent)
    /// in arrival order, and when it fires the function gets the key, the
    /// window and every value; what it returns is the window's result.
    /// Windowed only.
    ProcessWindow {
        function: crate::FunctionName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
    /// A keyed process function written in Rust and registered by the
    /// program that runs the job (see `cutpoint::Program`): the records
    /// carry the key and the value of `field` (any value; 1 per event if
    /// absent); the function keeps typed state and emits updates
    /// `(key, value)`.
    Process {
        function: crate::FunctionName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
}

/// What a record's value may be ([`AggregateSpec::value_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A 64-bit integer (sum, min, max, avg).
    Integer,
    /// An integer, a string, null or a list of them (a join's dimension,
    /// count-distinct, dedup, a program's function).
    Any,
}

/// Which record [`AggregateSpec::Dedup`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    #[default]
    First,
    Last,
}

impl AggregateSpec {
    /// The largest `n` of a top-n.
    pub const MAX_TOP_N: u32 = 100;
    /// The widest bound of an interval join: a week either way.
    pub const MAX_JOIN_BOUND_MS: i64 = 7 * 24 * 3_600_000;
    /// The longest state TTL of a join: a year.
    pub const MAX_STATE_TTL_MS: u64 = 365 * 24 * 3_600_000;

    /// Whether it is a join of two inputs (the regular, the interval or
    /// the window join): updates are lists; transforms do not run before
    /// it.
    pub fn is_join(&self) -> bool {
        matches!(
            self,
            AggregateSpec::Join { .. }
                | AggregateSpec::IntervalJoin { .. }
                | AggregateSpec::WindowJoin { .. }
        )
    }

    /// The source whose records are a join's second input.
    pub fn second_input(&self) -> Option<u32> {
        match *self {
            AggregateSpec::Join {
                dimension_source, ..
            } => Some(dimension_source),
            AggregateSpec::IntervalJoin { right_source, .. }
            | AggregateSpec::WindowJoin { right_source, .. } => Some(right_source),
            _ => None,
        }
    }

    /// Its `type` in the spec.
    pub fn name(&self) -> &'static str {
        match self {
            AggregateSpec::Count => "count",
            AggregateSpec::Sum { .. } => "sum",
            AggregateSpec::Join { .. } => "join",
            AggregateSpec::CountDistinct { .. } => "count_distinct",
            AggregateSpec::Dedup { .. } => "dedup",
            AggregateSpec::Min { .. } => "min",
            AggregateSpec::Max { .. } => "max",
            AggregateSpec::Process { .. } => "process",
            AggregateSpec::Avg { .. } => "avg",
            AggregateSpec::TopN { .. } => "top_n",
            AggregateSpec::IntervalJoin { .. } => "interval_join",
            AggregateSpec::WindowJoin { .. } => "window_join",
            AggregateSpec::ProcessWindow { .. } => "process_window",
        }
    }

    /// The field the sources project as each record's value (`None`: 1
    /// per event; [`AggregateSpec::value_kind`]: what it may hold). A
    /// join's is its dimension source's only.
    pub fn value_field(&self) -> Option<&str> {
        match self {
            AggregateSpec::Count => None,
            AggregateSpec::Process { field, .. } | AggregateSpec::ProcessWindow { field, .. } => {
                field.as_deref()
            }
            AggregateSpec::Sum { field }
            | AggregateSpec::Join { field, .. }
            | AggregateSpec::CountDistinct { field }
            | AggregateSpec::Dedup { field, .. }
            | AggregateSpec::Min { field }
            | AggregateSpec::Max { field }
            | AggregateSpec::Avg { field }
            | AggregateSpec::TopN { field, .. }
            | AggregateSpec::IntervalJoin { field, .. }
            | AggregateSpec::WindowJoin { field, .. } => Some(field),
        }
    }

    /// What its records' values may be: integers only, or any [`Value`]
    /// (an NDJSON line whose field holds something else is a bad line).
    ///
    /// [`Value`]: crate::Value
    pub fn value_kind(&self) -> ValueKind {
        match self {
            AggregateSpec::CountDistinct { .. }
            | AggregateSpec::Dedup { .. }
            | AggregateSpec::Join { .. }
            | AggregateSpec::IntervalJoin { .. }
            | AggregateSpec::WindowJoin { .. }
            | AggregateSpec::ProcessWindow { .. }
            | AggregateSpec::Process { .. } => ValueKind::Any,
            AggregateSpec::Count
            | AggregateSpec::Sum { .. }
            | AggregateSpec::Min { .. }
            | AggregateSpec::Max { .. }
            | AggregateSpec::Avg { .. }
            | AggregateSpec::TopN { .. } => ValueKind::Integer,
        }
    }

    /// Whether its state is typed (value, map, … state) rather than one
    /// integer per key.
    pub fn is_typed(&self) -> bool {
        matches!(
            self,
            AggregateSpec::Join { .. }
                | AggregateSpec::CountDistinct { .. }
                | AggregateSpec::Dedup { .. }
                | AggregateSpec::Min { .. }
                | AggregateSpec::Max { .. }
                | AggregateSpec::Avg { .. }
                | AggregateSpec::TopN { .. }
                | AggregateSpec::IntervalJoin { .. }
                | AggregateSpec::WindowJoin { .. }
                | AggregateSpec::ProcessWindow { .. }
                | AggregateSpec::Process { .. }
        )
    }
}

/// Where each aggregate update goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkSpec {
    #[default]
    Discard,
    /// One JSON line per update on standard output.
    Stdout,
    /// One JSON line per update, in `{dir}/part-{subtask}.jsonl` (appended;
    /// not transactional, so a restore can repeat updates).
    File { dir: PathBuf },
    /// Two-phase commit: updates of one checkpoint epoch go to a staging
    /// file, pre-committed (flushed, fsynced, recorded in the snapshot) on
    /// the barrier and committed (renamed to `part-{subtask}-{checkpoint}.jsonl`)
    /// when the checkpoint completes. Output is exactly-once.
    TransactionalFile { dir: PathBuf },
}

/// The job's sinks, in order: every update of the last stage goes to each
/// (fan-out). JSON: one sink object, or an array of 1 to [`Sinks::MAX`].
/// A sink's index in the list names its transactions in a checkpoint
/// ([`crate::metadata::PendingTransaction::sink`]), so a restore hands each
/// its own: the order is part of the job, like an operator id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sinks(Vec<SinkSpec>);

impl Default for Sinks {
    fn default() -> Self {
        Sinks(vec![SinkSpec::Discard])
    }
}

impl From<SinkSpec> for Sinks {
    fn from(sink: SinkSpec) -> Self {
        Sinks(vec![sink])
    }
}

impl Sinks {
    /// The most sinks a job has.
    pub const MAX: usize = 8;

    /// Several sinks (checked by [`JobSpec::validate`]).
    pub fn new(sinks: Vec<SinkSpec>) -> Self {
        Sinks(sinks)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, SinkSpec> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any sink takes part in two-phase commit.
    pub fn any_transactional(&self) -> bool {
        self.iter()
            .any(|s| matches!(s, SinkSpec::TransactionalFile { .. }))
    }

    /// Why the list is not a valid job's, if it is not: 1 to [`Self::MAX`]
    /// sinks, no folder shared by two file sinks, stdout at most once.
    fn problem(&self) -> Option<String> {
        if self.0.is_empty() || self.0.len() > Self::MAX {
            return Some(format!(
                "sink: 1 to {} sinks, got {}",
                Self::MAX,
                self.0.len()
            ));
        }
        let mut dirs = std::collections::BTreeSet::new();
        let mut stdout = 0;
        for sink in &self.0 {
            match sink {
                SinkSpec::File { dir } | SinkSpec::TransactionalFile { dir } => {
                    if !dirs.insert(lexical(dir)) {
                        return Some(format!("sink: two sinks write into {}", dir.display()));
                    }
                }
                SinkSpec::Stdout => stdout += 1,
                SinkSpec::Discard => {}
            }
        }
        (stdout > 1).then(|| "sink: stdout at most once".into())
    }
}

impl Serialize for Sinks {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Sinks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        if let serde_json::Value::Array(items) = v {
            // Each item on its own, so an error names the sink it is in.
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    SinkSpec::deserialize(item)
                        .map_err(|e| D::Error::custom(format!("sink[{i}]: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Sinks)
        } else {
            SinkSpec::deserialize(v)
                .map(Sinks::from)
                .map_err(D::Error::custom)
        }
    }
}

impl SinkSpec {
    /// Its `type` in the JSON form.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkSpec::Discard => "discard",
            SinkSpec::Stdout => "stdout",
            SinkSpec::File { .. } => "file",
            SinkSpec::TransactionalFile { .. } => "transactional_file",
        }
    }
}

/// `path` made absolute (against the working directory) with `.` and `..`
/// resolved by their names, without touching the file system: two
/// spellings of one folder compare equal (symbolic links are not
/// followed).
fn lexical(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Incremental uploads only what changed; full is self-contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointType {
    #[default]
    Incremental,
    Full,
}

impl CheckpointType {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointType::Incremental => "incremental",
            CheckpointType::Full => "full",
        }
    }
}

/// Checkpointing options (Flink's `execution.checkpointing.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Periodic trigger interval; `null` disables periodic checkpoints
    /// (on-demand triggers still work).
    pub interval_ms: Option<u64>,
    /// A checkpoint not complete after this long fails and is deleted.
    pub timeout_ms: u64,
    /// Minimum time between the end of one checkpoint and the next trigger.
    pub min_pause_ms: u64,
    /// Checkpoints in flight at once.
    pub max_concurrent: u32,
    /// Consecutive failed checkpoints tolerated; one more fails the job.
    pub tolerable_failures: u32,
    /// Completed checkpoints kept; older ones are deleted when subsumed.
    pub retention: u32,
    /// Type of the periodic checkpoints.
    #[serde(rename = "type")]
    pub checkpoint_type: CheckpointType,
    /// Barrier handling: `exactly_once` (aligned), `at_least_once` (not
    /// aligned) or `unaligned` (exactly-once, barriers overtake in-flight
    /// records, which are persisted); see [`CheckpointingMode`].
    pub mode: CheckpointingMode,
    /// How often to delete what crashed writers left behind (also done at
    /// start); `null` = only at start. Objects younger than `timeout_ms`
    /// are always spared.
    pub orphan_sweep_interval_ms: Option<u64>,
    /// `exactly_once` only: an alignment that takes longer than this turns
    /// into an unaligned checkpoint (Flink's `aligned-checkpoint-timeout`);
    /// `null` = always aligned.
    pub aligned_checkpoint_timeout_ms: Option<u64>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            interval_ms: Some(1000),
            timeout_ms: 60_000,
            min_pause_ms: 0,
            max_concurrent: 1,
            tolerable_failures: 3,
            retention: 3,
            checkpoint_type: CheckpointType::Incremental,
            mode: CheckpointingMode::ExactlyOnce,
            orphan_sweep_interval_ms: Some(60_000),
            aligned_checkpoint_timeout_ms: None,
        }
    }
}

/// Keyed state options.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Memory for the in-memory state tables of all keyed subtasks together
    /// (estimated at [`StateConfig::BYTES_PER_ENTRY`] per entry, integer
    /// and typed entries alike); beyond it, clean entries are evicted and
    /// read through from RocksDB, dirty ones written behind. `null` =
    /// unbounded (all state in memory).
    pub memory_budget_mb: Option<u64>,
}

impl StateConfig {
    /// Memory per in-memory entry (table + change map, integer keys),
    /// measured at 1M keys.
    pub const BYTES_PER_ENTRY: u64 = 160;

    /// Entries one of `parallelism` keyed subtasks may keep in memory.
    pub fn budget_entries(&self, parallelism: u32) -> Option<usize> {
        self.memory_budget_mb.map(|mb| {
            let bytes = mb.saturating_mul(1024 * 1024);
            (bytes / Self::BYTES_PER_ENTRY / parallelism.max(1) as u64).max(1) as usize
        })
    }
}

/// Fixed-delay restart strategy after a task failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    pub max_attempts: u32,
    pub delay_ms: u64,
    /// When the checkpoint chosen automatically (`latest`, or the newest
    /// retained one on a restart) turns out corrupt while restoring, restore
    /// the next older intact one instead (and say so), rather than failing.
    /// A checkpoint id the user chose is never replaced.
    pub fallback_to_older_checkpoint: bool,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            delay_ms: 100,
            fallback_to_older_checkpoint: true,
        }
    }
}

/// Makes one aggregate subtask fail once (first attempt only) after it has
/// processed `after_records` records and at least one checkpoint completed,
/// so recovery always has a checkpoint to restore from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectFailure {
    /// The keyed stage that fails (default: `agg`, the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<OperatorId>,
    #[serde(default)]
    pub subtask: u32,
    pub after_records: u64,
    /// Wait for a completed checkpoint (default) or only for this task's
    /// first snapshot (then the failure can fall between a sink's
    /// pre-commit and its commit).
    #[serde(default = "yes")]
    pub after_completed_checkpoint: bool,
}

fn yes() -> bool {
    true
}

impl JobSpec {
    /// The key of every record of a job without `key_by` (a global
    /// window).
    pub const GLOBAL_KEY: crate::Key = crate::Key::Int(0);

    /// Whether records are not grouped by a field: a global window, all of
    /// them under [`JobSpec::GLOBAL_KEY`].
    pub fn is_global(&self) -> bool {
        self.key_by.is_none()
    }

    /// Upper bound of the test knob `inject_processing_delay_us` (a task
    /// sleeps this long per batch and notices a cancel only between sleeps).
    pub const MAX_PROCESSING_DELAY_US: u64 = 100_000;
    /// Upper bound of the test knob `inject_barrier_delay.delay_ms`.
    pub const MAX_BARRIER_DELAY_MS: u64 = 10_000;

    /// Parses and validates a JSON spec.
    pub fn from_json(text: &str) -> Result<Self, CoreError> {
        let spec: JobSpec =
            serde_json::from_str(text).map_err(|e| CoreError::InvalidSpec(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks ranges and field names.
    pub fn validate(&self) -> Result<(), CoreError> {
        let bad = |m: String| Err(CoreError::InvalidSpec(m));
        if self.parallelism == 0 || self.parallelism > self.max_parallelism {
            return bad(format!(
                "parallelism must be in 1..={} (max_parallelism), got {}",
                self.max_parallelism, self.parallelism
            ));
        }
        if self.max_parallelism == 0 || self.max_parallelism > 32_768 {
            return bad("max_parallelism must be in 1..=32768".into());
        }
        for source in self.sources() {
            self.validate_source(source)?;
        }
        if self.source_parallelism() > 1024 {
            return bad("the sources have more than 1024 partitions together".into());
        }
        if let AggregateSpec::Join {
            dimension_source,
            field,
            state_ttl_ms,
        } = &self.aggregate
        {
            if state_ttl_ms.is_some_and(|t| t == 0 || t > AggregateSpec::MAX_STATE_TTL_MS) {
                return bad(format!(
                    "aggregate.state_ttl_ms must be in 1..={} (a year)",
                    AggregateSpec::MAX_STATE_TTL_MS
                ));
            }
            if *dimension_source as usize >= self.sources().count() || self.union.is_empty() {
                return bad("aggregate.dimension_source must name one of two or more sources (0 = source, 1.. = union)".into());
            }
            if field.is_empty() {
                return bad("aggregate.field must name the dimension field".into());
            }
        }
        if let Some(p) = self.interval_join_problem() {
            return bad(p);
        }
        if self.aggregate.value_field() == Some("") {
            return bad("aggregate.field must name a field".into());
        }
        if self.filter.len() > 16 {
            return bad("a job has at most 16 filters".into());
        }
        if let Some(p) = self.filter.iter().find_map(|f| f.problem()) {
            return bad(p);
        }
        if let Some(p) = self.sink.problem() {
            return bad(p);
        }
        if let Some(p) = self.late_sink_problem() {
            return bad(p);
        }
        if let Some(p) = self.event_time.as_ref().and_then(|t| t.problem()) {
            return bad(p);
        }
        if let Some(p) = self.window_problem() {
            return bad(p);
        }
        if self.transforms.len() > 16 {
            return bad("a job has at most 16 transforms".into());
        }
        if !self.transforms.is_empty() && self.aggregate.is_join() {
            return bad("transforms do not run before a join yet (both inputs would take the same steps): drop `transforms` or the join".into());
        }
        self.validate_rest()
    }

    /// What is wrong with the job's interval or window join, if anything.
    fn interval_join_problem(&self) -> Option<String> {
        if let AggregateSpec::WindowJoin { right_source, .. } = self.aggregate {
            return self.window_join_problem(right_source);
        }
        let AggregateSpec::IntervalJoin {
            right_source,
            lower_ms,
            upper_ms,
            ..
        } = self.aggregate
        else {
            return None;
        };
        if right_source as usize >= self.sources().count() || self.union.is_empty() {
            return Some("aggregate.right_source must name one of two or more sources (0 = source, 1.. = union)".into());
        }
        if self.event_time.is_none() {
            return Some(
                "an interval join needs event_time (the field its bounds apply to)".into(),
            );
        }
        if self.window.is_some() {
            return Some(
                "an interval join is not windowed: drop `window` (lower_ms and upper_ms bound it)"
                    .into(),
            );
        }
        let max = AggregateSpec::MAX_JOIN_BOUND_MS;
        if lower_ms > upper_ms || lower_ms < -max || upper_ms > max {
            return Some(format!(
                "aggregate: lower_ms must be at most upper_ms, both within ±{max} ms (a week)"
            ));
        }
        None
    }

    /// What the late sink's transactions record as their sink
    /// ([`crate::metadata::PendingTransaction::sink`]): past every index
    /// `sink` can have, so it stays the same when the sink list changes
    /// between a checkpoint and a restore.
    pub fn late_sink_index(&self) -> u32 {
        Sinks::MAX as u32
    }

    /// Whether any sink, the late one too, takes part in two-phase commit.
    pub fn any_transactional_sink(&self) -> bool {
        let late = matches!(self.late_sink, Some(SinkSpec::TransactionalFile { .. }));
        late || self.sink.any_transactional()
    }

    fn late_sink_problem(&self) -> Option<String> {
        let late = self.late_sink.as_ref()?;
        let event_window = self.window.is_some_and(|w| w.time().is_event());
        let interval = matches!(self.aggregate, AggregateSpec::IntervalJoin { .. });
        if self.event_time.is_none() || !(event_window || interval) {
            return Some("late_sink: nothing of this job is ever late (only an event-time window or an interval join drops late records)".into());
        }
        let clash = self.sink.iter().find(|s| match (s, late) {
            (SinkSpec::Stdout, SinkSpec::Stdout) => true,
            (
                SinkSpec::File { dir } | SinkSpec::TransactionalFile { dir },
                SinkSpec::File { dir: d } | SinkSpec::TransactionalFile { dir: d },
            ) => lexical(dir) == lexical(d),
            _ => false,
        });
        clash.map(|s| {
            format!(
                "late_sink: it and sink {} write to the same place",
                s.kind()
            )
        })
    }

    fn window_join_problem(&self, right_source: u32) -> Option<String> {
        if right_source as usize >= self.sources().count() || self.union.is_empty() {
            return Some("aggregate.right_source must name one of two or more sources (0 = source, 1.. = union)".into());
        }
        match &self.window {
            None => Some("aggregate: a window_join needs a window (it joins the records of each key and window)".into()),
            Some(w) if w.allowed_lateness() != 0 => Some(
                "window: a window_join takes no allowed_lateness (a late record would fire the window's pairs again)".into(),
            ),
            Some(_) => None,
        }
    }

    /// What is wrong with the job's window, if anything.
    fn window_problem(&self) -> Option<String> {
        if matches!(self.aggregate, AggregateSpec::ProcessWindow { .. }) && self.window.is_none() {
            return Some("aggregate: process_window needs a window (its function runs over each window's values)".into());
        }
        if let AggregateSpec::TopN { n, .. } = self.aggregate {
            if self.window.is_none() {
                return Some("aggregate: top_n needs a window (it keeps the n largest values per key and window)".into());
            }
            if !(1..=AggregateSpec::MAX_TOP_N).contains(&n) {
                return Some(format!(
                    "aggregate.n must be in 1..={}",
                    AggregateSpec::MAX_TOP_N
                ));
            }
        }
        let window = self.window.as_ref()?;
        let event_time = window.time() == crate::window::WindowTime::Event;
        if event_time && self.event_time.is_none() {
            return Some("window needs event_time (the field records are windowed by), or \"time\":\"processing\"".into());
        }
        if !matches!(
            self.aggregate,
            AggregateSpec::Count
                | AggregateSpec::Sum { .. }
                | AggregateSpec::Min { .. }
                | AggregateSpec::Max { .. }
                | AggregateSpec::Avg { .. }
                | AggregateSpec::CountDistinct { .. }
                | AggregateSpec::TopN { .. }
                | AggregateSpec::WindowJoin { .. }
                | AggregateSpec::ProcessWindow { .. }
        ) {
            return Some(format!(
                "window: a {} is not windowed yet (count, sum, min, max, avg, count_distinct, top_n, window_join or process_window are)",
                self.aggregate.name()
            ));
        }
        window.problem()
    }

    fn validate_source(&self, source: &SourceSpec) -> Result<(), CoreError> {
        let bad = |m: String| Err(CoreError::InvalidSpec(m));
        match source {
            SourceSpec::Generator {
                partitions,
                keys,
                users,
                disorder_ms,
                ..
            } => {
                if *partitions == 0 || *partitions > 1024 {
                    return bad("source.partitions must be in 1..=1024".into());
                }
                if *keys == 0 {
                    return bad("source.keys must be at least 1".into());
                }
                if let Some(k) = self.key_by.as_ref().filter(|k| *k != "app_id") {
                    return bad(format!(
                        "key_by: the generator produces the fields app_id and value, not {k:?}"
                    ));
                }
                if *users == 0 {
                    return bad("source.users must be at least 1".into());
                }
                if *disorder_ms > crate::time::EventTimeSpec::MAX_OUT_OF_ORDERNESS_MS {
                    return bad(format!(
                        "source.disorder_ms must be at most {} (a week)",
                        crate::time::EventTimeSpec::MAX_OUT_OF_ORDERNESS_MS
                    ));
                }
                if *disorder_ms > 0 && self.event_time.is_none() {
                    return bad("source.disorder_ms needs event_time (without it records have no event time)".into());
                }
                if let Some(t) = self.event_time.as_ref().filter(|t| t.field != "ts") {
                    return bad(format!(
                        "event_time.field: the generator's event time is ts, not {:?}",
                        t.field
                    ));
                }
                // (A join's field belongs to its dimension source only.)
                let field = match &self.aggregate {
                    AggregateSpec::Join { .. } => None,
                    a => a.value_field(),
                };
                let generated = ["app_id", "value", "user_id", "amount"];
                if let Some(f) = self
                    .filter
                    .iter()
                    .find(|f| matches!(f.value, crate::filter::FilterValue::Str(_)))
                {
                    return bad(format!(
                        "filter on {:?}: the generator's fields are integers, not strings",
                        f.field
                    ));
                }
                if let Some(f) = self
                    .filter
                    .iter()
                    .find(|f| !generated.contains(&f.field.as_str()))
                {
                    return bad(format!(
                        "filter: the generator produces app_id, value, user_id and amount, not {:?}",
                        f.field
                    ));
                }
                if field.is_some_and(|f| !generated.contains(&f)) {
                    return bad(format!(
                        "aggregate.field: the generator produces app_id, value, user_id and amount, not {:?}",
                        field.unwrap_or_default()
                    ));
                }
            }
            SourceSpec::Files { paths, .. } => {
                if paths.is_empty() || paths.len() > 1024 {
                    return bad("source.paths must name 1..=1024 files".into());
                }
            }
        }
        Ok(())
    }

    fn validate_rest(&self) -> Result<(), CoreError> {
        let bad = |m: String| Err(CoreError::InvalidSpec(m));
        match &self.key_by {
            Some(k) if k.is_empty() => return bad("key_by must name a field".into()),
            None if self.window.is_none() => {
                return bad("key_by must name a field (only a windowed job may leave it out: one global window over all records)".into());
            }
            _ => {}
        }
        let c = &self.checkpoint;
        if c.interval_ms == Some(0) {
            return bad("checkpoint.interval_ms must be positive (or null)".into());
        }
        if c.timeout_ms == 0 {
            return bad("checkpoint.timeout_ms must be positive".into());
        }
        if c.max_concurrent == 0 {
            return bad("checkpoint.max_concurrent must be at least 1".into());
        }
        if c.orphan_sweep_interval_ms == Some(0) {
            return bad("checkpoint.orphan_sweep_interval_ms must be positive (or null)".into());
        }
        if c.retention == 0 {
            return bad("checkpoint.retention must be at least 1".into());
        }
        if self.state.memory_budget_mb == Some(0) {
            return bad("state.memory_budget_mb must be positive (or null)".into());
        }
        if let Some(t) = c.aligned_checkpoint_timeout_ms {
            if c.mode != CheckpointingMode::ExactlyOnce || t == 0 {
                return bad("checkpoint.aligned_checkpoint_timeout_ms must be positive and needs mode exactly_once (unaligned never aligns, at_least_once never blocks)".into());
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.external_tasks {
            if t.as_str() == "source" || t.as_str() == "agg" || !seen.insert(t) {
                return bad(format!(
                    "external_tasks: {t:?} is taken (names must be unique and not source or agg)"
                ));
            }
        }
        if let Some(d) = &self.inject_barrier_delay {
            if d.partition >= self.source_parallelism() {
                return bad("inject_barrier_delay.partition must be a source partition".into());
            }
            if d.delay_ms > Self::MAX_BARRIER_DELAY_MS {
                return bad(format!(
                    "inject_barrier_delay.delay_ms must be at most {}",
                    Self::MAX_BARRIER_DELAY_MS
                ));
            }
        }
        if self
            .inject_processing_delay_us
            .is_some_and(|d| d > Self::MAX_PROCESSING_DELAY_US)
        {
            return bad(format!(
                "inject_processing_delay_us must be at most {} (a task sleeping longer cannot be cancelled in time)",
                Self::MAX_PROCESSING_DELAY_US
            ));
        }
        if let Some(f) = &self.inject_failure {
            let stage = match &f.operator {
                None => Some(self.keyed_stages().swap_remove(0)),
                Some(op) => self.keyed_stages().into_iter().find(|s| &s.id == op),
            };
            match stage {
                None => return bad("inject_failure.operator must name a keyed stage".into()),
                Some(s) if f.subtask >= s.parallelism => {
                    return bad(
                        "inject_failure.subtask must be below the stage's parallelism".into(),
                    )
                }
                Some(_) => {}
            }
        }
        self.validate_stages()
    }

    /// Whether the job ends with a final checkpoint: sources that read all
    /// their input wait until a checkpoint taken after that completed, and
    /// only then end their streams. Taken when a sink (the late sink too)
    /// is two-phase-commit
    /// and checkpoints are periodic, so a sink never commits output that a
    /// restore after a late failure would replay (Flink's checkpoints after
    /// tasks finish). Jobs with external tasks end without one.
    pub fn takes_final_checkpoint(&self) -> bool {
        self.any_transactional_sink()
            && self.checkpoint.interval_ms.is_some()
            && self.external_tasks.is_empty()
    }

    /// Every source: `source`, then `union`'s.
    pub fn sources(&self) -> impl Iterator<Item = &SourceSpec> {
        std::iter::once(&self.source).chain(&self.union)
    }

    /// The job as a [`JobGraph`]: every source partition a subtask of the
    /// `source` operator, hash-partitioned by key into the keyed `agg`
    /// operator, each further stage hash-partitioned from the one before,
    /// the sink chained to the last (forward, same parallelism).
    pub fn graph(&self) -> Result<JobGraph, CoreError> {
        use crate::graph::{Edge, Operator, Partitioning, Role};
        let source = OperatorId::new("source").expect("static operator id");
        let sink = OperatorId::new("sink").expect("static operator id");
        let stages = self.keyed_stages();
        let mut operators = vec![Operator {
            id: source.clone(),
            role: Role::Source,
            parallelism: self.source_parallelism(),
        }];
        let mut edges = Vec::new();
        let mut prev = source;
        for s in &stages {
            operators.push(Operator {
                id: s.id.clone(),
                role: Role::Keyed,
                parallelism: s.parallelism,
            });
            edges.push(Edge {
                from: std::mem::replace(&mut prev, s.id.clone()),
                to: s.id.clone(),
                partitioning: Partitioning::Hash,
            });
        }
        operators.push(Operator {
            id: sink.clone(),
            role: Role::Sink,
            parallelism: self.result_stage().parallelism,
        });
        edges.push(Edge {
            from: prev,
            to: sink,
            partitioning: Partitioning::Forward,
        });
        JobGraph::new(operators, edges, self.max_parallelism)
    }

    /// Number of source subtasks (one per partition of every source).
    pub fn source_parallelism(&self) -> u32 {
        self.sources().map(SourceSpec::partitions).sum()
    }

    /// The source a job-wide partition number belongs to: its index (0 =
    /// `source`), its spec and the partition within it.
    pub fn source_of(&self, partition: u32) -> Option<(u32, &SourceSpec, u32)> {
        let mut first = 0;
        for (i, s) in self.sources().enumerate() {
            let n = s.partitions();
            if partition < first + n {
                return Some((i as u32, s, partition - first));
            }
            first += n;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PV: &str = r#"{"job_id":"pv","source":{"type":"generator","events":10,"keys":3},
        "key_by":"app_id","aggregate":{"type":"count"}}"#;

    #[test]
    fn event_time_names_a_field_the_source_has_with_sane_bounds() {
        let spec = |source: &str, time: &str| {
            JobSpec::from_json(&format!(
                r#"{{"job_id":"t","source":{source},"key_by":"app_id",
                    "aggregate":{{"type":"count"}},"event_time":{time}}}"#
            ))
            .map_err(|e| e.to_string())
        };
        let generator = r#"{"type":"generator","events":10,"keys":3,"disorder_ms":50}"#;
        let s = spec(generator, r#"{"field":"ts","max_out_of_orderness_ms":50}"#).unwrap();
        let t = s.event_time.unwrap();
        assert_eq!((t.watermark_interval_ms, t.idle_timeout_ms), (200, None));
        let e = spec(generator, r#"{"field":"time"}"#).unwrap_err();
        assert!(e.contains("the generator's event time is ts"), "{e}");
        let files = r#"{"type":"files","paths":["a.jsonl"]}"#;
        assert!(spec(files, r#"{"field":"time","idle_timeout_ms":500}"#).is_ok());
        for (bad, why) in [
            (r#"{"field":""}"#, "event_time.field"),
            (r#"{"field":"t","idle_timeout_ms":0}"#, "idle_timeout_ms"),
            (
                r#"{"field":"t","watermark_interval_ms":0}"#,
                "watermark_interval_ms",
            ),
            (
                r#"{"field":"t","max_out_of_orderness_ms":604800001}"#,
                "a week",
            ),
            (r#"{"field":"t","lateness":1}"#, "unknown field"),
        ] {
            let e = spec(files, bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let wild =
            r#"{"type":"generator","events":10,"keys":3,"disorder_ms":18446744073709551615}"#;
        assert!(spec(wild, r#"{"field":"ts"}"#)
            .unwrap_err()
            .contains("disorder_ms"));
    }

    #[test]
    fn typed_aggregates_name_a_generated_field_and_take_a_budget() {
        let spec = |agg: &str, extra: &str| {
            JobSpec::from_json(&format!(
                r#"{{"job_id":"uv","source":{{"type":"generator","events":10,"keys":3,"users":5}},
                    "key_by":"app_id","aggregate":{agg}{extra}}}"#
            ))
        };
        let distinct = r#"{"type":"count_distinct","field":"user_id"}"#;
        let s = spec(distinct, "").unwrap();
        assert!(s.aggregate.is_typed());
        assert_eq!(s.aggregate.value_field(), Some("user_id"));
        let dedup = r#"{"type":"dedup","field":"user_id"}"#;
        assert_eq!(
            spec(dedup, "").unwrap().aggregate,
            AggregateSpec::Dedup {
                field: "user_id".into(),
                keep: Keep::First
            }
        );
        let budget = r#","state":{"memory_budget_mb":64}"#;
        assert!(spec(distinct, budget).is_ok(), "typed state evicts too");
        let err = spec(r#"{"type":"count_distinct","field":"nope"}"#, "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("user_id"), "{err}");
        assert!(spec(r#"{"type":"dedup","field":"user_id","keep":"middle"}"#, "").is_err());
    }

    #[test]
    fn filters_name_fields_a_source_has_with_values_it_can_match() {
        let spec = |source: &str, filter: &str| {
            JobSpec::from_json(&format!(
                r#"{{"job_id":"f","source":{source},"key_by":"app_id",
                    "aggregate":{{"type":"count"}},"filter":{filter}}}"#
            ))
            .map_err(|e| e.to_string())
        };
        let generator = r#"{"type":"generator","events":10,"keys":3}"#;
        let files = r#"{"type":"files","paths":["in.jsonl"]}"#;
        let ok = r#"[{"field":"amount","op":"ge","value":500}]"#;
        assert!(spec(generator, ok).is_ok());
        let unknown = r#"[{"field":"country","op":"eq","value":1}]"#;
        assert!(spec(generator, unknown)
            .unwrap_err()
            .contains("generator produces"));
        let string = r#"[{"field":"amount","op":"eq","value":"5"}]"#;
        assert!(spec(generator, string).unwrap_err().contains("integers"));
        assert!(spec(files, r#"[{"field":"country","op":"eq","value":"de"}]"#).is_ok());
        let lt = r#"[{"field":"country","op":"lt","value":"de"}]"#;
        assert!(spec(files, lt).unwrap_err().contains("eq or ne"));
        let many = format!("[{}]", vec![ok.trim_matches(['[', ']']); 17].join(","));
        assert!(spec(generator, &many).unwrap_err().contains("at most 16"));
    }

    #[test]
    fn the_example_specs_are_valid() {
        let names = [
            "pv",
            "uv",
            "histogram",
            "tumbling",
            "sliding",
            "sessions",
            "top_n",
            "interval_join",
            "global_window",
            "window_join",
            "processing_time",
        ];
        for name in names {
            let path = format!("{}/../../examples/{name}.json", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            JobSpec::from_json(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }

    /// The late side output needs something that can be late and a place
    /// of its own.
    #[test]
    fn a_late_sink_needs_late_records_and_its_own_folder() {
        let spec = |extra: &str| {
            let sinks = r#""sink":{"type":"transactional_file","dir":"out"},"#;
            JobSpec::from_json(&PV.replace(r#""key_by""#, &format!(r#"{sinks}{extra}"key_by""#)))
                .map_err(|e| e.to_string())
        };
        let time = r#""event_time":{"field":"ts"},"window":{"type":"tumbling","size_ms":100},"#;
        let late = |dir: &str| format!(r#""late_sink":{{"type":"file","dir":"{dir}"}},"#);
        let s = spec(&format!("{time}{}", late("late"))).unwrap();
        assert_eq!(s.late_sink_index(), Sinks::MAX as u32);
        assert!(s.any_transactional_sink());
        for never_late in ["", r#""event_time":{"field":"ts"},"#] {
            let e = spec(&format!("{never_late}{}", late("late"))).unwrap_err();
            assert!(e.contains("nothing of this job is ever late"), "{e}");
        }
        let e = spec(&format!("{time}{}", late("./out"))).unwrap_err();
        assert!(e.contains("same place"), "{e}");
    }

    /// A window join needs two sources and a window without lateness.
    #[test]
    fn a_window_join_needs_two_sources_and_a_window_without_lateness() {
        let spec = |union: &str, window: &str| {
            let join = r#"{"type":"window_join","right_source":1,"field":"amount"}"#;
            JobSpec::from_json(&PV.replace(
                r#""aggregate":{"type":"count"}"#,
                &format!(r#"{union}"event_time":{{"field":"ts"}},"aggregate":{join}{window}"#),
            ))
            .map_err(|e| e.to_string())
        };
        let union = r#""union":[{"type":"generator","events":5,"keys":2}],"#;
        let tumbling = r#","window":{"type":"tumbling","size_ms":100}"#;
        let s = spec(union, tumbling).unwrap();
        assert!(s.aggregate.is_join());
        assert_eq!(s.aggregate.second_input(), Some(1));
        let e = spec("", tumbling).unwrap_err();
        assert!(e.contains("right_source"), "{e}");
        let e = spec(union, "").unwrap_err();
        assert!(e.contains("window_join needs a window"), "{e}");
        let late = r#","window":{"type":"tumbling","size_ms":100,"allowed_lateness_ms":5}"#;
        let e = spec(union, late).unwrap_err();
        assert!(e.contains("allowed_lateness"), "{e}");
    }

    /// A global window: no `key_by`, every record under one key; a job
    /// without a window must group by a field.
    #[test]
    fn only_a_windowed_job_may_leave_key_by_out() {
        let unkeyed = PV.replace(r#""key_by":"app_id","#, "");
        let e = JobSpec::from_json(&unkeyed).unwrap_err().to_string();
        assert!(e.contains("key_by must name a field"), "{e}");
        let window = r#""event_time":{"field":"ts"},"window":{"type":"tumbling","size_ms":1000},"aggregate""#;
        let global = JobSpec::from_json(&unkeyed.replace(r#""aggregate""#, window)).unwrap();
        assert!(global.is_global());
        // It stays without key_by when stored.
        let stored = serde_json::to_string(&global).unwrap();
        assert!(!stored.contains("key_by"), "{stored}");
        assert!(!JobSpec::from_json(PV).unwrap().is_global());
        let empty = PV.replace(r#""key_by":"app_id""#, r#""key_by":"""#);
        let e = JobSpec::from_json(&empty.replace(r#""aggregate""#, window)).unwrap_err();
        assert!(e.to_string().contains("key_by"), "{e}");
    }

    #[test]
    fn windows_take_their_aggregates_and_top_n_needs_a_window() {
        let spec = |agg: &str, window: &str| {
            let time = r#""event_time":{"field":"ts"},"#;
            JobSpec::from_json(&PV.replace(
                r#""aggregate":{"type":"count"}"#,
                &format!(r#"{time}"aggregate":{agg}{window}"#),
            ))
            .map_err(|e| e.to_string())
        };
        let session = r#","window":{"type":"session","gap_ms":500}"#;
        let top = r#"{"type":"top_n","field":"amount","n":3}"#;
        assert!(spec(top, session).is_ok());
        let distinct = r#"{"type":"count_distinct","field":"user_id"}"#;
        assert!(spec(distinct, session).is_ok());
        let e = spec(top, "").unwrap_err();
        assert!(e.contains("top_n needs a window"), "{e}");
        let e = spec(&top.replace(":3", ":101"), session).unwrap_err();
        assert!(e.contains("aggregate.n"), "{e}");
        let e = spec(r#"{"type":"dedup","field":"user_id"}"#, session).unwrap_err();
        assert!(e.contains("dedup is not windowed"), "{e}");
        let process = r#"{"type":"process_window","function":"median","field":"amount"}"#;
        assert!(spec(process, session).is_ok());
        let e = spec(process, "").unwrap_err();
        assert!(e.contains("process_window needs a window"), "{e}");
        // Processing time needs no event time, and has no lateness.
        let processing = r#","window":{"type":"tumbling","size_ms":500,"time":"processing"}"#;
        let plain = |agg: &str, window: &str| {
            JobSpec::from_json(&PV.replace(
                r#""aggregate":{"type":"count"}"#,
                &format!(r#""aggregate":{agg}{window}"#),
            ))
            .map_err(|e| e.to_string())
        };
        let s = plain(r#"{"type":"count"}"#, processing).unwrap();
        assert_eq!(
            s.window.unwrap().time(),
            crate::window::WindowTime::Processing
        );
        let e = plain(r#"{"type":"count"}"#, session).unwrap_err();
        assert!(e.contains("needs event_time"), "{e}");
        let late = processing.replace("}", r#","allowed_lateness_ms":5}"#);
        let e = plain(r#"{"type":"count"}"#, &late).unwrap_err();
        assert!(e.contains("event time only"), "{e}");
    }

    #[test]
    fn an_interval_join_names_its_right_source_and_needs_event_time_and_ordered_bounds() {
        let spec = |union: &str, agg: &str, time: &str| {
            JobSpec::from_json(&PV.replace(
                r#""aggregate":{"type":"count"}"#,
                &format!(r#"{union}{time}"aggregate":{agg}"#),
            ))
            .map_err(|e| e.to_string())
        };
        let union = r#""union":[{"type":"generator","events":10,"keys":3}],"#;
        let time = r#""event_time":{"field":"ts"},"#;
        let join = r#"{"type":"interval_join","right_source":1,"field":"amount","lower_ms":-5,"upper_ms":5}"#;
        let s = spec(union, join, time).unwrap();
        assert_eq!(s.aggregate.second_input(), Some(1));
        assert!(s.aggregate.is_join());
        let e = spec("", join, time).unwrap_err();
        assert!(e.contains("right_source"), "{e}");
        let e = spec(union, join, "").unwrap_err();
        assert!(e.contains("needs event_time"), "{e}");
        let e = spec(union, &join.replace("-5", "6"), time).unwrap_err();
        assert!(e.contains("lower_ms must be at most upper_ms"), "{e}");
        let windowed = format!(r#"{time}"window":{{"type":"tumbling","size_ms":5}},"#);
        let e = spec(union, join, &windowed).unwrap_err();
        assert!(e.contains("not windowed"), "{e}");
        let with_steps = spec(
            &format!(r#"{union}"transforms":[{{"map":"m"}}],"#),
            join,
            time,
        );
        assert!(with_steps.unwrap_err().contains("before a join"));
    }

    #[test]
    fn defaults_apply() {
        let s = JobSpec::from_json(PV).unwrap();
        assert_eq!(s.parallelism, 2);
        assert_eq!(s.checkpoint.retention, 3);
        assert_eq!(s.source_parallelism(), 2);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        let typo = PV.replace("\"key_by\"", "\"keyby\"");
        assert!(JobSpec::from_json(&typo).is_err());
        let bad_field = PV.replace("app_id", "user");
        let e = JobSpec::from_json(&bad_field).unwrap_err().to_string();
        assert!(e.contains("key_by"), "{e}");
        let zero = PV.replace("\"keys\":3", "\"keys\":0");
        assert!(JobSpec::from_json(&zero).is_err());
    }

    #[test]
    fn test_knobs_are_bounded() {
        let with = |extra: &str| JobSpec::from_json(&PV.replace("}}", &format!("}},{extra}}}")));
        with(r#""inject_processing_delay_us":100000"#).unwrap();
        let e = with(r#""inject_processing_delay_us":10000000000000000000"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inject_processing_delay_us"), "{e}");
        with(r#""inject_barrier_delay":{"partition":1,"delay_ms":10000}"#).unwrap();
        let e = with(r#""inject_barrier_delay":{"partition":1,"delay_ms":10001}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("delay_ms"), "{e}");
    }

    #[test]
    fn unions_number_partitions_across_sources_and_joins_need_two_sources() {
        let union = PV.replace(
            r#""key_by""#,
            r#""union":[{"type":"generator","partitions":3,"events":5,"keys":2}],"key_by""#,
        );
        let s = JobSpec::from_json(&union).unwrap();
        assert_eq!(s.source_parallelism(), 5);
        assert_eq!(s.source_of(1).map(|(i, _, p)| (i, p)), Some((0, 1)));
        assert_eq!(s.source_of(4).map(|(i, _, p)| (i, p)), Some((1, 2)));
        assert!(s.source_of(5).is_none());
        let join = r#"{"type":"join","dimension_source":1,"field":"app_id"}"#;
        let joined = union.replace(r#"{"type":"count"}"#, join);
        assert!(JobSpec::from_json(&joined).is_ok());
        let alone = PV.replace(r#"{"type":"count"}"#, join);
        let e = JobSpec::from_json(&alone).unwrap_err().to_string();
        assert!(e.contains("dimension_source"), "{e}");
        let out_of_range = joined.replace(r#""dimension_source":1"#, r#""dimension_source":2"#);
        assert!(JobSpec::from_json(&out_of_range).is_err());
        let ttl = |t: &str| {
            joined.replace(
                r#""field":"app_id""#,
                &format!(r#""field":"app_id","state_ttl_ms":{t}"#),
            )
        };
        assert!(JobSpec::from_json(&ttl("60000")).is_ok());
        for wrong in ["0", "31536000001"] {
            let e = JobSpec::from_json(&ttl(wrong)).unwrap_err().to_string();
            assert!(e.contains("state_ttl_ms"), "{e}");
        }
    }

    #[test]
    fn a_job_has_one_sink_or_a_list_of_them() {
        let with = |sink: &str| PV.replace(r#""key_by""#, &format!(r#""sink":{sink},"key_by""#));
        let one = JobSpec::from_json(&with(r#"{"type":"stdout"}"#)).unwrap();
        assert_eq!(one.sink, Sinks::from(SinkSpec::Stdout));
        // One sink stays an object in the stored spec.
        assert!(serde_json::to_string(&one)
            .unwrap()
            .contains(r#""sink":{"type":"stdout"}"#));
        let two = with(r#"[{"type":"stdout"},{"type":"transactional_file","dir":"/o"}]"#);
        let two = JobSpec::from_json(&two).unwrap();
        assert_eq!(two.sink.len(), 2);
        assert!(two.sink.any_transactional());
        let back = JobSpec::from_json(&serde_json::to_string(&two).unwrap()).unwrap();
        assert_eq!(back, two);
        assert_eq!(JobSpec::from_json(PV).unwrap().sink, Sinks::default());
        for (bad, why) in [
            ("[]", "1 to 8"),
            (
                r#"[{"type":"stdout"},{"type":"stdout"}]"#,
                "stdout at most once",
            ),
            (
                r#"[{"type":"file","dir":"/o"},{"type":"transactional_file","dir":"/o"}]"#,
                "two sinks write into /o",
            ),
            (
                r#"[{"type":"file","dir":"/o/p/.."},{"type":"file","dir":"/o/./"}]"#,
                "two sinks write into /o",
            ),
            (r#"[{"type":"kafka"}]"#, "kafka"),
            (r#"[{"type":"stdout"},{"type":"file"}]"#, "sink[1]"),
            (r#"{"type":"file"}"#, "dir"),
        ] {
            let e = JobSpec::from_json(&with(bad)).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let nine = format!("[{}]", [r#"{"type":"discard"}"#; 9].join(","));
        assert!(JobSpec::from_json(&with(&nine)).is_err());
    }

    #[test]
    fn transforms_name_a_kind_and_a_function_and_do_not_precede_a_join() {
        let steps =
            r#""transforms":[{"flat_map":"words"},{"filter":"long"},{"map":"lower"}],"key_by""#;
        let s = JobSpec::from_json(&PV.replace(r#""key_by""#, steps)).unwrap();
        let kinds: Vec<_> = s
            .transforms
            .iter()
            .map(|t| (t.kind(), t.function().as_str()))
            .collect();
        assert_eq!(
            kinds,
            [("flat_map", "words"), ("filter", "long"), ("map", "lower")]
        );
        let back = JobSpec::from_json(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        for bad in [
            r#""transforms":[{"reduce":"x"}],"key_by""#,
            r#""transforms":[{"map":"x","filter":"y"}],"key_by""#,
            r#""transforms":[{"map":"not a name"}],"key_by""#,
        ] {
            assert!(
                JobSpec::from_json(&PV.replace(r#""key_by""#, bad)).is_err(),
                "{bad}"
            );
        }
        let join = PV
            .replace(
                r#""key_by""#,
                r#""union":[{"type":"generator","events":5,"keys":2}],"transforms":[{"map":"m"}],"key_by""#,
            )
            .replace(
                r#"{"type":"count"}"#,
                r#"{"type":"join","dimension_source":1,"field":"app_id"}"#,
            );
        let e = JobSpec::from_json(&join).unwrap_err().to_string();
        assert!(e.contains("transforms") && e.contains("join"), "{e}");
    }
}
