//! PageRank on differential dataflow, against a plain loop doing the same integer arithmetic
//! and against known answers.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use arrow::array::{AsArray, Int32Array, Int64Array, RecordBatch, UInt16Array};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use rand::{Rng, SeedableRng};
use streamrun_engine::{
    BadRecordPolicy, DataflowOperator, Descriptor, ExecOptions, JobGraph, Result, Sink, SinkWriter,
    Source, SourceCollector, SourceDecl, SourceReader, WorkerContext, execute,
};
use streamrun_operators::PageRank;

const SCALE: i64 = 1_000_000;

/// The input: batches dealt to the workers in turn, one batch per read (so one epoch each).
struct Batches {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

struct Reader {
    mine: std::vec::IntoIter<RecordBatch>,
}

impl Source for Batches {
    fn schema(&self) -> Result<SchemaRef> {
        Ok(self.schema.clone())
    }

    fn open(&self, ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
        let mine: Vec<RecordBatch> = self
            .batches
            .iter()
            .enumerate()
            .filter(|(i, _)| i % ctx.workers == ctx.index)
            .map(|(_, b)| b.clone())
            .collect();
        Ok(Box::new(Reader {
            mine: mine.into_iter(),
        }))
    }
}

impl SourceReader for Reader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        if let Some(batch) = self.mine.next() {
            out.emit(batch, 0);
        }
        Ok(self.mine.len() > 0)
    }
}

/// The output, from every worker.
#[derive(Clone, Default)]
struct Gather(Arc<Mutex<Vec<RecordBatch>>>);

impl Sink for Gather {
    fn open(&self, _: &WorkerContext, _: &SchemaRef) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(self.clone()))
    }
}

impl SinkWriter for Gather {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.0.lock().expect("lock").push(batch.clone());
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Runs `op` over `batches` on `workers` workers: the output batches, or the job's error.
fn run(
    op: PageRank,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    workers: usize,
) -> Result<Vec<RecordBatch>> {
    let mut graph = JobGraph::new("pagerank");
    let source = graph.add_source(
        "edges",
        SourceDecl {
            descriptor: Descriptor::new("edges", serde_json::Value::Null),
            source: Arc::new(Batches { schema, batches }),
            on_bad_record: BadRecordPolicy::Fail,
            dead_letters: None,
            event_time: None,
        },
    );
    let ranks = graph.add_dataflow(
        &[source],
        "pagerank",
        Descriptor::new("pagerank", serde_json::Value::Null),
        Arc::new(op),
    );
    let out = Gather::default();
    graph.add_sink(
        ranks,
        "gather",
        Descriptor::new("gather", serde_json::Value::Null),
        Arc::new(out.clone()),
    );
    execute(&graph, &ExecOptions::new(workers))?;
    let batches = out.0.lock().expect("lock").clone();
    Ok(batches)
}

fn edge_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("src", DataType::Int64, false),
        Field::new("dst", DataType::Int64, false),
    ]))
}

fn change_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("src", DataType::Int64, false),
        Field::new("dst", DataType::Int64, false),
        Field::new("diff", DataType::Int64, false),
    ]))
}

/// `edges` in batches of `size` rows.
fn edge_batches(edges: &[(i64, i64)], size: usize) -> Vec<RecordBatch> {
    edges
        .chunks(size)
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
        .collect()
}

/// `changes` (edge, diff) as change-stream batches of `size` rows.
fn change_batches(changes: &[((i64, i64), i64)], size: usize) -> Vec<RecordBatch> {
    changes
        .chunks(size)
        .map(|chunk| {
            RecordBatch::try_new(
                change_schema(),
                vec![
                    Arc::new(Int64Array::from_iter_values(chunk.iter().map(|c| c.0.0))),
                    Arc::new(Int64Array::from_iter_values(chunk.iter().map(|c| c.0.1))),
                    Arc::new(Int64Array::from_iter_values(chunk.iter().map(|c| c.1))),
                ],
            )
            .expect("batch")
        })
        .collect()
}

