//! Keyed aggregates over generated Parquet files against a HashMap oracle, on 1, 2 and 4
//! workers, and a Parquet round trip through the file sink.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use streamrun::prelude::*;

use crate::common::{run, sorted_rows};

struct Row {
    category: String,
    bucket: i64,
    cents: Option<i64>,
    score: f64,
}

/// Writes `files` Parquet files of `rows_per_file` rows with small row groups, so that the
/// source has many splits; returns the rows for the oracle.
fn generate(dir: &Path, files: usize, rows_per_file: usize) -> Vec<Row> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261125);
    let schema = Arc::new(Schema::new(vec![
        Field::new("category", DataType::Utf8, false),
        Field::new("bucket", DataType::Int64, false),
        Field::new("cents", DataType::Int64, true),
        Field::new("score", DataType::Float64, false),
    ]));
    let mut all = Vec::new();
    for f in 0..files {
        let rows: Vec<Row> = (0..rows_per_file)
            .map(|_| Row {
                category: format!("cat-{:02}", rng.random_range(0..37)),
                bucket: rng.random_range(0..3),
                cents: (!rng.random_bool(0.05)).then(|| rng.random_range(-500..100_000)),
                score: rng.random_range(0.0..1.0),
            })
            .collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.category.as_str()),
                )),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.bucket))),
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.cents))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.score))),
            ],
        )
        .expect("batch");
        let file = std::fs::File::create(dir.join(format!("part-{f}.parquet"))).expect("create");
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(10_000))
            .build();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
        all.extend(rows);
    }
    all
}

fn aggregate_job(glob: String) -> (Job, Collect) {
    let job = Job::new("groupby");
    let out = Collect::new();
    job.source(Files::parquet(glob))
        .key_by(["category", "bucket"])
        .aggregate(vec![
            Agg::count(),
            Agg::sum("cents"),
            Agg::min("cents"),
            Agg::max("cents"),
            Agg::mean("score"),
        ])
        .sink(out.clone());
    (job, out)
}

#[test]
fn group_by_two_keys_equals_a_hashmap_oracle_on_1_2_and_4_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = generate(dir.path(), 3, 40_000);
    let glob = format!("{}/*.parquet", dir.path().display());

    #[derive(Default)]
    struct Acc {
        count: i64,
        sum: Option<i64>,
        min: Option<i64>,
        max: Option<i64>,
        score: f64,
    }
    let mut oracle: HashMap<(String, i64), Acc> = HashMap::new();
    for r in &rows {
        let a = oracle.entry((r.category.clone(), r.bucket)).or_default();
        a.count += 1;
        a.score += r.score;
        if let Some(c) = r.cents {
            a.sum = Some(a.sum.unwrap_or(0) + c);
            a.min = Some(a.min.map_or(c, |m| m.min(c)));
            a.max = Some(a.max.map_or(c, |m| m.max(c)));
        }
    }

    let mut first: Option<Vec<String>> = None;
    for workers in [1, 2, 4] {
        let (job, out) = aggregate_job(glob.clone());
        let report = run(&job, workers);
        assert_eq!(report.records_in as usize, rows.len());
        let batches = out.batches();
        let mut seen = 0;
        for b in &batches {
            let cat = b.column(0).as_string::<i32>();
            let bucket = b.column(1).as_primitive::<Int64Type>();
            let count = b.column(2).as_primitive::<Int64Type>();
            let sum = b.column(3).as_primitive::<Int64Type>();
            let min = b.column(4).as_primitive::<Int64Type>();
            let max = b.column(5).as_primitive::<Int64Type>();
            let mean = b.column(6).as_primitive::<Float64Type>();
            let opt = |a: &Int64Array, i: usize| a.is_valid(i).then(|| a.value(i));
            for i in 0..b.num_rows() {
                let e = &oracle[&(cat.value(i).to_owned(), bucket.value(i))];
                assert_eq!(count.value(i), e.count);
                assert_eq!(opt(sum, i), e.sum);
                assert_eq!(opt(min, i), e.min);
                assert_eq!(opt(max, i), e.max);
                let expected_mean = e.score / e.count as f64;
                assert!(
                    (mean.value(i) - expected_mean).abs() < 1e-9,
                    "mean of {}",
                    cat.value(i)
                );
                seen += 1;
            }
        }
        assert_eq!(
            seen,
            oracle.len(),
            "every group exactly once on {workers} workers"
        );
        // Integer columns must be identical whatever the worker count.
        let exact = sorted_rows(
            &batches
                .iter()
                .map(|b| b.project(&[0, 1, 2, 3, 4, 5]).expect("project"))
                .collect::<Vec<_>>(),
        );
        match &first {
            None => first = Some(exact),
            Some(f) => assert_eq!(&exact, f, "{workers} workers differ from 1"),
        }
    }
}

#[test]
fn parquet_written_by_the_sink_reads_back_identically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir(&input).expect("mkdir");
    generate(&input, 2, 5_000);
    let out_dir = dir.path().join("out");

    let job = Job::new("copy");
    let direct = Collect::new();
    let stream = job.source(Files::parquet(format!("{}/*.parquet", input.display())));
    stream.sink(Files::write_parquet(out_dir.display().to_string()));
    stream.sink(direct.clone());
    run(&job, 3);
    let parts: Vec<_> = std::fs::read_dir(&out_dir)
        .expect("out dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        parts
            .iter()
            .all(|p| p.starts_with("part-") && p.ends_with(".parquet")),
        "{parts:?}"
    );

    let again = Job::new("read back");
    let back = Collect::new();
    again
        .source(Files::parquet(format!("{}/*.parquet", out_dir.display())))
        .sink(back.clone());
    run(&again, 2);
    assert_eq!(sorted_rows(&back.batches()), sorted_rows(&direct.batches()));
    assert_eq!(back.rows(), 10_000);
}
