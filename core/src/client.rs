//! A worker's client of its driver: what the dynamic API does inside a task or an actor
//! (nested tasks). Requests go in order on one stream to the driver; submissions and puts
//! name their results' ids themselves and do not wait for an answer, so a task can fan out
//! work as fast as a driver can; `get`, `wait` and the actor calls that answer wait for
//! theirs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arrow::array::RecordBatch;
use serde::de::DeserializeOwned;
use streamrun_store::ObjectId;
use tokio::sync::mpsc;

use crate::codec::{ArgSpec, Encoded};
use crate::proto::driver_client::DriverClient;
use crate::proto::{self, NestedReply, NestedRequest, nested_request::Kind};
use crate::worker::{Place, RECLAIMED, RUNNING, arg_value, localize, result_value};
use crate::{ActorOptions, Error, RawRef, RefInner, Result, TaskOptions, WeakBackend};

/// Requests waiting to go to the driver at most.
const REQUESTS: usize = 4096;

/// Where this worker process's driver is, set when the process starts serving.
static WORKER: OnceLock<(String, u64, Place)> = OnceLock::new();
/// The client, connected on first use (a failed connection is tried again next time).
static CLIENT: Mutex<Option<Arc<Client>>> = Mutex::new(None);

pub(crate) fn set_worker(address: &str, slot: u64, place: Place) {
    let _ = WORKER.set((address.to_owned(), slot, place));
}

/// In a worker process, its client of the driver (connected now if it was not yet); `None`
/// elsewhere.
pub(crate) fn current() -> Option<Result<Arc<Client>>> {
    let (address, slot, place) = WORKER.get()?;
    let mut client = CLIENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(client) = client.as_ref() {
        return Some(Ok(Arc::clone(client)));
    }
    Some(match Client::connect(address, *slot, place.clone()) {
        Ok(connected) => {
            *client = Some(Arc::clone(&connected));
            Ok(connected)
        }
        Err(e) => Err(Error::Runtime(e)),
    })
}

/// Who waits for which answer; `None` once the driver's stream has ended, when asking
/// fails at once.
type Answers = Arc<Mutex<Option<HashMap<u64, std::sync::mpsc::SyncSender<NestedReply>>>>>;

pub(crate) struct Client {
    place: Place,
    requests: mpsc::Sender<NestedRequest>,
    answers: Answers,
    seq: AtomicU64,
    io: tokio::runtime::Runtime,
    me: Weak<Client>,
}

