//! Replayable sources: one [`PartitionReader`] per partition, positioned at
//! an offset, so a restore re-reads exactly what came after the checkpoint.
//!
//! - [`GeneratorReader`]: deterministic events; the offset is the index.
//! - [`FileReader`]: newline-delimited JSON; the offset is the byte position
//!   of the next line. Bad lines are counted (and logged with their
//!   position) or fail the task, as the spec says — never silently dropped.
//!
//! With the job's `event_time`, every record carries its event time: the
//! generator's `ts` ([`generator_ts`]), or the file line's field (a line
//! without it is a bad line). The watermarks are the source task's
//! ([`cutpoint_core::time::WatermarkGenerator`]).

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;

use cutpoint_core::filter::Filter;
use cutpoint_core::metadata::SourceOffset;
use cutpoint_core::spec::{AggregateSpec, BadLinePolicy, SourceSpec, ValueKind};
use cutpoint_core::{JobSpec, Key, Record, Value};

use crate::RuntimeError;

/// Reads records of one partition in order.
pub trait PartitionReader: Send {
    /// Appends up to `max` records to `out`; `Ok(false)` at end of input.
    fn read_batch(&mut self, out: &mut Vec<Record>, max: usize) -> Result<bool, RuntimeError>;
    /// Position after the last record read (what a checkpoint stores).
    fn offset(&self) -> SourceOffset;
}

/// SplitMix64: `z = x + 0x9E3779B97F4A7C15`, then the standard finalizer.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator's `app_id` of event `i`.
#[inline]
pub fn generator_app_id(seed: u64, keys: u64, i: u64) -> u64 {
    splitmix64(seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))) % keys
}

/// The generator's `user_id` of event `i`.
#[inline]
pub fn generator_user_id(seed: u64, users: u64, i: u64) -> u64 {
    let x = (seed ^ 0x5_DEEC_E66D).wrapping_add(i.wrapping_mul(0xD1B5_4A32_D192_ED03));
    splitmix64(x) % users
}

/// The generator's `amount` of event `i` (1..=1000).
#[inline]
pub fn generator_amount(seed: u64, i: u64) -> u64 {
    let x = (seed ^ 0xA3B1_9535_4A39_B70D).wrapping_add(i.wrapping_mul(0xA24B_AED4_963E_E407));
    1 + splitmix64(x) % 1000
}

/// The generator's event time of event `i`, the `k`-th of its partition:
/// one event per millisecond, each up to `disorder_ms` late.
#[inline]
pub fn generator_ts(seed: u64, disorder_ms: u64, i: u64, k: u64) -> i64 {
    if disorder_ms == 0 {
        return k as i64;
    }
    let x = (seed ^ 0x7E57_0DD5).wrapping_add(i.wrapping_mul(0x94D0_49BB_1331_11EB));
    k as i64 - (splitmix64(x) % (disorder_ms + 1)) as i64
}

/// Event-index range `[start, end)` of partition `p` of `n`.
pub fn generator_range(events: u64, partitions: u32, p: u32) -> (u64, u64) {
    let n = partitions as u128;
    let e = events as u128;
    ((e * p as u128 / n) as u64, (e * (p as u128 + 1) / n) as u64)
}

/// Deterministic event generator for one partition.
pub struct GeneratorReader {
    partition: u32,
    seed: u64,
    keys: u64,
    next: u64,
    end: u64,
    users: u64,
    value: GenValue,
    /// The spec's filters, on the generated fields.
    filters: Vec<(GenValue, Filter)>,
    /// Event time: the partition's first index and the disorder
    /// (`None`: records have no event time).
    time: Option<(u64, u64)>,
}

/// A generated field (the one a record carries as its value, or one a
/// filter reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GenValue {
    /// `value` (always 1) or no field.
    One,
    AppId,
    UserId,
    Amount,
}

impl GenValue {
    fn named(field: Option<&str>) -> Self {
        match field {
            Some("app_id") => GenValue::AppId,
            Some("user_id") => GenValue::UserId,
            Some("amount") => GenValue::Amount,
            _ => GenValue::One,
        }
    }
}

impl GeneratorReader {
    #[inline]
    fn field(&self, field: GenValue, i: u64, app: i64) -> i64 {
        match field {
            GenValue::One => 1,
            GenValue::AppId => app,
            GenValue::UserId => generator_user_id(self.seed, self.users, i) as i64,
            GenValue::Amount => generator_amount(self.seed, i) as i64,
        }
    }

    fn read(&mut self, out: &mut Vec<Record>, max: usize) -> bool {
        let stop = self.end.min(self.next + max as u64);
        for i in self.next..stop {
            let app = generator_app_id(self.seed, self.keys, i) as i64;
            if !self.filters.is_empty()
                && !self
                    .filters
                    .iter()
                    .all(|(g, f)| f.holds_for_int(self.field(*g, i, app)))
            {
                continue;
            }
            let record = Record::int(Key::Int(app), self.field(self.value, i, app));
            out.push(match self.time {
                None => record,
                Some((start, disorder)) => {
                    record.at(generator_ts(self.seed, disorder, i, i - start))
                }
            });
        }
        self.next = stop;
        self.next < self.end
    }
}

