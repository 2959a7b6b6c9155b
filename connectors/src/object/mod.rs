//! Object storage sources and sinks: CSV, JSON lines and Parquet on S3-compatible storage
//! and on the local file system, through the `object_store` crate.

mod reader;
mod store;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::json;
use streamrun_engine::{
    Descriptor, Error, Result, Sink, SinkWriter, Source, SourceReader, WorkerContext,
};

use crate::FileFormat;
use crate::files::INFER_RECORDS;
use crate::files::lines::plan_ranges;
use reader::{LineCounts, ObjectReader, Part, Piece, ReadOptions, local_source, rename_error};
use store::{Client, Listed, Location, Scratch, StoreOptions, Until};
use writer::ObjectWriter;

/// The default number of rows in a batch (as for files).
const DEFAULT_BATCH_SIZE: usize = 8192;
/// The least size of the pieces line-format objects are cut into.
const DEFAULT_SPLIT_BYTES: u64 = 16 << 20;

/// The descriptor kind of an object source or sink of `format`: `object.text`,
/// `object.csv`, `object.json` or `object.parquet`.
fn kind(format: FileFormat) -> &'static str {
    match format {
        FileFormat::Text => "object.text",
        FileFormat::Csv => "object.csv",
        FileFormat::Json => "object.json",
        FileFormat::Parquet => "object.parquet",
    }
}

/// The schema of text sources: one non-null Utf8 column `line`, as for files.
fn text_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]))
}

/// The builder methods saying how to reach the store, shared by sources and sinks.
macro_rules! store_builders {
    () => {
        /// The S3 endpoint, for S3-compatible servers (MinIO, Ceph, a local test server):
        /// e.g. `http://127.0.0.1:9000`. Overrides `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`.
        /// Requests use path-style URLs (`endpoint/bucket/key`). Ignored for `file://`.
        pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
            self.store.endpoint = Some(endpoint.into());
            self.changed()
        }

        /// Whether plain `http://` endpoints are allowed (default: no, unless
        /// `AWS_ALLOW_HTTP=true`). Ignored for `file://`.
        pub fn allow_http(mut self, allow_http: bool) -> Self {
            self.store.allow_http = Some(allow_http);
            self.changed()
        }

        /// The S3 region. Overrides `AWS_REGION` / `AWS_DEFAULT_REGION` (default
        /// `us-east-1`). Ignored for `file://`.
        pub fn region(mut self, region: impl Into<String>) -> Self {
            self.store.region = Some(region.into());
            self.changed()
        }

        /// Static S3 credentials. Overrides `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`;
        /// without either, the credentials come from the environment as object_store finds
        /// them (web identity, container or instance metadata). The secret is never shown in
        /// descriptors or `Debug` output. Ignored for `file://`.
        pub fn credentials(
            mut self,
            access_key_id: impl Into<String>,
            secret_access_key: impl Into<String>,
        ) -> Self {
            self.store.credentials = Some((access_key_id.into(), secret_access_key.into()));
            self.changed()
        }

        /// How often a failed S3 request is retried, with exponential backoff, and for how
        /// long at most from the first try (defaults: 10 times within 3 minutes). Once they
        /// are spent, the request fails with an error naming the object and what was being
        /// done, and saying how many retries were made. Ignored for `file://`.
        pub fn retries(mut self, max_retries: usize, within: Duration) -> Self {
            self.store.max_retries = Some(max_retries);
            self.store.retry_timeout = Some(within);
            self.changed()
        }

        /// The longest wait for a connection to the S3 endpoint, per try (default 5 s).
        /// Ignored for `file://`.
        pub fn connect_timeout(mut self, timeout: Duration) -> Self {
            self.store.connect_timeout = Some(timeout);
            self.changed()
        }

        /// The longest an S3 request may take, per try, body included (default 30 s).
        /// Ignored for `file://`.
        pub fn request_timeout(mut self, timeout: Duration) -> Self {
            self.store.request_timeout = Some(timeout);
            self.changed()
        }

        /// The local directory that downloaded objects and parts to upload are staged in
        /// (default: the system's temporary directory). Each worker uses a directory of
        /// its own in it, removed when it is done.
        pub fn temp_dir(mut self, dir: impl Into<PathBuf>) -> Self {
            self.temp_dir = Some(dir.into());
            self
        }
    };
}

