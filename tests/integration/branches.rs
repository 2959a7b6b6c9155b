//! Job specs with `[[branches]]`: several lines of steps and sinks in one job, fed by the
//! source, the main steps or another branch, each equal to a plain recomputation; and the
//! errors of branches that are wired wrong, named by line.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Rows (k, v): keys `k0`..`k6`, values -3..=9, some negative.
fn rows() -> Vec<(String, i64)> {
    (0..5_000)
        .map(|i: i64| (format!("k{}", i * 7 % 13 % 7), (i * 31 % 13) - 3))
        .collect()
}

const SPEC: &str = r#"name = "branches"

[source]
format = "csv"
path = "data.csv"

[[steps]]
op = "where"
column = "v"
cmp = ">"
value = 0

[[branches]]
name = "sums"
[[branches.steps]]
op = "aggregate"
keys = ["k"]
aggs = [{ fn = "sum", column = "v", as = "total" }]
[branches.sink]
format = "json"
path = "sums"

[[branches]]
name = "all_rows"
from = "source"
[[branches.steps]]
op = "aggregate"
keys = ["k"]
aggs = [{ fn = "count", as = "n" }]

[[branches]]
name = "counts"
from = "all_rows"
[branches.sink]
format = "json"
path = "counts"

[[branches]]
name = "top"
from = "sums"
[[branches.steps]]
op = "top_k"
k = 2
by = "total"
[branches.sink]
format = "json"
path = "top"
"#;

/// Every JSON line of the part files under `dir`, as (key, value of `column`).
fn read_json(dir: &Path, column: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for part in std::fs::read_dir(dir).expect("output dir") {
        let text = std::fs::read_to_string(part.expect("part").path()).expect("read part");
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let key = row["k"].as_str().expect("k").to_owned();
            let value = row[column].as_i64().expect("value");
            assert!(out.insert(key, value).is_none(), "a key twice in {dir:?}");
        }
    }
    out
}

fn load(dir: &Path, spec: &str) -> streamrun::Result<streamrun::spec::LoadedSpec> {
    streamrun::spec::from_str(spec, "job.toml", dir)
}

#[test]
fn branches_fed_by_the_steps_the_source_and_each_other_equal_a_recomputation() {
    let rows = rows();
    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for (k, v) in &rows {
        *counts.entry(k.clone()).or_default() += 1;
        if *v > 0 {
            *sums.entry(k.clone()).or_default() += v;
        }
    }
    let mut by_total: Vec<(&String, &i64)> = sums.iter().collect();
    by_total.sort_by(|a, b| b.1.cmp(a.1));
    let top: BTreeMap<String, i64> = by_total[..2]
        .iter()
        .map(|(k, v)| ((*k).clone(), **v))
        .collect();

    for workers in [1, 3] {
        let dir = tempfile::tempdir().expect("tempdir");
        let csv: String = std::iter::once("k,v\n".to_owned())
            .chain(rows.iter().map(|(k, v)| format!("{k},{v}\n")))
            .collect();
        std::fs::write(dir.path().join("data.csv"), csv).expect("csv");
        let loaded = load(dir.path(), SPEC).expect("the spec loads");
        crate::common::run(&loaded.job, workers);
        assert_eq!(
            read_json(&dir.path().join("sums"), "total"),
            sums,
            "{workers} workers"
        );
        assert_eq!(
            read_json(&dir.path().join("counts"), "n"),
            counts,
            "{workers} workers"
        );
        assert_eq!(
            read_json(&dir.path().join("top"), "total"),
            top,
            "{workers} workers"
        );
    }
}

