//! `cargo bench --bench pv`: runs `cutpoint bench pv` (every variant, each in
//! its own process) through the real binary. `CUTPOINT_BENCH_QUICK=1` for
//! the small size. Results and how to read them: docs/benchmarks.md.

fn main() {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cutpoint"));
    cmd.args(["bench", "pv"]);
    if std::env::var_os("CUTPOINT_BENCH_QUICK").is_some() {
        cmd.arg("--quick");
    }
    let status = cmd.status().expect("run cutpoint bench pv");
    std::process::exit(status.code().unwrap_or(1));
}
