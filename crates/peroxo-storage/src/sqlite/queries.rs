//! The reads, each on a pooled read-only connection: history, sync, the conversation list,
//! members and read receipts. A read of several statements runs them in one read
//! transaction, so they answer from one snapshot.

use rusqlite::{Connection, Row, params};

use super::schema::{DIRECT_MESSAGE, EVENT, GROUP_MESSAGE, LIFECYCLE_EVENT};
use super::{backend, state};
use crate::rules::{self, Target};
use crate::sql::{
    EventColumns, LifecycleColumns, MESSAGE_COLUMN_COUNT, MESSAGE_COLUMNS, StreamEntry,
    has_pending_reactions, history_page, reaction_counts, rows_for_page, sql_int, stream_page,
    with_floor,
};
use crate::{HistoryQuery, StoreError, SyncQuery, SyncScope};
use peroxo_protocol::conversation::{
    ConversationKind, ConversationPage, ConversationSummary, ConversationsQuery, Receipt,
};
use peroxo_protocol::domain::{HistoryPage, StoredMessage, SyncPage, UserKey};
use peroxo_protocol::event::{Event, Member, StreamEvent};

/// The columns of `events e` that [`event_at`] reads, in its order: an edit's text is the
/// message's text as it is now.
const EVENT_COLUMNS: &str = "e.id, e.tenant, e.conversation, e.actor, e.ts, e.kind, e.users, e.user, e.role, e.title, e.message_id, e.count, e.emoji, \
     CASE WHEN e.kind = 'message_edited' THEN (SELECT x.text FROM messages x WHERE x.id = e.message_id) END";
const EVENT_COLUMN_COUNT: usize = 14;

fn refused(refusal: peroxo_protocol::event::Refusal) -> StoreError {
    StoreError::Refused(refusal)
}

/// A message from [`MESSAGE_COLUMNS`] at the start of a row.
pub(super) fn row_to_message(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    message_at(row, 0)
}

/// A message from [`MESSAGE_COLUMNS`] starting at column `at`.
fn message_at(row: &Row<'_>, at: usize) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        message_id: row.get::<_, i64>(at)? as u64,
        tenant: row.get(at + 1)?,
        sender: row.get(at + 2)?,
        recipient: row.get(at + 3)?,
        client_msg_id: row.get(at + 4)?,
        text: row.get(at + 5)?,
        ts: row.get(at + 6)?,
        sender_seq: row.get::<_, i64>(at + 7)? as u64,
        recipient_seq: row.get::<_, i64>(at + 8)? as u64,
        lifecycle: LifecycleColumns {
            reply_to: row.get(at + 9)?,
            edited_ts: row.get(at + 10)?,
            deleted_by: row.get(at + 11)?,
            deleted_ts: row.get(at + 12)?,
            reaction_count: row.get(at + 13)?,
            quote_sender: row.get(at + 14)?,
            quote_excerpt: row.get(at + 15)?,
            quote_deleted_ts: row.get(at + 16)?,
        }
        .lifecycle(),
    })
}

