//! The few frames of protocol v1 the load generator speaks, seen from the client side.
//!
//! The server's `protocol` module encodes server frames and decodes commands; a client needs
//! the opposite, and only the handful of fields it measures with. Decoding borrows from the
//! frame text and ignores fields it does not know, so a richer server stays compatible.
//!
//! The benchmark identifies each message by a global index: the `client_msg_id` of a send is
//! the index in decimal, and the text starts with `m<index>` so that the recipient (which does
//! not see `client_msg_id`) can match what it receives.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// A server frame, reduced to what the benchmark looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Frame<'a> {
    /// The first frame of a session.
    Welcome { last_seq: u64 },
    /// The user's seq moved while the session was being set up.
    SyncHint { last_seq: u64 },
    /// A send was committed; `seq` is the sender's.
    Ack {
        client_msg_id: Cow<'a, str>,
        seq: u64,
        duplicate: bool,
    },
    /// A message delivered live; `seq` is the recipient's.
    Message {
        from: Cow<'a, str>,
        to: Cow<'a, str>,
        text: Cow<'a, str>,
        seq: u64,
    },
    /// A command was refused.
    Error {
        code: Cow<'a, str>,
        client_msg_id: Option<Cow<'a, str>>,
    },
    /// Any other frame type (presence, pong, ...), by name.
    Other(Cow<'a, str>),
}

/// Every field the benchmark reads, all optional: which are present depends on `type`.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    last_seq: Option<u64>,
    seq: Option<u64>,
    duplicate: Option<bool>,
    #[serde(borrow)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

/// Why a server frame could not be understood.
#[derive(Debug, thiserror::Error)]
pub(super) enum DecodeError {
    #[error("not a JSON frame: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a `{kind}` frame without `{field}`")]
    Missing {
        kind: &'static str,
        field: &'static str,
    },
}

/// Decodes one server text frame.
pub(super) fn decode(text: &str) -> Result<Frame<'_>, DecodeError> {
    let raw: RawFrame<'_> = serde_json::from_str(text)?;
    let missing = |kind, field| DecodeError::Missing { kind, field };
    Ok(match raw.kind.as_ref() {
        "welcome" => Frame::Welcome {
            last_seq: raw.last_seq.ok_or(missing("welcome", "last_seq"))?,
        },
        "sync_hint" => Frame::SyncHint {
            last_seq: raw.last_seq.ok_or(missing("sync_hint", "last_seq"))?,
        },
        "ack" => Frame::Ack {
            client_msg_id: raw.client_msg_id.ok_or(missing("ack", "client_msg_id"))?,
            seq: raw.seq.ok_or(missing("ack", "seq"))?,
            duplicate: raw.duplicate.unwrap_or(false),
        },
        "message" => Frame::Message {
            from: raw.from.ok_or(missing("message", "from"))?,
            to: raw.to.ok_or(missing("message", "to"))?,
            text: raw.text.ok_or(missing("message", "text"))?,
            seq: raw.seq.ok_or(missing("message", "seq"))?,
        },
        "error" => Frame::Error {
            code: raw.code.ok_or(missing("error", "code"))?,
            client_msg_id: raw.client_msg_id,
        },
        _ => Frame::Other(raw.kind),
    })
}

/// A `send` command.
#[derive(Serialize)]
struct Send<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    to: &'a str,
    text: &'a str,
    client_msg_id: &'a str,
}

/// The `send` frame for message `index` to user `to`, with a text of at least `text_bytes`
/// bytes (more only when `m<index>` alone is longer).
pub(super) fn send_frame(index: u32, to: &str, text_bytes: usize) -> String {
    let client_msg_id = index.to_string();
    let text = message_text(index, text_bytes);
    let send = Send {
        kind: "send",
        to,
        text: &text,
        client_msg_id: &client_msg_id,
    };
    serde_json::to_string(&send).expect("a send frame holds only strings")
}

/// The text of message `index`: `m<index>`, then a space and filler up to `text_bytes`.
fn message_text(index: u32, text_bytes: usize) -> String {
    let mut text = format!("m{index}");
    if text.len() < text_bytes {
        text.push(' ');
    }
    while text.len() < text_bytes {
        text.push('x');
    }
    text
}

/// The message index a `client_msg_id` carries, if it is one of ours.
pub(super) fn index_of_client_msg_id(client_msg_id: &str) -> Option<u32> {
    client_msg_id.parse().ok()
}

/// The message index a received text carries, if it is one of ours.
pub(super) fn index_of_text(text: &str) -> Option<u32> {
    let rest = text.strip_prefix('m')?;
    let digits = rest.split(' ').next()?;
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_frame_carries_its_index_in_the_id_and_the_text() {
        let frame = send_frame(1234, "u7", 32);
        let value: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["type"], "send");
        assert_eq!(value["to"], "u7");
        assert_eq!(value["client_msg_id"], "1234");
        let text = value["text"].as_str().unwrap();
        assert_eq!(text.len(), 32);
        assert_eq!(index_of_text(text), Some(1234));
        assert_eq!(index_of_client_msg_id("1234"), Some(1234));
    }

    #[test]
    fn a_text_shorter_than_its_index_keeps_the_index() {
        assert_eq!(message_text(98765, 1), "m98765");
        assert_eq!(index_of_text("m98765"), Some(98765));
        assert_eq!(index_of_text("hello"), None);
    }

    #[test]
    fn server_frames_decode_to_what_the_benchmark_needs() {
        let ack = r#"{"type":"ack","client_msg_id":"5","message_id":"9","conversation_id":"a:b","seq":3,"ts":1,"duplicate":false}"#;
        assert_eq!(
            decode(ack).unwrap(),
            Frame::Ack {
                client_msg_id: "5".into(),
                seq: 3,
                duplicate: false
            }
        );
        let message = r#"{"type":"message","message_id":"9","conversation_id":"a:b","from":"u1","to":"u2","text":"m5 xx","ts":1,"seq":4}"#;
        assert!(matches!(
            decode(message).unwrap(),
            Frame::Message { seq: 4, .. }
        ));
        let error = r#"{"type":"error","code":"rate_limited","message":"slow down","retryable":true,"client_msg_id":"6"}"#;
        assert_eq!(
            decode(error).unwrap(),
            Frame::Error {
                code: "rate_limited".into(),
                client_msg_id: Some("6".into())
            }
        );
        let welcome = r#"{"type":"welcome","session_id":"s1","user":"u","tenant":"t","last_seq":0,"protocol":1}"#;
        assert_eq!(decode(welcome).unwrap(), Frame::Welcome { last_seq: 0 });
        assert!(matches!(
            decode(r#"{"type":"pong","ts":1}"#).unwrap(),
            Frame::Other(_)
        ));
        assert!(decode(r#"{"type":"ack"}"#).is_err());
        assert!(decode("not json").is_err());
    }
}
