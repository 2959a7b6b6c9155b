//! Objects between nodes over Arrow Flight: each node serves its store's objects with
//! `do_get` (the ticket is the object id, the call carries the cluster token), in chunks of
//! bounded size; a remote get keeps the fetched copy in the local store as a cached copy.
//!
//! An object travels as it is stored: a batch as its Arrow IPC file, cut into chunks of at
//! most [`CHUNK_BYTES`] that are slices of the sender's mapping. The first chunk's
//! `app_metadata` says what follows (`batch <bytes>` or `bytes <bytes>`). The receiver puts
//! the chunks together, checks the batch once (every offset and string), and keeps the file
//! as it came: nothing is decoded and encoded again on either side.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
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
/// The action that asks a node's store to fetch another node's object and keep a copy, for
/// this node's processes to read in place (body: `node\naddress\nid\nowner`).
pub const PULL: &str = "pull";

/// HTTP/2 flow-control windows, in bytes: the most a transfer has in flight before the
/// receiver consumes it. HTTP/2's default of 64 KiB would stall every chunk.
pub const WINDOW_BYTES: u32 = 16 << 20;

/// Up to this size, a fetch takes room for the whole object at once; a larger one grows as
/// chunks arrive, so a wrong announcement cannot make it take more than it receives.
const MAX_PRESIZE: usize = 1 << 30;

/// How often an idle connection is checked: a peer that stops answering is dropped after
/// twice this, and the transfers on it fail.
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// The largest HTTP/2 frame each side accepts. HTTP/2's default of 16 KiB cuts a chunk into
/// 128 frames, each handled on its own.
pub const FRAME_BYTES: u32 = 1 << 20;

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

/// Serves one store's objects over Flight.
#[derive(Clone)]
pub struct ObjectServer {
    store: Arc<LocalStore>,
    token: Arc<String>,
    /// Objects sent by `do_get`.
    served: Arc<std::sync::atomic::AtomicU64>,
    /// Pulls under way, by object: a second pull of the same object waits for the first.
    pulls: Arc<Gates>,
}

impl ObjectServer {
    /// A server of `store`'s objects to callers that carry `token`.
    pub fn new(store: Arc<LocalStore>, token: String) -> Self {
        ObjectServer {
            store,
            token: Arc::new(token),
            served: Arc::default(),
            pulls: Arc::default(),
        }
    }

