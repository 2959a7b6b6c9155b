//! Objects between two nodes' stores over Arrow Flight, on loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use streamrun_store::flight::ObjectServer;
use streamrun_store::{LocalStore, StoreConfig, StoreError};
use tonic::transport::server::TcpIncoming;

mod common;

fn store(node: &str, root: &std::path::Path) -> Arc<LocalStore> {
    Arc::new(
        LocalStore::open(
            node,
            StoreConfig::in_dir(&root.join(node), 256 << 20, 1 << 30),
        )
        .expect("store"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_get_fetches_exactly_caches_and_fails_clearly() {
    let root = tempfile::tempdir().expect("root");
    let (a, b) = (store("node-a", root.path()), store("node-b", root.path()));
    let listener = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ObjectServer::new(Arc::clone(&a), "secret".into()).serve(
        listener,
        async {
            let _ = stopped.await;
        },
    ));

    let typed = common::many_types(3_000);
    let typed_ref = a.put_batch("job", &typed).expect("put");
    // 48 MiB: many chunks.
    let big = RecordBatch::try_from_iter([(
        "v",
        Arc::new(Int64Array::from_iter_values(0..(6 << 20))) as ArrayRef,
    )])
    .expect("batch");
    let big_ref = a.put_batch("job", &big).expect("put");
    let bytes_ref = a.put_bytes("job", b"some bytes").expect("put");
    let missing = b.put_bytes("job", b"x").expect("put");

    assert_eq!(
        b.get_remote(&typed_ref, &address, "secret")
            .await
            .expect("fetch"),
        typed
    );
    assert!(b.contains(&typed_ref.id), "the copy is cached");
    assert_eq!(
        b.get_remote(&big_ref, &address, "secret")
            .await
            .expect("fetch"),
        big
    );
    let wrapped = streamrun_store::flight::fetch(&bytes_ref, &address, "secret")
        .await
        .expect("bytes");
    assert_eq!(wrapped.num_rows(), 1);

    let refused = streamrun_store::flight::fetch(&typed_ref, &address, "wrong")
        .await
        .expect_err("token");
    assert!(refused.to_string().contains("token"), "{refused}");
    // An object node-a does not have.
    let mut elsewhere = missing.clone();
    elsewhere.node = "node-a".into();
    b.delete(&missing.id).expect("delete");
    let absent = b
        .get_remote(&elsewhere, &address, "secret")
        .await
        .expect_err("absent");
    assert!(absent.to_string().contains("not on this node"), "{absent}");

    // Node a goes away: what b cached still reads; anything else is a clear error.
    let _ = stop.send(());
    server.await.expect("server").expect("served");
    assert_eq!(
        b.get_remote(&typed_ref, &address, "secret")
            .await
            .expect("cached"),
        typed
    );
    let gone = b
        .get_remote(&bytes_ref, &address, "secret")
        .await
        .expect_err("dead node");
    assert!(matches!(gone, StoreError::Remote { .. }));
    let message = gone.to_string();
    assert!(
        message.contains("node-a") && message.contains(&address),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchanged_batch_goes_once_its_receiver_has_read_it() {
    use streamrun_engine::ExchangeStore;
    let root = tempfile::tempdir().expect("root");
    let node = store("node-a", root.path());
    let listener = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ObjectServer::new(Arc::clone(&node), "secret".into()).serve(
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let config = node.config().clone();
    let batch = common::many_types(1_000);
    let (node2, address2, batch2) = (Arc::clone(&node), address.clone(), batch.clone());
    // The client blocks on its own runtime: run it off this one.
    tokio::task::spawn_blocking(move || {
        let client = streamrun_store::exchange::ExchangeClient::new(
            "node-a",
            &address2,
            "secret",
            "job-1",
            (config.memory_dir.clone(), config.spill_dir.clone()),
            0,
        )
        .expect("client");
        let reference = client.put(&batch2).expect("put");
        assert_eq!(node2.usage().objects, 1, "adopted by the node's store");
        assert_eq!(client.get(&reference).expect("get"), batch2);
        assert_eq!(node2.usage().objects, 0, "released once read");
        // A second read of a released object is a clear error, not a wrong batch.
        assert!(client.get(&reference).is_err());
    })
    .await
    .expect("client thread");
    let _ = stop.send(());
    server.await.expect("server").expect("served");
}
