//! Moving a read marker inside the writer's transaction: the new marker, the unread count
//! counted again, the `ReadMarker` event in the user's stream and, for a direct conversation
//! read further, the `ReadReceipt` in the peer's, and one `read.marker` outbox event for both.
//! The writer is the only writer, so no send can slip between the count and the commit.
//!
//! Also the reads that read marks, receipts, changes of messages and erasure share: the
//! messages of a conversation a user can see, and unread counts.

use std::ops::Bound;

use super::keys::{KeyReader, corrupt};
use super::queries::active_state;
use super::tables::{self, MessageRow, Source, StateRow, Tables, key};
use super::writer::WriteTx;
use crate::StoreError;
use crate::rules::{self, Target};
use peroxo_protocol::conversation::{ReadMark, ReadMarkKind, ReadOutcome, Receipt};
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::event::EventKind;

/// Moves a read marker (see `MessageStore::mark_read`).
pub(super) fn mark_read(
    w: &mut WriteTx<'_>,
    request: &ReadMark,
) -> Result<ReadOutcome, StoreError> {
    let user = &request.user;
    let target =
        rules::target_of(&user.user, &request.conversation_id).map_err(StoreError::Refused)?;
    let conversation = target.id();
    let current = active_state(&w.tx, w.t, user, &target)?;
    let tenant = &user.tenant;
    let (marker, forward) = match request.kind {
        ReadMarkKind::Read { message_id } => {
            let newest = newest_visible(&w.tx, w.t, tenant, conversation, current.boundary, None)?;
            (rules::read_target(message_id, newest.unwrap_or(0)), true)
        }
        ReadMarkKind::Unread { message_id } => {
            let first_unread = match message_id {
                Some(id) => {
                    visible_message(&w.tx, w.t, tenant, conversation, current.boundary, id)?
                        .map(|_| id)
                }
                None => newest_visible(
                    &w.tx,
                    w.t,
                    tenant,
                    conversation,
                    current.boundary,
                    Some(&user.user),
                )?,
            };
            let marker = rules::unread_target(first_unread, message_id, conversation)
                .map_err(StoreError::Refused)?;
            (marker, false)
        }
    };
    if !rules::marker_moves(current.read_marker, marker, forward) {
        return Ok(ReadOutcome {
            message_id: current.read_marker,
            unread_count: current.unread_count,
            marker: None,
            receipt: None,
        });
    }
    let unread_count = count_unread(
        &w.tx,
        w.t,
        tenant,
        &user.user,
        conversation,
        marker.max(current.boundary),
    )?;
    let new = StateRow {
        read_marker: marker,
        unread_count,
        ..current.clone()
    };
    w.put_state(user, conversation, Some(&current), &new)?;
    let own = EventKind::ReadMarker {
        message_id: marker,
        unread_count,
    };
    let audience = [user.user.clone()];
    let marker_event = w.fan_out(tenant, conversation, &user.user, own, &audience)?;
    let receipt = match &target {
        Target::Direct { peer, .. } if forward && *peer != user.user => {
            let receipt = EventKind::ReadReceipt { message_id: marker };
            let audience = [peer.clone()];
            Some(w.fan_out(tenant, conversation, &user.user, receipt, &audience)?)
        }
        _ => None,
    };
    w.record(tenant, |payloads| {
        let receipt_to = receipt.as_ref().and_then(|r| r.seqs.first());
        payloads.read_marker(&marker_event.event, receipt_to.map(|to| to.user.as_str()))
    })?;
    Ok(ReadOutcome {
        message_id: marker,
        unread_count,
        marker: Some(marker_event),
        receipt,
    })
}

