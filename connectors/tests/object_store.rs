//! The object storage source and sink, on a real S3-compatible server (`moto_server` on
//! loopback) and on the local file system through `file://` URLs.

#![cfg(feature = "object-store")]
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use common::services::Server;
use common::*;
use streamrun_connectors::{ObjectSink, ObjectSource, Objects, Replay};
use streamrun_engine::{
    BadRecordPolicy, Error, ExecOptions, JobGraph, Sink, Source, SourceCollector, SourceDecl,
    execute,
};

const FAIL: BadRecordPolicy = BadRecordPolicy::Fail;
const RECORDS: i64 = 100_000;

/// A moto S3 server on loopback, or `None` (skip) when it is not installed.
fn moto() -> Option<Server> {
    Server::start(
        "moto_server",
        "moto[server] (pip)",
        &["-H", "127.0.0.1", "-p", "{port}"],
    )
}

/// Sends one unsigned HTTP/1.1 request to the server; returns the status code and the
/// response's head.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response);
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    let status = status
        .parse()
        .unwrap_or_else(|_| panic!("no HTTP status in {response:?}"));
    (status, head.to_string())
}

/// Creates a bucket (object_store cannot).
fn create_bucket(port: u16, bucket: &str) {
    let (status, _) = http(port, "PUT", &format!("/{bucket}"), b"");
    assert_eq!(status, 200, "creating bucket {bucket}");
}

/// Puts an object with raw bytes.
fn put_object(port: u16, bucket: &str, key: &str, body: &[u8]) {
    let (status, _) = http(port, "PUT", &format!("/{bucket}/{key}"), body);
    assert_eq!(status, 200, "putting {key}");
}

/// The S3 options of the tests: the server's endpoint, fake credentials, few retries.
macro_rules! on_moto {
    ($builder:expr, $port:expr) => {
        $builder
            .endpoint(format!("http://127.0.0.1:{}", $port))
            .allow_http(true)
            .region("us-east-1")
            .credentials("test", "test")
            .retries(2, Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1))
            .request_timeout(Duration::from_secs(10))
    };
}

fn source(format: &str, url: String, port: u16) -> ObjectSource {
    let source = match format {
        "csv" => Objects::csv(url),
        "json" => Objects::json(url),
        _ => Objects::parquet(url),
    };
    on_moto!(source, port)
}

fn sink(format: &str, url: String, port: u16) -> ObjectSink {
    let sink = match format {
        "csv" => Objects::write_csv(url),
        "json" => Objects::write_json(url),
        _ => Objects::write_parquet(url),
    };
    on_moto!(sink, port)
}

/// Two workers' parts of [`RECORDS`] records, the second in several batches.
fn two_parts() -> Vec<Vec<RecordBatch>> {
    let half = RECORDS / 2;
    vec![
        vec![sample(0, half)],
        (half..RECORDS)
            .step_by(10_000)
            .map(|from| sample(from, (from + 10_000).min(RECORDS)))
            .collect(),
    ]
}

/// Writes [`two_parts`] through the sink from 2 workers, reads them back with 1 and 3.
fn s3_round_trip(format: &str, extension: &str) {
    let Some(server) = moto() else { return };
    let started = Instant::now();
    create_bucket(server.port, "lake");
    let parts = two_parts();
    let expected = sorted_rows(&parts.concat());
    let out = sink(format, "s3://lake/out/".into(), server.port);
    write_parts(&out, &sample_schema(), &parts).unwrap();
    let url = format!("s3://lake/out/*.{extension}");
    for workers in [1, 3] {
        let source = source(format, url.clone(), server.port);
        let schema = Source::schema(&source).unwrap();
        assert_eq!(schema.fields().len(), 4, "{format}");
        let read = read_all(&source, workers, FAIL).unwrap();
        assert_eq!(
            read.rows().len(),
            expected.len(),
            "{format}, {workers} workers"
        );
        assert_eq!(read.rows(), expected, "{format}, {workers} workers");
        assert!(read.dead.is_empty());
        assert!(read.bytes > 0);
        // Two objects: each read by one worker, the third worker has none.
        let readers = read.per_worker.iter().filter(|b| !b.is_empty()).count();
        assert_eq!(readers, workers.min(2), "{format}, {workers} workers");
    }
    let d = source(format, url.clone(), server.port).descriptor();
    assert_eq!(d.kind, format!("object.{format}"));
    assert_eq!(d.config["url"], url.as_str());
    assert!(!d.config.to_string().contains("test\""), "{}", d.config);
    eprintln!("{format} round trip on S3: {:?}", started.elapsed());
}

