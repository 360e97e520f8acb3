//! Changing a committed message: an edit, a delete (with the unread counts and previews it
//! changes), a reaction added or taken back. The rules decide (see [`rules`](crate::rules));
//! this reads the rows they need and writes what they answer, with the event in the stream of
//! everyone who can see the message, in one transaction.
//!
//! Order of work, as every writer's: the group's row `FOR SHARE` (so those who can see the
//! message stay who they are), then the counters of everyone who can see the message, sorted,
//! in one statement; only then the message and its reactions are read. Every change of a
//! message locks the same counters, so changes of one message run one after the other and
//! each decides on what the one before committed; the actor's counter is among them, so an
//! edit's `client_msg_id` cannot be taken twice; and every reader's counter is among them, so
//! a delete's unread counts lose no update against sends and read marks, which lock it too.

use std::collections::BTreeSet;

use deadpool_postgres::{GenericClient, Pool, Transaction};
use tokio_postgres::types::ToSql;

use super::marks::lock_group;
use super::outbox::OutboxRows;
use super::reads::known_standing;
use super::streams::{Counters, InboxRows, fan_out, insert_event, role_from_sql};
use super::{attach_reactions, backend, message_from_row};
use crate::rules::{self, MessageEffect, MessageRow, ReactionTally, Target};
use crate::sql::{MESSAGE_COLUMN_COUNT, MESSAGE_COLUMNS, sql_int};
use crate::{MAX_STORED_TEXT_BYTES, OutboxSettings, StoreError};
use peroxo_protocol::domain::{StoredMessage, UserKey, now_ms};
use peroxo_protocol::event::{Fanout, Role};
use peroxo_protocol::lifecycle::{MessageChange, MessageOp, MessageOutcome};

pub(super) async fn change_message(
    pool: &Pool,
    outbox: OutboxSettings,
    request: MessageChange,
) -> Result<MessageOutcome, StoreError> {
    let actor = &request.actor;
    let refused = StoreError::Refused;
    let target = rules::target_of(&actor.user, &request.conversation_id).map_err(refused)?;
    rules::check_request(&request.op, MAX_STORED_TEXT_BYTES).map_err(refused)?;
    let mut client = pool.get().await.map_err(backend)?;
    let tx = client.transaction().await.map_err(backend)?;
    // A resent edit is answered with what it edited before anything is checked again: its
    // author may have left the group since, like the author of a resent message.
    if let MessageOp::Edit { client_msg_id, .. } = &request.op
        && let Some(edited) = edited_before(&tx, actor, client_msg_id).await?
    {
        return finish(tx, actor, edited, None, true).await;
    }
    let (row, audience, mut counters) = lock_message(&tx, actor, &target, &request).await?;
    let message_id = row.id;
    // Checked again under the locks: a first attempt may have committed meanwhile.
    if let MessageOp::Edit { client_msg_id, .. } = &request.op
        && let Some(edited) = edited_before(&tx, actor, client_msg_id).await?
    {
        return finish(tx, actor, edited, None, true).await;
    }
    let role = match &target {
        Target::Group(group) => role_of(&tx, actor, group).await?,
        Target::Direct { .. } => None,
    };
    let tally = match &request.op {
        MessageOp::React { emoji } | MessageOp::Unreact { emoji } => {
            reaction_tally(&tx, &actor.user, message_id, emoji).await?
        }
        _ => ReactionTally::default(),
    };
    let ts = now_ms();
    let plan = rules::plan_message_change(
        &actor.user,
        &row,
        &request.op,
        role,
        tally,
        &request.limits,
        ts,
    )
    .map_err(refused)?;
    let Some((effect, moderated)) = plan else {
        return finish(tx, actor, message_id, None, false).await;
    };
    apply(&tx, actor, &effect, message_id, ts).await?;
    if matches!(effect, MessageEffect::Delete) {
        forget_deleted(&tx, &actor.tenant, target.id(), &row, &audience).await?;
    }
    let kind = effect.event(message_id, moderated);
    let (tenant, conversation) = (&actor.tenant, target.id());
    let event = insert_event(&tx, tenant, conversation, &actor.user, ts, kind).await?;
    if let MessageOp::Edit { client_msg_id, .. } = &request.op {
        tx.execute(
            "UPDATE events SET client_msg_id = $2 WHERE id = $1",
            &[&sql_int(event.event_id), client_msg_id],
        )
        .await
        .map_err(backend)?;
    }
    let mut inbox = InboxRows::default();
    let fanout = fan_out(event, &audience, &mut counters, &mut inbox);
    inbox.insert(&tx).await?;
    counters.store(&tx).await?;
    let mut events = OutboxRows::new(outbox);
    events.record_fanout(&fanout);
    events.write(&tx, ts).await?;
    finish(tx, actor, message_id, Some(fanout), false).await
}

