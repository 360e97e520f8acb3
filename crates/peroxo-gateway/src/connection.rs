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
//! session, the new actor takes over the same queue and the reader follows it through
//! [`CurrentSession`]. The connection ends when either task ends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ractor::ActorRef;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::actors::router::WelcomeSlot;
use crate::actors::session::{Inbound, SessionMsg};
use crate::telemetry::{CLIENT_CLOSED, CONNECTION_LOST, metrics};
use peroxo_protocol::domain::{SessionId, UserKey};
use peroxo_protocol::{self as protocol, DecodeLimits, ProtocolError, ServerFrame};

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

/// What the writer takes from the queue.
enum Item {
    Text(Utf8Bytes),
    /// Close once the frames queued before this have been written.
    Close(CloseCause),
}

/// The sending side of one client's queue. Cheap to clone: the Router, Persistence and the
/// session all hold one.
pub struct Outbound {
    session_id: SessionId,
    shared: Arc<Shared>,
}

/// One connection's queue, shared by its senders and its writer.
///
/// A deque behind a mutex rather than a channel: an idle connection holds no buffer at all
/// (a channel allocates its first block of slots up front), and the writer gives the buffer
/// back whenever it has written everything.
struct Shared {
    capacity: usize,
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
    last_heard: LastHeard,
    /// The connection's first frame, queued exactly once.
    welcome: WelcomeSlot,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    /// Set once to close without waiting for queued frames (the queue may be full).
    close_now: Option<CloseCause>,
    /// The writer has stopped: nothing queued would be written.
    writer_gone: bool,
}

/// What the writer finds when it looks at its queue.
enum Next {
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
    shared: Arc<Shared>,
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
    fn first_cause(&self, cause: CloseCause) -> CloseCause {
        *self.cause.get_or_init(|| cause)
    }

    /// Marks the connection ended and wakes everyone waiting for it.
    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.end_wake.notify_waiters();
        self.wake.notify_one();
    }

    fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Completes when the connection has ended.
    async fn ended(&self) {
        wait_for(&self.end_wake, || self.has_ended().then_some(())).await;
    }
}

/// Locks `mutex`, also after a holder panicked: the values this module keeps behind a mutex
/// are changed whole under the lock, so a panic cannot leave one half-written.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until `answer` has one, re-checking each time `notify` wakes its waiters
/// (`notify_waiters`). The wait registers before it looks, so a change made between the look
/// and the wait still wakes it.
async fn wait_for<T>(notify: &Notify, mut answer: impl FnMut() -> Option<T>) -> T {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(answer) = answer() {
            return answer;
        }
        notified.await;
    }
}

