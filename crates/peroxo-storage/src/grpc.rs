//! The storage service over gRPC: the server that wraps any [`MessageStore`], and the client
//! the gateway uses. This is the only module that knows the protobuf types.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::{
    HistoryQuery, MAX_APPEND_BATCH, MAX_HISTORY_LIMIT, MAX_SYNC_LIMIT, MessageStore, StoreError,
    SyncQuery, SyncScope,
};
use peroxo_protocol::conversation::ConversationRef;
use peroxo_protocol::domain::{
    self, AppendOutcome, HistoryPage, NewMessage, StoredMessage, SyncPage, UserKey,
};
use peroxo_protocol::event::{Refusal, RefusalCode, StreamSeq};

/// The generated protobuf and gRPC code.
#[allow(unreachable_pub, clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("peroxo.storage.v1");

    /// The encoded descriptors of the storage protocol, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("storage_descriptor");
}

use pb::storage_client::StorageClient as PbClient;
use pb::storage_server::{Storage, StorageServer};

/// The largest gRPC message either side accepts: a full append batch or sync page of maximal
/// texts fits with room to spare.
const MAX_GRPC_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidRequest(m) => Status::invalid_argument(m),
            StoreError::Backend(m) => Status::unavailable(m),
            StoreError::Refused(refusal) => {
                let mut status = Status::failed_precondition(refusal.message);
                status.metadata_mut().insert(
                    REFUSAL_CODE_KEY,
                    tonic::metadata::MetadataValue::from_static(refusal.code.as_str()),
                );
                status
            }
        }
    }
}

/// The response metadata key that carries a refusal's code (with `FAILED_PRECONDITION`).
const REFUSAL_CODE_KEY: &str = "peroxo-refusal";

/// Serves `store` on `listener`, with `grpc.health.v1` and gRPC reflection, until `shutdown`
/// completes.
pub async fn serve<S: MessageStore>(
    store: S,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<StorageServer<StorageService<S>>>()
        .await;
    let storage = StorageServer::new(StorageService { store })
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the built-in descriptor sets are valid");
    // tonic applies its own tcp_nodelay only to listeners it binds: set it on each accepted
    // socket, or every append answer waits ~40 ms for a delayed ACK.
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    });
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(storage)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The gRPC face of a [`MessageStore`].
#[derive(Debug)]
pub struct StorageService<S> {
    store: S,
}

#[tonic::async_trait]
impl<S: MessageStore> Storage for StorageService<S> {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let messages = request.into_inner().messages;
        if messages.len() > MAX_APPEND_BATCH {
            return Err(Status::invalid_argument(format!(
                "a batch holds at most {MAX_APPEND_BATCH} messages"
            )));
        }
        let batch = messages.into_iter().map(new_message_from_pb).collect();
        let outcomes = self.store.append(batch).await?;
        Ok(Response::new(pb::AppendResponse {
            results: outcomes.into_iter().map(outcome_to_pb).collect(),
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let r = request.into_inner();
        let user = user_key(r.tenant, r.user)?;
        let conversation_id = if r.conversation_id.is_empty() {
            domain::validate_id(&r.peer)
                .map_err(|e| Status::invalid_argument(format!("peer {e}")))?;
            domain::conversation_id(&user.user, &r.peer)
        } else {
            ConversationRef::parse(&r.conversation_id)
                .map_err(|e| Status::invalid_argument(format!("conversation_id {e}")))?;
            r.conversation_id
        };
        let limit = check_limit(r.limit, MAX_HISTORY_LIMIT)?;
        let page = self
            .store
            .history(HistoryQuery {
                user,
                conversation_id,
                before: (r.before != 0).then_some(r.before),
                limit,
            })
            .await?;
        Ok(Response::new(pb::HistoryResponse {
            messages: page.messages.into_iter().map(message_to_pb).collect(),
            has_more: page.has_more,
        }))
    }

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        let r = request.into_inner();
        let user = user_key(r.tenant, r.user)?;
        let limit = check_limit(r.limit, MAX_SYNC_LIMIT)?;
        let page = self
            .store
            .sync(SyncQuery {
                user,
                after_seq: r.after_seq,
                limit,
                scope: if r.everything {
                    SyncScope::Everything
                } else {
                    SyncScope::DirectMessages
                },
            })
            .await?;
        Ok(Response::new(pb::SyncResponse {
            messages: page.messages.into_iter().map(message_to_pb).collect(),
            last_seq: page.last_seq,
            has_more: page.has_more,
        }))
    }

    async fn last_seq(
        &self,
        request: Request<pb::LastSeqRequest>,
    ) -> Result<Response<pb::LastSeqResponse>, Status> {
        let r = request.into_inner();
        let user = user_key(r.tenant, r.user)?;
        let last_seq = self.store.last_seq(user).await?;
        Ok(Response::new(pb::LastSeqResponse { last_seq }))
    }
}

fn user_key(tenant: String, user: String) -> Result<UserKey, Status> {
    domain::validate_id(&tenant).map_err(|e| Status::invalid_argument(format!("tenant {e}")))?;
    domain::validate_id(&user).map_err(|e| Status::invalid_argument(format!("user {e}")))?;
    Ok(UserKey::new(tenant, user))
}

fn check_limit(limit: u32, max: u32) -> Result<u32, Status> {
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(Status::invalid_argument(format!(
            "limit must be between 1 and {max}"
        )))
    }
}

