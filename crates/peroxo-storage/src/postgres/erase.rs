//! Erasing a user's data (`peroxo user erase`), a batch at a time, each in a transaction of
//! its own: the texts of the messages the user sent, then the user's read state (under the
//! user's counter lock, as every change of a user's conversation states). Each batch picks
//! what is not erased yet, so a stopped run is carried on by the next.

use std::collections::BTreeSet;

use deadpool_postgres::Pool;

use super::backend;
use super::streams::Counters;
use crate::StoreError;
use peroxo_protocol::domain::UserKey;

/// Empties the text of up to `limit` of the messages `user` sent that still have one.
pub(super) async fn texts(pool: &Pool, user: UserKey, limit: u32) -> Result<u64, StoreError> {
    let client = pool.get().await.map_err(backend)?;
    client
        .execute(
            "UPDATE messages SET text = ''
             WHERE id IN (SELECT id FROM messages
                          WHERE tenant = $1 AND sender = $2 AND text <> ''
                          ORDER BY id LIMIT $3)",
            &[&user.tenant, &user.user, &i64::from(limit)],
        )
        .await
        .map_err(backend)
}

/// Forgets the read marker of up to `limit` of `user`'s conversations that have one, and
/// counts their unread messages again: every message from others the user may see, deleted
/// ones aside.
pub(super) async fn read_state(pool: &Pool, user: UserKey, limit: u32) -> Result<u64, StoreError> {
    let mut client = pool.get().await.map_err(backend)?;
    let tx = client.transaction().await.map_err(backend)?;
    Counters::lock(&tx, BTreeSet::from([user.clone()])).await?;
    let changed = tx
        .execute(
            "UPDATE conversation_states s SET read_marker = 0, unread_count = (
                 SELECT count(*) FROM messages m
                 WHERE m.tenant = s.tenant AND m.conversation = s.conversation
                   AND m.sender <> s.owner AND m.id > s.boundary AND m.deleted_ts IS NULL)
             WHERE s.tenant = $1 AND s.owner = $2 AND s.conversation IN (
                 SELECT conversation FROM conversation_states
                 WHERE tenant = $1 AND owner = $2 AND read_marker > 0 LIMIT $3)",
            &[&user.tenant, &user.user, &i64::from(limit)],
        )
        .await
        .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(changed)
}
