//! Incremental relational operators on differential dataflow: `distinct`, a keyed `reduce`
//! (sum, min, max) and an equi-`join` of two collections.
//!
//! Each reads Arrow batches as a collection: an insert-only stream is a collection that only
//! grows, and a *change stream* (one with an Int64 `diff` column, as these operators emit) is
//! a collection that changes: a row with diff `-1` leaves it. Each emits a change stream of
//! its result. Rows travel in Arrow's row format, so any column types work, and every
//! operator partitions its input by key itself (through differential's arrangements).
//!
//! A join of an event stream with a change stream is a stream–table join on a changing
//! table: each event is joined with the table's rows of its key as they are, and when a table
//! row changes later, the results built on it are retracted (`diff = -1`) and rebuilt.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::row::RowConverter;
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    DataStream, DataflowOperator, Error, Failures, Result, WorkerContext, column_indices,
};

use crate::aggregate::{Agg, AggFn};
use crate::incremental::{DIFF, batches, diff_column, one_stream, single, updates};
use crate::join::{joined_fields, key_columns};
use crate::keys::{key_converter, key_rows};

/// Columns of a batch to and from Arrow's row format.
pub(crate) struct Rows {
    indices: Vec<usize>,
    converter: RowConverter,
    what: String,
}

impl Rows {
    pub(crate) fn new(schema: &SchemaRef, indices: Vec<usize>, what: &str) -> Result<Self> {
        Ok(Rows {
            converter: key_converter(schema, &indices, what)?,
            indices,
            what: what.to_owned(),
        })
    }

    /// Each row of `batch`'s columns, encoded.
    pub(crate) fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let rows = key_rows(&self.converter, batch, &self.indices, &self.what)?;
        Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
    }

    /// The columns of encoded rows.
    pub(crate) fn decode<'a>(&self, rows: impl Iterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        self.converter
            .convert_rows(rows.map(|r| parser.parse(r)))
            .map_err(|e| Error::arrow(&self.what, e))
    }
}

/// Every column but a change stream's `diff`.
fn data_columns(schema: &SchemaRef) -> Vec<usize> {
    let diff = diff_column(schema);
    (0..schema.fields().len())
        .filter(|i| Some(*i) != diff)
        .collect()
}

/// `fields`, then `diff`.
pub(crate) fn with_diff(mut fields: Vec<Field>) -> SchemaRef {
    fields.push(Field::new(DIFF, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// A batch of `schema` from `columns` and the diffs.
pub(crate) fn change_batch(
    schema: &SchemaRef,
    mut columns: Vec<ArrayRef>,
    diffs: Vec<i64>,
    what: &str,
) -> Result<RecordBatch> {
    columns.push(Arc::new(Int64Array::from(diffs)));
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| Error::arrow(what, e))
}

/// The distinct rows of the collection (of `columns`, or of every column but `diff` when
/// empty), kept up to date: a row enters the result when its multiplicity becomes positive
/// and leaves it when it drops to zero.
///
/// Output, as a change stream: the columns, `diff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncrementalDistinct {
    /// The columns compared; empty: all of them.
    pub columns: Vec<String>,
}

impl IncrementalDistinct {
    fn indices(&self, input: &SchemaRef) -> Result<Vec<usize>> {
        if self.columns.is_empty() {
            Ok(data_columns(input))
        } else {
            column_indices(input, &self.columns, "incremental distinct")
        }
    }
}

impl DataflowOperator for IncrementalDistinct {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let input = single(inputs)?;
        let fields = self
            .indices(input)?
            .into_iter()
            .map(|i| input.field(i).clone())
            .collect();
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
        let indices = self.indices(input_schema)?;
        let encode = Rows::new(input_schema, indices.clone(), "distinct rows")?;
        let decode = Rows::new(input_schema, indices, "distinct rows")?;
        let schema = self.output_schema(schemas)?;
        let rows = updates(
            one_stream(inputs)?,
            "distinct input",
            diff_column(input_schema),
            failures.clone(),
            move |batch| encode.encode(batch),
        );
        Ok(batches(
            rows.distinct().inner,
            "distinct",
            failures,
            move |records: Vec<Vec<u8>>, diffs| {
                let columns = decode.decode(records.iter().map(Vec::as_slice))?;
                change_batch(&schema, columns, diffs, "distinct output")
            },
        ))
    }
}

