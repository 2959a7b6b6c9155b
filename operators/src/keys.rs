//! Keys in Arrow's row format, as every keyed operator hashes and compares them.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};
use streamrun_engine::{Error, Result};

/// A converter of the columns `keys` of `schema` to Arrow's row format; `what` names the
/// operator in errors.
pub(crate) fn key_converter(
    schema: &SchemaRef,
    keys: &[usize],
    what: &str,
) -> Result<RowConverter> {
    RowConverter::new(
        keys.iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect(),
    )
    .map_err(|e| Error::arrow(format!("{what} keys"), e))
}

/// The columns `keys` of `batch`, converted by `converter` (made by [`key_converter`] for
/// them); `what` names the operator in errors.
pub(crate) fn key_rows(
    converter: &RowConverter,
    batch: &RecordBatch,
    keys: &[usize],
    what: &str,
) -> Result<Rows> {
    let columns: Vec<ArrayRef> = keys.iter().map(|&i| Arc::clone(batch.column(i))).collect();
    converter
        .convert_columns(&columns)
        .map_err(|e| Error::arrow(format!("{what} keys"), e))
}
