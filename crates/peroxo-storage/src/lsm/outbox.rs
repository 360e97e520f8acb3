//! The event outbox in the lsm database: writing a transaction's events, reading the feed,
//! pruning it, erasing text from it, and the leases and cursors of its consumers.
//!
//! The writer thread is the only writer, so ids need no lock: it remembers each recent
//! tenant's last id ([`OutboxIds`]), gives every event the next one as the job writes it, and
//! writes each tenant's counter back once per transaction, before the commit. Ids therefore
//! follow commit order and have no gaps.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

use super::keys::{KeyReader, corrupt};
use super::overlay::Overlay;
use super::tables::{self, ConsumerRow, OutboxCounter, OutboxRow, Source, Tables, key};
use super::writer::WriteTx;
use crate::jobs::Advance;
use crate::outbox::{EventsQuery, lease_end, prune_cut};
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
    last: HashMap<String, OutboxCounter>,
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
        tx: &mut Overlay,
        t: &Tables,
        tenant: &str,
        ts: i64,
        event: &NewOutboxEvent,
    ) -> Result<u64, StoreError> {
        let mut counter = match self.last.get(tenant) {
            Some(counter) => *counter,
            None => {
                if self.last.len() >= REMEMBERED_TENANTS && self.moved.is_empty() {
                    self.last.clear();
                }
                counter(tx, t, tenant)?
            }
        };
        counter.last_id += 1;
        let row = OutboxRow {
            ts,
            kind: event.kind.name().to_owned(),
            conversation: event.conversation_id.clone(),
            payload: event.payload.clone(),
        };
        tx.insert(
            &t.outbox,
            key::outbox(tenant, counter.last_id),
            tables::encode(&row)?,
        );
        self.last.insert(tenant.to_owned(), counter);
        if !self.moved.contains(tenant) {
            self.moved.insert(tenant.to_owned());
        }
        Ok(counter.last_id)
    }

    /// Writes back the counter of every tenant the open transaction wrote events of: one
    /// write per tenant per transaction, however many events.
    pub(super) fn store(&mut self, tx: &mut Overlay, t: &Tables) -> Result<(), StoreError> {
        for tenant in std::mem::take(&mut self.moved) {
            let counter = self.last[&tenant];
            tx.insert(
                &t.outbox_counters,
                key::tenant(&tenant),
                tables::encode(&counter)?,
            );
        }
        Ok(())
    }

    /// Forgets what the writer remembers of `tenant`'s counter (a job that changes its
    /// `pruned_until` writes the row itself).
    pub(super) fn forget(&mut self, tenant: &str) {
        if !self.moved.contains(tenant) {
            self.last.remove(tenant);
        }
    }
}

/// `tenant`'s outbox counter (all zero when it has none).
pub(super) fn counter(
    r: &impl Source,
    t: &Tables,
    tenant: &str,
) -> Result<OutboxCounter, StoreError> {
    Ok(tables::get(r, &t.outbox_counters, &key::tenant(tenant))?.unwrap_or_default())
}

/// A kind as stored.
fn kind_of(name: &str) -> Result<OutboxKind, StoreError> {
    OutboxKind::parse(name)
        .ok_or_else(|| StoreError::Backend(format!("a stored outbox event kind {name:?}")))
}

/// One page of the tenant's feed: its events with an id greater than `query.after`,
/// ascending, at most `query.limit` (capped at [`MAX_EVENTS_LIMIT`]), and its `pruned_until`,
/// both read from the snapshot `r`.
pub(super) fn page(
    r: &impl Source,
    t: &Tables,
    query: &EventsQuery,
) -> Result<OutboxPage, StoreError> {
    let limit = query.limit.min(MAX_EVENTS_LIMIT) as usize;
    let prefix = key::tenant(&query.tenant);
    let from = key::outbox(&query.tenant, query.after);
    let rows = tables::scan_from(r, &t.outbox, &prefix, Some(&from), false, limit)?;
    let mut events = Vec::with_capacity(rows.len());
    for (rest, value) in rows {
        let id = KeyReader::new(&rest).u64()?;
        let row: OutboxRow = tables::decode(&value)?;
        events.push(OutboxEvent {
            id,
            tenant: query.tenant.clone(),
            ts: row.ts,
            kind: kind_of(&row.kind)?,
            conversation_id: row.conversation,
            payload: row.payload,
        });
    }
    let pruned_until = counter(r, t, &query.tenant)?.pruned_until;
    Ok(OutboxPage {
        next_after: events.last().map_or(query.after, |e| e.id),
        events,
        pruned_until,
    })
}

/// The tenants that have outbox events (a counter: every tenant that ever wrote one), in
/// order.
pub(super) fn event_tenants(r: &impl Source, t: &Tables) -> Result<Vec<String>, StoreError> {
    let mut tenants = Vec::new();
    r.walk(
        &t.outbox_counters,
        Bound::Unbounded,
        Bound::Unbounded,
        false,
        |key, _| {
            tenants.push(KeyReader::new(key).str()?);
            Ok(true)
        },
    )?;
    Ok(tenants)
}

