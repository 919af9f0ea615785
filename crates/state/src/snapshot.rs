//! Moving RocksDB checkpoints to and from checkpoint storage.
//!
//! Upload: every file of a local RocksDB checkpoint goes, create-only, under
//! `chk-{n}/{operator}/{subtask}/`; uploads run in parallel (bounded) and
//! stop when the checkpoint is aborted. If the upload fails or is cancelled,
//! the files it may have written are deleted before returning, so an aborted
//! snapshot leaves nothing behind.
//!
//! Restore: a subtask's files are downloaded into a fresh directory and
//! verified (size + CRC32C) before RocksDB opens them; the working table is
//! then loaded from the key-group range the subtask owns. Restoring at a
//! different parallelism merges the ranges of every old subtask that
//! intersects the new range.

use std::path::{Path, PathBuf};

use cutpoint_core::{
    CheckpointId, JobId, KeyGroupRange, OperatorId, StateFile, SubtaskIndex, SubtaskState,
};
use cutpoint_storage::{CheckpointStorage, StateScope};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::{FrozenDelta, RocksStore, StateError, StateTable};

/// Parallel uploads per subtask snapshot.
pub const UPLOAD_CONCURRENCY: usize = 4;
/// Parallel downloads per subtask restore.
pub const DOWNLOAD_CONCURRENCY: usize = 8;

/// Who the files belong to.
#[derive(Debug, Clone)]
pub struct SnapshotTarget<'a> {
    pub storage: &'a CheckpointStorage,
    pub job: &'a JobId,
    pub operator: &'a OperatorId,
    pub subtask: SubtaskIndex,
    pub checkpoint: CheckpointId,
}

/// Uploads every file of `dir` (a local RocksDB checkpoint) and returns
/// their handles, sorted by path.
pub async fn upload_dir(
    target: &SnapshotTarget<'_>,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<Vec<StateFile>, StateError> {
    let mut files = Vec::new();
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| StateError::io(dir, e))?;
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| StateError::io(dir, e))?
    {
        files.push(entry.path());
    }
    files.sort();
    let scope = StateScope::Checkpoint(target.checkpoint);
    let uploads = futures::stream::iter(files.iter().map(|path| {
        target
            .storage
            .upload_file(target.job, scope, target.operator, target.subtask, path)
    }))
    .buffer_unordered(UPLOAD_CONCURRENCY)
    .try_collect::<Vec<_>>();
    let result = tokio::select! {
        r = uploads => r.map_err(StateError::from),
        _ = cancel.cancelled() => Err(StateError::Cancelled),
    };
    match result {
        Ok(mut handles) => {
            handles.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(handles)
        }
        Err(e) => {
            // Remove whatever may have landed; the orphan sweep catches the rest.
            for path in &files {
                if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                    let rel = cutpoint_storage::JobPaths::state_file_relative(
                        scope,
                        target.operator,
                        target.subtask,
                        name,
                    );
                    let _ = target.storage.delete_state_file(target.job, &rel).await;
                }
            }
            Err(e)
        }
    }
}

/// Downloads and verifies `files` into `dir` (created if needed).
pub async fn download_files(
    storage: &CheckpointStorage,
    job: &JobId,
    files: &[StateFile],
    dir: &Path,
) -> Result<(), StateError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| StateError::io(dir, e))?;
    futures::stream::iter(files.iter().map(|f| storage.download_verified(job, f, dir)))
        .buffer_unordered(DOWNLOAD_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// A restored keyed subtask: its RocksDB instance and its loaded table.
pub struct RestoredState {
    pub store: RocksStore,
    pub table: StateTable,
}

/// Where a keyed subtask keeps its local files.
#[derive(Debug, Clone)]
pub struct LocalDirs {
    pub db: PathBuf,
    pub scratch: PathBuf,
}

/// Opens an empty state for a fresh start.
pub fn open_empty(dirs: &LocalDirs, max_parallelism: u32) -> Result<RestoredState, StateError> {
    Ok(RestoredState {
        store: RocksStore::open(&dirs.db, &dirs.scratch, max_parallelism)?,
        table: StateTable::new(),
    })
}

/// Restores the state of the subtask owning `range` from the old subtasks'
/// handles. Runs downloads on `rt`; call it from a plain thread.
pub fn restore(
    rt: &tokio::runtime::Handle,
    storage: &CheckpointStorage,
    job: &JobId,
    old: &[SubtaskState],
    range: KeyGroupRange,
    dirs: &LocalDirs,
    max_parallelism: u32,
) -> Result<RestoredState, StateError> {
    let intersecting: Vec<&SubtaskState> = old
        .iter()
        .filter(|s| s.key_group_range.is_some_and(|r| r.intersects(&range)))
        .collect();
    let exact = intersecting.len() == 1 && intersecting[0].key_group_range == Some(range);
    let store = if exact {
        rt.block_on(download_files(
            storage,
            job,
            &intersecting[0].files,
            &dirs.db,
        ))?;
        RocksStore::open(&dirs.db, &dirs.scratch, max_parallelism)?
    } else {
        let mut store = RocksStore::open(&dirs.db, &dirs.scratch, max_parallelism)?;
        let mut merged = FrozenDelta::default();
        for (i, s) in intersecting.iter().enumerate() {
            let tmp = dirs.scratch.join(format!("restore-{i}"));
            rt.block_on(download_files(storage, job, &s.files, &tmp))?;
            let old_db = RocksStore::open(
                &tmp,
                &dirs.scratch.join(format!("restore-{i}-scratch")),
                max_parallelism,
            )?;
            old_db.scan(range, |k, v| {
                merged.entries.insert(k, v);
            })?;
            drop(old_db);
            let _ = std::fs::remove_dir_all(&tmp);
        }
        store.apply(merged)?;
        store
    };
    let mut table = StateTable::new();
    store.scan(range, |k, v| table.load(k, v))?;
    Ok(RestoredState { store, table })
}
