//! One simulated user: its client, the intents the pacer gives it (a message to send, a read
//! mark to make), and a record, from the client's events, of what the user saw: every send
//! and its ack, every mark and its answer, the stream by seq (messages and events), the
//! conversation list at the end, and anything a correct server never does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use peroxo_client::{
    Client, ClientError, CommandKind, EntryId, ErrorAbout, Event, Events, ServerFrame, Via,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::workload::{Phase, Rng, request_until_answered};

/// What the pacer asks of a user.
#[derive(Debug)]
pub(crate) enum Intent {
    /// Send a message to this user or group.
    Send(String),
    /// Mark one of the user's conversations read (or, sometimes, unread).
    Mark,
}

/// Counts every client adds to while the run goes on.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    /// Users whose every send is acked and every mark answered after the traffic ended.
    pub(crate) drained: AtomicUsize,
}

/// One send, as its client knows it.
#[derive(Debug, Clone)]
pub(crate) struct SendRecord {
    pub(crate) client_msg_id: String,
    /// A user, or a group id.
    pub(crate) to: String,
    pub(crate) text: String,
    /// The message id and the sender's seq from its first ack.
    pub(crate) ack: Option<(String, u64)>,
}

/// One entry of a user's stream, as the client holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    Message {
        message_id: String,
        conversation_id: String,
        from: String,
        to: String,
    },
    Event {
        event_id: String,
        /// `group_created`, `read_marker`, `read_receipt`, …
        kind: String,
        conversation_id: String,
        actor: String,
        /// The member concerned (`member_left`, `role_changed`).
        user: Option<String>,
        /// The members added (`members_added`).
        users: Vec<String>,
        /// The marker (`read_marker`, `read_receipt`).
        message_id: Option<String>,
        /// The unread count after the mark (`read_marker`).
        unread_count: Option<u64>,
    },
}

impl Entry {
    fn id(&self) -> EntryId {
        match self {
            Entry::Message { message_id, .. } => EntryId::Message(message_id.clone()),
            Entry::Event { event_id, .. } => EntryId::Event(event_id.clone()),
        }
    }
}

/// One conversation of the user's list, as `conversations` answered at the end.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) conversation_id: String,
    pub(crate) read_marker: String,
    pub(crate) unread_count: u64,
    /// The preview's message id and the user's seq of it.
    pub(crate) last_message: Option<(String, u64)>,
}

/// The user's conversation list at the end, every page of it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConversationList {
    pub(crate) conversations: Vec<Listed>,
    /// As the first page stated it.
    pub(crate) total_unread: u64,
}

/// What one client reports at the end.
#[derive(Debug)]
pub(crate) struct UserReport {
    pub(crate) user: String,
    pub(crate) sends: Vec<SendRecord>,
    /// The user's stream by seq, from live frames, acks and syncs.
    pub(crate) stream: BTreeMap<u64, Entry>,
    /// The user's seq according to the server's last `sync`.
    pub(crate) last_seq: u64,
    /// Messages from others first seen live, and first seen through `sync`.
    pub(crate) received_live: u64,
    pub(crate) received_by_sync: u64,
    /// Marks asked for, and answered with `read_state`.
    pub(crate) marks_requested: u64,
    pub(crate) marks_answered: u64,
    /// The conversation list after the final sync (`None` when it could not be read).
    pub(crate) conversations: Option<ConversationList>,
    /// Error frames by code.
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) reconnects: u64,
    pub(crate) sync_hints: u64,
    /// Things a correct server never does (a seq naming two entries, a refused send or mark).
    pub(crate) violations: Vec<String>,
}

/// What the last step of a run brings: the final sync's last seq, and the conversation list.
type FinalStep = (Result<u64, ClientError>, Result<ConversationList, String>);

/// One simulated user: its client, and what it saw.
pub(crate) struct SimulatedUser {
    user: String,
    intents: mpsc::UnboundedReceiver<Intent>,
    /// The pacer has finished and every intent has been taken.
    intents_done: bool,
    phase: watch::Receiver<Phase>,
    live: Arc<Live>,
    /// Chooses what to mark.
    rng: Rng,
    sends: Vec<SendRecord>,
    /// Index into `sends` by `client_msg_id`.
    index: HashMap<String, usize>,
    /// Sends not acked yet.
    unacked: usize,
    stream: BTreeMap<u64, Entry>,
    /// Every message of the stream by conversation, in seq order: its id, and whether
    /// someone else sent it (what a mark may name).
    by_conversation: BTreeMap<String, Vec<(u64, bool)>>,
    last_seq: u64,
    drained: bool,
    received_live: u64,
    received_by_sync: u64,
    marks_requested: u64,
    marks_answered: u64,
    errors: BTreeMap<String, u64>,
    reconnects: u64,
    sync_hints: u64,
    violations: Vec<String>,
}

