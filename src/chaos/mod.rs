//! `cutpoint chaos`: the seeded chaos harness (docs/reliability.md).
//!
//! Each cycle runs a small job as a child process of this binary — PV, a
//! two-stage chain, count-distinct, dedup, a Rust function registered by
//! name with list, map and value state ([`function`]), the keyed
//! two-input join of clicks with a dimension source (its final dimension
//! per key checked too; its updates' counts like the others'), or an
//! event-time window count (tumbling or session windows) of out-of-order
//! events whose windows are then counted per key (each window fired
//! exactly once), or an event-time interval join of two sources whose
//! pairs are counted per key (each pair emitted exactly once) — injects
//! one fault at a random point — SIGKILL, a task panic, a fail point (error,
//! panic, crash or delay; see `cutpoint_core::failpoint`), a store fault
//! (`CUTPOINT_FAULTS`), or an operator's mistake: the newest `_metadata`
//! rewritten by a newer release (unreadable), the killed run's work dir
//! reused, a transient GET failure on `_metadata` while restoring, a second
//! writer started on the running job, a failing channel-state upload —
//! recovers the way an operator would (re-run with `--restore-from latest`,
//! or from scratch when nothing was checkpointed), and then checks the end
//! result against the failure-free truth:
//!
//! * exactly-once jobs: every key's final count equals the generator's,
//!   computed independently; at-least-once jobs: no count too low;
//! * the transactional sink's committed output holds every update of every
//!   key exactly once, and no staging file is left; the plain file sink's
//!   output (at-least-once) is whole records only — every line parses — and
//!   ends with every key's exact count;
//! * storage holds exactly `job.json`, the writer leases and, for every
//!   checkpoint it still has, its `_metadata` and the files that names —
//!   nothing leaked, nothing missing (after an unreadable `_metadata`: every
//!   file it names is still there, since no shared file may be deleted
//!   while it exists).
//!
//! A cycle is fully determined by `(seed, cycle)`: its plan comes from a
//! ChaCha stream of its own, so any failing cycle replays alone with
//! `--seed S --first-cycle C --cycles 1`. Fault kinds and fail points are
//! scheduled round-robin (randomised within), so a run of 2 × (number of
//! fail points) cycles covers every one of them.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cutpoint_core::{failpoint, JobId, Key, Value};
use cutpoint_storage::{CheckpointStorage, StorageLocation};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

pub mod function;

/// The job: small enough for many cycles, long enough (≈1 s, paced) for
/// several checkpoints, aborts and subsumptions per run.
const EVENTS: u64 = 400_000;
const KEYS: u64 = 2_000;
/// Keys of the cycles that run under a 1 MB keyed-state memory budget
/// (~3,300 entries per subtask of ~10,000: most state evicted and read
/// through from RocksDB).
const BUDGET_KEYS: u64 = 20_000;
const RATE: u64 = 400_000;
/// `user_id`s of the generator (the count-distinct form).
const USERS: u64 = 500;
/// Bucket width of the two-stage form's second stage.
const HIST_WIDTH: i64 = 16;
const SEED: u64 = 42;
/// A run that takes longer than this hangs: the cycle fails.
const RUN_LIMIT: Duration = Duration::from_secs(90);
/// Recovery runs after the faulty one before the cycle counts as failed.
const MAX_RECOVERIES: u32 = 3;

/// What a cycle's job computes (its checked result per key of the last
/// stage; every form's sink updates of a key are 1, 2, …, result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Shape {
    /// Count per app (PV).
    Pv,
    /// Count per app, then count the updates per bucket of the count.
    TwoStage,
    /// Distinct users per app (typed map + value state).
    Distinct,
    /// The first user per app (typed value state), then count the
    /// emissions per app: exactly 1 each.
    DedupOnce,
    /// Distinct users per app through a Rust function registered by name
    /// (list, map and value state; [`function::FirstSeen`]).
    FirstSeen,
    /// Clicks per app joined with a second source that sets each app's
    /// dimension (its latest `user_id`): the keyed two-input join, typed
    /// state `(count, dimension)`; updates are `[count, dimension]`.
    Join,
    /// Out-of-order events (within the watermark's bound, so none is
    /// late) counted per app and tumbling event-time window (state and
    /// timers), then the windows counted per app: each window fired
    /// exactly once gives the number of windows the app had events in.
    Windows,
    /// The same events counted per app and session window (merging
    /// windows: state and timers that change as sessions merge), then the
    /// sessions counted per app: each session fired exactly once gives
    /// the number of sessions of the app's sorted event times.
    Sessions,
    /// The same events interval-joined per app with a second source of
    /// its own (`l.ts - 100 <= r.ts <= l.ts + 100`; buffers in map state
    /// expired by timers), then the pairs counted per app.
    IntervalJoin,
    /// The same two sources window-joined per app and tumbling window
    /// (both inputs' values in each window's state, every pair emitted
    /// when it fires), then the pairs counted per app.
    WindowJoin,
}

/// The window shape: the generator's disorder (also the watermark's
/// bound) and the window size.
const WINDOW_DISORDER: u64 = 200;
const WINDOW_MS: i64 = 500;
/// The session shape's gap (an app has an event every 1 s on average
/// without a memory budget, every 10 s with one).
const SESSION_GAP_MS: i64 = 2_000;
/// The interval join shape's right source: one partition, as many events
/// per second of event time as the left source (which has two), its own
/// seed; the bounds either way.
const RIGHT_EVENTS: u64 = EVENTS / 2;
const RIGHT_SEED: u64 = 11;
const JOIN_BOUND_MS: i64 = 100;

/// The join shape's dimension source: one partition (its order per key is
/// fixed, so the latest dimension is too), a seed of its own.
const DIM_EVENTS: u64 = 20_000;
const DIM_SEED: u64 = 7;
const DIM_RATE: u64 = 20_000;

