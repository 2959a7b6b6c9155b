//! The driver's side of nested tasks: a worker's tasks and actors use the dynamic API over
//! one stream per worker process. Requests are handled in the order they come; a `get` or
//! `wait` waits on a thread of its own, with its worker marked as waiting (see
//! [`Inner::block`]). The references a worker holds are kept here, and go when its stream
//! ends.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streamrun_store::ObjectId;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::{Inner, Obj, Prepared, Submission};
use crate::client::error_reply;
use crate::proto::{self, NestedReply, NestedRequest, nested_request::Kind};
use crate::{ActorOptions, Error, RawRef, Result};

/// The answers to a worker's requests.
pub(crate) type ReplyStream =
    Pin<Box<dyn futures::Stream<Item = std::result::Result<NestedReply, Status>> + Send + 'static>>;

type Replies = mpsc::UnboundedSender<std::result::Result<NestedReply, Status>>;

/// The references one worker process holds, one each: the worker counts its own clones.
#[derive(Default)]
struct Held(Mutex<HashMap<ObjectId, RawRef>>);

impl Held {
    fn keep(&self, refs: Vec<RawRef>) {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for r in refs {
            held.insert(r.id, r);
        }
    }

    fn take(&self, ids: &[ObjectId]) -> Vec<RawRef> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ids.iter().filter_map(|id| held.remove(id)).collect()
    }
}

fn parse_ids(ids: &[String]) -> Result<Vec<ObjectId>> {
    ids.iter()
        .map(|id| id.parse().map_err(Error::from))
        .collect()
}

/// Serves one worker's requests until its stream ends.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    mut inbound: Streaming<NestedRequest>,
    replies: Replies,
) {
    let held = Arc::new(Held::default());
    let mut slot = 0;
    while let Ok(Some(request)) = inbound.message().await {
        let Some(kind) = request.kind else {
            slot = request.slot;
            continue;
        };
        let seq = request.seq;
        let answer = |result: Result<NestedReply>| {
            let reply = match result {
                Ok(mut reply) => {
                    reply.seq = seq;
                    reply
                }
                Err(e) => error_reply(seq, &e),
            };
            let _ = replies.send(Ok(reply));
        };
        match kind {
            Kind::Submit(submit) => {
                let touches_store = submit.args.iter().any(|a| {
                    matches!(&a.kind, Some(proto::nested_arg::Kind::Value(v)) if matches!(v.kind, Some(proto::value::Kind::Stored(_))))
                });
                let parent = (slot, request.running);
                let run = || inner.nested_submit(&held, submit, parent);
                if touches_store {
                    tokio::task::block_in_place(run);
                } else {
                    run();
                }
            }
            Kind::Lost(lost) => answer(tokio::task::block_in_place(|| {
                let id = lost.object.parse::<ObjectId>().map_err(Error::from)?;
                inner.rebuild(&id, &Error::Runtime(lost.reason))?;
                Ok(NestedReply::default())
            })),
            Kind::Results(results) => {
                tokio::task::block_in_place(|| inner.done(slot, results.done));
            }
            Kind::Put(put) => tokio::task::block_in_place(|| inner.nested_put(&held, put)),
            Kind::Release(ids) => {
                if let Ok(ids) = parse_ids(&ids.ids) {
                    // The last reference's drop may delete a stored file.
                    tokio::task::block_in_place(|| drop(held.take(&ids)));
                }
            }
            Kind::Get(ids) => {
                let (inner, replies) = (Arc::clone(&inner), replies.clone());
                let running = request.running;
                tokio::task::spawn_blocking(move || {
                    let waiting = Waiting::start(&inner, slot, running, seq, &replies);
                    let values = parse_ids(&ids.ids).and_then(|ids| {
                        ids.iter()
                            .map(|id| inner.wait_one(id).map(|s| inner.wire_value(s)))
                            .collect::<Result<Vec<_>>>()
                    });
                    waiting.answer(values.map(|values| NestedReply {
                        values,
                        ..NestedReply::default()
                    }));
                });
            }
            Kind::Wait(wait) => {
                let (inner, replies) = (Arc::clone(&inner), replies.clone());
                let running = request.running;
                tokio::task::spawn_blocking(move || {
                    let waiting = Waiting::start(&inner, slot, running, seq, &replies);
                    let timeout =
                        (wait.timeout_ms > 0).then(|| Duration::from_millis(wait.timeout_ms));
                    let ready = parse_ids(&wait.ids).and_then(|ids| {
                        inner.wait(&ids, (wait.num_returns as usize).min(ids.len()), timeout)
                    });
                    waiting.answer(ready.map(|ready| NestedReply {
                        ready,
                        ..NestedReply::default()
                    }));
                });
            }
            Kind::CreateActor(create) => {
                answer(tokio::task::block_in_place(|| {
                    inner.nested_create_actor(create)
                }));
            }
            Kind::GetActor(lookup) => answer(
                inner
                    .named_actor(&lookup.name, &lookup.type_name)
                    .map(|actor| NestedReply {
                        actor,
                        ..NestedReply::default()
                    }),
            ),
            Kind::Kill(actor) => answer(tokio::task::block_in_place(|| {
                inner.kill_actor(actor).map(|()| NestedReply::default())
            })),
            Kind::Cancel(cancel) => answer(
                cancel
                    .object
                    .parse::<ObjectId>()
                    .map_err(Error::from)
                    .and_then(|id| inner.cancel(&id, cancel.force))
                    .map(|flag| NestedReply {
                        flag,
                        ..NestedReply::default()
                    }),
            ),
        }
    }
    // The worker is gone: what it held goes (dropping touches the store, off this thread).
    let _ = tokio::task::spawn_blocking(move || drop(held)).await;
}

