//! Appending one message inside the writer's transaction: a direct message (its two stream
//! rows and its participants' conversation states) or a group message (one stream row and one
//! state update per member), each with its `message.created` outbox event.

use rusqlite::{Connection, OptionalExtension, params};

use super::writer::{Entry, WriteTx};
use super::{backend, queries, state};
use crate::rules::{self, Target};
use crate::seq_assignment::{MessageSeqs, inbox_entries, next_seqs, stream_entries};
use crate::sql::{MESSAGE_COLUMNS, sql_int};
use crate::{MAX_STORED_TEXT_BYTES, StoreError};
use peroxo_protocol::domain::{
    AppendOutcome, NewMessage, QUOTE_EXCERPT_CHARS, Quote, StoredMessage, UserKey, conversation_id,
};
use peroxo_protocol::event::{Refusal, RefusalCode, StreamSeq, is_group_id};

/// Stores `message` inside the writer's transaction: rejects it when invalid, answers it with
/// the original when it was sent before, and otherwise stores it with the next seqs of the
/// users whose streams it enters. Also says how many stream rows it wrote.
pub(super) fn append_one(
    w: &mut WriteTx<'_>,
    message: &NewMessage,
) -> Result<(AppendOutcome, usize), StoreError> {
    if let Err(reason) = message.validate(MAX_STORED_TEXT_BYTES) {
        let refusal = Refusal::new(RefusalCode::BadRequest, reason);
        return Ok((AppendOutcome::Rejected(refusal), 0));
    }
    if is_group_id(&message.recipient) {
        append_to_group(w, message)
    } else {
        append_direct(w, message)
    }
}

fn duplicate(original: StoredMessage) -> (AppendOutcome, usize) {
    let outcome = AppendOutcome::Stored {
        message: original,
        duplicate: true,
        members: Vec::new(),
    };
    (outcome, 0)
}

fn append_direct(
    w: &mut WriteTx<'_>,
    message: &NewMessage,
) -> Result<(AppendOutcome, usize), StoreError> {
    let sender = UserKey::new(message.tenant.clone(), message.sender.clone());
    let recipient = sender.peer(message.recipient.clone());
    let assigned = next_seqs(&sender, &recipient, |user| w.current_seq(user))?;
    let conversation = conversation_id(&message.sender, &message.recipient);
    // A resent reply is answered with the original even if what it quotes is deleted since
    // (a plain resend is found by the insert itself, which is cheaper).
    if message.reply_to.is_some()
        && let Some(original) = find_original_if_any(w.conn, message)?
    {
        return Ok(duplicate(original));
    }
    let quote = match quote_of(w.conn, message, &conversation, 0)? {
        Ok(quote) => quote,
        Err(refusal) => return Ok((AppendOutcome::Rejected(refusal), 0)),
    };
    let Some(message_id) = insert_message(w, message, &conversation, assigned)? else {
        return Ok(duplicate(find_original(w.conn, message)?));
    };
    let mut stored = assigned.stored(message, message_id, w.ts);
    stored.lifecycle.reply_to = quote.map(Box::new);
    insert_inbox(w.conn, &stored)?;
    // Remembered only now: a duplicate takes no seq.
    let mut rows = 0;
    for (user, seq) in stream_entries(&sender, &recipient, assigned) {
        w.took(user.clone(), seq);
        record_message(w.conn, &stored, &conversation, user, seq)?;
        rows += 1;
    }
    w.record(&message.tenant, |payloads| {
        Some(payloads.message_created(&stored, [message.recipient.as_str()]))
    })?;
    let outcome = AppendOutcome::Stored {
        message: stored,
        duplicate: false,
        members: Vec::new(),
    };
    Ok((outcome, rows))
}

