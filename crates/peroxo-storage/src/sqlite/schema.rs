//! The SQLite schema and its migrations (`PRAGMA user_version`).
//!
//! Version 6:
//! - `messages`: one row per message (direct, or to a group: then `recipient` and
//!   `conversation` are the group id, `recipient_seq` is 0); `id` is the message id and orders
//!   a conversation; `UNIQUE (tenant, sender, client_msg_id)` makes appends idempotent.
//! - `events`: one row per event other than a message, its kind's fields in
//!   [`EventColumns`](crate::sql::EventColumns).
//! - `inbox`: one row per (tenant, owner, seq): every user's gapless stream. Each points at a
//!   message or at an event; `kind` tells a direct message, a group message and an event
//!   apart (and an event that changes a message from the others), so a sync of direct messages reads those alone and a member's seq of a group
//!   message is found through a partial index the direct path never writes to.
//! - `groups`: one row per group; `UNIQUE (tenant, creator, client_msg_id)` makes creation
//!   idempotent.
//! - `conversation_states`: one row per (tenant, user, conversation): what the conversation
//!   list shows (read marker, unread count, preview, activity) and, for a group, the member's
//!   role, join order and history boundary. A member who leaves keeps an inactive row.
//! - `stream_floors`: one row per (tenant, owner) whose stream retention pruned: the highest
//!   seq it deleted. A user's current seq is the highest of its stream and of its floor, so a
//!   stream pruned to nothing keeps its numbering.
//! - `reactions`: one row per (message, emoji, user); a message's `reaction_count` says
//!   whether it has any. A message's `reply_to`, `edited_ts`, `deleted_by`/`deleted_ts` record
//!   what it replies to and what happened to it; an event's `client_msg_id` (unique per actor)
//!   makes edits idempotent.
//! - `outbox`: one row per (tenant, id): the feed of committed changes, each event's kind,
//!   conversation and JSON payload. Ids are taken from `outbox_counters` (one row per tenant:
//!   the last id taken, and the highest id retention deleted), so they stay gapless even when
//!   retention empties the table; `WITHOUT ROWID` keyed (tenant, id), a new event goes at the
//!   end of its tenant's range, and the feed's read is a range scan of it.
//! - `outbox_consumers`: one row per (tenant, consumer) of the feed: its cursor, and who holds
//!   its lease until when.
//! - `restrictions`: one row per (tenant, user) the server API restricted: a ban's end and
//!   reason, and the time before which the user's tokens are refused (milliseconds; 0 none).
//! - `messages_by_age` finds a tenant's oldest messages; `inbox_by_group_message` finds every
//!   stream entry of a group message (the direct path never writes to it).
//!
//! Version 5 lacked `restrictions`. Version 4 lacked the outbox. Version 3 lacked what version 4 adds for edits, deletes, reactions and replies (the
//! columns and table above). Version 2 lacked what retention needs (`stream_floors` and the two indexes). Version 1 had `messages` and an `inbox` of messages only. Migrating rebuilds `inbox` with
//! the columns above and gives every existing direct conversation its two state rows.

use rusqlite::{Connection, TransactionBehavior};

use super::backend;
use crate::StoreError;

pub(super) const SCHEMA_VERSION: i64 = 6;

/// What `inbox.kind` says an entry is.
pub(super) const DIRECT_MESSAGE: i64 = 0;
pub(super) const GROUP_MESSAGE: i64 = 1;
pub(super) const EVENT: i64 = 2;
/// An event that changes a message (an edit, a delete, a reaction): protocol 3 only. The kinds
/// are ordered so that a sync of a protocol reads the entries of kind up to its own.
pub(super) const LIFECYCLE_EVENT: i64 = 3;

