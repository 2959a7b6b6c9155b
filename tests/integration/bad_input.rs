//! Bad input: every error names the place at fault, and the CLI exits non-zero.

use std::path::Path;
use std::process::Command;

use streamrun::prelude::*;

/// Writes `spec` next to the data it names and runs `stream-run run` on it; returns
/// (success, stderr).
fn run_spec(dir: &Path, spec: &str) -> (bool, String) {
    let path = dir.join("job.toml");
    std::fs::write(&path, spec).expect("write spec");
    let out = crate::common::output_within(
        Command::new(env!("CARGO_BIN_EXE_stream-run"))
            .args(["run", "--workers", "2"])
            .arg(&path),
        std::time::Duration::from_secs(180),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CSV_SPEC: &str = r#"name = "bad"

[source]
format = "csv"
path = "data.csv"

[[steps]]
op = "aggregate"
keys = ["k"]
aggs = [{ fn = "sum", column = "v", as = "total" }]

[sink]
format = "stdout"
"#;

fn with_csv(contents: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("data.csv"), contents).expect("csv");
    dir
}

#[test]
fn a_csv_row_with_too_many_fields_is_named_by_file_and_line() {
    let dir = with_csv("k,v\na,1\nb,2\nc,3,4\nd,5\n");
    let (ok, stderr) = run_spec(dir.path(), CSV_SPEC);
    assert!(!ok);
    assert!(stderr.contains("data.csv:4"), "{stderr}");
}

#[test]
fn a_value_that_does_not_parse_is_named_by_file_and_line() {
    // The schema is inferred from the first lines; line 1002 then holds text in an integer
    // column.
    let mut csv = String::from("k,v\n");
    for i in 0..1000 {
        csv.push_str(&format!("k{},{i}\n", i % 7));
    }
    csv.push_str("k1,not-a-number\n");
    let dir = with_csv(&csv);
    let (ok, stderr) = run_spec(dir.path(), CSV_SPEC);
    assert!(!ok);
    assert!(stderr.contains("data.csv:1002"), "{stderr}");
    assert!(stderr.contains("not-a-number"), "{stderr}");
}

#[test]
fn dead_letters_take_bad_rows_and_the_good_rows_go_on() {
    let dir = with_csv("k,v\na,1\nb,2\nc,3,4\na,5\n");
    let spec = CSV_SPEC.replace(
        "path = \"data.csv\"\n",
        "path = \"data.csv\"\non_bad_record = \"dead_letter\"\ndead_letters = { format = \"json\", path = \"bad\" }\n",
    );
    let (ok, stderr) = run_spec(dir.path(), &spec);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("1 bad records"), "{stderr}");
    let mut letters = String::new();
    for entry in std::fs::read_dir(dir.path().join("bad")).expect("dead-letter dir") {
        letters.push_str(&std::fs::read_to_string(entry.expect("entry").path()).expect("read"));
    }
    let records: Vec<serde_json::Value> = letters
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(records.len(), 1, "{letters}");
    assert!(
        records[0]["location"]
            .as_str()
            .unwrap_or_default()
            .ends_with("data.csv:4")
    );
    assert_eq!(records[0]["record"], "c,3,4");
}

#[test]
fn an_unknown_column_in_a_spec_names_the_step_and_its_line() {
    let dir = with_csv("k,v\na,1\n");
    let spec = CSV_SPEC.replace("column = \"v\"", "column = \"value\"");
    let (ok, stderr) = run_spec(dir.path(), &spec);
    assert!(!ok);
    // The aggregate step starts on line 7 of the spec.
    assert!(stderr.contains("job.toml:7"), "{stderr}");
    assert!(
        stderr.contains("'value'") && stderr.contains("k, v"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_operator_in_a_spec_names_its_line() {
    let dir = with_csv("k,v\na,1\n");
    let spec = CSV_SPEC.replace("op = \"aggregate\"", "op = \"agregate\"");
    let (ok, stderr) = run_spec(dir.path(), &spec);
    assert!(!ok);
    // The bad value is on line 8, under the `[[steps]]` header of line 7.
    assert!(
        stderr.contains("job.toml:8") && stderr.contains("agregate"),
        "{stderr}"
    );
}

#[test]
fn a_missing_input_names_the_pattern() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, stderr) = run_spec(dir.path(), CSV_SPEC);
    assert!(!ok);
    assert!(stderr.contains("data.csv"), "{stderr}");
}

#[test]
fn a_file_that_is_not_parquet_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("fake.parquet"), "this is not parquet\n").expect("write");
    let job = Job::new("fake");
    job.source(Files::parquet(format!(
        "{}/*.parquet",
        dir.path().display()
    )))
    .sink(Collect::new());
    let err = streamrun::execute(&job).expect_err("not parquet");
    assert!(err.to_string().contains("fake.parquet"), "{err}");
}

#[test]
fn a_bad_json_line_is_named_by_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("events.jsonl"),
        "{\"a\": 1}\n{\"a\": 2}\n{\"a\": 3\n{\"a\": 4}\n",
    )
    .expect("write");
    let job = Job::new("json");
    job.source(Files::json(format!(
        "{}/events.jsonl",
        dir.path().display()
    )))
    .sink(Collect::new());
    let err = streamrun::execute(&job).expect_err("bad json");
    assert!(err.to_string().contains("events.jsonl:3"), "{err}");
}

#[test]
fn a_job_without_a_sink_is_refused() {
    let job = Job::new("no sink");
    let _unused = job
        .source(Files::text("whatever.txt"))
        .split_words("line", "word");
    let err = streamrun::execute(&job).expect_err("no sink");
    assert!(err.to_string().contains("no sink"), "{err}");
}

const WINDOW_SPEC: &str = r#"name = "windows"

[source]
format = "csv"
path = "events.csv"
event_time = { column = "t", max_delay_ms = 0 }

[[steps]]
op = "window"
kind = "tumbling"
size_ms = 1000
keys = ["k"]
aggs = [{ fn = "count", as = "n" }]

[sink]
format = "csv"
path = "out"
"#;

#[test]
fn a_spec_runs_event_time_windows() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("events.csv"),
        "k,t\na,100\nb,200\na,900\na,1500\n",
    )
    .expect("csv");
    let (ok, stderr) = run_spec(dir.path(), WINDOW_SPEC);
    assert!(ok, "{stderr}");
    let mut rows: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("out")).expect("out") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("part");
        rows.extend(text.lines().skip(1).map(|l| {
            // window_start, window_end, k, n: keep the start's seconds, the key and the count.
            let f: Vec<&str> = l.split(',').collect();
            format!("{}|{}|{}", &f[0][17..19], f[2], f[3])
        }));
    }
    rows.sort();
    assert_eq!(rows, vec!["00|a|2", "00|b|1", "01|a|1"]);
    let dir2 = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir2.path().join("events.csv"), "k,t\na,100\n").expect("csv");
    let without_time =
        WINDOW_SPEC.replace("event_time = { column = \"t\", max_delay_ms = 0 }\n", "");
    let (ok, stderr) = run_spec(dir2.path(), &without_time);
    assert!(!ok);
    // Without the event_time line, the window step starts on line 7.
    assert!(
        stderr.contains("job.toml:7") && stderr.contains("event_time"),
        "{stderr}"
    );
}
