//! File sources and sinks: text, CSV, JSON lines and Parquet.

mod infer;
pub(crate) mod lines;
pub(crate) mod parquet;
pub(crate) mod reader;
mod sink;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::json;
use streamrun_engine::{Descriptor, Error, Result, Source, SourceReader, WorkerContext};

pub use sink::FileSink;

/// How many records (CSV) or lines (JSON) schema inference reads.
#[cfg(feature = "object-store")]
pub(crate) use infer::INFER_RECORDS;

/// The default number of rows in a batch.
const DEFAULT_BATCH_SIZE: usize = 8192;

/// The formats of files that [`Files`] reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    /// Lines of UTF-8 text, read into one column `line`.
    Text,
    /// Comma (or otherwise) separated values, one record a line.
    Csv,
    /// JSON lines: one JSON object a line.
    Json,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// The descriptor kind of a source or sink of this format: `files.text`, `files.csv`,
    /// `files.json` or `files.parquet`.
    pub fn kind(self) -> &'static str {
        match self {
            FileFormat::Text => "files.text",
            FileFormat::Csv => "files.csv",
            FileFormat::Json => "files.json",
            FileFormat::Parquet => "files.parquet",
        }
    }

    /// The file name extension the sinks of this format write: `txt`, `csv`, `jsonl` or
    /// `parquet`.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Text => "txt",
            FileFormat::Csv => "csv",
            FileFormat::Json => "jsonl",
            FileFormat::Parquet => "parquet",
        }
    }
}

impl std::fmt::Display for FileFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileFormat::Text => "text",
            FileFormat::Csv => "CSV",
            FileFormat::Json => "JSON lines",
            FileFormat::Parquet => "Parquet",
        })
    }
}

/// The entry point of the file connectors: `Files::csv("data/*.csv")` is a source,
/// `Files::write_parquet("out/")` a sink.
#[derive(Debug, Clone, Copy)]
pub struct Files;

impl Files {
    /// Lines of text from the files matching `glob`, as one non-null Utf8 column `line`.
    ///
    /// The line terminator (`\n` or `\r\n`) is not part of the line. A line that is not
    /// valid UTF-8 is a bad record.
    pub fn text(glob: impl Into<String>) -> FileSource {
        FileSource::new(FileFormat::Text, glob.into())
    }

    /// CSV records from the files matching `glob`.
    ///
    /// Unless a schema is given with [`FileSource::schema`], it is inferred from the first
    /// 1000 records of the first file. Files have a header line unless
    /// [`FileSource::has_header`] says otherwise. Every record is one line: quoted fields
    /// must not contain line breaks.
    pub fn csv(glob: impl Into<String>) -> FileSource {
        FileSource::new(FileFormat::Csv, glob.into())
    }

    /// JSON lines (one JSON object a line) from the files matching `glob`.
    ///
    /// Unless a schema is given with [`FileSource::schema`], it is inferred from the first
    /// 1000 lines of the first file. Blank lines are skipped.
    pub fn json(glob: impl Into<String>) -> FileSource {
        FileSource::new(FileFormat::Json, glob.into())
    }

    /// The rows of the Parquet files matching `glob`, with the schema of the first file.
    ///
    /// Row groups are spread over the workers.
    pub fn parquet(glob: impl Into<String>) -> FileSource {
        FileSource::new(FileFormat::Parquet, glob.into())
    }

    /// A sink writing one Parquet file per worker, `part-00000.parquet`, … in `dir`.
    pub fn write_parquet(dir: impl Into<PathBuf>) -> FileSink {
        FileSink::new(FileFormat::Parquet, dir.into())
    }

    /// A sink writing one CSV file (with a header line) per worker, `part-00000.csv`, … in
    /// `dir`.
    pub fn write_csv(dir: impl Into<PathBuf>) -> FileSink {
        FileSink::new(FileFormat::Csv, dir.into())
    }

    /// A sink writing one JSON lines file per worker, `part-00000.jsonl`, … in `dir`.
    pub fn write_json(dir: impl Into<PathBuf>) -> FileSink {
        FileSink::new(FileFormat::Json, dir.into())
    }
}

