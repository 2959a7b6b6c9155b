//! The head coordinator: the control store, the gRPC service node agents talk to, the REST API
//! for jobs, placement, and failure detection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tonic::transport::server::TcpIncoming;

use crate::placement::place;
use crate::proto;
use crate::store::{
    Entrypoint, JobRecord, JobState, NodeRecord, NodeState, Placement, Resources, Store,
};
use crate::{Error, PROTOCOL_VERSION, Result, now_ms, random_id, token};

/// Bytes of a job process's output the head keeps on disk; beyond it, output is dropped
/// and the log says so.
pub const MAX_LOG_BYTES: u64 = 256 << 20;

/// How a head runs.
#[derive(Debug, Clone)]
pub struct HeadConfig {
    /// Where the control store, the token and the job logs live.
    pub dir: PathBuf,
    /// The gRPC address for node agents.
    pub grpc: SocketAddr,
    /// The REST address for clients.
    pub rest: SocketAddr,
    /// How often agents heartbeat.
    pub heartbeat_interval: Duration,
    /// After how long without a heartbeat a node is dead. A dead node is noticed within
    /// this plus half a heartbeat interval.
    pub dead_after: Duration,
}

impl HeadConfig {
    /// A head keeping its files in `dir`, on the default ports of 127.0.0.1 (gRPC 6380, REST
    /// 8265), heartbeats every second, nodes dead after 5 s of silence.
    pub fn new(dir: PathBuf) -> Self {
        HeadConfig {
            dir,
            grpc: SocketAddr::from(([127, 0, 0, 1], 6380)),
            rest: SocketAddr::from(([127, 0, 0, 1], 8265)),
            heartbeat_interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
        }
    }
}

/// What a client sends to submit a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The job's name (default: its spec's or program's file name).
    #[serde(default)]
    pub name: Option<String>,
    /// Worker threads over all its processes.
    pub workers: u32,
    /// What it runs.
    pub entrypoint: Entrypoint,
    /// Variables its processes get beside the cluster's own (`STREAMRUN_*` names that the
    /// cluster sets are refused).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

/// The head's answer to a submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitReply {
    /// The new job's id.
    pub job_id: String,
}

/// Where a running head listens, written to `dir/head.json` for `stream-run stop` and
/// clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadInfo {
    /// The gRPC address.
    pub grpc: SocketAddr,
    /// The REST address.
    pub rest: SocketAddr,
    /// The head's process id.
    pub pid: u32,
}

#[derive(Default)]
struct Cluster {
    nodes: BTreeMap<String, NodeRecord>,
    jobs: BTreeMap<String, JobRecord>,
    /// When each node was last heard from (monotonic).
    seen: HashMap<String, Instant>,
    /// Processes to start, per node, given at its next heartbeat.
    launches: HashMap<String, Vec<proto::Launch>>,
    /// Jobs to stop, per node.
    stops: HashMap<String, Vec<String>>,
}

/// The head's shared state.
#[derive(Clone)]
pub struct Head {
    cluster: Arc<Mutex<Cluster>>,
    store: Arc<Store>,
    token: Arc<String>,
    config: Arc<HeadConfig>,
}

