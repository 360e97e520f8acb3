//! The end of an open-loop run: one pass over the ledger for latencies, throughput and the
//! delivery check, plus each user's seq stream.
//!
//! The delivery contract checked: every acked message reaches each of its recipients exactly
//! once; the messages of one sequence of the plan (one sender to one recipient, one group)
//! arrive in order; each user's seqs (its acks plus the messages and events it received) are
//! exactly 1, 2, …, n. Every command gets an answer. A refused message is never delivered.
//! The per-message and per-user rules are [`crate::contract`]'s: the rules about answers are
//! applied to each command, the rules about deliveries to each of its rows.

use std::time::Duration;

use serde::Serialize;

use super::Plan;
use super::ledger::{Ledger, Outcome};
use super::peer::PeerReport;
use crate::contract::{MessageFate, SeqAudit};
use crate::histogram::{Latency, LatencySummary};
use crate::report::{self, Tally};

/// What became of the messages.
#[derive(Debug, Default, Serialize)]
pub(crate) struct MessageCounts {
    pub(crate) planned: u64,
    pub(crate) sent: u64,
    /// Messages never written, because their sender's connection had failed.
    pub(crate) not_sent: u64,
    pub(crate) acked: u64,
    /// Messages that reached every one of their recipients.
    pub(crate) delivered: u64,
    /// Deliveries, one per message and recipient, that arrived (at least once).
    pub(crate) rows_delivered: u64,
    /// Errors by code (those that named no message included).
    pub(crate) errors: Tally,
}

/// Latency and throughput over the measured window (warm-up excluded).
#[derive(Debug, Serialize)]
pub(crate) struct Measured {
    pub(crate) window_secs: f64,
    pub(crate) offered_per_sec: f64,
    /// Acks received during the window, per second.
    pub(crate) acked_per_sec: f64,
    /// Messages whose last delivery arrived during the window, per second.
    pub(crate) delivered_per_sec: f64,
    /// From each message's due time to its ack (for a read, its reply).
    pub(crate) send_to_ack: LatencySummary,
    /// From each message's due time to its arrival at the last of its recipients.
    pub(crate) send_to_delivery: LatencySummary,
    /// For runs that change messages: from each change's due time to its answer
    /// (`message_state`), and to its event's arrival at the other participant. The two
    /// figures above then cover sends alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) change_to_answer: Option<LatencySummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) change_to_event: Option<LatencySummary>,
}

/// Breaches of the delivery contract; all must be zero.
#[derive(Debug, Default, Serialize)]
pub(crate) struct DeliveryCheck {
    /// Deliveries of acked messages (one per message and recipient) that never arrived.
    pub(crate) lost: u64,
    /// Of `lost`, those whose recipient's session the server had closed (a real client would
    /// recover them with `sync` after reconnecting; the benchmark does not reconnect).
    pub(crate) lost_to_closed_sessions: u64,
    /// Deliveries that arrived more than once.
    pub(crate) duplicated: u64,
    /// Messages that arrived after a later message of the same sequence (sender, group).
    pub(crate) out_of_order: u64,
    /// Seqs missing from users' streams.
    pub(crate) seq_gaps: u64,
    /// Of `seq_gaps`, those in the streams of users whose session the server closed.
    pub(crate) seq_gaps_on_closed_sessions: u64,
    /// Seqs seen twice in a user's stream (or 0).
    pub(crate) seq_duplicates: u64,
    /// Sends that got neither an ack nor an error.
    pub(crate) unanswered: u64,
    /// Of `unanswered`, those whose sender's session the server had closed.
    pub(crate) unanswered_on_closed_sessions: u64,
    /// Messages acked more than once, or acked with `duplicate: true`.
    pub(crate) duplicate_acks: u64,
    /// Messages answered with an error and delivered anyway.
    pub(crate) delivered_after_error: u64,
    /// Frames for the wrong user, from the wrong sender, or naming unknown messages.
    pub(crate) misrouted: u64,
    /// Frames that could not be decoded.
    pub(crate) undecodable: u64,
}

