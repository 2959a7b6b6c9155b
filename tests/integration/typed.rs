//! Typed tasks over the user's serde structs, through the whole engine.

use serde::{Deserialize, Serialize};
use streamrun::prelude::*;

use crate::common::{run, string_i64_map};

#[derive(Debug, Serialize, Deserialize)]
struct Sale {
    region: String,
    quantity: i64,
    price: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Revenue {
    region: String,
    cents: i64,
}

#[test]
fn typed_tasks_and_filters_match_a_plain_loop() {
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/sales.csv");
    // The oracle reads the same file with nothing but std.
    let text = std::fs::read_to_string(csv).expect("sales.csv");
    let mut expected = std::collections::HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let quantity: i64 = f[3].parse().expect("quantity");
        let price: f64 = f[4].parse().expect("price");
        if quantity >= 10 {
            *expected.entry(f[1].to_owned()).or_insert(0) +=
                (quantity as f64 * price * 100.0).round() as i64;
        }
    }
    for workers in [1, 2] {
        let job = Job::new("typed");
        let out = Collect::new();
        job.source(Files::csv(csv))
            .filter("big orders", |s: &Sale| s.quantity >= 10)
            .task("revenue", |s: Sale| Revenue {
                region: s.region,
                cents: (s.quantity as f64 * s.price * 100.0).round() as i64,
            })
            .key_by("region")
            .sum("cents")
            .sink(out.clone());
        run(&job, workers);
        assert_eq!(
            string_i64_map(&out.batches(), 1),
            expected,
            "{workers} workers"
        );
    }
}

#[test]
fn flat_map_of_plain_strings_feeds_a_keyed_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("t.txt"), "a b\nb c c\n").expect("write");
    let job = Job::new("letters");
    let out = Collect::new();
    job.source(Files::text(format!("{}/t.txt", dir.path().display())))
        .flat_map("token", |line: String| {
            line.split(' ').map(str::to_owned).collect::<Vec<_>>()
        })
        .key_by("token")
        .count()
        .sink(out.clone());
    run(&job, 2);
    let got = string_i64_map(&out.batches(), 1);
    let expected = [("a", 1), ("b", 2), ("c", 2)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn an_error_in_a_batch_function_stops_the_job_and_names_it() {
    let job = Job::new("failing");
    job.source(Files::csv(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/data/sales.csv"
    )))
    .map_batches("explode", |b: arrow::array::RecordBatch| {
        if b.num_rows() > 0 {
            Err("boom on purpose")
        } else {
            Ok(b)
        }
    })
    .sink(Collect::new());
    let err = streamrun::execute_with(&job, &ExecOptions::new(2)).expect_err("the function fails");
    let message = err.to_string();
    assert!(
        message.contains("explode") && message.contains("boom on purpose"),
        "{message}"
    );
}

/// The median of a column: an aggregate the built-ins cannot express.
struct Median;

impl AggregateFunction for Median {
    type Input = f64;
    type State = Vec<f64>;
    type Output = f64;
    fn update(&self, state: &mut Vec<f64>, value: f64) {
        state.push(value);
    }
    fn finish(&self, state: &Vec<f64>) -> f64 {
        let mut values = state.clone();
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        if values.len().is_multiple_of(2) {
            (values[mid - 1] + values[mid]) / 2.0
        } else {
            values[mid]
        }
    }
}

#[test]
fn a_user_defined_aggregate_matches_a_plain_loop_on_1_and_4_workers() {
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/sales.csv");
    let text = std::fs::read_to_string(csv).expect("sales.csv");
    let mut prices: std::collections::HashMap<String, Vec<f64>> = Default::default();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        prices
            .entry(f[1].to_owned())
            .or_default()
            .push(f[4].parse().expect("price"));
    }
    let expected: std::collections::HashMap<String, f64> = prices
        .into_iter()
        .map(|(region, values)| (region, Median.finish(&values)))
        .collect();
    for workers in [1, 4] {
        let job = Job::new("median");
        let out = Collect::new();
        job.source(Files::csv(csv))
            .key_by("region")
            .aggregate_with("price", "median_price", Median)
            .sink(out.clone());
        run(&job, workers);
        let mut got = std::collections::HashMap::new();
        for b in out.batches() {
            use arrow::array::AsArray;
            let region = b.column(0).as_string::<i32>();
            let median = b.column(1).as_primitive::<arrow::datatypes::Float64Type>();
            assert_eq!(b.schema().field(1).name(), "median_price");
            for i in 0..b.num_rows() {
                got.insert(region.value(i).to_owned(), median.value(i));
            }
        }
        assert_eq!(got, expected, "{workers} workers");
    }
}
