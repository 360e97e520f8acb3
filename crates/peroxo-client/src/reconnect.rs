//! What to do when a connection ends, chosen by how it ended (docs/PROTOCOL.md, "What a correct
//! client does", item 6), and how long to wait before the next attempt.
//!
//! - Close codes 1000, 1011 and 1013, a dropped connection: reconnect with backoff, to the same
//!   node first. 1001 (the node shuts down or found the client idle) and an unreachable node:
//!   reconnect with backoff to the next node. 1009: reconnect (the client never writes a frame
//!   over the protocol's size, so the cause is gone).
//! - 503 (`node_full`, `draining`, `unavailable`) and 429 (`too_many_sessions`) on connecting:
//!   retry with backoff, on the next node.
//! - 4001 (token expired) and 401 on connecting: reconnect only with a fresh token from the
//!   token callback; without one, stop. A refused client never retries with the same token.
//! - 1008 (the client kept exceeding its command rate): stop. This library does not throttle
//!   the application's commands, so it cannot promise the server it has slowed down; the
//!   application decides when to start again.
//! - Any other refusal of the upgrade (400, 403, 404, …): stop; retrying cannot help.

use std::time::Duration;

use crate::connection::Disconnect;

/// What the client does after a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Reconnect after a backoff; `rotate` moves to the next node first.
    Reconnect { rotate: bool },
    /// Reconnect after a backoff with a fresh token.
    ReconnectWithFreshToken,
    /// Do not reconnect.
    Stop,
}

/// The step after `disconnect` (see the module documentation).
pub fn next_step(disconnect: &Disconnect) -> NextStep {
    match disconnect {
        Disconnect::Unreachable(_) => NextStep::Reconnect { rotate: true },
        Disconnect::Lost(_) => NextStep::Reconnect { rotate: false },
        Disconnect::Closed { code, .. } => match code {
            1001 => NextStep::Reconnect { rotate: true },
            1008 => NextStep::Stop,
            4001 => NextStep::ReconnectWithFreshToken,
            _ => NextStep::Reconnect { rotate: false },
        },
        Disconnect::Refused { status, .. } => match status {
            401 => NextStep::ReconnectWithFreshToken,
            429 | 500..=599 => NextStep::Reconnect { rotate: true },
            _ => NextStep::Stop,
        },
    }
}

/// Why a client stopped for good: the TypeScript SDK's `ClosedReason`, chosen from the
/// disconnect after which the client did not reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedReason {
    /// The application closed the client (or dropped every handle).
    Client,
    /// Close 1008: the client exceeded its command rate persistently.
    RateAbuse,
    /// The token expired (4001) or was refused (401), and the token source gave no fresh one.
    TokenExpired,
    /// The upgrade was refused with a status that retrying cannot change (400, 403, 404, …),
    /// or there is no node to connect to.
    Refused,
}

impl ClosedReason {
    /// The reason for stopping after `disconnect`, whose step was not to reconnect.
    pub fn after(disconnect: &Disconnect) -> Self {
        match disconnect {
            Disconnect::Closed { code: 1008, .. } => ClosedReason::RateAbuse,
            Disconnect::Closed { code: 4001, .. } | Disconnect::Refused { status: 401, .. } => {
                ClosedReason::TokenExpired
            }
            _ => ClosedReason::Refused,
        }
    }

    /// The TypeScript SDK's name for the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedReason::Client => "client",
            ClosedReason::RateAbuse => "rate_abuse",
            ClosedReason::TokenExpired => "token_expired",
            ClosedReason::Refused => "refused",
        }
    }
}

impl std::fmt::Display for ClosedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exponential backoff: `initial`, doubling with each consecutive failure up to `max`, with
/// jitter of ±50 % so that clients dropped together do not come back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The pause before the next attempt after `failures` consecutive failed attempts (0 after
    /// a connection that worked and then ended).
    pub(crate) fn delay(&self, failures: u32, jitter: &mut Jitter) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << failures.min(16))
            .min(self.max);
        jitter.around(base)
    }
}

/// A small xorshift generator for jitter: no need for a cryptographic source.
#[derive(Debug, Clone)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn seeded(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// Seeded from the clock, so that clients started together do not draw the same delays.
    pub(crate) fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::seeded(nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A duration drawn evenly from `[base / 2, base * 3 / 2)`.
    pub(crate) fn around(&mut self, base: Duration) -> Duration {
        let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos(nanos / 2 + self.next() % nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(code: u16) -> Disconnect {
        Disconnect::Closed {
            code,
            reason: String::new(),
        }
    }

    fn refused(status: u16) -> Disconnect {
        Disconnect::Refused {
            status,
            error: None,
        }
    }

    #[test]
    fn close_codes_choose_the_next_step() {
        for code in [1000, 1006, 1009, 1011, 1013] {
            assert_eq!(
                next_step(&closed(code)),
                NextStep::Reconnect { rotate: false },
                "{code}"
            );
        }
        assert_eq!(
            next_step(&closed(1001)),
            NextStep::Reconnect { rotate: true }
        );
        assert_eq!(next_step(&closed(1008)), NextStep::Stop);
        assert_eq!(next_step(&closed(4001)), NextStep::ReconnectWithFreshToken);
    }

    #[test]
    fn refused_upgrades_choose_the_next_step() {
        assert_eq!(next_step(&refused(401)), NextStep::ReconnectWithFreshToken);
        for status in [429, 503] {
            assert_eq!(
                next_step(&refused(status)),
                NextStep::Reconnect { rotate: true }
            );
        }
        for status in [400, 403, 404, 426] {
            assert_eq!(next_step(&refused(status)), NextStep::Stop, "{status}");
        }
        assert_eq!(
            next_step(&Disconnect::Unreachable("refused".into())),
            NextStep::Reconnect { rotate: true }
        );
        assert_eq!(
            next_step(&Disconnect::Lost("reset".into())),
            NextStep::Reconnect { rotate: false }
        );
    }

    #[test]
    fn a_stop_names_its_reason() {
        assert_eq!(ClosedReason::after(&closed(1008)), ClosedReason::RateAbuse);
        assert_eq!(
            ClosedReason::after(&closed(4001)),
            ClosedReason::TokenExpired
        );
        assert_eq!(
            ClosedReason::after(&refused(401)),
            ClosedReason::TokenExpired
        );
        for status in [400, 403, 404] {
            assert_eq!(ClosedReason::after(&refused(status)), ClosedReason::Refused);
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum_with_jitter() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let mut jitter = Jitter::seeded(42);
        for _ in 0..100 {
            let first = backoff.delay(0, &mut jitter);
            assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(150));
            let third = backoff.delay(2, &mut jitter);
            assert!(third >= Duration::from_millis(200) && third < Duration::from_millis(600));
            let late = backoff.delay(30, &mut jitter);
            assert!(late >= Duration::from_millis(500) && late < Duration::from_millis(1500));
        }
        let draws: std::collections::BTreeSet<_> =
            (0..20).map(|_| backoff.delay(0, &mut jitter)).collect();
        assert!(draws.len() > 10, "jitter varies the delay");
    }
}
