//! `split_words`: turns a text column into one row per word.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    Collector, Descriptor, Error, Operator, OperatorFactory, Result, WorkerContext, column_indices,
};

/// Splits a text column into words: split on Unicode whitespace, lowercase, trim leading and
/// trailing characters that are not alphanumeric, drop what is left empty. Emits the word
/// column, after the columns it [keeps](SplitWords::keep) (repeated for each word of their row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitWords {
    /// The text column read.
    pub column: String,
    /// The name of the word column written.
    pub output: String,
    /// Columns of the input carried to each word's row (before the word column).
    #[serde(default)]
    pub keep: Vec<String>,
}

impl SplitWords {
    /// Splits `column` into words written as `output`.
    pub fn new(column: impl Into<String>, output: impl Into<String>) -> Self {
        SplitWords {
            column: column.into(),
            output: output.into(),
            keep: Vec::new(),
        }
    }

    /// Carries these input columns to each word's row (a page's host with its words).
    pub fn keep<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.keep = columns.into_iter().map(Into::into).collect();
        self
    }

    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "split_words",
            if self.keep.is_empty() {
                serde_json::json!({ "column": self.column, "output": self.output })
            } else {
                serde_json::json!({ "column": self.column, "output": self.output, "keep": self.keep })
            },
        )
    }

    fn index(&self, input: &SchemaRef) -> Result<usize> {
        let index = column_indices(input, std::slice::from_ref(&self.column), "split_words")?[0];
        match input.field(index).data_type() {
            DataType::Utf8 => Ok(index),
            other => Err(Error::Plan(format!(
                "split_words: column '{}' is {other}, not text (Utf8)",
                self.column
            ))),
        }
    }
}

/// Trims characters that are not alphanumeric from both ends of `raw`, looking at bytes while
/// they are ASCII and at characters otherwise.
fn trim_word(raw: &str) -> &str {
    let bytes = raw.as_bytes();
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii() || b.is_ascii_alphanumeric())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii() || b.is_ascii_alphanumeric())
        .map_or(start, |i| i + 1);
    let word = &raw[start..end.max(start)];
    if word.as_bytes().first().is_some_and(|b| !b.is_ascii())
        || word.as_bytes().last().is_some_and(|b| !b.is_ascii())
    {
        // A non-ASCII character at an edge: it may be punctuation (an em dash, a quote mark).
        word.trim_matches(|c: char| !c.is_alphanumeric())
    } else {
        word
    }
}

/// Appends an ASCII word, lowercased through `lower` when it has upper-case letters.
fn push_ascii_word(word: &str, has_upper: bool, lower: &mut String, out: &mut StringBuilder) {
    if has_upper {
        lower.clear();
        lower.push_str(word);
        lower.make_ascii_lowercase();
        out.append_value(lower.as_str());
    } else {
        out.append_value(word);
    }
}

/// Appends one trimmed, non-empty word, lowercased.
fn push_word(word: &str, lower: &mut String, out: &mut StringBuilder) {
    if word.is_ascii() {
        let has_upper = word.bytes().any(|b| b.is_ascii_uppercase());
        push_ascii_word(word, has_upper, lower, out);
    } else {
        out.append_value(word.to_lowercase());
    }
}

/// Byte classes for the ASCII fast path: whitespace as [`char::is_whitespace`] defines it
/// (which, unlike [`u8::is_ascii_whitespace`], includes the vertical tab), alphanumeric, and
/// upper case.
const SPACE: u8 = 1;
const ALNUM: u8 = 2;
const UPPER: u8 = 4;

static CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
            SPACE
        } else if c.is_ascii_uppercase() {
            ALNUM | UPPER
        } else if c.is_ascii_alphanumeric() {
            ALNUM
        } else {
            0
        };
        b += 1;
    }
    table
};

#[inline]
fn class(b: u8) -> u8 {
    CLASSES[b as usize]
}