const MESSAGES: &str = "
CREATE TABLE messages (
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
CREATE INDEX messages_by_conversation ON messages (tenant, conversation, id);
";

/// The tables version 2 adds to version 1, and `inbox` as version 2 has it.
const CONVERSATIONS: &str = "
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    conversation TEXT NOT NULL,
    actor TEXT NOT NULL,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    users TEXT,
    user TEXT,
    role TEXT,
    title TEXT,
    message_id INTEGER,
    count INTEGER
);
CREATE TABLE inbox (
    tenant TEXT NOT NULL,
    owner TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id INTEGER REFERENCES messages (id),
    event_id INTEGER REFERENCES events (id),
    kind INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, owner, seq)
) WITHOUT ROWID;
CREATE INDEX inbox_group_messages ON inbox (tenant, owner, message_id) WHERE kind = 1;
CREATE TABLE groups (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    title TEXT NOT NULL,
    creator TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    member_count INTEGER NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, creator, client_msg_id)
) WITHOUT ROWID;
CREATE TABLE conversation_states (
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    conversation TEXT NOT NULL,
    -- Direct conversations: the other participant (the user, for a conversation with oneself).
    peer TEXT,
    -- Groups: the member's role.
    role TEXT,
    -- Groups: the member sees the group's messages with a greater id only.
    boundary INTEGER NOT NULL DEFAULT 0,
    -- Groups: the id of the event that made the member join (an order: owner succession).
    joined INTEGER NOT NULL DEFAULT 0,
    joined_ts INTEGER NOT NULL DEFAULT 0,
    read_marker INTEGER NOT NULL DEFAULT 0,
    unread_count INTEGER NOT NULL DEFAULT 0,
    last_message_id INTEGER NOT NULL DEFAULT 0,
    -- The user's seq of the newest message or membership event: the list's order and cursor.
    activity_seq INTEGER NOT NULL DEFAULT 0,
    active INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant, user, conversation)
) WITHOUT ROWID;
CREATE INDEX conversation_list ON conversation_states (tenant, user, activity_seq) WHERE active = 1;
CREATE INDEX group_members ON conversation_states (tenant, conversation, user)
    WHERE role IS NOT NULL AND active = 1;
";

/// What version 3 adds to version 2: what retention reads and writes.
const RETENTION: &str = "
CREATE INDEX messages_by_age ON messages (tenant, ts);
CREATE INDEX inbox_by_group_message ON inbox (message_id) WHERE kind = 1;
CREATE TABLE stream_floors (
    tenant TEXT NOT NULL,
    owner TEXT NOT NULL,
    pruned_until INTEGER NOT NULL,
    PRIMARY KEY (tenant, owner)
) WITHOUT ROWID;
";

/// What version 4 adds: what happens to messages after they are sent. A message records
/// what it replies to, its last edit, its deletion (its text is then empty) and how many
/// reactions it has (so reads look up `reactions` only for messages that have some); an
/// event records its emoji, and an edit its `client_msg_id` (unique per actor: edits are
/// idempotent). `reactions` holds one row per (message, emoji, user).
const LIFECYCLE: &str = "
ALTER TABLE messages ADD COLUMN reply_to INTEGER;
ALTER TABLE messages ADD COLUMN edited_ts INTEGER;
ALTER TABLE messages ADD COLUMN deleted_by TEXT;
ALTER TABLE messages ADD COLUMN deleted_ts INTEGER;
ALTER TABLE messages ADD COLUMN reaction_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN emoji TEXT;
ALTER TABLE events ADD COLUMN client_msg_id TEXT;
CREATE UNIQUE INDEX events_by_client_msg_id ON events (tenant, actor, client_msg_id)
    WHERE client_msg_id IS NOT NULL;
CREATE TABLE reactions (
    message_id INTEGER NOT NULL,
    emoji TEXT NOT NULL,
    user TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (message_id, emoji, user)
) WITHOUT ROWID;
";

/// What version 5 adds: the event outbox.
const OUTBOX: &str = "
CREATE TABLE outbox (
    tenant TEXT NOT NULL,
    id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    conversation TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
) WITHOUT ROWID;
CREATE TABLE outbox_counters (
    tenant TEXT NOT NULL PRIMARY KEY,
    last_id INTEGER NOT NULL,
    pruned_until INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE outbox_consumers (
    tenant TEXT NOT NULL,
    consumer TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    PRIMARY KEY (tenant, consumer)
) WITHOUT ROWID;
";

/// What version 6 adds: the restrictions the server API imposes on users.
const RESTRICTIONS: &str = "
CREATE TABLE restrictions (
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    banned_until INTEGER NOT NULL DEFAULT 0,
    ban_reason TEXT NOT NULL DEFAULT '',
    tokens_before INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, user)
) WITHOUT ROWID;
";

