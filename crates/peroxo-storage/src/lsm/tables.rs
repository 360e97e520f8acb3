//! The keyspaces of the lsm database (one LSM tree each, committed together), the rows they
//! hold, and typed reads and writes of them.
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `messages` | tenant, message id | [`MessageRow`] |
//! | `dedupe` | tenant, sender, client_msg_id | message id |
//! | `by_conversation` | tenant, conversation, message id | nothing: a conversation's history |
//! | `events` | tenant, event id | [`EventRow`] |
//! | `event_dedupe` | tenant, actor, client_msg_id | event id (idempotent edits) |
//! | `inbox` | tenant, owner, seq | [`Entry`]: every user's gapless stream |
//! | `group_entries` | tenant, message id, member | the member's seq of a group message |
//! | `floors` | tenant, owner | the highest seq retention deleted of the stream |
//! | `groups` | tenant, group id | [`GroupRow`] |
//! | `group_dedupe` | tenant, creator, client_msg_id | group id (idempotent creation) |
//! | `states` | tenant, user, conversation | [`StateRow`]: what the conversation list shows |
//! | `list` | tenant, user, activity seq, conversation | nothing: the list's order (active states) |
//! | `members` | tenant, group, user | [`MemberEntry`]: the current members (active states with a role) |
//! | `reactions` | tenant, message id, emoji, user | the time it was added |
//! | `outbox` | tenant, event id | [`OutboxRow`]: the feed of committed changes |
//! | `outbox_counters` | tenant | [`OutboxCounter`] |
//! | `consumers` | tenant, consumer | [`ConsumerRow`] |
//! | `restrictions` | tenant, user | [`RestrictionRow`] |
//! | `meta` | a name | the format's version, the last message and event ids |
//!
//! `list` and `members` are indexes of `states`: [`WriteTx::put_state`](super::writer::WriteTx::put_state)
//! keeps them in step, in the same transaction. Rows are encoded with postcard; numbers in
//! values as 8 bytes big-endian.
//!
//! Every read goes through a [`Source`]: a snapshot of what is committed (the readers), or the
//! writer's open transaction ([`Overlay`](super::overlay::Overlay)), which sees its own
//! writes. The reads are written once, for both.

use std::ops::Bound;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvPair, Readable, Snapshot};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::keys::{Key, corrupt};
use crate::StoreError;
use crate::sql::EventColumns;

/// A keyspace, and its place among the [`Tables`].
pub(super) struct Table {
    pub(super) keyspace: Keyspace,
    /// Its position in the order [`Tables::open`] opens them, from 0: where the writer's
    /// overlay keeps what a transaction wrote to it.
    pub(super) index: usize,
}

/// Every keyspace, opened.
pub(super) struct Tables {
    pub(super) messages: Table,
    pub(super) dedupe: Table,
    pub(super) by_conversation: Table,
    pub(super) events: Table,
    pub(super) event_dedupe: Table,
    pub(super) inbox: Table,
    pub(super) group_entries: Table,
    pub(super) floors: Table,
    pub(super) groups: Table,
    pub(super) group_dedupe: Table,
    pub(super) states: Table,
    pub(super) list: Table,
    pub(super) members: Table,
    pub(super) reactions: Table,
    pub(super) outbox: Table,
    pub(super) outbox_counters: Table,
    pub(super) consumers: Table,
    pub(super) restrictions: Table,
    pub(super) meta: Table,
}

impl Tables {
    pub(super) fn open(db: &Database) -> Result<Self, StoreError> {
        let mut opened = 0;
        let mut open = |name: &str| {
            let keyspace = db
                .keyspace(name, KeyspaceCreateOptions::default)
                .map_err(engine)?;
            opened += 1;
            Ok::<_, StoreError>(Table {
                keyspace,
                index: opened - 1,
            })
        };
        Ok(Self {
            messages: open("messages")?,
            dedupe: open("dedupe")?,
            by_conversation: open("by_conversation")?,
            events: open("events")?,
            event_dedupe: open("event_dedupe")?,
            inbox: open("inbox")?,
            group_entries: open("group_entries")?,
            floors: open("floors")?,
            groups: open("groups")?,
            group_dedupe: open("group_dedupe")?,
            states: open("states")?,
            list: open("list")?,
            members: open("members")?,
            reactions: open("reactions")?,
            outbox: open("outbox")?,
            outbox_counters: open("outbox_counters")?,
            consumers: open("consumers")?,
            restrictions: open("restrictions")?,
            meta: open("meta")?,
        })
    }
}

