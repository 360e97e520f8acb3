//! Creating and changing groups inside the writer's transaction: the rules decide (see
//! [`rules`](crate::rules)), this writes the group's rows, its events and the members' states.

use rusqlite::{Connection, OptionalExtension, params};

use super::writer::WriteTx;
use super::{backend, state};
use crate::StoreError;
use crate::rules::{self, Effect, GroupState, Step};
use crate::sql::sql_int;
use peroxo_protocol::conversation::{CreateGroup, GroupChange, GroupLimits, GroupOutcome};
use peroxo_protocol::event::{EventKind, Fanout, Role};

/// Creates the group `request` asks for, or answers with the group a request with its
/// `client_msg_id` made before. Also says how many stream rows it wrote.
pub(super) fn create_group(
    w: &mut WriteTx<'_>,
    request: &CreateGroup,
) -> Result<(GroupOutcome, usize), StoreError> {
    let (tenant, creator) = (&request.creator.tenant, &request.creator.user);
    if let Some(original) = created_before(w.conn, request)? {
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
    check_group_counts(w.conn, tenant, &everyone, &request.limits)?;
    let group = fresh_group_id(w.conn, tenant)?;
    w.conn
        .prepare_cached(
            "INSERT INTO groups (tenant, id, title, creator, client_msg_id, created_ts, member_count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                tenant,
                group,
                request.title,
                creator,
                request.client_msg_id,
                w.ts,
                everyone.len() as i64
            ])
        })
        .map_err(backend)?;
    let created = EventKind::GroupCreated {
        title: request.title.clone(),
        member_count: everyone.len() as u32,
    };
    let fanout = w.fan_out(tenant, &group, creator, created, &everyone)?;
    for user in &everyone {
        let role = if user == creator {
            Role::Owner
        } else {
            Role::Member
        };
        join(w, tenant, &group, user, role, &fanout)?;
    }
    touch(w.conn, &fanout)?;
    let rows = fanout.seqs.len();
    let outcome = GroupOutcome {
        conversation_id: group,
        events: vec![fanout],
        duplicate: false,
    };
    Ok((outcome, rows))
}

/// The group a creation with this `client_msg_id` made before.
fn created_before(conn: &Connection, request: &CreateGroup) -> Result<Option<String>, StoreError> {
    conn.prepare_cached(
        "SELECT id FROM groups WHERE tenant = ?1 AND creator = ?2 AND client_msg_id = ?3",
    )
    .and_then(|mut stmt| {
        stmt.query_row(
            params![
                request.creator.tenant,
                request.creator.user,
                request.client_msg_id
            ],
            |row| row.get(0),
        )
        .optional()
    })
    .map_err(backend)
}

/// A group id the tenant has no group under (a clash of random ids is all but impossible, but
/// costs one lookup to rule out).
fn fresh_group_id(conn: &Connection, tenant: &str) -> Result<String, StoreError> {
    loop {
        let id = rules::new_group_id();
        if state::group_title(conn, tenant, &id)?.is_none() {
            return Ok(id);
        }
    }
}

/// Refuses when any of `users` is already in as many groups as the limits allow.
fn check_group_counts(
    conn: &Connection,
    tenant: &str,
    users: &[String],
    limits: &GroupLimits,
) -> Result<(), StoreError> {
    for user in users {
        let groups = state::group_count(conn, tenant, user)?;
        rules::check_group_count(user, groups, limits).map_err(StoreError::Refused)?;
    }
    Ok(())
}

/// Makes `actor`'s change to a group, with its events. Also says how many stream rows it
/// wrote.
pub(super) fn change_group(
    w: &mut WriteTx<'_>,
    request: &GroupChange,
) -> Result<(GroupOutcome, usize), StoreError> {
    let (tenant, actor) = (&request.actor.tenant, &request.actor.user);
    let group = rules::group_of(actor, &request.conversation_id).map_err(StoreError::Refused)?;
    w.forget_group(tenant, &group);
    let Some(title) = state::group_title(w.conn, tenant, &group)? else {
        return Err(StoreError::Refused(rules::unknown_conversation(&group)));
    };
    let members = state::members(w.conn, tenant, &group)?;
    let current = GroupState {
        id: &group,
        title: &title,
        members: &members,
    };
    let steps = rules::plan_change(actor, &request.op, current, &request.limits)
        .map_err(StoreError::Refused)?;
    for step in &steps {
        if let Effect::Join(users) = &step.effect {
            check_group_counts(w.conn, tenant, users, &request.limits)?;
        }
    }
    let mut events = Vec::with_capacity(steps.len());
    let mut rows = 0;
    for Step {
        effect,
        event,
        audience,
    } in steps
    {
        let fanout = w.fan_out(tenant, &group, actor, event, &audience)?;
        apply(w, tenant, &group, effect, &fanout)?;
        touch(w.conn, &fanout)?;
        rows += fanout.seqs.len();
        events.push(fanout);
    }
    let outcome = GroupOutcome {
        conversation_id: group,
        events,
        duplicate: false,
    };
    Ok((outcome, rows))
}

