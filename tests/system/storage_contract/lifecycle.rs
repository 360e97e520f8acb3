//! What happens to a message after it is sent (protocol 3): edits, deletes for everyone,
//! reactions and replies, each an event in the stream of everyone who can see the message,
//! and what they change of history, sync, unread counts and previews.

use super::retention::{a_day_after, one_day};
use super::*;

use peroxo_protocol::domain::{Deletion, Quote, ReactionCount};
use peroxo_protocol::lifecycle::{MessageChange, MessageLimits, MessageOp, MessageOutcome};

contract!(
    an_edit_by_its_author_reaches_both_participants_with_the_text_as_it_is_now,
    a_group_edit_reaches_the_members_who_can_see_the_message,
    a_resent_edit_is_answered_as_a_duplicate_without_an_event,
    edits_are_for_the_author_within_the_window_while_not_deleted,
    deletes_are_for_the_author_or_a_group_manager_and_happen_once,
    a_delete_leaves_a_tombstone_without_text_or_reactions,
    a_delete_lowers_the_unread_count_of_those_who_had_it_unread,
    a_deleted_preview_falls_back_to_the_newest_earlier_message,
    reactions_toggle_and_each_viewer_sees_the_counts_and_its_own,
    reactions_are_limited_per_message_and_per_user,
    deleted_messages_take_no_reactions,
    a_reply_quotes_its_message_as_it_is_now,
    replies_name_a_visible_message_of_their_conversation_that_is_not_deleted,
    a_resent_reply_is_the_original_even_after_its_message_was_deleted,
    a_protocol_2_sync_leaves_message_changes_out,
    retention_prunes_messages_with_their_reactions,
);

/// The limits most cases change messages under.
pub(super) const LIMITS: MessageLimits = MessageLimits {
    edit_window_ms: 600_000,
    max_reactions_per_message: 3,
    max_reactions_per_user: 2,
};

/// `actor` (tenant `t`) makes `op` to message `message_id` of `conversation` under `limits`.
async fn change_under(
    f: &Fixture,
    limits: MessageLimits,
    actor: &str,
    conversation: &str,
    message_id: u64,
    op: MessageOp,
) -> Result<MessageOutcome, CallError> {
    f.client
        .change_message(MessageChange {
            actor: key(T, actor),
            conversation_id: conversation.to_owned(),
            message_id,
            op,
            limits,
        })
        .await
}

/// `actor` makes `op` to message `message_id` of `conversation` under [`LIMITS`].
async fn change_message(
    f: &Fixture,
    actor: &str,
    conversation: &str,
    message_id: u64,
    op: MessageOp,
) -> Result<MessageOutcome, CallError> {
    change_under(f, LIMITS, actor, conversation, message_id, op).await
}

/// An edit to `text` under a fresh `client_msg_id`.
fn edit(text: &str) -> MessageOp {
    MessageOp::Edit {
        text: text.to_owned(),
        client_msg_id: fresh_id("edit"),
    }
}

fn react(emoji: &str) -> MessageOp {
    MessageOp::React {
        emoji: emoji.to_owned(),
    }
}

fn unreact(emoji: &str) -> MessageOp {
    MessageOp::Unreact {
        emoji: emoji.to_owned(),
    }
}

/// The event a change made.
fn made(outcome: &MessageOutcome) -> &Fanout {
    assert!(!outcome.duplicate, "{outcome:?}");
    outcome.event.as_ref().expect("the change made an event")
}

/// Checks that a change changed nothing and made no event.
fn assert_unchanged(outcome: &MessageOutcome) {
    assert!(!outcome.duplicate, "{outcome:?}");
    assert!(outcome.event.is_none(), "{outcome:?}");
}

/// A message from `from` to `to` (tenant `t`) under a fresh `client_msg_id`.
fn message(from: &str, to: &str, text: &str, reply_to: Option<u64>) -> NewMessage {
    NewMessage {
        text: text.to_owned(),
        reply_to,
        ..msg(T, from, to, &fresh_id("m"))
    }
}

/// Appends one message and returns its outcome.
async fn append_one(f: &Fixture, message: NewMessage) -> AppendOutcome {
    f.client.append(vec![message]).await.unwrap().pop().unwrap()
}