pub(super) fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("lsm: {e}"))
}

/// A message, without what its key holds (tenant and id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MessageRow {
    pub(super) sender: String,
    /// The recipient user, or the group id.
    pub(super) recipient: String,
    pub(super) conversation: String,
    pub(super) client_msg_id: String,
    /// Empty once deleted or erased.
    pub(super) text: String,
    pub(super) ts: i64,
    pub(super) sender_seq: u64,
    /// 0 for a group message.
    pub(super) recipient_seq: u64,
    pub(super) reply_to: Option<u64>,
    pub(super) edited_ts: Option<i64>,
    pub(super) deleted_by: Option<String>,
    pub(super) deleted_ts: Option<i64>,
    pub(super) reaction_count: u64,
}

/// An event other than a message, without what its key holds (tenant and id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct EventRow {
    pub(super) conversation: String,
    pub(super) actor: String,
    pub(super) ts: i64,
    /// The kind's name, as [`EventColumns::of`] gives it.
    pub(super) kind: String,
    /// Its fields (`text` is never stored: a read takes it from the message).
    pub(super) columns: EventColumns,
    /// An edit's `client_msg_id`.
    pub(super) client_msg_id: Option<String>,
}

/// What a stream entry points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Entry {
    DirectMessage(u64),
    GroupMessage(u64),
    Event(u64),
    /// An event that changes a message: protocol 3 only.
    LifecycleEvent(u64),
}

/// A group, without what its key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct GroupRow {
    pub(super) title: String,
    pub(super) creator: String,
    pub(super) client_msg_id: String,
    pub(super) created_ts: i64,
    pub(super) member_count: u64,
}

/// A user's state of a conversation: as the SQLite backend's `conversation_states` row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StateRow {
    /// Direct conversations: the other participant (the user, for a conversation with oneself).
    pub(super) peer: Option<String>,
    /// Groups: the member's role, by its name.
    pub(super) role: Option<String>,
    /// Groups: the member sees the group's messages with a greater id only.
    pub(super) boundary: u64,
    /// Groups: the id of the event that made the member join (an order: owner succession).
    pub(super) joined: u64,
    pub(super) joined_ts: i64,
    pub(super) read_marker: u64,
    pub(super) unread_count: u64,
    pub(super) last_message_id: u64,
    /// The user's seq of the newest message or membership event: the list's order and cursor.
    pub(super) activity_seq: u64,
    /// A member who left keeps an inactive state.
    pub(super) active: bool,
}

/// A current member of a group, as `members` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MemberEntry {
    pub(super) role: String,
    pub(super) joined: u64,
    pub(super) joined_ts: i64,
}

/// An outbox event, without what its key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct OutboxRow {
    pub(super) ts: i64,
    /// The kind's name.
    pub(super) kind: String,
    pub(super) conversation: String,
    /// A JSON object.
    pub(super) payload: String,
}

/// A tenant's outbox ids: the last taken, and the highest retention deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct OutboxCounter {
    pub(super) last_id: u64,
    pub(super) pruned_until: u64,
}

/// A consumer of a tenant's feed: its cursor, and who holds its lease until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ConsumerRow {
    pub(super) holder: String,
    pub(super) expires_at: i64,
    pub(super) cursor: u64,
}

/// What the server API imposed on a user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RestrictionRow {
    pub(super) banned_until: i64,
    pub(super) ban_reason: String,
    pub(super) tokens_before: i64,
}

/// Keys of `meta`.
pub(super) const META_VERSION: &[u8] = b"version";
pub(super) const META_LAST_MESSAGE_ID: &[u8] = b"last_message_id";
pub(super) const META_LAST_EVENT_ID: &[u8] = b"last_event_id";
/// The format of this database, in `meta`; a database of another format is refused.
pub(super) const FORMAT_VERSION: u64 = 1;

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value)
        .map_err(|e| StoreError::Backend(format!("lsm: cannot encode a row: {e}")))
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| corrupt("a row it cannot decode"))
}

