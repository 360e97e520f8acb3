//! The event outbox in SQLite: writing a transaction's events, reading the feed, pruning it,
//! erasing text from it, and the leases and cursors of its consumers (one statement each, a
//! writer job of its own).
//!
//! The writer thread is the only writer, so ids need no lock: it remembers each recent
//! tenant's last id ([`OutboxIds`]), gives every event the next one as the job writes it, and
//! writes each tenant's counter back once per transaction, before the commit. Ids therefore
//! follow commit order and have no gaps. Reads run on a read connection inside one read
//! transaction, so a page and its `pruned_until` come from the same snapshot.

use std::collections::{BTreeSet, HashMap};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::backend;
use crate::jobs::Advance;
use crate::outbox::{EventsQuery, claim_sql, lease_end, prune_cut};
use crate::sql::sql_int;
use crate::{MAX_EVENTS_LIMIT, PruneBatch, StoreError};
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::outbox::{
    ConsumerClaim, ConsumerLease, NewOutboxEvent, OutboxEvent, OutboxKind, OutboxPage,
};

/// Tenants whose last outbox id the writer remembers; past this, it forgets them all.
const REMEMBERED_TENANTS: usize = 10_000;

/// The last outbox id of recent tenants, as committed (or being committed by the open
/// transaction), and the tenants whose counter the open transaction moved. Cleared when a
/// transaction fails, since it may then be ahead.
#[derive(Debug, Default)]
pub(super) struct OutboxIds {
    last: HashMap<String, u64>,
    moved: BTreeSet<String>,
}

impl OutboxIds {
    pub(super) fn clear(&mut self) {
        self.last.clear();
        self.moved.clear();
    }

    /// Writes `event` as the next event of `tenant`, committed at `ts`, and returns its id.
    pub(super) fn write(
        &mut self,
        conn: &Connection,
        tenant: &str,
        ts: i64,
        event: &NewOutboxEvent,
    ) -> Result<u64, StoreError> {
        let last = match self.last.get(tenant) {
            Some(last) => *last,
            None => {
                if self.last.len() >= REMEMBERED_TENANTS && self.moved.is_empty() {
                    self.last.clear();
                }
                last_id(conn, tenant)?
            }
        };
        let id = last + 1;
        conn.prepare_cached(
            "INSERT INTO outbox (tenant, id, ts, kind, conversation, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                tenant,
                sql_int(id),
                ts,
                event.kind.name(),
                event.conversation_id,
                event.payload
            ])
        })
        .map_err(backend)?;
        self.last.insert(tenant.to_owned(), id);
        if !self.moved.contains(tenant) {
            self.moved.insert(tenant.to_owned());
        }
        Ok(id)
    }

    /// Writes back the counter of every tenant the open transaction wrote events of: one
    /// statement per tenant per transaction, however many events. A counter that another
    /// writer of the same file moved past the remembered id fails the transaction (which
    /// forgets every remembered id), so an id is never taken twice.
    pub(super) fn store(&mut self, conn: &Connection) -> Result<(), StoreError> {
        if self.moved.is_empty() {
            return Ok(());
        }
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO outbox_counters (tenant, last_id) VALUES (?1, ?2)
                 ON CONFLICT (tenant) DO UPDATE SET last_id = excluded.last_id
                     WHERE last_id < excluded.last_id",
            )
            .map_err(backend)?;
        for tenant in std::mem::take(&mut self.moved) {
            let last = self.last[&tenant];
            let stored = stmt
                .execute(params![tenant, sql_int(last)])
                .map_err(backend)?;
            if stored == 0 {
                return Err(StoreError::Backend(format!(
                    "another writer took outbox ids of tenant {tenant:?}"
                )));
            }
        }
        Ok(())
    }
}

/// The last outbox id `tenant` took (0 when none).
fn last_id(conn: &Connection, tenant: &str) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT last_id FROM outbox_counters WHERE tenant = ?1")
        .and_then(|mut stmt| {
            stmt.query_row(params![tenant], |row| row.get::<_, i64>(0))
                .optional()
        })
        .map(|last| last.unwrap_or(0) as u64)
        .map_err(backend)
}

/// The feed's read: one range of the primary key.
pub(super) const FEED: &str = "SELECT id, ts, kind, conversation, payload FROM outbox
     WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3";

