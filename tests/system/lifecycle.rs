//! Protocol 3 over a real gateway: edits, deletes, reactions and replies, live and through
//! `sync`, on every device of every participant; what protocol-2 and protocol-1 connections
//! keep seeing; and the exact refusals.

use serde_json::{Value, json};

use crate::common::{Client, TestServer};

/// Skips frames until an `event` frame of `name` arrives.
async fn wait_for_event(client: &mut Client, name: &str) -> Value {
    loop {
        let frame = client.wait_for("event").await;
        if frame["event"] == name {
            return frame;
        }
    }
}

/// Sends a command changing message `id` and returns its answer (`message_state` or
/// `error`).
async fn change(client: &mut Client, mut command: Value, req_id: &str) -> Value {
    command["req_id"] = json!(req_id);
    client.request(command, req_id).await
}

/// The history of `conversation` as `client` sees it, oldest first.
async fn history(client: &mut Client, conversation: &str) -> Vec<Value> {
    let page = client
        .request(
            json!({"type": "history", "conversation_id": conversation, "limit": 100}),
            "h",
        )
        .await;
    assert_eq!(page["type"], "history", "{page}");
    page["messages"].as_array().unwrap().clone()
}

/// The entry of the conversation list for `conversation`.
async fn list_entry(client: &mut Client, conversation: &str) -> Value {
    let page = client
        .request(json!({"type": "conversations"}), "list")
        .await;
    page["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation_id"] == conversation)
        .cloned()
        .unwrap_or_else(|| panic!("{conversation} not listed: {page}"))
}

#[tokio::test]
async fn protocol_3_is_offered_and_its_commands_need_it() {
    let server = TestServer::start().await;
    let v3 = server.connect_v3("alice").await;
    assert_eq!(v3.welcome["protocol"], 3);
    let mut v2 = server.connect_v2("alice").await;
    let ack = v2.send_to("alice:bob", "hi", "m1").await;
    let message_id = ack["message_id"].as_str().unwrap();
    for (command, id) in [
        (
            json!({"type": "edit", "conversation_id": "alice:bob", "message_id": message_id, "text": "x", "client_msg_id": "e1"}),
            "r1",
        ),
        (
            json!({"type": "delete", "conversation_id": "alice:bob", "message_id": message_id}),
            "r2",
        ),
        (
            json!({"type": "react", "conversation_id": "alice:bob", "message_id": message_id, "emoji": "👍"}),
            "r3",
        ),
        (
            json!({"type": "send", "conversation_id": "alice:bob", "text": "re", "client_msg_id": "m2", "reply_to": message_id}),
            "r4",
        ),
    ] {
        let reply = change(&mut v2, command, id).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], "bad_request");
        assert!(
            reply["message"].as_str().unwrap().contains("protocol 3"),
            "{reply}"
        );
    }
}

#[tokio::test]
async fn an_edit_reaches_every_device_of_both_participants_and_history_shows_it() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v3("alice").await;
    let mut alice_phone = server.connect_v3("alice").await;
    let mut bob = server.connect_v3("bob").await;
    let ack = alice.send_to("alice:bob", "helo", "m1").await;
    let id = ack["message_id"].as_str().unwrap().to_owned();
    bob.wait_for("message").await;
    alice_phone.wait_for("message").await;

    let edit = json!({"type": "edit", "conversation_id": "alice:bob", "message_id": id, "text": "hello", "client_msg_id": "e1"});
    let state = change(&mut alice, edit.clone(), "e1").await;
    assert_eq!(state["type"], "message_state", "{state}");
    assert_eq!(state["client_msg_id"], "e1");
    assert_eq!(state["duplicate"], false);
    assert_eq!(state["message"]["text"], "hello");
    let edited_ts = state["message"]["edited_ts"].as_i64().expect("edited_ts");

    for client in [&mut alice, &mut alice_phone, &mut bob] {
        let event = wait_for_event(client, "message_edited").await;
        assert_eq!(event["message_id"], id.as_str());
        assert_eq!(event["text"], "hello");
        assert_eq!(event["actor"], "alice");
        assert_eq!(event["ts"], edited_ts);
    }
    // The answer is as of the edit's seq in the author's stream.
    assert_eq!(state["seq"], ack["seq"].as_u64().unwrap() + 1, "{state}");
    let seen = history(&mut bob, "alice:bob").await;
    assert_eq!(seen[0]["text"], "hello");
    assert_eq!(seen[0]["edited_ts"], edited_ts);

    // The same edit again changes nothing and says so (and names no seq: nothing happened).
    let again = change(&mut alice, edit, "e1-again").await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert!(again.get("seq").is_none(), "{again}");
    // Another edit is another event, in the same gapless stream.
    let second = json!({"type": "edit", "conversation_id": "alice:bob", "message_id": id, "text": "hello!", "client_msg_id": "e2"});
    change(&mut alice, second, "e2").await;
    let next = wait_for_event(&mut bob, "message_edited").await;
    assert_eq!(next["text"], "hello!");

    // Bob's stream: the message, then exactly two edit events.
    let (entries, _) = bob.sync_entries(0).await;
    let names: Vec<String> = entries
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("message").to_owned())
        .collect();
    assert_eq!(names, ["message", "message_edited", "message_edited"]);
}