impl Shape {
    fn as_str(self) -> &'static str {
        match self {
            Shape::Pv => "pv",
            Shape::TwoStage => "two_stage",
            Shape::Distinct => "count_distinct",
            Shape::DedupOnce => "dedup",
            Shape::FirstSeen => "process",
            Shape::Join => "join",
            Shape::Windows => "windows",
            Shape::Sessions => "sessions",
            Shape::IntervalJoin => "interval_join",
            Shape::WindowJoin => "window_join",
        }
    }

    #[cfg(test)]
    fn typed(self) -> bool {
        matches!(
            self,
            Shape::Distinct
                | Shape::DedupOnce
                | Shape::FirstSeen
                | Shape::Join
                | Shape::Windows
                | Shape::Sessions
                | Shape::IntervalJoin
                | Shape::WindowJoin
        )
    }

    /// The join's dimension per key, computed plainly: the `user_id` of
    /// the dimension source's last event of that key (`None`: no event).
    fn dimensions(keys: u64) -> Vec<Option<i64>> {
        use cutpoint_runtime::source::{generator_app_id, generator_user_id};
        let mut dims = vec![None; keys as usize];
        for i in 0..DIM_EVENTS {
            let app = generator_app_id(DIM_SEED, keys, i) as usize;
            dims[app] = Some(generator_user_id(DIM_SEED, USERS, i) as i64);
        }
        dims
    }

    /// The aggregate and the later stages of the spec.
    fn spec(self) -> (serde_json::Value, serde_json::Value) {
        let count = json!({"type": "count"});
        match self {
            Shape::Pv => (count, json!([])),
            Shape::TwoStage => (
                count.clone(),
                json!([{"id": "hist", "key_by": {"type": "value_bucket", "width": HIST_WIDTH}, "aggregate": count}]),
            ),
            Shape::Distinct => (
                json!({"type": "count_distinct", "field": "user_id"}),
                json!([]),
            ),
            Shape::DedupOnce => (
                json!({"type": "dedup", "field": "user_id", "keep": "first"}),
                json!([{"id": "once", "key_by": {"type": "key"}, "aggregate": count}]),
            ),
            Shape::FirstSeen => (
                json!({"type": "process", "function": function::NAME, "field": "user_id"}),
                json!([]),
            ),
            Shape::Join => (
                json!({"type": "join", "dimension_source": 1, "field": "user_id"}),
                json!([]),
            ),
            Shape::Windows | Shape::Sessions => (
                count.clone(),
                json!([{"id": "windows", "key_by": {"type": "key"}, "aggregate": count}]),
            ),
            Shape::IntervalJoin => (
                json!({"type": "interval_join", "right_source": 1, "field": "amount",
                    "lower_ms": -JOIN_BOUND_MS, "upper_ms": JOIN_BOUND_MS}),
                json!([{"id": "pairs", "key_by": {"type": "key"}, "aggregate": count}]),
            ),
            Shape::WindowJoin => (
                json!({"type": "window_join", "right_source": 1, "field": "amount"}),
                json!([{"id": "pairs", "key_by": {"type": "key"}, "aggregate": count}]),
            ),
        }
    }

    /// The last stage's result per key, computed plainly.
    fn truth(self, keys: u64) -> Vec<i64> {
        let app = |i| cutpoint_runtime::source::generator_app_id(SEED, keys, i) as usize;
        let mut counts = vec![0i64; keys as usize];
        (0..EVENTS).for_each(|i| counts[app(i)] += 1);
        match self {
            Shape::Pv | Shape::Join => counts,
            Shape::TwoStage => {
                let mut hist = Vec::new();
                for c in counts {
                    for i in 1..=c {
                        let b = i.div_euclid(HIST_WIDTH) as usize;
                        hist.resize(hist.len().max(b + 1), 0);
                        hist[b] += 1;
                    }
                }
                hist
            }
            Shape::Distinct | Shape::FirstSeen => {
                let mut seen = std::collections::HashSet::new();
                let mut distinct = vec![0i64; keys as usize];
                for i in 0..EVENTS {
                    let user = cutpoint_runtime::source::generator_user_id(SEED, USERS, i);
                    if seen.insert((app(i), user)) {
                        distinct[app(i)] += 1;
                    }
                }
                distinct
            }
            Shape::DedupOnce => counts.iter().map(|c| i64::from(*c > 0)).collect(),
            Shape::Windows => {
                use cutpoint_runtime::source::{generator_range, generator_ts};
                let mut seen = std::collections::HashSet::new();
                let mut windows = vec![0i64; keys as usize];
                for p in 0..2 {
                    let (start, end) = generator_range(EVENTS, 2, p);
                    for i in start..end {
                        let ts = generator_ts(SEED, WINDOW_DISORDER, i, i - start);
                        if seen.insert((app(i), ts.div_euclid(WINDOW_MS))) {
                            windows[app(i)] += 1;
                        }
                    }
                }
                windows
            }
            Shape::Sessions => {
                use cutpoint_runtime::source::{generator_range, generator_ts};
                let mut times = vec![Vec::new(); keys as usize];
                for p in 0..2 {
                    let (start, end) = generator_range(EVENTS, 2, p);
                    for i in start..end {
                        times[app(i)].push(generator_ts(SEED, WINDOW_DISORDER, i, i - start));
                    }
                }
                let sessions = |mut t: Vec<i64>| {
                    t.sort();
                    let gaps = t.windows(2).filter(|w| w[1] - w[0] >= SESSION_GAP_MS);
                    i64::from(!t.is_empty()) + gaps.count() as i64
                };
                times.into_iter().map(sessions).collect()
            }
            Shape::IntervalJoin => Self::pairs(keys),
            Shape::WindowJoin => Self::window_pairs(keys),
        }
    }

    /// The window join's pairs per app, computed plainly: per app and
    /// window, the left events times the right events.
    fn window_pairs(keys: u64) -> Vec<i64> {
        use cutpoint_runtime::source::{generator_app_id, generator_range, generator_ts};
        let mut n: std::collections::HashMap<(usize, i64), (i64, i64)> = Default::default();
        for p in 0..2 {
            let (start, end) = generator_range(EVENTS, 2, p);
            for i in start..end {
                let app = generator_app_id(SEED, keys, i) as usize;
                let ts = generator_ts(SEED, WINDOW_DISORDER, i, i - start);
                n.entry((app, ts.div_euclid(WINDOW_MS))).or_default().0 += 1;
            }
        }
        for i in 0..RIGHT_EVENTS {
            let app = generator_app_id(RIGHT_SEED, keys, i) as usize;
            let ts = generator_ts(RIGHT_SEED, WINDOW_DISORDER, i, i);
            n.entry((app, ts.div_euclid(WINDOW_MS))).or_default().1 += 1;
        }
        let mut pairs = vec![0i64; keys as usize];
        for ((app, _), (l, r)) in n {
            pairs[app] += l * r;
        }
        pairs
    }

    /// The interval join's pairs per app, computed plainly: each app's
    /// right event times sorted, each left event's partners found by range.
    fn pairs(keys: u64) -> Vec<i64> {
        use cutpoint_runtime::source::{generator_app_id, generator_range, generator_ts};
        let mut right = vec![Vec::new(); keys as usize];
        for i in 0..RIGHT_EVENTS {
            let app = generator_app_id(RIGHT_SEED, keys, i) as usize;
            right[app].push(generator_ts(RIGHT_SEED, WINDOW_DISORDER, i, i));
        }
        right.iter_mut().for_each(|r| r.sort());
        let mut pairs = vec![0i64; keys as usize];
        for p in 0..2 {
            let (start, end) = generator_range(EVENTS, 2, p);
            for i in start..end {
                let app = generator_app_id(SEED, keys, i) as usize;
                let ts = generator_ts(SEED, WINDOW_DISORDER, i, i - start);
                let r = &right[app];
                let from = r.partition_point(|t| *t < ts - JOIN_BOUND_MS);
                let to = r.partition_point(|t| *t <= ts + JOIN_BOUND_MS);
                pairs[app] += (to - from) as i64;
            }
        }
        pairs
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    ExactlyOnce,
    AtLeastOnce,
    Unaligned,
    Transactional,
    /// Exactly-once state, the plain (at-least-once) file sink.
    FileSink,
}

