//! Which seq each participant of a fresh message takes, shared by both backends so that they
//! number every user's stream the same way.
//!
//! Every user has one gapless stream of seqs (the inbox). A fresh message takes the next seq of
//! its sender and the next seq of its recipient. A message to oneself appears once in that
//! user's stream, so it takes one seq, which stands for both. A duplicate (a resent
//! `client_msg_id`) takes no seq at all: the backends answer it with the original and never ask
//! here. Nothing in this module does I/O; where a backend reads a user's last seq from its
//! database, it passes that read in as the lookup.

use peroxo_protocol::domain::{NewMessage, StoredMessage};

/// The seqs a fresh message takes in its sender's and its recipient's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MessageSeqs {
    pub(crate) sender: u64,
    pub(crate) recipient: u64,
}

impl MessageSeqs {
    /// `message` as it is stored under `message_id` at `ts` with these seqs.
    /// The stored message, without its quote (the backend adds the quote of a reply).
    pub(crate) fn stored(self, message: &NewMessage, message_id: u64, ts: i64) -> StoredMessage {
        StoredMessage {
            message_id,
            tenant: message.tenant.clone(),
            sender: message.sender.clone(),
            recipient: message.recipient.clone(),
            client_msg_id: message.client_msg_id.clone(),
            text: message.text.clone(),
            ts,
            sender_seq: self.sender,
            recipient_seq: self.recipient,
            lifecycle: Default::default(),
        }
    }
}

/// The seqs a fresh message from `sender` to `recipient` takes, given `last_seq`, the last seq
/// each user has taken so far (0 for none).
///
/// `last_seq` is asked about the recipient only when it is another user, so a backend that
/// reads it from its database reads no more than it needs.
pub(crate) fn next_seqs<K: PartialEq + ?Sized, E>(
    sender: &K,
    recipient: &K,
    mut last_seq: impl FnMut(&K) -> Result<u64, E>,
) -> Result<MessageSeqs, E> {
    let sender_seq = last_seq(sender)? + 1;
    let recipient_seq = if recipient == sender {
        sender_seq
    } else {
        last_seq(recipient)? + 1
    };
    Ok(MessageSeqs {
        sender: sender_seq,
        recipient: recipient_seq,
    })
}

/// The entries a message with `seqs` adds to its participants' streams, as (owner, seq): the
/// sender's and the recipient's, or a single one for a message to oneself.
///
/// Both the inbox rows a backend writes and the last seqs it remembers come from these, so the
/// two never disagree.
pub(crate) fn stream_entries<'k, K: PartialEq + ?Sized>(
    sender: &'k K,
    recipient: &'k K,
    seqs: MessageSeqs,
) -> impl Iterator<Item = (&'k K, u64)> {
    let recipient_entry = (recipient != sender).then_some((recipient, seqs.recipient));
    std::iter::once((sender, seqs.sender)).chain(recipient_entry)
}

