//! Job specs: a job declared in TOML from the built-in operators, run by `stream-run run`.
//!
//! ```toml
//! name = "wordcount"
//!
//! [source]
//! format = "text"              # text | csv | json | parquet | crawl
//! path = "../data/*.txt"       # relative to this file
//!
//! [[steps]]
//! op = "split_words"
//! column = "line"
//! output = "word"
//!
//! [[steps]]
//! op = "aggregate"
//! keys = ["word"]
//! aggs = [{ fn = "count", as = "count" }]
//!
//! [sink]
//! format = "stdout"            # stdout | csv | json | parquet
//! ```
//!
//! Steps: `select` (`columns`), `where` (`column`, `cmp` one of `== != < <= > >=`, `value`),
//! `split_words` (`column`, `output`, `keep`), `aggregate` (`keys`, `aggs` of `{ fn, column, as }`
//! with `fn` one of count, sum, min, max, mean), `top_k` (`k`, `by`, `ascending`),
//! `rebalance`, `broadcast`, `window` (`kind` one of tumbling, sliding, session; `size_ms`,
//! `slide_ms`, `gap_ms`; `keys`; `aggs`), which needs `[source] event_time = { column,
//! max_delay_ms }`, and `pagerank` (`url`, `links`, `damping`, `iterations`: pages with the
//! URLs they link to, such as a crawl's, ranked into a change stream `url, rank, surfers,
//! diff`). Every error names the file and the line of the key at fault.
//!
//! Branches: a job may have more outputs than `[sink]`. Each `[[branches]]` entry has a
//! `name`, steps (`[[branches.steps]]`) and a sink (`[branches.sink]`), and reads the main
//! steps' output, or what `from` names: `"source"`, or an earlier branch (whose output it
//! then shares). A branch without a sink must feed a later one; `[sink]` may be left out
//! when branches have sinks. A stdout sink may have a `title`, a branch's name by default.
//!
//! ```toml
//! [[branches]]
//! name = "top_terms"
//! [[branches.steps]]
//! op = "top_k"
//! k = 10
//! by = "count"
//! [branches.sink]
//! format = "stdout"
//! ```
//!
//! A crawl is a source too: `format = "crawl"` with a `[source.crawl]` table of the crawl's
//! settings (`seeds`, `max_pages`, `max_depth`, `allowed_hosts`, `per_host_delay_ms`, …, as
//! `streamrun_crawl::CrawlConfig`); its rows are the fetch records (`url`, `host`, `status`,
//! `fetched_at`, `text`, `links`, …), `fetched_at` being the event time for windows.
//!
//! Object storage: a file format's `path` may be a URL, `s3://bucket/in/*.csv` or
//! `file:///data/*.parquet`, for sources and sinks (credentials from the environment).
//! Brokers: `format = "redis"` (`url`, `stream`, `group`) or `format = "nats"` (`url`,
//! `stream`, `consumer`), with `schema = ["id: Int64", "name: Utf8"]` (Arrow's type names)
//! and optionally `end_when_idle_ms`; sinks `format = "redis"` (`url`, `stream`),
//! `format = "nats"` (`url`, `subject`, optional `stream` to create) and
//! `format = "postgres"` (`connection`, `table`, optional `upsert_key = [...]` and
//! `create_table = true`). These need the binary's default features.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use serde::Deserialize;
use streamrun_connectors::{FileSink, Files, Stdout};
use streamrun_engine::{
    BadRecordPolicy, Descriptor, Error, OperatorDecl, Parallelism, Partitioning, Result, Sink,
};
use streamrun_operators::{Agg, Aggregate, CmpOp, Compare, Phase, Select, SplitWords, TopK};
use toml::Spanned;

use std::time::Duration;

use crate::dsl::{IntoSink, Job, Session, Sliding, Stream, Tumbling};

/// A job spec as written in TOML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job's name.
    pub name: String,
    /// Worker threads, unless the command line says otherwise.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Where data comes from.
    pub source: Spanned<SourceSpec>,
    /// What happens to it, in order.
    #[serde(default)]
    pub steps: Vec<Spanned<StepSpec>>,
    /// Where it goes (optional when branches have sinks).
    #[serde(default)]
    pub sink: Option<Spanned<SinkSpec>>,
    /// More lines of steps beside the main one, each with its sink.
    #[serde(default)]
    pub branches: Vec<Spanned<BranchSpec>>,
}

/// A `[[branches]]` entry: steps and a sink fed by the main steps' output (by default), by
/// the source, or by an earlier branch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchSpec {
    /// Its name: what later branches' `from` and errors call it.
    pub name: String,
    /// What feeds it: `"steps"` (the main steps' output, the default), `"source"`, or the
    /// name of an earlier branch (its output).
    #[serde(default)]
    pub from: Option<String>,
    /// Its steps, in order.
    #[serde(default)]
    pub steps: Vec<Spanned<StepSpec>>,
    /// Where its output goes; a branch without one must feed a later branch.
    #[serde(default)]
    pub sink: Option<Spanned<SinkSpec>>,
}

