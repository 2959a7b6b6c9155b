//! Object URLs, the stores they name, and the (blocking) calls made on them.

use std::future::Future;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path as LocalPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ClientConfigKey, GetOptions, ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart,
};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};
use streamrun_engine::{Error, Result};

use crate::files::lines::MAX_LINE_BYTES;

/// The size of the parts of a multipart upload (S3 wants at least 5 MiB but for the last).
pub(crate) const PART_BYTES: usize = 8 << 20;
/// How many parts of one upload may be in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
/// The size of the buffer a local file is read through for an upload.
const UPLOAD_READ_BYTES: usize = 1 << 20;
/// The size of the ranges an object is downloaded in, one request each: small enough that
/// a range comes within the request timeout, big enough that the latency of a request
/// matters little.
const RANGE_BYTES: u64 = 16 << 20;
/// The size of the ranges fetched past a split's end to finish its last line.
const LINE_TAIL_BYTES: u64 = 64 << 10;
/// How much of the end of a Parquet object is fetched first for its footer.
const PARQUET_TAIL_BYTES: u64 = 64 << 10;
/// The size of a Parquet footer's tail: the metadata length and the magic bytes.
const FOOTER_BYTES: usize = 8;

/// The kinds of object URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// `s3://bucket/key`: S3 or an S3-compatible server.
    S3,
    /// `file:///absolute/path`: the local file system.
    File,
}

/// A parsed object URL: the store and the key (or key pattern) in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    /// Which store.
    pub scheme: Scheme,
    /// The bucket (empty for the local file system).
    pub bucket: String,
    /// The key, or key pattern, without a leading `/`.
    pub key: String,
}

