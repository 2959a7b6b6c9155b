//! Readers of the splits of text, CSV and JSON lines files.
//!
//! A reader parses a chunk of lines at once with arrow's CSV or JSON decoder. When that
//! fails, or yields another number of rows than the chunk has records, it parses the chunk
//! again line by line, to report each bad line (with its file and line number) and emit the
//! good ones.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray, StringBuilder};
use arrow::csv::reader::Format;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use streamrun_engine::{DeadLetter, Error, Result, SourceCollector, SourceReader};

use super::lines::{ByteSplit, Chunk, SplitCursor, first_line};
use super::{arrow_message, display};

/// The line-oriented formats.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LineFormat {
    /// One Utf8 column `line`.
    Text,
    /// CSV records, one a line.
    Csv {
        /// The field delimiter.
        delimiter: u8,
        /// Whether the first line of every file is a header.
        has_header: bool,
    },
    /// JSON objects, one a line.
    Json,
}

/// One worker's reader over its splits of text, CSV or JSON files.
#[derive(Debug)]
pub(crate) struct LineReader {
    format: LineFormat,
    schema: SchemaRef,
    batch_size: usize,
    splits: VecDeque<ByteSplit>,
    cursor: Option<SplitCursor>,
    chunk: Chunk,
    /// The last file whose header was checked.
    header_checked: Option<Arc<PathBuf>>,
}

impl LineReader {
    /// A reader of `splits`, in order.
    pub fn new(
        format: LineFormat,
        schema: SchemaRef,
        batch_size: usize,
        splits: Vec<ByteSplit>,
    ) -> Self {
        LineReader {
            format,
            schema,
            batch_size,
            splits: splits.into(),
            cursor: None,
            chunk: Chunk::default(),
            header_checked: None,
        }
    }

    fn open_split(&mut self, split: &ByteSplit) -> Result<SplitCursor> {
        let skip_header = match self.format {
            LineFormat::Csv {
                delimiter,
                has_header: true,
            } => {
                if self.header_checked.as_ref() != Some(&split.path) {
                    check_header(&split.path, delimiter, &self.schema)?;
                    self.header_checked = Some(Arc::clone(&split.path));
                }
                true
            }
            _ => false,
        };
        SplitCursor::open(split, skip_header)
    }

    fn parse(&self, cursor: &mut SplitCursor, out: &mut SourceCollector) -> Result<()> {
        match self.format {
            LineFormat::Text => self.parse_text(cursor, out),
            LineFormat::Csv { delimiter, .. } => self.parse_csv(delimiter, cursor, out),
            LineFormat::Json => self.parse_json(cursor, out),
        }
    }

