//! Crawl a site and analyse it as it streams in: words per host in one-second event-time
//! windows (written as Parquet), the most frequent terms, and the pages ranked by PageRank
//! over the link graph the crawl found (differential dataflow's `iterate`, kept up to date as
//! pages arrive).
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

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
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
    let words = pages.split_words_keeping("text", "word", ["host", "fetched_at"]);
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
    // PageRank of the link graph as it is crawled, on differential dataflow (30 rounds): a
    // link counts once its target is a crawled page too (links seen before their target are
    // kept until it comes), and ranks are kept up to date as pages arrive.
    let ranks = Collect::new();
    pages
        .link_rank("url", "links", 0.85, 30)
        .sink(ranks.clone());

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
    let ranks = final_ranks(&ranks.batches());
    println!("\nPageRank, the 10 highest:");
    for (rank, url) in ranks.iter().take(10) {
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

/// The ranks `link_rank`'s change stream (`url`, `rank`, `surfers`, `diff`) ends with, highest first.
fn final_ranks(changes: &[RecordBatch]) -> Vec<(f64, String)> {
    // Sum each (url, rank)'s diffs: what remains is each page's final rank.
    let mut net: HashMap<(String, u64), i64> = HashMap::new();
    for batch in changes {
        let urls = batch.column(0).as_string::<i32>();
        let ranks = batch.column(1).as_primitive::<Float64Type>();
        let diffs = batch.column(3).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            *net.entry((urls.value(i).to_owned(), ranks.value(i).to_bits()))
                .or_default() += diffs.value(i);
        }
    }
    let mut ranked: Vec<(f64, String)> = net
        .into_iter()
        .filter(|(_, diff)| *diff > 0)
        .map(|((url, rank), _)| (f64::from_bits(rank), url))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    ranked
}