/// The file formats of sources.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// Text lines, one column `line`.
    Text,
    /// CSV with a header.
    Csv,
    /// JSON lines.
    Json,
    /// Parquet.
    Parquet,
    /// A web crawl (settings in `[source.crawl]`).
    Crawl,
    /// A Redis stream (`url`, `stream`, `group`, `schema`), one JSON record per entry.
    Redis,
    /// A NATS JetStream stream (`url`, `stream`, `consumer`, `schema`), one JSON record per
    /// message.
    Nats,
}

/// `[source]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The format.
    pub format: SourceFormat,
    /// A file or glob, relative to the spec's directory (files only).
    #[serde(default)]
    pub path: Option<String>,
    /// The crawl's settings (`format = "crawl"` only).
    #[serde(default)]
    pub crawl: Option<streamrun_crawl::CrawlConfig>,
    /// Brokers: the server's URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Brokers: the stream read.
    #[serde(default)]
    pub stream: Option<String>,
    /// Redis: the consumer group (default: the job's name).
    #[serde(default)]
    pub group: Option<String>,
    /// NATS: the durable consumer (default: the job's name).
    #[serde(default)]
    pub consumer: Option<String>,
    /// Brokers (and CSV or JSON files, instead of inferring it): the records' schema, as
    /// `"name: Type"` strings in Arrow's notation (`"id: Int64"`, `"name: Utf8"`,
    /// `"at: Timestamp(Millisecond, None)"`); a field is nullable.
    #[serde(default)]
    pub schema: Option<Vec<String>>,
    /// Brokers: end once nothing arrived for this long (a bounded run); by default the
    /// source never ends.
    #[serde(default)]
    pub end_when_idle_ms: Option<u64>,
    /// CSV: whether the first line is a header (default true).
    #[serde(default)]
    pub has_header: Option<bool>,
    /// CSV: the delimiter, one character (default `,`).
    #[serde(default)]
    pub delimiter: Option<String>,
    /// Rows per batch.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Whether files may be split between workers (default true).
    #[serde(default)]
    pub splittable: Option<bool>,
    /// `fail` (default) or `dead_letter`.
    #[serde(default)]
    pub on_bad_record: BadRecordPolicy,
    /// Where bad records go with `on_bad_record = "dead_letter"`.
    #[serde(default)]
    pub dead_letters: Option<SinkSpec>,
    /// Event time: `{ column = "t", max_delay_ms = 0 }` (also `allowed_lateness_ms`,
    /// `idle_timeout_ms`), for windows.
    #[serde(default)]
    pub event_time: Option<EventTimeSpec>,
}

/// `[source] event_time`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeSpec {
    /// The event-time column: a timestamp, or Int64 milliseconds.
    pub column: String,
    /// How far out of order records may arrive, in milliseconds.
    #[serde(default)]
    pub max_delay_ms: u64,
    /// How far behind the watermark records may still update windows, in milliseconds.
    #[serde(default)]
    pub allowed_lateness_ms: u64,
    /// After how long without data a partition counts as idle, in milliseconds.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
}

/// The kinds of event-time windows of a `window` step.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// Consecutive windows of `size_ms`.
    Tumbling,
    /// Windows of `size_ms` starting every `slide_ms`.
    Sliding,
    /// Per-key sessions ended by `gap_ms` of inactivity.
    Session,
}

/// One `[[steps]]` entry.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum StepSpec {
    /// Keep columns.
    Select {
        /// The columns kept, in order.
        columns: Vec<String>,
    },
    /// Keep rows where `column cmp value`.
    Where {
        /// The column.
        column: String,
        /// The comparison.
        cmp: CmpOp,
        /// The constant.
        value: toml::Value,
    },
    /// One row per word of a text column.
    SplitWords {
        /// The text column.
        column: String,
        /// The word column's name.
        output: String,
        /// Columns carried to each word's row.
        #[serde(default)]
        keep: Vec<String>,
    },
    /// Aggregate by key.
    Aggregate {
        /// The key columns.
        keys: Vec<String>,
        /// The aggregates.
        aggs: Vec<Agg>,
    },
    /// The k greatest rows by a column.
    TopK {
        /// How many.
        k: usize,
        /// The column.
        by: String,
        /// Least first instead.
        #[serde(default)]
        ascending: bool,
    },
    /// Spread batches over workers.
    Rebalance {},
    /// Give every worker every batch.
    Broadcast {},
    /// Aggregate by key per event-time window (the source needs `event_time`).
    Window {
        /// Tumbling, sliding or session.
        kind: WindowKind,
        /// Window length (tumbling, sliding), in milliseconds.
        #[serde(default)]
        size_ms: Option<u64>,
        /// Distance between window starts (sliding), in milliseconds.
        #[serde(default)]
        slide_ms: Option<u64>,
        /// Inactivity that ends a session (session), in milliseconds.
        #[serde(default)]
        gap_ms: Option<u64>,
        /// The key columns.
        keys: Vec<String>,
        /// The aggregates.
        aggs: Vec<Agg>,
    },
    /// PageRank of pages: rows with a URL and the list of URLs it links to (the crawl's
    /// records), to a change stream `url, rank, surfers, diff` (see
    /// [`Stream::link_rank`]).
    Pagerank {
        /// The URL column (default `url`).
        #[serde(default = "default_url_column")]
        url: String,
        /// The links column, a list of URLs (default `links`).
        #[serde(default = "default_links_column")]
        links: String,
        /// The damping factor, between 0 and 1 exclusive (default 0.85).
        #[serde(default = "default_damping")]
        damping: f64,
        /// Rounds (default 30, at most 1,000).
        #[serde(default = "default_iterations")]
        iterations: u64,
    },
}