/// Sends `text` from `from` to `to`, replying to `reply_to`, and returns it as stored.
async fn send_reply(f: &Fixture, from: &str, to: &str, reply_to: u64, text: &str) -> StoredMessage {
    let outcome = append_one(f, message(from, to, text, Some(reply_to))).await;
    stored(&outcome).0.clone()
}

/// Message `id` as `user`'s history of `conversation` shows it.
async fn in_history(f: &Fixture, user: &str, conversation: &str, id: u64) -> StoredMessage {
    history(f, user, conversation, None, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.message_id == id)
        .unwrap_or_else(|| panic!("{user}'s history of {conversation} lacks message {id}"))
}

/// Message `id` as `user`'s stream shows it.
async fn in_stream(f: &Fixture, user: &str, id: u64) -> StoredMessage {
    stream_model::read_stream(&f.client, &key(T, user))
        .await
        .messages()
        .into_iter()
        .find(|m| m.message_id == id)
        .unwrap_or_else(|| panic!("{user}'s stream lacks message {id}"))
}

/// Checks that `user` sees message `id` of `conversation` alike in history and in sync, and
/// returns it.
async fn seen_by(f: &Fixture, user: &str, conversation: &str, id: u64) -> StoredMessage {
    let seen = in_history(f, user, conversation, id).await;
    assert_eq!(
        seen,
        in_stream(f, user, id).await,
        "{user}: history and sync"
    );
    seen
}

fn count(emoji: &str, count: u32, mine: bool) -> ReactionCount {
    ReactionCount {
        emoji: emoji.to_owned(),
        count,
        mine,
    }
}

/// Checks the reactions alice and bob see on message `id` of `alice:bob`, in history and
/// sync.
async fn assert_reactions(f: &Fixture, id: u64, alices: &[ReactionCount], bobs: &[ReactionCount]) {
    for (user, expected) in [("alice", alices), ("bob", bobs)] {
        let seen = seen_by(f, user, "alice:bob", id).await;
        assert_eq!(seen.lifecycle.reactions, expected, "{user}");
    }
}

/// The id of the message `user`'s conversation list shows as the preview of `conversation`.
async fn preview(f: &Fixture, user: &str, conversation: &str) -> Option<u64> {
    entry(&list(f, user).await, conversation)
        .last_message
        .as_ref()
        .map(|m| m.message_id)
}

async fn unread_of(f: &Fixture, user: &str, conversation: &str) -> u64 {
    entry(&list(f, user).await, conversation).unread_count
}

