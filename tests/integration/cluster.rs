//! A cluster of real processes on loopback: a head and node agents started with
//! `stream-run start`, jobs submitted with `stream-run submit`, as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::local_cluster::{LocalCluster, free_port};
use crate::process_guard::Processes;

/// Whether a process whose command line contains `marker` runs on this machine.
fn process_running(marker: &str) -> bool {
    std::fs::read_dir("/proc").is_ok_and(|entries| {
        entries.flatten().any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(marker)
            })
        })
    })
}

fn wordcount_spec(dir: &Path, out: &Path) -> PathBuf {
    let corpus = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/corpus"));
    crate::local_cluster::wordcount_spec(dir, corpus, out)
}

fn csv_rows(dir: &Path) -> Vec<String> {
    let mut rows: Vec<String> = std::fs::read_dir(dir)
        .expect("output")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "csv"))
        .flat_map(|e| {
            let text = std::fs::read_to_string(e.path()).expect("part");
            text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>()
        })
        .collect();
    rows.sort();
    rows
}

/// A word-count spec writing to `out`, and the rows it gives when run embedded on one
/// worker (then removed, so that `out` is free for the run under test).
fn embedded_wordcount(dir: &Path, out: &Path) -> (PathBuf, Vec<String>) {
    let spec = wordcount_spec(dir, out);
    let run = Command::new(env!("CARGO_BIN_EXE_stream-run"))
        .args(["run", "-w", "1"])
        .arg(&spec)
        .output()
        .expect("embedded run");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let rows = csv_rows(out);
    std::fs::remove_dir_all(out).expect("clear");
    (spec, rows)
}