impl Location {
    /// Parses `s3://bucket/key` (or `s3a://`) and `file:///absolute/path`.
    pub fn parse(url: &str) -> Result<Location> {
        let expected = "expected s3://bucket/key or file:///absolute/path";
        if let Some(rest) = url
            .strip_prefix("s3://")
            .or_else(|| url.strip_prefix("s3a://"))
        {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            let valid_bucket = !bucket.is_empty()
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if !valid_bucket {
                return Err(Error::Plan(format!(
                    "'{url}' does not name a valid bucket ({expected})"
                )));
            }
            return Ok(Location {
                scheme: Scheme::S3,
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        if let Some(rest) = url.strip_prefix("file://") {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            let Some(key) = path.strip_prefix('/') else {
                return Err(Error::Plan(format!(
                    "'{url}' is not an absolute file URL ({expected})"
                )));
            };
            return Ok(Location {
                scheme: Scheme::File,
                bucket: String::new(),
                key: key.to_string(),
            });
        }
        Err(Error::Plan(format!(
            "'{url}' is not an object URL ({expected})"
        )))
    }

    /// The URL of the object (or prefix) `key` of this store.
    pub fn url(&self, key: &str) -> String {
        match self.scheme {
            Scheme::S3 => format!("s3://{}/{key}", self.bucket),
            Scheme::File => format!("file:///{key}"),
        }
    }

    /// `key` as an object path; an error names `url`.
    pub fn path(key: &str, url: &str) -> Result<Path> {
        Path::parse(key).map_err(|e| Error::Plan(format!("invalid object path in '{url}': {e}")))
    }
}

/// How to reach an object store, beyond what the environment says.
#[derive(Clone, Default)]
pub(crate) struct StoreOptions {
    pub endpoint: Option<String>,
    pub allow_http: Option<bool>,
    pub region: Option<String>,
    pub credentials: Option<(String, String)>,
    pub max_retries: Option<usize>,
    pub retry_timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("StoreOptions")
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("region", &self.region)
            .field(
                "access_key_id",
                &self.credentials.as_ref().map(|(key, _)| key),
            )
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl StoreOptions {
    /// The options worth showing in a descriptor (no credentials).
    pub fn describe(&self, config: &mut serde_json::Map<String, serde_json::Value>) {
        use serde_json::json;
        if let Some(endpoint) = &self.endpoint {
            config.insert("endpoint".into(), json!(endpoint));
        }
        if let Some(allow_http) = self.allow_http {
            config.insert("allow_http".into(), json!(allow_http));
        }
        if let Some(region) = &self.region {
            config.insert("region".into(), json!(region));
        }
        if let Some(max_retries) = self.max_retries {
            config.insert("max_retries".into(), json!(max_retries));
        }
        let millis = |d: &Duration| json!(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        for (name, value) in [
            ("retry_timeout_ms", &self.retry_timeout),
            ("connect_timeout_ms", &self.connect_timeout),
            ("request_timeout_ms", &self.request_timeout),
        ] {
            if let Some(d) = value {
                config.insert(name.into(), millis(d));
            }
        }
    }

    /// The store of `location`: S3 configured from the environment and these options, or
    /// the local file system.
    fn build(&self, location: &Location, url: &str) -> Result<Arc<dyn ObjectStore>> {
        if location.scheme == Scheme::File {
            return Ok(Arc::new(LocalFileSystem::new()));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&location.bucket);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(allow_http) = self.allow_http {
            builder = builder.with_allow_http(allow_http);
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        if let Some((key, secret)) = &self.credentials {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret);
        }
        let mut retry = RetryConfig::default();
        if let Some(max_retries) = self.max_retries {
            retry.max_retries = max_retries;
        }
        if let Some(retry_timeout) = self.retry_timeout {
            retry.retry_timeout = retry_timeout;
            retry.backoff.max_backoff = retry.backoff.max_backoff.min(retry_timeout);
        }
        builder = builder.with_retry(retry);
        // Through the configuration keys, so that the client options read from the
        // environment (AWS_ALLOW_HTTP, …) stay.
        let millis = |d: Duration| format!("{}ms", d.as_millis());
        if let Some(timeout) = self.connect_timeout {
            builder = builder.with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                millis(timeout),
            );
        }
        if let Some(timeout) = self.request_timeout {
            builder = builder.with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                millis(timeout),
            );
        }
        let store = builder
            .build()
            .map_err(|e| Error::Plan(format!("cannot configure S3 for '{url}': {e}")))?;
        Ok(Arc::new(store))
    }
}

/// A store, with the runtime its calls are made on.
///
/// Every reader and writer has its own: the HTTP connections of a store belong to the
/// runtime they were opened on.
pub(crate) struct Client {
    runtime: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("store", &self.store.to_string())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the store of `location`.
    pub fn connect(location: &Location, options: &StoreOptions, url: &str) -> Result<Client> {
        let store = options.build(location, url)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io(format!("starting the object store client for '{url}'"), e))?;
        Ok(Client { runtime, store })
    }

    /// Runs `future` to completion. From within an async runtime (where blocking it is not
    /// allowed) it runs on a thread of its own.
    fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.runtime.block_on(future);
        }
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| self.runtime.block_on(future));
            match handle.join() {
                Ok(output) => output,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// The objects of `location` whose keys match its pattern, sorted by key. Wildcards do
    /// not match `/`, nor a leading `.` of a name. No object is an [`Error::Input`].
    pub fn list_matching(&self, location: &Location, url: &str) -> Result<Vec<Listed>> {
        let pattern = &location.key;
        let matcher = glob::Pattern::new(pattern)
            .map_err(|e| Error::Plan(format!("invalid object pattern '{url}': {e}")))?;
        // List below the last `/` before the first wildcard.
        let literal = pattern
            .find(['*', '?', '['])
            .map_or(pattern.as_str(), |i| &pattern[..i]);
        let prefix_key = literal.rfind('/').map_or("", |i| &literal[..i]);
        let prefix = Location::path(prefix_key, url)?;
        let prefix_url = location.url(if prefix_key.is_empty() {
            ""
        } else {
            prefix_key
        });
        // Only the objects right below the prefix can match a pattern without a further `/`
        // (nor `**`).
        let rest = pattern[prefix_key.len()..].trim_start_matches('/');
        let recursive = rest.contains('/') || rest.contains("**");
        let prefix = (!prefix_key.is_empty()).then_some(&prefix);
        let store = &self.store;
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let matches =
            |meta: &object_store::ObjectMeta| matcher.matches_with(meta.location.as_ref(), options);
        // Only the matching objects are kept as the listing streams in: a `**` pattern over
        // a large bucket does not hold the whole listing.
        let listed = self.run(async move {
            if recursive {
                let mut stream = store.list(prefix);
                let mut objects = Vec::new();
                while let Some(meta) = stream.next().await {
                    let meta = meta?;
                    if matches(&meta) {
                        objects.push(meta);
                    }
                }
                Ok(objects)
            } else {
                store.list_with_delimiter(prefix).await.map(|l| {
                    l.objects
                        .into_iter()
                        .filter(|meta| matches(meta))
                        .collect::<Vec<_>>()
                })
            }
        });
        let objects = listed.map_err(|e| list_error(e, location, url, &prefix_url))?;
        let mut matching: Vec<Listed> = objects
            .into_iter()
            .map(|meta| Listed {
                url: location.url(meta.location.as_ref()),
                path: meta.location,
                size: meta.size,
                e_tag: meta.e_tag,
            })
            .collect();
        if matching.is_empty() {
            return Err(Error::Input(format!("no object matches '{url}'")));
        }
        matching.sort_by(|a, b| a.path.as_ref().cmp(b.path.as_ref()));
        Ok(matching)
    }

    /// Downloads `object` from byte `from` into the local file `to`, a piece at a time,
    /// until `until`.
    ///
    /// The object is fetched in ranges of [`RANGE_BYTES`], each one request (with its own
    /// retries and timeout, so that a big object is not cut by the request timeout), all of
    /// the version the first one got.
    pub fn download(&self, object: &Listed, from: u64, until: Until, to: &LocalPath) -> Result<()> {
        let local = |e| Error::io(format!("downloading {} to {}", object.url, to.display()), e);
        let mut file = std::fs::File::create(to).map_err(local)?;
        match self.fetch(object, from, until, &mut file) {
            Ok(()) => file.flush().map_err(local),
            Err(Transfer::Local(e)) => Err(local(e)),
            Err(e) => Err(transfer_error(e, &object.url)),
        }
    }

    /// How many `\n` bytes the bytes `from..upto` of `object` hold (read, not kept).
    pub fn count_newlines(&self, object: &Listed, from: u64, upto: u64) -> Result<u64> {
        if from >= upto {
            return Ok(0);
        }
        let mut counter = NewlineCounter(0);
        match self.fetch(object, from, Until::Byte(upto), &mut counter) {
            Ok(()) => Ok(counter.0),
            Err(e) => Err(transfer_error(e, &object.url)),
        }
    }

    /// Writes the bytes of `object` from `from` until `until` to `out`.
    fn fetch(
        &self,
        object: &Listed,
        from: u64,
        until: Until,
        out: &mut (dyn Write + Send),
    ) -> Result<(), Transfer> {
        let store = &self.store;
        self.run(async {
            let mut counter = match until {
                Until::Lines(n) => Some(LineCounter::new(n)),
                _ => None,
            };
            // The size and version listed, or as the first response gives them.
            let mut size = object.size;
            let mut etag: Option<String> = object.e_tag.clone();
            let mut offset = from;
            loop {
                let mut end = offset.saturating_add(RANGE_BYTES).min(size);
                match until {
                    // Up to the split's end first; then small ranges until its last line ends.
                    Until::LineEnd(n) if offset < n => end = end.min(n),
                    Until::LineEnd(_) => end = end.min(offset.saturating_add(LINE_TAIL_BYTES)),
                    Until::Byte(n) => end = end.min(n),
                    Until::End | Until::Lines(_) => {}
                }
                if offset >= end && size > 0 {
                    return Ok(());
                }
                // An empty object has no range to ask for.
                let range = (size > 0).then_some(offset..end);
                let options = GetOptions::default()
                    .with_range(range)
                    .with_if_match(etag.clone());
                let result = store.get_opts(&object.path, options).await?;
                if offset == from {
                    size = result.meta.size;
                    etag = etag.or_else(|| result.meta.e_tag.clone());
                }
                let mut stream = result.into_stream();
                while let Some(piece) = stream.next().await {
                    let piece = piece?;
                    let at = offset;
                    offset += piece.len() as u64;
                    let cut = match until {
                        Until::Lines(_) => counter.as_mut().and_then(|c| c.cut(&piece)),
                        Until::LineEnd(n) => {
                            // The `\n` ending the line that holds byte n - 1; past the
                            // longest line a reader takes, the rest is not needed (that line
                            // is refused as too long).
                            let last = n.saturating_sub(1);
                            let limit = n.saturating_add(MAX_LINE_BYTES as u64 + 1);
                            (offset > last)
                                .then(|| usize::try_from(last.saturating_sub(at)).unwrap_or(0))
                                .and_then(|skip| {
                                    memchr::memchr(b'\n', &piece[skip..])
                                        .map(|i| skip + i + 1)
                                        .or_else(|| {
                                            (offset >= limit).then(|| {
                                                usize::try_from(limit - at).unwrap_or(piece.len())
                                            })
                                        })
                                })
                        }
                        Until::End | Until::Byte(_) => None,
                    };
                    match cut {
                        Some(cut) => {
                            out.write_all(&piece[..cut]).map_err(Transfer::Local)?;
                            return Ok(());
                        }
                        None => out.write_all(&piece).map_err(Transfer::Local)?,
                    }
                }
                if offset >= size || offset < end {
                    // Done; or the range came back short, which an unchanged object never
                    // does.
                    if offset < size {
                        return Err(Transfer::Remote(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("the object ended after {offset} of its {size} bytes"),
                        )));
                    }
                    return Ok(());
                }
            }
        })
    }

