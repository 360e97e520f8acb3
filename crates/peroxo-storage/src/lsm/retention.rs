//! Deleting a batch of old messages, in a transaction of its own.

use fjall::Readable;

use super::tables::Tables;
use super::writer::WriteTx;
use crate::{PruneBatch, StoreError};

/// Deletes a batch of the tenant's oldest messages (see `MessageStore::prune`).
pub(super) fn prune(w: &mut WriteTx<'_>, batch: &PruneBatch) -> Result<u64, StoreError> {
    let _ = (w, batch);
    Err(super::unsupported("prune"))
}

/// The tenants that have messages, in order.
pub(super) fn message_tenants(r: &impl Readable, t: &Tables) -> Result<Vec<String>, StoreError> {
    let _ = (r, t);
    Err(super::unsupported("message_tenants"))
}
