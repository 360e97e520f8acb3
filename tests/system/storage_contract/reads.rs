//! Read markers, unread counts and read receipts.

use super::*;

contract!(
    sending_reads_the_conversation_for_the_sender_without_an_event,
    reading_moves_the_marker_forward_only_tells_the_peer_and_recounts,
    reading_past_the_newest_message_reads_up_to_it,
    a_conversation_with_oneself_has_markers_but_no_receipts,
    marking_unread_moves_the_marker_back_without_a_receipt,
    marking_unread_without_a_message_takes_the_newest_from_others,
    unread_marks_need_a_visible_message_of_the_conversation,
    read_marks_in_groups_count_visible_messages_only_and_send_no_receipts,
    read_marks_are_refused_outside_ones_conversations,
    read_receipts_list_the_readers_of_a_message_but_its_author,
    read_receipts_are_for_members_and_visible_messages,
);

fn unread(message_id: Option<u64>) -> ReadMarkKind {
    ReadMarkKind::Unread { message_id }
}

/// The event a fanout carries, and the one stream it entered.
fn single_stream(fanout: &Fanout) -> (&EventKind, &str, &str) {
    assert_eq!(fanout.seqs.len(), 1, "{fanout:?}");
    (
        &fanout.event.kind,
        fanout.event.actor.as_str(),
        fanout.seqs[0].user.as_str(),
    )
}

