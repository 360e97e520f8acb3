//! The user's stream of messages, by seq: what the client has delivered, what arrived ahead of
//! a gap and waits for it, and whether a sync is needed.
//!
//! Every message a user sends or receives has a seq in that user's gapless stream (1, 2, 3, …).
//! Messages reach the client live, through `sync`, or (for its own sends) through `ack`; they
//! may arrive twice and, across nodes, out of order. This module turns that into each seq
//! delivered exactly once, in seq order: a seq already delivered or already waiting is a
//! repeat; a seq past a gap waits until the gap is filled.

use std::collections::BTreeMap;

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
    pub via: Via,
}

/// What became of a message offered to the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Taken {
    /// New to the client: delivered now or waiting for a gap to fill.
    Fresh,
    /// Already delivered, or already waiting: ignored.
    Repeat,
    /// Its seq is already taken by another message (a server bug): ignored.
    Conflict {
        seq: u64,
        known: String,
        offered: String,
    },
}

/// The user's stream as the client holds it.
#[derive(Debug, Default)]
pub(crate) struct SeqStream {
    /// Every seq up to this one has been delivered (the client's durable position).
    delivered: u64,
    /// Messages past a gap, by seq, waiting for it to fill.
    waiting: BTreeMap<u64, Delivered>,
    /// In delivery order, ready to hand to the application.
    ready: Vec<Delivered>,
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

    /// Whether a message with `seq` would skip ahead of the next expected seq (a gap: sync).
    pub(crate) fn skips_ahead(&self, seq: u64) -> bool {
        seq > self.delivered + 1
    }

    /// Whether messages wait for a gap to fill.
    pub(crate) fn has_gap(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Offers a message. A seq at or below the delivered position is a repeat (the client
    /// keeps no copy of delivered messages to compare with: callers that want to check
    /// repeats against what they delivered get the repeat back).
    pub(crate) fn take(&mut self, message: Delivered) -> Taken {
        let seq = message.seq;
        if seq <= self.delivered {
            return Taken::Repeat;
        }
        if let Some(known) = self.waiting.get(&seq) {
            if known.message_id != message.message_id {
                return Taken::Conflict {
                    seq,
                    known: known.message_id.clone(),
                    offered: message.message_id,
                };
            }
            return Taken::Repeat;
        }
        self.waiting.insert(seq, message);
        while let Some(next) = self.waiting.remove(&(self.delivered + 1)) {
            self.delivered += 1;
            self.ready.push(next);
        }
        Taken::Fresh
    }

    /// The messages delivered since the last call, in seq order.
    pub(crate) fn take_ready(&mut self) -> Vec<Delivered> {
        std::mem::take(&mut self.ready)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn message(seq: u64, id: &str) -> Delivered {
        Delivered {
            seq,
            message_id: id.to_owned(),
            conversation_id: "a:b".to_owned(),
            from: "a".to_owned(),
            to: "b".to_owned(),
            text: format!("text {id}"),
            ts: 0,
            client_msg_id: None,
            via: Via::Live,
        }
    }

    fn seqs(ready: Vec<Delivered>) -> Vec<u64> {
        ready.into_iter().map(|m| m.seq).collect()
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
                known: "m2".into(),
                offered: "other".into()
            }
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
