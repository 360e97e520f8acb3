//! The event outbox in the lsm database: writing a transaction's events, reading the feed,
//! pruning it, erasing text from it, and the leases and cursors of its consumers.
//!
//! The writer thread is the only writer, so ids need no lock: it remembers each recent
//! tenant's last id ([`OutboxIds`]), gives every event the next one as the job writes it, and
//! writes each tenant's counter back once per transaction, before the commit. Ids therefore
//! follow commit order and have no gaps.

use std::collections::{BTreeSet, HashMap};

use fjall::{Readable, SingleWriterWriteTx};

use super::tables::{self, OutboxCounter, OutboxRow, Tables, key};
use super::writer::WriteTx;
use crate::outbox::EventsQuery;
use crate::{PruneBatch, StoreError};
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::outbox::{ConsumerClaim, ConsumerLease, NewOutboxEvent, OutboxPage};

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
        tx: &mut SingleWriterWriteTx<'_>,
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
    pub(super) fn store(
        &mut self,
        tx: &mut SingleWriterWriteTx<'_>,
        t: &Tables,
    ) -> Result<(), StoreError> {
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
    r: &impl Readable,
    t: &Tables,
    tenant: &str,
) -> Result<OutboxCounter, StoreError> {
    Ok(tables::get(r, &t.outbox_counters, &key::tenant(tenant))?.unwrap_or_default())
}

/// A consumer's cursor to move, by its holder.
#[derive(Debug, Clone)]
pub(super) struct Advance {
    pub(super) tenant: String,
    pub(super) consumer: String,
    pub(super) holder: String,
    pub(super) cursor: u64,
}

/// One page of the tenant's feed.
pub(super) fn page(
    r: &impl Readable,
    t: &Tables,
    query: &EventsQuery,
) -> Result<OutboxPage, StoreError> {
    let _ = (r, t, query);
    Err(super::unsupported("events"))
}

/// The tenants that have outbox events, in order.
pub(super) fn event_tenants(r: &impl Readable, t: &Tables) -> Result<Vec<String>, StoreError> {
    let _ = (r, t);
    Err(super::unsupported("event_tenants"))
}

/// Deletes a batch of the tenant's oldest events (see `MessageStore::prune_events`).
pub(super) fn prune(w: &mut WriteTx<'_>, batch: &PruneBatch) -> Result<u64, StoreError> {
    let _ = (w, batch);
    Err(super::unsupported("prune_events"))
}

/// Removes the text preview from a batch of `user`'s events (see
/// `MessageStore::erase_event_texts`).
pub(super) fn erase_texts(
    w: &mut WriteTx<'_>,
    user: &UserKey,
    limit: u32,
) -> Result<u64, StoreError> {
    let _ = (w, user, limit);
    Err(super::unsupported("erase_event_texts"))
}

/// Claims or renews a consumer's lease (see `MessageStore::claim_consumer`).
pub(super) fn claim(
    w: &mut WriteTx<'_>,
    claim: &ConsumerClaim,
) -> Result<Option<ConsumerLease>, StoreError> {
    let _ = (w, claim);
    Err(super::unsupported("claim_consumer"))
}

/// Moves a consumer's cursor if its holder holds the lease (see
/// `MessageStore::advance_consumer`).
pub(super) fn advance(w: &mut WriteTx<'_>, advance: &Advance) -> Result<bool, StoreError> {
    let _ = (w, advance);
    Err(super::unsupported("advance_consumer"))
}