fn default_url_column() -> String {
    "url".into()
}

fn default_links_column() -> String {
    "links".into()
}

fn default_damping() -> f64 {
    0.85
}

fn default_iterations() -> u64 {
    30
}

/// The most rounds a `pagerank` step may ask for.
const MAX_PAGERANK_ROUNDS: u64 = 1_000;

impl StepSpec {
    fn op_name(&self) -> &'static str {
        match self {
            StepSpec::Select { .. } => "select",
            StepSpec::Where { .. } => "where",
            StepSpec::SplitWords { .. } => "split_words",
            StepSpec::Aggregate { .. } => "aggregate",
            StepSpec::TopK { .. } => "top_k",
            StepSpec::Rebalance {} => "rebalance",
            StepSpec::Broadcast {} => "broadcast",
            StepSpec::Window { .. } => "window",
            StepSpec::Pagerank { .. } => "pagerank",
        }
    }
}

/// The formats of sinks.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkFormat {
    /// A table on standard output.
    Stdout,
    /// CSV part files in a directory.
    Csv,
    /// JSON lines part files in a directory.
    Json,
    /// Parquet part files in a directory.
    Parquet,
    /// A PostgreSQL table (`connection`, `table`, optional `upsert_key`, `create_table`).
    Postgres,
    /// A Redis stream (`url`, `stream`).
    Redis,
    /// A NATS subject (`url`, `subject`, optional `stream` to create).
    Nats,
}

/// `[sink]` (and `dead_letters`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// The format.
    pub format: SinkFormat,
    /// The output directory, relative to the spec's directory (not for stdout).
    #[serde(default)]
    pub path: Option<String>,
    /// stdout: a line printed before the table (a branch's name by default).
    #[serde(default)]
    pub title: Option<String>,
    /// stdout: rows shown (default 100).
    #[serde(default)]
    pub max_rows: Option<usize>,
    /// Redis, NATS: the server's URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Redis: the stream appended to; NATS: a stream to create for the subject when missing.
    #[serde(default)]
    pub stream: Option<String>,
    /// NATS: the subject published to.
    #[serde(default)]
    pub subject: Option<String>,
    /// PostgreSQL: the connection string (`host=… user=… dbname=…`).
    #[serde(default)]
    pub connection: Option<String>,
    /// PostgreSQL: the table.
    #[serde(default)]
    pub table: Option<String>,
    /// PostgreSQL: upsert by these columns instead of appending.
    #[serde(default)]
    pub upsert_key: Vec<String>,
    /// PostgreSQL: create the table when missing (default false).
    #[serde(default)]
    pub create_table: bool,
}

/// A spec loaded into a job, with what is needed to point errors at lines of the file.
#[derive(Debug)]
pub struct LoadedSpec {
    /// The job.
    pub job: Job,
    /// Workers the spec asks for.
    pub workers: Option<usize>,
    file: String,
    /// (node name, line) for every node built from the spec.
    lines: Vec<(String, usize)>,
}

