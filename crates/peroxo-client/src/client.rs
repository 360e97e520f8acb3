//! The correct client: a [`Client`] handle that the application clones freely, an [`Events`]
//! receiver, and one task that owns the connection and the [`ClientState`].
//!
//! The task connects (rotating over the configured nodes), serves the connection until it
//! ends (writing what the state asks for, feeding it every frame, handing its events to the
//! application), then chooses by how it ended whether and when to reconnect
//! ([`crate::reconnect`]). The application's requests reach it through an unbounded channel
//! (each holds one send or one request, which the outbox would hold anyway); its events leave
//! through a bounded one, so an application that stops reading stops the task from reading
//! the socket: the server then closes the connection as a slow consumer (1013), and the client
//! reconnects and catches up with `sync` once the application reads again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use peroxo_protocol::{Command, CommandKind, ErrorCode, MessageView, ReqId, ServerFrame};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::connection::{ConnectOptions, Connection, Disconnect, Incoming, Welcome};
use crate::outbox::Outgoing;
use crate::reconnect::{Backoff, ClosedReason, Jitter, NextStep, next_step};
use crate::state::{ChangeWaiter, ClientState, RequestWaiter, SendWaiter, SyncWaiter};
use crate::stream::{Delivered, DeliveredEvent, EntryId};
use crate::token::{self, RefreshTimer};

/// A callback that returns a fresh token (JWT mode), or `None` when there is none. It runs on
/// the client's task: it should return at once (hand it a token that another task keeps
/// fresh), not wait for the network.
pub type TokenSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// How a [`Client`] connects and behaves.
#[derive(Clone)]
pub struct ClientConfig {
    /// The gateway nodes' WebSocket URLs (`ws://host:port/ws`, with `?user=` in dev mode).
    /// With several, the client moves to the next one when a node is unreachable, refuses
    /// (503, 429) or shuts down (1001).
    pub urls: Vec<String>,
    /// The node to try first (an index into `urls`; spreads clients over nodes).
    pub first_node: usize,
    /// The token sent as `Authorization: Bearer` (JWT mode).
    pub token: Option<String>,
    /// The token source (JWT mode). Asked for a token before connecting when there is none
    /// or it has expired, [`ClientConfig::refresh_margin`] before the token's `exp` to send
    /// `refresh` on the open connection, and after close 4001 or a 401. Without it, the
    /// connection ends at the token's `exp` and the client stops.
    pub fresh_token: Option<TokenSource>,
    /// How long before the token's `exp` the client sends `refresh` (halfway to `exp` for a
    /// token that lives less than twice this).
    pub refresh_margin: Duration,
    /// Extra headers on every upgrade request.
    pub headers: Vec<(String, String)>,
    /// The pause between connection attempts.
    pub backoff: Backoff,
    /// The first pause before a send refused with a retryable error goes again; it doubles
    /// with each retry of that send (up to 32 times this).
    pub retry_base: Duration,
    /// The longest time from the TCP connect to `welcome`.
    pub connect_timeout: Duration,
    /// A connection silent this long (not even a ping) is taken for dead. The server pings a
    /// connection silent for 25 s by default.
    pub idle_timeout: Duration,
    /// The seq the application processed before (durably, in an earlier run): delivery
    /// starts after it. 0 for a fresh client.
    pub last_seq: u64,
    /// The start of every `client_msg_id` this client generates (at most 40 bytes); a prefix
    /// unique to this client instance by default. Ids are `<prefix>-<n>`.
    pub client_msg_id_prefix: Option<String>,
    /// How many events may wait for the application before the client stops reading.
    pub events_capacity: usize,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("urls", &self.urls)
            .field("first_node", &self.first_node)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("fresh_token", &self.fresh_token.is_some())
            .field("backoff", &self.backoff)
            .field("last_seq", &self.last_seq)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A client of one node.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_urls(vec![url.into()])
    }

    /// A client of several nodes (of one cluster).
    pub fn with_urls(urls: Vec<String>) -> Self {
        Self {
            urls,
            first_node: 0,
            token: None,
            fresh_token: None,
            refresh_margin: Duration::from_secs(60),
            headers: Vec::new(),
            backoff: Backoff::default(),
            retry_base: Duration::from_millis(25),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            last_seq: 0,
            client_msg_id_prefix: None,
            events_capacity: 1024,
        }
    }
}