/// The entry point of the object storage connectors: `Objects::csv("s3://bucket/in/*.csv")`
/// is a source, `Objects::write_parquet("s3://bucket/out/")` a sink.
///
/// URLs are `s3://bucket/key` (S3 or an S3-compatible server, configured from the
/// environment as [`ObjectSource`] says) or `file:///absolute/path` (the local file
/// system, through the same code).
#[derive(Debug, Clone, Copy)]
pub struct Objects;

impl Objects {
    /// Lines of text from the objects matching `url`, as one non-null Utf8 column `line`.
    pub fn text(url: impl Into<String>) -> ObjectSource {
        ObjectSource::new(FileFormat::Text, url.into())
    }

    /// CSV records from the objects matching `url`; the options and the inferred schema
    /// are those of [`Files::csv`](crate::Files::csv), inferred from the first object.
    pub fn csv(url: impl Into<String>) -> ObjectSource {
        ObjectSource::new(FileFormat::Csv, url.into())
    }

    /// JSON lines from the objects matching `url`; as [`Files::json`](crate::Files::json),
    /// the schema inferred from the first object unless given.
    pub fn json(url: impl Into<String>) -> ObjectSource {
        ObjectSource::new(FileFormat::Json, url.into())
    }

    /// The rows of the Parquet objects matching `url`, with the schema of the first one
    /// (read from its footer alone).
    pub fn parquet(url: impl Into<String>) -> ObjectSource {
        ObjectSource::new(FileFormat::Parquet, url.into())
    }

    /// A sink writing one Parquet object per worker, `part-00000.parquet`, … under the
    /// prefix `url`.
    pub fn write_parquet(url: impl Into<String>) -> ObjectSink {
        ObjectSink::new(FileFormat::Parquet, url.into())
    }

    /// A sink writing one CSV object (with a header line) per worker, `part-00000.csv`, …
    /// under the prefix `url`.
    pub fn write_csv(url: impl Into<String>) -> ObjectSink {
        ObjectSink::new(FileFormat::Csv, url.into())
    }

    /// A sink writing one JSON lines object per worker, `part-00000.jsonl`, … under the
    /// prefix `url`.
    pub fn write_json(url: impl Into<String>) -> ObjectSink {
        ObjectSink::new(FileFormat::Json, url.into())
    }
}

