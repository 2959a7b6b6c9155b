//! The engine's exchanges through the store: a job process puts its large cross-process
//! batches in its node's store and sends only references ([`streamrun_engine::ExchangeStore`]).
//!
//! A process stages a batch as an Arrow IPC file in the node's memory tier and asks the node
//! agent's store to adopt it (one copy, accounted, spilled under pressure). A receiver on the
//! same node maps the file and reads it in place; one on another node fetches it over Flight
//! from the node the reference names. The agent releases a job's objects when its processes
//! on the node have ended.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use tonic::transport::Channel;

use arrow::array::RecordBatch;
use streamrun_engine::{Error as EngineError, ExchangeStore};

use crate::{Kind, ObjectId, ObjectRef, StoreError, StoreReader, encode, flight};

/// The variable naming the node store's tiers, `memory_dir|spill_dir`.
pub const STORE_ENV: &str = "STREAMRUN_STORE";
/// The variable naming the node store's Flight address, `host:port`.
pub const STORE_ADDRESS_ENV: &str = "STREAMRUN_STORE_ADDRESS";
/// The variable naming this process's node.
pub const NODE_ENV: &str = "STREAMRUN_NODE";
/// The variable naming the smallest batch, in bytes, that goes through the store (default
/// 4 MiB).
pub const THRESHOLD_ENV: &str = "STREAMRUN_EXCHANGE_THRESHOLD";
/// Batches from this size on go through the store unless `STREAMRUN_EXCHANGE_THRESHOLD` says
/// otherwise.
pub const DEFAULT_THRESHOLD: usize = 4 << 20;

/// A job process's way to its node's store.
pub struct ExchangeClient {
    node: String,
    address: String,
    token: String,
    owner: String,
    memory_dir: PathBuf,
    reader: StoreReader,
    threshold: usize,
    runtime: tokio::runtime::Runtime,
    /// Open connections, by node address: one per node, shared by the process's workers.
    channels: Mutex<HashMap<String, Channel>>,
}

fn engine(e: StoreError) -> EngineError {
    EngineError::Io {
        context: "object store".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl ExchangeClient {
    /// A client of the store whose memory tier is `memory_dir` (spill tier `spill_dir`),
    /// served at `address` on node `node`, putting objects owned by `owner`.
    pub fn new(
        node: &str,
        address: &str,
        token: &str,
        owner: &str,
        (memory_dir, spill_dir): (PathBuf, PathBuf),
        threshold: usize,
    ) -> crate::Result<ExchangeClient> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                context: "starting the store client".into(),
                source: e,
            })?;
        Ok(ExchangeClient {
            node: node.to_owned(),
            address: address.to_owned(),
            token: token.to_owned(),
            owner: owner.to_owned(),
            reader: StoreReader::new(memory_dir.clone(), spill_dir),
            memory_dir,
            threshold,
            runtime,
            channels: Mutex::new(HashMap::new()),
        })
    }

    /// The connection to `address`, opened on first use.
    fn channel(&self, address: &str) -> Option<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(address) {
            return Some(channel.clone());
        }
        let channel = self.runtime.block_on(flight::connect(address)).ok()?;
        channels.insert(address.to_owned(), channel.clone());
        Some(channel)
    }

    /// The client a node agent set up for this process through the environment
    /// ([`NodeStoreEnv`]), if it did, with `STREAMRUN_EXCHANGE_THRESHOLD`.
    pub fn from_env() -> crate::Result<Option<ExchangeClient>> {
        let Some(env) = NodeStoreEnv::from_env()? else {
            return Ok(None);
        };
        let threshold = match std::env::var(THRESHOLD_ENV).ok().filter(|v| !v.is_empty()) {
            Some(t) => t
                .parse()
                .map_err(|_| settings(format!("{THRESHOLD_ENV}={t:?} is not a number of bytes")))?,
            None => DEFAULT_THRESHOLD,
        };
        ExchangeClient::new(
            &env.node,
            &env.address,
            &env.token,
            &env.owner,
            (env.memory_dir, env.spill_dir),
            threshold,
        )
        .map(Some)
    }
}

/// An error in the object store's settings.
fn settings(what: String) -> StoreError {
    StoreError::Io {
        context: "the object store's settings".into(),
        source: std::io::Error::other(what),
    }
}

