//! Word count over the corpus shipped in `examples/data/corpus`: the 20 most frequent words as
//! a table, and optionally every count as Parquet.
//!
//! ```text
//! cargo run --release --example wordcount -- [--workers N] [--out DIR] [GLOB]
//! ```
//!
//! Words are the text split on Unicode whitespace, lowercased, with leading and trailing
//! characters that are not alphanumeric trimmed; empty words are dropped.

use clap::Parser;
use streamrun::prelude::*;

/// The 20 most frequent words of a text corpus.
#[derive(Parser)]
struct Args {
    /// Worker threads (default: STREAMRUN_WORKERS, else the number of cores).
    #[arg(long, short)]
    workers: Option<usize>,
    /// Also write every word's count as Parquet part files into this directory.
    #[arg(long)]
    out: Option<String>,
    /// The text files to read (a glob).
    #[arg(default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/corpus/*.txt"))]
    glob: String,
}

fn main() -> anyhow::Result<()> {
    let Args { workers, out, glob } = Args::parse();
    let workers = workers.unwrap_or_else(streamrun::default_workers);

    let job = Job::new("wordcount");
    let counts = job
        .source(Files::text(glob))
        .split_words("line", "word")
        .key_by("word")
        .count();
    counts.top_k(20, "count").sink(Stdout::table());
    if let Some(dir) = &out {
        counts.sink(Files::write_parquet(dir));
    }

    // Embedded with `workers` threads, or one process of a cluster job when a node agent
    // started this program (`stream-run submit -- wordcount`).
    let report = streamrun::execute_with(&job, &ExecOptions::from_env(workers)?)?;
    eprintln!(
        "{} lines ({:.1} MB) counted in {:.3} s on {} workers{}",
        report.records_in,
        report.bytes_in as f64 / 1e6,
        report.elapsed.as_secs_f64(),
        report.workers,
        out.map(|d| format!("; all counts written to {d}"))
            .unwrap_or_default()
    );
    Ok(())
}
