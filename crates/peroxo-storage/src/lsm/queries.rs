//! The reads, each over one snapshot: history, sync, a user's current seq, the conversation
//! list; and how a stored message is read back (its quote, its reactions as a viewer sees
//! them), which the writes that answer with a message share.

use std::ops::Bound;

use super::keys::{Key, KeyReader, corrupt};
use super::tables::{self, Entry, EventRow, GroupRow, MessageRow, Source, StateRow, Tables, key};
use crate::rules::{self, Target};
use crate::sql::{
    LifecycleColumns, StreamEntry, has_pending_reactions, history_page, reaction_counts, sql_int,
    stream_page, with_floor,
};
use crate::{HistoryQuery, StoreError, SyncQuery, SyncScope};
use peroxo_protocol::conversation::{
    ConversationKind, ConversationPage, ConversationSummary, ConversationsQuery,
};
use peroxo_protocol::domain::{HistoryPage, QUOTE_EXCERPT_CHARS, StoredMessage, SyncPage, UserKey};
use peroxo_protocol::event::{Event, Role, StreamEvent};

fn refused(refusal: peroxo_protocol::event::Refusal) -> StoreError {
    StoreError::Refused(refusal)
}

/// The user's current seq: the highest of its stream, or of what retention pruned of it (0
/// when it has none).
pub(super) fn last_seq(r: &impl Source, t: &Tables, user: &UserKey) -> Result<u64, StoreError> {
    Ok(top_seq(r, t, user)?.max(stream_floor(r, t, user)?))
}

/// The highest seq of the user's stream that is still there (0 when none).
fn top_seq(r: &impl Source, t: &Tables, user: &UserKey) -> Result<u64, StoreError> {
    let prefix = key::user(&user.tenant, &user.user);
    match tables::scan(r, &t.inbox, &prefix, true, 1)?.first() {
        Some((rest, _)) => KeyReader::new(rest).u64(),
        None => Ok(0),
    }
}

/// The highest seq of the user's stream that retention deleted (0 when none).
pub(super) fn stream_floor(r: &impl Source, t: &Tables, user: &UserKey) -> Result<u64, StoreError> {
    Ok(tables::get_u64(r, &t.floors, &key::user(&user.tenant, &user.user))?.unwrap_or(0))
}

/// The first [`QUOTE_EXCERPT_CHARS`] characters of `text`.
pub(super) fn excerpt(mut text: String) -> String {
    if let Some((end, _)) = text.char_indices().nth(QUOTE_EXCERPT_CHARS) {
        text.truncate(end);
    }
    text
}

/// Message `id` of `tenant` as it is now (with its quote as it is now; reactions still the
/// placeholder [`attach_reactions`] replaces), or `None` when there is none.
pub(super) fn message(
    r: &impl Source,
    t: &Tables,
    tenant: &str,
    id: u64,
) -> Result<Option<StoredMessage>, StoreError> {
    match tables::get::<MessageRow>(r, &t.messages, &key::message(tenant, id))? {
        Some(row) => stored_message(r, t, tenant, id, row).map(Some),
        None => Ok(None),
    }
}

/// Message `id` of `tenant`, which a stream entry or an index points at: its absence is the
/// database's fault.
fn message_at(
    r: &impl Source,
    t: &Tables,
    tenant: &str,
    id: u64,
) -> Result<StoredMessage, StoreError> {
    message(r, t, tenant, id)?.ok_or_else(|| corrupt("an entry pointing at no message"))
}

/// The message `row` (message `id` of `tenant`) as read back, with the message it replies to
/// as it is now (deleted when retention deleted it).
pub(super) fn stored_message(
    r: &impl Source,
    t: &Tables,
    tenant: &str,
    id: u64,
    row: MessageRow,
) -> Result<StoredMessage, StoreError> {
    let quoted = match row.reply_to {
        Some(quoted) => tables::get::<MessageRow>(r, &t.messages, &key::message(tenant, quoted))?,
        None => None,
    };
    let (quote_sender, quote_excerpt, quote_deleted_ts) = match quoted {
        Some(q) => (Some(q.sender), Some(excerpt(q.text)), q.deleted_ts),
        None => (None, None, None),
    };
    let lifecycle = LifecycleColumns {
        reply_to: row.reply_to.map(sql_int),
        edited_ts: row.edited_ts,
        deleted_by: row.deleted_by,
        deleted_ts: row.deleted_ts,
        reaction_count: sql_int(row.reaction_count),
        quote_sender,
        quote_excerpt,
        quote_deleted_ts,
    }
    .lifecycle();
    Ok(StoredMessage {
        message_id: id,
        tenant: tenant.to_owned(),
        sender: row.sender,
        recipient: row.recipient,
        client_msg_id: row.client_msg_id,
        text: row.text,
        ts: row.ts,
        sender_seq: row.sender_seq,
        recipient_seq: row.recipient_seq,
        lifecycle,
    })
}

