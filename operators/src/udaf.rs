//! User-defined aggregates: a Rust type that folds the values of one column per key.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use arrow::row::RowConverter;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_arrow::utils::Item;
use streamrun_engine::{
    Collector, Error, Operator, OperatorFactory, Result, WorkerContext, column_indices,
};

use crate::keys::{key_converter, key_rows};
use crate::typed::{Shape, shape_of};

/// An aggregate function of your own: it folds the values of one column into a state per
/// key, and turns the state into the key's result when the input ends.
pub trait AggregateFunction: Send + Sync + 'static {
    /// The type of the column's values.
    type Input: DeserializeOwned + 'static;
    /// What it keeps per key.
    type State: Default + 'static;
    /// The result per key.
    type Output: Serialize + DeserializeOwned + 'static;

    /// Adds one value to a key's state.
    fn update(&self, state: &mut Self::State, value: Self::Input);

    /// The key's result.
    fn finish(&self, state: &Self::State) -> Self::Output;
}

/// Runs an [`AggregateFunction`] over `column`, per key, writing its result as `output`.
///
/// Output columns: the keys, then `output`. Results come when the input ends.
pub struct UdafAggregate<F: AggregateFunction> {
    keys: Vec<String>,
    column: String,
    output: String,
    function: Arc<F>,
    _types: PhantomData<fn() -> F>,
}

impl<F: AggregateFunction> UdafAggregate<F> {
    /// `function` over `column` per `keys`, written as `output`.
    pub fn new(keys: Vec<String>, column: &str, output: &str, function: F) -> Self {
        UdafAggregate {
            keys,
            column: column.to_owned(),
            output: output.to_owned(),
            function: Arc::new(function),
            _types: PhantomData,
        }
    }

    fn resolve(&self, input: &SchemaRef) -> Result<(Vec<usize>, usize, FieldRef, SchemaRef)> {
        let keys = column_indices(input, &self.keys, "aggregate key")?;
        let column = column_indices(input, std::slice::from_ref(&self.column), "aggregate")?[0];
        let output = match shape_of::<F::Output>(&self.output)? {
            Shape::Plain(field) => field,
            Shape::Struct(_) => {
                return Err(Error::Plan(format!(
                    "aggregate '{}': the result must be a plain value (a number, a string), not a struct",
                    self.output
                )));
            }
        };
        let mut fields: Vec<Field> = keys.iter().map(|&i| input.field(i).clone()).collect();
        fields.push(output.as_ref().clone());
        Ok((keys, column, output, Arc::new(Schema::new(fields))))
    }
}

impl<F: AggregateFunction> OperatorFactory for UdafAggregate<F> {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(self.resolve(input)?.3)
    }

    fn create(&self, _ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let (keys, column, output, schema) = self.resolve(input)?;
        let converter = key_converter(input, &keys, "aggregate")?;
        Ok(Box::new(UdafInstance::<F> {
            name: self.output.clone(),
            function: Arc::clone(&self.function),
            keys,
            column,
            input_field: Arc::new(input.field(column).clone().with_name("item")),
            output_field: Arc::new(output.as_ref().clone().with_name("item")),
            converter,
            schema,
            states: HashMap::new(),
            order: Vec::new(),
        }))
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

struct UdafInstance<F: AggregateFunction> {
    name: String,
    function: Arc<F>,
    keys: Vec<usize>,
    column: usize,
    input_field: FieldRef,
    output_field: FieldRef,
    converter: RowConverter,
    schema: SchemaRef,
    /// Key (Arrow row format) → state.
    states: HashMap<Vec<u8>, F::State>,
    /// Keys in the order first seen, so the output order does not depend on hashing.
    order: Vec<Vec<u8>>,
}

impl<F: AggregateFunction> Operator for UdafInstance<F> {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut Collector) -> Result<()> {
        let keys = key_rows(&self.converter, &batch, &self.keys, "aggregate")?;
        let values: Vec<Item<F::Input>> = serde_arrow::from_arrow(
            std::slice::from_ref(&self.input_field),
            std::slice::from_ref(batch.column(self.column)),
        )
        .map_err(|e| Error::Operator {
            operator: self.name.clone(),
            message: format!("cannot read its column: {e}"),
        })?;
        for (key, Item(value)) in keys.iter().zip(values) {
            let state = match self.states.get_mut(key.as_ref()) {
                Some(state) => state,
                None => {
                    self.order.push(key.as_ref().to_vec());
                    self.states.entry(key.as_ref().to_vec()).or_default()
                }
            };
            self.function.update(state, value);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Collector) -> Result<()> {
        if self.order.is_empty() {
            return Ok(());
        }
        let parser = self.converter.parser();
        let mut columns = self
            .converter
            .convert_rows(self.order.iter().map(|k| parser.parse(k)))
            .map_err(|e| Error::arrow("aggregate keys", e))?;
        let results: Vec<Item<F::Output>> = self
            .order
            .iter()
            .map(|k| Item(self.function.finish(&self.states[k])))
            .collect();
        let result = serde_arrow::to_arrow(std::slice::from_ref(&self.output_field), &results)
            .map_err(|e| Error::Operator {
                operator: self.name.clone(),
                message: format!("cannot write its result: {e}"),
            })?;
        columns.extend(result);
        out.emit(
            RecordBatch::try_new(Arc::clone(&self.schema), columns)
                .map_err(|e| Error::arrow("aggregate output", e))?,
        );
        Ok(())
    }
}
