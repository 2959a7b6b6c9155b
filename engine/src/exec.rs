//! The executor: runs a physical plan on timely dataflow workers in this process.
//!
//! Every worker builds the same dataflow from the physical plan: one timely operator per stage
//! running its fused chain, and for each non-forward edge a router that tags every batch (or
//! every hash part of a batch) with the worker it must reach, followed by a timely exchange on
//! that tag. Data is `(tag, Batch)`: Arrow batches, never rows.
//!
//! # Bounded memory
//!
//! Timely has no flow control of its own, so sources pace themselves: a source stamps each
//! batch with the next epoch and does not read epoch `e` until every stage's output frontier
//! has passed `e - MAX_EPOCHS_IN_FLIGHT`, so at most that many batches per source worker are
//! queued between operators. Blocking operators (aggregates) hold a capability only at their
//! input's frontier, so they never stall this accounting. A source worker with nothing to
//! read does not stall it either: its epoch keeps up with the others' (see
//! [`EpochClock`](crate::time::EpochClock)).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::operator::source as timely_source;
use timely::dataflow::operators::{Capability, Operator, Probe};
use timely::dataflow::{ProbeHandle, Scope, Stream};

use crate::batch::{Batch, column_indices, split_by_hash};
use crate::compile::{PhysicalPlan, Role, Stage, StageInput, compile, factory_of};
use crate::connector::{
    BadRecordPolicy, DeadLetter, Sink, SinkWriter, SourceCollector, SourceReader,
};
use crate::error::{Error, Result};
use crate::operator::{
    Collector, Failures, JoinOperator, Operator as StreamOperator, Side, WorkerContext,
};
use crate::partitions::{PartitionState, Partitions};
use crate::plan::{EventTimeSpec, JobGraph, NodeId, NodeImpl, NodeKind, Partitioning};
use crate::time::{EPOCH_JUMP, EpochClock, Time};

/// Epochs a source may run ahead of the slowest stage.
pub const MAX_EPOCHS_IN_FLIGHT: u64 = 16;

/// How long a source worker of a job over several processes that reads nothing waits, while
/// its epoch holds the job's frontier, before it moves its epoch past the other processes'.
const REMOTE_IDLE_MOVE: Duration = Duration::from_millis(20);

/// Batches a source reads in one activation before it lets other operators run.
pub const READS_PER_ACTIVATION: usize = 4;

/// A batch tagged with the worker it is routed to.
type Tagged = (u32, Batch);
type TaggedStream<'s> = Stream<'s, Time, Vec<Tagged>>;

/// Counters a running job updates, readable from another thread (for a progress bar).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Records read by sources.
    pub records_in: AtomicU64,
    /// Bytes read by sources.
    pub bytes_in: AtomicU64,
    /// Records written by sinks.
    pub records_out: AtomicU64,
    /// Records sent to dead-letter sinks.
    pub dead_letters: AtomicU64,
    /// Records behind their source's watermark, sent to its late-data sink.
    pub late_records: AtomicU64,
}

/// How to run a job.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Worker threads (of this process, when the job spans several).
    pub workers: usize,
    /// Counters to update while running; a fresh set when `None`.
    pub metrics: Option<Arc<Metrics>>,
    /// This process's place in a job that spans several processes; `None`: the whole job
    /// runs in this process.
    pub cluster: Option<Cluster>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions::new(1)
    }
}

impl ExecOptions {
    /// `workers` worker threads in this process, and nothing else.
    pub fn new(workers: usize) -> Self {
        ExecOptions {
            workers,
            metrics: None,
            cluster: None,
        }
    }

    /// The options a node agent gives a job's process through the environment: the
    /// process's place from `STREAMRUN_PROCESS` and `STREAMRUN_PEERS` (see [`Cluster`]) and
    /// then its worker threads from `STREAMRUN_WORKERS`. Without them, `default_workers`
    /// threads in this process alone. A malformed variable is an error naming it.
    pub fn from_env(default_workers: usize) -> Result<Self> {
        let cluster = Cluster::from_env()?;
        let workers = match std::env::var(Cluster::WORKERS_ENV) {
            Ok(text) if cluster.is_some() => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                Error::Plan(format!(
                    "{}={text:?} is not a number of worker threads (1 or more)",
                    Cluster::WORKERS_ENV
                ))
            })?,
            Err(_) if cluster.is_some() => {
                // Every process of a timely cluster must run as many threads: guessing from
                // this machine's cores would break that.
                return Err(Error::Plan(format!(
                    "{} and {} are set but {} is not: a job process needs all three",
                    Cluster::PROCESS_ENV,
                    Cluster::PEERS_ENV,
                    Cluster::WORKERS_ENV
                )));
            }
            _ => default_workers,
        };
        Ok(ExecOptions {
            cluster,
            ..ExecOptions::new(workers)
        })
    }

    /// Worker threads over every process of the job.
    pub fn total_workers(&self) -> usize {
        self.workers * self.cluster.as_ref().map_or(1, |c| c.peers.len())
    }
}

/// Where this process sits among the processes of a job that spans several: each runs
/// [`ExecOptions::workers`] worker threads of one timely cluster, connected over TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// This process's index.
    pub process: usize,
    /// Every process's `host:port`, in process order; this process listens on its own.
    pub peers: Vec<String>,
}

impl Cluster {
    /// The variable holding the worker threads per process.
    pub const WORKERS_ENV: &'static str = "STREAMRUN_WORKERS";
    /// The variable holding this process's index.
    pub const PROCESS_ENV: &'static str = "STREAMRUN_PROCESS";
    /// The variable holding every process's `host:port`, comma-separated, in order.
    pub const PEERS_ENV: &'static str = "STREAMRUN_PEERS";

    /// This process's place, from `STREAMRUN_PROCESS` and `STREAMRUN_PEERS`: `None` when
    /// neither is set, an error naming the variable when one is missing or malformed.
    pub fn from_env() -> Result<Option<Cluster>> {
        let process = std::env::var(Self::PROCESS_ENV).ok();
        let peers = std::env::var(Self::PEERS_ENV).ok();
        match (process, peers) {
            (None, None) => Ok(None),
            (Some(process), Some(peers)) => Cluster::parse(&process, &peers).map(Some),
            (Some(_), None) => Err(Error::Plan(format!(
                "{} is set but {} is not: a job process needs both",
                Self::PROCESS_ENV,
                Self::PEERS_ENV
            ))),
            (None, Some(_)) => Err(Error::Plan(format!(
                "{} is set but {} is not: a job process needs both",
                Self::PEERS_ENV,
                Self::PROCESS_ENV
            ))),
        }
    }

