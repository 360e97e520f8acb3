//! What the server API imposes on users (bans, revoked tokens).

use fjall::Readable;

use super::tables::Tables;
use super::writer::WriteTx;
use crate::StoreError;
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::restriction::{Restriction, RestrictionChange};

/// Changes `user`'s restriction (see `MessageStore::set_restriction`).
pub(super) fn set(
    w: &mut WriteTx<'_>,
    user: &UserKey,
    change: &RestrictionChange,
) -> Result<Restriction, StoreError> {
    let _ = (w, user, change);
    Err(super::unsupported("set_restriction"))
}

/// `user`'s restriction (see `MessageStore::restrictions`).
pub(super) fn get(
    r: &impl Readable,
    t: &Tables,
    user: &UserKey,
) -> Result<Restriction, StoreError> {
    let _ = (r, t, user);
    Err(super::unsupported("restrictions"))
}

/// Every restriction active at `now_ms` (see `MessageStore::active_restrictions`).
pub(super) fn active(
    r: &impl Readable,
    t: &Tables,
    now_ms: i64,
) -> Result<Vec<(UserKey, Restriction)>, StoreError> {
    let _ = (r, t, now_ms);
    Err(super::unsupported("active_restrictions"))
}