/// A source reading files that match a glob pattern; made by [`Files`].
///
/// The files are matched when the source opens, in sorted order; names starting with a dot
/// (such as the temporary files of a [`FileSink`] at work) are not matched by wildcards.
/// Text, CSV and JSON files are cut into byte ranges, Parquet files into row groups, and
/// these pieces are dealt to the workers in turn: every record is read by exactly one
/// worker. Readers hold one chunk of at most [`FileSource::batch_size`] lines (taking no more
/// lines once it holds 8 MiB) at a time; a line longer than 64 MiB is an error.
///
/// An inferred schema is inferred once, then shared by the clones of the source.
#[derive(Debug, Clone)]
pub struct FileSource {
    format: FileFormat,
    glob: String,
    schema: Option<SchemaRef>,
    has_header: bool,
    delimiter: u8,
    batch_size: usize,
    splittable: bool,
    inferred: Arc<OnceLock<SchemaRef>>,
}

impl FileSource {
    fn new(format: FileFormat, glob: String) -> Self {
        FileSource {
            format,
            glob,
            schema: None,
            has_header: true,
            delimiter: b',',
            batch_size: DEFAULT_BATCH_SIZE,
            splittable: true,
            inferred: Arc::new(OnceLock::new()),
        }
    }

    /// The same source with a fresh (empty) inferred-schema cache, for the builders that
    /// change how the files are read.
    fn changed(mut self) -> Self {
        self.inferred = Arc::new(OnceLock::new());
        self
    }

    /// Reads CSV or JSON with this schema instead of inferring one. CSV columns are matched
    /// by position, JSON fields by name.
    ///
    /// This builder hides the trait method: the schema in force (given or inferred) is
    /// `Source::schema(&source)`.
    pub fn schema(mut self, schema: SchemaRef) -> Self {
        self.schema = Some(schema);
        self.changed()
    }

    /// Whether CSV files start with a header line (default `true`). The header is not data;
    /// an inferred schema takes its column names from it.
    pub fn has_header(mut self, has_header: bool) -> Self {
        self.has_header = has_header;
        self.changed()
    }

    /// The CSV field delimiter (default `b','`).
    pub fn delimiter(mut self, delimiter: u8) -> Self {
        self.delimiter = delimiter;
        self.changed()
    }

    /// The most rows in a batch (default 8192); for text, CSV and JSON also the most lines
    /// read per step.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Whether text, CSV and JSON files may be cut into several pieces read by different
    /// workers (default `true`). With `false`, each file is read whole by one worker.
    pub fn splittable(mut self, splittable: bool) -> Self {
        self.splittable = splittable;
        self
    }

    /// The format of the files.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// The glob pattern of the files.
    pub fn path(&self) -> &str {
        &self.glob
    }

    /// The descriptor of this source for the job's plan: kind `files.text`, `files.csv`,
    /// `files.json` or `files.parquet`, and its options as configuration.
    pub fn descriptor(&self) -> Descriptor {
        let mut config = serde_json::Map::new();
        config.insert("path".into(), json!(self.glob));
        if self.format == FileFormat::Csv {
            config.insert("has_header".into(), json!(self.has_header));
            config.insert(
                "delimiter".into(),
                json!(char::from(self.delimiter).to_string()),
            );
        }
        if let Some(schema) = &self.schema {
            let fields: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| format!("{}: {}", f.name(), f.data_type()))
                .collect();
            config.insert("schema".into(), json!(fields));
        }
        config.insert("batch_size".into(), json!(self.batch_size));
        if self.format != FileFormat::Parquet {
            config.insert("splittable".into(), json!(self.splittable));
        }
        Descriptor::new(self.format.kind(), serde_json::Value::Object(config))
    }

    fn check(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Plan(format!(
                "the {} source '{}' has batch_size 0: it must be at least 1",
                self.format, self.glob
            )));
        }
        if self.schema.is_some() && matches!(self.format, FileFormat::Text | FileFormat::Parquet) {
            return Err(Error::Plan(format!(
                "the {} source '{}' was given a schema: only CSV and JSON sources take one",
                self.format, self.glob
            )));
        }
        Ok(())
    }

    fn resolve_schema(&self) -> Result<SchemaRef> {
        self.check()?;
        if self.format == FileFormat::Text {
            return Ok(text_schema());
        }
        if let Some(schema) = &self.schema {
            return Ok(Arc::clone(schema));
        }
        if let Some(schema) = self.inferred.get() {
            return Ok(Arc::clone(schema));
        }
        let files = expand_glob(&self.glob)?;
        let first = files
            .first()
            .ok_or_else(|| Error::Internal("glob expansion returned no file".into()))?;
        let schema = match self.format {
            FileFormat::Csv => infer::csv_schema(first, self.has_header, self.delimiter)?,
            FileFormat::Json => infer::json_schema(first)?,
            FileFormat::Parquet => parquet::file_schema(first)?,
            FileFormat::Text => text_schema(),
        };
        Ok(Arc::clone(self.inferred.get_or_init(|| schema)))
    }
}

