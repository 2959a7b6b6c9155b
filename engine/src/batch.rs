//! The data on every edge: an Arrow [`RecordBatch`], and how an edge splits it across workers.

use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::row::{RowConverter, SortField};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// An Arrow batch as it travels on a timely edge.
///
/// Inside a process, batches move between worker threads by pointer: no copy, no encoding.
/// Between processes, timely serializes the message; `Batch` then encodes itself as an Arrow
/// IPC stream, so that the bytes on the wire are Arrow's own format.
#[derive(Clone, Debug)]
pub struct Batch(pub RecordBatch);

impl Batch {
    /// The number of rows.
    pub fn num_rows(&self) -> usize {
        self.0.num_rows()
    }
}

impl From<RecordBatch> for Batch {
    fn from(batch: RecordBatch) -> Self {
        Batch(batch)
    }
}

/// Where large batches travel between processes: a node's object store. A batch of at least
/// [`ExchangeStore::threshold`] bytes that crosses processes is put in the store, and only
/// its reference travels in the timely message; the receiver reads it from the store (in
/// place on the same node).
pub trait ExchangeStore: Send + Sync {
    /// Batches of at least this many bytes go through the store.
    fn threshold(&self) -> usize;
    /// Stores `batch` for `receivers` receivers, each of which reads it once, returning a
    /// reference to it.
    fn put(&self, batch: &RecordBatch, receivers: usize) -> Result<Vec<u8>>;
    /// The batch a reference names.
    fn get(&self, reference: &[u8]) -> Result<RecordBatch>;
}

static EXCHANGE_STORE: std::sync::RwLock<Option<Arc<dyn ExchangeStore>>> =
    std::sync::RwLock::new(None);
static STORED_BATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static STORED_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sends this process's large cross-process batches through `store` (or inline again, with
/// `None`).
pub fn set_exchange_store(store: Option<Arc<dyn ExchangeStore>>) {
    *EXCHANGE_STORE.write().unwrap_or_else(|p| p.into_inner()) = store;
}

fn exchange_store() -> Option<Arc<dyn ExchangeStore>> {
    EXCHANGE_STORE
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Batches, and their bytes, that this process sent through the exchange store.
pub fn exchanged_through_store() -> (u64, u64) {
    use std::sync::atomic::Ordering;
    (
        STORED_BATCHES.load(Ordering::Relaxed),
        STORED_BYTES.load(Ordering::Relaxed),
    )
}

/// Batches of this thread put in the exchange store and not yet written, with their
/// references. Timely serializes every message twice, first to size it and then to write it:
/// the sizing pass puts the batch, the writing pass takes its reference from here. Each send
/// is thus one object with one receiver, which releases it once read; a broadcast's copies
/// are separate sends, and separate objects. The batches are held, so that their buffers
/// cannot be reused by another batch while they are remembered.
const RECENT_PUTS: usize = 8;

thread_local! {
    static RECENT: std::cell::RefCell<std::collections::VecDeque<(RecordBatch, Vec<u8>)>> =
        const { std::cell::RefCell::new(std::collections::VecDeque::new()) };
}

/// Broadcast batches put in the store for several receivers, with their references and how
/// many more serializations will use them (two per receiver: sizing and writing).
const SHARED_PUTS: usize = 8;

thread_local! {
    static SHARED: std::cell::RefCell<std::collections::VecDeque<(RecordBatch, Vec<u8>, usize)>> =
        const { std::cell::RefCell::new(std::collections::VecDeque::new()) };
}

/// Puts `batch`, about to be broadcast, in the exchange store once for its `receivers` in
/// other processes, when there is a store and the batch reaches its threshold: each of
/// their messages then carries the same reference, and the receivers of a node read one
/// copy of it.
pub(crate) fn share(batch: &RecordBatch, receivers: usize) -> Result<()> {
    match exchange_store() {
        Some(store) => share_in(&*store, batch, receivers),
        None => Ok(()),
    }
}

fn share_in(store: &dyn ExchangeStore, batch: &RecordBatch, receivers: usize) -> Result<()> {
    if receivers < 2 || batch.get_array_memory_size() < store.threshold() {
        return Ok(());
    }
    let reference = store.put(batch, receivers)?;
    count_stored(batch);
    SHARED.with(|shared| {
        let mut shared = shared.borrow_mut();
        if shared.len() >= SHARED_PUTS {
            shared.pop_front();
        }
        shared.push_back((batch.clone(), reference, 2 * receivers));
    });
    Ok(())
}

fn count_stored(batch: &RecordBatch) {
    STORED_BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    STORED_BYTES.fetch_add(
        batch.get_array_memory_size() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Whether `a` and `b` share every column (clones of one batch).
fn same_columns(a: &RecordBatch, b: &RecordBatch) -> bool {
    a.num_rows() == b.num_rows()
        && a.num_columns() == b.num_columns()
        && a.columns()
            .iter()
            .zip(b.columns())
            .all(|(x, y)| Arc::ptr_eq(x, y))
}

/// The reference of `batch` in `store`: put now, or remembered from a recent put.
fn stored_reference(batch: &RecordBatch, store: &dyn ExchangeStore) -> Result<Vec<u8>> {
    let shared = SHARED.with(|shared| {
        let mut shared = shared.borrow_mut();
        let at = shared.iter().position(|(b, _, _)| same_columns(b, batch))?;
        let entry = shared.get_mut(at)?;
        entry.2 -= 1;
        let reference = entry.1.clone();
        if entry.2 == 0 {
            shared.remove(at);
        }
        Some(reference)
    });
    if let Some(reference) = shared {
        return Ok(reference);
    }
    let known = RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        let at = recent.iter().position(|(b, _)| same_columns(b, batch))?;
        recent.remove(at).map(|(_, r)| r)
    });
    if let Some(reference) = known {
        return Ok(reference);
    }
    let reference = store.put(batch, 1)?;
    count_stored(batch);
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        if recent.len() >= RECENT_PUTS {
            recent.pop_front();
        }
        recent.push_back((batch.clone(), reference.clone()));
    });
    Ok(reference)
}

