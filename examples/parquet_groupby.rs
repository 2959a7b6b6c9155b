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
use streamrun::prelude::*;

const SEED: u64 = 42;

fn main() -> anyhow::Result<()> {
    let mut rows: usize = 10_000_000;
    let mut workers = streamrun::default_workers();
    let mut dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/parquet_groupby"
    ));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--rows" => rows = value()?.parse().context("--rows needs a number")?,
            "--workers" | "-w" => workers = value()?.parse().context("--workers needs a number")?,
            "--dir" => dir = PathBuf::from(value()?),
            "--help" | "-h" => {
                eprintln!("usage: parquet_groupby [--rows N] [--workers N] [--dir DIR]");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (see --help)"),
        }
    }

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

    let report = streamrun::execute_with(
        &job,
        &ExecOptions {
            workers,
            metrics: None,
        },
    )?;
    let secs = report.elapsed.as_secs_f64();
    eprintln!(
        "{} rows grouped in {secs:.2} s on {} workers ({:.1} M rows/s)",
        report.records_in,
        report.workers,
        report.records_in as f64 / secs / 1e6
    );
    Ok(())
}
