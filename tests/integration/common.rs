//! Helpers shared by the integration tests.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use streamrun::prelude::*;

/// The word-count corpus shipped with the examples.
pub fn corpus_glob() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/corpus/*.txt").to_owned()
}

/// Runs `job` on `workers` workers, failing the test on error.
pub fn run(job: &Job, workers: usize) -> JobReport {
    streamrun::execute_with(job, &ExecOptions::new(workers))
        .unwrap_or_else(|e| panic!("job failed on {workers} workers: {e}"))
}

/// Rows of (string key, i64 value) from column 0 and column `value`.
pub fn string_i64_map(batches: &[RecordBatch], value: usize) -> HashMap<String, i64> {
    let mut out = HashMap::new();
    for b in batches {
        let k = b.column(0).as_string::<i32>();
        let v = b.column(value).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            assert!(k.is_valid(i), "null key");
            let previous = out.insert(k.value(i).to_owned(), v.value(i));
            assert!(previous.is_none(), "key {:?} appears twice", k.value(i));
        }
    }
    out
}

/// Every row of the batches as text, sorted: an order-independent picture of a result.
pub fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = Vec::new();
    for b in batches {
        let columns: Vec<_> = (0..b.num_columns())
            .map(|c| {
                arrow::util::display::ArrayFormatter::try_new(
                    b.column(c).as_ref(),
                    &Default::default(),
                )
                .expect("formatter")
            })
            .collect();
        for r in 0..b.num_rows() {
            let cells: Vec<String> = columns.iter().map(|f| f.value(r).to_string()).collect();
            rows.push(cells.join("|"));
        }
    }
    rows.sort();
    rows
}
