//! Group-by over a generated Parquet file of ten million orders: revenue and order count per
//! region, and the ten customers (keys) with the most revenue.
//!
//! ```text
//! cargo run --release --example parquet_groupby -- [--rows N] [--workers N] [--dir DIR]
//! ```
//!
//! The file is generated once with a fixed seed (so every run and machine sees the same data)
//! in `DIR` (default `target/parquet_groupby`), then reused.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use streamrun::prelude::*;

const SEED: u64 = 42;

/// Revenue per region and the ten biggest customers of generated orders in Parquet.
#[derive(Parser)]
struct Args {
    /// Orders to generate.
    #[arg(long, default_value_t = 10_000_000)]
    rows: usize,
    /// Worker threads (default: STREAMRUN_WORKERS, else the number of cores).
    #[arg(long, short)]
    workers: Option<usize>,
    /// Where the generated file is kept.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/parquet_groupby"))]
    dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let Args { rows, workers, dir } = Args::parse();
    let workers = workers.unwrap_or_else(streamrun::default_workers);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("orders-{rows}-seed{SEED}.parquet"));
    if !file.exists() {
        let started = Instant::now();
        eprintln!("generating {rows} orders into {} ...", file.display());
        streamrun::datagen::write_orders_parquet(&file, rows, SEED)?;
        eprintln!("generated in {:.1} s", started.elapsed().as_secs_f64());
    }

    let job = Job::new("parquet-groupby");
    let orders = job.source(Files::parquet(file.display().to_string()));
    orders
        .key_by("region")
        .aggregate(vec![
            Agg::count().alias("orders"),
            Agg::sum("amount").alias("revenue"),
            Agg::mean("quantity").alias("mean_quantity"),
        ])
        .sink(Stdout::table());
    orders
        .key_by("key")
        .aggregate(vec![
            Agg::sum("amount").alias("revenue"),
            Agg::count().alias("orders"),
        ])
        .top_k(10, "revenue")
        .sink(Stdout::table());

    let report = streamrun::execute_with(&job, &ExecOptions::new(workers))?;
    let secs = report.elapsed.as_secs_f64();
    eprintln!(
        "{} rows grouped in {secs:.2} s on {} workers ({:.1} M rows/s)",
        report.records_in,
        report.workers,
        report.records_in as f64 / secs / 1e6
    );
    Ok(())
}
