//! # streamrun-core
//!
//! Streamrun's dynamic API, in the manner of Ray Core: remote functions, actors, and objects
//! passed by reference, run by worker processes.
//!
//! - **[`Runtime::init`]** starts an embedded cluster: a driver (this process) that holds the
//!   object table and schedules, a node-local object store, and one worker process per core,
//!   which are this same binary started again. A worker process's `Runtime::init` never
//!   returns: it serves tasks until the driver goes.
//! - **`#[remote]`** registers a function by a stable name; `name::remote(&rt, args…)`
//!   submits it and returns an [`ObjectRef`] at once. Arguments are values or references;
//!   a task waits for the references it is given.
//! - **Objects**: [`Runtime::put`], [`Runtime::get`], [`Runtime::get_all`],
//!   [`Runtime::wait`]. Serde values travel as bincode, Arrow record batches as Arrow data.
//!   Values up to 100 KiB ride in messages; larger ones go through the object store, read in
//!   place by the workers.
//! - **`#[actor]`** on an `impl` block makes the type an actor: `Type::remote(&rt, args…)`
//!   starts it in a worker process of its own, and its handle's methods run there in the
//!   order they are called.
//! - **Scheduling**: each task asks for logical resources (CPUs, GPUs, custom). A worker runs
//!   tasks of one resource shape under a *lease*: the shape's resources are taken when the
//!   worker gets its first task of that shape, and given back when it has none left, so a
//!   stream of like tasks keeps its workers without asking again. A request larger than the
//!   cluster is refused at once, naming what is missing.
//! - **Nested tasks**: inside a task or an actor's method, [`Runtime::current`] gives the
//!   same API, carried out by the driver; a task that waits for others lends its CPU out.
//!   Actor handles are values that can be passed to tasks and actors.
//! - **Failures**: a task whose worker process dies runs again, up to `max_retries` (3); one
//!   that fails or panics runs again only with `retry_exceptions`. An actor whose process
//!   dies starts again, its constructor run anew, up to `max_restarts`.
//!
//! ```no_run
//! use streamrun_core::{Runtime, remote};
//!
//! #[remote]
//! fn calculate_square(x: i64) -> i64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), streamrun_core::Error> {
//!     let rt = Runtime::init()?;
//!     let square = calculate_square::remote(&rt, 5)?;
//!     assert_eq!(rt.get(&square)?, 25);
//!     Ok(())
//! }
//! ```
//!
//! (`no_run`: a doc test cannot start its own binary again as workers.)

mod client;
pub mod codec;
mod driver;
pub mod registry;
mod worker;

/// The driver–worker protocol (generated from `proto/core.proto`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("streamrun.core.v1");
}

use std::marker::PhantomData;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arrow::array::RecordBatch;
use serde::Serialize;
use serde::de::DeserializeOwned;
use streamrun_store::ObjectId;

pub use driver::{RuntimeBuilder, WORKER_ENV};
#[doc(hidden)]
pub use inventory;
#[doc(hidden)]
pub use serde;
pub use streamrun_macros::{actor, remote};

use client::Client;
use driver::Inner;

/// What carries out a [`Runtime`]'s calls: the driver itself, or, inside a worker process,
/// a client of the driver (nested tasks).
#[derive(Clone)]
pub(crate) enum Backend {
    Driver(Arc<Inner>),
    Worker(Arc<Client>),
}

/// A [`Backend`] that does not keep it alive.
#[derive(Debug, Clone)]
pub(crate) enum WeakBackend {
    Driver(Weak<Inner>),
    Worker(Weak<Client>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Driver(_) => "Backend::Driver",
            Backend::Worker(_) => "Backend::Worker",
        })
    }
}

impl WeakBackend {
    fn upgrade(&self) -> Option<Backend> {
        match self {
            WeakBackend::Driver(w) => w.upgrade().map(Backend::Driver),
            WeakBackend::Worker(w) => w.upgrade().map(Backend::Worker),
        }
    }
}

/// The runtime of this process, for [`Runtime::current`] and for reading actor handles
/// that travelled as values: the driver's once it has started, a worker's client in a
/// worker process.
static CURRENT: std::sync::Mutex<Option<WeakBackend>> = std::sync::Mutex::new(None);

pub(crate) fn set_current(backend: WeakBackend) {
    *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(backend);
}

