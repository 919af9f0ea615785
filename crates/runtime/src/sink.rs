//! Sinks chained into the aggregate task: each update `(key, aggregate)`.
//!
//! None of these is transactional: after a restore, updates since the
//! restored checkpoint are emitted again (at-least-once output). The final
//! state itself is exact.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Stdout, Write};

use cutpoint_core::spec::SinkSpec;
use cutpoint_core::Key;

use crate::RuntimeError;

pub enum Sink {
    Discard,
    Stdout(BufWriter<Stdout>),
    File(BufWriter<File>),
}

impl Sink {
    pub fn open(spec: &SinkSpec, subtask: u32) -> Result<Self, RuntimeError> {
        Ok(match spec {
            SinkSpec::Discard => Sink::Discard,
            SinkSpec::Stdout => Sink::Stdout(BufWriter::new(std::io::stdout())),
            SinkSpec::File { dir } => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| RuntimeError::Sink(format!("{}: {e}", dir.display())))?;
                let path = dir.join(format!("part-{subtask}.jsonl"));
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| RuntimeError::Sink(format!("{}: {e}", path.display())))?;
                Sink::File(BufWriter::with_capacity(256 * 1024, f))
            }
        })
    }

    #[inline]
    pub fn emit(&mut self, key: &Key, value: i64) -> Result<(), RuntimeError> {
        let w: &mut dyn Write = match self {
            Sink::Discard => return Ok(()),
            Sink::Stdout(w) => w,
            Sink::File(w) => w,
        };
        let r = match key {
            Key::Int(k) => writeln!(w, "{{\"key\":{k},\"value\":{value}}}"),
            Key::Str(s) => writeln!(
                w,
                "{{\"key\":{},\"value\":{value}}}",
                serde_json::Value::String(s.to_string())
            ),
        };
        r.map_err(|e| RuntimeError::Sink(e.to_string()))
    }

    pub fn flush(&mut self) -> Result<(), RuntimeError> {
        let r = match self {
            Sink::Discard => Ok(()),
            Sink::Stdout(w) => w.flush(),
            Sink::File(w) => w.flush(),
        };
        r.map_err(|e| RuntimeError::Sink(e.to_string()))
    }
}
