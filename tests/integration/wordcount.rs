//! Word count against a plain HashMap over the same files, on 1, 2 and 4 workers.

use std::collections::HashMap;

use streamrun::prelude::*;

use crate::common::{corpus_glob, run, sorted_rows, string_i64_map};

/// The oracle: the same definition of a word, computed with nothing but std.
fn oracle() -> HashMap<String, i64> {
    let mut counts = HashMap::new();
    let mut files: Vec<_> = glob_files();
    files.sort();
    for path in files {
        let bytes = std::fs::read(&path).expect("corpus file");
        let text = String::from_utf8(bytes).expect("utf-8 corpus");
        for raw in text.split_whitespace() {
            let word = raw
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            if !word.is_empty() {
                *counts.entry(word).or_insert(0) += 1;
            }
        }
    }
    counts
}

fn glob_files() -> Vec<std::path::PathBuf> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/corpus");
    std::fs::read_dir(dir)
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect()
}

fn word_count(workers: usize) -> Vec<arrow::array::RecordBatch> {
    let job = Job::new("wordcount");
    let out = Collect::new();
    job.source(Files::text(corpus_glob()))
        .split_words("line", "word")
        .key_by("word")
        .count()
        .sink(out.clone());
    let report = run(&job, workers);
    assert_eq!(report.records_out as usize, out.rows());
    out.batches()
}

#[test]
fn word_count_equals_a_hashmap_oracle_on_1_2_and_4_workers() {
    let expected = oracle();
    assert!(
        expected.len() > 10_000,
        "the corpus should have many distinct words"
    );
    let one = word_count(1);
    assert_eq!(string_i64_map(&one, 1), expected);
    for workers in [2, 4] {
        let many = word_count(workers);
        assert_eq!(
            sorted_rows(&many),
            sorted_rows(&one),
            "{workers} workers differ from 1"
        );
    }
}

#[test]
fn top_k_of_the_counts_is_the_oracle_top_k() {
    let mut expected: Vec<(String, i64)> = oracle().into_iter().collect();
    // Greatest count first, ties by word ascending: the order top_k documents.
    expected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    expected.truncate(15);
    for workers in [1, 3] {
        let job = Job::new("top");
        let out = Collect::new();
        job.source(Files::text(corpus_glob()))
            .split_words("line", "word")
            .key_by("word")
            .count()
            .top_k(15, "count")
            .sink(out.clone());
        run(&job, workers);
        let batches = out.batches();
        assert_eq!(batches.len(), 1, "top_k emits one sorted batch");
        let got: Vec<(String, i64)> = {
            let b = &batches[0];
            let words = arrow::array::AsArray::as_string::<i32>(b.column(0));
            let counts =
                arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b.column(1));
            (0..b.num_rows())
                .map(|i| (words.value(i).to_owned(), counts.value(i)))
                .collect()
        };
        assert_eq!(got, expected, "{workers} workers");
    }
}
