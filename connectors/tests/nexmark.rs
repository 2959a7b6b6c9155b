//! The Nexmark source: every worker count yields exactly the events of its table among the
//! first N events of the generator's whole stream.

mod common;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use nexmark::EventGenerator;
use nexmark::event::Event;
use streamrun_connectors::{Nexmark, NexmarkTable};
use streamrun_engine::{BadRecordPolicy, Source};

use common::read_all;

const EVENTS: u64 = 20_000;

/// The oracle: the generator's unfiltered stream, first N events, split by type.
fn oracle(source: &Nexmark) -> Vec<(i64, i64, i64)> {
    let mut rows: Vec<(i64, i64, i64)> = EventGenerator::new(source.config())
        .take(EVENTS as usize)
        .filter_map(|event| match (source.table(), event) {
            (NexmarkTable::Bid, Event::Bid(b)) => {
                Some((b.auction as i64, b.price as i64, b.date_time as i64))
            }
            (NexmarkTable::Auction, Event::Auction(a)) => {
                Some((a.id as i64, a.seller as i64, a.date_time as i64))
            }
            (NexmarkTable::Person, Event::Person(p)) => {
                Some((p.id as i64, p.name.len() as i64, p.date_time as i64))
            }
            _ => None,
        })
        .collect();
    rows.sort_unstable();
    rows
}

/// The same three values read back from the source's batches.
fn rows(table: NexmarkTable, batches: &[RecordBatch]) -> Vec<(i64, i64, i64)> {
    let mut rows = Vec::new();
    for b in batches {
        let schema = b.schema();
        let col = |name: &str| b.column(schema.index_of(name).expect("column"));
        let time = col("date_time")
            .as_primitive::<TimestampMillisecondType>()
            .clone();
        match table {
            NexmarkTable::Bid => {
                let (a, p) = (
                    col("auction").as_primitive::<Int64Type>(),
                    col("price").as_primitive::<Int64Type>(),
                );
                rows.extend((0..b.num_rows()).map(|i| (a.value(i), p.value(i), time.value(i))));
            }
            NexmarkTable::Auction => {
                let (id, s) = (
                    col("id").as_primitive::<Int64Type>(),
                    col("seller").as_primitive::<Int64Type>(),
                );
                rows.extend((0..b.num_rows()).map(|i| (id.value(i), s.value(i), time.value(i))));
            }
            NexmarkTable::Person => {
                let (id, name) = (
                    col("id").as_primitive::<Int64Type>(),
                    col("name").as_string::<i32>(),
                );
                rows.extend(
                    (0..b.num_rows())
                        .map(|i| (id.value(i), name.value(i).len() as i64, time.value(i))),
                );
            }
        }
        assert_eq!(b.schema(), table.schema());
        assert_eq!(b.column(0).null_count(), 0);
    }
    rows.sort_unstable();
    rows
}

#[test]
fn every_worker_count_reads_exactly_the_first_n_events_of_each_table() {
    for source in [
        Nexmark::bids(EVENTS),
        Nexmark::auctions(EVENTS),
        Nexmark::persons(EVENTS),
    ] {
        let source = source.batch_size(1000);
        let expected = oracle(&source);
        assert!(!expected.is_empty());
        for workers in [1, 3, 4] {
            let read = read_all(&source, workers, BadRecordPolicy::Fail).expect("read");
            assert_eq!(
                rows(source.table(), &read.batches()),
                expected,
                "{:?} on {workers} workers",
                source.table()
            );
        }
    }
}

#[test]
fn the_base_time_is_fixed_by_default_and_settable() {
    let first = |source: Nexmark| {
        let read = read_all(&source, 1, BadRecordPolicy::Fail).expect("read");
        let batches = read.batches();
        batches[0]
            .column(5)
            .as_primitive::<TimestampMillisecondType>()
            .value(0)
    };
    let default = first(Nexmark::bids(100));
    assert_eq!(default, first(Nexmark::bids(100)), "reproducible");
    assert!(default >= streamrun_connectors::DEFAULT_BASE_TIME_MS as i64);
    let later =
        first(Nexmark::bids(100).base_time(streamrun_connectors::DEFAULT_BASE_TIME_MS + 60_000));
    assert_eq!(later - default, 60_000);
    assert!(Source::schema(&Nexmark::bids(1).batch_size(0)).is_err());
}