/// The first byte of a serialized batch: what follows.
const INLINE: u8 = 0;
const STORED: u8 = 1;

impl Serialize for Batch {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let size = self.0.get_array_memory_size();
        if let Some(store) = exchange_store().filter(|s| size >= s.threshold()) {
            let mut bytes = vec![STORED];
            bytes.extend(
                stored_reference(&self.0, store.as_ref()).map_err(serde::ser::Error::custom)?,
            );
            return serializer.serialize_bytes(&bytes);
        }
        let mut bytes = Vec::with_capacity(size + 1024);
        bytes.push(INLINE);
        let mut writer = StreamWriter::try_new(&mut bytes, &self.0.schema())
            .map_err(serde::ser::Error::custom)?;
        writer.write(&self.0).map_err(serde::ser::Error::custom)?;
        writer.finish().map_err(serde::ser::Error::custom)?;
        drop(writer);
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(deserializer)?;
        match bytes.first() {
            Some(&STORED) => {
                let store = exchange_store().ok_or_else(|| {
                    serde::de::Error::custom(
                        "a batch came through the object store, but this process has none",
                    )
                })?;
                store
                    .get(&bytes[1..])
                    .map(Batch)
                    .map_err(serde::de::Error::custom)
            }
            Some(&INLINE) => {
                let mut cursor = std::io::Cursor::new(bytes.into_vec());
                cursor.set_position(1);
                let mut reader =
                    StreamReader::try_new(cursor, None).map_err(serde::de::Error::custom)?;
                match reader.next() {
                    Some(batch) => Ok(Batch(batch.map_err(serde::de::Error::custom)?)),
                    None => Err(serde::de::Error::custom(
                        "an Arrow IPC stream without a batch",
                    )),
                }
            }
            _ => Err(serde::de::Error::custom("not a serialized batch")),
        }
    }
}

/// The seed of the hash that routes rows to workers. It is fixed so that every process of a
/// job, on every machine, sends a key to the same worker.
const ROUTING_SEED: u64 = 0x5eed_57a7_e5a1_u64;