#[test]
fn s3_round_trip_csv() {
    s3_round_trip("csv", "csv");
}

#[test]
fn s3_round_trip_json() {
    s3_round_trip("json", "jsonl");
}

#[test]
fn s3_round_trip_parquet() {
    s3_round_trip("parquet", "parquet");
}

/// A part bigger than one upload part (8 MiB) goes up in several parts, and comes down in
/// several ranges (16 MiB); a second run with fewer workers removes the parts the first
/// one left.
#[test]
fn s3_large_part_and_stale_parts() {
    let Some(server) = moto() else { return };
    create_bucket(server.port, "big");
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let rows = 200_000i64;
    let batch = |from: i64, to: i64| {
        let ids: Vec<i64> = (from..to).collect();
        let texts: Vec<String> = ids.iter().map(|i| format!("t{i:0>100}")).collect();
        RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(texts)),
            ],
        )
        .unwrap()
    };
    // ~21 MB of CSV in one part.
    let parts = vec![
        (0..rows)
            .step_by(20_000)
            .map(|from| batch(from, from + 20_000))
            .collect::<Vec<_>>(),
        vec![batch(rows, rows + 10)],
        vec![batch(rows + 10, rows + 20)],
    ];
    let out = sink("csv", "s3://big/out".into(), server.port);
    write_parts(&out, &schema, &parts).unwrap();
    // The ETag of an object uploaded in parts ends with their number: 3 parts of 8 MiB.
    let (status, head) = http(server.port, "HEAD", "/big/out/part-00000.csv", b"");
    assert_eq!(status, 200);
    let etag = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("etag:")
                .map(str::to_string)
        })
        .unwrap();
    assert!(etag.trim().trim_matches('"').ends_with("-3"), "{etag}");
    let read = read_all(
        &source("csv", "s3://big/out/*.csv".into(), server.port),
        2,
        FAIL,
    )
    .unwrap();
    assert_eq!(read.rows().len(), rows as usize + 20);
    assert!(read.rows() == sorted_rows(&parts.concat()));
    // Fewer workers: part-00002 of the first run goes.
    write_parts(&out, &schema, &parts[..2]).unwrap();
    let read = read_all(
        &source("csv", "s3://big/out/*.csv".into(), server.port),
        1,
        FAIL,
    )
    .unwrap();
    assert_eq!(read.rows().len(), rows as usize + 10);
    assert!(read.rows() == sorted_rows(&parts[..2].concat()));
}

/// The same sink and source on the local file system, the sink run by the engine.
#[test]
fn file_url_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let parts = two_parts();
    let expected = sorted_rows(&parts.concat());
    for (format, extension) in [("parquet", "parquet"), ("csv", "csv")] {
        let prefix = format!("file://{}/out-{format}/", dir.path().display());
        let out = match format {
            "csv" => Objects::write_csv(prefix.clone()),
            _ => Objects::write_parquet(prefix.clone()),
        }
        .temp_dir(scratch.path());
        let input = Replay::new(sample_schema(), parts.concat());
        let mut graph = JobGraph::new("to-objects");
        let node = graph.add_source(
            "input",
            SourceDecl {
                descriptor: input.descriptor(),
                source: Arc::new(input),
                on_bad_record: FAIL,
                dead_letters: None,
                event_time: None,
            },
        );
        graph.add_sink(node, "objects", out.descriptor(), Arc::new(out));
        execute(&graph, &ExecOptions::new(2)).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join(format!("out-{format}")))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                format!("part-00000.{extension}"),
                format!("part-00001.{extension}")
            ]
        );
        for workers in [1, 3] {
            let url = format!("{prefix}*.{extension}");
            let source = match format {
                "csv" => Objects::csv(url),
                _ => Objects::parquet(url),
            }
            .temp_dir(scratch.path());
            let read = read_all(&source, workers, FAIL).unwrap();
            assert_eq!(read.rows(), expected, "{format}, {workers} workers");
        }
    }
    // `**` reaches into the directories.
    let nested = Objects::parquet(format!("file://{}/**/*.parquet", dir.path().display()));
    assert_eq!(read_all(&nested, 2, FAIL).unwrap().rows(), expected);
    // Every staged file and directory is gone.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn bad_csv_record_names_the_object() {
    let Some(server) = moto() else { return };
    create_bucket(server.port, "raw");
    put_object(server.port, "raw", "in/a.csv", b"id,name\n1,x\n2,y\n");
    put_object(
        server.port,
        "raw",
        "in/b.csv",
        b"id,name\n3,z\n4,w,extra\n5,v\n",
    );
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    let source = source("csv", "s3://raw/in/*.csv".into(), server.port).schema(schema);
    let Err(Error::Input(message)) = read_all(&source, 1, FAIL) else {
        panic!("expected an input error");
    };
    assert!(
        message.contains("s3://raw/in/b.csv:3") && message.contains("expected 2 fields, found 3"),
        "{message}"
    );
    assert!(!message.contains("streamrun-object"), "{message}");
    let read = read_all(&source, 2, BadRecordPolicy::DeadLetter).unwrap();
    assert_eq!(read.rows(), ["1|x", "2|y", "3|z", "5|v"]);
    assert_eq!(read.dead.len(), 1);
    assert_eq!(read.dead[0].location, "s3://raw/in/b.csv:3");
    assert_eq!(read.dead[0].record, "4,w,extra");
    assert!(read.dead[0].reason.contains("expected 2 fields"));
}