/// The output change stream netted out: each node's surfers and rank. Every node must end
/// with exactly one row, and its rank must be its surfers over `SCALE` times the node count.
fn net_ranks(batches: &[RecordBatch]) -> HashMap<i64, (i64, f64)> {
    let mut net: HashMap<(i64, u64, i64), i64> = HashMap::new();
    for b in batches {
        let names: Vec<&str> = b
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["node", "rank", "surfers", "diff"]);
        let node = arrow::compute::cast(b.column(0), &DataType::Int64).expect("node ids");
        let node = node.as_primitive::<Int64Type>();
        let rank = b.column(1).as_primitive::<Float64Type>();
        let surfers = b.column(2).as_primitive::<Int64Type>();
        let diff = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            *net.entry((node.value(i), rank.value(i).to_bits(), surfers.value(i)))
                .or_default() += diff.value(i);
        }
    }
    net.retain(|_, d| *d != 0);
    assert!(net.values().all(|d| *d == 1), "every final row once");
    let mut ranks = HashMap::new();
    for (node, rank, surfers) in net.into_keys() {
        let previous = ranks.insert(node, (surfers, f64::from_bits(rank)));
        assert!(previous.is_none(), "node {node} has one rank");
    }
    let n = ranks.len() as f64;
    for (node, (surfers, rank)) in &ranks {
        assert_eq!(*rank, *surfers as f64 / (SCALE as f64 * n), "node {node}");
    }
    ranks
}

/// The oracle: the same integer PageRank as a plain loop over a map.
fn oracle(edges: &[(i64, i64)], damping: f64, rounds: u64) -> HashMap<i64, i64> {
    PageRank::by_loop(edges, damping, rounds)
}

fn surfers(ranks: &HashMap<i64, (i64, f64)>) -> HashMap<i64, i64> {
    ranks.iter().map(|(v, (s, _))| (*v, *s)).collect()
}

/// ~2,000 nodes and 16,000 edges: nodes 1,800.. are never sources (dangling, some only
/// destinations), and random picks give self loops and duplicate edges too.
fn random_graph(seed: u64) -> Vec<(i64, i64)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..16_000)
        .map(|_| (rng.random_range(0..1_800), rng.random_range(0..2_000)))
        .collect()
}

#[test]
fn pagerank_equals_a_plain_loop_on_a_random_graph_on_1_and_3_workers() {
    let edges = random_graph(7);
    assert!(edges.iter().any(|(a, b)| a == b), "self loops");
    assert!(
        edges.len() > edges.iter().collect::<BTreeSet<_>>().len(),
        "duplicate edges"
    );
    let expected = oracle(&edges, 0.85, 20);
    assert!(expected.len() > 1_990, "{} nodes", expected.len());
    for workers in [1, 3] {
        let out = run(
            PageRank::new("src", "dst"),
            edge_schema(),
            edge_batches(&edges, 997),
            workers,
        )
        .expect("pagerank job");
        let got = net_ranks(&out);
        assert_eq!(surfers(&got), expected, "{workers} workers");
        let total: f64 = got.values().map(|(_, r)| r).sum();
        assert!((total - 1.0).abs() < 1e-3, "ranks sum to {total}");
    }
}

#[test]
fn pagerank_follows_added_and_retracted_edges_on_1_and_3_workers() {
    let edges = random_graph(11);
    // Add every edge, then retract every third one, and every edge of nodes 0..50 (some of
    // which then leave the graph, and others become dangling): the result is the
    // PageRank of what remains.
    let mut changes: Vec<((i64, i64), i64)> = edges.iter().map(|&e| (e, 1)).collect();
    let mut remaining = Vec::new();
    for (i, &(a, b)) in edges.iter().enumerate() {
        if i % 3 == 0 || a < 50 || b < 50 {
            changes.push(((a, b), -1));
        } else {
            remaining.push((a, b));
        }
    }
    let expected = oracle(&remaining, 0.9, 12);
    assert!(expected.keys().all(|&v| v >= 50));
    for workers in [1, 3] {
        let out = run(
            PageRank::new("src", "dst").damping(0.9).iterations(12),
            change_schema(),
            change_batches(&changes, 1_500),
            workers,
        )
        .expect("pagerank job");
        let retractions = out
            .iter()
            .map(|b| {
                b.column(3)
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .filter(|d| **d < 0)
                    .count()
            })
            .sum::<usize>();
        assert!(retractions > 0, "ranks are retracted as edges change");
        assert_eq!(surfers(&net_ranks(&out)), expected, "{workers} workers");
    }
}

