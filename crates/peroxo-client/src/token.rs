//! Refreshing a JWT on an open connection before it expires (docs/PROTOCOL.md, `refresh`), with
//! no I/O: reading a token's `exp`, when to send `refresh`, and what to do when it fails. The
//! same decisions as the TypeScript SDK's `token.ts` and its connection's refresh timer:
//!
//! - A token's `exp` is read without verifying the token: the client only needs to know when
//!   to refresh, and the server verifies every token it is given.
//! - `refresh` goes [`ClientConfig::refresh_margin`](crate::ClientConfig::refresh_margin)
//!   (60 s by default) before `exp`, or halfway there for a token that lives less than twice
//!   the margin; then again before the `exp` of the server's `refreshed`.
//! - `forbidden` (the new token names another user or tenant) ends refreshing on this
//!   connection: retrying cannot help. Any other failure (the token source gave none, the
//!   server answered `bad_request`) is tried again after a short pause while the current token
//!   is still valid, at most halfway to its `exp`.
//! - Once `exp` has passed the server closes with 4001, and the client reconnects with a fresh
//!   token from the source, or stops ([`crate::reconnect`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use peroxo_protocol::ErrorCode;
use tokio::time::Instant;

/// The `exp` claim of a JWT as a time, or `None` when the token is not a JWT or has no `exp`.
pub(crate) fn expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    // Encoders should leave out the padding; tolerate one that did not.
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let exp = Duration::try_from_secs_f64(claims.get("exp")?.as_f64()?).ok()?;
    UNIX_EPOCH.checked_add(exp)
}

/// Whether `token` has an `exp` that is past at `now`. A token without one never expires as
/// far as the client can tell.
pub(crate) fn expired(token: &str, now: SystemTime) -> bool {
    expiry(token).is_some_and(|exp| exp <= now)
}

/// How long from `now` to send `refresh` for a token that expires at `expires_at`: `margin`
/// before it, or halfway there when less than twice `margin` is left; at once when it has
/// expired.
pub(crate) fn refresh_delay(expires_at: SystemTime, now: SystemTime, margin: Duration) -> Duration {
    let Ok(remaining) = expires_at.duration_since(now) else {
        return Duration::ZERO;
    };
    remaining - margin.min(remaining / 2)
}

/// When the current connection sends `refresh` next.
#[derive(Debug, Default)]
pub(crate) struct RefreshTimer {
    /// When the connection's current token expires, from its `exp`.
    expires_at: Option<SystemTime>,
    /// When to send `refresh`; `None` while one is in flight, and once refreshing has ended
    /// on this connection.
    due: Option<Instant>,
}

impl RefreshTimer {
    /// The timer of a connection opened with `token`; it never fires for a token without
    /// `exp`, or when the client has no token source (`refreshable` false).
    pub(crate) fn start(
        token: Option<&str>,
        refreshable: bool,
        margin: Duration,
        now: (Instant, SystemTime),
    ) -> Self {
        let mut timer = Self::default();
        if refreshable && let Some(expires_at) = token.and_then(expiry) {
            timer.plan(expires_at, margin, now);
        }
        timer
    }

    /// When the timer fires next.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Whether it is time to send `refresh`; when it is, the timer waits for the outcome
    /// ([`RefreshTimer::on_refreshed`] or [`RefreshTimer::on_failed`]).
    pub(crate) fn take_due(&mut self, now: Instant) -> bool {
        let fire = self.due.is_some_and(|due| due <= now);
        if fire {
            self.due = None;
        }
        fire
    }

    /// The server accepted the new token, which expires at `exp` (Unix seconds).
    pub(crate) fn on_refreshed(&mut self, exp: u64, margin: Duration, now: (Instant, SystemTime)) {
        self.plan(UNIX_EPOCH + Duration::from_secs(exp), margin, now);
    }

    /// The refresh failed: `refused` is the server's error code, or `None` when no `refresh`
    /// went (the token source gave no token). Returns how long until the next try, if there
    /// is one.
    pub(crate) fn on_failed(
        &mut self,
        refused: Option<ErrorCode>,
        pause: Duration,
        now: (Instant, SystemTime),
    ) -> Option<Duration> {
        self.due = None;
        if refused == Some(ErrorCode::Forbidden) {
            return None;
        }
        let remaining = self.expires_at?.duration_since(now.1).ok()?;
        if remaining.is_zero() {
            return None;
        }
        let delay = pause.min(remaining / 2);
        self.due = Some(now.0 + delay);
        Some(delay)
    }

