//! [`WorkDir`]: a job's local working directory (RocksDB instances, scratch
//! files), owned by one process at a time.
//!
//! Invariants:
//! - Two processes never share one: taking it locks `{dir}/.lock`
//!   exclusively (an OS file lock, released when the process dies, so a
//!   `kill -9` leaves no stale lock); a second taker gets
//!   [`JobError::WorkDirInUse`].
//! - Every run and every attempt starts from an empty directory: taking
//!   the directory removes whatever a killed run left in it, and each
//!   attempt's folder is created fresh. Local state is only ever what this
//!   attempt restored or built, never a killed run's RocksDB.
//! - Only a work dir is emptied: a directory that holds files but no
//!   `.lock` (not one cutpoint made) is refused, never wiped.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::JobError;

const LOCK_NAME: &str = ".lock";

/// A locked, emptied working directory.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    /// Held for the lock's sake until the job ends.
    _lock: File,
}

fn io(path: &Path, e: std::io::Error) -> JobError {
    JobError::WorkDir {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl WorkDir {
    /// Locks `path` (created if missing) and removes what it holds.
    /// Blocking: call from a blocking context.
    pub fn take(path: &Path) -> Result<Self, JobError> {
        std::fs::create_dir_all(path).map_err(|e| io(path, e))?;
        let lock_path = path.join(LOCK_NAME);
        let ours = lock_path.exists()
            || std::fs::read_dir(path)
                .map_err(|e| io(path, e))?
                .next()
                .is_none();
        if !ours {
            return Err(JobError::WorkDir {
                path: path.display().to_string(),
                reason: "it holds files but is not a cutpoint work dir (no .lock): pass a new or empty directory".into(),
            });
        }
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JobError::WorkDirInUse {
                    path: path.display().to_string(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path, e)),
        }
        for entry in std::fs::read_dir(path).map_err(|e| io(path, e))? {
            let entry = entry.map_err(|e| io(path, e))?;
            if entry.file_name() == LOCK_NAME {
                continue;
            }
            let p = entry.path();
            let removed = if entry.file_type().map_err(|e| io(&p, e))?.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            removed.map_err(|e| io(&p, e))?;
            tracing::info!(path = %p.display(), "removed what an earlier run left in the work dir");
        }
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An empty folder for attempt `n` (removed and created again if an
    /// earlier attempt of this run left it). Blocking.
    pub fn attempt(&self, n: u32) -> Result<PathBuf, JobError> {
        let dir = self.path.join(format!("attempt-{n}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_not_a_work_dir_is_never_wiped() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("notes.txt"), b"mine").unwrap();
        assert!(matches!(
            WorkDir::take(d.path()),
            Err(JobError::WorkDir { .. })
        ));
        assert!(d.path().join("notes.txt").exists());
    }

    #[test]
    fn one_owner_and_an_empty_start() {
        let d = tempfile::tempdir().unwrap();
        // What a killed run leaves: its lock file and its state.
        std::fs::write(d.path().join(LOCK_NAME), b"").unwrap();
        let leftover = d.path().join("attempt-0/agg-0/db");
        std::fs::create_dir_all(&leftover).unwrap();
        std::fs::write(leftover.join("CURRENT"), b"MANIFEST-000005").unwrap();
        std::fs::write(d.path().join("stray"), b"x").unwrap();
        let w = WorkDir::take(d.path()).unwrap();
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![".lock"], "a killed run's files are gone");
        assert!(matches!(
            WorkDir::take(d.path()),
            Err(JobError::WorkDirInUse { .. })
        ));
        let a = w.attempt(0).unwrap();
        std::fs::write(a.join("f"), b"1").unwrap();
        let again = w.attempt(0).unwrap();
        assert_eq!(std::fs::read_dir(&again).unwrap().count(), 0);
        drop(w);
        assert!(WorkDir::take(d.path()).is_ok(), "released with its owner");
    }
}
