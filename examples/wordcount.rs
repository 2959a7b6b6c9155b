//! Word count over the corpus shipped in `examples/data/corpus`: the 20 most frequent words as
//! a table, and optionally every count as Parquet.
//!
//! ```text
//! cargo run --release --example wordcount -- [--workers N] [--out DIR] [GLOB]
//! ```
//!
//! Words are the text split on Unicode whitespace, lowercased, with leading and trailing
//! characters that are not alphanumeric trimmed; empty words are dropped.

use anyhow::Context;
use streamrun::prelude::*;

fn main() -> anyhow::Result<()> {
    let mut workers = streamrun::default_workers();
    let mut out: Option<String> = None;
    let mut glob = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/corpus/*.txt").to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--workers" | "-w" => {
                workers = args
                    .next()
                    .context("--workers needs a number")?
                    .parse()
                    .context("--workers needs a number")?;
            }
            "--out" => out = Some(args.next().context("--out needs a directory")?),
            "--help" | "-h" => {
                eprintln!("usage: wordcount [--workers N] [--out DIR] [GLOB]");
                return Ok(());
            }
            other => glob = other.to_owned(),
        }
    }

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

    let report = streamrun::execute_with(
        &job,
        &ExecOptions {
            workers,
            metrics: None,
        },
    )?;
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