impl DeliveryCheck {
    /// Whether the contract held.
    pub(crate) fn passed(&self) -> bool {
        self.problems() == 0
    }

    /// The number of breaches of every kind.
    pub(crate) fn problems(&self) -> u64 {
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

impl std::fmt::Display for MessageCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  messages        {} planned, {} sent, {} acked, {} delivered, {} not sent",
            self.planned, self.sent, self.acked, self.delivered, self.not_sent
        )?;
        writeln!(f, "  errors          {}", self.errors)
    }
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  throughput      offered {:.0}/s, acked {:.0}/s, delivered {:.0}/s",
            self.offered_per_sec, self.acked_per_sec, self.delivered_per_sec
        )?;
        writeln!(f, "  send→ack        {}", self.send_to_ack)?;
        writeln!(f, "  send→delivery   {}", self.send_to_delivery)?;
        if let (Some(answer), Some(event)) = (&self.change_to_answer, &self.change_to_event) {
            writeln!(f, "  change→answer   {answer}")?;
            writeln!(f, "  change→event    {event}")?;
        }
        Ok(())
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
pub(crate) struct Analysis {
    pub(crate) messages: MessageCounts,
    pub(crate) measured: Measured,
    pub(crate) check: DeliveryCheck,
}

/// Sums up the run. `window` is the measured window, as offsets from the start.
pub(crate) fn analyse<P: Plan>(
    plan: &P,
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
    for i in 0..plan.timeline().len() {
        pass.add(i, &ledger.outcome(i), ledger.deliveries(i));
    }
    let mut check = pass.check;
    let mut messages = pass.messages;
    for peer in peers.iter_mut() {
        let seqs = SeqAudit::of_unsorted(&mut peer.seqs, peer.announced);
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
        change_to_answer: pass.changes.then(|| pass.change_ack.summary()),
        change_to_event: pass.changes.then(|| pass.change_delivery.summary()),
    };
    Analysis {
        messages,
        measured,
        check,
    }
}

/// The running totals of the pass over the ledger.
struct LedgerPass<'a, P> {
    plan: &'a P,
    /// By user: whether the server closed the user's session during the run.
    closed: &'a [bool],
    window: (Duration, Duration),
    messages: MessageCounts,
    check: DeliveryCheck,
    ack: Latency,
    delivery: Latency,
    /// Whether any command changed a message, and the latencies of those that did.
    changes: bool,
    change_ack: Latency,
    change_delivery: Latency,
    offered_in_window: u64,
    acked_in_window: u64,
    delivered_in_window: u64,
}

impl<'a, P: Plan> LedgerPass<'a, P> {
    fn new(plan: &'a P, window: (Duration, Duration), closed: &'a [bool]) -> Self {
        Self {
            plan,
            closed,
            window,
            messages: MessageCounts::default(),
            check: DeliveryCheck::default(),
            ack: Latency::new(),
            delivery: Latency::new(),
            changes: false,
            change_ack: Latency::new(),
            change_delivery: Latency::new(),
            offered_in_window: 0,
            acked_in_window: 0,
            delivered_in_window: 0,
        }
    }

    /// Accounts for command `i`, with how many times it reached each of its recipients.
    fn add(&mut self, i: u32, o: &Outcome, deliveries: impl Iterator<Item = u8>) {
        self.count(o);
        self.verify(i, o, deliveries);
        let timeline = self.plan.timeline();
        let due = timeline.due(i);
        let in_window = |at: Duration| at >= self.window.0 && at < self.window.1;
        self.offered_in_window += u64::from(in_window(due));
        let change = self.plan.changes_a_message(i);
        self.changes |= change;
        let (ack, delivery) = if change {
            (&mut self.change_ack, &mut self.change_delivery)
        } else {
            (&mut self.ack, &mut self.delivery)
        };
        if let Some(latency) = o.ack_latency {
            self.acked_in_window += u64::from(in_window(due + latency));
            if timeline.is_measured(i) {
                ack.record(latency);
            }
        }
        if let Some(latency) = o.delivery_latency {
            self.delivered_in_window += u64::from(in_window(due + latency));
            if timeline.is_measured(i) {
                delivery.record(latency);
            }
        }
    }

