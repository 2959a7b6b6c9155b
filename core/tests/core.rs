//! The dynamic API on the embedded runtime, with real worker processes (this test binary
//! started again, running the same test, whose `Runtime::init` makes it a worker).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use streamrun_core::{ActorOptions, Error, Runtime, TaskOptions, actor, remote};

fn runtime(test: &str, workers: usize) -> Runtime {
    Runtime::builder()
        .workers(workers)
        .worker_args(&["--exact", test, "--nocapture", "--test-threads=1"])
        .init()
        .expect("runtime")
}

#[remote]
fn calculate_square(x: i64) -> i64 {
    x * x
}

#[remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[remote(num_returns = 2)]
fn split(n: i64) -> (i64, String) {
    (n / 2, format!("half of {n}"))
}

#[remote]
fn checked_div(a: i64, b: i64) -> Result<i64, String> {
    if b == 0 {
        Err(format!("cannot divide {a} by zero"))
    } else {
        Ok(a / b)
    }
}

#[remote]
fn explode(message: String) -> i64 {
    panic!("{message}")
}

#[remote]
fn checksum(data: Vec<u8>) -> u64 {
    data.iter().map(|b| u64::from(*b)).sum()
}

#[remote]
fn big(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[remote]
fn double_column(batch: RecordBatch) -> RecordBatch {
    let values = batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .map(|a| a.iter().map(|v| v.map(|v| v * 2)).collect::<Int64Array>())
        .unwrap_or_else(|| Int64Array::from(Vec::<i64>::new()));
    RecordBatch::try_from_iter([("doubled", Arc::new(values) as ArrayRef)])
        .unwrap_or_else(|_| RecordBatch::new_empty(batch.schema()))
}

#[remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn tasks_objects_and_wait_on_worker_processes() {
    let rt = runtime("tasks_objects_and_wait_on_worker_processes", 2);
    assert_eq!(rt.worker_pids().len(), 2);
    assert!(!rt.worker_pids().contains(&std::process::id()));

    // The seed's example, and a reference passed on.
    let square = calculate_square::remote(&rt, 5).expect("submit");
    assert_eq!(rt.get(&square).expect("get"), 25);
    let sum = add::remote(&rt, &square, 17).expect("submit");
    assert_eq!(rt.get(&sum).expect("get"), 42);

    // Objects put by the driver, small and large (through the store).
    let small = rt.put(&vec![1u64, 2, 3]).expect("put");
    assert_eq!(rt.get(&small).expect("get"), vec![1, 2, 3]);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 7) as u8).collect();
    let expected: u64 = data.iter().map(|b| u64::from(*b)).sum();
    let stored = rt.put(&data).expect("put");
    assert_eq!(
        rt.get(&checksum::remote(&rt, &stored).expect("submit"))
            .expect("get"),
        expected
    );
    // A large value given directly, and a large result.
    assert_eq!(
        rt.get(&checksum::remote(&rt, data).expect("submit"))
            .expect("get"),
        expected
    );
    let made = rt
        .get(&big::remote(&rt, 2_000_000usize).expect("submit"))
        .expect("get");
    assert_eq!(made.len(), 2_000_000);
    assert!(made.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));

    // Two results.
    let (half, text) = split::remote(&rt, 10).expect("submit");
    assert_eq!(rt.get(&half).expect("get"), 5);
    assert_eq!(rt.get(&text).expect("get"), "half of 10");

    // Errors and panics are the task's error, named.
    assert_eq!(
        rt.get(&checked_div::remote(&rt, 9, 3).expect("submit"))
            .expect("get"),
        3
    );
    let failed = rt.get(&checked_div::remote(&rt, 9, 0).expect("submit"));
    assert!(
        matches!(&failed, Err(Error::Task(m)) if m.contains("cannot divide 9 by zero")),
        "{failed:?}"
    );
    let panicked = rt.get(&explode::remote(&rt, "boom".to_string()).expect("submit"));
    assert!(
        matches!(&panicked, Err(Error::Task(m)) if m.contains("panicked: boom")),
        "{panicked:?}"
    );
    // A task given a failed result fails too, saying why.
    let downstream = rt.get(
        &add::remote(&rt, checked_div::remote(&rt, 1, 0).expect("submit"), 1).expect("submit"),
    );
    assert!(
        matches!(&downstream, Err(Error::Task(m)) if m.contains("divide")),
        "{downstream:?}"
    );

    // Record batches travel as Arrow data.
    let batch = RecordBatch::try_from_iter([(
        "v",
        Arc::new(Int64Array::from_iter_values(0..100_000)) as ArrayRef,
    )])
    .expect("batch");
    let doubled = rt
        .get_batch(&double_column::remote(&rt, batch.clone()).expect("submit"))
        .expect("get");
    let column = doubled
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("int64");
    assert!(
        column
            .iter()
            .enumerate()
            .all(|(i, v)| v == Some(2 * i as i64))
    );

    // A batch built in store memory, put without a copy, read by a task in place.
    let schema = batch.schema();
    let mut builder = rt.batch_builder(schema, 100_000 * 8).expect("builder");
    let mut values = builder.alloc(100_000 * 8).expect("alloc");
    for (i, v) in values.typed_mut::<i64>().iter_mut().enumerate() {
        *v = i as i64;
    }
    let column: ArrayRef = Arc::new(Int64Array::new(values.freeze().into(), None));
    let built = rt.put_built(builder, &[column]).expect("put built");
    assert_eq!(rt.get_batch(&built).expect("get"), batch);
    let doubled_again = rt
        .get_batch(&double_column::remote(&rt, &built).expect("submit"))
        .expect("get");
    assert_eq!(doubled_again, doubled);

    // A fan-out of 1,000 tasks gathered with wait, against a plain recomputation.
    let refs: Vec<_> = (0..1_000i64)
        .map(|i| calculate_square::remote(&rt, i).expect("submit"))
        .collect();
    let mut pending = refs.clone();
    let mut total = 0i64;
    while !pending.is_empty() {
        let (ready, rest) = rt
            .wait(&pending, 100.min(pending.len()), None)
            .expect("wait");
        total += rt.get_all(&ready).expect("get").iter().sum::<i64>();
        pending = rest;
    }
    assert_eq!(total, (0..1_000i64).map(|i| i * i).sum::<i64>());

    // Wait with a timeout returns what is ready.
    let slow = sleep_ms::remote(&rt, 2_000).expect("submit");
    let (ready, rest) = rt
        .wait(
            std::slice::from_ref(&slow),
            1,
            Some(Duration::from_millis(50)),
        )
        .expect("wait");
    assert!(ready.is_empty() && rest.len() == 1);

    // What can never run is refused at once, naming what is missing.
    let refused = calculate_square::with(TaskOptions::new().num_gpus(1.0)).remote(&rt, 3);
    assert!(
        matches!(&refused, Err(Error::Unschedulable(m)) if m.contains("GPU=1")),
        "{refused:?}"
    );

    // Cancel: a task still waiting for a worker does not run.
    let busy: Vec<_> = (0..2)
        .map(|_| sleep_ms::remote(&rt, 300).expect("submit"))
        .collect();
    let queued = calculate_square::with(TaskOptions::new().num_cpus(2.0))
        .remote(&rt, 7)
        .expect("submit");
    assert!(rt.cancel(&queued).expect("cancel"));
    assert!(matches!(rt.get(&queued), Err(Error::Cancelled)));
    assert_eq!(rt.get_all(&busy).expect("get"), vec![300, 300]);
    drop(slow);
    rt.shutdown();
}

