//! Retention's writes and reads: which tenants have messages, and deleting a batch of a
//! tenant's oldest messages with everything that points at them.
//!
//! A batch is a job of the writer thread, in a transaction of its own (never grouped with
//! appends), so it is as short as its batch and the writes queued behind it wait for that
//! alone. Foreign keys are off for it: the check on each deleted message would read all of
//! `inbox`, which has no index by message for direct messages; the batch deletes the stream
//! entries itself, before their message.

use rusqlite::{Connection, TransactionBehavior, params};

use super::backend;
use super::schema::GROUP_MESSAGE;
use crate::StoreError;
use crate::retention::PruneBatch;
use crate::sql::MESSAGE_TENANTS;
use peroxo_protocol::event::is_group_id;

/// The tenants that have messages, in order.
pub(super) fn tenants(conn: &mut Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(MESSAGE_TENANTS).map_err(backend)?;
    stmt.query_map([], |row| row.get(0))
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)
}

/// A message retention deletes, as far as its stream entries need.
struct Doomed {
    id: i64,
    sender: String,
    recipient: String,
    conversation: String,
    sender_seq: i64,
    recipient_seq: i64,
    /// Deleted for everyone before: it no longer counts as unread anywhere.
    deleted: bool,
}

/// Deletes up to `batch.limit` of the tenant's messages older than `batch.before_ts`,
/// oldest first, in one transaction, and says how many it deleted.
pub(super) fn prune(conn: &mut Connection, batch: &PruneBatch) -> Result<u64, StoreError> {
    conn.execute_batch("PRAGMA foreign_keys = OFF")
        .map_err(backend)?;
    let result = prune_in_transaction(conn, batch);
    conn.execute_batch("PRAGMA foreign_keys = ON")
        .map_err(backend)?;
    result
}

fn prune_in_transaction(conn: &mut Connection, batch: &PruneBatch) -> Result<u64, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let doomed = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT id, sender, recipient, conversation, sender_seq, recipient_seq,
                     deleted_ts IS NOT NULL
                 FROM messages INDEXED BY messages_by_age
                 WHERE tenant = ?1 AND ts < ?2 ORDER BY ts LIMIT ?3",
            )
            .map_err(backend)?;
        stmt.query_map(
            params![batch.tenant, batch.before_ts, i64::from(batch.limit)],
            |row| {
                Ok(Doomed {
                    id: row.get(0)?,
                    sender: row.get(1)?,
                    recipient: row.get(2)?,
                    conversation: row.get(3)?,
                    sender_seq: row.get(4)?,
                    recipient_seq: row.get(5)?,
                    deleted: row.get(6)?,
                })
            },
        )
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?
    };
    for message in &doomed {
        for (owner, seq) in entries_of(&tx, message)? {
            forget_entry(&tx, &batch.tenant, message, &owner, seq)?;
        }
        tx.prepare_cached("DELETE FROM reactions WHERE message_id = ?1")
            .and_then(|mut stmt| stmt.execute(params![message.id]))
            .map_err(backend)?;
        tx.prepare_cached("DELETE FROM messages WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute(params![message.id]))
            .map_err(backend)?;
    }
    tx.commit().map_err(backend)?;
    Ok(doomed.len() as u64)
}

/// The (owner, seq) of every stream entry of `message`.
fn entries_of(conn: &Connection, message: &Doomed) -> Result<Vec<(String, i64)>, StoreError> {
    if !is_group_id(&message.recipient) {
        let mut entries = vec![(message.sender.clone(), message.sender_seq)];
        if message.recipient != message.sender {
            entries.push((message.recipient.clone(), message.recipient_seq));
        }
        return Ok(entries);
    }
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT owner, seq FROM inbox INDEXED BY inbox_by_group_message
             WHERE message_id = ?1 AND kind = {GROUP_MESSAGE}"
        ))
        .map_err(backend)?;
    stmt.query_map(params![message.id], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)
}

/// Deletes `owner`'s entry of `message` at `seq`: the stream's floor rises to it, and the
/// message no longer counts as unread.
fn forget_entry(
    conn: &Connection,
    tenant: &str,
    message: &Doomed,
    owner: &str,
    seq: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM inbox WHERE tenant = ?1 AND owner = ?2 AND seq = ?3")
        .and_then(|mut stmt| stmt.execute(params![tenant, owner, seq]))
        .map_err(backend)?;
    conn.prepare_cached(
        "INSERT INTO stream_floors (tenant, owner, pruned_until) VALUES (?1, ?2, ?3)
         ON CONFLICT (tenant, owner)
         DO UPDATE SET pruned_until = MAX(pruned_until, excluded.pruned_until)",
    )
    .and_then(|mut stmt| stmt.execute(params![tenant, owner, seq]))
    .map_err(backend)?;
    if owner != message.sender && !message.deleted {
        conn.prepare_cached(
            "UPDATE conversation_states SET unread_count = unread_count - 1
             WHERE tenant = ?1 AND user = ?2 AND conversation = ?3
               AND read_marker < ?4 AND unread_count > 0",
        )
        .and_then(|mut stmt| stmt.execute(params![tenant, owner, message.conversation, message.id]))
        .map_err(backend)?;
    }
    Ok(())
}