/// An aggregate per key (sum of an integer column, or min or max of any ordered column), kept
/// up to date with differential's `reduce`: when a key's value changes, the old value leaves
/// the result and the new one enters it. Null values are ignored.
///
/// Output, as a change stream: the key columns, the aggregate (named as the [`Agg`] says),
/// `diff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncrementalReduce {
    /// The key columns.
    pub keys: Vec<String>,
    /// The aggregate: [`Agg::sum`], [`Agg::min`] or [`Agg::max`].
    pub agg: Agg,
}

impl IncrementalReduce {
    /// (key indices, value index, value field) of `input`.
    fn resolve(&self, input: &SchemaRef) -> Result<(Vec<usize>, usize, Field)> {
        if self.keys.is_empty() {
            return Err(Error::Plan(
                "an incremental reduce needs at least one key column".into(),
            ));
        }
        let keys = column_indices(input, &self.keys, "incremental reduce key")?;
        let column = self.agg.column.clone().ok_or_else(|| {
            Error::Plan("incremental reduce: a count has no column; use incremental_count".into())
        })?;
        let value = column_indices(input, std::slice::from_ref(&column), "incremental reduce")?[0];
        let data_type = input.field(value).data_type();
        let field = match self.agg.func {
            AggFn::Sum if data_type.is_integer() => {
                Field::new(&self.agg.output, DataType::Int64, false)
            }
            AggFn::Sum => {
                return Err(Error::Plan(format!(
                    "incremental reduce: sum needs an integer column, and '{column}' is {data_type}"
                )));
            }
            AggFn::Min | AggFn::Max => Field::new(&self.agg.output, data_type.clone(), false),
            other => {
                return Err(Error::Plan(format!(
                    "incremental reduce computes sum, min and max, not {other:?}"
                )));
            }
        };
        Ok((keys, value, field))
    }
}

impl DataflowOperator for IncrementalReduce {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let input = single(inputs)?;
        let (keys, _, value) = self.resolve(input)?;
        let mut fields: Vec<Field> = keys.iter().map(|&i| input.field(i).clone()).collect();
        fields.push(value);
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
        let (keys, value, _) = self.resolve(input_schema)?;
        let schema = self.output_schema(schemas)?;
        let encode_keys = Rows::new(input_schema, keys.clone(), "reduce keys")?;
        let decode_keys = Rows::new(input_schema, keys, "reduce keys")?;
        let encode_values = Rows::new(input_schema, vec![value], "reduce values")?;
        let decode_values = Rows::new(input_schema, vec![value], "reduce values")?;
        let sum = self.agg.func == AggFn::Sum;
        let max = self.agg.func == AggFn::Max;
        // (key, value) pairs; a sum carries the value as an i64, min and max its encoded row,
        // whose byte order is the value order.
        let pairs = updates(
            one_stream(inputs)?,
            "reduce input",
            diff_column(input_schema),
            failures.clone(),
            move |batch| {
                let keys = encode_keys.encode(batch)?;
                let valid = batch.column(value).logical_nulls();
                let values: Vec<Vec<u8>> = if sum {
                    let ints = cast(batch.column(value), &DataType::Int64)
                        .map_err(|e| Error::arrow("reduce values", e))?;
                    let ints = ints.as_primitive::<Int64Type>();
                    ints.values()
                        .iter()
                        .map(|v| v.to_le_bytes().to_vec())
                        .collect()
                } else {
                    encode_values.encode(batch)?
                };
                Ok(keys
                    .into_iter()
                    .zip(values)
                    .enumerate()
                    .filter(|(row, _)| valid.as_ref().is_none_or(|n| n.is_valid(*row)))
                    .map(|(_, pair)| pair)
                    .collect::<Vec<(Vec<u8>, Vec<u8>)>>())
            },
        );
        let reduced = pairs.reduce(move |_key, values, out| {
            // `values` are sorted, with positive multiplicities.
            if sum {
                let total = values
                    .iter()
                    .map(|(v, n)| {
                        let bytes: [u8; 8] = v.as_slice().try_into().unwrap_or([0; 8]);
                        i64::from_le_bytes(bytes).wrapping_mul(*n as i64)
                    })
                    .fold(0i64, i64::wrapping_add);
                out.push((total.to_le_bytes().to_vec(), 1));
            } else if let Some((v, _)) = if max { values.last() } else { values.first() } {
                out.push(((*v).clone(), 1));
            }
        });
        Ok(batches(
            reduced.inner,
            "reduce",
            failures,
            move |records: Vec<(Vec<u8>, Vec<u8>)>, diffs| {
                let mut columns = decode_keys.decode(records.iter().map(|(k, _)| k.as_slice()))?;
                if sum {
                    columns.push(Arc::new(Int64Array::from_iter_values(records.iter().map(
                        |(_, v)| i64::from_le_bytes(v.as_slice().try_into().unwrap_or([0; 8])),
                    ))));
                } else {
                    columns
                        .extend(decode_values.decode(records.iter().map(|(_, v)| v.as_slice()))?);
                }
                change_batch(&schema, columns, diffs, "reduce output")
            },
        ))
    }
}

