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
    query
        .build(&job, EVENTS, streamrun::connectors::DEFAULT_BASE_TIME_MS)
        .sink(out.clone());
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

#[test]
fn q5_finds_the_hottest_auctions_of_every_sliding_window() {
    const Q5_EVENTS: u64 = 100_000;
    let (size, slide) = (10_000i64, 2_000i64);
    let mut counts: std::collections::HashMap<(i64, i64), i64> = Default::default();
    for event in EventGenerator::new(Nexmark::bids(Q5_EVENTS).config()).take(Q5_EVENTS as usize) {
        if let Event::Bid(b) = event {
            let t = b.date_time as i64;
            let mut start = t - t % slide;
            while start > t - size {
                *counts.entry((start, b.auction as i64)).or_default() += 1;
                start -= slide;
            }
        }
    }
    let mut max: std::collections::HashMap<i64, i64> = Default::default();
    for (&(start, _), &n) in &counts {
        let m = max.entry(start).or_insert(0);
        *m = (*m).max(n);
    }
    let mut expected: Vec<(i64, i64, i64)> = counts
        .iter()
        .filter(|(k, n)| max[&k.0] == **n)
        .map(|(&(start, auction), &n)| (start, auction, n))
        .collect();
    expected.sort_unstable();
    assert!(max.len() >= 5, "several windows");

    for workers in [1, 4] {
        let job = Job::new("q5");
        let out = Collect::new();
        Query::Q5
            .build(&job, Q5_EVENTS, streamrun::connectors::DEFAULT_BASE_TIME_MS)
            .sink(out.clone());
        run(&job, workers);
        let mut got = Vec::new();
        for b in out.batches() {
            use arrow::array::AsArray;
            use arrow::datatypes::{Int64Type, TimestampMillisecondType};
            let start = b.column(0).as_primitive::<TimestampMillisecondType>();
            let end = b.column(1).as_primitive::<TimestampMillisecondType>();
            let auction = b.column(2).as_primitive::<Int64Type>();
            let num = b.column(3).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                assert_eq!(end.value(i) - start.value(i), size);
                got.push((start.value(i), auction.value(i), num.value(i)));
            }
        }
        got.sort_unstable();
        assert_eq!(got, expected, "{workers} workers");
    }
}

#[test]
fn q7_finds_the_highest_bids_of_every_tumbling_window() {
    const Q7_EVENTS: u64 = 100_000;
    const WINDOW: i64 = 10_000;
    let bids: Vec<nexmark::event::Bid> = EventGenerator::new(Nexmark::bids(Q7_EVENTS).config())
        .take(Q7_EVENTS as usize)
        .filter_map(|e| match e {
            Event::Bid(b) => Some(b),
            _ => None,
        })
        .collect();
    let mut max: std::collections::HashMap<i64, usize> = Default::default();
    for b in &bids {
        let end = b.date_time as i64 / WINDOW * WINDOW + WINDOW;
        let m = max.entry(end).or_insert(0);
        *m = (*m).max(b.price);
    }
    let mut expected: Vec<(i64, i64, i64, i64)> = bids
        .iter()
        .filter(|b| max[&(b.date_time as i64 / WINDOW * WINDOW + WINDOW)] == b.price)
        .map(|b| {
            (
                b.auction as i64,
                b.price as i64,
                b.bidder as i64,
                b.date_time as i64,
            )
        })
        .collect();
    expected.sort_unstable();
    assert!(max.len() >= 2, "several windows");

    for workers in [1, 4] {
        let job = Job::new("q7");
        let out = Collect::new();
        Query::Q7
            .build(&job, Q7_EVENTS, streamrun::connectors::DEFAULT_BASE_TIME_MS)
            .sink(out.clone());
        run(&job, workers);
        let mut got = Vec::new();
        for b in out.batches() {
            use arrow::array::AsArray;
            use arrow::datatypes::{Int64Type, TimestampMillisecondType};
            let auction = b.column(0).as_primitive::<Int64Type>();
            let price = b.column(1).as_primitive::<Int64Type>();
            let bidder = b.column(2).as_primitive::<Int64Type>();
            let time = b.column(3).as_primitive::<TimestampMillisecondType>();
            for i in 0..b.num_rows() {
                got.push((
                    auction.value(i),
                    price.value(i),
                    bidder.value(i),
                    time.value(i),
                ));
            }
        }
        got.sort_unstable();
        assert_eq!(got, expected, "{workers} workers");
    }
}

