//! Protocol 2: the commands and frames of conversations (groups, the conversation list, read
//! state), as the rest of `wire` decodes and encodes them.
//!
//! Every command here needs a session opened with protocol 2; `send`, `history`, `typing` and
//! `presence_subscribe` take a `conversation_id` instead of a user there.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{
    CommandKind, DEFAULT_HISTORY_LIMIT, Fields, MAX_HISTORY_LIMIT, ProtocolError, bad_request,
};
use crate::conversation::{ConversationKind, ConversationRef, ConversationSummary, Receipt};
use crate::domain::validate_client_msg_id;
use crate::event::{Event, EventKind, MAX_CONVERSATIONS_LIMIT, MAX_USERS_PER_CHANGE, Member, Role};
use crate::wire::MessageView;

/// The default page size of `conversations`.
pub const DEFAULT_CONVERSATIONS_LIMIT: u32 = 50;

/// The command types only protocol 2 knows.
pub(super) const CONVERSATION_COMMAND_TYPES: &str = "create_group, rename_group, add_members, \
     remove_member, leave_group, set_role, members, conversations, mark_read, mark_unread, \
     read_receipts";

/// Decodes a command only protocol 2 knows; `None` when `kind` is none of them.
pub(super) fn decode(kind: &str, f: &mut Fields<'_>) -> Option<Result<CommandKind, ProtocolError>> {
    Some(match kind {
        "create_group" => create_group(f),
        "rename_group" => (|| {
            Ok(CommandKind::RenameGroup {
                conversation_id: group_id(f)?,
                title: f.required_string("title")?,
            })
        })(),
        "add_members" => (|| {
            Ok(CommandKind::AddMembers {
                conversation_id: group_id(f)?,
                users: f.id_list("users", MAX_USERS_PER_CHANGE)?,
            })
        })(),
        "remove_member" => (|| {
            Ok(CommandKind::RemoveMember {
                conversation_id: group_id(f)?,
                user: f.id("user")?,
            })
        })(),
        "leave_group" => {
            group_id(f).map(|conversation_id| CommandKind::LeaveGroup { conversation_id })
        }
        "set_role" => (|| {
            let conversation_id = group_id(f)?;
            let user = f.id("user")?;
            let role = f.required_string("role")?;
            let role = Role::parse(&role)
                .ok_or_else(|| bad_request("`role` must be one of owner, admin, member"))?;
            Ok(CommandKind::SetRole {
                conversation_id,
                user,
                role: role.as_str().to_owned(),
            })
        })(),
        "members" => group_id(f).map(|conversation_id| CommandKind::Members { conversation_id }),
        "conversations" => (|| {
            Ok(CommandKind::Conversations {
                before: f.cursor("before")?,
                limit: f.limit(
                    "limit",
                    DEFAULT_CONVERSATIONS_LIMIT,
                    MAX_CONVERSATIONS_LIMIT,
                )?,
            })
        })(),
        "mark_read" => (|| {
            Ok(CommandKind::MarkRead {
                conversation_id: conversation_id(f)?,
                message_id: message_id(f, "message_id")?
                    .ok_or_else(|| bad_request("missing field `message_id`"))?,
            })
        })(),
        "mark_unread" => (|| {
            Ok(CommandKind::MarkUnread {
                conversation_id: conversation_id(f)?,
                message_id: message_id(f, "message_id")?,
            })
        })(),
        "read_receipts" => (|| {
            Ok(CommandKind::ReadReceipts {
                conversation_id: conversation_id(f)?,
                message_id: message_id(f, "message_id")?
                    .ok_or_else(|| bad_request("missing field `message_id`"))?,
            })
        })(),
        _ => return None,
    })
}

fn create_group(f: &mut Fields<'_>) -> Result<CommandKind, ProtocolError> {
    let client_msg_id = f.required_string("client_msg_id")?;
    validate_client_msg_id(&client_msg_id)
        .map_err(|e| bad_request(format!("`client_msg_id` {e}")))?;
    let title = f.required_string("title")?;
    let members = if f.has("members") {
        f.id_list_or_empty("members", MAX_USERS_PER_CHANGE)?
    } else {
        Vec::new()
    };
    Ok(CommandKind::CreateGroup {
        title,
        members,
        client_msg_id,
    })
}

/// `send` with a `conversation_id` instead of `to`.
pub(super) fn send_to_conversation(
    f: &mut Fields<'_>,
    text: String,
    client_msg_id: String,
) -> Result<CommandKind, ProtocolError> {
    if f.has("to") {
        return Err(bad_request(
            "give either `to` or `conversation_id`, not both",
        ));
    }
    Ok(CommandKind::SendToConversation {
        conversation_id: conversation_id(f)?,
        text,
        client_msg_id,
        reply_to: message_id(f, "reply_to")?,
    })
}

