//! The invariants of changes to messages (protocol 3): edits, deletes and reactions.
//!
//! - `messages-agree`: every message ends in one state (its text, whether it was edited and
//!   deleted, how many users reacted with each emoji): the database's, which every history
//!   that shows it shows (a protocol-1 history: its text, and a deleted message as erased),
//!   and which every protocol-3 participant's stream gives when replayed by
//!   `peroxo_bench::contract`'s [`MessageReplay`]: its copy, then every change after it, in
//!   seq order. Every message of a user's stream (of a group, since the user last joined it)
//!   is in the user's history of that conversation, and no event changes a message its stream
//!   did not show before. A protocol-3 history quotes what each reply replies to as it is now:
//!   its first 100 characters, or nothing and `deleted` once it is deleted.
//! - `changes-kept`: every answered change is in that state unless a later one superseded it:
//!   a message is deleted exactly when a delete of it was answered; otherwise its text is its
//!   author's last answered edit (or what was sent), and its reactions are, for every user and
//!   emoji, what that user's last answered `react` or `unreact` left. A delete or reaction
//!   refused `not_a_member` or `unknown_message` may have been carried out by an earlier
//!   attempt whose answer was lost (what it would have changed is not judged); an edit so
//!   refused may not, since a repeated edit is answered `duplicate`. A change refused
//!   `message_deleted` names a deleted message; `not_a_member` and `unknown_message` only
//!   refuse changes in groups (whose member may have been removed, or removed and added
//!   again, unseen); no other refusal is called for. Every stored message replies to what its
//!   send quoted (or to nothing), and a reply refused `message_deleted` quoted a message that
//!   is deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use peroxo_bench::contract::{MessageReplay, ReplayedMessage};
use peroxo_client::{Change, ErrorCode};
use peroxo_protocol::event::is_group_id;

use super::{Check, Evidence};
use crate::final_reads::{HistoryCopy, Quote};
use crate::report::{Entry, OpOutcome, UserReport};

/// Every message's final state as the database holds it, by message id.
fn stored_states(evidence: &Evidence<'_>) -> BTreeMap<u64, ReplayedMessage> {
    let mut states: BTreeMap<u64, ReplayedMessage> = evidence
        .stored
        .messages
        .iter()
        .map(|row| {
            let state = ReplayedMessage {
                text: row.text.clone(),
                edited: row.edited,
                deleted: row.deleted,
                reactions: BTreeMap::new(),
            };
            (row.id as u64, state)
        })
        .collect();
    for (message_id, emoji, count) in &evidence.stored.reactions {
        if let Some(state) = states.get_mut(&(*message_id as u64)) {
            state.reactions.insert(emoji.clone(), *count as u32);
        }
    }
    states
}

/// What `report`'s stream gives when replayed.
fn replay_of(report: &UserReport) -> MessageReplay {
    let mut replay = MessageReplay::default();
    let id = |id: &str| id.parse::<u64>().unwrap_or(0);
    for entry in report.stream.values() {
        match entry {
            Entry::Message {
                message_id,
                conversation_id,
                text,
                edited,
                deleted,
                ..
            } => replay.message(conversation_id, id(message_id), text, *edited, *deleted),
            Entry::Event {
                conversation_id, ..
            } => {
                // A group left, or joined again, starts afresh.
                if starts_afresh(entry, &report.user) {
                    replay.left(conversation_id);
                } else if let Some((message_id, change)) = entry.message_change() {
                    replay.change(conversation_id, message_id, change);
                }
            }
        }
    }
    replay
}

/// Whether `entry` of `me`'s stream ends what `me` sees of a group: `me` left it, or joined
/// it again (which starts from the join).
fn starts_afresh(entry: &Entry, me: &str) -> bool {
    match entry {
        Entry::Event {
            kind, user, users, ..
        } => {
            (kind == "members_added" && users.iter().any(|u| u == me))
                || (kind == "member_left" && user.as_deref() == Some(me))
        }
        Entry::Message { .. } => false,
    }
}

/// Compares one copy of a message with its stored state; `full` for a protocol-3 copy (a
/// protocol-1 copy shows no edit and no reactions).
fn differs(copy: &ReplayedMessage, stored: &ReplayedMessage, full: bool) -> bool {
    if full {
        copy != stored
    } else {
        copy.text != stored.text || copy.deleted != stored.deleted
    }
}

