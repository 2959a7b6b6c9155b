//! Typed tasks: closures over the user's serde types, with Arrow at the edges.
//!
//! Input batches are decoded into `Vec<I>` with `serde_arrow`, the closure runs per record,
//! and the results are encoded back into one batch. A struct type maps to columns by field
//! name (extra input columns are ignored); a plain type (`String`, `i64`) reads a single-column
//! input and writes one column named after the task.

use std::marker::PhantomData;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_arrow::schema::{SchemaLike, TracingOptions};
use serde_arrow::utils::Item;
use streamrun_engine::{Collector, Error, Operator, OperatorFactory, Result, WorkerContext};

fn tracing_options() -> TracingOptions {
    // Utf8 rather than serde_arrow's default LargeUtf8, so that typed tasks produce the same
    // string type as every source and built-in operator.
    TracingOptions::default()
        .strings_as_large_utf8(false)
        .allow_null_fields(true)
        .enums_without_data_as_strings(true)
}

/// How a Rust type sits in a batch.
#[derive(Clone)]
pub(crate) enum Shape {
    /// A struct: one column per field.
    Struct(Vec<FieldRef>),
    /// A plain value: one column.
    Plain(FieldRef),
}

pub(crate) fn shape_of<T: DeserializeOwned>(column_name: &str) -> Result<Shape> {
    if let Ok(fields) = Vec::<FieldRef>::from_type::<T>(tracing_options()) {
        return Ok(Shape::Struct(fields));
    }
    let fields = Vec::<FieldRef>::from_type::<Item<T>>(tracing_options()).map_err(|e| {
        Error::Plan(format!(
            "type {} cannot be stored in Arrow: {e}",
            std::any::type_name::<T>()
        ))
    })?;
    let field = fields.first().ok_or_else(|| {
        Error::Plan(format!(
            "type {} has no columns",
            std::any::type_name::<T>()
        ))
    })?;
    Ok(Shape::Plain(Arc::new(
        field.as_ref().clone().with_name(column_name),
    )))
}

pub(crate) fn shape_schema(shape: &Shape) -> SchemaRef {
    match shape {
        Shape::Struct(fields) => Arc::new(Schema::new(fields.clone())),
        Shape::Plain(field) => Arc::new(Schema::new(vec![Arc::clone(field)])),
    }
}

/// Checks that `input` can feed records of type `I` and says how to read them.
pub(crate) fn input_shape<I: DeserializeOwned>(task: &str, input: &SchemaRef) -> Result<Shape> {
    match shape_of::<I>("item")? {
        Shape::Struct(fields) => {
            for field in &fields {
                if input.field_with_name(field.name()).is_err() && !field.is_nullable() {
                    return Err(Error::Plan(format!(
                        "task '{task}' reads field '{}' of {}, but the input has no such column (it has: {})",
                        field.name(),
                        std::any::type_name::<I>(),
                        streamrun_engine::column_list(input)
                    )));
                }
            }
            Ok(Shape::Struct(fields))
        }
        Shape::Plain(_) => match input.fields().len() {
            1 => Ok(Shape::Plain(Arc::new(
                input.field(0).clone().with_name("item"),
            ))),
            n => Err(Error::Plan(format!(
                "task '{task}' reads plain values of {}, which needs a single-column input, but the input has {n} columns ({}); use a struct with named fields",
                std::any::type_name::<I>(),
                streamrun_engine::column_list(input)
            ))),
        },
    }
}

pub(crate) fn decode<I: DeserializeOwned>(
    task: &str,
    shape: &Shape,
    batch: &RecordBatch,
) -> Result<Vec<I>> {
    let decoded = match shape {
        Shape::Struct(_) => serde_arrow::from_record_batch::<Vec<I>>(batch),
        Shape::Plain(field) => {
            serde_arrow::from_arrow::<Vec<Item<I>>, _>(std::slice::from_ref(field), batch.columns())
                .map(|items| items.into_iter().map(|Item(v)| v).collect())
        }
    };
    decoded.map_err(|e| Error::Operator {
        operator: task.to_owned(),
        message: format!(
            "cannot read its input as {}: {e}",
            std::any::type_name::<I>()
        ),
    })
}

