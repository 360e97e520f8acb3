//! The embedded backend: one SQLite file in WAL mode.
//!
//! One writer thread owns the only write connection. It takes every append job waiting for it
//! and commits them in one transaction (group commit), so many gateways or batches share one
//! fsync. It remembers every recent user's current seq, so a message costs three statements
//! (the message, and one inbox row per participant) instead of six. A checkpointer thread with
//! its own connection copies the WAL back into the database file, so the writer never stops to
//! do it. Reads run on the blocking pool over a small set of read-only connections; WAL lets
//! them proceed while the writer commits.
//!
//! Schema (version 1, in `PRAGMA user_version`):
//! - `messages`: one row per message; `id` is the message id and orders a conversation;
//!   `UNIQUE (tenant, sender, client_msg_id)` makes appends idempotent.
//! - `inbox`: one row per (tenant, owner, seq) pointing at a message: every user's gapless
//!   stream. The highest seq of an owner is that user's current seq.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, params};
use tokio::sync::oneshot;

use super::seq_assignment::{MessageSeqs, inbox_entries, next_seqs, stream_entries};
use super::sql::{MESSAGE_COLUMNS, history_page, rows_for_page, sql_int, sync_page};
use super::{HistoryQuery, MAX_STORED_TEXT_BYTES, MessageStore, StoreError, SyncQuery};
use peroxo_config::SqliteSync;
use peroxo_protocol::conversation::{
    ConversationPage, ConversationsQuery, CreateGroup, GroupChange, GroupOutcome, ReadMark,
    ReadOutcome, Receipt,
};
use peroxo_protocol::domain::{
    AppendOutcome, HistoryPage, NewMessage, StoredMessage, SyncPage, UserKey, conversation_id,
    now_ms,
};
use peroxo_protocol::event::{Member, Refusal, RefusalCode};

/// Read connections kept open for reuse.
const READ_POOL_SIZE: usize = 8;
/// The most messages the writer commits in one transaction.
const MAX_GROUP_COMMIT: usize = 8_192;
/// The writer's page cache, in KiB: the indexes every append touches stay in memory instead
/// of being read back through the OS at every lookup.
const WRITER_CACHE_KIB: u32 = 65_536;
/// The least time between two checkpoints: each copies whatever the WAL gathered meanwhile.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(10);
/// WAL pages (4 KiB each) past which the writer checkpoints by itself, should the
/// checkpointer ever fall that far behind.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// Users whose current seq the writer remembers; past this, it forgets them all and reads
/// each again from the database when next needed.
const SEQ_CACHE_USERS: usize = 200_000;
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    conversation TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    text TEXT NOT NULL,
    ts INTEGER NOT NULL,
    sender_seq INTEGER NOT NULL,
    recipient_seq INTEGER NOT NULL,
    UNIQUE (tenant, sender, client_msg_id)
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (tenant, conversation, id);
CREATE TABLE IF NOT EXISTS inbox (
    tenant TEXT NOT NULL,
    owner TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id INTEGER NOT NULL REFERENCES messages (id),
    PRIMARY KEY (tenant, owner, seq)
) WITHOUT ROWID;
";

/// A SQLite-backed [`MessageStore`]. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Append jobs for the writer thread; the thread ends when the last sender is dropped.
    writer: Mutex<mpsc::Sender<AppendJob>>,
    /// Idle read-only connections.
    readers: Mutex<Vec<Connection>>,
}