pub(super) fn messages_agree(evidence: &Evidence<'_>) -> Check {
    let stored = stored_states(evidence);
    let replies: HashMap<u64, u64> = evidence
        .stored
        .messages
        .iter()
        .filter_map(|row| Some((row.id as u64, row.reply_to? as u64)))
        .collect();
    let mut failures = Vec::new();
    let (mut replayed, mut read, mut quotes) = (0, 0, 0);
    for report in evidence.reports {
        let user = &report.user;
        let full = report.protocol >= 3;
        let replay = full.then(|| replay_of(report));
        if let Some(replay) = &replay {
            failures.extend(replay.orphans().iter().map(|o| format!("{user}: {o}")));
            replayed += replay.len();
            failures.extend(
                replay
                    .disagreements(&stored)
                    .into_iter()
                    .map(|d| format!("{user}'s stream: {d}")),
            );
        }
        for (conversation, history) in &report.reads.histories {
            let history = match history {
                Ok(history) => history,
                Err(error) => {
                    failures.push(format!("{user} could not read {conversation}: {error}"));
                    continue;
                }
            };
            for (id, copy) in history {
                read += 1;
                quotes += usize::from(copy.quote.is_some());
                if full {
                    failures.extend(
                        quote_mismatch(*id, copy, &stored, &replies)
                            .map(|m| format!("{user}'s history of {conversation}: {m}")),
                    );
                }
                let copy = &copy.state;
                match stored.get(id) {
                    Some(row) if differs(copy, row, full) => failures.push(format!(
                        "{user}'s history of {conversation} shows message {id} as {copy:?}, \
                         storage has {row:?}"
                    )),
                    Some(_) => {}
                    None => failures.push(format!(
                        "{user}'s history of {conversation} shows message {id}, which storage \
                         does not have"
                    )),
                }
            }
        }
        failures.extend(histories_complete(report));
    }
    Check {
        name: "messages-agree",
        failures,
        remark: format!(" ({replayed} replayed, {read} read, {quotes} quotes)"),
    }
}

/// How a history's copy of message `id` misquotes: a reply quotes the message it replies to
/// as that message is now (`replies`: what each reply replies to), its excerpt the first 100
/// characters of its text, or nothing and `deleted` once it is deleted.
fn quote_mismatch(
    id: u64,
    copy: &HistoryCopy,
    stored: &BTreeMap<u64, ReplayedMessage>,
    replies: &HashMap<u64, u64>,
) -> Option<String> {
    let quoted = replies.get(&id).copied();
    let shown = copy.quote.as_ref();
    let expected = quoted.map(|quoted| {
        let state = stored.get(&quoted);
        let deleted = state.is_none_or(|s| s.deleted);
        Quote {
            message_id: quoted.to_string(),
            excerpt: match state {
                Some(s) if !deleted => s.text.chars().take(100).collect(),
                _ => String::new(),
            },
            deleted,
        }
    });
    (shown != expected.as_ref())
        .then(|| format!("message {id} quotes {shown:?}, storage says {expected:?}"))
}

/// Every message of the user's stream (of a group, since the user last joined it) is in its
/// history of that conversation, when it read that history.
fn histories_complete(report: &UserReport) -> Vec<String> {
    let mut held: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for entry in report.stream.values() {
        match entry {
            Entry::Message {
                message_id,
                conversation_id,
                ..
            } => {
                let id = message_id.parse().unwrap_or(0);
                held.entry(conversation_id).or_default().insert(id);
            }
            Entry::Event {
                conversation_id, ..
            } => {
                if starts_afresh(entry, &report.user) {
                    held.remove(conversation_id.as_str());
                }
            }
        }
    }
    let mut failures = Vec::new();
    for (conversation, ids) in held {
        let Some(Ok(history)) = report.reads.histories.get(conversation) else {
            continue;
        };
        let missing: Vec<&u64> = ids.iter().filter(|id| !history.contains_key(id)).collect();
        if !missing.is_empty() {
            failures.push(format!(
                "{}'s history of {conversation} lacks messages {missing:?} of its stream",
                report.user
            ));
        }
    }
    failures
}