#[test]
fn a_cycle_and_stars_have_their_known_ranks() {
    let check = |edges: &[(i64, i64)], expected: &[(i64, f64)], tolerance: f64| {
        for workers in [1, 2] {
            let out = run(
                PageRank::new("src", "dst").iterations(100),
                edge_schema(),
                edge_batches(edges, 2),
                workers,
            )
            .expect("pagerank job");
            let got = net_ranks(&out);
            assert_eq!(got.len(), expected.len());
            for (node, rank) in expected {
                let r = got[node].1;
                assert!(
                    (r - rank).abs() <= tolerance,
                    "node {node}: {r}, not {rank} ({workers} workers)"
                );
            }
        }
    };
    // A cycle: every node has 1/3, exactly (850,000 sent along each edge, 150,000 reset).
    let cycle = [(0, 1), (1, 2), (2, 0)];
    check(
        &cycle,
        &[(0, 1.0 / 3.0), (1, 1.0 / 3.0), (2, 1.0 / 3.0)],
        1e-15,
    );
    let out = run(
        PageRank::new("src", "dst"),
        edge_schema(),
        edge_batches(&cycle, 1),
        2,
    )
    .expect("pagerank job");
    assert!(net_ranks(&out).values().all(|&(s, _)| s == SCALE));
    // Four leaves linking to a centre and back: c = 0.03 + 0.85·4l, l = 0.03 + 0.85·c/4, with
    // c + 4l = 1: c = 0.88/1.85.
    let (c, l) = (0.88 / 1.85, (1.0 - 0.88 / 1.85) / 4.0);
    let both: Vec<(i64, i64)> = (1..=4).flat_map(|k| [(k, 0), (0, k)]).collect();
    let expected: Vec<(i64, f64)> = [(0, c)]
        .into_iter()
        .chain((1..=4).map(|k| (k, l)))
        .collect();
    check(&both, &expected, 1e-5);
    // Four leaves linking to a dangling centre, whose surfers go to all five nodes alike:
    // c = 0.03 + 0.85·(4l + c/5), l = 0.03 + 0.85·c/5, c + 4l = 1: c = 0.88/1.68.
    let (c, l) = (0.88 / 1.68, (1.0 - 0.88 / 1.68) / 4.0);
    let inward: Vec<(i64, i64)> = (1..=4).map(|k| (k, 0)).collect();
    let expected: Vec<(i64, f64)> = [(0, c)]
        .into_iter()
        .chain((1..=4).map(|k| (k, l)))
        .collect();
    check(&inward, &expected, 1e-5);
}

#[test]
fn self_loops_and_duplicate_edges_count_and_a_destination_only_node_is_dangling() {
    // 1 → 1 (a self loop), 1 → 2 twice, 2 → 3; 3 is only a destination. After one round:
    // 1 sends ⌊850,000/3⌋ = 283,333 along each of its three out-edges: once to itself and
    // twice to 2; 2 sends 850,000 to 3; 3 is dangling: its 850,000 go to all three nodes,
    // 283,333 each. And every node gets 150,000 reset surfers.
    let edges = [(1, 1), (1, 2), (2, 3), (1, 2)];
    let expected: HashMap<i64, i64> = [
        (1, 150_000 + 283_333 + 283_333),
        (2, 150_000 + 2 * 283_333 + 283_333),
        (3, 150_000 + 850_000 + 283_333),
    ]
    .into();
    assert_eq!(oracle(&edges, 0.85, 1), expected);
    for workers in [1, 2] {
        let out = run(
            PageRank::new("src", "dst").iterations(1),
            edge_schema(),
            edge_batches(&edges, 1),
            workers,
        )
        .expect("pagerank job");
        assert_eq!(surfers(&net_ranks(&out)), expected, "{workers} workers");
        // Many rounds too.
        let out = run(
            PageRank::new("src", "dst").iterations(30),
            edge_schema(),
            edge_batches(&edges, 1),
            workers,
        )
        .expect("pagerank job");
        assert_eq!(
            surfers(&net_ranks(&out)),
            oracle(&edges, 0.85, 30),
            "{workers} workers"
        );
    }
}

