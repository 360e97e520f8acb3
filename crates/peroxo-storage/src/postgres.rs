//! The PostgreSQL backend, for storage services that run as several instances.
//!
//! Several instances may append at once. A batch locks the seq counter row of every user it
//! touches, in a fixed order (tenant, user), before it assigns anything: transactions that
//! share a user run one after the other, so per-user seqs stay gapless and unique, message
//! ids grow in commit order within a conversation, and no two batches can deadlock. The
//! unique key (tenant, sender, client_msg_id) makes appends idempotent; under the sender's
//! lock a duplicate is always seen before it could be inserted.
//!
//! Each batch is a handful of statements whatever its size (arrays bound with `unnest`).
//!
//! Schema migrations are embedded and applied at start-up under an advisory lock, so
//! instances starting together apply each migration exactly once.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Row};

use super::seq_assignment::{inbox_entries, next_seqs, stream_entries};
use super::sql::{MESSAGE_COLUMNS, history_page, rows_for_page, sql_int, sync_page};
use super::{HistoryQuery, MAX_STORED_TEXT_BYTES, MessageStore, StoreError, SyncQuery};
use peroxo_protocol::conversation::{
    ConversationPage, ConversationsQuery, CreateGroup, GroupChange, GroupOutcome, ReadMark,
    ReadOutcome, Receipt,
};
use peroxo_protocol::domain::{
    AppendOutcome, HistoryPage, NewMessage, StoredMessage, SyncPage, UserKey, now_ms,
};
use peroxo_protocol::event::{Member, Refusal, RefusalCode};

/// The advisory lock key that serializes migrations across instances ("PEROXO" in ASCII).
const MIGRATION_LOCK: i64 = 0x5045_524f_584f;

/// Versioned migrations, applied in order, each once.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE messages (
        id BIGINT PRIMARY KEY,
        tenant TEXT NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        conversation TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        text TEXT NOT NULL,
        ts BIGINT NOT NULL,
        sender_seq BIGINT NOT NULL,
        recipient_seq BIGINT NOT NULL,
        UNIQUE (tenant, sender, client_msg_id)
    );
    CREATE SEQUENCE messages_id_seq OWNED BY messages.id;
    CREATE INDEX messages_by_conversation ON messages (tenant, conversation, id);
    CREATE TABLE user_seqs (
        tenant TEXT NOT NULL,
        owner TEXT NOT NULL,
        last_seq BIGINT NOT NULL,
        PRIMARY KEY (tenant, owner)
    );
    CREATE TABLE inbox (
        tenant TEXT NOT NULL,
        owner TEXT NOT NULL,
        seq BIGINT NOT NULL,
        message_id BIGINT NOT NULL REFERENCES messages (id),
        PRIMARY KEY (tenant, owner, seq)
    );",
)];

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

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(backend)?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(backend)?;
        let result = async {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS peroxo_schema_migrations (
                        version INT PRIMARY KEY,
                        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                    )",
                )
                .await?;
            let current: i32 = client
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM peroxo_schema_migrations",
                    &[],
                )
                .await?
                .get(0);
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
                let tx = client.transaction().await?;
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO peroxo_schema_migrations (version) VALUES ($1)",
                    &[version],
                )
                .await?;
                tx.commit().await?;
                tracing::info!(version, "postgres schema migrated");
            }
            Ok::<_, tokio_postgres::Error>(())
        }
        .await;
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        result.map_err(backend)?;
        unlocked.map_err(backend)?;
        Ok(())
    }
}

fn row_to_message(row: &Row) -> StoredMessage {
    StoredMessage {
        message_id: row.get::<_, i64>(0) as u64,
        tenant: row.get(1),
        sender: row.get(2),
        recipient: row.get(3),
        client_msg_id: row.get(4),
        text: row.get(5),
        ts: row.get(6),
        sender_seq: row.get::<_, i64>(7) as u64,
        recipient_seq: row.get::<_, i64>(8) as u64,
    }
}

