//! Actors: stateful operators written as a Rust type, with keyed state and event-time timers
//! that can be snapshotted and restored by key-group range.
//!
//! An [`Actor`] sees the records of a keyed stream one at a time, each with a [`KeyContext`]:
//! the state of its key (any serde type, usually built from [`ValueState`](crate::ValueState),
//! [`ListState`](crate::ListState) and [`MapState`](crate::MapState), created with `Default`
//! on a key's first record) and that key's timers. A timer set for event time `t` fires, with
//! the key's state, once the watermark has passed `t`: every record at or before `t` has
//! been seen. The engine keeps states and timers in a [`KeyedState`] grouped by key group, so
//! that they can be written out ([`Snapshot::snapshot`]) and read back
//! ([`Snapshot::restore`]) by ranges of key groups: the unit in which checkpoints and
//! rescaling will move state.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::row::RowConverter;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    Collector, Operator, OperatorFactory, Result, WorkerContext, column_indices,
};

use crate::keys::{key_converter, key_rows};
use crate::state::{KeyedState, Snapshot};
use crate::typed::{Shape, decode, encode, input_shape, shape_of, shape_schema};

/// A stateful operator over a keyed stream.
pub trait Actor: Send + 'static {
    /// The records it reads (a serde struct whose fields name columns).
    type Input: DeserializeOwned + 'static;
    /// The records it emits.
    type Output: Serialize + DeserializeOwned + 'static;
    /// The state it keeps per key.
    type State: Serialize + DeserializeOwned + Default + 'static;

    /// Handles one record, with the state and timers of its key.
    fn on_record(
        &mut self,
        key: &mut KeyContext<'_, Self::State>,
        record: Self::Input,
        out: &mut Vec<Self::Output>,
    );

    /// A timer of this key, set for event time `time`, fired: the watermark has passed it.
    /// Timers that are still pending when the input ends fire then, in time order.
    fn on_timer(
        &mut self,
        _key: &mut KeyContext<'_, Self::State>,
        _time: u64,
        _out: &mut Vec<Self::Output>,
    ) {
    }

    /// The watermark advanced to `watermark` (ms): no record before it will come.
    fn on_watermark(&mut self, _watermark: u64, _out: &mut Vec<Self::Output>) {}
}

/// What an actor's handler may do with the key it handles: read and change its state, set
/// and delete its timers, and drop it altogether.
pub struct KeyContext<'a, S> {
    state: &'a mut S,
    timers: &'a mut BTreeSet<u64>,
    watermark: u64,
    clear: bool,
}

impl<S: Default> KeyContext<'_, S> {
    /// The key's state.
    pub fn state(&mut self) -> &mut S {
        self.clear = false;
        self.state
    }

    /// Sets a timer that fires once the watermark passes `time` (ms). A key has at most one
    /// timer per time; a timer at or behind the watermark fires at the next watermark.
    pub fn set_timer(&mut self, time: u64) {
        self.timers.insert(time);
    }

    /// Deletes the timer set for `time`, if there is one.
    pub fn delete_timer(&mut self, time: u64) {
        self.timers.remove(&time);
    }

    /// The key's pending timers, earliest first.
    pub fn timers(&self) -> impl Iterator<Item = u64> + '_ {
        self.timers.iter().copied()
    }

    /// The watermark (ms) as of this call: records before it no longer come.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Resets the key's state to its default and, unless timers remain, forgets the key: how
    /// an actor keeps its memory bounded by the keys that are live.
    pub fn clear(&mut self) {
        *self.state = S::default();
        self.clear = true;
    }
}

/// The state and pending timers of one key.
#[derive(Serialize, Deserialize, Default)]
struct Entry<S> {
    state: S,
    timers: BTreeSet<u64>,
}

/// Runs an [`Actor`] as an operator; `make` builds one actor per worker.
pub struct ActorOperator<A: Actor> {
    name: String,
    keys: Vec<String>,
    make: Arc<dyn Fn() -> A + Send + Sync>,
    _actor: PhantomData<fn() -> A>,
}

impl<A: Actor> ActorOperator<A> {
    /// The actor `name` over a stream keyed by `keys`.
    pub fn new(
        name: &str,
        keys: Vec<String>,
        make: impl Fn() -> A + Send + Sync + 'static,
    ) -> Self {
        ActorOperator {
            name: name.to_owned(),
            keys,
            make: Arc::new(make),
            _actor: PhantomData,
        }
    }

