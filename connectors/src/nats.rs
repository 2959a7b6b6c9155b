//! NATS JetStream: a source reading a stream through a durable pull consumer, and a sink
//! publishing to a subject with the server's acknowledgement.
//!
//! Each message carries one record, a JSON object (the sink writes it so; the source decodes
//! it with the source's schema and sends a message it cannot read, with the reason and the
//! message's stream sequence, to the dead letters).

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::StreamExt;
use serde_json::json;
use streamrun_engine::{
    Descriptor, Error, Result, Sink, SinkWriter, Source, SourceCollector, SourceReader,
    WorkerContext,
};

use crate::messages::{MessageDecoder, Reconnect, Unacked, encode_rows, keep_reading, redacted};

/// How long the server may be away before the source or sink fails (default).
const DEFAULT_RECONNECT: Duration = Duration::from_secs(30);

/// The source and sink builders for NATS JetStream.
///
/// ```no_run
/// use std::sync::Arc;
/// use arrow::datatypes::{DataType, Field, Schema};
/// use streamrun_connectors::NatsJetStream;
///
/// let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
/// // Publish to `orders.new`, into the stream ORDERS (created if missing).
/// let sink = NatsJetStream::sink("nats://127.0.0.1:4222", "orders.new").create_stream("ORDERS");
/// // Read ORDERS through the durable consumer `etl`, ending once it is quiet for 1 s.
/// let source = NatsJetStream::source("nats://127.0.0.1:4222", "ORDERS", "etl", schema)
///     .end_when_idle(std::time::Duration::from_secs(1));
/// # let _ = (source, sink);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct NatsJetStream;

impl NatsJetStream {
    /// A source reading JetStream stream `stream` of the server at `url` through the durable
    /// pull consumer `consumer` (created when missing), records decoded as `schema`.
    pub fn source(
        url: impl Into<String>,
        stream: impl Into<String>,
        consumer: impl Into<String>,
        schema: SchemaRef,
    ) -> NatsSource {
        NatsSource {
            url: url.into(),
            stream: stream.into(),
            consumer: consumer.into(),
            schema,
            batch_size: 1024,
            max_unacknowledged: 65_536,
            ack_wait: Duration::from_secs(60),
            end_when_idle: None,
            reconnect_for: DEFAULT_RECONNECT,
        }
    }

    /// A sink publishing every row to `subject` on the server at `url`; a stream must
    /// capture the subject (see [`NatsSink::create_stream`]).
    pub fn sink(url: impl Into<String>, subject: impl Into<String>) -> NatsSink {
        NatsSink {
            url: url.into(),
            subject: subject.into(),
            create_stream: None,
            reconnect_for: DEFAULT_RECONNECT,
        }
    }
}

/// A NATS JetStream source; made by [`NatsJetStream::source`].
///
/// **Delivery: at least once.** The workers of a job pull from one durable consumer, so the
/// server deals the messages among them. A message is acknowledged only once the engine
/// reports that every operator of the job has taken it in (see
/// [`SourceReader::checkpoint`]); until then it is held (as its acknowledger) in the reader's
/// state. A message not acknowledged within the consumer's `ack_wait` (60 s by default) is
/// delivered again, as is everything unacknowledged when a job stops. The server stops
/// sending once [`NatsSource::max_unacknowledged`] messages wait for their
/// acknowledgement, which bounds what a reader holds.
///
/// **Order:** with one worker, messages come in stream order (redeliveries aside).
///
/// **Server going away:** the client connects again by itself; a pull that fails is tried
/// again, with pauses growing from 100 ms to 2 s, for at most
/// [`NatsSource::reconnect_for`] (30 s by default); then the job fails with an error naming
/// the server and the stream.
#[derive(Debug, Clone)]
pub struct NatsSource {
    url: String,
    stream: String,
    consumer: String,
    schema: SchemaRef,
    batch_size: usize,
    max_unacknowledged: i64,
    ack_wait: Duration,
    end_when_idle: Option<Duration>,
    reconnect_for: Duration,
}

impl NatsSource {
    /// The most messages pulled at once (default 1,024).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// The most messages delivered and not yet acknowledged (the consumer's
    /// `max_ack_pending`, default 65,536), set when the consumer is created.
    pub fn max_unacknowledged(mut self, max: usize) -> Self {
        self.max_unacknowledged = i64::try_from(max).unwrap_or(i64::MAX);
        self
    }

    /// How long the server waits for an acknowledgement before delivering a message again
    /// (default 60 s), set when the consumer is created.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Ends the source once no message arrived for `idle` (a bounded run over what the
    /// stream holds). By default the source never ends.
    pub fn end_when_idle(mut self, idle: Duration) -> Self {
        self.end_when_idle = Some(idle);
        self
    }

    /// How long failing pulls are tried again before failing (default 30 s).
    pub fn reconnect_for(mut self, budget: Duration) -> Self {
        self.reconnect_for = budget;
        self
    }

