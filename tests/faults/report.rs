//! What a simulated user reports at the end: every send and its ack or refusal, every change
//! it made to a message and how it ended, its stream by seq (messages and events), its marks,
//! what it read after the final sync, and anything a correct server never does. The verdict
//! judges these.

use std::collections::{BTreeMap, BTreeSet};

use peroxo_bench::contract::MessageChange;
use peroxo_client::{Change, Delivered, EntryId, ErrorCode, EventView};
use peroxo_protocol::event::is_group_id;

use crate::final_reads::FinalReads;

/// One send, as its client knows it.
#[derive(Debug, Clone)]
pub(crate) struct SendRecord {
    pub(crate) client_msg_id: String,
    /// A user, or a group id.
    pub(crate) to: String,
    pub(crate) text: String,
    /// Protocol 3: the message it replies to.
    pub(crate) reply_to: Option<u64>,
    /// The message id and the sender's seq from its first ack.
    pub(crate) ack: Option<(String, u64)>,
    /// The highest seq of its stream the user had seen when it sent this.
    pub(crate) seen: u64,
    /// The code and text of its refusal for good, if it was refused.
    pub(crate) refused: Option<(ErrorCode, String)>,
}

/// A change the user made to a message (protocol 3). A user makes one at a time, so its
/// changes are in the order the server carried them out.
#[derive(Debug, Clone)]
pub(crate) struct MessageOpRecord {
    pub(crate) conversation_id: String,
    pub(crate) message_id: u64,
    pub(crate) change: Change,
    pub(crate) outcome: OpOutcome,
}

/// How a change ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpOutcome {
    /// Answered with `message_state` (`duplicate`: an earlier attempt of the edit was
    /// committed): it took effect.
    Answered { duplicate: bool },
    /// Refused for good (`message_deleted`, `not_a_member`, …): it took no effect.
    Refused(ErrorCode),
    /// Never answered, or the client stopped: the verdict names it.
    Failed(String),
}

/// A mark refused `not_a_member`: the user had not yet seen that it was no longer in the
/// group.
#[derive(Debug, Clone)]
pub(crate) struct RefusedMark {
    pub(crate) conversation_id: String,
    /// The highest seq of its stream the user had seen when it made the mark.
    pub(crate) seen: u64,
}

/// One entry of a user's stream, as the client holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    Message {
        message_id: String,
        conversation_id: String,
        from: String,
        to: String,
        /// Its text as delivered (protocol 3: as it was when read, which a later edit or
        /// delete in the stream may change).
        text: String,
        /// Protocol 3: its copy says it was edited, or deleted, already.
        edited: bool,
        deleted: bool,
    },
    Event {
        event_id: String,
        /// `group_created`, `read_marker`, `read_receipt`, …
        kind: String,
        conversation_id: String,
        actor: String,
        /// The member concerned (`member_left`, `role_changed`).
        user: Option<String>,
        /// The members added (`members_added`).
        users: Vec<String>,
        /// The new role (`role_changed`).
        role: Option<String>,
        /// The title (`group_created`, `group_renamed`).
        title: Option<String>,
        /// The members at creation (`group_created`).
        member_count: Option<u32>,
        /// The marker (`read_marker`, `read_receipt`).
        message_id: Option<String>,
        /// The unread count after the mark (`read_marker`).
        unread_count: Option<u64>,
        /// The message's text now (`message_edited`).
        text: Option<String>,
        /// The reaction (`reaction_added`, `reaction_removed`).
        emoji: Option<String>,
    },
}

impl Entry {
    pub(crate) fn id(&self) -> EntryId {
        match self {
            Entry::Message { message_id, .. } => EntryId::Message(message_id.clone()),
            Entry::Event { event_id, .. } => EntryId::Event(event_id.clone()),
        }
    }

    /// The entry of a delivered message.
    pub(crate) fn of_message(message: &Delivered) -> Self {
        Entry::Message {
            message_id: message.message_id.clone(),
            conversation_id: message.conversation_id.clone(),
            from: message.from.clone(),
            to: message.to.clone(),
            text: message.text.clone(),
            edited: message.edited_ts.is_some(),
            deleted: message.deleted.is_some(),
        }
    }

