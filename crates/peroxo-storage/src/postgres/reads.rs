//! What the PostgreSQL backend answers without writing: history, sync, the conversation
//! list, members and read receipts, and the membership checks the writers share. A read of
//! several statements runs in one read-only snapshot.

use deadpool_postgres::{GenericClient, Object, Pool, Transaction};
use tokio_postgres::IsolationLevel;

use super::streams::{EVENT_COLUMNS, event_from_row, role_from_sql};
use super::{attach_reactions, backend, message_from_row};
use crate::rules::{self, MemberRow, Target};
use crate::sql::{
    LIFECYCLE_EVENT_KINDS, MESSAGE_COLUMN_COUNT, MESSAGE_COLUMNS, StreamEntry, history_page,
    rows_for_page, sql_int, stream_page, sync_page, with_floor,
};
use crate::{HistoryQuery, StoreError, SyncQuery, SyncScope};
use peroxo_protocol::conversation::{
    ConversationKind, ConversationPage, ConversationSummary, ConversationsQuery, Receipt,
};
use peroxo_protocol::domain::{HistoryPage, StoredMessage, SyncPage, UserKey};
use peroxo_protocol::event::{GROUP_ID_PREFIX, Member, StreamEvent};

/// A user's state of a conversation the user is in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Standing {
    /// Only messages with a larger id are visible to the user (0 for direct conversations).
    pub(super) boundary: u64,
    pub(super) read_marker: u64,
    pub(super) unread_count: u64,
}

/// `user`'s standing in `target`: refused when the group is unknown or the user is not a
/// current member of it; `None` for a direct conversation without messages yet.
pub(super) async fn standing(
    client: &impl GenericClient,
    user: &UserKey,
    target: &Target,
) -> Result<Option<Standing>, StoreError> {
    let standing = |row: &tokio_postgres::Row| Standing {
        boundary: row.get::<_, i64>(1) as u64,
        read_marker: row.get::<_, i64>(2) as u64,
        unread_count: row.get::<_, i64>(3) as u64,
    };
    match target {
        Target::Direct { id, .. } => {
            let row = client
                .query_opt(
                    "SELECT true, boundary, read_marker, unread_count FROM conversation_states
                     WHERE tenant = $1 AND owner = $2 AND conversation = $3",
                    &[&user.tenant, &user.user, id],
                )
                .await
                .map_err(backend)?;
            Ok(row.as_ref().map(standing))
        }
        Target::Group(id) => {
            let row = client
                .query_opt(
                    "SELECT s.active, s.boundary, s.read_marker, s.unread_count
                     FROM groups g
                     LEFT JOIN conversation_states s
                       ON s.tenant = g.tenant AND s.conversation = g.id AND s.owner = $3
                     WHERE g.tenant = $1 AND g.id = $2",
                    &[&user.tenant, id, &user.user],
                )
                .await
                .map_err(backend)?
                .ok_or_else(|| StoreError::Refused(rules::unknown_conversation(id)))?;
            if row.get::<_, Option<bool>>(0) != Some(true) {
                return Err(StoreError::Refused(rules::not_a_member(&user.user, id)));
            }
            Ok(Some(standing(&row)))
        }
    }
}

/// [`standing`] where a direct conversation without messages is unknown too.
pub(super) async fn known_standing(
    client: &impl GenericClient,
    user: &UserKey,
    target: &Target,
) -> Result<Standing, StoreError> {
    standing(client, user, target)
        .await?
        .ok_or_else(|| StoreError::Refused(rules::unknown_conversation(target.id())))
}

/// A read-only transaction: one snapshot for every statement of a read.
async fn snapshot(client: &mut Object) -> Result<Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(backend)
}

