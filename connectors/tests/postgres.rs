//! The PostgreSQL sink against a real server.
//!
//! The server is the one `.ci/run` starts (the Debian package `postgresql`, with a role and
//! database `streamrun`); `STREAMRUN_TEST_POSTGRES` may name another (a libpq connection
//! string). Without a server the tests are skipped, unless `STREAMRUN_REQUIRE_SERVICES=1`.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use common::services::{replay_into, services_required};
use common::*;
use streamrun_connectors::{Collect, Postgres};

const N: i64 = 100_000;

/// The test server's connection string with `application_name` set, or `None` (skip).
fn server(application: &str) -> Option<String> {
    let base = std::env::var("STREAMRUN_TEST_POSTGRES").unwrap_or_else(|_| {
        "host=127.0.0.1 user=streamrun password=streamrun dbname=streamrun".into()
    });
    let connection = format!("{base} application_name={application}");
    match postgres::Client::connect(&connection, postgres::NoTls) {
        Ok(_) => Some(connection),
        Err(e) => {
            assert!(
                !services_required(),
                "no PostgreSQL server at '{base}': {e} (.ci/run starts one)"
            );
            eprintln!("skipped: no PostgreSQL server at '{base}': {e}");
            None
        }
    }
}

fn client(connection: &str) -> postgres::Client {
    postgres::Client::connect(connection, postgres::NoTls).unwrap()
}

fn fresh(connection: &str, table: &str) {
    client(connection)
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .unwrap();
}

