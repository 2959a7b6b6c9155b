//! A worker process: attaches to its driver, runs the tasks it is sent in order, and sends
//! their results back. It ends when the driver's stream does.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use streamrun_store::exchange::NodeStoreEnv;
use streamrun_store::{ObjectId, StoreReader, staging_path};
use tokio::sync::mpsc;

use crate::codec::{ArgValue, Encoded};
use crate::driver::INLINE_MAX;
use crate::proto::driver_client::DriverClient;
use crate::proto::{self, FromWorker};
use crate::registry;

/// Results are sent at the latest this long after the first of a batch finished.
const FLUSH_AFTER: Duration = Duration::from_millis(2);

/// Where a worker process reads and puts objects.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    pub(crate) reader: StoreReader,
    pub(crate) memory_dir: PathBuf,
    /// On a cluster: this node's store (its Flight address), the cluster's token, and the
    /// job the worker belongs to.
    pub(crate) node: Option<NodeStoreEnv>,
}

struct Context {
    place: Place,
    actors: HashMap<u64, Box<dyn Any + Send>>,
}

/// The number (`Task.seq`) of the task this process runs now (0: none), which a nested
/// `get` names to the driver.
pub(crate) static RUNNING: AtomicU64 = AtomicU64::new(0);

/// Tasks sent to this worker (by number) that the driver took back while one of its tasks
/// waited in a nested `get`: skipped when they arrive. Numbers are never reused.
pub(crate) static RECLAIMED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

/// Results not sent yet (they go in batches). A task about to wait in a nested `get` sends
/// them first, over its own stream: the worker's stream is not served while a task runs,
/// and other tasks may be waiting for them.
static UNSENT: Mutex<Vec<proto::Done>> = Mutex::new(Vec::new());

fn unsent() -> std::sync::MutexGuard<'static, Vec<proto::Done>> {
    UNSENT.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the results not sent yet.
pub(crate) fn take_unsent() -> Vec<proto::Done> {
    std::mem::take(&mut *unsent())
}

/// Whether the task sent as number `seq` was taken back (and forgets it).
fn reclaimed(seq: u64) -> bool {
    RECLAIMED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .is_some_and(|set| set.remove(&seq))
}