/// A source reading the objects that match a URL pattern, in S3-compatible object storage
/// or on the local file system; made by [`Objects`].
///
/// The URL is `s3://bucket/key-pattern` or `file:///absolute/path-pattern`, taken literally
/// (not percent-decoded); the pattern may use the wildcards of [`glob`] (`*`, `?`, `[…]`,
/// and `**` across `/`). The source lists the keys below the last `/` before the first
/// wildcard and keeps those matching, sorted; wildcards match neither `/` nor a leading `.`
/// of a name. The list is made once (when the schema is first asked for, or the first
/// worker opens) and shared by the clones of the source, so that every worker deals from
/// the same list. Text, CSV and JSON lines objects are cut into pieces of at least
/// [`ObjectSource::split_bytes`] (16 MiB by default; about 4 pieces per worker over all the
/// objects), so that a single big object is read by every worker; each piece owns the lines
/// that start in it. Parquet objects bigger than that are cut into runs of row groups of at
/// least as many bytes (their footers are read when the source opens, a ranged read or two
/// each); the others are read whole. Piece `k` goes to worker `k % workers`.
///
/// A reader downloads its pieces one at a time, streaming, into a local temporary file
/// (in [`ObjectSource::temp_dir`]; lines from the byte before them to the end of the last;
/// row groups with the footer, at their offsets in a sparse file of the object's size),
/// then reads that file with the readers of
/// [`Files`](crate::Files): the formats, options, bad-record handling and dead letters are
/// those of [`FileSource`](crate::FileSource), but messages and dead letters name the
/// object, as `s3://bucket/key:LINE` or `s3://bucket/key: row group N`. A call to
/// [`SourceReader::read`] that starts a new object blocks until the object is downloaded
/// (bounded by the retry and request timeouts); memory stays bounded (the download goes to
/// disk range by range), and local disk needs room for the largest piece of each worker.
/// A line number in a message about a piece other than an object's first is found by
/// counting the lines before the piece, a ranged read of the object, the first time it is
/// needed.
/// The local copy is removed once read.
///
/// Schema inference reads the first object's first 1000 records (CSV, JSON lines: only
/// that much is downloaded) or footer (Parquet: two ranged reads).
///
/// S3 is configured from the environment, as `AmazonS3Builder::from_env` does:
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
/// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, …; the
/// builder methods ([`ObjectSource::endpoint`], [`ObjectSource::credentials`], …)
/// override them. A failed request is retried ([`ObjectSource::retries`]); once the retries
/// are spent the read fails with an [`Error::Io`] naming the object and what was being
/// done. A missing bucket, refused credentials or a pattern that matches no object is an
/// [`Error::Input`] naming the URL; a URL that cannot be parsed an [`Error::Plan`].
///
/// ```
/// use std::sync::Arc;
/// use streamrun_connectors::{Collect, Objects};
/// use streamrun_engine::*;
///
/// // A CSV object on the local file system, through the object store API. On S3 the URL
/// // would be s3://bucket/sales/*.csv, with credentials from the environment.
/// let dir = std::env::temp_dir().join(format!("streamrun-objdoc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating the directory", e))?;
/// std::fs::write(dir.join("sales.csv"), "item,amount\napple,3\npear,5\n")
///     .map_err(|e| Error::io("writing sales.csv", e))?;
///
/// let source = Objects::csv(format!("file://{}/*.csv", dir.display()));
/// let collect = Collect::new();
/// let mut graph = JobGraph::new("sales");
/// let input = graph.add_source("sales", SourceDecl {
///     descriptor: source.descriptor(),
///     source: Arc::new(source),
///     on_bad_record: BadRecordPolicy::Fail,
///     dead_letters: None,
///     event_time: None,
/// });
/// graph.add_sink(input, "collect", collect.descriptor(), Arc::new(collect.clone()));
/// execute(&graph, &ExecOptions::new(2))?;
///
/// assert_eq!(collect.rows(), 2);
/// std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing the directory", e))?;
/// # Ok::<(), streamrun_engine::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ObjectSource {
    format: FileFormat,
    url: String,
    store: StoreOptions,
    schema: Option<SchemaRef>,
    has_header: bool,
    delimiter: u8,
    batch_size: usize,
    split_bytes: u64,
    temp_dir: Option<PathBuf>,
    listed: Arc<Mutex<Option<Arc<[Listed]>>>>,
    inferred: Arc<OnceLock<SchemaRef>>,
    /// The pieces planned, for a number of workers: planned once per process, so that the
    /// workers deal from one list (and big Parquet footers are read once).
    planned: Arc<Mutex<Option<Planned>>>,
    line_counts: LineCounts,
}

impl ObjectSource {
    fn new(format: FileFormat, url: String) -> Self {
        ObjectSource {
            format,
            url,
            store: StoreOptions::default(),
            schema: None,
            has_header: true,
            delimiter: b',',
            batch_size: DEFAULT_BATCH_SIZE,
            split_bytes: DEFAULT_SPLIT_BYTES,
            temp_dir: None,
            listed: Arc::new(Mutex::new(None)),
            inferred: Arc::new(OnceLock::new()),
            planned: Arc::new(Mutex::new(None)),
            line_counts: LineCounts::default(),
        }
    }

    /// The same source with fresh (empty) object list and inferred-schema caches, for the
    /// builders that change what is read.
    fn changed(mut self) -> Self {
        self.listed = Arc::new(Mutex::new(None));
        self.inferred = Arc::new(OnceLock::new());
        self.planned = Arc::new(Mutex::new(None));
        self.line_counts = LineCounts::default();
        self
    }

    store_builders!();

    /// Reads CSV or JSON with this schema instead of inferring one. CSV columns are matched
    /// by position, JSON fields by name.
    ///
    /// This builder hides the trait method: the schema in force (given or inferred) is
    /// `Source::schema(&source)`.
    pub fn schema(mut self, schema: SchemaRef) -> Self {
        self.schema = Some(schema);
        self.changed()
    }

    /// Whether CSV objects start with a header line (default `true`).
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

