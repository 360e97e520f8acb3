//! One simulated user: its client, the intents the pacer gives it (a message to send, a read
//! mark to make, and on protocol 3 a message to edit, delete or react to), and a record, from
//! the client's events, of what the user saw, which it reports at the end
//! ([`crate::report`]).
//!
//! A protocol-3 user sends one message in ten as a reply to one of the latest messages of the
//! conversation, and changes messages as an application would: it edits and deletes its own
//! recent messages, deletes other members' messages in the groups it owns (a moderated
//! delete), reacts to messages it has seen and takes back reactions it made. It makes one
//! change at a time, so that its changes reach the server in the order it made them; the
//! client repeats each until answered. A refusal for good (`message_deleted` after someone
//! deleted the message, `not_a_member` after a removal the user had not seen yet, …) is how
//! that change ended, recorded for the verdict.
//!
//! A user knows which groups it is in from its own stream (`group_created`, `members_added`
//! naming it, `member_left` naming it), as an application would: it sends to and marks only
//! those. A change the user has not seen yet may still refuse a send or a mark
//! `not_a_member`; the refusal is recorded with how far the user had seen its stream, for the
//! verdict to find the departure after it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use peroxo_client::{
    Change, Client, ClientError, CommandKind, ErrorAbout, ErrorCode, Event, Events, SendError,
    ServerFrame, Via,
};
use peroxo_protocol::domain::conversation_id;
use peroxo_protocol::event::is_group_id;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::final_reads::{self, ConversationList, FinalReads};
use crate::report::{
    Entry, MessageOpRecord, OpOutcome, RefusedMark, SendRecord, UserReport, is_direct_with_another,
};
use crate::workload::{Answer, Phase, Rng, answer_until_deadline};
use peroxo_bench::contract::MessageChange;

/// What the pacer asks of a user.
#[derive(Debug, Clone)]
pub(crate) enum Intent {
    /// Send a message to this user or group.
    Send(String),
    /// Mark one of the user's conversations read (or, sometimes, unread).
    Mark,
    /// Edit one of the user's recent messages (protocol 3).
    Edit,
    /// Delete one of the user's recent messages, or in a group it owns sometimes another
    /// member's (protocol 3).
    Delete,
    /// React to a message the user has seen, or take back a reaction it made (protocol 3).
    React,
}

/// The reactions users make: few, so that users often share one.
const EMOJIS: [&str; 4] = ["👍", "🎉", ":+1:", "❤️"];
/// How many of its latest acked messages a user keeps as candidates to edit or delete.
const RECENT_OWN: usize = 24;
/// One send in this many is a reply (protocol 3), when the conversation has a message to quote.
const REPLY_EVERY: u64 = 10;
/// How many of a conversation's latest messages a user picks from to react to or quote.
const RECENT_SEEN: usize = 20;
/// How many changes may wait while the user's previous one is unanswered.
const WAITING_CHANGES: usize = 8;
/// How long a change may go unanswered (the client repeats it meanwhile) before the user
/// reports it as lost: longer than any outage a case injects.
const CHANGE_DEADLINE: Duration = Duration::from_secs(60);

/// Counts every client adds to while the run goes on.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    /// Users whose every send is acked and every mark answered after the traffic ended.
    pub(crate) drained: AtomicUsize,
}

/// What the last step of a run brings: the final sync's last seq, and (protocol 3) the
/// conversation list.
type FinalStep = (
    Result<u64, ClientError>,
    Option<Result<ConversationList, String>>,
);

/// How a mark ended.
enum MarkEnd {
    Answered,
    /// Refused `not_a_member` in this group.
    NotAMember(String),
    /// `mark_unread` from the newest message of someone else, refused `unknown_message` in
    /// this conversation: every message of others in it was deleted meanwhile.
    NothingUnread(String),
    Failed(String),
}