/// An inner equi-join of two collections, kept up to date with differential's `join`: each
/// pair of rows with equal keys is in the result with the product of their multiplicities.
/// With a change stream on one side, it is a stream–table join on a changing table.
///
/// Output, as a change stream: the left columns, then the right ones (renamed `right_<name>`
/// where a name is taken), without the inputs' `diff` columns, then `diff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncrementalJoin {
    /// Key columns of the left input.
    pub left_keys: Vec<String>,
    /// Key columns of the right input, matched in order with the left ones.
    pub right_keys: Vec<String>,
}

/// `schema` without its `diff` column.
fn without_diff(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        data_columns(schema)
            .into_iter()
            .map(|i| schema.field(i).clone())
            .collect::<Vec<_>>(),
    ))
}

impl DataflowOperator for IncrementalJoin {
    fn inputs(&self) -> usize {
        2
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let [left, right] = inputs else {
            return Err(Error::Plan("an incremental join reads two inputs".into()));
        };
        key_columns(left, right, &self.left_keys, &self.right_keys, "join")?;
        Ok(with_diff(joined_fields(
            &without_diff(left),
            &without_diff(right),
            Vec::new(),
        )))
    }

    fn build<'s>(
        &self,
        _ctx: &WorkerContext,
        inputs: Vec<DataStream<'s>>,
        schemas: &[SchemaRef],
        failures: Failures,
    ) -> Result<DataStream<'s>> {
        let schema = self.output_schema(schemas)?;
        let [left_schema, right_schema] = schemas else {
            return Err(Error::Plan("an incremental join reads two inputs".into()));
        };
        let mut streams = inputs.into_iter();
        let (Some(left), Some(right), None) = (streams.next(), streams.next(), streams.next())
        else {
            return Err(Error::Internal(
                "an incremental join got another number of inputs".into(),
            ));
        };
        let (lk, rk) = key_columns(
            left_schema,
            right_schema,
            &self.left_keys,
            &self.right_keys,
            "join",
        )?;
        // Both sides keyed by the left key types, so that equal keys encode alike.
        let side = |schema: &SchemaRef, keys: Vec<usize>, stream: DataStream<'s>, name: &str| {
            let key_rows = Rows::new(schema, keys, "join keys")?;
            let data_rows = Rows::new(schema, data_columns(schema), "join rows")?;
            Ok::<_, Error>(updates(
                stream,
                name,
                diff_column(schema),
                failures.clone(),
                move |batch| {
                    Ok(key_rows
                        .encode(batch)?
                        .into_iter()
                        .zip(data_rows.encode(batch)?)
                        .collect::<Vec<(Vec<u8>, Vec<u8>)>>())
                },
            ))
        };
        let left = side(left_schema, lk, left, "join left")?;
        let right = side(right_schema, rk, right, "join right")?;
        let decode_left = Rows::new(left_schema, data_columns(left_schema), "join rows")?;
        let decode_right = Rows::new(right_schema, data_columns(right_schema), "join rows")?;
        let joined = left.join_map(right, |_key, l, r| (l.clone(), r.clone()));
        Ok(batches(
            joined.inner,
            "join",
            failures,
            move |records: Vec<(Vec<u8>, Vec<u8>)>, diffs| {
                let mut columns = decode_left.decode(records.iter().map(|(l, _)| l.as_slice()))?;
                columns.extend(decode_right.decode(records.iter().map(|(_, r)| r.as_slice()))?);
                change_batch(&schema, columns, diffs, "join output")
            },
        ))
    }
}
