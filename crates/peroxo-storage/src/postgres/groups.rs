//! Creating and changing groups. A change locks its group row `FOR UPDATE` (so no message
//! or other change of the group runs meanwhile), reads the members, asks `rules` what the
//! change does, then locks the counters of everyone its events reach (sorted) and commits
//! the events, their stream entries and the new state together.

use std::collections::{BTreeMap, BTreeSet};

use deadpool_postgres::{GenericClient, Pool, Transaction};

use super::backend;
use super::outbox::OutboxRows;
use super::reads::current_members;
use super::streams::{Counters, InboxRows, fan_out, insert_event};
use crate::rules::{self, Effect, GroupState, Step};
use crate::sql::sql_int;
use crate::{OutboxSettings, StoreError};
use peroxo_protocol::conversation::{CreateGroup, GroupChange, GroupLimits, GroupOutcome};
use peroxo_protocol::domain::{UserKey, now_ms};
use peroxo_protocol::event::{EventKind, Fanout, Role};

pub(super) async fn create_group(
    pool: &Pool,
    outbox: OutboxSettings,
    request: CreateGroup,
) -> Result<GroupOutcome, StoreError> {
    let mut client = pool.get().await.map_err(backend)?;
    // A resent creation is the original, whatever it asks now.
    if let Some(original) = created_before(&client, &request).await? {
        return Ok(duplicate(original));
    }
    let others = rules::check_creation(&request).map_err(StoreError::Refused)?;
    let creator = &request.creator;
    let tx = client.transaction().await.map_err(backend)?;
    let mut everyone: Vec<String> = others.clone();
    everyone.push(creator.user.clone());
    everyone.sort_unstable();
    let mut counters = Counters::lock(&tx, keys(creator, &everyone)).await?;
    // Under the creator's lock, a concurrent twin of this request has committed or not begun.
    if let Some(original) = created_before(&tx, &request).await? {
        return Ok(duplicate(original));
    }
    let mut checked = vec![creator.user.clone()];
    checked.extend(others);
    check_group_counts(&tx, &creator.tenant, &checked, &request.limits).await?;

    let group = rules::new_group_id();
    let ts = now_ms();
    let member_count = everyone.len() as u32;
    tx.execute(
        "INSERT INTO groups (tenant, id, title, creator, created_ts, member_count, client_msg_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &creator.tenant,
            &group,
            &request.title,
            &creator.user,
            &ts,
            &i64::from(member_count),
            &request.client_msg_id,
        ],
    )
    .await
    .map_err(backend)?;
    let created = EventKind::GroupCreated {
        title: request.title.clone(),
        member_count,
    };
    let event = insert_event(&tx, &creator.tenant, &group, &creator.user, ts, created).await?;
    let mut inbox = InboxRows::default();
    let fanout = fan_out(event, &everyone, &mut counters, &mut inbox);
    let role_of = |user: &str| {
        if user == creator.user {
            Role::Owner
        } else {
            Role::Member
        }
    };
    join(&tx, &fanout, &everyone, role_of).await?;
    inbox.insert(&tx).await?;
    counters.store(&tx).await?;
    let mut events = OutboxRows::new(outbox);
    events.record_fanout(&fanout);
    events.write(&tx, ts).await?;
    tx.commit().await.map_err(backend)?;
    Ok(GroupOutcome {
        conversation_id: group,
        events: vec![fanout],
        duplicate: false,
    })
}

/// The group an earlier request with the same (tenant, creator, client_msg_id) created.
async fn created_before(
    client: &impl GenericClient,
    request: &CreateGroup,
) -> Result<Option<String>, StoreError> {
    let row = client
        .query_opt(
            "SELECT id FROM groups WHERE tenant = $1 AND creator = $2 AND client_msg_id = $3",
            &[
                &request.creator.tenant,
                &request.creator.user,
                &request.client_msg_id,
            ],
        )
        .await
        .map_err(backend)?;
    Ok(row.map(|row| row.get(0)))
}

fn duplicate(conversation_id: String) -> GroupOutcome {
    GroupOutcome {
        conversation_id,
        events: Vec::new(),
        duplicate: true,
    }
}

