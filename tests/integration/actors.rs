//! Actors in a job: per-key state, the same on any number of workers.

use serde::{Deserialize, Serialize};
use streamrun::prelude::*;

use crate::common::{run, sorted_rows};

#[derive(Deserialize)]
struct Sale {
    region: String,
    quantity: i64,
}

#[derive(Serialize, Deserialize)]
struct Running {
    region: String,
    sales: i64,
    units: i64,
}

#[derive(Serialize, Deserialize, Default)]
struct Totals {
    sales: i64,
    units: i64,
}

/// Emits each region's running count and unit total after every sale.
struct RunningTotals;

impl Actor for RunningTotals {
    type Input = Sale;
    type Output = Running;
    type State = Totals;
    fn on_record(&mut self, key: &mut KeyContext<'_, Totals>, sale: Sale, out: &mut Vec<Running>) {
        let state = key.state();
        state.sales += 1;
        state.units += sale.quantity;
        out.push(Running {
            region: sale.region,
            sales: state.sales,
            units: state.units,
        });
    }
}

#[test]
fn an_actor_keeps_per_key_state_on_1_and_4_workers() {
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/sales.csv");
    // The oracle: per region, the running counts are 1..=n whatever the order, and the last
    // running total is the region's total.
    let text = std::fs::read_to_string(csv).expect("sales.csv");
    let mut per_region: std::collections::HashMap<String, (i64, i64)> = Default::default();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let e = per_region.entry(f[1].to_owned()).or_default();
        e.0 += 1;
        e.1 += f[3].parse::<i64>().expect("quantity");
    }
    for workers in [1, 4] {
        let job = Job::new("actors");
        let out = Collect::new();
        job.source(Files::csv(csv))
            .key_by("region")
            .actor("running totals", || RunningTotals)
            .sink(out.clone());
        run(&job, workers);
        let rows = sorted_rows(&out.batches());
        let mut counts: std::collections::HashMap<String, Vec<i64>> = Default::default();
        let mut last: std::collections::HashMap<String, (i64, i64)> = Default::default();
        for row in &rows {
            let f: Vec<&str> = row.split('|').collect();
            let (sales, units): (i64, i64) =
                (f[1].parse().expect("sales"), f[2].parse().expect("units"));
            counts.entry(f[0].to_owned()).or_default().push(sales);
            let l = last.entry(f[0].to_owned()).or_default();
            if sales > l.0 {
                *l = (sales, units);
            }
        }
        for (region, (n, units)) in &per_region {
            let mut seen = counts[region].clone();
            seen.sort_unstable();
            assert_eq!(
                seen,
                (1..=*n).collect::<Vec<_>>(),
                "{region} on {workers} workers"
            );
            assert_eq!(last[region], (*n, *units), "{region} on {workers} workers");
        }
    }
}

#[derive(Deserialize)]
struct Click {
    user: String,
    t: i64,
}

#[derive(Serialize, Deserialize, Default)]
struct PerSecond {
    user: ValueState<String>,
    counts: MapState<i64, i64>,
}

/// Clicks per user and second, as a tumbling window written by hand with timers.
struct ClicksPerSecond;

impl Actor for ClicksPerSecond {
    type Input = Click;
    type Output = (String, i64, i64);
    type State = PerSecond;
    fn on_record(
        &mut self,
        key: &mut KeyContext<'_, PerSecond>,
        c: Click,
        _: &mut Vec<Self::Output>,
    ) {
        let start = c.t - c.t % 1000;
        let state = key.state();
        state.user.get_or_insert_with(|| c.user.clone());
        *state.counts.get_or_default(start) += 1;
        key.set_timer((start + 999) as u64);
    }
    fn on_timer(
        &mut self,
        key: &mut KeyContext<'_, PerSecond>,
        time: u64,
        out: &mut Vec<Self::Output>,
    ) {
        let start = time as i64 - 999;
        let state = key.state();
        if let (Some(n), Some(user)) = (state.counts.remove(&start), state.user.get()) {
            out.push((user.clone(), start, n));
        }
        if state.counts.is_empty() {
            key.clear();
        }
    }
}

#[test]
fn actor_timers_fire_on_the_watermark_on_1_and_4_workers() {
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    use std::time::Duration;
    use streamrun::connectors::Replay;

    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("t", DataType::Int64, false),
    ]));
    let users = ["ann", "bob", "cy", "dee", "eve"];
    let mut expected: std::collections::HashMap<String, i64> = Default::default();
    let batches: Vec<RecordBatch> = (0..40i64)
        .map(|b| {
            // Each batch covers [b * 500, b * 500 + 1500): out of order by up to 1.5 s.
            let rows: Vec<(&str, i64)> = (0..50i64)
                .map(|i| {
                    (
                        users[((b * 7 + i) % 5) as usize],
                        b * 500 + (i * 331) % 1500,
                    )
                })
                .collect();
            for (u, t) in &rows {
                *expected.entry(format!("{u}|{}", t - t % 1000)).or_default() += 1;
            }
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                ],
            )
            .expect("batch")
        })
        .collect();
    for workers in [1, 4] {
        let job = Job::new("timers");
        let out = Collect::new();
        // Replay hands worker w batches w, w + W, …: with 4 workers a worker's batches are
        // 2 s apart, so the allowed delay covers the skew between workers too.
        job.source(Replay::new(Arc::clone(&schema), batches.clone()))
            .event_time("t", Duration::from_millis(1500))
            .key_by("user")
            .actor("clicks per second", || ClicksPerSecond)
            .sink(out.clone());
        let report = run(&job, workers);
        assert_eq!(report.late_records, 0);
        let mut got: std::collections::HashMap<String, i64> = Default::default();
        for row in sorted_rows(&out.batches()) {
            let (key, n) = row.rsplit_once('|').expect("three columns");
            let previous = got.insert(key.to_owned(), n.parse().expect("count"));
            assert!(
                previous.is_none(),
                "{key} emitted twice on {workers} workers"
            );
        }
        assert_eq!(got, expected, "{workers} workers");
    }
}