impl Head {
    /// Opens the head's store in `config.dir` (recovering its nodes and jobs) and its token.
    pub fn open(config: HeadConfig) -> Result<Head> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| Error::io(format!("creating {}", config.dir.display()), e))?;
        let store = Store::open(&config.dir.join("control.redb"))?;
        let token = token::load_or_create(&config.dir)?;
        let mut cluster = Cluster::default();
        let now = Instant::now();
        for node in store.nodes()? {
            // A recovered node has a full bound to heartbeat again before it is dead.
            cluster.seen.insert(node.id.clone(), now);
            cluster.nodes.insert(node.id.clone(), node);
        }
        for job in store.jobs()? {
            cluster.jobs.insert(job.id.clone(), job);
        }
        // CPUs in use follow from the jobs still running, whatever the records said.
        for node in cluster.nodes.values_mut() {
            node.used_cpus = cluster
                .jobs
                .values()
                .filter(|j| !j.state.is_terminal())
                .flat_map(|j| j.placements.iter())
                .filter(|p| p.node == node.id)
                .map(|p| p.threads)
                .sum();
        }
        tracing::info!(
            nodes = cluster.nodes.len(),
            jobs = cluster.jobs.len(),
            "control store opened"
        );
        Ok(Head {
            cluster: Arc::new(Mutex::new(cluster)),
            store: Arc::new(store),
            token: Arc::new(token),
            config: Arc::new(config),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Cluster> {
        // Every update keeps the state consistent before it can panic, so a poisoned lock
        // is used as it is.
        self.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist_node(&self, node: &NodeRecord) {
        if let Err(e) = self.store.put_node(node) {
            tracing::error!(node = %node.id, error = %e, "persisting a node");
        }
    }

    fn persist_job(&self, job: &JobRecord) {
        if let Err(e) = self.store.put_job(job) {
            tracing::error!(job = %job.id, error = %e, "persisting a job");
        }
    }

    /// Every node's record.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.lock().nodes.values().cloned().collect()
    }

    /// Every job's record.
    pub fn jobs(&self) -> Vec<JobRecord> {
        self.lock().jobs.values().cloned().collect()
    }

    /// Places and records a job; its processes start at their nodes' next heartbeats.
    pub fn submit(&self, request: SubmitRequest) -> Result<JobRecord> {
        const SET_BY_THE_CLUSTER: [&str; 4] = [
            "STREAMRUN_PROCESS",
            "STREAMRUN_PEERS",
            "STREAMRUN_WORKERS",
            "STREAMRUN_JOB_ID",
        ];
        if let Some(name) = request
            .env
            .keys()
            .find(|k| SET_BY_THE_CLUSTER.contains(&k.as_str()))
        {
            return Err(Error::Refused(format!(
                "the variable {name} is set by the cluster for each process; a job cannot set it"
            )));
        }
        let mut cluster = self.lock();
        let free: Vec<(String, u32)> = cluster
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Alive)
            .map(|n| (n.id.clone(), n.resources.cpus.saturating_sub(n.used_cpus)))
            .collect();
        let plan = place(request.workers, &free)?;
        let id = format!("job-{}", random_id(6));
        let name = request
            .name
            .clone()
            .unwrap_or_else(|| match &request.entrypoint {
                Entrypoint::Spec { path } | Entrypoint::Binary { program: path, .. } => {
                    std::path::Path::new(path)
                        .file_stem()
                        .map_or_else(|| path.clone(), |s| s.to_string_lossy().into_owned())
                }
            });
        let mut ports = HashSet::new();
        let placements: Vec<Placement> = plan
            .processes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let host = cluster
                    .nodes
                    .get(node)
                    .map_or("127.0.0.1", |n| n.host.as_str());
                // Timely's port for this process; distinct within the job.
                let port = loop {
                    use rand::Rng;
                    let p: u16 = rand::rng().random_range(JOB_PORTS);
                    if ports.insert(p) {
                        break p;
                    }
                };
                Placement {
                    node: node.clone(),
                    process: i as u32,
                    threads: plan.threads,
                    address: format!("{host}:{port}"),
                    started: false,
                    exit_code: None,
                }
            })
            .collect();
        for p in &placements {
            if let Some(node) = cluster.nodes.get_mut(&p.node) {
                node.used_cpus += p.threads;
            }
        }
        let job = JobRecord {
            id: id.clone(),
            name,
            entrypoint: request.entrypoint,
            workers: request.workers,
            env: request.env,
            state: JobState::Pending,
            reason: None,
            placements,
            submitted_ms: now_ms(),
            started_ms: None,
            ended_ms: None,
        };
        for p in &job.placements {
            cluster
                .launches
                .entry(p.node.clone())
                .or_default()
                .push(launch_for(&job, p));
        }
        cluster.jobs.insert(id.clone(), job.clone());
        let touched: Vec<NodeRecord> = plan
            .processes
            .iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .filter_map(|n| cluster.nodes.get(n).cloned())
            .collect();
        // Written under the lock, so that the store sees changes in the order they happen.
        self.persist_job(&job);
        touched.iter().for_each(|n| self.persist_node(n));
        drop(cluster);
        tracing::info!(job = %id, workers = job.workers, processes = job.placements.len(), "job submitted");
        Ok(job)
    }

    /// Stops a job: its processes are told to stop at their nodes' next heartbeats.
    pub fn stop(&self, id: &str) -> Result<JobRecord> {
        let mut cluster = self.lock();
        let job = cluster
            .jobs
            .get(id)
            .cloned()
            .ok_or_else(|| Error::Refused(format!("no job '{id}'")))?;
        if job.state.is_terminal() {
            return Ok(job);
        }
        let job = end_job(
            &mut cluster,
            id,
            JobState::Stopped,
            "stopped on request".into(),
        );
        let nodes = nodes_of(&cluster, job.as_ref());
        if let Some(job) = &job {
            self.persist_job(job);
        }
        nodes.iter().for_each(|n| self.persist_node(n));
        drop(cluster);
        job.ok_or_else(|| Error::Refused(format!("no job '{id}'")))
    }

    /// Marks nodes silent for longer than the bound dead, and fails their jobs.
    fn detect_dead(&self) {
        let mut cluster = self.lock();
        let now = Instant::now();
        let dead: Vec<String> = cluster
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Alive)
            .filter(|n| {
                cluster
                    .seen
                    .get(&n.id)
                    .is_none_or(|t| now.duration_since(*t) > self.config.dead_after)
            })
            .map(|n| n.id.clone())
            .collect();
        let mut changed_jobs = Vec::new();
        for id in &dead {
            let Some(node) = cluster.nodes.get_mut(id) else {
                continue;
            };
            node.state = NodeState::Dead;
            node.reason = Some(format!(
                "no heartbeat for more than {:.1} s",
                self.config.dead_after.as_secs_f64()
            ));
            let host = node.host.clone();
            tracing::warn!(node = %id, %host, "node stopped heartbeating: marked dead");
            let jobs: Vec<String> = cluster
                .jobs
                .values()
                .filter(|j| !j.state.is_terminal() && j.placements.iter().any(|p| &p.node == id))
                .map(|j| j.id.clone())
                .collect();
            for job in jobs {
                let reason = format!("node {id} ({host}) stopped heartbeating");
                if let Some(j) = end_job(&mut cluster, &job, JobState::Failed, reason) {
                    changed_jobs.push(j);
                }
            }
            // Orders a dead node would never fetch must not pile up. If it comes back, it
            // reports its processes, and those of ended jobs are told to stop then.
            cluster.launches.remove(id);
            cluster.stops.remove(id);
        }
        let nodes: Vec<NodeRecord> = dead
            .iter()
            .filter_map(|n| cluster.nodes.get(n).cloned())
            .collect();
        let mut touched: Vec<NodeRecord> = changed_jobs
            .iter()
            .flat_map(|j| nodes_of(&cluster, Some(j)))
            .collect();
        touched.extend(nodes);
        changed_jobs.iter().for_each(|j| self.persist_job(j));
        touched.iter().for_each(|n| self.persist_node(n));
        drop(cluster);
    }

    fn register(
        &self,
        request: proto::RegisterRequest,
    ) -> std::result::Result<proto::RegisterReply, tonic::Status> {
        check_version(request.protocol_version)?;
        let resources = request.resources.map(|r| Resources {
            cpus: r.cpus,
            gpus: r.gpus,
            memory_bytes: r.memory_bytes,
            custom: r.custom.into_iter().collect(),
        });
        let mut cluster = self.lock();
        let id = if !request.node_id.is_empty() && cluster.nodes.contains_key(&request.node_id) {
            request.node_id.clone()
        } else {
            format!("node-{}", random_id(4))
        };
        let used = cluster
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .flat_map(|j| j.placements.iter())
            .filter(|p| p.node == id)
            .map(|p| p.threads)
            .sum();
        let node = NodeRecord {
            id: id.clone(),
            host: request.host,
            resources: resources.unwrap_or_default(),
            used_cpus: used,
            state: NodeState::Alive,
            reason: None,
            registered_ms: now_ms(),
            last_heartbeat_ms: now_ms(),
            object_address: None,
        };
        cluster.nodes.insert(id.clone(), node.clone());
        cluster.seen.insert(id.clone(), Instant::now());
        self.persist_node(&node);
        drop(cluster);
        tracing::info!(node = %id, host = %node.host, cpus = node.resources.cpus, "node registered");
        Ok(proto::RegisterReply {
            node_id: id,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
        })
    }

    fn heartbeat(
        &self,
        request: proto::HeartbeatRequest,
    ) -> std::result::Result<proto::HeartbeatReply, tonic::Status> {
        check_version(request.protocol_version)?;
        let node_id = request.node_id.clone();
        for chunk in &request.logs {
            self.append_log(chunk);
        }
        let mut cluster = self.lock();
        let Some(node) = cluster.nodes.get_mut(&node_id) else {
            return Ok(proto::HeartbeatReply {
                reregister: true,
                ..Default::default()
            });
        };
        let mut node_changed = false;
        if node.state == NodeState::Dead {
            // Back from the dead: its jobs have failed; it may take new ones.
            node.state = NodeState::Alive;
            node.reason = None;
            node_changed = true;
        }
        node.last_heartbeat_ms = now_ms();
        if !request.object_address.is_empty()
            && node.object_address.as_deref() != Some(request.object_address.as_str())
        {
            node.object_address = Some(request.object_address.clone());
            node_changed = true;
        }
        cluster.seen.insert(node_id.clone(), Instant::now());
        let mut changed_jobs = Vec::new();
        let mut stray = Vec::new();
        for status in &request.processes {
            let Some(job) = cluster.jobs.get_mut(&status.job_id) else {
                stray.push(status.job_id.clone());
                continue;
            };
            if job.state.is_terminal() {
                if status.running {
                    stray.push(status.job_id.clone());
                }
                continue;
            }
            let Some(p) = job
                .placements
                .iter_mut()
                .find(|p| p.process == status.process && p.node == node_id)
            else {
                continue;
            };
            let before = (p.started, p.exit_code);
            p.started |= status.running || status.exit_code.is_some();
            if let Some(code) = status.exit_code {
                p.exit_code = Some(code);
            }
            if before != (p.started, p.exit_code) {
                changed_jobs.push((status.job_id.clone(), status.reason.clone()));
            }
        }
        let mut persist = Vec::new();
        for (id, reason) in changed_jobs {
            if let Some(job) = advance(&mut cluster, &id, &reason) {
                persist.push(job);
            }
        }
        let mut stops = cluster.stops.remove(&node_id).unwrap_or_default();
        stops.extend(stray);
        stops.sort();
        stops.dedup();
        let mut launches = cluster.launches.remove(&node_id).unwrap_or_default();
        // A launch whose reply was lost (or that a restarted head forgot) goes out again:
        // a process the head has not seen start, that the agent does not report either.
        let reported: HashSet<(&str, u32)> = request
            .processes
            .iter()
            .map(|p| (p.job_id.as_str(), p.process))
            .collect();
        let resend: Vec<proto::Launch> = cluster
            .jobs
            .values()
            .filter(|j| j.state == JobState::Pending)
            .flat_map(|j| {
                j.placements
                    .iter()
                    .filter(|p| p.node == node_id && !p.started && p.exit_code.is_none())
                    .filter(|p| !reported.contains(&(j.id.as_str(), p.process)))
                    .map(move |p| launch_for(j, p))
            })
            .filter(|l| {
                !launches
                    .iter()
                    .any(|q| q.job_id == l.job_id && q.process == l.process)
            })
            .collect();
        launches.extend(resend);
        let mut nodes: Vec<NodeRecord> = persist
            .iter()
            .flat_map(|j| nodes_of(&cluster, Some(j)))
            .collect();
        if node_changed {
            nodes.extend(cluster.nodes.get(&node_id).cloned());
        }
        persist.iter().for_each(|j| self.persist_job(j));
        nodes.iter().for_each(|n| self.persist_node(n));
        drop(cluster);
        Ok(proto::HeartbeatReply {
            launches,
            stop_jobs: stops,
            reregister: false,
        })
    }

    fn log_path(&self, job: &str, process: u32) -> Option<PathBuf> {
        // Job ids are the head's own (`job-` and hex); anything else names no log.
        let safe = job.starts_with("job-") && job[4..].bytes().all(|b| b.is_ascii_hexdigit());
        safe.then(|| {
            self.config
                .dir
                .join("logs")
                .join(job)
                .join(format!("{process}.log"))
        })
    }

    fn append_log(&self, chunk: &proto::LogChunk) {
        let Some(path) = self.log_path(&chunk.job_id, chunk.process) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            if size >= MAX_LOG_BYTES {
                return Ok(());
            }
            // The file holds the output up to `size`: a chunk before that was written already
            // (its heartbeat's reply was lost and the agent sent it again); only its new tail
            // is appended.
            let skip = usize::try_from(size.saturating_sub(chunk.offset)).unwrap_or(usize::MAX);
            if skip >= chunk.data.len() {
                return Ok(());
            }
            let data = &chunk.data[skip..];
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            use std::io::Write;
            if chunk.offset > size {
                // Output the head never got (its directory was replaced?): say so.
                writeln!(
                    file,
                    "[streamrun: {} bytes of output missing]",
                    chunk.offset - size
                )?;
            }
            let room = usize::try_from(MAX_LOG_BYTES - size).unwrap_or(usize::MAX);
            if data.len() <= room {
                return file.write_all(data);
            }
            // What fits, then the marker, which puts the file past the limit for good.
            file.write_all(&data[..room])?;
            file.write_all(b"\n[streamrun: log truncated at its size limit]\n")
        };
        if let Err(e) = write() {
            tracing::error!(path = %path.display(), error = %e, "writing a job log");
        }
    }

    /// The output of every process of job `id`, process by process.
    pub fn logs(&self, id: &str) -> Result<String> {
        let job = self
            .lock()
            .jobs
            .get(id)
            .cloned()
            .ok_or_else(|| Error::Refused(format!("no job '{id}'")))?;
        let mut text = String::new();
        for p in &job.placements {
            let Some(path) = self.log_path(id, p.process) else {
                continue;
            };
            let body = std::fs::read(&path).unwrap_or_default();
            text.push_str(&String::from_utf8_lossy(&body));
        }
        Ok(text)
    }

    /// Process `process`'s output of job `id` from byte `offset` on, at most `LOG_PAGE_BYTES`
    /// of it: what `job logs -f` follows.
    pub fn log_from(&self, id: &str, process: u32, offset: u64) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let known = self
            .lock()
            .jobs
            .get(id)
            .is_some_and(|j| j.placements.iter().any(|p| p.process == process));
        if !known {
            return Err(Error::Refused(format!(
                "no job '{id}' with a process {process}"
            )));
        }
        let Some(path) = self.log_path(id, process) else {
            return Ok(Vec::new());
        };
        let Ok(mut file) = std::fs::File::open(&path) else {
            return Ok(Vec::new());
        };
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let mut page = Vec::new();
        file.take(LOG_PAGE_BYTES)
            .read_to_end(&mut page)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Ok(page)
    }
}