/// `history` with a `conversation_id` instead of `with`.
pub(super) fn history_of_conversation(f: &mut Fields<'_>) -> Result<CommandKind, ProtocolError> {
    if f.has("with") {
        return Err(bad_request(
            "give either `with` or `conversation_id`, not both",
        ));
    }
    Ok(CommandKind::ConversationHistory {
        conversation_id: conversation_id(f)?,
        before: f.cursor("before")?,
        limit: f.limit("limit", DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)?,
    })
}

/// `typing` with a `conversation_id` instead of `to`.
pub(super) fn typing_in_conversation(f: &mut Fields<'_>) -> Result<CommandKind, ProtocolError> {
    if f.has("to") {
        return Err(bad_request(
            "give either `to` or `conversation_id`, not both",
        ));
    }
    Ok(CommandKind::TypingInConversation {
        conversation_id: conversation_id(f)?,
    })
}

/// `presence_subscribe` with a `conversation_id` (a group's members) instead of `users`.
pub(super) fn subscribe_to_group(f: &mut Fields<'_>) -> Result<CommandKind, ProtocolError> {
    if f.has("users") {
        return Err(bad_request(
            "give either `users` or `conversation_id`, not both",
        ));
    }
    Ok(CommandKind::PresenceSubscribeGroup {
        conversation_id: group_id(f)?,
    })
}

pub(super) fn conversation_id(f: &mut Fields<'_>) -> Result<String, ProtocolError> {
    let id = f.required_string("conversation_id")?;
    ConversationRef::parse(&id).map_err(|e| bad_request(format!("`conversation_id` {e}")))?;
    Ok(id)
}

fn group_id(f: &mut Fields<'_>) -> Result<String, ProtocolError> {
    let id = conversation_id(f)?;
    match ConversationRef::parse(&id) {
        Ok(ConversationRef::Group(_)) => Ok(id),
        _ => Err(bad_request(
            "`conversation_id` must be a group id: direct conversations have no members to change",
        )),
    }
}

/// A message id as the server writes it: a string of digits.
pub(super) fn message_id(f: &mut Fields<'_>, name: &str) -> Result<Option<u64>, ProtocolError> {
    let invalid = || {
        bad_request(format!(
            "`{name}` must be a message id (a string of digits)"
        ))
    };
    match f.take(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => s
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .map(Some)
            .ok_or_else(invalid),
        Some(_) => Err(invalid()),
    }
}

/// A stream event as its user sees it: the `event` frame, and the elements of `sync.events`
/// (without `type`).
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView<'a> {
    pub seq: u64,
    /// What happened: `group_created`, `members_added`, `member_left`, `role_changed`,
    /// `group_renamed`, `read_marker` or `read_receipt`; in protocol 3 also
    /// `message_edited`, `message_deleted`, `reaction_added` or `reaction_removed`.
    #[cfg_attr(
        test,
        schemars(extend("enum" = [
            "group_created", "members_added", "member_left", "role_changed", "group_renamed",
            "read_marker", "read_receipt", "message_edited", "message_deleted",
            "reaction_added", "reaction_removed"
        ]))
    )]
    pub event: Cow<'a, str>,
    pub event_id: String,
    pub conversation_id: Cow<'a, str>,
    /// Who made the change.
    pub actor: Cow<'a, str>,
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<Cow<'a, str>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, schemars(extend("enum" = ["owner", "admin", "member", null])))]
    pub role: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread_count: Option<u64>,
    /// Protocol 3, `message_edited`: the message's text as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Cow<'a, str>>,
    /// Protocol 3, `message_deleted`: deleted by a group's owner or admin, not its author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderated: Option<bool>,
    /// Protocol 3, `reaction_added` and `reaction_removed`: the reaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<Cow<'a, str>>,
}

