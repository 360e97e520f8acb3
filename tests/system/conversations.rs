//! Protocol 2 over a real gateway: groups, the conversation list, read state and receipts,
//! and what protocol-1 connections keep seeing.

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

async fn sync_entries(client: &mut Client, after_seq: u64) -> (Vec<Value>, u64) {
    client.sync_entries(after_seq).await
}

fn seqs(entries: &[Value]) -> Vec<u64> {
    entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn a_connection_asks_for_protocol_2_and_an_unknown_version_is_refused() {
    let server = TestServer::start().await;
    let v2 = server.connect_v2("alice").await;
    assert_eq!(v2.welcome["protocol"], 2);
    let v1 = server.connect("alice").await;
    assert_eq!(v1.welcome["protocol"], 1);
    let url = format!("{}&protocol=4", server.ws_url("default", "alice"));
    let (status, body) = Client::try_connect(&url).await.err().expect("refused");
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_request");
    assert!(
        body["message"].as_str().unwrap().contains("protocol"),
        "{body}"
    );
    let (status, info) =
        crate::common::http_request(server.gateway.http_addr, "GET", "/api/info", "").await;
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["protocol"], 1, "a client that asks for none gets 1");
    assert_eq!(info["protocols"], json!([1, 2, 3]));
    assert_eq!(info["groups"]["max_members"], 1000);
    assert_eq!(info["messages"]["edit_window_secs"], 48 * 3600);
    assert_eq!(info["messages"]["max_reactions_per_message"], 20);
}

#[tokio::test]
async fn protocol_2_commands_are_refused_on_a_protocol_1_connection() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let reply = alice
        .request(
            json!({"type": "create_group", "title": "T", "client_msg_id": "g1"}),
            "r1",
        )
        .await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "bad_request");
    assert_eq!(reply["client_msg_id"], "g1");
    assert!(reply["message"].as_str().unwrap().contains("protocol 2"));
}

#[tokio::test]
async fn a_group_message_reaches_every_member_once_with_their_own_seq() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v2("alice").await;
    let mut alice_phone = server.connect_v2("alice").await;
    let mut bob = server.connect_v2("bob").await;
    let mut carol = server.connect_v2("carol").await;
    let group = alice.create_group("Team", &["bob", "carol"], "g1").await;
    assert!(group.starts_with("g~"), "{group}");

    // Every member (and the creator's other device) hears of the group in its stream.
    for client in [&mut alice_phone, &mut bob, &mut carol] {
        let created = wait_for_event(client, "group_created").await;
        assert_eq!(created["conversation_id"], group.as_str());
        assert_eq!(created["title"], "Team");
        assert_eq!(created["member_count"], 3);
        assert_eq!(created["actor"], "alice");
    }

    let ack = alice.send_to(&group, "hello team", "m1").await;
    assert_eq!(ack["conversation_id"], group.as_str());
    for client in [&mut bob, &mut carol] {
        let message = client.wait_for("message").await;
        assert_eq!(message["conversation_id"], group.as_str());
        assert_eq!(message["from"], "alice");
        assert_eq!(message["text"], "hello team");
        assert!(message.get("client_msg_id").is_none(), "{message}");
        // group_created took seq 1 of this member's stream; the message takes seq 2.
        assert_eq!(message["seq"], 2);
    }
    let copy = alice_phone.wait_for("message").await;
    assert_eq!(copy["client_msg_id"], "m1");
    assert_eq!(copy["seq"], ack["seq"]);

    // A resend is a duplicate and reaches nobody again.
    let again = alice.send_to(&group, "hello team", "m1").await;
    assert_eq!(again["duplicate"], true);
    let frames = bob.frames_until_pong().await;
    assert!(
        frames.iter().all(|f| f["type"] != "message"),
        "no second copy: {frames:?}"
    );
}

