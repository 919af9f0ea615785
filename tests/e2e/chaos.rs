//! The seeded chaos harness in CI: `cutpoint chaos` (src/chaos.rs) over
//! local storage and the S3 test server — every fault kind (crashes, fail
//! points, store faults, and the operator mistakes of issue #14: unreadable
//! metadata, a reused work dir, transient metadata reads on restore, a
//! second writer, failing channel-state uploads) and every fail point, 0
//! wrong results, 0 leaked files, every file-sink line a whole record.

use std::process::Command;

use serde_json::Value;

use crate::common::s3_location;

/// Runs `cutpoint chaos` and returns its per-cycle lines and the summary.
fn chaos(seed: u64, cycles: u64, checkpoint_dir: Option<&str>) -> (Vec<Value>, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutpoint"));
    cmd.args([
        "chaos",
        "--seed",
        &seed.to_string(),
        "--cycles",
        &cycles.to_string(),
    ]);
    if let Some(d) = checkpoint_dir {
        cmd.args(["--checkpoint-dir", d]);
    }
    let out = cmd.output().expect("run cutpoint chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert!(
        out.status.success(),
        "chaos failed ({}):\n{stderr}\n{}",
        out.status,
        lines
            .iter()
            .filter(|l| l["ok"] == false)
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let summary = lines.last().cloned().expect("a summary line");
    assert_eq!(summary["summary"], true);
    (lines[..lines.len() - 1].to_vec(), summary)
}

#[test]
fn fifty_seeded_chaos_cycles_leave_exact_results_and_no_leaked_files() {
    let (cycles, summary) = chaos(20261125, 50, None);
    eprintln!("chaos summary: {summary}");
    assert_eq!(cycles.len(), 50);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["passed"], 50);
    for kind in [
        "sigkill",
        "task_panic",
        "fail_point",
        "store_fault",
        "unreadable_metadata",
        "reused_work_dir",
        "transient_metadata_get",
        "second_writer",
        "channel_state_upload",
    ] {
        assert!(
            summary["faults_by_kind"][kind].as_u64().unwrap_or(0) > 0,
            "fault kind {kind} not covered: {summary}"
        );
    }
    let covered = summary["fail_points"].as_object().unwrap();
    for name in cutpoint_core::failpoint::ALL {
        assert!(covered.contains_key(*name), "fail point {name} not covered");
    }
    for job in [
        "exactly_once",
        "at_least_once",
        "unaligned",
        "exactly_once+2pc_sink",
        "exactly_once+file_sink",
    ] {
        assert!(
            summary["jobs"][job].as_u64().unwrap_or(0) > 0,
            "{job} not covered"
        );
    }
    for shape in [
        "pv",
        "two_stage",
        "count_distinct",
        "dedup",
        "process",
        "join",
        "windows",
        "sessions",
        "interval_join",
        "window_join",
    ] {
        assert!(
            summary["shapes"][shape].as_u64().unwrap_or(0) > 0,
            "job form {shape} not covered: {summary}"
        );
    }
    assert!(
        summary["under_memory_budget"].as_u64().unwrap() > 0,
        "{summary}"
    );
    // The faults did something: some runs failed and were recovered.
    assert!(summary["recovery_runs"].as_u64().unwrap() >= 5, "{summary}");
}

#[test]
fn chaos_cycles_on_s3_storage() {
    let Some(base) = s3_location("chaos") else {
        return;
    };
    let (_, summary) = chaos(77, 8, Some(&base));
    eprintln!("chaos summary (S3): {summary}");
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["storage"], "s3");
}
