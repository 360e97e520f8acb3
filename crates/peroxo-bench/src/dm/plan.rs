//! The schedule of a `dm` run, fixed before it starts: which user sends message `i`, to whom,
//! when, and what it says.
//!
//! Nothing is stored per message. Message `i` is due `i / rate` seconds after the start (open
//! loop: the clock decides, not the replies), is sent by user `i mod users` (so every user
//! sends at the same steady pace), and goes to a peer other than the sender chosen by a seeded
//! hash of `i`, so the same seed gives the same run.
//!
//! Every frame about a message names it by its index: the `client_msg_id` of its send is the
//! index in decimal, and its text starts with `m<index>`, so that the recipient (which does
//! not see `client_msg_id`) can match what it receives.

use std::time::Duration;

use peroxo_protocol::{Command, CommandKind};

use crate::rng;

/// Nanoseconds in a second.
const NANOS: u128 = 1_000_000_000;

/// Who sends what to whom, and when.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    users: u32,
    /// Messages per second, over all users.
    rate: u32,
    /// Messages in all (warm-up and measured).
    len: u32,
    /// The first message of the measured window (the ones before are warm-up).
    measured_from: u32,
    seed: u64,
}

impl Plan {
    /// A plan for `users` users sending `rate` messages per second for `warmup` and then
    /// `duration`.
    pub(super) fn new(
        users: u32,
        rate: u32,
        warmup: Duration,
        duration: Duration,
        seed: u64,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            users >= 2,
            "--users must be at least 2 (users send to peers)"
        );
        anyhow::ensure!(rate >= 1, "--rate must be at least 1 message per second");
        anyhow::ensure!(!duration.is_zero(), "--duration must be longer than zero");
        let count = |span: Duration| (span.as_nanos() * u128::from(rate)).div_ceil(NANOS);
        let len = u32::try_from(count(warmup + duration))
            .ok()
            .filter(|len| *len < u32::MAX)
            .ok_or_else(|| {
                anyhow::anyhow!("--rate × (--warmup + --duration) is too many messages")
            })?;
        let measured_from = u32::try_from(count(warmup)).unwrap_or(len);
        Ok(Self {
            users,
            rate,
            len,
            measured_from,
            seed,
        })
    }

    /// The number of messages in the run.
    pub(super) fn len(&self) -> u32 {
        self.len
    }

    /// The number of users.
    pub(super) fn users(&self) -> u32 {
        self.users
    }

    /// The user who sends message `i`.
    pub(super) fn sender(&self, i: u32) -> u32 {
        i % self.users
    }

    /// The user message `i` is sent to: never its sender.
    pub(super) fn recipient(&self, i: u32) -> u32 {
        let bits = rng::splitmix64(self.seed ^ rng::splitmix64(u64::from(i)));
        let offset = 1 + rng::below(bits, u64::from(self.users - 1)) as u32;
        (self.sender(i) + offset) % self.users
    }

    /// When message `i` is due, after the start of the run.
    pub(super) fn due(&self, i: u32) -> Duration {
        let nanos = u128::from(i) * NANOS / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Whether message `i` belongs to the measured window (not the warm-up).
    pub(super) fn is_measured(&self, i: u32) -> bool {
        i >= self.measured_from
    }

    /// The `send` of message `i`, with a text of at least `text_bytes` bytes (more only when
    /// `m<index>` alone is longer).
    pub(super) fn send(&self, i: u32, text_bytes: usize) -> Command {
        Command {
            req_id: None,
            kind: CommandKind::Send {
                to: user_name(self.recipient(i)),
                text: message_text(i, text_bytes),
                client_msg_id: i.to_string(),
            },
        }
    }
}

/// The text of message `i`: `m<i>`, then a space and filler up to `text_bytes`.
fn message_text(i: u32, text_bytes: usize) -> String {
    let mut text = format!("m{i}");
    if text.len() < text_bytes {
        text.push(' ');
    }
    while text.len() < text_bytes {
        text.push('x');
    }
    text
}

/// The message index a `client_msg_id` carries, if it is one of ours.
pub(super) fn index_of_client_msg_id(client_msg_id: &str) -> Option<u32> {
    client_msg_id.parse().ok()
}

/// The message index a received text carries, if it is one of ours.
pub(super) fn index_of_text(text: &str) -> Option<u32> {
    let rest = text.strip_prefix('m')?;
    let digits = rest.split(' ').next()?;
    digits.parse().ok()
}

/// The id of user number `n`.
pub(super) fn user_name(n: u32) -> String {
    format!("u{n}")
}

/// The number of the user with id `name`, if it is one of ours.
pub(super) fn user_number(name: &str) -> Option<u32> {
    name.strip_prefix('u')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan::new(10, 1_000, Duration::from_secs(1), Duration::from_secs(2), 7).unwrap()
    }

    #[test]
    fn the_plan_covers_warmup_and_duration_at_the_rate() {
        let plan = plan();
        assert_eq!(plan.len(), 3_000);
        assert!(!plan.is_measured(999));
        assert!(plan.is_measured(1_000));
        assert_eq!(plan.due(0), Duration::ZERO);
        assert_eq!(plan.due(1_500), Duration::from_millis(1_500));
    }

    #[test]
    fn senders_take_turns_and_never_write_to_themselves() {
        let plan = plan();
        let mut received = [0u32; 10];
        for i in 0..plan.len() {
            assert_eq!(plan.sender(i), i % 10);
            let to = plan.recipient(i);
            assert_ne!(to, plan.sender(i));
            assert!(to < 10);
            received[to as usize] += 1;
        }
        assert!(received.iter().all(|n| *n > 200), "{received:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_peers() {
        let (a, b) = (plan(), plan());
        assert!((0..100).all(|i| a.recipient(i) == b.recipient(i)));
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
        } = plan.send(1234, 32)
        else {
            panic!("not a send");
        };
        assert_eq!(to, user_name(plan.recipient(1234)));
        assert_eq!(text.len(), 32);
        assert_eq!(index_of_text(&text), Some(1234));
        assert_eq!(index_of_client_msg_id(&client_msg_id), Some(1234));
    }

    #[test]
    fn a_text_shorter_than_its_index_keeps_the_index() {
        assert_eq!(message_text(98765, 1), "m98765");
        assert_eq!(index_of_text("m98765"), Some(98765));
        assert_eq!(index_of_text("hello"), None);
    }

    #[test]
    fn user_names_round_trip() {
        assert_eq!(user_number(&user_name(42)), Some(42));
        assert_eq!(user_number("bob"), None);
    }
}
