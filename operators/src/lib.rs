//! # streamrun-operators
//!
//! The operators of Streamrun, all working on Arrow batches:
//!
//! | operator | what it does |
//! |---|---|
//! | [`TypedTask`] | `map` / `flat_map` / `filter` closures over your serde types |
//! | [`MapBatches`] | a function from batch to batch |
//! | [`Select`], [`Compare`] | keep columns; keep rows where `column <op> value` |
//! | [`SplitWords`] | one row per normalised word of a text column |
//! | [`Aggregate`] | keyed `count`/`sum`/`min`/`max`/`mean`, in partial and final phases |
//! | [`UdafAggregate`] | your [`AggregateFunction`] over a column, per key |
//! | [`TopK`] | the k greatest rows by a column |
//! | [`ActorOperator`] | your [`Actor`]: a stateful operator with keyed state and timers, snapshotted by key group |
//! | [`WindowAggregate`] | keyed aggregates per tumbling or sliding event-time window |
//! | [`SessionAggregate`] | keyed aggregates per session (records closer than a gap) |
//! | [`WindowJoin`] | inner or semi join of two keyed streams within tumbling windows |
//! | [`IntervalJoin`] | inner join of two keyed streams on `right.t - left.t` within bounds |
//! | [`StreamJoin`] | inner join of two keyed streams over everything seen so far |
//! | [`ConnectedComponents`] | incremental connected components (differential `iterate`) |
//! | [`PageRank`] | incremental PageRank in whole surfers, a fixed number of rounds (differential `iterate`) |
//! | [`IncrementalCount`] | rows per key as a change stream (differential `count`) |
//! | [`IncrementalDistinct`], [`IncrementalReduce`], [`IncrementalJoin`] | `distinct`, keyed sum/min/max and equi-join of changing collections (differential) |
//!
//! Each implements the engine's [`OperatorFactory`](streamrun_engine::OperatorFactory). Most
//! users meet them through the `streamrun` crate's DSL (`stream.key_by("word").count()`); here
//! is one used directly:
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{RecordBatch, StringArray};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use streamrun_engine::{Collector, OperatorFactory, WorkerContext};
//! use streamrun_operators::{Agg, Aggregate};
//!
//! let schema = Arc::new(Schema::new(vec![Field::new("word", DataType::Utf8, false)]));
//! let words = RecordBatch::try_new(schema.clone(),
//!     vec![Arc::new(StringArray::from(vec!["a", "b", "a"]))])?;
//! let count = Aggregate::new(vec!["word".into()], vec![Agg::count()]);
//! let ctx = WorkerContext { job: "doc".into(), index: 0, workers: 1, local_workers: 1 };
//! let mut op = count.create(&ctx, &schema)?;
//! let mut out = Collector::new();
//! op.process_batch(words, &mut out)?;
//! op.finish(&mut out)?;
//! let result = out.take();
//! assert_eq!(result[0].num_rows(), 2); // a → 2, b → 1
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod actor;
mod aggregate;
mod batchfn;
mod incremental;
mod interval;
mod join;
mod keys;
mod relational;
mod select;
mod session;
mod state;
mod topk;
mod typed;
mod udaf;
mod window;
mod windowing;
mod words;

pub use actor::{Actor, ActorInstance, ActorOperator, KeyContext};
pub use aggregate::{Agg, AggFn, Aggregate, DEFAULT_MAX_PARTIAL_GROUPS, Phase};
pub use batchfn::MapBatches;
pub use incremental::{ConnectedComponents, IncrementalCount, PageRank};
pub use interval::IntervalJoin;
pub use join::{JoinKind, StreamJoin, WindowJoin};
pub use relational::{IncrementalDistinct, IncrementalJoin, IncrementalReduce};
pub use select::{CmpOp, Compare, Select, project_schema};
pub use session::SessionAggregate;
pub use state::{KeyedState, ListState, MapState, Snapshot, ValueState};
pub use topk::TopK;
pub use typed::{TypedTask, plain_field};
pub use udaf::{AggregateFunction, UdafAggregate};
pub use window::{WindowAggregate, WindowArgMax};
pub use words::{SplitWords, push_words};
