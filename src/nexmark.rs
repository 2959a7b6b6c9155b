//! Nexmark queries as Streamrun jobs.
//!
//! The queries follow the standard definitions of the Nexmark suite as published with Flink
//! SQL (`nexmark/queries/qN.sql`). Each function adds the query to a job and returns its
//! result stream; [`Query::columns`] documents the result columns.

use std::sync::Arc;

use std::time::Duration;

use streamrun_connectors::Nexmark;
use streamrun_engine::{Descriptor, OperatorDecl, Parallelism, Source};
use streamrun_operators::{Agg, CmpOp, JoinKind, WindowArgMax};

use crate::dsl::{IntoSource, Job, Sliding, Stream, Tumbling};
use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::kernels::numeric::rem;
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;

/// The Nexmark queries Streamrun runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Query {
    /// Pass-through: every bid, unchanged.
    Q0,
    /// Currency conversion: every bid with its price in euros (`0.908 * price`).
    Q1,
    /// Selection: the bids on auctions whose id is a multiple of 123.
    Q2,
    /// Local item suggestion: who sells in category 10 from Oregon, Idaho or California (an
    /// incremental join of auctions and persons).
    Q3,
    /// Average closing price per category: the winning (highest) bid of each auction, among
    /// the bids made while it was open, averaged per category. Emitted when the input ends.
    Q4,
    /// Hot items: per sliding window (10 s every 2 s), the auctions with the most bids.
    Q5,
    /// Highest bid: per tumbling window of 10 s, the bids with the highest price.
    Q7,
    /// Monitor new users: the people who registered and opened an auction within the same
    /// tumbling window of 10 s.
    Q8,
}

impl Query {
    /// The result columns.
    pub fn columns(self) -> &'static str {
        match self {
            Query::Q0 => "auction, bidder, price, channel, url, date_time, extra",
            Query::Q1 => "auction, bidder, price (Float64, euros), date_time, extra",
            Query::Q2 => "auction, price",
            Query::Q3 => "name, city, state, id (the auction)",
            Query::Q4 => "category, final (mean winning price)",
            Query::Q5 => "window_start, window_end, auction, num (bids in the window)",
            Query::Q7 => "auction, price, bidder, date_time, window_end",
            Query::Q8 => "id, name, window_start",
        }
    }

    /// Adds the query over the first `events` events of the Nexmark generator (with its base
    /// time) to `job`, returning the result stream.
    pub fn build(self, job: &Job, events: u64, base_time: u64) -> Stream {
        let source = |s: Nexmark| s.base_time(base_time).into_source();
        self.on(
            job,
            &Tables {
                persons: source(Nexmark::persons(events)),
                auctions: source(Nexmark::auctions(events)),
                bids: source(Nexmark::bids(events)),
            },
        )
    }

    /// Adds the query over `tables` (the generator's, or replays of their batches) to `job`,
    /// reading only the tables it needs.
    pub fn on(self, job: &Job, tables: &Tables) -> Stream {
        let read = |table: &(Descriptor, Arc<dyn Source>)| job.source(table.clone());
        match self {
            Query::Q3 => {
                let auctions = read(&tables.auctions)
                    .where_("category", CmpOp::Eq, 10)
                    .key_by("seller");
                let persons = read(&tables.persons)
                    .map_batches("q3: state in (or, id, ca)", q3_states)
                    .key_by("id");
                auctions
                    .join(&persons)
                    .select(["name", "city", "state", "id"])
            }
            Query::Q4 => {
                let auctions = read(&tables.auctions).key_by("id");
                let bids = read(&tables.bids).key_by("auction");
                auctions
                    .join(&bids)
                    .map_batches("q4: bids while the auction is open", q4_open_bids)
                    .key_by(["id", "category"])
                    .aggregate(vec![Agg::max("price").alias("final")])
                    .key_by("category")
                    .aggregate(vec![Agg::mean("final").alias("final")])
            }
            Query::Q8 => {
                let persons = read(&tables.persons)
                    .event_time("date_time", Duration::ZERO)
                    .key_by("id");
                let auctions = read(&tables.auctions)
                    .event_time("date_time", Duration::ZERO)
                    .key_by("seller");
                persons
                    .window_join(
                        &auctions,
                        Tumbling::of(Duration::from_secs(10)),
                        JoinKind::LeftSemi,
                    )
                    .select(["id", "name", "window_start"])
            }
            Query::Q0 => read(&tables.bids),
            Query::Q1 => read(&tables.bids).map_batches("q1: price in euros", q1),
            Query::Q2 => read(&tables.bids).map_batches("q2: auction % 123 = 0", q2),
            Query::Q5 => {
                // The generator emits each worker's bids in event-time order.
                let counts = read(&tables.bids)
                    .event_time("date_time", Duration::ZERO)
                    .select(["auction", "date_time"])
                    .key_by("auction")
                    .window(Sliding::of(Duration::from_secs(10)).every(Duration::from_secs(2)))
                    .aggregate(vec![Agg::count().alias("num")]);
                arg_max_per_window(&counts, "num", "q5: most bids per window")
            }
            Query::Q7 => {
                let bids = read(&tables.bids)
                    .event_time("date_time", Duration::ZERO)
                    .map_batches("q7: 10 s window of each bid", q7_window_end);
                arg_max_per_window(&bids, "price", "q7: highest bid per window")
            }
        }
    }
}

