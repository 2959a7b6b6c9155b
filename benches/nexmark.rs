//! Nexmark throughput for the queries Streamrun runs (q0–q5, q7, q8), in events per second
//! per core, with generation measured apart from processing, beside hand-written timely
//! implementations of q1 and q5 over the same data in the same run; then q5's end-to-end
//! latency (p50, p99) at half its peak throughput (see `nexmark/latency.rs`).
//!
//! Workload: the first `STREAMRUN_BENCH_EVENTS` (default 2,000,000) events of the Nexmark
//! generator (fixed base time), generated once into Arrow batches of 8,192 rows per table
//! and timed on its own; the queries then read those batches from memory (`Replay`), so only
//! the dataflow is timed. Events per second count every event of the stream (persons,
//! auctions and bids), whichever tables a query reads. Results go to a sink that counts rows. The raw timely q1 feeds the
//! same batches to a timely dataflow by hand (worker i takes batches i, i+W, …), applies the
//! same q1 kernel and counts rows: no Streamrun plan, routing, chain or pacing. Both sides are
//! checked to produce the same row count before timing. The raw q5 (`nexmark/raw_q5.rs`)
//! counts and ranks sliding windows in two hand-written timely operators. Figures are medians of
//! `STREAMRUN_BENCH_RUNS` runs (default 5).
//!
//! `cargo bench --bench nexmark`
#![allow(clippy::print_stdout)]

mod common;
#[path = "nexmark/latency.rs"]
mod latency;
#[path = "nexmark/raw_q5.rs"]
mod raw_q5;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use streamrun::connectors::Replay;
use streamrun::engine::Descriptor;
use streamrun::engine::{Sink, SinkWriter, Source, SourceCollector, WorkerContext};
use streamrun::nexmark::{Query, Tables, q1};
use streamrun::prelude::*;
use timely::dataflow::operators::{Inspect, ToStream};

/// A sink that counts rows and keeps nothing.
#[derive(Clone, Default)]
struct CountRows(Arc<AtomicU64>);

impl Sink for CountRows {
    fn open(&self, _: &WorkerContext, _: &SchemaRef) -> streamrun::Result<Box<dyn SinkWriter>> {
        Ok(Box::new(self.clone()))
    }
}

impl SinkWriter for CountRows {
    fn write(&mut self, batch: &RecordBatch) -> streamrun::Result<()> {
        self.0.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn finish(&mut self) -> streamrun::Result<()> {
        Ok(())
    }
}

/// Reads every batch of one generated table.
fn generate(source: Nexmark) -> (SchemaRef, Vec<RecordBatch>) {
    let schema = Source::schema(&source).expect("schema");
    let ctx = WorkerContext {
        job: "generate".into(),
        index: 0,
        workers: 1,
        local_workers: 1,
    };
    let mut reader = source.open(&ctx).expect("open");
    let mut out = SourceCollector::new(streamrun::engine::BadRecordPolicy::Fail);
    let mut batches = Vec::new();
    while reader.read(&mut out).expect("read") {
        batches.extend(out.take().0);
    }
    batches.extend(out.take().0);
    (schema, batches)
}

fn replay((schema, batches): (SchemaRef, Vec<RecordBatch>)) -> (Descriptor, Arc<dyn Source>) {
    let replay = Replay::new(schema, batches);
    (replay.descriptor(), Arc::new(replay))
}

fn streamrun_query(query: Query, tables: &Tables, workers: usize) -> u64 {
    let job = Job::new("nexmark-bench");
    let rows = CountRows::default();
    let descriptor = Descriptor::new("count", serde_json::Value::Null);
    query
        .on(&job, tables)
        .sink((descriptor, Arc::new(rows.clone()) as Arc<dyn Sink>));
    streamrun::execute_with(&job, &ExecOptions::new(workers)).expect("query");
    rows.0.load(Ordering::Relaxed)
}

fn raw_timely_q1(batches: &Arc<Vec<RecordBatch>>, workers: usize) -> u64 {
    let rows = Arc::new(AtomicU64::new(0));
    let (batches, counter) = (Arc::clone(batches), Arc::clone(&rows));
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mine: Vec<RecordBatch> = batches.iter().skip(index).step_by(peers).cloned().collect();
        let counter = Arc::clone(&counter);
        worker.dataflow::<u64, _, _>(|scope| {
            mine.to_stream(scope)
                .container::<Vec<RecordBatch>>()
                .inspect(move |batch: &RecordBatch| {
                    let euros = q1(batch.clone()).expect("q1");
                    counter.fetch_add(euros.num_rows() as u64, Ordering::Relaxed);
                });
        });
    })
    .expect("timely")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker"));
    rows.load(Ordering::Relaxed)
}

