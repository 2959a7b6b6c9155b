//! A test source whose partitions follow scripts: emit a batch, or stay quiet (reads that
//! find nothing, as an unbounded source with no data does) for a while or until a condition
//! on the job's output holds. It lets a test put a job in a given state (a window fired, a
//! partition idle) before the next records arrive, whatever the thread timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use streamrun::engine::{Descriptor, Result, Source, SourceCollector, SourceReader, WorkerContext};

/// How long a quiet step waits for its condition before it gives up (and the test fails).
const PATIENCE: Duration = Duration::from_secs(20);

/// One step of a partition's script.
#[derive(Clone)]
pub enum Step {
    /// Emit this batch.
    Emit(RecordBatch),
    /// Read nothing for this long.
    Quiet(Duration),
    /// Read nothing until this holds.
    QuietUntil(Arc<dyn Fn() -> bool + Send + Sync>),
}

/// The source: worker `i` plays `scripts[i]` (nothing when there is none).
#[derive(Clone)]
pub struct Scripted {
    schema: SchemaRef,
    scripts: Arc<Vec<Vec<Step>>>,
    gave_up: Arc<AtomicBool>,
}

impl Scripted {
    pub fn new(schema: SchemaRef, scripts: Vec<Vec<Step>>) -> Self {
        Scripted {
            schema,
            scripts: Arc::new(scripts),
            gave_up: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether some `QuietUntil` condition never came true.
    pub fn gave_up(&self) -> bool {
        self.gave_up.load(Ordering::SeqCst)
    }

    pub fn into_source(self) -> (Descriptor, Arc<dyn Source>) {
        (
            Descriptor::new("scripted", serde_json::json!({})),
            Arc::new(self),
        )
    }
}

impl Source for Scripted {
    fn schema(&self) -> Result<SchemaRef> {
        Ok(Arc::clone(&self.schema))
    }

    fn open(&self, ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
        Ok(Box::new(ScriptReader {
            steps: self.scripts.get(ctx.index).cloned().unwrap_or_default(),
            next: 0,
            since: None,
            gave_up: Arc::clone(&self.gave_up),
        }))
    }
}

struct ScriptReader {
    steps: Vec<Step>,
    next: usize,
    /// When the current quiet step began.
    since: Option<Instant>,
    gave_up: Arc<AtomicBool>,
}

impl SourceReader for ScriptReader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        let Some(step) = self.steps.get(self.next) else {
            return Ok(false);
        };
        let since = *self.since.get_or_insert_with(Instant::now);
        let done = match step {
            Step::Emit(batch) => {
                out.emit(batch.clone(), batch.get_array_memory_size() as u64);
                true
            }
            Step::Quiet(d) => since.elapsed() >= *d,
            Step::QuietUntil(condition) => {
                let timed_out = since.elapsed() >= PATIENCE;
                if timed_out {
                    self.gave_up.store(true, Ordering::SeqCst);
                }
                condition() || timed_out
            }
        };
        if done {
            self.next += 1;
            self.since = None;
        }
        Ok(self.next < self.steps.len())
    }
}
