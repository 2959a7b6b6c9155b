//! Bounded memory: a fast source in front of a slow operator never runs more than
//! `MAX_EPOCHS_IN_FLIGHT` epochs ahead, so the batches queued between them stay bounded
//! however much data flows; and a source worker with nothing to read, which waits for the
//! others to finish (as the workers of one crawl do), does not stop them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use streamrun_engine::*;

#[path = "../../tests/support/processes.rs"]
mod processes;
use processes::Processes;

const BATCHES_PER_WORKER: i64 = 800;

#[derive(Default)]
struct Counters {
    produced: AtomicI64,
    consumed: AtomicI64,
    max_in_flight: AtomicI64,
    rows_out: AtomicU64,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

/// Emits one 1,000-row batch per read, as fast as it is allowed to.
struct Fast(Arc<Counters>);
struct FastReader(Arc<Counters>, i64);

impl Source for Fast {
    fn schema(&self) -> Result<SchemaRef> {
        Ok(schema())
    }
    fn open(&self, _ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
        Ok(Box::new(FastReader(Arc::clone(&self.0), 0)))
    }
}

impl SourceReader for FastReader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        let batch = RecordBatch::try_new(
            schema(),
            vec![Arc::new(Int64Array::from(vec![self.1; 1000]))],
        )
        .map_err(|e| Error::arrow("fast source", e))?;
        out.emit(batch, 8000);
        self.1 += 1;
        let produced = self.0.produced.fetch_add(1, Ordering::SeqCst) + 1;
        let in_flight = produced - self.0.consumed.load(Ordering::SeqCst);
        self.0.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
        Ok(self.1 < BATCHES_PER_WORKER)
    }
}

/// Takes 100 µs per batch.
struct Slow(Arc<Counters>);

impl OperatorFactory for Slow {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(Arc::clone(input))
    }
    fn create(&self, _ctx: &WorkerContext, _input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Slow(Arc::clone(&self.0))))
    }
}

impl Operator for Slow {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        std::thread::sleep(Duration::from_micros(100));
        self.0.consumed.fetch_add(1, Ordering::SeqCst);
        out.emit(batch);
        Ok(())
    }
}

struct Count(Arc<Counters>);

impl Sink for Count {
    fn open(&self, _ctx: &WorkerContext, _schema: &SchemaRef) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(Count(Arc::clone(&self.0))))
    }
}

impl SinkWriter for Count {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.0
            .rows_out
            .fetch_add(batch.num_rows() as u64, Ordering::SeqCst);
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

#[test]
fn a_fast_source_stays_within_its_epoch_budget_ahead_of_a_slow_operator() {
    let workers = 2;
    let counters = Arc::new(Counters::default());
    let mut graph = JobGraph::new("pacing");
    let source = graph.add_source(
        "fast",
        SourceDecl {
            descriptor: Descriptor::new("fast", serde_json::Value::Null),
            source: Arc::new(Fast(Arc::clone(&counters))),
            on_bad_record: BadRecordPolicy::Fail,
            dead_letters: None,
            event_time: None,
        },
    );
    // The slow operator runs on worker 0 only, behind a gather edge: worker 1's source,
    // with nothing else to do, would fill that queue as fast as it can read.
    let slow = graph.add_operator(
        source,
        "slow",
        OperatorDecl {
            descriptor: Descriptor::new("slow", serde_json::Value::Null),
            op: Arc::new(Slow(Arc::clone(&counters))),
            combiner: None,
            parallelism: Parallelism::Single,
        },
    );
    graph.add_sink(
        slow,
        "count",
        Descriptor::new("count", serde_json::Value::Null),
        Arc::new(Count(Arc::clone(&counters))),
    );
    execute(&graph, &ExecOptions::new(workers)).expect("job");

    let total = BATCHES_PER_WORKER * workers as i64;
    assert_eq!(
        counters.rows_out.load(Ordering::SeqCst),
        total as u64 * 1000,
        "no row lost"
    );
    // Each source worker reads at most READS_PER_ACTIVATION batches per epoch and runs at
    // most MAX_EPOCHS_IN_FLIGHT (+1, the epoch being read) epochs ahead.
    let bound = workers as i64 * (MAX_EPOCHS_IN_FLIGHT as i64 + 1) * READS_PER_ACTIVATION as i64;
    let seen = counters.max_in_flight.load(Ordering::SeqCst);
    assert!(
        seen <= bound,
        "{seen} batches in flight, bound {bound} (of {total} in all)"
    );
    assert!(
        total >= 10 * bound,
        "the test must move at least ten times the bound through"
    );
}

const BUSY_BATCHES: i64 = 10_000;

/// Where the busy reader says it is done: in this process, or in a file that readers in other
/// processes see.
#[derive(Clone)]
enum Done {
    Flag(Arc<AtomicBool>),
    File(PathBuf),
}

impl Done {
    fn set(&self) -> Result<()> {
        match self {
            Done::Flag(flag) => {
                flag.store(true, Ordering::SeqCst);
                Ok(())
            }
            Done::File(path) => std::fs::write(path, b"done")
                .map_err(|e| Error::io(format!("writing {}", path.display()), e)),
        }
    }