    /// The descriptor of this source for the job's plan: kind `nats.jetstream`.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "nats.jetstream",
            json!({
                "url": redacted(&self.url),
                "stream": self.stream,
                "consumer": self.consumer,
                "batch_size": self.batch_size,
            }),
        )
    }

    fn describe(&self) -> String {
        format!(
            "reading stream '{}' of {} (consumer '{}')",
            self.stream,
            redacted(&self.url),
            self.consumer
        )
    }
}

impl Source for NatsSource {
    fn schema(&self) -> Result<SchemaRef> {
        Ok(self.schema.clone())
    }

    fn open(&self, _ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
        if self.batch_size == 0 {
            return Err(Error::Plan(format!(
                "the NATS source of stream '{}' has batch_size 0: it must be at least 1",
                self.stream
            )));
        }
        let what = self.describe();
        let runtime = runtime(&what)?;
        let client = runtime.block_on(connect(&self.url, &what))?;
        // The context starts a task of its own: on the client's runtime.
        let context = {
            let _runtime = runtime.enter();
            jetstream::new(client.clone())
        };
        let config = consumer::pull::Config {
            durable_name: Some(self.consumer.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_ack_pending: self.max_unacknowledged,
            ..Default::default()
        };
        let consumer = runtime.block_on(async {
            let stream = context
                .get_stream(&self.stream)
                .await
                .map_err(|e| Error::Input(format!("{what}: the stream cannot be opened: {e}")))?;
            stream
                .get_or_create_consumer(&self.consumer, config)
                .await
                .map_err(|e| Error::Input(format!("{what}: the consumer cannot be made: {e}")))
        })?;
        Ok(Box::new(NatsReader {
            runtime,
            client,
            consumer,
            decoder: MessageDecoder::new(self.schema.clone()),
            reconnect: Reconnect::new(self.reconnect_for),
            located: format!("{}/{}#", redacted(&self.url), self.stream),
            what,
            source: self.clone(),
            last_message: Instant::now(),
            unacked: Unacked::new(),
        }))
    }
}

struct NatsReader {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    consumer: consumer::Consumer<consumer::pull::Config>,
    decoder: MessageDecoder,
    reconnect: Reconnect,
    /// What it does and where messages come from, for messages (made once).
    what: String,
    located: String,
    source: NatsSource,
    last_message: Instant,
    /// What was read and is not acknowledged yet.
    unacked: Unacked<jetstream::message::Acker>,
}

/// The longest a pull may take: it asks for at most 200 ms of waiting, so this only ends
/// a pull whose answer never comes.
const PULL_LIMIT: Duration = Duration::from_secs(10);

/// The longest acknowledging a checkpoint, or publishing one chunk, may take.
const SEND_LIMIT: Duration = Duration::from_secs(15);

impl NatsReader {
    /// Pulls what the consumer has, up to `batch_size` messages.
    async fn pull(&self) -> std::result::Result<Vec<jetstream::Message>, String> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(self.source.batch_size)
            .expires(Duration::from_millis(200))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            messages.push(message.map_err(|e| e.to_string())?);
        }
        Ok(messages)
    }
}

impl SourceReader for NatsReader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        // While the client is away (it connects again by itself), a pull returns nothing
        // rather than an error: count the time away against the budget.
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        let pulled = if !connected {
            Err("the connection to the server is lost".to_string())
        } else {
            self.runtime.block_on(async {
                tokio::time::timeout(PULL_LIMIT, self.pull())
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer to a pull in {PULL_LIMIT:?}")))
            })
        };
        let messages = match pulled {
            Ok(messages) => {
                self.reconnect.ok();
                messages
            }
            Err(e) => {
                if self.reconnect.retry() {
                    tracing::warn!("{}: {e}; trying again", self.what);
                    return Ok(true);
                }
                return Err(Error::Input(self.reconnect.gave_up(&self.what, e)));
            }
        };
        if messages.is_empty() {
            return Ok(keep_reading(
                self.source.end_when_idle,
                self.last_message,
                self.unacked.waiting(),
            ));
        }
        self.last_message = Instant::now();
        let mut payloads = Vec::with_capacity(messages.len());
        for message in messages {
            let sequence = message
                .info()
                .map(|i| i.stream_sequence)
                .unwrap_or_default();
            let (message, acker) = message.split();
            payloads.push((sequence, message.payload));
            self.unacked.push(acker);
        }
        let located = &self.located;
        self.decoder.decode(
            payloads.iter().map(|(_, payload)| &payload[..]),
            |i| format!("{located}{}", payloads[i].0),
            out,
        )?;
        Ok(true)
    }

    fn checkpoint(&mut self) -> Option<u64> {
        self.unacked.checkpoint()
    }

    fn acknowledge(&mut self, token: u64) -> Result<()> {
        let ackers = self.unacked.take_through(token);
        let what = &self.what;
        let client = self.client.clone();
        let work = async move {
            for acker in &ackers {
                // An acknowledgement that does not reach the server only means the message
                // comes again after `ack_wait`: at least once.
                acker.ack_with(AckKind::Ack).await?;
            }
            client.flush().await?;
            Ok::<(), async_nats::Error>(())
        };
        // The timer is made inside the runtime.
        let sent = self
            .runtime
            .block_on(async move { tokio::time::timeout(SEND_LIMIT, work).await });
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("{what}: acknowledging: {e}; the messages come again"),
            Err(_) => tracing::warn!(
                "{what}: acknowledging took over {SEND_LIMIT:?}; the messages come again"
            ),
        }
        Ok(())
    }
}

