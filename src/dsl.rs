//! The Job DSL: lazy handles that declare a job graph; nothing runs until [`crate::execute`].

use std::sync::{Arc, Mutex, MutexGuard};

use arrow::array::RecordBatch;
use serde::Serialize;
use serde::de::DeserializeOwned;
use streamrun_connectors::{Collect, FileSink, FileSource, Nexmark, Replay, Stdout};
use streamrun_engine::{
    BadRecordPolicy, Descriptor, JobGraph, LogicalPlan, NodeId, OperatorDecl, OperatorFactory,
    Parallelism, Partitioning, Sink, Source, SourceDecl,
};
use streamrun_operators::{
    Agg, Aggregate, CmpOp, Compare, JoinKind, MapBatches, Phase, Select, SessionAggregate,
    SplitWords, StreamJoin, TopK, TypedTask, WindowAggregate, WindowJoin,
};

/// A job being declared: a graph of sources, operators and sinks.
///
/// `Job` is a cheap handle (clones share the graph). Streams returned by [`Job::source`] add
/// nodes to it; [`crate::execute`] compiles and runs it.
#[derive(Clone)]
pub struct Job {
    graph: Arc<Mutex<JobGraph>>,
    /// Mistakes found while declaring (a method applied where it does not fit), reported
    /// when the job is compiled, so that declaring stays free of `?`.
    errors: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("plan", &self.plan()).finish()
    }
}

/// Anything [`Job::source`] accepts.
pub trait IntoSource {
    /// The source's plan descriptor and code.
    fn into_source(self) -> (Descriptor, Arc<dyn Source>);
}

/// `IntoSource` or `IntoSink` for connectors that describe themselves with `descriptor()`.
macro_rules! self_describing {
    ($trait:ident, $method:ident, $code:ident: $($connector:ty),+) => {
        $(impl $trait for $connector {
            fn $method(self) -> (Descriptor, Arc<dyn $code>) {
                (self.descriptor(), Arc::new(self))
            }
        })+
    };
}

self_describing!(IntoSource, into_source, Source: FileSource, Replay, Nexmark);

impl IntoSource for (Descriptor, Arc<dyn Source>) {
    fn into_source(self) -> (Descriptor, Arc<dyn Source>) {
        self
    }
}

/// Anything [`Stream::sink`] accepts.
pub trait IntoSink {
    /// The sink's plan descriptor and code.
    fn into_sink(self) -> (Descriptor, Arc<dyn Sink>);
}

self_describing!(IntoSink, into_sink, Sink: FileSink, Stdout, Collect);

impl IntoSink for (Descriptor, Arc<dyn Sink>) {
    fn into_sink(self) -> (Descriptor, Arc<dyn Sink>) {
        self
    }
}

/// Column names accepted by [`Stream::key_by`] and [`Stream::select`].
pub trait IntoColumns {
    /// The names.
    fn into_columns(self) -> Vec<String>;
}

impl IntoColumns for &str {
    fn into_columns(self) -> Vec<String> {
        vec![self.to_owned()]
    }
}

impl IntoColumns for String {
    fn into_columns(self) -> Vec<String> {
        vec![self]
    }
}

impl<const N: usize> IntoColumns for [&str; N] {
    fn into_columns(self) -> Vec<String> {
        self.iter().map(|s| (*s).to_owned()).collect()
    }
}

impl IntoColumns for &[&str] {
    fn into_columns(self) -> Vec<String> {
        self.iter().map(|s| (*s).to_owned()).collect()
    }
}

impl IntoColumns for Vec<String> {
    fn into_columns(self) -> Vec<String> {
        self
    }
}

impl Job {
    /// A new, empty job.
    pub fn new(name: &str) -> Job {
        Job {
            graph: Arc::new(Mutex::new(JobGraph::new(name))),
            errors: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Reports the first mistake made while declaring the job, if any.
    pub fn check(&self) -> streamrun_engine::Result<()> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        match errors.first() {
            Some(e) => Err(streamrun_engine::Error::Plan(e.clone())),
            None => Ok(()),
        }
    }

    fn record_error(&self, message: String) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }

