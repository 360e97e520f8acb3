//! One client's WebSocket: the bounded queue of frames towards it ([`Outbound`]) and the two
//! tasks that own the socket.
//!
//! - The **writer** task owns the sending half. It takes frames from the queue, writes every
//!   frame already waiting before one flush, and sends the close frame when asked.
//! - The **reader** task owns the receiving half. It decodes each frame and hands it to the
//!   current session actor, and waits until the actor has taken it before reading the next:
//!   a client that sends faster than its session works is pushed back by TCP.
//!
//! The writer also keeps the connection honest: it pings a client that has been silent for
//! `limits.ping_interval_secs` and closes one silent for `limits.idle_timeout_secs`.
//!
//! Both tasks outlive any one session actor: when SessionSupervisor restarts a crashed
//! session, the new actor takes over the same queue and the reader follows it through a
//! `watch` channel. The connection ends when either task ends (`done` is cancelled).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ractor::ActorRef;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::actors::session::{Inbound, SessionMsg};
use crate::domain::SessionId;
use crate::protocol::{self, DecodeLimits, ProtocolError, ServerFrame};

/// WebSocket close codes PerOXO uses.
pub mod close_code {
    /// The session failed too often in a short time.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The client did not read fast enough, or the server cannot serve it now.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client sent a message or frame larger than `limits.max_message_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The client kept exceeding its command rate.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// The client's token expired and was not refreshed.
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// Why the server closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

enum Item {
    Text(Utf8Bytes),
    Close(CloseReason),
}

/// The sending side of one client's queue. Cheap to clone: the Router, Persistence and the
/// session all hold one.
#[derive(Clone)]
pub struct Outbound {
    session_id: SessionId,
    tx: mpsc::Sender<Item>,
    shared: Arc<Shared>,
}

struct Shared {
    capacity: usize,
    /// Set once to close without waiting for queued frames (the queue may be full).
    close_now: watch::Sender<Option<CloseReason>>,
    /// Cancelled when the connection has ended, whichever side ended it.
    done: CancellationToken,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("session_id", &self.session_id)
            .field("queued", &(self.shared.capacity - self.tx.capacity()))
            .finish()
    }
}

/// The receiving side of a queue, consumed by the writer task.
pub struct OutboundQueue {
    rx: mpsc::Receiver<Item>,
    close_now: watch::Receiver<Option<CloseReason>>,
}

impl Outbound {
    /// A queue of `capacity` frames for `session_id`.
    pub fn new(session_id: SessionId, capacity: usize) -> (Self, OutboundQueue) {
        let (tx, rx) = mpsc::channel(capacity);
        let (close_now, close_rx) = watch::channel(None);
        let outbound = Self {
            session_id,
            tx,
            shared: Arc::new(Shared {
                capacity,
                close_now,
                done: CancellationToken::new(),
            }),
        };
        (
            outbound,
            OutboundQueue {
                rx,
                close_now: close_rx,
            },
        )
    }

    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// Encodes and queues `frame`. Presence and typing events are dropped when the queue is
    /// more than half full; any frame that finds it full closes the connection with 1013
    /// (the client recovers what it missed with `sync`). Returns whether the frame was queued.
    pub fn send(&self, frame: &ServerFrame<'_>) -> bool {
        if frame.is_droppable() && self.is_past_half_full() {
            return false;
        }
        self.send_text(Utf8Bytes::from(frame.encode()), false)
    }

