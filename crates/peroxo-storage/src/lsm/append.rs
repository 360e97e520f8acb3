//! Appending one message inside the writer's transaction: a direct message (its two stream
//! entries and its participants' conversation states) or a group message (one stream entry
//! and one state update per member), each with its `message.created` outbox event.

use super::writer::WriteTx;
use crate::StoreError;
use peroxo_protocol::domain::{AppendOutcome, NewMessage};

/// Stores `message` inside the writer's transaction (see `MessageStore::append`), and says
/// how many stream entries it wrote.
pub(super) fn append_one(
    w: &mut WriteTx<'_>,
    message: &NewMessage,
) -> Result<(AppendOutcome, usize), StoreError> {
    let _ = (w, message);
    Err(super::unsupported("append"))
}