/// The ports a job's processes listen on for their timely peers: below Linux's default range
/// of ephemeral ports (32768–60999), so that none is a port an outgoing connection of the node
/// holds (which made a job fail at start while a node had many connections open).
const JOB_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// The most output one `logs?process=…&offset=…` call returns.
pub const LOG_PAGE_BYTES: u64 = 4 << 20;

/// The query of a paged log read.
#[derive(Debug, Deserialize)]
struct LogQuery {
    process: Option<u32>,
    #[serde(default)]
    offset: u64,
}

/// The order that starts process `p` of `job` with its place in the job's timely cluster.
fn launch_for(job: &JobRecord, p: &Placement) -> proto::Launch {
    let peers = job
        .placements
        .iter()
        .map(|p| p.address.clone())
        .collect::<Vec<_>>()
        .join(",");
    let (program, args) = match &job.entrypoint {
        // The agent runs a spec with its own binary.
        Entrypoint::Spec { path } => (String::new(), vec!["run".to_owned(), path.clone()]),
        Entrypoint::Binary { program, args } => (program.clone(), args.clone()),
    };
    proto::Launch {
        job_id: job.id.clone(),
        process: p.process,
        program,
        args,
        env: job
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain([
                ("STREAMRUN_PROCESS".to_owned(), p.process.to_string()),
                ("STREAMRUN_PEERS".to_owned(), peers),
                ("STREAMRUN_WORKERS".to_owned(), p.threads.to_string()),
                ("STREAMRUN_JOB_ID".to_owned(), job.id.clone()),
            ])
            .collect(),
        working_dir: String::new(),
    }
}