pub(crate) fn encode<O: Serialize>(
    task: &str,
    shape: &Shape,
    schema: &SchemaRef,
    items: Vec<O>,
) -> Result<RecordBatch> {
    let arrays: std::result::Result<Vec<ArrayRef>, _> = match shape {
        Shape::Struct(fields) => serde_arrow::to_arrow(fields, &items),
        Shape::Plain(field) => {
            // serde_arrow's `Item` wrapper names its one field "item"; the batch's schema
            // carries the task's own name for the column.
            let wrapped: Vec<Item<O>> = items.into_iter().map(Item).collect();
            let item = Arc::new(field.as_ref().clone().with_name("item"));
            serde_arrow::to_arrow(&[item], &wrapped)
        }
    };
    let arrays = arrays.map_err(|e| Error::Operator {
        operator: task.to_owned(),
        message: format!("cannot write its output as Arrow: {e}"),
    })?;
    RecordBatch::try_new(Arc::clone(schema), arrays)
        .map_err(|e| Error::arrow(format!("task '{task}' output"), e))
}

/// What a typed task does with each record.
enum Logic<I, O> {
    Map(Arc<dyn Fn(I) -> O + Send + Sync>),
    FlatMap(Arc<dyn Fn(I) -> Vec<O> + Send + Sync>),
    Filter(Arc<dyn Fn(&I) -> bool + Send + Sync>),
}

impl<I, O> Clone for Logic<I, O> {
    fn clone(&self) -> Self {
        match self {
            Logic::Map(f) => Logic::Map(Arc::clone(f)),
            Logic::FlatMap(f) => Logic::FlatMap(Arc::clone(f)),
            Logic::Filter(f) => Logic::Filter(Arc::clone(f)),
        }
    }
}

/// A typed task: `map`, `flat_map` or `filter` over records of the user's types.
pub struct TypedTask<I, O> {
    name: String,
    logic: Logic<I, O>,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> TypedTask<I, O>
where
    I: DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
{
    /// One output record per input record.
    pub fn map(name: &str, f: impl Fn(I) -> O + Send + Sync + 'static) -> Self {
        TypedTask {
            name: name.to_owned(),
            logic: Logic::Map(Arc::new(f)),
            _types: PhantomData,
        }
    }

    /// Any number of output records per input record.
    pub fn flat_map<R>(name: &str, f: impl Fn(I) -> R + Send + Sync + 'static) -> Self
    where
        R: IntoIterator<Item = O>,
    {
        TypedTask {
            name: name.to_owned(),
            logic: Logic::FlatMap(Arc::new(move |i| f(i).into_iter().collect())),
            _types: PhantomData,
        }
    }
}

impl<I> TypedTask<I, I>
where
    I: DeserializeOwned + Serialize + 'static,
{
    /// Keeps the rows whose record satisfies `f`; the rows keep all their columns.
    pub fn filter(name: &str, f: impl Fn(&I) -> bool + Send + Sync + 'static) -> Self {
        TypedTask {
            name: name.to_owned(),
            logic: Logic::Filter(Arc::new(f)),
            _types: PhantomData,
        }
    }
}

impl<I, O> OperatorFactory for TypedTask<I, O>
where
    I: DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
{
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        input_shape::<I>(&self.name, input)?;
        match self.logic {
            Logic::Filter(_) => Ok(Arc::clone(input)),
            _ => Ok(shape_schema(&shape_of::<O>(&self.name)?)),
        }
    }

    fn create(&self, _ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let input_shape = input_shape::<I>(&self.name, input)?;
        let output_shape = shape_of::<O>(&self.name)?;
        Ok(Box::new(TypedTaskInstance {
            name: self.name.clone(),
            logic: self.logic.clone(),
            output_schema: shape_schema(&output_shape),
            input_shape,
            output_shape,
        }))
    }
}

struct TypedTaskInstance<I, O> {
    name: String,
    logic: Logic<I, O>,
    input_shape: Shape,
    output_shape: Shape,
    output_schema: SchemaRef,
}

impl<I, O> Operator for TypedTaskInstance<I, O>
where
    I: DeserializeOwned + 'static,
    O: Serialize + 'static,
{
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let records: Vec<I> = decode(&self.name, &self.input_shape, &batch)?;
        let items: Vec<O> = match &self.logic {
            Logic::Map(f) => records.into_iter().map(|r| f(r)).collect(),
            Logic::FlatMap(f) => records.into_iter().flat_map(|r| f(r)).collect(),
            Logic::Filter(f) => {
                let mask: BooleanArray = records.iter().map(|r| Some(f(r))).collect();
                let kept = filter_record_batch(&batch, &mask)
                    .map_err(|e| Error::arrow(format!("filter '{}'", self.name), e))?;
                out.emit(kept);
                return Ok(());
            }
        };
        out.emit(encode(
            &self.name,
            &self.output_shape,
            &self.output_schema,
            items,
        )?);
        Ok(())
    }
}