/// A message to a group: refused unless the group exists and the sender is a member, then
/// entered in every member's stream.
fn append_to_group(
    w: &mut WriteTx<'_>,
    message: &NewMessage,
) -> Result<(AppendOutcome, usize), StoreError> {
    // A resend is answered with the original even if the sender has left since.
    if let Some(original) = find_original_if_any(w.conn, message)? {
        return Ok(duplicate(original));
    }
    let (tenant, group) = (&message.tenant, &message.recipient);
    let refuse = |refusal| Ok((AppendOutcome::Rejected(refusal), 0));
    let Some(members) = w.group_members(tenant, group)? else {
        return refuse(rules::unknown_conversation(group));
    };
    if members.binary_search(&message.sender).is_err() {
        return refuse(rules::not_a_member(&message.sender, group));
    }
    let sender = UserKey::new(tenant.clone(), message.sender.clone());
    let quote = match message.reply_to {
        None => None,
        Some(_) => {
            let boundary = state::read_state(w.conn, &sender, &Target::Group(group.clone()))?;
            match quote_of(w.conn, message, group, boundary.boundary)? {
                Ok(quote) => quote,
                Err(refusal) => return refuse(refusal),
            }
        }
    };
    let sender_seq = w.current_seq(&sender)? + 1;
    let assigned = MessageSeqs {
        sender: sender_seq,
        recipient: 0,
    };
    let Some(message_id) = insert_message(w, message, group, assigned)? else {
        return Ok(duplicate(find_original(w.conn, message)?));
    };
    let mut stored = assigned.stored(message, message_id, w.ts);
    stored.lifecycle.reply_to = quote.map(Box::new);
    let mut others = Vec::with_capacity(members.len() - 1);
    for member in members.iter() {
        let owner = sender.peer(member.clone());
        let seq = if *member == message.sender {
            sender_seq
        } else {
            w.current_seq(&owner)? + 1
        };
        w.enter_at(&owner, seq, Entry::GroupMessage(message_id))?;
        record_message(w.conn, &stored, group, &owner, seq)?;
        if *member != message.sender {
            others.push(StreamSeq {
                user: member.clone(),
                seq,
            });
        }
    }
    w.record(tenant, |payloads| {
        Some(payloads.message_created(&stored, members.iter().map(String::as_str)))
    })?;
    let outcome = AppendOutcome::Stored {
        message: stored,
        duplicate: false,
        members: others,
    };
    Ok((outcome, members.len()))
}

/// Inserts `message` as a message of `conversation` with `assigned` seqs and returns its
/// message id, or `None` when it was sent before: the unique (tenant, sender, client_msg_id)
/// decides idempotency, so a resend inserts nothing.
fn insert_message(
    w: &WriteTx<'_>,
    message: &NewMessage,
    conversation: &str,
    assigned: MessageSeqs,
) -> Result<Option<u64>, StoreError> {
    let inserted = w
        .conn
        .prepare_cached(
            "INSERT INTO messages
                (tenant, sender, recipient, conversation, client_msg_id, text, ts, sender_seq,
                 recipient_seq, reply_to)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (tenant, sender, client_msg_id) DO NOTHING",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                message.tenant,
                message.sender,
                message.recipient,
                conversation,
                message.client_msg_id,
                message.text,
                w.ts,
                sql_int(assigned.sender),
                sql_int(assigned.recipient),
                message.reply_to.map(sql_int),
            ])
        })
        .map_err(backend)?;
    Ok((inserted != 0).then(|| w.conn.last_insert_rowid() as u64))
}

/// The stored original of a resent `message`.
fn find_original(conn: &Connection, message: &NewMessage) -> Result<StoredMessage, StoreError> {
    find_original_if_any(conn, message)?
        .ok_or_else(|| StoreError::Backend("a message both stored and not stored".to_owned()))
}

/// The stored original of `message`, if it was sent before (as it is now, seen by its
/// sender).
fn find_original_if_any(
    conn: &Connection,
    message: &NewMessage,
) -> Result<Option<StoredMessage>, StoreError> {
    let mut original = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m
             WHERE m.tenant = ?1 AND m.sender = ?2 AND m.client_msg_id = ?3"
        ))
        .and_then(|mut stmt| {
            stmt.query_row(
                params![message.tenant, message.sender, message.client_msg_id],
                queries::row_to_message,
            )
            .optional()
        })
        .map_err(backend)?;
    queries::attach_reactions(conn, &message.sender, original.iter_mut())?;
    Ok(original)
}