    /// The Arrow schema of a Parquet object, from its footer alone.
    pub fn parquet_schema(&self, object: &Listed) -> Result<SchemaRef> {
        Ok(self.parquet_layout(object)?.schema)
    }

    /// Writes the bytes of `object` in `ranges` into a new local file `to` of the object's
    /// size, each at its offset (the rest is a hole): enough of a Parquet object for a reader
    /// of some of its row groups.
    pub fn download_ranges(
        &self,
        object: &Listed,
        ranges: &[Range<u64>],
        to: &LocalPath,
    ) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let local = |e| Error::io(format!("downloading {} to {}", object.url, to.display()), e);
        let mut file = std::fs::File::create(to).map_err(local)?;
        file.set_len(object.size).map_err(local)?;
        for range in ranges {
            file.seek(SeekFrom::Start(range.start)).map_err(local)?;
            match self.fetch(object, range.start, Until::Byte(range.end), &mut file) {
                Ok(()) => {}
                Err(Transfer::Local(e)) => return Err(local(e)),
                Err(e) => return Err(transfer_error(e, &object.url)),
            }
        }
        file.flush().map_err(local)
    }

    /// The schema of a Parquet object, and where its row groups and footer lie, from its
    /// footer alone.
    pub fn parquet_layout(&self, object: &Listed) -> Result<ParquetLayout> {
        let not_parquet =
            |why: String| Error::Input(format!("{} is not a Parquet file: {why}", object.url));
        let size = object.size;
        if size < FOOTER_BYTES as u64 {
            return Err(not_parquet(format!("it has {size} bytes")));
        }
        let tail_start = size - size.min(PARQUET_TAIL_BYTES);
        let tail = self.get_range(object, tail_start..size)?;
        let footer = tail
            .len()
            .checked_sub(FOOTER_BYTES)
            .and_then(|i| tail.get(i..))
            .ok_or_else(|| not_parquet("the object is shorter than listed".into()))?;
        let footer = FooterTail::try_from(footer).map_err(|e| not_parquet(e.to_string()))?;
        let metadata_len = footer.metadata_length() as u64;
        if metadata_len + FOOTER_BYTES as u64 > size {
            return Err(not_parquet(format!(
                "its footer names {metadata_len} bytes of metadata, more than the object has"
            )));
        }
        let metadata_start = size - FOOTER_BYTES as u64 - metadata_len;
        let metadata_end = size - FOOTER_BYTES as u64;
        let metadata = if metadata_start >= tail_start {
            let from = usize::try_from(metadata_start - tail_start).unwrap_or(usize::MAX);
            let to = usize::try_from(metadata_end - tail_start).unwrap_or(usize::MAX);
            tail.slice(from.min(to)..to.min(tail.len()))
        } else {
            self.get_range(object, metadata_start..metadata_end)?
        };
        let metadata = ParquetMetaDataReader::decode_metadata(&metadata)
            .map_err(|e| not_parquet(e.to_string()))?;
        let mut row_groups = Vec::with_capacity(metadata.num_row_groups());
        for (k, group) in metadata.row_groups().iter().enumerate() {
            let (mut start, mut end) = (u64::MAX, 0u64);
            for column in group.columns() {
                // A column chunk starts at its dictionary page, if any, else its first data
                // page (negative offsets, from a damaged footer, are refused).
                let first = column
                    .dictionary_page_offset()
                    .unwrap_or(column.data_page_offset());
                let (Ok(first), Ok(len)) = (
                    u64::try_from(first),
                    u64::try_from(column.compressed_size()),
                ) else {
                    return Err(not_parquet(format!(
                        "row group {k} has a column chunk at a negative offset or size"
                    )));
                };
                start = start.min(first);
                end = end.max(first.saturating_add(len));
            }
            row_groups.push(start.min(end)..end.min(metadata_start));
        }
        let arrow = ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::new())
            .map_err(|e| not_parquet(e.to_string()))?;
        Ok(ParquetLayout {
            schema: Arc::clone(arrow.schema()),
            row_groups,
            footer: metadata_start..size,
        })
    }

    fn get_range(&self, object: &Listed, range: Range<u64>) -> Result<bytes::Bytes> {
        let store = &self.store;
        let (start, end) = (range.start, range.end);
        let options = GetOptions::default()
            .with_range(Some(range))
            .with_if_match(object.e_tag.clone());
        self.run(async move { store.get_opts(&object.path, options).await?.bytes().await })
            .map_err(|e| store_error(e, format!("reading bytes {start}..{end} of {}", object.url)))
    }

    /// Uploads the local file `from` as the object `to` (named `url`), in parts of
    /// [`PART_BYTES`]: the object appears whole when the upload completes, or not at all.
    /// A failed upload is aborted.
    pub fn upload(&self, from: &LocalPath, to: &Path, url: &str) -> Result<()> {
        let local = |e| Error::io(format!("uploading {} to {url}", from.display()), e);
        let mut file = std::fs::File::open(from).map_err(local)?;
        let store = &self.store;
        let uploaded: Result<(), Transfer> = self.run(async {
            let upload = store.put_multipart(to).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut buf = vec![0u8; UPLOAD_READ_BYTES];
            loop {
                let n = match read_full(&mut file, &mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        // Best effort: the upload failed anyway.
                        let _ = writer.abort().await;
                        return Err(Transfer::Local(e));
                    }
                };
                if n == 0 {
                    break;
                }
                if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    let _ = writer.abort().await;
                    return Err(e.into());
                }
                writer.write(&buf[..n]);
            }
            // Aborts the upload itself when it fails.
            writer.finish().await?;
            Ok(())
        });
        match uploaded {
            Ok(()) => Ok(()),
            Err(Transfer::Local(e)) => Err(local(e)),
            Err(Transfer::Store(e)) => Err(store_error(e, format!("uploading {url}"))),
            Err(Transfer::Remote(e)) => Err(Error::io(format!("uploading {url}"), e)),
        }
    }

    /// The objects right below `prefix` of `location` (the prefix named `url`). A missing
    /// directory of the local file system has none.
    pub fn list_below(&self, location: &Location, prefix: &Path, url: &str) -> Result<Vec<Path>> {
        let store = &self.store;
        let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
        let listed = self.run(async move { store.list_with_delimiter(prefix).await });
        match listed {
            Ok(listed) => Ok(listed.objects.into_iter().map(|m| m.location).collect()),
            Err(object_store::Error::NotFound { .. }) if location.scheme == Scheme::File => {
                Ok(Vec::new())
            }
            Err(e) => Err(list_error(e, location, url, url)),
        }
    }

    /// Deletes the object `path` (named `url`).
    pub fn delete(&self, path: &Path, url: &str) -> Result<()> {
        let store = &self.store;
        self.run(async move { store.delete(path).await })
            .map_err(|e| store_error(e, format!("deleting {url}")))
    }
}

