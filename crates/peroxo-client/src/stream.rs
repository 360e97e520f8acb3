//! The user's stream, by seq: what the client has delivered, what arrived ahead of a gap and
//! waits for it, and whether a sync is needed.
//!
//! Every message a user sends or receives has a seq in that user's gapless stream (1, 2, 3, …);
//! in protocol 2, so has every event of it (a group change, a read marker, a read receipt).
//! Entries reach the client live, through `sync`, or (for its own sends) through `ack`; they
//! may arrive twice and, across nodes, out of order. This module turns that into each seq
//! delivered exactly once, in seq order: a seq already delivered or already waiting is a
//! repeat; a seq past a gap waits until the gap is filled.

use std::collections::BTreeMap;

use peroxo_protocol::{DeletionView, EventView, QuoteView, ReactionView};

/// How the client first learnt of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A live `message` frame.
    Live,
    /// A `sync` result.
    Sync,
    /// The `ack` of the client's own send.
    Ack,
}

/// A message of the user's stream, as the client delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The user's seq for this message.
    pub seq: u64,
    pub message_id: String,
    pub conversation_id: String,
    pub from: String,
    pub to: String,
    pub text: String,
    /// Commit time in milliseconds since the Unix epoch.
    pub ts: i64,
    /// The sender's id for the message; known for the user's own messages only.
    pub client_msg_id: Option<String>,
    /// Protocol 3: the id of the message this one replies to.
    pub reply_to: Option<String>,
    /// Protocol 3: the quote of the message it replies to, as the server showed it (`None`
    /// for an own reply delivered from its ack, which carries no quote).
    pub quote: Option<QuoteView<'static>>,
    /// Protocol 3: when its author last edited it, as this copy says. A copy read through
    /// `sync` shows the message as it is then, so it may already carry changes whose events
    /// follow it in the stream: the events' `text` is the current text, and applying them in
    /// seq order ends with the current state either way.
    pub edited_ts: Option<i64>,
    /// Protocol 3: who deleted it for everyone and when, as this copy says (`text` is then
    /// empty).
    pub deleted: Option<DeletionView<'static>>,
    /// Protocol 3: its reactions, as this copy says. A copy read through `sync` may already
    /// count reactions whose `reaction_added` events follow it in the stream: a count kept by
    /// adding events to it would count those twice. The events alone (each names its actor
    /// and emoji) give the reactions exactly, from none, in seq order.
    pub reactions: Vec<ReactionView<'static>>,
    pub via: Via,
}

/// An event of the user's stream (protocol 2), as the client delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredEvent {
    /// The event as the server sent it; its `seq` is the user's seq for it.
    pub event: EventView<'static>,
    /// [`Via::Live`] or [`Via::Sync`]: events are never acked.
    pub via: Via,
}

/// What tells two entries of the stream apart: two entries at one seq must have the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryId {
    Message(String),
    Event(String),
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryId::Message(id) => write!(f, "message {id}"),
            EntryId::Event(id) => write!(f, "event {id}"),
        }
    }
}

/// One entry of the user's stream: a message, or (protocol 2) an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamEntry {
    Message(Delivered),
    Event(DeliveredEvent),
}

impl StreamEntry {
    pub(crate) fn seq(&self) -> u64 {
        match self {
            StreamEntry::Message(message) => message.seq,
            StreamEntry::Event(event) => event.event.seq,
        }
    }

    pub(crate) fn id(&self) -> EntryId {
        match self {
            StreamEntry::Message(message) => EntryId::Message(message.message_id.clone()),
            StreamEntry::Event(event) => EntryId::Event(event.event.event_id.clone()),
        }
    }
}

/// What became of an entry offered to the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Taken {
    /// New to the client: delivered now or waiting for a gap to fill.
    Fresh,
    /// Already delivered, or already waiting: ignored.
    Repeat,
    /// Its seq is already taken by another entry (a server bug): ignored.
    Conflict {
        seq: u64,
        known: EntryId,
        offered: EntryId,
    },
}

