//! The stdout sink: the result as a table, printed when the job ends.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use serde_json::json;
use streamrun_engine::{Descriptor, Error, Parallelism, Result, Sink, SinkWriter, WorkerContext};

/// How many rows [`Stdout::table`] prints by default.
const DEFAULT_MAX_ROWS: usize = 100;

/// A sink printing the result to standard output as a table, once the job has ended.
///
/// It runs on one worker (the engine gathers every row there). It keeps at most
/// [`Stdout::max_rows`] rows (100 by default) and counts the others: the table is followed
/// by a line `… N more rows` when rows were left out, and an empty result prints `(0 rows)`.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{Int64Array, RecordBatch};
/// use arrow::datatypes::{DataType, Field, Schema};
/// use streamrun_connectors::Stdout;
/// use streamrun_engine::{Sink, WorkerContext};
///
/// let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
/// let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])
///     .map_err(|e| streamrun_engine::Error::arrow("batch", e))?;
/// let ctx = WorkerContext { job: "doc".into(), index: 0, workers: 1, local_workers: 1 };
/// let mut writer = Stdout::table().max_rows(2).open(&ctx, &schema)?;
/// writer.write(&batch)?;
/// writer.finish()?; // prints rows 1 and 2, then "… 1 more rows"
/// # Ok::<(), streamrun_engine::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Stdout {
    max_rows: usize,
    title: Option<String>,
}

impl Stdout {
    /// A sink printing the result as a table.
    pub fn table() -> Self {
        Stdout {
            max_rows: DEFAULT_MAX_ROWS,
            title: None,
        }
    }

    /// Prints `title` and a colon on a line of its own before the table: which result it is,
    /// when a job prints several.
    pub fn titled(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Prints at most `max_rows` rows (default 100); the others are only counted.
    pub fn max_rows(mut self, max_rows: usize) -> Self {
        self.max_rows = max_rows;
        self
    }

    /// The descriptor of this sink for the job's plan: kind `stdout`.
    pub fn descriptor(&self) -> Descriptor {
        let mut config = json!({ "format": "table", "max_rows": self.max_rows });
        if let Some(title) = &self.title {
            config["title"] = json!(title);
        }
        Descriptor::new("stdout", config)
    }
}

impl Sink for Stdout {
    fn open(&self, _ctx: &WorkerContext, _schema: &SchemaRef) -> Result<Box<dyn SinkWriter>> {
        let mut writer = TableWriter::new(self.max_rows);
        writer.title = self.title.clone();
        Ok(Box::new(writer))
    }

    fn parallelism(&self) -> Parallelism {
        Parallelism::Single
    }
}

/// Keeps the first rows and counts all of them.
#[derive(Debug)]
struct TableWriter {
    max_rows: usize,
    title: Option<String>,
    kept: Vec<RecordBatch>,
    kept_rows: usize,
    total_rows: u64,
}

impl TableWriter {
    fn new(max_rows: usize) -> Self {
        TableWriter {
            max_rows,
            title: None,
            kept: Vec::new(),
            kept_rows: 0,
            total_rows: 0,
        }
    }

    /// The table, and the lines after it.
    fn render(&self) -> Result<String> {
        let mut text = self
            .title
            .as_ref()
            .map(|t| format!("{t}:\n"))
            .unwrap_or_default();
        if self.total_rows == 0 {
            text.push_str("(0 rows)\n");
            return Ok(text);
        }
        if self.kept_rows > 0 {
            let table = arrow::util::pretty::pretty_format_batches(&self.kept)
                .map_err(|e| Error::arrow("formatting the result table", e))?;
            text.push_str(&format!("{table}\n"));
        }
        let more = self.total_rows - self.kept_rows as u64;
        if more > 0 {
            text.push_str(&format!("… {more} more rows\n"));
        }
        Ok(text)
    }
}

impl SinkWriter for TableWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.total_rows += batch.num_rows() as u64;
        let room = self.max_rows.saturating_sub(self.kept_rows);
        let take = room.min(batch.num_rows());
        if take > 0 {
            self.kept.push(batch.slice(0, take));
            self.kept_rows += take;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let text = self.render()?;
        let mut stdout = std::io::stdout().lock();
        write!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::io("writing the result table to stdout", e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(values: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    #[test]
    fn a_title_comes_first() {
        let mut writer = TableWriter::new(100);
        writer.title = Some("top terms".into());
        assert_eq!(writer.render().unwrap(), "top terms:\n(0 rows)\n");
        writer.write(&batch(vec![7])).unwrap();
        assert_eq!(
            writer.render().unwrap(),
            "top terms:\n+---+\n| n |\n+---+\n| 7 |\n+---+\n"
        );
    }

    #[test]
    fn prints_a_table() {
        let mut writer = TableWriter::new(100);
        writer.write(&batch(vec![1, 2])).unwrap();
        writer.write(&batch(vec![3])).unwrap();
        let text = writer.render().unwrap();
        assert_eq!(
            text, "+---+\n| n |\n+---+\n| 1 |\n| 2 |\n| 3 |\n+---+\n",
            "{text}"
        );
    }

    #[test]
    fn cuts_rows_beyond_max_rows_but_counts_them() {
        let mut writer = TableWriter::new(3);
        writer.write(&batch(vec![1, 2])).unwrap();
        writer.write(&batch(vec![3, 4, 5])).unwrap();
        writer.write(&batch(vec![6])).unwrap();
        assert_eq!(writer.kept_rows, 3);
        assert_eq!(writer.kept.len(), 2);
        let text = writer.render().unwrap();
        assert!(text.contains("| 3 |"), "{text}");
        assert!(!text.contains("| 4 |"), "{text}");
        assert!(text.ends_with("+---+\n… 3 more rows\n"), "{text}");
    }

    #[test]
    fn empty_result() {
        let mut writer = TableWriter::new(10);
        writer.write(&batch(vec![])).unwrap();
        assert_eq!(writer.render().unwrap(), "(0 rows)\n");
        let mut writer = TableWriter::new(0);
        writer.write(&batch(vec![1])).unwrap();
        assert_eq!(writer.render().unwrap(), "… 1 more rows\n");
    }

    #[test]
    fn runs_on_one_worker() {
        let sink = Stdout::table().max_rows(7);
        assert_eq!(sink.parallelism(), Parallelism::Single);
        let d = sink.descriptor();
        assert_eq!(d.kind, "stdout");
        assert_eq!(d.config["max_rows"], 7);
    }
}
