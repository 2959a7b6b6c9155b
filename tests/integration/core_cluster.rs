//! The dynamic API on a cluster of real processes: a head and two agents on loopback, whose
//! agents start the worker processes (this test binary again, running the same test).

use std::time::Duration;

use streamrun_core::{ActorOptions, Error, Runtime, TaskOptions, actor, remote};

use crate::local_cluster::LocalCluster;

fn runtime(cluster: &LocalCluster, test: &str) -> Runtime {
    let token = std::fs::read_to_string(cluster.home.path().join("head/token")).expect("token");
    Runtime::builder()
        .address(&cluster.rest)
        .token(token.trim())
        .worker_args(&["--exact", test, "--nocapture", "--test-threads=1"])
        .init()
        .expect("runtime on the cluster")
}

/// The square of `x`, and the node that computed it.
#[remote(num_returns = 2)]
fn square_where(x: i64) -> (i64, String) {
    (x * x, std::env::var("STREAMRUN_NODE").unwrap_or_default())
}

#[remote]
fn sum_bytes(data: Vec<u8>) -> u64 {
    data.iter().map(|b| u64::from(*b)).sum()
}

#[remote]
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 253) as u8).collect()
}

/// A large result, and where its node serves its store.
#[remote(num_returns = 2)]
fn blob_here(n: usize) -> (Vec<u8>, String) {
    (
        vec![7u8; n],
        std::env::var("STREAMRUN_STORE_ADDRESS").unwrap_or_default(),
    )
}

/// Where the task that reads `data` runs (its node's store).
#[remote]
fn read_where(data: Vec<u8>) -> String {
    assert!(data.iter().all(|b| *b == 7));
    std::env::var("STREAMRUN_STORE_ADDRESS").unwrap_or_default()
}

/// Waits, then says which node it ran on.
#[remote]
fn busy_where(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    std::env::var("STREAMRUN_NODE").unwrap_or_default()
}

/// A large result, and the pid of the agent whose node keeps it (the worker's parent).
#[remote(num_returns = 2)]
fn pattern_where(n: usize) -> (Vec<u8>, u32) {
    (
        (0..n).map(|i| (i % 253) as u8).collect(),
        std::os::unix::process::parent_id(),
    )
}

/// `data` reversed (a large result), and the pid of the agent whose node keeps it.
#[remote(num_returns = 2)]
fn reversed_where(data: Vec<u8>) -> (Vec<u8>, u32) {
    (
        data.into_iter().rev().collect(),
        std::os::unix::process::parent_id(),
    )
}

#[remote]
fn die_once_here(marker: String) -> String {
    if std::fs::metadata(&marker).is_err() {
        let _ = std::fs::write(&marker, b"died");
        std::process::abort();
    }
    std::env::var("STREAMRUN_NODE").unwrap_or_default()
}

/// A tally, as an actor.
pub struct Tally {
    count: i64,
}

#[actor]
impl Tally {
    /// Starts at `start`.
    pub fn new(start: i64) -> Tally {
        Tally { count: start }
    }

    /// Adds one, returning the count.
    pub fn bump(&mut self) -> i64 {
        self.count += 1;
        self.count
    }

