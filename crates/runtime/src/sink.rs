//! Sinks chained into the aggregate task: each update `(key, value)`, one
//! JSON line `{"key":…,"value":…}` (the value in its JSON form).
//!
//! `discard`, `stdout` and `file` are not transactional: after a restore,
//! updates since the restored checkpoint are written again (at-least-once
//! output). Repeated, never torn: the `file` sink cuts a partial last line
//! (a crash in the middle of a write) before it appends, so every line of
//! its output is one whole record. `transactional_file` is a two-phase-commit sink
//! ([`TwoPhaseCommitSink`], [`TxnFileSink`]): exactly-once output.
//!
//! A job may have several sinks (`Sink::Fanout`): each gets every update;
//! a transaction records its sink's index, and a restore hands each sink
//! only its own ([`SinkRecovery::for_sink`]). The late records' sink
//! (`late_sink`, opened by the first keyed stage) is one more, its
//! transactions carrying `JobSpec::late_sink_index`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Stdout, Write};
use std::path::{Path, PathBuf};

use cutpoint_core::metadata::PendingTransaction;
use cutpoint_core::spec::{SinkSpec, Sinks};
use cutpoint_core::{CheckpointId, Key, Record, Value};

use crate::RuntimeError;

/// A sink that takes part in checkpoints with two-phase commit (Flink's
/// `TwoPhaseCommitSinkFunction`). The protocol, driven by the task:
///
/// 1. `write` updates into the current transaction;
/// 2. on barrier `n`: `pre_commit(n)` makes the transaction durable but
///    invisible and returns every transaction not yet committed — they are
///    stored in the snapshot;
/// 3. when checkpoint `n` completes: `commit_up_to(n)` makes transactions up
///    to `n` visible (idempotently);
/// 4. after a restore from checkpoint `r`, before the first write, the sink
///    commits what `r` pre-committed (idempotently) and aborts every other
///    transaction left behind that no restorable checkpoint names (for
///    [`TxnFileSink`]: in `open`, see [`SinkRecovery`]);
/// 5. at the end of the input: `finish` commits everything.
pub trait TwoPhaseCommitSink: Send {
    fn write(&mut self, key: &Key, value: &Value) -> Result<(), RuntimeError>;
    fn pre_commit(
        &mut self,
        checkpoint: CheckpointId,
    ) -> Result<Vec<PendingTransaction>, RuntimeError>;
    fn commit_up_to(&mut self, checkpoint: CheckpointId) -> Result<(), RuntimeError>;
    fn finish(&mut self) -> Result<(), RuntimeError>;
}

/// Staging files that restorable checkpoints name as pre-committed: a
/// restore of another checkpoint must keep them, or going back to those
/// checkpoints would fail (their transactions missing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StagingInUse {
    /// Exactly these handles.
    Only(std::collections::BTreeSet<String>),
    /// Unknown (a checkpoint's metadata cannot be read): keep every one.
    #[default]
    All,
}

impl StagingInUse {
    fn contains(&self, handle: &str) -> bool {
        match self {
            StagingInUse::Only(set) => set.contains(handle),
            StagingInUse::All => true,
        }
    }
}

/// What a sink recovers when it opens after a restore.
#[derive(Debug, Clone, Default)]
pub struct SinkRecovery {
    /// Transactions the restored checkpoint pre-committed that this subtask
    /// commits, each with the subtask that pre-committed it: a rescaled
    /// restore hands those of removed subtasks to the remaining ones
    /// (old subtask `j` to new subtask `j % parallelism`), so every one is
    /// committed exactly once, under its own name.
    pub adopted: Vec<(u32, PendingTransaction)>,
    /// The old subtasks whose leftover staging files this one cleans up.
    pub subtasks: Vec<u32>,
    /// Staging files never to delete.
    pub in_use: StagingInUse,
}