fn line(name: &str, events: u64, workers: usize, time: Duration, reference: Option<Duration>) {
    let per_core = events as f64 / time.as_secs_f64() / workers as f64;
    let ratio = reference.map_or(String::new(), |r| {
        format!("{:>8.2}x raw", r.as_secs_f64() / time.as_secs_f64())
    });
    println!(
        "{name:<30} W={workers} {:>9.1} ms {:>9.2} M events/s/core {ratio}",
        time.as_secs_f64() * 1e3,
        per_core / 1e6
    );
}

fn main() {
    let events: u64 = std::env::var("STREAMRUN_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let started = Instant::now();
    let (bid_schema, bid_batches) = generate(Nexmark::bids(events));
    let persons = generate(Nexmark::persons(events));
    let auctions = generate(Nexmark::auctions(events));
    let generation = started.elapsed();
    let bids: u64 = bid_batches.iter().map(|b| b.num_rows() as u64).sum();
    let shared = Arc::new(bid_batches.clone());
    let tables = Tables {
        persons: replay(persons),
        auctions: replay(auctions),
        bids: replay((Arc::clone(&bid_schema), bid_batches)),
    };
    let runs = common::runs();
    println!(
        "nexmark: the first {events} events ({bids} bids); generation {:.1} s ({:.2} M events/s, 1 thread, not counted below); median of {runs} runs",
        generation.as_secs_f64(),
        events as f64 / generation.as_secs_f64() / 1e6
    );
    let mut q5_peak = Vec::new();
    for workers in [1, 2] {
        assert_eq!(
            streamrun_query(Query::Q1, &tables, workers),
            raw_timely_q1(&shared, workers)
        );
        assert_eq!(
            streamrun_query(Query::Q5, &tables, workers),
            raw_q5::run(&shared, workers)
        );
        let raw = common::median_time(runs, || raw_timely_q1(&shared, workers));
        line("raw timely q1", events, workers, raw, None);
        let raw5 = common::median_time(runs, || raw_q5::run(&shared, workers));
        line("raw timely q5", events, workers, raw5, None);
        for query in [
            Query::Q0,
            Query::Q1,
            Query::Q2,
            Query::Q3,
            Query::Q4,
            Query::Q5,
            Query::Q7,
            Query::Q8,
        ] {
            let time = common::median_time(runs, || streamrun_query(query, &tables, workers));
            let reference = match query {
                Query::Q1 => Some(raw),
                Query::Q5 => {
                    q5_peak.push((workers, time));
                    Some(raw5)
                }
                _ => None,
            };
            line(
                &format!("streamrun {query:?}"),
                events,
                workers,
                time,
                reference,
            );
        }
    }
    // Latency at half the peak: bids replayed at half the rate q5 sustained above.
    for (workers, peak) in q5_peak {
        let rate = bids as f64 / peak.as_secs_f64() / 2.0;
        let result = latency::measure(
            Arc::clone(&bid_schema),
            &shared,
            rate,
            workers,
            |job, bids| {
                Query::Q5.on(
                    job,
                    &Tables {
                        persons: tables.persons.clone(),
                        auctions: tables.auctions.clone(),
                        bids,
                    },
                )
            },
        );
        println!(
            "streamrun Q5 latency W={workers} at {:.2} M bids/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} results (beyond the window's own wait)",
            rate / 1e6,
            result.p50.as_secs_f64() * 1e3,
            result.p99.as_secs_f64() * 1e3,
            result.max.as_secs_f64() * 1e3,
            result.samples
        );
    }
}
