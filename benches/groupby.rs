//! Group-by throughput: Streamrun on 1 and 2 workers beside a hand-written single-threaded
//! Rust loop over the same Parquet file, measured in the same run.
//!
//! Workload: `STREAMRUN_BENCH_ROWS` (default 10,000,000) generated orders in one Snappy
//! Parquet file of 1M-row row groups (`streamrun::datagen`, fixed seed), cached under
//! `target/bench-data`. The query is `sum(amount), count(*) group by key` over 100,000
//! distinct Int64 keys.
//!
//! The hand-written loop reads the same file with the parquet crate's Arrow reader (all
//! columns, as the engine's source does: projections are not pushed into sources yet) and
//! aggregates into a `HashMap<i64, (f64, i64)>` with foldhash. Results are checked to agree before timing.
//! Figures are medians of `STREAMRUN_BENCH_RUNS` runs (default 5); the last column is the
//! loop's time divided by the row's.
//!
//! `cargo bench --bench groupby`
#![allow(clippy::print_stdout)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type};
use foldhash::fast::FixedState;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use streamrun::prelude::*;

type Groups = HashMap<i64, (f64, i64), FixedState>;

fn hand_written(path: &Path) -> Groups {
    let file = std::fs::File::open(path).expect("parquet file");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .with_batch_size(8192)
        .build()
        .expect("reader");
    let mut groups = Groups::with_hasher(FixedState::default());
    for batch in reader {
        let batch = batch.expect("batch");
        let keys = batch.column(0).as_primitive::<Int64Type>();
        let amounts = batch.column(3).as_primitive::<Float64Type>();
        for (k, a) in keys.values().iter().zip(amounts.values()) {
            let e = groups.entry(*k).or_insert((0.0, 0));
            e.0 += a;
            e.1 += 1;
        }
    }
    groups
}

fn engine(path: &Path, workers: usize) -> (JobReport, Collect) {
    let job = Job::new("groupby-bench");
    let out = Collect::new();
    job.source(Files::parquet(path.display().to_string()))
        .key_by("key")
        .aggregate(vec![Agg::sum("amount"), Agg::count()])
        .sink(out.clone());
    let report = streamrun::execute_with(&job, &ExecOptions::new(workers)).expect("group-by job");
    (report, out)
}

fn check(out: &Collect, expected: &Groups) {
    let mut seen = 0;
    for b in out.batches() {
        let keys = b.column(0).as_primitive::<Int64Type>();
        let sums = b.column(1).as_primitive::<Float64Type>();
        let counts = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let (sum, count) = expected[&keys.value(i)];
            assert_eq!(counts.value(i), count);
            assert!((sums.value(i) - sum).abs() <= 1e-6 * sum.abs().max(1.0));
            seen += 1;
        }
    }
    assert_eq!(seen, expected.len());
}

fn main() {
    let rows: usize = std::env::var("STREAMRUN_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-data"));
    std::fs::create_dir_all(&dir).expect("bench data dir");
    let path = dir.join(format!("orders-{rows}.parquet"));
    if !path.exists() {
        streamrun::datagen::write_orders_parquet(&path, rows, 7).expect("generate");
    }
    let bytes = std::fs::metadata(&path).expect("metadata").len();

    let expected = hand_written(&path);
    for workers in [1, 2] {
        let (_, out) = engine(&path, workers);
        check(&out, &expected);
    }

    let runs = common::runs();
    println!(
        "group-by: {rows} rows, {:.1} MB of Parquet, {} groups; median of {runs} runs",
        bytes as f64 / 1e6,
        expected.len()
    );
    let rows = rows as u64;
    let baseline = common::median_time(runs, || hand_written(&path));
    common::report(
        "hand-written loop (1 thread)",
        rows,
        bytes,
        baseline,
        baseline,
    );
    for workers in [1, 2] {
        let time = common::median_time(runs, || engine(&path, workers));
        common::report(
            &format!("streamrun, {workers} worker(s)"),
            rows,
            bytes,
            time,
            baseline,
        );
    }
}
