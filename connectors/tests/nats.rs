//! The NATS JetStream source and sink against a real `nats-server -js` on loopback.

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use common::services::{Server, into_collect, pipe, replay_into, restart_mid_stream};
use common::*;
use streamrun_connectors::{Collect, NatsJetStream, Replay};

const N: i64 = 100_000;

fn nats_server(dir: &std::path::Path) -> Option<Server> {
    let dir = dir.display().to_string();
    Server::start(
        "nats-server",
        "the Debian package nats-server",
        &["-js", "-sd", &dir, "-a", "127.0.0.1", "-p", "{port}"],
    )
}

fn url(server: &Server) -> String {
    format!("nats://127.0.0.1:{}", server.port)
}

/// Publishes rows `0..n` to `subject`, captured by the stream `stream`, from one worker.
fn write(server: &Server, stream: &str, subject: &str, n: i64) {
    let sink = NatsJetStream::sink(url(server), subject).create_stream(stream);
    replay_into(
        sample_schema(),
        sample_batches(n),
        &sink,
        sink.descriptor(),
        1,
    )
    .unwrap();
}

fn read(server: &Server, stream: &str, consumer: &str, workers: usize) -> Vec<RecordBatch> {
    let source = NatsJetStream::source(url(server), stream, consumer, sample_schema())
        .end_when_idle(Duration::from_millis(600));
    let collect = Collect::new();
    into_collect(&source, source.descriptor(), &collect, workers, None).unwrap();
    collect.batches()
}

#[test]
fn a_round_trip_of_100k_records_keeps_their_order_and_acknowledges_them() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = nats_server(dir.path()) else {
        return;
    };
    write(&server, "EVENTS", "events", N);

    // One worker sees the stream's order, which is the order the rows were published in.
    let one = read(&server, "EVENTS", "one", 1);
    assert_eq!(ids(&one), (0..N).collect::<Vec<_>>());
    assert_eq!(sorted_rows(&one), sorted_rows(&sample_batches(N)));
    // Every message was acknowledged by the end of the job.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pending = runtime.block_on(async {
        let client = async_nats::connect(url(&server)).await.unwrap();
        let context = async_nats::jetstream::new(client);
        let stream = context.get_stream("EVENTS").await.unwrap();
        stream.consumer_info("one").await.unwrap().num_ack_pending
    });
    assert_eq!(pending, 0);

    // Three workers pulling from another consumer share the stream: each message once.
    let three = read(&server, "EVENTS", "three", 3);
    assert_eq!(sorted_rows(&three), sorted_rows(&sample_batches(N)));

    // Everything was acknowledged: the first consumer has nothing left to give.
    assert!(read(&server, "EVENTS", "one", 2).is_empty());
}

#[test]
fn messages_that_are_not_records_go_to_the_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = nats_server(dir.path()) else {
        return;
    };
    write(&server, "MIXED", "mixed", 10);
    // Two bad messages, published with a plain client (stream sequences 11 and 12).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(url(&server)).await.unwrap();
        let context = async_nats::jetstream::new(client);
        for bad in ["{not json", r#"{"id": "x"}"#] {
            context
                .publish("mixed", bad.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    write(&server, "MIXED", "mixed", 5);

    let source = NatsJetStream::source(url(&server), "MIXED", "g", sample_schema())
        .end_when_idle(Duration::from_millis(500));
    let good = Collect::new();
    let dead = Collect::new();
    into_collect(&source, source.descriptor(), &good, 1, Some(&dead)).unwrap();
    assert_eq!(good.rows(), 15);
    let letters = sorted_rows(&dead.batches());
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters
            .iter()
            .any(|l| l.contains("MIXED#11") && l.contains("invalid JSON")),
        "{letters:?}"
    );
    assert!(
        letters.iter().any(|l| l.contains("MIXED#12")),
        "{letters:?}"
    );

    // By default a bad message stops the job, naming it.
    let source = NatsJetStream::source(url(&server), "MIXED", "strict", sample_schema())
        .end_when_idle(Duration::from_millis(500));
    let collect = Collect::new();
    let error = into_collect(&source, source.descriptor(), &collect, 1, None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("MIXED#11"), "{error}");
}

#[test]
fn a_source_reads_on_when_the_server_comes_back_and_fails_when_it_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = nats_server(dir.path()) else {
        return;
    };
    write(&server, "RESTART", "restart", N);

    let source = NatsJetStream::source(url(&server), "RESTART", "g", sample_schema())
        .batch_size(100)
        .end_when_idle(Duration::from_secs(3));
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
    assert_eq!(distinct.len(), N as usize, "every message arrives");

    // A server that does not come back: a clear error once the budget is spent.
    server.stop();
    let source = NatsJetStream::source(url(&server), "RESTART", "g2", sample_schema())
        .reconnect_for(Duration::from_secs(1));
    let collect = Collect::new();
    let error = into_collect(&source, source.descriptor(), &collect, 1, None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("stream 'RESTART'"), "{error}");
    assert!(error.contains("cannot connect"), "{error}");
}

#[test]
fn a_sink_publishes_on_when_the_server_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = nats_server(dir.path()) else {
        return;
    };
    // Create the stream first, then publish 100K rows in small batches while the server
    // goes away and comes back.
    write(&server, "SINK", "sink", 0);
    let batches: Vec<RecordBatch> = (0..N)
        .step_by(500)
        .map(|from| sample(from, from + 500))
        .collect();
    let replay = Replay::new(sample_schema(), batches);
    let sink = NatsJetStream::sink(url(&server), "sink");
    let job = std::thread::spawn({
        let (replay, sink) = (replay.clone(), sink.clone());
        move || {
            pipe(
                Arc::new(replay.clone()),
                replay.descriptor(),
                Arc::new(sink.clone()),
                sink.descriptor(),
                1,
                None,
            )
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    server.stop();
    let ended_early = job.is_finished();
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    job.join().unwrap().unwrap();
    assert!(!ended_early, "the sink ended before the server went away");
    let got = ids(&read(&server, "SINK", "check", 1));
    let distinct: HashSet<i64> = got.iter().copied().collect();
    assert_eq!(distinct.len(), N as usize, "every row was published");
}

#[test]
fn a_server_gone_for_good_mid_stream_fails_the_job_rather_than_ending_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = nats_server(dir.path()) else {
        return;
    };
    write(&server, "GONE", "gone", 20_000);
    let source = NatsJetStream::source(url(&server), "GONE", "g", sample_schema())
        .batch_size(100)
        .reconnect_for(Duration::from_secs(2))
        .end_when_idle(Duration::from_millis(500));
    let collect = Collect::new();
    let job = std::thread::spawn({
        let (source, collect) = (source.clone(), collect.clone());
        move || into_collect(&source, source.descriptor(), &collect, 1, None)
    });
    while collect.rows() < 5_000 {
        assert!(!job.is_finished(), "the job ended early");
        std::thread::sleep(Duration::from_millis(1));
    }
    server.stop();
    let error = job.join().unwrap().unwrap_err().to_string();
    assert!(collect.rows() < 20_000);
    assert!(error.contains("unreachable"), "{error}");
    assert!(error.contains("stream 'GONE'"), "{error}");
}