    fn is_set(&self) -> bool {
        match self {
            Done::Flag(flag) => flag.load(Ordering::SeqCst),
            Done::File(path) => path.exists(),
        }
    }
}

/// Worker 0 (or the busy source) reads `BUSY_BATCHES` batches of 10 rows; the others (or the
/// idle source) read nothing and stay open until it is done.
struct Uneven {
    /// The workers that read: the others are idle.
    busy: fn(usize) -> bool,
    done: Done,
}

struct UnevenReader {
    busy: bool,
    done: Done,
    next: i64,
}

impl Source for Uneven {
    fn schema(&self) -> Result<SchemaRef> {
        Ok(schema())
    }
    fn open(&self, ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
        Ok(Box::new(UnevenReader {
            busy: (self.busy)(ctx.index),
            done: self.done.clone(),
            next: 0,
        }))
    }
}

impl SourceReader for UnevenReader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        if !self.busy {
            return Ok(!self.done.is_set());
        }
        let batch = RecordBatch::try_new(
            schema(),
            vec![Arc::new(Int64Array::from(vec![self.next; 10]))],
        )
        .map_err(|e| Error::arrow("uneven source", e))?;
        out.emit(batch, 80);
        self.next += 1;
        let more = self.next < BUSY_BATCHES;
        if !more {
            self.done.set()?;
        }
        Ok(more)
    }
}

/// Adds an `Uneven` source named `name` and a sink counting its rows into `counters`.
fn uneven(
    graph: &mut JobGraph,
    name: &str,
    busy: fn(usize) -> bool,
    done: &Done,
    counters: &Arc<Counters>,
) {
    let source = graph.add_source(
        name,
        SourceDecl {
            descriptor: Descriptor::new(name, serde_json::Value::Null),
            source: Arc::new(Uneven {
                busy,
                done: done.clone(),
            }),
            on_bad_record: BadRecordPolicy::Fail,
            dead_letters: None,
            event_time: None,
        },
    );
    graph.add_sink(
        source,
        &format!("count {name}"),
        Descriptor::new("count", serde_json::Value::Null),
        Arc::new(Count(Arc::clone(counters))),
    );
}

/// Runs the job on another thread and fails, rather than hangs, if it takes a minute.
fn run_within_a_minute(graph: JobGraph, workers: usize) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(execute(&graph, &ExecOptions::new(workers)).map(|_| ()));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(result) => result.expect("job"),
        Err(_) => panic!("the job did not end within a minute: its sources wait on each other"),
    }
}

#[test]
fn an_idle_source_worker_waiting_for_the_others_does_not_stop_them() {
    let counters = Arc::new(Counters::default());
    let done = Done::Flag(Arc::new(AtomicBool::new(false)));
    let mut graph = JobGraph::new("uneven workers");
    uneven(&mut graph, "uneven", |worker| worker == 0, &done, &counters);
    run_within_a_minute(graph, 2);
    assert_eq!(
        counters.rows_out.load(Ordering::SeqCst),
        BUSY_BATCHES as u64 * 10
    );
}

#[test]
fn an_idle_source_waiting_for_another_does_not_stop_it() {
    let counters = Arc::new(Counters::default());
    let done = Done::Flag(Arc::new(AtomicBool::new(false)));
    let mut graph = JobGraph::new("uneven sources");
    for (name, busy) in [
        ("busy", (|_| true) as fn(usize) -> bool),
        ("idle", |_| false),
    ] {
        uneven(&mut graph, name, busy, &done, &counters);
    }
    run_within_a_minute(graph, 1);
    assert_eq!(
        counters.rows_out.load(Ordering::SeqCst),
        BUSY_BATCHES as u64 * 10
    );
}

/// Set in the processes the test below starts: the folder they share.
const PROCESS_DIR_ENV: &str = "STREAMRUN_PACING_TEST_DIR";

/// One process of the job below: counts its workers' rows into a file of the folder.
fn run_as_a_process(dir: &Path) {
    let counters = Arc::new(Counters::default());
    let mut graph = JobGraph::new("uneven processes");
    let done = Done::File(dir.join("done"));
    uneven(&mut graph, "uneven", |w| w == 0, &done, &counters);
    let options = ExecOptions::from_env(2).expect("placed by the variables");
    let process = options.cluster.as_ref().expect("a cluster").process;
    execute(&graph, &options).expect("job");
    let rows = counters.rows_out.load(Ordering::SeqCst).to_string();
    std::fs::write(dir.join(format!("rows-{process}")), rows).expect("write the count");
}

/// Two processes of two workers: worker 0 of the first reads, and the three others read
/// nothing until it is done. The second process's workers, whose clock never moves, move
/// past the first's once their epoch holds the job's frontier.
#[test]
fn an_idle_process_waiting_for_another_does_not_stop_it() {
    if let Some(dir) = std::env::var_os(PROCESS_DIR_ENV) {
        run_as_a_process(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let listeners: Vec<_> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let peers = listeners
        .iter()
        .map(|l| format!("127.0.0.1:{}", l.local_addr().expect("address").port()))
        .collect::<Vec<_>>()
        .join(",");
    drop(listeners);
    let exe = std::env::current_exe().expect("this test's binary");
    let mut processes = Processes(Vec::new());
    for process in 0..2 {
        processes.0.push(
            Command::new(&exe)
                .args([
                    "--exact",
                    "an_idle_process_waiting_for_another_does_not_stop_it",
                    "--test-threads",
                    "1",
                ])
                .env(PROCESS_DIR_ENV, dir.path())
                .env(Cluster::PROCESS_ENV, process.to_string())
                .env(Cluster::PEERS_ENV, &peers)
                .env(Cluster::WORKERS_ENV, "2")
                .stdout(Stdio::null())
                .spawn()
                .expect("start a process"),
        );
    }
    let started = std::time::Instant::now();
    for child in &mut processes.0 {
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the job's processes did not end within 90 s: they wait on each other"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "a process failed: {status}");
    }
    let rows: u64 = (0..2)
        .map(|p| {
            std::fs::read_to_string(dir.path().join(format!("rows-{p}")))
                .expect("a process's count")
                .parse::<u64>()
                .expect("a number")
        })
        .sum();
    assert_eq!(rows, BUSY_BATCHES as u64 * 10);
}
