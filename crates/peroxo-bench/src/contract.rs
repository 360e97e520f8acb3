//! The delivery contract as pure rules, shared by the two checkers of it: `peroxo bench dm`
//! (over its compact ledger) and the fault-injection suite's verdict (over its clients'
//! reports).
//!
//! The rules live here, because every checker applies them the same way:
//!
//! - [`SeqAudit`]: a user's seqs (its acks plus the messages it received, and in protocol 2
//!   the events of its stream) are exactly 1, 2, …, n: none missing, none seen twice, never 0.
//! - [`MessageFate::breaches`]: every sent message is answered; an acked message reaches its
//!   recipient (each member of its group) exactly once and is acked once; a refused message
//!   never reaches anyone.
//! - [`ConversationLedger`] (protocol 2): what a user's conversation list must show (read
//!   marker, unread count, newest message, total unread) follows from the user's stream alone,
//!   deletes of protocol 3 included.
//! - [`MessageReplay`] (protocol 3): what became of each message (its text, whether it was
//!   edited or deleted, its reactions) follows from the messages of a user's stream and the
//!   changes after them, applied in seq order.
//!
//! What each checker adds stays with it: the bench's latencies, misrouted and undecodable
//! frames; the suite's comparison with the database's rows and the processes' metrics. The
//! per-conversation order rule is also checked by both, but over different identities (the
//! bench's planned message index, the suite's committed message id) and, in the bench, while
//! frames arrive; it stays with each.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

mod messages;

pub use messages::{MessageChange, MessageReplay, ReplayedMessage};

/// How many missing seqs a [`SeqAudit`] names (it counts all of them).
pub const MISSING_NAMED: usize = 10;

/// What one user's seqs show against the rule "exactly 1, 2, …, n".
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqAudit {
    /// Seqs missing from 1 up to the highest seq seen or announced.
    pub gaps: u64,
    /// Seqs seen more than once, and seqs out of range (0).
    pub duplicates: u64,
    /// The highest seq seen (0 when none was).
    pub highest_seen: u64,
    /// The first [`MISSING_NAMED`] missing seqs, for a failure message.
    pub first_missing: Vec<u64>,
}

impl SeqAudit {
    /// Audits seqs in any order (it sorts them). `announced` is the user's last seq as the
    /// server stated it (0 when unknown): seqs up to it must be there too.
    pub fn of_unsorted(seqs: &mut [u64], announced: u64) -> Self {
        seqs.sort_unstable();
        Self::of_sorted(seqs.iter().copied(), announced)
    }

    /// Audits seqs given in ascending order (repeats allowed); see [`SeqAudit::of_unsorted`].
    pub fn of_sorted(seqs: impl IntoIterator<Item = u64>, announced: u64) -> Self {
        let mut audit = Self::default();
        let mut expected = 1;
        for seq in seqs {
            if seq < expected {
                audit.duplicates += 1;
            } else {
                audit.missing(expected..seq);
                expected = seq + 1;
            }
        }
        audit.highest_seen = expected - 1;
        audit.missing(expected..announced.saturating_add(1).max(expected));
        audit
    }

    /// Whether the seqs are exactly 1, 2, …, n.
    pub fn is_gapless(&self) -> bool {
        self.gaps == 0 && self.duplicates == 0
    }

    fn missing(&mut self, seqs: Range<u64>) {
        self.gaps += seqs.end - seqs.start;
        let room = MISSING_NAMED - self.first_missing.len();
        self.first_missing.extend(seqs.take(room));
    }
}

/// What became of one message, as counts a checker collected.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MessageFate {
    /// Whether it was handed to the server at all.
    pub sent: bool,
    /// Acks its sender received for it.
    pub acks: u32,
    /// Times it reached its recipient.
    pub deliveries: u32,
    /// Whether the server answered it with an error.
    pub refused: bool,
}

/// The rules one message broke.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Breaches {
    /// Acked, never delivered.
    pub lost: bool,
    /// Delivered more than once.
    pub duplicated: bool,
    /// Sent, neither acked nor refused.
    pub unanswered: bool,
    /// Acked more than once.
    pub duplicate_ack: bool,
    /// Refused, and delivered anyway.
    pub delivered_after_error: bool,
}

