//! Objects between nodes over Arrow Flight: each node serves its store's objects with
//! `do_get` (the ticket is the object id, the call carries the cluster token), in chunks of
//! bounded size; a remote get keeps the fetched copy in the local store as a cached copy.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightClient, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use crate::{Kind, LocalStore, ObjectId, ObjectRef, Result, StoreError};

/// The largest chunk of an object sent at once, in bytes: transfers are pulled in pieces of
/// about this size, and HTTP/2 flow control bounds the bytes in flight.
pub const CHUNK_BYTES: usize = 2 << 20;

/// The action that asks a node's store to take in an object a process staged.
pub const ADOPT: &str = "adopt";
/// The action that releases a reference to an object (its body: the object's id).
pub const RELEASE: &str = "release";

/// HTTP/2 flow-control windows, in bytes: the most a transfer has in flight before the
/// receiver consumes it. HTTP/2's default of 64 KiB would stall every chunk.
pub const WINDOW_BYTES: u32 = 16 << 20;

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

/// Serves one store's objects over Flight.
#[derive(Clone)]
pub struct ObjectServer {
    store: Arc<LocalStore>,
    token: Arc<String>,
}

impl ObjectServer {
    /// A server of `store`'s objects to callers that carry `token`.
    pub fn new(store: Arc<LocalStore>, token: String) -> Self {
        ObjectServer {
            store,
            token: Arc::new(token),
        }
    }

    fn check<T>(&self, request: &Request<T>) -> std::result::Result<(), Status> {
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        if given.is_some_and(|g| g == self.token.as_str()) {
            Ok(())
        } else {
            tracing::warn!("refused an object fetch without the cluster token");
            Err(Status::unauthenticated("missing or wrong cluster token"))
        }
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpIncoming,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::result::Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .initial_stream_window_size(WINDOW_BYTES)
            .initial_connection_window_size(WINDOW_BYTES)
            .add_service(FlightServiceServer::new(self))
            .serve_with_incoming_shutdown(listener, shutdown)
            .await
    }
}

fn unimplemented<T>(what: &str) -> std::result::Result<T, Status> {
    Err(Status::unimplemented(format!(
        "the object store serves do_get only, not {what}"
    )))
}

#[tonic::async_trait]
impl FlightService for ObjectServer {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        self.check(&request)?;
        let text = String::from_utf8_lossy(&request.get_ref().ticket).into_owned();
        let id: ObjectId = text
            .parse()
            .map_err(|e: StoreError| Status::invalid_argument(e.to_string()))?;
        let batch = match self.store.get_batch(&id) {
            Ok(batch) => batch,
            Err(StoreError::WrongKind { .. }) => {
                let bytes = self
                    .store
                    .get_bytes(&id)
                    .map_err(|e| Status::internal(e.to_string()))?;
                bytes_batch(&bytes).map_err(|e| Status::internal(e.to_string()))?
            }
            Err(StoreError::NotFound(_)) => {
                return Err(Status::not_found(format!(
                    "object {id} is not on this node"
                )));
            }
            Err(e) => return Err(Status::internal(e.to_string())),
        };
        let stream = FlightDataEncoderBuilder::new()
            .with_max_flight_data_size(CHUNK_BYTES)
            // Dictionaries travel as dictionaries, so the copy is exactly the object.
            .with_dictionary_handling(DictionaryHandling::Resend)
            .build(futures::stream::once(async move { Ok(batch) }))
            .map_err(|e| Status::internal(e.to_string()));
        Ok(Response::new(stream.boxed()))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        unimplemented("handshake")
    }
    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        unimplemented("list_flights")
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        unimplemented("get_flight_info")
    }
    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        unimplemented("poll_flight_info")
    }
    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        unimplemented("get_schema")
    }
    async fn do_put(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        unimplemented("do_put")
    }
    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        unimplemented("do_exchange")
    }
    /// `adopt`, body `owner\nid\nbatch|bytes`: a process of this node staged the object in
    /// the memory tier; the store takes it in ([`LocalStore::adopt`]).
    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        self.check(&request)?;
        let action = request.into_inner();
        if action.r#type == RELEASE {
            let id: ObjectId = String::from_utf8_lossy(&action.body)
                .parse()
                .map_err(|e: StoreError| Status::invalid_argument(e.to_string()))?;
            let store = Arc::clone(&self.store);
            tokio::task::spawn_blocking(move || store.release(&id))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| match e {
                    StoreError::NotFound(_) => Status::not_found(e.to_string()),
                    other => Status::internal(other.to_string()),
                })?;
            return Ok(Response::new(futures::stream::empty().boxed()));
        }
        if action.r#type != ADOPT {
            return unimplemented(&format!("the action '{}'", action.r#type));
        }
        let body = String::from_utf8_lossy(&action.body).into_owned();
        let mut parts = body.splitn(3, '\n');
        let (owner, id, kind) = (parts.next(), parts.next(), parts.next());
        let (Some(owner), Some(id), Some(kind)) = (owner, id, kind) else {
            return Err(Status::invalid_argument("adopt takes 'owner\\nid\\nkind'"));
        };
        let id: ObjectId = id
            .parse()
            .map_err(|e: StoreError| Status::invalid_argument(e.to_string()))?;
        let kind = match kind {
            "batch" => Kind::Batch,
            "bytes" => Kind::Bytes,
            other => return Err(Status::invalid_argument(format!("unknown kind '{other}'"))),
        };
        let store = Arc::clone(&self.store);
        let owner = owner.to_owned();
        // Adopting may spill, or wait for room: off the async threads.
        tokio::task::spawn_blocking(move || store.adopt(&owner, id, kind))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                StoreError::Full { .. } => Status::resource_exhausted(e.to_string()),
                other => Status::internal(other.to_string()),
            })?;
        Ok(Response::new(futures::stream::empty().boxed()))
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        unimplemented("list_actions")
    }
}

