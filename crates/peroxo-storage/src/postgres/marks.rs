//! Moving a read marker. The mark locks the user's counter (and, in a direct conversation
//! with another user, the peer's, whose stream takes the receipt), after the group row when
//! it is a group (`FOR SHARE`). Every send that changes the user's unread count holds the
//! same counter lock, so the recount here and the increments there never interleave: the
//! unread count always equals the count of visible messages from others after the marker.

use std::collections::BTreeSet;

use deadpool_postgres::{Pool, Transaction};

use super::backend;
use super::outbox::OutboxRows;
use super::reads::{Standing, known_standing};
use super::streams::{Counters, InboxRows, fan_out, insert_event};
use crate::rules::{self, Target};
use crate::sql::sql_int;
use crate::{OutboxSettings, StoreError};
use peroxo_protocol::conversation::{ReadMark, ReadMarkKind, ReadOutcome};
use peroxo_protocol::domain::{UserKey, now_ms};
use peroxo_protocol::event::EventKind;

pub(super) async fn mark_read(
    pool: &Pool,
    outbox: OutboxSettings,
    request: ReadMark,
) -> Result<ReadOutcome, StoreError> {
    let user = &request.user;
    let target =
        rules::target_of(&user.user, &request.conversation_id).map_err(StoreError::Refused)?;
    let mut client = pool.get().await.map_err(backend)?;
    let tx = client.transaction().await.map_err(backend)?;
    let mut streams = BTreeSet::from([user.clone()]);
    match &target {
        Target::Group(group) => lock_group(&tx, &user.tenant, group).await?,
        Target::Direct { peer, .. } => {
            streams.insert(user.peer(peer.clone()));
        }
    }
    let mut counters = Counters::lock(&tx, streams).await?;
    let standing = known_standing(&tx, user, &target).await?;
    let visible = Visible {
        tx: &tx,
        user,
        conversation: target.id(),
        boundary: standing.boundary,
    };
    let (marker, forward_only) = match request.kind {
        ReadMarkKind::Read { message_id } => {
            let newest = visible.newest(false).await?.unwrap_or(0);
            (rules::read_target(message_id, newest), true)
        }
        ReadMarkKind::Unread { message_id } => {
            let first_unread = match message_id {
                Some(id) => visible.find(id).await?,
                None => visible.newest(true).await?,
            };
            let marker = rules::unread_target(first_unread, message_id, target.id())
                .map_err(StoreError::Refused)?;
            (marker, false)
        }
    };
    if !rules::marker_moves(standing.read_marker, marker, forward_only) {
        return Ok(unchanged(standing));
    }
    let unread_count = visible.unread_after(marker).await?;
    tx.execute(
        "UPDATE conversation_states SET read_marker = $4, unread_count = $5
         WHERE tenant = $1 AND owner = $2 AND conversation = $3",
        &[
            &user.tenant,
            &user.user,
            &target.id(),
            &sql_int(marker),
            &sql_int(unread_count),
        ],
    )
    .await
    .map_err(backend)?;

    let ts = now_ms();
    let mut inbox = InboxRows::default();
    let kind = EventKind::ReadMarker {
        message_id: marker,
        unread_count,
    };
    let event = insert_event(&tx, &user.tenant, target.id(), &user.user, ts, kind).await?;
    let own = fan_out(
        event,
        std::slice::from_ref(&user.user),
        &mut counters,
        &mut inbox,
    );
    let receipt = match &target {
        Target::Direct { peer, .. } if forward_only && *peer != user.user => {
            let kind = EventKind::ReadReceipt { message_id: marker };
            let event = insert_event(&tx, &user.tenant, target.id(), &user.user, ts, kind).await?;
            Some(fan_out(
                event,
                std::slice::from_ref(peer),
                &mut counters,
                &mut inbox,
            ))
        }
        _ => None,
    };
    inbox.insert(&tx).await?;
    counters.store(&tx).await?;
    let mut events = OutboxRows::new(outbox);
    events.record(&user.tenant, |payloads| {
        let receipt_to = receipt.as_ref().and_then(|r| r.seqs.first());
        payloads.read_marker(&own.event, receipt_to.map(|to| to.user.as_str()))
    });
    events.write(&tx, ts).await?;
    tx.commit().await.map_err(backend)?;
    Ok(ReadOutcome {
        message_id: marker,
        unread_count,
        marker: Some(own),
        receipt,
    })
}

/// A mark that moves nothing: where the marker already is.
fn unchanged(standing: Standing) -> ReadOutcome {
    ReadOutcome {
        message_id: standing.read_marker,
        unread_count: standing.unread_count,
        marker: None,
        receipt: None,
    }
}

/// Locks a group's row against changes until the transaction commits; refused when it is
/// unknown.
pub(super) async fn lock_group(
    tx: &Transaction<'_>,
    tenant: &str,
    group: &str,
) -> Result<(), StoreError> {
    tx.query_opt(
        "SELECT 1 FROM groups WHERE tenant = $1 AND id = $2 FOR SHARE",
        &[&tenant, &group],
    )
    .await
    .map_err(backend)?
    .ok_or_else(|| StoreError::Refused(rules::unknown_conversation(group)))?;
    Ok(())
}

/// The messages of a conversation that a user can see.
struct Visible<'a, 't> {
    tx: &'a Transaction<'t>,
    user: &'a UserKey,
    conversation: &'a str,
    boundary: u64,
}

impl Visible<'_, '_> {
    /// The newest visible message (from others only and not deleted, with `from_others`).
    async fn newest(&self, from_others: bool) -> Result<Option<u64>, StoreError> {
        let row = self
            .tx
            .query_one(
                "SELECT max(id) FROM messages
                 WHERE tenant = $1 AND conversation = $2 AND id > $3
                   AND (NOT $5 OR (sender <> $4 AND deleted_ts IS NULL))",
                &[
                    &self.user.tenant,
                    &self.conversation,
                    &sql_int(self.boundary),
                    &self.user.user,
                    &from_others,
                ],
            )
            .await
            .map_err(backend)?;
        Ok(row.get::<_, Option<i64>>(0).map(|id| id as u64))
    }

    /// `message_id`, when it is a visible message of the conversation.
    async fn find(&self, message_id: u64) -> Result<Option<u64>, StoreError> {
        let row = self
            .tx
            .query_opt(
                "SELECT id FROM messages
                 WHERE tenant = $1 AND conversation = $2 AND id = $3 AND id > $4",
                &[
                    &self.user.tenant,
                    &self.conversation,
                    &sql_int(message_id),
                    &sql_int(self.boundary),
                ],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|row| row.get::<_, i64>(0) as u64))
    }

    /// How many visible messages from others come after `marker`, deleted ones aside.
    async fn unread_after(&self, marker: u64) -> Result<u64, StoreError> {
        let row = self
            .tx
            .query_one(
                "SELECT count(*) FROM messages
                 WHERE tenant = $1 AND conversation = $2 AND id > $3 AND sender <> $4
                   AND deleted_ts IS NULL",
                &[
                    &self.user.tenant,
                    &self.conversation,
                    &sql_int(marker.max(self.boundary)),
                    &self.user.user,
                ],
            )
            .await
            .map_err(backend)?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}
