//! One benchmark user's connection during a `dm` run: a writer task that sends the messages
//! the pacer queues for it, and a reader task that matches every frame it receives against
//! the plan.
//!
//! The reader owns what only it can check: the user's seqs (from its acks and the messages
//! it receives) and the order of arrival per sender. Everything about a message itself goes
//! to the shared [`Ledger`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use peroxo_client::WebSocket;
use peroxo_protocol::{ErrorCode, MessageView, ServerFrame};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::ledger::Ledger;
use super::plan::{self, Plan};
use crate::client::CLOSE_TIMEOUT;
use crate::report::Tally;

/// The most frames written before one flush.
const MAX_BATCH: usize = 64;

/// What every connection task of a run shares.
pub(super) struct Shared {
    pub(super) plan: Plan,
    pub(super) ledger: Ledger,
    /// When message 0 is due; message `i` is due at `start + plan.due(i)`.
    pub(super) start: Instant,
    pub(super) text_bytes: usize,
}

impl Shared {
    /// How late, after it was due, something about message `i` happened now.
    fn latency(&self, i: u32) -> std::time::Duration {
        Instant::now().saturating_duration_since(self.start + self.plan.due(i))
    }
}

/// How the run tells connection tasks to finish.
#[derive(Clone)]
pub(super) struct Stop {
    /// Send the close frame (writers), and expect the server's close (readers).
    pub(super) close: CancellationToken,
    /// Give up waiting for the server's close (readers).
    pub(super) abandon: CancellationToken,
}

/// Sends the messages queued in `outbox` until `stop.close`, then closes the connection.
/// Returns why writing failed, if it did.
pub(super) async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut outbox: mpsc::UnboundedReceiver<u32>,
    shared: Arc<Shared>,
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

/// Writes the `send` frames of `batch` and flushes them once.
async fn send_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    batch: &[u32],
    shared: &Shared,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    for &i in batch {
        let send = shared.plan.send(i, shared.text_bytes);
        shared.ledger.mark_sent(i);
        sink.feed(Message::text(send.encode())).await?;
    }
    sink.flush().await
}

/// After a write failure: refuses further messages and counts the queued ones as abandoned.
fn abandon_outbox(outbox: &mut mpsc::UnboundedReceiver<u32>, shared: &Shared) {
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
pub(super) struct PeerReport {
    /// The user's number.
    pub(super) user: u32,
    /// The seqs of the user's acks and received messages, in arrival order.
    pub(super) seqs: Vec<u64>,
    /// Messages that arrived after a later message of the same sender.
    pub(super) out_of_order: u64,
    /// Acks for another user's sends, messages for someone else or from an unexpected
    /// sender, and frames naming messages this run never planned.
    pub(super) misrouted: u64,
    /// Acks flagged `duplicate` (this run never resends).
    pub(super) duplicate_acks: u64,
    /// Frames that could not be decoded.
    pub(super) undecodable: u64,
    /// `error` frames that named no message, by code.
    pub(super) errors_without_id: Tally,
    pub(super) sync_hints: u64,
    /// How the server ended the connection, when it did so before the run asked to close.
    pub(super) closed_by_server: Option<String>,
    /// Whether the server answered the run's close frame with its own.
    pub(super) close_answered: bool,
}

/// Reads `me`'s frames until the connection ends (or `stop.abandon`).
pub(super) async fn read(
    mut stream: SplitStream<WebSocket>,
    me: u32,
    shared: Arc<Shared>,
    stop: Stop,
) -> PeerReport {
    let mut reader = Reader {
        me,
        me_name: plan::user_name(me),
        shared,
        last_from: HashMap::new(),
        report: PeerReport {
            user: me,
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
struct Reader {
    me: u32,
    me_name: String,
    shared: Arc<Shared>,
    /// The index of the latest message received from each sender.
    last_from: HashMap<u32, u32>,
    report: PeerReport,
}

impl Reader {
    fn on_text(&mut self, text: &str) {
        match ServerFrame::decode(text) {
            Ok(ServerFrame::Ack {
                client_msg_id,
                seq,
                duplicate,
                ..
            }) => self.on_ack(&client_msg_id, seq, duplicate),
            Ok(ServerFrame::Message(message)) => self.on_message(&message),
            Ok(ServerFrame::Error {
                code,
                client_msg_id,
                ..
            }) => self.on_error(code, client_msg_id.as_deref()),
            Ok(ServerFrame::SyncHint { .. }) => self.report.sync_hints += 1,
            // Frames of features this run does not use (presence, pong, ...).
            Ok(_) => {}
            Err(_) => self.report.undecodable += 1,
        }
    }

    /// An ack for one of our sends: its seq is ours.
    fn on_ack(&mut self, client_msg_id: &str, seq: u64, duplicate: bool) {
        self.report.seqs.push(seq);
        if duplicate {
            self.report.duplicate_acks += 1;
        }
        match plan::index_of_client_msg_id(client_msg_id) {
            Some(i) if self.shared.ledger.contains(i) && self.shared.plan.sender(i) == self.me => {
                self.shared.ledger.record_ack(i, self.shared.latency(i));
            }
            _ => self.report.misrouted += 1,
        }
    }

    /// A message delivered to us: its seq is ours; it must come from its planned sender, and
    /// after that sender's earlier messages.
    fn on_message(&mut self, message: &MessageView<'_>) {
        self.report.seqs.push(message.seq);
        let plan = &self.shared.plan;
        let index = plan::index_of_text(&message.text);
        let Some(i) = index.filter(|i| self.shared.ledger.contains(*i)) else {
            self.report.misrouted += 1;
            return;
        };
        let sender = plan.sender(i);
        if plan.recipient(i) != self.me
            || message.to != self.me_name
            || plan::user_number(&message.from) != Some(sender)
        {
            self.report.misrouted += 1;
            return;
        }
        self.shared
            .ledger
            .record_delivery(i, self.shared.latency(i));
        let last = self.last_from.entry(sender).or_insert(i);
        if i < *last {
            self.report.out_of_order += 1;
        } else {
            *last = i;
        }
    }

    /// A refused command: counted against its message when it names one.
    fn on_error(&mut self, code: ErrorCode, client_msg_id: Option<&str>) {
        match client_msg_id.and_then(plan::index_of_client_msg_id) {
            Some(i) if self.shared.ledger.contains(i) => self.shared.ledger.record_error(i, code),
            _ => self.report.errors_without_id.add(code.as_str(), 1),
        }
    }
}
