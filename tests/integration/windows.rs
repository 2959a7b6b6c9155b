//! Tumbling event-time windows against recomputations from the raw events: in-order
//! Nexmark bids on 1 and 4 workers, out-of-order records within the allowed delay, and late
//! records, which go to the dead letters (or fail the job), never silently away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimestampMillisecondType};
use nexmark::EventGenerator;
use nexmark::event::Event;
use streamrun::connectors::Replay;
use streamrun::prelude::*;

use crate::common::{run, sorted_rows};

/// (window start, key) → count, read from a window aggregate's output.
fn window_counts(batches: &[RecordBatch]) -> HashMap<(i64, i64), i64> {
    let mut out = HashMap::new();
    for b in batches {
        let start = b.column(0).as_primitive::<TimestampMillisecondType>();
        let end = b.column(1).as_primitive::<TimestampMillisecondType>();
        let key = b.column(2).as_primitive::<Int64Type>();
        let count = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            assert_eq!(end.value(i) - start.value(i), 1000, "window length");
            let previous = out.insert((start.value(i), key.value(i)), count.value(i));
            assert!(
                previous.is_none(),
                "window {} of key {} emitted twice",
                start.value(i),
                key.value(i)
            );
        }
    }
    out
}

#[test]
fn tumbling_counts_of_nexmark_bids_match_a_recomputation_on_1_and_4_workers() {
    const EVENTS: u64 = 60_000;
    let mut expected: HashMap<(i64, i64), i64> = HashMap::new();
    for event in EventGenerator::new(Nexmark::bids(EVENTS).config()).take(EVENTS as usize) {
        if let Event::Bid(b) = event {
            let t = b.date_time as i64;
            *expected
                .entry((t - t % 1000, b.auction as i64))
                .or_default() += 1;
        }
    }
    let windows: std::collections::HashSet<i64> = expected.keys().map(|k| k.0).collect();
    assert!(windows.len() >= 3, "the events should span several windows");
    let mut first = None;
    for workers in [1, 4] {
        let job = Job::new("windows");
        let out = Collect::new();
        job.source(Nexmark::bids(EVENTS))
            .event_time("date_time", Duration::ZERO)
            .key_by("auction")
            .window(Tumbling::of(Duration::from_secs(1)))
            .count()
            .sink(out.clone());
        run(&job, workers);
        let batches = out.batches();
        assert_eq!(window_counts(&batches), expected, "{workers} workers");
        let rows = sorted_rows(&batches);
        match &first {
            None => first = Some(rows),
            Some(f) => assert_eq!(&rows, f),
        }
    }
}

fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("t", DataType::Int64, false),
    ]))
}

