//! The conversation list: its entries, order, pages and total.

use super::*;

contract!(
    a_direct_message_puts_the_conversation_in_both_lists,
    the_list_runs_from_the_latest_activity_in_pages,
    group_changes_move_a_group_up_the_list,
    read_marks_and_receipts_do_not_move_a_conversation,
    the_total_unread_counts_every_conversation_not_only_the_page,
    conversation_lists_are_scoped_to_the_tenant,
);

async fn page(f: &Fixture, user: &str, before: Option<u64>, limit: u32) -> ConversationPage {
    f.client
        .conversations(ConversationsQuery {
            user: key(T, user),
            before,
            limit,
        })
        .await
        .unwrap()
}

fn ids(page: &ConversationPage) -> Vec<&str> {
    page.conversations
        .iter()
        .map(|c| c.conversation_id.as_str())
        .collect()
}

async fn a_direct_message_puts_the_conversation_in_both_lists(f: &Fixture) {
    let m = send(f, "alice", "bob").await;
    let alices = list(f, "alice").await;
    assert_eq!(
        alices.conversations,
        [ConversationSummary {
            conversation_id: "alice:bob".into(),
            kind: ConversationKind::Direct {
                peer: "bob".into(),
                peer_read_marker: 0
            },
            last_message: Some(m.clone()),
            unread_count: 0,
            read_marker: m.message_id,
            activity_seq: 1
        }]
    );
    assert_eq!(alices.total_unread, 0);
    let bobs = list(f, "bob").await;
    assert_eq!(
        bobs.conversations,
        [ConversationSummary {
            conversation_id: "alice:bob".into(),
            kind: ConversationKind::Direct {
                peer: "alice".into(),
                peer_read_marker: m.message_id
            },
            last_message: Some(m),
            unread_count: 1,
            read_marker: 0,
            activity_seq: 1
        }]
    );
    assert_eq!(bobs.total_unread, 1);
    assert!(list(f, "carol").await.conversations.is_empty());
}

async fn the_list_runs_from_the_latest_activity_in_pages(f: &Fixture) {
    send(f, "alice", "bob").await;
    send(f, "carol", "alice").await;
    send(f, "alice", "dave").await;
    let group = new_group(f, "erin", &["alice"]).await;
    send(f, "alice", "carol").await;
    let first = page(f, "alice", None, 2).await;
    assert_eq!(ids(&first), ["alice:carol", group.as_str()]);
    assert!(first.has_more);
    let cursor = first.conversations[1].activity_seq;
    assert_eq!(cursor, 4);
    let second = page(f, "alice", Some(cursor), 2).await;
    assert_eq!(ids(&second), ["alice:dave", "alice:bob"]);
    assert!(!second.has_more);
    let rest = page(f, "alice", Some(1), 2).await;
    assert!(rest.conversations.is_empty() && !rest.has_more);
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol", "dave", "erin"]).await;
}

async fn group_changes_move_a_group_up_the_list(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    send(f, "carol", "bob").await;
    assert_eq!(ids(&list(f, "bob").await), ["bob:carol", group.as_str()]);
    change(
        f,
        "alice",
        &group,
        GroupOp::Rename {
            title: "Moved".into(),
        },
    )
    .await
    .unwrap();
    let bobs = list(f, "bob").await;
    assert_eq!(ids(&bobs), [group.as_str(), "bob:carol"]);
    assert_eq!(entry(&bobs, &group).activity_seq, 3);
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn read_marks_and_receipts_do_not_move_a_conversation(f: &Fixture) {
    let from_bob = send(f, "bob", "alice").await;
    send(f, "carol", "alice").await;
    mark(f, "alice", "alice:bob", read_up_to(from_bob.message_id))
        .await
        .unwrap();
    let alices = list(f, "alice").await;
    assert_eq!(ids(&alices), ["alice:carol", "alice:bob"]);
    assert_eq!(entry(&alices, "alice:bob").activity_seq, 1);
    let bobs = list(f, "bob").await;
    assert_eq!(
        entry(&bobs, "alice:bob").activity_seq,
        1,
        "the receipt in bob's stream moves nothing"
    );
    assert_eq!(f.client.last_seq(key(T, "bob")).await.unwrap(), 2);
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn the_total_unread_counts_every_conversation_not_only_the_page(f: &Fixture) {
    let group = new_group(f, "erin", &["bob"]).await;
    for (from, times) in [("alice", 2), ("carol", 3)] {
        for _ in 0..times {
            send(f, from, "bob").await;
        }
    }
    send(f, "erin", &group).await;
    let first = page(f, "bob", None, 1).await;
    assert_eq!(ids(&first), [group.as_str()]);
    assert_eq!(first.total_unread, 6);
    assert!(first.has_more);
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol", "erin"]).await;
}

async fn conversation_lists_are_scoped_to_the_tenant(f: &Fixture) {
    f.client
        .append(vec![msg("u", "alice", "bob", "elsewhere")])
        .await
        .unwrap();
    send(f, "carol", "bob").await;
    assert_eq!(ids(&list(f, "bob").await), ["bob:carol"]);
    let there = f
        .client
        .conversations(ConversationsQuery {
            user: key("u", "bob"),
            before: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(ids(&there), ["alice:bob"]);
    assert_eq!(there.total_unread, 1);
}
