//! The storage service: where messages, groups and read state become durable.
//!
//! - [`MessageStore`] is the backend contract (idempotent batch append, history, sync, last
//!   seq, and the conversation methods). [`SqliteStore`] is the embedded backend (one file);
//!   [`LsmStore`] an embedded log-structured one (a fjall directory, whose commits append to a
//!   journal); [`PostgresStore`] serves several storage instances over one PostgreSQL
//!   database.
//! - `seq_assignment` decides which seq each participant of a message takes; every backend
//!   use it, so they number users' streams alike. `sql` holds what else the two SQL backends
//!   share: the message columns, integer conversion and how a page is cut.
//! - `rules` holds the rules of conversations every backend applies alike, as pure functions:
//!   which conversation a request names, who may change a group and which events a change
//!   makes for whom, who inherits a group, where a read mark moves a marker.
//! - `outbox` holds what every backend shares of the event outbox, the feed of committed
//!   changes: every change writes its events in its own transaction, with ids per tenant that
//!   are gapless and follow commit order, and [`MessageStore::events`] pages through them.
//!   Its consumers keep their cursors in storage under leases, so that one holder at a time
//!   (one node of a cluster) consumes a feed.
//! - [`retention`] deletes messages past their tenant's age, and outbox events past
//!   `events.retention`, in small batches, as a task of the storage service.
//! - Restrictions: one [`Restriction`] per (tenant, user) the server API imposed (a ban, a
//!   revocation of tokens); gateways load the active ones and refuse upgrades with them.
//! - [`user_data`] exports a user's data and erases it, for the operator's `peroxo user`.
//! - [`grpc`] serves any backend over gRPC and holds the gateway's client. It is the only module
//!   that knows the protobuf types.
//!
//! The gateway never touches a backend directly: it always goes through gRPC, even when the
//! service runs in the same process, so a split deployment behaves exactly like the default one.

pub mod grpc;
mod jobs;
mod lsm;
mod outbox;
mod postgres;
pub mod retention;
mod rules;
mod seq_assignment;
mod service;
mod sql;
mod sqlite;
pub mod user_data;

use std::future::Future;

pub use lsm::LsmStore;
pub use outbox::{EventsQuery, OutboxSettings};
pub use postgres::PostgresStore;
pub use retention::{PruneBatch, RetentionReport, RetentionStats};
pub use service::{StoreBackend, StoreServer, check_config};
pub use sqlite::{BackupReport, SqliteStore, backup as backup_sqlite};

use peroxo_protocol::conversation::{
    ConversationPage, ConversationsQuery, CreateGroup, GroupChange, GroupOutcome, ReadMark,
    ReadOutcome, Receipt,
};
use peroxo_protocol::domain::{AppendOutcome, HistoryPage, NewMessage, SyncPage, UserKey};
use peroxo_protocol::event::{Member, Refusal};
use peroxo_protocol::lifecycle::{MessageChange, MessageOutcome};
use peroxo_protocol::outbox::{ConsumerClaim, ConsumerLease, NewOutboxEvent, OutboxPage};
use peroxo_protocol::restriction::{Restriction, RestrictionChange};

/// The most messages one history page may hold.
pub const MAX_HISTORY_LIMIT: u32 = 100;
/// The most messages one sync page may hold.
pub const MAX_SYNC_LIMIT: u32 = 500;
pub use peroxo_protocol::limits::{MAX_APPEND_BATCH, MAX_STORED_TEXT_BYTES};
pub use peroxo_protocol::outbox::MAX_EVENTS_LIMIT;

/// Why a storage call failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request itself is wrong; retrying it will not help.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The backend could not do its work (I/O, database error, shutting down).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The request is refused for a reason the client is told with an exact code (not a
    /// member, unknown conversation, ...); nothing was stored.
    #[error("refused: {0}")]
    Refused(Refusal),
}

/// A page request for one conversation, as `user` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub user: UserKey,
    /// A direct conversation id (which must name `user`) or a group id (`user` must be a
    /// member; the page holds only messages committed after the user joined).
    pub conversation_id: String,
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
    pub scope: SyncScope,
}

/// Which entries of a stream a sync reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncScope {
    /// Every entry: messages and events (protocol 3).
    Everything,
    /// Messages and the events of conversations, without the events that change messages
    /// (edits, deletes, reactions; protocol 2, which knows nothing of them). Seqs of the
    /// entries left out are skipped, as for `DirectMessages`.
    Conversations,
    /// Direct messages only (protocol 1 clients, which know nothing else); seqs of the
    /// entries left out are skipped. `limit` and `has_more` count the entries returned.
    DirectMessages,
}