/// A worker's task waiting in a nested `get` or `wait`, marked as such with the driver
/// until it is answered, or, should the waiting thread panic, until it unwinds (then the
/// worker is told so).
struct Waiting<'a> {
    inner: &'a Inner,
    slot: u64,
    seq: u64,
    marked: bool,
    reclaimed: Vec<u64>,
    replies: &'a Replies,
    answered: bool,
}

impl<'a> Waiting<'a> {
    fn start(inner: &'a Inner, slot: u64, running: u64, seq: u64, replies: &'a Replies) -> Self {
        let marked = inner.block(slot, running);
        Waiting {
            inner,
            slot,
            seq,
            marked: marked.is_some(),
            reclaimed: marked.unwrap_or_default(),
            replies,
            answered: false,
        }
    }

    fn answer(mut self, result: Result<NestedReply>) {
        if std::mem::take(&mut self.marked) {
            self.inner.unblock(self.slot);
        }
        let mut reply = result.unwrap_or_else(|e| error_reply(self.seq, &e));
        reply.seq = self.seq;
        reply.reclaimed = std::mem::take(&mut self.reclaimed);
        self.answered = true;
        let _ = self.replies.send(Ok(reply));
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.marked {
            self.inner.unblock(self.slot);
        }
        if !self.answered {
            let mut reply = error_reply(
                self.seq,
                &Error::Runtime("the driver failed while the task waited".into()),
            );
            reply.reclaimed = std::mem::take(&mut self.reclaimed);
            let _ = self.replies.send(Ok(reply));
        }
    }
}

impl Inner {
    /// A nested submission's arguments, ready: values adopted as results are, references
    /// to objects the worker holds.
    fn nested_args(&self, args: Vec<proto::NestedArg>) -> Result<Vec<Prepared>> {
        self.prepare_each(args.into_iter().map(|arg| match arg.kind {
            Some(proto::nested_arg::Kind::Value(value)) => {
                self.adopt_value(value).map(Prepared::Value)
            }
            Some(proto::nested_arg::Kind::Object(id)) => {
                id.parse().map(Prepared::Ref).map_err(Error::from)
            }
            None => Err(Error::Runtime("a nested argument without a value".into())),
        }))
    }

    /// Objects the worker named that cannot be made: each holds `reason` as its error.
    fn failed_objects(&self, ids: &[ObjectId], reason: String) -> Vec<RawRef> {
        let mut st = self.lock();
        for id in ids {
            st.objects.insert(
                *id,
                Obj {
                    value: Some(Err(reason.clone())),
                    refs: 1,
                },
            );
        }
        drop(st);
        ids.iter().map(|id| self.raw(*id)).collect()
    }

    /// Queues a worker's submission, one deeper than the task (`parent`: the worker's
    /// slot and the task's number there) that made it.
    fn nested_submit(&self, held: &Held, submit: proto::Submit, parent: (u64, u64)) {
        let returns = match parse_ids(&submit.returns) {
            Ok(ids) if !ids.is_empty() => ids,
            _ => {
                tracing::warn!(function = %submit.function, "a worker's submission named no valid results");
                return;
            }
        };
        let options = submit.options.unwrap_or_default();
        let mut shape: super::Shape = options.resources.into_iter().collect();
        shape.sort();
        let submission = Submission {
            parent: Some(parent),
            function: submit.function,
            returns: returns.clone(),
            shape,
            retries: options.max_retries,
            retry_exceptions: options.retry_exceptions,
            spread: options.spread,
            actor: (submit.actor != 0).then_some(submit.actor),
        };
        let queued = self
            .nested_args(submit.args)
            .and_then(|prepared| self.enqueue(submission, prepared));
        let refs = match queued {
            Ok(refs) => refs,
            // What cannot run is an error its results carry, read by the worker's `get`.
            Err(e) => self.failed_objects(&returns, e.to_string()),
        };
        held.keep(refs);
    }

    fn nested_put(&self, held: &Held, put: proto::Put) {
        let Ok(id) = put.id.parse::<ObjectId>() else {
            tracing::warn!(id = %put.id, "a worker put a value under an invalid id");
            return;
        };
        let stored = put
            .value
            .ok_or_else(|| Error::Runtime("a put without a value".into()))
            .and_then(|value| self.adopt_value(value));
        let refs = match stored {
            Ok(stored) => {
                self.lock().objects.insert(
                    id,
                    Obj {
                        value: Some(Ok(stored)),
                        refs: 1,
                    },
                );
                vec![self.raw(id)]
            }
            Err(e) => self.failed_objects(&[id], format!("the put failed: {e}")),
        };
        held.keep(refs);
    }

    fn nested_create_actor(&self, create: proto::CreateActor) -> Result<NestedReply> {
        let prepared = self.nested_args(create.args)?;
        let options = ActorOptions {
            name: (!create.name.is_empty()).then_some(create.name),
            max_restarts: create.max_restarts,
            max_task_retries: create.max_task_retries,
            resources: create
                .options
                .unwrap_or_default()
                .resources
                .into_iter()
                .map(|(name, milli)| (name, milli as f64 / 1000.0))
                .collect(),
        };
        let actor =
            self.create_actor_prepared(&create.type_name, &create.constructor, prepared, options)?;
        Ok(NestedReply {
            actor,
            ..NestedReply::default()
        })
    }
}
