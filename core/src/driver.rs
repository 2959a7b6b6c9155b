//! The driver: the object table, the task queue, the workers and their leases, and the gRPC
//! service worker processes attach to.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use streamrun_store::{LocalStore, ObjectId, StoreConfig};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::codec::{ArgSpec, BATCH, Encoded, SERDE};
use crate::proto::driver_server::{Driver, DriverServer};
use crate::proto::{self, FromWorker, ToWorker};
use crate::{ActorOptions, Error, RawRef, RefInner, Result, Runtime, TaskOptions, WeakBackend};

mod nested;

/// The variable that makes a process a worker: `address|slot|memory dir|spill dir`.
pub const WORKER_ENV: &str = "STREAMRUN_CORE_WORKER";
/// Values up to this size ride in messages; larger ones go through the store (Ray's limit
/// for objects returned directly).
pub(crate) const INLINE_MAX: usize = 100 << 10;
/// Tasks a worker is given ahead of finishing them: enough to keep it busy between messages.
const PIPELINE: usize = 64;
/// The pool grows to at most this many times its size (and at least to `POOL_FLOOR`
/// workers) while tasks wait for others.
const POOL_GROWTH: usize = 8;
const POOL_FLOOR: usize = 16;
/// Tasks waiting to run at most: past it, a submission is refused.
const MAX_PENDING: usize = 1_000_000;

/// Options for [`Runtime::builder`].
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    workers: Option<usize>,
    memory: u64,
    resources: Vec<(String, f64)>,
    worker_args: Option<Vec<String>>,
    address: Option<String>,
    token: Option<String>,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            workers: None,
            memory: 2 << 30,
            resources: Vec::new(),
            worker_args: None,
            address: std::env::var("STREAMRUN_ADDRESS")
                .ok()
                .filter(|a| !a.is_empty()),
            token: None,
        }
    }
}

impl RuntimeBuilder {
    /// Worker processes in the pool (one per core by default); also the cluster's CPUs.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n.max(1));
        self
    }
    /// The object store's memory cap (2 GiB by default).
    pub fn object_store_memory(mut self, bytes: u64) -> Self {
        self.memory = bytes;
        self
    }
    /// A custom resource the embedded node has (`"GPU"` for GPUs).
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.push((name.to_owned(), amount));
        self
    }
    /// The arguments worker processes (this binary again) start with; by default this
    /// process's own. A test binary passes the test's name, so that the worker runs the same
    /// test, whose `Runtime::init` turns it into a worker.
    pub fn worker_args(mut self, args: &[&str]) -> Self {
        self.worker_args = Some(args.iter().map(|a| (*a).to_owned()).collect());
        self
    }

    /// The cluster to run on: its head's REST address (`STREAMRUN_ADDRESS` by default).
    /// Without one, the runtime is embedded.
    pub fn address(mut self, address: &str) -> Self {
        self.address = Some(address.to_owned());
        self
    }
    /// The cluster's token (by default `STREAMRUN_TOKEN`, else the token file of this
    /// machine's head, as `stream-run` finds it).
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Starts the runtime (see [`Runtime::init`]).
    pub fn init(self) -> Result<Runtime> {
        if let Ok(spec) = std::env::var(WORKER_ENV) {
            crate::worker::serve(&spec);
        }
        Inner::start(self).map(Runtime::new)
    }
}

/// A stored value: in the table, or in the store.
#[derive(Debug, Clone)]
enum Stored {
    Inline(u32, Bytes),
    Store(u32, ObjectId),
    /// In the store of another node, served at the address.
    Remote(u32, ObjectId, String),
}

#[derive(Debug)]
struct Obj {
    value: Option<std::result::Result<Stored, String>>,
    /// References held: `ObjectRef`s and the tasks that will read it.
    refs: usize,
}

/// An argument made ready for a task, before the table is locked.
enum Prepared {
    Value(Stored),
    Ref(ObjectId),
}

/// A task's argument, as the driver keeps it.
#[derive(Debug, Clone)]
enum TaskArg {
    Inline(u32, Bytes),
    Ref(ObjectId),
}

/// The resources one task (or actor) holds: milli-units by name.
type Shape = Vec<(String, u64)>;

pub(crate) fn shape(cpus: f64, gpus: f64, custom: &[(String, f64)]) -> Shape {
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut add = |name: &str, amount: f64| {
        let milli = (amount * 1000.0).round().max(0.0) as u64;
        if milli > 0 {
            out.push((name.to_owned(), milli));
        }
    };
    add("CPU", cpus);
    add("GPU", gpus);
    for (name, amount) in custom {
        add(name, *amount);
    }
    out.sort();
    out
}

/// A task or actor call to queue, as its caller asked for it.
struct Submission {
    function: String,
    /// Its results' ids (chosen by a nested caller, else here).
    returns: Vec<ObjectId>,
    shape: Shape,
    retries: u32,
    retry_exceptions: bool,
    spread: bool,
    actor: Option<u64>,
    /// For a task a task submitted: the submitting worker's slot and the number of the
    /// task it runs, whose depth this one's is one more than.
    parent: Option<(u64, u64)>,
}

#[derive(Debug, Clone)]
struct Spec {
    id: u64,
    function: String,
    args: Vec<TaskArg>,
    returns: Vec<ObjectId>,
    shape: Shape,
    retries_left: u32,
    retry_exceptions: bool,
    spread: bool,
    actor: Option<u64>,
    create: bool,
    /// Times it waited for lost arguments to be rebuilt.
    rebuilds: u32,
    /// 0 for the driver's; one more than its parent's for a task a task submitted. Deeper
    /// tasks go first, so tasks that wait for their children find them run first.
    depth: u32,
}

/// A task sent to a worker: the worker's slot, and the task's number among those sent to
/// it (in the order it runs them).
#[derive(Debug)]
struct Sent {
    spec: Spec,
    slot: u64,
    seq: u64,
}

struct Worker {
    tx: Option<mpsc::UnboundedSender<std::result::Result<ToWorker, Status>>>,
    pid: Option<u32>,
    child: Option<std::process::Child>,
    in_flight: usize,
    lease: Option<Shape>,
    actor: Option<u64>,
    /// Where its node serves its store (on a cluster).
    node: String,
    /// Nested `get`s and `wait`s its task is in: while any is, it gets no tasks.
    blocked: u32,
    /// Whether its lease's resources are lent out while it waits.
    lent: bool,
    /// Tasks sent to it so far: the next one's number.
    sent: u64,
    /// Ended on purpose (a task cancelled by force): the tasks it had are not charged a
    /// retry.
    doomed: bool,
}