/// The server's acknowledgement of a send: the message is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub client_msg_id: String,
    pub message_id: String,
    pub conversation_id: String,
    /// The sender's seq for the message.
    pub seq: u64,
    pub ts: i64,
    /// An earlier attempt had been committed; this is the original message.
    pub duplicate: bool,
}

/// A change to a committed message (protocol 3). Each is safe to repeat, and the client repeats
/// it until the server answers, as it does sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Replaces its text (its author only, within `messages.edit_window`). Goes with a
    /// `client_msg_id` of its own, the same at every attempt: the server makes an edit once.
    Edit { text: String },
    /// Deletes it for everyone (its author; in a group also its owner and admins). Deleting a
    /// deleted message changes nothing.
    Delete,
    /// Adds the user's reaction `emoji` (one already made changes nothing).
    React { emoji: String },
    /// Takes the user's reaction `emoji` back (one never made changes nothing).
    Unreact { emoji: String },
}

/// The server's answer to a [`Change`] (`message_state`): the message as it is after it. The
/// change's event, when it made one, comes in the user's stream like any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// An edit's `client_msg_id`.
    pub client_msg_id: Option<String>,
    pub message: MessageView<'static>,
    /// An edit seen before: an earlier attempt was committed, nothing changed now. A success.
    pub duplicate: bool,
    /// The seq the change's event took in the user's stream (`message` is as of it); `None`
    /// when it changed nothing.
    pub seq: Option<u64>,
}

/// An `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ServerError {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
    pub req_id: Option<ReqId>,
    pub client_msg_id: Option<String>,
}

/// What an `error` frame was about, as the client matched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorAbout {
    /// A send (retried when retryable, failed otherwise).
    Send(String),
    /// A [`Change`], by the `req_id` it goes with (retried when retryable, failed
    /// otherwise), or the late answer to one that went twice after a session restart.
    Change(String),
    /// A sync page (asked for again shortly).
    Sync,
    /// A request made with [`Client::request`]: its answer, or the late answer of one given
    /// up on after a session restart (the server may still carry out what it had begun).
    Request,
    /// `internal` without ids: the server's session restarted; unanswered sends went again.
    SessionRestart,
    /// Nothing the client knows of.
    Other,
}

/// Why the client, or one of its operations, failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The client stopped for good after this disconnect (see [`crate::reconnect`]).
    #[error("stopped: {0}")]
    Stopped(Disconnect),
    /// The client was closed, or every [`Client`] handle dropped.
    #[error("the client is closed")]
    Closed,
    /// The connection ended before the reply came (the request was not repeated).
    #[error("disconnected before the reply")]
    Disconnected,
    /// The server's session restarted (an `internal` error without ids) before the reply
    /// came: the request may or may not have been carried out, and was not repeated.
    #[error("the server's session restarted before the reply")]
    Interrupted,
    /// The server answered with an error.
    #[error("server error: {0}")]
    Server(ServerError),
}

/// Why a send or a [`Change`] failed. Retryable errors and disconnects never fail one: a send
/// is resent with its `client_msg_id` until acked, a change repeated until answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Refused for good (`bad_request`, `too_large`, `forbidden`; for a change also
    /// `not_author`, `edit_window_passed`, `message_deleted`, `unknown_message`, …).
    #[error("refused: {0}")]
    Refused(ServerError),
    /// Its frame is over the protocol's 64 KiB.
    #[error("the message is over the protocol's frame size")]
    TooLarge,
    /// The client stopped before it was acked.
    #[error("{0}")]
    Stopped(ClientError),
}

