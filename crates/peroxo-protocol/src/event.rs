//! The parts of conversations every other type builds on: group ids, roles, refusals and the
//! durable events of a user's stream other than messages.
//!
//! A conversation is a direct one (two users, or one user with themself; id `alice:bob`, see
//! `domain::conversation_id`) or a group (a server-made id that starts
//! with [`GROUP_ID_PREFIX`]; `~` is neither in the user id alphabet nor in a direct id, so the
//! two kinds never collide). Like `domain`, this module knows no JSON, and it depends on no other module of the crate.

use std::fmt;

/// What every group id starts with.
pub const GROUP_ID_PREFIX: &str = "g~";
/// The length of the random part of a group id (lowercase hex digits, made by storage).
pub const GROUP_ID_RANDOM_LEN: usize = 24;
/// The longest group title, in bytes, whatever the configuration says.
pub const MAX_TITLE_BYTES: usize = 256;
/// The most members any group may have, whatever `groups.max_members` says.
pub const MAX_GROUP_MEMBERS: u32 = 100_000;
/// The most users one `create_group` or `add_members` may name.
pub const MAX_USERS_PER_CHANGE: usize = 1_000;
/// The most conversations one `conversations` page may hold.
pub const MAX_CONVERSATIONS_LIMIT: u32 = 200;

/// Whether `id` has the shape of a group id (it may still name no group).
pub fn is_group_id(id: &str) -> bool {
    id.strip_prefix(GROUP_ID_PREFIX).is_some_and(|rest| {
        rest.len() == GROUP_ID_RANDOM_LEN
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Checks a group title: 1–`max_bytes` bytes after trimming, no control characters.
pub fn validate_title(title: &str, max_bytes: usize) -> Result<(), String> {
    let max_bytes = max_bytes.min(MAX_TITLE_BYTES);
    if title.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if title.len() > max_bytes {
        return Err(format!("must be at most {max_bytes} bytes"));
    }
    if title.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

/// A member's role in a group. Direct conversations have no roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Made the group (or inherited it); may do everything, including changing roles.
    Owner,
    /// May rename the group and add and remove members (not the owner, not other admins).
    Admin,
    Member,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Owner, Role::Admin, Role::Member];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == text)
    }

    /// Whether this role may rename the group and add or remove members.
    pub fn manages(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// A member of a group as `members` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user: String,
    pub role: Role,
    /// When the member joined, in milliseconds since the Unix epoch.
    pub joined_ts: i64,
}

/// Why storage refused a request. Nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// The reason of a [`Refusal`]; each is an `error` code on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    /// The request breaks a rule (an invalid id, an empty title, ...).
    BadRequest,
    /// The user is not a member of the conversation.
    NotAMember,
    /// The user's role does not allow this.
    NotAllowed,
    /// The group would exceed `groups.max_members`.
    GroupFull,
    /// No such conversation (or no such group).
    UnknownConversation,
    /// A user would be in more than `groups.max_groups_per_user` groups.
    TooManyGroups,
    /// No such message in this conversation.
    UnknownMessage,
    /// Only the message's author may do this (edit it; delete it, outside a group's owner and
    /// admins).
    NotAuthor,
    /// The message is older than `messages.edit_window`.
    EditWindowPassed,
    /// The message was deleted for everyone.
    MessageDeleted,
    /// A reaction past `messages.max_reactions_per_message` or
    /// `messages.max_reactions_per_user`.
    TooManyReactions,
}

impl RefusalCode {
    pub const ALL: [RefusalCode; 11] = [
        RefusalCode::BadRequest,
        RefusalCode::NotAMember,
        RefusalCode::NotAllowed,
        RefusalCode::GroupFull,
        RefusalCode::UnknownConversation,
        RefusalCode::TooManyGroups,
        RefusalCode::UnknownMessage,
        RefusalCode::NotAuthor,
        RefusalCode::EditWindowPassed,
        RefusalCode::MessageDeleted,
        RefusalCode::TooManyReactions,
    ];

    /// The code as the wire (and the storage service's protobuf) names it.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::BadRequest => "bad_request",
            RefusalCode::NotAMember => "not_a_member",
            RefusalCode::NotAllowed => "not_allowed",
            RefusalCode::GroupFull => "group_full",
            RefusalCode::UnknownConversation => "unknown_conversation",
            RefusalCode::TooManyGroups => "too_many_groups",
            RefusalCode::UnknownMessage => "unknown_message",
            RefusalCode::NotAuthor => "not_author",
            RefusalCode::EditWindowPassed => "edit_window_passed",
            RefusalCode::MessageDeleted => "message_deleted",
            RefusalCode::TooManyReactions => "too_many_reactions",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == text)
    }
}

/// A durable event of a conversation, other than a message. It enters the streams of the
/// users it concerns (see each kind), each at that user's next seq, in the transaction that
/// makes the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique per storage; orders events like message ids order messages.
    pub event_id: u64,
    pub tenant: String,
    pub conversation_id: String,
    /// Who made the change.
    pub actor: String,
    /// Commit time in milliseconds since the Unix epoch.
    pub ts: i64,
    pub kind: EventKind,
}

