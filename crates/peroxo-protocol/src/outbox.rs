//! The event outbox: the feed of committed changes an application's backend consumes
//! (`GET /api/v1/events`, webhooks), and the JSON payload of each kind of event.
//!
//! Every change storage commits writes its outbox events in the same transaction. An event's
//! `id` is per tenant, gapless and strictly increasing in commit order, so a consumer that
//! remembers the last id it processed never misses one. The payloads are built here, once,
//! for every backend; they are not frames of the WebSocket protocol and are no part of its
//! schema. No I/O.

use serde_json::{Map, Value, json};

use crate::domain::StoredMessage;
use crate::event::{Event, EventKind};

/// The most events one page of the feed may hold.
pub const MAX_EVENTS_LIMIT: u32 = 1000;
/// The most characters of text a payload may carry (`events.text_preview_chars`).
pub const MAX_TEXT_PREVIEW_CHARS: u32 = 1000;

/// One committed change, as the feed holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Per tenant, gapless and increasing in commit order.
    pub id: u64,
    pub tenant: String,
    /// Commit time in milliseconds since the Unix epoch.
    pub ts: i64,
    pub kind: OutboxKind,
    pub conversation_id: String,
    /// A JSON object whose fields depend on `kind` (see the builders below).
    pub payload: String,
}

/// What an [`OutboxEvent`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxKind {
    MessageCreated,
    MessageEdited,
    MessageDeleted,
    ReactionAdded,
    ReactionRemoved,
    GroupCreated,
    GroupRenamed,
    MembersAdded,
    MemberLeft,
    RoleChanged,
    ReadMarker,
    /// An event the gateway decides, not a change of storage.
    Notify,
    /// A webhook gave up on a batch of events (its dead letter).
    WebhookFailed,
}

impl OutboxKind {
    pub const ALL: [OutboxKind; 13] = [
        OutboxKind::MessageCreated,
        OutboxKind::MessageEdited,
        OutboxKind::MessageDeleted,
        OutboxKind::ReactionAdded,
        OutboxKind::ReactionRemoved,
        OutboxKind::GroupCreated,
        OutboxKind::GroupRenamed,
        OutboxKind::MembersAdded,
        OutboxKind::MemberLeft,
        OutboxKind::RoleChanged,
        OutboxKind::ReadMarker,
        OutboxKind::Notify,
        OutboxKind::WebhookFailed,
    ];

    /// The kind's name in the feed.
    pub fn name(self) -> &'static str {
        match self {
            OutboxKind::MessageCreated => "message.created",
            OutboxKind::MessageEdited => "message.edited",
            OutboxKind::MessageDeleted => "message.deleted",
            OutboxKind::ReactionAdded => "reaction.added",
            OutboxKind::ReactionRemoved => "reaction.removed",
            OutboxKind::GroupCreated => "group.created",
            OutboxKind::GroupRenamed => "group.renamed",
            OutboxKind::MembersAdded => "group.members_added",
            OutboxKind::MemberLeft => "group.member_left",
            OutboxKind::RoleChanged => "group.role_changed",
            OutboxKind::ReadMarker => "read.marker",
            OutboxKind::Notify => "notify",
            OutboxKind::WebhookFailed => "webhook.failed",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl OutboxEvent {
    /// The event as the feed and webhooks show it: `id` (a string, like every id on the
    /// wire), `type`, `ts`, `conversation_id` and the payload as `data`.
    pub fn feed_json(&self) -> Value {
        let data = serde_json::from_str::<Value>(&self.payload)
            .unwrap_or_else(|_| Value::Object(Map::new()));
        json!({
            "id": self.id.to_string(),
            "type": self.kind.name(),
            "ts": self.ts,
            "conversation_id": self.conversation_id,
            "data": data,
        })
    }
}

/// One page of a tenant's feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxPage {
    /// Ascending by id.
    pub events: Vec<OutboxEvent>,
    /// The cursor to ask with next: the last id returned, or the `after` asked with when none.
    pub next_after: u64,
    /// Retention deleted the events with an id up to this one (0: none). A cursor below it
    /// lost events.
    pub pruned_until: u64,
}

/// A request to hold the cursor of a consumer of a tenant's feed (a webhook sender, say), so
/// that one node of a cluster at a time sends: `holder` gets the lease unless another holder's
/// lease is still running at `now_ms`, and keeps renewing it while it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerClaim {
    pub tenant: String,
    pub consumer: String,
    /// Who asks (a node id, say).
    pub holder: String,
    /// How long the lease runs from `now_ms`.
    pub ttl_ms: u64,
    /// Milliseconds since the Unix epoch, as the caller's clock says.
    pub now_ms: i64,
}

