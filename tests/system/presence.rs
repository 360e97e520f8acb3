//! Presence snapshots and events, online users, and typing indicators.

use crate::common::TestServer;
use serde_json::json;

#[tokio::test]
async fn a_snapshot_then_events_when_a_watched_user_comes_and_goes() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let bob = server.connect("bob").await;

    alice
        .send_json(json!({"type": "presence_subscribe", "users": ["bob", "carol"], "req_id": "p"}))
        .await;
    let snapshot = alice.expect("presence_snapshot").await;
    assert_eq!(snapshot["req_id"], "p");
    assert_eq!(
        snapshot["users"],
        json!({"bob": "online", "carol": "offline"})
    );

    let carol = server.connect("carol").await;
    let online = alice.expect("presence").await;
    assert_eq!(online["user"], "carol");
    assert_eq!(online["status"], "online");

    // A second device of bob changes nothing; the last one leaving does.
    let bob_laptop = server.connect("bob").await;
    bob_laptop.close().await;
    bob.close().await;
    let offline = alice.expect("presence").await;
    assert_eq!(offline["user"], "bob");
    assert_eq!(offline["status"], "offline");

    alice
        .send_json(json!({"type": "presence_unsubscribe", "users": ["carol"]}))
        .await;
    carol.close().await;
    assert!(
        alice.frames_until_pong().await.is_empty(),
        "no event after unsubscribing"
    );
}

#[tokio::test]
async fn online_users_lists_the_tenants_live_users_up_to_the_limit() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let _bob = server.connect("bob").await;
    let _carol = server.connect("carol").await;
    let _other = server.connect_in("elsewhere", "dave").await;

    alice
        .send_json(json!({"type": "online_users", "req_id": 1}))
        .await;
    let all = alice.expect("online_users").await;
    assert_eq!(all["req_id"], 1);
    assert_eq!(all["users"], json!(["alice", "bob", "carol"]));
    assert_eq!(all["truncated"], false);

    alice
        .send_json(json!({"type": "online_users", "limit": 2}))
        .await;
    let some = alice.expect("online_users").await;
    assert_eq!(some["users"], json!(["alice", "bob"]));
    assert_eq!(some["truncated"], true);
}

#[tokio::test]
async fn typing_is_relayed_to_the_recipients_sessions_only() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;

    alice
        .send_json(json!({"type": "typing", "to": "bob"}))
        .await;
    let typing = bob.expect("typing").await;
    assert_eq!(typing["from"], "alice");
    assert!(carol.frames_until_pong().await.is_empty());
    assert!(alice.frames_until_pong().await.is_empty());
}

#[tokio::test]
async fn presence_does_not_cross_tenants() {
    let server = TestServer::start().await;
    let mut watcher = server.connect_in("acme", "alice").await;
    watcher
        .send_json(json!({"type": "presence_subscribe", "users": ["bob"]}))
        .await;
    let snapshot = watcher.expect("presence_snapshot").await;
    assert_eq!(snapshot["users"]["bob"], "offline");
    let _bob_elsewhere = server.connect_in("globex", "bob").await;
    assert!(watcher.frames_until_pong().await.is_empty());
    let _bob = server.connect_in("acme", "bob").await;
    assert_eq!(watcher.expect("presence").await["status"], "online");
}
