//! How values travel: serde values as bincode, Arrow record batches as Arrow IPC files. Small
//! values ride in the messages themselves; large ones go through the node's object store and
//! are read in place. The `#[remote]` and `#[actor]` macros call these functions.

use arrow::array::RecordBatch;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use streamrun_store::{ObjectId, StoreReader};

use crate::{Arg, Error, ObjectRef, Result, TaskError};

/// The encoding of a serde value.
pub const SERDE: u32 = 0;
/// The encoding of an Arrow record batch.
pub const BATCH: u32 = 1;

/// What the object store holds for a value of `encoding`.
pub fn store_kind(encoding: u32) -> streamrun_store::Kind {
    if encoding == BATCH {
        streamrun_store::Kind::Batch
    } else {
        streamrun_store::Kind::Bytes
    }
}

/// A value ready to travel or to be stored.
#[derive(Debug, Clone)]
pub enum Encoded {
    /// A serde value, as bincode.
    Serde(Bytes),
    /// An Arrow record batch.
    Batch(RecordBatch),
}

impl Encoded {
    /// Its encoding's code.
    pub fn encoding(&self) -> u32 {
        match self {
            Encoded::Serde(_) => SERDE,
            Encoded::Batch(_) => BATCH,
        }
    }

    /// Its bytes: bincode, or an Arrow IPC file.
    pub fn to_bytes(&self) -> std::result::Result<Bytes, TaskError> {
        match self {
            Encoded::Serde(bytes) => Ok(bytes.clone()),
            Encoded::Batch(batch) => streamrun_store::encode(batch)
                .map(Bytes::from)
                .map_err(|e| TaskError::Failed(format!("encoding a batch: {e}"))),
        }
    }
}

/// An argument as a task receives it.
#[derive(Debug, Clone)]
pub enum ArgValue {
    /// The encoded bytes.
    Inline {
        /// [`SERDE`] or [`BATCH`].
        encoding: u32,
        /// The bytes.
        bytes: Bytes,
    },
    /// An object of the node's store, read in place.
    Stored {
        /// [`SERDE`] or [`BATCH`].
        encoding: u32,
        /// The object.
        id: ObjectId,
        /// The node's store.
        reader: StoreReader,
    },
}

/// Checks that a function registered as `name` got `expected` arguments.
pub fn check_arity(name: &str, expected: usize, got: usize) -> std::result::Result<(), TaskError> {
    if expected == got {
        Ok(())
    } else {
        Err(TaskError::Failed(format!(
            "{name} takes {expected} arguments, and was given {got}"
        )))
    }
}

fn mismatch(wanted: &str) -> TaskError {
    TaskError::Failed(format!(
        "an argument of the wrong kind: a {wanted} was expected"
    ))
}

/// Decodes a serde argument.
pub fn decode_serde<T: DeserializeOwned>(arg: &ArgValue) -> std::result::Result<T, TaskError> {
    let decode = |bytes: &[u8]| {
        bincode::deserialize(bytes).map_err(|e| {
            TaskError::Failed(format!(
                "decoding an argument as {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    };
    match arg {
        ArgValue::Inline {
            encoding: SERDE,
            bytes,
        } => decode(bytes),
        ArgValue::Stored {
            encoding: SERDE,
            id,
            reader,
        } => {
            let bytes = reader
                .get_bytes(id)
                .map_err(|e| TaskError::Failed(format!("reading argument {id}: {e}")))?;
            decode(&bytes)
        }
        _ => Err(mismatch("serde value")),
    }
}

/// Decodes a record batch argument; one from the store is read in place.
pub fn decode_batch(arg: &ArgValue) -> std::result::Result<RecordBatch, TaskError> {
    match arg {
        ArgValue::Inline {
            encoding: BATCH,
            bytes,
        } => streamrun_store::decode_buffer(
            arrow::buffer::Buffer::from(bytes.clone()),
            true,
            &|| "a batch argument".into(),
        )
        .map_err(|e| TaskError::Failed(e.to_string())),
        ArgValue::Stored {
            encoding: BATCH,
            id,
            reader,
        } => reader
            .get_batch(id)
            .map_err(|e| TaskError::Failed(format!("reading argument {id}: {e}"))),
        _ => Err(mismatch("record batch")),
    }
}

/// Encodes a serde result.
pub fn encode_serde<T: Serialize>(value: &T) -> std::result::Result<Encoded, TaskError> {
    bincode::serialize(value)
        .map(|b| Encoded::Serde(Bytes::from(b)))
        .map_err(|e| TaskError::Failed(format!("encoding a result: {e}")))
}

/// A record batch result.
pub fn encode_batch(batch: RecordBatch) -> Encoded {
    Encoded::Batch(batch)
}

/// What a task carries for one argument, as its caller gave it.
#[derive(Debug, Clone)]
pub enum ArgSpec {
    /// A value.
    Value(Encoded),
    /// An object: the task waits for it. The reference keeps it until the task holds its
    /// own.
    Ref(crate::RawRef),
}

/// A caller's serde argument, ready for a task.
pub fn serde_arg<T: Serialize>(arg: Arg<T>) -> Result<ArgSpec> {
    match arg {
        Arg::Value(v) => encode_serde(&v)
            .map(ArgSpec::Value)
            .map_err(|e| Error::Encode(e.to_string())),
        Arg::Ref(r) => Ok(ArgSpec::Ref(r.inner)),
    }
}

/// A caller's record batch argument, ready for a task.
pub fn batch_arg(arg: Arg<RecordBatch>) -> Result<ArgSpec> {
    Ok(match arg {
        Arg::Value(b) => ArgSpec::Value(Encoded::Batch(b)),
        Arg::Ref(r) => ArgSpec::Ref(r.inner),
    })
}

/// The next reference of a submission's results, typed.
pub fn take_ref<T>(ids: &mut impl Iterator<Item = crate::RawRef>) -> ObjectRef<T> {
    match ids.next() {
        Some(r) => ObjectRef::from_raw(r),
        // The runtime returns exactly as many references as results were asked for.
        None => unreachable!("a submission returned fewer references than results"),
    }
}
