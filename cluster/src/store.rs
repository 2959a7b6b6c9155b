//! The global control store: the head's records of nodes and jobs, persisted in an embedded
//! database (redb), so that a restarted head recovers every node and job.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");

/// What a node offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU cores: each runs one worker thread.
    pub cpus: u32,
    /// GPUs.
    pub gpus: u32,
    /// Memory, in bytes.
    pub memory_bytes: u64,
    /// Resources of the user's own naming.
    #[serde(default)]
    pub custom: std::collections::BTreeMap<String, u64>,
}

/// Whether a node is heartbeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// Heartbeating.
    Alive,
    /// Stopped heartbeating for longer than the head's bound.
    Dead,
}

/// A node agent the head knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its id, given by the head at registration.
    pub id: String,
    /// Where other nodes reach it.
    pub host: String,
    /// What it offers.
    pub resources: Resources,
    /// CPUs taken by the workers of running jobs.
    pub used_cpus: u32,
    /// Alive or dead.
    pub state: NodeState,
    /// Why it is dead.
    pub reason: Option<String>,
    /// When it registered (ms since the Unix epoch).
    pub registered_ms: u64,
    /// When it last heartbeat (ms since the Unix epoch).
    pub last_heartbeat_ms: u64,
    /// Where its object store serves objects over Arrow Flight: the directory entry that
    /// finds any object of this node.
    #[serde(default)]
    pub object_address: Option<String>,
}

/// The states of a job. `Pending → Running → Succeeded | Failed | Stopped`; a job may also
/// fail or stop before it runs. (Restarts from checkpoints will add `Restarting` between
/// `Running` and `Running`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Placed, waiting for its processes to start.
    Pending,
    /// Every process has started.
    Running,
    /// Every process exited with status 0.
    Succeeded,
    /// A process failed, or its node died: see the reason.
    Failed,
    /// Stopped on request.
    Stopped,
}

impl JobState {
    /// Whether the job is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Stopped
        )
    }
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entrypoint {
    /// A job spec, run by `stream-run run` (the agent's own binary).
    Spec {
        /// The spec's path, as every node sees it.
        path: String,
    },
    /// A program built on the DSL, with its arguments.
    Binary {
        /// The program's path, as every node sees it.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// One process of a job: where it runs and how many workers it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The node it runs on.
    pub node: String,
    /// Its index among the job's processes.
    pub process: u32,
    /// Its worker threads.
    pub threads: u32,
    /// The `host:port` its timely peers reach it at.
    pub address: String,
    /// Whether it has started.
    pub started: bool,
    /// Its exit code, once it has exited.
    pub exit_code: Option<i32>,
}

/// A job the head knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What it runs.
    pub entrypoint: Entrypoint,
    /// Worker threads over all its processes.
    pub workers: u32,
    /// Variables its processes get beside the cluster's own.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Its state.
    pub state: JobState,
    /// Why it failed or stopped.
    pub reason: Option<String>,
    /// Its processes.
    pub placements: Vec<Placement>,
    /// When it was submitted (ms since the Unix epoch).
    pub submitted_ms: u64,
    /// When every process had started.
    pub started_ms: Option<u64>,
    /// When it ended.
    pub ended_ms: Option<u64>,
}

/// The store: one redb file.
pub struct Store {
    db: Database,
}

fn db_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{what}: {e}"))
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::create(path)
            .map_err(|e| db_err(&format!("opening {}", path.display()), e))?;
        let txn = db.begin_write().map_err(|e| db_err("write", e))?;
        txn.open_table(NODES)
            .map_err(|e| db_err("nodes table", e))?;
        txn.open_table(JOBS).map_err(|e| db_err("jobs table", e))?;
        txn.commit().map_err(|e| db_err("commit", e))?;
        Ok(Store { db })
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
        value: &T,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| db_err("encoding a record", e))?;
        let txn = self.db.begin_write().map_err(|e| db_err("write", e))?;
        {
            let mut t = txn.open_table(table).map_err(|e| db_err("table", e))?;
            t.insert(id, bytes.as_slice())
                .map_err(|e| db_err("insert", e))?;
        }
        txn.commit().map_err(|e| db_err("commit", e))
    }

    fn all<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>> {
        let txn = self.db.begin_read().map_err(|e| db_err("read", e))?;
        let t = txn.open_table(table).map_err(|e| db_err("table", e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| db_err("scan", e))? {
            let (key, value) = entry.map_err(|e| db_err("scan", e))?;
            out.push(
                serde_json::from_slice(value.value())
                    .map_err(|e| db_err(&format!("record '{}' is unreadable", key.value()), e))?,
            );
        }
        Ok(out)
    }

    /// Writes a node's record.
    pub fn put_node(&self, node: &NodeRecord) -> Result<()> {
        self.put(NODES, &node.id, node)
    }

    /// Every node's record.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.all(NODES)
    }

    /// Writes a job's record.
    pub fn put_job(&self, job: &JobRecord) -> Result<()> {
        self.put(JOBS, &job.id, job)
    }

    /// Every job's record.
    pub fn jobs(&self) -> Result<Vec<JobRecord>> {
        self.all(JOBS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("control.redb");
        let node = NodeRecord {
            id: "n1".into(),
            host: "10.0.0.2".into(),
            resources: Resources {
                cpus: 4,
                ..Resources::default()
            },
            used_cpus: 2,
            state: NodeState::Alive,
            reason: None,
            registered_ms: 1,
            last_heartbeat_ms: 2,
            object_address: Some("10.0.0.2:40000".into()),
        };
        let job = JobRecord {
            id: "j1".into(),
            name: "wordcount".into(),
            entrypoint: Entrypoint::Spec {
                path: "/jobs/wc.toml".into(),
            },
            workers: 2,
            env: Default::default(),
            state: JobState::Running,
            reason: None,
            placements: Vec::new(),
            submitted_ms: 3,
            started_ms: Some(4),
            ended_ms: None,
        };
        {
            let store = Store::open(&path).expect("open");
            store.put_node(&node).expect("node");
            store.put_job(&job).expect("job");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.nodes().expect("nodes"), vec![node]);
        assert_eq!(store.jobs().expect("jobs"), vec![job]);
    }
}
