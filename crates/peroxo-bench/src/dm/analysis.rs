//! The end of a `dm` run: one pass over the ledger for latencies, throughput and the
//! delivery check, plus each user's seq stream.
//!
//! The delivery contract checked: every acked message reaches its recipient exactly once; the
//! messages of one sender to one recipient arrive in the order they were sent; each user's
//! seqs (its acks plus the messages it received) are exactly 1, 2, …, n. Every send gets an
//! answer. A refused message is never delivered. The per-message and per-user rules are
//! [`crate::contract`]'s; the ledger's slots are turned into its counts one message at a time.

use std::time::Duration;

use serde::Serialize;

use super::ledger::{Ledger, Outcome};
use super::peer::PeerReport;
use super::plan::Plan;
use crate::contract::{MessageFate, SeqAudit};
use crate::histogram::{Latency, LatencySummary};
use crate::report::{self, Tally};

/// What became of the messages.
#[derive(Debug, Default, Serialize)]
pub(super) struct MessageCounts {
    pub(super) planned: u64,
    pub(super) sent: u64,
    /// Messages never written, because their sender's connection had failed.
    pub(super) not_sent: u64,
    pub(super) acked: u64,
    pub(super) delivered: u64,
    /// Errors by code (those that named no message included).
    pub(super) errors: Tally,
}

/// Latency and throughput over the measured window (warm-up excluded).
#[derive(Debug, Serialize)]
pub(super) struct Measured {
    pub(super) window_secs: f64,
    pub(super) offered_per_sec: f64,
    /// Acks received during the window, per second.
    pub(super) acked_per_sec: f64,
    /// Messages received during the window, per second.
    pub(super) delivered_per_sec: f64,
    /// From each message's due time to its ack.
    pub(super) send_to_ack: LatencySummary,
    /// From each message's due time to its arrival at the recipient.
    pub(super) send_to_delivery: LatencySummary,
}

/// Breaches of the delivery contract; all must be zero.
#[derive(Debug, Default, Serialize)]
pub(super) struct DeliveryCheck {
    /// Acked messages that never reached their recipient.
    pub(super) lost: u64,
    /// Of `lost`, those whose recipient's session the server had closed (a real client would
    /// recover them with `sync` after reconnecting; the benchmark does not reconnect).
    pub(super) lost_to_closed_sessions: u64,
    /// Messages that reached their recipient more than once.
    pub(super) duplicated: u64,
    /// Messages that arrived after a later message from the same sender.
    pub(super) out_of_order: u64,
    /// Seqs missing from users' streams.
    pub(super) seq_gaps: u64,
    /// Of `seq_gaps`, those in the streams of users whose session the server closed.
    pub(super) seq_gaps_on_closed_sessions: u64,
    /// Seqs seen twice in a user's stream (or 0).
    pub(super) seq_duplicates: u64,
    /// Sends that got neither an ack nor an error.
    pub(super) unanswered: u64,
    /// Of `unanswered`, those whose sender's session the server had closed.
    pub(super) unanswered_on_closed_sessions: u64,
    /// Messages acked more than once, or acked with `duplicate: true`.
    pub(super) duplicate_acks: u64,
    /// Messages answered with an error and delivered anyway.
    pub(super) delivered_after_error: u64,
    /// Frames for the wrong user, from the wrong sender, or naming unknown messages.
    pub(super) misrouted: u64,
    /// Frames that could not be decoded.
    pub(super) undecodable: u64,
}

impl DeliveryCheck {
    /// Whether the contract held.
    pub(super) fn passed(&self) -> bool {
        self.problems() == 0
    }

    /// The number of breaches of every kind.
    pub(super) fn problems(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.out_of_order
            + self.seq_gaps
            + self.seq_duplicates
            + self.unanswered
            + self.duplicate_acks
            + self.delivered_after_error
            + self.misrouted
            + self.undecodable
    }
}

