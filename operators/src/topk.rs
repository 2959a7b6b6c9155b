//! `top_k`: the k rows with the greatest (or least) values of a column.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::{
    SortColumn, SortOptions, concat_batches, lexsort_to_indices, take_record_batch,
};
use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    Collector, Descriptor, Error, Operator, OperatorFactory, Result, WorkerContext, column_indices,
};

/// Keeps the `k` rows with the greatest values of `by` (least when `descending` is false).
/// Ties are broken by the other columns in ascending order, so the result does not depend on
/// the order rows arrive in. Holds at most `k` rows plus one input batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    /// How many rows.
    pub k: usize,
    /// The column ranked.
    pub by: String,
    /// Greatest first (the default) or least first.
    pub descending: bool,
}

impl TopK {
    /// The `k` rows with the greatest `by`.
    pub fn new(k: usize, by: impl Into<String>) -> Self {
        TopK {
            k,
            by: by.into(),
            descending: true,
        }
    }

    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "top_k",
            serde_json::json!({ "k": self.k, "by": self.by, "descending": self.descending }),
        )
    }
}

impl OperatorFactory for TopK {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        column_indices(input, std::slice::from_ref(&self.by), "top_k")?;
        if self.k == 0 {
            return Err(Error::Plan("top_k: k must be at least 1".into()));
        }
        Ok(Arc::clone(input))
    }

    fn create(&self, _ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let by = column_indices(input, std::slice::from_ref(&self.by), "top_k")?[0];
        Ok(Box::new(TopKInstance {
            spec: self.clone(),
            by,
            schema: Arc::clone(input),
            kept: None,
        }))
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

struct TopKInstance {
    spec: TopK,
    by: usize,
    schema: SchemaRef,
    kept: Option<RecordBatch>,
}

impl TopKInstance {
    fn rank(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let mut columns = vec![SortColumn {
            values: Arc::clone(batch.column(self.by)),
            options: Some(SortOptions {
                descending: self.spec.descending,
                nulls_first: false,
            }),
        }];
        for (i, column) in batch.columns().iter().enumerate() {
            let sortable = column.data_type().is_primitive()
                || matches!(
                    column.data_type(),
                    arrow::datatypes::DataType::Utf8 | arrow::datatypes::DataType::Boolean
                );
            if i != self.by && sortable {
                columns.push(SortColumn {
                    values: Arc::clone(column),
                    options: Some(SortOptions::default()),
                });
            }
        }
        let indices = lexsort_to_indices(&columns, Some(self.spec.k))
            .map_err(|e| Error::arrow("top_k", e))?;
        take_record_batch(batch, &indices).map_err(|e| Error::arrow("top_k", e))
    }
}

impl Operator for TopKInstance {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut Collector) -> Result<()> {
        let merged = match self.kept.take() {
            Some(kept) => concat_batches(&self.schema, [&kept, &batch])
                .map_err(|e| Error::arrow("top_k", e))?,
            None => batch,
        };
        self.kept = Some(self.rank(&merged)?);
        Ok(())
    }

    fn finish(&mut self, out: &mut Collector) -> Result<()> {
        if let Some(kept) = self.kept.take() {
            out.emit(kept);
        }
        Ok(())
    }
}