/// The identity of a send for idempotency.
type SendKey = (String, String, String);

fn send_key(tenant: &str, sender: &str, client_msg_id: &str) -> SendKey {
    (
        tenant.to_owned(),
        sender.to_owned(),
        client_msg_id.to_owned(),
    )
}

/// The last seq of every user a batch touches, locked until the batch commits.
type Counters = BTreeMap<UserKey, u64>;

impl MessageStore for PostgresStore {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<AppendOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;

        let checks: Vec<Result<(), String>> = batch
            .iter()
            .map(|m| m.validate(MAX_STORED_TEXT_BYTES))
            .collect();
        let valid: Vec<&NewMessage> = batch
            .iter()
            .zip(&checks)
            .filter(|(_, check)| check.is_ok())
            .map(|(m, _)| m)
            .collect();
        let mut counters = lock_counters(&tx, &valid).await?;
        let mut sent = find_sent(&tx, &valid).await?;
        let ids = take_message_ids(&tx, valid.len()).await?;
        let (outcomes, fresh) = assign(&batch, checks, &mut counters, &mut sent, ids, now_ms());
        if !fresh.is_empty() {
            insert_messages(&tx, &fresh).await?;
            store_counters(&tx, &counters).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(outcomes)
    }

    async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        let client = self.pool.get().await.map_err(backend)?;
        let conversation = query.conversation_id.clone();
        let before = query.before.map_or(i64::MAX, sql_int);
        let rows = client
            .query(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m
                     WHERE m.tenant = $1 AND m.conversation = $2 AND m.id < $3
                     ORDER BY m.id DESC LIMIT $4"
                ),
                &[
                    &query.user.tenant,
                    &conversation,
                    &before,
                    &rows_for_page(query.limit),
                ],
            )
            .await
            .map_err(backend)?;
        let newest_first = rows.iter().map(row_to_message).collect();
        Ok(history_page(newest_first, query.limit))
    }

    async fn sync(&self, query: SyncQuery) -> Result<SyncPage, StoreError> {
        let mut client = self.pool.get().await.map_err(backend)?;
        // One snapshot for the page and `last_seq`.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(backend)?;
        let last_seq = last_seq_in(&tx, &query.user).await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM inbox i JOIN messages m ON m.id = i.message_id
                     WHERE i.tenant = $1 AND i.owner = $2 AND i.seq > $3
                     ORDER BY i.seq LIMIT $4"
                ),
                &[
                    &query.user.tenant,
                    &query.user.user,
                    &sql_int(query.after_seq),
                    &rows_for_page(query.limit),
                ],
            )
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let rows = rows.iter().map(row_to_message).collect();
        Ok(sync_page(rows, query.limit, last_seq))
    }

    async fn last_seq(&self, user: UserKey) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(backend)?;
        last_seq_in(&client, &user).await
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

async fn last_seq_in(
    client: &impl deadpool_postgres::GenericClient,
    user: &UserKey,
) -> Result<u64, StoreError> {
    let row = client
        .query_opt(
            "SELECT last_seq FROM user_seqs WHERE tenant = $1 AND owner = $2",
            &[&user.tenant, &user.user],
        )
        .await
        .map_err(backend)?;
    Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
}

