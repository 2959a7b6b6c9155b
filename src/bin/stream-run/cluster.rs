//! The cluster commands: `start`, `stop`, `status`, `submit` and `job`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use streamrun_cluster::agent::{self, AgentConfig};
use streamrun_cluster::client::Client;
use streamrun_cluster::head::{self, HeadConfig, SubmitRequest};
use streamrun_cluster::store::{Entrypoint, JobRecord, NodeState};
use streamrun_cluster::{local, now_ms, token};

/// `stream-run start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Start a head: the control store, the gRPC service for agents and the REST API.
    #[arg(long, conflicts_with = "address")]
    head: bool,
    /// Start a node agent that joins the head whose gRPC service is at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "head")]
    address: Option<String>,
    /// The head's gRPC port.
    #[arg(long, default_value_t = 6380)]
    port: u16,
    /// The head's REST port (jobs API).
    #[arg(long, default_value_t = 8265)]
    dashboard_port: u16,
    /// The address the head listens on; 127.0.0.1 unless you open it to other machines.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// The head's directory (control store, token, logs) [default: $STREAMRUN_HOME/head].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// What this node offers, e.g. cpu=2,gpu=0,mem=8G,custom=1 [default: detected].
    #[arg(long)]
    resources: Option<String>,
    /// The address other nodes reach this one at [default: the one that reaches the head].
    #[arg(long)]
    node_address: Option<String>,
    /// The cluster token file, for an agent [default: $STREAMRUN_HOME/head/token;
    /// STREAMRUN_TOKEN takes precedence].
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Memory the node's object store keeps objects in before it spills them (e.g. 2G).
    #[arg(long, default_value = "2G")]
    object_store_memory: String,
    /// Disk the node's object store may spill to (e.g. 16G).
    #[arg(long, default_value = "16G")]
    object_store_disk: String,
    /// Heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// A node silent for this long (ms) is dead; it is noticed within this plus half a
    /// heartbeat.
    #[arg(long, default_value_t = 5000)]
    dead_after_ms: u64,
}

/// How to reach the head's REST API.
#[derive(Debug, Args)]
pub struct Connection {
    /// The head's REST address, HOST:PORT [default: the local head's, else 127.0.0.1:8265].
    #[arg(long)]
    address: Option<String>,
    /// The cluster token file [default: $STREAMRUN_HOME/head/token; STREAMRUN_TOKEN takes
    /// precedence].
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl Connection {
    fn client(&self) -> anyhow::Result<Client> {
        let home = local::home();
        let address = match &self.address {
            Some(a) => a.clone(),
            None => local::head_info(&home)
                .map_or_else(|| "127.0.0.1:8265".to_owned(), |i| i.rest.to_string()),
        };
        let token_file = self
            .token_file
            .clone()
            .unwrap_or_else(|| token::token_path(&local::head_dir(&home)));
        Ok(Client::new(&address, token::for_client(&token_file)?)?)
    }
}

/// `stream-run submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    connection: Connection,
    /// Worker threads over all the job's processes.
    #[arg(long, short, default_value_t = 1)]
    workers: u32,
    /// The job's name [default: the spec's or program's file name].
    #[arg(long)]
    name: Option<String>,
    /// Run this job spec (with `stream-run run` on every process).
    #[arg(long, conflicts_with = "program")]
    spec: Option<PathBuf>,
    /// Wait for the job to end, print its output, and exit non-zero unless it succeeded.
    #[arg(long)]
    wait: bool,
    /// Or run this program with these arguments, after `--`: a binary built on the DSL.
    #[arg(last = true, value_name = "PROGRAM ARGS")]
    program: Vec<String>,
}

