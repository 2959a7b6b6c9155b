//! Incremental operators on differential dataflow.
//!
//! These operators keep their results up to date as their input changes, iterating to a
//! fixed point where the computation needs it. They build their own piece of the job's
//! timely dataflow ([`DataflowOperator`]) and emit a *change stream*: every output row with a
//! `diff` column, `+1` when the row enters the result and `-1` when it leaves. Summing the
//! diffs of a row over the whole stream gives its multiplicity in the final result.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use differential_dataflow::operators::Iterate;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    Batch, DataStream, DataflowOperator, Error, Failures, Result, Time, WorkerContext,
    column_indices,
};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::vec::Filter;

use crate::relational::{Rows, change_batch, with_diff};

type Edge = (u64, u64);
type Update<D> = (D, Time, isize);

/// The column of a change stream that holds each row's multiplicity.
pub(crate) const DIFF: &str = "diff";

/// The index of `schema`'s `diff` column, if it is a change stream (an Int64 `diff`).
pub(crate) fn diff_column(schema: &SchemaRef) -> Option<usize> {
    schema
        .index_of(DIFF)
        .ok()
        .filter(|&i| schema.field(i).data_type() == &DataType::Int64)
}

/// The records of each input batch as differential updates at the batch's time: `+1` each,
/// or, when the input is a change stream (`diff` is its `diff` column), that row's diff, so
/// that a change stream in is a changing collection. A batch that cannot be read stops the
/// job through `failures`.
pub(crate) fn updates<'s, D>(
    input: DataStream<'s>,
    name: &str,
    diff: Option<usize>,
    failures: Failures,
    records: impl Fn(&RecordBatch) -> Result<Vec<D>> + 'static,
) -> VecCollection<'s, Time, D>
where
    D: differential_dataflow::Data,
{
    let what = name.to_owned();
    input
        .unary::<CapacityContainerBuilder<Vec<Update<D>>>, _, _, _>(Pipeline, name, move |_, _| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    let mut session = output.session(&cap);
                    for container in data {
                        for (_, batch) in container.drain(..) {
                            let diffs = diff.map(|i| {
                                arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(
                                    batch.0.column(i),
                                )
                                .clone()
                            });
                            match (records(&batch.0), diffs) {
                                (Ok(records), None) => {
                                    for record in records {
                                        session.give((record, time, 1));
                                    }
                                }
                                (Ok(records), Some(diffs)) if diffs.null_count() == 0 => {
                                    for (record, d) in records.into_iter().zip(diffs.values()) {
                                        session.give((record, time, *d as isize));
                                    }
                                }
                                (Ok(_), Some(_)) => failures.fail(Error::Input(format!(
                                    "{what}: a change stream row has a null diff"
                                ))),
                                (Err(e), _) => failures.fail(e),
                            }
                        }
                    }
                });
            }
        })
        .as_collection()
}

/// Differential changes back to Arrow: `batch` turns records and their diffs into a batch.
/// A batch that cannot be built stops the job through `failures`.
pub(crate) fn batches<'s, D>(
    changes: Stream<'s, Time, Vec<Update<D>>>,
    name: &str,
    failures: Failures,
    batch: impl Fn(Vec<D>, Vec<i64>) -> Result<RecordBatch> + 'static,
) -> DataStream<'s>
where
    D: Clone + 'static,
{
    changes.unary::<CapacityContainerBuilder<Vec<(u32, Batch)>>, _, _, _>(
        Pipeline,
        name,
        move |_, _| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let (mut records, mut diffs) = (Vec::new(), Vec::new());
                    for container in data {
                        for (record, _time, diff) in container.drain(..) {
                            records.push(record);
                            diffs.push(diff as i64);
                        }
                    }
                    if records.is_empty() {
                        return;
                    }
                    match batch(records, diffs) {
                        Ok(b) => output.session(&cap).give((0u32, Batch(b))),
                        Err(e) => failures.fail(e),
                    }
                });
            }
        },
    )
}

/// Connected components of a graph given as an edge stream (`src`, `dst`: integer node ids),
/// kept up to date as edges arrive, by label propagation to a fixed point with differential
/// dataflow's `iterate`. Each node's component is the least node id it is connected to.
///
/// Output, as a change stream: `node`, `component`, `diff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectedComponents {
    /// The source-node column.
    pub src: String,
    /// The destination-node column.
    pub dst: String,
}

impl ConnectedComponents {
    /// Components of the graph with edges from `src` to `dst` (taken as undirected).
    pub fn new(src: impl Into<String>, dst: impl Into<String>) -> Self {
        ConnectedComponents {
            src: src.into(),
            dst: dst.into(),
        }
    }

