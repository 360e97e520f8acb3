//! The pacer: hands each message to its sender's writer when the message is due.
//!
//! It runs on a thread of its own, so that the pace comes from the clock with sub-millisecond
//! precision instead of from the runtime's 1 ms timer, and so that a busy runtime cannot hold
//! it back. It never waits for replies (open loop): a writer whose socket is backed up just
//! finds more messages queued, and their latency clocks are already running.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::peer::Shared;

/// Queues every message of the plan to its sender's outbox at its due time. Returns when
/// the last one is queued.
pub(super) fn pace(shared: &Arc<Shared>, outboxes: &[UnboundedSender<u32>]) {
    let live = &shared.ledger.live;
    for i in 0..shared.plan.len() {
        sleep_until(shared.start + shared.plan.due(i));
        let outbox = &outboxes[shared.plan.sender(i) as usize];
        live.dispatched.fetch_add(1, Ordering::Relaxed);
        if outbox.send(i).is_err() {
            // The writer gave up on a failed connection.
            live.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sleeps until `due`; returns at once when it has passed.
fn sleep_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}