#[tokio::test]
async fn only_the_author_edits_and_deletes_in_a_direct_conversation() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v3("alice").await;
    let mut bob = server.connect_v3("bob").await;
    let ack = alice.send_to("alice:bob", "mine", "m1").await;
    let id = ack["message_id"].as_str().unwrap().to_owned();
    let cases = [
        (
            json!({"type": "edit", "conversation_id": "alice:bob", "message_id": id, "text": "x", "client_msg_id": "b-e1"}),
            "not_author",
        ),
        (
            json!({"type": "delete", "conversation_id": "alice:bob", "message_id": id}),
            "not_author",
        ),
        (
            json!({"type": "react", "conversation_id": "alice:bob", "message_id": "999999", "emoji": "👍"}),
            "unknown_message",
        ),
        (
            json!({"type": "react", "conversation_id": "bob:carol", "message_id": id, "emoji": "👍"}),
            "unknown_conversation",
        ),
        (
            json!({"type": "react", "conversation_id": "alice:bob", "message_id": id, "emoji": "a b"}),
            "bad_request",
        ),
    ];
    for (i, (command, code)) in cases.into_iter().enumerate() {
        let reply = change(&mut bob, command, &format!("r{i}")).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], code, "{reply}");
    }
    // A refused edit names its client_msg_id.
    let refused = change(
        &mut bob,
        json!({"type": "edit", "conversation_id": "alice:bob", "message_id": id, "text": "x", "client_msg_id": "b-e2"}),
        "r9",
    )
    .await;
    assert_eq!(refused["client_msg_id"], "b-e2");
    // Carol is in no conversation with alice: it is not hers to touch.
    let mut carol = server.connect_v3("carol").await;
    let reply = change(
        &mut carol,
        json!({"type": "react", "conversation_id": "alice:bob", "message_id": id, "emoji": "👍"}),
        "c1",
    )
    .await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
}

#[tokio::test]
async fn an_edit_after_the_window_is_refused() {
    let server = TestServer::start_with(|config| {
        config.messages.edit_window = std::time::Duration::from_millis(1);
    })
    .await;
    let mut alice = server.connect_v3("alice").await;
    let ack = alice.send_to("alice:bob", "old", "m1").await;
    let id = ack["message_id"].as_str().unwrap().to_owned();
    let sent_ts = ack["ts"].as_i64().unwrap();
    crate::common::eventually("a millisecond passes", || {
        peroxo_protocol::now_ms() > sent_ts + 1
    })
    .await;
    let reply = change(
        &mut alice,
        json!({"type": "edit", "conversation_id": "alice:bob", "message_id": id, "text": "new", "client_msg_id": "e1"}),
        "e1",
    )
    .await;
    assert_eq!(reply["code"], "edit_window_passed", "{reply}");
    assert_eq!(reply["retryable"], false);
}

