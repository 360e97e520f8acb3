//! Read receipts, and what protocol-1 users see.
//!
//! - `read-receipts`: the `read_receipts` a user read after the final sync, of some of its own
//!   messages, name exactly the other participants (a group's members at the end) whose read
//!   marker, by their own streams, is at or past the message. In a direct conversation, the
//!   peer's stream holds a `read_receipt` for every `read_marker` event of the reader (the
//!   same message, in the same order), and the peer's conversation list shows the reader's
//!   final marker as `peer_read_marker`. A reader who also marked unread may move its marker
//!   without a receipt: its receipts are then an ordered subset of its markers.
//! - `protocol-1`: a protocol-1 user holds no group message (nor event, which
//!   `complete-once-in-order` names), and the seqs it passes over are the `read_receipt`s its
//!   peers' marks put in its stream: as many as their `read_marker` events call for.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use peroxo_bench::contract::ConversationState;
use peroxo_protocol::event::is_group_id;

use super::conversations::Ledgers;
use super::groups::Timeline;
use super::{Check, EntryRef, Evidence, StorageStreams};
use crate::report::{Entry, UserReport, is_direct_with_another};

/// (user, direct conversation) → message ids, in seq order.
type MarkerLists<'a> = HashMap<(&'a str, &'a str), Vec<u64>>;

/// The other user of a direct conversation `a:b`.
fn peer_in<'a>(conversation: &'a str, user: &str) -> Option<&'a str> {
    let (a, b) = conversation.split_once(':')?;
    match (a == user, b == user) {
        (true, _) => Some(b),
        (_, true) => Some(a),
        _ => None,
    }
}

fn id(text: &str) -> u64 {
    text.parse().unwrap_or(0)
}

/// Every user's `read_marker` events in its direct conversations with another user.
fn marker_events(reports: &[UserReport]) -> MarkerLists<'_> {
    let mut lists: MarkerLists<'_> = HashMap::new();
    for report in reports {
        for entry in report.stream.values() {
            if let Entry::Event {
                kind,
                conversation_id,
                message_id: Some(message_id),
                ..
            } = entry
                && kind == "read_marker"
                && is_direct_with_another(conversation_id)
            {
                lists
                    .entry((report.user.as_str(), conversation_id.as_str()))
                    .or_default()
                    .push(id(message_id));
            }
        }
    }
    lists
}

/// Whether `part` is `whole` with some elements left out.
fn is_ordered_subset(part: &[u64], whole: &[u64]) -> bool {
    let mut rest = whole.iter();
    part.iter().all(|p| rest.any(|w| w == p))
}

/// Every user's final read marker in each of its conversations, by its stream.
fn final_markers<'a>(
    ledgers: &'a Ledgers<'_>,
) -> HashMap<&'a str, BTreeMap<&'a str, ConversationState>> {
    ledgers
        .iter()
        .map(|(user, l)| (*user, l.states()))
        .collect()
}

pub(super) fn read_receipts_match_markers(
    evidence: &Evidence<'_>,
    timelines: &HashMap<&str, Timeline<'_>>,
    ledgers: &Ledgers<'_>,
) -> Check {
    let states = final_markers(ledgers);
    let marker = |user: &str, conversation: &str| {
        states
            .get(user)
            .and_then(|s| s.get(conversation))
            .map_or(0, |s| s.read_marker)
    };
    let protocol: HashMap<&str, u32> = evidence
        .reports
        .iter()
        .map(|r| (r.user.as_str(), r.protocol))
        .collect();
    let mut failures = Vec::new();
    let mut probes = 0;
    for report in evidence.reports {
        for probe in &report.reads.receipts {
            probes += 1;
            let conversation = probe.conversation_id.as_str();
            let participants: Vec<&str> = if is_group_id(conversation) {
                timelines
                    .get(conversation)
                    .map(|t| t.members.keys().map(String::as_str).collect())
                    .unwrap_or_default()
            } else {
                peer_in(conversation, &report.user).into_iter().collect()
            };
            let expected: Vec<(String, u64)> = participants
                .into_iter()
                .filter(|p| *p != report.user)
                .map(|p| (p.to_owned(), marker(p, conversation)))
                .filter(|(_, m)| *m >= probe.message_id)
                .collect();
            match &probe.readers {
                Ok(readers) if *readers == expected => {}
                Ok(readers) => failures.push(format!(
                    "{}: read_receipts of message {} in {conversation} are {readers:?}; the \
                     readers' streams imply {expected:?}",
                    report.user, probe.message_id
                )),
                Err(error) => failures.push(format!(
                    "{}: read_receipts of message {} in {conversation}: {error}",
                    report.user, probe.message_id
                )),
            }
        }
    }
    // Durable receipts in direct conversations: the peer holds one per marker event.
    let markers = marker_events(evidence.reports);
    let mut held: MarkerLists<'_> = HashMap::new();
    for report in evidence.reports {
        for entry in report.stream.values() {
            if let Entry::Event {
                kind,
                conversation_id,
                actor,
                message_id,
                ..
            } = entry
                && kind == "read_receipt"
            {
                if peer_in(conversation_id, &report.user) != Some(actor.as_str()) {
                    failures.push(format!(
                        "{} holds a read receipt of {actor} in {conversation_id}",
                        report.user
                    ));
                    continue;
                }
                held.entry((actor.as_str(), conversation_id.as_str()))
                    .or_default()
                    .push(message_id.as_deref().map_or(0, id));
            }
        }
    }
    let by_user: HashMap<&str, &UserReport> = evidence
        .reports
        .iter()
        .map(|r| (r.user.as_str(), r))
        .collect();
    let mut receipts = 0;
    let keys: BTreeSet<(&str, &str)> = markers.keys().chain(held.keys()).copied().collect();
    for key in &keys {
        let (reader, conversation) = *key;
        let Some(peer) = peer_in(conversation, reader) else {
            continue;
        };
        if protocol.get(peer).is_none_or(|p| *p < 2) {
            // A protocol-1 peer never sees receipts: `protocol-1` counts them in storage.
            continue;
        }
        let made = markers.get(key).map_or(&[][..], Vec::as_slice);
        let got = held.get(key).map_or(&[][..], Vec::as_slice);
        receipts += got.len();
        let marked_unread = by_user
            .get(reader)
            .is_some_and(|r| r.marked_unread.contains(conversation));
        let agree = if marked_unread {
            is_ordered_subset(got, made)
        } else {
            got == made
        };
        if !agree {
            failures.push(format!(
                "{peer} holds receipts {got:?} of {reader} in {conversation}; {reader}'s read \
                 markers moved to {made:?}{}",
                if marked_unread {
                    " (it also marked unread)"
                } else {
                    ""
                }
            ));
        }
    }
    for report in evidence.reports.iter().filter(|r| r.protocol >= 2) {
        let Some(list) = &report.reads.conversations else {
            continue;
        };
        for listed in &list.conversations {
            let conversation = listed.conversation_id.as_str();
            if !is_direct_with_another(conversation) {
                continue;
            }
            let Some(peer) = peer_in(conversation, &report.user) else {
                continue;
            };
            let expected = marker(peer, conversation).to_string();
            if listed.peer_read_marker.as_deref() != Some(expected.as_str()) {
                failures.push(format!(
                    "{} lists {peer}'s read marker in {conversation} as {:?}; {peer}'s stream \
                     has {expected}",
                    report.user, listed.peer_read_marker
                ));
            }
        }
    }
    Check {
        name: "read-receipts",
        failures,
        remark: format!(" ({probes} asked, {receipts} durable)"),
    }
}

