//! Messages to groups, history as each member sees it, and sync of messages and events.

use super::*;

contract!(
    a_group_message_enters_every_members_stream_and_reports_their_seqs,
    a_resent_group_message_is_the_original_without_members,
    group_messages_from_outsiders_or_to_unknown_groups_are_refused_alone,
    group_messages_are_unread_for_every_member_but_the_sender,
    group_history_starts_at_the_viewers_join_and_carries_the_viewers_seq,
    group_history_is_for_current_members_of_known_groups,
    direct_history_must_name_the_user,
    sync_of_everything_pages_messages_and_events_as_one_gapless_stream,
    sync_of_direct_messages_leaves_group_entries_out,
);

/// The message of a stored outcome and the member seqs it reports.
fn stored_with_members(outcome: &AppendOutcome) -> (&StoredMessage, Vec<(&str, u64)>) {
    match outcome {
        AppendOutcome::Stored {
            message, members, ..
        } => (
            message,
            members.iter().map(|s| (s.user.as_str(), s.seq)).collect(),
        ),
        AppendOutcome::Rejected(refusal) => panic!("unexpectedly rejected: {refusal}"),
    }
}

/// The one message at `seq` of `user`'s stream.
async fn message_at(f: &Fixture, user: &str, seq: u64) -> StoredMessage {
    let page = f
        .client
        .sync(SyncQuery {
            user: key(T, user),
            after_seq: seq - 1,
            limit: 1,
            scope: SyncScope::Everything,
        })
        .await
        .unwrap();
    assert!(page.events.is_empty(), "{user}'s seq {seq} is a message");
    page.messages.into_iter().next().unwrap()
}

async fn a_group_message_enters_every_members_stream_and_reports_their_seqs(f: &Fixture) {
    let group = new_group(f, "alice", &["carol", "bob"]).await;
    send(f, "bob", "dave").await;
    let outcomes = f
        .client
        .append(vec![
            msg(T, "alice", &group, "g1"),
            msg(T, "carol", &group, "g2"),
        ])
        .await
        .unwrap();
    let (first, members) = stored_with_members(&outcomes[0]);
    assert_eq!(
        members,
        [("bob", 3), ("carol", 2)],
        "by user id, the sender aside"
    );
    assert_eq!(first.recipient, group);
    assert_eq!((first.sender_seq, first.recipient_seq), (2, 0));
    assert_eq!(first.conversation_id(), group);
    let (second, members) = stored_with_members(&outcomes[1]);
    assert_eq!(members, [("alice", 3), ("bob", 4)]);
    assert_eq!(second.sender_seq, 3);
    assert!(first.message_id < second.message_id);
    for (user, seq, expected) in [
        ("alice", 2, first),
        ("bob", 3, first),
        ("carol", 2, first),
        ("alice", 3, second),
        ("bob", 4, second),
        ("carol", 3, second),
    ] {
        let seen = message_at(f, user, seq).await;
        assert_eq!(seen.message_id, expected.message_id, "{user} {seq}");
        assert_eq!(seen.recipient_seq, seq, "{user} reads its own seq");
        assert_eq!(seen.seq_for(user), seq);
        assert_eq!(seen.text, expected.text);
    }
    assert_eq!(f.client.last_seq(key(T, "dave")).await.unwrap(), 1);
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol", "dave"]).await;
}