    fn lock(&self) -> MutexGuard<'_, JobGraph> {
        // A poisoned lock means a panic while declaring; the graph itself is still whole
        // (every method adds one node or nothing), so go on with it.
        self.graph.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A snapshot of the graph, for the compiler and executor.
    pub fn graph(&self) -> JobGraph {
        self.lock().clone()
    }

    /// The logical plan declared so far.
    pub fn plan(&self) -> LogicalPlan {
        self.lock().plan().clone()
    }

    /// Reads `source`; records it cannot read stop the job with an error naming the place.
    pub fn source(&self, source: impl IntoSource) -> Stream {
        let (descriptor, source) = source.into_source();
        let name = descriptor.kind.clone();
        self.add_source(&name, descriptor, source, BadRecordPolicy::Fail, None)
    }

    /// Reads `source`, sending records it cannot read, with the reason, to `dead_letters`
    /// (columns `source`, `location`, `reason`, `record`) instead of failing.
    pub fn source_with_dead_letters(
        &self,
        source: impl IntoSource,
        dead_letters: impl IntoSink,
    ) -> Stream {
        let (descriptor, source) = source.into_source();
        let name = descriptor.kind.clone();
        self.add_source(
            &name,
            descriptor,
            source,
            BadRecordPolicy::DeadLetter,
            Some(dead_letters.into_sink()),
        )
    }

    /// Adds a source with every option spelled out.
    pub fn add_source(
        &self,
        name: &str,
        descriptor: Descriptor,
        source: Arc<dyn Source>,
        on_bad_record: BadRecordPolicy,
        dead_letters: Option<(Descriptor, Arc<dyn Sink>)>,
    ) -> Stream {
        let node = self.lock().add_source(
            name,
            SourceDecl {
                descriptor,
                source,
                on_bad_record,
                dead_letters,
                event_time: None,
            },
        );
        Stream {
            job: self.clone(),
            node,
        }
    }
}

/// A stream of Arrow batches in a job being declared. Every method adds a node and returns
/// the stream after it; the job runs only when executed.
#[must_use = "a stream does nothing until it reaches a sink and the job is executed"]
#[derive(Clone)]
pub struct Stream {
    job: Job,
    node: NodeId,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("node", &self.node).finish()
    }
}

impl Stream {
    /// The job this stream belongs to.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// The plan node that produces this stream.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Adds an operator with every option spelled out: the escape hatch for operators
    /// written outside Streamrun.
    pub fn operator(&self, name: &str, decl: OperatorDecl) -> Stream {
        let node = self.job.lock().add_operator(self.node, name, decl);
        Stream {
            job: self.job.clone(),
            node,
        }
    }

    fn simple(&self, name: &str, descriptor: Descriptor, op: Arc<dyn OperatorFactory>) -> Stream {
        self.operator(
            name,
            OperatorDecl {
                descriptor,
                op,
                combiner: None,
                parallelism: Parallelism::Workers,
            },
        )
    }

    /// A stateless task: `f` maps each record of type `I` (a serde struct whose fields name
    /// columns, or a plain value read from a single-column stream) to one record of type `O`.
    pub fn task<I, O, F>(&self, name: &str, f: F) -> Stream
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        F: Fn(I) -> O + Send + Sync + 'static,
    {
        self.simple(
            name,
            Descriptor::new("task", serde_json::json!({ "in": std::any::type_name::<I>(), "out": std::any::type_name::<O>() })),
            Arc::new(TypedTask::map(name, f)),
        )
    }

    /// A stateless task producing any number of records per input record. Plain output
    /// values go to a column named `name`.
    pub fn flat_map<I, O, R, F>(&self, name: &str, f: F) -> Stream
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        R: IntoIterator<Item = O>,
        F: Fn(I) -> R + Send + Sync + 'static,
    {
        self.simple(
            name,
            Descriptor::new("flat_map", serde_json::json!({ "in": std::any::type_name::<I>(), "out": std::any::type_name::<O>() })),
            Arc::new(TypedTask::flat_map(name, f)),
        )
    }

