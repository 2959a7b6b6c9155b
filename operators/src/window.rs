//! Tumbling and sliding event-time windows over keyed aggregates.
//!
//! Windows start at every multiple of the slide (the size, for tumbling windows); a record
//! belongs to every window `[start, start + size)` its event time falls in. A window collects
//! its rows aggregated per key with the same kernels as [`Aggregate`]. It is emitted exactly
//! once, when the operator's watermark reaches its end (or when the input ends). Sources
//! hold back records behind their watermark (they go to the source's late-data output), so
//! no record ever reaches a window that has been emitted.
//!
//! With an *allowed lateness* `L` (set on the source, [`EventTimeSpec`]), a source admits
//! records down to `L` behind its watermark, and the dataflow's timestamps trail the
//! watermark by `L`. A window then fires when the watermark (`frontier + L`) passes its end,
//! keeps its rows until the frontier itself passes it, and answers each record that comes
//! meanwhile with an *update*: the window's new result for the keys of that record, marked
//! `is_update = true`. Records later than that never reach the window: they go to the
//! source's late-data output.
//!
//! [`EventTimeSpec`]: streamrun_engine::EventTimeSpec

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::filter_record_batch;
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::RowConverter;
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    Collector, Descriptor, Error, Operator, OperatorFactory, Result, WorkerContext, column_indices,
    event_millis, event_time_type_check,
};

use crate::aggregate::{Agg, Aggregate};
use crate::keys::key_converter;
use crate::windowing::{due, event_time_column, hold, with_window};

