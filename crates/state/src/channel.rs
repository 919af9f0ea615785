//! Channel state of unaligned checkpoints: the records that were in flight
//! before barrier `n` on a subtask's inputs when it snapshotted. They are
//! written as JSON lines (`{"input":…,"key":…,"value":…}`, plus `"ts":…`
//! for a record with an event time; the input being
//! the job-wide source partition it came from, the value in its JSON form) into the checkpoint's own
//! folder (`chk-{n}/{op}/{subtask}/channel-state.jsonl`, so they go with the
//! checkpoint), verified like every state file when read back, and filtered
//! by key group on restore — records carry their keys, so a rescaled
//! subtask replays exactly the in-flight records of the keys it now owns.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use cutpoint_core::{keygroup, JobId, Key, KeyGroupRange, Record, StateFile, SubtaskState, Value};
use cutpoint_storage::{CheckpointStorage, StateScope, StorageError};

use crate::snapshot::SnapshotTarget;
use crate::StateError;

/// The file name of a subtask's channel state in its checkpoint folder.
pub const CHANNEL_STATE_FILE: &str = "channel-state.jsonl";

/// Writes `records` to `scratch` and uploads them as the channel state of
/// `target`; `None` when nothing was in flight. Runs the upload on `rt`;
/// call it from a plain thread. Stops with [`StateError::Cancelled`] when
/// `cancel` fires (the checkpoint was aborted), after deleting what the
/// upload may have written.
pub fn upload_channel_state(
    rt: &tokio::runtime::Handle,
    target: &SnapshotTarget<'_>,
    records: &[(u32, Record)],
    scratch: &Path,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Option<StateFile>, StateError> {
    if records.is_empty() {
        return Ok(None);
    }
    std::fs::create_dir_all(scratch).map_err(|e| StateError::io(scratch, e))?;
    let local = scratch.join(format!("channel-state-{}.jsonl", target.checkpoint.0));
    let write = || -> std::io::Result<()> {
        let mut w = BufWriter::new(std::fs::File::create(&local)?);
        for (input, r) in records {
            let line = match r.time() {
                None => serde_json::json!({"input": input, "key": r.key, "value": r.value}),
                Some(ts) => {
                    serde_json::json!({"input": input, "key": r.key, "value": r.value, "ts": ts})
                }
            };
            serde_json::to_writer(&mut w, &line)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    };
    write().map_err(|e| StateError::io(&local, e))?;
    let scope = StateScope::Checkpoint(target.checkpoint);
    let uploaded = rt.block_on(async {
        let upload = target.storage.upload_file(
            target.job,
            scope,
            target.operator,
            target.subtask,
            &local,
            CHANNEL_STATE_FILE,
        );
        tokio::select! {
            r = upload => r.map_err(StateError::from),
            _ = cancel.cancelled() => {
                let relative = cutpoint_storage::JobPaths::state_file_relative(
                    scope, target.operator, target.subtask, CHANNEL_STATE_FILE);
                let _ = target.storage.delete_state_file(target.job, &relative).await;
                Err(StateError::Cancelled)
            }
        }
    });
    let _ = std::fs::remove_file(&local);
    Ok(Some(uploaded?))
}

/// One line of a channel-state file.
#[derive(serde::Deserialize)]
struct Line {
    input: u32,
    key: Key,
    value: Value,
    #[serde(default)]
    ts: Option<i64>,
}

/// The in-flight records (with their input) of the checkpoint `old`
/// describes that belong to `range`, in the order they were received per
/// old subtask.
pub fn read_channel_state(
    rt: &tokio::runtime::Handle,
    storage: &CheckpointStorage,
    job: &JobId,
    old: &[SubtaskState],
    range: KeyGroupRange,
    scratch: &Path,
    max_parallelism: u32,
) -> Result<Vec<(u32, Record)>, StateError> {
    let mut out = Vec::new();
    let files = old
        .iter()
        .filter(|s| s.key_group_range.is_some_and(|r| r.intersects(&range)))
        .flat_map(|s| &s.channel_state);
    for (i, file) in files.enumerate() {
        let dir = scratch.join(format!("channel-state-{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| StateError::io(&dir, e))?;
        rt.block_on(storage.download_verified(job, file, &dir))?;
        let local = dir.join(&file.local_name);
        let f = std::fs::File::open(&local).map_err(|e| StateError::io(&local, e))?;
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| StateError::io(&local, e))?;
            let bad = |why: String| {
                StateError::Storage(StorageError::CorruptChannelState {
                    path: file.path.clone(),
                    line: n + 1,
                    reason: why,
                })
            };
            let Line {
                input,
                key,
                value,
                ts,
            } = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
            if range.contains(keygroup::key_group(key.stable_hash(), max_parallelism)) {
                out.push((
                    input,
                    Record::new(key, value).at(ts.unwrap_or(Record::NO_TIME)),
                ));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(out)
}