/// What the client reports to the application, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection is open (`welcome` received).
    Connected {
        url: String,
        session_id: String,
        last_seq: u64,
    },
    /// An open connection ended; the client reconnects after `retry_in` (`None`: it stops).
    Disconnected {
        cause: Disconnect,
        retry_in: Option<Duration>,
    },
    /// An attempt to connect failed; the client tries again after `retry_in` (`None`: it
    /// stops).
    ConnectFailed {
        url: String,
        cause: Disconnect,
        retry_in: Option<Duration>,
    },
    /// The next message of the user's stream: every seq once, in seq order (the user's own
    /// sends included, from their ack).
    Message(Delivered),
    /// The next event of the user's stream (protocol 2: a group change, a read marker, a read
    /// receipt), in the same seq order as the messages.
    StreamEvent(DeliveredEvent),
    /// An `ack`; `late` when its send had been acked already (a resend's duplicate ack).
    Acked { ack: Ack, late: bool },
    /// The `message_state` answering a [`Change`] (protocol 3).
    Changed(Changed),
    /// An `error` frame.
    Error {
        error: ServerError,
        about: ErrorAbout,
    },
    /// A `sync_hint`: a sync follows.
    SyncHint { last_seq: u64 },
    /// A sync cycle completed: the stream is delivered up to `delivered`, and the server
    /// reported `last_seq`.
    Synced { delivered: u64, last_seq: u64 },
    /// An entry of the stream seen again (ignored): live delivery is at-least-once in rare
    /// cases.
    Repeat { seq: u64, id: EntryId },
    /// Something a correct server never does (a seq naming two messages, a frame that does
    /// not decode, a sync that cannot reach `last_seq`).
    Anomaly(String),
    /// The server accepted a fresh token with `refresh`; the connection now lasts until `exp`
    /// (Unix seconds).
    TokenRefreshed { exp: u64 },
    /// A `refresh` failed (the token source gave no token, or the server refused it, which
    /// also comes as an [`Event::Error`]); it is tried again after `retry_in` (`None`: not on
    /// this connection, which ends at the token's `exp`).
    TokenRefreshFailed {
        reason: String,
        retry_in: Option<Duration>,
    },
    /// Any other frame: `presence`, `typing`, and replies nobody waits for.
    Frame(ServerFrame<'static>),
    /// The client stopped for good.
    Stopped(ClientError),
}

/// Where the client stands: the TypeScript SDK's `ConnectionState`, without `offline`.
///
/// A browser reports when it loses the network, and the TypeScript SDK then waits for it to
/// come back. An operating system gives a Rust process no such signal, so this client has no
/// offline state: it stays [`Status::Reconnecting`], and an attempt is how it learns that the
/// network is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Opening the first connection.
    Connecting,
    /// A connection is open: the node at `url` sent `welcome`.
    Connected { url: String, welcome: Welcome },
    /// Waiting to connect again after a connection ended or an attempt failed, then trying
    /// (the status stays `Reconnecting` during the attempt).
    Reconnecting {
        /// The number of this attempt since the last open connection, or since the start
        /// (1 is the first retry).
        attempt: u32,
        /// When the attempt starts.
        next_attempt_at: Instant,
        /// The close code of the connection that ended; `None` when it dropped without one
        /// or never opened.
        last_close_code: Option<u16>,
        /// How the connection ended, or why the attempt before failed.
        cause: Disconnect,
    },
    /// Stopped for good: `error` is what operations waiting on the client fail with.
    Closed {
        reason: ClosedReason,
        error: ClientError,
    },
}

impl Status {
    /// The status of a client that stopped with `error`.
    fn closed(error: ClientError) -> Self {
        let reason = match &error {
            ClientError::Stopped(cause) => ClosedReason::after(cause),
            _ => ClosedReason::Client,
        };
        Status::Closed { reason, error }
    }
}

enum Request {
    Send(Outgoing, SendWaiter),
    Change(CommandKind, ChangeWaiter),
    Sync(SyncWaiter),
    Command(CommandKind, RequestWaiter),
    Close(oneshot::Sender<()>),
}

/// The application's handle on a running client. Cheap to clone; the client stops when every
/// handle is dropped or [`Client::close`] is called.
#[derive(Clone)]
pub struct Client {
    requests: mpsc::UnboundedSender<Request>,
    status: watch::Receiver<Status>,
    delivered: Arc<AtomicU64>,
    ids: Arc<IdSource>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("status", &*self.status.borrow())
            .field("last_seq", &self.last_seq())
            .finish_non_exhaustive()
    }
}

