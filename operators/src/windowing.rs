//! Pieces every windowed operator shares: which windows the watermark closes, how far back a
//! window operator holds its output watermark, and the window columns of its output.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::SchemaRef;
use streamrun_engine::{Error, Result, column_indices, event_time_type_check};

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

/// The index of a windowed operator's event-time column in `input`. `column` is `None` when
/// the stream has no event time, which is an error naming `what` needs it.
pub(crate) fn event_time_column(
    input: &SchemaRef,
    column: &Option<String>,
    what: &str,
) -> Result<usize> {
    let column = column.as_ref().ok_or_else(|| {
        Error::Plan(format!(
            "{what} needs event time: give the source one with .event_time(column, delay)"
        ))
    })?;
    let index = column_indices(input, std::slice::from_ref(column), what)?[0];
    event_time_type_check(input.field(index).data_type(), column)?;
    Ok(index)
}
