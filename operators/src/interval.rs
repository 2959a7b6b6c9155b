//! The interval join: each left row with the right rows of the same key whose event time lies
//! within a range of its own, `right.t - left.t ∈ [lower, upper]`.
//!
//! Rows are joined as they arrive, so every matching pair is emitted exactly once, as soon as
//! its second row is in, without waiting for a window to close. Each side keeps a row only
//! as long as a row of the other side could still match it: a left row until the watermark
//! passes `t + upper`, a right row until it passes `t - lower`. State is then bounded by the
//! rows of one interval, whatever the length of the streams.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::row::RowConverter;
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    Collector, Descriptor, Error, JoinOperator, JoinOperatorFactory, Result, Side, WorkerContext,
    event_millis,
};

use crate::join::{joined_schema, key_columns};
use crate::keys::{key_converter, key_rows};
use crate::windowing::event_time_column;

/// An inner join of two keyed streams on equal keys and `right.t - left.t` within
/// `[lower_ms, upper_ms]`.
///
/// Output columns: the left columns, then the right ones (renamed `right_<name>` where a name
/// is taken).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalJoin {
    /// The least `right.t - left.t` that matches, in milliseconds (may be negative).
    pub lower_ms: i64,
    /// The greatest `right.t - left.t` that matches, in milliseconds.
    pub upper_ms: i64,
    /// Event-time column of the left input (`None`: an error at plan time).
    pub left_time: Option<String>,
    /// Event-time column of the right input.
    pub right_time: Option<String>,
    /// Key columns of the left input.
    pub left_keys: Vec<String>,
    /// Key columns of the right input, matched in order with the left ones.
    pub right_keys: Vec<String>,
}

impl IntervalJoin {
    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "interval_join",
            serde_json::json!({
                "right_minus_left_ms": [self.lower_ms, self.upper_ms],
                "on": self.left_keys.iter().zip(&self.right_keys)
                    .map(|(l, r)| format!("{l} = {r}")).collect::<Vec<_>>(),
            }),
        )
    }

    fn check(&self, left: &SchemaRef, right: &SchemaRef) -> Result<([usize; 2], [Vec<usize>; 2])> {
        if self.lower_ms > self.upper_ms {
            return Err(Error::Plan(format!(
                "an interval join's bounds are in the wrong order: {} ms > {} ms",
                self.lower_ms, self.upper_ms
            )));
        }
        let (lk, rk) = key_columns(
            left,
            right,
            &self.left_keys,
            &self.right_keys,
            "interval join",
        )?;
        let lt = event_time_column(left, &self.left_time, "the left input of an interval join")?;
        let rt = event_time_column(
            right,
            &self.right_time,
            "the right input of an interval join",
        )?;
        Ok(([lt, rt], [lk, rk]))
    }
}

impl JoinOperatorFactory for IntervalJoin {
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
        let (time, keys) = self.check(left, right)?;
        Ok(Box::new(IntervalJoinInstance {
            converter: key_converter(left, &keys[0], "interval join")?,
            bounds: (self.lower_ms, self.upper_ms),
            time,
            keys,
            schema: self.output_schema(left, right)?,
            sides: [Kept::default(), Kept::default()],
            next_chunk: 0,
        }))
    }
}

/// A batch one side keeps, with its rows' event times.
struct Chunk {
    batch: RecordBatch,
    times: Int64Array,
}

/// The rows one side keeps: chunks by id, chunk ids by the time they can go, and each key's
/// rows.
#[derive(Default)]
struct Kept {
    chunks: HashMap<u64, Chunk>,
    /// Expiry time → the chunks that can go once the watermark passes it.
    expiry: BTreeMap<i64, Vec<u64>>,
    index: HashMap<Vec<u8>, Vec<(u64, u32)>>,
}

struct IntervalJoinInstance {
    bounds: (i64, i64),
    time: [usize; 2],
    keys: [Vec<usize>; 2],
    converter: RowConverter,
    schema: SchemaRef,
    sides: [Kept; 2],
    next_chunk: u64,
}

impl IntervalJoinInstance {
    /// The interval of the other side's times a row of `side` at `t` matches.
    fn matching(&self, side: usize, t: i64) -> (i64, i64) {
        let (lower, upper) = self.bounds;
        if side == 0 {
            (t.saturating_add(lower), t.saturating_add(upper))
        } else {
            (t.saturating_sub(upper), t.saturating_sub(lower))
        }
    }
}

