//! The real binary: SIGKILL mid-run, restore from `latest` and from a chosen
//! older checkpoint id, clear errors for missing checkpoints, and the demo.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cutpoint_core::Key;

use crate::common::{assert_exact, expected_counts};

const BIN: &str = env!("CARGO_BIN_EXE_cutpoint");
const EVENTS: u64 = 1_500_000;
const KEYS: u64 = 20_000;

fn write_spec(dir: &Path, job: &str, rate: u64) -> std::path::PathBuf {
    let path = dir.join(format!("{job}.json"));
    std::fs::write(
        &path,
        format!(
            r#"{{"job_id":"{job}","parallelism":2,
                "source":{{"type":"generator","partitions":2,"events":{EVENTS},"keys":{KEYS},"seed":42,"rate_per_s":{rate}}},
                "key_by":"app_id","aggregate":{{"type":"count"}},
                "checkpoint":{{"interval_ms":200,"retention":3}}}}"#
        ),
    )
    .unwrap();
    path
}

fn completed_checkpoints(chk: &Path, job: &str) -> usize {
    let Ok(rd) = std::fs::read_dir(chk.join("jobs").join(job)) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.path().join("_metadata").exists())
        .count()
}

pub(crate) fn read_state(path: &Path) -> BTreeMap<Key, i64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                Key::Int(v["key"].as_i64().unwrap()),
                v["value"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Runs `cutpoint run` to the end; returns the summary line.
pub(crate) fn run_to_end(
    spec: &Path,
    chk: &Path,
    restore: Option<&str>,
    out: &Path,
) -> serde_json::Value {
    run_program_to_end(Path::new(BIN), spec, chk, restore, out)
}

/// Runs `run` of the program `bin` (the `cutpoint` binary or a program on
/// the library) to the end; returns the summary line.
pub(crate) fn run_program_to_end(
    bin: &Path,
    spec: &Path,
    chk: &Path,
    restore: Option<&str>,
    out: &Path,
) -> serde_json::Value {
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--job"])
        .arg(spec)
        .arg("--checkpoint-dir")
        .arg(chk);
    cmd.arg("--final-state").arg(out);
    if let Some(r) = restore {
        cmd.args(["--restore-from", r]);
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8(o.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn sigkill_then_restore_latest_and_an_older_checkpoint_give_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let spec = write_spec(dir.path(), "pv-kill", 300_000);
    let mut child = Command::new(BIN)
        .args(["run", "--job"])
        .arg(&spec)
        .arg("--checkpoint-dir")
        .arg(&chk)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while completed_checkpoints(&chk, "pv-kill") < 2 {
        assert!(Instant::now() < deadline, "no checkpoints completed");
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let expected = expected_counts(42, KEYS, EVENTS);
    let out = dir.path().join("final.jsonl");
    let summary = run_to_end(&spec, &chk, Some("latest"), &out);
    let restored = summary["restored_from"].as_array().unwrap();
    assert_eq!(restored.len(), 1, "{summary}");
    assert!(
        (summary["events"].as_u64().unwrap()) < EVENTS,
        "resumed, not restarted: {summary}"
    );
    assert_exact(&read_state(&out), &expected);

    // Now restore a chosen older checkpoint id, listed from storage alone.
    let list = Command::new(BIN)
        .args([
            "checkpoints",
            "list",
            "--json",
            "--job",
            "pv-kill",
            "--checkpoint-dir",
        ])
        .arg(&chk)
        .output()
        .unwrap();
    assert!(list.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let ids: Vec<u64> = listed["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["restorable"] == true)
        .map(|c| c["checkpoint_id"].as_u64().unwrap())
        .collect();
    assert!(ids.len() >= 2, "{listed}");
    for c in listed["checkpoints"].as_array().unwrap() {
        for field in [
            "checkpoint_type",
            "trigger_timestamp",
            "end_to_end_duration",
            "state_size",
            "checkpointed_size",
            "external_path",
        ] {
            assert!(!c[field].is_null(), "{field} missing in {c}");
        }
    }
    let oldest = *ids.iter().min().unwrap();
    let out2 = dir.path().join("final2.jsonl");
    let summary = run_to_end(&spec, &chk, Some(&oldest.to_string()), &out2);
    assert_eq!(
        summary["restored_from"],
        serde_json::json!([oldest]),
        "{summary}"
    );
    assert_exact(&read_state(&out2), &expected);
}

#[test]
fn restoring_a_missing_or_corrupt_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let spec = write_spec(dir.path(), "pv-missing", 1_000_000);
    let run = |from: &str| {
        Command::new(BIN)
            .args(["run", "--job"])
            .arg(&spec)
            .arg("--checkpoint-dir")
            .arg(&chk)
            .args(["--restore-from", from])
            .output()
            .unwrap()
    };
    let o = run("latest");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no restorable checkpoint of job pv-missing"),
        "{err}"
    );

    // A full run leaves checkpoints; corrupt the newest metadata.
    let out = dir.path().join("f.jsonl");
    run_to_end(&spec, &chk, None, &out);
    let o = run("999");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("checkpoint 999") && err.contains("no _metadata"),
        "{err}"
    );

    let job_dir = chk.join("jobs/pv-missing");
    let ids = restorable_ids(&job_dir);
    assert!(ids.len() >= 2, "retention keeps 3 checkpoints: {ids:?}");
    let (oldest, newest) = (ids[0], *ids.last().unwrap());
    let files = |id: u64| checkpoint_files(&job_dir, id);
    let old_files = files(oldest);
    let victim = files(newest)
        .into_iter()
        .find(|p| p.starts_with("shared/") && p.ends_with(".sst") && !old_files.contains(p))
        .expect("the newest checkpoint has an SST the oldest does not");

    // A bit flip in a shared SST: restoring the newest fails naming the file.
    let path = job_dir.join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let o = run(&newest.to_string());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is corrupt") && err.contains(&victim), "{err}");

    // Corrupt metadata is a named error naming the object.
    std::fs::write(
        job_dir.join(format!("chk-{newest}/_metadata")),
        b"{ not json",
    )
    .unwrap();
    let o = run(&newest.to_string());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("corrupt checkpoint metadata")
            && err.contains(&format!("chk-{newest}/_metadata")),
        "{err}"
    );

    // The older, intact checkpoint still restores, with exact counts.
    let out = dir.path().join("from-oldest.jsonl");
    let summary = run_to_end(&spec, &chk, Some(&oldest.to_string()), &out);
    assert_eq!(summary["restored_from"], serde_json::json!([oldest]));
    assert_exact(&read_state(&out), &expected_counts(42, KEYS, EVENTS));
}

#[test]
fn demo_is_exact() {
    let o = Command::new(BIN).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["exact"], true, "{summary}");
    assert_eq!(summary["restarts"], 1, "{summary}");
    assert!(summary["checkpoints_completed"].as_u64().unwrap() >= 1);
}

#[test]
fn shell_completions_know_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&o.stdout);
        for cmd in ["checkpoints", "restore", "chaos", "--checkpoint-dir"] {
            assert!(script.contains(cmd), "{shell} completion lacks {cmd}");
        }
    }
    let o = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

