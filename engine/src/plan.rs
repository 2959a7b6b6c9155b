//! The logical plan: what a job declares, as a plain serializable value, and the job graph
//! that pairs each node of it with the code that runs it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::connector::{BadRecordPolicy, Parallelism, Sink, Source};
use crate::error::{Error, Result};
use crate::operator::{DataflowOperator, JoinOperatorFactory, OperatorFactory};

/// The version of the logical plan's serialized form. Bump it on any incompatible change.
pub const LOGICAL_PLAN_VERSION: u32 = 1;

/// The index of a node in its plan.
pub type NodeId = usize;

/// Names a connector or operator and its configuration, so a plan can be printed, stored and
/// rebuilt from a registry of built-in kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    /// The kind, e.g. `files.csv`, `aggregate`, `task` (a user closure).
    pub kind: String,
    /// The configuration, as the kind defines it.
    #[serde(default)]
    pub config: serde_json::Value,
}

impl Descriptor {
    /// A descriptor of `kind` with `config`.
    pub fn new(kind: impl Into<String>, config: serde_json::Value) -> Self {
        Descriptor {
            kind: kind.into(),
            config,
        }
    }
}

/// Where a source's records get their event time, and how far out of order they may come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTimeSpec {
    /// The column holding event time: a timestamp (any unit) or an Int64 of milliseconds.
    pub column: String,
    /// How far behind the latest event time seen a record may still arrive, in milliseconds.
    /// The source's watermark is the latest event time seen minus this.
    pub max_delay_ms: u64,
    /// How far behind the watermark a record may still arrive and update the windows it
    /// falls in, which fire at the watermark and then emit updates. Records later than this
    /// are late: they go to the source's late-data sink, or its bad-record path.
    #[serde(default)]
    pub allowed_lateness_ms: u64,
    /// After how long without data a source partition counts as idle: its watermark then
    /// follows the other partitions' instead of holding every window back. `None`: never.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
}

impl EventTimeSpec {
    /// Event time from `column`, at most `max_delay_ms` out of order, with no allowed
    /// lateness and no idle timeout.
    pub fn new(column: impl Into<String>, max_delay_ms: u64) -> Self {
        EventTimeSpec {
            column: column.into(),
            max_delay_ms,
            allowed_lateness_ms: 0,
            idle_timeout_ms: None,
        }
    }
}

/// How an edge moves batches from the workers of one operator to those of the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// Each worker keeps its batches: the two operators are fused into one chain.
    Forward,
    /// Rows go to the worker chosen by the hash of these key columns.
    Hash {
        /// The key columns.
        keys: Vec<String>,
    },
    /// Whole batches go to the workers in turn.
    RoundRobin,
    /// Every worker gets every batch.
    Broadcast,
    /// Every batch goes to worker 0 (for an operator of parallelism one).
    Gather,
}

impl std::fmt::Display for Partitioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Partitioning::Forward => write!(f, "Forward"),
            Partitioning::Hash { keys } => write!(f, "Hash({})", keys.join(", ")),
            Partitioning::RoundRobin => write!(f, "RoundRobin"),
            Partitioning::Broadcast => write!(f, "Broadcast"),
            Partitioning::Gather => write!(f, "Gather"),
        }
    }
}

/// What a node of the logical plan is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum NodeKind {
    /// Reads input.
    Source {
        /// The connector.
        connector: Descriptor,
        /// What to do with records that cannot be read.
        on_bad_record: BadRecordPolicy,
        /// Where unreadable records go under [`BadRecordPolicy::DeadLetter`].
        dead_letters: Option<Descriptor>,
        /// Event time, when the source has it.
        #[serde(default)]
        event_time: Option<EventTimeSpec>,
        /// Where records behind the watermark go, when not to the bad-record path.
        #[serde(default)]
        late_data: Option<Descriptor>,
    },
    /// Transforms batches.
    Operator {
        /// The operator.
        op: Descriptor,
        /// A pre-aggregation the compiler may run before a non-forward input edge.
        combiner: Option<Descriptor>,
        /// On how many workers it runs.
        parallelism: Parallelism,
    },
    /// Joins two streams (its two inputs, left then right).
    Join {
        /// The join operator.
        op: Descriptor,
    },
    /// Builds its own piece of dataflow (an incremental operator).
    Dataflow {
        /// The operator.
        op: Descriptor,
    },
    /// Repartitions the stream for the next operator (`key_by`, `rebalance`, `broadcast`).
    Exchange {
        /// How.
        partitioning: Partitioning,
    },
    /// Writes output.
    Sink {
        /// The connector.
        sink: Descriptor,
        /// On how many workers it runs.
        parallelism: Parallelism,
    },
}