impl SinkRecovery {
    /// Subtask `subtask` of a job at `parallelism`, restored from `old`
    /// (the old subtasks' states) while `in_use` are kept.
    pub fn for_subtask(
        subtask: u32,
        parallelism: u32,
        old: &[cutpoint_core::SubtaskState],
        in_use: StagingInUse,
    ) -> Self {
        let mine = |j: u32| j == subtask || (j >= parallelism && j % parallelism == subtask);
        let mut subtasks: Vec<u32> = old
            .iter()
            .map(|s| s.task.subtask.0)
            .filter(|j| mine(*j))
            .collect();
        if !subtasks.contains(&subtask) {
            subtasks.push(subtask);
        }
        let adopted = old
            .iter()
            .filter(|s| mine(s.task.subtask.0))
            .flat_map(|s| {
                s.pending_transactions
                    .iter()
                    .map(move |t| (s.task.subtask.0, t.clone()))
            })
            .collect();
        Self {
            adopted,
            subtasks,
            in_use,
        }
    }

    /// What the sinks before index `n` recover (the job's `sink` list,
    /// without the late sink's transactions).
    pub fn below(&self, n: u32) -> Self {
        Self {
            adopted: self
                .adopted
                .iter()
                .filter(|(_, t)| t.sink < n)
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// What sink `sink` of a fan-out recovers: its own transactions.
    pub fn for_sink(&self, sink: u32) -> Self {
        Self {
            adopted: self
                .adopted
                .iter()
                .filter(|(_, t)| t.sink == sink)
                .cloned()
                .collect(),
            ..self.clone()
        }
    }
}

/// Where a keyed task's updates go (chained into its thread).
pub enum Sink {
    Discard,
    Stdout(BufWriter<Stdout>),
    File(BufWriter<File>),
    Transactional(Box<dyn TwoPhaseCommitSink>),
    /// Several sinks, each getting every update, in the spec's order; the
    /// transactions of sink `i` carry `sink: i`.
    Fanout(Vec<Sink>),
}

fn sink_err(path: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Sink(format!("{}: {e}", path.display()))
}

/// What a file sink's output directory holds: every update per key in the
/// files it made visible (`part-*`: the plain sink's, the two-phase-commit
/// sink's committed ones), and the names of every other file (staging).
#[derive(Debug, Default)]
pub struct FileOutput {
    pub updates: std::collections::BTreeMap<Key, Vec<Value>>,
    pub others: Vec<String>,
}

/// Reads a file sink's output directory (for checks and tools).
pub fn read_output(dir: &Path) -> Result<FileOutput, RuntimeError> {
    let mut out = FileOutput::default();
    for entry in std::fs::read_dir(dir).map_err(|e| sink_err(dir, e))? {
        let entry = entry.map_err(|e| sink_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("part-") {
            out.others.push(name);
            continue;
        }
        let path = entry.path();
        let text = std::fs::read_to_string(&path).map_err(|e| sink_err(&path, e))?;
        for line in text.lines() {
            let r: Record = serde_json::from_str(line).map_err(|e| sink_err(&path, e))?;
            out.updates.entry(r.key).or_default().push(r.value);
        }
    }
    Ok(out)
}

/// Truncates `path` after its last newline, so appending never glues a new
/// record to a torn one; returns the bytes cut (0 if the file is missing,
/// empty or whole).
fn cut_torn_tail(path: &Path) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    // Scan back from the end for the last newline.
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        f.set_len(end)?;
        f.sync_all()?;
    }
    Ok(len - end)
}

/// One line `{"key":…,"value":…}` (the value in its JSON form).
fn write_update(w: &mut dyn Write, key: &Key, value: &Value) -> std::io::Result<()> {
    match key {
        Key::Int(k) => writeln!(w, "{{\"key\":{k},\"value\":{value}}}"),
        Key::Str(s) => writeln!(
            w,
            "{{\"key\":{},\"value\":{value}}}",
            serde_json::Value::String(s.to_string())
        ),
    }
}

impl Sink {
    /// Opens the job's sinks for subtask `subtask` (one, or a fan-out),
    /// each recovering its own transactions of `recovery`.
    pub fn open_all(
        sinks: &Sinks,
        subtask: u32,
        recovery: &SinkRecovery,
    ) -> Result<Self, RuntimeError> {
        for (_, t) in &recovery.adopted {
            let owner = sinks.iter().nth(t.sink as usize);
            if !matches!(owner, Some(SinkSpec::TransactionalFile { .. })) {
                // As when a job's sink is replaced: nothing here commits it.
                tracing::warn!(
                    subtask,
                    checkpoint = t.checkpoint.0,
                    transaction = %t.handle,
                    sink = t.sink,
                    job_has = owner.map_or("no such sink", SinkSpec::kind),
                    "a pre-committed transaction's sink is not a transactional sink in this job: it is not committed (restore with the sinks listed as when the checkpoint was taken)"
                );
            }
        }
        let mut opened = sinks
            .iter()
            .enumerate()
            .map(|(i, spec)| Sink::open(spec, subtask, &recovery.for_sink(i as u32)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match opened.len() {
            1 => opened.pop().expect("one"),
            _ => Sink::Fanout(opened),
        })
    }

    /// Opens the sink of aggregate subtask `subtask`, recovering what
    /// `recovery` says (transactional sinks).
    pub fn open(
        spec: &SinkSpec,
        subtask: u32,
        recovery: &SinkRecovery,
    ) -> Result<Self, RuntimeError> {
        Ok(match spec {
            SinkSpec::Discard => Sink::Discard,
            SinkSpec::Stdout => Sink::Stdout(BufWriter::new(std::io::stdout())),
            SinkSpec::File { dir } => {
                std::fs::create_dir_all(dir).map_err(|e| sink_err(dir, e))?;
                let path = dir.join(format!("part-{subtask}.jsonl"));
                let cut = cut_torn_tail(&path).map_err(|e| sink_err(&path, e))?;
                if cut > 0 {
                    tracing::warn!(path = %path.display(), bytes = cut, "cut a partial last line (the previous run stopped mid-write)");
                }
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| sink_err(&path, e))?;
                Sink::File(BufWriter::with_capacity(256 * 1024, f))
            }
            SinkSpec::TransactionalFile { dir } => {
                Sink::Transactional(Box::new(TxnFileSink::open(dir, subtask, recovery)?))
            }
        })
    }

