//! Checkpoint metadata (`chk-{n}/_metadata`): versioned JSON that lists
//! everything needed to restore checkpoint `n` — source offsets, every
//! subtask's state files with size and CRC32C, key-group ranges — so that
//! restoring a checkpoint needs its metadata alone.
//!
//! Invariants checked by [`CheckpointMetadata::verify`]: known version, ids
//! match where the file was found, every state file path lies under this
//! checkpoint's folder or the job's `shared/` folder with no `..` segment.

use serde::{Deserialize, Serialize};

use crate::{CheckpointId, CheckpointType, CoreError, JobId, KeyGroupRange, TaskId};

/// The metadata format this build writes and reads.
pub const METADATA_VERSION: u32 = 1;

/// A file of a subtask's state, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateFile {
    /// Path relative to the job's folder: `chk-{n}/{op}/{subtask}/{name}` or
    /// `shared/{op}/{subtask}/{name}`.
    pub path: String,
    /// Name of the file inside the restored RocksDB directory.
    pub local_name: String,
    pub size: u64,
    pub crc32c: u32,
}

/// The offset a source partition had reached when it injected the barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceOffset {
    pub partition: u32,
    /// Next position to read (event index, or byte position in a file).
    pub offset: u64,
    /// Bad input lines skipped before `offset`.
    #[serde(default)]
    pub bad_records: u64,
    /// Event time: the largest event time read before `offset` (what the
    /// partition's watermark resumes from after a restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timestamp: Option<i64>,
}

/// A sink transaction pre-committed on a barrier: committed when its
/// checkpoint (or a later one) completes, or when a restore from a
/// checkpoint that lists it recovers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTransaction {
    pub checkpoint: CheckpointId,
    /// The sink's handle for it (a staging file name).
    pub handle: String,
    /// Which of the job's sinks it belongs to (its index in the spec's
    /// `sink` list; 0, and absent in the JSON, for the first or only one;
    /// [`crate::JobSpec::late_sink_index`] for the late records' sink).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sink: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The kinds of keyed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    Value,
    List,
    Map,
    Reducing,
}

/// What a keyed stage aggregates, as far as its state's form goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateKind {
    Count,
    Sum,
    Join,
    CountDistinct,
    Dedup,
    Min,
    Max,
    /// A registered keyed process function (its states recorded beside).
    Process,
    Avg,
    /// An event-time window (tumbling, sliding or session) of count, sum,
    /// min, max, avg, count-distinct or top-n (its states recorded beside).
    Window,
    /// An event-time interval join (its states recorded beside).
    IntervalJoin,
}

impl AggregateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateKind::Count => "count",
            AggregateKind::Sum => "sum",
            AggregateKind::Join => "join",
            AggregateKind::CountDistinct => "count_distinct",
            AggregateKind::Dedup => "dedup",
            AggregateKind::Min => "min",
            AggregateKind::Max => "max",
            AggregateKind::Process => "process",
            AggregateKind::Avg => "avg",
            AggregateKind::Window => "window",
            AggregateKind::IntervalJoin => "interval_join",
        }
    }

    /// Whether its state is the integer table (count, sum) rather than
    /// typed state (every other kind; the join since it keeps a real
    /// dimension value).
    pub fn is_integer(self) -> bool {
        matches!(self, AggregateKind::Count | AggregateKind::Sum)
    }
}

/// One typed state as its operator declared it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredState {
    /// Its prefix in the RocksDB keys.
    pub id: u16,
    pub name: String,
    pub kind: StateKind,
    /// Of its values' encoding (a restore into another version is
    /// refused; absent in checkpoints of older releases: 1).
    #[serde(default = "codec_version_one")]
    pub codec_version: u8,
}

fn codec_version_one() -> u8 {
    1
}

/// The form of a keyed subtask's state, recorded with each snapshot, so a
/// restore refuses state of another form instead of misreading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSchema {
    pub aggregate: AggregateKind,
    /// Typed state: every declared state, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<DeclaredState>,
}

