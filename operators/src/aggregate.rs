//! Keyed aggregates (`count`, `sum`, `min`, `max`, `mean`) in three phases.
//!
//! A keyed aggregate runs as a *partial* aggregate before the hash exchange (on each worker,
//! over whatever keys it reads) and a *final* aggregate after it (each key on one worker), so
//! that only one row per key and worker crosses the exchange. The partial phase flushes when it
//! holds more than `max_partial_groups` keys, which bounds its memory; that is always correct
//! because the final phase merges any number of partial rows per key.

use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    Collector, Descriptor, Error, Operator, OperatorFactory, Result, WorkerContext, column_indices,
};

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggFn {
    /// Number of rows (or of non-null values of a column).
    Count,
    /// Sum of a numeric column; null when it had no values.
    Sum,
    /// Least value of a numeric column.
    Min,
    /// Greatest value of a numeric column.
    Max,
    /// Arithmetic mean of a numeric column, as Float64.
    Mean,
}

impl AggFn {
    fn name(self) -> &'static str {
        match self {
            AggFn::Count => "count",
            AggFn::Sum => "sum",
            AggFn::Min => "min",
            AggFn::Max => "max",
            AggFn::Mean => "mean",
        }
    }
}

/// One aggregate of a keyed aggregation: a function, its column and its output name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    /// The function.
    #[serde(rename = "fn")]
    pub func: AggFn,
    /// The column it reads (`None` for a row count).
    #[serde(default)]
    pub column: Option<String>,
    /// The output column's name.
    #[serde(rename = "as")]
    pub output: String,
}

impl Agg {
    fn of(func: AggFn, column: &str) -> Self {
        Agg {
            func,
            column: Some(column.to_owned()),
            output: format!("{}_{column}", func.name()),
        }
    }
    /// Rows per key, as `count`.
    pub fn count() -> Self {
        Agg {
            func: AggFn::Count,
            column: None,
            output: "count".to_owned(),
        }
    }
    /// Sum of `column`, as `sum_<column>`.
    pub fn sum(column: &str) -> Self {
        Self::of(AggFn::Sum, column)
    }
    /// Least value of `column`, as `min_<column>`.
    pub fn min(column: &str) -> Self {
        Self::of(AggFn::Min, column)
    }
    /// Greatest value of `column`, as `max_<column>`.
    pub fn max(column: &str) -> Self {
        Self::of(AggFn::Max, column)
    }
    /// Mean of `column`, as `mean_<column>`.
    pub fn mean(column: &str) -> Self {
        Self::of(AggFn::Mean, column)
    }
    /// Renames the output column.
    pub fn alias(mut self, name: &str) -> Self {
        self.output = name.to_owned();
        self
    }
}

/// Which half of a two-phase aggregation an instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Raw rows in, final values out (no exchange before it, or one worker).
    Complete,
    /// Raw rows in, mergeable partial state out.
    Partial,
    /// Partial state in, final values out.
    Final,
}

/// Default bound on the keys a partial aggregate holds before it flushes.
pub const DEFAULT_MAX_PARTIAL_GROUPS: usize = 1 << 17;

/// Rows per emitted batch.
const OUTPUT_BATCH_ROWS: usize = 8192;

/// A keyed aggregation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// The key columns.
    pub keys: Vec<String>,
    /// The aggregates.
    pub aggs: Vec<Agg>,
    /// The phase.
    pub phase: Phase,
    /// Keys a partial aggregate holds before it flushes.
    #[serde(default = "default_max_partial_groups")]
    pub max_partial_groups: usize,
}

fn default_max_partial_groups() -> usize {
    DEFAULT_MAX_PARTIAL_GROUPS
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Int,
    Float,
}

#[derive(Debug, Clone, Copy)]
enum Kernel {
    CountRows,
    CountValid(usize),
    AddCount(usize),
    Sum(usize, Num),
    Min(usize, Num),
    Max(usize, Num),
    Mean(usize),
    MergeMean { sum: usize, count: usize },
}

fn sum_column(output: &str) -> String {
    format!("{output}__sum")
}
fn count_column(output: &str) -> String {
    format!("{output}__count")
}

