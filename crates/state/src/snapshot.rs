//! Moving RocksDB checkpoints to and from checkpoint storage.
//!
//! Upload ([`upload_snapshot`]): incremental snapshots upload only the SST
//! files no completed checkpoint holds yet (to `shared/`), and reference the
//! rest; small mutable files (MANIFEST, CURRENT, OPTIONS) go under
//! `chk-{n}/{operator}/{subtask}/`. Uploads run in parallel (bounded) and
//! stop when the checkpoint is aborted. If the upload fails or is cancelled,
//! the files it may have written are deleted before returning, so an aborted
//! snapshot leaves nothing behind (a crash is handled by the orphan sweep).
//!
//! Restore: a subtask's files are downloaded into a fresh directory and
//! verified (size + CRC32C) before RocksDB opens them; the working table is
//! then loaded from the key-group range the subtask owns. Restoring at a
//! different parallelism merges the ranges of every old subtask that
//! intersects the new range.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cutpoint_core::{
    CheckpointId, CheckpointType, JobId, KeyGroupRange, OperatorId, StateFile, SubtaskIndex,
    SubtaskState,
};
use cutpoint_storage::{CheckpointStorage, JobPaths, StateScope};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::{Residency, RocksStore, StateError, StateTable};

/// Parallel uploads per subtask snapshot.
pub const UPLOAD_CONCURRENCY: usize = 4;
/// How long a cancelled upload waits for puts already under way.
pub const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
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

/// Shared files that completed checkpoints already hold, by the name of the
/// local SST file they were uploaded from. Only these may be reused.
pub type ConfirmedFiles = HashMap<String, StateFile>;

/// What an upload stored for one subtask snapshot.
#[derive(Debug, Clone, Default)]
pub struct UploadedSnapshot {
    /// Every file a restore of this snapshot needs, sorted by path.
    pub files: Vec<StateFile>,
    pub uploaded_bytes: u64,
    pub uploaded_files: u32,
    pub reused_files: u32,
    /// Relative paths of the files this upload wrote (not the reused ones):
    /// what to delete if the snapshot is not acknowledged after all.
    pub uploaded_paths: Vec<String>,
}

impl UploadedSnapshot {
    pub fn state_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// The shared files among `files`, keyed by local name.
pub fn shared_files(files: &[StateFile]) -> ConfirmedFiles {
    files
        .iter()
        .filter(|f| f.is_shared())
        .map(|f| (f.local_name.clone(), f.clone()))
        .collect()
}

/// What happens to one file of a local RocksDB checkpoint.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// A completed checkpoint holds it already: reference that.
    Reuse(StateFile),
    Upload {
        local: PathBuf,
        scope: StateScope,
        remote: String,
    },
}

/// The upload plan (pure) for the files `(name, local path, size)` of a
/// RocksDB checkpoint: incremental — an SST that `confirmed` holds with the
/// same name and size is reused, any other SST goes to `shared/` under a
/// fresh unique name; everything else (and everything of a full
/// checkpoint) goes to `own` under its own name.
fn plan(
    files: Vec<(String, PathBuf, u64)>,
    checkpoint_type: CheckpointType,
    confirmed: &ConfirmedFiles,
    own: StateScope,
) -> Vec<Plan> {
    files
        .into_iter()
        .map(|(name, local, size)| {
            let is_sst = name.ends_with(".sst");
            if checkpoint_type == CheckpointType::Incremental && is_sst {
                match confirmed.get(&name) {
                    Some(h) if h.size == size => Plan::Reuse(h.clone()),
                    _ => {
                        let stem = name.trim_end_matches(".sst");
                        let remote = format!("{stem}-{}.sst", uuid::Uuid::new_v4().simple());
                        Plan::Upload {
                            local,
                            scope: StateScope::Shared,
                            remote,
                        }
                    }
                }
            } else {
                Plan::Upload {
                    local,
                    scope: own,
                    remote: name,
                }
            }
        })
        .collect()
}

