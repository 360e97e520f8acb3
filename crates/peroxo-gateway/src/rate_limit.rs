//! A token bucket per session, and the rule that turns sustained excess into a disconnect.
//!
//! Every command takes a token; tokens refill at `limits.rate_per_sec` up to
//! `limits.rate_burst`. A command that finds none is refused (`rate_limited`, retryable). A
//! client refused again and again — no pause of a second or more between refusals — for
//! `limits.abuse_close_secs` is abusive and is disconnected (1008).
//!
//! [`KeyRates`] holds one bucket per server API key, by the key's SHA-256.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A pause in refusals this long ends a streak of excess.
const STREAK_GAP: Duration = Duration::from_secs(1);

/// What to do with one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse it; the client may retry later.
    Limit,
    /// Refuse it and disconnect: the client has been over its rate for too long.
    Disconnect,
}

#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    abuse_after: Duration,
    tokens: f64,
    refilled_at: Instant,
    /// When the current streak of refusals began, and when its last refusal was.
    streak: Option<(Instant, Instant)>,
}

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32, abuse_after: Duration, now: Instant) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
            abuse_after,
            tokens: f64::from(burst),
            refilled_at: now,
            streak: None,
        }
    }

    /// Goes on under a new rate and burst from `now` (a reload changed them): the time
    /// before counts at the old rate, the bucket keeps its tokens up to the new burst, and a
    /// streak of refusals goes on.
    pub fn reconfigure(&mut self, per_sec: u32, burst: u32, abuse_after: Duration, now: Instant) {
        let (per_sec, burst) = (f64::from(per_sec), f64::from(burst));
        self.abuse_after = abuse_after;
        if per_sec == self.per_sec && burst == self.burst {
            return;
        }
        self.refill(now);
        self.per_sec = per_sec;
        self.burst = burst;
        self.tokens = self.tokens.min(burst);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.refilled_at = now;
    }

    /// Takes `tokens` more for a command already allowed (a group send, in proportion to its
    /// fan-out). The bucket may go into debt, down to minus one burst: the commands that
    /// follow are refused until it has refilled.
    pub fn charge(&mut self, tokens: f64) {
        self.tokens = (self.tokens - tokens).max(-self.burst);
    }

    /// Judges one command arriving at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        let started = match self.streak {
            Some((started, last)) if now.saturating_duration_since(last) < STREAK_GAP => started,
            _ => now,
        };
        self.streak = Some((started, now));
        if now.saturating_duration_since(started) >= self.abuse_after {
            Verdict::Disconnect
        } else {
            Verdict::Limit
        }
    }
}

/// The request budgets of the server API's keys, by the key's SHA-256. They outlive reloads:
/// a reload changes the rates, and each bucket adjusts itself the next time it is used.
#[derive(Debug, Default)]
pub struct KeyRates(Mutex<HashMap<String, RateLimiter>>);

impl KeyRates {
    /// Judges one request of the key `digest` arriving at `now`, under `per_sec` and `burst`.
    pub fn check(&self, digest: &str, per_sec: u32, burst: u32, now: Instant) -> Verdict {
        let mut rates = self.0.lock().expect("key rates poisoned");
        let bucket = rates
            .entry(digest.to_owned())
            .or_insert_with(|| RateLimiter::new(per_sec, burst, Duration::MAX, now));
        bucket.reconfigure(per_sec, burst, Duration::MAX, now);
        bucket.check(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(now: Instant) -> RateLimiter {
        RateLimiter::new(20, 40, Duration::from_secs(5), now)
    }

    #[test]
    fn a_burst_is_allowed_then_commands_are_limited_until_tokens_refill() {
        let t0 = Instant::now();
        let mut rl = limiter(t0);
        for _ in 0..40 {
            assert_eq!(rl.check(t0), Verdict::Allow);
        }
        assert_eq!(rl.check(t0), Verdict::Limit);
        // 50 ms refill one token at 20/s.
        assert_eq!(rl.check(t0 + Duration::from_millis(50)), Verdict::Allow);
        assert_eq!(rl.check(t0 + Duration::from_millis(50)), Verdict::Limit);
    }

    #[test]
    fn a_new_rate_applies_from_the_moment_it_is_set_and_a_lower_burst_caps_the_tokens() {
        let t0 = Instant::now();
        let mut rl = limiter(t0);
        for _ in 0..40 {
            assert_eq!(rl.check(t0), Verdict::Allow);
        }
        // One second at 20/s refills 20 tokens; from then on the rate is 2/s, burst 5.
        let t1 = t0 + Duration::from_secs(1);
        rl.reconfigure(2, 5, Duration::from_secs(5), t1);
        for _ in 0..5 {
            assert_eq!(rl.check(t1), Verdict::Allow);
        }
        assert_eq!(rl.check(t1), Verdict::Limit);
        assert_eq!(rl.check(t1 + Duration::from_millis(400)), Verdict::Limit);
        assert_eq!(rl.check(t1 + Duration::from_millis(500)), Verdict::Allow);
        // The same settings again change nothing.
        rl.reconfigure(
            2,
            5,
            Duration::from_secs(5),
            t1 + Duration::from_millis(500),
        );
        assert_eq!(rl.check(t1 + Duration::from_millis(500)), Verdict::Limit);
    }

    #[test]
    fn a_charge_takes_tokens_and_may_leave_a_debt_of_one_burst() {
        let t0 = Instant::now();
        let mut rl = limiter(t0);
        assert_eq!(rl.check(t0), Verdict::Allow);
        rl.charge(100.0);
        assert_eq!(rl.check(t0), Verdict::Limit);
        // The debt is one burst (40 tokens) plus the token needed: 41 / 20 per second.
        assert_eq!(rl.check(t0 + Duration::from_millis(2_000)), Verdict::Limit);
        assert_eq!(rl.check(t0 + Duration::from_millis(2_060)), Verdict::Allow);
    }

    #[test]
    fn sustained_excess_disconnects_but_pauses_forgive() {
        let t0 = Instant::now();
        let mut rl = limiter(t0);
        for _ in 0..40 {
            rl.check(t0);
        }
        // Flooding: a refusal every 10 ms for five seconds.
        let mut verdict = Verdict::Allow;
        for i in 1..=600 {
            verdict = rl.check(t0 + Duration::from_millis(10 * i));
            if verdict == Verdict::Disconnect {
                // The streak began with the first refusal, at 10 ms.
                assert!((501..=503).contains(&i), "disconnected after {} ms", 10 * i);
                break;
            }
        }
        assert_eq!(verdict, Verdict::Disconnect);

        // A client that backs off for a second starts a new streak.
        let t1 = Instant::now();
        let mut rl = limiter(t1);
        for _ in 0..40 {
            rl.check(t1);
        }
        assert_eq!(rl.check(t1 + Duration::from_millis(1)), Verdict::Limit);
        for second in 1..=10u64 {
            // Three refusals in quick succession, then a pause longer than a second.
            let at = t1 + Duration::from_millis(1_100 * second);
            while rl.check(at) == Verdict::Allow {}
            assert_eq!(rl.check(at), Verdict::Limit);
        }
    }
}
