//! Joins of two keyed streams: within tumbling event-time windows ([`WindowJoin`]), or over
//! everything seen so far ([`StreamJoin`]).
//!
//! Each side's rows are kept per window until the watermark (the lesser of both inputs')
//! reaches the window's end; the window's rows are then hash-joined on the keys and emitted
//! once. Both inputs must be partitioned by their keys (`key_by`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::keys::{key_converter, key_rows};
use crate::windowing::{due, event_time_column, hold, with_window};
use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::RowConverter;
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    Collector, Descriptor, Error, JoinOperator, JoinOperatorFactory, Result, Side, WorkerContext,
    column_indices, event_millis,
};

/// Which rows a join emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinKind {
    /// Every pair of matching rows: the left columns, then the right ones (renamed
    /// `right_<name>` where a name is taken).
    Inner,
    /// Each left row that has at least one match, once: the left columns only.
    LeftSemi,
}

/// A join of two keyed streams within tumbling event-time windows of `size_ms`.
///
/// Output columns: `window_start`, `window_end`, then the joined columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowJoin {
    /// The window length, in milliseconds.
    pub size_ms: u64,
    /// Event-time column of the left input (`None`: an error at plan time).
    pub left_time: Option<String>,
    /// Event-time column of the right input.
    pub right_time: Option<String>,
    /// Key columns of the left input.
    pub left_keys: Vec<String>,
    /// Key columns of the right input, matched in order with the left ones.
    pub right_keys: Vec<String>,
    /// Which rows to emit.
    pub kind: JoinKind,
}

impl WindowJoin {
    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "window_join",
            serde_json::json!({
                "tumbling_ms": self.size_ms,
                "on": self.left_keys.iter().zip(&self.right_keys)
                    .map(|(l, r)| format!("{l} = {r}")).collect::<Vec<_>>(),
                "kind": self.kind,
            }),
        )
    }

    fn check(
        &self,
        left: &SchemaRef,
        right: &SchemaRef,
    ) -> Result<(usize, Vec<usize>, usize, Vec<usize>)> {
        if self.size_ms == 0 {
            return Err(Error::Plan(
                "a join window must be at least 1 ms long".into(),
            ));
        }
        let (lk, rk) = key_columns(
            left,
            right,
            &self.left_keys,
            &self.right_keys,
            "window join",
        )?;
        let lt = event_time_column(left, &self.left_time, "the left input of a window join")?;
        let rt = event_time_column(right, &self.right_time, "the right input of a window join")?;
        Ok((lt, lk, rt, rk))
    }
}

impl JoinOperatorFactory for WindowJoin {
    fn output_schema(&self, left: &SchemaRef, right: &SchemaRef) -> Result<SchemaRef> {
        self.check(left, right)?;
        let time = DataType::Timestamp(TimeUnit::Millisecond, None);
        let window = vec![
            Field::new("window_start", time.clone(), false),
            Field::new("window_end", time, false),
        ];
        let fields = match self.kind {
            JoinKind::Inner => joined_fields(left, right, window),
            JoinKind::LeftSemi => {
                let mut fields = window;
                fields.extend(left.fields().iter().map(|f| f.as_ref().clone()));
                fields
            }
        };
        Ok(Arc::new(Schema::new(fields)))
    }

    fn create(
        &self,
        _ctx: &WorkerContext,
        left: &SchemaRef,
        right: &SchemaRef,
    ) -> Result<Box<dyn JoinOperator>> {
        let (lt, lk, rt, rk) = self.check(left, right)?;
        let converter = key_converter(left, &lk, "window join")?;
        Ok(Box::new(WindowJoinInstance {
            size: i64::try_from(self.size_ms)
                .map_err(|_| Error::Plan("window size out of range".into()))?,
            kind: self.kind,
            time: [lt, rt],
            keys: [lk, rk],
            inputs: [Arc::clone(left), Arc::clone(right)],
            converter,
            schema: self.output_schema(left, right)?,
            open: BTreeMap::new(),
        }))
    }
}

struct WindowJoinInstance {
    size: i64,
    kind: JoinKind,
    time: [usize; 2],
    keys: [Vec<usize>; 2],
    inputs: [SchemaRef; 2],
    converter: RowConverter,
    schema: SchemaRef,
    /// Per window start, each side's rows.
    open: BTreeMap<i64, [Vec<RecordBatch>; 2]>,
}

