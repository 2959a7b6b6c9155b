//! Bad input: missing files, bad records under both policies, files that are not Parquet.

#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use common::*;
use streamrun_connectors::Files;
use streamrun_engine::{BadRecordPolicy, Error, Source};

const FAIL: BadRecordPolicy = BadRecordPolicy::Fail;
const DEAD: BadRecordPolicy = BadRecordPolicy::DeadLetter;

fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn input_message(e: Error) -> String {
    match e {
        Error::Input(m) => m,
        other => panic!("expected a bad-input error, got {other:?}"),
    }
}

fn abc_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, true),
        Field::new("b", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
    ]))
}

#[test]
fn no_matching_file() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = format!("{}/*.csv", dir.path().display());
    let e = Files::csv(&pattern).read_schema().unwrap_err();
    assert_eq!(input_message(e), format!("no file matches '{pattern}'"));
    let missing = format!("{}/missing.txt", dir.path().display());
    let e = Files::text(&missing).open(&ctx(0, 1)).err().unwrap();
    assert!(input_message(e).contains("missing.txt"));
    let e = Files::parquet(&missing).read_schema().unwrap_err();
    assert!(input_message(e).contains("missing.txt"));
}

#[test]
fn invalid_pattern() {
    let e = Files::text("data/[.txt").open(&ctx(0, 1)).err().unwrap();
    match e {
        Error::Plan(m) => assert!(m.contains("'data/[.txt'"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_csv_cannot_give_a_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "empty.csv", "");
    let e = Files::csv(&path).read_schema().unwrap_err();
    assert!(input_message(e).contains("empty.csv"));
}

#[test]
fn csv_wrong_field_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "data.csv",
        "a,b,amount\n1,x,2.5\n2,y,3.5,9\n3,z,4.5\n",
    );
    let e = read_all(&Files::csv(&path), 1, FAIL).unwrap_err();
    let m = input_message(e);
    assert!(m.contains("data.csv:3"), "{m}");
    assert!(m.contains("expected 3 fields, found 4"), "{m}");

    let read = read_all(&Files::csv(&path), 1, DEAD).unwrap();
    assert_eq!(read.rows(), ["1|x|2.5", "3|z|4.5"]);
    assert_eq!(read.dead.len(), 1);
    let dead = &read.dead[0];
    assert_eq!(dead.location, format!("{path}:3"));
    assert_eq!(dead.reason, "expected 3 fields, found 4");
    assert_eq!(dead.record, "2,y,3.5,9");
}

#[test]
fn csv_too_few_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "data.csv", "1,x,2.5\n2,y\n");
    let source = Files::csv(&path).has_header(false).schema(abc_schema());
    let read = read_all(&source, 1, DEAD).unwrap();
    assert_eq!(read.rows(), ["1|x|2.5"]);
    assert_eq!(read.dead[0].location, format!("{path}:2"));
    assert_eq!(read.dead[0].reason, "expected 3 fields, found 2");
}

#[test]
fn csv_unparsable_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "data.csv",
        "a,b,amount\n1,x,2.5\n2,y,abc\n3,z,4.5\n",
    );
    let source = Files::csv(&path).schema(abc_schema());
    let m = input_message(read_all(&source, 1, FAIL).unwrap_err());
    assert_eq!(
        m,
        format!("{path}:3: cannot parse 'abc' as Float64 for column 'amount'")
    );
    let read = read_all(&source, 1, DEAD).unwrap();
    assert_eq!(read.rows(), ["1|x|2.5", "3|z|4.5"]);
    assert_eq!(read.dead[0].record, "2,y,abc");
}

#[test]
fn csv_header_with_other_field_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "data.csv", "a,b\n1,x\n");
    let source = Files::csv(&path).schema(abc_schema());
    let m = input_message(read_all(&source, 1, DEAD).unwrap_err());
    assert!(m.contains("data.csv:1"), "{m}");
}

/// A CSV file of about 400 KB whose line `bad` (1-based) is `bad_line`.
fn big_csv(bad: usize, bad_line: &str) -> String {
    let mut text = String::from("id,name,amount\n");
    for line in 2..=12_000 {
        if line == bad {
            text.push_str(bad_line);
            text.push('\n');
        } else {
            writeln!(text, "{line},name-{line}-abcdefghij,{line}.5").unwrap();
        }
    }
    text
}

#[test]
fn line_numbers_in_later_splits() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "big.csv",
        big_csv(9_876, "9876,oops,not-a-number"),
    );
    for workers in [1, 2, 3, 4] {
        let source = Files::csv(&path).batch_size(500);
        let m = input_message(read_all(&source, workers, FAIL).unwrap_err());
        assert!(
            m.starts_with(&format!(
                "{path}:9876: cannot parse 'not-a-number' as Float64"
            )),
            "{m}"
        );
        let read = read_all(&source, workers, DEAD).unwrap();
        assert_eq!(read.rows().len(), 12_000 - 2);
        assert_eq!(read.dead.len(), 1);
        assert_eq!(read.dead[0].location, format!("{path}:9876"));
    }

    // The same with \r\n line ends and a field-count error.
    let text = big_csv(11_001, "11001,a,1.5,extra").replace('\n', "\r\n");
    let path = write(dir.path(), "crlf.csv", text);
    let read = read_all(&Files::csv(&path), 4, DEAD).unwrap();
    assert_eq!(read.rows().len(), 12_000 - 2);
    assert_eq!(read.dead[0].location, format!("{path}:11001"));
    assert_eq!(read.dead[0].reason, "expected 3 fields, found 4");
    assert_eq!(read.dead[0].record, "11001,a,1.5,extra");
}