#[test]
fn a_node_left_without_surfers_keeps_its_row() {
    // With damping 1 there are no reset surfers: 1, linked from nobody, ends with none.
    let edges = [(1, 2), (2, 3), (3, 2)];
    let expected = oracle(&edges, 1.0, 3);
    assert_eq!(expected[&1], 0);
    let out = run(
        PageRank::new("src", "dst").damping(1.0).iterations(3),
        edge_schema(),
        edge_batches(&edges, 1),
        2,
    )
    .expect("pagerank job");
    assert_eq!(surfers(&net_ranks(&out)), expected);
}

#[test]
fn zero_rounds_leave_every_node_its_share() {
    let out = run(
        PageRank::new("src", "dst").iterations(0),
        edge_schema(),
        edge_batches(&[(1, 2), (2, 3), (4, 2)], 2),
        2,
    )
    .expect("pagerank job");
    let got = net_ranks(&out);
    assert_eq!(got.len(), 4);
    assert!(got.values().all(|&(s, r)| s == SCALE && r == 0.25));
}

#[test]
fn nodes_keep_their_type_and_columns_are_configurable() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("from", DataType::Int32, false),
        Field::new("to", DataType::Int32, false),
    ]));
    let op = PageRank::new("from", "to");
    let out_schema = op
        .output_schema(std::slice::from_ref(&schema))
        .expect("schema");
    assert_eq!(out_schema.field(0).data_type(), &DataType::Int32);
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int32Array::from(vec![1, 2, 3])),
            Arc::new(Int32Array::from(vec![2, 3, 1])),
        ],
    )
    .expect("batch");
    let out = run(op, schema, vec![batch], 2).expect("pagerank job");
    assert!(
        out.iter()
            .all(|b| b.column(0).data_type() == &DataType::Int32)
    );
    assert_eq!(net_ranks(&out).len(), 3);
    // Two integer types: the nodes are Int64.
    let mixed = Arc::new(Schema::new(vec![
        Field::new("src", DataType::Int32, false),
        Field::new("dst", DataType::UInt16, false),
    ]));
    let out_schema = PageRank::new("src", "dst")
        .output_schema(std::slice::from_ref(&mixed))
        .expect("schema");
    assert_eq!(out_schema.field(0).data_type(), &DataType::Int64);
    let batch = RecordBatch::try_new(
        mixed.clone(),
        vec![
            Arc::new(Int32Array::from(vec![1, 2])),
            Arc::new(UInt16Array::from(vec![2, 1])),
        ],
    )
    .expect("batch");
    let got = net_ranks(&run(PageRank::new("src", "dst"), mixed, vec![batch], 1).expect("job"));
    assert_eq!(got[&1].1, 0.5);
}

#[test]
fn bad_parameters_and_columns_are_plan_errors() {
    let schema = edge_schema();
    for damping in [-0.1, 1.5, f64::NAN] {
        let err = PageRank::new("src", "dst")
            .damping(damping)
            .output_schema(std::slice::from_ref(&schema))
            .expect_err("a bad damping");
        assert!(err.to_string().contains("damping"), "{err}");
    }
    let err = PageRank::new("src", "nope")
        .output_schema(std::slice::from_ref(&schema))
        .expect_err("no such column");
    assert!(err.to_string().contains("nope"), "{err}");
    let text = Arc::new(Schema::new(vec![
        Field::new("src", DataType::Int64, false),
        Field::new("dst", DataType::Utf8, false),
    ]));
    let err = PageRank::new("src", "dst")
        .output_schema(std::slice::from_ref(&text))
        .expect_err("text node ids");
    assert!(err.to_string().contains("not an integer"), "{err}");
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
    let err = run(PageRank::new("src", "dst"), edge_schema(), vec![batch], 2)
        .expect_err("a negative node id");
    let message = err.to_string();
    assert!(
        message.contains("-7") && message.contains("'dst'") && message.contains("pagerank"),
        "{message}"
    );
    // A null is as bad.
    let nullable = Arc::new(Schema::new(vec![
        Field::new("src", DataType::Int64, true),
        Field::new("dst", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        nullable.clone(),
        vec![
            Arc::new(Int64Array::from(vec![Some(1), None])),
            Arc::new(Int64Array::from(vec![Some(2), Some(1)])),
        ],
    )
    .expect("batch");
    let err = run(PageRank::new("src", "dst"), nullable, vec![batch], 1).expect_err("a null id");
    assert!(err.to_string().contains("'src'"), "{err}");
}