/// Replaces the reaction placeholders of `messages` with their reactions as `viewer` sees
/// them.
pub(super) fn attach_reactions<'m>(
    r: &impl Source,
    t: &Tables,
    viewer: &str,
    messages: impl IntoIterator<Item = &'m mut StoredMessage>,
) -> Result<(), StoreError> {
    for message in messages {
        if !has_pending_reactions(message) {
            continue;
        }
        let prefix = key::reactions_of(&message.tenant, message.message_id);
        let mut rows = Vec::new();
        for (rest, value) in tables::scan(r, &t.reactions, &prefix, false, usize::MAX)? {
            let mut reader = KeyReader::new(&rest);
            let emoji = reader.str()?;
            let user = reader.str()?;
            let ts = tables::decode_u64(&value)? as i64;
            rows.push((emoji, user, ts));
        }
        message.lifecycle.reactions = reaction_counts(rows, viewer);
    }
    Ok(())
}

/// `user`'s active state of `target`, or the refusal of reading it: the group does not exist,
/// the user is not a member of it, the direct conversation has no message yet.
pub(super) fn active_state(
    r: &impl Source,
    t: &Tables,
    user: &UserKey,
    target: &Target,
) -> Result<StateRow, StoreError> {
    let id = target.id();
    if let Target::Group(group) = target
        && !tables::contains(r, &t.groups, &key::group(&user.tenant, group))?
    {
        return Err(refused(rules::unknown_conversation(id)));
    }
    let state = tables::get::<StateRow>(r, &t.states, &key::state(&user.tenant, &user.user, id))?
        .filter(|s| s.active);
    match (state, target) {
        (Some(state), _) => Ok(state),
        (None, Target::Direct { .. }) => Err(refused(rules::unknown_conversation(id))),
        (None, Target::Group(_)) => Err(refused(rules::not_a_member(&user.user, id))),
    }
}

/// One page of a conversation (see `MessageStore::history`): newest first from the
/// conversation's index, a group's only past the user's boundary, each group message with
/// the user's seq of it.
pub(super) fn history(
    r: &impl Source,
    t: &Tables,
    query: &HistoryQuery,
) -> Result<HistoryPage, StoreError> {
    let user = &query.user;
    let tenant = user.tenant.as_str();
    let target = rules::target_of(&user.user, &query.conversation_id).map_err(refused)?;
    let rows = query.limit as usize + 1;
    let prefix = key::conversation_prefix(tenant, target.id());
    // `u64::MAX` is no message id: below it is everything.
    let before = query.before.unwrap_or(u64::MAX);
    let end = key::by_conversation(tenant, target.id(), before);
    let upper = Bound::Excluded(end.as_slice());
    let mut newest_first = Vec::new();
    match &target {
        Target::Direct { .. } => {
            let mut ids = Vec::with_capacity(rows.min(1024));
            let lower = Bound::Included(prefix.as_slice());
            r.walk(&t.by_conversation, lower, upper, true, |k, _| {
                ids.push(KeyReader::new(k).skip(&prefix)?.u64()?);
                Ok(ids.len() < rows)
            })?;
            for id in ids {
                newest_first.push(message_at(r, t, tenant, id)?);
            }
        }
        Target::Group(group) => {
            let boundary = active_state(r, t, user, &target)?.boundary;
            let mut ids = Vec::with_capacity(rows.min(1024));
            if before > boundary {
                // Messages up to the boundary are before the user joined.
                let start = key::by_conversation(tenant, group, boundary);
                let lower = Bound::Excluded(start.as_slice());
                r.walk(&t.by_conversation, lower, upper, true, |k, _| {
                    let id = KeyReader::new(k).skip(&prefix)?.u64()?;
                    // The user's seq of it; a message not in the user's stream is not shown.
                    let entry = key::group_entry(tenant, id, &user.user);
                    if let Some(seq) = tables::get_u64(r, &t.group_entries, &entry)? {
                        ids.push((id, seq));
                    }
                    Ok(ids.len() < rows)
                })?;
            }
            for (id, seq) in ids {
                let mut message = message_at(r, t, tenant, id)?;
                message.recipient_seq = seq;
                newest_first.push(message);
            }
        }
    }
    let last_seq = last_seq(r, t, user)?;
    let mut page = history_page(newest_first, query.limit, last_seq);
    attach_reactions(r, t, &user.user, &mut page.messages)?;
    Ok(page)
}

