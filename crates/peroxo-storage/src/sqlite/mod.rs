//! The embedded backend: one SQLite file in WAL mode.
//!
//! One writer thread owns the only write connection. Every write (appends, group creations and
//! changes, read marks) is a job for it; it takes every job waiting and commits them in one
//! transaction (group commit), so many gateways or batches share one fsync. It remembers every
//! recent user's current seq, so a direct message costs five statements (the message, one
//! inbox row and one conversation state row per participant). A checkpointer thread with its
//! own connection copies the WAL back into the database file, so the writer never stops to do
//! it. Reads run on the blocking pool over a small set of read-only connections; WAL lets them
//! proceed while the writer commits.
//!
//! - `schema`: the tables (see there) and the migration from version 1.
//! - `writer`: the writer thread, its jobs and the transaction they share, where seqs are
//!   taken and events fan out.
//! - `append`, `groups`, `reads`, `lifecycle`: the writes of messages, of group creations and
//!   changes, of read marks, of edits, deletes and reactions (the rules they follow are [`rules`](crate::rules)').
//! - `state`: the rows of groups and conversation states that writes and reads both look up.
//! - `queries`: the reads (history, sync, the conversation list, members, receipts).
//! - `retention`: deleting a batch of old messages, in a transaction of its own.
//! - `erase`: erasing a batch of a user's texts or read state, in a transaction of its own.
//! - `outbox`: the event outbox: a transaction's events and their ids, the feed's read, its
//!   pruning and erasing.
//! - `restrictions`: what the server API imposes on users (bans, revoked tokens).
//! - `backup`: a verified copy of the database while it serves (`peroxo backup`).

mod append;
mod backup;
mod erase;
mod groups;
mod lifecycle;
mod outbox;
mod queries;
#[cfg(test)]
mod query_plans;
mod reads;
mod restrictions;
mod retention;
mod schema;
mod state;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::{
    EventsQuery, HistoryQuery, MessageStore, OutboxSettings, PruneBatch, StoreError, SyncQuery,
};
pub use backup::{BackupReport, backup};
use peroxo_config::SqliteSync;
use peroxo_protocol::conversation::{
    ConversationPage, ConversationsQuery, CreateGroup, GroupChange, GroupOutcome, ReadMark,
    ReadOutcome, Receipt,
};
use peroxo_protocol::domain::{AppendOutcome, HistoryPage, NewMessage, SyncPage, UserKey};
use peroxo_protocol::event::Member;
use peroxo_protocol::lifecycle::{MessageChange, MessageOutcome};
use peroxo_protocol::outbox::{ConsumerClaim, ConsumerLease, NewOutboxEvent, OutboxPage};
use peroxo_protocol::restriction::{Restriction, RestrictionChange};
use writer::{Job, Reply, Writer};

/// Read connections kept open for reuse.
const READ_POOL_SIZE: usize = 8;
/// The writer's page cache, in KiB: the indexes every append touches stay in memory instead
/// of being read back through the OS at every lookup.
const WRITER_CACHE_KIB: u32 = 65_536;
/// The least time between two checkpoints: each copies whatever the WAL gathered meanwhile.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(10);
/// WAL pages (4 KiB each) past which the writer checkpoints by itself, should the
/// checkpointer ever fall that far behind.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;