#[tokio::test]
async fn a_delete_leaves_a_tombstone_and_fixes_unread_counts_and_previews() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v3("alice").await;
    let mut bob = server.connect_v3("bob").await;
    alice.send_to("alice:bob", "first", "m1").await;
    let ack = alice.send_to("alice:bob", "second", "m2").await;
    let id = ack["message_id"].as_str().unwrap().to_owned();
    let before = list_entry(&mut bob, "alice:bob").await;
    assert_eq!(before["unread_count"], 2);
    assert_eq!(before["last_message"]["text"], "second");

    let state = change(
        &mut alice,
        json!({"type": "delete", "conversation_id": "alice:bob", "message_id": id}),
        "d1",
    )
    .await;
    assert_eq!(state["type"], "message_state", "{state}");
    assert_eq!(state["message"]["text"], "");
    assert_eq!(state["message"]["deleted"]["by"], "alice");
    let event = wait_for_event(&mut bob, "message_deleted").await;
    assert_eq!(event["message_id"], id.as_str());
    assert_eq!(event["moderated"], false);

    // The unread count and the preview changed with the delete.
    let after = list_entry(&mut bob, "alice:bob").await;
    assert_eq!(after["unread_count"], 1, "{after}");
    assert_eq!(after["last_message"]["text"], "first", "{after}");
    // History keeps the tombstone, without its text.
    let seen = history(&mut bob, "alice:bob").await;
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1]["text"], "");
    assert_eq!(seen[1]["deleted"]["by"], "alice");
    // Deleting again changes nothing: no second event.
    let again = change(
        &mut alice,
        json!({"type": "delete", "conversation_id": "alice:bob", "message_id": id}),
        "d2",
    )
    .await;
    assert_eq!(again["type"], "message_state");
    let (entries, _) = bob.sync_entries(0).await;
    let deletes = entries
        .iter()
        .filter(|e| e["event"] == "message_deleted")
        .count();
    assert_eq!(deletes, 1);
    // Nothing can be done to a deleted message but deleting it.
    let edit = change(
        &mut alice,
        json!({"type": "edit", "conversation_id": "alice:bob", "message_id": id, "text": "x", "client_msg_id": "e1"}),
        "e1",
    )
    .await;
    assert_eq!(edit["code"], "message_deleted", "{edit}");
    let react = change(
        &mut bob,
        json!({"type": "react", "conversation_id": "alice:bob", "message_id": id, "emoji": "👍"}),
        "x1",
    )
    .await;
    assert_eq!(react["code"], "message_deleted", "{react}");
}

#[tokio::test]
async fn a_group_admin_deletes_as_a_moderator_and_a_member_may_not() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v3("alice").await;
    let mut bob = server.connect_v3("bob").await;
    let mut carol = server.connect_v3("carol").await;
    let group = alice.create_group("Team", &["bob", "carol"], "g1").await;
    let ack = bob.send_to(&group, "spam", "m1").await;
    let id = ack["message_id"].as_str().unwrap().to_owned();
    let refused = change(
        &mut carol,
        json!({"type": "delete", "conversation_id": group, "message_id": id}),
        "c1",
    )
    .await;
    assert_eq!(refused["code"], "not_author", "{refused}");
    let state = change(
        &mut alice,
        json!({"type": "delete", "conversation_id": group, "message_id": id}),
        "a1",
    )
    .await;
    assert_eq!(state["message"]["deleted"]["by"], "alice", "{state}");
    for client in [&mut bob, &mut carol] {
        let event = wait_for_event(client, "message_deleted").await;
        assert_eq!(event["moderated"], true);
        assert_eq!(event["actor"], "alice");
    }
}

#[tokio::test]
async fn reactions_toggle_idempotently_and_everyone_sees_the_counts() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v3("alice").await;
    let mut bob = server.connect_v3("bob").await;
    let mut carol = server.connect_v3("carol").await;
    let group = alice.create_group("Team", &["bob", "carol"], "g1").await;
    let ack = alice.send_to(&group, "lunch?", "m1").await;
    let id = ack["message_id"].as_str().unwrap().to_owned();
    let react = |emoji: &str| json!({"type": "react", "conversation_id": group, "message_id": id, "emoji": emoji});
    let state = change(&mut bob, react("👍"), "b1").await;
    assert_eq!(
        state["message"]["reactions"],
        json!([{"emoji": "👍", "count": 1, "mine": true}])
    );
    // Reacting twice changes nothing.
    change(&mut bob, react("👍"), "b2").await;
    change(&mut carol, react("👍"), "c1").await;
    let state = change(&mut carol, react("🍕"), "c2").await;
    assert_eq!(
        state["message"]["reactions"],
        json!([
            {"emoji": "👍", "count": 2, "mine": true},
            {"emoji": "🍕", "count": 1, "mine": true}
        ])
    );
    let added = wait_for_event(&mut alice, "reaction_added").await;
    assert_eq!(added["emoji"], "👍");
    assert_eq!(added["actor"], "bob");
    // Alice sees the counts, none of them hers.
    let seen = history(&mut alice, &group).await;
    assert_eq!(
        seen.last().unwrap()["reactions"],
        json!([
            {"emoji": "👍", "count": 2, "mine": false},
            {"emoji": "🍕", "count": 1, "mine": false}
        ])
    );
    let unreact =
        json!({"type": "unreact", "conversation_id": group, "message_id": id, "emoji": "👍"});
    change(&mut bob, unreact.clone(), "b3").await;
    let state = change(&mut bob, unreact, "b4").await;
    assert_eq!(
        state["message"]["reactions"],
        json!([
            {"emoji": "👍", "count": 1, "mine": false},
            {"emoji": "🍕", "count": 1, "mine": false}
        ])
    );
    // Alice's stream holds one event per change: three added, one removed.
    let (entries, _) = alice.sync_entries(0).await;
    let count = |name: &str| entries.iter().filter(|e| e["event"] == name).count();
    assert_eq!((count("reaction_added"), count("reaction_removed")), (3, 1));
}

