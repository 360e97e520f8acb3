//! The rules of conversations that every backend applies alike, as pure functions: which
//! conversation a request names for its user, what a group creation or change may do and
//! which events it makes for whom, who inherits a group, where a read mark moves a marker,
//! and who has read a message.
//!
//! Nothing here does I/O. A backend reads the rows a rule needs inside its transaction, asks
//! the rule, and writes what the rule answers; a refusal comes before any write, so a refused
//! request stores nothing.
//!
//! This file: which conversation a request names and the refusals every rule shares.
//! `groups`: what a group creation or change may do, the events it makes for whom, and who
//! inherits a group. `reads`: where a read mark moves a marker, and who has read a message.
//! `messages`: what an edit, a delete or a reaction may do.

mod groups;
mod messages;
mod reads;

pub(crate) use groups::{
    Effect, GroupState, MemberRow, Step, check_creation, check_group_count, new_group_id,
    plan_change,
};
pub(crate) use messages::{
    MessageEffect, MessageRow, ReactionTally, check_request, deleted, plan_message_change,
};
pub(crate) use reads::{marker_moves, read_target, receipts, unread_target};

use peroxo_protocol::conversation::ConversationRef;
use peroxo_protocol::event::{Refusal, RefusalCode};

/// A conversation as one of its users names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A direct conversation: its id and the other participant (the user for a conversation
    /// with oneself).
    Direct {
        id: String,
        peer: String,
    },
    Group(String),
}

impl Target {
    pub(crate) fn id(&self) -> &str {
        match self {
            Target::Direct { id, .. } | Target::Group(id) => id,
        }
    }

    /// Everyone in a direct conversation, by user id (one for a conversation with oneself);
    /// `None` for a group, whose members only its rows tell.
    pub(crate) fn participants(&self) -> Option<Vec<String>> {
        let Target::Direct { id, .. } = self else {
            return None;
        };
        let mut users: Vec<String> = id.split(':').map(str::to_owned).collect();
        users.dedup();
        Some(users)
    }
}

/// The conversation `conversation_id` names for `user`: refused when it is no conversation
/// id, or a direct conversation of others.
pub(crate) fn target_of(user: &str, conversation_id: &str) -> Result<Target, Refusal> {
    let parsed = ConversationRef::parse(conversation_id)
        .map_err(|e| bad_request(format!("conversation_id {e}")))?;
    let peer = parsed.peer_of(user).map(str::to_owned);
    match (parsed, peer) {
        (ConversationRef::Group(id), _) => Ok(Target::Group(id)),
        (ConversationRef::Direct { .. }, Some(peer)) => Ok(Target::Direct {
            id: conversation_id.to_owned(),
            peer,
        }),
        (ConversationRef::Direct { .. }, None) => Err(bad_request(format!(
            "{user} is not a participant of {conversation_id}"
        ))),
    }
}

/// The group `conversation_id` names, for requests that only groups answer (changes,
/// members).
pub(crate) fn group_of(user: &str, conversation_id: &str) -> Result<String, Refusal> {
    match target_of(user, conversation_id)? {
        Target::Group(id) => Ok(id),
        Target::Direct { .. } => Err(bad_request("direct conversations have no members")),
    }
}

pub(crate) fn bad_request(message: impl Into<String>) -> Refusal {
    Refusal::new(RefusalCode::BadRequest, message)
}

pub(crate) fn unknown_conversation(conversation_id: &str) -> Refusal {
    Refusal::new(
        RefusalCode::UnknownConversation,
        format!("no conversation {conversation_id}"),
    )
}

pub(crate) fn not_a_member(user: &str, conversation_id: &str) -> Refusal {
    Refusal::new(
        RefusalCode::NotAMember,
        format!("{user} is not a member of {conversation_id}"),
    )
}

pub(super) fn not_allowed(message: impl Into<String>) -> Refusal {
    Refusal::new(RefusalCode::NotAllowed, message)
}

pub(crate) fn unknown_message(message_id: Option<u64>, conversation_id: &str) -> Refusal {
    let message = match message_id {
        Some(id) => format!("no message {id} in {conversation_id}"),
        None => format!("no message from others to mark unread in {conversation_id}"),
    };
    Refusal::new(RefusalCode::UnknownMessage, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = "g~0123456789abcdef01234567";

    #[test]
    fn a_direct_conversation_must_name_its_user() {
        assert_eq!(
            target_of("bob", "alice:bob"),
            Ok(Target::Direct {
                id: "alice:bob".into(),
                peer: "alice".into()
            })
        );
        assert_eq!(
            target_of("carol", "alice:bob").unwrap_err().code,
            RefusalCode::BadRequest
        );
        assert_eq!(
            target_of("bob", "bob:alice").unwrap_err().code,
            RefusalCode::BadRequest
        );
        assert_eq!(target_of("bob", GROUP), Ok(Target::Group(GROUP.into())));
        let direct = group_of("bob", "alice:bob").unwrap_err();
        assert!(direct.message.contains("direct"), "{direct}");
    }

    #[test]
    fn a_direct_conversation_has_its_participants_a_group_its_rows() {
        let participants = |user, id| target_of(user, id).unwrap().participants();
        assert_eq!(
            participants("bob", "alice:bob"),
            Some(vec!["alice".to_owned(), "bob".to_owned()])
        );
        assert_eq!(participants("bob", "bob:bob"), Some(vec!["bob".to_owned()]));
        assert_eq!(participants("bob", GROUP), None);
    }
}