impl JobKind {
    fn as_str(self) -> &'static str {
        match self {
            JobKind::ExactlyOnce => "exactly_once",
            JobKind::AtLeastOnce => "at_least_once",
            JobKind::Unaligned => "unaligned",
            JobKind::Transactional => "exactly_once+2pc_sink",
            JobKind::FileSink => "exactly_once+file_sink",
        }
    }
}

#[derive(Debug, Clone)]
enum Fault {
    Kill {
        after_ms: u64,
    },
    TaskPanic,
    FailPoint {
        name: &'static str,
        actions: String,
    },
    Store {
        what: &'static str,
        rules: String,
    },
    /// SIGKILL, then the newest `_metadata` rewritten as a newer release
    /// would (`"version": 2`).
    UnreadableMetadata {
        after_ms: u64,
    },
    /// SIGKILL, then every recovery run uses the killed run's work dir.
    ReusedWorkDir {
        after_ms: u64,
    },
    /// SIGKILL, then the first recovery run's first `_metadata` GETs fail.
    TransientMetadataGet {
        after_ms: u64,
        failures: u32,
    },
    /// A second run of the job (`--restore-from latest`) started while the
    /// first runs: the first is fenced.
    SecondWriter {
        after_ms: u64,
    },
    /// Unaligned snapshots whose channel-state uploads fail.
    ChannelStateUpload {
        failures: u32,
    },
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "sigkill",
            Fault::TaskPanic => "task_panic",
            Fault::FailPoint { .. } => "fail_point",
            Fault::Store { .. } => "store_fault",
            Fault::UnreadableMetadata { .. } => "unreadable_metadata",
            Fault::ReusedWorkDir { .. } => "reused_work_dir",
            Fault::TransientMetadataGet { .. } => "transient_metadata_get",
            Fault::SecondWriter { .. } => "second_writer",
            Fault::ChannelStateUpload { .. } => "channel_state_upload",
        }
    }

    /// When the faulty run is killed (or the second writer starts).
    fn after(&self) -> Option<Duration> {
        match self {
            Fault::Kill { after_ms }
            | Fault::UnreadableMetadata { after_ms }
            | Fault::ReusedWorkDir { after_ms }
            | Fault::TransientMetadataGet { after_ms, .. }
            | Fault::SecondWriter { after_ms } => Some(Duration::from_millis(*after_ms)),
            _ => None,
        }
    }

    fn detail(&self) -> String {
        match self {
            Fault::Kill { after_ms } => format!("SIGKILL after {after_ms} ms"),
            Fault::TaskPanic => "a task fails once".into(),
            Fault::FailPoint { name, actions } => format!("{name}={actions}"),
            Fault::Store { what, rules } => format!("{what}: {rules}"),
            Fault::UnreadableMetadata { after_ms } => {
                format!("SIGKILL after {after_ms} ms, newest _metadata made unreadable")
            }
            Fault::ReusedWorkDir { after_ms } => {
                format!("SIGKILL after {after_ms} ms, its work dir reused")
            }
            Fault::TransientMetadataGet { after_ms, failures } => {
                format!("SIGKILL after {after_ms} ms, {failures} _metadata GETs fail on restore")
            }
            Fault::SecondWriter { after_ms } => {
                format!("a second writer starts after {after_ms} ms")
            }
            Fault::ChannelStateUpload { failures } => {
                format!("{failures} channel-state uploads fail")
            }
        }
    }
}

/// Everything one cycle does, derived from `(seed, cycle)`.
#[derive(Debug, Clone)]
struct Plan {
    job: JobKind,
    shape: Shape,
    fault: Fault,
    interval_ms: u64,
    retention: u32,
    full: bool,
    /// `inject_failure` in the spec (task panic; also makes a restore
    /// happen for the restore fail point).
    task_failure: Option<(u32, u64, bool)>,
    /// Under a memory budget (with [`BUDGET_KEYS`] keys).
    budget: bool,
}

impl Plan {
    fn keys(&self) -> u64 {
        if self.budget {
            BUDGET_KEYS
        } else {
            KEYS
        }
    }
}

fn plan(seed: u64, cycle: u64) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(cycle);
    let fault = draw_fault(seed, cycle, &mut rng);
    let job = draw_job(&fault, &mut rng);
    let restore_point =
        matches!(&fault, Fault::FailPoint { name, .. } if *name == "restore::download");
    let task_failure = (matches!(fault, Fault::TaskPanic) || restore_point).then(|| {
        (
            rng.gen_range(0..2),
            rng.gen_range(20_000..180_000),
            restore_point || rng.gen_bool(0.7),
        )
    });
    let budget = matches!(fault, Fault::ReusedWorkDir { .. }) || rng.gen_bool(0.25);
    Plan {
        job,
        shape: draw_shape(seed, cycle),
        interval_ms: rng.gen_range(60..250),
        retention: rng.gen_range(1..=3),
        full: rng.gen_bool(0.2),
        task_failure,
        // A reused work dir matters most where evicted state is read back.
        budget,
        fault,
    }
}