/// Locks the seq counter of every participant of `valid`, in (tenant, user) order so that no
/// two batches can deadlock, creating the counters of users never seen, and returns their last
/// seqs.
async fn lock_counters(
    tx: &deadpool_postgres::Transaction<'_>,
    valid: &[&NewMessage],
) -> Result<Counters, StoreError> {
    let mut counters = Counters::new();
    for message in valid {
        let sender = UserKey::new(message.tenant.clone(), message.sender.clone());
        counters.insert(sender.peer(message.recipient.clone()), 0);
        counters.insert(sender, 0);
    }
    let (tenants, owners): (Vec<&str>, Vec<&str>) = counters
        .keys()
        .map(|user| (user.tenant.as_str(), user.user.as_str()))
        .unzip();
    tx.execute(
        "INSERT INTO user_seqs (tenant, owner, last_seq)
         SELECT t, o, 0 FROM unnest($1::text[], $2::text[]) AS k(t, o)
         ORDER BY t, o
         ON CONFLICT DO NOTHING",
        &[&tenants, &owners],
    )
    .await
    .map_err(backend)?;
    let locked = tx
        .query(
            "SELECT tenant, owner, last_seq FROM user_seqs
             WHERE (tenant, owner) IN (SELECT * FROM unnest($1::text[], $2::text[]))
             ORDER BY tenant, owner
             FOR UPDATE",
            &[&tenants, &owners],
        )
        .await
        .map_err(backend)?;
    for row in &locked {
        let user = UserKey::new(row.get::<_, String>(0), row.get::<_, String>(1));
        counters.insert(user, row.get::<_, i64>(2) as u64);
    }
    Ok(counters)
}

/// The sends of `valid` stored before this batch. Under the senders' locks no other batch
/// can store one of them meanwhile.
async fn find_sent(
    tx: &deadpool_postgres::Transaction<'_>,
    valid: &[&NewMessage],
) -> Result<HashMap<SendKey, StoredMessage>, StoreError> {
    let tenants: Vec<&str> = valid.iter().map(|m| m.tenant.as_str()).collect();
    let senders: Vec<&str> = valid.iter().map(|m| m.sender.as_str()).collect();
    let client_ids: Vec<&str> = valid.iter().map(|m| m.client_msg_id.as_str()).collect();
    let rows = tx
        .query(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m
                 JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(t, s, c)
                   ON m.tenant = k.t AND m.sender = k.s AND m.client_msg_id = k.c"
            ),
            &[&tenants, &senders, &client_ids],
        )
        .await
        .map_err(backend)?;
    Ok(rows
        .iter()
        .map(|row| {
            let m = row_to_message(row);
            (send_key(&m.tenant, &m.sender, &m.client_msg_id), m)
        })
        .collect())
}

/// `count` fresh message ids in ascending order, to be handed out in batch order. One is taken
/// for every valid message, duplicates included: ids need only be unique and increasing.
async fn take_message_ids(
    tx: &deadpool_postgres::Transaction<'_>,
    count: usize,
) -> Result<std::vec::IntoIter<i64>, StoreError> {
    let ids: Vec<i64> = tx
        .query(
            "SELECT nextval('messages_id_seq') AS id FROM generate_series(1, $1::bigint) ORDER BY id",
            &[&(count as i64)],
        )
        .await
        .map_err(backend)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(ids.into_iter())
}

/// Decides every message's outcome in batch order: rejected by `checks`, a duplicate of a
/// send in `sent` (earlier in the batch included), or fresh with the next seqs from `counters`
/// and the next of `ids`. Returns the outcomes and the fresh messages to insert.
fn assign(
    batch: &[NewMessage],
    checks: Vec<Result<(), String>>,
    counters: &mut Counters,
    sent: &mut HashMap<SendKey, StoredMessage>,
    mut ids: std::vec::IntoIter<i64>,
    ts: i64,
) -> (Vec<AppendOutcome>, Vec<StoredMessage>) {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut fresh: Vec<StoredMessage> = Vec::new();
    for (message, check) in batch.iter().zip(checks) {
        if let Err(reason) = check {
            outcomes.push(AppendOutcome::Rejected(Refusal::new(
                RefusalCode::BadRequest,
                reason,
            )));
            continue;
        }
        let key = send_key(&message.tenant, &message.sender, &message.client_msg_id);
        if let Some(original) = sent.get(&key) {
            outcomes.push(AppendOutcome::Stored {
                message: original.clone(),
                duplicate: true,
                members: Vec::new(),
            });
            continue;
        }
        let sender = UserKey::new(message.tenant.clone(), message.sender.clone());
        let recipient = sender.peer(message.recipient.clone());
        let Ok(seqs) = next_seqs(&sender, &recipient, |user| {
            Ok::<_, Infallible>(
                *counters
                    .get(user)
                    .expect("every participant's counter is locked"),
            )
        });
        for (user, seq) in stream_entries(&sender, &recipient, seqs) {
            counters.insert(user.clone(), seq);
        }
        let id = ids.next().expect("one id per valid message");
        let stored = seqs.stored(message, id as u64, ts);
        sent.insert(key, stored.clone());
        fresh.push(stored.clone());
        outcomes.push(AppendOutcome::Stored {
            message: stored,
            duplicate: false,
            members: Vec::new(),
        });
    }
    (outcomes, fresh)
}

