//! [`RocksStore`]: the RocksDB instance behind a keyed subtask.
//!
//! Only the snapshot worker thread of its subtask writes it, never the
//! async runtime. Writes go exclusively through ingested SST files, so the
//! WAL and memtable stay empty and a RocksDB checkpoint is hard links only.
//! Under a memory budget the subtask's task thread reads entries evicted
//! from its table through a [`StateReader`] (RocksDB allows reads
//! concurrent with ingestion).

use std::path::{Path, PathBuf};

use cutpoint_core::{keygroup, Key, KeyGroupRange};
use rocksdb::{
    checkpoint::Checkpoint, DBCompressionType, Direction, IngestExternalFileOptions, IteratorMode,
    Options, SstFileWriter, DB,
};

use crate::{FrozenDelta, StateError};

/// One RocksDB instance plus a scratch directory for SST files.
pub struct RocksStore {
    db: std::sync::Arc<DB>,
    dir: PathBuf,
    scratch: PathBuf,
    max_parallelism: u32,
    next_sst: u64,
}

fn options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.set_compression_type(DBCompressionType::Lz4);
    o.set_max_background_jobs(1);
    o
}

/// The RocksDB key of a state entry.
pub fn encode_key(key: &Key, max_parallelism: u32, out: &mut Vec<u8>) {
    let group = keygroup::key_group(key.stable_hash(), max_parallelism);
    out.clear();
    out.extend_from_slice(&(group as u16).to_be_bytes());
    key.encode_into(out);
}

impl RocksStore {
    /// Opens (or creates) the database in `dir`; `scratch` holds temporary
    /// SST files and local checkpoints.
    pub fn open(dir: &Path, scratch: &Path, max_parallelism: u32) -> Result<Self, StateError> {
        std::fs::create_dir_all(scratch).map_err(|e| StateError::io(scratch, e))?;
        let db = DB::open(&options(), dir).map_err(|source| StateError::Rocks {
            op: "open",
            dir: dir.display().to_string(),
            source,
        })?;
        Ok(Self {
            db: std::sync::Arc::new(db),
            dir: dir.to_path_buf(),
            scratch: scratch.to_path_buf(),
            max_parallelism,
            next_sst: 0,
        })
    }

    fn rocks_err(&self, op: &'static str) -> impl Fn(rocksdb::Error) -> StateError + '_ {
        move |source| StateError::Rocks {
            op,
            dir: self.dir.display().to_string(),
            source,
        }
    }

    /// Writes a frozen delta: sort, one SST file, ingest (moved, no copy).
    /// Returns the number of entries written. Integer keys take a fast path
    /// whose byte layout is the one of [`encode_key`] (tested below).
    pub fn apply(&mut self, delta: FrozenDelta) -> Result<usize, StateError> {
        let n = delta.entries.len();
        if n == 0 {
            return Ok(0);
        }
        let maxp = self.max_parallelism;
        self.ingest_sst(|writer| Self::write_delta(writer, delta, maxp))?;
        Ok(n)
    }

    /// The rows of a frozen delta into `writer`, in key order.
    fn write_delta(
        writer: &mut SstFileWriter,
        delta: FrozenDelta,
        maxp: u32,
    ) -> Result<(), rocksdb::Error> {
        let n = delta.entries.len();
        if delta.entries.keys().all(|k| matches!(k, Key::Int(_))) {
            // Integer keys: the 11-byte RocksDB key as one u128 (same order),
            // sorted without allocating per entry.
            let mut rows: Vec<(u128, i64)> = delta
                .entries
                .into_iter()
                .map(|(key, value)| {
                    let Key::Int(i) = key else { unreachable!() };
                    let group = keygroup::key_group(key.stable_hash(), maxp) as u128;
                    let flipped = ((i as u64) ^ (1 << 63)) as u128;
                    ((group << 72) | flipped, value)
                })
                .collect();
            rows.sort_unstable_by_key(|r| r.0);
            for (k, v) in &rows {
                let bytes = k.to_be_bytes();
                writer.put(&bytes[5..], v.to_le_bytes())?;
            }
        } else {
            let mut rows: Vec<(Vec<u8>, i64)> = Vec::with_capacity(n);
            for (key, value) in delta.entries {
                let mut k = Vec::with_capacity(12);
                encode_key(&key, maxp, &mut k);
                rows.push((k, value));
            }
            rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (k, v) in &rows {
                writer.put(k, v.to_le_bytes())?;
            }
        }
        Ok(())
    }

    /// Writes encoded entries (typed state, [`crate::layout`]), sorted
    /// here: `Some` puts, `None` deletes (a tombstone hides the entry in
    /// older SST files). One SST file, ingested; returns the entries.
    pub fn apply_entries(
        &mut self,
        entries: &crate::typed::TypedDelta,
    ) -> Result<usize, StateError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut rows: Vec<_> = entries.iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        self.ingest_sst(|writer| {
            for (k, v) in rows {
                match v {
                    Some(v) => writer.put(k, v)?,
                    None => writer.delete(k)?,
                }
            }
            Ok(())
        })?;
        Ok(entries.len())
    }

