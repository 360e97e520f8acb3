//! The conversation list: every protocol-3 user's list (read markers, unread counts,
//! previews, total unread) is what the user's stream implies, by `peroxo_bench::contract`'s
//! [`ConversationLedger`]: a `message_deleted` event lowers the count of those who had the
//! message unread and moves the preview back when it was the preview. The ledgers also serve the read receipts' checks.

use std::collections::{BTreeMap, HashMap};

use peroxo_bench::contract::{ConversationLedger, ConversationState, StreamItem};

use super::{Check, Evidence};
use crate::final_reads::ConversationList;
use crate::report::{Entry, UserReport};

/// Every user's ledger, by user.
pub(super) type Ledgers<'a> = HashMap<&'a str, ConversationLedger>;

/// The ledger of every user's stream.
pub(super) fn ledgers(reports: &[UserReport]) -> Ledgers<'_> {
    reports
        .iter()
        .map(|r| (r.user.as_str(), ledger_of(r)))
        .collect()
}

/// Every user's conversation list, read after the final sync, is what the user's stream
/// implies: the same conversations, each with its read marker, unread count and newest
/// message (at the user's seq of it), and the total unread count is their sum; and every
/// `read_marker` event states the unread count the stream before it implies.
pub(super) fn lists_match_streams(evidence: &Evidence<'_>, ledgers: &Ledgers<'_>) -> Check {
    let mut failures = Vec::new();
    let (mut listed, mut unread) = (0, 0);
    for report in evidence.reports.iter().filter(|r| r.protocol >= 2) {
        let ledger = &ledgers[report.user.as_str()];
        failures.extend(
            ledger
                .marker_mismatches()
                .iter()
                .map(|m| format!("{}: {m}", report.user)),
        );
        let Some(list) = &report.reads.conversations else {
            failures.push(format!("{} never read its conversation list", report.user));
            continue;
        };
        listed += list.conversations.len();
        unread += list.total_unread;
        compare(report, ledger, list, &mut failures);
    }
    Check {
        name: "conversations-match",
        failures,
        remark: format!(" ({listed} listed, {unread} unread)"),
    }
}

/// The conversation state the user's stream implies.
fn ledger_of(report: &UserReport) -> ConversationLedger {
    let mut ledger = ConversationLedger::default();
    let id = |id: &str| id.parse::<u64>().unwrap_or(0);
    for entry in report.stream.values() {
        let item = match entry {
            Entry::Message {
                message_id,
                conversation_id,
                from,
                ..
            } => StreamItem::Message {
                conversation: conversation_id,
                message_id: id(message_id),
                own: *from == report.user,
            },
            Entry::Event {
                kind,
                conversation_id,
                user,
                users,
                message_id,
                unread_count,
                ..
            } => match kind.as_str() {
                "read_marker" => StreamItem::ReadMarker {
                    conversation: conversation_id,
                    message_id: message_id.as_deref().map_or(0, id),
                    unread_count: unread_count.unwrap_or(u64::MAX),
                },
                "group_created" => StreamItem::Joined {
                    conversation: conversation_id,
                },
                "members_added" if users.contains(&report.user) => StreamItem::Joined {
                    conversation: conversation_id,
                },
                "member_left" if user.as_deref() == Some(report.user.as_str()) => {
                    StreamItem::Left {
                        conversation: conversation_id,
                    }
                }
                "message_deleted" => StreamItem::Deleted {
                    conversation: conversation_id,
                    message_id: message_id.as_deref().map_or(0, id),
                },
                _ => continue,
            },
        };
        ledger.apply(item);
    }
    ledger
}

/// Compares the listed conversations with the ledger's.
fn compare(
    report: &UserReport,
    ledger: &ConversationLedger,
    list: &ConversationList,
    failures: &mut Vec<String>,
) {
    let user = &report.user;
    let seq_of: HashMap<&str, u64> = report
        .stream
        .iter()
        .filter_map(|(seq, entry)| match entry {
            Entry::Message { message_id, .. } => Some((message_id.as_str(), *seq)),
            Entry::Event { .. } => None,
        })
        .collect();
    let expected = ledger.states();
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    for listed in &list.conversations {
        let id = listed.conversation_id.as_str();
        *seen.entry(id).or_default() += 1;
        let Some(state) = expected.get(id) else {
            failures.push(format!("{user} lists {id}, which its stream does not have"));
            continue;
        };
        let shown = ConversationState {
            read_marker: listed.read_marker.parse().unwrap_or(u64::MAX),
            unread_count: listed.unread_count,
            last_message: listed
                .last_message
                .as_ref()
                .map(|(m, _)| m.parse().unwrap_or(u64::MAX)),
        };
        if shown != *state {
            failures.push(format!(
                "{user}: {id} listed as {shown:?}, its stream implies {state:?}"
            ));
        }
        if let Some((message_id, seq)) = &listed.last_message
            && seq_of.get(message_id.as_str()) != Some(seq)
        {
            failures.push(format!(
                "{user}: {id}'s preview, message {message_id}, has seq {seq}; the stream has it at {:?}",
                seq_of.get(message_id.as_str())
            ));
        }
    }
    for (id, times) in &seen {
        if *times > 1 {
            failures.push(format!("{user} lists {id} {times} times"));
        }
    }
    for id in expected.keys() {
        if !seen.contains_key(id) {
            failures.push(format!("{user}'s list lacks {id}, which its stream has"));
        }
    }
    let listed_sum: u64 = list.conversations.iter().map(|c| c.unread_count).sum();
    if list.total_unread != listed_sum || list.total_unread != ledger.total_unread() {
        failures.push(format!(
            "{user}: total_unread {}, the listed counts sum to {listed_sum}, the stream implies {}",
            list.total_unread,
            ledger.total_unread()
        ));
    }
}