/// What every storage backend provides. All of it is scoped by tenant. A request that breaks
/// a rule of conversations fails with [`StoreError::Refused`] and changes nothing.
///
/// Every write that changes something also writes its outbox events (unless `events.enabled`
/// is off) in the same transaction: one `message.created` per message stored (none for a
/// duplicate), one event per group event, one `read.marker` per marker that moved, one per
/// edit, delete or reaction; nothing for a duplicate or a change that changes nothing.
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

    /// One page of a conversation, oldest to newest. Refused when the user is not in the
    /// conversation.
    fn history(
        &self,
        query: HistoryQuery,
    ) -> impl Future<Output = Result<HistoryPage, StoreError>> + Send;

    /// A user's messages after a seq, ascending by that user's seq.
    fn sync(&self, query: SyncQuery) -> impl Future<Output = Result<SyncPage, StoreError>> + Send;

    /// The user's current seq (0 when the user has none).
    fn last_seq(&self, user: UserKey) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Creates a group with its creator as owner and `members` as members, in one
    /// transaction: a `GroupCreated` event in every member's stream.
    fn create_group(
        &self,
        request: CreateGroup,
    ) -> impl Future<Output = Result<GroupOutcome, StoreError>> + Send;

    /// Renames a group, adds or removes members, leaves, or changes a role (see
    /// [`GroupOp`](peroxo_protocol::conversation::GroupOp) for who may do what), with its
    /// events in the same transaction.
    fn change_group(
        &self,
        request: GroupChange,
    ) -> impl Future<Output = Result<GroupOutcome, StoreError>> + Send;

    /// The members of a group, by user id, for one of its members.
    fn members(
        &self,
        user: UserKey,
        conversation_id: String,
    ) -> impl Future<Output = Result<Vec<Member>, StoreError>> + Send;

    /// One page of `user`'s conversation list, most recent activity first.
    fn conversations(
        &self,
        query: ConversationsQuery,
    ) -> impl Future<Output = Result<ConversationPage, StoreError>> + Send;

    /// Moves `user`'s read marker of a conversation, with its events in the same transaction.
    fn mark_read(
        &self,
        request: ReadMark,
    ) -> impl Future<Output = Result<ReadOutcome, StoreError>> + Send;

    /// Who of the conversation's members (the author of the message aside) has read up to
    /// `message_id` or past it, by user id.
    fn read_receipts(
        &self,
        user: UserKey,
        conversation_id: String,
        message_id: u64,
    ) -> impl Future<Output = Result<Vec<Receipt>, StoreError>> + Send;

    /// Edits, deletes or reacts to a message (see
    /// [`MessageOp`](peroxo_protocol::lifecycle::MessageOp) for who may do what), with its event
    /// in the same transaction; a delete also updates the unread counts and previews of
    /// everyone who can see the message.
    fn change_message(
        &self,
        request: MessageChange,
    ) -> impl Future<Output = Result<MessageOutcome, StoreError>> + Send;

    /// The tenants that have messages (for retention), in order.
    fn message_tenants(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Deletes up to `batch.limit` of the tenant's messages committed before
    /// `batch.before_ts`, oldest first, in one transaction, and returns how many. With each
    /// message go its entries in every stream (whose floor, the `pruned_until` of a sync,
    /// rises to the highest seq deleted; the seqs that remain keep their numbers) and its
    /// count in unread counts; its `client_msg_id` may be used again.
    fn prune(&self, batch: PruneBatch) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Erases the text of up to `limit` of the messages `user` sent, oldest first, in one
    /// transaction, and returns how many: each keeps its ids, seqs and time with an empty
    /// text (a sent message's text is never empty otherwise), everywhere it is read from.
    fn erase_texts(
        &self,
        user: UserKey,
        limit: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Forgets `user`'s read state of up to `limit` conversations, in one transaction, and
    /// returns how many: the read marker goes back to nothing (so peers see no read ticks)
    /// and the unread count counts every visible message from others again.
    fn erase_read_state(
        &self,
        user: UserKey,
        limit: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// One page of the tenant's outbox: the events with an id greater than `query.after`,
    /// ascending by id (the tenant's commit order), at most `query.limit`.
    fn events(
        &self,
        query: EventsQuery,
    ) -> impl Future<Output = Result<OutboxPage, StoreError>> + Send;

    /// The tenants that have outbox events (for retention), in order.
    fn event_tenants(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Deletes up to `batch.limit` of the tenant's oldest outbox events committed before
    /// `batch.before_ts`, in one transaction, and returns how many; the feed's `pruned_until`
    /// rises to the highest id deleted. Only the oldest go: an event is never deleted while
    /// an older one stays.
    fn prune_events(
        &self,
        batch: PruneBatch,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Writes events the caller decides (a `notify`, say) to the tenant's outbox, in one
    /// transaction, in order, and returns their ids: in commit order with every other event
    /// of the tenant. None are written (and no ids returned) when `[events]` is off.
    fn record_events(
        &self,
        tenant: String,
        events: Vec<NewOutboxEvent>,
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// Gives `claim.holder` the lease of the consumer's cursor (created at 0 when new) until
    /// `now_ms + ttl_ms`, and returns it: when nobody holds it, when the holder already does
    /// (a renewal), or when another holder's lease ended at or before `now_ms`. `None` while
    /// another holder's lease runs.
    fn claim_consumer(
        &self,
        claim: ConsumerClaim,
    ) -> impl Future<Output = Result<Option<ConsumerLease>, StoreError>> + Send;

    /// Moves the consumer's cursor to `cursor` if `holder` holds its lease (never back), and
    /// says whether it does: false when another holder took the lease since.
    fn advance_consumer(
        &self,
        tenant: String,
        consumer: String,
        holder: String,
        cursor: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes the text preview from up to `limit` of the outbox events of messages `user`
    /// sent or edited, in one transaction, and returns how many (`peroxo user erase`).
    fn erase_event_texts(
        &self,
        user: UserKey,
        limit: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Changes `user`'s restriction as [`Restriction::changed`] says (creating it when the
    /// user has none), in one transaction, and returns it as committed. The change must be
    /// valid ([`RestrictionChange::validate`]).
    fn set_restriction(
        &self,
        user: UserKey,
        change: RestrictionChange,
    ) -> impl Future<Output = Result<Restriction, StoreError>> + Send;

    /// `user`'s restriction (the default, all zero, when the user has none).
    fn restrictions(
        &self,
        user: UserKey,
    ) -> impl Future<Output = Result<Restriction, StoreError>> + Send;

    /// Every restriction [active](Restriction::is_active) at `now_ms`, of every tenant,
    /// ordered by (tenant, user): what a gateway loads at start and reloads now and then.
    fn active_restrictions(
        &self,
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<(UserKey, Restriction)>, StoreError>> + Send;
}