impl MessageFate {
    /// The rules this message broke.
    pub fn breaches(&self) -> Breaches {
        Breaches {
            lost: self.acks > 0 && self.deliveries == 0,
            duplicated: self.deliveries > 1,
            unanswered: self.sent && self.acks == 0 && !self.refused,
            duplicate_ack: self.acks > 1,
            delivered_after_error: self.refused && self.deliveries > 0,
        }
    }
}

impl Breaches {
    /// Whether the message kept the contract.
    pub fn none(&self) -> bool {
        *self == Self::default()
    }
}

/// One entry of a user's stream, as [`ConversationLedger`] reads it. Entries that change no
/// conversation state (a peer's read receipt, a rename) need not be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamItem<'a> {
    /// A message of `conversation`; `own` when the user sent it (which marks the
    /// conversation read up to it).
    Message {
        conversation: &'a str,
        message_id: u64,
        own: bool,
    },
    /// A `read_marker` event: the user's marker moved to `message_id`, leaving
    /// `unread_count` unread, as the event states.
    ReadMarker {
        conversation: &'a str,
        message_id: u64,
        unread_count: u64,
    },
    /// The user became a member of a group (`group_created`, or `members_added` naming the
    /// user): the conversation is in the list from then on, even before its first message.
    Joined { conversation: &'a str },
    /// The user left or was removed (`member_left` naming the user): the conversation leaves
    /// the list; a later [`StreamItem::Joined`] starts it afresh.
    Left { conversation: &'a str },
    /// A `message_deleted` event (protocol 3): the message no longer counts as unread, and no
    /// longer as the preview (the newest message before it that is not deleted is).
    Deleted {
        conversation: &'a str,
        message_id: u64,
    },
}

/// What a user's conversation list must show for one conversation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConversationState {
    /// The id of the last message read (0: none).
    pub read_marker: u64,
    /// Messages from others after the read marker.
    pub unread_count: u64,
    /// The newest message (the preview), if any.
    pub last_message: Option<u64>,
}

/// A user's conversations as the user's stream implies them, entry by entry, in seq order.
///
/// The rule: a conversation is listed from its first message or from the user joining it.
/// Its read marker is the message id of the latest `read_marker` event, or the user's own
/// latest message if that is later in the stream (sending marks read). Its unread count is the
/// number of messages from others with an id past the marker and not deleted, never negative;
/// its preview is its newest message that is not deleted; the total unread count is the sum
/// over the list. A `read_marker`
/// event states the unread count after it, which must be that same count over the stream
/// before it.
#[derive(Debug, Default)]
pub struct ConversationLedger {
    conversations: BTreeMap<String, Tally>,
    /// `read_marker` events whose `unread_count` is not what the stream before them implies.
    marker_mismatches: Vec<String>,
}

/// One conversation of a [`ConversationLedger`].
#[derive(Debug, Default)]
struct Tally {
    read_marker: u64,
    /// The ids of the messages from others, but those deleted.
    from_others: BTreeSet<u64>,
    /// The ids of every message, but those deleted.
    messages: BTreeSet<u64>,
}

impl Tally {
    fn unread(&self) -> u64 {
        self.from_others
            .iter()
            .filter(|id| **id > self.read_marker)
            .count() as u64
    }
}

impl ConversationLedger {
    /// Takes the next entry of the stream (entries must come in seq order).
    pub fn apply(&mut self, item: StreamItem<'_>) {
        match item {
            StreamItem::Message {
                conversation,
                message_id,
                own,
            } => {
                let tally = self.tally(conversation);
                tally.messages.insert(message_id);
                if own {
                    tally.read_marker = message_id;
                } else {
                    tally.from_others.insert(message_id);
                }
            }
            StreamItem::ReadMarker {
                conversation,
                message_id,
                unread_count,
            } => {
                let tally = self.tally(conversation);
                tally.read_marker = message_id;
                let implied = tally.unread();
                if implied != unread_count {
                    self.marker_mismatches.push(format!(
                        "{conversation}: read marker {message_id} states {unread_count} unread,                          the stream before it has {implied}"
                    ));
                }
            }
            StreamItem::Joined { conversation } => {
                self.tally(conversation);
            }
            StreamItem::Left { conversation } => {
                self.conversations.remove(conversation);
            }
            StreamItem::Deleted {
                conversation,
                message_id,
            } => {
                if let Some(tally) = self.conversations.get_mut(conversation) {
                    tally.messages.remove(&message_id);
                    tally.from_others.remove(&message_id);
                }
            }
        }
    }