/// The joined (auction, bid) rows whose bid came while the auction was open:
/// `auction.date_time <= bid.date_time <= auction.expires`.
fn q4_open_bids(joined: RecordBatch) -> Result<RecordBatch, ArrowError> {
    use arrow::compute::kernels::cmp::lt_eq;
    let bid_time = column(&joined, "right_date_time")?;
    let opened = lt_eq(column(&joined, "date_time")?, bid_time)?;
    let not_expired = lt_eq(bid_time, column(&joined, "expires")?)?;
    filter_record_batch(&joined, &arrow::compute::and(&opened, &not_expired)?)
}

/// The persons of Oregon, Idaho and California. The generator writes states in lower case
/// (`or`), where Flink's writes `OR`.
fn q3_states(persons: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let state = column(&persons, "state")?;
    let mut keep = eq(state, &arrow::array::StringArray::new_scalar("or"))?;
    for other in ["id", "ca"] {
        let here = eq(state, &arrow::array::StringArray::new_scalar(other))?;
        keep = arrow::compute::or(&keep, &here)?;
    }
    filter_record_batch(&persons, &keep)
}

/// The tables of Nexmark, each as a source: the generator's, or replays of its batches.
#[derive(Clone)]
pub struct Tables {
    /// People.
    pub persons: (Descriptor, Arc<dyn Source>),
    /// Auctions.
    pub auctions: (Descriptor, Arc<dyn Source>),
    /// Bids.
    pub bids: (Descriptor, Arc<dyn Source>),
}

/// Per `window_end`, the rows with the greatest `by`.
fn arg_max_per_window(stream: &Stream, by: &str, name: &str) -> Stream {
    let op = WindowArgMax::new("window_end", by);
    stream.key_by("window_end").stream().operator(
        name,
        OperatorDecl {
            descriptor: op.descriptor(),
            op: Arc::new(op),
            combiner: None,
            parallelism: Parallelism::Workers,
        },
    )
}

/// `auction, price, bidder, date_time` of each bid, with the end of its 10-second tumbling
/// window: `window_end`.
pub fn q7_window_end(bids: RecordBatch) -> Result<RecordBatch, ArrowError> {
    const WINDOW_MS: i64 = 10_000;
    let time = column(&bids, "date_time")?;
    let millis = cast(time, &DataType::Int64)?;
    let ends: arrow::array::TimestampMillisecondArray = millis
        .as_primitive::<arrow::datatypes::Int64Type>()
        .unary(|t| t - t.rem_euclid(WINDOW_MS) + WINDOW_MS);
    let keep = |name: &str| kept(&bids, name);
    let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = [
        keep("auction")?,
        keep("price")?,
        keep("bidder")?,
        keep("date_time")?,
        (
            Field::new("window_end", ends.data_type().clone(), false),
            Arc::new(ends) as ArrayRef,
        ),
    ]
    .into_iter()
    .unzip();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Column `name` of `batch`, with its field, to build a batch that keeps it.
fn kept(batch: &RecordBatch, name: &str) -> Result<(Field, ArrayRef), ArrowError> {
    Ok((
        batch.schema().field_with_name(name)?.clone(),
        Arc::clone(column(batch, name)?),
    ))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, ArrowError> {
    Ok(batch.column(batch.schema().index_of(name)?))
}

/// `SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid`.
pub fn q1(bids: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let price = cast(column(&bids, "price")?, &DataType::Float64)?;
    let euros: Float64Array = price
        .as_primitive::<arrow::datatypes::Float64Type>()
        .unary(|p| 0.908 * p);
    let keep = |name: &str| kept(&bids, name);
    let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = [
        keep("auction")?,
        keep("bidder")?,
        (
            Field::new("price", DataType::Float64, false),
            Arc::new(euros) as ArrayRef,
        ),
        keep("date_time")?,
        keep("extra")?,
    ]
    .into_iter()
    .unzip();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// `SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0`.
pub fn q2(bids: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let auction = column(&bids, "auction")?;
    let divisor = Int64Array::new_scalar(123);
    let zero = Int64Array::new_scalar(0);
    let keep = eq(&rem(auction, &divisor)?, &zero)?;
    let selected = bids.project(&[
        bids.schema().index_of("auction")?,
        bids.schema().index_of("price")?,
    ])?;
    filter_record_batch(&selected, &keep)
}