#[tokio::test]
async fn only_members_send_to_a_group_and_unknown_groups_are_named() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v2("alice").await;
    let mut mallory = server.connect_v2("mallory").await;
    let group = alice.create_group("Team", &["bob"], "g1").await;
    let refused = mallory
        .request(
            json!({"type": "send", "conversation_id": group, "text": "hi", "client_msg_id": "x1"}),
            "r1",
        )
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "not_a_member");
    assert_eq!(refused["client_msg_id"], "x1");

    let unknown = alice.request(json!({"type": "send", "conversation_id": "g~000000000000000000000000", "text": "hi", "client_msg_id": "x2"}),
        "r2",
    )
    .await;
    assert_eq!(unknown["code"], "unknown_conversation", "{unknown}");

    let other_dm = mallory.request(json!({"type": "send", "conversation_id": "alice:bob", "text": "hi", "client_msg_id": "x3"}),
        "r3",
    )
    .await;
    assert_eq!(other_dm["code"], "not_a_member", "{other_dm}");
}

#[tokio::test]
async fn a_protocol_1_connection_keeps_its_direct_messages_and_sees_no_group_traffic() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v2("alice").await;
    let mut bob_v1 = server.connect("bob").await;
    let group = alice.create_group("Team", &["bob"], "g1").await;
    alice.send_to(&group, "group hello", "m1").await;
    alice.dm("bob", "direct hello", "m2").await;

    let direct = bob_v1.wait_for("message").await;
    assert_eq!(
        direct["text"], "direct hello",
        "the group message never reaches v1"
    );
    assert_eq!(
        direct["seq"], 3,
        "bob's stream: group_created, group message, this"
    );
    let synced = bob_v1.sync_all(0).await;
    assert_eq!(
        synced.len(),
        1,
        "v1 sync holds direct messages only: {synced:?}"
    );
    assert_eq!(synced[0]["text"], "direct hello");

    // The same user on protocol 2 sees the whole stream, gapless.
    let mut bob_v2 = server.connect_v2("bob").await;
    let (entries, last_seq) = sync_entries(&mut bob_v2, 0).await;
    assert_eq!(seqs(&entries), [1, 2, 3]);
    assert_eq!(last_seq, 3);
    assert_eq!(entries[0]["event"], "group_created");
    assert_eq!(entries[1]["text"], "group hello");
}

#[tokio::test]
async fn the_conversation_list_shows_previews_and_unread_counts_most_recent_first() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v2("alice").await;
    let mut bob = server.connect_v2("bob").await;
    let group = alice.create_group("Team", &["bob"], "g1").await;
    alice.dm("bob", "one", "d1").await;
    alice.dm("bob", "two", "d2").await;
    alice.send_to(&group, "to the team", "m1").await;

    let list = bob.request(json!({"type": "conversations"}), "c1").await;
    assert_eq!(list["type"], "conversations", "{list}");
    let conversations = list["conversations"].as_array().unwrap();
    assert_eq!(conversations.len(), 2);
    assert_eq!(conversations[0]["conversation_id"], group.as_str());
    assert_eq!(conversations[0]["kind"], "group");
    assert_eq!(conversations[0]["title"], "Team");
    assert_eq!(conversations[0]["role"], "member");
    assert_eq!(conversations[0]["unread_count"], 1);
    assert_eq!(conversations[0]["last_message"]["text"], "to the team");
    assert_eq!(conversations[1]["conversation_id"], "alice:bob");
    assert_eq!(conversations[1]["kind"], "direct");
    assert_eq!(conversations[1]["peer"], "alice");
    assert_eq!(conversations[1]["unread_count"], 2);
    assert_eq!(conversations[1]["last_message"]["text"], "two");
    assert_eq!(list["total_unread"], 3);
    assert_eq!(list["next_before"], Value::Null);

    // The sender has read what it sent.
    let list = alice.request(json!({"type": "conversations"}), "c2").await;
    assert_eq!(list["total_unread"], 0, "{list}");

    // Paged by a stable cursor.
    let first = bob
        .request(json!({"type": "conversations", "limit": 1}), "c3")
        .await;
    assert_eq!(first["conversations"].as_array().unwrap().len(), 1);
    let cursor = first["next_before"].clone();
    assert!(cursor.is_string(), "{first}");
    let second = bob
        .request(
            json!({"type": "conversations", "limit": 1, "before": cursor}),
            "c4",
        )
        .await;
    assert_eq!(second["conversations"][0]["conversation_id"], "alice:bob");
    assert_eq!(second["next_before"], Value::Null);
}

