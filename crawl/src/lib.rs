//! # streamrun-crawl
//!
//! A streaming web crawl: seeds go into a frontier, pages are fetched, parsed, and their links
//! go back into the frontier, while every fetch's outcome streams out as a record (URL,
//! status, time, bytes, error kind, text, links), so failed fetches are data, not lost.
//!
//! - **Frontier** ([`Frontier`]): one queue per host, URLs de-duplicated by fingerprint
//!   (a bounded number of them: `frontier_max_urls`), normalized with the `url` crate. It is
//!   keyed state by host ([`streamrun_operators::KeyedState`]), partitioned across workers
//!   by the engine's key groups, and snapshotted so a crawl can resume.
//! - **Politeness**, per host name (all its schemes and ports): at most
//!   `per_host_concurrency` requests of a host at once, started at least `per_host_delay_ms`
//!   apart (or its robots.txt `Crawl-delay`, when longer), and none before a 429 or 503
//!   answer's `Retry-After`. Each origin's robots.txt is fetched first (following
//!   redirects) and obeyed (`texting_robots`).
//! - **Bounds**: depth, pages, allowed hosts and URL patterns, a timeout, retries with
//!   backoff, a redirect limit, a body size cap and a content-type filter.
//! - **Parsing**: links and text with a real HTML parser (`scraper`).
//! - **A site to crawl** ([`site`]): a seeded synthetic site with broken links, redirects and
//!   a robots.txt, served over HTTP on loopback, for examples, tests and benches.
//!
//! ```no_run
//! use streamrun_crawl::{Crawl, CrawlConfig};
//!
//! let config = CrawlConfig::new(["http://127.0.0.1:8080/"]).max_pages(100);
//! let run = Crawl::start(config, 2)?;
//! for record in run.records() {
//!     println!("{} {} {}", record.status, record.url, record.error_kind);
//! }
//! # Ok::<(), streamrun_crawl::CrawlError>(())
//! ```

mod crawler;
mod extract;
mod fetch;
mod frontier;
pub mod site;
mod source;

use std::sync::Arc;

use arrow::array::{
    ArrayRef, ListBuilder, RecordBatch, StringBuilder, TimestampMillisecondArray, UInt16Array,
    UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

pub use crawler::{Crawl, CrawlRun, CrawlSnapshot, CrawlStats};
pub use extract::{Extracted, MAX_TEXT_BYTES, extract};
pub use frontier::{
    Frontier, HostState, MAX_URL_BYTES, Next, Pushed, Queued, host_key, normalize, origin_key,
};
pub use source::CrawlSource;

/// What can go wrong in a crawl (a page that cannot be fetched is a record, not an error).
#[derive(Debug, thiserror::Error)]
pub enum CrawlError {
    /// The configuration cannot be used; names the field.
    #[error("crawl config: {0}")]
    Config(String),
    /// The HTTP client or the crawl's runtime could not start.
    #[error("starting the crawl: {0}")]
    Start(String),
    /// A snapshot could not be written or read.
    #[error("crawl snapshot: {0}")]
    Snapshot(String),
    /// The generated site could not be served.
    #[error("site server: {0}")]
    Site(String),
}

/// How to crawl. Built with [`CrawlConfig::new`] and its setters, or read from a job spec
/// (every field but `seeds` has a default).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrawlConfig {
    /// Where the crawl starts.
    pub seeds: Vec<String>,
    /// Links followed from a seed at most (redirects do not count).
    pub max_depth: u32,
    /// Requests of pages at most, over all workers.
    pub max_pages: u64,
    /// Hosts (`host` or `host:port`) that may be fetched; empty: the seeds' hosts.
    pub allowed_hosts: Vec<String>,
    /// URL prefixes that are never fetched (besides what robots.txt forbids).
    pub deny_prefixes: Vec<String>,
    /// Requests of one host at once.
    pub per_host_concurrency: u32,
    /// Milliseconds between the starts of a host's requests; 0 turns politeness off.
    pub per_host_delay_ms: u64,
    /// Fetch and obey robots.txt.
    pub robots: bool,
    /// The `User-Agent`, also the robots.txt agent.
    pub user_agent: String,
    /// The whole request, body included, at most (a slow server is cut off).
    pub timeout_ms: u64,
    /// Retries of a request that failed to connect, timed out or got a 5xx.
    pub retries: u32,
    /// The first retry's wait, doubled for each next.
    pub backoff_ms: u64,
    /// Redirects followed from one URL at most.
    pub max_redirects: u32,
    /// A body larger than this is cut off and recorded as `too_large`.
    pub max_body_bytes: u64,
    /// Content types whose bodies are read and parsed (prefixes).
    pub content_types: Vec<String>,
    /// Requests one worker has running at once.
    pub concurrency: usize,
    /// URLs the frontier of one worker holds at most, ever queued: past it, links are
    /// dropped (and counted).
    pub frontier_max_urls: usize,
    /// Records waiting to be read at most, per worker (then fetching waits).
    pub buffer: usize,
}

