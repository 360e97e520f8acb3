//! The restrictions this node enforces at the door: the users banned until a time, and the
//! users whose tokens issued before a time are refused (see
//! [`peroxo_protocol::restriction`]).
//!
//! Storage holds them; the node keeps the active ones in memory ([`Restrictions`]) so that an
//! upgrade is decided without a storage call. Persistence loads them when it connects to
//! storage (before the node counts as reachable) and again every [`RELOAD_INTERVAL`]; the
//! server API updates them at once on the node that changes one, and the cluster tells the
//! other nodes at once.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, UNIX_EPOCH};

use axum::http::StatusCode;

use crate::identity::Identity;
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::restriction::Restriction;

/// How often a node reloads the active restrictions from storage: a change made through
/// another node reaches this one by the cluster at once, and by this reload at the latest.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// The latest time a ban may run to (the end of year 9999, in milliseconds): every time
/// the node writes as RFC 3339 stays within four-digit years.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// The active restrictions, by user.
#[derive(Debug, Default)]
pub struct Restrictions {
    inner: RwLock<Known>,
}

#[derive(Debug, Default)]
struct Known {
    by_user: HashMap<UserKey, Entry>,
    /// Counts the changes this node learned; each entry records the count it was learned at.
    changes: u64,
}

#[derive(Debug)]
struct Entry {
    restriction: Restriction,
    /// The change count when this node learned of it: a reload that started earlier read
    /// storage before the change, so it does not overwrite it.
    learned: u64,
}

/// Why an upgrade (or a `refresh`) is refused by a restriction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Banned { until: i64, reason: String },
    TokenRevoked,
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Banned { .. } => StatusCode::FORBIDDEN,
            Refused::TokenRevoked => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `error` field of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Refused::Banned { .. } => "banned",
            Refused::TokenRevoked => "token_revoked",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refused::Banned { until, reason } if reason.is_empty() => {
                format!("this user is banned until {}", rfc3339(*until))
            }
            Refused::Banned { until, reason } => {
                format!("this user is banned until {}: {reason}", rfc3339(*until))
            }
            Refused::TokenRevoked => {
                "this token was revoked; sign in again for a new one".to_owned()
            }
        }
    }
}

/// A time in milliseconds since the Unix epoch, as RFC 3339 (UTC, to the millisecond).
pub fn rfc3339(ms: i64) -> String {
    let ms = ms.clamp(0, MAX_TIME_MS) as u64;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl Restrictions {
    /// Refuses `identity` at `now_ms` when it is banned, or its token was revoked.
    pub fn check(&self, identity: &Identity, now_ms: i64) -> Result<(), Refused> {
        let known = self.inner.read().expect("restrictions poisoned");
        let Some(entry) = known.by_user.get(&identity.key) else {
            return Ok(());
        };
        let r = &entry.restriction;
        if r.banned_at(now_ms) {
            return Err(Refused::Banned {
                until: r.banned_until,
                reason: r.ban_reason.clone(),
            });
        }
        let issued_at_ms = identity
            .issued_at
            .map(|secs| i64::try_from(secs.saturating_mul(1_000)).unwrap_or(i64::MAX));
        if r.refuses_token(issued_at_ms) {
            return Err(Refused::TokenRevoked);
        }
        Ok(())
    }

    /// `user`'s restriction as this node knows it.
    pub fn of(&self, user: &UserKey) -> Option<Restriction> {
        let known = self.inner.read().expect("restrictions poisoned");
        known.by_user.get(user).map(|e| e.restriction.clone())
    }

    /// Learns `user`'s restriction as it now is. One that no longer restricts is kept too
    /// until the next reload, so that a reload already under way does not bring back what
    /// it replaced.
    pub fn set(&self, user: UserKey, restriction: Restriction) {
        let mut known = self.inner.write().expect("restrictions poisoned");
        known.changes += 1;
        let learned = known.changes;
        let entry = Entry {
            restriction,
            learned,
        };
        known.by_user.insert(user, entry);
    }

    /// Where a reload starts from, for [`Restrictions::replace_all`].
    pub fn mark(&self) -> u64 {
        self.inner.read().expect("restrictions poisoned").changes
    }

    /// Replaces what the node knows with `loaded`, read from storage by a load that started
    /// at [`mark`](Restrictions::mark) `started`; what the node learned since stays as it
    /// learned it.
    pub fn replace_all(&self, loaded: Vec<(UserKey, Restriction)>, started: u64) {
        let mut known = self.inner.write().expect("restrictions poisoned");
        let mut fresh: HashMap<UserKey, Entry> = loaded
            .into_iter()
            .map(|(user, restriction)| {
                let entry = Entry {
                    restriction,
                    learned: started,
                };
                (user, entry)
            })
            .collect();
        for (user, entry) in known.by_user.drain() {
            if entry.learned > started {
                fresh.insert(user, entry);
            }
        }
        known.by_user = fresh;
    }

    /// How many users this node holds a restriction of (for logs).
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .expect("restrictions poisoned")
            .by_user
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(user: &str, issued_at: Option<u64>) -> Identity {
        Identity {
            key: UserKey::new("t", user),
            expires_at: None,
            issued_at,
        }
    }

    #[test]
    fn a_ban_refuses_until_its_time_and_a_revocation_refuses_older_tokens() {
        let map = Restrictions::default();
        let ban = Restriction {
            banned_until: 2_000,
            ban_reason: "spam".into(),
            tokens_before: 0,
        };
        map.set(UserKey::new("t", "alice"), ban);
        assert_eq!(
            map.check(&identity("alice", None), 1_999)
                .unwrap_err()
                .code(),
            "banned"
        );
        assert!(map.check(&identity("alice", None), 2_000).is_ok());
        assert!(map.check(&identity("bob", None), 0).is_ok());
        let revoked = Restriction {
            tokens_before: 5_000,
            ..Restriction::default()
        };
        map.set(UserKey::new("t", "bob"), revoked);
        assert_eq!(
            map.check(&identity("bob", Some(4)), 0),
            Err(Refused::TokenRevoked)
        );
        assert_eq!(
            map.check(&identity("bob", None), 0),
            Err(Refused::TokenRevoked)
        );
        assert!(map.check(&identity("bob", Some(5)), 0).is_ok());
    }

    #[test]
    fn a_reload_that_started_before_a_change_keeps_the_change() {
        let map = Restrictions::default();
        let started = map.mark();
        let ban = Restriction {
            banned_until: i64::MAX,
            ..Restriction::default()
        };
        map.set(UserKey::new("t", "alice"), ban.clone());
        map.replace_all(vec![(UserKey::new("t", "bob"), ban)], started);
        assert_eq!(map.len(), 2);
        // A reload that started after the change replaces it.
        map.replace_all(Vec::new(), map.mark());
        assert!(map.is_empty());
    }

    #[test]
    fn times_are_written_as_rfc3339_within_four_digit_years() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