#[test]
fn q8_finds_the_people_who_registered_and_opened_an_auction_in_the_same_window() {
    const Q8_EVENTS: u64 = 200_000;
    const WINDOW: i64 = 10_000;
    let window = |t: u64| t as i64 / WINDOW * WINDOW;
    let mut people = Vec::new();
    let mut sellers: std::collections::HashSet<(i64, i64)> = Default::default();
    for event in EventGenerator::new(Nexmark::bids(Q8_EVENTS).config()).take(Q8_EVENTS as usize) {
        match event {
            Event::Person(p) => people.push((p.id as i64, p.name, window(p.date_time))),
            Event::Auction(a) => {
                sellers.insert((a.seller as i64, window(a.date_time)));
            }
            Event::Bid(_) => {}
        }
    }
    let mut expected: Vec<String> = people
        .into_iter()
        .filter(|(id, _, w)| sellers.contains(&(*id, *w)))
        .map(|(id, name, w)| format!("{id}|{name}|{}", time(w as u64)))
        .collect();
    expected.sort();
    assert!(!expected.is_empty(), "some new people sell at once");

    let mut first = None;
    for workers in [1, 4] {
        let job = Job::new("q8");
        let out = Collect::new();
        Query::Q8
            .build(&job, Q8_EVENTS, streamrun::connectors::DEFAULT_BASE_TIME_MS)
            .sink(out.clone());
        run(&job, workers);
        let rows = sorted_rows(&out.batches());
        assert_eq!(rows, expected, "{workers} workers");
        match &first {
            None => first = Some(rows),
            Some(f) => assert_eq!(&rows, f),
        }
    }
}

#[test]
fn q3_joins_category_10_auctions_with_their_western_sellers() {
    const Q3_EVENTS: u64 = 100_000;
    let mut people: std::collections::HashMap<i64, (String, String, String)> = Default::default();
    let mut auctions = Vec::new();
    for event in EventGenerator::new(Nexmark::bids(Q3_EVENTS).config()).take(Q3_EVENTS as usize) {
        match event {
            Event::Person(p) if ["or", "id", "ca"].contains(&p.state.as_str()) => {
                people.insert(p.id as i64, (p.name, p.city, p.state));
            }
            Event::Auction(a) if a.category == 10 => auctions.push((a.id as i64, a.seller as i64)),
            _ => {}
        }
    }
    let mut expected: Vec<String> = auctions
        .iter()
        .filter_map(|(id, seller)| {
            people
                .get(seller)
                .map(|(name, city, state)| format!("{name}|{city}|{state}|{id}"))
        })
        .collect();
    expected.sort();
    assert!(!expected.is_empty(), "some auctions match");

    for workers in [1, 4] {
        let job = Job::new("q3");
        let out = Collect::new();
        Query::Q3
            .build(&job, Q3_EVENTS, streamrun::connectors::DEFAULT_BASE_TIME_MS)
            .sink(out.clone());
        run(&job, workers);
        assert_eq!(sorted_rows(&out.batches()), expected, "{workers} workers");
    }
}

#[test]
fn q4_averages_the_winning_bids_per_category() {
    const Q4_EVENTS: u64 = 100_000;
    let mut auctions: std::collections::HashMap<i64, (i64, u64, u64)> = Default::default();
    let mut bids = Vec::new();
    for event in EventGenerator::new(Nexmark::bids(Q4_EVENTS).config()).take(Q4_EVENTS as usize) {
        match event {
            Event::Auction(a) => {
                auctions.insert(a.id as i64, (a.category as i64, a.date_time, a.expires));
            }
            Event::Bid(b) => bids.push(b),
            Event::Person(_) => {}
        }
    }
    let mut winning: std::collections::HashMap<i64, (i64, i64)> = Default::default();
    for b in &bids {
        if let Some(&(category, opened, expires)) = auctions.get(&(b.auction as i64))
            && opened <= b.date_time
            && b.date_time <= expires
        {
            let w = winning
                .entry(b.auction as i64)
                .or_insert((category, i64::MIN));
            w.1 = w.1.max(b.price as i64);
        }
    }
    let mut per_category: std::collections::BTreeMap<i64, (f64, f64)> = Default::default();
    for (category, price) in winning.values() {
        let e = per_category.entry(*category).or_default();
        e.0 += *price as f64;
        e.1 += 1.0;
    }
    assert!(!per_category.is_empty());
    for workers in [1, 4] {
        let job = Job::new("q4");
        let out = Collect::new();
        Query::Q4
            .build(&job, Q4_EVENTS, streamrun::connectors::DEFAULT_BASE_TIME_MS)
            .sink(out.clone());
        run(&job, workers);
        let mut got = std::collections::BTreeMap::new();
        for b in out.batches() {
            use arrow::array::AsArray;
            use arrow::datatypes::{Float64Type, Int64Type};
            let category = b.column(0).as_primitive::<Int64Type>();
            let mean = b.column(1).as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                got.insert(category.value(i), mean.value(i));
            }
        }
        assert_eq!(got.len(), per_category.len(), "{workers} workers");
        for (category, (sum, n)) in &per_category {
            let expected = sum / n;
            assert!(
                (got[category] - expected).abs() < 1e-6 * expected,
                "category {category}: {} vs {expected}",
                got[category]
            );
        }
    }
}
