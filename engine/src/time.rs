//! The dataflow's timestamp: an event-time watermark, then a read epoch, ordered
//! lexicographically.
//!
//! A message travels at `Time { watermark, epoch }`: every record it carries has an event
//! time at or after `watermark`, and `epoch` counts its source's reads. Frontiers then give
//! both things the engine needs: the watermark an operator may rely on (the first component
//! of its input frontier), and progress that moves even while the watermark stands still (the
//! second), which source pacing waits on. Jobs without event time keep the watermark at 0.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use timely::order::{PartialOrder, TotalOrder};
use timely::progress::timestamp::{PathSummary, Refines, Timestamp};

/// A dataflow timestamp. The derived order is lexicographic: watermark first.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time {
    /// Event time, in milliseconds, that every record of the message is at or after.
    pub watermark: u64,
    /// The source's read count.
    pub epoch: u64,
}

impl Time {
    /// The time of a source's read `epoch` under `watermark`.
    pub fn new(watermark: u64, epoch: u64) -> Self {
        Time { watermark, epoch }
    }
}

impl PartialOrder for Time {
    fn less_equal(&self, other: &Self) -> bool {
        self <= other
    }
}

impl TotalOrder for Time {}

/// How a path through the dataflow advances a [`Time`]; every path here is the identity.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct TimeSummary {
    watermark: u64,
    epoch: u64,
}

impl PartialOrder for TimeSummary {
    fn less_equal(&self, other: &Self) -> bool {
        self <= other
    }
}

impl PathSummary<Time> for TimeSummary {
    fn results_in(&self, src: &Time) -> Option<Time> {
        Some(Time {
            watermark: src.watermark.checked_add(self.watermark)?,
            epoch: src.epoch.checked_add(self.epoch)?,
        })
    }

    fn followed_by(&self, other: &Self) -> Option<Self> {
        Some(TimeSummary {
            watermark: self.watermark.checked_add(other.watermark)?,
            epoch: self.epoch.checked_add(other.epoch)?,
        })
    }
}

impl Timestamp for Time {
    type Summary = TimeSummary;
    fn minimum() -> Self {
        Time::default()
    }
}

/// Differential dataflow's lattice: the order is total, so join and meet are max and min.
impl differential_dataflow::lattice::Lattice for Time {
    fn join(&self, other: &Self) -> Self {
        *self.max(other)
    }
    fn meet(&self, other: &Self) -> Self {
        *self.min(other)
    }
}

impl Refines<()> for Time {
    fn to_inner(_: ()) -> Self {
        Time::default()
    }
    fn to_outer(self) {}
    fn summarize(_: TimeSummary) {}
}

/// Checks that a column can hold event time: a timestamp of any unit, or Int64 milliseconds.
pub fn event_time_type_check(data_type: &DataType, column: &str) -> Result<()> {
    match data_type {
        DataType::Timestamp(..) | DataType::Int64 => Ok(()),
        other => Err(Error::Plan(format!(
            "event time column '{column}' is {other}: it must be a timestamp or Int64 milliseconds"
        ))),
    }
}

/// Event times as milliseconds.
pub fn event_millis(
    column: &ArrayRef,
) -> std::result::Result<Int64Array, arrow::error::ArrowError> {
    let millis = match column.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Int64 => Arc::clone(column),
        DataType::Timestamp(_, tz) => cast(
            column,
            &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
        )?,
        other => {
            return Err(arrow::error::ArrowError::InvalidArgumentError(format!(
                "{other} is not an event time"
            )));
        }
    };
    Ok(cast(&millis, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_watermark_first() {
        assert!(Time::new(1, 100).less_than(&Time::new(2, 0)));
        assert!(Time::new(2, 0).less_than(&Time::new(2, 1)));
        assert!(!Time::new(3, 0).less_equal(&Time::new(2, 9)));
    }
}