    /// The least size of the pieces objects are cut into, one worker reading each: byte
    /// ranges of text, CSV and JSON lines objects, runs of row groups of Parquet objects
    /// (default 16 MiB; `u64::MAX` reads every object whole). A piece costs a request or
    /// more, and the read of the line it starts in or of the footer.
    pub fn split_bytes(mut self, bytes: u64) -> Self {
        self.split_bytes = bytes.max(1);
        self.changed()
    }

    /// The format of the objects.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// The URL pattern of the objects.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The descriptor of this source for the job's plan: kind `object.text`, `object.csv`,
    /// `object.json` or `object.parquet`, and its options as configuration (never the
    /// credentials).
    pub fn descriptor(&self) -> Descriptor {
        let mut config = serde_json::Map::new();
        config.insert("url".into(), json!(self.url));
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
        self.store.describe(&mut config);
        Descriptor::new(kind(self.format), serde_json::Value::Object(config))
    }

    fn check(&self) -> Result<Location> {
        if self.batch_size == 0 {
            return Err(Error::Plan(format!(
                "the {} object source '{}' has batch_size 0: it must be at least 1",
                self.format, self.url
            )));
        }
        if self.schema.is_some() && matches!(self.format, FileFormat::Text | FileFormat::Parquet) {
            return Err(Error::Plan(format!(
                "the {} object source '{}' was given a schema: only CSV and JSON sources take one",
                self.format, self.url
            )));
        }
        Location::parse(&self.url)
    }

    fn client(&self, location: &Location) -> Result<Client> {
        Client::connect(location, &self.store, &self.url)
    }

    /// The pieces for `workers`, planned by the first worker to open in this process.
    fn planned_pieces(
        &self,
        client: &Client,
        objects: &[Listed],
        workers: usize,
    ) -> Result<Arc<[Piece]>> {
        let mut planned = self.planned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((for_workers, pieces)) = &*planned
            && *for_workers == workers
        {
            return Ok(Arc::clone(pieces));
        }
        let pieces: Arc<[Piece]> = self.pieces(client, objects, workers)?.into();
        *planned = Some((workers, Arc::clone(&pieces)));
        Ok(pieces)
    }

    /// The pieces the objects are read in: text, CSV and JSON lines objects cut into byte
    /// ranges (as local files are), Parquet objects bigger than `split_bytes` into runs of
    /// row groups of at least that many bytes (their footers read to find them), the rest
    /// whole.
    fn pieces(&self, client: &Client, objects: &[Listed], workers: usize) -> Result<Vec<Piece>> {
        if self.format != FileFormat::Parquet {
            let sizes: Vec<u64> = objects.iter().map(|o| o.size).collect();
            let pieces = plan_ranges(&sizes, workers, self.split_bytes)
                .into_iter()
                .map(|(k, range)| {
                    let object = objects[k].clone();
                    let part = if range.start == 0 && range.end >= object.size {
                        Part::Whole
                    } else {
                        Part::Lines(range)
                    };
                    Piece { object, part }
                })
                .collect();
            return Ok(pieces);
        }
        let mut pieces = Vec::new();
        for object in objects {
            let runs = if object.size > self.split_bytes {
                let layout = client.parquet_layout(object)?;
                row_group_runs(&layout.row_groups, self.split_bytes)
                    .into_iter()
                    .map(|groups| {
                        let chunks = &layout.row_groups[groups.clone()];
                        let start = chunks.iter().map(|r| r.start).min().unwrap_or(0);
                        let end = chunks.iter().map(|r| r.end).max().unwrap_or(0);
                        Part::RowGroups {
                            groups,
                            bytes: vec![start..end, layout.footer.clone()],
                        }
                    })
                    .collect()
            } else {
                Vec::new()
            };
            if runs.len() <= 1 {
                pieces.push(Piece {
                    object: object.clone(),
                    part: Part::Whole,
                });
            } else {
                pieces.extend(runs.into_iter().map(|part| Piece {
                    object: object.clone(),
                    part,
                }));
            }
        }
        Ok(pieces)
    }

