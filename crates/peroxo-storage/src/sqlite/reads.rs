//! Moving a read marker inside the writer's transaction: the new marker, the unread count
//! counted again, the `ReadMarker` event in the user's stream and, for a direct conversation
//! read further, the `ReadReceipt` in the peer's, and one `read.marker` outbox event for both. The writer is the only writer, so no send can
//! slip between the count and the commit.

use rusqlite::{Connection, OptionalExtension, params};

use super::writer::WriteTx;
use super::{backend, state};
use crate::StoreError;
use crate::rules::{self, Target};
use crate::sql::sql_int;
use peroxo_protocol::conversation::{ReadMark, ReadMarkKind, ReadOutcome};
use peroxo_protocol::event::EventKind;

pub(super) fn mark_read(
    w: &mut WriteTx<'_>,
    request: &ReadMark,
) -> Result<ReadOutcome, StoreError> {
    let user = &request.user;
    let target =
        rules::target_of(&user.user, &request.conversation_id).map_err(StoreError::Refused)?;
    let conversation = target.id();
    let current = state::read_state(w.conn, user, &target)?;
    let newest = |from_others: Option<&str>| {
        newest_visible(
            w.conn,
            &user.tenant,
            conversation,
            current.boundary,
            from_others,
        )
    };
    let (marker, forward) = match request.kind {
        ReadMarkKind::Read { message_id } => {
            let newest = newest(None)?.unwrap_or(0);
            (rules::read_target(message_id, newest), true)
        }
        ReadMarkKind::Unread { message_id } => {
            let first_unread = match message_id {
                Some(id) => {
                    state::visible_sender(w.conn, &user.tenant, conversation, current.boundary, id)?
                        .map(|_| id)
                }
                None => newest(Some(&user.user))?,
            };
            let marker = rules::unread_target(first_unread, message_id, conversation)
                .map_err(StoreError::Refused)?;
            (marker, false)
        }
    };
    if !rules::marker_moves(current.read_marker, marker, forward) {
        return Ok(ReadOutcome {
            message_id: current.read_marker,
            unread_count: current.unread_count,
            marker: None,
            receipt: None,
        });
    }
    let unread_count = count_unread(
        w.conn,
        &user.tenant,
        &user.user,
        conversation,
        marker.max(current.boundary),
    )?;
    w.conn
        .prepare_cached(
            "UPDATE conversation_states SET read_marker = ?4, unread_count = ?5
             WHERE tenant = ?1 AND user = ?2 AND conversation = ?3",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                user.tenant,
                user.user,
                conversation,
                sql_int(marker),
                sql_int(unread_count)
            ])
        })
        .map_err(backend)?;
    let own = EventKind::ReadMarker {
        message_id: marker,
        unread_count,
    };
    let audience = [user.user.clone()];
    let marker_event = w.fan_out(&user.tenant, conversation, &user.user, own, &audience)?;
    let receipt = match &target {
        Target::Direct { peer, .. } if forward && *peer != user.user => {
            let receipt = EventKind::ReadReceipt { message_id: marker };
            let audience = [peer.clone()];
            Some(w.fan_out(&user.tenant, conversation, &user.user, receipt, &audience)?)
        }
        _ => None,
    };
    w.record(&user.tenant, |payloads| {
        let receipt_to = receipt.as_ref().and_then(|r| r.seqs.first());
        payloads.read_marker(&marker_event.event, receipt_to.map(|to| to.user.as_str()))
    })?;
    Ok(ReadOutcome {
        message_id: marker,
        unread_count,
        marker: Some(marker_event),
        receipt,
    })
}

/// The id of the newest message of `conversation` past `boundary` (only from others than
/// `from_others_than`, and not deleted, when given).
fn newest_visible(
    conn: &Connection,
    tenant: &str,
    conversation: &str,
    boundary: u64,
    from_others_than: Option<&str>,
) -> Result<Option<u64>, StoreError> {
    conn.prepare_cached(
        "SELECT MAX(id) FROM messages
         WHERE tenant = ?1 AND conversation = ?2 AND id > ?3
           AND (?4 IS NULL OR (sender <> ?4 AND deleted_ts IS NULL))",
    )
    .and_then(|mut stmt| {
        stmt.query_row(
            params![tenant, conversation, sql_int(boundary), from_others_than],
            |row| row.get::<_, Option<i64>>(0),
        )
        .optional()
    })
    .map(|id| id.flatten().map(|id| id as u64))
    .map_err(backend)
}

/// The messages of `conversation` from others than `user` after `after`, deleted ones aside:
/// the unread count of a marker at `after`.
fn count_unread(
    conn: &Connection,
    tenant: &str,
    user: &str,
    conversation: &str,
    after: u64,
) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "SELECT COUNT(*) FROM messages
         WHERE tenant = ?1 AND conversation = ?2 AND id > ?3 AND sender <> ?4
           AND deleted_ts IS NULL",
    )
    .and_then(|mut stmt| {
        stmt.query_row(params![tenant, conversation, sql_int(after), user], |row| {
            row.get::<_, i64>(0)
        })
    })
    .map(|count| count as u64)
    .map_err(backend)
}