/// Even cycles: a fail point (in turn) with a drawn action; odd ones: one
/// of the other faults (in turn).
fn draw_fault(seed: u64, cycle: u64, rng: &mut ChaCha8Rng) -> Fault {
    let slot = (cycle / 2).wrapping_add(seed);
    if cycle.is_multiple_of(2) {
        let name = failpoint::ALL[(slot % failpoint::ALL.len() as u64) as usize];
        let action = match rng.gen_range(0..4) {
            0 => "return".to_string(),
            1 => "panic".to_string(),
            2 => "return(crash)".to_string(),
            _ => format!("sleep({})", rng.gen_range(50..1500)),
        };
        let nth = rng.gen_range(1..=3);
        let actions = if nth == 1 {
            format!("1*{action}")
        } else {
            format!("{}*off->1*{action}", nth - 1)
        };
        Fault::FailPoint { name, actions }
    } else {
        let after_ms = rng.gen_range(100..1400);
        match slot % 8 {
            0 => Fault::Kill { after_ms },
            1 => Fault::TaskPanic,
            2 => store_fault(rng),
            3 => Fault::UnreadableMetadata { after_ms },
            4 => Fault::ReusedWorkDir { after_ms },
            5 => Fault::TransientMetadataGet {
                after_ms,
                failures: rng.gen_range(1..=3),
            },
            6 => Fault::SecondWriter { after_ms },
            _ => Fault::ChannelStateUpload {
                failures: rng.gen_range(1..=3),
            },
        }
    }
}

/// The job a fault runs on.
fn draw_job(fault: &Fault, rng: &mut ChaCha8Rng) -> JobKind {
    match fault {
        Fault::FailPoint { name, .. } if name.starts_with("sink::") => JobKind::Transactional,
        // Skipping the newest checkpoint would replay committed output.
        Fault::TransientMetadataGet { .. } => JobKind::Transactional,
        Fault::ChannelStateUpload { .. } => JobKind::Unaligned,
        // Not the two-phase-commit sink: skipping a checkpoint whose
        // transactions were committed repeats them (a sink cannot take
        // committed output back; docs/guarantees.md), and the staging files
        // an unreadable checkpoint may name are kept.
        Fault::UnreadableMetadata { .. } => match rng.gen_range(0..4) {
            0 => JobKind::ExactlyOnce,
            1 => JobKind::Unaligned,
            2 => JobKind::FileSink,
            _ => JobKind::AtLeastOnce,
        },
        Fault::SecondWriter { .. } => match rng.gen_bool(0.5) {
            true => JobKind::ExactlyOnce,
            false => JobKind::Unaligned,
        },
        _ => match rng.gen_range(0..24) {
            0..6 => JobKind::ExactlyOnce,
            6..12 => JobKind::Transactional,
            12..16 => JobKind::Unaligned,
            16..20 => JobKind::FileSink,
            _ => JobKind::AtLeastOnce,
        },
    }
}

/// The job's shape, drawn from streams of their own, so the plans of
/// earlier seeds keep every other choice.
fn draw_shape(seed: u64, cycle: u64) -> Shape {
    let mut shapes = ChaCha8Rng::seed_from_u64(seed ^ 0x5A5E_0F5A_BE5E_ED00);
    shapes.set_stream(cycle);
    let shape = match shapes.gen_range(0..11) {
        0..4 => Shape::Pv,
        4..6 => Shape::TwoStage,
        6 => Shape::Distinct,
        7 => Shape::DedupOnce,
        8..10 => Shape::FirstSeen,
        _ => Shape::Join,
    };
    // The window form on a stream of its own (1 cycle in 7), so the other
    // cycles of a seed keep the shapes they had before it existed.
    let mut windows = ChaCha8Rng::seed_from_u64(seed ^ 0x0057_1D0E_5EED_0017);
    windows.set_stream(cycle);
    let shape = match windows.gen_range(0..7) {
        0 => Shape::Windows,
        _ => shape,
    };
    // Sessions and the interval join on another stream of their own (1
    // cycle in 14 of the rest each).
    let mut sessions = ChaCha8Rng::seed_from_u64(seed ^ 0x5E55_1045_5EED_0019);
    sessions.set_stream(cycle);
    let shape = match (shape, sessions.gen_range(0..14)) {
        (Shape::Windows, _) => shape,
        (_, 0) => Shape::Sessions,
        (_, 1) => Shape::IntervalJoin,
        _ => shape,
    };
    // The window join on a fourth stream (1 cycle in 12 of the rest).
    let mut joins = ChaCha8Rng::seed_from_u64(seed ^ 0x3017_0D00_5EED_0020);
    joins.set_stream(cycle);
    match (shape, joins.gen_range(0..12)) {
        (Shape::Windows | Shape::Sessions | Shape::IntervalJoin, _) => shape,
        (_, 0) => Shape::WindowJoin,
        _ => shape,
    }
}

fn store_fault(rng: &mut ChaCha8Rng) -> Fault {
    let n = rng.gen_range(1..=4);
    let (what, rules) = match rng.gen_range(0..8) {
        0 => ("transient put errors", format!("put::fail*{n}")),
        1 => ("transient get errors", format!("get::fail*{n}")),
        2 => ("failing deletes", format!("delete::fail*{}", n * 3)),
        3 => ("failing list", format!("list::fail*{n}")),
        4 => (
            "a hanging _metadata write",
            "put:/_metadata:delay=4000*1".to_string(),
        ),
        5 => (
            "a hanging shared upload",
            "put:shared/:delay=4000*1".to_string(),
        ),
        6 => ("slow store", format!("any::delay={}", rng.gen_range(5..40))),
        _ => (
            "storage outage",
            format!("any::fail*{}", rng.gen_range(20..60)),
        ),
    };
    Fault::Store { what, rules }
}

