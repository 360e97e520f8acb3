//! The invariants checked after each case, once traffic has stopped and every client has
//! synced: what clients were told against what the database holds, what every client ended
//! with, and what the processes and their metrics show. [`groups`] holds the checks of
//! groups and their changes, [`conversations`] those of the conversation list, [`receipts`]
//! those of read receipts and of protocol-1 users, [`lifecycle`] those of edits, deletes and
//! reactions, [`webhooks`] that of the cases with a webhook receiver.
//!
//! The rules a user's stream and each acked message obey are `peroxo_bench::contract`'s, the
//! same the load generator judges by; what only this suite can check (the database's rows,
//! the processes and their metrics) is here.

mod conversations;
mod groups;
mod lifecycle;
mod receipts;
mod webhooks;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use peroxo_bench::contract::{MessageFate, SeqAudit};
use peroxo_protocol::event::is_group_id;

use crate::changes::ChangeRecord;
use crate::report::{Entry, OpOutcome, UserReport};
use crate::rig::{Counters, Stored, StoredRow};
use crate::webhook::Received;
use crate::workload::Group;

/// Everything a verdict is drawn from.
pub(crate) struct Evidence<'a> {
    pub(crate) reports: &'a [UserReport],
    pub(crate) stored: &'a Stored,
    /// The groups the workload created, with their initial members.
    pub(crate) groups: &'a [Group],
    /// Every membership change the workload made, each group's in order.
    pub(crate) changes: &'a [ChangeRecord],
    pub(crate) max_pending: usize,
    /// Every node's counters over all its incarnations (`None`: its metrics were never read).
    pub(crate) nodes: Vec<Option<Counters>>,
    /// All nodes' counters together.
    pub(crate) totals: Counters,
    /// Crashes the case caused through the test hooks, by actor kind (the label of
    /// `peroxo_actor_restarts_total`): each must show as one restart of that kind.
    pub(crate) crashes: BTreeMap<&'static str, u64>,
    /// On a cluster: whether a message sent through one node still reached a client on
    /// another live, once the traffic was over (`None` on a single node).
    pub(crate) cross_node: Option<Result<(), String>>,
    /// What the case's webhook receiver got (`None`: the case configured none).
    pub(crate) webhooks: Option<&'a Received>,
    /// Processes that were not running at the end although the case never killed them.
    pub(crate) unexpected_deaths: Vec<String>,
    /// What shows that the fault struck (reconnects, refusals, restarts), and whether it did.
    pub(crate) effect: String,
    pub(crate) effect_seen: bool,
}

/// One invariant's result: what broke it, if anything, and a short remark for the line.
struct Check {
    name: &'static str,
    failures: Vec<String>,
    remark: String,
}

/// Every invariant's result for one case.
pub(crate) struct Verdict {
    checks: Vec<Check>,
}

impl Verdict {
    pub(crate) fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.failures.is_empty())
    }

    /// `name ok` or `name FAIL(n)` for every invariant.
    pub(crate) fn summary(&self) -> String {
        let mut line = String::new();
        for check in &self.checks {
            let result = if check.failures.is_empty() {
                "ok".to_owned()
            } else {
                format!("FAIL({})", check.failures.len())
            };
            let _ = write!(line, " | {} {result}{}", check.name, check.remark);
        }
        line
    }

    /// The first few failures of every failed invariant.
    pub(crate) fn details(&self) -> String {
        let mut text = String::new();
        for check in self.checks.iter().filter(|c| !c.failures.is_empty()) {
            let _ = writeln!(text, "  {}:", check.name);
            for failure in check.failures.iter().take(8) {
                let _ = writeln!(text, "    {failure}");
            }
            if check.failures.len() > 8 {
                let _ = writeln!(text, "    … and {} more", check.failures.len() - 8);
            }
        }
        text
    }
}

/// An entry of a stream, by what it points at, as the database and the clients both name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryRef {
    Message(i64),
    Event(i64),
}

impl EntryRef {
    fn of(entry: &Entry) -> Self {
        match entry {
            Entry::Message { message_id, .. } => Self::Message(message_id.parse().unwrap_or(-1)),
            Entry::Event { event_id, .. } => Self::Event(event_id.parse().unwrap_or(-1)),
        }
    }
}

