//! Building objects in store memory, so that a put costs the same whatever the size.
//!
//! A [`BatchBuilder`] is an object file being written: the producer asks it for buffers
//! ([`BatchBuilder::alloc`]), fills them in place, freezes them into Arrow [`Buffer`]s, makes
//! its columns from them, and [`finish`](BatchBuilder::finish)es. Finishing writes only the
//! Arrow IPC metadata around the buffers (a header reserved before them and a footer after)
//! and publishes the file: it does not touch the data.
//!
//! The file is laid out as an Arrow IPC file: the magic, the schema message, the record batch
//! message, whose metadata is padded so that its body starts at a fixed offset, the body (the
//! buffers, each 64-byte aligned, where the producer put them), and the footer.
//!
//! A put of a batch built elsewhere ([`LocalStore::put_batch`]) goes through the same file:
//! its buffers are copied into a builder's, in parallel for large batches.
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{ArrayRef, Int64Array};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use streamrun_store::{LocalStore, StoreConfig};
//!
//! let root = tempfile::tempdir()?;
//! let store = LocalStore::open("node-1", StoreConfig::in_dir(root.path(), 64 << 20, 1 << 30))?;
//! let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
//! let mut builder = store.batch_builder("job-1", schema, 1000 * 8)?;
//! let mut values = builder.alloc(1000 * 8)?;
//! for (i, v) in values.typed_mut::<i64>().iter_mut().enumerate() {
//!     *v = i as i64 * 2;
//! }
//! let column: ArrayRef = Arc::new(Int64Array::new(values.freeze().into(), None));
//! let object = builder.finish(&[column])?;
//! let batch = store.get_batch(&object.id)?;
//! assert_eq!(batch.num_rows(), 1000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::Arc;

use arrow::array::{ArrayData, ArrayRef, RecordBatch};
use arrow::buffer::Buffer;
use arrow::datatypes::{ArrowNativeType, DataType, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions, write_message};
use arrow::ipc::{self, Block, FieldNode, MetadataVersion};
use flatbuffers::FlatBufferBuilder;
use memmap2::{MmapOptions, MmapRaw};

use crate::{Kind, LocalStore, ObjectId, ObjectRef, Result, StoreError, arrow, io};

/// Buffers in a built object start at multiples of this, as Arrow's own writer aligns them.
const ALIGN: usize = 64;
/// The IPC file's leading magic, padded to 8 bytes.
const MAGIC: &[u8; 8] = b"ARROW1\0\0";
/// Room in the header for each field's node and buffers (at most three of 16 bytes each,
/// plus a node of 16 and the vector bookkeeping).
const HEADER_PER_FIELD: usize = 96;

pub(crate) fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Fields of `schema`, children included: one node each in a record batch message.
fn count_fields(dt: &DataType) -> usize {
    1 + match dt {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => count_fields(f.data_type()),
        DataType::Struct(fields) => fields.iter().map(|f| count_fields(f.data_type())).sum(),
        _ => 0,
    }
}

/// The encoded schema message (continuation, length, flatbuffer, padding).
fn schema_message(schema: &Schema) -> Result<Vec<u8>> {
    let options = IpcWriteOptions::default();
    let encoded = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
        schema,
        &mut DictionaryTracker::new(true),
        &options,
    );
    let mut out = Vec::new();
    write_message(&mut out, encoded, &options).map_err(arrow("encoding a schema"))?;
    Ok(out)
}

/// A writable mapping shared by a builder and the buffers it hands out.
struct Mapping(MmapRaw);

impl Mapping {
    fn ptr(&self) -> *mut u8 {
        self.0.as_mut_ptr()
    }
}

/// A buffer in store memory, writable until it is [frozen](StoreBufferMut::freeze).
pub struct StoreBufferMut {
    map: Arc<Mapping>,
    /// Offset in the file.
    start: usize,
    len: usize,
}