/// Options of `cutpoint chaos`.
#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 50)]
    pub cycles: u64,
    /// Start at this cycle (replay one: --first-cycle C --cycles 1).
    #[arg(long, default_value_t = 0)]
    pub first_cycle: u64,
    /// Base checkpoint storage; each cycle uses `<base>/cycle-<n>`
    /// (default: under the work dir).
    #[arg(long)]
    pub checkpoint_dir: Option<String>,
    /// Where cycles keep their files (default: a temporary directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep every cycle's files, not only those of failing cycles.
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: ChaosArgs) -> Result<ExitCode> {
    if !failpoint::ENABLED {
        bail!(
            "this build has no fail points; build the harness with them: \
             cargo run --release --features failpoints -- chaos …"
        );
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let (root, _tmp) = crate::jobs::dir_or_temp(args.work_dir.clone(), "cutpoint-chaos-")?;
    let base = match &args.checkpoint_dir {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => root.join("storage").display().to_string(),
    };
    let mut truths: BTreeMap<(Shape, u64), Vec<i64>> = BTreeMap::new();
    let rt = tokio::runtime::Handle::current();
    let started = Instant::now();
    let mut tally = Tally::default();
    let bar = crate::progress::bar(Some(args.cycles), "chaos cycles");
    for cycle in args.first_cycle..args.first_cycle + args.cycles {
        let p = plan(args.seed, cycle);
        let dir = root.join(format!("cycle-{cycle}"));
        std::fs::create_dir_all(&dir)?;
        let location = format!("{base}/cycle-{cycle}");
        let t0 = Instant::now();
        let truth = truths
            .entry((p.shape, p.keys()))
            .or_insert_with(|| p.shape.truth(p.keys()));
        let result = run_cycle(&exe, &p, &dir, &location, truth, &rt);
        tally.count(&p, &result);
        let line = match &result {
            Ok(c) => {
                if !args.keep {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                json!({
                    "cycle": cycle, "ok": true, "job": p.job.as_str(), "shape": p.shape.as_str(), "fault": p.fault.kind(),
                    "detail": p.fault.detail(), "fired": c.fired, "memory_budget": p.budget,
                    "faulty_run": c.faulty_run, "recoveries": c.recoveries,
                    "checkpoints_in_storage": c.checkpoints, "ms": t0.elapsed().as_millis() as u64,
                })
            }
            Err(e) => {
                let replay = format!(
                    "cutpoint chaos --seed {} --first-cycle {cycle} --cycles 1 --keep",
                    args.seed
                );
                eprintln!(
                    "chaos: cycle {cycle} FAILED: {e:#}\n  plan: {p:?}\n  files: {}\n  replay: {replay}",
                    dir.display(),
                );
                json!({
                    "cycle": cycle, "ok": false, "job": p.job.as_str(), "shape": p.shape.as_str(), "fault": p.fault.kind(),
                    "detail": p.fault.detail(), "error": format!("{e:#}"), "replay": replay,
                })
            }
        };
        bar.suspend(|| println!("{line}"));
        bar.inc(1);
        bar.set_message(format!("{} failed", tally.failed));
    }
    bar.finish_and_clear();
    if tally.failed > 0 && _tmp.is_some() {
        // Keep the evidence of failing cycles.
        let kept = _tmp.map(|t| t.keep());
        eprintln!("chaos: work files kept in {:?}", kept);
    }
    println!("{}", tally.summary(&args, started.elapsed()));
    Ok(match tally.failed {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::from(2),
    })
}

/// What a run's cycles drew and how they ended (its summary line).
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    recoveries: u64,
    faulty_runs_failed: u64,
    budgeted: u64,
    by_kind: BTreeMap<&'static str, u64>,
    fail_points: BTreeMap<&'static str, u64>,
    fired: BTreeMap<&'static str, u64>,
    jobs: BTreeMap<&'static str, u64>,
    shapes: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn count(&mut self, p: &Plan, result: &Result<CycleResult>) {
        *self.shapes.entry(p.shape.as_str()).or_default() += 1;
        self.budgeted += u64::from(p.budget);
        *self.by_kind.entry(p.fault.kind()).or_default() += 1;
        *self.jobs.entry(p.job.as_str()).or_default() += 1;
        let point = match &p.fault {
            Fault::FailPoint { name, .. } => Some(*name),
            _ => None,
        };
        if let Some(name) = point {
            *self.fail_points.entry(name).or_default() += 1;
        }
        let Ok(c) = result else {
            self.failed += 1;
            return;
        };
        self.passed += 1;
        self.recoveries += c.recoveries as u64;
        self.faulty_runs_failed += u64::from(!c.faulty_run_succeeded);
        if let (Some(true), Some(name)) = (c.fired, point) {
            *self.fired.entry(name).or_default() += 1;
        }
    }

    fn summary(&self, args: &ChaosArgs, took: Duration) -> serde_json::Value {
        let s3 = args
            .checkpoint_dir
            .as_deref()
            .is_some_and(|b| b.starts_with("s3://"));
        json!({
            "summary": true, "seed": args.seed, "first_cycle": args.first_cycle,
            "cycles": args.cycles, "passed": self.passed, "failed": self.failed,
            "wrong_results": self.failed, "faults_by_kind": self.by_kind, "jobs": self.jobs,
            "shapes": self.shapes, "fail_points": self.fail_points,
            "fail_points_fired": self.fired, "faulty_runs_that_failed": self.faulty_runs_failed,
            "recovery_runs": self.recoveries, "under_memory_budget": self.budgeted,
            "storage": if s3 { "s3" } else { "local" },
            "duration_s": took.as_secs(),
        })
    }
}

struct CycleResult {
    faulty_run: String,
    faulty_run_succeeded: bool,
    recoveries: u32,
    /// Whether the fault happened (`None`: cannot tell, e.g. a delay).
    fired: Option<bool>,
    checkpoints: usize,
}

/// The runs of one cycle: the job, its storage and files.
struct Runs<'a> {
    exe: &'a Path,
    spec: PathBuf,
    location: &'a str,
    dir: &'a Path,
    storage: CheckpointStorage,
    job: JobId,
    rt: &'a tokio::runtime::Handle,
}

impl Runs<'_> {
    /// Whether storage has a restorable checkpoint (recover with `latest`).
    fn restorable(&self) -> Result<bool> {
        Ok(self.rt.block_on(async {
            self.storage
                .list_checkpoints(&self.job)
                .await
                .map(|l| l.iter().any(|c| c.metadata.is_ok()))
        })?)
    }
}

fn run_cycle(
    exe: &Path,
    p: &Plan,
    dir: &Path,
    location: &str,
    expected: &[i64],
    rt: &tokio::runtime::Handle,
) -> Result<CycleResult> {
    let out = dir.join("out");
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec_json(p, &out))?)?;
    let runs = Runs {
        exe,
        spec: spec_path,
        location,
        dir,
        storage: CheckpointStorage::new(StorageLocation::parse(location)?),
        job: JobId::new("chaos")?,
        rt,
    };
    let (first, mut last) = faulty_runs(&runs, p)?;
    let fired = fired(p, &first);
    let unreadable = match p.fault {
        Fault::UnreadableMetadata { .. } => rt.block_on(make_newest_unreadable(&runs))?,
        _ => None,
    };
    let mut recoveries = 0;
    while !last.succeeded() {
        if recoveries == MAX_RECOVERIES {
            bail!(
                "the job did not finish after {MAX_RECOVERIES} recovery runs; last: {}\n{}",
                last.describe(),
                tail(&last.log, 15)
            );
        }
        recoveries += 1;
        let env = match &p.fault {
            Fault::TransientMetadataGet { failures, .. } if recoveries == 1 => {
                vec![("CUTPOINT_FAULTS", format!("get:/_metadata:fail*{failures}"))]
            }
            _ => Vec::new(),
        };
        let work = match p.fault {
            Fault::ReusedWorkDir { .. } => 0,
            _ => recoveries + 1,
        };
        let child = spawn_child(&runs, recoveries + 1, work, runs.restorable()?, &env)?;
        last = wait_child(child, None)?;
    }
    check_results(p, &last.final_state, &out, expected)?;
    let checkpoints = rt.block_on(check_storage(&runs.storage, &runs.job, unreadable))?;
    Ok(CycleResult {
        faulty_run: first.describe(),
        faulty_run_succeeded: first.succeeded(),
        recoveries,
        fired,
        checkpoints,
    })
}

