//! # streamrun-store
//!
//! The node-local object store: immutable objects (Arrow record batches, and raw bytes for
//! everything else), addressed by an [`ObjectRef`] that names the object, its owner and its
//! node.
//!
//! - **In place, across processes.** An object is one file: a batch is an Arrow IPC file,
//!   bytes are themselves. A file is written under a temporary name and renamed into place,
//!   and never changes after that. The memory tier is a directory on a RAM file system
//!   (`/dev/shm` by default). A reader in any process of the node maps the file and decodes
//!   the batch over the mapping: its buffers point into the shared pages, and a get costs the
//!   same whatever the object's size ([`read_batch`], [`StoreReader`]).
//! - **A memory cap, and spilling.** Before a put that would pass the memory cap, the store
//!   first drops cached copies of remote objects, least recently used first. It then spills
//!   primary copies to the spill directory on disk, also least recently used first. A get of
//!   a spilled object brings it back to memory when there is room, and otherwise reads it
//!   from disk. A put that fits neither tier waits for room (deletes) up to a timeout, then
//!   fails with [`StoreError::Full`], naming both caps. Nothing stored is ever dropped to
//!   make room.
//! - **Puts that cost nothing, or little.** A producer can build its batch in store memory
//!   ([`build`]): the put then writes only metadata. Objects of at most 64 KiB share slab
//!   files, so a small put is a copy into a mapping; their ids say where they lie, so any
//!   process of the node finds them.
//!
//! Between nodes, [`flight`] serves a store's objects over Arrow Flight and fetches them,
//! keeping a cached copy; [`exchange`] is what a job process uses to send batches through
//! its node's store.
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use streamrun_store::{LocalStore, StoreConfig};
//!
//! let root = tempfile::tempdir()?;
//! let store = LocalStore::open("node-1", StoreConfig::in_dir(root.path(), 64 << 20, 1 << 30))?;
//! let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
//! let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])?;
//! let object = store.put_batch("job-1", &batch)?;
//! assert_eq!(store.get_batch(&object.id)?, batch);
//! store.delete(&object.id)?;
//! assert!(!store.contains(&object.id));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod build;
pub mod exchange;
pub mod flight;
mod slab;

pub use build::{BatchBuilder, StoreBufferMut};

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::error::ArrowError;
use arrow::ipc::convert::try_fb_to_schema;
use arrow::ipc::reader::{FileDecoder, read_footer_length};
use arrow::ipc::root_as_footer;
use arrow::ipc::writer::FileWriter;

/// An object's id: 128 random bits, written as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(u128);

impl ObjectId {
    /// A new random id.
    pub fn random() -> Self {
        ObjectId(rand::random())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for ObjectId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 32 {
            return Err(StoreError::BadId(s.to_owned()));
        }
        u128::from_str_radix(s, 16)
            .map(ObjectId)
            .map_err(|_| StoreError::BadId(s.to_owned()))
    }
}

/// Where an object is: its id, its owner (the job or process that put it) and its node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// The object.
    pub id: ObjectId,
    /// Who put it.
    pub owner: String,
    /// The node that holds its primary copy.
    pub node: String,
}

/// What an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An Arrow record batch (an Arrow IPC file).
    Batch,
    /// Raw bytes.
    Bytes,
}

impl Kind {
    fn extension(self) -> &'static str {
        match self {
            Kind::Batch => "arrow",
            Kind::Bytes => "bin",
        }
    }
}

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object has this id here.
    #[error("object {0} is not in this store (deleted, or never put here)")]
    NotFound(ObjectId),
    /// The store already holds an object with this id.
    #[error("object {0} is already in this store")]
    Exists(ObjectId),
    /// An id that is not 32 hex digits.
    #[error("'{0}' is not an object id (32 hex digits)")]
    BadId(String),
    /// The object is of the other kind.
    #[error("object {id} holds {found:?}, not {wanted:?}")]
    WrongKind {
        /// The object.
        id: ObjectId,
        /// What it holds.
        found: Kind,
        /// What was asked for.
        wanted: Kind,
    },
    /// Neither tier had room for a put within the timeout.
    #[error(
        "the object store is full: {size} bytes fit neither in memory (cap {memory_cap} bytes, {memory_used} used) nor on disk (cap {disk_cap} bytes, {disk_used} used) after waiting {waited:?} for room; delete objects or raise the caps"
    )]
    Full {
        /// The object's size.
        size: u64,
        /// The memory cap.
        memory_cap: u64,
        /// Bytes in memory when the put gave up.
        memory_used: u64,
        /// The disk cap.
        disk_cap: u64,
        /// Bytes on disk when the put gave up.
        disk_used: u64,
        /// How long it waited.
        waited: Duration,
    },
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An object could not be fetched from another node.
    #[error("cannot fetch object {id} from node {node} at {address}: {reason}")]
    Remote {
        /// The object.
        id: ObjectId,
        /// The node holding it.
        node: String,
        /// Where that node serves its objects.
        address: String,
        /// Why.
        reason: String,
    },
    /// A builder was asked for more room than it was created with.
    #[error(
        "object {id} was built with room for {capacity} bytes of buffers; {asked} are asked for"
    )]
    Capacity {
        /// The object.
        id: ObjectId,
        /// Its body's capacity.
        capacity: usize,
        /// What the buffers would need.
        asked: usize,
    },
    /// A batch could not be encoded or decoded.
    #[error("{context}: {source}")]
    Arrow {
        /// What was being done.
        context: String,
        /// The cause.
        source: ArrowError,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

fn arrow(context: impl Into<String>) -> impl FnOnce(ArrowError) -> StoreError {
    let context = context.into();
    move |source| StoreError::Arrow { context, source }
}

/// The store's result type.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Where a store keeps its objects, and its limits.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The memory tier: a directory on a RAM file system.
    pub memory_dir: PathBuf,
    /// The disk tier, for spilled objects.
    pub spill_dir: PathBuf,
    /// Bytes the memory tier may hold.
    pub memory_cap: u64,
    /// Bytes the disk tier may hold.
    pub disk_cap: u64,
    /// How long a put waits for room before it fails.
    pub put_timeout: Duration,
}