/// The keys of `users` of `tenant`'s user `of`.
fn keys(of: &UserKey, users: &[String]) -> BTreeSet<UserKey> {
    users.iter().map(|user| of.peer(user.clone())).collect()
}

/// Refuses when any of `users` (checked in this order) is already in as many groups as
/// `limits` allow. Their counters are locked, so no other change can add them meanwhile.
async fn check_group_counts(
    tx: &Transaction<'_>,
    tenant: &str,
    users: &[String],
    limits: &GroupLimits,
) -> Result<(), StoreError> {
    let rows = tx
        .query(
            "SELECT owner, count(*) FROM conversation_states
             WHERE tenant = $1 AND owner = ANY($2) AND active AND role IS NOT NULL
             GROUP BY owner",
            &[&tenant, &users],
        )
        .await
        .map_err(backend)?;
    let counts: BTreeMap<String, i64> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    for user in users {
        let groups = counts.get(user).copied().unwrap_or(0) as u64;
        rules::check_group_count(user, groups, limits).map_err(StoreError::Refused)?;
    }
    Ok(())
}

/// Makes `users` (sorted) members of the fanout's group, with `role_of` each, as of its event:
/// history from now on (the group row is locked, so no message of it is being written),
/// nothing read, and the event as their latest activity. A former member comes back the same
/// way.
async fn join(
    tx: &Transaction<'_>,
    fanout: &Fanout,
    users: &[String],
    role_of: impl Fn(&str) -> Role,
) -> Result<(), StoreError> {
    let event = &fanout.event;
    let mut owners = Vec::with_capacity(users.len());
    let mut roles = Vec::with_capacity(users.len());
    let mut activity = Vec::with_capacity(users.len());
    for seq in fanout
        .seqs
        .iter()
        .filter(|s| users.binary_search(&s.user).is_ok())
    {
        owners.push(seq.user.as_str());
        roles.push(role_of(&seq.user).as_str());
        activity.push(sql_int(seq.seq));
    }
    tx.execute(
        "INSERT INTO conversation_states AS s
            (tenant, owner, conversation, role, boundary, joined_event, joined_ts, read_marker,
             unread_count, last_message_id, activity_seq, active)
         SELECT $1, v.o, $2, v.r,
                (SELECT COALESCE(max(id), 0) FROM messages WHERE tenant = $1 AND conversation = $2),
                $3, $4, 0, 0, NULL, v.a, true
         FROM unnest($5::text[], $6::text[], $7::bigint[]) AS v(o, r, a)
         ON CONFLICT (tenant, owner, conversation) DO UPDATE SET
            role = EXCLUDED.role, boundary = EXCLUDED.boundary,
            joined_event = EXCLUDED.joined_event, joined_ts = EXCLUDED.joined_ts,
            read_marker = 0, unread_count = 0, last_message_id = NULL,
            activity_seq = EXCLUDED.activity_seq, active = true",
        &[
            &event.tenant,
            &event.conversation_id,
            &sql_int(event.event_id),
            &event.ts,
            &owners,
            &roles,
            &activity,
        ],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

pub(super) async fn change_group(
    pool: &Pool,
    outbox: OutboxSettings,
    request: GroupChange,
) -> Result<GroupOutcome, StoreError> {
    let actor = &request.actor;
    let group =
        rules::group_of(&actor.user, &request.conversation_id).map_err(StoreError::Refused)?;
    let mut client = pool.get().await.map_err(backend)?;
    let tx = client.transaction().await.map_err(backend)?;
    let title: String = tx
        .query_opt(
            "SELECT title FROM groups WHERE tenant = $1 AND id = $2 FOR UPDATE",
            &[&actor.tenant, &group],
        )
        .await
        .map_err(backend)?
        .ok_or_else(|| StoreError::Refused(rules::unknown_conversation(&group)))?
        .get(0);
    // The group row is locked: these stay the members until the change commits.
    let members = current_members(&tx, &actor.tenant, &group).await?;
    let state = GroupState {
        id: &group,
        title: &title,
        members: &members,
    };
    let steps = rules::plan_change(&actor.user, &request.op, state, &request.limits)
        .map_err(StoreError::Refused)?;
    let mut events = Vec::with_capacity(steps.len());
    if !steps.is_empty() {
        let audience: Vec<String> = steps
            .iter()
            .flat_map(|step| step.audience.iter().cloned())
            .collect();
        let mut change = ChangeWrites {
            tx: &tx,
            actor,
            group: &group,
            limits: &request.limits,
            ts: now_ms(),
            counters: Counters::lock(&tx, keys(actor, &audience)).await?,
            inbox: InboxRows::default(),
        };
        for step in steps {
            events.push(change.step(step).await?);
        }
        let ts = change.ts;
        change.finish(&events).await?;
        let mut outbox = OutboxRows::new(outbox);
        for fanout in &events {
            outbox.record_fanout(fanout);
        }
        outbox.write(&tx, ts).await?;
    }
    tx.commit().await.map_err(backend)?;
    Ok(GroupOutcome {
        conversation_id: group,
        events,
        duplicate: false,
    })
}

/// What a change writes besides its effects: events in streams, and the counters they take.
struct ChangeWrites<'a, 't> {
    tx: &'a Transaction<'t>,
    actor: &'a UserKey,
    group: &'a str,
    limits: &'a GroupLimits,
    ts: i64,
    counters: Counters,
    inbox: InboxRows,
}

impl ChangeWrites<'_, '_> {
    /// Commits one step of a change: its event in its audience's streams, and its effect.
    async fn step(&mut self, step: Step) -> Result<Fanout, StoreError> {
        let (tx, tenant, group) = (self.tx, &self.actor.tenant, self.group);
        if let Effect::Join(users) = &step.effect {
            check_group_counts(tx, tenant, users, self.limits).await?;
        }
        let event = insert_event(tx, tenant, group, &self.actor.user, self.ts, step.event).await?;
        let fanout = fan_out(event, &step.audience, &mut self.counters, &mut self.inbox);
        match &step.effect {
            Effect::Rename(title) => {
                tx.execute(
                    "UPDATE groups SET title = $3 WHERE tenant = $1 AND id = $2",
                    &[tenant, &group, title],
                )
                .await
                .map_err(backend)?;
            }
            Effect::Join(users) => {
                join(tx, &fanout, users, |_| Role::Member).await?;
                count_members(tx, tenant, group, users.len() as i64).await?;
            }
            Effect::Leave(user) => {
                tx.execute(
                    "UPDATE conversation_states SET active = false
                     WHERE tenant = $1 AND owner = $2 AND conversation = $3",
                    &[tenant, user, &group],
                )
                .await
                .map_err(backend)?;
                count_members(tx, tenant, group, -1).await?;
            }
            Effect::SetRole { user, role } => {
                tx.execute(
                    "UPDATE conversation_states SET role = $4
                     WHERE tenant = $1 AND owner = $2 AND conversation = $3",
                    &[tenant, user, &group, &role.as_str()],
                )
                .await
                .map_err(backend)?;
            }
        }
        Ok(fanout)
    }

    /// Writes the stream entries and counters of every step, and makes each member's latest
    /// event of the change the group's latest activity for that member.
    async fn finish(self, events: &[Fanout]) -> Result<(), StoreError> {
        let mut activity = BTreeMap::new();
        for seq in events.iter().flat_map(|fanout| &fanout.seqs) {
            activity.insert(seq.user.as_str(), sql_int(seq.seq));
        }
        let (owners, seqs): (Vec<&str>, Vec<i64>) = activity.into_iter().unzip();
        self.tx
            .execute(
                "UPDATE conversation_states s SET activity_seq = v.a
                 FROM unnest($3::text[], $4::bigint[]) AS v(o, a)
                 WHERE s.tenant = $1 AND s.conversation = $2 AND s.owner = v.o",
                &[&self.actor.tenant, &self.group, &owners, &seqs],
            )
            .await
            .map_err(backend)?;
        self.inbox.insert(self.tx).await?;
        self.counters.store(self.tx).await
    }
}

async fn count_members(
    tx: &Transaction<'_>,
    tenant: &str,
    group: &str,
    by: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE groups SET member_count = member_count + $3 WHERE tenant = $1 AND id = $2",
        &[&tenant, &group, &by],
    )
    .await
    .map_err(backend)?;
    Ok(())
}