impl StoreBufferMut {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its bytes, to fill. They start zeroed.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        #[allow(unsafe_code)]
        // SAFETY: `start..start + len` lies in the mapping (the builder checked it against
        // its capacity), the mapping lives as long as `self.map`, and no other handle covers
        // these bytes: the builder hands out each range once, and `freeze` consumes `self`.
        unsafe {
            std::slice::from_raw_parts_mut(self.map.ptr().add(self.start), self.len)
        }
    }

    /// Its bytes as values of `T`; a trailing part too short for a whole value is left out.
    pub fn typed_mut<T: ArrowNativeType>(&mut self) -> &mut [T] {
        let n = self.len / std::mem::size_of::<T>();
        #[allow(unsafe_code)]
        // SAFETY: as in `as_mut_slice`; the start is 64-byte aligned (the builder aligns every
        // buffer), every bit pattern is a valid `T` for Arrow's native types, and `n` values
        // fit in `len` bytes.
        unsafe {
            std::slice::from_raw_parts_mut(self.map.ptr().add(self.start).cast::<T>(), n)
        }
    }

    /// Ends writing: an immutable Arrow buffer over the same bytes, without a copy.
    pub fn freeze(self) -> Buffer {
        let len = self.len;
        #[allow(unsafe_code)]
        // SAFETY: the pointer lies in the mapping, which the buffer keeps alive through its
        // owner; nothing writes these bytes any more, since `self` is consumed.
        unsafe {
            let ptr = NonNull::new_unchecked(self.map.ptr().add(self.start));
            Buffer::from_custom_allocation(ptr, len, self.map)
        }
    }
}

/// A record batch being built in store memory; see the [module](self) docs. Dropping it
/// without finishing frees its room.
pub struct BatchBuilder<'s> {
    store: &'s LocalStore,
    id: ObjectId,
    owner: String,
    schema: SchemaRef,
    staged: PathBuf,
    file: File,
    map: Arc<Mapping>,
    /// Where the body starts: magic, schema message and record batch message come before.
    body_start: usize,
    /// Bytes of body the producer may use.
    capacity: usize,
    /// Bytes of body handed out.
    used: usize,
    /// The whole file's room, as reserved in the store.
    reserved: u64,
    schema_len: usize,
    finished: bool,
}

impl LocalStore {
    /// Starts building a batch of `schema` in store memory, with room for `body_capacity`
    /// bytes of buffers (each rounded up to 64 bytes). The room is taken now, waiting for it
    /// as a put does. Dictionary, union, run-end and view types are refused: their layout
    /// needs more than buffers in place.
    pub fn batch_builder(
        &self,
        owner: &str,
        schema: SchemaRef,
        body_capacity: usize,
    ) -> Result<BatchBuilder<'_>> {
        for field in schema.fields() {
            check_type(field.data_type())?;
        }
        let schema_msg = schema_message(&schema)?;
        let fields: usize = schema
            .fields()
            .iter()
            .map(|f| count_fields(f.data_type()))
            .sum();
        let body_start = align(MAGIC.len() + schema_msg.len() + 256 + fields * HEADER_PER_FIELD);
        let capacity = align(body_capacity);
        // Then an end-of-stream marker, the footer (the schema again, one block) and its
        // length and magic.
        let tail = 8 + schema_msg.len() + 256 + 10;
        let total = body_start + capacity + tail;
        let id = ObjectId::random();
        let tier = self.reserve(id, Kind::Batch, total as u64, true, owner)?;
        let dir = self.tier_dir(tier);
        let staged = crate::staging_path(dir, &id);
        let opened = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&staged)?;
            crate::allocate(&file, total)?;
            let map = MmapOptions::new().len(total).map_raw(&file)?;
            Ok::<_, std::io::Error>((file, map))
        })();
        let (file, map) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                self.abandon(&id);
                return Err(StoreError::Io {
                    context: format!("creating {}", staged.display()),
                    source: e,
                });
            }
        };
        let map = Arc::new(Mapping(map));
        #[allow(unsafe_code)]
        // SAFETY: the header lies within the mapping (`body_start` ≤ `total`), and no buffer
        // has been handed out yet.
        unsafe {
            let header = std::slice::from_raw_parts_mut(map.ptr(), body_start);
            header[..MAGIC.len()].copy_from_slice(MAGIC);
            header[MAGIC.len()..MAGIC.len() + schema_msg.len()].copy_from_slice(&schema_msg);
        }
        Ok(BatchBuilder {
            store: self,
            id,
            owner: owner.to_owned(),
            schema,
            staged,
            file,
            map,
            body_start,
            capacity,
            used: 0,
            reserved: total as u64,
            schema_len: schema_msg.len(),
            finished: false,
        })
    }
}