/// A NATS JetStream sink; made by [`NatsJetStream::sink`].
///
/// Each row is published to the subject as one message, the row as a JSON object. A batch is
/// published 1,024 messages at a time, then waits for the server's acknowledgements, so one
/// worker's rows keep their order in the stream.
///
/// **Delivery: at least once.** Messages whose acknowledgement fails or does not come (the
/// server went away) are published again, trying for [`NatsSink::reconnect_for`] (30 s by
/// default), then the job fails naming the server and the subject. A message the server had
/// stored before its acknowledgement was lost is then there twice.
#[derive(Debug, Clone)]
pub struct NatsSink {
    url: String,
    subject: String,
    create_stream: Option<String>,
    reconnect_for: Duration,
}

impl NatsSink {
    /// Makes sure the stream `name` exists when the sink opens, creating it (file storage,
    /// capturing the sink's subject) when missing.
    pub fn create_stream(mut self, name: impl Into<String>) -> Self {
        self.create_stream = Some(name.into());
        self
    }

    /// How long failing publishes are tried again before failing (default 30 s).
    pub fn reconnect_for(mut self, budget: Duration) -> Self {
        self.reconnect_for = budget;
        self
    }

    /// The descriptor of this sink for the job's plan: kind `nats.jetstream`.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "nats.jetstream",
            json!({ "url": redacted(&self.url), "subject": self.subject, "stream": self.create_stream }),
        )
    }

    fn describe(&self) -> String {
        format!(
            "publishing to '{}' on {}",
            self.subject,
            redacted(&self.url)
        )
    }
}

impl Sink for NatsSink {
    fn open(&self, _ctx: &WorkerContext, _schema: &SchemaRef) -> Result<Box<dyn SinkWriter>> {
        let what = self.describe();
        let runtime = runtime(&what)?;
        let client = runtime.block_on(connect(&self.url, &what))?;
        let context = {
            let _runtime = runtime.enter();
            jetstream::new(client.clone())
        };
        if let Some(name) = &self.create_stream {
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![self.subject.clone()],
                storage: stream::StorageType::File,
                ..Default::default()
            };
            runtime
                .block_on(context.get_or_create_stream(config))
                .map_err(|e| {
                    Error::Input(format!("{what}: the stream '{name}' cannot be made: {e}"))
                })?;
        }
        Ok(Box::new(NatsWriter {
            runtime,
            client,
            context,
            sink: self.clone(),
        }))
    }
}

struct NatsWriter {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    context: jetstream::Context,
    sink: NatsSink,
}

impl NatsWriter {
    /// Publishes `rows` in order, then waits for the server's acknowledgements.
    async fn publish(&self, rows: &[Vec<u8>]) -> std::result::Result<(), String> {
        let mut acks = Vec::with_capacity(rows.len());
        for row in rows {
            let ack = self
                .context
                .publish(
                    self.sink.subject.clone(),
                    bytes::Bytes::copy_from_slice(row),
                )
                .await
                .map_err(|e| e.to_string())?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl SinkWriter for NatsWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = encode_rows(batch)?;
        let what = self.sink.describe();
        let mut reconnect = Reconnect::new(self.sink.reconnect_for);
        for chunk in rows.chunks(1024) {
            loop {
                let connected =
                    self.client.connection_state() == async_nats::connection::State::Connected;
                let sent = if !connected {
                    Err("the connection to the server is lost".to_string())
                } else {
                    self.runtime.block_on(async {
                        tokio::time::timeout(SEND_LIMIT, self.publish(chunk))
                            .await
                            .unwrap_or_else(|_| {
                                Err(format!("no acknowledgement in {SEND_LIMIT:?}"))
                            })
                    })
                };
                match sent {
                    Ok(()) => {
                        reconnect.ok();
                        break;
                    }
                    Err(e) if reconnect.retry() => {
                        tracing::warn!("{what}: {e}; publishing again");
                    }
                    Err(e) => return Err(Error::Input(reconnect.gave_up(&what, e))),
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A runtime of one thread for a reader's or writer's client (it keeps the connection
/// served between calls).
fn runtime(what: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("streamrun-nats")
        .enable_all()
        .build()
        .map_err(|e| Error::io(format!("{what}: starting the client's runtime"), e))
}

/// Connects to the server, giving up after 5 s (the client connects again by itself once
/// connected).
async fn connect(url: &str, what: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(url)
        .await
        .map_err(|e| Error::Input(format!("{what}: cannot connect: {e}")))
}
