//! The sends that are not acked yet, and when each goes (again) on the wire.
//!
//! A send keeps its `client_msg_id` for its whole life, so every resend is idempotent: the
//! server stores it once and answers a resend of a committed message with `duplicate: true`.
//! A send is written when it is submitted; again, in submission order, after every reconnect;
//! again after a retryable error, with exponential backoff and jitter; and again at once when
//! the server reports an `internal` error without ids (its session restarted and may have
//! dropped what it was working on). It leaves the outbox when it is acked, or refused for good.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use peroxo_protocol::event::is_group_id;
use peroxo_protocol::{Command, CommandKind};
use tokio::time::Instant;

use crate::reconnect::Jitter;

/// The `send` command of a message to `to`: a user (a direct message) or, on a protocol-2
/// connection, a group (`send` with `conversation_id`).
pub(crate) fn send_command(to: &str, text: &str, client_msg_id: &str) -> CommandKind {
    let (to, text, client_msg_id) = (to.to_owned(), text.to_owned(), client_msg_id.to_owned());
    if is_group_id(&to) {
        CommandKind::SendToConversation {
            conversation_id: to,
            text,
            client_msg_id,
            reply_to: None,
        }
    } else {
        CommandKind::Send {
            to,
            text,
            client_msg_id,
        }
    }
}

/// One send not acked yet.
#[derive(Debug)]
pub(crate) struct PendingSend<T> {
    pub(crate) client_msg_id: String,
    /// A user id, or a group id.
    pub(crate) to: String,
    pub(crate) text: String,
    /// Who waits for the outcome.
    pub(crate) waiter: T,
    /// When to write it next; `None` while it is on the wire or waits for a reconnect.
    due: Option<Instant>,
    /// Written on the current connection and not answered there yet.
    on_wire: bool,
    /// Retryable errors so far, for the backoff.
    retries: u32,
}

/// What an error frame about a send means for it.
#[derive(Debug)]
pub(crate) enum ErrorOutcome<T> {
    /// Retryable: it goes again after its backoff.
    Retry,
    /// Refused for good: it left the outbox.
    Failed(PendingSend<T>),
    /// Not a send of this outbox (already acked, or never sent).
    Unknown,
}

/// The sends not acked yet, in submission order.
#[derive(Debug)]
pub(crate) struct Outbox<T> {
    sends: BTreeMap<u64, PendingSend<T>>,
    order_of: HashMap<String, u64>,
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
    fn contains(&self, client_msg_id: &str) -> bool {
        self.order_of.contains_key(client_msg_id)
    }

    /// Adds a send, due at `now`.
    pub(crate) fn push(
        &mut self,
        client_msg_id: String,
        to: String,
        text: String,
        waiter: T,
        now: Instant,
    ) {
        let order = self.next;
        self.next += 1;
        self.order_of.insert(client_msg_id.clone(), order);
        self.sends.insert(
            order,
            PendingSend {
                client_msg_id,
                to,
                text,
                waiter,
                due: Some(now),
                on_wire: false,
                retries: 0,
            },
        );
    }

    /// A new connection: every send goes again, in submission order.
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
                due.push(Command {
                    req_id: None,
                    kind: send_command(&send.to, &send.text, &send.client_msg_id),
                });
            }
        }
        due
    }

    /// When the next send is due, if one is scheduled.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.sends.values().filter_map(|send| send.due).min()
    }

    /// An ack: the send leaves the outbox (`None` when it had already left).
    pub(crate) fn on_ack(&mut self, client_msg_id: &str) -> Option<PendingSend<T>> {
        let order = self.order_of.remove(client_msg_id)?;
        self.sends.remove(&order)
    }

    /// An error frame naming a send.
    pub(crate) fn on_error(
        &mut self,
        client_msg_id: &str,
        retryable: bool,
        now: Instant,
        jitter: &mut Jitter,
    ) -> ErrorOutcome<T> {
        let Some(&order) = self.order_of.get(client_msg_id) else {
            return ErrorOutcome::Unknown;
        };
        if !retryable {
            self.order_of.remove(client_msg_id);
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

    /// The server's session restarted: every send on the wire and unanswered goes again now.
    pub(crate) fn on_session_restart(&mut self, now: Instant) {
        for send in self.sends.values_mut().filter(|send| send.on_wire) {
            send.on_wire = false;
            send.due = Some(now);
        }
    }

    /// Every send, in submission order, leaving the outbox empty.
    pub(crate) fn drain(&mut self) -> Vec<PendingSend<T>> {
        self.order_of.clear();
        std::mem::take(&mut self.sends).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(commands: &[Command]) -> Vec<String> {
        commands
            .iter()
            .map(|c| match &c.kind {
                CommandKind::Send { client_msg_id, .. }
                | CommandKind::SendToConversation { client_msg_id, .. } => client_msg_id.clone(),
                other => panic!("not a send: {other:?}"),
            })
            .collect()
    }

    fn outbox(n: usize) -> Outbox<()> {
        let mut outbox = Outbox::new(Duration::from_millis(10));
        for i in 0..n {
            outbox.push(format!("c{i}"), "bob".into(), format!("t{i}"), (), start());
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
        assert!(outbox.on_ack("c0").is_some());
        assert!(outbox.on_ack("c0").is_none(), "a second ack finds nothing");
        assert_eq!(outbox.len(), 1);
    }

    #[test]
    fn unacked_sends_go_again_in_order_with_the_same_id_after_a_reconnect() {
        let mut outbox = outbox(3);
        let now = start();
        outbox.take_due(now);
        outbox.on_ack("c1");
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
            outbox.on_error("c0", true, now, &mut jitter),
            ErrorOutcome::Retry
        ));
        assert!(outbox.take_due(now).is_empty(), "not before its delay");
        let first = outbox.next_due().unwrap() - now;
        // The first retry waits 2 × 10 ms, ±50 %.
        assert!(first >= Duration::from_millis(10) && first < Duration::from_millis(30));
        assert_eq!(ids(&outbox.take_due(now + first)), ["c0"]);
        for _ in 0..4 {
            outbox.on_error("c0", true, now, &mut jitter);
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
            outbox.on_error("nope", true, now, &mut jitter),
            ErrorOutcome::Unknown
        ));
        let ErrorOutcome::Failed(send) = outbox.on_error("c0", false, now, &mut jitter) else {
            panic!("a final error fails the send");
        };
        assert_eq!(send.client_msg_id, "c0");
        assert!(outbox.len() == 0 && !outbox.contains("c0"));
    }

    #[test]
    fn a_send_to_a_group_names_it_as_the_conversation() {
        let group = "g~5f1c0a9be3d2471f8a6c0d2e";
        let mut outbox = Outbox::new(Duration::from_millis(10));
        outbox.push("c0".into(), group.into(), "hi all".into(), (), start());
        outbox.push("c1".into(), "bob".into(), "hi".into(), (), start());
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
        outbox.push("c2".into(), "bob".into(), "t2".into(), (), now);
        let mut jitter = Jitter::seeded(1);
        outbox.on_error("c1", true, now, &mut jitter);
        outbox.on_session_restart(now);
        // c0 was on the wire; c1 waits for its backoff; c2 was never written and is due.
        assert_eq!(ids(&outbox.take_due(now)), ["c0", "c2"]);
    }
}
