//! Incremental operators on differential dataflow, against plain recomputations.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use rand::{Rng, SeedableRng};
use streamrun::connectors::Replay;
use streamrun::prelude::*;

use crate::common::run;

fn edge_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("src", DataType::Int64, false),
        Field::new("dst", DataType::Int64, false),
    ]))
}

/// The oracle: union-find, each node labelled with the least node of its component.
fn components(edges: &[(i64, i64)]) -> HashMap<i64, i64> {
    fn root(parent: &mut HashMap<i64, i64>, x: i64) -> i64 {
        let p = *parent.entry(x).or_insert(x);
        if p == x {
            return x;
        }
        let r = root(parent, p);
        parent.insert(x, r);
        r
    }
    let mut parent = HashMap::new();
    for &(a, b) in edges {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        if ra != rb {
            // The smaller root wins, so every root is its component's least node.
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            parent.insert(hi, lo);
        }
    }
    let nodes: Vec<i64> = parent.keys().copied().collect();
    nodes
        .into_iter()
        .map(|n| (n, root(&mut parent, n)))
        .collect()
}

#[test]
fn connected_components_match_union_find_on_1_and_4_workers() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    // 400 nodes and 300 random edges: many components, some long chains.
    let edges: Vec<(i64, i64)> = (0..300)
        .map(|_| (rng.random_range(0..400), rng.random_range(0..400)))
        .collect();
    let expected = components(&edges);
    let batches: Vec<RecordBatch> = edges
        .chunks(37)
        .map(|chunk| {
            RecordBatch::try_new(
                edge_schema(),
                vec![
                    Arc::new(Int64Array::from_iter_values(chunk.iter().map(|e| e.0))),
                    Arc::new(Int64Array::from_iter_values(chunk.iter().map(|e| e.1))),
                ],
            )
            .expect("batch")
        })
        .collect();
    for workers in [1, 4] {
        let job = Job::new("components");
        let out = Collect::new();
        job.source(Replay::new(edge_schema(), batches.clone()))
            .connected_components("src", "dst")
            .sink(out.clone());
        run(&job, workers);
        // Sum the change stream: what remains is the final labelling.
        let mut net: HashMap<(i64, i64), i64> = HashMap::new();
        for b in out.batches() {
            let node = b.column(0).as_primitive::<Int64Type>();
            let comp = b.column(1).as_primitive::<Int64Type>();
            let diff = b.column(2).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                *net.entry((node.value(i), comp.value(i))).or_default() += diff.value(i);
            }
        }
        net.retain(|_, d| *d != 0);
        assert!(net.values().all(|d| *d == 1), "every final row once");
        let got: HashMap<i64, i64> = net.into_keys().collect();
        assert_eq!(got, expected, "{workers} workers");
    }
}

#[test]
fn incremental_count_nets_to_a_plain_count_on_1_and_4_workers() {
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/sales.csv");
    let text = std::fs::read_to_string(csv).expect("sales.csv");
    let mut expected: HashMap<(String, String), i64> = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        *expected
            .entry((f[1].to_owned(), f[2].to_owned()))
            .or_default() += 1;
    }
    for workers in [1, 4] {
        let job = Job::new("incremental count");
        let out = Collect::new();
        job.source(Files::csv(csv))
            .incremental_count(["region", "product"])
            .sink(out.clone());
        run(&job, workers);
        let mut net: HashMap<(String, String, i64), i64> = HashMap::new();
        for b in out.batches() {
            let region = b.column(0).as_string::<i32>();
            let product = b.column(1).as_string::<i32>();
            let count = b.column(2).as_primitive::<Int64Type>();
            let diff = b.column(3).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                *net.entry((
                    region.value(i).to_owned(),
                    product.value(i).to_owned(),
                    count.value(i),
                ))
                .or_default() += diff.value(i);
            }
        }
        net.retain(|_, d| *d != 0);
        assert!(net.values().all(|d| *d == 1), "one final count per key");
        let got: HashMap<(String, String), i64> =
            net.into_keys().map(|(r, p, c)| ((r, p), c)).collect();
        assert_eq!(got, expected, "{workers} workers");
    }
}

#[test]
fn a_negative_node_id_stops_the_job_naming_the_column() {
    let batch = RecordBatch::try_new(
        edge_schema(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(Int64Array::from(vec![2, -7])),
        ],
    )
    .expect("batch");
    let job = Job::new("bad edges");
    job.source(Replay::new(edge_schema(), vec![batch]))
        .connected_components("src", "dst")
        .sink(Collect::new());
    let err = streamrun::execute_with(&job, &ExecOptions::new(2)).expect_err("negative node id");
    let message = err.to_string();
    assert!(
        message.contains("-7") && message.contains("'dst'"),
        "{message}"
    );
}

/// A change stream netted out: each row (all columns but the last, `diff`) with the sum of
/// its diffs, keeping the rows whose sum is not zero. Also how many rows had diff -1.
fn net_rows(batches: &[RecordBatch]) -> (HashMap<String, i64>, usize) {
    let mut net: HashMap<String, i64> = HashMap::new();
    let mut retractions = 0;
    for b in batches {
        let last = b.num_columns() - 1;
        let diff = b.column(last).as_primitive::<Int64Type>();
        let data = b.project(&(0..last).collect::<Vec<_>>()).expect("project");
        // One row at a time, to keep each with its diff.
        for i in 0..b.num_rows() {
            let row = crate::common::sorted_rows(&[data.slice(i, 1)]).remove(0);
            *net.entry(row).or_default() += diff.value(i);
            retractions += usize::from(diff.value(i) < 0);
        }
    }
    net.retain(|_, d| *d != 0);
    (net, retractions)
}

