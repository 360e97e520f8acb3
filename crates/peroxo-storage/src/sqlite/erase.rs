//! Erasing a user's data (`peroxo user erase`), a batch at a time, each a writer job in a
//! transaction of its own: the texts of the messages the user sent, then the user's read
//! state. Each batch picks what is not erased yet, so a run that stopped half-way is carried
//! on by the next, and a run over erased data changes nothing.

use rusqlite::{Connection, TransactionBehavior, params};

use super::backend;
use crate::StoreError;
use peroxo_protocol::domain::UserKey;

/// Empties the text of up to `limit` of the messages `user` sent that still have one.
pub(super) fn texts(conn: &mut Connection, user: &UserKey, limit: u32) -> Result<u64, StoreError> {
    in_transaction(conn, |tx| {
        tx.prepare_cached(
            "UPDATE messages SET text = ''
             WHERE id IN (SELECT id FROM messages
                          WHERE tenant = ?1 AND sender = ?2 AND text <> ''
                          ORDER BY id LIMIT ?3)",
        )
        .and_then(|mut stmt| stmt.execute(params![user.tenant, user.user, i64::from(limit)]))
    })
}

/// Forgets the read marker of up to `limit` of `user`'s conversations that have one, and
/// counts their unread messages again: every message from others the user may see.
pub(super) fn read_state(
    conn: &mut Connection,
    user: &UserKey,
    limit: u32,
) -> Result<u64, StoreError> {
    in_transaction(conn, |tx| {
        tx.prepare_cached(
            "UPDATE conversation_states SET read_marker = 0, unread_count = (
                 SELECT COUNT(*) FROM messages m
                 WHERE m.tenant = conversation_states.tenant
                   AND m.conversation = conversation_states.conversation
                   AND m.sender <> conversation_states.user
                   AND m.id > conversation_states.boundary
                   AND m.deleted_ts IS NULL)
             WHERE tenant = ?1 AND user = ?2 AND conversation IN (
                 SELECT conversation FROM conversation_states
                 WHERE tenant = ?1 AND user = ?2 AND read_marker > 0 LIMIT ?3)",
        )
        .and_then(|mut stmt| stmt.execute(params![user.tenant, user.user, i64::from(limit)]))
    })
}

fn in_transaction(
    conn: &mut Connection,
    change: impl FnOnce(&Connection) -> rusqlite::Result<usize>,
) -> Result<u64, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let changed = change(&tx).map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(changed as u64)
}