pub(super) async fn history(pool: &Pool, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
    let target =
        rules::target_of(&query.user.user, &query.conversation_id).map_err(StoreError::Refused)?;
    let mut client = pool.get().await.map_err(backend)?;
    let before = query.before.map_or(i64::MAX, sql_int);
    let rows = rows_for_page(query.limit);
    // The membership, the page and its reactions from one snapshot.
    let tx = snapshot(&mut client).await?;
    let newest_first = match &target {
        // Anyone named by a direct conversation id may read it.
        Target::Direct { id, .. } => tx
            .query(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m
                     WHERE m.tenant = $1 AND m.conversation = $2 AND m.id < $3
                     ORDER BY m.id DESC LIMIT $4"
                ),
                &[&query.user.tenant, id, &before, &rows],
            )
            .await
            .map_err(backend)?
            .iter()
            .map(|row| message_from_row(row, 0))
            .collect(),
        Target::Group(id) => {
            let standing = known_standing(&tx, &query.user, &target).await?;
            // Each member's copy of a group message carries that member's seq.
            tx.query(
                &format!(
                    "SELECT {MESSAGE_COLUMNS}, i.seq FROM messages m
                     JOIN inbox i
                       ON i.tenant = m.tenant AND i.owner = $3 AND i.message_id = m.id
                     WHERE m.tenant = $1 AND m.conversation = $2 AND m.id > $4 AND m.id < $5
                     ORDER BY m.id DESC LIMIT $6"
                ),
                &[
                    &query.user.tenant,
                    id,
                    &query.user.user,
                    &sql_int(standing.boundary),
                    &before,
                    &rows,
                ],
            )
            .await
            .map_err(backend)?
            .iter()
            .map(|row| seen_by(message_from_row(row, 0), row.get(MESSAGE_COLUMN_COUNT)))
            .collect()
        }
    };
    let last_seq = last_seq_in(&tx, &query.user).await?;
    let mut page = history_page(newest_first, query.limit, last_seq);
    attach_reactions(&tx, &query.user.user, &mut page.messages).await?;
    tx.commit().await.map_err(backend)?;
    Ok(page)
}

/// A group message as read from the stream of the member whose seq of it is `seq`.
fn seen_by(mut message: StoredMessage, seq: i64) -> StoredMessage {
    if message.is_group() {
        message.recipient_seq = seq as u64;
    }
    message
}

pub(super) async fn sync(pool: &Pool, query: SyncQuery) -> Result<SyncPage, StoreError> {
    let mut client = pool.get().await.map_err(backend)?;
    // One snapshot for the page and `last_seq`.
    let tx = snapshot(&mut client).await?;
    let (last_seq, floor) = counter_in(&tx, &query.user).await?;
    let mut page = match query.scope {
        SyncScope::Everything => everything_after(&tx, &query, last_seq, &[]).await?,
        SyncScope::Conversations => {
            everything_after(&tx, &query, last_seq, &LIFECYCLE_EVENT_KINDS).await?
        }
        SyncScope::DirectMessages => {
            let rows = tx
                .query(
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM inbox i JOIN messages m ON m.id = i.message_id
                         WHERE i.tenant = $1 AND i.owner = $2 AND i.seq > $3
                           AND NOT starts_with(m.recipient, $5)
                         ORDER BY i.seq LIMIT $4"
                    ),
                    &[
                        &query.user.tenant,
                        &query.user.user,
                        &sql_int(query.after_seq),
                        &rows_for_page(query.limit),
                        &GROUP_ID_PREFIX,
                    ],
                )
                .await
                .map_err(backend)?;
            let rows = rows.iter().map(|row| message_from_row(row, 0)).collect();
            sync_page(rows, query.limit, last_seq)
        }
    };
    attach_reactions(&tx, &query.user.user, &mut page.messages).await?;
    tx.commit().await.map_err(backend)?;
    Ok(with_floor(page, query.after_seq, floor))
}