impl Client {
    /// Connects from a thread of its own: the caller may be a task inside a worker's async
    /// runtime, where starting another is refused.
    fn connect(address: &str, slot: u64, place: Place) -> std::result::Result<Arc<Client>, String> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| Client::connect_here(address, slot, place))
                .join()
                .unwrap_or_else(|_| Err("connecting to the driver panicked".into()))
        })
    }

    fn connect_here(
        address: &str,
        slot: u64,
        place: Place,
    ) -> std::result::Result<Arc<Client>, String> {
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("streamrun-nested")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the worker's client thread: {e}"))?;
        let (requests, outgoing) = mpsc::channel::<NestedRequest>(REQUESTS);
        requests
            .try_send(NestedRequest {
                slot,
                ..NestedRequest::default()
            })
            .map_err(|e| e.to_string())?;
        let answers: Answers = Arc::new(Mutex::new(Some(HashMap::new())));
        let mut incoming = io.block_on(async {
            let mut client = DriverClient::connect(format!("http://{address}"))
                .await
                .map_err(|e| format!("connecting to the driver at {address}: {e}"))?
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20);
            client
                .nested(tokio_stream::wrappers::ReceiverStream::new(outgoing))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|e| format!("opening the driver's API from a worker: {e}"))
        })?;
        let waiting = Arc::clone(&answers);
        io.spawn(async move {
            while let Ok(Some(reply)) = incoming.message().await {
                let sender = waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                    .and_then(|w| w.remove(&reply.seq));
                if let Some(sender) = sender {
                    let _ = sender.try_send(reply);
                }
            }
            // The driver went: whoever waits learns it from the dropped senders, and
            // whoever asks later at once.
            *waiting.lock().unwrap_or_else(|p| p.into_inner()) = None;
        });
        Ok(Arc::new_cyclic(|me| Client {
            place,
            requests,
            answers,
            seq: AtomicU64::new(1),
            io,
            me: me.clone(),
        }))
    }

    fn send(&self, kind: Kind) -> Result<()> {
        self.push(NestedRequest {
            running: RUNNING.load(Ordering::Relaxed),
            kind: Some(kind),
            ..NestedRequest::default()
        })
    }

    /// Queues a request for the driver; when `REQUESTS` wait already, waits for room (the
    /// driver takes them as fast as it handles them: backpressure on a task that submits
    /// faster).
    fn push(&self, request: NestedRequest) -> Result<()> {
        match self.requests.try_send(request) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(gone()),
            Err(mpsc::error::TrySendError::Full(request)) => {
                let requests = self.requests.clone();
                self.run(async move { requests.send(request).await })?
                    .map_err(|_| gone())
            }
        }
    }

    /// Sends a request and waits for its answer; an error answer becomes the error. The
    /// worker's results not sent yet go first: what this task waits for may wait for them.
    fn ask(&self, kind: Kind) -> Result<NestedReply> {
        let done = crate::worker::take_unsent();
        if !done.is_empty() {
            self.send(Kind::Results(proto::Results { done }))?;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        // A std channel: the caller may be a task running inside a worker's async
        // runtime, where waiting on a tokio channel is refused.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .ok_or_else(gone)?
            .insert(seq, tx);
        self.push(NestedRequest {
            seq,
            running: RUNNING.load(Ordering::Relaxed),
            kind: Some(kind),
            ..NestedRequest::default()
        })?;
        let reply = rx.recv().map_err(|_| gone())?;
        if !reply.reclaimed.is_empty() {
            RECLAIMED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(Default::default)
                .extend(reply.reclaimed.iter().copied());
        }
        if reply.error.is_empty() {
            Ok(reply)
        } else {
            Err(error_of(&reply))
        }
    }

    fn reference(&self, id: ObjectId) -> RawRef {
        Arc::new(RefInner::new(id, WeakBackend::Worker(self.me.clone())))
    }

    /// Runs `future` on the client's thread and waits for it, from any thread (also one
    /// that runs an async runtime, as a worker's task does).
    fn run<F>(&self, future: F) -> Result<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.io.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .map_err(|_| Error::Runtime("the worker's client thread stopped".into()))
    }

    /// A value as it travels to the driver: inline when small, else staged in the store.
    fn value(&self, encoded: Encoded) -> Result<proto::Value> {
        let place = self.place.clone();
        self.run(async move { result_value(&place, encoded).await })?
            .map_err(Error::Runtime)
    }

    /// The arguments as they travel. The caller keeps `args` until the request is sent: a
    /// reference dropped before would let its object go first.
    fn args(&self, args: &[ArgSpec]) -> Result<Vec<proto::NestedArg>> {
        args.iter()
            .map(|arg| {
                let kind = match arg {
                    ArgSpec::Value(encoded) => {
                        proto::nested_arg::Kind::Value(self.value(encoded.clone())?)
                    }
                    ArgSpec::Ref(r) => proto::nested_arg::Kind::Object(r.id.to_string()),
                };
                Ok(proto::NestedArg { kind: Some(kind) })
            })
            .collect()
    }

    /// Submits a remote function (`actor` 0) or an actor's method, without waiting.
    pub(crate) fn submit(
        &self,
        function: &str,
        args: Vec<ArgSpec>,
        num_returns: usize,
        actor: u64,
        options: Option<TaskOptions>,
    ) -> Result<Vec<RawRef>> {
        let returns: Vec<ObjectId> = (0..num_returns.max(1))
            .map(|_| ObjectId::random())
            .collect();
        let options = options.map(|o| proto::Options {
            resources: crate::driver::shape(o.num_cpus, o.num_gpus, &o.resources)
                .into_iter()
                .collect(),
            max_retries: o.max_retries,
            retry_exceptions: o.retry_exceptions,
            spread: o.spread,
        });
        self.send(Kind::Submit(proto::Submit {
            function: function.to_owned(),
            args: self.args(&args)?,
            returns: returns.iter().map(ObjectId::to_string).collect(),
            actor,
            options,
        }))?;
        drop(args);
        Ok(returns.into_iter().map(|id| self.reference(id)).collect())
    }

    pub(crate) fn put(&self, encoded: Encoded) -> Result<RawRef> {
        let id = ObjectId::random();
        let value = self.value(encoded)?;
        self.send(Kind::Put(proto::Put {
            id: id.to_string(),
            value: Some(value),
        }))?;
        Ok(self.reference(id))
    }

    pub(crate) fn release(&self, id: ObjectId) {
        let _ = self.send(Kind::Release(proto::Ids {
            ids: vec![id.to_string()],
        }));
    }

    /// The values of `ids`, read here (in place from this node's store when kept there).
    /// An object kept by a node that is gone is rebuilt by the driver from its lineage and
    /// asked for again, a few times at most.
    fn values(&self, ids: &[ObjectId]) -> Result<Vec<crate::codec::ArgValue>> {
        let mut attempts = 0;
        loop {
            let reply = self.ask(Kind::Get(proto::Ids {
                ids: ids.iter().map(ObjectId::to_string).collect(),
            }))?;
            let mut out = Vec::with_capacity(reply.values.len());
            let mut lost = None;
            for (id, mut value) in ids.iter().zip(reply.values) {
                // Fetched only when another node keeps it.
                if matches!(&value.kind, Some(proto::value::Kind::Stored(_)))
                    && !value.address.is_empty()
                {
                    let place = self.place.clone();
                    match self
                        .run(async move { localize(&place, &mut value).await.map(|()| value) })?
                    {
                        Ok(fetched) => value = fetched,
                        Err(e) => {
                            lost = Some((*id, e));
                            break;
                        }
                    }
                }
                out.push(arg_value(&self.place.reader, value).map_err(Error::Runtime)?);
            }
            let Some((id, why)) = lost else {
                return Ok(out);
            };
            attempts += 1;
            if attempts > 3 {
                return Err(Error::Runtime(format!("fetching object {id}: {why}")));
            }
            self.ask(Kind::Lost(proto::Lost {
                object: id.to_string(),
                reason: why,
            }))?;
        }
    }

    pub(crate) fn get_serde<T: DeserializeOwned>(&self, ids: &[ObjectId]) -> Result<Vec<T>> {
        self.values(ids)?
            .iter()
            .map(|v| crate::codec::decode_serde(v).map_err(|e| Error::Encode(e.to_string())))
            .collect()
    }

    pub(crate) fn get_batch(&self, id: ObjectId) -> Result<RecordBatch> {
        let value = self
            .values(&[id])?
            .pop()
            .ok_or_else(|| Error::Runtime("the driver sent no value".into()))?;
        crate::codec::decode_batch(&value).map_err(|e| Error::Encode(e.to_string()))
    }

    pub(crate) fn wait(
        &self,
        ids: &[ObjectId],
        num: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<bool>> {
        let reply = self.ask(Kind::Wait(proto::Wait {
            ids: ids.iter().map(ObjectId::to_string).collect(),
            num_returns: u32::try_from(num).unwrap_or(u32::MAX),
            // At least a millisecond: 0 says "no timeout".
            timeout_ms: timeout.map_or(0, |t| {
                u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
            }),
        }))?;
        Ok(reply.ready)
    }

    pub(crate) fn cancel(&self, id: ObjectId, force: bool) -> Result<bool> {
        let reply = self.ask(Kind::Cancel(proto::Cancel {
            object: id.to_string(),
            force,
        }))?;
        Ok(reply.flag)
    }

    pub(crate) fn create_actor(
        &self,
        type_name: &str,
        constructor: &str,
        args: Vec<ArgSpec>,
        options: ActorOptions,
    ) -> Result<u64> {
        let reply = self.ask(Kind::CreateActor(proto::CreateActor {
            type_name: type_name.to_owned(),
            constructor: constructor.to_owned(),
            args: self.args(&args)?,
            options: Some(proto::Options {
                resources: crate::driver::shape(0.0, 0.0, &options.resources)
                    .into_iter()
                    .collect(),
                ..proto::Options::default()
            }),
            name: options.name.unwrap_or_default(),
            max_restarts: options.max_restarts,
            max_task_retries: options.max_task_retries,
        }))?;
        Ok(reply.actor)
    }

    pub(crate) fn named_actor(&self, name: &str, type_name: &str) -> Result<u64> {
        let reply = self.ask(Kind::GetActor(proto::ActorLookup {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
        }))?;
        Ok(reply.actor)
    }

    pub(crate) fn kill_actor(&self, actor: u64) -> Result<()> {
        self.ask(Kind::Kill(actor)).map(|_| ())
    }
}

fn gone() -> Error {
    Error::Runtime("the driver has gone".into())
}

/// What an error answer means, as the driver's [`Error`] said it.
fn error_of(reply: &NestedReply) -> Error {
    let message = reply.error.clone();
    match reply.error_kind {
        1 => Error::Cancelled,
        2 => Error::Task(message),
        3 => Error::ActorDead {
            id: reply.actor,
            reason: message,
        },
        4 => Error::NoSuchActor(message),
        5 => Error::Unschedulable(message),
        _ => Error::Runtime(message),
    }
}

/// An error as it travels back to a worker: its kind and its words.
pub(crate) fn error_reply(seq: u64, error: &Error) -> NestedReply {
    let (kind, message, actor) = match error {
        Error::Cancelled => (1, error.to_string(), 0),
        Error::Task(m) => (2, m.clone(), 0),
        Error::ActorDead { id, reason } => (3, reason.clone(), *id),
        Error::NoSuchActor(name) => (4, name.clone(), 0),
        Error::Unschedulable(m) => (5, m.clone(), 0),
        other => (0, other.to_string(), 0),
    };
    NestedReply {
        seq,
        error: message,
        error_kind: kind,
        actor,
        ..NestedReply::default()
    }
}