fn events(rows: &[(&str, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        events_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .expect("batch")
}

/// (window start, key) → count over `rows`, the oracle.
fn recount(rows: &[(&str, i64)]) -> HashMap<(i64, String), i64> {
    let mut out = HashMap::new();
    for (k, t) in rows {
        *out.entry((t - t % 1000, (*k).to_owned())).or_default() += 1;
    }
    out
}

fn run_counts(
    batches: Vec<RecordBatch>,
    delay: Duration,
    dead: Option<Collect>,
) -> streamrun::Result<HashMap<(i64, String), i64>> {
    let job = Job::new("late");
    let out = Collect::new();
    let replay = Replay::new(events_schema(), batches);
    let source = match dead {
        Some(dead) => job.source_with_dead_letters(replay, dead),
        None => job.source(replay),
    };
    source
        .event_time("t", delay)
        .key_by("k")
        .window(Tumbling::of(Duration::from_secs(1)))
        .count()
        .sink(out.clone());
    streamrun::execute_with(&job, &ExecOptions::new(1))?;
    let mut got = HashMap::new();
    for b in out.batches() {
        let start = b.column(0).as_primitive::<TimestampMillisecondType>();
        let key = b.column(2).as_string::<i32>();
        let count = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            got.insert((start.value(i), key.value(i).to_owned()), count.value(i));
        }
    }
    Ok(got)
}

#[test]
fn out_of_order_records_within_the_delay_are_all_counted() {
    // Each batch goes back up to 900 ms in time; a delay of one second admits all of it.
    let batches: Vec<Vec<(&str, i64)>> = (0..6)
        .map(|b| {
            (0..50)
                .map(|i| (if i % 3 == 0 { "x" } else { "y" }, b * 700 + (i * 37) % 900))
                .collect()
        })
        .collect();
    let all: Vec<(&str, i64)> = batches.iter().flatten().copied().collect();
    let got = run_counts(
        batches.iter().map(|rows| events(rows)).collect(),
        Duration::from_secs(1),
        None,
    )
    .expect("no record is late");
    assert_eq!(got, recount(&all));
}

#[test]
fn late_records_go_to_the_dead_letters_and_the_rest_is_counted() {
    let on_time: Vec<(&str, i64)> = (0..100)
        .map(|i| (if i % 2 == 0 { "a" } else { "b" }, i * 10))
        .collect();
    // After the first batch the watermark is 990 - 100 = 890: 50 ms is late, 2,000 ms is not.
    let second = vec![("a", 50), ("b", 2000)];
    let dead = Collect::new();
    let got = run_counts(
        vec![events(&on_time), events(&second)],
        Duration::from_millis(100),
        Some(dead.clone()),
    )
    .expect("late records are dead-lettered");
    let mut kept = on_time.clone();
    kept.push(("b", 2000));
    assert_eq!(got, recount(&kept));
    let letters = dead.batches();
    assert_eq!(letters.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    let reason = letters[0].column(2).as_string::<i32>().value(0).to_owned();
    let record = letters[0].column(3).as_string::<i32>().value(0).to_owned();
    assert!(
        reason.contains("late") && reason.contains("890"),
        "{reason}"
    );
    assert_eq!(record, "a,50");
}

#[test]
fn a_late_record_fails_the_job_by_default_naming_its_time() {
    let on_time: Vec<(&str, i64)> = (0..100).map(|i| ("a", i * 10)).collect();
    let err = run_counts(
        vec![events(&on_time), events(&[("a", 50)])],
        Duration::from_millis(100),
        None,
    )
    .expect_err("late record");
    let message = err.to_string();
    assert!(
        message.contains("late") && message.contains("50 ms"),
        "{message}"
    );
}

#[test]
fn a_window_without_event_time_is_refused_before_running() {
    let job = Job::new("no time");
    job.source(Replay::new(events_schema(), vec![events(&[("a", 1)])]))
        .key_by("k")
        .window(Tumbling::of(Duration::from_secs(1)))
        .count()
        .sink(Collect::new());
    let err = streamrun::explain(&job, 1).expect_err("no event time");
    assert!(err.to_string().contains("event time"), "{err}");
    let job = Job::new("misplaced");
    job.source(Replay::new(events_schema(), vec![events(&[("a", 1)])]))
        .select(["k", "t"])
        .event_time("t", Duration::ZERO)
        .sink(Collect::new());
    let err = streamrun::execute(&job).expect_err("event time on an operator");
    assert!(err.to_string().contains("right after source"), "{err}");
}

/// A sink noting how many records the sources had read when its first batch arrived.
#[derive(Clone)]
struct FirstArrival {
    metrics: Arc<streamrun::Metrics>,
    seen: Arc<std::sync::Mutex<Option<u64>>>,
}

impl streamrun::engine::Sink for FirstArrival {
    fn open(
        &self,
        _: &streamrun::engine::WorkerContext,
        _: &SchemaRef,
    ) -> streamrun::Result<Box<dyn streamrun::engine::SinkWriter>> {
        Ok(Box::new(self.clone()))
    }
}

impl streamrun::engine::SinkWriter for FirstArrival {
    fn write(&mut self, _: &RecordBatch) -> streamrun::Result<()> {
        let mut seen = self.seen.lock().expect("lock");
        if seen.is_none() {
            *seen = Some(
                self.metrics
                    .records_in
                    .load(std::sync::atomic::Ordering::SeqCst),
            );
        }
        Ok(())
    }
    fn finish(&mut self) -> streamrun::Result<()> {
        Ok(())
    }
}

#[test]
fn windows_are_emitted_when_the_watermark_passes_not_at_the_end() {
    // 20 seconds of events, one per millisecond, in 200 batches.
    let batches: Vec<RecordBatch> = (0..200)
        .map(|b| {
            let rows: Vec<(&str, i64)> = (0..100).map(|i| ("k", b * 100 + i)).collect();
            events(&rows)
        })
        .collect();
    let metrics = Arc::new(streamrun::Metrics::default());
    let sink = FirstArrival {
        metrics: Arc::clone(&metrics),
        seen: Arc::default(),
    };
    let job = Job::new("early");
    job.source(Replay::new(events_schema(), batches))
        .event_time("t", Duration::ZERO)
        .key_by("k")
        .window(Tumbling::of(Duration::from_secs(1)))
        .count()
        .sink((
            streamrun::engine::Descriptor::new("first-arrival", serde_json::Value::Null),
            Arc::new(sink.clone()) as Arc<dyn streamrun::engine::Sink>,
        ));
    let report = streamrun::execute_with(
        &job,
        &ExecOptions {
            workers: 2,
            metrics: Some(metrics),
            ..ExecOptions::default()
        },
    )
    .expect("job");
    assert_eq!(report.records_in, 20_000);
    let first = sink.seen.lock().expect("lock").expect("windows arrived");
    assert!(
        first < 20_000,
        "the first window arrived only after all {first} records were read"
    );
}

#[test]
fn sliding_windows_match_a_recomputation_on_1_and_4_workers() {
    // Windows of 2 s every 500 ms: each bid counts in four windows.
    const EVENTS: u64 = 40_000;
    let (size, slide) = (2000i64, 500i64);
    let mut expected: HashMap<(i64, i64), (i64, i64)> = HashMap::new();
    for event in EventGenerator::new(Nexmark::bids(EVENTS).config()).take(EVENTS as usize) {
        if let Event::Bid(b) = event {
            let t = b.date_time as i64;
            let mut start = t - t % slide;
            while start > t - size {
                let e = expected
                    .entry((start, (b.auction % 10) as i64))
                    .or_insert((0, i64::MIN));
                e.0 += 1;
                e.1 = e.1.max(b.price as i64);
                start -= slide;
            }
        }
    }
    for workers in [1, 4] {
        let job = Job::new("sliding");
        let out = Collect::new();
        job.source(Nexmark::bids(EVENTS))
            .event_time("date_time", Duration::ZERO)
            .map_batches("bucket", |b: RecordBatch| {
                // A coarse key, so that windows hold several bids per key.
                let auction = b.column(0).as_primitive::<Int64Type>();
                let bucket: Int64Array = auction.unary(|a| a % 10);
                let schema = Arc::new(Schema::new(vec![
                    Field::new("bucket", DataType::Int64, false),
                    b.schema().field_with_name("price")?.clone(),
                    b.schema().field_with_name("date_time")?.clone(),
                ]));
                RecordBatch::try_new(
                    schema,
                    vec![
                        Arc::new(bucket),
                        Arc::clone(b.column_by_name("price").expect("price")),
                        Arc::clone(b.column_by_name("date_time").expect("date_time")),
                    ],
                )
            })
            .key_by("bucket")
            .window(Sliding::of(Duration::from_secs(2)).every(Duration::from_millis(500)))
            .aggregate(vec![Agg::count(), Agg::max("price")])
            .sink(out.clone());
        run(&job, workers);
        let mut got = HashMap::new();
        for b in out.batches() {
            let start = b.column(0).as_primitive::<TimestampMillisecondType>();
            let end = b.column(1).as_primitive::<TimestampMillisecondType>();
            let key = b.column(2).as_primitive::<Int64Type>();
            let count = b.column(3).as_primitive::<Int64Type>();
            let max = b.column(4).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                assert_eq!(end.value(i) - start.value(i), size);
                let previous = got.insert(
                    (start.value(i), key.value(i)),
                    (count.value(i), max.value(i)),
                );
                assert!(previous.is_none(), "a window was emitted twice");
            }
        }
        assert_eq!(got, expected, "{workers} workers");
    }
}

#[test]
fn session_windows_match_a_recomputation_with_out_of_order_input() {
    use rand::{Rng, SeedableRng};
    const GAP: i64 = 300;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let keys = ["p", "q", "r", "s"];
    // Batch i holds times in [100 i, 100 i + 100), shuffled, with bursts and pauses per key.
    let mut all: Vec<(&str, i64)> = Vec::new();
    let batches: Vec<RecordBatch> = (0..120)
        .map(|i| {
            let rows: Vec<(&str, i64)> = (0..40)
                .filter_map(|_| {
                    let key = keys[rng.random_range(0..keys.len())];
                    let t = i * 100 + rng.random_range(0..100);
                    // A key pauses for a while now and then, ending its session.
                    let paused =
                        (t / 1000 + key.len() as i64 * (key.as_bytes()[0] as i64)) % 4 == 0;
                    (!paused).then_some((key, t))
                })
                .collect();
            all.extend(rows.iter().copied());
            events(&rows)
        })
        .collect();
    let mut expected: Vec<String> = Vec::new();
    for key in keys {
        let mut times: Vec<i64> = all.iter().filter(|r| r.0 == key).map(|r| r.1).collect();
        times.sort_unstable();
        let mut start = 0;
        for i in 1..=times.len() {
            if i == times.len() || times[i] - times[i - 1] >= GAP {
                expected.push(format!(
                    "{}|{}|{key}|{}",
                    times[start],
                    times[i - 1] + GAP,
                    i - start
                ));
                start = i;
            }
        }
    }
    expected.sort();
    assert!(
        expected.len() > keys.len(),
        "the data should hold several sessions per key"
    );
    for workers in [1, 3] {
        let job = Job::new("sessions");
        let out = Collect::new();
        job.source(Replay::new(events_schema(), batches.clone()))
            .event_time("t", Duration::from_millis(200))
            .key_by("k")
            .window(Session::with_gap(Duration::from_millis(GAP as u64)))
            .count()
            .sink(out.clone());
        run(&job, workers);
        let mut got = Vec::new();
        for b in out.batches() {
            let start = b.column(0).as_primitive::<TimestampMillisecondType>();
            let end = b.column(1).as_primitive::<TimestampMillisecondType>();
            let key = b.column(2).as_string::<i32>();
            let count = b.column(3).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                got.push(format!(
                    "{}|{}|{}|{}",
                    start.value(i),
                    end.value(i),
                    key.value(i),
                    count.value(i)
                ));
            }
        }
        got.sort();
        assert_eq!(got, expected, "{workers} workers");
    }
}