    fn columns(&self, input: &SchemaRef) -> Result<(usize, usize)> {
        node_columns(input, &self.src, &self.dst, "connected components")
    }
}

/// The indices of the edge columns `src` and `dst` of `input`, which must be integers.
fn node_columns(input: &SchemaRef, src: &str, dst: &str, what: &str) -> Result<(usize, usize)> {
    let idx = column_indices(input, &[src.to_owned(), dst.to_owned()], what)?;
    for &i in &idx {
        let field = input.field(i);
        if !field.data_type().is_integer() {
            return Err(Error::Plan(format!(
                "{what}: node column '{}' is {}, not an integer",
                field.name(),
                field.data_type()
            )));
        }
    }
    Ok((idx[0], idx[1]))
}

fn output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("node", DataType::Int64, false),
        Field::new("component", DataType::Int64, false),
        Field::new("diff", DataType::Int64, false),
    ]))
}

/// The node ids of `column`, which must all be present and non-negative (`what`: the
/// operator, for error messages).
fn node_ids(batch: &RecordBatch, column: usize, what: &str) -> Result<Vec<u64>> {
    let name = batch.schema().field(column).name().clone();
    let ids = cast(batch.column(column), &DataType::Int64)
        .map_err(|e| Error::arrow(format!("node ids of '{name}'"), e))?;
    let ids = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&ids);
    if ids.null_count() > 0 {
        return Err(Error::Input(format!(
            "{what}: column '{name}' has a null (or out of range) node id"
        )));
    }
    ids.values()
        .iter()
        .map(|&id| {
            u64::try_from(id)
                .map_err(|_| Error::Input(format!("{what}: negative node id {id} in '{name}'")))
        })
        .collect()
}

impl DataflowOperator for ConnectedComponents {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        self.columns(single(inputs)?)?;
        Ok(output_schema())
    }

    fn build<'s>(
        &self,
        _ctx: &WorkerContext,
        inputs: Vec<DataStream<'s>>,
        schemas: &[SchemaRef],
        failures: Failures,
    ) -> Result<DataStream<'s>> {
        let input_schema = single(schemas)?;
        let input = one_stream(inputs)?;
        let (src, dst) = self.columns(input_schema)?;
        // One update per edge and direction; a change stream of edges adds and removes them.
        let diff = diff_column(input_schema);
        let edges = updates(input, "edges", diff, failures.clone(), move |batch| {
            let what = "connected components";
            let (a, b) = (node_ids(batch, src, what)?, node_ids(batch, dst, what)?);
            Ok(a.into_iter()
                .zip(b)
                .flat_map(|(a, b)| [(a, b), (b, a)])
                .collect::<Vec<Edge>>())
        });
        // Every node starts as its own label; labels flow along edges; each node keeps the least.
        let nodes = edges.clone().map(|(a, _)| (a, a));
        let labels = nodes.clone().iterate(|scope, inner| {
            let edges = edges.enter(scope);
            let nodes = nodes.enter(scope);
            inner
                .join_map(edges, |_node, label, next| (*next, *label))
                .concat(nodes)
                .reduce(|_node, labels, out| out.push((*labels[0].0, 1)))
        });
        let schema = output_schema();
        Ok(batches(
            labels.inner,
            "components",
            failures,
            move |records: Vec<Edge>, diffs| {
                let (nodes, components): (Vec<i64>, Vec<i64>) = records
                    .into_iter()
                    .map(|(n, c)| (n as i64, c as i64))
                    .unzip();
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from(nodes)),
                        Arc::new(Int64Array::from(components)),
                        Arc::new(Int64Array::from(diffs)),
                    ],
                )
                .map_err(|e| Error::arrow("connected components output", e))
            },
        ))
    }
}