impl LoadedSpec {
    /// Rewrites an error of this job (from compiling or running it) to name the spec's file
    /// and the line of the step at fault.
    pub fn locate(&self, error: Error) -> Error {
        let message = error.to_string();
        for (name, line) in &self.lines {
            if message.contains(&format!("'{name}'")) {
                return Error::Plan(format!("{}:{line}: {message}", self.file));
            }
        }
        error
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn resolve(base: &Path, path: &str) -> String {
    let p = Path::new(path);
    if p.is_absolute() {
        path.to_owned()
    } else {
        base.join(p).to_string_lossy().into_owned()
    }
}

/// Reads and builds the job spec at `path`.
pub fn load(path: &Path) -> Result<LoadedSpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading job spec {}", path.display()), e))?;
    let base: PathBuf = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    from_str(&text, &path.display().to_string(), &base)
}

/// Builds a job from spec text; `file` names it in errors, `base` anchors relative paths.
pub fn from_str(text: &str, file: &str, base: &Path) -> Result<LoadedSpec> {
    let spec: JobSpec = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
        Error::Plan(format!("{file}:{line}: {}", e.message()))
    })?;
    let at = |span: std::ops::Range<usize>| line_of(text, span.start);
    let fail = |line: usize, message: String| Error::Plan(format!("{file}:{line}: {message}"));
    if spec.workers == Some(0) {
        return Err(fail(1, "workers must be at least 1".into()));
    }

    let job = Job::new(&spec.name);
    let mut lines = Vec::new();

    let source_line = at(spec.source.span());
    let source = spec.source.get_ref();
    let (source_descriptor, source_impl) = match (source.format, &source.path, &source.crawl) {
        (SourceFormat::Crawl, None, Some(config)) => {
            let unused = [
                ("has_header", source.has_header.is_some()),
                ("delimiter", source.delimiter.is_some()),
                ("batch_size", source.batch_size.is_some()),
                ("splittable", source.splittable.is_some()),
            ];
            if let Some((key, _)) = unused.iter().find(|(_, set)| *set) {
                return Err(fail(
                    source_line,
                    format!("source.{key} is for files: a crawl does not take it"),
                ));
            }
            config
                .validate()
                .map_err(|e| fail(source_line, format!("source.crawl: {e}")))?;
            streamrun_crawl::CrawlSource::new(config.clone()).into_parts()
        }
        (SourceFormat::Crawl, _, None) => {
            return Err(fail(
                source_line,
                "format = \"crawl\" needs a [source.crawl] table (seeds = [...], ...)".into(),
            ));
        }
        (SourceFormat::Crawl, Some(_), Some(_)) => {
            return Err(fail(
                source_line,
                "a crawl has no source.path: its seeds are in [source.crawl]".into(),
            ));
        }
        (_, _, Some(_)) => {
            return Err(fail(
                source_line,
                "[source.crawl] is for format = \"crawl\"".into(),
            ));
        }
        (SourceFormat::Redis | SourceFormat::Nats, None, None) => {
            connectors::broker_source(&spec.name, source).map_err(|m| fail(source_line, m))?
        }
        (SourceFormat::Redis | SourceFormat::Nats, Some(_), None) => {
            return Err(fail(
                source_line,
                "a broker source has no source.path: it reads source.stream at source.url".into(),
            ));
        }
        (format, Some(path), None) if is_object_url(path) => {
            connectors::object_source(format, path, source).map_err(|m| fail(source_line, m))?
        }
        (_, None, None) => {
            return Err(fail(
                source_line,
                "source.path is missing: the files to read (a path or glob)".into(),
            ));
        }
        (format, Some(path), None) => {
            let files = file_source(format, &resolve(base, path), source)
                .map_err(|m| fail(source_line, m))?;
            (
                files.descriptor(),
                Arc::new(files) as Arc<dyn streamrun_engine::Source>,
            )
        }
    };
    let dead_letters = match (&source.on_bad_record, &source.dead_letters) {
        (BadRecordPolicy::DeadLetter, Some(dl)) => Some(
            build_sink(dl, base, None)
                .map_err(|m| fail(source_line, format!("source.dead_letters: {m}")))?,
        ),
        (BadRecordPolicy::DeadLetter, None) => {
            return Err(fail(
                source_line,
                "source.on_bad_record = \"dead_letter\" needs source.dead_letters = { format = ..., path = ... }".into(),
            ));
        }
        (BadRecordPolicy::Fail, Some(_)) => {
            return Err(fail(
                source_line,
                "source.dead_letters is set but source.on_bad_record is \"fail\": set it to \"dead_letter\"".into(),
            ));
        }
        (BadRecordPolicy::Fail, None) => None,
    };
    lines.push(("source".to_owned(), source_line));
    let mut stream: Stream = job.add_source(
        "source",
        source_descriptor,
        source_impl,
        source.on_bad_record,
        dead_letters,
    );
    if let Some(time) = &source.event_time {
        stream = stream.event_time(&time.column, Duration::from_millis(time.max_delay_ms));
        if time.allowed_lateness_ms > 0 {
            stream = stream.allowed_lateness(Duration::from_millis(time.allowed_lateness_ms));
        }
        if let Some(idle) = time.idle_timeout_ms {
            stream = stream.idle_timeout(Duration::from_millis(idle));
        }
    }

    let event_time = source.event_time.is_some();
    let main = add_steps(
        stream.clone(),
        &spec.steps,
        "",
        event_time,
        &at,
        &fail,
        &mut lines,
    )?;
    if let Some(sink) = &spec.sink {
        let sink_line = at(sink.span());
        let built = build_sink(sink.get_ref(), base, None)
            .map_err(|m| fail(sink_line, format!("sink: {m}")))?;
        lines.push(("sink".to_owned(), sink_line));
        main.sink_named("sink", built);
    }
    add_branches(
        &spec, &stream, &main, base, event_time, &at, &fail, &mut lines,
    )?;

    Ok(LoadedSpec {
        job,
        workers: spec.workers,
        file: file.to_owned(),
        lines,
    })
}

