//! `explain`: the logical and physical plans as text and as Graphviz DOT.

use std::fmt::Write;

use crate::compile::{PhysicalPlan, Role};
use crate::connector::{BadRecordPolicy, Parallelism};
use crate::plan::{Descriptor, LogicalPlan, NodeKind};

fn config_text(d: &Descriptor) -> String {
    match &d.config {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Object(map) if map.is_empty() => String::new(),
        other => format!(" {other}"),
    }
}

fn node_text(kind: &NodeKind) -> String {
    match kind {
        NodeKind::Source {
            connector,
            on_bad_record,
            dead_letters,
            event_time,
            late_data,
        } => {
            let mut s = format!("source {}{}", connector.kind, config_text(connector));
            if let Some(t) = event_time {
                let _ = write!(s, " event-time({}, delay {} ms", t.column, t.max_delay_ms);
                if t.allowed_lateness_ms > 0 {
                    let _ = write!(s, ", lateness {} ms", t.allowed_lateness_ms);
                }
                if let Some(idle) = t.idle_timeout_ms {
                    let _ = write!(s, ", idle after {idle} ms");
                }
                s.push(')');
            }
            if let Some(l) = late_data {
                let _ = write!(s, " late-data→{}{}", l.kind, config_text(l));
            }
            if *on_bad_record == BadRecordPolicy::DeadLetter {
                match dead_letters {
                    Some(d) => write!(s, " dead-letters→{}{}", d.kind, config_text(d)).ok(),
                    None => write!(s, " dead-letters→(none)").ok(),
                };
            }
            s
        }
        NodeKind::Operator {
            op,
            combiner,
            parallelism,
        } => {
            let mut s = format!("{}{}", op.kind, config_text(op));
            if combiner.is_some() {
                s.push_str(" +combiner");
            }
            if *parallelism == Parallelism::Single {
                s.push_str(" [single]");
            }
            s
        }
        NodeKind::Exchange { partitioning } => format!("exchange {partitioning}"),
        NodeKind::Join { op } => format!("join {}{}", op.kind, config_text(op)),
        NodeKind::Dataflow { op } => format!("dataflow {}{}", op.kind, config_text(op)),
        NodeKind::Sink { sink, parallelism } => {
            let mut s = format!("sink {}{}", sink.kind, config_text(sink));
            if *parallelism == Parallelism::Single {
                s.push_str(" [single]");
            }
            s
        }
    }
}

/// The logical plan as indented text, one node a line.
pub fn logical_text(plan: &LogicalPlan) -> String {
    let mut out = format!("Logical plan of job '{}' (v{})\n", plan.job, plan.version);
    for node in &plan.nodes {
        let inputs: Vec<String> = node.inputs.iter().map(|i| format!("#{i}")).collect();
        let from = if inputs.is_empty() {
            String::new()
        } else {
            format!(" <- {}", inputs.join(", "))
        };
        let _ = writeln!(
            out,
            "  #{} {:?}: {}{from}",
            node.id,
            node.name,
            node_text(&node.kind)
        );
    }
    out
}

fn role_text(role: Role) -> &'static str {
    match role {
        Role::Source => "source",
        Role::Operator => "op",
        Role::Combiner => "combiner",
        Role::Sink => "sink",
        Role::Join => "join",
        Role::Dataflow => "dataflow",
    }
}

/// The physical plan as text: stages, their chains, parallelism and input edges.
pub fn physical_text(plan: &PhysicalPlan) -> String {
    let mut out = format!(
        "Physical plan of job '{}' for {} worker{} (v{})\n",
        plan.job,
        plan.workers,
        if plan.workers == 1 { "" } else { "s" },
        plan.version
    );
    for stage in &plan.stages {
        let mut edge = match &stage.input {
            Some(input) => format!(" <- stage {} via {}", input.stage, input.partitioning),
            None => String::new(),
        };
        if let Some(right) = &stage.second_input {
            let _ = write!(
                edge,
                " and stage {} via {}",
                right.stage, right.partitioning
            );
        }
        let _ = writeln!(out, "  stage {} x{}{edge}", stage.id, stage.parallelism);
        for op in &stage.ops {
            let _ = writeln!(
                out,
                "    {} {:?} ({}) -> [{}]",
                role_text(op.role),
                op.name,
                op.kind,
                op.output.join(", ")
            );
        }
    }
    out
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Both plans as one Graphviz digraph: the logical plan on the left, the physical plan's
/// stages as clusters on the right, edges labelled with their partitioning.
pub fn dot(logical: &LogicalPlan, physical: &PhysicalPlan) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n",
        dot_escape(&logical.job)
    );
    out.push_str("  subgraph cluster_logical {\n    label=\"logical plan\";\n");
    for node in &logical.nodes {
        let _ = writeln!(
            out,
            "    l{} [label=\"#{} {}\\n{}\"];",
            node.id,
            node.id,
            dot_escape(&node.name),
            dot_escape(&node_text(&node.kind))
        );
        for input in &node.inputs {
            let _ = writeln!(out, "    l{input} -> l{};", node.id);
        }
    }
    out.push_str("  }\n");
    let _ = writeln!(
        out,
        "  subgraph cluster_physical {{\n    label=\"physical plan, {} workers\";",
        physical.workers
    );
    for stage in &physical.stages {
        let _ = writeln!(
            out,
            "    subgraph cluster_stage{} {{\n      label=\"stage {} x{}\";",
            stage.id, stage.id, stage.parallelism
        );
        for (i, op) in stage.ops.iter().enumerate() {
            let _ = writeln!(
                out,
                "      s{}_{i} [label=\"{} {}\\n{}\"];",
                stage.id,
                role_text(op.role),
                dot_escape(&op.name),
                dot_escape(&op.kind)
            );
            if i > 0 {
                let _ = writeln!(out, "      s{}_{} -> s{}_{i};", stage.id, i - 1, stage.id);
            }
        }
        out.push_str("    }\n");
        for input in stage.input.iter().chain(&stage.second_input) {
            let last = physical
                .stages
                .get(input.stage)
                .map(|s| s.ops.len().saturating_sub(1))
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "    s{}_{last} -> s{}_0 [label=\"{}\", style=bold];",
                input.stage,
                stage.id,
                dot_escape(&input.partitioning.to_string())
            );
        }
    }
    out.push_str("  }\n}\n");
    out
}
