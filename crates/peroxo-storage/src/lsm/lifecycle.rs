//! Changing a committed message inside the writer's transaction: an edit, a delete (with the
//! unread counts and previews it changes), a reaction added or taken back. The rules decide
//! (see [`rules`](crate::rules)); this reads the rows they need and writes what they answer,
//! with the event in the stream of everyone who can see the message.
//!
//! A reaction is a row of `reactions` (tenant, message, emoji, user → the time it was added),
//! counted in the message's `reaction_count`; an edit is found again by its `client_msg_id`
//! through `event_dedupe`, which the edit's event fills.

use std::ops::Bound;

use super::keys::{KeyReader, corrupt};
use super::queries::{self, active_state};
use super::reads::visible_message;
use super::tables::{self, EventRow, MessageRow, Source, StateRow, Tables, key};
use super::writer::WriteTx;
use crate::rules::{self, MessageEffect, ReactionTally, Target};
use crate::{MAX_STORED_TEXT_BYTES, StoreError};
use peroxo_protocol::domain::{StoredMessage, UserKey};
use peroxo_protocol::event::Role;
use peroxo_protocol::lifecycle::{MessageChange, MessageOp, MessageOutcome};

/// Edits, deletes or reacts to a message (see `MessageStore::change_message`).
pub(super) fn change_message(
    w: &mut WriteTx<'_>,
    request: &MessageChange,
) -> Result<MessageOutcome, StoreError> {
    let actor = &request.actor;
    let tenant = &actor.tenant;
    let refused = StoreError::Refused;
    let target = rules::target_of(&actor.user, &request.conversation_id).map_err(refused)?;
    rules::check_request(&request.op, MAX_STORED_TEXT_BYTES).map_err(refused)?;
    // A resent edit is answered with what it edited before anything is checked again: its
    // author may have left the group since, like the author of a resent message.
    if let MessageOp::Edit { client_msg_id, .. } = &request.op
        && let Some(edited) = edited_before(&w.tx, w.t, actor, client_msg_id)?
    {
        return Ok(MessageOutcome {
            message: read_message(&w.tx, w.t, actor, edited)?,
            event: None,
            duplicate: true,
        });
    }
    let conversation = target.id();
    let state = active_state(&w.tx, w.t, actor, &target)?;
    let message_id = request.message_id;
    let Some(mut message) =
        visible_message(&w.tx, w.t, tenant, conversation, state.boundary, message_id)?
    else {
        return Err(refused(rules::unknown_message(
            Some(message_id),
            conversation,
        )));
    };
    let role = match &target {
        Target::Group(_) => state.role.as_deref().map(role_of).transpose()?,
        Target::Direct { .. } => None,
    };
    let tally = match &request.op {
        MessageOp::React { emoji } | MessageOp::Unreact { emoji } => {
            reaction_tally(&w.tx, w.t, tenant, &actor.user, message_id, emoji)?
        }
        _ => ReactionTally::default(),
    };
    let row = rules::MessageRow {
        id: message_id,
        sender: message.sender.clone(),
        text: message.text.clone(),
        ts: message.ts,
        deleted: message.deleted_ts.is_some(),
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
            message: as_seen_by(&w.tx, w.t, actor, message_id, message)?,
            event: None,
            duplicate: false,
        });
    };
    let audience = match target.participants() {
        Some(participants) => participants,
        None => members_who_see(w, tenant, conversation, message_id)?,
    };
    apply(w, actor, &effect, message_id, &mut message)?;
    if matches!(effect, MessageEffect::Delete) {
        forget_deleted(w, tenant, conversation, &row, &audience)?;
    }
    let kind = effect.event(message_id, moderated);
    let client_msg_id = match &request.op {
        MessageOp::Edit { client_msg_id, .. } => Some(client_msg_id.as_str()),
        _ => None,
    };
    let fanout = w.fan_out_with(
        tenant,
        conversation,
        &actor.user,
        kind,
        &audience,
        client_msg_id,
    )?;
    Ok(MessageOutcome {
        message: as_seen_by(&w.tx, w.t, actor, message_id, message)?,
        event: Some(fanout),
        duplicate: false,
    })
}

