//! Session windows: per key, records closer than a gap in event time form one session.
//!
//! A session spans `[first event time, last event time + gap)`. A record whose event time
//! falls inside a session (or within a gap of it) joins it, and may merge two sessions that it
//! bridges. A session is emitted once, when the watermark reaches its end: no record that
//! arrives afterwards can touch it, since sources hold back records behind their watermark.
//! Sessions keep their rows until they close and are then aggregated with [`Aggregate`].

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::RowConverter;
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    Collector, Descriptor, Error, Operator, OperatorFactory, Result, WorkerContext, column_indices,
    event_millis,
};

use crate::aggregate::{Agg, Aggregate};
use crate::keys::{key_converter, key_rows};
use crate::windowing::{event_time_column, with_window};

/// A keyed aggregate over session windows separated by `gap_ms` of inactivity.
///
/// Output columns: `session_start`, `session_end` (millisecond timestamps; the end is the
/// last event time plus the gap), the keys, then the aggregates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionAggregate {
    /// The inactivity that ends a session, in milliseconds.
    pub gap_ms: u64,
    /// The event-time column (`None`: an error at plan time).
    pub time_column: Option<String>,
    /// The keys and aggregates computed per session.
    pub aggregate: Aggregate,
}

impl SessionAggregate {
    /// `aggs` by `keys` over sessions separated by `gap_ms`, on `time_column`.
    pub fn new(
        gap_ms: u64,
        time_column: Option<String>,
        keys: Vec<String>,
        aggs: Vec<Agg>,
    ) -> Self {
        SessionAggregate {
            gap_ms,
            time_column,
            aggregate: Aggregate::new(keys, aggs),
        }
    }

    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        let inner = self.aggregate.descriptor();
        Descriptor::new(
            "session_window",
            serde_json::json!({
                "gap_ms": self.gap_ms,
                "time": self.time_column,
                "keys": inner.config.get("keys"),
                "aggs": inner.config.get("aggs"),
            }),
        )
    }

    fn time_index(&self, input: &SchemaRef) -> Result<usize> {
        if self.gap_ms == 0 {
            return Err(Error::Plan("a session gap must be at least 1 ms".into()));
        }
        event_time_column(input, &self.time_column, "a session window")
    }
}

