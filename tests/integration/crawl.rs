//! The crawl as a job's source: a generated site served on loopback, crawled by a job on 1, 2
//! and 4 workers, whose word counts per host equal the site's own and agree with each other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use streamrun::operators::PageRank;
use streamrun::prelude::*;
use streamrun_crawl::site::{Link, Site, SiteSpec, word_counts};
use streamrun_crawl::{CrawlConfig, CrawlSource};

/// The generated site of `pages` pages on `hosts` hosts from `seed`, served on loopback.
fn serve(pages: usize, hosts: usize, seed: u64) -> streamrun_crawl::site::SiteServer {
    Site::generate(SiteSpec {
        pages,
        hosts,
        seed,
        ..SiteSpec::default()
    })
    .serve()
    .expect("serve")
}

/// `stream-run run --workers 2` on the spec at `path`, stopped after 3 minutes.
fn run_spec(path: &std::path::Path) -> std::process::Output {
    crate::common::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_stream-run"))
            .args(["run", "--workers", "2"])
            .arg(path),
        Duration::from_secs(180),
    )
}

/// (url, status, error kind) of every fetch, and the pages' words counted per host.
type Outcome = (Vec<(String, u16, String)>, HashMap<(String, String), u64>);

fn crawl_job(seed: String, hosts: Vec<String>, workers: usize) -> Outcome {
    let config = CrawlConfig::new([seed])
        .allowed_hosts(hosts)
        .max_depth(1_000_000)
        .politeness(2, 0);
    let job = Job::new("crawl");
    let fetches = Collect::new();
    let words = Collect::new();
    let source = job.source(CrawlSource::new(config).into_parts());
    source
        .select(["url", "status", "error_kind"])
        .sink(fetches.clone());
    source
        .where_("error_kind", CmpOp::Eq, "")
        .select(["host", "text"])
        .sink(words.clone());
    crate::common::run(&job, workers);
    let mut outcomes = Vec::new();
    for b in fetches.batches() {
        let (url, status, kind) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_primitive::<arrow::datatypes::UInt16Type>(),
            b.column(2).as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            outcomes.push((
                url.value(i).to_owned(),
                status.value(i),
                kind.value(i).to_owned(),
            ));
        }
    }
    outcomes.sort();
    let mut counts = HashMap::new();
    for b in words.batches() {
        let (host, text) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            for word in text.value(i).split_whitespace() {
                *counts
                    .entry((host.value(i).to_owned(), word.to_owned()))
                    .or_default() += 1;
            }
        }
    }
    (outcomes, counts)
}

#[test]
fn a_crawl_job_on_many_workers_equals_one_worker_and_the_site() {
    let server = serve(500, 3, 21);
    let hosts: Vec<String> = (0..3).map(|k| server.host(k)).collect();
    let (one, counts) = crawl_job(server.url(0), hosts.clone(), 1);
    let reachable: HashSet<usize> = server.site().reachable();
    assert_eq!(counts, word_counts(&server, &reachable));
    let pages: usize = one.iter().filter(|o| o.1 == 200 && o.2.is_empty()).count();
    assert_eq!(pages, reachable.len());
    let kinds: BTreeMap<&str, usize> = one.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o.2.as_str()).or_default() += 1;
        m
    });
    assert!(
        kinds.contains_key("redirect") && kinds.contains_key("status"),
        "{kinds:?}"
    );
    for workers in [2, 4] {
        let (many, many_counts) = crawl_job(server.url(0), hosts.clone(), workers);
        assert_eq!(many, one, "{workers} workers differ from 1");
        assert_eq!(many_counts, counts);
    }
}

