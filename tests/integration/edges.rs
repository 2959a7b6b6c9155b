//! Partitioned edges: round-robin, broadcast and gather move whole batches as documented.

use streamrun::prelude::*;

use crate::common::{corpus_glob, run, sorted_rows};

fn lines(workers: usize, shape: impl Fn(Stream) -> Stream) -> (JobReport, Collect) {
    let job = Job::new("edges");
    let out = Collect::new();
    shape(job.source(Files::text(corpus_glob()))).sink(out.clone());
    (run(&job, workers), out)
}

#[test]
fn rebalance_keeps_every_row_once() {
    let (_, plain) = lines(1, |s| s);
    let (report, balanced) = lines(3, |s| s.rebalance());
    assert_eq!(report.records_out as usize, plain.rows());
    assert_eq!(
        sorted_rows(&balanced.batches()),
        sorted_rows(&plain.batches())
    );
}

#[test]
fn broadcast_gives_every_worker_every_row() {
    let (_, plain) = lines(1, |s| s);
    let (report, copies) = lines(3, |s| s.broadcast());
    assert_eq!(report.records_out as usize, 3 * plain.rows());
    let mut expected: Vec<String> = sorted_rows(&plain.batches())
        .into_iter()
        .flat_map(|r| std::iter::repeat_n(r, 3))
        .collect();
    expected.sort();
    assert_eq!(sorted_rows(&copies.batches()), expected);
}
