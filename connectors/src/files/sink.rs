//! File sinks: one part file per worker, committed by a rename.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use serde_json::json;
use streamrun_engine::{Descriptor, Error, Result, Sink, SinkWriter, WorkerContext};

use super::{FileFormat, display};

/// A sink writing CSV, JSON lines or Parquet files into a directory; made by
/// [`Files::write_csv`](super::Files::write_csv),
/// [`Files::write_json`](super::Files::write_json) and
/// [`Files::write_parquet`](super::Files::write_parquet).
///
/// Worker `i` writes `part-{i:05}.{csv|jsonl|parquet}` (the directory is created if missing):
/// first to the hidden file `.part-{i:05}.{ext}.tmp`, renamed into place when the worker
/// finishes, so that a part file is either absent or complete. A part written by a worker
/// that fails is removed. Worker 0 also removes the part files (and temporary files) of
/// this format left by an earlier run with more workers, so that the directory holds the
/// output of one run.
///
/// CSV files have a header line. CSV values containing line breaks are quoted, but
/// [`Files::csv`](super::Files::csv) does not read them back (a record is a line).
#[derive(Debug, Clone)]
pub struct FileSink {
    format: FileFormat,
    dir: PathBuf,
}

impl FileSink {
    pub(crate) fn new(format: FileFormat, dir: PathBuf) -> Self {
        FileSink { format, dir }
    }

    /// The format of the files it writes.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// The directory it writes to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The descriptor of this sink for the job's plan: kind `files.csv`, `files.json` or
    /// `files.parquet`, with the directory as `path`.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.format.kind(),
            json!({ "path": self.dir.display().to_string() }),
        )
    }

    /// The name of worker `index`'s part file.
    fn part_name(&self, index: usize) -> String {
        format!("part-{index:05}.{}", self.format.extension())
    }

    /// Removes the part files and temporary files of this format numbered `workers` or more.
    fn remove_stale_parts(&self, workers: usize) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("listing {}", display(&self.dir)), e))?;
        let extension = format!(".{}", self.format.extension());
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::io(format!("listing {}", display(&self.dir)), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let number = name
                .strip_suffix(".tmp")
                .and_then(|n| n.strip_prefix(".part-"))
                .or_else(|| name.strip_prefix("part-"))
                .and_then(|n| n.strip_suffix(extension.as_str()));
            let stale = number.is_some_and(|n| {
                n.len() >= 5
                    && n.bytes().all(|b| b.is_ascii_digit())
                    && n.parse::<usize>().is_ok_and(|n| n >= workers)
            });
            if stale {
                let path = entry.path();
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("removing {}", display(&path)), e))?;
            }
        }
        Ok(())
    }
}

impl Sink for FileSink {
    fn open(&self, ctx: &WorkerContext, schema: &SchemaRef) -> Result<Box<dyn SinkWriter>> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", display(&self.dir)), e))?;
        if ctx.index == 0 {
            self.remove_stale_parts(ctx.workers)?;
        }
        let name = self.part_name(ctx.index);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let file =
            File::create(&tmp).map_err(|e| Error::io(format!("creating {}", display(&tmp)), e))?;
        let encoder = match self.format {
            FileFormat::Parquet => Encoder::Parquet(Box::new(
                ArrowWriter::try_new(file, SchemaRef::clone(schema), None)
                    .map_err(|e| Error::arrow(format!("creating {}", display(&tmp)), e.into()))?,
            )),
            FileFormat::Csv => Encoder::Csv {
                writer: Box::new(
                    arrow::csv::WriterBuilder::new()
                        .with_header(true)
                        .build(BufWriter::new(file)),
                ),
                wrote: false,
            },
            FileFormat::Json => {
                Encoder::Json(arrow::json::LineDelimitedWriter::new(BufWriter::new(file)))
            }
            FileFormat::Text => {
                drop(file);
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::Plan(format!(
                    "the file sink of {} cannot write text files",
                    display(&self.dir)
                )));
            }
        };
        Ok(Box::new(FileWriter {
            schema: SchemaRef::clone(schema),
            tmp,
            path,
            encoder: Some(encoder),
        }))
    }
}

/// The encoder of a part file.
enum Encoder {
    Parquet(Box<ArrowWriter<File>>),
    Csv {
        writer: Box<arrow::csv::Writer<BufWriter<File>>>,
        wrote: bool,
    },
    Json(arrow::json::LineDelimitedWriter<BufWriter<File>>),
}

/// One worker's part file.
struct FileWriter {
    schema: SchemaRef,
    tmp: PathBuf,
    path: PathBuf,
    /// `None` once committed.
    encoder: Option<Encoder>,
}

impl FileWriter {
    fn context(&self) -> String {
        format!("writing {}", display(&self.tmp))
    }
}

impl SinkWriter for FileWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let context = self.context();
        match self.encoder.as_mut() {
            None => Err(Error::Internal(format!(
                "{context}: the part file was already committed"
            ))),
            Some(Encoder::Parquet(writer)) => writer
                .write(batch)
                .map_err(|e| Error::arrow(context, e.into())),
            Some(Encoder::Csv { writer, wrote }) => {
                *wrote = true;
                writer.write(batch).map_err(|e| Error::arrow(context, e))
            }
            Some(Encoder::Json(writer)) => {
                writer.write(batch).map_err(|e| Error::arrow(context, e))
            }
        }
    }

    fn finish(&mut self) -> Result<()> {
        let Some(encoder) = self.encoder.take() else {
            return Ok(());
        };
        let committed = self.commit(encoder);
        if committed.is_err() {
            // Best effort: the file is hidden anyway.
            let _ = std::fs::remove_file(&self.tmp);
        }
        committed
    }
}

impl FileWriter {
    /// Completes the file and renames it into place.
    fn commit(&self, encoder: Encoder) -> Result<()> {
        let context = self.context();
        let io = |e| Error::io(context.clone(), e);
        let file = match encoder {
            Encoder::Parquet(writer) => writer
                .into_inner()
                .map_err(|e| Error::arrow(context.clone(), e.into()))?,
            Encoder::Csv { mut writer, wrote } => {
                if !wrote {
                    // An empty batch writes the header: the file still names its columns.
                    writer
                        .write(&RecordBatch::new_empty(SchemaRef::clone(&self.schema)))
                        .map_err(|e| Error::arrow(context.clone(), e))?;
                }
                writer
                    .into_inner()
                    .into_inner()
                    .map_err(|e| io(e.into_error()))?
            }
            Encoder::Json(mut writer) => {
                writer
                    .finish()
                    .map_err(|e| Error::arrow(context.clone(), e))?;
                writer
                    .into_inner()
                    .into_inner()
                    .map_err(|e| io(e.into_error()))?
            }
        };
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", display(&self.tmp), display(&self.path)),
                e,
            )
        })
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if self.encoder.take().is_some() {
            // Not committed: the job failed. Best effort; the file is hidden anyway.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