/// The table's rows as `id|name|amount|ok`, sorted (the same text as [`sorted_rows`]).
fn table_rows(connection: &str, table: &str) -> Vec<String> {
    let mut rows: Vec<String> = client(connection)
        .query(&format!("SELECT id, name, amount, ok FROM {table}"), &[])
        .unwrap()
        .iter()
        .map(|r| {
            let (id, name, amount, ok): (i64, String, f64, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            format!("{id}|{name}|{amount}|{ok}")
        })
        .collect();
    rows.sort();
    rows
}

fn write(
    batches: Vec<RecordBatch>,
    sink: &streamrun_connectors::PostgresSink,
    workers: usize,
) -> streamrun_engine::Result<streamrun_engine::JobReport> {
    replay_into(sample_schema(), batches, sink, sink.descriptor(), workers)
}

#[test]
fn copies_100k_rows_from_three_workers() {
    let Some(db) = server("streamrun_copy") else {
        return;
    };
    fresh(&db, "copied");
    let sink = Postgres::sink(&db, "copied").create_table(true);
    write(sample_batches(N), &sink, 3).unwrap();
    assert_eq!(table_rows(&db, "copied"), sorted_rows(&sample_batches(N)));
}

#[test]
fn an_upsert_keeps_the_last_row_of_each_key_and_can_be_written_again() {
    let Some(db) = server("streamrun_upsert") else {
        return;
    };
    fresh(&db, "upserted");
    let sink = Postgres::sink(&db, "upserted")
        .upsert(["id"])
        .create_table(true)
        .batch_rows(700);
    write(vec![sample(0, 1_000)], &sink, 2).unwrap();
    // Rows 500..1500 again, where 500..1000 are changed (their id shifted by 10,000 and
    // back: other names and amounts), and key 7 twice in one batch: the last one wins.
    let changed = |from: i64, to: i64| {
        let rows = sample(from + 10_000, to + 10_000);
        let ids = arrow::array::Int64Array::from((from..to).collect::<Vec<_>>());
        RecordBatch::try_new(
            sample_schema(),
            vec![
                Arc::new(ids),
                rows.column(1).clone(),
                rows.column(2).clone(),
                rows.column(3).clone(),
            ],
        )
        .unwrap()
    };
    let second = vec![sample(7, 8), changed(500, 1_500), changed(7, 8)];
    write(second.clone(), &sink, 1).unwrap();

    let mut expected: std::collections::BTreeMap<i64, String> = sorted_rows(&[sample(0, 1_000)])
        .into_iter()
        .map(|r| (r.split('|').next().unwrap().parse().unwrap(), r))
        .collect();
    for row in sorted_rows(&[changed(500, 1_500), changed(7, 8)]) {
        expected.insert(row.split('|').next().unwrap().parse().unwrap(), row);
    }
    let mut expected: Vec<String> = expected.into_values().collect();
    expected.sort();
    assert_eq!(table_rows(&db, "upserted"), expected);

    // Writing the same rows again leaves the table as it was.
    write(second, &sink, 1).unwrap();
    assert_eq!(table_rows(&db, "upserted"), expected);
}

#[test]
fn refused_rows_fail_the_job_or_go_to_the_dead_letters() {
    let Some(db) = server("streamrun_refused") else {
        return;
    };
    fresh(&db, "checked");
    client(&db)
        .batch_execute(
            "CREATE TABLE checked (id bigint, name text, amount double precision \
             CONSTRAINT small CHECK (amount < 500), ok boolean)",
        )
        .unwrap();
    let sink = Postgres::sink(&db, "checked").batch_rows(300);
    let error = write(vec![sample(0, 1_000)], &sink, 1)
        .unwrap_err()
        .to_string();
    assert!(error.contains("table 'checked'"), "{error}");
    assert!(error.contains("\"small\""), "{error}");

    client(&db).batch_execute("TRUNCATE checked").unwrap();
    let dead = Collect::new();
    let sink = sink.dead_letters(Arc::new(dead.clone()));
    write(vec![sample(0, 1_000)], &sink, 1).unwrap();
    assert_eq!(table_rows(&db, "checked"), sorted_rows(&[sample(0, 500)]));
    let letters = sorted_rows(&dead.batches());
    assert_eq!(letters.len(), 500);
    assert!(
        letters.iter().all(|l| l.contains("\"small\"")),
        "{:?}",
        letters.first()
    );
    assert!(
        letters
            .iter()
            .any(|l| l.contains(r#""999","x999","999.25","true""#)),
        "{:?}",
        letters.last()
    );
}

#[test]
fn a_connection_ended_by_the_server_is_opened_again() {
    let Some(db) = server("streamrun_cut") else {
        return;
    };
    for (table, upsert) in [("cut_upsert", true), ("cut_plain", false)] {
        fresh(&db, table);
        let mut sink = Postgres::sink(&db, table)
            .create_table(true)
            .batch_rows(1_000);
        if upsert {
            sink = sink.upsert(["id"]);
        }
        // Another session ends the sink's session (as a server restart or a failover
        // would) every 150 ms while it writes.
        let stop = Arc::new(AtomicBool::new(false));
        let cutter = std::thread::spawn({
            let (db, stop) = (db.clone(), Arc::clone(&stop));
            move || {
                let mut admin = client(&db.replace("streamrun_cut", "streamrun_admin"));
                let mut ended = 0;
                while !stop.load(Ordering::Relaxed) {
                    let rows = admin
                        .query(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE application_name = 'streamrun_cut' AND pid <> pg_backend_pid()",
                            &[],
                        )
                        .unwrap();
                    ended += rows.len();
                    std::thread::sleep(Duration::from_millis(150));
                }
                ended
            }
        });
        let batches: Vec<RecordBatch> = (0..N)
            .step_by(1_000)
            .map(|from| sample(from, from + 1_000))
            .collect();
        write(batches, &sink, 1).unwrap();
        stop.store(true, Ordering::Relaxed);
        let ended = cutter.join().unwrap();
        assert!(ended > 0, "no session was ended");
        let rows = table_rows(&db, table);
        if upsert {
            // Upserts are idempotent: exactly the input.
            assert_eq!(rows, sorted_rows(&sample_batches(N)));
        } else {
            // Plain copies are at least once: every row, perhaps some twice.
            let distinct: HashSet<&String> = rows.iter().collect();
            assert_eq!(distinct.len(), N as usize);
        }
    }
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let port = common::services::free_port();
    let sink = Postgres::sink(
        format!("host=127.0.0.1 port={port} user=nobody dbname=nothing connect_timeout=1"),
        "anything",
    )
    .reconnect_for(Duration::from_secs(1));
    let dead = Collect::new();
    let sink = sink.dead_letters(Arc::new(dead.clone()));
    let error = write(vec![sample(0, 10)], &sink, 1)
        .unwrap_err()
        .to_string();
    assert!(error.contains("writing to table 'anything'"), "{error}");
    assert!(error.contains("unreachable"), "{error}");
    // Rows the server never saw are not rows it refused.
    assert_eq!(dead.rows(), 0);

    // A connection string that cannot be read is a plan error, at once.
    let sink = Postgres::sink("host=127.0.0.1 port=notaport", "anything");
    let error = write(vec![sample(0, 10)], &sink, 1)
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid connection string"), "{error}");
}

#[test]
fn empty_text_a_text_backslash_n_quotes_and_line_breaks_are_values_and_nulls_stay_null() {
    let Some(db) = server("streamrun_values") else {
        return;
    };
    fresh(&db, "texts");
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new("t", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("n", arrow::datatypes::DataType::Int32, true),
        arrow::datatypes::Field::new(
            "at",
            arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
            true,
        ),
    ]));
    let texts = vec![
        Some(""),
        Some("\\N"),
        None,
        Some("a,\"b\"\nc"),
        Some("NULL"),
    ];
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(arrow::array::Int64Array::from((0..5).collect::<Vec<i64>>())),
            Arc::new(arrow::array::StringArray::from(texts.clone())),
            Arc::new(arrow::array::Int32Array::from(vec![
                Some(1),
                None,
                Some(-3),
                None,
                Some(0),
            ])),
            Arc::new(arrow::array::TimestampMillisecondArray::from(vec![
                Some(1_700_000_000_123),
                None,
                Some(0),
                None,
                None,
            ])),
        ],
    )
    .unwrap();
    let sink = Postgres::sink(&db, "texts").create_table(true);
    replay_into(
        Arc::clone(&schema),
        vec![batch],
        &sink,
        sink.descriptor(),
        1,
    )
    .unwrap();
    let rows = client(&db)
        .query(
            "SELECT t, n, (extract(epoch FROM at) * 1000)::bigint FROM texts ORDER BY id",
            &[],
        )
        .unwrap();
    let got: Vec<(Option<String>, Option<i32>, Option<i64>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(Option<String>, Option<i32>, Option<i64>)> = vec![
        (Some(String::new()), Some(1), Some(1_700_000_000_123)),
        (Some("\\N".into()), None, None),
        (None, Some(-3), Some(0)),
        (Some("a,\"b\"\nc".into()), None, None),
        (Some("NULL".into()), Some(0), None),
    ];
    assert_eq!(got, want);
}
