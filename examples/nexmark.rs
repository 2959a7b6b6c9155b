//! Nexmark queries on generated auction events.
//!
//! ```text
//! cargo run --release --example nexmark -- --query q1 --events 1000000 --workers 2 [--base-time MS] [--out DIR]
//! ```
//!
//! The generator's configuration is fixed (its base time included) unless given, so runs are
//! reproducible, and the workers together read exactly the first `--events` events. With
//! `--out`, the result is written as CSV part files with a header into DIR; otherwise its
//! first rows are printed. Queries q0, q1, q2, q3, q4, q5, q7 and q8 run; q4 emits its averages
//! when the input ends rather than updating them as auctions close.

use clap::Parser;
use streamrun::nexmark::Query;
use streamrun::prelude::*;

/// Run a Nexmark query.
#[derive(Parser)]
struct Args {
    /// The query.
    #[arg(long, value_enum)]
    query: Query,
    /// How many events of the generator's stream (persons, auctions and bids together).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Worker threads (default: STREAMRUN_WORKERS, else the number of cores).
    #[arg(long, short)]
    workers: Option<usize>,
    /// The generator's base time in milliseconds since the Unix epoch.
    #[arg(long, default_value_t = streamrun::connectors::DEFAULT_BASE_TIME_MS)]
    base_time: u64,
    /// Write the result as CSV part files into this directory.
    #[arg(long)]
    out: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workers = args.workers.unwrap_or_else(streamrun::default_workers);
    let job = Job::new(&format!("nexmark-{:?}", args.query).to_lowercase());
    let result = args.query.build(&job, args.events, args.base_time);
    match &args.out {
        Some(dir) => result.sink(Files::write_csv(dir)),
        None => result.sink(Stdout::table().max_rows(10)),
    }
    let report = streamrun::execute_with(&job, &ExecOptions::new(workers))?;
    let secs = report.elapsed.as_secs_f64();
    eprintln!(
        "{:?} over the first {} events: {} records in, {} rows out ({}), {secs:.3} s on {} workers, {:.2} M records/s",
        args.query,
        args.events,
        report.records_in,
        report.records_out,
        args.query.columns(),
        report.workers,
        report.records_in as f64 / secs / 1e6
    );
    Ok(())
}
