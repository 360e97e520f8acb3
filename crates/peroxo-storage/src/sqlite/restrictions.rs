//! The restrictions the server API imposes on users (`restrictions`): a change is a job of
//! the writer, in a transaction of its own; the reads run on the read connections.

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::backend;
use crate::StoreError;
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::restriction::{Restriction, RestrictionChange};

/// The columns every read of a restriction takes, in [`restriction`]'s order.
const COLUMNS: &str = "banned_until, ban_reason, tokens_before";

fn restriction(row: &Row<'_>, first: usize) -> rusqlite::Result<Restriction> {
    Ok(Restriction {
        banned_until: row.get(first)?,
        ban_reason: row.get(first + 1)?,
        tokens_before: row.get(first + 2)?,
    })
}

/// `user`'s restriction, or the default.
pub(super) fn get(conn: &Connection, user: &UserKey) -> Result<Restriction, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM restrictions WHERE tenant = ?1 AND user = ?2"
    ))
    .and_then(|mut stmt| {
        stmt.query_row(params![user.tenant, user.user], |row| restriction(row, 0))
            .optional()
    })
    .map(Option::unwrap_or_default)
    .map_err(backend)
}

/// Applies `change` to `user`'s restriction, in one transaction, and returns the result.
pub(super) fn set(
    conn: &mut Connection,
    user: &UserKey,
    change: &RestrictionChange,
) -> Result<Restriction, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let changed = get(&tx, user)?.changed(change);
    tx.execute(
        "INSERT INTO restrictions (tenant, user, banned_until, ban_reason, tokens_before)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (tenant, user) DO UPDATE SET banned_until = excluded.banned_until,
             ban_reason = excluded.ban_reason, tokens_before = excluded.tokens_before",
        params![
            user.tenant,
            user.user,
            changed.banned_until,
            changed.ban_reason,
            changed.tokens_before
        ],
    )
    .map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(changed)
}

/// Every restriction active at `now_ms`, by (tenant, user).
pub(super) fn active(
    conn: &Connection,
    now_ms: i64,
) -> Result<Vec<(UserKey, Restriction)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT tenant, user, {COLUMNS} FROM restrictions
             WHERE banned_until > ?1 OR tokens_before > 0
             ORDER BY tenant, user"
        ))
        .map_err(backend)?;
    stmt.query_map(params![now_ms], |row| {
        Ok((
            UserKey::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?),
            restriction(row, 2)?,
        ))
    })
    .and_then(Iterator::collect)
    .map_err(backend)
}