    /// Keeps the rows whose record satisfies `f`. Rows keep all their columns, including those
    /// `I` does not name.
    pub fn filter<I, F>(&self, name: &str, f: F) -> Stream
    where
        I: DeserializeOwned + Serialize + 'static,
        F: Fn(&I) -> bool + Send + Sync + 'static,
    {
        self.simple(
            name,
            Descriptor::new(
                "filter",
                serde_json::json!({ "in": std::any::type_name::<I>() }),
            ),
            Arc::new(TypedTask::<I, I>::filter(name, f)),
        )
    }

    /// Applies a function to whole batches: the fastest way to write a stateless operator.
    pub fn map_batches<F, E>(&self, name: &str, f: F) -> Stream
    where
        F: Fn(RecordBatch) -> Result<RecordBatch, E> + Send + Sync + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.simple(
            name,
            Descriptor::new("map_batches", serde_json::Value::Null),
            Arc::new(MapBatches::new(name, f)),
        )
    }

    /// Connected components of the graph whose edges are this stream's `src`, `dst` (integer
    /// node ids, taken as undirected), kept up to date with differential dataflow as edges
    /// arrive. Output is a change stream `node, component, diff`: a node's component is the
    /// least node id it is connected to, and summing a row's diffs gives 1 for the final
    /// result.
    pub fn connected_components(&self, src: &str, dst: &str) -> Stream {
        let op = streamrun_operators::ConnectedComponents::new(src, dst);
        let descriptor = Descriptor::new(
            "connected_components",
            serde_json::json!({ "src": src, "dst": dst }),
        );
        self.dataflow(
            &[self.node],
            "connected_components",
            descriptor,
            Arc::new(op),
        )
    }

    /// PageRank of the directed graph whose edges are this stream's `src`, `dst` (integer
    /// node ids), `iterations` rounds with `damping`, kept up to date with differential
    /// dataflow's `iterate` as edges arrive (or are retracted, in a change stream). Ranks are
    /// computed in whole surfers, exactly the same on any number of workers; see
    /// [`streamrun_operators::PageRank`]. Output is a change stream
    /// `node, rank, surfers, diff`.
    pub fn pagerank(&self, src: &str, dst: &str, damping: f64, iterations: u64) -> Stream {
        let op = streamrun_operators::PageRank::new(src, dst)
            .damping(damping)
            .iterations(iterations);
        let descriptor = Descriptor::new(
            "pagerank",
            serde_json::json!({ "src": src, "dst": dst, "damping": damping, "iterations": iterations }),
        );
        self.dataflow(&[self.node], "pagerank", descriptor, Arc::new(op))
    }

    /// PageRank of the pages of this stream, one row per page with its URL in column `url`
    /// (Utf8) and the URLs it links to in `links` (a list of Utf8), as the crawl's records
    /// have them. Links to URLs that are not pages of the stream are left out; each page is
    /// ranked by [`Stream::pagerank`] (`damping`, `iterations`) over URL ids
    /// ([`crate::links::url_id`]), kept up to date as pages arrive. Output is a change
    /// stream `url, rank, surfers, diff`: summing the diffs of each `(url, rank)` leaves each
    /// page's final rank with 1 (`surfers` is the rank in whole surfers, as
    /// [`streamrun_operators::PageRank`] counts it).
    pub fn link_rank(&self, url: &str, links: &str, damping: f64, iterations: u64) -> Stream {
        let ids = self
            .select([url])
            .map_batches("link_rank.ids", crate::links::page_ids);
        self.select([url, links])
            .map_batches("link_rank.edges", crate::links::link_edges)
            .incremental_join(&ids.select(["id"]), ["dst"], ["id"])
            .pagerank("src", "dst", damping, iterations)
            .incremental_join(&ids, ["node"], ["id"])
            .select(["url", "rank", "surfers", "diff"])
    }

    /// Rows per key, kept up to date with differential dataflow as rows arrive. Output is a
    /// change stream: the key columns, `count`, `diff` (a key going from 2 to 3 rows gives
    /// `(key, 2, -1)` and `(key, 3, +1)`).
    pub fn incremental_count(&self, keys: impl IntoColumns) -> Stream {
        let keys = keys.into_columns();
        let descriptor = Descriptor::new("incremental_count", serde_json::json!({ "keys": keys }));
        let op = streamrun_operators::IncrementalCount { keys };
        self.dataflow(&[self.node], "incremental_count", descriptor, Arc::new(op))
    }

    /// The distinct rows of `columns` (every column but `diff` when empty), kept up to date
    /// with differential dataflow. This stream may be a change stream (with a `diff` column):
    /// a row then leaves the result when its count drops to zero. Output is a change stream:
    /// the columns, then `diff`.
    pub fn incremental_distinct(&self, columns: impl IntoColumns) -> Stream {
        let columns = columns.into_columns();
        let descriptor = Descriptor::new(
            "incremental_distinct",
            serde_json::json!({ "columns": columns }),
        );
        let op = streamrun_operators::IncrementalDistinct { columns };
        self.dataflow(
            &[self.node],
            "incremental_distinct",
            descriptor,
            Arc::new(op),
        )
    }

    /// `agg` ([`Agg::sum`], [`Agg::min`] or [`Agg::max`]) per key, kept up to date with
    /// differential's `reduce` as rows arrive (and leave, for a change stream). Output is a
    /// change stream: the key columns, the aggregate, `diff` (a key's max going from 5 to 7
    /// gives `(key, 5, -1)` and `(key, 7, +1)`).
    pub fn incremental_reduce(&self, keys: impl IntoColumns, agg: Agg) -> Stream {
        let keys = keys.into_columns();
        let descriptor = Descriptor::new(
            "incremental_reduce",
            serde_json::json!({ "keys": keys, "agg": agg }),
        );
        let op = streamrun_operators::IncrementalReduce { keys, agg };
        self.dataflow(&[self.node], "incremental_reduce", descriptor, Arc::new(op))
    }

    /// Joins this stream with `other` on `left_keys = right_keys`, kept up to date with
    /// differential's `join`. Either side may be a change stream (with a `diff` column): a
    /// changing table. Joining events with such a table enriches each event with the table's
    /// current rows of its key, and retracts and rebuilds the results when a row changes.
    /// Output is a change stream: this stream's columns, then `other`'s (renamed
    /// `right_<name>` where a name is taken), then `diff`.
    pub fn incremental_join(
        &self,
        other: &Stream,
        left_keys: impl IntoColumns,
        right_keys: impl IntoColumns,
    ) -> Stream {
        if !Arc::ptr_eq(&self.job.graph, &other.job.graph) {
            self.job
                .record_error("incremental_join: both streams must belong to the same job".into());
            return self.clone();
        }
        let op = streamrun_operators::IncrementalJoin {
            left_keys: left_keys.into_columns(),
            right_keys: right_keys.into_columns(),
        };
        let descriptor = Descriptor::new(
            "incremental_join",
            serde_json::json!({ "left_keys": op.left_keys, "right_keys": op.right_keys }),
        );
        self.dataflow(
            &[self.node, other.node],
            "incremental_join",
            descriptor,
            Arc::new(op),
        )
    }

    fn dataflow(
        &self,
        inputs: &[NodeId],
        name: &str,
        descriptor: Descriptor,
        op: Arc<dyn streamrun_engine::DataflowOperator>,
    ) -> Stream {
        let node = self.job.lock().add_dataflow(inputs, name, descriptor, op);
        Stream {
            job: self.job.clone(),
            node,
        }
    }

    /// Keeps the named columns.
    pub fn select(&self, columns: impl IntoColumns) -> Stream {
        let op = Select::new(columns.into_columns());
        self.simple("select", op.descriptor(), Arc::new(op))
    }

    /// Keeps rows where `column <op> value` (`value` a number, string or boolean).
    pub fn where_(&self, column: &str, op: CmpOp, value: impl Into<serde_json::Value>) -> Stream {
        let op = Compare::new(column, op, value.into());
        self.simple("where", op.descriptor(), Arc::new(op))
    }

    /// Splits the text column `column` into one row per word, in a column named `output`.
    pub fn split_words(&self, column: &str, output: &str) -> Stream {
        self.split_words_keeping(column, output, Vec::<String>::new())
    }

    /// [`Stream::split_words`], carrying the `keep` columns to each word's row (before the
    /// word column): a page's host and time with its words.
    pub fn split_words_keeping(
        &self,
        column: &str,
        output: &str,
        keep: impl IntoColumns,
    ) -> Stream {
        let op = SplitWords::new(column, output).keep(keep.into_columns());
        self.simple("split_words", op.descriptor(), Arc::new(op))
    }

    /// The `k` rows with the greatest `by`, on one worker (after a per-worker top-k).
    pub fn top_k(&self, k: usize, by: &str) -> Stream {
        let op = TopK::new(k, by);
        self.operator(
            "top_k",
            OperatorDecl {
                descriptor: op.descriptor(),
                op: Arc::new(op.clone()),
                combiner: Some((op.descriptor(), Arc::new(op))),
                parallelism: Parallelism::Single,
            },
        )
    }

    pub(crate) fn exchange(&self, name: &str, partitioning: Partitioning) -> Stream {
        let node = self.job.lock().add_exchange(self.node, name, partitioning);
        Stream {
            job: self.job.clone(),
            node,
        }
    }

    /// Partitions the stream by key: rows with equal keys meet on one worker.
    pub fn key_by(&self, keys: impl IntoColumns) -> KeyedStream {
        let keys = keys.into_columns();
        let stream = self.exchange("key_by", Partitioning::Hash { keys: keys.clone() });
        KeyedStream { stream, keys }
    }

    /// Spreads whole batches over the workers in turn (to balance a skewed source).
    pub fn rebalance(&self) -> Stream {
        self.exchange("rebalance", Partitioning::RoundRobin)
    }

    /// Sends every batch to every worker.
    pub fn broadcast(&self) -> Stream {
        self.exchange("broadcast", Partitioning::Broadcast)
    }

    /// Gives this source's records event time from `column` (a timestamp, or Int64
    /// milliseconds), arriving at most `max_delay` out of order. The source's watermark then
    /// trails the latest event time by `max_delay`; records behind it are late and go to the
    /// source's bad-record path with the reason (an error by default, or the dead letters).
    /// Must follow [`Job::source`] directly.
    pub fn event_time(&self, column: &str, max_delay: std::time::Duration) -> Stream {
        let spec = streamrun_engine::EventTimeSpec::new(column, millis(max_delay));
        if let Err(e) = self.job.lock().set_event_time(self.node, spec) {
            self.job.record_error(e.to_string());
        }
        self.clone()
    }

    /// Lets records arrive up to `lateness` behind this source's watermark and still count.
    /// Tumbling and sliding windows downstream fire when the watermark passes their end, as
    /// before, then emit an update (`is_update = true`) for each record that comes within the
    /// lateness; session windows, window joins and per-window maxima wait out the lateness
    /// and emit once. Records later than that go to the late-data sink. Must follow
    /// [`Stream::event_time`].
    pub fn allowed_lateness(&self, lateness: std::time::Duration) -> Stream {
        self.change_event_time(|spec| spec.allowed_lateness_ms = millis(lateness))
    }

    /// Counts a partition of this source as idle after `timeout` without data: its watermark
    /// then follows the other partitions' (it no longer holds every window back), and comes
    /// back to its own when data arrives. With every partition idle, the watermark waits.
    /// Must follow [`Stream::event_time`].
    pub fn idle_timeout(&self, timeout: std::time::Duration) -> Stream {
        self.change_event_time(|spec| spec.idle_timeout_ms = Some(millis(timeout)))
    }

    fn change_event_time(
        &self,
        change: impl FnOnce(&mut streamrun_engine::EventTimeSpec),
    ) -> Stream {
        if let Err(e) = self.job.lock().update_event_time(self.node, change) {
            self.job.record_error(e.to_string());
        }
        self.clone()
    }

    /// Sends this source's late records (behind its watermark) to `sink`, with all their
    /// columns, instead of failing the job or dead-lettering them. Must follow
    /// [`Job::source`] (and [`Stream::event_time`]) directly.
    pub fn late_data(&self, sink: impl IntoSink) -> Stream {
        let (descriptor, sink) = sink.into_sink();
        if let Err(e) = self.job.lock().set_late_data(self.node, descriptor, sink) {
            self.job.record_error(e.to_string());
        }
        self.clone()
    }

    /// Writes the stream to `sink`.
    pub fn sink(&self, sink: impl IntoSink) {
        let (descriptor, sink) = sink.into_sink();
        let name = descriptor.kind.clone();
        self.sink_named(&name, (descriptor, sink));
    }

    /// Writes the stream to `sink`, naming the node.
    pub fn sink_named(&self, name: &str, sink: impl IntoSink) {
        let (descriptor, sink) = sink.into_sink();
        self.job.lock().add_sink(self.node, name, descriptor, sink);
    }
}

