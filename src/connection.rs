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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ractor::ActorRef;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::actors::session::{Inbound, SessionMsg};
use crate::domain::{SessionId, UserKey};
use crate::protocol::{self, DecodeLimits, ProtocolError, ServerFrame};
use crate::telemetry::{CLIENT_CLOSED, CONNECTION_LOST, metrics};

/// Why the server closes a connection: its close code, reason text and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The server is shutting down (1001).
    Shutdown,
    /// The client was silent (not even a pong) for `limits.idle_timeout_secs` (1001).
    IdleTimeout,
    /// The client kept exceeding its command rate (1008).
    RateAbuse,
    /// The client sent a message or frame over `limits.max_message_bytes` (1009).
    TooLarge,
    /// The session failed `session.max_restarts` times in the window, or could not restart
    /// (1011).
    SessionFailed,
    /// SessionSupervisor failed and its sessions with it (1011).
    SupervisorFailed,
    /// The client's outbound queue overflowed: it does not read fast enough (1013).
    SlowConsumer,
    /// Storage was unreachable when the client connected (1013).
    StorageUnavailable,
    /// The client's token expired without a refresh (4001).
    TokenExpired,
    /// The session ended without a more specific cause (1000).
    SessionEnded,
}

impl CloseCause {
    pub const ALL: [CloseCause; 10] = [
        CloseCause::Shutdown,
        CloseCause::IdleTimeout,
        CloseCause::RateAbuse,
        CloseCause::TooLarge,
        CloseCause::SessionFailed,
        CloseCause::SupervisorFailed,
        CloseCause::SlowConsumer,
        CloseCause::StorageUnavailable,
        CloseCause::TokenExpired,
        CloseCause::SessionEnded,
    ];

    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseCause::Shutdown | CloseCause::IdleTimeout => 1001,
            CloseCause::RateAbuse => 1008,
            CloseCause::TooLarge => 1009,
            CloseCause::SessionFailed | CloseCause::SupervisorFailed => 1011,
            CloseCause::SlowConsumer | CloseCause::StorageUnavailable => 1013,
            CloseCause::TokenExpired => 4001,
            CloseCause::SessionEnded => 1000,
        }
    }

    /// The close frame's reason text.
    pub fn text(self) -> &'static str {
        match self {
            CloseCause::Shutdown => "server shutting down",
            CloseCause::IdleTimeout => "idle timeout",
            CloseCause::RateAbuse => "command rate exceeded persistently",
            CloseCause::TooLarge => "message too large",
            CloseCause::SessionFailed => "session failed repeatedly",
            CloseCause::SupervisorFailed => "session supervisor failed",
            CloseCause::SlowConsumer => "client is not reading fast enough; reconnect and sync",
            CloseCause::StorageUnavailable => "storage unavailable; reconnect later",
            CloseCause::TokenExpired => "token expired",
            CloseCause::SessionEnded => "session ended",
        }
    }

    /// The `reason` label of `peroxo_sessions_closed_total`.
    pub fn label(self) -> &'static str {
        match self {
            CloseCause::Shutdown => "shutdown",
            CloseCause::IdleTimeout => "idle_timeout",
            CloseCause::RateAbuse => "rate_abuse",
            CloseCause::TooLarge => "too_large",
            CloseCause::SessionFailed => "session_failed",
            CloseCause::SupervisorFailed => "supervisor_failed",
            CloseCause::SlowConsumer => "slow_consumer",
            CloseCause::StorageUnavailable => "storage_unavailable",
            CloseCause::TokenExpired => "token_expired",
            CloseCause::SessionEnded => "session_ended",
        }
    }
}

/// How a connection ended, for its log line and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ending {
    code: u16,
    label: &'static str,
}

/// The record of one connection: logs its end (tenant, user, duration, close code) and counts
/// it once both socket tasks are done with it.
pub struct ConnectionRecord {
    pub key: UserKey,
    pub session_id: SessionId,
    opened: Instant,
    /// The first side to know how the connection ends writes it here.
    ending: std::sync::Mutex<Option<Ending>>,
}

impl ConnectionRecord {
    /// Logs the opening and counts it.
    pub fn opened(key: UserKey, session_id: SessionId) -> Arc<Self> {
        tracing::info!(tenant = %key.tenant, user = %key.user, session = %session_id, "session opened");
        metrics().sessions_opened.increment(1);
        Arc::new(Self {
            key,
            session_id,
            opened: Instant::now(),
            ending: std::sync::Mutex::new(None),
        })
    }

    fn ended(&self, code: u16, label: &'static str) {
        let mut ending = self.ending.lock().expect("connection record poisoned");
        if ending.is_none() {
            *ending = Some(Ending { code, label });
        }
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        let ending = self
            .ending
            .lock()
            .map(|e| *e)
            .unwrap_or_default()
            .unwrap_or(Ending {
                code: 1006,
                label: CONNECTION_LOST,
            });
        metrics().session_closed(ending.label);
        tracing::info!(
            tenant = %self.key.tenant,
            user = %self.key.user,
            session = %self.session_id,
            duration_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX),
            close_code = ending.code,
            reason = ending.label,
            "session closed"
        );
    }
}

