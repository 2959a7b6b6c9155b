//! Test data shared by the store's tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Decimal128Array, DictionaryArray, FixedSizeBinaryArray,
    Float64Array, Int8Array, Int32Array, Int64Array, LargeStringArray, ListArray, RecordBatch,
    StringArray, StructArray, TimestampMillisecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int32Type};

/// A batch of `rows` rows with columns of many Arrow types: integers, floats, booleans and
/// strings with nulls, large strings, binary, fixed-size binary, decimals, timestamps, a
/// dictionary, a list and a struct.
pub fn many_types(rows: usize) -> RecordBatch {
    let n = rows as i64;
    let strings: Vec<Option<String>> = (0..n)
        .map(|i| (i % 7 != 0).then(|| format!("row {i} {}", "é".repeat((i % 5) as usize))))
        .collect();
    let list = ListArray::from_iter_primitive::<Int32Type, _, _>(
        (0..n).map(|i| (i % 4 != 0).then(|| (0..(i % 3) as i32).map(Some).collect::<Vec<_>>())),
    );
    let strukt = StructArray::from(vec![
        (
            Arc::new(Field::new("a", DataType::Int32, false)),
            Arc::new(Int32Array::from_iter_values((0..n).map(|i| i as i32 * 3))) as ArrayRef,
        ),
        (
            Arc::new(Field::new("b", DataType::Utf8, true)),
            Arc::new(StringArray::from(strings.clone())) as ArrayRef,
        ),
    ]);
    let dictionary: DictionaryArray<Int32Type> = (0..n)
        .map(|i| ["north", "south", "east"][(i % 3) as usize])
        .collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "i8",
            Arc::new(Int8Array::from_iter_values((0..n).map(|i| (i % 100) as i8))),
        ),
        (
            "i64",
            Arc::new(Int64Array::from_iter(
                (0..n).map(|i| (i % 9 != 0).then_some(i * 1_000_003)),
            )),
        ),
        (
            "u64",
            Arc::new(UInt64Array::from_iter_values(
                (0..n).map(|i| u64::MAX - i as u64),
            )),
        ),
        (
            "f64",
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| i as f64 / 7.0),
            )),
        ),
        (
            "bool",
            Arc::new(BooleanArray::from_iter(
                (0..n).map(|i| (i % 5 != 0).then_some(i % 2 == 0)),
            )),
        ),
        ("utf8", Arc::new(StringArray::from(strings))),
        (
            "large_utf8",
            Arc::new(LargeStringArray::from_iter_values(
                (0..n).map(|i| "x".repeat((i % 50) as usize)),
            )),
        ),
        (
            "binary",
            Arc::new(BinaryArray::from_iter_values(
                (0..n).map(|i| i.to_le_bytes()),
            )),
        ),
        (
            "fixed",
            Arc::new(
                FixedSizeBinaryArray::try_from_iter((0..n).map(|i| (i as i32).to_be_bytes()))
                    .expect("fixed"),
            ),
        ),
        (
            "decimal",
            Arc::new(
                Decimal128Array::from_iter_values((0..n).map(|i| i as i128 * 12345))
                    .with_precision_and_scale(20, 2)
                    .expect("decimal"),
            ),
        ),
        (
            "time",
            Arc::new(TimestampMillisecondArray::from_iter_values(
                (0..n).map(|i| 1_700_000_000_000 + i),
            )),
        ),
        ("dictionary", Arc::new(dictionary)),
        ("list", Arc::new(list)),
        ("struct", Arc::new(strukt)),
    ];
    RecordBatch::try_from_iter(columns).expect("batch")
}

/// The address ranges this process maps from `path`.
pub fn mappings_of(path: &Path) -> Vec<(usize, usize)> {
    let target = std::fs::canonicalize(path).expect("path");
    std::fs::read_to_string("/proc/self/maps")
        .expect("maps")
        .lines()
        .filter(|l| l.ends_with(target.to_string_lossy().as_ref()))
        .filter_map(|l| {
            let (start, end) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

/// Whether every buffer of every column (children and dictionaries included) lies in one of
/// `ranges`, and there is a range.
pub fn all_buffers_in(batch: &RecordBatch, ranges: &[(usize, usize)]) -> bool {
    fn check(data: &arrow::array::ArrayData, ranges: &[(usize, usize)]) -> bool {
        data.buffers().iter().all(|b| {
            let p = b.as_ptr() as usize;
            b.is_empty() || ranges.iter().any(|(s, e)| p >= *s && p + b.len() <= *e)
        }) && data.child_data().iter().all(|c| check(c, ranges))
    }
    !ranges.is_empty() && batch.columns().iter().all(|c| check(&c.to_data(), ranges))
}