/// A stream partitioned by key, waiting for its aggregation.
#[must_use = "a keyed stream does nothing until it is aggregated"]
#[derive(Clone, Debug)]
pub struct KeyedStream {
    stream: Stream,
    keys: Vec<String>,
}

impl KeyedStream {
    /// The partitioned stream itself, for an operator of your own that needs its input
    /// partitioned by key.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Aggregates by key: a partial aggregate runs before the exchange, the final one after.
    pub fn aggregate(&self, aggs: Vec<Agg>) -> Stream {
        let spec = Aggregate::new(self.keys.clone(), aggs);
        let partial = spec.with_phase(Phase::Partial);
        let final_ = spec.with_phase(Phase::Final);
        self.stream.operator(
            "aggregate",
            OperatorDecl {
                descriptor: spec.descriptor(),
                op: Arc::new(final_),
                combiner: Some((partial.descriptor(), Arc::new(partial))),
                parallelism: Parallelism::Workers,
            },
        )
    }

    /// Rows per key, in a column `count`.
    pub fn count(&self) -> Stream {
        self.aggregate(vec![Agg::count()])
    }

    /// Your own aggregate `function` over `column` per key, written as `output` (after the
    /// key columns) when the input ends.
    pub fn aggregate_with<F: streamrun_operators::AggregateFunction>(
        &self,
        column: &str,
        output: &str,
        function: F,
    ) -> Stream {
        let op =
            streamrun_operators::UdafAggregate::new(self.keys.clone(), column, output, function);
        self.stream.operator(
            output,
            OperatorDecl {
                descriptor: Descriptor::new(
                    "aggregate_with",
                    serde_json::json!({ "function": std::any::type_name::<F>(), "column": column, "as": output }),
                ),
                op: Arc::new(op),
                combiner: None,
                parallelism: Parallelism::Workers,
            },
        )
    }

