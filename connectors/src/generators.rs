//! The Nexmark generator as a source: persons, auctions and bids as Arrow batches with their
//! event time, split across workers.
//!
//! Nexmark models an online auction: people register, open auctions and bid on them. Its
//! generator (the `nexmark` crate) is deterministic given its configuration, so every run with
//! the same event count and base time sees the same events. A source reads one event type
//! among the first `events` events of the whole stream; worker `i` of `W` takes that type's
//! events `i, i + W, i + 2W, …`, so the union of the workers' shares is exactly those events.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use nexmark::EventGenerator;
use nexmark::config::NexmarkConfig;
use nexmark::event::{Event, EventType};
use streamrun_engine::{
    Descriptor, Error, Result, Source, SourceCollector, SourceReader, WorkerContext,
};

/// The base time used unless one is given: 2024-01-01T00:00:00Z, in milliseconds. A fixed
/// default keeps runs reproducible; the generator's own default is the wall clock.
pub const DEFAULT_BASE_TIME_MS: u64 = 1_704_067_200_000;

/// Which Nexmark table a source produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NexmarkTable {
    /// `id, name, email_address, credit_card, city, state, date_time, extra`.
    Person,
    /// `id, item_name, description, initial_bid, reserve, date_time, expires, seller,
    /// category, extra`.
    Auction,
    /// `auction, bidder, price, channel, url, date_time, extra`.
    Bid,
}

impl NexmarkTable {
    fn event_type(self) -> EventType {
        match self {
            NexmarkTable::Person => EventType::Person,
            NexmarkTable::Auction => EventType::Auction,
            NexmarkTable::Bid => EventType::Bid,
        }
    }

    fn name(self) -> &'static str {
        match self {
            NexmarkTable::Person => "person",
            NexmarkTable::Auction => "auction",
            NexmarkTable::Bid => "bid",
        }
    }

    /// The table's Arrow schema; `date_time` (and `expires`) are millisecond timestamps.
    pub fn schema(self) -> SchemaRef {
        let int = |name: &str| Field::new(name, DataType::Int64, false);
        let text = |name: &str| Field::new(name, DataType::Utf8, false);
        let time = |name: &str| {
            Field::new(
                name,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            )
        };
        Arc::new(Schema::new(match self {
            NexmarkTable::Person => vec![
                int("id"),
                text("name"),
                text("email_address"),
                text("credit_card"),
                text("city"),
                text("state"),
                time("date_time"),
                text("extra"),
            ],
            NexmarkTable::Auction => vec![
                int("id"),
                text("item_name"),
                text("description"),
                int("initial_bid"),
                int("reserve"),
                time("date_time"),
                time("expires"),
                int("seller"),
                int("category"),
                text("extra"),
            ],
            NexmarkTable::Bid => vec![
                int("auction"),
                int("bidder"),
                int("price"),
                text("channel"),
                text("url"),
                time("date_time"),
                text("extra"),
            ],
        }))
    }
}

/// A Nexmark source of one table among the first `events` events.
#[derive(Debug, Clone)]
pub struct Nexmark {
    table: NexmarkTable,
    events: u64,
    base_time: u64,
    batch_size: usize,
}

impl Nexmark {
    fn new(table: NexmarkTable, events: u64) -> Self {
        Nexmark {
            table,
            events,
            base_time: DEFAULT_BASE_TIME_MS,
            batch_size: 8192,
        }
    }

    /// The bids among the first `events` events.
    pub fn bids(events: u64) -> Self {
        Self::new(NexmarkTable::Bid, events)
    }

    /// The auctions among the first `events` events.
    pub fn auctions(events: u64) -> Self {
        Self::new(NexmarkTable::Auction, events)
    }

    /// The persons among the first `events` events.
    pub fn persons(events: u64) -> Self {
        Self::new(NexmarkTable::Person, events)
    }

    /// The generator's base time, in milliseconds since the Unix epoch.
    pub fn base_time(mut self, millis: u64) -> Self {
        self.base_time = millis;
        self
    }

    /// Rows per batch (default 8192).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows;
        self
    }

    /// The table it produces.
    pub fn table(&self) -> NexmarkTable {
        self.table
    }

    /// The generator configuration: the crate's defaults with the fixed base time.
    pub fn config(&self) -> NexmarkConfig {
        NexmarkConfig {
            base_time: self.base_time,
            ..NexmarkConfig::default()
        }
    }

    /// A generator of this table's events over the whole stream (offset 0, step 1), as a
    /// single-threaded reference for tests.
    pub fn generator(&self) -> EventGenerator {
        EventGenerator::new(self.config()).with_type_filter(self.table.event_type())
    }

    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            format!("nexmark.{}", self.table.name()),
            serde_json::json!({
                "events": self.events,
                "base_time": self.base_time,
                "batch_size": self.batch_size,
            }),
        )
    }
}

impl Source for Nexmark {
    fn schema(&self) -> Result<SchemaRef> {
        if self.batch_size == 0 {
            return Err(Error::Plan("nexmark: batch_size must be at least 1".into()));
        }
        Ok(self.table.schema())
    }