/// Adds the spec's branches, each fed by the source, the main steps or an earlier branch,
/// and checks that every line of steps ends in a sink or feeds a branch.
#[allow(clippy::too_many_arguments)]
fn add_branches(
    spec: &JobSpec,
    source: &Stream,
    main: &Stream,
    base: &Path,
    event_time: bool,
    at: &dyn Fn(std::ops::Range<usize>) -> usize,
    fail: &dyn Fn(usize, String) -> Error,
    lines: &mut Vec<(String, usize)>,
) -> Result<()> {
    // Each branch's output, its line, and whether it ends in a sink or feeds a later branch.
    let mut outputs: Vec<(String, Stream, usize, bool)> = Vec::new();
    let mut main_used = spec.sink.is_some();
    for (j, branch) in spec.branches.iter().enumerate() {
        let line = at(branch.span());
        let branch = branch.get_ref();
        let name = &branch.name;
        let this = format!("branches[{j}] ({name})");
        if name.is_empty() || matches!(name.as_str(), "source" | "steps") {
            return Err(fail(
                line,
                format!("{this}: a branch needs a name other than \"source\" and \"steps\""),
            ));
        }
        if outputs.iter().any(|(other, ..)| other == name) {
            return Err(fail(line, format!("{this}: another branch has this name")));
        }
        let from = match branch.from.as_deref().unwrap_or("steps") {
            "source" => source.clone(),
            "steps" => {
                main_used = true;
                main.clone()
            }
            other => {
                let Some(feeding) = outputs.iter_mut().find(|(n, ..)| n == other) else {
                    let known: Vec<String> = ["source", "steps"]
                        .iter()
                        .map(|s| format!("\"{s}\""))
                        .chain(outputs.iter().map(|(n, ..)| format!("\"{n}\"")))
                        .collect();
                    return Err(fail(
                        line,
                        format!(
                            "{this}: from = \"{other}\" names no earlier branch: it may be {}",
                            known.join(", ")
                        ),
                    ));
                };
                feeding.3 = true;
                feeding.1.clone()
            }
        };
        let end = add_steps(
            from,
            &branch.steps,
            &format!("{name}."),
            event_time,
            at,
            fail,
            lines,
        )?;
        if let Some(sink) = &branch.sink {
            let sink_line = at(sink.span());
            let built = build_sink(sink.get_ref(), base, Some(name))
                .map_err(|m| fail(sink_line, format!("{this}: sink: {m}")))?;
            let sink_name = format!("{name}.sink");
            lines.push((sink_name.clone(), sink_line));
            end.sink_named(&sink_name, built);
        }
        outputs.push((name.clone(), end, line, branch.sink.is_some()));
    }
    if let Some((name, _, line, _)) = outputs.iter().find(|(.., used)| !used) {
        return Err(fail(
            *line,
            format!(
                "branch \"{name}\" has no sink and feeds no later branch: give it a [branches.sink]"
            ),
        ));
    }
    if !main_used {
        let message = if spec.branches.is_empty() {
            "the job has no [sink]: where its output goes (format = \"stdout\", \"parquet\", ...)"
        } else if spec.steps.is_empty() {
            // Nothing to lose: every branch reads the source.
            return Ok(());
        } else {
            "the main [[steps]] lead nowhere: give them a [sink], or a branch with from = \"steps\""
        };
        return Err(fail(1, message.into()));
    }
    Ok(())
}

/// Adds `steps` to `stream`, naming their nodes `{prefix}steps[i]:op` and noting each one's
/// line for errors.
fn add_steps(
    mut stream: Stream,
    steps: &[Spanned<StepSpec>],
    prefix: &str,
    event_time: bool,
    at: &dyn Fn(std::ops::Range<usize>) -> usize,
    fail: &dyn Fn(usize, String) -> Error,
    lines: &mut Vec<(String, usize)>,
) -> Result<Stream> {
    for (i, step) in steps.iter().enumerate() {
        let line = at(step.span());
        let step = step.get_ref();
        let name = format!("{prefix}steps[{i}]:{}", step.op_name());
        lines.push((name.clone(), line));
        let simple =
            |descriptor: Descriptor, op: Arc<dyn streamrun_engine::OperatorFactory>| OperatorDecl {
                descriptor,
                op,
                combiner: None,
                parallelism: Parallelism::Workers,
            };
        stream = match step {
            StepSpec::Select { columns } => {
                let op = Select::new(columns.clone());
                stream.operator(&name, simple(op.descriptor(), Arc::new(op)))
            }
            StepSpec::Where { column, cmp, value } => {
                let value = serde_json::to_value(value)
                    .map_err(|e| fail(line, format!("{name}: value: {e}")))?;
                let op = Compare::new(column.clone(), *cmp, value);
                stream.operator(&name, simple(op.descriptor(), Arc::new(op)))
            }
            StepSpec::SplitWords {
                column,
                output,
                keep,
            } => {
                let op = SplitWords::new(column.clone(), output.clone()).keep(keep.clone());
                stream.operator(&name, simple(op.descriptor(), Arc::new(op)))
            }
            StepSpec::Aggregate { keys, aggs } => {
                let spec = Aggregate::new(keys.clone(), aggs.clone());
                let partial = spec.with_phase(Phase::Partial);
                let keyed_name = format!("{name}.keys");
                lines.push((keyed_name.clone(), line));
                stream
                    .exchange(&keyed_name, Partitioning::Hash { keys: keys.clone() })
                    .operator(
                        &name,
                        OperatorDecl {
                            descriptor: spec.descriptor(),
                            op: Arc::new(spec.with_phase(Phase::Final)),
                            combiner: Some((partial.descriptor(), Arc::new(partial))),
                            parallelism: Parallelism::Workers,
                        },
                    )
            }
            StepSpec::TopK { k, by, ascending } => {
                let mut op = TopK::new(*k, by.clone());
                op.descending = !ascending;
                stream.operator(
                    &name,
                    OperatorDecl {
                        descriptor: op.descriptor(),
                        op: Arc::new(op.clone()),
                        combiner: Some((op.descriptor(), Arc::new(op))),
                        parallelism: Parallelism::Single,
                    },
                )
            }
            StepSpec::Rebalance {} => stream.exchange(&name, Partitioning::RoundRobin),
            StepSpec::Broadcast {} => stream.exchange(&name, Partitioning::Broadcast),
            StepSpec::Window {
                kind,
                size_ms,
                slide_ms,
                gap_ms,
                keys,
                aggs,
            } => {
                let need = |value: &Option<u64>, key: &str| {
                    value.map(Duration::from_millis).ok_or_else(|| {
                        fail(
                            line,
                            format!("{name}: a {kind:?} window needs {key}").to_lowercase(),
                        )
                    })
                };
                if !event_time {
                    return Err(fail(
                        line,
                        format!(
                            "{name}: a window needs [source] event_time = {{ column = \"...\", max_delay_ms = ... }}"
                        ),
                    ));
                }
                // The DSL names these nodes itself; their errors point at this step.
                lines.push(("key_by".to_owned(), line));
                lines.push(("window".to_owned(), line));
                let keyed = stream.key_by(keys.clone());
                let windowed = match kind {
                    WindowKind::Tumbling => keyed.window(Tumbling::of(need(size_ms, "size_ms")?)),
                    WindowKind::Sliding => keyed.window(
                        Sliding::of(need(size_ms, "size_ms")?).every(need(slide_ms, "slide_ms")?),
                    ),
                    WindowKind::Session => keyed.window(Session::with_gap(need(gap_ms, "gap_ms")?)),
                };
                windowed.aggregate(aggs.clone())
            }
            StepSpec::Pagerank {
                url,
                links,
                damping,
                iterations,
            } => {
                if !(*damping > 0.0 && *damping < 1.0) {
                    return Err(fail(
                        line,
                        format!("{name}: damping must be between 0 and 1 (it is {damping})"),
                    ));
                }
                if !(1..=MAX_PAGERANK_ROUNDS).contains(iterations) {
                    return Err(fail(
                        line,
                        format!(
                            "{name}: iterations must be 1 to {MAX_PAGERANK_ROUNDS} (it is {iterations})"
                        ),
                    ));
                }
                // The DSL names the nodes it adds itself; their errors point at this step.
                for node in [
                    "select",
                    "link_rank.ids",
                    "link_rank.edges",
                    "incremental_join",
                    "pagerank",
                ] {
                    lines.push((node.to_owned(), line));
                }
                stream.link_rank(url, links, *damping, *iterations)
            }
        };
    }
    Ok(stream)
}

