//! The reader of Parquet files: their row groups are dealt to the workers in turn.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use streamrun_engine::{DeadLetter, Error, Result, SourceCollector, SourceReader, WorkerContext};

use super::{arrow_message, display};

/// Opens a Parquet file and reads its metadata.
fn open_builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", display(path)), e))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::Input(format!("{} is not a Parquet file: {e}", display(path))))
}

/// The Arrow schema of a Parquet file.
pub(crate) fn file_schema(path: &Path) -> Result<SchemaRef> {
    Ok(Arc::clone(open_builder(path)?.schema()))
}

/// Fails unless the file's schema has `schema`'s fields.
fn check_schema(
    builder: &ParquetRecordBatchReaderBuilder<File>,
    path: &Path,
    schema: &SchemaRef,
) -> Result<()> {
    if builder.schema().fields() == schema.fields() {
        return Ok(());
    }
    Err(Error::Input(format!(
        "{} does not have the schema of the first file: expected {}, found {}",
        display(path),
        fields_text(schema),
        fields_text(builder.schema())
    )))
}

fn fields_text(schema: &Schema) -> String {
    let fields: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    format!("({})", fields.join(", "))
}

/// A row group of a file.
#[derive(Debug, Clone)]
struct Unit {
    path: Arc<PathBuf>,
    row_group: usize,
    /// Its compressed size.
    bytes: u64,
}

impl Unit {
    fn location(&self) -> String {
        format!("{}: row group {}", display(&self.path), self.row_group)
    }
}

/// The row group being read.
struct Current {
    unit: Unit,
    reader: ParquetRecordBatchReader,
    /// Bytes read but not yet reported.
    bytes: u64,
}

/// One worker's reader over its row groups.
pub(crate) struct ParquetReader {
    schema: SchemaRef,
    batch_size: usize,
    units: VecDeque<Unit>,
    current: Option<Current>,
}

impl std::fmt::Debug for ParquetReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetReader")
            .field("batch_size", &self.batch_size)
            .field("units", &self.units)
            .finish_non_exhaustive()
    }
}

impl ParquetReader {
    /// Reads the metadata of every file, and keeps this worker's row groups: the `k`th row
    /// group over all files (in file order) goes to worker `k % workers`.
    pub fn open(
        files: &[PathBuf],
        schema: SchemaRef,
        ctx: &WorkerContext,
        batch_size: usize,
    ) -> Result<Self> {
        let mut units = VecDeque::new();
        let mut k = 0usize;
        for path in files {
            let builder = open_builder(path)?;
            check_schema(&builder, path, &schema)?;
            let path = Arc::new(path.clone());
            for (row_group, meta) in builder.metadata().row_groups().iter().enumerate() {
                if k % ctx.workers == ctx.index {
                    units.push_back(Unit {
                        path: Arc::clone(&path),
                        row_group,
                        bytes: u64::try_from(meta.compressed_size()).unwrap_or(0),
                    });
                }
                k += 1;
            }
        }
        Ok(ParquetReader {
            schema,
            batch_size,
            units,
            current: None,
        })
    }

    /// A reader of row groups `groups` of the one file `path`, which holds at least their
    /// bytes and its footer.
    pub fn of_row_groups(
        path: &Path,
        schema: SchemaRef,
        groups: std::ops::Range<usize>,
        batch_size: usize,
    ) -> Result<Self> {
        let builder = open_builder(path)?;
        check_schema(&builder, path, &schema)?;
        let metas = builder.metadata().row_groups();
        if groups.end > metas.len() {
            return Err(Error::Input(format!(
                "{} has {} row groups, not {}",
                display(path),
                metas.len(),
                groups.end
            )));
        }
        let path = Arc::new(path.to_path_buf());
        let units = groups
            .map(|row_group| Unit {
                path: Arc::clone(&path),
                row_group,
                bytes: u64::try_from(metas[row_group].compressed_size()).unwrap_or(0),
            })
            .collect();
        Ok(ParquetReader {
            schema,
            batch_size,
            units,
            current: None,
        })
    }

    fn open_unit(&self, unit: Unit) -> Result<Current> {
        let reader = open_builder(&unit.path)?
            .with_row_groups(vec![unit.row_group])
            .with_batch_size(self.batch_size)
            .build()
            .map_err(|e| Error::Input(format!("{}: {e}", unit.location())))?;
        Ok(Current {
            bytes: unit.bytes,
            unit,
            reader,
        })
    }

    /// The batch with the source's schema (files may differ in metadata).
    fn conform(&self, batch: RecordBatch, unit: &Unit) -> Result<RecordBatch> {
        if batch.schema() == self.schema {
            return Ok(batch);
        }
        RecordBatch::try_new(Arc::clone(&self.schema), batch.columns().to_vec())
            .map_err(|e| Error::arrow(format!("reading {}", unit.location()), e))
    }
}

impl SourceReader for ParquetReader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        loop {
            let mut current = match self.current.take() {
                Some(current) => current,
                None => match self.units.pop_front() {
                    Some(unit) => self.open_unit(unit)?,
                    None => return Ok(false),
                },
            };
            match current.reader.next() {
                Some(Ok(batch)) => {
                    let batch = self.conform(batch, &current.unit)?;
                    out.emit(batch, std::mem::take(&mut current.bytes));
                    self.current = Some(current);
                    return Ok(true);
                }
                Some(Err(e)) => {
                    // The rest of the row group cannot be read.
                    out.bad_record(DeadLetter {
                        location: current.unit.location(),
                        reason: format!("cannot decode the row group: {}", arrow_message(&e)),
                        record: String::new(),
                    })?;
                    out.emit(
                        RecordBatch::new_empty(Arc::clone(&self.schema)),
                        current.bytes,
                    );
                    return Ok(!self.units.is_empty());
                }
                None => {
                    if current.bytes > 0 {
                        out.emit(
                            RecordBatch::new_empty(Arc::clone(&self.schema)),
                            current.bytes,
                        );
                    }
                }
            }
        }
    }
}