struct AppendJob {
    batch: Vec<NewMessage>,
    reply: oneshot::Sender<Result<Vec<AppendOutcome>, StoreError>>,
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
    /// `synchronous`, migrates it, and starts the writer.
    pub fn open(path: impl AsRef<Path>, synchronous: SqliteSync) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(&path).map_err(backend)?;
        configure_writer(&conn, synchronous)?;
        migrate(&conn)?;
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
            checkpoint: checkpoint_tx,
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
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .lock()
            .expect("writer handle poisoned")
            .send(AppendJob { batch, reply })
            .map_err(|_| StoreError::Backend("the writer thread has stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the writer thread dropped the batch".to_owned()))?
    }

    async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        self.read(move |conn| {
            let conversation = query.conversation_id.clone();
            let before = query.before.map_or(i64::MAX, sql_int);
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m
                     WHERE m.tenant = ?1 AND m.conversation = ?2 AND m.id < ?3
                     ORDER BY m.id DESC LIMIT ?4"
                ))
                .map_err(backend)?;
            let newest_first = stmt
                .query_map(
                    params![
                        query.user.tenant,
                        conversation,
                        before,
                        rows_for_page(query.limit)
                    ],
                    row_to_message,
                )
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            Ok(history_page(newest_first, query.limit))
        })
        .await
    }

    async fn sync(&self, query: SyncQuery) -> Result<SyncPage, StoreError> {
        self.read(move |conn| {
            // One read transaction, so `last_seq` and the page come from one snapshot.
            let tx = conn.transaction().map_err(backend)?;
            let last_seq = last_seq_in(&tx, &query.user)?;
            let rows = {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM inbox i JOIN messages m ON m.id = i.message_id
                         WHERE i.tenant = ?1 AND i.owner = ?2 AND i.seq > ?3
                         ORDER BY i.seq LIMIT ?4"
                    ))
                    .map_err(backend)?;
                stmt.query_map(
                    params![
                        query.user.tenant,
                        query.user.user,
                        sql_int(query.after_seq),
                        rows_for_page(query.limit)
                    ],
                    row_to_message,
                )
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?
            };
            Ok(sync_page(rows, query.limit, last_seq))
        })
        .await
    }

    async fn last_seq(&self, user: UserKey) -> Result<u64, StoreError> {
        self.read(move |conn| last_seq_in(conn, &user)).await
    }

    async fn create_group(&self, _request: CreateGroup) -> Result<GroupOutcome, StoreError> {
        Err(unsupported())
    }

    async fn change_group(&self, _request: GroupChange) -> Result<GroupOutcome, StoreError> {
        Err(unsupported())
    }

    async fn members(
        &self,
        _user: UserKey,
        _conversation_id: String,
    ) -> Result<Vec<Member>, StoreError> {
        Err(unsupported())
    }

    async fn conversations(
        &self,
        _query: ConversationsQuery,
    ) -> Result<ConversationPage, StoreError> {
        Err(unsupported())
    }

    async fn mark_read(&self, _request: ReadMark) -> Result<ReadOutcome, StoreError> {
        Err(unsupported())
    }

    async fn read_receipts(
        &self,
        _user: UserKey,
        _conversation_id: String,
        _message_id: u64,
    ) -> Result<Vec<Receipt>, StoreError> {
        Err(unsupported())
    }
}

fn unsupported() -> StoreError {
    StoreError::Backend("not supported by this backend yet".to_owned())
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

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(backend)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "the database has schema version {version}, newer than this build knows ({SCHEMA_VERSION})"
        )));
    }
    if version < SCHEMA_VERSION {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))
        .map_err(backend)?;
    }
    Ok(())
}

fn row_to_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        message_id: row.get::<_, i64>(0)? as u64,
        tenant: row.get(1)?,
        sender: row.get(2)?,
        recipient: row.get(3)?,
        client_msg_id: row.get(4)?,
        text: row.get(5)?,
        ts: row.get(6)?,
        sender_seq: row.get::<_, i64>(7)? as u64,
        recipient_seq: row.get::<_, i64>(8)? as u64,
    })
}

fn last_seq_in(conn: &Connection, user: &UserKey) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM inbox WHERE tenant = ?1 AND owner = ?2")
        .and_then(|mut stmt| {
            stmt.query_row(params![user.tenant, user.user], |row| row.get::<_, i64>(0))
        })
        .map(|seq| seq as u64)
        .map_err(backend)
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

/// The writer thread's state.
struct Writer {
    conn: Connection,
    /// The current seq of recently seen users, as committed (or being committed by the open
    /// transaction). Cleared when a transaction fails, since it may then be ahead.
    seqs: HashMap<UserKey, u64>,
    /// Wakes the checkpointer after a commit.
    checkpoint: mpsc::SyncSender<()>,
}

