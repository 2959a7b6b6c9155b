//! The PostgreSQL sink: rows written with batched `COPY`, optionally as an upsert by key.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use serde_json::json;
use streamrun_engine::{DeadLetter, Descriptor, Error, Result, Sink, SinkWriter, WorkerContext};

use crate::messages::Reconnect;

/// How long the server may be away before the sink fails (default).
const DEFAULT_RECONNECT: Duration = Duration::from_secs(30);

/// The builder of PostgreSQL sinks.
///
/// ```no_run
/// use streamrun_connectors::Postgres;
///
/// // Upsert the rows into `totals`, keyed by `host`: a row replaces the one of its key.
/// let sink = Postgres::sink("host=127.0.0.1 user=etl password=secret dbname=analytics", "totals")
///     .upsert(["host"])
///     .create_table(true);
/// # let _ = sink;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Postgres;

impl Postgres {
    /// A sink writing rows into `table` of the database `connection` names (a libpq
    /// connection string, `host=… user=… dbname=…`, or a `postgresql://` URL). Columns are
    /// matched by name.
    pub fn sink(connection: impl Into<String>, table: impl Into<String>) -> PostgresSink {
        PostgresSink {
            connection: connection.into(),
            table: table.into(),
            key: Vec::new(),
            create_table: false,
            batch_rows: 10_000,
            reconnect_for: DEFAULT_RECONNECT,
            dead_letters: None,
        }
    }
}

/// A PostgreSQL sink; made by [`Postgres::sink`].
///
/// Each worker keeps up to [`PostgresSink::batch_rows`] rows, then writes them in one
/// transaction with `COPY … FROM STDIN (FORMAT csv)`. With [`PostgresSink::upsert`] the rows
/// are copied into a temporary table, then inserted with `ON CONFLICT (key) DO UPDATE`; of
/// several rows with one key in a flush, the last wins. Writing the same rows again then
/// leaves the table as it was (idempotent).
///
/// **Delivery:** a flush is one transaction. A flush that fails with the connection is
/// written again on a new connection, trying for [`PostgresSink::reconnect_for`] (30 s by
/// default), then the job fails naming the table. Should the connection fail after the
/// server committed, the rows are there twice in plain mode (at least once) and once with an
/// upsert.
///
/// **Rows the database refuses** (a value too long, a null in a `NOT NULL` column, a broken
/// constraint) fail the job, naming the table and the server's reason; with
/// [`PostgresSink::dead_letters`] the flush is written again row by row, each refused row
/// going to the dead-letter sink with the reason, and the others to the table.
#[derive(Clone)]
pub struct PostgresSink {
    connection: String,
    table: String,
    key: Vec<String>,
    create_table: bool,
    batch_rows: usize,
    reconnect_for: Duration,
    dead_letters: Option<Arc<dyn Sink>>,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("table", &self.table)
            .field("key", &self.key)
            .field("batch_rows", &self.batch_rows)
            .finish_non_exhaustive()
    }
}

impl PostgresSink {
    /// Writes as an upsert keyed by these columns (the table needs a unique index or a
    /// primary key on them; [`PostgresSink::create_table`] makes it the primary key).
    pub fn upsert<S: Into<String>>(mut self, key: impl IntoIterator<Item = S>) -> Self {
        self.key = key.into_iter().map(Into::into).collect();
        self
    }

    /// Creates the table when missing, with a column per field (default `false`).
    pub fn create_table(mut self, create: bool) -> Self {
        self.create_table = create;
        self
    }

    /// The most rows a worker keeps before writing them (default 10,000).
    pub fn batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = rows;
        self
    }

    /// How long a lost connection is tried again before failing (default 30 s).
    pub fn reconnect_for(mut self, budget: Duration) -> Self {
        self.reconnect_for = budget;
        self
    }

    /// Sends the rows the database refuses to `sink`, as batches of
    /// [`DeadLetter::schema`], instead of failing the job.
    pub fn dead_letters(mut self, sink: Arc<dyn Sink>) -> Self {
        self.dead_letters = Some(sink);
        self
    }

    /// The descriptor of this sink for the job's plan: kind `postgres.table` (without the
    /// connection string, which may hold a password).
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "postgres.table",
            json!({
                "table": self.table,
                "upsert_key": self.key,
                "batch_rows": self.batch_rows,
                "create_table": self.create_table,
            }),
        )
    }
}

