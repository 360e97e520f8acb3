//! The outbox: every `send` accepted for storage and not yet answered, in order.
//!
//! Sessions push into it; Persistence drains it in batches. It lives outside Persistence's
//! state, so a restarted Persistence finds every write its predecessor had accepted, including
//! the batch that was in flight. It is bounded by `storage.max_pending`: each write holds one
//! permit of a semaphore, returned when the write is answered; a session that finds no permit
//! answers `unavailable` at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot};
use tokio::time::Instant;

use crate::connection::Outbound;
use peroxo_protocol::domain::SessionId;
use peroxo_protocol::domain::{NewMessage, StoredMessage};
use peroxo_protocol::{ProtocolError, ReqId, ServerFrame};

/// Who is waiting for a write's answer.
pub enum Origin {
    /// A client's connection, which outlives any session actor: the `ack` or `error` frame is
    /// queued to it.
    Connection(Outbound),
    /// A request of the server API, waiting on the other end.
    Api(oneshot::Sender<Answer>),
}

/// What a server API request is told of its write: committed (with whether it was a
/// duplicate), or refused.
pub type Answer = Result<(StoredMessage, bool), ProtocolError>;

impl Origin {
    /// Tells the origin its write is committed.
    pub fn ack(self, message: &StoredMessage, req_id: Option<&ReqId>, duplicate: bool) {
        match self {
            Origin::Connection(outbound) => {
                outbound.send(&ack_frame(message, req_id, duplicate));
            }
            Origin::Api(answer) => {
                let _ = answer.send(Ok((message.clone(), duplicate)));
            }
        }
    }

    /// Tells the origin its write was refused.
    pub fn refuse(self, error: ProtocolError) {
        match self {
            Origin::Connection(outbound) => {
                outbound.error(&error);
            }
            Origin::Api(answer) => {
                let _ = answer.send(Err(error));
            }
        }
    }

    /// Charges a connection's rate for what a group send turned out to cost (the server API
    /// is rated per request).
    pub fn owe_rate(&self, tokens: u32) {
        if let Origin::Connection(outbound) = self {
            outbound.owe_rate(tokens);
        }
    }

    /// The session that sent it, which gets the answer instead of a copy.
    pub fn session_id(&self) -> Option<SessionId> {
        match self {
            Origin::Connection(outbound) => Some(outbound.session_id()),
            Origin::Api(_) => None,
        }
    }
}

fn ack_frame<'a>(
    message: &'a StoredMessage,
    req_id: Option<&'a ReqId>,
    duplicate: bool,
) -> ServerFrame<'a> {
    ServerFrame::Ack {
        req_id: req_id.map(std::borrow::Cow::Borrowed),
        client_msg_id: std::borrow::Cow::Borrowed(&message.client_msg_id),
        message_id: message.message_id.to_string(),
        conversation_id: message.conversation_id(),
        seq: message.sender_seq,
        ts: message.ts,
        duplicate,
    }
}

/// An accepted `send`, waiting to be committed.
pub struct PendingWrite {
    pub message: NewMessage,
    /// Where the `ack` goes.
    pub origin: Origin,
    pub req_id: Option<ReqId>,
    /// The outbox places it holds: 1 for a direct message, the group's member count (as
    /// last seen) for a group message, so the bound counts stored rows.
    pub rows: u32,
    /// Set when an append call carrying it failed without an answer: it may have been
    /// committed, so a `duplicate` outcome is its own first commit.
    pub retried: bool,
    /// When the session accepted it.
    pub accepted_at: Instant,
    /// Its place in the outbox, released when the write is answered (dropped).
    _permit: OwnedSemaphorePermit,
}

/// Why a write was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many messages are waiting for storage; retry later")]
    Full,
    #[error("the server is shutting down; reconnect and retry")]
    ShuttingDown,
}

pub struct Outbox {
    queues: Mutex<Queues>,
    permits: Arc<Semaphore>,
    capacity: usize,
    /// True while a wake-up is on its way to Persistence, so a burst of writes sends one.
    wake_pending: AtomicBool,
    /// Set when shutdown starts draining: no write is accepted any more.
    closing: AtomicBool,
    /// The most writes ever pending at once, so operators (and the fault suite) can see how
    /// close the node came to `storage.max_pending`.
    peak: AtomicUsize,
}

#[derive(Default)]
pub struct Queues {
    /// Writes waiting for an append call.
    pub waiting: VecDeque<PendingWrite>,
    /// The batch whose append call is under way.
    pub in_flight: Vec<PendingWrite>,
}

