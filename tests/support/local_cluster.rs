//! A Streamrun cluster of real processes on loopback for tests and benches: a head
//! (heartbeats every 100 ms, nodes dead after 1 s) and agents started with `stream-run
//! start`, driven through the CLI as a user would.
#![allow(dead_code)] // the tests and the bench each use part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A free loopback port: bound, read and released.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A head and agents, killed when dropped.
pub struct LocalCluster {
    pub home: tempfile::TempDir,
    pub grpc: String,
    pub rest: String,
    pub head: Child,
    pub agents: Vec<Child>,
}

impl LocalCluster {
    /// A head (heartbeats every 100 ms, nodes dead after 1 s) and one agent per entry of
    /// `cpus`.
    pub fn start(cpus: &[u32]) -> LocalCluster {
        let home = tempfile::tempdir().expect("home");
        let (grpc, rest) = (free_port(), free_port());
        let head = Command::new(env!("CARGO_BIN_EXE_stream-run"))
            .args([
                "start",
                "--head",
                "--heartbeat-ms",
                "100",
                "--dead-after-ms",
                "1000",
            ])
            .args([
                "--port",
                &grpc.to_string(),
                "--dashboard-port",
                &rest.to_string(),
            ])
            .env("STREAMRUN_HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the head");
        let mut cluster = LocalCluster {
            home,
            grpc: format!("127.0.0.1:{grpc}"),
            rest: format!("127.0.0.1:{rest}"),
            head,
            agents: Vec::new(),
        };
        cluster.wait_for(
            |c| c.home.path().join("head/head.json").exists(),
            "the head to listen",
        );
        for &n in cpus {
            cluster.add_agent(n);
        }
        let expected = cpus.len();
        cluster.wait_for(|c| c.alive_nodes() == expected, "the agents to register");
        cluster
    }

    pub fn add_agent(&mut self, cpus: u32) {
        let agent = Command::new(env!("CARGO_BIN_EXE_stream-run"))
            .args([
                "start",
                "--address",
                &self.grpc,
                "--resources",
                &format!("cpu={cpus}"),
            ])
            .env("STREAMRUN_HOME", self.home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start an agent");
        self.agents.push(agent);
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_stream-run"))
            .args(args)
            .env("STREAMRUN_HOME", self.home.path())
            .output()
            .expect("run stream-run")
    }

    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    pub fn alive_nodes(&self) -> usize {
        self.status()["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["state"] == "ALIVE").count())
    }

    pub fn job(&self, id: &str) -> Value {
        let out = self.cli(&["job", "status", id]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Submits a job of `workers` workers (`job`: `--spec FILE` or `-- PROGRAM ARGS`), waits
    /// for it to succeed, and returns what `submit --wait` printed: the job's id on the first
    /// line, then its output.
    pub fn run_job(&self, workers: u32, job: &[&str]) -> String {
        let workers = workers.to_string();
        let out = self.cli(&[&["submit", "-w", &workers, "--wait"], job].concat());
        assert!(
            out.status.success(),
            "the job failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn submit(&self, args: &[&str]) -> String {
        let out = self.cli(&[&["submit"], args].concat());
        assert!(
            out.status.success(),
            "submit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn wait_for(&self, mut done: impl FnMut(&LocalCluster) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_state(&self, id: &str, state: &str) -> Value {
        let mut last = Value::Null;
        self.wait_for(
            |c| {
                last = c.job(id);
                last["state"] == state
            },
            &format!("job {id} to be {state}"),
        );
        last
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self
            .agents
            .iter_mut()
            .chain(std::iter::once(&mut self.head))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes, in `dir`, a word-count spec over the `*.txt` files of `input` that writes CSV part
/// files into `out`; returns its path.
pub fn wordcount_spec(dir: &Path, input: &Path, out: &Path) -> PathBuf {
    let path = dir.join("wordcount.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"wordcount\"\n[source]\nformat = \"text\"\npath = \"{}/*.txt\"\n\
             [[steps]]\nop = \"split_words\"\ncolumn = \"line\"\noutput = \"word\"\n\
             [[steps]]\nop = \"aggregate\"\nkeys = [\"word\"]\naggs = [{{ fn = \"count\", as = \"count\" }}]\n\
             [sink]\nformat = \"csv\"\npath = \"{}\"\n",
            input.display(),
            out.display()
        ),
    )
    .expect("spec");
    path
}
