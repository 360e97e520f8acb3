//! The pacer: hands each command to its session's writer when the command is due.
//!
//! [`pace_each`] is the clock alone, for scenarios whose commands are not WebSocket frames
//! (`api` hands them to HTTP connections). It runs on a thread of its own, so that the pace comes from the clock with sub-millisecond
//! precision instead of from the runtime's 1 ms timer, and so that a busy runtime cannot hold
//! it back. It never waits for replies (open loop): a writer whose socket is backed up just
//! finds more commands queued, and their latency clocks are already running.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::{Plan, Shared, Timeline};

/// Queues every command of the plan to its session's outbox at its due time. Returns when
/// the last one is queued.
pub(super) fn pace<P: Plan>(shared: &Arc<Shared<P>>, outboxes: &[UnboundedSender<u32>]) {
    let live = &shared.ledger.live;
    pace_each(shared.start, shared.plan.timeline(), |i| {
        let outbox = &outboxes[shared.plan.sender(i) as usize];
        live.dispatched.fetch_add(1, Ordering::Relaxed);
        if outbox.send(i).is_err() {
            // The writer gave up on a failed connection.
            live.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Calls `hand(i)` for every command `i` of `timeline` at its due time after `start`, on the
/// calling thread (run it on a thread of its own). Returns when the last one is handed over.
pub(crate) fn pace_each(start: Instant, timeline: &Timeline, mut hand: impl FnMut(u32)) {
    for i in 0..timeline.len() {
        sleep_until(start + timeline.due(i));
        hand(i);
    }
}

/// Sleeps until `due`; returns at once when it has passed.
fn sleep_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}