/// The user's stream as the client holds it.
#[derive(Debug, Default)]
pub(crate) struct SeqStream {
    /// Every seq up to this one has been delivered (the client's durable position).
    delivered: u64,
    /// Entries past a gap, by seq, waiting for it to fill.
    waiting: BTreeMap<u64, StreamEntry>,
    /// In delivery order, ready to hand to the application.
    ready: Vec<StreamEntry>,
}

impl SeqStream {
    /// A stream whose seqs up to `last_seq` were processed earlier (0 for a fresh client).
    pub(crate) fn after(last_seq: u64) -> Self {
        Self {
            delivered: last_seq,
            ..Self::default()
        }
    }

    /// Every seq up to this one has been delivered.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Whether an entry with `seq` would skip ahead of the next expected seq (a gap: sync).
    pub(crate) fn skips_ahead(&self, seq: u64) -> bool {
        seq > self.delivered + 1
    }

    /// Whether entries wait for a gap to fill.
    pub(crate) fn has_gap(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Offers an entry. A seq at or below the delivered position is a repeat (the client
    /// keeps no copy of delivered entries to compare with: callers that want to check
    /// repeats against what they delivered get the repeat back).
    pub(crate) fn take(&mut self, entry: StreamEntry) -> Taken {
        let seq = entry.seq();
        if seq <= self.delivered {
            return Taken::Repeat;
        }
        if let Some(known) = self.waiting.get(&seq) {
            let (known, offered) = (known.id(), entry.id());
            if known != offered {
                return Taken::Conflict {
                    seq,
                    known,
                    offered,
                };
            }
            return Taken::Repeat;
        }
        self.waiting.insert(seq, entry);
        while let Some(next) = self.waiting.remove(&(self.delivered + 1)) {
            self.delivered += 1;
            self.ready.push(next);
        }
        Taken::Fresh
    }

    /// Passes over every seq up to `seq` that never came (on a protocol-1 connection, the
    /// group messages and events it is not given): what waits up to it, and any run of
    /// entries right after it, is delivered. Returns what became deliverable, in seq order.
    pub(crate) fn skip_to(&mut self, seq: u64) -> Vec<StreamEntry> {
        while self.delivered < seq {
            self.delivered += 1;
            if let Some(entry) = self.waiting.remove(&self.delivered) {
                self.ready.push(entry);
            }
        }
        while let Some(next) = self.waiting.remove(&(self.delivered + 1)) {
            self.delivered += 1;
            self.ready.push(next);
        }
        self.take_ready()
    }

    /// The entries delivered since the last call, in seq order.
    pub(crate) fn take_ready(&mut self) -> Vec<StreamEntry> {
        std::mem::take(&mut self.ready)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn message(seq: u64, id: &str) -> StreamEntry {
        StreamEntry::Message(Delivered {
            seq,
            message_id: id.to_owned(),
            conversation_id: "a:b".to_owned(),
            from: "a".to_owned(),
            to: "b".to_owned(),
            text: format!("text {id}"),
            ts: 0,
            client_msg_id: None,
            reply_to: None,
            quote: None,
            edited_ts: None,
            deleted: None,
            reactions: Vec::new(),
            via: Via::Live,
        })
    }

    pub(crate) fn event(seq: u64, id: &str) -> StreamEntry {
        StreamEntry::Event(DeliveredEvent {
            event: EventView {
                seq,
                event: "read_marker".into(),
                event_id: id.to_owned(),
                conversation_id: "a:b".into(),
                actor: "a".into(),
                ts: 0,
                title: None,
                member_count: None,
                users: None,
                user: None,
                role: None,
                message_id: Some("1".to_owned()),
                unread_count: Some(0),
                text: None,
                moderated: None,
                emoji: None,
            },
            via: Via::Live,
        })
    }

    fn seqs(ready: Vec<StreamEntry>) -> Vec<u64> {
        ready.iter().map(StreamEntry::seq).collect()
    }

    #[test]
    fn messages_in_order_are_delivered_at_once() {
        let mut stream = SeqStream::after(0);
        assert!(!stream.skips_ahead(1));
        assert_eq!(stream.take(message(1, "m1")), Taken::Fresh);
        assert_eq!(stream.take(message(2, "m2")), Taken::Fresh);
        assert_eq!(seqs(stream.take_ready()), [1, 2]);
        assert_eq!(stream.delivered(), 2);
    }

    #[test]
    fn a_seq_past_a_gap_is_detected_and_waits_for_the_gap() {
        let mut stream = SeqStream::after(3);
        assert!(stream.skips_ahead(6));
        assert_eq!(stream.take(message(6, "m6")), Taken::Fresh);
        assert!(stream.has_gap());
        assert!(stream.take_ready().is_empty());
        assert_eq!(stream.take(message(4, "m4")), Taken::Fresh);
        assert_eq!(seqs(stream.take_ready()), [4]);
        assert_eq!(stream.take(message(5, "m5")), Taken::Fresh);
        assert_eq!(seqs(stream.take_ready()), [5, 6]);
        assert!(!stream.has_gap());
        assert_eq!(stream.delivered(), 6);
    }

    #[test]
    fn repeats_are_ignored_whether_delivered_or_waiting() {
        let mut stream = SeqStream::after(0);
        stream.take(message(1, "m1"));
        stream.take(message(3, "m3"));
        assert_eq!(stream.take(message(1, "m1")), Taken::Repeat);
        assert_eq!(stream.take(message(3, "m3")), Taken::Repeat);
        assert_eq!(seqs(stream.take_ready()), [1]);
        stream.take(message(2, "m2"));
        assert_eq!(seqs(stream.take_ready()), [2, 3]);
    }

    #[test]
    fn a_seq_naming_two_messages_is_reported() {
        let mut stream = SeqStream::after(0);
        stream.take(message(2, "m2"));
        assert_eq!(
            stream.take(message(2, "other")),
            Taken::Conflict {
                seq: 2,
                known: EntryId::Message("m2".into()),
                offered: EntryId::Message("other".into())
            }
        );
    }

    #[test]
    fn skipping_delivers_what_waited_and_what_follows() {
        let mut stream = SeqStream::after(1);
        stream.take(message(3, "m3"));
        stream.take(message(6, "m6"));
        stream.take(message(7, "m7"));
        assert_eq!(seqs(stream.skip_to(5)), [3, 6, 7]);
        assert_eq!(stream.delivered(), 7);
        assert!(!stream.has_gap());
        assert!(seqs(stream.skip_to(2)).is_empty(), "never backwards");
        assert_eq!(stream.delivered(), 7);
    }

    #[test]
    fn events_take_their_seqs_between_messages() {
        let mut stream = SeqStream::after(0);
        assert_eq!(stream.take(message(1, "m1")), Taken::Fresh);
        assert!(stream.skips_ahead(3));
        assert_eq!(stream.take(message(3, "m3")), Taken::Fresh);
        assert_eq!(seqs(stream.take_ready()), [1]);
        assert_eq!(stream.take(event(2, "e1")), Taken::Fresh);
        assert_eq!(seqs(stream.take_ready()), [2, 3]);
        assert_eq!(stream.take(event(2, "e1")), Taken::Repeat);
        assert_eq!(stream.take(event(5, "e2")), Taken::Fresh);
        assert_eq!(
            stream.take(message(5, "m5")),
            Taken::Conflict {
                seq: 5,
                known: EntryId::Event("e2".into()),
                offered: EntryId::Message("m5".into())
            },
            "a message and an event never share a seq"
        );
    }

    #[test]
    fn a_resumed_stream_ignores_what_was_processed_before() {
        let mut stream = SeqStream::after(10);
        assert_eq!(stream.take(message(10, "m10")), Taken::Repeat);
        assert_eq!(stream.take(message(11, "m11")), Taken::Fresh);
        assert_eq!(seqs(stream.take_ready()), [11]);
    }
}
