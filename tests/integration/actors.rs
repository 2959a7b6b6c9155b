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
    fn on_record(&mut self, state: &mut Totals, sale: Sale, out: &mut Vec<Running>) {
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