/// One node of the logical plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogicalNode {
    /// Its index in the plan.
    pub id: NodeId,
    /// The name the job gave it.
    pub name: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: NodeKind,
    /// The nodes it reads from (at most one today).
    pub inputs: Vec<NodeId>,
}

/// A job as declared: a plain, versioned, serializable graph of nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogicalPlan {
    /// [`LOGICAL_PLAN_VERSION`] when written.
    pub version: u32,
    /// The job's name.
    pub job: String,
    /// The nodes; every node's inputs come before it.
    pub nodes: Vec<LogicalNode>,
}

impl LogicalPlan {
    /// An empty plan for job `name`.
    pub fn new(name: impl Into<String>) -> Self {
        LogicalPlan {
            version: LOGICAL_PLAN_VERSION,
            job: name.into(),
            nodes: Vec::new(),
        }
    }

    /// Serializes the plan as JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| Error::Internal(format!("serializing the logical plan: {e}")))
    }

    /// Reads a plan from JSON, refusing another version and checking its structure.
    pub fn from_json(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let probe: VersionOnly = serde_json::from_str(text)
            .map_err(|e| Error::Plan(format!("not a logical plan: {e}")))?;
        if probe.version != LOGICAL_PLAN_VERSION {
            return Err(Error::Version {
                what: "logical plan",
                found: probe.version,
                expected: LOGICAL_PLAN_VERSION,
            });
        }
        let plan: LogicalPlan = serde_json::from_str(text)
            .map_err(|e| Error::Plan(format!("not a logical plan: {e}")))?;
        plan.validate()?;
        Ok(plan)
    }

    /// Checks ids and edges: ids are positions, inputs come first, at most one input.
    pub fn validate(&self) -> Result<()> {
        for (position, node) in self.nodes.iter().enumerate() {
            if node.id != position {
                crate::plan_err!(
                    "node '{}' has id {} at position {position}",
                    node.name,
                    node.id
                );
            }
            let wants_input = !matches!(node.kind, NodeKind::Source { .. });
            let two_inputs =
                matches!(node.kind, NodeKind::Dataflow { .. }) && node.inputs.len() == 2;
            if matches!(node.kind, NodeKind::Join { .. }) || two_inputs {
                match node.inputs.as_slice() {
                    [l, r] if *l < position && *r < position => continue,
                    _ => crate::plan_err!(
                        "join '{}' needs two inputs that come before it",
                        node.name
                    ),
                }
            }
            match (wants_input, node.inputs.as_slice()) {
                (false, []) => {}
                (false, _) => crate::plan_err!("source '{}' cannot have an input", node.name),
                (true, [input]) if *input < position => {}
                (true, [input]) => crate::plan_err!(
                    "node '{}' reads node {input}, which does not come before it",
                    node.name
                ),
                (true, []) => crate::plan_err!("node '{}' has no input", node.name),
                (true, _) => crate::plan_err!(
                    "node '{}' has {} inputs; only one is supported",
                    node.name,
                    node.inputs.len()
                ),
            }
        }
        Ok(())
    }

    /// The nodes that read node `id`.
    pub fn consumers(&self, id: NodeId) -> impl Iterator<Item = &LogicalNode> {
        self.nodes.iter().filter(move |n| n.inputs.contains(&id))
    }
}

/// The code behind one node of the plan.
#[derive(Clone)]
pub enum NodeImpl {
    /// A source, and its dead-letter sink.
    Source {
        /// The source.
        source: Arc<dyn Source>,
        /// The dead-letter sink.
        dead_letters: Option<Arc<dyn Sink>>,
        /// The sink of late records.
        late_data: Option<Arc<dyn Sink>>,
    },
    /// An operator, and its combiner.
    Operator {
        /// The operator.
        op: Arc<dyn OperatorFactory>,
        /// The pre-aggregation, if any.
        combiner: Option<Arc<dyn OperatorFactory>>,
    },
    /// A two-input operator.
    Join(Arc<dyn JoinOperatorFactory>),
    /// An operator that builds its own dataflow.
    Dataflow(Arc<dyn DataflowOperator>),
    /// A repartitioning: no code of its own.
    Exchange,
    /// A sink.
    Sink(Arc<dyn Sink>),
}

/// A logical plan together with the code of every node: what the compiler and the executor
/// take. Each process of a job builds the same graph, so it never needs to ship code.
#[derive(Clone)]
pub struct JobGraph {
    plan: LogicalPlan,
    impls: Vec<NodeImpl>,
}

impl std::fmt::Debug for JobGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobGraph")
            .field("plan", &self.plan)
            .finish()
    }
}

