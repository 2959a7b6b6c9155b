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
//! input's frontier, so they never stall this accounting.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::operator::source as timely_source;
use timely::dataflow::operators::{Capability, Operator, Probe};
use timely::dataflow::{ProbeHandle, Scope, Stream};

use crate::batch::{Batch, column_indices, split_by_hash};
use crate::compile::{PhysicalPlan, Role, Stage, compile, factory_of};
use crate::connector::{
    BadRecordPolicy, DeadLetter, Sink, SinkWriter, SourceCollector, SourceReader,
};
use crate::error::{Error, Result};
use crate::operator::{Collector, Operator as StreamOperator, WorkerContext};
use crate::plan::{JobGraph, NodeImpl, NodeKind, Partitioning};

/// Epochs a source may run ahead of the slowest stage.
pub const MAX_EPOCHS_IN_FLIGHT: u64 = 16;

/// Batches a source reads in one activation before it lets other operators run.
pub const READS_PER_ACTIVATION: usize = 4;

/// A batch tagged with the worker it is routed to.
type Tagged = (u32, Batch);
type TaggedStream<'s> = Stream<'s, u64, Vec<Tagged>>;

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
}

/// How to run a job.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Worker threads.
    pub workers: usize,
    /// Counters to update while running; a fresh set when `None`.
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            workers: 1,
            metrics: None,
        }
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
    /// Wall-clock time from start to the last worker's end.
    pub elapsed: Duration,
}

struct Shared {
    graph: JobGraph,
    plan: PhysicalPlan,
    metrics: Arc<Metrics>,
    failure: Mutex<Option<Error>>,
    abort: AtomicBool,
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
    let plan = compile(graph, options.workers)?;
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
    let shared = Arc::new(Shared {
        graph: graph.clone(),
        plan,
        metrics: Arc::clone(&metrics),
        failure: Mutex::new(None),
        abort: AtomicBool::new(false),
    });
    let started = Instant::now();
    tracing::info!(job = %job, workers, "starting job");
    let worker_shared = Arc::clone(&shared);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
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
    };
    let pace = ProbeHandle::<u64>::new();
    worker.dataflow::<u64, _, _>(|scope| build_dataflow(scope, shared, &ctx, &pace))?;
    while worker.step_or_park(Some(Duration::from_millis(20))) {
        if shared.aborted() {
            break;
        }
    }
    Ok(())
}

