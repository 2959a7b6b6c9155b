//! Word-count throughput: Streamrun on 1 and 2 workers beside a hand-written single-threaded
//! Rust loop over the same files, measured in the same run.
//!
//! Workload: the shipped corpus (`examples/data/corpus`, 2.4 MB) copied `STREAMRUN_BENCH_COPIES`
//! times (default 8) into a temporary directory, so each run reads about 20 MB of text from
//! the page cache. A word is the text split on Unicode whitespace, trimmed of non-alphanumeric
//! characters at both ends and lowercased; the result is every word with its count.
//!
//! The hand-written loop is what a careful programmer writes without an engine: read each
//! file, split, trim, lowercase into a reused buffer, and count in a `HashMap` with the same
//! fast hasher (foldhash) the engine uses, allocating only for new words. Both sides are
//! checked to produce the same counts before anything is timed. Figures are medians of
//! `STREAMRUN_BENCH_RUNS` runs (default 5); the last column is the loop's time divided by
//! the row's (above 1 is faster than the loop).
//!
//! `cargo bench --bench wordcount`
#![allow(clippy::print_stdout)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use foldhash::fast::FixedState;
use streamrun::prelude::*;

type Counts = HashMap<String, i64, FixedState>;

fn hand_written(files: &[PathBuf]) -> Counts {
    let mut counts = Counts::with_hasher(FixedState::default());
    let mut lower = String::new();
    for path in files {
        let text = std::fs::read_to_string(path).expect("corpus file");
        for raw in text.split_whitespace() {
            let word = raw.trim_matches(|c: char| !c.is_alphanumeric());
            if word.is_empty() {
                continue;
            }
            lower.clear();
            if word.is_ascii() {
                lower.push_str(word);
                lower.make_ascii_lowercase();
            } else {
                lower.push_str(&word.to_lowercase());
            }
            match counts.get_mut(lower.as_str()) {
                Some(c) => *c += 1,
                None => {
                    counts.insert(lower.clone(), 1);
                }
            }
        }
    }
    counts
}

fn engine(glob: &str, workers: usize) -> (JobReport, Collect) {
    let job = Job::new("wordcount-bench");
    let out = Collect::new();
    job.source(Files::text(glob))
        .split_words("line", "word")
        .key_by("word")
        .count()
        .sink(out.clone());
    let report = streamrun::execute_with(&job, &ExecOptions::new(workers)).expect("word count job");
    (report, out)
}

fn to_map(out: &Collect) -> Counts {
    let mut counts = Counts::with_hasher(FixedState::default());
    for b in out.batches() {
        let words = b.column(0).as_string::<i32>();
        let n = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            assert!(words.is_valid(i));
            counts.insert(words.value(i).to_owned(), n.value(i));
        }
    }
    counts
}

fn main() {
    let copies: usize = std::env::var("STREAMRUN_BENCH_COPIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let corpus = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/corpus"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&corpus).expect("corpus") {
        let path = entry.expect("entry").path();
        for copy in 0..copies {
            let name = format!(
                "{copy}-{}",
                path.file_name().expect("name").to_string_lossy()
            );
            let target = dir.path().join(name);
            std::fs::copy(&path, &target).expect("copy");
            files.push(target);
        }
    }
    files.sort();
    let glob = format!("{}/*.txt", dir.path().display());
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).expect("metadata").len())
        .sum();

    // Check before timing: both sides must agree exactly.
    let expected = hand_written(&files);
    for workers in [1, 2] {
        let (_, out) = engine(&glob, workers);
        assert_eq!(
            to_map(&out),
            expected,
            "engine on {workers} workers disagrees with the loop"
        );
    }
    let (report, _) = engine(&glob, 1);
    let lines = report.records_in;

    let runs = common::runs();
    println!(
        "word count: {} files, {:.1} MB, {lines} lines, {} distinct words; median of {runs} runs",
        files.len(),
        bytes as f64 / 1e6,
        expected.len()
    );
    let baseline = common::median_time(runs, || hand_written(&files));
    common::report(
        "hand-written loop (1 thread)",
        lines,
        bytes,
        baseline,
        baseline,
    );
    for workers in [1, 2] {
        let time = common::median_time(runs, || engine(&glob, workers));
        common::report(
            &format!("streamrun, {workers} worker(s)"),
            lines,
            bytes,
            time,
            baseline,
        );
    }
}