/// What one subtask acknowledged for a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskState {
    pub task: TaskId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_offset: Option<SourceOffset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_group_range: Option<KeyGroupRange>,
    #[serde(default)]
    pub files: Vec<StateFile>,
    /// Size of all the state this subtask needs for a restore.
    pub state_size: u64,
    /// Bytes this subtask uploaded for this checkpoint.
    pub checkpointed_size: u64,
    /// Files uploaded for this checkpoint.
    #[serde(default)]
    pub files_uploaded: u32,
    /// Shared files referenced from earlier checkpoints (not uploaded).
    #[serde(default)]
    pub files_reused: u32,
    pub sync_duration_ms: u64,
    pub async_duration_ms: u64,
    /// Time from the first barrier on an input to the snapshot.
    #[serde(default)]
    pub alignment_duration_ms: u64,
    /// Records processed after the barrier arrived on an early input and
    /// before the snapshot (at-least-once mode only; 0 when aligned). They
    /// are in this snapshot and are replayed after a restore from it.
    #[serde(default)]
    pub records_beyond_barrier: u64,
    /// Sink transactions pre-committed and not yet known to be committed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_transactions: Vec<PendingTransaction>,
    /// Unaligned checkpoints: the records in flight before the barrier on
    /// this subtask's inputs (JSON lines `{"key":…,"value":…}`), replayed
    /// before new input after a restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel_state: Vec<StateFile>,
    /// Bytes of in-flight data persisted as channel state.
    #[serde(default)]
    pub persisted_data_size: u64,
    /// The subtask took this checkpoint unaligned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unaligned: bool,
    /// A keyed subtask's state form (absent in checkpoints of older
    /// releases, and for sources and external tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<StateSchema>,
    /// Event time: a keyed subtask's watermark at its snapshot (what its
    /// state's timers had fired up to); a restore starts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<i64>,
    /// Event time, after a rescaled restore: key-group ranges whose old
    /// subtask was ahead of this one's watermark, with that watermark
    /// (their windows fired up to it); the next restore keeps them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watermark_floors: Vec<(KeyGroupRange, i64)>,
    /// Processing-time timers: the wall-clock time a keyed subtask's had
    /// fired up to at its snapshot; after a restore its clock reads past
    /// it (a window that fired is not opened again by a clock behind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_time_ms: Option<i64>,
    pub ack_timestamp: u64,
}

impl StateFile {
    /// Its path, checked: scope, operator, subtask, file name.
    pub fn state_path(&self) -> Result<crate::layout::StatePath<'_>, CoreError> {
        crate::layout::StatePath::parse(&self.path)
    }

    /// Whether it lies under `shared/` (referenced by many checkpoints).
    pub fn is_shared(&self) -> bool {
        crate::layout::is_shared(&self.path)
    }
}

impl SubtaskState {
    /// Every file of this subtask: state files, then channel state.
    pub fn all_files_mut(&mut self) -> impl Iterator<Item = &mut StateFile> {
        self.files.iter_mut().chain(self.channel_state.iter_mut())
    }

    /// An acknowledgement of `task` with no state and zero statistics; fill
    /// in what applies with struct update syntax.
    pub fn empty(task: TaskId) -> Self {
        Self {
            task,
            source_offset: None,
            key_group_range: None,
            files: Vec::new(),
            state_size: 0,
            checkpointed_size: 0,
            files_uploaded: 0,
            files_reused: 0,
            sync_duration_ms: 0,
            async_duration_ms: 0,
            alignment_duration_ms: 0,
            records_beyond_barrier: 0,
            pending_transactions: Vec::new(),
            channel_state: Vec::new(),
            persisted_data_size: 0,
            unaligned: false,
            schema: None,
            watermark: None,
            watermark_floors: Vec::new(),
            processing_time_ms: None,
            ack_timestamp: 0,
        }
    }
}

/// The complete record of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    pub version: u32,
    pub job_id: JobId,
    pub checkpoint_id: CheckpointId,
    pub checkpoint_type: CheckpointType,
    pub trigger_timestamp: u64,
    pub complete_timestamp: u64,
    pub parallelism: u32,
    pub max_parallelism: u32,
    /// The writer epoch of the process that published it (one writer per
    /// job: see the storage's `_writer/` objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer_epoch: Option<u64>,
    pub subtasks: Vec<SubtaskState>,
}

impl CheckpointMetadata {
    /// Sum of the subtasks' state sizes.
    pub fn state_size(&self) -> u64 {
        self.subtasks.iter().map(|s| s.state_size).sum()
    }

    /// Sum of the bytes uploaded for this checkpoint.
    pub fn checkpointed_size(&self) -> u64 {
        self.subtasks.iter().map(|s| s.checkpointed_size).sum()
    }