impl StoreConfig {
    /// Both tiers under `root` (`memory/`, `spill/`), with the given caps and a 10 s put
    /// timeout: for tests, and where no RAM file system is at hand.
    pub fn in_dir(root: &Path, memory_cap: u64, disk_cap: u64) -> Self {
        StoreConfig {
            memory_dir: root.join("memory"),
            spill_dir: root.join("spill"),
            memory_cap,
            disk_cap,
            put_timeout: Duration::from_secs(10),
        }
    }

    /// The memory tier in `/dev/shm/streamrun-<node>` when there is a `/dev/shm`, the spill
    /// tier under `spill_root`.
    pub fn for_node(node: &str, spill_root: &Path, memory_cap: u64, disk_cap: u64) -> Self {
        let shm = Path::new("/dev/shm");
        let memory_dir = if shm.is_dir() {
            shm.join(format!("streamrun-{node}"))
        } else {
            spill_root.join("memory")
        };
        StoreConfig {
            memory_dir,
            spill_dir: spill_root.join("spill"),
            memory_cap,
            disk_cap,
            put_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Memory,
    Disk,
    /// In a slab (of the memory tier), whose room is counted per slab.
    Slab,
}

#[derive(Debug)]
struct Entry {
    /// The job or process it belongs to: released with it.
    owner: String,
    /// References beyond the owner's: the object goes when they are released and the
    /// owner is done with it.
    refs: u32,
    size: u64,
    kind: Kind,
    tier: Tier,
    /// A primary copy is spilled under pressure; a cached copy of a remote object is dropped.
    primary: bool,
    /// Last use, for LRU.
    tick: u64,
    /// Being written: counted, but not yet readable or movable.
    writing: bool,
}

/// Small objects whose batch the store keeps decoded, so that a get in this process is a
/// lookup (as Ray keeps small objects in its in-process memory store): at most this many
/// bytes of them, of at most [`SMALL_OBJECT_BYTES`] each.
const DECODED_CACHE_BYTES: usize = 64 << 20;
/// Batches from this size up are put by copying their buffers, on several threads, into a
/// file built in place. Below it, writing the encoded file costs less: the kernel's write
/// allocates tmpfs pages without a fault per page.
const IN_PLACE_PUT_BYTES: usize = 16 << 20;
/// The largest object whose decoded batch is kept.
const SMALL_OBJECT_BYTES: u64 = 16 << 10;

#[derive(Debug, Default)]
struct State {
    entries: HashMap<ObjectId, Entry>,
    /// Decoded small batches in the memory tier, oldest first in `decoded_order`. They map
    /// their files, so an object leaves this cache when it leaves the memory tier.
    decoded: HashMap<ObjectId, RecordBatch>,
    decoded_order: std::collections::VecDeque<ObjectId>,
    decoded_bytes: usize,
    /// Slabs of small objects, by number; `current_slab` is being filled.
    slabs: HashMap<u32, slab::Slab>,
    current_slab: Option<u32>,
    next_slab: u32,
    memory_used: u64,
    disk_used: u64,
    tick: u64,
}

impl State {
    /// Records object `id`, with one reference and used now.
    #[allow(clippy::too_many_arguments)] // an entry's fields, named at each call
    fn insert(
        &mut self,
        id: ObjectId,
        owner: &str,
        size: u64,
        kind: Kind,
        tier: Tier,
        primary: bool,
        writing: bool,
    ) {
        self.tick += 1;
        let entry = Entry {
            owner: owner.to_owned(),
            refs: 1,
            size,
            kind,
            tier,
            primary,
            tick: self.tick,
            writing,
        };
        self.entries.insert(id, entry);
    }
}

/// Counters of what the store has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes in the memory tier.
    pub memory_used: u64,
    /// Bytes in the disk tier.
    pub disk_used: u64,
    /// Objects held.
    pub objects: usize,
}

/// One node's store, owned by one process (the node agent); other processes of the node
/// read it through a [`StoreReader`].
pub struct LocalStore {
    node: String,
    config: StoreConfig,
    state: Mutex<State>,
    room: Condvar,
}

fn path_of(dir: &Path, id: &ObjectId, kind: Kind) -> PathBuf {
    dir.join(format!("{id}.{}", kind.extension()))
}

impl LocalStore {
    /// Opens a store for `node`, creating its directories.
    pub fn open(node: &str, config: StoreConfig) -> Result<LocalStore> {
        for dir in [&config.memory_dir, &config.spill_dir] {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        // Slabs a store of this node left when it died uncleanly: nobody can read them (their
        // objects' ids died with it), and their numbers are reused.
        if let Ok(entries) = std::fs::read_dir(&config.memory_dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".slab") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(LocalStore {
            node: node.to_owned(),
            config,
            state: Mutex::new(State::default()),
            room: Condvar::new(),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// A reader of this store's objects, for another process of the node.
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            memory_dir: self.config.memory_dir.clone(),
            spill_dir: self.config.spill_dir.clone(),
        }
    }

    /// The directory of a tier's files.
    fn tier_dir(&self, tier: Tier) -> &Path {
        match tier {
            Tier::Memory | Tier::Slab => &self.config.memory_dir,
            Tier::Disk => &self.config.spill_dir,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the counters consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes and objects held.
    pub fn usage(&self) -> Usage {
        let state = self.lock();
        Usage {
            memory_used: state.memory_used,
            disk_used: state.disk_used,
            objects: state.entries.len(),
        }
    }

    /// Puts a record batch; `owner` is the job or process it belongs to.
    ///
    /// A batch of at least 16 MiB is copied into a file built in place (see [`build`]), in
    /// parallel; a smaller one, or one with slices or dictionaries, is encoded and written.
    pub fn put_batch(&self, owner: &str, batch: &RecordBatch) -> Result<ObjectRef> {
        if batch.get_array_memory_size() >= IN_PLACE_PUT_BYTES && build::copyable_batch(batch) {
            let mut builder = self.batch_builder(owner, batch.schema(), build::body_size(batch))?;
            if let Some(columns) = builder.copy_batch(batch)? {
                return builder.finish(&columns);
            }
        }
        let bytes = encode(batch)?;
        let id = match self.put_in_slab(Kind::Batch, &bytes, owner)? {
            Some(id) => id,
            None => {
                let id = ObjectId::random();
                self.put_encoded(id, Kind::Batch, &bytes, true, owner)?;
                id
            }
        };
        self.keep_decoded(&id, batch);
        Ok(self.reference(id, owner))
    }

    /// Puts raw bytes.
    pub fn put_bytes(&self, owner: &str, data: &[u8]) -> Result<ObjectRef> {
        if let Some(id) = self.put_in_slab(Kind::Bytes, data, owner)? {
            return Ok(self.reference(id, owner));
        }
        let id = ObjectId::random();
        self.put_encoded(id, Kind::Bytes, data, true, owner)?;
        Ok(self.reference(id, owner))
    }

    /// Keeps a copy of another node's object, which the store may drop under pressure
    /// (it is never spilled): what a remote get caches. Only in memory, and without waiting:
    /// when there is no room, it fails at once with [`StoreError::Full`]. It goes at the
    /// latest with its `owner`'s other objects ([`release_owner`](Self::release_owner)).
    pub fn put_cached(&self, owner: &str, id: ObjectId, kind: Kind, encoded: &[u8]) -> Result<()> {
        match self.put_encoded(id, kind, encoded, false, owner) {
            // Another caller cached it first.
            Err(StoreError::Exists(_)) => Ok(()),
            other => other,
        }
    }

    /// Adds a reference to object `id`: it stays until every reference is released.
    pub fn add_ref(&self, id: &ObjectId) -> Result<()> {
        let mut state = self.lock();
        let entry = state.entries.get_mut(id).ok_or(StoreError::NotFound(*id))?;
        entry.refs += 1;
        Ok(())
    }

    /// Releases a reference to object `id` (the put holds the first); the object is deleted
    /// when none remains. Returns whether it was.
    pub fn release(&self, id: &ObjectId) -> Result<bool> {
        let mut state = self.lock();
        let entry = state
            .entries
            .get_mut(id)
            .filter(|e| !e.writing)
            .ok_or(StoreError::NotFound(*id))?;
        entry.refs = entry.refs.saturating_sub(1);
        if entry.refs > 0 {
            return Ok(false);
        }
        let path = self.remove_locked(&mut state, id)?;
        drop(state);
        self.room.notify_all();
        remove(path)?;
        Ok(true)
    }

    /// Forgets object `id` (not one being written) and frees its room; returns its file, for
    /// the caller to remove once the lock is released.
    fn remove_locked(&self, state: &mut State, id: &ObjectId) -> Result<Option<PathBuf>> {
        if state.entries.get(id).is_none_or(|e| e.writing) {
            return Err(StoreError::NotFound(*id));
        }
        let entry = state.entries.remove(id).ok_or(StoreError::NotFound(*id))?;
        if let Some(gone) = state.decoded.remove(id) {
            state.decoded_bytes -= gone.get_array_memory_size();
        }
        let dir = match entry.tier {
            Tier::Memory => {
                state.memory_used -= entry.size;
                &self.config.memory_dir
            }
            Tier::Disk => {
                state.disk_used -= entry.size;
                &self.config.spill_dir
            }
            Tier::Slab => {
                let Some((number, offset)) = slab::slab_location(id) else {
                    return Ok(None);
                };
                let empty = state.slabs.get_mut(&number).is_some_and(|slab| {
                    slab.kill(offset);
                    slab.live -= 1;
                    slab.live == 0
                });
                if empty && state.current_slab != Some(number) {
                    return Ok(Some(self.free_slab(state, number)));
                }
                return Ok(None);
            }
        };
        Ok(Some(path_of(dir, id, entry.kind)))
    }

    /// Forgets slab `number`, now empty, and frees its room; returns its file.
    fn free_slab(&self, state: &mut State, number: u32) -> PathBuf {
        if state.slabs.remove(&number).is_some() {
            state.memory_used -= slab::SLAB_BYTES as u64;
        }
        slab::slab_path(&self.config.memory_dir, number)
    }

    /// Puts a small object into the current slab, starting a new one when it is full.
    /// `None` when the object is too large for a slab, or slabs have their share of memory
    /// (a quarter of the cap) and a new one cannot be had without waiting.
    fn put_in_slab(&self, kind: Kind, data: &[u8], owner: &str) -> Result<Option<ObjectId>> {
        if data.len() > slab::SLAB_OBJECT_MAX {
            return Ok(None);
        }
        let mut state = self.lock();
        let current = state
            .current_slab
            .filter(|n| state.slabs.get(n).is_some_and(|s| s.fits(data.len())));
        let number = match current {
            Some(number) => number,
            None => {
                let slab_bytes = slab::SLAB_BYTES as u64;
                let share = (state.slabs.len() as u64 + 1) * slab_bytes;
                if share > self.config.memory_cap / 4
                    || self.make_room(&mut state, slab_bytes, None)? != Some(Tier::Memory)
                {
                    return Ok(None);
                }
                let number = state.next_slab;
                state.next_slab = (number + 1) & 0xff_ffff;
                let created = match slab::Slab::create(&self.config.memory_dir, number) {
                    Ok(slab) => slab,
                    Err(e) => {
                        // The room taken for it goes back; the object becomes a file.
                        tracing::warn!(error = %e, "no new slab; a small object goes to a file");
                        return Ok(None);
                    }
                };
                state.memory_used += slab_bytes;
                state.slabs.insert(number, created);
                let emptied = state
                    .current_slab
                    .replace(number)
                    .filter(|old| state.slabs.get(old).is_some_and(|s| s.live == 0));
                if let Some(old) = emptied {
                    let path = self.free_slab(&mut state, old);
                    let _ = std::fs::remove_file(path);
                }
                number
            }
        };
        let Some(slab) = state.slabs.get_mut(&number) else {
            return Ok(None);
        };
        let id = slab.append(number, kind, data);
        let size = slab::Slab::slot_size(data.len()) as u64;
        state.insert(id, owner, size, kind, Tier::Slab, true, false);
        Ok(Some(id))
    }

    /// Object `id`'s bytes if it lives in a slab, checked to be of `kind`; marks it used.
    fn slab_read(&self, id: &ObjectId, kind: Kind) -> Result<Option<bytes::Bytes>> {
        let mut state = self.lock();
        state.tick += 1;
        let tick = state.tick;
        let Some(entry) = state.entries.get_mut(id).filter(|e| !e.writing) else {
            return Err(StoreError::NotFound(*id));
        };
        if entry.tier != Tier::Slab {
            return Ok(None);
        }
        if entry.kind != kind {
            return Err(StoreError::WrongKind {
                id: *id,
                found: entry.kind,
                wanted: kind,
            });
        }
        entry.tick = tick;
        let slab = slab::slab_location(id).and_then(|(n, _)| state.slabs.get(&n));
        slab.ok_or(StoreError::NotFound(*id))?
            .read(id, kind)
            .map(Some)
    }

    /// Deletes every object `owner` put, whatever references remain: what happens to a
    /// job's objects when the job ends. Returns how many went.
    pub fn release_owner(&self, owner: &str) -> Result<usize> {
        let mut state = self.lock();
        let ids: Vec<ObjectId> = state
            .entries
            .iter()
            .filter(|(_, e)| e.owner == owner && !e.writing)
            .map(|(id, _)| *id)
            .collect();
        let mut paths: Vec<PathBuf> = ids
            .iter()
            .filter_map(|id| self.remove_locked(&mut state, id).ok())
            .flatten()
            .collect();
        // The slab being filled goes too if the job's end emptied it: what ends with a job
        // leaves no file behind.
        let emptied = state
            .current_slab
            .filter(|n| state.slabs.get(n).is_some_and(|s| s.live == 0));
        if let Some(number) = emptied {
            state.current_slab = None;
            paths.push(self.free_slab(&mut state, number));
        }
        drop(state);
        self.room.notify_all();
        let mut failed = None;
        for path in &paths {
            if let Err(e) = std::fs::remove_file(path) {
                failed.get_or_insert(StoreError::Io {
                    context: format!("deleting {}", path.display()),
                    source: e,
                });
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(ids.len()),
        }
    }

    fn reference(&self, id: ObjectId, owner: &str) -> ObjectRef {
        ObjectRef {
            id,
            owner: owner.to_owned(),
            node: self.node.clone(),
        }
    }

    fn put_encoded(
        &self,
        id: ObjectId,
        kind: Kind,
        data: &[u8],
        primary: bool,
        owner: &str,
    ) -> Result<()> {
        let tier = self.reserve(id, kind, data.len() as u64, primary, owner)?;
        let dir = self.tier_dir(tier);
        let written = write_file(dir, &id, kind, data);
        self.commit(id, written)
    }

    /// Takes in object `id`, which another process of the node wrote complete to
    /// [`staging_path`] in the memory tier: the store accounts for it (spilling others, or
    /// it, as a put would) and publishes it, with `refs` references (its readers, each of
    /// which releases one). The way a process puts an object with one copy.
    pub fn adopt(&self, owner: &str, id: ObjectId, kind: Kind, refs: u32) -> Result<()> {
        let staged = staging_path(&self.config.memory_dir, &id);
        let size = std::fs::metadata(&staged)
            .map_err(io(format!("reading {}", staged.display())))?
            .len();
        // A file another process wrote is checked once, here, so that reads can trust it.
        let checked = match kind {
            Kind::Batch => decode(&staged, true).map(|_| ()),
            Kind::Bytes => Ok(()),
        };
        let tier = match checked.and_then(|()| self.reserve(id, kind, size, true, owner)) {
            Ok(tier) => tier,
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                return Err(e);
            }
        };
        let moved = match tier {
            Tier::Memory | Tier::Slab => {
                std::fs::rename(&staged, path_of(&self.config.memory_dir, &id, kind))
                    .map_err(io(format!("publishing {}", staged.display())))
            }
            Tier::Disk => move_file(&staged, &path_of(&self.config.spill_dir, &id, kind)),
        };
        if moved.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        if moved.is_ok()
            && refs > 1
            && let Some(entry) = self.lock().entries.get_mut(&id)
        {
            entry.refs = refs;
        }
        self.commit(id, moved)
    }

    /// Makes room for `size` bytes and records object `id` as being written there. An id the
    /// store already holds is refused.
    fn reserve(
        &self,
        id: ObjectId,
        kind: Kind,
        size: u64,
        primary: bool,
        owner: &str,
    ) -> Result<Tier> {
        let started = Instant::now();
        let mut state = self.lock();
        let tier = loop {
            if state.entries.contains_key(&id) {
                return Err(StoreError::Exists(id));
            }
            let room = self.make_room(&mut state, size, None)?;
            if let Some(tier) = room.filter(|t| primary || *t == Tier::Memory) {
                break tier;
            }
            // A cached copy lives in memory or not at all (on disk nothing would ever drop
            // it), and is not worth waiting for.
            let waited = started.elapsed();
            if !primary || waited >= self.config.put_timeout {
                return Err(StoreError::Full {
                    size,
                    memory_cap: self.config.memory_cap,
                    memory_used: state.memory_used,
                    disk_cap: self.config.disk_cap,
                    disk_used: state.disk_used,
                    waited,
                });
            }
            state = self
                .room
                .wait_timeout(state, self.config.put_timeout - waited)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        };
        // Reserve the room, then write without holding the lock.
        match tier {
            Tier::Memory | Tier::Slab => state.memory_used += size,
            Tier::Disk => state.disk_used += size,
        }
        state.insert(id, owner, size, kind, tier, primary, true);
        Ok(tier)
    }

    /// Completes the write of object `id`, or forgets it and frees its room.
    fn commit(&self, id: ObjectId, written: Result<()>) -> Result<()> {
        let mut state = self.lock();
        match written {
            Ok(()) => {
                if let Some(entry) = state.entries.get_mut(&id) {
                    entry.writing = false;
                }
                Ok(())
            }
            Err(e) => {
                drop(state);
                self.abandon(&id);
                Err(e)
            }
        }
    }

    /// Forgets object `id`, still being written, and frees its room.
    fn abandon(&self, id: &ObjectId) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.remove(id) {
            match entry.tier {
                Tier::Memory | Tier::Slab => state.memory_used -= entry.size,
                Tier::Disk => state.disk_used -= entry.size,
            }
        }
        drop(state);
        self.room.notify_all();
    }

    /// Publishes object `id`, being written at `staged` in its tier, under its name, and
    /// accounts for its final `size` in place of the `reserved` room.
    fn publish(&self, id: ObjectId, staged: &Path, reserved: u64, size: u64) -> Result<()> {
        let mut state = self.lock();
        let entry = state.entries.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        let (tier, kind) = (entry.tier, entry.kind);
        entry.size = size;
        let freed = reserved.saturating_sub(size);
        match tier {
            Tier::Memory | Tier::Slab => state.memory_used -= freed,
            Tier::Disk => state.disk_used -= freed,
        }
        drop(state);
        self.room.notify_all();
        let dir = self.tier_dir(tier);
        std::fs::rename(staged, path_of(dir, &id, kind))
            .map_err(io(format!("publishing {}", staged.display())))
    }

    /// Finds room for `size` bytes: in memory, after dropping cached copies and spilling
    /// primary ones (least recently used first, never `keep`), else on disk. `None`: neither.
    fn make_room(
        &self,
        state: &mut State,
        size: u64,
        keep: Option<ObjectId>,
    ) -> Result<Option<Tier>> {
        let fits_memory = |s: &State| s.memory_used + size <= self.config.memory_cap;
        if fits_memory(state) {
            return Ok(Some(Tier::Memory));
        }
        if size <= self.config.memory_cap {
            // (primary, last use, id): cached copies first, least recently used first.
            let mut victims: Vec<(bool, u64, ObjectId)> = state
                .entries
                .iter()
                .filter(|(id, e)| e.tier == Tier::Memory && !e.writing && Some(**id) != keep)
                .map(|(id, e)| (e.primary, e.tick, *id))
                .collect();
            victims.sort_unstable();
            // Plan first: cached copies are dropped, then primaries spilled while the disk
            // has room for them. Nothing moves unless the plan makes enough room.
            let need = state.memory_used + size - self.config.memory_cap;
            let (mut freed, mut disk) = (0u64, state.disk_used);
            let mut plan: Vec<(ObjectId, bool)> = Vec::new();
            for (primary, _, id) in &victims {
                if freed >= need {
                    break;
                }
                let Some(entry_size) = state.entries.get(id).map(|e| e.size) else {
                    continue;
                };
                if *primary {
                    if disk + entry_size > self.config.disk_cap {
                        continue;
                    }
                    disk += entry_size;
                }
                freed += entry_size;
                plan.push((*id, *primary));
            }
            if freed >= need {
                for (id, primary) in plan {
                    if let Some(gone) = state.decoded.remove(&id) {
                        state.decoded_bytes -= gone.get_array_memory_size();
                    }
                    if !primary {
                        if let Some(entry) = state.entries.remove(&id) {
                            state.memory_used -= entry.size;
                            let _ = std::fs::remove_file(path_of(
                                &self.config.memory_dir,
                                &id,
                                entry.kind,
                            ));
                        }
                        continue;
                    }
                    let Some((entry_size, kind)) = state.entries.get(&id).map(|e| (e.size, e.kind))
                    else {
                        continue;
                    };
                    let from = path_of(&self.config.memory_dir, &id, kind);
                    let to = path_of(&self.config.spill_dir, &id, kind);
                    if let Err(e) = move_file(&from, &to) {
                        // This one stays; the put may still fit on disk below.
                        tracing::warn!(object = %id, error = %e, "spilling failed");
                        continue;
                    }
                    if let Some(entry) = state.entries.get_mut(&id) {
                        entry.tier = Tier::Disk;
                    }
                    state.memory_used -= entry_size;
                    state.disk_used += entry_size;
                    tracing::debug!(object = %id, bytes = entry_size, "spilled to disk");
                }
            }
            if fits_memory(state) {
                return Ok(Some(Tier::Memory));
            }
        }
        if state.disk_used + size <= self.config.disk_cap {
            return Ok(Some(Tier::Disk));
        }
        Ok(None)
    }

    /// The file that holds object `id` now, if the store has it.
    pub fn location(&self, id: &ObjectId) -> Option<PathBuf> {
        let state = self.lock();
        let entry = state.entries.get(id).filter(|e| !e.writing)?;
        Some(match entry.tier {
            Tier::Slab => slab::slab_path(&self.config.memory_dir, slab::slab_location(id)?.0),
            Tier::Memory => path_of(&self.config.memory_dir, id, entry.kind),
            Tier::Disk => path_of(&self.config.spill_dir, id, entry.kind),
        })
    }

    /// Whether the store holds object `id`.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.lock().entries.get(id).is_some_and(|e| !e.writing)
    }

    /// Where object `id` is now, bringing it back to memory first if it was spilled and
    /// there is room; marks it used.
    fn locate(&self, id: &ObjectId, wanted: Kind) -> Result<PathBuf> {
        let mut state = self.lock();
        let (kind, tier, size) = match state.entries.get(id) {
            Some(e) if !e.writing => (e.kind, e.tier, e.size),
            _ => return Err(StoreError::NotFound(*id)),
        };
        if kind != wanted {
            return Err(StoreError::WrongKind {
                id: *id,
                found: kind,
                wanted,
            });
        }
        state.tick += 1;
        let tick = state.tick;
        let mut tier = tier;
        if tier == Tier::Disk
            && matches!(
                self.make_room(&mut state, size, Some(*id))?,
                Some(Tier::Memory)
            )
        {
            let from = path_of(&self.config.spill_dir, id, kind);
            let to = path_of(&self.config.memory_dir, id, kind);
            move_file(&from, &to)?;
            state.disk_used -= size;
            state.memory_used += size;
            tier = Tier::Memory;
        }
        if let Some(entry) = state.entries.get_mut(id) {
            entry.tick = tick;
            entry.tier = tier;
        }
        Ok(match tier {
            Tier::Memory | Tier::Slab => path_of(&self.config.memory_dir, id, kind),
            Tier::Disk => path_of(&self.config.spill_dir, id, kind),
        })
    }

    /// The batch `id`, read in place.
    pub fn get_batch(&self, id: &ObjectId) -> Result<RecordBatch> {
        {
            let mut state = self.lock();
            if let Some(batch) = state.decoded.get(id).cloned() {
                state.tick += 1;
                let tick = state.tick;
                if let Some(entry) = state.entries.get_mut(id) {
                    entry.tick = tick;
                }
                return Ok(batch);
            }
        }
        if let Some(bytes) = self.slab_read(id, Kind::Batch)? {
            let batch = decode_buffer(Buffer::from(bytes), false, &|| {
                format!("reading object {id}")
            })?;
            self.keep_decoded(id, &batch);
            return Ok(batch);
        }
        let path = self.locate(id, Kind::Batch)?;
        let batch = match read_batch(&path) {
            // Spilled between `locate` and the read: look again.
            Err(StoreError::Io { .. }) => read_batch(&self.locate(id, Kind::Batch)?)?,
            other => other?,
        };
        self.keep_decoded(id, &batch);
        Ok(batch)
    }

    /// Keeps `batch`, object `id`'s, decoded if the object is small and in memory.
    fn keep_decoded(&self, id: &ObjectId, batch: &RecordBatch) {
        let mut state = self.lock();
        let small = state
            .entries
            .get(id)
            .is_some_and(|e| e.tier != Tier::Disk && !e.writing && e.size <= SMALL_OBJECT_BYTES);
        if !small || state.decoded.contains_key(id) {
            return;
        }
        let bytes = batch.get_array_memory_size();
        while state.decoded_bytes + bytes > DECODED_CACHE_BYTES {
            let Some(old) = state.decoded_order.pop_front() else {
                break;
            };
            if let Some(gone) = state.decoded.remove(&old) {
                state.decoded_bytes -= gone.get_array_memory_size();
            }
        }
        state.decoded.insert(*id, batch.clone());
        state.decoded_order.push_back(*id);
        state.decoded_bytes += bytes;
    }

    /// The bytes `id`, read in place.
    pub fn get_bytes(&self, id: &ObjectId) -> Result<bytes::Bytes> {
        self.stored(id, Kind::Bytes)
    }

    /// Object `id` as stored, mapped: the bytes themselves, or a batch's Arrow IPC file.
    /// What a node sends another.
    pub fn get_stored(&self, id: &ObjectId) -> Result<(Kind, bytes::Bytes)> {
        let kind = self
            .lock()
            .entries
            .get(id)
            .filter(|e| !e.writing)
            .map(|e| e.kind)
            .ok_or(StoreError::NotFound(*id))?;
        Ok((kind, self.stored(id, kind)?))
    }

    /// Object `id`'s stored bytes, of `kind`, mapped.
    fn stored(&self, id: &ObjectId, kind: Kind) -> Result<bytes::Bytes> {
        if let Some(bytes) = self.slab_read(id, kind)? {
            return Ok(bytes);
        }
        let path = self.locate(id, kind)?;
        match map(&path) {
            // Spilled between `locate` and the read: look again.
            Err(StoreError::Io { .. }) => map(&self.locate(id, kind)?),
            other => other,
        }
    }

    /// Deletes object `id`; readers that mapped it keep their view until they drop it.
    pub fn delete(&self, id: &ObjectId) -> Result<()> {
        let mut state = self.lock();
        let path = self.remove_locked(&mut state, id)?;
        drop(state);
        self.room.notify_all();
        remove(path)
    }
}

impl Drop for LocalStore {
    /// The objects go with the store: the memory tier is RAM, and must not leak.
    fn drop(&mut self) {
        let state = self.lock();
        for (id, entry) in &state.entries {
            let dir = self.tier_dir(entry.tier);
            if entry.tier != Tier::Slab {
                let _ = std::fs::remove_file(path_of(dir, id, entry.kind));
            }
        }
        for number in state.slabs.keys() {
            let _ = std::fs::remove_file(slab::slab_path(&self.config.memory_dir, *number));
        }
        let _ = std::fs::remove_dir(&self.config.memory_dir);
    }
}

/// Where a process of the node writes object `id` before the store [adopts](LocalStore::adopt)
/// it.
pub fn staging_path(memory_dir: &Path, id: &ObjectId) -> PathBuf {
    memory_dir.join(format!(".{id}.stage"))
}

/// A batch as an Arrow IPC file.
pub fn encode(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 1024);
    let mut writer =
        FileWriter::try_new(&mut out, &batch.schema()).map_err(arrow("encoding a batch"))?;
    writer.write(batch).map_err(arrow("encoding a batch"))?;
    writer.finish().map_err(arrow("encoding a batch"))?;
    drop(writer);
    Ok(out)
}

fn write_file(dir: &Path, id: &ObjectId, kind: Kind, data: &[u8]) -> Result<()> {
    let path = path_of(dir, id, kind);
    let tmp = dir.join(format!(".{id}.{:016x}.tmp", rand::random::<u64>()));
    let written = File::create(&tmp)
        .and_then(|mut file| file.write_all(data))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::Io {
            context: format!("writing {}", path.display()),
            source: e,
        });
    }
    Ok(())
}