    fn plan(
        &mut self,
        expires_at: SystemTime,
        margin: Duration,
        (now, wall): (Instant, SystemTime),
    ) {
        self.expires_at = Some(expires_at);
        self.due = Some(now + refresh_delay(expires_at, wall, margin));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARGIN: Duration = Duration::from_secs(60);

    /// An unsigned token with these claims: the client never looks at the signature.
    fn token(claims: &str) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_expiry_is_read_from_the_exp_claim_without_verifying() {
        // `?`, `>` and `~` encode to the characters base64url has and base64 has not.
        let claims = r#"{"sub":"al?ce>~","exp":1764122400}"#;
        assert_eq!(expiry(&token(claims)), Some(at(1_764_122_400)));
        assert_eq!(
            expiry(&token(r#"{"exp":1764122400.5}"#)),
            Some(at(1_764_122_400) + Duration::from_millis(500))
        );
        assert_eq!(expiry(&token(r#"{"sub":"alice"}"#)), None, "no exp");
        assert_eq!(expiry(&token(r#"{"exp":"soon"}"#)), None);
        assert_eq!(expiry(&token(r#"{"exp":-1}"#)), None);
        assert_eq!(expiry(&token(r#"{"exp":1e300}"#)), None);
        assert_eq!(expiry("not a jwt"), None);
        assert_eq!(expiry("a.!!!.c"), None);
        assert!(expired(&token(r#"{"exp":100}"#), at(100)));
        assert!(!expired(&token(r#"{"exp":100}"#), at(99)));
        assert!(!expired("opaque", at(100)), "no exp: never expired");
    }

    #[test]
    fn refresh_goes_a_margin_before_exp_or_halfway_for_a_short_token() {
        let now = at(1_000);
        assert_eq!(
            refresh_delay(at(1_000 + 3_600), now, MARGIN),
            Duration::from_secs(3_540)
        );
        assert_eq!(
            refresh_delay(at(1_000 + 120), now, MARGIN),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_delay(at(1_000 + 4), now, MARGIN),
            Duration::from_secs(2)
        );
        assert_eq!(refresh_delay(at(1_000), now, MARGIN), Duration::ZERO);
        assert_eq!(refresh_delay(at(10), now, MARGIN), Duration::ZERO);
    }

    #[test]
    fn the_timer_fires_once_and_again_after_the_servers_exp() {
        let (now, wall) = (Instant::now(), at(1_000));
        let mut timer =
            RefreshTimer::start(Some(&token(r#"{"exp":4600}"#)), true, MARGIN, (now, wall));
        let due = timer.due().expect("a token with exp is refreshed");
        assert_eq!(due, now + Duration::from_secs(3_540));
        assert!(!timer.take_due(due - Duration::from_millis(1)));
        assert!(timer.take_due(due));
        assert!(!timer.take_due(due), "once, until the outcome");
        timer.on_refreshed(8_200, MARGIN, (due, at(4_540)));
        assert_eq!(timer.due(), Some(due + Duration::from_secs(3_600)));
    }

    #[test]
    fn without_a_source_or_an_exp_there_is_nothing_to_refresh() {
        let now = (Instant::now(), at(1_000));
        let with_exp = token(r#"{"exp":4600}"#);
        assert_eq!(
            RefreshTimer::start(Some(&with_exp), false, MARGIN, now).due(),
            None
        );
        let without = token(r#"{"sub":"alice"}"#);
        assert_eq!(
            RefreshTimer::start(Some(&without), true, MARGIN, now).due(),
            None
        );
        assert_eq!(RefreshTimer::start(None, true, MARGIN, now).due(), None);
    }

    #[test]
    fn a_failed_refresh_is_tried_again_while_the_token_lasts_unless_forbidden() {
        let (now, wall) = (Instant::now(), at(1_000));
        let start = |exp: &str| {
            let mut timer = RefreshTimer::start(Some(&token(exp)), true, MARGIN, (now, wall));
            assert!(timer.take_due(now + Duration::from_secs(3_600)));
            timer
        };
        let pause = Duration::from_millis(200);

        let mut timer = start(r#"{"exp":1060}"#);
        let retry = timer.on_failed(Some(ErrorCode::BadRequest), pause, (now, wall));
        assert_eq!(retry, Some(pause));
        assert_eq!(timer.due(), Some(now + pause));

        let mut timer = start(r#"{"exp":1060}"#);
        assert_eq!(timer.on_failed(None, pause, (now, wall)), Some(pause));

        // Never later than halfway to exp.
        let mut timer = start(r#"{"exp":1060}"#);
        let late = (now, at(1_059));
        let retry = timer.on_failed(Some(ErrorCode::BadRequest), Duration::from_secs(5), late);
        assert_eq!(retry, Some(Duration::from_millis(500)));

        let mut timer = start(r#"{"exp":1060}"#);
        let refused = timer.on_failed(Some(ErrorCode::Forbidden), pause, (now, wall));
        assert_eq!(refused, None, "another user's token: retrying cannot help");
        assert_eq!(timer.due(), None);

        let mut timer = start(r#"{"exp":1060}"#);
        let expired = timer.on_failed(Some(ErrorCode::BadRequest), pause, (now, at(1_060)));
        assert_eq!(expired, None, "after exp the server closes with 4001");
        assert_eq!(timer.due(), None);
    }
}