/// Whether arrays of `dt` can be built from buffers in place.
fn check_type(dt: &DataType) -> Result<()> {
    match dt {
        DataType::Dictionary(..)
        | DataType::Union(..)
        | DataType::RunEndEncoded(..)
        | DataType::Utf8View
        | DataType::BinaryView
        | DataType::ListView(_)
        | DataType::LargeListView(_) => Err(StoreError::Arrow {
            context: "building a batch in store memory".into(),
            source: ArrowError::NotYetImplemented(format!(
                "{dt} columns cannot be built in place; put the batch instead"
            )),
        }),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => check_type(f.data_type()),
        DataType::Struct(fields) => fields.iter().try_for_each(|f| check_type(f.data_type())),
        _ => Ok(()),
    }
}

impl BatchBuilder<'_> {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Bytes of body still free.
    pub fn remaining(&self) -> usize {
        self.capacity - self.used
    }

    /// A new zeroed buffer of `len` bytes in the object, 64-byte aligned.
    pub fn alloc(&mut self, len: usize) -> Result<StoreBufferMut> {
        let size = align(len);
        if size > self.remaining() {
            return Err(StoreError::Capacity {
                id: self.id,
                capacity: self.capacity,
                asked: self.used + size,
            });
        }
        let start = self.body_start + self.used;
        self.used += size;
        Ok(StoreBufferMut {
            map: Arc::clone(&self.map),
            start,
            len,
        })
    }

    /// Where `buffer` lies in the body, if it lies in it.
    fn locate(&self, buffer: &Buffer) -> Option<ipc::Buffer> {
        if buffer.is_empty() {
            return Some(ipc::Buffer::new(0, 0));
        }
        let body = self.map.ptr() as usize + self.body_start;
        let at = buffer.as_ptr() as usize;
        // Arrow readers want buffers 8-byte aligned within the body.
        (at >= body && at + buffer.len() <= body + self.used && (at - body).is_multiple_of(8))
            .then(|| ipc::Buffer::new((at - body) as i64, buffer.len() as i64))
    }

    /// The nodes and buffers of `data` (and its children), in IPC order.
    fn describe(
        &self,
        data: &ArrayData,
        field: &str,
        nodes: &mut Vec<FieldNode>,
        buffers: &mut Vec<ipc::Buffer>,
    ) -> Result<()> {
        let outside = |what: &str| StoreError::Arrow {
            context: format!("finishing object {}", self.id),
            source: ArrowError::InvalidArgumentError(format!(
                "column '{field}': {what}; build every buffer with the builder's alloc"
            )),
        };
        if data.offset() != 0 {
            return Err(outside("a sliced array (offset other than 0)"));
        }
        if matches!(data.data_type(), DataType::Null) {
            nodes.push(FieldNode::new(data.len() as i64, data.len() as i64));
            return Ok(());
        }
        nodes.push(FieldNode::new(data.len() as i64, data.null_count() as i64));
        let validity = match data.nulls() {
            Some(nulls) if nulls.null_count() > 0 => {
                if nulls.offset() != 0 {
                    return Err(outside("a validity bitmap with an offset"));
                }
                self.locate(nulls.buffer())
                    .ok_or_else(|| outside("a validity bitmap outside the object"))?
            }
            _ => ipc::Buffer::new(0, 0),
        };
        buffers.push(validity);
        for buffer in data.buffers() {
            buffers
                .push(self.locate(buffer).ok_or_else(|| {
                    outside("a buffer outside the object, or not 8-byte aligned")
                })?);
        }
        for child in data.child_data() {
            self.describe(child, field, nodes, buffers)?;
        }
        Ok(())
    }

    /// Publishes the batch made of `columns`, whose buffers must all come from this
    /// builder. Writes only metadata: its cost does not grow with the data. The columns stay
    /// the caller's, still readable (the object's bytes never change again); unmapping them
    /// is the cost of dropping them, as it is for any get.
    pub fn finish(mut self, columns: &[ArrayRef]) -> Result<ObjectRef> {
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns.to_vec())
            .map_err(arrow(format!("finishing object {}", self.id)))?;
        let (mut nodes, mut buffers) = (Vec::new(), Vec::new());
        for (column, field) in batch.columns().iter().zip(self.schema.fields()) {
            self.describe(&column.to_data(), field.name(), &mut nodes, &mut buffers)?;
        }
        let body_len = self.used;
        let mut fbb = FlatBufferBuilder::new();
        let fb_nodes = fbb.create_vector(&nodes);
        let fb_buffers = fbb.create_vector(&buffers);
        let mut record = ipc::RecordBatchBuilder::new(&mut fbb);
        record.add_length(batch.num_rows() as i64);
        record.add_nodes(fb_nodes);
        record.add_buffers(fb_buffers);
        let record = record.finish();
        let mut message = ipc::MessageBuilder::new(&mut fbb);
        message.add_version(MetadataVersion::V5);
        message.add_header_type(ipc::MessageHeader::RecordBatch);
        message.add_bodyLength(body_len as i64);
        message.add_header(record.as_union_value());
        let message = message.finish();
        fbb.finish(message, None);
        let meta = fbb.finished_data();

        // The record batch message fills the header up to the body: its length counts the
        // padding, as the format allows.
        let message_at = MAGIC.len() + self.schema_len;
        let room = self.body_start - message_at - 8;
        if meta.len() > room {
            return Err(StoreError::Arrow {
                context: format!("finishing object {}", self.id),
                source: ArrowError::IpcError(format!(
                    "record batch metadata of {} bytes exceeds the {room} reserved",
                    meta.len()
                )),
            });
        }
        let mut header = Vec::with_capacity(self.body_start - message_at);
        header.extend_from_slice(&[0xff; 4]);
        header.extend_from_slice(&(room as i32).to_le_bytes());
        header.extend_from_slice(meta);
        header.resize(self.body_start - message_at, 0);

        let mut fbb = FlatBufferBuilder::new();
        let dictionaries = fbb.create_vector::<Block>(&[]);
        let blocks = fbb.create_vector(&[Block::new(
            message_at as i64,
            (self.body_start - message_at) as i32,
            body_len as i64,
        )]);
        let schema = ipc::convert::schema_to_fb_offset(&mut fbb, &self.schema);
        let mut footer = ipc::FooterBuilder::new(&mut fbb);
        footer.add_version(MetadataVersion::V5);
        footer.add_schema(schema);
        footer.add_dictionaries(dictionaries);
        footer.add_recordBatches(blocks);
        let footer = footer.finish();
        fbb.finish(footer, None);
        let mut tail = Vec::new();
        tail.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        tail.extend_from_slice(fbb.finished_data());
        tail.extend_from_slice(&(fbb.finished_data().len() as i32).to_le_bytes());
        tail.extend_from_slice(&MAGIC[..6]);
        let tail_at = self.body_start + body_len;
        let end = tail_at + tail.len();
        if end as u64 > self.reserved {
            return Err(StoreError::Arrow {
                context: format!("finishing object {}", self.id),
                source: ArrowError::IpcError("footer larger than reserved".into()),
            });
        }
        #[allow(unsafe_code)]
        // SAFETY: both ranges lie in the mapping (`end` ≤ its length) and outside every
        // buffer handed out, which all lie in `body_start..body_start + used`.
        unsafe {
            let base = self.map.ptr();
            std::slice::from_raw_parts_mut(base.add(message_at), header.len())
                .copy_from_slice(&header);
            std::slice::from_raw_parts_mut(base.add(tail_at), tail.len()).copy_from_slice(&tail);
        }
        // The room past the end goes back: the file shrinks, and so does its account.
        self.file
            .set_len(end as u64)
            .map_err(io(format!("truncating {}", self.staged.display())))?;
        self.finished = true;
        let published = self
            .store
            .publish(self.id, &self.staged, self.reserved, end as u64);
        if published.is_err() {
            let _ = std::fs::remove_file(&self.staged);
        }
        self.store.commit(self.id, published)?;
        Ok(self.store.reference(self.id, &self.owner))
    }

    /// Copies `batch` into the builder's buffers, in parallel when it is large, and returns
    /// the same batch over them, ready for [`finish`](Self::finish). `None` when a column's
    /// layout cannot be copied in place (a slice, or a type [`LocalStore::batch_builder`]
    /// refuses).
    pub(crate) fn copy_batch(&mut self, batch: &RecordBatch) -> Result<Option<Vec<ArrayRef>>> {
        let datas: Vec<ArrayData> = batch.columns().iter().map(|c| c.to_data()).collect();
        if !datas.iter().all(copyable) {
            return Ok(None);
        }
        let mut sources = Vec::new();
        for data in &datas {
            collect_buffers(data, &mut sources);
        }
        let mut targets = Vec::with_capacity(sources.len());
        for source in &sources {
            targets.push(self.alloc(source.len())?);
        }
        parallel_copy(
            sources
                .iter()
                .map(|s| s.as_slice())
                .zip(targets.iter_mut().map(|t| t.as_mut_slice())),
        );
        let mut frozen = targets.into_iter().map(StoreBufferMut::freeze);
        Ok(Some(
            datas
                .iter()
                .map(|d| arrow::array::make_array(rebuild(d, &mut frozen)))
                .collect(),
        ))
    }
}