    /// Its process.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// Puts `n` bytes from inside a task, has a child on each node sum them (SPREAD), and
/// checks that both agree (nested tasks on a cluster).
#[remote]
fn nested_sums(n: usize) -> Result<u64, String> {
    let rt = Runtime::current().map_err(|e| e.to_string())?;
    let data: Vec<u8> = (0..n).map(|i| (i % 253) as u8).collect();
    let stored = rt.put(&data).map_err(|e| e.to_string())?;
    let sums: Vec<_> = (0..2)
        .map(|_| sum_bytes::with(TaskOptions::new().spread()).remote(&rt, &stored))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let sums = rt.get_all(&sums).map_err(|e| e.to_string())?;
    if sums[0] != sums[1] {
        return Err(format!("the children disagree: {sums:?}"));
    }
    Ok(sums[0])
}

/// Makes a large object on the other node than its own (SPREAD, tried until it lands
/// there), writes that node's agent pid into `dir/agent`, waits for `dir/go`, then reads
/// the object: by then its node is gone.
#[remote]
fn read_after_loss(dir: String, n: usize) -> Result<usize, String> {
    let rt = Runtime::current().map_err(|e| e.to_string())?;
    let mine = std::os::unix::process::parent_id();
    for _ in 0..20 {
        let (data, agent) = pattern_where::with(TaskOptions::new().spread())
            .remote(&rt, n)
            .map_err(|e| e.to_string())?;
        let agent = rt.get(&agent).map_err(|e| e.to_string())?;
        if agent == mine {
            continue;
        }
        rt.wait(std::slice::from_ref(&data), 1, None)
            .map_err(|e| e.to_string())?;
        std::fs::write(format!("{dir}/agent"), agent.to_string()).map_err(|e| e.to_string())?;
        let go = std::path::Path::new(&dir).join("go");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !go.exists() {
            if std::time::Instant::now() > deadline {
                return Err("no go".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let data = rt.get(&data).map_err(|e| e.to_string())?;
        if data.iter().enumerate().any(|(i, b)| *b != (i % 253) as u8) {
            return Err("the rebuilt object differs".into());
        }
        return Ok(data.len());
    }
    Err("the child never ran on the other node".into())
}

#[remote]
fn sleep_long(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn tasks_objects_and_actors_run_on_the_agents_workers() {
    // In a worker process, this is where it serves.
    streamrun_core::serve_if_worker();
    let cluster = LocalCluster::start(&[3, 3]);
    let rt = runtime(
        &cluster,
        "core_cluster::tasks_objects_and_actors_run_on_the_agents_workers",
    );
    assert_eq!(rt.worker_pids().len(), 6, "one worker per free CPU");

    // Tasks spread over both nodes; the results equal a plain recomputation.
    let submitted: Vec<_> = (0..400i64)
        .map(|i| square_where::remote(&rt, i).expect("submit"))
        .collect();
    let mut nodes = std::collections::BTreeSet::new();
    let mut total = 0i64;
    for (square, node) in &submitted {
        total += rt.get(square).expect("square");
        nodes.insert(rt.get(node).expect("node"));
    }
    assert_eq!(total, (0..400i64).map(|i| i * i).sum::<i64>());
    assert_eq!(nodes.len(), 2, "both agents' workers ran tasks: {nodes:?}");

    // A large object put by the driver, read by workers on both nodes over Flight.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 11) as u8).collect();
    let expected: u64 = data.iter().map(|b| u64::from(*b)).sum();
    let stored = rt.put(&data).expect("put");
    let sums: Vec<_> = (0..8)
        .map(|_| sum_bytes::remote(&rt, &stored).expect("submit"))
        .collect();
    assert!(
        rt.get_all(&sums)
            .expect("sums")
            .iter()
            .all(|s| *s == expected)
    );
    // Large results, kept by the workers' nodes and fetched from there.
    let made: Vec<_> = (0..4)
        .map(|_| pattern::remote(&rt, 1_500_000usize).expect("submit"))
        .collect();
    for result in rt.get_all(&made).expect("results") {
        assert_eq!(result.len(), 1_500_000);
        assert!(
            result
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i % 253) as u8)
        );
    }
    // One result passed on to another task, wherever it runs.
    let chained = sum_bytes::remote(&rt, &made[0]).expect("submit");
    let pattern_sum: u64 = (0..1_500_000usize).map(|i| (i % 253) as u64).sum();
    assert_eq!(rt.get(&chained).expect("chained"), pattern_sum);

    // An actor in a process of its own on the cluster, its calls in order, restarted once
    // its process is killed.
    let tally = Tally::with(ActorOptions::new().name("tally").max_restarts(1))
        .remote(&rt, 0)
        .expect("actor");
    let bumps: Vec<_> = (0..50).map(|_| tally.bump().expect("call")).collect();
    assert_eq!(
        rt.get_all(&bumps).expect("bumps"),
        (1..=50).collect::<Vec<i64>>()
    );
    let pid = rt.get(&tally.pid().expect("call")).expect("pid");
    assert!(!rt.worker_pids().is_empty());
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    let mut restarted = None;
    for _ in 0..200 {
        match rt.get(&tally.bump().expect("call")) {
            Ok(v) => {
                restarted = Some(v);
                break;
            }
            Err(Error::Task(_)) => std::thread::sleep(Duration::from_millis(25)),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        restarted,
        Some(1),
        "the constructor ran again, in a new process"
    );
    assert!(rt.get_actor::<Tally>("tally").is_ok());

    // A task whose worker dies runs again on another worker.
    let dir = tempfile::tempdir().expect("dir");
    let marker = dir.path().join("marker").to_string_lossy().into_owned();
    let survived = die_once_here::with(TaskOptions::new().max_retries(2))
        .remote(&rt, marker)
        .expect("submit");
    assert!(rt.get(&survived).expect("retried").starts_with("node-"));

    // What the cluster cannot give is refused at once.
    let refused = square_where::with(TaskOptions::new().num_gpus(1.0)).remote(&rt, 1);
    assert!(matches!(refused, Err(Error::Unschedulable(_))));

    // A task runs where its large argument is kept.
    for _ in 0..4 {
        let (blob, kept_at) = blob_here::remote(&rt, 1_000_000usize).expect("submit");
        let ran_at = read_where::remote(&rt, &blob).expect("submit");
        assert_eq!(
            rt.get(&ran_at).expect("ran"),
            rt.get(&kept_at).expect("kept")
        );
    }
    // SPREAD: two long tasks in a row go to the two nodes.
    let spread: Vec<_> = (0..2)
        .map(|_| {
            busy_where::with(TaskOptions::new().spread())
                .remote(&rt, 300u64)
                .expect("submit")
        })
        .collect();
    let places: std::collections::BTreeSet<String> =
        rt.get_all(&spread).expect("spread").into_iter().collect();
    assert_eq!(places.len(), 2, "{places:?}");

    // Tasks that submit tasks: a large value put inside a task, read by its children.
    let n = 1_200_000usize;
    let nested = nested_sums::remote(&rt, n).expect("submit");
    assert_eq!(rt.get(&nested).expect("nested"), pattern_sum_of(n));

    // A running task stopped by force: its job ends, and a new worker takes its place.
    let long = sleep_long::remote(&rt, 120_000u64).expect("submit");
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    assert!(rt.cancel_force(&long).expect("cancel"));
    assert!(matches!(rt.get(&long), Err(Error::Cancelled)));
    let after = square_where::remote(&rt, 9).expect("submit");
    assert_eq!(rt.get(&after.0).expect("square"), 81);
    assert!(started.elapsed() < Duration::from_secs(60));

    // A result lost with its node is made again by running its task once more; and one
    // made from it there too, whose task finds its argument lost in turn.
    let n = 1_500_000usize;
    let (kept, agent) = pattern_where::remote(&rt, n).expect("submit");
    let agent = rt.get(&agent).expect("agent pid");
    let (reversed, reversed_at) = reversed_where::remote(&rt, &kept).expect("submit");
    assert_eq!(
        rt.get(&reversed_at).expect("pid"),
        agent,
        "it ran where its argument is"
    );
    rt.wait(std::slice::from_ref(&reversed), 1, None)
        .expect("wait");
    std::process::Command::new("kill")
        .args(["-9", &agent.to_string()])
        .status()
        .expect("kill the agent");
    let pattern: Vec<u8> = (0..n).map(|i| (i % 253) as u8).collect();
    let again = rt
        .get(&reversed)
        .expect("rebuilt from its lineage, with its argument");
    assert_eq!(rt.objects_rebuilt(), 2, "both objects were made again");
    assert!(again.iter().rev().eq(pattern.iter()));
    let rebuilt = rt.get(&kept).expect("rebuilt from its lineage");
    assert_eq!(rt.objects_rebuilt(), 2, "the argument was made again once");
    assert_eq!(rebuilt, pattern);
    rt.shutdown();
}

fn pattern_sum_of(n: usize) -> u64 {
    (0..n).map(|i| (i % 253) as u64).sum()
}

#[test]
fn a_task_reads_an_object_lost_with_its_node() {
    streamrun_core::serve_if_worker();
    let cluster = LocalCluster::start(&[2, 2]);
    let rt = runtime(
        &cluster,
        "core_cluster::a_task_reads_an_object_lost_with_its_node",
    );
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().to_string_lossy().into_owned();
    let n = 1_500_000usize;
    let read = read_after_loss::remote(&rt, path, n).expect("submit");
    let agent_file = dir.path().join("agent");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !agent_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the task never made its object"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent = std::fs::read_to_string(&agent_file).expect("agent pid");
    std::process::Command::new("kill")
        .args(["-9", agent.trim()])
        .status()
        .expect("kill the agent");
    std::fs::write(dir.path().join("go"), b"go").expect("go");
    assert_eq!(rt.get(&read).expect("read after the loss"), n);
    assert_eq!(
        rt.objects_rebuilt(),
        1,
        "the object was made again for the task"
    );
    rt.shutdown();
}
