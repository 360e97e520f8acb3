//! The wire protocol, versions 1 and 2: JSON text frames with a `type` discriminator. Protocol
//! 2 (conversations: groups, the conversation list, read state, stream events) adds frames and
//! fields to protocol 1's; a connection's version is chosen on connecting (`?protocol=`).
//!
//! This is the only module that knows JSON. Each direction has one definition that both ends
//! use, so a client and the server cannot drift apart:
//!
//! - client frames: the server turns text into a [`Command`] with [`decode`] (hand-written, so
//!   that a [`ProtocolError`] names the exact problem); a client turns a [`Command`] into text
//!   with [`Command::encode`] (derived from the same types);
//! - server frames: the server turns a [`ServerFrame`] into text with [`ServerFrame::encode`]; a
//!   client turns text back into a `ServerFrame` with [`ServerFrame::decode`] (type first, see
//!   `server_frame_decode`).
//!
//! String fields of server frames are `Cow<'a, str>`: the server builds them borrowed from its
//! own data (serializing a borrowed `Cow` costs what a `&str` costs: no allocation), and a
//! client decodes them borrowed from the frame's text, or owned with
//! [`ServerFrame::into_owned`]. `docs/PROTOCOL.md` is the normative description; keep the two
//! in step.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Number, Value};

use crate::domain::{self, StoredMessage};
use crate::event::{Refusal, RefusalCode};

mod conversations;
mod export;
mod lifecycle;
mod server_frame_decode;

pub use conversations::{
    ConversationView, DEFAULT_CONVERSATIONS_LIMIT, EventView, MemberView, ReaderView,
};
pub use export::ExportLine;
pub use lifecycle::{DeletionView, QuoteView, ReactionView};

/// The protocol version a client gets when it asks for none: direct messages only.
pub const PROTOCOL_VERSION: u32 = 1;
/// The protocol version of conversations (groups, the conversation list, read state).
pub const CONVERSATIONS_PROTOCOL_VERSION: u32 = 2;
/// The protocol version of what happens to messages after they are sent (edits, deletes,
/// reactions, replies).
pub const LIFECYCLE_PROTOCOL_VERSION: u32 = 3;
/// The newest protocol version. A client asks for a version when it connects
/// (`?protocol=3`); `welcome` says which it got.
pub const LATEST_PROTOCOL_VERSION: u32 = LIFECYCLE_PROTOCOL_VERSION;
/// The longest string `req_id`, in bytes.
pub const MAX_REQ_ID_LEN: usize = 64;
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;
pub const MAX_HISTORY_LIMIT: u32 = 100;
pub const DEFAULT_SYNC_LIMIT: u32 = 100;
pub const MAX_SYNC_LIMIT: u32 = 500;
pub const DEFAULT_ONLINE_USERS_LIMIT: u32 = 100;
pub const MAX_ONLINE_USERS_LIMIT: u32 = 1_000;

/// The client's correlation id, echoed verbatim in the direct reply.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReqId {
    Text(String),
    Number(#[cfg_attr(test, schemars(with = "i64"))] Number),
}

/// A client command: what the server's [`decode`] produces and a client's
/// [`Command::encode`] writes.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Command {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub req_id: Option<ReqId>,
    #[serde(flatten)]
    pub kind: CommandKind,
}

impl Command {
    /// The command as the JSON text frame a client sends; [`decode`] reads it back as the same
    /// command.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("commands contain only serializable data")
    }
}

/// What a command asks for. Serializes with its `type`, as [`decode`] expects it.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandKind {
    Send {
        to: String,
        text: String,
        client_msg_id: String,
    },
    History {
        with: String,
        /// On the wire an opaque string cursor (a previous `next_before`), or absent.
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "cursor_as_string"
        )]
        #[cfg_attr(test, schemars(with = "Option<String>"))]
        before: Option<u64>,
        limit: u32,
    },
    Sync {
        after_seq: u64,
        limit: u32,
    },
    PresenceSubscribe {
        users: Vec<String>,
    },
    PresenceUnsubscribe {
        users: Vec<String>,
    },
    OnlineUsers {
        limit: u32,
    },
    Typing {
        to: String,
    },
    Ping,
    /// A fresh token for the same user and tenant, before the current one expires.
    Refresh {
        token: String,
    },
    /// Protocol 2: `send` to a conversation (a group, or a direct conversation by its id).
    #[serde(rename = "send")]
    SendToConversation {
        conversation_id: String,
        text: String,
        client_msg_id: String,
        /// Protocol 3: the message this one replies to (of the same conversation).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            serialize_with = "cursor_as_string"
        )]
        #[cfg_attr(test, schemars(with = "Option<String>"))]
        reply_to: Option<u64>,
    },
    /// Protocol 2: `history` of a conversation by its id.
    #[serde(rename = "history")]
    ConversationHistory {
        conversation_id: String,
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "cursor_as_string"
        )]
        #[cfg_attr(test, schemars(with = "Option<String>"))]
        before: Option<u64>,
        limit: u32,
    },
    /// Protocol 2: `typing` in a conversation.
    #[serde(rename = "typing")]
    TypingInConversation {
        conversation_id: String,
    },
    /// Protocol 2: `presence_subscribe` to the members of a group.
    #[serde(rename = "presence_subscribe")]
    PresenceSubscribeGroup {
        conversation_id: String,
    },
    /// Protocol 2: a new group, its creator as owner.
    CreateGroup {
        title: String,
        members: Vec<String>,
        client_msg_id: String,
    },
    RenameGroup {
        conversation_id: String,
        title: String,
    },
    AddMembers {
        conversation_id: String,
        users: Vec<String>,
    },
    RemoveMember {
        conversation_id: String,
        user: String,
    },
    LeaveGroup {
        conversation_id: String,
    },
    SetRole {
        conversation_id: String,
        user: String,
        #[cfg_attr(test, schemars(extend("enum" = ["owner", "admin", "member"])))]
        role: String,
    },
    Members {
        conversation_id: String,
    },
    /// Protocol 2: a page of the conversation list, most recent first.
    Conversations {
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "cursor_as_string"
        )]
        #[cfg_attr(test, schemars(with = "Option<String>"))]
        before: Option<u64>,
        limit: u32,
    },
    MarkRead {
        conversation_id: String,
        #[serde(serialize_with = "id_as_string")]
        #[cfg_attr(test, schemars(with = "String"))]
        message_id: u64,
    },
    MarkUnread {
        conversation_id: String,
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "cursor_as_string"
        )]
        #[cfg_attr(test, schemars(with = "Option<String>"))]
        message_id: Option<u64>,
    },
    ReadReceipts {
        conversation_id: String,
        #[serde(serialize_with = "id_as_string")]
        #[cfg_attr(test, schemars(with = "String"))]
        message_id: u64,
    },
    /// Protocol 3: the author replaces a message's text.
    Edit {
        conversation_id: String,
        #[serde(serialize_with = "id_as_string")]
        #[cfg_attr(test, schemars(with = "String"))]
        message_id: u64,
        text: String,
        client_msg_id: String,
    },
    /// Protocol 3: a message deleted for everyone.
    Delete {
        conversation_id: String,
        #[serde(serialize_with = "id_as_string")]
        #[cfg_attr(test, schemars(with = "String"))]
        message_id: u64,
    },
    /// Protocol 3: a reaction added to a message.
    React {
        conversation_id: String,
        #[serde(serialize_with = "id_as_string")]
        #[cfg_attr(test, schemars(with = "String"))]
        message_id: u64,
        emoji: String,
    },
    /// Protocol 3: one's reaction taken back.
    Unreact {
        conversation_id: String,
        #[serde(serialize_with = "id_as_string")]
        #[cfg_attr(test, schemars(with = "String"))]
        message_id: u64,
        emoji: String,
    },
}

