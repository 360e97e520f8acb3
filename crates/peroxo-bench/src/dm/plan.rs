//! The schedule of a `dm` run, fixed before it starts: which user sends message `i`, to whom,
//! when, and what it says.
//!
//! Nothing is stored per message. Message `i` is due `i / rate` seconds after the start (open
//! loop: the clock decides, not the replies), is sent by user `i mod users` (so every user
//! sends at the same steady pace), and goes to a peer other than the sender chosen by a seeded
//! hash of `i`, so the same seed gives the same run. Every frame about a message names it by
//! its index (see [`names`]).

use std::sync::Arc;

use peroxo_protocol::domain::conversation_id;
use peroxo_protocol::{Command, CommandKind, EventView, MessageView, ReqId, ServerFrame};

use super::mix::{Mix, Op};
use crate::rng;
use crate::traffic::{self, EventRoute, Reply, Route, Timeline, names};

/// Who sends what to whom, and when; with a mix, which commands change a message instead.
#[derive(Clone)]
pub(super) struct Plan {
    users: u32,
    timeline: Timeline,
    seed: u64,
    mix: Option<Arc<Mix>>,
}

impl Plan {
    /// A plan for `users` users sending messages at `timeline`'s pace.
    pub(super) fn new(users: u32, timeline: Timeline, seed: u64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            users >= 2,
            "--users must be at least 2 (users send to peers)"
        );
        Ok(Self {
            users,
            timeline,
            seed,
            mix: None,
        })
    }

    /// The same plan with `mix` changing some of its commands into edits, reactions and
    /// deletes.
    pub(super) fn with_mix(mut self, mix: Arc<Mix>) -> Self {
        self.mix = Some(mix);
        self
    }

    /// The change command `i` makes, with its target, once decided; `None` for a send (or a
    /// change sent as a message).
    fn change(&self, i: u32) -> Option<(Op, u32)> {
        let mix = self.mix.as_ref()?;
        let op = mix.op(i);
        (op != Op::Send).then(|| mix.target(i).map(|j| (op, j)))?
    }

    /// Decides the target of change `i` of `mix`: for an edit or a delete, one of its
    /// sender's earlier messages; for a reaction, an earlier message to its sender.
    fn choose_target(&self, mix: &Mix, i: u32, op: Op) -> Option<u32> {
        let me = traffic::Plan::sender(self, i);
        let turns = Mix::turns(op);
        let earliest = i.saturating_sub(turns * self.users);
        if op == Op::React {
            let received = (earliest..i)
                .rev()
                .filter(move |&j| traffic::Plan::sender(self, j) != me && self.to(j) == me);
            mix.choose(i, received)
        } else {
            let own = (1..=turns).filter_map(move |k| i.checked_sub(k * self.users));
            mix.choose(i, own)
        }
    }

    /// The command of change `i`, or `None` when it found no target (it is then a send).
    fn change_command(&self, i: u32, text_bytes: usize) -> Option<CommandKind> {
        let mix = self.mix.as_ref()?;
        let op = mix.op(i);
        if op == Op::Send {
            return None;
        }
        let j = self.choose_target(mix, i, op)?;
        let author = traffic::Plan::sender(self, j);
        let conversation_id =
            conversation_id(&names::user_name(author), &names::user_name(self.to(j)));
        let message_id = mix.id(j)?;
        Some(match op {
            Op::Edit => CommandKind::Edit {
                conversation_id,
                message_id,
                text: names::message_text(i, text_bytes),
                client_msg_id: i.to_string(),
            },
            Op::Delete => CommandKind::Delete {
                conversation_id,
                message_id,
            },
            Op::React => CommandKind::React {
                conversation_id,
                message_id,
                emoji: format!("r{i}"),
            },
            Op::Send => unreachable!("a send changes nothing"),
        })
    }

    /// What the run's changes came to, once it is over.
    pub(super) fn mix_report(&self, mix: &Mix, shares: super::MixArgs) -> super::mix::MixReport {
        let mut counts = [0u64; 4];
        for i in 0..self.len() {
            if let Some((op, _)) = self.change(i) {
                counts[op as usize] += 1;
            }
        }
        super::mix::MixReport {
            shares,
            edits: counts[Op::Edit as usize],
            reactions: counts[Op::React as usize],
            deletes: counts[Op::Delete as usize],
            fallbacks: mix.fallbacks.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The user a change's event must reach: the other participant of its conversation.
    fn change_recipient(&self, op: Op, j: u32) -> u32 {
        if op == Op::React {
            traffic::Plan::sender(self, j)
        } else {
            self.to(j)
        }
    }

    /// The number of messages in the run.
    pub(super) fn len(&self) -> u32 {
        self.timeline.len()
    }

    /// The user message `i` is sent to: never its sender.
    fn to(&self, i: u32) -> u32 {
        let bits = rng::splitmix64(self.seed ^ rng::splitmix64(u64::from(i)));
        let offset = 1 + rng::below(bits, u64::from(self.users - 1)) as u32;
        (traffic::Plan::sender(self, i) + offset) % self.users
    }
}

impl traffic::Plan for Plan {
    fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    fn users(&self) -> u32 {
        self.users
    }

    /// Users take turns.
    fn sender(&self, i: u32) -> u32 {
        i % self.users
    }

    /// The `send` of message `i`, or the change it makes (named by its `req_id`).
    fn command(&self, i: u32, text_bytes: usize) -> Command {
        if let Some(kind) = self.change_command(i, text_bytes) {
            return Command {
                req_id: Some(ReqId::Text(i.to_string())),
                kind,
            };
        }
        Command {
            req_id: None,
            kind: CommandKind::Send {
                to: names::user_name(self.to(i)),
                text: names::message_text(i, text_bytes),
                client_msg_id: i.to_string(),
            },
        }
    }

    /// A direct message has one recipient, and so does a change: the other participant.
    fn fanout(&self) -> u32 {
        1
    }

    fn recipient(&self, i: u32, _row: u32) -> u32 {
        match self.change(i) {
            Some((op, j)) => self.change_recipient(op, j),
            None => self.to(i),
        }
    }

    fn acked(&self, i: u32, message_id: &str) {
        if let (Some(mix), Ok(id)) = (&self.mix, message_id.parse()) {
            mix.acked(i, id);
        }
    }

    fn changes_a_message(&self, i: u32) -> bool {
        self.change(i).is_some()
    }

    /// A change is answered with `message_state`, named by the change's `req_id`.
    fn reply(&self, frame: &ServerFrame<'_>) -> Reply {
        let ServerFrame::MessageState {
            req_id: Some(req_id),
            ..
        } = frame
        else {
            return Reply::Unplanned;
        };
        match req_id.as_ref() {
            ReqId::Text(id) => match names::index_of_id(id) {
                Some(i) if self.change(i).is_some() => Reply::Answers(i),
                Some(i) => Reply::Wrong(i),
                None => Reply::Unplanned,
            },
            ReqId::Number(_) => Reply::Unplanned,
        }
    }

    /// A change's event reaches both participants: the one who made it gets its own copy,
    /// the other is the change's delivery. Changes keep no order among themselves (they run
    /// beside sends, several at once), so each is a sequence of its own.
    fn route_event(&self, me: u32, event: &EventView<'_>) -> EventRoute {
        let Some(mix) = &self.mix else {
            return EventRoute::Unplanned;
        };
        let index = match (event.event.as_ref(), &event.text, &event.emoji) {
            ("message_edited", Some(text), _) => names::index_of_text(text),
            ("reaction_added", _, Some(emoji)) => {
                emoji.strip_prefix('r').and_then(|i| i.parse().ok())
            }
            ("message_deleted", _, _) => event
                .message_id
                .as_deref()
                .and_then(|id| id.parse().ok())
                .and_then(|id| mix.delete_of(id)),
            _ => None,
        };
        let Some((i, (op, j))) = index.and_then(|i| Some((i, self.change(i)?))) else {
            return EventRoute::Unplanned;
        };
        let actor = names::user_number(&event.actor);
        if actor != Some(traffic::Plan::sender(self, i)) {
            return EventRoute::Unplanned;
        }
        if actor == Some(me) {
            return EventRoute::Echo;
        }
        if self.change_recipient(op, j) != me {
            return EventRoute::Unplanned;
        }
        EventRoute::Delivery(Route {
            index: i,
            row: 0,
            sequence: u32::MAX,
            position: 0,
        })
    }

    /// A message must come to its planned recipient from its planned sender; the messages of
    /// one sender arrive in the order it sent them.
    fn route(&self, me: u32, message: &MessageView<'_>) -> Option<Route> {
        let i = names::index_of_text(&message.text)?;
        let sender = self.sender(i);
        let planned = i < self.len()
            && self.to(i) == me
            && names::user_number(&message.to) == Some(me)
            && names::user_number(&message.from) == Some(sender);
        planned.then_some(Route {
            index: i,
            row: 0,
            sequence: sender,
            position: u64::from(i),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use super::*;
    use crate::traffic::Plan as _;

    fn plan() -> Plan {
        let timeline = Timeline::new(1_000, Duration::from_secs(1), Duration::from_secs(2));
        Plan::new(10, timeline.unwrap(), 7).unwrap()
    }

    #[test]
    fn senders_take_turns_and_never_write_to_themselves() {
        let plan = plan();
        assert_eq!(plan.len(), 3_000);
        let mut received = [0u32; 10];
        for i in 0..plan.len() {
            assert_eq!(plan.sender(i), i % 10);
            let to = plan.recipient(i, 0);
            assert_ne!(to, plan.sender(i));
            assert!(to < 10);
            received[to as usize] += 1;
        }
        assert!(received.iter().all(|n| *n > 200), "{received:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_peers() {
        let (a, b) = (plan(), plan());
        assert!((0..100).all(|i| a.recipient(i, 0) == b.recipient(i, 0)));
    }

    #[test]
    fn a_send_carries_its_index_in_the_id_and_the_text() {
        let plan = plan();
        let Command {
            req_id: None,
            kind:
                CommandKind::Send {
                    to,
                    text,
                    client_msg_id,
                },
        } = plan.command(1234, 32)
        else {
            panic!("not a send");
        };
        assert_eq!(to, names::user_name(plan.recipient(1234, 0)));
        assert_eq!(text.len(), 32);
        assert_eq!(names::index_of_text(&text), Some(1234));
        assert_eq!(names::index_of_id(&client_msg_id), Some(1234));
    }

    #[test]
    fn only_the_planned_delivery_is_routed() {
        let plan = plan();
        let to = plan.recipient(42, 0);
        let message = |from: u32, to: u32| MessageView {
            message_id: "7".to_owned(),
            conversation_id: String::new(),
            from: Cow::Owned(names::user_name(from)),
            to: Cow::Owned(names::user_name(to)),
            text: Cow::Owned(names::message_text(42, 10)),
            ts: 0,
            seq: 1,
            client_msg_id: None,
            erased: false,
            reply_to: None,
            edited_ts: None,
            deleted: None,
            reactions: None,
        };
        let route = plan.route(to, &message(2, to)).unwrap();
        assert_eq!((route.index, route.row, route.sequence), (42, 0, 2));
        assert_eq!(route.position, 42);
        assert_eq!(plan.route(to, &message(3, to)), None, "wrong sender");
        let other = (to + 1) % 10;
        assert_eq!(
            plan.route(other, &message(2, other)),
            None,
            "wrong recipient"
        );
    }

    #[test]
    fn a_change_reaches_the_other_participant_and_its_author_gets_a_copy() {
        use super::super::MixArgs;
        let args = MixArgs {
            edits: 30.0,
            reactions: 0.0,
            deletes: 0.0,
        };
        let mix = Arc::new(Mix::new(args, 3_000, 7).unwrap());
        let plan = plan().with_mix(Arc::clone(&mix));
        // An edit whose sender's previous message (one turn back) was acked.
        let i = (20..3_000)
            .find(|&i| mix.op(i) == Op::Edit && mix.op(i - 10) == Op::Send)
            .unwrap();
        mix.acked(i - 10, 99);
        let command = plan.command(i, 32);
        assert_eq!(command.req_id, Some(ReqId::Text(i.to_string())));
        let CommandKind::Edit { message_id, .. } = command.kind else {
            panic!("not an edit: {command:?}");
        };
        assert_eq!(message_id, 99);
        assert!(traffic::Plan::changes_a_message(&plan, i));
        let peer = plan.to(i - 10);
        assert_eq!(traffic::Plan::recipient(&plan, i, 0), peer);
        let text = names::message_text(i, 32);
        let event = |seq| EventView {
            seq,
            event: Cow::Borrowed("message_edited"),
            event_id: "1".to_owned(),
            conversation_id: Cow::Borrowed(""),
            actor: Cow::Owned(names::user_name(traffic::Plan::sender(&plan, i))),
            ts: 0,
            title: None,
            member_count: None,
            users: None,
            user: None,
            role: None,
            message_id: Some("99".to_owned()),
            unread_count: None,
            text: Some(Cow::Owned(text.clone())),
            moderated: None,
            emoji: None,
        };
        assert!(matches!(
            plan.route_event(peer, &event(5)),
            EventRoute::Delivery(Route { index, .. }) if index == i
        ));
        assert_eq!(
            plan.route_event(traffic::Plan::sender(&plan, i), &event(6)),
            EventRoute::Echo
        );
        let stranger = (0..10)
            .find(|u| *u != peer && *u != traffic::Plan::sender(&plan, i))
            .unwrap();
        assert_eq!(plan.route_event(stranger, &event(7)), EventRoute::Unplanned);
    }
}
