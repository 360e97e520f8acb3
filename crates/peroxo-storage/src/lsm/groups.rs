//! Creating and changing groups inside the writer's transaction, and a group's members: the
//! rules decide (see [`rules`](crate::rules)), this writes the group's row, its events and
//! the members' conversation states (through [`WriteTx::put_state`], which keeps the `list`
//! and `members` indexes in step).

use super::keys::KeyReader;
use super::tables::{self, GroupRow, Source, StateRow, Tables, key};
use super::writer::{WriteTx, member_rows};
use crate::StoreError;
use crate::rules::{self, Effect, GroupState, MemberRow, Step};
use peroxo_protocol::conversation::{CreateGroup, GroupChange, GroupLimits, GroupOutcome};
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::event::{EventKind, Fanout, Member, Role};

/// Creates the group `request` asks for, or answers with the group a request with its
/// `client_msg_id` made before (see `MessageStore::create_group`). Also says how many stream
/// entries it wrote.
pub(super) fn create_group(
    w: &mut WriteTx<'_>,
    request: &CreateGroup,
) -> Result<(GroupOutcome, usize), StoreError> {
    let (tenant, creator) = (&request.creator.tenant, &request.creator.user);
    let dedupe = key::dedupe(tenant, creator, &request.client_msg_id);
    if let Some(original) = w.get::<String>(&w.t.group_dedupe, &dedupe)? {
        let outcome = GroupOutcome {
            conversation_id: original,
            events: Vec::new(),
            duplicate: true,
        };
        return Ok((outcome, 0));
    }
    let others = rules::check_creation(request).map_err(StoreError::Refused)?;
    let mut everyone = others;
    everyone.push(creator.clone());
    everyone.sort_unstable();
    check_group_counts(&w.tx, w.t, tenant, &everyone, &request.limits)?;
    let group = fresh_group_id(&w.tx, w.t, tenant)?;
    let row = GroupRow {
        title: request.title.clone(),
        creator: creator.clone(),
        client_msg_id: request.client_msg_id.clone(),
        created_ts: w.ts,
        member_count: everyone.len() as u64,
    };
    w.put(&w.t.groups, key::group(tenant, &group), &row)?;
    w.put(&w.t.group_dedupe, dedupe, &group)?;
    let created = EventKind::GroupCreated {
        title: request.title.clone(),
        member_count: everyone.len() as u32,
    };
    let fanout = w.fan_out(tenant, &group, creator, created, &everyone)?;
    w.forget_group(tenant, &group);
    let boundary = newest_message(&w.tx, w.t, tenant, &group)?;
    for user in &everyone {
        let role = if user == creator {
            Role::Owner
        } else {
            Role::Member
        };
        join(w, tenant, &group, user, role, boundary, &fanout)?;
    }
    touch(w, &fanout)?;
    let rows = fanout.seqs.len();
    let outcome = GroupOutcome {
        conversation_id: group,
        events: vec![fanout],
        duplicate: false,
    };
    Ok((outcome, rows))
}

/// A group id the tenant has no group under (a clash of random ids is all but impossible, but
/// costs one lookup to rule out).
fn fresh_group_id(r: &impl Source, t: &Tables, tenant: &str) -> Result<String, StoreError> {
    loop {
        let id = rules::new_group_id();
        if !tables::contains(r, &t.groups, &key::group(tenant, &id))? {
            return Ok(id);
        }
    }
}

/// How many groups `user` is a member of now: its active states with a role.
fn group_count(r: &impl Source, t: &Tables, tenant: &str, user: &str) -> Result<u64, StoreError> {
    let mut count = 0;
    for (_, value) in tables::scan(r, &t.states, &key::user(tenant, user), false, usize::MAX)? {
        let state: StateRow = tables::decode(&value)?;
        if state.active && state.role.is_some() {
            count += 1;
        }
    }
    Ok(count)
}

/// Refuses when any of `users` is already in as many groups as the limits allow.
fn check_group_counts(
    r: &impl Source,
    t: &Tables,
    tenant: &str,
    users: &[String],
    limits: &GroupLimits,
) -> Result<(), StoreError> {
    for user in users {
        let groups = group_count(r, t, tenant, user)?;
        rules::check_group_count(user, groups, limits).map_err(StoreError::Refused)?;
    }
    Ok(())
}