impl WindowJoinInstance {
    fn close(&mut self, start: i64, out: &mut Collector) -> Result<()> {
        let Some([left, right]) = self.open.remove(&start) else {
            return Ok(());
        };
        if left.is_empty() || right.is_empty() {
            return Ok(());
        }
        let arrow_err = |e| Error::arrow("window join", e);
        let left = concat_batches(&self.inputs[0], &left).map_err(arrow_err)?;
        let right = concat_batches(&self.inputs[1], &right).map_err(arrow_err)?;
        let key_rows = |batch: &RecordBatch, keys: &[usize]| {
            key_rows(&self.converter, batch, keys, "window join")
        };
        let (left_keys, right_keys) = (
            key_rows(&left, &self.keys[0])?,
            key_rows(&right, &self.keys[1])?,
        );
        let mut index: HashMap<&[u8], Vec<u32>> = HashMap::new();
        for (row, key) in right_keys.iter().enumerate() {
            index.entry(key.data()).or_default().push(row as u32);
        }
        let (mut li, mut ri): (Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new());
        for (row, key) in left_keys.iter().enumerate() {
            if let Some(matches) = index.get(key.data()) {
                match self.kind {
                    JoinKind::Inner => {
                        li.extend(std::iter::repeat_n(row as u32, matches.len()));
                        ri.extend(matches);
                    }
                    JoinKind::LeftSemi => li.push(row as u32),
                }
            }
        }
        if li.is_empty() {
            return Ok(());
        }
        let n = li.len();
        let mut columns: Vec<ArrayRef> = take_record_batch(&left, &UInt32Array::from(li))
            .map_err(arrow_err)?
            .columns()
            .to_vec();
        if self.kind == JoinKind::Inner {
            columns.extend(
                take_record_batch(&right, &UInt32Array::from(ri))
                    .map_err(arrow_err)?
                    .columns()
                    .iter()
                    .cloned(),
            );
        }
        out.emit(with_window(
            &self.schema,
            start,
            start + self.size,
            n,
            columns,
        )?);
        Ok(())
    }
}

impl JoinOperator for WindowJoinInstance {
    fn process_batch(
        &mut self,
        side: Side,
        batch: RecordBatch,
        _out: &mut Collector,
    ) -> Result<()> {
        let s = match side {
            Side::Left => 0,
            Side::Right => 1,
        };
        let times = event_millis(batch.column(self.time[s]))
            .map_err(|e| Error::arrow("window join event time", e))?;
        let size = self.size;
        let mut rows: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, &t) in times.values().iter().enumerate() {
            rows.entry(t - t.rem_euclid(size))
                .or_default()
                .push(row as u32);
        }
        for (start, indices) in rows {
            let part = take_record_batch(&batch, &UInt32Array::from(indices))
                .map_err(|e| Error::arrow("window join", e))?;
            self.open.entry(start).or_default()[s].push(part);
        }
        Ok(())
    }

    fn hold(&self) -> Option<u64> {
        hold(&self.open, self.size)
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Collector) -> Result<()> {
        for start in due(&self.open, self.size, Some(watermark)) {
            self.close(start, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Collector) -> Result<()> {
        for start in due(&self.open, self.size, None) {
            self.close(start, out)?;
        }
        Ok(())
    }
}

/// An inner join of two keyed streams with no window: every row is kept, and each new row
/// is joined at once with the other side's rows seen so far, so every matching pair is
/// emitted exactly once, when its second row arrives.
///
/// Its state grows with its input (both sides are kept whole); use it where at least one side
/// is a bounded table, as Nexmark q3 joins auctions with the people who sell them.
///
/// Output columns: the left columns, then the right ones (renamed `right_<name>` where a name
/// is taken).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamJoin {
    /// Key columns of the left input.
    pub left_keys: Vec<String>,
    /// Key columns of the right input, matched in order with the left ones.
    pub right_keys: Vec<String>,
}

impl StreamJoin {
    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "join",
            serde_json::json!({
                "on": self.left_keys.iter().zip(&self.right_keys)
                    .map(|(l, r)| format!("{l} = {r}")).collect::<Vec<_>>(),
            }),
        )
    }

    fn check(&self, left: &SchemaRef, right: &SchemaRef) -> Result<(Vec<usize>, Vec<usize>)> {
        key_columns(left, right, &self.left_keys, &self.right_keys, "join")
    }
}