fn new_message_from_pb(m: pb::NewMessage) -> NewMessage {
    NewMessage {
        tenant: m.tenant,
        sender: m.sender,
        recipient: m.recipient,
        client_msg_id: m.client_msg_id,
        text: m.text,
    }
}

fn new_message_to_pb(m: NewMessage) -> pb::NewMessage {
    pb::NewMessage {
        tenant: m.tenant,
        sender: m.sender,
        recipient: m.recipient,
        client_msg_id: m.client_msg_id,
        text: m.text,
    }
}

fn message_to_pb(m: StoredMessage) -> pb::StoredMessage {
    pb::StoredMessage {
        message_id: m.message_id,
        tenant: m.tenant,
        sender: m.sender,
        recipient: m.recipient,
        client_msg_id: m.client_msg_id,
        text: m.text,
        ts: m.ts,
        sender_seq: m.sender_seq,
        recipient_seq: m.recipient_seq,
    }
}

fn message_from_pb(m: pb::StoredMessage) -> StoredMessage {
    StoredMessage {
        message_id: m.message_id,
        tenant: m.tenant,
        sender: m.sender,
        recipient: m.recipient,
        client_msg_id: m.client_msg_id,
        text: m.text,
        ts: m.ts,
        sender_seq: m.sender_seq,
        recipient_seq: m.recipient_seq,
    }
}

fn outcome_to_pb(outcome: AppendOutcome) -> pb::AppendResult {
    match outcome {
        AppendOutcome::Stored {
            message,
            duplicate,
            members,
        } => pb::AppendResult {
            outcome: Some(pb::append_result::Outcome::Stored(message_to_pb(message))),
            duplicate,
            refusal_code: String::new(),
            members: members.into_iter().map(stream_seq_to_pb).collect(),
        },
        AppendOutcome::Rejected(refusal) => pb::AppendResult {
            outcome: Some(pb::append_result::Outcome::Rejected(refusal.message)),
            duplicate: false,
            refusal_code: refusal.code.as_str().to_owned(),
            members: Vec::new(),
        },
    }
}

fn outcome_from_pb(result: pb::AppendResult) -> AppendOutcome {
    match result.outcome {
        Some(pb::append_result::Outcome::Stored(message)) => AppendOutcome::Stored {
            message: message_from_pb(message),
            duplicate: result.duplicate,
            members: result.members.into_iter().map(stream_seq_from_pb).collect(),
        },
        Some(pb::append_result::Outcome::Rejected(reason)) => AppendOutcome::Rejected(
            Refusal::new(refusal_code_from_pb(&result.refusal_code), reason),
        ),
        None => AppendOutcome::Rejected(Refusal::new(
            RefusalCode::BadRequest,
            "the storage service sent an empty result",
        )),
    }
}

fn stream_seq_to_pb(s: StreamSeq) -> pb::StreamSeq {
    pb::StreamSeq {
        user: s.user,
        seq: s.seq,
    }
}