impl<'a> EventView<'a> {
    /// `event` as the owner of the stream entry `seq` sees it.
    pub fn of(event: &'a Event, seq: u64) -> Self {
        let mut view = EventView {
            seq,
            event: Cow::Borrowed(event.kind.name()),
            event_id: event.event_id.to_string(),
            conversation_id: Cow::Borrowed(&event.conversation_id),
            actor: Cow::Borrowed(&event.actor),
            ts: event.ts,
            title: None,
            member_count: None,
            users: None,
            user: None,
            role: None,
            message_id: None,
            unread_count: None,
            text: None,
            moderated: None,
            emoji: None,
        };
        match &event.kind {
            EventKind::GroupCreated {
                title,
                member_count,
            } => {
                view.title = Some(Cow::Borrowed(title));
                view.member_count = Some(*member_count);
            }
            EventKind::MembersAdded { users } => {
                view.users = Some(users.iter().map(|u| Cow::Borrowed(u.as_str())).collect());
            }
            EventKind::MemberLeft { user } => view.user = Some(Cow::Borrowed(user)),
            EventKind::RoleChanged { user, role } => {
                view.user = Some(Cow::Borrowed(user));
                view.role = Some(Cow::Borrowed(role.as_str()));
            }
            EventKind::GroupRenamed { title } => view.title = Some(Cow::Borrowed(title)),
            EventKind::ReadMarker {
                message_id,
                unread_count,
            } => {
                view.message_id = Some(message_id.to_string());
                view.unread_count = Some(*unread_count);
            }
            EventKind::ReadReceipt { message_id } => {
                view.message_id = Some(message_id.to_string());
            }
            EventKind::MessageEdited { message_id, text } => {
                view.message_id = Some(message_id.to_string());
                view.text = Some(Cow::Borrowed(text));
            }
            EventKind::MessageDeleted {
                message_id,
                moderated,
            } => {
                view.message_id = Some(message_id.to_string());
                view.moderated = Some(*moderated);
            }
            EventKind::ReactionAdded { message_id, emoji }
            | EventKind::ReactionRemoved { message_id, emoji } => {
                view.message_id = Some(message_id.to_string());
                view.emoji = Some(Cow::Borrowed(emoji));
            }
        }
        view
    }
}

/// A group member as `members` lists it.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView<'a> {
    pub user: Cow<'a, str>,
    #[cfg_attr(test, schemars(extend("enum" = ["owner", "admin", "member"])))]
    pub role: Cow<'a, str>,
    pub joined_ts: i64,
}

impl<'a> MemberView<'a> {
    pub fn of(member: &'a Member) -> Self {
        Self {
            user: Cow::Borrowed(&member.user),
            role: Cow::Borrowed(member.role.as_str()),
            joined_ts: member.joined_ts,
        }
    }
}

/// A reader of a message as `read_receipts` lists it.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderView<'a> {
    pub user: Cow<'a, str>,
    pub read_marker: String,
}

impl<'a> ReaderView<'a> {
    pub fn of(receipt: &'a Receipt) -> Self {
        Self {
            user: Cow::Borrowed(&receipt.user),
            read_marker: receipt.read_marker.to_string(),
        }
    }
}

/// One entry of the `conversations` frame.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationView<'a> {
    pub conversation_id: Cow<'a, str>,
    /// `direct` or `group`.
    #[cfg_attr(test, schemars(extend("enum" = ["direct", "group"])))]
    pub kind: Cow<'a, str>,
    /// Direct: the other user (oneself in a conversation with oneself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Cow<'a, str>>,
    /// Direct: how far the peer has read (a message id; `"0"` for nothing): read ticks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_read_marker: Option<String>,
    /// Group: its title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<Cow<'a, str>>,
    /// Group: the user's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, schemars(extend("enum" = ["owner", "admin", "member", null])))]
    pub role: Option<Cow<'a, str>>,
    /// 2 for a direct conversation with another user, 1 with oneself.
    pub member_count: u32,
    pub last_message: Option<MessageView<'a>>,
    pub unread_count: u64,
    /// The newest message read (a message id; `"0"` for nothing).
    pub read_marker: String,
    /// The list's order: the user's seq of the conversation's newest message or membership
    /// event.
    pub activity_seq: u64,
}