/// A SQLite-backed [`MessageStore`]. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Jobs for the writer thread; the thread ends when the last sender is dropped.
    writer: Mutex<mpsc::Sender<Job>>,
    /// Idle read-only connections.
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with the durability of
    /// `synchronous`, migrates it, and starts the writer, which writes outbox events as
    /// `[events]` does by default.
    pub fn open(path: impl AsRef<Path>, synchronous: SqliteSync) -> Result<Self, StoreError> {
        Self::open_with(path, synchronous, OutboxSettings::default())
    }

    /// [`SqliteStore::open`], writing outbox events as `outbox` says.
    pub fn open_with(
        path: impl AsRef<Path>,
        synchronous: SqliteSync,
        outbox: OutboxSettings,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let mut conn = Connection::open(&path).map_err(backend)?;
        configure_writer(&conn, synchronous)?;
        schema::migrate(&mut conn)?;
        let checkpointer = Connection::open(&path).map_err(backend)?;
        configure_durability(&checkpointer, synchronous)?;
        let (checkpoint_tx, checkpoint_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("peroxo-sqlite-checkpointer".to_owned())
            .spawn(move || run_checkpointer(checkpointer, checkpoint_rx))
            .map_err(|e| {
                StoreError::Backend(format!("cannot start the checkpointer thread: {e}"))
            })?;
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn,
            seqs: HashMap::new(),
            groups: writer::KnownGroups::default(),
            checkpoint: checkpoint_tx,
            deferred: None,
            outbox,
            outbox_ids: outbox::OutboxIds::default(),
        };
        std::thread::Builder::new()
            .name("peroxo-sqlite-writer".to_owned())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(tx),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Hands a job to the writer and waits for its answer, which comes once the job's
    /// transaction has committed (or failed).
    async fn write<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .lock()
            .expect("writer handle poisoned")
            .send(job(reply))
            .map_err(|_| StoreError::Backend("the writer thread has stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the writer thread dropped the job".to_owned()))?
    }

    /// Runs `read` on the blocking pool with a pooled read-only connection.
    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().expect("reader pool poisoned").pop();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&inner.path)?,
            };
            let result = read(&mut conn);
            let mut pool = inner.readers.lock().expect("reader pool poisoned");
            if pool.len() < READ_POOL_SIZE {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

impl MessageStore for SqliteStore {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<AppendOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|reply| Job::Append(batch, reply)).await
    }

    async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        self.read(move |conn| queries::history(conn, &query)).await
    }

    async fn sync(&self, query: SyncQuery) -> Result<SyncPage, StoreError> {
        self.read(move |conn| queries::sync(conn, &query)).await
    }

    async fn last_seq(&self, user: UserKey) -> Result<u64, StoreError> {
        self.read(move |conn| state::last_seq(conn, &user)).await
    }

    async fn create_group(&self, request: CreateGroup) -> Result<GroupOutcome, StoreError> {
        self.write(|reply| Job::CreateGroup(request, reply)).await
    }

    async fn change_group(&self, request: GroupChange) -> Result<GroupOutcome, StoreError> {
        self.write(|reply| Job::ChangeGroup(request, reply)).await
    }

    async fn members(
        &self,
        user: UserKey,
        conversation_id: String,
    ) -> Result<Vec<Member>, StoreError> {
        self.read(move |conn| queries::members(conn, &user, &conversation_id))
            .await
    }

    async fn conversations(
        &self,
        query: ConversationsQuery,
    ) -> Result<ConversationPage, StoreError> {
        self.read(move |conn| queries::conversations(conn, &query))
            .await
    }

    async fn mark_read(&self, request: ReadMark) -> Result<ReadOutcome, StoreError> {
        self.write(|reply| Job::MarkRead(request, reply)).await
    }

    async fn read_receipts(
        &self,
        user: UserKey,
        conversation_id: String,
        message_id: u64,
    ) -> Result<Vec<Receipt>, StoreError> {
        self.read(move |conn| queries::read_receipts(conn, &user, &conversation_id, message_id))
            .await
    }

    async fn change_message(&self, request: MessageChange) -> Result<MessageOutcome, StoreError> {
        self.write(|reply| Job::ChangeMessage(request, reply)).await
    }

    async fn message_tenants(&self) -> Result<Vec<String>, StoreError> {
        self.read(retention::tenants).await
    }

    async fn prune(&self, batch: PruneBatch) -> Result<u64, StoreError> {
        self.write(|reply| Job::Prune(batch, reply)).await
    }

    async fn erase_texts(&self, user: UserKey, limit: u32) -> Result<u64, StoreError> {
        self.write(|reply| Job::EraseTexts(user, limit, reply))
            .await
    }

    async fn erase_read_state(&self, user: UserKey, limit: u32) -> Result<u64, StoreError> {
        self.write(|reply| Job::EraseReadState(user, limit, reply))
            .await
    }

    async fn events(&self, query: EventsQuery) -> Result<OutboxPage, StoreError> {
        self.read(move |conn| outbox::page(conn, &query)).await
    }

    async fn event_tenants(&self) -> Result<Vec<String>, StoreError> {
        self.read(outbox::tenants).await
    }

    async fn prune_events(&self, batch: PruneBatch) -> Result<u64, StoreError> {
        self.write(|reply| Job::PruneEvents(batch, reply)).await
    }

    async fn erase_event_texts(&self, user: UserKey, limit: u32) -> Result<u64, StoreError> {
        self.write(|reply| Job::EraseEventTexts(user, limit, reply))
            .await
    }

    async fn record_events(
        &self,
        tenant: String,
        events: Vec<NewOutboxEvent>,
    ) -> Result<Vec<u64>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|reply| Job::RecordEvents(tenant, events, reply))
            .await
    }

    async fn claim_consumer(
        &self,
        claim: ConsumerClaim,
    ) -> Result<Option<ConsumerLease>, StoreError> {
        self.write(|reply| Job::ClaimConsumer(claim, reply)).await
    }

    async fn advance_consumer(
        &self,
        tenant: String,
        consumer: String,
        holder: String,
        cursor: u64,
    ) -> Result<bool, StoreError> {
        let advance = crate::jobs::Advance {
            tenant,
            consumer,
            holder,
            cursor,
        };
        self.write(|reply| Job::AdvanceConsumer(advance, reply))
            .await
    }

    async fn set_restriction(
        &self,
        user: UserKey,
        change: RestrictionChange,
    ) -> Result<Restriction, StoreError> {
        self.write(|reply| Job::SetRestriction(user, change, reply))
            .await
    }

    async fn restrictions(&self, user: UserKey) -> Result<Restriction, StoreError> {
        self.read(move |conn| restrictions::get(conn, &user)).await
    }

    async fn active_restrictions(
        &self,
        now_ms: i64,
    ) -> Result<Vec<(UserKey, Restriction)>, StoreError> {
        self.read(move |conn| restrictions::active(conn, now_ms))
            .await
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

fn configure_writer(conn: &Connection, synchronous: SqliteSync) -> Result<(), StoreError> {
    // WAL lets readers run beside the writer.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -{WRITER_CACHE_KIB};
         PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES};"
    ))
    .map_err(backend)?;
    configure_durability(conn, synchronous)
}