    fn open(&self, ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
        let generator = EventGenerator::new(self.config())
            .with_type_filter(self.table.event_type())
            .with_offset(ctx.index as u64)
            .with_step(ctx.workers.max(1) as u64);
        Ok(Box::new(NexmarkReader {
            table: self.table,
            generator,
            events: self.events,
            batch_size: self.batch_size.max(1),
        }))
    }
}

struct NexmarkReader {
    table: NexmarkTable,
    generator: EventGenerator,
    events: u64,
    batch_size: usize,
}

fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn int(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl SourceReader for NexmarkReader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        let mut events = Vec::with_capacity(self.batch_size);
        while events.len() < self.batch_size && self.generator.global_offset() < self.events {
            match self.generator.next() {
                Some(event) => events.push(event),
                None => break,
            }
        }
        let more = self.generator.global_offset() < self.events;
        if events.is_empty() {
            return Ok(more);
        }
        let n = events.len();
        let mut bytes = 0u64;
        let columns: Vec<ArrayRef> = match self.table {
            NexmarkTable::Bid => {
                let (mut auction, mut bidder, mut price) = (
                    Int64Builder::with_capacity(n),
                    Int64Builder::with_capacity(n),
                    Int64Builder::with_capacity(n),
                );
                let (mut channel, mut url, mut extra) = (
                    StringBuilder::new(),
                    StringBuilder::new(),
                    StringBuilder::new(),
                );
                let mut time = TimestampMillisecondBuilder::with_capacity(n);
                for event in &events {
                    if let Event::Bid(b) = event {
                        auction.append_value(int(b.auction));
                        bidder.append_value(int(b.bidder));
                        price.append_value(int(b.price));
                        channel.append_value(&b.channel);
                        url.append_value(&b.url);
                        time.append_value(ms(b.date_time));
                        extra.append_value(&b.extra);
                        bytes += (32 + b.channel.len() + b.url.len() + b.extra.len()) as u64;
                    }
                }
                vec![
                    Arc::new(auction.finish()),
                    Arc::new(bidder.finish()),
                    Arc::new(price.finish()),
                    Arc::new(channel.finish()),
                    Arc::new(url.finish()),
                    Arc::new(time.finish()),
                    Arc::new(extra.finish()),
                ]
            }
            NexmarkTable::Auction => {
                let mut id = Int64Builder::with_capacity(n);
                let (mut item, mut description, mut extra) = (
                    StringBuilder::new(),
                    StringBuilder::new(),
                    StringBuilder::new(),
                );
                let (mut initial, mut reserve) = (
                    Int64Builder::with_capacity(n),
                    Int64Builder::with_capacity(n),
                );
                let (mut time, mut expires) = (
                    TimestampMillisecondBuilder::with_capacity(n),
                    TimestampMillisecondBuilder::with_capacity(n),
                );
                let (mut seller, mut category) = (
                    Int64Builder::with_capacity(n),
                    Int64Builder::with_capacity(n),
                );
                for event in &events {
                    if let Event::Auction(a) = event {
                        id.append_value(int(a.id));
                        item.append_value(&a.item_name);
                        description.append_value(&a.description);
                        initial.append_value(int(a.initial_bid));
                        reserve.append_value(int(a.reserve));
                        time.append_value(ms(a.date_time));
                        expires.append_value(ms(a.expires));
                        seller.append_value(int(a.seller));
                        category.append_value(int(a.category));
                        extra.append_value(&a.extra);
                        bytes +=
                            (56 + a.item_name.len() + a.description.len() + a.extra.len()) as u64;
                    }
                }
                vec![
                    Arc::new(id.finish()),
                    Arc::new(item.finish()),
                    Arc::new(description.finish()),
                    Arc::new(initial.finish()),
                    Arc::new(reserve.finish()),
                    Arc::new(time.finish()),
                    Arc::new(expires.finish()),
                    Arc::new(seller.finish()),
                    Arc::new(category.finish()),
                    Arc::new(extra.finish()),
                ]
            }
            NexmarkTable::Person => {
                let mut id = Int64Builder::with_capacity(n);
                let mut text: Vec<StringBuilder> = (0..6).map(|_| StringBuilder::new()).collect();
                let mut time = TimestampMillisecondBuilder::with_capacity(n);
                for event in &events {
                    if let Event::Person(p) = event {
                        id.append_value(int(p.id));
                        let fields = [&p.name, &p.email_address, &p.credit_card, &p.city, &p.state];
                        for (builder, value) in text.iter_mut().zip(fields) {
                            builder.append_value(value);
                            bytes += value.len() as u64;
                        }
                        time.append_value(ms(p.date_time));
                        text[5].append_value(&p.extra);
                        bytes += (16 + p.extra.len()) as u64;
                    }
                }
                let mut text = text
                    .into_iter()
                    .map(|mut b| Arc::new(b.finish()) as ArrayRef);
                let mut next = || {
                    text.next()
                        .ok_or_else(|| Error::Internal("person columns".into()))
                };
                vec![
                    Arc::new(id.finish()),
                    next()?,
                    next()?,
                    next()?,
                    next()?,
                    next()?,
                    Arc::new(time.finish()),
                    next()?,
                ]
            }
        };
        let batch = RecordBatch::try_new(self.table.schema(), columns)
            .map_err(|e| Error::arrow(format!("nexmark {}", self.table.name()), e))?;
        out.emit(batch, bytes);
        Ok(more)
    }
}