impl<'a> ConversationView<'a> {
    /// `summary` as `viewer` sees it.
    pub fn of(summary: &'a ConversationSummary, viewer: &'a str) -> Self {
        let (kind, peer, peer_read_marker, title, role, member_count) = match &summary.kind {
            ConversationKind::Direct {
                peer,
                peer_read_marker,
            } => (
                "direct",
                Some(Cow::Borrowed(peer.as_str())),
                Some(peer_read_marker.to_string()),
                None,
                None,
                if peer == viewer { 1 } else { 2 },
            ),
            ConversationKind::Group {
                title,
                role,
                member_count,
            } => (
                "group",
                None,
                None,
                Some(Cow::Borrowed(title.as_str())),
                Some(Cow::Borrowed(role.as_str())),
                *member_count,
            ),
        };
        Self {
            conversation_id: Cow::Borrowed(&summary.conversation_id),
            kind: Cow::Borrowed(kind),
            peer,
            peer_read_marker,
            title,
            role,
            member_count,
            last_message: summary
                .last_message
                .as_ref()
                .map(|m| MessageView::of(m, viewer)),
            unread_count: summary.unread_count,
            read_marker: summary.read_marker.to_string(),
            activity_seq: summary.activity_seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::wire::{CommandKind, DecodeLimits, ErrorCode, decode};

    const LIMITS: DecodeLimits = DecodeLimits {
        max_text_bytes: 16,
        max_watched_users: 3,
    };
    const GROUP: &str = "g~0123456789abcdef01234567";

    fn kind(text: &str) -> CommandKind {
        decode(text, &LIMITS).unwrap().kind
    }

    fn error(text: &str) -> String {
        let e = decode(text, &LIMITS).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        e.message
    }

    #[test]
    fn send_history_and_typing_take_a_conversation_id_instead_of_a_user() {
        assert_eq!(
            kind(&format!(
                r#"{{"type":"send","conversation_id":"{GROUP}","text":"hi","client_msg_id":"c1"}}"#
            )),
            CommandKind::SendToConversation {
                conversation_id: GROUP.into(),
                text: "hi".into(),
                client_msg_id: "c1".into(),
                reply_to: None,
            }
        );
        assert_eq!(
            kind(r#"{"type":"history","conversation_id":"alice:bob","limit":5}"#),
            CommandKind::ConversationHistory {
                conversation_id: "alice:bob".into(),
                before: None,
                limit: 5
            }
        );
        assert_eq!(
            kind(&format!(
                r#"{{"type":"typing","conversation_id":"{GROUP}"}}"#
            )),
            CommandKind::TypingInConversation {
                conversation_id: GROUP.into()
            }
        );
        assert!(
            error(r#"{"type":"send","to":"bob","conversation_id":"alice:bob","text":"x","client_msg_id":"c"}"#)
                .contains("not both")
        );
        assert!(
            error(r#"{"type":"history","conversation_id":"bob:alice"}"#)
                .contains("conversation_id")
        );
    }

    #[test]
    fn group_commands_decode_and_name_their_bad_fields() {
        assert_eq!(
            kind(
                r#"{"type":"create_group","title":"Team","members":["bob","bob"],"client_msg_id":"g1"}"#
            ),
            CommandKind::CreateGroup {
                title: "Team".into(),
                members: vec!["bob".into()],
                client_msg_id: "g1".into()
            }
        );
        assert_eq!(
            kind(r#"{"type":"create_group","title":"Solo","members":[],"client_msg_id":"g1"}"#),
            CommandKind::CreateGroup {
                title: "Solo".into(),
                members: vec![],
                client_msg_id: "g1".into()
            }
        );
        assert_eq!(
            kind(&format!(
                r#"{{"type":"set_role","conversation_id":"{GROUP}","user":"bob","role":"admin"}}"#
            )),
            CommandKind::SetRole {
                conversation_id: GROUP.into(),
                user: "bob".into(),
                role: "admin".into()
            }
        );
        assert!(
            error(&format!(
                r#"{{"type":"set_role","conversation_id":"{GROUP}","user":"bob","role":"king"}}"#
            ))
            .contains("`role`")
        );
        assert!(
            error(r#"{"type":"add_members","conversation_id":"alice:bob","users":["c"]}"#)
                .contains("group id")
        );
        assert!(error(r#"{"type":"create_group","title":"T"}"#).contains("client_msg_id"));
    }

    #[test]
    fn read_marks_take_message_ids_as_the_server_writes_them() {
        assert_eq!(
            kind(r#"{"type":"mark_read","conversation_id":"alice:bob","message_id":"42"}"#),
            CommandKind::MarkRead {
                conversation_id: "alice:bob".into(),
                message_id: 42
            }
        );
        assert_eq!(
            kind(r#"{"type":"mark_unread","conversation_id":"alice:bob"}"#),
            CommandKind::MarkUnread {
                conversation_id: "alice:bob".into(),
                message_id: None
            }
        );
        assert!(
            error(r#"{"type":"mark_read","conversation_id":"alice:bob","message_id":42}"#)
                .contains("`message_id`")
        );
        assert!(
            error(r#"{"type":"mark_read","conversation_id":"alice:bob"}"#).contains("message_id")
        );
        assert_eq!(
            kind(r#"{"type":"conversations","before":"17","limit":10}"#),
            CommandKind::Conversations {
                before: Some(17),
                limit: 10
            }
        );
        assert!(error(r#"{"type":"conversations","limit":201}"#).contains("200"));
    }

    #[test]
    fn commands_encode_to_what_decoding_reads_back() {
        let commands = [
            CommandKind::CreateGroup {
                title: "Team".into(),
                members: vec!["bob".into()],
                client_msg_id: "g1".into(),
            },
            CommandKind::MarkRead {
                conversation_id: "alice:bob".into(),
                message_id: 42,
            },
            CommandKind::MarkUnread {
                conversation_id: GROUP.into(),
                message_id: Some(7),
            },
            CommandKind::Conversations {
                before: Some(3),
                limit: 20,
            },
            CommandKind::SendToConversation {
                conversation_id: GROUP.into(),
                text: "hi".into(),
                client_msg_id: "c1".into(),
                reply_to: None,
            },
        ];
        for kind in commands {
            let command = crate::wire::Command { req_id: None, kind };
            let text = command.encode();
            assert_eq!(decode(&text, &LIMITS).unwrap(), command, "{text}");
        }
    }
}
