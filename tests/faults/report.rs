//! What a simulated user reports at the end: every send and its ack or refusal, its stream
//! by seq (messages and events), its marks, what it read after the final sync, and anything a
//! correct server never does. The verdict judges these.

use std::collections::{BTreeMap, BTreeSet};

use peroxo_client::{EntryId, ErrorCode, EventView};
use peroxo_protocol::event::is_group_id;

use crate::final_reads::FinalReads;

/// One send, as its client knows it.
#[derive(Debug, Clone)]
pub(crate) struct SendRecord {
    pub(crate) client_msg_id: String,
    /// A user, or a group id.
    pub(crate) to: String,
    pub(crate) text: String,
    /// The message id and the sender's seq from its first ack.
    pub(crate) ack: Option<(String, u64)>,
    /// The highest seq of its stream the user had seen when it sent this.
    pub(crate) seen: u64,
    /// The code and text of its refusal for good, if it was refused.
    pub(crate) refused: Option<(ErrorCode, String)>,
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
    },
}

impl Entry {
    pub(crate) fn id(&self) -> EntryId {
        match self {
            Entry::Message { message_id, .. } => EntryId::Message(message_id.clone()),
            Entry::Event { event_id, .. } => EntryId::Event(event_id.clone()),
        }
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
        }
    }
}

/// What one client reports at the end.
#[derive(Debug)]
pub(crate) struct UserReport {
    pub(crate) user: String,
    /// The protocol version of its connections: 1 or 2.
    pub(crate) protocol: u32,
    pub(crate) sends: Vec<SendRecord>,
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
    /// The direct conversations with another user that the user ever marked unread (whose
    /// read markers may move without a receipt for the peer).
    pub(crate) marked_unread: BTreeSet<String>,
    /// What it read after the final sync (protocol 2; nothing for protocol 1).
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
