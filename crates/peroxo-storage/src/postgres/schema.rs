//! The PostgreSQL schema: versioned migrations, embedded, applied at start-up under an
//! advisory lock so that instances starting together apply each exactly once, each in one
//! transaction.
//!
//! - `messages`: every message once. A group message has the group id as recipient and
//!   conversation, its sender's seq, and `recipient_seq` 0 (each member's seq is in `inbox`).
//! - `user_seqs`: every user's last seq, and the highest seq of its stream retention deleted
//!   (`pruned_until`); its row is the lock that orders the user's stream.
//! - `inbox`: every user's stream, one row per seq, pointing at a message or an event.
//! - `events`: every event other than a message, once, with the columns of its kind.
//! - `groups`: a group's title and member count, and the request that created it.
//! - `conversation_states`: one row per user and conversation the user is (or was) in: the
//!   conversation list, read markers and unread counts, and group membership.
//! - `reactions`: one row per (message, emoji, user who reacted).
//! - `outbox`, `outbox_counters`: the feed of committed changes, and each tenant's last id
//!   and pruned id; `outbox_consumers`, each consumer's cursor and lease.
//! - `restrictions`: what the server API imposes on a user: a ban's end and reason, and the
//!   time before which the user's tokens are refused (milliseconds; 0 none).

use super::{PostgresStore, backend};
use crate::StoreError;

/// The advisory lock key that serializes migrations across instances ("PEROXO" in ASCII).
const MIGRATION_LOCK: i64 = 0x5045_524f_584f;

/// Versioned migrations, applied in order, each once.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, DIRECT_MESSAGES),
    (2, CONVERSATIONS),
    (3, RETENTION),
    (4, LIFECYCLE),
    (5, OUTBOX),
    (6, RESTRICTIONS),
];

/// One row per (tenant, user) the server API restricted; gateways load the active ones.
const RESTRICTIONS: &str = "CREATE TABLE restrictions (
        tenant TEXT NOT NULL,
        owner TEXT NOT NULL,
        banned_until BIGINT NOT NULL DEFAULT 0,
        ban_reason TEXT NOT NULL DEFAULT '',
        tokens_before BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, owner)
    );";

/// The event outbox: one row per (tenant, id), ids taken from the tenant's counter row (which
/// also records the highest id retention deleted), so they stay gapless and in commit order
/// (see `outbox`). The feed reads a range of the primary key.
const OUTBOX: &str = "CREATE TABLE outbox (
        tenant TEXT NOT NULL,
        id BIGINT NOT NULL,
        ts BIGINT NOT NULL,
        kind TEXT NOT NULL,
        conversation TEXT NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (tenant, id)
    );
    CREATE TABLE outbox_counters (
        tenant TEXT PRIMARY KEY,
        last_id BIGINT NOT NULL,
        pruned_until BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE outbox_consumers (
        tenant TEXT NOT NULL,
        consumer TEXT NOT NULL,
        holder TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        cursor BIGINT NOT NULL,
        PRIMARY KEY (tenant, consumer)
    );";

/// What happens to messages after they are sent. A message records what it replies to, its
/// last edit, its deletion (its text is then empty) and how many reactions it has (so reads
/// look up `reactions` only for messages that have some); an event records its emoji, and an
/// edit its `client_msg_id` (unique per actor: edits are idempotent). An edit's text is never
/// stored with its event: reads take it from the message, so a delete erases every copy.
const LIFECYCLE: &str = "ALTER TABLE messages ADD COLUMN reply_to BIGINT;
    ALTER TABLE messages ADD COLUMN edited_ts BIGINT;
    ALTER TABLE messages ADD COLUMN deleted_by TEXT;
    ALTER TABLE messages ADD COLUMN deleted_ts BIGINT;
    ALTER TABLE messages ADD COLUMN reaction_count BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE events ADD COLUMN emoji TEXT;
    ALTER TABLE events ADD COLUMN client_msg_id TEXT;
    CREATE UNIQUE INDEX events_by_client_msg_id ON events (tenant, actor, client_msg_id)
        WHERE client_msg_id IS NOT NULL;
    CREATE TABLE reactions (
        message_id BIGINT NOT NULL REFERENCES messages (id),
        emoji TEXT NOT NULL,
        reactor TEXT NOT NULL,
        ts BIGINT NOT NULL,
        PRIMARY KEY (message_id, emoji, reactor)
    );";

/// What retention needs: a tenant's oldest messages by index, every stream entry of a message
/// by index (which the foreign key's check on deleting a message uses too), and each
/// stream's floor.
const RETENTION: &str = "CREATE INDEX messages_by_age ON messages (tenant, ts);
    CREATE INDEX inbox_by_message_id ON inbox (message_id) WHERE message_id IS NOT NULL;
    ALTER TABLE user_seqs ADD COLUMN pruned_until BIGINT NOT NULL DEFAULT 0;";

/// Direct messages and every user's stream of them.
const DIRECT_MESSAGES: &str = "CREATE TABLE messages (
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
    );";

