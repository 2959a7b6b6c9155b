//! Tumbling and sliding event-time windows over keyed aggregates.
//!
//! Windows start at every multiple of the slide (the size, for tumbling windows); a record
//! belongs to every window `[start, start + size)` its event time falls in. A window collects
//! its rows aggregated
//! per key with the same kernels as [`Aggregate`]. It is emitted exactly once, when the
//! operator's watermark reaches its end (or when the input ends). Sources hold back records
//! behind their watermark (they go to the source's dead letters as late), so no record ever
//! reaches a window that has been emitted.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    Collector, Descriptor, Error, Operator, OperatorFactory, Result, WorkerContext, column_indices,
    event_millis, event_time_type_check,
};

use crate::aggregate::{Agg, Aggregate};

/// A keyed aggregate over event-time windows of `size_ms` milliseconds starting every
/// `slide_ms` (equal for tumbling windows, smaller for sliding ones).
///
/// Output columns: `window_start`, `window_end` (millisecond timestamps), the keys, then the
/// aggregates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowAggregate {
    /// The window length, in milliseconds.
    pub size_ms: u64,
    /// The distance between window starts, in milliseconds.
    pub slide_ms: u64,
    /// The event-time column (`None` when the stream has no event time: an error at plan
    /// time).
    pub time_column: Option<String>,
    /// The keys and aggregates computed per window.
    pub aggregate: Aggregate,
}

impl WindowAggregate {
    /// `aggs` by `keys` over tumbling windows of `size_ms` on `time_column`.
    pub fn tumbling(
        size_ms: u64,
        time_column: Option<String>,
        keys: Vec<String>,
        aggs: Vec<Agg>,
    ) -> Self {
        WindowAggregate {
            size_ms,
            slide_ms: size_ms,
            time_column,
            aggregate: Aggregate::new(keys, aggs),
        }
    }

    /// `aggs` by `keys` over windows of `size_ms` starting every `slide_ms`.
    pub fn sliding(
        size_ms: u64,
        slide_ms: u64,
        time_column: Option<String>,
        keys: Vec<String>,
        aggs: Vec<Agg>,
    ) -> Self {
        WindowAggregate {
            slide_ms,
            ..Self::tumbling(size_ms, time_column, keys, aggs)
        }
    }

    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        let inner = self.aggregate.descriptor();
        Descriptor::new(
            "window",
            serde_json::json!({
                "size_ms": self.size_ms,
                "slide_ms": self.slide_ms,
                "time": self.time_column,
                "keys": inner.config.get("keys"),
                "aggs": inner.config.get("aggs"),
            }),
        )
    }

    fn time_index(&self, input: &SchemaRef) -> Result<usize> {
        let column = self.time_column.as_ref().ok_or_else(|| {
            Error::Plan(
                "a window needs event time: give the source one with .event_time(column, delay)"
                    .into(),
            )
        })?;
        if self.size_ms == 0 || self.slide_ms == 0 {
            return Err(Error::Plan(
                "a window and its slide must be at least 1 ms long".into(),
            ));
        }
        if self.slide_ms > self.size_ms {
            return Err(Error::Plan(format!(
                "a window slide ({} ms) longer than the window ({} ms) would skip records",
                self.slide_ms, self.size_ms
            )));
        }
        let index = column_indices(input, std::slice::from_ref(column), "window")?[0];
        event_time_type_check(input.field(index).data_type(), column)?;
        Ok(index)
    }
}

fn window_fields() -> [Field; 2] {
    let time = DataType::Timestamp(TimeUnit::Millisecond, None);
    [
        Field::new("window_start", time.clone(), false),
        Field::new("window_end", time, false),
    ]
}