    /// Every state file this checkpoint needs.
    /// Every file the checkpoint references: state files and channel state.
    pub fn files(&self) -> impl Iterator<Item = &StateFile> {
        self.subtasks
            .iter()
            .flat_map(|s| s.files.iter().chain(&s.channel_state))
    }

    /// The shared files (under `shared/`) this checkpoint references.
    pub fn shared_files(&self) -> impl Iterator<Item = &StateFile> {
        self.files().filter(|f| f.is_shared())
    }

    /// Checks version, ids and that every file lies where it may.
    pub fn verify(&self, job: &JobId, id: CheckpointId) -> Result<(), CoreError> {
        self.check_version()?;
        if &self.job_id != job || self.checkpoint_id != id {
            return Err(CoreError::InconsistentMetadata(format!(
                "found job {} checkpoint {} where job {job} checkpoint {id} belongs",
                self.job_id, self.checkpoint_id
            )));
        }
        for file in self.files() {
            let path = file.state_path()?;
            if path.checkpoint().is_some_and(|owner| owner != id) {
                return Err(CoreError::InconsistentMetadata(format!(
                    "state file {:?} belongs to another checkpoint than {id}",
                    file.path
                )));
            }
            check_local_name(file)?;
        }
        Ok(())
    }

    /// Checks a savepoint's metadata: known version, and every file a clean
    /// path relative to the savepoint's folder.
    pub fn verify_savepoint(&self) -> Result<(), CoreError> {
        self.check_version()?;
        self.check_files(&[""])
    }

    fn check_version(&self) -> Result<(), CoreError> {
        if self.version != METADATA_VERSION {
            return Err(CoreError::UnsupportedMetadataVersion {
                found: self.version,
                supported: METADATA_VERSION,
            });
        }
        Ok(())
    }

    fn check_files(&self, prefixes: &[&str]) -> Result<(), CoreError> {
        for file in self.files() {
            let under = prefixes.iter().any(|p| file.path.starts_with(p));
            let clean = file
                .path
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
            if !under || !clean {
                return Err(CoreError::InconsistentMetadata(format!(
                    "state file {:?} lies outside {}",
                    file.path,
                    prefixes.join(" and ")
                )));
            }
            check_local_name(file)?;
        }
        Ok(())
    }
}

/// The name a state file gets in a local RocksDB directory: one segment.
fn check_local_name(file: &StateFile) -> Result<(), CoreError> {
    let n = &file.local_name;
    if n.is_empty() || n.contains('/') || n == "." || n == ".." {
        return Err(CoreError::InconsistentMetadata(format!(
            "state file {:?} has a bad local name {n:?}",
            file.path
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OperatorId;

    fn meta(path: &str) -> CheckpointMetadata {
        CheckpointMetadata {
            version: METADATA_VERSION,
            job_id: JobId::new("j").unwrap(),
            checkpoint_id: CheckpointId(3),
            checkpoint_type: CheckpointType::Full,
            trigger_timestamp: 1,
            complete_timestamp: 2,
            parallelism: 1,
            max_parallelism: 128,
            writer_epoch: None,
            subtasks: vec![SubtaskState {
                files: vec![StateFile {
                    path: path.into(),
                    local_name: "x.sst".into(),
                    size: 1,
                    crc32c: 0,
                }],
                state_size: 1,
                checkpointed_size: 1,
                files_uploaded: 1,
                ack_timestamp: 2,
                ..SubtaskState::empty(TaskId::new(&OperatorId::new("agg").unwrap(), 0))
            }],
        }
    }

    #[test]
    fn verify_checks_paths_and_ids() {
        let job = JobId::new("j").unwrap();
        assert!(meta("chk-3/agg/0/x.sst")
            .verify(&job, CheckpointId(3))
            .is_ok());
        assert!(meta("shared/agg/0/x.sst")
            .verify(&job, CheckpointId(3))
            .is_ok());
        assert!(meta("chk-2/agg/0/x.sst")
            .verify(&job, CheckpointId(3))
            .is_err());
        assert!(meta("chk-3/../x").verify(&job, CheckpointId(3)).is_err());
        assert!(meta("chk-3/agg/0/x.sst")
            .verify(&job, CheckpointId(4))
            .is_err());
        let mut m = meta("chk-3/a");
        m.version = 99;
        assert!(matches!(
            m.verify(&job, CheckpointId(3)),
            Err(CoreError::UnsupportedMetadataVersion { found: 99, .. })
        ));
    }
}