/// From version 1: the old inbox's rows move into the new one, and every direct
/// conversation gets a state row for each participant. A participant has read up to their
/// own newest message (sending reads); the rest is unread.
const FROM_VERSION_1: &str = "
ALTER TABLE inbox RENAME TO inbox_v1;
{CONVERSATIONS}
INSERT INTO inbox (tenant, owner, seq, message_id, kind)
    SELECT tenant, owner, seq, message_id, 0 FROM inbox_v1;
DROP TABLE inbox_v1;
INSERT INTO conversation_states
    (tenant, user, conversation, peer, read_marker, last_message_id, activity_seq)
SELECT p.tenant, p.user, p.conversation, p.peer,
       COALESCE((SELECT MAX(o.id) FROM messages o
                 WHERE o.tenant = p.tenant AND o.conversation = p.conversation
                   AND o.sender = p.user), 0),
       n.id,
       CASE WHEN n.sender = p.user THEN n.sender_seq ELSE n.recipient_seq END
FROM (SELECT tenant, conversation, sender AS user, recipient AS peer FROM messages
      UNION
      SELECT tenant, conversation, recipient, sender FROM messages) p
JOIN messages n ON n.id = (SELECT MAX(x.id) FROM messages x
                           WHERE x.tenant = p.tenant AND x.conversation = p.conversation);
UPDATE conversation_states SET unread_count = (
    SELECT COUNT(*) FROM messages m
    WHERE m.tenant = conversation_states.tenant
      AND m.conversation = conversation_states.conversation
      AND m.sender <> conversation_states.user
      AND m.id > conversation_states.read_marker);
";

