//! The embedded log-structured backend: one fjall database (a set of LSM trees sharing one
//! journal) in a directory.
//!
//! Its tables are key ranges (see `tables`): a user's stream is `inbox/{tenant}/{user}/{seq}`,
//! a conversation's history `by_conversation/{tenant}/{conversation}/{id}`, a dedupe key one
//! point, so a commit appends to the journal what it changes and nothing else; memtables are
//! flushed and compacted in the background. One writer thread is the only writer: it does
//! waiting jobs in one transaction of its own (their writes held in memory, where its reads
//! see them) and commits them together (group commit) as one write batch, each commit one
//! journal write and (with `lsm_synchronous = "full"`) one fsync, as the SQLite backend does.
//! Reads run on the blocking pool over a snapshot of the committed state, which a batch
//! enters whole or not at all.
//!
//! - `keys`: how a tuple of strings and numbers becomes an ordered key.
//! - `tables`: the keyspaces, their rows and typed reads, over a snapshot or the writer's
//!   transaction alike.
//! - `overlay`: the writer's transaction: its writes in memory over a snapshot, committed as
//!   one batch.
//! - `writer`: the writer thread, its jobs and the transaction they share, where seqs are
//!   taken, events fan out and conversation states keep their indexes.
//! - `append`, `groups`, `reads`, `lifecycle`: the writes of messages, of group creations and
//!   changes, of read marks, of edits, deletes and reactions (the rules they follow are
//!   [`rules`](crate::rules)').
//! - `queries`: history, sync, the current seq, the conversation list.
//! - `retention`, `erase`, `outbox`, `restrictions`: as in the SQLite backend.
//!
//! One process opens the database at a time (the engine locks its directory): operator
//! commands that open it (`peroxo user`) need the service stopped, or go through the server
//! API.

mod append;
mod erase;
mod groups;
mod inspect;
mod keys;
mod lifecycle;
mod outbox;
mod overlay;
mod queries;
mod reads;
mod restrictions;
mod retention;
mod tables;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::{Database, PersistMode, Snapshot};
use tokio::sync::oneshot;

use super::{
    EventsQuery, HistoryQuery, MessageStore, OutboxSettings, PruneBatch, StoreError, SyncQuery,
};
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
use tables::{FORMAT_VERSION, META_VERSION, Tables, engine};
use writer::{Job, Reply, Sent, Writer};

/// An lsm-backed [`MessageStore`]. Cheap to clone.
#[derive(Clone)]
pub struct LsmStore {
    shared: Arc<Shared>,
    /// How this store writes outbox events (each store opened over the database has its own).
    outbox: OutboxSettings,
}

/// One open database: what every store opened over it in this process shares.
struct Shared {
    path: PathBuf,
    db: Database,
    tables: Arc<Tables>,
    /// Jobs for the writer thread; the thread ends when this sender is dropped.
    writer: Mutex<Option<mpsc::Sender<Sent>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    /// Stops the writer (after the jobs already sent) and waits for it, so that the database
    /// is closed, and may be opened again, once the last store over it is gone.
    fn drop(&mut self) {
        drop(self.writer.lock().map(|mut w| w.take()));
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the lsm writer thread panicked");
        }
    }
}

/// The databases open in this process, by canonical path: a second store over the same
/// directory (a service restarted in place, `peroxo user` beside a test's service) shares the
/// engine and its writer, as the engine allows one opener of a directory at a time.
static OPEN: Mutex<Vec<(PathBuf, Weak<Shared>)>> = Mutex::new(Vec::new());

/// How long opening waits for a database that another store of this process is closing.
const OPEN_WAIT: Duration = Duration::from_secs(10);

impl std::fmt::Debug for LsmStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LsmStore")
            .field("path", &self.shared.path)
            .finish()
    }
}

impl LsmStore {
    /// Opens (creating if needed) the database in the directory `path`, with the durability
    /// of `synchronous`, and starts its writer; the store writes outbox events as `outbox`
    /// says. A database this process has open already is shared, with the durability it was
    /// opened with. Another process's open database is refused (the engine locks it).
    pub fn open_with(
        path: impl AsRef<Path>,
        synchronous: SqliteSync,
        outbox: OutboxSettings,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref();
        std::fs::create_dir_all(path).map_err(|e| {
            StoreError::Backend(format!("cannot create directory {}: {e}", path.display()))
        })?;
        let path = path.canonicalize().map_err(|e| {
            StoreError::Backend(format!("cannot resolve directory {}: {e}", path.display()))
        })?;
        let deadline = Instant::now() + OPEN_WAIT;
        // Whether a store of this process had it open: the engine may still be letting go.
        let mut ours = false;
        loop {
            let mut open = OPEN.lock().expect("lsm registry poisoned");
            ours |= open.iter().any(|(p, _)| *p == path);
            open.retain(|(_, shared)| shared.strong_count() > 0);
            if let Some(shared) = open
                .iter()
                .find(|(p, _)| *p == path)
                .and_then(|(_, shared)| shared.upgrade())
            {
                return Ok(Self { shared, outbox });
            }
            match Shared::open(&path, synchronous) {
                Ok(shared) => {
                    let shared = Arc::new(shared);
                    open.push((path, Arc::downgrade(&shared)));
                    return Ok(Self { shared, outbox });
                }
                // A store of this process may be closing it: its writer finishes, then the
                // engine lets go of the directory.
                Err(None) if ours && Instant::now() < deadline => {
                    drop(open);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(None) => {
                    return Err(StoreError::Backend(format!(
                        "the lsm database {} is open in another process (a running service?)",
                        path.display()
                    )));
                }
                Err(Some(e)) => return Err(e),
            }
        }
    }

    /// Hands a job to the writer and waits for its answer, which comes once the job's
    /// transaction has committed (or failed).
    async fn write<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Backend("the writer thread has stopped".to_owned());
        self.shared
            .writer
            .lock()
            .expect("writer handle poisoned")
            .as_ref()
            .ok_or_else(stopped)?
            .send((self.outbox, job(reply)))
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the writer thread dropped the job".to_owned()))?
    }

