//! What the client keeps writing until the server answers it: the sends not acked yet and
//! (protocol 3) the changes to committed messages not answered yet, and when each goes (again)
//! on the wire.
//!
//! Each is safe to repeat. A send keeps its `client_msg_id` for its whole life: the server
//! stores it once and answers a resend of a committed message with `duplicate: true`. An
//! `edit` keeps its own `client_msg_id` likewise; a `delete`, a `react` and an `unreact` change
//! nothing the second time. A change keeps one `req_id`, which its answer carries.
//!
//! An entry is written when it is submitted; again, in submission order, after every
//! reconnect; again after a retryable error, with exponential backoff and jitter; and again at
//! once when the server reports an `internal` error without ids (its session restarted and may
//! have dropped what it was working on). It leaves the outbox when it is answered (`ack`,
//! `message_state`), or refused for good.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use peroxo_protocol::event::is_group_id;
use peroxo_protocol::{Command, CommandKind, ReqId};
use tokio::time::Instant;

use crate::reconnect::Jitter;

/// The `send` command of a message to `to`: a user (a direct message) or, on a protocol-2
/// connection, a conversation id (`send` with `conversation_id`); a reply (protocol 3) always
/// names its conversation.
pub(crate) fn send_command(
    to: &str,
    text: &str,
    client_msg_id: &str,
    reply_to: Option<u64>,
) -> CommandKind {
    let (to, text, client_msg_id) = (to.to_owned(), text.to_owned(), client_msg_id.to_owned());
    if is_group_id(&to) || reply_to.is_some() {
        CommandKind::SendToConversation {
            conversation_id: to,
            text,
            client_msg_id,
            reply_to,
        }
    } else {
        CommandKind::Send {
            to,
            text,
            client_msg_id,
        }
    }
}

/// What an entry of the outbox writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// A message, answered with `ack`.
    Send {
        client_msg_id: String,
        /// A user id, or a conversation id (a group's, or a reply's).
        to: String,
        text: String,
        /// Protocol 3: the message it replies to.
        reply_to: Option<u64>,
    },
    /// A change to a committed message (protocol 3: `edit`, `delete`, `react`, `unreact`),
    /// answered with `message_state` carrying `req_id`.
    Change { req_id: String, kind: CommandKind },
}

/// What names an entry in the server's answers: a send's `client_msg_id` (sends carry no
/// `req_id`), a change's `req_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Send(String),
    Change(String),
}

impl Outgoing {
    pub(crate) fn key(&self) -> Key {
        match self {
            Outgoing::Send { client_msg_id, .. } => Key::Send(client_msg_id.clone()),
            Outgoing::Change { req_id, .. } => Key::Change(req_id.clone()),
        }
    }

    /// The command that carries it.
    pub(crate) fn command(&self) -> Command {
        match self {
            Outgoing::Send {
                client_msg_id,
                to,
                text,
                reply_to,
            } => Command {
                req_id: None,
                kind: send_command(to, text, client_msg_id, *reply_to),
            },
            Outgoing::Change { req_id, kind } => Command {
                req_id: Some(ReqId::Text(req_id.clone())),
                kind: kind.clone(),
            },
        }
    }
}

/// One send or change not answered yet.
#[derive(Debug)]
pub(crate) struct Pending<T> {
    pub(crate) what: Outgoing,
    /// Who waits for the outcome.
    pub(crate) waiter: T,
    /// When to write it next; `None` while it is on the wire or waits for a reconnect.
    due: Option<Instant>,
    /// Written on the current connection and not answered there yet.
    on_wire: bool,
    /// Retryable errors so far, for the backoff.
    retries: u32,
}

/// What an error frame about an entry means for it.
#[derive(Debug)]
pub(crate) enum ErrorOutcome<T> {
    /// Retryable: it goes again after its backoff.
    Retry,
    /// Refused for good: it left the outbox.
    Failed(Pending<T>),
    /// Not an entry of this outbox (already answered, or never written).
    Unknown,
}

/// The sends and changes not answered yet, in submission order.
#[derive(Debug)]
pub(crate) struct Outbox<T> {
    sends: BTreeMap<u64, Pending<T>>,
    order_of: HashMap<Key, u64>,
    next: u64,
    /// The first delay after a retryable error; it doubles with each retry.
    retry_base: Duration,
}