impl Aggregate {
    /// A complete aggregation of `aggs` by `keys`.
    pub fn new(keys: Vec<String>, aggs: Vec<Agg>) -> Self {
        Aggregate {
            keys,
            aggs,
            phase: Phase::Complete,
            max_partial_groups: DEFAULT_MAX_PARTIAL_GROUPS,
        }
    }

    /// The same aggregation in `phase`.
    pub fn with_phase(&self, phase: Phase) -> Self {
        Aggregate {
            phase,
            ..self.clone()
        }
    }

    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "aggregate",
            serde_json::json!({
                "keys": self.keys,
                "aggs": self.aggs.iter().map(|a| match &a.column {
                    Some(c) => format!("{}({c}) as {}", a.func.name(), a.output),
                    None => format!("{}(*) as {}", a.func.name(), a.output),
                }).collect::<Vec<_>>(),
                "phase": self.phase,
            }),
        )
    }

    fn numeric(&self, input: &SchemaRef, index: usize, agg: &Agg) -> Result<Num> {
        let field = input.field(index);
        match field.data_type() {
            t if t.is_integer() => Ok(Num::Int),
            t if t.is_floating()
                || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) =>
            {
                Ok(Num::Float)
            }
            t => Err(Error::Plan(format!(
                "{}({}) needs a numeric column, but '{}' is {t}",
                agg.func.name(),
                field.name(),
                field.name()
            ))),
        }
    }

    fn kernels(&self, input: &SchemaRef) -> Result<Vec<Kernel>> {
        if self.keys.is_empty() {
            return Err(Error::Plan(
                "an aggregate needs at least one key column".into(),
            ));
        }
        if self.aggs.is_empty() {
            return Err(Error::Plan(
                "an aggregate needs at least one aggregate".into(),
            ));
        }
        let one = |name: &str| -> Result<usize> {
            Ok(column_indices(input, &[name.to_owned()], "aggregate")?[0])
        };
        self.aggs
            .iter()
            .map(|agg| {
                let raw = || -> Result<usize> {
                    match &agg.column {
                        Some(c) => one(c),
                        None => Err(Error::Plan(format!(
                            "{} needs a column (as '{}')",
                            agg.func.name(),
                            agg.output
                        ))),
                    }
                };
                Ok(match (self.phase, agg.func) {
                    (Phase::Final, AggFn::Count) => AddCount(one(&agg.output)?),
                    (Phase::Final, AggFn::Mean) => MergeMean {
                        sum: one(&sum_column(&agg.output))?,
                        count: one(&count_column(&agg.output))?,
                    },
                    (Phase::Final, f) => {
                        let i = one(&agg.output)?;
                        let num = self.numeric(input, i, agg)?;
                        match f {
                            AggFn::Sum => Sum(i, num),
                            AggFn::Min => Min(i, num),
                            _ => Max(i, num),
                        }
                    }
                    (_, AggFn::Count) => match &agg.column {
                        Some(c) => CountValid(one(c)?),
                        None => CountRows,
                    },
                    (_, AggFn::Mean) => {
                        let i = raw()?;
                        self.numeric(input, i, agg)?;
                        Mean(i)
                    }
                    (_, f) => {
                        let i = raw()?;
                        let num = self.numeric(input, i, agg)?;
                        match f {
                            AggFn::Sum => Sum(i, num),
                            AggFn::Min => Min(i, num),
                            _ => Max(i, num),
                        }
                    }
                })
            })
            .collect()
    }

    fn schema_for(&self, input: &SchemaRef, kernels: &[Kernel]) -> Result<SchemaRef> {
        let key_indices = column_indices(input, &self.keys, "aggregate key")?;
        let mut fields: Vec<Field> = key_indices
            .iter()
            .map(|&i| input.field(i).clone())
            .collect();
        let num_type = |n: Num| match n {
            Num::Int => DataType::Int64,
            Num::Float => DataType::Float64,
        };
        for (agg, kernel) in self.aggs.iter().zip(kernels) {
            match (kernel, self.phase) {
                (CountRows | CountValid(_) | AddCount(_), _) => {
                    fields.push(Field::new(&agg.output, DataType::Int64, false));
                }
                (Sum(_, n) | Min(_, n) | Max(_, n), _) => {
                    fields.push(Field::new(&agg.output, num_type(*n), true));
                }
                (Mean(_), Phase::Partial) => {
                    fields.push(Field::new(
                        sum_column(&agg.output),
                        DataType::Float64,
                        false,
                    ));
                    fields.push(Field::new(
                        count_column(&agg.output),
                        DataType::Int64,
                        false,
                    ));
                }
                (Mean(_) | MergeMean { .. }, _) => {
                    fields.push(Field::new(&agg.output, DataType::Float64, true));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for f in &fields {
            if !seen.insert(f.name().clone()) {
                return Err(Error::Plan(format!(
                    "aggregate output has two columns named '{}': rename one with an alias",
                    f.name()
                )));
            }
        }
        Ok(Arc::new(Schema::new(fields)))
    }
}

use Kernel::*;

impl OperatorFactory for Aggregate {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let kernels = self.kernels(input)?;
        self.schema_for(input, &kernels)
    }

    fn create(&self, _ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let kernels = self.kernels(input)?;
        // Counts need one slot; the others a value and a count.
        let mut next = 0;
        let slots: Vec<Slots> = kernels
            .iter()
            .map(|k| {
                let s = match k {
                    CountRows | CountValid(_) | AddCount(_) => Slots {
                        value: next,
                        count: next,
                    },
                    _ => Slots {
                        value: next,
                        count: next + 1,
                    },
                };
                next = s.count + 1;
                s
            })
            .collect();
        let schema = self.schema_for(input, &kernels)?;
        let key_indices = column_indices(input, &self.keys, "aggregate key")?;
        let key_types: Vec<DataType> = key_indices
            .iter()
            .map(|&i| input.field(i).data_type().clone())
            .collect();
        Ok(Box::new(AggregateInstance {
            phase: self.phase,
            max_groups: if self.phase == Phase::Partial {
                self.max_partial_groups.max(1)
            } else {
                usize::MAX
            },
            key_indices,
            width: slots
                .iter()
                .map(|s| s.value.max(s.count) + 1)
                .max()
                .unwrap_or(0),
            kernels: kernels.into_iter().zip(slots).collect(),
            state: Vec::new(),
            schema,
            groups: Groups {
                store: KeyStore::new(&key_types)?,
                table: HashTable::new(),
                text: HashTable::new(),
                count: 0,
                null_group: None,
                state: foldhash::fast::FixedState::with_seed(0x6a09_e667),
            },
            ids: Vec::new(),
        }))
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

/// Where a kernel keeps its state in a group's row of [`AggregateInstance::state`]: a value
/// (an i64, or an f64's bits) and a count of the values seen.
#[derive(Debug, Clone, Copy)]
struct Slots {
    value: usize,
    count: usize,
}

/// How the keys of the groups are stored and compared. One integer key and one text key,
/// the common cases, are compared as values; any other key goes through Arrow's row format.
enum KeyStore {
    /// One integer key column (of a type that fits an i64), stored as i64.
    Int {
        data_type: DataType,
        values: Vec<i64>,
    },
    /// One Utf8 key column: the bytes of every key, one after the other.
    Utf8 { offsets: Vec<usize>, bytes: Vec<u8> },
    /// Anything else, in Arrow's row format.
    Rows { converter: RowConverter, rows: Rows },
}

impl KeyStore {
    fn new(types: &[DataType]) -> Result<Self> {
        Ok(match types {
            [
                t @ (DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32),
            ] => KeyStore::Int {
                data_type: t.clone(),
                values: Vec::new(),
            },
            [DataType::Utf8] => KeyStore::Utf8 {
                offsets: vec![0],
                bytes: Vec::new(),
            },
            _ => {
                let fields = types.iter().map(|t| SortField::new(t.clone())).collect();
                let converter =
                    RowConverter::new(fields).map_err(|e| Error::arrow("aggregate keys", e))?;
                let rows = converter.empty_rows(1024, 16 * 1024);
                KeyStore::Rows { converter, rows }
            }
        })
    }
}

/// The groups of an aggregate. The hash table holds `(tag, group)`: for an integer key the tag
/// is the key itself, so a probe compares in place; for other keys it is the key's hash, which
/// rejects most mismatches before the stored key is read.
struct Groups {
    store: KeyStore,
    table: HashTable<(u64, u32)>,
    /// The table of the Utf8 store, whose entries hold enough of the key to compare most
    /// words without reading the stored bytes.
    text: HashTable<TextEntry>,
    /// How many groups there are.
    count: usize,
    /// The group of the null key, for the single-column stores.
    null_group: Option<u32>,
    state: foldhash::fast::FixedState,
}

/// An entry of the Utf8 store's table: the key's hash, its first eight bytes, and where the
/// whole key is stored. Keys of up to eight bytes compare within the entry.
#[derive(Debug, Clone, Copy)]
struct TextEntry {
    hash: u64,
    head: u64,
    start: usize,
    len: usize,
    group: u32,
}

/// The first eight bytes of a key, zero-padded, as one integer.
#[inline]
fn head(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_le_bytes(b)
}

/// Byte equality that compares short keys (most words) inline instead of calling `memcmp`.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() <= 16 {
        a.iter().zip(b).all(|(x, y)| x == y)
    } else {
        a == b
    }
}

impl Groups {
    fn len(&self) -> usize {
        self.count
    }

    /// The id the next group gets.
    fn next_id(count: &mut usize) -> Result<u32> {
        let g = u32::try_from(*count)
            .map_err(|_| Error::Internal("more than 4 billion groups in one aggregate".into()))?;
        *count += 1;
        Ok(g)
    }

    fn new_group(&mut self) -> Result<u32> {
        // The null key never enters the table; its placeholder keeps ids and keys aligned.
        let g = Self::next_id(&mut self.count)?;
        match &mut self.store {
            KeyStore::Int { values, .. } => values.push(0),
            KeyStore::Utf8 { offsets, bytes } => offsets.push(bytes.len()),
            KeyStore::Rows { .. } => {}
        }
        Ok(g)
    }

    /// Maps every row of the key columns to its group id, adding new groups.
    fn intern(&mut self, columns: &[ArrayRef], ids: &mut Vec<u32>) -> Result<()> {
        ids.clear();
        let rows = columns.first().map_or(0, |c| c.len());
        ids.reserve(rows);
        let state = &self.state;
        match &mut self.store {
            KeyStore::Int { values, .. } => {
                let keys = as_i64(&columns[0])?;
                let has_nulls = keys.null_count() > 0;
                for (row, &v) in keys.values().iter().enumerate() {
                    if has_nulls && keys.is_null(row) {
                        ids.push(u32::MAX);
                        continue;
                    }
                    let tag = v as u64;
                    let hash = state.hash_one(tag);
                    let g = match self.table.find(hash, |&(t, _)| t == tag) {
                        Some(&(_, g)) => g,
                        None => {
                            values.push(v);
                            let g = Self::next_id(&mut self.count)?;
                            self.table
                                .insert_unique(hash, (tag, g), |&(t, _)| state.hash_one(t));
                            g
                        }
                    };
                    ids.push(g);
                }
            }
            KeyStore::Utf8 { offsets, bytes } => {
                let keys = columns[0].as_string::<i32>();
                let has_nulls = keys.null_count() > 0;
                for row in 0..keys.len() {
                    if has_nulls && keys.is_null(row) {
                        ids.push(u32::MAX);
                        continue;
                    }
                    let key = keys.value(row).as_bytes();
                    let hash = state.hash_one(key);
                    let key_head = head(key);
                    let found = self.text.find(hash, |e| {
                        e.hash == hash
                            && e.len == key.len()
                            && e.head == key_head
                            && (key.len() <= 8 || same_bytes(&bytes[e.start..e.start + e.len], key))
                    });
                    let g = match found {
                        Some(e) => e.group,
                        None => {
                            let start = bytes.len();
                            bytes.extend_from_slice(key);
                            offsets.push(bytes.len());
                            let group = Self::next_id(&mut self.count)?;
                            let entry = TextEntry {
                                hash,
                                head: key_head,
                                start,
                                len: key.len(),
                                group,
                            };
                            self.text.insert_unique(hash, entry, |e| e.hash);
                            group
                        }
                    };
                    ids.push(g);
                }
            }
            KeyStore::Rows {
                converter,
                rows: stored,
            } => {
                let rows = converter
                    .convert_columns(columns)
                    .map_err(|e| Error::arrow("aggregate keys", e))?;
                for row in rows.iter() {
                    let key = row.as_ref();
                    let hash = state.hash_one(key);
                    let found = self.table.find(hash, |&(h, g)| {
                        h == hash && stored.row(g as usize).as_ref() == key
                    });
                    let g = match found {
                        Some(&(_, g)) => g,
                        None => {
                            stored.push(row);
                            let g = Self::next_id(&mut self.count)?;
                            self.table.insert_unique(hash, (hash, g), |&(h, _)| h);
                            g
                        }
                    };
                    ids.push(g);
                }
            }
        }
        // Rows with a null key (single-column stores) share one group, made on first sight.
        if ids.contains(&u32::MAX) {
            let null = match self.null_group {
                Some(g) => g,
                None => {
                    let g = self.new_group()?;
                    self.null_group = Some(g);
                    g
                }
            };
            for id in ids.iter_mut().filter(|id| **id == u32::MAX) {
                *id = null;
            }
        }
        Ok(())
    }

    /// The key columns of every group, in group order.
    fn key_columns(&self) -> Result<Vec<ArrayRef>> {
        let null = self.null_group.map(|g| g as usize);
        let valid = |i: usize| Some(i) != null;
        match &self.store {
            KeyStore::Int { data_type, values } => {
                let keys: ArrayRef = Arc::new(Int64Array::from_iter(
                    values
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| valid(i).then_some(v)),
                ));
                Ok(vec![
                    cast(&keys, data_type).map_err(|e| Error::arrow("aggregate keys", e))?,
                ])
            }
            KeyStore::Utf8 { offsets, bytes } => {
                let mut builder = StringBuilder::with_capacity(offsets.len(), bytes.len());
                for i in 0..offsets.len() - 1 {
                    if valid(i) {
                        let text = std::str::from_utf8(&bytes[offsets[i]..offsets[i + 1]])
                            .map_err(|e| Error::Internal(format!("aggregate key: {e}")))?;
                        builder.append_value(text);
                    } else {
                        builder.append_null();
                    }
                }
                Ok(vec![Arc::new(builder.finish())])
            }
            KeyStore::Rows { converter, rows } => converter
                .convert_rows(rows.iter())
                .map_err(|e| Error::arrow("aggregate keys", e)),
        }
    }

    fn clear(&mut self) {
        self.table.clear();
        self.text.clear();
        self.count = 0;
        self.null_group = None;
        match &mut self.store {
            KeyStore::Int { values, .. } => values.clear(),
            KeyStore::Utf8 { offsets, bytes } => {
                offsets.truncate(1);
                bytes.clear();
            }
            KeyStore::Rows { rows, .. } => rows.clear(),
        }
    }
}