/// A keyed aggregate over event-time windows of `size_ms` milliseconds starting every
/// `slide_ms` (equal for tumbling windows, smaller for sliding ones).
///
/// Output columns: `window_start`, `window_end` (millisecond timestamps), the keys, the
/// aggregates, and, when the lateness is not zero, `is_update` (a late firing that replaces
/// the window's earlier result for the same keys).
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
    /// How long after the watermark passes a window's end it still takes records, and
    /// emits updates, in milliseconds: the source's allowed lateness.
    #[serde(default)]
    pub lateness_ms: u64,
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
            lateness_ms: 0,
        }
    }

    /// Fires at the watermark, then updates with records up to `lateness_ms` late.
    pub fn with_lateness(mut self, lateness_ms: u64) -> Self {
        self.lateness_ms = lateness_ms;
        self
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
                "lateness_ms": self.lateness_ms,
            }),
        )
    }

    fn time_index(&self, input: &SchemaRef) -> Result<usize> {
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
        event_time_column(input, &self.time_column, "a window")
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
        if self.lateness_ms > 0 {
            fields.push(Field::new("is_update", DataType::Boolean, false));
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    fn create(&self, ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        // The window keeps only the columns it reads: its keys, its aggregates' columns and
        // its event time; the others are dropped before rows are split among windows.
        let time = self.time_index(input)?;
        let agg_columns: Vec<String> = self
            .aggregate
            .aggs
            .iter()
            .filter_map(|a| a.column.clone())
            .collect();
        let mut projection = column_indices(input, &self.aggregate.keys, "window key")?;
        projection.extend(column_indices(input, &agg_columns, "window aggregate")?);
        projection.push(time);
        projection.sort_unstable();
        projection.dedup();
        let projected = Arc::new(
            input
                .project(&projection)
                .map_err(|e| Error::arrow("window columns", e))?,
        );
        let key_indices = column_indices(&projected, &self.aggregate.keys, "window key")?;
        let late = if self.lateness_ms == 0 {
            None
        } else {
            Some(Late {
                lateness: i64::try_from(self.lateness_ms)
                    .map_err(|_| Error::Plan("allowed lateness out of range".into()))?,
                converter: key_converter(&projected, &key_indices, "window")?,
                key_indices,
                kept: BTreeMap::new(),
                fired_to: i64::MIN,
            })
        };
        Ok(Box::new(WindowInstance {
            late,
            size: i64::try_from(self.size_ms)
                .map_err(|_| Error::Plan("window size out of range".into()))?,
            slide: i64::try_from(self.slide_ms)
                .map_err(|_| Error::Plan("window slide out of range".into()))?,
            time: projection.iter().position(|&i| i == time).unwrap_or(0),
            projection,
            aggregate: self.aggregate.clone(),
            ctx: ctx.clone(),
            schema: self.output_schema(&projected)?,
            input: projected,
            open: BTreeMap::new(),
        }))
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

/// The windows of an operator with allowed lateness: their rows, kept until the frontier
/// passes their end, so that a late record's update can be computed.
struct Late {
    lateness: i64,
    converter: RowConverter,
    key_indices: Vec<usize>,
    /// Window start → (its rows, whether it has fired).
    kept: BTreeMap<i64, (Vec<RecordBatch>, bool)>,
    /// Windows ending at or before this have fired: `watermark + lateness`.
    fired_to: i64,
}

struct WindowInstance {
    /// Set when the lateness is not zero; `open` is unused then.
    late: Option<Late>,
    /// The input columns kept (`input` is their schema, `time` an index into it).
    projection: Vec<usize>,
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
        let Some(op) = self.open.remove(&start) else {
            return Ok(());
        };
        self.emit(start, op, None, Ok, out)
    }

    /// Finishes `op`, the aggregate of the window at `start`, and emits its result with the
    /// window's columns, keeping the rows `select` keeps; `update` fills `is_update`.
    fn emit(
        &self,
        start: i64,
        mut op: Box<dyn Operator>,
        update: Option<bool>,
        mut select: impl FnMut(RecordBatch) -> Result<RecordBatch>,
        out: &mut Collector,
    ) -> Result<()> {
        let mut inner = Collector::new();
        op.finish(&mut inner)?;
        for batch in inner.take() {
            let batch = select(batch)?;
            if batch.num_rows() == 0 {
                continue;
            }
            let rows = batch.num_rows();
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            if let Some(update) = update {
                columns.push(Arc::new(BooleanArray::from(vec![update; rows])));
            }
            out.emit(with_window(
                &self.schema,
                start,
                start + self.size,
                rows,
                columns,
            )?);
        }
        Ok(())
    }

    /// The aggregate of `rows`.
    fn aggregate_of(&self, rows: &[RecordBatch]) -> Result<Box<dyn Operator>> {
        let mut op = self.aggregate.create(&self.ctx, &self.input)?;
        let mut sink = Collector::new();
        for batch in rows {
            op.process_batch(batch.clone(), &mut sink)?;
        }
        Ok(op)
    }

    /// Adds `part`, rows of the window at `start`, under allowed lateness: a window that has
    /// fired answers with an update for the keys of `part`.
    fn keep(&mut self, start: i64, part: RecordBatch, out: &mut Collector) -> Result<()> {
        let Some(mut late) = self.late.take() else {
            return Err(Error::Internal("window has no lateness".into()));
        };
        let result = self.keep_in(&mut late, start, part, out);
        self.late = Some(late);
        result
    }

    fn keep_in(
        &self,
        late: &mut Late,
        start: i64,
        part: RecordBatch,
        out: &mut Collector,
    ) -> Result<()> {
        let fired = start + self.size <= late.fired_to;
        let entry = late
            .kept
            .entry(start)
            .or_insert_with(|| (Vec::new(), fired));
        entry.0.push(part.clone());
        if !fired {
            return Ok(());
        }
        entry.1 = true;
        let keys = |batch: &RecordBatch, indices: &[usize]| -> Vec<ArrayRef> {
            indices
                .iter()
                .map(|&i| Arc::clone(batch.column(i)))
                .collect()
        };
        let wanted: std::collections::HashSet<Vec<u8>> = late
            .converter
            .convert_columns(&keys(&part, &late.key_indices))
            .map_err(|e| Error::arrow("window keys", e))?
            .iter()
            .map(|r| r.as_ref().to_vec())
            .collect();
        let op = self.aggregate_of(&entry.0)?;
        let converter = &late.converter;
        let positions: Vec<usize> = (0..late.key_indices.len()).collect();
        let select = |batch: RecordBatch| -> Result<RecordBatch> {
            let rows = converter
                .convert_columns(&keys(&batch, &positions))
                .map_err(|e| Error::arrow("window keys", e))?;
            let mask: BooleanArray = rows
                .iter()
                .map(|r| Some(wanted.contains(r.as_ref())))
                .collect();
            filter_record_batch(&batch, &mask).map_err(|e| Error::arrow("window update", e))
        };
        self.emit(start, op, Some(true), select, out)
    }
}

impl Operator for WindowInstance {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let batch = batch
            .project(&self.projection)
            .map_err(|e| Error::arrow("window columns", e))?;
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
            && self.late.is_none()
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
            if self.late.is_some() {
                self.keep(start, part, out)?;
            } else {
                let mut sink = Collector::new();
                self.window(start)?.process_batch(part, &mut sink)?;
            }
        }
        Ok(())
    }

    fn hold(&self) -> Option<u64> {
        // A window's results carry event time `end - 1`.
        match &self.late {
            Some(late) => hold(&late.kept, self.size),
            None => hold(&self.open, self.size),
        }
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Collector) -> Result<()> {
        let Some(late) = self.late.as_mut() else {
            for start in due(&self.open, self.size, Some(watermark)) {
                self.close(start, out)?;
            }
            return Ok(());
        };
        // The frontier is `watermark`; the source's watermark is `lateness` ahead of it.
        let frontier = i64::try_from(watermark).unwrap_or(i64::MAX);
        late.fired_to = late.fired_to.max(frontier.saturating_add(late.lateness));
        let fired_to = u64::try_from(late.fired_to).unwrap_or(0);
        let firing: Vec<i64> = due(&late.kept, self.size, Some(fired_to))
            .into_iter()
            .filter(|start| late.kept.get(start).is_some_and(|(_, fired)| !fired))
            .collect();
        for start in firing {
            self.fire(start, out)?;
        }
        if let Some(late) = self.late.as_mut() {
            for start in due(&late.kept, self.size, Some(watermark)) {
                late.kept.remove(&start);
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Collector) -> Result<()> {
        let Some(late) = self.late.as_ref() else {
            for start in due(&self.open, self.size, None) {
                self.close(start, out)?;
            }
            return Ok(());
        };
        let unfired: Vec<i64> = late
            .kept
            .iter()
            .filter(|(_, (_, fired))| !fired)
            .map(|(start, _)| *start)
            .collect();
        for start in unfired {
            self.fire(start, out)?;
        }
        if let Some(late) = self.late.as_mut() {
            late.kept.clear();
        }
        Ok(())
    }
}

impl WindowInstance {
    /// First firing of a window kept under allowed lateness: its whole result, not an update.
    fn fire(&mut self, start: i64, out: &mut Collector) -> Result<()> {
        let Some((rows, fired)) = self.late.as_mut().and_then(|l| l.kept.get_mut(&start)) else {
            return Ok(());
        };
        *fired = true;
        let rows = rows.clone();
        let op = self.aggregate_of(&rows)?;
        self.emit(start, op, Some(false), Ok, out)
    }
}

/// Per window (the rows sharing a `window_end`), keeps the rows whose `by` is the greatest,
/// ties included: "the auctions with the most bids in each window". A window's rows are
/// complete, and emitted, when the watermark reaches its end, at event time `window_end - 1`
/// (as a window's results are); the input must be partitioned by `window_end`
/// (`key_by("window_end")`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowArgMax {
    /// The window-end column (a timestamp or Int64 milliseconds).
    pub window_end: String,
    /// The column ranked.
    pub by: String,
}

impl WindowArgMax {
    /// Keeps, per `window_end`, the rows with the greatest `by`.
    pub fn new(window_end: impl Into<String>, by: impl Into<String>) -> Self {
        WindowArgMax {
            window_end: window_end.into(),
            by: by.into(),
        }
    }

    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "window_arg_max",
            serde_json::json!({ "window_end": self.window_end, "by": self.by }),
        )
    }

    fn columns(&self, input: &SchemaRef) -> Result<(usize, usize)> {
        let indices = column_indices(
            input,
            &[self.window_end.clone(), self.by.clone()],
            "window_arg_max",
        )?;
        event_time_type_check(input.field(indices[0]).data_type(), &self.window_end)?;
        let by = input.field(indices[1]).data_type();
        if !(by.is_primitive() || matches!(by, DataType::Utf8 | DataType::Boolean)) {
            return Err(Error::Plan(format!(
                "window_arg_max: column '{}' is {by}, which has no order to rank by",
                self.by
            )));
        }
        Ok((indices[0], indices[1]))
    }
}