/// Serves the driver named by `spec` and exits. `spec` is `address|slot|memory dir|spill
/// dir` for a worker the driver started itself; on a cluster, `address|cluster:slot`, with
/// the node's store from the agent's variables.
pub(crate) fn serve(spec: &str) -> ! {
    let code = match run(spec) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("streamrun worker: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn run(spec: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{}='{spec}' is not 'address|slot|memory dir|spill dir' or 'address|cluster:slot'",
            crate::WORKER_ENV
        )
    };
    let (address, rest) = spec.split_once('|').ok_or_else(bad)?;
    let (slot, memory_dir, spill_dir, node) = if let Some(slot) = rest.strip_prefix("cluster:") {
        let slot: u64 = slot.parse().map_err(|_| bad())?;
        let node = NodeStoreEnv::from_env()
            .map_err(|e| e.to_string())?
            .ok_or("STREAMRUN_STORE is not set: a cluster worker runs under a node agent")?;
        (
            slot,
            node.memory_dir.clone(),
            node.spill_dir.clone(),
            Some(node),
        )
    } else {
        let parts: Vec<&str> = rest.split('|').collect();
        let [slot, memory, spill] = parts[..] else {
            return Err(bad());
        };
        let slot: u64 = slot.parse().map_err(|_| bad())?;
        (slot, PathBuf::from(memory), PathBuf::from(spill), None)
    };
    let place = Place {
        reader: StoreReader::new(memory_dir.clone(), spill_dir),
        memory_dir,
        node,
    };
    crate::client::set_worker(address, slot, place.clone());
    let context = Context {
        place,
        actors: HashMap::new(),
    };
    attach(address, slot, context)
}
/// Attaches to the driver at `address` as `slot` and runs what it sends until it closes.
fn attach(address: &str, slot: u64, mut context: Context) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the worker's runtime: {e}"))?;
    runtime.block_on(async move {
        let mut client = DriverClient::connect(format!("http://{address}"))
            .await
            .map_err(|e| format!("connecting to the driver at {address}: {e}"))?
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        let (tx, rx) = mpsc::unbounded_channel::<FromWorker>();
        let hello = FromWorker {
            hello: Some(proto::Hello {
                pid: std::process::id(),
                slot,
                node: context
                    .place
                    .node
                    .as_ref()
                    .map(|n| n.address.clone())
                    .unwrap_or_default(),
            }),
            done: Vec::new(),
        };
        tx.send(hello).map_err(|e| e.to_string())?;
        let mut inbound = client
            .attach(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .map_err(|e| format!("attaching to the driver: {e}"))?
            .into_inner();
        while let Ok(Some(message)) = inbound.message().await {
            let mut first_done: Option<Instant> = None;
            for task in message.tasks {
                let (id, seq) = (task.id, task.seq);
                if reclaimed(seq) {
                    continue;
                }
                RUNNING.store(seq, Ordering::Relaxed);
                let mut lost = None;
                let outcome = match fetch_remote_args(&context.place, task).await {
                    Ok(task) => execute(&mut context, task),
                    Err((index, e)) => {
                        lost = Some(index);
                        Err(e)
                    }
                };
                RUNNING.store(0, Ordering::Relaxed);
                let mut result = publish(&context.place, id, outcome).await;
                result.lost_args.extend(lost);
                unsent().push(result);
                let since = *first_done.get_or_insert_with(Instant::now);
                if since.elapsed() >= FLUSH_AFTER {
                    let batch = take_unsent();
                    if !batch.is_empty() {
                        let _ = tx.send(FromWorker {
                            hello: None,
                            done: batch,
                        });
                    }
                    first_done = None;
                    // Lets the connection send it while the next tasks run.
                    tokio::task::yield_now().await;
                }
            }
            let done = take_unsent();
            if !done.is_empty() && tx.send(FromWorker { hello: None, done }).is_err() {
                break;
            }
        }
        Ok::<(), String>(())
    })
}

/// Brings the arguments kept by other nodes' stores (on a cluster) into the task, inline;
/// or says which one could not be fetched, and why.
async fn fetch_remote_args(
    place: &Place,
    mut task: proto::Task,
) -> Result<proto::Task, (u32, String)> {
    for (index, value) in task.args.iter_mut().enumerate() {
        localize(place, value)
            .await
            .map_err(|e| (index as u32, format!("fetching argument {index}: {e}")))?;
    }
    Ok(task)
}

/// Makes a value readable here: one kept by another node's store (on a cluster) is fetched
/// over Flight and carried inline.
pub(crate) async fn localize(place: &Place, value: &mut proto::Value) -> Result<(), String> {
    let Some(node) = &place.node else {
        return Ok(());
    };
    let Some(proto::value::Kind::Stored(id)) = &value.kind else {
        return Ok(());
    };
    if value.address.is_empty() || value.address == node.address {
        return Ok(());
    }
    let object = streamrun_store::ObjectRef {
        id: id.parse().map_err(|e| format!("object {id}: {e}"))?,
        owner: node.owner.clone(),
        node: value.address.clone(),
    };
    let (_, buffer) =
        streamrun_store::flight::fetch_stored(&object, &value.address, &node.token, None, None)
            .await
            .map_err(|e| e.to_string())?;
    value.kind = Some(proto::value::Kind::Inline(Bytes::from_owner(buffer)));
    value.address.clear();
    Ok(())
}

/// Runs one task, catching a panic as its error.
fn execute(context: &mut Context, task: proto::Task) -> Result<Vec<Encoded>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_task(context, task)))
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(format!("panicked: {message}"))
        })
}

