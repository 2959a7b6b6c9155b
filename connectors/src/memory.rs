//! The in-memory sink: the result as batches, for tests and programs that use it.

use std::sync::{Arc, Mutex, MutexGuard};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use serde_json::json;
use streamrun_engine::{Descriptor, Error, Result, Sink, SinkWriter, WorkerContext};

/// How many rows a [`Collect`] holds by default.
const DEFAULT_MAX_ROWS: usize = 10_000_000;

/// A sink keeping the result in memory: every worker appends its batches to one shared list.
///
/// Clones share the list: give the job a clone and read the result from the original once
/// the job has ended. A collection holds at most [`Collect::max_rows`] rows (ten million by
/// default); a job producing more fails with an error saying so. Batches accumulate over
/// the jobs that write to the same collection.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{Int64Array, RecordBatch};
/// use arrow::datatypes::{DataType, Field, Schema};
/// use streamrun_connectors::Collect;
/// use streamrun_engine::{Sink, WorkerContext};
///
/// let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
/// let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))])
///     .map_err(|e| streamrun_engine::Error::arrow("batch", e))?;
/// let collect = Collect::new();
/// let ctx = WorkerContext { job: "doc".into(), index: 0, workers: 1, local_workers: 1 };
/// let mut writer = collect.open(&ctx, &schema)?;
/// writer.write(&batch)?;
/// writer.finish()?;
/// assert_eq!(collect.rows(), 2);
/// assert_eq!(collect.batches(), vec![batch]);
/// # Ok::<(), streamrun_engine::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Collect {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    batches: Vec<RecordBatch>,
    rows: usize,
    max_rows: usize,
}

impl Default for Collect {
    fn default() -> Self {
        Self::new()
    }
}

impl Collect {
    /// An empty collection.
    pub fn new() -> Self {
        Collect {
            state: Arc::new(Mutex::new(State {
                batches: Vec::new(),
                rows: 0,
                max_rows: DEFAULT_MAX_ROWS,
            })),
        }
    }

    /// Holds at most `max_rows` rows (default ten million), for this collection and its
    /// clones.
    pub fn max_rows(self, max_rows: usize) -> Self {
        self.lock().max_rows = max_rows;
        self
    }

    /// The batches collected so far, in the order they arrived.
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.lock().batches.clone()
    }

    /// How many rows were collected so far.
    pub fn rows(&self) -> usize {
        self.lock().rows
    }

    /// The descriptor of this sink for the job's plan: kind `collect`.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new("collect", json!({ "max_rows": self.lock().max_rows }))
    }

    /// The state; a worker that panicked holding the lock left it consistent (every update
    /// is a single push), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Sink for Collect {
    fn open(&self, _ctx: &WorkerContext, _schema: &SchemaRef) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(self.clone()))
    }
}

impl SinkWriter for Collect {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let mut state = self.lock();
        let rows = state.rows + batch.num_rows();
        if rows > state.max_rows {
            return Err(Error::Plan(format!(
                "the collect sink holds at most {} rows and the job produced more; raise the \
                 limit with `Collect::new().max_rows(n)`, or write the result to files",
                state.max_rows
            )));
        }
        state.rows = rows;
        state.batches.push(batch.clone());
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A source replaying batches held in memory: worker `i` of `W` emits batches `i, i + W, …`.
///
/// For benches that must time the dataflow apart from the generation or reading of its
/// input, and for tests. The batches are shared, not copied, between workers and runs.
#[derive(Debug, Clone)]
pub struct Replay {
    schema: SchemaRef,
    batches: Arc<Vec<RecordBatch>>,
}

impl Replay {
    /// Replays `batches`, which must all have `schema`.
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        Replay {
            schema,
            batches: Arc::new(batches),
        }
    }

    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "replay",
            json!({ "batches": self.batches.len(), "rows": self.batches.iter().map(RecordBatch::num_rows).sum::<usize>() }),
        )
    }
}

impl streamrun_engine::Source for Replay {
    fn schema(&self) -> Result<SchemaRef> {
        match self.batches.iter().position(|b| b.schema() != self.schema) {
            Some(i) => Err(Error::Plan(format!(
                "replay: batch {i} has another schema than the one given"
            ))),
            None => Ok(Arc::clone(&self.schema)),
        }
    }

    fn open(&self, ctx: &WorkerContext) -> Result<Box<dyn streamrun_engine::SourceReader>> {
        Ok(Box::new(ReplayReader {
            batches: Arc::clone(&self.batches),
            next: ctx.index,
            step: ctx.workers.max(1),
        }))
    }
}

struct ReplayReader {
    batches: Arc<Vec<RecordBatch>>,
    next: usize,
    step: usize,
}

impl streamrun_engine::SourceReader for ReplayReader {
    fn read(&mut self, out: &mut streamrun_engine::SourceCollector) -> Result<bool> {
        if let Some(batch) = self.batches.get(self.next) {
            out.emit(batch.clone(), batch.get_array_memory_size() as u64);
            self.next += self.step;
        }
        Ok(self.next < self.batches.len())
    }
}