/// One simulated user: its client, and what it saw.
pub(crate) struct SimulatedUser {
    user: String,
    protocol: u32,
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
    /// someone else sent it (what a mark may name). A group's since the user last joined it.
    by_conversation: BTreeMap<String, Vec<(u64, bool)>>,
    /// The groups the user's stream shows it in.
    member_of: BTreeSet<String>,
    skipped_sends: u64,
    refused_marks: Vec<RefusedMark>,
    /// Conversations of `mark_unread`s refused `unknown_message` (see [`MarkEnd`]).
    nothing_unread: Vec<String>,
    marked_unread: BTreeSet<String>,
    last_seq: u64,
    /// Its latest acked messages (conversation, message id), oldest first, but those it
    /// deleted or saw deleted.
    recent_own: VecDeque<(String, u64)>,
    /// The groups it created (and owns throughout).
    owned: BTreeSet<String>,
    /// Messages its stream showed deleted.
    deleted: BTreeSet<u64>,
    /// Its reactions as the answers to its changes left them: (conversation, message, emoji).
    reactions: BTreeSet<(String, u64, String)>,
    changes: Vec<MessageOpRecord>,
    /// Changes due while the previous one was unanswered, in turn.
    waiting_changes: VecDeque<Intent>,
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
        protocol: u32,
        intents: mpsc::UnboundedReceiver<Intent>,
        phase: watch::Receiver<Phase>,
        live: Arc<Live>,
        seed: u64,
    ) -> Self {
        Self {
            user,
            protocol,
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
            member_of: BTreeSet::new(),
            skipped_sends: 0,
            refused_marks: Vec::new(),
            nothing_unread: Vec::new(),
            marked_unread: BTreeSet::new(),
            last_seq: 0,
            recent_own: VecDeque::new(),
            owned: BTreeSet::new(),
            deleted: BTreeSet::new(),
            reactions: BTreeSet::new(),
            changes: Vec::new(),
            waiting_changes: VecDeque::new(),
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
        let mut mark: Option<JoinHandle<MarkEnd>> = None;
        let mut change: Option<JoinHandle<OpOutcome>> = None;
        let mut final_step: Option<JoinHandle<FinalStep>> = None;
        let mut conversations = None;
        let mut mark_seen = 0;
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
                    Some(Intent::Mark) if mark.is_none() => {
                        mark_seen = self.seen();
                        mark = self.new_mark(&client);
                    }
                    Some(Intent::Mark) => {}
                    // One change at a time; a few wait their turn.
                    Some(intent) if change.is_none() => change = self.new_change(&client, intent),
                    Some(intent) => {
                        if self.waiting_changes.len() < WAITING_CHANGES {
                            self.waiting_changes.push_back(intent);
                        }
                    }
                    None => self.intents_done = true,
                },
                ended = async { change.as_mut().unwrap().await }, if change.is_some() => {
                    change = None;
                    self.on_change_end(ended.unwrap());
                    while change.is_none() && let Some(next) = self.waiting_changes.pop_front() {
                        change = self.new_change(&client, next);
                    }
                }
                answered = async { mark.as_mut().unwrap().await }, if mark.is_some() => {
                    mark = None;
                    self.on_mark_end(answered.unwrap(), mark_seen);
                }
                finished = async { final_step.as_mut().unwrap().await }, if final_step.is_some() => {
                    let (synced, listed) = finished.unwrap();
                    match synced {
                        Ok(last_seq) => self.last_seq = self.last_seq.max(last_seq),
                        Err(error) => self.violations.push(format!("final sync failed: {error}")),
                    }
                    match listed {
                        Some(Ok(list)) => conversations = Some(list),
                        Some(Err(error)) => self.violations.push(format!("conversations: {error}")),
                        None => {}
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
                && change.is_none()
                && self.waiting_changes.is_empty()
                && !self.drained
            {
                self.drained = true;
                self.live.drained.fetch_add(1, Ordering::Relaxed);
            }
            if phase == Phase::FinalSync && final_step.is_none() {
                let client = client.clone();
                let v2 = self.protocol >= 2;
                final_step = Some(tokio::spawn(async move {
                    let synced = client.sync().await;
                    let listed = if v2 {
                        Some(final_reads::list_conversations(&client).await)
                    } else {
                        None
                    };
                    (synced, listed)
                }));
            }
        }
        let reads = self.read_at_end(&client, conversations).await;
        client.close().await;
        self.report(reads)
    }

    fn on_mark_end(&mut self, end: MarkEnd, seen: u64) {
        match end {
            MarkEnd::Answered => self.marks_answered += 1,
            MarkEnd::NotAMember(conversation_id) => {
                self.refused_marks.push(RefusedMark {
                    conversation_id,
                    seen,
                });
            }
            MarkEnd::NothingUnread(conversation_id) => self.nothing_unread.push(conversation_id),
            MarkEnd::Failed(error) => self.violations.push(format!("mark: {error}")),
        }
    }

    /// What the user reads once its final sync is done: the history of every conversation
    /// (of its list; on protocol 1, of its stream), and on protocol 3, beside its conversation
    /// list (`conversations`), the members of its groups and some read receipts.
    async fn read_at_end(
        &self,
        client: &Client,
        conversations: Option<ConversationList>,
    ) -> FinalReads {
        let mut reads = FinalReads {
            conversations,
            ..FinalReads::default()
        };
        // Protocol 1 knows no conversation list: its direct conversations are in its stream.
        let conversations: Vec<String> = match &reads.conversations {
            Some(list) => list
                .conversations
                .iter()
                .map(|c| c.conversation_id.clone())
                .collect(),
            None if self.protocol < 2 => self.by_conversation.keys().cloned().collect(),
            None => Vec::new(),
        };
        final_reads::histories(client, &self.user, conversations, self.protocol, &mut reads).await;
        if self.protocol >= 2 {
            let own = self.own_messages();
            let mut rng = Rng(self.rng.0 ^ 0x5bd1_e995);
            final_reads::members_and_receipts(client, &self.member_of, &own, &mut rng, &mut reads)
                .await;
        }
        reads
    }

    /// The user's own messages of every conversation it is in (of a group, since it last
    /// joined), by conversation.
    fn own_messages(&self) -> BTreeMap<String, Vec<u64>> {
        self.by_conversation
            .iter()
            .map(|(id, messages)| {
                let own = messages.iter().filter(|(_, other)| !other).map(|(m, _)| *m);
                (id.clone(), own.collect::<Vec<u64>>())
            })
            .filter(|(_, own)| !own.is_empty())
            .collect()
    }

    /// The highest seq of its stream the user has seen (the client delivers in seq order).
    fn seen(&self) -> u64 {
        self.stream.keys().next_back().copied().unwrap_or(0)
    }

    fn report(self, reads: FinalReads) -> UserReport {
        UserReport {
            user: self.user,
            protocol: self.protocol,
            skipped_sends: self.skipped_sends,
            refused_marks: self.refused_marks,
            nothing_unread: self.nothing_unread,
            marked_unread: self.marked_unread,
            reads,
            sends: self.sends,
            changes: self.changes,
            stream: self.stream,
            last_seq: self.last_seq,
            received_live: self.received_live,
            received_by_sync: self.received_by_sync,
            marks_requested: self.marks_requested,
            marks_answered: self.marks_answered,
            errors: self.errors,
            reconnects: self.reconnects,
            sync_hints: self.sync_hints,
            violations: self.violations,
        }
    }

    fn new_send(&mut self, client: &Client, to: String) {
        if is_group_id(&to) && !self.member_of.contains(&to) {
            self.skipped_sends += 1;
            return;
        }
        let n = self.sends.len();
        let text = format!("{} to {to}, #{n}", self.user);
        let quote = self.pick_quote(&to);
        let reply_to = quote.as_ref().map(|(_, quoted)| *quoted);
        let submitted = match quote {
            Some((conversation_id, quoted)) => {
                client.submit_reply(conversation_id, quoted, text.clone())
            }
            None => client.submit(to.clone(), text.clone()),
        };
        let submitted = match submitted {
            Ok(submitted) => submitted,
            Err(error) => {
                self.violations.push(format!("could not submit: {error}"));
                return;
            }
        };
        // The outcome arrives as an event; the receiver is not needed.
        let client_msg_id = submitted.client_msg_id;
        self.index.insert(client_msg_id.clone(), n);
        let seen = self.seen();
        self.sends.push(SendRecord {
            client_msg_id,
            to,
            text,
            reply_to,
            ack: None,
            seen,
            refused: None,
        });
        self.unacked += 1;
        self.live.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Now and then (protocol 3), a message to reply to with a message to `to`: one of the
    /// latest of the conversation, not deleted. The conversation's id, and the message's.
    fn pick_quote(&mut self, to: &str) -> Option<(String, u64)> {
        if self.protocol < 3 || self.rng.below(REPLY_EVERY) != 0 {
            return None;
        }
        let conversation = if is_group_id(to) {
            to.to_owned()
        } else {
            conversation_id(&self.user, to)
        };
        let quoted = self.pick_recent(&conversation)?;
        Some((conversation, quoted))
    }

    /// One of the latest messages of `conversation` the user has seen, not deleted.
    fn pick_recent(&mut self, conversation: &str) -> Option<u64> {
        let recent: Vec<u64> = self
            .by_conversation
            .get(conversation)?
            .iter()
            .rev()
            .take(RECENT_SEEN)
            .map(|(id, _)| *id)
            .filter(|id| !self.deleted.contains(id))
            .collect();
        recent
            .get(self.rng.below(recent.len().max(1) as u64) as usize)
            .copied()
    }

    /// Marks a random conversation of the user's stream: mostly read up to its newest
    /// message, sometimes read up to an older one (which changes nothing when already read),
    /// sometimes unread from one of its messages, or from the newest message of someone else.
    /// `None` while the user has no conversation yet.
    fn new_mark(&mut self, client: &Client) -> Option<JoinHandle<MarkEnd>> {
        if self.by_conversation.is_empty() {
            return None;
        }
        let n = self.rng.below(self.by_conversation.len() as u64) as usize;
        let (conversation, messages) = self.by_conversation.iter().nth(n)?;
        let conversation_id = conversation.clone();
        let newest = messages.last()?.0;
        let any = messages[self.rng.below(messages.len() as u64) as usize].0;
        let from_others = messages
            .iter()
            .any(|(id, from_other)| *from_other && !self.deleted.contains(id));
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
        if let CommandKind::MarkUnread {
            conversation_id, ..
        } = &kind
            && is_direct_with_another(conversation_id)
        {
            self.marked_unread.insert(conversation_id.clone());
        }
        self.marks_requested += 1;
        let client = client.clone();
        Some(tokio::spawn(async move {
            let group = match &kind {
                CommandKind::MarkRead {
                    conversation_id, ..
                }
                | CommandKind::MarkUnread {
                    conversation_id, ..
                } if is_group_id(conversation_id) => Some(conversation_id.clone()),
                _ => None,
            };
            let unread_from_others = match &kind {
                CommandKind::MarkUnread {
                    conversation_id,
                    message_id: None,
                } => Some(conversation_id.clone()),
                _ => None,
            };
            match answer_until_deadline(&client, kind).await {
                Ok(Answer::Reply(ServerFrame::ReadState { .. })) => MarkEnd::Answered,
                Ok(Answer::Refused { error, .. }) if error.code == ErrorCode::NotAMember => {
                    match group {
                        Some(group) => MarkEnd::NotAMember(group),
                        None => MarkEnd::Failed(format!("refused: {error}")),
                    }
                }
                Ok(Answer::Refused { error, .. })
                    if error.code == ErrorCode::UnknownMessage && unread_from_others.is_some() =>
                {
                    MarkEnd::NothingUnread(unread_from_others.unwrap_or_default())
                }
                Ok(Answer::Reply(other)) => MarkEnd::Failed(format!("answered with {other:?}")),
                Ok(Answer::Refused { error, .. }) => MarkEnd::Failed(format!("refused: {error}")),
                Err(error) => MarkEnd::Failed(error),
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
                let entry = Entry::of_message(&message);
                if message.deleted.is_some() {
                    self.deleted.insert(id);
                }
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
                let seq = delivered.event.seq;
                let entry = Entry::of_event(delivered.event);
                if self.put(seq, entry.clone()) {
                    self.follow_membership(&entry);
                    if let Some((id, MessageChange::Deleted)) = entry.message_change() {
                        self.deleted.insert(id);
                        self.recent_own.retain(|(_, own)| *own != id);
                    }
                }
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
                    ErrorAbout::Send(client_msg_id) if !error.retryable => {
                        self.on_refusal(&client_msg_id, &error);
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

    /// Follows the user's own membership of groups from an event of its stream. Leaving a
    /// group forgets its messages: a new membership starts from the join.
    fn follow_membership(&mut self, entry: &Entry) {
        let Entry::Event {
            kind,
            conversation_id,
            actor,
            user,
            users,
            ..
        } = entry
        else {
            return;
        };
        let me = &self.user;
        match kind.as_str() {
            "group_created" => {
                self.member_of.insert(conversation_id.clone());
                if actor == me {
                    self.owned.insert(conversation_id.clone());
                }
            }
            "members_added" if users.contains(me) => {
                self.member_of.insert(conversation_id.clone());
                self.by_conversation.remove(conversation_id);
            }
            "member_left" if user.as_ref() == Some(me) => {
                self.member_of.remove(conversation_id);
                self.by_conversation.remove(conversation_id);
            }
            _ => {}
        }
    }

    /// A send refused for good. A group message refused `not_a_member` is the verdict's to
    /// judge (the user may have been removed before it was sent), and so is a reply refused
    /// `message_deleted` (someone deleted what it quotes meanwhile) or, in a group,
    /// `unknown_message`; any other refusal is wrong.
    /// A send that went twice (after a session restart) may be refused twice, alike.
    fn on_refusal(&mut self, client_msg_id: &str, error: &peroxo_client::ServerError) {
        let judged = match self.index.get(client_msg_id) {
            Some(&i) if self.sends[i].ack.is_none() => {
                let send = &mut self.sends[i];
                let first = send.refused.is_none();
                let alike = send
                    .refused
                    .as_ref()
                    .is_none_or(|(code, _)| *code == error.code);
                if first {
                    send.refused = Some((error.code, error.message.clone()));
                    self.unacked -= 1;
                }
                let reply = send.reply_to.is_some();
                let group = is_group_id(&send.to);
                alike
                    && match error.code {
                        ErrorCode::NotAMember => group,
                        ErrorCode::UnknownMessage => group && reply,
                        ErrorCode::MessageDeleted => reply,
                        _ => false,
                    }
            }
            _ => false,
        };
        if !judged {
            self.violations
                .push(format!("send {client_msg_id} refused: {error}"));
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
                if let Ok(id) = this.0.parse() {
                    self.recent_own.push_back((ack.conversation_id.clone(), id));
                    if self.recent_own.len() > RECENT_OWN {
                        self.recent_own.pop_front();
                    }
                }
                send.ack = Some(this);
                self.unacked -= 1;
                self.live.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Makes the change `intent` asks for, if the user has a message to make it to; returns
    /// the task that waits for its outcome.
    fn new_change(&mut self, client: &Client, intent: Intent) -> Option<JoinHandle<OpOutcome>> {
        if self.protocol < 3 {
            return None;
        }
        let (conversation_id, message_id, change) = match intent {
            Intent::Edit => {
                let (conversation, id) = self.pick_own()?;
                let text = format!("{} edits {id}, #{}", self.user, self.changes.len());
                (conversation, id, Change::Edit { text })
            }
            Intent::Delete => {
                let (conversation, id) = match self.pick_moderated() {
                    Some(target) => target,
                    None => self.pick_own()?,
                };
                self.recent_own.retain(|(_, own)| *own != id);
                (conversation, id, Change::Delete)
            }
            Intent::React => self.pick_reaction()?,
            Intent::Send(_) | Intent::Mark => return None,
        };
        let submitted = client
            .submit_change(conversation_id.clone(), message_id, change.clone())
            .ok()?;
        self.changes.push(MessageOpRecord {
            conversation_id,
            message_id,
            change,
            outcome: OpOutcome::Failed("under way".to_owned()),
        });
        Some(tokio::spawn(async move {
            match tokio::time::timeout(CHANGE_DEADLINE, submitted.answered()).await {
                Ok(Ok(changed)) => OpOutcome::Answered {
                    duplicate: changed.duplicate,
                },
                Ok(Err(SendError::Refused(error))) => OpOutcome::Refused(error.code),
                Ok(Err(error)) => OpOutcome::Failed(error.to_string()),
                Err(_) => OpOutcome::Failed(format!("not answered within {CHANGE_DEADLINE:?}")),
            }
        }))
    }

    /// One of the user's recent messages, not deleted.
    fn pick_own(&mut self) -> Option<(String, u64)> {
        let deleted = &self.deleted;
        self.recent_own.retain(|(_, id)| !deleted.contains(id));
        let n = self.rng.below(self.recent_own.len().max(1) as u64) as usize;
        self.recent_own.get(n).cloned()
    }

    /// Now and then, another member's message, not deleted, in a group the user owns.
    fn pick_moderated(&mut self) -> Option<(String, u64)> {
        if self.owned.is_empty() || self.rng.below(3) != 0 {
            return None;
        }
        let group = self
            .owned
            .iter()
            .nth(self.rng.below(self.owned.len() as u64) as usize)?
            .clone();
        let others: Vec<u64> = self
            .by_conversation
            .get(&group)?
            .iter()
            .filter(|(id, from_other)| *from_other && !self.deleted.contains(id))
            .map(|(id, _)| *id)
            .collect();
        let id = *others.get(self.rng.below(others.len().max(1) as u64) as usize)?;
        Some((group, id))
    }

    /// Mostly a reaction to one of the latest messages of a conversation the user is in;
    /// sometimes one of its reactions taken back.
    fn pick_reaction(&mut self) -> Option<(String, u64, Change)> {
        if !self.reactions.is_empty() && self.rng.below(3) == 0 {
            let n = self.rng.below(self.reactions.len() as u64) as usize;
            let (conversation, id, emoji) = self.reactions.iter().nth(n)?.clone();
            return Some((conversation, id, Change::Unreact { emoji }));
        }
        let n = self.rng.below(self.by_conversation.len().max(1) as u64) as usize;
        let conversation = self.by_conversation.keys().nth(n)?.clone();
        let id = self.pick_recent(&conversation)?;
        let emoji = EMOJIS[self.rng.below(EMOJIS.len() as u64) as usize].to_owned();
        Some((conversation, id, Change::React { emoji }))
    }

    /// The latest change ended: recorded, and the user's reactions follow its answer.
    fn on_change_end(&mut self, outcome: OpOutcome) {
        let Some(record) = self.changes.last_mut() else {
            return;
        };
        record.outcome = outcome.clone();
        let key = |emoji: &str| {
            (
                record.conversation_id.clone(),
                record.message_id,
                emoji.to_owned(),
            )
        };
        match (&record.change, &outcome) {
            (Change::React { emoji }, OpOutcome::Answered { .. }) => {
                self.reactions.insert(key(emoji));
            }
            (Change::Unreact { emoji }, OpOutcome::Answered { .. }) => {
                self.reactions.remove(&key(emoji));
            }
            (_, OpOutcome::Refused(ErrorCode::MessageDeleted)) => {
                let id = record.message_id;
                self.deleted.insert(id);
                self.reactions.retain(|(_, message, _)| *message != id);
            }
            // A change never answered is the verdict's to name.
            _ => {}
        }
    }
}