impl OutboundQueue {
    /// Takes the next thing to do: a close asked for at once comes before any queued frame.
    fn next(&self) -> Next {
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
    fn close_now(&self) -> Option<CloseCause> {
        self.shared.lock().close_now
    }

    /// Completes when there may be something new to look at (see [`OutboundQueue::next`]).
    async fn woken(&self) {
        self.shared.wake.notified().await;
    }
}

impl Outbound {
    /// A queue of `capacity` frames for `session_id`.
    pub fn new(session_id: SessionId, capacity: usize) -> (Self, OutboundQueue) {
        let shared = Arc::new(Shared {
            capacity,
            cause: OnceLock::new(),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            senders: AtomicUsize::new(1),
            ended: AtomicBool::new(false),
            end_wake: Notify::new(),
            last_heard: LastHeard::new(),
            welcome: WelcomeSlot::default(),
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
        self.send_text(Utf8Bytes::from(frame.encode()), false)
    }

    /// Queues an already encoded frame (one encoding shared by several recipients). A
    /// `droppable` frame is dropped when the queue is more than half full.
    pub fn send_text(&self, text: Utf8Bytes, droppable: bool) -> bool {
        let mut queue = self.shared.lock();
        if queue.writer_gone {
            return false;
        }
        let queued = queue.items.len();
        if droppable && queued > self.shared.capacity / 2 {
            return false;
        }
        if queued >= self.shared.capacity {
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
        self.shared.lock().items.len() > self.shared.capacity / 2
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
        let mut queue = self.shared.lock();
        if queue.writer_gone {
            return;
        }
        if queue.items.len() >= self.shared.capacity {
            drop(queue);
            self.close_now(cause);
            return;
        }
        queue.items.push_back(Item::Close(cause));
        drop(queue);
        self.shared.wake.notify_one();
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

/// The session actor currently serving a connection: SessionSupervisor publishes each
/// incarnation, and the reader hands frames to whichever is current.
pub struct CurrentSession {
    current: Mutex<Current>,
    /// Wakes the reader when an incarnation replaces the last one, or when none ever will.
    changed: Notify,
}

struct Current {
    actor: Option<ActorRef<SessionMsg>>,
    /// Counts replacements, so the reader can tell a new incarnation from the one it saw.
    version: u64,
    /// No incarnation will follow: the connection is over.
    retired: bool,
}

impl CurrentSession {
    pub fn new(actor: ActorRef<SessionMsg>) -> Arc<Self> {
        Arc::new(Self {
            current: Mutex::new(Current {
                actor: Some(actor),
                version: 0,
                retired: false,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        lock(&self.current)
    }

    /// The current incarnation and its version.
    pub fn get(&self) -> (Option<ActorRef<SessionMsg>>, u64) {
        let current = self.lock();
        (current.actor.clone(), current.version)
    }

    /// Publishes the incarnation that replaces a failed one.
    pub fn replace(&self, actor: ActorRef<SessionMsg>) {
        let mut current = self.lock();
        current.actor = Some(actor);
        current.version += 1;
        drop(current);
        self.changed.notify_waiters();
    }

    /// No incarnation will follow: a reader waiting for one gives up.
    pub fn retire(&self) {
        self.lock().retired = true;
        self.changed.notify_waiters();
    }

    /// Waits until an incarnation newer than `seen` is published (true) or the session is
    /// retired (false).
    async fn replaced_since(&self, seen: u64) -> bool {
        wait_for(&self.changed, || {
            let current = self.lock();
            if current.version != seen {
                Some(true)
            } else if current.retired {
                Some(false)
            } else {
                None
            }
        })
        .await
    }
}

/// Everything the socket tasks of one connection need besides the socket.
pub struct SocketTasks {
    pub outbound: Outbound,
    pub queue: OutboundQueue,
    /// The session actor currently serving the connection, published by SessionSupervisor.
    pub session: Arc<CurrentSession>,
    pub limits: DecodeLimits,
    pub heartbeat: Heartbeat,
    pub record: Arc<ConnectionRecord>,
}

/// Splits `socket` and starts its writer and reader tasks.
pub fn spawn_socket_tasks(socket: WebSocket, tasks: SocketTasks) {
    let (sink, stream) = socket.split();
    tokio::spawn(run_writer(
        sink,
        tasks.queue,
        tasks.heartbeat,
        Arc::clone(&tasks.record),
    ));
    tokio::spawn(run_reader(
        stream,
        tasks.session,
        tasks.limits,
        tasks.outbound,
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
struct Pacemaker<'a> {
    heartbeat: Heartbeat,
    last_heard: &'a LastHeard,
    pinged_at: Option<Instant>,
}

impl Pacemaker<'_> {
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
        if self.awaiting_answer() {
            self.idle_deadline()
        } else {
            self.last_heard.at() + self.heartbeat.ping_interval
        }
    }

    /// When the client will have been silent too long, unless it is heard from before.
    fn idle_deadline(&self) -> Instant {
        self.last_heard.at() + self.heartbeat.idle_timeout
    }
}

/// How long the writer waits for the client's answer to its close frame before it drops the
/// connection.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer task. Written as an `async` block rather than an `async fn`: the task keeps
/// its arguments once instead of twice, and every idle connection carries the task.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
fn run_writer(
    mut sink: SplitSink<WebSocket, Message>,
    queue: OutboundQueue,
    heartbeat: Heartbeat,
    record: Arc<ConnectionRecord>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let mut pacemaker = Pacemaker {
            heartbeat,
            last_heard: &queue.shared.last_heard,
            pinged_at: None,
        };
        // One timer per connection, set to the next moment the heartbeat has something to do.
        let check = tokio::time::sleep(heartbeat.ping_interval);
        tokio::pin!(check);
        let close = 'serve: loop {
            // Wait until there is something to write (or a reason to stop).
            let first = loop {
                match queue.next() {
                    Next::CloseNow(cause) | Next::Item(Item::Close(cause)) => {
                        break 'serve Some(cause);
                    }
                    Next::Item(Item::Text(text)) => break text,
                    Next::Finished => break 'serve None,
                    Next::Empty => {}
                }
                tokio::select! {
                    biased;
                    () = queue.woken() => {}
                    () = &mut check => {
                        match pacemaker.pulse() {
                            Pulse::Close => break 'serve Some(queue.shared.first_cause(CloseCause::IdleTimeout)),
                            Pulse::Ping => {
                                pacemaker.pinged_at = Some(Instant::now());
                                if !ping(&mut sink, heartbeat.idle_timeout).await {
                                    break 'serve None;
                                }
                            }
                            Pulse::Wait => {}
                        }
                        check.as_mut().reset(pacemaker.next_check());
                    }
                }
            };
            // A client that stops reading blocks the write: a close request, the end of the
            // connection or the idle timeout must still get through. Boxed: an idle connection
            // does not carry the write's state.
            let mut write = Box::pin(write_batch(&mut sink, &queue, first));
            // Whether the heartbeat skipped a ping while this write was stuck.
            let mut ping_deferred = false;
            loop {
                tokio::select! {
                    biased;
                    () = queue.woken() => {
                        if let Some(cause) = queue.close_now() {
                            break 'serve Some(cause);
                        }
                        if queue.shared.has_ended() {
                            break 'serve None;
                        }
                    }
                    () = &mut check => {
                        if let Pulse::Close = pacemaker.pulse() {
                            break 'serve Some(queue.shared.first_cause(CloseCause::IdleTimeout));
                        }
                        // No ping while a write is stuck (the socket is busy), so the next
                        // thing to check is the idle timeout: the time to ping has passed
                        // and would fire again at once.
                        check.as_mut().reset(pacemaker.idle_deadline());
                        ping_deferred = true;
                    }
                    written = &mut write => match written {
                        Ok(None) => {
                            if ping_deferred {
                                check.as_mut().reset(pacemaker.next_check());
                            }
                            break;
                        }
                        Ok(Some(cause)) => break 'serve Some(cause),
                        Err(_) => break 'serve None,
                    },
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
                    let _ =
                        tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, queue.shared.ended()).await;
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
        queue.shared.end();
    }
}

/// Writes `first` and every frame already waiting, then flushes once. Returns the close
/// request found among the waiting frames, if any.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    queue: &OutboundQueue,
    first: Utf8Bytes,
) -> Result<Option<CloseCause>, axum::Error> {
    sink.feed(Message::Text(first)).await?;
    let mut close = None;
    loop {
        match queue.next() {
            Next::Item(Item::Text(text)) => sink.feed(Message::Text(text)).await?,
            Next::Item(Item::Close(cause)) | Next::CloseNow(cause) => {
                close = Some(cause);
                break;
            }
            Next::Empty | Next::Finished => break,
        }
    }
    sink.flush().await?;
    Ok(close)
}

/// Pings the client; false when the ping cannot be written within `timeout`. Boxed: an idle
/// connection does not carry the ping's state.
async fn ping(sink: &mut SplitSink<WebSocket, Message>, timeout: Duration) -> bool {
    let send = Box::pin(sink.send(Message::Ping(Default::default())));
    matches!(tokio::time::timeout(timeout, send).await, Ok(Ok(())))
}

async fn run_reader(
    mut stream: SplitStream<WebSocket>,
    session: Arc<CurrentSession>,
    limits: DecodeLimits,
    outbound: Outbound,
    record: Arc<ConnectionRecord>,
) {
    let connection = &*outbound.shared;
    loop {
        let next = tokio::select! {
            () = connection.ended() => break,
            next = stream.next() => next,
        };
        connection.last_heard.record();
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
        connection.last_heard.handing_over(true);
        // Boxed: an idle connection's reader does not carry the hand-over's state.
        let taken = Box::pin(hand_to_session(&session, input, connection)).await;
        connection.last_heard.handing_over(false);
        if !taken {
            // No session will take input any more: the writer closes the connection.
            return;
        }
    }
    // The session learns that its socket is gone and stops; the writer stops too.
    Box::pin(hand_to_session(&session, Inbound::SocketClosed, connection)).await;
    connection.end();
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
    session: &CurrentSession,
    mut input: Inbound,
    connection: &Shared,
) -> bool {
    loop {
        let (actor, seen) = session.get();
        if let Some(actor) = actor {
            let (accepted, taken) = oneshot::channel();
            match actor.cast(SessionMsg::Inbound { input, accepted }) {
                Ok(()) => {
                    // A session that dies while handling this frame drops `accepted`; the
                    // frame is answered by the restart's `internal` error, not retried.
                    return taken.await.is_ok()
                        || wait_for_next_session(session, seen, connection).await;
                }
                Err(ractor::MessagingErr::SendErr(SessionMsg::Inbound { input: back, .. })) => {
                    input = back;
                }
                Err(_) => return false,
            }
        }
        if !wait_for_next_session(session, seen, connection).await {
            return false;
        }
    }
}

/// Waits until SessionSupervisor publishes an incarnation newer than `seen`; false when it
/// never will.
async fn wait_for_next_session(session: &CurrentSession, seen: u64, connection: &Shared) -> bool {
    tokio::select! {
        () = connection.ended() => false,
        replaced = session.replaced_since(seen) => replaced,
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
        let (outbound, queue) = Outbound::new(SessionId::next(), 2);
        assert!(outbound.send_text(text("a"), false));
        assert!(outbound.send_text(text("b"), false));
        assert!(!outbound.send_text(text("c"), false));
        // The close goes out before what is still queued.
        assert_eq!(next_of(&queue), "close now slow_consumer");
        let (outbound, queue) = Outbound::new(SessionId::next(), 2);
        assert!(outbound.send_text(text("a"), false));
        assert!(outbound.send_text(text("b"), false));
        assert_eq!(next_of(&queue), "text a");
        assert_eq!(next_of(&queue), "text b");
        assert_eq!(next_of(&queue), "empty");
    }

    #[test]
    fn droppable_frames_are_dropped_past_half_full() {
        let (outbound, queue) = Outbound::new(SessionId::next(), 4);
        assert!(outbound.send_text(text("a"), true));
        assert!(outbound.send_text(text("b"), true));
        // Half full is not more than half full.
        assert!(outbound.send_text(text("c"), true));
        assert!(!outbound.send_text(text("d"), true));
        assert!(outbound.send_text(text("e"), false));
        for expected in ["text a", "text b", "text c", "text e", "empty"] {
            assert_eq!(next_of(&queue), expected);
        }
    }

    #[test]
    fn the_first_close_wins_and_close_now_skips_what_is_queued() {
        let (outbound, queue) = Outbound::new(SessionId::next(), 8);
        outbound.send_text(text("a"), false);
        outbound.close_after_pending(CloseCause::Shutdown);
        // A later close only hurries the first cause out.
        outbound.close_after_pending(CloseCause::RateAbuse);
        assert_eq!(next_of(&queue), "text a");
        assert_eq!(next_of(&queue), "close shutdown");
        let (outbound, queue) = Outbound::new(SessionId::next(), 8);
        outbound.send_text(text("a"), false);
        outbound.close_after_pending(CloseCause::Shutdown);
        outbound.close_now(CloseCause::RateAbuse);
        assert_eq!(next_of(&queue), "close now shutdown");
    }

    #[test]
    fn the_writer_finishes_when_every_sender_is_gone_or_the_connection_ended() {
        let (outbound, queue) = Outbound::new(SessionId::next(), 8);
        let clone = outbound.clone();
        outbound.send_text(text("a"), false);
        drop(outbound);
        assert_eq!(next_of(&queue), "text a");
        assert_eq!(next_of(&queue), "empty");
        drop(clone);
        assert_eq!(next_of(&queue), "finished");
        let (outbound, queue) = Outbound::new(SessionId::next(), 8);
        outbound.send_text(text("a"), false);
        outbound.shared.end();
        assert_eq!(next_of(&queue), "finished");
    }

    #[test]
    fn nothing_is_queued_once_the_writer_is_gone() {
        let (outbound, queue) = Outbound::new(SessionId::next(), 8);
        drop(queue);
        assert!(!outbound.send_text(text("a"), false));
        // Its end is the connection's end.
        assert!(outbound.shared.has_ended());
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_frame_and_waiters_by_the_end() {
        let (outbound, queue) = Outbound::new(SessionId::next(), 8);
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
        outbound.send_text(text("a"), false);
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
