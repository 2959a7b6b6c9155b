//! Ray Core's first lesson, in Rust: start the runtime, run a function remotely, turn a
//! function into tasks and a type into an actor, keep information in objects and pass it by
//! reference, then fan out 1,000 tasks and gather them with `wait`.
//!
//! `cargo run --release --example ray_core`
//!
//! Worker processes are this program started again: `Runtime::init` is the first thing
//! `main` does, and in a worker it serves tasks instead of returning.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use streamrun_core::{Runtime, actor, remote};

/// The seed's example: a function made remote.
#[remote]
fn calculate_square(x: i64) -> i64 {
    x * x
}

/// A function turned into a task: it reads a list of numbers passed by reference.
#[remote]
fn mean(values: Vec<f64>) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// A type turned into an actor: it keeps state between calls.
pub struct Accumulator {
    total: i64,
    calls: u64,
}

impl Default for Accumulator {
    fn default() -> Self {
        Accumulator::new()
    }
}

#[actor]
impl Accumulator {
    /// Starts empty.
    pub fn new() -> Accumulator {
        Accumulator { total: 0, calls: 0 }
    }

    /// Adds a value and returns the running total.
    pub fn add(&mut self, value: i64) -> i64 {
        self.total += value;
        self.calls += 1;
        self.total
    }

    /// How many values it has seen.
    pub fn calls(&self) -> u64 {
        self.calls
    }
}

fn main() -> anyhow::Result<()> {
    let rt = Runtime::init()?;
    println!("runtime: {} worker processes", rt.worker_pids().len());

    // A remote function: submitted at once, its result fetched when needed.
    let square = calculate_square::remote(&rt, 5)?;
    println!("calculate_square(5) = {}", rt.get(&square)?);

    // Information stored in an object and passed by reference: the task reads it in place.
    let readings: Vec<f64> = (0..1_000_000).map(|i| (i % 100) as f64).collect();
    let stored = rt.put(&readings)?;
    let average = mean::remote(&rt, &stored)?;
    println!(
        "mean of 1,000,000 readings (passed by reference) = {}",
        rt.get(&average)?
    );

    // An actor: its state lives in its own process, its calls run in order.
    let accumulator = Accumulator::remote(&rt)?;
    let totals: Vec<_> = (1..=10)
        .map(|v| accumulator.add(v))
        .collect::<Result<_, _>>()?;
    println!(
        "actor running totals: {:?} after {} calls",
        rt.get_all(&totals)?,
        rt.get(&accumulator.calls()?)?
    );

    // A fan-out of 1,000 tasks, gathered as they finish.
    let started = Instant::now();
    let mut pending: Vec<_> = (0..1_000)
        .map(|i| calculate_square::remote(&rt, i))
        .collect::<Result<_, _>>()?;
    let (mut sum, mut rounds) = (0i64, 0);
    while !pending.is_empty() {
        let (ready, rest) = rt.wait(&pending, pending.len().min(250), None)?;
        sum += rt.get_all(&ready)?.iter().sum::<i64>();
        pending = rest;
        rounds += 1;
    }
    println!(
        "1,000 tasks: sum of squares 0..1000 = {sum} (expected {}), gathered in {rounds} waits, {:.1} ms",
        (0..1_000i64).map(|i| i * i).sum::<i64>(),
        started.elapsed().as_secs_f64() * 1e3
    );
    rt.shutdown();
    Ok(())
}
