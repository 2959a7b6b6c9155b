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
    // A store whose cap the object exceeds refuses it before any of it lands.
    let small = Arc::new(
        LocalStore::open(
            "node-c",
            StoreConfig::in_dir(&root.path().join("node-c"), 1 << 20, 1 << 30),
        )
        .expect("store"),
    );
    let too_big = small
        .get_remote(&big_ref, &address, "secret")
        .await
        .expect_err("larger than the cap");
    assert!(too_big.to_string().contains("more than"), "{too_big}");
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
        let reference = client.put(&batch2, 1).expect("put");
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

/// A store served on loopback: the server (to count what it sent), its address, and what
/// stops it.
fn serve(
    store: &Arc<LocalStore>,
) -> (
    ObjectServer,
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let listener = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = ObjectServer::new(Arc::clone(store), "secret".into());
    let handle = tokio::spawn(server.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    (server, address, stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_object_crosses_once_per_node_whatever_its_readers_there() {
    use streamrun_engine::ExchangeStore;
    let root = tempfile::tempdir().expect("root");
    let (a, b) = (store("node-a", root.path()), store("node-b", root.path()));
    let (server_a, address_a, stop_a, handle_a) = serve(&a);
    let (_server_b, address_b, stop_b, handle_b) = serve(&b);
    let batch = common::many_types(5_000);
    let client = |node: &str, store: &Arc<LocalStore>, address: &str| {
        let config = store.config();
        streamrun_store::exchange::ExchangeClient::new(
            node,
            address,
            "secret",
            "job-1",
            (config.memory_dir.clone(), config.spill_dir.clone()),
            0,
        )
        .expect("client")
    };
    let sender = client("node-a", &a, &address_a);
    let readers: Vec<_> = (0..3).map(|_| client("node-b", &b, &address_b)).collect();
    let (a2, b2, expected) = (Arc::clone(&a), Arc::clone(&b), batch.clone());
    tokio::task::spawn_blocking(move || {
        // One object for three readers in another node's processes.
        let reference = sender.put(&expected, 3).expect("put");
        assert_eq!(a2.usage().objects, 1);
        std::thread::scope(|scope| {
            for reader in &readers {
                let (reference, expected) = (&reference, &expected);
                scope.spawn(move || {
                    assert_eq!(&reader.get(reference).expect("get"), expected);
                });
            }
        });
        assert_eq!(a2.usage().objects, 0, "each reader released its reference");
        assert!(
            b2.usage().objects == 1,
            "node b keeps the copy its readers shared"
        );
        assert_eq!(b2.release_owner("job-1").expect("end of job"), 1);
    })
    .await
    .expect("readers");
    assert_eq!(
        server_a.served(),
        1,
        "one transfer for the node's three readers"
    );
    for (stop, handle) in [(stop_a, handle_a), (stop_b, handle_b)] {
        let _ = stop.send(());
        handle.await.expect("server").expect("served");
    }
}