/// Every entry of a stream after a seq but the events of the kinds named in `left_out`:
/// messages (a group message with the owner's seq as `recipient_seq`) and events.
async fn everything_after(
    tx: &Transaction<'_>,
    query: &SyncQuery,
    last_seq: u64,
    left_out: &[&str],
) -> Result<SyncPage, StoreError> {
    let rows = tx
        .query(
            &format!(
                "SELECT {MESSAGE_COLUMNS}, i.seq, {EVENT_COLUMNS} FROM inbox i
                 LEFT JOIN messages m ON m.id = i.message_id
                 LEFT JOIN events e ON e.id = i.event_id
                 WHERE i.tenant = $1 AND i.owner = $2 AND i.seq > $3
                   AND (e.kind IS NULL OR e.kind <> ALL($5))
                 ORDER BY i.seq LIMIT $4"
            ),
            &[
                &query.user.tenant,
                &query.user.user,
                &sql_int(query.after_seq),
                &rows_for_page(query.limit),
                &left_out,
            ],
        )
        .await
        .map_err(backend)?;
    let entries = rows
        .iter()
        .map(|row| {
            let seq: i64 = row.get(MESSAGE_COLUMN_COUNT);
            Ok(if row.get::<_, Option<i64>>(0).is_some() {
                StreamEntry::Message(seen_by(message_from_row(row, 0), seq))
            } else {
                StreamEntry::Event(StreamEvent {
                    seq: seq as u64,
                    event: event_from_row(row, MESSAGE_COLUMN_COUNT + 1)?,
                })
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(stream_page(entries, query.limit, last_seq))
}

/// The user's current seq and its stream's floor (the highest seq retention deleted).
async fn counter_in(client: &impl GenericClient, user: &UserKey) -> Result<(u64, u64), StoreError> {
    let row = client
        .query_opt(
            "SELECT last_seq, pruned_until FROM user_seqs WHERE tenant = $1 AND owner = $2",
            &[&user.tenant, &user.user],
        )
        .await
        .map_err(backend)?;
    Ok(row.map_or((0, 0), |r| {
        (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64)
    }))
}

pub(super) async fn last_seq_in(
    client: &impl GenericClient,
    user: &UserKey,
) -> Result<u64, StoreError> {
    Ok(counter_in(client, user).await?.0)
}

pub(super) async fn members(
    pool: &Pool,
    user: UserKey,
    conversation_id: String,
) -> Result<Vec<Member>, StoreError> {
    let group = rules::group_of(&user.user, &conversation_id).map_err(StoreError::Refused)?;
    let mut client = pool.get().await.map_err(backend)?;
    let tx = snapshot(&mut client).await?;
    known_standing(&tx, &user, &Target::Group(group.clone())).await?;
    let mut members = current_members(&tx, &user.tenant, &group).await?;
    tx.commit().await.map_err(backend)?;
    members.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(members
        .into_iter()
        .map(|m| Member {
            user: m.user,
            role: m.role,
            joined_ts: m.joined_ts,
        })
        .collect())
}

/// The current members of a group, in no order.
pub(super) async fn current_members(
    client: &impl GenericClient,
    tenant: &str,
    group: &str,
) -> Result<Vec<MemberRow>, StoreError> {
    let rows = client
        .query(
            "SELECT owner, role, joined_event, joined_ts FROM conversation_states
             WHERE tenant = $1 AND conversation = $2 AND active AND role IS NOT NULL",
            &[&tenant, &group],
        )
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|row| {
            Ok(MemberRow {
                user: row.get(0),
                role: role_from_sql(row.get(1))?,
                joined: row.get::<_, i64>(2) as u64,
                joined_ts: row.get(3),
            })
        })
        .collect()
}

pub(super) async fn conversations(
    pool: &Pool,
    query: ConversationsQuery,
) -> Result<ConversationPage, StoreError> {
    let user = &query.user;
    let mut client = pool.get().await.map_err(backend)?;
    // The total and the page from one snapshot.
    let tx = snapshot(&mut client).await?;
    let total: i64 = tx
        .query_one(
            "SELECT COALESCE(sum(unread_count), 0)::bigint FROM conversation_states
             WHERE tenant = $1 AND owner = $2 AND active",
            &[&user.tenant, &user.user],
        )
        .await
        .map_err(backend)?
        .get(0);
    let mut rows = tx
        .query(
            &format!(
                "SELECT {MESSAGE_COLUMNS}, i.seq, s.conversation, s.peer, s.role, s.read_marker,
                        s.unread_count, s.activity_seq, g.title, g.member_count, p.read_marker
                 FROM conversation_states s
                 LEFT JOIN messages m ON m.id = s.last_message_id
                 LEFT JOIN inbox i ON s.role IS NOT NULL AND i.tenant = s.tenant
                      AND i.owner = s.owner AND i.message_id = s.last_message_id
                 LEFT JOIN groups g ON s.role IS NOT NULL AND g.tenant = s.tenant
                      AND g.id = s.conversation
                 LEFT JOIN conversation_states p ON s.role IS NULL AND p.tenant = s.tenant
                      AND p.owner = s.peer AND p.conversation = s.conversation
                 WHERE s.tenant = $1 AND s.owner = $2 AND s.active AND s.activity_seq < $3
                 ORDER BY s.activity_seq DESC LIMIT $4"
            ),
            &[
                &user.tenant,
                &user.user,
                &query.before.map_or(i64::MAX, sql_int),
                &rows_for_page(query.limit),
            ],
        )
        .await
        .map_err(backend)?;
    let has_more = rows.len() as u64 > u64::from(query.limit);
    rows.truncate(query.limit as usize);
    let mut conversations: Vec<ConversationSummary> = rows
        .iter()
        .map(summary_from_row)
        .collect::<Result<_, _>>()?;
    let previews = conversations
        .iter_mut()
        .filter_map(|c| c.last_message.as_mut());
    attach_reactions(&tx, &user.user, previews).await?;
    let last_seq = last_seq_in(&tx, user).await?;
    tx.commit().await.map_err(backend)?;
    Ok(ConversationPage {
        conversations,
        has_more,
        total_unread: total as u64,
        last_seq,
    })
}

/// One entry of the list from a row of `conversations`' page query.
fn summary_from_row(row: &tokio_postgres::Row) -> Result<ConversationSummary, StoreError> {
    let at = MESSAGE_COLUMN_COUNT;
    let last_message = row.get::<_, Option<i64>>(0).map(|_| {
        seen_by(
            message_from_row(row, 0),
            row.get::<_, Option<i64>>(at).unwrap_or(0),
        )
    });
    let kind = match row.get::<_, Option<String>>(at + 3) {
        Some(role) => ConversationKind::Group {
            title: row.get::<_, Option<String>>(at + 7).unwrap_or_default(),
            role: role_from_sql(&role)?,
            member_count: row.get::<_, Option<i64>>(at + 8).unwrap_or(0) as u32,
        },
        None => ConversationKind::Direct {
            peer: row.get::<_, Option<String>>(at + 2).unwrap_or_default(),
            peer_read_marker: row.get::<_, Option<i64>>(at + 9).unwrap_or(0) as u64,
        },
    };
    Ok(ConversationSummary {
        conversation_id: row.get(at + 1),
        kind,
        last_message,
        unread_count: row.get::<_, i64>(at + 5) as u64,
        read_marker: row.get::<_, i64>(at + 4) as u64,
        activity_seq: row.get::<_, i64>(at + 6) as u64,
    })
}

pub(super) async fn read_receipts(
    pool: &Pool,
    user: UserKey,
    conversation_id: String,
    message_id: u64,
) -> Result<Vec<Receipt>, StoreError> {
    let target = rules::target_of(&user.user, &conversation_id).map_err(StoreError::Refused)?;
    let mut client = pool.get().await.map_err(backend)?;
    let tx = snapshot(&mut client).await?;
    let standing = known_standing(&tx, &user, &target).await?;
    let found = tx
        .query_opt(
            "SELECT sender FROM messages
             WHERE tenant = $1 AND conversation = $2 AND id = $3 AND id > $4",
            &[
                &user.tenant,
                &target.id(),
                &sql_int(message_id),
                &sql_int(standing.boundary),
            ],
        )
        .await
        .map_err(backend)?;
    let Some(found) = found else {
        let refusal = rules::unknown_message(Some(message_id), target.id());
        return Err(StoreError::Refused(refusal));
    };
    let author: String = found.get(0);
    // The participants of a direct conversation (by key), or the current members of a group
    // (by the index of members).
    let markers = match &target {
        Target::Direct { id, peer } => {
            let participants = vec![user.user.as_str(), peer.as_str()];
            tx.query(
                "SELECT owner, read_marker FROM conversation_states
                 WHERE tenant = $1 AND owner = ANY($2) AND conversation = $3",
                &[&user.tenant, &participants, id],
            )
            .await
        }
        Target::Group(id) => {
            tx.query(
                "SELECT owner, read_marker FROM conversation_states
                 WHERE tenant = $1 AND conversation = $2 AND active AND role IS NOT NULL",
                &[&user.tenant, id],
            )
            .await
        }
    }
    .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    let markers = markers
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1) as u64));
    Ok(rules::receipts(&author, message_id, markers))
}
