//! Erasing a batch of a user's texts or read state (`peroxo user erase`), in a transaction
//! of its own.

use super::writer::WriteTx;
use crate::StoreError;
use peroxo_protocol::domain::UserKey;

/// Erases the text of a batch of `user`'s messages (see `MessageStore::erase_texts`).
pub(super) fn texts(w: &mut WriteTx<'_>, user: &UserKey, limit: u32) -> Result<u64, StoreError> {
    let _ = (w, user, limit);
    Err(super::unsupported("erase_texts"))
}

/// Forgets `user`'s read state of a batch of conversations (see
/// `MessageStore::erase_read_state`).
pub(super) fn read_state(
    w: &mut WriteTx<'_>,
    user: &UserKey,
    limit: u32,
) -> Result<u64, StoreError> {
    let _ = (w, user, limit);
    Err(super::unsupported("erase_read_state"))
}
