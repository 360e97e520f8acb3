//! Keeping a connection honest: the writer pings a client that has been silent for
//! `limits.ping_interval_secs` and closes one silent for `limits.idle_timeout_secs`. The
//! reader records when the client was last heard from ([`LastHeard`]); the writer's
//! [`Pacemaker`] decides what to do when its timer fires.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How often and how patiently the writer checks that the client is alive.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// A connection silent this long is pinged.
    pub ping_interval: Duration,
    /// A connection silent this long is closed; also the most time a close frame may take to
    /// reach a client that does not read.
    pub idle_timeout: Duration,
}

impl Heartbeat {
    /// The heartbeat `limits` configure.
    pub fn of(limits: &peroxo_config::LimitsConfig) -> Self {
        Self {
            ping_interval: limits.ping_interval(),
            idle_timeout: limits.idle_timeout(),
        }
    }
}

/// When the client was last heard from, shared by the reader (which records it) and the
/// writer (which pings and times out by it).
pub(super) struct LastHeard {
    start: Instant,
    /// Nanoseconds after `start` (exact, so a pong is never taken for older than its ping).
    at_ns: AtomicU64,
    /// Set while the reader waits for its session to take a frame. The reader does not read
    /// meanwhile, so whatever the client sends waits in the socket: a busy server must not
    /// take that silence for the client's.
    handing_over: AtomicBool,
}

impl LastHeard {
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
            at_ns: AtomicU64::new(0),
            handing_over: AtomicBool::new(false),
        }
    }

    pub(super) fn record(&self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.at_ns.store(ns, Ordering::Relaxed);
    }

    /// Marks the start or the end of a hand-over; its end counts as hearing from the client.
    pub(super) fn handing_over(&self, busy: bool) {
        self.handing_over.store(busy, Ordering::Relaxed);
        if !busy {
            self.record();
        }
    }

    /// When the client was last heard from; now, while the reader is handing over a frame.
    fn at(&self) -> Instant {
        if self.handing_over.load(Ordering::Relaxed) {
            return Instant::now();
        }
        self.start + Duration::from_nanos(self.at_ns.load(Ordering::Relaxed))
    }
}

/// What the heartbeat decides when its timer fires.
pub(super) enum Pulse {
    /// The client has been silent too long: close.
    Close,
    /// The client has been silent a while and not been pinged since: ping it.
    Ping,
    /// Nothing to do until the next check.
    Wait,
}

/// The writer's view of the heartbeat: when the client was last pinged.
pub(super) struct Pacemaker<'a> {
    pub(super) heartbeat: Heartbeat,
    pub(super) last_heard: &'a LastHeard,
    pub(super) pinged_at: Option<Instant>,
}

impl Pacemaker<'_> {
    pub(super) fn pulse(&self) -> Pulse {
        let heard = self.last_heard.at();
        let now = Instant::now();
        if now >= heard + self.heartbeat.idle_timeout {
            Pulse::Close
        } else if !self.awaiting_answer() && now >= heard + self.heartbeat.ping_interval {
            Pulse::Ping
        } else {
            Pulse::Wait
        }
    }

    /// One ping per silence: after it, wait for an answer until the idle timeout.
    fn awaiting_answer(&self) -> bool {
        self.pinged_at.is_some_and(|at| at >= self.last_heard.at())
    }

    pub(super) fn next_check(&self) -> Instant {
        if self.awaiting_answer() {
            self.idle_deadline()
        } else {
            self.last_heard.at() + self.heartbeat.ping_interval
        }
    }

    /// When the client will have been silent too long, unless it is heard from before.
    pub(super) fn idle_deadline(&self) -> Instant {
        self.last_heard.at() + self.heartbeat.idle_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacemaker(last_heard: &LastHeard) -> Pacemaker<'_> {
        Pacemaker {
            heartbeat: Heartbeat {
                ping_interval: Duration::from_secs(25),
                idle_timeout: Duration::from_secs(60),
            },
            last_heard,
            pinged_at: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_then_closed() {
        let last_heard = LastHeard::new();
        let pacemaker = pacemaker(&last_heard);
        assert!(matches!(pacemaker.pulse(), Pulse::Wait));
        tokio::time::advance(Duration::from_secs(26)).await;
        assert!(matches!(pacemaker.pulse(), Pulse::Ping));
        tokio::time::advance(Duration::from_secs(35)).await;
        assert!(matches!(pacemaker.pulse(), Pulse::Close));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_whose_frame_waits_for_its_busy_session_is_not_idle() {
        let last_heard = LastHeard::new();
        let pacemaker = pacemaker(&last_heard);
        pacemaker.last_heard.handing_over(true);
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(matches!(pacemaker.pulse(), Pulse::Wait));
        // The hand-over's end counts as hearing from the client.
        pacemaker.last_heard.handing_over(false);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!matches!(pacemaker.pulse(), Pulse::Close));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(pacemaker.pulse(), Pulse::Close));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_stuck_past_the_ping_time_waits_for_the_idle_timeout() {
        let last_heard = LastHeard::new();
        let pacemaker = pacemaker(&last_heard);
        tokio::time::advance(Duration::from_secs(26)).await;
        assert!(matches!(pacemaker.pulse(), Pulse::Ping));
        // The time to ping has passed; a writer that cannot ping waits for the idle deadline.
        assert!(pacemaker.next_check() <= Instant::now());
        assert_eq!(
            pacemaker.idle_deadline(),
            Instant::now() + Duration::from_secs(34)
        );
    }
}