    fn parse_text(&self, cursor: &mut SplitCursor, out: &mut SourceCollector) -> Result<()> {
        let chunk = &self.chunk;
        let mut lines = StringBuilder::with_capacity(chunk.len(), chunk.raw().len());
        // Fast path: validate the whole chunk at once; then every line, cut at a newline (a
        // character boundary), is valid too.
        if let Ok(text) = std::str::from_utf8(chunk.raw()) {
            for i in 0..chunk.len() {
                lines.append_value(&text[chunk.line_range(i)]);
            }
            let batch =
                RecordBatch::try_new(Arc::clone(&self.schema), vec![Arc::new(lines.finish())])
                    .map_err(|e| Error::arrow(format!("reading {}", display(cursor.path())), e))?;
            out.emit(batch, chunk.bytes());
            return Ok(());
        }
        for i in 0..chunk.len() {
            let line = chunk.line(i);
            match std::str::from_utf8(line) {
                Ok(text) => lines.append_value(text),
                Err(e) => out.bad_record(DeadLetter {
                    location: cursor.location(chunk.index(i))?,
                    reason: format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()),
                    record: String::from_utf8_lossy(line).into_owned(),
                })?,
            }
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), vec![Arc::new(lines.finish())])
            .map_err(|e| Error::arrow(format!("reading {}", display(cursor.path())), e))?;
        out.emit(batch, chunk.bytes());
        Ok(())
    }

    fn parse_csv(
        &self,
        delimiter: u8,
        cursor: &mut SplitCursor,
        out: &mut SourceCollector,
    ) -> Result<()> {
        let chunk = &self.chunk;
        // Empty lines are no records (the CSV parser skips them).
        let records = (0..chunk.len())
            .filter(|i| !chunk.line(*i).is_empty())
            .count();
        let csv = CsvOptions {
            schema: &self.schema,
            delimiter,
        };
        if let Ok(batches) = csv.decode(chunk.raw(), None, self.batch_size)
            && row_count(&batches) == records
        {
            return self.emit(cursor, batches, chunk.bytes(), out);
        }
        let mut good = Vec::new();
        for i in 0..chunk.len() {
            let line = chunk.line(i);
            if line.is_empty() {
                continue;
            }
            match csv.decode(line, None, 1) {
                Ok(batches) => good.extend(batches),
                Err(e) => out.bad_record(DeadLetter {
                    location: cursor.location(chunk.index(i))?,
                    reason: csv.reason(line, &e),
                    record: String::from_utf8_lossy(line).into_owned(),
                })?,
            }
        }
        self.emit(cursor, good, chunk.bytes(), out)
    }

    fn parse_json(&self, cursor: &mut SplitCursor, out: &mut SourceCollector) -> Result<()> {
        let chunk = &self.chunk;
        let records = (0..chunk.len())
            .filter(|i| !chunk.line(*i).trim_ascii().is_empty())
            .count();
        if let Ok(batches) = decode_json(&self.schema, chunk.raw(), self.batch_size)
            && row_count(&batches) == records
        {
            return self.emit(cursor, batches, chunk.bytes(), out);
        }
        let mut good = Vec::new();
        for i in 0..chunk.len() {
            let line = chunk.line(i);
            if line.trim_ascii().is_empty() {
                continue;
            }
            let reason = match decode_json(&self.schema, line, 1) {
                Ok(batches) if row_count(&batches) == 1 => {
                    good.extend(batches);
                    continue;
                }
                Ok(batches) => format!(
                    "expected one JSON object on the line, found {}",
                    row_count(&batches)
                ),
                Err(e) => json_reason(line, &e),
            };
            out.bad_record(DeadLetter {
                location: cursor.location(chunk.index(i))?,
                reason,
                record: String::from_utf8_lossy(line).into_owned(),
            })?;
        }
        self.emit(cursor, good, chunk.bytes(), out)
    }

    /// Emits the batches of a chunk, counting its bytes once (even when no row came out).
    fn emit(
        &self,
        cursor: &SplitCursor,
        batches: Vec<RecordBatch>,
        bytes: u64,
        out: &mut SourceCollector,
    ) -> Result<()> {
        let mut batches = batches;
        let batch = if batches.len() > 1 {
            arrow::compute::concat_batches(&self.schema, &batches)
                .map_err(|e| Error::arrow(format!("reading {}", display(cursor.path())), e))?
        } else {
            batches
                .pop()
                .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&self.schema)))
        };
        out.emit(batch, bytes);
        Ok(())
    }
}

impl SourceReader for LineReader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        loop {
            let mut cursor = match self.cursor.take() {
                Some(cursor) => cursor,
                None => match self.splits.pop_front() {
                    Some(split) => self.open_split(&split)?,
                    None => return Ok(false),
                },
            };
            cursor.read_chunk(&mut self.chunk, self.batch_size)?;
            let read_some = !self.chunk.is_empty();
            if read_some {
                self.parse(&mut cursor, out)?;
            }
            if !cursor.is_done() {
                self.cursor = Some(cursor);
            }
            if read_some {
                return Ok(self.cursor.is_some() || !self.splits.is_empty());
            }
        }
    }
}

fn row_count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// Checks that the header of a CSV file has as many fields as the schema.
fn check_header(path: &Path, delimiter: u8, schema: &Schema) -> Result<()> {
    let header = first_line(path)?;
    if header.is_empty() {
        return Ok(());
    }
    let found = field_count(&header, delimiter);
    let expected = schema.fields().len();
    match found {
        Some(found) if found == expected => Ok(()),
        Some(found) => Err(Error::Input(format!(
            "{}:1: the header has {found} fields but the schema has {expected}",
            display(path)
        ))),
        None => Err(Error::Input(format!(
            "{}:1: the header is not valid CSV",
            display(path)
        ))),
    }
}

/// How many fields a CSV line has, as arrow's CSV parser splits it.
fn field_count(line: &[u8], delimiter: u8) -> Option<usize> {
    Format::default()
        .with_header(false)
        .with_delimiter(delimiter)
        .infer_schema(line, Some(1))
        .ok()
        .map(|(schema, _)| schema.fields().len())
}

/// How to parse CSV.
struct CsvOptions<'a> {
    schema: &'a SchemaRef,
    delimiter: u8,
}

