//! Helpers shared by the integration tests.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use streamrun::prelude::*;

/// The word-count corpus shipped with the examples.
pub fn corpus_glob() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/corpus/*.txt").to_owned()
}

/// Runs `job` on `workers` workers, failing the test on error.
pub fn run(job: &Job, workers: usize) -> JobReport {
    streamrun::execute_with(job, &ExecOptions::new(workers))
        .unwrap_or_else(|e| panic!("job failed on {workers} workers: {e}"))
}

/// Rows of (string key, i64 value) from column 0 and column `value`.
pub fn string_i64_map(batches: &[RecordBatch], value: usize) -> HashMap<String, i64> {
    let mut out = HashMap::new();
    for b in batches {
        let k = b.column(0).as_string::<i32>();
        let v = b.column(value).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            assert!(k.is_valid(i), "null key");
            let previous = out.insert(k.value(i).to_owned(), v.value(i));
            assert!(previous.is_none(), "key {:?} appears twice", k.value(i));
        }
    }
    out
}

/// Every row of the batches as text, sorted: an order-independent picture of a result.
pub fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = Vec::new();
    for b in batches {
        let columns: Vec<_> = (0..b.num_columns())
            .map(|c| {
                arrow::util::display::ArrayFormatter::try_new(
                    b.column(c).as_ref(),
                    &Default::default(),
                )
                .expect("formatter")
            })
            .collect();
        for r in 0..b.num_rows() {
            let cells: Vec<String> = columns.iter().map(|f| f.value(r).to_string()).collect();
            rows.push(cells.join("|"));
        }
    }
    rows.sort();
    rows
}

/// Runs `command` to its end, like [`std::process::Command::output`], but kills it and fails
/// the test, showing what it printed, if it runs longer than `limit`: a job that hangs fails
/// its test instead of holding up the whole run.
pub fn output_within(
    command: &mut std::process::Command,
    limit: std::time::Duration,
) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    /// Reads a pipe to its end on a thread, so that a command printing a lot never blocks.
    fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap_or_default();
            panic!(
                "{command:?} did not end within {limit:?}; it printed:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}