/// The (owner, seq) entries `message` holds in its participants' streams: the rows the
/// backends write to their inboxes.
pub(crate) fn inbox_entries(message: &StoredMessage) -> impl Iterator<Item = (&str, u64)> {
    let seqs = MessageSeqs {
        sender: message.sender_seq,
        recipient: message.recipient_seq,
    };
    stream_entries(message.sender.as_str(), message.recipient.as_str(), seqs)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use super::*;

    fn new_message(sender: &str, recipient: &str) -> NewMessage {
        NewMessage {
            tenant: "t".to_owned(),
            sender: sender.to_owned(),
            recipient: recipient.to_owned(),
            client_msg_id: "c1".to_owned(),
            text: "hi".to_owned(),
            reply_to: None,
        }
    }

    /// Looks seqs up in `last`, as a backend's locked or remembered counters do.
    fn next(last: &HashMap<&str, u64>, sender: &str, recipient: &str) -> MessageSeqs {
        let Ok(seqs) = next_seqs(sender, recipient, |user: &str| {
            Ok::<_, Infallible>(last.get(user).copied().unwrap_or(0))
        });
        seqs
    }

    /// Assigns seqs to `sends` in order, advancing the counters as a backend does.
    fn assign_all(sends: &[(&'static str, &'static str)]) -> Vec<(u64, u64)> {
        let mut last: HashMap<&str, u64> = HashMap::new();
        sends
            .iter()
            .map(|&(sender, recipient)| {
                let seqs = next(&last, sender, recipient);
                for (owner, seq) in stream_entries(sender, recipient, seqs) {
                    last.insert(owner, seq);
                }
                (seqs.sender, seqs.recipient)
            })
            .collect()
    }

    #[test]
    fn each_participant_takes_its_own_next_seq() {
        let last = HashMap::from([("alice", 4), ("bob", 9)]);
        assert_eq!(
            next(&last, "alice", "bob"),
            MessageSeqs {
                sender: 5,
                recipient: 10
            }
        );
    }

    #[test]
    fn a_user_never_seen_starts_at_seq_one() {
        assert_eq!(
            next(&HashMap::new(), "alice", "bob"),
            MessageSeqs {
                sender: 1,
                recipient: 1
            }
        );
    }

    #[test]
    fn a_message_to_oneself_takes_one_seq_for_both() {
        let last = HashMap::from([("alice", 4)]);
        assert_eq!(
            next(&last, "alice", "alice"),
            MessageSeqs {
                sender: 5,
                recipient: 5
            }
        );
    }

    #[test]
    fn a_message_to_oneself_never_asks_for_the_recipient() {
        let mut asked = Vec::new();
        let Ok(_) = next_seqs("alice", "alice", |user: &str| {
            asked.push(user.to_owned());
            Ok::<_, Infallible>(0)
        });
        assert_eq!(asked, ["alice"]);
    }

    #[test]
    fn a_failed_lookup_assigns_nothing() {
        let result = next_seqs("alice", "bob", |user: &str| match user {
            "alice" => Ok(1),
            _ => Err("bob's seq is unreadable"),
        });
        assert_eq!(result, Err("bob's seq is unreadable"));
    }

    /// The entries a message adds to the streams, as told by `stream_entries` and by
    /// `inbox_entries` of its stored form, which must agree.
    fn entries(sender: &str, recipient: &str, seqs: MessageSeqs) -> Vec<(String, u64)> {
        let told: Vec<(String, u64)> = stream_entries(sender, recipient, seqs)
            .map(|(owner, seq)| (owner.to_owned(), seq))
            .collect();
        let stored = seqs.stored(&new_message(sender, recipient), 1, 0);
        let rows: Vec<(String, u64)> = inbox_entries(&stored)
            .map(|(owner, seq)| (owner.to_owned(), seq))
            .collect();
        assert_eq!(told, rows, "the inbox rows and the remembered seqs agree");
        told
    }

    #[test]
    fn a_message_to_oneself_adds_one_stream_entry() {
        let seqs = MessageSeqs {
            sender: 3,
            recipient: 3,
        };
        assert_eq!(entries("alice", "alice", seqs), [("alice".to_owned(), 3)]);
    }

    #[test]
    fn a_message_to_another_user_adds_an_entry_to_each_stream() {
        let seqs = MessageSeqs {
            sender: 3,
            recipient: 7,
        };
        assert_eq!(
            entries("alice", "bob", seqs),
            [("alice".to_owned(), 3), ("bob".to_owned(), 7)]
        );
    }

    #[test]
    fn streams_stay_gapless_across_a_batch() {
        assert_eq!(
            assign_all(&[
                ("alice", "bob"),
                ("bob", "alice"),
                ("alice", "alice"),
                ("carol", "alice"),
                ("bob", "carol"),
            ]),
            [(1, 1), (2, 2), (3, 3), (1, 4), (3, 2)]
        );
    }

    #[test]
    fn stored_carries_the_seqs_and_the_message() {
        let stored = MessageSeqs {
            sender: 2,
            recipient: 5,
        }
        .stored(&new_message("alice", "bob"), 42, 1_000);
        assert_eq!(
            stored,
            StoredMessage {
                message_id: 42,
                tenant: "t".to_owned(),
                sender: "alice".to_owned(),
                recipient: "bob".to_owned(),
                client_msg_id: "c1".to_owned(),
                text: "hi".to_owned(),
                ts: 1_000,
                sender_seq: 2,
                recipient_seq: 5,
                lifecycle: Default::default(),
            }
        );
    }
}