impl Writer {
    /// Takes every waiting job, commits them together, answers each.
    fn run(mut self, jobs: mpsc::Receiver<AppendJob>) {
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            let mut queued: usize = group[0].batch.len();
            while queued < MAX_GROUP_COMMIT {
                match jobs.try_recv() {
                    Ok(job) => {
                        queued += job.batch.len();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            match self.commit_group(&group) {
                Ok(outcomes) => {
                    let _ = self.checkpoint.try_send(());
                    for (job, outcome) in group.into_iter().zip(outcomes) {
                        let _ = job.reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    self.seqs.clear();
                    tracing::error!(error = %e, "sqlite append transaction failed");
                    for job in group {
                        let _ = job.reply.send(Err(StoreError::Backend(e.to_string())));
                    }
                }
            }
        }
    }

    fn commit_group(&mut self, group: &[AppendJob]) -> Result<Vec<Vec<AppendOutcome>>, StoreError> {
        if self.seqs.len() > SEQ_CACHE_USERS {
            self.seqs.clear();
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(backend)?;
        let ts = now_ms();
        let mut outcomes = Vec::with_capacity(group.len());
        for job in group {
            let mut batch_outcomes = Vec::with_capacity(job.batch.len());
            for message in &job.batch {
                batch_outcomes.push(append_one(&tx, &mut self.seqs, message, ts)?);
            }
            outcomes.push(batch_outcomes);
        }
        tx.commit().map_err(backend)?;
        Ok(outcomes)
    }
}

/// The current seq of `user`: remembered, or read inside the transaction.
fn current_seq(
    tx: &Transaction<'_>,
    seqs: &HashMap<UserKey, u64>,
    user: &UserKey,
) -> Result<u64, StoreError> {
    match seqs.get(user) {
        Some(seq) => Ok(*seq),
        None => last_seq_in(tx, user),
    }
}

/// Stores `message` inside the writer's transaction: rejects it when invalid, answers it with
/// the original when it was sent before, and otherwise inserts it with the next seqs of its
/// participants, which `seqs` then remembers.
fn append_one(
    tx: &Transaction<'_>,
    seqs: &mut HashMap<UserKey, u64>,
    message: &NewMessage,
    ts: i64,
) -> Result<AppendOutcome, StoreError> {
    if let Err(reason) = message.validate(MAX_STORED_TEXT_BYTES) {
        return Ok(AppendOutcome::Rejected(Refusal::new(
            RefusalCode::BadRequest,
            reason,
        )));
    }
    let sender = UserKey::new(message.tenant.clone(), message.sender.clone());
    let recipient = sender.peer(message.recipient.clone());
    let assigned = next_seqs(&sender, &recipient, |user| current_seq(tx, seqs, user))?;
    let Some(message_id) = insert_message(tx, message, ts, assigned)? else {
        return Ok(AppendOutcome::Stored {
            message: find_original(tx, message)?,
            duplicate: true,
            members: Vec::new(),
        });
    };
    let stored = assigned.stored(message, message_id as u64, ts);
    insert_inbox(tx, &stored)?;
    // Remembered only now: a duplicate takes no seq.
    for (user, seq) in stream_entries(&sender, &recipient, assigned) {
        seqs.insert(user.clone(), seq);
    }
    Ok(AppendOutcome::Stored {
        message: stored,
        duplicate: false,
        members: Vec::new(),
    })
}

/// Inserts `message` with `assigned` seqs and returns its message id, or `None` when it was
/// sent before: the unique (tenant, sender, client_msg_id) decides idempotency, so a resend
/// inserts nothing.
fn insert_message(
    tx: &Transaction<'_>,
    message: &NewMessage,
    ts: i64,
    assigned: MessageSeqs,
) -> Result<Option<i64>, StoreError> {
    let inserted = tx
        .prepare_cached(
            "INSERT INTO messages
                (tenant, sender, recipient, conversation, client_msg_id, text, ts, sender_seq, recipient_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (tenant, sender, client_msg_id) DO NOTHING",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                message.tenant,
                message.sender,
                message.recipient,
                conversation_id(&message.sender, &message.recipient),
                message.client_msg_id,
                message.text,
                ts,
                sql_int(assigned.sender),
                sql_int(assigned.recipient),
            ])
        })
        .map_err(backend)?;
    Ok((inserted != 0).then(|| tx.last_insert_rowid()))
}

/// The stored original of a resent `message`.
fn find_original(tx: &Transaction<'_>, message: &NewMessage) -> Result<StoredMessage, StoreError> {
    tx.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m
         WHERE m.tenant = ?1 AND m.sender = ?2 AND m.client_msg_id = ?3"
    ))
    .and_then(|mut stmt| {
        stmt.query_row(
            params![message.tenant, message.sender, message.client_msg_id],
            row_to_message,
        )
    })
    .map_err(backend)
}

/// Adds `stored` to its participants' streams: one inbox row each, one for a message to
/// oneself.
fn insert_inbox(tx: &Transaction<'_>, stored: &StoredMessage) -> Result<(), StoreError> {
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO inbox (tenant, owner, seq, message_id) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(backend)?;
    for (owner, seq) in inbox_entries(stored) {
        insert
            .execute(params![
                stored.tenant,
                owner,
                sql_int(seq),
                stored.message_id as i64
            ])
            .map_err(backend)?;
    }
    Ok(())
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
                 INSERT INTO inbox VALUES ('t', 'alice', 2, 1000), ('t', 'carol', 1, 1000);",
            )
            .unwrap();
        // The remembered seq is stale: the commit fails instead of overwriting seq 2 ...
        assert!(store.append(vec![dm("alice", "bob", "a2")]).await.is_err());
        // ... and the retry reads the seqs again.
        let retried = store.append(vec![dm("alice", "bob", "a2")]).await.unwrap();
        assert_eq!(seqs_of(&retried), [(3, 2)]);
    }
}