enum Item {
    Text(Utf8Bytes),
    Close(CloseCause),
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
    /// Why the connection closes: the first close asked for wins, whichever way it goes out.
    cause: OnceLock<CloseCause>,
    /// Set once to close without waiting for queued frames (the queue may be full).
    close_now: watch::Sender<Option<CloseCause>>,
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
    close_now: watch::Receiver<Option<CloseCause>>,
    shared: Arc<Shared>,
}

impl Shared {
    /// The writer's own reason to close (the idle timeout) yields to one asked for earlier.
    fn first_cause(&self, cause: CloseCause) -> CloseCause {
        *self.cause.get_or_init(|| cause)
    }
}

impl Outbound {
    /// A queue of `capacity` frames for `session_id`.
    pub fn new(session_id: SessionId, capacity: usize) -> (Self, OutboundQueue) {
        let (tx, rx) = mpsc::channel(capacity);
        let (close_now, close_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            capacity,
            cause: OnceLock::new(),
            close_now,
            done: CancellationToken::new(),
        });
        let outbound = Self {
            session_id,
            tx,
            shared: Arc::clone(&shared),
        };
        (
            outbound,
            OutboundQueue {
                rx,
                close_now: close_rx,
                shared,
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
                self.close_now(CloseCause::SlowConsumer);
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
        metrics().error(error.code);
        self.send(&error.to_frame())
    }

    /// Closes after the frames already queued have been written. When a close was asked for
    /// already, that one stands.
    pub fn close_after_pending(&self, cause: CloseCause) {
        if self.shared.cause.set(cause).is_err() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Item::Close(cause)) {
            self.close_now(cause);
        }
    }

    /// Closes at once; frames still queued are discarded. When a close was asked for already,
    /// it goes out now with its own cause.
    pub fn close_now(&self, cause: CloseCause) {
        let cause = *self.shared.cause.get_or_init(|| cause);
        self.shared.close_now.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(cause);
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
    /// Set while the reader waits for its session to take a frame. The reader does not read
    /// meanwhile, so whatever the client sends waits in the socket: a busy server must not
    /// take that silence for the client's.
    handing_over: AtomicBool,
}

impl LastHeard {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            at_ns: AtomicU64::new(0),
            handing_over: AtomicBool::new(false),
        }
    }

    fn record(&self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.at_ns.store(ns, Ordering::Relaxed);
    }

    /// Marks the start or the end of a hand-over; its end counts as hearing from the client.
    fn handing_over(&self, busy: bool) {
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

/// Everything the socket tasks of one connection need besides the socket.
pub struct SocketTasks {
    pub outbound: Outbound,
    pub queue: OutboundQueue,
    /// The session actor currently serving the connection, published by SessionSupervisor.
    pub session: watch::Receiver<Option<ActorRef<SessionMsg>>>,
    pub limits: DecodeLimits,
    pub heartbeat: Heartbeat,
    pub record: Arc<ConnectionRecord>,
}

/// Splits `socket` and starts its writer and reader tasks.
pub fn spawn_socket_tasks(socket: WebSocket, tasks: SocketTasks) {
    let (sink, stream) = socket.split();
    let last_heard = Arc::new(LastHeard::new());
    tokio::spawn(run_writer(
        sink,
        tasks.queue,
        tasks.outbound.done(),
        tasks.heartbeat,
        Arc::clone(&last_heard),
        Arc::clone(&tasks.record),
    ));
    tokio::spawn(run_reader(
        stream,
        tasks.session,
        tasks.limits,
        tasks.outbound,
        last_heard,
        tasks.record,
    ));
}

/// What the heartbeat decides when its timer fires.
enum Pulse {
    /// The client has been silent too long: close.
    Close,
    /// The client has been silent a while and not been pinged since: ping it.
    Ping,
    /// Nothing to do until the next check.
    Wait,
}

/// The writer's view of the heartbeat: when the client was last pinged.
struct Pacemaker {
    heartbeat: Heartbeat,
    last_heard: Arc<LastHeard>,
    pinged_at: Option<Instant>,
}

impl Pacemaker {
    fn pulse(&self) -> Pulse {
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

    fn next_check(&self) -> Instant {
        let heard = self.last_heard.at();
        if self.awaiting_answer() {
            heard + self.heartbeat.idle_timeout
        } else {
            heard + self.heartbeat.ping_interval
        }
    }
}

/// How long the writer waits for the client's answer to its close frame before it drops the
/// connection.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

async fn run_writer(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: OutboundQueue,
    done: CancellationToken,
    heartbeat: Heartbeat,
    last_heard: Arc<LastHeard>,
    record: Arc<ConnectionRecord>,
) {
    let mut pacemaker = Pacemaker {
        heartbeat,
        last_heard,
        pinged_at: None,
    };
    // One timer per connection, set to the next moment the heartbeat has something to do.
    let check = tokio::time::sleep(heartbeat.ping_interval);
    tokio::pin!(check);
    let close = 'serve: loop {
        tokio::select! {
            biased;
            // A close the server asked for goes out even if the connection is ending anyway.
            changed = queue.close_now.changed() => break changed.ok().and(*queue.close_now.borrow()),
            _ = done.cancelled() => break None,
            item = queue.rx.recv() => {
                let text = match item {
                    Some(Item::Text(text)) => text,
                    Some(Item::Close(cause)) => break Some(cause),
                    None => break None,
                };
                // A client that stops reading blocks the write: a close request, the end of
                // the connection or the idle timeout must still get through.
                let write = write_batch(&mut sink, &mut queue.rx, text);
                tokio::pin!(write);
                loop {
                    tokio::select! {
                        biased;
                        changed = queue.close_now.changed() => {
                            break 'serve changed.ok().and(*queue.close_now.borrow());
                        }
                        _ = done.cancelled() => break 'serve None,
                        () = &mut check => {
                            if let Pulse::Close = pacemaker.pulse() {
                                break 'serve Some(queue.shared.first_cause(CloseCause::IdleTimeout));
                            }
                            // No ping while a write is stuck: the socket is busy.
                            check.as_mut().reset(pacemaker.next_check());
                        }
                        written = &mut write => match written {
                            Ok(None) => break,
                            Ok(Some(cause)) => break 'serve Some(cause),
                            Err(_) => break 'serve None,
                        },
                    }
                }
            }
            () = &mut check => {
                match pacemaker.pulse() {
                    Pulse::Close => break Some(queue.shared.first_cause(CloseCause::IdleTimeout)),
                    Pulse::Ping => {
                        pacemaker.pinged_at = Some(Instant::now());
                        let ping = sink.send(Message::Ping(Default::default()));
                        match tokio::time::timeout(heartbeat.idle_timeout, ping).await {
                            Ok(Ok(())) => {}
                            _ => break None,
                        }
                    }
                    Pulse::Wait => {}
                }
                check.as_mut().reset(pacemaker.next_check());
            }
        }
    };
    let mut answer_pending = true;
    if let Some(cause) = close {
        record.ended(cause.code(), cause.label());
        let frame = CloseFrame {
            code: cause.code(),
            reason: Utf8Bytes::from_static(cause.text()),
        };
        // A client that does not read gets as long as an idle one before it is dropped.
        let sent = tokio::time::timeout(
            heartbeat.idle_timeout,
            sink.send(Message::Close(Some(frame))),
        )
        .await;
        match sent {
            Ok(Ok(())) => {
                // The reader sees the client's answer (or the end of the stream) and ends the
                // connection; a client that never answers is dropped after a while.
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, done.cancelled()).await;
                answer_pending = false;
            }
            // The client closed first (the WebSocket refuses a second close frame): answer it.
            Ok(Err(_)) => {}
            // The client does not read: an answer would not get through either.
            Err(_) => answer_pending = false,
        }
    }
    if answer_pending {
        // The client may have closed first. The WebSocket queued the answer to its close frame
        // when the reader read it; closing the sink writes that answer out.
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, sink.close()).await;
    }
    done.cancel();
}

