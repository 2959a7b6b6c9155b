//! The Redis Streams source and sink against a real `redis-server` on loopback.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use arrow::array::RecordBatch;
use common::services::{Server, into_collect, replay_into, restart_mid_stream};
use common::*;
use streamrun_connectors::{Collect, RedisStreams};

const N: i64 = 100_000;

/// One stream of an `XREADGROUP` reply: its name, and its entries' ids and fields.
type StreamReply = (String, Vec<(String, Vec<String>)>);

fn redis_server(dir: &std::path::Path) -> Option<Server> {
    let dir = dir.display().to_string();
    Server::start(
        "redis-server",
        "the Debian package redis-server",
        &[
            "--port",
            "{port}",
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir,
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ],
    )
}

fn url(server: &Server) -> String {
    format!("redis://127.0.0.1:{}", server.port)
}

fn query<T: redis::FromRedisValue>(server: &Server, cmd: &mut redis::Cmd) -> T {
    let client = redis::Client::open(url(server)).unwrap();
    let mut c = client.get_connection().unwrap();
    cmd.query(&mut c).unwrap()
}

/// Writes rows `0..n` to `stream` from one worker.
fn write(server: &Server, stream: &str, n: i64) {
    let sink = RedisStreams::sink(url(server), stream);
    replay_into(
        sample_schema(),
        sample_batches(n),
        &sink,
        sink.descriptor(),
        1,
    )
    .unwrap();
}

fn read(server: &Server, stream: &str, group: &str, workers: usize) -> Vec<RecordBatch> {
    let source = RedisStreams::source(url(server), stream, group, sample_schema())
        .end_when_idle(Duration::from_millis(500));
    let collect = Collect::new();
    into_collect(&source, source.descriptor(), &collect, workers, None).unwrap();
    collect.batches()
}

#[test]
fn a_round_trip_of_100k_records_keeps_their_order_and_acknowledges_them() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = redis_server(dir.path()) else {
        return;
    };
    write(&server, "events", N);
    let len: i64 = query(&server, redis::cmd("XLEN").arg("events"));
    assert_eq!(len, N);

    // One worker sees the stream's order, which is the order the rows were written in.
    let one = read(&server, "events", "one", 1);
    assert_eq!(ids(&one), (0..N).collect::<Vec<_>>());
    assert_eq!(sorted_rows(&one), sorted_rows(&sample_batches(N)));
    // Everything read was acknowledged once the job had taken it in.
    let pending: Vec<redis::Value> =
        query(&server, redis::cmd("XPENDING").arg("events").arg("one"));
    assert_eq!(pending.first(), Some(&redis::Value::Int(0)), "{pending:?}");

    // Three workers of another group share the stream: each entry is read once.
    let three = read(&server, "events", "three", 3);
    assert_eq!(sorted_rows(&three), sorted_rows(&sample_batches(N)));

    // The first group has nothing left to read.
    assert!(read(&server, "events", "one", 2).is_empty());
}

#[test]
fn entries_that_are_not_records_go_to_the_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = redis_server(dir.path()) else {
        return;
    };
    write(&server, "mixed", 10);
    let bad: String = query(
        &server,
        redis::cmd("XADD")
            .arg("mixed")
            .arg("*")
            .arg("data")
            .arg("{not json"),
    );
    let _: String = query(
        &server,
        redis::cmd("XADD")
            .arg("mixed")
            .arg("*")
            .arg("data")
            .arg(r#"{"id": "x"}"#),
    );
    write(&server, "mixed", 5);

    let source = RedisStreams::source(url(&server), "mixed", "g", sample_schema())
        .end_when_idle(Duration::from_millis(300));
    let good = Collect::new();
    let dead = Collect::new();
    into_collect(&source, source.descriptor(), &good, 1, Some(&dead)).unwrap();
    assert_eq!(good.rows(), 15);
    let letters = sorted_rows(&dead.batches());
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters
            .iter()
            .any(|l| l.contains(&format!("mixed#{bad}")) && l.contains("invalid JSON")),
        "{letters:?}"
    );

    // By default a bad entry stops the job, naming it.
    let source = RedisStreams::source(url(&server), "mixed", "strict", sample_schema())
        .end_when_idle(Duration::from_millis(300));
    let collect = Collect::new();
    let error = into_collect(&source, source.descriptor(), &collect, 1, None)
        .unwrap_err()
        .to_string();
    assert!(error.contains(&format!("mixed#{bad}")), "{error}");
}

