//! The PostgreSQL backend, for storage services that run as several instances over one
//! database.
//!
//! - `schema`: the migrations, applied at start-up under an advisory lock.
//! - `streams`: every user's stream: the seq counters, their lock order, stream entries and
//!   events.
//! - `append`: batches of direct and group messages.
//! - `groups`: creating and changing groups.
//! - `marks`: read markers.
//! - `lifecycle`: edits, deletes and reactions of committed messages.
//! - `reads`: history, sync, the conversation list, members and receipts.
//! - `retention`: deleting a batch of old messages with their stream entries and reactions.
//! - `erase`: erasing a batch of a user's texts or read state.
//! - `outbox`: the event outbox: each transaction's events, written last under a per-tenant
//!   counter so that ids follow commit order; the feed's read, pruning and erasing.
//! - `restrictions`: what the server API imposes on users (bans, revoked tokens).
//!
//! Several instances may write at once. Every writer locks what it needs in one order:
//! first the rows of the groups it touches (sorted; `FOR SHARE` to send, mark or change a
//! message, `FOR UPDATE` to change the group), then the seq counter of every user whose
//! stream it adds to or whose state it changes, sorted by (tenant, user), in one statement.
//! Transactions that share a user run one after the other, so per-user seqs stay gapless and
//! unique, unread counts lose no update, message ids grow in commit order within a
//! conversation, and no two writers can deadlock. The unique key (tenant, sender,
//! client_msg_id) makes appends idempotent; under the sender's lock a duplicate is always
//! seen before it could be inserted. A change of a message locks everyone who can see it, so
//! the changes of one message run one after the other. Last of all, a transaction that writes
//! outbox events locks its tenant's outbox counter (see `outbox`).

mod append;
mod erase;
mod groups;
mod lifecycle;
mod marks;
mod outbox;
mod reads;
mod restrictions;
mod retention;
mod schema;
mod streams;

use std::collections::HashMap;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Row};

use super::{
    EventsQuery, HistoryQuery, MessageStore, OutboxSettings, PruneBatch, StoreError, SyncQuery,
};
use crate::sql::{LifecycleColumns, has_pending_reactions, reaction_counts, sql_int};
use peroxo_protocol::conversation::{
    ConversationPage, ConversationsQuery, CreateGroup, GroupChange, GroupOutcome, ReadMark,
    ReadOutcome, Receipt,
};
use peroxo_protocol::domain::{
    AppendOutcome, HistoryPage, NewMessage, StoredMessage, SyncPage, UserKey,
};
use peroxo_protocol::event::Member;
use peroxo_protocol::lifecycle::{MessageChange, MessageOutcome};
use peroxo_protocol::outbox::{ConsumerClaim, ConsumerLease, NewOutboxEvent, OutboxPage};
use peroxo_protocol::restriction::{Restriction, RestrictionChange};

/// A PostgreSQL-backed [`MessageStore`]. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Whether and how writes write outbox events.
    outbox: OutboxSettings,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("postgres: {e}"))
}

impl PostgresStore {
    /// Connects a pool of `pool_size` to `url` and applies pending migrations; writes write
    /// outbox events as `[events]` does by default.
    pub async fn open(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        Self::open_with(url, pool_size, OutboxSettings::default()).await
    }