/// Writes what one step of a change does to the group's rows; `fanout` is its event.
fn apply(
    w: &WriteTx<'_>,
    tenant: &str,
    group: &str,
    effect: Effect,
    fanout: &Fanout,
) -> Result<(), StoreError> {
    let execute = |sql: &str, params: &[&dyn rusqlite::ToSql]| {
        w.conn
            .prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute(params))
            .map_err(backend)
    };
    match effect {
        Effect::Rename(title) => {
            execute(
                "UPDATE groups SET title = ?3 WHERE tenant = ?1 AND id = ?2",
                params![tenant, group, title],
            )?;
        }
        Effect::Join(users) => {
            for user in &users {
                join(w, tenant, group, user, Role::Member, fanout)?;
            }
            execute(
                "UPDATE groups SET member_count = member_count + ?3 WHERE tenant = ?1 AND id = ?2",
                params![tenant, group, users.len() as i64],
            )?;
        }
        Effect::Leave(user) => {
            execute(
                "UPDATE conversation_states SET active = 0
                 WHERE tenant = ?1 AND user = ?2 AND conversation = ?3",
                params![tenant, user, group],
            )?;
            execute(
                "UPDATE groups SET member_count = member_count - 1 WHERE tenant = ?1 AND id = ?2",
                params![tenant, group],
            )?;
        }
        Effect::SetRole { user, role } => {
            execute(
                "UPDATE conversation_states SET role = ?4
                 WHERE tenant = ?1 AND user = ?2 AND conversation = ?3",
                params![tenant, user, group, role.as_str()],
            )?;
        }
    }
    Ok(())
}

/// Makes `user` a member of `group` with `role`, by the event of `fanout`: a fresh state row
/// (or a former member's, made active again) that sees the group's messages from now on.
fn join(
    w: &WriteTx<'_>,
    tenant: &str,
    group: &str,
    user: &str,
    role: Role,
    fanout: &Fanout,
) -> Result<(), StoreError> {
    w.conn
        .prepare_cached(
            "INSERT INTO conversation_states
                 (tenant, user, conversation, role, boundary, joined, joined_ts, read_marker,
                  unread_count, last_message_id, activity_seq, active)
             VALUES (?1, ?2, ?3, ?4,
                     (SELECT COALESCE(MAX(id), 0) FROM messages WHERE tenant = ?1 AND conversation = ?3),
                     ?5, ?6, 0, 0, 0, 0, 1)
             ON CONFLICT (tenant, user, conversation) DO UPDATE SET
                 role = excluded.role, boundary = excluded.boundary, joined = excluded.joined,
                 joined_ts = excluded.joined_ts, read_marker = 0, unread_count = 0,
                 last_message_id = 0, active = 1",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                tenant,
                user,
                group,
                role.as_str(),
                sql_int(fanout.event.event_id),
                fanout.event.ts
            ])
        })
        .map_err(backend)?;
    Ok(())
}

/// Moves the conversation of `fanout`'s event up the list of everyone it reached: a
/// membership event is activity.
fn touch(conn: &Connection, fanout: &Fanout) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE conversation_states SET activity_seq = ?4
             WHERE tenant = ?1 AND user = ?2 AND conversation = ?3",
        )
        .map_err(backend)?;
    for reached in &fanout.seqs {
        stmt.execute(params![
            fanout.event.tenant,
            reached.user,
            fanout.event.conversation_id,
            sql_int(reached.seq)
        ])
        .map_err(backend)?;
    }
    Ok(())
}