impl OperatorFactory for WindowAggregate {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        self.time_index(input)?;
        let inner = self.aggregate.output_schema(input)?;
        let mut fields: Vec<Field> = window_fields().into();
        fields.extend(inner.fields().iter().map(|f| f.as_ref().clone()));
        Ok(Arc::new(Schema::new(fields)))
    }

    fn create(&self, ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(WindowInstance {
            size: i64::try_from(self.size_ms)
                .map_err(|_| Error::Plan("window size out of range".into()))?,
            slide: i64::try_from(self.slide_ms)
                .map_err(|_| Error::Plan("window slide out of range".into()))?,
            time: self.time_index(input)?,
            aggregate: self.aggregate.clone(),
            ctx: ctx.clone(),
            input: Arc::clone(input),
            schema: self.output_schema(input)?,
            open: BTreeMap::new(),
        }))
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

struct WindowInstance {
    size: i64,
    slide: i64,
    time: usize,
    aggregate: Aggregate,
    ctx: WorkerContext,
    input: SchemaRef,
    schema: SchemaRef,
    /// Open windows by start, each with its own aggregate.
    open: BTreeMap<i64, Box<dyn Operator>>,
}

impl WindowInstance {
    fn window(&mut self, start: i64) -> Result<&mut Box<dyn Operator>> {
        if !self.open.contains_key(&start) {
            let op = self.aggregate.create(&self.ctx, &self.input)?;
            self.open.insert(start, op);
        }
        self.open
            .get_mut(&start)
            .ok_or_else(|| Error::Internal("window vanished".into()))
    }

    /// Emits the window starting at `start` and forgets it.
    fn close(&mut self, start: i64, out: &mut Collector) -> Result<()> {
        let Some(mut op) = self.open.remove(&start) else {
            return Ok(());
        };
        let mut inner = Collector::new();
        op.finish(&mut inner)?;
        for batch in inner.take() {
            let n = batch.num_rows();
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(TimestampMillisecondArray::from(vec![start; n])),
                Arc::new(TimestampMillisecondArray::from(vec![start + self.size; n])),
            ];
            columns.extend(batch.columns().iter().cloned());
            out.emit(
                RecordBatch::try_new(Arc::clone(&self.schema), columns)
                    .map_err(|e| Error::arrow("window output", e))?,
            );
        }
        Ok(())
    }
}

impl Operator for WindowInstance {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut Collector) -> Result<()> {
        let times = event_millis(batch.column(self.time))
            .map_err(|e| Error::arrow("window event time", e))?;
        if times.null_count() > 0 {
            return Err(Error::Input(
                "a record without event time reached a window".into(),
            ));
        }
        let (size, slide) = (self.size, self.slide);
        // The latest window a time belongs to starts at the last multiple of the slide.
        let last_start = |t: i64| t - t.rem_euclid(slide);
        let values = times.values();
        if size == slide
            && let Some(first) = values.first().map(|&t| last_start(t))
            && values.iter().all(|&t| last_start(t) == first)
        {
            let mut sink = Collector::new();
            return self.window(first)?.process_batch(batch, &mut sink);
        }
        let mut rows: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, &t) in values.iter().enumerate() {
            let mut start = last_start(t);
            while start > t - size {
                rows.entry(start).or_default().push(row as u32);
                start -= slide;
            }
        }
        for (start, indices) in rows {
            let part = take_record_batch(&batch, &UInt32Array::from(indices))
                .map_err(|e| Error::arrow("window split", e))?;
            let mut sink = Collector::new();
            self.window(start)?.process_batch(part, &mut sink)?;
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Collector) -> Result<()> {
        let watermark = i64::try_from(watermark).unwrap_or(i64::MAX);
        let due: Vec<i64> = self
            .open
            .keys()
            .copied()
            .take_while(|&start| start.saturating_add(self.size) <= watermark)
            .collect();
        for start in due {
            self.close(start, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Collector) -> Result<()> {
        let starts: Vec<i64> = self.open.keys().copied().collect();
        for start in starts {
            self.close(start, out)?;
        }
        Ok(())
    }
}