/// Brings the database to [`SCHEMA_VERSION`] in one transaction. The version is read inside
/// it, so of several processes opening one file at once, one migrates and the others find the
/// work done.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(backend)?;
    let steps = match version {
        SCHEMA_VERSION => return Ok(()),
        0 => format!("{MESSAGES}{CONVERSATIONS}{RETENTION}{LIFECYCLE}{OUTBOX}{RESTRICTIONS}"),
        1 => {
            FROM_VERSION_1.replace("{CONVERSATIONS}", CONVERSATIONS)
                + RETENTION
                + LIFECYCLE
                + OUTBOX
                + RESTRICTIONS
        }
        2 => format!("{RETENTION}{LIFECYCLE}{OUTBOX}{RESTRICTIONS}"),
        3 => format!("{LIFECYCLE}{OUTBOX}{RESTRICTIONS}"),
        4 => format!("{OUTBOX}{RESTRICTIONS}"),
        5 => RESTRICTIONS.to_owned(),
        newer => {
            return Err(StoreError::Backend(format!(
                "the database has schema version {newer}, not one this build knows (up to \
                 {SCHEMA_VERSION})"
            )));
        }
    };
    tx.execute_batch(&steps).map_err(backend)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(backend)?;
    tx.commit().map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::SqliteStore;
    use crate::{HistoryQuery, MessageStore, SyncQuery, SyncScope};
    use peroxo_config::SqliteSync;
    use peroxo_protocol::conversation::{ConversationKind, ConversationsQuery};
    use peroxo_protocol::domain::{NewMessage, UserKey};

    /// Version 1 as it was created, with: alice → bob (1), bob → alice (2), alice → bob (3),
    /// alice → bob (4), carol → bob (5), dave → dave (6).
    fn version_1_database(path: &std::path::Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(&format!(
            "{MESSAGES}
             CREATE TABLE inbox (
                 tenant TEXT NOT NULL,
                 owner TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 message_id INTEGER NOT NULL REFERENCES messages (id),
                 PRIMARY KEY (tenant, owner, seq)
             ) WITHOUT ROWID;
             INSERT INTO messages VALUES
                 (1, 't', 'alice', 'bob', 'alice:bob', 'a1', 'one', 10, 1, 1),
                 (2, 't', 'bob', 'alice', 'alice:bob', 'b1', 'two', 20, 2, 2),
                 (3, 't', 'alice', 'bob', 'alice:bob', 'a2', 'three', 30, 3, 3),
                 (4, 't', 'alice', 'bob', 'alice:bob', 'a3', 'four', 40, 4, 4),
                 (5, 't', 'carol', 'bob', 'bob:carol', 'c1', 'five', 50, 1, 5),
                 (6, 't', 'dave', 'dave', 'dave:dave', 'd1', 'six', 60, 1, 1);
             INSERT INTO inbox VALUES
                 ('t', 'alice', 1, 1), ('t', 'bob', 1, 1),
                 ('t', 'bob', 2, 2), ('t', 'alice', 2, 2),
                 ('t', 'alice', 3, 3), ('t', 'bob', 3, 3),
                 ('t', 'alice', 4, 4), ('t', 'bob', 4, 4),
                 ('t', 'carol', 1, 5), ('t', 'bob', 5, 5),
                 ('t', 'dave', 1, 6);
             PRAGMA user_version = 1;"
        ))
        .unwrap();
    }

    /// (conversation, unread, read marker, preview id, activity) of `user`'s list.
    async fn list(store: &SqliteStore, user: &str) -> Vec<(String, u64, u64, u64, u64)> {
        let page = store
            .conversations(ConversationsQuery {
                user: UserKey::new("t", user),
                before: None,
                limit: 10,
            })
            .await
            .unwrap();
        page.conversations
            .into_iter()
            .map(|c| {
                let preview = c.last_message.map_or(0, |m| m.message_id);
                (
                    c.conversation_id,
                    c.unread_count,
                    c.read_marker,
                    preview,
                    c.activity_seq,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_version_1_database_lists_its_direct_conversations_with_their_unread_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite");
        version_1_database(&path);
        let store = SqliteStore::open(&path, SqliteSync::Normal).unwrap();
        assert_eq!(
            list(&store, "bob").await,
            [
                ("bob:carol".to_owned(), 1, 0, 5, 5),
                ("alice:bob".to_owned(), 2, 2, 4, 4)
            ]
        );
        assert_eq!(
            list(&store, "alice").await,
            [("alice:bob".to_owned(), 0, 4, 4, 4)]
        );
        assert_eq!(
            list(&store, "carol").await,
            [("bob:carol".to_owned(), 0, 5, 5, 1)]
        );
        assert_eq!(
            list(&store, "dave").await,
            [("dave:dave".to_owned(), 0, 6, 6, 1)]
        );
        let alices = store
            .conversations(ConversationsQuery {
                user: UserKey::new("t", "alice"),
                before: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(
            alices.conversations[0].kind,
            ConversationKind::Direct {
                peer: "bob".into(),
                peer_read_marker: 2
            }
        );
        // The streams carry on where they were, and history and sync read the old rows.
        let sent = store
            .append(vec![NewMessage {
                tenant: "t".into(),
                sender: "bob".into(),
                recipient: "alice".into(),
                client_msg_id: "b2".into(),
                text: "seven".into(),
                reply_to: None,
            }])
            .await
            .unwrap();
        let crate::AppendOutcome::Stored { message, .. } = &sent[0] else {
            panic!("{sent:?}")
        };
        assert_eq!((message.sender_seq, message.recipient_seq), (6, 5));
        let page = store
            .sync(SyncQuery {
                user: UserKey::new("t", "bob"),
                after_seq: 0,
                limit: 10,
                scope: SyncScope::Everything,
            })
            .await
            .unwrap();
        assert_eq!(page.messages.len(), 6);
        let history = store
            .history(HistoryQuery {
                user: UserKey::new("t", "alice"),
                conversation_id: "alice:bob".into(),
                before: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(history.messages.len(), 5);
        assert_eq!(
            list(&store, "bob").await[0],
            ("alice:bob".to_owned(), 0, 7, 7, 6)
        );
    }

    #[tokio::test]
    async fn opening_a_migrated_database_again_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite");
        version_1_database(&path);
        drop(SqliteStore::open(&path, SqliteSync::Normal).unwrap());
        let store = SqliteStore::open(&path, SqliteSync::Normal).unwrap();
        assert_eq!(
            list(&store, "alice").await,
            [("alice:bob".to_owned(), 0, 4, 4, 4)]
        );
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_database_newer_than_this_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("new.sqlite")).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        assert!(migrate(&mut conn).is_err());
    }
}
