//! What became of each message (protocol 3), replayed from a user's stream alone: the message
//! as the stream delivered it, then every `message_edited`, `message_deleted`,
//! `reaction_added` and `reaction_removed` after it, in seq order.
//!
//! A copy of a message read through `sync` shows it as it is when read, so it may already
//! carry changes whose events follow it. Texts and deletions replay the same either way (an
//! edit's event states the current text, a delete is a delete). Reaction counts do not: a copy
//! may count a reaction whose `reaction_added` follows it. So the replay takes a message's
//! text and its edited and deleted marks from its copy, and its reactions from the events
//! alone (each names its actor and emoji), starting from none: the events after a message are
//! every reaction ever made to it.

use std::collections::{BTreeMap, BTreeSet};

/// A change of a message, as an event of the stream states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageChange<'a> {
    /// `message_edited`: the text is now `text`.
    Edited { text: &'a str },
    /// `message_deleted`: the text is gone, and every reaction with it.
    Deleted,
    /// `reaction_added`: `actor` reacted with `emoji`.
    ReactionAdded { actor: &'a str, emoji: &'a str },
    /// `reaction_removed`: `actor` took `emoji` back.
    ReactionRemoved { actor: &'a str, emoji: &'a str },
}

/// What every copy of a message must agree on in the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayedMessage {
    pub text: String,
    pub edited: bool,
    pub deleted: bool,
    /// How many users reacted with each emoji (emojis with none left out).
    pub reactions: BTreeMap<String, u32>,
}

/// One message as the replay holds it.
#[derive(Debug, Default)]
struct Replaying {
    text: String,
    edited: bool,
    deleted: bool,
    /// (emoji, actor) of every reaction made and not taken back.
    reactions: BTreeSet<(String, String)>,
}

/// Every message of a user's stream, by conversation and message id, with the changes after
/// it applied in the order they are given (the stream's seq order).
#[derive(Debug, Default)]
pub struct MessageReplay {
    conversations: BTreeMap<String, BTreeMap<u64, Replaying>>,
    /// Changes of messages the stream did not show before them, described.
    orphans: Vec<String>,
}

impl MessageReplay {
    /// A message of the stream, as its copy says: its text, and whether it was edited and
    /// deleted already.
    pub fn message(
        &mut self,
        conversation: &str,
        message_id: u64,
        text: &str,
        edited: bool,
        deleted: bool,
    ) {
        self.conversations
            .entry(conversation.to_owned())
            .or_default()
            .insert(
                message_id,
                Replaying {
                    text: text.to_owned(),
                    edited,
                    deleted,
                    reactions: BTreeSet::new(),
                },
            );
    }

    /// An event changing a message of `conversation`.
    pub fn change(&mut self, conversation: &str, message_id: u64, change: MessageChange<'_>) {
        let Some(message) = self
            .conversations
            .get_mut(conversation)
            .and_then(|messages| messages.get_mut(&message_id))
        else {
            self.orphans.push(format!(
                "{change:?} of message {message_id} of {conversation}, which the stream did not show before"
            ));
            return;
        };
        match change {
            MessageChange::Edited { text } => {
                message.text = text.to_owned();
                message.edited = true;
            }
            MessageChange::Deleted => {
                message.text.clear();
                message.deleted = true;
                message.reactions.clear();
            }
            MessageChange::ReactionAdded { actor, emoji } => {
                message
                    .reactions
                    .insert((emoji.to_owned(), actor.to_owned()));
            }
            MessageChange::ReactionRemoved { actor, emoji } => {
                message
                    .reactions
                    .remove(&(emoji.to_owned(), actor.to_owned()));
            }
        }
    }

    /// The user left the group `conversation`: its messages are no longer the user's to see
    /// (a later join starts afresh, from the join).
    pub fn left(&mut self, conversation: &str) {
        self.conversations.remove(conversation);
    }

    /// Every message of every conversation, as replayed: by conversation, then message id.
    pub fn states(&self) -> BTreeMap<&str, BTreeMap<u64, ReplayedMessage>> {
        self.conversations
            .iter()
            .map(|(conversation, messages)| {
                let states = messages
                    .iter()
                    .map(|(id, message)| (*id, message.state()))
                    .collect();
                (conversation.as_str(), states)
            })
            .collect()
    }

    /// Changes of messages the stream did not show before them (a correct server never
    /// sends one), described.
    pub fn orphans(&self) -> &[String] {
        &self.orphans
    }