/// A user's stream after a seq (see `MessageStore::sync`): the entries the scope reads, each
/// resolved to its message (a group message with the user's seq of it) or its event (an
/// edit with the message's text as it is now).
pub(super) fn sync(r: &impl Source, t: &Tables, query: &SyncQuery) -> Result<SyncPage, StoreError> {
    let user = &query.user;
    let tenant = user.tenant.as_str();
    let floor = stream_floor(r, t, user)?;
    let last_seq = top_seq(r, t, user)?.max(floor);
    let wanted = |entry: &Entry| match query.scope {
        SyncScope::Everything => true,
        SyncScope::Conversations => !matches!(entry, Entry::LifecycleEvent(_)),
        SyncScope::DirectMessages => matches!(entry, Entry::DirectMessage(_)),
    };
    let rows = query.limit as usize + 1;
    let prefix = key::user(tenant, &user.user);
    let mut entries: Vec<(u64, Entry)> = Vec::with_capacity(rows.min(1024));
    if query.after_seq < u64::MAX {
        let (after, last) = (
            key::inbox(tenant, &user.user, query.after_seq),
            key::inbox(tenant, &user.user, u64::MAX),
        );
        let (lower, upper) = (
            Bound::Excluded(after.as_slice()),
            Bound::Included(last.as_slice()),
        );
        r.walk(&t.inbox, lower, upper, false, |k, v| {
            let seq = KeyReader::new(k).skip(&prefix)?.u64()?;
            let entry: Entry = tables::decode(v)?;
            if wanted(&entry) {
                entries.push((seq, entry));
            }
            Ok(entries.len() < rows)
        })?;
    }
    let mut resolved = Vec::with_capacity(entries.len());
    for (seq, entry) in entries {
        resolved.push(match entry {
            Entry::DirectMessage(id) => StreamEntry::Message(message_at(r, t, tenant, id)?),
            Entry::GroupMessage(id) => {
                let mut message = message_at(r, t, tenant, id)?;
                message.recipient_seq = seq;
                StreamEntry::Message(message)
            }
            Entry::Event(id) | Entry::LifecycleEvent(id) => StreamEntry::Event(StreamEvent {
                seq,
                event: event(r, t, tenant, id)?,
            }),
        });
    }
    let mut page = stream_page(resolved, query.limit, last_seq);
    attach_reactions(r, t, &user.user, &mut page.messages)?;
    Ok(with_floor(page, query.after_seq, floor))
}

/// Event `id` of `tenant`, which a stream entry points at; an edit carries the message's text
/// as it is now (none once retention deleted it).
fn event(r: &impl Source, t: &Tables, tenant: &str, id: u64) -> Result<Event, StoreError> {
    let row: EventRow = tables::get(r, &t.events, &key::event(tenant, id))?
        .ok_or_else(|| corrupt("an entry pointing at no event"))?;
    let mut columns = row.columns;
    if row.kind == "message_edited"
        && let Some(message_id) = columns.message_id.and_then(|id| u64::try_from(id).ok())
    {
        columns.text =
            tables::get::<MessageRow>(r, &t.messages, &key::message(tenant, message_id))?
                .map(|m| m.text);
    }
    let kind = columns
        .kind(&row.kind)
        .map_err(|e| StoreError::Backend(format!("the lsm database holds {e}")))?;
    Ok(Event {
        event_id: id,
        tenant: tenant.to_owned(),
        conversation_id: row.conversation,
        actor: row.actor,
        ts: row.ts,
        kind,
    })
}