/// PageRank of a directed graph given as an edge stream (`src`, `dst`: integer node ids),
/// kept up to date as edges arrive or leave, computed with differential dataflow's `iterate`
/// for a fixed number of rounds.
///
/// Differential dataflow needs data it can order and hash, so ranks are counted in whole
/// *surfers*, not floats. With `S` = [`PageRank::SCALE`] and the damping factor rounded to
/// millionths, `d = dm / 1_000_000`:
///
/// - the nodes are the ids found on an edge, as source or destination; `n` is their number;
/// - every node starts with `S` surfers;
/// - in each round, a node `u` with `k` out-edges sends `⌊rank(u) · dm / (1_000_000 · k)⌋`
///   surfers along each of them. Edges are a multiset: an edge given twice counts twice (in
///   `k` and in what it carries), and a self loop sends to its own node;
/// - a *dangling* node (no out-edges) gives its `⌊rank(u) · dm / 1_000_000⌋` surfers to all
///   nodes alike: they are summed into a pool `P`, and every node gets `⌊P / n⌋`;
/// - every node also gets `S - dm` reset surfers (`(1 - d) · S`, exact since `S` is a
///   million);
/// - a node's new rank is the sum of what it gets.
///
/// After [`PageRank::iterations`] rounds, a node's rank is `surfers / (S · n)`. Ranks sum to
/// 1 less what rounding down loses: under one surfer per edge, per dangling node and per node
/// in each round, so at most `(edges + 2n) / ((1 - d) · S · n)` in all (under 1e-4 with ten
/// edges a node and `d = 0.85`). Rounds are counted, not run to a fixed point, so the result
/// is the same on any number of workers.
///
/// Inside the loop a node's surfers are its multiplicity in a differential collection, so
/// that summing them is consolidation. The dangling pool and `n` live under a single key: one
/// worker sums the pool and hands each node its part, `n` records a round. As they reach every
/// node, a change to the graph usually changes every rank, and an update costs the rounds
/// over the whole graph (spread over the workers but for the pool).
///
/// Output, as a change stream: `node` (of the input's node type when `src` and `dst` have the
/// same type, else Int64), `rank` (Float64), `surfers` (Int64), `diff`. Every node has a row,
/// one left with no surfers too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageRank {
    /// The source-node column.
    pub src: String,
    /// The destination-node column.
    pub dst: String,
    /// The probability that a surfer follows a link rather than jumping to a random node, in
    /// `0..=1`; rounded to millionths.
    pub damping: f64,
    /// The number of rounds.
    pub iterations: u64,
}

impl PageRank {
    /// The surfers every node starts with, and the denominator of the damping factor.
    pub const SCALE: i64 = 1_000_000;

    /// The same integer PageRank as a plain loop over a map, in one thread: each node's
    /// surfers after `rounds` rounds. It is the reference the operator is checked against
    /// (an independent implementation of the same arithmetic); it suits small graphs.
    pub fn by_loop(edges: &[(i64, i64)], damping: f64, rounds: u64) -> HashMap<i64, i64> {
        let scale = i128::from(Self::SCALE);
        let dm = (damping.clamp(0.0, 1.0) * 1e6).round() as i128;
        let nodes: std::collections::BTreeSet<i64> =
            edges.iter().flat_map(|&(a, b)| [a, b]).collect();
        let mut out: HashMap<i64, Vec<i64>> = HashMap::new();
        for &(a, b) in edges {
            out.entry(a).or_default().push(b);
        }
        let n = (nodes.len() as i128).max(1);
        let mut rank: HashMap<i64, i128> = nodes.iter().map(|&v| (v, scale)).collect();
        for _ in 0..rounds {
            let mut next: HashMap<i64, i128> = nodes.iter().map(|&v| (v, scale - dm)).collect();
            let mut pool = 0;
            for &u in &nodes {
                let r = rank.get(&u).copied().unwrap_or_default();
                match out.get(&u) {
                    Some(targets) => {
                        let share = r * dm / (scale * targets.len() as i128);
                        for t in targets {
                            if let Some(v) = next.get_mut(t) {
                                *v += share;
                            }
                        }
                    }
                    None => pool += r * dm / scale,
                }
            }
            for r in next.values_mut() {
                *r += pool / n;
            }
            rank = next;
        }
        rank.into_iter().map(|(v, r)| (v, r as i64)).collect()
    }
    /// The damping factor unless told otherwise.
    pub const DEFAULT_DAMPING: f64 = 0.85;
    /// The number of rounds unless told otherwise.
    pub const DEFAULT_ITERATIONS: u64 = 20;

    /// PageRank of the graph with edges from `src` to `dst`, with the default damping and
    /// number of rounds.
    pub fn new(src: impl Into<String>, dst: impl Into<String>) -> Self {
        PageRank {
            src: src.into(),
            dst: dst.into(),
            damping: Self::DEFAULT_DAMPING,
            iterations: Self::DEFAULT_ITERATIONS,
        }
    }

    /// With damping factor `damping` (in `0..=1`).
    pub fn damping(mut self, damping: f64) -> Self {
        self.damping = damping;
        self
    }

    /// With `iterations` rounds (0: every node keeps its starting surfers).
    pub fn iterations(mut self, iterations: u64) -> Self {
        self.iterations = iterations;
        self
    }

