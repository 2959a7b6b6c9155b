//! Objects built in store memory: batches built in place read back exactly and in place,
//! large puts copied into built files equal their source, and what cannot be built in place
//! is refused with the room given back.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBufferBuilder, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use streamrun_store::{LocalStore, StoreConfig, StoreError};

mod common;
use common::{all_buffers_in, many_types, mappings_of};

fn store(root: &Path) -> LocalStore {
    LocalStore::open("test-node", StoreConfig::in_dir(root, 256 << 20, 256 << 20)).expect("store")
}

/// Whether every buffer of `batch` lies in this process's mapping of the file at `path`.
fn buffers_in_file(batch: &RecordBatch, path: &Path) -> bool {
    all_buffers_in(batch, &mappings_of(path))
}

#[test]
fn a_batch_built_in_place_reads_back_exactly_and_in_place() {
    let root = tempfile::tempdir().expect("root");
    let store = store(root.path());
    let rows = 10_000usize;
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new_list("list", Field::new_list_field(DataType::Int32, true), false),
    ]));
    // The oracle: the same columns built the ordinary way.
    let names: Vec<Option<String>> = (0..rows)
        .map(|i| (i % 3 != 0).then(|| format!("name-{i}")))
        .collect();
    let lists: Vec<Option<Vec<Option<i32>>>> = (0..rows)
        .map(|i| Some((0..(i % 4) as i32).map(Some).collect()))
        .collect();
    let expected = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(
                (0..rows as i64).map(|i| i * i),
            )),
            Arc::new(StringArray::from(names.clone())),
            Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(lists)),
        ],
    )
    .expect("expected");

    let text: usize = names.iter().flatten().map(String::len).sum();
    let list_values: usize = (0..rows).map(|i| i % 4).sum();
    let capacity = rows * 8
        + (rows + 1) * 4
        + text
        + rows.div_ceil(8)
        + (rows + 1) * 4
        + list_values * 4
        + 6 * 64;
    let mut builder = store
        .batch_builder("job-1", schema, capacity)
        .expect("builder");

    let mut n = builder.alloc(rows * 8).expect("n");
    for (i, v) in n.typed_mut::<i64>().iter_mut().enumerate() {
        *v = (i * i) as i64;
    }
    let n = Int64Array::new(ScalarBuffer::new(n.freeze(), 0, rows), None);

    let mut offsets = builder.alloc((rows + 1) * 4).expect("offsets");
    let mut values = builder.alloc(text).expect("values");
    let mut validity = builder.alloc(rows.div_ceil(8)).expect("validity");
    let mut bits = BooleanBufferBuilder::new(rows);
    {
        let (offsets, values) = (offsets.typed_mut::<i32>(), values.as_mut_slice());
        let mut at = 0usize;
        for (i, name) in names.iter().enumerate() {
            offsets[i] = at as i32;
            bits.append(name.is_some());
            if let Some(name) = name {
                values[at..at + name.len()].copy_from_slice(name.as_bytes());
                at += name.len();
            }
        }
        offsets[rows] = at as i32;
    }
    validity
        .as_mut_slice()
        .copy_from_slice(bits.finish().values());
    let nulls = NullBuffer::new(arrow::buffer::BooleanBuffer::new(
        validity.freeze(),
        0,
        rows,
    ));
    let name = StringArray::try_new(
        OffsetBuffer::new(ScalarBuffer::new(offsets.freeze(), 0, rows + 1)),
        values.freeze(),
        Some(nulls),
    )
    .expect("strings");

    let mut list_offsets = builder.alloc((rows + 1) * 4).expect("list offsets");
    let mut items = builder.alloc(list_values * 4).expect("items");
    {
        let (offsets, items) = (list_offsets.typed_mut::<i32>(), items.typed_mut::<i32>());
        let mut at = 0usize;
        for (i, offset) in offsets.iter_mut().take(rows).enumerate() {
            *offset = at as i32;
            for v in 0..(i % 4) {
                items[at] = v as i32;
                at += 1;
            }
        }
        offsets[rows] = at as i32;
    }
    let items = Int32Array::new(ScalarBuffer::new(items.freeze(), 0, list_values), None);
    let list = ListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Int32, true)),
        OffsetBuffer::new(ScalarBuffer::new(list_offsets.freeze(), 0, rows + 1)),
        Arc::new(items),
        None,
    )
    .expect("list");

    let object = builder
        .finish(&[Arc::new(n), Arc::new(name), Arc::new(list)])
        .expect("finish");
    let back = store.get_batch(&object.id).expect("get");
    assert_eq!(back, expected);
    let path = store.location(&object.id).expect("location");
    assert!(buffers_in_file(&back, &path), "a get copies nothing");
    assert_eq!(
        store.reader().get_batch(&object.id).expect("reader"),
        expected
    );
    // The account is the published file, not the room asked for.
    let size = std::fs::metadata(&path).expect("file").len();
    assert_eq!(store.usage().memory_used, size);
    // Any Arrow reader reads the file.
    let file = std::fs::File::open(&path).expect("open");
    let read: Vec<RecordBatch> = arrow::ipc::reader::FileReader::try_new(file, None)
        .expect("reader")
        .collect::<Result<_, _>>()
        .expect("batches");
    assert_eq!(read, vec![expected]);
}