    fn count(&mut self, o: &Outcome) {
        let m = &mut self.messages;
        m.planned += 1;
        m.sent += u64::from(o.sent);
        m.not_sent += u64::from(!o.sent);
        m.acked += u64::from(o.acks > 0);
        m.delivered += u64::from(o.delivery_latency.is_some());
        m.rows_delivered += u64::from(o.rows_delivered);
        if let Some(code) = o.error {
            m.errors.add(code.as_str(), 1);
        }
    }

    /// Applies the rules about answers to the command, and the rules about deliveries to
    /// each of its rows.
    fn verify(&mut self, i: u32, o: &Outcome, deliveries: impl Iterator<Item = u8>) {
        let fate = |deliveries: u8| MessageFate {
            sent: o.sent,
            acks: o.acks.into(),
            deliveries: deliveries.into(),
            refused: o.error.is_some(),
        };
        let closed = |user: u32| u64::from(self.closed.get(user as usize) == Some(&true));
        let answer = fate(0).breaches();
        let c = &mut self.check;
        if answer.unanswered {
            c.unanswered += 1;
            c.unanswered_on_closed_sessions += closed(self.plan.sender(i));
        }
        c.duplicate_acks += u64::from(answer.duplicate_ack);
        for (row, count) in (0..).zip(deliveries) {
            let delivery = fate(count).breaches();
            if delivery.lost {
                c.lost += 1;
                c.lost_to_closed_sessions += closed(self.plan.recipient(i, row));
            }
            c.duplicated += u64::from(delivery.duplicated);
            c.delivered_after_error += u64::from(delivery.delivered_after_error);
        }
    }
}

#[cfg(test)]
mod tests {
    use peroxo_protocol::{Command, CommandKind, ErrorCode, MessageView};

    use super::*;
    use crate::traffic::{Route, Timeline};

    /// Two users taking turns, each message reaching `fanout` recipients.
    struct TestPlan {
        timeline: Timeline,
        fanout: u32,
    }

    impl TestPlan {
        fn new(rate: u32, fanout: u32) -> Self {
            let timeline = Timeline::new(rate, Duration::ZERO, Duration::from_secs(1)).unwrap();
            Self { timeline, fanout }
        }
    }

    impl Plan for TestPlan {
        fn timeline(&self) -> &Timeline {
            &self.timeline
        }
        fn users(&self) -> u32 {
            2
        }
        fn sender(&self, i: u32) -> u32 {
            i % 2
        }
        fn command(&self, _: u32, _: usize) -> Command {
            Command {
                req_id: None,
                kind: CommandKind::Ping,
            }
        }
        fn fanout(&self) -> u32 {
            self.fanout
        }
        fn recipient(&self, i: u32, _: u32) -> u32 {
            1 - i % 2
        }
        fn route(&self, _: u32, _: &MessageView<'_>) -> Option<Route> {
            None
        }
    }

    fn sent_ledger(plan: &TestPlan) -> Ledger {
        let ledger = Ledger::new(plan.timeline.len(), plan.fanout);
        for i in 0..plan.timeline.len() {
            ledger.mark_sent(i);
        }
        ledger
    }