/// Where the parts of a Parquet object lie.
#[derive(Debug, Clone)]
pub(crate) struct ParquetLayout {
    /// Its Arrow schema.
    pub schema: SchemaRef,
    /// The bytes of each row group's column chunks.
    pub row_groups: Vec<Range<u64>>,
    /// The bytes of its metadata and tail.
    pub footer: Range<u64>,
}

/// An object that matched a source's pattern.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    /// Its path in the store.
    pub path: Path,
    /// Its URL, as messages name it.
    pub url: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its version (entity tag) when listed, if the store gives one: every read of it asks
    /// for that version, so that the pieces of one object read by several workers (and its
    /// footer, and the lines counted before a piece) are of one version.
    pub e_tag: Option<String>,
}

/// What can fail moving bytes between a store and a local file.
enum Transfer {
    /// A call on the store failed.
    Store(object_store::Error),
    /// The store's answer was wrong.
    Remote(std::io::Error),
    /// The local file failed.
    Local(std::io::Error),
}

/// The error of a failed download of the object `url`.
fn transfer_error(e: Transfer, url: &str) -> Error {
    let context = format!("downloading {url}");
    match e {
        Transfer::Store(e) => store_error(e, context),
        Transfer::Remote(e) | Transfer::Local(e) => Error::io(context, e),
    }
}

