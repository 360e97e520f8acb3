//! The envelopes gateway nodes exchange over NATS, and their JSON form.
//!
//! This is the only file of the cluster that knows the wire format: every envelope is a JSON
//! object tagged by `kind` (`message`, `frame`, `typing`, `presence`, `heartbeat`, `snapshot`, `hello`,
//! `resync`, `disconnect`, `restriction`, `bye`). A committed message travels as a [`WireMessage`], which converts to and
//! from the [`StoredMessage`] the rest of the gateway speaks.

use peroxo_protocol::domain::{Lifecycle, Quote, StoredMessage};
use serde::{Deserialize, Serialize};

/// Users per presence snapshot envelope (a snapshot may span several).
const SNAPSHOT_CHUNK: usize = 2_000;

/// What nodes say to each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Envelope {
    /// A committed message, for its participants' sessions.
    Message {
        origin: String,
        message: WireMessage,
    },
    /// A protocol-2 frame, encoded for the user of the subject (a group message or stream
    /// event when `durable`; otherwise a live receipt or typing indicator).
    Frame {
        origin: String,
        text: String,
        durable: bool,
        /// The protocol versions of the sessions it is for (2 and later when absent, as
        /// nodes that knew no later protocol sent it).
        #[serde(default = "conversations_protocol")]
        min_protocol: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_protocol: Option<u32>,
    },
    Typing {
        origin: String,
        tenant: String,
        from: String,
        to: String,
    },
    /// A user's first session opened (or last closed) on `node`; `version` numbers `node`'s
    /// presence changes.
    Presence {
        node: String,
        incarnation: u64,
        version: u64,
        tenant: String,
        user: String,
        online: bool,
    },
    Heartbeat {
        node: String,
        incarnation: u64,
        version: u64,
    },
    /// Part of `node`'s list of online users; `first` starts a new list.
    Snapshot {
        node: String,
        incarnation: u64,
        version: u64,
        first: bool,
        users: Vec<(String, String)>,
    },
    /// `node` asks every node for its list.
    Hello { node: String },
    /// Deliveries to the user of this subject may have been lost: its sessions should sync.
    Resync { origin: String },
    /// The server API disconnected the user of this subject: its sessions close with `code`
    /// (and `reason`, when given).
    Disconnect {
        origin: String,
        code: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The server API changed a user's restriction (on the presence subject, so that every
    /// node refuses or admits the user at once); times in milliseconds, 0 for none.
    Restriction {
        origin: String,
        tenant: String,
        user: String,
        banned_until: i64,
        #[serde(default)]
        ban_reason: String,
        tokens_before: i64,
    },
    /// `node` is leaving.
    Bye { node: String },
}

impl Envelope {
    /// Reads an envelope from a NATS payload; `None` for anything that is not one.
    pub(super) fn decode(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }

    /// The NATS payload of this envelope.
    pub(super) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes always serialize")
    }

    /// `node`'s whole list of online users, as snapshot envelopes of at most
    /// [`SNAPSHOT_CHUNK`] users each; the first one starts the list. An empty list is still
    /// one envelope, so that it replaces what the other nodes knew.
    pub(super) fn snapshots(
        node: &str,
        incarnation: u64,
        version: u64,
        users: &[(String, String)],
    ) -> Vec<Self> {
        let mut chunks: Vec<&[(String, String)]> = users.chunks(SNAPSHOT_CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| Envelope::Snapshot {
                node: node.to_owned(),
                incarnation,
                version,
                first: i == 0,
                users: chunk.to_vec(),
            })
            .collect()
    }
}

fn conversations_protocol() -> u32 {
    peroxo_protocol::CONVERSATIONS_PROTOCOL_VERSION
}

/// A committed message as nodes exchange it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireMessage {
    id: u64,
    tenant: String,
    sender: String,
    recipient: String,
    client_msg_id: String,
    text: String,
    ts: i64,
    sender_seq: u64,
    recipient_seq: u64,
    /// The message it replies to: id, sender, excerpt, deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<Box<(u64, String, String, bool)>>,
}

