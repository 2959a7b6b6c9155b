//! Acknowledgements: a source's checkpoint is acknowledged only after every record read
//! before it was made durable by the sink (a sink that buffers until it is flushed), and
//! every checkpoint is acknowledged by the end; both with the sink behind an exchange and
//! fused behind the source.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use streamrun_engine::*;

const BATCHES: i64 = 300;
const ROWS: i64 = 100;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

#[derive(Default)]
struct Log {
    /// Values the sink wrote.
    written: Mutex<HashSet<i64>>,
    /// Per worker: checkpoints given and acknowledged.
    given: Mutex<Vec<u64>>,
    acknowledged: Mutex<Vec<u64>>,
    /// Acknowledgements that came before their records were written.
    early: Mutex<Vec<String>>,
    /// Checkpoints the readers still held when they were dropped.
    left: Mutex<usize>,
}

struct Numbers(Arc<Log>);

struct NumbersReader {
    log: Arc<Log>,
    worker: i64,
    next: i64,
    /// Values read since the last checkpoint, and those of checkpoints not acknowledged.
    read: Vec<i64>,
    unacked: Vec<(u64, Vec<i64>)>,
    token: u64,
}

impl Source for Numbers {
    fn schema(&self) -> Result<SchemaRef> {
        Ok(schema())
    }
    fn open(&self, ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
        Ok(Box::new(NumbersReader {
            log: Arc::clone(&self.0),
            worker: ctx.index as i64,
            next: 0,
            read: Vec::new(),
            unacked: Vec::new(),
            token: 0,
        }))
    }
}

impl SourceReader for NumbersReader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        let base = (self.worker * BATCHES + self.next) * ROWS;
        let values: Vec<i64> = (base..base + ROWS).collect();
        self.read.extend(&values);
        let batch = RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values))])
            .map_err(|e| Error::arrow("numbers", e))?;
        out.emit(batch, 0);
        self.next += 1;
        Ok(self.next < BATCHES)
    }

    fn checkpoint(&mut self) -> Option<u64> {
        if self.read.is_empty() {
            return None;
        }
        self.token += 1;
        self.unacked
            .push((self.token, std::mem::take(&mut self.read)));
        self.log.given.lock().map(|mut g| g.push(self.token)).ok();
        Some(self.token)
    }

    fn acknowledge(&mut self, token: u64) -> Result<()> {
        let written = self
            .log
            .written
            .lock()
            .map_err(|_| Error::Internal("lock".into()))?;
        for (t, values) in self.unacked.iter().filter(|(t, _)| *t <= token) {
            if let Some(missing) = values.iter().find(|v| !written.contains(v))
                && let Ok(mut early) = self.log.early.lock()
            {
                early.push(format!("checkpoint {t}: {missing} not written"));
            }
        }
        drop(written);
        self.unacked.retain(|(t, _)| *t > token);
        self.log.acknowledged.lock().map(|mut a| a.push(token)).ok();
        Ok(())
    }
}

impl Drop for NumbersReader {
    fn drop(&mut self) {
        if let Ok(mut left) = self.log.left.lock() {
            *left += self.unacked.len() + usize::from(!self.read.is_empty());
        }
    }
}

/// Takes 200 µs per batch, on one worker.
struct Slow;

impl OperatorFactory for Slow {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(Arc::clone(input))
    }
    fn create(&self, _ctx: &WorkerContext, _input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Slow))
    }
}

impl Operator for Slow {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        std::thread::sleep(Duration::from_micros(200));
        out.emit(batch);
        Ok(())
    }
}

/// A sink that buffers what it is given until it is flushed (as a database sink batching
/// rows does): only then are the values written.
struct Record(Arc<Log>);
struct RecordWriter(Arc<Log>, Vec<i64>);

impl Sink for Record {
    fn open(&self, _ctx: &WorkerContext, _schema: &SchemaRef) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(RecordWriter(Arc::clone(&self.0), Vec::new())))
    }
}

impl SinkWriter for RecordWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let values = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::Internal("not Int64".into()))?;
        self.1.extend((0..values.len()).map(|i| values.value(i)));
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        let mut written = self
            .0
            .written
            .lock()
            .map_err(|_| Error::Internal("lock".into()))?;
        written.extend(self.1.drain(..));
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        self.flush()
    }
}

#[test]
fn checkpoints_are_acknowledged_after_their_records_are_written() {
    for slow in [true, false] {
        acknowledged_after_written(slow);
    }
}

fn acknowledged_after_written(slow: bool) {
    let workers = 2;
    let log = Arc::new(Log::default());
    let mut graph = JobGraph::new("acknowledge");
    let source = graph.add_source(
        "numbers",
        SourceDecl {
            descriptor: Descriptor::new("numbers", serde_json::Value::Null),
            source: Arc::new(Numbers(Arc::clone(&log))),
            on_bad_record: BadRecordPolicy::Fail,
            dead_letters: None,
            event_time: None,
        },
    );
    let input = if slow {
        graph.add_operator(
            source,
            "slow",
            OperatorDecl {
                descriptor: Descriptor::new("slow", serde_json::Value::Null),
                op: Arc::new(Slow),
                combiner: None,
                parallelism: Parallelism::Single,
            },
        )
    } else {
        source
    };
    graph.add_sink(
        input,
        "record",
        Descriptor::new("record", serde_json::Value::Null),
        Arc::new(Record(Arc::clone(&log))),
    );
    execute(&graph, &ExecOptions::new(workers)).expect("job");

    let early = log.early.lock().expect("lock").clone();
    assert!(early.is_empty(), "acknowledged before written: {early:?}");
    let written = log.written.lock().expect("lock").len() as i64;
    assert_eq!(written, workers as i64 * BATCHES * ROWS);
    // Every checkpoint was acknowledged before the readers went, and acknowledgements may
    // cover several checkpoints at once: never more calls than checkpoints.
    assert_eq!(
        *log.left.lock().expect("lock"),
        0,
        "checkpoints never acknowledged"
    );
    let given = log.given.lock().expect("lock").len();
    let acknowledged = log.acknowledged.lock().expect("lock").len();
    assert!(given > 0 && acknowledged > 0 && acknowledged <= given);
}