impl JoinOperator for IntervalJoinInstance {
    fn process_batch(&mut self, side: Side, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let (this, other) = match side {
            Side::Left => (0, 1),
            Side::Right => (1, 0),
        };
        let arrow_err = |e| Error::arrow("interval join", e);
        let times = event_millis(batch.column(self.time[this])).map_err(arrow_err)?;
        if times.null_count() > 0 {
            return Err(Error::Input(
                "a record without event time reached an interval join".into(),
            ));
        }
        let keys = key_rows(&self.converter, &batch, &self.keys[this], "interval join")?;
        let mut mine: Vec<u32> = Vec::new();
        let mut theirs: Vec<(u64, u32)> = Vec::new();
        let kept = &self.sides[other];
        for (row, key) in keys.iter().enumerate() {
            let Some(candidates) = kept.index.get(key.data()) else {
                continue;
            };
            let (from, to) = self.matching(this, times.value(row));
            for &(chunk, at) in candidates {
                if let Some(c) = kept.chunks.get(&chunk)
                    && (from..=to).contains(&c.times.value(at as usize))
                {
                    mine.push(row as u32);
                    theirs.push((chunk, at));
                }
            }
        }
        if !mine.is_empty() {
            let mine = take_record_batch(&batch, &UInt32Array::from(mine)).map_err(arrow_err)?;
            // The other side's matched rows, gathered across its chunks.
            let order: Vec<u64> = {
                let mut ids: Vec<u64> = theirs.iter().map(|(c, _)| *c).collect();
                ids.sort_unstable();
                ids.dedup();
                ids
            };
            let position: HashMap<u64, usize> =
                order.iter().enumerate().map(|(i, c)| (*c, i)).collect();
            let sources: Vec<&RecordBatch> = order
                .iter()
                .filter_map(|c| kept.chunks.get(c).map(|c| &c.batch))
                .collect();
            let picks: Vec<(usize, usize)> = theirs
                .iter()
                .filter_map(|(c, at)| position.get(c).map(|p| (*p, *at as usize)))
                .collect();
            let theirs: Vec<ArrayRef> = (0..sources.first().map_or(0, |b| b.num_columns()))
                .map(|col| {
                    let arrays: Vec<&dyn Array> =
                        sources.iter().map(|b| b.column(col).as_ref()).collect();
                    arrow::compute::interleave(&arrays, &picks)
                })
                .collect::<std::result::Result<_, _>>()
                .map_err(arrow_err)?;
            let (left, right) = match side {
                Side::Left => (mine.columns().to_vec(), theirs),
                Side::Right => (theirs, mine.columns().to_vec()),
            };
            let columns: Vec<ArrayRef> = left.into_iter().chain(right).collect();
            out.emit(RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(arrow_err)?);
        }
        // Keep the batch until the last of its rows can no longer match.
        let expires = times
            .values()
            .iter()
            .map(|&t| self.matching(this, t).1)
            .max();
        if let Some(expires) = expires {
            let id = self.next_chunk;
            self.next_chunk += 1;
            let kept = &mut self.sides[this];
            for (row, key) in keys.iter().enumerate() {
                kept.index
                    .entry(key.data().to_vec())
                    .or_default()
                    .push((id, row as u32));
            }
            kept.expiry.entry(expires).or_default().push(id);
            kept.chunks.insert(id, Chunk { batch, times });
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: u64, _out: &mut Collector) -> Result<()> {
        // Rows still to come have event times at or after the watermark.
        let watermark = i64::try_from(watermark).unwrap_or(i64::MAX);
        for kept in &mut self.sides {
            let mut gone = false;
            while let Some(entry) = kept.expiry.first_entry()
                && *entry.key() < watermark
            {
                for id in entry.remove() {
                    kept.chunks.remove(&id);
                    gone = true;
                }
            }
            if gone {
                let chunks = &kept.chunks;
                kept.index.retain(|_, rows| {
                    rows.retain(|(id, _)| chunks.contains_key(id));
                    !rows.is_empty()
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn schema(time: &str) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new(time, DataType::Int64, false),
        ]))
    }

    fn batch(time: &str, rows: &[(&str, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(time),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn pairs_come_once_and_expired_rows_are_dropped() {
        let join = IntervalJoin {
            lower_ms: -10,
            upper_ms: 20,
            left_time: Some("lt".into()),
            right_time: Some("rt".into()),
            left_keys: vec!["k".into()],
            right_keys: vec!["k".into()],
        };
        let ctx = WorkerContext {
            job: "t".into(),
            index: 0,
            workers: 1,
            local_workers: 1,
        };
        let mut op = join
            .create(&ctx, &schema("lt"), &schema("rt"))
            .expect("create");
        let mut out = Collector::new();
        op.process_batch(Side::Left, batch("lt", &[("a", 100), ("b", 100)]), &mut out)
            .expect("left");
        // 89 is too early for a's 100, 90 and 120 are the bounds, 121 is too late.
        op.process_batch(
            Side::Right,
            batch(
                "rt",
                &[("a", 89), ("a", 90), ("a", 120), ("a", 121), ("c", 100)],
            ),
            &mut out,
        )
        .expect("right");
        op.on_watermark(121, &mut out).expect("watermark");
        // The left rows expired at 120: a later left row finds only what is still kept.
        op.process_batch(Side::Left, batch("lt", &[("a", 125)]), &mut out)
            .expect("left");
        let mut pairs = Vec::new();
        for b in out.take() {
            assert_eq!(b.schema().field(2).name(), "right_k");
            for i in 0..b.num_rows() {
                pairs.push((
                    b.column(0).as_string::<i32>().value(i).to_owned(),
                    b.column(1).as_primitive::<Int64Type>().value(i),
                    b.column(3).as_primitive::<Int64Type>().value(i),
                ));
            }
        }
        pairs.sort();
        assert_eq!(
            pairs,
            vec![
                ("a".to_owned(), 100, 90),
                ("a".to_owned(), 100, 120),
                ("a".to_owned(), 125, 120),
                ("a".to_owned(), 125, 121),
            ]
        );
        let bad = IntervalJoin {
            lower_ms: 5,
            upper_ms: 1,
            ..join
        };
        assert!(bad.output_schema(&schema("lt"), &schema("rt")).is_err());
    }
}