impl OperatorFactory for SessionAggregate {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        self.time_index(input)?;
        let inner = self.aggregate.output_schema(input)?;
        let time = DataType::Timestamp(TimeUnit::Millisecond, None);
        let mut fields = vec![
            Field::new("session_start", time.clone(), false),
            Field::new("session_end", time, false),
        ];
        fields.extend(inner.fields().iter().map(|f| f.as_ref().clone()));
        Ok(Arc::new(Schema::new(fields)))
    }

    fn create(&self, ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let keys = column_indices(input, &self.aggregate.keys, "session key")?;
        let converter = key_converter(input, &keys, "session")?;
        Ok(Box::new(SessionInstance {
            gap: i64::try_from(self.gap_ms)
                .map_err(|_| Error::Plan("session gap out of range".into()))?,
            time: self.time_index(input)?,
            keys,
            converter,
            aggregate: self.aggregate.clone(),
            ctx: ctx.clone(),
            input: Arc::clone(input),
            schema: self.output_schema(input)?,
            sessions: HashMap::new(),
        }))
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

/// One open session of one key.
struct Session {
    start: i64,
    /// The last event time plus the gap.
    end: i64,
    rows: Vec<RecordBatch>,
    /// Rows of the batch being processed that joined the session.
    pending: Vec<u32>,
}

struct SessionInstance {
    gap: i64,
    time: usize,
    keys: Vec<usize>,
    converter: RowConverter,
    aggregate: Aggregate,
    ctx: WorkerContext,
    input: SchemaRef,
    schema: SchemaRef,
    /// Open sessions per key (encoded in Arrow's row format), sorted by start.
    sessions: HashMap<Vec<u8>, Vec<Session>>,
}

impl SessionInstance {
    /// Aggregates the rows of a closed session and emits its one row.
    fn close(&self, session: Session, out: &mut Collector) -> Result<()> {
        let rows = concat_batches(&self.input, &session.rows)
            .map_err(|e| Error::arrow("session rows", e))?;
        let mut op = self.aggregate.create(&self.ctx, &self.input)?;
        let mut inner = Collector::new();
        op.process_batch(rows, &mut inner)?;
        op.finish(&mut inner)?;
        for batch in inner.take() {
            out.emit(with_window(
                &self.schema,
                session.start,
                session.end,
                batch.num_rows(),
                batch.columns().iter().cloned(),
            )?);
        }
        Ok(())
    }

    /// Emits (and forgets) the sessions that end at or before `limit`.
    fn close_until(&mut self, limit: i64, out: &mut Collector) -> Result<()> {
        let mut closed = Vec::new();
        for sessions in self.sessions.values_mut() {
            let (done, open): (Vec<Session>, Vec<Session>) = std::mem::take(sessions)
                .into_iter()
                .partition(|s| s.end <= limit);
            *sessions = open;
            closed.extend(done);
        }
        self.sessions.retain(|_, s| !s.is_empty());
        closed.sort_by_key(|s| (s.start, s.end));
        for session in closed {
            self.close(session, out)?;
        }
        Ok(())
    }
}

/// Adds a record at `time` (row `row` of the current batch) to a key's sessions, merging the
/// sessions it touches.
fn add(sessions: &mut Vec<Session>, time: i64, gap: i64, row: u32) {
    let (start, end) = (time, time.saturating_add(gap));
    let (touching, mut rest): (Vec<Session>, Vec<Session>) = std::mem::take(sessions)
        .into_iter()
        .partition(|s| s.start < end && start < s.end);
    let mut merged = Session {
        start,
        end,
        rows: Vec::new(),
        pending: vec![row],
    };
    for s in touching {
        merged.start = merged.start.min(s.start);
        merged.end = merged.end.max(s.end);
        merged.rows.extend(s.rows);
        merged.pending.extend(s.pending);
    }
    let at = rest.partition_point(|s| s.start < merged.start);
    rest.insert(at, merged);
    *sessions = rest;
}

impl Operator for SessionInstance {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut Collector) -> Result<()> {
        let times = event_millis(batch.column(self.time))
            .map_err(|e| Error::arrow("session event time", e))?;
        if arrow::array::Array::null_count(&times) > 0 {
            return Err(Error::Input(
                "a record without event time reached a session window".into(),
            ));
        }
        let keys = key_rows(&self.converter, &batch, &self.keys, "session")?;
        // Rows in event-time order, so that most records extend the latest session.
        let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
        order.sort_by_key(|&r| times.value(r as usize));
        for row in order {
            let key = keys.row(row as usize);
            let sessions = match self.sessions.get_mut(key.as_ref()) {
                Some(s) => s,
                None => self.sessions.entry(key.as_ref().to_vec()).or_default(),
            };
            add(sessions, times.value(row as usize), self.gap, row);
        }
        for sessions in self.sessions.values_mut() {
            for session in sessions.iter_mut().filter(|s| !s.pending.is_empty()) {
                let mut pending = std::mem::take(&mut session.pending);
                pending.sort_unstable();
                session.rows.push(
                    take_record_batch(&batch, &UInt32Array::from(pending))
                        .map_err(|e| Error::arrow("session rows", e))?,
                );
            }
        }
        Ok(())
    }

    fn hold(&self) -> Option<u64> {
        // A session's result carries event time `end - 1`.
        self.sessions
            .values()
            .flatten()
            .map(|s| u64::try_from(s.end.saturating_sub(1)).unwrap_or(0))
            .min()
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Collector) -> Result<()> {
        self.close_until(i64::try_from(watermark).unwrap_or(i64::MAX), out)
    }

    fn finish(&mut self, out: &mut Collector) -> Result<()> {
        self.close_until(i64::MAX, out)
    }
}