impl std::fmt::Display for DeliveryCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  lost            {} ({} to sessions the server closed)",
            self.lost, self.lost_to_closed_sessions
        )?;
        writeln!(f, "  duplicated      {}", self.duplicated)?;
        writeln!(f, "  out of order    {}", self.out_of_order)?;
        writeln!(
            f,
            "  seq gaps        {} ({} on sessions the server closed); seq duplicates {}",
            self.seq_gaps, self.seq_gaps_on_closed_sessions, self.seq_duplicates
        )?;
        writeln!(
            f,
            "  unanswered      {} ({} on sessions the server closed)",
            self.unanswered, self.unanswered_on_closed_sessions
        )?;
        writeln!(
            f,
            "  other breaches  duplicate acks {}, delivered after error {}, misrouted {}, undecodable {}",
            self.duplicate_acks, self.delivered_after_error, self.misrouted, self.undecodable
        )
    }
}

/// Everything the analysis found.
pub(super) struct Analysis {
    pub(super) messages: MessageCounts,
    pub(super) measured: Measured,
    pub(super) check: DeliveryCheck,
}

/// Sums up the run. `window` is the measured window, as offsets from the start.
pub(super) fn analyse(
    plan: &Plan,
    ledger: &Ledger,
    window: (Duration, Duration),
    peers: &mut [PeerReport],
) -> Analysis {
    let mut closed = vec![false; plan.users() as usize];
    for peer in peers.iter().filter(|p| p.closed_by_server.is_some()) {
        if let Some(flag) = closed.get_mut(peer.user as usize) {
            *flag = true;
        }
    }
    let mut pass = LedgerPass::new(plan, window, &closed);
    for i in 0..plan.len() {
        pass.add(i, &ledger.outcome(i));
    }
    let mut check = pass.check;
    let mut messages = pass.messages;
    for peer in peers.iter_mut() {
        let seqs = SeqAudit::of_unsorted(&mut peer.seqs, 0);
        check.seq_gaps += seqs.gaps;
        if peer.closed_by_server.is_some() {
            check.seq_gaps_on_closed_sessions += seqs.gaps;
        }
        check.seq_duplicates += seqs.duplicates;
        check.out_of_order += peer.out_of_order;
        check.misrouted += peer.misrouted;
        check.duplicate_acks += peer.duplicate_acks;
        check.undecodable += peer.undecodable;
        messages.errors.merge(peer.errors_without_id.clone());
    }
    let span = window.1.saturating_sub(window.0);
    let measured = Measured {
        window_secs: span.as_secs_f64(),
        offered_per_sec: report::per_second(pass.offered_in_window, span),
        acked_per_sec: report::per_second(pass.acked_in_window, span),
        delivered_per_sec: report::per_second(pass.delivered_in_window, span),
        send_to_ack: pass.ack.summary(),
        send_to_delivery: pass.delivery.summary(),
    };
    Analysis {
        messages,
        measured,
        check,
    }
}

/// The running totals of the pass over the ledger.
struct LedgerPass<'a> {
    plan: &'a Plan,
    /// By user: whether the server closed the user's session during the run.
    closed: &'a [bool],
    window: (Duration, Duration),
    messages: MessageCounts,
    check: DeliveryCheck,
    ack: Latency,
    delivery: Latency,
    offered_in_window: u64,
    acked_in_window: u64,
    delivered_in_window: u64,
}

impl<'a> LedgerPass<'a> {
    fn new(plan: &'a Plan, window: (Duration, Duration), closed: &'a [bool]) -> Self {
        Self {
            plan,
            closed,
            window,
            messages: MessageCounts::default(),
            check: DeliveryCheck::default(),
            ack: Latency::new(),
            delivery: Latency::new(),
            offered_in_window: 0,
            acked_in_window: 0,
            delivered_in_window: 0,
        }
    }

    /// Accounts for message `i`.
    fn add(&mut self, i: u32, o: &Outcome) {
        self.count(o);
        self.verify(i, o);
        let due = self.plan.due(i);
        let in_window = |at: Duration| at >= self.window.0 && at < self.window.1;
        self.offered_in_window += u64::from(in_window(due));
        if let Some(latency) = o.ack_latency {
            self.acked_in_window += u64::from(in_window(due + latency));
            if self.plan.is_measured(i) {
                self.ack.record(latency);
            }
        }
        if let Some(latency) = o.delivery_latency {
            self.delivered_in_window += u64::from(in_window(due + latency));
            if self.plan.is_measured(i) {
                self.delivery.record(latency);
            }
        }
    }