/// The quote of the message `message` replies to, if it names one: refused unless that
/// message is in `conversation`, past `boundary` (what the sender can see of a group), and
/// not deleted.
fn quote_of(
    conn: &Connection,
    message: &NewMessage,
    conversation: &str,
    boundary: u64,
) -> Result<Result<Option<Quote>, Refusal>, StoreError> {
    let Some(reply_to) = message.reply_to else {
        return Ok(Ok(None));
    };
    let found = conn
        .prepare_cached(&format!(
            "SELECT sender, substr(text, 1, {QUOTE_EXCERPT_CHARS}), deleted_ts FROM messages
             WHERE id = ?1 AND tenant = ?2 AND conversation = ?3 AND id > ?4"
        ))
        .and_then(|mut stmt| {
            stmt.query_row(
                params![
                    sql_int(reply_to),
                    message.tenant,
                    conversation,
                    sql_int(boundary)
                ],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<i64>>(2)?,
                    ))
                },
            )
            .optional()
        })
        .map_err(backend)?;
    Ok(match found {
        None => Err(rules::unknown_message(Some(reply_to), conversation)),
        Some((_, _, Some(_))) => Err(rules::deleted(reply_to)),
        Some((sender, excerpt, None)) => Ok(Some(Quote {
            message_id: reply_to,
            sender,
            excerpt,
            deleted: false,
        })),
    })
}

/// Adds a direct message to its participants' streams: one inbox row each, one for a message
/// to oneself.
fn insert_inbox(conn: &Connection, stored: &StoredMessage) -> Result<(), StoreError> {
    let mut insert = conn
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
                sql_int(stored.message_id)
            ])
            .map_err(backend)?;
    }
    Ok(())
}

/// Updates `user`'s state of `conversation` for `stored`, which took `seq` in the user's
/// stream: it is the preview and the activity; its sender has read it (without an event: the
/// message in the sender's stream says so), anyone else has one more unread. The row is
/// updated in place (a group member's always exists; a direct conversation's exists after its
/// first message, which makes it).
fn record_message(
    conn: &Connection,
    stored: &StoredMessage,
    conversation: &str,
    user: &UserKey,
    seq: u64,
) -> Result<(), StoreError> {
    let read = stored.sender == user.user;
    let update = if read {
        "UPDATE conversation_states SET read_marker = ?4, unread_count = 0,
             last_message_id = ?4, activity_seq = ?5
         WHERE tenant = ?1 AND user = ?2 AND conversation = ?3"
    } else {
        "UPDATE conversation_states SET unread_count = unread_count + 1,
             last_message_id = ?4, activity_seq = ?5
         WHERE tenant = ?1 AND user = ?2 AND conversation = ?3"
    };
    let message_id = sql_int(stored.message_id);
    let updated = conn
        .prepare_cached(update)
        .and_then(|mut stmt| {
            stmt.execute(params![
                user.tenant,
                user.user,
                conversation,
                message_id,
                sql_int(seq)
            ])
        })
        .map_err(backend)?;
    if updated != 0 {
        return Ok(());
    }
    if stored.is_group() {
        return Err(StoreError::Backend(format!(
            "member {} of {conversation} has no conversation state",
            user.user
        )));
    }
    let peer = if read {
        &stored.recipient
    } else {
        &stored.sender
    };
    conn.prepare_cached(
        "INSERT INTO conversation_states
             (tenant, user, conversation, peer, read_marker, unread_count, last_message_id, activity_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            user.tenant,
            user.user,
            conversation,
            peer,
            if read { message_id } else { 0 },
            i64::from(!read),
            message_id,
            sql_int(seq)
        ])
    })
    .map_err(backend)?;
    Ok(())
}
