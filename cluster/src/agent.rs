//! The node agent: registers its node with the head, heartbeats, runs the processes of the
//! jobs placed on it, ships their output, and reports their exits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::sync::Arc;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use streamrun_store::flight::ObjectServer;
use streamrun_store::{LocalStore, StoreConfig};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;

use crate::proto::control_client::ControlClient;
use crate::store::Resources;
use crate::{Error, PROTOCOL_VERSION, Result, proto};

/// Bytes of one process's output shipped per heartbeat, at most.
pub const LOG_CHUNK_BYTES: usize = 1 << 20;

/// How long a stopped process has between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The address this machine reaches `head` (`host:port`) from: the local end of a UDP
/// socket aimed at it (nothing is sent). Other nodes reach this one there.
pub fn local_address_towards(head: &str) -> Option<String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect(head).ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The head's gRPC address, `host:port`.
    pub head: String,
    /// The address other nodes reach this one at.
    pub host: String,
    /// What this node offers.
    pub resources: Resources,
    /// Where the agent keeps its processes' logs.
    pub dir: PathBuf,
    /// The cluster token.
    pub token: String,
    /// The program that runs job specs (`stream-run`).
    pub stream_run: PathBuf,
    /// Bytes the node's object store keeps in memory before it spills.
    pub object_memory: u64,
    /// Bytes the node's object store may spill to disk.
    pub object_disk: u64,
}

/// This machine's resources: its CPUs, and its memory from `/proc/meminfo`.
pub fn detect_resources() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    Resources {
        cpus,
        gpus: 0,
        memory_bytes,
        custom: BTreeMap::new(),
    }
}

/// Parses an amount of bytes: `512`, `64K`, `256M`, `8G`.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let upper = text.trim().to_ascii_uppercase();
    let (digits, scale) = match upper.chars().last() {
        Some('G') => (&upper[..upper.len() - 1], 1u64 << 30),
        Some('M') => (&upper[..upper.len() - 1], 1 << 20),
        Some('K') => (&upper[..upper.len() - 1], 1 << 10),
        _ => (upper.as_str(), 1),
    };
    digits
        .parse::<u64>()
        .map(|n| n.saturating_mul(scale))
        .map_err(|_| {
            Error::Config(format!(
                "'{text}' is not an amount of bytes (like 512M or 8G)"
            ))
        })
}

/// Parses `cpu=2,gpu=0,mem=8G,name=1`: the resources a node offers, starting from `base`.
pub fn parse_resources(text: &str, mut base: Resources) -> Result<Resources> {
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("resource '{item}' is not name=amount")))?;
        let amount = parse_bytes(value)
            .map_err(|_| Error::Config(format!("resource '{key}': '{value}' is not an amount")))?;
        let small = || {
            u32::try_from(amount)
                .map_err(|_| Error::Config(format!("resource '{key}': {amount} is too large")))
        };
        match key.trim() {
            "cpu" | "cpus" => base.cpus = small()?,
            "gpu" | "gpus" => base.gpus = small()?,
            "mem" | "memory" => base.memory_bytes = amount,
            other => {
                base.custom.insert(other.to_owned(), amount);
            }
        }
    }
    Ok(base)
}

/// A job process this agent started.
struct Running {
    job: String,
    process: u32,
    child: Option<tokio::process::Child>,
    pid: Option<i32>,
    log: PathBuf,
    shipped: u64,
    exit: Option<(i32, String)>,
    stopping: Option<Instant>,
}

/// Adds the cluster token to every call.
#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Client = ControlClient<InterceptedService<Channel, Bearer>>;

async fn connect(config: &AgentConfig) -> Result<Client> {
    let channel = Channel::from_shared(format!("http://{}", config.head))
        .map_err(|e| Error::Config(format!("head address '{}': {e}", config.head)))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| Error::Rpc(format!("cannot reach the head at {}: {e}", config.head)))?;
    let header = format!("Bearer {}", config.token)
        .parse()
        .map_err(|_| Error::Config("the cluster token is not printable text".into()))?;
    Ok(ControlClient::with_interceptor(channel, Bearer(header)))
}

fn rpc_error(what: &str, status: tonic::Status) -> Error {
    Error::Rpc(format!("{what}: {}", status.message()))
}

async fn register(
    client: &mut Client,
    config: &AgentConfig,
    node_id: &str,
) -> Result<(String, Duration)> {
    let r = &config.resources;
    let reply = client
        .register(proto::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            host: config.host.clone(),
            resources: Some(proto::Resources {
                cpus: r.cpus,
                gpus: r.gpus,
                memory_bytes: r.memory_bytes,
                custom: r.custom.clone().into_iter().collect(),
            }),
            node_id: node_id.to_owned(),
        })
        .await
        .map_err(|s| rpc_error("the head refused to register this node", s))?
        .into_inner();
    Ok((
        reply.node_id,
        Duration::from_millis(reply.heartbeat_interval_ms.max(50)),
    ))
}