impl PartitionReader for GeneratorReader {
    fn read_batch(&mut self, out: &mut Vec<Record>, max: usize) -> Result<bool, RuntimeError> {
        Ok(self.read(out, max))
    }

    fn offset(&self) -> SourceOffset {
        SourceOffset {
            partition: self.partition,
            offset: self.next,
            bad_records: 0,
            max_timestamp: None,
        }
    }
}

/// NDJSON file reader for one partition.
pub struct FileReader {
    partition: u32,
    path: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    bad_records: u64,
    key_field: String,
    /// The field records carry as their value (`None`: 1 per event).
    value_field: Option<(String, ValueKind)>,
    /// The field holding the event time (`None`: records have none).
    time_field: Option<String>,
    policy: BadLinePolicy,
    line: String,
    /// The spec's filters.
    filters: Vec<Filter>,
}

impl FileReader {
    /// The record of a line (`None`: a filter drops it).
    fn parse(&self, line: &str) -> Result<Option<Record>, String> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let obj = v.as_object().ok_or("not a JSON object")?;
        let key = match obj.get(&self.key_field) {
            // A global window: one key for every record.
            _ if self.key_field.is_empty() => JobSpec::GLOBAL_KEY,
            Some(serde_json::Value::String(s)) => Key::Str(s.as_str().into()),
            Some(serde_json::Value::Number(n)) if n.is_i64() => Key::Int(n.as_i64().unwrap()),
            Some(_) => {
                return Err(format!(
                    "field {:?} is not a string or integer",
                    self.key_field
                ))
            }
            None => return Err(format!("field {:?} is missing", self.key_field)),
        };
        let value = match &self.value_field {
            None => Value::Int(1),
            Some((f, ValueKind::Integer)) => obj
                .get(f)
                .and_then(|v| v.as_i64())
                .map(Value::Int)
                .ok_or_else(|| format!("field {f:?} is missing or not an integer"))?,
            Some((f, ValueKind::Any)) => {
                let v = obj
                    .get(f)
                    .ok_or_else(|| format!("field {f:?} is missing"))?;
                Value::from_json(v).map_err(|why| format!("field {f:?} holds {why}"))?
            }
        };
        let ts = match &self.time_field {
            None => Record::NO_TIME,
            Some(f) => obj
                .get(f)
                .and_then(|v| v.as_i64())
                .filter(|t| *t != Record::NO_TIME)
                .ok_or_else(|| {
                    format!("field {f:?} (the event time) is missing or not an integer")
                })?,
        };
        // Filters after the checks: a malformed line is bad either way.
        if !self
            .filters
            .iter()
            .all(|f| f.holds_for_json(obj.get(&f.field)))
        {
            return Ok(None);
        }
        Ok(Some(Record::new(key, value).at(ts)))
    }
}

impl PartitionReader for FileReader {
    fn read_batch(&mut self, out: &mut Vec<Record>, max: usize) -> Result<bool, RuntimeError> {
        for _ in 0..max {
            self.line.clear();
            let n = self
                .reader
                .read_line(&mut self.line)
                .map_err(|e| RuntimeError::Source {
                    partition: self.partition,
                    path: self.path.display().to_string(),
                    reason: e.to_string(),
                })?;
            if n == 0 {
                return Ok(false);
            }
            let at = self.offset;
            self.offset += n as u64;
            let text = self.line.trim();
            if text.is_empty() {
                continue;
            }
            match self.parse(text) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(reason) => match self.policy {
                    BadLinePolicy::Skip => {
                        self.bad_records += 1;
                        tracing::warn!(path = %self.path.display(), offset = at, %reason, "skipping bad input line");
                    }
                    BadLinePolicy::Fail => {
                        return Err(RuntimeError::BadLine {
                            path: self.path.display().to_string(),
                            offset: at,
                            reason,
                        })
                    }
                },
            }
        }
        Ok(true)
    }

    fn offset(&self) -> SourceOffset {
        SourceOffset {
            partition: self.partition,
            offset: self.offset,
            bad_records: self.bad_records,
            max_timestamp: None,
        }
    }
}

/// The field a source's records carry as their value (`None`: 1 per event).
fn value_field(spec: &JobSpec, source: u32) -> Option<String> {
    match &spec.aggregate {
        AggregateSpec::Join {
            dimension_source, ..
        } if *dimension_source != source => None,
        a => a.value_field().map(str::to_string),
    }
}

