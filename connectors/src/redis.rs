//! Redis Streams: a source reading a stream through a consumer group, and a sink appending
//! to a stream.
//!
//! Each entry carries one record, a JSON object, in its field `data` (the sink writes it so;
//! the source decodes it with the source's schema, and sends an entry it cannot read, with
//! the reason and the entry's id, to the dead letters).

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use redis::Value;
use serde_json::json;
use streamrun_engine::{
    Descriptor, Error, Result, Sink, SinkWriter, Source, SourceCollector, SourceReader,
    WorkerContext,
};

use crate::messages::{MessageDecoder, Reconnect, Unacked, encode_rows, keep_reading, redacted};

/// The field of an entry that holds its record.
pub const DATA_FIELD: &str = "data";

/// How long a connection may stay lost before the source or sink fails (default).
const DEFAULT_RECONNECT: Duration = Duration::from_secs(30);

/// The source and sink builders for Redis Streams.
///
/// ```no_run
/// use std::sync::Arc;
/// use arrow::datatypes::{DataType, Field, Schema};
/// use streamrun_connectors::RedisStreams;
///
/// let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
/// // Read `events` through the consumer group `etl`, ending once the stream is quiet 1 s.
/// let source = RedisStreams::source("redis://127.0.0.1:6379", "events", "etl", schema)
///     .end_when_idle(std::time::Duration::from_secs(1));
/// // Append the results to `results`.
/// let sink = RedisStreams::sink("redis://127.0.0.1:6379", "results");
/// # let _ = (source, sink);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RedisStreams;

impl RedisStreams {
    /// A source reading stream `stream` of the server at `url` through consumer group
    /// `group` (created at the stream's start when missing), records decoded as `schema`.
    pub fn source(
        url: impl Into<String>,
        stream: impl Into<String>,
        group: impl Into<String>,
        schema: SchemaRef,
    ) -> RedisStreamSource {
        RedisStreamSource {
            url: url.into(),
            stream: stream.into(),
            group: group.into(),
            schema,
            batch_size: 1024,
            end_when_idle: None,
            reconnect_for: DEFAULT_RECONNECT,
            claim_after: Duration::from_secs(60),
        }
    }

    /// A sink appending every row to stream `stream` of the server at `url`.
    pub fn sink(url: impl Into<String>, stream: impl Into<String>) -> RedisStreamSink {
        RedisStreamSink {
            url: url.into(),
            stream: stream.into(),
            max_len: None,
            reconnect_for: DEFAULT_RECONNECT,
        }
    }
}

/// A Redis Streams source; made by [`RedisStreams::source`].
///
/// **Delivery: at least once.** The workers of a job are consumers of one consumer group
/// (`{job}-{worker}`), so the server deals the entries among them and each entry goes to one
/// worker. An entry is acknowledged (`XACK`) only once the engine reports that every
/// operator of the job has taken it in (see [`SourceReader::checkpoint`]); until then its id
/// is the reader's state. A worker that starts again first reads the entries it was given
/// but never acknowledged, then new ones.
///
/// **Order:** entries reach a worker in stream order; with one worker, the job sees the
/// stream's order.
///
/// **Server going away:** a lost connection is opened again, with pauses growing from
/// 100 ms to 2 s, for at most [`RedisStreamSource::reconnect_for`] (30 s by default); then
/// the job fails with an error naming the server and the stream. Entries read but not
/// acknowledged when the connection was lost stay pending, and are read again.
#[derive(Debug, Clone)]
pub struct RedisStreamSource {
    url: String,
    stream: String,
    group: String,
    schema: SchemaRef,
    batch_size: usize,
    end_when_idle: Option<Duration>,
    reconnect_for: Duration,
    claim_after: Duration,
}

impl RedisStreamSource {
    /// Claims (`XAUTOCLAIM`) the entries another consumer of the group was given and has
    /// not acknowledged for this long (default 60 s): those of a worker that died, or of a
    /// consumer of an earlier run with more workers. The reader looks for them when it finds
    /// no new entry, at most every 1 s. An entry whose acknowledgement is merely late is
    /// then read twice (at least once).
    pub fn claim_after(mut self, idle: Duration) -> Self {
        self.claim_after = idle;
        self
    }

    /// The most entries read at once (default 1,024).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Ends the source once no entry arrived for `idle` (a bounded run over what the stream
    /// holds). By default the source never ends.
    pub fn end_when_idle(mut self, idle: Duration) -> Self {
        self.end_when_idle = Some(idle);
        self
    }

