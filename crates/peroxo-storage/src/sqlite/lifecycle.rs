//! Changing a committed message inside the writer's transaction: an edit, a delete (with the
//! unread counts and previews it changes), a reaction added or taken back. The rules decide
//! (see [`rules`](crate::rules)); this reads the rows they need and writes what they answer,
//! with the event in the stream of everyone who can see the message.

use rusqlite::{Connection, OptionalExtension, params};

use super::schema::GROUP_MESSAGE;
use super::writer::WriteTx;
use super::{backend, queries, state};
use crate::rules::{self, MessageEffect, MessageRow, ReactionTally, Target};
use crate::sql::{MESSAGE_COLUMNS, sql_int};
use crate::{MAX_STORED_TEXT_BYTES, StoreError};
use peroxo_protocol::domain::{StoredMessage, UserKey};
use peroxo_protocol::event::Role;
use peroxo_protocol::lifecycle::{MessageChange, MessageOp, MessageOutcome};

pub(super) fn change_message(
    w: &mut WriteTx<'_>,
    request: &MessageChange,
) -> Result<MessageOutcome, StoreError> {
    let actor = &request.actor;
    let refused = StoreError::Refused;
    let target = rules::target_of(&actor.user, &request.conversation_id).map_err(refused)?;
    rules::check_request(&request.op, MAX_STORED_TEXT_BYTES).map_err(refused)?;
    // A resent edit is answered with what it edited before anything is checked again: its
    // author may have left the group since, like the author of a resent message.
    if let MessageOp::Edit { client_msg_id, .. } = &request.op
        && let Some(edited) = edited_before(w.conn, actor, client_msg_id)?
    {
        return Ok(MessageOutcome {
            message: read_message(w.conn, actor, edited)?,
            event: None,
            duplicate: true,
        });
    }
    let conversation = target.id();
    let boundary = state::read_state(w.conn, actor, &target)?.boundary;
    let message_id = request.message_id;
    let Some(row) = message_row(w.conn, &actor.tenant, conversation, boundary, message_id)? else {
        return Err(refused(rules::unknown_message(
            Some(message_id),
            conversation,
        )));
    };
    let role = match &target {
        Target::Group(group) => role_of(w.conn, actor, group)?,
        Target::Direct { .. } => None,
    };
    let tally = match &request.op {
        MessageOp::React { emoji } | MessageOp::Unreact { emoji } => {
            reaction_tally(w.conn, &actor.user, message_id, emoji)?
        }
        _ => ReactionTally::default(),
    };
    let plan = rules::plan_message_change(
        &actor.user,
        &row,
        &request.op,
        role,
        tally,
        &request.limits,
        w.ts,
    )
    .map_err(refused)?;
    let Some((effect, moderated)) = plan else {
        return Ok(MessageOutcome {
            message: read_message(w.conn, actor, message_id)?,
            event: None,
            duplicate: false,
        });
    };
    let audience = match target.participants() {
        Some(participants) => participants,
        None => members_who_see(w.conn, &actor.tenant, conversation, message_id)?,
    };
    apply(w, actor, &effect, message_id)?;
    if matches!(effect, MessageEffect::Delete) {
        forget_deleted(w.conn, &actor.tenant, conversation, &row, &audience)?;
    }
    let kind = effect.event(message_id, moderated);
    let fanout = w.fan_out(&actor.tenant, conversation, &actor.user, kind, &audience)?;
    if let MessageOp::Edit { client_msg_id, .. } = &request.op {
        w.conn
            .prepare_cached("UPDATE events SET client_msg_id = ?2 WHERE id = ?1")
            .and_then(|mut stmt| {
                stmt.execute(params![sql_int(fanout.event.event_id), client_msg_id])
            })
            .map_err(backend)?;
    }
    Ok(MessageOutcome {
        message: read_message(w.conn, actor, message_id)?,
        event: Some(fanout),
        duplicate: false,
    })
}

/// Message `id` of `conversation` when it is past `boundary` (what the user can see).
fn message_row(
    conn: &Connection,
    tenant: &str,
    conversation: &str,
    boundary: u64,
    id: u64,
) -> Result<Option<MessageRow>, StoreError> {
    if id <= boundary {
        return Ok(None);
    }
    conn.prepare_cached(
        "SELECT sender, text, ts, deleted_ts IS NOT NULL FROM messages
         WHERE id = ?1 AND tenant = ?2 AND conversation = ?3",
    )
    .and_then(|mut stmt| {
        stmt.query_row(params![sql_int(id), tenant, conversation], |row| {
            Ok(MessageRow {
                id,
                sender: row.get(0)?,
                text: row.get(1)?,
                ts: row.get(2)?,
                deleted: row.get(3)?,
            })
        })
        .optional()
    })
    .map_err(backend)
}

/// Message `id` as `viewer` sees it now: a group message with the viewer's seq of it, as
/// history reads it (the sender's too).
fn read_message(conn: &Connection, viewer: &UserKey, id: u64) -> Result<StoredMessage, StoreError> {
    let mut message = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = ?1"
        ))
        .and_then(|mut stmt| stmt.query_row(params![sql_int(id)], queries::row_to_message))
        .map_err(backend)?;
    if message.is_group() {
        message.recipient_seq = conn
            .prepare_cached(&format!(
                "SELECT seq FROM inbox INDEXED BY inbox_group_messages
                 WHERE tenant = ?1 AND owner = ?2 AND message_id = ?3 AND kind = {GROUP_MESSAGE}"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(params![viewer.tenant, viewer.user, sql_int(id)], |row| {
                    row.get::<_, i64>(0)
                })
                .optional()
            })
            .map_err(backend)?
            .map_or(0, |seq| seq as u64);
    }
    queries::attach_reactions(conn, &viewer.user, [&mut message])?;
    Ok(message)
}