    /// Sum of `column` per key, as `sum_<column>`.
    pub fn sum(&self, column: &str) -> Stream {
        self.aggregate(vec![Agg::sum(column)])
    }

    /// Least `column` per key, as `min_<column>`.
    pub fn min(&self, column: &str) -> Stream {
        self.aggregate(vec![Agg::min(column)])
    }

    /// Greatest `column` per key, as `max_<column>`.
    pub fn max(&self, column: &str) -> Stream {
        self.aggregate(vec![Agg::max(column)])
    }

    /// Mean of `column` per key, as `mean_<column>`.
    pub fn mean(&self, column: &str) -> Stream {
        self.aggregate(vec![Agg::mean(column)])
    }

    /// Joins this stream with `other` within tumbling event-time windows: the rows whose keys
    /// are equal (this stream's keys matched in order with `other`'s) and whose event times
    /// fall in the same window. Emitted once per window, when both inputs' watermark passes
    /// its end, with columns `window_start`, `window_end`, then this stream's columns and,
    /// for [`JoinKind::Inner`], `other`'s.
    pub fn window_join(&self, other: &KeyedStream, window: Tumbling, kind: JoinKind) -> Stream {
        self.join_with(other, "window_join", |graph| {
            let op = WindowJoin {
                size_ms: millis(window.size),
                left_time: graph
                    .event_time_of(self.stream.node)
                    .map(|t| t.column.clone()),
                right_time: graph
                    .event_time_of(other.stream.node)
                    .map(|t| t.column.clone()),
                left_keys: self.keys.clone(),
                right_keys: other.keys.clone(),
                kind,
            };
            (op.descriptor(), Arc::new(op))
        })
    }

