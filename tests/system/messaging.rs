//! Direct messages end to end: persist then deliver, idempotent send, per-user seq,
//! multi-device, offline delivery through sync, and history paging.

use crate::common::{Client, TestServer};
use serde_json::json;

#[tokio::test]
async fn a_dm_is_acked_to_the_sender_and_delivered_to_the_recipient() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    assert_eq!(alice.welcome["user"], "alice");
    assert_eq!(alice.welcome["tenant"], "default");
    assert_eq!(alice.welcome["last_seq"], 0);
    assert_eq!(alice.welcome["protocol"], 1);

    alice
        .send_json(json!({"type": "send", "to": "bob", "text": "hello", "client_msg_id": "m1", "req_id": "r1"}))
        .await;
    let ack = alice.expect("ack").await;
    assert_eq!(ack["req_id"], "r1");
    assert_eq!(ack["client_msg_id"], "m1");
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["duplicate"], false);
    assert_eq!(ack["conversation_id"], "alice:bob");
    assert!(ack["message_id"].is_string());

    let message = bob.expect("message").await;
    assert_eq!(message["from"], "alice");
    assert_eq!(message["to"], "bob");
    assert_eq!(message["text"], "hello");
    assert_eq!(message["seq"], 1);
    assert_eq!(message["message_id"], ack["message_id"]);
    assert_eq!(message["ts"], ack["ts"]);
}

#[tokio::test]
async fn an_offline_recipient_gets_the_message_through_sync() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    alice.dm("carol", "while you were out", "m1").await;
    alice.dm("carol", "second", "m2").await;

    let mut carol = server.connect("carol").await;
    assert_eq!(carol.welcome["last_seq"], 2);
    let messages = carol.sync_all(0).await;
    let texts: Vec<_> = messages
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["while you were out", "second"]);
    let seqs: Vec<_> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);

    // Sync from the last seen seq returns nothing more.
    assert!(carol.sync_all(2).await.is_empty());
}

#[tokio::test]
async fn resent_client_msg_id_is_acked_once_as_duplicate_and_not_redelivered() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;

    let first = alice.dm("bob", "once", "same-id").await;
    assert_eq!(bob.expect("message").await["text"], "once");

    let again = alice.dm("bob", "once", "same-id").await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["seq"], first["seq"]);

    // The next message bob sees is the next one alice sends, not the duplicate.
    alice.dm("bob", "twice", "other-id").await;
    let next = bob.expect("message").await;
    assert_eq!(next["text"], "twice");
    assert_eq!(next["seq"], 2);

    let stored = bob.sync_all(0).await;
    assert_eq!(stored.len(), 2, "stored exactly once: {stored:?}");
}

#[tokio::test]
async fn seq_is_gapless_per_user_across_senders() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut dave = server.connect("dave").await;

    for i in 0..5 {
        alice.dm("dave", &format!("a{i}"), &format!("a{i}")).await;
        bob.dm("dave", &format!("b{i}"), &format!("b{i}")).await;
    }
    dave.dm("alice", "back", "d0").await;

    let seqs: Vec<u64> = dave
        .sync_all(0)
        .await
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
    // Alice's own stream holds her five sends and dave's reply.
    let alice_seqs: Vec<u64> = alice
        .sync_all(0)
        .await
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(alice_seqs, (1..=6).collect::<Vec<_>>());
}

#[tokio::test]
async fn every_device_of_the_recipient_gets_it_and_the_senders_other_devices_get_a_copy() {
    let server = TestServer::start().await;
    let mut alice_phone = server.connect("alice").await;
    let mut alice_laptop = server.connect("alice").await;
    let mut bob_phone = server.connect("bob").await;
    let mut bob_laptop = server.connect("bob").await;

    let ack = alice_phone.dm("bob", "to all of you", "m1").await;
    for bob in [&mut bob_phone, &mut bob_laptop] {
        let message = bob.expect("message").await;
        assert_eq!(message["message_id"], ack["message_id"]);
        assert_eq!(message["seq"], 1);
    }
    let copy = alice_laptop.expect("message").await;
    assert_eq!(copy["message_id"], ack["message_id"]);
    assert_eq!(copy["from"], "alice");
    assert_eq!(copy["seq"], ack["seq"], "the copy carries the sender's seq");
    // Only the sender sees its own client_msg_id, live and through sync.
    assert_eq!(copy["client_msg_id"], "m1");
    assert!(
        bob_laptop.sync_all(0).await[0]
            .get("client_msg_id")
            .is_none()
    );
    assert_eq!(alice_laptop.sync_all(0).await[0]["client_msg_id"], "m1");
    // The sending device got the ack, not a copy.
    assert!(alice_phone.frames_until_pong().await.is_empty());
}

