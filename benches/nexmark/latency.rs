//! End-to-end latency of Nexmark q5: bids replayed at a fixed rate, each q5 result timed
//! from the moment the watermark could first close its window to the moment it reaches the
//! sink.
//!
//! A window `[s, e)` can close once every worker's source has read a bid at or after `e`
//! (q5 allows no delay). The source logs, per worker, when it read each batch and the latest
//! event time in it; the sink logs when each result row arrives. A result's latency is its
//! arrival less the moment the last worker read its first batch reaching `e` (or, for a
//! worker that never does, its last batch): the time Streamrun adds beyond the window's own
//! wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use streamrun::engine::{
    Descriptor, Result, Sink, SinkWriter, Source, SourceCollector, SourceReader, WorkerContext,
};

/// (worker, latest event time of a batch, when it was read).
type ReadLog = Arc<Mutex<Vec<(usize, i64, Instant)>>>;

/// Replays batches at `per_second` rows per second over all workers: worker i reads batches
/// i, i + W, … at its share of the rate.
pub struct Paced {
    schema: SchemaRef,
    batches: Arc<Vec<RecordBatch>>,
    per_second: f64,
    start: Arc<OnceLock<Instant>>,
    log: ReadLog,
}

impl Paced {
    pub fn new(schema: SchemaRef, batches: Arc<Vec<RecordBatch>>, per_second: f64) -> Self {
        Paced {
            schema,
            batches,
            per_second,
            start: Arc::new(OnceLock::new()),
            log: Arc::default(),
        }
    }
}

fn latest_time(batch: &RecordBatch) -> i64 {
    let index = batch.schema().index_of("date_time").expect("date_time");
    let times = cast(batch.column(index), &DataType::Int64).expect("cast");
    times
        .as_primitive::<Int64Type>()
        .values()
        .iter()
        .copied()
        .max()
        .unwrap_or(i64::MIN)
}

impl Source for Paced {
    fn schema(&self) -> Result<SchemaRef> {
        Ok(Arc::clone(&self.schema))
    }

    fn open(&self, ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
        Ok(Box::new(PacedReader {
            batches: Arc::clone(&self.batches),
            next: ctx.index,
            step: ctx.workers,
            worker: ctx.index,
            per_second: self.per_second / ctx.workers as f64,
            rows: 0,
            start: Arc::clone(&self.start),
            log: Arc::clone(&self.log),
        }))
    }
}

struct PacedReader {
    batches: Arc<Vec<RecordBatch>>,
    next: usize,
    step: usize,
    worker: usize,
    per_second: f64,
    rows: u64,
    start: Arc<OnceLock<Instant>>,
    log: ReadLog,
}

impl SourceReader for PacedReader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        let Some(batch) = self.batches.get(self.next) else {
            return Ok(false);
        };
        let start = *self.start.get_or_init(Instant::now);
        let due = start + Duration::from_secs_f64(self.rows as f64 / self.per_second);
        if Instant::now() < due {
            // Not yet: an empty read, as an unbounded source with no data makes.
            return Ok(true);
        }
        out.emit(batch.clone(), batch.get_array_memory_size() as u64);
        if let Ok(mut log) = self.log.lock() {
            log.push((self.worker, latest_time(batch), Instant::now()));
        }
        self.rows += batch.num_rows() as u64;
        self.next += self.step;
        Ok(self.next < self.batches.len())
    }
}

/// A sink logging when the rows of each window end arrive.
#[derive(Clone, Default)]
pub struct Arrivals {
    log: Arc<Mutex<Vec<(i64, Instant)>>>,
    rows: Arc<AtomicU64>,
}

impl Sink for Arrivals {
    fn open(&self, _: &WorkerContext, _: &SchemaRef) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(self.clone()))
    }
}

impl SinkWriter for Arrivals {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let now = Instant::now();
        let index = batch.schema().index_of("window_end").expect("window_end");
        let ends = cast(batch.column(index), &DataType::Int64).expect("cast");
        let mut ends: Vec<i64> = ends.as_primitive::<Int64Type>().values().to_vec();
        ends.dedup();
        if let Ok(mut log) = self.log.lock() {
            log.extend(ends.into_iter().map(|e| (e, now)));
        }
        self.rows
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Latency percentiles of one paced run.
pub struct Latency {
    pub samples: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Runs q5 (built by `query` over the paced bids) on `workers` workers at `per_second` bids
/// per second, and measures each result's latency.
pub fn measure(
    schema: SchemaRef,
    batches: &Arc<Vec<RecordBatch>>,
    per_second: f64,
    workers: usize,
    query: impl FnOnce(
        &streamrun::prelude::Job,
        (Descriptor, Arc<dyn Source>),
    ) -> streamrun::prelude::Stream,
) -> Latency {
    let source = Paced::new(schema, Arc::clone(batches), per_second);
    let reads = Arc::clone(&source.log);
    let arrivals = Arrivals::default();
    let job = streamrun::prelude::Job::new("nexmark-q5-latency");
    query(
        &job,
        (
            Descriptor::new("paced", serde_json::Value::Null),
            Arc::new(source),
        ),
    )
    .sink((
        Descriptor::new("arrivals", serde_json::Value::Null),
        Arc::new(arrivals.clone()) as Arc<dyn Sink>,
    ));
    streamrun::execute_with(&job, &streamrun::ExecOptions::new(workers)).expect("q5");
    let reads = reads.lock().expect("reads").clone();
    let arrivals = arrivals.log.lock().expect("arrivals").clone();
    let mut samples: Vec<Duration> = arrivals
        .iter()
        .map(|&(end, arrived)| {
            let ready = (0..workers)
                .filter_map(|w| {
                    let mine = reads.iter().filter(|r| r.0 == w);
                    mine.clone()
                        .find(|r| r.1 >= end)
                        .or_else(|| mine.clone().next_back())
                        .map(|r| r.2)
                })
                .max()
                .unwrap_or(arrived);
            arrived.saturating_duration_since(ready)
        })
        .collect();
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Latency {
        samples: samples.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: samples.last().copied().unwrap_or_default(),
    }
}
