//! Object store throughput: put and get of 1 KiB, 1 MiB and 1 GiB record batches in a
//! node-local store whose memory tier is `/dev/shm`, beside `memcpy` of the same sizes in the
//! same run; then small-object put and get operations per second from one client.
//!
//! A put below 16 MiB encodes the batch as Arrow IPC and writes it into the memory tier (two
//! copies); from 16 MiB it copies the buffers into a mapped file on several threads. Either
//! way the memory tier's pages are new: beside `memcpy` into warm memory, the run also times
//! `memcpy` into freshly allocated memory (page faults included). A producer that builds its
//! batch in store memory puts it in O(1). A get maps the file and decodes in place (no
//! copy), so its time does not grow with size.
//! Objects of 64 KiB or less share slab files; those of 16 KiB or less are also kept decoded
//! in the store's process (up to 64 MiB of them), so a get of one there is a lookup.
//!
//! Then a remote fetch over loopback Arrow Flight beside a raw loopback TCP transfer of the
//! same number of bytes.
//!
//! `cargo bench --bench object_store` (`STREAMRUN_BENCH_RUNS`, default 5;
//! `STREAMRUN_BENCH_ONLY=remote` for the transfers between stores alone)
#![allow(clippy::print_stdout)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use streamrun_store::{LocalStore, StoreConfig};

fn batch(bytes: usize) -> RecordBatch {
    let rows = (bytes / 8).max(1) as i64;
    let values = Int64Array::from_iter_values((0..rows).map(|i| i.wrapping_mul(0x9e37_79b9)));
    RecordBatch::try_from_iter([("v", Arc::new(values) as ArrayRef)]).expect("batch")
}

fn gbps(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e9
}

fn main() {
    // `STREAMRUN_BENCH_ONLY=remote` runs only the transfers between stores.
    if std::env::var("STREAMRUN_BENCH_ONLY").is_ok_and(|v| v == "remote") {
        remote();
        return;
    }
    let spill = tempfile::tempdir().expect("spill dir");
    let config = StoreConfig::for_node(
        &format!("bench-{}", std::process::id()),
        spill.path(),
        4 << 30,
        8 << 30,
    );
    println!(
        "object store: memory tier {}, median of {} runs",
        config.memory_dir.display(),
        common::runs()
    );
    let store = LocalStore::open("bench", config).expect("store");
    for (name, size) in [("1 KiB", 1 << 10), ("1 MiB", 1 << 20), ("1 GiB", 1 << 30)] {
        let runs = if size >= 1 << 30 { 3 } else { common::runs() };
        let repeat = (1 << 26) / size.max(1);
        let repeat = repeat.clamp(1, 10_000);
        let b = batch(size);
        let src = vec![1u8; size];
        let mut dst = vec![0u8; size];
        let memcpy = common::median_time(runs, || {
            for _ in 0..repeat {
                dst.copy_from_slice(std::hint::black_box(&src));
            }
        }) / repeat as u32;
        // Into new memory, as every put is: the page faults are part of the price.
        let cold = common::median_time(runs.min(3), || {
            let mut fresh = Vec::<u8>::with_capacity(size);
            fresh.extend_from_slice(std::hint::black_box(&src));
            std::hint::black_box(fresh);
        });
        let mut put_times = Vec::new();
        for _ in 0..runs {
            let mut ids = Vec::with_capacity(repeat);
            let started = Instant::now();
            for _ in 0..repeat {
                ids.push(store.put_batch("bench", &b).expect("put").id);
            }
            put_times.push(started.elapsed() / repeat as u32);
            for id in ids {
                store.delete(&id).expect("delete");
            }
        }
        put_times.sort();
        let put = put_times[put_times.len() / 2];
        let object = store.put_batch("bench", &b).expect("put");
        let get = common::median_time(runs, || {
            for _ in 0..repeat {
                std::hint::black_box(store.get_batch(&object.id).expect("get"));
            }
        }) / repeat as u32;
        store.delete(&object.id).expect("delete");
        println!(
            "{name:>6}: put {:>9.1} µs ({:>6.2} GB/s, {:.2}× memcpy, {:.2}× memcpy to new memory) | get {:>7.1} µs ({:>8.2} GB/s) | memcpy {:>9.1} µs ({:>6.2} GB/s), to new memory {:>6.2} GB/s",
            put.as_secs_f64() * 1e6,
            gbps(size, put),
            memcpy.as_secs_f64() / put.as_secs_f64(),
            cold.as_secs_f64() / put.as_secs_f64(),
            get.as_secs_f64() * 1e6,
            gbps(size, get),
            memcpy.as_secs_f64() * 1e6,
            gbps(size, memcpy),
            gbps(size, cold),
        );
    }
    built_in_place(&store);
    let small = batch(1 << 10);
    let raw = vec![5u8; 1 << 10];
    let n = 20_000;
    let rate = |started: Instant| n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let ids: Vec<_> = (0..n)
        .map(|_| store.put_batch("bench", &small).expect("put").id)
        .collect();
    let puts = rate(started);
    let started = Instant::now();
    for id in &ids {
        std::hint::black_box(store.get_batch(id).expect("get"));
    }
    let gets = rate(started);
    let started = Instant::now();
    let raw_ids: Vec<_> = (0..n)
        .map(|_| store.put_bytes("bench", &raw).expect("put").id)
        .collect();
    let raw_puts = rate(started);
    let started = Instant::now();
    for id in &raw_ids {
        std::hint::black_box(store.get_bytes(id).expect("get"));
    }
    let raw_gets = rate(started);
    println!(
        "small objects, one client: 1 KiB batches {puts:.0} puts/s, {gets:.0} gets/s | 1 KiB bytes {raw_puts:.0} puts/s, {raw_gets:.0} gets/s"
    );
    store.release_owner("bench").expect("release");
    remote();
}

