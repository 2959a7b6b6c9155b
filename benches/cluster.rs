//! Cluster figures, with a real head and agents started as processes on loopback:
//!
//! - submit-to-running latency of a job (heartbeats every 100 ms);
//! - how long after an agent is SIGKILLed its node is reported dead (dead after 1 s);
//! - the head's resident memory with 100 simulated nodes heartbeating (gRPC clients in this
//!   process);
//! - a word count over the shipped corpus copied `STREAMRUN_BENCH_COPIES` times (default 8),
//!   run embedded on 4 workers beside the same spec submitted as 2 processes × 2 workers.
//!
//! `cargo bench --bench cluster`
#![allow(clippy::print_stdout)]

#[path = "../tests/support/local_cluster.rs"]
mod local_cluster;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use local_cluster::LocalCluster as Cluster;
use streamrun_cluster::proto::control_client::ControlClient;
use streamrun_cluster::{PROTOCOL_VERSION, proto};

const BIN: &str = env!("CARGO_BIN_EXE_stream-run");

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn submit_to_running() {
    let cluster = Cluster::start(&[2]);
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let out = cluster.cli(&["submit", "-w", "1", "--", "sleep", "0.2"]);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let job = loop {
            let job = cluster.job(&id);
            if job["started_ms"].is_u64() || job["state"] == "FAILED" {
                break job;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (submitted, started) = (job["submitted_ms"].as_u64(), job["started_ms"].as_u64());
        if let (Some(a), Some(b)) = (submitted, started) {
            latencies.push((b - a) as f64);
        }
        // Let it end, so the node's CPU is free for the next.
        while !matches!(
            cluster.job(&id)["state"].as_str(),
            Some("SUCCEEDED" | "FAILED")
        ) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "submit → running (heartbeat 100 ms): p50 {:.0} ms, max {:.0} ms over {} jobs",
        percentile(&latencies, 0.5),
        latencies.last().copied().unwrap_or(0.0),
        latencies.len()
    );
}

fn dead_detection() {
    let mut times = Vec::new();
    for _ in 0..5 {
        let mut cluster = Cluster::start(&[2]);
        // Land the kill at a random point of the heartbeat cycle.
        std::thread::sleep(Duration::from_millis(rand_delay()));
        let killed = Instant::now();
        cluster.agents[0].kill().expect("kill");
        while cluster.alive_nodes() > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        times.push(killed.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "SIGKILLed agent → node DEAD (dead after 1000 ms, heartbeat 100 ms): p50 {:.0} ms, max {:.0} ms over {} kills",
        percentile(&times, 0.5),
        times.last().copied().unwrap_or(0.0),
        times.len()
    );
}

fn rand_delay() -> u64 {
    use rand::Rng;
    rand::rng().random_range(0..100)
}

fn head_memory() {
    let cluster = Cluster::start(&[]);
    let before = rss_kib(cluster.head.id());
    let token =
        streamrun_cluster::token::read(&cluster.home.path().join("head/token")).expect("token");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let grpc = cluster.grpc.clone();
    rt.block_on(async move {
        let mut nodes = Vec::new();
        for i in 0..100u32 {
            let mut client = ControlClient::connect(format!("http://{grpc}"))
                .await
                .expect("connect");
            let mut request = tonic::Request::new(proto::RegisterRequest {
                protocol_version: PROTOCOL_VERSION,
                host: format!("10.0.{}.{}", i / 250, i % 250 + 1),
                resources: Some(proto::Resources {
                    cpus: 16,
                    memory_bytes: 64 << 30,
                    ..Default::default()
                }),
                node_id: String::new(),
            });
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
            let id = client
                .register(request)
                .await
                .expect("register")
                .into_inner()
                .node_id;
            nodes.push((client, id));
        }
        // 20 rounds of heartbeats from every node.
        for _ in 0..20 {
            for (client, id) in &mut nodes {
                let mut request = tonic::Request::new(proto::HeartbeatRequest {
                    protocol_version: PROTOCOL_VERSION,
                    node_id: id.clone(),
                    processes: Vec::new(),
                    logs: Vec::new(),
                    object_address: String::new(),
                });
                request.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {token}").parse().expect("header"),
                );
                client.heartbeat(request).await.expect("heartbeat");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let after = rss_kib(cluster.head.id());
    println!(
        "head resident memory: {:.1} MiB idle, {:.1} MiB with 100 simulated nodes heartbeating every 100 ms ({} alive)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        cluster.alive_nodes()
    );
}

fn wordcount() {
    let copies: usize = std::env::var("STREAMRUN_BENCH_COPIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let work = tempfile::tempdir().expect("work");
    let input = work.path().join("corpus");
    std::fs::create_dir_all(&input).expect("dir");
    let corpus = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/corpus"));
    let mut bytes = 0u64;
    for entry in std::fs::read_dir(corpus).expect("corpus").flatten() {
        let text = std::fs::read(entry.path()).expect("file");
        for copy in 0..copies {
            let name = format!("{copy}-{}", entry.file_name().to_string_lossy());
            std::fs::write(input.join(name), &text).expect("copy");
            bytes += text.len() as u64;
        }
    }
    let spec = local_cluster::wordcount_spec(work.path(), &input, &work.path().join("out"));
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["run", "-w", "4"])
        .arg(&spec)
        .output()
        .expect("embedded");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let embedded = started.elapsed();
    let embedded_run = run_seconds(&String::from_utf8_lossy(&out.stderr)).unwrap_or(f64::NAN);
    let cluster = Cluster::start(&[2, 2]);
    let started = Instant::now();
    let printed = cluster.run_job(4, &["--spec", &spec.to_string_lossy()]);
    let submitted = started.elapsed();
    // The processes' own summaries: the slowest is the job's run time.
    let cluster_run = printed
        .lines()
        .filter_map(run_seconds)
        .fold(f64::NAN, f64::max);
    let mb = bytes as f64 / 1e6;
    println!(
        "word count of {mb:.1} MB, dataflow time: embedded 4 workers {embedded_run:.2} s ({:.1} MB/s); 2 processes × 2 workers {cluster_run:.2} s ({:.1} MB/s) = {:.2}× embedded",
        mb / embedded_run,
        mb / cluster_run,
        embedded_run / cluster_run
    );
    println!(
        "  whole commands: `stream-run run` {:.2} s; `stream-run submit --wait` {:.2} s (placement, heartbeats, process start, log shipping)",
        embedded.as_secs_f64(),
        submitted.as_secs_f64()
    );
}

/// The run time in a `stream-run run` summary line (`…, 0.94 s, …`).
fn run_seconds(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.contains("records in"))?
        .split(", ")
        .find_map(|part| part.strip_suffix(" s")?.parse().ok())
}

fn main() {
    submit_to_running();
    dead_detection();
    head_memory();
    wordcount();
}