    /// How many objects this server (and its clones) sent to other nodes.
    pub fn served(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Brings `object` from the node serving at `address` into this store, once however
    /// many processes of the node ask at the same time.
    async fn pull(&self, object: &ObjectRef, address: &str) -> std::result::Result<(), Status> {
        let gate = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(pulls.entry(object.id).or_default())
        };
        // The gate leaves the table when this pull ends however it ends (a caller that goes
        // away drops it mid-way), and only if it is still this one.
        let _forget = ForgetGate {
            pulls: &self.pulls,
            id: object.id,
            gate: Arc::clone(&gate),
        };
        let pulled = {
            let _turn = gate.lock().await;
            if self.store.contains(&object.id) {
                Ok(())
            } else {
                match self
                    .store
                    .fetch_batch_file(object, address, &self.token)
                    .await
                {
                    Ok(stored) => {
                        // Checking and caching read and write the whole object: off the
                        // async threads.
                        let (store, fetched) = (Arc::clone(&self.store), object.clone());
                        tokio::task::spawn_blocking(move || {
                            store.keep_fetched(&fetched, stored).map(|_| ())
                        })
                        .await
                        .unwrap_or_else(|e| {
                            Err(StoreError::Remote {
                                id: object.id,
                                node: object.node.clone(),
                                address: address.to_owned(),
                                reason: format!("keeping the copy: {e}"),
                            })
                        })
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match pulled {
            // Fetched, but no room to keep it: the asker fetches its own copy.
            Ok(()) if !self.store.contains(&object.id) => Err(Status::resource_exhausted(format!(
                "no room to keep a copy of object {}",
                object.id
            ))),
            Ok(()) => Ok(()),
            Err(e) => Err(Status::unavailable(e.to_string())),
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
            .max_frame_size(FRAME_BYTES)
            .http2_keepalive_interval(Some(KEEP_ALIVE))
            .http2_keepalive_timeout(Some(KEEP_ALIVE * 2))
            .add_service(FlightServiceServer::new(self))
            // Chunks go out as soon as they are written, not held back for acknowledgements.
            .serve_with_incoming_shutdown(listener.with_nodelay(Some(true)), shutdown)
            .await
    }
}

/// Pulls under way, by object.
type Gates = std::sync::Mutex<std::collections::HashMap<ObjectId, Arc<tokio::sync::Mutex<()>>>>;

/// Removes a pull's gate from the table when the pull ends, if no newer one replaced it.
struct ForgetGate<'a> {
    pulls: &'a Gates,
    id: ObjectId,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for ForgetGate<'_> {
    fn drop(&mut self) {
        let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
        if pulls
            .get(&self.id)
            .is_some_and(|g| Arc::ptr_eq(g, &self.gate))
        {
            pulls.remove(&self.id);
        }
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
        let store = Arc::clone(&self.store);
        // A spilled object is read from disk: off the async threads.
        let (kind, stored) = tokio::task::spawn_blocking(move || store.get_stored(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                StoreError::NotFound(_) => {
                    Status::not_found(format!("object {id} is not on this node"))
                }
                other => Status::internal(other.to_string()),
            })?;
        self.served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let len = stored.len();
        let header = format!("{} {len}", kind_name(kind));
        let chunks = (0..len.div_ceil(CHUNK_BYTES).max(1)).map(move |i| {
            let start = i * CHUNK_BYTES;
            let mut data =
                FlightData::new().with_data_body(stored.slice(start..len.min(start + CHUNK_BYTES)));
            if i == 0 {
                data = data.with_app_metadata(header.clone().into_bytes());
            }
            Ok(data)
        });
        Ok(Response::new(futures::stream::iter(chunks).boxed()))
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
    /// `adopt`, body `owner\nid\nbatch|bytes[\nreaders]`: a process of this node staged the
    /// object in the memory tier; the store takes it in ([`LocalStore::adopt`]). `release`
    /// and `pull`: see [`RELEASE`] and [`PULL`].
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
        if action.r#type == PULL {
            let body = String::from_utf8_lossy(&action.body).into_owned();
            let parts: Vec<&str> = body.split('\n').collect();
            let [node, address, id, owner] = parts[..] else {
                return Err(Status::invalid_argument(
                    "pull takes 'node\\naddress\\nid\\nowner'",
                ));
            };
            let object = ObjectRef {
                id: id
                    .parse()
                    .map_err(|e: StoreError| Status::invalid_argument(e.to_string()))?,
                owner: owner.to_owned(),
                node: node.to_owned(),
            };
            self.pull(&object, address).await?;
            return Ok(Response::new(futures::stream::empty().boxed()));
        }
        if action.r#type != ADOPT {
            return unimplemented(&format!("the action '{}'", action.r#type));
        }
        let body = String::from_utf8_lossy(&action.body).into_owned();
        let mut parts = body.splitn(4, '\n');
        let (owner, id, kind) = (parts.next(), parts.next(), parts.next());
        let (Some(owner), Some(id), Some(kind)) = (owner, id, kind) else {
            return Err(Status::invalid_argument("adopt takes 'owner\\nid\\nkind'"));
        };
        let refs = match parts.next() {
            None => 1,
            Some(n) => n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                Status::invalid_argument(format!("'{n}' is not a number of readers"))
            })?,
        };
        let id: ObjectId = id
            .parse()
            .map_err(|e: StoreError| Status::invalid_argument(e.to_string()))?;
        let kind = parse_kind(kind).map_err(Status::invalid_argument)?;
        let store = Arc::clone(&self.store);
        let owner = owner.to_owned();
        // Adopting may spill, or wait for room: off the async threads.
        tokio::task::spawn_blocking(move || store.adopt(&owner, id, kind, refs))
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

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Batch => "batch",
        Kind::Bytes => "bytes",
    }
}

fn parse_kind(name: &str) -> std::result::Result<Kind, String> {
    match name {
        "batch" => Ok(Kind::Batch),
        "bytes" => Ok(Kind::Bytes),
        other => Err(format!("unknown kind '{other}'")),
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
        .max_frame_size(FRAME_BYTES)
        // A node that vanishes without closing (a crash, a partition) is noticed.
        .http2_keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE * 2)
        .keep_alive_while_idle(true)
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

/// Runs action `kind` with `body` on the node serving at `address`; errors name `object`.
async fn action(
    object: &ObjectRef,
    address: &str,
    token: &str,
    channel: Option<Channel>,
    kind: &str,
    body: String,
) -> Result<()> {
    let mut client = client(object, address, token, channel).await?;
    let remote = |e: arrow_flight::error::FlightError| StoreError::Remote {
        id: object.id,
        node: object.node.clone(),
        address: address.to_owned(),
        reason: e.to_string(),
    };
    let results = client
        .do_action(Action::new(kind.to_owned(), body.into_bytes()))
        .await
        .map_err(remote)?;
    let _: Vec<_> = results.try_collect().await.map_err(remote)?;
    Ok(())
}

/// Asks this node's store, serving at `address`, to take in `object`, staged by this process
/// at [`staging_path`](crate::staging_path), for `readers` readers (each releases it once).
pub async fn adopt(
    object: &ObjectRef,
    kind: Kind,
    readers: u32,
    address: &str,
    token: &str,
    channel: Option<Channel>,
) -> Result<()> {
    let body = format!(
        "{}\n{}\n{}\n{readers}",
        object.owner,
        object.id,
        kind_name(kind)
    );
    action(object, address, token, channel, ADOPT, body).await
}

/// Puts `stored` (object `object` as stored: a batch's IPC file, or bytes) into this node's
/// store, serving at `address` with its memory tier at `memory_dir`: written under the
/// staging name, then adopted with `readers` references. A file the store did not take is
/// removed.
#[allow(clippy::too_many_arguments)] // the object, its form, and where the node's store is
pub async fn put_staged(
    object: &ObjectRef,
    kind: Kind,
    readers: u32,
    stored: &[u8],
    memory_dir: &std::path::Path,
    address: &str,
    token: &str,
    channel: Option<Channel>,
) -> Result<()> {
    let staged = crate::staging_path(memory_dir, &object.id);
    std::fs::write(&staged, stored).map_err(crate::io(format!("staging {}", staged.display())))?;
    let adopted = adopt(object, kind, readers, address, token, channel).await;
    if adopted.is_err() {
        // The store did not take it: the staged file is this process's to remove.
        let _ = std::fs::remove_file(&staged);
    }
    adopted
}

/// Releases a reference to `object` in the store of the node serving at `address`.
pub async fn release(
    object: &ObjectRef,
    address: &str,
    token: &str,
    channel: Option<Channel>,
) -> Result<()> {
    let body = object.id.to_string();
    action(object, address, token, channel, RELEASE, body).await
}

/// Asks this node's store, serving at `local`, to bring `object` from the node serving it
/// at `remote` and keep a copy, which this node's processes then read in place. Several
/// processes asking at once cause one transfer.
pub async fn pull(
    object: &ObjectRef,
    remote: &str,
    local: &str,
    token: &str,
    channel: Option<Channel>,
) -> Result<()> {
    let body = format!("{}\n{remote}\n{}\n{}", object.node, object.id, object.owner);
    action(object, local, token, channel, PULL, body).await
}

/// Where a fetched object's bytes land. A large one lands in memory mapped for it alone and
/// advised for huge pages, where the system allows them: new memory costs a fault per page,
/// and a 2 MiB page takes one fault where 4 KiB pages take 512.
enum Landing {
    Heap(Vec<u8>, usize),
    Mapped(memmap2::MmapMut, usize, usize),
}

/// From this size, a fetched object lands in its own mapping.
const MAPPED_LANDING: usize = 4 << 20;

impl Landing {
    fn new(len: usize) -> Landing {
        if (MAPPED_LANDING..=MAX_PRESIZE).contains(&len)
            && let Ok(map) = memmap2::MmapMut::map_anon(len)
        {
            // Only advice: without huge pages the mapping still works.
            let _ = map.advise(memmap2::Advice::HugePage);
            return Landing::Mapped(map, 0, len);
        }
        Landing::Heap(Vec::with_capacity(len.min(MAX_PRESIZE)), len)
    }

    fn filled(&self) -> (usize, usize) {
        match self {
            Landing::Heap(v, len) => (v.len(), *len),
            Landing::Mapped(_, filled, len) => (*filled, *len),
        }
    }

    /// Adds the next chunk; more than announced is an error.
    fn append(&mut self, chunk: &[u8]) -> std::result::Result<(), String> {
        let (filled, len) = self.filled();
        if filled + chunk.len() > len {
            return Err(format!(
                "the node sent more than the {len} bytes it announced"
            ));
        }
        match self {
            Landing::Heap(v, _) => v.extend_from_slice(chunk),
            Landing::Mapped(map, filled, _) => {
                map[*filled..*filled + chunk.len()].copy_from_slice(chunk);
                *filled += chunk.len();
            }
        }
        Ok(())
    }

    /// The bytes, once all announced have come.
    fn finish(self) -> std::result::Result<Buffer, String> {
        let (filled, len) = self.filled();
        if filled != len {
            return Err(format!("the transfer ended after {filled} of {len} bytes"));
        }
        Ok(match self {
            Landing::Heap(v, _) => Buffer::from_vec(v),
            Landing::Mapped(map, _, _) => Buffer::from(bytes::Bytes::from_owner(map)),
        })
    }
}

/// Fetches object `object` from the node serving it at `address` (`host:port`), carrying
/// `token`. An unreachable node, a refused token or a missing object is an error naming the
/// object, the node and the address. A bytes object comes as a one-row batch of one binary
/// value.
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
    let (kind, stored) = fetch_stored(object, address, token, channel, None).await?;
    match kind {
        Kind::Batch => checked_batch(object, stored),
        Kind::Bytes => {
            bytes_batch(&stored).map_err(crate::arrow(format!("wrapping object {}", object.id)))
        }
    }
}

/// The batch in a fetched IPC file, checked through and through: it came from elsewhere.
fn checked_batch(object: &ObjectRef, stored: Buffer) -> Result<RecordBatch> {
    crate::decode_buffer(stored, true, &|| {
        format!(
            "reading object {} fetched from node {}",
            object.id, object.node
        )
    })
}

/// Object `object` as the node at `address` stores it: its kind and its bytes.
///
/// `max_len`, when given, refuses an object announced larger, before any of it lands.
pub async fn fetch_stored(
    object: &ObjectRef,
    address: &str,
    token: &str,
    channel: Option<Channel>,
    max_len: Option<usize>,
) -> Result<(Kind, Buffer)> {
    let remote = |reason: String| StoreError::Remote {
        id: object.id,
        node: object.node.clone(),
        address: address.to_owned(),
        reason,
    };
    let status = |s: Status| remote(format!("{}: {}", s.code(), s.message()));
    let channel = match channel {
        Some(c) => c,
        None => connect(address).await.map_err(remote)?,
    };
    let mut client = arrow_flight::flight_service_client::FlightServiceClient::new(channel)
        .max_decoding_message_size(2 * CHUNK_BYTES);
    let mut request = Request::new(Ticket::new(object.id.to_string()));
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| remote("the token is not a valid header value".into()))?;
    request.metadata_mut().insert("authorization", bearer);
    let mut stream = client.do_get(request).await.map_err(status)?.into_inner();
    let first = stream
        .message()
        .await
        .map_err(status)?
        .ok_or_else(|| remote("the node sent nothing".into()))?;
    let header = String::from_utf8_lossy(&first.app_metadata).into_owned();
    let parsed = header
        .split_once(' ')
        .and_then(|(kind, len)| Some((parse_kind(kind).ok()?, len.parse::<usize>().ok()?)));
    let Some((kind, len)) = parsed else {
        return Err(remote(format!("unexpected first chunk header '{header}'")));
    };
    // The announced size is only believed up to what has arrived.
    if let Some(max) = max_len.filter(|max| len > *max) {
        return Err(remote(format!(
            "the object is {len} bytes, more than the {max} this store may hold"
        )));
    }
    let mut landing = Landing::new(len);
    landing.append(&first.data_body).map_err(remote)?;
    while let Some(chunk) = stream.message().await.map_err(status)? {
        landing.append(&chunk.data_body).map_err(remote)?;
    }
    Ok((kind, landing.finish().map_err(remote)?))
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
        let stored = self.fetch_batch_file(object, address, token).await?;
        self.keep_fetched(object, stored)
    }

