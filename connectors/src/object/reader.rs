//! One worker's reader over its pieces of objects: each is downloaded to a local file, then
//! read with the file connectors' readers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use streamrun_engine::{
    BadRecordPolicy, DeadLetter, Error, Result, Source, SourceCollector, SourceReader,
    WorkerContext,
};

use super::store::{Client, Listed, Scratch, Until};
use crate::files::lines::ByteSplit;
use crate::files::parquet::ParquetReader;
use crate::files::reader::{LineFormat, LineReader};
use crate::{FileFormat, FileSource, Files};

/// What one worker reads of an object.
#[derive(Debug, Clone)]
pub(crate) struct Piece {
    pub object: Listed,
    pub part: Part,
}

/// Which part of an object a piece is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    /// All of it.
    Whole,
    /// The lines that start in this byte range (text, CSV, JSON lines).
    Lines(Range<u64>),
    /// These row groups of a Parquet object, whose bytes, with the footer's, are `bytes`.
    RowGroups {
        groups: Range<usize>,
        bytes: Vec<Range<u64>>,
    },
}

/// How the objects are read: the options of the source they come from.
#[derive(Debug, Clone)]
pub(crate) struct ReadOptions {
    pub format: FileFormat,
    pub schema: SchemaRef,
    pub has_header: bool,
    pub delimiter: u8,
    pub batch_size: usize,
    pub temp_dir: Option<PathBuf>,
    /// Lines counted before pieces, shared by the source's readers.
    pub line_counts: LineCounts,
}

/// A file source over the one local file `path`, with the CSV options of an object source.
pub(crate) fn local_source(
    format: FileFormat,
    path: &str,
    has_header: bool,
    delimiter: u8,
) -> FileSource {
    let glob = glob::Pattern::escape(path);
    let source = match format {
        FileFormat::Text => Files::text(glob),
        FileFormat::Csv => Files::csv(glob),
        FileFormat::Json => Files::json(glob),
        FileFormat::Parquet => Files::parquet(glob),
    };
    source.has_header(has_header).delimiter(delimiter)
}

/// The piece being read.
struct Current {
    object: Listed,
    /// Its local copy, as the file readers name it.
    local: String,
    /// The object's byte that the local copy starts at.
    from: u64,
    /// The lines of the object before `from`, once counted: what turns a line number of the
    /// local copy into one of the object.
    lines_before: Option<u64>,
    reader: Box<dyn SourceReader>,
}

impl Current {
    /// `text` with the local copy named as the object, and its line numbers (`local:N`)
    /// turned into the object's. The lines before a piece are counted the first time a
    /// message needs them (see [`lines_before`]); if that fails, the number is given as
    /// counted from the piece's first byte, saying so.
    fn rename(&mut self, client: &Client, counts: &LineCounts, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find(&self.local) {
            out.push_str(&rest[..i]);
            out.push_str(&self.object.url);
            rest = &rest[i + self.local.len()..];
            let Some(after) = rest.strip_prefix(':') else {
                continue;
            };
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let Ok(line) = after[..digits].parse::<u64>() else {
                continue;
            };
            let before = match self.lines_before {
                Some(n) => Ok(n),
                None => lines_before(client, counts, &self.object, self.from)
                    .inspect(|n| self.lines_before = Some(*n)),
            };
            match before {
                Ok(before) => out.push_str(&format!(":{}", line + before)),
                Err(_) => out.push_str(&format!(
                    " (line counted from byte {} of the object):{line}",
                    self.from
                )),
            }
            rest = &after[digits..];
        }
        out.push_str(rest);
        out
    }

    /// `e` renamed as [`Current::rename`] renames text.
    fn rename_error(&mut self, client: &Client, counts: &LineCounts, e: Error) -> Error {
        map_messages(e, |text| self.rename(client, counts, &text))
    }
}

/// How many `\n` bytes each object has before some of its offsets, as counted so far by
/// the readers of a source in this process: `url -> offset -> count`. One entry per piece
/// counted, at most.
pub(crate) type LineCounts = Arc<Mutex<HashMap<String, BTreeMap<u64, u64>>>>;

/// The `\n` bytes of `object` before byte `upto`, counted (a ranged read, not kept) from
/// the nearest offset before it already counted, so that the pieces of one object together
/// read it about once.
fn lines_before(client: &Client, counts: &LineCounts, object: &Listed, upto: u64) -> Result<u64> {
    let lock = || counts.lock().unwrap_or_else(|p| p.into_inner());
    let (from, known) = lock()
        .get(&object.url)
        .and_then(|offsets| offsets.range(..=upto).next_back())
        .map_or((0, 0), |(offset, count)| (*offset, *count));
    let total = known + client.count_newlines(object, from, upto)?;
    lock()
        .entry(object.url.clone())
        .or_default()
        .insert(upto, total);
    Ok(total)
}

