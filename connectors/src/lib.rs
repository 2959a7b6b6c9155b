//! # streamrun-connectors
//!
//! The sources and sinks of Streamrun: the connectors that read a job's input and write its
//! output. Each implements the engine's contracts ([`Source`](streamrun_engine::Source),
//! [`Sink`](streamrun_engine::Sink)) and can be used by any job.
//!
//! * [`Files`]: read text, CSV, JSON lines and Parquet files matching a glob pattern
//!   ([`FileSource`]), split across the workers of a job; write CSV, JSON lines and Parquet
//!   files, one part file per worker, committed atomically ([`FileSink`]).
//! * `Objects` (feature `object-store`): read CSV, JSON lines and Parquet objects matching a
//!   URL pattern (`s3://bucket/in/*.csv`, `file:///data/*.parquet`) and write one part object
//!   per worker, uploaded whole, on S3-compatible storage (credentials from the environment)
//!   or the local file system (`ObjectSource`, `ObjectSink`).
//! * `RedisStreams` (feature `redis`): read a Redis stream through a consumer group, append
//!   to a stream. `NatsJetStream` (feature `nats`): read a JetStream stream through a durable
//!   pull consumer, publish with the server's acknowledgement. Both carry one JSON record per
//!   message, deliver at least once (a message is acknowledged once the job has taken it in,
//!   see [`SourceReader::checkpoint`](streamrun_engine::SourceReader::checkpoint)), and
//!   reconnect for a stated time when the server goes away.
//! * `Postgres` (feature `postgres`): write rows into a PostgreSQL table with batched `COPY`,
//!   or upsert them by key; rows the database refuses fail the job or go to a dead-letter
//!   sink.
//! * [`Stdout`]: print the result as a table once the job has ended.
//! * [`Collect`]: keep the result in memory, for tests and for programs that use it;
//!   [`Replay`]: replay batches held in memory, for benches that time the dataflow alone.
//! * [`Nexmark`]: the Nexmark benchmark's persons, auctions and bids, generated
//!   deterministically and split across workers.
//!
//! Bad input records (a CSV row with the wrong number of fields, a value that does not parse,
//! a line that is not JSON) are reported with their file and line number, and follow the
//! source's [`BadRecordPolicy`](streamrun_engine::BadRecordPolicy): stop the job, or go to
//! a dead-letter sink while the good rows go on.
//!
//! ```
//! use std::sync::Arc;
//! use streamrun_connectors::{Collect, Files};
//! use streamrun_engine::*;
//!
//! // A small CSV file in a fresh directory.
//! let dir = std::env::temp_dir().join(format!("streamrun-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating the directory", e))?;
//! std::fs::write(dir.join("sales.csv"), "item,amount\napple,3\npear,5\nplum,7\n")
//!     .map_err(|e| Error::io("writing sales.csv", e))?;
//!
//! // Read every CSV file of the directory (the schema is inferred) into memory, on 2 workers.
//! let source = Files::csv(format!("{}/*.csv", dir.display()));
//! let collect = Collect::new();
//! let mut graph = JobGraph::new("sales");
//! let input = graph.add_source("sales", SourceDecl {
//!     descriptor: source.descriptor(),
//!     source: Arc::new(source),
//!     on_bad_record: BadRecordPolicy::Fail,
//!     dead_letters: None,
//!     event_time: None,
//! });
//! graph.add_sink(input, "collect", collect.descriptor(), Arc::new(collect.clone()));
//! execute(&graph, &ExecOptions::new(2))?;
//!
//! assert_eq!(collect.rows(), 3);
//! let schema = collect.batches()[0].schema();
//! assert_eq!(schema.field(1).name(), "amount");
//! std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing the directory", e))?;
//! # Ok::<(), streamrun_engine::Error>(())
//! ```

mod files;
mod generators;
mod memory;
mod messages;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "object-store")]
mod object;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
mod stdout;

pub use files::{FileFormat, FileSink, FileSource, Files};
pub use generators::{DEFAULT_BASE_TIME_MS, Nexmark, NexmarkTable};
pub use memory::{Collect, Replay};
#[cfg(feature = "nats")]
pub use nats::{NatsJetStream, NatsSink, NatsSource};
#[cfg(feature = "object-store")]
pub use object::{ObjectSink, ObjectSource, Objects};
#[cfg(feature = "postgres")]
pub use postgres::{Postgres, PostgresSink};
#[cfg(feature = "redis")]
pub use redis::{RedisStreamSink, RedisStreamSource, RedisStreams};
pub use stdout::Stdout;
