//! Edits, deletes and reactions inside the writer's transaction.

use super::writer::WriteTx;
use crate::StoreError;
use peroxo_protocol::lifecycle::{MessageChange, MessageOutcome};

/// Edits, deletes or reacts to a message (see `MessageStore::change_message`).
pub(super) fn change_message(
    w: &mut WriteTx<'_>,
    request: &MessageChange,
) -> Result<MessageOutcome, StoreError> {
    let _ = (w, request);
    Err(super::unsupported("change_message"))
}