fn current_backend() -> Option<Backend> {
    if let Some(client) = client::current() {
        return client.ok().map(Backend::Worker);
    }
    CURRENT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(WeakBackend::upgrade)
}

/// In a worker process (started by a driver), serves tasks and never returns; elsewhere,
/// returns at once. [`Runtime::init`] does this first; a program that does other work
/// before it (a test that starts a cluster, say) calls this at its very start, so that its
/// workers do not do that work too.
pub fn serve_if_worker() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        worker::serve(&spec);
    }
}

/// What can go wrong in the dynamic API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A task (or an actor's constructor or method) failed: its error, or its panic.
    #[error("task failed: {0}")]
    Task(String),
    /// The task was cancelled before it ran.
    #[error("task cancelled before it ran")]
    Cancelled,
    /// The actor is dead: killed, or out of restarts.
    #[error("actor {id} is dead: {reason}")]
    ActorDead {
        /// The actor.
        id: u64,
        /// Why.
        reason: String,
    },
    /// No actor has this name.
    #[error("no actor is named '{0}'")]
    NoSuchActor(String),
    /// The request can never be met here.
    #[error("cannot schedule: {0}")]
    Unschedulable(String),
    /// A value could not be encoded or decoded.
    #[error("encoding: {0}")]
    Encode(String),
    /// The runtime could not start, or has shut down.
    #[error("runtime: {0}")]
    Runtime(String),
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] streamrun_store::StoreError),
    /// A wait ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// The dynamic API's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// What a task reports when it fails.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TaskError {
    /// Its error, or a panic's message.
    #[error("{0}")]
    Failed(String),
}

/// One reference to an object, shared by the clones of an [`ObjectRef`]; the object goes
/// when the last reference does.
#[derive(Debug)]
pub struct RefInner {
    id: ObjectId,
    rt: WeakBackend,
}

impl RefInner {
    pub(crate) fn new(id: ObjectId, rt: WeakBackend) -> RefInner {
        RefInner { id, rt }
    }
}

impl Drop for RefInner {
    fn drop(&mut self) {
        match self.rt.upgrade() {
            Some(Backend::Driver(rt)) => rt.release(&self.id),
            Some(Backend::Worker(client)) => client.release(self.id),
            None => {}
        }
    }
}

/// An untyped reference, as a submission returns it.
pub type RawRef = Arc<RefInner>;

/// A reference to an object of type `T`: a value put, or a task's result to come.
#[derive(Debug)]
pub struct ObjectRef<T> {
    inner: RawRef,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef {
            inner: Arc::clone(&self.inner),
            _type: PhantomData,
        }
    }
}

impl<T> ObjectRef<T> {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.inner.id
    }

    pub(crate) fn from_raw(inner: RawRef) -> Self {
        ObjectRef {
            inner,
            _type: PhantomData,
        }
    }
}

/// An argument: a value, or a reference to one (the task waits for it).
pub enum Arg<T> {
    /// A value.
    Value(T),
    /// A reference.
    Ref(ObjectRef<T>),
}

impl<T> From<T> for Arg<T> {
    fn from(value: T) -> Self {
        Arg::Value(value)
    }
}

impl<T> From<ObjectRef<T>> for Arg<T> {
    fn from(r: ObjectRef<T>) -> Self {
        Arg::Ref(r)
    }
}

impl<T> From<&ObjectRef<T>> for Arg<T> {
    fn from(r: &ObjectRef<T>) -> Self {
        Arg::Ref(r.clone())
    }
}

/// How a task runs: the resources it needs and how often it may run again.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOptions {
    /// Logical CPUs (1 by default).
    pub num_cpus: f64,
    /// Logical GPUs (none by default).
    pub num_gpus: f64,
    /// Custom resources, by name.
    pub resources: Vec<(String, f64)>,
    /// Runs after its worker process dies (3 by default, as in Ray).
    pub max_retries: u32,
    /// Whether an error or a panic also runs it again (up to `max_retries`).
    pub retry_exceptions: bool,
    /// Ray's SPREAD strategy: run on the node with the least work, rather than where a
    /// worker is free soonest.
    pub spread: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            num_cpus: 1.0,
            num_gpus: 0.0,
            resources: Vec::new(),
            max_retries: 3,
            retry_exceptions: false,
            spread: false,
        }
    }
}