    fn count(&mut self, o: &Outcome) {
        let m = &mut self.messages;
        m.planned += 1;
        m.sent += u64::from(o.sent);
        m.not_sent += u64::from(!o.sent);
        m.acked += u64::from(o.acks > 0);
        m.delivered += u64::from(o.deliveries > 0);
        if let Some(code) = o.error {
            m.errors.add(code.as_str(), 1);
        }
    }

    fn verify(&mut self, i: u32, o: &Outcome) {
        let breaches = MessageFate {
            sent: o.sent,
            acks: o.acks.into(),
            deliveries: o.deliveries.into(),
            refused: o.error.is_some(),
        }
        .breaches();
        let closed = |user: u32| u64::from(self.closed.get(user as usize) == Some(&true));
        let c = &mut self.check;
        if breaches.unanswered {
            c.unanswered += 1;
            c.unanswered_on_closed_sessions += closed(self.plan.sender(i));
        }
        if breaches.lost {
            c.lost += 1;
            c.lost_to_closed_sessions += closed(self.plan.recipient(i));
        }
        c.duplicated += u64::from(breaches.duplicated);
        c.duplicate_acks += u64::from(breaches.duplicate_ack);
        c.delivered_after_error += u64::from(breaches.delivered_after_error);
    }
}

#[cfg(test)]
mod tests {
    use peroxo_protocol::ErrorCode;

    use super::*;

    #[test]
    fn the_ledger_pass_finds_lost_duplicated_and_unanswered_messages() {
        let plan = Plan::new(2, 10, Duration::ZERO, Duration::from_secs(1), 1).unwrap();
        let ledger = Ledger::new(plan.len());
        let ms = Duration::from_millis(1);
        for i in 0..plan.len() {
            ledger.mark_sent(i);
        }
        for i in 0..7 {
            ledger.record_ack(i, ms);
        }
        for i in 0..6 {
            ledger.record_delivery(i, 2 * ms);
        }
        ledger.record_delivery(0, 3 * ms); // duplicated
        ledger.record_error(7, ErrorCode::Unavailable);
        let analysis = analyse(
            &plan,
            &ledger,
            (Duration::ZERO, Duration::from_secs(1)),
            &mut [],
        );
        let check = &analysis.check;
        assert_eq!(check.lost, 1, "message 6 is acked, never delivered");
        assert_eq!(check.duplicated, 1);
        assert_eq!(check.unanswered, 2, "messages 8 and 9");
        assert!(!check.passed());
        assert_eq!(analysis.messages.acked, 7);
        assert_eq!(analysis.messages.errors.total(), 1);
        assert_eq!(analysis.measured.send_to_ack.count, 7);
        assert_eq!(analysis.measured.acked_per_sec, 7.0);
    }

    #[test]
    fn the_ledger_pass_finds_repeated_acks_and_deliveries_after_errors() {
        let plan = Plan::new(2, 4, Duration::ZERO, Duration::from_secs(1), 1).unwrap();
        let ledger = Ledger::new(plan.len());
        let ms = Duration::from_millis(1);
        for i in 0..plan.len() {
            ledger.mark_sent(i);
        }
        ledger.record_ack(0, ms);
        ledger.record_ack(0, ms);
        ledger.record_delivery(0, ms);
        ledger.record_error(1, ErrorCode::RateLimited);
        ledger.record_delivery(1, ms);
        for i in 2..4 {
            ledger.record_ack(i, ms);
            ledger.record_delivery(i, ms);
        }
        let window = (Duration::ZERO, Duration::from_secs(1));
        let check = analyse(&plan, &ledger, window, &mut []).check;
        assert_eq!(check.duplicate_acks, 1, "message 0 is acked twice");
        assert_eq!(
            check.delivered_after_error, 1,
            "message 1 is refused, then delivered"
        );
        assert_eq!((check.lost, check.duplicated, check.unanswered), (0, 0, 0));
        assert_eq!(check.problems(), 2);
    }
}