    /// How long a lost connection is tried again before failing (default 30 s).
    pub fn reconnect_for(mut self, budget: Duration) -> Self {
        self.reconnect_for = budget;
        self
    }

    /// The descriptor of this source for the job's plan: kind `redis.stream`.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "redis.stream",
            json!({
                "url": redacted(&self.url),
                "stream": self.stream,
                "group": self.group,
                "batch_size": self.batch_size,
            }),
        )
    }
}

impl Source for RedisStreamSource {
    fn schema(&self) -> Result<SchemaRef> {
        Ok(self.schema.clone())
    }

    fn open(&self, ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
        if self.batch_size == 0 {
            return Err(Error::Plan(format!(
                "the Redis source of stream '{}' has batch_size 0: it must be at least 1",
                self.stream
            )));
        }
        let mut reader = RedisReader {
            connection: Connection::new(&self.url, self.reconnect_for)?,
            what: self.describe(),
            located: format!("{}/{}#", redacted(&self.url), self.stream),
            source: self.clone(),
            consumer: format!("{}-{}", ctx.job, ctx.index),
            decoder: MessageDecoder::new(self.schema.clone()),
            pending_after: Some("0".into()),
            claim_cursor: "0-0".into(),
            last_claim: None,
            last_entry: Instant::now(),
            unacked: Unacked::new(),
        };
        let stream = self.stream.clone();
        let group = self.group.clone();
        let created = reader.connection.run(&reader.what, |c| {
            let created = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(&group)
                .arg("0")
                .arg("MKSTREAM")
                .query::<()>(c);
            match created {
                Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                other => other,
            }
        });
        created?;
        Ok(Box::new(reader))
    }
}

impl RedisStreamSource {
    fn describe(&self) -> String {
        format!(
            "reading stream '{}' of {} (group '{}')",
            self.stream,
            redacted(&self.url),
            self.group
        )
    }
}

/// One worker's consumer.
struct RedisReader {
    connection: Connection,
    /// What it does and where entries come from, for messages (made once).
    what: String,
    located: String,
    source: RedisStreamSource,
    consumer: String,
    decoder: MessageDecoder,
    /// While the entries given to this consumer earlier and not acknowledged are read again
    /// (after a start or a lost connection): the id to read after. `None`: new entries.
    pending_after: Option<String>,
    /// Where the last `XAUTOCLAIM` stopped, and when it ran.
    claim_cursor: String,
    last_claim: Option<Instant>,
    last_entry: Instant,
    /// What was read and is not acknowledged yet.
    unacked: Unacked<String>,
}

impl RedisReader {
    /// Claims entries other consumers left unacknowledged for `claim_after`, at most every
    /// second.
    fn claim(&mut self) -> Result<Vec<Entry>> {
        if self
            .last_claim
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(Vec::new());
        }
        self.last_claim = Some(Instant::now());
        let idle = u64::try_from(self.source.claim_after.as_millis()).unwrap_or(u64::MAX);
        let (source, consumer, cursor) = (&self.source, &self.consumer, &self.claim_cursor);
        let reply = self.connection.run(&self.what, |c| {
            redis::cmd("XAUTOCLAIM")
                .arg(&source.stream)
                .arg(&source.group)
                .arg(consumer)
                .arg(idle)
                .arg(cursor)
                .arg("COUNT")
                .arg(source.batch_size)
                .query::<Value>(c)
        })?;
        let what = &self.what;
        let unexpected =
            |reason: String| Error::Input(format!("{what}: unexpected XAUTOCLAIM reply: {reason}"));
        let Value::Array(mut parts) = reply else {
            return Err(unexpected("not an array".into()));
        };
        if parts.len() < 2 {
            return Err(unexpected(format!("{} parts", parts.len())));
        }
        let entries = parts.swap_remove(1);
        self.claim_cursor = match parts.swap_remove(0) {
            Value::BulkString(c) => String::from_utf8_lossy(&c).into_owned(),
            Value::SimpleString(c) => c,
            other => return Err(unexpected(format!("a cursor of {other:?}"))),
        };
        stream_entries(entries).map_err(unexpected)
    }
}