/// Hashes the given key columns of `batch`, one hash per row, the same in every process.
///
/// Keys are first encoded with Arrow's row format, so every Arrow type can be a key and equal
/// keys of any type hash equally.
pub fn hash_rows(batch: &RecordBatch, key_indices: &[usize]) -> Result<Vec<u64>> {
    let columns: Vec<ArrayRef> = key_indices
        .iter()
        .map(|&i| Arc::clone(batch.column(i)))
        .collect();
    let fields = columns
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect();
    let converter =
        RowConverter::new(fields).map_err(|e| Error::arrow("encoding the key columns", e))?;
    let rows = converter
        .convert_columns(&columns)
        .map_err(|e| Error::arrow("encoding the key columns", e))?;
    Ok(rows.iter().map(|row| key_hash(row.as_ref())).collect())
}

/// The hash of a key encoded in Arrow's row format: the same in every process, and the
/// one that both routing and keyed state use to find a key's group.
pub fn key_hash(row: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(ROUTING_SEED).hash_one(row)
}

/// Resolves column names against a schema, naming the missing column and the ones available.
pub fn column_indices(schema: &SchemaRef, names: &[String], what: &str) -> Result<Vec<usize>> {
    names
        .iter()
        .map(|name| {
            schema.index_of(name).map_err(|_| {
                Error::Plan(format!(
                    "{what}: unknown column '{name}' (the input has: {})",
                    column_list(schema)
                ))
            })
        })
        .collect()
}

/// The columns of a schema as `a, b, c`, for error messages.
pub fn column_list(schema: &SchemaRef) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if names.is_empty() {
        "no columns".to_owned()
    } else {
        names.join(", ")
    }
}

/// How many key groups the key space is cut into. A key's group is the hash of its key
/// columns modulo this; a worker owns a contiguous range of groups
/// ([`worker_key_groups`]). Keyed state is snapshotted and restored by group ranges, which is
/// what lets a later rescale move state between workers. Jobs have at most this many workers.
pub const KEY_GROUPS: u32 = 1024;

/// The key group of a key hash.
pub fn key_group(hash: u64) -> u32 {
    (hash % u64::from(KEY_GROUPS)) as u32
}

/// The worker that owns key group `group` among `workers`.
pub fn worker_of_group(group: u32, workers: usize) -> usize {
    (group as usize * workers) / KEY_GROUPS as usize
}

/// The key groups worker `index` of `workers` owns.
pub fn worker_key_groups(index: usize, workers: usize) -> std::ops::Range<u32> {
    let first = (0..KEY_GROUPS).find(|&g| worker_of_group(g, workers) >= index);
    let start = first.unwrap_or(KEY_GROUPS);
    let end = (start..KEY_GROUPS)
        .find(|&g| worker_of_group(g, workers) > index)
        .unwrap_or(KEY_GROUPS);
    start..end
}