/// A producer that builds its batch in store memory: the put is only the finish (metadata
/// and a rename), whatever the size. Beside it, the same values written into a heap vector
/// and turned into a batch: the work a producer does before an ordinary put.
fn built_in_place(store: &LocalStore) {
    let schema = batch(8).schema();
    for (name, size) in [("1 MiB", 1usize << 20), ("1 GiB", 1 << 30)] {
        let rows = size / 8;
        let runs = if size >= 1 << 30 { 3 } else { common::runs() };
        let fill = |values: &mut [i64]| {
            for (i, v) in values.iter_mut().enumerate() {
                *v = (i as i64).wrapping_mul(0x9e37_79b9);
            }
        };
        let heap = common::median_time(runs, || {
            let mut values = vec![0i64; rows];
            fill(&mut values);
            std::hint::black_box(
                RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(Int64Array::from(values)) as ArrayRef],
                )
                .expect("batch"),
            );
        });
        let (mut builds, mut finishes) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let started = Instant::now();
            let mut builder = store
                .batch_builder("bench", schema.clone(), size)
                .expect("builder");
            let mut values = builder.alloc(size).expect("alloc");
            fill(values.typed_mut::<i64>());
            let column: ArrayRef = Arc::new(Int64Array::new(values.freeze().into(), None));
            let finishing = Instant::now();
            let object = builder.finish(&[Arc::clone(&column)]).expect("finish");
            finishes.push(finishing.elapsed());
            drop(column);
            builds.push(started.elapsed());
            store.delete(&object.id).expect("delete");
        }
        builds.sort();
        finishes.sort();
        let (build, finish) = (builds[runs / 2], finishes[runs / 2]);
        println!(
            "{name:>6} built in store memory: put (finish) {:>6.1} µs | build + put {:>9.1} µs, {:.2}× the same build on the heap ({:.1} µs)",
            finish.as_secs_f64() * 1e6,
            build.as_secs_f64() * 1e6,
            build.as_secs_f64() / heap.as_secs_f64(),
            heap.as_secs_f64() * 1e6,
        );
    }
}

/// Seconds to move `bytes` bytes through a loopback TCP socket, reader and writer threads.
fn raw_tcp(bytes: usize) -> Duration {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let reader = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accept");
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0;
        while total < bytes {
            let n = socket.read(&mut buffer).expect("read");
            assert!(n > 0, "early end");
            total += n;
        }
    });
    let chunk = vec![7u8; 1 << 20];
    let started = Instant::now();
    let mut socket = std::net::TcpStream::connect(address).expect("connect");
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        socket.write_all(&chunk[..n]).expect("write");
        sent += n;
    }
    reader.join().expect("reader");
    started.elapsed()
}