impl CommandKind {
    /// The `client_msg_id` the command carries, which an `error` answering it names (so a
    /// client can tell which of its sends was refused).
    pub fn client_msg_id(&self) -> Option<&str> {
        match self {
            CommandKind::Send { client_msg_id, .. }
            | CommandKind::SendToConversation { client_msg_id, .. }
            | CommandKind::CreateGroup { client_msg_id, .. }
            | CommandKind::Edit { client_msg_id, .. } => Some(client_msg_id),
            _ => None,
        }
    }

    /// The protocol version a session needs to send this command.
    pub fn needs_protocol(&self) -> u32 {
        match self {
            CommandKind::SendToConversation {
                reply_to: Some(_), ..
            }
            | CommandKind::Edit { .. }
            | CommandKind::Delete { .. }
            | CommandKind::React { .. }
            | CommandKind::Unreact { .. } => LIFECYCLE_PROTOCOL_VERSION,
            kind if kind.needs_protocol_2() => CONVERSATIONS_PROTOCOL_VERSION,
            _ => PROTOCOL_VERSION,
        }
    }

    /// Whether only a protocol-2 session may send this command.
    pub fn needs_protocol_2(&self) -> bool {
        !matches!(
            self,
            CommandKind::Send { .. }
                | CommandKind::History { .. }
                | CommandKind::Sync { .. }
                | CommandKind::PresenceSubscribe { .. }
                | CommandKind::PresenceUnsubscribe { .. }
                | CommandKind::OnlineUsers { .. }
                | CommandKind::Typing { .. }
                | CommandKind::Ping
                | CommandKind::Refresh { .. }
        )
    }
}

/// Writes a message id as the string the server gave it.
fn id_as_string<S: Serializer>(id: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(id)
}

/// Writes a history cursor as the string `next_before` gave it.
fn cursor_as_string<S: Serializer>(cursor: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match cursor {
        Some(cursor) => serializer.collect_str(cursor),
        None => serializer.serialize_none(),
    }
}

/// The limits decoding enforces (from `[limits]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_text_bytes: usize,
    pub max_watched_users: usize,
}

/// The `code` of an `error` frame.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    TooLarge,
    RateLimited,
    Unavailable,
    Forbidden,
    Internal,
    /// Protocol 2: the user is not a member of the conversation.
    NotAMember,
    /// Protocol 2: the user's role in the group does not allow the change.
    NotAllowed,
    /// Protocol 2: the group is at `groups.max_members`.
    GroupFull,
    /// Protocol 2: no such conversation.
    UnknownConversation,
    /// Protocol 2: a user would be in more than `groups.max_groups_per_user` groups.
    TooManyGroups,
    /// Protocol 2: no such message in the conversation.
    UnknownMessage,
    /// Protocol 3: only the message's author may do this.
    NotAuthor,
    /// Protocol 3: the message is older than `messages.edit_window`.
    EditWindowPassed,
    /// Protocol 3: the message was deleted for everyone.
    MessageDeleted,
    /// Protocol 3: too many reactions on the message, or by the user on it.
    TooManyReactions,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadRequest,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Forbidden,
        ErrorCode::Internal,
        ErrorCode::NotAMember,
        ErrorCode::NotAllowed,
        ErrorCode::GroupFull,
        ErrorCode::UnknownConversation,
        ErrorCode::TooManyGroups,
        ErrorCode::UnknownMessage,
        ErrorCode::NotAuthor,
        ErrorCode::EditWindowPassed,
        ErrorCode::MessageDeleted,
        ErrorCode::TooManyReactions,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::NotAllowed => "not_allowed",
            ErrorCode::GroupFull => "group_full",
            ErrorCode::UnknownConversation => "unknown_conversation",
            ErrorCode::TooManyGroups => "too_many_groups",
            ErrorCode::UnknownMessage => "unknown_message",
            ErrorCode::NotAuthor => "not_author",
            ErrorCode::EditWindowPassed => "edit_window_passed",
            ErrorCode::MessageDeleted => "message_deleted",
            ErrorCode::TooManyReactions => "too_many_reactions",
        }
    }

    /// Whether sending the same command again later may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
        )
    }
}