impl Current {}

/// One worker's reader over its pieces of objects, in order.
pub(crate) struct ObjectReader {
    job: String,
    options: ReadOptions,
    client: Client,
    objects: VecDeque<Piece>,
    scratch: Option<Scratch>,
    /// How many objects it has downloaded (names the local copies).
    downloads: u64,
    current: Option<Current>,
    /// What the file reader of the current object read, before it is renamed and passed
    /// on. It keeps bad records: the policy is applied to them once renamed.
    inner: SourceCollector,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("options", &self.options)
            .field("objects", &self.objects)
            .field("current", &self.current.as_ref().map(|c| &c.object.url))
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    pub fn new(
        ctx: &WorkerContext,
        options: ReadOptions,
        client: Client,
        objects: Vec<Piece>,
    ) -> Self {
        ObjectReader {
            job: ctx.job.clone(),
            options,
            client,
            objects: objects.into(),
            scratch: None,
            downloads: 0,
            current: None,
            inner: SourceCollector::new(BadRecordPolicy::DeadLetter),
        }
    }

    /// Downloads `piece` (lines: from the byte before them to the end of the last; row
    /// groups: their bytes and the footer, at their offsets) and opens a file reader over
    /// its local copy.
    fn open_object(&mut self, piece: Piece) -> Result<Current> {
        let scratch = match &mut self.scratch {
            Some(scratch) => scratch,
            none => none.insert(Scratch::create(self.options.temp_dir.as_deref())?),
        };
        self.downloads += 1;
        let path = scratch.path().join(format!(
            "object-{}.{}",
            self.downloads,
            self.options.format.extension()
        ));
        let local = path.to_str().map(str::to_string).ok_or_else(|| {
            Error::Plan(format!(
                "the temporary directory {} is not a UTF-8 path",
                path.display()
            ))
        })?;
        let object = piece.object.clone();
        let from = match &piece.part {
            Part::Lines(range) => range.start.saturating_sub(1),
            Part::Whole | Part::RowGroups { .. } => 0,
        };
        let opened = match &piece.part {
            Part::Whole => self
                .client
                .download(&object, 0, Until::End, &path)
                .and_then(|()| self.open_local(&object, &local)),
            Part::Lines(range) => self
                .client
                .download(&object, from, Until::LineEnd(range.end), &path)
                .and_then(|()| self.open_lines(&object, range, from, &local)),
            Part::RowGroups { groups, bytes } => self
                .client
                .download_ranges(&object, bytes, &path)
                .and_then(|()| {
                    let reader = ParquetReader::of_row_groups(
                        &path,
                        Arc::clone(&self.options.schema),
                        groups.clone(),
                        self.options.batch_size,
                    )?;
                    Ok(Box::new(reader) as Box<dyn SourceReader>)
                }),
        }
        .map_err(|e| rename_error(e, &local, &object.url));
        match opened {
            Ok(reader) => Ok(Current {
                object,
                local,
                from,
                lines_before: (from == 0).then_some(0),
                reader,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    fn open_local(&self, object: &Listed, local: &str) -> Result<Box<dyn SourceReader>> {
        let options = &self.options;
        // Read whole by one worker; CSV and JSON with the source's schema (Parquet and text
        // files carry or fix theirs).
        let mut source = local_source(options.format, local, options.has_header, options.delimiter)
            .batch_size(options.batch_size)
            .splittable(false);
        if matches!(options.format, FileFormat::Csv | FileFormat::Json) {
            source = source.schema(Arc::clone(&options.schema));
        }
        if self.options.format == FileFormat::Parquet {
            let schema = Source::schema(&source)?;
            if schema.fields() != self.options.schema.fields() {
                return Err(Error::Input(format!(
                    "{} does not have the schema of the first object: expected {}, found {}",
                    object.url,
                    fields_text(&self.options.schema),
                    fields_text(&schema)
                )));
            }
        }
        let ctx = WorkerContext {
            job: self.job.clone(),
            index: 0,
            workers: 1,
            local_workers: 1,
        };
        source.open(&ctx)
    }

    /// A reader of the lines of `object` that start in `range`, whose bytes from `from` on
    /// are in the local file `local`. Only the object's first piece has the CSV header (the
    /// schema is known).
    fn open_lines(
        &self,
        object: &Listed,
        range: &Range<u64>,
        from: u64,
        local: &str,
    ) -> Result<Box<dyn SourceReader>> {
        let options = &self.options;
        let format = match options.format {
            FileFormat::Text => LineFormat::Text,
            FileFormat::Csv => LineFormat::Csv {
                delimiter: options.delimiter,
                has_header: options.has_header && range.start == 0,
            },
            FileFormat::Json => LineFormat::Json,
            FileFormat::Parquet => {
                return Err(Error::Internal(format!(
                    "{}: a Parquet object is split by row groups, not lines",
                    object.url
                )));
            }
        };
        let split = ByteSplit {
            path: Arc::new(PathBuf::from(local)),
            start: range.start - from,
            end: range.end - from,
        };
        Ok(Box::new(LineReader::new(
            format,
            Arc::clone(&options.schema),
            options.batch_size,
            vec![split],
        )))
    }

    /// Closes the current object and removes its local copy.
    fn close_current(&mut self) {
        if let Some(current) = self.current.take() {
            drop(current.reader);
            // Best effort: the scratch directory goes too, at the end.
            let _ = std::fs::remove_file(&current.local);
        }
    }

    /// Passes on what the file reader read, naming the object instead of its local copy.
    /// Returns whether there was anything.
    fn forward(&mut self, out: &mut SourceCollector) -> Result<bool> {
        let (batches, dead) = self.inner.take();
        let (_, mut bytes) = self.inner.take_counts();
        let produced = !batches.is_empty() || !dead.is_empty() || bytes > 0;
        for batch in batches {
            let batch = self.conform(batch)?;
            out.emit(batch, std::mem::take(&mut bytes));
        }
        if bytes > 0 {
            out.emit(
                RecordBatch::new_empty(Arc::clone(&self.options.schema)),
                bytes,
            );
        }
        for letter in dead {
            let letter = match &mut self.current {
                Some(current) => DeadLetter {
                    location: current.rename(
                        &self.client,
                        &self.options.line_counts,
                        &letter.location,
                    ),
                    reason: current.rename(&self.client, &self.options.line_counts, &letter.reason),
                    record: letter.record,
                },
                None => letter,
            };
            out.bad_record(letter)?;
        }
        Ok(produced)
    }

    /// A batch with the source's schema (Parquet objects may differ in metadata).
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if batch.schema() == self.options.schema {
            return Ok(batch);
        }
        RecordBatch::try_new(Arc::clone(&self.options.schema), batch.columns().to_vec()).map_err(
            |e| {
                let url = self.current.as_ref().map_or("", |c| c.object.url.as_str());
                Error::arrow(format!("reading {url}"), e)
            },
        )
    }
}

impl SourceReader for ObjectReader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        loop {
            let current = match &mut self.current {
                Some(current) => current,
                None => {
                    let Some(object) = self.objects.pop_front() else {
                        return Ok(false);
                    };
                    let current = self.open_object(object)?;
                    self.current.insert(current)
                }
            };
            let more = match current.reader.read(&mut self.inner) {
                Ok(more) => more,
                Err(e) => {
                    return Err(current.rename_error(&self.client, &self.options.line_counts, e));
                }
            };
            let produced = self.forward(out)?;
            if !more {
                self.close_current();
            }
            if produced || more {
                return Ok(self.current.is_some() || !self.objects.is_empty());
            }
        }
    }
}

impl Drop for ObjectReader {
    fn drop(&mut self) {
        self.close_current();
    }
}

/// `e` with the local path `local` named as `url`.
pub(crate) fn rename_error(e: Error, local: &str, url: &str) -> Error {
    map_messages(e, |text| text.replace(local, url))
}

/// `e` with its message (or context) passed through `rename`.
fn map_messages(e: Error, mut rename: impl FnMut(String) -> String) -> Error {
    match e {
        Error::Plan(m) => Error::Plan(rename(m)),
        Error::Input(m) => Error::Input(rename(m)),
        Error::Internal(m) => Error::Internal(rename(m)),
        Error::Io { context, source } => Error::Io {
            context: rename(context),
            source,
        },
        Error::Arrow { context, source } => Error::Arrow {
            context: rename(context),
            source,
        },
        other => other,
    }
}

/// The fields of a schema as `(name: type, …)`.
fn fields_text(schema: &Schema) -> String {
    let fields: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    format!("({})", fields.join(", "))
}