impl From<object_store::Error> for Transfer {
    fn from(e: object_store::Error) -> Self {
        Transfer::Store(e)
    }
}

impl From<std::io::Error> for Transfer {
    fn from(e: std::io::Error) -> Self {
        Transfer::Local(e)
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes it read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The error of a store call: what was being done, naming the object, and why.
fn store_error(e: object_store::Error, context: String) -> Error {
    if let object_store::Error::Precondition { .. } = e {
        return Error::Input(format!(
            "{context}: the object changed while the job read it (its version is not the one listed)"
        ));
    }
    Error::io(context, std::io::Error::from(e))
}

/// The error of a listing: a missing bucket or prefix, or a refused access, is the input's
/// fault; anything else the store's. S3 reports them with an error code in the response
/// body (which object_store does not classify for listings).
fn list_error(e: object_store::Error, location: &Location, url: &str, prefix_url: &str) -> Error {
    use object_store::Error as E;
    let text = e.to_string();
    let has_code = |codes: &[&str]| codes.iter().any(|code| text.contains(code));
    let listing = if url == prefix_url {
        format!("cannot list '{url}'")
    } else {
        format!("cannot list {prefix_url} for '{url}'")
    };
    if location.scheme == Scheme::S3 && has_code(&["NoSuchBucket"]) {
        return Error::Input(format!(
            "{listing}: the bucket '{}' does not exist: {e}",
            location.bucket
        ));
    }
    if matches!(e, E::NotFound { .. }) {
        return Error::Input(format!("{listing}: not found: {e}"));
    }
    if matches!(e, E::PermissionDenied { .. } | E::Unauthenticated { .. })
        || has_code(&[
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        ])
    {
        return Error::Input(format!(
            "{listing}: access was refused (check the credentials): {e}"
        ));
    }
    store_error(e, listing)
}

/// Counts non-blank lines across the pieces of a download.
/// Where a download stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// At the object's end.
    End,
    /// After this many non-blank lines (the file then ends with the last of them).
    Lines(usize),
    /// At the end of the line that holds byte `n - 1` (a split's last line), or the object's.
    LineEnd(u64),
    /// Before byte `n`.
    Byte(u64),
}

/// Counts the `\n` bytes written to it.
struct NewlineCounter(u64);

impl Write for NewlineCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += memchr::memchr_iter(b'\n', buf).count() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct LineCounter {
    wanted: usize,
    seen: usize,
    /// Whether the line begun in an earlier piece has a non-blank byte.
    content: bool,
}

impl LineCounter {
    fn new(wanted: usize) -> Self {
        LineCounter {
            wanted,
            seen: 0,
            content: false,
        }
    }

