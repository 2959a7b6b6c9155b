//! Integration tests across the engine, operators, connectors and the CLI: one binary whose
//! modules mirror the features.

mod actors;
mod bad_input;
mod branches;
mod cli;
mod cluster;
mod common;
mod connector_specs;
mod core_cluster;
mod crawl;
mod edges;
mod groupby;
mod incremental;
#[path = "../support/local_cluster.rs"]
mod local_cluster;
mod nexmark;
mod plan;
#[path = "../support/processes.rs"]
mod process_guard;
mod processes;
mod scripted;
mod typed;
mod windows;
mod wordcount;