/// Raw bytes as a one-row batch, to travel over Flight.
fn bytes_batch(bytes: &[u8]) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let column = arrow::array::LargeBinaryArray::from_iter_values([bytes]);
    RecordBatch::try_from_iter([("bytes", Arc::new(column) as arrow::array::ArrayRef)])
}

/// A connection to the node serving objects at `address`, to use for many calls.
pub async fn connect(address: &str) -> std::result::Result<Channel, String> {
    Channel::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES)
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))
}

/// A Flight client of the node at `address` (over `channel` when given, else a new
/// connection), carrying `token`; errors name `object`.
async fn client(
    object: &ObjectRef,
    address: &str,
    token: &str,
    channel: Option<Channel>,
) -> Result<FlightClient> {
    let remote = |reason: String| StoreError::Remote {
        id: object.id,
        node: object.node.clone(),
        address: address.to_owned(),
        reason,
    };
    let channel = match channel {
        Some(c) => c,
        None => connect(address).await.map_err(remote)?,
    };
    // Chunks of up to CHUNK_BYTES, plus their metadata.
    let inner = arrow_flight::flight_service_client::FlightServiceClient::new(channel)
        .max_decoding_message_size(2 * CHUNK_BYTES);
    let mut client = FlightClient::new_from_inner(inner);
    client
        .add_header("authorization", &format!("Bearer {token}"))
        .map_err(|e| remote(e.to_string()))?;
    Ok(client)
}

/// Asks this node's store, serving at `address`, to take in `object`, staged by this process
/// at [`staging_path`](crate::staging_path).
pub async fn adopt(
    object: &ObjectRef,
    kind: Kind,
    address: &str,
    token: &str,
    channel: Option<Channel>,
) -> Result<()> {
    let mut client = client(object, address, token, channel).await?;
    let kind = match kind {
        Kind::Batch => "batch",
        Kind::Bytes => "bytes",
    };
    let body = format!("{}\n{}\n{kind}", object.owner, object.id);
    let results = client
        .do_action(Action::new(ADOPT, body.into_bytes()))
        .await
        .map_err(|e| StoreError::Remote {
            id: object.id,
            node: object.node.clone(),
            address: address.to_owned(),
            reason: e.to_string(),
        })?;
    let _: Vec<_> = results
        .try_collect()
        .await
        .map_err(|e| StoreError::Remote {
            id: object.id,
            node: object.node.clone(),
            address: address.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(())
}

/// Releases a reference to `object` in the store of the node serving at `address`.
pub async fn release(
    object: &ObjectRef,
    address: &str,
    token: &str,
    channel: Option<Channel>,
) -> Result<()> {
    let mut client = client(object, address, token, channel).await?;
    let remote = |e: arrow_flight::error::FlightError| StoreError::Remote {
        id: object.id,
        node: object.node.clone(),
        address: address.to_owned(),
        reason: e.to_string(),
    };
    let results = client
        .do_action(Action::new(RELEASE, object.id.to_string().into_bytes()))
        .await
        .map_err(remote)?;
    let _: Vec<_> = results.try_collect().await.map_err(remote)?;
    Ok(())
}

/// Fetches object `object` from the node serving it at `address` (`host:port`), carrying
/// `token`. An unreachable node, a refused token or a missing object is an error naming the
/// object, the node and the address.
pub async fn fetch(object: &ObjectRef, address: &str, token: &str) -> Result<RecordBatch> {
    fetch_over(object, address, token, None).await
}

/// [`fetch`] over an open connection to the node, when there is one.
pub async fn fetch_over(
    object: &ObjectRef,
    address: &str,
    token: &str,
    channel: Option<Channel>,
) -> Result<RecordBatch> {
    let remote = |reason: String| StoreError::Remote {
        id: object.id,
        node: object.node.clone(),
        address: address.to_owned(),
        reason,
    };
    let mut client = client(object, address, token, channel).await?;
    let stream = client
        .do_get(Ticket::new(object.id.to_string()))
        .await
        .map_err(|e| remote(e.to_string()))?;
    let batches: Vec<RecordBatch> = stream
        .try_collect()
        .await
        .map_err(|e| remote(e.to_string()))?;
    let schema = batches
        .first()
        .map(RecordBatch::schema)
        .ok_or_else(|| remote("the node sent no data".into()))?;
    concat_batches(&schema, &batches).map_err(|e| remote(e.to_string()))
}

impl LocalStore {
    /// The batch `object`: read in place when this store holds it (its own, or a cached
    /// copy), else fetched from the node at `address` and kept here as a cached copy, which
    /// later gets read in place.
    pub async fn get_remote(
        &self,
        object: &ObjectRef,
        address: &str,
        token: &str,
    ) -> Result<RecordBatch> {
        if self.contains(&object.id) {
            return self.get_batch(&object.id);
        }
        let batch = fetch(object, address, token).await?;
        // Caching is best-effort: without room, the fetched batch is still the answer.
        let cached = crate::encode(&batch)
            .and_then(|encoded| self.put_cached(object.id, Kind::Batch, &encoded));
        if let Err(e) = cached {
            tracing::debug!(object = %object.id, error = %e, "not cached");
        }
        Ok(batch)
    }
}
