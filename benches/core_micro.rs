//! The dynamic API's microbenchmark, with the metric names `ray microbenchmark` prints for
//! the ones Streamrun supports, on the embedded runtime with one worker process per core
//! (separate processes, as Ray's workers are).
//!
//! `cargo bench --bench core_micro` (`STREAMRUN_BENCH_RUNS`, default 5: each figure is the
//! mean ± standard deviation of that many windows of about half a second).
//!
//! "n:n actor calls async" is Ray's: half as many client actors as cores, each calling every
//! one of as many server actors 1,000 times without waiting, then waiting for all (nested
//! calls, through the driver).
#![allow(clippy::print_stdout)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use streamrun_core::{Runtime, actor, remote};

#[remote]
fn noop() -> u8 {
    0
}

/// An actor whose method does nothing.
pub struct Sink;

#[actor]
impl Sink {
    /// The actor.
    pub fn new() -> Sink {
        Sink
    }

    /// Nothing.
    pub fn noop(&self) -> u8 {
        0
    }
}

/// An actor that calls servers: the clients of "n:n actor calls async".
pub struct Caller {
    servers: Vec<SinkHandle>,
}

#[actor]
impl Caller {
    /// Calls `servers`.
    pub fn new(servers: Vec<SinkHandle>) -> Caller {
        Caller { servers }
    }

    /// Calls every server `n` times without waiting, then waits for all.
    pub fn batch(&self, n: u32) -> Result<u32, String> {
        let rt = Runtime::current().map_err(|e| e.to_string())?;
        let mut refs = Vec::with_capacity(n as usize * self.servers.len());
        for server in &self.servers {
            for _ in 0..n {
                refs.push(server.noop().map_err(|e| e.to_string())?);
            }
        }
        rt.get_all(&refs).map_err(|e| e.to_string())?;
        Ok(refs.len() as u32)
    }
}

impl Default for Sink {
    fn default() -> Self {
        Sink
    }
}

/// Runs `round` (which does `per_round` operations) for about `window` at a time, `runs`
/// times, and prints the rate's mean and standard deviation, as Ray does.
fn timeit(name: &str, per_round: f64, mut round: impl FnMut()) {
    round();
    let window = Duration::from_millis(500);
    let rates: Vec<f64> = (0..common::runs())
        .map(|_| {
            let started = Instant::now();
            let mut rounds = 0u64;
            while started.elapsed() < window {
                round();
                rounds += 1;
            }
            rounds as f64 * per_round / started.elapsed().as_secs_f64()
        })
        .collect();
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
    println!("{name} per second {mean:.2} +- {:.2}", var.sqrt());
}

/// Round trips per second of 32 bytes to an echo thread over loopback TCP, Nagle off.
fn raw_round_trips() -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        let mut buffer = [0u8; 32];
        while socket.read_exact(&mut buffer).is_ok() {
            socket.write_all(&buffer)?;
        }
        Ok(())
    });
    let mut socket = std::net::TcpStream::connect(address)?;
    socket.set_nodelay(true)?;
    let mut buffer = [7u8; 32];
    let n = 20_000;
    let started = Instant::now();
    for _ in 0..n {
        socket.write_all(&buffer)?;
        socket.read_exact(&mut buffer)?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(socket);
    let _ = echo.join();
    Ok(rate)
}

fn main() -> anyhow::Result<()> {
    let rt = Runtime::init()?;
    println!(
        "core microbenchmark: embedded runtime, {} worker processes, {} windows of 0.5 s",
        rt.worker_pids().len(),
        common::runs()
    );
    timeit("single client get calls (Plasma Store)", 1000.0, {
        let object = rt.put(&0u64)?;
        let rt = &rt;
        move || {
            for _ in 0..1000 {
                std::hint::black_box(rt.get(&object).expect("get"));
            }
        }
    });
    timeit("single client put calls (Plasma Store)", 1000.0, || {
        for _ in 0..1000 {
            std::hint::black_box(rt.put(&0u64).expect("put"));
        }
    });
    let rows = (1usize << 30) / 8;
    let gigabyte = RecordBatch::try_from_iter([(
        "v",
        Arc::new(Int64Array::from_iter_values(0..rows as i64)) as ArrayRef,
    )])?;
    timeit("single client put gigabytes", 1.0, || {
        std::hint::black_box(rt.put_batch(gigabyte.clone()).expect("put"));
    });
    drop(gigabyte);
    // Not one of Ray's metrics: the same gigabyte built in store memory, then put. Only the
    // put (metadata, no copy) is timed.
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Int64, false),
    ]));
    let mut puts = Vec::new();
    for _ in 0..common::runs() {
        let mut builder = rt.batch_builder(schema.clone(), rows * 8)?;
        let mut values = builder.alloc(rows * 8)?;
        for (i, v) in values.typed_mut::<i64>().iter_mut().enumerate() {
            *v = i as i64;
        }
        let column: ArrayRef = Arc::new(Int64Array::new(values.freeze().into(), None));
        let started = Instant::now();
        let object = rt.put_built(builder, &[Arc::clone(&column)])?;
        puts.push(started.elapsed());
        // Unmapping the producer's view is the cost of dropping it, after the put.
        drop(column);
        drop(object);
    }
    puts.sort();
    let put = puts[puts.len() / 2];
    println!(
        "single client put gigabytes, built in store memory (put only) per second {:.0} ({:.1} us a put)",
        1.0 / put.as_secs_f64(),
        put.as_secs_f64() * 1e6
    );
    timeit("single client tasks and get batch", 1.0, || {
        let refs: Vec<_> = (0..1000)
            .map(|_| noop::remote(&rt).expect("submit"))
            .collect();
        std::hint::black_box(rt.get_all(&refs).expect("get"));
    });
    timeit("single client tasks sync", 1.0, || {
        rt.get(&noop::remote(&rt).expect("submit")).expect("get");
    });
    timeit("single client tasks async", 1000.0, || {
        let refs: Vec<_> = (0..1000)
            .map(|_| noop::remote(&rt).expect("submit"))
            .collect();
        rt.get_all(&refs).expect("get");
    });
    timeit("single client wait 1k refs", 1.0, || {
        let refs: Vec<_> = (0..1000)
            .map(|_| noop::remote(&rt).expect("submit"))
            .collect();
        rt.wait(&refs, refs.len(), None).expect("wait");
    });
    // The floor under every sync figure: a message to another thread over loopback TCP and
    // back, measured in the same run.
    let round_trip = raw_round_trips()?;
    println!("(baseline) raw loopback TCP round trips per second {round_trip:.2}");
    let actor = Sink::remote(&rt)?;
    timeit("1:1 actor calls sync", 1.0, || {
        rt.get(&actor.noop().expect("call")).expect("get");
    });
    timeit("1:1 actor calls async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| actor.noop().expect("call")).collect();
        rt.get_all(&refs).expect("get");
    });
    let pairs = (rt.worker_pids().len() / 2).max(1);
    let servers: Vec<SinkHandle> = (0..pairs)
        .map(|_| Sink::remote(&rt))
        .collect::<Result<_, _>>()?;
    let clients: Vec<CallerHandle> = (0..pairs)
        .map(|_| Caller::remote(&rt, servers.clone()))
        .collect::<Result<_, _>>()?;
    timeit(
        "n:n actor calls async",
        (1000 * pairs * pairs) as f64,
        || {
            let batches: Vec<_> = clients
                .iter()
                .map(|c| c.batch(1000).expect("call"))
                .collect();
            rt.get_all(&batches).expect("get");
        },
    );
    rt.shutdown();
    Ok(())
}
