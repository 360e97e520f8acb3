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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Lifecycle, StoredMessage};
    use crate::wire::{Command, ErrorCode, MessageView, ServerFrame, decode};

    const LIMITS: DecodeLimits = DecodeLimits {
        max_text_bytes: 16,
        max_watched_users: 3,
    };

    fn every_command() -> Vec<CommandKind> {
        vec![
            CommandKind::Edit {
                conversation_id: "alice:bob".into(),
                message_id: 7,
                text: "fixed".into(),
                client_msg_id: "e1".into(),
            },
            CommandKind::Delete {
                conversation_id: "g~0123456789abcdef01234567".into(),
                message_id: 8,
            },
            CommandKind::React {
                conversation_id: "alice:bob".into(),
                message_id: 9,
                emoji: "👍".into(),
            },
            CommandKind::Unreact {
                conversation_id: "alice:bob".into(),
                message_id: 9,
                emoji: ":+1:".into(),
            },
            CommandKind::SendToConversation {
                conversation_id: "alice:bob".into(),
                text: "yes".into(),
                client_msg_id: "c2".into(),
                reply_to: Some(7),
            },
        ]
    }

    #[test]
    fn every_command_of_protocol_3_is_decoded_as_a_client_encodes_it_and_needs_protocol_3() {
        for kind in every_command() {
            assert_eq!(kind.needs_protocol(), 3, "{kind:?}");
            let command = Command {
                req_id: None,
                kind: kind.clone(),
            };
            assert_eq!(decode(&command.encode(), &LIMITS).unwrap().kind, kind);
        }
        assert_eq!(
            Command {
                req_id: None,
                kind: every_command().remove(0)
            }
            .encode(),
            r#"{"type":"edit","conversation_id":"alice:bob","message_id":"7","text":"fixed","client_msg_id":"e1"}"#
        );
    }

    #[test]
    fn bad_changes_are_refused_with_the_field_they_break() {
        let error = |text: &str| decode(text, &LIMITS).unwrap_err();
        let e = error(
            r#"{"type":"react","conversation_id":"alice:bob","message_id":"7","emoji":"a b"}"#,
        );
        assert!(e.message.contains("`emoji`"), "{e:?}");
        let e = error(r#"{"type":"delete","conversation_id":"alice:bob"}"#);
        assert!(e.message.contains("`message_id`"), "{e:?}");
        let e = error(
            r#"{"type":"edit","conversation_id":"alice:bob","message_id":"7","text":"far too long for it","client_msg_id":"e1"}"#,
        );
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert_eq!(e.client_msg_id.as_deref(), Some("e1"));
        let e =
            error(r#"{"type":"send","to":"bob","text":"x","client_msg_id":"c1","reply_to":"7"}"#);
        assert!(e.message.contains("reply_to"), "{e:?}");
        let e = error(
            r#"{"type":"send","conversation_id":"alice:bob","text":"x","client_msg_id":"c1","reply_to":7}"#,
        );
        assert!(e.message.contains("reply_to"), "{e:?}");
    }

    #[test]
    fn older_protocols_see_a_message_without_what_protocol_3_adds() {
        let message = StoredMessage {
            message_id: 7,
            tenant: "t".into(),
            sender: "alice".into(),
            recipient: "bob".into(),
            client_msg_id: "c1".into(),
            text: String::new(),
            ts: 1,
            sender_seq: 1,
            recipient_seq: 2,
            lifecycle: Lifecycle {
                reply_to: Some(Box::new(Quote {
                    message_id: 3,
                    sender: "bob".into(),
                    excerpt: "hi".into(),
                    deleted: false,
                })),
                edited_ts: Some(5),
                deleted: Some(Box::new(Deletion {
                    by: "alice".into(),
                    ts: 6,
                })),
                reactions: vec![ReactionCount {
                    emoji: "👍".into(),
                    count: 1,
                    mine: true,
                }],
            },
        };
        let new = MessageView::for_protocol(&message, "bob", 3);
        assert!(
            !new.erased,
            "a deleted message is not an erased one in protocol 3"
        );
        let frame = ServerFrame::Message(new.clone());
        assert_eq!(ServerFrame::decode(&frame.encode()).unwrap(), frame);
        let old = MessageView::for_protocol(&message, "bob", 2);
        assert!(old.erased);
        assert_eq!(
            ServerFrame::Message(old).encode(),
            r#"{"type":"message","message_id":"7","conversation_id":"alice:bob","from":"alice","to":"bob","text":"","ts":1,"seq":2,"erased":true}"#
        );
        let state = ServerFrame::MessageState {
            req_id: None,
            client_msg_id: Some("e1".into()),
            message: new,
            duplicate: false,
            seq: Some(4),
        };
        assert_eq!(ServerFrame::decode(&state.encode()).unwrap(), state);
        assert_eq!(state.clone().into_owned(), state);
    }
}
