//! # streamrun-cluster
//!
//! Streamrun as a cluster, as `ray start --head`, `ray start --address` and `ray job submit`
//! make Ray one:
//!
//! - The **head** ([`head::run`]) holds the cluster's state in the *global control store*
//!   ([`store::Store`], an embedded redb database), talks to node agents over gRPC (tonic;
//!   `proto/control.proto`) and serves a JSON REST API for jobs (axum), shaped like Ray's
//!   Jobs API: `POST /api/jobs`, `GET /api/jobs`, `GET /api/jobs/{id}`,
//!   `GET /api/jobs/{id}/logs`, `POST /api/jobs/{id}/stop`, and `GET /api/nodes`.
//! - A **node agent** ([`agent::run`]) registers its node's resources, heartbeats, starts
//!   the processes of the jobs placed on it with their place in the job's timely cluster
//!   (`STREAMRUN_PROCESS`, `STREAMRUN_PEERS`, `STREAMRUN_WORKERS`), ships their output to
//!   the head, and reports their exits.
//! - The **client** ([`client::Client`]) is what the `stream-run` CLI uses to submit and
//!   watch jobs.
//!
//! Every RPC and REST call carries the cluster token, which the head writes at its first
//! start to a file only its owner can read ([`token`]). A protocol version is checked at
//! registration and on every heartbeat.
//!
//! ```
//! use streamrun_cluster::placement::place;
//! use streamrun_cluster::store::Resources;
//!
//! // Four workers over two nodes of two free CPUs: two processes of two threads.
//! let free = vec![("a".to_string(), 2), ("b".to_string(), 2)];
//! let plan = place(4, &free)?;
//! assert_eq!(plan.threads, 2);
//! assert_eq!(plan.processes, vec!["a".to_string(), "b".to_string()]);
//! # let _ = Resources::default();
//! # Ok::<(), streamrun_cluster::Error>(())
//! ```

pub mod agent;
pub mod client;
pub mod head;
pub mod local;
pub mod placement;
pub mod store;
pub mod token;

/// The generated gRPC code of the control plane.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("streamrun.control.v1");
}

/// The control protocol's version: a head refuses agents of another.
pub const PROTOCOL_VERSION: u32 = 1;

/// What can go wrong in the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control store failed.
    #[error("control store: {0}")]
    Store(String),
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The head could not be reached, or refused a call.
    #[error("{0}")]
    Rpc(String),
    /// A request the head cannot grant (no room for the workers, an unknown job).
    #[error("{0}")]
    Refused(String),
    /// A setting or argument is wrong.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A random id of `bytes` bytes, in hex.
pub(crate) fn random_id(bytes: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}