#[tokio::test]
async fn too_many_reactions_are_refused() {
    let server = TestServer::start_with(|config| {
        config.messages.max_reactions_per_message = 2;
        config.messages.max_reactions_per_user = 1;
    })
    .await;
    let mut alice = server.connect_v3("alice").await;
    let mut bob = server.connect_v3("bob").await;
    let ack = alice.send_to("alice:bob", "hi", "m1").await;
    let id = ack["message_id"].as_str().unwrap().to_owned();
    let react = |emoji: &str| json!({"type": "react", "conversation_id": "alice:bob", "message_id": id, "emoji": emoji});
    change(&mut alice, react("a"), "a1").await;
    let second = change(&mut alice, react("b"), "a2").await;
    assert_eq!(second["code"], "too_many_reactions", "{second}");
    change(&mut bob, react("b"), "b1").await;
    let third = change(&mut bob, react("c"), "b2").await;
    assert_eq!(third["code"], "too_many_reactions", "{third}");
}

#[tokio::test]
async fn a_reply_quotes_its_message_and_the_quote_follows_edits_and_deletes() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v3("alice").await;
    let mut bob = server.connect_v3("bob").await;
    let ack = alice.send_to("alice:bob", "are you there?", "m1").await;
    let id = ack["message_id"].as_str().unwrap().to_owned();
    bob.wait_for("message").await;
    let reply = bob
        .request(
            json!({"type": "send", "conversation_id": "alice:bob", "text": "yes", "client_msg_id": "r1", "reply_to": id}),
            "r1",
        )
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let live = alice.wait_for("message").await;
    assert_eq!(
        live["reply_to"],
        json!({"message_id": id, "from": "alice", "excerpt": "are you there?"})
    );
    change(
        &mut alice,
        json!({"type": "edit", "conversation_id": "alice:bob", "message_id": id, "text": "still there?", "client_msg_id": "e1"}),
        "e1",
    )
    .await;
    let seen = history(&mut bob, "alice:bob").await;
    assert_eq!(seen[1]["reply_to"]["excerpt"], "still there?");
    change(
        &mut alice,
        json!({"type": "delete", "conversation_id": "alice:bob", "message_id": id}),
        "d1",
    )
    .await;
    let seen = history(&mut bob, "alice:bob").await;
    assert_eq!(
        seen[1]["reply_to"],
        json!({"message_id": id, "from": "alice", "excerpt": "", "deleted": true})
    );
    // A reply to a deleted message, or to one of another conversation, is refused.
    let refused = bob
        .request(
            json!({"type": "send", "conversation_id": "alice:bob", "text": "?", "client_msg_id": "r2", "reply_to": id}),
            "r2",
        )
        .await;
    assert_eq!(refused["code"], "message_deleted", "{refused}");
    assert_eq!(refused["client_msg_id"], "r2");
    let other = bob.send_to("bob:carol", "hey", "m9").await;
    let refused = bob
        .request(
            json!({"type": "send", "conversation_id": "alice:bob", "text": "?", "client_msg_id": "r3", "reply_to": other["message_id"]}),
            "r3",
        )
        .await;
    assert_eq!(refused["code"], "unknown_message", "{refused}");
}

