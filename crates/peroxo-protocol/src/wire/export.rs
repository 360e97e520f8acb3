//! The lines of `peroxo user export`: one JSON object per line, each with a `type`, in the
//! shapes clients already know (a conversation as in the `conversations` frame, a message and
//! an event as in `sync`, seen by the exported user).
//!
//! - `user`: who was exported, their current seq, and when (the first line).
//! - `conversation`: each conversation the user is in, with the user's read state of it
//!   (`read_marker`, `unread_count`) and, for a group, the user's role.
//! - `message`: each message of the user's stream, sent or received, by seq.
//! - `event`: each other entry of the stream (group changes, read markers and receipts).

use serde::Serialize;

use super::{ConversationView, EventView, MessageView};

/// One line of an export.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExportLine<'a> {
    User {
        tenant: &'a str,
        user: &'a str,
        last_seq: u64,
        /// Milliseconds since the Unix epoch.
        exported_ts: i64,
    },
    Conversation(ConversationView<'a>),
    Message(MessageView<'a>),
    Event(EventView<'a>),
}

impl ExportLine<'_> {
    /// The line as JSON, without its newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an export line always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn every_line_names_its_type_first_and_keeps_the_frame_fields() {
        let user = ExportLine::User {
            tenant: "t",
            user: "alice",
            last_seq: 3,
            exported_ts: 5,
        };
        assert_eq!(
            user.to_json(),
            r#"{"type":"user","tenant":"t","user":"alice","last_seq":3,"exported_ts":5}"#
        );
        let message = ExportLine::Message(MessageView {
            message_id: "7".to_owned(),
            conversation_id: "alice:bob".to_owned(),
            from: Cow::Borrowed("bob"),
            to: Cow::Borrowed("alice"),
            text: Cow::Borrowed(""),
            ts: 1,
            seq: 2,
            client_msg_id: None,
            erased: true,
            reply_to: None,
            edited_ts: None,
            deleted: None,
            reactions: None,
        });
        assert_eq!(
            message.to_json(),
            r#"{"type":"message","message_id":"7","conversation_id":"alice:bob","from":"bob","to":"alice","text":"","ts":1,"seq":2,"erased":true}"#
        );
    }
}