impl std::fmt::Display for EntryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryRef::Message(id) => write!(f, "message {id}"),
            EntryRef::Event(id) => write!(f, "event {id}"),
        }
    }
}

/// Every user's stream as the database holds it: seq → what the entry points at.
type StorageStreams<'a> = HashMap<&'a str, BTreeMap<u64, EntryRef>>;

/// Every user's stream as the database holds it. A row that points at neither a message nor
/// an event, or at both, is named in the second list.
fn streams_in_storage(stored: &Stored) -> (StorageStreams<'_>, Vec<String>) {
    let mut streams: HashMap<&str, BTreeMap<u64, EntryRef>> = HashMap::new();
    let mut malformed = Vec::new();
    for row in &stored.streams {
        let entry = match (row.message_id, row.event_id) {
            (Some(id), None) => EntryRef::Message(id),
            (None, Some(id)) => EntryRef::Event(id),
            _ => {
                malformed.push(format!("stream row {row:?} points at no single entry"));
                continue;
            }
        };
        streams
            .entry(row.owner.as_str())
            .or_default()
            .insert(row.seq as u64, entry);
    }
    (streams, malformed)
}

/// The seq columns of every message agree with the streams: the sender's seq names it in the
/// sender's stream; a direct message's recipient seq names it in the recipient's, and a group
/// message has none (each member's seq of it is in that member's stream alone).
fn columns_agree_with_streams(
    stored: &Stored,
    streams: &HashMap<&str, BTreeMap<u64, EntryRef>>,
) -> Vec<String> {
    let points_at = |owner: &str, seq: i64, id: i64| {
        streams
            .get(owner)
            .and_then(|s| s.get(&(seq as u64)))
            .is_some_and(|e| *e == EntryRef::Message(id))
    };
    let mut failures = Vec::new();
    for row in &stored.messages {
        let recipient_agrees = if is_group_id(&row.recipient) {
            row.recipient_seq == 0
        } else {
            points_at(&row.recipient, row.recipient_seq, row.id)
        };
        if !points_at(&row.sender, row.sender_seq, row.id) || !recipient_agrees {
            failures.push(format!("{row:?} disagrees with the streams"));
        }
    }
    failures
}

pub(crate) fn judge(evidence: &Evidence<'_>) -> Verdict {
    let (streams, malformed) = streams_in_storage(evidence.stored);
    let timelines = groups::timelines(evidence);
    let ledgers = conversations::ledgers(evidence.reports);
    let by_sender_and_id: HashMap<(&str, &str), Vec<&StoredRow>> = evidence
        .stored
        .messages
        .iter()
        .fold(HashMap::new(), |mut map, row| {
            map.entry((row.sender.as_str(), row.client_msg_id.as_str()))
                .or_default()
                .push(row);
            map
        });
    let mut checks = vec![
        Check {
            name: "fault-struck",
            failures: if evidence.effect_seen {
                Vec::new()
            } else {
                vec![format!("the fault left no trace: {}", evidence.effect)]
            },
            remark: format!(" ({})", evidence.effect),
        },
        every_send_acked(evidence),
        acked_stored_once(evidence, &by_sender_and_id),
        nothing_unsent_stored(evidence, &by_sender_and_id),
        every_user_has_everything_once_in_order(evidence, &streams, malformed),
        groups::groups_complete(evidence, &timelines, &by_sender_and_id),
        groups::groups_agree(evidence, &timelines),
        groups::changes_match_events(evidence, &timelines),
        gapless(evidence, &streams),
        conversations::lists_match_streams(evidence, &ledgers),
        lifecycle::messages_agree(evidence),
        lifecycle::changes_kept(evidence),
        receipts::read_receipts_match_markers(evidence, &timelines, &ledgers),
        receipts::protocol_1_sees_direct_messages_only(evidence, &streams),
        outbox_bounded(evidence),
        only_victims_died(evidence),
        restarts_visible(evidence),
        clients_saw_nothing_wrong(evidence),
    ];
    if let Some(result) = &evidence.cross_node {
        checks.push(Check {
            name: "cross-node-live",
            failures: result.as_ref().err().cloned().into_iter().collect(),
            remark: String::new(),
        });
    }
    if let Some(received) = evidence.webhooks {
        checks.push(webhooks::webhooks_complete(evidence, received));
    }
    Verdict { checks }
}