#[tokio::test]
async fn a_message_to_oneself_takes_one_seq_and_reaches_the_other_devices() {
    let server = TestServer::start().await;
    let mut phone = server.connect("alice").await;
    let mut laptop = server.connect("alice").await;
    let ack = phone.dm("alice", "note to self", "n1").await;
    assert_eq!(ack["seq"], 1);
    let copy = laptop.expect("message").await;
    assert_eq!(copy["seq"], 1);
    assert_eq!(phone.sync_all(0).await.len(), 1);
}

#[tokio::test]
async fn history_pages_back_through_a_conversation_with_a_stable_cursor() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    for i in 0..7 {
        if i % 2 == 0 {
            alice.dm("bob", &format!("t{i}"), &format!("c{i}")).await;
        } else {
            bob.dm("alice", &format!("t{i}"), &format!("c{i}")).await;
        }
    }
    // Someone else's conversation must not show up.
    let mut eve = server.connect("eve").await;
    eve.dm("alice", "not in this conversation", "e1").await;

    let mut texts = Vec::new();
    let mut before = serde_json::Value::Null;
    let mut pages = 0;
    loop {
        alice
            .send_json(json!({"type": "history", "with": "bob", "limit": 3, "before": before, "req_id": pages}))
            .await;
        let page = alice.wait_for("history").await;
        assert_eq!(page["req_id"], pages);
        assert_eq!(page["with"], "bob");
        assert_eq!(page["conversation_id"], "alice:bob");
        let mut page_texts: Vec<String> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect();
        page_texts.extend(texts);
        texts = page_texts;
        pages += 1;
        before = page["next_before"].clone();
        if before.is_null() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(texts, ["t0", "t1", "t2", "t3", "t4", "t5", "t6"]);

    // The same cursor gives the same page, even after newer messages arrive.
    alice
        .send_json(json!({"type": "history", "with": "bob", "limit": 3}))
        .await;
    let newest = alice.wait_for("history").await;
    let cursor = newest["next_before"].clone();
    alice
        .send_json(json!({"type": "history", "with": "bob", "limit": 3, "before": cursor}))
        .await;
    let first = alice.wait_for("history").await;
    bob.dm("alice", "newer", "c-new").await;
    alice
        .send_json(json!({"type": "history", "with": "bob", "limit": 3, "before": cursor}))
        .await;
    let second = alice.wait_for("history").await;
    assert_eq!(first["messages"], second["messages"]);

    // Each message carries the caller's own seq.
    let mine = &second["messages"][0];
    assert!(mine["seq"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn ping_is_answered_with_pong_and_its_req_id() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    alice.send_json(json!({"type": "ping", "req_id": 42})).await;
    let pong = alice.expect("pong").await;
    assert_eq!(pong["req_id"], 42);
    assert!(pong["ts"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn tenants_with_the_same_user_ids_do_not_see_each_other() {
    let server = TestServer::start().await;
    let mut alice_a = server.connect_in("acme", "alice").await;
    let mut bob_a = server.connect_in("acme", "bob").await;
    let mut bob_b = server.connect_in("globex", "bob").await;

    alice_a.dm("bob", "acme only", "m1").await;
    assert_eq!(bob_a.expect("message").await["text"], "acme only");
    assert!(bob_b.frames_until_pong().await.is_empty());
    assert!(bob_b.sync_all(0).await.is_empty());
    let _ = Client::connect; // the harness is shared across test files
}

#[tokio::test]
async fn a_client_that_closes_gets_its_close_frame_answered() {
    let server = TestServer::start().await;
    for i in 0..20 {
        let client = server.connect(&format!("leaver-{i}")).await;
        let answer = client.close_expecting_answer().await;
        assert_eq!(answer.map(|f| u16::from(f.code)), Some(1000));
    }
}