impl From<RefusalCode> for ErrorCode {
    fn from(code: RefusalCode) -> Self {
        match code {
            RefusalCode::BadRequest => ErrorCode::BadRequest,
            RefusalCode::NotAMember => ErrorCode::NotAMember,
            RefusalCode::NotAllowed => ErrorCode::NotAllowed,
            RefusalCode::GroupFull => ErrorCode::GroupFull,
            RefusalCode::UnknownConversation => ErrorCode::UnknownConversation,
            RefusalCode::TooManyGroups => ErrorCode::TooManyGroups,
            RefusalCode::UnknownMessage => ErrorCode::UnknownMessage,
            RefusalCode::NotAuthor => ErrorCode::NotAuthor,
            RefusalCode::EditWindowPassed => ErrorCode::EditWindowPassed,
            RefusalCode::MessageDeleted => ErrorCode::MessageDeleted,
            RefusalCode::TooManyReactions => ErrorCode::TooManyReactions,
        }
    }
}

impl From<Refusal> for ProtocolError {
    fn from(refusal: Refusal) -> Self {
        ProtocolError::new(refusal.code.into(), refusal.message)
    }
}

/// An error to report to the client in an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
    pub req_id: Option<ReqId>,
    pub client_msg_id: Option<String>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            req_id: None,
            client_msg_id: None,
        }
    }

    pub fn with_req_id(mut self, req_id: Option<ReqId>) -> Self {
        self.req_id = req_id;
        self
    }

    pub fn with_client_msg_id(mut self, client_msg_id: Option<String>) -> Self {
        self.client_msg_id = client_msg_id;
        self
    }

    /// The `error` frame for this error.
    pub fn to_frame(&self) -> ServerFrame<'_> {
        ServerFrame::Error {
            code: self.code,
            message: Cow::Borrowed(&self.message),
            retryable: self.code.retryable(),
            req_id: self.req_id.as_ref().map(Cow::Borrowed),
            client_msg_id: self.client_msg_id.as_deref().map(Cow::Borrowed),
        }
    }
}

fn bad_request(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::BadRequest, message)
}

/// Decodes one client text frame.
pub fn decode(text: &str, limits: &DecodeLimits) -> Result<Command, ProtocolError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| bad_request(format!("malformed JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(bad_request("a frame must be a JSON object"));
    };
    let req_id = match fields.remove("req_id") {
        None | Some(Value::Null) => None,
        Some(value) => Some(req_id_from(value)?),
    };
    // Known before the rest is checked, so that a send's error can name its message.
    let client_msg_id = fields
        .get("client_msg_id")
        .and_then(Value::as_str)
        .filter(|id| domain::validate_client_msg_id(id).is_ok())
        .map(str::to_owned);
    let kind = decode_kind(&mut fields, limits).map_err(|e| {
        e.with_req_id(req_id.clone())
            .with_client_msg_id(client_msg_id)
    })?;
    Ok(Command { req_id, kind })
}

fn req_id_from(value: Value) -> Result<ReqId, ProtocolError> {
    match value {
        Value::String(s) if s.len() <= MAX_REQ_ID_LEN => Ok(ReqId::Text(s)),
        Value::String(_) => Err(bad_request(format!(
            "`req_id` must be at most {MAX_REQ_ID_LEN} bytes"
        ))),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(ReqId::Number(n)),
        _ => Err(bad_request("`req_id` must be a string or an integer")),
    }
}

const COMMAND_TYPES: &str = "send, history, sync, presence_subscribe, presence_unsubscribe, \
     online_users, typing, ping, refresh";

fn decode_kind(
    fields: &mut Map<String, Value>,
    limits: &DecodeLimits,
) -> Result<CommandKind, ProtocolError> {
    let kind = match fields.remove("type") {
        Some(Value::String(kind)) => kind,
        Some(_) => return Err(bad_request("`type` must be a string")),
        None => return Err(bad_request("missing field `type`")),
    };
    let mut f = Fields(fields);
    Ok(match kind.as_str() {
        "send" => {
            let client_msg_id = f.required_string("client_msg_id")?;
            domain::validate_client_msg_id(&client_msg_id)
                .map_err(|e| bad_request(format!("`client_msg_id` {e}")))?;
            let text = f.text(limits)?;
            if f.has("conversation_id") {
                return conversations::send_to_conversation(&mut f, text, client_msg_id);
            }
            if f.has("reply_to") {
                return Err(bad_request(
                    "`reply_to` needs `conversation_id` instead of `to`",
                ));
            }
            CommandKind::Send {
                to: f.id("to")?,
                text,
                client_msg_id,
            }
        }
        "history" if f.has("conversation_id") => conversations::history_of_conversation(&mut f)?,
        "typing" if f.has("conversation_id") => conversations::typing_in_conversation(&mut f)?,
        "presence_subscribe" if f.has("conversation_id") => {
            conversations::subscribe_to_group(&mut f)?
        }
        "history" => CommandKind::History {
            with: f.id("with")?,
            before: f.cursor("before")?,
            limit: f.limit("limit", DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)?,
        },
        "sync" => CommandKind::Sync {
            after_seq: f.required_u64("after_seq")?,
            limit: f.limit("limit", DEFAULT_SYNC_LIMIT, MAX_SYNC_LIMIT)?,
        },
        "presence_subscribe" => CommandKind::PresenceSubscribe {
            users: f.id_list("users", limits.max_watched_users)?,
        },
        "presence_unsubscribe" => CommandKind::PresenceUnsubscribe {
            users: f.id_list("users", limits.max_watched_users)?,
        },
        "online_users" => CommandKind::OnlineUsers {
            limit: f.limit("limit", DEFAULT_ONLINE_USERS_LIMIT, MAX_ONLINE_USERS_LIMIT)?,
        },
        "typing" => CommandKind::Typing { to: f.id("to")? },
        "ping" => CommandKind::Ping,
        "refresh" => CommandKind::Refresh {
            token: f.required_string("token")?,
        },
        other => match conversations::decode(other, &mut f)
            .or_else(|| lifecycle::decode(other, &mut f, limits))
        {
            Some(command) => command?,
            None => {
                let shown: String = other.chars().take(64).collect();
                return Err(bad_request(format!(
                    "unknown type {shown:?}; expected one of {COMMAND_TYPES}, with \
                     protocol 2 {}, and with protocol 3 {}",
                    conversations::CONVERSATION_COMMAND_TYPES,
                    lifecycle::LIFECYCLE_COMMAND_TYPES
                )));
            }
        },
    })
}