/// Every send was acked (or refused, which [`groups::groups_complete`] judges), every mark
/// answered (or refused `not_a_member`, likewise; or, unread from the newest message of
/// someone else, refused `unknown_message` where every such message is deleted), and every
/// change to a message answered (or refused, which [`lifecycle::changes_kept`] judges).
fn every_send_acked(evidence: &Evidence<'_>) -> Check {
    let mut failures: Vec<String> = evidence
        .reports
        .iter()
        .flat_map(|r| r.sends.iter())
        .filter(|s| s.ack.is_none() && s.refused.is_none())
        .map(|s| format!("{} was never acked", s.client_msg_id))
        .collect();
    for report in evidence.reports {
        for op in &report.changes {
            if let OpOutcome::Failed(error) = &op.outcome {
                failures.push(format!(
                    "{}: {:?} of message {} of {}: {error}",
                    report.user, op.change, op.message_id, op.conversation_id
                ));
            }
        }
        let refused = report.refused_marks.len() + report.nothing_unread.len();
        let unanswered = report.marks_requested - report.marks_answered - refused as u64;
        failures.extend(lifecycle::nothing_unread(evidence, report));
        if unanswered > 0 {
            failures.push(format!(
                "{}: {unanswered} of {} marks never answered",
                report.user, report.marks_requested
            ));
        }
    }
    Check {
        name: "all-acked",
        failures,
        remark: String::new(),
    }
}

fn acked_stored_once(
    evidence: &Evidence<'_>,
    by_sender_and_id: &HashMap<(&str, &str), Vec<&StoredRow>>,
) -> Check {
    let mut failures = Vec::new();
    for report in evidence.reports {
        for send in &report.sends {
            let Some((message_id, seq)) = &send.ack else {
                continue;
            };
            let rows = by_sender_and_id
                .get(&(report.user.as_str(), send.client_msg_id.as_str()))
                .map_or(&[][..], Vec::as_slice);
            match rows {
                [row] => {
                    // A changed message's text is `changes-kept`'s to judge.
                    if row.id.to_string() != *message_id
                        || row.sender_seq as u64 != *seq
                        || (row.text != send.text && !row.edited && !row.deleted)
                        || row.recipient != send.to
                    {
                        failures.push(format!(
                            "{} acked as message {message_id} seq {seq}, stored as {row:?}",
                            send.client_msg_id
                        ));
                    }
                }
                rows => failures.push(format!(
                    "{} acked, stored {} times",
                    send.client_msg_id,
                    rows.len()
                )),
            }
        }
    }
    Check {
        name: "acked-stored-once",
        failures,
        remark: String::new(),
    }
}

fn nothing_unsent_stored(
    evidence: &Evidence<'_>,
    by_sender_and_id: &HashMap<(&str, &str), Vec<&StoredRow>>,
) -> Check {
    let sent: HashMap<(&str, &str), (&str, &str)> = evidence
        .reports
        .iter()
        .flat_map(|r| {
            r.sends.iter().map(|s| {
                (
                    (r.user.as_str(), s.client_msg_id.as_str()),
                    (s.to.as_str(), s.text.as_str()),
                )
            })
        })
        .collect();
    let mut failures = Vec::new();
    for ((sender, client_msg_id), rows) in by_sender_and_id {
        if rows.len() > 1 {
            failures.push(format!(
                "{sender}/{client_msg_id} stored {} times",
                rows.len()
            ));
        }
        for row in rows {
            match sent.get(&(*sender, *client_msg_id)) {
                Some((to, text))
                    if *to == row.recipient && (*text == row.text || row.edited || row.deleted) => {
                }
                Some(_) => failures.push(format!("{row:?} differs from what was sent")),
                None => failures.push(format!("{row:?} was never sent")),
            }
        }
    }
    Check {
        name: "nothing-unsent-stored",
        failures,
        remark: String::new(),
    }
}

