//! What a change to a message (an edit, a delete, a reaction) may do, and what a reply may
//! name: pure decisions over the rows a backend reads in its transaction.

use super::{Refusal, bad_request};
use peroxo_protocol::domain::validate_client_msg_id;
use peroxo_protocol::event::{EventKind, RefusalCode, Role};
use peroxo_protocol::lifecycle::{MessageLimits, MessageOp, validate_emoji};

/// A message as a change finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageRow {
    pub(crate) id: u64,
    pub(crate) sender: String,
    pub(crate) text: String,
    /// Commit time, in milliseconds since the Unix epoch.
    pub(crate) ts: i64,
    pub(crate) deleted: bool,
}

/// What the actor's reactions to the message are, for a `React`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ReactionTally {
    /// Whether the actor already made this reaction.
    pub(crate) made: bool,
    /// Whether anyone already reacted with this emoji.
    pub(crate) emoji_present: bool,
    /// The message's distinct emojis.
    pub(crate) distinct: u32,
    /// The actor's reactions to the message.
    pub(crate) mine: u32,
}

/// What a backend writes for an allowed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MessageEffect {
    Edit {
        text: String,
    },
    /// Erase the text, the reactions, and the message's count in unread counts and previews.
    Delete,
    React {
        emoji: String,
    },
    Unreact {
        emoji: String,
    },
}

impl MessageEffect {
    /// The event the effect makes (`message_edited` carries the new text).
    pub(crate) fn event(&self, message_id: u64, moderated: bool) -> EventKind {
        match self {
            MessageEffect::Edit { text } => EventKind::MessageEdited {
                message_id,
                text: text.clone(),
            },
            MessageEffect::Delete => EventKind::MessageDeleted {
                message_id,
                moderated,
            },
            MessageEffect::React { emoji } => EventKind::ReactionAdded {
                message_id,
                emoji: emoji.clone(),
            },
            MessageEffect::Unreact { emoji } => EventKind::ReactionRemoved {
                message_id,
                emoji: emoji.clone(),
            },
        }
    }
}

/// Checks the parts of a change that need no row (text, client_msg_id, emoji).
pub(crate) fn check_request(op: &MessageOp, max_text_bytes: usize) -> Result<(), Refusal> {
    match op {
        MessageOp::Edit {
            text,
            client_msg_id,
        } => {
            validate_client_msg_id(client_msg_id)
                .map_err(|e| bad_request(format!("client_msg_id {e}")))?;
            if text.is_empty() {
                return Err(bad_request("text must not be empty"));
            }
            if text.len() > max_text_bytes {
                return Err(bad_request(format!(
                    "text must be at most {max_text_bytes} bytes"
                )));
            }
            Ok(())
        }
        MessageOp::Delete => Ok(()),
        MessageOp::React { emoji } | MessageOp::Unreact { emoji } => {
            validate_emoji(emoji).map_err(|e| bad_request(format!("emoji {e}")))
        }
    }
}

/// Decides `actor`'s change to `message`: `None` when it changes
/// nothing, otherwise what to write and whether it is a moderator's delete. `role` is the
/// actor's role in a group (`None` in a direct conversation); `tally` matters for `React`
/// only; `now` is the commit time.
pub(crate) fn plan_message_change(
    actor: &str,
    message: &MessageRow,
    op: &MessageOp,
    role: Option<Role>,
    tally: ReactionTally,
    limits: &MessageLimits,
    now: i64,
) -> Result<Option<(MessageEffect, bool)>, Refusal> {
    let message_id = message.id;
    let is_author = message.sender == actor;
    match op {
        MessageOp::Delete => {
            let moderated = !is_author;
            if moderated && !role.is_some_and(Role::manages) {
                return Err(not_author(
                    message_id,
                    "only its author (or, in a group, an owner or admin) may delete it",
                ));
            }
            if message.deleted {
                return Ok(None);
            }
            Ok(Some((MessageEffect::Delete, moderated)))
        }
        MessageOp::Edit { text, .. } => {
            if !is_author {
                return Err(not_author(message_id, "only its author may edit it"));
            }
            if message.deleted || message.text.is_empty() {
                return Err(deleted(message_id));
            }
            let age = now.saturating_sub(message.ts);
            if limits.edit_window_ms > 0 && u64::try_from(age).unwrap_or(0) > limits.edit_window_ms
            {
                return Err(Refusal::new(
                    RefusalCode::EditWindowPassed,
                    format!(
                        "message {message_id} was sent {}s ago; messages may be edited for {}s",
                        age / 1000,
                        limits.edit_window_ms / 1000
                    ),
                ));
            }
            if *text == message.text {
                return Ok(None);
            }
            Ok(Some((MessageEffect::Edit { text: text.clone() }, false)))
        }
        MessageOp::React { emoji } => {
            if message.deleted {
                return Err(deleted(message_id));
            }
            if tally.made {
                return Ok(None);
            }
            if !tally.emoji_present && tally.distinct >= limits.max_reactions_per_message {
                return Err(Refusal::new(
                    RefusalCode::TooManyReactions,
                    format!(
                        "message {message_id} already has {} different reactions, the most \
                         allowed",
                        tally.distinct
                    ),
                ));
            }
            if tally.mine >= limits.max_reactions_per_user {
                return Err(Refusal::new(
                    RefusalCode::TooManyReactions,
                    format!(
                        "you already reacted {} times to message {message_id}, the most allowed",
                        tally.mine
                    ),
                ));
            }
            Ok(Some((
                MessageEffect::React {
                    emoji: emoji.clone(),
                },
                false,
            )))
        }
        MessageOp::Unreact { emoji } => {
            if message.deleted {
                return Err(deleted(message_id));
            }
            if !tally.made {
                return Ok(None);
            }
            Ok(Some((
                MessageEffect::Unreact {
                    emoji: emoji.clone(),
                },
                false,
            )))
        }
    }
}