impl<T> Outbox<T> {
    pub(crate) fn new(retry_base: Duration) -> Self {
        Self {
            sends: BTreeMap::new(),
            order_of: HashMap::new(),
            next: 0,
            retry_base,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sends.len()
    }

    #[cfg(test)]
    fn contains(&self, key: &Key) -> bool {
        self.order_of.contains_key(key)
    }

    /// Adds a send or a change, due at `now`.
    pub(crate) fn push(&mut self, what: Outgoing, waiter: T, now: Instant) {
        let order = self.next;
        self.next += 1;
        self.order_of.insert(what.key(), order);
        self.sends.insert(
            order,
            Pending {
                what,
                waiter,
                due: Some(now),
                on_wire: false,
                retries: 0,
            },
        );
    }

    /// A new connection: every entry goes again, in submission order.
    pub(crate) fn on_connected(&mut self, now: Instant) {
        for send in self.sends.values_mut() {
            send.on_wire = false;
            send.due = Some(now);
        }
    }

    /// The connection is gone: nothing is on the wire, and nothing goes before the next one.
    pub(crate) fn on_disconnected(&mut self) {
        for send in self.sends.values_mut() {
            send.on_wire = false;
            send.due = None;
        }
    }

    /// The sends due at `now`, as commands, in submission order; they count as on the wire.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Command> {
        let mut due = Vec::new();
        for send in self.sends.values_mut() {
            if send.due.is_some_and(|at| at <= now) {
                send.due = None;
                send.on_wire = true;
                due.push(send.what.command());
            }
        }
        due
    }