    /// The damping factor in millionths, the integer the computation uses.
    pub fn damping_millionths(&self) -> Result<i64> {
        if !(0.0..=1.0).contains(&self.damping) {
            return Err(Error::Plan(format!(
                "pagerank: damping {} is not between 0 and 1",
                self.damping
            )));
        }
        Ok((self.damping * Self::SCALE as f64).round() as i64)
    }

    /// The node column's type of the output.
    fn node_type(&self, input: &SchemaRef) -> Result<DataType> {
        let (src, dst) = node_columns(input, &self.src, &self.dst, "pagerank")?;
        let (a, b) = (input.field(src).data_type(), input.field(dst).data_type());
        Ok(if a == b { a.clone() } else { DataType::Int64 })
    }
}

/// What a node with `rank` surfers and `degree` out-edges sends along each of them, with
/// damping `dm` millionths: `⌊rank · dm / (SCALE · degree)⌋`, nothing for a degree that is not
/// positive (an edge retracted more often than it was added).
fn pagerank_share(rank: isize, dm: i64, degree: isize) -> isize {
    if degree <= 0 || rank <= 0 {
        return 0;
    }
    let share = rank as i128 * i128::from(dm) / (i128::from(PageRank::SCALE) * degree as i128);
    isize::try_from(share).unwrap_or(isize::MAX)
}

impl DataflowOperator for PageRank {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let input = single(inputs)?;
        self.damping_millionths()?;
        Ok(Arc::new(Schema::new(vec![
            Field::new("node", self.node_type(input)?, false),
            Field::new("rank", DataType::Float64, false),
            Field::new("surfers", DataType::Int64, false),
            Field::new(DIFF, DataType::Int64, false),
        ])))
    }

    fn build<'s>(
        &self,
        _ctx: &WorkerContext,
        inputs: Vec<DataStream<'s>>,
        schemas: &[SchemaRef],
        failures: Failures,
    ) -> Result<DataStream<'s>> {
        let input_schema = single(schemas)?;
        let schema = self.output_schema(schemas)?;
        let input = one_stream(inputs)?;
        let (src, dst) = node_columns(input_schema, &self.src, &self.dst, "pagerank")?;
        let dm = self.damping_millionths()?;
        let iterations = self.iterations;
        let scale = Self::SCALE;
        let reset = Self::SCALE - dm;

        // Edges as a multiset: an edge given twice has multiplicity 2.
        let edges = updates(
            input,
            "edges",
            diff_column(input_schema),
            failures.clone(),
            move |batch| {
                let (a, b) = (
                    node_ids(batch, src, "pagerank")?,
                    node_ids(batch, dst, "pagerank")?,
                );
                Ok(a.into_iter().zip(b).collect::<Vec<Edge>>())
            },
        );
        let nodes = edges.clone().flat_map(|(a, b)| [a, b]).distinct();
        // Out-degrees, and the nodes with out-edges.
        let degrees = edges.clone().map(|(a, _)| a).count();
        let sources = degrees.clone().map(|(u, _)| u);
        // The number of nodes, under the one key `()`, and each node under it.
        let count = nodes.clone().map(|_| ()).count();
        let units = nodes.clone().map(|v| ((), v));
        let with_count = units
            .clone()
            .join_map(count.clone(), |_, v, n| (*v, *n as i64));
        // Inside the loop a node's surfers are its multiplicity: sums are consolidations.
        let start = nodes.clone().explode(move |v| Some((v, scale as isize)));
        let ranks = if iterations == 0 {
            start
        } else {
            start.iterate(|scope, ranks| {
                let edges = edges.enter(scope);
                let degrees = degrees.enter(scope);
                let sources = sources.enter(scope);
                let nodes = nodes.clone().enter(scope);
                let count = count.enter(scope);
                let units = units.enter(scope);
                // Along each out-edge, a node's share of its damped surfers.
                let shares = degrees
                    .semijoin(ranks.clone())
                    .threshold(move |(_, k), r| pagerank_share(*r, dm, *k))
                    .map(|(u, _)| u);
                let pushed = edges.semijoin(shares).map(|(_, v)| v);
                // The damped surfers of the dangling nodes, pooled and shared by all nodes.
                let pooled = ranks
                    .map(|v| (v, ()))
                    .antijoin(sources)
                    .threshold(move |_, r| pagerank_share(*r, dm, 1))
                    .map(|_| ((), ()))
                    .join_map(count, |_, _, n| *n)
                    .threshold(|n, pool| if *n > 0 { pool / n } else { 0 })
                    .map(|_| ((), ()))
                    .join_map(units, |_, _, v| *v);
                let next = nodes
                    .explode(move |v| Some((v, reset as isize)))
                    .concat(pushed)
                    .concat(pooled)
                    .consolidate();
                // Round `i` makes the ranks after `i + 1` rounds: keep `iterations` of them.
                next.inner
                    .filter(move |(_, time, _)| time.inner < iterations)
                    .as_collection()
            })
        };
        // Back to data: each node's surfers, counted once more so that a node left with none
        // still has its row.
        let ranked = ranks
            .concat(nodes)
            .count()
            .join_map(with_count, |v, r, n| (*v, *r as i64 - 1, *n));
        let node_type = schema.field(0).data_type().clone();
        Ok(batches(
            ranked.inner,
            "ranks",
            failures,
            move |records: Vec<(u64, i64, i64)>, diffs| {
                let mut nodes = Vec::with_capacity(records.len());
                let mut ranks = Vec::with_capacity(records.len());
                let mut surfers = Vec::with_capacity(records.len());
                for (v, r, n) in records {
                    nodes.push(v as i64);
                    ranks.push(r as f64 / (scale as f64 * n.max(1) as f64));
                    surfers.push(r);
                }
                let nodes: ArrayRef = Arc::new(Int64Array::from(nodes));
                let nodes = cast(&nodes, &node_type)
                    .map_err(|e| Error::arrow("pagerank output nodes", e))?;
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        nodes,
                        Arc::new(Float64Array::from(ranks)),
                        Arc::new(Int64Array::from(surfers)),
                        Arc::new(Int64Array::from(diffs)),
                    ],
                )
                .map_err(|e| Error::arrow("pagerank output", e))
            },
        ))
    }
}