    /// A place from the texts of the two variables.
    pub fn parse(process: &str, peers: &str) -> Result<Cluster> {
        let peers: Vec<String> = peers
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(bad) = peers.iter().find(|p| {
            p.rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        }) {
            return Err(Error::Plan(format!(
                "{}: '{bad}' is not host:port",
                Self::PEERS_ENV
            )));
        }
        let index = process
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&i| i < peers.len())
            .ok_or_else(|| {
                Error::Plan(format!(
                    "{}={process:?} is not the index of one of the {} processes in {}",
                    Self::PROCESS_ENV,
                    peers.len(),
                    Self::PEERS_ENV
                ))
            })?;
        Ok(Cluster {
            process: index,
            peers,
        })
    }
}

/// What a finished job did.
#[derive(Debug, Clone, PartialEq)]
pub struct JobReport {
    /// The job's name.
    pub job: String,
    /// Worker threads it ran on.
    pub workers: usize,
    /// Records read by its sources.
    pub records_in: u64,
    /// Bytes read by its sources.
    pub bytes_in: u64,
    /// Records written by its sinks.
    pub records_out: u64,
    /// Records sent to dead-letter sinks.
    pub dead_letters: u64,
    /// Records behind their source's watermark, sent to its late-data sink.
    pub late_records: u64,
    /// Wall-clock time from start to the last worker's end.
    pub elapsed: Duration,
}

struct Shared {
    /// The partition watermarks of each source with an idle timeout.
    partitions: HashMap<NodeId, Arc<Partitions>>,
    graph: JobGraph,
    plan: PhysicalPlan,
    metrics: Arc<Metrics>,
    failure: Mutex<Option<Error>>,
    abort: AtomicBool,
    /// Workers in this process: the others are in other processes.
    local_workers: usize,
    /// The read epochs of the job's source workers in this process.
    epochs: EpochClock,
}

impl Shared {
    /// Records the first failure and tells every worker to stop.
    fn fail(&self, error: Error) {
        if let Ok(mut slot) = self.failure.lock()
            && slot.is_none()
        {
            *slot = Some(error);
        }
        self.abort.store(true, Ordering::SeqCst);
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}

/// Compiles and runs a job graph on `options.workers` threads of this process.
pub fn execute(graph: &JobGraph, options: &ExecOptions) -> Result<JobReport> {
    let plan = compile(graph, options.total_workers())?;
    execute_plan(graph, plan, options)
}

/// Runs an already compiled plan.
pub fn execute_plan(
    graph: &JobGraph,
    plan: PhysicalPlan,
    options: &ExecOptions,
) -> Result<JobReport> {
    let workers = plan.workers;
    let metrics = options.metrics.clone().unwrap_or_default();
    let job = plan.job.clone();
    let partitions = graph
        .plan()
        .nodes
        .iter()
        .filter(|n| {
            matches!(&n.kind, NodeKind::Source { event_time: Some(t), .. } if t.idle_timeout_ms.is_some())
        })
        .map(|n| (n.id, Arc::new(Partitions::new(workers))))
        .collect();
    let shared = Arc::new(Shared {
        partitions,
        graph: graph.clone(),
        plan,
        metrics: Arc::clone(&metrics),
        failure: Mutex::new(None),
        abort: AtomicBool::new(false),
        local_workers: options.workers.min(workers),
        epochs: EpochClock::default(),
    });
    let started = Instant::now();
    tracing::info!(job = %job, workers, "starting job");
    let worker_shared = Arc::clone(&shared);
    let config = match &options.cluster {
        None => timely::Config::process(workers),
        Some(cluster) => {
            if workers != options.total_workers() {
                return Err(Error::Plan(format!(
                    "the plan is for {workers} workers, but {} processes of {} threads make {}",
                    cluster.peers.len(),
                    options.workers,
                    options.total_workers()
                )));
            }
            tracing::info!(process = cluster.process, peers = ?cluster.peers, "joining the job's processes");
            timely::Config {
                communication: timely::CommunicationConfig::Cluster {
                    threads: options.workers,
                    process: cluster.process,
                    addresses: cluster.peers.clone(),
                    report: false,
                    zerocopy: false,
                },
                worker: timely::WorkerConfig::default(),
            }
        }
    };
    let guards = timely::execute(config, move |worker| {
        let shared = &worker_shared;
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run_worker(worker, shared)));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => shared.fail(e),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "unknown panic".to_owned());
                shared.fail(Error::Internal(format!(
                    "worker {} panicked: {message}",
                    worker.index()
                )));
            }
        }
        if shared.aborted() {
            // Timely steps a worker's dataflows until they complete once this closure
            // returns; a failed job's may never (an operator unwound mid-step, a peer gone).
            for dataflow in worker.installed_dataflows() {
                worker.drop_dataflow(dataflow);
            }
        }
    })
    .map_err(|e| Error::Internal(format!("starting {workers} workers: {e}")))?;
    for result in guards.join() {
        if let Err(panic) = result {
            shared.fail(Error::Internal(format!("a worker thread died: {panic}")));
        }
    }
    let failure = shared.failure.lock().ok().and_then(|mut slot| slot.take());
    if let Some(error) = failure {
        tracing::error!(job = %job, %error, "job failed");
        return Err(error);
    }
    let report = JobReport {
        job,
        workers,
        records_in: metrics.records_in.load(Ordering::Relaxed),
        bytes_in: metrics.bytes_in.load(Ordering::Relaxed),
        records_out: metrics.records_out.load(Ordering::Relaxed),
        dead_letters: metrics.dead_letters.load(Ordering::Relaxed),
        late_records: metrics.late_records.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    };
    tracing::info!(job = %report.job, records_in = report.records_in, records_out = report.records_out,
        elapsed_ms = report.elapsed.as_millis() as u64, "job finished");
    Ok(report)
}

fn run_worker(worker: &mut timely::worker::Worker, shared: &Arc<Shared>) -> Result<()> {
    let ctx = WorkerContext {
        job: shared.plan.job.clone(),
        index: worker.index(),
        workers: worker.peers(),
        local_workers: shared.local_workers,
    };
    let pace = ProbeHandle::<Time>::new();
    worker.dataflow::<Time, _, _>(|scope| build_dataflow(scope, shared, &ctx, &pace))?;
    while worker.step_or_park(Some(Duration::from_millis(20))) {
        if shared.aborted() {
            break;
        }
    }
    Ok(())
}