async fn a_resent_group_message_is_the_original_without_members(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    let first = f
        .client
        .append(vec![msg(T, "alice", &group, "once")])
        .await
        .unwrap();
    let again = f
        .client
        .append(vec![msg(T, "alice", &group, "once")])
        .await
        .unwrap();
    let (original, _) = stored_with_members(&first[0]);
    assert_eq!(
        again[0],
        AppendOutcome::Stored {
            message: original.clone(),
            duplicate: true,
            members: Vec::new()
        }
    );
    assert_eq!(f.client.last_seq(key(T, "bob")).await.unwrap(), 2);
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn group_messages_from_outsiders_or_to_unknown_groups_are_refused_alone(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    let outcomes = f
        .client
        .append(vec![
            msg(T, "dave", &group, "outsider"),
            msg(T, "alice", &unknown_group(), "nowhere"),
            msg(T, "alice", &group, "fine"),
        ])
        .await
        .unwrap();
    assert_eq!(rejection(&outcomes[0]).code, RefusalCode::NotAMember);
    assert_eq!(
        rejection(&outcomes[1]).code,
        RefusalCode::UnknownConversation
    );
    let (fine, members) = stored_with_members(&outcomes[2]);
    assert_eq!(fine.sender_seq, 2, "no seq is burnt by a refusal");
    assert_eq!(members, [("bob", 2)]);
    assert_eq!(f.client.last_seq(key(T, "dave")).await.unwrap(), 0);
    assert_lists_match_streams(&f.client, &["alice", "bob", "dave"]).await;
}

async fn group_messages_are_unread_for_every_member_but_the_sender(f: &Fixture) {
    let group = new_group(f, "alice", &["bob", "carol"]).await;
    send(f, "alice", &group).await;
    send(f, "alice", &group).await;
    let last = send(f, "bob", &group).await;
    for (user, unread, seq) in [("alice", 1, 4), ("bob", 0, 4), ("carol", 3, 4)] {
        let page = list(f, user).await;
        let summary = entry(&page, &group);
        assert_eq!(summary.unread_count, unread, "{user}");
        assert_eq!(page.total_unread, unread, "{user}");
        assert_eq!(summary.activity_seq, seq, "{user}");
        let preview = summary.last_message.clone().unwrap();
        assert_eq!(preview.message_id, last.message_id, "{user}");
        assert_eq!(
            preview.recipient_seq, seq,
            "{user}'s preview carries {user}'s seq"
        );
    }
    let bobs = list(f, "bob").await;
    assert_eq!(
        entry(&bobs, &group).read_marker,
        last.message_id,
        "sending reads"
    );
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn group_history_starts_at_the_viewers_join_and_carries_the_viewers_seq(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    send(f, "bob", "erin").await;
    let g1 = send(f, "alice", &group).await;
    let g2 = send(f, "bob", &group).await;
    add_members(f, "alice", &group, &["carol"]).await;
    let g3 = send(f, "alice", &group).await;
    let carols = history(f, "carol", &group, None, 10).await.unwrap();
    assert_eq!(carols.len(), 1);
    assert_eq!(carols[0].message_id, g3.message_id);
    assert_eq!(carols[0].recipient_seq, 2, "carol's seq of it");
    let stream = stream_model::read_stream(&f.client, &key(T, "bob")).await;
    let seq_of = |id: u64| {
        stream
            .messages()
            .iter()
            .find(|m| m.message_id == id)
            .map(|m| m.seq_for("bob"))
            .unwrap()
    };
    let mut before = None;
    let mut seen = Vec::new();
    loop {
        let page = history(f, "bob", &group, before, 1).await.unwrap();
        let Some(message) = page.first() else { break };
        assert_eq!(message.recipient_seq, seq_of(message.message_id));
        seen.push(message.message_id);
        before = Some(message.message_id);
    }
    seen.reverse();
    assert_eq!(seen, [g1.message_id, g2.message_id, g3.message_id]);
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn group_history_is_for_current_members_of_known_groups(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    send(f, "alice", &group).await;
    assert_refused(
        history(f, "alice", &unknown_group(), None, 10).await,
        RefusalCode::UnknownConversation,
        "",
    );
    assert_refused(
        history(f, "dave", &group, None, 10).await,
        RefusalCode::NotAMember,
        "",
    );
    change(f, "bob", &group, GroupOp::Leave).await.unwrap();
    assert_refused(
        history(f, "bob", &group, None, 10).await,
        RefusalCode::NotAMember,
        "",
    );
}

async fn direct_history_must_name_the_user(f: &Fixture) {
    send(f, "alice", "carol").await;
    assert_bad_request(history(f, "bob", "alice:carol", None, 10).await, "");
    assert!(
        history(f, "bob", "bob:dave", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        history(f, "carol", "alice:carol", None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A stream for bob of messages and events: seq 1 created, 2 a direct message, 3 a group
/// message, 4 renamed, 5 bob's read marker, 6 a direct message.
async fn mixed_stream(f: &Fixture) -> (String, StoredMessage, StoredMessage) {
    let group = new_group(f, "alice", &["bob"]).await;
    let dm = send(f, "alice", "bob").await;
    let in_group = send(f, "alice", &group).await;
    change(
        f,
        "alice",
        &group,
        GroupOp::Rename {
            title: "New".into(),
        },
    )
    .await
    .unwrap();
    mark(f, "bob", &group, read_up_to(in_group.message_id))
        .await
        .unwrap();
    let dm2 = send(f, "alice", "bob").await;
    (group, dm, dm2)
}

async fn sync_of_everything_pages_messages_and_events_as_one_gapless_stream(f: &Fixture) {
    mixed_stream(f).await;
    let page = |after_seq| {
        f.client.sync(SyncQuery {
            user: key(T, "bob"),
            after_seq,
            limit: 2,
            scope: SyncScope::Everything,
        })
    };
    let mut pages = Vec::new();
    for after in [0, 2, 4] {
        let p = page(after).await.unwrap();
        let messages: Vec<u64> = p.messages.iter().map(|m| m.seq_for("bob")).collect();
        let events: Vec<u64> = p.events.iter().map(|e| e.seq).collect();
        pages.push((messages, events, p.has_more, p.last_seq));
    }
    assert_eq!(
        pages,
        [
            (vec![2], vec![1], true, 6),
            (vec![3], vec![4], true, 6),
            (vec![6], vec![5], false, 6),
        ]
    );
    let events = events_of(f, "bob").await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.kind.name()).collect();
    assert_eq!(kinds, ["group_created", "group_renamed", "read_marker"]);
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn sync_of_direct_messages_leaves_group_entries_out(f: &Fixture) {
    let (_, dm, dm2) = mixed_stream(f).await;
    let page = |after_seq| {
        f.client.sync(SyncQuery {
            user: key(T, "bob"),
            after_seq,
            limit: 1,
            scope: SyncScope::DirectMessages,
        })
    };
    let first = page(0).await.unwrap();
    assert_eq!(first.messages, [dm]);
    assert!(first.events.is_empty());
    assert!(first.has_more, "a direct message remains");
    assert_eq!(first.last_seq, 6, "the user's true current seq");
    let second = page(2).await.unwrap();
    assert_eq!(second.messages, [dm2]);
    assert!(!second.has_more, "only direct messages count");
    let none = page(6).await.unwrap();
    assert!(none.messages.is_empty() && !none.has_more);
    assert_eq!(none.last_seq, 6);
}