/// What an [`Event`] says, and whose streams it enters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `actor` created the group. Enters the stream of every initial member (creator
    /// included).
    GroupCreated { title: String, member_count: u32 },
    /// `actor` added `users` (as members), all at once. Enters the streams of every member
    /// after the change (the new members' included).
    MembersAdded { users: Vec<String> },
    /// `user` left (`actor == user`) or was removed by `actor`. Enters the streams of every
    /// member before the change (the departing member's included: it is the last event of
    /// the group in that stream).
    MemberLeft { user: String },
    /// `actor` gave `user` a new role (an owner leaving passes ownership on this way, with
    /// the leaver as actor). Enters every member's stream.
    RoleChanged { user: String, role: Role },
    /// `actor` renamed the group. Enters every member's stream.
    GroupRenamed { title: String },
    /// `actor` moved their own read marker of the conversation (`mark_read`, `mark_unread`).
    /// Enters `actor`'s stream only, so that every device of the user converges.
    ReadMarker {
        /// The newest message read (0: none).
        message_id: u64,
        /// The user's unread count of the conversation after the change.
        unread_count: u64,
    },
    /// In a direct conversation, `actor` read up to `message_id`. Enters the stream of the
    /// other participant only (a durable read receipt).
    ReadReceipt { message_id: u64 },
    /// `actor`, its author, edited `message_id`; `text` is the message's text as it is now
    /// (what this edit made of it, or less when a later edit or delete changed it since).
    /// Enters the stream of every participant who can see the message (protocol 3).
    MessageEdited { message_id: u64, text: String },
    /// `actor` deleted `message_id` for everyone; `moderated` when `actor` is not its author
    /// (a group's owner or admin). Enters the streams of every participant who can see it.
    MessageDeleted { message_id: u64, moderated: bool },
    /// `actor` reacted to `message_id` with `emoji`. Enters the streams of every participant
    /// who can see the message.
    ReactionAdded { message_id: u64, emoji: String },
    /// `actor` took back its reaction `emoji` to `message_id`. Same streams.
    ReactionRemoved { message_id: u64, emoji: String },
}

impl EventKind {
    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::GroupCreated { .. } => "group_created",
            EventKind::MembersAdded { .. } => "members_added",
            EventKind::MemberLeft { .. } => "member_left",
            EventKind::RoleChanged { .. } => "role_changed",
            EventKind::GroupRenamed { .. } => "group_renamed",
            EventKind::ReadMarker { .. } => "read_marker",
            EventKind::ReadReceipt { .. } => "read_receipt",
            EventKind::MessageEdited { .. } => "message_edited",
            EventKind::MessageDeleted { .. } => "message_deleted",
            EventKind::ReactionAdded { .. } => "reaction_added",
            EventKind::ReactionRemoved { .. } => "reaction_removed",
        }
    }

    /// Whether the event changes a message (an edit, a delete, a reaction): only protocol 3
    /// knows these events.
    pub fn is_lifecycle(&self) -> bool {
        matches!(
            self,
            EventKind::MessageEdited { .. }
                | EventKind::MessageDeleted { .. }
                | EventKind::ReactionAdded { .. }
                | EventKind::ReactionRemoved { .. }
        )
    }

    /// The message the event is about, for an event that changes one.
    pub fn changed_message(&self) -> Option<u64> {
        match self {
            EventKind::MessageEdited { message_id, .. }
            | EventKind::MessageDeleted { message_id, .. }
            | EventKind::ReactionAdded { message_id, .. }
            | EventKind::ReactionRemoved { message_id, .. } => Some(*message_id),
            _ => None,
        }
    }
}

/// One user's seq for something that entered several streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSeq {
    pub user: String,
    pub seq: u64,
}

/// An event as committed, with the seq it took in every stream it entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fanout {
    pub event: Event,
    pub seqs: Vec<StreamSeq>,
}

/// An event as one user's stream holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// The stream owner's seq for the event.
    pub seq: u64,
    pub event: Event,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_have_one_shape() {
        let id = format!("{GROUP_ID_PREFIX}{}", "0123456789abcdef01234567");
        assert!(is_group_id(&id), "{id}");
        assert!(!is_group_id("g~abc"));
        assert!(!is_group_id("g~0123456789ABCDEF01234567"));
        assert!(!is_group_id("alice:bob"));
    }

    #[test]
    fn titles_are_checked() {
        assert!(validate_title("Team", 128).is_ok());
        assert!(validate_title("  ", 128).is_err());
        assert!(validate_title("a\nb", 128).is_err());
        assert!(validate_title(&"x".repeat(129), 128).is_err());
    }

    #[test]
    fn codes_and_roles_round_trip() {
        for code in RefusalCode::ALL {
            assert_eq!(RefusalCode::parse(code.as_str()), Some(code));
        }
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
    }
}