/// The number of rows per key, kept up to date with differential dataflow's `count` as rows
/// arrive. Keys may be any columns of any Arrow type (they travel in Arrow's row format).
///
/// Output, as a change stream: the key columns, `count`, `diff`. When a key's count goes from
/// 2 to 3, the stream holds `(key, 2, -1)` and `(key, 3, +1)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncrementalCount {
    /// The key columns.
    pub keys: Vec<String>,
}

impl IncrementalCount {
    fn key_indices(&self, input: &SchemaRef) -> Result<Vec<usize>> {
        if self.keys.is_empty() {
            return Err(Error::Plan(
                "an incremental count needs at least one key column".into(),
            ));
        }
        column_indices(input, &self.keys, "incremental count")
    }
}

impl DataflowOperator for IncrementalCount {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let input = single(inputs)?;
        let mut fields: Vec<Field> = self
            .key_indices(input)?
            .into_iter()
            .map(|i| input.field(i).clone())
            .collect();
        fields.push(Field::new("count", DataType::Int64, false));
        Ok(with_diff(fields))
    }

    fn build<'s>(
        &self,
        _ctx: &WorkerContext,
        inputs: Vec<DataStream<'s>>,
        schemas: &[SchemaRef],
        failures: Failures,
    ) -> Result<DataStream<'s>> {
        let input_schema = single(schemas)?;
        let indices = self.key_indices(input_schema)?;
        // Keys in Arrow's row format, so any column types can be counted.
        let encode = Rows::new(input_schema, indices.clone(), "incremental count keys")?;
        let decode = Rows::new(input_schema, indices, "incremental count keys")?;
        let schema = self.output_schema(schemas)?;
        let keys = updates(
            one_stream(inputs)?,
            "keys",
            diff_column(input_schema),
            failures.clone(),
            move |batch| encode.encode(batch),
        );
        Ok(batches(
            keys.count().inner,
            "counts",
            failures,
            move |records: Vec<(Vec<u8>, isize)>, diffs| {
                let mut columns = decode.decode(records.iter().map(|(key, _)| key.as_slice()))?;
                columns.push(Arc::new(Int64Array::from_iter_values(
                    records.iter().map(|(_, n)| *n as i64),
                )));
                change_batch(&schema, columns, diffs, "incremental count output")
            },
        ))
    }
}

/// The one schema of a single-input operator.
pub(crate) fn single(schemas: &[SchemaRef]) -> Result<&SchemaRef> {
    match schemas {
        [one] => Ok(one),
        _ => Err(Error::Plan(format!(
            "this operator reads one input, not {}",
            schemas.len()
        ))),
    }
}

/// The one stream of a single-input operator.
pub(crate) fn one_stream(mut inputs: Vec<DataStream<'_>>) -> Result<DataStream<'_>> {
    match (inputs.pop(), inputs.is_empty()) {
        (Some(one), true) => Ok(one),
        _ => Err(Error::Internal(
            "a single-input operator got another number of inputs".into(),
        )),
    }
}
