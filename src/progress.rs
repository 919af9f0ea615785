//! Progress bars for the long CLI operations (a job run — including its
//! restore —, the demo, a benchmark run, chaos cycles). Drawn on stderr only
//! when stderr is a terminal, so scripts and CI logs never see them; the
//! JSON printed on stdout is unaffected.

use std::time::Duration;

use cutpoint_coordinator::{JobControl, JobState};
use cutpoint_core::spec::SourceSpec;
use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` steps (`None`: a spinner with a count).
pub fn bar(len: Option<u64>, what: &str) -> ProgressBar {
    let (pb, template) = match len {
        Some(n) => (
            ProgressBar::new(n),
            "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec}, eta {eta}) {msg}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {prefix} [{elapsed_precise}] {human_pos} ({per_sec}) {msg}",
        ),
    };
    pb.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Follows a running job: events read (over the input, when its size is
/// known), its state (restoring, running, restarting) and checkpoints.
/// Stops when the returned handle is aborted or the job ends.
pub fn follow_job(control: JobControl) -> tokio::task::JoinHandle<()> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        // Nothing to draw: do not even poll.
        return tokio::spawn(async {});
    }
    let spec = control.spec().clone();
    // Progress is known for generator sources: job-wide partition → its
    // first event index; the total is the sum of their events.
    let mut ranges = Vec::new();
    let mut total = Some(0);
    for source in spec.sources() {
        match source {
            SourceSpec::Generator {
                events, partitions, ..
            } => {
                total = total.map(|t| t + events);
                ranges.extend(
                    (0..*partitions).map(|p| {
                        cutpoint_runtime::source::generator_range(*events, *partitions, p).0
                    }),
                );
            }
            SourceSpec::Files { .. } => total = None,
        }
    }
    let pb = bar(total, spec.job_id.as_str());
    tokio::spawn(async move {
        loop {
            let done: u64 = control
                .progress()
                .iter()
                .filter_map(|p| {
                    let start = ranges.get(p.task.subtask.0 as usize).copied().unwrap_or(0);
                    p.offset.map(|o| o.saturating_sub(start))
                })
                .sum();
            pb.set_position(done);
            let st = control.status();
            let state = match st.state {
                JobState::Running if st.restored_from.is_empty() => "running".to_string(),
                JobState::Running => format!(
                    "running (restored from {})",
                    st.restored_from.last().map(|c| c.0).unwrap_or(0)
                ),
                JobState::Created => "starting".to_string(),
                s => format!("{s:?}").to_lowercase(),
            };
            pb.set_message(format!(
                "{state}, {} checkpoints ({} failed)",
                st.checkpoints_completed, st.checkpoints_failed
            ));
            if st.state.is_final() {
                pb.finish_and_clear();
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}