/// Groups, events in streams, and every user's state of each conversation. Existing direct
/// conversations get their state rows: sending marks read, so a participant's read marker is
/// their own newest message of it and everything the other sent after that is unread.
const CONVERSATIONS: &str = "CREATE SEQUENCE events_id_seq;
    CREATE TABLE events (
        id BIGINT PRIMARY KEY,
        tenant TEXT NOT NULL,
        conversation TEXT NOT NULL,
        actor TEXT NOT NULL,
        ts BIGINT NOT NULL,
        -- the kind's name and its columns, as crate::sql::EventColumns says
        kind TEXT NOT NULL,
        users TEXT,
        member TEXT,
        role TEXT,
        title TEXT,
        message_id BIGINT,
        count BIGINT
    );
    ALTER TABLE inbox ALTER COLUMN message_id DROP NOT NULL;
    ALTER TABLE inbox ADD COLUMN event_id BIGINT REFERENCES events (id);
    ALTER TABLE inbox ADD CONSTRAINT inbox_holds_one_entry
        CHECK ((message_id IS NULL) <> (event_id IS NULL));
    -- A member's seq of a group message, for history and previews.
    CREATE INDEX inbox_by_message ON inbox (tenant, owner, message_id);
    CREATE TABLE groups (
        tenant TEXT NOT NULL,
        id TEXT NOT NULL,
        title TEXT NOT NULL,
        creator TEXT NOT NULL,
        created_ts BIGINT NOT NULL,
        member_count BIGINT NOT NULL,
        client_msg_id TEXT NOT NULL,
        PRIMARY KEY (tenant, id),
        UNIQUE (tenant, creator, client_msg_id)
    );
    CREATE TABLE conversation_states (
        tenant TEXT NOT NULL,
        owner TEXT NOT NULL,
        conversation TEXT NOT NULL,
        -- direct conversations: the other participant (the owner, with oneself)
        peer TEXT,
        -- groups: the member's role (NULL for direct conversations)
        role TEXT,
        -- groups: messages with a larger id are visible (history starts at the join)
        boundary BIGINT NOT NULL DEFAULT 0,
        -- groups: the event that made the owner a member, which orders succession
        joined_event BIGINT NOT NULL DEFAULT 0,
        joined_ts BIGINT NOT NULL DEFAULT 0,
        read_marker BIGINT NOT NULL DEFAULT 0,
        unread_count BIGINT NOT NULL DEFAULT 0,
        last_message_id BIGINT,
        -- the owner's seq of the newest message or membership event: the list's order
        activity_seq BIGINT NOT NULL,
        active BOOLEAN NOT NULL DEFAULT TRUE,
        PRIMARY KEY (tenant, owner, conversation)
    );
    CREATE INDEX conversation_states_by_activity
        ON conversation_states (tenant, owner, activity_seq) WHERE active;
    CREATE INDEX conversation_states_by_member
        ON conversation_states (tenant, conversation) WHERE active AND role IS NOT NULL;
    WITH participants AS (
        SELECT tenant, sender AS owner, conversation, recipient AS peer FROM messages
        UNION
        SELECT tenant, recipient, conversation, sender FROM messages
    ),
    newest AS (
        SELECT DISTINCT ON (tenant, conversation)
               tenant, conversation, id, sender, sender_seq, recipient_seq
        FROM messages
        ORDER BY tenant, conversation, id DESC
    ),
    own AS (
        SELECT tenant, sender AS owner, conversation, max(id) AS newest_sent
        FROM messages
        GROUP BY tenant, sender, conversation
    ),
    marked AS (
        SELECT p.tenant, p.owner, p.conversation, p.peer,
               COALESCE(own.newest_sent, 0) AS read_marker
        FROM participants p
        LEFT JOIN own USING (tenant, owner, conversation)
    )
    INSERT INTO conversation_states
        (tenant, owner, conversation, peer, read_marker, unread_count, last_message_id,
         activity_seq)
    SELECT k.tenant, k.owner, k.conversation, k.peer, k.read_marker,
           (SELECT count(*) FROM messages o
            WHERE o.tenant = k.tenant AND o.conversation = k.conversation
              AND o.id > k.read_marker AND o.sender <> k.owner),
           n.id,
           CASE WHEN n.sender = k.owner THEN n.sender_seq ELSE n.recipient_seq END
    FROM marked k
    JOIN newest n USING (tenant, conversation)
    ON CONFLICT DO NOTHING;";

impl PostgresStore {
    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
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
