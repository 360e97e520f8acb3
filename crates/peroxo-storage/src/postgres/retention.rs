//! Retention's reads and writes: which tenants have messages, and deleting a batch of a
//! tenant's oldest messages with their stream entries and reactions, in one transaction.
//!
//! The batch locks the counters of every user whose stream loses an entry, in the order
//! every writer uses ([`Counters::lock`]), before it changes their floors and unread counts:
//! it never deadlocks with a writer, and an unread count loses no update. Two instances
//! pruning the same batch at once run one after the other; the second finds nothing left.

use std::collections::BTreeSet;

use deadpool_postgres::Pool;

use super::backend;
use super::streams::Counters;
use crate::sql::MESSAGE_TENANTS;
use crate::{PruneBatch, StoreError};
use peroxo_protocol::domain::UserKey;

/// The tenants that have messages, in order.
pub(super) async fn tenants(pool: &Pool) -> Result<Vec<String>, StoreError> {
    let client = pool.get().await.map_err(backend)?;
    let rows = client.query(MESSAGE_TENANTS, &[]).await.map_err(backend)?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Deletes up to `batch.limit` of the tenant's messages older than `batch.before_ts`, oldest
/// first, and says how many it deleted.
pub(super) async fn prune(pool: &Pool, batch: PruneBatch) -> Result<u64, StoreError> {
    let mut client = pool.get().await.map_err(backend)?;
    let tx = client.transaction().await.map_err(backend)?;
    let ids: Vec<i64> = tx
        .query(
            "SELECT id FROM messages WHERE tenant = $1 AND ts < $2 ORDER BY ts LIMIT $3",
            &[&batch.tenant, &batch.before_ts, &i64::from(batch.limit)],
        )
        .await
        .map_err(backend)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if ids.is_empty() {
        tx.commit().await.map_err(backend)?;
        return Ok(0);
    }
    let owners: BTreeSet<UserKey> = tx
        .query(
            "SELECT DISTINCT owner FROM inbox WHERE message_id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(backend)?
        .iter()
        .map(|row| UserKey::new(&batch.tenant, row.get::<_, &str>(0)))
        .collect();
    Counters::lock(&tx, owners).await?;
    // Each deleted entry, with the message's sender and conversation, and whether it was
    // deleted for everyone before (then it no longer counts as unread anywhere).
    let entries = tx
        .query(
            "WITH gone AS (DELETE FROM inbox WHERE message_id = ANY($1)
                           RETURNING owner, seq, message_id)
             SELECT g.owner, g.seq, g.message_id, m.sender, m.conversation,
                    m.deleted_ts IS NOT NULL
             FROM gone g JOIN messages m ON m.id = g.message_id",
            &[&ids],
        )
        .await
        .map_err(backend)?;
    tx.execute("DELETE FROM reactions WHERE message_id = ANY($1)", &[&ids])
        .await
        .map_err(backend)?;
    let deleted = tx
        .execute("DELETE FROM messages WHERE id = ANY($1)", &[&ids])
        .await
        .map_err(backend)?;
    let (mut owners, mut seqs) = (Vec::new(), Vec::new());
    let (mut readers, mut conversations, mut unread) = (Vec::new(), Vec::new(), Vec::new());
    for row in &entries {
        let owner: String = row.get(0);
        if owner != row.get::<_, &str>(3) && !row.get::<_, bool>(5) {
            readers.push(owner.clone());
            conversations.push(row.get::<_, String>(4));
            unread.push(row.get::<_, i64>(2));
        }
        owners.push(owner);
        seqs.push(row.get::<_, i64>(1));
    }
    tx.execute(
        "UPDATE user_seqs u SET pruned_until = GREATEST(u.pruned_until, p.seq)
         FROM (SELECT o, max(s) AS seq FROM unnest($2::text[], $3::bigint[]) AS e(o, s)
               GROUP BY o) p
         WHERE u.tenant = $1 AND u.owner = p.o",
        &[&batch.tenant, &owners, &seqs],
    )
    .await
    .map_err(backend)?;
    tx.execute(
        "UPDATE conversation_states s SET unread_count = GREATEST(s.unread_count - d.n, 0)
         FROM (SELECT e.o, e.c, count(*) AS n
               FROM unnest($2::text[], $3::text[], $4::bigint[]) AS e(o, c, id)
               JOIN conversation_states k
                 ON k.tenant = $1 AND k.owner = e.o AND k.conversation = e.c
                AND k.read_marker < e.id
               GROUP BY e.o, e.c) d
         WHERE s.tenant = $1 AND s.owner = d.o AND s.conversation = d.c",
        &[&batch.tenant, &readers, &conversations, &unread],
    )
    .await
    .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(deleted)
}