/// What a node agent tells the processes it starts about its object store.
#[derive(Debug, Clone)]
pub struct NodeStoreEnv {
    /// The node (`STREAMRUN_NODE`).
    pub node: String,
    /// Where its store serves over Flight (`STREAMRUN_STORE_ADDRESS`).
    pub address: String,
    /// The cluster's token (`STREAMRUN_TOKEN`).
    pub token: String,
    /// The job the process belongs to, owner of what it puts (`STREAMRUN_JOB_ID`).
    pub owner: String,
    /// The store's memory tier (`STREAMRUN_STORE`, `memory_dir|spill_dir`).
    pub memory_dir: PathBuf,
    /// Its spill tier.
    pub spill_dir: PathBuf,
}

impl NodeStoreEnv {
    /// The agent's settings, if this process runs under one (`STREAMRUN_STORE` is set); a
    /// partial set is an error naming what is missing.
    pub fn from_env() -> crate::Result<Option<NodeStoreEnv>> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let Some(tiers) = var(STORE_ENV) else {
            return Ok(None);
        };
        let (memory, spill) = tiers.split_once('|').ok_or_else(|| {
            settings(format!("{STORE_ENV}={tiers:?} is not memory_dir|spill_dir"))
        })?;
        let need = |name: &str| {
            var(name).ok_or_else(|| settings(format!("{STORE_ENV} is set but {name} is not")))
        };
        Ok(Some(NodeStoreEnv {
            node: need(NODE_ENV)?,
            address: need(STORE_ADDRESS_ENV)?,
            token: need("STREAMRUN_TOKEN")?,
            owner: need("STREAMRUN_JOB_ID")?,
            memory_dir: PathBuf::from(memory),
            spill_dir: PathBuf::from(spill),
        }))
    }
}

impl ExchangeClient {
    /// An object of another node with several readers, brought once into this node's store
    /// (by whichever of its readers asks first) and read in place. `None` when the node's
    /// store could not keep a copy: the reader then fetches its own.
    fn pulled(&self, object: &ObjectRef, address: &str) -> Option<RecordBatch> {
        let channel = self.channel(&self.address);
        let pulled = self.runtime.block_on(flight::pull(
            object,
            address,
            &self.address,
            &self.token,
            channel,
        ));
        match pulled.and_then(|()| self.reader.get_batch(&object.id)) {
            Ok(batch) => Some(batch),
            Err(e) => {
                tracing::debug!(object = %object.id, error = %e, "no node copy; fetching directly");
                None
            }
        }
    }
}

impl ExchangeStore for ExchangeClient {
    fn threshold(&self) -> usize {
        self.threshold
    }

    fn put(&self, batch: &RecordBatch, receivers: usize) -> streamrun_engine::Result<Vec<u8>> {
        let receivers = u32::try_from(receivers.max(1)).unwrap_or(u32::MAX);
        let object = ObjectRef {
            id: ObjectId::random(),
            owner: self.owner.clone(),
            node: self.node.clone(),
        };
        let bytes = encode(batch).map_err(engine)?;
        let channel = self.channel(&self.address);
        self.runtime
            .block_on(flight::put_staged(
                &object,
                Kind::Batch,
                receivers,
                &bytes,
                &self.memory_dir,
                &self.address,
                &self.token,
                channel,
            ))
            .map_err(engine)?;
        Ok(format!(
            "{}\n{}\n{}\n{receivers}",
            object.node, self.address, object.id
        )
        .into_bytes())
    }

    fn get(&self, reference: &[u8]) -> streamrun_engine::Result<RecordBatch> {
        let text = String::from_utf8_lossy(reference);
        let mut parts = text.splitn(4, '\n');
        let (Some(node), Some(address), Some(id)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(EngineError::Internal(format!(
                "'{text}' is not an object reference"
            )));
        };
        let id: ObjectId = id.parse().map_err(engine)?;
        let object = ObjectRef {
            id,
            owner: self.owner.clone(),
            node: node.to_owned(),
        };
        let shared = parts
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(1)
            > 1;
        let batch = if node == self.node {
            self.reader.get_batch(&id).map_err(engine)?
        } else if let Some(batch) = shared.then(|| self.pulled(&object, address)).flatten() {
            batch
        } else {
            let channel = self.channel(address);
            self.runtime
                .block_on(flight::fetch_over(&object, address, &self.token, channel))
                .map_err(engine)?
        };
        // This receiver is the object's only one: it can go (a mapping outlives the file).
        let channel = self.channel(address);
        self.runtime
            .block_on(flight::release(&object, address, &self.token, channel))
            .map_err(engine)?;
        Ok(batch)
    }
}
