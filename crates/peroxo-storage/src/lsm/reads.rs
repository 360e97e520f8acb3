//! Read marks inside the writer's transaction, and read receipts.

use fjall::Readable;

use super::tables::Tables;
use super::writer::WriteTx;
use crate::StoreError;
use peroxo_protocol::conversation::{ReadMark, ReadOutcome, Receipt};
use peroxo_protocol::domain::UserKey;

/// Moves a read marker (see `MessageStore::mark_read`).
pub(super) fn mark_read(
    w: &mut WriteTx<'_>,
    request: &ReadMark,
) -> Result<ReadOutcome, StoreError> {
    let _ = (w, request);
    Err(super::unsupported("mark_read"))
}

/// Who has read a message (see `MessageStore::read_receipts`).
pub(super) fn read_receipts(
    r: &impl Readable,
    t: &Tables,
    user: &UserKey,
    conversation_id: &str,
    message_id: u64,
) -> Result<Vec<Receipt>, StoreError> {
    let _ = (r, t, user, conversation_id, message_id);
    Err(super::unsupported("read_receipts"))
}
