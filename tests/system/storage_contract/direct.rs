//! Direct messages: appends, idempotency, history and sync.

use super::*;

contract!(
    append_assigns_each_participant_its_next_seq,
    append_is_idempotent_per_tenant_sender_and_client_msg_id,
    invalid_messages_are_rejected_alone,
    history_pages_are_stable_and_scoped_to_the_conversation,
    sync_returns_a_users_stream_after_a_seq_in_pages,
    concurrent_appends_keep_every_users_seq_gapless_and_unique,
    malformed_requests_are_refused_as_such,
    committed_messages_survive_a_restart_of_the_service,
);

async fn append_assigns_each_participant_its_next_seq(f: &Fixture) {
    let out = f
        .client
        .append(vec![
            msg("t", "alice", "bob", "1"),
            msg("t", "bob", "alice", "2"),
            msg("t", "carol", "bob", "3"),
            msg("t", "alice", "alice", "4"),
        ])
        .await
        .unwrap();
    let seqs: Vec<(u64, u64)> = out
        .iter()
        .map(|o| {
            let (m, _) = stored(o);
            (m.sender_seq, m.recipient_seq)
        })
        .collect();
    assert_eq!(seqs, [(1, 1), (2, 2), (1, 3), (3, 3)]);
    let ids: Vec<u64> = out.iter().map(|o| stored(o).0.message_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    assert_eq!(f.client.last_seq(key("t", "bob")).await.unwrap(), 3);
    assert_eq!(f.client.last_seq(key("t", "alice")).await.unwrap(), 3);
    assert_eq!(f.client.last_seq(key("t", "nobody")).await.unwrap(), 0);
}

async fn append_is_idempotent_per_tenant_sender_and_client_msg_id(f: &Fixture) {
    let first = f
        .client
        .append(vec![msg("t", "alice", "bob", "same")])
        .await
        .unwrap();
    let again = f
        .client
        .append(vec![
            msg("t", "alice", "bob", "same"),
            msg("t", "alice", "bob", "same"),
            // Another sender, or another tenant, may use the same id.
            msg("t", "bob", "alice", "same"),
            msg("u", "alice", "bob", "same"),
        ])
        .await
        .unwrap();
    let (original, duplicate) = stored(&first[0]);
    assert!(!duplicate);
    for outcome in &again[..2] {
        let (message, duplicate) = stored(outcome);
        assert!(duplicate);
        assert_eq!(message, original);
    }
    assert!(!stored(&again[2]).1);
    assert!(!stored(&again[3]).1);
    assert_eq!(f.client.last_seq(key("t", "bob")).await.unwrap(), 2);
    assert_eq!(f.client.last_seq(key("u", "bob")).await.unwrap(), 1);
}

async fn invalid_messages_are_rejected_alone(f: &Fixture) {
    let mut empty = msg("t", "alice", "bob", "2");
    empty.text.clear();
    let out = f
        .client
        .append(vec![
            msg("t", "alice", "bob", "1"),
            msg("t", "bad id", "bob", "x"),
            empty,
            msg("t", "alice", "bob", "3"),
        ])
        .await
        .unwrap();
    assert!(matches!(out[1], AppendOutcome::Rejected(ref r) if r.message.contains("sender")));
    assert!(matches!(out[2], AppendOutcome::Rejected(ref r) if r.message.contains("text")));
    assert_eq!(
        stored(&out[3]).0.sender_seq,
        2,
        "no seq is burnt by a rejection"
    );
}

async fn history_pages_are_stable_and_scoped_to_the_conversation(f: &Fixture) {
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.push(msg("t", "alice", "bob", &format!("ab{i}")));
        batch.push(msg("t", "alice", "carol", &format!("ac{i}")));
    }
    batch.push(msg("u", "alice", "bob", "other-tenant"));
    f.client.append(batch).await.unwrap();

    let query = |before| HistoryQuery {
        user: key("t", "bob"),
        conversation_id: "alice:bob".into(),
        before,
        limit: 2,
    };
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = f.client.history(query(before)).await.unwrap();
        assert!(page.messages.len() <= 2);
        let mut ids: Vec<String> = page
            .messages
            .iter()
            .map(|m| m.client_msg_id.clone())
            .collect();
        ids.extend(seen);
        seen = ids;
        if !page.has_more {
            break;
        }
        before = Some(page.messages[0].message_id);
    }
    assert_eq!(seen, ["ab0", "ab1", "ab2", "ab3", "ab4"]);
}

async fn sync_returns_a_users_stream_after_a_seq_in_pages(f: &Fixture) {
    let batch = (0..7)
        .map(|i| msg("t", &format!("s{}", i % 3), "dana", &format!("m{i}")))
        .collect();
    f.client.append(batch).await.unwrap();
    let page = f
        .client
        .sync(SyncQuery {
            user: key("t", "dana"),
            after_seq: 2,
            limit: 3,
            scope: SyncScope::Everything,
        })
        .await
        .unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.recipient_seq).collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert!(page.has_more);
    assert_eq!(page.last_seq, 7);
    let rest = f
        .client
        .sync(SyncQuery {
            user: key("t", "dana"),
            after_seq: 5,
            limit: 3,
            scope: SyncScope::Everything,
        })
        .await
        .unwrap();
    assert_eq!(rest.messages.len(), 2);
    assert!(!rest.has_more);
}

async fn concurrent_appends_keep_every_users_seq_gapless_and_unique(f: &Fixture) {
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let client = f.client.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..10 {
                let batch = (0..5)
                    .map(|i| {
                        msg(
                            "t",
                            &format!("w{writer}"),
                            ["x", "y"][i % 2],
                            &format!("{round}-{i}"),
                        )
                    })
                    .collect::<Vec<_>>();
                append_until_answered(&client, batch).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for user in ["x", "y"] {
        let mut seqs = Vec::new();
        let mut after = 0;
        loop {
            let page = f
                .client
                .sync(SyncQuery {
                    user: key("t", user),
                    after_seq: after,
                    limit: 500,
                    scope: SyncScope::Everything,
                })
                .await
                .unwrap();
            seqs.extend(page.messages.iter().map(|m| m.recipient_seq));
            after = *seqs.last().unwrap_or(&0);
            if !page.has_more {
                break;
            }
        }
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "{user}'s seqs are 1..n");
    }
}

async fn malformed_requests_are_refused_as_such(f: &Fixture) {
    let err = f
        .client
        .history(HistoryQuery {
            user: key("t", "bob"),
            conversation_id: "alice:bob".into(),
            before: None,
            limit: 0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Rejected(ref m) if m.contains("limit")),
        "{err}"
    );
    let err = f
        .client
        .last_seq(key("bad tenant", "bob"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Rejected(ref m) if m.contains("tenant")),
        "{err}"
    );
}

async fn committed_messages_survive_a_restart_of_the_service(f: &Fixture) {
    f.client
        .append(vec![msg("t", "alice", "bob", "1")])
        .await
        .unwrap();
    // A second service over the same database, as after a restart.
    let mut config = f.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let again = peroxo_storage::StoreServer::start(&config).await.unwrap();
    let client = connect(again.addr).await;
    assert_eq!(client.last_seq(key("t", "bob")).await.unwrap(), 1);
    let repeat = client
        .append(vec![msg("t", "alice", "bob", "1")])
        .await
        .unwrap();
    assert!(stored(&repeat[0]).1, "idempotency survives the restart");
    again.stop().await;
}