#[tokio::test]
async fn marking_read_moves_forward_reaches_every_device_and_sends_a_direct_receipt() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v2("alice").await;
    let mut bob = server.connect_v2("bob").await;
    let mut bob_phone = server.connect_v2("bob").await;
    alice.dm("bob", "one", "d1").await;
    let last = alice.dm("bob", "two", "d2").await;
    let last_id = last["message_id"].as_str().unwrap().to_owned();

    let state = bob
        .request(
            json!({"type": "mark_read", "conversation_id": "alice:bob", "message_id": last_id}),
            "r1",
        )
        .await;
    assert_eq!(state["type"], "read_state", "{state}");
    assert_eq!(state["read_marker"], last_id.as_str());
    assert_eq!(state["unread_count"], 0);

    let marker = wait_for_event(&mut bob_phone, "read_marker").await;
    assert_eq!(marker["message_id"], last_id.as_str());
    assert_eq!(marker["unread_count"], 0);
    let receipt = wait_for_event(&mut alice, "read_receipt").await;
    assert_eq!(receipt["actor"], "bob");
    assert_eq!(receipt["message_id"], last_id.as_str());

    // An older message does not move the marker back.
    let first_id = (last_id.parse::<u64>().unwrap() - 1).to_string();
    let state = bob
        .request(
            json!({"type": "mark_read", "conversation_id": "alice:bob", "message_id": first_id}),
            "r2",
        )
        .await;
    assert_eq!(state["read_marker"], last_id.as_str());

    // mark_unread makes the newest message from alice unread again.
    let state = bob
        .request(
            json!({"type": "mark_unread", "conversation_id": "alice:bob"}),
            "r3",
        )
        .await;
    assert_eq!(state["unread_count"], 1, "{state}");
    let list = bob_phone
        .request(json!({"type": "conversations"}), "c1")
        .await;
    assert_eq!(list["total_unread"], 1);

    // The peer sees how far bob has read (read ticks).
    let list = alice.request(json!({"type": "conversations"}), "c2").await;
    assert_eq!(
        list["conversations"][0]["peer_read_marker"],
        (last_id.parse::<u64>().unwrap() - 1).to_string()
    );
}

#[tokio::test]
async fn group_roles_decide_who_may_change_the_group() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v2("alice").await;
    let mut bob = server.connect_v2("bob").await;
    let group = alice.create_group("Team", &["bob", "carol"], "g1").await;

    let refused = bob
        .request(
            json!({"type": "add_members", "conversation_id": group, "users": ["dave"]}),
            "r1",
        )
        .await;
    assert_eq!(refused["code"], "not_allowed", "{refused}");

    let done = alice
        .request(
            json!({"type": "set_role", "conversation_id": group, "user": "bob", "role": "admin"}),
            "r2",
        )
        .await;
    assert_eq!(done["type"], "done", "{done}");
    let changed = wait_for_event(&mut bob, "role_changed").await;
    assert_eq!(changed["user"], "bob");
    assert_eq!(changed["role"], "admin");

    let done = bob
        .request(
            json!({"type": "add_members", "conversation_id": group, "users": ["dave"]}),
            "r3",
        )
        .await;
    assert_eq!(done["type"], "done", "{done}");
    let added = wait_for_event(&mut alice, "members_added").await;
    assert_eq!(added["users"], json!(["dave"]));

    // An admin may not remove the owner.
    let refused = bob
        .request(
            json!({"type": "remove_member", "conversation_id": group, "user": "alice"}),
            "r4",
        )
        .await;
    assert_eq!(refused["code"], "not_allowed");

    let members = bob
        .request(json!({"type": "members", "conversation_id": group}), "r5")
        .await;
    let names: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol", "dave"]);

    // The owner leaves: the admin becomes the owner.
    let done = alice
        .request(
            json!({"type": "leave_group", "conversation_id": group}),
            "r6",
        )
        .await;
    assert_eq!(done["type"], "done");
    let left = wait_for_event(&mut bob, "member_left").await;
    assert_eq!(left["user"], "alice");
    let owner = wait_for_event(&mut bob, "role_changed").await;
    assert_eq!(owner["user"], "bob");
    assert_eq!(owner["role"], "owner");
    let gone = alice
        .request(
            json!({"type": "send", "conversation_id": group, "text": "hi", "client_msg_id": "x"}),
            "r7",
        )
        .await;
    assert_eq!(gone["code"], "not_a_member");
}