/// The faulty run (and, for a second writer, the run that takes over):
/// returns the faulty run and the last run that ended.
fn faulty_runs(runs: &Runs<'_>, p: &Plan) -> Result<(RunEnd, RunEnd)> {
    let mut env: Vec<(&str, String)> = Vec::new();
    match &p.fault {
        Fault::FailPoint { name, actions } => {
            env.push(("CUTPOINT_FAILPOINTS", format!("{name}={actions}")))
        }
        Fault::Store { rules, .. } => env.push(("CUTPOINT_FAULTS", rules.clone())),
        Fault::ChannelStateUpload { failures } => env.push((
            "CUTPOINT_FAULTS",
            format!("put:channel-state.jsonl:fail*{failures}"),
        )),
        _ => {}
    }
    let child = spawn_child(runs, 0, 0, false, &env)?;
    let Fault::SecondWriter { after_ms } = p.fault else {
        let first = wait_child(child, p.fault.after())?;
        return Ok((first.clone_end(), first));
    };
    // The first runs on while the second takes the job over.
    std::thread::sleep(Duration::from_millis(after_ms));
    let second = spawn_child(runs, 1, 1, runs.restorable()?, &[])?;
    // The first is fenced at its next publish or delete (or finished
    // before the second took over); the second's result is checked.
    let first = wait_child(child, None)?;
    let second = wait_child(second, None)?;
    Ok((first, second))
}

fn fired(p: &Plan, first: &RunEnd) -> Option<bool> {
    match &p.fault {
        // Errors, crashes and panics leave their mark; a delay does not.
        Fault::FailPoint { actions, .. } if actions.contains("sleep") => None,
        Fault::FailPoint { name, .. } => Some(
            first.log.contains(&format!("fail point {name}"))
                || first.log.contains(&format!("failpoint {name} panic")),
        ),
        Fault::SecondWriter { .. } => Some(first.log.contains("fenced")),
        Fault::ChannelStateUpload { .. } => Some(first.log.contains("channel-state")),
        f if f.after().is_some() => Some(first.killed),
        _ => Some(true),
    }
}

/// Rewrites the newest restorable `_metadata` as a newer release would;
/// returns its id and the files it names (which must all survive).
async fn make_newest_unreadable(runs: &Runs<'_>) -> Result<Option<(u64, Vec<String>)>> {
    let listing = runs.storage.list_checkpoints(&runs.job).await?;
    let Some(newest) = listing.iter().find(|l| l.metadata.is_ok()) else {
        return Ok(None);
    };
    let id = newest.checkpoint_id;
    let path = runs.storage.paths(&runs.job).metadata(id);
    let bytes = runs.storage.store().get(&path).await?.bytes().await?;
    let mut meta: serde_json::Value = serde_json::from_slice(&bytes)?;
    meta["version"] = 2.into();
    runs.storage
        .store()
        .put(&path, serde_json::to_vec(&meta)?.into())
        .await?;
    let files = newest
        .metadata
        .as_ref()
        .expect("readable")
        .files()
        .map(|f| f.path.clone());
    Ok(Some((id.0, files.collect())))
}