pub(super) fn encode_u64(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(super) fn decode_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt("a number of the wrong size"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// What a read reads from: a snapshot of what is committed, or the writer's open transaction
/// over one.
pub(super) trait Source {
    /// The value at `key` of `table`, as `read` makes it of the bytes (`None`: no such key).
    fn get<T>(
        &self,
        table: &Table,
        key: &[u8],
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, StoreError>;

    /// Visits the keys and values of `table` between `lower` and `upper` in key order (`rev`:
    /// reversed) while `visit` says to go on.
    fn walk(
        &self,
        table: &Table,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        rev: bool,
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError>;

    /// [`Source::walk`] over the keys that start with `prefix`.
    fn walk_prefix(
        &self,
        table: &Table,
        prefix: &[u8],
        rev: bool,
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let end = prefix_end(prefix);
        self.walk(table, Bound::Included(prefix), end_bound(&end), rev, visit)
    }
}

impl Source for Snapshot {
    fn get<T>(
        &self,
        table: &Table,
        key: &[u8],
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, StoreError> {
        let value = Readable::get(self, &table.keyspace, key).map_err(engine)?;
        Ok(value.map(|value| read(&value)))
    }

    fn walk(
        &self,
        table: &Table,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        rev: bool,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        for row in committed(self, table, lower, upper, rev) {
            let (key, value) = row?;
            if !visit(&key, &value)? {
                break;
            }
        }
        Ok(())
    }
}

/// The rows of `table` in `snapshot` between `lower` and `upper`, in key order (`rev`:
/// reversed).
pub(super) fn committed<'s>(
    snapshot: &'s Snapshot,
    table: &Table,
    lower: Bound<&[u8]>,
    upper: Bound<&[u8]>,
    rev: bool,
) -> impl Iterator<Item = Result<KvPair, StoreError>> + 's {
    let rows = snapshot.range::<&[u8], _>(&table.keyspace, (lower, upper));
    let rows: Box<dyn Iterator<Item = fjall::Guard>> = if rev {
        Box::new(rows.rev())
    } else {
        Box::new(rows)
    };
    rows.map(|guard| guard.into_inner().map_err(engine))
}

/// Reads the row at `key` of `table`, decoded.
pub(super) fn get<T: DeserializeOwned>(
    r: &impl Source,
    table: &Table,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    r.get(table, key, decode)?.transpose()
}

/// Reads the number at `key` of `table`.
pub(super) fn get_u64(
    r: &impl Source,
    table: &Table,
    key: &[u8],
) -> Result<Option<u64>, StoreError> {
    r.get(table, key, decode_u64)?.transpose()
}

/// Whether `table` has `key`.
pub(super) fn contains(r: &impl Source, table: &Table, key: &[u8]) -> Result<bool, StoreError> {
    Ok(r.get(table, key, |_| ())?.is_some())
}

/// Keys (each without the prefix a scan reads) and their values, in the order read.
pub(super) type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// The keys and values of `table` that start with `prefix`, in key order (`rev`: reversed),
/// each key without the prefix, at most `limit`.
pub(super) fn scan(
    r: &impl Source,
    table: &Table,
    prefix: &[u8],
    rev: bool,
    limit: usize,
) -> Result<Rows, StoreError> {
    scan_from(r, table, prefix, None, rev, limit)
}

/// The keys and values of `table` that start with `prefix` and come after `from` (a key that
/// starts with `prefix`; going down when `rev`, up otherwise; `None`: from the end), in key
/// order (`rev`: reversed), each key without the prefix, at most `limit`.
pub(super) fn scan_from(
    r: &impl Source,
    table: &Table,
    prefix: &[u8],
    from: Option<&[u8]>,
    rev: bool,
    limit: usize,
) -> Result<Rows, StoreError> {
    let end = prefix_end(prefix);
    let (lower, upper) = match (from, rev) {
        (None, _) => (Bound::Included(prefix), end_bound(&end)),
        (Some(from), false) => (Bound::Excluded(from), end_bound(&end)),
        (Some(from), true) => (Bound::Included(prefix), Bound::Excluded(from)),
    };
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    r.walk(table, lower, upper, rev, |key, value| {
        let rest = key
            .strip_prefix(prefix)
            .ok_or_else(|| corrupt("a key outside its range"))?;
        out.push((rest.to_vec(), value.to_vec()));
        Ok(out.len() < limit)
    })?;
    Ok(out)
}

/// The least key greater than every key that starts with `prefix` (`None`: there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn end_bound(end: &Option<Vec<u8>>) -> Bound<&[u8]> {
    match end {
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    }
}

/// Keys of the keyspaces, by their elements.
pub(super) mod key {
    use super::Key;

    pub(in super::super) fn message(tenant: &str, id: u64) -> Vec<u8> {
        Key::new().str(tenant).u64(id).into_bytes()
    }
    pub(in super::super) fn dedupe(tenant: &str, sender: &str, client_msg_id: &str) -> Vec<u8> {
        Key::new()
            .str(tenant)
            .str(sender)
            .str(client_msg_id)
            .into_bytes()
    }
    pub(in super::super) fn by_conversation(tenant: &str, conversation: &str, id: u64) -> Vec<u8> {
        Key::new()
            .str(tenant)
            .str(conversation)
            .u64(id)
            .into_bytes()
    }
    pub(in super::super) fn conversation_prefix(tenant: &str, conversation: &str) -> Vec<u8> {
        Key::new().str(tenant).str(conversation).into_bytes()
    }
    pub(in super::super) fn event(tenant: &str, id: u64) -> Vec<u8> {
        Key::new().str(tenant).u64(id).into_bytes()
    }
    pub(in super::super) fn inbox(tenant: &str, owner: &str, seq: u64) -> Vec<u8> {
        Key::new().str(tenant).str(owner).u64(seq).into_bytes()
    }
    /// The prefix of a user's keys in `inbox`, `floors`, `states`, `list` and `restrictions`.
    pub(in super::super) fn user(tenant: &str, user: &str) -> Vec<u8> {
        Key::new().str(tenant).str(user).into_bytes()
    }
    pub(in super::super) fn group_entry(tenant: &str, message_id: u64, member: &str) -> Vec<u8> {
        Key::new()
            .str(tenant)
            .u64(message_id)
            .str(member)
            .into_bytes()
    }
    pub(in super::super) fn group(tenant: &str, id: &str) -> Vec<u8> {
        Key::new().str(tenant).str(id).into_bytes()
    }
    pub(in super::super) fn state(tenant: &str, user: &str, conversation: &str) -> Vec<u8> {
        Key::new()
            .str(tenant)
            .str(user)
            .str(conversation)
            .into_bytes()
    }
    pub(in super::super) fn list(
        tenant: &str,
        user: &str,
        activity_seq: u64,
        conversation: &str,
    ) -> Vec<u8> {
        Key::new()
            .str(tenant)
            .str(user)
            .u64(activity_seq)
            .str(conversation)
            .into_bytes()
    }
    pub(in super::super) fn member(tenant: &str, group: &str, user: &str) -> Vec<u8> {
        Key::new().str(tenant).str(group).str(user).into_bytes()
    }
    pub(in super::super) fn reaction(
        tenant: &str,
        message_id: u64,
        emoji: &str,
        user: &str,
    ) -> Vec<u8> {
        Key::new()
            .str(tenant)
            .u64(message_id)
            .str(emoji)
            .str(user)
            .into_bytes()
    }
    pub(in super::super) fn reactions_of(tenant: &str, message_id: u64) -> Vec<u8> {
        Key::new().str(tenant).u64(message_id).into_bytes()
    }
    pub(in super::super) fn outbox(tenant: &str, id: u64) -> Vec<u8> {
        Key::new().str(tenant).u64(id).into_bytes()
    }
    /// The prefix of a tenant's keys in any keyspace keyed by tenant first.
    pub(in super::super) fn tenant(tenant: &str) -> Vec<u8> {
        Key::new().str(tenant).into_bytes()
    }
    pub(in super::super) fn consumer(tenant: &str, consumer: &str) -> Vec<u8> {
        Key::new().str(tenant).str(consumer).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_past_its_keys() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xFF"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xFF\xFF"), None);
    }

    #[test]
    fn rows_round_trip() {
        let state = StateRow {
            peer: Some("bob".into()),
            read_marker: 7,
            active: true,
            ..StateRow::default()
        };
        assert_eq!(decode::<StateRow>(&encode(&state).unwrap()).unwrap(), state);
        assert!(decode::<StateRow>(b"\xFF").is_err());
    }
}