    /// The matching objects, listed once: workers opening together wait for the first
    /// listing rather than each making its own.
    fn objects(&self, location: &Location, client: &Client) -> Result<Arc<[Listed]>> {
        let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(listed) = listed.as_ref() {
            return Ok(Arc::clone(listed));
        }
        let objects: Arc<[Listed]> = client.list_matching(location, &self.url)?.into();
        Ok(Arc::clone(listed.insert(objects)))
    }

    /// The schema when it needs no object read: text's, the given one, or one inferred
    /// before.
    fn known_schema(&self) -> Option<SchemaRef> {
        if self.format == FileFormat::Text {
            return Some(text_schema());
        }
        self.schema
            .as_ref()
            .or_else(|| self.inferred.get())
            .cloned()
    }

    fn resolve_schema(&self, location: &Location, client: &Client) -> Result<SchemaRef> {
        if let Some(schema) = self.known_schema() {
            return Ok(schema);
        }
        let objects = self.objects(location, client)?;
        let first = objects
            .first()
            .ok_or_else(|| Error::Internal("listing returned no object".into()))?;
        let schema = match self.format {
            FileFormat::Parquet => client.parquet_schema(first)?,
            _ => self.infer_from_prefix(client, first)?,
        };
        Ok(Arc::clone(self.inferred.get_or_init(|| schema)))
    }

    /// Infers a CSV or JSON schema with the file inference, over a local copy of the
    /// object's first records.
    fn infer_from_prefix(&self, client: &Client, object: &Listed) -> Result<SchemaRef> {
        let scratch = Scratch::create(self.temp_dir.as_deref())?;
        let path = scratch
            .path()
            .join(format!("sample.{}", self.format.extension()));
        let local = path.to_str().map(str::to_string).ok_or_else(|| {
            Error::Plan(format!(
                "the temporary directory {} is not a UTF-8 path",
                path.display()
            ))
        })?;
        // The header and the records inference reads (blank lines are skipped by both).
        client.download(object, 0, Until::Lines(INFER_RECORDS + 1), &path)?;
        let source = local_source(self.format, &local, self.has_header, self.delimiter);
        Source::schema(&source).map_err(|e| rename_error(e, &local, &object.url))
    }
}

impl Source for ObjectSource {
    fn schema(&self) -> Result<SchemaRef> {
        let location = self.check()?;
        if let Some(schema) = self.known_schema() {
            return Ok(schema);
        }
        let client = self.client(&location)?;
        self.resolve_schema(&location, &client)
    }

    fn open(&self, ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
        if ctx.workers == 0 || ctx.index >= ctx.workers {
            return Err(Error::Internal(format!(
                "worker {} of {} cannot open a source",
                ctx.index, ctx.workers
            )));
        }
        let location = self.check()?;
        let client = self.client(&location)?;
        let schema = self.resolve_schema(&location, &client)?;
        let objects = self.objects(&location, &client)?;
        let pieces = self.planned_pieces(&client, &objects, ctx.workers)?;
        let mine = pieces
            .iter()
            .enumerate()
            .filter(|(k, _)| k % ctx.workers == ctx.index)
            .map(|(_, piece)| piece.clone())
            .collect();
        let options = ReadOptions {
            format: self.format,
            schema,
            has_header: self.has_header,
            delimiter: self.delimiter,
            batch_size: self.batch_size,
            temp_dir: self.temp_dir.clone(),
            line_counts: Arc::clone(&self.line_counts),
        };
        Ok(Box::new(ObjectReader::new(ctx, options, client, mine)))
    }
}

/// Pieces planned for a number of workers.
type Planned = (usize, Arc<[Piece]>);

/// A sink writing CSV, JSON lines or Parquet objects under a prefix, in S3-compatible
/// object storage or on the local file system; made by [`Objects::write_csv`],
/// [`Objects::write_json`] and [`Objects::write_parquet`].
///
/// The URL names the prefix: `s3://bucket/out/` (or `s3://bucket/out`) or
/// `file:///absolute/dir`. Worker `i` writes its rows with the writer of a
/// [`FileSink`](crate::FileSink) into a local temporary file (in [`ObjectSink::temp_dir`]),
/// and when it finishes uploads it as `<prefix>/part-{i:05}.{csv|jsonl|parquet}` with a
/// multipart upload in parts of 8 MiB, at most 2 in flight (memory stays bounded). The
/// object appears when the upload completes, whole, or not at all: a failed upload is
/// aborted, and a worker that fails uploads nothing. Worker 0 also removes the part objects
/// of this format numbered from the number of workers on, left by an earlier run with more
/// workers.
///
/// The store is configured as for [`ObjectSource`]; upload errors name the object.
#[derive(Debug, Clone)]
pub struct ObjectSink {
    format: FileFormat,
    url: String,
    store: StoreOptions,
    temp_dir: Option<PathBuf>,
}

