//! File sources and sinks on real files: round trips, splits, part files.

#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use common::*;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use streamrun_connectors::{FileFormat, FileSource, Files};
use streamrun_engine::{BadRecordPolicy, Sink};

const FAIL: BadRecordPolicy = BadRecordPolicy::Fail;

/// Three workers' parts: 0..9000, 9000..18000 (in two batches), and nothing.
fn parts() -> Vec<Vec<RecordBatch>> {
    vec![
        vec![sample(0, 9000)],
        vec![sample(9000, 12000), sample(12000, 18000)],
        vec![],
    ]
}

fn round_trip(sink: &dyn Sink, source: impl Fn(&Path) -> FileSource, dir: &Path) {
    let parts = parts();
    write_parts(sink, &sample_schema(), &parts).unwrap();
    let expected = sorted_rows(&parts.concat());
    for workers in [1, 2, 4] {
        let source = source(dir);
        let read = read_all(&source, workers, FAIL).unwrap();
        assert_eq!(read.rows().len(), expected.len(), "{workers} workers");
        assert_eq!(read.rows(), expected, "{workers} workers");
        assert!(read.dead.is_empty());
        assert!(read.bytes > 0);
        if workers > 1 && source.format() != FileFormat::Parquet {
            // Big enough to be shared: every worker reads something.
            assert!(read.per_worker.iter().all(|b| !b.is_empty()), "{workers}");
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn csv_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    round_trip(
        &Files::write_csv(&out),
        |d| Files::csv(format!("{}/out/*.csv", d.display())),
        dir.path(),
    );
    assert_eq!(
        names(&out),
        ["part-00000.csv", "part-00001.csv", "part-00002.csv"]
    );
    // The part of a worker without rows still has its header.
    let empty = std::fs::read_to_string(out.join("part-00002.csv")).unwrap();
    assert_eq!(empty, "id,name,amount,ok\n");
    // The inferred schema has the column names and types of the header and values.
    let schema = Files::csv(format!("{}/*.csv", out.display()))
        .read_schema()
        .unwrap();
    let types: Vec<(String, DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    assert_eq!(
        types,
        [
            ("id".to_string(), DataType::Int64),
            ("name".to_string(), DataType::Utf8),
            ("amount".to_string(), DataType::Float64),
            ("ok".to_string(), DataType::Boolean),
        ]
    );
}

#[test]
fn json_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    round_trip(
        &Files::write_json(&out),
        |d| Files::json(format!("{}/out/*.jsonl", d.display())),
        dir.path(),
    );
    assert_eq!(
        names(&out),
        ["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
    );
    // Inferred fields keep the order of the objects, not arrow's alphabetical one.
    let schema = Files::json(format!("{}/*.jsonl", out.display()))
        .read_schema()
        .unwrap();
    let fields: Vec<(&str, &DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    assert_eq!(
        fields,
        [
            ("id", &DataType::Int64),
            ("name", &DataType::Utf8),
            ("amount", &DataType::Float64),
            ("ok", &DataType::Boolean)
        ]
    );
}

#[test]
fn json_round_trip_with_given_schema() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(
        &Files::write_json(dir.path()),
        |d| Files::json(format!("{}/*.jsonl", d.display())).schema(sample_schema()),
        dir.path(),
    );
}

#[test]
fn parquet_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    round_trip(
        &Files::write_parquet(&out),
        |d| Files::parquet(format!("{}/out/*.parquet", d.display())).batch_size(1000),
        dir.path(),
    );
    assert_eq!(
        names(&out),
        [
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet"
        ]
    );
    let schema = Files::parquet(format!("{}/*.parquet", out.display()))
        .read_schema()
        .unwrap();
    assert_eq!(schema.fields(), sample_schema().fields());
}

#[test]
fn parquet_row_groups_are_shared_between_workers() {
    let dir = tempfile::tempdir().unwrap();
    for (n, range) in [(0, 0..2500), (1, 2500..3000)] {
        let file = std::fs::File::create(dir.path().join(format!("f{n}.parquet"))).unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(400))
            .build();
        let mut writer = ArrowWriter::try_new(file, sample_schema(), Some(props)).unwrap();
        writer.write(&sample(range.start, range.end)).unwrap();
        writer.close().unwrap();
    }
    let expected = sorted_rows(&[sample(0, 3000)]);
    for workers in [1, 2, 3, 4] {
        let source = Files::parquet(format!("{}/*.parquet", dir.path().display())).batch_size(150);
        let read = read_all(&source, workers, FAIL).unwrap();
        assert_eq!(read.rows(), expected, "{workers} workers");
        // 7 + 2 row groups dealt in turn: every worker gets some.
        assert!(read.per_worker.iter().all(|b| !b.is_empty()));
        assert!(read.batches().iter().all(|b| b.num_rows() <= 150));
    }
}

#[test]
fn csv_without_header_with_delimiter() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.csv"), "1;x\r\n2;y\r\n\r\n3;z").unwrap();
    let source = Files::csv(format!("{}/a.csv", dir.path().display()))
        .has_header(false)
        .delimiter(b';');
    let schema = source.read_schema().unwrap();
    assert_eq!(schema.field(0).name(), "column_1");
    assert_eq!(schema.field(0).data_type(), &DataType::Int64);
    let read = read_all(&source, 2, FAIL).unwrap();
    assert_eq!(read.rows(), ["1|x", "2|y", "3|z"]);
    let d = source.descriptor();
    assert_eq!(d.kind, "files.csv");
    assert_eq!(d.config["has_header"], false);
    assert_eq!(d.config["delimiter"], ";");
}