    #[inline]
    pub fn emit(&mut self, key: &Key, value: &Value) -> Result<(), RuntimeError> {
        let w: &mut dyn Write = match self {
            Sink::Discard => return Ok(()),
            Sink::Stdout(w) => w,
            Sink::File(w) => w,
            Sink::Transactional(t) => return t.write(key, value),
            Sink::Fanout(sinks) => return sinks.iter_mut().try_for_each(|s| s.emit(key, value)),
        };
        write_update(w, key, value).map_err(|e| RuntimeError::Sink(e.to_string()))
    }

    /// Synchronous snapshot phase: flush, and pre-commit if transactional.
    pub fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
    ) -> Result<Vec<PendingTransaction>, RuntimeError> {
        cutpoint_core::failpoint::check("sink::pre_commit")?;
        self.pre_commit(checkpoint)
    }

    fn pre_commit(
        &mut self,
        checkpoint: CheckpointId,
    ) -> Result<Vec<PendingTransaction>, RuntimeError> {
        match self {
            Sink::Transactional(t) => t.pre_commit(checkpoint),
            Sink::Fanout(sinks) => {
                let mut all = Vec::new();
                for (i, sink) in sinks.iter_mut().enumerate() {
                    let mine = sink.pre_commit(checkpoint)?;
                    all.extend(mine.into_iter().map(|t| PendingTransaction {
                        sink: i as u32,
                        ..t
                    }));
                }
                Ok(all)
            }
            _ => self.flush().map(|_| Vec::new()),
        }
    }

    /// Checkpoint `checkpoint` completed.
    pub fn checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<(), RuntimeError> {
        cutpoint_core::failpoint::check("sink::commit")?;
        self.commit_up_to(checkpoint)
    }

    fn commit_up_to(&mut self, checkpoint: CheckpointId) -> Result<(), RuntimeError> {
        match self {
            Sink::Transactional(t) => t.commit_up_to(checkpoint),
            Sink::Fanout(sinks) => sinks
                .iter_mut()
                .try_for_each(|s| s.commit_up_to(checkpoint)),
            _ => Ok(()),
        }
    }

    /// End of input: everything written becomes final.
    pub fn finish(&mut self) -> Result<(), RuntimeError> {
        match self {
            Sink::Transactional(t) => t.finish(),
            Sink::Fanout(sinks) => sinks.iter_mut().try_for_each(Sink::finish),
            _ => self.flush(),
        }
    }