impl SourceReader for RedisReader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        let from = self.pending_after.as_deref().unwrap_or(">");
        let (source, consumer) = (&self.source, &self.consumer);
        let reply = self.connection.run(&self.what, |c| {
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&source.group)
                .arg(consumer)
                .arg("COUNT")
                .arg(source.batch_size)
                .arg("STREAMS")
                .arg(&source.stream)
                .arg(from)
                .query::<Value>(c)
        })?;
        let entries = entries_of(reply)
            .map_err(|reason| Error::Input(format!("{}: unexpected reply: {reason}", self.what)))?;
        if self.connection.reconnected() && self.pending_after.is_none() {
            // A new connection: entries sent on the lost one may not have arrived, and are
            // pending for this consumer, before the ones this read returned. Read them all
            // again from the start of the pending list, in id order (those already read come
            // twice: at least once).
            self.pending_after = Some("0".into());
            return Ok(true);
        }
        let entries = if entries.is_empty() && self.pending_after.is_none() {
            self.claim()?
        } else {
            entries
        };
        if entries.is_empty() {
            if self.pending_after.take().is_some() {
                return Ok(true);
            }
            return Ok(keep_reading(
                self.source.end_when_idle,
                self.last_entry,
                self.unacked.waiting(),
            ));
        }
        self.last_entry = Instant::now();
        // An entry deleted from the stream while pending comes back without fields: there
        // is nothing to read, and it is acknowledged with the others.
        let present: Vec<(&String, &[u8])> = entries
            .iter()
            .filter_map(|(id, payload)| payload.as_deref().map(|p| (id, p)))
            .collect();
        let located = &self.located;
        self.decoder.decode(
            present.iter().map(|(_, payload)| *payload),
            |i| format!("{located}{}", present[i].0),
            out,
        )?;
        if let (Some(after), Some((last, _))) = (self.pending_after.as_mut(), entries.last()) {
            // Pending entries are read by id: go on after the last one.
            after.clone_from(last);
        }
        for (id, _) in entries {
            self.unacked.push(id);
        }
        Ok(true)
    }

    fn checkpoint(&mut self) -> Option<u64> {
        self.unacked.checkpoint()
    }

    fn acknowledge(&mut self, token: u64) -> Result<()> {
        let ids = self.unacked.take_through(token);
        let source = &self.source;
        for chunk in ids.chunks(4096) {
            self.connection.run(&self.what, |c| {
                redis::cmd("XACK")
                    .arg(&source.stream)
                    .arg(&source.group)
                    .arg(chunk)
                    .query::<()>(c)
            })?;
        }
        Ok(())
    }
}

/// An entry's id and its `data` payload (`None`: deleted from the stream).
type Entry = (String, Option<Vec<u8>>);

/// The entries of an `XREADGROUP` reply: id and `data` payload.
fn entries_of(reply: Value) -> std::result::Result<Vec<Entry>, String> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => Ok(pair.swap_remove(1)),
                other => Err(format!("a stream of {other:?}")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
        other => return Err(format!("{other:?}")),
    };
    let mut entries = Vec::new();
    for stream in streams {
        entries.extend(stream_entries(stream)?);
    }
    Ok(entries)
}

/// The entries of one stream in a reply: `[[id, [field, value, …]], …]`.
fn stream_entries(stream: Value) -> std::result::Result<Vec<Entry>, String> {
    let Value::Array(items) = stream else {
        return Err("entries are not an array".into());
    };
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else {
            return Err("an entry is not an array".into());
        };
        if pair.len() != 2 {
            return Err("an entry is not an id and fields".into());
        }
        let fields = pair.pop();
        let id = match pair.pop() {
            Some(Value::BulkString(id)) => String::from_utf8_lossy(&id).into_owned(),
            Some(Value::SimpleString(id)) => id,
            other => return Err(format!("an entry id of {other:?}")),
        };
        let payload = match fields {
            // An entry without a `data` field reads as an empty (bad) record.
            Some(Value::Array(fields)) => Some(data_field(fields).unwrap_or_default()),
            // An entry deleted while pending comes back without fields.
            Some(Value::Nil) => None,
            other => return Err(format!("the fields of entry {id}: {other:?}")),
        };
        entries.push((id, payload));
    }
    Ok(entries)
}