/// Message `id` as `viewer` sees it now (see [`as_seen_by`]).
fn read_message(
    r: &impl Source,
    t: &Tables,
    viewer: &UserKey,
    id: u64,
) -> Result<StoredMessage, StoreError> {
    let row = tables::get(r, &t.messages, &key::message(&viewer.tenant, id))?
        .ok_or_else(|| corrupt("an edit of a missing message"))?;
    as_seen_by(r, t, viewer, id, row)
}

/// Message `id` of `viewer`'s tenant, whose row is `row`, as `viewer` sees it, as history
/// reads it: a group message with the viewer's seq of it, its reactions counted for the
/// viewer.
fn as_seen_by(
    r: &impl Source,
    t: &Tables,
    viewer: &UserKey,
    id: u64,
    row: MessageRow,
) -> Result<StoredMessage, StoreError> {
    let tenant = &viewer.tenant;
    let mut message = queries::stored_message(r, t, tenant, id, row)?;
    if message.is_group() {
        let entry = key::group_entry(tenant, id, &viewer.user);
        message.recipient_seq = tables::get_u64(r, &t.group_entries, &entry)?.unwrap_or(0);
    }
    queries::attach_reactions(r, t, &viewer.user, [&mut message])?;
    Ok(message)
}

/// The message `actor` edited with `client_msg_id` before, if it did.
fn edited_before(
    r: &impl Source,
    t: &Tables,
    actor: &UserKey,
    client_msg_id: &str,
) -> Result<Option<u64>, StoreError> {
    let dedupe = key::dedupe(&actor.tenant, &actor.user, client_msg_id);
    let Some(event_id) = tables::get_u64(r, &t.event_dedupe, &dedupe)? else {
        return Ok(None);
    };
    let event: EventRow = tables::get(r, &t.events, &key::event(&actor.tenant, event_id))?
        .ok_or_else(|| corrupt("an edit's key of a missing event"))?;
    let id = event
        .columns
        .message_id
        .ok_or_else(|| corrupt("an edit that names no message"))?;
    Ok(Some(id as u64))
}

/// A role as stored.
fn role_of(text: &str) -> Result<Role, StoreError> {
    Role::parse(text).ok_or_else(|| corrupt("a role it does not know"))
}

/// What a reaction of `user` with `emoji` to `message_id` would change.
fn reaction_tally(
    r: &impl Source,
    t: &Tables,
    tenant: &str,
    user: &str,
    message_id: u64,
    emoji: &str,
) -> Result<ReactionTally, StoreError> {
    let mut tally = ReactionTally::default();
    let mut last_emoji: Option<String> = None;
    // Keys are ordered by emoji, then user: a new emoji starts a new run.
    for (rest, _) in tables::scan(
        r,
        &t.reactions,
        &key::reactions_of(tenant, message_id),
        false,
        usize::MAX,
    )? {
        let mut k = KeyReader::new(&rest);
        let their_emoji = k.str()?;
        let who = k.str()?;
        if last_emoji.as_deref() != Some(their_emoji.as_str()) {
            tally.distinct += 1;
        }
        let same_emoji = their_emoji == emoji;
        tally.emoji_present |= same_emoji;
        if who == user {
            tally.mine += 1;
            tally.made |= same_emoji;
        }
        last_emoji = Some(their_emoji);
    }
    Ok(tally)
}

/// The members of `group` who can see its message `id`, by user id: those who joined before
/// it.
fn members_who_see(
    w: &mut WriteTx<'_>,
    tenant: &str,
    group: &str,
    id: u64,
) -> Result<Vec<String>, StoreError> {
    let members = w
        .group_members(tenant, group)?
        .ok_or_else(|| corrupt("a member's state of a missing group"))?;
    let mut audience = Vec::with_capacity(members.len());
    for member in members.iter() {
        let state: Option<StateRow> = w.get(&w.t.states, &key::state(tenant, member, group))?;
        if state.is_some_and(|s| s.boundary < id) {
            audience.push(member.clone());
        }
    }
    Ok(audience)
}