#[tokio::test]
async fn a_new_member_sees_history_from_when_it_joined() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v2("alice").await;
    let mut dave = server.connect_v2("dave").await;
    let group = alice.create_group("Team", &["bob"], "g1").await;
    alice.send_to(&group, "before dave", "m1").await;
    alice
        .request(
            json!({"type": "add_members", "conversation_id": group, "users": ["dave"]}),
            "r1",
        )
        .await;
    alice.send_to(&group, "after dave", "m2").await;
    let history = dave
        .request(json!({"type": "history", "conversation_id": group}), "h1")
        .await;
    assert_eq!(history["type"], "history", "{history}");
    assert!(history.get("with").is_none());
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["after dave"]);
}

#[tokio::test]
async fn group_readers_are_listed_on_demand_and_small_groups_get_live_receipts() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v2("alice").await;
    let mut bob = server.connect_v2("bob").await;
    let group = alice.create_group("Team", &["bob", "carol"], "g1").await;
    let ack = alice.send_to(&group, "read me", "m1").await;
    let message_id = ack["message_id"].as_str().unwrap().to_owned();
    bob.wait_for("message").await;
    bob.request(
        json!({"type": "mark_read", "conversation_id": group, "message_id": message_id}),
        "r1",
    )
    .await;
    let live = alice.wait_for("receipt").await;
    assert_eq!(live["user"], "bob");
    assert_eq!(live["message_id"], message_id.as_str());

    let receipts = alice
        .request(
            json!({"type": "read_receipts", "conversation_id": group, "message_id": message_id}),
            "r2",
        )
        .await;
    assert_eq!(receipts["type"], "read_receipts", "{receipts}");
    let readers: Vec<&str> = receipts["readers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user"].as_str().unwrap())
        .collect();
    assert_eq!(readers, ["bob"], "carol has not read it; alice wrote it");
}

#[tokio::test]
async fn typing_in_a_group_reaches_the_other_members() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v2("alice").await;
    let mut bob = server.connect_v2("bob").await;
    let group = alice.create_group("Team", &["bob"], "g1").await;
    alice
        .send_json(json!({"type": "typing", "conversation_id": group}))
        .await;
    let typing = bob.wait_for("typing").await;
    assert_eq!(typing["from"], "alice");
    assert_eq!(typing["conversation_id"], group.as_str());
}

#[tokio::test]
async fn a_client_subscribes_to_the_presence_of_a_groups_members() {
    let server = TestServer::start().await;
    let mut alice = server.connect_v2("alice").await;
    let _bob = server.connect_v2("bob").await;
    let group = alice.create_group("Team", &["bob", "carol"], "g1").await;
    let snapshot = alice
        .request(
            json!({"type": "presence_subscribe", "conversation_id": group}),
            "p1",
        )
        .await;
    assert_eq!(snapshot["type"], "presence_snapshot", "{snapshot}");
    assert_eq!(
        snapshot["users"],
        json!({"bob": "online", "carol": "offline"})
    );
}

#[tokio::test]
async fn group_creation_is_idempotent_and_checks_its_limits() {
    let server = TestServer::start_with(|config| config.groups.max_members = 3).await;
    let mut alice = server.connect_v2("alice").await;
    let first = alice.create_group("Team", &["bob"], "g1").await;
    let again = alice
        .request(
            json!({"type": "create_group", "title": "Other", "client_msg_id": "g1"}),
            "r1",
        )
        .await;
    assert_eq!(again["conversation_id"], first.as_str());
    assert_eq!(again["duplicate"], true);

    let full = alice.request(json!({"type": "create_group", "title": "Big", "members": ["b", "c", "d"], "client_msg_id": "g2"}),
        "r2",
    )
    .await;
    assert_eq!(full["code"], "group_full", "{full}");
    assert_eq!(full["client_msg_id"], "g2");

    let blank = alice
        .request(
            json!({"type": "create_group", "title": "  ", "client_msg_id": "g3"}),
            "r3",
        )
        .await;
    assert_eq!(blank["code"], "bad_request", "{blank}");
}