    /// Object `object`'s IPC file from the node at `address`: a batch, and no larger than
    /// this store's memory cap.
    async fn fetch_batch_file(
        &self,
        object: &ObjectRef,
        address: &str,
        token: &str,
    ) -> Result<Buffer> {
        let cap = usize::try_from(self.config().memory_cap).unwrap_or(usize::MAX);
        let (kind, stored) = fetch_stored(object, address, token, None, Some(cap)).await?;
        if kind != Kind::Batch {
            return Err(StoreError::WrongKind {
                id: object.id,
                found: kind,
                wanted: Kind::Batch,
            });
        }
        Ok(stored)
    }

    /// The batch in a fetched file, checked through and kept as a cached copy when there
    /// is room. Reads the whole file and writes it: blocking work.
    fn keep_fetched(&self, object: &ObjectRef, stored: Buffer) -> Result<RecordBatch> {
        // Checked once here; the cached file is then trusted, as the store's own are.
        let batch = checked_batch(object, stored.clone())?;
        // Caching is best-effort: without room, the fetched batch is still the answer.
        match self.put_cached(&object.owner, object.id, Kind::Batch, stored.as_slice()) {
            Ok(()) => Ok(self.get_batch(&object.id).unwrap_or(batch)),
            Err(e) => {
                tracing::debug!(object = %object.id, error = %e, "not cached");
                Ok(batch)
            }
        }
    }
}