fn check_version(version: u32) -> std::result::Result<(), tonic::Status> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(tonic::Status::failed_precondition(format!(
            "protocol version {version} is not supported: this head speaks version {PROTOCOL_VERSION}; run the same Streamrun release on every node"
        )))
    }
}

/// The records of the nodes `job` runs on.
fn nodes_of(cluster: &Cluster, job: Option<&JobRecord>) -> Vec<NodeRecord> {
    job.map(|j| {
        j.placements
            .iter()
            .map(|p| p.node.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .filter_map(|n| cluster.nodes.get(&n).cloned())
            .collect()
    })
    .unwrap_or_default()
}

/// Ends job `id` in `state`, frees its CPUs and tells its nodes to stop its processes.
fn end_job(cluster: &mut Cluster, id: &str, state: JobState, reason: String) -> Option<JobRecord> {
    let job = cluster
        .jobs
        .get_mut(id)
        .filter(|j| !j.state.is_terminal())?;
    job.state = state;
    job.reason = Some(reason);
    job.ended_ms = Some(now_ms());
    let job = job.clone();
    for p in &job.placements {
        if let Some(node) = cluster.nodes.get_mut(&p.node) {
            node.used_cpus = node.used_cpus.saturating_sub(p.threads);
        }
        if p.exit_code.is_none() {
            cluster
                .stops
                .entry(p.node.clone())
                .or_default()
                .push(id.to_owned());
        }
        // A launch not yet handed out is withdrawn.
        if let Some(launches) = cluster.launches.get_mut(&p.node) {
            launches.retain(|l| l.job_id != id);
        }
    }
    tracing::info!(job = %id, state = ?state, reason = job.reason.as_deref().unwrap_or(""), "job ended");
    Some(job)
}

/// Moves job `id` on after its processes reported: running, failed or succeeded.
fn advance(cluster: &mut Cluster, id: &str, reason: &str) -> Option<JobRecord> {
    let job = cluster.jobs.get_mut(id)?;
    if job.state.is_terminal() {
        // Ended already, by another process's report in the same heartbeat.
        return None;
    }
    if let Some(p) = job
        .placements
        .iter()
        .find(|p| p.exit_code.is_some_and(|c| c != 0))
    {
        let why = format!(
            "process {} on node {} exited with code {}{}",
            p.process,
            p.node,
            p.exit_code.unwrap_or(-1),
            if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            }
        );
        return end_job(cluster, id, JobState::Failed, why);
    }
    if job.placements.iter().all(|p| p.exit_code == Some(0)) {
        return end_job(
            cluster,
            id,
            JobState::Succeeded,
            "every process exited with 0".into(),
        );
    }
    if job.state == JobState::Pending && job.placements.iter().all(|p| p.started) {
        job.state = JobState::Running;
        job.started_ms = Some(now_ms());
        tracing::info!(job = %id, "job running");
    }
    Some(job.clone())
}