struct AggregateInstance {
    phase: Phase,
    max_groups: usize,
    key_indices: Vec<usize>,
    kernels: Vec<(Kernel, Slots)>,
    /// The state of every group, row-major: `width` slots per group, so that one group's
    /// aggregates share a cache line.
    state: Vec<i64>,
    width: usize,
    schema: SchemaRef,
    groups: Groups,
    ids: Vec<u32>,
}

fn as_i64(column: &ArrayRef) -> Result<Int64Array> {
    Ok(cast(column, &DataType::Int64)
        .map_err(|e| Error::arrow("aggregate input", e))?
        .as_primitive::<Int64Type>()
        .clone())
}

fn as_f64(column: &ArrayRef) -> Result<Float64Array> {
    Ok(cast(column, &DataType::Float64)
        .map_err(|e| Error::arrow("aggregate input", e))?
        .as_primitive::<Float64Type>()
        .clone())
}

/// A kernel's input column, read once per batch.
enum Input {
    None,
    Valid(Option<arrow::buffer::NullBuffer>),
    Int(Int64Array),
    Float(Float64Array),
    Parts(Float64Array, Int64Array),
}

impl Input {
    fn of(kernel: &Kernel, batch: &RecordBatch) -> Result<Input> {
        Ok(match *kernel {
            CountRows => Input::None,
            CountValid(c) => Input::Valid(batch.column(c).logical_nulls()),
            AddCount(c) | Sum(c, Num::Int) | Min(c, Num::Int) | Max(c, Num::Int) => {
                Input::Int(as_i64(batch.column(c))?)
            }
            Sum(c, Num::Float) | Mean(c) | Min(c, Num::Float) | Max(c, Num::Float) => {
                Input::Float(as_f64(batch.column(c))?)
            }
            MergeMean { sum, count } => {
                Input::Parts(as_f64(batch.column(sum))?, as_i64(batch.column(count))?)
            }
        })
    }
}