/// Every user holds exactly its stream as the database has it (messages and events; a
/// protocol-1 user its messages only), and each conversation's messages in commit order.
fn every_user_has_everything_once_in_order(
    evidence: &Evidence<'_>,
    streams: &StorageStreams<'_>,
    mut failures: Vec<String>,
) -> Check {
    failures.extend(columns_agree_with_streams(evidence.stored, streams));
    let empty = BTreeMap::new();
    for report in evidence.reports {
        let expected = streams.get(report.user.as_str()).unwrap_or(&empty);
        let held: BTreeMap<u64, EntryRef> = report
            .stream
            .iter()
            .map(|(seq, e)| (*seq, EntryRef::of(e)))
            .collect();
        for (seq, entry) in expected {
            if report.protocol < 2 && matches!(entry, EntryRef::Event(_)) {
                // Protocol 1 never shows events; holding one is named below.
                continue;
            }
            match held.get(seq) {
                Some(held_entry) if held_entry == entry => {}
                Some(held_entry) => failures.push(format!(
                    "{} holds {held_entry} at seq {seq}, storage has {entry}",
                    report.user
                )),
                None => failures.push(format!("{} never got {entry} (seq {seq})", report.user)),
            }
        }
        for (seq, entry) in &held {
            if report.protocol < 2 && matches!(entry, EntryRef::Event(_)) {
                failures.push(format!(
                    "{}, on protocol 1, holds {entry} at seq {seq}",
                    report.user
                ));
            } else if !expected.contains_key(seq) {
                failures.push(format!(
                    "{} holds {entry} at seq {seq}, which storage does not have",
                    report.user
                ));
            }
        }
        // Within each conversation, the user's seqs follow commit order (message ids).
        let mut last_in: HashMap<&str, i64> = HashMap::new();
        for (seq, entry) in &report.stream {
            let Entry::Message {
                message_id,
                conversation_id,
                ..
            } = entry
            else {
                continue;
            };
            let id = message_id.parse().unwrap_or(-1);
            if let Some(last) = last_in.insert(conversation_id, id)
                && last >= id
            {
                failures.push(format!(
                    "{}: message {id} (seq {seq}) of {conversation_id} comes after message {last}",
                    report.user
                ));
            }
        }
    }
    failures.extend(acked_reached_recipient_once(evidence.reports));
    let delivered: usize = evidence
        .reports
        .iter()
        .map(|r| {
            r.stream
                .values()
                .filter(|e| matches!(e, Entry::Message { from, .. } if *from != r.user))
                .count()
        })
        .sum();
    Check {
        name: "complete-once-in-order",
        failures,
        remark: format!(" ({delivered} deliveries)"),
    }
}

/// How often each user holds each message: (user, message id) → count.
fn holdings(reports: &[UserReport]) -> HashMap<(&str, &str), u32> {
    let mut held: HashMap<(&str, &str), u32> = HashMap::new();
    for report in reports {
        for entry in report.stream.values() {
            if let Entry::Message { message_id, .. } = entry {
                *held
                    .entry((report.user.as_str(), message_id.as_str()))
                    .or_default() += 1;
            }
        }
    }
    held
}

/// Whether `holder` holds the acked message `message_id` exactly once, by
/// `peroxo_bench::contract`'s [`MessageFate`]; a failure naming the message as `what` when it
/// does not.
fn held_once(
    held: &HashMap<(&str, &str), u32>,
    holder: &str,
    message_id: &str,
    what: &str,
) -> Option<String> {
    let deliveries = held.get(&(holder, message_id)).copied().unwrap_or(0);
    let fate = MessageFate {
        sent: true,
        acks: 1,
        deliveries,
        refused: false,
    };
    let breaches = fate.breaches();
    if breaches.lost {
        Some(format!(
            "{what}, acked as message {message_id}, never reached {holder}"
        ))
    } else if breaches.duplicated {
        Some(format!(
            "{holder} holds {what} (message {message_id}) {deliveries} times"
        ))
    } else {
        None
    }
}

