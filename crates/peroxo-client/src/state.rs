//! What the correct client knows and decides, with no I/O: the outbox of unacked sends (and,
//! in protocol 3, unanswered changes to messages), the user's stream by seq (messages, and in
//! protocol 2 events), the `sync` loop, and the requests waiting for their reply. The
//! [`Client`](crate::Client)'s task feeds it connections and frames and writes the commands it
//! asks for; everything it decides is unit-tested here without a server.
//!
//! Sync, as docs/PROTOCOL.md asks: after a (re)connect whose `welcome.last_seq` is past what
//! the client delivered, on a `message` or `event` whose seq skips ahead, and on `sync_hint`. One page is
//! in flight at a time; a cycle goes on while `has_more` is true (from the last seq of the
//! page) and while a page filled a hole but another remains. [`ClientState::want_sync`] with a
//! waiter is answered when a cycle that starts after it completes.

use std::collections::HashMap;
use std::time::Duration;

use peroxo_protocol::event::is_group_id;
use peroxo_protocol::{
    Command, CommandKind, ErrorCode, EventView, MAX_SYNC_LIMIT, MessageView, ReqId, ServerFrame,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::connection::Welcome;
use crate::outbox::{ErrorOutcome, Key, Outbox, Outgoing};
use crate::reconnect::Jitter;
use crate::stream::{Delivered, DeliveredEvent, SeqStream, StreamEntry, Taken, Via};
use crate::{Ack, Changed, ClientError, ErrorAbout, Event, SendError, ServerError};

/// How long a sync that failed (storage unreachable) waits before it goes again.
const SYNC_RETRY: Duration = Duration::from_millis(200);
/// The largest text frame the protocol accepts (`limits.max_message_bytes` may not be higher).
pub(crate) const MAX_FRAME_BYTES: usize = 65_536;

pub(crate) type SendWaiter = Option<oneshot::Sender<Result<Ack, SendError>>>;
pub(crate) type ChangeWaiter = oneshot::Sender<Result<Changed, SendError>>;
pub(crate) type SyncWaiter = oneshot::Sender<Result<u64, ClientError>>;
pub(crate) type RequestWaiter = oneshot::Sender<Result<ServerFrame<'static>, ClientError>>;

/// Who waits for an entry of the outbox.
#[derive(Debug)]
pub(crate) enum Waiter {
    Send(SendWaiter),
    Change(ChangeWaiter),
}

impl Waiter {
    fn fail(self, error: SendError) {
        match self {
            Waiter::Send(Some(waiter)) => {
                let _ = waiter.send(Err(error));
            }
            Waiter::Send(None) => {}
            Waiter::Change(waiter) => {
                let _ = waiter.send(Err(error));
            }
        }
    }
}

/// What a `sync` reply says besides its entries.
#[derive(Debug, Clone, Copy)]
struct SyncReply {
    last_seq: u64,
    has_more: bool,
    /// Seqs up to this one that no page returns were deleted by retention (0: none).
    pruned_until: u64,
}

/// The `sync` loop.
#[derive(Debug, Default)]
struct SyncLoop {
    /// The `req_id` of the page in flight.
    in_flight: Option<String>,
    /// A reason to sync came (or the cycle goes on with its next page).
    wanted: bool,
    /// A cycle has started and not completed.
    active: bool,
    /// The number of cycles started so far.
    cycle: u64,
    /// Where the next page starts, when not after the delivered position (paging).
    next_after: Option<u64>,
    /// A page failed: the next goes at this time.
    retry_at: Option<Instant>,
    /// Who waits for a cycle, and the number of the cycle that answers it.
    waiters: Vec<(u64, SyncWaiter)>,
    /// Numbers the `req_id`s of pages.
    pages: u64,
}

/// The client's state across connections.
#[derive(Debug)]
pub(crate) struct ClientState {
    /// The user, from `welcome`.
    me: String,
    stream: SeqStream,
    outbox: Outbox<Waiter>,
    sync: SyncLoop,
    /// The user's highest seq as the server last reported it.
    server_last_seq: u64,
    /// Requests waiting for the reply that carries their `req_id`.
    requests: HashMap<String, RequestWaiter>,
    next_request: u64,
    /// Numbers the `req_id`s of changes (`m<n>`).
    next_change: u64,
    jitter: Jitter,
    connected: bool,
    /// The protocol version of the current (or last) connection, from `welcome`.
    protocol: u32,
    /// Events for the application, in order.
    events: Vec<Event>,
    /// Sync waiters to answer once the events before their answer are handed on.
    answers: Vec<(SyncWaiter, u64)>,
}

impl ClientState {
    pub(crate) fn new(last_seq: u64, retry_base: Duration, jitter: Jitter) -> Self {
        Self {
            me: String::new(),
            stream: SeqStream::after(last_seq),
            outbox: Outbox::new(retry_base),
            sync: SyncLoop::default(),
            server_last_seq: last_seq,
            requests: HashMap::new(),
            next_request: 0,
            next_change: 0,
            jitter,
            connected: false,
            protocol: 0,
            events: Vec::new(),
            answers: Vec::new(),
        }
    }

    /// Every seq up to this one has been delivered to the application.
    pub(crate) fn delivered(&self) -> u64 {
        self.stream.delivered()
    }

    pub(crate) fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Answers the sync waiters whose cycle completed. Called after the events taken with
    /// [`ClientState::take_events`] were handed on, so that a waiter that hears its answer
    /// finds every message of the cycle among the events already.
    pub(crate) fn answer_sync_waiters(&mut self) {
        for (waiter, last_seq) in self.answers.drain(..) {
            let _ = waiter.send(Ok(last_seq));
        }
    }

    /// A new send (an [`Outgoing::Send`]); answered through `waiter` once acked or refused
    /// for good.
    pub(crate) fn submit(&mut self, send: Outgoing, waiter: SendWaiter, now: Instant) {
        self.enqueue(send, Waiter::Send(waiter), now);
    }

    /// A new change to a committed message (protocol 3: `edit`, `delete`, `react`,
    /// `unreact`); answered through `waiter` with its `message_state`, or its refusal for good.
    pub(crate) fn submit_change(&mut self, kind: CommandKind, waiter: ChangeWaiter, now: Instant) {
        self.next_change += 1;
        let req_id = format!("m{}", self.next_change);
        self.enqueue(
            Outgoing::Change { req_id, kind },
            Waiter::Change(waiter),
            now,
        );
    }

    fn enqueue(&mut self, what: Outgoing, waiter: Waiter, now: Instant) {
        // A frame over the protocol's size would close the connection with 1009 at every
        // attempt: refuse it here.
        if over_frame_size(&what) {
            waiter.fail(SendError::TooLarge);
            return;
        }
        self.outbox.push(what, waiter, now);
    }

    /// A request other than a send or a sync; answered with the reply that carries its id.
    pub(crate) fn request(&mut self, kind: CommandKind, waiter: RequestWaiter) -> Option<Command> {
        if !self.connected {
            let _ = waiter.send(Err(ClientError::Disconnected));
            return None;
        }
        self.next_request += 1;
        let req_id = format!("r{}", self.next_request);
        self.requests.insert(req_id.clone(), waiter);
        Some(Command {
            req_id: Some(ReqId::Text(req_id)),
            kind,
        })
    }

    /// Asks for a sync cycle; `waiter`, if any, is answered with the server's last seq when a
    /// cycle that starts from now completes.
    pub(crate) fn want_sync(&mut self, waiter: Option<SyncWaiter>) {
        self.sync.wanted = true;
        if let Some(waiter) = waiter {
            self.sync.waiters.push((self.sync.cycle + 1, waiter));
        }
    }

    pub(crate) fn on_connected(&mut self, welcome: &Welcome, now: Instant) {
        self.connected = true;
        self.protocol = welcome.protocol;
        self.me.clone_from(&welcome.user);
        self.server_last_seq = self.server_last_seq.max(welcome.last_seq);
        self.outbox.on_connected(now);
        self.sync.in_flight = None;
        self.sync.next_after = None;
        self.sync.retry_at = None;
        if welcome.last_seq > self.stream.delivered() || self.stream.has_gap() {
            self.sync.wanted = true;
        }
    }

    pub(crate) fn on_disconnected(&mut self) {
        self.connected = false;
        self.outbox.on_disconnected();
        self.sync.in_flight = None;
        for (_, waiter) in self.requests.drain() {
            let _ = waiter.send(Err(ClientError::Disconnected));
        }
    }

    /// The client stops for good: every waiter learns why.
    pub(crate) fn on_stopped(&mut self, error: &ClientError) {
        self.on_disconnected();
        for pending in self.outbox.drain() {
            pending.waiter.fail(SendError::Stopped(error.clone()));
        }
        for (_, waiter) in self.sync.waiters.drain(..) {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    /// The commands to write now: due sends (and resends), then a sync page when one is wanted.
    pub(crate) fn outgoing(&mut self, now: Instant) -> Vec<Command> {
        if !self.connected {
            return Vec::new();
        }
        let mut commands = self.outbox.take_due(now);
        let retry_due = self.sync.retry_at.is_some_and(|at| at <= now);
        if self.sync.in_flight.is_none() && (self.sync.wanted || retry_due) {
            self.sync.wanted = false;
            self.sync.retry_at = None;
            if !self.sync.active {
                self.sync.active = true;
                self.sync.cycle += 1;
            }
            self.sync.pages += 1;
            let req_id = format!("sync-{}", self.sync.pages);
            self.sync.in_flight = Some(req_id.clone());
            let after_seq = self
                .sync
                .next_after
                .take()
                .unwrap_or(self.stream.delivered());
            commands.push(Command {
                req_id: Some(ReqId::Text(req_id)),
                kind: CommandKind::Sync {
                    after_seq,
                    limit: MAX_SYNC_LIMIT,
                },
            });
        }
        commands
    }

    /// When something is next due (a resend after its backoff, a sync retry).
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        [self.outbox.next_due(), self.sync.retry_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// A text frame that is not a server frame.
    pub(crate) fn on_undecodable(&mut self, text: &str, error: &str) {
        self.events.push(Event::Anomaly(format!(
            "undecodable frame ({error}): {text}"
        )));
    }

    pub(crate) fn on_frame(&mut self, frame: ServerFrame<'static>, now: Instant) {
        match frame {
            ServerFrame::Message(view) => self.on_live(delivered(view, Via::Live)),
            ServerFrame::Event(view) => self.on_live(StreamEntry::Event(DeliveredEvent {
                event: *view,
                via: Via::Live,
            })),
            ServerFrame::Ack {
                client_msg_id,
                message_id,
                conversation_id,
                seq,
                ts,
                duplicate,
                ..
            } => self.on_ack(Ack {
                client_msg_id: client_msg_id.into_owned(),
                message_id,
                conversation_id,
                seq,
                ts,
                duplicate,
            }),
            ServerFrame::MessageState {
                req_id,
                client_msg_id,
                message,
                duplicate,
                seq,
            } if self.holds_change(req_id.as_deref()) => {
                let changed = Changed {
                    client_msg_id: client_msg_id.map(|id| id.into_owned()),
                    message,
                    duplicate,
                    seq,
                };
                self.on_changed(request_id(req_id.as_deref()).unwrap_or_default(), changed);
            }
            ServerFrame::Sync {
                req_id,
                messages,
                events,
                last_seq,
                has_more,
                pruned_until,
            } if self.is_sync_reply(req_id.as_deref()) => {
                let page = SyncReply {
                    last_seq,
                    has_more,
                    pruned_until: pruned_until.unwrap_or(0),
                };
                self.on_sync_page(messages, events.unwrap_or_default(), page);
            }
            ServerFrame::SyncHint { last_seq } => {
                self.server_last_seq = self.server_last_seq.max(last_seq);
                self.sync.wanted = true;
                self.events.push(Event::SyncHint { last_seq });
            }
            ServerFrame::Error {
                code,
                message,
                retryable,
                req_id,
                client_msg_id,
            } => self.on_error(
                ServerError {
                    code,
                    message: message.into_owned(),
                    retryable,
                    req_id: req_id.map(|id| id.into_owned()),
                    client_msg_id: client_msg_id.map(|id| id.into_owned()),
                },
                now,
            ),
            other => self.on_reply(other),
        }
    }

    /// Whether `req_id` names a request this client made with [`ClientState::request`].
    fn issued(&self, req_id: Option<&ReqId>) -> bool {
        request_id(req_id)
            .and_then(|id| id.strip_prefix('r'))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| (1..=self.next_request).contains(&n))
    }

    /// Whether `req_id` names a change this client made (answered or not).
    fn issued_change(&self, req_id: Option<&ReqId>) -> bool {
        request_id(req_id)
            .and_then(|id| id.strip_prefix('m'))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| (1..=self.next_change).contains(&n))
    }

    /// Whether `req_id` names a change of the outbox, not answered yet.
    fn holds_change(&self, req_id: Option<&ReqId>) -> bool {
        request_id(req_id).is_some_and(|id| self.outbox.holds(&Key::Change(id.to_owned())))
    }

    fn is_sync_reply(&self, req_id: Option<&ReqId>) -> bool {
        match (req_id, &self.sync.in_flight) {
            (Some(ReqId::Text(id)), Some(in_flight)) => id == in_flight,
            _ => false,
        }
    }

    /// A live `message` or `event` frame: a seq that skips ahead asks for a sync.
    fn on_live(&mut self, entry: StreamEntry) {
        if self.stream.skips_ahead(entry.seq()) {
            self.sync.wanted = true;
        }
        self.offer(entry);
    }

    /// Offers an entry to the stream and hands on what became deliverable.
    fn offer(&mut self, entry: StreamEntry) {
        let (seq, id) = (entry.seq(), entry.id());
        match self.stream.take(entry) {
            Taken::Fresh => {}
            Taken::Repeat => self.events.push(Event::Repeat { seq, id }),
            Taken::Conflict {
                seq,
                known,
                offered,
            } => self.events.push(Event::Anomaly(format!(
                "seq {seq} names {known} and also {offered}"
            ))),
        }
        for entry in self.stream.take_ready() {
            self.hand_on(entry);
        }
    }

    fn hand_on(&mut self, entry: StreamEntry) {
        self.events.push(match entry {
            StreamEntry::Message(message) => Event::Message(message),
            StreamEntry::Event(event) => Event::StreamEvent(event),
        });
    }

    fn on_ack(&mut self, ack: Ack) {
        let key = Key::Send(ack.client_msg_id.clone());
        let Some(pending) = self.outbox.on_answer(&key) else {
            self.events.push(Event::Acked { ack, late: true });
            return;
        };
        let (
            Outgoing::Send {
                to, text, reply_to, ..
            },
            Waiter::Send(waiter),
        ) = (pending.what, pending.waiter)
        else {
            unreachable!("a send's key names a send");
        };
        if let Some(waiter) = waiter {
            let _ = waiter.send(Ok(ack.clone()));
        }
        let own = Delivered {
            seq: ack.seq,
            message_id: ack.message_id.clone(),
            conversation_id: ack.conversation_id.clone(),
            from: self.me.clone(),
            to: recipient(&to, &self.me, reply_to.is_some()),
            text,
            ts: ack.ts,
            client_msg_id: Some(ack.client_msg_id.clone()),
            reply_to: reply_to.map(|id| id.to_string()),
            quote: None,
            edited_ts: None,
            deleted: None,
            reactions: Vec::new(),
            via: Via::Ack,
        };
        self.events.push(Event::Acked { ack, late: false });
        self.offer(StreamEntry::Message(own));
    }

    /// The `message_state` answering the change `req_id`: its waiter learns the outcome. The
    /// change's event, if it made one, comes in the stream like any other.
    fn on_changed(&mut self, req_id: &str, changed: Changed) {
        let Some(pending) = self.outbox.on_answer(&Key::Change(req_id.to_owned())) else {
            return;
        };
        if let Waiter::Change(waiter) = pending.waiter {
            let _ = waiter.send(Ok(changed.clone()));
        }
        self.events.push(Event::Changed(changed));
    }

    /// A page of `sync`: its messages and (protocol 2) its events, which together are the
    /// page's entries; the next page starts after the last of either.
    fn on_sync_page(
        &mut self,
        messages: Vec<MessageView<'static>>,
        events: Vec<EventView<'static>>,
        reply: SyncReply,
    ) {
        let SyncReply {
            last_seq,
            has_more,
            pruned_until,
        } = reply;
        self.sync.in_flight = None;
        let before = self.stream.delivered();
        let page_end = messages
            .iter()
            .map(|m| m.seq)
            .chain(events.iter().map(|e| e.seq))
            .max();
        for message in messages {
            self.offer(delivered(message, Via::Sync));
        }
        for event in events {
            self.offer(StreamEntry::Event(DeliveredEvent {
                event,
                via: Via::Sync,
            }));
        }
        // Seqs up to `pruned_until` that no page returns were deleted by retention: passed
        // over, as far as this page reaches (the next page may still hold some of them).
        let pruned_reach = match page_end {
            Some(end) if has_more => pruned_until.min(end),
            _ => pruned_until,
        };
        for entry in self.stream.skip_to(pruned_reach) {
            self.hand_on(entry);
        }
        if !has_more && self.protocol < 2 {
            // A protocol-1 sync returns direct messages only, and its `last_seq` is read in
            // the same snapshot: every seq up to it that no page of the cycle returned is a
            // group message or an event of the user's stream, never this connection's.
            for entry in self.stream.skip_to(last_seq) {
                self.hand_on(entry);
            }
        }
        self.server_last_seq = self.server_last_seq.max(last_seq);
        let delivered = self.stream.delivered();
        if has_more && page_end.is_some() {
            // The next page starts after the last message of this one.
            self.sync.next_after = page_end;
            self.sync.wanted = true;
        } else if delivered < last_seq && delivered > before {
            // The page filled a hole, and there is another past it.
            self.sync.wanted = true;
        } else {
            if delivered < last_seq {
                self.events.push(Event::Anomaly(format!(
                    "sync after seq {delivered} returns nothing, but last_seq is {last_seq}"
                )));
            }
            self.complete_sync_cycle(last_seq);
        }
    }

    fn complete_sync_cycle(&mut self, last_seq: u64) {
        self.sync.active = false;
        let cycle = self.sync.cycle;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sync.waiters)
            .into_iter()
            .partition(|(needed, _)| *needed <= cycle);
        self.sync.waiters = waiting;
        if !self.sync.waiters.is_empty() {
            self.sync.wanted = true;
        }
        self.answers
            .extend(done.into_iter().map(|(_, waiter)| (waiter, last_seq)));
        self.events.push(Event::Synced {
            delivered: self.stream.delivered(),
            last_seq,
        });
    }

    fn on_error(&mut self, error: ServerError, now: Instant) {
        // Sends carry no `req_id`, so a `req_id` names a request even when the error also
        // names a `client_msg_id` (that of a `create_group`).
        let about = if let Some(waiter) =
            request_id(error.req_id.as_ref()).and_then(|id| self.requests.remove(id))
        {
            let _ = waiter.send(Err(ClientError::Server(error.clone())));
            ErrorAbout::Request
        } else if self.holds_change(error.req_id.as_ref()) {
            let req_id = request_id(error.req_id.as_ref())
                .unwrap_or_default()
                .to_owned();
            self.on_outbox_error(Key::Change(req_id.clone()), &error, now);
            ErrorAbout::Change(req_id)
        } else if self.issued_change(error.req_id.as_ref()) {
            // The late answer to a change answered already (it went twice after a session
            // restart).
            ErrorAbout::Change(
                request_id(error.req_id.as_ref())
                    .unwrap_or_default()
                    .to_owned(),
            )
        } else if self.issued(error.req_id.as_ref()) {
            // The late answer to a request given up on after a session restart: the server
            // may still carry out what the restarted session had handed off.
            ErrorAbout::Request
        } else if let Some(id) = error.client_msg_id.clone() {
            self.on_outbox_error(Key::Send(id.clone()), &error, now);
            ErrorAbout::Send(id)
        } else if self.is_sync_reply(error.req_id.as_ref()) {
            // A read that found storage unreachable: the page goes again shortly.
            self.sync.in_flight = None;
            self.sync.retry_at = Some(now + SYNC_RETRY);
            ErrorAbout::Sync
        } else if error.req_id.is_none() && error.code == ErrorCode::Internal {
            // The server's session restarted: what it was working on may not have been done.
            // Sends are safe to repeat; a sync page is asked for again; a request is the
            // application's to repeat, if it is safe to.
            self.outbox.on_session_restart(now);
            if self.sync.in_flight.take().is_some() {
                self.sync.wanted = true;
            }
            for (_, waiter) in self.requests.drain() {
                let _ = waiter.send(Err(ClientError::Interrupted));
            }
            ErrorAbout::SessionRestart
        } else {
            ErrorAbout::Other
        };
        self.events.push(Event::Error { error, about });
    }

    /// An error naming an entry of the outbox: it goes again when retryable, fails otherwise.
    fn on_outbox_error(&mut self, key: Key, error: &ServerError, now: Instant) {
        if let ErrorOutcome::Failed(pending) =
            self.outbox
                .on_error(&key, error.retryable, now, &mut self.jitter)
        {
            pending.waiter.fail(SendError::Refused(error.clone()));
        }
    }

    /// A reply to a request, or a frame nobody asked for (presence, typing, receipts, …).
    fn on_reply(&mut self, frame: ServerFrame<'static>) {
        let req_id = match &frame {
            ServerFrame::History { req_id, .. }
            | ServerFrame::PresenceSnapshot { req_id, .. }
            | ServerFrame::OnlineUsers { req_id, .. }
            | ServerFrame::Pong { req_id, .. }
            | ServerFrame::Refreshed { req_id, .. }
            | ServerFrame::Sync { req_id, .. }
            | ServerFrame::GroupCreated { req_id, .. }
            | ServerFrame::Done { req_id, .. }
            | ServerFrame::Members { req_id, .. }
            | ServerFrame::Conversations { req_id, .. }
            | ServerFrame::ReadState { req_id, .. }
            | ServerFrame::ReadReceipts { req_id, .. }
            | ServerFrame::MessageState { req_id, .. } => req_id.as_deref(),
            _ => None,
        };
        if let Some(waiter) = request_id(req_id).and_then(|id| self.requests.remove(id)) {
            let _ = waiter.send(Ok(frame));
        } else {
            self.events.push(Event::Frame(frame));
        }
    }
}

fn request_id(req_id: Option<&ReqId>) -> Option<&str> {
    match req_id {
        Some(ReqId::Text(id)) => Some(id),
        _ => None,
    }
}

/// Whether the frame of a send or a change is over the protocol's size. Escaping makes a byte
/// of text at most 6 bytes of JSON, and ids and the rest of a frame stay far below 1 KiB, so
/// only a long text needs encoding to tell.
fn over_frame_size(what: &Outgoing) -> bool {
    let text = match what {
        Outgoing::Send { text, .. }
        | Outgoing::Change {
            kind: CommandKind::Edit { text, .. },
            ..
        } => text.len(),
        Outgoing::Change { .. } => 0,
    };
    1024 + 6 * text > MAX_FRAME_BYTES && what.command().encode().len() > MAX_FRAME_BYTES
}

/// Who an own message went to: `to` itself, but for a reply in a direct conversation, which
/// names the conversation (`alice:bob`): then the other participant (or `me`, in the
/// conversation with oneself).
fn recipient(to: &str, me: &str, reply: bool) -> String {
    match to.split_once(':') {
        Some((a, b)) if reply && !is_group_id(to) => if a == me { b } else { a }.to_owned(),
        _ => to.to_owned(),
    }
}

fn delivered(view: MessageView<'static>, via: Via) -> StreamEntry {
    StreamEntry::Message(Delivered {
        seq: view.seq,
        message_id: view.message_id,
        conversation_id: view.conversation_id,
        from: view.from.into_owned(),
        to: view.to.into_owned(),
        text: view.text.into_owned(),
        ts: view.ts,
        client_msg_id: view.client_msg_id.map(|id| id.into_owned()),
        reply_to: view.reply_to.as_ref().map(|quote| quote.message_id.clone()),
        quote: view.reply_to,
        edited_ts: view.edited_ts,
        deleted: view.deleted,
        reactions: view.reactions.unwrap_or_default(),
        via,
    })
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use peroxo_protocol::{MessageView, ReactionView};

    use crate::outbox::tests::send;

    use super::*;

    fn welcome(last_seq: u64) -> Welcome {
        Welcome {
            session_id: "s1".into(),
            user: "alice".into(),
            tenant: "default".into(),
            last_seq,
            protocol: 1,
        }
    }

    fn connected(last_seq: u64) -> (ClientState, Instant) {
        let mut state = ClientState::new(0, Duration::from_millis(10), Jitter::seeded(3));
        let now = Instant::now();
        state.on_connected(&welcome(last_seq), now);
        (state, now)
    }

    fn view(seq: u64) -> MessageView<'static> {
        MessageView {
            message_id: format!("m{seq}"),
            conversation_id: "alice:bob".into(),
            from: "bob".into(),
            to: "alice".into(),
            text: format!("text {seq}").into(),
            ts: 0,
            seq,
            client_msg_id: None,
            erased: false,
            reply_to: None,
            edited_ts: None,
            deleted: None,
            reactions: None,
        }
    }

    fn sync_page(
        req: &str,
        seqs: std::ops::RangeInclusive<u64>,
        last: u64,
        more: bool,
    ) -> ServerFrame<'static> {
        ServerFrame::Sync {
            req_id: Some(Cow::Owned(ReqId::Text(req.into()))),
            messages: seqs.map(view).collect(),
            events: None,
            last_seq: last,
            has_more: more,
            pruned_until: None,
        }
    }

    /// The `after_seq` and `req_id` of the sync page among `commands`, if one is there.
    fn sync_of(commands: &[Command]) -> Option<(u64, String)> {
        commands.iter().find_map(|c| match (&c.kind, &c.req_id) {
            (CommandKind::Sync { after_seq, .. }, Some(ReqId::Text(id))) => {
                Some((*after_seq, id.clone()))
            }
            _ => None,
        })
    }

    fn delivered_seqs(state: &mut ClientState) -> Vec<u64> {
        state
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_reconnect_behind_the_server_syncs_and_one_that_is_not_does_not() {
        let (mut state, now) = connected(0);
        assert_eq!(sync_of(&state.outgoing(now)), None);
        let (mut state, now) = connected(4);
        assert_eq!(sync_of(&state.outgoing(now)).unwrap().0, 0);
    }

    #[test]
    fn a_gap_in_live_messages_syncs_and_delivers_in_order_once() {
        let (mut state, now) = connected(0);
        state.on_frame(ServerFrame::Message(view(1)), now);
        assert_eq!(sync_of(&state.outgoing(now)), None);
        state.on_frame(ServerFrame::Message(view(3)), now);
        let (after, req) = sync_of(&state.outgoing(now)).expect("a gap asks for a sync");
        assert_eq!(after, 1);
        assert_eq!(delivered_seqs(&mut state), [1], "3 waits for 2");
        state.on_frame(sync_page(&req, 2..=3, 3, false), now);
        assert_eq!(delivered_seqs(&mut state), [2, 3]);
        // A late repeat of 2 is ignored.
        state.on_frame(ServerFrame::Message(view(2)), now);
        let events = state.take_events();
        assert!(
            matches!(&events[..], [Event::Repeat { seq: 2, .. }]),
            "{events:?}"
        );
        assert_eq!(state.delivered(), 3);
    }

    #[test]
    fn a_sync_hint_syncs_and_has_more_pages_until_done() {
        let (mut state, now) = connected(0);
        state.on_frame(ServerFrame::SyncHint { last_seq: 5 }, now);
        let (after, req) = sync_of(&state.outgoing(now)).expect("a hint asks for a sync");
        assert_eq!(after, 0);
        assert_eq!(sync_of(&state.outgoing(now)), None, "one page at a time");
        state.on_frame(sync_page(&req, 1..=2, 5, true), now);
        let (after, req) = sync_of(&state.outgoing(now)).expect("has_more asks for the next page");
        assert_eq!(after, 2);
        state.on_frame(sync_page(&req, 3..=5, 5, false), now);
        assert_eq!(sync_of(&state.outgoing(now)), None);
        let events = state.take_events();
        assert!(
            events.contains(&Event::Synced {
                delivered: 5,
                last_seq: 5
            }),
            "{events:?}"
        );
        assert_eq!(state.delivered(), 5);
    }

    #[test]
    fn a_sync_waiter_is_answered_by_a_cycle_that_starts_after_it() {
        let (mut state, now) = connected(2);
        let (_, first) = sync_of(&state.outgoing(now)).unwrap();
        let (tx, mut rx) = oneshot::channel();
        state.want_sync(Some(tx));
        state.on_frame(sync_page(&first, 1..=2, 2, false), now);
        assert!(
            rx.try_recv().is_err(),
            "the cycle in flight started before the waiter"
        );
        let (after, second) = sync_of(&state.outgoing(now)).expect("a new cycle for the waiter");
        assert_eq!(after, 2);
        state.on_frame(sync_page(&second, 3..=3, 3, false), now);
        assert!(
            rx.try_recv().is_err(),
            "answered only after the events are handed on"
        );
        state.take_events();
        state.answer_sync_waiters();
        assert_eq!(rx.try_recv().unwrap(), Ok(3));
    }

    #[test]
    fn a_failed_sync_page_goes_again_after_a_pause() {
        let (mut state, now) = connected(1);
        let (_, req) = sync_of(&state.outgoing(now)).unwrap();
        state.on_frame(
            ServerFrame::Error {
                code: ErrorCode::Unavailable,
                message: "storage unavailable".into(),
                retryable: true,
                req_id: Some(Cow::Owned(ReqId::Text(req))),
                client_msg_id: None,
            },
            now,
        );
        assert_eq!(sync_of(&state.outgoing(now)), None);
        assert_eq!(state.next_wakeup(), Some(now + SYNC_RETRY));
        assert!(sync_of(&state.outgoing(now + SYNC_RETRY)).is_some());
    }

    fn ack(client_msg_id: &str, seq: u64, duplicate: bool) -> ServerFrame<'static> {
        ServerFrame::Ack {
            req_id: None,
            client_msg_id: client_msg_id.to_owned().into(),
            message_id: format!("m{seq}"),
            conversation_id: "alice:bob".into(),
            seq,
            ts: 0,
            duplicate,
        }
    }

    #[test]
    fn a_duplicate_ack_is_a_success_and_fills_the_stream_with_the_own_message() {
        let (mut state, now) = connected(0);
        let (tx, mut rx) = oneshot::channel();
        state.submit(send("c1", "bob", "hi"), Some(tx), now);
        assert_eq!(state.outgoing(now).len(), 1);
        state.on_disconnected();
        state.on_connected(&welcome(1), now);
        let resent = state.outgoing(now);
        assert!(resent.iter().any(|c| matches!(&c.kind,
            CommandKind::Send { client_msg_id, .. } if client_msg_id == "c1")));
        state.on_frame(ack("c1", 1, true), now);
        let acked = rx.try_recv().unwrap().unwrap();
        assert!(acked.duplicate);
        let events = state.take_events();
        assert!(events.iter().any(|e| matches!(e, Event::Message(m)
            if m.seq == 1 && m.from == "alice" && m.to == "bob" && m.text == "hi" && m.via == Via::Ack)));
        // A second ack for the same send is reported as late and changes nothing.
        state.on_frame(ack("c1", 1, true), now);
        assert!(matches!(
            &state.take_events()[..],
            [Event::Acked { late: true, .. }, Event::Repeat { .. }]
                | [Event::Acked { late: true, .. }]
        ));
    }

    #[test]
    fn retryable_errors_resend_and_final_errors_fail_the_send() {
        let (mut state, now) = connected(0);
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        state.submit(send("c1", "bob", "a"), Some(tx1), now);
        state.submit(send("c2", "bob", "b"), Some(tx2), now);
        state.outgoing(now);
        let error = |code: ErrorCode, id: &str| ServerFrame::Error {
            code,
            message: "x".into(),
            retryable: code.retryable(),
            req_id: None,
            client_msg_id: Some(id.to_owned().into()),
        };
        state.on_frame(error(ErrorCode::RateLimited, "c1"), now);
        state.on_frame(error(ErrorCode::BadRequest, "c2"), now);
        assert!(
            rx1.try_recv().is_err(),
            "a retryable error does not fail the send"
        );
        assert!(matches!(rx2.try_recv(), Ok(Err(SendError::Refused(_)))));
        let later = state.next_wakeup().expect("the retry is scheduled");
        assert!(state.outgoing(now).is_empty());
        assert_eq!(state.outgoing(later).len(), 1);
    }

    #[test]
    fn an_internal_error_without_ids_resends_what_was_unanswered() {
        let (mut state, now) = connected(0);
        state.submit(send("c1", "bob", "a"), None, now);
        state.outgoing(now);
        state.on_frame(session_restarted(), now);
        assert_eq!(state.outgoing(now).len(), 1);
    }

    /// The `internal` error without ids of a session that restarted.
    fn session_restarted() -> ServerFrame<'static> {
        ServerFrame::Error {
            code: ErrorCode::Internal,
            message: "session restarted".into(),
            retryable: true,
            req_id: None,
            client_msg_id: None,
        }
    }

    fn event_view(seq: u64) -> EventView<'static> {
        EventView {
            seq,
            event: "read_receipt".into(),
            event_id: format!("e{seq}"),
            conversation_id: "alice:bob".into(),
            actor: "bob".into(),
            ts: 0,
            title: None,
            member_count: None,
            users: None,
            user: None,
            role: None,
            message_id: Some("m1".into()),
            unread_count: None,
            text: None,
            moderated: None,
            emoji: None,
        }
    }

    /// The seqs of the stream's entries handed on, messages and events alike, in order.
    fn entry_seqs(state: &mut ClientState) -> Vec<u64> {
        state
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m.seq),
                Event::StreamEvent(e) => Some(e.event.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn events_fill_the_stream_between_messages_live_and_through_sync() {
        let (mut state, now) = connected(0);
        state.on_frame(ServerFrame::Message(view(1)), now);
        state.on_frame(ServerFrame::Event(Box::new(event_view(2))), now);
        assert_eq!(entry_seqs(&mut state), [1, 2]);
        state.on_frame(ServerFrame::Message(view(5)), now);
        let (after, req) = sync_of(&state.outgoing(now)).expect("a gap asks for a sync");
        assert_eq!(after, 2);
        // A page's entries are its messages and its events; the next page starts after the
        // last of either.
        let page = ServerFrame::Sync {
            req_id: Some(Cow::Owned(ReqId::Text(req))),
            messages: vec![view(3)],
            events: Some(vec![event_view(4)]),
            last_seq: 7,
            has_more: true,
            pruned_until: None,
        };
        state.on_frame(page, now);
        assert_eq!(entry_seqs(&mut state), [3, 4, 5]);
        let (after, req) = sync_of(&state.outgoing(now)).expect("has_more asks for more");
        assert_eq!(after, 4);
        let page = ServerFrame::Sync {
            req_id: Some(Cow::Owned(ReqId::Text(req))),
            messages: vec![view(5)],
            events: Some(vec![event_view(6), event_view(7)]),
            last_seq: 7,
            has_more: false,
            pruned_until: None,
        };
        state.on_frame(page, now);
        assert_eq!(entry_seqs(&mut state), [6, 7]);
        assert_eq!(state.delivered(), 7);
    }

    /// A protocol-2 client, connected with `last_seq` on the server and none processed.
    fn connected_v2(last_seq: u64) -> (ClientState, Instant) {
        let mut state = ClientState::new(0, Duration::from_millis(10), Jitter::seeded(3));
        let now = Instant::now();
        let welcome = Welcome {
            protocol: 2,
            ..welcome(last_seq)
        };
        state.on_connected(&welcome, now);
        (state, now)
    }

    fn pruned_page(
        req: String,
        messages: Vec<MessageView<'static>>,
        events: Vec<EventView<'static>>,
        has_more: bool,
        pruned_until: u64,
    ) -> ServerFrame<'static> {
        ServerFrame::Sync {
            req_id: Some(Cow::Owned(ReqId::Text(req))),
            messages,
            events: Some(events),
            last_seq: 7,
            has_more,
            pruned_until: Some(pruned_until),
        }
    }

    #[test]
    fn seqs_pruned_by_retention_are_passed_over_without_an_anomaly() {
        let (mut state, now) = connected_v2(7);
        let (after, req) = sync_of(&state.outgoing(now)).expect("behind the server: sync");
        assert_eq!(after, 0);
        // Seqs 1 to 5 were pruned but for an event at 3; 6 and 7 remain.
        let page = pruned_page(req, vec![view(6), view(7)], vec![event_view(3)], false, 5);
        state.on_frame(page, now);
        let events = state.take_events();
        assert!(
            !events.iter().any(|e| matches!(e, Event::Anomaly(_))),
            "{events:?}"
        );
        assert_eq!(state.delivered(), 7);
        assert_eq!(sync_of(&state.outgoing(now)), None, "the cycle is complete");
    }

    #[test]
    fn a_pruned_range_is_passed_over_only_as_far_as_the_page_reaches() {
        let (mut state, now) = connected_v2(7);
        let (_, req) = sync_of(&state.outgoing(now)).unwrap();
        // A full page that ends at 2, inside the pruned range: 4 may still come.
        state.on_frame(pruned_page(req, vec![], vec![event_view(2)], true, 5), now);
        assert_eq!(entry_seqs(&mut state), [2]);
        let (after, req) = sync_of(&state.outgoing(now)).expect("has_more asks for more");
        assert_eq!(after, 2);
        let page = pruned_page(req, vec![view(6), view(7)], vec![event_view(4)], false, 5);
        state.on_frame(page, now);
        assert_eq!(entry_seqs(&mut state), [4, 6, 7]);
        assert_eq!(state.delivered(), 7);
    }

    #[test]
    fn a_refused_request_gets_its_error_even_when_it_names_a_client_msg_id() {
        let (mut state, now) = connected(0);
        let (tx, mut rx) = oneshot::channel();
        let kind = CommandKind::CreateGroup {
            title: "Team".into(),
            members: vec!["bob".into()],
            client_msg_id: "g1".into(),
        };
        let command = state.request(kind, tx).expect("connected");
        state.on_frame(
            ServerFrame::Error {
                code: ErrorCode::TooManyGroups,
                message: "bob is in too many groups".into(),
                retryable: false,
                req_id: command.req_id.map(Cow::Owned),
                client_msg_id: Some("g1".into()),
            },
            now,
        );
        assert!(matches!(
            rx.try_recv(),
            Ok(Err(ClientError::Server(ServerError {
                code: ErrorCode::TooManyGroups,
                ..
            })))
        ));
        let events = state.take_events();
        assert!(matches!(
            &events[..],
            [Event::Error {
                about: ErrorAbout::Request,
                ..
            }]
        ));
    }

    #[test]
    fn a_session_restart_interrupts_the_requests_waiting_for_a_reply() {
        let (mut state, now) = connected(0);
        let (tx, mut rx) = oneshot::channel();
        state.request(CommandKind::Ping, tx).expect("connected");
        state.on_frame(session_restarted(), now);
        assert_eq!(rx.try_recv().unwrap(), Err(ClientError::Interrupted));
    }

    #[test]
    fn an_error_answering_an_interrupted_request_is_about_that_request() {
        let (mut state, now) = connected(0);
        let (tx, _rx) = oneshot::channel();
        let kind = CommandKind::LeaveGroup {
            conversation_id: "g~0123456789abcdef01234567".into(),
        };
        let command = state.request(kind, tx).expect("connected");
        let error = |req_id, code, retryable| ServerFrame::Error {
            code,
            message: "".into(),
            retryable,
            req_id,
            client_msg_id: None,
        };
        state.on_frame(error(None, ErrorCode::Internal, true), now);
        state.on_frame(
            error(command.req_id.map(Cow::Owned), ErrorCode::NotAMember, false),
            now,
        );
        let unknown = Some(Cow::Owned(ReqId::Text("r99".into())));
        state.on_frame(error(unknown, ErrorCode::NotAMember, false), now);
        let abouts: Vec<ErrorAbout> = state
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Error { about, .. } => Some(about),
                _ => None,
            })
            .collect();
        assert_eq!(
            abouts,
            [
                ErrorAbout::SessionRestart,
                ErrorAbout::Request,
                ErrorAbout::Other
            ]
        );
    }

    #[test]
    fn a_protocol_1_sync_passes_over_the_seqs_of_entries_it_never_sees() {
        // Protocol 1 syncs direct messages only: seqs 2 and 4 are a group message and an
        // event of the same user's stream.
        let (mut state, now) = connected(0);
        state.on_frame(ServerFrame::Message(view(1)), now);
        state.on_frame(ServerFrame::Message(view(3)), now);
        let (after, req) = sync_of(&state.outgoing(now)).expect("a skip asks for a sync");
        assert_eq!(after, 1);
        state.on_frame(sync_page(&req, 3..=3, 4, false), now);
        assert_eq!(delivered_seqs(&mut state), [1, 3]);
        assert_eq!(state.delivered(), 4);
        assert_eq!(sync_of(&state.outgoing(now)), None);
        // Seq 5 follows at once.
        state.on_frame(ServerFrame::Message(view(5)), now);
        assert_eq!(delivered_seqs(&mut state), [5]);
    }

    #[test]
    fn a_protocol_2_sync_waits_for_every_seq() {
        let (mut state, now) = connected(0);
        let mut v2 = welcome(0);
        v2.protocol = 2;
        state.on_connected(&v2, now);
        state.on_frame(ServerFrame::Message(view(2)), now);
        let (_, req) = sync_of(&state.outgoing(now)).unwrap();
        state.on_frame(sync_page(&req, 2..=2, 2, false), now);
        let events = state.take_events();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Anomaly(what) if what.contains("returns nothing"))),
            "a protocol-2 stream with a hole is an anomaly: {events:?}"
        );
        assert_eq!(state.delivered(), 0);
    }

    #[test]
    fn an_over_size_send_fails_at_once() {
        let (mut state, now) = connected(0);
        let (tx, mut rx) = oneshot::channel();
        state.submit(
            send("c1", "bob", &"x".repeat(MAX_FRAME_BYTES)),
            Some(tx),
            now,
        );
        assert_eq!(rx.try_recv().unwrap(), Err(SendError::TooLarge));
        assert!(state.outgoing(now).is_empty());
    }

    fn edit(text: &str) -> CommandKind {
        CommandKind::Edit {
            conversation_id: "alice:bob".into(),
            message_id: 57,
            text: text.into(),
            client_msg_id: "e1".into(),
        }
    }

    /// The `req_id` of the one change among `commands`.
    fn change_req_id(commands: &[Command]) -> Cow<'static, ReqId> {
        let mut changes = commands.iter().filter(|c| {
            matches!(
                c.kind,
                CommandKind::Edit { .. }
                    | CommandKind::Delete { .. }
                    | CommandKind::React { .. }
                    | CommandKind::Unreact { .. }
            )
        });
        let change = changes.next().expect("a change is written");
        assert!(changes.next().is_none(), "one change: {commands:?}");
        Cow::Owned(change.req_id.clone().expect("a change carries a req_id"))
    }

    fn message_state(req_id: Cow<'static, ReqId>, duplicate: bool) -> ServerFrame<'static> {
        ServerFrame::MessageState {
            req_id: Some(req_id),
            client_msg_id: Some("e1".into()),
            message: MessageView {
                text: "fixed".into(),
                edited_ts: Some(5),
                ..view(9)
            },
            duplicate,
            seq: (!duplicate).then_some(12),
        }
    }

    #[test]
    fn an_edit_goes_again_with_its_client_msg_id_until_answered() {
        let (mut state, now) = connected(0);
        let (tx, mut rx) = oneshot::channel();
        state.submit_change(edit("fixed"), tx, now);
        let first = change_req_id(&state.outgoing(now));
        // No answer before the connection ends: the same edit goes again after reconnecting.
        state.on_disconnected();
        state.on_connected(&welcome(0), now);
        let again = state.outgoing(now);
        assert_eq!(change_req_id(&again), first);
        assert!(again.iter().any(|c| c.kind == edit("fixed")));
        // A retryable refusal: again after a pause.
        let refusal = |code: ErrorCode, req_id| ServerFrame::Error {
            code,
            message: "x".into(),
            retryable: code.retryable(),
            req_id: Some(req_id),
            client_msg_id: Some("e1".into()),
        };
        state.on_frame(refusal(ErrorCode::Unavailable, first.clone()), now);
        assert!(rx.try_recv().is_err(), "a retryable error does not end it");
        assert!(state.outgoing(now).is_empty(), "not before its pause");
        let later = state.next_wakeup().expect("the retry is scheduled");
        assert_eq!(change_req_id(&state.outgoing(later)), first);
        // The earlier attempt was committed: `duplicate: true` is a success.
        state.on_frame(message_state(first.clone(), true), later);
        let changed = rx.try_recv().unwrap().unwrap();
        assert!(changed.duplicate);
        assert_eq!(changed.message.text, "fixed");
        assert!(
            state
                .take_events()
                .iter()
                .any(|e| matches!(e, Event::Changed(c) if c.duplicate))
        );
        assert!(
            state.outgoing(later).is_empty(),
            "answered: it does not go again"
        );
        // A late refusal of a repeat is about the change, not a send and not a request.
        state.on_frame(refusal(ErrorCode::Internal, first), later);
        assert!(matches!(
            &state.take_events()[..],
            [Event::Error {
                about: ErrorAbout::Change(_),
                ..
            }]
        ));
    }

    #[test]
    fn a_final_refusal_ends_a_change_and_a_session_restart_repeats_one() {
        let (mut state, now) = connected(0);
        let (tx, mut rx) = oneshot::channel();
        let delete = CommandKind::Delete {
            conversation_id: "alice:bob".into(),
            message_id: 57,
        };
        state.submit_change(delete.clone(), tx, now);
        let req_id = change_req_id(&state.outgoing(now));
        state.on_frame(session_restarted(), now);
        let again = state.outgoing(now);
        assert_eq!(
            change_req_id(&again),
            req_id,
            "repeated: a delete is safe to repeat"
        );
        state.on_frame(
            ServerFrame::Error {
                code: ErrorCode::NotAuthor,
                message: "only its author may delete it".into(),
                retryable: false,
                req_id: Some(req_id),
                client_msg_id: None,
            },
            now,
        );
        assert!(matches!(
            rx.try_recv(),
            Ok(Err(SendError::Refused(ServerError {
                code: ErrorCode::NotAuthor,
                ..
            })))
        ));
        assert!(state.outgoing(now).is_empty());
    }

    #[test]
    fn an_over_size_edit_fails_at_once() {
        let (mut state, now) = connected(0);
        let (tx, mut rx) = oneshot::channel();
        state.submit_change(edit(&"x".repeat(MAX_FRAME_BYTES)), tx, now);
        assert_eq!(rx.try_recv().unwrap(), Err(SendError::TooLarge));
        assert!(state.outgoing(now).is_empty());
    }

    #[test]
    fn an_own_reply_in_a_direct_conversation_is_delivered_to_the_peer() {
        let (mut state, now) = connected(0);
        let reply = Outgoing::Send {
            client_msg_id: "c1".into(),
            to: "alice:bob".into(),
            text: "yes".into(),
            reply_to: Some(57),
        };
        state.submit(reply, None, now);
        let written = state.outgoing(now);
        assert!(written.iter().any(|c| matches!(
            &c.kind,
            CommandKind::SendToConversation {
                reply_to: Some(57),
                ..
            }
        )));
        state.on_frame(ack("c1", 1, false), now);
        let events = state.take_events();
        assert!(events.iter().any(|e| matches!(e, Event::Message(m)
            if m.to == "bob" && m.reply_to.as_deref() == Some("57") && m.via == Via::Ack)));
    }

    #[test]
    fn a_message_keeps_what_protocol_3_says_of_it_and_its_events_take_their_seqs() {
        let (mut state, now) = connected(0);
        let edited = MessageView {
            text: "fixed".into(),
            edited_ts: Some(5),
            reactions: Some(vec![ReactionView {
                emoji: "👍".into(),
                count: 2,
                mine: true,
            }]),
            ..view(1)
        };
        state.on_frame(ServerFrame::Message(edited), now);
        let deleted = EventView {
            event: "message_deleted".into(),
            message_id: Some("m1".into()),
            moderated: Some(false),
            ..event_view(3)
        };
        state.on_frame(ServerFrame::Event(Box::new(deleted)), now);
        let (after, req) = sync_of(&state.outgoing(now)).expect("seq 3 skips 2: sync");
        assert_eq!(after, 1);
        let reacted = EventView {
            event: "reaction_added".into(),
            message_id: Some("m1".into()),
            emoji: Some("👍".into()),
            ..event_view(2)
        };
        let page = ServerFrame::Sync {
            req_id: Some(Cow::Owned(ReqId::Text(req))),
            messages: vec![],
            events: Some(vec![reacted]),
            last_seq: 3,
            has_more: false,
            pruned_until: None,
        };
        state.on_frame(page, now);
        let events = state.take_events();
        let Some(Event::Message(message)) = events.first() else {
            panic!("the message first: {events:?}");
        };
        assert_eq!(
            (message.text.as_str(), message.edited_ts),
            ("fixed", Some(5))
        );
        assert_eq!(message.reactions.len(), 1);
        let kinds: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::StreamEvent(e) => Some(e.event.event.as_ref()),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, ["reaction_added", "message_deleted"]);
        assert_eq!(state.delivered(), 3);
    }
}