/// The value of the `data` field among an entry's fields.
fn data_field(fields: Vec<Value>) -> Option<Vec<u8>> {
    let mut it = fields.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        let is_data = match &name {
            Value::BulkString(n) => n.as_slice() == DATA_FIELD.as_bytes(),
            Value::SimpleString(n) => n == DATA_FIELD,
            _ => false,
        };
        if is_data {
            return match value {
                Value::BulkString(v) => Some(v),
                Value::SimpleString(v) => Some(v.into_bytes()),
                _ => None,
            };
        }
    }
    None
}

/// A Redis Streams sink; made by [`RedisStreams::sink`].
///
/// Each row is appended (`XADD`, ids given by the server) as one entry whose `data` field is
/// the row as a JSON object; a batch goes in one pipeline, so one worker's rows keep their
/// order in the stream.
///
/// **Delivery: at least once.** A batch whose pipeline fails with the connection is sent
/// again on a new connection (trying for [`RedisStreamSink::reconnect_for`], 30 s by
/// default): entries of it that the server had taken before the failure are then there twice.
#[derive(Debug, Clone)]
pub struct RedisStreamSink {
    url: String,
    stream: String,
    max_len: Option<usize>,
    reconnect_for: Duration,
}

impl RedisStreamSink {
    /// Trims the stream to about `max_len` entries as it writes (`MAXLEN ~`), a bound on the
    /// server's memory. By default the stream is not trimmed.
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = Some(max_len);
        self
    }

    /// How long a lost connection is tried again before failing (default 30 s).
    pub fn reconnect_for(mut self, budget: Duration) -> Self {
        self.reconnect_for = budget;
        self
    }

    /// The descriptor of this sink for the job's plan: kind `redis.stream`.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "redis.stream",
            json!({ "url": redacted(&self.url), "stream": self.stream, "max_len": self.max_len }),
        )
    }
}

impl Sink for RedisStreamSink {
    fn open(&self, _ctx: &WorkerContext, _schema: &SchemaRef) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(RedisWriter {
            connection: Connection::new(&self.url, self.reconnect_for)?,
            sink: self.clone(),
        }))
    }
}

struct RedisWriter {
    connection: Connection,
    sink: RedisStreamSink,
}

impl SinkWriter for RedisWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = encode_rows(batch)?;
        let what = format!(
            "appending to stream '{}' of {}",
            self.sink.stream,
            redacted(&self.sink.url)
        );
        for chunk in rows.chunks(1024) {
            let mut pipe = redis::pipe();
            for row in chunk {
                let cmd = pipe.cmd("XADD").arg(&self.sink.stream);
                if let Some(max) = self.sink.max_len {
                    cmd.arg("MAXLEN").arg("~").arg(max);
                }
                cmd.arg("*").arg(DATA_FIELD).arg(row.as_slice()).ignore();
            }
            self.connection.run(&what, |c| pipe.query::<()>(c))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A connection opened again when lost.
struct Connection {
    client: redis::Client,
    connection: Option<redis::Connection>,
    reconnect: Reconnect,
    /// Whether a connection was opened again since the last call to `reconnected`.
    renewed: bool,
}

impl Connection {
    fn new(url: &str, reconnect_for: Duration) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::Plan(format!("invalid Redis URL '{}': {e}", redacted(url))))?;
        Ok(Connection {
            client,
            connection: None,
            reconnect: Reconnect::new(reconnect_for),
            renewed: false,
        })
    }

    /// Runs `op` on the connection, opening it (again) when needed. A lost connection is
    /// tried again within the budget; a server's refusal is an error at once.
    fn run<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        loop {
            let result = match self.connection.as_mut() {
                Some(c) => op(c),
                None => match self
                    .client
                    .get_connection_with_timeout(Duration::from_secs(5))
                {
                    Ok(mut c) => {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                        let result = op(&mut c);
                        self.connection = Some(c);
                        self.renewed = true;
                        result
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(value) => {
                    self.reconnect.ok();
                    return Ok(value);
                }
                Err(e)
                    if e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal()
                        || e.is_timeout() =>
                {
                    self.connection = None;
                    if !self.reconnect.retry() {
                        return Err(Error::Input(self.reconnect.gave_up(what, e)));
                    }
                    tracing::warn!("{what}: {e}; connecting again");
                }
                Err(e) => return Err(Error::Input(format!("{what}: {e}"))),
            }
        }
    }

    /// Whether a new connection was opened since the last call.
    fn reconnected(&mut self) -> bool {
        std::mem::take(&mut self.renewed)
    }
}