    /// How many messages the replay holds.
    pub fn len(&self) -> usize {
        self.conversations.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the replay disagrees with `expected`, every message's final state by id (what
    /// the database holds): each replayed message in another state, or one `expected` lacks,
    /// described.
    pub fn disagreements(&self, expected: &BTreeMap<u64, ReplayedMessage>) -> Vec<String> {
        let mut found = Vec::new();
        for (conversation, messages) in self.states() {
            for (id, state) in messages {
                match expected.get(&id) {
                    Some(final_state) if *final_state == state => {}
                    Some(final_state) => found.push(format!(
                        "message {id} of {conversation} replays as {state:?}, not {final_state:?}"
                    )),
                    None => found.push(format!(
                        "message {id} of {conversation} is not among the messages expected"
                    )),
                }
            }
        }
        found
    }
}

impl Replaying {
    fn state(&self) -> ReplayedMessage {
        let mut reactions = BTreeMap::new();
        for (emoji, _) in &self.reactions {
            *reactions.entry(emoji.clone()).or_default() += 1;
        }
        ReplayedMessage {
            text: self.text.clone(),
            edited: self.edited,
            deleted: self.deleted,
            reactions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replayed(replay: &MessageReplay, conversation: &str, id: u64) -> ReplayedMessage {
        replay.states()[conversation][&id].clone()
    }

    fn reactions(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(e, n)| ((*e).to_owned(), *n)).collect()
    }

    #[test]
    fn edits_and_reactions_apply_in_order_and_a_delete_clears_both() {
        let mut replay = MessageReplay::default();
        replay.message("a:b", 7, "hi", false, false);
        replay.change("a:b", 7, MessageChange::Edited { text: "hi!" });
        let add = |actor, emoji| MessageChange::ReactionAdded { actor, emoji };
        replay.change("a:b", 7, add("a", "👍"));
        replay.change("a:b", 7, add("b", "👍"));
        replay.change("a:b", 7, add("b", "🎉"));
        // Reacting twice with one emoji is one reaction; taking back one never made is none.
        replay.change("a:b", 7, add("b", "👍"));
        let remove = |actor, emoji| MessageChange::ReactionRemoved { actor, emoji };
        replay.change("a:b", 7, remove("a", "🎉"));
        replay.change("a:b", 7, remove("b", "🎉"));
        let expected = ReplayedMessage {
            text: "hi!".into(),
            edited: true,
            deleted: false,
            reactions: reactions(&[("👍", 2)]),
        };
        assert_eq!(replayed(&replay, "a:b", 7), expected);
        replay.change("a:b", 7, MessageChange::Deleted);
        let gone = replayed(&replay, "a:b", 7);
        assert!(gone.deleted && gone.text.is_empty() && gone.reactions.is_empty());
        assert!(replay.orphans().is_empty());
    }

    #[test]
    fn a_copy_read_after_its_changes_replays_to_the_same_state() {
        // One user got the message live and every change after it; another synced late and
        // got the edited copy, then the same events.
        let events = [
            MessageChange::Edited { text: "v2" },
            MessageChange::ReactionAdded {
                actor: "c",
                emoji: "👍",
            },
        ];
        let mut live = MessageReplay::default();
        live.message("g~1", 3, "v1", false, false);
        let mut late = MessageReplay::default();
        late.message("g~1", 3, "v2", true, false);
        for event in events {
            live.change("g~1", 3, event);
            late.change("g~1", 3, event);
        }
        assert_eq!(live.states(), late.states());
    }

    /// The final states of messages 1 (edited, one reaction left) and 2 (deleted).
    fn expected() -> BTreeMap<u64, ReplayedMessage> {
        let edited = ReplayedMessage {
            text: "x2".into(),
            edited: true,
            deleted: false,
            reactions: reactions(&[("🎉", 1)]),
        };
        let deleted = ReplayedMessage {
            deleted: true,
            ..ReplayedMessage::default()
        };
        BTreeMap::from([(1, edited), (2, deleted)])
    }

    /// The stream that leads to [`expected`], or, `lossy`, the same stream without its
    /// `reaction_removed` and its `message_deleted`.
    fn replay_stream(lossy: bool) -> MessageReplay {
        let mut replay = MessageReplay::default();
        replay.message("a:b", 1, "x", false, false);
        replay.message("a:b", 2, "y", false, false);
        replay.change("a:b", 1, MessageChange::Edited { text: "x2" });
        for emoji in ["👍", "🎉"] {
            let add = MessageChange::ReactionAdded { actor: "b", emoji };
            replay.change("a:b", 1, add);
        }
        let add = MessageChange::ReactionAdded {
            actor: "a",
            emoji: "👍",
        };
        replay.change("a:b", 2, add);
        if !lossy {
            let remove = MessageChange::ReactionRemoved {
                actor: "b",
                emoji: "👍",
            };
            replay.change("a:b", 1, remove);
            replay.change("a:b", 2, MessageChange::Deleted);
        }
        replay
    }

    #[test]
    fn a_whole_stream_agrees_with_the_final_states() {
        let replay = replay_stream(false);
        assert_eq!(replay.len(), 2);
        assert_eq!(replay.disagreements(&expected()), Vec::<String>::new());
    }

    #[test]
    fn a_stream_that_lost_changes_is_caught_message_by_message() {
        // A replay of a stream missing a reaction taken back and a delete must not pass for
        // the final state: both messages are named.
        let found = replay_stream(true).disagreements(&expected());
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("message 1 of a:b"), "{found:?}");
        assert!(found[1].starts_with("message 2 of a:b"), "{found:?}");
        // So is a message the final states lack.
        let mut fewer = expected();
        fewer.remove(&2);
        assert_eq!(replay_stream(false).disagreements(&fewer).len(), 1);
    }

    #[test]
    fn a_change_of_a_message_never_shown_is_named_and_leaving_forgets_a_group() {
        let mut replay = MessageReplay::default();
        replay.change("g~1", 9, MessageChange::Deleted);
        assert_eq!(replay.orphans().len(), 1);
        replay.message("g~1", 9, "x", false, false);
        replay.left("g~1");
        assert!(replay.states().is_empty());
    }
}
