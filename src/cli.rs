//! Command-line definitions and the commands that act on storage directly.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cutpoint_coordinator::{JobOutcome, RestoreFrom};
use cutpoint_core::{CheckpointId, JobId, JobSpec, Value};

use crate::client::{self, Client};
use crate::jobs::{dir_or_temp, open_storage, run_job};
use cutpoint_storage::CheckpointStorage;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "cutpoint",
    version,
    about = "Checkpointing engine for stateful stream processing"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a job from a JSON job spec until its input ends.
    Run(RunArgs),
    /// `run` with the chaos harness's test function registered (the
    /// harness's child runs; see src/chaos/function.rs).
    #[command(hide = true)]
    ChaosRun(RunArgs),
    /// Run the coordinator service with the REST admin API.
    Serve {
        #[command(flatten)]
        settings: ServeSettings,
    },
    /// Show the effective server configuration (file < CUTPOINT_* < flags).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage jobs on a server.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Inspect and manage checkpoints.
    Checkpoints {
        #[command(subcommand)]
        command: CheckpointsCommand,
    },
    /// Restart a job on a server from a checkpoint id (or `latest`, or
    /// `savepoint:ID`).
    Restore {
        job: JobId,
        #[arg(long)]
        checkpoint: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Benchmarks (see docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Seeded chaos cycles: inject one fault per cycle, recover, compare with
    /// the failure-free result (needs a build with `--features failpoints`;
    /// see docs/reliability.md).
    Chaos(crate::chaos::ChaosArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell),
    /// e.g. `cutpoint completions bash > /etc/bash_completion.d/cutpoint`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run the PV demo: failure injection, recovery, exact-count check.
    Demo {
        /// Checkpoint storage (default: a temporary directory).
        #[arg(long)]
        checkpoint_dir: Option<String>,
        /// Number of events.
        #[arg(long, default_value_t = 6_000_000)]
        events: u64,
        /// Source rate limit in events/s over both partitions (0: unlimited).
        /// Paced so that 1 s checkpoints complete before the failure.
        #[arg(long, default_value_t = 2_000_000)]
        rate: u64,
        /// Number of distinct keys (app ids).
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
    },
}

/// What `run` (and the chaos harness's `chaos-run`) takes.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The job spec (see examples/pv.json); a program that builds its
    /// own job runs that one without it.
    #[arg(long)]
    job: Option<PathBuf>,
    /// Checkpoint storage: a directory, file:///dir or s3://bucket/prefix.
    #[arg(long)]
    checkpoint_dir: String,
    /// Restore from `latest` or a checkpoint id before running.
    #[arg(long)]
    restore_from: Option<RestoreFrom>,
    /// Local working directory for RocksDB (default: a temporary one).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write the final keyed state here as JSON lines, sorted by key.
    #[arg(long)]
    final_state: Option<PathBuf>,
}

/// Server settings given on the command line (see docs/configuration.md).
#[derive(clap::Args, Debug)]
struct ServeSettings {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080); non-loopback needs a token.
    #[arg(long)]
    listen: Option<String>,
    /// Checkpoint storage: a directory, file:///dir or s3://bucket/prefix.
    #[arg(long)]
    checkpoint_dir: Option<String>,
    /// Local working directory for RocksDB (default: a temporary one).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// File holding the bearer token (else the CUTPOINT_TOKEN variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Accept the job spec's test knobs (inject_*) from POST /v1/jobs; for
    /// tests only (refused with 400 otherwise).
    #[arg(long)]
    enable_test_knobs: bool,
}

