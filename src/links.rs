//! Link graphs of pages: the pieces [`Stream::link_rank`](crate::Stream::link_rank) ranks
//! pages with. A page is a row of two columns, its URL and the list of URLs it links to (the
//! crawl's `url` and `links`); each URL gets a stable integer id, so that PageRank, which
//! ranks integer nodes, can rank pages.
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{AsArray, ListBuilder, RecordBatch, StringArray, StringBuilder};
//! use arrow::datatypes::Int64Type;
//!
//! let mut links = ListBuilder::new(StringBuilder::new());
//! links.values().append_value("http://b/");
//! links.values().append_value("http://c/");
//! links.append(true);
//! let pages = RecordBatch::try_from_iter([
//!     ("url", Arc::new(StringArray::from(vec!["http://a/"])) as _),
//!     ("links", Arc::new(links.finish()) as _),
//! ])?;
//! let edges = streamrun::links::link_edges(pages)?;
//! let dst = edges.column(1).as_primitive::<Int64Type>();
//! assert_eq!(dst.value(0), streamrun::links::url_id("http://b/"));
//! assert_eq!(edges.num_rows(), 2);
//! # Ok::<(), arrow::error::ArrowError>(())
//! ```

use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;

/// A URL's id: 64-bit FNV-1a of its bytes with the top bit cleared, a non-negative `Int64`,
/// the same in every process and release.
pub fn url_id(url: &str) -> i64 {
    let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash >> 1) as i64
}

/// Pages (first column: the URL, Utf8) to `id` (Int64), `url` (Utf8) rows; rows without a
/// URL are left out.
pub fn page_ids(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let urls = string_column(&batch, 0, "the page's URL")?;
    let (ids, kept): (Vec<i64>, Vec<&str>) = urls.iter().flatten().map(|u| (url_id(u), u)).unzip();
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("url", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(kept)),
        ],
    )
}

/// Pages (first column: the URL, Utf8; second: its links, a list of Utf8) to one `src`,
/// `dst` (Int64 URL ids) row per link.
pub fn link_edges(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let urls = string_column(&batch, 0, "the page's URL")?;
    let links = batch
        .columns()
        .get(1)
        .and_then(|c| c.as_list_opt::<i32>())
        .ok_or_else(|| {
            ArrowError::SchemaError(
                "link_edges: the second column, the page's links, must be a list of strings".into(),
            )
        })?;
    let (mut src, mut dst) = (Vec::new(), Vec::new());
    for i in 0..batch.num_rows() {
        if urls.is_null(i) || links.is_null(i) {
            continue;
        }
        let from = url_id(urls.value(i));
        let targets = links.value(i);
        let targets = targets.as_string_opt::<i32>().ok_or_else(|| {
            ArrowError::SchemaError("link_edges: the page's links must be strings".into())
        })?;
        for target in targets.iter().flatten() {
            src.push(from);
            dst.push(url_id(target));
        }
    }
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("src", DataType::Int64, false),
            Field::new("dst", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(src)),
            Arc::new(Int64Array::from(dst)),
        ],
    )
}

fn string_column<'a>(
    batch: &'a RecordBatch,
    index: usize,
    what: &str,
) -> Result<&'a StringArray, ArrowError> {
    batch
        .columns()
        .get(index)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| ArrowError::SchemaError(format!("column {index}, {what}, must be Utf8")))
}