impl SimulatedUser {
    pub(crate) fn new(
        user: String,
        intents: mpsc::UnboundedReceiver<Intent>,
        phase: watch::Receiver<Phase>,
        live: Arc<Live>,
        seed: u64,
    ) -> Self {
        Self {
            user,
            intents,
            intents_done: false,
            phase,
            live,
            rng: Rng(seed | 1),
            sends: Vec::new(),
            index: HashMap::new(),
            unacked: 0,
            stream: BTreeMap::new(),
            by_conversation: BTreeMap::new(),
            last_seq: 0,
            drained: false,
            received_live: 0,
            received_by_sync: 0,
            marks_requested: 0,
            marks_answered: 0,
            errors: BTreeMap::new(),
            reconnects: 0,
            sync_hints: 0,
            violations: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self, client: Client, mut events: Events) -> UserReport {
        let mut mark: Option<JoinHandle<Result<(), String>>> = None;
        let mut final_step: Option<JoinHandle<FinalStep>> = None;
        let mut conversations = None;
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                intent = self.intents.recv(), if !self.intents_done => match intent {
                    Some(Intent::Send(to)) => self.new_send(&client, to),
                    // One mark at a time: a mark due while another is under way is not made.
                    Some(Intent::Mark) if mark.is_none() => mark = self.new_mark(&client),
                    Some(Intent::Mark) => {}
                    None => self.intents_done = true,
                },
                answered = async { mark.as_mut().unwrap().await }, if mark.is_some() => {
                    mark = None;
                    match answered.unwrap() {
                        Ok(()) => self.marks_answered += 1,
                        Err(error) => self.violations.push(format!("mark: {error}")),
                    }
                }
                finished = async { final_step.as_mut().unwrap().await }, if final_step.is_some() => {
                    let (synced, listed) = finished.unwrap();
                    match synced {
                        Ok(last_seq) => self.last_seq = self.last_seq.max(last_seq),
                        Err(error) => self.violations.push(format!("final sync failed: {error}")),
                    }
                    match listed {
                        Ok(list) => conversations = Some(list),
                        Err(error) => self.violations.push(format!("conversations: {error}")),
                    }
                    // Every event of the final sync was handed on before its answer.
                    while let Some(event) = events.try_next() {
                        self.on_event(event);
                    }
                    break;
                }
                _ = tick.tick() => {}
            }
            let phase = *self.phase.borrow();
            if phase != Phase::Traffic
                && self.intents_done
                && self.unacked == 0
                && mark.is_none()
                && !self.drained
            {
                self.drained = true;
                self.live.drained.fetch_add(1, Ordering::Relaxed);
            }
            if phase == Phase::FinalSync && final_step.is_none() {
                let client = client.clone();
                final_step = Some(tokio::spawn(async move {
                    let synced = client.sync().await;
                    (synced, list_conversations(&client).await)
                }));
            }
        }
        client.close().await;
        self.report(conversations)
    }

    fn report(self, conversations: Option<ConversationList>) -> UserReport {
        UserReport {
            user: self.user,
            sends: self.sends,
            stream: self.stream,
            last_seq: self.last_seq,
            received_live: self.received_live,
            received_by_sync: self.received_by_sync,
            marks_requested: self.marks_requested,
            marks_answered: self.marks_answered,
            conversations,
            errors: self.errors,
            reconnects: self.reconnects,
            sync_hints: self.sync_hints,
            violations: self.violations,
        }
    }

    fn new_send(&mut self, client: &Client, to: String) {
        let n = self.sends.len();
        let text = format!("{} to {to}, #{n}", self.user);
        let submitted = match client.submit(to.clone(), text.clone()) {
            Ok(submitted) => submitted,
            Err(error) => {
                self.violations.push(format!("could not submit: {error}"));
                return;
            }
        };
        // The outcome arrives as an event; the receiver is not needed.
        let client_msg_id = submitted.client_msg_id;
        self.index.insert(client_msg_id.clone(), n);
        self.sends.push(SendRecord {
            client_msg_id,
            to,
            text,
            ack: None,
        });
        self.unacked += 1;
        self.live.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a random conversation of the user's stream: mostly read up to its newest
    /// message, sometimes read up to an older one (which changes nothing when already read),
    /// sometimes unread from one of its messages, or from the newest message of someone else.
    /// `None` while the user has no conversation yet.
    fn new_mark(&mut self, client: &Client) -> Option<JoinHandle<Result<(), String>>> {
        if self.by_conversation.is_empty() {
            return None;
        }
        let n = self.rng.below(self.by_conversation.len() as u64) as usize;
        let (conversation, messages) = self.by_conversation.iter().nth(n)?;
        let conversation_id = conversation.clone();
        let newest = messages.last()?.0;
        let any = messages[self.rng.below(messages.len() as u64) as usize].0;
        let from_others = messages.iter().any(|(_, from_other)| *from_other);
        let kind = match self.rng.below(10) {
            0 => CommandKind::MarkRead {
                conversation_id,
                message_id: any,
            },
            1 => CommandKind::MarkUnread {
                conversation_id,
                message_id: Some(any),
            },
            2 if from_others => CommandKind::MarkUnread {
                conversation_id,
                message_id: None,
            },
            _ => CommandKind::MarkRead {
                conversation_id,
                message_id: newest,
            },
        };
        self.marks_requested += 1;
        let client = client.clone();
        Some(tokio::spawn(async move {
            match request_until_answered(&client, kind).await? {
                ServerFrame::ReadState { .. } => Ok(()),
                other => Err(format!("answered with {other:?}")),
            }
        }))
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected { last_seq, .. } | Event::SyncHint { last_seq } => {
                self.last_seq = self.last_seq.max(last_seq);
                if matches!(event, Event::SyncHint { .. }) {
                    self.sync_hints += 1;
                }
            }
            Event::Synced { last_seq, .. } => self.last_seq = self.last_seq.max(last_seq),
            Event::Disconnected { .. } => self.reconnects += 1,
            Event::Message(message) => {
                let from_other = message.from != self.user;
                let id = message.message_id.parse().unwrap_or(0);
                let conversation_id = message.conversation_id.clone();
                let entry = Entry::Message {
                    message_id: message.message_id,
                    conversation_id: message.conversation_id,
                    from: message.from,
                    to: message.to,
                };
                if self.put(message.seq, entry) {
                    self.by_conversation
                        .entry(conversation_id)
                        .or_default()
                        .push((id, from_other));
                    if from_other {
                        match message.via {
                            Via::Live => self.received_live += 1,
                            Via::Sync => self.received_by_sync += 1,
                            Via::Ack => {}
                        }
                    }
                }
            }
            Event::StreamEvent(delivered) => {
                let event = delivered.event;
                let entry = Entry::Event {
                    event_id: event.event_id,
                    kind: event.event.into_owned(),
                    conversation_id: event.conversation_id.into_owned(),
                    actor: event.actor.into_owned(),
                    user: event.user.map(|u| u.into_owned()),
                    users: event
                        .users
                        .unwrap_or_default()
                        .into_iter()
                        .map(|u| u.into_owned())
                        .collect(),
                    message_id: event.message_id,
                    unread_count: event.unread_count,
                };
                self.put(event.seq, entry);
            }
            Event::Acked { ack, .. } => self.on_ack(ack),
            Event::Error { error, about } => {
                *self
                    .errors
                    .entry(error.code.as_str().to_owned())
                    .or_default() += 1;
                match about {
                    ErrorAbout::Sync if !error.retryable => {
                        self.violations.push(format!("sync refused: {error}"));
                    }
                    ErrorAbout::Send(_) if !error.retryable => {
                        self.violations.push(format!("send refused: {error}"));
                    }
                    ErrorAbout::Other => {
                        self.violations.push(format!("unexpected error: {error}"));
                    }
                    // A request's error goes to the request, which judges it.
                    _ => {}
                }
            }
            Event::Repeat { seq, id } => {
                if let Some(known) = self.stream.get(&seq)
                    && known.id() != id
                {
                    self.violations
                        .push(format!("seq {seq} is {known:?} and also {id}"));
                }
            }
            Event::Anomaly(what) => self.violations.push(what),
            Event::Stopped(error) => self.violations.push(format!("client stopped: {error}")),
            _ => {}
        }
    }

    /// Adds an entry of the user's stream; returns whether it was new to the client.
    fn put(&mut self, seq: u64, entry: Entry) -> bool {
        if seq == 0 {
            self.violations.push(format!("seq 0 for {entry:?}"));
            return false;
        }
        if let Some(known) = self.stream.get(&seq) {
            if *known != entry {
                self.violations
                    .push(format!("seq {seq} is {known:?} and also {entry:?}"));
            }
            return false;
        }
        self.stream.insert(seq, entry);
        true
    }

    fn on_ack(&mut self, ack: peroxo_client::Ack) {
        let Some(&i) = self.index.get(&ack.client_msg_id) else {
            self.violations
                .push(format!("ack for no send of mine: {ack:?}"));
            return;
        };
        let send = &mut self.sends[i];
        let this = (ack.message_id, ack.seq);
        match &send.ack {
            Some(first) if *first != this => {
                self.violations.push(format!(
                    "{} acked as {first:?} and later as {this:?}",
                    send.client_msg_id
                ));
            }
            Some(_) => {}
            None => {
                send.ack = Some(this);
                self.unacked -= 1;
                self.live.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Every page of the user's conversation list.
async fn list_conversations(client: &Client) -> Result<ConversationList, String> {
    let mut list = ConversationList::default();
    let mut before = None;
    loop {
        let kind = CommandKind::Conversations { before, limit: 200 };
        let ServerFrame::Conversations {
            conversations,
            next_before,
            total_unread,
            ..
        } = request_until_answered(client, kind).await?
        else {
            return Err("a request for conversations answered with another frame".to_owned());
        };
        if before.is_none() {
            list.total_unread = total_unread;
        }
        list.conversations
            .extend(conversations.into_iter().map(|c| Listed {
                conversation_id: c.conversation_id.into_owned(),
                read_marker: c.read_marker,
                unread_count: c.unread_count,
                last_message: c.last_message.map(|m| (m.message_id, m.seq)),
            }));
        match next_before {
            None => return Ok(list),
            Some(cursor) => {
                before = Some(
                    cursor
                        .parse()
                        .map_err(|_| format!("next_before {cursor:?} is not a cursor"))?,
                );
            }
        }
    }
}