/// The settings every connection that writes (the writer, the checkpointer) shares.
fn configure_durability(conn: &Connection, synchronous: SqliteSync) -> Result<(), StoreError> {
    // FULL fsyncs the WAL at every commit: an acknowledged message survives a power loss.
    // NORMAL fsyncs at checkpoints only: an acknowledged message survives a crash of the
    // process, not of the machine.
    let synchronous = match synchronous {
        SqliteSync::Full => "FULL",
        SqliteSync::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous};
         PRAGMA busy_timeout = 5000;"
    ))
    .map_err(backend)
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(backend)?;
    conn.execute_batch("PRAGMA busy_timeout = 5000;")
        .map_err(backend)?;
    Ok(conn)
}

/// The checkpointer thread: after the writer commits, copies the WAL into the database file
/// (a passive checkpoint, which never blocks the writer or readers), at most once per
/// [`CHECKPOINT_INTERVAL`]. It ends with the writer.
fn run_checkpointer(conn: Connection, commits: mpsc::Receiver<()>) {
    while commits.recv().is_ok() {
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%error, "sqlite checkpoint failed; the next one retries");
        }
        std::thread::sleep(CHECKPOINT_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dm(sender: &str, recipient: &str, client_msg_id: &str) -> NewMessage {
        NewMessage {
            tenant: "t".to_owned(),
            sender: sender.to_owned(),
            recipient: recipient.to_owned(),
            client_msg_id: client_msg_id.to_owned(),
            text: "x".repeat(200),
            reply_to: None,
        }
    }

    fn seqs_of(outcomes: &[AppendOutcome]) -> Vec<(u64, u64)> {
        outcomes
            .iter()
            .map(|o| match o {
                AppendOutcome::Stored { message, .. } => {
                    (message.sender_seq, message.recipient_seq)
                }
                AppendOutcome::Rejected(reason) => {
                    panic!("rejected: {reason}")
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn the_checkpointer_copies_the_wal_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = SqliteStore::open(&path, SqliteSync::Normal).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        for n in 0..20 {
            let batch = (0..100)
                .map(|i| dm("alice", "bob", &format!("m{n}-{i}")))
                .collect();
            store.append(batch).await.unwrap();
        }
        // Far below the writer's own autocheckpoint threshold: only the checkpointer moves
        // these pages into the database file.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() <= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the database file never grew: no checkpoint ran"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn remembered_seqs_are_forgotten_when_a_commit_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = SqliteStore::open(&path, SqliteSync::Normal).unwrap();
        let first = store.append(vec![dm("alice", "bob", "a1")]).await.unwrap();
        assert_eq!(seqs_of(&first), [(1, 1)]);
        // Another writer takes alice's seq 2 behind the store's back.
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch(
                "INSERT INTO messages (id, tenant, sender, recipient, conversation, client_msg_id,
                     text, ts, sender_seq, recipient_seq)
                 VALUES (1000, 't', 'alice', 'carol', 'alice:carol', 'x1', 'x', 0, 2, 1);
                 INSERT INTO inbox (tenant, owner, seq, message_id)
                 VALUES ('t', 'alice', 2, 1000), ('t', 'carol', 1, 1000);",
            )
            .unwrap();
        // The remembered seq is stale: the commit fails instead of overwriting seq 2 ...
        assert!(store.append(vec![dm("alice", "bob", "a2")]).await.is_err());
        // ... and the retry reads the seqs again.
        let retried = store.append(vec![dm("alice", "bob", "a2")]).await.unwrap();
        assert_eq!(seqs_of(&retried), [(3, 2)]);
    }

    #[tokio::test]
    async fn outbox_ids_another_writer_took_are_never_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = SqliteStore::open(&path, SqliteSync::Normal).unwrap();
        store.append(vec![dm("alice", "bob", "a1")]).await.unwrap();
        // Another writer of the file took ids 2 to 5, and retention deleted them since.
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch("UPDATE outbox_counters SET last_id = 5 WHERE tenant = 't'")
            .unwrap();
        // The remembered last id is stale: the commit fails instead of taking id 2 ...
        assert!(store.append(vec![dm("alice", "bob", "a2")]).await.is_err());
        // ... and the next one reads the counter again.
        store.append(vec![dm("alice", "bob", "a2")]).await.unwrap();
        let query = EventsQuery {
            tenant: "t".to_owned(),
            after: 0,
            limit: 10,
        };
        let ids: Vec<u64> = store
            .events(query)
            .await
            .unwrap()
            .events
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, [1, 6]);
    }
}
