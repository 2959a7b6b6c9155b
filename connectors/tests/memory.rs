//! The in-memory sink, alone and in jobs run by the engine.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use streamrun_connectors::{Collect, Files, Stdout};
use streamrun_engine::{
    BadRecordPolicy, DeadLetter, Error, ExecOptions, JobGraph, Parallelism, Sink, SourceDecl,
    execute,
};

#[test]
fn collects_from_every_worker() {
    let collect = Collect::new();
    let schema = sample_schema();
    write_parts(
        &collect,
        &schema,
        &[vec![sample(0, 3)], vec![], vec![sample(3, 5), sample(5, 9)]],
    )
    .unwrap();
    assert_eq!(collect.rows(), 9);
    assert_eq!(collect.batches().len(), 3);
    assert_eq!(
        sorted_rows(&collect.batches()),
        sorted_rows(&[sample(0, 9)])
    );
    assert_eq!(collect.parallelism(), Parallelism::Workers);
    let d = collect.descriptor();
    assert_eq!(d.kind, "collect");
    assert_eq!(d.config["max_rows"], 10_000_000);
}

#[test]
fn max_rows_is_enforced() {
    let collect = Collect::new().max_rows(5);
    let clone = collect.clone();
    let mut writer = clone.open(&ctx(0, 1), &sample_schema()).unwrap();
    writer.write(&sample(0, 5)).unwrap();
    let e = writer.write(&sample(5, 6)).unwrap_err();
    match e {
        Error::Plan(m) => {
            assert!(m.contains("at most 5 rows"), "{m}");
            assert!(m.contains("max_rows"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(collect.rows(), 5);
}

#[test]
fn csv_to_collect_job_with_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("word,count\n");
    for i in 0..20_000 {
        if i == 15_000 {
            text.push_str("broken,line,here\n");
        } else {
            text.push_str(&format!("w{i},{i}\n"));
        }
    }
    let path = dir.path().join("words.csv");
    std::fs::write(&path, text).unwrap();
    let source = Files::csv(path.display().to_string());
    let collect = Collect::new();
    let dead = Collect::new();
    let mut graph = JobGraph::new("words");
    let input = graph.add_source(
        "words",
        SourceDecl {
            descriptor: source.descriptor(),
            source: Arc::new(source),
            on_bad_record: BadRecordPolicy::DeadLetter,
            dead_letters: Some((dead.descriptor(), Arc::new(dead.clone()))),
            event_time: None,
        },
    );
    graph.add_sink(
        input,
        "out",
        collect.descriptor(),
        Arc::new(collect.clone()),
    );
    let report = execute(&graph, &ExecOptions::new(3)).unwrap();
    assert_eq!(collect.rows(), 19_999);
    assert_eq!(report.dead_letters, 1);
    let letters = dead.batches();
    assert_eq!(letters[0].schema(), DeadLetter::schema());
    let rows = sorted_rows(&letters);
    assert_eq!(
        rows,
        [format!(
            "words|{}:15002|expected 2 fields, found 3|broken,line,here",
            path.display()
        )]
    );
}

#[test]
fn stdout_job_runs_on_one_worker() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.txt");
    std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
    let source = Files::text(path.display().to_string());
    let sink = Stdout::table().max_rows(2);
    let mut graph = JobGraph::new("print");
    let input = graph.add_source(
        "lines",
        SourceDecl {
            descriptor: source.descriptor(),
            source: Arc::new(source),
            on_bad_record: BadRecordPolicy::Fail,
            dead_letters: None,
            event_time: None,
        },
    );
    graph.add_sink(input, "stdout", sink.descriptor(), Arc::new(sink));
    let report = execute(&graph, &ExecOptions::new(2)).unwrap();
    assert_eq!(report.records_in, 3);
}