/// The answered changes to one message, each user's in the order it made them.
#[derive(Default)]
struct Answered<'a> {
    deletes: usize,
    /// Its author's edits, in order.
    edits: Vec<&'a str>,
    /// By (user, emoji): whether the user's last answered change left the reaction made.
    reactions: BTreeMap<(&'a str, &'a str), bool>,
    /// A change of it was never answered: what it left is unknown.
    unknown: bool,
    /// A delete, a reaction or one taken back was refused `not_a_member` or
    /// `unknown_message` (its member was removed, unseen): an earlier attempt whose answer
    /// was lost may have been carried out, and nothing tells.
    delete_unknown: bool,
    reactions_unknown: bool,
    /// The texts of its edits refused so. An edit, unlike the others, is idempotent by its
    /// `client_msg_id`: one carried out by an earlier attempt must be answered `duplicate`,
    /// never refused, so none of these texts may be the message's.
    refused_edits: Vec<(&'a str, ErrorCode)>,
}

pub(super) fn changes_kept(evidence: &Evidence<'_>) -> Check {
    let stored = stored_states(evidence);
    let sent: HashMap<u64, &str> = evidence
        .reports
        .iter()
        .flat_map(|r| r.sends.iter())
        .filter_map(|s| {
            let (id, _) = s.ack.as_ref()?;
            Some((id.parse().ok()?, s.text.as_str()))
        })
        .collect();
    let mut failures = Vec::new();
    let mut answered: BTreeMap<u64, Answered<'_>> = BTreeMap::new();
    let mut refused = 0;
    for report in evidence.reports {
        let user = report.user.as_str();
        for op in &report.changes {
            let id = op.message_id;
            let entry = answered.entry(id).or_default();
            match &op.outcome {
                OpOutcome::Answered { .. } => match &op.change {
                    Change::Edit { text } => entry.edits.push(text),
                    Change::Delete => entry.deletes += 1,
                    Change::React { emoji } => {
                        entry.reactions.insert((user, emoji), true);
                    }
                    Change::Unreact { emoji } => {
                        entry.reactions.insert((user, emoji), false);
                    }
                },
                OpOutcome::Refused(code) => {
                    refused += 1;
                    if matches!(code, ErrorCode::NotAMember | ErrorCode::UnknownMessage) {
                        match &op.change {
                            Change::Edit { text } => entry.refused_edits.push((text, *code)),
                            Change::Delete => entry.delete_unknown = true,
                            Change::React { .. } | Change::Unreact { .. } => {
                                entry.reactions_unknown = true;
                            }
                        }
                    }
                    let in_group = is_group_id(&op.conversation_id);
                    let deleted = stored.get(&id).is_some_and(|s| s.deleted);
                    let fits = match code {
                        ErrorCode::MessageDeleted => deleted,
                        ErrorCode::NotAMember | ErrorCode::UnknownMessage => in_group,
                        _ => false,
                    };
                    if !fits {
                        failures.push(format!(
                            "{user}: {:?} of message {id} of {} refused {}{}",
                            op.change,
                            op.conversation_id,
                            code.as_str(),
                            if deleted { "" } else { " (it is not deleted)" }
                        ));
                    }
                }
                OpOutcome::Failed(_) => entry.unknown = true,
            }
        }
    }
    for (id, changes) in &answered {
        if changes.unknown {
            continue;
        }
        let Some(state) = stored.get(id) else {
            failures.push(format!("message {id}, changed, is not in storage"));
            continue;
        };
        failures.extend(kept(*id, changes, state, sent.get(id).copied()));
    }
    failures.extend(replies_kept(evidence, &stored));
    // A message deleted although no delete of it was answered.
    for (id, state) in &stored {
        let explained = |a: &Answered<'_>| a.deletes > 0 || a.unknown || a.delete_unknown;
        if state.deleted && !answered.get(id).is_some_and(explained) {
            failures.push(format!(
                "message {id} is deleted, but no delete of it was answered"
            ));
        }
    }
    Check {
        name: "changes-kept",
        failures,
        remark: format!(" ({} messages changed, {refused} refused)", answered.len()),
    }
}

