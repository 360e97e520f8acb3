//! What the clients of a case did, summed over all of them: the traffic they offered and
//! got, for the case's line, and what they went through, for the line and for the check that
//! the fault struck.

use std::collections::BTreeMap;

use peroxo_protocol::event::is_group_id;

use crate::changes::{ChangeOutcome, ChangeRecord};
use crate::report::{Entry, OpOutcome, UserReport};
use peroxo_client::Change;

/// What the clients of a case sent and got, summed over all of them, for the verdict line.
#[derive(Debug, Default)]
pub(crate) struct TrafficTotals {
    /// Direct messages sent and acked.
    sent: usize,
    acked: usize,
    /// Group messages sent and acked, and copies of them in other members' streams.
    group_sent: usize,
    group_acked: usize,
    group_delivered: usize,
    /// Messages from others (direct and group) first seen live, and through `sync`.
    live: u64,
    by_sync: u64,
    /// Read marks asked for and answered, and the `read_marker` and `read_receipt` events
    /// they put in streams.
    marks: u64,
    marks_answered: u64,
    marker_events: usize,
    receipt_events: usize,
    /// Group messages not sent because the sender had left, and sent but refused
    /// `not_a_member`.
    group_skipped: u64,
    group_refused: usize,
    /// Membership changes made, answered `done`, and found done already on a repeat.
    changes: usize,
    changes_done: usize,
    changes_already_done: usize,
    /// Changes to messages made (edits, deletes, reactions made and taken back), answered,
    /// refused for good, and the events of protocol 3 they put in streams.
    ops: [usize; 4],
    ops_answered: usize,
    ops_refused: usize,
    op_events: usize,
    /// Replies sent (direct and group), and refused (for what they quote, or `not_a_member`).
    replies: usize,
    replies_refused: usize,
}

impl TrafficTotals {
    pub(crate) fn of(reports: &[UserReport], changes: &[ChangeRecord]) -> Self {
        let mut totals = Self {
            changes: changes.len(),
            ..Self::default()
        };
        for change in changes {
            match change.outcome {
                ChangeOutcome::Done => totals.changes_done += 1,
                ChangeOutcome::AlreadyDone => totals.changes_already_done += 1,
                ChangeOutcome::Failed(_) => {}
            }
        }
        for report in reports {
            totals.group_skipped += report.skipped_sends;
            for send in &report.sends {
                let acked = usize::from(send.ack.is_some());
                if send.reply_to.is_some() {
                    totals.replies += 1;
                    totals.replies_refused += usize::from(send.refused.is_some());
                }
                if is_group_id(&send.to) {
                    totals.group_sent += 1;
                    totals.group_acked += acked;
                    totals.group_refused += usize::from(send.refused.is_some());
                } else {
                    totals.sent += 1;
                    totals.acked += acked;
                }
            }
            totals.live += report.received_live;
            totals.by_sync += report.received_by_sync;
            totals.marks += report.marks_requested;
            totals.marks_answered += report.marks_answered;
            for op in &report.changes {
                let kind = match op.change {
                    Change::Edit { .. } => 0,
                    Change::Delete => 1,
                    Change::React { .. } => 2,
                    Change::Unreact { .. } => 3,
                };
                totals.ops[kind] += 1;
                match op.outcome {
                    OpOutcome::Answered { .. } => totals.ops_answered += 1,
                    OpOutcome::Refused(_) => totals.ops_refused += 1,
                    OpOutcome::Failed(_) => {}
                }
            }
            for entry in report.stream.values() {
                match entry {
                    Entry::Message { to, from, .. } if is_group_id(to) && *from != report.user => {
                        totals.group_delivered += 1;
                    }
                    Entry::Event { kind, .. } if kind == "read_marker" => totals.marker_events += 1,
                    Entry::Event { kind, .. } if kind == "read_receipt" => {
                        totals.receipt_events += 1;
                    }
                    entry if entry.message_change().is_some() => totals.op_events += 1,
                    _ => {}
                }
            }
        }
        totals
    }
}

impl std::fmt::Display for TrafficTotals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} acked {} | group sent {} acked {} refused {} delivered {} (not sent {}) \
             | changes {} done {} already done {} | received live {} by sync {} \
             | marks {} answered {} events {} receipts {} | edits {} deletes {} reacts {} \
             unreacts {} answered {} refused {} events {} | replies {} refused {}",
            self.sent,
            self.acked,
            self.group_sent,
            self.group_acked,
            self.group_refused,
            self.group_delivered,
            self.group_skipped,
            self.changes,
            self.changes_done,
            self.changes_already_done,
            self.live,
            self.by_sync,
            self.marks,
            self.marks_answered,
            self.marker_events,
            self.receipt_events,
            self.ops[0],
            self.ops[1],
            self.ops[2],
            self.ops[3],
            self.ops_answered,
            self.ops_refused,
            self.op_events,
            self.replies,
            self.replies_refused
        )
    }
}

/// What the clients of a case went through, summed over all of them.
pub(crate) struct ClientTotals<'a> {
    pub(crate) reconnects: u64,
    pub(crate) sync_hints: u64,
    /// `error` frames by code.
    pub(crate) errors: BTreeMap<&'a str, u64>,
}

impl<'a> ClientTotals<'a> {
    pub(crate) fn of(reports: &'a [UserReport]) -> Self {
        let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
        for report in reports {
            for (code, n) in &report.errors {
                *errors.entry(code).or_default() += n;
            }
        }
        Self {
            reconnects: reports.iter().map(|r| r.reconnects).sum(),
            sync_hints: reports.iter().map(|r| r.sync_hints).sum(),
            errors,
        }
    }
}