fn not_author(message_id: u64, why: &str) -> Refusal {
    Refusal::new(
        RefusalCode::NotAuthor,
        format!("message {message_id}: {why}"),
    )
}

pub(crate) fn deleted(message_id: u64) -> Refusal {
    Refusal::new(
        RefusalCode::MessageDeleted,
        format!("message {message_id} was deleted"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: MessageLimits = MessageLimits {
        edit_window_ms: 60_000,
        max_reactions_per_message: 2,
        max_reactions_per_user: 2,
    };

    fn row(sender: &str) -> MessageRow {
        MessageRow {
            id: 7,
            sender: sender.into(),
            text: "hi".into(),
            ts: 1_000,
            deleted: false,
        }
    }

    fn plan(
        actor: &str,
        message: &MessageRow,
        op: MessageOp,
        role: Option<Role>,
        tally: ReactionTally,
        now: i64,
    ) -> Result<Option<(MessageEffect, bool)>, RefusalCode> {
        plan_message_change(actor, message, &op, role, tally, &LIMITS, now).map_err(|r| r.code)
    }

    fn edit(text: &str) -> MessageOp {
        MessageOp::Edit {
            text: text.into(),
            client_msg_id: "e1".into(),
        }
    }

    #[test]
    fn only_the_author_edits_within_the_window() {
        let m = row("alice");
        let none = ReactionTally::default();
        assert_eq!(
            plan("alice", &m, edit("hey"), None, none, 2_000),
            Ok(Some((MessageEffect::Edit { text: "hey".into() }, false)))
        );
        assert_eq!(
            plan("bob", &m, edit("hey"), Some(Role::Owner), none, 2_000),
            Err(RefusalCode::NotAuthor)
        );
        assert_eq!(
            plan("alice", &m, edit("hey"), None, none, 61_001),
            Err(RefusalCode::EditWindowPassed)
        );
        assert_eq!(plan("alice", &m, edit("hi"), None, none, 2_000), Ok(None));
        let forever = MessageLimits {
            edit_window_ms: 0,
            ..LIMITS
        };
        assert!(
            plan_message_change("alice", &m, &edit("x"), None, none, &forever, i64::MAX)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn the_author_or_a_group_manager_deletes_once() {
        let m = row("alice");
        let none = ReactionTally::default();
        let op = || MessageOp::Delete;
        assert_eq!(
            plan("alice", &m, op(), None, none, 0),
            Ok(Some((MessageEffect::Delete, false)))
        );
        assert_eq!(
            plan("bob", &m, op(), Some(Role::Admin), none, 0),
            Ok(Some((MessageEffect::Delete, true)))
        );
        assert_eq!(
            plan("bob", &m, op(), Some(Role::Member), none, 0),
            Err(RefusalCode::NotAuthor)
        );
        assert_eq!(
            plan("bob", &m, op(), None, none, 0),
            Err(RefusalCode::NotAuthor)
        );
        let gone = MessageRow {
            deleted: true,
            text: String::new(),
            ..m
        };
        assert_eq!(plan("alice", &gone, op(), None, none, 0), Ok(None));
        assert_eq!(
            plan("alice", &gone, edit("x"), None, none, 0),
            Err(RefusalCode::MessageDeleted)
        );
    }

    #[test]
    fn reactions_toggle_within_their_limits() {
        let m = row("alice");
        let react = || MessageOp::React {
            emoji: "👍".into()
        };
        let unreact = || MessageOp::Unreact {
            emoji: "👍".into()
        };
        let fresh = ReactionTally::default();
        assert!(matches!(
            plan("bob", &m, react(), None, fresh, 0),
            Ok(Some((MessageEffect::React { .. }, false)))
        ));
        let made = ReactionTally {
            made: true,
            emoji_present: true,
            distinct: 1,
            mine: 1,
        };
        assert_eq!(plan("bob", &m, react(), None, made, 0), Ok(None));
        assert_eq!(plan("bob", &m, unreact(), None, fresh, 0), Ok(None));
        assert!(matches!(
            plan("bob", &m, unreact(), None, made, 0),
            Ok(Some((MessageEffect::Unreact { .. }, false)))
        ));
        let full = ReactionTally {
            distinct: 2,
            ..fresh
        };
        assert_eq!(
            plan("bob", &m, react(), None, full, 0),
            Err(RefusalCode::TooManyReactions)
        );
        let joining = ReactionTally {
            emoji_present: true,
            distinct: 2,
            ..fresh
        };
        assert!(
            plan("bob", &m, react(), None, joining, 0)
                .unwrap()
                .is_some()
        );
        let busy = ReactionTally { mine: 2, ..fresh };
        assert_eq!(
            plan("bob", &m, react(), None, busy, 0),
            Err(RefusalCode::TooManyReactions)
        );
    }
}
