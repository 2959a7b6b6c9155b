//! # Streamrun
//!
//! A distributed dataflow and stream-processing engine: programs declare graphs of tasks
//! (stateless functions) and operators between sources and sinks; the declaration compiles to
//! a dataflow plan that runs on timely dataflow workers, with Apache Arrow batches on every
//! edge.
//!
//! ```text
//!  Job DSL / job spec ──► logical plan ──compile──► physical plan ──► timely workers
//!  (this crate)           (serde, versioned)        (fused stages,      (Arrow batches,
//!                                                    partitioned edges)  hash exchanges)
//! ```
//!
//! This crate is the facade: `use streamrun::prelude::*` is all a program needs. The engine,
//! operators and connectors live in `streamrun-engine`, `streamrun-operators` and
//! `streamrun-connectors`, re-exported here as [`engine`], [`operators`] and [`connectors`].
//!
//! ```
//! use streamrun::prelude::*;
//!
//! # fn main() -> streamrun::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("streamrun-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).map_err(|e| Error::io("temp dir", e))?;
//! # std::fs::write(dir.join("a.txt"), "the cat and the hat\nThe end.\n").map_err(|e| Error::io("write", e))?;
//! let job = Job::new("word-count");
//! let counts = Collect::new();
//! job.source(Files::text(format!("{}/*.txt", dir.display())))
//!     .split_words("line", "word")
//!     .key_by("word")
//!     .count()
//!     .sink(counts.clone());
//! let report = streamrun::execute_with(&job, &ExecOptions::new(2))?;
//! assert_eq!(report.records_in, 2);
//! assert_eq!(counts.rows(), 5); // the, cat, and, hat, end
//! # Ok(())
//! # }
//! ```

pub mod datagen;
mod dsl;
pub mod links;
pub mod nexmark;
pub mod spec;

pub use dsl::{
    IntoColumns, IntoSink, IntoSource, Job, KeyedStream, Session, Sliding, Stream, Tumbling,
    WindowSpec, WindowedStream,
};
pub use streamrun_connectors as connectors;
pub use streamrun_engine as engine;
pub use streamrun_engine::{Error, ExecOptions, JobReport, Metrics, Result};
pub use streamrun_operators as operators;

/// Everything a program needs: `use streamrun::prelude::*`.
pub mod prelude {
    pub use crate::dsl::{
        IntoColumns, IntoSink, IntoSource, Job, KeyedStream, Session, Sliding, Stream, Tumbling,
        WindowSpec, WindowedStream,
    };
    pub use streamrun_connectors::{Collect, Files, Nexmark, Stdout};
    pub use streamrun_engine::{Error, ExecOptions, JobReport, Result};
    pub use streamrun_operators::{
        Actor, Agg, AggregateFunction, CmpOp, JoinKind, KeyContext, ListState, MapState, ValueState,
    };
}

/// The number of workers used when none is given: `STREAMRUN_WORKERS`, or the machine's cores.
pub fn default_workers() -> usize {
    std::env::var("STREAMRUN_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs `job` and returns what it did: on the embedded cluster (worker threads in this
/// process, [`default_workers`] of them) by default, or as one process of a job spread over
/// several when a node agent started this program with `STREAMRUN_PROCESS` and
/// `STREAMRUN_PEERS` set (see [`ExecOptions::from_env`]).
pub fn execute(job: &Job) -> Result<JobReport> {
    execute_with(job, &ExecOptions::from_env(default_workers())?)
}

/// Runs `job` with explicit options. A process of a cluster job whose node agent hosts an
/// object store sends its large cross-process batches through that store.
pub fn execute_with(job: &Job, options: &ExecOptions) -> Result<JobReport> {
    job.check()?;
    if options.cluster.is_some() {
        install_exchange_store()?;
    }
    streamrun_engine::execute(&job.graph(), options)
}

/// The logical and physical plans of `job` for `workers` workers, as text.
pub fn explain(job: &Job, workers: usize) -> Result<String> {
    job.check()?;
    let graph = job.graph();
    let physical = streamrun_engine::compile(&graph, workers)?;
    Ok(format!(
        "{}\n{}",
        streamrun_engine::explain::logical_text(graph.plan()),
        streamrun_engine::explain::physical_text(&physical)
    ))
}

/// Both plans of `job` as a Graphviz digraph.
pub fn explain_dot(job: &Job, workers: usize) -> Result<String> {
    job.check()?;
    let graph = job.graph();
    let physical = streamrun_engine::compile(&graph, workers)?;
    Ok(streamrun_engine::explain::dot(graph.plan(), &physical))
}

/// The README's code blocks, compiled as doctests so that they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Sends this process's large cross-process batches through its node's object store, when a
/// node agent gave it one (`STREAMRUN_STORE` and the rest, see
/// [`streamrun_store::exchange::ExchangeClient::from_env`]). Done once per process.
fn install_exchange_store() -> Result<()> {
    static INSTALLED: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(
            || match streamrun_store::exchange::ExchangeClient::from_env() {
                Ok(Some(client)) => {
                    streamrun_engine::set_exchange_store(Some(std::sync::Arc::new(client)));
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
        )
        .clone()
        .map_err(Error::Plan)
}
