//! What happened to every command of a run and to every delivery of its messages, kept
//! compactly and shared without locks.
//!
//! One 12-byte [`Slot`] per command, indexed by command index, and one byte per row (a
//! message's delivery to one of its recipients): 1.5 million direct messages take 19.5 MiB,
//! 35,000 group messages to 19 other members each 1.1 MiB. Writers and readers update them
//! with relaxed atomics; the totals in [`Live`] feed the progress line and tell when the run
//! has drained. The final analysis reads them after every task has ended.
//!
//! A command that sends no message (a read) is "acked" by its reply.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use peroxo_protocol::ErrorCode;

/// Slot flag: the command was handed to its session's socket.
const SENT: u8 = 1;
/// Slot flag: the command got its first answer (an ack, a reply or an error).
const ANSWERED: u8 = 2;

/// The state of one command.
#[derive(Default)]
struct Slot {
    /// Send→ack latency in microseconds (at least 1); 0 until acked.
    ack_us: AtomicU32,
    /// Send→delivery latency to the latest of its recipients so far, in microseconds (at
    /// least 1); 0 until delivered to any.
    delivery_us: AtomicU32,
    /// `SENT` and `ANSWERED`.
    flags: AtomicU8,
    /// Acks received for it (more than one is a server bug).
    acks: AtomicU8,
    /// The error that answered it, as 1 + its index in `ErrorCode::ALL`; 0 for none.
    error: AtomicU8,
}

/// Totals kept up to date while the run goes on.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// Commands the pacer has handed on (whether their writer took them or not).
    pub(crate) dispatched: AtomicU64,
    /// Commands that could not be queued or written because the connection had failed.
    pub(crate) abandoned: AtomicU64,
    /// Commands written to their session's socket.
    pub(crate) sent: AtomicU64,
    /// Commands with an ack (a reply) or an error.
    pub(crate) answered: AtomicU64,
    /// Commands acked at least once.
    pub(crate) acked: AtomicU64,
    /// Rows delivered at least once.
    pub(crate) delivered: AtomicU64,
    /// `error` frames that named a command of this run.
    pub(crate) errors: AtomicU64,
}

/// What happened to one command, as read at the end of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Whether it was written to its session's socket.
    pub(crate) sent: bool,
    pub(crate) acks: u8,
    /// Its rows delivered at least once.
    pub(crate) rows_delivered: u32,
    /// The error code that answered it, if any.
    pub(crate) error: Option<ErrorCode>,
    /// From its due time to its first ack.
    pub(crate) ack_latency: Option<Duration>,
    /// From its due time to its first arrival at the last of its recipients; `None` until it
    /// has reached every one of them.
    pub(crate) delivery_latency: Option<Duration>,
}

/// Every command's state, indexed by command index, and every row's delivery count.
pub(crate) struct Ledger {
    slots: Box<[Slot]>,
    /// The deliveries of row `r` of message `i` at `i * fanout + r` (saturating at 255).
    rows: Box<[AtomicU8]>,
    fanout: u32,
    pub(crate) live: Live,
}

impl Ledger {
    /// A ledger for commands `0..len`, each delivered to `fanout` recipients.
    pub(crate) fn new(len: u32, fanout: u32) -> Self {
        let rows = len as usize * fanout as usize;
        Self {
            slots: (0..len).map(|_| Slot::default()).collect(),
            rows: (0..rows).map(|_| AtomicU8::new(0)).collect(),
            fanout,
            live: Live::default(),
        }
    }

    /// The slot of command `i`, if `i` is one of ours.
    fn slot(&self, i: u32) -> Option<&Slot> {
        self.slots.get(i as usize)
    }

    /// The rows of message `i` (`i` must be below the ledger's length).
    fn rows_of(&self, i: u32) -> &[AtomicU8] {
        let first = i as usize * self.fanout as usize;
        &self.rows[first..first + self.fanout as usize]
    }

    /// Whether `i` is a command of this run.
    pub(crate) fn contains(&self, i: u32) -> bool {
        (i as usize) < self.slots.len()
    }

