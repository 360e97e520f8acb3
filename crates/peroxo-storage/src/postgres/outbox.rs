//! The event outbox in PostgreSQL: a transaction's events, written by its last statement; the
//! feed's read, pruning and erasing; its consumers' leases and cursors.
//!
//! Several storage services write one database at once, and a sequence is not commit-ordered:
//! a transaction may take id 7, another id 8 and commit first, and a consumer that read 8
//! would never see 7. So ids come from a per-tenant counter row (`outbox_counters`), which a
//! writing transaction takes as its LAST lock, in the statement that also inserts its events,
//! just before it commits (one statement per tenant, tenants in order). Until that
//! transaction commits, no other can take ids of the tenant; so ids follow commit order, and
//! a reader that saw id N has already seen every id below it. Being the last lock, after
//! every other lock of the order in `streams` (groups, then users' counters), it can make no
//! deadlock: a transaction holding it waits for nothing but its commit. The price is that a
//! tenant's writing transactions commit one at a time from that statement on; everything
//! before it (the bulk of the work) still runs concurrently.

use std::collections::BTreeMap;

use deadpool_postgres::{Pool, Transaction};
use tokio_postgres::IsolationLevel;

use super::backend;
use crate::outbox::{EventsQuery, claim_sql, lease_end, prune_cut};
use crate::sql::sql_int;
use crate::{MAX_EVENTS_LIMIT, OutboxSettings, PruneBatch, StoreError};
use peroxo_protocol::domain::{UserKey, now_ms};
use peroxo_protocol::event::Fanout;
use peroxo_protocol::outbox::{
    ConsumerClaim, ConsumerLease, NewOutboxEvent, OutboxEvent, OutboxKind, OutboxPage, Payloads,
};

/// The outbox events a transaction writes, by tenant, in the order they were made.
#[derive(Debug)]
pub(super) struct OutboxRows {
    settings: OutboxSettings,
    by_tenant: BTreeMap<String, Vec<NewOutboxEvent>>,
}

impl OutboxRows {
    pub(super) fn new(settings: OutboxSettings) -> Self {
        Self {
            settings,
            by_tenant: BTreeMap::new(),
        }
    }

    /// Adds the event `build` makes, when events are on.
    pub(super) fn record(
        &mut self,
        tenant: &str,
        build: impl FnOnce(Payloads) -> Option<NewOutboxEvent>,
    ) {
        if let Some(event) = self.settings.event(build) {
            self.by_tenant
                .entry(tenant.to_owned())
                .or_default()
                .push(event);
        }
    }

    /// Adds the outbox event of a stream event (none for read markers and receipts).
    pub(super) fn record_fanout(&mut self, fanout: &Fanout) {
        self.record(&fanout.event.tenant, |payloads| {
            payloads.of_event(&fanout.event)
        });
    }

    /// Takes each tenant's ids and inserts its events, committed at `ts`: the transaction's
    /// last locks, so call it right before the commit. Returns the ids taken, by tenant in
    /// order, each tenant's in the order its events were recorded.
    pub(super) async fn write(self, tx: &Transaction<'_>, ts: i64) -> Result<Vec<u64>, StoreError> {
        let mut ids = Vec::new();
        for (tenant, events) in &self.by_tenant {
            let count = events.len() as i64;
            let kinds: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
            let conversations: Vec<&str> =
                events.iter().map(|e| e.conversation_id.as_str()).collect();
            let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
            let last: i64 = tx
                .query_one(
                    "WITH counter AS (
                         INSERT INTO outbox_counters (tenant, last_id) VALUES ($1, $2)
                         ON CONFLICT (tenant)
                             DO UPDATE SET last_id = outbox_counters.last_id + EXCLUDED.last_id
                         RETURNING last_id),
                     events AS (
                         INSERT INTO outbox (tenant, id, ts, kind, conversation, payload)
                         SELECT $1, counter.last_id - $2 + e.n, $3, e.kind, e.conversation,
                                e.payload
                         FROM counter,
                              unnest($4::text[], $5::text[], $6::text[])
                                  WITH ORDINALITY AS e(kind, conversation, payload, n))
                     SELECT last_id FROM counter",
                    &[tenant, &count, &ts, &kinds, &conversations, &payloads],
                )
                .await
                .map_err(backend)?
                .get(0);
            let last = last as u64;
            ids.extend(last + 1 - events.len() as u64..=last);
        }
        Ok(ids)
    }
}

/// Writes `events`, which the caller decided, as the tenant's next events in a transaction of
/// their own, and returns their ids (none when events are off).
pub(super) async fn record(
    pool: &Pool,
    settings: OutboxSettings,
    tenant: String,
    events: Vec<NewOutboxEvent>,
) -> Result<Vec<u64>, StoreError> {
    if !settings.enabled || events.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows = OutboxRows::new(settings);
    rows.by_tenant.insert(tenant, events);
    let mut client = pool.get().await.map_err(backend)?;
    let tx = client.transaction().await.map_err(backend)?;
    let ids = rows.write(&tx, now_ms()).await?;
    tx.commit().await.map_err(backend)?;
    Ok(ids)
}