/// Replaces the reaction placeholders of `messages` with their reactions as `viewer` sees
/// them.
pub(super) fn attach_reactions<'m>(
    conn: &Connection,
    viewer: &str,
    messages: impl IntoIterator<Item = &'m mut StoredMessage>,
) -> Result<(), StoreError> {
    let mut stmt = None;
    for message in messages {
        if !has_pending_reactions(message) {
            continue;
        }
        let stmt = match &mut stmt {
            Some(stmt) => stmt,
            None => stmt.insert(
                conn.prepare_cached("SELECT emoji, user, ts FROM reactions WHERE message_id = ?1")
                    .map_err(backend)?,
            ),
        };
        let rows = stmt
            .query_map(params![sql_int(message.message_id)], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
        message.lifecycle.reactions = reaction_counts(rows, viewer);
    }
    Ok(())
}

/// A message from a left join: `None` when the row has none.
fn optional_message_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Option<StoredMessage>> {
    match row.get::<_, Option<i64>>(at)? {
        Some(_) => message_at(row, at).map(Some),
        None => Ok(None),
    }
}

/// An event from [`EVENT_COLUMNS`] starting at column `at`.
fn event_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Event> {
    let name: String = row.get(at + 5)?;
    let columns = EventColumns {
        users: row.get(at + 6)?,
        user: row.get(at + 7)?,
        role: row.get(at + 8)?,
        title: row.get(at + 9)?,
        message_id: row.get(at + 10)?,
        count: row.get(at + 11)?,
        emoji: row.get(at + 12)?,
        text: row.get(at + 13)?,
    };
    let kind = columns.kind(&name).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(at + 5, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(Event {
        event_id: row.get::<_, i64>(at)? as u64,
        tenant: row.get(at + 1)?,
        conversation_id: row.get(at + 2)?,
        actor: row.get(at + 3)?,
        ts: row.get(at + 4)?,
        kind,
    })
}

pub(super) fn history(
    conn: &mut Connection,
    query: &HistoryQuery,
) -> Result<HistoryPage, StoreError> {
    let target = rules::target_of(&query.user.user, &query.conversation_id).map_err(refused)?;
    let before = query.before.map_or(i64::MAX, sql_int);
    let limit = rows_for_page(query.limit);
    let tx = conn.transaction().map_err(backend)?;
    let newest_first = match &target {
        Target::Direct { id, .. } => {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m
                     WHERE m.tenant = ?1 AND m.conversation = ?2 AND m.id < ?3
                     ORDER BY m.id DESC LIMIT ?4"
                ))
                .map_err(backend)?;
            stmt.query_map(
                params![query.user.tenant, id, before, limit],
                row_to_message,
            )
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?
        }
        Target::Group(group) => {
            let boundary = state::read_state(&tx, &query.user, &target)?.boundary;
            // Each message carries the viewer's seq of it.
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS}, i.seq FROM messages m
                     JOIN inbox i ON i.tenant = m.tenant AND i.owner = ?3
                         AND i.message_id = m.id AND i.kind = {GROUP_MESSAGE}
                     WHERE m.tenant = ?1 AND m.conversation = ?2 AND m.id > ?4 AND m.id < ?5
                     ORDER BY m.id DESC LIMIT ?6"
                ))
                .map_err(backend)?;
            let params = params![
                query.user.tenant,
                group,
                query.user.user,
                sql_int(boundary),
                before,
                limit
            ];
            stmt.query_map(params, |row| {
                let mut message = row_to_message(row)?;
                message.recipient_seq = row.get::<_, i64>(MESSAGE_COLUMN_COUNT)? as u64;
                Ok(message)
            })
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?
        }
    };
    let last_seq = state::last_seq(&tx, &query.user)?;
    let mut page = history_page(newest_first, query.limit, last_seq);
    attach_reactions(&tx, &query.user.user, &mut page.messages)?;
    Ok(page)
}

pub(super) fn sync(conn: &mut Connection, query: &SyncQuery) -> Result<SyncPage, StoreError> {
    // One read transaction, so `last_seq` and the page come from one snapshot.
    let tx = conn.transaction().map_err(backend)?;
    let last_seq = state::last_seq(&tx, &query.user)?;
    // The entry kinds are ordered so that each scope reads the kinds up to its own.
    let widest_kind = match query.scope {
        SyncScope::Everything => LIFECYCLE_EVENT,
        SyncScope::Conversations => EVENT,
        SyncScope::DirectMessages => DIRECT_MESSAGE,
    };
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS}, {EVENT_COLUMNS}, i.seq, i.kind FROM inbox i
             LEFT JOIN messages m ON m.id = i.message_id
             LEFT JOIN events e ON e.id = i.event_id
             WHERE i.tenant = ?1 AND i.owner = ?2 AND i.seq > ?3 AND i.kind <= ?5
             ORDER BY i.seq LIMIT ?4"
        ))
        .map_err(backend)?;
    let params = params![
        query.user.tenant,
        query.user.user,
        sql_int(query.after_seq),
        rows_for_page(query.limit),
        widest_kind
    ];
    let entries = stmt
        .query_map(params, stream_entry)
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let floor = state::stream_floor(&tx, &query.user)?;
    let mut page = stream_page(entries, query.limit, last_seq);
    attach_reactions(&tx, &query.user.user, &mut page.messages)?;
    Ok(with_floor(page, query.after_seq, floor))
}