/// A consumer's lease, as its holder got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerLease {
    /// The last event id the consumer has processed (0: none yet).
    pub cursor: u64,
    /// When the lease ends unless renewed (milliseconds since the Unix epoch).
    pub expires_at: i64,
}

/// The longest payload of an event recorded by `record_events`, in bytes.
pub const MAX_RECORDED_PAYLOAD_BYTES: usize = 65_536;

/// The longest name of a consumer or holder, in bytes.
pub const MAX_CONSUMER_NAME_BYTES: usize = 256;

/// An event not yet committed: what a transaction writes to the outbox, with the id and time
/// of its commit still to come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboxEvent {
    pub kind: OutboxKind,
    pub conversation_id: String,
    /// A JSON object.
    pub payload: String,
}

/// How payloads carry text: `preview_chars` characters at most, none when 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Payloads {
    pub preview_chars: usize,
}

impl Payloads {
    /// `message.created` for a newly stored message: `recipients` are the users whose streams
    /// it entered, sender excluded (a group's members at commit).
    pub fn message_created<'u>(
        self,
        message: &StoredMessage,
        recipients: impl IntoIterator<Item = &'u str>,
    ) -> NewOutboxEvent {
        let recipients: Vec<&str> = recipients
            .into_iter()
            .filter(|user| *user != message.sender)
            .collect();
        let mut payload = json!({
            "message_id": message.message_id.to_string(),
            "conversation_id": message.conversation_id(),
            "from": message.sender,
            "client_msg_id": message.client_msg_id,
            "ts": message.ts,
            "recipients": recipients,
        });
        let fields = payload.as_object_mut().expect("an object");
        if let Some(quote) = &message.lifecycle.reply_to {
            fields.insert("reply_to".into(), quote.message_id.to_string().into());
        }
        self.insert_text(fields, &message.text);
        NewOutboxEvent {
            kind: OutboxKind::MessageCreated,
            conversation_id: message.conversation_id(),
            payload: payload.to_string(),
        }
    }

    /// The outbox event of a stream event: `None` for the ones the feed does not carry on their
    /// own (read markers and receipts, which [`Payloads::read_marker`] records together).
    pub fn of_event(self, event: &Event) -> Option<NewOutboxEvent> {
        let mut fields = Map::new();
        fields.insert("by".into(), event.actor.clone().into());
        let kind = match &event.kind {
            EventKind::GroupCreated {
                title,
                member_count,
            } => {
                fields.insert("title".into(), title.clone().into());
                fields.insert("member_count".into(), (*member_count).into());
                OutboxKind::GroupCreated
            }
            EventKind::GroupRenamed { title } => {
                fields.insert("title".into(), title.clone().into());
                OutboxKind::GroupRenamed
            }
            EventKind::MembersAdded { users } => {
                fields.insert("users".into(), users.clone().into());
                OutboxKind::MembersAdded
            }
            EventKind::MemberLeft { user } => {
                fields.insert("user".into(), user.clone().into());
                OutboxKind::MemberLeft
            }
            EventKind::RoleChanged { user, role } => {
                fields.insert("user".into(), user.clone().into());
                fields.insert("role".into(), role.as_str().into());
                OutboxKind::RoleChanged
            }
            EventKind::MessageEdited { message_id, text } => {
                insert_message_id(&mut fields, *message_id);
                self.insert_text(&mut fields, text);
                OutboxKind::MessageEdited
            }
            EventKind::MessageDeleted {
                message_id,
                moderated,
            } => {
                insert_message_id(&mut fields, *message_id);
                fields.insert("moderated".into(), (*moderated).into());
                OutboxKind::MessageDeleted
            }
            EventKind::ReactionAdded { message_id, emoji }
            | EventKind::ReactionRemoved { message_id, emoji } => {
                insert_message_id(&mut fields, *message_id);
                fields.insert("emoji".into(), emoji.clone().into());
                if matches!(event.kind, EventKind::ReactionAdded { .. }) {
                    OutboxKind::ReactionAdded
                } else {
                    OutboxKind::ReactionRemoved
                }
            }
            EventKind::ReadMarker { .. } | EventKind::ReadReceipt { .. } => return None,
        };
        Some(NewOutboxEvent {
            kind,
            conversation_id: event.conversation_id.clone(),
            payload: Value::Object(fields).to_string(),
        })
    }

    /// `read.marker` for a read marker that moved (`marker`, a `ReadMarker` event), with the
    /// peer `receipt_to` when the move also sent a read receipt.
    pub fn read_marker(self, marker: &Event, receipt_to: Option<&str>) -> Option<NewOutboxEvent> {
        let EventKind::ReadMarker {
            message_id,
            unread_count,
        } = marker.kind
        else {
            return None;
        };
        let mut fields = Map::new();
        fields.insert("user".into(), marker.actor.clone().into());
        insert_message_id(&mut fields, message_id);
        fields.insert("unread_count".into(), unread_count.into());
        if let Some(peer) = receipt_to {
            fields.insert("receipt_to".into(), peer.into());
        }
        Some(NewOutboxEvent {
            kind: OutboxKind::ReadMarker,
            conversation_id: marker.conversation_id.clone(),
            payload: Value::Object(fields).to_string(),
        })
    }

    fn insert_text(self, fields: &mut Map<String, Value>, text: &str) {
        if let Some(preview) = preview(text, self.preview_chars) {
            fields.insert("text".into(), preview.into());
        }
    }
}