#[test]
fn a_source_reads_on_when_the_server_comes_back_and_fails_when_it_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = redis_server(dir.path()) else {
        return;
    };
    write(&server, "restart", N);

    let source = RedisStreams::source(url(&server), "restart", "g", sample_schema())
        .batch_size(100)
        .end_when_idle(Duration::from_secs(2));
    let collect = Collect::new();
    let (done, seen_at_stop) = restart_mid_stream(&mut server, &collect, 10_000, {
        let (source, collect) = (source.clone(), collect.clone());
        move || into_collect(&source, source.descriptor(), &collect, 1, None)
    });
    done.unwrap();
    let got = ids(&collect.batches());
    let distinct: HashSet<i64> = got.iter().copied().collect();
    assert!(
        seen_at_stop < N as usize,
        "the server stopped after the end"
    );
    assert_eq!(distinct.len(), N as usize, "every entry arrives");
    assert!(got.len() >= N as usize);

    // A server that does not come back: a clear error once the reconnect budget is spent.
    server.stop();
    let source = RedisStreams::source(url(&server), "restart", "g2", sample_schema())
        .reconnect_for(Duration::from_secs(1))
        .end_when_idle(Duration::from_millis(300));
    let collect = Collect::new();
    let error = into_collect(&source, source.descriptor(), &collect, 1, None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("unreachable"), "{error}");
    assert!(error.contains("stream 'restart'"), "{error}");
}

#[test]
fn a_sink_fails_clearly_when_the_server_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = redis_server(dir.path()) else {
        return;
    };
    server.stop();
    let sink = RedisStreams::sink(url(&server), "nowhere").reconnect_for(Duration::from_secs(1));
    let error = replay_into(
        sample_schema(),
        sample_batches(100),
        &sink,
        sink.descriptor(),
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("appending to stream 'nowhere'"), "{error}");
    assert!(error.contains("unreachable"), "{error}");
}

#[test]
fn entries_a_dead_consumer_left_unacknowledged_are_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = redis_server(dir.path()) else {
        return;
    };
    write(&server, "claims", 3_000);
    // A consumer of the group takes 1,000 entries and dies without acknowledging them.
    let _: () = query(
        &server,
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg("claims")
            .arg("g")
            .arg("0"),
    );
    let _: redis::Value = query(
        &server,
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("dead")
            .arg("COUNT")
            .arg(1_000)
            .arg("STREAMS")
            .arg("claims")
            .arg(">"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let source = RedisStreams::source(url(&server), "claims", "g", sample_schema())
        .claim_after(Duration::from_millis(200))
        .end_when_idle(Duration::from_millis(1_500));
    let collect = Collect::new();
    into_collect(&source, source.descriptor(), &collect, 2, None).unwrap();
    assert_eq!(
        sorted_rows(&collect.batches()),
        sorted_rows(&sample_batches(3_000))
    );
    let pending: Vec<redis::Value> = query(&server, redis::cmd("XPENDING").arg("claims").arg("g"));
    assert_eq!(pending.first(), Some(&redis::Value::Int(0)), "{pending:?}");
}

#[test]
fn an_entry_deleted_while_pending_is_acknowledged_not_a_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = redis_server(dir.path()) else {
        return;
    };
    write(&server, "deleted", 10);
    // The job's own consumer (`test-0`, as the job `test` names it) took every entry in an
    // earlier run and stopped; then one of them was deleted from the stream. Reading its
    // pending entries again gives that one without fields.
    let _: () = query(
        &server,
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg("deleted")
            .arg("g")
            .arg("0"),
    );
    let taken: Vec<StreamReply> = query(
        &server,
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("test-0")
            .arg("STREAMS")
            .arg("deleted")
            .arg(">"),
    );
    let id = taken[0].1[0].0.clone();
    let _: i64 = query(&server, redis::cmd("XDEL").arg("deleted").arg(&id));
    // The default policy fails on a bad record: the deleted entry must not be one.
    let source = RedisStreams::source(url(&server), "deleted", "g", sample_schema())
        .end_when_idle(Duration::from_millis(500));
    let collect = Collect::new();
    into_collect(&source, source.descriptor(), &collect, 1, None).unwrap();
    assert_eq!(collect.rows(), 9);
    let pending: Vec<redis::Value> = query(&server, redis::cmd("XPENDING").arg("deleted").arg("g"));
    assert_eq!(pending.first(), Some(&redis::Value::Int(0)), "{pending:?}");
}