/// The field a plain value of type `T` gets in a batch, named `name`.
pub fn plain_field<T: DeserializeOwned>(name: &str) -> Result<Field> {
    match shape_of::<T>(name)? {
        Shape::Plain(field) => Ok(field.as_ref().clone()),
        Shape::Struct(_) => Err(Error::Plan(format!(
            "{} is a struct, not a plain value",
            std::any::type_name::<T>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::DataType;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Sale {
        item: String,
        qty: i64,
    }

    fn ctx() -> WorkerContext {
        WorkerContext {
            job: "t".into(),
            index: 0,
            workers: 1,
            local_workers: 1,
        }
    }

    fn sales() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("item", DataType::Utf8, false),
            Field::new("qty", DataType::Int64, false),
            Field::new("extra", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(Int64Array::from(vec![1, 5, 10])),
                Arc::new(Int64Array::from(vec![7, 8, 9])),
            ],
        )
        .expect("batch")
    }

    fn run(task: &dyn OperatorFactory, batch: RecordBatch) -> RecordBatch {
        let schema = batch.schema();
        let mut op = task.create(&ctx(), &schema).expect("create");
        let mut out = Collector::new();
        op.process_batch(batch, &mut out).expect("process");
        let batches = out.take();
        arrow::compute::concat_batches(&task.output_schema(&schema).expect("schema"), &batches)
            .expect("concat")
    }

    #[test]
    fn map_over_structs_matches_a_plain_loop() {
        let task = TypedTask::map("double", |s: Sale| Sale {
            item: s.item.to_uppercase(),
            qty: s.qty * 2,
        });
        let out = run(&task, sales());
        let got: Vec<Sale> = serde_arrow::from_record_batch(&out).expect("decode");
        let expected: Vec<Sale> = [("A", 2), ("B", 10), ("C", 20)]
            .into_iter()
            .map(|(i, q)| Sale {
                item: i.into(),
                qty: q,
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn filter_keeps_all_columns() {
        let task = TypedTask::filter("big", |s: &Sale| s.qty >= 5);
        let out = run(&task, sales());
        assert_eq!(out.num_columns(), 3);
        assert_eq!(out.num_rows(), 2);
    }

    #[test]
    fn flat_map_of_plain_values_names_the_column_after_the_task() {
        let task = TypedTask::flat_map("letter", |s: Sale| {
            s.item.chars().map(|c| c.to_string()).collect::<Vec<_>>()
        });
        let schema = task.output_schema(&sales().schema()).expect("schema");
        assert_eq!(schema.field(0).name(), "letter");
        let out = run(&task, sales());
        assert_eq!(out.num_rows(), 3);
    }

    #[test]
    fn a_missing_field_is_named_before_running() {
        #[derive(Serialize, Deserialize)]
        struct Wrong {
            price: f64,
        }
        let task = TypedTask::map("w", |w: Wrong| w.price);
        let err = task.output_schema(&sales().schema()).expect_err("no price");
        assert!(err.to_string().contains("'price'"), "{err}");
    }
}