impl Sink for PostgresSink {
    fn open(&self, ctx: &WorkerContext, schema: &SchemaRef) -> Result<Box<dyn SinkWriter>> {
        if self.batch_rows == 0 {
            return Err(Error::Plan(format!(
                "the PostgreSQL sink of table '{}' has batch_rows 0: it must be at least 1",
                self.table
            )));
        }
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        for key in &self.key {
            if !columns.contains(key) {
                return Err(Error::Plan(format!(
                    "the upsert key '{key}' of table '{}' is not a column (columns: {})",
                    self.table,
                    columns.join(", ")
                )));
            }
        }
        let mut config: postgres::Config = self.connection.parse().map_err(|e| {
            Error::Plan(format!(
                "the PostgreSQL sink of table '{}': invalid connection string: {e}",
                self.table
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A connection that goes quiet is found dead in about 30 s rather than never.
        config.keepalives_idle(Duration::from_secs(15));
        config.tcp_user_timeout(Duration::from_secs(30));
        let mut writer = PostgresWriter {
            config,
            sink: self.clone(),
            schema: schema.clone(),
            client: None,
            reconnect: Reconnect::new(self.reconnect_for),
            pending: Vec::new(),
            rows: 0,
            dead: None,
            ctx: ctx.clone(),
        };
        if self.create_table {
            // Every worker, under one lock: none writes before the table is there, and
            // concurrent `CREATE TABLE IF NOT EXISTS` do not collide.
            let ddl = format!(
                "BEGIN; SELECT pg_advisory_xact_lock(hashtext({})); {}; COMMIT",
                quote_literal(&self.table),
                create_table_sql(&self.table, schema, &self.key)?
            );
            writer.with_client(|c| Ok(c.batch_execute(&ddl)?))?;
        }
        Ok(Box::new(writer))
    }
}

struct PostgresWriter {
    config: postgres::Config,
    sink: PostgresSink,
    schema: SchemaRef,
    client: Option<postgres::Client>,
    reconnect: Reconnect,
    pending: Vec<RecordBatch>,
    rows: usize,
    dead: Option<Box<dyn SinkWriter>>,
    ctx: WorkerContext,
}

/// The staging table of an upsert, one per connection.
const STAGE: &str = "streamrun_stage";
/// Its column giving the rows' order.
const ORDER: &str = "streamrun_row";

impl PostgresWriter {
    fn what(&self) -> String {
        format!("writing to table '{}'", self.sink.table)
    }

    /// Runs `op` with a connection, opening one when needed; a lost connection is opened
    /// again (and `op` run again) within the budget.
    fn with_client<T>(
        &mut self,
        mut op: impl FnMut(&mut postgres::Client) -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        loop {
            let result = match self.client.as_mut() {
                Some(c) => op(c),
                None => match self.config.connect(postgres::NoTls) {
                    Ok(mut c) => {
                        let result = op(&mut c);
                        self.client = Some(c);
                        result
                    }
                    Err(e) => Err(Failure::Pg(e)),
                },
            };
            match result {
                Ok(value) => {
                    self.reconnect.ok();
                    return Ok(value);
                }
                Err(e) if is_connection_error(&e, self.client.as_ref()) => {
                    self.client = None;
                    if !self.reconnect.retry() {
                        // An I/O error, not `Input`: the rows were not refused, and do not
                        // go to the dead letters.
                        return Err(Error::io(
                            self.what(),
                            std::io::Error::new(
                                std::io::ErrorKind::NotConnected,
                                format!(
                                    "the server is unreachable for {:?}: {}",
                                    self.reconnect.budget(),
                                    message(&e)
                                ),
                            ),
                        ));
                    }
                    tracing::warn!("{}: {}; connecting again", self.what(), message(&e));
                }
                Err(e) => return Err(Error::Input(format!("{}: {}", self.what(), message(&e)))),
            }
        }
    }

    /// Writes the rows kept so far, in one transaction (or, when the database refuses some
    /// and there is a dead-letter sink, one row at a time).
    fn write_pending(&mut self) -> Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.pending);
        self.rows = 0;
        let csv = to_csv(&self.schema, &batches)?;
        match self.write_rows(&csv) {
            Err(Error::Input(reason)) if self.sink.dead_letters.is_some() => {
                tracing::warn!("{reason}; writing the rows one by one");
                self.write_one_by_one(&batches)
            }
            other => other,
        }
    }

    /// Writes CSV rows in one transaction.
    fn write_rows(&mut self, csv: &[u8]) -> Result<()> {
        let columns = column_list(&self.schema);
        let table = quote_ident(&self.sink.table);
        let key = self.sink.key.clone();
        let upsert = !key.is_empty();
        let target = if upsert {
            STAGE.to_string()
        } else {
            table.clone()
        };
        let copy = format!("COPY {target} ({columns}) FROM STDIN (FORMAT csv)");
        let merge = upsert.then(|| upsert_sql(&self.schema, &self.sink.table, &key));
        // The staging table of an upsert lives as long as its connection (which may be new).
        let stage = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {STAGE} AS SELECT {columns} FROM {table} WITH NO DATA; \
             ALTER TABLE {STAGE} ADD COLUMN IF NOT EXISTS {ORDER} bigserial; \
             TRUNCATE {STAGE}"
        );
        self.with_client(|c| {
            let mut tx = c.transaction()?;
            if upsert {
                tx.batch_execute(&stage)?;
            }
            let mut writer = tx.copy_in(copy.as_str())?;
            std::io::Write::write_all(&mut writer, csv).map_err(Failure::Io)?;
            writer.finish()?;
            if let Some(merge) = &merge {
                tx.batch_execute(merge)?;
            }
            Ok(tx.commit()?)
        })
    }

    /// Writes the rows one at a time, each in its own savepoint, sending the refused ones
    /// to the dead letters.
    fn write_one_by_one(&mut self, batches: &[RecordBatch]) -> Result<()> {
        let mut letters = Vec::new();
        for batch in batches {
            for row in 0..batch.num_rows() {
                let one = batch.slice(row, 1);
                let csv = to_csv(&self.schema, std::slice::from_ref(&one))?;
                match self.write_rows(&csv) {
                    Ok(()) => {}
                    Err(Error::Input(reason)) => letters.push(DeadLetter {
                        location: format!("table '{}'", self.sink.table),
                        reason,
                        record: String::from_utf8_lossy(&csv).trim_end().to_string(),
                    }),
                    Err(e) => return Err(e),
                }
            }
        }
        if letters.is_empty() {
            return Ok(());
        }
        let Some(sink) = self.sink.dead_letters.clone() else {
            return Err(Error::Internal("dead letters without a sink".into()));
        };
        if self.dead.is_none() {
            self.dead = Some(sink.open(&self.ctx, &DeadLetter::schema())?);
        }
        let batch = DeadLetter::to_batch(&format!("postgres:{}", self.sink.table), &letters)?;
        match self.dead.as_mut() {
            Some(dead) => dead.write(&batch),
            None => Ok(()),
        }
    }
}

impl SinkWriter for PostgresWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows();
        self.pending.push(batch.clone());
        if self.rows >= self.sink.batch_rows {
            self.write_pending()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.write_pending()
    }