/// Writes `effect` to message `id`, whose row is `message` (changed in place).
fn apply(
    w: &mut WriteTx<'_>,
    actor: &UserKey,
    effect: &MessageEffect,
    id: u64,
    message: &mut MessageRow,
) -> Result<(), StoreError> {
    let tenant = &actor.tenant;
    match effect {
        MessageEffect::Edit { text } => {
            message.text.clone_from(text);
            message.edited_ts = Some(w.ts);
        }
        MessageEffect::Delete => {
            message.text.clear();
            message.deleted_by = Some(actor.user.clone());
            message.deleted_ts = Some(w.ts);
            message.reaction_count = 0;
            let prefix = key::reactions_of(tenant, id);
            for (rest, _) in tables::scan(&w.tx, &w.t.reactions, &prefix, false, usize::MAX)? {
                let mut full = prefix.clone();
                full.extend_from_slice(&rest);
                w.delete(&w.t.reactions, full);
            }
        }
        MessageEffect::React { emoji } => {
            let ts = u64::try_from(w.ts).unwrap_or(0);
            w.put_raw(
                &w.t.reactions,
                key::reaction(tenant, id, emoji, &actor.user),
                tables::encode_u64(ts).to_vec(),
            );
            message.reaction_count += 1;
        }
        MessageEffect::Unreact { emoji } => {
            w.delete(
                &w.t.reactions,
                key::reaction(tenant, id, emoji, &actor.user),
            );
            message.reaction_count = message.reaction_count.saturating_sub(1);
        }
    }
    w.put(&w.t.messages, key::message(tenant, id), message)
}

/// After `deleted` is deleted: it no longer counts as unread for anyone of `audience` who had
/// it unread, and whoever had it as preview sees the newest message before it that is not
/// deleted.
fn forget_deleted(
    w: &mut WriteTx<'_>,
    tenant: &str,
    conversation: &str,
    deleted: &rules::MessageRow,
    audience: &[String],
) -> Result<(), StoreError> {
    for user in audience {
        let user = UserKey::new(tenant, user);
        let Some(old) = w.state(&user, conversation)? else {
            continue;
        };
        let mut new = old.clone();
        if user.user != deleted.sender && old.read_marker < deleted.id && old.unread_count > 0 {
            new.unread_count -= 1;
        }
        if old.last_message_id == deleted.id {
            new.last_message_id =
                newest_before(&w.tx, w.t, tenant, conversation, old.boundary, deleted.id)?;
        }
        w.put_state(&user, conversation, Some(&old), &new)?;
    }
    Ok(())
}

/// The newest message of `conversation` past `boundary` and before `before` that is not
/// deleted (0 when there is none).
fn newest_before(
    r: &impl Source,
    t: &Tables,
    tenant: &str,
    conversation: &str,
    boundary: u64,
    before: u64,
) -> Result<u64, StoreError> {
    let prefix = key::conversation_prefix(tenant, conversation);
    let end = key::by_conversation(tenant, conversation, before);
    let (lower, upper) = (
        Bound::Included(prefix.as_slice()),
        Bound::Excluded(end.as_slice()),
    );
    let mut newest = 0;
    r.walk(&t.by_conversation, lower, upper, true, |key, _| {
        let id = KeyReader::new(key).skip(&prefix)?.u64()?;
        if id <= boundary {
            return Ok(false);
        }
        let row: Option<MessageRow> = tables::get(r, &t.messages, &key::message(tenant, id))?;
        if row.is_some_and(|m| m.deleted_ts.is_none()) {
            newest = id;
            return Ok(false);
        }
        Ok(true)
    })?;
    Ok(newest)
}