pub(super) fn protocol_1_sees_direct_messages_only(
    evidence: &Evidence<'_>,
    streams: &StorageStreams<'_>,
) -> Check {
    let markers = marker_events(evidence.reports);
    let by_user: HashMap<&str, &UserReport> = evidence
        .reports
        .iter()
        .map(|r| (r.user.as_str(), r))
        .collect();
    // For every protocol-1 user, the receipts its peers' markers call for: at least those of
    // readers who never marked unread, at most all.
    let mut bounds: HashMap<&str, (usize, usize)> = HashMap::new();
    for ((reader, conversation), made) in &markers {
        let Some(peer) = peer_in(conversation, reader) else {
            continue;
        };
        let bound = bounds.entry(peer).or_default();
        let marked_unread = by_user
            .get(reader)
            .is_some_and(|r| r.marked_unread.contains(*conversation));
        if !marked_unread {
            bound.0 += made.len();
        }
        bound.1 += made.len();
    }
    // The changes to messages of direct conversations (protocol 3) are events of the streams
    // of both participants: a protocol-1 user's stream holds those of its conversations,
    // which it passes over like the receipts.
    let mut changes: HashMap<&str, BTreeSet<i64>> = HashMap::new();
    for report in evidence.reports.iter().filter(|r| r.protocol >= 3) {
        for entry in report.stream.values() {
            if let Entry::Event {
                event_id,
                conversation_id,
                ..
            } = entry
                && entry.message_change().is_some()
                && let Some((a, b)) = conversation_id.split_once(':')
            {
                let id = event_id.parse().unwrap_or(-1);
                changes.entry(a).or_default().insert(id);
                changes.entry(b).or_default().insert(id);
            }
        }
    }
    let mut failures = Vec::new();
    let (mut users, mut passed_over) = (0, 0);
    for report in evidence.reports.iter().filter(|r| r.protocol < 2) {
        users += 1;
        for (seq, entry) in &report.stream {
            if let Entry::Message {
                message_id,
                conversation_id,
                ..
            } = entry
                && is_group_id(conversation_id)
            {
                failures.push(format!(
                    "{}, on protocol 1, holds message {message_id} of {conversation_id} at seq \
                     {seq}",
                    report.user
                ));
            }
        }
        let stored: BTreeSet<i64> = streams
            .get(report.user.as_str())
            .into_iter()
            .flat_map(|s| s.values())
            .filter_map(|e| match e {
                EntryRef::Event(id) => Some(*id),
                EntryRef::Message(_) => None,
            })
            .collect();
        passed_over += stored.len();
        let of_changes = changes.get(report.user.as_str());
        for missing in of_changes
            .into_iter()
            .flatten()
            .filter(|id| !stored.contains(id))
        {
            failures.push(format!(
                "{}, on protocol 1, lacks event {missing} of a change to a message of one of its \
                 conversations in its stream",
                report.user
            ));
        }
        let events = stored
            .iter()
            .filter(|id| of_changes.is_none_or(|c| !c.contains(id)))
            .count();
        let (least, most) = bounds.get(report.user.as_str()).copied().unwrap_or((0, 0));
        if events < least || events > most {
            failures.push(format!(
                "{}, on protocol 1, has {events} events in its stream; its peers' read markers \
                 call for {least} to {most} read receipts",
                report.user
            ));
        }
    }
    Check {
        name: "protocol-1",
        failures,
        remark: format!(" ({users} users, {passed_over} seqs passed over)"),
    }
}
