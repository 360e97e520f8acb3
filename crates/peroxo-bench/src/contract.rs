//! The delivery contract as pure rules, shared by the two checkers of it: `peroxo bench dm`
//! (over its compact ledger) and the fault-injection suite's verdict (over its clients'
//! reports).
//!
//! Two rules live here, because both checkers apply them the same way:
//!
//! - [`SeqAudit`]: a user's seqs (its acks plus the messages it received) are exactly
//!   1, 2, …, n: none missing, none seen twice, never 0.
//! - [`MessageFate::breaches`]: every sent message is answered; an acked message reaches its
//!   recipient exactly once and is acked once; a refused message never reaches anyone.
//!
//! What each checker adds stays with it: the bench's latencies, misrouted and undecodable
//! frames; the suite's comparison with the database's rows and the processes' metrics. The
//! per-conversation order rule is also checked by both, but over different identities (the
//! bench's planned message index, the suite's committed message id) and, in the bench, while
//! frames arrive; it stays with each.

use std::ops::Range;

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

#[cfg(test)]
mod tests {
    use super::*;

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