impl Queues {
    /// Puts the in-flight batch back at the front of the queue, in order.
    pub fn requeue_in_flight(&mut self) {
        for mut write in self.in_flight.drain(..).rev() {
            write.retried = true;
            self.waiting.push_front(write);
        }
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("pending", &self.pending())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            queues: Mutex::new(Queues::default()),
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            wake_pending: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            peak: AtomicUsize::new(0),
        }
    }

    /// Accepts a write of `rows` places unless the outbox lacks them. Returns whether
    /// Persistence must be woken (no wake-up is on its way yet).
    pub fn push(
        &self,
        message: NewMessage,
        origin: Origin,
        req_id: Option<ReqId>,
        rows: u32,
    ) -> Result<bool, Refused> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Refused::ShuttingDown);
        }
        // A group larger than the whole outbox still fits when the outbox is empty.
        let rows = rows.clamp(1, u32::try_from(self.capacity).unwrap_or(u32::MAX));
        let permit = Arc::clone(&self.permits)
            .try_acquire_many_owned(rows)
            .map_err(|e| match e {
                TryAcquireError::NoPermits => Refused::Full,
                TryAcquireError::Closed => Refused::ShuttingDown,
            })?;
        self.peak.fetch_max(self.pending(), Ordering::Relaxed);
        self.lock().waiting.push_back(PendingWrite {
            message,
            origin,
            req_id,
            rows,
            retried: false,
            accepted_at: Instant::now(),
            _permit: permit,
        });
        Ok(!self.wake_pending.swap(true, Ordering::AcqRel))
    }

    /// Called by Persistence when a wake-up arrives, before it looks at the queue.
    pub fn woken(&self) {
        self.wake_pending.store(false, Ordering::Release);
    }

    /// The queues, for Persistence.
    pub fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().expect("outbox poisoned")
    }

    /// Writes accepted and not yet answered.
    pub fn pending(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    /// The most writes that were ever pending at once since the node started.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Refuses new writes and waits until every accepted one has been answered, for at
    /// most `timeout`. Returns whether the outbox drained. New writes stay refused after.
    pub async fn close_and_drain(&self, timeout: Duration) -> bool {
        self.closing.store(true, Ordering::Release);
        let all = u32::try_from(self.capacity).unwrap_or(u32::MAX);
        // Queued first in line, the drain takes every permit as it is released: sessions
        // find none from now on.
        let drained = tokio::time::timeout(timeout, self.permits.acquire_many(all)).await;
        self.permits.close();
        matches!(drained, Ok(Ok(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(client_msg_id: &str) -> NewMessage {
        NewMessage {
            tenant: "t".to_owned(),
            sender: "alice".to_owned(),
            recipient: "bob".to_owned(),
            client_msg_id: client_msg_id.to_owned(),
            text: "hi".to_owned(),
            reply_to: None,
        }
    }

    fn push(outbox: &Outbox, outbound: &Outbound, id: &str) -> Result<bool, Refused> {
        outbox.push(message(id), Origin::Connection(outbound.clone()), None, 1)
    }

    fn waiting_ids(outbox: &Outbox) -> Vec<String> {
        let queues = outbox.lock();
        queues
            .waiting
            .iter()
            .map(|w| w.message.client_msg_id.clone())
            .collect()
    }

    #[test]
    fn a_burst_of_writes_wakes_persistence_once_until_it_looks() {
        let outbox = Outbox::new(8);
        let (outbound, _queue) = Outbound::new(SessionId::next(), 8, Arc::default());
        assert_eq!(push(&outbox, &outbound, "1"), Ok(true));
        assert_eq!(push(&outbox, &outbound, "2"), Ok(false));
        outbox.woken();
        assert_eq!(push(&outbox, &outbound, "3"), Ok(true));
        assert_eq!(waiting_ids(&outbox), ["1", "2", "3"]);
    }

    #[test]
    fn a_full_outbox_refuses_until_a_write_is_answered() {
        let outbox = Outbox::new(2);
        let (outbound, _queue) = Outbound::new(SessionId::next(), 8, Arc::default());
        push(&outbox, &outbound, "1").unwrap();
        push(&outbox, &outbound, "2").unwrap();
        assert_eq!(push(&outbox, &outbound, "3"), Err(Refused::Full));
        assert_eq!((outbox.pending(), outbox.peak()), (2, 2));
        // Answering a write drops it, and its place is free again.
        let answered = outbox.lock().waiting.pop_front();
        drop(answered);
        assert_eq!(outbox.pending(), 1);
        assert!(push(&outbox, &outbound, "3").is_ok());
        assert_eq!(outbox.peak(), 2);
    }

    #[test]
    fn a_failed_batch_goes_back_first_in_order_and_marked_retried() {
        let outbox = Outbox::new(8);
        let (outbound, _queue) = Outbound::new(SessionId::next(), 8, Arc::default());
        for id in ["1", "2", "3"] {
            push(&outbox, &outbound, id).unwrap();
        }
        let mut queues = outbox.lock();
        let batch: Vec<_> = queues.waiting.drain(..2).collect();
        queues.in_flight = batch;
        queues.requeue_in_flight();
        let order: Vec<_> = queues
            .waiting
            .iter()
            .map(|w| (w.message.client_msg_id.as_str(), w.retried))
            .collect();
        assert_eq!(order, [("1", true), ("2", true), ("3", false)]);
        assert!(queues.in_flight.is_empty());
    }

    #[tokio::test]
    async fn draining_refuses_new_writes_and_waits_for_the_accepted_ones() {
        let outbox = Arc::new(Outbox::new(4));
        let (outbound, _queue) = Outbound::new(SessionId::next(), 8, Arc::default());
        push(&outbox, &outbound, "1").unwrap();
        let drain = tokio::spawn({
            let outbox = Arc::clone(&outbox);
            async move { outbox.close_and_drain(Duration::from_secs(10)).await }
        });
        // Once draining has begun, a send is told the server is shutting down.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match push(&outbox, &outbound, "2") {
                Err(Refused::ShuttingDown) => break,
                // Not draining yet: take the write back out and look again.
                Ok(_) => drop(outbox.lock().waiting.pop_back()),
                Err(Refused::Full) => panic!("four places, one taken"),
            }
            assert!(Instant::now() < deadline, "draining never refused a write");
            tokio::task::yield_now().await;
        }
        drop(outbox.lock().waiting.pop_front());
        assert!(drain.await.unwrap(), "the outbox drained");
        assert_eq!(push(&outbox, &outbound, "3"), Err(Refused::ShuttingDown));
    }

    #[tokio::test]
    async fn a_drain_that_outlasts_its_timeout_says_so() {
        let outbox = Outbox::new(4);
        let (outbound, _queue) = Outbound::new(SessionId::next(), 8, Arc::default());
        push(&outbox, &outbound, "1").unwrap();
        assert!(!outbox.close_and_drain(Duration::from_millis(1)).await);
    }
}