#[test]
fn late_records_can_go_to_a_late_data_sink_with_all_their_columns() {
    let on_time: Vec<(&str, i64)> = (0..100)
        .map(|i| (if i % 2 == 0 { "a" } else { "b" }, i * 10))
        .collect();
    let second = vec![("a", 50), ("b", 2000), ("b", 120)];
    let job = Job::new("late sink");
    let out = Collect::new();
    let late = Collect::new();
    job.source(Replay::new(
        events_schema(),
        vec![events(&on_time), events(&second)],
    ))
    .event_time("t", Duration::from_millis(100))
    .late_data(late.clone())
    .key_by("k")
    .window(Tumbling::of(Duration::from_secs(1)))
    .count()
    .sink(out.clone());
    let report = streamrun::execute_with(&job, &ExecOptions::new(1))
        .expect("late records are not errors with a late-data sink");
    assert_eq!(report.late_records, 2);
    assert_eq!(report.dead_letters, 0);
    let mut late_rows = sorted_rows(&late.batches());
    late_rows.sort();
    assert_eq!(late_rows, vec!["a|50".to_owned(), "b|120".to_owned()]);
    let mut kept = on_time.clone();
    kept.push(("b", 2000));
    let mut got = HashMap::new();
    for b in out.batches() {
        let start = b.column(0).as_primitive::<TimestampMillisecondType>();
        let key = b.column(2).as_string::<i32>();
        let count = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            got.insert((start.value(i), key.value(i).to_owned()), count.value(i));
        }
    }
    assert_eq!(got, recount(&kept));
}

