//! Keys in Arrow's row format, as every keyed operator hashes and compares them.

use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
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