#[test]
fn csv_with_given_schema_skips_header() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.csv"), "k,v\n1,2\n3,4\n").unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new("value", DataType::Int64, true),
    ]));
    let source = Files::csv(format!("{}/a.csv", dir.path().display())).schema(schema.clone());
    assert_eq!(source.read_schema().unwrap(), schema);
    let read = read_all(&source, 1, FAIL).unwrap();
    assert_eq!(read.rows(), ["1|2", "3|4"]);
}

/// A text of about `bytes` bytes: numbered lines of varied lengths, some empty.
fn text_of(bytes: usize, crlf: bool, trailing_newline: bool) -> String {
    let mut text = String::new();
    let mut n = 0;
    while text.len() < bytes {
        if n % 17 == 5 {
            // empty line
        } else {
            write!(text, "line {n} {}", "abcdefghij".repeat(n % 13)).unwrap();
        }
        text.push_str(if crlf { "\r\n" } else { "\n" });
        n += 1;
    }
    if !trailing_newline {
        text.push_str("last line without newline");
    }
    text
}

#[test]
fn text_splits_read_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("plain.txt", text_of(1 << 20, false, true)),
        ("no-newline.txt", text_of(1 << 20, false, false)),
        ("crlf.txt", text_of(1 << 20, true, false)),
    ];
    for (name, text) in &cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let mut expected: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        expected.sort();
        for workers in [1, 2, 3, 4] {
            let source = Files::text(path.display().to_string()).batch_size(1000);
            let read = read_all(&source, workers, FAIL).unwrap();
            assert_eq!(read.rows(), expected, "{name} on {workers} workers");
            assert_eq!(read.bytes, text.len() as u64, "{name} on {workers} workers");
            // Each worker reads its lines in file order.
            for batches in &read.per_worker {
                assert!(batches.iter().all(|b| b.num_rows() <= 1000));
            }
            if workers > 1 {
                assert!(read.per_worker.iter().all(|b| !b.is_empty()), "{name}");
            }
        }
        // Not splittable: one worker reads the file.
        let source = Files::text(path.display().to_string()).splittable(false);
        let read = read_all(&source, 3, FAIL).unwrap();
        assert_eq!(read.rows(), expected);
        assert_eq!(read.per_worker.iter().filter(|b| !b.is_empty()).count(), 1);
    }
    // Several files, matched in sorted order.
    let source = Files::text(format!("{}/*.txt", dir.path().display()));
    let read = read_all(&source, 4, FAIL).unwrap();
    let total: usize = cases.iter().map(|(_, t)| t.lines().count()).sum();
    assert_eq!(read.rows().len(), total);
}

#[test]
fn text_schema_and_descriptor() {
    let source = Files::text("logs/*.log").batch_size(10);
    let schema = source.read_schema().unwrap();
    assert_eq!(schema.fields().len(), 1);
    assert_eq!(schema.field(0).name(), "line");
    assert!(!schema.field(0).is_nullable());
    let d = source.descriptor();
    assert_eq!(d.kind, "files.text");
    assert_eq!(d.config["path"], "logs/*.log");
    assert_eq!(d.config["batch_size"], 10);
    assert_eq!(d.config["splittable"], true);
    assert_eq!(Files::json("x").descriptor().kind, "files.json");
    assert_eq!(Files::parquet("x").descriptor().kind, "files.parquet");
    assert_eq!(
        Files::write_parquet("out").descriptor().kind,
        "files.parquet"
    );
    assert_eq!(Files::write_csv("out").descriptor().config["path"], "out");
}

#[test]
fn sink_commits_by_rename_and_removes_stale_parts() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Files::write_parquet(dir.path());
    let schema = sample_schema();
    // A run on 4 workers, then one on 2: parts 2 and 3 must go.
    write_parts(
        &sink,
        &schema,
        &[vec![sample(0, 10)], vec![], vec![], vec![]],
    )
    .unwrap();
    assert_eq!(names(dir.path()).len(), 4);
    let mut writer = sink.open(&ctx(0, 2), &schema).unwrap();
    writer.write(&sample(0, 5)).unwrap();
    // Until finish, only the hidden temporary file exists, and readers skip it.
    assert!(dir.path().join(".part-00000.parquet.tmp").exists());
    writer.finish().unwrap();
    let mut writer = sink.open(&ctx(1, 2), &schema).unwrap();
    writer.write(&sample(5, 7)).unwrap();
    writer.finish().unwrap();
    assert_eq!(
        names(dir.path()),
        ["part-00000.parquet", "part-00001.parquet"]
    );
    let source = Files::parquet(format!("{}/*", dir.path().display()));
    assert_eq!(
        read_all(&source, 1, FAIL).unwrap().rows(),
        sorted_rows(&[sample(0, 7)])
    );
    // A writer dropped without finishing (a failed job) leaves nothing.
    let mut writer = Files::write_csv(dir.path())
        .open(&ctx(1, 2), &schema)
        .unwrap();
    writer.write(&sample(0, 5)).unwrap();
    drop(writer);
    assert_eq!(
        names(dir.path()),
        ["part-00000.parquet", "part-00001.parquet"]
    );
}

#[test]
fn sink_writes_the_schema_it_is_opened_with() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![7]))]).unwrap();
    for sink in [Files::write_csv(dir.path()), Files::write_json(dir.path())] {
        write_parts(&sink, &schema, &[vec![batch.clone()]]).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("part-00000.csv")).unwrap(),
        "n\n7\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("part-00000.jsonl")).unwrap(),
        "{\"n\":7}\n"
    );
}