/// Ids of the checkpoints of a job folder that have `_metadata`, ascending.
fn restorable_ids(job_dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(job_dir)
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("chk-")?
                .parse()
                .ok()
        })
        .filter(|id: &u64| job_dir.join(format!("chk-{id}/_metadata")).exists())
        .collect();
    ids.sort();
    ids
}

/// The file paths a checkpoint's `_metadata` lists.
fn checkpoint_files(job_dir: &Path, id: u64) -> Vec<String> {
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(job_dir.join(format!("chk-{id}/_metadata"))).unwrap(),
    )
    .unwrap();
    m["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["files"].as_array().unwrap().iter())
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

/// Relative paths of every object under a job folder (local storage).
fn job_objects(job_dir: &Path) -> std::collections::BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut std::collections::BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(job_dir, job_dir, &mut out);
    out
}

/// Files every completed checkpoint references, plus their metadata,
/// job.json and the writer epochs (`_writer/…`).
fn referenced(job_dir: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::from(["job.json".to_string()]);
    out.extend(
        job_objects(job_dir)
            .into_iter()
            .filter(|p| p.starts_with("_writer/")),
    );
    for id in restorable_ids(job_dir) {
        out.insert(format!("chk-{id}/_metadata"));
        out.extend(checkpoint_files(job_dir, id));
    }
    out
}