fn build_dataflow<'s>(
    scope: Scope<'s, Time>,
    shared: &Arc<Shared>,
    ctx: &WorkerContext,
    pace: &ProbeHandle<Time>,
) -> Result<()> {
    let mut outputs: Vec<TaggedStream<'s>> = Vec::with_capacity(shared.plan.stages.len());
    for stage in &shared.plan.stages {
        // A stage of parallelism one runs on worker 0 only: elsewhere it is an empty shell
        // that keeps the dataflow the same shape on every worker.
        let active = stage.parallelism > 1 || ctx.index == 0;
        let name = stage_name(stage);
        let stream = match (&stage.input, &stage.second_input) {
            (None, _) => build_source_stage(scope, shared, stage, ctx, active, pace)?,
            (Some(input), second)
                if stage.ops.first().map(|op| op.role) == Some(Role::Dataflow) =>
            {
                let head = &stage.ops[0];
                let mut upstreams = vec![edge(&outputs, input, ctx, shared)?.0];
                let mut schemas = vec![head.input_schema.clone().ok_or_else(|| {
                    Error::Internal(format!("'{}' has no input schema", head.name))
                })?];
                if let Some(second) = second {
                    upstreams.push(edge(&outputs, second, ctx, shared)?.0);
                    schemas.push(head.second_input_schema.clone().ok_or_else(|| {
                        Error::Internal(format!("'{}' has no second input schema", head.name))
                    })?);
                }
                match shared.graph.node_impl(head.node) {
                    Some(NodeImpl::Dataflow(op)) => op
                        .build(ctx, upstreams, &schemas, {
                            let shared = Arc::clone(shared);
                            Failures::new(move |e| shared.fail(e))
                        })
                        .map_err(|e| Error::Plan(format!("'{}': {e}", head.name)))?,
                    _ => {
                        return Err(Error::Internal(format!(
                            "'{}' builds no dataflow",
                            head.name
                        )));
                    }
                }
            }
            (Some(input), None) => {
                let (upstream, forward) = edge(&outputs, input, ctx, shared)?;
                let chain = if active {
                    create_chain(shared, stage, ctx, 0)?
                } else {
                    Vec::new()
                };
                let holds = (
                    stage.is_blocking(&shared.graph),
                    stage.ops.iter().any(|op| op.role == Role::Sink),
                );
                if forward {
                    chain_operator(upstream, Pipeline, &name, chain, holds, shared)
                } else {
                    chain_operator(upstream, exchange(), &name, chain, holds, shared)
                }
            }
            (Some(left), Some(right)) => {
                let head = stage
                    .ops
                    .first()
                    .ok_or_else(|| Error::Internal(format!("stage {} is empty", stage.id)))?;
                let schemas = head
                    .input_schema
                    .as_ref()
                    .zip(head.second_input_schema.as_ref());
                let join = match (shared.graph.node_impl(head.node), schemas) {
                    (Some(NodeImpl::Join(factory)), Some((l, r))) => factory
                        .create(ctx, l, r)
                        .map_err(|e| Error::Plan(format!("'{}': {e}", head.name)))?,
                    _ => return Err(Error::Internal(format!("'{}' is not a join", head.name))),
                };
                let rest = create_chain(shared, stage, ctx, 1)?;
                let (l, l_forward) = edge(&outputs, left, ctx, shared)?;
                let (r, r_forward) = edge(&outputs, right, ctx, shared)?;
                let label = head.name.clone();
                match (l_forward, r_forward) {
                    (true, true) => {
                        join_operator(l, r, (Pipeline, Pipeline), &name, join, rest, label, shared)
                    }
                    (true, false) => join_operator(
                        l,
                        r,
                        (Pipeline, exchange()),
                        &name,
                        join,
                        rest,
                        label,
                        shared,
                    ),
                    (false, true) => join_operator(
                        l,
                        r,
                        (exchange(), Pipeline),
                        &name,
                        join,
                        rest,
                        label,
                        shared,
                    ),
                    (false, false) => join_operator(
                        l,
                        r,
                        (exchange(), exchange()),
                        &name,
                        join,
                        rest,
                        label,
                        shared,
                    ),
                }
            }
        };
        outputs.push(stream.probe_with(pace));
    }
    Ok(())
}

/// The exchange on the destination tag that follows every router.
fn exchange() -> impl ParallelizationContract<Time, Vec<Tagged>> {
    Exchange::new(|tagged: &Tagged| u64::from(tagged.0))
}

/// The stream an input edge delivers: the upstream stage's output, routed when the edge is
/// not forward; and whether it is forward.
fn edge<'s>(
    outputs: &[TaggedStream<'s>],
    input: &StageInput,
    ctx: &WorkerContext,
    shared: &Arc<Shared>,
) -> Result<(TaggedStream<'s>, bool)> {
    let upstream = outputs
        .get(input.stage)
        .cloned()
        .ok_or_else(|| Error::Internal(format!("stage {} is not built yet", input.stage)))?;
    if input.partitioning == Partitioning::Forward {
        return Ok((upstream, true));
    }
    let schema = shared.plan.stages[input.stage]
        .ops
        .last()
        .and_then(|op| op.output_schema.clone())
        .ok_or_else(|| Error::Internal("stage without schema".into()))?;
    Ok((
        route(upstream, &input.partitioning, &schema, ctx, shared)?,
        false,
    ))
}

fn stage_name(stage: &Stage) -> String {
    let names: Vec<&str> = stage.ops.iter().map(|op| op.name.as_str()).collect();
    format!("stage {}: {}", stage.id, names.join(" > "))
}

/// Instantiates the operators of a stage from position `skip` on.
fn create_chain(
    shared: &Arc<Shared>,
    stage: &Stage,
    ctx: &WorkerContext,
    skip: usize,
) -> Result<Vec<ChainOp>> {
    let mut chain = Vec::with_capacity(stage.ops.len());
    for op in stage.ops.iter().skip(skip) {
        let input = op
            .input_schema
            .clone()
            .ok_or_else(|| Error::Internal(format!("'{}' has no input schema", op.name)))?;
        let instance: Box<dyn StreamOperator> = match op.role {
            Role::Operator | Role::Combiner => {
                let factory = factory_of(&shared.graph, op).ok_or_else(|| {
                    Error::Internal(format!("'{}' has no operator implementation", op.name))
                })?;
                factory
                    .create(ctx, &input)
                    .map_err(|e| Error::Plan(format!("'{}': {e}", op.name)))?
            }
            Role::Sink => match shared.graph.node_impl(op.node) {
                Some(NodeImpl::Sink(sink)) => Box::new(SinkOperator::new(
                    Arc::clone(sink),
                    ctx.clone(),
                    input,
                    Arc::clone(&shared.metrics),
                    true,
                )),
                _ => return Err(Error::Internal(format!("'{}' is not a sink", op.name))),
            },
            Role::Source | Role::Join | Role::Dataflow => {
                return Err(Error::Internal(format!(
                    "'{}' in the middle of a stage",
                    op.name
                )));
            }
        };
        chain.push(ChainOp {
            name: op.name.clone(),
            op: instance,
        });
    }
    Ok(chain)
}