/// An entry of a sync's rows: a group message carries the owner's seq as its recipient seq.
fn stream_entry(row: &Row<'_>) -> rusqlite::Result<StreamEntry> {
    let seq_at = MESSAGE_COLUMN_COUNT + EVENT_COLUMN_COUNT;
    let seq = row.get::<_, i64>(seq_at)? as u64;
    let kind: i64 = row.get(seq_at + 1)?;
    if kind >= EVENT {
        let event = event_at(row, MESSAGE_COLUMN_COUNT)?;
        return Ok(StreamEntry::Event(StreamEvent { seq, event }));
    }
    let mut message = row_to_message(row)?;
    if kind == GROUP_MESSAGE {
        message.recipient_seq = seq;
    }
    Ok(StreamEntry::Message(message))
}

/// A page of a user's conversation list (`?1` tenant, `?2` user, `?3` activity before, `?4`
/// rows), each with its preview, the peer's read marker in a direct conversation and the
/// user's seq of a group's last message. The subquery names its index, so that no planner
/// (the backend never gathers statistics) can fall back to the primary key's (tenant, owner)
/// prefix, which reads the user's whole stream for every conversation on the page.
pub(super) fn conversation_page_sql() -> String {
    format!(
        "SELECT {MESSAGE_COLUMNS}, s.conversation, s.peer, s.role, s.read_marker,
             s.unread_count, s.activity_seq, g.title, g.member_count,
             COALESCE(p.read_marker, 0),
             (SELECT i.seq FROM inbox i INDEXED BY inbox_group_messages
              WHERE i.tenant = s.tenant AND i.owner = s.user
                AND i.message_id = s.last_message_id AND i.kind = {GROUP_MESSAGE})
         FROM conversation_states s
         LEFT JOIN messages m ON m.id = s.last_message_id
         LEFT JOIN groups g ON s.role IS NOT NULL AND g.tenant = s.tenant AND g.id = s.conversation
         LEFT JOIN conversation_states p ON s.peer IS NOT NULL AND p.tenant = s.tenant
             AND p.user = s.peer AND p.conversation = s.conversation
         WHERE s.tenant = ?1 AND s.user = ?2 AND s.active = 1 AND s.activity_seq < ?3
         ORDER BY s.activity_seq DESC LIMIT ?4"
    )
}

pub(super) fn conversations(
    conn: &mut Connection,
    query: &ConversationsQuery,
) -> Result<ConversationPage, StoreError> {
    let user = &query.user;
    // The total and the page from one snapshot.
    let tx = conn.transaction().map_err(backend)?;
    let total_unread = tx
        .prepare_cached(
            "SELECT COALESCE(SUM(unread_count), 0) FROM conversation_states
             WHERE tenant = ?1 AND user = ?2 AND active = 1",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![user.tenant, user.user], |row| row.get::<_, i64>(0))
        })
        .map_err(backend)? as u64;
    let mut stmt = tx
        .prepare_cached(&conversation_page_sql())
        .map_err(backend)?;
    let before = query.before.map_or(i64::MAX, sql_int);
    let rows = stmt
        .query_map(
            params![user.tenant, user.user, before, rows_for_page(query.limit)],
            summary,
        )
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let has_more = rows.len() as u64 > u64::from(query.limit);
    let mut conversations = Vec::with_capacity(rows.len());
    for row in rows.into_iter().take(query.limit as usize) {
        conversations.push(row?);
    }
    let previews = conversations
        .iter_mut()
        .filter_map(|c| c.last_message.as_mut());
    attach_reactions(&tx, &user.user, previews)?;
    Ok(ConversationPage {
        conversations,
        has_more,
        total_unread,
        last_seq: state::last_seq(&tx, user)?,
    })
}

