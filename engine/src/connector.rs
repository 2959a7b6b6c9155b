//! The source and sink contracts that connectors implement.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::operator::WorkerContext;

/// What a source does with a record it cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRecordPolicy {
    /// Stop the job with an error naming the file and line (the default).
    #[default]
    Fail,
    /// Send the record, with the reason, to the source's dead-letter sink and go on.
    DeadLetter,
}

/// A record a source could not read, with where it was and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Where the record was: `file:line`, or `file: row group N`.
    pub location: String,
    /// Why it could not be read.
    pub reason: String,
    /// The record's raw text, when there is one.
    pub record: String,
}

impl DeadLetter {
    /// The schema of dead-letter batches: `source`, `location`, `reason`, `record`, all text.
    pub fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("source", DataType::Utf8, false),
            Field::new("location", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("record", DataType::Utf8, false),
        ]))
    }

    /// Packs dead letters of one source into a batch of [`DeadLetter::schema`].
    pub fn to_batch(source: &str, letters: &[DeadLetter]) -> Result<RecordBatch> {
        let column = |f: fn(&DeadLetter) -> &str| -> Arc<StringArray> {
            Arc::new(StringArray::from_iter_values(letters.iter().map(f)))
        };
        RecordBatch::try_new(
            Self::schema(),
            vec![
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    source,
                    letters.len(),
                ))),
                column(|d| &d.location),
                column(|d| &d.reason),
                column(|d| &d.record),
            ],
        )
        .map_err(|e| Error::arrow("building dead-letter batch", e))
    }
}

/// Receives what a source reads: batches, and records it could not read.
#[derive(Debug)]
pub struct SourceCollector {
    policy: BadRecordPolicy,
    batches: Vec<RecordBatch>,
    dead: Vec<DeadLetter>,
    records: u64,
    bytes: u64,
}

impl SourceCollector {
    /// A collector applying `policy` to bad records.
    pub fn new(policy: BadRecordPolicy) -> Self {
        SourceCollector {
            policy,
            batches: Vec::new(),
            dead: Vec::new(),
            records: 0,
            bytes: 0,
        }
    }

    /// Emits a batch read from `bytes` bytes of input.
    pub fn emit(&mut self, batch: RecordBatch, bytes: u64) {
        self.bytes += bytes;
        if batch.num_rows() > 0 {
            self.records += batch.num_rows() as u64;
            self.batches.push(batch);
        }
    }

    /// Reports a record that could not be read. Under [`BadRecordPolicy::Fail`] this returns
    /// the error the source must return; otherwise the record goes to the dead letters.
    pub fn bad_record(&mut self, letter: DeadLetter) -> Result<()> {
        match self.policy {
            BadRecordPolicy::Fail => Err(Error::Input(format!(
                "{}: {}",
                letter.location, letter.reason
            ))),
            BadRecordPolicy::DeadLetter => {
                self.dead.push(letter);
                Ok(())
            }
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> BadRecordPolicy {
        self.policy
    }

    /// Takes the batches and dead letters collected so far.
    pub fn take(&mut self) -> (Vec<RecordBatch>, Vec<DeadLetter>) {
        (
            std::mem::take(&mut self.batches),
            std::mem::take(&mut self.dead),
        )
    }

    /// Takes the counts of records and bytes read since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.records),
            std::mem::take(&mut self.bytes),
        )
    }
}

/// A source of batches, split across the workers of a job.
pub trait Source: Send + Sync {
    /// The schema of the batches it produces. Sources that infer a schema read a sample here;
    /// errors name the file.
    fn schema(&self) -> Result<SchemaRef>;

    /// Opens this worker's share of the input: the union over all workers is the whole input,
    /// and no record is read by two workers.
    fn open(&self, ctx: &WorkerContext) -> Result<Box<dyn SourceReader>>;
}

/// One worker's reader over its share of a source.
pub trait SourceReader {
    /// Reads the next piece of input into `out` (a batch, or bad records, or both).
    /// Returns `false` when the share is exhausted.
    ///
    /// An unbounded reader with nothing to read right now returns `Ok(true)` without
    /// emitting, and must not block: the engine polls it again after a short pause, and after
    /// the source's idle timeout (`EventTimeSpec::idle_timeout_ms`) counts the partition as
    /// idle.
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool>;

    /// Closes a checkpoint over everything read so far and names it, for a source that
    /// acknowledges what it read (a broker's ack, a stream's offset). `None` (the default):
    /// nothing to acknowledge, or nothing read since the last checkpoint.
    ///
    /// The engine calls it after the reads of one step were sent downstream, and calls
    /// [`SourceReader::acknowledge`] with the token once every operator of the job has taken
    /// in those records (for a pipeline without state, once every sink wrote them). A source
    /// keeps what a token stands for (the message ids, the offset) as its state until then:
    /// what was read but not acknowledged is delivered again after a crash (at least once).
    fn checkpoint(&mut self) -> Option<u64> {
        None
    }

    /// Acknowledges the records of checkpoint `token` (and of every earlier one) to the
    /// system they came from. Tokens come back in the order [`SourceReader::checkpoint`] gave
    /// them. An error fails the job.
    fn acknowledge(&mut self, token: u64) -> Result<()> {
        let _ = token;
        Ok(())
    }
}

/// How many workers a node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parallelism {
    /// As many as the job has (or, after a forward edge, as many as the input).
    #[default]
    Workers,
    /// One worker: the input is gathered onto worker 0 (a terminal table, a global top-k).
    Single,
}

/// A destination for batches.
pub trait Sink: Send + Sync {
    /// Opens this worker's writer for batches of `schema`.
    fn open(&self, ctx: &WorkerContext, schema: &SchemaRef) -> Result<Box<dyn SinkWriter>>;

    /// How many workers write: every worker its own part, or one worker for everything.
    fn parallelism(&self) -> Parallelism {
        Parallelism::Workers
    }
}

/// One worker's writer.
pub trait SinkWriter {
    /// Writes a batch.
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    /// Commits what was written (renames a temporary file into place, flushes, prints).
    fn finish(&mut self) -> Result<()>;

    /// Makes what was written so far durable, when the writer buffers: the engine calls it
    /// whenever the sink's input frontier moves on, before the sink's progress can let a
    /// source acknowledge those records (see [`SourceReader::checkpoint`]). Writers that
    /// write through, or that can only commit whole (files), keep the default, which does
    /// nothing.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}