/// Deletes the tenant's oldest events committed before `batch.before_ts`, up to
/// `batch.limit`, and raises its `pruned_until` to the highest id deleted. Only a prefix of
/// the oldest goes (see [`prune_cut`]), so every id up to `pruned_until` is gone.
pub(super) fn prune(w: &mut WriteTx<'_>, batch: &PruneBatch) -> Result<u64, StoreError> {
    let prefix = key::tenant(&batch.tenant);
    let oldest = tables::scan(&w.tx, &w.t.outbox, &prefix, false, batch.limit as usize)?
        .into_iter()
        .map(|(rest, value)| {
            let id = KeyReader::new(&rest).u64()?;
            let row: OutboxRow = tables::decode(&value)?;
            Ok((id, row.ts))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let Some(cut) = prune_cut(&oldest, batch.before_ts) else {
        return Ok(0);
    };
    let mut deleted = 0;
    for &(id, _) in oldest.iter().take_while(|(id, _)| *id <= cut) {
        w.delete(&w.t.outbox, key::outbox(&batch.tenant, id));
        deleted += 1;
    }
    let counter_key = key::tenant(&batch.tenant);
    if let Some(mut counter) = w.get::<OutboxCounter>(&w.t.outbox_counters, &counter_key)? {
        counter.pruned_until = counter.pruned_until.max(cut);
        w.put(&w.t.outbox_counters, counter_key, &counter)?;
        // The writer's remembered counter would write the old `pruned_until` back.
        w.forget_outbox_counter(&batch.tenant);
    }
    Ok(deleted)
}

/// The kinds of events that carry a message's text.
const TEXT_KINDS: [&str; 2] = ["message.created", "message.edited"];

/// Removes the text of up to `limit` events of messages `user` sent or edited (a payload
/// with a `text` whose `from` or `by` is the user), oldest first. The outbox has no index by
/// author: this reads the tenant's feed from its start, as the SQL backends do; erasing is a
/// rare operator's command, and the outbox holds `events.retention` of events at most.
pub(super) fn erase_texts(
    w: &mut WriteTx<'_>,
    user: &UserKey,
    limit: u32,
) -> Result<u64, StoreError> {
    let mut erased = Vec::new();
    if limit > 0 {
        let prefix = key::tenant(&user.tenant);
        w.tx.walk_prefix(&w.t.outbox, &prefix, false, |key, value| {
            let mut row: OutboxRow = tables::decode(value)?;
            if !TEXT_KINDS.contains(&row.kind.as_str()) {
                return Ok(true);
            }
            let Some(payload) = without_text(&row.payload, &user.user)? else {
                return Ok(true);
            };
            row.payload = payload;
            erased.push((key.to_vec(), row));
            Ok(erased.len() < limit as usize)
        })?;
    }
    let count = erased.len() as u64;
    for (key, row) in erased {
        w.put(&w.t.outbox, key, &row)?;
    }
    Ok(count)
}

/// `payload` without its `text`, when it has one (not null) and names `user` as `from` or
/// `by`; `None` otherwise.
fn without_text(payload: &str, user: &str) -> Result<Option<String>, StoreError> {
    let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(payload)
        .map_err(|_| corrupt("an outbox payload that is not a JSON object"))?;
    let names = |field: &str| object.get(field).and_then(|v| v.as_str()) == Some(user);
    let has_text = object.get("text").is_some_and(|text| !text.is_null());
    if !has_text || !(names("from") || names("by")) {
        return Ok(None);
    }
    object.remove("text");
    serde_json::to_string(&object)
        .map(Some)
        .map_err(|e| StoreError::Backend(format!("lsm: cannot encode an outbox payload: {e}")))
}

/// Claims or renews a consumer's lease until `claim.now_ms + claim.ttl_ms`: a new consumer
/// starts at cursor 0; an existing one passes to `claim.holder` when it already holds it or
/// the lease ended at or before `claim.now_ms`. `None` (and nothing written) while another
/// holder's lease runs.
pub(super) fn claim(
    w: &mut WriteTx<'_>,
    claim: &ConsumerClaim,
) -> Result<Option<ConsumerLease>, StoreError> {
    let expires_at = lease_end(claim.now_ms, claim.ttl_ms);
    let key = key::consumer(&claim.tenant, &claim.consumer);
    let cursor = match w.get::<ConsumerRow>(&w.t.consumers, &key)? {
        None => 0,
        Some(row) if row.holder == claim.holder || row.expires_at <= claim.now_ms => row.cursor,
        Some(_) => return Ok(None),
    };
    let row = ConsumerRow {
        holder: claim.holder.clone(),
        expires_at,
        cursor,
    };
    w.put(&w.t.consumers, key, &row)?;
    Ok(Some(ConsumerLease { cursor, expires_at }))
}

/// Moves a consumer's cursor to `advance.cursor` (never back) if `advance.holder` holds its
/// lease, and says whether it does.
pub(super) fn advance(w: &mut WriteTx<'_>, advance: &Advance) -> Result<bool, StoreError> {
    let key = key::consumer(&advance.tenant, &advance.consumer);
    let Some(mut row) = w.get::<ConsumerRow>(&w.t.consumers, &key)? else {
        return Ok(false);
    };
    if row.holder != advance.holder {
        return Ok(false);
    }
    if advance.cursor > row.cursor {
        row.cursor = advance.cursor;
        w.put(&w.t.consumers, key, &row)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_text_of_the_user_goes() {
        let sent = r#"{"from":"alice","message_id":"1","text":"hi"}"#;
        assert_eq!(
            without_text(sent, "alice").unwrap().as_deref(),
            Some(r#"{"from":"alice","message_id":"1"}"#)
        );
        assert_eq!(without_text(sent, "bob").unwrap(), None);
        let edited = r#"{"by":"bob","text":"x"}"#;
        assert_eq!(
            without_text(edited, "bob").unwrap().as_deref(),
            Some(r#"{"by":"bob"}"#)
        );
        assert_eq!(without_text(r#"{"by":"bob"}"#, "bob").unwrap(), None);
        assert_eq!(
            without_text(r#"{"by":"bob","text":null}"#, "bob").unwrap(),
            None
        );
        assert!(without_text("[1]", "bob").is_err());
    }
}