/// Ids are strings in payloads, as on the wire: JavaScript numbers lose u64 precision.
fn insert_message_id(fields: &mut Map<String, Value>, message_id: u64) {
    fields.insert("message_id".into(), message_id.to_string().into());
}

/// The first `chars` characters of `text`; `None` when previews are off or there is no text.
pub fn preview(text: &str, chars: usize) -> Option<&str> {
    if chars == 0 || text.is_empty() {
        return None;
    }
    let end = text
        .char_indices()
        .nth(chars)
        .map_or(text.len(), |(at, _)| at);
    Some(&text[..end])
}

/// Whether `payload` is a JSON object (what [`NewOutboxEvent::payload`] must be).
pub fn is_json_object(payload: &str) -> bool {
    serde_json::from_str::<Value>(payload).is_ok_and(|value| value.is_object())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Lifecycle, Quote};
    use crate::event::Role;

    fn message(text: &str) -> StoredMessage {
        StoredMessage {
            message_id: 7,
            tenant: "t".into(),
            sender: "alice".into(),
            recipient: "bob".into(),
            client_msg_id: "c1".into(),
            text: text.into(),
            ts: 1000,
            sender_seq: 1,
            recipient_seq: 1,
            lifecycle: Lifecycle::default(),
        }
    }

    fn parsed(event: &NewOutboxEvent) -> Value {
        serde_json::from_str(&event.payload).unwrap()
    }

    #[test]
    fn every_kind_parses_back_from_its_name() {
        for kind in OutboxKind::ALL {
            assert_eq!(OutboxKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(OutboxKind::parse("message_created"), None);
    }

    #[test]
    fn a_created_message_names_its_recipients_and_no_text_without_previews() {
        let mut stored = message("hello");
        stored.lifecycle.reply_to = Some(Box::new(Quote {
            message_id: 3,
            sender: "bob".into(),
            excerpt: "hi".into(),
            deleted: false,
        }));
        let event = Payloads::default().message_created(&stored, ["alice", "bob"]);
        assert_eq!(event.kind, OutboxKind::MessageCreated);
        assert_eq!(event.conversation_id, "alice:bob");
        assert_eq!(
            parsed(&event),
            json!({"message_id": "7", "conversation_id": "alice:bob", "from": "alice",
                   "client_msg_id": "c1", "ts": 1000, "recipients": ["bob"], "reply_to": "3"})
        );
    }

    #[test]
    fn previews_cut_text_at_a_character_boundary() {
        let payloads = Payloads { preview_chars: 3 };
        let event = payloads.message_created(&message("héllo"), ["bob"]);
        assert_eq!(parsed(&event)["text"], "hél");
        assert_eq!(preview("ab", 5), Some("ab"));
        assert_eq!(preview("ab", 0), None);
    }

    #[test]
    fn group_and_lifecycle_events_carry_their_fields_and_the_actor() {
        let event = |kind| Event {
            event_id: 1,
            tenant: "t".into(),
            conversation_id: "g~x".into(),
            actor: "alice".into(),
            ts: 5,
            kind,
        };
        let role = event(EventKind::RoleChanged {
            user: "bob".into(),
            role: Role::Admin,
        });
        let role = Payloads::default().of_event(&role).unwrap();
        assert_eq!(role.kind, OutboxKind::RoleChanged);
        assert_eq!(
            parsed(&role),
            json!({"by": "alice", "user": "bob", "role": "admin"})
        );
        let edit = event(EventKind::MessageEdited {
            message_id: 9,
            text: "new".into(),
        });
        assert_eq!(
            parsed(&Payloads::default().of_event(&edit).unwrap()),
            json!({"by": "alice", "message_id": "9"})
        );
        let receipt = event(EventKind::ReadReceipt { message_id: 9 });
        assert_eq!(Payloads::default().of_event(&receipt), None);
        let marker = event(EventKind::ReadMarker {
            message_id: 9,
            unread_count: 0,
        });
        let marker = Payloads::default()
            .read_marker(&marker, Some("bob"))
            .unwrap();
        assert_eq!(
            parsed(&marker),
            json!({"user": "alice", "message_id": "9", "unread_count": 0, "receipt_to": "bob"})
        );
    }
}
