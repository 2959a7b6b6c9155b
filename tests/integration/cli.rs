//! The `stream-run` binary, run as a user would.

use std::process::{Command, Output};

fn stream_run(args: &[&str]) -> Output {
    crate::common::output_within(
        Command::new(env!("CARGO_BIN_EXE_stream-run"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR")),
        std::time::Duration::from_secs(180),
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_wordcount_spec_prints_a_table_and_a_summary() {
    let out = stream_run(&["run", "examples/jobs/wordcount.toml", "--workers", "2"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(
        stdout.contains("| word") && stdout.contains("count"),
        "{stdout}"
    );
    // "the" is the most frequent English word, and so the first row.
    let first_row = stdout.lines().nth(3).unwrap_or_default();
    assert!(first_row.contains("| the "), "{stdout}");
    assert!(
        stderr.contains("wordcount:") && stderr.contains("records in"),
        "{stderr}"
    );
}

#[test]
fn groupby_spec_runs() {
    let out = stream_run(&["run", "examples/jobs/groupby.toml", "-w", "2"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for region in ["north", "south", "east", "west", "central"] {
        assert!(stdout.contains(region), "{stdout}");
    }
}

#[test]
fn explain_prints_both_plans_and_dot() {
    let out = stream_run(&["explain", "examples/jobs/wordcount.toml"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("Logical plan") && stdout.contains("Hash(word)"),
        "{stdout}"
    );
    let dot = stream_run(&["explain", "--dot", "examples/jobs/wordcount.toml"]);
    assert!(text(&dot.stdout).starts_with("digraph"));
}

#[test]
fn version_and_help_answer() {
    let version = stream_run(&["--version"]);
    assert!(text(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["explain", "--help"],
    ] {
        let out = stream_run(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(text(&out.stdout).contains("Usage"), "{args:?}");
    }
}

#[test]
fn json_logs_are_json() {
    let out = stream_run(&[
        "--log-level",
        "info",
        "--log-format",
        "json",
        "run",
        "examples/jobs/groupby.toml",
    ]);
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    let log_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!log_lines.is_empty(), "{stderr}");
    for line in log_lines {
        serde_json::from_str::<serde_json::Value>(line).expect("a JSON log line");
    }
}