struct ChainOp {
    name: String,
    op: Box<dyn StreamOperator>,
}

fn name_error(name: &str, e: Error) -> Error {
    match e {
        Error::Operator { .. } | Error::Input(_) | Error::Io { .. } => e,
        other => Error::Operator {
            operator: name.to_owned(),
            message: other.to_string(),
        },
    }
}

/// Pushes `batch` through `chain[from..]`, collecting what comes out of the end.
fn run_chain(
    chain: &mut [ChainOp],
    from: usize,
    batch: RecordBatch,
    out: &mut Vec<RecordBatch>,
) -> Result<()> {
    let mut current = vec![batch];
    let mut collector = Collector::new();
    for op in chain.iter_mut().skip(from) {
        for batch in current.drain(..) {
            op.op
                .process_batch(batch, &mut collector)
                .map_err(|e| name_error(&op.name, e))?;
        }
        current = collector.take();
        if current.is_empty() {
            return Ok(());
        }
    }
    out.extend(current);
    Ok(())
}

/// A signal that passes down a chain: each operator in turn receives it, and what it emits
/// flows through the operators after it (which receive the signal after that).
#[derive(Debug, Clone, Copy)]
enum Signal {
    /// The input's watermark advanced to this event time (ms).
    Watermark(u64),
    /// The input ended.
    Finish,
    /// The input frontier moved on: sinks make durable what they hold.
    Flush,
}

fn signal_chain(chain: &mut [ChainOp], signal: Signal, out: &mut Vec<RecordBatch>) -> Result<()> {
    for i in 0..chain.len() {
        let mut collector = Collector::new();
        let op = &mut chain[i];
        match signal {
            Signal::Watermark(w) => op.op.on_watermark(w, &mut collector),
            Signal::Finish => op.op.finish(&mut collector),
            Signal::Flush => op.op.flush(),
        }
        .map_err(|e| name_error(&op.name, e))?;
        for batch in collector.take() {
            run_chain(chain, i + 1, batch, out)?;
        }
    }
    Ok(())
}

/// The state of a stage operator between activations: its chain, the capability a blocking
/// stage holds, and how far its watermark and its end have been signalled.
struct StageRun {
    chain: Vec<ChainOp>,
    held: Option<Capability<Time>>,
    watermark: u64,
    finished: bool,
    /// The input frontier last seen, to flush sinks when it moves.
    frontier: Option<Time>,
    /// In a stage that writes and holds no capability otherwise: held at the least time of
    /// what was written since the last flush. Without it the stage's output frontier, which
    /// sources acknowledge by, would pass what its sinks still buffer as soon as the input
    /// frontier did, before the stage ran to flush them.
    unflushed: Option<Capability<Time>>,
    shared: Arc<Shared>,
}

impl StageRun {
    /// Pushes one input batch through the chain from position `from`; a failure stops the job.
    fn push(&mut self, from: usize, batch: RecordBatch, emitted: &mut Vec<RecordBatch>) {
        if self.shared.aborted() {
            return;
        }
        if let Err(e) = run_chain(&mut self.chain, from, batch, emitted) {
            self.shared.fail(e);
        }
    }

    /// Holds the output frontier of a stage that writes at the time of `input`, until its
    /// next flush.
    fn written_at(&mut self, input: &timely::dataflow::operators::InputCapability<Time>) {
        if self.held.is_some() {
            // Held at its input frontier already, which it follows only in `advance`, in the
            // activation that flushes.
            return;
        }
        if let Some(cap) = input.retain_least(0)
            && self
                .unflushed
                .as_ref()
                .is_none_or(|held| cap.time() < held.time())
        {
            self.unflushed = Some(cap);
        }
    }

    /// After the input of an activation: follows the input frontier (`None` once every input
    /// has ended), signals a watermark that advanced and the end, and hands what that emits
    /// to `emit` with the capability to send it under.
    fn advance(
        &mut self,
        frontier: Option<Time>,
        emit: &mut impl FnMut(&Capability<Time>, Vec<RecordBatch>),
    ) {
        self.follow(frontier);
        if let (Some(least), false) = (frontier, self.shared.aborted())
            && least.watermark > self.watermark
        {
            self.watermark = least.watermark;
            self.signal(Signal::Watermark(least.watermark), emit);
            // What was emitted may have released holds: follow the frontier again.
            self.follow(frontier);
        }
        if frontier != self.frontier && !self.finished {
            self.frontier = frontier;
            if frontier.is_some() && !self.shared.aborted() {
                self.signal(Signal::Flush, emit);
            }
            self.unflushed = None;
        }
        if frontier.is_none() && !self.finished {
            self.finished = true;
            if !self.shared.aborted() {
                self.signal(Signal::Finish, emit);
            }
            self.held = None;
        }
        if self.shared.aborted() {
            self.held = None;
            self.unflushed = None;
        }
    }

    fn follow(&mut self, frontier: Option<Time>) {
        if let (Some(cap), Some(least)) = (self.held.as_mut(), frontier) {
            let target = hold_target(&self.chain, least);
            if target > *cap.time() {
                cap.downgrade(&target);
            }
        }
    }

    fn signal(
        &mut self,
        signal: Signal,
        emit: &mut impl FnMut(&Capability<Time>, Vec<RecordBatch>),
    ) {
        let mut emitted = Vec::new();
        match signal_chain(&mut self.chain, signal, &mut emitted) {
            Ok(()) => {
                if let Some(cap) = self.held.as_ref()
                    && !emitted.is_empty()
                {
                    emit(cap, emitted);
                }
            }
            Err(e) => self.shared.fail(e),
        }
    }
}

