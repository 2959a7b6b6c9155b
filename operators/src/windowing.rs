//! Pieces every windowed operator shares: which windows the watermark closes, how far back a
//! window operator holds its output watermark, and the window columns of its output.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::SchemaRef;
use streamrun_engine::{Error, Result};

/// The starts of the windows of length `size` in `open` that end at or before `watermark`
/// (all of them when `watermark` is `None`: the input has ended), earliest first.
pub(crate) fn due<V>(open: &BTreeMap<i64, V>, size: i64, watermark: Option<u64>) -> Vec<i64> {
    let limit = watermark.map_or(i64::MAX, |w| i64::try_from(w).unwrap_or(i64::MAX));
    open.keys()
        .copied()
        .take_while(|&start| watermark.is_none() || start.saturating_add(size) <= limit)
        .collect()
}

/// The hold of a window operator: the event time of its earliest open window's results,
/// `end - 1`.
pub(crate) fn hold<V>(open: &BTreeMap<i64, V>, size: i64) -> Option<u64> {
    open.keys()
        .next()
        .map(|&start| u64::try_from(start.saturating_add(size - 1)).unwrap_or(0))
}

/// A batch of `schema`: the window's `start` and `end` as the first two columns, then
/// `columns` (of `rows` rows).
pub(crate) fn with_window(
    schema: &SchemaRef,
    start: i64,
    end: i64,
    rows: usize,
    columns: impl IntoIterator<Item = ArrayRef>,
) -> Result<RecordBatch> {
    let mut all: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(vec![start; rows])),
        Arc::new(TimestampMillisecondArray::from(vec![end; rows])),
    ];
    all.extend(columns);
    RecordBatch::try_new(Arc::clone(schema), all).map_err(|e| Error::arrow("window output", e))
}