impl ServeSettings {
    fn resolve(self) -> Result<crate::config::Config> {
        Ok(crate::config::Config::resolve(
            self.config.as_deref(),
            &|k| std::env::var(k).ok(),
            crate::config::Flags {
                listen: self.listen,
                checkpoint_dir: self.checkpoint_dir,
                work_dir: self.work_dir,
                token_file: self.token_file,
                enable_test_knobs: self.enable_test_knobs,
            },
        )?)
    }
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// List every option with its environment variable, flag and default.
    Options,
    /// Print the effective configuration, secrets masked.
    Show {
        #[command(flatten)]
        settings: ServeSettings,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// The PV workload (K = 1M keys, N = 20M events; --quick: 100k / 2M).
    Pv {
        /// One variant (default: all, each in its own process).
        #[arg(long, value_enum)]
        variant: Option<crate::bench::Variant>,
        #[arg(long)]
        quick: bool,
        /// Checkpoint interval (the reference runs use 1000).
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
}

/// Where a client command finds the server.
#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// The server's URL (token from CUTPOINT_TOKEN).
    #[arg(long, env = "CUTPOINT_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum JobsCommand {
    /// Submit a job spec to the server.
    Submit {
        spec: PathBuf,
        /// Restore from `latest` or a checkpoint id.
        #[arg(long)]
        restore_from: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the server's jobs.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one job.
    Show {
        job: JobId,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel a running job.
    Cancel {
        job: JobId,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
enum CheckpointsCommand {
    /// List the restorable checkpoints storage holds (newest first), from
    /// storage directly (--checkpoint-dir) or through a server.
    List {
        /// Read storage directly instead of asking a server.
        #[arg(long)]
        checkpoint_dir: Option<String>,
        /// Only this job (default: every job in storage).
        #[arg(long)]
        job: Option<JobId>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// What storage holds per job: objects and bytes, restorable
    /// checkpoints, and objects no checkpoint references (in-flight uploads
    /// or leftovers the orphan sweep removes), read from storage directly.
    Usage {
        #[arg(long)]
        checkpoint_dir: String,
        /// Only this job (default: every job in storage).
        #[arg(long)]
        job: Option<JobId>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Trigger a checkpoint of a running job.
    Trigger {
        job: JobId,
        /// incremental or full (default: the job's).
        #[arg(long = "type")]
        checkpoint_type: Option<String>,
        /// Wait until it completed or failed.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one checkpoint with per-subtask detail.
    Show {
        job: JobId,
        checkpoint: CheckpointId,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a retained checkpoint.
    Delete {
        job: JobId,
        checkpoint: CheckpointId,
        /// Also when it is the only restorable one (stopped jobs).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn execute(cli: Cli, program: crate::Program) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(args, program).await,
        Command::ChaosRun(args) => {
            let program = program.function(
                crate::chaos::function::NAME,
                crate::chaos::function::FirstSeen::default,
            );
            run(args, program).await
        }
        Command::Serve { settings } => {
            serve(settings.resolve()?, program.functions).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Options,
        } => {
            for o in crate::config::OPTIONS {
                println!(
                    "{:<26} {:<28} {:<17} default {}",
                    o.key, o.env, o.flag, o.default
                );
                println!("{:<26} {}", "", o.help);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Show { settings },
        } => {
            print!("{}", settings.resolve()?.show());
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { command } => {
            match command {
                JobsCommand::Submit {
                    spec,
                    restore_from,
                    server,
                } => {
                    client::submit(
                        &Client::new(&server.server)?,
                        &spec,
                        restore_from,
                        server.json,
                    )
                    .await?
                }
                JobsCommand::List { server } => {
                    client::jobs_list(&Client::new(&server.server)?, server.json).await?
                }
                JobsCommand::Show { job, server } => {
                    client::job_show(&Client::new(&server.server)?, job.as_str(), server.json)
                        .await?
                }
                JobsCommand::Cancel { job, server } => {
                    client::job_cancel(&Client::new(&server.server)?, job.as_str(), server.json)
                        .await?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Checkpoints { command } => {
            match command {
                CheckpointsCommand::List {
                    checkpoint_dir,
                    job,
                    server,
                } => {
                    let rows = match checkpoint_dir {
                        Some(dir) => storage_rows(&open_storage(&dir)?, job).await?,
                        None => {
                            client::storage_rows(
                                &Client::new(&server.server)?,
                                job.as_ref().map(|j| j.as_str()),
                            )
                            .await?
                        }
                    };
                    print_checkpoint_rows(&rows, server.json)?;
                }
                CheckpointsCommand::Usage {
                    checkpoint_dir,
                    job,
                    json,
                } => print_usage(&open_storage(&checkpoint_dir)?, job, json).await?,
                CheckpointsCommand::Trigger {
                    job,
                    checkpoint_type,
                    wait,
                    server,
                } => {
                    client::trigger(
                        &Client::new(&server.server)?,
                        job.as_str(),
                        checkpoint_type,
                        wait,
                        server.json,
                    )
                    .await?
                }
                CheckpointsCommand::Show {
                    job,
                    checkpoint,
                    server,
                } => {
                    client::checkpoint_show(
                        &Client::new(&server.server)?,
                        job.as_str(),
                        checkpoint.0,
                        server.json,
                    )
                    .await?
                }
                CheckpointsCommand::Delete {
                    job,
                    checkpoint,
                    force,
                    server,
                } => {
                    client::checkpoint_delete(
                        &Client::new(&server.server)?,
                        job.as_str(),
                        checkpoint.0,
                        force,
                    )
                    .await?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            job,
            checkpoint,
            server,
        } => {
            client::restore(
                &Client::new(&server.server)?,
                job.as_str(),
                &checkpoint,
                server.json,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Pv {
                    variant,
                    quick,
                    interval_ms,
                },
        } => crate::bench::run(variant, quick, interval_ms).await,
        Command::Demo {
            checkpoint_dir,
            events,
            rate,
            keys,
        } => crate::demo::run(checkpoint_dir, events, rate, keys).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "cutpoint",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Chaos(args) => tokio::task::block_in_place(|| crate::chaos::run(args)),
    }
}

async fn run(args: RunArgs, program: crate::Program) -> Result<ExitCode> {
    let spec = match (args.job, program.job) {
        (Some(job), _) => {
            let text = std::fs::read_to_string(&job)
                .with_context(|| format!("reading {}", job.display()))?;
            JobSpec::from_json(&text).with_context(|| format!("job spec {}", job.display()))?
        }
        (None, Some(spec)) => spec,
        (None, None) => {
            anyhow::bail!("--job is required (a JSON job spec, e.g. examples/pv.json)")
        }
    };
    let storage = open_storage(&args.checkpoint_dir)?;
    let outcome = run_job(
        spec.clone(),
        storage,
        args.restore_from,
        args.work_dir,
        program.functions,
    )
    .await?;
    if let Some(path) = args.final_state {
        write_final_state(&spec, &outcome, &path)?;
    }
    println!("{}", summary(&spec, &outcome));
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    config: crate::config::Config,
    functions: cutpoint_operator::Functions,
) -> Result<()> {
    let (work_dir, _tmp) = dir_or_temp(config.work_dir.clone(), "cutpoint-serve-")?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
        stop.cancel();
    });
    let server = cutpoint_server::ServerConfig {
        listen: config.listen,
        storage: open_storage(&config.checkpoint_dir)?,
        work_dir,
        token: config.token,
        body_limit: config.body_limit,
        request_timeout: config.request_timeout,
        test_knobs: config.test_knobs,
        functions,
    };
    cutpoint_server::serve(server, shutdown, |addr| {
        println!("{}", json!({ "listening": addr.to_string() }));
        let _ = std::io::stdout().flush();
    })
    .await?;
    Ok(())
}

/// One line per key: `{"key","value"}`, or a join's `{"key","count","dimension"}`.
fn write_final_state(spec: &JobSpec, outcome: &JobOutcome, path: &PathBuf) -> Result<()> {
    use cutpoint_core::spec::AggregateSpec;
    let joined = matches!(spec.aggregate, AggregateSpec::Join { .. });
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (k, v) in outcome.final_values() {
        let line = match &v {
            Value::List(row) if joined && row.len() == 2 => {
                json!({"key": k, "count": row[0], "dimension": row[1]})
            }
            _ => json!({"key": k, "value": v}),
        };
        writeln!(w, "{line}")?;
    }
    w.flush()?;
    Ok(())
}

fn summary(spec: &JobSpec, o: &JobOutcome) -> serde_json::Value {
    let secs = o.duration.as_secs_f64().max(1e-9);
    json!({
        "job_id": spec.job_id,
        "events": o.records_read,
        "events_per_s": (o.records_read as f64 / secs).round(),
        "duration_ms": o.duration.as_millis() as u64,
        "checkpoints_completed": o.checkpoints_completed,
        "checkpoints_failed": o.checkpoints_failed,
        "restarts": o.restarts,
        "restored_from": o.restored_from,
        "restore_ms": o.restore_ms,
        "restore_fallbacks": o.restore_fallbacks,
        "keys": o.final_state.iter().map(|t| t.len()).sum::<usize>(),
    })
}

/// Storage listing rows for one job or every job in storage.
async fn storage_rows(
    storage: &CheckpointStorage,
    job: Option<JobId>,
) -> Result<Vec<serde_json::Value>> {
    let jobs = match job {
        Some(j) => vec![j],
        None => storage.list_jobs().await?,
    };
    let mut rows = Vec::new();
    for job in &jobs {
        for l in storage.list_checkpoints(job).await? {
            rows.push(serde_json::to_value(cutpoint_server::views::listing(
                job, &l,
            ))?);
        }
    }
    Ok(rows)
}

async fn print_usage(storage: &CheckpointStorage, job: Option<JobId>, as_json: bool) -> Result<()> {
    let jobs = match job {
        Some(j) => vec![j],
        None => storage.list_jobs().await?,
    };
    let mut all = serde_json::Map::new();
    for job in jobs {
        let u = storage.usage(&job).await?;
        if !as_json {
            println!(
                "{job}: {} objects, {} bytes; {} restorable checkpoints {:?}; {} unreferenced objects ({} bytes){}{}{}",
                u.objects,
                u.bytes,
                u.checkpoints.len(),
                u.checkpoints.iter().map(|c| c.0).collect::<Vec<_>>(),
                u.unreferenced.len(),
                u.unreferenced_bytes,
                if u.unreadable.is_empty() { String::new() } else { format!("; UNREADABLE: {:?}", u.unreadable) },
                u.shared_gc_suspended.as_ref().map(|s| format!("; SHARED-FILE GC SUSPENDED: {s}")).unwrap_or_default(),
                if u.missing.is_empty() { String::new() } else { format!("; MISSING FILES: {:?}", u.missing) },
            );
        }
        all.insert(job.to_string(), serde_json::to_value(&u)?);
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}

fn print_checkpoint_rows(rows: &[serde_json::Value], as_json: bool) -> Result<()> {
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "checkpoints": rows }))?
        );
        return Ok(());
    }
    if rows.is_empty() {
        println!("no checkpoints");
        return Ok(());
    }
    println!(
        "{:<16} {:>6} {:<11} {:<10} {:>10} {:>12} {:>12}  PATH",
        "JOB", "ID", "TYPE", "STATUS", "DURATION", "STATE", "UPLOADED"
    );
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let n = |k: &str| {
            r[k].as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<16} {:>6} {:<11} {:<10} {:>10} {:>12} {:>12}  {}",
            s("job_id"),
            n("checkpoint_id"),
            s("checkpoint_type"),
            s("status"),
            r["end_to_end_duration"]
                .as_u64()
                .map(|d| format!("{d} ms"))
                .unwrap_or_else(|| "-".into()),
            n("state_size"),
            n("checkpointed_size"),
            s("external_path"),
        );
        if let Some(m) = r["failure_message"].as_str() {
            println!("{:>24} {m}", "");
        }
    }
    Ok(())
}
