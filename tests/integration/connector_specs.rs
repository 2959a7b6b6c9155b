//! Job specs naming the brokers and the database, run by `stream-run` against real servers:
//! a CSV file appended to a Redis stream by one spec and read back by another, into JSON
//! lines equal to the file; and the same file upserted into PostgreSQL. A server that is not
//! installed skips its test (saying so), unless `STREAMRUN_REQUIRE_SERVICES=1`.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn required() -> bool {
    std::env::var("STREAMRUN_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn stream_run(spec: &Path) -> std::process::Output {
    crate::common::output_within(
        Command::new(env!("CARGO_BIN_EXE_stream-run"))
            .args(["run", "--workers", "2"])
            .arg(spec),
        Duration::from_secs(180),
    )
}

/// The sales file's rows as `order_id|region|product|quantity|price`, the price as an f64
/// prints (`20.5`, `40`).
fn sales_rows() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/sales.csv");
    std::fs::read_to_string(path)
        .expect("sales.csv")
        .lines()
        .skip(1)
        .map(|l| {
            let (rest, price) = l.rsplit_once(',').expect("a price");
            let price: f64 = price.parse().expect("a number");
            format!("{}|{price}", rest.replace(',', "|"))
        })
        .collect()
}

/// `got` equals the sales rows; a difference shows a few rows, not thousands.
fn assert_sales(got: &BTreeSet<String>) {
    let want = sales_rows();
    let missing: Vec<&String> = want.difference(got).take(3).collect();
    let extra: Vec<&String> = got.difference(&want).take(3).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} rows, {} expected; missing {missing:?}, unexpected {extra:?}",
        got.len(),
        want.len()
    );
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_csv_file_goes_through_a_redis_stream_by_two_specs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let server = match Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(child) => Killed(child),
        Err(e) => {
            assert!(!required(), "redis-server: {e}");
            eprintln!("skipped: redis-server cannot run ({e}); install redis-server");
            return;
        }
    };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sales = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/sales.csv");
    let write = dir.path().join("write.toml");
    std::fs::write(
        &write,
        format!(
            "name = \"to_redis\"\n[source]\nformat = \"csv\"\npath = {sales:?}\n\
             [sink]\nformat = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\nstream = \"sales\"\n"
        ),
    )
    .expect("write spec");
    let out = stream_run(&write);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let read = dir.path().join("read.toml");
    std::fs::write(
        &read,
        format!(
            "name = \"from_redis\"\n[source]\nformat = \"redis\"\n\
             url = \"redis://127.0.0.1:{port}\"\nstream = \"sales\"\n\
             schema = [\"order_id: Int64\", \"region: Utf8\", \"product: Utf8\", \"quantity: Int64\", \"price: Float64\"]\n\
             end_when_idle_ms = 500\n\
             [sink]\nformat = \"json\"\npath = \"out\"\n"
        ),
    )
    .expect("read spec");
    let out = stream_run(&read);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows = BTreeSet::new();
    for part in std::fs::read_dir(dir.path().join("out")).expect("out") {
        let text = std::fs::read_to_string(part.expect("part").path()).expect("part");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
            rows.insert(format!(
                "{}|{}|{}|{}|{}",
                v["order_id"],
                v["region"].as_str().unwrap_or_default(),
                v["product"].as_str().unwrap_or_default(),
                v["quantity"],
                v["price"].as_f64().unwrap_or(f64::NAN)
            ));
        }
    }
    assert_sales(&rows);

    // A broker source without a schema is refused, naming the line.
    std::fs::write(
        &read,
        format!(
            "name = \"bad\"\n[source]\nformat = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\n\
             stream = \"sales\"\n[sink]\nformat = \"stdout\"\n"
        ),
    )
    .expect("bad spec");
    let out = stream_run(&read);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("read.toml:2") && stderr.contains("needs schema"),
        "{stderr}"
    );
    drop(server);
}

#[test]
fn a_csv_file_is_upserted_into_postgres_by_a_spec() {
    let connection = std::env::var("STREAMRUN_TEST_POSTGRES").unwrap_or_else(|_| {
        "host=127.0.0.1 user=streamrun password=streamrun dbname=streamrun".into()
    });
    let psql = |sql: &str| {
        let get = |key: &str| {
            connection
                .split_whitespace()
                .find_map(|p| p.strip_prefix(&format!("{key}=")))
                .unwrap_or_default()
                .to_string()
        };
        Command::new("psql")
            .args(["-h", &get("host"), "-U", &get("user"), "-d", &get("dbname")])
            .args(["-tAc", sql])
            .env("PGPASSWORD", get("password"))
            .output()
    };
    match psql("DROP TABLE IF EXISTS spec_sales") {
        Ok(out) if out.status.success() => {}
        other => {
            assert!(
                !required(),
                "no PostgreSQL server at '{connection}': {other:?}"
            );
            eprintln!("skipped: no PostgreSQL server at '{connection}'");
            return;
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sales = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/sales.csv");
    let spec = dir.path().join("pg.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"to_pg\"\n[source]\nformat = \"csv\"\npath = {sales:?}\n\
             [sink]\nformat = \"postgres\"\nconnection = {connection:?}\ntable = \"spec_sales\"\n\
             upsert_key = [\"order_id\"]\ncreate_table = true\n"
        ),
    )
    .expect("spec");
    // Twice: an upsert leaves the table as the first run did.
    for _ in 0..2 {
        let out = stream_run(&spec);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = psql(
        "SELECT order_id || '|' || region || '|' || product || '|' || quantity || '|' || price \
         FROM spec_sales",
    )
    .expect("psql");
    let rows: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_sales(&rows);
}