#[tonic::async_trait]
impl proto::control_server::Control for Head {
    async fn register(
        &self,
        request: tonic::Request<proto::RegisterRequest>,
    ) -> std::result::Result<tonic::Response<proto::RegisterReply>, tonic::Status> {
        let head = self.clone();
        // Store writes (an fsync each) and log appends stay off the async threads.
        tokio::task::spawn_blocking(move || Head::register(&head, request.into_inner()))
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .map(tonic::Response::new)
    }

    async fn heartbeat(
        &self,
        request: tonic::Request<proto::HeartbeatRequest>,
    ) -> std::result::Result<tonic::Response<proto::HeartbeatReply>, tonic::Status> {
        let head = self.clone();
        tokio::task::spawn_blocking(move || Head::heartbeat(&head, request.into_inner()))
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .map(tonic::Response::new)
    }
}

/// An error as the REST API answers it: a status and `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Refused(m) if m.starts_with("no job") => StatusCode::NOT_FOUND,
            Error::Refused(_) | Error::Config(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

async fn require_token(State(head): State<Head>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if token::authorizes(header, &head.token) {
        return next.run(request).await;
    }
    tracing::warn!(path = %request.uri().path(), "refused a REST call without the cluster token");
    ApiError(
        StatusCode::UNAUTHORIZED,
        "missing or wrong cluster token: send 'authorization: Bearer <token>' (the token is in the head's directory, or STREAMRUN_TOKEN)".into(),
    )
    .into_response()
}

/// Runs `work` (store writes, file reads) on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Rpc(format!("a head task failed: {e}")))?
}