/// Updates the state of the groups `ids` (rows `first..` of the batch) for one kernel.
/// Returns false if an integer sum overflowed.
fn update_block(
    kernel: Kernel,
    Slots { value, count }: Slots,
    input: &Input,
    ids: &[u32],
    first: usize,
    state: &mut [i64],
    width: usize,
) -> bool {
    let rows = first..first + ids.len();
    let valid =
        |nulls: Option<&arrow::buffer::NullBuffer>, r: usize| nulls.is_none_or(|n| n.is_valid(r));
    let mut ok = true;
    match (kernel, input) {
        (CountRows, _) => {
            for &g in ids {
                state[g as usize * width + count] += 1;
            }
        }
        (CountValid(_), Input::Valid(nulls)) => {
            for (r, &g) in rows.zip(ids) {
                if valid(nulls.as_ref(), r) {
                    state[g as usize * width + count] += 1;
                }
            }
        }
        (AddCount(_), Input::Int(a)) => {
            let values = &a.values()[rows.clone()];
            for ((r, &g), &v) in rows.zip(ids).zip(values) {
                if valid(a.nulls(), r) {
                    state[g as usize * width + count] += v;
                }
            }
        }
        (Sum(..), Input::Int(a)) => {
            let values = &a.values()[rows.clone()];
            for ((r, &g), &v) in rows.zip(ids).zip(values) {
                if valid(a.nulls(), r) {
                    let at = g as usize * width;
                    match state[at + value].checked_add(v) {
                        Some(sum) => state[at + value] = sum,
                        None => ok = false,
                    }
                    state[at + count] += 1;
                }
            }
        }
        (Sum(..) | Mean(_), Input::Float(a)) => {
            let values = &a.values()[rows.clone()];
            for ((r, &g), &v) in rows.zip(ids).zip(values) {
                if valid(a.nulls(), r) {
                    let at = g as usize * width;
                    state[at + value] = slot_of(f64_of(state[at + value]) + v);
                    state[at + count] += 1;
                }
            }
        }
        (Min(..) | Max(..), Input::Int(a)) => {
            let is_min = matches!(kernel, Min(..));
            let values = &a.values()[rows.clone()];
            for ((r, &g), &v) in rows.zip(ids).zip(values) {
                if valid(a.nulls(), r) {
                    let at = g as usize * width;
                    let current = state[at + value];
                    let better = if is_min { v < current } else { v > current };
                    if state[at + count] == 0 || better {
                        state[at + value] = v;
                    }
                    state[at + count] += 1;
                }
            }
        }
        (Min(..) | Max(..), Input::Float(a)) => {
            let is_min = matches!(kernel, Min(..));
            let values = &a.values()[rows.clone()];
            for ((r, &g), &v) in rows.zip(ids).zip(values) {
                if valid(a.nulls(), r) {
                    let at = g as usize * width;
                    let current = f64_of(state[at + value]);
                    let better = if is_min { v < current } else { v > current };
                    if state[at + count] == 0 || better {
                        state[at + value] = slot_of(v);
                    }
                    state[at + count] += 1;
                }
            }
        }
        (MergeMean { .. }, Input::Parts(sums, counts)) => {
            for (r, &g) in rows.zip(ids) {
                let at = g as usize * width;
                state[at + value] = slot_of(f64_of(state[at + value]) + sums.value(r));
                state[at + count] += counts.value(r);
            }
        }
        // Input::of gives every kernel its own kind of input.
        _ => {}
    }
    ok
}