fn sales() -> Vec<Vec<String>> {
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/sales.csv");
    let text = std::fs::read_to_string(csv).expect("sales.csv");
    text.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

#[test]
fn incremental_distinct_and_reduce_net_to_plain_recomputations_on_1_and_4_workers() {
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/sales.csv");
    let rows = sales();
    let mut pairs: HashMap<String, i64> = HashMap::new();
    let mut max_quantity: HashMap<&str, i64> = HashMap::new();
    let mut min_price: HashMap<&str, f64> = HashMap::new();
    let mut total: HashMap<&str, i64> = HashMap::new();
    for r in &rows {
        pairs.insert(format!("{}|{}", r[1], r[2]), 1);
        let (q, p): (i64, f64) = (r[3].parse().expect("q"), r[4].parse().expect("p"));
        let m = max_quantity.entry(&r[1]).or_insert(q);
        *m = (*m).max(q);
        let m = min_price.entry(&r[1]).or_insert(p);
        *m = m.min(p);
        *total.entry(&r[1]).or_default() += q;
    }
    let expect =
        |m: Vec<String>| -> HashMap<String, i64> { m.into_iter().map(|k| (k, 1)).collect() };
    for workers in [1, 4] {
        let job = Job::new("incremental relational");
        let (distinct, of_changes, max, min, sum) = (
            Collect::new(),
            Collect::new(),
            Collect::new(),
            Collect::new(),
            Collect::new(),
        );
        let source = job.source(Files::csv(csv));
        source
            .incremental_distinct(["region", "product"])
            .sink(distinct.clone());
        // A change stream in: each key's count changes many times, its key stays once.
        source
            .incremental_count(["region", "product"])
            .incremental_distinct(["region", "product"])
            .sink(of_changes.clone());
        source
            .incremental_reduce(["region"], Agg::max("quantity"))
            .sink(max.clone());
        source
            .incremental_reduce(["region"], Agg::min("price"))
            .sink(min.clone());
        source
            .incremental_reduce(["region"], Agg::sum("quantity"))
            .sink(sum.clone());
        run(&job, workers);
        assert_eq!(net_rows(&distinct.batches()).0, pairs, "{workers} workers");
        assert_eq!(
            net_rows(&of_changes.batches()).0,
            pairs,
            "{workers} workers"
        );
        assert_eq!(
            net_rows(&max.batches()).0,
            expect(
                max_quantity
                    .iter()
                    .map(|(k, v)| format!("{k}|{v}"))
                    .collect()
            ),
            "{workers} workers"
        );
        assert_eq!(
            net_rows(&min.batches()).0,
            expect(min_price.iter().map(|(k, v)| format!("{k}|{v}")).collect()),
            "{workers} workers"
        );
        assert_eq!(
            net_rows(&sum.batches()).0,
            expect(total.iter().map(|(k, v)| format!("{k}|{v}")).collect()),
            "{workers} workers"
        );
    }
}

#[test]
fn a_stream_table_join_follows_the_changing_table_on_1_and_4_workers() {
    use nexmark::event::Event;
    const EVENTS: u64 = 20_000;
    // The table: each auction's highest bid so far, a change stream. The stream: auctions.
    let mut best: HashMap<i64, i64> = HashMap::new();
    let mut category: HashMap<i64, i64> = HashMap::new();
    for event in nexmark::EventGenerator::new(Nexmark::bids(EVENTS).config()).take(EVENTS as usize)
    {
        match event {
            Event::Bid(b) => {
                let m = best.entry(b.auction as i64).or_insert(b.price as i64);
                *m = (*m).max(b.price as i64);
            }
            Event::Auction(a) => {
                category.insert(a.id as i64, a.category as i64);
            }
            Event::Person(_) => {}
        }
    }
    let expected: HashMap<String, i64> = category
        .iter()
        .filter_map(|(id, c)| best.get(id).map(|p| (format!("{id}|{c}|{id}|{p}"), 1)))
        .collect();
    assert!(expected.len() > 50, "auctions with bids");
    for workers in [1, 4] {
        let job = Job::new("stream-table join");
        let out = Collect::new();
        let table = job
            .source(Nexmark::bids(EVENTS).batch_size(256))
            .incremental_reduce(["auction"], Agg::max("price"));
        job.source(Nexmark::auctions(EVENTS).batch_size(256))
            .select(["id", "category"])
            .incremental_join(&table, ["id"], ["auction"])
            .sink(out.clone());
        run(&job, workers);
        let batches = out.batches();
        let names: Vec<String> = batches[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["id", "category", "auction", "max_price", "diff"]);
        let (got, retractions) = net_rows(&batches);
        assert_eq!(got, expected, "{workers} workers");
        assert!(
            retractions > 0,
            "results are retracted as the table changes"
        );
    }
}
