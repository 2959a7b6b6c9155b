//! Actors: stateful operators written as a Rust type, with keyed state that can be
//! snapshotted and restored by key-group range.
//!
//! An [`Actor`] sees the records of a keyed stream one at a time, each with the state of its
//! key (any serde type, created with `Default` on a key's first record), and emits records of
//! its output type. The engine keeps the states, grouped by key group, so that they can be
//! written out ([`ActorOperator::snapshot`]) and read back ([`ActorOperator::restore`]) by
//! ranges of key groups: the unit in which checkpoints and rescaling will move state.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use serde::Serialize;
use serde::de::DeserializeOwned;
use streamrun_engine::{
    Collector, Error, KEY_GROUPS, Operator, OperatorFactory, Result, WorkerContext, column_indices,
    key_group, key_hash,
};

use crate::typed::{Shape, decode, encode, input_shape, shape_of, shape_schema};

/// A stateful operator over a keyed stream.
pub trait Actor: Send + 'static {
    /// The records it reads (a serde struct whose fields name columns).
    type Input: DeserializeOwned + 'static;
    /// The records it emits.
    type Output: Serialize + DeserializeOwned + 'static;
    /// The state it keeps per key.
    type State: Serialize + DeserializeOwned + Default + 'static;

    /// Handles one record, with the state of its key.
    fn on_record(
        &mut self,
        state: &mut Self::State,
        record: Self::Input,
        out: &mut Vec<Self::Output>,
    );
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
        let converter = RowConverter::new(
            key_indices
                .iter()
                .map(|&i| SortField::new(input.field(i).data_type().clone()))
                .collect(),
        )
        .map_err(|e| Error::arrow("actor keys", e))?;
        let output_shape = shape_of::<A::Output>(&self.name)?;
        Ok(ActorInstance {
            name: self.name.clone(),
            actor: (self.make)(),
            key_indices,
            converter,
            input_shape: input_shape::<A::Input>(&self.name, input)?,
            output_schema: shape_schema(&output_shape),
            output_shape,
            groups: BTreeMap::new(),
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
}

/// A snapshot: key group → (key in Arrow's row format, state).
type Snapshot<S> = BTreeMap<u32, Vec<(Vec<u8>, S)>>;

/// One worker's actor and the states of its keys.
pub struct ActorInstance<A: Actor> {
    name: String,
    actor: A,
    key_indices: Vec<usize>,
    converter: RowConverter,
    input_shape: Shape,
    output_shape: Shape,
    output_schema: SchemaRef,
    /// Key group → key (Arrow row format) → state.
    groups: BTreeMap<u32, HashMap<Vec<u8>, A::State>>,
}

impl<A: Actor> ActorInstance<A> {
    /// The states of the key groups in `groups`, serialized.
    pub fn snapshot(&self, groups: Range<u32>) -> Result<Vec<u8>> {
        let part: Snapshot<&A::State> = self
            .groups
            .range(groups)
            .map(|(g, states)| (*g, states.iter().map(|(k, s)| (k.clone(), s)).collect()))
            .collect();
        serde_json::to_vec(&part)
            .map_err(|e| Error::Internal(format!("snapshot of actor '{}': {e}", self.name)))
    }

    /// Adds the states of a snapshot, replacing those of the same keys.
    pub fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        let part: Snapshot<A::State> = serde_json::from_slice(snapshot).map_err(|e| {
            Error::Input(format!(
                "snapshot of actor '{}' is unreadable: {e}",
                self.name
            ))
        })?;
        for (group, states) in part {
            if group >= KEY_GROUPS {
                return Err(Error::Input(format!(
                    "snapshot names key group {group} (there are {KEY_GROUPS})"
                )));
            }
            self.groups.entry(group).or_default().extend(states);
        }
        Ok(())
    }

    /// How many keys have state.
    pub fn keys(&self) -> usize {
        self.groups.values().map(HashMap::len).sum()
    }
}

impl<A: Actor> Operator for ActorInstance<A> {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let columns: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        let keys = self
            .converter
            .convert_columns(&columns)
            .map_err(|e| Error::arrow("actor keys", e))?;
        let records: Vec<A::Input> = decode(&self.name, &self.input_shape, &batch)?;
        let mut emitted = Vec::new();
        for (record, key) in records.into_iter().zip(keys.iter()) {
            // The engine's routing hash, so a worker holds the states of its own key groups.
            let group = key_group(key_hash(key.as_ref()));
            let state = self
                .groups
                .entry(group)
                .or_default()
                .entry(key.as_ref().to_vec())
                .or_default();
            self.actor.on_record(state, record, &mut emitted);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use serde::Deserialize;
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
        fn on_record(&mut self, state: &mut Totals, e: Event, out: &mut Vec<Running>) {
            state.events += 1;
            state.total += e.amount;
            out.push(Running {
                user: e.user,
                events: state.events,
                total: state.total,
            });
        }
    }

    fn batch(rows: &[(&str, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("amount", DataType::Int64, false),
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
}
