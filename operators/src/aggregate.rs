//! Keyed aggregates (`count`, `sum`, `min`, `max`, `mean`) in three phases.
//!
//! A keyed aggregate runs as a *partial* aggregate before the hash exchange (on each worker,
//! over whatever keys it reads) and a *final* aggregate after it (each key on one worker), so
//! that only one row per key and worker crosses the exchange. The partial phase flushes when it
//! holds more than `max_partial_groups` keys, which bounds its memory; that is always correct
//! because the final phase merges any number of partial rows per key.

use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
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
        let schema = self.schema_for(input, &kernels)?;
        let key_indices = column_indices(input, &self.keys, "aggregate key")?;
        let fields = key_indices
            .iter()
            .map(|&i| SortField::new(input.field(i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields).map_err(|e| Error::arrow("aggregate keys", e))?;
        let keys = converter.empty_rows(1024, 16 * 1024);
        Ok(Box::new(AggregateInstance {
            phase: self.phase,
            max_groups: if self.phase == Phase::Partial {
                self.max_partial_groups.max(1)
            } else {
                usize::MAX
            },
            key_indices,
            kernels: kernels.into_iter().map(|k| (k, Acc::default())).collect(),
            schema,
            groups: Groups {
                converter,
                table: HashTable::new(),
                keys,
                hashes: Vec::new(),
                state: foldhash::fast::FixedState::with_seed(0x6a09_e667),
            },
            ids: Vec::new(),
        }))
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

#[derive(Default)]
struct Acc {
    ints: Vec<i64>,
    floats: Vec<f64>,
    counts: Vec<i64>,
}

struct Groups {
    converter: RowConverter,
    table: HashTable<u32>,
    keys: Rows,
    hashes: Vec<u64>,
    state: foldhash::fast::FixedState,
}

impl Groups {
    fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Maps every row of the key columns to its group id, adding new groups.
    fn intern(&mut self, columns: &[ArrayRef], ids: &mut Vec<u32>) -> Result<()> {
        let rows = self
            .converter
            .convert_columns(columns)
            .map_err(|e| Error::arrow("aggregate keys", e))?;
        ids.clear();
        ids.reserve(rows.num_rows());
        for row in rows.iter() {
            let bytes = row.as_ref();
            let hash = self.state.hash_one(bytes);
            let keys = &self.keys;
            let id = match self
                .table
                .find(hash, |&g| keys.row(g as usize).as_ref() == bytes)
            {
                Some(&g) => g,
                None => {
                    let g = u32::try_from(self.hashes.len()).map_err(|_| {
                        Error::Internal("more than 4 billion groups in one aggregate".into())
                    })?;
                    self.keys.push(row);
                    self.hashes.push(hash);
                    let hashes = &self.hashes;
                    self.table.insert_unique(hash, g, |&x| hashes[x as usize]);
                    g
                }
            };
            ids.push(id);
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.table.clear();
        self.keys.clear();
        self.hashes.clear();
    }
}

struct AggregateInstance {
    phase: Phase,
    max_groups: usize,
    key_indices: Vec<usize>,
    kernels: Vec<(Kernel, Acc)>,
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

/// Calls `f(group, value)` for every non-null value of `values`.
fn each_valid<T: Copy>(
    ids: &[u32],
    values: &[T],
    nulls: Option<&arrow::buffer::NullBuffer>,
    mut f: impl FnMut(usize, T),
) {
    match nulls {
        None => {
            for (&g, &v) in ids.iter().zip(values) {
                f(g as usize, v);
            }
        }
        Some(nulls) => {
            for (row, (&g, &v)) in ids.iter().zip(values).enumerate() {
                if nulls.is_valid(row) {
                    f(g as usize, v);
                }
            }
        }
    }
}

impl AggregateInstance {
    fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let groups = self.groups.len();
        let ids = &self.ids;
        for (kernel, acc) in &mut self.kernels {
            acc.counts.resize(groups, 0);
            match *kernel {
                CountRows => {
                    for &g in ids {
                        acc.counts[g as usize] += 1;
                    }
                }
                CountValid(c) => {
                    let column = batch.column(c);
                    for (row, &g) in ids.iter().enumerate() {
                        if column.is_valid(row) {
                            acc.counts[g as usize] += 1;
                        }
                    }
                }
                AddCount(c) => {
                    let values = as_i64(batch.column(c))?;
                    each_valid(ids, values.values(), values.nulls(), |g, v| {
                        acc.counts[g] += v
                    });
                }
                Sum(c, Num::Int) => {
                    acc.ints.resize(groups, 0);
                    let values = as_i64(batch.column(c))?;
                    let mut overflow = false;
                    each_valid(ids, values.values(), values.nulls(), |g, v| {
                        match acc.ints[g].checked_add(v) {
                            Some(s) => acc.ints[g] = s,
                            None => overflow = true,
                        }
                        acc.counts[g] += 1;
                    });
                    if overflow {
                        return Err(Error::Input(format!(
                            "sum of column '{}' overflows Int64",
                            batch.schema().field(c).name()
                        )));
                    }
                }
                Sum(c, Num::Float) | Mean(c) => {
                    acc.floats.resize(groups, 0.0);
                    let values = as_f64(batch.column(c))?;
                    each_valid(ids, values.values(), values.nulls(), |g, v| {
                        acc.floats[g] += v;
                        acc.counts[g] += 1;
                    });
                }
                Min(c, Num::Int) | Max(c, Num::Int) => {
                    let is_min = matches!(kernel, Min(..));
                    acc.ints.resize(groups, 0);
                    let values = as_i64(batch.column(c))?;
                    each_valid(ids, values.values(), values.nulls(), |g, v| {
                        let better = if is_min {
                            v < acc.ints[g]
                        } else {
                            v > acc.ints[g]
                        };
                        if acc.counts[g] == 0 || better {
                            acc.ints[g] = v;
                        }
                        acc.counts[g] += 1;
                    });
                }
                Min(c, Num::Float) | Max(c, Num::Float) => {
                    let is_min = matches!(kernel, Min(..));
                    acc.floats.resize(groups, 0.0);
                    let values = as_f64(batch.column(c))?;
                    each_valid(ids, values.values(), values.nulls(), |g, v| {
                        let better = if is_min {
                            v < acc.floats[g]
                        } else {
                            v > acc.floats[g]
                        };
                        if acc.counts[g] == 0 || better {
                            acc.floats[g] = v;
                        }
                        acc.counts[g] += 1;
                    });
                }
                MergeMean { sum, count } => {
                    acc.floats.resize(groups, 0.0);
                    let sums = as_f64(batch.column(sum))?;
                    let counts = as_i64(batch.column(count))?;
                    for (row, &g) in ids.iter().enumerate() {
                        acc.floats[g as usize] += sums.value(row);
                        acc.counts[g as usize] += counts.value(row);
                    }
                }
            }
        }
        Ok(())
    }

    /// Emits every group and forgets them.
    fn flush(&mut self, out: &mut Collector) -> Result<()> {
        let groups = self.groups.len();
        if groups == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = self
            .groups
            .converter
            .convert_rows(self.groups.keys.iter())
            .map_err(|e| Error::arrow("aggregate keys", e))?;
        let present = |counts: &[i64], i: usize| counts[i] > 0;
        for (kernel, acc) in &mut self.kernels {
            acc.counts.resize(groups, 0);
            acc.ints.resize(groups, 0);
            acc.floats.resize(groups, 0.0);
            let counts = &acc.counts;
            match (*kernel, self.phase) {
                (CountRows | CountValid(_) | AddCount(_), _) => {
                    columns.push(Arc::new(Int64Array::from(std::mem::take(&mut acc.counts))));
                }
                (Sum(_, Num::Int) | Min(_, Num::Int) | Max(_, Num::Int), _) => {
                    columns.push(Arc::new(Int64Array::from_iter(
                        (0..groups).map(|i| present(counts, i).then_some(acc.ints[i])),
                    )));
                }
                (Sum(_, Num::Float) | Min(_, Num::Float) | Max(_, Num::Float), _) => {
                    columns.push(Arc::new(Float64Array::from_iter(
                        (0..groups).map(|i| present(counts, i).then_some(acc.floats[i])),
                    )));
                }
                (Mean(_), Phase::Partial) => {
                    columns.push(Arc::new(Float64Array::from(std::mem::take(
                        &mut acc.floats,
                    ))));
                    columns.push(Arc::new(Int64Array::from(std::mem::take(&mut acc.counts))));
                }
                (Mean(_) | MergeMean { .. }, _) => {
                    columns.push(Arc::new(Float64Array::from_iter((0..groups).map(|i| {
                        present(counts, i).then(|| acc.floats[i] / counts[i] as f64)
                    }))));
                }
            }
            acc.counts.clear();
            acc.ints.clear();
            acc.floats.clear();
        }
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
