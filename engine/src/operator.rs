//! The operator contract: what a task, a filter or an aggregate implements.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::error::Result;

/// Where a worker stands in its job, given to every operator, source and sink it creates.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    /// The job's name.
    pub job: String,
    /// This worker's index, `0..workers`.
    pub index: usize,
    /// How many workers run the job.
    pub workers: usize,
    /// How many of them run in this process (all of them unless the job spans several
    /// processes). A process's workers have consecutive indices: see
    /// [`process_workers`](Self::process_workers).
    pub local_workers: usize,
}

impl WorkerContext {
    /// The indices of the workers in this worker's process, this one among them.
    ///
    /// ```
    /// use streamrun_engine::WorkerContext;
    ///
    /// // Worker 3 of a job over 2 processes of 2 workers runs in the second process.
    /// let ctx = WorkerContext { job: "j".into(), index: 3, workers: 4, local_workers: 2 };
    /// assert_eq!(ctx.process_workers(), 2..4);
    /// let alone = WorkerContext { local_workers: 4, ..ctx };
    /// assert_eq!(alone.process_workers(), 0..4);
    /// ```
    pub fn process_workers(&self) -> std::ops::Range<usize> {
        let local = self.local_workers.clamp(1, self.workers.max(1));
        let first = self.index - self.index % local;
        first..(first + local).min(self.workers)
    }
}

/// Receives the batches an operator emits.
#[derive(Debug, Default)]
pub struct Collector {
    batches: Vec<RecordBatch>,
}

impl Collector {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Emits a batch downstream; empty batches are dropped here so operators need not check.
    pub fn emit(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.batches.push(batch);
        }
    }

    /// Takes the batches emitted so far.
    pub fn take(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.batches)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// One instance of an operator, owned by one worker.
///
/// The engine calls [`Operator::process_batch`] for every batch that reaches this worker, in
/// arrival order, and [`Operator::finish`] once when the input has ended on every worker.
///
/// # Errors
///
/// An error stops the job: every worker stops, and the error, with the operator's name, is
/// what [`crate::execute`] returns. Record-level problems an operator can tolerate should be
/// handled inside it; it must never panic on data.
pub trait Operator {
    /// Processes one batch, emitting zero or more batches.
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()>;

    /// Called when the watermark of the operator's input (event time, in milliseconds)
    /// advances: no record with an earlier event time will arrive any more. Windows close
    /// here. Only a [blocking](OperatorFactory::is_blocking) operator may emit.
    fn on_watermark(&mut self, _watermark: u64, _out: &mut Collector) -> Result<()> {
        Ok(())
    }

    /// The least event time (ms) of any record the operator may still emit, when it holds
    /// records back: a window operator's is the end of its earliest open window, less one.
    /// The engine then keeps the operator's output watermark at or below it, so that what
    /// the operator emits later is never behind the watermark it travels under, and event-time
    /// operators downstream (a max over window counts) see complete input.
    fn hold(&self) -> Option<u64> {
        None
    }

    /// Called once after the last batch. Operators that hold data (aggregates, top-k) emit
    /// it here; sinks commit. Only a [blocking](OperatorFactory::is_blocking) operator may emit.
    fn finish(&mut self, _out: &mut Collector) -> Result<()> {
        Ok(())
    }

    /// Called when the operator's input frontier has moved on, before the engine lets its
    /// own output frontier follow: no batch of an earlier time will come. Sinks make durable
    /// what they were given ([`crate::SinkWriter::flush`]), so that a source acknowledging
    /// what passed the job's frontier never acknowledges what a sink still buffers.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Creates the instances of an operator, one per worker, and describes its output.
///
/// A factory is shared by all workers of a job, so it is `Send + Sync`; the instances it
/// creates live on one worker thread each and need not be.
pub trait OperatorFactory: Send + Sync {
    /// The schema of the batches the operator emits, given the schema of its input.
    /// Errors here (an unknown column, a wrong type) are reported before the job starts.
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef>;

    /// Creates this worker's instance.
    fn create(&self, ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>>;

    /// Whether the operator holds output until its input ends or its watermark advances
    /// (aggregates, top-k, windows). Stateless operators return `false` and then must not emit
    /// from [`Operator::finish`] or [`Operator::on_watermark`].
    fn is_blocking(&self) -> bool {
        false
    }
}

/// Which input of a two-input operator a batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first input.
    Left,
    /// The second input.
    Right,
}

/// One instance of a two-input operator (a join), owned by one worker.
///
/// Like [`Operator`], with batches tagged by the input they come from. The watermark it is
/// given is the lesser of its two inputs' watermarks.
pub trait JoinOperator {
    /// Processes one batch from `side`.
    fn process_batch(&mut self, side: Side, batch: RecordBatch, out: &mut Collector) -> Result<()>;

    /// The watermark of both inputs advanced; see [`Operator::on_watermark`].
    fn on_watermark(&mut self, _watermark: u64, _out: &mut Collector) -> Result<()> {
        Ok(())
    }

    /// See [`Operator::hold`].
    fn hold(&self) -> Option<u64> {
        None
    }

    /// Both inputs ended.
    fn finish(&mut self, _out: &mut Collector) -> Result<()> {
        Ok(())
    }
}

/// Creates the instances of a two-input operator and describes its output.
pub trait JoinOperatorFactory: Send + Sync {
    /// The schema of its output, given its inputs' schemas.
    fn output_schema(&self, left: &SchemaRef, right: &SchemaRef) -> Result<SchemaRef>;

    /// Creates this worker's instance.
    fn create(
        &self,
        ctx: &WorkerContext,
        left: &SchemaRef,
        right: &SchemaRef,
    ) -> Result<Box<dyn JoinOperator>>;
}

/// A stream of the engine's dataflow: Arrow batches, each tagged with the worker it is routed
/// to, at dataflow [`Time`](crate::Time).
pub type DataStream<'s> =
    timely::dataflow::Stream<'s, crate::time::Time, Vec<(u32, crate::batch::Batch)>>;

/// Where an operator that builds its own dataflow reports a failure found while the job runs
/// (a bad record, a failed conversion): the job stops with the first one, as it does for an
/// error returned by an [`Operator`].
#[derive(Clone)]
pub struct Failures(std::sync::Arc<dyn Fn(crate::error::Error) + Send + Sync>);

impl Failures {
    /// Failures handed to `report`.
    pub fn new(report: impl Fn(crate::error::Error) + Send + Sync + 'static) -> Self {
        Failures(std::sync::Arc::new(report))
    }

    /// Reports `error`; the job stops.
    pub fn fail(&self, error: crate::error::Error) {
        (self.0)(error)
    }
}

impl std::fmt::Debug for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Failures")
    }
}

/// An operator that builds its own piece of timely dataflow: for computations the
/// batch-at-a-time contract cannot express, such as incremental (differential dataflow)
/// operators with iteration or arrangements. It reads one input or two, and partitions its
/// inputs itself.
pub trait DataflowOperator: Send + Sync {
    /// How many inputs it reads: 1 or 2.
    fn inputs(&self) -> usize {
        1
    }

    /// The schema of its output, given those of its inputs (as many as [`Self::inputs`]).
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef>;

    /// Builds this worker's part of the dataflow, from its input streams to its output
    /// stream. Output batches carry the tag 0. What goes wrong while the job runs goes to
    /// `failures`.
    fn build<'s>(
        &self,
        ctx: &WorkerContext,
        inputs: Vec<DataStream<'s>>,
        schemas: &[SchemaRef],
        failures: Failures,
    ) -> Result<DataStream<'s>>;
}