/// Appends the words of `text` to `out`, normalised as [`SplitWords`] documents; returns how
/// many. ASCII lines, the common case, are split on bytes; others on Unicode whitespace.
pub fn push_words(text: &str, lower: &mut String, out: &mut StringBuilder) -> usize {
    let mut n = 0;
    if text.is_ascii() {
        let bytes = text.as_bytes();
        let len = bytes.len();
        let mut i = 0;
        while i < len {
            while i < len && class(bytes[i]) & SPACE != 0 {
                i += 1;
            }
            let start = i;
            let mut classes = 0;
            while i < len && class(bytes[i]) & SPACE == 0 {
                classes |= class(bytes[i]);
                i += 1;
            }
            if classes & ALNUM == 0 {
                // Empty, or punctuation only.
                continue;
            }
            let raw = &bytes[start..i];
            let from = raw.iter().position(|&b| class(b) & ALNUM != 0).unwrap_or(0);
            let to = raw
                .iter()
                .rposition(|&b| class(b) & ALNUM != 0)
                .unwrap_or(0);
            let word = &text[start + from..start + to + 1];
            push_ascii_word(word, classes & UPPER != 0, lower, out);
            n += 1;
        }
    } else {
        for raw in text.split_whitespace() {
            let word = trim_word(raw);
            if !word.is_empty() {
                push_word(word, lower, out);
                n += 1;
            }
        }
    }
    n
}

impl OperatorFactory for SplitWords {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        self.index(input)?;
        let kept = column_indices(input, &self.keep, "split_words")?;
        let mut fields: Vec<Field> = kept.iter().map(|&k| input.field(k).clone()).collect();
        if fields.iter().any(|f| f.name() == &self.output) {
            return Err(Error::Plan(format!(
                "split_words: the word column '{}' is also a kept column",
                self.output
            )));
        }
        fields.push(Field::new(&self.output, DataType::Utf8, false));
        Ok(Arc::new(Schema::new(fields)))
    }

    fn create(&self, _ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(SplitWordsInstance {
            index: self.index(input)?,
            kept: column_indices(input, &self.keep, "split_words")?,
            schema: self.output_schema(input)?,
            lower: String::new(),
        }))
    }
}

struct SplitWordsInstance {
    index: usize,
    kept: Vec<usize>,
    schema: SchemaRef,
    lower: String,
}

impl Operator for SplitWordsInstance {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()> {
        let text = batch
            .column(self.index)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| Error::Internal("split_words input is not Utf8".into()))?;
        let mut words = StringBuilder::with_capacity(text.len() * 8, text.values().len());
        let mut columns: Vec<arrow::array::ArrayRef> = Vec::with_capacity(self.kept.len() + 1);
        if self.kept.is_empty() {
            for line in text.iter().flatten() {
                push_words(line, &mut self.lower, &mut words);
            }
        } else {
            // The row each word came from, to repeat the kept columns.
            let mut rows = Vec::new();
            for (row, line) in text.iter().enumerate() {
                let n = line.map_or(0, |l| push_words(l, &mut self.lower, &mut words));
                rows.extend(std::iter::repeat_n(row as u32, n));
            }
            let rows = arrow::array::UInt32Array::from(rows);
            for &k in &self.kept {
                columns.push(
                    arrow::compute::take(batch.column(k), &rows, None)
                        .map_err(|e| Error::arrow("split_words", e))?,
                );
            }
        }
        columns.push(Arc::new(words.finish()));
        let words = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| Error::arrow("split_words", e))?;
        out.emit(words);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_trimmed_lowercased_and_never_empty() {
        let mut b = StringBuilder::new();
        let mut lower = String::new();
        push_words(
            "  Hello, WORLD!  -- don't  Ünïcode—dash ",
            &mut lower,
            &mut b,
        );
        let words = b.finish();
        let got: Vec<&str> = words.iter().flatten().collect();
        assert_eq!(got, vec!["hello", "world", "don't", "ünïcode—dash"]);
    }

    #[test]
    fn kept_columns_repeat_for_each_word_of_their_row() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
                Arc::new(StringArray::from(vec![
                    Some("one Two"),
                    None,
                    Some(" -- "),
                    Some("three"),
                ])),
            ],
        )
        .expect("batch");
        let split = SplitWords::new("text", "word").keep(["host"]);
        let mut op = split
            .create(
                &WorkerContext {
                    job: "t".into(),
                    index: 0,
                    workers: 1,
                    local_workers: 1,
                },
                &schema,
            )
            .expect("create");
        let mut out = Collector::new();
        op.process_batch(batch, &mut out).expect("process");
        let got = out.take();
        let got = &got[0];
        assert_eq!(got.schema().field(0).name(), "host");
        let column = |i: usize| -> Vec<String> {
            got.column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("text")
                .iter()
                .map(|v| v.unwrap_or_default().to_string())
                .collect()
        };
        assert_eq!(column(0), ["a", "a", "d"]);
        assert_eq!(column(1), ["one", "two", "three"]);
    }
}
