//! The embedded backend: one SQLite file in WAL mode.
//!
//! One writer thread owns the only write connection. It takes every append job waiting for it
//! and commits them in one transaction (group commit), so many gateways or batches share one
//! fsync. Reads run on the blocking pool over a small set of read-only connections; WAL lets
//! them proceed while the writer commits.
//!
//! Schema (version 1, in `PRAGMA user_version`):
//! - `messages`: one row per message; `id` is the message id and orders a conversation;
//!   `UNIQUE (tenant, sender, client_msg_id)` makes appends idempotent.
//! - `inbox`: one row per (tenant, owner, seq) pointing at a message: every user's gapless
//!   stream. The highest seq of an owner is that user's current seq.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

use super::{HistoryQuery, MAX_STORED_TEXT_BYTES, MessageStore, StoreError, SyncQuery};
use crate::config::SqliteSync;
use crate::domain::{
    AppendOutcome, HistoryPage, NewMessage, StoredMessage, SyncPage, UserKey, conversation_id,
    now_ms,
};

/// Read connections kept open for reuse.
const READ_POOL_SIZE: usize = 8;
/// The most messages the writer commits in one transaction.
const MAX_GROUP_COMMIT: usize = 8_192;
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

const MESSAGE_COLUMNS: &str = "m.id, m.tenant, m.sender, m.recipient, m.client_msg_id, m.text, m.ts, m.sender_seq, m.recipient_seq";

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
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("peroxo-sqlite-writer".to_owned())
            .spawn(move || run_writer(conn, rx))
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
            let conversation = conversation_id(&query.user.user, &query.peer);
            let before = query
                .before
                .map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
            let limit = i64::from(query.limit);
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m
                     WHERE m.tenant = ?1 AND m.conversation = ?2 AND m.id < ?3
                     ORDER BY m.id DESC LIMIT ?4"
                ))
                .map_err(backend)?;
            let mut messages = stmt
                .query_map(
                    params![query.user.tenant, conversation, before, limit + 1],
                    row_to_message,
                )
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            let has_more = messages.len() as i64 > limit;
            messages.truncate(query.limit as usize);
            messages.reverse();
            Ok(HistoryPage { messages, has_more })
        })
        .await
    }

    async fn sync(&self, query: SyncQuery) -> Result<SyncPage, StoreError> {
        self.read(move |conn| {
            // One read transaction, so `last_seq` and the page come from one snapshot.
            let tx = conn.transaction().map_err(backend)?;
            let last_seq = last_seq_in(&tx, &query.user)?;
            let limit = i64::from(query.limit);
            let mut messages = {
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
                        seq_to_sql(query.after_seq),
                        limit + 1
                    ],
                    row_to_message,
                )
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?
            };
            let has_more = messages.len() as i64 > limit;
            messages.truncate(query.limit as usize);
            Ok(SyncPage {
                messages,
                last_seq,
                has_more,
            })
        })
        .await
    }

    async fn last_seq(&self, user: UserKey) -> Result<u64, StoreError> {
        self.read(move |conn| last_seq_in(conn, &user)).await
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

fn seq_to_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn configure_writer(conn: &Connection, synchronous: SqliteSync) -> Result<(), StoreError> {
    // WAL lets readers run beside the writer. FULL fsyncs the WAL at every commit: an
    // acknowledged message survives a power loss. NORMAL fsyncs at checkpoints only: an
    // acknowledged message survives a crash of the process, not of the machine.
    let synchronous = match synchronous {
        SqliteSync::Full => "FULL",
        SqliteSync::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {synchronous};
         PRAGMA foreign_keys = ON;
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

/// The writer thread: takes every waiting job, commits them together, answers each.
fn run_writer(mut conn: Connection, jobs: mpsc::Receiver<AppendJob>) {
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
        match commit_group(&mut conn, &group) {
            Ok(outcomes) => {
                for (job, outcome) in group.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "sqlite append transaction failed");
                for job in group {
                    let _ = job.reply.send(Err(StoreError::Backend(e.to_string())));
                }
            }
        }
    }
}

fn commit_group(
    conn: &mut Connection,
    group: &[AppendJob],
) -> Result<Vec<Vec<AppendOutcome>>, StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(backend)?;
    let ts = now_ms();
    let mut outcomes = Vec::with_capacity(group.len());
    for job in group {
        let mut batch_outcomes = Vec::with_capacity(job.batch.len());
        for message in &job.batch {
            batch_outcomes.push(append_one(&tx, message, ts)?);
        }
        outcomes.push(batch_outcomes);
    }
    tx.commit().map_err(backend)?;
    Ok(outcomes)
}

fn append_one(
    tx: &Transaction<'_>,
    message: &NewMessage,
    ts: i64,
) -> Result<AppendOutcome, StoreError> {
    if let Err(reason) = message.validate(MAX_STORED_TEXT_BYTES) {
        return Ok(AppendOutcome::Rejected(reason));
    }
    let existing = tx
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m
             WHERE m.tenant = ?1 AND m.sender = ?2 AND m.client_msg_id = ?3"
        ))
        .and_then(|mut stmt| {
            stmt.query_row(
                params![message.tenant, message.sender, message.client_msg_id],
                row_to_message,
            )
            .optional()
        })
        .map_err(backend)?;
    if let Some(original) = existing {
        return Ok(AppendOutcome::Stored {
            message: original,
            duplicate: true,
        });
    }
    let sender = UserKey::new(message.tenant.clone(), message.sender.clone());
    let sender_seq = last_seq_in(tx, &sender)? + 1;
    let recipient_seq = if message.recipient == message.sender {
        sender_seq
    } else {
        last_seq_in(tx, &sender.peer(message.recipient.clone()))? + 1
    };
    tx.prepare_cached(
        "INSERT INTO messages
            (tenant, sender, recipient, conversation, client_msg_id, text, ts, sender_seq, recipient_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
            seq_to_sql(sender_seq),
            seq_to_sql(recipient_seq),
        ])
    })
    .map_err(backend)?;
    let message_id = tx.last_insert_rowid();
    let mut insert_inbox = tx
        .prepare_cached(
            "INSERT INTO inbox (tenant, owner, seq, message_id) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(backend)?;
    insert_inbox
        .execute(params![
            message.tenant,
            message.sender,
            seq_to_sql(sender_seq),
            message_id
        ])
        .map_err(backend)?;
    if message.recipient != message.sender {
        insert_inbox
            .execute(params![
                message.tenant,
                message.recipient,
                seq_to_sql(recipient_seq),
                message_id
            ])
            .map_err(backend)?;
    }
    Ok(AppendOutcome::Stored {
        message: StoredMessage {
            message_id: message_id as u64,
            tenant: message.tenant.clone(),
            sender: message.sender.clone(),
            recipient: message.recipient.clone(),
            client_msg_id: message.client_msg_id.clone(),
            text: message.text.clone(),
            ts,
            sender_seq,
            recipient_seq,
        },
        duplicate: false,
    })
}