/// The sink `spec` describes; `title` is a stdout table's title unless the spec gives one.
fn build_sink(
    spec: &SinkSpec,
    base: &Path,
    title: Option<&String>,
) -> std::result::Result<(Descriptor, Arc<dyn Sink>), String> {
    let dir = |format: &str| -> std::result::Result<String, String> {
        spec.path
            .as_deref()
            .map(|p| resolve(base, p))
            .ok_or_else(|| format!("format \"{format}\" needs a path (an output directory)"))
    };
    if spec.max_rows.is_some() && spec.format != SinkFormat::Stdout {
        return Err("max_rows applies to format \"stdout\" only".into());
    }
    if spec.title.is_some() && spec.format != SinkFormat::Stdout {
        return Err("title applies to format \"stdout\" only".into());
    }
    Ok(match spec.format {
        SinkFormat::Stdout => {
            if spec.path.is_some() {
                return Err("format \"stdout\" takes no path".into());
            }
            let mut s = Stdout::table();
            if let Some(n) = spec.max_rows {
                s = s.max_rows(n);
            }
            if let Some(title) = spec.title.as_ref().or(title) {
                s = s.titled(title.clone());
            }
            s.into_sink()
        }
        SinkFormat::Csv | SinkFormat::Json | SinkFormat::Parquet
            if spec.path.as_deref().is_some_and(is_object_url) =>
        {
            let url = spec.path.clone().unwrap_or_default();
            connectors::object_sink(spec.format, url)?
        }
        SinkFormat::Csv => file_sink(Files::write_csv(dir("csv")?)),
        SinkFormat::Json => file_sink(Files::write_json(dir("json")?)),
        SinkFormat::Parquet => file_sink(Files::write_parquet(dir("parquet")?)),
        SinkFormat::Postgres => connectors::postgres_sink(spec)?,
        SinkFormat::Redis => connectors::redis_sink(spec)?,
        SinkFormat::Nats => connectors::nats_sink(spec)?,
    })
}

/// Whether a path names object storage rather than a local file.
fn is_object_url(path: &str) -> bool {
    ["s3://", "s3a://", "file://"]
        .iter()
        .any(|scheme| path.starts_with(scheme))
}

/// A `"name: Type"` list as a schema (every field nullable).
fn parse_schema(fields: &[String]) -> std::result::Result<SchemaRef, String> {
    let mut out = Vec::with_capacity(fields.len());
    for field in fields {
        let (name, kind) = field
            .split_once(':')
            .ok_or_else(|| format!("schema: {field:?} is not \"name: Type\""))?;
        let kind: arrow::datatypes::DataType = kind
            .trim()
            .parse()
            .map_err(|e| format!("schema: {field:?}: {e}"))?;
        out.push(arrow::datatypes::Field::new(name.trim(), kind, true));
    }
    if out.is_empty() {
        return Err("schema: at least one field is needed".into());
    }
    Ok(Arc::new(arrow::datatypes::Schema::new(out)))
}