/// `stream-run job …`.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Every job, a line each.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// One job's state, processes and reason.
    Status {
        /// The job's id.
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// A job's output (every process's standard output and error).
    Logs {
        /// The job's id.
        id: String,
        /// Keep printing new output until the job ends.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Stops a job and its processes.
    Stop {
        /// The job's id.
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves when this process gets SIGINT or SIGTERM.
async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// `stream-run start`: runs a head or an agent in the foreground until SIGINT or SIGTERM
/// (`stream-run stop`).
pub fn start(args: StartArgs) -> anyhow::Result<()> {
    let home = local::home();
    let rt = runtime()?;
    let heartbeat = Duration::from_millis(args.heartbeat_ms.max(10));
    if args.head && args.dead_after_ms < 2 * args.heartbeat_ms {
        bail!(
            "--dead-after-ms ({}) must be at least twice --heartbeat-ms ({}), or live nodes would be declared dead",
            args.dead_after_ms,
            args.heartbeat_ms
        );
    }
    if args.head {
        let dir = args.dir.clone().unwrap_or_else(|| local::head_dir(&home));
        let config = HeadConfig {
            dir: dir.clone(),
            grpc: SocketAddr::new(args.bind, args.port),
            rest: SocketAddr::new(args.bind, args.dashboard_port),
            heartbeat_interval: heartbeat,
            dead_after: Duration::from_millis(args.dead_after_ms),
        };
        rt.block_on(head::run(config, terminated(), |info| {
            eprintln!(
                "head started: agents join with `stream-run start --address {}`; jobs at http://{}; token in {}",
                info.grpc,
                info.rest,
                token::token_path(&dir).display()
            );
        }))?;
        return Ok(());
    }
    let head = args
        .address
        .clone()
        .context("--address HOST:PORT is required")?;
    let token_file = args
        .token_file
        .clone()
        .unwrap_or_else(|| token::token_path(&local::head_dir(&home)));
    let token = token::for_client(&token_file)?;
    let resources = match &args.resources {
        Some(text) => agent::parse_resources(text, agent::detect_resources())?,
        None => agent::detect_resources(),
    };
    let host = args
        .node_address
        .clone()
        .or_else(|| agent::local_address_towards(&head))
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let pid_file = local::record_agent(&home)?;
    let config = AgentConfig {
        head,
        host,
        resources,
        dir: args
            .dir
            .clone()
            .unwrap_or_else(|| home.join("agents").join(std::process::id().to_string())),
        token,
        stream_run: std::env::current_exe().context("finding the stream-run binary")?,
        object_memory: agent::parse_bytes(&args.object_store_memory)?,
        object_disk: agent::parse_bytes(&args.object_store_disk)?,
    };
    let result = rt.block_on(agent::run(config, terminated(), |node| {
        eprintln!("agent started: node {node}");
    }));
    let _ = std::fs::remove_file(pid_file);
    Ok(result?)
}

/// `stream-run stop`.
pub fn stop() -> anyhow::Result<()> {
    let stopped = local::stop_all(&local::home(), Duration::from_secs(15))?;
    if stopped.is_empty() {
        eprintln!("nothing to stop: no head or agent runs here");
    }
    for s in stopped {
        eprintln!("stopped {s}");
    }
    Ok(())
}

fn age(since_ms: u64) -> String {
    let s = now_ms().saturating_sub(since_ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row));
    }
    out
}

fn job_rows(jobs: &[JobRecord]) -> Vec<Vec<String>> {
    jobs.iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.name.clone(),
                format!("{:?}", j.state).to_uppercase(),
                format!(
                    "{} ({}×{})",
                    j.workers,
                    j.placements.len(),
                    j.placements.first().map_or(0, |p| p.threads)
                ),
                age(j.submitted_ms),
                j.reason.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

/// `stream-run status`.
pub fn status(connection: &Connection, json: bool) -> anyhow::Result<()> {
    let client = connection.client()?;
    let (nodes, jobs) = runtime()?.block_on(async {
        Ok::<_, anyhow::Error>((client.nodes().await?, client.jobs().await?))
    })?;
    if json {
        println!("{}", serde_json::json!({ "nodes": nodes, "jobs": jobs }));
        return Ok(());
    }
    let node_rows = nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                n.host.clone(),
                match n.state {
                    NodeState::Alive => "ALIVE".to_owned(),
                    NodeState::Dead => "DEAD".to_owned(),
                },
                format!("{}/{}", n.used_cpus, n.resources.cpus),
                n.resources.gpus.to_string(),
                format!(
                    "{:.1}G",
                    n.resources.memory_bytes as f64 / (1u64 << 30) as f64
                ),
                age(n.last_heartbeat_ms),
                n.object_address.clone().unwrap_or_default(),
            ]
        })
        .collect();
    println!(
        "{}\n\n{}",
        table(
            &[
                "NODE",
                "HOST",
                "STATE",
                "CPU USED/TOTAL",
                "GPU",
                "MEM",
                "LAST HEARTBEAT",
                "OBJECTS",
            ],
            node_rows
        ),
        table(
            &["JOB", "NAME", "STATE", "WORKERS", "AGE", "REASON"],
            job_rows(&jobs)
        )
    );
    Ok(())
}