impl Source for FileSource {
    fn schema(&self) -> Result<SchemaRef> {
        self.resolve_schema()
    }

    fn open(&self, ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
        if ctx.workers == 0 || ctx.index >= ctx.workers {
            return Err(Error::Internal(format!(
                "worker {} of {} cannot open a source",
                ctx.index, ctx.workers
            )));
        }
        let schema = self.resolve_schema()?;
        let files = expand_glob(&self.glob)?;
        match self.format {
            FileFormat::Parquet => Ok(Box::new(parquet::ParquetReader::open(
                &files,
                schema,
                ctx,
                self.batch_size,
            )?)),
            FileFormat::Text | FileFormat::Csv | FileFormat::Json => {
                let mut sized = Vec::with_capacity(files.len());
                for path in files {
                    let size = std::fs::metadata(&path)
                        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
                        .len();
                    sized.push((path, size));
                }
                let splits = lines::plan_splits(&sized, ctx.workers, self.splittable);
                let mine = splits
                    .into_iter()
                    .enumerate()
                    .filter(|(k, _)| k % ctx.workers == ctx.index)
                    .map(|(_, split)| split)
                    .collect();
                let format = match self.format {
                    FileFormat::Text => reader::LineFormat::Text,
                    FileFormat::Csv => reader::LineFormat::Csv {
                        delimiter: self.delimiter,
                        has_header: self.has_header,
                    },
                    _ => reader::LineFormat::Json,
                };
                Ok(Box::new(reader::LineReader::new(
                    format,
                    schema,
                    self.batch_size,
                    mine,
                )))
            }
        }
    }
}

/// The schema of text sources: one non-null Utf8 column `line`.
fn text_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]))
}

/// The files matching `pattern`, sorted; wildcards do not match names starting with a dot.
fn expand_glob(pattern: &str) -> Result<Vec<PathBuf>> {
    let options = glob::MatchOptions {
        require_literal_leading_dot: true,
        ..glob::MatchOptions::new()
    };
    let entries = glob::glob_with(pattern, options)
        .map_err(|e| Error::Plan(format!("invalid file pattern '{pattern}': {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| {
            let context = format!("reading {}", e.path().display());
            Error::io(context, e.into())
        })?;
        if path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(Error::Input(format!("no file matches '{pattern}'")));
    }
    files.sort();
    Ok(files)
}

/// How a path is named in messages.
fn display(path: &Path) -> String {
    path.display().to_string()
}

/// The message of an Arrow error without the prefix naming its kind.
fn arrow_message(e: &arrow::error::ArrowError) -> String {
    use arrow::error::ArrowError as E;
    match e {
        E::ParseError(m)
        | E::CsvError(m)
        | E::JsonError(m)
        | E::InvalidArgumentError(m)
        | E::CastError(m)
        | E::SchemaError(m)
        | E::ParquetError(m) => m.clone(),
        other => other.to_string(),
    }
}
