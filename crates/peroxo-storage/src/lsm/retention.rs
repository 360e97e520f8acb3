//! Retention's writes and reads: which tenants have messages, and deleting a batch of a
//! tenant's oldest messages with everything that points at them.
//!
//! A batch is a job of the writer thread, in a transaction of its own (never grouped with
//! appends), so it is as short as its batch and the writes queued behind it wait for that
//! alone. Messages are keyed (tenant, id) and ids follow commit order, so a tenant's oldest
//! messages are the first keys of its range: a batch reads them from the start and stops at
//! the first committed at or after its time.

use std::collections::HashMap;
use std::ops::Bound;

use super::keys::{Key, KeyReader};
use super::tables::{self, MessageRow, Source, Tables, key};
use super::writer::WriteTx;
use crate::{PruneBatch, StoreError};
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::event::is_group_id;

/// Deletes up to `batch.limit` of the tenant's messages committed before `batch.before_ts`,
/// oldest first, in one transaction, and says how many it deleted. With each message go its
/// stream entries (each stream's floor rises to the highest seq deleted of it), its count in
/// the unread counts of those it was unread by, its history and dedupe keys (its
/// `client_msg_id` may be used again) and its reactions.
pub(super) fn prune(w: &mut WriteTx<'_>, batch: &PruneBatch) -> Result<u64, StoreError> {
    let tenant = batch.tenant.as_str();
    let doomed = oldest(w, batch)?;
    // The highest seq deleted of each stream, written once per stream.
    let mut floors: HashMap<String, u64> = HashMap::new();
    for (id, message) in &doomed {
        let group = is_group_id(&message.recipient);
        for (owner, seq) in entries_of(w, tenant, *id, message)? {
            w.delete(&w.t.inbox, key::inbox(tenant, &owner, seq));
            if group {
                w.delete(&w.t.group_entries, key::group_entry(tenant, *id, &owner));
            }
            if owner != message.sender && message.deleted_ts.is_none() {
                no_longer_unread(w, &UserKey::new(tenant, owner.as_str()), message, *id)?;
            }
            let floor = floors.entry(owner).or_default();
            *floor = (*floor).max(seq);
        }
        let prefix = key::reactions_of(tenant, *id);
        for (rest, _) in tables::scan(&w.tx, &w.t.reactions, &prefix, false, usize::MAX)? {
            let mut reaction = prefix.clone();
            reaction.extend_from_slice(&rest);
            w.delete(&w.t.reactions, reaction);
        }
        w.delete(
            &w.t.dedupe,
            key::dedupe(tenant, &message.sender, &message.client_msg_id),
        );
        w.delete(
            &w.t.by_conversation,
            key::by_conversation(tenant, &message.conversation, *id),
        );
        w.delete(&w.t.messages, key::message(tenant, *id));
    }
    for (owner, seq) in floors {
        let key = key::user(tenant, &owner);
        let floor = tables::get_u64(&w.tx, &w.t.floors, &key)?.unwrap_or(0);
        if seq > floor {
            w.put_raw(&w.t.floors, key, tables::encode_u64(seq).to_vec());
        }
    }
    Ok(doomed.len() as u64)
}

/// The tenant's oldest messages committed before `batch.before_ts`, up to `batch.limit`.
fn oldest(w: &WriteTx<'_>, batch: &PruneBatch) -> Result<Vec<(u64, MessageRow)>, StoreError> {
    let mut doomed = Vec::new();
    if batch.limit == 0 {
        return Ok(doomed);
    }
    let prefix = key::tenant(&batch.tenant);
    w.tx.walk_prefix(&w.t.messages, &prefix, false, |key, value| {
        let message: MessageRow = tables::decode(value)?;
        if message.ts >= batch.before_ts {
            return Ok(false);
        }
        let id = KeyReader::new(key).skip(&prefix)?.u64()?;
        doomed.push((id, message));
        Ok(doomed.len() < batch.limit as usize)
    })?;
    Ok(doomed)
}

/// The (owner, seq) of every stream entry of message `id`: the sender's and the
/// recipient's of a direct message (one, to oneself), each member's of a group message.
fn entries_of(
    w: &WriteTx<'_>,
    tenant: &str,
    id: u64,
    message: &MessageRow,
) -> Result<Vec<(String, u64)>, StoreError> {
    if !is_group_id(&message.recipient) {
        let mut entries = vec![(message.sender.clone(), message.sender_seq)];
        if message.recipient != message.sender {
            entries.push((message.recipient.clone(), message.recipient_seq));
        }
        return Ok(entries);
    }
    let prefix = Key::new().str(tenant).u64(id).into_bytes();
    let rows = tables::scan(&w.tx, &w.t.group_entries, &prefix, false, usize::MAX)?;
    let mut entries = Vec::with_capacity(rows.len());
    for (rest, value) in rows {
        let member = KeyReader::new(&rest).str()?;
        entries.push((member, tables::decode_u64(&value)?));
    }
    Ok(entries)
}

/// Message `id` of `user`'s `conversation`, deleted, no longer counts as unread: the count
/// goes down when the user had not read up to it.
fn no_longer_unread(
    w: &mut WriteTx<'_>,
    user: &UserKey,
    message: &MessageRow,
    id: u64,
) -> Result<(), StoreError> {
    let Some(old) = w.state(user, &message.conversation)? else {
        return Ok(());
    };
    if old.read_marker >= id || old.unread_count == 0 {
        return Ok(());
    }
    let new = tables::StateRow {
        unread_count: old.unread_count - 1,
        ..old.clone()
    };
    w.put_state(user, &message.conversation, Some(&old), &new)
}

/// The tenants that have messages, in order: each found by seeking past the keys of the one
/// before, so a tenant costs one seek however many messages it has.
pub(super) fn message_tenants(r: &impl Source, t: &Tables) -> Result<Vec<String>, StoreError> {
    let mut tenants = Vec::new();
    let mut from: Vec<u8> = Vec::new();
    loop {
        let mut next = None;
        r.walk(
            &t.messages,
            Bound::Included(&from),
            Bound::Unbounded,
            false,
            |key, _| {
                next = Some(KeyReader::new(key).str()?);
                Ok(false)
            },
        )?;
        let Some(tenant) = next else {
            return Ok(tenants);
        };
        from = past(&key::tenant(&tenant));
        tenants.push(tenant);
    }
}

/// The least key after every key that starts with `prefix`, the encoding of a string
/// element (which ends with 0x00 0x00; after a 0x00 inside a string comes 0x00 or 0xFF,
/// never 0x01).
fn past(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_a_tenant_comes_before_the_next_tenant_only() {
        let a = key::tenant("a");
        let end = past(&a);
        assert!(key::message("a", u64::MAX) < end);
        for next in ["a\0", "a\0b", "ab", "b"] {
            assert!(end <= key::message(next, 0), "{next:?}");
        }
    }
}