    /// A running instance, for driving an actor directly (tests, and the engine).
    pub fn instance(&self, input: &SchemaRef) -> Result<ActorInstance<A>> {
        let key_indices = column_indices(input, &self.keys, &format!("actor '{}' key", self.name))?;
        let converter = key_converter(input, &key_indices, "actor")?;
        let output_shape = shape_of::<A::Output>(&self.name)?;
        Ok(ActorInstance {
            name: self.name.clone(),
            actor: (self.make)(),
            key_indices,
            converter,
            input_shape: input_shape::<A::Input>(&self.name, input)?,
            output_schema: shape_schema(&output_shape),
            output_shape,
            keyed: KeyedState::new(&self.name),
            timers: BTreeSet::new(),
            watermark: 0,
        })
    }
}

impl<A: Actor> OperatorFactory for ActorOperator<A> {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(self.instance(input)?.output_schema)
    }

    fn create(&self, _ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(self.instance(input)?))
    }

    /// Timers emit when the watermark passes them, and at the end of the input.
    fn is_blocking(&self) -> bool {
        true
    }
}

/// One worker's actor and the states and timers of its keys.
pub struct ActorInstance<A: Actor> {
    name: String,
    actor: A,
    key_indices: Vec<usize>,
    converter: RowConverter,
    input_shape: Shape,
    output_shape: Shape,
    output_schema: SchemaRef,
    /// Key (Arrow row format) → state and timers, by key group.
    keyed: KeyedState<Entry<A::State>>,
    /// Every pending timer as (time, key), in firing order.
    timers: BTreeSet<(u64, Vec<u8>)>,
    watermark: u64,
}

impl<A: Actor> ActorInstance<A> {
    /// The states and timers of the key groups in `groups`, serialized.
    pub fn snapshot(&self, groups: Range<u32>) -> Result<Vec<u8>> {
        self.keyed.snapshot(groups)
    }

    /// Adds the states and timers of a snapshot, replacing those of the same keys.
    pub fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        self.keyed.restore(snapshot)?;
        self.timers = self
            .keyed
            .iter()
            .flat_map(|(key, entry)| entry.timers.iter().map(|t| (*t, key.to_vec())))
            .collect();
        Ok(())
    }

    /// How many keys have state.
    pub fn keys(&self) -> usize {
        self.keyed.len()
    }

    /// Calls `handler` with the context of `key`, then files the key's timers and drops the
    /// key if the handler cleared it.
    fn with_key(
        &mut self,
        key: &[u8],
        handler: impl FnOnce(&mut A, &mut KeyContext<'_, A::State>),
    ) {
        let entry = self.keyed.get_or_default(key);
        let before = entry.timers.clone();
        let mut ctx = KeyContext {
            state: &mut entry.state,
            timers: &mut entry.timers,
            watermark: self.watermark,
            clear: false,
        };
        handler(&mut self.actor, &mut ctx);
        let clear = ctx.clear;
        for t in before.difference(&entry.timers) {
            self.timers.remove(&(*t, key.to_vec()));
        }
        for t in entry.timers.difference(&before) {
            self.timers.insert((*t, key.to_vec()));
        }
        if clear && entry.timers.is_empty() {
            self.keyed.remove(key);
        }
    }

    /// Fires the timers before `limit` (all of them when `None`), earliest first, including
    /// timers the handlers set meanwhile.
    fn fire(&mut self, limit: Option<u64>, emitted: &mut Vec<A::Output>) {
        while let Some((time, _)) = self.timers.first()
            && limit.is_none_or(|l| *time < l)
        {
            let Some((time, key)) = self.timers.pop_first() else {
                break;
            };
            if let Some(entry) = self.keyed.get_mut(&key) {
                entry.timers.remove(&time);
            }
            self.with_key(&key, |actor, ctx| actor.on_timer(ctx, time, emitted));
        }
    }

    fn emit(&self, emitted: Vec<A::Output>, out: &mut Collector) -> Result<()> {
        if !emitted.is_empty() {
            out.emit(encode(
                &self.name,
                &self.output_shape,
                &self.output_schema,
                emitted,
            )?);
        }
        Ok(())
    }
}