fn chain_operator<'s, P>(
    input: TaggedStream<'s>,
    pact: P,
    name: &str,
    chain: Vec<ChainOp>,
    (blocking, writes): (bool, bool),
    shared: &Arc<Shared>,
) -> TaggedStream<'s>
where
    P: ParallelizationContract<Time, Vec<Tagged>>,
{
    let shared = Arc::clone(shared);
    input.unary_frontier::<CapacityContainerBuilder<Vec<Tagged>>, _, _, _>(
        pact,
        name,
        move |capability, _info| {
            // Only a blocking stage emits after its input ends, and so needs to hold a
            // capability; it holds it at its input frontier (or behind it, by the holds of
            // its operators).
            let mut run = StageRun {
                chain,
                held: blocking.then_some(capability),
                watermark: 0,
                finished: false,
                frontier: None,
                unflushed: None,
                shared,
            };
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    if writes {
                        run.written_at(&cap);
                    }
                    let mut emitted = Vec::new();
                    for container in data {
                        for (_, batch) in container.drain(..) {
                            run.push(0, batch.0, &mut emitted);
                        }
                    }
                    give(&mut output.session(&cap), emitted);
                });
                let least = frontier.frontier().first().copied();
                run.advance(least, &mut |cap, batches| {
                    give(&mut output.session(cap), batches)
                });
            }
        },
    )
}

/// Sends batches into an output session.
fn give<S: GiveTagged>(session: &mut S, batches: Vec<RecordBatch>) {
    for batch in batches {
        session.give_tagged((0u32, Batch(batch)));
    }
}

/// An output session of tagged batches, whatever its capability type.
trait GiveTagged {
    fn give_tagged(&mut self, item: Tagged);
}

impl<'a, 'b, CT: timely::dataflow::operators::CapabilityTrait<Time>> GiveTagged
    for timely::dataflow::operators::generic::Session<
        'a,
        'b,
        Time,
        CapacityContainerBuilder<Vec<Tagged>>,
        CT,
    >
{
    fn give_tagged(&mut self, item: Tagged) {
        self.give(item);
    }
}

/// Builds the operator of a join stage: the join, then the operators fused after it.
#[allow(clippy::too_many_arguments)] // the parts of a join stage, each needed once
fn join_operator<'s, P1, P2>(
    left: TaggedStream<'s>,
    right: TaggedStream<'s>,
    pacts: (P1, P2),
    name: &str,
    join: Box<dyn JoinOperator>,
    rest: Vec<ChainOp>,
    join_name: String,
    shared: &Arc<Shared>,
) -> TaggedStream<'s>
where
    P1: ParallelizationContract<Time, Vec<Tagged>>,
    P2: ParallelizationContract<Time, Vec<Tagged>>,
{
    let shared = Arc::clone(shared);
    let join = Rc::new(RefCell::new(join));
    let mut chain = vec![ChainOp {
        name: join_name.clone(),
        op: Box::new(JoinHead(Rc::clone(&join))),
    }];
    chain.extend(rest);
    left.binary_frontier::<_, CapacityContainerBuilder<Vec<Tagged>>, _, _, _, _>(
        right,
        pacts.0,
        pacts.1,
        name,
        move |capability, _info| {
            let mut run = StageRun {
                chain,
                held: Some(capability),
                watermark: 0,
                finished: false,
                frontier: None,
                unflushed: None,
                shared,
            };
            move |(left, left_frontier), (right, right_frontier), output| {
                // The two inputs have different types (their pacts differ), hence a macro.
                macro_rules! read {
                    ($side:expr, $input:expr) => {
                        $input.for_each_stamp(|cap, data| {
                            let mut emitted = Vec::new();
                            for container in data {
                                for (_, batch) in container.drain(..) {
                                    let mut out = Collector::new();
                                    let result = join
                                        .borrow_mut()
                                        .process_batch($side, batch.0, &mut out)
                                        .map_err(|e| name_error(&join_name, e));
                                    match result {
                                        Ok(()) => {
                                            for b in out.take() {
                                                run.push(1, b, &mut emitted);
                                            }
                                        }
                                        Err(e) => run.shared.fail(e),
                                    }
                                }
                            }
                            give(&mut output.session(&cap), emitted);
                        })
                    };
                }
                read!(Side::Left, left);
                read!(Side::Right, right);
                let least = [left_frontier, right_frontier]
                    .iter()
                    .filter_map(|f| f.frontier().first().copied())
                    .min();
                run.advance(least, &mut |cap, batches| {
                    give(&mut output.session(cap), batches)
                });
            }
        },
    )
}

/// The join at the head of a join stage's chain: it receives its input batches directly
/// (with their side), and the chain's signals through this adapter.
struct JoinHead(Rc<RefCell<Box<dyn JoinOperator>>>);

impl StreamOperator for JoinHead {
    fn process_batch(&mut self, _batch: RecordBatch, _out: &mut Collector) -> Result<()> {
        Err(Error::Internal(
            "a join received a batch without its side".into(),
        ))
    }
    fn on_watermark(&mut self, watermark: u64, out: &mut Collector) -> Result<()> {
        self.0.borrow_mut().on_watermark(watermark, out)
    }
    fn hold(&self) -> Option<u64> {
        self.0.borrow().hold()
    }
    fn finish(&mut self, out: &mut Collector) -> Result<()> {
        self.0.borrow_mut().finish(out)
    }
}

/// Where a blocking stage's capability may move: the input frontier, but no further than the
/// least event time an operator of the chain still holds back.
fn hold_target(chain: &[ChainOp], frontier: Time) -> Time {
    match chain.iter().filter_map(|op| op.op.hold()).min() {
        Some(hold) => frontier.min(Time::new(hold, u64::MAX)),
        None => frontier,
    }
}