/// A counter, as an actor.
pub struct Counter {
    value: i64,
}

#[actor]
impl Counter {
    /// Starts at `start`.
    pub fn new(start: i64) -> Counter {
        Counter { value: start }
    }

    /// Adds `by` and returns the new value.
    pub fn increment(&mut self, by: i64) -> i64 {
        self.value += by;
        self.value
    }

    /// The value.
    pub fn value(&self) -> i64 {
        self.value
    }

    /// This actor's process.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

#[test]
fn actors_keep_call_order_restart_and_die() {
    let rt = runtime("actors_keep_call_order_restart_and_die", 1);
    let counter = Counter::remote(&rt, 10).expect("actor");
    let calls: Vec<_> = (0..200)
        .map(|_| counter.increment(1).expect("call"))
        .collect();
    assert_eq!(
        rt.get_all(&calls).expect("get"),
        (11..=210).collect::<Vec<i64>>()
    );
    assert_eq!(rt.get(&counter.value().expect("call")).expect("get"), 210);
    // Its own process, not the pool's.
    let pid = rt.get(&counter.pid().expect("call")).expect("pid");
    assert!(!rt.worker_pids().is_empty());
    assert_ne!(pid, std::process::id());

    // Named, and found again by name.
    // Its start given by reference, dropped at once: the actor keeps it for restarts.
    let start = rt.put(&100i64).expect("put");
    let named = Counter::with(ActorOptions::new().name("hits").max_restarts(1))
        .remote(&rt, start)
        .expect("actor");
    rt.get(&named.increment(5).expect("call")).expect("get");
    let found = rt.get_actor::<Counter>("hits").expect("lookup");
    assert_eq!(rt.get(&found.value().expect("call")).expect("get"), 105);
    assert!(matches!(
        rt.get_actor::<Counter>("nobody"),
        Err(Error::NoSuchActor(_))
    ));

    // Its process killed: it starts again, its constructor run anew.
    let before = rt.get(&named.pid().expect("call")).expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-9", &before.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut after_restart = None;
    for _ in 0..100 {
        match rt.get(&named.value().expect("call")) {
            Ok(v) => {
                after_restart = Some(v);
                break;
            }
            // The call that met the dead process fails (no task retries); the next ones run.
            Err(Error::Task(_)) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(after_restart, Some(100), "the constructor ran again");
    assert_ne!(rt.get(&named.pid().expect("call")).expect("pid"), before);

    // Killed on purpose: dead for good, and says so.
    rt.kill(counter.handle()).expect("kill");
    let dead = counter.value().map(|r| rt.get(&r));
    assert!(
        matches!(
            &dead,
            Err(Error::ActorDead { .. }) | Ok(Err(Error::Task(_)))
        ),
        "{:?}",
        dead.map(|r| r.map_err(|e| e.to_string()))
    );
    rt.shutdown();
}

#[remote]
fn die_once(marker: String) -> String {
    if std::fs::metadata(&marker).is_err() {
        let _ = std::fs::write(&marker, b"died");
        std::process::abort();
    }
    "ran again".to_string()
}

#[test]
fn a_task_whose_worker_dies_runs_again_up_to_its_retries() {
    let rt = runtime("a_task_whose_worker_dies_runs_again_up_to_its_retries", 2);
    let dir = tempfile::tempdir().expect("dir");
    let marker = dir.path().join("first").to_string_lossy().into_owned();
    let retried = die_once::remote(&rt, marker).expect("submit");
    assert_eq!(rt.get(&retried).expect("get"), "ran again");
    let marker = dir.path().join("second").to_string_lossy().into_owned();
    let no_retry = die_once::with(TaskOptions::new().max_retries(0))
        .remote(&rt, marker)
        .expect("submit");
    let failed = rt.get(&no_retry);
    assert!(
        matches!(&failed, Err(Error::Task(m)) if m.contains("died")),
        "{failed:?}"
    );
    // The pool is whole again.
    assert_eq!(
        rt.get(&calculate_square::remote(&rt, 9).expect("submit"))
            .expect("get"),
        81
    );
    rt.shutdown();
}