/// `stream-run submit`.
pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let absolute = |p: &PathBuf| -> anyhow::Result<String> {
        let p =
            std::fs::canonicalize(p).with_context(|| format!("{} does not exist", p.display()))?;
        Ok(p.to_string_lossy().into_owned())
    };
    let entrypoint = match (&args.spec, args.program.split_first()) {
        (Some(spec), _) => {
            // Compile it here first: a spec that does not compile is refused at once.
            let loaded = streamrun::spec::load(spec)?;
            streamrun::explain(&loaded.job, args.workers as usize).map_err(|e| loaded.locate(e))?;
            Entrypoint::Spec {
                path: absolute(spec)?,
            }
        }
        (None, Some((program, rest))) => {
            let path = PathBuf::from(program);
            let program = if path.components().count() > 1 {
                absolute(&path)?
            } else {
                program.clone()
            };
            Entrypoint::Binary {
                program,
                args: rest.to_vec(),
            }
        }
        (None, None) => bail!("give a job: --spec JOB.toml, or -- PROGRAM ARGS"),
    };
    let client = args.connection.client()?;
    let rt = runtime()?;
    let id = rt.block_on(client.submit(&SubmitRequest {
        name: args.name.clone(),
        workers: args.workers,
        entrypoint,
        env: Default::default(),
    }))?;
    println!("{id}");
    if !args.wait {
        return Ok(());
    }
    let job = rt.block_on(client.wait(&id, Duration::from_millis(200)))?;
    print!("{}", rt.block_on(client.logs(&id))?);
    report_end(&job)
}

fn report_end(job: &JobRecord) -> anyhow::Result<()> {
    let state = format!("{:?}", job.state).to_uppercase();
    match job.state {
        streamrun_cluster::store::JobState::Succeeded => {
            eprintln!("job {} {state}", job.id);
            Ok(())
        }
        _ => bail!(
            "job {} {state}: {}",
            job.id,
            job.reason.as_deref().unwrap_or("no reason given")
        ),
    }
}

/// `stream-run job …`.
pub fn job(command: JobCommand) -> anyhow::Result<()> {
    let rt = runtime()?;
    match command {
        JobCommand::List { connection } => {
            let jobs = rt.block_on(connection.client()?.jobs())?;
            println!(
                "{}",
                table(
                    &["JOB", "NAME", "STATE", "WORKERS", "AGE", "REASON"],
                    job_rows(&jobs)
                )
            );
        }
        JobCommand::Status { id, connection } => {
            let job = rt.block_on(connection.client()?.job(&id))?;
            println!("{}", serde_json::to_string_pretty(&job)?);
        }
        JobCommand::Logs {
            id,
            follow,
            connection,
        } => {
            let client = connection.client()?;
            if !follow {
                print!("{}", rt.block_on(client.logs(&id))?);
                return Ok(());
            }
            // Each process's output from where it was left, until the job has ended and
            // everything is read.
            use std::io::Write;
            let mut offsets: std::collections::BTreeMap<u32, u64> = Default::default();
            loop {
                let job = rt.block_on(client.job(&id))?;
                let mut quiet = true;
                for p in &job.placements {
                    let offset = offsets.entry(p.process).or_default();
                    let page = rt.block_on(client.log_from(&id, p.process, *offset))?;
                    if !page.is_empty() {
                        quiet = false;
                        *offset += page.len() as u64;
                        std::io::stdout().write_all(&page)?;
                    }
                }
                std::io::stdout().flush()?;
                if job.state.is_terminal() && quiet {
                    break;
                }
                if quiet {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        JobCommand::Stop { id, connection } => {
            let job = rt.block_on(connection.client()?.stop(&id))?;
            eprintln!("job {} {:?}", job.id, job.state);
        }
    }
    Ok(())
}