/// Writes `first` and every frame already waiting, then flushes once. Returns the close
/// request found among the waiting frames, if any.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<Item>,
    first: Utf8Bytes,
) -> Result<Option<CloseCause>, axum::Error> {
    sink.feed(Message::Text(first)).await?;
    let mut close = None;
    while let Ok(item) = rx.try_recv() {
        match item {
            Item::Text(text) => sink.feed(Message::Text(text)).await?,
            Item::Close(cause) => {
                close = Some(cause);
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
    record: Arc<ConnectionRecord>,
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
                    outbound.close_now(CloseCause::TooLarge);
                } else {
                    record.ended(1006, CONNECTION_LOST);
                }
                break;
            }
            Some(Ok(Message::Close(frame))) => {
                record.ended(frame.map_or(1005, |f| f.code), CLIENT_CLOSED);
                break;
            }
            None => {
                record.ended(1006, CONNECTION_LOST);
                break;
            }
        };
        last_heard.handing_over(true);
        let taken = hand_to_session(&mut session, input, &done).await;
        last_heard.handing_over(false);
        if !taken {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pacemaker() -> Pacemaker {
        Pacemaker {
            heartbeat: Heartbeat {
                ping_interval: Duration::from_secs(25),
                idle_timeout: Duration::from_secs(60),
            },
            last_heard: Arc::new(LastHeard::new()),
            pinged_at: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_then_closed() {
        let pacemaker = pacemaker();
        assert!(matches!(pacemaker.pulse(), Pulse::Wait));
        tokio::time::advance(Duration::from_secs(26)).await;
        assert!(matches!(pacemaker.pulse(), Pulse::Ping));
        tokio::time::advance(Duration::from_secs(35)).await;
        assert!(matches!(pacemaker.pulse(), Pulse::Close));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_whose_frame_waits_for_its_busy_session_is_not_idle() {
        let pacemaker = pacemaker();
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
}