    /// [`PostgresStore::open`], writing outbox events as `outbox` says.
    pub async fn open_with(
        url: &str,
        pool_size: usize,
        outbox: OutboxSettings,
    ) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::InvalidRequest(format!("invalid postgres url: {e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .build()
            .map_err(backend)?;
        let store = Self { pool, outbox };
        store.migrate().await?;
        Ok(store)
    }
}

/// Reads a message from [`MESSAGE_COLUMNS`](crate::sql::MESSAGE_COLUMNS) starting at column
/// `at` of `row`.
fn message_from_row(row: &Row, at: usize) -> StoredMessage {
    StoredMessage {
        message_id: row.get::<_, i64>(at) as u64,
        tenant: row.get(at + 1),
        sender: row.get(at + 2),
        recipient: row.get(at + 3),
        client_msg_id: row.get(at + 4),
        text: row.get(at + 5),
        ts: row.get(at + 6),
        sender_seq: row.get::<_, i64>(at + 7) as u64,
        recipient_seq: row.get::<_, i64>(at + 8) as u64,
        lifecycle: LifecycleColumns {
            reply_to: row.get(at + 9),
            edited_ts: row.get(at + 10),
            deleted_by: row.get(at + 11),
            deleted_ts: row.get(at + 12),
            reaction_count: row.get(at + 13),
            quote_sender: row.get(at + 14),
            quote_excerpt: row.get(at + 15),
            quote_deleted_ts: row.get(at + 16),
        }
        .lifecycle(),
    }
}

/// Replaces the reaction placeholders of `messages` with their reactions as `viewer` sees
/// them, in one statement (none when no message has reactions).
async fn attach_reactions<'m>(
    client: &impl GenericClient,
    viewer: &str,
    messages: impl IntoIterator<Item = &'m mut StoredMessage>,
) -> Result<(), StoreError> {
    let pending: Vec<&mut StoredMessage> = messages
        .into_iter()
        .filter(|m| has_pending_reactions(m))
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = pending.iter().map(|m| sql_int(m.message_id)).collect();
    let rows = client
        .query(
            "SELECT message_id, emoji, reactor, ts FROM reactions WHERE message_id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(backend)?;
    let mut by_message: HashMap<i64, Vec<(String, String, i64)>> = HashMap::new();
    for row in &rows {
        let reaction = (row.get(1), row.get(2), row.get(3));
        by_message.entry(row.get(0)).or_default().push(reaction);
    }
    for message in pending {
        let rows = by_message
            .remove(&sql_int(message.message_id))
            .unwrap_or_default();
        message.lifecycle.reactions = reaction_counts(rows, viewer);
    }
    Ok(())
}

impl MessageStore for PostgresStore {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<AppendOutcome>, StoreError> {
        append::append(&self.pool, self.outbox, batch).await
    }

    async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        reads::history(&self.pool, query).await
    }

    async fn sync(&self, query: SyncQuery) -> Result<SyncPage, StoreError> {
        reads::sync(&self.pool, query).await
    }

    async fn last_seq(&self, user: UserKey) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(backend)?;
        reads::last_seq_in(&client, &user).await
    }

    async fn create_group(&self, request: CreateGroup) -> Result<GroupOutcome, StoreError> {
        groups::create_group(&self.pool, self.outbox, request).await
    }

    async fn change_group(&self, request: GroupChange) -> Result<GroupOutcome, StoreError> {
        groups::change_group(&self.pool, self.outbox, request).await
    }

    async fn members(
        &self,
        user: UserKey,
        conversation_id: String,
    ) -> Result<Vec<Member>, StoreError> {
        reads::members(&self.pool, user, conversation_id).await
    }

    async fn conversations(
        &self,
        query: ConversationsQuery,
    ) -> Result<ConversationPage, StoreError> {
        reads::conversations(&self.pool, query).await
    }

    async fn mark_read(&self, request: ReadMark) -> Result<ReadOutcome, StoreError> {
        marks::mark_read(&self.pool, self.outbox, request).await
    }

    async fn read_receipts(
        &self,
        user: UserKey,
        conversation_id: String,
        message_id: u64,
    ) -> Result<Vec<Receipt>, StoreError> {
        reads::read_receipts(&self.pool, user, conversation_id, message_id).await
    }

    async fn change_message(&self, request: MessageChange) -> Result<MessageOutcome, StoreError> {
        lifecycle::change_message(&self.pool, self.outbox, request).await
    }

    async fn message_tenants(&self) -> Result<Vec<String>, StoreError> {
        retention::tenants(&self.pool).await
    }

    async fn prune(&self, batch: PruneBatch) -> Result<u64, StoreError> {
        retention::prune(&self.pool, batch).await
    }

    async fn erase_texts(&self, user: UserKey, limit: u32) -> Result<u64, StoreError> {
        erase::texts(&self.pool, user, limit).await
    }

    async fn erase_read_state(&self, user: UserKey, limit: u32) -> Result<u64, StoreError> {
        erase::read_state(&self.pool, user, limit).await
    }

    async fn events(&self, query: EventsQuery) -> Result<OutboxPage, StoreError> {
        outbox::page(&self.pool, query).await
    }

    async fn event_tenants(&self) -> Result<Vec<String>, StoreError> {
        outbox::tenants(&self.pool).await
    }

    async fn prune_events(&self, batch: PruneBatch) -> Result<u64, StoreError> {
        outbox::prune(&self.pool, batch).await
    }

    async fn erase_event_texts(&self, user: UserKey, limit: u32) -> Result<u64, StoreError> {
        outbox::erase_texts(&self.pool, user, limit).await
    }

    async fn record_events(
        &self,
        tenant: String,
        events: Vec<NewOutboxEvent>,
    ) -> Result<Vec<u64>, StoreError> {
        outbox::record(&self.pool, self.outbox, tenant, events).await
    }

    async fn claim_consumer(
        &self,
        claim: ConsumerClaim,
    ) -> Result<Option<ConsumerLease>, StoreError> {
        outbox::claim(&self.pool, claim).await
    }

    async fn advance_consumer(
        &self,
        tenant: String,
        consumer: String,
        holder: String,
        cursor: u64,
    ) -> Result<bool, StoreError> {
        outbox::advance(&self.pool, tenant, consumer, holder, cursor).await
    }

    async fn set_restriction(
        &self,
        user: UserKey,
        change: RestrictionChange,
    ) -> Result<Restriction, StoreError> {
        restrictions::set(&self.pool, user, change).await
    }

    async fn restrictions(&self, user: UserKey) -> Result<Restriction, StoreError> {
        restrictions::get(&self.pool, user).await
    }

    async fn active_restrictions(
        &self,
        now_ms: i64,
    ) -> Result<Vec<(UserKey, Restriction)>, StoreError> {
        restrictions::active(&self.pool, now_ms).await
    }
}