#[test]
fn server_going_away_mid_stream_is_a_clear_error() {
    let Some(mut server) = moto() else { return };
    create_bucket(server.port, "many");
    let parts: Vec<Vec<RecordBatch>> = (0..8)
        .map(|i| vec![sample(i * 2000, (i + 1) * 2000)])
        .collect();
    write_parts(
        &sink("csv", "s3://many/in/".into(), server.port),
        &sample_schema(),
        &parts,
    )
    .unwrap();
    let source = source("csv", "s3://many/in/*.csv".into(), server.port).batch_size(500);
    Source::schema(&source).unwrap();
    let mut reader = source.open(&ctx(0, 1)).unwrap();
    let mut out = SourceCollector::new(FAIL);
    assert!(reader.read(&mut out).unwrap());
    server.stop();
    let started = Instant::now();
    let mut rows = 0;
    let error = loop {
        match reader.read(&mut out) {
            Ok(true) => {
                rows += out
                    .take()
                    .0
                    .iter()
                    .map(RecordBatch::num_rows)
                    .sum::<usize>();
                assert!(started.elapsed() < Duration::from_secs(60), "no error came");
            }
            Ok(false) => panic!("the reader ended without the server"),
            Err(e) => break e,
        }
    };
    let elapsed = started.elapsed();
    let message = error.to_string();
    eprintln!("after {elapsed:?} and {rows} more rows: {message}");
    // The rest of the first object was already local; the second one cannot be fetched.
    assert!(rows >= 1000, "{rows}");
    assert!(matches!(error, Error::Io { .. }), "{error:?}");
    assert!(
        message.contains("downloading s3://many/in/part-00001.csv"),
        "{message}"
    );
    assert!(message.contains("retries"), "{message}");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
}

#[test]
fn upload_without_server_is_a_clear_error() {
    let Some(mut server) = moto() else { return };
    create_bucket(server.port, "gone");
    let scratch = tempfile::tempdir().unwrap();
    let out = sink("parquet", "s3://gone/out/".into(), server.port).temp_dir(scratch.path());
    let mut writer = out.open(&ctx(0, 1), &sample_schema()).unwrap();
    writer.write(&sample(0, 1000)).unwrap();
    server.stop();
    let started = Instant::now();
    let error = writer.finish().unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::Io { .. }), "{error:?}");
    assert!(
        message.contains("s3://gone/out/part-00000.parquet"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(writer);
    // The local part is gone with the writer.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn nothing_to_read_is_a_clear_error() {
    // A URL that is none.
    for bad in ["lake/*.csv", "s3:///x.csv", "file://relative/*.csv"] {
        let Err(Error::Plan(message)) = Source::schema(&Objects::csv(bad)) else {
            panic!("{bad} was taken");
        };
        assert!(message.contains(bad), "{message}");
    }
    // No matching file.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/*.csv", dir.path().display());
    let Err(Error::Input(message)) = Source::schema(&Objects::csv(url.clone())) else {
        panic!("an empty directory matched");
    };
    assert!(message.contains(&url), "{message}");

    let Some(server) = moto() else { return };
    create_bucket(server.port, "empty");
    let url = "s3://empty/nothing/*.parquet".to_string();
    let Err(Error::Input(message)) = Source::schema(&source("parquet", url.clone(), server.port))
    else {
        panic!("an empty bucket matched");
    };
    assert_eq!(message, format!("no object matches '{url}'"));
    let url = "s3://no-such-bucket/in/*.csv".to_string();
    let result = Source::schema(&source("csv", url.clone(), server.port));
    let Err(Error::Input(message)) = result else {
        panic!("a missing bucket was listed: {result:?}");
    };
    assert!(
        message.contains(&url) && message.contains("no-such-bucket"),
        "{message}"
    );
}

/// One big line-format object: its text (a header for CSV, then `rows` records `id,name`
/// of varying length, or their JSON lines), the rows it holds (`id|name`, sorted), and the
/// 1-based lines of the records made bad on purpose (too many fields, or broken JSON).
fn big_object(csv: bool, rows: i64) -> (String, Vec<String>, Vec<u64>) {
    let mut text = String::new();
    let mut good = Vec::new();
    let mut bad_lines = Vec::new();
    let mut line = 0u64;
    if csv {
        text.push_str("id,name\n");
        line += 1;
    }
    for id in 0..rows {
        line += 1;
        let name = "n".repeat((id % 37) as usize + 1);
        if id % 25_000 == 24_999 {
            bad_lines.push(line);
            text.push_str(if csv { "7,x,extra\n" } else { "{\"id\": 7,\n" });
            continue;
        }
        if csv {
            text.push_str(&format!("{id},{name}\n"));
        } else {
            text.push_str(&format!("{{\"id\":{id},\"name\":\"{name}\"}}\n"));
        }
        good.push(format!("{id}|{name}"));
    }
    good.sort();
    (text, good, bad_lines)
}

fn id_name_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]))
}