impl ObjectSink {
    fn new(format: FileFormat, url: String) -> Self {
        ObjectSink {
            format,
            url,
            store: StoreOptions::default(),
            temp_dir: None,
        }
    }

    /// Nothing is cached: the same sink.
    fn changed(self) -> Self {
        self
    }

    store_builders!();

    /// The format of the objects it writes.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// The URL of the prefix it writes under.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The descriptor of this sink for the job's plan: kind `object.csv`, `object.json` or
    /// `object.parquet`, with the prefix as `url` (never the credentials).
    pub fn descriptor(&self) -> Descriptor {
        let mut config = serde_json::Map::new();
        config.insert("url".into(), json!(self.url));
        self.store.describe(&mut config);
        Descriptor::new(kind(self.format), serde_json::Value::Object(config))
    }

    /// The file sink writing the local part files into `dir`.
    fn file_sink(&self, dir: &std::path::Path) -> Result<crate::FileSink> {
        match self.format {
            FileFormat::Csv => Ok(crate::Files::write_csv(dir)),
            FileFormat::Json => Ok(crate::Files::write_json(dir)),
            FileFormat::Parquet => Ok(crate::Files::write_parquet(dir)),
            FileFormat::Text => Err(Error::Plan(format!(
                "the object sink of '{}' cannot write text objects",
                self.url
            ))),
        }
    }

    /// Removes the part objects of this format numbered `workers` or more right below
    /// `prefix`.
    fn remove_stale_parts(
        &self,
        client: &Client,
        location: &Location,
        prefix: &str,
        workers: usize,
    ) -> Result<()> {
        let prefix_path = Location::path(prefix, &self.url)?;
        let extension = format!(".{}", self.format.extension());
        for path in client.list_below(location, &prefix_path, &self.url)? {
            let number = path
                .filename()
                .and_then(|n| n.strip_prefix("part-"))
                .and_then(|n| n.strip_suffix(extension.as_str()));
            let stale = number.is_some_and(|n| {
                n.len() >= 5
                    && n.bytes().all(|b| b.is_ascii_digit())
                    && n.parse::<usize>().is_ok_and(|n| n >= workers)
            });
            if stale {
                client.delete(&path, &location.url(path.as_ref()))?;
            }
        }
        Ok(())
    }
}

impl Sink for ObjectSink {
    fn open(&self, ctx: &WorkerContext, schema: &SchemaRef) -> Result<Box<dyn SinkWriter>> {
        let location = Location::parse(&self.url)?;
        let prefix = location.key.trim_end_matches('/');
        let name = format!("part-{:05}.{}", ctx.index, self.format.extension());
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let target = Location::path(&key, &self.url)?;
        let url = location.url(target.as_ref());
        let scratch = Scratch::create(self.temp_dir.as_deref())?;
        let file_sink = self.file_sink(scratch.path())?;
        let client = Client::connect(&location, &self.store, &self.url)?;
        if ctx.index == 0 {
            // Also finds a missing bucket before any work is done.
            self.remove_stale_parts(&client, &location, prefix, ctx.workers)?;
        }
        let inner = file_sink.open(ctx, schema)?;
        Ok(Box::new(ObjectWriter::new(
            inner, client, scratch, &name, target, url,
        )))
    }
}

/// Consecutive row groups (by their byte ranges) cut into runs of at least `min_bytes`; the
/// last run may be smaller.
fn row_group_runs(groups: &[std::ops::Range<u64>], min_bytes: u64) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (k, range) in groups.iter().enumerate() {
        bytes += range.end.saturating_sub(range.start);
        if bytes >= min_bytes {
            runs.push(start..k + 1);
            (start, bytes) = (k + 1, 0);
        }
    }
    if start < groups.len() {
        runs.push(start..groups.len());
    }
    runs
}
