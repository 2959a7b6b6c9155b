//! Records as messages, for the broker connectors: one JSON object per message.
//!
//! Sources decode a run of messages with the source's schema in one pass, and fall back to
//! one message at a time only when the run holds a bad one, which then goes to the
//! [`SourceCollector`] as a dead letter naming the message. Sinks encode each row as one
//! JSON object.

#![cfg_attr(not(any(feature = "nats", feature = "redis")), allow(dead_code))]

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use streamrun_engine::{DeadLetter, Error, Result, SourceCollector};

use crate::files::reader::{decode_json, json_reason};

/// Decodes runs of JSON messages into batches of one schema.
#[derive(Debug)]
pub(crate) struct MessageDecoder {
    schema: SchemaRef,
    /// Payloads of the run, each followed by a line break.
    joined: Vec<u8>,
}

impl MessageDecoder {
    pub(crate) fn new(schema: SchemaRef) -> Self {
        MessageDecoder {
            schema,
            joined: Vec::new(),
        }
    }

    /// Decodes `payloads` into one batch emitted to `out`; those that are not a JSON object
    /// of the schema go to `out` as bad records, `location(i)` naming where payload `i` came
    /// from (only made for a bad one).
    pub(crate) fn decode<'a>(
        &mut self,
        payloads: impl Iterator<Item = &'a [u8]> + Clone,
        location: impl Fn(usize) -> String,
        out: &mut SourceCollector,
    ) -> Result<()> {
        self.joined.clear();
        let mut count = 0;
        for payload in payloads.clone() {
            self.joined.extend_from_slice(payload);
            self.joined.push(b'\n');
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        let bytes = self.joined.len() as u64;
        let batches = match decode_json(&self.schema, &self.joined, count) {
            Ok(batches) if rows(&batches) == count => batches,
            _ => {
                let mut good = Vec::with_capacity(count);
                for (i, payload) in payloads.enumerate() {
                    let reason = match decode_json(&self.schema, payload, 1) {
                        Ok(batches) if rows(&batches) == 1 => {
                            good.extend(batches);
                            continue;
                        }
                        Ok(batches) => format!(
                            "expected one JSON object in the message, found {}",
                            rows(&batches)
                        ),
                        Err(e) => json_reason(payload, &e),
                    };
                    out.bad_record(DeadLetter {
                        location: location(i),
                        reason,
                        record: String::from_utf8_lossy(payload).into_owned(),
                    })?;
                }
                good
            }
        };
        let batch = match batches.len() {
            1 => batches.into_iter().next(),
            _ => Some(
                arrow::compute::concat_batches(&self.schema, &batches)
                    .map_err(|e| Error::arrow("joining decoded messages", e))?,
            ),
        };
        let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&self.schema)));
        out.emit(batch, bytes);
        Ok(())
    }
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// Encodes each row of `batch` as one JSON object (nulls left out), in row order.
pub(crate) fn encode_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut buffer = Vec::with_capacity(batch.num_rows() * 64);
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
        writer
            .write(batch)
            .map_err(|e| Error::arrow("encoding rows as JSON", e))?;
        writer
            .finish()
            .map_err(|e| Error::arrow("encoding rows as JSON", e))?;
    }
    // JSON escapes line breaks inside strings, so every line break ends a row.
    let rows: Vec<Vec<u8>> = buffer
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if rows.len() != batch.num_rows() {
        return Err(Error::Internal(format!(
            "encoding {} rows as JSON gave {} lines",
            batch.num_rows(),
            rows.len()
        )));
    }
    Ok(rows)
}

/// Retries an operation against a server that may be away for a while: waits 100 ms,
/// doubling up to 2 s, for at most `budget` since the first failure; then gives up with the
/// last error.
#[derive(Debug)]
pub(crate) struct Reconnect {
    budget: std::time::Duration,
    since: Option<std::time::Instant>,
    pause: std::time::Duration,
}

impl Reconnect {
    pub(crate) fn new(budget: std::time::Duration) -> Self {
        Reconnect {
            budget,
            since: None,
            pause: std::time::Duration::from_millis(100),
        }
    }

    /// Records a success: the next failure starts a fresh budget.
    pub(crate) fn ok(&mut self) {
        self.since = None;
        self.pause = std::time::Duration::from_millis(100);
    }

    /// Records a failure: sleeps and returns `true` to try again, or `false` when the budget
    /// is spent.
    pub(crate) fn retry(&mut self) -> bool {
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= self.budget {
            return false;
        }
        std::thread::sleep(self.pause);
        self.pause = (self.pause * 2).min(std::time::Duration::from_secs(2));
        true
    }

    /// The budget, for messages.
    pub(crate) fn budget(&self) -> std::time::Duration {
        self.budget
    }

    /// The error once the budget is spent: `what` was being done, `cause` the last failure.
    pub(crate) fn gave_up(&self, what: &str, cause: impl std::fmt::Display) -> String {
        format!(
            "{what}: the server is unreachable for {:?}: {cause}",
            self.budget
        )
    }
}

/// Whether a broker source that found nothing new goes on: always, unless it ends after
/// `end_when_idle` without a message since `last` (and nothing waits to be acknowledged).
pub(crate) fn keep_reading(
    end_when_idle: Option<std::time::Duration>,
    last: std::time::Instant,
    waiting: bool,
) -> bool {
    match end_when_idle {
        Some(idle) => last.elapsed() < idle || waiting,
        None => true,
    }
}

/// The URL without its password, for messages and plans.
#[cfg(any(feature = "nats", feature = "redis"))]
pub(crate) fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// What a reader read and has not had acknowledged: the handles (ids, acknowledgers) read
/// since the last checkpoint, and those of each checkpoint not acknowledged yet, oldest
/// first. This is the reader's state for at-least-once delivery; its size is bounded by the
/// engine's pacing (a few steps of reads) and the broker's own limit on unacknowledged
/// messages.
#[derive(Debug)]
pub(crate) struct Unacked<T> {
    read: Vec<T>,
    checkpoints: std::collections::VecDeque<(u64, Vec<T>)>,
    next: u64,
}

impl<T> Unacked<T> {
    pub(crate) fn new() -> Self {
        Unacked {
            read: Vec::new(),
            checkpoints: std::collections::VecDeque::new(),
            next: 0,
        }
    }

    /// Notes one more handle read.
    pub(crate) fn push(&mut self, handle: T) {
        self.read.push(handle);
    }

    /// Closes a checkpoint over what was read since the last one (see
    /// `SourceReader::checkpoint`); `None` when nothing was.
    pub(crate) fn checkpoint(&mut self) -> Option<u64> {
        if self.read.is_empty() {
            return None;
        }
        let token = self.next;
        self.next += 1;
        self.checkpoints
            .push_back((token, std::mem::take(&mut self.read)));
        Some(token)
    }

    /// Takes the handles of checkpoint `token` and of every earlier one, to acknowledge.
    pub(crate) fn take_through(&mut self, token: u64) -> Vec<T> {
        let mut handles = Vec::new();
        while let Some((t, _)) = self.checkpoints.front()
            && *t <= token
        {
            if let Some((_, batch)) = self.checkpoints.pop_front() {
                handles.extend(batch);
            }
        }
        handles
    }

    /// Whether a checkpoint waits for its acknowledgement.
    pub(crate) fn waiting(&self) -> bool {
        !self.checkpoints.is_empty()
    }
}