    /// When the next send is due, if one is scheduled.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.sends.values().filter_map(|send| send.due).min()
    }

    /// An answer (`ack`, `message_state`): the entry leaves the outbox (`None` when it had
    /// already left).
    pub(crate) fn on_answer(&mut self, key: &Key) -> Option<Pending<T>> {
        let order = self.order_of.remove(key)?;
        self.sends.remove(&order)
    }

    /// Whether an entry with this key waits for its answer.
    pub(crate) fn holds(&self, key: &Key) -> bool {
        self.order_of.contains_key(key)
    }

    /// An error frame naming an entry.
    pub(crate) fn on_error(
        &mut self,
        key: &Key,
        retryable: bool,
        now: Instant,
        jitter: &mut Jitter,
    ) -> ErrorOutcome<T> {
        let Some(&order) = self.order_of.get(key) else {
            return ErrorOutcome::Unknown;
        };
        if !retryable {
            self.order_of.remove(key);
            return match self.sends.remove(&order) {
                Some(send) => ErrorOutcome::Failed(send),
                None => ErrorOutcome::Unknown,
            };
        }
        let Some(send) = self.sends.get_mut(&order) else {
            return ErrorOutcome::Unknown;
        };
        send.retries += 1;
        let delay = jitter.around(self.retry_base * (1u32 << send.retries.min(5)));
        send.on_wire = false;
        send.due = Some(now + delay);
        ErrorOutcome::Retry
    }

    /// The server's session restarted: every entry on the wire and unanswered goes again now.
    pub(crate) fn on_session_restart(&mut self, now: Instant) {
        for send in self.sends.values_mut().filter(|send| send.on_wire) {
            send.on_wire = false;
            send.due = Some(now);
        }
    }

    /// Every entry, in submission order, leaving the outbox empty.
    pub(crate) fn drain(&mut self) -> Vec<Pending<T>> {
        self.order_of.clear();
        std::mem::take(&mut self.sends).into_values().collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What names each command: a send's `client_msg_id`, a change's `req_id`.
    fn ids(commands: &[Command]) -> Vec<String> {
        commands
            .iter()
            .map(|c| match (&c.kind, &c.req_id) {
                (
                    CommandKind::Send { client_msg_id, .. }
                    | CommandKind::SendToConversation { client_msg_id, .. },
                    None,
                ) => client_msg_id.clone(),
                (_, Some(ReqId::Text(req_id))) => req_id.clone(),
                (other, _) => panic!("not a send nor a change: {other:?}"),
            })
            .collect()
    }

    pub(crate) fn send(client_msg_id: &str, to: &str, text: &str) -> Outgoing {
        Outgoing::Send {
            client_msg_id: client_msg_id.to_owned(),
            to: to.to_owned(),
            text: text.to_owned(),
            reply_to: None,
        }
    }

    fn key(client_msg_id: &str) -> Key {
        Key::Send(client_msg_id.to_owned())
    }

    fn outbox(n: usize) -> Outbox<()> {
        let mut outbox = Outbox::new(Duration::from_millis(10));
        for i in 0..n {
            outbox.push(send(&format!("c{i}"), "bob", &format!("t{i}")), (), start());
        }
        outbox
    }

    /// One instant for every test step, so that nothing depends on the clock moving.
    fn start() -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now)
    }

    #[test]
    fn a_send_goes_once_and_leaves_when_acked() {
        let mut outbox = outbox(2);
        let now = start();
        assert_eq!(ids(&outbox.take_due(now)), ["c0", "c1"]);
        assert!(outbox.take_due(now).is_empty());
        assert!(outbox.on_answer(&key("c0")).is_some());
        assert!(
            outbox.on_answer(&key("c0")).is_none(),
            "a second ack finds nothing"
        );
        assert_eq!(outbox.len(), 1);
    }

    #[test]
    fn unacked_sends_go_again_in_order_with_the_same_id_after_a_reconnect() {
        let mut outbox = outbox(3);
        let now = start();
        outbox.take_due(now);
        outbox.on_answer(&key("c1"));
        outbox.on_disconnected();
        assert!(
            outbox.take_due(now).is_empty(),
            "nothing goes while disconnected"
        );
        assert_eq!(outbox.next_due(), None);
        outbox.on_connected(now);
        let again = outbox.take_due(now);
        assert_eq!(ids(&again), ["c0", "c2"]);
        assert!(matches!(&again[0].kind, CommandKind::Send { text, .. } if text == "t0"));
    }

    #[test]
    fn a_retryable_error_schedules_the_send_with_a_growing_backoff() {
        let mut outbox = outbox(1);
        let mut jitter = Jitter::seeded(7);
        let now = start();
        outbox.take_due(now);
        assert!(matches!(
            outbox.on_error(&key("c0"), true, now, &mut jitter),
            ErrorOutcome::Retry
        ));
        assert!(outbox.take_due(now).is_empty(), "not before its delay");
        let first = outbox.next_due().unwrap() - now;
        // The first retry waits 2 × 10 ms, ±50 %.
        assert!(first >= Duration::from_millis(10) && first < Duration::from_millis(30));
        assert_eq!(ids(&outbox.take_due(now + first)), ["c0"]);
        for _ in 0..4 {
            outbox.on_error(&key("c0"), true, now, &mut jitter);
        }
        // The fifth waits 32 × 10 ms, ±50 %.
        let last = outbox.next_due().unwrap() - now;
        assert!(
            last >= Duration::from_millis(160),
            "{last:?} after {first:?}"
        );
    }

    #[test]
    fn a_final_error_fails_the_send_and_an_unknown_id_is_ignored() {
        let mut outbox = outbox(1);
        let mut jitter = Jitter::seeded(7);
        let now = start();
        assert!(matches!(
            outbox.on_error(&key("nope"), true, now, &mut jitter),
            ErrorOutcome::Unknown
        ));
        let ErrorOutcome::Failed(send) = outbox.on_error(&key("c0"), false, now, &mut jitter)
        else {
            panic!("a final error fails the send");
        };
        assert_eq!(send.what.key(), key("c0"));
        assert!(outbox.len() == 0 && !outbox.contains(&key("c0")));
    }

    #[test]
    fn a_send_to_a_group_names_it_as_the_conversation() {
        let group = "g~5f1c0a9be3d2471f8a6c0d2e";
        let mut outbox = Outbox::new(Duration::from_millis(10));
        outbox.push(send("c0", group, "hi all"), (), start());
        outbox.push(send("c1", "bob", "hi"), (), start());
        let due = outbox.take_due(start());
        assert!(matches!(&due[0].kind,
            CommandKind::SendToConversation { conversation_id, .. } if conversation_id == group));
        assert!(matches!(&due[1].kind, CommandKind::Send { to, .. } if to == "bob"));
    }

    #[test]
    fn a_session_restart_resends_only_what_was_unanswered() {
        let mut outbox = outbox(2);
        let now = start();
        outbox.take_due(now);
        outbox.push(send("c2", "bob", "t2"), (), now);
        let mut jitter = Jitter::seeded(1);
        outbox.on_error(&key("c1"), true, now, &mut jitter);
        outbox.on_session_restart(now);
        // c0 was on the wire; c1 waits for its backoff; c2 was never written and is due.
        assert_eq!(ids(&outbox.take_due(now)), ["c0", "c2"]);
    }

    #[test]
    fn a_reply_names_its_conversation_and_the_message_it_quotes() {
        let mut outbox = Outbox::new(Duration::from_millis(10));
        let reply = Outgoing::Send {
            client_msg_id: "c0".into(),
            to: "alice:bob".into(),
            text: "yes".into(),
            reply_to: Some(57),
        };
        outbox.push(reply, (), start());
        let due = outbox.take_due(start());
        assert!(matches!(&due[0].kind,
            CommandKind::SendToConversation { conversation_id, reply_to: Some(57), .. }
                if conversation_id == "alice:bob"));
    }

    #[test]
    fn a_change_goes_again_with_its_req_id_among_the_sends_in_order() {
        let mut outbox = outbox(1);
        let edit = CommandKind::Edit {
            conversation_id: "alice:bob".into(),
            message_id: 57,
            text: "fixed".into(),
            client_msg_id: "e1".into(),
        };
        let change = Outgoing::Change {
            req_id: "m1".into(),
            kind: edit.clone(),
        };
        outbox.push(change, (), start());
        outbox.push(send("c1", "bob", "t1"), (), start());
        let now = start();
        assert_eq!(ids(&outbox.take_due(now)), ["c0", "m1", "c1"]);
        outbox.on_disconnected();
        outbox.on_connected(now);
        let again = outbox.take_due(now);
        assert_eq!(ids(&again), ["c0", "m1", "c1"]);
        assert_eq!(again[1].kind, edit, "the edit keeps its client_msg_id");
        // Answers are told apart by what names them: a send's ack does not answer a change.
        assert!(outbox.on_answer(&Key::Send("m1".into())).is_none());
        assert!(outbox.on_answer(&Key::Change("m1".into())).is_some());
        assert_eq!(outbox.len(), 2);
    }
}
