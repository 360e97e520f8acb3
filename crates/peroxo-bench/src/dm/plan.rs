//! The schedule of a `dm` run, fixed before it starts: which user sends message `i`, to whom,
//! when, and what it says.
//!
//! Nothing is stored per message. Message `i` is due `i / rate` seconds after the start (open
//! loop: the clock decides, not the replies), is sent by user `i mod users` (so every user
//! sends at the same steady pace), and goes to a peer other than the sender chosen by a seeded
//! hash of `i`, so the same seed gives the same run. Every frame about a message names it by
//! its index (see [`names`]).

use peroxo_protocol::{Command, CommandKind, MessageView};

use crate::rng;
use crate::traffic::{self, Route, Timeline, names};

/// Who sends what to whom, and when.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    users: u32,
    timeline: Timeline,
    seed: u64,
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
        })
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

    /// The `send` of message `i`.
    fn command(&self, i: u32, text_bytes: usize) -> Command {
        Command {
            req_id: None,
            kind: CommandKind::Send {
                to: names::user_name(self.to(i)),
                text: names::message_text(i, text_bytes),
                client_msg_id: i.to_string(),
            },
        }
    }

    /// A direct message has one recipient.
    fn fanout(&self) -> u32 {
        1
    }

    fn recipient(&self, i: u32, _row: u32) -> u32 {
        self.to(i)
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
}
