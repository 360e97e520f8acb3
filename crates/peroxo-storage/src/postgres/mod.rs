//! The PostgreSQL backend, for storage services that run as several instances over one
//! database.
//!
//! - `schema`: the migrations, applied at start-up under an advisory lock.
//! - `streams`: every user's stream: the seq counters, their lock order, stream entries and
//!   events.
//! - `append`: batches of direct and group messages.
//! - `groups`: creating and changing groups.
//! - `marks`: read markers.
//! - `reads`: history, sync, the conversation list, members and receipts.
//! - `retention`: deleting a batch of old messages with their stream entries.
//! - `erase`: erasing a batch of a user's texts or read state.
//!
//! Several instances may write at once. Every writer locks what it needs in one order:
//! first the rows of the groups it touches (sorted; `FOR SHARE` to send or mark, `FOR
//! UPDATE` to change the group), then the seq counter of every user whose stream it adds to
//! or whose state it changes, sorted by (tenant, user), in one statement. Transactions that
//! share a user run one after the other, so per-user seqs stay gapless and unique, unread
//! counts lose no update, message ids grow in commit order within a conversation, and no
//! two writers can deadlock. The unique key (tenant, sender, client_msg_id) makes appends
//! idempotent; under the sender's lock a duplicate is always seen before it could be
//! inserted.

mod append;
mod erase;
mod groups;
mod marks;
mod reads;
mod retention;
mod schema;
mod streams;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Row};

use super::{HistoryQuery, MessageStore, PruneBatch, StoreError, SyncQuery};
use peroxo_protocol::conversation::{
    ConversationPage, ConversationsQuery, CreateGroup, GroupChange, GroupOutcome, ReadMark,
    ReadOutcome, Receipt,
};
use peroxo_protocol::domain::{
    AppendOutcome, HistoryPage, NewMessage, StoredMessage, SyncPage, UserKey,
};
use peroxo_protocol::event::Member;
use peroxo_protocol::lifecycle::{MessageChange, MessageOutcome};

/// A PostgreSQL-backed [`MessageStore`]. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
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
    /// Connects a pool of `pool_size` to `url` and applies pending migrations.
    pub async fn open(url: &str, pool_size: usize) -> Result<Self, StoreError> {
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
        let store = Self { pool };
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
        lifecycle: Default::default(),
    }
}

impl MessageStore for PostgresStore {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<AppendOutcome>, StoreError> {
        append::append(&self.pool, batch).await
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
        groups::create_group(&self.pool, request).await
    }

    async fn change_group(&self, request: GroupChange) -> Result<GroupOutcome, StoreError> {
        groups::change_group(&self.pool, request).await
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
        marks::mark_read(&self.pool, request).await
    }

    async fn read_receipts(
        &self,
        user: UserKey,
        conversation_id: String,
        message_id: u64,
    ) -> Result<Vec<Receipt>, StoreError> {
        reads::read_receipts(&self.pool, user, conversation_id, message_id).await
    }

    async fn change_message(&self, _request: MessageChange) -> Result<MessageOutcome, StoreError> {
        Err(StoreError::Backend(
            "postgres: changing messages is not implemented yet".to_owned(),
        ))
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
}