/// What `changes` call for against the stored `state` of message `id`, sent as `sent`.
fn kept(
    id: u64,
    changes: &Answered<'_>,
    state: &ReplayedMessage,
    sent: Option<&str>,
) -> Vec<String> {
    let mut failures = Vec::new();
    if changes.deletes > 0 {
        if !state.deleted || !state.text.is_empty() || !state.reactions.is_empty() {
            failures.push(format!(
                "message {id}, whose delete was answered, is {state:?}"
            ));
        }
        return failures;
    }
    if state.deleted && changes.delete_unknown {
        return failures;
    }
    if let Some((_, code)) = changes.refused_edits.iter().find(|(t, _)| *t == state.text) {
        failures.push(format!(
            "message {id} reads {:?}, the text of an edit refused {}: an earlier attempt \
             carried it out, and the repeat was refused instead of answered duplicate",
            state.text,
            code.as_str()
        ));
        return failures;
    }
    let text = changes.edits.last().copied().or(sent);
    let edited = !changes.edits.is_empty();
    if text.is_some_and(|text| text != state.text) || state.edited != edited {
        failures.push(format!(
            "message {id}: its last answered edit (of {}) or its send says {text:?}, storage \
             has {state:?}",
            changes.edits.len()
        ));
    }
    let mut reactions: BTreeMap<String, u32> = BTreeMap::new();
    for ((_, emoji), made) in &changes.reactions {
        if *made {
            *reactions.entry((*emoji).to_owned()).or_default() += 1;
        }
    }
    if reactions != state.reactions && !changes.reactions_unknown {
        failures.push(format!(
            "message {id}: the answered reactions leave {reactions:?}, storage has {:?}",
            state.reactions
        ));
    }
    failures
}

/// A `mark_unread` from the newest message of someone else, refused `unknown_message`, is
/// right only where every message of someone else in that conversation (of a group: since the
/// user last joined, which the stream tells) is deleted.
pub(super) fn nothing_unread(evidence: &Evidence<'_>, report: &UserReport) -> Vec<String> {
    let deleted: BTreeSet<u64> = evidence
        .stored
        .messages
        .iter()
        .filter(|row| row.deleted)
        .map(|row| row.id as u64)
        .collect();
    let mut failures = Vec::new();
    for conversation in &report.nothing_unread {
        let mut from_others = BTreeSet::new();
        for entry in report.stream.values() {
            match entry {
                Entry::Message {
                    message_id,
                    conversation_id,
                    from,
                    ..
                } if conversation_id == conversation && *from != report.user => {
                    from_others.insert(message_id.parse::<u64>().unwrap_or(0));
                }
                Entry::Event {
                    conversation_id, ..
                } if conversation_id == conversation && starts_afresh(entry, &report.user) => {
                    from_others.clear();
                }
                _ => {}
            }
        }
        let kept: Vec<&u64> = from_others.difference(&deleted).collect();
        if !kept.is_empty() {
            failures.push(format!(
                "{}: mark_unread of {conversation} refused unknown_message, but messages \
                 {kept:?} of others in it are not deleted",
                report.user
            ));
        }
    }
    failures
}

/// Every stored message replies to what its send quoted, or to nothing; a reply refused
/// `message_deleted` quoted a message that is deleted.
fn replies_kept(evidence: &Evidence<'_>, stored: &BTreeMap<u64, ReplayedMessage>) -> Vec<String> {
    let quoted: HashMap<(&str, &str), Option<u64>> = evidence
        .reports
        .iter()
        .flat_map(|r| {
            r.sends
                .iter()
                .map(|s| ((r.user.as_str(), s.client_msg_id.as_str()), s.reply_to))
        })
        .collect();
    let mut failures = Vec::new();
    for row in &evidence.stored.messages {
        let sent = quoted.get(&(row.sender.as_str(), row.client_msg_id.as_str()));
        let replies_to = row.reply_to.map(|id| id as u64);
        if sent.is_some_and(|sent| *sent != replies_to) {
            failures.push(format!(
                "message {} replies to {replies_to:?}, its send quoted {:?}",
                row.id,
                sent.copied().flatten()
            ));
        }
    }
    for report in evidence.reports {
        for send in &report.sends {
            if let (Some(quoted), Some((ErrorCode::MessageDeleted, _))) =
                (send.reply_to, &send.refused)
                && !stored.get(&quoted).is_some_and(|s| s.deleted)
            {
                failures.push(format!(
                    "{}/{}, a reply to message {quoted}, was refused message_deleted, but \
                     message {quoted} is not deleted",
                    report.user, send.client_msg_id
                ));
            }
        }
    }
    failures
}
