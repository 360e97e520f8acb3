//! What happened to every message of a `dm` run, kept compactly and shared without locks.
//!
//! One 12-byte [`Slot`] per message, indexed by message index (1.5 million messages take
//! 18 MiB). Writers and readers update slots with relaxed atomics; the totals in [`Live`]
//! feed the progress line and tell when the run has drained. The final analysis reads the
//! slots after every task has ended.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use peroxo_protocol::ErrorCode;

/// Slot flag: the message was handed to its sender's socket.
const SENT: u8 = 1;
/// Slot flag: the message got its first answer (an ack or an error).
const ANSWERED: u8 = 2;

/// The state of one message.
#[derive(Default)]
struct Slot {
    /// Send→ack latency in microseconds (at least 1); 0 until acked.
    ack_us: AtomicU32,
    /// Send→delivery latency in microseconds (at least 1); 0 until delivered.
    delivery_us: AtomicU32,
    /// `SENT` and `ANSWERED`.
    flags: AtomicU8,
    /// Acks received for it (more than one is a server bug).
    acks: AtomicU8,
    /// Times its recipient received it (more than one is a server bug).
    deliveries: AtomicU8,
    /// The error that answered it, as 1 + its index in `ErrorCode::ALL`; 0 for none.
    error: AtomicU8,
}

/// Totals kept up to date while the run goes on.
#[derive(Debug, Default)]
pub(super) struct Live {
    /// Messages the pacer has handed on (whether their writer took them or not).
    pub(super) dispatched: AtomicU64,
    /// Messages that could not be queued or written because the connection had failed.
    pub(super) abandoned: AtomicU64,
    /// Messages written to their sender's socket.
    pub(super) sent: AtomicU64,
    /// Messages with an ack or an error.
    pub(super) answered: AtomicU64,
    /// Messages acked at least once.
    pub(super) acked: AtomicU64,
    /// Messages received at least once.
    pub(super) delivered: AtomicU64,
    /// `error` frames that named a message of this run.
    pub(super) errors: AtomicU64,
}

/// What happened to one message, as read at the end of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outcome {
    /// Whether it was written to its sender's socket.
    pub(super) sent: bool,
    pub(super) acks: u8,
    pub(super) deliveries: u8,
    /// The error code that answered it, if any.
    pub(super) error: Option<ErrorCode>,
    /// From its due time to its first ack.
    pub(super) ack_latency: Option<Duration>,
    /// From its due time to its first arrival at the recipient.
    pub(super) delivery_latency: Option<Duration>,
}

/// Every message's state, indexed by message index.
pub(super) struct Ledger {
    slots: Box<[Slot]>,
    pub(super) live: Live,
}

impl Ledger {
    /// A ledger for messages `0..len`.
    pub(super) fn new(len: u32) -> Self {
        Self {
            slots: (0..len).map(|_| Slot::default()).collect(),
            live: Live::default(),
        }
    }

    /// The slot of message `i`, if `i` is one of ours.
    fn slot(&self, i: u32) -> Option<&Slot> {
        self.slots.get(i as usize)
    }

    /// Whether `i` is a message of this run.
    pub(super) fn contains(&self, i: u32) -> bool {
        (i as usize) < self.slots.len()
    }

    /// Message `i` is being written to its sender's socket.
    pub(super) fn mark_sent(&self, i: u32) {
        if let Some(slot) = self.slot(i) {
            slot.flags.fetch_or(SENT, Ordering::Relaxed);
            self.live.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Message `i` was acked `latency` after it was due.
    pub(super) fn record_ack(&self, i: u32, latency: Duration) {
        let Some(slot) = self.slot(i) else { return };
        if slot.acks.fetch_add(1, Ordering::Relaxed) == 0 {
            slot.ack_us.store(micros(latency), Ordering::Relaxed);
            self.live.acked.fetch_add(1, Ordering::Relaxed);
        }
        self.answered(slot);
    }

    /// Message `i` reached its recipient `latency` after it was due. Returns how many times
    /// it had arrived before.
    pub(super) fn record_delivery(&self, i: u32, latency: Duration) -> u8 {
        let Some(slot) = self.slot(i) else { return 0 };
        let before = slot.deliveries.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            slot.delivery_us.store(micros(latency), Ordering::Relaxed);
            self.live.delivered.fetch_add(1, Ordering::Relaxed);
        } else if before == u8::MAX {
            // Saturate rather than wrap back to "never delivered".
            slot.deliveries.store(u8::MAX, Ordering::Relaxed);
        }
        before
    }

    /// Message `i` was refused with error `code`.
    pub(super) fn record_error(&self, i: u32, code: ErrorCode) {
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

    /// Whether nothing more is expected: every queued message was written (or abandoned),
    /// every written one answered, and every acked one delivered.
    pub(super) fn is_drained(&self) -> bool {
        let live = &self.live;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        load(&live.sent) + load(&live.abandoned) >= load(&live.dispatched)
            && load(&live.answered) >= load(&live.sent)
            && load(&live.delivered) >= load(&live.acked)
    }

    /// What happened to message `i` (`i` must be below the ledger's length).
    pub(super) fn outcome(&self, i: u32) -> Outcome {
        let slot = &self.slots[i as usize];
        let latency = |us: &AtomicU32| match us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(u64::from(us))),
        };
        Outcome {
            sent: slot.flags.load(Ordering::Relaxed) & SENT != 0,
            acks: slot.acks.load(Ordering::Relaxed),
            deliveries: slot.deliveries.load(Ordering::Relaxed),
            error: error_code(slot.error.load(Ordering::Relaxed)),
            ack_latency: latency(&slot.ack_us),
            delivery_latency: latency(&slot.delivery_us),
        }
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
        let ledger = Ledger::new(3);
        ledger.mark_sent(0);
        ledger.record_ack(0, Duration::from_micros(1_500));
        assert!(!ledger.is_drained(), "message 0 is acked but not delivered");
        assert_eq!(ledger.record_delivery(0, Duration::ZERO), 0);
        assert_eq!(ledger.record_delivery(0, Duration::ZERO), 1);
        ledger.mark_sent(1);
        ledger.record_error(1, ErrorCode::RateLimited);
        let zero = ledger.outcome(0);
        assert_eq!((zero.acks, zero.deliveries), (1, 2));
        assert_eq!(zero.ack_latency, Some(Duration::from_micros(1_500)));
        assert_eq!(zero.delivery_latency, Some(Duration::from_micros(1)));
        assert_eq!(ledger.outcome(1).error, Some(ErrorCode::RateLimited));
        assert_eq!(ledger.outcome(2).error, None);
        assert!(!ledger.outcome(2).sent);
        assert!(ledger.is_drained());
        // Out-of-range indexes from a confused server are ignored.
        ledger.record_ack(99, Duration::ZERO);
        assert!(!ledger.contains(99));
    }
}