/// Makes `actor`'s change to a group, with its events (see `MessageStore::change_group`).
/// Also says how many stream entries it wrote.
pub(super) fn change_group(
    w: &mut WriteTx<'_>,
    request: &GroupChange,
) -> Result<(GroupOutcome, usize), StoreError> {
    let (tenant, actor) = (&request.actor.tenant, &request.actor.user);
    let group = rules::group_of(actor, &request.conversation_id).map_err(StoreError::Refused)?;
    w.forget_group(tenant, &group);
    let group_key = key::group(tenant, &group);
    let Some(row) = w.get::<GroupRow>(&w.t.groups, &group_key)? else {
        return Err(StoreError::Refused(rules::unknown_conversation(&group)));
    };
    let members = current_members(&w.tx, w.t, tenant, &group)?;
    let current = GroupState {
        id: &group,
        title: &row.title,
        members: &members,
    };
    let steps = rules::plan_change(actor, &request.op, current, &request.limits)
        .map_err(StoreError::Refused)?;
    for step in &steps {
        if let Effect::Join(users) = &step.effect {
            check_group_counts(&w.tx, w.t, tenant, users, &request.limits)?;
        }
    }
    let mut events = Vec::with_capacity(steps.len());
    let mut rows = 0;
    let mut group_row = row;
    let mut group_changed = false;
    for Step {
        effect,
        event,
        audience,
    } in steps
    {
        let fanout = w.fan_out(tenant, &group, actor, event, &audience)?;
        group_changed |= apply(w, tenant, &group, &mut group_row, effect, &fanout)?;
        touch(w, &fanout)?;
        rows += fanout.seqs.len();
        events.push(fanout);
    }
    if group_changed {
        w.put(&w.t.groups, group_key, &group_row)?;
    }
    let outcome = GroupOutcome {
        conversation_id: group,
        events,
        duplicate: false,
    };
    Ok((outcome, rows))
}

/// The current members of `group`, by user id, as the rules read them.
fn current_members(
    r: &impl Source,
    t: &Tables,
    tenant: &str,
    group: &str,
) -> Result<Vec<MemberRow>, StoreError> {
    member_rows(r, t, tenant, group)?
        .into_iter()
        .map(|(user, entry)| {
            Ok(MemberRow {
                user,
                role: role_of(&entry.role)?,
                joined: entry.joined,
                joined_ts: entry.joined_ts,
            })
        })
        .collect()
}

/// A role as stored.
fn role_of(text: &str) -> Result<Role, StoreError> {
    Role::parse(text).ok_or_else(|| StoreError::Backend(format!("a stored role {text:?}")))
}

/// Writes what one step of a change does to the members' states, and to `group_row` (the
/// caller writes it back); `fanout` is the step's event. Says whether `group_row` changed.
/// (The caller has forgotten the group's remembered members already.)
fn apply(
    w: &mut WriteTx<'_>,
    tenant: &str,
    group: &str,
    group_row: &mut GroupRow,
    effect: Effect,
    fanout: &Fanout,
) -> Result<bool, StoreError> {
    match effect {
        Effect::Rename(title) => {
            group_row.title = title;
        }
        Effect::Join(users) => {
            let boundary = newest_message(&w.tx, w.t, tenant, group)?;
            for user in &users {
                join(w, tenant, group, user, Role::Member, boundary, fanout)?;
            }
            group_row.member_count += users.len() as u64;
        }
        Effect::Leave(user) => {
            update_state(w, &UserKey::new(tenant, user), group, fanout, |state| {
                state.active = false;
            })?;
            group_row.member_count = group_row.member_count.saturating_sub(1);
        }
        Effect::SetRole { user, role } => {
            update_state(w, &UserKey::new(tenant, user), group, fanout, |state| {
                state.role = Some(role.as_str().to_owned());
            })?;
            return Ok(false);
        }
    }
    Ok(true)
}

