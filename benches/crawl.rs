//! The crawl's throughput against a generated site served on loopback, and its frontier's
//! memory.
//!
//! `cargo bench --bench crawl` (`STREAMRUN_BENCH_PAGES`, default 10,000).
//!
//! - Pages per second with politeness off, on 1 and 2 workers, against a baseline measured in
//!   the same run: the same URLs fetched by a hand-written loop of concurrent requests with the
//!   same HTTP client, without frontier, robots.txt or parsing.
//! - Pages per second with a realistic per-host limit (2 at once, 100 ms apart) over 64
//!   hosts (`127.0.0.1` to `127.0.0.64`), against what that limit allows.
//! - Memory per million URLs in a frontier (resident memory before and after queueing them).
//!
//! The server shares the machine's cores with the crawler: per core figures divide by all of
//! them.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use streamrun_crawl::site::{Site, SiteServer, SiteSpec};
use streamrun_crawl::{Crawl, CrawlConfig, Frontier, PageRecord};

fn pages() -> usize {
    std::env::var("STREAMRUN_BENCH_PAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn config(server: &SiteServer, hosts: usize) -> CrawlConfig {
    CrawlConfig::new([server.url(0)])
        .allowed_hosts((0..hosts).map(|k| server.host(k)))
        .max_depth(1_000_000)
        .max_pages(10_000_000)
        .concurrency(64)
}

/// Crawls and returns (pages fetched, seconds).
fn crawl(config: CrawlConfig, workers: usize) -> anyhow::Result<(usize, f64)> {
    let started = Instant::now();
    let fetched = Crawl::start(config, workers)?
        .records()
        .filter(|r: &PageRecord| r.status == 200 && r.error_kind.is_empty())
        .count();
    Ok((fetched, started.elapsed().as_secs_f64()))
}

/// The baseline: `urls` fetched by 64 concurrent requests, bodies read, nothing else.
fn plain_fetches(urls: Vec<String>) -> anyhow::Result<(usize, f64)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let urls = Arc::new(urls);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let fetched: usize = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (client, urls, next) = (client.clone(), Arc::clone(&urls), Arc::clone(&next));
            tasks.spawn(async move {
                let mut ok = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(url) = urls.get(i) else { break };
                    if let Ok(response) = client.get(url).send().await
                        && response.bytes().await.is_ok()
                    {
                        ok += 1;
                    }
                }
                ok
            });
        }
        let mut total = 0;
        while let Some(Ok(n)) = tasks.join_next().await {
            total += n;
        }
        total
    });
    Ok((fetched, started.elapsed().as_secs_f64()))
}

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn main() -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = pages();
    println!("crawl bench: a generated site of {n} pages, {cores} cores (shared with the server)");

    // Politeness off, 4 hosts.
    let server = Site::generate(SiteSpec {
        pages: n,
        hosts: 4,
        seed: 1,
        ..SiteSpec::default()
    })
    .serve()?;
    let reachable: Vec<String> = server
        .site()
        .reachable()
        .into_iter()
        .map(|p| server.url(p))
        .collect();
    let (base_pages, base_secs) = plain_fetches(reachable.clone())?;
    let base_rate = base_pages as f64 / base_secs;
    println!(
        "baseline: {base_pages} pages fetched by a plain loop of requests: {base_rate:.0} pages/s ({:.0} per core)",
        base_rate / cores as f64
    );
    for workers in [1, 2] {
        let (fetched, secs) = crawl(config(&server, 4).politeness(64, 0), workers)?;
        let rate = fetched as f64 / secs;
        println!(
            "politeness off, {workers} worker(s): {fetched} pages in {secs:.2} s: {rate:.0} pages/s, {:.0} per core, {:.2}x the baseline",
            rate / cores as f64,
            rate / base_rate
        );
    }
    drop(server);

    // A realistic limit over many hosts.
    let hosts = 64;
    let (per_host, delay_ms) = (2, 100);
    let server = Site::generate(SiteSpec {
        pages: n.min(5_000),
        hosts,
        seed: 2,
        ..SiteSpec::default()
    })
    .serve()?;
    let (fetched, secs) = crawl(config(&server, hosts).politeness(per_host, delay_ms), 2)?;
    let allowed = hosts as f64 * 1000.0 / delay_ms as f64;
    println!(
        "{per_host} at once and {delay_ms} ms apart per host, {hosts} hosts, 2 workers: {fetched} pages in {secs:.2} s: {:.0} pages/s, {:.2}x the {allowed:.0}/s the limit allows",
        fetched as f64 / secs,
        fetched as f64 / secs / allowed
    );
    drop(server);

    // Frontier memory: a million URLs over 1,000 hosts.
    let config = CrawlConfig::new(["http://h0.test/"]);
    let before = resident_bytes();
    let mut frontier = Frontier::new(&config);
    let million = 1_000_000;
    for i in 0..million {
        let url = url::Url::parse(&format!(
            "http://h{}.test/section/{}/page-{i}.html",
            i % 1000,
            i % 97
        ))?;
        frontier.push(&url, 1, 0);
    }
    let after = resident_bytes();
    println!(
        "frontier: {} URLs queued, {:.0} MB resident for them ({:.0} bytes a URL)",
        frontier.urls(),
        (after.saturating_sub(before)) as f64 / 1e6,
        (after.saturating_sub(before)) as f64 / million as f64
    );
    std::hint::black_box(&frontier);
    Ok(())
}
