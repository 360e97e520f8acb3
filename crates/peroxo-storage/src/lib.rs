//! The storage service: where direct messages become durable.
//!
//! - [`MessageStore`] is the backend contract (idempotent batch append, history, sync, last
//!   seq). [`SqliteStore`] is the embedded backend; [`PostgresStore`] serves several storage
//!   instances over one PostgreSQL database.
//! - `seq_assignment` decides which seq each participant of a message takes; both backends
//!   use it, so they number users' streams alike. `sql` holds what else the two SQL backends
//!   share: the message columns, integer conversion and how a page is cut.
//! - [`grpc`] serves any backend over gRPC and holds the gateway's client. It is the only module
//!   that knows the protobuf types.
//!
//! The gateway never touches a backend directly: it always goes through gRPC, even when the
//! service runs in the same process, so a split deployment behaves exactly like the default one.

pub mod grpc;
mod postgres;
mod seq_assignment;
mod service;
mod sql;
mod sqlite;

use std::future::Future;

pub use postgres::PostgresStore;
pub use service::{StoreServer, check_config};
pub use sqlite::SqliteStore;

use peroxo_protocol::domain::{AppendOutcome, HistoryPage, NewMessage, SyncPage, UserKey};

/// The most messages one history page may hold.
pub const MAX_HISTORY_LIMIT: u32 = 100;
/// The most messages one sync page may hold.
pub const MAX_SYNC_LIMIT: u32 = 500;
pub use peroxo_protocol::limits::{MAX_APPEND_BATCH, MAX_STORED_TEXT_BYTES};

/// Why a storage call failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request itself is wrong; retrying it will not help.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The backend could not do its work (I/O, database error, shutting down).
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// A page request for the conversation between `user` and `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub user: UserKey,
    pub peer: String,
    /// Only messages with a smaller message id; `None` starts from the newest.
    pub before: Option<u64>,
    pub limit: u32,
}

/// A request for `user`'s messages after `after_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncQuery {
    pub user: UserKey,
    pub after_seq: u64,
    pub limit: u32,
}

/// What every storage backend provides. All of it is scoped by tenant.
pub trait MessageStore: Send + Sync + 'static {
    /// Commits `batch` in one transaction, in order, and returns one outcome per message.
    ///
    /// Idempotent per (tenant, sender, client_msg_id): a message seen before is not stored
    /// again; its outcome is the original with `duplicate: true`. Each stored message gets the
    /// next seq of its sender and of its recipient (one seq when they are the same user).
    fn append(
        &self,
        batch: Vec<NewMessage>,
    ) -> impl Future<Output = Result<Vec<AppendOutcome>, StoreError>> + Send;

    /// One page of a conversation, oldest to newest.
    fn history(
        &self,
        query: HistoryQuery,
    ) -> impl Future<Output = Result<HistoryPage, StoreError>> + Send;

    /// A user's messages after a seq, ascending by that user's seq.
    fn sync(&self, query: SyncQuery) -> impl Future<Output = Result<SyncPage, StoreError>> + Send;

    /// The user's current seq (0 when the user has none).
    fn last_seq(&self, user: UserKey) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