/// Typed access to a frame's fields, with errors that name the field.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn has(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|v| !v.is_null())
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name)
    }

    /// Like [`Fields::id_list`], but an empty array is allowed.
    fn id_list_or_empty(&mut self, name: &str, max: usize) -> Result<Vec<String>, ProtocolError> {
        if matches!(self.0.get(name), Some(Value::Array(items)) if items.is_empty()) {
            self.0.remove(name);
            return Ok(Vec::new());
        }
        self.id_list(name, max)
    }

    /// A message's `text`: not empty, within `limits.max_text_bytes` (`too_large` otherwise).
    fn text(&mut self, limits: &DecodeLimits) -> Result<String, ProtocolError> {
        let text = self.required_string("text")?;
        if text.is_empty() {
            return Err(bad_request("`text` must not be empty"));
        }
        if text.len() > limits.max_text_bytes {
            return Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!(
                    "`text` is {} bytes; the limit is {}",
                    text.len(),
                    limits.max_text_bytes
                ),
            ));
        }
        Ok(text)
    }

    fn required_string(&mut self, name: &str) -> Result<String, ProtocolError> {
        match self.0.remove(name) {
            Some(Value::String(s)) => Ok(s),
            Some(Value::Null) | None => Err(bad_request(format!("missing field `{name}`"))),
            Some(_) => Err(bad_request(format!("`{name}` must be a string"))),
        }
    }

    fn id(&mut self, name: &str) -> Result<String, ProtocolError> {
        let id = self.required_string(name)?;
        domain::validate_id(&id).map_err(|e| bad_request(format!("`{name}` {e}")))?;
        Ok(id)
    }

    fn required_u64(&mut self, name: &str) -> Result<u64, ProtocolError> {
        match self.0.remove(name) {
            Some(Value::Null) | None => Err(bad_request(format!("missing field `{name}`"))),
            Some(Value::Number(n)) => n
                .as_u64()
                .ok_or_else(|| bad_request(format!("`{name}` must be a non-negative integer"))),
            Some(_) => Err(bad_request(format!(
                "`{name}` must be a non-negative integer"
            ))),
        }
    }

    fn limit(&mut self, name: &str, default: u32, max: u32) -> Result<u32, ProtocolError> {
        let out_of_range = || bad_request(format!("`{name}` must be an integer from 1 to {max}"));
        match self.0.remove(name) {
            Some(Value::Null) | None => Ok(default),
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|v| (1..=u64::from(max)).contains(v))
                .map(|v| v as u32)
                .ok_or_else(out_of_range),
            Some(_) => Err(out_of_range()),
        }
    }

    /// An opaque history cursor, as given in `next_before`.
    fn cursor(&mut self, name: &str) -> Result<Option<u64>, ProtocolError> {
        let invalid = || {
            bad_request(format!(
                "`{name}` must be a cursor from a previous `next_before`, or null"
            ))
        };
        match self.0.remove(name) {
            Some(Value::Null) | None => Ok(None),
            Some(Value::String(s)) => s
                .parse::<u64>()
                .ok()
                .filter(|v| *v > 0)
                .map(Some)
                .ok_or_else(invalid),
            Some(_) => Err(invalid()),
        }
    }

    fn id_list(&mut self, name: &str, max: usize) -> Result<Vec<String>, ProtocolError> {
        let items = match self.0.remove(name) {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => return Err(bad_request(format!("missing field `{name}`"))),
            Some(_) => {
                return Err(bad_request(format!(
                    "`{name}` must be an array of user ids"
                )));
            }
        };
        if items.is_empty() {
            return Err(bad_request(format!("`{name}` must not be empty")));
        }
        if items.len() > max {
            return Err(bad_request(format!(
                "`{name}` holds {} ids; the limit is {max}",
                items.len()
            )));
        }
        let mut ids: Vec<String> = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let Value::String(id) = item else {
                return Err(bad_request(format!("`{name}[{i}]` must be a string")));
            };
            domain::validate_id(&id).map_err(|e| bad_request(format!("`{name}[{i}]` {e}")))?;
            ids.push(id);
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

/// A user's presence as the protocol names it.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

/// A message as a given user sees it (with that user's seq).
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView<'a> {
    pub message_id: String,
    pub conversation_id: String,
    pub from: Cow<'a, str>,
    pub to: Cow<'a, str>,
    pub text: Cow<'a, str>,
    pub ts: i64,
    pub seq: u64,
    /// The sender's own id for the message, shown to the sender only (so a device can match
    /// a synced copy with a send it is still waiting to see acked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<Cow<'a, str>>,
    /// True when the sender's data was erased: `text` is then empty (absent otherwise). In
    /// protocols 1 and 2, also for a message deleted for everyone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
    /// Protocol 3: the message this one replies to, as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<QuoteView<'a>>,
    /// Protocol 3: when its author last edited it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<i64>,
    /// Protocol 3: set when it was deleted for everyone (`text` is then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<DeletionView<'a>>,
    /// Protocol 3: its reactions, one per emoji (absent when it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactions: Option<Vec<ReactionView<'a>>>,
}

impl<'a> MessageView<'a> {
    /// `message` as `viewer` sees it on a connection of protocol `protocol`: the fields of
    /// protocol 3 only for protocol 3 and later.
    pub fn for_protocol(message: &'a StoredMessage, viewer: &str, protocol: u32) -> Self {
        let view = Self::of(message, viewer);
        if protocol >= LIFECYCLE_PROTOCOL_VERSION {
            view
        } else {
            view.without_lifecycle()
        }
    }