impl From<&StoredMessage> for WireMessage {
    fn from(m: &StoredMessage) -> Self {
        Self {
            id: m.message_id,
            tenant: m.tenant.clone(),
            sender: m.sender.clone(),
            recipient: m.recipient.clone(),
            client_msg_id: m.client_msg_id.clone(),
            text: m.text.clone(),
            ts: m.ts,
            sender_seq: m.sender_seq,
            recipient_seq: m.recipient_seq,
            reply_to: m
                .lifecycle
                .reply_to
                .as_ref()
                .map(|q| Box::new((q.message_id, q.sender.clone(), q.excerpt.clone(), q.deleted))),
        }
    }
}

impl From<WireMessage> for StoredMessage {
    fn from(m: WireMessage) -> Self {
        Self {
            message_id: m.id,
            tenant: m.tenant,
            sender: m.sender,
            recipient: m.recipient,
            client_msg_id: m.client_msg_id,
            text: m.text,
            ts: m.ts,
            sender_seq: m.sender_seq,
            recipient_seq: m.recipient_seq,
            lifecycle: Lifecycle {
                reply_to: m.reply_to.map(|quote| {
                    let (message_id, sender, excerpt, deleted) = *quote;
                    Box::new(Quote {
                        message_id,
                        sender,
                        excerpt,
                        deleted,
                    })
                }),
                ..Lifecycle::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_json_objects_tagged_by_kind() {
        let hello = Envelope::Hello {
            node: "gw-1".into(),
        };
        assert_eq!(hello.encode(), br#"{"kind":"hello","node":"gw-1"}"#);
        let bye = Envelope::decode(br#"{"kind":"bye","node":"gw-2"}"#);
        assert!(matches!(bye, Some(Envelope::Bye { node }) if node == "gw-2"));
    }

    #[test]
    fn a_payload_that_is_not_an_envelope_decodes_to_none() {
        assert!(Envelope::decode(b"not json").is_none());
        assert!(Envelope::decode(br#"{"kind":"unknown"}"#).is_none());
    }

    #[test]
    fn an_empty_list_is_one_first_snapshot() {
        let snapshots = Envelope::snapshots("gw-1", 7, 3, &[]);
        assert_eq!(snapshots.len(), 1);
        assert!(matches!(
            &snapshots[0],
            Envelope::Snapshot { node, incarnation: 7, version: 3, first: true, users }
                if node == "gw-1" && users.is_empty()
        ));
    }

    #[test]
    fn a_long_list_is_split_into_chunks_and_only_the_first_starts_the_list() {
        let users: Vec<(String, String)> = (0..SNAPSHOT_CHUNK + 1)
            .map(|i| ("t".to_owned(), format!("u{i}")))
            .collect();
        let snapshots = Envelope::snapshots("gw-1", 1, 1, &users);
        let shape: Vec<(bool, usize)> = snapshots
            .iter()
            .map(|s| match s {
                Envelope::Snapshot { first, users, .. } => (*first, users.len()),
                _ => unreachable!("snapshots makes only snapshot envelopes"),
            })
            .collect();
        assert_eq!(shape, vec![(true, SNAPSHOT_CHUNK), (false, 1)]);
    }

    #[test]
    fn a_message_survives_the_trip_through_the_wire_form() {
        let stored = StoredMessage {
            message_id: 42,
            tenant: "acme".into(),
            sender: "alice".into(),
            recipient: "bob".into(),
            client_msg_id: "c-1".into(),
            text: "hi".into(),
            ts: 1_700_000_000_000,
            sender_seq: 5,
            recipient_seq: 9,
            lifecycle: Default::default(),
        };
        let envelope = Envelope::Message {
            origin: "gw-1".into(),
            message: WireMessage::from(&stored),
        };
        let Some(Envelope::Message { message, .. }) = Envelope::decode(&envelope.encode()) else {
            panic!("a message envelope decodes as one");
        };
        assert_eq!(StoredMessage::from(message), stored);
    }
}