/// Whether `out` holds a first firing (not an update) of the window starting at `start`.
fn fired(out: &Collect, start: i64) -> bool {
    out.batches().iter().any(|b| {
        let starts = b.column(0).as_primitive::<TimestampMillisecondType>();
        let updates = b.column(b.num_columns() - 1).as_boolean();
        (0..b.num_rows()).any(|i| starts.value(i) == start && !updates.value(i))
    })
}

#[test]
fn allowed_lateness_fires_at_the_watermark_then_updates_and_later_records_go_aside() {
    use crate::scripted::{Scripted, Step};
    let first: Vec<(&str, i64)> = (0..300)
        .map(|i| (if i % 3 == 0 { "a" } else { "b" }, i * 10))
        .collect();
    // After `first` the watermark is 2,990 (no delay) and, with 2 s of lateness, the
    // frontier 990: windows [0, 1 s) and [1 s, 2 s) have fired. ("a", 1500) is within the
    // lateness and updates the second; ("b", 500) is behind the frontier, so late.
    let second = vec![("a", 1500), ("b", 500), ("a", 5000)];
    let out = Collect::new();
    let late = Collect::new();
    let seen = out.clone();
    let source = Scripted::new(
        events_schema(),
        vec![vec![
            Step::Emit(events(&first)),
            Step::QuietUntil(Arc::new(move || fired(&seen, 1000))),
            Step::Emit(events(&second)),
        ]],
    );
    let job = Job::new("lateness");
    job.source(source.clone().into_source())
        .event_time("t", Duration::ZERO)
        .allowed_lateness(Duration::from_secs(2))
        .late_data(late.clone())
        .key_by("k")
        .window(Tumbling::of(Duration::from_secs(1)))
        .count()
        .sink(out.clone());
    let report = run(&job, 1);
    assert!(!source.gave_up(), "the second window never fired");
    assert_eq!(report.late_records, 1);
    assert_eq!(sorted_rows(&late.batches()), vec!["b|500"]);

    // The last result of each window and key is the count over every admitted record.
    let mut admitted = first.clone();
    admitted.extend([("a", 1500), ("a", 5000)]);
    let mut last: HashMap<(i64, String), i64> = HashMap::new();
    let mut updates = Vec::new();
    for b in out.batches() {
        assert_eq!(b.schema().field(4).name(), "is_update");
        let start = b.column(0).as_primitive::<TimestampMillisecondType>();
        let key = b.column(2).as_string::<i32>();
        let count = b.column(3).as_primitive::<Int64Type>();
        let update = b.column(4).as_boolean();
        for i in 0..b.num_rows() {
            let k = (start.value(i), key.value(i).to_owned());
            let previous = last.insert(k.clone(), count.value(i));
            // A first firing comes once; an update follows one.
            assert_eq!(previous.is_some(), update.value(i), "{k:?}");
            if update.value(i) {
                updates.push((k, previous, count.value(i)));
            }
        }
    }
    assert_eq!(last, recount(&admitted));
    let a_before = first
        .iter()
        .filter(|(k, t)| *k == "a" && (1000..2000).contains(t))
        .count();
    assert_eq!(
        updates,
        vec![(
            (1000, "a".to_owned()),
            Some(a_before as i64),
            a_before as i64 + 1
        )]
    );
}