    /// The view without the fields of protocol 3, as protocols 1 and 2 see it: a deleted
    /// message reads as an erased one.
    pub fn without_lifecycle(mut self) -> Self {
        self.erased |= self.deleted.is_some();
        self.reply_to = None;
        self.edited_ts = None;
        self.deleted = None;
        self.reactions = None;
        self
    }

    /// `message` as `viewer` sees it, with everything protocol 3 shows.
    pub fn of(message: &'a StoredMessage, viewer: &str) -> Self {
        let lifecycle = &message.lifecycle;
        Self {
            message_id: message.message_id.to_string(),
            conversation_id: message.conversation_id(),
            from: Cow::Borrowed(&message.sender),
            to: Cow::Borrowed(&message.recipient),
            text: Cow::Borrowed(&message.text),
            ts: message.ts,
            seq: message.seq_for(viewer),
            client_msg_id: (viewer == message.sender)
                .then_some(Cow::Borrowed(message.client_msg_id.as_str())),
            erased: message.is_erased(),
            reply_to: lifecycle.reply_to.as_deref().map(QuoteView::of),
            edited_ts: lifecycle.edited_ts,
            deleted: lifecycle.deleted.as_deref().map(DeletionView::of),
            reactions: (!lifecycle.reactions.is_empty())
                .then(|| lifecycle.reactions.iter().map(ReactionView::of).collect()),
        }
    }

    /// The same message, owning its strings.
    pub fn into_owned(self) -> MessageView<'static> {
        MessageView {
            message_id: self.message_id,
            conversation_id: self.conversation_id,
            from: Cow::Owned(self.from.into_owned()),
            to: Cow::Owned(self.to.into_owned()),
            text: Cow::Owned(self.text.into_owned()),
            ts: self.ts,
            seq: self.seq,
            client_msg_id: self.client_msg_id.map(|id| Cow::Owned(id.into_owned())),
            erased: self.erased,
            reply_to: self.reply_to.map(QuoteView::into_owned),
            edited_ts: self.edited_ts,
            deleted: self.deleted.map(DeletionView::into_owned),
            reactions: self
                .reactions
                .map(|r| r.into_iter().map(ReactionView::into_owned).collect()),
        }
    }
}

/// Every frame the server sends. The server encodes it from borrowed data; a client decodes
/// it with [`ServerFrame::decode`], borrowing from the text.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        session_id: String,
        user: Cow<'a, str>,
        tenant: Cow<'a, str>,
        last_seq: u64,
        protocol: u32,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        client_msg_id: Cow<'a, str>,
        message_id: String,
        conversation_id: String,
        seq: u64,
        ts: i64,
        duplicate: bool,
    },
    Message(MessageView<'a>),
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        /// The other user, when the request named one (`with`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        with: Option<Cow<'a, str>>,
        conversation_id: String,
        messages: Vec<MessageView<'a>>,
        next_before: Option<String>,
        /// Protocol 3: the user's seq when the page was read; its messages are as they were
        /// then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
    },
    Sync {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        messages: Vec<MessageView<'a>>,
        /// Protocol 2: the stream's other events in the page (absent for protocol 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        events: Option<Vec<EventView<'a>>>,
        last_seq: u64,
        has_more: bool,
        /// Retention deleted the user's stream up to this seq, some of it after `after_seq`:
        /// a seq at or below it that no page returns is gone for good (absent otherwise).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pruned_until: Option<u64>,
    },
    SyncHint {
        last_seq: u64,
    },
    PresenceSnapshot {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        users: BTreeMap<Cow<'a, str>, PresenceStatus>,
    },
    Presence {
        user: Cow<'a, str>,
        status: PresenceStatus,
        ts: i64,
    },
    OnlineUsers {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        users: Vec<Cow<'a, str>>,
        truncated: bool,
    },
    Typing {
        from: Cow<'a, str>,
        /// Protocol 2: the group the typing is in (absent for a direct conversation).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation_id: Option<Cow<'a, str>>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        ts: i64,
    },
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        /// The new token's expiry, in Unix seconds.
        exp: u64,
    },
    Error {
        code: ErrorCode,
        message: Cow<'a, str>,
        retryable: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<Cow<'a, str>>,
    },
    /// Protocol 2: a committed stream event other than a message.
    Event(Box<EventView<'a>>),
    /// Protocol 2: the answer to `create_group`.
    GroupCreated {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        client_msg_id: Cow<'a, str>,
        conversation_id: Cow<'a, str>,
        duplicate: bool,
    },
    /// Protocol 2: a group change was committed (its events follow in the stream).
    Done {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        conversation_id: Cow<'a, str>,
    },
    /// Protocol 2: the answer to `members`.
    Members {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        conversation_id: Cow<'a, str>,
        members: Vec<MemberView<'a>>,
    },
    /// Protocol 2: the answer to `conversations`.
    Conversations {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        conversations: Vec<ConversationView<'a>>,
        next_before: Option<String>,
        total_unread: u64,
        /// Protocol 3: the user's seq when the page was read; everything in it is as it was
        /// then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
    },
    /// Protocol 2: the answer to `mark_read` and `mark_unread`: the marker after it.
    ReadState {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        conversation_id: Cow<'a, str>,
        read_marker: String,
        unread_count: u64,
    },
    /// Protocol 2: the answer to `read_receipts`.
    ReadReceipts {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        conversation_id: Cow<'a, str>,
        message_id: String,
        readers: Vec<ReaderView<'a>>,
    },
    /// Protocol 2: a live (not durable) read receipt of a group member.
    Receipt {
        conversation_id: Cow<'a, str>,
        user: Cow<'a, str>,
        message_id: String,
    },
    /// Protocol 3: the answer to `edit`, `delete`, `react` and `unreact`: the message as it
    /// is after the command (its event follows in the stream when it changed).
    MessageState {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<Cow<'a, ReqId>>,
        /// An `edit`'s `client_msg_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<Cow<'a, str>>,
        message: MessageView<'a>,
        /// An `edit` whose `client_msg_id` was seen before: nothing changed now.
        duplicate: bool,
        /// The seq the command's event took in the user's stream: `message` is as of it.
        /// Absent when the command changed nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("server frames contain only serializable data")
    }

    /// Reads a server frame as a client receives it, borrowing from `text` every string field
    /// that needs no unescaping ([`ServerFrame::into_owned`] for a frame that outlives the
    /// text). Fails on text that is not one of the frames above (a client should treat that as
    /// a protocol violation).
    ///
    /// The server writes `type` first, which lets a frame be read without an intermediate copy;
    /// any text that path refuses is read again by the derived implementation, which decides.
    pub fn decode(text: &str) -> Result<ServerFrame<'_>, serde_json::Error> {
        server_frame_decode::type_first(text).or_else(|_| serde_json::from_str(text))
    }

    /// Whether the frame may be dropped for a client that falls behind (presence and typing
    /// events: the client can ask again; nothing durable is lost).
    pub fn is_droppable(&self) -> bool {
        matches!(
            self,
            ServerFrame::Presence { .. } | ServerFrame::Typing { .. } | ServerFrame::Receipt { .. }
        )
    }
}