impl Default for CrawlConfig {
    fn default() -> Self {
        CrawlConfig {
            seeds: Vec::new(),
            max_depth: 16,
            max_pages: 100_000,
            allowed_hosts: Vec::new(),
            deny_prefixes: Vec::new(),
            per_host_concurrency: 2,
            per_host_delay_ms: 250,
            robots: true,
            user_agent: "streamrun-crawl/0.1".into(),
            timeout_ms: 10_000,
            retries: 2,
            backoff_ms: 200,
            max_redirects: 5,
            max_body_bytes: 5 << 20,
            content_types: vec!["text/html".into()],
            concurrency: 64,
            frontier_max_urls: 10_000_000,
            buffer: 4096,
        }
    }
}

impl CrawlConfig {
    /// The defaults, from `seeds`.
    pub fn new<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> Self {
        CrawlConfig {
            seeds: seeds.into_iter().map(Into::into).collect(),
            ..CrawlConfig::default()
        }
    }
    /// Pages at most.
    pub fn max_pages(mut self, n: u64) -> Self {
        self.max_pages = n;
        self
    }
    /// Depth at most.
    pub fn max_depth(mut self, n: u32) -> Self {
        self.max_depth = n;
        self
    }
    /// Politeness: requests of a host at once, and milliseconds between their starts (0:
    /// politeness off).
    pub fn politeness(mut self, concurrency: u32, delay_ms: u64) -> Self {
        self.per_host_concurrency = concurrency;
        self.per_host_delay_ms = delay_ms;
        self
    }
    /// Requests per worker at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }
    /// Hosts that may be fetched.
    pub fn allowed_hosts<S: Into<String>>(mut self, hosts: impl IntoIterator<Item = S>) -> Self {
        self.allowed_hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// Checks the fields, naming the first that cannot be used.
    pub fn validate(&self) -> Result<Vec<url::Url>, CrawlError> {
        if self.seeds.is_empty() {
            return Err(CrawlError::Config(
                "seeds: at least one URL is needed".into(),
            ));
        }
        let seeds = self
            .seeds
            .iter()
            .map(|s| {
                let url = url::Url::parse(s)
                    .map_err(|e| CrawlError::Config(format!("seeds: '{s}' is not a URL: {e}")))?;
                normalize(&url, "").ok_or_else(|| {
                    CrawlError::Config(format!("seeds: '{s}' is not an http(s) URL"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !self.allowed_hosts.is_empty()
            && let Some(seed) = seeds
                .iter()
                .find(|s| !self.allowed_hosts.contains(&crate::crawler::authority(s)))
        {
            return Err(CrawlError::Config(format!(
                "seeds: '{seed}' is not on an allowed host: allowed_hosts names `host:port` \
                 (with the port when it is not the scheme's), and holds {:?}",
                self.allowed_hosts
            )));
        }
        for (field, zero) in [
            ("concurrency", self.concurrency == 0),
            ("buffer", self.buffer == 0),
            ("timeout_ms", self.timeout_ms == 0),
            ("frontier_max_urls", self.frontier_max_urls == 0),
        ] {
            if zero {
                return Err(CrawlError::Config(format!("{field}: must be above 0")));
            }
        }
        Ok(seeds)
    }
}

/// Why a fetch gave no page (the record's `error_kind`; empty for a page).
pub mod error_kind {
    /// The status was not 2xx (the page is recorded with its status).
    pub const STATUS: &str = "status";
    /// A redirect: the record's `redirect` is where to; the target is queued.
    pub const REDIRECT: &str = "redirect";
    /// More redirects than `max_redirects` from one URL.
    pub const REDIRECT_LIMIT: &str = "redirect_limit";
    /// Forbidden by the host's robots.txt: not fetched.
    pub const ROBOTS: &str = "robots";
    /// The fetch of a host's robots.txt (not a page; its status says how it went).
    pub const ROBOTS_TXT: &str = "robots_txt";
    /// Connecting failed.
    pub const CONNECT: &str = "connect";
    /// The request took longer than `timeout_ms`.
    pub const TIMEOUT: &str = "timeout";
    /// The body was larger than `max_body_bytes`: cut off.
    pub const TOO_LARGE: &str = "too_large";
    /// A content type not in `content_types`: the body was not read.
    pub const CONTENT_TYPE: &str = "content_type";
    /// Another failure of the request or its body.
    pub const OTHER: &str = "other";
}

/// One fetch's outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PageRecord {
    /// The URL asked for.
    pub url: String,
    /// Its host (and port).
    pub host: String,
    /// Links followed from a seed.
    pub depth: u32,
    /// The HTTP status (0 when there was no response).
    pub status: u16,
    /// When the fetch started, milliseconds since the Unix epoch (the event time).
    pub fetched_at_ms: i64,
    /// How long it took.
    pub elapsed_ms: u64,
    /// Body bytes read.
    pub bytes: u64,
    /// Empty for a page; otherwise one of [`error_kind`].
    pub error_kind: String,
    /// What went wrong, in words.
    pub error: String,
    /// The `Content-Type`.
    pub content_type: String,
    /// Where a redirect points.
    pub redirect: String,
    /// The page's title.
    pub title: String,
    /// The page's text (scripts and styles left out).
    pub text: String,
    /// The links it has, normalized (all of them, before the crawl's filters).
    pub links: Vec<String>,
}

impl PageRecord {
    /// The schema of record batches: one row per record, in the fields' order.
    pub fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("url", DataType::Utf8, false),
            Field::new("host", DataType::Utf8, false),
            Field::new("depth", DataType::UInt32, false),
            Field::new("status", DataType::UInt16, false),
            Field::new(
                "fetched_at",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("elapsed_ms", DataType::UInt64, false),
            Field::new("bytes", DataType::UInt64, false),
            Field::new("error_kind", DataType::Utf8, false),
            Field::new("error", DataType::Utf8, false),
            Field::new("content_type", DataType::Utf8, false),
            Field::new("redirect", DataType::Utf8, false),
            Field::new("title", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, false),
            Field::new(
                "links",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                false,
            ),
        ]))
    }

    /// Records as one batch of [`PageRecord::schema`].
    pub fn to_batch(records: &[PageRecord]) -> Result<RecordBatch, arrow::error::ArrowError> {
        let text = |f: fn(&PageRecord) -> &str| -> ArrayRef {
            let mut b = StringBuilder::new();
            for r in records {
                b.append_value(f(r));
            }
            Arc::new(b.finish())
        };
        let mut links = ListBuilder::new(StringBuilder::new());
        for r in records {
            for link in &r.links {
                links.values().append_value(link);
            }
            links.append(true);
        }
        RecordBatch::try_new(
            Self::schema(),
            vec![
                text(|r| &r.url),
                text(|r| &r.host),
                Arc::new(UInt32Array::from_iter_values(
                    records.iter().map(|r| r.depth),
                )),
                Arc::new(UInt16Array::from_iter_values(
                    records.iter().map(|r| r.status),
                )),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    records.iter().map(|r| r.fetched_at_ms),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    records.iter().map(|r| r.elapsed_ms),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    records.iter().map(|r| r.bytes),
                )),
                text(|r| &r.error_kind),
                text(|r| &r.error),
                text(|r| &r.content_type),
                text(|r| &r.redirect),
                text(|r| &r.title),
                text(|r| &r.text),
                Arc::new(links.finish()),
            ],
        )
    }
}
