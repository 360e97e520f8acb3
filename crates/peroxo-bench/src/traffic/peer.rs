//! One session of an open-loop run: a writer task that sends the commands the pacer queues
//! for it, and a reader task that matches every frame it receives against the plan.
//!
//! The reader owns what only it can check: the user's seqs (from its acks and the messages
//! and events it receives) and the order of arrival within each sequence the plan names (a
//! sender, a group). Everything about a command itself goes to the shared [`super::Ledger`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use peroxo_client::WebSocket;
use peroxo_protocol::{ErrorCode, EventView, MessageView, ReqId, ServerFrame};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{EventRoute, Plan, Reply, Route, Shared, Stop, names};
use crate::client::CLOSE_TIMEOUT;
use crate::report::Tally;

/// The most frames written before one flush.
const MAX_BATCH: usize = 64;

/// Sends the commands queued in `outbox` until `stop.close`, then closes the connection.
/// Returns why writing failed, if it did.
pub(super) async fn write<P: Plan>(
    mut sink: SplitSink<WebSocket, Message>,
    mut outbox: mpsc::UnboundedReceiver<u32>,
    shared: Arc<Shared<P>>,
    stop: Stop,
) -> Option<String> {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            biased;
            () = stop.close.cancelled() => break,
            first = outbox.recv() => first,
        };
        let Some(first) = first else {
            // The pacer is done: wait for the run to end.
            stop.close.cancelled().await;
            break;
        };
        batch.clear();
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match outbox.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        if let Err(error) = send_batch(&mut sink, &batch, &shared).await {
            abandon_outbox(&mut outbox, &shared);
            return Some(format!("write: {error}"));
        }
    }
    let close = sink.send(Message::Close(None));
    match tokio::time::timeout(CLOSE_TIMEOUT, close).await {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(format!("close: {error}")),
        Err(_) => Some("close: timed out".to_owned()),
    }
}

/// Writes the commands of `batch` and flushes them once.
async fn send_batch<P: Plan>(
    sink: &mut SplitSink<WebSocket, Message>,
    batch: &[u32],
    shared: &Shared<P>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    for &i in batch {
        let command = shared.plan.command(i, shared.text_bytes);
        shared.ledger.mark_sent(i);
        sink.feed(Message::text(command.encode())).await?;
    }
    sink.flush().await
}

/// After a write failure: refuses further commands and counts the queued ones as abandoned.
fn abandon_outbox<P>(outbox: &mut mpsc::UnboundedReceiver<u32>, shared: &Shared<P>) {
    outbox.close();
    let mut abandoned = 0;
    while outbox.try_recv().is_ok() {
        abandoned += 1;
    }
    shared
        .ledger
        .live
        .abandoned
        .fetch_add(abandoned, Ordering::Relaxed);
}

/// What one user's reader found.
#[derive(Debug, Default)]
pub(crate) struct PeerReport {
    /// The user's number.
    pub(crate) user: u32,
    /// The seqs of the user's acks and of the messages and events it received (those seen
    /// before the traffic first), in arrival order.
    pub(crate) seqs: Vec<u64>,
    /// The user's last seq as storage stated it after the run (0 when unknown): the seqs
    /// received live must reach it.
    pub(crate) announced: u64,
    /// Messages that arrived after a later message of the same sequence (sender, group).
    pub(crate) out_of_order: u64,
    /// Acks for another user's commands, messages for someone else or from an unexpected
    /// sender, replies that did not say what the plan expects, stream events (the traffic
    /// makes none), and frames naming commands this run never planned.
    pub(crate) misrouted: u64,
    /// Acks flagged `duplicate` (this run never resends).
    pub(crate) duplicate_acks: u64,
    /// Frames that could not be decoded.
    pub(crate) undecodable: u64,
    /// `error` frames that named no command, by code.
    pub(crate) errors_without_id: Tally,
    pub(crate) sync_hints: u64,
    /// How the server ended the connection, when it did so before the run asked to close.
    pub(crate) closed_by_server: Option<String>,
    /// Whether the server answered the run's close frame with its own.
    pub(crate) close_answered: bool,
}