/// One page of a user's conversation list (see `MessageStore::conversations`): the `list`
/// index from the most recent activity down, each entry with its preview, the peer's read
/// marker in a direct conversation, a group's title and member count, and the user's seq of
/// a group's last message.
pub(super) fn conversations(
    r: &impl Source,
    t: &Tables,
    query: &ConversationsQuery,
) -> Result<ConversationPage, StoreError> {
    let user = &query.user;
    let tenant = user.tenant.as_str();
    let prefix = key::user(tenant, &user.user);
    let mut total_unread = 0u64;
    for (_, value) in tables::scan(r, &t.states, &prefix, false, usize::MAX)? {
        let state: StateRow = tables::decode(&value)?;
        if state.active {
            total_unread += state.unread_count;
        }
    }
    let rows = query.limit as usize + 1;
    // No activity seq comes near `u64::MAX`: below it is everything.
    let before = query.before.unwrap_or(u64::MAX);
    let upper = Key::new()
        .str(tenant)
        .str(&user.user)
        .u64(before)
        .into_bytes();
    let mut listed = Vec::with_capacity(rows.min(256));
    let (lower, upper) = (
        Bound::Included(prefix.as_slice()),
        Bound::Excluded(upper.as_slice()),
    );
    r.walk(&t.list, lower, upper, true, |k, _| {
        let mut reader = KeyReader::new(k).skip(&prefix)?;
        reader.u64()?;
        listed.push(reader.str()?);
        Ok(listed.len() < rows)
    })?;
    let has_more = listed.len() > query.limit as usize;
    listed.truncate(query.limit as usize);
    let mut conversations = Vec::with_capacity(listed.len());
    for conversation in listed {
        conversations.push(summary(r, t, user, conversation)?);
    }
    let previews = conversations
        .iter_mut()
        .filter_map(|c| c.last_message.as_mut());
    attach_reactions(r, t, &user.user, previews)?;
    Ok(ConversationPage {
        conversations,
        has_more,
        total_unread,
        last_seq: last_seq(r, t, user)?,
    })
}

/// One entry of `user`'s conversation list, from the user's state of `conversation`.
fn summary(
    r: &impl Source,
    t: &Tables,
    user: &UserKey,
    conversation: String,
) -> Result<ConversationSummary, StoreError> {
    let tenant = user.tenant.as_str();
    let state: StateRow =
        tables::get(r, &t.states, &key::state(tenant, &user.user, &conversation))?
            .ok_or_else(|| corrupt("a listed conversation without its state"))?;
    let mut last_message = match state.last_message_id {
        0 => None,
        id => message(r, t, tenant, id)?,
    };
    if let Some(message) = &mut last_message
        && message.is_group()
        && let Some(seq) = tables::get_u64(
            r,
            &t.group_entries,
            &key::group_entry(tenant, message.message_id, &user.user),
        )?
    {
        message.recipient_seq = seq;
    }
    let kind = match (state.peer, state.role) {
        (Some(peer), _) => {
            let peer_read_marker =
                tables::get::<StateRow>(r, &t.states, &key::state(tenant, &peer, &conversation))?
                    .map_or(0, |p| p.read_marker);
            ConversationKind::Direct {
                peer,
                peer_read_marker,
            }
        }
        (None, role) => {
            let role = role.unwrap_or_default();
            let role = Role::parse(&role)
                .ok_or_else(|| StoreError::Backend(format!("a stored role {role:?}")))?;
            let group: GroupRow = tables::get(r, &t.groups, &key::group(tenant, &conversation))?
                .ok_or_else(|| corrupt("a member's state of no group"))?;
            ConversationKind::Group {
                title: group.title,
                role,
                member_count: u32::try_from(group.member_count).unwrap_or(u32::MAX),
            }
        }
    };
    Ok(ConversationSummary {
        conversation_id: conversation,
        kind,
        last_message,
        unread_count: state.unread_count,
        read_marker: state.read_marker,
        activity_seq: state.activity_seq,
    })
}
