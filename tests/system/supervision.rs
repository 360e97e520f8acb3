//! Crashed actors are restarted without dropping connections or losing accepted messages.
//! Crashes are injected through the `test-hooks` feature, which no client can reach.

use crate::common;

use crate::common::{TestServer, eventually};
use peroxo_gateway::telemetry::ActorKind;
use serde_json::json;

#[tokio::test]
async fn a_crashed_session_is_restarted_on_the_same_socket_with_an_internal_error() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice
        .send_json(json!({"type": "presence_subscribe", "users": ["carol"]}))
        .await;
    alice.expect("presence_snapshot").await;

    assert_eq!(
        server.gateway.crash_sessions_of("default", "alice").await,
        1
    );
    let error = alice.expect("error").await;
    assert_eq!(error["code"], "internal");
    assert_eq!(error["retryable"], true);
    assert_eq!(server.gateway.restarts(ActorKind::Session), 1);
    let (_, metrics) = common::http_request(server.gateway.http_addr, "GET", "/metrics", "").await;
    let count = |name, labels| common::metric_sample(&metrics, name, labels);
    assert_eq!(
        count("peroxo_actor_restarts_total", "actor=\"session\""),
        Some(1.0)
    );
    assert_eq!(count("peroxo_errors_total", "code=\"internal\""), Some(1.0));

    // The same socket keeps working in both directions.
    let ack = alice.dm("bob", "after the crash", "m1").await;
    assert_eq!(ack["seq"], 1);
    assert_eq!(bob.expect("message").await["text"], "after the crash");
    bob.dm("alice", "reply", "r1").await;
    assert_eq!(alice.expect("message").await["text"], "reply");

    // The watch list survived the restart.
    let _carol = server.connect("carol").await;
    let presence = alice.expect("presence").await;
    assert_eq!(presence["user"], "carol");
    assert_eq!(presence["status"], "online");
}

#[tokio::test]
async fn a_restarted_session_goes_on_with_the_rate_bucket_as_it_was() {
    let server = TestServer::start_with(|c| {
        c.limits.rate_per_sec = 1;
        c.limits.rate_burst = 10;
        c.groups.members_per_rate_token = 1;
    })
    .await;
    let mut alice = server.connect_v2("alice").await;
    // A send to a group of 30, one token per member, empties the bucket down to its floor
    // (minus one burst): about 10 s from the next allowed command.
    let members: Vec<String> = (1..30).map(|i| format!("m{i}")).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let group = alice.create_group("Big", &members, "g1").await;
    alice.send_to(&group, "hi", "s1").await;
    alice
        .send_json(json!({"type": "ping", "req_id": "before"}))
        .await;
    assert_eq!(alice.wait_for("error").await["code"], "rate_limited");

    assert_eq!(
        server.gateway.crash_sessions_of("default", "alice").await,
        1
    );
    assert_eq!(alice.wait_for("error").await["code"], "internal");
    // A fresh bucket would hold 10 tokens and answer this ping.
    alice
        .send_json(json!({"type": "ping", "req_id": "after"}))
        .await;
    let refused = alice.wait_for("error").await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert_eq!(refused["req_id"], "after");
}

#[tokio::test]
async fn a_session_that_keeps_failing_is_closed_with_1011() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    for restart in 1..=3 {
        assert_eq!(
            server.gateway.crash_sessions_of("default", "alice").await,
            1
        );
        assert_eq!(
            alice.expect("error").await["code"],
            "internal",
            "restart {restart}"
        );
    }
    assert_eq!(
        server.gateway.crash_sessions_of("default", "alice").await,
        1
    );
    let close = alice.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1011);

    // The user is gone from the Router; others are unaffected.
    let mut bob = server.connect("bob").await;
    bob.send_json(json!({"type": "online_users"})).await;
    assert_eq!(bob.expect("online_users").await["users"], json!(["bob"]));
}

#[tokio::test]
async fn after_a_router_crash_existing_sessions_still_exchange_messages() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.dm("bob", "before", "m0").await;
    assert_eq!(bob.expect("message").await["text"], "before");

    server.gateway.crash_router();
    eventually("the router has restarted", || {
        server.gateway.restarts(ActorKind::Router) == 1
    })
    .await;

    // The new Router knows both sessions before it answers anything.
    alice.send_json(json!({"type": "online_users"})).await;
    assert_eq!(
        alice.wait_for("online_users").await["users"],
        json!(["alice", "bob"])
    );
    let ack = alice.dm("bob", "after", "m1").await;
    let message = bob.wait_for("message").await;
    assert_eq!(message["text"], "after");
    assert_eq!(message["message_id"], ack["message_id"]);
    bob.dm("alice", "and back", "r1").await;
    assert_eq!(alice.wait_for("message").await["text"], "and back");
}

#[tokio::test]
async fn a_crashed_persistence_keeps_every_accepted_message() {
    let dir = tempfile::tempdir().unwrap();
    let store_addr = common::free_addr();
    let mut store = common::start_store(dir.path(), store_addr).await;
    let server = TestServer::start_with(|c| {
        c.storage.embedded = false;
        c.storage.endpoint = format!("http://{store_addr}").into();
        c.storage.reconnect_max_ms = 100;
    })
    .await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;

    // Writes wait in the outbox while storage is away...
    store.stop().await;
    for i in 0..3 {
        alice
            .send_json(json!({"type": "send", "to": "bob", "text": format!("t{i}"), "client_msg_id": format!("m{i}")}))
            .await;
    }
    eventually("the writes are in the outbox", || {
        server.gateway.pending_writes() == 3
    })
    .await;
    // ...and survive Persistence crashing.
    server.gateway.crash_persistence();
    eventually("persistence has restarted", || {
        server.gateway.restarts(ActorKind::Persistence) == 1
    })
    .await;
    store = common::start_store(dir.path(), store_addr).await;

    for i in 0..3 {
        let ack = alice.wait_for("ack").await;
        assert_eq!(ack["client_msg_id"], format!("m{i}"));
        assert_eq!(ack["seq"], i + 1);
    }
    let texts: Vec<_> = bob
        .sync_all(0)
        .await
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["t0", "t1", "t2"]);
    store.stop().await;
}