    /// Command `i` is being written to its session's socket.
    pub(crate) fn mark_sent(&self, i: u32) {
        if let Some(slot) = self.slot(i) {
            slot.flags.fetch_or(SENT, Ordering::Relaxed);
            self.live.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Command `i` was acked (answered) `latency` after it was due.
    pub(crate) fn record_ack(&self, i: u32, latency: Duration) {
        let Some(slot) = self.slot(i) else { return };
        if slot.acks.fetch_add(1, Ordering::Relaxed) == 0 {
            slot.ack_us.store(micros(latency), Ordering::Relaxed);
            self.live.acked.fetch_add(1, Ordering::Relaxed);
        }
        self.answered(slot);
    }

    /// Message `i` reached the recipient of its row `row` `latency` after it was due.
    /// Returns how many times it had arrived there before.
    pub(crate) fn record_delivery(&self, i: u32, row: u32, latency: Duration) -> u8 {
        let Some(slot) = self.slot(i) else { return 0 };
        let Some(count) = self.rows_of(i).get(row as usize) else {
            return 0;
        };
        let before = count.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            slot.delivery_us
                .fetch_max(micros(latency), Ordering::Relaxed);
            self.live.delivered.fetch_add(1, Ordering::Relaxed);
        } else if before == u8::MAX {
            // Saturate rather than wrap back to "never delivered".
            count.store(u8::MAX, Ordering::Relaxed);
        }
        before
    }

    /// Command `i` was refused with error `code`.
    pub(crate) fn record_error(&self, i: u32, code: ErrorCode) {
        let Some(slot) = self.slot(i) else { return };
        slot.error.store(error_number(code), Ordering::Relaxed);
        self.live.errors.fetch_add(1, Ordering::Relaxed);
        self.answered(slot);
    }

    fn answered(&self, slot: &Slot) {
        if slot.flags.fetch_or(ANSWERED, Ordering::Relaxed) & ANSWERED == 0 {
            self.live.answered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether nothing more is expected: every queued command was written (or abandoned),
    /// every written one answered, and every acked message delivered to all its recipients.
    pub(crate) fn is_drained(&self) -> bool {
        let live = &self.live;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        load(&live.sent) + load(&live.abandoned) >= load(&live.dispatched)
            && load(&live.answered) >= load(&live.sent)
            && load(&live.delivered) >= load(&live.acked) * u64::from(self.fanout)
    }

    /// What happened to command `i` (`i` must be below the ledger's length).
    pub(crate) fn outcome(&self, i: u32) -> Outcome {
        let slot = &self.slots[i as usize];
        let latency = |us: &AtomicU32| match us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(u64::from(us))),
        };
        let rows_delivered = self.deliveries(i).filter(|n| *n > 0).count() as u32;
        Outcome {
            sent: slot.flags.load(Ordering::Relaxed) & SENT != 0,
            acks: slot.acks.load(Ordering::Relaxed),
            rows_delivered,
            error: error_code(slot.error.load(Ordering::Relaxed)),
            ack_latency: latency(&slot.ack_us),
            delivery_latency: latency(&slot.delivery_us)
                .filter(|_| self.fanout > 0 && rows_delivered == self.fanout),
        }
    }

    /// How many times message `i` reached each of its recipients, row by row.
    pub(crate) fn deliveries(&self, i: u32) -> impl Iterator<Item = u8> + '_ {
        self.rows_of(i).iter().map(|n| n.load(Ordering::Relaxed))
    }
}

/// A latency as stored in a slot: microseconds, at least 1 (0 means "none").
fn micros(latency: Duration) -> u32 {
    u32::try_from(latency.as_micros())
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The slot number of an error code.
fn error_number(code: ErrorCode) -> u8 {
    let index = ErrorCode::ALL.iter().position(|known| *known == code);
    index.expect("ErrorCode::ALL holds every code") as u8 + 1
}

/// The error code of a slot number: `None` for no error.
fn error_code(number: u8) -> Option<ErrorCode> {
    number
        .checked_sub(1)
        .and_then(|index| ErrorCode::ALL.get(usize::from(index)).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_twelve_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 12);
    }

    #[test]
    fn outcomes_record_acks_deliveries_and_errors() {
        let ledger = Ledger::new(3, 1);
        ledger.mark_sent(0);
        ledger.record_ack(0, Duration::from_micros(1_500));
        assert!(!ledger.is_drained(), "message 0 is acked but not delivered");
        assert_eq!(ledger.record_delivery(0, 0, Duration::ZERO), 0);
        assert_eq!(ledger.record_delivery(0, 0, Duration::ZERO), 1);
        ledger.mark_sent(1);
        ledger.record_error(1, ErrorCode::RateLimited);
        let zero = ledger.outcome(0);
        assert_eq!(zero.acks, 1);
        assert_eq!(ledger.deliveries(0).collect::<Vec<_>>(), [2]);
        assert_eq!(zero.ack_latency, Some(Duration::from_micros(1_500)));
        assert_eq!(zero.delivery_latency, Some(Duration::from_micros(1)));
        assert_eq!(ledger.outcome(1).error, Some(ErrorCode::RateLimited));
        assert_eq!(ledger.outcome(2).error, None);
        assert!(!ledger.outcome(2).sent);
        assert!(ledger.is_drained());
        // Out-of-range indexes and rows from a confused server are ignored.
        ledger.record_ack(99, Duration::ZERO);
        assert_eq!(ledger.record_delivery(2, 1, Duration::ZERO), 0);
        assert!(!ledger.contains(99));
        assert_eq!(ledger.deliveries(2).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn a_message_counts_as_delivered_when_its_last_recipient_has_it() {
        let ledger = Ledger::new(1, 3);
        ledger.mark_sent(0);
        ledger.record_ack(0, Duration::from_millis(1));
        ledger.record_delivery(0, 2, Duration::from_millis(5));
        ledger.record_delivery(0, 0, Duration::from_millis(9));
        let partial = ledger.outcome(0);
        assert_eq!(partial.rows_delivered, 2);
        assert_eq!(partial.delivery_latency, None, "row 1 is still due");
        assert!(!ledger.is_drained());
        ledger.record_delivery(0, 1, Duration::from_millis(7));
        let whole = ledger.outcome(0);
        assert_eq!(whole.rows_delivered, 3);
        assert_eq!(
            whole.delivery_latency,
            Some(Duration::from_millis(9)),
            "the latest arrival, whichever row it was"
        );
        assert!(ledger.is_drained());
    }

    #[test]
    fn a_command_without_recipients_is_done_when_answered() {
        let ledger = Ledger::new(2, 0);
        ledger.live.dispatched.store(2, Ordering::Relaxed);
        ledger.mark_sent(0);
        ledger.mark_sent(1);
        ledger.record_ack(0, Duration::from_millis(2));
        assert!(!ledger.is_drained());
        ledger.record_error(1, ErrorCode::Unavailable);
        assert!(ledger.is_drained());
        let reply = ledger.outcome(0);
        assert_eq!(reply.ack_latency, Some(Duration::from_millis(2)));
        assert_eq!((reply.rows_delivered, reply.delivery_latency), (0, None));
        assert_eq!(ledger.deliveries(0).count(), 0);
    }
}