/// Gives `file` `len` bytes of real room at once: a mapped write into a sparse file on a
/// full file system would kill the process (SIGBUS) where this fails with an error.
pub(crate) fn allocate(file: &File, len: usize) -> std::io::Result<()> {
    let len = i64::try_from(len).map_err(|_| std::io::Error::other("file too large"))?;
    nix::fcntl::posix_fallocate(file, 0, len).map_err(std::io::Error::from)
}

/// Removes a file the store gave up, if there is one.
fn remove(path: Option<PathBuf>) -> Result<()> {
    match path {
        Some(path) => {
            std::fs::remove_file(&path).map_err(io(format!("deleting {}", path.display())))
        }
        None => Ok(()),
    }
}

/// Moves a file between the tiers (different file systems: copy, publish, remove).
fn move_file(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension(format!("{:016x}.moving", rand::random::<u64>()));
    let copied = std::fs::copy(from, &tmp).and_then(|_| std::fs::rename(&tmp, to));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::Io {
            context: format!("moving {} to {}", from.display(), to.display()),
            source: e,
        });
    }
    std::fs::remove_file(from).map_err(io(format!("removing {}", from.display())))
}

/// Maps a store file.
fn map(path: &Path) -> Result<bytes::Bytes> {
    let file = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    #[allow(unsafe_code)]
    // SAFETY: a store file is published by a rename once complete and never written again;
    // it is only ever unlinked, which leaves existing mappings intact.
    let mapping =
        unsafe { memmap2::Mmap::map(&file) }.map_err(io(format!("mapping {}", path.display())))?;
    Ok(bytes::Bytes::from_owner(mapping))
}