/// The declaration of a source added to a [`JobGraph`].
pub struct SourceDecl {
    /// Its descriptor.
    pub descriptor: Descriptor,
    /// Its code.
    pub source: Arc<dyn Source>,
    /// What to do with unreadable records.
    pub on_bad_record: BadRecordPolicy,
    /// The dead-letter sink, with its descriptor.
    pub dead_letters: Option<(Descriptor, Arc<dyn Sink>)>,
    /// Event time, when the source has it.
    pub event_time: Option<EventTimeSpec>,
}

/// The declaration of an operator added to a [`JobGraph`].
pub struct OperatorDecl {
    /// Its descriptor.
    pub descriptor: Descriptor,
    /// Its code.
    pub op: Arc<dyn OperatorFactory>,
    /// A combiner the compiler may place before a non-forward input edge.
    pub combiner: Option<(Descriptor, Arc<dyn OperatorFactory>)>,
    /// On how many workers it runs.
    pub parallelism: Parallelism,
}

impl JobGraph {
    /// An empty graph for job `name`.
    pub fn new(name: impl Into<String>) -> Self {
        JobGraph {
            plan: LogicalPlan::new(name),
            impls: Vec::new(),
        }
    }

    /// The logical plan.
    pub fn plan(&self) -> &LogicalPlan {
        &self.plan
    }

    /// The code of node `id`.
    pub fn node_impl(&self, id: NodeId) -> Option<&NodeImpl> {
        self.impls.get(id)
    }

    fn push(&mut self, name: &str, kind: NodeKind, input: Option<NodeId>, imp: NodeImpl) -> NodeId {
        let id = self.plan.nodes.len();
        self.plan.nodes.push(LogicalNode {
            id,
            name: name.to_owned(),
            kind,
            inputs: input.into_iter().collect(),
        });
        self.impls.push(imp);
        id
    }

    /// Adds a source.
    pub fn add_source(&mut self, name: &str, decl: SourceDecl) -> NodeId {
        let (dl_desc, dl_sink) = match decl.dead_letters {
            Some((d, s)) => (Some(d), Some(s)),
            None => (None, None),
        };
        self.push(
            name,
            NodeKind::Source {
                connector: decl.descriptor,
                on_bad_record: decl.on_bad_record,
                dead_letters: dl_desc,
                event_time: decl.event_time,
                late_data: None,
            },
            None,
            NodeImpl::Source {
                source: decl.source,
                dead_letters: dl_sink,
                late_data: None,
            },
        )
    }

    /// Gives source `node` event time. Fails if `node` is not a source.
    pub fn set_event_time(&mut self, node: NodeId, spec: EventTimeSpec) -> Result<()> {
        match self
            .plan
            .nodes
            .get_mut(node)
            .map(|n| (&n.name, &mut n.kind))
        {
            Some((_, NodeKind::Source { event_time, .. })) => {
                *event_time = Some(spec);
                Ok(())
            }
            Some((name, _)) => Err(Error::Plan(format!(
                "event time is set on a source, but '{name}' is not one: call event_time right after source(..)"
            ))),
            None => Err(Error::Internal(format!("no node {node}"))),
        }
    }

    /// Changes the event time of source `node`, which must have one.
    pub fn update_event_time(
        &mut self,
        node: NodeId,
        change: impl FnOnce(&mut EventTimeSpec),
    ) -> Result<()> {
        match self.plan.nodes.get_mut(node) {
            Some(LogicalNode {
                kind:
                    NodeKind::Source {
                        event_time: Some(spec),
                        ..
                    },
                ..
            }) => {
                change(spec);
                Ok(())
            }
            Some(n) => Err(Error::Plan(format!(
                "'{}' is not a source with event time: call event_time(..) right after source(..) first",
                n.name
            ))),
            None => Err(Error::Internal(format!("no node {node}"))),
        }
    }

    /// Sends source `node`'s late records (behind its watermark) to `sink`, with all their
    /// columns, instead of to its bad-record path. Fails if `node` is not a source.
    pub fn set_late_data(
        &mut self,
        node: NodeId,
        descriptor: Descriptor,
        sink: Arc<dyn Sink>,
    ) -> Result<()> {
        let (Some(n), Some(imp)) = (self.plan.nodes.get_mut(node), self.impls.get_mut(node)) else {
            return Err(Error::Internal(format!("no node {node}")));
        };
        match (&mut n.kind, imp) {
            (
                NodeKind::Source { late_data, .. },
                NodeImpl::Source {
                    late_data: sink_slot,
                    ..
                },
            ) => {
                *late_data = Some(descriptor);
                *sink_slot = Some(sink);
                Ok(())
            }
            _ => Err(Error::Plan(format!(
                "late data is a source's, but '{}' is not one: call late_data right after source(..) and event_time(..)",
                n.name
            ))),
        }
    }