/// A crawl job spec over `server`'s hosts from its page 0 that counts words per host into the
/// JSON lines directory `words` (with room for 16 records between the crawl and the job, so
/// that the crawl waits on the job).
fn word_count_spec(server: &streamrun_crawl::site::SiteServer, hosts: &[String]) -> String {
    format!(
        "name = \"crawl\"\n\
         [source]\n\
         format = \"crawl\"\n\
         [source.crawl]\n\
         seeds = [\"{seed}\"]\n\
         allowed_hosts = [{hosts}]\n\
         max_depth = 1000\n\
         per_host_delay_ms = 0\n\
         per_host_concurrency = 4\n\
         buffer = 16\n\
         [[steps]]\n\
         op = \"where\"\n\
         column = \"error_kind\"\n\
         cmp = \"==\"\n\
         value = \"\"\n\
         [[steps]]\n\
         op = \"split_words\"\n\
         column = \"text\"\n\
         output = \"word\"\n\
         keep = [\"host\"]\n\
         [[steps]]\n\
         op = \"aggregate\"\n\
         keys = [\"host\", \"word\"]\n\
         aggs = [{{ fn = \"count\", as = \"count\" }}]\n\
         [sink]\n\
         format = \"json\"\n\
         path = \"words\"\n",
        seed = server.url(0),
        hosts = hosts.join(", "),
    )
}

/// The counts per (host, word) of the JSON lines parts in `dir`, a key at most once.
fn word_count_parts(dir: &std::path::Path) -> HashMap<(String, String), u64> {
    let mut counts: HashMap<(String, String), u64> = HashMap::new();
    for part in std::fs::read_dir(dir).expect("words") {
        let text = std::fs::read_to_string(part.expect("part").path()).expect("read part");
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            let key = (
                row["host"].as_str().expect("host").to_owned(),
                row["word"].as_str().expect("word").to_owned(),
            );
            let count = row["count"].as_u64().expect("count");
            assert!(counts.insert(key.clone(), count).is_none(), "{key:?} twice");
        }
    }
    counts
}

/// The crawl as a job spec run by `stream-run run`: words counted per host, written as JSON
/// lines, equal the site's own counts; and a spec whose seed is not on an allowed host is
/// refused naming the line.
#[test]
fn a_crawl_job_spec_counts_the_sites_words() {
    let server = serve(300, 2, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts: Vec<String> = (0..2).map(|k| format!("{:?}", server.host(k))).collect();
    let spec = word_count_spec(&server, &hosts);
    let path = dir.path().join("crawl.toml");
    std::fs::write(&path, &spec).expect("write spec");
    let run = run_spec(&path);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        word_count_parts(&dir.path().join("words")),
        word_counts(&server, &server.site().reachable())
    );

    // A seed outside the allowed hosts is named, at its line.
    let bad = spec
        .replace(&hosts[1], "\"elsewhere:1\"")
        .replace(&hosts[0], "\"nowhere:1\"");
    std::fs::write(&path, bad).expect("write spec");
    let run = crate::common::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_stream-run"))
            .arg("run")
            .arg(&path),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("crawl.toml:2") && stderr.contains("not on an allowed host"),
        "{stderr}"
    );
}

/// A crawl job over 2 processes of 2 workers: every reachable page is requested exactly once
/// (the server's log), however the processes share the work, and the words counted per host
/// on all 4 workers equal the site's own counts.
#[test]
fn a_crawl_job_over_2_processes_fetches_every_page_once_and_counts_its_words() {
    let server = serve(600, 3, 21);
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts: Vec<String> = (0..3).map(|k| format!("{:?}", server.host(k))).collect();
    let path = dir.path().join("crawl.toml");
    std::fs::write(&path, word_count_spec(&server, &hosts)).expect("write spec");
    for out in crate::processes::run_over_processes(&path, 2, 2) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let site = server.site();
    let reachable = site.reachable();
    let requested = server.requests();
    for &n in &reachable {
        let host = site.pages[n].host;
        let key = format!("{}{}", server.host(host), site.path(n));
        assert_eq!(requested.get(&key), Some(&1), "page {n} ({key})");
    }
    let parts = std::fs::read_dir(dir.path().join("words"))
        .expect("words")
        .count();
    assert_eq!(parts, 4, "one part per worker of either process");
    assert_eq!(
        word_count_parts(&dir.path().join("words")),
        word_counts(&server, &reachable)
    );
}

