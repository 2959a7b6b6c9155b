//! Incremental operators on differential dataflow.
//!
//! These operators keep their results up to date as their input changes, iterating to a
//! fixed point where the computation needs it. They build their own piece of the job's
//! timely dataflow ([`DataflowOperator`]) and emit a *change stream*: every output row with a
//! `diff` column, `+1` when the row enters the result and `-1` when it leaves. Summing the
//! diffs of a row over the whole stream gives its multiplicity in the final result.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use differential_dataflow::AsCollection;
use differential_dataflow::operators::Iterate;
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    Batch, DataStream, DataflowOperator, Error, Result, Time, WorkerContext, column_indices,
};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;

type Edge = (u64, u64);
type Update<D> = (D, Time, isize);

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

fn node_ids(batch: &RecordBatch, column: usize) -> Result<Int64Array> {
    let ids =
        cast(batch.column(column), &DataType::Int64).map_err(|e| Error::arrow("node ids", e))?;
    Ok(arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&ids).clone())
}

impl DataflowOperator for ConnectedComponents {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        self.columns(input)?;
        Ok(output_schema())
    }

    fn build<'s>(
        &self,
        _ctx: &WorkerContext,
        input: DataStream<'s>,
        input_schema: &SchemaRef,
    ) -> Result<DataStream<'s>> {
        let (src, dst) = self.columns(input_schema)?;
        // Arrow batches in, one update per edge (both directions), at the batch's time.
        let edges = input
            .unary::<CapacityContainerBuilder<Vec<Update<Edge>>>, _, _, _>(
                Pipeline,
                "edges",
                move |_, _| {
                    move |input, output| {
                        input.for_each_stamp(|cap, data| {
                            let Some(&time) = cap.least() else { return };
                            let mut session = output.session(&cap);
                            for container in data {
                                for (_, batch) in container.drain(..) {
                                    let (Ok(a), Ok(b)) =
                                        (node_ids(&batch.0, src), node_ids(&batch.0, dst))
                                    else {
                                        continue;
                                    };
                                    for (a, b) in a.values().iter().zip(b.values()) {
                                        let (a, b) = (*a as u64, *b as u64);
                                        session.give(((a, b), time, 1));
                                        session.give(((b, a), time, 1));
                                    }
                                }
                            }
                        });
                    }
                },
            )
            .as_collection();
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
        // Changes back to Arrow batches.
        let schema = output_schema();
        Ok(labels
            .inner
            .unary::<CapacityContainerBuilder<Vec<(u32, Batch)>>, _, _, _>(
                Pipeline,
                "components",
                move |_, _| {
                    move |input, output| {
                        input.for_each_stamp(|cap, data| {
                            let (mut n, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new());
                            for container in data {
                                for ((node, component), _time, diff) in container.drain(..) {
                                    n.push(node as i64);
                                    c.push(component as i64);
                                    d.push(diff as i64);
                                }
                            }
                            if n.is_empty() {
                                return;
                            }
                            let batch = RecordBatch::try_new(
                                Arc::clone(&schema),
                                vec![
                                    Arc::new(Int64Array::from(n)),
                                    Arc::new(Int64Array::from(c)),
                                    Arc::new(Int64Array::from(d)),
                                ],
                            );
                            if let Ok(batch) = batch {
                                output.session(&cap).give((0u32, Batch(batch)));
                            }
                        });
                    }
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
    fn key_fields(&self, input: &SchemaRef) -> Result<(Vec<usize>, Vec<Field>)> {
        if self.keys.is_empty() {
            return Err(Error::Plan(
                "an incremental count needs at least one key column".into(),
            ));
        }
        let idx = column_indices(input, &self.keys, "incremental count")?;
        let fields = idx.iter().map(|&i| input.field(i).clone()).collect();
        Ok((idx, fields))
    }

    fn converter(fields: &[Field]) -> Result<arrow::row::RowConverter> {
        arrow::row::RowConverter::new(
            fields
                .iter()
                .map(|f| arrow::row::SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| Error::arrow("incremental count keys", e))
    }
}

impl DataflowOperator for IncrementalCount {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let (_, mut fields) = self.key_fields(input)?;
        fields.push(Field::new("count", DataType::Int64, false));
        fields.push(Field::new("diff", DataType::Int64, false));
        Ok(Arc::new(Schema::new(fields)))
    }

    fn build<'s>(
        &self,
        _ctx: &WorkerContext,
        input: DataStream<'s>,
        input_schema: &SchemaRef,
    ) -> Result<DataStream<'s>> {
        let (indices, fields) = self.key_fields(input_schema)?;
        let encode = Self::converter(&fields)?;
        let decode = Self::converter(&fields)?;
        let schema = self.output_schema(input_schema)?;
        let keys = input
            .unary::<CapacityContainerBuilder<Vec<Update<Vec<u8>>>>, _, _, _>(
                Pipeline,
                "keys",
                move |_, _| {
                    move |input, output| {
                        input.for_each_stamp(|cap, data| {
                            let Some(&time) = cap.least() else { return };
                            let mut session = output.session(&cap);
                            for container in data {
                                for (_, batch) in container.drain(..) {
                                    let columns: Vec<arrow::array::ArrayRef> = indices
                                        .iter()
                                        .map(|&i| Arc::clone(batch.0.column(i)))
                                        .collect();
                                    let Ok(rows) = encode.convert_columns(&columns) else {
                                        continue;
                                    };
                                    for row in rows.iter() {
                                        session.give((row.as_ref().to_vec(), time, 1));
                                    }
                                }
                            }
                        });
                    }
                },
            )
            .as_collection();
        let counts = keys.count();
        Ok(counts
            .inner
            .unary::<CapacityContainerBuilder<Vec<(u32, Batch)>>, _, _, _>(
                Pipeline,
                "counts",
                move |_, _| {
                    move |input, output| {
                        input.for_each_stamp(|cap, data| {
                            let parser = decode.parser();
                            let (mut keys, mut counts, mut diffs) =
                                (Vec::new(), Vec::new(), Vec::new());
                            for container in data {
                                for ((key, count), _time, diff) in container.drain(..) {
                                    let key: Vec<u8> = key;
                                    keys.push(key);
                                    counts.push(count as i64);
                                    diffs.push(diff as i64);
                                }
                            }
                            if keys.is_empty() {
                                return;
                            }
                            let Ok(mut columns) =
                                decode.convert_rows(keys.iter().map(|k| parser.parse(k)))
                            else {
                                return;
                            };
                            columns.push(Arc::new(Int64Array::from(counts)));
                            columns.push(Arc::new(Int64Array::from(diffs)));
                            if let Ok(batch) = RecordBatch::try_new(Arc::clone(&schema), columns) {
                                output.session(&cap).give((0u32, Batch(batch)));
                            }
                        });
                    }
                },
            ))
    }
}