impl TaskOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Logical CPUs.
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = n;
        self
    }
    /// Logical GPUs.
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.num_gpus = n;
        self
    }
    /// A custom resource.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.push((name.to_owned(), amount));
        self
    }
    /// Runs after worker death.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }
    /// Whether errors and panics run it again too.
    pub fn retry_exceptions(mut self, yes: bool) -> Self {
        self.retry_exceptions = yes;
        self
    }
    /// Spreads tasks over nodes (Ray's SPREAD strategy).
    pub fn spread(mut self) -> Self {
        self.spread = true;
        self
    }
}

/// How an actor runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActorOptions {
    /// A name, to find it with [`Runtime::get_actor`].
    pub name: Option<String>,
    /// Restarts after its process dies (none by default); the constructor runs again.
    pub max_restarts: u32,
    /// Runs of a method call again after the actor restarts (none by default: the call
    /// fails).
    pub max_task_retries: u32,
    /// Resources the actor holds while it lives (none by default).
    pub resources: Vec<(String, f64)>,
}

impl ActorOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// A name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }
    /// Restarts.
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.max_restarts = n;
        self
    }
    /// Method call retries across restarts.
    pub fn max_task_retries(mut self, n: u32) -> Self {
        self.max_task_retries = n;
        self
    }
    /// A resource the actor holds (`"CPU"`, `"GPU"` or custom).
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.push((name.to_owned(), amount));
        self
    }
}

/// A type made an actor by `#[actor]`.
pub trait Actor: 'static {
    /// Its typed handle.
    type Handle;
    /// Its registered type name.
    const TYPE: &'static str;
    /// The typed handle over an untyped one.
    fn handle(inner: ActorHandle) -> Self::Handle;
}

/// An actor, untyped: what typed handles wrap.
///
/// A handle travels as a value (an argument, a result, a field): it is its id, and reads
/// back as a handle on the runtime of the process that reads it, so tasks and actors can
/// call actors.
#[derive(Clone)]
pub struct ActorHandle {
    id: u64,
    rt: Backend,
}

impl Serialize for ActorHandle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u64(self.id)
    }
}

impl<'de> serde::Deserialize<'de> for ActorHandle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let id = u64::deserialize(d)?;
        let rt = current_backend().ok_or_else(|| {
            serde::de::Error::custom(
                "an actor handle is read only in a Streamrun driver or worker process",
            )
        })?;
        Ok(ActorHandle { id, rt })
    }
}

impl std::fmt::Debug for ActorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle({})", self.id)
    }
}

impl ActorHandle {
    /// The actor's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Calls method `method` (its registered name); used by the typed handles.
    pub fn call(&self, method: &str, args: Vec<codec::ArgSpec>) -> Result<Vec<RawRef>> {
        match &self.rt {
            Backend::Driver(rt) => rt.submit_actor_call(self.id, method, args),
            Backend::Worker(client) => client.submit(method, args, 1, self.id, None),
        }
    }
}

/// What [`Runtime::wait`] gives: the ready references, then the others.
pub type Waited<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// A running cluster, seen from its driver, or (inside a task or an actor) from a worker:
/// see [`Runtime::current`].
pub struct Runtime {
    backend: Backend,
    /// Whether dropping it stops the cluster: the driver's own, from `init`.
    owned: bool,
}

impl Runtime {
    /// Starts the embedded cluster with one worker process per core, or connects to the
    /// cluster named by `STREAMRUN_ADDRESS`. In a worker process (started by a driver),
    /// serves tasks and never returns.
    pub fn init() -> Result<Runtime> {
        RuntimeBuilder::default().init()
    }

    /// Options for starting: worker count, store size, how workers are started.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The runtime this process runs under, without starting one: inside a remote function
    /// or an actor's method, the driver's, reached from the worker (nested tasks); in a
    /// driver, its own. Dropping it stops nothing. Inside a task, a `get` or `wait` that
    /// waits lends the task's resources out while it waits, so a task may wait for the
    /// tasks it submits without holding back a whole pool of waiting tasks.
    pub fn current() -> Result<Runtime> {
        if let Some(client) = client::current() {
            return Ok(Runtime {
                backend: Backend::Worker(client?),
                owned: false,
            });
        }
        CURRENT
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(WeakBackend::upgrade)
            .map(|backend| Runtime {
                backend,
                owned: false,
            })
            .ok_or_else(|| {
                Error::Runtime("no runtime runs in this process: call Runtime::init first".into())
            })
    }

