//! The compiler: logical plan → physical plan of fused stages joined by partitioned edges.
//!
//! A *stage* is a chain of operators that run one after another on the same worker with no
//! exchange between them (forward edges are fused). Every edge between stages says how
//! batches move: Hash(keys), RoundRobin, Broadcast or Gather. An operator with a combiner
//! (a keyed aggregate) gets its combiner fused into the stage before its exchange, so only
//! partial results cross workers.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::batch::column_indices;
use crate::connector::Parallelism;
use crate::error::{Error, Result};
use crate::operator::OperatorFactory;
use crate::plan::{JobGraph, LOGICAL_PLAN_VERSION, NodeId, NodeImpl, NodeKind, Partitioning};

/// The version of the physical plan's form.
pub const PHYSICAL_PLAN_VERSION: u32 = 1;

/// What a physical operator does in its stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads input: first in its stage.
    Source,
    /// Transforms batches.
    Operator,
    /// The pre-aggregation of a later operator, before its exchange.
    Combiner,
    /// Writes output.
    Sink,
    /// Joins two inputs: first in its stage.
    Join,
    /// Builds its own dataflow: alone in its stage.
    Dataflow,
}

/// One operator of a stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhysicalOp {
    /// The logical node it comes from.
    pub node: NodeId,
    /// The node's name.
    pub name: String,
    /// The kind of its descriptor.
    pub kind: String,
    /// Its role.
    pub role: Role,
    /// Its output columns, as `name: type`.
    pub output: Vec<String>,
    /// The schema of its input (none for a source).
    #[serde(skip)]
    pub input_schema: Option<SchemaRef>,
    /// The schema of its second input (a join's right side).
    #[serde(skip)]
    pub second_input_schema: Option<SchemaRef>,
    /// The schema of its output.
    #[serde(skip)]
    pub output_schema: Option<SchemaRef>,
}

/// Where a stage's input comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageInput {
    /// The upstream stage.
    pub stage: usize,
    /// How batches move along the edge.
    pub partitioning: Partitioning,
}

/// A chain of operators fused on one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage {
    /// Its index.
    pub id: usize,
    /// On how many workers it runs (the job's count, or one).
    pub parallelism: usize,
    /// Its input edge (none for a source stage).
    pub input: Option<StageInput>,
    /// Its second input edge (a join stage's right side).
    #[serde(default)]
    pub second_input: Option<StageInput>,
    /// The operators, in order.
    pub ops: Vec<PhysicalOp>,
}

impl Stage {
    /// Whether some operator of this stage holds its output until its input ends.
    pub fn is_blocking(&self, graph: &JobGraph) -> bool {
        self.ops.iter().any(|op| {
            op.role == Role::Join
                || factory_of(graph, op)
                    .map(|f| f.is_blocking())
                    .unwrap_or(false)
        })
    }
}

/// The operator factory behind a physical operator, if it is one.
pub(crate) fn factory_of<'g>(
    graph: &'g JobGraph,
    op: &PhysicalOp,
) -> Option<&'g Arc<dyn OperatorFactory>> {
    match (graph.node_impl(op.node), op.role) {
        (Some(NodeImpl::Operator { op: f, .. }), Role::Operator) => Some(f),
        (
            Some(NodeImpl::Operator {
                combiner: Some(c), ..
            }),
            Role::Combiner,
        ) => Some(c),
        _ => None,
    }
}

/// The plan the executor runs: stages, their parallelism and the edges between them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhysicalPlan {
    /// [`PHYSICAL_PLAN_VERSION`].
    pub version: u32,
    /// The job's name.
    pub job: String,
    /// The number of workers it was compiled for.
    pub workers: usize,
    /// The stages; every stage's input comes before it.
    pub stages: Vec<Stage>,
}

fn describe_schema(schema: &SchemaRef) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect()
}