#[inline]
fn f64_of(slot: i64) -> f64 {
    f64::from_bits(slot as u64)
}

#[inline]
fn slot_of(value: f64) -> i64 {
    value.to_bits() as i64
}

impl AggregateInstance {
    fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let width = self.width;
        self.state.resize(self.groups.len() * width, 0);
        // Read every input column once, as i64 or f64.
        let inputs: Vec<Input> = self
            .kernels
            .iter()
            .map(|(kernel, _)| Input::of(kernel, batch))
            .collect::<Result<_>>()?;
        // Rows go in blocks, every kernel over one block in turn, so that the groups a block
        // touches stay in cache from one kernel to the next.
        const BLOCK: usize = 256;
        let rows = self.ids.len();
        let mut overflow = None;
        for start in (0..rows).step_by(BLOCK) {
            let end = (start + BLOCK).min(rows);
            for ((kernel, slots), input) in self.kernels.iter().zip(&inputs) {
                let ok = update_block(
                    *kernel,
                    *slots,
                    input,
                    &self.ids[start..end],
                    start,
                    &mut self.state,
                    width,
                );
                if !ok {
                    overflow = Some(*kernel);
                }
            }
        }
        if let Some(Sum(c, _)) = overflow {
            return Err(Error::Input(format!(
                "sum of column '{}' overflows Int64",
                batch.schema().field(c).name()
            )));
        }
        Ok(())
    }

    /// Emits every group and forgets them.
    fn flush(&mut self, out: &mut Collector) -> Result<()> {
        let groups = self.groups.len();
        if groups == 0 {
            return Ok(());
        }
        let width = self.width;
        self.state.resize(groups * width, 0);
        let state = &self.state;
        let slot = |g: usize, i: usize| state[g * width + i];
        let mut columns: Vec<ArrayRef> = self.groups.key_columns()?;
        for &(kernel, Slots { value, count }) in &self.kernels {
            let seen = |g: usize| slot(g, count) > 0;
            match (kernel, self.phase) {
                (CountRows | CountValid(_) | AddCount(_), _) => {
                    columns.push(Arc::new(Int64Array::from_iter_values(
                        (0..groups).map(|g| slot(g, count)),
                    )));
                }
                (Sum(_, Num::Int) | Min(_, Num::Int) | Max(_, Num::Int), _) => {
                    columns.push(Arc::new(Int64Array::from_iter(
                        (0..groups).map(|g| seen(g).then(|| slot(g, value))),
                    )));
                }
                (Sum(_, Num::Float) | Min(_, Num::Float) | Max(_, Num::Float), _) => {
                    columns.push(Arc::new(Float64Array::from_iter(
                        (0..groups).map(|g| seen(g).then(|| f64_of(slot(g, value)))),
                    )));
                }
                (Mean(_), Phase::Partial) => {
                    columns.push(Arc::new(Float64Array::from_iter_values(
                        (0..groups).map(|g| f64_of(slot(g, value))),
                    )));
                    columns.push(Arc::new(Int64Array::from_iter_values(
                        (0..groups).map(|g| slot(g, count)),
                    )));
                }
                (Mean(_) | MergeMean { .. }, _) => {
                    columns.push(Arc::new(Float64Array::from_iter((0..groups).map(|g| {
                        seen(g).then(|| f64_of(slot(g, value)) / slot(g, count) as f64)
                    }))));
                }
            }
        }
        self.state.clear();
        self.groups.clear();
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| Error::arrow("aggregate output", e))?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = OUTPUT_BATCH_ROWS.min(batch.num_rows() - offset);
            out.emit(batch.slice(offset, len));
            offset += len;
        }
        Ok(())
    }
}