#[test]
fn crash_mid_upload_leftovers_are_removed_by_the_orphan_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let spec = dir.path().join("crash.json");
    std::fs::write(
        &spec,
        format!(
            r#"{{"job_id":"pv-crash","parallelism":2,
                "source":{{"type":"generator","partitions":2,"events":{EVENTS},"keys":{KEYS},"seed":42,"rate_per_s":300000}},
                "key_by":"app_id","aggregate":{{"type":"count"}},
                "checkpoint":{{"interval_ms":200,"timeout_ms":1500,"retention":2}}}}"#
        ),
    )
    .unwrap();
    // Checkpoint 3's SST files reach shared/, its MANIFEST never does.
    let mut child = Command::new(BIN)
        .args(["run", "--job"])
        .arg(&spec)
        .arg("--checkpoint-dir")
        .arg(&chk)
        .env("CUTPOINT_FAULTS", "put:/chk-3/agg/0/MANIFEST:delay=600000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let job_dir = chk.join("jobs/pv-crash");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !job_dir.join("chk-3/agg/0/CURRENT").exists() {
        assert!(
            Instant::now() < deadline,
            "checkpoint 3 never started uploading"
        );
        assert!(child.try_wait().unwrap().is_none());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap(); // SIGKILL mid-upload
    child.wait().unwrap();

    let before = job_objects(&job_dir);
    let leftovers: Vec<_> = before.difference(&referenced(&job_dir)).cloned().collect();
    assert!(
        leftovers.iter().any(|p| p.starts_with("chk-3/")),
        "{leftovers:?}"
    );
    assert!(
        leftovers.iter().any(|p| p.starts_with("shared/")),
        "{leftovers:?}"
    );

    // Leftovers are spared while younger than the checkpoint timeout.
    std::thread::sleep(Duration::from_millis(1600));
    let out = dir.path().join("final.jsonl");
    let summary = run_to_end(&spec, &chk, Some("latest"), &out);
    assert_eq!(
        summary["restored_from"].as_array().unwrap().len(),
        1,
        "{summary}"
    );
    assert_exact(&read_state(&out), &expected_counts(42, KEYS, EVENTS));
    let after = job_objects(&job_dir);
    assert_eq!(
        after,
        referenced(&job_dir),
        "storage holds exactly what retained checkpoints reference"
    );
    for l in &leftovers {
        assert!(!after.contains(l), "{l} survived");
    }
}

#[test]
fn latest_falls_back_past_a_checkpoint_with_a_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let spec = write_spec(dir.path(), "pv-fallback", 1_000_000);
    let out = dir.path().join("f.jsonl");
    run_to_end(&spec, &chk, None, &out);
    let job_dir = chk.join("jobs/pv-fallback");
    let ids = restorable_ids(&job_dir);
    assert!(ids.len() >= 2, "{ids:?}");
    let newest = *ids.last().unwrap();
    let files = |id: u64| checkpoint_files(&job_dir, id);
    let older: Vec<String> = ids[..ids.len() - 1]
        .iter()
        .flat_map(|id| files(*id))
        .collect();
    let victim = files(newest)
        .into_iter()
        .find(|p| p.ends_with(".sst") && !older.contains(p))
        .expect("the newest checkpoint has an SST of its own");
    let path = job_dir.join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();

    // With fallback disabled, `latest` refuses and names the file.
    let strict = dir.path().join("strict.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&spec).unwrap()).unwrap();
    v["restart"] = serde_json::json!({"fallback_to_older_checkpoint": false});
    std::fs::write(&strict, v.to_string()).unwrap();
    let o = Command::new(BIN)
        .args(["run", "--job"])
        .arg(&strict)
        .arg("--checkpoint-dir")
        .arg(&chk)
        .args(["--restore-from", "latest"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&victim), "{err}");

    // By default `latest` falls back to the newest intact checkpoint, says
    // so, and the result is exact.
    let out = dir.path().join("fallback.jsonl");
    let summary = run_to_end(&spec, &chk, Some("latest"), &out);
    let restored: Vec<u64> = summary["restored_from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(restored.first(), Some(&newest), "{summary}");
    assert!(*restored.last().unwrap() < newest, "{summary}");
    let fallbacks = summary["restore_fallbacks"].as_array().unwrap();
    assert_eq!(fallbacks.len(), 1, "{summary}");
    assert!(
        fallbacks[0].as_str().unwrap().contains(&victim),
        "{summary}"
    );
    assert_exact(&read_state(&out), &expected_counts(42, KEYS, EVENTS));
}
