//! Plain Rust types for what PerOXO is about: tenants, users and messages (direct, or to a
//! group: see `event` and `conversation`).
//!
//! Every other module speaks these types. The wire format (JSON) lives in `protocol`, the
//! storage format (protobuf, SQL) in `storage`; neither leaks past its module.

use std::fmt;
use std::sync::Arc;

use crate::event::{Refusal, StreamEvent, StreamSeq, is_group_id};

/// The longest tenant or user id, in bytes (ids are ASCII, so also in characters).
pub const MAX_ID_LEN: usize = 64;
/// The longest `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 64;
/// The tenant a client lands in when it names none.
pub const DEFAULT_TENANT: &str = "default";

/// Checks a tenant or user id: 1–64 characters of `[A-Za-z0-9._@-]`.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("must be at most {MAX_ID_LEN} characters"));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')))
    {
        return Err(format!(
            "contains {bad:?}; only letters, digits and . _ @ - are allowed"
        ));
    }
    Ok(())
}

/// Checks a `client_msg_id`: 1–64 bytes, no control characters.
pub fn validate_client_msg_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if id.len() > MAX_CLIENT_MSG_ID_LEN {
        return Err(format!("must be at most {MAX_CLIENT_MSG_ID_LEN} bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

/// Identifies one WebSocket connection for the life of the process. Stays the same when the
/// session actor serving it is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl SessionId {
    /// A process-wide unique id.
    pub fn next() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// One user of one tenant: the unit of routing, presence and sequence numbers.
///
/// Cheap to clone: every clone shares one allocation. A connection's key is held by its
/// session, its admission, its Router entries and its log record, so that matters for the
/// memory an idle connection costs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey(Arc<UserKeyParts>);

/// What a [`UserKey`] names (its fields read through the key: `key.tenant`, `key.user`).
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKeyParts {
    pub tenant: String,
    pub user: String,
}

impl UserKey {
    pub fn new(tenant: impl Into<String>, user: impl Into<String>) -> Self {
        Self(Arc::new(UserKeyParts {
            tenant: tenant.into(),
            user: user.into(),
        }))
    }

    /// The same tenant, another user.
    pub fn peer(&self, user: impl Into<String>) -> Self {
        Self::new(self.tenant.clone(), user)
    }
}

impl std::ops::Deref for UserKey {
    type Target = UserKeyParts;

    fn deref(&self) -> &UserKeyParts {
        &self.0
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.user)
    }
}

/// The id of the conversation between two users: both ids, sorted, joined by `:` (a character
/// ids cannot contain, so the id is unambiguous).
pub fn conversation_id(a: &str, b: &str) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    format!("{first}:{second}")
}

/// Milliseconds since the Unix epoch: message commit times and `ts` fields.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A message as a client submits it, before it is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub tenant: String,
    pub sender: String,
    /// A user id (a direct message) or a group id (a message to every member of the group).
    pub recipient: String,
    pub client_msg_id: String,
    pub text: String,
    /// The message this one replies to: a message of the same conversation the sender can
    /// see (protocol 3).
    pub reply_to: Option<u64>,
}

impl NewMessage {
    /// The bytes of its text and identifiers: what it adds to an append call.
    pub fn content_bytes(&self) -> usize {
        self.tenant.len()
            + self.sender.len()
            + self.recipient.len()
            + self.client_msg_id.len()
            + self.text.len()
    }

    /// Checks everything the storage relies on; the gateway checks the same before sending.
    pub fn validate(&self, max_text_bytes: usize) -> Result<(), String> {
        validate_id(&self.tenant).map_err(|e| format!("tenant {e}"))?;
        validate_id(&self.sender).map_err(|e| format!("sender {e}"))?;
        if !is_group_id(&self.recipient) {
            validate_id(&self.recipient).map_err(|e| format!("recipient {e}"))?;
        }
        validate_client_msg_id(&self.client_msg_id).map_err(|e| format!("client_msg_id {e}"))?;
        if self.text.is_empty() {
            return Err("text must not be empty".to_owned());
        }
        if self.text.len() > max_text_bytes {
            return Err(format!("text must be at most {max_text_bytes} bytes"));
        }
        Ok(())
    }
}

/// A committed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Unique, and increasing in commit order within a conversation: it orders history and is
    /// the history cursor.
    pub message_id: u64,
    pub tenant: String,
    pub sender: String,
    /// The recipient user, or the group id of a group message.
    pub recipient: String,
    pub client_msg_id: String,
    pub text: String,
    /// Commit time in milliseconds since the Unix epoch.
    pub ts: i64,
    /// The sender's seq for this message.
    pub sender_seq: u64,
    /// The recipient's seq for this message (equal to `sender_seq` for a message to oneself).
    /// For a group message, the seq of the member whose stream or history this copy was read
    /// from (0 when it was read for no one, as in an append outcome: the members' seqs are
    /// in [`AppendOutcome::Stored::members`]).
    pub recipient_seq: u64,
    /// What happened to the message since it was sent, and what it replies to (protocol 3).
    pub lifecycle: Lifecycle,
}

