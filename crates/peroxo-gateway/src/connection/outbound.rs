//! The bounded queue of frames towards one client: [`Outbound`] is its sending side, held by
//! the session, the Router and Persistence; [`OutboundQueue`] is the receiving side, owned by
//! the writer task. The connection's shared state (its end, its close cause, when the client
//! was last heard from, its `welcome`) lives here too, because every part of the connection
//! reaches it through the queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use axum::extract::ws::Utf8Bytes;
use peroxo_protocol::domain::SessionId;
use peroxo_protocol::{CloseCause, ProtocolError, ServerFrame};
use tokio::sync::Notify;

use super::heartbeat::LastHeard;
use super::wait::{lock, wait_for};
use crate::live::QueueBound;
use crate::telemetry::Metrics;

/// Whether a frame may be dropped to spare a queue that is more than half full (presence and
/// typing events may: a client recovers them from the next event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Droppable {
    No,
    Yes,
}

/// What the writer takes from the queue.
pub(super) enum Item {
    Text(Utf8Bytes),
    /// Close once the frames queued before this have been written.
    Close(CloseCause),
}

/// The sending side of one client's queue. Cheap to clone: the Router, Persistence and the
/// session all hold one.
pub struct Outbound {
    session_id: SessionId,
    pub(super) shared: Arc<Shared>,
}

/// One connection's queue, shared by its senders and its writer.
///
/// A deque behind a mutex rather than a channel: an idle connection holds no buffer at all
/// (a channel allocates its first block of slots up front), and the writer gives the buffer
/// back whenever it has written everything.
pub(super) struct Shared {
    /// The most frames queued at once (`limits.outbound_queue`, changed by a reload).
    capacity: QueueBound,
    /// The node's metrics, for the error frames queued here and the connection's record.
    pub(super) metrics: Arc<Metrics>,
    /// Why the connection closes: the first close asked for wins, whichever way it goes out.
    cause: OnceLock<CloseCause>,
    queue: Mutex<Queue>,
    /// Wakes the writer: a frame was queued, a close was asked for, or the last sender left.
    wake: Notify,
    /// `Outbound` handles alive; when the last one goes, nothing more can be queued.
    senders: AtomicUsize,
    /// Set when the connection has ended, whichever side ended it.
    ended: AtomicBool,
    /// Wakes everyone waiting for the end (the reader and the writer).
    end_wake: Notify,
    /// When the client was last heard from: the reader records it, the writer's heartbeat
    /// reads it.
    pub(super) last_heard: LastHeard,
    /// The connection's first frame, queued exactly once.
    welcome: WelcomeSlot,
    /// Rate tokens the connection owes for group sends that reached more members than they
    /// were charged for (see [`Outbound::owe_rate`]).
    rate_debt: AtomicU32,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    /// Set once to close without waiting for queued frames (the queue may be full).
    close_now: Option<CloseCause>,
    /// The writer has stopped: nothing queued would be written.
    writer_gone: bool,
    /// The close frame's reason when it is not its cause's own text (a disconnection by the
    /// server API that gave one).
    reason: Option<Box<str>>,
}

/// What the writer finds when it looks at its queue.
pub(super) enum Next {
    Item(Item),
    /// A close that goes out at once, before whatever is still queued.
    CloseNow(CloseCause),
    /// The connection has ended, or nothing is queued and every sender is gone: nothing more
    /// will be written.
    Finished,
    Empty,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("session_id", &self.session_id)
            .field("queued", &self.shared.lock().items.len())
            .finish()
    }
}

impl Clone for Outbound {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Self {
            session_id: self.session_id,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.wake.notify_one();
        }
    }
}

/// The receiving side of a queue, consumed by the writer task.
pub struct OutboundQueue {
    pub(super) shared: Arc<Shared>,
}

impl Drop for OutboundQueue {
    /// The writer is gone (also when it panicked): nothing more will be written, and the
    /// connection has ended.
    fn drop(&mut self) {
        let dropped = {
            let mut queue = self.shared.lock();
            queue.writer_gone = true;
            std::mem::take(&mut queue.items)
        };
        drop(dropped);
        self.shared.end();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        lock(&self.queue)
    }

    /// The writer's own reason to close (the idle timeout) yields to one asked for earlier.
    pub(super) fn first_cause(&self, cause: CloseCause) -> CloseCause {
        *self.cause.get_or_init(|| cause)
    }

