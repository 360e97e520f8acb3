//! Appending one message inside the writer's transaction: a direct message (its two stream
//! entries and its participants' conversation states) or a group message (one stream entry
//! and one state update per member), each with its `message.created` outbox event.
//!
//! A message writes its row in `messages`, its dedupe key (which makes a resend find the
//! original with one point read), its place in its conversation's history
//! (`by_conversation`), its stream entries, and the conversation states of everyone whose
//! stream it enters.

use serde::Serialize;

use super::queries;
use super::tables::{self, MessageRow, StateRow, key};
use super::writer::{Entry, WriteTx};
use crate::rules;
use crate::seq_assignment::{MessageSeqs, next_seqs, stream_entries};
use crate::{MAX_STORED_TEXT_BYTES, StoreError};
use peroxo_protocol::domain::{
    AppendOutcome, NewMessage, Quote, StoredMessage, UserKey, conversation_id,
};
use peroxo_protocol::event::{Refusal, RefusalCode, StreamSeq, is_group_id};

/// Stores `message` inside the writer's transaction (see `MessageStore::append`): rejects it
/// when invalid, answers it with the original when it was sent before, and otherwise stores
/// it with the next seqs of the users whose streams it enters. Also says how many stream
/// entries it wrote.
pub(super) fn append_one(
    w: &mut WriteTx<'_>,
    message: &NewMessage,
) -> Result<(AppendOutcome, usize), StoreError> {
    if let Err(reason) = message.validate(MAX_STORED_TEXT_BYTES) {
        let refusal = Refusal::new(RefusalCode::BadRequest, reason);
        return Ok((AppendOutcome::Rejected(refusal), 0));
    }
    // A resend is answered with the original, even if what it quotes is deleted since or its
    // sender has left the group since.
    let dedupe = key::dedupe(&message.tenant, &message.sender, &message.client_msg_id);
    if let Some(id) = tables::get_u64(&w.tx, &w.t.dedupe, &dedupe)? {
        return duplicate(w, message, id);
    }
    if is_group_id(&message.recipient) {
        append_to_group(w, message, dedupe)
    } else {
        append_direct(w, message, dedupe)
    }
}

/// The answer to a resent `message`: its original, message `id`, as it is now, seen by its
/// sender.
fn duplicate(
    w: &WriteTx<'_>,
    message: &NewMessage,
    id: u64,
) -> Result<(AppendOutcome, usize), StoreError> {
    let mut original = queries::message(&w.tx, w.t, &message.tenant, id)?.ok_or_else(|| {
        StoreError::Backend("the lsm database holds a dedupe key without its message".to_owned())
    })?;
    queries::attach_reactions(&w.tx, w.t, &message.sender, [&mut original])?;
    let outcome = AppendOutcome::Stored {
        message: original,
        duplicate: true,
        members: Vec::new(),
    };
    Ok((outcome, 0))
}