#[test]
fn text_invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    for line in 1..=20_000 {
        if line == 15_000 {
            bytes.extend_from_slice(b"bad \xff\xfe line\n");
        } else {
            bytes.extend_from_slice(format!("line number {line}\n").as_bytes());
        }
    }
    let path = write(dir.path(), "log.txt", &bytes);
    let m = input_message(read_all(&Files::text(&path), 3, FAIL).unwrap_err());
    assert!(
        m.starts_with(&format!("{path}:15000: invalid UTF-8")),
        "{m}"
    );
    let read = read_all(&Files::text(&path), 3, DEAD).unwrap();
    assert_eq!(read.rows().len(), 19_999);
    assert_eq!(read.dead[0].location, format!("{path}:15000"));
    assert_eq!(read.dead[0].record, "bad \u{fffd}\u{fffd} line");
}

#[test]
fn json_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "events.jsonl",
        "{\"a\": 1, \"b\": \"x\"}\n{oops\n\n{\"a\": \"seven\", \"b\": \"y\"}\n[1, 2]\n{\"a\": 4}\n",
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, true),
        Field::new("b", DataType::Utf8, true),
    ]));
    let source = Files::json(&path).schema(schema);
    let m = input_message(read_all(&source, 1, FAIL).unwrap_err());
    assert!(m.starts_with(&format!("{path}:2: invalid JSON")), "{m}");

    let read = read_all(&source, 2, DEAD).unwrap();
    assert_eq!(read.rows(), ["1|x", "4|"]);
    let found: Vec<(&str, &str)> = read
        .dead
        .iter()
        .map(|d| (d.location.rsplit(':').next().unwrap(), d.record.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            ("2", "{oops"),
            ("4", "{\"a\": \"seven\", \"b\": \"y\"}"),
            ("5", "[1, 2]")
        ]
    );
    assert!(read.dead[0].reason.starts_with("invalid JSON"));
    assert!(
        read.dead[1].reason.starts_with("does not fit the schema"),
        "{}",
        read.dead[1].reason
    );
    assert_eq!(
        read.dead[2].reason,
        "expected a JSON object, found an array"
    );
}

#[test]
fn json_inference_skips_bad_lines_and_later_splits_count_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("not json\n");
    for line in 2..=9_000 {
        if line == 8_500 {
            text.push_str("{\"id\": 8500, \"name\": \n");
        } else {
            writeln!(
                text,
                "{{\"id\": {line}, \"name\": \"n{line}-abcdefghijklmnop\"}}"
            )
            .unwrap();
        }
    }
    let path = write(dir.path(), "big.jsonl", text);
    let source = Files::json(&path);
    let schema = source.read_schema().unwrap();
    assert_eq!(schema.field(0).name(), "id");
    assert_eq!(schema.field(0).data_type(), &DataType::Int64);
    for workers in [1, 4] {
        let read = read_all(&source, workers, DEAD).unwrap();
        assert_eq!(read.rows().len(), 9_000 - 2);
        let lines: Vec<&str> = read.dead.iter().map(|d| d.location.as_str()).collect();
        assert_eq!(lines, [format!("{path}:1"), format!("{path}:8500")]);
    }
}

#[test]
fn not_a_parquet_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "data.parquet", "this is not parquet at all");
    let m = input_message(Files::parquet(&path).read_schema().unwrap_err());
    assert!(
        m.starts_with(&format!("{path} is not a Parquet file: ")),
        "{m}"
    );

    // A good file first, then a bad one: the error names the bad one.
    let good = dir.path().join("a.parquet");
    write_parts(
        &Files::write_parquet(dir.path()),
        &sample_schema(),
        &[vec![sample(0, 3)]],
    )
    .unwrap();
    std::fs::rename(dir.path().join("part-00000.parquet"), &good).unwrap();
    let source = Files::parquet(format!("{}/*.parquet", dir.path().display()));
    assert_eq!(
        source.read_schema().unwrap().fields(),
        sample_schema().fields()
    );
    for policy in [FAIL, DEAD] {
        let m = input_message(read_all(&source, 2, policy).unwrap_err());
        assert!(m.contains("data.parquet is not a Parquet file"), "{m}");
    }
}

#[test]
fn bad_configuration() {
    let e = Files::text("x").batch_size(0).read_schema().unwrap_err();
    assert!(matches!(e, Error::Plan(_)), "{e:?}");
    let e = Files::parquet("x")
        .schema(abc_schema())
        .read_schema()
        .unwrap_err();
    assert!(matches!(e, Error::Plan(_)), "{e:?}");
}