    const WINDOW: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(1));

    #[test]
    fn the_ledger_pass_finds_lost_duplicated_and_unanswered_messages() {
        let plan = TestPlan::new(10, 1);
        let ledger = sent_ledger(&plan);
        let ms = Duration::from_millis(1);
        for i in 0..7 {
            ledger.record_ack(i, ms);
        }
        for i in 0..6 {
            ledger.record_delivery(i, 0, 2 * ms);
        }
        ledger.record_delivery(0, 0, 3 * ms); // duplicated
        ledger.record_error(7, ErrorCode::Unavailable);
        let analysis = analyse(&plan, &ledger, WINDOW, &mut []);
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
        let plan = TestPlan::new(4, 1);
        let ledger = sent_ledger(&plan);
        let ms = Duration::from_millis(1);
        ledger.record_ack(0, ms);
        ledger.record_ack(0, ms);
        ledger.record_delivery(0, 0, ms);
        ledger.record_error(1, ErrorCode::RateLimited);
        ledger.record_delivery(1, 0, ms);
        for i in 2..4 {
            ledger.record_ack(i, ms);
            ledger.record_delivery(i, 0, ms);
        }
        let check = analyse(&plan, &ledger, WINDOW, &mut []).check;
        assert_eq!(check.duplicate_acks, 1, "message 0 is acked twice");
        assert_eq!(
            check.delivered_after_error, 1,
            "message 1 is refused, then delivered"
        );
        assert_eq!((check.lost, check.duplicated, check.unanswered), (0, 0, 0));
        assert_eq!(check.problems(), 2);
    }

    #[test]
    fn each_recipient_of_a_message_is_owed_exactly_one_delivery() {
        let plan = TestPlan::new(2, 3);
        let ledger = sent_ledger(&plan);
        let ms = Duration::from_millis(1);
        ledger.record_ack(0, ms);
        ledger.record_ack(1, ms);
        // Message 0: every row once. Message 1: row 0 twice, row 1 once, row 2 never, so
        // that the total of three deliveries alone would hide both breaches.
        for row in 0..3 {
            ledger.record_delivery(0, row, (row + 2) * ms);
        }
        ledger.record_delivery(1, 0, ms);
        ledger.record_delivery(1, 0, ms);
        ledger.record_delivery(1, 1, ms);
        let analysis = analyse(&plan, &ledger, WINDOW, &mut []);
        let check = &analysis.check;
        assert_eq!((check.lost, check.duplicated), (1, 1));
        assert_eq!(
            analysis.messages.delivered, 1,
            "only message 0 reached everyone"
        );
        assert_eq!(analysis.messages.rows_delivered, 5);
        let delivery = analysis.measured.send_to_delivery;
        assert_eq!(delivery.count, 1);
        // Message 0's last recipient, within the histogram's three significant digits.
        assert!((4_000..4_005).contains(&delivery.max_us), "{delivery:?}");
    }

    #[test]
    fn losses_are_charged_to_the_recipients_whose_sessions_closed() {
        let plan = TestPlan::new(2, 1);
        let ledger = sent_ledger(&plan);
        for i in 0..2 {
            ledger.record_ack(i, Duration::from_millis(1));
        }
        // Message 1 goes to user 0, whose session the server closed.
        let mut peers = [PeerReport {
            user: 0,
            closed_by_server: Some("1013 slow".to_owned()),
            ..PeerReport::default()
        }];
        let check = analyse(&plan, &ledger, WINDOW, &mut peers).check;
        assert_eq!((check.lost, check.lost_to_closed_sessions), (2, 1));
    }

    #[test]
    fn a_read_is_judged_by_its_reply_alone() {
        let plan = TestPlan::new(3, 0);
        let ledger = sent_ledger(&plan);
        ledger.record_ack(0, Duration::from_millis(4));
        ledger.record_error(1, ErrorCode::Unavailable);
        let analysis = analyse(&plan, &ledger, WINDOW, &mut []);
        assert_eq!(analysis.check.lost, 0, "a read delivers nothing");
        assert_eq!(analysis.check.unanswered, 1, "command 2");
        assert_eq!(analysis.measured.send_to_ack.count, 1);
        assert_eq!(analysis.measured.send_to_delivery.count, 0);
    }
}