#[test]
fn a_word_count_on_two_agents_equals_the_embedded_run_and_keeps_its_logs() {
    let cluster = LocalCluster::start(&[2, 2]);
    let work = tempfile::tempdir().expect("work");
    let embedded = work.path().join("embedded");
    let (spec, expected) = embedded_wordcount(work.path(), &embedded);

    let spec = spec.to_string_lossy().into_owned();
    let printed = cluster.run_job(4, &["--spec", &spec]);
    let id = printed.lines().next().unwrap_or_default().to_owned();
    let job = cluster.job(&id);
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    let placements = job["placements"].as_array().expect("placements");
    assert_eq!(placements.len(), 2, "two processes of two workers: {job}");
    assert_ne!(placements[0]["node"], placements[1]["node"]);
    assert_eq!(csv_rows(&embedded), expected);
    let logs = cluster.cli(&["job", "logs", &id]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert_eq!(
        logs.matches("records in").count(),
        2,
        "one summary per process: {logs}"
    );
    // Following the logs of a finished job prints them and returns.
    let followed = cluster.cli(&["job", "logs", "-f", &id]);
    assert_eq!(String::from_utf8_lossy(&followed.stdout), logs);
}

#[test]
fn a_killed_agent_is_declared_dead_within_the_bound_and_its_job_fails() {
    let mut cluster = LocalCluster::start(&[1]);
    let id = cluster.submit(&["-w", "1", "--", "sleep", "61.25"]);
    cluster.wait_state(&id, "RUNNING");
    assert!(process_running("sleep 61.25"));
    let killed = Instant::now();
    cluster.agents[0].kill().expect("SIGKILL the agent");
    let job = cluster.wait_state(&id, "FAILED");
    let detected = killed.elapsed();
    // Dead after 1 s of silence, checked every 50 ms, polled by this test every 50 ms or so.
    assert!(detected < Duration::from_millis(2500), "took {detected:?}");
    let node = job["placements"][0]["node"]
        .as_str()
        .expect("node")
        .to_owned();
    let reason = job["reason"].as_str().expect("reason");
    assert!(
        reason.contains(&node) && reason.contains("heartbeat"),
        "{reason}"
    );
    cluster.wait_for(
        |_| !process_running("sleep 61.25"),
        "the orphaned process to die",
    );
    assert_eq!(cluster.alive_nodes(), 0);
}

#[test]
fn stop_ends_a_running_job_and_bad_requests_get_clear_errors() {
    let cluster = LocalCluster::start(&[2]);
    let id = cluster.submit(&["-w", "2", "--", "sleep", "62.75"]);
    cluster.wait_state(&id, "RUNNING");
    let out = cluster.cli(&["job", "stop", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.wait_state(&id, "STOPPED");
    cluster.wait_for(
        |_| !process_running("sleep 62.75"),
        "the stopped process to end",
    );

    // More workers than the cluster has.
    let out = cluster.cli(&["submit", "-w", "3", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("3 workers") && stderr.contains("2 free"),
        "{stderr}"
    );
    // A program that does not exist fails its job with the reason.
    let id = cluster.submit(&["-w", "1", "--", "no-such-program-anywhere"]);
    let job = cluster.wait_state(&id, "FAILED");
    assert!(
        job["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot start")),
        "{job}"
    );
    // A spec that does not compile is refused before it is submitted, naming the line.
    let work = tempfile::tempdir().expect("work");
    let bad = work.path().join("bad.toml");
    std::fs::write(&bad, "name = \"bad\"\n[source]\nformat = \"text\"\npath = \"/nowhere/*.txt\"\n[[steps]]\nop = \"no_such_op\"\n[sink]\nformat = \"stdout\"\n").expect("spec");
    let out = cluster.cli(&["submit", "--spec", &bad.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("bad.toml"),
        "{stderr}"
    );
    // An unreachable head, for a client and for an agent.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let out = cluster.cli(&["status", "--address", &nowhere]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("cannot reach the head"),
        "{stderr}"
    );
    let out = cluster.cli(&["start", "--address", &nowhere]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("cannot reach the head"),
        "{stderr}"
    );
    // A wrong token.
    let out = Command::new(env!("CARGO_BIN_EXE_stream-run"))
        .args(["status", "--address", &cluster.rest])
        .env("STREAMRUN_HOME", cluster.home.path())
        .env("STREAMRUN_TOKEN", "wrong")
        .output()
        .expect("status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("token"),
        "{stderr}"
    );
}

/// Three network namespaces on one bridge: separate hosts with their own interfaces and
/// addresses (10.N.0.1–3), removed when dropped.
struct Hosts {
    bridge: String,
    namespaces: Vec<String>,
    subnet: String,
}

impl Hosts {
    /// `None`, with the reason, where namespaces cannot be made (not root, no `ip`).
    fn create() -> Result<Hosts, String> {
        let n = std::process::id() % 10_000;
        let subnet = format!("10.{}.0", 100 + n % 100);
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let mut hosts = Hosts {
            bridge: format!("srb{n}"),
            namespaces: Vec::new(),
            subnet: subnet.clone(),
        };
        ip(&["link", "add", &hosts.bridge, "type", "bridge"])?;
        ip(&["link", "set", &hosts.bridge, "up"])?;
        for i in 1..=3 {
            let ns = format!("srns{n}h{i}");
            ip(&["netns", "add", &ns])?;
            hosts.namespaces.push(ns.clone());
            let (outside, inside) = (format!("srv{n}h{i}"), format!("srp{n}h{i}"));
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&["link", "set", &outside, "master", &hosts.bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            let address = format!("{subnet}.{i}/24");
            ip(&[
                "netns", "exec", &ns, "ip", "addr", "add", &address, "dev", &inside,
            ])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", &inside, "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    fn address(&self, host: usize) -> String {
        format!("{}.{host}", self.subnet)
    }

    /// `stream-run` inside host `host` (1–3).
    fn stream_run(&self, host: usize, home: &Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &self.namespaces[host - 1],
                env!("CARGO_BIN_EXE_stream-run"),
            ])
            .env("STREAMRUN_HOME", home);
        command
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

#[test]
fn a_job_crosses_real_network_interfaces_between_namespaced_hosts() {
    let hosts = match Hosts::create() {
        Ok(hosts) => hosts,
        Err(why) => {
            eprintln!("skipped: network namespaces cannot be made here ({why})");
            return;
        }
    };
    let home = tempfile::tempdir().expect("home");
    let head = hosts.address(1);
    let mut processes = Processes(Vec::new());
    processes.0.push(
        hosts
            .stream_run(1, home.path())
            .args(["start", "--head", "--bind", &head, "--heartbeat-ms", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("head"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !home.path().join("head/head.json").exists() {
        assert!(Instant::now() < deadline, "the head did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    for host in [2, 3] {
        processes.0.push(
            hosts
                .stream_run(host, home.path())
                .args([
                    "start",
                    "--address",
                    &format!("{head}:6380"),
                    "--resources",
                    "cpu=2",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("agent"),
        );
    }
    let rest = format!("{head}:8265");
    let status = || -> Value {
        let out = hosts
            .stream_run(1, home.path())
            .args(["status", "--json", "--address", &rest])
            .output()
            .expect("status");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    while status()["nodes"].as_array().map_or(0, Vec::len) < 2 {
        assert!(
            Instant::now() < deadline,
            "the agents did not register: {}",
            status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let hosts_seen: Vec<String> = status()["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|n| n["host"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        hosts_seen.contains(&hosts.address(2)) && hosts_seen.contains(&hosts.address(3)),
        "agents are reached at their own interfaces: {hosts_seen:?}"
    );

    let work = tempfile::tempdir().expect("work");
    let embedded = work.path().join("embedded");
    let (spec, expected) = embedded_wordcount(work.path(), &embedded);
    let out = hosts
        .stream_run(1, home.path())
        .args(["submit", "--address", &rest, "-w", "4", "--wait", "--spec"])
        .arg(&spec)
        .output()
        .expect("submit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(csv_rows(&embedded), expected);
}

#[test]
fn a_compiled_dsl_program_runs_as_a_job_unchanged() {
    // `cargo test` builds the examples beside the test binaries.
    let example = std::env::current_exe().ok().and_then(|p| {
        p.parent()?
            .parent()
            .map(|d| d.join("examples").join("wordcount"))
    });
    let Some(example) = example.filter(|p| p.exists()) else {
        eprintln!("skipped: the wordcount example is not built (cargo test --workspace builds it)");
        return;
    };
    let embedded = Command::new(&example)
        .args(["-w", "1"])
        .output()
        .expect("embedded");
    assert!(
        embedded.status.success(),
        "{}",
        String::from_utf8_lossy(&embedded.stderr)
    );
    let table = String::from_utf8_lossy(&embedded.stdout).into_owned();
    assert!(table.contains("| the "), "{table}");

    let cluster = LocalCluster::start(&[2, 2]);
    let logs = cluster.run_job(4, &["--", &example.to_string_lossy()]);
    // The table, gathered on worker 0 of process 0, as the embedded run prints it.
    assert!(logs.contains(table.trim()), "{logs}");
    assert_eq!(
        logs.matches("counted in").count(),
        2,
        "one summary per process: {logs}"
    );
}

#[test]
fn stop_stops_the_local_head_and_agents() {
    let cluster = LocalCluster::start(&[1]);
    let out = cluster.cli(&["stop"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("stopped head") && stderr.contains("stopped agent"),
        "{stderr}"
    );
    let mut cluster = cluster;
    for child in cluster
        .agents
        .iter_mut()
        .chain(std::iter::once(&mut cluster.head))
    {
        let status = child.try_wait().expect("wait");
        assert!(status.is_some(), "a process outlived stop");
    }
}

#[test]
fn exchanges_through_the_object_store_give_the_embedded_result() {
    // Agents whose job processes send every cross-process batch through the store.
    let mut cluster = LocalCluster::start(&[]);
    for _ in 0..2 {
        cluster.agents.push(
            Command::new(env!("CARGO_BIN_EXE_stream-run"))
                .args(["start", "--address", &cluster.grpc, "--resources", "cpu=2"])
                .args(["--object-store-memory", "8M", "--object-store-disk", "1G"])
                .env("STREAMRUN_HOME", cluster.home.path())
                .env("STREAMRUN_EXCHANGE_THRESHOLD", "0")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("agent"),
        );
    }
    cluster.wait_for(|c| c.alive_nodes() == 2, "the agents to register");
    // The head's directory: every node's object store address.
    cluster.wait_for(
        |c| {
            c.status()["nodes"].as_array().is_some_and(|nodes| {
                nodes.iter().all(|n| {
                    n["object_address"]
                        .as_str()
                        .is_some_and(|a| a.starts_with("127.0.0.1:"))
                })
            })
        },
        "the nodes' object store addresses",
    );
    let work = tempfile::tempdir().expect("work");
    let out_dir = work.path().join("words");
    let (spec, expected) = embedded_wordcount(work.path(), &out_dir);
    let logs = cluster.run_job(4, &["--spec", &spec.to_string_lossy()]);
    assert_eq!(
        logs.matches("sent through the object store").count(),
        2,
        "both processes exchanged through their stores: {logs}"
    );
    assert_eq!(csv_rows(&out_dir), expected);

    // A broadcast: every worker of both processes gets every line, so each word is counted
    // once per worker. The other process's two workers read one copy on their node.
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/corpus/*.txt");
    let broadcast = work.path().join("broadcast.toml");
    std::fs::write(
        &broadcast,
        format!(
            "name = \"broadcast\"\n[source]\nformat = \"text\"\npath = \"{corpus}\"\n\
             [[steps]]\nop = \"broadcast\"\n\
             [[steps]]\nop = \"split_words\"\ncolumn = \"line\"\noutput = \"word\"\n\
             [[steps]]\nop = \"aggregate\"\nkeys = [\"word\"]\naggs = [{{ fn = \"count\", as = \"count\" }}]\n\
             [[steps]]\nop = \"top_k\"\nk = 10\nby = \"count\"\n[sink]\nformat = \"stdout\"\n"
        ),
    )
    .expect("spec");
    let counts = |text: &str| -> Vec<(String, u64)> {
        let mut rows: Vec<(String, u64)> = text
            .lines()
            .filter(|l| l.starts_with("| ") && !l.contains(" word "))
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                Some((cells.get(1)?.to_string(), cells.get(2)?.parse().ok()?))
            })
            .collect();
        rows.sort();
        rows
    };
    let once = Command::new(env!("CARGO_BIN_EXE_stream-run"))
        .args(["run", "-w", "1"])
        .arg(&broadcast)
        .output()
        .expect("embedded broadcast");
    let once = counts(&String::from_utf8_lossy(&once.stdout));
    assert_eq!(once.len(), 10, "{once:?}");
    let on_cluster = counts(&cluster.run_job(4, &["--spec", &broadcast.to_string_lossy()]));
    let four_times: Vec<(String, u64)> = once.iter().map(|(w, n)| (w.clone(), 4 * n)).collect();
    assert_eq!(on_cluster, four_times);

    // A group-by, checked against the embedded run of the same spec.
    let groupby = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/jobs/groupby.toml");
    let embedded = Command::new(env!("CARGO_BIN_EXE_stream-run"))
        .args(["run", "-w", "1", groupby])
        .output()
        .expect("embedded group-by");
    let printed = cluster.run_job(4, &["--spec", groupby]);
    let table_rows = |text: &str| -> Vec<String> {
        let mut rows: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("| ") && !l.contains("region"))
            .map(str::to_owned)
            .collect();
        rows.sort();
        rows
    };
    let expected = table_rows(&String::from_utf8_lossy(&embedded.stdout));
    assert!(expected.len() >= 5, "{expected:?}");
    let got = table_rows(&printed);
    assert_eq!(got.len(), expected.len(), "{got:?}");
    // Means are sums of floats, added in another order across workers: equal to 1e-12.
    for (g, e) in got.iter().zip(&expected) {
        for (a, b) in g.split('|').zip(e.split('|')) {
            let (a, b) = (a.trim(), b.trim());
            match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(x), Ok(y)) => assert!((x - y).abs() <= 1e-12 * y.abs().max(1.0), "{g} vs {e}"),
                _ => assert_eq!(a, b, "{g} vs {e}"),
            }
        }
    }
}
