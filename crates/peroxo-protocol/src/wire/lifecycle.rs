//! Protocol 3: the commands that change a committed message (`edit`, `delete`, `react`,
//! `unreact`), and the parts of a message view that say what happened to it (its quote, edit,
//! deletion and reactions), as the rest of `wire` decodes and encodes them.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::conversations::{conversation_id, message_id};
use super::{CommandKind, DecodeLimits, Fields, ProtocolError, bad_request};
use crate::domain::{Deletion, Quote, ReactionCount, validate_client_msg_id};
use crate::lifecycle::validate_emoji;

/// The command types only protocol 3 knows.
pub(super) const LIFECYCLE_COMMAND_TYPES: &str = "edit, delete, react, unreact";

/// Decodes a command only protocol 3 knows; `None` when `kind` is none of them.
pub(super) fn decode(
    kind: &str,
    f: &mut Fields<'_>,
    limits: &DecodeLimits,
) -> Option<Result<CommandKind, ProtocolError>> {
    Some(match kind {
        "edit" => (|| {
            let client_msg_id = f.required_string("client_msg_id")?;
            validate_client_msg_id(&client_msg_id)
                .map_err(|e| bad_request(format!("`client_msg_id` {e}")))?;
            let (conversation_id, message_id) = target(f)?;
            Ok(CommandKind::Edit {
                conversation_id,
                message_id,
                text: f.text(limits)?,
                client_msg_id,
            })
        })(),
        "delete" => target(f).map(|(conversation_id, message_id)| CommandKind::Delete {
            conversation_id,
            message_id,
        }),
        "react" => (|| {
            let (conversation_id, message_id) = target(f)?;
            Ok(CommandKind::React {
                conversation_id,
                message_id,
                emoji: emoji(f)?,
            })
        })(),
        "unreact" => (|| {
            let (conversation_id, message_id) = target(f)?;
            Ok(CommandKind::Unreact {
                conversation_id,
                message_id,
                emoji: emoji(f)?,
            })
        })(),
        _ => return None,
    })
}

/// The message a command changes: its conversation and its id.
fn target(f: &mut Fields<'_>) -> Result<(String, u64), ProtocolError> {
    let conversation_id = conversation_id(f)?;
    let message_id =
        message_id(f, "message_id")?.ok_or_else(|| bad_request("missing field `message_id`"))?;
    Ok((conversation_id, message_id))
}

fn emoji(f: &mut Fields<'_>) -> Result<String, ProtocolError> {
    let emoji = f.required_string("emoji")?;
    validate_emoji(&emoji).map_err(|e| bad_request(format!("`emoji` {e}")))?;
    Ok(emoji)
}

/// The message a reply refers to, as a `message` shows it.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteView<'a> {
    pub message_id: String,
    /// Its sender (empty when retention has deleted it).
    pub from: Cow<'a, str>,
    /// Its first 100 characters as they are now (empty once it is deleted).
    pub excerpt: Cow<'a, str>,
    /// It was deleted (for everyone, or by retention).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl<'a> QuoteView<'a> {
    pub fn of(quote: &'a Quote) -> Self {
        Self {
            message_id: quote.message_id.to_string(),
            from: Cow::Borrowed(&quote.sender),
            excerpt: Cow::Borrowed(&quote.excerpt),
            deleted: quote.deleted,
        }
    }

    pub fn into_owned(self) -> QuoteView<'static> {
        QuoteView {
            message_id: self.message_id,
            from: Cow::Owned(self.from.into_owned()),
            excerpt: Cow::Owned(self.excerpt.into_owned()),
            deleted: self.deleted,
        }
    }
}

/// Who deleted a message for everyone, and when.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionView<'a> {
    pub by: Cow<'a, str>,
    pub ts: i64,
}

impl<'a> DeletionView<'a> {
    pub fn of(deletion: &'a Deletion) -> Self {
        Self {
            by: Cow::Borrowed(&deletion.by),
            ts: deletion.ts,
        }
    }

    pub fn into_owned(self) -> DeletionView<'static> {
        DeletionView {
            by: Cow::Owned(self.by.into_owned()),
            ts: self.ts,
        }
    }
}

/// One emoji's reactions to a message, as the receiving user sees them.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionView<'a> {
    pub emoji: Cow<'a, str>,
    pub count: u32,
    /// The receiving user is among those who reacted with it.
    pub mine: bool,
}

impl<'a> ReactionView<'a> {
    pub fn of(reaction: &'a ReactionCount) -> Self {
        Self {
            emoji: Cow::Borrowed(&reaction.emoji),
            count: reaction.count,
            mine: reaction.mine,
        }
    }

    pub fn into_owned(self) -> ReactionView<'static> {
        ReactionView {
            emoji: Cow::Owned(self.emoji.into_owned()),
            count: self.count,
            mine: self.mine,
        }
    }
}
