//! Real servers for the connector tests, started as child processes on loopback.
//!
//! A test that needs a server calls [`Server::start`]. When the server's program is not
//! installed the test is skipped with a line on stderr saying what to install, unless
//! `STREAMRUN_REQUIRE_SERVICES=1` is set (as `.ci/run` does), in which case it fails.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether the environment asks for every service to be there (CI).
pub fn services_required() -> bool {
    std::env::var("STREAMRUN_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Whether `program` can be run: found on `PATH` (or an existing path).
pub fn installed(program: &str) -> bool {
    if Path::new(program).is_absolute() {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// `Some(())` when `program` is installed; otherwise skips (returns `None`, saying so) or,
/// when services are required, panics naming the package to install.
pub fn available(program: &str, package: &str) -> Option<()> {
    if installed(program) {
        return Some(());
    }
    assert!(
        !services_required(),
        "{program} is not installed (install {package}; .ci/run does)"
    );
    eprintln!("skipped: {program} is not installed (install {package}; .ci/run does)");
    None
}

/// A server process on a loopback port, killed when dropped.
pub struct Server {
    child: Option<Child>,
    /// The port it listens on.
    pub port: u16,
    program: String,
    args: Vec<String>,
}

impl Server {
    /// Starts `program` with `args` (where `{port}` is replaced by a free port) and waits
    /// until the port accepts connections. `None` when the program is not installed and the
    /// test may be skipped.
    pub fn start(program: &str, package: &str, args: &[&str]) -> Option<Server> {
        available(program, package)?;
        let port = free_port();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let mut server = Server {
            child: None,
            port,
            program: program.to_string(),
            args,
        };
        server.restart();
        Some(server)
    }

    /// Starts the process again (after [`Server::stop`]), on the same port.
    pub fn restart(&mut self) {
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program));
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(30), &self.program);
    }

    /// Kills the process and waits for it to end (the server going away).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until 127.0.0.1:`port` accepts a connection, or panics after `limit`.
pub fn wait_for_port(port: u16, limit: Duration, what: &str) {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < limit,
            "{what} did not listen on port {port} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a job of one source into one sink on `workers` workers; bad records go to
/// `dead_letters` when given (and fail the job otherwise).
pub fn pipe(
    source: std::sync::Arc<dyn streamrun_engine::Source>,
    source_descriptor: streamrun_engine::Descriptor,
    sink: std::sync::Arc<dyn streamrun_engine::Sink>,
    sink_descriptor: streamrun_engine::Descriptor,
    workers: usize,
    dead_letters: Option<&streamrun_connectors::Collect>,
) -> streamrun_engine::Result<streamrun_engine::JobReport> {
    use streamrun_engine::{BadRecordPolicy, ExecOptions, JobGraph, SourceDecl, execute};
    let mut graph = JobGraph::new("test");
    let input = graph.add_source(
        "in",
        SourceDecl {
            descriptor: source_descriptor,
            source,
            on_bad_record: if dead_letters.is_some() {
                BadRecordPolicy::DeadLetter
            } else {
                BadRecordPolicy::Fail
            },
            dead_letters: dead_letters.map(|c| {
                (
                    c.descriptor(),
                    std::sync::Arc::new(c.clone()) as std::sync::Arc<dyn streamrun_engine::Sink>,
                )
            }),
            event_time: None,
        },
    );
    graph.add_sink(input, "out", sink_descriptor, sink);
    execute(&graph, &ExecOptions::new(workers))
}

/// Runs `job` on a thread; once `collect` holds `after_rows` rows, kills `server` (the
/// server going away mid-stream), restarts it a second later, and waits for the job.
/// Returns the job's result and how many rows had arrived when the server went away.
pub fn restart_mid_stream<F>(
    server: &mut Server,
    collect: &streamrun_connectors::Collect,
    after_rows: usize,
    job: F,
) -> (streamrun_engine::Result<streamrun_engine::JobReport>, usize)
where
    F: FnOnce() -> streamrun_engine::Result<streamrun_engine::JobReport> + Send + 'static,
{
    let job = std::thread::spawn(job);
    let start = Instant::now();
    while collect.rows() < after_rows {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the job read {} rows in 120 s",
            collect.rows()
        );
        assert!(
            !job.is_finished(),
            "the job ended before the server went away"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    server.stop();
    let at_stop = collect.rows();
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    (job.join().unwrap(), at_stop)
}

/// Runs a job reading `source` into `collect` on `workers` workers (see [`pipe`]).
pub fn into_collect<S>(
    source: &S,
    descriptor: streamrun_engine::Descriptor,
    collect: &streamrun_connectors::Collect,
    workers: usize,
    dead_letters: Option<&streamrun_connectors::Collect>,
) -> streamrun_engine::Result<streamrun_engine::JobReport>
where
    S: streamrun_engine::Source + Clone + 'static,
{
    pipe(
        std::sync::Arc::new(source.clone()),
        descriptor,
        std::sync::Arc::new(collect.clone()),
        collect.descriptor(),
        workers,
        dead_letters,
    )
}

/// Runs a job replaying `batches` of `schema` into `sink` on `workers` workers (see
/// [`pipe`]).
pub fn replay_into<S>(
    schema: arrow::datatypes::SchemaRef,
    batches: Vec<arrow::array::RecordBatch>,
    sink: &S,
    descriptor: streamrun_engine::Descriptor,
    workers: usize,
) -> streamrun_engine::Result<streamrun_engine::JobReport>
where
    S: streamrun_engine::Sink + Clone + 'static,
{
    let replay = streamrun_connectors::Replay::new(schema, batches);
    pipe(
        std::sync::Arc::new(replay.clone()),
        replay.descriptor(),
        std::sync::Arc::new(sink.clone()),
        descriptor,
        workers,
        None,
    )
}