pub use crate::domain::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_text_bytes: 16,
        max_watched_users: 3,
    };

    fn err(text: &str) -> ProtocolError {
        decode(text, &LIMITS).unwrap_err()
    }

    #[test]
    fn a_send_decodes_with_its_req_id() {
        let cmd = decode(
            r#"{"type":"send","to":"bob","text":"hi","client_msg_id":"c1","req_id":7}"#,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(cmd.req_id, Some(ReqId::Number(7.into())));
        assert_eq!(
            cmd.kind,
            CommandKind::Send {
                to: "bob".into(),
                text: "hi".into(),
                client_msg_id: "c1".into()
            }
        );
    }

    #[test]
    fn errors_name_the_problem_and_keep_the_ids() {
        let e = err(r#"{"type":"send","to":"bob","client_msg_id":"c1","req_id":"r"}"#);
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("`text`"), "{}", e.message);
        assert_eq!(e.req_id, Some(ReqId::Text("r".into())));
        assert_eq!(e.client_msg_id.as_deref(), Some("c1"));

        let e = err(
            r#"{"type":"send","to":"bob","text":"this text is too long","client_msg_id":"c1"}"#,
        );
        assert_eq!(e.code, ErrorCode::TooLarge);

        assert!(err("{").message.starts_with("malformed JSON"));
        assert!(err("[1]").message.contains("JSON object"));
        assert!(err(r#"{"type":"fly"}"#).message.contains("unknown type"));
        assert!(err(r#"{"to":"x"}"#).message.contains("`type`"));
        assert!(
            err(r#"{"type":"send","to":"a b","text":"x","client_msg_id":"c"}"#)
                .message
                .contains("`to`")
        );
        assert!(
            err(r#"{"type":"history","with":"bob","limit":101}"#)
                .message
                .contains("`limit`")
        );
        assert!(
            err(r#"{"type":"history","with":"bob","before":"x"}"#)
                .message
                .contains("`before`")
        );
        assert!(err(r#"{"type":"sync"}"#).message.contains("`after_seq`"));
        assert!(
            err(r#"{"type":"ping","req_id":{}}"#)
                .message
                .contains("`req_id`")
        );
        assert!(
            err(r#"{"type":"presence_subscribe","users":["a","b","c","d"]}"#)
                .message
                .contains("limit")
        );
    }

    fn view(seq: u64, client_msg_id: Option<&'static str>) -> MessageView<'static> {
        MessageView {
            message_id: seq.to_string(),
            conversation_id: "alice:bob".into(),
            from: "alice".into(),
            to: "bob".into(),
            text: "h\u{e9}llo \"quoted\"\n\u{1F600}".into(),
            ts: 1_764_115_200_123,
            seq,
            client_msg_id: client_msg_id.map(Cow::Borrowed),
            erased: false,
            reply_to: None,
            edited_ts: None,
            deleted: None,
            reactions: None,
        }
    }

    /// One frame of every kind the server sends, with optional fields both set and absent.
    fn every_server_frame() -> Vec<ServerFrame<'static>> {
        let text: Cow<'_, ReqId> = Cow::Owned(ReqId::Text("r1".into()));
        let number: Cow<'_, ReqId> = Cow::Owned(ReqId::Number(7.into()));
        let event = |kind| -> &'static crate::event::Event {
            Box::leak(Box::new(crate::event::Event {
                event_id: 5,
                tenant: "default".into(),
                conversation_id: "g~0123456789abcdef01234567".into(),
                actor: "alice".into(),
                ts: 9,
                kind,
            }))
        };
        let renamed = event(crate::event::EventKind::GroupRenamed {
            title: "Team".into(),
        });
        let added = event(crate::event::EventKind::MembersAdded {
            users: vec!["bob".into(), "carol".into()],
        });
        let edited = event(crate::event::EventKind::MessageEdited {
            message_id: 7,
            text: "fixed \"it\"".into(),
        });
        let deleted = event(crate::event::EventKind::MessageDeleted {
            message_id: 7,
            moderated: true,
        });
        let reacted = event(crate::event::EventKind::ReactionAdded {
            message_id: 7,
            emoji: "👍".into(),
        });
        vec![
            ServerFrame::Welcome {
                session_id: "s1".into(),
                user: "alice".into(),
                tenant: "default".into(),
                last_seq: 3,
                protocol: PROTOCOL_VERSION,
            },
            ServerFrame::Ack {
                req_id: Some(number.clone()),
                client_msg_id: "c1".into(),
                message_id: "9".into(),
                conversation_id: "alice:bob".into(),
                seq: 4,
                ts: 5,
                duplicate: true,
            },
            ServerFrame::Ack {
                req_id: None,
                client_msg_id: "c2".into(),
                message_id: "10".into(),
                conversation_id: "alice:alice".into(),
                seq: 5,
                ts: 6,
                duplicate: false,
            },
            ServerFrame::Message(view(1, None)),
            ServerFrame::Message(view(2, Some("c9"))),
            ServerFrame::History {
                req_id: Some(text.clone()),
                with: Some("bob".into()),
                conversation_id: "alice:bob".into(),
                messages: vec![view(1, None), view(2, Some("c9"))],
                next_before: Some("1".into()),
                last_seq: None,
            },
            ServerFrame::History {
                req_id: None,
                with: None,
                conversation_id: "g~0123456789abcdef01234567".into(),
                messages: vec![],
                next_before: None,
                last_seq: Some(12),
            },
            ServerFrame::Sync {
                req_id: Some(text.clone()),
                messages: vec![view(1, None)],
                events: None,
                last_seq: 1,
                has_more: true,
                pruned_until: None,
            },
            ServerFrame::Sync {
                req_id: None,
                messages: vec![view(1, None)],
                events: Some(vec![EventView::of(renamed, 2)]),
                last_seq: 2,
                has_more: false,
                pruned_until: Some(1),
            },
            ServerFrame::Event(Box::new(EventView::of(renamed, 3))),
            ServerFrame::Event(Box::new(EventView::of(added, 4))),
            ServerFrame::Event(Box::new(EventView::of(edited, 5))),
            ServerFrame::Event(Box::new(EventView::of(deleted, 6))),
            ServerFrame::Event(Box::new(EventView::of(reacted, 7))),
            ServerFrame::GroupCreated {
                req_id: None,
                client_msg_id: "g1".into(),
                conversation_id: "g~0123456789abcdef01234567".into(),
                duplicate: false,
            },
            ServerFrame::Done {
                req_id: Some(text.clone()),
                conversation_id: "g~0123456789abcdef01234567".into(),
            },
            ServerFrame::Members {
                req_id: None,
                conversation_id: "g~0123456789abcdef01234567".into(),
                members: vec![MemberView {
                    user: "alice".into(),
                    role: "owner".into(),
                    joined_ts: 3,
                }],
            },
            ServerFrame::ReadState {
                req_id: None,
                conversation_id: "alice:bob".into(),
                read_marker: "7".into(),
                unread_count: 2,
            },
            ServerFrame::ReadReceipts {
                req_id: None,
                conversation_id: "alice:bob".into(),
                message_id: "7".into(),
                readers: vec![ReaderView {
                    user: "bob".into(),
                    read_marker: "9".into(),
                }],
            },
            ServerFrame::Receipt {
                conversation_id: "g~0123456789abcdef01234567".into(),
                user: "bob".into(),
                message_id: "7".into(),
            },
            ServerFrame::SyncHint { last_seq: 8 },
            ServerFrame::PresenceSnapshot {
                req_id: Some(number.clone()),
                users: [
                    ("bob".into(), PresenceStatus::Online),
                    ("carol".into(), PresenceStatus::Offline),
                ]
                .into(),
            },
            ServerFrame::Presence {
                user: "bob".into(),
                status: PresenceStatus::Offline,
                ts: 1,
            },
            ServerFrame::OnlineUsers {
                req_id: None,
                users: vec!["alice".into(), "bob".into()],
                truncated: true,
            },
            ServerFrame::Typing {
                from: "bob".into(),
                conversation_id: None,
            },
            ServerFrame::Typing {
                from: "bob".into(),
                conversation_id: Some("g~0123456789abcdef01234567".into()),
            },
            ServerFrame::Pong {
                req_id: Some(text.clone()),
                ts: 2,
            },
            ServerFrame::Refreshed {
                req_id: Some(number),
                exp: 1_764_115_200,
            },
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                retryable: true,
                req_id: Some(text),
                client_msg_id: Some("c1".into()),
            },
            ServerFrame::Error {
                code: ErrorCode::Forbidden,
                message: "no".into(),
                retryable: false,
                req_id: None,
                client_msg_id: None,
            },
        ]
    }

    #[test]
    fn every_server_frame_decodes_to_what_was_encoded() {
        for frame in every_server_frame() {
            let text = frame.encode();
            let decoded = ServerFrame::decode(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(decoded, frame, "{text}");
            assert_eq!(decoded.encode(), text);
        }
    }

    /// `text` (an encoded frame) with its `type` moved from first to last.
    fn with_type_last(text: &str) -> String {
        let value: Value = serde_json::from_str(text).unwrap();
        let tag = value["type"].as_str().unwrap();
        let fields = text
            .strip_prefix(&format!(r#"{{"type":"{tag}","#))
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap();
        format!(r#"{{{fields},"type":"{tag}"}}"#)
    }

    #[test]
    fn every_server_frame_decodes_alike_type_first_and_type_elsewhere() {
        for frame in every_server_frame() {
            let text = frame.encode();
            let fast = server_frame_decode::type_first(&text)
                .unwrap_or_else(|e| panic!("type first misses {text}: {e}"));
            assert_eq!(fast, frame, "{text}");
            let derived: ServerFrame<'_> = serde_json::from_str(&text).unwrap();
            assert_eq!(fast, derived, "{text}");
            assert_eq!(fast.into_owned(), frame, "{text}");

            let moved = with_type_last(&text);
            assert!(server_frame_decode::type_first(&moved).is_err(), "{moved}");
            assert_eq!(ServerFrame::decode(&moved).unwrap(), frame, "{moved}");
        }
    }

    #[test]
    fn a_decoded_frame_borrows_the_strings_that_need_no_unescaping() {
        let text = r#"{"type":"message","message_id":"9","conversation_id":"a:b","from":"alice","to":"bob","text":"h\u00e9 \"q\"","ts":1,"seq":4,"client_msg_id":"c1"}"#;
        let Ok(ServerFrame::Message(view)) = ServerFrame::decode(text) else {
            panic!("{text}");
        };
        assert!(matches!(view.from, Cow::Borrowed("alice")));
        assert!(matches!(view.to, Cow::Borrowed("bob")));
        assert!(matches!(view.client_msg_id, Some(Cow::Borrowed("c1"))));
        assert!(matches!(view.text, Cow::Owned(ref text) if text == "h\u{e9} \"q\""));

        let text = r#"{"type":"error","code":"too_large","message":"big","retryable":false,"client_msg_id":"c2"}"#;
        let Ok(ServerFrame::Error {
            message,
            client_msg_id,
            ..
        }) = ServerFrame::decode(text)
        else {
            panic!("{text}");
        };
        assert!(matches!(message, Cow::Borrowed("big")));
        assert!(matches!(client_msg_id, Some(Cow::Borrowed("c2"))));
    }

    #[test]
    fn text_the_type_first_path_refuses_is_decided_by_the_derived_one() {
        let pong = ServerFrame::Pong {
            req_id: None,
            ts: 5,
        };
        let spaced = r#" { "type" : "pong" , "ts" : 5 } "#;
        assert_eq!(server_frame_decode::type_first(spaced).unwrap(), pong);
        // A `type` that needs unescaping cannot be borrowed: the derived path reads it.
        let escaped = r#"{"type":"p\u006fng","ts":5}"#;
        assert!(server_frame_decode::type_first(escaped).is_err());
        assert_eq!(ServerFrame::decode(escaped).unwrap(), pong);
        for text in [
            r#"{"type":"ack","client_msg_id":"c1"}"#,
            r#"{"type":"pong","ts":"5"}"#,
            r#"{"type":"pong","ts":5} x"#,
            r#"{"ts":5}"#,
            r#"{"type":7,"ts":5}"#,
            r#"["pong",5]"#,
            "",
        ] {
            assert!(ServerFrame::decode(text).is_err(), "{text}");
            assert!(
                serde_json::from_str::<ServerFrame<'_>>(text).is_err(),
                "{text}"
            );
        }
    }

    #[test]
    fn the_documented_example_frames_decode() {
        for text in [
            r#"{"type":"welcome","session_id":"s2","user":"alice","tenant":"default","last_seq":0,"protocol":1}"#,
            r#"{"type":"ack","req_id":2,"client_msg_id":"1","message_id":"1","conversation_id":"alice:bob","seq":1,"ts":1764115200123,"duplicate":false}"#,
            r#"{"type":"history","req_id":"h1","with":"alice","conversation_id":"alice:bob","messages":[{"message_id":"1","conversation_id":"alice:bob","from":"alice","to":"bob","text":"hi","ts":1764115200123,"seq":1}],"next_before":null}"#,
            r#"{"type":"sync","req_id":"s1","messages":[],"last_seq":1,"has_more":false}"#,
            r#"{"type":"error","code":"bad_request","message":"`text` must not be empty","retryable":false,"req_id":4,"client_msg_id":"2"}"#,
            r#"{"type":"presence_snapshot","req_id":1,"users":{"bob":"online"}}"#,
        ] {
            let frame = ServerFrame::decode(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(frame.encode(), text);
        }
        assert!(ServerFrame::decode(r#"{"type":"teleport"}"#).is_err());
    }

    /// One command of every kind a client sends, with optional fields both set and absent.
    fn every_command() -> Vec<Command> {
        let kinds = vec![
            CommandKind::Send {
                to: "bob".into(),
                text: "h\u{e9}llo \"quoted\"".into(),
                client_msg_id: "c1".into(),
            },
            CommandKind::History {
                with: "bob".into(),
                before: Some(42),
                limit: 10,
            },
            CommandKind::History {
                with: "bob".into(),
                before: None,
                limit: DEFAULT_HISTORY_LIMIT,
            },
            CommandKind::Sync {
                after_seq: 0,
                limit: MAX_SYNC_LIMIT,
            },
            CommandKind::PresenceSubscribe {
                users: vec!["bob".into(), "carol".into()],
            },
            CommandKind::PresenceUnsubscribe {
                users: vec!["bob".into()],
            },
            CommandKind::OnlineUsers { limit: 5 },
            CommandKind::Typing { to: "bob".into() },
            CommandKind::Ping,
            CommandKind::Refresh {
                token: "a.b.c".into(),
            },
        ];
        let req_ids = [
            None,
            Some(ReqId::Text("r1".into())),
            Some(ReqId::Number(3.into())),
        ];
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Command {
                req_id: req_ids[i % req_ids.len()].clone(),
                kind,
            })
            .collect()
    }

    #[test]
    fn every_command_a_client_encodes_is_decoded_by_the_server_as_itself() {
        let limits = DecodeLimits {
            max_text_bytes: 4096,
            max_watched_users: 10,
        };
        for command in every_command() {
            let text = command.encode();
            let decoded = decode(&text, &limits).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(decoded, command, "{text}");
        }
    }

    #[test]
    fn commands_encode_as_the_protocol_documents_them() {
        let send = Command {
            req_id: Some(ReqId::Number(2.into())),
            kind: CommandKind::Send {
                to: "bob".into(),
                text: "hi".into(),
                client_msg_id: "1".into(),
            },
        };
        assert_eq!(
            send.encode(),
            r#"{"req_id":2,"type":"send","to":"bob","text":"hi","client_msg_id":"1"}"#
        );
        let history = Command {
            req_id: None,
            kind: CommandKind::History {
                with: "bob".into(),
                before: Some(17),
                limit: 50,
            },
        };
        assert_eq!(
            history.encode(),
            r#"{"type":"history","with":"bob","before":"17","limit":50}"#
        );
        let ping = Command {
            req_id: None,
            kind: CommandKind::Ping,
        };
        assert_eq!(ping.encode(), r#"{"type":"ping"}"#);
    }

    #[test]
    fn frames_encode_with_their_type() {
        let frame = ServerFrame::Pong {
            req_id: None,
            ts: 5,
        };
        assert_eq!(frame.encode(), r#"{"type":"pong","ts":5}"#);
        let e = ProtocolError::new(ErrorCode::Unavailable, "later");
        let v: Value = serde_json::from_str(&e.to_frame().encode()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "unavailable");
        assert_eq!(v["retryable"], true);
    }
}