/// The key columns of both inputs of a join (`what`, for errors): as many on each side, at
/// least one, and of the same types in order.
pub(crate) fn key_columns(
    left: &SchemaRef,
    right: &SchemaRef,
    left_keys: &[String],
    right_keys: &[String],
    what: &str,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if left_keys.is_empty() || left_keys.len() != right_keys.len() {
        return Err(Error::Plan(format!(
            "a {what} needs as many right keys as left keys, and at least one (left {left_keys:?}, right {right_keys:?})"
        )));
    }
    let lk = column_indices(left, left_keys, &format!("{what} key (left)"))?;
    let rk = column_indices(right, right_keys, &format!("{what} key (right)"))?;
    for (&l, &r) in lk.iter().zip(&rk) {
        let (lt, rt) = (left.field(l).data_type(), right.field(r).data_type());
        if lt != rt {
            return Err(Error::Plan(format!(
                "{what} keys '{}' ({lt}) and '{}' ({rt}) have different types",
                left.field(l).name(),
                right.field(r).name()
            )));
        }
    }
    Ok((lk, rk))
}

/// The schema of an inner join's output: the left fields, then the right ones.
pub(crate) fn joined_schema(left: &SchemaRef, right: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(joined_fields(left, right, Vec::new())))
}

/// The left fields, then the right ones renamed where a name is taken.
pub(crate) fn joined_fields(
    left: &SchemaRef,
    right: &SchemaRef,
    mut fields: Vec<Field>,
) -> Vec<Field> {
    fields.extend(left.fields().iter().map(|f| f.as_ref().clone()));
    for f in right.fields() {
        let taken = fields.iter().any(|g| g.name() == f.name());
        let name = if taken {
            format!("right_{}", f.name())
        } else {
            f.name().clone()
        };
        fields.push(f.as_ref().clone().with_name(name));
    }
    fields
}

impl JoinOperatorFactory for StreamJoin {
    fn output_schema(&self, left: &SchemaRef, right: &SchemaRef) -> Result<SchemaRef> {
        self.check(left, right)?;
        Ok(joined_schema(left, right))
    }

    fn create(
        &self,
        _ctx: &WorkerContext,
        left: &SchemaRef,
        right: &SchemaRef,
    ) -> Result<Box<dyn JoinOperator>> {
        let (lk, rk) = self.check(left, right)?;
        Ok(Box::new(StreamJoinInstance {
            converter: key_converter(left, &lk, "join")?,
            keys: [lk, rk],
            schema: self.output_schema(left, right)?,
            sides: [JoinSide::default(), JoinSide::default()],
        }))
    }
}

/// The rows one side of a join has seen, and where each key's rows are.
#[derive(Default)]
struct JoinSide {
    batches: Vec<RecordBatch>,
    index: HashMap<Vec<u8>, Vec<(usize, usize)>>,
}

struct StreamJoinInstance {
    keys: [Vec<usize>; 2],
    converter: RowConverter,
    schema: SchemaRef,
    sides: [JoinSide; 2],
}

impl JoinOperator for StreamJoinInstance {
    fn process_batch(&mut self, side: Side, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let (this, other) = match side {
            Side::Left => (0, 1),
            Side::Right => (1, 0),
        };
        let arrow_err = |e| Error::arrow("join", e);
        let keys = key_rows(&self.converter, &batch, &self.keys[this], "join")?;
        // Pairs (row of this batch, row of the other side) with equal keys.
        let mut mine: Vec<u32> = Vec::new();
        let mut theirs: Vec<(usize, usize)> = Vec::new();
        for (row, key) in keys.iter().enumerate() {
            if let Some(matches) = self.sides[other].index.get(key.data()) {
                mine.extend(std::iter::repeat_n(row as u32, matches.len()));
                theirs.extend(matches);
            }
        }
        let at = self.sides[this].batches.len();
        for (row, key) in keys.iter().enumerate() {
            self.sides[this]
                .index
                .entry(key.data().to_vec())
                .or_default()
                .push((at, row));
        }
        if !mine.is_empty() {
            let mine = take_record_batch(&batch, &UInt32Array::from(mine)).map_err(arrow_err)?;
            let stored = &self.sides[other].batches;
            let theirs: Vec<ArrayRef> = (0..stored.first().map_or(0, RecordBatch::num_columns))
                .map(|c| {
                    let arrays: Vec<&dyn arrow::array::Array> =
                        stored.iter().map(|b| b.column(c).as_ref()).collect();
                    arrow::compute::interleave(&arrays, &theirs)
                })
                .collect::<std::result::Result<_, _>>()
                .map_err(arrow_err)?;
            let (left, right): (Vec<ArrayRef>, Vec<ArrayRef>) = match side {
                Side::Left => (mine.columns().to_vec(), theirs),
                Side::Right => (theirs, mine.columns().to_vec()),
            };
            let columns: Vec<ArrayRef> = left.into_iter().chain(right).collect();
            out.emit(RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(arrow_err)?);
        }
        self.sides[this].batches.push(batch);
        Ok(())
    }
}
