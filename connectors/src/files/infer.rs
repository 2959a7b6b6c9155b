//! Schema inference for CSV and JSON lines files.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use arrow::csv::reader::Format;
use arrow::datatypes::{Schema, SchemaRef};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use streamrun_engine::{Error, Result};

use super::lines::{MAX_LINE_BYTES, read_line};
use super::{arrow_message, display};

/// How many records (CSV) or lines (JSON) inference reads.
pub(crate) const INFER_RECORDS: usize = 1000;

fn open(path: &Path) -> Result<BufReader<File>> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", display(path)), e))?;
    Ok(BufReader::new(file))
}

/// Infers the schema of a CSV file from its first records, with arrow's CSV inference.
///
/// Records with a wrong number of fields do not stop inference (they are reported when
/// read); a file without any column is an error.
pub(crate) fn csv_schema(path: &Path, has_header: bool, delimiter: u8) -> Result<SchemaRef> {
    let format = Format::default()
        .with_header(has_header)
        .with_delimiter(delimiter)
        .with_truncated_rows(true);
    let (schema, _) = format
        .infer_schema(open(path)?, Some(INFER_RECORDS))
        .map_err(|e| inference_failed(path, &e))?;
    if schema.fields().is_empty() {
        return Err(Error::Input(format!(
            "cannot infer the schema of {}: the file is empty (give the schema with .schema(..))",
            display(path)
        )));
    }
    Ok(Arc::new(schema))
}

/// Infers the schema of a JSON lines file from its first lines, with arrow's JSON inference.
///
/// Lines that are not JSON objects are left out of the sample (they are reported when read);
/// a file without any object among them is an error.
pub(crate) fn json_schema(path: &Path) -> Result<SchemaRef> {
    let mut reader = open(path)?;
    let mut line = Vec::new();
    let mut values = Vec::new();
    let mut seen = 0;
    let mut line_number = 0u64;
    // Where each field first appears: arrow's inference sorts the fields by name.
    let mut order: HashMap<String, usize> = HashMap::new();
    while seen < INFER_RECORDS {
        line.clear();
        line_number += 1;
        let n = read_line(&mut reader, &mut line)
            .map_err(|e| Error::io(format!("reading {}", display(path)), e))?;
        if n == 0 {
            break;
        }
        if n >= MAX_LINE_BYTES && !line.ends_with(b"\n") {
            return Err(Error::Input(format!(
                "{}:{line_number}: line longer than {} MiB",
                display(path),
                MAX_LINE_BYTES >> 20
            )));
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        seen += 1;
        if let Ok(value @ serde_json::Value::Object(_)) =
            serde_json::from_slice::<serde_json::Value>(&line)
        {
            values.push(value);
            if let Ok(keys) = serde_json::from_slice::<Keys>(&line) {
                for key in keys.0 {
                    if !order.contains_key(&key) {
                        let position = order.len();
                        order.insert(key, position);
                    }
                }
            }
        }
    }
    if values.is_empty() {
        return Err(Error::Input(format!(
            "cannot infer the schema of {}: no JSON object among its first {INFER_RECORDS} lines \
             (give the schema with .schema(..))",
            display(path)
        )));
    }
    let schema = arrow::json::reader::infer_json_schema_from_iterator(values.iter().map(Ok))
        .map_err(|e| inference_failed(path, &e))?;
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    fields.sort_by_key(|f| order.get(f.name()).copied().unwrap_or(usize::MAX));
    let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
    if schema.fields().is_empty() {
        return Err(Error::Input(format!(
            "cannot infer the schema of {}: its objects have no field",
            display(path)
        )));
    }
    Ok(Arc::new(schema))
}

/// The top-level keys of a JSON object, in order.
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct KeysVisitor;
        impl<'de> Visitor<'de> for KeysVisitor {
            type Value = Keys;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(Keys(keys))
            }
        }
        deserializer.deserialize_map(KeysVisitor)
    }
}

/// The error of a schema inference that Arrow refused, naming the file.
fn inference_failed(path: &Path, e: &arrow::error::ArrowError) -> Error {
    Error::Input(format!(
        "cannot infer the schema of {}: {}",
        display(path),
        arrow_message(e)
    ))
}