/// Stores the local RocksDB checkpoint in `dir`.
///
/// Incremental: SST files already held by a completed checkpoint
/// (`confirmed`, same name and size) are referenced, not uploaded; new SST
/// files go to `shared/{op}/{subtask}/{name}-{uuid}.sst`; everything else
/// (MANIFEST, CURRENT, OPTIONS) to `chk-{n}/{op}/{subtask}/`. Full: every
/// file under `chk-{n}/`, so the checkpoint references no shared file.
pub async fn upload_snapshot(
    target: &SnapshotTarget<'_>,
    dir: &Path,
    checkpoint_type: CheckpointType,
    confirmed: &ConfirmedFiles,
    cancel: &CancellationToken,
) -> Result<UploadedSnapshot, StateError> {
    let mut names = Vec::new();
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| StateError::io(dir, e))?;
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| StateError::io(dir, e))?
    {
        let size = entry
            .metadata()
            .await
            .map_err(|e| StateError::io(dir, e))?
            .len();
        let name = entry.file_name().to_string_lossy().into_owned();
        names.push((name, entry.path(), size));
    }
    names.sort();
    let plans = plan(
        names,
        checkpoint_type,
        confirmed,
        StateScope::Checkpoint(target.checkpoint),
    );
    let mut out = UploadedSnapshot::default();
    // Paths another writer had already created: never ours to delete.
    let theirs = std::sync::Mutex::new(std::collections::HashSet::new());
    let mut planned = Vec::new();
    let mut uploads = Vec::new();
    for plan in &plans {
        match plan {
            Plan::Reuse(h) => {
                out.reused_files += 1;
                out.files.push(h.clone());
            }
            Plan::Upload {
                local,
                scope,
                remote,
            } => {
                let relative =
                    JobPaths::state_file_relative(*scope, target.operator, target.subtask, remote);
                planned.push(relative.clone());
                let theirs = &theirs;
                let upload = target.storage.upload_file(
                    target.job,
                    *scope,
                    target.operator,
                    target.subtask,
                    local,
                    remote,
                );
                uploads.push(async move {
                    let r = upload.await;
                    if let Err(cutpoint_storage::StorageError::AlreadyExists { .. }) = &r {
                        theirs.lock().expect("theirs").insert(relative);
                    }
                    r
                });
            }
        }
    }
    let mut all = std::pin::pin!(futures::stream::iter(uploads)
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_collect::<Vec<_>>());
    let result = tokio::select! {
        r = &mut all => r.map_err(StateError::from),
        _ = cancel.cancelled() => {
            // Let puts already under way land (briefly) so the cleanup below
            // deletes them, instead of racing a write we can no longer see.
            let _ = tokio::time::timeout(CANCEL_GRACE, &mut all).await;
            Err(StateError::Cancelled)
        }
    };
    match result {
        Ok(handles) => {
            for h in handles {
                out.uploaded_files += 1;
                out.uploaded_bytes += h.size;
                out.uploaded_paths.push(h.path.clone());
                out.files.push(h);
            }
            out.files.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        }
        Err(e) => {
            // Remove whatever may have landed (but what existed before:
            // a create-only put that found it did not write it); the
            // orphan sweep catches the rest.
            let theirs = theirs.lock().expect("theirs").clone();
            planned.retain(|p| !theirs.contains(p));
            let _ = target
                .storage
                .delete_state_files(target.job, &planned)
                .await;
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
    let downloads: Vec<_> = files
        .iter()
        .map(|f| storage.download_verified(job, f, dir))
        .collect();
    futures::stream::iter(downloads)
        .buffer_unordered(DOWNLOAD_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// A restored keyed subtask: its RocksDB instance, its loaded table, and
/// the shared files its RocksDB files came from (reusable by the next
/// incremental snapshot).
pub struct RestoredState {
    pub store: RocksStore,
    pub table: StateTable,
    pub confirmed: ConfirmedFiles,
    /// Whether RocksDB holds entries the table does not (a lazy restore).
    pub residency: Residency,
}

/// Whether a restore loads the working table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableLoad {
    /// Every entry of the range into the table (state that fits memory).
    Eager,
    /// Nothing: the table starts empty and reads through from RocksDB, so
    /// a restore under a memory budget stays within it.
    Lazy,
}

/// Entries written per batch when a rescaled restore merges old subtasks.
const MERGE_BATCH: usize = 64 * 1024;

/// Where a keyed subtask keeps its local files.
#[derive(Debug, Clone)]
pub struct LocalDirs {
    pub db: PathBuf,
    pub scratch: PathBuf,
}

/// Fails unless `dir` is missing or empty: state is only ever what this
/// attempt restores or builds, never files an earlier process left.
fn ensure_empty(dir: &Path) -> Result<(), StateError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => match entries.count() {
            0 => Ok(()),
            _ => Err(StateError::NotEmpty {
                path: dir.display().to_string(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StateError::io(dir, e)),
    }
}

/// Opens an empty state for a fresh start (in a missing or empty `db`).
pub fn open_empty(dirs: &LocalDirs, max_parallelism: u32) -> Result<RestoredState, StateError> {
    ensure_empty(&dirs.db)?;
    Ok(RestoredState {
        store: RocksStore::open(&dirs.db, &dirs.scratch, max_parallelism)?,
        table: StateTable::new(),
        confirmed: ConfirmedFiles::new(),
        residency: Residency::AllInMemory,
    })
}

/// Restores the state of the subtask owning `range` from the old subtasks'
/// handles, loading the table as `load` says. Runs downloads on `rt`; call
/// it from a plain thread. Memory stays bounded by the batch size (plus
/// the table, if `Eager`): a rescaled restore streams the old subtasks'
/// entries into RocksDB in batches.
#[allow(clippy::too_many_arguments)]
pub fn restore(
    rt: &tokio::runtime::Handle,
    storage: &CheckpointStorage,
    job: &JobId,
    old: &[SubtaskState],
    range: KeyGroupRange,
    dirs: &LocalDirs,
    max_parallelism: u32,
    load: TableLoad,
) -> Result<RestoredState, StateError> {
    ensure_empty(&dirs.db)?;
    let intersecting: Vec<&SubtaskState> = old
        .iter()
        .filter(|s| s.key_group_range.is_some_and(|r| r.intersects(&range)))
        .collect();
    let exact = intersecting.len() == 1 && intersecting[0].key_group_range == Some(range);
    let mut confirmed = ConfirmedFiles::new();
    let store = if exact {
        rt.block_on(download_files(
            storage,
            job,
            &intersecting[0].files,
            &dirs.db,
        ))?;
        confirmed = shared_files(&intersecting[0].files);
        RocksStore::open(&dirs.db, &dirs.scratch, max_parallelism)?
    } else {
        let mut store = RocksStore::open(&dirs.db, &dirs.scratch, max_parallelism)?;
        for (i, s) in intersecting.iter().enumerate() {
            let tmp = dirs.scratch.join(format!("restore-{i}"));
            rt.block_on(download_files(storage, job, &s.files, &tmp))?;
            let old_db = RocksStore::open(
                &tmp,
                &dirs.scratch.join(format!("restore-{i}-scratch")),
                max_parallelism,
            )?;
            copy_range(&old_db, &mut store, range)?;
            drop(old_db);
            let _ = std::fs::remove_dir_all(&tmp);
        }
        store
    };
    let mut table = StateTable::new();
    if load == TableLoad::Eager {
        store.scan(range, |k, v| table.load(k, v))?;
    }
    Ok(RestoredState {
        store,
        table,
        confirmed,
        residency: match load {
            TableLoad::Lazy => Residency::PartlyOnDisk,
            _ => Residency::AllInMemory,
        },
    })
}

/// Copies the entries of `range` from `from` into `to`, in batches, as
/// raw bytes (any layout: integer state or typed state).
fn copy_range(
    from: &RocksStore,
    to: &mut RocksStore,
    range: KeyGroupRange,
) -> Result<(), StateError> {
    let mut batch = crate::typed::TypedDelta::default();
    from.scan_raw(range, |k, v| {
        batch.insert(k.to_vec(), Some(v.to_vec()));
        if batch.len() >= MERGE_BATCH {
            to.apply_entries(&std::mem::take(&mut batch))?;
        }
        Ok(())
    })?;
    to.apply_entries(&batch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(name: &str, size: u64) -> StateFile {
        StateFile {
            path: format!("shared/agg/0/{}-abc.sst", name.trim_end_matches(".sst")),
            local_name: name.into(),
            size,
            crc32c: 0,
        }
    }

    fn files() -> Vec<(String, PathBuf, u64)> {
        [
            "000007.sst",
            "000009.sst",
            "000010.sst",
            "MANIFEST-000011",
            "CURRENT",
        ]
        .iter()
        .map(|n| (n.to_string(), PathBuf::from(format!("/db/{n}")), 100))
        .collect()
    }

    #[test]
    fn incremental_reuses_confirmed_ssts_of_the_same_size_only() {
        let confirmed: ConfirmedFiles = [
            ("000007.sst".to_string(), handle("000007.sst", 100)),
            ("000009.sst".to_string(), handle("000009.sst", 99)),
        ]
        .into();
        let own = StateScope::Checkpoint(CheckpointId(4));
        let p = plan(files(), CheckpointType::Incremental, &confirmed, own);
        assert_eq!(p[0], Plan::Reuse(handle("000007.sst", 100)));
        for (i, name) in [(1, "000009"), (2, "000010")] {
            // Same name, other size (a new file with a reused number), or new.
            let Plan::Upload { scope, remote, .. } = &p[i] else {
                panic!("{:?}", p[i])
            };
            assert_eq!(*scope, StateScope::Shared);
            assert!(remote.starts_with(&format!("{name}-")) && remote.ends_with(".sst"));
        }
        for i in [3, 4] {
            let Plan::Upload { scope, remote, .. } = &p[i] else {
                panic!("{:?}", p[i])
            };
            assert_eq!((*scope, remote.as_str()), (own, files()[i].0.as_str()));
        }
    }

    #[test]
    fn full_uploads_everything_under_its_own_folder() {
        let confirmed: ConfirmedFiles =
            [("000007.sst".to_string(), handle("000007.sst", 100))].into();
        let own = StateScope::Checkpoint(CheckpointId(5));
        let p = plan(files(), CheckpointType::Full, &confirmed, own);
        assert!(p.iter().zip(files()).all(|(p, (name, _, _))| matches!(
            p,
            Plan::Upload { scope, remote, .. } if *scope == own && *remote == name
        )));
    }

    #[test]
    fn fresh_shared_names_never_repeat() {
        let none = ConfirmedFiles::new();
        let own = StateScope::Checkpoint(CheckpointId(1));
        let a = plan(files(), CheckpointType::Incremental, &none, own);
        let b = plan(files(), CheckpointType::Incremental, &none, own);
        assert_ne!(
            a[0], b[0],
            "a restore re-creating a file number gets a new object"
        );
    }
}
