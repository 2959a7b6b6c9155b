//! A worker process: attaches to its driver, runs the tasks it is sent in order, and sends
//! their results back. It ends when the driver's stream does.

use std::any::Any;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use streamrun_store::{ObjectId, StoreReader, staging_path};
use tokio::sync::mpsc;

use crate::codec::{ArgValue, Encoded};
use crate::driver::INLINE_MAX;
use crate::proto::driver_client::DriverClient;
use crate::proto::{self, FromWorker};
use crate::registry;

/// Results are sent at the latest this long after the first of a batch finished.
const FLUSH_AFTER: Duration = Duration::from_millis(2);

struct Context {
    reader: StoreReader,
    memory_dir: PathBuf,
    actors: HashMap<u64, Box<dyn Any + Send>>,
}

/// Serves the driver named by `spec` (`address|slot|memory dir|spill dir`) and exits.
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
    let parts: Vec<&str> = spec.split('|').collect();
    let [address, slot, memory_dir, spill_dir] = parts[..] else {
        return Err(format!(
            "{}='{spec}' is not 'address|slot|memory dir|spill dir'",
            crate::WORKER_ENV
        ));
    };
    let slot: u64 = slot
        .parse()
        .map_err(|_| format!("'{slot}' is not a worker slot"))?;
    let mut context = Context {
        reader: StoreReader::new(memory_dir.into(), spill_dir.into()),
        memory_dir: memory_dir.into(),
        actors: HashMap::new(),
    };
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
            let mut done = Vec::new();
            let mut first_done: Option<Instant> = None;
            for task in message.tasks {
                done.push(execute(&mut context, task));
                let since = *first_done.get_or_insert_with(Instant::now);
                if since.elapsed() >= FLUSH_AFTER {
                    let batch = std::mem::take(&mut done);
                    let _ = tx.send(FromWorker {
                        hello: None,
                        done: batch,
                    });
                    first_done = None;
                    // Lets the connection send it while the next tasks run.
                    tokio::task::yield_now().await;
                }
            }
            if !done.is_empty() && tx.send(FromWorker { hello: None, done }).is_err() {
                break;
            }
        }
        Ok::<(), String>(())
    })
}

/// Runs one task, catching a panic as its error.
fn execute(context: &mut Context, task: proto::Task) -> proto::Done {
    let id = task.id;
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_task(context, task)))
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(format!("panicked: {message}"))
            });
    match outcome {
        Ok(returns) => proto::Done {
            id,
            returns,
            error: String::new(),
        },
        Err(error) => proto::Done {
            id,
            returns: Vec::new(),
            error,
        },
    }
}

fn run_task(context: &mut Context, task: proto::Task) -> Result<Vec<proto::Value>, String> {
    let args: Vec<ArgValue> = task
        .args
        .into_iter()
        .map(|value| arg_value(&context.reader, value))
        .collect::<Result<_, _>>()?;
    let name = task.function.as_str();
    let results = if task.create {
        let construct = registry::constructor(name)
            .ok_or_else(|| format!("no actor constructor is registered as {name}"))?;
        let instance = construct(&args).map_err(|e| format!("{name}: {e}"))?;
        context.actors.insert(task.actor, instance);
        return Ok(Vec::new());
    } else if task.actor != 0 {
        let method = registry::method(name)
            .ok_or_else(|| format!("no actor method is registered as {name}"))?;
        let instance = context
            .actors
            .get_mut(&task.actor)
            .ok_or_else(|| format!("actor {} does not live in this worker", task.actor))?;
        method(instance.as_mut(), &args).map_err(|e| format!("{name}: {e}"))?
    } else {
        let call = registry::function(name)
            .ok_or_else(|| format!("no remote function is registered as {name} in this program"))?;
        call(&args).map_err(|e| format!("{name}: {e}"))?
    };
    results
        .into_iter()
        .map(|r| result_value(&context.memory_dir, r))
        .collect()
}

fn arg_value(reader: &StoreReader, value: proto::Value) -> Result<ArgValue, String> {
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

/// A result as it travels: inline when small, else staged in the store for the driver to
/// adopt.
fn result_value(memory_dir: &std::path::Path, result: Encoded) -> Result<proto::Value, String> {
    let encoding = result.encoding();
    let bytes: Bytes = result.to_bytes().map_err(|e| e.to_string())?;
    if bytes.len() <= INLINE_MAX {
        return Ok(proto::Value {
            kind: Some(proto::value::Kind::Inline(bytes)),
            encoding,
        });
    }
    let id = ObjectId::random();
    let staged = staging_path(memory_dir, &id);
    std::fs::write(&staged, &bytes)
        .map_err(|e| format!("staging a result in {}: {e}", staged.display()))?;
    Ok(proto::Value {
        kind: Some(proto::value::Kind::Stored(id.to_string())),
        encoding,
    })
}
