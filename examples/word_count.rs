//! Word count written in Rust: stateless steps (a flat map, a map and a
//! filter, as closures) before a keyed count, checkpointed like any job.
//!
//! The input is newline-delimited JSON, one document per line:
//! `{"doc": 7, "text": "The quick brown fox"}`. Records are a key and one
//! value, so the job keys by the `text` field and its steps turn each line
//! into one record per word:
//! - `words` (flat map): splits the text at every character that is not a
//!   letter or a digit, one record `(word, 1)` per word;
//! - `lowercase` (map): the word in lower case (the new key);
//! - `no_short_words` (filter): drops words of fewer than 3 characters.
//!
//! The steps run in the source task; the records are then routed by their
//! word to the count's subtasks, which emit every new count (committed
//! with two-phase commit under `word-counts/`).
//!
//! Run it (from the repository root; its own job reads a sample input it
//! writes first, if missing, to `cutpoint-word-count-input.jsonl` in the
//! system's temporary folder):
//!
//! ```text
//! cargo run --release --example word_count -- run --checkpoint-dir /tmp/wc-chk
//! cargo run --release --example word_count -- run --checkpoint-dir /tmp/wc-chk --restore-from latest
//! ```
//!
//! `run --job spec.json` runs any JSON spec whose `transforms` name these
//! steps: `[{"flat_map":"words"},{"map":"lowercase"},{"filter":"no_short_words"}]`;
//! a later stage may name `first_letter` (a count update keyed by its
//! word's first character), e.g. `"stages":[{"id":"letters",
//! "transforms":[{"map":"first_letter"}],"key_by":{"type":"key"},
//! "aggregate":{"type":"count"}}]`: updates per first letter.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use cutpoint::operator::{Key, Record};
use cutpoint::{AggregateSpec, JobBuilder, SinkSpec, SourceSpec};

/// One record per word of the line's text (the record's key).
fn words(line: Record, out: &mut Vec<Record>) {
    let Key::Str(text) = &line.key else { return };
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        out.push(Record::new(word, 1));
    }
}

/// The word in lower case.
fn lowercase(word: Record) -> Record {
    match &word.key {
        Key::Str(w) if w.chars().any(char::is_uppercase) => {
            Record::new(w.to_lowercase(), word.value)
        }
        _ => word,
    }
}

/// A count update keyed by its word's first character (for a stage after
/// the count, named by a JSON spec: `"transforms":[{"map":"first_letter"}]`).
fn first_letter(update: Record) -> Record {
    match &update.key {
        Key::Str(w) => {
            let first: String = w.chars().take(1).collect();
            Record::new(first, update.value)
        }
        Key::Int(_) => update,
    }
}

/// Words of three characters or more.
fn no_short_words(word: &Record) -> bool {
    matches!(&word.key, Key::Str(w) if w.chars().count() >= 3)
}

/// A sample input: 100,000 lines of words drawn from a small vocabulary.
fn write_sample(path: &Path) -> std::io::Result<()> {
    const VOCABULARY: [&str; 12] = [
        "The",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog,",
        "and",
        "Checkpoints",
        "barriers.",
    ];
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 42;
    for doc in 0..100_000 {
        let mut text = Vec::new();
        for _ in 0..1 + doc % 9 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push(VOCABULARY[(x >> 33) as usize % VOCABULARY.len()]);
        }
        writeln!(
            out,
            "{}",
            serde_json::json!({"doc": doc, "text": text.join(" ")})
        )?;
    }
    out.flush()
}

fn main() -> ExitCode {
    let input = std::env::temp_dir().join("cutpoint-word-count-input.jsonl");
    // Only the program's own job reads it (not `run --job spec.json`).
    let own_job = !std::env::args().any(|a| a == "--job" || a.starts_with("--job="));
    if own_job && !input.exists() {
        if let Err(e) = write_sample(&input) {
            eprintln!(
                "word_count: writing the sample input {}: {e}",
                input.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let lines = SourceSpec::Files {
        paths: vec![input],
        on_bad_line: Default::default(),
    };
    let program = JobBuilder::source("word-count", lines)
        .parallelism(2)
        .key_by("text")
        .flat_map("words", words)
        .map("lowercase", lowercase)
        .filter_with("no_short_words", no_short_words)
        .aggregate(AggregateSpec::Count)
        .sink(SinkSpec::TransactionalFile {
            dir: "word-counts".into(),
        })
        .checkpoint_every(Duration::from_millis(500))
        .build()
        .expect("a valid job")
        .steps(|f| f.map("first_letter", first_letter));
    cutpoint::main_with(program)
}