    fn tally(&mut self, conversation: &str) -> &mut Tally {
        self.conversations
            .entry(conversation.to_owned())
            .or_default()
    }

    /// Every listed conversation's state, by conversation id.
    pub fn states(&self) -> BTreeMap<&str, ConversationState> {
        self.conversations
            .iter()
            .map(|(id, tally)| {
                let state = ConversationState {
                    read_marker: tally.read_marker,
                    unread_count: tally.unread(),
                    last_message: tally.messages.last().copied(),
                };
                (id.as_str(), state)
            })
            .collect()
    }

    /// The unread count over every listed conversation.
    pub fn total_unread(&self) -> u64 {
        self.conversations.values().map(Tally::unread).sum()
    }

    /// The `read_marker` events whose stated unread count the stream contradicts, described.
    pub fn marker_mismatches(&self) -> &[String] {
        &self.marker_mismatches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(conversation: &str, message_id: u64, own: bool) -> StreamItem<'_> {
        StreamItem::Message {
            conversation,
            message_id,
            own,
        }
    }

    fn marker(conversation: &str, message_id: u64, unread_count: u64) -> StreamItem<'_> {
        StreamItem::ReadMarker {
            conversation,
            message_id,
            unread_count,
        }
    }

    fn state(read_marker: u64, unread_count: u64, last: u64) -> ConversationState {
        ConversationState {
            read_marker,
            unread_count,
            last_message: Some(last),
        }
    }

    #[test]
    fn messages_from_others_after_the_marker_are_unread_and_sending_reads() {
        let mut ledger = ConversationLedger::default();
        ledger.apply(message("a:b", 1, false));
        ledger.apply(message("a:b", 2, false));
        assert_eq!(ledger.states()["a:b"], state(0, 2, 2));
        ledger.apply(message("a:b", 3, true));
        ledger.apply(message("a:b", 4, false));
        assert_eq!(ledger.states()["a:b"], state(3, 1, 4));
        ledger.apply(message("a:a", 5, true));
        assert_eq!(ledger.states()["a:a"], state(5, 0, 5));
        assert_eq!(ledger.total_unread(), 1);
    }

    #[test]
    fn the_latest_of_a_read_marker_and_an_own_message_is_the_marker() {
        let mut ledger = ConversationLedger::default();
        for id in 1..=4 {
            ledger.apply(message("g~1", id, false));
        }
        ledger.apply(marker("g~1", 3, 1));
        assert_eq!(ledger.states()["g~1"], state(3, 1, 4));
        ledger.apply(message("g~1", 5, true));
        assert_eq!(ledger.states()["g~1"], state(5, 0, 5));
        // `mark_unread` moves the marker back, past the user's own message.
        ledger.apply(marker("g~1", 1, 3));
        assert_eq!(ledger.states()["g~1"], state(1, 3, 5));
        assert!(ledger.marker_mismatches().is_empty());
    }

    #[test]
    fn a_read_marker_stating_another_count_than_its_stream_is_named() {
        let mut ledger = ConversationLedger::default();
        ledger.apply(message("a:b", 1, false));
        ledger.apply(message("a:b", 2, false));
        ledger.apply(marker("a:b", 1, 0));
        assert_eq!(ledger.marker_mismatches().len(), 1);
        assert!(
            ledger.marker_mismatches()[0].contains("the stream before it has 1"),
            "{:?}",
            ledger.marker_mismatches()
        );
    }

    #[test]
    fn a_group_is_listed_from_the_join_and_leaves_the_list_with_the_member() {
        let mut ledger = ConversationLedger::default();
        ledger.apply(StreamItem::Joined {
            conversation: "g~1",
        });
        assert_eq!(ledger.states()["g~1"], ConversationState::default());
        ledger.apply(message("g~1", 7, false));
        ledger.apply(StreamItem::Left {
            conversation: "g~1",
        });
        assert!(ledger.states().is_empty());
        assert_eq!(ledger.total_unread(), 0);
    }

    #[test]
    fn a_deleted_message_is_no_longer_unread_nor_the_preview() {
        let mut ledger = ConversationLedger::default();
        let deleted = |message_id| StreamItem::Deleted {
            conversation: "a:b",
            message_id,
        };
        ledger.apply(message("a:b", 1, false));
        ledger.apply(message("a:b", 2, true));
        ledger.apply(message("a:b", 3, false));
        ledger.apply(message("a:b", 4, false));
        assert_eq!(ledger.states()["a:b"], state(2, 2, 4));
        ledger.apply(deleted(4));
        assert_eq!(ledger.states()["a:b"], state(2, 1, 3));
        // A message read already lowers no count; the preview stays when it was not it.
        ledger.apply(deleted(1));
        assert_eq!(ledger.states()["a:b"], state(2, 1, 3));
        ledger.apply(marker("a:b", 2, 1));
        assert!(ledger.marker_mismatches().is_empty());
        ledger.apply(deleted(3));
        ledger.apply(deleted(2));
        let empty = ConversationState {
            read_marker: 2,
            ..ConversationState::default()
        };
        assert_eq!(
            ledger.states()["a:b"],
            empty,
            "still listed, without a preview"
        );
        assert_eq!(ledger.total_unread(), 0);
    }

    #[test]
    fn a_gapless_stream_passes_in_any_arrival_order() {
        let audit = SeqAudit::of_unsorted(&mut [3, 1, 2, 5, 4], 0);
        assert!(audit.is_gapless());
        assert_eq!(audit.highest_seen, 5);
        assert_eq!(SeqAudit::of_unsorted(&mut [], 0), SeqAudit::default());
    }

    #[test]
    fn missing_seqs_are_counted_and_the_first_named() {
        let audit = SeqAudit::of_unsorted(&mut [1, 2, 5], 0);
        assert_eq!((audit.gaps, audit.duplicates), (2, 0));
        assert_eq!(audit.first_missing, [3, 4]);
        assert_eq!(SeqAudit::of_unsorted(&mut [2], 0).first_missing, [1]);
        let many = SeqAudit::of_sorted([100], 0);
        assert_eq!(many.gaps, 99);
        assert_eq!(many.first_missing, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn repeated_and_zero_seqs_are_duplicates() {
        let audit = SeqAudit::of_unsorted(&mut [1, 2, 2, 3], 0);
        assert_eq!((audit.gaps, audit.duplicates), (0, 1));
        assert!(!audit.is_gapless());
        assert_eq!(SeqAudit::of_unsorted(&mut [0, 1], 0).duplicates, 1);
    }

    #[test]
    fn seqs_the_server_announced_but_never_arrived_are_gaps() {
        let audit = SeqAudit::of_sorted([1, 2], 4);
        assert_eq!(audit.gaps, 2);
        assert_eq!(audit.first_missing, [3, 4]);
        assert_eq!(audit.highest_seen, 2);
        let behind = SeqAudit::of_sorted([1, 2, 3], 2);
        assert!(
            behind.is_gapless(),
            "an announcement behind what arrived adds no gap"
        );
        assert_eq!(behind.highest_seen, 3);
    }

    #[test]
    fn an_acked_message_delivered_once_keeps_the_contract() {
        let fate = MessageFate {
            sent: true,
            acks: 1,
            deliveries: 1,
            refused: false,
        };
        assert!(fate.breaches().none());
        let refused = MessageFate {
            sent: true,
            refused: true,
            ..MessageFate::default()
        };
        assert!(refused.breaches().none(), "a refusal is an answer");
        assert!(MessageFate::default().breaches().none(), "never sent");
    }

    #[test]
    fn each_breach_of_one_message_is_named() {
        let fate = |sent, acks, deliveries, refused| {
            MessageFate {
                sent,
                acks,
                deliveries,
                refused,
            }
            .breaches()
        };
        assert!(fate(true, 1, 0, false).lost);
        assert!(fate(true, 1, 2, false).duplicated);
        assert!(fate(true, 0, 0, false).unanswered);
        assert!(!fate(false, 0, 0, false).unanswered);
        assert!(fate(true, 2, 1, false).duplicate_ack);
        assert!(fate(true, 0, 1, true).delivered_after_error);
        assert!(!fate(true, 1, 2, false).lost);
    }
}
