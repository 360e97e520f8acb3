//! One client's WebSocket, and nothing of the actors: the bounded queue of frames towards
//! the client and the two tasks that own the socket.
//!
//! - [`outbound`]: the queue ([`Outbound`] to send, [`OutboundQueue`] for the writer) and the
//!   connection's shared state, including its `welcome` ([`WelcomeSlot`]).
//! - [`writer`]: the writer task; it writes batches of frames with one flush, runs the
//!   heartbeat and sends the close frame.
//! - [`heartbeat`]: when to ping a silent client and when to close it.
//! - [`reader`]: the reader task; it decodes frames and hands them to the session serving the
//!   connection, known only as a [`SessionInbox`].
//! - [`record`]: the log lines and metrics of a connection's opening and end.
//!
//! Both tasks outlive any one session actor: when SessionSupervisor restarts a crashed
//! session, the new actor takes over the same queue and the reader follows it through
//! [`CurrentSession`]. The connection ends when either task ends.

mod heartbeat;
mod outbound;
mod reader;
mod record;
mod wait;
mod writer;

use std::sync::Arc;

use axum::extract::ws::WebSocket;
use futures_util::StreamExt;

use crate::live::LiveSettings;

pub use heartbeat::Heartbeat;
pub use outbound::{Droppable, Outbound, OutboundQueue, WelcomeSlot};
pub use reader::{CurrentSession, Inbound, Refused, SessionInbox};
pub use record::ConnectionRecord;

use reader::run_reader;
use writer::run_writer;

/// Everything the socket tasks of one connection need besides the socket.
pub struct SocketTasks<S> {
    pub outbound: Outbound,
    pub queue: OutboundQueue,
    /// The session actor currently serving the connection, published by SessionSupervisor.
    pub session: Arc<CurrentSession<S>>,
    /// The node's live settings: the decode limits and the heartbeat, read as they apply.
    pub live: Arc<LiveSettings>,
    pub record: Arc<ConnectionRecord>,
}

/// Splits `socket` and starts its writer and reader tasks.
pub fn spawn_socket_tasks<S: SessionInbox>(socket: WebSocket, tasks: SocketTasks<S>) {
    let (sink, stream) = socket.split();
    tokio::spawn(run_writer(
        sink,
        tasks.queue,
        Arc::clone(&tasks.live),
        Arc::clone(&tasks.record),
    ));
    tokio::spawn(run_reader(
        stream,
        tasks.session,
        tasks.live,
        tasks.outbound,
        tasks.record,
    ));
}