/// One page of the tenant's feed.
pub(super) fn page(conn: &mut Connection, query: &EventsQuery) -> Result<OutboxPage, StoreError> {
    let tx = conn.transaction().map_err(backend)?;
    let limit = query.limit.min(MAX_EVENTS_LIMIT);
    let mut events = Vec::new();
    {
        let mut stmt = tx.prepare_cached(FEED).map_err(backend)?;
        let rows = stmt
            .query_map(
                params![query.tenant, sql_int(query.after), i64::from(limit)],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                    ))
                },
            )
            .map_err(backend)?;
        for row in rows {
            let (id, ts, kind, conversation_id, payload) = row.map_err(backend)?;
            events.push(OutboxEvent {
                id: id as u64,
                tenant: query.tenant.clone(),
                ts,
                kind: kind_of(&kind)?,
                conversation_id,
                payload,
            });
        }
    }
    let pruned_until = tx
        .prepare_cached("SELECT pruned_until FROM outbox_counters WHERE tenant = ?1")
        .and_then(|mut stmt| {
            stmt.query_row(params![query.tenant], |row| row.get::<_, i64>(0))
                .optional()
        })
        .map_err(backend)?
        .unwrap_or(0) as u64;
    Ok(OutboxPage {
        next_after: events.last().map_or(query.after, |e| e.id),
        events,
        pruned_until,
    })
}

/// A kind as stored.
pub(crate) fn kind_of(name: &str) -> Result<OutboxKind, StoreError> {
    OutboxKind::parse(name)
        .ok_or_else(|| StoreError::Backend(format!("a stored outbox event kind {name:?}")))
}

/// The tenants that have outbox events, in order.
pub(super) fn tenants(conn: &mut Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT tenant FROM outbox_counters ORDER BY tenant")
        .map_err(backend)?;
    stmt.query_map([], |row| row.get(0))
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)
}

/// Deletes the tenant's oldest events committed before `batch.before_ts`, up to
/// `batch.limit`, in a transaction of its own, and raises its `pruned_until`.
pub(super) fn prune(conn: &mut Connection, batch: &PruneBatch) -> Result<u64, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let oldest: Vec<(u64, i64)> = tx
        .prepare_cached("SELECT id, ts FROM outbox WHERE tenant = ?1 ORDER BY id LIMIT ?2")
        .and_then(|mut stmt| {
            stmt.query_map(params![batch.tenant, i64::from(batch.limit)], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)?))
            })?
            .collect()
        })
        .map_err(backend)?;
    let Some(cut) = prune_cut(&oldest, batch.before_ts) else {
        return Ok(0);
    };
    let deleted = tx
        .prepare_cached("DELETE FROM outbox WHERE tenant = ?1 AND id <= ?2")
        .and_then(|mut stmt| stmt.execute(params![batch.tenant, sql_int(cut)]))
        .map_err(backend)?;
    tx.prepare_cached(
        "UPDATE outbox_counters SET pruned_until = MAX(pruned_until, ?2) WHERE tenant = ?1",
    )
    .and_then(|mut stmt| stmt.execute(params![batch.tenant, sql_int(cut)]))
    .map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(deleted as u64)
}

/// The statement that removes the text of up to `?3` events of messages `?2` sent or edited
/// (tenant `?1`). The outbox has no index by author: erasing is a rare operator's command,
/// and the outbox holds `events.retention` of events at most.
const ERASE_TEXTS: &str = "UPDATE outbox SET payload = json_remove(payload, '$.text')
     WHERE tenant = ?1 AND id IN (
         SELECT id FROM outbox
         WHERE tenant = ?1 AND kind IN ('message.created', 'message.edited')
           AND json_extract(payload, '$.text') IS NOT NULL
           AND (json_extract(payload, '$.from') = ?2 OR json_extract(payload, '$.by') = ?2)
         ORDER BY id LIMIT ?3)";

/// Removes the text of up to `limit` events of messages `user` sent or edited.
pub(super) fn erase_texts(
    conn: &mut Connection,
    user: &UserKey,
    limit: u32,
) -> Result<u64, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let changed = tx
        .prepare_cached(ERASE_TEXTS)
        .and_then(|mut stmt| stmt.execute(params![user.tenant, user.user, i64::from(limit)]))
        .map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(changed as u64)
}

/// Claims or renews a consumer's lease, in one statement.
pub(super) fn claim(
    conn: &Connection,
    claim: &ConsumerClaim,
) -> Result<Option<ConsumerLease>, StoreError> {
    let expires_at = lease_end(claim.now_ms, claim.ttl_ms);
    conn.prepare_cached(&claim_sql(["?1", "?2", "?3", "?4", "?5"]))
        .and_then(|mut stmt| {
            stmt.query_row(
                params![
                    claim.tenant,
                    claim.consumer,
                    claim.holder,
                    expires_at,
                    claim.now_ms
                ],
                |row| {
                    Ok(ConsumerLease {
                        cursor: row.get::<_, i64>(0)? as u64,
                        expires_at: row.get(1)?,
                    })
                },
            )
            .optional()
        })
        .map_err(backend)
}

/// Moves a consumer's cursor forward if `advance.holder` holds its lease.
pub(super) fn advance(conn: &Connection, advance: &Advance) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "UPDATE outbox_consumers SET cursor = MAX(cursor, ?4)
         WHERE tenant = ?1 AND consumer = ?2 AND holder = ?3",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            advance.tenant,
            advance.consumer,
            advance.holder,
            sql_int(advance.cursor)
        ])
    })
    .map(|changed| changed != 0)
    .map_err(backend)
}