/// Opens job-wide partition `partition` (of whichever source it belongs
/// to) at `from` (or the start). Offsets name the job-wide partition.
pub fn open_reader(
    spec: &JobSpec,
    partition: u32,
    from: Option<SourceOffset>,
) -> Result<Box<dyn PartitionReader>, RuntimeError> {
    let (source, source_spec, local) = spec.source_of(partition).ok_or_else(|| {
        RuntimeError::Restore(format!("the job has no source partition {partition}"))
    })?;
    let value = value_field(spec, source);
    match source_spec {
        SourceSpec::Generator {
            partitions,
            events,
            keys,
            seed,
            users,
            disorder_ms,
            ..
        } => {
            let (start, end) = generator_range(*events, *partitions, local);
            let next = match from {
                Some(o) if o.offset < start || o.offset > end => {
                    return Err(RuntimeError::Restore(format!(
                        "offset {} lies outside partition {partition} ({start}..{end})",
                        o.offset
                    )))
                }
                Some(o) => o.offset,
                None => start,
            };
            Ok(Box::new(GeneratorReader {
                partition,
                seed: *seed,
                keys: *keys,
                next,
                end,
                users: *users,
                value: GenValue::named(value.as_deref()),
                filters: spec
                    .filter
                    .iter()
                    .map(|f| (GenValue::named(Some(&f.field)), f.clone()))
                    .collect(),
                time: spec.event_time.as_ref().map(|_| (start, *disorder_ms)),
            }))
        }
        SourceSpec::Files { paths, on_bad_line } => {
            let path = paths[local as usize].clone();
            let err = |reason: String| RuntimeError::Source {
                partition,
                path: path.display().to_string(),
                reason,
            };
            let mut file = File::open(&path).map_err(|e| err(e.to_string()))?;
            let len = file.metadata().map_err(|e| err(e.to_string()))?.len();
            let (offset, bad_records) = from.map(|o| (o.offset, o.bad_records)).unwrap_or((0, 0));
            if offset > len {
                return Err(err(format!(
                    "restored offset {offset} is past the end of the file ({len} bytes): the input changed"
                )));
            }
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| err(e.to_string()))?;
            let value_field = value.map(|f| (f, spec.aggregate.value_kind()));
            Ok(Box::new(FileReader {
                partition,
                path,
                reader: BufReader::with_capacity(256 * 1024, file),
                offset,
                bad_records,
                key_field: spec.key_by.clone().unwrap_or_default(),
                value_field,
                time_field: spec.event_time.as_ref().map(|t| t.field.clone()),
                policy: *on_bad_line,
                line: String::new(),
                filters: spec.filter.clone(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn generator_partitions_cover_the_range() {
        let (a0, a1) = generator_range(11, 2, 0);
        let (b0, b1) = generator_range(11, 2, 1);
        assert_eq!((a0, a1, b0, b1), (0, 5, 5, 11));
    }

    #[test]
    fn file_reader_resumes_at_offset_and_counts_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0.jsonl");
        let mut f = File::create(&path).unwrap();
        writeln!(f, r#"{{"app":"a"}}"#).unwrap();
        writeln!(f, "not json").unwrap();
        writeln!(f, r#"{{"app":7}}"#).unwrap();
        write!(f, r#"{{"app":"b"}}"#).unwrap(); // last line without newline
        drop(f);
        let spec = JobSpec::from_json(&format!(
            r#"{{"job_id":"f","source":{{"type":"files","paths":[{:?}]}},"key_by":"app","aggregate":{{"type":"count"}}}}"#,
            path.display().to_string()
        ))
        .unwrap();
        let mut r = open_reader(&spec, 0, None).unwrap();
        let mut out = Vec::new();
        assert!(r.read_batch(&mut out, 2).unwrap());
        assert_eq!(out.len(), 1);
        let mid = r.offset();
        assert_eq!(mid.bad_records, 1);
        let mut rest = Vec::new();
        while r.read_batch(&mut rest, 10).unwrap() {}
        assert_eq!(
            rest.iter().map(|r| r.key.to_string()).collect::<Vec<_>>(),
            ["7", "b"]
        );
        // Replaying from the stored offset yields exactly the rest.
        let mut again = open_reader(&spec, 0, Some(mid)).unwrap();
        let mut replay = Vec::new();
        while again.read_batch(&mut replay, 10).unwrap() {}
        assert_eq!(replay, rest);
        assert_eq!(again.offset().bad_records, 1);
    }

    #[test]
    fn fail_policy_names_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0.jsonl");
        std::fs::write(&path, "{\"app\":1}\n[1]\n").unwrap();
        let spec = JobSpec::from_json(&format!(
            r#"{{"job_id":"f","source":{{"type":"files","paths":[{:?}],"on_bad_line":"fail"}},"key_by":"app","aggregate":{{"type":"count"}}}}"#,
            path.display().to_string()
        ))
        .unwrap();
        let mut r = open_reader(&spec, 0, None).unwrap();
        let e = r.read_batch(&mut Vec::new(), 10).unwrap_err().to_string();
        assert!(e.contains("at byte 10"), "{e}");
    }
}