    /// One SST file in the scratch folder, filled in key order by `write`,
    /// then ingested (moved, no copy).
    fn ingest_sst(
        &mut self,
        write: impl FnOnce(&mut SstFileWriter) -> Result<(), rocksdb::Error>,
    ) -> Result<(), StateError> {
        self.next_sst += 1;
        let sst = self.scratch.join(format!("ingest-{}.sst", self.next_sst));
        let opts = options();
        let mut writer = SstFileWriter::create(&opts);
        writer.open(&sst).map_err(self.rocks_err("sst open"))?;
        write(&mut writer).map_err(self.rocks_err("sst put"))?;
        writer.finish().map_err(self.rocks_err("sst finish"))?;
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        self.db
            .ingest_external_file_opts(&ingest, vec![&sst])
            .map_err(self.rocks_err("ingest"))
    }

    /// Reads every raw entry whose key group (the first two bytes) lies in
    /// `range`, in key order; stops at the first error `f` returns.
    pub fn scan_raw(
        &self,
        range: KeyGroupRange,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let start = (range.start as u16).to_be_bytes();
        let iter = self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(self.rocks_err("scan"))?;
            let Some(group) = k.first_chunk::<2>() else {
                return Err(self.corrupt("a key without a key group"));
            };
            if u16::from_be_bytes(*group) as u32 > range.end {
                break;
            }
            f(&k, &v)?;
        }
        Ok(())
    }

    fn corrupt(&self, reason: &str) -> StateError {
        StateError::CorruptState {
            dir: self.dir.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Creates a RocksDB checkpoint (hard links) in a new directory under the
    /// scratch folder and returns it; the caller removes it after uploading.
    pub fn checkpoint(&self, name: &str) -> Result<PathBuf, StateError> {
        let target = self.scratch.join(name);
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|e| StateError::io(&target, e))?;
        }
        Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&target))
            .map_err(self.rocks_err("checkpoint"))?;
        Ok(target)
    }

    /// Reads every entry whose key group lies in `range`.
    pub fn scan(
        &self,
        range: KeyGroupRange,
        mut f: impl FnMut(Key, i64),
    ) -> Result<(), StateError> {
        self.scan_raw(range, |k, v| {
            let key = Key::decode(&k[2..]).ok_or_else(|| self.corrupt("bad key"))?;
            let value: [u8; 8] = v.try_into().map_err(|_| self.corrupt("bad value"))?;
            f(key, i64::from_le_bytes(value));
            Ok(())
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A read handle for the task thread (entries evicted from its table).
    pub fn reader(&self) -> StateReader {
        StateReader {
            db: self.db.clone(),
            max_parallelism: self.max_parallelism,
        }
    }
}

/// Point reads of a subtask's RocksDB state from another thread.
#[derive(Clone)]
pub struct StateReader {
    db: std::sync::Arc<DB>,
    max_parallelism: u32,
}

impl std::fmt::Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateReader({})", self.db.path().display())
    }
}