async fn sending_reads_the_conversation_for_the_sender_without_an_event(f: &Fixture) {
    for _ in 0..3 {
        send(f, "alice", "bob").await;
    }
    assert_eq!(entry(&list(f, "bob").await, "alice:bob").unread_count, 3);
    let reply = send(f, "bob", "alice").await;
    let bobs = list(f, "bob").await;
    let summary = entry(&bobs, "alice:bob");
    assert_eq!(
        (summary.unread_count, summary.read_marker),
        (0, reply.message_id)
    );
    assert!(events_of(f, "bob").await.is_empty(), "no read marker event");
    assert!(events_of(f, "alice").await.is_empty(), "no receipt either");
    let alices = list(f, "alice").await;
    assert_eq!(entry(&alices, "alice:bob").unread_count, 1);
    assert!(matches!(
        entry(&alices, "alice:bob").kind,
        ConversationKind::Direct { peer_read_marker, .. } if peer_read_marker == reply.message_id
    ));
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn reading_moves_the_marker_forward_only_tells_the_peer_and_recounts(f: &Fixture) {
    let mut sent = Vec::new();
    for _ in 0..4 {
        sent.push(send(f, "alice", "bob").await.message_id);
    }
    let outcome = mark(f, "bob", "alice:bob", read_up_to(sent[1]))
        .await
        .unwrap();
    assert_eq!((outcome.message_id, outcome.unread_count), (sent[1], 2));
    let marker = outcome.marker.as_ref().expect("the marker moved");
    assert_eq!(
        single_stream(marker),
        (
            &EventKind::ReadMarker {
                message_id: sent[1],
                unread_count: 2
            },
            "bob",
            "bob"
        )
    );
    assert_eq!(marker.event.conversation_id, "alice:bob");
    let receipt = outcome.receipt.as_ref().expect("the peer is told");
    assert_eq!(
        single_stream(receipt),
        (
            &EventKind::ReadReceipt {
                message_id: sent[1]
            },
            "bob",
            "alice"
        )
    );
    assert_entered(f, marker).await;
    assert_entered(f, receipt).await;
    for older in [sent[0], sent[1]] {
        let unchanged = mark(f, "bob", "alice:bob", read_up_to(older))
            .await
            .unwrap();
        assert_eq!(
            unchanged,
            ReadOutcome {
                message_id: sent[1],
                unread_count: 2,
                marker: None,
                receipt: None
            },
            "the marker never moves back by reading"
        );
    }
    let summary = entry(&list(f, "bob").await, "alice:bob").clone();
    assert_eq!((summary.read_marker, summary.unread_count), (sent[1], 2));
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn reading_past_the_newest_message_reads_up_to_it(f: &Fixture) {
    send(f, "alice", "bob").await;
    let newest = send(f, "alice", "bob").await;
    // A later message of another conversation does not count.
    let elsewhere = send(f, "carol", "bob").await;
    let outcome = mark(
        f,
        "bob",
        "alice:bob",
        read_up_to(elsewhere.message_id + 100),
    )
    .await
    .unwrap();
    assert_eq!(
        (outcome.message_id, outcome.unread_count),
        (newest.message_id, 0)
    );
    let outcome = mark(f, "bob", "bob:carol", read_up_to(u64::MAX))
        .await
        .unwrap();
    assert_eq!(outcome.message_id, elsewhere.message_id);
    assert_eq!(list(f, "bob").await.total_unread, 0);
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn a_conversation_with_oneself_has_markers_but_no_receipts(f: &Fixture) {
    send(f, "alice", "alice").await;
    let second = send(f, "alice", "alice").await;
    let page = list(f, "alice").await;
    let summary = entry(&page, "alice:alice");
    assert_eq!(
        (summary.unread_count, summary.read_marker),
        (0, second.message_id)
    );
    assert_eq!(
        summary.kind,
        ConversationKind::Direct {
            peer: "alice".into(),
            peer_read_marker: second.message_id
        }
    );
    let back = mark(f, "alice", "alice:alice", unread(Some(second.message_id)))
        .await
        .unwrap();
    assert_eq!(
        (back.message_id, back.unread_count),
        (second.message_id - 1, 0)
    );
    assert!(back.marker.is_some() && back.receipt.is_none());
    let forward = mark(f, "alice", "alice:alice", read_up_to(second.message_id))
        .await
        .unwrap();
    assert!(forward.marker.is_some());
    assert!(forward.receipt.is_none(), "no receipt to oneself");
    assert_refused(
        mark(f, "alice", "alice:alice", unread(None)).await,
        RefusalCode::UnknownMessage,
        "",
    );
    let kinds: Vec<&str> = events_of(f, "alice")
        .await
        .iter()
        .map(|e| e.event.kind.name())
        .collect();
    assert_eq!(kinds, ["read_marker", "read_marker"]);
    assert_lists_match_streams(&f.client, &["alice"]).await;
}

async fn marking_unread_moves_the_marker_back_without_a_receipt(f: &Fixture) {
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push(send(f, "alice", "bob").await.message_id);
    }
    mark(f, "bob", "alice:bob", read_up_to(sent[2]))
        .await
        .unwrap();
    let alices_events = events_of(f, "alice").await.len();
    let outcome = mark(f, "bob", "alice:bob", unread(Some(sent[1])))
        .await
        .unwrap();
    assert_eq!((outcome.message_id, outcome.unread_count), (sent[1] - 1, 2));
    assert!(outcome.receipt.is_none());
    let marker = outcome.marker.as_ref().unwrap();
    assert_eq!(
        single_stream(marker),
        (
            &EventKind::ReadMarker {
                message_id: sent[1] - 1,
                unread_count: 2
            },
            "bob",
            "bob"
        )
    );
    assert_entered(f, marker).await;
    assert_eq!(
        events_of(f, "alice").await.len(),
        alices_events,
        "no receipt"
    );
    let again = mark(f, "bob", "alice:bob", unread(Some(sent[1])))
        .await
        .unwrap();
    assert_eq!(
        again,
        ReadOutcome {
            message_id: sent[1] - 1,
            unread_count: 2,
            marker: None,
            receipt: None
        }
    );
    let alices = list(f, "alice").await;
    assert!(matches!(
        entry(&alices, "alice:bob").kind,
        ConversationKind::Direct { peer_read_marker, .. } if peer_read_marker == sent[1] - 1
    ));
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn marking_unread_without_a_message_takes_the_newest_from_others(f: &Fixture) {
    send(f, "alice", "bob").await;
    let newest_from_alice = send(f, "alice", "bob").await;
    send(f, "bob", "alice").await;
    let outcome = mark(f, "bob", "alice:bob", unread(None)).await.unwrap();
    assert_eq!(
        (outcome.message_id, outcome.unread_count),
        (newest_from_alice.message_id - 1, 1)
    );
    assert!(outcome.marker.is_some() && outcome.receipt.is_none());
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn unread_marks_need_a_visible_message_of_the_conversation(f: &Fixture) {
    send(f, "alice", "bob").await;
    let other = send(f, "alice", "carol").await;
    send(f, "bob", "dave").await;
    for message_id in [other.message_id, other.message_id + 1000] {
        assert_refused(
            mark(f, "bob", "alice:bob", unread(Some(message_id))).await,
            RefusalCode::UnknownMessage,
            "",
        );
    }
    assert_refused(
        mark(f, "bob", "bob:dave", unread(None)).await,
        RefusalCode::UnknownMessage,
        "",
    );
    let group = new_group(f, "alice", &["bob"]).await;
    let before_join = send(f, "alice", &group).await;
    add_members(f, "alice", &group, &["carol"]).await;
    assert_refused(
        mark(f, "carol", &group, unread(Some(before_join.message_id))).await,
        RefusalCode::UnknownMessage,
        "",
    );
    assert_refused(
        mark(f, "carol", &group, unread(None)).await,
        RefusalCode::UnknownMessage,
        "",
    );
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol", "dave"]).await;
}

async fn read_marks_in_groups_count_visible_messages_only_and_send_no_receipts(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    send(f, "alice", &group).await;
    add_members(f, "alice", &group, &["carol"]).await;
    let g2 = send(f, "alice", &group).await;
    let g3 = send(f, "bob", &group).await;
    assert_eq!(entry(&list(f, "carol").await, &group).unread_count, 2);
    let read = mark(f, "carol", &group, read_up_to(g3.message_id))
        .await
        .unwrap();
    assert_eq!((read.message_id, read.unread_count), (g3.message_id, 0));
    assert!(read.marker.is_some());
    assert!(read.receipt.is_none(), "no receipts in groups");
    let back = mark(f, "carol", &group, unread(None)).await.unwrap();
    assert_eq!((back.message_id, back.unread_count), (g3.message_id - 1, 1));
    let further = mark(f, "carol", &group, unread(Some(g2.message_id)))
        .await
        .unwrap();
    assert_eq!(
        (further.message_id, further.unread_count),
        (g2.message_id - 1, 2),
        "messages before carol joined never count"
    );
    let bob_read = mark(f, "bob", &group, read_up_to(g3.message_id))
        .await
        .unwrap();
    assert!(
        bob_read.marker.is_none(),
        "bob's own message already read it"
    );
    for user in ["alice", "bob"] {
        let receipts = events_of(f, user)
            .await
            .iter()
            .filter(|e| matches!(e.event.kind, EventKind::ReadReceipt { .. }))
            .count();
        assert_eq!(receipts, 0, "{user}");
    }
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn read_marks_are_refused_outside_ones_conversations(f: &Fixture) {
    let first = send(f, "alice", "carol").await;
    let group = new_group(f, "alice", &["carol"]).await;
    assert_bad_request(
        mark(f, "bob", "alice:carol", read_up_to(first.message_id)).await,
        "",
    );
    assert_refused(
        mark(f, "bob", "bob:dave", read_up_to(1)).await,
        RefusalCode::UnknownConversation,
        "",
    );
    assert_refused(
        mark(f, "bob", &unknown_group(), read_up_to(1)).await,
        RefusalCode::UnknownConversation,
        "",
    );
    assert_refused(
        mark(f, "bob", &group, read_up_to(1)).await,
        RefusalCode::NotAMember,
        "",
    );
    assert_eq!(f.client.last_seq(key(T, "bob")).await.unwrap(), 0);
}

async fn receipts(
    f: &Fixture,
    user: &str,
    conversation: &str,
    message_id: u64,
) -> Vec<(String, u64)> {
    f.client
        .read_receipts(key(T, user), conversation.to_owned(), message_id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.user, r.read_marker))
        .collect()
}

async fn read_receipts_list_the_readers_of_a_message_but_its_author(f: &Fixture) {
    let group = new_group(f, "alice", &["dave", "carol", "bob"]).await;
    let m = send(f, "alice", &group).await.message_id;
    let bobs = send(f, "bob", &group).await.message_id;
    mark(f, "carol", &group, read_up_to(m)).await.unwrap();
    assert_eq!(
        receipts(f, "dave", &group, m).await,
        [("bob".to_owned(), bobs), ("carol".to_owned(), m)],
        "by user id; the author and who has not read it left out"
    );
    assert!(receipts(f, "alice", &group, bobs).await.is_empty());
    mark(f, "carol", &group, read_up_to(bobs)).await.unwrap();
    assert_eq!(
        receipts(f, "bob", &group, bobs).await,
        [("carol".to_owned(), bobs)]
    );
    let direct = send(f, "alice", "bob").await.message_id;
    assert!(receipts(f, "alice", "alice:bob", direct).await.is_empty());
    mark(f, "bob", "alice:bob", read_up_to(direct))
        .await
        .unwrap();
    assert_eq!(
        receipts(f, "alice", "alice:bob", direct).await,
        [("bob".to_owned(), direct)]
    );
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol", "dave"]).await;
}

async fn read_receipts_are_for_members_and_visible_messages(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    let before_join = send(f, "alice", &group).await.message_id;
    add_members(f, "alice", &group, &["carol"]).await;
    let direct = send(f, "alice", "bob").await.message_id;
    let asked = |user: &str, conversation: &str, message_id| {
        f.client
            .read_receipts(key(T, user), conversation.to_owned(), message_id)
    };
    assert_refused(
        asked("dave", &group, before_join).await,
        RefusalCode::NotAMember,
        "",
    );
    assert_refused(
        asked("alice", &unknown_group(), before_join).await,
        RefusalCode::UnknownConversation,
        "",
    );
    assert_refused(
        asked("carol", &group, before_join).await,
        RefusalCode::UnknownMessage,
        "",
    );
    assert_refused(
        asked("alice", &group, direct).await,
        RefusalCode::UnknownMessage,
        "",
    );
    assert_bad_request(asked("carol", "alice:bob", direct).await, "");
}