impl OperatorFactory for WindowArgMax {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        self.columns(input)?;
        Ok(Arc::clone(input))
    }

    fn create(&self, _ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let (end, by) = self.columns(input)?;
        Ok(Box::new(ArgMaxInstance {
            end,
            by,
            schema: Arc::clone(input),
            open: BTreeMap::new(),
            watermark: 0,
        }))
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

struct ArgMaxInstance {
    end: usize,
    by: usize,
    schema: SchemaRef,
    /// Rows per window end.
    open: BTreeMap<i64, Vec<RecordBatch>>,
    watermark: u64,
}

impl ArgMaxInstance {
    fn close(&mut self, end: i64, out: &mut Collector) -> Result<()> {
        let Some(batches) = self.open.remove(&end) else {
            return Ok(());
        };
        let rows = arrow::compute::concat_batches(&self.schema, &batches)
            .map_err(|e| Error::arrow("window_arg_max", e))?;
        // The greatest value, in the column's own type: the first of a descending sort.
        let arrow_err = |e| Error::arrow("window_arg_max", e);
        let by = rows.column(self.by);
        let options = arrow::compute::SortOptions {
            descending: true,
            nulls_first: false,
        };
        let first =
            arrow::compute::sort_to_indices(by, Some(options), Some(1)).map_err(arrow_err)?;
        let top = first.values().first().map(|&i| i as usize);
        let Some(top) = top.filter(|&i| by.is_valid(i)) else {
            return Ok(());
        };
        let max = arrow::array::Scalar::new(by.slice(top, 1));
        let keep = arrow::compute::kernels::cmp::eq(by, &max).map_err(arrow_err)?;
        out.emit(
            arrow::compute::filter_record_batch(&rows, &keep)
                .map_err(|e| Error::arrow("window_arg_max", e))?,
        );
        Ok(())
    }
}

impl Operator for ArgMaxInstance {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut Collector) -> Result<()> {
        let ends =
            event_millis(batch.column(self.end)).map_err(|e| Error::arrow("window_arg_max", e))?;
        let mut rows: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, &end) in ends.values().iter().enumerate() {
            rows.entry(end).or_default().push(row as u32);
        }
        for (end, indices) in rows {
            let part = take_record_batch(&batch, &UInt32Array::from(indices))
                .map_err(|e| Error::arrow("window_arg_max", e))?;
            self.open.entry(end).or_default().push(part);
        }
        Ok(())
    }

    fn hold(&self) -> Option<u64> {
        // Its results carry event time `window_end - 1`, as a window's do. (Holding at the
        // watermark when a window's first rows came, behind the sources, stopped sources
        // paced on the job's frontier for as long as the window stayed open: the window
        // never closed, a deadlock seen in Nexmark q7 on 2 workers.)
        self.open
            .keys()
            .next()
            .map(|&end| u64::try_from(end.saturating_sub(1)).unwrap_or(0))
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Collector) -> Result<()> {
        self.watermark = self.watermark.max(watermark);
        let watermark = i64::try_from(watermark).unwrap_or(i64::MAX);
        let due: Vec<i64> = self
            .open
            .keys()
            .copied()
            .take_while(|&end| end <= watermark)
            .collect();
        for end in due {
            self.close(end, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Collector) -> Result<()> {
        let ends: Vec<i64> = self.open.keys().copied().collect();
        for end in ends {
            self.close(end, out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn batch(times: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("t", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(times.iter().map(|_| "k"))),
                Arc::new(Int64Array::from(times.to_vec())),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn windows_hold_their_results_event_time_and_close_on_the_watermark() {
        let op =
            WindowAggregate::tumbling(1000, Some("t".into()), vec!["k".into()], vec![Agg::count()]);
        let input = batch(&[]).schema();
        let ctx = WorkerContext {
            job: "t".into(),
            index: 0,
            workers: 1,
            local_workers: 1,
        };
        let mut window = op.create(&ctx, &input).expect("create");
        let mut out = Collector::new();
        assert_eq!(window.hold(), None, "nothing open, nothing held");
        window
            .process_batch(batch(&[1500, 2500, 1999]), &mut out)
            .expect("process");
        // Results of [1000, 2000) carry event time 1999.
        assert_eq!(window.hold(), Some(1999));
        window.on_watermark(1999, &mut out).expect("watermark");
        assert!(out.is_empty(), "[1000, 2000) is not complete before 2000");
        window.on_watermark(2000, &mut out).expect("watermark");
        let emitted = out.take();
        assert_eq!(emitted.len(), 1);
        assert_eq!(emitted[0].num_rows(), 1);
        assert_eq!(window.hold(), Some(2999));
    }

    #[test]
    fn arg_max_ranks_in_the_columns_own_type() {
        // Fractional prices: truncated to integers, all three would tie.
        let schema = Arc::new(Schema::new(vec![
            Field::new("window_end", DataType::Int64, false),
            Field::new("price", DataType::Float64, false),
        ]));
        let rows = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1000, 1000, 1000, 2000])),
                Arc::new(arrow::array::Float64Array::from(vec![1.2, 1.5, 1.5, 0.5])),
            ],
        )
        .expect("batch");
        let ctx = WorkerContext {
            job: "t".into(),
            index: 0,
            workers: 1,
            local_workers: 1,
        };
        let mut op = WindowArgMax::new("window_end", "price")
            .create(&ctx, &schema)
            .expect("create");
        let mut out = Collector::new();
        // The watermark is far behind the windows: the results are still held at their
        // windows' ends, never at the watermark they came under.
        op.on_watermark(10, &mut out).expect("watermark");
        op.process_batch(rows, &mut out).expect("process");
        assert_eq!(op.hold(), Some(999), "held at the first window's end - 1");
        op.on_watermark(1000, &mut out).expect("watermark");
        assert_eq!(op.hold(), Some(1999), "then at the next one's");
        let first = out.take();
        assert_eq!(first.len(), 1);
        let prices = first[0]
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .expect("f64");
        assert_eq!(prices.values().to_vec(), vec![1.5, 1.5]);
        op.finish(&mut out).expect("finish");
        assert_eq!(out.take()[0].num_rows(), 1, "the 2000 window");
    }
}
