//! What happens to a message after it is sent (protocol 3): its author edits it, its author
//! (or a group's owner or admin) deletes it for everyone, anyone who can see it reacts to it.
//! Each change is an event of the streams of everyone who can see the message, committed with
//! the change; replies are part of `send` (see [`NewMessage::reply_to`](crate::domain::NewMessage)).

use crate::domain::{StoredMessage, UserKey};
use crate::event::Fanout;

/// The longest reaction, in bytes: an emoji with its modifiers, or a short code like `:+1:`.
pub const MAX_EMOJI_BYTES: usize = 32;
/// The most distinct reactions a message may hold, whatever the configuration says.
pub const MAX_REACTIONS_PER_MESSAGE: u32 = 100;

/// Checks a reaction: 1–[`MAX_EMOJI_BYTES`] bytes, no whitespace, no control characters.
pub fn validate_emoji(emoji: &str) -> Result<(), String> {
    if emoji.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if emoji.len() > MAX_EMOJI_BYTES {
        return Err(format!("must be at most {MAX_EMOJI_BYTES} bytes"));
    }
    if emoji.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_owned());
    }
    Ok(())
}

/// A change to a committed message by `actor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageChange {
    pub actor: UserKey,
    /// The conversation the message is in (as the client names it: a check, not a lookup).
    pub conversation_id: String,
    pub message_id: u64,
    pub op: MessageOp,
    pub limits: MessageLimits,
}

/// What a [`MessageChange`] does. Who may do it:
/// - `Edit`: the author, within the edit window, while the message is not deleted;
/// - `Delete`: the author; in a group, also its owner and admins (a moderated delete);
/// - `React`, `Unreact`: anyone who can see the message, while it is not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOp {
    /// Replaces the text. Idempotent per (tenant, actor, `client_msg_id`): an edit seen before
    /// changes nothing and answers `duplicate`.
    Edit { text: String, client_msg_id: String },
    /// Erases the text for everyone; the message stays a tombstone. Deleting a deleted message
    /// changes nothing.
    Delete,
    /// Adds the actor's reaction `emoji`; a reaction the actor has already made changes nothing.
    React { emoji: String },
    /// Takes the actor's reaction `emoji` back; one it never made changes nothing.
    Unreact { emoji: String },
}

impl MessageOp {
    pub fn name(&self) -> &'static str {
        match self {
            MessageOp::Edit { .. } => "edit",
            MessageOp::Delete => "delete",
            MessageOp::React { .. } => "react",
            MessageOp::Unreact { .. } => "unreact",
        }
    }
}

/// The limits a change is checked against, from `[messages]` in the gateway's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// How long after sending its author may edit a message, in milliseconds; 0: forever.
    pub edit_window_ms: u64,
    /// The most distinct reactions (emojis) one message may hold.
    pub max_reactions_per_message: u32,
    /// The most reactions one user may make to one message.
    pub max_reactions_per_user: u32,
}

/// A committed [`MessageChange`]: the message as it is now, seen by the actor, and the event
/// the change made (`None` when it changed nothing, or when `duplicate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageOutcome {
    pub message: StoredMessage,
    pub event: Option<Fanout>,
    /// An edit whose `client_msg_id` was seen before: nothing changed now.
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_are_short_and_without_blanks() {
        assert!(validate_emoji("👍").is_ok());
        assert!(validate_emoji(":+1:").is_ok());
        assert!(validate_emoji("👩‍👩‍👧‍👦").is_ok());
        assert!(validate_emoji("").is_err());
        assert!(validate_emoji("a b").is_err());
        assert!(validate_emoji("a\n").is_err());
        assert!(validate_emoji(&"x".repeat(MAX_EMOJI_BYTES + 1)).is_err());
    }
}
