//! One job across several OS processes: each `stream-run run` process runs two workers of a
//! timely cluster on loopback, placed by the variables a node agent sets.

use std::path::Path;
use std::process::Command;

/// The longest a `stream-run` process of these tests may run: a hang fails its test.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Free loopback ports: bound, read and released (another program could take one in
/// between; the test then fails to connect and says so).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("address").port())
        .collect()
}

fn spec(dir: &Path, out: &str) -> std::path::PathBuf {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/corpus/*.txt");
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"name = "wordcount"
[source]
format = "text"
path = "{corpus}"
[[steps]]
op = "split_words"
column = "line"
output = "word"
[[steps]]
op = "aggregate"
keys = ["word"]
aggs = [{{ fn = "count", as = "count" }}]
[sink]
format = "csv"
path = "{out}"
"#
        ),
    )
    .expect("write spec");
    path
}

/// `stream-run run spec` as one job over `processes` processes of `workers` workers each, on
/// loopback, placed by the variables a node agent sets: each process's output.
pub(crate) fn run_over_processes(
    spec: &Path,
    processes: usize,
    workers: usize,
) -> Vec<std::process::Output> {
    let peers = free_ports(processes)
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    // Every process at once: each waits for the others to connect.
    let children: Vec<_> = (0..processes)
        .map(|process| {
            let peers = peers.clone();
            let spec = spec.to_owned();
            std::thread::spawn(move || {
                crate::common::output_within(
                    Command::new(env!("CARGO_BIN_EXE_stream-run"))
                        .arg("run")
                        .arg(&spec)
                        .env("STREAMRUN_PROCESS", process.to_string())
                        .env("STREAMRUN_PEERS", &peers)
                        .env("STREAMRUN_WORKERS", workers.to_string()),
                    LIMIT,
                )
            })
        })
        .collect();
    children
        .into_iter()
        .map(|child| child.join().expect("a job process's test thread"))
        .collect()
}

/// Every data row of the CSV part files in `dir`, sorted.
fn rows(dir: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(dir).expect("output directory") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "csv") {
            let text = std::fs::read_to_string(&path).expect("part file");
            rows.extend(text.lines().skip(1).map(str::to_owned));
        }
    }
    rows.sort();
    rows
}

#[test]
fn a_word_count_over_2_processes_of_2_workers_equals_the_embedded_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded = crate::common::output_within(
        Command::new(env!("CARGO_BIN_EXE_stream-run"))
            .args(["run", "-w", "1"])
            .arg(spec(dir.path(), "embedded")),
        LIMIT,
    );
    assert!(
        embedded.status.success(),
        "{}",
        String::from_utf8_lossy(&embedded.stderr)
    );

    for out in run_over_processes(&spec(dir.path(), "cluster"), 2, 2) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let parts = std::fs::read_dir(dir.path().join("cluster"))
        .expect("cluster output")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "csv"))
        })
        .count();
    assert_eq!(parts, 4, "one part file per worker of either process");
    let expected = rows(&dir.path().join("embedded"));
    assert!(expected.len() > 1000, "the corpus has many words");
    assert_eq!(rows(&dir.path().join("cluster")), expected);
}

#[test]
fn a_malformed_placement_is_refused_naming_the_variable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = crate::common::output_within(
        Command::new(env!("CARGO_BIN_EXE_stream-run"))
            .arg("run")
            .arg(spec(dir.path(), "bad"))
            .env("STREAMRUN_PROCESS", "3")
            .env("STREAMRUN_PEERS", "127.0.0.1:1,127.0.0.1:2"),
        LIMIT,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("STREAMRUN_PROCESS"), "{stderr}");
}