/// Reads the batch in the Arrow IPC file at `path` in place: its buffers point into the
/// file's mapping, so the cost does not grow with the batch's size. The file must be one
/// the store wrote or adopted (adoption validates it); others go through [`decode`] with
/// validation.
pub fn read_batch(path: &Path) -> Result<RecordBatch> {
    decode(path, false)
}

/// Reads the batch in the Arrow IPC file at `path` over its mapping; `validate` checks every
/// offset and string, which reads the whole file.
pub fn decode(path: &Path, validate: bool) -> Result<RecordBatch> {
    let context = || format!("reading the batch in {}", path.display());
    decode_buffer(Buffer::from(map(path)?), validate, &context)
}

/// Reads the batch in the Arrow IPC file held by `buffer`, in place; `context` names it in
/// errors. `validate` checks every offset and string.
pub fn decode_buffer(
    buffer: Buffer,
    validate: bool,
    context: &dyn Fn() -> String,
) -> Result<RecordBatch> {
    let len = buffer.len();
    if len < 10 {
        return Err(StoreError::Arrow {
            context: context(),
            source: ArrowError::IpcError("too short for an Arrow IPC file".into()),
        });
    }
    let mut tail = [0u8; 10];
    tail.copy_from_slice(&buffer[len - 10..]);
    let footer_len = read_footer_length(tail).map_err(arrow(context()))?;
    let footer_start = len
        .checked_sub(10 + footer_len)
        .ok_or_else(|| StoreError::Arrow {
            context: context(),
            source: ArrowError::IpcError("footer longer than the file".into()),
        })?;
    let footer =
        root_as_footer(&buffer[footer_start..len - 10]).map_err(|e| StoreError::Arrow {
            context: context(),
            source: ArrowError::IpcError(e.to_string()),
        })?;
    let schema_fb = footer.schema().ok_or_else(|| StoreError::Arrow {
        context: context(),
        source: ArrowError::IpcError("no schema in the footer".into()),
    })?;
    let schema = std::sync::Arc::new(try_fb_to_schema(schema_fb).map_err(arrow(context()))?);
    let decoder = FileDecoder::new(schema, footer.version());
    #[allow(unsafe_code)]
    // SAFETY: without `validate`, the file is one this store wrote with its `encode` (an Arrow
    // IPC writer) or validated when it adopted it, and it was published complete.
    let mut decoder = unsafe { decoder.with_skip_validation(!validate) };
    let block_data = |offset: i64, meta: i32, body: i64| -> Result<Buffer> {
        let start = usize::try_from(offset).ok();
        let size = usize::try_from(body)
            .ok()
            .zip(usize::try_from(meta).ok())
            .map(|(b, m)| b + m);
        match (start, size) {
            (Some(s), Some(n)) if s.checked_add(n).is_some_and(|end| end <= len) => {
                Ok(buffer.slice_with_length(s, n))
            }
            _ => Err(StoreError::Arrow {
                context: context(),
                source: ArrowError::IpcError("a block lies outside the file".into()),
            }),
        }
    };
    for block in footer.dictionaries().iter().flatten() {
        let data = block_data(block.offset(), block.metaDataLength(), block.bodyLength())?;
        decoder
            .read_dictionary(block, &data)
            .map_err(arrow(context()))?;
    }
    let block = footer
        .recordBatches()
        .and_then(|b| b.iter().next())
        .ok_or_else(|| StoreError::Arrow {
            context: context(),
            source: ArrowError::IpcError("no record batch in the file".into()),
        })?;
    let data = block_data(block.offset(), block.metaDataLength(), block.bodyLength())?;
    decoder
        .read_record_batch(block, &data)
        .map_err(arrow(context()))?
        .ok_or_else(|| StoreError::Arrow {
            context: context(),
            source: ArrowError::IpcError("an empty record batch block".into()),
        })
}