impl StateReader {
    fn rocks_err(&self, op: &'static str) -> impl Fn(rocksdb::Error) -> StateError + '_ {
        move |source| StateError::Rocks {
            op,
            dir: self.db.path().display().to_string(),
            source,
        }
    }

    /// The stored bytes of a raw key (typed state), if any.
    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .db
            .get_pinned(key)
            .map_err(self.rocks_err("get"))?
            .map(|v| v.to_vec()))
    }

    /// Every stored entry whose key starts with `prefix`, in key order
    /// (`prefix` empty: all of them).
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), StateError> {
        let iter = self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(self.rocks_err("scan"))?;
            if !k.starts_with(prefix) {
                break;
            }
            f(&k, &v);
        }
        Ok(())
    }

    /// The last stored key that starts with `prefix`, if any (one seek).
    pub fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let mut it = self.db.raw_iterator();
        let mut end = prefix.to_vec();
        // The smallest key above every key with the prefix: the prefix
        // with its last byte below 0xFF incremented (and the rest cut).
        while end.last() == Some(&0xFF) {
            end.pop();
        }
        match end.last_mut() {
            Some(b) => {
                *b += 1;
                it.seek_for_prev(&end);
                // seek_for_prev lands on `end` itself if it is stored.
                if it.valid() && it.key() == Some(end.as_slice()) {
                    it.prev();
                }
            }
            None => it.seek_to_last(),
        }
        it.status().map_err(self.rocks_err("seek"))?;
        Ok(it
            .valid()
            .then(|| it.key())
            .flatten()
            .filter(|k| k.starts_with(prefix))
            .map(<[u8]>::to_vec))
    }

    /// The stored value of `key`, if any.
    pub fn get(&self, key: &Key) -> Result<Option<i64>, StateError> {
        let mut k = Vec::with_capacity(12);
        encode_key(key, self.max_parallelism, &mut k);
        let err = |source| StateError::Rocks {
            op: "get",
            dir: self.db.path().display().to_string(),
            source,
        };
        match self.db.get_pinned(&k).map_err(err)? {
            None => Ok(None),
            Some(v) => {
                let bytes: [u8; 8] =
                    v.as_ref()
                        .try_into()
                        .map_err(|_| StateError::CorruptState {
                            dir: self.db.path().display().to_string(),
                            reason: "bad value".into(),
                        })?;
                Ok(Some(i64::from_le_bytes(bytes)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StateTable;

    /// The integer fast path and the generic path write the same keys.
    #[test]
    fn int_fast_path_matches_generic_encoding() {
        let d = tempfile::tempdir().unwrap();
        let mut fast = RocksStore::open(&d.path().join("a"), &d.path().join("sa"), 128).unwrap();
        let mut generic = RocksStore::open(&d.path().join("b"), &d.path().join("sb"), 128).unwrap();
        let mut t1 = StateTable::new();
        let mut t2 = StateTable::new();
        for i in [-5i64, 0, 1, 7, 1 << 40, i64::MIN, i64::MAX] {
            t1.add(Key::Int(i), i.wrapping_mul(3));
            t2.add(Key::Int(i), i.wrapping_mul(3));
        }
        t2.add(Key::Str("s".into()), 1); // forces the generic path
        fast.apply(t1.freeze()).unwrap();
        generic.apply(t2.freeze()).unwrap();
        let all = KeyGroupRange { start: 0, end: 127 };
        let mut a = Vec::new();
        let mut b = Vec::new();
        fast.scan(all, |k, v| a.push((k, v))).unwrap();
        generic.scan(all, |k, v| b.push((k, v))).unwrap();
        b.retain(|(k, _)| matches!(k, Key::Int(_)));
        assert_eq!(a.len(), 7);
        assert_eq!(a, b);
        let mut raw_a: Vec<Vec<u8>> = fast
            .db
            .iterator(IteratorMode::Start)
            .map(|r| r.unwrap().0.to_vec())
            .collect();
        let mut raw_b: Vec<Vec<u8>> = generic
            .db
            .iterator(IteratorMode::Start)
            .map(|r| r.unwrap().0.to_vec())
            .collect();
        raw_b.retain(|k| k[2] == 0);
        raw_a.sort();
        raw_b.sort();
        assert_eq!(raw_a, raw_b, "identical RocksDB keys");
    }
}