/// The error loading `spec` gives.
fn error_of(spec: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    match load(dir.path(), spec) {
        Ok(_) => panic!("the spec loaded:\n{spec}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn branches_wired_wrong_are_named_by_line() {
    // `from` naming a branch that comes later (or none): the line of the branch, and what
    // it may name.
    let later = SPEC.replace("from = \"all_rows\"", "from = \"top\"");
    let message = error_of(&later);
    assert!(
        message.contains("job.toml:31") && message.contains("\"top\" names no earlier branch"),
        "{message}"
    );
    assert!(
        message.contains("\"source\", \"steps\", \"sums\", \"all_rows\""),
        "{message}"
    );

    // A branch without a sink that feeds nothing.
    let dangling = SPEC.replace("from = \"all_rows\"", "from = \"source\"");
    let message = error_of(&dangling);
    assert!(
        message.contains("job.toml:23") && message.contains("\"all_rows\" has no sink"),
        "{message}"
    );

    // Two branches of one name.
    let twice = SPEC.replace("name = \"top\"", "name = \"sums\"");
    let message = error_of(&twice);
    assert!(
        message.contains("job.toml:38") && message.contains("another branch"),
        "{message}"
    );

    // Main steps that lead nowhere: no [sink], and every branch reads the source.
    let nowhere = SPEC.replace("name = \"sums\"\n", "name = \"sums\"\nfrom = \"source\"\n");
    let message = error_of(&nowhere);
    assert!(
        message.contains("the main [[steps]] lead nowhere"),
        "{message}"
    );

    // No sink at all.
    let message = error_of("name = \"x\"\n[source]\nformat = \"csv\"\npath = \"data.csv\"\n");
    assert!(message.contains("the job has no [sink]"), "{message}");

    // A stdout title on a file sink.
    let titled = SPEC.replace(
        "format = \"json\"\npath = \"top\"",
        "format = \"json\"\npath = \"top\"\ntitle = \"x\"",
    );
    let message = error_of(&titled);
    assert!(
        message.contains("job.toml:45") && message.contains("title applies to format \"stdout\""),
        "{message}"
    );
}

#[test]
fn a_pagerank_step_checks_its_parameters() {
    let spec = |params: &str| {
        format!(
            "name = \"ranks\"\n[source]\nformat = \"json\"\npath = \"pages.jsonl\"\n\
             [[steps]]\nop = \"pagerank\"\n{params}\n[sink]\nformat = \"stdout\"\n"
        )
    };
    let message = error_of(&spec("damping = 1.0"));
    assert!(
        message.contains("job.toml:5") && message.contains("damping must be between 0 and 1"),
        "{message}"
    );
    let message = error_of(&spec("iterations = 0"));
    assert!(
        message.contains("job.toml:5") && message.contains("iterations must be 1 to 1000"),
        "{message}"
    );
    let message = error_of(&spec("colour = \"red\""));
    assert!(message.contains("colour"), "{message}");
}

/// A `pagerank` step on pages given as JSON lines ranks them as `Stream::pagerank` does
/// over the same graph (by page number): the surfers of every page match.
#[test]
fn a_pagerank_step_ranks_pages_by_their_links() {
    // Page i links to 2i+1 and 2i+2 (a binary tree of 31 pages) and back to 0; page 30 links
    // to a page that is not among the pages (left out).
    let pages = 31_i64;
    let url = |i: i64| format!("http://site/{i}");
    let mut lines = String::new();
    let mut edges = Vec::new();
    for i in 0..pages {
        let mut links: Vec<i64> = [2 * i + 1, 2 * i + 2]
            .into_iter()
            .filter(|t| *t < pages)
            .collect();
        links.push(0);
        edges.extend(links.iter().map(|t| (i, *t)));
        let mut urls: Vec<String> = links.iter().map(|t| url(*t)).collect();
        if i == 30 {
            urls.push("http://elsewhere/".into());
        }
        lines.push_str(&serde_json::json!({ "url": url(i), "links": urls }).to_string());
        lines.push('\n');
    }
    let expected = streamrun::operators::PageRank::by_loop(&edges, 0.85, 20);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pages.jsonl"), lines).expect("pages");
    let spec = "name = \"ranks\"\n[source]\nformat = \"json\"\npath = \"pages.jsonl\"\n\
                schema = [\"url: Utf8\", \"links: List(Utf8)\"]\n\
                [[steps]]\nop = \"pagerank\"\niterations = 20\n\
                [sink]\nformat = \"json\"\npath = \"ranks\"\n";
    for workers in [1, 2] {
        let loaded = load(dir.path(), spec).expect("the spec loads");
        crate::common::run(&loaded.job, workers);
        let mut net: HashMap<(String, i64), i64> = HashMap::new();
        for part in std::fs::read_dir(dir.path().join("ranks")).expect("ranks") {
            let text = std::fs::read_to_string(part.expect("part").path()).expect("read");
            for line in text.lines() {
                let row: serde_json::Value = serde_json::from_str(line).expect("JSON");
                let key = (
                    row["url"].as_str().expect("url").to_owned(),
                    row["surfers"].as_i64().expect("surfers"),
                );
                *net.entry(key).or_default() += row["diff"].as_i64().expect("diff");
            }
        }
        let got: HashMap<i64, i64> = net
            .into_iter()
            .filter(|(_, d)| *d != 0)
            .map(|((u, surfers), d)| {
                assert_eq!(d, 1, "{u} nets to {d} rows");
                let page = u
                    .rsplit('/')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("a page");
                (page, surfers)
            })
            .collect();
        assert_eq!(got, expected, "{workers} workers");
        std::fs::remove_dir_all(dir.path().join("ranks")).expect("clean");
    }
}