    /// What an event of protocol 3 changes of its message, and the message's id; `None` for
    /// any other entry.
    pub(crate) fn message_change(&self) -> Option<(u64, MessageChange<'_>)> {
        let Entry::Event {
            kind,
            actor,
            message_id,
            text,
            emoji,
            ..
        } = self
        else {
            return None;
        };
        let id = message_id.as_deref()?.parse().ok()?;
        let change = match (kind.as_str(), emoji) {
            ("message_edited", _) => MessageChange::Edited {
                text: text.as_deref().unwrap_or_default(),
            },
            ("message_deleted", _) => MessageChange::Deleted,
            ("reaction_added", Some(emoji)) => MessageChange::ReactionAdded { actor, emoji },
            ("reaction_removed", Some(emoji)) => MessageChange::ReactionRemoved { actor, emoji },
            _ => return None,
        };
        Some((id, change))
    }

    /// The entry of a stream event as the server sent it.
    pub(crate) fn of_event(event: EventView<'static>) -> Self {
        Entry::Event {
            event_id: event.event_id,
            kind: event.event.into_owned(),
            conversation_id: event.conversation_id.into_owned(),
            actor: event.actor.into_owned(),
            user: event.user.map(|u| u.into_owned()),
            users: event
                .users
                .unwrap_or_default()
                .into_iter()
                .map(|u| u.into_owned())
                .collect(),
            role: event.role.map(|r| r.into_owned()),
            title: event.title.map(|t| t.into_owned()),
            member_count: event.member_count,
            message_id: event.message_id,
            unread_count: event.unread_count,
            text: event.text.map(|t| t.into_owned()),
            emoji: event.emoji.map(|e| e.into_owned()),
        }
    }
}

/// What one client reports at the end.
#[derive(Debug)]
pub(crate) struct UserReport {
    pub(crate) user: String,
    /// The protocol version of its connections: 1 or 3.
    pub(crate) protocol: u32,
    pub(crate) sends: Vec<SendRecord>,
    /// Its changes to messages (protocol 3), in the order it made them.
    pub(crate) changes: Vec<MessageOpRecord>,
    /// Group messages due while the user's stream did not show it in the group: not sent.
    pub(crate) skipped_sends: u64,
    /// The user's stream by seq, from live frames, acks and syncs.
    pub(crate) stream: BTreeMap<u64, Entry>,
    /// The user's seq according to the server's last `sync`.
    pub(crate) last_seq: u64,
    /// Messages from others first seen live, and first seen through `sync`.
    pub(crate) received_live: u64,
    pub(crate) received_by_sync: u64,
    /// Marks asked for, and answered with `read_state`.
    pub(crate) marks_requested: u64,
    pub(crate) marks_answered: u64,
    /// Marks refused `not_a_member`.
    pub(crate) refused_marks: Vec<RefusedMark>,
    /// The conversations of `mark_unread`s from the newest message of someone else refused
    /// `unknown_message`: the user had not seen yet that every such message was deleted.
    pub(crate) nothing_unread: Vec<String>,
    /// The direct conversations with another user that the user ever marked unread (whose
    /// read markers may move without a receipt for the peer).
    pub(crate) marked_unread: BTreeSet<String>,
    /// What it read after the final sync (its histories; and with protocol 2 or later its
    /// conversation list, its groups' members and some read receipts).
    pub(crate) reads: FinalReads,
    /// Error frames by code.
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) reconnects: u64,
    pub(crate) sync_hints: u64,
    /// Things a correct server never does (a seq naming two entries, a refused send or mark).
    pub(crate) violations: Vec<String>,
}

/// Whether `conversation_id` is a direct conversation between two different users.
pub(crate) fn is_direct_with_another(conversation_id: &str) -> bool {
    !is_group_id(conversation_id) && conversation_id.split_once(':').is_some_and(|(a, b)| a != b)
}
