//! What the database holds for a tenant, read from its keyspaces themselves rather than
//! through the reads the backend answers with: for tests that judge the stored state (the
//! fault-injection suite reads the SQL backends' tables the same way).

use super::LsmStore;
use super::keys::KeyReader;
use super::tables::{self, Entry, MessageRow, OutboxRow, key};
use crate::StoreError;

/// A tenant's messages, streams, reactions and event feed, from one snapshot.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// Every message, in id (commit) order.
    pub messages: Vec<InspectedMessage>,
    /// Every entry of every user's stream, by owner, then seq.
    pub streams: Vec<InspectedEntry>,
    /// Every reaction, by message id, emoji, then user.
    pub reactions: Vec<InspectedReaction>,
    /// Every event of the feed (the outbox), in id order.
    pub outbox: Vec<InspectedEvent>,
}

/// A message as `messages` holds it.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct InspectedMessage {
    pub id: u64,
    pub sender: String,
    /// The recipient user, or the group id.
    pub recipient: String,
    pub conversation: String,
    pub client_msg_id: String,
    /// Empty once deleted or erased.
    pub text: String,
    pub sender_seq: u64,
    /// 0 for a group message.
    pub recipient_seq: u64,
    pub reply_to: Option<u64>,
    pub edited_ts: Option<i64>,
    pub deleted_ts: Option<i64>,
}

/// An entry of a user's stream as `inbox` holds it: it points at a message or at an event.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct InspectedEntry {
    pub owner: String,
    pub seq: u64,
    pub message_id: Option<u64>,
    pub event_id: Option<u64>,
}

/// One user's reaction to a message, as `reactions` holds it.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct InspectedReaction {
    pub message_id: u64,
    pub emoji: String,
    pub user: String,
}

/// An event of the feed as `outbox` holds it.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct InspectedEvent {
    pub id: u64,
    pub kind: String,
    pub conversation: String,
    /// A JSON object.
    pub payload: String,
}

impl LsmStore {
    /// Everything `tenant` has in `messages`, `inbox`, `reactions` and `outbox`, from one
    /// snapshot of what is committed.
    #[doc(hidden)]
    pub async fn inspect(&self, tenant: &str) -> Result<Inspection, StoreError> {
        let tenant = tenant.to_owned();
        self.read(move |r, t| {
            let prefix = key::tenant(&tenant);
            let mut inspection = Inspection::default();
            for (rest, value) in tables::scan(r, &t.messages, &prefix, false, usize::MAX)? {
                let id = KeyReader::new(&rest).u64()?;
                let row: MessageRow = tables::decode(&value)?;
                inspection.messages.push(InspectedMessage {
                    id,
                    sender: row.sender,
                    recipient: row.recipient,
                    conversation: row.conversation,
                    client_msg_id: row.client_msg_id,
                    text: row.text,
                    sender_seq: row.sender_seq,
                    recipient_seq: row.recipient_seq,
                    reply_to: row.reply_to,
                    edited_ts: row.edited_ts,
                    deleted_ts: row.deleted_ts,
                });
            }
            for (rest, value) in tables::scan(r, &t.inbox, &prefix, false, usize::MAX)? {
                let mut reader = KeyReader::new(&rest);
                let owner = reader.str()?;
                let seq = reader.u64()?;
                let (message_id, event_id) = match tables::decode::<Entry>(&value)? {
                    Entry::DirectMessage(id) | Entry::GroupMessage(id) => (Some(id), None),
                    Entry::Event(id) | Entry::LifecycleEvent(id) => (None, Some(id)),
                };
                inspection.streams.push(InspectedEntry {
                    owner,
                    seq,
                    message_id,
                    event_id,
                });
            }
            for (rest, _) in tables::scan(r, &t.reactions, &prefix, false, usize::MAX)? {
                let mut reader = KeyReader::new(&rest);
                let message_id = reader.u64()?;
                let emoji = reader.str()?;
                let user = reader.str()?;
                inspection.reactions.push(InspectedReaction {
                    message_id,
                    emoji,
                    user,
                });
            }
            for (rest, value) in tables::scan(r, &t.outbox, &prefix, false, usize::MAX)? {
                let id = KeyReader::new(&rest).u64()?;
                let row: OutboxRow = tables::decode(&value)?;
                inspection.outbox.push(InspectedEvent {
                    id,
                    kind: row.kind,
                    conversation: row.conversation,
                    payload: row.payload,
                });
            }
            Ok(inspection)
        })
        .await
    }
}