/// Who has read a message (see `MessageStore::read_receipts`).
pub(super) fn read_receipts(
    r: &impl Source,
    t: &Tables,
    user: &UserKey,
    conversation_id: &str,
    message_id: u64,
) -> Result<Vec<Receipt>, StoreError> {
    let target = rules::target_of(&user.user, conversation_id).map_err(StoreError::Refused)?;
    let conversation = target.id();
    let tenant = &user.tenant;
    let boundary = active_state(r, t, user, &target)?.boundary;
    let Some(message) = visible_message(r, t, tenant, conversation, boundary, message_id)? else {
        return Err(StoreError::Refused(rules::unknown_message(
            Some(message_id),
            conversation,
        )));
    };
    let readers: Vec<String> = match &target {
        Target::Group(group) => super::writer::member_rows(r, t, tenant, group)?
            .into_iter()
            .map(|(member, _)| member)
            .collect(),
        Target::Direct { peer, .. } => vec![user.user.clone(), peer.clone()],
    };
    let mut markers = Vec::with_capacity(readers.len());
    for reader in readers {
        let state: Option<StateRow> =
            tables::get(r, &t.states, &key::state(tenant, &reader, conversation))?;
        if let Some(state) = state.filter(|s| s.active) {
            markers.push((reader, state.read_marker));
        }
    }
    Ok(rules::receipts(&message.sender, message_id, markers))
}

/// Message `message_id` when it is a message of `conversation` visible past `boundary`.
pub(super) fn visible_message(
    r: &impl Source,
    t: &Tables,
    tenant: &str,
    conversation: &str,
    boundary: u64,
    message_id: u64,
) -> Result<Option<MessageRow>, StoreError> {
    if message_id <= boundary {
        return Ok(None);
    }
    let row: Option<MessageRow> = tables::get(r, &t.messages, &key::message(tenant, message_id))?;
    Ok(row.filter(|m| m.conversation == conversation))
}

/// The id of the newest message of `conversation` past `boundary` (only from others than
/// `from_others_than`, and not deleted, when given).
pub(super) fn newest_visible(
    r: &impl Source,
    t: &Tables,
    tenant: &str,
    conversation: &str,
    boundary: u64,
    from_others_than: Option<&str>,
) -> Result<Option<u64>, StoreError> {
    let prefix = key::conversation_prefix(tenant, conversation);
    let mut newest = None;
    r.walk_prefix(&t.by_conversation, &prefix, true, |key, _| {
        let id = id_in_conversation(key, &prefix)?;
        if id <= boundary {
            return Ok(false);
        }
        if let Some(user) = from_others_than {
            let message = message(r, t, tenant, id)?;
            if message.sender == user || message.deleted_ts.is_some() {
                return Ok(true);
            }
        }
        newest = Some(id);
        Ok(false)
    })?;
    Ok(newest)
}

/// The messages of `conversation` from others than `user` after `after`, deleted ones aside:
/// the unread count of a marker at `after`.
pub(super) fn count_unread(
    r: &impl Source,
    t: &Tables,
    tenant: &str,
    user: &str,
    conversation: &str,
    after: u64,
) -> Result<u64, StoreError> {
    let Some(first) = after.checked_add(1) else {
        return Ok(0);
    };
    let prefix = key::conversation_prefix(tenant, conversation);
    let start = key::by_conversation(tenant, conversation, first);
    let mut count = 0;
    r.walk(
        &t.by_conversation,
        Bound::Included(&start),
        Bound::Unbounded,
        false,
        |key, _| {
            if !key.starts_with(&prefix) {
                return Ok(false);
            }
            let message = message(r, t, tenant, id_in_conversation(key, &prefix)?)?;
            if message.sender != user && message.deleted_ts.is_none() {
                count += 1;
            }
            Ok(true)
        },
    )?;
    Ok(count)
}

/// Message `id`, which a conversation's history names.
fn message(r: &impl Source, t: &Tables, tenant: &str, id: u64) -> Result<MessageRow, StoreError> {
    tables::get(r, &t.messages, &key::message(tenant, id))?
        .ok_or_else(|| corrupt("a conversation's entry of a missing message"))
}

/// The message id of a `by_conversation` key that starts with `prefix`.
fn id_in_conversation(key: &[u8], prefix: &[u8]) -> Result<u64, StoreError> {
    KeyReader::new(key).skip(prefix)?.u64()
}