    /// The close frame's reason asked for with [`Outbound::close_with_reason`], if any.
    pub(super) fn close_reason(&self) -> Option<Box<str>> {
        self.lock().reason.take()
    }

    /// Marks the connection ended and wakes everyone waiting for it.
    pub(super) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.end_wake.notify_waiters();
        self.wake.notify_one();
    }

    pub(super) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Completes when the connection has ended.
    pub(super) async fn ended(&self) {
        wait_for(&self.end_wake, || self.has_ended().then_some(())).await;
    }
}

impl OutboundQueue {
    /// Takes the next thing to do: a close asked for at once comes before any queued frame.
    pub(super) fn next(&self) -> Next {
        let mut queue = self.shared.lock();
        if let Some(cause) = queue.close_now {
            return Next::CloseNow(cause);
        }
        if self.shared.has_ended() {
            return Next::Finished;
        }
        match queue.items.pop_front() {
            Some(item) => Next::Item(item),
            None => {
                // Written everything: give the buffer back until the next frame.
                queue.items = VecDeque::new();
                if self.shared.senders.load(Ordering::Acquire) == 0 {
                    Next::Finished
                } else {
                    Next::Empty
                }
            }
        }
    }

    /// The close asked for at once, if any.
    pub(super) fn close_now(&self) -> Option<CloseCause> {
        self.shared.lock().close_now
    }

    /// The text frames queued so far, taken out of the queue (for tests of what the parts
    /// of the node send to a connection).
    #[cfg(test)]
    pub fn take_texts(&self) -> Vec<String> {
        let mut texts = Vec::new();
        while let Next::Item(Item::Text(text)) = self.next() {
            texts.push(text.as_str().to_owned());
        }
        texts
    }

    /// Completes when there may be something new to look at (see [`OutboundQueue::next`]).
    pub(super) async fn woken(&self) {
        self.shared.wake.notified().await;
    }
}

impl Outbound {
    /// A queue of `capacity` frames for `session_id`, counted in `metrics`.
    pub fn new(
        session_id: SessionId,
        capacity: impl Into<QueueBound>,
        metrics: Arc<Metrics>,
    ) -> (Self, OutboundQueue) {
        let shared = Arc::new(Shared {
            capacity: capacity.into(),
            metrics,
            cause: OnceLock::new(),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            senders: AtomicUsize::new(1),
            ended: AtomicBool::new(false),
            end_wake: Notify::new(),
            last_heard: LastHeard::new(),
            welcome: WelcomeSlot::default(),
            rate_debt: AtomicU32::new(0),
        });
        let outbound = Self {
            session_id,
            shared: Arc::clone(&shared),
        };
        (outbound, OutboundQueue { shared })
    }

    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The connection's `welcome`, queued by whoever registers the connection first.
    pub fn welcome(&self) -> &WelcomeSlot {
        &self.shared.welcome
    }