impl<A: Actor> Operator for ActorInstance<A> {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let keys = key_rows(&self.converter, &batch, &self.key_indices, "actor")?;
        let records: Vec<A::Input> = decode(&self.name, &self.input_shape, &batch)?;
        let mut emitted = Vec::new();
        for (record, key) in records.into_iter().zip(keys.iter()) {
            // Keys are filed under the engine's routing hash, so a worker holds the states
            // of its own key groups.
            self.with_key(key.as_ref(), |actor, ctx| {
                actor.on_record(ctx, record, &mut emitted)
            });
        }
        self.emit(emitted, out)
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Collector) -> Result<()> {
        self.watermark = self.watermark.max(watermark);
        let mut emitted = Vec::new();
        self.fire(Some(self.watermark), &mut emitted);
        self.actor.on_watermark(self.watermark, &mut emitted);
        self.emit(emitted, out)
    }

    /// What a pending timer emits is at its time or after.
    fn hold(&self) -> Option<u64> {
        self.timers.first().map(|(t, _)| *t)
    }

    fn finish(&mut self, out: &mut Collector) -> Result<()> {
        let mut emitted = Vec::new();
        self.fire(None, &mut emitted);
        self.emit(emitted, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MapState, ValueState};
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::collections::HashMap;
    use streamrun_engine::worker_key_groups;

    #[derive(Deserialize)]
    struct Event {
        user: String,
        amount: i64,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Running {
        user: String,
        events: i64,
        total: i64,
    }

    #[derive(Serialize, Deserialize, Default)]
    struct Totals {
        events: i64,
        total: i64,
    }

    /// Emits each user's running count and total.
    struct RunningTotals;

    impl Actor for RunningTotals {
        type Input = Event;
        type Output = Running;
        type State = Totals;
        fn on_record(
            &mut self,
            key: &mut KeyContext<'_, Totals>,
            e: Event,
            out: &mut Vec<Running>,
        ) {
            let state = key.state();
            state.events += 1;
            state.total += e.amount;
            out.push(Running {
                user: e.user,
                events: state.events,
                total: state.total,
            });
        }
    }

    /// A batch of `user` and a second Int64 column named `second`.
    fn user_rows(second: &str, rows: &[(&str, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new(second, DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .expect("batch")
    }

    fn batch(rows: &[(&str, i64)]) -> RecordBatch {
        user_rows("amount", rows)
    }

    fn outputs(
        instance: &mut ActorInstance<RunningTotals>,
        batches: &[RecordBatch],
    ) -> Vec<Running> {
        let mut out = Collector::new();
        for b in batches {
            instance
                .process_batch(b.clone(), &mut out)
                .expect("process");
        }
        out.take()
            .iter()
            .flat_map(|b| serde_arrow::from_record_batch::<Vec<Running>>(b).expect("decode"))
            .collect()
    }

    #[test]
    fn snapshot_restore_and_continue_equals_an_uninterrupted_run() {
        let users = ["ann", "bob", "cy", "dee", "eve", "fay", "gus"];
        let batches: Vec<RecordBatch> = (0..10)
            .map(|b| {
                let rows: Vec<(&str, i64)> = (0..30)
                    .map(|i| (users[(b * 7 + i * 3) % users.len()], (b * 30 + i) as i64))
                    .collect();
                batch(&rows)
            })
            .collect();
        let op = ActorOperator::new("totals", vec!["user".into()], || RunningTotals);
        let schema = batches[0].schema();

        let mut whole = op.instance(&schema).expect("instance");
        let expected = outputs(&mut whole, &batches);

        let mut first = op.instance(&schema).expect("instance");
        let mut got = outputs(&mut first, &batches[..4]);
        // Snapshot by the key-group ranges of three workers, restore them all into a new
        // instance, and go on.
        let snapshots: Vec<Vec<u8>> = (0..3)
            .map(|w| first.snapshot(worker_key_groups(w, 3)).expect("snapshot"))
            .collect();
        let mut second = op.instance(&schema).expect("instance");
        for s in &snapshots {
            second.restore(s).expect("restore");
        }
        assert_eq!(second.keys(), first.keys());
        got.extend(outputs(&mut second, &batches[4..]));
        assert_eq!(got, expected);
    }

    #[test]
    fn a_range_snapshot_holds_only_its_key_groups() {
        let op = ActorOperator::new("totals", vec!["user".into()], || RunningTotals);
        let b = batch(&[("ann", 1), ("bob", 2), ("cy", 3), ("dee", 4)]);
        let mut instance = op.instance(&b.schema()).expect("instance");
        outputs(&mut instance, std::slice::from_ref(&b));
        let halves = [worker_key_groups(0, 2), worker_key_groups(1, 2)];
        let counts: Vec<usize> = halves
            .iter()
            .map(|range| {
                let mut fresh = op.instance(&b.schema()).expect("instance");
                fresh
                    .restore(&instance.snapshot(range.clone()).expect("snapshot"))
                    .expect("restore");
                fresh.keys()
            })
            .collect();
        assert_eq!(counts.iter().sum::<usize>(), 4);
        assert!(instance.restore(b"not a snapshot").is_err());
    }

    #[derive(Deserialize)]
    struct Click {
        user: String,
        t: i64,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
    struct SecondCount {
        user: String,
        start: i64,
        clicks: i64,
    }

    #[derive(Serialize, Deserialize, Default)]
    struct PerSecond {
        user: ValueState<String>,
        counts: MapState<i64, i64>,
    }

    /// Tumbling one-second click counts per user, written with timers.
    struct ClicksPerSecond;

    impl Actor for ClicksPerSecond {
        type Input = Click;
        type Output = SecondCount;
        type State = PerSecond;
        fn on_record(
            &mut self,
            key: &mut KeyContext<'_, PerSecond>,
            c: Click,
            _: &mut Vec<SecondCount>,
        ) {
            let start = c.t - c.t % 1000;
            let state = key.state();
            state.user.get_or_insert_with(|| c.user.clone());
            *state.counts.get_or_default(start) += 1;
            key.set_timer((start + 999) as u64);
        }
        fn on_timer(
            &mut self,
            key: &mut KeyContext<'_, PerSecond>,
            time: u64,
            out: &mut Vec<SecondCount>,
        ) {
            let start = time as i64 - 999;
            let state = key.state();
            if let (Some(clicks), Some(user)) = (state.counts.remove(&start), state.user.get()) {
                out.push(SecondCount {
                    user: user.clone(),
                    start,
                    clicks,
                });
            }
            if state.counts.is_empty() {
                key.clear();
            }
        }
    }

    fn clicks(rows: &[(&str, i64)]) -> RecordBatch {
        user_rows("t", rows)
    }

    /// Feeds batch `i` then the watermark `watermarks[i]`, collecting what comes out.
    fn drive(
        instance: &mut ActorInstance<ClicksPerSecond>,
        batches: &[(RecordBatch, u64)],
        finish: bool,
    ) -> Vec<SecondCount> {
        let mut out = Collector::new();
        for (b, watermark) in batches {
            instance
                .process_batch(b.clone(), &mut out)
                .expect("process");
            instance
                .on_watermark(*watermark, &mut out)
                .expect("watermark");
        }
        if finish {
            instance.finish(&mut out).expect("finish");
        }
        out.take()
            .iter()
            .flat_map(|b| serde_arrow::from_record_batch::<Vec<SecondCount>>(b).expect("decode"))
            .collect()
    }

    #[test]
    fn timers_fire_once_the_watermark_passes_and_survive_a_snapshot() {
        let users = ["ann", "bob", "cy", "dee"];
        // Out of order within 1.5 s; the watermark trails the latest time by that.
        let mut latest = 0;
        let batches: Vec<(RecordBatch, u64)> = (0..12i64)
            .map(|b| {
                let rows: Vec<(&str, i64)> = (0..25i64)
                    .map(|i| {
                        let t = b * 700 + (i * 389) % 1500;
                        (users[((b + i * 3) % 4) as usize], t)
                    })
                    .collect();
                latest = rows.iter().map(|r| r.1).max().unwrap_or(0).max(latest);
                (clicks(&rows), (latest - 1500).max(0) as u64)
            })
            .collect();
        let mut expected: HashMap<(String, i64), i64> = HashMap::new();
        for (b, _) in &batches {
            let user = b
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("user");
            let t = b
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("t");
            for r in 0..b.num_rows() {
                *expected
                    .entry((user.value(r).to_owned(), t.value(r) - t.value(r) % 1000))
                    .or_default() += 1;
            }
        }
        let op = ActorOperator::new("clicks", vec!["user".into()], || ClicksPerSecond);
        let schema = batches[0].0.schema();

        let mut whole = op.instance(&schema).expect("instance");
        let mut uninterrupted = drive(&mut whole, &batches[..6], false);
        assert!(!uninterrupted.is_empty(), "some timers fire before the end");
        assert!(
            whole.hold().is_some(),
            "pending timers hold the output back"
        );
        uninterrupted.extend(drive(&mut whole, &batches[6..], true));
        assert_eq!(whole.keys(), 0, "cleared keys are forgotten");
        let got: HashMap<(String, i64), i64> = uninterrupted
            .iter()
            .map(|c| ((c.user.clone(), c.start), c.clicks))
            .collect();
        assert_eq!(got.len(), uninterrupted.len(), "each second emitted once");
        assert_eq!(got, expected);

        let mut first = op.instance(&schema).expect("instance");
        let mut resumed = drive(&mut first, &batches[..6], false);
        let mut second = op.instance(&schema).expect("instance");
        for w in 0..3 {
            second
                .restore(&first.snapshot(worker_key_groups(w, 3)).expect("snapshot"))
                .expect("restore");
        }
        assert_eq!(second.hold(), first.hold(), "timers restored");
        second
            .on_watermark(batches[5].1, &mut Collector::new())
            .expect("watermark");
        resumed.extend(drive(&mut second, &batches[6..], true));
        resumed.sort();
        uninterrupted.sort();
        assert_eq!(resumed, uninterrupted);
    }
}