    /// Joins this stream with `other` on equal keys and event times close enough: each row
    /// of this stream with the rows of `other` whose event time minus its own lies in
    /// `right_minus_left_ms` (milliseconds; `-5_000..=0` is "in the 5 s before"). Each pair is
    /// emitted once, as soon as both rows are in, with this stream's columns then `other`'s;
    /// rows are kept only while the watermark leaves them a possible match.
    pub fn interval_join(
        &self,
        other: &KeyedStream,
        right_minus_left_ms: std::ops::RangeInclusive<i64>,
    ) -> Stream {
        self.join_with(other, "interval_join", |graph| {
            let op = streamrun_operators::IntervalJoin {
                lower_ms: *right_minus_left_ms.start(),
                upper_ms: *right_minus_left_ms.end(),
                left_time: graph
                    .event_time_of(self.stream.node)
                    .map(|t| t.column.clone()),
                right_time: graph
                    .event_time_of(other.stream.node)
                    .map(|t| t.column.clone()),
                left_keys: self.keys.clone(),
                right_keys: other.keys.clone(),
            };
            (op.descriptor(), Arc::new(op))
        })
    }

    /// Joins this stream with `other` over everything seen so far: each pair of rows with
    /// equal keys is emitted once, as soon as both have arrived, with this stream's columns
    /// then `other`'s. Both sides are kept whole, so use it where one side is a bounded table.
    pub fn join(&self, other: &KeyedStream) -> Stream {
        self.join_with(other, "join", |_| {
            let op = StreamJoin {
                left_keys: self.keys.clone(),
                right_keys: other.keys.clone(),
            };
            (op.descriptor(), Arc::new(op))
        })
    }