async fn an_edit_by_its_author_reaches_both_participants_with_the_text_as_it_is_now(f: &Fixture) {
    let m = send(f, "alice", "bob").await;
    let id = m.message_id;
    let outcome = change_message(f, "alice", "alice:bob", id, edit(&"é".repeat(50)))
        .await
        .unwrap();
    let fanout = made(&outcome);
    let kind = EventKind::MessageEdited {
        message_id: id,
        text: "é".repeat(50),
    };
    assert_fanout(f, fanout, "alice", kind, &["alice", "bob"]).await;
    assert_eq!(outcome.message.text, "é".repeat(50));
    assert_eq!(outcome.message.lifecycle.edited_ts, Some(fanout.event.ts));
    assert_eq!(
        outcome.message,
        seen_by(f, "alice", "alice:bob", id).await,
        "the outcome is the message as its actor sees it"
    );
    let again = change_message(f, "alice", "alice:bob", id, edit("again"))
        .await
        .unwrap();
    let ts = made(&again).event.ts;
    for user in ["alice", "bob"] {
        let seen = seen_by(f, user, "alice:bob", id).await;
        assert_eq!(
            (seen.text.as_str(), seen.lifecycle.edited_ts),
            ("again", Some(ts))
        );
        let edits: Vec<EventKind> = events_of(f, user)
            .await
            .into_iter()
            .map(|e| e.event.kind)
            .collect();
        let now = EventKind::MessageEdited {
            message_id: id,
            text: "again".into(),
        };
        assert_eq!(
            edits,
            [now.clone(), now],
            "{user}: every edit event tells the text as it is now"
        );
    }
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn a_group_edit_reaches_the_members_who_can_see_the_message(f: &Fixture) {
    let group = new_group(f, "alice", &["bob", "carol"]).await;
    let g1 = send(f, "alice", &group).await;
    add_members(f, "alice", &group, &["dave"]).await;
    change(f, "carol", &group, GroupOp::Leave).await.unwrap();
    let outcome = change_message(f, "alice", &group, g1.message_id, edit("fixed"))
        .await
        .unwrap();
    let kind = EventKind::MessageEdited {
        message_id: g1.message_id,
        text: "fixed".into(),
    };
    assert_fanout(f, made(&outcome), "alice", kind, &["alice", "bob"]).await;
    assert_eq!(
        outcome.message,
        seen_by(f, "alice", &group, g1.message_id).await,
        "the outcome carries the actor's seq, as history does"
    );
    assert_eq!(seen_by(f, "bob", &group, g1.message_id).await.text, "fixed");
    assert_refused(
        change_message(f, "dave", &group, g1.message_id, react("👍")).await,
        RefusalCode::UnknownMessage,
        &g1.message_id.to_string(),
    );
    assert_refused(
        change_message(f, "carol", &group, g1.message_id, react("👍")).await,
        RefusalCode::NotAMember,
        "",
    );
    let g2 = send(f, "dave", &group).await;
    let outcome = change_message(f, "dave", &group, g2.message_id, edit("later"))
        .await
        .unwrap();
    assert_eq!(reached(made(&outcome)), ["alice", "bob", "dave"]);
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol", "dave"]).await;
}

async fn a_resent_edit_is_answered_as_a_duplicate_without_an_event(f: &Fixture) {
    let m = send(f, "alice", "bob").await;
    let id = m.message_id;
    let op = edit("fixed");
    let first = change_message(f, "alice", "alice:bob", id, op.clone())
        .await
        .unwrap();
    made(&first);
    let bobs_seq = f.client.last_seq(key(T, "bob")).await.unwrap();
    let again = change_message(f, "alice", "alice:bob", id, op.clone())
        .await
        .unwrap();
    assert!(again.duplicate && again.event.is_none(), "{again:?}");
    assert_eq!(again.message, first.message);
    let MessageOp::Edit { client_msg_id, .. } = op else {
        unreachable!()
    };
    let other_text = MessageOp::Edit {
        text: "other".into(),
        client_msg_id: client_msg_id.clone(),
    };
    let other = change_message(f, "alice", "alice:bob", id, other_text.clone())
        .await
        .unwrap();
    assert!(other.duplicate, "the key decides, not the text");
    assert_eq!(other.message.text, "fixed");
    let same_text = change_message(f, "alice", "alice:bob", id, edit("fixed"))
        .await
        .unwrap();
    assert_unchanged(&same_text);
    assert_eq!(f.client.last_seq(key(T, "bob")).await.unwrap(), bobs_seq);
    change_message(f, "alice", "alice:bob", id, MessageOp::Delete)
        .await
        .unwrap();
    let after_delete = change_message(f, "alice", "alice:bob", id, other_text)
        .await
        .unwrap();
    assert!(
        after_delete.duplicate && after_delete.message.is_deleted(),
        "a resend is answered even after a delete: {after_delete:?}"
    );
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn edits_are_for_the_author_within_the_window_while_not_deleted(f: &Fixture) {
    let m = send(f, "alice", "bob").await;
    let id = m.message_id;
    assert_refused(
        change_message(f, "bob", "alice:bob", id, edit("mine now")).await,
        RefusalCode::NotAuthor,
        &id.to_string(),
    );
    let tiny = MessageLimits {
        edit_window_ms: 1,
        ..LIMITS
    };
    wait_past(m.ts + 1).await;
    assert_refused(
        change_under(f, tiny, "alice", "alice:bob", id, edit("late")).await,
        RefusalCode::EditWindowPassed,
        &id.to_string(),
    );
    let forever = MessageLimits {
        edit_window_ms: 0,
        ..LIMITS
    };
    let fine = change_under(f, forever, "alice", "alice:bob", id, edit("fine"))
        .await
        .unwrap();
    made(&fine);
    change_message(f, "alice", "alice:bob", id, MessageOp::Delete)
        .await
        .unwrap();
    assert_refused(
        change_message(f, "alice", "alice:bob", id, edit("back")).await,
        RefusalCode::MessageDeleted,
        &id.to_string(),
    );
    let elsewhere = send(f, "alice", "carol").await;
    for wrong in [elsewhere.message_id, 999_999_999] {
        assert_refused(
            change_message(f, "alice", "alice:bob", wrong, edit("x")).await,
            RefusalCode::UnknownMessage,
            &wrong.to_string(),
        );
    }
    assert_bad_request(
        change_message(f, "alice", "alice:bob", id, edit("")).await,
        "text",
    );
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn deletes_are_for_the_author_or_a_group_manager_and_happen_once(f: &Fixture) {
    let group = new_group(f, "alice", &["bob", "carol"]).await;
    set_role(f, "alice", &group, "bob", Role::Admin).await;
    let a1 = send(f, "alice", &group).await;
    let c1 = send(f, "carol", &group).await;
    let c2 = send(f, "carol", &group).await;
    assert_refused(
        change_message(f, "carol", &group, a1.message_id, MessageOp::Delete).await,
        RefusalCode::NotAuthor,
        &a1.message_id.to_string(),
    );
    let moderated = change_message(f, "bob", &group, c1.message_id, MessageOp::Delete)
        .await
        .unwrap();
    let fanout = made(&moderated);
    let kind = EventKind::MessageDeleted {
        message_id: c1.message_id,
        moderated: true,
    };
    assert_fanout(f, fanout, "bob", kind, &["alice", "bob", "carol"]).await;
    let deletion = Box::new(Deletion {
        by: "bob".into(),
        ts: fanout.event.ts,
    });
    assert_eq!(
        moderated.message.lifecycle.deleted.as_ref(),
        Some(&deletion)
    );
    let own = change_message(f, "carol", &group, c2.message_id, MessageOp::Delete)
        .await
        .unwrap();
    assert_eq!(
        made(&own).event.kind,
        EventKind::MessageDeleted {
            message_id: c2.message_id,
            moderated: false
        }
    );
    let seqs_before = f.client.last_seq(key(T, "alice")).await.unwrap();
    let again = change_message(f, "alice", &group, c2.message_id, MessageOp::Delete)
        .await
        .unwrap();
    assert_unchanged(&again);
    assert_eq!(
        again.message.lifecycle.deleted,
        own.message.lifecycle.deleted
    );
    assert_eq!(
        f.client.last_seq(key(T, "alice")).await.unwrap(),
        seqs_before
    );
    let dm = send(f, "alice", "bob").await;
    assert_refused(
        change_message(f, "bob", "alice:bob", dm.message_id, MessageOp::Delete).await,
        RefusalCode::NotAuthor,
        "",
    );
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn a_delete_leaves_a_tombstone_without_text_or_reactions(f: &Fixture) {
    let m = send(f, "alice", "bob").await;
    let id = m.message_id;
    change_message(f, "alice", "alice:bob", id, edit("edited"))
        .await
        .unwrap();
    change_message(f, "bob", "alice:bob", id, react("👍"))
        .await
        .unwrap();
    let outcome = change_message(f, "alice", "alice:bob", id, MessageOp::Delete)
        .await
        .unwrap();
    let deletion = Box::new(Deletion {
        by: "alice".into(),
        ts: made(&outcome).event.ts,
    });
    for user in ["alice", "bob"] {
        let seen = seen_by(f, user, "alice:bob", id).await;
        assert_eq!(seen.text, "", "{user}");
        assert_eq!(seen.lifecycle.deleted.as_ref(), Some(&deletion), "{user}");
        assert!(seen.lifecycle.reactions.is_empty(), "{user}");
        assert!(seen.is_deleted() && !seen.is_erased(), "{user}");
        let edited = EventKind::MessageEdited {
            message_id: id,
            text: String::new(),
        };
        assert!(
            events_of(f, user)
                .await
                .iter()
                .any(|e| e.event.kind == edited),
            "{user}: the edit event no longer tells the erased text"
        );
    }
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn a_delete_lowers_the_unread_count_of_those_who_had_it_unread(f: &Fixture) {
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push(send(f, "alice", "bob").await.message_id);
    }
    mark(f, "bob", "alice:bob", read_up_to(sent[0]))
        .await
        .unwrap();
    assert_eq!(unread_of(f, "bob", "alice:bob").await, 2);
    change_message(f, "alice", "alice:bob", sent[1], MessageOp::Delete)
        .await
        .unwrap();
    assert_eq!(unread_of(f, "bob", "alice:bob").await, 1);
    assert_eq!(unread_of(f, "alice", "alice:bob").await, 0);
    change_message(f, "alice", "alice:bob", sent[0], MessageOp::Delete)
        .await
        .unwrap();
    assert_eq!(
        unread_of(f, "bob", "alice:bob").await,
        1,
        "a message read before is not unread"
    );
    let group = new_group(f, "alice", &["bob", "carol"]).await;
    let g1 = send(f, "alice", &group).await;
    let g2 = send(f, "alice", &group).await;
    mark(f, "carol", &group, read_up_to(g2.message_id))
        .await
        .unwrap();
    change_message(f, "alice", &group, g1.message_id, MessageOp::Delete)
        .await
        .unwrap();
    assert_eq!(unread_of(f, "bob", &group).await, 1);
    assert_eq!(unread_of(f, "carol", &group).await, 0);
    assert_eq!(list(f, "bob").await.total_unread, 2);
    // Marking unread without a message takes the newest message from others not deleted.
    let outcome = mark(
        f,
        "bob",
        "alice:bob",
        ReadMarkKind::Unread { message_id: None },
    )
    .await
    .unwrap();
    assert_eq!(outcome.unread_count, 1);
    change_message(f, "alice", "alice:bob", sent[2], MessageOp::Delete)
        .await
        .unwrap();
    assert_eq!(unread_of(f, "bob", "alice:bob").await, 0);
    assert_refused(
        mark(
            f,
            "bob",
            "alice:bob",
            ReadMarkKind::Unread { message_id: None },
        )
        .await,
        RefusalCode::UnknownMessage,
        "",
    );
    let read = mark(f, "bob", "alice:bob", read_up_to(sent[2]))
        .await
        .unwrap();
    assert_eq!(read.unread_count, 0);
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn a_deleted_preview_falls_back_to_the_newest_earlier_message(f: &Fixture) {
    let m1 = send(f, "alice", "bob").await.message_id;
    let m2 = send(f, "bob", "alice").await.message_id;
    let m3 = send(f, "alice", "bob").await.message_id;
    change_message(f, "bob", "alice:bob", m2, MessageOp::Delete)
        .await
        .unwrap();
    assert_eq!(preview(f, "alice", "alice:bob").await, Some(m3));
    change_message(f, "alice", "alice:bob", m3, MessageOp::Delete)
        .await
        .unwrap();
    for user in ["alice", "bob"] {
        assert_eq!(
            preview(f, user, "alice:bob").await,
            Some(m1),
            "{user}: deleted messages are passed over"
        );
    }
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
    change_message(f, "alice", "alice:bob", m1, MessageOp::Delete)
        .await
        .unwrap();
    for user in ["alice", "bob"] {
        assert_eq!(preview(f, user, "alice:bob").await, None, "{user}");
    }
    let group = new_group(f, "alice", &["bob", "carol"]).await;
    let g1 = send(f, "alice", &group).await;
    let g2 = send(f, "bob", &group).await;
    change_message(f, "bob", &group, g2.message_id, MessageOp::Delete)
        .await
        .unwrap();
    assert_eq!(preview(f, "carol", &group).await, Some(g1.message_id));
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn reactions_toggle_and_each_viewer_sees_the_counts_and_its_own(f: &Fixture) {
    let m = send(f, "alice", "bob").await;
    let id = m.message_id;
    let first = change_message(f, "bob", "alice:bob", id, react("👍"))
        .await
        .unwrap();
    let kind = EventKind::ReactionAdded {
        message_id: id,
        emoji: "👍".into(),
    };
    assert_fanout(f, made(&first), "bob", kind, &["alice", "bob"]).await;
    assert_eq!(first.message.lifecycle.reactions, [count("👍", 1, true)]);
    assert_unchanged(
        &change_message(f, "bob", "alice:bob", id, react("👍"))
            .await
            .unwrap(),
    );
    wait_past(made(&first).event.ts).await;
    let party = change_message(f, "alice", "alice:bob", id, react("🎉"))
        .await
        .unwrap();
    wait_past(made(&party).event.ts).await;
    change_message(f, "alice", "alice:bob", id, react("👍"))
        .await
        .unwrap();
    let alices = [count("👍", 2, true), count("🎉", 1, true)];
    let bobs = [count("👍", 2, true), count("🎉", 1, false)];
    assert_reactions(f, id, &alices, &bobs).await;
    let taken_back = change_message(f, "bob", "alice:bob", id, unreact("👍"))
        .await
        .unwrap();
    let kind = EventKind::ReactionRemoved {
        message_id: id,
        emoji: "👍".into(),
    };
    assert_fanout(f, made(&taken_back), "bob", kind, &["alice", "bob"]).await;
    for op in [unreact("👍"), unreact("🔥")] {
        assert_unchanged(&change_message(f, "bob", "alice:bob", id, op).await.unwrap());
    }
    // 👍 first reached the message again when alice reacted with it, after 🎉.
    let alices = [count("🎉", 1, true), count("👍", 1, true)];
    let bobs = [count("🎉", 1, false), count("👍", 1, false)];
    assert_reactions(f, id, &alices, &bobs).await;
    let bobs_preview = entry(&list(f, "bob").await, "alice:bob")
        .last_message
        .clone();
    assert_eq!(bobs_preview.unwrap().lifecycle.reactions, bobs);
    assert_bad_request(
        change_message(f, "bob", "alice:bob", id, react("a b")).await,
        "emoji",
    );
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn reactions_are_limited_per_message_and_per_user(f: &Fixture) {
    let group = new_group(f, "alice", &["bob", "carol"]).await;
    let id = send(f, "alice", &group).await.message_id;
    for emoji in [":a:", ":b:"] {
        made(
            &change_message(f, "alice", &group, id, react(emoji))
                .await
                .unwrap(),
        );
    }
    assert_refused(
        change_message(f, "alice", &group, id, react(":c:")).await,
        RefusalCode::TooManyReactions,
        "2",
    );
    made(
        &change_message(f, "bob", &group, id, react(":c:"))
            .await
            .unwrap(),
    );
    assert_refused(
        change_message(f, "carol", &group, id, react(":d:")).await,
        RefusalCode::TooManyReactions,
        "3",
    );
    let joining = change_message(f, "carol", &group, id, react(":a:"))
        .await
        .unwrap();
    assert_eq!(
        joining.message.lifecycle.reactions[0],
        count(":a:", 2, true),
        "an emoji already there may always be added to"
    );
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn deleted_messages_take_no_reactions(f: &Fixture) {
    let id = send(f, "alice", "bob").await.message_id;
    change_message(f, "bob", "alice:bob", id, react("👍"))
        .await
        .unwrap();
    change_message(f, "alice", "alice:bob", id, MessageOp::Delete)
        .await
        .unwrap();
    for op in [react("🎉"), unreact("👍")] {
        assert_refused(
            change_message(f, "bob", "alice:bob", id, op).await,
            RefusalCode::MessageDeleted,
            &id.to_string(),
        );
    }
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn a_reply_quotes_its_message_as_it_is_now(f: &Fixture) {
    let long = format!("{}{}", "ü".repeat(60), "😀".repeat(60));
    let original = stored(&append_one(f, message("alice", "bob", &long, None)).await)
        .0
        .clone();
    let id = original.message_id;
    let reply = send_reply(f, "bob", "alice", id, "agreed").await;
    let quote = |excerpt: &str, deleted: bool| {
        Some(Box::new(Quote {
            message_id: id,
            sender: "alice".into(),
            excerpt: excerpt.to_owned(),
            deleted,
        }))
    };
    let excerpt = format!("{}{}", "ü".repeat(60), "😀".repeat(40));
    assert_eq!(reply.lifecycle.reply_to, quote(&excerpt, false));
    for user in ["alice", "bob"] {
        let seen = seen_by(f, user, "alice:bob", reply.message_id).await;
        assert_eq!(seen.lifecycle.reply_to, quote(&excerpt, false), "{user}");
    }
    change_message(f, "alice", "alice:bob", id, edit("short now"))
        .await
        .unwrap();
    let seen = seen_by(f, "alice", "alice:bob", reply.message_id).await;
    assert_eq!(seen.lifecycle.reply_to, quote("short now", false));
    change_message(f, "alice", "alice:bob", id, MessageOp::Delete)
        .await
        .unwrap();
    for user in ["alice", "bob"] {
        let seen = seen_by(f, user, "alice:bob", reply.message_id).await;
        assert_eq!(seen.lifecycle.reply_to, quote("", true), "{user}");
    }
    let group = new_group(f, "alice", &["bob"]).await;
    let g1 = send(f, "alice", &group).await;
    let in_group = send_reply(f, "bob", &group, g1.message_id, "yes").await;
    let seen = seen_by(f, "alice", &group, in_group.message_id).await;
    assert_eq!(
        seen.lifecycle.reply_to.map(|q| (q.message_id, q.excerpt)),
        Some((g1.message_id, g1.text.clone()))
    );
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn replies_name_a_visible_message_of_their_conversation_that_is_not_deleted(f: &Fixture) {
    let elsewhere = send(f, "alice", "carol").await.message_id;
    let gone = send(f, "alice", "bob").await.message_id;
    change_message(f, "alice", "alice:bob", gone, MessageOp::Delete)
        .await
        .unwrap();
    let group = new_group(f, "alice", &["bob"]).await;
    let g1 = send(f, "alice", &group).await.message_id;
    add_members(f, "alice", &group, &["dave"]).await;
    let bobs_seq = f.client.last_seq(key(T, "bob")).await.unwrap();
    for (from, to, reply_to, code) in [
        ("bob", "alice", elsewhere, RefusalCode::UnknownMessage),
        ("bob", "alice", 999_999_999, RefusalCode::UnknownMessage),
        ("bob", "alice", g1, RefusalCode::UnknownMessage),
        ("bob", "alice", gone, RefusalCode::MessageDeleted),
        ("dave", group.as_str(), g1, RefusalCode::UnknownMessage),
        (
            "bob",
            group.as_str(),
            elsewhere,
            RefusalCode::UnknownMessage,
        ),
    ] {
        let outcome = append_one(f, message(from, to, "re", Some(reply_to))).await;
        let refusal = rejection(&outcome);
        assert_eq!(refusal.code, code, "{from} to {to} replying to {reply_to}");
        assert!(refusal.message.contains(&reply_to.to_string()), "{refusal}");
    }
    assert_eq!(
        f.client.last_seq(key(T, "bob")).await.unwrap(),
        bobs_seq,
        "a refused reply takes no seq"
    );
    let fine = send_reply(f, "bob", &group, g1, "fine").await;
    assert_eq!(fine.lifecycle.reply_to.map(|q| q.message_id), Some(g1));
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol", "dave"]).await;
}

async fn a_resent_reply_is_the_original_even_after_its_message_was_deleted(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    // (conversation, alice's message to, bob's reply to)
    for (conversation, to_bob, to_alice) in [
        ("alice:bob", "bob", "alice"),
        (group.as_str(), group.as_str(), group.as_str()),
    ] {
        let id = send(f, "alice", to_bob).await.message_id;
        let reply = message("bob", to_alice, "re", Some(id));
        let first = append_one(f, reply.clone()).await;
        let (original, _) = stored(&first);
        change_message(f, "alice", conversation, original.message_id, react("👍"))
            .await
            .unwrap();
        change_message(f, "alice", conversation, id, MessageOp::Delete)
            .await
            .unwrap();
        let again = append_one(f, reply).await;
        let (resent, duplicate) = stored(&again);
        assert!(duplicate, "{conversation}: {again:?}");
        assert_eq!(resent.message_id, original.message_id, "{conversation}");
        assert_eq!(
            resent.lifecycle.reply_to.as_ref().map(|q| q.deleted),
            Some(true),
            "{conversation}: the original as it is now"
        );
        assert_eq!(
            resent.lifecycle.reactions,
            [count("👍", 1, false)],
            "{conversation}: with its reactions as its sender sees them"
        );
    }
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn a_protocol_2_sync_leaves_message_changes_out(f: &Fixture) {
    let m1 = send(f, "alice", "bob").await;
    let id = m1.message_id;
    change_message(f, "bob", "alice:bob", id, react("👍"))
        .await
        .unwrap();
    change_message(f, "alice", "alice:bob", id, edit("fixed"))
        .await
        .unwrap();
    let m2 = send(f, "alice", "bob").await;
    change_message(f, "alice", "alice:bob", m2.message_id, MessageOp::Delete)
        .await
        .unwrap();
    mark(f, "bob", "alice:bob", read_up_to(id)).await.unwrap();
    // bob's stream: 1 m1, 2 reaction, 3 edit, 4 m2, 5 delete, 6 read marker.
    let page = |scope, after_seq, limit| {
        f.client.sync(SyncQuery {
            user: key(T, "bob"),
            after_seq,
            limit,
            scope,
        })
    };
    let p2 = page(SyncScope::Conversations, 0, 10).await.unwrap();
    let seqs: Vec<u64> = p2.messages.iter().map(|m| m.seq_for("bob")).collect();
    let events: Vec<u64> = p2.events.iter().map(|e| e.seq).collect();
    assert_eq!((seqs, events, p2.last_seq), (vec![1, 4], vec![6], 6));
    assert_eq!(p2.messages[0].text, "fixed", "messages are as they are now");
    assert_eq!(p2.messages[0].lifecycle.reactions, [count("👍", 1, true)]);
    let after_first = page(SyncScope::Conversations, 1, 1).await.unwrap();
    assert_eq!(after_first.messages[0].message_id, m2.message_id);
    assert!(after_first.has_more, "the read marker remains");
    let last = page(SyncScope::Conversations, 4, 1).await.unwrap();
    assert_eq!(last.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [6]);
    assert!(!last.has_more && last.messages.is_empty());
    let p3 = page(SyncScope::Everything, 0, 10).await.unwrap();
    let kinds: Vec<(u64, &str)> = p3
        .events
        .iter()
        .map(|e| (e.seq, e.event.kind.name()))
        .collect();
    assert_eq!(
        kinds,
        [
            (2, "reaction_added"),
            (3, "message_edited"),
            (5, "message_deleted"),
            (6, "read_marker")
        ]
    );
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn retention_prunes_messages_with_their_reactions(f: &Fixture) {
    let old = send(f, "alice", "bob").await;
    change_message(f, "bob", "alice:bob", old.message_id, react("👍"))
        .await
        .unwrap();
    let gone = send(f, "alice", "bob").await;
    change_message(f, "alice", "alice:bob", gone.message_id, MessageOp::Delete)
        .await
        .unwrap();
    wait_past(gone.ts).await;
    let reply = send_reply(f, "alice", "bob", old.message_id, "and another thing").await;
    let new = send(f, "alice", "bob").await;
    assert_eq!(unread_of(f, "bob", "alice:bob").await, 3);
    let report = f
        .store
        .retention_pass(&one_day(100), a_day_after(gone.ts))
        .await
        .unwrap();
    assert_eq!(report.deleted, 2);
    assert_eq!(
        unread_of(f, "bob", "alice:bob").await,
        2,
        "the deleted message was not counted as unread any more"
    );
    // The stream starts past its floor now: history tells the message as it is.
    let seen = in_history(f, "bob", "alice:bob", reply.message_id).await;
    assert_eq!(
        seen.lifecycle.reply_to,
        Some(Box::new(Quote {
            message_id: old.message_id,
            sender: String::new(),
            excerpt: String::new(),
            deleted: true,
        })),
        "a quote of a message retention deleted"
    );
    let ids: Vec<u64> = history(f, "bob", "alice:bob", None, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.message_id)
        .collect();
    assert_eq!(ids, [reply.message_id, new.message_id]);
}
