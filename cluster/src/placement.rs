//! Where a job's workers go.
//!
//! A job's processes form one timely cluster, in which every process runs the same number of
//! worker threads. The head therefore looks for the largest thread count `t` dividing the
//! job's workers such that `workers / t` processes of `t` threads fit in the free CPUs of the
//! alive nodes (each worker takes one CPU), and places those processes on the nodes with the
//! most free CPUs first.

use crate::{Error, Result};

/// A job's placement: `processes[i]` is the node of process `i`; each has `threads` workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Worker threads per process.
    pub threads: u32,
    /// The node of each process, in process order.
    pub processes: Vec<String>,
}

/// Places `workers` workers on nodes with the given free CPUs (`(node, free)`).
pub fn place(workers: u32, free: &[(String, u32)]) -> Result<Plan> {
    if workers == 0 {
        return Err(Error::Refused("a job needs at least one worker".into()));
    }
    let total: u32 = free.iter().fold(0u32, |sum, (_, f)| sum.saturating_add(*f));
    if workers > total {
        return Err(refusal(workers, total, free.len()));
    }
    let mut nodes: Vec<(String, u32)> = free.to_vec();
    // Most free first; ties by id, so that placement is reproducible.
    nodes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for threads in (1..=workers).rev().filter(|t| workers.is_multiple_of(*t)) {
        let needed = (workers / threads) as usize;
        let mut processes = Vec::with_capacity(needed);
        for (node, free) in &nodes {
            for _ in 0..free / threads {
                if processes.len() < needed {
                    processes.push(node.clone());
                }
            }
        }
        if processes.len() == needed {
            // Spread: a node's processes next to each other, nodes in order of free CPUs.
            return Ok(Plan { threads, processes });
        }
    }
    Err(refusal(workers, total, free.len()))
}

fn refusal(workers: u32, free: u32, nodes: usize) -> Error {
    Error::Refused(format!(
        "the job asks for {workers} workers, but the cluster has {free} free CPUs on {nodes} alive nodes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(free: &[(&str, u32)]) -> Vec<(String, u32)> {
        free.iter().map(|(n, f)| ((*n).to_owned(), *f)).collect()
    }

    #[test]
    fn processes_are_as_large_as_the_nodes_allow() {
        let plan = place(4, &nodes(&[("a", 8)])).expect("fits");
        assert_eq!((plan.threads, plan.processes.len()), (4, 1));
        let plan = place(6, &nodes(&[("a", 2), ("b", 2), ("c", 2)])).expect("fits");
        assert_eq!(plan.threads, 2);
        assert_eq!(plan.processes, vec!["a", "b", "c"]);
        // 3 free on each of two nodes: 6 workers as 2 × 3.
        let plan = place(6, &nodes(&[("a", 3), ("b", 3)])).expect("fits");
        assert_eq!((plan.threads, plan.processes.len()), (3, 2));
        // 5 workers on 4 + 1: only single-thread processes fit.
        let plan = place(5, &nodes(&[("a", 4), ("b", 1)])).expect("fits");
        assert_eq!(plan.threads, 1);
        assert_eq!(plan.processes, vec!["a", "a", "a", "a", "b"]);
    }

    #[test]
    fn too_many_workers_is_a_clear_refusal() {
        let e = place(9, &nodes(&[("a", 4), ("b", 4)])).expect_err("too many");
        assert!(
            e.to_string().contains("9 workers") && e.to_string().contains("8 free"),
            "{e}"
        );
        assert!(place(0, &nodes(&[("a", 4)])).is_err());
    }
}