/// The events of a client, in order.
#[derive(Debug)]
pub struct Events(mpsc::Receiver<Event>);

impl Events {
    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn next(&mut self) -> Option<Event> {
        self.0.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.0.try_recv().ok()
    }
}

/// Generates `client_msg_id`s: `<prefix>-<n>`.
#[derive(Debug)]
struct IdSource {
    prefix: String,
    next: AtomicU64,
}

impl Client {
    /// Starts a client (it connects in the background) and returns its handle and events.
    /// Must be called within a tokio runtime.
    pub fn start(config: ClientConfig) -> (Client, Events) {
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::channel(config.events_capacity.max(1));
        let (status_tx, status) = watch::channel(Status::Connecting);
        let delivered = Arc::new(AtomicU64::new(config.last_seq));
        let mut jitter = Jitter::from_clock();
        let prefix = config.client_msg_id_prefix.clone().unwrap_or_else(|| {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            format!("{stamp:x}{:08x}", jitter.next() as u32)
        });
        let ids = Arc::new(IdSource {
            prefix,
            next: AtomicU64::new(1),
        });
        let driver = Driver {
            state: ClientState::new(config.last_seq, config.retry_base, jitter.clone()),
            node: config.first_node,
            token: config.token.clone(),
            refresh: RefreshTimer::default(),
            config,
            requests: requests_rx,
            events: events_tx,
            status: status_tx,
            delivered: Arc::clone(&delivered),
            jitter,
            closing: None,
        };
        tokio::spawn(driver.run());
        let client = Client {
            requests,
            status,
            delivered,
            ids,
        };
        (client, Events(events))
    }