/// The room a copy of `batch` takes in a builder's body.
pub(crate) fn body_size(batch: &RecordBatch) -> usize {
    let mut sources = Vec::new();
    for column in batch.columns() {
        collect_buffers(&column.to_data(), &mut sources);
    }
    sources.iter().map(|b| align(b.len())).sum()
}

/// Whether every column of `batch` can be copied buffer for buffer.
pub(crate) fn copyable_batch(batch: &RecordBatch) -> bool {
    batch.columns().iter().all(|c| copyable(&c.to_data()))
}

/// Whether `data` can be copied buffer for buffer: no offsets anywhere, and types whose
/// layout is only buffers and children.
fn copyable(data: &ArrayData) -> bool {
    data.offset() == 0
        && data.nulls().is_none_or(|n| n.offset() == 0)
        && !matches!(data.data_type(), DataType::Null)
        && check_type(data.data_type()).is_ok()
        && data.child_data().iter().all(copyable)
}

/// The buffers of `data` and its children, in the order [`rebuild`] takes them back.
fn collect_buffers(data: &ArrayData, out: &mut Vec<Buffer>) {
    if let Some(nulls) = data.nulls().filter(|n| n.null_count() > 0) {
        out.push(nulls.buffer().clone());
    }
    out.extend(data.buffers().iter().cloned());
    for child in data.child_data() {
        collect_buffers(child, out);
    }
}