/// Tags every batch of `input` with its destination worker according to `partitioning`.
fn route<'s>(
    input: TaggedStream<'s>,
    partitioning: &Partitioning,
    schema: &SchemaRef,
    ctx: &WorkerContext,
    shared: &Arc<Shared>,
) -> Result<TaggedStream<'s>> {
    let peers = ctx.workers;
    let keys = match partitioning {
        Partitioning::Hash { keys } => column_indices(schema, keys, "key_by")?,
        _ => Vec::new(),
    };
    let partitioning = partitioning.clone();
    let shared = Arc::clone(shared);
    let mut next = ctx.index % peers.max(1);
    Ok(
        input.unary::<CapacityContainerBuilder<Vec<Tagged>>, _, _, _>(
            Pipeline,
            &format!("route {partitioning}"),
            move |_capability, _info| {
                move |input, output| {
                    input.for_each_stamp(|cap, data| {
                        let mut session = output.session(&cap);
                        for container in data {
                            for (_, batch) in container.drain(..) {
                                match &partitioning {
                                    Partitioning::Forward | Partitioning::Gather => {
                                        session.give((0u32, batch));
                                    }
                                    Partitioning::RoundRobin => {
                                        session.give((next as u32, batch));
                                        next = (next + 1) % peers;
                                    }
                                    Partitioning::Broadcast => {
                                        // Through the store, a broadcast batch is one object
                                        // read by every worker of the other processes.
                                        let remote = peers.saturating_sub(shared.local_workers);
                                        if let Err(e) = crate::batch::share(&batch.0, remote) {
                                            shared.fail(e);
                                        }
                                        for worker in 0..peers {
                                            session.give((worker as u32, batch.clone()));
                                        }
                                    }
                                    Partitioning::Hash { .. } => {
                                        match split_by_hash(&batch.0, &keys, peers) {
                                            Ok(parts) => {
                                                for (part, b) in parts {
                                                    session.give((part as u32, Batch(b)));
                                                }
                                            }
                                            Err(e) => shared.fail(e),
                                        }
                                    }
                                }
                            }
                        }
                    });
                }
            },
        ),
    )
}

/// Wraps a sink as the last operator of a chain: opens the writer at the first batch (or at
/// the end, so that an empty result still produces a valid, empty output), commits at the end.
struct SinkOperator {
    sink: Arc<dyn Sink>,
    ctx: WorkerContext,
    schema: SchemaRef,
    writer: Option<Box<dyn SinkWriter>>,
    metrics: Arc<Metrics>,
    count_output: bool,
}

impl SinkOperator {
    fn new(
        sink: Arc<dyn Sink>,
        ctx: WorkerContext,
        schema: SchemaRef,
        metrics: Arc<Metrics>,
        count_output: bool,
    ) -> Self {
        SinkOperator {
            sink,
            ctx,
            schema,
            writer: None,
            metrics,
            count_output,
        }
    }

    fn writer(&mut self, schema: &SchemaRef) -> Result<&mut Box<dyn SinkWriter>> {
        match &mut self.writer {
            Some(writer) => Ok(writer),
            slot => Ok(slot.insert(self.sink.open(&self.ctx, schema)?)),
        }
    }
}

impl StreamOperator for SinkOperator {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut Collector) -> Result<()> {
        let rows = batch.num_rows() as u64;
        self.writer(&batch.schema())?.write(&batch)?;
        if self.count_output {
            self.metrics.records_out.fetch_add(rows, Ordering::Relaxed);
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Collector) -> Result<()> {
        let schema = Arc::clone(&self.schema);
        self.writer(&schema)?.finish()
    }

    fn flush(&mut self) -> Result<()> {
        match self.writer.as_mut() {
            Some(writer) => writer.flush(),
            None => Ok(()),
        }
    }
}

