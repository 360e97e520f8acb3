//! Requests and answers of conversations: group creation and changes, read marks, the
//! conversation list and read receipts, as the gateway asks storage for them.

use std::fmt;

use crate::domain::{StoredMessage, UserKey, validate_id};
use crate::event::{Fanout, GROUP_ID_PREFIX, GROUP_ID_RANDOM_LEN, Role, is_group_id};

/// A conversation id, checked and taken apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConversationRef {
    /// `a:b` with `a <= b` (the only spelling of a direct conversation).
    Direct {
        a: String,
        b: String,
    },
    Group(String),
}

impl ConversationRef {
    /// Checks a conversation id as a client sends it.
    pub fn parse(id: &str) -> Result<Self, String> {
        if is_group_id(id) {
            return Ok(Self::Group(id.to_owned()));
        }
        if id.starts_with(GROUP_ID_PREFIX) {
            return Err(format!(
                "is not a valid group id ({GROUP_ID_PREFIX} and {GROUP_ID_RANDOM_LEN} lowercase hex digits)"
            ));
        }
        let Some((a, b)) = id.split_once(':') else {
            return Err("must be a group id or a direct conversation id `user:user`".to_owned());
        };
        validate_id(a).map_err(|e| format!("names an invalid user: {e}"))?;
        validate_id(b).map_err(|e| format!("names an invalid user: {e}"))?;
        if a > b {
            return Err(format!(
                "is not a conversation id: a direct conversation is `{b}:{a}`"
            ));
        }
        Ok(Self::Direct {
            a: a.to_owned(),
            b: b.to_owned(),
        })
    }

    /// For a direct conversation that `user` takes part in, the other participant (`user`
    /// itself for a conversation with oneself). `None` for groups and for direct
    /// conversations of others.
    pub fn peer_of(&self, user: &str) -> Option<&str> {
        match self {
            Self::Direct { a, b } if a == user => Some(b),
            Self::Direct { a, b } if b == user => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for ConversationRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct { a, b } => write!(f, "{a}:{b}"),
            Self::Group(id) => f.write_str(id),
        }
    }
}

/// Creates a group (idempotent per (tenant, creator, client_msg_id), like a send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateGroup {
    pub creator: UserKey,
    pub client_msg_id: String,
    pub title: String,
    /// The other initial members (the creator is always a member, as owner). Duplicates and
    /// the creator's own id are ignored.
    pub members: Vec<String>,
    pub limits: GroupLimits,
}

/// The limits a group change is checked against, from `[groups]` in the gateway's config
/// (the storage service caps them at [`MAX_GROUP_MEMBERS`](crate::event::MAX_GROUP_MEMBERS) and
/// [`MAX_TITLE_BYTES`](crate::event::MAX_TITLE_BYTES)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    pub max_members: u32,
    pub max_groups_per_user: u32,
    pub max_title_bytes: u32,
}

/// A change to an existing group by one of its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupChange {
    pub actor: UserKey,
    pub conversation_id: String,
    pub op: GroupOp,
    pub limits: GroupLimits,
}

/// What a [`GroupChange`] does. Who may do it:
/// - `Rename`, `AddMembers`: owner and admins;
/// - `RemoveMember`: the owner removes anyone else; an admin removes members only;
/// - `Leave`: anyone (an owner's ownership passes to the longest-standing admin, else to the
///   longest-standing member);
/// - `SetRole`: the owner only, to make a member an admin or an admin a member, or to hand
///   ownership over (`Owner`: the actor becomes an admin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOp {
    Rename { title: String },
    AddMembers { users: Vec<String> },
    RemoveMember { user: String },
    Leave,
    SetRole { user: String, role: Role },
}

/// A committed group creation or change. `events` are the events it made, in commit order
/// (none when the change changed nothing, for example adding a user who is already a member,
/// or when `duplicate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOutcome {
    pub conversation_id: String,
    pub events: Vec<Fanout>,
    /// A `create_group` whose `client_msg_id` was seen before: the group is the original.
    pub duplicate: bool,
}

