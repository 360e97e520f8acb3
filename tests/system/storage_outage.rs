//! When the storage service is unreachable, the gateway keeps accepting sends into its
//! bounded outbox, answers `unavailable` only once it is full, and commits everything in order
//! when storage returns.

use crate::common;

use crate::common::{TestServer, eventually, free_addr, start_store};
use serde_json::json;

#[tokio::test]
async fn sends_queue_while_storage_is_down_and_are_acked_in_order_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store_addr = free_addr();
    let store = start_store(dir.path(), store_addr).await;
    let server = TestServer::start_with(|c| {
        c.storage.embedded = false;
        c.storage.endpoint = format!("http://{store_addr}").into();
        c.storage.max_pending = 3;
        c.storage.reconnect_initial_ms = 10;
        c.storage.reconnect_max_ms = 100;
    })
    .await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.dm("bob", "before", "m0").await;
    assert_eq!(bob.expect("message").await["text"], "before");

    store.stop().await;
    for i in 1..=3 {
        alice
            .send_json(json!({"type": "send", "to": "bob", "text": format!("t{i}"), "client_msg_id": format!("m{i}")}))
            .await;
    }
    // Accepted silently: no ack yet, and no error either.
    assert!(alice.frames_until_pong().await.is_empty());
    eventually("storage is seen as down", || !server.gateway.storage_up()).await;
    assert_eq!(server.gateway.pending_writes(), 3);

    // The outbox is full: the next send is refused, retryably, and named.
    let refused = alice.send_dm("bob", "t4", "m4").await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "unavailable");
    assert_eq!(refused["retryable"], true);
    assert_eq!(refused["client_msg_id"], "m4");

    // Reads say so too, instead of hanging.
    alice
        .send_json(json!({"type": "sync", "after_seq": 0, "req_id": "s"}))
        .await;
    let error = alice.expect("error").await;
    assert_eq!(error["code"], "unavailable");
    assert_eq!(error["req_id"], "s");

    let store = start_store(dir.path(), store_addr).await;
    for i in 1..=3 {
        let ack = alice.expect("ack").await;
        assert_eq!(ack["client_msg_id"], format!("m{i}"));
        assert_eq!(ack["seq"], i + 1);
        assert_eq!(ack["duplicate"], false);
    }
    for i in 1..=3 {
        let message = bob.expect("message").await;
        assert_eq!(message["text"], format!("t{i}"));
        assert_eq!(message["seq"], i + 1);
    }
    // The refused one goes through on retry.
    alice.dm("bob", "t4", "m4").await;
    let seqs: Vec<u64> = bob
        .sync_all(0)
        .await
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(server.gateway.pending_writes(), 0);
    store.stop().await;
}

#[tokio::test]
async fn a_gateway_fails_over_to_another_storage_service_of_the_same_database() {
    // Two storage services over one PostgreSQL database, as two `peroxo store` would be.
    let (name, url) = common::postgres::create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let (first_addr, second_addr) = (free_addr(), free_addr());
    let start = |addr| {
        let config = common::postgres_storage(dir.path(), addr, url.clone());
        async move { peroxo_storage::StoreServer::start(&config).await.unwrap() }
    };
    let first = start(first_addr).await;
    let second = start(second_addr).await;
    let server = TestServer::start_with(|c| {
        c.storage.embedded = false;
        c.storage.endpoint = vec![
            format!("http://{first_addr}"),
            format!("http://{second_addr}"),
        ]
        .into();
        c.storage.reconnect_initial_ms = 10;
        c.storage.reconnect_max_ms = 100;
    })
    .await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.dm("bob", "through the first", "m1").await;
    assert_eq!(bob.expect("message").await["text"], "through the first");

    first.stop().await;
    // Acked through the second, with no gap in the streams.
    let ack = alice.dm("bob", "through the second", "m2").await;
    assert_eq!(ack["seq"], 2);
    let message = bob.expect("message").await;
    assert_eq!(message["text"], "through the second");
    assert_eq!(message["seq"], 2);
    alice
        .send_json(json!({"type": "sync", "after_seq": 0, "req_id": "s"}))
        .await;
    assert_eq!(
        alice.expect("sync").await["messages"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    drop(server);
    second.stop().await;
    common::postgres::drop_database(&name).await;
}

#[tokio::test]
async fn a_client_connecting_while_storage_is_unreachable_is_told_to_come_back() {
    let server = TestServer::start_with(|c| {
        c.storage.embedded = false;
        c.storage.endpoint = format!("http://{}", free_addr()).into();
        c.storage.rpc_timeout_ms = 200;
        c.storage.connect_timeout_ms = 100;
    })
    .await;
    let mut alice = common::Client::connect_raw(&server.ws_url("default", "alice")).await;
    let close = alice.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1013);
}