/// One page of the tenant's feed, and its `pruned_until`, from one snapshot.
pub(super) async fn page(pool: &Pool, query: EventsQuery) -> Result<OutboxPage, StoreError> {
    let mut client = pool.get().await.map_err(backend)?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(backend)?;
    let limit = i64::from(query.limit.min(MAX_EVENTS_LIMIT));
    let rows = tx
        .query(
            "SELECT id, ts, kind, conversation, payload FROM outbox
             WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[&query.tenant, &sql_int(query.after), &limit],
        )
        .await
        .map_err(backend)?;
    let pruned_until = tx
        .query_opt(
            "SELECT pruned_until FROM outbox_counters WHERE tenant = $1",
            &[&query.tenant],
        )
        .await
        .map_err(backend)?
        .map_or(0, |row| row.get::<_, i64>(0) as u64);
    tx.commit().await.map_err(backend)?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let kind: &str = row.get(2);
        events.push(OutboxEvent {
            id: row.get::<_, i64>(0) as u64,
            tenant: query.tenant.clone(),
            ts: row.get(1),
            kind: OutboxKind::parse(kind)
                .ok_or_else(|| backend(format!("a stored outbox event kind {kind:?}")))?,
            conversation_id: row.get(3),
            payload: row.get(4),
        });
    }
    Ok(OutboxPage {
        next_after: events.last().map_or(query.after, |e| e.id),
        events,
        pruned_until,
    })
}

/// The tenants that have outbox events, in order.
pub(super) async fn tenants(pool: &Pool) -> Result<Vec<String>, StoreError> {
    let client = pool.get().await.map_err(backend)?;
    let rows = client
        .query("SELECT tenant FROM outbox_counters ORDER BY tenant", &[])
        .await
        .map_err(backend)?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Deletes the tenant's oldest events committed before `batch.before_ts`, up to
/// `batch.limit`, and raises its `pruned_until`, in one transaction. It locks the tenant's
/// counter last, like writers, and only once it has decided what to delete.
pub(super) async fn prune(pool: &Pool, batch: PruneBatch) -> Result<u64, StoreError> {
    let mut client = pool.get().await.map_err(backend)?;
    let tx = client.transaction().await.map_err(backend)?;
    let oldest: Vec<(u64, i64)> = tx
        .query(
            "SELECT id, ts FROM outbox WHERE tenant = $1 ORDER BY id LIMIT $2",
            &[&batch.tenant, &i64::from(batch.limit)],
        )
        .await
        .map_err(backend)?
        .iter()
        .map(|row| (row.get::<_, i64>(0) as u64, row.get(1)))
        .collect();
    let Some(cut) = prune_cut(&oldest, batch.before_ts) else {
        return Ok(0);
    };
    let deleted = tx
        .execute(
            "DELETE FROM outbox WHERE tenant = $1 AND id <= $2",
            &[&batch.tenant, &sql_int(cut)],
        )
        .await
        .map_err(backend)?;
    tx.execute(
        "UPDATE outbox_counters SET pruned_until = GREATEST(pruned_until, $2) WHERE tenant = $1",
        &[&batch.tenant, &sql_int(cut)],
    )
    .await
    .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(deleted)
}

/// Removes the text of up to `limit` events of messages `user` sent or edited. The outbox
/// has no index by author: erasing is a rare operator's command, and the outbox holds
/// `events.retention` of events at most.
pub(super) async fn erase_texts(pool: &Pool, user: UserKey, limit: u32) -> Result<u64, StoreError> {
    let client = pool.get().await.map_err(backend)?;
    client
        .execute(
            "UPDATE outbox SET payload = (payload::jsonb - 'text')::text
             WHERE tenant = $1 AND id IN (
                 SELECT id FROM outbox
                 WHERE tenant = $1 AND kind IN ('message.created', 'message.edited')
                   AND jsonb_exists(payload::jsonb, 'text')
                   AND (payload::jsonb ->> 'from' = $2 OR payload::jsonb ->> 'by' = $2)
                 ORDER BY id LIMIT $3)",
            &[&user.tenant, &user.user, &i64::from(limit)],
        )
        .await
        .map_err(backend)
}

/// Claims or renews a consumer's lease, in one statement: concurrent claims of one consumer
/// queue on its row, and the first to commit wins.
pub(super) async fn claim(
    pool: &Pool,
    claim: ConsumerClaim,
) -> Result<Option<ConsumerLease>, StoreError> {
    let client = pool.get().await.map_err(backend)?;
    let expires_at = lease_end(claim.now_ms, claim.ttl_ms);
    let row = client
        .query_opt(
            &claim_sql(["$1", "$2", "$3", "$4", "$5"]),
            &[
                &claim.tenant,
                &claim.consumer,
                &claim.holder,
                &expires_at,
                &claim.now_ms,
            ],
        )
        .await
        .map_err(backend)?;
    Ok(row.map(|row| ConsumerLease {
        cursor: row.get::<_, i64>(0) as u64,
        expires_at: row.get(1),
    }))
}

/// Moves a consumer's cursor forward if `holder` holds its lease.
pub(super) async fn advance(
    pool: &Pool,
    tenant: String,
    consumer: String,
    holder: String,
    cursor: u64,
) -> Result<bool, StoreError> {
    let client = pool.get().await.map_err(backend)?;
    let changed = client
        .execute(
            "UPDATE outbox_consumers SET cursor = GREATEST(cursor, $4)
             WHERE tenant = $1 AND consumer = $2 AND holder = $3",
            &[&tenant, &consumer, &holder, &sql_int(cursor)],
        )
        .await
        .map_err(backend)?;
    Ok(changed != 0)
}