fn router(head: Head) -> Router {
    Router::new()
        .route(
            "/api/jobs",
            post(
                |State(h): State<Head>, Json(r): Json<SubmitRequest>| async move {
                    blocking(move || h.submit(r))
                        .await
                        .map(|j| Json(SubmitReply { job_id: j.id }))
                        .map_err(ApiError::from)
                },
            )
            .get(|State(h): State<Head>| async move { Json(h.jobs()) }),
        )
        .route(
            "/api/jobs/{id}",
            get(
                |State(h): State<Head>, UrlPath(id): UrlPath<String>| async move {
                    h.jobs()
                        .into_iter()
                        .find(|j| j.id == id)
                        .map(Json)
                        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no job '{id}'")))
                },
            ),
        )
        .route(
            "/api/jobs/{id}/logs",
            get(
                |State(h): State<Head>,
                 UrlPath(id): UrlPath<String>,
                 axum::extract::Query(q): axum::extract::Query<LogQuery>| async move {
                    blocking(move || match q.process {
                        // One process's output from an offset: bytes, for following.
                        Some(p) => h.log_from(&id, p, q.offset),
                        None => h.logs(&id).map(String::into_bytes),
                    })
                    .await
                    .map_err(ApiError::from)
                },
            ),
        )
        .route(
            "/api/jobs/{id}/stop",
            post(
                |State(h): State<Head>, UrlPath(id): UrlPath<String>| async move {
                    blocking(move || h.stop(&id))
                        .await
                        .map(Json)
                        .map_err(ApiError::from)
                },
            ),
        )
        .route(
            "/api/nodes",
            get(|State(h): State<Head>| async move { Json(h.nodes()) }),
        )
        .layer(axum::middleware::from_fn_with_state(
            head.clone(),
            require_token,
        ))
        .with_state(head)
}

