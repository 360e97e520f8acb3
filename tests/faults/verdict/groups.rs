//! The invariants of groups under membership changes, drawn from each group's **timeline**:
//! its messages and membership events (`group_created`, `members_added`, `member_left`,
//! `role_changed`, `group_renamed`) in its owner's stream. The owner stays a member
//! throughout ([`crate::changes`]), so its stream holds the whole history; replaying the
//! events from the initial members gives who was a member at each entry, which is who must
//! hold that entry: `members_added` reaches the members after the change (the new ones
//! included), `member_left` the members before it (the departing one included), every other
//! entry the members at the time.
//!
//! - `groups-complete`: every acked group message is in the timeline once, and its sender
//!   was a member when it was committed; a message refused `not_a_member` was not stored, and
//!   its sender's stream shows it leaving after it sent it (likewise a refused mark).
//! - `groups-agree`: every user's stream holds exactly the timeline's entries it was a member
//!   for, each once, in the timeline's order, which is commit order for messages.
//! - `group-changes`: every change was answered; the events are the changes made, one each,
//!   in order; every member's final `members` read is what the events imply.

use std::collections::{BTreeMap, HashMap};

use peroxo_client::ErrorCode;
use peroxo_protocol::event::is_group_id;

use super::{Check, EntryRef, Evidence, held_once, holdings};
use crate::changes::{Change, ChangeOutcome};
use crate::report::{Entry, UserReport};
use crate::rig::StoredRow;
use crate::workload::Group;

/// The events that change a group or tell of it (as opposed to a member's own read marker).
const MEMBERSHIP_EVENTS: [&str; 5] = [
    "group_created",
    "members_added",
    "member_left",
    "role_changed",
    "group_renamed",
];

/// One group's history, from its owner's stream.
pub(super) struct Timeline<'a> {
    /// Every entry, in order, with the members who must hold it.
    entries: Vec<(&'a Entry, Vec<String>)>,
    /// The members and their roles after the last entry.
    pub(super) members: BTreeMap<String, String>,
    /// What the owner's stream itself gets wrong (a sender who was not a member, a message
    /// out of commit order, a first entry that is not the creation).
    faults: Vec<String>,
    /// The id of the last message so far.
    last_message: u64,
}

/// Whether `entry` belongs to `group`'s timeline.
fn in_timeline(entry: &Entry, group: &str) -> bool {
    match entry {
        Entry::Message {
            conversation_id, ..
        } => conversation_id == group,
        Entry::Event {
            conversation_id,
            kind,
            ..
        } => conversation_id == group && MEMBERSHIP_EVENTS.contains(&kind.as_str()),
    }
}

/// Every group's timeline, by group id.
pub(super) fn timelines<'a>(evidence: &Evidence<'a>) -> HashMap<&'a str, Timeline<'a>> {
    let by_user: HashMap<&str, &UserReport> = evidence
        .reports
        .iter()
        .map(|r| (r.user.as_str(), r))
        .collect();
    evidence
        .groups
        .iter()
        .map(|group| {
            let owner = by_user.get(group.owner.as_str()).copied();
            (group.id.as_str(), replay(group, owner))
        })
        .collect()
}

/// Replays `group`'s entries in its owner's stream from its initial members.
fn replay<'a>(group: &'a Group, owner: Option<&'a UserReport>) -> Timeline<'a> {
    let mut timeline = Timeline {
        entries: Vec::new(),
        members: BTreeMap::new(),
        faults: Vec::new(),
        last_message: 0,
    };
    let Some(owner) = owner else {
        timeline
            .faults
            .push(format!("{}: no report from its owner", group.id));
        return timeline;
    };
    for entry in owner.stream.values().filter(|e| in_timeline(e, &group.id)) {
        timeline.apply(group, entry);
    }
    if !timeline.members.contains_key(&group.owner) {
        timeline.faults.push(format!(
            "{}: its owner {} is not a member at the end of its own stream",
            group.id, group.owner
        ));
    }
    timeline
}