    /// Records `tokens` more that the connection's rate limit owes: a group send is charged
    /// by the member count last seen on this node, and storage may report more members
    /// (the group grew, or this node had never seen it). The session takes the debt before
    /// judging the next command ([`Outbound::take_rate_debt`]).
    pub fn owe_rate(&self, tokens: u32) {
        let _ = self
            .shared
            .rate_debt
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |owed| {
                Some(owed.saturating_add(tokens))
            });
    }

    /// Takes what the connection owes its rate limit, leaving nothing owed.
    pub fn take_rate_debt(&self) -> u32 {
        self.shared.rate_debt.swap(0, Ordering::Relaxed)
    }

    /// Queues the `welcome` unless it was queued already (or is not built yet).
    pub fn send_welcome_once(&self) {
        self.shared.welcome.send_once(self);
    }

    /// Encodes and queues `frame`. Presence and typing events are dropped when the queue is
    /// more than half full; any frame that finds it full closes the connection with 1013
    /// (the client recovers what it missed with `sync`). Returns whether the frame was queued.
    pub fn send(&self, frame: &ServerFrame<'_>) -> bool {
        if frame.is_droppable() && self.is_past_half_full() {
            return false;
        }
        self.send_text(Utf8Bytes::from(frame.encode()), Droppable::No)
    }

    /// Queues an already encoded frame (one encoding shared by several recipients). A
    /// [`Droppable::Yes`] frame is dropped when the queue is more than half full.
    pub fn send_text(&self, text: Utf8Bytes, droppable: Droppable) -> bool {
        let mut queue = self.shared.lock();
        if queue.writer_gone {
            return false;
        }
        let queued = queue.items.len();
        let capacity = self.shared.capacity.get();
        if droppable == Droppable::Yes && queued > capacity / 2 {
            return false;
        }
        if queued >= capacity {
            drop(queue);
            self.close_now(CloseCause::SlowConsumer);
            return false;
        }
        queue.items.push_back(Item::Text(text));
        drop(queue);
        self.shared.wake.notify_one();
        true
    }

    fn is_past_half_full(&self) -> bool {
        self.shared.lock().items.len() > self.shared.capacity.get() / 2
    }

    /// Queues an `error` frame.
    pub fn error(&self, error: &ProtocolError) -> bool {
        self.shared.metrics.error(error.code);
        self.send(&error.to_frame())
    }

    /// Closes after the frames already queued have been written. When a close was asked for
    /// already, that one stands.
    pub fn close_after_pending(&self, cause: CloseCause) {
        if self.shared.cause.set(cause).is_err() {
            return;
        }
        let mut queue = self.shared.lock();
        if queue.writer_gone {
            return;
        }
        if queue.items.len() >= self.shared.capacity.get() {
            drop(queue);
            self.close_now(cause);
            return;
        }
        queue.items.push_back(Item::Close(cause));
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// Closes after the frames already queued, with `reason` in the close frame instead of
    /// the cause's own text. When a close was asked for already, that one stands.
    pub fn close_with_reason(&self, cause: CloseCause, reason: &str) {
        if self.shared.cause.get().is_none() {
            self.shared.lock().reason = Some(reason.into());
        }
        self.close_after_pending(cause);
    }

    /// Closes at once; frames still queued are discarded. When a close was asked for already,
    /// it goes out now with its own cause.
    pub fn close_now(&self, cause: CloseCause) {
        let cause = self.shared.first_cause(cause);
        let mut queue = self.shared.lock();
        if queue.close_now.is_some() {
            return;
        }
        queue.close_now = Some(cause);
        drop(queue);
        self.shared.wake.notify_one();
    }
}

/// A connection's `welcome` frame, from the moment it is ready until it is queued.
///
/// Whoever registers the connection with a Router first queues it: the Router, right before
/// it makes the session reachable (so no delivery can overtake it), or the session itself
/// when no Router answers. Either way it is queued exactly once. It lives with the
/// connection's queue ([`Outbound::welcome`]).
#[derive(Debug, Default)]
pub struct WelcomeSlot(Mutex<Welcome>);

#[derive(Debug, Default)]
enum Welcome {
    /// The session is still reading the user's seq; it registers itself once it is ready.
    #[default]
    NotReady,
    Ready(Utf8Bytes),
    Sent,
}

impl WelcomeSlot {
    /// The frame is built; the connection may be registered from now on.
    pub fn ready(&self, frame: Utf8Bytes) {
        *lock(&self.0) = Welcome::Ready(frame);
    }

    /// Whether the connection may be registered (its welcome is built or already sent).
    pub fn is_ready(&self) -> bool {
        !matches!(*lock(&self.0), Welcome::NotReady)
    }