/// Changes `user`'s state of `conversation` by `change` when it has one, and moves the
/// conversation up the user's list when `fanout`'s event reached the user.
fn update_state(
    w: &mut WriteTx<'_>,
    user: &UserKey,
    conversation: &str,
    fanout: &Fanout,
    change: impl FnOnce(&mut StateRow),
) -> Result<(), StoreError> {
    let Some(old) = w.state(user, conversation)? else {
        return Ok(());
    };
    let mut new = old.clone();
    change(&mut new);
    if let Some(seq) = reached(fanout, &user.user) {
        new.activity_seq = seq;
    }
    w.put_state(user, conversation, Some(&old), &new)
}

/// `user`'s seq of `fanout`'s event, when the event entered its stream.
fn reached(fanout: &Fanout, user: &str) -> Option<u64> {
    fanout
        .seqs
        .binary_search_by(|s| s.user.as_str().cmp(user))
        .ok()
        .map(|at| fanout.seqs[at].seq)
}

/// Makes `user` a member of `group` with `role`, by the event of `fanout`: a fresh state (or
/// a former member's, made active again) that sees the group's messages after `boundary`,
/// the newest one now.
fn join(
    w: &mut WriteTx<'_>,
    tenant: &str,
    group: &str,
    user: &str,
    role: Role,
    boundary: u64,
    fanout: &Fanout,
) -> Result<(), StoreError> {
    let user = UserKey::new(tenant, user);
    let old = w.state(&user, group)?;
    let base = old.clone().unwrap_or_default();
    let activity_seq = reached(fanout, &user.user).unwrap_or(base.activity_seq);
    let new = StateRow {
        role: Some(role.as_str().to_owned()),
        boundary,
        joined: fanout.event.event_id,
        joined_ts: fanout.event.ts,
        read_marker: 0,
        unread_count: 0,
        last_message_id: 0,
        activity_seq,
        active: true,
        ..base
    };
    w.put_state(&user, group, old.as_ref(), &new)
}

/// The id of the newest message of `conversation` (0 when it has none).
fn newest_message(
    r: &impl Source,
    t: &Tables,
    tenant: &str,
    conversation: &str,
) -> Result<u64, StoreError> {
    let prefix = key::conversation_prefix(tenant, conversation);
    match tables::scan(r, &t.by_conversation, &prefix, true, 1)?.first() {
        Some((rest, _)) => KeyReader::new(rest).u64(),
        None => Ok(0),
    }
}

/// Moves the conversation of `fanout`'s event up the list of everyone it reached: a
/// membership event is activity. (The states a step changed moved already.)
fn touch(w: &mut WriteTx<'_>, fanout: &Fanout) -> Result<(), StoreError> {
    let (tenant, conversation) = (&fanout.event.tenant, &fanout.event.conversation_id);
    for reached in &fanout.seqs {
        let user = UserKey::new(tenant.as_str(), reached.user.as_str());
        let Some(old) = w.state(&user, conversation)? else {
            continue;
        };
        if old.activity_seq != reached.seq {
            let new = StateRow {
                activity_seq: reached.seq,
                ..old.clone()
            };
            w.put_state(&user, conversation, Some(&old), &new)?;
        }
    }
    Ok(())
}

/// The members of a group, by user id, for one of its members (see
/// `MessageStore::members`). Refused when the group does not exist or the user is not a
/// member of it.
pub(super) fn members(
    r: &impl Source,
    t: &Tables,
    user: &UserKey,
    conversation_id: &str,
) -> Result<Vec<Member>, StoreError> {
    let group = rules::group_of(&user.user, conversation_id).map_err(StoreError::Refused)?;
    if !tables::contains(r, &t.groups, &key::group(&user.tenant, &group))? {
        return Err(StoreError::Refused(rules::unknown_conversation(&group)));
    }
    let state: Option<StateRow> =
        tables::get(r, &t.states, &key::state(&user.tenant, &user.user, &group))?;
    if !state.is_some_and(|s| s.active) {
        return Err(StoreError::Refused(rules::not_a_member(&user.user, &group)));
    }
    member_rows(r, t, &user.tenant, &group)?
        .into_iter()
        .map(|(user, entry)| {
            Ok(Member {
                user,
                role: role_of(&entry.role)?,
                joined_ts: entry.joined_ts,
            })
        })
        .collect()
}