fn append_direct(
    w: &mut WriteTx<'_>,
    message: &NewMessage,
    dedupe: Vec<u8>,
) -> Result<(AppendOutcome, usize), StoreError> {
    let conversation = conversation_id(&message.sender, &message.recipient);
    let quote = match quote_of(w, message, &conversation, 0)? {
        Ok(quote) => quote,
        Err(refusal) => return Ok((AppendOutcome::Rejected(refusal), 0)),
    };
    let sender = UserKey::new(message.tenant.clone(), message.sender.clone());
    let recipient = sender.peer(message.recipient.clone());
    let assigned = next_seqs(&sender, &recipient, |user| w.current_seq(user))?;
    let message_id = w.next_message_id();
    let mut stored = assigned.stored(message, message_id, w.ts);
    stored.lifecycle.reply_to = quote.map(Box::new);
    write_message(w, &stored, &conversation, dedupe)?;
    let mut rows = 0;
    for (user, seq) in stream_entries(&sender, &recipient, assigned) {
        w.enter_at(user, seq, Entry::DirectMessage(message_id))?;
        record_message(w, &stored, &conversation, user, seq, None)?;
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
    dedupe: Vec<u8>,
) -> Result<(AppendOutcome, usize), StoreError> {
    let (tenant, group) = (&message.tenant, &message.recipient);
    let refuse = |refusal| Ok((AppendOutcome::Rejected(refusal), 0));
    let Some(members) = w.group_members(tenant, group)? else {
        return refuse(rules::unknown_conversation(group));
    };
    if members.binary_search(&message.sender).is_err() {
        return refuse(rules::not_a_member(&message.sender, group));
    }
    let sender = UserKey::new(tenant.clone(), message.sender.clone());
    // A reply reads the sender's state (its boundary) first; the update below reuses it.
    let mut sender_state = None;
    let quote = match message.reply_to {
        None => None,
        Some(_) => {
            // The sender is a member: its state is there and active.
            let Some(state) = w.state(&sender, group)?.filter(|s| s.active) else {
                return refuse(rules::not_a_member(&message.sender, group));
            };
            let quote = match quote_of(w, message, group, state.boundary)? {
                Ok(quote) => quote,
                Err(refusal) => return refuse(refusal),
            };
            sender_state = Some(state);
            quote
        }
    };
    let sender_seq = w.current_seq(&sender)? + 1;
    let assigned = MessageSeqs {
        sender: sender_seq,
        recipient: 0,
    };
    let message_id = w.next_message_id();
    let mut stored = assigned.stored(message, message_id, w.ts);
    stored.lifecycle.reply_to = quote.map(Box::new);
    write_message(w, &stored, group, dedupe)?;
    let mut others = Vec::with_capacity(members.len() - 1);
    for member in members.iter() {
        let (owner, seq, known) = if *member == message.sender {
            (sender.clone(), sender_seq, sender_state.take())
        } else {
            let owner = sender.peer(member.clone());
            let seq = w.current_seq(&owner)? + 1;
            others.push(StreamSeq {
                user: member.clone(),
                seq,
            });
            (owner, seq, None)
        };
        w.enter_at(&owner, seq, Entry::GroupMessage(message_id))?;
        record_message(w, &stored, group, &owner, seq, known)?;
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

/// A message row as it is written: [`MessageRow`] with its strings borrowed from the stored
/// message (the same fields in the same order, so it encodes as one).
#[derive(Serialize)]
struct NewMessageRow<'a> {
    sender: &'a str,
    recipient: &'a str,
    conversation: &'a str,
    client_msg_id: &'a str,
    text: &'a str,
    ts: i64,
    sender_seq: u64,
    recipient_seq: u64,
    reply_to: Option<u64>,
    edited_ts: Option<i64>,
    deleted_by: Option<&'a str>,
    deleted_ts: Option<i64>,
    reaction_count: u64,
}

/// Writes `stored`, a fresh message of `conversation`: its row, its dedupe key and its place
/// in the conversation's history.
fn write_message(
    w: &mut WriteTx<'_>,
    stored: &StoredMessage,
    conversation: &str,
    dedupe: Vec<u8>,
) -> Result<(), StoreError> {
    let (tenant, id) = (stored.tenant.as_str(), stored.message_id);
    let row = NewMessageRow {
        sender: &stored.sender,
        recipient: &stored.recipient,
        conversation,
        client_msg_id: &stored.client_msg_id,
        text: &stored.text,
        ts: stored.ts,
        sender_seq: stored.sender_seq,
        recipient_seq: stored.recipient_seq,
        reply_to: stored.lifecycle.reply_to.as_ref().map(|q| q.message_id),
        edited_ts: None,
        deleted_by: None,
        deleted_ts: None,
        reaction_count: 0,
    };
    w.put(&w.t.messages, key::message(tenant, id), &row)?;
    w.put_raw(&w.t.dedupe, dedupe, tables::encode_u64(id).to_vec());
    w.put_raw(
        &w.t.by_conversation,
        key::by_conversation(tenant, conversation, id),
        Vec::new(),
    );
    Ok(())
}

/// The quote of the message `message` replies to, if it names one: refused unless that
/// message is in `conversation`, past `boundary` (what the sender can see of a group), and
/// not deleted.
fn quote_of(
    w: &WriteTx<'_>,
    message: &NewMessage,
    conversation: &str,
    boundary: u64,
) -> Result<Result<Option<Quote>, Refusal>, StoreError> {
    let Some(reply_to) = message.reply_to else {
        return Ok(Ok(None));
    };
    let found = if reply_to > boundary {
        w.get::<MessageRow>(&w.t.messages, &key::message(&message.tenant, reply_to))?
            .filter(|row| row.conversation == conversation)
    } else {
        None
    };
    Ok(match found {
        None => Err(rules::unknown_message(Some(reply_to), conversation)),
        Some(row) if row.deleted_ts.is_some() => Err(rules::deleted(reply_to)),
        Some(row) => Ok(Some(Quote {
            message_id: reply_to,
            sender: row.sender,
            excerpt: queries::excerpt(row.text),
            deleted: false,
        })),
    })
}

/// Updates `user`'s state of `conversation` for `stored`, which took `seq` in the user's
/// stream: it is the preview and the activity; its sender has read it (without an event: the
/// message in the sender's stream says so), anyone else has one more unread. `known` is the
/// state when the caller has read it already. A group member's state always exists; a direct
/// conversation's is made by its first message.
fn record_message(
    w: &mut WriteTx<'_>,
    stored: &StoredMessage,
    conversation: &str,
    user: &UserKey,
    seq: u64,
    known: Option<StateRow>,
) -> Result<(), StoreError> {
    let old = match known {
        Some(state) => Some(state),
        None => w.state(user, conversation)?,
    };
    let read = stored.sender == user.user;
    let id = stored.message_id;
    let new = match &old {
        Some(old) => {
            let mut new = old.clone();
            if read {
                new.read_marker = id;
                new.unread_count = 0;
            } else {
                new.unread_count += 1;
            }
            new.last_message_id = id;
            new.activity_seq = seq;
            new
        }
        None if stored.is_group() => {
            return Err(StoreError::Backend(format!(
                "member {} of {conversation} has no conversation state",
                user.user
            )));
        }
        None => StateRow {
            peer: Some(if read {
                stored.recipient.clone()
            } else {
                stored.sender.clone()
            }),
            read_marker: if read { id } else { 0 },
            unread_count: u64::from(!read),
            last_message_id: id,
            activity_seq: seq,
            active: true,
            ..StateRow::default()
        },
    };
    w.put_state(user, conversation, old.as_ref(), &new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_message_row_reads_back_as_a_message_row() {
        let written = NewMessageRow {
            sender: "alice",
            recipient: "bob",
            conversation: "alice:bob",
            client_msg_id: "c1",
            text: "hi",
            ts: 1_000,
            sender_seq: 3,
            recipient_seq: 7,
            reply_to: Some(2),
            edited_ts: None,
            deleted_by: None,
            deleted_ts: None,
            reaction_count: 0,
        };
        let read: MessageRow = tables::decode(&tables::encode(&written).unwrap()).unwrap();
        assert_eq!(
            read,
            MessageRow {
                sender: "alice".into(),
                recipient: "bob".into(),
                conversation: "alice:bob".into(),
                client_msg_id: "c1".into(),
                text: "hi".into(),
                ts: 1_000,
                sender_seq: 3,
                recipient_seq: 7,
                reply_to: Some(2),
                edited_ts: None,
                deleted_by: None,
                deleted_ts: None,
                reaction_count: 0,
            }
        );
    }
}
