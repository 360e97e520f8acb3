//! The storage service over gRPC: the server that wraps any [`MessageStore`], and the client
//! the gateway uses. This is the only module that knows the protobuf types.
//!
//! - `service`: [`StorageService`], which checks each request and calls the backend.
//! - `client`: [`StorageClient`], one method per [`MessageStore`] method, same Rust types.
//! - `convert`: every conversion between the Rust types and the protobuf messages.
//!
//! Errors cross the wire in one way only: [`StoreError`] becomes a [`Status`] here and the
//! client turns the status back into a [`CallError`], refusals keeping their exact code.

mod client;
mod convert;
mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

use super::{MessageStore, StoreError};
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::event::{Refusal, RefusalCode};

pub use client::StorageClient;
pub use service::StorageService;

/// The generated protobuf and gRPC code.
#[allow(unreachable_pub, clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("peroxo.storage.v1");

    /// The encoded descriptors of the storage protocol, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("storage_descriptor");
}

use pb::storage_server::StorageServer;

/// The storage service's name in `grpc.health.v1`.
const STORAGE_SERVICE_NAME: &str = "peroxo.storage.v1.Storage";

/// The largest gRPC message either side accepts: a full append batch or sync page of maximal
/// texts fits with room to spare.
const MAX_GRPC_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The response metadata key that carries a refusal's code (with `FAILED_PRECONDITION`).
const REFUSAL_CODE_KEY: &str = "peroxo-refusal";

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

/// How often the service checks that its backend answers, for `grpc.health.v1`.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// A probe not answered within this counts as a failure.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `store` on `listener`, with `grpc.health.v1` and gRPC reflection, until `shutdown`
/// completes.
pub async fn serve<S: MessageStore>(
    store: S,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let store = Arc::new(store);
    let (health, health_service) = tonic_health::server::health_reporter();
    // The backend was opened just before: serving until a probe says otherwise.
    health
        .set_service_status(STORAGE_SERVICE_NAME, ServingStatus::Serving)
        .await;
    let prober = tokio::spawn(probe_health(Arc::clone(&store), health));
    let storage = StorageServer::new(StorageService::new(store))
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
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(storage)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    prober.abort();
    served
}

/// Keeps the health status (of the storage service and of the server as a whole) on what the
/// backend answers: `SERVING` while a read succeeds, `NOT_SERVING` while it fails or hangs.
async fn probe_health<S: MessageStore>(store: Arc<S>, health: HealthReporter) {
    let probe_user = UserKey::new("peroxo", "storage-probe");
    let mut serving = true;
    loop {
        let answer =
            tokio::time::timeout(HEALTH_PROBE_TIMEOUT, store.last_seq(probe_user.clone())).await;
        let now_serving = matches!(answer, Ok(Ok(_)));
        if serving != now_serving {
            let status = if now_serving {
                tracing::info!("storage backend answers; health SERVING");
                ServingStatus::Serving
            } else {
                let error = match answer {
                    Ok(Err(error)) => error.to_string(),
                    _ => "no answer in time".to_owned(),
                };
                tracing::warn!(%error, "storage backend does not answer; health NOT_SERVING");
                ServingStatus::NotServing
            };
            health
                .set_service_status(STORAGE_SERVICE_NAME, status)
                .await;
            health.set_service_status("", status).await;
            serving = now_serving;
        }
        tokio::time::sleep(HEALTH_PROBE_INTERVAL).await;
    }
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
                    .map_or(RefusalCode::BadRequest, convert::refusal_code_from_pb);
                CallError::Refused(Refusal::new(code, status.message()))
            }
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => {
                CallError::Rejected(status.message().to_owned())
            }
            code => CallError::Unavailable(format!("{code:?}: {}", status.message())),
        }
    }
}
