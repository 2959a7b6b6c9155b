//! Crawl a site and analyse it as it streams in: words per host in one-second event-time
//! windows (written as Parquet), the most frequent terms, and the pages ranked by PageRank
//! over the link graph the crawl found.
//!
//! ```text
//! cargo run --release --example crawl_analytics -- [--pages N] [--hosts N] [--workers N]
//!     [--delay-ms MS] [--out DIR] [SEED_URL]
//! ```
//!
//! Without a seed URL it generates a site of `--pages` pages over `--hosts` hosts (with
//! broken links, redirects and a robots.txt) and serves it on loopback first.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use clap::Parser;
use streamrun::prelude::*;
use streamrun_crawl::site::{Site, SiteSpec};
use streamrun_crawl::{CrawlConfig, CrawlSource};

/// Crawl a site, count its words per host in event-time windows, rank its pages.
#[derive(Parser)]
struct Args {
    /// Pages of the generated site.
    #[arg(long, default_value_t = 2_000)]
    pages: usize,
    /// Hosts of the generated site.
    #[arg(long, default_value_t = 4)]
    hosts: usize,
    /// Worker threads (default: STREAMRUN_WORKERS, else the number of cores).
    #[arg(long, short)]
    workers: Option<usize>,
    /// Milliseconds between two requests of one host (0: politeness off).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Where to write the windowed word counts as Parquet.
    #[arg(long, default_value = "target/crawl_analytics")]
    out: String,
    /// Crawl this URL instead of a generated site.
    seed: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workers = args.workers.unwrap_or_else(streamrun::default_workers);
    let (_server, config) = match &args.seed {
        Some(seed) => (None, CrawlConfig::new([seed.clone()])),
        None => {
            let server = Site::generate(SiteSpec {
                pages: args.pages,
                hosts: args.hosts,
                ..SiteSpec::default()
            })
            .serve()?;
            let hosts: Vec<String> = (0..args.hosts).map(|k| server.host(k)).collect();
            let config = CrawlConfig::new([server.url(0)]).allowed_hosts(hosts);
            eprintln!(
                "serving a generated site of {} pages on {} hosts, from {}",
                args.pages,
                args.hosts,
                server.url(0)
            );
            (Some(server), config)
        }
    };
    let config = config
        .max_depth(1_000)
        .politeness(2, args.delay_ms)
        .max_pages(1_000_000);

    let job = Job::new("crawl_analytics");
    // Every fetch is a record, its fetch time the event time; pages are those without an
    // error kind.
    let fetches = job
        .source(CrawlSource::new(config).into_parts())
        .event_time("fetched_at", Duration::from_secs(1));
    let pages = fetches.where_("error_kind", CmpOp::Eq, "");
    let words = pages
        .select(["host", "text", "fetched_at"])
        .map_batches("words_per_host", host_words);
    words
        .key_by(["host", "word"])
        .window(Tumbling::of(Duration::from_secs(1)))
        .count()
        .sink(Files::write_parquet(&args.out));
    words
        .key_by("word")
        .count()
        .top_k(10, "count")
        .sink(Stdout::table());
    let outcomes = Collect::new();
    fetches
        .select(["status", "error_kind"])
        .key_by(["status", "error_kind"])
        .count()
        .sink(outcomes.clone());
    let graph = Collect::new();
    pages.select(["url", "links"]).sink(graph.clone());

    let started = Instant::now();
    let report = streamrun::execute_with(&job, &ExecOptions::from_env(workers)?)?;
    let elapsed = started.elapsed();

    println!("\nfetch outcomes:");
    for batch in outcomes.batches() {
        let status = batch
            .column(0)
            .as_primitive::<arrow::datatypes::UInt16Type>();
        let kind = batch.column(1).as_string::<i32>();
        let count = batch
            .column(2)
            .as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..batch.num_rows() {
            let kind = if kind.value(i).is_empty() {
                "page"
            } else {
                kind.value(i)
            };
            println!("  {:>3} {:<14} {}", status.value(i), kind, count.value(i));
        }
    }
    let ranks = pagerank(&graph.batches(), 0.85, 30);
    println!("\nPageRank, the 10 highest:");
    let mut ranked: Vec<(&String, &f64)> = ranks.iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    for (url, rank) in ranked.into_iter().take(10) {
        println!("  {rank:.5} {url}");
    }
    eprintln!(
        "\n{} fetches ({:.1} MB) in {:.2} s on {} workers ({:.0} fetches/s); word counts per host and window in {}",
        report.records_in,
        report.bytes_in as f64 / 1e6,
        elapsed.as_secs_f64(),
        report.workers,
        report.records_in as f64 / elapsed.as_secs_f64(),
        args.out
    );
    Ok(())
}

/// One row per word of each page's text, with its host and fetch time (words as
/// `split_words` makes them: split on whitespace, lowercased, trimmed of punctuation).
fn host_words(batch: RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let hosts = batch.column(0).as_string::<i32>();
    let texts = batch.column(1).as_string::<i32>();
    let times = batch
        .column(2)
        .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
    let (mut host, mut word, mut time) = (
        arrow::array::StringBuilder::new(),
        arrow::array::StringBuilder::new(),
        Vec::new(),
    );
    for i in 0..batch.num_rows() {
        for w in texts.value(i).split_whitespace() {
            let w = w
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            if !w.is_empty() {
                host.append_value(hosts.value(i));
                word.append_value(w);
                time.push(times.value(i));
            }
        }
    }
    RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("host", arrow::datatypes::DataType::Utf8, false),
            arrow::datatypes::Field::new("word", arrow::datatypes::DataType::Utf8, false),
            batch.schema().field(2).clone(),
        ])),
        vec![
            std::sync::Arc::new(host.finish()),
            std::sync::Arc::new(word.finish()),
            std::sync::Arc::new(arrow::array::TimestampMillisecondArray::from(time)),
        ],
    )
}

/// PageRank over the pages crawled and their links to pages crawled (`damping`, `rounds`
/// power iterations; a page without such links gives its rank to every page).
fn pagerank(
    batches: &[arrow::array::RecordBatch],
    damping: f64,
    rounds: usize,
) -> HashMap<String, f64> {
    let mut edges: HashMap<String, Vec<String>> = HashMap::new();
    for batch in batches {
        let urls = batch.column(0).as_string::<i32>();
        let links = batch.column(1).as_list::<i32>();
        for i in 0..batch.num_rows() {
            let targets = links.value(i);
            let targets = targets.as_string::<i32>();
            edges.insert(
                urls.value(i).to_owned(),
                (0..targets.len())
                    .map(|j| targets.value(j).to_owned())
                    .collect(),
            );
        }
    }
    let n = edges.len().max(1) as f64;
    let mut rank: HashMap<String, f64> = edges.keys().map(|u| (u.clone(), 1.0 / n)).collect();
    for _ in 0..rounds {
        let mut next: HashMap<String, f64> = edges
            .keys()
            .map(|u| (u.clone(), (1.0 - damping) / n))
            .collect();
        let mut dangling = 0.0;
        for (url, targets) in &edges {
            let share = rank[url];
            let known: Vec<&String> = targets.iter().filter(|t| edges.contains_key(*t)).collect();
            if known.is_empty() {
                dangling += share;
                continue;
            }
            for t in &known {
                if let Some(r) = next.get_mut(*t) {
                    *r += damping * share / known.len() as f64;
                }
            }
        }
        for r in next.values_mut() {
            *r += damping * dangling / n;
        }
        rank = next;
    }
    rank
}