/// Page `n`'s number, from a URL of the generated site's pages (`…/p/n.html`).
fn page_number(url: &str) -> Option<i64> {
    let path = url::Url::parse(url).ok()?.path().to_owned();
    path.strip_prefix("/p/")?
        .strip_suffix(".html")?
        .parse()
        .ok()
}

/// One edge (`src`, `dst`: page numbers) per link of a crawled page to a page.
fn page_edges(batch: RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let urls = batch.column(0).as_string::<i32>();
    let links = batch.column(1).as_list::<i32>();
    let (mut src, mut dst) = (Vec::new(), Vec::new());
    for i in 0..batch.num_rows() {
        let Some(from) = page_number(urls.value(i)) else {
            continue;
        };
        for to in links.value(i).as_string::<i32>().iter().flatten() {
            if let Some(to) = page_number(to) {
                src.push(from);
                dst.push(to);
            }
        }
    }
    RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("src", arrow::datatypes::DataType::Int64, false),
            arrow::datatypes::Field::new("dst", arrow::datatypes::DataType::Int64, false),
        ])),
        vec![
            std::sync::Arc::new(arrow::array::Int64Array::from(src)),
            std::sync::Arc::new(arrow::array::Int64Array::from(dst)),
        ],
    )
}

/// The generated site's links between reachable pages (by page number), as a crawl finds
/// them: each page's links to pages (not through redirects, not to pages robots.txt forbids),
/// once each.
fn site_edges(site: &Site) -> Vec<(i64, i64)> {
    let mut edges = Vec::new();
    for &n in &site.reachable() {
        // A page's links are deduplicated when it is parsed.
        let mut targets: Vec<usize> = site.pages[n]
            .links
            .iter()
            .filter_map(|l| match *l {
                Link::Page(t) if !site.pages[t].private => Some(t),
                _ => None,
            })
            .collect();
        targets.sort_unstable();
        targets.dedup();
        edges.extend(targets.into_iter().map(|t| (n as i64, t as i64)));
    }
    edges
}

/// PageRank of a crawled 2,000-page site's link graph, on differential `iterate` as the
/// crawl streams in, equals the same arithmetic run as a plain loop over the generated
/// site's own links between reachable pages, on 1 and 3 workers.
#[test]
fn pagerank_of_a_crawl_equals_the_sites_own() {
    let server = serve(2_000, 4, 11);
    let edges = site_edges(server.site());
    let expected = PageRank::by_loop(&edges, 0.85, 20);

    let hosts: Vec<String> = (0..4).map(|k| server.host(k)).collect();
    for workers in [1, 3] {
        let config = CrawlConfig::new([server.url(0)])
            .allowed_hosts(hosts.clone())
            .max_depth(1_000_000)
            .politeness(4, 0);
        let job = Job::new("crawl_pagerank");
        let ranks = Collect::new();
        job.source(CrawlSource::new(config).into_parts())
            .where_("error_kind", CmpOp::Eq, "")
            .select(["url", "links"])
            .map_batches("edges", page_edges)
            .pagerank("src", "dst", 0.85, 20)
            .sink(ranks.clone());
        crate::common::run(&job, workers);
        // The change stream netted out: each node's final surfers.
        let mut net: HashMap<(i64, i64), i64> = HashMap::new();
        for b in ranks.batches() {
            let (node, surfers, diff) = (
                b.column(0).as_primitive::<arrow::datatypes::Int64Type>(),
                b.column(2).as_primitive::<arrow::datatypes::Int64Type>(),
                b.column(3).as_primitive::<arrow::datatypes::Int64Type>(),
            );
            for i in 0..b.num_rows() {
                *net.entry((node.value(i), surfers.value(i))).or_default() += diff.value(i);
            }
        }
        let got: HashMap<i64, i64> = net
            .into_iter()
            .filter(|(_, d)| *d != 0)
            .map(|((node, surfers), d)| {
                assert_eq!(d, 1, "node {node} nets to {d} rows");
                (node, surfers)
            })
            .collect();
        assert_eq!(got.len(), expected.len(), "{workers} workers: nodes");
        assert_eq!(got, expected, "{workers} workers");
    }
}

