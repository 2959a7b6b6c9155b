//! Helpers shared by the connector tests: simulated workers, rows as sorted text.

#![allow(dead_code, clippy::unwrap_used)]

pub mod services;

use std::sync::Arc;

use arrow::array::{BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::array_value_to_string;
use streamrun_engine::{
    BadRecordPolicy, DeadLetter, Result, Sink, Source, SourceCollector, WorkerContext,
};

/// The schema a file source reads (its builder `schema(..)` hides the trait method).
pub trait ReadSchema {
    /// [`Source::schema`].
    fn read_schema(&self) -> Result<SchemaRef>;
}

impl ReadSchema for streamrun_connectors::FileSource {
    fn read_schema(&self) -> Result<SchemaRef> {
        Source::schema(self)
    }
}

/// Worker `index` of `workers`.
pub fn ctx(index: usize, workers: usize) -> WorkerContext {
    WorkerContext {
        job: "test".into(),
        index,
        workers,
        local_workers: workers,
    }
}

/// What a source read on simulated workers.
#[derive(Debug, Default)]
pub struct Read {
    /// The batches of each worker.
    pub per_worker: Vec<Vec<RecordBatch>>,
    /// The dead letters of all workers.
    pub dead: Vec<DeadLetter>,
    /// The bytes reported.
    pub bytes: u64,
}

impl Read {
    /// All batches.
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.per_worker.iter().flatten().cloned().collect()
    }

    /// All rows as text, sorted.
    pub fn rows(&self) -> Vec<String> {
        sorted_rows(&self.batches())
    }
}

/// Reads all of `source` as `workers` workers would, each opening its share.
pub fn read_all(source: &dyn Source, workers: usize, policy: BadRecordPolicy) -> Result<Read> {
    let schema = source.schema()?;
    let mut read = Read::default();
    for index in 0..workers {
        let mut reader = source.open(&ctx(index, workers))?;
        let mut out = SourceCollector::new(policy);
        let mut calls = 0;
        while reader.read(&mut out)? {
            calls += 1;
            assert!(calls < 1_000_000, "the reader never ends");
        }
        let (batches, dead) = out.take();
        for batch in &batches {
            assert_eq!(batch.schema().fields(), schema.fields(), "batch schema");
        }
        read.bytes += out.take_counts().1;
        read.per_worker.push(batches);
        read.dead.extend(dead);
    }
    Ok(read)
}

/// Each row as `v1|v2|…`, sorted.
pub fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let values: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, row).unwrap())
                .collect();
            rows.push(values.join("|"));
        }
    }
    rows.sort();
    rows
}

/// Writes `parts[i]` as worker `i` of `parts.len()` would.
pub fn write_parts(sink: &dyn Sink, schema: &SchemaRef, parts: &[Vec<RecordBatch>]) -> Result<()> {
    for (index, batches) in parts.iter().enumerate() {
        let mut writer = sink.open(&ctx(index, parts.len()), schema)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    Ok(())
}

/// The schema of [`sample`].
pub fn sample_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
        Field::new("ok", DataType::Boolean, false),
    ]))
}

/// Rows `from..to` of a sample table (names include commas and quotes).
pub fn sample(from: i64, to: i64) -> RecordBatch {
    let ids: Vec<i64> = (from..to).collect();
    let names: Vec<String> = ids
        .iter()
        .map(|i| match i % 4 {
            0 => format!("name {i}"),
            1 => format!("o'neil, \"jr\" {i}"),
            2 => format!("ünïcødé-{i}"),
            _ => format!("x{i}"),
        })
        .collect();
    let amounts: Vec<f64> = ids.iter().map(|i| *i as f64 + 0.25).collect();
    let oks: Vec<bool> = ids.iter().map(|i| i % 3 == 0).collect();
    RecordBatch::try_new(
        sample_schema(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(names)),
            Arc::new(Float64Array::from(amounts)),
            Arc::new(BooleanArray::from(oks)),
        ],
    )
    .unwrap()
}

/// Rows `0..n` of [`sample`], in batches of 5,000.
pub fn sample_batches(n: i64) -> Vec<RecordBatch> {
    (0..n)
        .step_by(5_000)
        .map(|from| sample(from, (from + 5_000).min(n)))
        .collect()
}

/// The `id` column (the first) of every row, in order.
pub fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            ids.values().to_vec()
        })
        .collect()
}
