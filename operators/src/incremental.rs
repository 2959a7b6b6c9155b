//! Incremental operators on differential dataflow.
//!
//! These operators keep their results up to date as their input changes, iterating to a
//! fixed point where the computation needs it. They build their own piece of the job's
//! timely dataflow ([`DataflowOperator`]) and emit a *change stream*: every output row with a
//! `diff` column, `+1` when the row enters the result and `-1` when it leaves. Summing the
//! diffs of a row over the whole stream gives its multiplicity in the final result.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch};
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
        let idx = column_indices(
            input,
            &[self.src.clone(), self.dst.clone()],
            "connected components",
        )?;
        for &i in &idx {
            let field = input.field(i);
            if !field.data_type().is_integer() {
                return Err(Error::Plan(format!(
                    "connected components: node column '{}' is {}, not an integer",
                    field.name(),
                    field.data_type()
                )));
            }
        }
        Ok((idx[0], idx[1]))
    }
}

fn output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("node", DataType::Int64, false),
        Field::new("component", DataType::Int64, false),
        Field::new("diff", DataType::Int64, false),
    ]))
}

/// The node ids of `column`, which must all be present and non-negative.
fn node_ids(batch: &RecordBatch, column: usize) -> Result<Vec<u64>> {
    let name = batch.schema().field(column).name().clone();
    let ids = cast(batch.column(column), &DataType::Int64)
        .map_err(|e| Error::arrow(format!("node ids of '{name}'"), e))?;
    let ids = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&ids);
    if ids.null_count() > 0 {
        return Err(Error::Input(format!(
            "connected components: column '{name}' has a null (or out of range) node id"
        )));
    }
    ids.values()
        .iter()
        .map(|&id| {
            u64::try_from(id).map_err(|_| {
                Error::Input(format!(
                    "connected components: negative node id {id} in '{name}'"
                ))
            })
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
            let (a, b) = (node_ids(batch, src)?, node_ids(batch, dst)?);
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
