//! `stream-run`: run and explain Streamrun job specs, and run a Streamrun cluster.
#![allow(clippy::print_stdout)] // a command-line tool prints its results

mod cluster;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use streamrun::{ExecOptions, JobReport, Metrics};

/// Streamrun: a distributed dataflow and stream-processing engine on timely dataflow and
/// Apache Arrow.
#[derive(Debug, Parser)]
#[command(name = "stream-run", version, about, long_about = None)]
struct Cli {
    /// Log level: error, warn, info, debug or trace (RUST_LOG, when set, takes precedence).
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a job spec on the embedded cluster (worker threads in this process).
    ///
    /// Prints a progress bar on long runs when standard output is a terminal, and a one-line
    /// summary at the end. Exits non-zero, with a message naming the file and line, when the
    /// spec or its input is bad.
    Run {
        /// The job spec (TOML).
        spec: PathBuf,
        /// Worker threads (default: the spec's `workers`, else STREAMRUN_WORKERS, else the
        /// number of cores).
        #[arg(long, short)]
        workers: Option<usize>,
    },
    /// Print a job spec's logical and physical plans.
    Explain {
        /// The job spec (TOML).
        spec: PathBuf,
        /// Print Graphviz DOT instead of text (render with `dot -Tsvg`).
        #[arg(long)]
        dot: bool,
        /// Compile for this many workers (default as for `run`).
        #[arg(long, short)]
        workers: Option<usize>,
    },
    /// Start a head (`--head`) or a node agent joining one (`--address HOST:PORT`); runs until
    /// stopped (Ctrl-C, SIGTERM or `stream-run stop`).
    Start(cluster::StartArgs),
    /// Stop the head and agents of this machine, and their jobs' processes.
    Stop,
    /// The cluster's nodes (alive or dead, resources used and total) and jobs.
    Status {
        #[command(flatten)]
        connection: cluster::Connection,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Submit a job to the cluster: a spec (--spec) or a program (-- PROGRAM ARGS).
    Submit(cluster::SubmitArgs),
    /// Follow the cluster's jobs: list, status, logs, stop.
    #[command(subcommand)]
    Job(cluster::JobCommand),
    /// Serve a generated web site to crawl, until stopped (Ctrl-C): seeded pages of words and
    /// links over several hosts (127.0.0.1, 127.0.0.2, …), some links broken, some through
    /// redirects, and a robots.txt disallowing /private/. `examples/jobs/crawl.toml` crawls it.
    Site {
        /// Pages.
        #[arg(long, default_value_t = 2_000)]
        pages: usize,
        /// Hosts the pages are spread over (addresses 127.0.0.1 to 127.0.0.N).
        #[arg(long, default_value_t = 4)]
        hosts: usize,
        /// The port every host listens on.
        #[arg(long, default_value_t = 8089)]
        port: u16,
        /// The random seed: the same seed makes the same site.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Milliseconds each answer takes.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
}

fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log_level))
        .with_context(|| format!("invalid --log-level {:?}", cli.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn workers(flag: Option<usize>, spec: Option<usize>) -> anyhow::Result<usize> {
    let n = flag.or(spec).unwrap_or_else(streamrun::default_workers);
    anyhow::ensure!(n > 0, "--workers must be at least 1");
    Ok(n)
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn summary(report: &JobReport) -> String {
    let secs = report.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        report.records_in as f64 / secs
    } else {
        0.0
    };
    let mut line = format!(
        "{}: {} records in ({}), {} records out, {:.2} s, {:.0} records/s, {} worker{}",
        report.job,
        report.records_in,
        human_bytes(report.bytes_in),
        report.records_out,
        secs,
        rate,
        report.workers,
        if report.workers == 1 { "" } else { "s" }
    );
    if report.late_records > 0 {
        line.push_str(&format!(
            ", {} late records sent to the late-data sink",
            report.late_records
        ));
    }
    if report.dead_letters > 0 {
        line.push_str(&format!(
            ", {} bad records sent to dead letters",
            report.dead_letters
        ));
    }
    let (stored, stored_bytes) = streamrun::engine::exchanged_through_store();
    if stored > 0 {
        line.push_str(&format!(
            ", {stored} batches ({}) sent through the object store",
            human_bytes(stored_bytes)
        ));
    }
    line
}

/// Runs the job on another thread while this one draws a progress bar, once the run has
/// lasted a second and only on a terminal.
fn run_with_progress(job: &streamrun::Job, workers: usize) -> streamrun::Result<JobReport> {
    let metrics = Arc::new(Metrics::default());
    // A node agent places a job's process with STREAMRUN_PROCESS and STREAMRUN_PEERS.
    let options = ExecOptions {
        metrics: Some(Arc::clone(&metrics)),
        ..ExecOptions::from_env(workers)?
    };
    let interactive = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| streamrun::execute_with(job, &options));
        let started = Instant::now();
        let mut bar: Option<ProgressBar> = None;
        while !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
            if !interactive || started.elapsed() < Duration::from_secs(1) {
                continue;
            }
            let bar = bar.get_or_insert_with(|| {
                let b = ProgressBar::new_spinner().with_elapsed(started.elapsed());
                b.set_style(
                    ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b
            });
            bar.set_message(format!(
                "{} records in ({}), {} records out",
                metrics.records_in.load(Ordering::Relaxed),
                human_bytes(metrics.bytes_in.load(Ordering::Relaxed)),
                metrics.records_out.load(Ordering::Relaxed)
            ));
            bar.tick();
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        handle
            .join()
            .unwrap_or_else(|_| Err(streamrun::Error::Internal("the job thread panicked".into())))
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::from(2);
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { spec, workers: w } => {
            let loaded = streamrun::spec::load(&spec)?;
            let workers = workers(w, loaded.workers)?;
            let report = run_with_progress(&loaded.job, workers).map_err(|e| loaded.locate(e))?;
            eprintln!("{}", summary(&report));
        }
        Command::Explain {
            spec,
            dot,
            workers: w,
        } => {
            let loaded = streamrun::spec::load(&spec)?;
            let workers = workers(w, loaded.workers)?;
            let text = if dot {
                streamrun::explain_dot(&loaded.job, workers)
            } else {
                streamrun::explain(&loaded.job, workers)
            }
            .map_err(|e| loaded.locate(e))?;
            print!("{text}");
        }
        Command::Start(args) => cluster::start(args)?,
        Command::Stop => cluster::stop()?,
        Command::Status { connection, json } => cluster::status(&connection, json)?,
        Command::Submit(args) => cluster::submit(args)?,
        Command::Job(command) => cluster::job(command)?,
        Command::Site {
            pages,
            hosts,
            port,
            seed,
            latency_ms,
        } => serve_site(pages, hosts, port, seed, latency_ms)?,
    }
    Ok(())
}

/// Serves a generated site until Ctrl-C.
fn serve_site(
    pages: usize,
    hosts: usize,
    port: u16,
    seed: u64,
    latency_ms: u64,
) -> anyhow::Result<()> {
    use streamrun_crawl::site::{Site, SiteSpec};
    anyhow::ensure!(pages > 0, "--pages must be at least 1");
    anyhow::ensure!((1..=254).contains(&hosts), "--hosts must be 1 to 254");
    let spec = SiteSpec {
        pages,
        hosts,
        seed,
        port,
        latency_ms,
        ..SiteSpec::default()
    };
    let server = Site::generate(spec)
        .serve()
        .with_context(|| format!("serving the site on port {port}"))?;
    let reachable = server.site().reachable().len();
    eprintln!(
        "serving {pages} pages ({reachable} reachable from the first) on {hosts} hosts: {}",
        (0..hosts)
            .map(|k| format!("http://{}/", server.address(k)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!("seed: {}   (Ctrl-C stops)", server.url(0));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime to wait for Ctrl-C")?;
    runtime
        .block_on(tokio::signal::ctrl_c())
        .context("waiting for Ctrl-C")?;
    Ok(())
}