/// The connectors behind features: each built when its feature is on, and a clear error
/// naming the feature otherwise.
mod connectors {
    use super::*;

    /// What a spec asks for that this build leaves out.
    #[allow(dead_code)]
    fn missing(feature: &str) -> String {
        format!(
            "stream-run was built without the \"{feature}\" feature (build it with --features {feature})"
        )
    }

    /// A required key of a connector's table.
    pub(super) fn required<'a>(
        value: &'a Option<String>,
        key: &str,
        format: &str,
    ) -> std::result::Result<&'a str, String> {
        value
            .as_deref()
            .ok_or_else(|| format!("format \"{format}\" needs {key}"))
    }

    #[cfg(feature = "object-store")]
    pub(super) fn object_sink(
        format: SinkFormat,
        url: String,
    ) -> std::result::Result<(Descriptor, Arc<dyn Sink>), String> {
        use streamrun_connectors::Objects;
        let sink = match format {
            SinkFormat::Csv => Objects::write_csv(url),
            SinkFormat::Json => Objects::write_json(url),
            _ => Objects::write_parquet(url),
        };
        Ok((sink.descriptor(), Arc::new(sink)))
    }

    #[cfg(not(feature = "object-store"))]
    pub(super) fn object_sink(
        _format: SinkFormat,
        _url: String,
    ) -> std::result::Result<(Descriptor, Arc<dyn Sink>), String> {
        Err(missing("object-store"))
    }

    #[cfg(feature = "object-store")]
    pub(super) fn object_source(
        format: SourceFormat,
        url: &str,
        source: &SourceSpec,
    ) -> std::result::Result<(Descriptor, Arc<dyn streamrun_engine::Source>), String> {
        use streamrun_connectors::Objects;
        let mut objects = match format {
            SourceFormat::Text => Objects::text(url),
            SourceFormat::Csv => Objects::csv(url),
            SourceFormat::Json => Objects::json(url),
            _ => Objects::parquet(url),
        };
        if let Some(h) = source.has_header {
            objects = objects.has_header(h);
        }
        if let Some(d) = &source.delimiter {
            match d.as_bytes() {
                [b] => objects = objects.delimiter(*b),
                _ => {
                    return Err(format!(
                        "source.delimiter must be one ASCII character, not {d:?}"
                    ));
                }
            }
        }
        if let Some(n) = source.batch_size {
            objects = objects.batch_size(n);
        }
        if source.splittable == Some(false) {
            objects = objects.split_bytes(u64::MAX);
        }
        if let Some(fields) = &source.schema {
            objects = objects.schema(parse_schema(fields)?);
        }
        Ok((objects.descriptor(), Arc::new(objects)))
    }

    #[cfg(not(feature = "object-store"))]
    pub(super) fn object_source(
        _format: SourceFormat,
        _url: &str,
        _source: &SourceSpec,
    ) -> std::result::Result<(Descriptor, Arc<dyn streamrun_engine::Source>), String> {
        Err(missing("object-store"))
    }

    #[cfg(feature = "postgres")]
    pub(super) fn postgres_sink(
        spec: &SinkSpec,
    ) -> std::result::Result<(Descriptor, Arc<dyn Sink>), String> {
        let connection = required(&spec.connection, "connection", "postgres")?;
        let table = required(&spec.table, "table", "postgres")?;
        let mut sink =
            streamrun_connectors::Postgres::sink(connection, table).create_table(spec.create_table);
        if !spec.upsert_key.is_empty() {
            sink = sink.upsert(spec.upsert_key.clone());
        }
        Ok((sink.descriptor(), Arc::new(sink)))
    }

    #[cfg(not(feature = "postgres"))]
    pub(super) fn postgres_sink(
        _spec: &SinkSpec,
    ) -> std::result::Result<(Descriptor, Arc<dyn Sink>), String> {
        Err(missing("postgres"))
    }

    #[cfg(feature = "redis")]
    pub(super) fn redis_sink(
        spec: &SinkSpec,
    ) -> std::result::Result<(Descriptor, Arc<dyn Sink>), String> {
        let sink = streamrun_connectors::RedisStreams::sink(
            required(&spec.url, "url", "redis")?,
            required(&spec.stream, "stream", "redis")?,
        );
        Ok((sink.descriptor(), Arc::new(sink)))
    }

    #[cfg(not(feature = "redis"))]
    pub(super) fn redis_sink(
        _spec: &SinkSpec,
    ) -> std::result::Result<(Descriptor, Arc<dyn Sink>), String> {
        Err(missing("redis"))
    }

    #[cfg(feature = "nats")]
    pub(super) fn nats_sink(
        spec: &SinkSpec,
    ) -> std::result::Result<(Descriptor, Arc<dyn Sink>), String> {
        let mut sink = streamrun_connectors::NatsJetStream::sink(
            required(&spec.url, "url", "nats")?,
            required(&spec.subject, "subject", "nats")?,
        );
        if let Some(stream) = &spec.stream {
            sink = sink.create_stream(stream);
        }
        Ok((sink.descriptor(), Arc::new(sink)))
    }

    #[cfg(not(feature = "nats"))]
    pub(super) fn nats_sink(
        _spec: &SinkSpec,
    ) -> std::result::Result<(Descriptor, Arc<dyn Sink>), String> {
        Err(missing("nats"))
    }

    /// A broker source: Redis or NATS.
    pub(super) fn broker_source(
        job: &str,
        source: &SourceSpec,
    ) -> std::result::Result<(Descriptor, Arc<dyn streamrun_engine::Source>), String> {
        let format = if source.format == SourceFormat::Redis {
            "redis"
        } else {
            "nats"
        };
        let url = required(&source.url, "url", format)?;
        let stream = required(&source.stream, "stream", format)?;
        let fields = source
            .schema
            .as_deref()
            .ok_or_else(|| format!("format \"{format}\" needs schema = [\"name: Type\", ...]"))?;
        let schema = parse_schema(fields)?;
        let idle = source.end_when_idle_ms.map(Duration::from_millis);
        match source.format {
            SourceFormat::Redis => {
                let group = source.group.as_deref().unwrap_or(job);
                redis_source(url, stream, group, schema, idle, source.batch_size)
            }
            _ => {
                let consumer = source.consumer.as_deref().unwrap_or(job);
                nats_source(url, stream, consumer, schema, idle, source.batch_size)
            }
        }
    }

    #[cfg(feature = "redis")]
    fn redis_source(
        url: &str,
        stream: &str,
        group: &str,
        schema: SchemaRef,
        idle: Option<Duration>,
        batch: Option<usize>,
    ) -> std::result::Result<(Descriptor, Arc<dyn streamrun_engine::Source>), String> {
        let mut source = streamrun_connectors::RedisStreams::source(url, stream, group, schema);
        if let Some(idle) = idle {
            source = source.end_when_idle(idle);
        }
        if let Some(n) = batch {
            source = source.batch_size(n);
        }
        Ok((source.descriptor(), Arc::new(source)))
    }

    #[cfg(not(feature = "redis"))]
    fn redis_source(
        _url: &str,
        _stream: &str,
        _group: &str,
        _schema: SchemaRef,
        _idle: Option<Duration>,
        _batch: Option<usize>,
    ) -> std::result::Result<(Descriptor, Arc<dyn streamrun_engine::Source>), String> {
        Err(missing("redis"))
    }

    #[cfg(feature = "nats")]
    fn nats_source(
        url: &str,
        stream: &str,
        consumer: &str,
        schema: SchemaRef,
        idle: Option<Duration>,
        batch: Option<usize>,
    ) -> std::result::Result<(Descriptor, Arc<dyn streamrun_engine::Source>), String> {
        let mut source = streamrun_connectors::NatsJetStream::source(url, stream, consumer, schema);
        if let Some(idle) = idle {
            source = source.end_when_idle(idle);
        }
        if let Some(n) = batch {
            source = source.batch_size(n);
        }
        Ok((source.descriptor(), Arc::new(source)))
    }

    #[cfg(not(feature = "nats"))]
    fn nats_source(
        _url: &str,
        _stream: &str,
        _consumer: &str,
        _schema: SchemaRef,
        _idle: Option<Duration>,
        _batch: Option<usize>,
    ) -> std::result::Result<(Descriptor, Arc<dyn streamrun_engine::Source>), String> {
        Err(missing("nats"))
    }
}

