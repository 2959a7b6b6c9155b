//! Nexmark q0–q2 against straightforward single-threaded implementations over the generator,
//! on 1 and 4 workers.

use nexmark::EventGenerator;
use nexmark::event::Event;
use streamrun::nexmark::Query;
use streamrun::prelude::*;

use crate::common::{run, sorted_rows};

const EVENTS: u64 = 50_000;

fn bids() -> Vec<nexmark::event::Bid> {
    EventGenerator::new(Nexmark::bids(EVENTS).config())
        .take(EVENTS as usize)
        .filter_map(|e| match e {
            Event::Bid(b) => Some(b),
            _ => None,
        })
        .collect()
}

fn run_query(query: Query, workers: usize) -> Vec<arrow::array::RecordBatch> {
    let job = Job::new("nexmark");
    let out = Collect::new();
    query.build(&job, Nexmark::bids(EVENTS)).sink(out.clone());
    run(&job, workers);
    out.batches()
}

/// Milliseconds since the epoch as Arrow prints a millisecond timestamp.
fn time(millis: u64) -> String {
    let array = arrow::array::TimestampMillisecondArray::from(vec![millis as i64]);
    arrow::util::display::ArrayFormatter::try_new(&array, &Default::default())
        .expect("formatter")
        .value(0)
        .to_string()
}

#[test]
fn q0_passes_every_bid_through() {
    let mut expected: Vec<String> = bids()
        .iter()
        .map(|b| {
            format!(
                "{}|{}|{}|{}|{}|{}|{}",
                b.auction,
                b.bidder,
                b.price,
                b.channel,
                b.url,
                time(b.date_time),
                b.extra
            )
        })
        .collect();
    expected.sort();
    for workers in [1, 4] {
        assert_eq!(
            sorted_rows(&run_query(Query::Q0, workers)),
            expected,
            "{workers} workers"
        );
    }
}

#[test]
fn q1_converts_every_price_to_euros() {
    let mut expected: Vec<String> = bids()
        .iter()
        .map(|b| {
            let euros = arrow::array::Float64Array::from(vec![0.908 * b.price as f64]);
            let euros = arrow::util::display::ArrayFormatter::try_new(&euros, &Default::default())
                .expect("formatter")
                .value(0)
                .to_string();
            format!(
                "{}|{}|{euros}|{}|{}",
                b.auction,
                b.bidder,
                time(b.date_time),
                b.extra
            )
        })
        .collect();
    expected.sort();
    let one = sorted_rows(&run_query(Query::Q1, 1));
    assert_eq!(one, expected);
    assert_eq!(sorted_rows(&run_query(Query::Q1, 4)), one);
}

#[test]
fn q2_selects_the_bids_on_every_123rd_auction() {
    let mut expected: Vec<String> = bids()
        .iter()
        .filter(|b| b.auction % 123 == 0)
        .map(|b| format!("{}|{}", b.auction, b.price))
        .collect();
    expected.sort();
    assert!(!expected.is_empty(), "50,000 events include such bids");
    let one = sorted_rows(&run_query(Query::Q2, 1));
    assert_eq!(one, expected);
    assert_eq!(sorted_rows(&run_query(Query::Q2, 4)), one);
}