    /// Queues an already encoded frame (one encoding shared by several recipients). A
    /// `droppable` frame is dropped when the queue is more than half full.
    pub fn send_text(&self, text: Utf8Bytes, droppable: bool) -> bool {
        if droppable && self.is_past_half_full() {
            return false;
        }
        match self.tx.try_send(Item::Text(text)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close_now(
                    close_code::TRY_AGAIN_LATER,
                    "client is not reading fast enough; reconnect and sync",
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn is_past_half_full(&self) -> bool {
        self.tx.capacity() < self.shared.capacity / 2
    }

    /// Queues an `error` frame.
    pub fn error(&self, error: &ProtocolError) -> bool {
        self.send(&error.to_frame())
    }

    /// Closes after the frames already queued have been written.
    pub fn close_after_pending(&self, code: u16, reason: &str) {
        let close = CloseReason {
            code,
            reason: reason.to_owned(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Item::Close(close)) {
            self.close_now(code, reason);
        }
    }

    /// Closes at once; frames still queued are discarded.
    pub fn close_now(&self, code: u16, reason: &str) {
        self.shared.close_now.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(CloseReason {
                code,
                reason: reason.to_owned(),
            });
            true
        });
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.done.is_cancelled()
    }

    /// Completes when the connection has ended.
    pub async fn closed(&self) {
        self.shared.done.cancelled().await;
    }

    fn done(&self) -> CancellationToken {
        self.shared.done.clone()
    }
}

/// How often and how patiently the writer checks that the client is alive.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// A connection silent this long is pinged.
    pub ping_interval: Duration,
    /// A connection silent this long is closed; also the most time a close frame may take to
    /// reach a client that does not read.
    pub idle_timeout: Duration,
}

/// When the client was last heard from, shared by the reader (which records it) and the
/// writer (which pings and times out by it).
struct LastHeard {
    start: Instant,
    /// Nanoseconds after `start` (exact, so a pong is never taken for older than its ping).
    at_ns: AtomicU64,
}

impl LastHeard {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            at_ns: AtomicU64::new(0),
        }
    }

    fn record(&self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.at_ns.store(ns, Ordering::Relaxed);
    }

    fn at(&self) -> Instant {
        self.start + Duration::from_nanos(self.at_ns.load(Ordering::Relaxed))
    }
}

/// Splits `socket` and starts its writer and reader tasks. The reader hands frames to the
/// session actor currently published in `session`.
pub fn spawn_socket_tasks(
    socket: WebSocket,
    outbound: &Outbound,
    queue: OutboundQueue,
    session: watch::Receiver<Option<ActorRef<SessionMsg>>>,
    limits: DecodeLimits,
    heartbeat: Heartbeat,
) {
    let (sink, stream) = socket.split();
    let last_heard = Arc::new(LastHeard::new());
    tokio::spawn(run_writer(
        sink,
        queue,
        outbound.done(),
        heartbeat,
        Arc::clone(&last_heard),
    ));
    tokio::spawn(run_reader(
        stream,
        session,
        limits,
        outbound.clone(),
        last_heard,
    ));
}