fn build_dataflow<'s>(
    scope: Scope<'s, u64>,
    shared: &Arc<Shared>,
    ctx: &WorkerContext,
    pace: &ProbeHandle<u64>,
) -> Result<()> {
    let mut outputs: Vec<TaggedStream<'s>> = Vec::with_capacity(shared.plan.stages.len());
    for stage in &shared.plan.stages {
        // A stage of parallelism one runs on worker 0 only: elsewhere it is an empty shell
        // that keeps the dataflow the same shape on every worker.
        let active = stage.parallelism > 1 || ctx.index == 0;
        let stream = match &stage.input {
            None => build_source_stage(scope, shared, stage, ctx, active, pace)?,
            Some(input) => {
                let upstream = outputs
                    .get(input.stage)
                    .cloned()
                    .ok_or_else(|| Error::Internal(format!("stage {} has no input", stage.id)))?;
                let chain = if active {
                    create_chain(shared, stage, ctx, 0)?
                } else {
                    Vec::new()
                };
                let blocking = stage.is_blocking(&shared.graph);
                let name = stage_name(stage);
                match &input.partitioning {
                    Partitioning::Forward => {
                        chain_operator(upstream, Pipeline, &name, chain, blocking, shared)
                    }
                    partitioning => {
                        let upstream_schema = shared.plan.stages[input.stage]
                            .ops
                            .last()
                            .and_then(|op| op.output_schema.clone())
                            .ok_or_else(|| Error::Internal("stage without schema".into()))?;
                        let routed = route(upstream, partitioning, &upstream_schema, ctx, shared)?;
                        let pact = Exchange::new(|tagged: &Tagged| u64::from(tagged.0));
                        chain_operator(routed, pact, &name, chain, blocking, shared)
                    }
                }
            }
        };
        outputs.push(stream.probe_with(pace));
    }
    Ok(())
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
            Role::Source => {
                return Err(Error::Internal(format!(
                    "source '{}' in the middle of a stage",
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

/// Finishes every operator of the chain in order, pushing what each emits through the rest.
fn finish_chain(chain: &mut [ChainOp], out: &mut Vec<RecordBatch>) -> Result<()> {
    for i in 0..chain.len() {
        let mut collector = Collector::new();
        let op = &mut chain[i];
        op.op
            .finish(&mut collector)
            .map_err(|e| name_error(&op.name, e))?;
        for batch in collector.take() {
            run_chain(chain, i + 1, batch, out)?;
        }
    }
    Ok(())
}

fn chain_operator<'s, P>(
    input: TaggedStream<'s>,
    pact: P,
    name: &str,
    mut chain: Vec<ChainOp>,
    blocking: bool,
    shared: &Arc<Shared>,
) -> TaggedStream<'s>
where
    P: ParallelizationContract<u64, Vec<Tagged>>,
{
    let shared = Arc::clone(shared);
    input.unary_frontier::<CapacityContainerBuilder<Vec<Tagged>>, _, _, _>(
        pact,
        name,
        move |capability, _info| {
            // Only a blocking stage emits after its input ends, and so needs to hold a
            // capability; it holds it at its input frontier, never behind it.
            let mut held: Option<Capability<u64>> = blocking.then_some(capability);
            let mut finished = false;
            move |(input, frontier), output| {
                let mut failure = None;
                input.for_each_stamp(|cap, data| {
                    let mut emitted = Vec::new();
                    for container in data {
                        for (_, batch) in container.drain(..) {
                            if failure.is_none()
                                && !shared.aborted()
                                && let Err(e) = run_chain(&mut chain, 0, batch.0, &mut emitted)
                            {
                                failure = Some(e);
                            }
                        }
                    }
                    if !emitted.is_empty() {
                        let mut session = output.session(&cap);
                        for batch in emitted {
                            session.give((0u32, Batch(batch)));
                        }
                    }
                });
                if let Some(e) = failure {
                    shared.fail(e);
                }
                let frontier = frontier.frontier();
                if let (Some(cap), Some(&least)) = (held.as_mut(), frontier.first())
                    && least > *cap.time()
                {
                    cap.downgrade(&least);
                }
                if frontier.is_empty() && !finished {
                    finished = true;
                    if !shared.aborted() {
                        let mut emitted = Vec::new();
                        match finish_chain(&mut chain, &mut emitted) {
                            Ok(()) => {
                                if let Some(cap) = held.as_ref() {
                                    let mut session = output.session(cap);
                                    for batch in emitted {
                                        session.give((0u32, Batch(batch)));
                                    }
                                }
                            }
                            Err(e) => shared.fail(e),
                        }
                    }
                    held = None;
                }
                if shared.aborted() {
                    held = None;
                }
            }
        },
    )
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
}

fn build_source_stage<'s>(
    scope: Scope<'s, u64>,
    shared: &Arc<Shared>,
    stage: &Stage,
    ctx: &WorkerContext,
    active: bool,
    pace: &ProbeHandle<u64>,
) -> Result<TaggedStream<'s>> {
    let head = stage
        .ops
        .first()
        .ok_or_else(|| Error::Internal(format!("stage {} is empty", stage.id)))?;
    let node = &shared.graph.plan().nodes[head.node];
    let (source, dead_sink) = match shared.graph.node_impl(head.node) {
        Some(NodeImpl::Source {
            source,
            dead_letters,
        }) => (Arc::clone(source), dead_letters.clone()),
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
            move |output| {
                let Some(current) = cap.as_mut() else {
                    return;
                };
                if shared.aborted() {
                    cap = None;
                    return;
                }
                let epoch = *current.time();
                if epoch >= MAX_EPOCHS_IN_FLIGHT && pace.less_than(&(epoch - MAX_EPOCHS_IN_FLIGHT))
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
                    shared
                        .metrics
                        .records_in
                        .fetch_add(records, Ordering::Relaxed);
                    shared.metrics.bytes_in.fetch_add(bytes, Ordering::Relaxed);
                    let (batches, dead) = collector.take();
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
                    for batch in batches {
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
                    if let Err(e) = finish_chain(&mut chain, &mut emitted) {
                        failed = Some(e);
                    }
                    if let Some(w) = dead_writer.as_mut()
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
                if more {
                    current.downgrade(&(epoch + 1));
                    activator.borrow().activate();
                } else {
                    cap = None;
                }
            }
        },
    );
    Ok(stream)
}
