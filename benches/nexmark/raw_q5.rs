//! Nexmark q5 written by hand on timely dataflow, with no Streamrun layer: the baseline the
//! bench compares Streamrun's q5 with.
//!
//! Each worker feeds its share of the bid batches (batches i, i + W, …) through an input
//! handle, at a timestamp equal to the batch's least event time (bids come in event-time
//! order), keeping at most 16 batches in flight as Streamrun's sources do. The first operator,
//! exchanged by auction, counts bids per auction and sliding window (10 s every 2 s) and
//! emits a window's counts once the frontier passes its end; the second, exchanged by window
//! end, keeps each window's auctions with the most bids and emits them once the frontier
//! passes the window's end. Rows out are counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Input, Inspect, Operator, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

const SIZE: u64 = 10_000;
const SLIDE: u64 = 2_000;
const IN_FLIGHT: usize = 16;

/// (auction, event time) of every bid of `batch`.
fn bids(batch: &RecordBatch) -> Vec<(u64, u64)> {
    let column = |name: &str| {
        let c = batch.column(batch.schema().index_of(name).expect("column"));
        cast(c, &DataType::Int64).expect("cast")
    };
    let (auction, time) = (column("auction"), column("date_time"));
    let (auction, time) = (
        auction.as_primitive::<Int64Type>(),
        time.as_primitive::<Int64Type>(),
    );
    auction
        .values()
        .iter()
        .zip(time.values())
        .map(|(&a, &t)| (a as u64, t as u64))
        .collect()
}

/// Runs q5 over `batches` on `workers` threads; returns the number of result rows.
pub fn run(batches: &Arc<Vec<RecordBatch>>, workers: usize) -> u64 {
    let rows = Arc::new(AtomicU64::new(0));
    let (batches, counter) = (Arc::clone(batches), Arc::clone(&rows));
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<(u64, u64)>>>::new();
        let probe = ProbeHandle::new();
        let counter = Arc::clone(&counter);
        worker.dataflow::<u64, _, _>(|scope| {
            scope
                .input_from(&mut input)
                .unary_frontier::<CapacityContainerBuilder<Vec<(u64, u64, u64)>>, _, _, _>(
                    Exchange::new(|(auction, _): &(u64, u64)| *auction),
                    "count per window",
                    |_, _| {
                        // Window end → (auction → bids), and the capability to emit it with.
                        let mut open: BTreeMap<u64, (HashMap<u64, u64>, Capability<u64>)> =
                            BTreeMap::new();
                        move |(input, frontier), output| {
                            input.for_each_stamp(|cap, data| {
                                for container in data {
                                    for (auction, t) in container.drain(..) {
                                        let mut end = t - t % SLIDE + SLIDE;
                                        while end <= t + SIZE {
                                            let entry = open.entry(end).or_insert_with(|| {
                                                (HashMap::new(), cap.delayed(&(end - 1), 0))
                                            });
                                            *entry.0.entry(auction).or_default() += 1;
                                            end += SLIDE;
                                        }
                                    }
                                }
                            });
                            while let Some(entry) = open.first_entry()
                                && !frontier.less_than(entry.key())
                            {
                                let end = *entry.key();
                                let (counts, cap) = entry.remove();
                                let mut session = output.session(&cap);
                                for (auction, n) in counts {
                                    session.give((end, auction, n));
                                }
                            }
                        }
                    },
                )
                .unary_frontier::<CapacityContainerBuilder<Vec<(u64, u64, u64)>>, _, _, _>(
                    Exchange::new(|(end, _, _): &(u64, u64, u64)| *end),
                    "hottest per window",
                    |_, _| {
                        let mut open: BTreeMap<u64, (u64, Vec<u64>, Capability<u64>)> =
                            BTreeMap::new();
                        move |(input, frontier), output| {
                            input.for_each_stamp(|cap, data| {
                                for container in data {
                                    for (end, auction, n) in container.drain(..) {
                                        let entry = open.entry(end).or_insert_with(|| {
                                            (0, Vec::new(), cap.delayed(&(end - 1), 0))
                                        });
                                        if n > entry.0 {
                                            *entry = (n, vec![auction], entry.2.clone());
                                        } else if n == entry.0 {
                                            entry.1.push(auction);
                                        }
                                    }
                                }
                            });
                            while let Some(entry) = open.first_entry()
                                && !frontier.less_than(entry.key())
                            {
                                let end = *entry.key();
                                let (n, auctions, cap) = entry.remove();
                                let mut session = output.session(&cap);
                                for auction in auctions {
                                    session.give((end, auction, n));
                                }
                            }
                        }
                    },
                )
                .inspect_core(move |event| {
                    if let Ok((_, rows)) = event {
                        counter.fetch_add(rows.len() as u64, Ordering::Relaxed);
                    }
                })
                .probe_with(&probe);
        });
        let mut sent: std::collections::VecDeque<u64> = Default::default();
        for batch in batches.iter().skip(index).step_by(peers) {
            let mut records = bids(batch);
            let least = records.iter().map(|r| r.1).min().unwrap_or(0);
            if least > *input.time() {
                input.advance_to(least);
            }
            sent.push_back(*input.time());
            input.send_batch(&mut records);
            if sent.len() > IN_FLIGHT
                && let Some(oldest) = sent.pop_front()
            {
                while probe.less_equal(&oldest) {
                    worker.step();
                }
            }
        }
        input.close();
        while worker.step() {}
    })
    .expect("timely")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker"));
    rows.load(Ordering::Relaxed)
}
