//! Plans: serialization round trips, compilation shape, and stable `explain` output.

use std::path::Path;

use streamrun::engine::{LogicalPlan, Partitioning, Role, compile};
use streamrun::prelude::*;

use crate::common::corpus_glob;

fn wordcount_job() -> Job {
    let job = Job::new("wordcount");
    job.source(Files::text(corpus_glob()))
        .split_words("line", "word")
        .key_by("word")
        .count()
        .top_k(20, "count")
        .sink(Stdout::table());
    job
}

#[test]
fn logical_plan_round_trips_through_json() {
    let plan = wordcount_job().plan();
    let json = plan.to_json().expect("serialize");
    let back = LogicalPlan::from_json(&json).expect("deserialize");
    assert_eq!(back, plan);
}

/// A stage as (parallelism, input edge, [(operator kind, role)]).
type StageShape<'a> = (usize, Option<Partitioning>, Vec<(&'a str, Role)>);

#[test]
fn compiler_fuses_forward_edges_and_places_combiners_before_exchanges() {
    let physical = compile(&wordcount_job().graph(), 4).expect("compile");
    let shape: Vec<StageShape> = physical
        .stages
        .iter()
        .map(|s| {
            (
                s.parallelism,
                s.input.as_ref().map(|i| i.partitioning.clone()),
                s.ops.iter().map(|o| (o.kind.as_str(), o.role)).collect(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (
                4,
                None,
                vec![
                    ("files.text", Role::Source),
                    ("split_words", Role::Operator),
                    ("aggregate", Role::Combiner)
                ]
            ),
            (
                4,
                Some(Partitioning::Hash {
                    keys: vec!["word".into()]
                }),
                vec![("aggregate", Role::Operator), ("top_k", Role::Combiner)]
            ),
            (
                1,
                Some(Partitioning::Gather),
                vec![("top_k", Role::Operator), ("stdout", Role::Sink)]
            ),
        ]
    );
}

#[test]
fn a_stream_read_twice_is_not_fused_into_either_reader() {
    let job = Job::new("fan-out");
    let words = job
        .source(Files::text(corpus_glob()))
        .split_words("line", "word");
    words.sink(Collect::new());
    words.key_by("word").count().sink(Collect::new());
    let physical = compile(&job.graph(), 2).expect("compile");
    // source > split_words, then one forward stage for the collect sink, and the combiner in a
    // forward stage of its own before the hash exchange.
    let inputs: Vec<Option<Partitioning>> = physical
        .stages
        .iter()
        .map(|s| s.input.as_ref().map(|i| i.partitioning.clone()))
        .collect();
    assert_eq!(
        inputs,
        vec![
            None,
            Some(Partitioning::Forward),
            Some(Partitioning::Forward),
            Some(Partitioning::Hash {
                keys: vec!["word".into()]
            })
        ]
    );
}

fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "snapshot {} is missing: run with UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        actual, expected,
        "explain output changed; if intended, run with UPDATE_SNAPSHOTS=1"
    );
}

#[test]
fn explain_of_the_wordcount_spec_is_stable() {
    // Relative to the package root, which is where cargo runs tests: paths in the output are
    // then the same on every machine.
    let loaded = streamrun::spec::load(Path::new("examples/jobs/wordcount.toml")).expect("spec");
    snapshot(
        "wordcount_explain.txt",
        &streamrun::explain(&loaded.job, 2).expect("explain"),
    );
    snapshot(
        "wordcount_explain.dot",
        &streamrun::explain_dot(&loaded.job, 2).expect("dot"),
    );
}