/// Runs a head until `shutdown` resolves: binds both listeners (an address in use is an
/// error naming it), writes `dir/head.json`, serves, and watches heartbeats. `ready` is
/// called with the bound addresses once both listen.
pub async fn run(
    config: HeadConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&HeadInfo),
) -> Result<()> {
    let head = Head::open(config.clone())?;
    let rest = tokio::net::TcpListener::bind(config.rest)
        .await
        .map_err(|e| Error::io(format!("binding the REST address {}", config.rest), e))?;
    let grpc = TcpIncoming::bind(config.grpc)
        .map_err(|e| Error::io(format!("binding the gRPC address {}", config.grpc), e))?;
    let info = HeadInfo {
        grpc: grpc
            .local_addr()
            .map_err(|e| Error::io("reading the gRPC address", e))?,
        rest: rest
            .local_addr()
            .map_err(|e| Error::io("reading the REST address", e))?,
        pid: std::process::id(),
    };
    let info_path = config.dir.join("head.json");
    std::fs::write(
        &info_path,
        serde_json::to_vec_pretty(&info).map_err(|e| Error::Config(e.to_string()))?,
    )
    .map_err(|e| Error::io(format!("writing {}", info_path.display()), e))?;
    ready(&info);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let expected = Arc::clone(&head.token);
    let service = proto::control_server::ControlServer::with_interceptor(
        head.clone(),
        move |request: tonic::Request<()>| {
            let header = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if token::authorizes(header, &expected) {
                Ok(request)
            } else {
                tracing::warn!("refused an RPC without the cluster token");
                Err(tonic::Status::unauthenticated(
                    "missing or wrong cluster token",
                ))
            }
        },
    );
    let mut grpc_stop = stop_rx.clone();
    let grpc_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(grpc, async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            }),
    );
    let mut rest_stop = stop_rx.clone();
    let rest_server = tokio::spawn(
        axum::serve(rest, router(head.clone()))
            .with_graceful_shutdown(async move {
                let _ = rest_stop.wait_for(|s| *s).await;
            })
            .into_future(),
    );
    let watcher = {
        let head = head.clone();
        let mut stop = stop_rx.clone();
        let period = config.heartbeat_interval / 2;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => head.detect_dead(),
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        })
    };
    shutdown.await;
    tracing::info!("head stopping");
    let _ = stop_tx.send(true);
    let _ = watcher.await;
    if let Ok(Err(e)) = grpc_server.await {
        tracing::error!(error = %e, "gRPC server");
    }
    if let Ok(Err(e)) = rest_server.await {
        tracing::error!(error = %e, "REST server");
    }
    let _ = std::fs::remove_file(&info_path);
    Ok(())
}
