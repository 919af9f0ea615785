//! The layout of a job's folder, relative to it: the one place its names
//! are formatted and parsed. (`cutpoint-storage`'s `paths` module turns
//! these relative names into object paths under a storage root; nothing
//! else formats a checkpoint path.)
//!
//! ```text
//! job.json                                   the job spec
//! _writer/{epoch:020}                        writer leases (one writer per job)
//! chk-{n}/_metadata                          a checkpoint's metadata, written last
//! chk-{n}/{operator}/{subtask}/{file}        files only checkpoint n needs
//!                                            (RocksDB's MANIFEST/CURRENT/OPTIONS, a full
//!                                            checkpoint's SSTs, channel-state.jsonl)
//! shared/{operator}/{subtask}/{file}         SSTs shared by incremental checkpoints
//! ```
//!
//! A savepoint's folder (`{root}/savepoints/{id}/`) holds `_metadata` and
//! its files at `{operator}/{subtask}/{file}` (copied from `chk-{n}/`) and
//! `shared/{operator}/{subtask}/{file}`.

use crate::{CheckpointId, CoreError, OperatorId, SubtaskIndex};

/// Prefix of every checkpoint folder name.
pub const CHECKPOINT_PREFIX: &str = "chk-";
/// Name of the metadata object (of a checkpoint or a savepoint).
pub const METADATA_NAME: &str = "_metadata";
/// Folder of the files shared by incremental checkpoints.
pub const SHARED_DIR: &str = "shared";
/// Folder of the writer leases.
pub const WRITERS_DIR: &str = "_writer";
/// The job spec beside the checkpoints.
pub const JOB_SPEC: &str = "job.json";

/// `chk-{n}`.
pub fn checkpoint_dir(id: CheckpointId) -> String {
    format!("{CHECKPOINT_PREFIX}{}", id.0)
}

/// `chk-{n}/_metadata`.
pub fn metadata(id: CheckpointId) -> String {
    format!("{}/{METADATA_NAME}", checkpoint_dir(id))
}

/// `_writer/{epoch:020}`.
pub fn writer_lease(epoch: u64) -> String {
    format!("{WRITERS_DIR}/{epoch:020}")
}

/// Parses `chk-{n}` into `n`.
pub fn parse_checkpoint_dir(name: &str) -> Option<CheckpointId> {
    name.strip_prefix(CHECKPOINT_PREFIX)?.parse().ok()
}

/// Parses a writer lease's name (`{epoch:020}`).
pub fn parse_writer_epoch(name: &str) -> Option<u64> {
    (name.len() == 20).then(|| name.parse().ok())?
}

/// A state file name: 1–255 characters of `[A-Za-z0-9._-]`, not `.`/`..`.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Where a state file lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateScope {
    /// `chk-{n}/…`: owned by checkpoint `n`, deleted with it.
    Checkpoint(CheckpointId),
    /// `shared/…`: referenced by any number of checkpoints.
    Shared,
}

impl StateScope {
    /// The folder (`chk-{n}` or `shared`).
    pub fn dir(self) -> String {
        match self {
            StateScope::Checkpoint(id) => checkpoint_dir(id),
            StateScope::Shared => SHARED_DIR.to_string(),
        }
    }

    /// `{dir}/{operator}/{subtask}/`: where one subtask's files of this
    /// scope go.
    pub fn prefix(self, operator: &OperatorId, subtask: SubtaskIndex) -> String {
        format!("{}/{operator}/{subtask}/", self.dir())
    }
}

/// `{scope}/{operator}/{subtask}/{name}`. Panics on a file name outside
/// `[A-Za-z0-9._-]`: names come from RocksDB or from cutpoint, never from
/// users (user input goes through [`StatePath::parse`]).
pub fn state_file(
    scope: StateScope,
    operator: &OperatorId,
    subtask: SubtaskIndex,
    name: &str,
) -> String {
    assert!(valid_file_name(name), "invalid state file name {name:?}");
    format!("{}{name}", scope.prefix(operator, subtask))
}

/// A state file's path relative to its job folder, checked: its scope, its
/// operator and subtask, its file name. A view of the string stored in
/// metadata (`StateFile::path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatePath<'a> {
    pub scope: StateScope,
    pub operator: &'a str,
    pub subtask: u32,
    pub name: &'a str,
}

impl<'a> StatePath<'a> {
    /// Parses `chk-{n}/{op}/{subtask}/{name}` or
    /// `shared/{op}/{subtask}/{name}` (and `chk-{n}/shared/{op}/{subtask}/
    /// {name}`, a savepoint's shared file as earlier releases imported it:
    /// owned by checkpoint `n`); anything else is an error naming it.
    pub fn parse(path: &'a str) -> Result<Self, CoreError> {
        let bad =
            |why: &str| CoreError::InconsistentMetadata(format!("state file path {path:?}: {why}"));
        let mut parts: Vec<&str> = path.split('/').collect();
        if parts.len() == 5 && parts[1] == SHARED_DIR && parse_checkpoint_dir(parts[0]).is_some() {
            parts.remove(1);
        }
        let [dir, operator, subtask, name] = parts[..] else {
            return Err(bad("expected {chk-N|shared}/{operator}/{subtask}/{file}"));
        };
        let scope = match (dir, parse_checkpoint_dir(dir)) {
            (SHARED_DIR, _) => StateScope::Shared,
            (_, Some(id)) => StateScope::Checkpoint(id),
            _ => return Err(bad("not under chk-N/ or shared/")),
        };
        OperatorId::new(operator).map_err(|e| bad(&e.to_string()))?;
        let subtask = subtask
            .parse()
            .map_err(|_| bad("subtask is not a number"))?;
        if !valid_file_name(name) {
            return Err(bad("file names may only contain [A-Za-z0-9._-]"));
        }
        Ok(StatePath {
            scope,
            operator,
            subtask,
            name,
        })
    }

