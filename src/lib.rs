//! cutpoint as a library: a Rust program registers its own keyed process
//! functions, builds its job with [`JobBuilder`] (or reads a JSON spec),
//! and calls [`main_with`] to get the whole `cutpoint` command line — run
//! with checkpoints to a local directory or S3, restore by id, serve the
//! REST API, list checkpoints — for its job. The `cutpoint` binary is
//! `main_with(Program::default())`: JSON jobs of the built-in operators.
//!
//! The operator API lives in [`operator`] ([`operator::KeyedProcessFunction`]
//! with typed value, list, map and reducing state); see
//! `examples/fraud_detection.rs` for a whole program.

mod bench;
mod builder;
mod chaos;
mod cli;
mod client;
mod config;
mod demo;
mod jobs;
mod progress;

use std::process::ExitCode;

use clap::Parser;

pub use builder::JobBuilder;
pub use cutpoint_core as core;
pub use cutpoint_core::filter::{Filter, FilterOp, FilterValue};
pub use cutpoint_core::spec::{AggregateSpec, CheckpointingMode, SinkSpec, SourceSpec};
pub use cutpoint_core::{JobSpec, Value};
pub use cutpoint_operator as operator;
pub use cutpoint_operator::Functions;

/// What a program runs: its registered functions and, optionally, the job
/// `cutpoint run` runs when no `--job` file is given.
#[derive(Debug, Default, Clone)]
pub struct Program {
    pub(crate) job: Option<JobSpec>,
    pub(crate) functions: Functions,
}

impl Program {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a keyed process function (see [`Functions::register`]).
    pub fn function<F>(mut self, name: &str, make: impl Fn() -> F + Send + Sync + 'static) -> Self
    where
        F: operator::WithResult + 'static,
    {
        self.functions = self.functions.register(name, make);
        self
    }

    /// Registers a full window function (see
    /// [`Functions::window_function`]) for jobs whose aggregate is
    /// `{"type": "process_window", "function": name}`.
    pub fn window_function(
        mut self,
        name: &str,
        f: impl Fn(&cutpoint_core::Key, &cutpoint_core::window::Window, &[Value]) -> Value
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.functions = self.functions.window_function(name, f);
        self
    }

    /// Registers the stateless steps of `steps` (see [`Functions::map`]
    /// and its siblings), for jobs that name them, e.g. in a stage's
    /// `transforms`: `program.steps(|f| f.map("first_letter", …))`.
    pub fn steps(mut self, steps: impl FnOnce(Functions) -> Functions) -> Self {
        self.functions = steps(self.functions);
        self
    }

    /// The job `run` runs without `--job`.
    pub fn job(mut self, spec: JobSpec) -> Self {
        self.job = Some(spec);
        self
    }
}

/// Runs the `cutpoint` command line for `program` (logging to standard
/// error, filtered by `CUTPOINT_LOG`).
pub fn main_with(program: Program) -> ExitCode {
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
            return ExitCode::from(2);
        }
        tracing::warn!(%spec, "CUTPOINT_FAILPOINTS: fail points configured");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(cli::execute(args, program)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