    fn flush(&mut self) -> Result<(), RuntimeError> {
        let r = match self {
            Sink::Discard | Sink::Transactional(_) => Ok(()),
            Sink::Fanout(sinks) => return sinks.iter_mut().try_for_each(Sink::flush),
            Sink::Stdout(w) => w.flush(),
            Sink::File(w) => w.flush(),
        };
        r.map_err(|e| RuntimeError::Sink(e.to_string()))
    }
}

/// The transactional file sink: one staging file per epoch
/// (`.staging-{subtask}-{run}-{seq}.jsonl`, `run` unique per opening so no
/// two processes or attempts ever share a name; created create-only),
/// committed by an atomic rename to `part-{subtask}-{checkpoint:020}.jsonl`
/// (or `part-{subtask}-end-{run}.jsonl` for the epoch after the last
/// checkpoint at the end of the input). Readers see only `part-*` files.
pub struct TxnFileSink {
    dir: PathBuf,
    subtask: u32,
    run: String,
    seq: u64,
    staging: BufWriter<File>,
    staging_name: String,
    pending: Vec<PendingTransaction>,
}

impl TxnFileSink {
    /// Opens the sink of `subtask`: first commits the transactions the
    /// restored checkpoint pre-committed that it adopts and deletes the
    /// other staging files of the subtasks it covers that no restorable
    /// checkpoint names, then starts a fresh staging file.
    pub fn open(dir: &Path, subtask: u32, recovery: &SinkRecovery) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(dir).map_err(|e| sink_err(dir, e))?;
        Self::recover_dir(dir, recovery)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let run = format!("{nanos:x}{:08x}", std::process::id());
        let (staging, staging_name) = Self::new_staging(dir, subtask, &run, 0)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            subtask,
            run,
            seq: 0,
            staging,
            staging_name,
            pending: Vec::new(),
        })
    }

    fn new_staging(
        dir: &Path,
        subtask: u32,
        run: &str,
        seq: u64,
    ) -> Result<(BufWriter<File>, String), RuntimeError> {
        let name = format!(".staging-{subtask}-{run}-{seq}.jsonl");
        let path = dir.join(&name);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| sink_err(&path, e))?;
        Ok((BufWriter::with_capacity(256 * 1024, f), name))
    }

    /// Makes the current staging file durable.
    fn seal(&mut self) -> Result<(), RuntimeError> {
        let path = self.dir.join(&self.staging_name);
        self.staging.flush().map_err(|e| sink_err(&path, e))?;
        self.staging
            .get_ref()
            .sync_all()
            .map_err(|e| sink_err(&path, e))
    }

    /// Renames a staging file into the output, idempotently: a target that
    /// exists was committed before and is never replaced.
    fn commit(dir: &Path, handle: &str, target: &str) -> Result<(), RuntimeError> {
        let (from, to) = (dir.join(handle), dir.join(target));
        if to.exists() {
            return Ok(());
        }
        if !from.exists() {
            return Err(RuntimeError::MissingTransaction(format!(
                "pre-committed transaction {handle} is missing from {} and was never committed",
                dir.display()
            )));
        }
        std::fs::rename(&from, &to).map_err(|e| sink_err(&from, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| sink_err(dir, e))
    }

    fn committed_name(subtask: u32, checkpoint: CheckpointId) -> String {
        format!("part-{subtask}-{:020}.jsonl", checkpoint.0)
    }

    /// Commits the adopted transactions (each under the name of the
    /// subtask that pre-committed it) and deletes the covered subtasks'
    /// staging files that are not in use.
    fn recover_dir(dir: &Path, recovery: &SinkRecovery) -> Result<(), RuntimeError> {
        for (from, t) in &recovery.adopted {
            Self::commit(dir, &t.handle, &Self::committed_name(*from, t.checkpoint))?;
        }
        let prefixes: Vec<String> = recovery
            .subtasks
            .iter()
            .map(|s| format!(".staging-{s}-"))
            .collect();
        let entries = std::fs::read_dir(dir).map_err(|e| sink_err(dir, e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if prefixes.iter().any(|p| name.starts_with(p)) && !recovery.in_use.contains(&name) {
                std::fs::remove_file(e.path()).map_err(|err| sink_err(&e.path(), err))?;
            }
        }
        Ok(())
    }
}

impl TwoPhaseCommitSink for TxnFileSink {
    fn write(&mut self, key: &Key, value: &Value) -> Result<(), RuntimeError> {
        write_update(&mut self.staging, key, value).map_err(|e| RuntimeError::Sink(e.to_string()))
    }

    fn pre_commit(
        &mut self,
        checkpoint: CheckpointId,
    ) -> Result<Vec<PendingTransaction>, RuntimeError> {
        self.seal()?;
        self.pending.push(PendingTransaction {
            checkpoint,
            handle: self.staging_name.clone(),
            // A fan-out sets its place; alone, it is the first.
            sink: 0,
        });
        self.seq += 1;
        let (w, name) = Self::new_staging(&self.dir, self.subtask, &self.run, self.seq)?;
        self.staging = w;
        self.staging_name = name;
        Ok(self.pending.clone())
    }

    fn commit_up_to(&mut self, checkpoint: CheckpointId) -> Result<(), RuntimeError> {
        let (done, rest): (Vec<_>, Vec<_>) = self
            .pending
            .drain(..)
            .partition(|t| t.checkpoint <= checkpoint);
        self.pending = rest;
        for t in done {
            Self::commit(
                &self.dir,
                &t.handle,
                &Self::committed_name(self.subtask, t.checkpoint),
            )?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), RuntimeError> {
        self.seal()?;
        if let Some(id) = self.pending.last().map(|t| t.checkpoint) {
            self.commit_up_to(id)?;
        }
        let end = format!("part-{}-end-{}.jsonl", self.subtask, self.run);
        Self::commit(&self.dir, &self.staging_name, &end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Subtask 0 restoring its own `pending`, nothing else in use.
    fn own(pending: &[PendingTransaction]) -> SinkRecovery {
        SinkRecovery {
            adopted: pending.iter().map(|t| (0, t.clone())).collect(),
            subtasks: vec![0],
            in_use: StagingInUse::Only(Default::default()),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn two_phase_commit_lifecycle() {
        let d = tempfile::tempdir().unwrap();
        let mut s = TxnFileSink::open(d.path(), 0, &own(&[])).unwrap();
        s.write(&Key::Int(1), &Value::Int(1)).unwrap();
        let p1 = s.pre_commit(CheckpointId(1)).unwrap();
        assert_eq!(p1.len(), 1);
        s.write(&Key::Int(1), &Value::Int(2)).unwrap();
        let p2 = s.pre_commit(CheckpointId(2)).unwrap();
        assert_eq!(p2.len(), 2, "1 is not committed yet");
        assert!(
            names(d.path()).iter().all(|n| n.starts_with(".staging")),
            "nothing visible before a commit"
        );
        s.commit_up_to(CheckpointId(1)).unwrap();
        assert!(names(d.path()).contains(&format!("part-0-{:020}.jsonl", 1)));
        s.write(&Key::Int(1), &Value::Int(3)).unwrap(); // lost with the failure below
        drop(s);

        // Restore from checkpoint 2: commits 2 (1 again, idempotently).
        let mut r = TxnFileSink::open(d.path(), 0, &own(&p2)).unwrap();
        let n = names(d.path());
        assert!(n.contains(&format!("part-0-{:020}.jsonl", 2)), "{n:?}");
        assert_eq!(
            n.iter().filter(|n| n.starts_with(".staging")).count(),
            1,
            "only the new staging file: {n:?}"
        );
        r.write(&Key::Int(1), &Value::Int(3)).unwrap();
        r.finish().unwrap();
        let all: String = names(d.path())
            .iter()
            .filter(|n| n.starts_with("part-"))
            .map(|n| std::fs::read_to_string(d.path().join(n)).unwrap())
            .collect();
        assert_eq!(all.lines().count(), 3, "{all}");
    }

    #[test]
    fn missing_precommitted_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let gone = [PendingTransaction {
            checkpoint: CheckpointId(5),
            handle: ".staging-0-9-9.jsonl".into(),
            sink: 0,
        }];
        assert!(TxnFileSink::open(d.path(), 0, &own(&gone)).is_err());
    }

    /// A later process restoring the same checkpoint must not replace
    /// output committed already: staging names never repeat.
    #[test]
    fn a_new_run_never_overwrites_committed_output() {
        let d = tempfile::tempdir().unwrap();
        let mut a = TxnFileSink::open(d.path(), 0, &own(&[])).unwrap();
        a.write(&Key::Int(1), &Value::Int(1)).unwrap();
        let p1 = a.pre_commit(CheckpointId(1)).unwrap();
        a.commit_up_to(CheckpointId(1)).unwrap();
        drop(a); // crash
        let committed = d.path().join(format!("part-0-{:020}.jsonl", 1));
        let before = std::fs::read_to_string(&committed).unwrap();
        assert!(!before.is_empty());
        let _b = TxnFileSink::open(d.path(), 0, &own(&p1)).unwrap();
        assert_eq!(std::fs::read_to_string(&committed).unwrap(), before);
    }

    #[test]
    fn a_torn_last_line_is_cut_before_appending() {
        let d = tempfile::tempdir().unwrap();
        let spec = SinkSpec::File {
            dir: d.path().to_path_buf(),
        };
        let part = d.path().join("part-0.jsonl");
        // A crash in the middle of the second record's write.
        std::fs::write(&part, "{\"key\":1,\"value\":5}\n{\"key\":\"app-").unwrap();
        let mut sink = Sink::open(&spec, 0, &SinkRecovery::default()).unwrap();
        sink.emit(&Key::Int(2), &Value::Int(7)).unwrap();
        sink.finish().unwrap();
        let out = read_output(d.path()).unwrap();
        assert_eq!(out.updates[&Key::Int(1)], vec![Value::Int(5)]);
        assert_eq!(out.updates[&Key::Int(2)], vec![Value::Int(7)]);
        // Torn without any newline at all: nothing of it stays.
        std::fs::write(&part, "{\"key\":3,\"va").unwrap();
        assert_eq!(cut_torn_tail(&part).unwrap(), 12);
        assert_eq!(std::fs::read(&part).unwrap(), b"");
        assert_eq!(cut_torn_tail(&d.path().join("missing")).unwrap(), 0);
    }

    #[test]
    fn a_fan_out_tags_each_sinks_transactions_and_a_restore_hands_each_its_own() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let sinks = Sinks::new(vec![
            SinkSpec::TransactionalFile {
                dir: a.path().to_path_buf(),
            },
            SinkSpec::File {
                dir: c.path().to_path_buf(),
            },
            SinkSpec::TransactionalFile {
                dir: b.path().to_path_buf(),
            },
        ]);
        let mut sink = Sink::open_all(&sinks, 0, &own(&[])).unwrap();
        assert!(matches!(&sink, Sink::Fanout(v) if v.len() == 3));
        sink.emit(&Key::Int(1), &Value::Int(1)).unwrap();
        let pending = sink.snapshot(CheckpointId(1)).unwrap();
        let tags: Vec<u32> = pending.iter().map(|t| t.sink).collect();
        assert_eq!(tags, [0, 2], "the two transactional sinks, by index");
        // Crash before the commit: the restore commits each sink's own
        // transaction in its own folder (the other's staging file is not
        // there: adopting it would fail the restore).
        drop(sink);
        let mut sink = Sink::open_all(&sinks, 0, &own(&pending)).unwrap();
        for d in [&a, &b] {
            let out = read_output(d.path()).unwrap();
            assert_eq!(out.updates[&Key::Int(1)], vec![Value::Int(1)]);
        }
        // The plain sink wrote it once too (flushed on the barrier).
        assert_eq!(
            read_output(c.path()).unwrap().updates[&Key::Int(1)],
            vec![Value::Int(1)]
        );
        sink.emit(&Key::Int(1), &Value::Int(2)).unwrap();
        sink.finish().unwrap();
        for d in [&a, &b, &c] {
            let out = read_output(d.path()).unwrap();
            // (Files are read in the folder's order, not the commits'.)
            let mut got = out.updates[&Key::Int(1)].clone();
            got.sort();
            assert_eq!(got, vec![Value::Int(1), Value::Int(2)]);
            assert!(out.others.is_empty(), "{:?}", out.others);
        }
        // One sink: its transactions keep the index of the first, 0.
        let one = Sinks::from(SinkSpec::TransactionalFile {
            dir: a.path().to_path_buf(),
        });
        let mut sink = Sink::open_all(&one, 0, &own(&[])).unwrap();
        assert!(matches!(sink, Sink::Transactional(_)));
        assert!(sink
            .snapshot(CheckpointId(2))
            .unwrap()
            .iter()
            .all(|t| t.sink == 0));
    }
}