/// Every acked direct message is in its recipient's stream exactly once, by the clients' own
/// reports (the comparison with storage above holds them to the database's seqs too). Group
/// messages are [`groups::groups_complete`]'s.
fn acked_reached_recipient_once(reports: &[UserReport]) -> Vec<String> {
    let held = holdings(reports);
    let mut failures = Vec::new();
    for report in reports {
        for send in &report.sends {
            let Some((message_id, _)) = &send.ack else {
                continue;
            };
            if is_group_id(&send.to) {
                continue;
            }
            let what = format!("{}/{}", report.user, send.client_msg_id);
            failures.extend(held_once(&held, &send.to, message_id, &what));
        }
    }
    failures
}

/// Every user's stream is 1…`last_seq` without holes. A protocol-1 user never sees events:
/// its seqs may skip exactly the events storage has in its stream (which
/// [`receipts::protocol_1_sees_direct_messages_only`] accounts for).
fn gapless(evidence: &Evidence<'_>, streams: &StorageStreams<'_>) -> Check {
    let mut failures = Vec::new();
    let empty = BTreeMap::new();
    for report in evidence.reports {
        let n = report.stream.len() as u64;
        let mut seqs: Vec<u64> = report.stream.keys().copied().collect();
        if report.protocol < 2 {
            let stored = streams.get(report.user.as_str()).unwrap_or(&empty);
            seqs.extend(
                stored
                    .iter()
                    .filter(|(_, e)| matches!(e, EntryRef::Event(_)))
                    .map(|(seq, _)| *seq),
            );
            seqs.sort_unstable();
            seqs.dedup();
        }
        let seqs = SeqAudit::of_sorted(seqs, report.last_seq);
        // The stream must also end where the server says the user's seqs end.
        if !seqs.is_gapless() || seqs.highest_seen != report.last_seq {
            failures.push(format!(
                "{}: {n} entries, last_seq {}, missing seqs {:?}",
                report.user, report.last_seq, seqs.first_missing
            ));
        }
    }
    Check {
        name: "gapless",
        failures,
        remark: String::new(),
    }
}

fn outbox_bounded(evidence: &Evidence<'_>) -> Check {
    let mut failures = Vec::new();
    for (n, node) in evidence.nodes.iter().enumerate() {
        match node {
            Some(c) if c.outbox_peak > evidence.max_pending as f64 => failures.push(format!(
                "node {n}: outbox peak {} over max_pending {}",
                c.outbox_peak, evidence.max_pending
            )),
            Some(_) => {}
            None => failures.push(format!("node {n}: metrics never read")),
        }
    }
    Check {
        name: "outbox-bounded",
        failures,
        remark: format!(
            " (peak {}/{})",
            evidence.totals.outbox_peak, evidence.max_pending
        ),
    }
}

fn only_victims_died(evidence: &Evidence<'_>) -> Check {
    Check {
        name: "only-victim-died",
        failures: evidence
            .unexpected_deaths
            .iter()
            .map(|s| format!("{s} died"))
            .collect(),
        remark: String::new(),
    }
}

fn restarts_visible(evidence: &Evidence<'_>) -> Check {
    let mut failures = Vec::new();
    let restarts = &evidence.totals.restarts;
    let count = |kind: &str| restarts.get(kind).copied().unwrap_or(0.0);
    let crashes = |kind: &str| evidence.crashes.get(kind).copied().unwrap_or(0) as f64;
    // A session that fails too often is closed (1011) rather than restarted.
    let sessions = count("session") + evidence.totals.sessions_failed;
    if sessions != crashes("session") {
        failures.push(format!(
            "{} session crashes, {} session restarts + {} closed as failed",
            crashes("session"),
            count("session"),
            evidence.totals.sessions_failed
        ));
    }
    for (kind, n) in restarts {
        if kind != "session" && *n != crashes(kind) {
            failures.push(format!(
                "{} {kind} crashes, {n} {kind} restarts",
                crashes(kind)
            ));
        }
    }
    let total: f64 = restarts.values().sum();
    Check {
        name: "restarts-visible",
        failures,
        remark: format!(" ({total} restarts)"),
    }
}

fn clients_saw_nothing_wrong(evidence: &Evidence<'_>) -> Check {
    Check {
        name: "clients-consistent",
        failures: evidence
            .reports
            .iter()
            .flat_map(|r| r.violations.iter().map(move |v| format!("{}: {v}", r.user)))
            .collect(),
        remark: String::new(),
    }
}