    pub(crate) fn new(inner: Arc<Inner>) -> Runtime {
        set_current(WeakBackend::Driver(Arc::downgrade(&inner)));
        Runtime {
            backend: Backend::Driver(inner),
            owned: true,
        }
    }

    /// The driver, for what only a driver does.
    fn driver(&self, what: &str) -> Result<&Arc<Inner>> {
        match &self.backend {
            Backend::Driver(inner) => Ok(inner),
            Backend::Worker(_) => Err(Error::Runtime(format!(
                "{what} is done by the driver, not inside a task"
            ))),
        }
    }

    fn put_encoded(&self, encoded: codec::Encoded) -> Result<RawRef> {
        match &self.backend {
            Backend::Driver(inner) => inner.put(encoded),
            Backend::Worker(client) => client.put(encoded),
        }
    }

    /// Puts a serde value; the reference names it from any process.
    pub fn put<T: Serialize>(&self, value: &T) -> Result<ObjectRef<T>> {
        let encoded = codec::encode_serde(value).map_err(|e| Error::Encode(e.to_string()))?;
        Ok(ObjectRef::from_raw(self.put_encoded(encoded)?))
    }

    /// Puts a record batch, stored as Arrow data.
    pub fn put_batch(&self, batch: RecordBatch) -> Result<ObjectRef<RecordBatch>> {
        Ok(ObjectRef::from_raw(
            self.put_encoded(codec::Encoded::Batch(batch))?,
        ))
    }

