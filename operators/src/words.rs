//! `split_words`: turns a text column into one row per word.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use streamrun_engine::{
    Collector, Descriptor, Error, Operator, OperatorFactory, Result, WorkerContext, column_indices,
};

/// Splits a text column into words: split on Unicode whitespace, lowercase, trim leading and
/// trailing characters that are not alphanumeric, drop what is left empty. Emits one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitWords {
    /// The text column read.
    pub column: String,
    /// The name of the word column written.
    pub output: String,
}

impl SplitWords {
    /// Splits `column` into words written as `output`.
    pub fn new(column: impl Into<String>, output: impl Into<String>) -> Self {
        SplitWords {
            column: column.into(),
            output: output.into(),
        }
    }

    /// The plan descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "split_words",
            serde_json::json!({ "column": self.column, "output": self.output }),
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

/// Appends the words of `text` to `out`, normalised as [`SplitWords`] documents.
pub fn push_words(text: &str, lower: &mut String, out: &mut StringBuilder) -> usize {
    let mut n = 0;
    for raw in text.split_whitespace() {
        let word = raw.trim_matches(|c: char| !c.is_alphanumeric());
        if word.is_empty() {
            continue;
        }
        if word.is_ascii() {
            lower.clear();
            lower.push_str(word);
            lower.make_ascii_lowercase();
            out.append_value(lower.as_str());
        } else {
            out.append_value(word.to_lowercase());
        }
        n += 1;
    }
    n
}

impl OperatorFactory for SplitWords {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        self.index(input)?;
        Ok(Arc::new(Schema::new(vec![Field::new(
            &self.output,
            DataType::Utf8,
            false,
        )])))
    }

    fn create(&self, _ctx: &WorkerContext, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(SplitWordsInstance {
            index: self.index(input)?,
            schema: self.output_schema(input)?,
            lower: String::new(),
        }))
    }
}

struct SplitWordsInstance {
    index: usize,
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
        for line in text.iter().flatten() {
            push_words(line, &mut self.lower, &mut words);
        }
        let words = RecordBatch::try_new(Arc::clone(&self.schema), vec![Arc::new(words.finish())])
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
}