    /// Runs `read` on the blocking pool over a snapshot of what is committed.
    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshot, &Tables) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let snapshot = shared.db.snapshot();
            read(&snapshot, &shared.tables)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

impl Shared {
    /// Opens the engine over `path` and starts the writer. `Err(None)`: another opener holds
    /// the directory.
    fn open(path: &Path, synchronous: SqliteSync) -> Result<Self, Option<StoreError>> {
        let db = match Database::builder(path).open() {
            Ok(db) => db,
            Err(fjall::Error::Locked) => return Err(None),
            Err(e) => return Err(Some(engine(e))),
        };
        let open = || -> Result<Self, StoreError> {
            let tables = Arc::new(Tables::open(&db)?);
            check_format(&db, &tables)?;
            let ids = writer::LastIds::load(&db, &tables)?;
            let durability = match synchronous {
                SqliteSync::Full => Some(PersistMode::SyncAll),
                SqliteSync::Normal => Some(PersistMode::Buffer),
            };
            let (tx, rx) = mpsc::channel();
            let writer = Writer {
                db: db.clone(),
                tables: Arc::clone(&tables),
                durability,
                seqs: HashMap::new(),
                groups: writer::KnownGroups::default(),
                ids,
                outbox_ids: outbox::OutboxIds::default(),
                deferred: None,
            };
            let thread = std::thread::Builder::new()
                .name("peroxo-lsm-writer".to_owned())
                .spawn(move || writer.run(rx))
                .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
            Ok(Self {
                path: path.to_path_buf(),
                db: db.clone(),
                tables,
                writer: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
            })
        };
        open().map_err(Some)
    }
}

/// Writes the format's version into a new database; refuses a database of another format.
fn check_format(db: &Database, t: &Tables) -> Result<(), StoreError> {
    let found = tables::get_u64(&db.snapshot(), &t.meta, META_VERSION)?;
    match found {
        Some(FORMAT_VERSION) => Ok(()),
        Some(other) => Err(StoreError::Backend(format!(
            "the lsm database has format {other}; this build reads format {FORMAT_VERSION}"
        ))),
        None => {
            let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
            let version = tables::encode_u64(FORMAT_VERSION);
            batch.insert(&t.meta.keyspace, META_VERSION, version.as_slice());
            batch.commit().map_err(engine)
        }
    }
}

impl MessageStore for LsmStore {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<AppendOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|reply| Job::Append(batch, reply)).await
    }

    async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        self.read(move |r, t| queries::history(r, t, &query)).await
    }

    async fn sync(&self, query: SyncQuery) -> Result<SyncPage, StoreError> {
        self.read(move |r, t| queries::sync(r, t, &query)).await
    }

    async fn last_seq(&self, user: UserKey) -> Result<u64, StoreError> {
        self.read(move |r, t| queries::last_seq(r, t, &user)).await
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
        self.read(move |r, t| groups::members(r, t, &user, &conversation_id))
            .await
    }

    async fn conversations(
        &self,
        query: ConversationsQuery,
    ) -> Result<ConversationPage, StoreError> {
        self.read(move |r, t| queries::conversations(r, t, &query))
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
        self.read(move |r, t| reads::read_receipts(r, t, &user, &conversation_id, message_id))
            .await
    }

    async fn change_message(&self, request: MessageChange) -> Result<MessageOutcome, StoreError> {
        self.write(|reply| Job::ChangeMessage(request, reply)).await
    }

    async fn message_tenants(&self) -> Result<Vec<String>, StoreError> {
        self.read(retention::message_tenants).await
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
        self.read(move |r, t| outbox::page(r, t, &query)).await
    }

    async fn event_tenants(&self) -> Result<Vec<String>, StoreError> {
        self.read(outbox::event_tenants).await
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
        self.read(move |r, t| restrictions::get(r, t, &user)).await
    }

    async fn active_restrictions(
        &self,
        now_ms: i64,
    ) -> Result<Vec<(UserKey, Restriction)>, StoreError> {
        self.read(move |r, t| restrictions::active(r, t, now_ms))
            .await
    }
}
