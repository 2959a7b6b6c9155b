//! Column selection and filters on simple comparisons, the built-ins of job specs.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Datum, RecordBatch, Scalar};
use arrow::compute::kernels::cmp;
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    Collector, Descriptor, Error, Operator, OperatorFactory, Result, WorkerContext, column_indices,
};

/// Keeps the named columns, in the given order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Select {
    /// The columns to keep.
    pub columns: Vec<String>,
}

impl Select {
    /// Keeps `columns`.
    pub fn new(columns: Vec<String>) -> Self {
        Select { columns }
    }

    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new("select", serde_json::json!({ "columns": self.columns }))
    }
}

impl OperatorFactory for Select {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let indices = column_indices(input, &self.columns, "select")?;
        Ok(Arc::new(
            input
                .project(&indices)
                .map_err(|e| Error::arrow("select", e))?,
        ))
    }

    fn create(&self, _ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(SelectInstance {
            indices: column_indices(input, &self.columns, "select")?,
        }))
    }
}

struct SelectInstance {
    indices: Vec<usize>,
}

impl Operator for SelectInstance {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        out.emit(
            batch
                .project(&self.indices)
                .map_err(|e| Error::arrow("select", e))?,
        );
        Ok(())
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    /// `==`
    #[serde(rename = "==")]
    Eq,
    /// `!=`
    #[serde(rename = "!=")]
    Ne,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
}

/// Keeps rows where `column <op> value`. Rows where the column is null are dropped, as in SQL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compare {
    /// The column compared.
    pub column: String,
    /// The comparison.
    pub op: CmpOp,
    /// The constant: a number, a string or a boolean.
    pub value: serde_json::Value,
}

impl Compare {
    /// Keeps rows where `column op value`.
    pub fn new(column: impl Into<String>, op: CmpOp, value: serde_json::Value) -> Self {
        Compare {
            column: column.into(),
            op,
            value,
        }
    }

    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "where",
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The constant as a one-element array of the column's type.
    fn scalar(&self, data_type: &DataType) -> Result<Scalar<ArrayRef>> {
        let literal: ArrayRef = match &self.value {
            serde_json::Value::Number(n) if n.is_i64() => {
                Arc::new(arrow::array::Int64Array::from(vec![
                    n.as_i64().unwrap_or_default(),
                ]))
            }
            serde_json::Value::Number(n) => Arc::new(arrow::array::Float64Array::from(vec![
                n.as_f64().unwrap_or(f64::NAN),
            ])),
            serde_json::Value::String(s) => {
                Arc::new(arrow::array::StringArray::from(vec![s.as_str()]))
            }
            serde_json::Value::Bool(b) => Arc::new(BooleanArray::from(vec![*b])),
            other => {
                return Err(Error::Plan(format!(
                    "where '{}': cannot compare with {other}: use a number, a string or a boolean",
                    self.column
                )));
            }
        };
        let cast_to = if literal.data_type().is_numeric() && data_type.is_numeric() {
            // Compare numbers as the column's type when the constant fits it, else as Float64.
            if literal.data_type() == &DataType::Float64 && data_type.is_integer() {
                DataType::Float64
            } else {
                data_type.clone()
            }
        } else {
            data_type.clone()
        };
        let value = cast(&literal, &cast_to).map_err(|e| {
            Error::Plan(format!(
                "where '{}': cannot compare a {data_type} column with {}: {e}",
                self.column, self.value
            ))
        })?;
        if value.null_count() > 0 {
            return Err(Error::Plan(format!(
                "where '{}': {} is not a valid {data_type}",
                self.column, self.value
            )));
        }
        Ok(Scalar::new(value))
    }
}

impl OperatorFactory for Compare {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let index = column_indices(input, std::slice::from_ref(&self.column), "where")?[0];
        self.scalar(input.field(index).data_type())?;
        Ok(Arc::clone(input))
    }

    fn create(&self, _ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let index = column_indices(input, std::slice::from_ref(&self.column), "where")?[0];
        let data_type = input.field(index).data_type().clone();
        let scalar = self.scalar(&data_type)?;
        Ok(Box::new(CompareInstance {
            spec: self.clone(),
            index,
            scalar,
            widen: data_type.is_integer() && scalar_type_is_float(&self.value),
        }))
    }
}

fn scalar_type_is_float(value: &serde_json::Value) -> bool {
    matches!(value, serde_json::Value::Number(n) if !n.is_i64())
}

struct CompareInstance {
    spec: Compare,
    index: usize,
    scalar: Scalar<ArrayRef>,
    widen: bool,
}

impl Operator for CompareInstance {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let context = || format!("where '{}'", self.spec.column);
        let column = batch.column(self.index);
        let column = if self.widen {
            cast(column, &DataType::Float64).map_err(|e| Error::arrow(context(), e))?
        } else {
            Arc::clone(column)
        };
        let left: &dyn Datum = &column;
        let mask = match self.spec.op {
            CmpOp::Eq => cmp::eq(left, &self.scalar),
            CmpOp::Ne => cmp::neq(left, &self.scalar),
            CmpOp::Lt => cmp::lt(left, &self.scalar),
            CmpOp::Le => cmp::lt_eq(left, &self.scalar),
            CmpOp::Gt => cmp::gt(left, &self.scalar),
            CmpOp::Ge => cmp::gt_eq(left, &self.scalar),
        }
        .map_err(|e| Error::arrow(context(), e))?;
        out.emit(filter_record_batch(&batch, &mask).map_err(|e| Error::arrow(context(), e))?);
        Ok(())
    }
}

/// The schema with only `indices`, for callers that need it without an operator.
pub fn project_schema(schema: &Schema, indices: &[usize]) -> Result<SchemaRef> {
    Ok(Arc::new(
        schema
            .project(indices)
            .map_err(|e| Error::arrow("project", e))?,
    ))
}
