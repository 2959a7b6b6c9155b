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
//! `rebalance`, `broadcast`, and `window` (`kind` one of tumbling, sliding, session; `size_ms`,
//! `slide_ms`, `gap_ms`; `keys`; `aggs`), which needs `[source] event_time = { column,
//! max_delay_ms }`. Every error names the file and the line of the key at fault.
//!
//! A crawl is a source too: `format = "crawl"` with a `[source.crawl]` table of the crawl's
//! settings (`seeds`, `max_pages`, `max_depth`, `allowed_hosts`, `per_host_delay_ms`, …, as
//! `streamrun_crawl::CrawlConfig`); its rows are the fetch records (`url`, `host`, `status`,
//! `fetched_at`, `text`, `links`, …), `fetched_at` being the event time for windows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Where it goes.
    pub sink: Spanned<SinkSpec>,
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
}

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
    /// stdout: rows shown (default 100).
    #[serde(default)]
    pub max_rows: Option<usize>,
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
            build_sink(dl, base)
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

    for (i, step) in spec.steps.iter().enumerate() {
        let line = at(step.span());
        let step = step.get_ref();
        let name = format!("steps[{i}]:{}", step.op_name());
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
                if source.event_time.is_none() {
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
        };
    }

    let sink_line = at(spec.sink.span());
    let sink =
        build_sink(spec.sink.get_ref(), base).map_err(|m| fail(sink_line, format!("sink: {m}")))?;
    lines.push(("sink".to_owned(), sink_line));
    stream.sink_named("sink", sink);

    Ok(LoadedSpec {
        job,
        workers: spec.workers,
        file: file.to_owned(),
        lines,
    })
}

fn build_sink(
    spec: &SinkSpec,
    base: &Path,
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
    Ok(match spec.format {
        SinkFormat::Stdout => {
            if spec.path.is_some() {
                return Err("format \"stdout\" takes no path".into());
            }
            let mut s = Stdout::table();
            if let Some(n) = spec.max_rows {
                s = s.max_rows(n);
            }
            s.into_sink()
        }
        SinkFormat::Csv => file_sink(Files::write_csv(dir("csv")?)),
        SinkFormat::Json => file_sink(Files::write_json(dir("json")?)),
        SinkFormat::Parquet => file_sink(Files::write_parquet(dir("parquet")?)),
    })
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
        SourceFormat::Parquet | SourceFormat::Crawl => Files::parquet(path),
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
    Ok(files)
}
