//! What an application's backend may impose on a user through the server API: a ban (no
//! connection until a time) and the revocation of the tokens issued before a time. Storage
//! keeps one [`Restriction`] per (tenant, user); gateways keep the active ones in memory and
//! refuse upgrades with them. The rule of how a [`RestrictionChange`] applies is here, once,
//! for every backend. No I/O.

/// The most bytes of a ban's reason.
pub const MAX_BAN_REASON_BYTES: usize = 120;

/// What is imposed on one user. Times are milliseconds since the Unix epoch; 0 means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restriction {
    /// The user may not connect before this time.
    pub banned_until: i64,
    /// Why, as the ban was given (empty once the ban is lifted).
    pub ban_reason: String,
    /// Tokens issued before this time (by their `iat`) are refused. Only ever moves forward.
    pub tokens_before: i64,
}

/// A change to a user's [`Restriction`]; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestrictionChange {
    /// Bans the user until this time; `Some(0)` lifts the ban (and forgets its reason).
    pub ban_until: Option<i64>,
    /// The ban's reason (at most [`MAX_BAN_REASON_BYTES`]).
    pub reason: Option<String>,
    /// Revokes the tokens issued before this time; an earlier time than the one recorded
    /// changes nothing.
    pub revoke_before: Option<i64>,
}

/// Why a change cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestrictionError {
    #[error("{0} must not be negative")]
    Negative(&'static str),
    #[error("the reason may hold at most {MAX_BAN_REASON_BYTES} bytes")]
    ReasonTooLong,
}

impl RestrictionChange {
    /// Checks what every backend relies on: no negative time, a reason within its bound.
    pub fn validate(&self) -> Result<(), RestrictionError> {
        if self.ban_until.is_some_and(|t| t < 0) {
            return Err(RestrictionError::Negative("ban_until"));
        }
        if self.revoke_before.is_some_and(|t| t < 0) {
            return Err(RestrictionError::Negative("revoke_before"));
        }
        if self
            .reason
            .as_ref()
            .is_some_and(|r| r.len() > MAX_BAN_REASON_BYTES)
        {
            return Err(RestrictionError::ReasonTooLong);
        }
        Ok(())
    }
}

impl Restriction {
    /// This restriction after `change`.
    pub fn changed(mut self, change: &RestrictionChange) -> Self {
        if let Some(until) = change.ban_until {
            self.banned_until = until;
            if until == 0 {
                self.ban_reason.clear();
            }
        }
        if let Some(reason) = &change.reason
            && self.banned_until != 0
        {
            self.ban_reason.clone_from(reason);
        }
        if let Some(before) = change.revoke_before {
            self.tokens_before = self.tokens_before.max(before);
        }
        self
    }

    /// Whether the user is banned at `now_ms`.
    pub fn banned_at(&self, now_ms: i64) -> bool {
        self.banned_until > now_ms
    }

    /// Whether a token issued at `issued_at_ms` is refused (a token without `iat` is refused
    /// whenever tokens were revoked: nothing says it is newer).
    pub fn refuses_token(&self, issued_at_ms: Option<i64>) -> bool {
        self.tokens_before > 0 && issued_at_ms.is_none_or(|iat| iat < self.tokens_before)
    }

    /// Whether a gateway must keep this restriction in memory at `now_ms`: a ban still
    /// running, or any revocation.
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.banned_at(now_ms) || self.tokens_before > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifting_a_ban_forgets_its_reason_and_keeps_the_revocation() {
        let banned = Restriction::default().changed(&RestrictionChange {
            ban_until: Some(2_000),
            reason: Some("spam".into()),
            revoke_before: Some(1_000),
        });
        assert_eq!(banned.ban_reason, "spam");
        let lifted = banned.changed(&RestrictionChange {
            ban_until: Some(0),
            ..RestrictionChange::default()
        });
        assert_eq!(
            lifted,
            Restriction {
                banned_until: 0,
                ban_reason: String::new(),
                tokens_before: 1_000
            }
        );
    }

    #[test]
    fn a_revocation_only_moves_forward() {
        let r = Restriction::default().changed(&RestrictionChange {
            revoke_before: Some(5_000),
            ..RestrictionChange::default()
        });
        let r = r.changed(&RestrictionChange {
            revoke_before: Some(3_000),
            ..RestrictionChange::default()
        });
        assert_eq!(r.tokens_before, 5_000);
        assert!(r.refuses_token(Some(4_999)));
        assert!(!r.refuses_token(Some(5_000)));
        assert!(r.refuses_token(None));
        assert!(!Restriction::default().refuses_token(None));
    }

    #[test]
    fn a_ban_runs_until_its_time() {
        let r = Restriction {
            banned_until: 10,
            ..Restriction::default()
        };
        assert!(r.banned_at(9) && r.is_active(9));
        assert!(!r.banned_at(10) && !r.is_active(10));
    }

    #[test]
    fn negative_times_and_long_reasons_are_refused() {
        let negative = RestrictionChange {
            ban_until: Some(-1),
            ..RestrictionChange::default()
        };
        assert!(negative.validate().is_err());
        let long = RestrictionChange {
            reason: Some("x".repeat(MAX_BAN_REASON_BYTES + 1)),
            ..RestrictionChange::default()
        };
        assert_eq!(long.validate(), Err(RestrictionError::ReasonTooLong));
    }
}
