//! The rows of conversations that writes and reads both look up: a user's current seq and
//! its floor, a group and its members, and a user's state of a conversation (refused as the
//! rules say when the user has none).

use rusqlite::{Connection, OptionalExtension, params};

use super::backend;
use crate::StoreError;
use crate::rules::{self, MemberRow, Target};
use crate::sql::sql_int;
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::event::Role;

/// The user's current seq: the highest of its stream, or of what retention pruned of it (0
/// when it has none).
pub(super) fn last_seq(conn: &Connection, user: &UserKey) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "SELECT MAX(
             COALESCE((SELECT MAX(seq) FROM inbox WHERE tenant = ?1 AND owner = ?2), 0),
             COALESCE((SELECT pruned_until FROM stream_floors
                       WHERE tenant = ?1 AND owner = ?2), 0))",
    )
    .and_then(|mut stmt| {
        stmt.query_row(params![user.tenant, user.user], |row| row.get::<_, i64>(0))
    })
    .map(|seq| seq as u64)
    .map_err(backend)
}

/// The highest seq of the user's stream that retention deleted (0 when none).
pub(super) fn stream_floor(conn: &Connection, user: &UserKey) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT pruned_until FROM stream_floors WHERE tenant = ?1 AND owner = ?2")
        .and_then(|mut stmt| {
            stmt.query_row(params![user.tenant, user.user], |row| row.get::<_, i64>(0))
                .optional()
        })
        .map(|floor| floor.unwrap_or(0) as u64)
        .map_err(backend)
}

/// The title of `group`, or `None` when the tenant has no such group.
pub(super) fn group_title(
    conn: &Connection,
    tenant: &str,
    group: &str,
) -> Result<Option<String>, StoreError> {
    conn.prepare_cached("SELECT title FROM groups WHERE tenant = ?1 AND id = ?2")
        .and_then(|mut stmt| {
            stmt.query_row(params![tenant, group], |row| row.get(0))
                .optional()
        })
        .map_err(backend)
}

/// The current members of a group (`?1` tenant, `?2` group), by user id. Named index: without
/// statistics SQLite prefers the primary key's `tenant` prefix, which reads every conversation
/// state of the tenant.
pub(super) const MEMBERS: &str = "
    SELECT user, role, joined, joined_ts FROM conversation_states INDEXED BY group_members
    WHERE tenant = ?1 AND conversation = ?2 AND role IS NOT NULL AND active = 1
    ORDER BY user";

/// The current members of `group`, by user id.
pub(super) fn members(
    conn: &Connection,
    tenant: &str,
    group: &str,
) -> Result<Vec<MemberRow>, StoreError> {
    let mut stmt = conn.prepare_cached(MEMBERS).map_err(backend)?;
    let rows = stmt
        .query_map(params![tenant, group], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })
        .map_err(backend)?;
    let mut members = Vec::new();
    for row in rows {
        let (user, role, joined, joined_ts) = row.map_err(backend)?;
        members.push(MemberRow {
            user,
            role: role_of(&role)?,
            joined: joined as u64,
            joined_ts,
        });
    }
    Ok(members)
}

/// A role as stored.
pub(super) fn role_of(text: &str) -> Result<Role, StoreError> {
    Role::parse(text).ok_or_else(|| StoreError::Backend(format!("a stored role {text:?}")))
}

/// How many groups `user` is a member of now.
pub(super) fn group_count(conn: &Connection, tenant: &str, user: &str) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "SELECT COUNT(*) FROM conversation_states
         WHERE tenant = ?1 AND user = ?2 AND role IS NOT NULL AND active = 1",
    )
    .and_then(|mut stmt| stmt.query_row(params![tenant, user], |row| row.get::<_, i64>(0)))
    .map(|count| count as u64)
    .map_err(backend)
}

/// A user's read state of a conversation.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadState {
    pub(super) read_marker: u64,
    pub(super) unread_count: u64,
    /// The user sees the conversation's messages with a greater id only (0 for direct
    /// conversations).
    pub(super) boundary: u64,
}

/// `user`'s state of `target`. Refused when the direct conversation has no message yet, when
/// the group does not exist, or when the user is not a member of it.
pub(super) fn read_state(
    conn: &Connection,
    user: &UserKey,
    target: &Target,
) -> Result<ReadState, StoreError> {
    let id = target.id();
    let refused = |refusal| Err(StoreError::Refused(refusal));
    if let Target::Group(group) = target
        && group_title(conn, &user.tenant, group)?.is_none()
    {
        return refused(rules::unknown_conversation(id));
    }
    let row = conn
        .prepare_cached(
            "SELECT read_marker, unread_count, boundary FROM conversation_states
             WHERE tenant = ?1 AND user = ?2 AND conversation = ?3 AND active = 1",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![user.tenant, user.user, id], |row| {
                Ok(ReadState {
                    read_marker: row.get::<_, i64>(0)? as u64,
                    unread_count: row.get::<_, i64>(1)? as u64,
                    boundary: row.get::<_, i64>(2)? as u64,
                })
            })
            .optional()
        })
        .map_err(backend)?;
    match (row, target) {
        (Some(state), _) => Ok(state),
        (None, Target::Direct { .. }) => refused(rules::unknown_conversation(id)),
        (None, Target::Group(_)) => refused(rules::not_a_member(&user.user, id)),
    }
}

/// The sender of message `message_id` when it is a message of `conversation` visible past
/// `boundary`.
pub(super) fn visible_sender(
    conn: &Connection,
    tenant: &str,
    conversation: &str,
    boundary: u64,
    message_id: u64,
) -> Result<Option<String>, StoreError> {
    if message_id <= boundary {
        return Ok(None);
    }
    conn.prepare_cached(
        "SELECT sender FROM messages WHERE id = ?1 AND tenant = ?2 AND conversation = ?3",
    )
    .and_then(|mut stmt| {
        stmt.query_row(params![sql_int(message_id), tenant, conversation], |row| {
            row.get(0)
        })
        .optional()
    })
    .map_err(backend)
}