/// Reads `me`'s frames until the connection ends (or `stop.abandon`). `seen` are the seqs
/// the user saw before the traffic.
pub(super) async fn read<P: Plan>(
    mut stream: SplitStream<WebSocket>,
    me: u32,
    seen: Vec<u64>,
    shared: Arc<Shared<P>>,
    stop: Stop,
) -> PeerReport {
    let mut reader = Reader {
        me,
        shared,
        last_in: HashMap::new(),
        report: PeerReport {
            user: me,
            seqs: seen,
            ..PeerReport::default()
        },
    };
    loop {
        let frame = tokio::select! {
            () = stop.abandon.cancelled() => break,
            frame = stream.next() => frame,
        };
        match frame {
            Some(Ok(Message::Text(text))) => reader.on_text(text.as_str()),
            Some(Ok(Message::Close(frame))) => {
                if stop.close.is_cancelled() {
                    reader.report.close_answered = true;
                } else {
                    let close = frame.map_or("no code".to_owned(), |f| {
                        format!("{} {}", u16::from(f.code), f.reason)
                    });
                    reader.report.closed_by_server = Some(close);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                if !stop.close.is_cancelled() {
                    reader.report.closed_by_server = Some(format!("error: {error}"));
                }
                break;
            }
            None => break,
        }
    }
    reader.report
}

/// The state of one user's reader.
struct Reader<P> {
    me: u32,
    shared: Arc<Shared<P>>,
    /// The position of the latest message received in each sequence of the plan.
    last_in: HashMap<u32, u64>,
    report: PeerReport,
}

impl<P: Plan> Reader<P> {
    fn on_text(&mut self, text: &str) {
        match ServerFrame::decode(text) {
            Ok(ServerFrame::Ack {
                client_msg_id,
                message_id,
                seq,
                duplicate,
                ..
            }) => self.on_ack(&client_msg_id, &message_id, seq, duplicate),
            Ok(ServerFrame::Message(message)) => self.on_message(&message),
            Ok(ServerFrame::Event(event)) => self.on_event(&event),
            Ok(ServerFrame::Error {
                code,
                client_msg_id,
                req_id,
                ..
            }) => {
                let id = client_msg_id.as_deref().or(match req_id.as_deref() {
                    Some(ReqId::Text(text)) => Some(text.as_str()),
                    _ => None,
                });
                self.on_error(code, id);
            }
            Ok(ServerFrame::SyncHint { .. }) => self.report.sync_hints += 1,
            Ok(other) => self.on_reply(&other),
            Err(_) => self.report.undecodable += 1,
        }
    }

    /// An ack for one of our sends: its seq is ours.
    fn on_ack(&mut self, client_msg_id: &str, message_id: &str, seq: u64, duplicate: bool) {
        self.report.seqs.push(seq);
        if duplicate {
            self.report.duplicate_acks += 1;
        }
        match names::index_of_id(client_msg_id) {
            Some(i) if self.shared.ledger.contains(i) && self.shared.plan.sender(i) == self.me => {
                self.shared.plan.acked(i, message_id);
                self.shared.ledger.record_ack(i, self.shared.latency(i));
            }
            _ => self.report.misrouted += 1,
        }
    }

    /// A message delivered to us: its seq is ours; the plan must have it reach us, and after
    /// the earlier messages of its sequence.
    fn on_message(&mut self, message: &MessageView<'_>) {
        self.report.seqs.push(message.seq);
        let route = self.shared.plan.route(self.me, message);
        self.on_delivery(route);
    }

    /// A stream event: its seq is ours; it must be a change the plan made, reaching one of
    /// its recipients (or its sender's own copy).
    fn on_event(&mut self, event: &EventView<'_>) {
        self.report.seqs.push(event.seq);
        match self.shared.plan.route_event(self.me, event) {
            EventRoute::Delivery(route) => self.on_delivery(Some(route)),
            EventRoute::Echo => {}
            EventRoute::Unplanned => self.report.misrouted += 1,
        }
    }

    /// Records the delivery `route` names, in its place in its sequence.
    fn on_delivery(&mut self, route: Option<Route>) {
        let Some(route) = route.filter(|r| self.shared.ledger.contains(r.index)) else {
            self.report.misrouted += 1;
            return;
        };
        let i = route.index;
        self.shared
            .ledger
            .record_delivery(i, route.row, self.shared.latency(i));
        let last = self.last_in.entry(route.sequence).or_insert(route.position);
        if route.position < *last {
            self.report.out_of_order += 1;
        } else {
            *last = route.position;
        }
    }

    /// A reply that is not an ack: the plan says which command it answers, if any.
    fn on_reply(&mut self, frame: &ServerFrame<'_>) {
        let answered = match self.shared.plan.reply(frame) {
            Reply::Answers(i) => i,
            Reply::Wrong(i) => {
                self.report.misrouted += 1;
                i
            }
            // Frames of features this run does not use (presence, pong, ...).
            Reply::Unplanned => return,
        };
        if self.shared.ledger.contains(answered) && self.shared.plan.sender(answered) == self.me {
            self.shared
                .ledger
                .record_ack(answered, self.shared.latency(answered));
        } else {
            self.report.misrouted += 1;
        }
    }

    /// A refused command: counted against it when the error names it (by `client_msg_id`, or
    /// by a `req_id` the plan gave it).
    fn on_error(&mut self, code: ErrorCode, id: Option<&str>) {
        match id.and_then(names::index_of_id) {
            Some(i) if self.shared.ledger.contains(i) => self.shared.ledger.record_error(i, code),
            _ => self.report.errors_without_id.add(code.as_str(), 1),
        }
    }
}