fn file_sink(sink: FileSink) -> (Descriptor, Arc<dyn Sink>) {
    sink.into_sink()
}

/// The file source `[source]` declares (the error says what is wrong, without the line).
fn file_source(
    format: SourceFormat,
    path: &str,
    source: &SourceSpec,
) -> std::result::Result<streamrun_connectors::FileSource, String> {
    let mut files = match format {
        SourceFormat::Text => Files::text(path),
        SourceFormat::Csv => Files::csv(path),
        SourceFormat::Json => Files::json(path),
        SourceFormat::Parquet | SourceFormat::Crawl | SourceFormat::Redis | SourceFormat::Nats => {
            Files::parquet(path)
        }
    };
    if let Some(h) = source.has_header {
        files = files.has_header(h);
    }
    if let Some(d) = &source.delimiter {
        match d.as_bytes() {
            [b] => files = files.delimiter(*b),
            _ => {
                return Err(format!(
                    "source.delimiter must be one ASCII character, not {d:?}"
                ));
            }
        }
    }
    if let Some(n) = source.batch_size {
        if n == 0 {
            return Err("source.batch_size must be at least 1".into());
        }
        files = files.batch_size(n);
    }
    if let Some(s) = source.splittable {
        files = files.splittable(s);
    }
    if let Some(fields) = &source.schema {
        files = files.schema(parse_schema(fields)?);
    }
    let broker_keys = [
        ("url", source.url.is_some()),
        ("stream", source.stream.is_some()),
        ("group", source.group.is_some()),
        ("consumer", source.consumer.is_some()),
        ("end_when_idle_ms", source.end_when_idle_ms.is_some()),
    ];
    if let Some((key, _)) = broker_keys.iter().find(|(_, set)| *set) {
        return Err(format!(
            "source.{key} is for format = \"redis\" or \"nats\", not files"
        ));
    }
    Ok(files)
}