/// A task's outcome as the driver receives it: small results inline, larger ones staged in
/// the node's store (on a cluster, taken in by the node's store, whose address goes with
/// them).
async fn publish(place: &Place, id: u64, outcome: Result<Vec<Encoded>, String>) -> proto::Done {
    let mut returns = Vec::new();
    let mut error = String::new();
    match outcome {
        Ok(results) => {
            for result in results {
                match result_value(place, result).await {
                    Ok(value) => returns.push(value),
                    Err(e) => {
                        error = e;
                        returns.clear();
                        break;
                    }
                }
            }
        }
        Err(e) => error = e,
    }
    proto::Done {
        id,
        returns,
        error,
        lost_args: Vec::new(),
    }
}

fn run_task(context: &mut Context, task: proto::Task) -> Result<Vec<Encoded>, String> {
    let args: Vec<ArgValue> = task
        .args
        .into_iter()
        .map(|value| arg_value(&context.place.reader, value))
        .collect::<Result<_, _>>()?;
    let name = task.function.as_str();
    if task.create {
        let construct = registry::constructor(name)
            .ok_or_else(|| format!("no actor constructor is registered as {name}"))?;
        let instance = construct(&args).map_err(|e| format!("{name}: {e}"))?;
        context.actors.insert(task.actor, instance);
        Ok(Vec::new())
    } else if task.actor != 0 {
        let method = registry::method(name)
            .ok_or_else(|| format!("no actor method is registered as {name}"))?;
        let instance = context
            .actors
            .get_mut(&task.actor)
            .ok_or_else(|| format!("actor {} does not live in this worker", task.actor))?;
        method(instance.as_mut(), &args).map_err(|e| format!("{name}: {e}"))
    } else {
        let call = registry::function(name)
            .ok_or_else(|| format!("no remote function is registered as {name} in this program"))?;
        call(&args).map_err(|e| format!("{name}: {e}"))
    }
}

pub(crate) fn arg_value(reader: &StoreReader, value: proto::Value) -> Result<ArgValue, String> {
    match value.kind {
        Some(proto::value::Kind::Inline(bytes)) => Ok(ArgValue::Inline {
            encoding: value.encoding,
            bytes,
        }),
        Some(proto::value::Kind::Stored(id)) => Ok(ArgValue::Stored {
            encoding: value.encoding,
            id: id.parse().map_err(|e| format!("an argument: {e}"))?,
            reader: reader.clone(),
        }),
        None => Err("an argument without a value".into()),
    }
}

/// A result (or a value a task puts) as it travels: inline when small, else staged in the
/// node's store.
pub(crate) async fn result_value(place: &Place, result: Encoded) -> Result<proto::Value, String> {
    let encoding = result.encoding();
    let bytes: Bytes = result.to_bytes().map_err(|e| e.to_string())?;
    if bytes.len() <= INLINE_MAX {
        return Ok(proto::Value {
            kind: Some(proto::value::Kind::Inline(bytes)),
            encoding,
            address: String::new(),
        });
    }
    let id = ObjectId::random();
    let Some(node) = &place.node else {
        // Staged for the driver's own store, which takes it in.
        let staged = staging_path(&place.memory_dir, &id);
        std::fs::write(&staged, &bytes)
            .map_err(|e| format!("staging a result in {}: {e}", staged.display()))?;
        return Ok(proto::Value {
            kind: Some(proto::value::Kind::Stored(id.to_string())),
            encoding,
            address: String::new(),
        });
    };
    let object = streamrun_store::ObjectRef {
        id,
        owner: node.owner.clone(),
        node: node.node.clone(),
    };
    streamrun_store::flight::put_staged(
        &object,
        crate::codec::store_kind(encoding),
        1,
        &bytes,
        &place.memory_dir,
        &node.address,
        &node.token,
        None,
    )
    .await
    .map_err(|e| format!("the node's store did not take a result: {e}"))?;
    Ok(proto::Value {
        kind: Some(proto::value::Kind::Stored(id.to_string())),
        encoding,
        address: node.address.clone(),
    })
}
