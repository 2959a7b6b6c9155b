//! # streamrun-engine
//!
//! The engine of Streamrun: the logical plan a job declares, the compiler that turns it into
//! a physical plan of fused stages, and the executor that runs that plan on timely dataflow
//! workers, with Arrow [`RecordBatch`](arrow::array::RecordBatch)es on every edge.
//!
//! ```text
//!  JobGraph (LogicalPlan + code)        compile()              execute()
//!  source ─ task ─ key_by ─ count ─ sink ───► stage 0: source > task > count(partial)
//!                                                 │ Hash(word)
//!                                             stage 1: count(final) > sink   ───► timely workers
//! ```
//!
//! The engine names no concrete connector or operator: it defines the contracts
//! ([`Source`], [`Sink`], [`Operator`], [`OperatorFactory`]) and executes whatever implements
//! them. Users reach it through the `streamrun` crate's `Job` DSL; this crate is for the
//! authors of operators and connectors.
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
//! use streamrun_engine::*;
//!
//! /// A source of the numbers 0..10, split across workers.
//! struct Numbers;
//! struct NumbersReader { batch: Option<RecordBatch> }
//! fn schema() -> SchemaRef { Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)])) }
//! impl Source for Numbers {
//!     fn schema(&self) -> Result<SchemaRef> { Ok(schema()) }
//!     fn open(&self, ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
//!         let mine: Vec<i64> = (0..10).filter(|n| *n as usize % ctx.workers == ctx.index).collect();
//!         let batch = RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(mine))])
//!             .map_err(|e| Error::arrow("numbers", e))?;
//!         Ok(Box::new(NumbersReader { batch: Some(batch) }))
//!     }
//! }
//! impl SourceReader for NumbersReader {
//!     fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
//!         if let Some(b) = self.batch.take() { out.emit(b, 0); }
//!         Ok(false)
//!     }
//! }
//! /// A sink that ignores what it gets.
//! struct Discard;
//! impl Sink for Discard {
//!     fn open(&self, _: &WorkerContext, _: &SchemaRef) -> Result<Box<dyn SinkWriter>> { Ok(Box::new(Discard)) }
//! }
//! impl SinkWriter for Discard {
//!     fn write(&mut self, _: &RecordBatch) -> Result<()> { Ok(()) }
//!     fn finish(&mut self) -> Result<()> { Ok(()) }
//! }
//!
//! let mut graph = JobGraph::new("numbers");
//! let src = graph.add_source("numbers", SourceDecl {
//!     descriptor: Descriptor::new("numbers", serde_json::Value::Null),
//!     source: Arc::new(Numbers), on_bad_record: BadRecordPolicy::Fail, dead_letters: None,
//!     event_time: None,
//! });
//! graph.add_sink(src, "discard", Descriptor::new("discard", serde_json::Value::Null), Arc::new(Discard));
//! let report = execute(&graph, &ExecOptions::new(2))?;
//! assert_eq!((report.records_in, report.records_out), (10, 10));
//! # Ok::<(), streamrun_engine::Error>(())
//! ```

mod batch;
mod compile;
mod connector;
mod error;
mod exec;
pub mod explain;
mod operator;
mod partitions;
mod plan;
mod time;

pub use batch::{
    Batch, ExchangeStore, KEY_GROUPS, column_indices, column_list, exchanged_through_store,
    hash_rows, key_group, key_hash, set_exchange_store, split_by_hash, worker_key_groups,
    worker_of_group,
};
pub use compile::{
    PHYSICAL_PLAN_VERSION, PhysicalOp, PhysicalPlan, Role, Stage, StageInput, compile,
};
pub use connector::{
    BadRecordPolicy, DeadLetter, Parallelism, Sink, SinkWriter, Source, SourceCollector,
    SourceReader,
};
pub use error::{Error, Fault, Result};
pub use exec::{
    Cluster, ExecOptions, JobReport, MAX_EPOCHS_IN_FLIGHT, Metrics, READS_PER_ACTIVATION, execute,
    execute_plan,
};
pub use operator::{
    Collector, DataStream, DataflowOperator, Failures, JoinOperator, JoinOperatorFactory, Operator,
    OperatorFactory, Side, WorkerContext,
};
pub use plan::{
    Descriptor, EventTimeSpec, JobGraph, LOGICAL_PLAN_VERSION, LogicalNode, LogicalPlan, NodeId,
    NodeImpl, NodeKind, OperatorDecl, Partitioning, SourceDecl,
};
pub use time::{Time, TimeSummary, event_millis, event_time_type_check};