async fn run_writer(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: OutboundQueue,
    done: CancellationToken,
    heartbeat: Heartbeat,
    last_heard: Arc<LastHeard>,
) {
    // One timer per connection, set to the next moment the heartbeat has something to do.
    let check = tokio::time::sleep(heartbeat.ping_interval);
    tokio::pin!(check);
    let mut pinged_at: Option<Instant> = None;
    let close = loop {
        tokio::select! {
            biased;
            // A close the server asked for goes out even if the connection is ending anyway.
            changed = queue.close_now.changed() => match changed {
                Ok(()) => break queue.close_now.borrow().clone(),
                Err(_) => break None,
            },
            _ = done.cancelled() => break None,
            item = queue.rx.recv() => match item {
                // A client that stops reading blocks the write; a close request (the queue
                // overflowed) or the end of the connection must still get through.
                Some(Item::Text(text)) => tokio::select! {
                    biased;
                    _ = done.cancelled() => break None,
                    changed = queue.close_now.changed() => match changed {
                        Ok(()) => break queue.close_now.borrow().clone(),
                        Err(_) => break None,
                    },
                    written = write_batch(&mut sink, &mut queue.rx, text) => match written {
                        Ok(None) => {}
                        Ok(Some(close)) => break Some(close),
                        Err(_) => break None,
                    },
                },
                Some(Item::Close(close)) => break Some(close),
                None => break None,
            },
            () = &mut check => {
                let heard = last_heard.at();
                let now = Instant::now();
                if now >= heard + heartbeat.idle_timeout {
                    break Some(CloseReason {
                        code: close_code::GOING_AWAY,
                        reason: "idle timeout".to_owned(),
                    });
                }
                // One ping per silence: after it, wait for an answer until the idle timeout.
                let unanswered = pinged_at.is_some_and(|at| at >= heard);
                if !unanswered && now >= heard + heartbeat.ping_interval {
                    pinged_at = Some(now);
                    let ping = sink.send(Message::Ping(Default::default()));
                    if !matches!(tokio::time::timeout(heartbeat.idle_timeout, ping).await, Ok(Ok(()))) {
                        break None;
                    }
                }
                let next = if pinged_at.is_some_and(|at| at >= heard) {
                    heard + heartbeat.idle_timeout
                } else {
                    heard + heartbeat.ping_interval
                };
                check.as_mut().reset(next);
            }
        }
    };
    if let Some(close) = close {
        let frame = CloseFrame {
            code: close.code,
            reason: Utf8Bytes::from(close.reason),
        };
        // A client that does not read gets as long as an idle one before it is dropped.
        let _ = tokio::time::timeout(
            heartbeat.idle_timeout,
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
    let _ = tokio::time::timeout(heartbeat.idle_timeout, sink.close()).await;
    done.cancel();
}

/// Writes `first` and every frame already waiting, then flushes once. Returns the close
/// request found among the waiting frames, if any.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<Item>,
    first: Utf8Bytes,
) -> Result<Option<CloseReason>, axum::Error> {
    sink.feed(Message::Text(first)).await?;
    let mut close = None;
    while let Ok(item) = rx.try_recv() {
        match item {
            Item::Text(text) => sink.feed(Message::Text(text)).await?,
            Item::Close(reason) => {
                close = Some(reason);
                break;
            }
        }
    }
    sink.flush().await?;
    Ok(close)
}

async fn run_reader(
    mut stream: SplitStream<WebSocket>,
    mut session: watch::Receiver<Option<ActorRef<SessionMsg>>>,
    limits: DecodeLimits,
    outbound: Outbound,
    last_heard: Arc<LastHeard>,
) {
    let done = outbound.done();
    loop {
        let next = tokio::select! {
            _ = done.cancelled() => break,
            next = stream.next() => next,
        };
        last_heard.record();
        let input = match next {
            Some(Ok(Message::Text(text))) => Inbound::Command(protocol::decode(&text, &limits)),
            Some(Ok(Message::Binary(_))) => Inbound::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Err(error)) => {
                if is_too_large(error) {
                    outbound.close_now(close_code::MESSAGE_TOO_BIG, "message too large");
                }
                break;
            }
            Some(Ok(Message::Close(_))) | None => break,
        };
        if !hand_to_session(&mut session, input, &done).await {
            // No session will take input any more: the writer closes the connection.
            return;
        }
    }
    // The session learns that its socket is gone and stops; the writer stops too.
    hand_to_session(&mut session, Inbound::SocketClosed, &done).await;
    done.cancel();
}

/// Whether a read failed because the client sent more than `limits.max_message_bytes`.
fn is_too_large(error: axum::Error) -> bool {
    matches!(
        error.into_inner().downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// Hands `input` to the current session actor and waits until it has taken it. Returns false
/// when no session actor will ever take it (the connection is over).
async fn hand_to_session(
    session: &mut watch::Receiver<Option<ActorRef<SessionMsg>>>,
    mut input: Inbound,
    done: &CancellationToken,
) -> bool {
    loop {
        let actor = session.borrow_and_update().clone();
        if let Some(actor) = actor {
            let (accepted, taken) = oneshot::channel();
            match actor.cast(SessionMsg::Inbound { input, accepted }) {
                Ok(()) => {
                    // A session that dies while handling this frame drops `accepted`; the
                    // frame is answered by the restart's `internal` error, not retried.
                    return taken.await.is_ok() || wait_for_next_session(session, done).await;
                }
                Err(ractor::MessagingErr::SendErr(SessionMsg::Inbound { input: back, .. })) => {
                    input = back;
                }
                Err(_) => return false,
            }
        }
        if !wait_for_next_session(session, done).await {
            return false;
        }
    }
}

/// Waits until SessionSupervisor publishes another session actor; false when it never will.
async fn wait_for_next_session(
    session: &mut watch::Receiver<Option<ActorRef<SessionMsg>>>,
    done: &CancellationToken,
) -> bool {
    tokio::select! {
        _ = done.cancelled() => false,
        changed = session.changed() => changed.is_ok(),
    }
}
