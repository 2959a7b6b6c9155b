//! Timing helpers shared by the whole-pipeline benches.
#![allow(dead_code)] // each bench uses part of these helpers

use std::time::{Duration, Instant};

/// Runs `f` once to warm caches, then `runs` times, and returns the median wall time.
pub fn median_time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    std::hint::black_box(f());
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(f());
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// One line of a result table: rows/s and MB/s, and the ratio to the baseline's time.
pub fn report(name: &str, rows: u64, bytes: u64, time: Duration, baseline: Duration) {
    let secs = time.as_secs_f64();
    println!(
        "{name:<34} {:>9.1} ms {:>10.2} M rows/s {:>9.1} MB/s {:>7.2}x",
        secs * 1e3,
        rows as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6,
        baseline.as_secs_f64() / secs
    );
}

/// Runs per measurement: `STREAMRUN_BENCH_RUNS`, default 5.
pub fn runs() -> usize {
    std::env::var("STREAMRUN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5)
}