fn stream_seq_from_pb(s: pb::StreamSeq) -> StreamSeq {
    StreamSeq {
        user: s.user,
        seq: s.seq,
    }
}

/// A refusal code as the service sent it; an empty or unknown one (from a newer service)
/// counts as `bad_request`, which no client retries.
fn refusal_code_from_pb(code: &str) -> RefusalCode {
    RefusalCode::parse(code).unwrap_or(RefusalCode::BadRequest)
}

/// Why a call to the storage service failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The service refused the request itself; retrying it will not help.
    #[error("storage refused the request: {0}")]
    Rejected(String),
    /// The service could not be reached or could not do the work; retrying may help.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The service refused the request for a rule of conversations, with an exact code.
    #[error("storage refused the request: {0}")]
    Refused(Refusal),
}

impl From<Status> for CallError {
    fn from(status: Status) -> Self {
        match status.code() {
            tonic::Code::FailedPrecondition => {
                let code = status
                    .metadata()
                    .get(REFUSAL_CODE_KEY)
                    .and_then(|code| code.to_str().ok())
                    .map_or(RefusalCode::BadRequest, refusal_code_from_pb);
                CallError::Refused(Refusal::new(code, status.message()))
            }
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => {
                CallError::Rejected(status.message().to_owned())
            }
            code => CallError::Unavailable(format!("{code:?}: {}", status.message())),
        }
    }
}

/// The gateway's client of the storage service. Cheap to clone; clones share one connection.
#[derive(Debug, Clone)]
pub struct StorageClient {
    inner: PbClient<Channel>,
}

impl StorageClient {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:50051`). Every call then fails after
    /// `rpc_timeout` rather than hang on a frozen service.
    pub async fn connect(
        endpoint: &str,
        connect_timeout: Duration,
        rpc_timeout: Duration,
    ) -> Result<Self, CallError> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| CallError::Rejected(format!("invalid endpoint {endpoint:?}: {e}")))?
            .connect_timeout(connect_timeout)
            .timeout(rpc_timeout)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| CallError::Unavailable(format!("cannot connect to {endpoint}: {e}")))?;
        Ok(Self {
            inner: PbClient::new(channel)
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
        })
    }

    pub async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<AppendOutcome>, CallError> {
        let expected = batch.len();
        let request = pb::AppendRequest {
            messages: batch.into_iter().map(new_message_to_pb).collect(),
        };
        let results = self
            .inner
            .clone()
            .append(request)
            .await?
            .into_inner()
            .results;
        if results.len() != expected {
            return Err(CallError::Unavailable(format!(
                "the storage service answered {} results for {expected} messages",
                results.len()
            )));
        }
        Ok(results.into_iter().map(outcome_from_pb).collect())
    }

    pub async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, CallError> {
        let request = pb::HistoryRequest {
            tenant: query.user.tenant.clone(),
            user: query.user.user.clone(),
            peer: String::new(),
            before: query.before.unwrap_or(0),
            limit: query.limit,
            conversation_id: query.conversation_id,
        };
        let r = self.inner.clone().history(request).await?.into_inner();
        Ok(HistoryPage {
            messages: r.messages.into_iter().map(message_from_pb).collect(),
            has_more: r.has_more,
        })
    }

    pub async fn sync(&self, query: SyncQuery) -> Result<SyncPage, CallError> {
        let request = pb::SyncRequest {
            tenant: query.user.tenant.clone(),
            user: query.user.user.clone(),
            after_seq: query.after_seq,
            limit: query.limit,
            everything: query.scope == SyncScope::Everything,
        };
        let r = self.inner.clone().sync(request).await?.into_inner();
        Ok(SyncPage {
            messages: r.messages.into_iter().map(message_from_pb).collect(),
            events: Vec::new(),
            last_seq: r.last_seq,
            has_more: r.has_more,
        })
    }

    pub async fn last_seq(&self, user: UserKey) -> Result<u64, CallError> {
        let request = pb::LastSeqRequest {
            tenant: user.tenant.clone(),
            user: user.user.clone(),
        };
        Ok(self
            .inner
            .clone()
            .last_seq(request)
            .await?
            .into_inner()
            .last_seq)
    }
}
