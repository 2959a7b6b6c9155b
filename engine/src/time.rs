//! The dataflow's timestamp: an event-time watermark, then a read epoch, ordered
//! lexicographically.
//!
//! A message travels at `Time { watermark, epoch }`: every record it carries has an event
//! time at or after `watermark`, and `epoch` counts its source's reads. Frontiers then give
//! both things the engine needs: the watermark an operator may rely on (the first component
//! of its input frontier), and progress that moves even while the watermark stands still (the
//! second), which source pacing waits on. Jobs without event time keep the watermark at 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Epochs an idle source worker moves ahead of the process's clock: room for that many reads
/// of the other workers before it has to move again.
pub(crate) const EPOCH_JUMP: u64 = 1024;

/// The read epochs of one job's source workers in this process.
///
/// Pacing compares a source worker's epochs with the frontier of the job's outputs, which
/// every source worker holds back: a worker that stops reading without finishing holds it at
/// its epoch. Were epochs counted per worker, the others would then stop
/// `MAX_EPOCHS_IN_FLIGHT` reads later and, if the idle one waits for them to finish (the
/// workers of one crawl), never go on. So the workers' epochs follow one clock: a read takes
/// the next epoch of the clock when the clock is ahead of the worker, and a worker that read
/// nothing moves [`EPOCH_JUMP`] epochs past the clock whenever the clock comes within half of
/// that of it. Jumps do not move the clock, so workers that all read nothing stop moving.
#[derive(Debug, Default)]
pub(crate) struct EpochClock {
    /// One past the latest epoch read by any source worker of the job in this process.
    next: AtomicU64,
}

impl EpochClock {
    /// The epoch after a read at `epoch`.
    pub(crate) fn after_read(&self, epoch: u64) -> u64 {
        let next = epoch.saturating_add(1);
        self.next.fetch_max(next, Ordering::SeqCst).max(next)
    }

    /// The epoch a worker at `epoch` that read nothing moves to, if it should move.
    pub(crate) fn after_idle(&self, epoch: u64) -> Option<u64> {
        let next = self.next.load(Ordering::SeqCst);
        (next.saturating_add(EPOCH_JUMP / 2) > epoch).then(|| next.saturating_add(EPOCH_JUMP))
    }
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

    #[test]
    fn idle_workers_jump_past_the_clock_once_and_readers_follow_the_clock() {
        let clock = EpochClock::default();
        // Idle at the start: one jump, then none while nobody reads.
        assert_eq!(clock.after_idle(0), Some(EPOCH_JUMP));
        assert_eq!(clock.after_idle(EPOCH_JUMP), None);
        // Another worker reads on; the idle one moves again once the clock comes within
        // half a jump of it.
        let mut busy = 0;
        for _ in 0..EPOCH_JUMP / 2 {
            busy = clock.after_read(busy);
        }
        assert_eq!(busy, EPOCH_JUMP / 2);
        assert_eq!(clock.after_idle(EPOCH_JUMP), None);
        busy = clock.after_read(busy);
        assert_eq!(clock.after_idle(EPOCH_JUMP), Some(busy + EPOCH_JUMP));
        // The idle worker reads at its epoch, far ahead: the busy one follows it there.
        let idle = clock.after_read(busy + EPOCH_JUMP);
        assert_eq!(clock.after_read(busy), idle);
    }
}