#[test]
fn an_idle_partition_does_not_hold_windows_back() {
    use crate::scripted::{Scripted, Step};
    // Partition 0 goes on for 20 s of event time, a batch every 10 ms of wall time.
    // Partition 1 sends a little at the start, then nothing until the window [5 s, 6 s) has
    // fired: only its idle timeout lets that happen. Then it sends a record from the past
    // (late: its watermark followed partition 0's) and one from the future.
    let mut zero = Vec::new();
    let mut all: Vec<(&str, i64)> = Vec::new();
    for b in 0..200i64 {
        let rows: Vec<(&str, i64)> = (0..10)
            .map(|i| (["p", "q", "r"][(i % 3) as usize], b * 100 + i * 10))
            .collect();
        all.extend(&rows);
        zero.push(Step::Emit(events(&rows)));
        zero.push(Step::Quiet(Duration::from_millis(10)));
    }
    let early = vec![("p", 100), ("q", 300)];
    all.extend(&early);
    all.push(("q", 30_000));
    let out = Collect::new();
    let late = Collect::new();
    let seen = out.clone();
    let window_5s_fired = move || {
        seen.batches().iter().any(|b| {
            let starts = b.column(0).as_primitive::<TimestampMillisecondType>();
            (0..b.num_rows()).any(|i| starts.value(i) == 5000)
        })
    };
    let one = vec![
        Step::Emit(events(&early)),
        Step::QuietUntil(Arc::new(window_5s_fired)),
        Step::Emit(events(&[("r", 1000), ("q", 30_000)])),
    ];
    let source = Scripted::new(events_schema(), vec![zero, one]);
    let job = Job::new("idle");
    job.source(source.clone().into_source())
        .event_time("t", Duration::from_millis(200))
        .idle_timeout(Duration::from_millis(100))
        .late_data(late.clone())
        .key_by("k")
        .window(Tumbling::of(Duration::from_secs(1)))
        .count()
        .sink(out.clone());
    let report = run(&job, 2);
    assert!(
        !source.gave_up(),
        "the quiet partition held the windows back"
    );
    assert_eq!(report.late_records, 1);
    assert_eq!(sorted_rows(&late.batches()), vec!["r|1000"]);
    let mut got = HashMap::new();
    for b in out.batches() {
        let start = b.column(0).as_primitive::<TimestampMillisecondType>();
        let key = b.column(2).as_string::<i32>();
        let count = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let previous = got.insert((start.value(i), key.value(i).to_owned()), count.value(i));
            assert!(previous.is_none(), "a window emitted twice");
        }
    }
    assert_eq!(got, recount(&all));
}