fn remote() {
    let spill = tempfile::tempdir().expect("spill dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = Arc::new(
        LocalStore::open(
            "bench-server",
            StoreConfig::for_node(
                &format!("bench-server-{}", std::process::id()),
                spill.path(),
                4 << 30,
                4 << 30,
            ),
        )
        .expect("store"),
    );
    let _runtime = rt.enter();
    let listener = tonic::transport::server::TcpIncoming::bind(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        0,
    )))
    .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = streamrun_store::flight::ObjectServer::new(Arc::clone(&store), "t".into());
    let handle = rt.spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    if std::env::var("STREAMRUN_BENCH_ONLY").is_err() {
        exchange_threshold(&store, &address);
    }
    // The fetching side runs as a job process's does: its own single-threaded runtime, and
    // one connection to the node kept open across fetches.
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let channel = client
        .block_on(streamrun_store::flight::connect(&address))
        .expect("connect");
    for (name, size) in [
        ("1 KiB", 1usize << 10),
        ("1 MiB", 1 << 20),
        ("256 MiB", 256 << 20),
    ] {
        let object = store.put_batch("bench", &batch(size)).expect("put");
        let runs = if size > 1 << 20 { 3 } else { common::runs() };
        let fetch = common::median_time(runs, || {
            client
                .block_on(streamrun_store::flight::fetch_over(
                    &object,
                    &address,
                    "t",
                    Some(channel.clone()),
                ))
                .expect("fetch")
        });
        let tcp = common::median_time(runs, || raw_tcp(size));
        println!(
            "remote fetch {name:>7}: Flight {:>8.2} ms ({:.2} GB/s) | raw TCP {:>8.2} ms ({:.2} GB/s) | {:.2}× raw",
            fetch.as_secs_f64() * 1e3,
            gbps(size, fetch),
            tcp.as_secs_f64() * 1e3,
            gbps(size, tcp),
            tcp.as_secs_f64() / fetch.as_secs_f64()
        );
        store.delete(&object.id).expect("delete");
    }
    // The server's shutdown waits for its connections to close.
    drop(channel);
    drop(client);
    let _ = stop.send(());
    let _ = rt.block_on(handle);
}

/// What a batch costs to cross processes on one node: inline (Arrow IPC encoded into the
/// message, decoded by the receiver) or through the store (staged, adopted over a loopback
/// call, read in place). The threshold of `STREAMRUN_EXCHANGE_THRESHOLD` is where the store
/// starts to win.
fn exchange_threshold(store: &Arc<LocalStore>, address: &str) {
    use streamrun_engine::ExchangeStore;
    let config = store.config();
    let client = streamrun_store::exchange::ExchangeClient::new(
        "bench-server",
        address,
        "t",
        "bench",
        (config.memory_dir.clone(), config.spill_dir.clone()),
        0,
    )
    .expect("client");
    for size in [
        16usize << 10,
        64 << 10,
        256 << 10,
        1 << 20,
        4 << 20,
        16 << 20,
    ] {
        let b = batch(size);
        let reps = ((64 << 20) / size).clamp(4, 400);
        let inline = common::median_time(common::runs(), || {
            for _ in 0..reps {
                // What a message carries inline: an Arrow IPC stream, written and read back.
                let mut bytes = Vec::with_capacity(size + 1024);
                let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &b.schema())
                    .expect("writer");
                writer.write(&b).expect("write");
                writer.finish().expect("finish");
                drop(writer);
                let mut reader =
                    arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
                        .expect("reader");
                std::hint::black_box(reader.next());
            }
        }) / reps as u32
            // The bytes also cross a loopback socket between the processes.
            + common::median_time(common::runs(), || raw_tcp(size));
        let through = common::median_time(common::runs(), || {
            for _ in 0..reps {
                let reference = client.put(&b, 1).expect("put");
                std::hint::black_box(client.get(&reference).expect("get"));
            }
        }) / reps as u32;
        store.release_owner("bench").expect("release");
        println!(
            "exchange of a {:>6} KiB batch: inline (IPC + loopback TCP) {:>9.1} µs | through the store {:>9.1} µs | store/inline {:.2}",
            size >> 10,
            inline.as_secs_f64() * 1e6,
            through.as_secs_f64() * 1e6,
            through.as_secs_f64() / inline.as_secs_f64()
        );
    }
}