/// Moves a user's read marker of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMark {
    pub user: UserKey,
    pub conversation_id: String,
    pub kind: ReadMarkKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMarkKind {
    /// Everything up to and including `message_id` is read. The marker only moves forward:
    /// a message at or before the current marker changes nothing. A `message_id` past the
    /// conversation's newest message reads up to that message.
    Read { message_id: u64 },
    /// `message_id` and everything after it is unread (the marker may move back). Without a
    /// message id, the newest message from someone else becomes unread.
    Unread { message_id: Option<u64> },
}

/// A committed [`ReadMark`]: the marker and unread count after it. `marker` is `None` when
/// the marker did not move (no event was made); otherwise the `ReadMarker` event in the user's
/// stream, and, in a direct conversation with another user whose marker moved forward, the
/// `ReadReceipt` in the peer's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    pub message_id: u64,
    pub unread_count: u64,
    pub marker: Option<Fanout>,
    pub receipt: Option<Fanout>,
}

/// A page request for a user's conversation list, most recent activity first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationsQuery {
    pub user: UserKey,
    /// Only conversations whose `activity_seq` is smaller (a previous page's cursor).
    pub before: Option<u64>,
    pub limit: u32,
}

/// One entry of a conversation list, as one user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub conversation_id: String,
    pub kind: ConversationKind,
    /// The newest message the user can see, or `None` before the first.
    pub last_message: Option<StoredMessage>,
    /// Messages from others after the read marker.
    pub unread_count: u64,
    /// The newest message read (0: none).
    pub read_marker: u64,
    /// The user's seq of the newest message or membership event of the conversation: the
    /// list's order, and its cursor.
    pub activity_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversationKind {
    Direct {
        peer: String,
        /// How far the peer has read (its read marker): read ticks.
        peer_read_marker: u64,
    },
    Group {
        title: String,
        role: Role,
        member_count: u32,
    },
}

/// One page of a conversation list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConversationPage {
    pub conversations: Vec<ConversationSummary>,
    /// True when older conversations exist (ask with `before` = the last `activity_seq`).
    pub has_more: bool,
    /// The sum of the user's unread counts over all conversations.
    pub total_unread: u64,
    /// The user's current seq when the page was read: everything in it is as it was then.
    pub last_seq: u64,
}

/// One reader of a message, as `read_receipts` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub user: String,
    /// The reader's read marker (at or past the message).
    pub read_marker: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::GROUP_ID_PREFIX;

    #[test]
    fn group_ids_are_never_direct_ids() {
        let id = format!("{GROUP_ID_PREFIX}{}", "0123456789abcdef01234567");
        assert_eq!(ConversationRef::parse(&id), Ok(ConversationRef::Group(id)));
        assert!(ConversationRef::parse("g~abc").is_err());
    }

    #[test]
    fn direct_ids_must_be_spelled_sorted() {
        assert_eq!(
            ConversationRef::parse("alice:bob"),
            Ok(ConversationRef::Direct {
                a: "alice".to_owned(),
                b: "bob".to_owned()
            })
        );
        assert!(ConversationRef::parse("bob:alice").is_err());
        assert!(ConversationRef::parse("alice").is_err());
        assert!(ConversationRef::parse("a:b:c").is_err());
        assert!(ConversationRef::parse(":bob").is_err());
    }

    #[test]
    fn the_peer_of_a_direct_conversation() {
        let dm = ConversationRef::parse("alice:bob").unwrap();
        assert_eq!(dm.peer_of("alice"), Some("bob"));
        assert_eq!(dm.peer_of("bob"), Some("alice"));
        assert_eq!(dm.peer_of("carol"), None);
        let me = ConversationRef::parse("alice:alice").unwrap();
        assert_eq!(me.peer_of("alice"), Some("alice"));
    }
}