#[tokio::test]
async fn older_protocols_see_current_text_without_the_new_fields_or_events() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v3("alice").await;
    let mut bob_v2 = server.connect_v2("bob").await;
    let mut bob_v1 = server.connect("bob").await;
    let first = alice.send_to("alice:bob", "one", "m1").await;
    let first_id = first["message_id"].as_str().unwrap().to_owned();
    let second = alice.send_to("alice:bob", "two", "m2").await;
    let second_id = second["message_id"].as_str().unwrap().to_owned();
    let reply = alice
        .request(
            json!({"type": "send", "conversation_id": "alice:bob", "text": "three", "client_msg_id": "m3", "reply_to": first_id}),
            "m3",
        )
        .await;
    assert_eq!(reply["type"], "ack");
    change(
        &mut alice,
        json!({"type": "edit", "conversation_id": "alice:bob", "message_id": first_id, "text": "ONE", "client_msg_id": "e1"}),
        "e1",
    )
    .await;
    change(
        &mut alice,
        json!({"type": "delete", "conversation_id": "alice:bob", "message_id": second_id}),
        "d1",
    )
    .await;
    // A message sent after the changes reaches Bob after every live frame they caused.
    alice.send_to("alice:bob", "four", "m4").await;
    for client in [&mut bob_v2, &mut bob_v1] {
        let mut frames = Vec::new();
        while frames.last().is_none_or(|f: &Value| f["text"] != "four") {
            frames.push(client.next().await);
        }
        let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["message"; 4], "{frames:?}");
        assert!(frames[2].get("reply_to").is_none(), "{}", frames[2]);
        // Sync shows the current state of each message, in the shape these protocols know.
        let entries = client.sync_all(0).await;
        assert!(
            entries.iter().all(|e| e.get("event").is_none()),
            "{entries:?}"
        );
        assert_eq!(entries.len(), 4, "{entries:?}");
        assert_eq!(entries[0]["text"], "ONE");
        assert!(entries[0].get("edited_ts").is_none());
        assert_eq!(entries[1]["text"], "");
        assert_eq!(entries[1]["erased"], true);
        assert!(entries[1].get("deleted").is_none());
        assert!(entries[2].get("reply_to").is_none());
    }
    // The seqs the lifecycle events took are skipped, and last_seq is the true one.
    let page = bob_v2
        .request(json!({"type": "sync", "after_seq": 0, "limit": 100}), "s")
        .await;
    assert_eq!(page["last_seq"], 6, "{page}");
}

#[tokio::test]
async fn a_device_that_was_away_converges_through_sync() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v3("alice").await;
    let mut bob = server.connect_v3("bob").await;
    let ack = alice.send_to("alice:bob", "draft", "m1").await;
    let id = ack["message_id"].as_str().unwrap().to_owned();
    let seen_up_to = bob.wait_for("message").await["seq"].as_u64().unwrap();
    bob.close().await;
    change(
        &mut alice,
        json!({"type": "edit", "conversation_id": "alice:bob", "message_id": id, "text": "final", "client_msg_id": "e1"}),
        "e1",
    )
    .await;
    change(
        &mut alice,
        json!({"type": "react", "conversation_id": "alice:bob", "message_id": id, "emoji": "✅"}),
        "r1",
    )
    .await;
    let mut bob = server.connect_v3("bob").await;
    // History says which seq its messages are as of: the reaction is in the page already.
    let page = bob
        .request(
            json!({"type": "history", "conversation_id": "alice:bob", "limit": 10}),
            "h0",
        )
        .await;
    let (missed, last_seq) = bob.sync_entries(seen_up_to).await;
    assert_eq!(page["last_seq"], last_seq, "{page}");
    let list = bob.request(json!({"type": "conversations"}), "l0").await;
    assert_eq!(list["last_seq"], last_seq, "{list}");
    let names: Vec<&str> = missed
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["message_edited", "reaction_added"]);
    assert_eq!(missed[0]["text"], "final");
    assert_eq!(missed[1]["emoji"], "✅");
    let seen = history(&mut bob, "alice:bob").await;
    assert_eq!(seen[0]["text"], "final");
    assert_eq!(
        seen[0]["reactions"],
        json!([{"emoji": "✅", "count": 1, "mine": false}])
    );
}

#[tokio::test]
async fn a_resent_edit_is_a_duplicate_even_after_its_author_left_the_group() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v3("alice").await;
    let mut bob = server.connect_v3("bob").await;
    let group = alice.create_group("Team", &["bob"], "g1").await;
    let ack = bob.send_to(&group, "draft", "m1").await;
    let id = ack["message_id"].as_str().unwrap().to_owned();
    let edit = json!({"type": "edit", "conversation_id": group, "message_id": id, "text": "final", "client_msg_id": "e1"});
    let first = change(&mut bob, edit.clone(), "e1").await;
    assert_eq!(first["duplicate"], false, "{first}");
    let removed = alice
        .request(
            json!({"type": "remove_member", "conversation_id": group, "user": "bob"}),
            "rm",
        )
        .await;
    assert_eq!(removed["type"], "done", "{removed}");
    // The answer to the first attempt was lost, say: the retry learns it was carried out.
    let again = change(&mut bob, edit, "e1-again").await;
    assert_eq!(again["type"], "message_state", "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message"]["text"], "final");
    // A new edit is refused: bob is no longer a member.
    let refused = change(
        &mut bob,
        json!({"type": "edit", "conversation_id": group, "message_id": id, "text": "x", "client_msg_id": "e2"}),
        "e2",
    )
    .await;
    assert_eq!(refused["code"], "not_a_member", "{refused}");
}