/// One entry of the conversation list from its row (a stored role that no longer parses is
/// the backend's error, not the row reader's).
fn summary(row: &Row<'_>) -> rusqlite::Result<Result<ConversationSummary, StoreError>> {
    let at = MESSAGE_COLUMN_COUNT;
    let mut last_message = optional_message_at(row, 0)?;
    if let (Some(message), Some(seq)) = (&mut last_message, row.get::<_, Option<i64>>(at + 9)?) {
        message.recipient_seq = seq as u64;
    }
    let peer: Option<String> = row.get(at + 1)?;
    let role: Option<String> = row.get(at + 2)?;
    let kind = match (peer, role) {
        (Some(peer), _) => ConversationKind::Direct {
            peer,
            peer_read_marker: row.get::<_, i64>(at + 8)? as u64,
        },
        (None, role) => {
            let role = match state::role_of(role.as_deref().unwrap_or_default()) {
                Ok(role) => role,
                Err(error) => return Ok(Err(error)),
            };
            ConversationKind::Group {
                title: row.get(at + 6)?,
                role,
                member_count: row.get::<_, i64>(at + 7)? as u32,
            }
        }
    };
    Ok(Ok(ConversationSummary {
        conversation_id: row.get(at)?,
        kind,
        last_message,
        unread_count: row.get::<_, i64>(at + 4)? as u64,
        read_marker: row.get::<_, i64>(at + 3)? as u64,
        activity_seq: row.get::<_, i64>(at + 5)? as u64,
    }))
}

pub(super) fn members(
    conn: &mut Connection,
    user: &UserKey,
    conversation_id: &str,
) -> Result<Vec<Member>, StoreError> {
    let group = rules::group_of(&user.user, conversation_id).map_err(refused)?;
    let tx = conn.transaction().map_err(backend)?;
    state::read_state(&tx, user, &Target::Group(group.clone()))?;
    let members = state::members(&tx, &user.tenant, &group)?;
    Ok(members
        .into_iter()
        .map(|m| Member {
            user: m.user,
            role: m.role,
            joined_ts: m.joined_ts,
        })
        .collect())
}

/// The read markers of a group's members (`?1` tenant, `?2` group).
pub(super) const GROUP_READ_MARKERS: &str = "
    SELECT user, read_marker FROM conversation_states INDEXED BY group_members
    WHERE tenant = ?1 AND conversation = ?2 AND role IS NOT NULL AND active = 1";
/// The read markers of a direct conversation's participants (`?1` tenant, `?2` conversation,
/// `?3` and `?4` the participants), read by primary key: no index covers a direct
/// conversation's rows by conversation.
pub(super) const DIRECT_READ_MARKERS: &str = "
    SELECT user, read_marker FROM conversation_states
    WHERE tenant = ?1 AND user IN (?3, ?4) AND conversation = ?2 AND active = 1";

pub(super) fn read_receipts(
    conn: &mut Connection,
    user: &UserKey,
    conversation_id: &str,
    message_id: u64,
) -> Result<Vec<Receipt>, StoreError> {
    let target = rules::target_of(&user.user, conversation_id).map_err(refused)?;
    let conversation = target.id();
    let tx = conn.transaction().map_err(backend)?;
    let boundary = state::read_state(&tx, user, &target)?.boundary;
    let Some(author) =
        state::visible_sender(&tx, &user.tenant, conversation, boundary, message_id)?
    else {
        return Err(refused(rules::unknown_message(
            Some(message_id),
            conversation,
        )));
    };
    let marker = |row: &Row<'_>| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64));
    let markers = match &target {
        Target::Group(_) => tx.prepare_cached(GROUP_READ_MARKERS).and_then(|mut stmt| {
            stmt.query_map(params![user.tenant, conversation], marker)?
                .collect::<Result<Vec<_>, _>>()
        }),
        Target::Direct { peer, .. } => {
            tx.prepare_cached(DIRECT_READ_MARKERS).and_then(|mut stmt| {
                stmt.query_map(params![user.tenant, conversation, user.user, peer], marker)?
                    .collect::<Result<Vec<_>, _>>()
            })
        }
    }
    .map_err(backend)?;
    Ok(rules::receipts(&author, message_id, markers))
}