    fn finish(&mut self) -> Result<()> {
        self.write_pending()?;
        if let Some(dead) = self.dead.as_mut() {
            dead.finish()?;
        }
        Ok(())
    }
}

/// Whether an error is the connection's (try again) rather than the database's answer.
fn is_connection_error(e: &Failure, client: Option<&postgres::Client>) -> bool {
    let e = match e {
        Failure::Io(_) => return true,
        Failure::Pg(e) => e,
    };
    if client.is_some_and(postgres::Client::is_closed) || client.is_none() {
        return e.as_db_error().is_none_or(|db| {
            // The server shutting down or ending this session.
            db.code().code().starts_with("57P")
        });
    }
    match e.as_db_error() {
        Some(db) => db.code().code().starts_with("57P") || db.code().code().starts_with("08"),
        None => e.is_closed() || e.to_string().contains("connection"),
    }
}

/// The server's message with its detail, or the client's error.
fn message(e: &Failure) -> String {
    let e = match e {
        Failure::Io(e) => return e.to_string(),
        Failure::Pg(e) => e,
    };
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// Why an operation failed: the database's or client's error, or the COPY stream's (which
/// fails only with the connection).
enum Failure {
    Pg(postgres::Error),
    Io(std::io::Error),
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

/// The rows as PostgreSQL CSV without a header: a null is an empty field, every other value
/// is quoted (so an empty string, or a text `\N`, stays a value).
fn to_csv(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    use std::fmt::Write as _;
    let options = arrow::util::display::FormatOptions::default();
    let mut out = Vec::new();
    let mut value = String::new();
    for batch in batches {
        if batch.schema().fields() != schema.fields() {
            return Err(Error::Internal(
                "a batch of another schema reached the PostgreSQL sink".into(),
            ));
        }
        let formatters = batch
            .columns()
            .iter()
            .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::arrow("encoding rows for COPY", e))?;
        for row in 0..batch.num_rows() {
            for (i, (column, format)) in batch.columns().iter().zip(&formatters).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if column.is_null(row) {
                    continue;
                }
                value.clear();
                write!(value, "{}", format.value(row))
                    .map_err(|e| Error::Internal(format!("formatting a value for COPY: {e}")))?;
                out.push(b'"');
                for b in value.bytes() {
                    if b == b'"' {
                        out.push(b'"');
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
            out.push(b'\n');
        }
    }
    Ok(out)
}

/// A string literal quoted for SQL.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// An identifier quoted for SQL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn column_list(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| quote_ident(f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statement moving the staged rows into the table: the last row of each key wins.
fn upsert_sql(schema: &SchemaRef, table: &str, key: &[String]) -> String {
    let columns = column_list(schema);
    let keys = key
        .iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ");
    let updates: Vec<String> = schema
        .fields()
        .iter()
        .filter(|f| !key.contains(f.name()))
        .map(|f| format!("{0} = EXCLUDED.{0}", quote_ident(f.name())))
        .collect();
    let action = if updates.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {table} ({columns}) \
         SELECT DISTINCT ON ({keys}) {columns} FROM {STAGE} ORDER BY {keys}, {ORDER} DESC \
         ON CONFLICT ({keys}) DO {action}",
        table = quote_ident(table)
    )
}

/// `CREATE TABLE IF NOT EXISTS` for the schema, with the key as primary key.
fn create_table_sql(table: &str, schema: &SchemaRef, key: &[String]) -> Result<String> {
    let mut columns = Vec::new();
    for field in schema.fields() {
        let kind = match field.data_type() {
            DataType::Boolean => "boolean",
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
            DataType::Int32 | DataType::UInt16 => "integer",
            DataType::Int64 | DataType::UInt32 => "bigint",
            DataType::UInt64 | DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => "numeric",
            DataType::Float16 | DataType::Float32 => "real",
            DataType::Float64 => "double precision",
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
            DataType::Date32 | DataType::Date64 => "date",
            DataType::Timestamp(_, None) => "timestamp",
            DataType::Timestamp(_, Some(_)) => "timestamptz",
            DataType::Time32(_)
            | DataType::Time64(TimeUnit::Microsecond | TimeUnit::Nanosecond) => "time",
            other => {
                return Err(Error::Plan(format!(
                    "table '{table}': column '{}' of type {other} has no PostgreSQL type here",
                    field.name()
                )));
            }
        };
        let null = if field.is_nullable() { "" } else { " NOT NULL" };
        columns.push(format!("{} {kind}{null}", quote_ident(field.name())));
    }
    if !key.is_empty() {
        columns.push(format!(
            "PRIMARY KEY ({})",
            key.iter()
                .map(|k| quote_ident(k))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        quote_ident(table),
        columns.join(", ")
    ))
}