    fn join_with(
        &self,
        other: &KeyedStream,
        name: &str,
        op: impl FnOnce(&JobGraph) -> (Descriptor, Arc<dyn streamrun_engine::JoinOperatorFactory>),
    ) -> Stream {
        let job = &self.stream.job;
        if !Arc::ptr_eq(&job.graph, &other.stream.job.graph) {
            job.record_error(format!("{name}: both streams must belong to the same job"));
            return self.stream.clone();
        }
        let mut graph = job.lock();
        let (descriptor, op) = op(&graph);
        let node = graph.add_join(self.stream.node, other.stream.node, name, descriptor, op);
        Stream {
            job: job.clone(),
            node,
        }
    }

    /// Runs an [`Actor`](streamrun_operators::Actor) over this keyed stream: each worker
    /// builds one with `make`, and the actor sees every record with the state of its key.
    pub fn actor<A: streamrun_operators::Actor>(
        &self,
        name: &str,
        make: impl Fn() -> A + Send + Sync + 'static,
    ) -> Stream {
        let op = streamrun_operators::ActorOperator::new(name, self.keys.clone(), make);
        self.stream.operator(
            name,
            OperatorDecl {
                descriptor: Descriptor::new(
                    "actor",
                    serde_json::json!({ "type": std::any::type_name::<A>(), "keys": self.keys }),
                ),
                op: Arc::new(op),
                combiner: None,
                parallelism: Parallelism::Workers,
            },
        )
    }

    /// Groups each key's records into event-time windows ([`Tumbling`], [`Sliding`] or
    /// [`Session`]); aggregate them next.
    pub fn window(&self, window: impl WindowSpec + 'static) -> WindowedStream {
        WindowedStream {
            keyed: self.clone(),
            window: Arc::new(window),
        }
    }
}

