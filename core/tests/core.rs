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

/// The leaves of a binary tree `depth` deep, counted by tasks that each submit their two
/// children and wait for them (nested tasks).
#[remote]
fn tree_leaves(depth: u32) -> Result<u64, String> {
    if depth == 0 {
        return Ok(1);
    }
    let rt = Runtime::current().map_err(|e| e.to_string())?;
    let children = [
        tree_leaves::remote(&rt, depth - 1).map_err(|e| e.to_string())?,
        tree_leaves::remote(&rt, depth - 1).map_err(|e| e.to_string())?,
    ];
    let counts = rt.get_all(&children).map_err(|e| e.to_string())?;
    Ok(counts.iter().sum())
}

/// The sum of the squares of `from..from + n`, each squared by a task of its own.
#[remote]
fn sum_of_squares(from: i64, n: i64) -> Result<i64, String> {
    let rt = Runtime::current().map_err(|e| e.to_string())?;
    let squares: Vec<_> = (from..from + n)
        .map(|x| calculate_square::remote(&rt, x))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    Ok(rt
        .get_all(&squares)
        .map_err(|e| e.to_string())?
        .iter()
        .sum())
}

/// Puts `n` bytes from inside a task and has a child task sum them, by reference.
#[remote]
fn put_and_pass(n: usize) -> Result<u64, String> {
    let rt = Runtime::current().map_err(|e| e.to_string())?;
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let stored = rt.put(&data).map_err(|e| e.to_string())?;
    let sum = checksum::remote(&rt, stored).map_err(|e| e.to_string())?;
    rt.get(&sum).map_err(|e| e.to_string())
}

/// Calls a counter actor it is handed `calls` times, then reads its value.
#[remote]
fn bump(counter: CounterHandle, calls: i64) -> Result<i64, String> {
    let rt = Runtime::current().map_err(|e| e.to_string())?;
    let refs: Vec<_> = (0..calls)
        .map(|_| counter.increment(1))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let values = rt.get_all(&refs).map_err(|e| e.to_string())?;
    Ok(values.into_iter().max().unwrap_or(0))
}

/// What a task gets when it asks for what the cluster does not have.
#[remote]
fn ask_for_a_gpu() -> Result<String, String> {
    let rt = Runtime::current().map_err(|e| e.to_string())?;
    let r = calculate_square::with(TaskOptions::new().num_gpus(1.0))
        .remote(&rt, 3)
        .map_err(|e| e.to_string())?;
    match rt.get(&r) {
        Ok(v) => Err(format!("a GPU task ran without a GPU and gave {v}")),
        Err(e) => Ok(e.to_string()),
    }
}

/// An actor that calls other actors: the callers of "n:n actor calls".
pub struct Caller {
    targets: Vec<CounterHandle>,
}

#[actor]
impl Caller {
    /// Calls `targets`.
    pub fn new(targets: Vec<CounterHandle>) -> Caller {
        Caller { targets }
    }

    /// Calls every target `rounds` times without waiting, then waits for all; returns the
    /// calls made.
    pub fn run(&mut self, rounds: i64) -> Result<i64, String> {
        let rt = Runtime::current().map_err(|e| e.to_string())?;
        let mut refs = Vec::new();
        for _ in 0..rounds {
            for target in &self.targets {
                refs.push(target.increment(1).map_err(|e| e.to_string())?);
            }
        }
        rt.get_all(&refs).map_err(|e| e.to_string())?;
        Ok(refs.len() as i64)
    }
}

#[test]
fn tasks_and_actors_submit_work_of_their_own() {
    let rt = runtime("tasks_and_actors_submit_work_of_their_own", 2);

    // A tree of tasks that wait for their children: more waiting tasks (15 in all, 7 at
    // once) than the 2 workers, which lend their CPU while they wait.
    let leaves = tree_leaves::remote(&rt, 3).expect("submit");
    assert_eq!(rt.get(&leaves).expect("tree"), 1 << 3);
    let leaves = tree_leaves::remote(&rt, 4).expect("submit");
    assert_eq!(rt.get(&leaves).expect("tree"), 1 << 4);

    // 30 tasks sent ahead to the workers, each waiting for 40 children of its own: the
    // tasks queued behind a waiting one are taken back and run elsewhere, once each.
    let sums: Vec<_> = (0..30i64)
        .map(|k| sum_of_squares::remote(&rt, k * 40, 40).expect("submit"))
        .collect();
    let expected: Vec<i64> = (0..30i64)
        .map(|k| (k * 40..k * 40 + 40).map(|x| x * x).sum())
        .collect();
    assert_eq!(rt.get_all(&sums).expect("sums"), expected);

    // A large value put inside a task, passed by reference to its child.
    let n = 300_000;
    let expected: u64 = (0..n).map(|i| (i % 251) as u64).sum();
    let sum = put_and_pass::remote(&rt, n).expect("submit");
    assert_eq!(rt.get(&sum).expect("nested put"), expected);

    // An actor handle handed to tasks: 2 tasks call it 100 times each.
    let counter = Counter::remote(&rt, 0).expect("actor");
    let bumps: Vec<_> = (0..2)
        .map(|_| bump::remote(&rt, counter.clone(), 100).expect("submit"))
        .collect();
    let highest = rt.get_all(&bumps).expect("bump");
    assert_eq!(highest.iter().max(), Some(&200));
    assert_eq!(rt.get(&counter.value().expect("call")).expect("get"), 200);

    // Actors calling actors (n:n): 2 callers, each calling 2 counters 50 times.
    let targets: Vec<CounterHandle> = (0..2)
        .map(|_| Counter::remote(&rt, 0).expect("actor"))
        .collect();
    let callers: Vec<CallerHandle> = (0..2)
        .map(|_| Caller::remote(&rt, targets.clone()).expect("actor"))
        .collect();
    let runs: Vec<_> = callers.iter().map(|c| c.run(50).expect("call")).collect();
    assert_eq!(rt.get_all(&runs).expect("run"), vec![100, 100]);
    for target in &targets {
        assert_eq!(rt.get(&target.value().expect("call")).expect("get"), 100);
    }

    // A request no node can meet, made inside a task: its error reaches the task.
    let refused = ask_for_a_gpu::remote(&rt).expect("submit");
    let message = rt.get(&refused).expect("task");
    assert!(message.contains("GPU"), "{message}");
    rt.shutdown();
}

#[test]
fn a_running_task_is_cancelled_by_force() {
    let rt = runtime("a_running_task_is_cancelled_by_force", 1);
    let long = sleep_ms::remote(&rt, 120_000).expect("submit");
    let queued = calculate_square::remote(&rt, 7).expect("submit");
    // It runs once its worker took it: without force, it goes on.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!rt.cancel(&long).expect("cancel"));
    let started = std::time::Instant::now();
    assert!(rt.cancel_force(&long).expect("cancel"));
    assert!(matches!(rt.get(&long), Err(Error::Cancelled)));
    // The task queued behind it runs on the replacement worker, not a retry charged.
    assert_eq!(rt.get(&queued).expect("queued"), 49);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        !rt.cancel_force(&queued).expect("cancel"),
        "a finished task"
    );
    rt.shutdown();
}
