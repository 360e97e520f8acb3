//! The book of an `api` run: what became of each message (sent, acked, refused, its
//! `message.created` event received), the latency histograms, and the counts the report shows.
//! The HTTP connections write the answers into it, the webhook receiver the events.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::histogram::Latency;
use crate::report::Tally;
use crate::traffic::Timeline;

/// A message's flags.
const SENT: u8 = 1;
const ACKED: u8 = 2;
const REFUSED: u8 = 4;
const EVENT: u8 = 8;

/// Counters, updated as things happen.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// HTTP requests written (one per message, or one per batch).
    pub(super) requests: AtomicU64,
    /// Acks that arrived during the measured window.
    pub(super) acked_in_window: AtomicU64,
    /// This run's `message.created` events that arrived during the measured window.
    pub(super) events_in_window: AtomicU64,
    /// Webhook deliveries (POSTs) whose signature held.
    pub(super) deliveries: AtomicU64,
    /// Events received again (the same event id), dropped by the dedupe.
    pub(super) duplicates: AtomicU64,
    /// Events of other kinds, or `message.created` events of messages this run did not send.
    pub(super) foreign: AtomicU64,
    /// Deliveries refused because their signature or timestamp did not verify.
    pub(super) bad_signatures: AtomicU64,
    /// Deliveries whose body was not the documented JSON.
    pub(super) undecodable: AtomicU64,
    /// A second `message.created` (another event id) for a message that already had one, or
    /// one naming a message index outside the run.
    pub(super) misrouted: AtomicU64,
}

/// Everything an `api` run records.
pub(super) struct Book {
    pub(super) timeline: Timeline,
    /// When message 0 is due; message `i` is due at `start + timeline.due(i)`.
    pub(super) start: Instant,
    /// The measured window, as offsets from `start`.
    window: (Duration, Duration),
    /// The prefix of this run's `client_msg_id`s: message `i` is `<tag>-<i>`.
    pub(super) tag: String,
    flags: Vec<AtomicU8>,
    pub(super) counters: Counters,
    /// Refusals by error code.
    pub(super) errors: Mutex<Tally>,
    /// From each measured message's due time to its answer.
    pub(super) send_to_answer: Mutex<Latency>,
    /// From each measured message's commit (its event's `ts`) to its event's arrival.
    pub(super) commit_to_webhook: Mutex<Latency>,
    /// The tenant the deliveries name (the API key's).
    pub(super) tenant: Mutex<Option<String>>,
    /// Whether acked messages are expected to have events (a receiver runs).
    expects_events: bool,
}

/// The message counts read back from the flags.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fates {
    pub(super) sent: u64,
    pub(super) acked: u64,
    pub(super) refused: u64,
    /// Sent and never answered.
    pub(super) unanswered: u64,
    /// Messages whose `message.created` arrived.
    pub(super) with_event: u64,
    /// Acked messages whose event never arrived.
    pub(super) missing: u64,
    /// Messages with an event that were not acked (refused or unanswered, yet committed: a
    /// `504 timeout` is committed later).
    pub(super) event_without_ack: u64,
}

impl Book {
    /// The book of a run tagged with the time it starts; `expects_events`: a receiver runs.
    pub(super) fn new(
        timeline: Timeline,
        window: (Duration, Duration),
        start: Instant,
        expects_events: bool,
    ) -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut book = Self::with_tag(timeline, window, start, format!("api{millis}"));
        book.expects_events = expects_events;
        book
    }

    pub(super) fn with_tag(
        timeline: Timeline,
        window: (Duration, Duration),
        start: Instant,
        tag: String,
    ) -> Self {
        Self {
            flags: (0..timeline.len()).map(|_| AtomicU8::new(0)).collect(),
            timeline,
            start,
            window,
            tag,
            counters: Counters::default(),
            errors: Mutex::new(Tally::default()),
            send_to_answer: Mutex::new(Latency::new()),
            commit_to_webhook: Mutex::new(Latency::new()),
            tenant: Mutex::new(None),
            expects_events: true,
        }
    }

    /// The `client_msg_id` of message `i`.
    pub(super) fn client_msg_id(&self, i: u32) -> String {
        format!("{}-{i}", self.tag)
    }

    /// The message a `client_msg_id` names: `None` when it is not this run's, `Some(Err)`
    /// when it is but names no message of the run.
    pub(super) fn index_of(&self, client_msg_id: &str) -> Option<Result<u32, ()>> {
        let rest = client_msg_id
            .strip_prefix(self.tag.as_str())?
            .strip_prefix('-')?;
        Some(
            rest.parse::<u32>()
                .ok()
                .filter(|i| *i < self.timeline.len())
                .ok_or(()),
        )
    }

    fn in_window(&self, at: Instant) -> bool {
        let offset = at.saturating_duration_since(self.start);
        self.window.0 <= offset && offset < self.window.1
    }

    pub(super) fn sent(&self, i: u32) {
        self.flags[i as usize].fetch_or(SENT, Ordering::Relaxed);
    }

    /// Message `i` was answered with its ack now.
    pub(super) fn acked(&self, i: u32) {
        let now = Instant::now();
        self.flags[i as usize].fetch_or(ACKED, Ordering::Relaxed);
        if self.timeline.is_measured(i) {
            let due = self.start + self.timeline.due(i);
            lock(&self.send_to_answer).record(now.saturating_duration_since(due));
        }
        if self.in_window(now) {
            self.counters
                .acked_in_window
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Message `i` was refused (or its request failed) with `code`.
    pub(super) fn refused(&self, i: u32, code: &str) {
        self.flags[i as usize].fetch_or(REFUSED, Ordering::Relaxed);
        lock(&self.errors).add(code, 1);
    }

    /// The `message.created` event of message `i`, committed at `ts_ms` (Unix ms), arrived at
    /// `now_us` (Unix µs). Returns false when the message already had one.
    pub(super) fn event(&self, i: u32, ts_ms: i64, now_us: i64) -> bool {
        let before = self.flags[i as usize].fetch_or(EVENT, Ordering::Relaxed);
        if before & EVENT != 0 {
            return false;
        }
        if self.timeline.is_measured(i) {
            let lag = now_us.saturating_sub(ts_ms.saturating_mul(1_000)).max(0);
            lock(&self.commit_to_webhook).record_us(lag as u64);
        }
        if self.in_window(Instant::now()) {
            self.counters
                .events_in_window
                .fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Whether every message sent has been answered and every acked one has its event.
    pub(super) fn is_drained(&self) -> bool {
        let fates = self.fates();
        fates.unanswered == 0 && fates.missing == 0
    }

    pub(super) fn fates(&self) -> Fates {
        let mut fates = Fates::default();
        for flags in &self.flags {
            let f = flags.load(Ordering::Relaxed);
            let count = |bit: u8| u64::from(f & bit != 0);
            fates.sent += count(SENT);
            fates.acked += count(ACKED);
            fates.refused += count(REFUSED);
            fates.with_event += count(EVENT);
            let answered = f & (ACKED | REFUSED) != 0;
            fates.unanswered += u64::from(f & SENT != 0 && !answered);
            fates.missing += u64::from(self.expects_events && f & ACKED != 0 && f & EVENT == 0);
            fates.event_without_ack += u64::from(f & EVENT != 0 && f & ACKED == 0);
        }
        fates
    }
}

/// Locks a mutex whose holders never panic while holding it (and if one did, its counts are
/// still worth reporting).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
