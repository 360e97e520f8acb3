//! Membership changes under traffic: for every group, a steady stream of the protocol-2
//! commands that change it (`add_members`, `remove_member`, `leave_group`, `set_role`,
//! `rename_group`), one at a time, each repeated until answered as a correct client would.
//!
//! The owner (the creator) makes every change but the departures, which the departing member
//! makes itself; the owner never leaves and is never demoted, so its stream holds the whole
//! history of its group, which the verdict reads as the group's timeline. Every change changes
//! something (a new member, a member, a new role, a new title), so each answered one puts
//! exactly one event in the group's history; a repeat after an unknown outcome may find it
//! done already, which docs/PROTOCOL.md answers `done` or, for `remove_member` and
//! `leave_group`, `not_a_member`. The change is then recorded as already done.

use std::collections::BTreeMap;
use std::time::Duration;

use peroxo_client::{Client, CommandKind, ErrorCode, ServerFrame};
use tokio::time::{Instant, MissedTickBehavior};

use crate::workload::{Answer, Group, Rng, answer_until_deadline};

/// One change of a group's membership, roles or title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Add(String),
    Remove(String),
    /// The member leaves by itself.
    Leave(String),
    /// `set_role` of the member to `admin` or `member`.
    SetRole(String, &'static str),
    Rename(String),
}

/// How a change ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChangeOutcome {
    /// Answered `done`.
    Done,
    /// A repeat after an unknown outcome was answered `not_a_member`: an earlier attempt
    /// had done it.
    AlreadyDone,
    /// Refused otherwise, or never answered.
    Failed(String),
}

/// A change the workload made, and how it ended.
#[derive(Debug, Clone)]
pub(crate) struct ChangeRecord {
    pub(crate) group: String,
    /// Who made it: the owner, or the departing member.
    pub(crate) actor: String,
    pub(crate) change: Change,
    pub(crate) outcome: ChangeOutcome,
}

/// How many members a group keeps at least, and may grow to beyond its initial size.
const MIN_MEMBERS: usize = 3;
const GROWTH: usize = 2;

/// Changes `group` at `rate` per second for `duration`, through the clients of the users
/// concerned (`clients[i]` is user `u<i>`'s; users `0..eligible` may join a group). Stops
/// after a change that fails (its effect is then unknown). Returns every change made, in
/// order.
pub(crate) async fn change_group(
    group: Group,
    clients: Vec<Client>,
    eligible: usize,
    rate: f64,
    duration: Duration,
    seed: u64,
) -> Vec<ChangeRecord> {
    let mut records = Vec::new();
    if rate <= 0.0 {
        return records;
    }
    let mut rng = Rng(seed | 1);
    let max_members = group.members.len() + GROWTH;
    // The workload's model of the group: every member but the owner, with its role.
    let mut others: BTreeMap<String, &'static str> = group
        .members
        .iter()
        .filter(|m| **m != group.owner)
        .map(|m| (m.clone(), "member"))
        .collect();
    let until = Instant::now() + duration;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    let mut renames = 0;
    while Instant::now() < until {
        tick.tick().await;
        let members = others.len() + 1;
        let outsiders: Vec<String> = (0..eligible)
            .map(|i| format!("u{i}"))
            .filter(|u| *u != group.owner && !others.contains_key(u))
            .collect();
        let pick = |rng: &mut Rng| {
            let n = rng.below(others.len() as u64) as usize;
            others.keys().nth(n).cloned()
        };
        let change = match rng.below(5) {
            _ if members <= MIN_MEMBERS && !outsiders.is_empty() => {
                Change::Add(outsiders[rng.below(outsiders.len() as u64) as usize].clone())
            }
            0 if members < max_members && !outsiders.is_empty() => {
                Change::Add(outsiders[rng.below(outsiders.len() as u64) as usize].clone())
            }
            1 if members > MIN_MEMBERS => Change::Remove(pick(&mut rng).unwrap()),
            2 if members > MIN_MEMBERS => Change::Leave(pick(&mut rng).unwrap()),
            3 if !others.is_empty() => {
                let user = pick(&mut rng).unwrap();
                let role = if others[&user] == "admin" {
                    "member"
                } else {
                    "admin"
                };
                Change::SetRole(user, role)
            }
            _ => {
                renames += 1;
                Change::Rename(format!("{} #{renames}", group.title))
            }
        };
        let record = make_change(&group, &clients, change).await;
        let failed = matches!(record.outcome, ChangeOutcome::Failed(_));
        if !failed {
            match &record.change {
                Change::Add(user) => {
                    others.insert(user.clone(), "member");
                    group.roster.lock().unwrap().insert(user.clone());
                }
                Change::Remove(user) | Change::Leave(user) => {
                    others.remove(user);
                    group.roster.lock().unwrap().remove(user);
                }
                Change::SetRole(user, role) => {
                    others.insert(user.clone(), role);
                }
                Change::Rename(_) => {}
            }
        }
        records.push(record);
        if failed {
            break;
        }
    }
    records
}

/// Makes one change, repeated until answered, and judges the answer.
async fn make_change(group: &Group, clients: &[Client], change: Change) -> ChangeRecord {
    let conversation_id = group.id.clone();
    let (actor, kind) = match &change {
        Change::Add(user) => (
            group.owner.clone(),
            CommandKind::AddMembers {
                conversation_id,
                users: vec![user.clone()],
            },
        ),
        Change::Remove(user) => (
            group.owner.clone(),
            CommandKind::RemoveMember {
                conversation_id,
                user: user.clone(),
            },
        ),
        Change::Leave(user) => (user.clone(), CommandKind::LeaveGroup { conversation_id }),
        Change::SetRole(user, role) => (
            group.owner.clone(),
            CommandKind::SetRole {
                conversation_id,
                user: user.clone(),
                role: (*role).to_owned(),
            },
        ),
        Change::Rename(title) => (
            group.owner.clone(),
            CommandKind::RenameGroup {
                conversation_id,
                title: title.clone(),
            },
        ),
    };
    let client = &clients[actor[1..].parse::<usize>().unwrap()];
    let departs = matches!(change, Change::Remove(_) | Change::Leave(_));
    let outcome = match answer_until_deadline(client, kind).await {
        Ok(Answer::Reply(ServerFrame::Done { .. })) => ChangeOutcome::Done,
        Ok(Answer::Refused { error, repeated })
            if departs && repeated && error.code == ErrorCode::NotAMember =>
        {
            ChangeOutcome::AlreadyDone
        }
        Ok(Answer::Reply(other)) => ChangeOutcome::Failed(format!("answered with {other:?}")),
        Ok(Answer::Refused { error, repeated }) => ChangeOutcome::Failed(format!(
            "refused{}: {error}",
            if repeated { " on a repeat" } else { "" }
        )),
        Err(error) => ChangeOutcome::Failed(error),
    };
    ChangeRecord {
        group: group.id.clone(),
        actor,
        change,
        outcome,
    }
}