/// A single big object is cut into pieces that every worker reads: the rows are exactly the
/// object's, each once, on 1, 2 and 3 workers, and the bad records deep inside it are named
/// by the object and their line in it (counted through the pieces before theirs).
#[test]
fn one_big_object_is_split_between_workers() {
    let dir = tempfile::tempdir().unwrap();
    for csv in [true, false] {
        let (text, expected, bad_lines) = big_object(csv, 100_000);
        let name = if csv { "big.csv" } else { "big.jsonl" };
        std::fs::write(dir.path().join(name), &text).unwrap();
        let url = format!("file://{}/{name}", dir.path().display());
        let objects = if csv {
            Objects::csv(url.clone())
        } else {
            Objects::json(url.clone())
        };
        let source = objects.schema(id_name_schema()).split_bytes(64 << 10);
        for workers in [1, 2, 3] {
            let read = read_all(&source, workers, BadRecordPolicy::DeadLetter).unwrap();
            assert_eq!(read.rows(), expected, "{name}, {workers} workers");
            let readers = read.per_worker.iter().filter(|b| !b.is_empty()).count();
            assert_eq!(readers, workers, "{name}: every worker reads a piece");
            let mut located: Vec<String> = read.dead.iter().map(|d| d.location.clone()).collect();
            located.sort();
            let mut wanted: Vec<String> = bad_lines.iter().map(|l| format!("{url}:{l}")).collect();
            wanted.sort();
            assert_eq!(located, wanted, "{name}, {workers} workers");
        }
        // Read whole: one worker has it all.
        let whole = source.clone().split_bytes(u64::MAX);
        let read = read_all(&whole, 3, BadRecordPolicy::DeadLetter).unwrap();
        assert_eq!(read.rows(), expected);
        assert_eq!(read.per_worker.iter().filter(|b| !b.is_empty()).count(), 1);
    }
}

/// The same on S3: one CSV object read by 3 workers, a bad record named at its line.
#[test]
fn s3_one_object_is_split_between_workers() {
    let Some(server) = moto() else { return };
    create_bucket(server.port, "big");
    let (text, expected, bad_lines) = big_object(true, 60_000);
    put_object(server.port, "big", "in/big.csv", text.as_bytes());
    let source = source("csv", "s3://big/in/*.csv".into(), server.port)
        .schema(id_name_schema())
        .split_bytes(64 << 10);
    let read = read_all(&source, 3, BadRecordPolicy::DeadLetter).unwrap();
    assert_eq!(read.rows(), expected);
    assert_eq!(read.per_worker.iter().filter(|b| !b.is_empty()).count(), 3);
    let mut located: Vec<String> = read.dead.iter().map(|d| d.location.clone()).collect();
    located.sort();
    let wanted: Vec<String> = bad_lines
        .iter()
        .map(|l| format!("s3://big/in/big.csv:{l}"))
        .collect();
    assert_eq!(located, wanted);
    // Failing instead: the error names the first bad record's line (on one worker, the
    // pieces are read in order).
    let Err(Error::Input(message)) = read_all(&source, 1, FAIL) else {
        panic!("expected an input error");
    };
    assert!(
        message.contains(&format!("s3://big/in/big.csv:{}", bad_lines[0])),
        "{message}"
    );
}