#[test]
fn large_puts_copy_into_a_built_file_and_equal_their_source() {
    let root = tempfile::tempdir().expect("root");
    let store = store(root.path());
    // Large enough for the parallel copy; the dictionary column goes the encoded way.
    let all = many_types(300_000);
    assert!(all.get_array_memory_size() > 16 << 20);
    let dictionary = all.schema().index_of("dictionary").expect("column");
    let plain = all
        .project(
            &(0..all.num_columns())
                .filter(|i| *i != dictionary)
                .collect::<Vec<_>>(),
        )
        .expect("project");
    for batch in [&plain, &all, &plain.slice(1_000, 200_000)] {
        let object = store.put_batch("job-1", batch).expect("put");
        let back = store.get_batch(&object.id).expect("get");
        assert_eq!(&back, batch);
        let path = store.location(&object.id).expect("location");
        assert!(buffers_in_file(&back, &path));
        assert_eq!(
            &store.reader().get_batch(&object.id).expect("reader"),
            batch
        );
        store.delete(&object.id).expect("delete");
    }
    assert_eq!(store.usage().memory_used, 0);
}

#[test]
fn what_cannot_be_built_in_place_is_refused_and_gives_its_room_back() {
    let root = tempfile::tempdir().expect("root");
    let store = store(root.path());
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));

    // A buffer from elsewhere.
    let mut builder = store
        .batch_builder("job-1", schema.clone(), 1024)
        .expect("builder");
    assert!(store.usage().memory_used > 1024);
    let _unused = builder.alloc(64).expect("alloc");
    let outside: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
    let err = builder.finish(&[outside]).expect_err("outside");
    assert!(err.to_string().contains("column 'n'"), "{err}");
    assert_eq!(store.usage().memory_used, 0, "the room comes back");
    assert_eq!(store.usage().objects, 0);

    // More than the capacity.
    let mut builder = store
        .batch_builder("job-1", schema.clone(), 1024)
        .expect("builder");
    builder.alloc(1000).expect("fits");
    assert!(matches!(
        builder.alloc(100),
        Err(StoreError::Capacity { .. })
    ));
    drop(builder);
    assert_eq!(store.usage().memory_used, 0);

    // Types whose layout is more than buffers.
    let dictionary = Arc::new(Schema::new(vec![Field::new(
        "d",
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        false,
    )]));
    let err = store
        .batch_builder("job-1", dictionary, 1024)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("put the batch instead"), "{err}");

    // Nothing was left behind in the memory tier.
    let left = std::fs::read_dir(&store.config().memory_dir)
        .expect("dir")
        .count();
    assert_eq!(left, 0);
}
