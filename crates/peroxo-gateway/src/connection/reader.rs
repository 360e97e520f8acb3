//! The reader task: owns the receiving half of the socket. It decodes each frame and hands
//! it to the current session actor, and waits until the actor has taken it before reading
//! the next: a client that sends faster than its session works is pushed back by TCP.
//!
//! The reader knows the session only as a [`SessionInbox`]; SessionSupervisor publishes each
//! incarnation in the connection's [`CurrentSession`], and the reader follows it.

use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use peroxo_protocol::{self as protocol, CloseCause, Command, ProtocolError};
use tokio::sync::{Notify, oneshot};

use super::outbound::{Outbound, Shared};
use super::record::ConnectionRecord;
use super::wait::{lock, wait_for};
use crate::live::LiveSettings;
use crate::telemetry::{CLIENT_CLOSED, CONNECTION_LOST};

/// What the reader hands over.
#[derive(Debug)]
pub enum Inbound {
    /// A text frame, decoded (or the reason it could not be).
    Command(Result<Command, ProtocolError>),
    /// A binary frame; the protocol has none.
    Binary,
    /// The socket has closed.
    SocketClosed,
}

/// Why a session did not take what the reader offered.
#[derive(Debug)]
pub enum Refused {
    /// This incarnation has stopped; the input comes back for the next one.
    Stopped(Inbound),
    /// No incarnation will take input any more.
    Gone,
}

/// Where the reader hands what it read: one incarnation of the session serving the
/// connection (the Session actor implements it).
pub trait SessionInbox: Clone + Send + Sync + 'static {
    /// Offers `input`; the session answers `accepted` once it has taken it.
    fn offer(&self, input: Inbound, accepted: oneshot::Sender<()>) -> Result<(), Refused>;
}

/// The session actor currently serving a connection: SessionSupervisor publishes each
/// incarnation, and the reader hands frames to whichever is current.
pub struct CurrentSession<S> {
    current: Mutex<Current<S>>,
    /// Wakes the reader when an incarnation replaces the last one, or when none ever will.
    changed: Notify,
}

struct Current<S> {
    actor: Option<S>,
    /// Counts replacements, so the reader can tell a new incarnation from the one it saw.
    version: u64,
    /// No incarnation will follow: the connection is over.
    retired: bool,
}

impl<S: Clone> CurrentSession<S> {
    pub fn new(actor: S) -> Arc<Self> {
        Arc::new(Self {
            current: Mutex::new(Current {
                actor: Some(actor),
                version: 0,
                retired: false,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Current<S>> {
        lock(&self.current)
    }

    /// The current incarnation and its version.
    pub fn get(&self) -> (Option<S>, u64) {
        let current = self.lock();
        (current.actor.clone(), current.version)
    }

    /// Publishes the incarnation that replaces a failed one.
    pub fn replace(&self, actor: S) {
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

pub(super) async fn run_reader<S: SessionInbox>(
    mut stream: SplitStream<WebSocket>,
    session: Arc<CurrentSession<S>>,
    live: Arc<LiveSettings>,
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
            Some(Ok(Message::Text(text))) => {
                let settings = live.load();
                // The socket's own cap is the limit when it opened; a reload may have
                // lowered it since.
                if text.len() > settings.limits.max_message_bytes {
                    outbound.close_now(CloseCause::TooLarge);
                    break;
                }
                Inbound::Command(protocol::decode(&text, &settings.decode_limits()))
            }
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
async fn hand_to_session<S: SessionInbox>(
    session: &CurrentSession<S>,
    mut input: Inbound,
    connection: &Shared,
) -> bool {
    loop {
        let (actor, seen) = session.get();
        if let Some(actor) = actor {
            let (accepted, taken) = oneshot::channel();
            match actor.offer(input, accepted) {
                Ok(()) => {
                    // A session that dies while handling this frame drops `accepted`; the
                    // frame is answered by the restart's `internal` error, not retried.
                    return taken.await.is_ok()
                        || wait_for_next_session(session, seen, connection).await;
                }
                Err(Refused::Stopped(back)) => input = back,
                Err(Refused::Gone) => return false,
            }
        }
        if !wait_for_next_session(session, seen, connection).await {
            return false;
        }
    }
}

/// Waits until SessionSupervisor publishes an incarnation newer than `seen`; false when it
/// never will.
async fn wait_for_next_session<S: Clone>(
    session: &CurrentSession<S>,
    seen: u64,
    connection: &Shared,
) -> bool {
    tokio::select! {
        () = connection.ended() => false,
        replaced = session.replaced_since(seen) => replaced,
    }
}
