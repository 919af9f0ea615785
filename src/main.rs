//! The `cutpoint` command line: run a job, list its checkpoints, run the demo.

mod bench;
mod chaos;
mod cli;
mod client;
mod config;
mod demo;
mod jobs;
mod progress;

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CUTPOINT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = cli::Cli::parse();
    // Tests only: fail points (see cutpoint_core::failpoint).
    if let Ok(spec) = std::env::var("CUTPOINT_FAILPOINTS") {
        if let Err(e) = cutpoint_core::failpoint::configure(&spec) {
            eprintln!("error: CUTPOINT_FAILPOINTS: {e}");
            return std::process::ExitCode::from(2);
        }
        tracing::warn!(%spec, "CUTPOINT_FAILPOINTS: fail points configured");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(cli::execute(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