    /// The event time of the stream produced by `node`: that of the source it descends from.
    pub fn event_time_of(&self, node: NodeId) -> Option<&EventTimeSpec> {
        let mut current = self.plan.nodes.get(node)?;
        loop {
            match &current.kind {
                NodeKind::Source { event_time, .. } => return event_time.as_ref(),
                _ => current = self.plan.nodes.get(*current.inputs.first()?)?,
            }
        }
    }

    /// Adds an operator reading `input`.
    pub fn add_operator(&mut self, input: NodeId, name: &str, decl: OperatorDecl) -> NodeId {
        let (c_desc, c_op) = match decl.combiner {
            Some((d, o)) => (Some(d), Some(o)),
            None => (None, None),
        };
        self.push(
            name,
            NodeKind::Operator {
                op: decl.descriptor,
                combiner: c_desc,
                parallelism: decl.parallelism,
            },
            Some(input),
            NodeImpl::Operator {
                op: decl.op,
                combiner: c_op,
            },
        )
    }

    /// Adds a two-input operator reading `left` and `right`.
    pub fn add_join(
        &mut self,
        left: NodeId,
        right: NodeId,
        name: &str,
        descriptor: Descriptor,
        op: Arc<dyn JoinOperatorFactory>,
    ) -> NodeId {
        let id = self.plan.nodes.len();
        self.plan.nodes.push(LogicalNode {
            id,
            name: name.to_owned(),
            kind: NodeKind::Join { op: descriptor },
            inputs: vec![left, right],
        });
        self.impls.push(NodeImpl::Join(op));
        id
    }

    /// Adds an operator that builds its own dataflow, reading `inputs` (one or two, as many
    /// as [`DataflowOperator::inputs`]).
    pub fn add_dataflow(
        &mut self,
        inputs: &[NodeId],
        name: &str,
        descriptor: Descriptor,
        op: Arc<dyn DataflowOperator>,
    ) -> NodeId {
        let id = self.plan.nodes.len();
        self.plan.nodes.push(LogicalNode {
            id,
            name: name.to_owned(),
            kind: NodeKind::Dataflow { op: descriptor },
            inputs: inputs.to_vec(),
        });
        self.impls.push(NodeImpl::Dataflow(op));
        id
    }

    /// Adds a repartitioning of `input`.
    pub fn add_exchange(
        &mut self,
        input: NodeId,
        name: &str,
        partitioning: Partitioning,
    ) -> NodeId {
        self.push(
            name,
            NodeKind::Exchange { partitioning },
            Some(input),
            NodeImpl::Exchange,
        )
    }

    /// Adds a sink reading `input`.
    pub fn add_sink(
        &mut self,
        input: NodeId,
        name: &str,
        descriptor: Descriptor,
        sink: Arc<dyn Sink>,
    ) -> NodeId {
        let parallelism = sink.parallelism();
        self.push(
            name,
            NodeKind::Sink {
                sink: descriptor,
                parallelism,
            },
            Some(input),
            NodeImpl::Sink(sink),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_plan() -> LogicalPlan {
        let mut plan = LogicalPlan::new("t");
        plan.nodes.push(LogicalNode {
            id: 0,
            name: "in".into(),
            kind: NodeKind::Source {
                connector: Descriptor::new("files.text", serde_json::json!({"path": "a/*.txt"})),
                on_bad_record: BadRecordPolicy::Fail,
                dead_letters: None,
                event_time: None,
                late_data: None,
            },
            inputs: vec![],
        });
        plan.nodes.push(LogicalNode {
            id: 1,
            name: "by word".into(),
            kind: NodeKind::Exchange {
                partitioning: Partitioning::Hash {
                    keys: vec!["word".into()],
                },
            },
            inputs: vec![0],
        });
        plan
    }

    #[test]
    fn plan_round_trips_through_json() {
        let plan = sample_plan();
        let json = plan.to_json().expect("serialize");
        assert_eq!(LogicalPlan::from_json(&json).expect("parse"), plan);
    }

    #[test]
    fn another_version_is_refused_by_name() {
        let mut plan = sample_plan();
        plan.version = LOGICAL_PLAN_VERSION + 1;
        let json = serde_json::to_string(&plan).expect("serialize");
        let err = LogicalPlan::from_json(&json).expect_err("newer version");
        assert!(matches!(err, Error::Version { found, .. } if found == LOGICAL_PLAN_VERSION + 1));
    }

    #[test]
    fn edges_must_point_backwards() {
        let mut plan = sample_plan();
        plan.nodes[1].inputs = vec![1];
        let err = plan.validate().expect_err("self loop");
        assert!(err.to_string().contains("does not come before it"), "{err}");
    }
}