/// Writes back the last seq of every counter the batch changed.
async fn store_counters(
    tx: &deadpool_postgres::Transaction<'_>,
    counters: &Counters,
) -> Result<(), StoreError> {
    let tenants: Vec<&str> = counters.keys().map(|u| u.tenant.as_str()).collect();
    let owners: Vec<&str> = counters.keys().map(|u| u.user.as_str()).collect();
    let lasts: Vec<i64> = counters.values().map(|last| sql_int(*last)).collect();
    tx.execute(
        "UPDATE user_seqs u SET last_seq = v.l
         FROM unnest($1::text[], $2::text[], $3::bigint[]) AS v(t, o, l)
         WHERE u.tenant = v.t AND u.owner = v.o AND u.last_seq <> v.l",
        &[&tenants, &owners, &lasts],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

async fn insert_messages(
    tx: &deadpool_postgres::Transaction<'_>,
    messages: &[StoredMessage],
) -> Result<(), StoreError> {
    let ids: Vec<i64> = messages.iter().map(|m| m.message_id as i64).collect();
    let tenants: Vec<&str> = messages.iter().map(|m| m.tenant.as_str()).collect();
    let senders: Vec<&str> = messages.iter().map(|m| m.sender.as_str()).collect();
    let recipients: Vec<&str> = messages.iter().map(|m| m.recipient.as_str()).collect();
    let conversations: Vec<String> = messages
        .iter()
        .map(StoredMessage::conversation_id)
        .collect();
    let client_ids: Vec<&str> = messages.iter().map(|m| m.client_msg_id.as_str()).collect();
    let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
    let ts: Vec<i64> = messages.iter().map(|m| m.ts).collect();
    let sender_seqs: Vec<i64> = messages.iter().map(|m| sql_int(m.sender_seq)).collect();
    let recipient_seqs: Vec<i64> = messages.iter().map(|m| sql_int(m.recipient_seq)).collect();
    tx.execute(
        "INSERT INTO messages
            (id, tenant, sender, recipient, conversation, client_msg_id, text, ts, sender_seq, recipient_seq)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[])",
        &[
            &ids, &tenants, &senders, &recipients, &conversations, &client_ids, &texts, &ts,
            &sender_seqs, &recipient_seqs,
        ],
    )
    .await
    .map_err(backend)?;
    // One inbox row per participant (one for a message to oneself).
    let mut owners_tenant = Vec::with_capacity(messages.len() * 2);
    let mut owners = Vec::with_capacity(messages.len() * 2);
    let mut seqs_col = Vec::with_capacity(messages.len() * 2);
    let mut message_ids = Vec::with_capacity(messages.len() * 2);
    for m in messages {
        for (owner, owner_seq) in inbox_entries(m) {
            owners_tenant.push(m.tenant.as_str());
            owners.push(owner);
            seqs_col.push(sql_int(owner_seq));
            message_ids.push(m.message_id as i64);
        }
    }
    tx.execute(
        "INSERT INTO inbox (tenant, owner, seq, message_id)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])",
        &[&owners_tenant, &owners, &seqs_col, &message_ids],
    )
    .await
    .map_err(backend)?;
    Ok(())
}