impl CsvOptions<'_> {
    /// Parses `bytes` (whole records) into batches of at most `batch_size` rows.
    fn decode(
        &self,
        bytes: &[u8],
        projection: Option<Vec<usize>>,
        batch_size: usize,
    ) -> Result<Vec<RecordBatch>, ArrowError> {
        self.decode_as(self.schema, bytes, projection, batch_size)
    }

    fn decode_as(
        &self,
        schema: &SchemaRef,
        bytes: &[u8],
        projection: Option<Vec<usize>>,
        batch_size: usize,
    ) -> Result<Vec<RecordBatch>, ArrowError> {
        let mut builder = arrow::csv::ReaderBuilder::new(Arc::clone(schema))
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_batch_size(batch_size.max(1));
        if let Some(projection) = projection {
            builder = builder.with_projection(projection);
        }
        let mut decoder = builder.build_decoder();
        let mut batches = Vec::new();
        let mut rest = bytes;
        loop {
            if decoder.capacity() == 0
                && let Some(batch) = decoder.flush()?
            {
                batches.push(batch);
            }
            if rest.is_empty() {
                break;
            }
            let n = decoder.decode(rest)?;
            if n == 0 && decoder.capacity() > 0 {
                return Err(ArrowError::CsvError(
                    "the CSV parser made no progress".into(),
                ));
            }
            rest = &rest[n..];
        }
        // An empty buffer tells the parser the input ended, which ends a last record
        // without a line terminator.
        decoder.decode(&[])?;
        if let Some(batch) = decoder.flush()? {
            batches.push(batch);
        }
        Ok(batches)
    }

    /// Why a CSV line does not parse: the wrong number of fields, or the first value that
    /// does not parse as its column's type.
    fn reason(&self, line: &[u8], error: &ArrowError) -> String {
        if let Err(e) = std::str::from_utf8(line) {
            return format!("invalid UTF-8 at byte {} of the line", e.valid_up_to());
        }
        let expected = self.schema.fields().len();
        if let Some(found) = field_count(line, self.delimiter)
            && found != expected
        {
            return format!("expected {expected} fields, found {found}");
        }
        // The fields as text, to name the value at fault.
        let text_schema: SchemaRef = Arc::new(Schema::new(
            (0..expected)
                .map(|i| Field::new(format!("c{i}"), DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ));
        let texts = self.decode_as(&text_schema, line, None, 1).ok();
        let text = |i: usize| -> Option<String> {
            let batch = texts.as_ref()?.first()?;
            let column = batch.column(i).as_any().downcast_ref::<StringArray>()?;
            (!column.is_empty() && column.is_valid(0)).then(|| column.value(0).to_string())
        };
        for (i, field) in self.schema.fields().iter().enumerate() {
            if self.decode(line, Some(vec![i]), 1).is_ok() {
                continue;
            }
            return match text(i) {
                None if !field.is_nullable() => {
                    format!("missing value for non-nullable column '{}'", field.name())
                }
                value => format!(
                    "cannot parse '{}' as {} for column '{}'",
                    value.unwrap_or_default(),
                    field.data_type(),
                    field.name()
                ),
            };
        }
        arrow_message(error)
    }
}

/// Parses JSON lines into batches of at most `batch_size` rows.
pub(crate) fn decode_json(
    schema: &SchemaRef,
    bytes: &[u8],
    batch_size: usize,
) -> Result<Vec<RecordBatch>, ArrowError> {
    let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(batch_size.max(1))
        .build_decoder()?;
    let mut batches = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = decoder.decode(rest)?;
        rest = &rest[n..];
        if !rest.is_empty() {
            // The decoder is full.
            match decoder.flush()? {
                Some(batch) => batches.push(batch),
                None if n == 0 => {
                    return Err(ArrowError::JsonError(
                        "the JSON parser made no progress".into(),
                    ));
                }
                None => {}
            }
        }
    }
    if let Some(batch) = decoder.flush()? {
        batches.push(batch);
    }
    Ok(batches)
}

/// Why a JSON line does not parse: not JSON, not an object, or not of the schema.
pub(crate) fn json_reason(line: &[u8], error: &ArrowError) -> String {
    match serde_json::from_slice::<serde_json::Value>(line) {
        Err(e) => format!("invalid JSON: {e}"),
        Ok(serde_json::Value::Object(_)) => {
            format!("does not fit the schema: {}", arrow_message(error))
        }
        Ok(other) => {
            let kind = match other {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::String(_) => "a string",
                _ => "an array",
            };
            format!("expected a JSON object, found {kind}")
        }
    }
}
