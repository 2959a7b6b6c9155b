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
    let err = streamrun::execute_with(
        &job,
        &ExecOptions {
            workers: 2,
            metrics: None,
        },
    )
    .expect_err("negative node id");
    let message = err.to_string();
    assert!(
        message.contains("-7") && message.contains("'dst'"),
        "{message}"
    );
}
