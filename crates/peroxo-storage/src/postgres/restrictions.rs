//! The restrictions the server API imposes on users (`restrictions`). A change locks the
//! user's row (created first when missing), so that concurrent changes of one user, from
//! any instance, apply one after the other.

use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::backend;
use crate::StoreError;
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::restriction::{Restriction, RestrictionChange};

/// The columns every read of a restriction takes, in [`restriction`]'s order.
const COLUMNS: &str = "banned_until, ban_reason, tokens_before";

fn restriction(row: &Row, first: usize) -> Restriction {
    Restriction {
        banned_until: row.get(first),
        ban_reason: row.get(first + 1),
        tokens_before: row.get(first + 2),
    }
}

/// `user`'s restriction, or the default.
pub(super) async fn get(pool: &Pool, user: UserKey) -> Result<Restriction, StoreError> {
    let client = pool.get().await.map_err(backend)?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM restrictions WHERE tenant = $1 AND owner = $2"),
            &[&user.tenant, &user.user],
        )
        .await
        .map_err(backend)?;
    Ok(row.map(|row| restriction(&row, 0)).unwrap_or_default())
}

/// Applies `change` to `user`'s restriction, in one transaction, and returns the result.
pub(super) async fn set(
    pool: &Pool,
    user: UserKey,
    change: RestrictionChange,
) -> Result<Restriction, StoreError> {
    let mut client = pool.get().await.map_err(backend)?;
    let tx = client.transaction().await.map_err(backend)?;
    tx.execute(
        "INSERT INTO restrictions (tenant, owner) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&user.tenant, &user.user],
    )
    .await
    .map_err(backend)?;
    let row = tx
        .query_one(
            &format!(
                "SELECT {COLUMNS} FROM restrictions WHERE tenant = $1 AND owner = $2 FOR UPDATE"
            ),
            &[&user.tenant, &user.user],
        )
        .await
        .map_err(backend)?;
    let changed = restriction(&row, 0).changed(&change);
    tx.execute(
        "UPDATE restrictions SET banned_until = $3, ban_reason = $4, tokens_before = $5
         WHERE tenant = $1 AND owner = $2",
        &[
            &user.tenant,
            &user.user,
            &changed.banned_until,
            &changed.ban_reason,
            &changed.tokens_before,
        ],
    )
    .await
    .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(changed)
}

/// Every restriction active at `now_ms`, by (tenant, user).
pub(super) async fn active(
    pool: &Pool,
    now_ms: i64,
) -> Result<Vec<(UserKey, Restriction)>, StoreError> {
    let client = pool.get().await.map_err(backend)?;
    let rows = client
        .query(
            &format!(
                "SELECT tenant, owner, {COLUMNS} FROM restrictions
                 WHERE banned_until > $1 OR tokens_before > 0
                 ORDER BY tenant, owner"
            ),
            &[&now_ms],
        )
        .await
        .map_err(backend)?;
    Ok(rows
        .iter()
        .map(|row| {
            let user = UserKey::new(row.get::<_, String>(0), row.get::<_, String>(1));
            (user, restriction(row, 2))
        })
        .collect())
}