/// Locks what a change of the message `request` names needs, in the order every writer
/// locks, and reads the message: refused when the actor cannot see such a message. Answers
/// the message, everyone who can see it (sorted) and their locked counters.
async fn lock_message(
    tx: &Transaction<'_>,
    actor: &UserKey,
    target: &Target,
    request: &MessageChange,
) -> Result<(MessageRow, Vec<String>, Counters), StoreError> {
    let conversation = target.id();
    let message_id = request.message_id;
    if let Target::Group(group) = target {
        lock_group(tx, &actor.tenant, group).await?;
    }
    let standing = known_standing(tx, actor, target).await?;
    let unknown = || StoreError::Refused(rules::unknown_message(Some(message_id), conversation));
    if message_id <= standing.boundary {
        return Err(unknown());
    }
    let audience = match target.participants() {
        Some(participants) => participants,
        None => members_who_see(tx, &actor.tenant, conversation, message_id).await?,
    };
    let keys: BTreeSet<UserKey> = audience
        .iter()
        .map(|user| actor.peer(user.clone()))
        .collect();
    let counters = Counters::lock(tx, keys).await?;
    let row = message_row(tx, &actor.tenant, conversation, message_id)
        .await?
        .ok_or_else(unknown)?;
    Ok((row, audience, counters))
}

/// Commits, and answers the message as the actor sees it now with the event the change made.
async fn finish(
    tx: Transaction<'_>,
    actor: &UserKey,
    message_id: u64,
    event: Option<Fanout>,
    duplicate: bool,
) -> Result<MessageOutcome, StoreError> {
    let message = read_message(&tx, actor, message_id).await?;
    tx.commit().await.map_err(backend)?;
    Ok(MessageOutcome {
        message,
        event,
        duplicate,
    })
}

/// Message `id` of `conversation`, as a change finds it.
async fn message_row(
    tx: &Transaction<'_>,
    tenant: &str,
    conversation: &str,
    id: u64,
) -> Result<Option<MessageRow>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT sender, text, ts, deleted_ts IS NOT NULL FROM messages
             WHERE id = $1 AND tenant = $2 AND conversation = $3",
            &[&sql_int(id), &tenant, &conversation],
        )
        .await
        .map_err(backend)?;
    Ok(row.map(|row| MessageRow {
        id,
        sender: row.get(0),
        text: row.get(1),
        ts: row.get(2),
        deleted: row.get(3),
    }))
}

/// Message `id` as `viewer` sees it now: a group message with the viewer's seq of it.
async fn read_message(
    client: &impl GenericClient,
    viewer: &UserKey,
    id: u64,
) -> Result<StoredMessage, StoreError> {
    let row = client
        .query_one(
            &format!(
                "SELECT {MESSAGE_COLUMNS},
                        (SELECT i.seq FROM inbox i
                         WHERE i.tenant = m.tenant AND i.owner = $2 AND i.message_id = m.id)
                 FROM messages m WHERE m.id = $1"
            ),
            &[&sql_int(id), &viewer.user],
        )
        .await
        .map_err(backend)?;
    let mut message = message_from_row(&row, 0);
    if message.is_group() {
        message.recipient_seq = row
            .get::<_, Option<i64>>(MESSAGE_COLUMN_COUNT)
            .map_or(0, |seq| seq as u64);
    }
    attach_reactions(client, &viewer.user, [&mut message]).await?;
    Ok(message)
}

/// The message `actor` edited with `client_msg_id` before, if it did.
async fn edited_before(
    tx: &Transaction<'_>,
    actor: &UserKey,
    client_msg_id: &str,
) -> Result<Option<u64>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT message_id FROM events
             WHERE tenant = $1 AND actor = $2 AND client_msg_id = $3",
            &[&actor.tenant, &actor.user, &client_msg_id],
        )
        .await
        .map_err(backend)?;
    Ok(row
        .and_then(|row| row.get::<_, Option<i64>>(0))
        .map(|id| id as u64))
}

/// The role of a member of `group`.
async fn role_of(
    tx: &Transaction<'_>,
    user: &UserKey,
    group: &str,
) -> Result<Option<Role>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT role FROM conversation_states
             WHERE tenant = $1 AND owner = $2 AND conversation = $3 AND active",
            &[&user.tenant, &user.user, &group],
        )
        .await
        .map_err(backend)?;
    row.and_then(|row| row.get::<_, Option<String>>(0))
        .as_deref()
        .map(role_from_sql)
        .transpose()
}