impl Worker {
    /// A slot whose process has not attached yet (on a cluster, an agent starts it).
    fn remote(actor: Option<u64>) -> Worker {
        Worker {
            tx: None,
            pid: None,
            child: None,
            in_flight: 0,
            lease: None,
            actor,
            node: String::new(),
            blocked: 0,
            lent: false,
            sent: 0,
            doomed: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum ActorStatus {
    Alive,
    Dead(String),
}

struct ActorState {
    slot: u64,
    status: ActorStatus,
    restarts_left: u32,
    task_retries: u32,
    constructor: Spec,
    type_name: String,
    shape: Shape,
}

#[derive(Default)]
struct State {
    objects: HashMap<ObjectId, Obj>,
    pending: VecDeque<Spec>,
    /// Tasks sent to workers and not done, by task id.
    in_flight: HashMap<u64, Sent>,
    workers: HashMap<u64, Worker>,
    actors: HashMap<u64, ActorState>,
    names: HashMap<String, u64>,
    total: HashMap<String, i64>,
    /// Below zero while workers that waited in a nested `get` run again on resources they
    /// lent out (as in Ray, briefly oversubscribed).
    available: HashMap<String, i64>,
    /// Pool workers wanted besides those waiting in a nested `get`: the pool's size.
    pool_size: usize,
    next_slot: u64,
    next_task: u64,
    next_actor: u64,
    closed: bool,
    /// Actor slots whose process the cluster is still to be asked for.
    to_launch: Vec<u64>,
    /// Tasks whose results other nodes keep, by task id, with how many of those results are
    /// still referenced: what runs again if a node is lost. They hold their arguments.
    lineage: HashMap<u64, (Spec, usize)>,
    /// The task that made each such result.
    made_by: HashMap<ObjectId, u64>,
}

pub(crate) struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    store: Arc<LocalStore>,
    owner: String,
    address: String,
    program: PathBuf,
    args: Vec<String>,
    memory_dir: PathBuf,
    spill_dir: PathBuf,
    tokio: Mutex<Option<tokio::runtime::Runtime>>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    me: std::sync::Weak<Inner>,
    /// Set when the runtime runs on a cluster.
    cluster: Option<ClusterLink>,
    /// Objects made again after their node was lost.
    pub(crate) rebuilt: std::sync::atomic::AtomicU64,
}

/// A driver's link to a cluster: its head, the jobs that run its workers, and where its own
/// store serves objects to them.
struct ClusterLink {
    client: streamrun_cluster::client::Client,
    token: String,
    store_address: String,
    /// The worker jobs, with the slot each runs.
    jobs: Mutex<Vec<(u64, String)>>,
}

fn fits(available: &HashMap<String, i64>, shape: &Shape) -> bool {
    shape
        .iter()
        .all(|(name, milli)| available.get(name).copied().unwrap_or(0) >= *milli as i64)
}

fn take(available: &mut HashMap<String, i64>, shape: &Shape) {
    for (name, milli) in shape {
        *available.entry(name.clone()).or_default() -= *milli as i64;
    }
}

fn give(available: &mut HashMap<String, i64>, shape: &Shape) {
    for (name, milli) in shape {
        *available.entry(name.clone()).or_default() += *milli as i64;
    }
}

/// Refuses what the whole cluster could never give `what`.
fn check_fits(st: &State, what: &str, shape: &Shape) -> Result<()> {
    if fits(&st.total, shape) {
        return Ok(());
    }
    Err(Error::Unschedulable(format!(
        "{what} asks for {}, and this cluster has {}",
        describe(shape),
        describe_amounts(&st.total)
    )))
}

fn describe(shape: &Shape) -> String {
    shape
        .iter()
        .map(|(n, m)| format!("{n}={}", *m as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_amounts(amounts: &HashMap<String, i64>) -> String {
    let mut named: Vec<(&String, &i64)> = amounts.iter().collect();
    named.sort();
    named
        .iter()
        .map(|(n, m)| format!("{n}={}", **m as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Inner {
    fn start(builder: RuntimeBuilder) -> Result<Arc<Inner>> {
        let node = format!("core-{}-{:08x}", std::process::id(), rand::random::<u32>());
        let spill = std::env::temp_dir().join(format!("streamrun-{node}"));
        let store = Arc::new(LocalStore::open(
            &node,
            StoreConfig::for_node(&node, &spill, builder.memory, builder.memory * 4),
        )?);
        let (memory_dir, spill_dir) = (
            store.config().memory_dir.clone(),
            store.config().spill_dir.clone(),
        );
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::Runtime(format!("starting the driver's I/O thread: {e}")))?;
        // On a cluster: the head, the host its workers reach this driver at, and its store
        // served to them.
        let (cluster, bind, host, cluster_cpus) = match &builder.address {
            None => (None, "127.0.0.1", "127.0.0.1".to_owned(), None),
            Some(address) => {
                let (link, host, cpus) =
                    tokio.block_on(connect_cluster(address, builder.token.clone(), &store))?;
                (Some(link), "0.0.0.0", host, Some(cpus))
            }
        };
        let listener = tokio
            .block_on(tokio::net::TcpListener::bind((bind, 0)))
            .map_err(|e| Error::Runtime(format!("binding the driver's port: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::Runtime(format!("reading the driver's address: {e}")))?
            .port();
        let address = format!("{host}:{port}");
        let workers = builder
            .workers
            .or(cluster_cpus)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let program = std::env::current_exe()
            .map_err(|e| Error::Runtime(format!("finding this program to start workers: {e}")))?;
        let args = builder
            .worker_args
            .unwrap_or_else(|| std::env::args().skip(1).collect());
        let mut total: HashMap<String, i64> = HashMap::new();
        total.insert("CPU".into(), workers as i64 * 1000);
        for (name, amount) in shape(0.0, 0.0, &builder.resources) {
            *total.entry(name).or_default() += amount as i64;
        }
        let state = State {
            available: total.clone(),
            total,
            pool_size: workers,
            next_task: 1,
            next_actor: 1,
            ..State::default()
        };
        let inner = Arc::new_cyclic(|me| Inner {
            state: Mutex::new(state),
            changed: Condvar::new(),
            store,
            owner: format!("driver-{}", std::process::id()),
            address,
            program,
            args,
            memory_dir,
            spill_dir,
            tokio: Mutex::new(None),
            stop: Mutex::new(None),
            me: me.clone(),
            cluster,
            rebuilt: std::sync::atomic::AtomicU64::new(0),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = DriverServer::new(Service(Arc::clone(&inner)))
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        // Small messages go out at once, not held back for acknowledgements.
        let incoming = futures::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |stream| {
                stream.inspect(|s| {
                    let _ = s.set_nodelay(true);
                })
            },
        );
        tokio.spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        *inner.lock_tokio() = Some(tokio);
        *inner.stop.lock().unwrap_or_else(|p| p.into_inner()) = Some(stop);
        let started = if inner.cluster.is_some() {
            inner.start_cluster_pool(workers)
        } else {
            let mut st = inner.lock();
            (0..workers).try_for_each(|_| inner.spawn_worker(&mut st, None).map(|_| ()))
        };
        if let Err(e) = started {
            inner.shutdown();
            return Err(e);
        }
        // Every pool worker attached, or a clear error.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut st = inner.lock();
        while st.workers.values().filter(|w| w.tx.is_some()).count() < workers {
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                let logs = inner.worker_logs();
                inner.shutdown();
                return Err(Error::Runtime(format!(
                    "{workers} worker processes did not attach within 60 s; a worker runs this program again ({}), whose Runtime::init must be reached{logs}",
                    inner.program.display(),
                )));
            }
            st = inner
                .changed
                .wait_timeout(st, deadline - now)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        drop(st);
        tracing::info!(workers, address = %inner.address, cluster = inner.cluster.is_some(), "runtime started");
        Ok(inner)
    }

    /// On a cluster, the end of the worker jobs' output, for an error.
    fn worker_logs(&self) -> String {
        let (Some(link), Some(tokio)) = (
            &self.cluster,
            self.lock_tokio().as_ref().map(|t| t.handle().clone()),
        ) else {
            return String::new();
        };
        let jobs = link.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = String::new();
        for (_, job) in jobs {
            let logs = tokio.block_on(link.client.logs(&job)).unwrap_or_default();
            let tail: String = logs
                .chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            out.push_str(&format!("\njob {job}'s output ends with:\n{tail}"));
        }
        out
    }

    /// Asks the head for `workers` worker processes, each a one-worker job of its own (so
    /// that one dying ends only its own job, and frees its CPU for a replacement); each
    /// attaches to its slot here.
    fn start_cluster_pool(&self, workers: usize) -> Result<()> {
        let Some(link) = &self.cluster else {
            return Err(Error::Runtime("not on a cluster".into()));
        };
        let slots: Vec<u64> = {
            let mut st = self.lock();
            (0..workers)
                .map(|_| {
                    let slot = st.next_slot;
                    st.next_slot += 1;
                    st.workers.insert(slot, Worker::remote(None));
                    slot
                })
                .collect()
        };
        let tokio = self.lock_tokio();
        let Some(tokio) = tokio.as_ref() else {
            return Err(Error::Runtime("the runtime has shut down".into()));
        };
        for slot in slots {
            let job = tokio
                .block_on(link.client.submit(&self.worker_job(slot)))
                .map_err(|e| {
                    Error::Runtime(format!("starting worker processes on the cluster: {e}"))
                })?;
            link.jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((slot, job));
        }
        Ok(())
    }

    /// The job that runs the worker process of `slot` on the cluster.
    fn worker_job(&self, slot: u64) -> streamrun_cluster::head::SubmitRequest {
        streamrun_cluster::head::SubmitRequest {
            name: Some(format!("{}-worker-{slot}", self.owner)),
            workers: 1,
            entrypoint: streamrun_cluster::store::Entrypoint::Binary {
                program: self.program.to_string_lossy().into_owned(),
                args: self.args.clone(),
            },
            env: [(
                WORKER_ENV.to_owned(),
                format!("{}|cluster:{slot}", self.address),
            )]
            .into(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_tokio(&self) -> MutexGuard<'_, Option<tokio::runtime::Runtime>> {
        self.tokio.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn raw(&self, id: ObjectId) -> RawRef {
        Arc::new(RefInner::new(id, WeakBackend::Driver(self.me.clone())))
    }

    /// Starts a worker process for a new slot (for `actor`, or the pool).
    fn spawn_worker(&self, st: &mut State, actor: Option<u64>) -> Result<u64> {
        if self.cluster.is_some() {
            // On a cluster, an actor takes over an idle pool worker when there is one (the
            // cluster's CPUs all went to the pool). Otherwise a process is a job of its own,
            // asked for once the lock is let go (`launch_pending`).
            if let Some(actor) = actor {
                let idle = st
                    .workers
                    .iter()
                    .filter(|(_, w)| w.actor.is_none() && w.tx.is_some())
                    .filter(|(_, w)| w.in_flight == 0 && w.lease.is_none())
                    .map(|(slot, _)| *slot)
                    .min();
                if let Some(slot) = idle
                    && let Some(worker) = st.workers.get_mut(&slot)
                {
                    worker.actor = Some(actor);
                    return Ok(slot);
                }
            }
            let slot = st.next_slot;
            st.next_slot += 1;
            st.workers.insert(slot, Worker::remote(actor));
            st.to_launch.push(slot);
            return Ok(slot);
        }
        let slot = st.next_slot;
        st.next_slot += 1;
        let spec = format!(
            "{}|{slot}|{}|{}",
            self.address,
            self.memory_dir.display(),
            self.spill_dir.display()
        );
        let child = std::process::Command::new(&self.program)
            .args(&self.args)
            .env(WORKER_ENV, spec)
            .env_remove("STREAMRUN_ADDRESS")
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::Runtime(format!(
                    "starting a worker process ({}): {e}",
                    self.program.display()
                ))
            })?;
        st.workers.insert(
            slot,
            Worker {
                pid: Some(child.id()),
                child: Some(child),
                ..Worker::remote(actor)
            },
        );
        Ok(slot)
    }

    /// Asks the cluster for the actor processes recorded by `spawn_worker`, without
    /// waiting: each is a one-worker job that attaches to its slot.
    fn launch_pending(&self) {
        let slots = std::mem::take(&mut self.lock().to_launch);
        let (Some(link), Some(me)) = (&self.cluster, self.me.upgrade()) else {
            return;
        };
        let handle = match self.lock_tokio().as_ref() {
            Some(tokio) => tokio.handle().clone(),
            None => return,
        };
        for slot in slots {
            let request = self.worker_job(slot);
            let client = link.client.clone();
            let me = Arc::clone(&me);
            handle.spawn(async move {
                // A job placed on a node that dies before it starts ends without attaching:
                // it is asked for again, a few times, while the slot still waits.
                let mut last_error = String::new();
                for _ in 0..4 {
                    let job = match client.submit(&request).await {
                        Ok(job) => job,
                        Err(e) => {
                            last_error = e.to_string();
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    };
                    if let Some(link) = &me.cluster {
                        link.jobs
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((slot, job.clone()));
                    }
                    loop {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        if me.slot_settled(slot) {
                            return;
                        }
                        match client.job(&job).await {
                            Ok(record) if record.state.is_terminal() => {
                                last_error = format!(
                                    "its job {job} ended before it attached: {}",
                                    record.reason.unwrap_or_default()
                                );
                                break;
                            }
                            _ => {}
                        }
                    }
                }
                tracing::error!(slot, error = %last_error, "could not start a worker process");
                tokio::task::block_in_place(|| me.launch_failed(slot, &last_error));
            });
        }
    }

    /// Whether the process of `slot` has attached, or the slot is no longer wanted.
    fn slot_settled(&self, slot: u64) -> bool {
        let st = self.lock();
        st.closed || st.workers.get(&slot).is_none_or(|w| w.tx.is_some())
    }

    /// The cluster would not start the process of `slot`: an actor's ends (its pending
    /// calls fail, naming why); a pool slot is given up.
    fn launch_failed(&self, slot: u64, reason: &str) {
        let mut st = self.lock();
        let actor = st.workers.remove(&slot).and_then(|w| w.actor);
        if let Some(actor) = actor {
            if let Some(state) = st.actors.get_mut(&actor) {
                state.restarts_left = 0;
            }
            self.actor_died(
                &mut st,
                actor,
                format!("the cluster could not start its process: {reason}"),
            );
        }
        self.changed.notify_all();
        self.dispatch(&mut st);
    }

    /// Records a value and returns its first reference.
    pub(crate) fn put(&self, encoded: Encoded) -> Result<RawRef> {
        let id = ObjectId::random();
        let stored = self.store_value(encoded)?;
        self.lock().objects.insert(
            id,
            Obj {
                value: Some(Ok(stored)),
                refs: 1,
            },
        );
        Ok(self.raw(id))
    }

    /// Starts building a batch in the store's memory.
    pub(crate) fn batch_builder(
        &self,
        schema: arrow::datatypes::SchemaRef,
        capacity: usize,
    ) -> Result<streamrun_store::BatchBuilder<'_>> {
        Ok(self.store.batch_builder(&self.owner, schema, capacity)?)
    }

    /// Records a batch already in the store (built there) and returns its first reference.
    pub(crate) fn put_stored_batch(&self, stored: ObjectId) -> RawRef {
        let id = ObjectId::random();
        self.lock().objects.insert(
            id,
            Obj {
                value: Some(Ok(Stored::Store(BATCH, stored))),
                refs: 1,
            },
        );
        self.raw(id)
    }

    /// A value kept inline when small, else put in the store.
    fn store_value(&self, encoded: Encoded) -> Result<Stored> {
        match encoded {
            Encoded::Serde(bytes) if bytes.len() <= INLINE_MAX => Ok(Stored::Inline(SERDE, bytes)),
            Encoded::Serde(bytes) => {
                let object = self.store.put_bytes(&self.owner, &bytes)?;
                Ok(Stored::Store(SERDE, object.id))
            }
            Encoded::Batch(batch) => {
                if batch.get_array_memory_size() <= INLINE_MAX {
                    let bytes = Encoded::Batch(batch.clone())
                        .to_bytes()
                        .map_err(|e| Error::Encode(e.to_string()))?;
                    if bytes.len() <= INLINE_MAX {
                        return Ok(Stored::Inline(BATCH, bytes));
                    }
                }
                // Stored as a batch, which every process reads in place.
                let object = self.store.put_batch(&self.owner, &batch)?;
                Ok(Stored::Store(BATCH, object.id))
            }
        }
    }

    /// Drops one reference to `id`; the object goes with the last.
    pub(crate) fn release(&self, id: &ObjectId) {
        let mut st = self.lock();
        self.decref(&mut st, id);
    }

    fn decref(&self, st: &mut State, id: &ObjectId) {
        let gone = match st.objects.get_mut(id) {
            Some(obj) => {
                obj.refs = obj.refs.saturating_sub(1);
                obj.refs == 0
            }
            None => false,
        };
        if !gone {
            return;
        }
        if let Some(Ok(stored)) = st.objects.remove(id).and_then(|o| o.value) {
            self.discard(stored);
        }
        // The last result of a remembered task gone: the task, and its arguments, go too.
        if let Some(task) = st.made_by.remove(id) {
            let done = st.lineage.get_mut(&task).is_some_and(|(_, live)| {
                *live = live.saturating_sub(1);
                *live == 0
            });
            if done && let Some((spec, _)) = st.lineage.remove(&task) {
                for result in &spec.returns {
                    st.made_by.remove(result);
                }
                self.drop_args(st, &spec);
            }
        }
    }

    /// Lets a stored value go: from this store, or from the node that keeps it.
    fn discard(&self, stored: Stored) {
        match stored {
            Stored::Store(_, id) => {
                let _ = self.store.delete(&id);
            }
            Stored::Remote(_, id, address) => self.release_remote(id, address),
            Stored::Inline(..) => {}
        }
    }

    /// Waits for object `id` and returns what is stored.
    fn wait_one(&self, id: &ObjectId) -> Result<Stored> {
        let mut st = self.lock();
        loop {
            match st.objects.get(id) {
                None => {
                    return Err(Error::Runtime(format!(
                        "object {id} is not known here (released, or from another runtime)"
                    )));
                }
                Some(Obj {
                    value: Some(value), ..
                }) => {
                    return value.clone().map_err(|e| {
                        if e == CANCELLED {
                            Error::Cancelled
                        } else {
                            Error::Task(e)
                        }
                    });
                }
                Some(_) => {
                    if st.closed {
                        return Err(Error::Runtime("the runtime has shut down".into()));
                    }
                    st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    pub(crate) fn get_serde<T: DeserializeOwned>(&self, id: &ObjectId) -> Result<T> {
        let decode = |bytes: &[u8]| {
            bincode::deserialize(bytes).map_err(|e| {
                Error::Encode(format!(
                    "object {id} is not a {}: {e}",
                    std::any::type_name::<T>()
                ))
            })
        };
        self.read_stored(id, |stored| match stored {
            Stored::Inline(SERDE, bytes) => decode(&bytes),
            Stored::Store(SERDE, stored) => decode(&self.store.get_bytes(&stored)?),
            Stored::Remote(SERDE, stored, address) => {
                decode(self.fetch_remote(stored, &address)?.as_slice())
            }
            _ => Err(Error::Encode(format!(
                "object {id} is a record batch: read it with get_batch"
            ))),
        })
    }

    pub(crate) fn get_batch(&self, id: &ObjectId) -> Result<RecordBatch> {
        self.read_stored(id, |stored| match stored {
            Stored::Inline(BATCH, bytes) => Ok(streamrun_store::decode_buffer(
                arrow::buffer::Buffer::from(bytes),
                false,
                &|| format!("object {id}"),
            )?),
            Stored::Store(BATCH, stored) => Ok(self.store.get_batch(&stored)?),
            Stored::Remote(BATCH, stored, address) => Ok(streamrun_store::decode_buffer(
                self.fetch_remote(stored, &address)?,
                true,
                &|| format!("object {id}"),
            )?),
            _ => Err(Error::Encode(format!(
                "object {id} is a serde value: read it with get"
            ))),
        })
    }

    /// Which of `ids` are there, once `num` are or `timeout` passes.
    pub(crate) fn wait(
        &self,
        ids: &[ObjectId],
        num: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<bool>> {
        // A timeout too long to add is no timeout.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut st = self.lock();
        loop {
            let ready: Vec<bool> = ids
                .iter()
                .map(|id| st.objects.get(id).is_none_or(|o| o.value.is_some()))
                .collect();
            let count = ready.iter().filter(|r| **r).count();
            let expired = deadline.is_some_and(|d| Instant::now() >= d);
            if count >= num || expired || st.closed {
                return Ok(ready);
            }
            st = match deadline {
                Some(d) => {
                    self.changed
                        .wait_timeout(st, d.saturating_duration_since(Instant::now()))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.changed.wait(st).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    /// Turns a caller's arguments into a task's, putting large values in the store. Each
    /// reference argument holds a reference until the task is done.
    /// The caller keeps `args` (and so their references) until it has let the lock go: the
    /// last reference's drop takes the lock.
    fn task_args(&self, st: &mut State, args: Vec<Prepared>) -> Result<Vec<TaskArg>> {
        // Every reference is checked before any is taken: an error leaves nothing behind.
        if let Some(Prepared::Ref(id)) = args
            .iter()
            .find(|a| matches!(a, Prepared::Ref(id) if !st.objects.contains_key(id)))
        {
            let id = *id;
            self.discard_prepared(args);
            return Err(Error::Runtime(format!(
                "argument object {id} is not known here"
            )));
        }
        let mut out = Vec::with_capacity(args.len());
        for arg in args {
            match arg {
                Prepared::Ref(id) => {
                    if let Some(obj) = st.objects.get_mut(&id) {
                        obj.refs += 1;
                    }
                    out.push(TaskArg::Ref(id));
                }
                Prepared::Value(stored) => match stored {
                    Stored::Inline(encoding, bytes) => out.push(TaskArg::Inline(encoding, bytes)),
                    // A large argument is put once, and read in place by the worker.
                    stored => {
                        let id = ObjectId::random();
                        st.objects.insert(
                            id,
                            Obj {
                                value: Some(Ok(stored)),
                                refs: 1,
                            },
                        );
                        out.push(TaskArg::Ref(id));
                    }
                },
            }
        }
        Ok(out)
    }

    /// A caller's arguments made ready before the table is locked: large values go into the
    /// store here, where a full store may make the put wait.
    fn prepare(&self, args: &[ArgSpec]) -> Result<Vec<Prepared>> {
        self.prepare_each(args.iter().map(|arg| match arg {
            ArgSpec::Ref(r) => Ok(Prepared::Ref(r.id)),
            ArgSpec::Value(encoded) => self.store_value(encoded.clone()).map(Prepared::Value),
        }))
    }

    /// Arguments made ready one by one; at the first that fails, those already put in the
    /// store go.
    fn prepare_each(&self, args: impl Iterator<Item = Result<Prepared>>) -> Result<Vec<Prepared>> {
        let mut out = Vec::new();
        for prepared in args {
            match prepared {
                Ok(p) => out.push(p),
                Err(e) => {
                    self.discard_prepared(out);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Lets go of the values arguments put in the store.
    fn discard_prepared(&self, prepared: Vec<Prepared>) {
        for arg in prepared {
            if let Prepared::Value(stored) = arg {
                self.discard(stored);
            }
        }
    }

    pub(crate) fn submit_task(
        &self,
        name: &str,
        args: Vec<ArgSpec>,
        num_returns: usize,
        options: TaskOptions,
    ) -> Result<Vec<RawRef>> {
        let submission = Submission {
            function: name.to_owned(),
            returns: (0..num_returns.max(1))
                .map(|_| ObjectId::random())
                .collect(),
            shape: shape(options.num_cpus, options.num_gpus, &options.resources),
            retries: options.max_retries,
            retry_exceptions: options.retry_exceptions,
            spread: options.spread,
            actor: None,
            parent: None,
        };
        // Checked before large arguments go into the store, and again with them.
        self.admit(&self.lock(), &submission)?;
        let prepared = self.prepare(&args)?;
        // `args` (and their references) outlive the lock `enqueue` takes.
        self.enqueue(submission, prepared)
    }

    pub(crate) fn submit_actor_call(
        &self,
        actor: u64,
        method: &str,
        args: Vec<ArgSpec>,
    ) -> Result<Vec<RawRef>> {
        let submission = Submission {
            function: method.to_owned(),
            returns: vec![ObjectId::random()],
            shape: Vec::new(),
            retries: 0,
            retry_exceptions: false,
            spread: false,
            actor: Some(actor),
            parent: None,
        };
        self.admit(&self.lock(), &submission)?;
        let prepared = self.prepare(&args)?;
        self.enqueue(submission, prepared)
    }

    /// Whether a submission can be taken now: the runtime runs, the cluster could ever
    /// meet its request, the queue has room, its actor lives.
    fn admit(&self, st: &State, submission: &Submission) -> Result<()> {
        if st.closed {
            return Err(Error::Runtime("the runtime has shut down".into()));
        }
        match submission.actor {
            None => {
                check_fits(
                    st,
                    &format!("task {}", submission.function),
                    &submission.shape,
                )?;
            }
            Some(actor) => match st.actors.get(&actor).map(|a| &a.status) {
                None => {
                    return Err(Error::ActorDead {
                        id: actor,
                        reason: "no such actor".into(),
                    });
                }
                Some(ActorStatus::Dead(reason)) => {
                    return Err(Error::ActorDead {
                        id: actor,
                        reason: reason.clone(),
                    });
                }
                Some(ActorStatus::Alive) => {}
            },
        }
        if st.pending.len() >= MAX_PENDING {
            return Err(Error::Runtime(format!(
                "{MAX_PENDING} tasks are already waiting to run; get or wait on some first"
            )));
        }
        Ok(())
    }

    /// Queues a task (or an actor call) whose arguments are ready, and returns the
    /// references to its results. What fails leaves nothing behind.
    fn enqueue(&self, submission: Submission, prepared: Vec<Prepared>) -> Result<Vec<RawRef>> {
        let mut st = self.lock();
        if let Err(e) = self.admit(&st, &submission) {
            self.discard_prepared(prepared);
            return Err(e);
        }
        let args = self.task_args(&mut st, prepared)?;
        for id in &submission.returns {
            st.objects.insert(
                *id,
                Obj {
                    value: None,
                    refs: 1,
                },
            );
        }
        let refs = submission.returns.iter().map(|id| self.raw(*id)).collect();
        // An actor's calls run again after a restart as often as the actor says.
        let retries = match submission.actor {
            Some(actor) => st.actors.get(&actor).map_or(0, |a| a.task_retries),
            None => submission.retries,
        };
        let id = st.next_task;
        st.next_task += 1;
        // One deeper than the task that submitted it; an actor's calls keep the order they
        // were made in, behind its constructor. Before every task less deep, after those
        // as deep.
        let depth = match (submission.actor, submission.parent) {
            (None, Some(parent)) => st
                .in_flight
                .values()
                .find(|sent| (sent.slot, sent.seq) == parent)
                .map_or(1, |sent| sent.spec.depth + 1),
            _ => 0,
        };
        let at = st.pending.partition_point(|s| s.depth >= depth);
        st.pending.insert(
            at,
            Spec {
                id,
                function: submission.function,
                args,
                returns: submission.returns,
                shape: submission.shape,
                retries_left: retries,
                retry_exceptions: submission.retry_exceptions,
                spread: submission.spread,
                actor: submission.actor,
                create: false,
                rebuilds: 0,
                depth,
            },
        );
        self.dispatch(&mut st);
        Ok(refs)
    }

    pub(crate) fn create_actor(
        &self,
        type_name: &str,
        constructor: &str,
        args: Vec<ArgSpec>,
        options: ActorOptions,
    ) -> Result<u64> {
        let prepared = self.prepare(&args)?;
        self.create_actor_prepared(type_name, constructor, prepared, options)
    }

    /// Starts an actor whose constructor's arguments are ready.
    fn create_actor_prepared(
        &self,
        type_name: &str,
        constructor: &str,
        prepared: Vec<Prepared>,
        options: ActorOptions,
    ) -> Result<u64> {
        let shape = shape(0.0, 0.0, &options.resources);
        let mut st = self.lock();
        let refused = if st.closed {
            Err(Error::Runtime("the runtime has shut down".into()))
        } else if let Err(e) = check_fits(&st, &format!("actor {type_name}"), &shape) {
            Err(e)
        } else if !fits(&st.available, &shape) {
            Err(Error::Unschedulable(format!(
                "actor {type_name} asks for {}, and only {} is free while other actors hold the rest",
                describe(&shape),
                describe_amounts(&st.available)
            )))
        } else if let Some(name) = options.name.as_ref().filter(|n| st.names.contains_key(*n)) {
            Err(Error::Runtime(format!(
                "an actor is already named '{name}'"
            )))
        } else {
            Ok(())
        };
        if let Err(e) = refused {
            self.discard_prepared(prepared);
            return Err(e);
        }
        let args = self.task_args(&mut st, prepared)?;
        let id = st.next_actor;
        st.next_actor += 1;
        let task = st.next_task;
        st.next_task += 1;
        let slot = match self.spawn_worker(&mut st, Some(id)) {
            Ok(slot) => slot,
            Err(e) => {
                // The references its arguments took go back.
                for arg in &args {
                    if let TaskArg::Ref(object) = arg {
                        self.decref(&mut st, object);
                    }
                }
                return Err(e);
            }
        };
        take(&mut st.available, &shape);
        let constructor = Spec {
            id: task,
            function: constructor.to_owned(),
            args,
            returns: Vec::new(),
            shape: Vec::new(),
            retries_left: 0,
            retry_exceptions: false,
            spread: false,
            actor: Some(id),
            create: true,
            rebuilds: 0,
            depth: 0,
        };
        if let Some(name) = &options.name {
            st.names.insert(name.clone(), id);
        }
        // The actor keeps its constructor's arguments, to run it again on a restart.
        for arg in &constructor.args {
            if let TaskArg::Ref(object) = arg
                && let Some(obj) = st.objects.get_mut(object)
            {
                obj.refs += 1;
            }
        }
        st.actors.insert(
            id,
            ActorState {
                slot,
                status: ActorStatus::Alive,
                restarts_left: options.max_restarts,
                task_retries: options.max_task_retries,
                constructor: constructor.clone(),
                type_name: type_name.to_owned(),
                shape,
            },
        );
        st.pending.push_back(constructor);
        self.dispatch(&mut st);
        drop(st);
        self.launch_pending();
        Ok(id)
    }

    pub(crate) fn named_actor(&self, name: &str, type_name: &str) -> Result<u64> {
        let st = self.lock();
        let id = *st
            .names
            .get(name)
            .ok_or_else(|| Error::NoSuchActor(name.to_owned()))?;
        match st.actors.get(&id) {
            Some(a) if a.type_name == type_name => Ok(id),
            Some(a) => Err(Error::Runtime(format!(
                "actor '{name}' is a {}, not a {type_name}",
                a.type_name
            ))),
            None => Err(Error::NoSuchActor(name.to_owned())),
        }
    }

    pub(crate) fn kill_actor(&self, actor: u64) -> Result<()> {
        let mut st = self.lock();
        let Some(state) = st.actors.get_mut(&actor) else {
            return Err(Error::ActorDead {
                id: actor,
                reason: "no such actor".into(),
            });
        };
        state.restarts_left = 0;
        let slot = state.slot;
        // Its process goes: killed here, and its stream closed (which ends a cluster's).
        if let Some(worker) = st.workers.get_mut(&slot) {
            worker.tx = None;
            if let Some(child) = worker.child.as_mut() {
                let _ = child.kill();
            }
        }
        // Dead for good: its resources come back, its waiting calls fail.
        self.actor_died(&mut st, actor, "killed".into());
        self.changed.notify_all();
        Ok(())
    }

    /// Cancels the task making `id`: one waiting is taken off the queue; with `force`, a
    /// running task (not an actor's call) is stopped by ending its worker process; the
    /// tasks queued behind it on that worker run elsewhere, not charged a retry.
    pub(crate) fn cancel(&self, id: &ObjectId, force: bool) -> Result<bool> {
        let mut st = self.lock();
        if let Some(at) = st.pending.iter().position(|s| s.returns.contains(id))
            && let Some(spec) = st.pending.remove(at)
        {
            self.finish_failed(&mut st, &spec, CANCELLED.into());
            return Ok(true);
        }
        if !force {
            return Ok(false);
        }
        let Some((task, actor, slot)) = st
            .in_flight
            .iter()
            .find(|(_, sent)| sent.spec.returns.contains(id))
            .map(|(task, sent)| (*task, sent.spec.actor, sent.slot))
        else {
            return Ok(false);
        };
        if let Some(actor) = actor {
            return Err(Error::Runtime(format!(
                "a running call of actor {actor} cannot be stopped alone: kill the actor instead"
            )));
        }
        // The job that runs the worker, on a cluster (the latest asked for its slot).
        let job = self.cluster.as_ref().and_then(|link| {
            link.jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .rfind(|(s, _)| *s == slot)
                .map(|(_, job)| job.clone())
        });
        let Some(worker) = st.workers.get_mut(&slot) else {
            return Ok(false);
        };
        if worker.child.is_none() && job.is_none() {
            return Ok(false);
        }
        // It gets nothing more; its end puts back what it had, and replaces it.
        worker.doomed = true;
        worker.tx = None;
        if let Some(child) = worker.child.as_mut() {
            let _ = child.kill();
        }
        if let Some(Sent { spec, .. }) = st.in_flight.remove(&task) {
            if let Some(worker) = st.workers.get_mut(&slot) {
                worker.in_flight = worker.in_flight.saturating_sub(1);
            }
            self.finish_failed(&mut st, &spec, CANCELLED.into());
        }
        drop(st);
        if let (Some(job), Some(link), Some(tokio)) = (
            job,
            &self.cluster,
            self.lock_tokio().as_ref().map(|t| t.handle().clone()),
        ) {
            let client = link.client.clone();
            tokio.spawn(async move {
                if let Err(e) = client.stop(&job).await {
                    tracing::warn!(%job, error = %e, "stopping the job of a cancelled task");
                }
            });
        }
        Ok(true)
    }

    /// Worker `slot` runs the task it was sent as number `running`, which waits in a nested
    /// `get` or `wait`. A pool worker gets no more tasks meanwhile; those sent to it after
    /// that task (not started: it runs them in order) are taken back and go first among the
    /// tasks as deep in the queue again (their numbers are returned: the worker skips them); its lease's
    /// resources are lent out; and, while fewer pool workers than the pool's size do not
    /// wait, one more is started (up to `POOL_GROWTH` times the pool, or `POOL_FLOOR`), so
    /// tasks that wait for their children cannot hold every worker. An actor keeps its
    /// calls (they run in order) and its resources. A wait from no task that the driver
    /// knows runs there (a thread that outlived its task) changes nothing.
    ///
    /// Returns `None` when the worker was not marked (then [`unblock`](Self::unblock) is not
    /// called), else the numbers of the tasks taken back.
    pub(crate) fn block(&self, slot: u64, running: u64) -> Option<Vec<u64>> {
        let mut st = self.lock();
        let known = st
            .in_flight
            .values()
            .any(|sent| sent.slot == slot && sent.seq == running);
        let worker = st.workers.get_mut(&slot)?;
        if worker.actor.is_some() || worker.doomed || !known {
            return None;
        }
        worker.blocked += 1;
        if worker.blocked > 1 {
            return Some(Vec::new());
        }
        if let Some(shape) = worker.lease.clone() {
            worker.lent = true;
            give(&mut st.available, &shape);
        }
        let mut taken: Vec<(u64, u64)> = st
            .in_flight
            .iter()
            .filter(|(_, sent)| sent.slot == slot && sent.seq > running)
            .map(|(id, sent)| (sent.seq, *id))
            .collect();
        taken.sort_unstable();
        for (_, id) in taken.iter().rev() {
            if let Some(sent) = st.in_flight.remove(id) {
                // First among the tasks as deep: after the children just submitted.
                let at = st.pending.partition_point(|s| s.depth > sent.spec.depth);
                st.pending.insert(at, sent.spec);
            }
        }
        if let Some(worker) = st.workers.get_mut(&slot) {
            worker.in_flight = worker.in_flight.saturating_sub(taken.len());
        }
        let pool = st
            .workers
            .values()
            .filter(|w| w.actor.is_none() && !w.doomed);
        let (all, waiting) = pool.fold((0, 0), |(all, waiting), w| {
            (all + 1, waiting + usize::from(w.blocked > 0))
        });
        let cap = (st.pool_size * POOL_GROWTH).max(POOL_FLOOR);
        if all - waiting < st.pool_size {
            if all < cap {
                if let Err(e) = self.spawn_worker(&mut st, None) {
                    tracing::warn!(error = %e, "could not start a worker while tasks wait");
                }
            } else if waiting >= all {
                tracing::warn!(
                    workers = all,
                    "every pool worker waits in a nested get and the pool is at its cap: the tasks they wait for cannot run"
                );
            }
        }
        self.dispatch(&mut st);
        drop(st);
        self.launch_pending();
        Some(taken.into_iter().map(|(seq, _)| seq).collect())
    }

    /// Worker `slot`'s nested wait, which [`block`](Self::block) marked, is over: it takes
    /// its lent resources back (the cluster may be oversubscribed for a while, as in Ray)
    /// and can get tasks again.
    pub(crate) fn unblock(&self, slot: u64) {
        let mut st = self.lock();
        let Some(worker) = st.workers.get_mut(&slot) else {
            return;
        };
        worker.blocked = worker.blocked.saturating_sub(1);
        if worker.blocked == 0 && worker.lent {
            worker.lent = false;
            if let Some(shape) = worker.lease.clone() {
                take(&mut st.available, &shape);
            }
        }
        self.dispatch(&mut st);
    }

    /// What the scheduler holds, for diagnosing a stall.
    pub(crate) fn describe_state(&self) -> String {
        let st = self.lock();
        let mut out = format!(
            "available {} pool {}\npending {}: {:?}\n",
            describe_amounts(&st.available),
            st.pool_size,
            st.pending.len(),
            st.pending
                .iter()
                .take(20)
                .map(|s| (
                    s.id,
                    s.depth,
                    s.function.rsplit("::").next().unwrap_or(""),
                    s.actor
                ))
                .collect::<Vec<_>>()
        );
        let mut slots: Vec<_> = st.workers.keys().copied().collect();
        slots.sort_unstable();
        for slot in slots {
            if let Some(w) = st.workers.get(&slot) {
                let tasks: Vec<(u64, u64)> = st
                    .in_flight
                    .iter()
                    .filter(|(_, sent)| sent.slot == slot)
                    .map(|(id, sent)| (*id, sent.seq))
                    .collect();
                out += &format!(
                    "worker {slot}: attached {} actor {:?} in_flight {} lease {:?} blocked {} lent {} doomed {} sent {} tasks {:?}\n",
                    w.tx.is_some(),
                    w.actor,
                    w.in_flight,
                    w.lease,
                    w.blocked,
                    w.lent,
                    w.doomed,
                    w.sent,
                    tasks
                );
            }
        }
        out
    }

    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.lock()
            .workers
            .values()
            .filter(|w| w.tx.is_some())
            .filter_map(|w| w.pid)
            .collect()
    }

    pub(crate) fn actor_pid(&self, actor: u64) -> Option<u32> {
        let st = self.lock();
        let slot = st.actors.get(&actor)?.slot;
        st.workers.get(&slot).filter(|w| w.tx.is_some())?.pid
    }

    /// Sends every task that can run now: its arguments are there, and a worker can take it
    /// (the actor's own worker, a worker leased for its shape with room in its pipeline, or
    /// an idle worker whose lease the free resources allow).
    fn dispatch(&self, st: &mut State) {
        let mut batches: HashMap<u64, Vec<proto::Task>> = HashMap::new();
        // An actor whose next call waits keeps its later calls waiting too (calls run in the
        // order they were made).
        let mut held: HashSet<u64> = HashSet::new();
        let mut pool_full = false;
        let mut i = 0;
        while i < st.pending.len() {
            let spec = &st.pending[i];
            if spec.actor.is_some_and(|a| held.contains(&a)) || (spec.actor.is_none() && pool_full)
            {
                i += 1;
                continue;
            }
            match self.arguments_state(st, spec) {
                Err(reason) => {
                    if let Some(spec) = st.pending.remove(i) {
                        self.finish_failed(st, &spec, reason);
                    }
                    continue;
                }
                Ok(false) => {
                    if let Some(actor) = spec.actor {
                        held.insert(actor);
                    }
                    i += 1;
                    continue;
                }
                Ok(true) => {}
            }
            let slot = match spec.actor {
                Some(actor) => match st.actors.get(&actor) {
                    Some(a) if a.status != ActorStatus::Alive => {
                        let reason = match &a.status {
                            ActorStatus::Dead(r) => r.clone(),
                            ActorStatus::Alive => String::new(),
                        };
                        if let Some(spec) = st.pending.remove(i) {
                            self.finish_failed(
                                st,
                                &spec,
                                format!("actor {actor} is dead: {reason}"),
                            );
                        }
                        continue;
                    }
                    Some(a) if st.workers.get(&a.slot).is_some_and(|w| w.tx.is_some()) => a.slot,
                    _ => {
                        held.insert(actor);
                        i += 1;
                        continue;
                    }
                },
                None => match self.pool_worker(
                    st,
                    &spec.shape.clone(),
                    self.preferred_node(st, spec),
                    spec.spread,
                ) {
                    Some(slot) => slot,
                    None => {
                        pool_full = true;
                        i += 1;
                        continue;
                    }
                },
            };
            let Some(spec) = st.pending.remove(i) else {
                break;
            };
            let mut task = self.wire_task(st, &spec);
            let mut seq = 0;
            if let Some(worker) = st.workers.get_mut(&slot) {
                worker.in_flight += 1;
                worker.sent += 1;
                seq = worker.sent;
            }
            task.seq = seq;
            st.in_flight.insert(spec.id, Sent { spec, slot, seq });
            batches.entry(slot).or_default().push(task);
        }
        for (slot, tasks) in batches {
            let sent = st
                .workers
                .get(&slot)
                .and_then(|w| w.tx.as_ref())
                .is_some_and(|tx| tx.send(Ok(ToWorker { tasks })).is_ok());
            if !sent {
                tracing::debug!(slot, "a worker went away while being sent tasks");
            }
        }
    }

    /// The node that keeps a task's large arguments (the first kept by another node), where
    /// it had best run.
    fn preferred_node(&self, st: &State, spec: &Spec) -> Option<String> {
        spec.args.iter().find_map(|arg| match arg {
            TaskArg::Ref(id) => match st.objects.get(id).and_then(|o| o.value.as_ref()) {
                Some(Ok(Stored::Remote(_, _, address))) => Some(address.clone()),
                _ => None,
            },
            TaskArg::Inline(..) => None,
        })
    }

    /// A pool worker for a task of `shape`: an idle one that the free resources let lease
    /// it, else one leased for the shape with room in its pipeline (the least busy). First on
    /// the `preferred` node; among idle workers, on the busiest node (packing), or with
    /// `spread` on the least busy.
    fn pool_worker(
        &self,
        st: &mut State,
        shape: &Shape,
        preferred: Option<String>,
        spread: bool,
    ) -> Option<u64> {
        let can_lease = fits(&st.available, shape);
        let mut load: HashMap<&str, usize> = HashMap::new();
        for worker in st.workers.values() {
            *load.entry(worker.node.as_str()).or_default() += worker.in_flight;
        }
        let chosen = st
            .workers
            .iter()
            .filter(|(_, w)| w.actor.is_none() && w.tx.is_some() && w.blocked == 0)
            .filter(|(_, w)| {
                let leased = w.lease.as_ref() == Some(shape) && w.in_flight < PIPELINE;
                let idle = w.in_flight == 0 && can_lease;
                leased || idle
            })
            .min_by_key(|(slot, w)| {
                let elsewhere = preferred.as_deref().is_some_and(|p| w.node != p);
                let busy = w.in_flight > 0;
                let node_load = load.get(w.node.as_str()).copied().unwrap_or(0);
                // Spread: the least busy node first. Otherwise pack: the busiest node that
                // still has an idle worker, as Ray's default policy fills a node first.
                let node_order = if spread {
                    node_load
                } else {
                    usize::MAX - node_load
                };
                (elsewhere, busy, node_order, w.in_flight, **slot)
            })
            .map(|(slot, w)| (*slot, w.in_flight == 0 && w.lease.as_ref() != Some(shape)))?;
        let (slot, new_lease) = chosen;
        if new_lease {
            take(&mut st.available, shape);
            if let Some(worker) = st.workers.get_mut(&slot) {
                worker.lease = Some(shape.clone());
            }
        }
        Some(slot)
    }

    /// Whether a task's arguments are all there (`Ok(true)`), still coming (`Ok(false)`), or
    /// one failed (`Err`, its reason).
    fn arguments_state(&self, st: &State, spec: &Spec) -> std::result::Result<bool, String> {
        for arg in &spec.args {
            if let TaskArg::Ref(id) = arg {
                match st.objects.get(id).and_then(|o| o.value.as_ref()) {
                    None => return Ok(false),
                    Some(Err(e)) => return Err(format!("an argument's task failed: {e}")),
                    Some(Ok(_)) => {}
                }
            }
        }
        Ok(true)
    }

    /// The task as a worker receives it.
    fn wire_task(&self, st: &State, spec: &Spec) -> proto::Task {
        let args = spec
            .args
            .iter()
            .map(|arg| {
                let stored = match arg {
                    TaskArg::Inline(encoding, bytes) => Stored::Inline(*encoding, bytes.clone()),
                    TaskArg::Ref(id) => match st.objects.get(id).and_then(|o| o.value.clone()) {
                        Some(Ok(stored)) => stored,
                        // Checked by `arguments_state` just before.
                        _ => Stored::Inline(SERDE, Bytes::new()),
                    },
                };
                self.wire_value(stored)
            })
            .collect();
        proto::Task {
            id: spec.id,
            function: spec.function.clone(),
            args,
            actor: spec.actor.unwrap_or(0),
            create: spec.create,
            seq: 0,
        }
    }

    /// Fails a task's results with `reason` and drops its argument references.
    fn finish_failed(&self, st: &mut State, spec: &Spec, reason: String) {
        for id in &spec.returns {
            if let Some(obj) = st.objects.get_mut(id) {
                obj.value = Some(Err(reason.clone()));
            }
        }
        // A task run again to rebuild a result holds its arguments once, through its
        // lineage.
        self.forget_lineage(st, spec.id);
        self.drop_args(st, spec);
        self.changed.notify_all();
    }

    /// Forgets task `task`'s lineage (not its arguments, which the caller drops).
    fn forget_lineage(&self, st: &mut State, task: u64) {
        if let Some((spec, _)) = st.lineage.remove(&task) {
            for id in &spec.returns {
                st.made_by.remove(id);
            }
        }
    }

    /// Makes object `id` again, lost with the node that kept it, by running the task that
    /// made it once more. Objects put by the driver, and actors' results, cannot be.
    fn rebuild(&self, id: &ObjectId, lost: &Error) -> Result<()> {
        let mut st = self.lock();
        self.rebuild_locked(&mut st, id, &lost.to_string())?;
        self.dispatch(&mut st);
        drop(st);
        self.launch_pending();
        Ok(())
    }

    fn rebuild_locked(&self, st: &mut State, id: &ObjectId, lost: &str) -> Result<()> {
        let Some(spec) = st
            .made_by
            .get(id)
            .and_then(|task| st.lineage.get(task))
            .map(|(spec, _)| spec.clone())
        else {
            return Err(Error::Runtime(format!(
                "object {id} was lost with the node that kept it ({lost}), and cannot be rebuilt: only results of remote functions can be"
            )));
        };
        // Already being rebuilt (another reader met the loss first).
        let underway = spec
            .returns
            .iter()
            .any(|r| st.objects.get(r).is_some_and(|o| o.value.is_none()))
            || st.in_flight.contains_key(&spec.id)
            || st.pending.iter().any(|p| p.id == spec.id);
        if underway {
            return Ok(());
        }
        tracing::warn!(object = %id, task = spec.id, "rebuilding a lost object");
        self.rebuilt
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for result in &spec.returns {
            if let Some(obj) = st.objects.get_mut(result) {
                obj.value = None;
            }
        }
        let mut again = spec;
        again.retries_left = again.retries_left.max(1);
        st.pending.push_front(again);
        Ok(())
    }

    /// A task could not fetch the arguments at `lost` (their node is gone): each is rebuilt
    /// from its lineage, and the task waits for them, a few times at most. Returns whether
    /// all could be.
    fn rebuild_args(&self, st: &mut State, spec: &Spec, lost: &[u32], reason: &str) -> bool {
        if spec.rebuilds >= MAX_REBUILDS {
            return false;
        }
        lost.iter()
            .all(|index| match spec.args.get(*index as usize) {
                Some(TaskArg::Ref(id)) => self.rebuild_locked(st, id, reason).is_ok(),
                _ => false,
            })
    }

    /// `read` on what object `id` holds; an object lost with its node is rebuilt from its
    /// lineage (a few times at most) and read again.
    fn read_stored<T>(&self, id: &ObjectId, read: impl Fn(Stored) -> Result<T>) -> Result<T> {
        let mut attempts = 0;
        loop {
            let stored = self.wait_one(id)?;
            let remote = matches!(stored, Stored::Remote(..));
            match read(stored) {
                Err(e @ Error::Store(streamrun_store::StoreError::Remote { .. }))
                    if remote && attempts < 3 =>
                {
                    attempts += 1;
                    self.rebuild(id, &e)?;
                }
                other => return other,
            }
        }
    }

    fn drop_args(&self, st: &mut State, spec: &Spec) {
        for arg in &spec.args {
            if let TaskArg::Ref(id) = arg {
                self.decref(st, id);
            }
        }
    }

    /// A worker's results.
    fn done(&self, slot: u64, done: Vec<proto::Done>) {
        // Results staged in the store are taken in before the table is locked.
        let adopted: Vec<(proto::Done, Vec<Stored>, Option<String>)> = done
            .into_iter()
            .map(|mut result| {
                let mut stored = Vec::with_capacity(result.returns.len());
                let mut failure = None;
                if result.error.is_empty() {
                    for value in std::mem::take(&mut result.returns) {
                        match self.adopt_value(value) {
                            Ok(s) => stored.push(s),
                            Err(e) => failure = Some(e.to_string()),
                        }
                    }
                }
                (result, stored, failure)
            })
            .collect();
        let mut st = self.lock();
        for (result, stored, failure) in adopted {
            // Only from the worker it was sent to: a task taken back and sent elsewhere
            // may still be reported by the first.
            let ours = st
                .in_flight
                .get(&result.id)
                .is_some_and(|sent| sent.slot == slot);
            let Some(Sent { spec, .. }) = ours.then(|| st.in_flight.remove(&result.id)).flatten()
            else {
                for value in stored {
                    self.discard(value);
                }
                continue;
            };
            self.free_worker_slot(&mut st, slot);
            if result.error.is_empty() {
                if let Some(reason) = failure {
                    for value in stored {
                        self.discard(value);
                    }
                    self.finish_failed(&mut st, &spec, reason);
                    continue;
                }
                // Results another node keeps can be made again: the task is remembered,
                // with its arguments, while they are referenced (not an actor's: its state
                // has moved on).
                let remote =
                    spec.actor.is_none() && stored.iter().any(|s| matches!(s, Stored::Remote(..)));
                let mut live = 0;
                for (id, value) in spec.returns.iter().zip(stored) {
                    match st.objects.get_mut(id) {
                        Some(obj) => {
                            obj.value = Some(Ok(value));
                            live += 1;
                        }
                        // Nobody holds the result any more.
                        None => self.discard(value),
                    }
                }
                let known = st.lineage.contains_key(&spec.id);
                if remote && live > 0 && !known {
                    for id in &spec.returns {
                        st.made_by.insert(*id, spec.id);
                    }
                    st.lineage.insert(spec.id, (spec, live));
                } else if !remote || live == 0 {
                    self.forget_lineage(&mut st, spec.id);
                    self.drop_args(&mut st, &spec);
                }
            } else if !result.lost_args.is_empty()
                && self.rebuild_args(&mut st, &spec, &result.lost_args, &result.error)
            {
                // It runs again once its arguments are made again (they come first).
                let mut again = spec;
                again.rebuilds += 1;
                let at = st.pending.len().min(result.lost_args.len());
                st.pending.insert(at, again);
            } else if spec.retry_exceptions && spec.retries_left > 0 {
                let mut again = spec;
                again.retries_left -= 1;
                st.pending.push_front(again);
            } else {
                if spec.create
                    && let Some(actor) = spec.actor
                {
                    // A constructor that fails fails again: the actor ends, as in Ray, and
                    // its process with it.
                    if let Some(state) = st.actors.get_mut(&actor) {
                        state.restarts_left = 0;
                    }
                    if let Some(worker) = st.workers.get_mut(&slot) {
                        worker.tx = None;
                        if let Some(child) = worker.child.as_mut() {
                            let _ = child.kill();
                        }
                    }
                    self.actor_died(
                        &mut st,
                        actor,
                        format!("its constructor failed: {}", result.error),
                    );
                }
                self.finish_failed(&mut st, &spec, result.error);
            }
        }
        self.changed.notify_all();
        self.dispatch(&mut st);
        drop(st);
        self.launch_pending();
    }

    /// One task fewer on a worker; its lease goes back with its last.
    fn free_worker_slot(&self, st: &mut State, slot: u64) {
        let mut freed = None;
        if let Some(worker) = st.workers.get_mut(&slot) {
            worker.in_flight = worker.in_flight.saturating_sub(1);
            if worker.in_flight == 0 {
                freed = worker.lease.take();
                // Resources lent out while it waited were given back then.
                if std::mem::take(&mut worker.lent) {
                    freed = None;
                }
            }
        }
        if let Some(shape) = freed {
            give(&mut st.available, &shape);
        }
    }

    /// A result as the driver keeps it; one the worker staged in the store is adopted.
    fn adopt_value(&self, value: proto::Value) -> Result<Stored> {
        let encoding = value.encoding;
        match value.kind {
            Some(proto::value::Kind::Inline(bytes)) => Ok(Stored::Inline(encoding, bytes)),
            // Kept by the store of the worker's node (on a cluster).
            Some(proto::value::Kind::Stored(id)) if !value.address.is_empty() => {
                Ok(Stored::Remote(encoding, id.parse()?, value.address))
            }
            Some(proto::value::Kind::Stored(id)) => {
                let id: ObjectId = id.parse()?;
                self.store
                    .adopt(&self.owner, id, crate::codec::store_kind(encoding), 1)?;
                Ok(Stored::Store(encoding, id))
            }
            None => Err(Error::Runtime(
                "a worker sent a result without a value".into(),
            )),
        }
    }

    /// Marks an actor dead for good, or starts it again when it has restarts left.
    fn actor_died(&self, st: &mut State, actor: u64, reason: String) {
        let Some(state) = st.actors.get_mut(&actor) else {
            return;
        };
        if matches!(state.status, ActorStatus::Dead(_)) {
            return;
        }
        if state.restarts_left > 0 {
            state.restarts_left -= 1;
            let constructor = state.constructor.clone();
            tracing::info!(actor, %reason, "restarting an actor");
            match self.spawn_worker(st, Some(actor)) {
                Ok(slot) => {
                    if let Some(state) = st.actors.get_mut(&actor) {
                        state.slot = slot;
                    }
                    // Its constructor runs first, before every call still waiting.
                    for arg in &constructor.args {
                        if let TaskArg::Ref(id) = arg
                            && let Some(obj) = st.objects.get_mut(id)
                        {
                            obj.refs += 1;
                        }
                    }
                    st.pending.push_front(constructor);
                    return;
                }
                Err(e) => {
                    if let Some(state) = st.actors.get_mut(&actor) {
                        state.status =
                            ActorStatus::Dead(format!("{reason}; restarting failed: {e}"));
                    }
                }
            }
        } else {
            state.status = ActorStatus::Dead(reason.clone());
        }
        let ended = st
            .actors
            .get(&actor)
            .filter(|a| matches!(a.status, ActorStatus::Dead(_)))
            .map(|a| (a.shape.clone(), a.constructor.clone()));
        if let Some((shape, constructor)) = ended {
            give(&mut st.available, &shape);
            // The arguments kept for restarts go.
            self.drop_args(st, &constructor);
            self.fail_actor_pending(st, actor, &reason);
        }
    }

    fn fail_actor_pending(&self, st: &mut State, actor: u64, reason: &str) {
        let (mine, rest): (VecDeque<Spec>, VecDeque<Spec>) = std::mem::take(&mut st.pending)
            .into_iter()
            .partition(|s| s.actor == Some(actor));
        st.pending = rest;
        for spec in mine {
            self.finish_failed(st, &spec, format!("actor {actor} is dead: {reason}"));
        }
    }

    /// A worker process attached.
    fn attached(
        &self,
        slot: u64,
        pid: u32,
        node: String,
        tx: mpsc::UnboundedSender<std::result::Result<ToWorker, Status>>,
    ) -> std::result::Result<(), Status> {
        let mut st = self.lock();
        let Some(worker) = st.workers.get_mut(&slot) else {
            return Err(Status::failed_precondition(format!(
                "no worker slot {slot}"
            )));
        };
        worker.tx = Some(tx);
        worker.pid = Some(pid);
        worker.node = node;
        tracing::debug!(slot, pid, "worker attached");
        self.changed.notify_all();
        self.dispatch(&mut st);
        Ok(())
    }

    /// A worker process's stream ended: it died, or the runtime is closing.
    fn detached(&self, slot: u64) {
        let mut st = self.lock();
        let Some(mut worker) = st.workers.remove(&slot) else {
            return;
        };
        // A lease lent out while its worker waited was given back then.
        if let Some(shape) = worker.lease.take()
            && !worker.lent
        {
            give(&mut st.available, &shape);
        }
        if let Some(mut child) = worker.child.take() {
            // Reaped off this thread: the process may still be exiting.
            std::thread::spawn(move || {
                let _ = child.kill();
                let _ = child.wait();
            });
        }
        if st.closed {
            self.changed.notify_all();
            return;
        }
        let pid = worker.pid.unwrap_or(0);
        if !worker.doomed {
            tracing::warn!(slot, pid, "a worker process died");
        }
        let lost: Vec<u64> = st
            .in_flight
            .iter()
            .filter(|(_, sent)| sent.slot == slot)
            .map(|(id, _)| *id)
            .collect();
        let mut lost_specs: Vec<Spec> = lost
            .iter()
            .filter_map(|id| st.in_flight.remove(id).map(|sent| sent.spec))
            .collect();
        lost_specs.sort_by_key(|s| s.id);
        let reason = format!("its worker process ({pid}) died");
        // A process the actor no longer runs in (replaced after its constructor failed) ends
        // without consequence for the actor.
        let current = worker
            .actor
            .filter(|a| st.actors.get(a).is_some_and(|state| state.slot == slot));
        match current {
            Some(actor) => {
                self.actor_died(&mut st, actor, reason.clone());
                let alive = st
                    .actors
                    .get(&actor)
                    .is_some_and(|a| a.status == ActorStatus::Alive);
                // Calls that were running: again after the restart when they may, else failed.
                let mut again = Vec::new();
                for spec in lost_specs {
                    if spec.create {
                        self.drop_args(&mut st, &spec);
                    } else if alive && spec.retries_left > 0 {
                        let mut spec = spec;
                        spec.retries_left -= 1;
                        again.push(spec);
                    } else {
                        self.finish_failed(&mut st, &spec, format!("actor {actor}: {reason}"));
                    }
                }
                // After the constructor, which `actor_died` put first.
                let at = usize::from(alive);
                for (k, spec) in again.into_iter().enumerate() {
                    st.pending.insert(at + k, spec);
                }
            }
            // Ended on purpose: what it had runs elsewhere, not charged a retry.
            None if worker.doomed => {
                for spec in lost_specs.into_iter().rev() {
                    st.pending.push_front(spec);
                }
                if let Err(e) = self.spawn_worker(&mut st, None) {
                    tracing::error!(error = %e, "could not replace a stopped worker");
                }
            }
            None => {
                for spec in lost_specs.into_iter().rev() {
                    if spec.retries_left > 0 {
                        let mut spec = spec;
                        spec.retries_left -= 1;
                        st.pending.push_front(spec);
                    } else {
                        self.finish_failed(
                            &mut st,
                            &spec,
                            format!("{reason}, and it has no retries left"),
                        );
                    }
                }
                if let Err(e) = self.spawn_worker(&mut st, None) {
                    tracing::error!(error = %e, "could not replace a dead worker");
                }
            }
        }
        self.changed.notify_all();
        self.dispatch(&mut st);
        drop(st);
        self.launch_pending();
    }

    pub(crate) fn shutdown(&self) {
        let children: Vec<std::process::Child> = {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            st.closed = true;
            for worker in st.workers.values_mut() {
                worker.tx = None;
            }
            st.workers
                .values_mut()
                .filter_map(|w| w.child.take())
                .collect()
        };
        self.changed.notify_all();
        // Workers end when their stream closes; any that lingers is killed.
        let deadline = Instant::now() + Duration::from_secs(2);
        for mut child in children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        // On a cluster, the jobs that ran the workers end too (those whose processes have
        // already gone have ended by themselves).
        let handle = self.lock_tokio().as_ref().map(|t| t.handle().clone());
        if let (Some(link), Some(tokio)) = (&self.cluster, handle) {
            let jobs = std::mem::take(&mut *link.jobs.lock().unwrap_or_else(|p| p.into_inner()));
            for (_, job) in jobs {
                let stopping = tokio.block_on(async {
                    tokio::time::timeout(Duration::from_secs(5), link.client.stop(&job)).await
                });
                if let Ok(Err(e)) = stopping {
                    tracing::debug!(%job, error = %e, "stopping a worker job");
                }
            }
        }
        if let Some(stop) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = stop.send(());
        }
        let tokio = self.lock_tokio().take();
        if let Some(tokio) = tokio {
            tokio.shutdown_timeout(Duration::from_secs(1));
        }
        let _ = std::fs::remove_dir_all(self.spill_dir.parent().unwrap_or(&self.spill_dir));
    }
}

/// Connects to the cluster whose head's REST address is `address`: a client carrying the
/// token, the host this machine is reached at from there (`STREAMRUN_DRIVER_HOST`, else the
/// address it uses to reach the head), the driver's store served over Flight, and the free
/// CPUs of the alive nodes.
async fn connect_cluster(
    address: &str,
    token: Option<String>,
    store: &Arc<LocalStore>,
) -> Result<(ClusterLink, String, usize)> {
    use streamrun_cluster::{local, token as tokens};
    let token = match token {
        Some(t) => t,
        None => tokens::for_client(&tokens::token_path(&local::head_dir(&local::home())))
            .map_err(|e| Error::Runtime(format!("the cluster's token: {e}")))?,
    };
    let client = streamrun_cluster::client::Client::new(address, token.clone())
        .map_err(|e| Error::Runtime(format!("the cluster at {address}: {e}")))?;
    let nodes = client
        .nodes()
        .await
        .map_err(|e| Error::Runtime(format!("the cluster at {address}: {e}")))?;
    let cpus: u32 = nodes
        .iter()
        .filter(|n| n.state == streamrun_cluster::store::NodeState::Alive)
        .map(|n| n.resources.cpus.saturating_sub(n.used_cpus))
        .sum();
    if cpus == 0 {
        return Err(Error::Unschedulable(format!(
            "the cluster at {address} has no free CPU on an alive node"
        )));
    }
    let host = match std::env::var("STREAMRUN_DRIVER_HOST") {
        Ok(h) if !h.is_empty() => h,
        _ => {
            let head = address
                .trim_start_matches("http://")
                .trim_start_matches("https://");
            std::net::UdpSocket::bind("0.0.0.0:0")
                .and_then(|s| s.connect(head).and_then(|()| s.local_addr()))
                .map(|a| a.ip().to_string())
                .map_err(|e| {
                    Error::Runtime(format!(
                        "finding this machine's address towards {head}: {e}; set STREAMRUN_DRIVER_HOST"
                    ))
                })?
        }
    };
    let listener =
        tonic::transport::server::TcpIncoming::bind(std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
            .map_err(|e| Error::Runtime(format!("binding the driver's store port: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Runtime(format!("reading the driver's store address: {e}")))?
        .port();
    let server = streamrun_store::flight::ObjectServer::new(Arc::clone(store), token.clone());
    tokio::spawn(server.serve(listener, std::future::pending()));
    Ok((
        ClusterLink {
            client,
            token,
            store_address: format!("{host}:{port}"),
            jobs: Mutex::new(Vec::new()),
        },
        host,
        cpus as usize,
    ))
}

/// Times a task waits for its lost arguments to be rebuilt before it fails.
const MAX_REBUILDS: u32 = 3;

/// The reason a cancelled task's results carry.
const CANCELLED: &str = "cancelled";

impl Inner {
    /// A value as a worker receives it: inline, or where it is stored (this driver's store
    /// is served at its Flight address on a cluster; on one machine, workers read it).
    fn wire_value(&self, stored: Stored) -> proto::Value {
        match stored {
            Stored::Inline(encoding, bytes) => proto::Value {
                kind: Some(proto::value::Kind::Inline(bytes)),
                encoding,
                address: String::new(),
            },
            Stored::Store(encoding, id) => proto::Value {
                kind: Some(proto::value::Kind::Stored(id.to_string())),
                encoding,
                address: self
                    .cluster
                    .as_ref()
                    .map(|c| c.store_address.clone())
                    .unwrap_or_default(),
            },
            Stored::Remote(encoding, id, address) => proto::Value {
                kind: Some(proto::value::Kind::Stored(id.to_string())),
                encoding,
                address,
            },
        }
    }

    /// The stored bytes of object `id`, kept by the store at `address`.
    fn fetch_remote(&self, id: ObjectId, address: &str) -> Result<arrow::buffer::Buffer> {
        let Some(link) = &self.cluster else {
            return Err(Error::Runtime(format!(
                "object {id} is on another node, and this runtime is not on a cluster"
            )));
        };
        let object = streamrun_store::ObjectRef {
            id,
            owner: self.owner.clone(),
            node: address.to_owned(),
        };
        let handle = match self.lock_tokio().as_ref() {
            Some(tokio) => tokio.handle().clone(),
            None => return Err(Error::Runtime("the runtime has shut down".into())),
        };
        let fetched = handle.block_on(streamrun_store::flight::fetch_stored(
            &object,
            address,
            &link.token,
            None,
            None,
        ))?;
        Ok(fetched.1)
    }

    /// Releases object `id` in the store at `address`, without waiting.
    fn release_remote(&self, id: ObjectId, address: String) {
        let (Some(link), Some(tokio)) = (
            &self.cluster,
            self.lock_tokio().as_ref().map(|t| t.handle().clone()),
        ) else {
            return;
        };
        let token = link.token.clone();
        let owner = self.owner.clone();
        tokio.spawn(async move {
            let object = streamrun_store::ObjectRef {
                id,
                owner,
                node: address.clone(),
            };
            if let Err(e) = streamrun_store::flight::release(&object, &address, &token, None).await
            {
                tracing::debug!(object = %id, error = %e, "releasing a remote object");
            }
        });
    }
}

struct Service(Arc<Inner>);

type OutStream =
    Pin<Box<dyn futures::Stream<Item = std::result::Result<ToWorker, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Driver for Service {
    type AttachStream = OutStream;
    type NestedStream = nested::ReplyStream;

    async fn nested(
        &self,
        request: Request<Streaming<proto::NestedRequest>>,
    ) -> std::result::Result<Response<Self::NestedStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(nested::serve(Arc::clone(&self.0), request.into_inner(), tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn attach(
        &self,
        request: Request<Streaming<FromWorker>>,
    ) -> std::result::Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = inbound
            .message()
            .await?
            .and_then(|m| m.hello)
            .ok_or_else(|| Status::invalid_argument("a worker's first message says hello"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::clone(&self.0);
        let slot = hello.slot;
        inner.attached(slot, hello.pid, hello.node, tx)?;
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                // The table's lock is held briefly: results are handled in place. Adopting
                // results staged in the store touches files, so the runtime is told first.
                let stored = message
                    .done
                    .iter()
                    .flat_map(|d| &d.returns)
                    .any(|v| matches!(v.kind, Some(proto::value::Kind::Stored(_))));
                if stored {
                    tokio::task::block_in_place(|| inner.done(slot, message.done));
                } else {
                    inner.done(slot, message.done);
                }
            }
            let inner = Arc::clone(&inner);
            let _ = tokio::task::spawn_blocking(move || inner.detached(slot)).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }
}
