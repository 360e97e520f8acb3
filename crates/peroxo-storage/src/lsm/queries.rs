//! The reads: history, sync, a user's current seq, the conversation list.

use fjall::Readable;

use super::tables::{self, Tables, key};
use crate::{HistoryQuery, StoreError, SyncQuery};
use peroxo_protocol::conversation::{ConversationPage, ConversationsQuery};
use peroxo_protocol::domain::{HistoryPage, SyncPage, UserKey};

/// The user's current seq: the highest of its stream, or of what retention pruned of it (0
/// when it has none).
pub(super) fn last_seq(r: &impl Readable, t: &Tables, user: &UserKey) -> Result<u64, StoreError> {
    let prefix = key::user(&user.tenant, &user.user);
    let top = match tables::scan(r, &t.inbox, &prefix, true, 1)?.first() {
        Some((rest, _)) => super::keys::KeyReader::new(rest).u64()?,
        None => 0,
    };
    Ok(top.max(stream_floor(r, t, user)?))
}

/// The highest seq of the user's stream that retention deleted (0 when none).
pub(super) fn stream_floor(
    r: &impl Readable,
    t: &Tables,
    user: &UserKey,
) -> Result<u64, StoreError> {
    Ok(tables::get_u64(r, &t.floors, &key::user(&user.tenant, &user.user))?.unwrap_or(0))
}

/// One page of a conversation (see `MessageStore::history`).
pub(super) fn history(
    r: &impl Readable,
    t: &Tables,
    query: &HistoryQuery,
) -> Result<HistoryPage, StoreError> {
    let _ = (r, t, query);
    Err(super::unsupported("history"))
}

/// A user's stream after a seq (see `MessageStore::sync`).
pub(super) fn sync(
    r: &impl Readable,
    t: &Tables,
    query: &SyncQuery,
) -> Result<SyncPage, StoreError> {
    let _ = (r, t, query);
    Err(super::unsupported("sync"))
}

/// One page of a user's conversation list (see `MessageStore::conversations`).
pub(super) fn conversations(
    r: &impl Readable,
    t: &Tables,
    query: &ConversationsQuery,
) -> Result<ConversationPage, StoreError> {
    let _ = (r, t, query);
    Err(super::unsupported("conversations"))
}