impl<'a> Timeline<'a> {
    /// Takes the group's next entry: notes who must hold it, then applies its change.
    fn apply(&mut self, group: &Group, entry: &'a Entry) {
        let first = self.entries.is_empty();
        let members = &mut self.members;
        let mut audience: Vec<String> = members.keys().cloned().collect();
        match entry {
            Entry::Event { kind, .. } if first && kind != "group_created" => {
                self.faults
                    .push(format!("{}: its first event is {kind}", group.id));
            }
            Entry::Event {
                kind,
                actor,
                member_count,
                ..
            } if kind == "group_created" => {
                for member in &group.members {
                    let role = if *member == group.owner {
                        "owner"
                    } else {
                        "member"
                    };
                    members.insert(member.clone(), role.to_owned());
                }
                audience = members.keys().cloned().collect();
                let count = Some(audience.len() as u32);
                if !first || *actor != group.owner || *member_count != count {
                    self.faults.push(format!(
                        "{}: created as {entry:?}, by {} with {} members",
                        group.id,
                        group.owner,
                        audience.len()
                    ));
                }
            }
            Entry::Event { kind, users, .. } if kind == "members_added" => {
                for user in users {
                    members.insert(user.clone(), "member".to_owned());
                }
                audience = members.keys().cloned().collect();
            }
            Entry::Event {
                kind,
                user: Some(user),
                ..
            } if kind == "member_left" => {
                members.remove(user);
            }
            Entry::Event {
                kind,
                user: Some(user),
                role: Some(role),
                ..
            } if kind == "role_changed" => {
                members.insert(user.clone(), role.clone());
            }
            Entry::Event { .. } => {}
            Entry::Message {
                message_id, from, ..
            } => {
                let id = message_id.parse().unwrap_or(0);
                if id <= self.last_message {
                    self.faults.push(format!(
                        "{}: message {id} comes after message {}",
                        group.id, self.last_message
                    ));
                }
                self.last_message = id;
                if !members.contains_key(from) {
                    self.faults.push(format!(
                        "{}: message {message_id} from {from}, who was not a member then",
                        group.id
                    ));
                }
            }
        }
        self.entries.push((entry, audience));
    }
}

/// Whether the user's stream shows it leaving `group` at a seq after `seen`.
fn left_after(report: &UserReport, group: &str, seen: u64) -> bool {
    report.stream.range(seen + 1..).any(|(_, entry)| {
        matches!(entry, Entry::Event { kind, conversation_id, user: Some(user), .. }
            if kind == "member_left" && conversation_id == group && *user == report.user)
    })
}

/// Every acked group message is in its group's timeline once (and in its sender's stream
/// once), from a member; every refusal `not_a_member` of a group message or a mark follows a
/// departure the user had not seen yet, and a refused message was not stored.
pub(super) fn groups_complete(
    evidence: &Evidence<'_>,
    timelines: &HashMap<&str, Timeline<'_>>,
    stored: &HashMap<(&str, &str), Vec<&StoredRow>>,
) -> Check {
    let held = holdings(evidence.reports);
    let owners: HashMap<&str, &str> = evidence
        .groups
        .iter()
        .map(|g| (g.id.as_str(), g.owner.as_str()))
        .collect();
    let mut failures: Vec<String> = timelines
        .values()
        .flat_map(|t| t.faults.iter().cloned())
        .collect();
    let (mut acked, mut refused) = (0, 0);
    for report in evidence.reports {
        for send in report.sends.iter().filter(|s| is_group_id(&s.to)) {
            let what = format!("{}/{} to {}", report.user, send.client_msg_id, send.to);
            if let Some((message_id, _)) = &send.ack {
                acked += 1;
                let owner = owners.get(send.to.as_str()).copied().unwrap_or("nobody");
                failures.extend(held_once(&held, owner, message_id, &what));
                failures.extend(held_once(&held, &report.user, message_id, &what));
            } else if send.refused.is_some() {
                refused += 1;
                if stored.contains_key(&(report.user.as_str(), send.client_msg_id.as_str())) {
                    failures.push(format!("{what} was refused, and stored"));
                }
                // A reply refused for what it quotes is `changes-kept`'s to judge.
                let for_quote = send.refused.as_ref().is_some_and(|(code, _)| {
                    matches!(code, ErrorCode::MessageDeleted | ErrorCode::UnknownMessage)
                });
                if !for_quote && !left_after(report, &send.to, send.seen) {
                    failures.push(format!(
                        "{what} was refused {:?} although {} did not leave after seq {}",
                        send.refused, report.user, send.seen
                    ));
                }
            }
        }
        for mark in &report.refused_marks {
            if !left_after(report, &mark.conversation_id, mark.seen) {
                failures.push(format!(
                    "{}'s mark in {} was refused not_a_member although it did not leave after \
                     seq {}",
                    report.user, mark.conversation_id, mark.seen
                ));
            }
        }
    }
    Check {
        name: "groups-complete",
        failures,
        remark: format!(
            " ({} groups, {acked} acked, {refused} refused)",
            evidence.groups.len()
        ),
    }
}