    /// Starts a client and waits for its first connection.
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), ClientError> {
        let (client, events) = Self::start(config);
        client.wait_connected().await?;
        Ok((client, events))
    }

    /// Waits until a connection is open; fails when the client has stopped.
    pub async fn wait_connected(&self) -> Result<(), ClientError> {
        let mut status = self.status.clone();
        let result = status
            .wait_for(|s| matches!(s, Status::Connected { .. } | Status::Closed { .. }))
            .await
            .map(|s| s.clone());
        match result {
            Ok(Status::Closed { error, .. }) => Err(error),
            Ok(_) => Ok(()),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Where the client stands.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver of the client's status that sees every change (`changed().await`), for an
    /// application that shows it.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Every seq of the user's stream up to this one has been delivered as an
    /// [`Event::Message`] or [`Event::StreamEvent`] (or, on a protocol-1 connection, passed
    /// over when it is a group message or an event, which protocol 1 never shows): the
    /// position to persist, and to start from next time ([`ClientConfig::last_seq`]).
    pub fn last_seq(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    /// Submits a message and returns its `client_msg_id` and a receiver of its outcome at
    /// once; [`Client::send`] waits for the outcome. `to` is a user (a direct message) or, on
    /// a protocol-2 connection (`?protocol=2` in the URL), a group id. The send is resent with
    /// the same id across reconnects and retryable errors until it is acked.
    pub fn submit(
        &self,
        to: impl Into<String>,
        text: impl Into<String>,
    ) -> Result<Submitted, ClientError> {
        self.submit_send(to.into(), text.into(), None)
    }

    /// Submits a reply (protocol 3, `?protocol=3` in the URL): a message to the conversation
    /// `conversation_id` (a group's, or a direct one's such as `alice:bob`) that quotes its
    /// message `reply_to`. Resent like any send ([`Client::submit`]); refused for good
    /// (`message_deleted`, `unknown_message`) when the quoted message cannot be replied to.
    pub fn submit_reply(
        &self,
        conversation_id: impl Into<String>,
        reply_to: u64,
        text: impl Into<String>,
    ) -> Result<Submitted, ClientError> {
        self.submit_send(conversation_id.into(), text.into(), Some(reply_to))
    }

    fn submit_send(
        &self,
        to: String,
        text: String,
        reply_to: Option<u64>,
    ) -> Result<Submitted, ClientError> {
        let client_msg_id = self.ids.next_id();
        let (tx, rx) = oneshot::channel();
        let send = Outgoing::Send {
            client_msg_id: client_msg_id.clone(),
            to,
            text,
            reply_to,
        };
        self.requests
            .send(Request::Send(send, Some(tx)))
            .map_err(|_| ClientError::Closed)?;
        Ok(Submitted {
            client_msg_id,
            outcome: rx,
        })
    }

    /// Submits a [`Change`] to the message `message_id` of `conversation_id` (protocol 3) and
    /// returns at once; [`Client::change`] waits for the outcome. The change is repeated
    /// across reconnects, session restarts and retryable errors until the server answers
    /// (an edit with the same `client_msg_id`, [`SubmittedChange::client_msg_id`]).
    pub fn submit_change(
        &self,
        conversation_id: impl Into<String>,
        message_id: u64,
        change: Change,
    ) -> Result<SubmittedChange, ClientError> {
        let conversation_id = conversation_id.into();
        let mut client_msg_id = None;
        let kind = match change {
            Change::Edit { text } => {
                let id = self.ids.next_id();
                client_msg_id = Some(id.clone());
                CommandKind::Edit {
                    conversation_id,
                    message_id,
                    text,
                    client_msg_id: id,
                }
            }
            Change::Delete => CommandKind::Delete {
                conversation_id,
                message_id,
            },
            Change::React { emoji } => CommandKind::React {
                conversation_id,
                message_id,
                emoji,
            },
            Change::Unreact { emoji } => CommandKind::Unreact {
                conversation_id,
                message_id,
                emoji,
            },
        };
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Change(kind, tx))
            .map_err(|_| ClientError::Closed)?;
        Ok(SubmittedChange {
            client_msg_id,
            outcome: rx,
        })
    }

    /// Makes a [`Change`] (see [`Client::submit_change`]) and waits for the message as it is
    /// after it, or the change's refusal for good.
    pub async fn change(
        &self,
        conversation_id: impl Into<String>,
        message_id: u64,
        change: Change,
    ) -> Result<Changed, SendError> {
        self.submit_change(conversation_id, message_id, change)
            .map_err(SendError::Stopped)?
            .answered()
            .await
    }

    /// Sends a message (see [`Client::submit`]) and waits until it is acked (committed) or
    /// refused for good.
    pub async fn send(
        &self,
        to: impl Into<String>,
        text: impl Into<String>,
    ) -> Result<Ack, SendError> {
        self.submit(to, text)
            .map_err(SendError::Stopped)?
            .acked()
            .await
    }

    /// Asks for a sync and waits until a sync cycle that started after this call completed.
    /// Returns the user's last seq as the server reported it.
    pub async fn sync(&self) -> Result<u64, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Sync(tx))
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Sends another command (`history`, `presence_subscribe`, `online_users`, `ping`,
    /// `refresh`, `typing`, and protocol 2's `create_group`, `mark_read`, `conversations`…)
    /// with a fresh `req_id` and waits for the reply that carries it, or the `error` that
    /// does. Fails with [`ClientError::Disconnected`] when the connection ends first, and
    /// with [`ClientError::Interrupted`] when the server's session restarts first (it is not
    /// repeated either way). `typing` has no reply: do not wait for it.
    pub async fn request(&self, kind: CommandKind) -> Result<ServerFrame<'static>, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Command(kind, tx))
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Closes the connection and stops the client. Sends not acked yet fail with
    /// [`ClientError::Closed`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// A submitted send.
#[derive(Debug)]
pub struct Submitted {
    pub client_msg_id: String,
    outcome: oneshot::Receiver<Result<Ack, SendError>>,
}

impl Submitted {
    /// Waits until the send is acked or refused for good.
    pub async fn acked(self) -> Result<Ack, SendError> {
        self.outcome
            .await
            .unwrap_or(Err(SendError::Stopped(ClientError::Closed)))
    }
}

/// A submitted [`Change`].
#[derive(Debug)]
pub struct SubmittedChange {
    /// An edit's `client_msg_id`.
    pub client_msg_id: Option<String>,
    outcome: oneshot::Receiver<Result<Changed, SendError>>,
}

impl SubmittedChange {
    /// Waits until the server answers the change or refuses it for good.
    pub async fn answered(self) -> Result<Changed, SendError> {
        self.outcome
            .await
            .unwrap_or(Err(SendError::Stopped(ClientError::Closed)))
    }
}

impl IdSource {
    /// The next `client_msg_id`: `<prefix>-<n>`.
    fn next_id(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// How serving a connection ended.
enum Served {
    Ended(Disconnect),
    Closed,
}

/// A `refresh` in flight: the token it carries, and the receiver of the server's answer.
struct PendingRefresh {
    token: String,
    reply: oneshot::Receiver<Result<ServerFrame<'static>, ClientError>>,
}

/// The monotonic clock that timers run on, and the wall clock that a token's `exp` is on.
fn clocks() -> (Instant, SystemTime) {
    (Instant::now(), SystemTime::now())
}

/// The answer to the `refresh` in flight, and its token; never ready when none is.
async fn refresh_answer(
    pending: &mut Option<PendingRefresh>,
) -> (String, Result<ServerFrame<'static>, ClientError>) {
    let Some(refresh) = pending.as_mut() else {
        return std::future::pending().await;
    };
    let answer = (&mut refresh.reply)
        .await
        .unwrap_or(Err(ClientError::Disconnected));
    let token = pending
        .take()
        .map(|refresh| refresh.token)
        .unwrap_or_default();
    (token, answer)
}

/// The task behind a [`Client`].
struct Driver {
    config: ClientConfig,
    state: ClientState,
    /// The node to connect to next (an index into `config.urls`, modulo their number).
    node: usize,
    /// The token of the next connection: the configured one, then the freshest the server
    /// accepted or the source gave.
    token: Option<String>,
    /// When the open connection sends `refresh`.
    refresh: RefreshTimer,
    requests: mpsc::UnboundedReceiver<Request>,
    events: mpsc::Sender<Event>,
    status: watch::Sender<Status>,
    delivered: Arc<AtomicU64>,
    jitter: Jitter,
    /// Answered once the client has closed.
    closing: Option<oneshot::Sender<()>>,
}

impl Driver {
    async fn run(mut self) {
        if self.config.urls.is_empty() {
            let error = ClientError::Stopped(Disconnect::Unreachable("no URL".to_owned()));
            return self.stop(error).await;
        }
        // Failed attempts in a row (the backoff's exponent), and retries since the last open
        // connection (the status's attempt number).
        let (mut failures, mut retries) = (0u32, 0u32);
        loop {
            let url = self.config.urls[self.node % self.config.urls.len()].clone();
            self.renew_stale_token();
            let options = ConnectOptions {
                headers: self.headers(),
                timeout: self.config.connect_timeout,
                ..ConnectOptions::default()
            };
            let attempt = Connection::connect(&url, &options)
                .await
                .map_err(Disconnect::from);
            let (cause, was_open) = match attempt {
                Ok(connection) => {
                    (failures, retries) = (0, 0);
                    match self.serve(connection, &url).await {
                        Served::Closed => return self.finish_close().await,
                        Served::Ended(cause) => (cause, true),
                    }
                }
                Err(cause) => {
                    failures += 1;
                    (cause, false)
                }
            };
            self.state.on_disconnected();
            let retry_in = self.retry_in(&cause, failures);
            if let Some(delay) = retry_in {
                retries += 1;
                self.status.send_replace(Status::Reconnecting {
                    attempt: retries,
                    next_attempt_at: Instant::now() + delay,
                    last_close_code: match &cause {
                        Disconnect::Closed { code, .. } => Some(*code),
                        _ => None,
                    },
                    cause: cause.clone(),
                });
            }
            self.emit(if was_open {
                Event::Disconnected {
                    cause: cause.clone(),
                    retry_in,
                }
            } else {
                Event::ConnectFailed {
                    url,
                    cause: cause.clone(),
                    retry_in,
                }
            })
            .await;
            let Some(delay) = retry_in else {
                return self.stop(ClientError::Stopped(cause)).await;
            };
            if !self.pause(delay).await {
                return self.finish_close().await;
            }
        }
    }

    /// The pause before the next attempt after `cause`, following `failures` failed attempts
    /// in a row; `None` when the client stops.
    fn retry_in(&mut self, cause: &Disconnect, failures: u32) -> Option<Duration> {
        match next_step(cause) {
            NextStep::Stop => None,
            NextStep::ReconnectWithFreshToken => {
                // Never again with the token that was refused or expired.
                let fresh = self.config.fresh_token.as_ref().and_then(|source| source());
                let usable = fresh.is_some() && fresh != self.token;
                self.token = fresh;
                usable.then(|| self.config.backoff.delay(failures, &mut self.jitter))
            }
            NextStep::Reconnect { rotate } => {
                if rotate {
                    self.node += 1;
                }
                Some(self.config.backoff.delay(failures, &mut self.jitter))
            }
        }
    }

    /// Before an attempt: a missing or expired token is replaced from the token source, if
    /// there is one (the node would refuse it with 401).
    fn renew_stale_token(&mut self) {
        let Some(source) = &self.config.fresh_token else {
            return;
        };
        let now = SystemTime::now();
        let stale = self
            .token
            .as_deref()
            .is_none_or(|token| token::expired(token, now));
        if stale && let Some(fresh) = source() {
            self.token = Some(fresh);
        }
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut headers = self.config.headers.clone();
        if let Some(token) = &self.token {
            headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
        }
        headers
    }

    /// Waits between connection attempts, taking the application's requests meanwhile.
    /// Returns false when the client is to close.
    async fn pause(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return true,
                request = self.requests.recv() => {
                    if let Some(command) = self.on_request(request) {
                        drop(command);
                    }
                    if self.closing.is_some() || self.requests.is_closed() {
                        return false;
                    }
                }
            }
        }
    }

    /// Serves one connection until it ends or the client closes.
    async fn serve(&mut self, mut connection: Connection, url: &str) -> Served {
        self.on_welcome(connection.welcome().clone(), url).await;
        let mut extra = Vec::new();
        let mut refresh = None;
        loop {
            let now = Instant::now();
            let mut commands = std::mem::take(&mut extra);
            if self.refresh.take_due(now) {
                commands.extend(self.start_refresh(&mut refresh).await);
            }
            commands.extend(self.state.outgoing(now));
            if let Err(cause) = write(&mut connection, &commands).await {
                return Served::Ended(cause);
            }
            self.publish().await;
            if self.closing.is_some() || self.requests.is_closed() {
                connection.close(Duration::from_secs(2)).await;
                return Served::Closed;
            }
            let wake = [self.state.next_wakeup(), self.refresh.due()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + Duration::from_secs(3600));
            let silent_until = connection.last_received() + self.config.idle_timeout;
            tokio::select! {
                incoming = connection.recv() => {
                    match incoming {
                        Ok(Incoming::Frame(frame)) => self.state.on_frame(frame, Instant::now()),
                        Ok(Incoming::Undecodable { text, error }) => {
                            self.state.on_undecodable(&text, &error);
                        }
                        Err(cause) => return Served::Ended(cause),
                    }
                }
                request = self.requests.recv() => {
                    extra.extend(self.on_request(request));
                }
                (token, answer) = refresh_answer(&mut refresh) => {
                    self.on_refresh_answer(token, answer).await;
                }
                () = tokio::time::sleep_until(wake) => {}
                () = tokio::time::sleep_until(silent_until) => {
                    // A ping may have come meanwhile (pings do not end `recv`).
                    if connection.last_received() + self.config.idle_timeout <= Instant::now() {
                        return Served::Ended(Disconnect::Lost(format!(
                            "nothing heard for {:?}",
                            self.config.idle_timeout
                        )));
                    }
                }
            }
        }
    }

    /// A connection is open: the state, the status, the refresh timer and the application
    /// learn of it.
    async fn on_welcome(&mut self, welcome: Welcome, url: &str) {
        self.state.on_connected(&welcome, Instant::now());
        self.refresh = RefreshTimer::start(
            self.token.as_deref(),
            self.config.fresh_token.is_some(),
            self.config.refresh_margin,
            clocks(),
        );
        let event = Event::Connected {
            url: url.to_owned(),
            session_id: welcome.session_id.clone(),
            last_seq: welcome.last_seq,
        };
        self.status.send_replace(Status::Connected {
            url: url.to_owned(),
            welcome,
        });
        self.emit(event).await;
    }

    /// Asks the token source for a token and returns the `refresh` command that carries it.
    async fn start_refresh(&mut self, pending: &mut Option<PendingRefresh>) -> Option<Command> {
        let Some(token) = self.config.fresh_token.as_ref().and_then(|source| source()) else {
            self.refresh_failed(None, "the token source gave no token".to_owned())
                .await;
            return None;
        };
        let (tx, reply) = oneshot::channel();
        let command = self.state.request(
            CommandKind::Refresh {
                token: token.clone(),
            },
            tx,
        )?;
        *pending = Some(PendingRefresh { token, reply });
        Some(command)
    }

    async fn on_refresh_answer(
        &mut self,
        token: String,
        answer: Result<ServerFrame<'static>, ClientError>,
    ) {
        match answer {
            Ok(ServerFrame::Refreshed { exp, .. }) => {
                self.token = Some(token);
                self.refresh
                    .on_refreshed(exp, self.config.refresh_margin, clocks());
                self.emit(Event::TokenRefreshed { exp }).await;
            }
            Ok(other) => {
                let reason = format!("`refresh` answered with {}", other.encode());
                self.refresh_failed(None, reason).await;
            }
            Err(ClientError::Server(error)) => {
                self.refresh_failed(Some(error.code), error.to_string())
                    .await;
            }
            Err(error) => self.refresh_failed(None, error.to_string()).await,
        }
    }

    async fn refresh_failed(&mut self, refused: Option<ErrorCode>, reason: String) {
        let pause = self.config.backoff.delay(1, &mut self.jitter);
        let retry_in = self.refresh.on_failed(refused, pause, clocks());
        self.emit(Event::TokenRefreshFailed { reason, retry_in })
            .await;
    }

    /// Takes one request of the application; returns a command to write now, if any.
    fn on_request(&mut self, request: Option<Request>) -> Option<Command> {
        match request? {
            Request::Send(send, waiter) => {
                self.state.submit(send, waiter, Instant::now());
                None
            }
            Request::Change(kind, waiter) => {
                self.state.submit_change(kind, waiter, Instant::now());
                None
            }
            Request::Sync(waiter) => {
                self.state.want_sync(Some(waiter));
                None
            }
            Request::Command(kind, waiter) => self.state.request(kind, waiter),
            Request::Close(done) => {
                self.closing = Some(done);
                None
            }
        }
    }

    /// Hands the state's events to the application.
    async fn publish(&mut self) {
        self.delivered
            .store(self.state.delivered(), Ordering::Release);
        for event in self.state.take_events() {
            // An application that dropped its events still gets its sends acked.
            let _ = self.events.send(event).await;
        }
        self.state.answer_sync_waiters();
    }

    async fn emit(&mut self, event: Event) {
        self.publish().await;
        let _ = self.events.send(event).await;
    }

    async fn stop(mut self, error: ClientError) {
        self.state.on_stopped(&error);
        self.status.send_replace(Status::closed(error.clone()));
        self.emit(Event::Stopped(error)).await;
    }

    async fn finish_close(mut self) {
        let closing = self.closing.take();
        self.state.on_stopped(&ClientError::Closed);
        self.status
            .send_replace(Status::closed(ClientError::Closed));
        self.publish().await;
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }
}

/// Writes `commands` and flushes them.
async fn write(connection: &mut Connection, commands: &[Command]) -> Result<(), Disconnect> {
    if commands.is_empty() {
        return Ok(());
    }
    for command in commands {
        connection.feed(command).await?;
    }
    connection.flush().await
}
