//! What the server API imposes on users (bans, revoked tokens), in `restrictions`, keyed
//! (tenant, user): a change is a job of the writer, in a transaction of its own; the reads
//! run over a snapshot.

use std::ops::Bound;

use super::keys::KeyReader;
use super::tables::{self, RestrictionRow, Source, Tables, key};
use super::writer::WriteTx;
use crate::StoreError;
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::restriction::{Restriction, RestrictionChange};

impl From<RestrictionRow> for Restriction {
    fn from(row: RestrictionRow) -> Self {
        Self {
            banned_until: row.banned_until,
            ban_reason: row.ban_reason,
            tokens_before: row.tokens_before,
        }
    }
}

impl From<&Restriction> for RestrictionRow {
    fn from(r: &Restriction) -> Self {
        Self {
            banned_until: r.banned_until,
            ban_reason: r.ban_reason.clone(),
            tokens_before: r.tokens_before,
        }
    }
}

/// Applies `change` to `user`'s restriction (created when the user has none) as
/// [`Restriction::changed`] says, and returns the result. An invalid change is refused and
/// writes nothing.
pub(super) fn set(
    w: &mut WriteTx<'_>,
    user: &UserKey,
    change: &RestrictionChange,
) -> Result<Restriction, StoreError> {
    change
        .validate()
        .map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
    let key = key::user(&user.tenant, &user.user);
    let current: Restriction = w
        .get::<RestrictionRow>(&w.t.restrictions, &key)?
        .map(Restriction::from)
        .unwrap_or_default();
    let changed = current.changed(change);
    w.put(&w.t.restrictions, key, &RestrictionRow::from(&changed))?;
    Ok(changed)
}

/// `user`'s restriction, or the default (all zero).
pub(super) fn get(r: &impl Source, t: &Tables, user: &UserKey) -> Result<Restriction, StoreError> {
    Ok(
        tables::get::<RestrictionRow>(r, &t.restrictions, &key::user(&user.tenant, &user.user))?
            .map(Restriction::from)
            .unwrap_or_default(),
    )
}

/// Every restriction [active](Restriction::is_active) at `now_ms`, of every tenant, by
/// (tenant, user): the keys' order. Reads every restriction, as the SQL backends do.
pub(super) fn active(
    r: &impl Source,
    t: &Tables,
    now_ms: i64,
) -> Result<Vec<(UserKey, Restriction)>, StoreError> {
    let mut out = Vec::new();
    r.walk(
        &t.restrictions,
        Bound::Unbounded,
        Bound::Unbounded,
        false,
        |key, value| {
            let restriction = Restriction::from(tables::decode::<RestrictionRow>(value)?);
            if restriction.is_active(now_ms) {
                let mut reader = KeyReader::new(key);
                let tenant = reader.str()?;
                let user = reader.str()?;
                out.push((UserKey::new(tenant, user), restriction));
            }
            Ok(true)
        },
    )?;
    Ok(out)
}