/// What a message carries besides what its sender sent: the message it replies to, and what
/// edits, deletes and reactions made of it since. Empty for a plain message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lifecycle {
    // The rare parts are boxed: a message is carried in actor messages and batches, and most
    // messages have neither.
    pub reply_to: Option<Box<Quote>>,
    /// When its author last edited it (milliseconds since the Unix epoch).
    pub edited_ts: Option<i64>,
    /// Set once it is deleted for everyone: its text is then empty.
    pub deleted: Option<Box<Deletion>>,
    /// Its reactions, one per emoji, in the order each emoji first reached it.
    pub reactions: Vec<ReactionCount>,
}

impl Lifecycle {
    /// Whether the message carries nothing besides what its sender sent.
    pub fn is_empty(&self) -> bool {
        self.reply_to.is_none()
            && self.edited_ts.is_none()
            && self.deleted.is_none()
            && self.reactions.is_empty()
    }
}

/// The message a reply refers to, as it is now: the excerpt follows its edits, and is empty
/// once it is deleted (or its sender's data erased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub message_id: u64,
    /// Its sender (empty when retention has deleted it).
    pub sender: String,
    /// Its first [`QUOTE_EXCERPT_CHARS`] characters.
    pub excerpt: String,
    /// It was deleted for everyone, or retention deleted it.
    pub deleted: bool,
}

/// The length of a reply's quoted excerpt, in characters.
pub const QUOTE_EXCERPT_CHARS: usize = 100;

/// Who deleted a message for everyone, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub by: String,
    pub ts: i64,
}

/// One emoji's reactions to a message, as one user sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionCount {
    pub emoji: String,
    pub count: u32,
    /// Whether the viewer is among those who reacted with it.
    pub mine: bool,
}

impl StoredMessage {
    /// Whether the sender's data was erased: a sent message's text is never empty otherwise,
    /// unless it was deleted for everyone (see [`StoredMessage::is_deleted`]).
    pub fn is_erased(&self) -> bool {
        self.text.is_empty() && !self.is_deleted()
    }

    /// Whether the message was deleted for everyone: a tombstone with an empty text.
    pub fn is_deleted(&self) -> bool {
        self.lifecycle.deleted.is_some()
    }

    pub fn conversation_id(&self) -> String {
        if self.is_group() {
            self.recipient.clone()
        } else {
            conversation_id(&self.sender, &self.recipient)
        }
    }

    /// Whether this is a message to a group.
    pub fn is_group(&self) -> bool {
        is_group_id(&self.recipient)
    }

    /// The seq this message has in `user`'s stream.
    pub fn seq_for(&self, user: &str) -> u64 {
        if user == self.sender {
            self.sender_seq
        } else {
            self.recipient_seq
        }
    }

    pub fn sender_key(&self) -> UserKey {
        UserKey::new(self.tenant.clone(), self.sender.clone())
    }

    pub fn recipient_key(&self) -> UserKey {
        UserKey::new(self.tenant.clone(), self.recipient.clone())
    }
}

/// What became of one message of an append batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "an outcome lives as long as its batch; boxing the message would cost an \
              allocation for every message stored"
)]
pub enum AppendOutcome {
    /// Stored now, or earlier when `duplicate` (then `message` is the original).
    Stored {
        message: StoredMessage,
        duplicate: bool,
        /// For a group message stored now: the seq it took in every member's stream but the
        /// sender's, in the order of the members' user ids. Empty otherwise.
        members: Vec<StreamSeq>,
    },
    /// Refused (an invalid message, a group the sender is not a member of, ...); nothing was
    /// stored.
    Rejected(Refusal),
}

/// A page of one conversation, oldest to newest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryPage {
    pub messages: Vec<StoredMessage>,
    /// True when messages older than the first one here exist.
    pub has_more: bool,
    /// The user's current seq when the page was read: the messages are as they were then
    /// (every change with a seq up to it is in them, none after).
    pub last_seq: u64,
}

/// The stream of one user after a given seq, ascending: its messages and its other events,
/// two lists whose seqs together are gapless (when the page was asked for everything) above
/// `pruned_until`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncPage {
    pub messages: Vec<StoredMessage>,
    pub events: Vec<StreamEvent>,
    /// The user's current seq.
    pub last_seq: u64,
    pub has_more: bool,
    /// Retention deleted entries of this stream up to this seq, some of them after the
    /// seq the page was asked from: a seq at or below it that no page returns is gone for
    /// good. 0 when nothing after the asked seq was deleted.
    pub pruned_until: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_alphabet_only() {
        assert!(validate_id("alice.B_9@x-y").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a b").is_err());
        assert!(validate_id("a:b").is_err());
        assert!(validate_id(&"a".repeat(64)).is_ok());
        assert!(validate_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn conversation_id_is_the_same_from_both_sides() {
        assert_eq!(conversation_id("bob", "alice"), "alice:bob");
        assert_eq!(conversation_id("alice", "bob"), "alice:bob");
    }
}