    /// Queues the welcome on `outbound` unless it was queued already.
    pub fn send_once(&self, outbound: &Outbound) {
        let mut welcome = lock(&self.0);
        match std::mem::replace(&mut *welcome, Welcome::Sent) {
            Welcome::Ready(frame) => {
                outbound.send_text(frame, Droppable::No);
            }
            Welcome::Sent => {}
            // Not built yet: nothing to send, and the session still has to.
            Welcome::NotReady => *welcome = Welcome::NotReady,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn text(s: &'static str) -> Utf8Bytes {
        Utf8Bytes::from_static(s)
    }

    /// What the writer would write next, as a string, for assertions.
    fn next_of(queue: &OutboundQueue) -> String {
        match queue.next() {
            Next::Item(Item::Text(t)) => format!("text {}", t.as_str()),
            Next::Item(Item::Close(cause)) => format!("close {}", cause.label()),
            Next::CloseNow(cause) => format!("close now {}", cause.label()),
            Next::Finished => "finished".to_owned(),
            Next::Empty => "empty".to_owned(),
        }
    }

    #[test]
    fn frames_go_out_in_order_and_a_full_queue_closes_the_connection() {
        let (outbound, queue) = Outbound::new(SessionId::next(), 2, Arc::default());
        assert!(outbound.send_text(text("a"), Droppable::No));
        assert!(outbound.send_text(text("b"), Droppable::No));
        assert!(!outbound.send_text(text("c"), Droppable::No));
        // The close goes out before what is still queued.
        assert_eq!(next_of(&queue), "close now slow_consumer");
        let (outbound, queue) = Outbound::new(SessionId::next(), 2, Arc::default());
        assert!(outbound.send_text(text("a"), Droppable::No));
        assert!(outbound.send_text(text("b"), Droppable::No));
        assert_eq!(next_of(&queue), "text a");
        assert_eq!(next_of(&queue), "text b");
        assert_eq!(next_of(&queue), "empty");
    }

    #[test]
    fn droppable_frames_are_dropped_past_half_full() {
        let (outbound, queue) = Outbound::new(SessionId::next(), 4, Arc::default());
        assert!(outbound.send_text(text("a"), Droppable::Yes));
        assert!(outbound.send_text(text("b"), Droppable::Yes));
        // Half full is not more than half full.
        assert!(outbound.send_text(text("c"), Droppable::Yes));
        assert!(!outbound.send_text(text("d"), Droppable::Yes));
        assert!(outbound.send_text(text("e"), Droppable::No));
        for expected in ["text a", "text b", "text c", "text e", "empty"] {
            assert_eq!(next_of(&queue), expected);
        }
    }

    #[test]
    fn the_first_close_wins_and_close_now_skips_what_is_queued() {
        let (outbound, queue) = Outbound::new(SessionId::next(), 8, Arc::default());
        outbound.send_text(text("a"), Droppable::No);
        outbound.close_after_pending(CloseCause::Shutdown);
        // A later close only hurries the first cause out.
        outbound.close_after_pending(CloseCause::RateAbuse);
        assert_eq!(next_of(&queue), "text a");
        assert_eq!(next_of(&queue), "close shutdown");
        let (outbound, queue) = Outbound::new(SessionId::next(), 8, Arc::default());
        outbound.send_text(text("a"), Droppable::No);
        outbound.close_after_pending(CloseCause::Shutdown);
        outbound.close_now(CloseCause::RateAbuse);
        assert_eq!(next_of(&queue), "close now shutdown");
    }

    #[test]
    fn the_writer_finishes_when_every_sender_is_gone_or_the_connection_ended() {
        let (outbound, queue) = Outbound::new(SessionId::next(), 8, Arc::default());
        let clone = outbound.clone();
        outbound.send_text(text("a"), Droppable::No);
        drop(outbound);
        assert_eq!(next_of(&queue), "text a");
        assert_eq!(next_of(&queue), "empty");
        drop(clone);
        assert_eq!(next_of(&queue), "finished");
        let (outbound, queue) = Outbound::new(SessionId::next(), 8, Arc::default());
        outbound.send_text(text("a"), Droppable::No);
        outbound.shared.end();
        assert_eq!(next_of(&queue), "finished");
    }

    #[test]
    fn nothing_is_queued_once_the_writer_is_gone() {
        let (outbound, queue) = Outbound::new(SessionId::next(), 8, Arc::default());
        drop(queue);
        assert!(!outbound.send_text(text("a"), Droppable::No));
        // Its end is the connection's end.
        assert!(outbound.shared.has_ended());
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_frame_and_waiters_by_the_end() {
        let (outbound, queue) = Outbound::new(SessionId::next(), 8, Arc::default());
        let writer = tokio::spawn(async move {
            loop {
                if let Next::Item(Item::Text(t)) = queue.next() {
                    return t.as_str().to_owned();
                }
                queue.woken().await;
            }
        });
        let shared = Arc::clone(&outbound.shared);
        let waiter = tokio::spawn(async move { shared.ended().await });
        tokio::task::yield_now().await;
        outbound.send_text(text("a"), Droppable::No);
        let deadline = Duration::from_secs(10);
        let written = tokio::time::timeout(deadline, writer).await;
        assert_eq!(written.expect("writer woken").expect("writer task"), "a");
        outbound.shared.end();
        tokio::time::timeout(deadline, waiter)
            .await
            .expect("end waiter woken")
            .expect("waiter task");
    }
}