/// Every batch of the Parquet part files under `dir`.
fn read_parquet_dir(dir: &std::path::Path) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for part in std::fs::read_dir(dir).expect("output dir") {
        let file = std::fs::File::open(part.expect("part").path()).expect("open part");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("a Parquet file")
            .build()
            .expect("a reader");
        batches.extend(reader.map(|b| b.expect("a batch")));
    }
    batches
}

/// The crawl-and-analytics job spec shipped as `examples/jobs/crawl.toml`, pointed at a
/// generated site and run by `stream-run run` on 2 workers: its words per host and window add
/// up to the site's own counts, its PageRank change stream nets out to the surfers of
/// `PageRank::by_loop` over the site's links, and it prints its three tables, the top page
/// among them.
#[test]
fn the_shipped_crawl_spec_counts_words_and_ranks_pages_as_the_site_does() {
    let server = serve(400, 3, 9);
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/jobs/crawl.toml"
    ))
    .expect("the shipped spec");
    let hosts: Vec<String> = (0..3).map(|k| format!("{:?}", server.host(k))).collect();
    let spec: String = shipped
        .lines()
        .map(|line| {
            if line.starts_with("seeds = ") {
                format!("seeds = [\"{}\"]", server.url(0))
            } else if line.starts_with("allowed_hosts = ") {
                format!("allowed_hosts = [{}]", hosts.join(", "))
            } else {
                line.replace("../../out/crawl/", "out/")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crawl.toml");
    std::fs::write(&path, &spec).expect("write spec");
    let run = run_spec(&path);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // Words per host and window add up to the site's counts.
    let mut counts: HashMap<(String, String), u64> = HashMap::new();
    for b in read_parquet_dir(&dir.path().join("out/words")) {
        let host = b.column_by_name("host").expect("host").as_string::<i32>();
        let word = b.column_by_name("word").expect("word").as_string::<i32>();
        let count = b
            .column_by_name("count")
            .expect("count")
            .as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            *counts
                .entry((host.value(i).to_owned(), word.value(i).to_owned()))
                .or_default() += count.value(i) as u64;
        }
    }
    assert_eq!(counts, word_counts(&server, &server.site().reachable()));

    // PageRank nets out to the loop's surfers, page by page.
    let expected = PageRank::by_loop(&site_edges(server.site()), 0.85, 30);
    let mut net: HashMap<(String, i64), i64> = HashMap::new();
    for b in read_parquet_dir(&dir.path().join("out/pagerank")) {
        let url = b.column_by_name("url").expect("url").as_string::<i32>();
        let surfers = b.column_by_name("surfers").expect("surfers");
        let surfers = surfers.as_primitive::<arrow::datatypes::Int64Type>();
        let diff = b.column_by_name("diff").expect("diff");
        let diff = diff.as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            *net.entry((url.value(i).to_owned(), surfers.value(i)))
                .or_default() += diff.value(i);
        }
    }
    let got: HashMap<i64, i64> = net
        .into_iter()
        .filter(|(_, d)| *d != 0)
        .map(|((url, surfers), d)| {
            assert_eq!(d, 1, "{url} nets to {d} rows");
            (page_number(&url).expect("a page's URL"), surfers)
        })
        .collect();
    assert_eq!(got, expected);

    // The tables, the top page among them.
    for title in ["top_terms:", "top_pages:", "fetch_outcomes:"] {
        assert!(stdout.contains(title), "{title} missing from:\n{stdout}");
    }
    let top = expected
        .iter()
        .max_by_key(|(page, surfers)| (**surfers, -**page))
        .map(|(page, _)| *page as usize)
        .expect("ranked pages");
    assert!(
        stdout.contains(&server.url(top)),
        "page {top} missing from:\n{stdout}"
    );
}