/// A Parquet object of [`RECORDS`] sample records in row groups of 10,000, and its rows.
fn parquet_object() -> (Vec<u8>, Vec<String>) {
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(10_000))
        .build();
    let mut bytes = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut bytes, sample_schema(), Some(props)).unwrap();
    let batches: Vec<RecordBatch> = (0..RECORDS)
        .step_by(25_000)
        .map(|from| sample(from, from + 25_000))
        .collect();
    for batch in &batches {
        writer.write(batch).unwrap();
    }
    let metadata = writer.close().unwrap();
    assert_eq!(metadata.num_row_groups(), 10);
    (bytes, sorted_rows(&batches))
}

/// A big Parquet object is cut into runs of row groups that every worker reads (each
/// fetching only its row groups and the footer): exactly its rows, on 1, 2 and 3 workers.
#[test]
fn one_big_parquet_object_is_split_by_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, expected) = parquet_object();
    std::fs::write(dir.path().join("big.parquet"), &bytes).unwrap();
    let url = format!("file://{}/big.parquet", dir.path().display());
    let source = Objects::parquet(url).split_bytes(bytes.len() as u64 / 8);
    let whole = read_all(&source.clone().split_bytes(u64::MAX), 3, FAIL).unwrap();
    assert_eq!(whole.rows(), expected);
    assert_eq!(whole.per_worker.iter().filter(|b| !b.is_empty()).count(), 1);
    for workers in [1, 2, 3] {
        let read = read_all(&source, workers, FAIL).unwrap();
        assert_eq!(read.rows(), expected, "{workers} workers");
        let readers = read.per_worker.iter().filter(|b| !b.is_empty()).count();
        assert_eq!(readers, workers, "every worker reads row groups");
        // Every row group's bytes are counted once, as when read whole.
        assert_eq!(read.bytes, whole.bytes, "{workers} workers");
    }
}

/// The same on S3.
#[test]
fn s3_one_parquet_object_is_split_by_row_groups() {
    let Some(server) = moto() else { return };
    create_bucket(server.port, "parq");
    let (bytes, expected) = parquet_object();
    put_object(server.port, "parq", "in/big.parquet", &bytes);
    let source = source("parquet", "s3://parq/in/*.parquet".into(), server.port)
        .split_bytes(bytes.len() as u64 / 8);
    let read = read_all(&source, 3, FAIL).unwrap();
    assert_eq!(read.rows(), expected);
    assert_eq!(read.per_worker.iter().filter(|b| !b.is_empty()).count(), 3);
}

/// Pieces cut anywhere (at a `\n`, just after one, inside a line longer than a piece) and a
/// last line without its `\n`: every line is read once, on 1 to 8 workers, each cutting the
/// object at other places.
#[test]
fn pieces_cut_anywhere_read_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = (0..200)
        .map(|i| format!("{i}-{}", "x".repeat(i * 7 % 23)))
        .collect();
    lines.insert(100, format!("long-{}", "y".repeat(700)));
    let text = lines.join("\n");
    assert!(!text.ends_with('\n'));
    std::fs::write(dir.path().join("lines.txt"), &text).unwrap();
    let mut expected = lines.clone();
    expected.sort();
    let url = format!("file://{}/lines.txt", dir.path().display());
    let source = Objects::text(url).split_bytes(1);
    for workers in 1..=8 {
        let read = read_all(&source, workers, FAIL).unwrap();
        assert_eq!(read.rows(), expected, "{workers} workers");
    }
}

/// An object overwritten after it was listed is not read as a mix of versions: the read
/// fails naming it.
#[test]
fn an_object_changed_after_listing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.csv");
    std::fs::write(&path, "id,name\n1,a\n2,b\n").unwrap();
    let url = format!("file://{}/data.csv", dir.path().display());
    let source = Objects::csv(url.clone()).schema(id_name_schema());
    // Listed (and its version noted) here; then overwritten.
    assert_eq!(read_all(&source, 1, FAIL).unwrap().rows(), ["1|a", "2|b"]);
    std::fs::write(&path, "id,name\n1,a\n2,b\n3,c\n").unwrap();
    let Err(e) = read_all(&source, 1, FAIL) else {
        panic!("a changed object was read");
    };
    let message = e.to_string();
    assert!(
        message.contains(&url) && message.contains("changed while the job read it"),
        "{message}"
    );
}