    /// Where to cut `piece` (one past the `\n` ending the last wanted line), or `None` to
    /// take it whole.
    fn cut(&mut self, piece: &[u8]) -> Option<usize> {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', piece) {
            self.content |= !piece[start..end].trim_ascii().is_empty();
            if std::mem::take(&mut self.content) {
                self.seen += 1;
                if self.seen >= self.wanted {
                    return Some(end + 1);
                }
            }
            start = end + 1;
        }
        self.content |= !piece[start..].trim_ascii().is_empty();
        None
    }
}

/// A private local directory for the files a reader or writer stages, removed when dropped.
#[derive(Debug)]
pub(crate) struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// A fresh directory in `base` (default: the system's temporary directory).
    pub fn create(base: Option<&LocalPath>) -> Result<Scratch> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = base.map_or_else(std::env::temp_dir, LocalPath::to_path_buf);
        std::fs::create_dir_all(&base)
            .map_err(|e| Error::io(format!("creating {}", base.display()), e))?;
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("streamrun-object-{}-{n}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(Scratch { dir }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &LocalPath {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a temporary directory.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let s3 = Location::parse("s3://bucket/data/*.csv").ok();
        assert_eq!(
            s3,
            Some(Location {
                scheme: Scheme::S3,
                bucket: "bucket".into(),
                key: "data/*.csv".into()
            })
        );
        let file = Location::parse("file:///tmp/x/*.parquet").ok();
        assert_eq!(
            file.as_ref().map(|l| l.key.as_str()),
            Some("tmp/x/*.parquet")
        );
        assert_eq!(
            file.map(|l| l.url("tmp/x/a.parquet")),
            Some("file:///tmp/x/a.parquet".to_string())
        );
        for bad in [
            "s3:///x",
            "s3://",
            "http://x/y",
            "file://relative/x",
            "data/*.csv",
        ] {
            assert!(
                matches!(Location::parse(bad), Err(Error::Plan(m)) if m.contains(bad)),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_output_has_no_secret() {
        let options = StoreOptions {
            credentials: Some(("key-id".into(), "sekrit".into())),
            ..StoreOptions::default()
        };
        let text = format!("{options:?}");
        assert!(
            text.contains("key-id") && !text.contains("sekrit"),
            "{text}"
        );
        let mut config = serde_json::Map::new();
        options.describe(&mut config);
        assert!(
            !serde_json::Value::Object(config)
                .to_string()
                .contains("sekrit")
        );
    }

    #[test]
    fn works_from_within_an_async_runtime() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("streamrun-object-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", e))?;
        std::fs::write(dir.join("a.csv"), "x\n1\n").map_err(|e| Error::io("writing", e))?;
        let url = format!("file://{}/*.csv", dir.display());
        let location = Location::parse(&url)?;
        let client = Client::connect(&location, &StoreOptions::default(), &url)?;
        let outer = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| Error::io("runtime", e))?;
        // Blocking on the client's runtime there would panic: it runs on a thread of its own.
        let listed = outer.block_on(async { client.list_matching(&location, &url) })?;
        assert_eq!(listed.len(), 1);
        assert!(listed[0].url.ends_with("/a.csv"), "{}", listed[0].url);
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing", e))?;
        Ok(())
    }

    #[test]
    fn counts_non_blank_lines_across_pieces() {
        let mut counter = LineCounter::new(3);
        assert_eq!(counter.cut(b"a\n\n  \nb"), None);
        assert_eq!(counter.cut(b"c\nd"), None);
        assert_eq!(counter.cut(b"\ne\n"), Some(1));
        let mut counter = LineCounter::new(1);
        assert_eq!(counter.cut(b"\n\nx\ny\n"), Some(4));
    }
}