/// The job's results against the truth: keyed state, then sink output.
fn check_results(p: &Plan, final_state: &Path, out: &Path, expected: &[i64]) -> Result<()> {
    let text = std::fs::read_to_string(final_state).context("reading the final state")?;
    let mut actual = BTreeMap::new();
    // The join's dimensions, computed once (not per key).
    let dims = (p.shape == Shape::Join).then(|| Shape::dimensions(p.keys()));
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let key = serde_json::from_value::<Key>(v["key"].clone())?;
        if let Some(dims) = &dims {
            check_dimension(dims, &key, &v["dimension"])?;
            let count = v["count"].as_i64().context("count")?;
            // A key only the dimension source had: no clicks, no result.
            if count > 0 {
                actual.insert(key, count);
            }
            continue;
        }
        actual.insert(key, v["value"].as_i64().context("value")?);
    }
    let mut wrong = Vec::new();
    for (k, want) in expected.iter().enumerate().filter(|(_, c)| **c > 0) {
        let got = actual.get(&Key::Int(k as i64)).copied().unwrap_or(0);
        let ok = match p.job {
            JobKind::AtLeastOnce => got >= *want,
            _ => got == *want,
        };
        if !ok {
            wrong.push(format!("key {k}: expected {want}, got {got}"));
        }
    }
    let keys = expected.iter().filter(|c| **c > 0).count();
    // At least once, a key counted too high may reach a bucket of its own.
    let extra_ok = p.job == JobKind::AtLeastOnce && p.shape == Shape::TwoStage;
    if !wrong.is_empty() || actual.len() < keys || (actual.len() > keys && !extra_ok) {
        bail!(
            "wrong counts ({} wrong keys, {} keys vs {keys}): {:?}",
            wrong.len(),
            actual.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
    match p.job {
        JobKind::Transactional => check_committed_output(out, expected),
        JobKind::FileSink => check_file_output(out, expected),
        _ => Ok(()),
    }
}

fn spec_json(p: &Plan, out: &Path) -> serde_json::Value {
    let sink = match p.job {
        JobKind::Transactional => json!({"type": "transactional_file", "dir": out}),
        JobKind::FileSink => json!({"type": "file", "dir": out}),
        _ => json!({"type": "discard"}),
    };
    let mode = match p.job {
        JobKind::AtLeastOnce => "at_least_once",
        JobKind::Unaligned => "unaligned",
        _ => "exactly_once",
    };
    let (aggregate, stages) = p.shape.spec();
    // Under the 1 MB budget typed state's checkpoints take 1–2 s on the S3
    // test server (docs/reliability.md); on a loaded CI machine more.
    let timeout_ms = if p.budget { 10_000 } else { 2_000 };
    let mut spec = json!({
        "job_id": "chaos",
        "parallelism": 2,
        "source": {"type": "generator", "partitions": 2, "events": EVENTS, "keys": p.keys(), "users": USERS, "seed": SEED, "rate_per_s": RATE},
        "key_by": "app_id",
        "aggregate": aggregate,
        "stages": stages,
        "sink": sink,
        "checkpoint": {
            "interval_ms": p.interval_ms, "timeout_ms": timeout_ms, "tolerable_failures": 2,
            "retention": p.retention, "type": if p.full { "full" } else { "incremental" },
            "mode": mode, "orphan_sweep_interval_ms": 500,
        },
        "restart": {"max_attempts": 3, "delay_ms": 50},
    });
    if p.budget {
        spec["state"] = json!({"memory_budget_mb": 1});
    }
    if matches!(
        p.shape,
        Shape::Windows | Shape::Sessions | Shape::IntervalJoin | Shape::WindowJoin
    ) {
        spec["source"]["disorder_ms"] = json!(WINDOW_DISORDER);
        spec["event_time"] = json!({"field": "ts", "max_out_of_orderness_ms": WINDOW_DISORDER,
            "watermark_interval_ms": 20});
        match p.shape {
            Shape::Windows => spec["window"] = json!({"type": "tumbling", "size_ms": WINDOW_MS}),
            Shape::Sessions => {
                spec["window"] = json!({"type": "session", "gap_ms": SESSION_GAP_MS})
            }
            Shape::WindowJoin => {
                spec["window"] = json!({"type": "tumbling", "size_ms": WINDOW_MS});
                spec["union"] = json!([{"type": "generator", "partitions": 1,
                    "events": RIGHT_EVENTS, "keys": p.keys(), "users": USERS, "seed": RIGHT_SEED,
                    "rate_per_s": RATE / 2, "disorder_ms": WINDOW_DISORDER}]);
            }
            _ => {
                spec["union"] = json!([{"type": "generator", "partitions": 1,
                    "events": RIGHT_EVENTS, "keys": p.keys(), "users": USERS, "seed": RIGHT_SEED,
                    "rate_per_s": RATE / 2, "disorder_ms": WINDOW_DISORDER}]);
            }
        }
    }
    if p.shape == Shape::Join {
        spec["union"] = json!([{"type": "generator", "partitions": 1, "events": DIM_EVENTS,
            "keys": p.keys(), "users": USERS, "seed": DIM_SEED, "rate_per_s": DIM_RATE}]);
    }
    if let Fault::ChannelStateUpload { .. } = p.fault {
        // Late barriers on partition 1: records in flight at every snapshot.
        spec["inject_barrier_delay"] = json!({"partition": 1, "delay_ms": 150});
    }
    if let Some((subtask, after_records, after_completed_checkpoint)) = p.task_failure {
        spec["inject_failure"] = json!({
            "subtask": subtask, "after_records": after_records,
            "after_completed_checkpoint": after_completed_checkpoint,
        });
    }
    spec
}

/// How one child run ended.
struct RunEnd {
    code: Option<i32>,
    signal: Option<i32>,
    killed: bool,
    timed_out: bool,
    log: String,
    final_state: PathBuf,
}

impl RunEnd {
    fn succeeded(&self) -> bool {
        self.code == Some(0) && !self.killed
    }

    fn clone_end(&self) -> RunEnd {
        RunEnd {
            code: self.code,
            signal: self.signal,
            killed: self.killed,
            timed_out: self.timed_out,
            log: self.log.clone(),
            final_state: self.final_state.clone(),
        }
    }

    fn describe(&self) -> String {
        if self.timed_out {
            "hung (killed at the run limit)".into()
        } else if self.killed {
            "killed".into()
        } else {
            match self.code {
                Some(0) => "finished".into(),
                Some(c) => format!("exited {c}"),
                None => format!("crashed (signal {})", self.signal.unwrap_or(0)),
            }
        }
    }
}

/// A started run: the child, its log and final-state files.
struct Started {
    child: Child,
    n: u32,
    log: PathBuf,
    final_state: PathBuf,
}

/// Starts run `n` of the job with work dir `work-{work}`.
fn spawn_child(
    runs: &Runs<'_>,
    n: u32,
    work: u32,
    restore: bool,
    env: &[(&str, String)],
) -> Result<Started> {
    let log = runs.dir.join(format!("run-{n}.log"));
    let final_state = runs.dir.join(format!("final-{n}.jsonl"));
    let mut cmd = Command::new(runs.exe);
    // `run` with the harness's function registered.
    cmd.arg("chaos-run")
        .arg("--job")
        .arg(&runs.spec)
        .arg("--checkpoint-dir")
        .arg(runs.location)
        .arg("--work-dir")
        .arg(runs.dir.join(format!("work-{work}")))
        .arg("--final-state")
        .arg(&final_state)
        .env_remove("CUTPOINT_FAILPOINTS")
        .env_remove("CUTPOINT_FAULTS")
        .env("CUTPOINT_LOG", "info")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    if restore {
        cmd.args(["--restore-from", "latest"]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(Started {
        child: cmd.spawn().context("starting a job run")?,
        n,
        log,
        final_state,
    })
}

/// Waits for a run to end, SIGKILLing it after `kill_after`.
fn wait_child(mut run: Started, kill_after: Option<Duration>) -> Result<RunEnd> {
    let started = Instant::now();
    let (mut killed, mut timed_out) = (false, false);
    let status = loop {
        if let Some(s) = run.child.try_wait()? {
            break s;
        }
        let elapsed = started.elapsed();
        if kill_after.is_some_and(|k| elapsed >= k) || elapsed >= RUN_LIMIT {
            timed_out = elapsed >= RUN_LIMIT;
            killed = true;
            kill(&mut run.child)?;
            break run.child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut log = String::new();
    std::fs::File::open(&run.log)?.read_to_string(&mut log)?;
    if timed_out {
        bail!("run {} hung for {RUN_LIMIT:?}\n{}", run.n, tail(&log, 15));
    }
    Ok(RunEnd {
        code: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
        killed,
        timed_out,
        log,
        final_state: run.final_state,
    })
}

/// SIGKILL (what `Child::kill` sends on Unix).
fn kill(child: &mut Child) -> Result<()> {
    match child.kill() {
        Ok(()) => Ok(()),
        // Already exited between the check and the kill.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<_> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A join key's final dimension against the dimension source's last event.
fn check_dimension(dims: &[Option<i64>], key: &Key, got: &serde_json::Value) -> Result<()> {
    let Key::Int(k) = key else {
        bail!("join result of a key that is not an app id: {key}");
    };
    let want = dims.get(*k as usize).copied().flatten();
    if got.as_i64() != want {
        bail!("join key {k}: dimension {got}, want {want:?}");
    }
    Ok(())
}

/// The count an update carries: the value, or a join's `[count, dimension]`.
fn update_count(v: &Value) -> Option<i64> {
    match v {
        Value::List(row) => row.first().and_then(Value::as_int),
        v => v.as_int(),
    }
}

/// Every update of every key committed exactly once; no staging file left.
fn check_committed_output(out: &Path, expected: &[i64]) -> Result<()> {
    let output = cutpoint_runtime::sink::read_output(out).context("reading the sink output")?;
    if let Some(name) = output.others.first() {
        bail!("sink output holds a non-committed file {name}");
    }
    let mut updates = output.updates;
    for (k, want) in expected.iter().enumerate().filter(|(_, c)| **c > 0) {
        let got = updates.remove(&Key::Int(k as i64)).unwrap_or_default();
        let mut got: Vec<Option<i64>> = got.iter().map(update_count).collect();
        got.sort_unstable();
        if got.len() != *want as usize || got.iter().zip(1..).any(|(v, i)| *v != Some(i)) {
            let dups = got.windows(2).filter(|w| w[0] == w[1]).count();
            bail!(
                "committed output of key {k}: {} updates (want 1..={want} once each; {dups} duplicates)",
                got.len()
            );
        }
    }
    if let Some(k) = updates.keys().next() {
        bail!("committed output has updates of unknown key {k}");
    }
    Ok(())
}

/// The plain file sink's output: whole records only (every line parses),
/// and every key's last update is its exact count (restores repeat
/// updates; they never lose or tear one).
fn check_file_output(out: &Path, expected: &[i64]) -> Result<()> {
    let output = cutpoint_runtime::sink::read_output(out)
        .context("the file sink's output holds a line that is not a whole record")?;
    for (k, want) in expected.iter().enumerate().filter(|(_, c)| **c > 0) {
        let last = output
            .updates
            .get(&Key::Int(k as i64))
            .and_then(|v| v.iter().filter_map(update_count).max());
        if last != Some(*want) {
            bail!("file sink output of key {k}: last count {last:?}, want {want}");
        }
    }
    Ok(())
}

/// Storage holds exactly `job.json`, the writer leases and what its
/// checkpoints reference. With an `unreadable` checkpoint (id, files), that
/// one is unreadable, every file it names is still there, and leftovers
/// may stay (no shared file may be deleted while it exists). Returns the
/// number of restorable checkpoints.
async fn check_storage(
    storage: &CheckpointStorage,
    job: &JobId,
    unreadable: Option<(u64, Vec<String>)>,
) -> Result<usize> {
    let u = storage.usage(job).await?;
    if let Some((id, files)) = unreadable {
        let present: std::collections::BTreeSet<String> =
            storage.list_job_objects(job).await?.into_iter().collect();
        let gone: Vec<_> = files.iter().filter(|f| !present.contains(*f)).collect();
        if !gone.is_empty() || u.unreadable.len() != 1 || !u.missing.is_empty() {
            bail!(
                "unreadable checkpoint {id}: its files deleted {gone:?}; unreadable {:?}; missing {:?}",
                u.unreadable,
                u.missing
            );
        }
        return Ok(u.checkpoints.len());
    }
    if !u.unreadable.is_empty() || !u.unreferenced.is_empty() || !u.missing.is_empty() {
        bail!(
            "storage is not exactly what its checkpoints reference: leaked {:?}, missing {:?}, unreadable {:?}",
            u.unreferenced,
            u.missing,
            u.unreadable
        );
    }
    Ok(u.checkpoints.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_replay_and_cover_every_fail_point() {
        let a: Vec<_> = (0..40).map(|c| format!("{:?}", plan(7, c))).collect();
        let b: Vec<_> = (0..40).map(|c| format!("{:?}", plan(7, c))).collect();
        assert_eq!(a, b, "a cycle's plan depends only on (seed, cycle)");
        assert_eq!(format!("{:?}", plan(7, 13)), a[13]);
        let n = 2 * failpoint::ALL.len() as u64;
        let mut names = std::collections::BTreeSet::new();
        let mut kinds = std::collections::BTreeSet::new();
        for c in 0..n.max(16) {
            let p = plan(123, c);
            kinds.insert(p.fault.kind());
            if let Fault::FailPoint { name, .. } = p.fault {
                names.insert(name);
            }
        }
        assert_eq!(names.len(), failpoint::ALL.len());
        assert_eq!(kinds.len(), 9);
        let shapes: std::collections::BTreeSet<_> = (0..64).map(|c| plan(123, c).shape).collect();
        assert_eq!(shapes.len(), 10, "every job form is run");
        let typed_budgeted = |c| plan(123, c).shape.typed() && plan(123, c).budget;
        assert!(
            (0..64).any(typed_budgeted),
            "typed state under a budget too"
        );
    }

    #[test]
    fn truths_are_computed_plainly() {
        let pv = Shape::Pv.truth(KEYS);
        assert_eq!(pv.iter().sum::<i64>(), EVENTS as i64);
        // Every update of every key lands in one bucket.
        assert_eq!(
            Shape::TwoStage.truth(KEYS).iter().sum::<i64>(),
            EVENTS as i64
        );
        let distinct = Shape::Distinct.truth(KEYS);
        assert!(distinct
            .iter()
            .zip(&pv)
            .all(|(d, c)| d <= c && *d <= USERS as i64));
        assert!(Shape::DedupOnce.truth(KEYS).iter().all(|x| *x == 1));
        assert_eq!(Shape::Join.truth(KEYS), pv, "the join counts clicks only");
        // Every key had events in some windows, at most one per event.
        let windows = Shape::Windows.truth(KEYS);
        assert!(windows.iter().zip(&pv).all(|(w, c)| *w >= 1 && w <= c));
        // Fewer sessions than 500 ms windows: a session spans at least 2 s.
        let sessions = Shape::Sessions.truth(KEYS);
        assert!(sessions.iter().zip(&windows).all(|(s, w)| *s >= 1 && s < w));
        // About 0.1 partners per left event (201 ms of a right source with
        // an event per app every 2 s).
        let pairs: i64 = Shape::IntervalJoin.truth(KEYS).iter().sum();
        assert!((20_000..80_000).contains(&pairs), "{pairs} pairs");
        // Per app about 0.5 left and 0.25 right events per 500 ms window.
        let pairs: i64 = Shape::WindowJoin.truth(KEYS).iter().sum();
        assert!((50_000..200_000).contains(&pairs), "{pairs} window pairs");
        let dims = Shape::dimensions(KEYS);
        assert!(dims
            .iter()
            .all(|d| d.is_some_and(|u| (0..USERS as i64).contains(&u))));
    }
}