/// Every user's stream holds, of every group, exactly the timeline's entries it was a member
/// for, each once and in the timeline's order.
pub(super) fn groups_agree(
    evidence: &Evidence<'_>,
    timelines: &HashMap<&str, Timeline<'_>>,
) -> Check {
    let mut failures = Vec::new();
    let mut compared = 0;
    for group in evidence.groups {
        let Some(timeline) = timelines.get(group.id.as_str()) else {
            continue;
        };
        for report in evidence.reports {
            let expected: Vec<EntryRef> = timeline
                .entries
                .iter()
                .filter(|(_, audience)| audience.contains(&report.user))
                .map(|(entry, _)| EntryRef::of(entry))
                .collect();
            let held: Vec<EntryRef> = report
                .stream
                .values()
                .filter(|e| in_timeline(e, &group.id))
                .map(EntryRef::of)
                .collect();
            compared += held.len();
            if held != expected {
                let at = expected
                    .iter()
                    .zip(&held)
                    .position(|(a, b)| a != b)
                    .unwrap_or(expected.len().min(held.len()));
                failures.push(format!(
                    "{} holds {} entries of {}, its memberships call for {}; first difference \
                     at #{at}: {} where {} belongs",
                    report.user,
                    held.len(),
                    group.id,
                    expected.len(),
                    describe(held.get(at)),
                    describe(expected.get(at)),
                ));
            }
        }
    }
    Check {
        name: "groups-agree",
        failures,
        remark: format!(" ({compared} entries)"),
    }
}

fn describe(entry: Option<&EntryRef>) -> String {
    entry.map_or_else(|| "nothing".to_owned(), ToString::to_string)
}

/// Whether `event` is what `change` by `actor` makes.
fn made_by(change: &Change, actor: &str, event: &Entry) -> bool {
    let Entry::Event {
        kind,
        actor: by,
        user,
        users,
        role,
        title,
        ..
    } = event
    else {
        return false;
    };
    let user = user.as_deref();
    by == actor
        && match change {
            Change::Add(added) => kind == "members_added" && users == std::slice::from_ref(added),
            Change::Remove(gone) | Change::Leave(gone) => {
                kind == "member_left" && user == Some(gone.as_str())
            }
            Change::SetRole(member, new) => {
                kind == "role_changed"
                    && user == Some(member.as_str())
                    && role.as_deref() == Some(*new)
            }
            Change::Rename(new) => {
                kind == "group_renamed" && title.as_deref() == Some(new.as_str())
            }
        }
}

/// Every change was answered, and made exactly the event it should, in order; every member
/// read the group's final members as the events imply them.
pub(super) fn changes_match_events(
    evidence: &Evidence<'_>,
    timelines: &HashMap<&str, Timeline<'_>>,
) -> Check {
    let mut failures = Vec::new();
    for group in evidence.groups {
        let Some(timeline) = timelines.get(group.id.as_str()) else {
            continue;
        };
        let events: Vec<&Entry> = timeline
            .entries
            .iter()
            .map(|(entry, _)| *entry)
            .filter(|e| matches!(e, Entry::Event { kind, .. } if kind != "group_created"))
            .collect();
        let changes: Vec<_> = evidence
            .changes
            .iter()
            .filter(|c| c.group == group.id)
            .collect();
        let mut unknown = false;
        for (n, change) in changes.iter().enumerate() {
            if let ChangeOutcome::Failed(why) = &change.outcome {
                failures.push(format!("{}: {:?} failed: {why}", group.id, change.change));
                // Its effect is unknown, and it was the group's last change.
                unknown = true;
                continue;
            }
            match events.get(n) {
                Some(event) if made_by(&change.change, &change.actor, event) => {}
                other => failures.push(format!(
                    "{}: change #{n}, {:?} by {}, answered {:?}, made {other:?}",
                    group.id, change.change, change.actor, change.outcome
                )),
            }
        }
        let made = changes.len() - usize::from(unknown);
        if events.len() > changes.len() || (events.len() > made && !unknown) {
            failures.push(format!(
                "{}: {} changes made {} events: {:?}",
                group.id,
                changes.len(),
                events.len(),
                &events[made.min(events.len())..]
            ));
        }
        failures.extend(members_read_as_implied(evidence, group, timeline));
    }
    let changes = evidence.changes.len();
    Check {
        name: "group-changes",
        failures,
        remark: format!(" ({changes} changes)"),
    }
}

/// Every member of `group` at the end read its members as its events imply them.
fn members_read_as_implied(
    evidence: &Evidence<'_>,
    group: &Group,
    timeline: &Timeline<'_>,
) -> Vec<String> {
    let expected: Vec<(String, String)> = timeline
        .members
        .iter()
        .map(|(u, r)| (u.clone(), r.clone()))
        .collect();
    let mut failures = Vec::new();
    for member in timeline.members.keys() {
        let read = evidence
            .reports
            .iter()
            .find(|r| r.user == *member)
            .and_then(|r| r.reads.members.get(&group.id));
        match read {
            Some(Ok(list)) if *list == expected => {}
            Some(Ok(list)) => failures.push(format!(
                "{member} read the members of {} as {list:?}; its events imply {expected:?}",
                group.id
            )),
            Some(Err(error)) => failures.push(format!(
                "{member} could not read the members of {}: {error}",
                group.id
            )),
            None => failures.push(format!(
                "{member}, a member of {} at the end, did not read its members",
                group.id
            )),
        }
    }
    failures
}