/// What a reaction of `user` with `emoji` to `message_id` would change.
async fn reaction_tally(
    tx: &Transaction<'_>,
    user: &str,
    message_id: u64,
    emoji: &str,
) -> Result<ReactionTally, StoreError> {
    let row = tx
        .query_one(
            "SELECT count(DISTINCT emoji), count(*) FILTER (WHERE reactor = $2),
                    COALESCE(bool_or(emoji = $3), false),
                    COALESCE(bool_or(reactor = $2 AND emoji = $3), false)
             FROM reactions WHERE message_id = $1",
            &[&sql_int(message_id), &user, &emoji],
        )
        .await
        .map_err(backend)?;
    Ok(ReactionTally {
        distinct: row.get::<_, i64>(0) as u32,
        mine: row.get::<_, i64>(1) as u32,
        emoji_present: row.get(2),
        made: row.get(3),
    })
}

/// The members of `group` who can see its message `id`, by user id: those who joined before
/// it.
async fn members_who_see(
    tx: &Transaction<'_>,
    tenant: &str,
    group: &str,
    id: u64,
) -> Result<Vec<String>, StoreError> {
    let rows = tx
        .query(
            "SELECT owner FROM conversation_states
                 WHERE tenant = $1 AND conversation = $2 AND active AND role IS NOT NULL
                   AND boundary < $3
                 ORDER BY owner",
            &[&tenant, &group, &sql_int(id)],
        )
        .await
        .map_err(backend)?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Writes `effect` to message `id` at `ts`.
async fn apply(
    tx: &Transaction<'_>,
    actor: &UserKey,
    effect: &MessageEffect,
    id: u64,
    ts: i64,
) -> Result<(), StoreError> {
    let id = sql_int(id);
    let execute = async |sql: &str, params: &[&(dyn ToSql + Sync)]| {
        tx.execute(sql, params).await.map_err(backend)
    };
    match effect {
        MessageEffect::Edit { text } => {
            execute(
                "UPDATE messages SET text = $2, edited_ts = $3 WHERE id = $1",
                &[&id, text, &ts],
            )
            .await?;
        }
        MessageEffect::Delete => {
            execute(
                "UPDATE messages SET text = '', deleted_by = $2, deleted_ts = $3,
                     reaction_count = 0
                 WHERE id = $1",
                &[&id, &actor.user, &ts],
            )
            .await?;
            execute("DELETE FROM reactions WHERE message_id = $1", &[&id]).await?;
        }
        MessageEffect::React { emoji } => {
            execute(
                "INSERT INTO reactions (message_id, emoji, reactor, ts) VALUES ($1, $2, $3, $4)",
                &[&id, emoji, &actor.user, &ts],
            )
            .await?;
            execute(
                "UPDATE messages SET reaction_count = reaction_count + 1 WHERE id = $1",
                &[&id],
            )
            .await?;
        }
        MessageEffect::Unreact { emoji } => {
            execute(
                "DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND reactor = $3",
                &[&id, emoji, &actor.user],
            )
            .await?;
            execute(
                "UPDATE messages SET reaction_count = reaction_count - 1 WHERE id = $1",
                &[&id],
            )
            .await?;
        }
    }
    Ok(())
}

/// After `deleted` is deleted: it no longer counts as unread for anyone in `audience` who had
/// it unread, and whoever had it as preview sees the newest message before it that is not
/// deleted (none when there is none). Their counters are locked.
async fn forget_deleted(
    tx: &Transaction<'_>,
    tenant: &str,
    conversation: &str,
    deleted: &MessageRow,
    audience: &[String],
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE conversation_states s SET
             unread_count = CASE
                 WHEN s.owner <> $4 AND s.read_marker < $5 AND s.unread_count > 0
                 THEN s.unread_count - 1 ELSE s.unread_count END,
             last_message_id = CASE
                 WHEN s.last_message_id = $5
                 THEN (SELECT max(m.id) FROM messages m
                       WHERE m.tenant = $1 AND m.conversation = $3
                         AND m.id > s.boundary AND m.id < $5 AND m.deleted_ts IS NULL)
                 ELSE s.last_message_id END
         WHERE s.tenant = $1 AND s.conversation = $3 AND s.owner = ANY($2)",
        &[
            &tenant,
            &audience,
            &conversation,
            &deleted.sender,
            &sql_int(deleted.id),
        ],
    )
    .await
    .map_err(backend)?;
    Ok(())
}
