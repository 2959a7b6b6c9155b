//! `map_batches`: a user function from batch to batch, the fastest way to write an operator.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use streamrun_engine::{Collector, Error, Operator, OperatorFactory, Result, WorkerContext};

type BatchFn = dyn Fn(RecordBatch) -> std::result::Result<RecordBatch, Box<dyn std::error::Error + Send + Sync>>
    + Send
    + Sync;

/// Applies a function to every batch. Its output schema is found by calling it once on an
/// empty batch of the input schema, so the function must accept empty batches.
#[derive(Clone)]
pub struct MapBatches {
    name: String,
    f: Arc<BatchFn>,
}

impl MapBatches {
    /// Wraps `f` as the operator named `name`.
    pub fn new<F, E>(name: &str, f: F) -> Self
    where
        F: Fn(RecordBatch) -> std::result::Result<RecordBatch, E> + Send + Sync + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        MapBatches {
            name: name.to_owned(),
            f: Arc::new(move |b| f(b).map_err(Into::into)),
        }
    }

    fn call(&self, batch: RecordBatch) -> Result<RecordBatch> {
        (self.f)(batch).map_err(|e| Error::Operator {
            operator: self.name.clone(),
            message: e.to_string(),
        })
    }
}

impl OperatorFactory for MapBatches {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(self
            .call(RecordBatch::new_empty(Arc::clone(input)))?
            .schema())
    }

    fn create(&self, _ctx: &WorkerContext, _input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(self.clone()))
    }
}

impl Operator for MapBatches {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        out.emit(self.call(batch)?);
        Ok(())
    }
}