/// Reads a node's store from another process of the node: finds objects by id in the
/// memory tier, then the spill tier, and maps them.
#[derive(Debug, Clone)]
pub struct StoreReader {
    memory_dir: PathBuf,
    spill_dir: PathBuf,
}

impl StoreReader {
    /// A reader of the store with these tiers.
    pub fn new(memory_dir: PathBuf, spill_dir: PathBuf) -> Self {
        StoreReader {
            memory_dir,
            spill_dir,
        }
    }

    /// Reads object `id` with `read` from whichever tier holds it. An object moving between
    /// tiers is published in its new place before it leaves the old one, so one of three
    /// looks finds it; a file that vanishes between the look and the read sends the reader
    /// to the next.
    fn read<T>(&self, id: &ObjectId, kind: Kind, read: impl Fn(&Path) -> Result<T>) -> Result<T> {
        for dir in [&self.memory_dir, &self.spill_dir, &self.memory_dir] {
            match read(&path_of(dir, id, kind)) {
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                other => return other,
            }
        }
        Err(StoreError::NotFound(*id))
    }

    /// The batch `id`, read in place.
    pub fn get_batch(&self, id: &ObjectId) -> Result<RecordBatch> {
        if let Some(bytes) = self.slab_read(id, Kind::Batch)? {
            return decode_buffer(Buffer::from(bytes), false, &|| {
                format!("reading object {id}")
            });
        }
        self.read(id, Kind::Batch, read_batch)
    }

    /// The bytes `id`, read in place.
    pub fn get_bytes(&self, id: &ObjectId) -> Result<bytes::Bytes> {
        if let Some(bytes) = self.slab_read(id, Kind::Bytes)? {
            return Ok(bytes);
        }
        self.read(id, Kind::Bytes, map)
    }

    /// Object `id`'s bytes, if its id places it in a slab and the slab still holds it. An
    /// id that only looks like a slab object's (or one of a cached copy) is then looked for
    /// as a file.
    fn slab_read(&self, id: &ObjectId, kind: Kind) -> Result<Option<bytes::Bytes>> {
        let Some((number, _)) = slab::slab_location(id) else {
            return Ok(None);
        };
        let found = slab::map_slab(&slab::slab_path(&self.memory_dir, number))
            .and_then(|mapping| slab::read_slot(&mapping, id, kind));
        match found {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e @ StoreError::WrongKind { .. }) => Err(e),
            Err(_) => Ok(None),
        }
    }
}