    pub fn is_shared(&self) -> bool {
        self.scope == StateScope::Shared
    }

    /// The checkpoint that owns it (`None` for a shared file).
    pub fn checkpoint(&self) -> Option<CheckpointId> {
        match self.scope {
            StateScope::Checkpoint(id) => Some(id),
            StateScope::Shared => None,
        }
    }
}

/// Where a checkpoint's state file goes in a savepoint of it:
/// `{op}/{subtask}/{name}` for the checkpoint's own files,
/// `shared/{op}/{subtask}/{name}` for shared ones.
pub fn in_savepoint(path: &StatePath<'_>) -> String {
    let own = format!("{}/{}/{}", path.operator, path.subtask, path.name);
    match path.scope {
        StateScope::Shared => format!("{SHARED_DIR}/{own}"),
        StateScope::Checkpoint(_) => own,
    }
}

/// A savepoint's file (`{op}/{subtask}/{name}` or `shared/…`) imported as
/// a file of checkpoint `id`: `chk-{id}/{op}/{subtask}/{name}` (shared
/// files' names are unique, so they cannot collide with its own).
pub fn imported(in_savepoint: &str, id: CheckpointId) -> Result<String, CoreError> {
    let own = in_savepoint
        .strip_prefix(SHARED_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(in_savepoint);
    let path = format!("{}/{own}", checkpoint_dir(id));
    StatePath::parse(&path)?;
    Ok(path)
}

/// Whether a relative path lies under `shared/` (for paths that may not be
/// state files, such as listings).
pub fn is_shared(path: &str) -> bool {
    path.strip_prefix(SHARED_DIR)
        .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_parsing_agree() {
        let op = OperatorId::new("agg").unwrap();
        let p = state_file(
            StateScope::Checkpoint(CheckpointId(7)),
            &op,
            SubtaskIndex(1),
            "MANIFEST-5",
        );
        assert_eq!(p, "chk-7/agg/1/MANIFEST-5");
        let parsed = StatePath::parse(&p).unwrap();
        assert_eq!(parsed.checkpoint(), Some(CheckpointId(7)));
        assert_eq!(
            (parsed.operator, parsed.subtask, parsed.name),
            ("agg", 1, "MANIFEST-5")
        );
        let s = state_file(StateScope::Shared, &op, SubtaskIndex(0), "x.sst");
        assert!(StatePath::parse(&s).unwrap().is_shared() && is_shared(&s));
        assert_eq!(metadata(CheckpointId(3)), "chk-3/_metadata");
        assert_eq!(writer_lease(2), "_writer/00000000000000000002");
        assert_eq!(parse_writer_epoch("00000000000000000002"), Some(2));
        assert_eq!(parse_checkpoint_dir("chk-12"), Some(CheckpointId(12)));
        assert_eq!(parse_checkpoint_dir("chk-x"), None);
        assert!(!is_shared("sharedx/a") && !is_shared("chk-1/shared/a"));
    }

    #[test]
    fn savepoints_copy_and_import_keep_the_layout() {
        let own = StatePath::parse("chk-4/agg/1/MANIFEST-9").unwrap();
        let shared = StatePath::parse("shared/agg/1/000008-ab12.sst").unwrap();
        assert_eq!(in_savepoint(&own), "agg/1/MANIFEST-9");
        assert_eq!(in_savepoint(&shared), "shared/agg/1/000008-ab12.sst");
        let id = CheckpointId(1001);
        assert_eq!(
            imported("agg/1/MANIFEST-9", id).unwrap(),
            "chk-1001/agg/1/MANIFEST-9"
        );
        assert_eq!(
            imported("shared/agg/1/000008-ab12.sst", id).unwrap(),
            "chk-1001/agg/1/000008-ab12.sst"
        );
        assert!(imported("../../x", id).is_err());
        // What earlier releases wrote for an imported shared file.
        let legacy = StatePath::parse("chk-7/shared/agg/0/x.sst").unwrap();
        assert_eq!(legacy.checkpoint(), Some(CheckpointId(7)));
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in [
            "chk-3/../x/y",
            "chk-x/agg/0/a",
            "other/agg/0/a",
            "shared/agg/0",
            "shared/agg/0/a/b",
            "shared/agg/zero/a",
            "shared/a g/0/x",
            "shared/agg/0/..",
        ] {
            assert!(StatePath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    #[should_panic]
    fn bad_file_names_panic() {
        state_file(
            StateScope::Shared,
            &OperatorId::new("agg").unwrap(),
            SubtaskIndex(0),
            "../x",
        );
    }
}