/// `data` again, over the copies of its buffers, taken from `copies` in [`collect_buffers`]'s
/// order.
fn rebuild(data: &ArrayData, copies: &mut impl Iterator<Item = Buffer>) -> ArrayData {
    let nulls = data
        .nulls()
        .filter(|n| n.null_count() > 0)
        .and_then(|_| copies.next());
    let buffers: Vec<Buffer> = data
        .buffers()
        .iter()
        .filter_map(|_| copies.next())
        .collect();
    let children: Vec<ArrayData> = data
        .child_data()
        .iter()
        .map(|c| rebuild(c, copies))
        .collect();
    let builder = ArrayData::builder(data.data_type().clone())
        .len(data.len())
        .null_count(data.null_count())
        .null_bit_buffer(nulls)
        .buffers(buffers)
        .child_data(children);
    #[allow(unsafe_code)]
    // SAFETY: the same layout as `data`, which is valid, over byte-for-byte copies of its
    // buffers.
    unsafe {
        builder.build_unchecked()
    }
}

/// Below this many bytes a copy runs on the calling thread.
const PARALLEL_COPY_BYTES: usize = 16 << 20;
/// A parallel copy hands out pieces of this size.
const COPY_PIECE: usize = 4 << 20;

/// Copies each source into its target (same lengths), on several threads when there is much
/// to copy: one thread cannot fill memory bandwidth, nor take page faults in parallel.
fn parallel_copy<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a mut [u8])>) {
    let pairs: Vec<(&[u8], &mut [u8])> = pairs.collect();
    let total: usize = pairs.iter().map(|(s, _)| s.len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if total < PARALLEL_COPY_BYTES || threads == 1 {
        for (source, target) in pairs {
            target.copy_from_slice(source);
        }
        return;
    }
    // Equal pieces dealt round-robin: each thread gets its share up front.
    let mut shares: Vec<Vec<(&[u8], &mut [u8])>> = (0..threads).map(|_| Vec::new()).collect();
    let pieces = pairs
        .into_iter()
        .flat_map(|(source, target)| source.chunks(COPY_PIECE).zip(target.chunks_mut(COPY_PIECE)));
    for (i, piece) in pieces.enumerate() {
        shares[i % threads].push(piece);
    }
    std::thread::scope(|scope| {
        for share in shares {
            scope.spawn(move || {
                for (source, target) in share {
                    target.copy_from_slice(source);
                }
            });
        }
    });
}

impl Drop for BatchBuilder<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.staged);
            self.store.abandon(&self.id);
        }
    }
}