/// Splits `batch` into at most `parts` batches by the key group of its key columns (part `i`
/// gets the rows of the groups worker `i` owns); returns `(part index, batch)` for every
/// non-empty part.
pub fn split_by_hash(
    batch: &RecordBatch,
    key_indices: &[usize],
    parts: usize,
) -> Result<Vec<(usize, RecordBatch)>> {
    if parts <= 1 || batch.num_rows() == 0 {
        return Ok(vec![(0, batch.clone())]);
    }
    let hashes = hash_rows(batch, key_indices)?;
    let mut indices: Vec<Vec<u32>> = vec![Vec::new(); parts];
    for (row, hash) in hashes.iter().enumerate() {
        // Rows of a batch never exceed u32::MAX: Arrow's offsets are i32 for most types.
        indices[worker_of_group(key_group(*hash), parts)].push(row as u32);
    }
    let mut out = Vec::with_capacity(parts);
    for (part, rows) in indices.into_iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        if rows.len() == batch.num_rows() {
            out.push((part, batch.clone()));
            continue;
        }
        let taken = take_record_batch(batch, &UInt32Array::from(rows))
            .map_err(|e| Error::arrow("splitting a batch by key", e))?;
        out.push((part, taken));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn sample() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    None,
                    Some("b"),
                    Some("a"),
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .expect("valid batch")
    }

    #[test]
    fn workers_own_contiguous_ranges_covering_every_key_group() {
        for workers in [1, 2, 3, 7, 64, KEY_GROUPS as usize] {
            let mut next = 0;
            for w in 0..workers {
                let range = worker_key_groups(w, workers);
                assert_eq!(range.start, next, "{workers} workers");
                assert!(range.clone().all(|g| worker_of_group(g, workers) == w));
                next = range.end;
            }
            assert_eq!(next, KEY_GROUPS, "{workers} workers");
        }
    }

    #[test]
    fn serde_round_trip_is_exact() {
        let batch = Batch(sample());
        let json = serde_json::to_vec(&batch).expect("serialize");
        let back: Batch = serde_json::from_slice(&json).expect("deserialize");
        assert_eq!(back.0, batch.0);
    }

    #[test]
    fn equal_keys_go_to_the_same_part_and_no_row_is_lost() {
        let batch = sample();
        let parts = split_by_hash(&batch, &[0], 3).expect("split");
        let total: usize = parts.iter().map(|(_, b)| b.num_rows()).sum();
        assert_eq!(total, batch.num_rows());
        let part_of_a: Vec<usize> = parts
            .iter()
            .filter(|(_, b)| {
                let keys = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("utf8");
                keys.iter().any(|k| k == Some("a"))
            })
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(part_of_a.len(), 1, "key 'a' was split across parts");
    }

    #[test]
    fn unknown_column_names_the_available_ones() {
        let batch = sample();
        let err = column_indices(&batch.schema(), &["x".to_owned()], "key_by")
            .expect_err("x does not exist");
        let message = err.to_string();
        assert!(
            message.contains("'x'") && message.contains("k, v"),
            "{message}"
        );
    }

    /// A test double of an object store that counts its puts.
    struct CountingStore(std::sync::atomic::AtomicUsize);

    impl ExchangeStore for CountingStore {
        fn threshold(&self) -> usize {
            0
        }
        fn put(&self, _: &RecordBatch, _: usize) -> Result<Vec<u8>> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(format!("object-{n}").into_bytes())
        }
        fn get(&self, _: &[u8]) -> Result<RecordBatch> {
            Err(Error::Internal("not used".into()))
        }
    }

    #[test]
    fn each_send_of_a_batch_is_put_once_however_timely_serializes_it() {
        let store = CountingStore(std::sync::atomic::AtomicUsize::new(0));
        let batch = RecordBatch::try_from_iter([(
            "v",
            Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3])) as ArrayRef,
        )])
        .expect("batch");
        // Sizing, then writing: one object.
        let first = stored_reference(&batch, &store).expect("put");
        let again = stored_reference(&batch.clone(), &store).expect("put");
        assert_eq!(first, again);
        assert_eq!(store.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The same batch sent again (a broadcast's next copy): another object, as each
        // receiver releases its own.
        let next = stored_reference(&batch, &store).expect("put");
        assert_ne!(next, first);
        assert_eq!(stored_reference(&batch, &store).expect("put"), next);
        // A broadcast to three workers of other processes: one object, for all their sends.
        let put_before = store.0.load(std::sync::atomic::Ordering::SeqCst);
        share_in(&store, &batch, 3).expect("share");
        let shared: Vec<Vec<u8>> = (0..6)
            .map(|_| stored_reference(&batch.clone(), &store).expect("send"))
            .collect();
        assert!(shared.iter().all(|r| r == &shared[0]));
        assert_eq!(
            store.0.load(std::sync::atomic::Ordering::SeqCst),
            put_before + 1
        );
        // Its sends used up, the same batch sent again is a new object.
        assert_ne!(stored_reference(&batch, &store).expect("put"), shared[0]);
        // Another batch with equal values is another object.
        let other = RecordBatch::try_from_iter([(
            "v",
            Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3])) as ArrayRef,
        )])
        .expect("batch");
        assert_ne!(stored_reference(&other, &store).expect("put"), first);
    }
}