    /// Starts building a record batch directly in the object store's memory, with room for
    /// `capacity` bytes of buffers: the producer fills buffers in place (see
    /// [`streamrun_store::build`]) and [`put_built`](Self::put_built) then costs
    /// microseconds whatever the size, with no copy. In the driver only.
    pub fn batch_builder(
        &self,
        schema: arrow::datatypes::SchemaRef,
        capacity: usize,
    ) -> Result<streamrun_store::BatchBuilder<'_>> {
        self.driver("building a batch in store memory")?
            .batch_builder(schema, capacity)
    }

    /// Puts the batch made of `columns`, whose buffers `builder` holds (O(1) in its size).
    pub fn put_built(
        &self,
        builder: streamrun_store::BatchBuilder<'_>,
        columns: &[arrow::array::ArrayRef],
    ) -> Result<ObjectRef<RecordBatch>> {
        let inner = self.driver("putting a built batch")?;
        let object = builder.finish(columns)?;
        Ok(ObjectRef::from_raw(inner.put_stored_batch(object.id)))
    }

    /// The value `object` names, once it is there.
    pub fn get<T: DeserializeOwned>(&self, object: &ObjectRef<T>) -> Result<T> {
        match &self.backend {
            Backend::Driver(inner) => inner.get_serde(&object.id()),
            Backend::Worker(client) => client
                .get_serde(&[object.id()])?
                .pop()
                .ok_or_else(|| Error::Runtime("the driver sent no value".into())),
        }
    }

    /// The values `objects` name, in order (inside a task, asked for together).
    pub fn get_all<T: DeserializeOwned>(&self, objects: &[ObjectRef<T>]) -> Result<Vec<T>> {
        match &self.backend {
            Backend::Driver(inner) => objects.iter().map(|o| inner.get_serde(&o.id())).collect(),
            Backend::Worker(client) => {
                client.get_serde(&objects.iter().map(ObjectRef::id).collect::<Vec<_>>())
            }
        }
    }

    /// The record batch `object` names, once it is there; from the store, read in place.
    pub fn get_batch(&self, object: &ObjectRef<RecordBatch>) -> Result<RecordBatch> {
        match &self.backend {
            Backend::Driver(inner) => inner.get_batch(&object.id()),
            Backend::Worker(client) => client.get_batch(object.id()),
        }
    }

    /// Waits until `num_returns` of `objects` are there, or `timeout` passes: the ready
    /// ones (at most `num_returns`, in the given order), then the others.
    pub fn wait<T>(
        &self,
        objects: &[ObjectRef<T>],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Result<Waited<T>> {
        let ids: Vec<ObjectId> = objects.iter().map(ObjectRef::id).collect();
        let num = num_returns.min(ids.len());
        let ready = match &self.backend {
            Backend::Driver(inner) => inner.wait(&ids, num, timeout)?,
            Backend::Worker(client) => client.wait(&ids, num, timeout)?,
        };
        let (mut done, mut rest) = (Vec::new(), Vec::new());
        for (object, is_ready) in objects.iter().zip(ready) {
            if is_ready && done.len() < num_returns {
                done.push(object.clone());
            } else {
                rest.push(object.clone());
            }
        }
        Ok((done, rest))
    }

    /// Cancels the task that makes `object`: one not yet started is taken off the queue,
    /// and with `force` a running one is stopped by ending its worker process (which is
    /// replaced). Its results become [`Error::Cancelled`]. Returns whether it was
    /// cancelled (a finished task, or a running one without `force`, is not). Actor calls
    /// are cancelled only before they start.
    pub fn cancel<T>(&self, object: &ObjectRef<T>) -> Result<bool> {
        self.cancel_task(object.id(), false)
    }

    /// [`cancel`](Self::cancel), stopping the task also when it runs (Ray's `force=True`).
    pub fn cancel_force<T>(&self, object: &ObjectRef<T>) -> Result<bool> {
        self.cancel_task(object.id(), true)
    }

    fn cancel_task(&self, id: ObjectId, force: bool) -> Result<bool> {
        match &self.backend {
            Backend::Driver(inner) => inner.cancel(&id, force),
            Backend::Worker(client) => client.cancel(id, force),
        }
    }

    /// Submits function `name` (what `#[remote]` calls).
    #[doc(hidden)]
    pub fn submit(
        &self,
        name: &str,
        args: Vec<codec::ArgSpec>,
        num_returns: usize,
        options: TaskOptions,
    ) -> Result<Vec<RawRef>> {
        match &self.backend {
            Backend::Driver(inner) => inner.submit_task(name, args, num_returns, options),
            Backend::Worker(client) => client.submit(name, args, num_returns, 0, Some(options)),
        }
    }

    /// Creates an actor (what `#[actor]` calls).
    #[doc(hidden)]
    pub fn create_actor(
        &self,
        type_name: &str,
        constructor: &str,
        args: Vec<codec::ArgSpec>,
        options: ActorOptions,
    ) -> Result<ActorHandle> {
        let id = match &self.backend {
            Backend::Driver(inner) => inner.create_actor(type_name, constructor, args, options)?,
            Backend::Worker(client) => {
                client.create_actor(type_name, constructor, args, options)?
            }
        };
        Ok(ActorHandle {
            id,
            rt: self.backend.clone(),
        })
    }

    /// The actor named `name`, of type `A`.
    pub fn get_actor<A: Actor>(&self, name: &str) -> Result<A::Handle> {
        let id = match &self.backend {
            Backend::Driver(inner) => inner.named_actor(name, A::TYPE)?,
            Backend::Worker(client) => client.named_actor(name, A::TYPE)?,
        };
        Ok(A::handle(ActorHandle {
            id,
            rt: self.backend.clone(),
        }))
    }

    /// Kills an actor's process; it does not restart, and its pending calls fail.
    pub fn kill(&self, actor: &ActorHandle) -> Result<()> {
        match &self.backend {
            Backend::Driver(inner) => inner.kill_actor(actor.id),
            Backend::Worker(client) => client.kill_actor(actor.id),
        }
    }

    /// The process ids of the worker processes now attached (pool workers and actors).
    /// Empty inside a task.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.driver("listing workers")
            .map(|inner| inner.worker_pids())
            .unwrap_or_default()
    }

    /// How many objects were made again, by running their task once more, after the node
    /// that kept them was lost. 0 inside a task.
    pub fn objects_rebuilt(&self) -> u64 {
        self.driver("counting rebuilt objects").map_or(0, |inner| {
            inner.rebuilt.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// What the driver's scheduler holds (queue, workers, leases), for diagnosing a stall.
    pub fn describe_scheduler(&self) -> String {
        self.driver("describing the scheduler")
            .map(|inner| inner.describe_state())
            .unwrap_or_else(|e| e.to_string())
    }

    /// The process id of an actor's worker, once it is running (the driver knows it).
    pub fn actor_pid(&self, actor: &ActorHandle) -> Option<u32> {
        self.driver("finding an actor's process")
            .ok()?
            .actor_pid(actor.id)
    }

    /// Stops the worker processes and removes the store. Also what dropping the runtime
    /// `init` gave does; a no-op on one from [`current`](Self::current).
    pub fn shutdown(self) {
        // Dropping does it.
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let (true, Backend::Driver(inner)) = (self.owned, &self.backend) {
            inner.shutdown();
        }
    }
}