fn build_source_stage<'s>(
    scope: Scope<'s, Time>,
    shared: &Arc<Shared>,
    stage: &Stage,
    ctx: &WorkerContext,
    active: bool,
    pace: &ProbeHandle<Time>,
) -> Result<TaggedStream<'s>> {
    let head = stage
        .ops
        .first()
        .ok_or_else(|| Error::Internal(format!("stage {} is empty", stage.id)))?;
    let node = &shared.graph.plan().nodes[head.node];
    let (source, dead_sink, late_sink) = match shared.graph.node_impl(head.node) {
        Some(NodeImpl::Source {
            source,
            dead_letters,
            late_data,
        }) => (Arc::clone(source), dead_letters.clone(), late_data.clone()),
        _ => return Err(Error::Internal(format!("stage {} has no source", stage.id))),
    };
    let policy = match &node.kind {
        NodeKind::Source { on_bad_record, .. } => *on_bad_record,
        _ => BadRecordPolicy::Fail,
    };
    let source_name = node.name.clone();
    let mut reader: Option<Box<dyn SourceReader>> = if active {
        Some(source.open(ctx).map_err(|e| name_error(&source_name, e))?)
    } else {
        None
    };
    let mut chain = if active {
        create_chain(shared, stage, ctx, 1)?
    } else {
        Vec::new()
    };
    let mut dead_writer = dead_sink.map(|sink| {
        SinkOperator::new(
            sink,
            ctx.clone(),
            DeadLetter::schema(),
            Arc::clone(&shared.metrics),
            false,
        )
    });
    let late_to_sink = late_sink.is_some();
    let mut late_writer = match (late_sink, head.output_schema.clone()) {
        (Some(sink), Some(schema)) => Some(SinkOperator::new(
            sink,
            ctx.clone(),
            schema,
            Arc::clone(&shared.metrics),
            false,
        )),
        _ => None,
    };
    let mut clock = match &node.kind {
        NodeKind::Source {
            event_time: Some(spec),
            ..
        } => {
            let schema = head
                .output_schema
                .clone()
                .ok_or_else(|| Error::Internal(format!("source '{source_name}' has no schema")))?;
            Some(EventClock::new(spec, &schema, &source_name, late_to_sink)?)
        }
        _ => None,
    };
    let idle_timeout = match &node.kind {
        NodeKind::Source {
            event_time: Some(spec),
            ..
        } => spec.idle_timeout_ms.map(Duration::from_millis),
        _ => None,
    };
    let partitions = shared.partitions.get(&head.node).cloned();
    let index = ctx.index;
    // Source workers of other processes follow other epoch clocks.
    let other_processes = shared.local_workers < ctx.workers;
    let shared = Arc::clone(shared);
    let pace = pace.clone();
    let name = stage_name(stage);
    let stream = timely_source::<_, CapacityContainerBuilder<Vec<Tagged>>, _, _>(
        scope,
        &name,
        move |capability, info| {
            let activator = Rc::new(scope.activator_for(info.address));
            let mut cap = Some(capability);
            let mut collector = SourceCollector::new(policy);
            let activator = RefCell::new(activator);
            let mut waits: u32 = 0;
            // Activations in a row whose reads found nothing, and since when.
            let mut empty: u32 = 0;
            let mut quiet_since: Option<Instant> = None;
            // When this worker last read something or moved its epoch while idle.
            let mut moved = Instant::now();
            // The times of the last MAX_EPOCHS_IN_FLIGHT reads, oldest first.
            let mut recent: VecDeque<Time> = VecDeque::new();
            // Checkpoints of the reader not acknowledged yet, with the time they were sent at.
            let mut unacked: VecDeque<(Time, u64)> = VecDeque::new();
            // Set once the reader is exhausted but some of its checkpoints are not
            // acknowledged: the capability is held until they are.
            let mut draining = false;
            move |output| {
                let Some(current) = cap.as_mut() else {
                    return;
                };
                if shared.aborted() {
                    cap = None;
                    return;
                }
                if let Err(e) = acknowledge_passed(&mut unacked, reader.as_mut(), &pace) {
                    shared.fail(name_error(&source_name, e));
                    cap = None;
                    return;
                }
                if draining {
                    if unacked.is_empty() {
                        cap = None;
                    } else {
                        activator
                            .borrow()
                            .activate_after(Duration::from_micros(200));
                    }
                    return;
                }
                let now = *current.time();
                if recent.len() as u64 >= MAX_EPOCHS_IN_FLIGHT
                    && let Some(oldest) = recent.front()
                    && pace.less_than(oldest)
                {
                    // Downstream is behind. Operators of this worker catch up in the same step,
                    // so look again at once a few times; then back off, so that waiting for
                    // another worker does not spin a core that worker may need.
                    waits += 1;
                    if waits <= 16 {
                        activator.borrow().activate();
                    } else {
                        let micros = 10u64 << (waits - 16).min(7);
                        activator
                            .borrow()
                            .activate_after(Duration::from_micros(micros));
                    }
                    return;
                }
                waits = 0;
                let mut more = true;
                let mut produced = false;
                let mut emitted = Vec::new();
                let mut failed = None;
                for _ in 0..READS_PER_ACTIVATION {
                    let Some(r) = reader.as_mut() else {
                        more = false;
                        break;
                    };
                    match r.read(&mut collector) {
                        Ok(m) => more = m,
                        Err(e) => {
                            failed = Some(name_error(&source_name, e));
                            break;
                        }
                    }
                    let (records, bytes) = collector.take_counts();
                    produced |= records > 0 || bytes > 0;
                    shared
                        .metrics
                        .records_in
                        .fetch_add(records, Ordering::Relaxed);
                    shared.metrics.bytes_in.fetch_add(bytes, Ordering::Relaxed);
                    let (batches, mut dead) = collector.take();
                    let mut admitted = Vec::with_capacity(batches.len());
                    for batch in batches {
                        match clock.as_mut() {
                            None => admitted.push(batch),
                            Some(clock) => {
                                // The watermark reached so far, which is never behind the
                                // one the batch is sent under: lateness then does not
                                // depend on how reads fall into activations.
                                let watermark = clock.watermark(now.watermark);
                                let admitted_batch = clock
                                    .admit(batch, watermark, &mut collector)
                                    .and_then(|(batch, late)| {
                                        if let (Some(late), Some(w)) = (late, late_writer.as_mut())
                                        {
                                            shared.metrics.late_records.fetch_add(
                                                late.num_rows() as u64,
                                                Ordering::Relaxed,
                                            );
                                            w.process_batch(late, &mut Collector::new())?;
                                        }
                                        Ok(batch)
                                    });
                                match admitted_batch {
                                    Ok(batch) => admitted.push(batch),
                                    Err(e) => {
                                        failed = Some(e);
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    dead.extend(collector.take().1);
                    produced |= !dead.is_empty();
                    if failed.is_some() {
                        break;
                    }
                    if !dead.is_empty() {
                        shared
                            .metrics
                            .dead_letters
                            .fetch_add(dead.len() as u64, Ordering::Relaxed);
                        let written = DeadLetter::to_batch(&source_name, &dead).and_then(|b| {
                            match dead_writer.as_mut() {
                                Some(w) => w.process_batch(b, &mut Collector::new()),
                                None => Err(Error::Plan(format!(
                                    "source '{source_name}' dead-letters bad records but has no dead-letter sink"
                                ))),
                            }
                        });
                        if let Err(e) = written {
                            failed = Some(e);
                            break;
                        }
                    }
                    for batch in admitted {
                        if let Err(e) = run_chain(&mut chain, 0, batch, &mut emitted) {
                            failed = Some(e);
                            break;
                        }
                    }
                    if failed.is_some() || !more {
                        break;
                    }
                }
                if !more && failed.is_none() {
                    if let Err(e) = signal_chain(&mut chain, Signal::Finish, &mut emitted) {
                        failed = Some(e);
                    }
                    if let Some(w) = dead_writer.as_mut()
                        && let Err(e) = w.finish(&mut Collector::new())
                    {
                        failed = Some(e);
                    }
                    if let Some(w) = late_writer.as_mut()
                        && let Err(e) = w.finish(&mut Collector::new())
                    {
                        failed = Some(e);
                    }
                }
                if let Some(e) = failed {
                    shared.fail(e);
                    cap = None;
                    return;
                }
                if !emitted.is_empty() {
                    let mut session = output.session(&*current);
                    for batch in emitted {
                        session.give((0u32, Batch(batch)));
                    }
                }
                if let Some(token) = reader.as_mut().and_then(|r| r.checkpoint()) {
                    unacked.push_back((now, token));
                }
                if !more {
                    if let Some(p) = partitions.as_ref() {
                        p.publish(index, now.watermark, PartitionState::Done);
                    }
                    if unacked.is_empty() {
                        cap = None;
                    } else {
                        // Hold on until what was read is acknowledged, at a time past the
                        // last read so that it can be seen to pass.
                        current.downgrade(&Time::new(now.watermark, now.epoch + 1));
                        draining = true;
                        activator.borrow().activate();
                    }
                    return;
                }
                let mut watermark = clock
                    .as_ref()
                    .map_or(now.watermark, |c| c.watermark(now.watermark));
                if produced {
                    empty = 0;
                    quiet_since = None;
                } else {
                    empty += 1;
                    quiet_since.get_or_insert_with(Instant::now);
                }
                // A partition quiet for longer than the idle timeout follows the others.
                let idle = matches!(
                    (idle_timeout, quiet_since),
                    (Some(timeout), Some(since)) if since.elapsed() >= timeout
                );
                if let Some(p) = partitions.as_ref() {
                    if idle && let Some(target) = p.idle_target(index) {
                        watermark = watermark.max(target);
                    }
                    let state = if idle {
                        PartitionState::Idle
                    } else {
                        PartitionState::Active
                    };
                    p.publish(index, watermark, state);
                }
                if !produced && watermark == now.watermark {
                    // Nothing read: keep the epoch up with the other source workers (see
                    // `EpochClock`). Those of other processes have another clock: one whose
                    // epoch has been the job's frontier for a while moves past them.
                    let across = other_processes
                        && moved.elapsed() >= REMOTE_IDLE_MOVE
                        && !pace.less_than(&now);
                    let jump = shared
                        .epochs
                        .after_idle(now.epoch)
                        .or_else(|| across.then(|| now.epoch.saturating_add(EPOCH_JUMP)));
                    if let Some(epoch) = jump {
                        current.downgrade(&Time::new(now.watermark, epoch));
                        moved = Instant::now();
                    }
                    // Poll again after a growing pause (50 µs up to 6.4 ms) rather than spin.
                    let micros = 50u64 << (empty - 1).min(7);
                    activator
                        .borrow()
                        .activate_after(Duration::from_micros(micros));
                    return;
                }
                // Sinks fused behind the source make durable what they were given before
                // the source's time moves past it.
                if let Err(e) = signal_chain(&mut chain, Signal::Flush, &mut Vec::new()) {
                    shared.fail(e);
                    cap = None;
                    return;
                }
                recent.push_back(now);
                if recent.len() as u64 > MAX_EPOCHS_IN_FLIGHT {
                    recent.pop_front();
                }
                current.downgrade(&Time::new(watermark, shared.epochs.after_read(now.epoch)));
                moved = Instant::now();
                if watermark > now.watermark {
                    // The operators fused behind the source see its watermark directly.
                    let mut emitted = Vec::new();
                    match signal_chain(&mut chain, Signal::Watermark(watermark), &mut emitted) {
                        Ok(()) => {
                            let mut session = output.session(&*current);
                            for batch in emitted {
                                session.give((0u32, Batch(batch)));
                            }
                        }
                        Err(e) => {
                            shared.fail(e);
                            cap = None;
                            return;
                        }
                    }
                }
                activator.borrow().activate();
            }
        },
    );
    Ok(stream)
}

/// Acknowledges the reader's checkpoints whose time every output of the job has passed.
fn acknowledge_passed(
    unacked: &mut VecDeque<(Time, u64)>,
    reader: Option<&mut Box<dyn SourceReader>>,
    pace: &ProbeHandle<Time>,
) -> Result<()> {
    let Some(reader) = reader else {
        unacked.clear();
        return Ok(());
    };
    let mut last = None;
    while let Some((time, token)) = unacked.front()
        && !pace.less_equal(time)
    {
        last = Some(*token);
        unacked.pop_front();
    }
    match last {
        Some(token) => reader.acknowledge(token),
        None => Ok(()),
    }
}

/// Event time at a source: admits the records at or after the watermark, reports the late
/// ones, and moves the watermark to the latest event time seen minus the allowed delay.
struct EventClock {
    source: String,
    column: usize,
    max_delay_ms: u64,
    /// Records down to this far behind the watermark are still admitted.
    lateness_ms: u64,
    latest: Option<u64>,
    /// Whether late records go to a late-data sink rather than the bad-record path.
    late_to_sink: bool,
}

impl EventClock {
    fn new(
        spec: &EventTimeSpec,
        schema: &SchemaRef,
        source: &str,
        late_to_sink: bool,
    ) -> Result<Self> {
        let column = column_indices(schema, std::slice::from_ref(&spec.column), "event time")?[0];
        crate::time::event_time_type_check(schema.field(column).data_type(), &spec.column)?;
        Ok(EventClock {
            source: source.to_owned(),
            column,
            max_delay_ms: spec.max_delay_ms,
            lateness_ms: spec.allowed_lateness_ms,
            latest: None,
            late_to_sink,
        })
    }

    /// The time the source's messages travel under after what has been admitted: its
    /// watermark less the allowed lateness, and never behind `current`. Records before it
    /// are late.
    fn watermark(&self, current: u64) -> u64 {
        self.latest.map_or(current, |t| {
            current.max(
                t.saturating_sub(self.max_delay_ms)
                    .saturating_sub(self.lateness_ms),
            )
        })
    }

    /// Keeps the rows of `batch` whose event time is at or after `watermark`. Late rows come
    /// back apart when the source has a late-data sink; otherwise they, like rows without an
    /// event time, go to `out` as bad records (which fails the job unless the source
    /// dead-letters).
    fn admit(
        &mut self,
        batch: RecordBatch,
        watermark: u64,
        out: &mut SourceCollector,
    ) -> Result<(RecordBatch, Option<RecordBatch>)> {
        let context = || format!("event time of '{}'", self.source);
        let times = crate::time::event_millis(batch.column(self.column))
            .map_err(|e| Error::arrow(context(), e))?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut late = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let time = times.is_valid(row).then(|| times.value(row));
            let admitted = is_admitted(time, watermark);
            keep.push(admitted);
            late.push(false);
            let reason = match time {
                Some(t) if admitted => {
                    let t = t as u64;
                    self.latest = Some(self.latest.map_or(t, |l| l.max(t)));
                    continue;
                }
                Some(_) if self.late_to_sink => {
                    late[row] = true;
                    continue;
                }
                None => "the record has no event time".to_owned(),
                Some(t) => format!(
                    "late: event time {t} ms is behind the watermark less the allowed lateness, {watermark} ms (allowed delay {} ms, lateness {} ms)",
                    self.max_delay_ms, self.lateness_ms
                ),
            };
            out.bad_record(DeadLetter {
                location: format!("{} (event time)", self.source),
                reason,
                record: row_text(&batch, row),
            })?;
        }
        if keep.iter().all(|k| *k) {
            return Ok((batch, None));
        }
        let late = if late.iter().any(|l| *l) {
            Some(
                filter_record_batch(&batch, &BooleanArray::from(late))
                    .map_err(|e| Error::arrow(context(), e))?,
            )
        } else {
            None
        };
        let kept = filter_record_batch(&batch, &BooleanArray::from(keep))
            .map_err(|e| Error::arrow(context(), e))?;
        Ok((kept, late))
    }
}

fn is_admitted(time: Option<i64>, watermark: u64) -> bool {
    matches!(time, Some(t) if t >= 0 && (t as u64) >= watermark)
}

/// One row as `a, b, c`, for dead letters.
fn row_text(batch: &RecordBatch, row: usize) -> String {
    let options = arrow::util::display::FormatOptions::default();
    batch
        .columns()
        .iter()
        .map(|c| {
            arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options)
                .map(|f| f.value(row).to_string())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(",")
}