#[test]
fn interval_join_of_auctions_and_bids_matches_a_nested_loop_on_1_and_4_workers() {
    const EVENTS: u64 = 20_000;
    // Each auction with the bids on it made in the 2 s after it opened.
    let (mut auctions, mut bids) = (Vec::new(), Vec::new());
    for event in EventGenerator::new(Nexmark::bids(EVENTS).config()).take(EVENTS as usize) {
        match event {
            Event::Auction(a) => auctions.push((a.id as i64, a.date_time as i64)),
            Event::Bid(b) => bids.push((b.auction as i64, b.date_time as i64, b.price as i64)),
            Event::Person(_) => {}
        }
    }
    let mut expected = Vec::new();
    for &(id, opened) in &auctions {
        for &(auction, t, price) in &bids {
            if auction == id && (0..=2000).contains(&(t - opened)) {
                expected.push(format!("{id}|{t}|{price}"));
            }
        }
    }
    expected.sort();
    assert!(expected.len() > 100, "the data should have matches");
    for workers in [1, 4] {
        let job = Job::new("interval");
        let out = Collect::new();
        let a = job
            .source(Nexmark::auctions(EVENTS))
            .event_time("date_time", Duration::ZERO)
            .select(["id", "date_time"])
            .key_by("id");
        let b = job
            .source(Nexmark::bids(EVENTS))
            .event_time("date_time", Duration::ZERO)
            .select(["auction", "date_time", "price"])
            .key_by("auction");
        a.interval_join(&b, 0..=2000).sink(out.clone());
        run(&job, workers);
        let mut got: Vec<String> = Vec::new();
        for batch in out.batches() {
            let id = batch.column(0).as_primitive::<Int64Type>();
            let t = streamrun::engine::event_millis(batch.column(3)).expect("event time");
            let price = batch.column(4).as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                got.push(format!("{}|{}|{}", id.value(i), t.value(i), price.value(i)));
            }
        }
        got.sort();
        assert_eq!(got, expected, "{workers} workers");
    }
}