/// The message `actor` edited with `client_msg_id` before, if it did.
fn edited_before(
    conn: &Connection,
    actor: &UserKey,
    client_msg_id: &str,
) -> Result<Option<u64>, StoreError> {
    conn.prepare_cached(
        "SELECT message_id FROM events WHERE tenant = ?1 AND actor = ?2 AND client_msg_id = ?3",
    )
    .and_then(|mut stmt| {
        stmt.query_row(params![actor.tenant, actor.user, client_msg_id], |row| {
            row.get::<_, i64>(0)
        })
        .optional()
    })
    .map(|found| found.map(|id| id as u64))
    .map_err(backend)
}

/// The role of a member of `group`.
fn role_of(conn: &Connection, user: &UserKey, group: &str) -> Result<Option<Role>, StoreError> {
    let role: Option<String> = conn
        .prepare_cached(
            "SELECT role FROM conversation_states
             WHERE tenant = ?1 AND user = ?2 AND conversation = ?3 AND active = 1",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![user.tenant, user.user, group], |row| row.get(0))
                .optional()
        })
        .map_err(backend)?
        .flatten();
    role.as_deref().map(state::role_of).transpose()
}

/// What a reaction of `user` with `emoji` to `message_id` would change.
fn reaction_tally(
    conn: &Connection,
    user: &str,
    message_id: u64,
    emoji: &str,
) -> Result<ReactionTally, StoreError> {
    conn.prepare_cached(
        "SELECT COUNT(DISTINCT emoji), COALESCE(SUM(user = ?2), 0),
                COALESCE(MAX(emoji = ?3), 0), COALESCE(MAX(user = ?2 AND emoji = ?3), 0)
         FROM reactions WHERE message_id = ?1",
    )
    .and_then(|mut stmt| {
        stmt.query_row(params![sql_int(message_id), user, emoji], |row| {
            Ok(ReactionTally {
                distinct: row.get::<_, i64>(0)? as u32,
                mine: row.get::<_, i64>(1)? as u32,
                emoji_present: row.get(2)?,
                made: row.get(3)?,
            })
        })
    })
    .map_err(backend)
}

/// The members of `group` who can see its message `id`, by user id: those who joined before
/// it.
fn members_who_see(
    conn: &Connection,
    tenant: &str,
    group: &str,
    id: u64,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT user FROM conversation_states INDEXED BY group_members
                 WHERE tenant = ?1 AND conversation = ?2 AND role IS NOT NULL AND active = 1
                   AND boundary < ?3
                 ORDER BY user",
        )
        .map_err(backend)?;
    stmt.query_map(params![tenant, group, sql_int(id)], |row| row.get(0))
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)
}

/// Writes `effect` to message `id`.
fn apply(
    w: &WriteTx<'_>,
    actor: &UserKey,
    effect: &MessageEffect,
    id: u64,
) -> Result<(), StoreError> {
    let execute = |sql: &str, params: &[&dyn rusqlite::ToSql]| {
        w.conn
            .prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute(params))
            .map_err(backend)
    };
    let id = sql_int(id);
    match effect {
        MessageEffect::Edit { text } => {
            execute(
                "UPDATE messages SET text = ?2, edited_ts = ?3 WHERE id = ?1",
                params![id, text, w.ts],
            )?;
        }
        MessageEffect::Delete => {
            execute(
                "UPDATE messages SET text = '', deleted_by = ?2, deleted_ts = ?3,
                     reaction_count = 0
                 WHERE id = ?1",
                params![id, actor.user, w.ts],
            )?;
            execute("DELETE FROM reactions WHERE message_id = ?1", params![id])?;
        }
        MessageEffect::React { emoji } => {
            execute(
                "INSERT INTO reactions (message_id, emoji, user, ts) VALUES (?1, ?2, ?3, ?4)",
                params![id, emoji, actor.user, w.ts],
            )?;
            execute(
                "UPDATE messages SET reaction_count = reaction_count + 1 WHERE id = ?1",
                params![id],
            )?;
        }
        MessageEffect::Unreact { emoji } => {
            execute(
                "DELETE FROM reactions WHERE message_id = ?1 AND emoji = ?2 AND user = ?3",
                params![id, emoji, actor.user],
            )?;
            execute(
                "UPDATE messages SET reaction_count = reaction_count - 1 WHERE id = ?1",
                params![id],
            )?;
        }
    }
    Ok(())
}

/// After `deleted` is deleted: it no longer counts as unread for anyone who had it unread,
/// and whoever had it as preview sees the newest message before it that is not deleted.
fn forget_deleted(
    conn: &Connection,
    tenant: &str,
    conversation: &str,
    deleted: &MessageRow,
    audience: &[String],
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE conversation_states SET
                 unread_count = CASE
                     WHEN user <> ?4 AND read_marker < ?5 AND unread_count > 0
                     THEN unread_count - 1 ELSE unread_count END,
                 last_message_id = CASE
                     WHEN last_message_id = ?5
                     THEN COALESCE((SELECT MAX(m.id) FROM messages m
                                    WHERE m.tenant = ?1 AND m.conversation = ?3
                                      AND m.id > conversation_states.boundary AND m.id < ?5
                                      AND m.deleted_ts IS NULL), 0)
                     ELSE last_message_id END
             WHERE tenant = ?1 AND user = ?2 AND conversation = ?3",
        )
        .map_err(backend)?;
    for user in audience {
        stmt.execute(params![
            tenant,
            user,
            conversation,
            deleted.sender,
            sql_int(deleted.id)
        ])
        .map_err(backend)?;
    }
    Ok(())
}
