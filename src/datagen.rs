//! Seeded synthetic data for examples and benches: the same seed gives the same bytes on
//! every machine.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use streamrun_engine::{Error, Result};

/// Distinct values of the `key` column of [`orders_batch`].
pub const ORDER_KEYS: i64 = 100_000;

const REGIONS: [&str; 8] = [
    "north",
    "south",
    "east",
    "west",
    "central",
    "islands",
    "mountains",
    "coast",
];

/// The schema of the generated orders: `key` (Int64), `region` (Utf8), `quantity` (Int64),
/// `amount` (Float64).
pub fn orders_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("quantity", DataType::Int64, false),
        Field::new("amount", DataType::Float64, false),
    ]))
}

/// `rows` generated orders; batch `index` of a data set always holds the same rows.
pub fn orders_batch(seed: u64, index: u64, rows: usize) -> Result<RecordBatch> {
    let mut rng =
        rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let keys: Vec<i64> = (0..rows).map(|_| rng.random_range(0..ORDER_KEYS)).collect();
    let regions = StringArray::from_iter_values(
        (0..rows).map(|_| REGIONS[rng.random_range(0..REGIONS.len())]),
    );
    let quantity: Vec<i64> = (0..rows).map(|_| rng.random_range(1..=20)).collect();
    let amount: Vec<f64> = (0..rows)
        .map(|_| (rng.random_range(100..100_000) as f64) / 100.0)
        .collect();
    RecordBatch::try_new(
        orders_schema(),
        vec![
            Arc::new(Int64Array::from(keys)),
            Arc::new(regions),
            Arc::new(Int64Array::from(quantity)),
            Arc::new(Float64Array::from(amount)),
        ],
    )
    .map_err(|e| Error::arrow("generating orders", e))
}

/// Writes `rows` generated orders to the Parquet file `path`, in row groups of one million
/// rows (so that workers can split it), Snappy-compressed.
pub fn write_orders_parquet(path: &Path, rows: usize, seed: u64) -> Result<()> {
    const GROUP: usize = 1 << 20;
    let file = std::fs::File::create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(GROUP))
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(file, orders_schema(), Some(props))
        .map_err(|e| Error::Input(format!("writing {}: {e}", path.display())))?;
    let mut written = 0;
    let mut index = 0;
    while written < rows {
        let n = (rows - written).min(64 * 1024);
        writer
            .write(&orders_batch(seed, index, n)?)
            .map_err(|e| Error::Input(format!("writing {}: {e}", path.display())))?;
        written += n;
        index += 1;
    }
    writer
        .close()
        .map_err(|e| Error::Input(format!("writing {}: {e}", path.display())))?;
    Ok(())
}
