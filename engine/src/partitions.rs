//! The watermarks of a source's partitions, shared by its workers, so that an idle partition
//! can stop holding every window back.
//!
//! A timely frontier is the least time any worker still holds. A partition with no data
//! holds its source's watermark where its last record left it, and with it every window
//! downstream. After the source's idle timeout, such a partition declares itself idle and
//! moves its watermark up to the least watermark of the partitions that are still active
//! (Flink's "idleness"): it then no longer decides the frontier. When data comes back, the
//! partition is active again; records behind the watermark it moved to are late, as any
//! others. With every partition idle or finished, no watermark moves.
//!
//! The table lives in the job's process: it covers the workers of one process, which is
//! every worker of an embedded job.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// A partition's state in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum PartitionState {
    /// Reading data: its watermark bounds the others'.
    Active = 0,
    /// Without data for longer than the idle timeout.
    Idle = 1,
    /// Its share of the input is read: it holds nothing back.
    Done = 2,
}

#[derive(Debug, Default)]
struct Slot {
    watermark: AtomicU64,
    state: AtomicU8,
}

/// One source's partitions: a watermark and a state per worker.
#[derive(Debug)]
pub(crate) struct Partitions {
    slots: Vec<Slot>,
}

impl Partitions {
    /// A table for `workers` partitions, all active at watermark 0.
    pub(crate) fn new(workers: usize) -> Self {
        Partitions {
            slots: (0..workers).map(|_| Slot::default()).collect(),
        }
    }

    /// Records partition `index`'s watermark and state.
    pub(crate) fn publish(&self, index: usize, watermark: u64, state: PartitionState) {
        if let Some(slot) = self.slots.get(index) {
            slot.watermark.store(watermark, Ordering::Release);
            slot.state.store(state as u8, Ordering::Release);
        }
    }

    /// The watermark an idle partition `index` may move to: the least watermark of the
    /// other active partitions, if any is active.
    pub(crate) fn idle_target(&self, index: usize) -> Option<u64> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, slot)| {
                *i != index && slot.state.load(Ordering::Acquire) == PartitionState::Active as u8
            })
            .map(|(_, slot)| slot.watermark.load(Ordering::Acquire))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_partition_follows_the_least_active_one() {
        let table = Partitions::new(3);
        table.publish(0, 500, PartitionState::Active);
        table.publish(1, 100, PartitionState::Idle);
        table.publish(2, 900, PartitionState::Active);
        assert_eq!(table.idle_target(1), Some(500));
        table.publish(0, 700, PartitionState::Done);
        assert_eq!(table.idle_target(1), Some(900));
        table.publish(2, 900, PartitionState::Idle);
        assert_eq!(table.idle_target(1), None, "nobody active: nothing moves");
    }
}