/// Runs an agent until `shutdown` resolves: registers (an unreachable head, a wrong token or
/// another protocol version is an error), then heartbeats. `ready` gets the node id.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&str),
) -> Result<()> {
    std::fs::create_dir_all(&config.dir)
        .map_err(|e| Error::io(format!("creating {}", config.dir.display()), e))?;
    let mut client = connect(&config).await?;
    let (mut node_id, interval) = register(&mut client, &config, "").await?;
    tracing::info!(node = %node_id, head = %config.head, "registered");
    // The node's object store, served to other nodes over Flight and to this node's job
    // processes through their environment.
    let store = Arc::new(
        LocalStore::open(
            &node_id,
            StoreConfig::for_node(
                &node_id,
                &config.dir,
                config.object_memory,
                config.object_disk,
            ),
        )
        .map_err(|e| Error::Config(format!("the node's object store: {e}")))?,
    );
    let ip: std::net::IpAddr = config
        .host
        .parse()
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let listener = TcpIncoming::bind(std::net::SocketAddr::new(ip, 0))
        .map_err(|e| Error::io("binding the object store's Flight port", e))?;
    let store_address = format!(
        "{}:{}",
        config.host,
        listener
            .local_addr()
            .map_err(|e| Error::io("reading the object store's address", e))?
            .port()
    );
    let (stop_store, store_stopped) = tokio::sync::oneshot::channel::<()>();
    let store_server = tokio::spawn(
        ObjectServer::new(Arc::clone(&store), config.token.clone()).serve(listener, async {
            let _ = store_stopped.await;
        }),
    );
    let tiers = format!(
        "{}|{}",
        store.config().memory_dir.display(),
        store.config().spill_dir.display()
    );
    let store_env: Vec<(String, String)> = vec![
        ("STREAMRUN_STORE".into(), tiers),
        ("STREAMRUN_STORE_ADDRESS".into(), store_address.clone()),
        ("STREAMRUN_NODE".into(), node_id.clone()),
        ("STREAMRUN_TOKEN".into(), config.token.clone()),
    ];
    tracing::info!(node = %node_id, objects = %store_address, "object store serving");
    ready(&node_id);
    let mut processes: Vec<Running> = Vec::new();
    tokio::pin!(shutdown);
    // Every way out of the loop stops the processes and the store server below.
    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
        poll(&mut processes);
        let (statuses, logs, shipped) = report(&processes);
        let beat = client
            .heartbeat(proto::HeartbeatRequest {
                protocol_version: PROTOCOL_VERSION,
                node_id: node_id.clone(),
                processes: statuses,
                logs,
                object_address: store_address.clone(),
            })
            .await;
        let reply = match beat {
            Ok(reply) => reply.into_inner(),
            Err(status)
                if status.code() == tonic::Code::FailedPrecondition
                    || status.code() == tonic::Code::Unauthenticated =>
            {
                break Err(rpc_error("the head refused a heartbeat", status));
            }
            Err(status) => {
                // The head is away (restarting?): keep the processes and try again.
                tracing::warn!(error = %status.message(), "heartbeat failed");
                continue;
            }
        };
        // Delivered: what was shipped is done with, and reported exits can be forgotten.
        for (p, bytes) in processes.iter_mut().zip(shipped) {
            p.shipped += bytes;
        }
        // A job whose processes here have all ended leaves its objects behind: release them.
        let ended: Vec<String> = processes
            .iter()
            .filter(|p| p.exit.is_some())
            .map(|p| p.job.clone())
            .filter(|job| processes.iter().all(|q| &q.job != job || q.exit.is_some()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for job in ended {
            match store.release_owner(&job) {
                Ok(0) => {}
                Ok(n) => tracing::info!(job = %job, objects = n, "released the job's objects"),
                Err(e) => tracing::warn!(job = %job, error = %e, "releasing the job's objects"),
            }
        }
        processes.retain(|p| {
            p.exit.is_none() || std::fs::metadata(&p.log).map_or(0, |m| m.len()) > p.shipped
        });
        if reply.reregister {
            match register(&mut client, &config, &node_id).await {
                Ok((id, _)) => {
                    tracing::info!(node = %id, "registered again");
                    node_id = id;
                }
                Err(e) => break Err(e),
            }
        }
        for job in &reply.stop_jobs {
            for p in processes
                .iter_mut()
                .filter(|p| &p.job == job && p.exit.is_none())
            {
                signal(p, Signal::SIGTERM);
                p.stopping.get_or_insert_with(Instant::now);
            }
        }
        for mut launch in reply.launches {
            if processes
                .iter()
                .any(|p| p.job == launch.job_id && p.process == launch.process)
            {
                // Sent again by a head that did not hear of it yet: it runs already.
                continue;
            }
            launch.env.extend(store_env.iter().cloned());
            processes.push(launch_process(&config, launch));
        }
    };
    tracing::info!(node = %node_id, "agent stopping: stopping its processes");
    stop_all(&mut processes).await;
    let _ = stop_store.send(());
    let _ = store_server.await;
    outcome
}

fn signal(p: &Running, signal: Signal) {
    if let Some(pid) = p.pid {
        // The process leads its own group: the signal reaches its children too.
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Starts one job process, its output going to its log file. A process that cannot start is
/// recorded as exited with code 127 and the reason.
fn launch_process(config: &AgentConfig, launch: proto::Launch) -> Running {
    let log = config
        .dir
        .join("logs")
        .join(&launch.job_id)
        .join(format!("{}.log", launch.process));
    let program = if launch.program.is_empty() {
        config.stream_run.clone()
    } else {
        PathBuf::from(&launch.program)
    };
    let mut running = Running {
        job: launch.job_id.clone(),
        process: launch.process,
        child: None,
        pid: None,
        log: log.clone(),
        shipped: 0,
        exit: None,
        stopping: None,
    };
    let spawned = (|| -> std::io::Result<tokio::process::Child> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(&log)?;
        let mut command = tokio::process::Command::new(&program);
        command
            .args(&launch.args)
            .envs(&launch.env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .process_group(0)
            .kill_on_drop(true);
        if !launch.working_dir.is_empty() {
            command.current_dir(&launch.working_dir);
        }
        // A job process must not outlive its agent, even one killed with SIGKILL: the kernel
        // sends it SIGKILL when the agent's thread that started it ends.
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the child between fork and exec and only makes the
        // prctl system call, which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        command.spawn()
    })();
    match spawned {
        Ok(child) => {
            tracing::info!(job = %launch.job_id, process = launch.process, program = %program.display(), "process started");
            running.pid = child.id().and_then(|p| i32::try_from(p).ok());
            running.child = Some(child);
        }
        Err(e) => {
            let reason = format!("cannot start '{}': {e}", program.display());
            tracing::error!(job = %launch.job_id, %reason);
            running.exit = Some((127, reason));
        }
    }
    running
}

/// Collects exits, and kills processes that outlived their stop grace.
fn poll(processes: &mut [Running]) {
    for p in processes.iter_mut() {
        let Some(child) = p.child.as_mut() else {
            continue;
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                let (code, reason) = match (status.code(), status.signal()) {
                    (Some(c), _) => (c, String::new()),
                    (None, Some(s)) => (128 + s, format!("killed by signal {s}")),
                    (None, None) => (-1, "ended without a status".to_owned()),
                };
                p.exit = Some((code, reason));
                p.child = None;
                // What the process left running in its group goes with it.
                signal(p, Signal::SIGKILL);
            }
            Ok(None) => {
                if p.stopping.is_some_and(|t| t.elapsed() > STOP_GRACE) {
                    signal(p, Signal::SIGKILL);
                }
            }
            Err(e) => {
                p.exit = Some((-1, format!("lost track of the process: {e}")));
                p.child = None;
            }
        }
    }
}

/// The statuses and new output of `processes`, and how many bytes of each were shipped.
fn report(processes: &[Running]) -> (Vec<proto::ProcessStatus>, Vec<proto::LogChunk>, Vec<u64>) {
    let mut statuses = Vec::new();
    let mut logs = Vec::new();
    let mut shipped = Vec::new();
    for p in processes {
        let chunk = read_from(&p.log, p.shipped);
        shipped.push(chunk.len() as u64);
        if !chunk.is_empty() {
            logs.push(proto::LogChunk {
                job_id: p.job.clone(),
                process: p.process,
                data: chunk,
                offset: p.shipped,
            });
        }
        // An exit is reported once its output is all shipped, so the log is complete when
        // the head sees the job end.
        let complete = std::fs::metadata(&p.log).map_or(0, |m| m.len())
            <= p.shipped + shipped.last().copied().unwrap_or(0);
        statuses.push(proto::ProcessStatus {
            job_id: p.job.clone(),
            process: p.process,
            running: p.exit.is_none(),
            exit_code: p.exit.as_ref().filter(|_| complete).map(|e| e.0),
            reason: p.exit.as_ref().map(|e| e.1.clone()).unwrap_or_default(),
        });
    }
    (statuses, logs, shipped)
}

fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut chunk = Vec::new();
    let _ = file.take(LOG_CHUNK_BYTES as u64).read_to_end(&mut chunk);
    chunk
}

async fn stop_all(processes: &mut [Running]) {
    for p in processes.iter().filter(|p| p.exit.is_none()) {
        signal(p, Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && processes.iter().any(|p| p.child.is_some()) {
        poll(processes);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in processes.iter_mut() {
        if p.child.is_some() {
            signal(p, Signal::SIGKILL);
        }
        if let Some(child) = p.child.as_mut() {
            let _ = child.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse_with_units_and_name_the_bad_one() {
        let r =
            parse_resources("cpu=2,gpu=1,mem=8G,disk_fast=3", Resources::default()).expect("parse");
        assert_eq!((r.cpus, r.gpus, r.memory_bytes), (2, 1, 8 << 30));
        assert_eq!(r.custom.get("disk_fast"), Some(&3));
        let e = parse_resources("cpu=two", Resources::default()).expect_err("bad");
        assert!(e.to_string().contains("cpu"), "{e}");
        assert!(parse_resources("cpu", Resources::default()).is_err());
        assert!(detect_resources().cpus >= 1);
    }
}