/// A kind of event-time window, for [`KeyedStream::window`]: it builds the operator that
/// aggregates `aggs` by `keys` per window of its kind.
pub trait WindowSpec: Send + Sync + std::fmt::Debug {
    /// The operator, with its plan descriptor. `lateness_ms` is the source's allowed
    /// lateness.
    fn build(
        &self,
        time_column: Option<String>,
        lateness_ms: u64,
        keys: Vec<String>,
        aggs: Vec<Agg>,
    ) -> (Descriptor, Arc<dyn OperatorFactory>);
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl WindowSpec for Tumbling {
    fn build(
        &self,
        time_column: Option<String>,
        lateness_ms: u64,
        keys: Vec<String>,
        aggs: Vec<Agg>,
    ) -> (Descriptor, Arc<dyn OperatorFactory>) {
        let op = WindowAggregate::tumbling(millis(self.size), time_column, keys, aggs)
            .with_lateness(lateness_ms);
        (op.descriptor(), Arc::new(op))
    }
}

/// Sliding (hopping) event-time windows: of one length, starting every `slide`, so that a
/// record belongs to `size / slide` windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sliding {
    size: std::time::Duration,
    slide: std::time::Duration,
}

impl Sliding {
    /// Windows of length `size`, starting every second until [`Sliding::every`] says otherwise.
    pub fn of(size: std::time::Duration) -> Self {
        Sliding {
            size,
            slide: std::time::Duration::from_secs(1),
        }
    }

    /// Starts a window every `slide` (at most the window's length).
    pub fn every(mut self, slide: std::time::Duration) -> Self {
        self.slide = slide;
        self
    }
}

impl WindowSpec for Sliding {
    fn build(
        &self,
        time_column: Option<String>,
        lateness_ms: u64,
        keys: Vec<String>,
        aggs: Vec<Agg>,
    ) -> (Descriptor, Arc<dyn OperatorFactory>) {
        let op = WindowAggregate::sliding(
            millis(self.size),
            millis(self.slide),
            time_column,
            keys,
            aggs,
        )
        .with_lateness(lateness_ms);
        (op.descriptor(), Arc::new(op))
    }
}

/// Session windows: per key, records closer than `gap` in event time form one session, which
/// closes when the watermark passes its last record plus the gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    gap: std::time::Duration,
}

impl Session {
    /// Sessions separated by `gap` of inactivity.
    pub fn with_gap(gap: std::time::Duration) -> Self {
        Session { gap }
    }
}

impl WindowSpec for Session {
    fn build(
        &self,
        time_column: Option<String>,
        _lateness_ms: u64,
        keys: Vec<String>,
        aggs: Vec<Agg>,
    ) -> (Descriptor, Arc<dyn OperatorFactory>) {
        // Sessions wait out the lateness: they close on the frontier, `lateness` behind the
        // watermark, and emit once.
        let op = SessionAggregate::new(millis(self.gap), time_column, keys, aggs);
        (op.descriptor(), Arc::new(op))
    }
}

/// Tumbling event-time windows: consecutive, non-overlapping, of one length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tumbling {
    size: std::time::Duration,
}

impl Tumbling {
    /// Windows of length `size` (whole milliseconds), aligned on the Unix epoch.
    pub fn of(size: std::time::Duration) -> Self {
        Tumbling { size }
    }
}

/// A keyed stream cut into windows, waiting for its aggregation.
#[must_use = "a windowed stream does nothing until it is aggregated"]
#[derive(Clone, Debug)]
pub struct WindowedStream {
    keyed: KeyedStream,
    window: Arc<dyn WindowSpec>,
}

impl WindowedStream {
    /// Aggregates each key's records per window. Each window is emitted once, when the
    /// watermark passes its end, with columns `window_start`, `window_end`, the keys and the
    /// aggregates.
    pub fn aggregate(&self, aggs: Vec<Agg>) -> Stream {
        let stream = &self.keyed.stream;
        let time = stream.job.lock().event_time_of(stream.node).cloned();
        let (descriptor, op) = self.window.build(
            time.as_ref().map(|t| t.column.clone()),
            time.map_or(0, |t| t.allowed_lateness_ms),
            self.keyed.keys.clone(),
            aggs,
        );
        stream.operator(
            "window",
            OperatorDecl {
                descriptor,
                op,
                combiner: None,
                parallelism: Parallelism::Workers,
            },
        )
    }

    /// Records per key and window, in a column `count`.
    pub fn count(&self) -> Stream {
        self.aggregate(vec![Agg::count()])
    }
}