impl Operator for AggregateInstance {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let keys: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        self.groups.intern(&keys, &mut self.ids)?;
        self.update(&batch)?;
        if self.groups.len() > self.max_groups {
            self.flush(out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Collector) -> Result<()> {
        self.flush(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    fn ctx() -> WorkerContext {
        WorkerContext {
            job: "t".into(),
            index: 0,
            workers: 1,
            local_workers: 1,
        }
    }

    /// Random (key, value) rows with some null values.
    fn batches(seed: u64, n: usize, keys: u64) -> Vec<RecordBatch> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, true),
        ]));
        (0..n / 100)
            .map(|_| {
                let k: Vec<String> = (0..100)
                    .map(|_| format!("key{}", rng.random_range(0..keys)))
                    .collect();
                let v: Vec<Option<i64>> = (0..100)
                    .map(|_| (!rng.random_bool(0.1)).then(|| rng.random_range(-1000..1000)))
                    .collect();
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(StringArray::from(k)),
                        Arc::new(Int64Array::from(v)),
                    ],
                )
                .expect("batch")
            })
            .collect()
    }

    type Row = (i64, Option<i64>, Option<i64>, Option<i64>, Option<f64>);

    fn oracle(batches: &[RecordBatch]) -> HashMap<String, Row> {
        let mut acc: HashMap<String, (i64, Vec<i64>)> = HashMap::new();
        for b in batches {
            let k = b.column(0).as_string::<i32>();
            let v = b.column(1).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                let e = acc.entry(k.value(i).to_owned()).or_default();
                e.0 += 1;
                if v.is_valid(i) {
                    e.1.push(v.value(i));
                }
            }
        }
        acc.into_iter()
            .map(|(k, (n, vs))| {
                let mean =
                    (!vs.is_empty()).then(|| vs.iter().sum::<i64>() as f64 / vs.len() as f64);
                (
                    k,
                    (
                        n,
                        (!vs.is_empty()).then(|| vs.iter().sum()),
                        vs.iter().copied().min(),
                        vs.iter().copied().max(),
                        mean,
                    ),
                )
            })
            .collect()
    }

    fn spec() -> Aggregate {
        Aggregate::new(
            vec!["k".into()],
            vec![
                Agg::count(),
                Agg::sum("v"),
                Agg::min("v"),
                Agg::max("v"),
                Agg::mean("v"),
            ],
        )
    }

    fn run(agg: &Aggregate, input: &SchemaRef, batches: Vec<RecordBatch>) -> Vec<RecordBatch> {
        let mut op = agg.create(&ctx(), input).expect("create");
        let mut out = Collector::new();
        for b in batches {
            op.process_batch(b, &mut out).expect("process");
        }
        op.finish(&mut out).expect("finish");
        out.take()
    }

    fn rows(batches: &[RecordBatch]) -> HashMap<String, Row> {
        let mut got = HashMap::new();
        for b in batches {
            let k = b.column(0).as_string::<i32>();
            let c = b.column(1).as_primitive::<Int64Type>();
            let s = b.column(2).as_primitive::<Int64Type>();
            let lo = b.column(3).as_primitive::<Int64Type>();
            let hi = b.column(4).as_primitive::<Int64Type>();
            let m = b.column(5).as_primitive::<Float64Type>();
            let opt = |a: &Int64Array, i| a.is_valid(i).then(|| a.value(i));
            for i in 0..b.num_rows() {
                let prev = got.insert(
                    k.value(i).to_owned(),
                    (
                        c.value(i),
                        opt(s, i),
                        opt(lo, i),
                        opt(hi, i),
                        m.is_valid(i).then(|| m.value(i)),
                    ),
                );
                assert!(prev.is_none(), "key {} emitted twice", k.value(i));
            }
        }
        got
    }

    fn assert_same(got: &HashMap<String, Row>, expected: &HashMap<String, Row>) {
        assert_eq!(got.len(), expected.len());
        for (k, e) in expected {
            let g = &got[k];
            assert_eq!((g.0, g.1, g.2, g.3), (e.0, e.1, e.2, e.3), "key {k}");
            match (g.4, e.4) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "mean of {k}: {a} vs {b}"),
                (a, b) => assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn complete_aggregate_matches_a_hashmap_recomputation() {
        let input = batches(7, 20_000, 300);
        let expected = oracle(&input);
        let schema = input[0].schema();
        assert_same(&rows(&run(&spec(), &schema, input)), &expected);
    }

    #[test]
    fn partial_then_final_equals_complete_even_when_partials_flush() {
        let input = batches(11, 20_000, 500);
        let expected = oracle(&input);
        let schema = input[0].schema();
        let mut partial = spec().with_phase(Phase::Partial);
        partial.max_partial_groups = 50; // flush often: many partial rows per key
        let partial_schema = partial.output_schema(&schema).expect("partial schema");
        // Split the input over three "workers", as the engine does before an exchange.
        let mut partial_out = Vec::new();
        for share in input.chunks(input.len() / 3 + 1) {
            partial_out.extend(run(&partial, &schema, share.to_vec()));
        }
        let final_ = spec().with_phase(Phase::Final);
        assert_same(
            &rows(&run(&final_, &partial_schema, partial_out)),
            &expected,
        );
    }

    #[test]
    fn a_text_column_cannot_be_summed() {
        let input = batches(1, 100, 3);
        let err = Aggregate::new(vec!["v".into()], vec![Agg::sum("k")])
            .output_schema(&input[0].schema())
            .expect_err("text sum");
        assert!(err.to_string().contains("numeric"), "{err}");
    }
}