/// Where the output of a logical node lives during compilation.
#[derive(Clone)]
struct Placed {
    stage: usize,
    pending: Partitioning,
    schema: SchemaRef,
    /// Whether the stage's last operator is this stream's producer and nothing else reads it,
    /// so a forward consumer may be appended to the stage.
    extendable: bool,
}

/// Compiles a job graph for `workers` workers.
///
/// Resolves every schema (sources may read a sample of their input here), so an unknown
/// column or a missing file is reported before anything runs.
pub fn compile(graph: &JobGraph, workers: usize) -> Result<PhysicalPlan> {
    let plan = graph.plan();
    if plan.version != LOGICAL_PLAN_VERSION {
        return Err(Error::Version {
            what: "logical plan",
            found: plan.version,
            expected: LOGICAL_PLAN_VERSION,
        });
    }
    if workers == 0 {
        crate::plan_err!("a job needs at least one worker");
    }
    if workers > crate::batch::KEY_GROUPS as usize {
        crate::plan_err!(
            "a job has at most {} workers (one per key group), not {workers}",
            crate::batch::KEY_GROUPS
        );
    }
    plan.validate()?;
    if !plan
        .nodes
        .iter()
        .any(|n| matches!(n.kind, NodeKind::Sink { .. }))
    {
        crate::plan_err!("job '{}' has no sink: nothing would be written", plan.job);
    }
    for node in &plan.nodes {
        if !matches!(node.kind, NodeKind::Sink { .. }) && plan.consumers(node.id).next().is_none() {
            crate::plan_err!(
                "the output of '{}' is never used: end it with a sink, or remove it",
                node.name
            );
        }
    }

    let mut stages: Vec<Stage> = Vec::new();
    let mut placed: Vec<Option<Placed>> = vec![None; plan.nodes.len()];
    let single_consumer = |id: NodeId| plan.consumers(id).count() == 1;

    for node in &plan.nodes {
        let imp = graph.node_impl(node.id).ok_or_else(|| {
            Error::Internal(format!("node '{}' has no implementation", node.name))
        })?;
        let input = node.inputs.first().and_then(|&i| placed[i].clone());
        let here = match (&node.kind, imp, input) {
            (
                NodeKind::Source {
                    connector,
                    event_time,
                    ..
                },
                NodeImpl::Source { source, .. },
                None,
            ) => {
                let schema = source
                    .schema()
                    .map_err(|e| Error::Plan(format!("source '{}': {e}", node.name)))?;
                if let Some(spec) = event_time {
                    let what = format!("source '{}': event time", node.name);
                    let column =
                        column_indices(&schema, std::slice::from_ref(&spec.column), &what)?[0];
                    crate::time::event_time_type_check(
                        schema.field(column).data_type(),
                        &spec.column,
                    )
                    .map_err(|e| Error::Plan(format!("source '{}': {e}", node.name)))?;
                }
                stages.push(Stage {
                    id: stages.len(),
                    parallelism: workers,
                    input: None,
                    second_input: None,
                    ops: vec![PhysicalOp {
                        node: node.id,
                        name: node.name.clone(),
                        kind: connector.kind.clone(),
                        role: Role::Source,
                        output: describe_schema(&schema),
                        input_schema: None,
                        second_input_schema: None,
                        output_schema: Some(Arc::clone(&schema)),
                    }],
                });
                Placed {
                    stage: stages.len() - 1,
                    pending: Partitioning::Forward,
                    schema,
                    extendable: single_consumer(node.id),
                }
            }
            (NodeKind::Exchange { partitioning }, NodeImpl::Exchange, Some(input)) => {
                if let Partitioning::Hash { keys } = partitioning {
                    if keys.is_empty() {
                        crate::plan_err!("'{}': key_by needs at least one key column", node.name);
                    }
                    column_indices(&input.schema, keys, &format!("'{}'", node.name))?;
                }
                Placed {
                    pending: partitioning.clone(),
                    extendable: input.extendable && single_consumer(node.id),
                    ..input
                }
            }
            (NodeKind::Dataflow { op }, NodeImpl::Dataflow(factory), Some(input)) => {
                let second = match node.inputs.get(1) {
                    Some(&i) => Some(placed[i].clone().ok_or_else(|| {
                        Error::Internal(format!("'{}' reads an unplaced node", node.name))
                    })?),
                    None => None,
                };
                let arity = 1 + usize::from(second.is_some());
                if factory.inputs() != arity {
                    crate::plan_err!(
                        "'{}' reads {} inputs but was given {arity}",
                        node.name,
                        factory.inputs()
                    );
                }
                for side in std::iter::once(&input).chain(second.as_ref()) {
                    if side.pending != Partitioning::Forward {
                        crate::plan_err!(
                            "'{}' partitions its own input: remove the {} before it",
                            node.name,
                            side.pending
                        );
                    }
                }
                let schemas: Vec<SchemaRef> = std::iter::once(&input)
                    .chain(second.as_ref())
                    .map(|p| Arc::clone(&p.schema))
                    .collect();
                let output = factory
                    .output_schema(&schemas)
                    .map_err(|e| Error::Plan(format!("'{}': {e}", node.name)))?;
                stages.push(Stage {
                    id: stages.len(),
                    parallelism: workers,
                    input: Some(StageInput {
                        stage: input.stage,
                        partitioning: Partitioning::Forward,
                    }),
                    second_input: second.as_ref().map(|s| StageInput {
                        stage: s.stage,
                        partitioning: Partitioning::Forward,
                    }),
                    ops: vec![PhysicalOp {
                        node: node.id,
                        name: node.name.clone(),
                        kind: op.kind.clone(),
                        role: Role::Dataflow,
                        output: describe_schema(&output),
                        input_schema: Some(Arc::clone(&input.schema)),
                        second_input_schema: second.as_ref().map(|s| Arc::clone(&s.schema)),
                        output_schema: Some(Arc::clone(&output)),
                    }],
                });
                // Nothing fuses behind it: its output is a stream of its own making.
                Placed {
                    stage: stages.len() - 1,
                    pending: Partitioning::Forward,
                    schema: output,
                    extendable: false,
                }
            }
            (NodeKind::Join { op }, NodeImpl::Join(factory), Some(left)) => {
                let right = node
                    .inputs
                    .get(1)
                    .and_then(|&i| placed[i].clone())
                    .ok_or_else(|| {
                        Error::Internal(format!("join '{}' has no right input", node.name))
                    })?;
                let output = factory
                    .output_schema(&left.schema, &right.schema)
                    .map_err(|e| Error::Plan(format!("'{}': {e}", node.name)))?;
                for side in [&left.pending, &right.pending] {
                    if matches!(side, Partitioning::Gather | Partitioning::Broadcast) {
                        crate::plan_err!(
                            "join '{}': its inputs must be partitioned by key (key_by), not {side}",
                            node.name
                        );
                    }
                }
                stages.push(Stage {
                    id: stages.len(),
                    parallelism: workers,
                    input: Some(StageInput {
                        stage: left.stage,
                        partitioning: left.pending.clone(),
                    }),
                    second_input: Some(StageInput {
                        stage: right.stage,
                        partitioning: right.pending.clone(),
                    }),
                    ops: vec![PhysicalOp {
                        node: node.id,
                        name: node.name.clone(),
                        kind: op.kind.clone(),
                        role: Role::Join,
                        output: describe_schema(&output),
                        input_schema: Some(Arc::clone(&left.schema)),
                        second_input_schema: Some(Arc::clone(&right.schema)),
                        output_schema: Some(Arc::clone(&output)),
                    }],
                });
                Placed {
                    stage: stages.len() - 1,
                    pending: Partitioning::Forward,
                    schema: output,
                    extendable: single_consumer(node.id),
                }
            }
            (kind, imp, Some(input)) => {
                let (descriptor_kind, parallelism, role, factory, combiner) = match (kind, imp) {
                    (
                        NodeKind::Operator {
                            op, parallelism, ..
                        },
                        NodeImpl::Operator { op: f, combiner },
                    ) => (
                        op.kind.clone(),
                        *parallelism,
                        Role::Operator,
                        Some(f),
                        combiner.as_ref(),
                    ),
                    (NodeKind::Sink { sink, parallelism }, NodeImpl::Sink(_)) => {
                        (sink.kind.clone(), *parallelism, Role::Sink, None, None)
                    }
                    _ => {
                        return Err(Error::Internal(format!(
                            "node '{}' does not match its implementation",
                            node.name
                        )));
                    }
                };
                let in_parallelism = stages[input.stage].parallelism;
                let mut partitioning = input.pending.clone();
                if parallelism == Parallelism::Single
                    && !(partitioning == Partitioning::Forward && in_parallelism == 1)
                {
                    partitioning = Partitioning::Gather;
                }
                let mut from = input.stage;
                let mut op_input = Arc::clone(&input.schema);
                let mut extendable = input.extendable;
                if partitioning != Partitioning::Forward
                    && partitioning != Partitioning::Broadcast
                    && let Some(combiner) = combiner
                {
                    let schema = combiner
                        .output_schema(&op_input)
                        .map_err(|e| Error::Plan(format!("'{}': {e}", node.name)))?;
                    let op = PhysicalOp {
                        node: node.id,
                        name: node.name.clone(),
                        kind: descriptor_kind.clone(),
                        role: Role::Combiner,
                        output: describe_schema(&schema),
                        input_schema: Some(Arc::clone(&op_input)),
                        second_input_schema: None,
                        output_schema: Some(Arc::clone(&schema)),
                    };
                    if extendable {
                        stages[from].ops.push(op);
                    } else {
                        stages.push(Stage {
                            id: stages.len(),
                            parallelism: in_parallelism,
                            input: Some(StageInput {
                                stage: from,
                                partitioning: Partitioning::Forward,
                            }),
                            second_input: None,
                            ops: vec![op],
                        });
                        from = stages.len() - 1;
                    }
                    op_input = schema;
                    extendable = false;
                }
                let output = match factory {
                    Some(f) => f
                        .output_schema(&op_input)
                        .map_err(|e| Error::Plan(format!("'{}': {e}", node.name)))?,
                    None => Arc::clone(&op_input),
                };
                let op = PhysicalOp {
                    node: node.id,
                    name: node.name.clone(),
                    kind: descriptor_kind,
                    role,
                    output: describe_schema(&output),
                    input_schema: Some(op_input),
                    second_input_schema: None,
                    output_schema: Some(Arc::clone(&output)),
                };
                let stage = if partitioning == Partitioning::Forward && extendable {
                    stages[from].ops.push(op);
                    from
                } else {
                    let parallelism = match (parallelism, &partitioning) {
                        (Parallelism::Single, _) => 1,
                        (_, Partitioning::Forward) => stages[from].parallelism,
                        _ => workers,
                    };
                    stages.push(Stage {
                        id: stages.len(),
                        parallelism,
                        input: Some(StageInput {
                            stage: from,
                            partitioning,
                        }),
                        second_input: None,
                        ops: vec![op],
                    });
                    stages.len() - 1
                };
                Placed {
                    stage,
                    pending: Partitioning::Forward,
                    schema: output,
                    extendable: single_consumer(node.id),
                }
            }
            _ => {
                return Err(Error::Internal(format!(
                    "node '{}' is not connected as its kind requires",
                    node.name
                )));
            }
        };
        placed[node.id] = Some(here);
    }

    Ok(PhysicalPlan {
        version: PHYSICAL_PLAN_VERSION,
        job: plan.job.clone(),
        workers,
        stages,
    })
}
