//! The client library (`peroxo-client`) against real gateways: a send is acked and delivered;
//! a node stopped mid-send and started again on the same database loses nothing acked and
//! delivers every message once, in order; a message that skips a seq makes the client sync; a
//! protocol-1 client passes over the seqs of the events protocol 2 puts in its stream.

use std::collections::BTreeSet;
use std::time::Duration;

use peroxo_client::{Backoff, Client, ClientConfig, Delivered, Event, Events, Via};
use serde_json::json;
use tokio::time::Instant;

use crate::common::{DEADLINE, TestServer, free_addr, start_store};

/// A client config with quick reconnects, for tests.
fn config(urls: Vec<String>) -> ClientConfig {
    let mut config = ClientConfig::with_urls(urls);
    config.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(300),
    };
    config.connect_timeout = Duration::from_secs(3);
    config
}

fn url(addr: std::net::SocketAddr, user: &str) -> String {
    format!("ws://{addr}/ws?user={user}&tenant=default")
}

/// The next `n` messages of the user's stream, waiting at most `deadline` in all; every other
/// event is handed to `other`.
async fn messages(
    events: &mut Events,
    n: usize,
    deadline: Duration,
    mut other: impl FnMut(&Event),
) -> Vec<Delivered> {
    let until = Instant::now() + deadline;
    let mut messages = Vec::new();
    while messages.len() < n {
        let event = tokio::time::timeout_at(until, events.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", messages.len()))
            .expect("the client is running");
        match event {
            Event::Message(message) => messages.push(message),
            other_event => other(&other_event),
        }
    }
    messages
}

#[tokio::test]
async fn a_send_is_acked_and_delivered_once_to_both_streams() {
    let server = TestServer::start().await;
    let addr = server.gateway.http_addr;
    let (alice, mut alice_events) = Client::connect(config(vec![url(addr, "alice")]))
        .await
        .unwrap();
    let (_bob, mut bob_events) = Client::connect(config(vec![url(addr, "bob")]))
        .await
        .unwrap();

    let ack = alice.send("bob", "hi bob").await.unwrap();
    assert_eq!((ack.seq, ack.duplicate), (1, false));
    assert_eq!(ack.conversation_id, "alice:bob");

    let received = messages(&mut bob_events, 1, DEADLINE, |_| {}).await;
    assert_eq!(received[0].message_id, ack.message_id);
    assert_eq!(
        (
            received[0].seq,
            received[0].from.as_str(),
            received[0].text.as_str()
        ),
        (1, "alice", "hi bob")
    );
    assert_eq!(received[0].via, Via::Live);
    let own = messages(&mut alice_events, 1, DEADLINE, |_| {}).await;
    assert_eq!((own[0].seq, own[0].via), (1, Via::Ack));
    assert_eq!(
        own[0].client_msg_id.as_deref(),
        Some(ack.client_msg_id.as_str())
    );
    assert_eq!(alice.last_seq(), 1);
}

/// Checks that `stream` is seqs 1..=n, each once, in order.
fn assert_in_order_once(who: &str, stream: &[Delivered]) {
    let seqs: Vec<u64> = stream.iter().map(|m| m.seq).collect();
    let expected: Vec<u64> = (1..=stream.len() as u64).collect();
    assert_eq!(seqs, expected, "{who}'s stream is every seq once, in order");
}

#[tokio::test]
async fn a_node_restarted_mid_send_on_the_same_database_loses_nothing_acked() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("peroxo.db");
    let (first_addr, second_addr) = (free_addr(), free_addr());
    let node = |listen: std::net::SocketAddr| {
        let db = db.clone();
        move |c: &mut peroxo_config::Config| {
            c.http.listen = listen;
            c.storage.sqlite_path = db;
            c.limits.rate_per_sec = 100_000;
            c.limits.rate_burst = 100_000;
        }
    };
    let server = TestServer::start_with(node(first_addr)).await;
    // The node comes back on another address: the clients know both and move over.
    let urls = |user: &str| vec![url(first_addr, user), url(second_addr, user)];
    let (alice, mut alice_events) = Client::connect(config(urls("alice"))).await.unwrap();
    let (_bob, mut bob_events) = Client::connect(config(urls("bob"))).await.unwrap();

    // Half the sends go before the node stops, half while it stops and is down.
    let total = 60;
    let mut submitted = Vec::new();
    for i in 0..total / 2 {
        submitted.push(alice.submit("bob", format!("message {i}")).unwrap());
    }
    messages(&mut bob_events, 1, DEADLINE, |_| {}).await;
    let shutdown = tokio::spawn(server.gateway.shutdown());
    for i in total / 2..total {
        submitted.push(alice.submit("bob", format!("message {i}")).unwrap());
    }
    shutdown.await.unwrap();
    let _again = TestServer::start_with(node(second_addr)).await;

    let mut acked = BTreeSet::new();
    for send in submitted {
        let ack = tokio::time::timeout(DEADLINE * 3, send.acked())
            .await
            .expect("every send is acked in the end")
            .expect("no send is refused");
        assert!(
            acked.insert(ack.message_id),
            "two sends acked as one message"
        );
    }
    // The first message was read above.
    let stream = messages(&mut bob_events, total - 1, DEADLINE * 3, |_| {}).await;
    let delivered: BTreeSet<String> = stream.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(delivered.len(), total - 1);
    assert!(
        delivered.is_subset(&acked),
        "bob receives only acked messages"
    );
    let seqs: Vec<u64> = stream.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (2..=total as u64).collect::<Vec<_>>(),
        "once, in order"
    );

    let mut reconnected = false;
    let own = messages(&mut alice_events, total, DEADLINE * 3, |event| {
        reconnected |= is_connected_to(event, second_addr);
    })
    .await;
    assert_in_order_once("alice", &own);
    let own_ids: BTreeSet<String> = own.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(own_ids, acked, "alice's stream holds every acked message");
    let until = Instant::now() + DEADLINE;
    while !reconnected {
        match tokio::time::timeout_at(until, alice_events.next()).await {
            Ok(Some(event)) => reconnected = is_connected_to(&event, second_addr),
            _ => panic!("alice did not move to the restarted node"),
        }
    }
}

fn is_connected_to(event: &Event, addr: std::net::SocketAddr) -> bool {
    matches!(event, Event::Connected { url, .. } if url.contains(&addr.to_string()))
}

#[tokio::test]
async fn a_message_that_skips_a_seq_makes_the_client_sync_the_gap() {
    // Two nodes that share storage but are not clustered: a message sent through the other
    // node reaches bob only through `sync`.
    let dir = tempfile::tempdir().unwrap();
    let store_addr = free_addr();
    let store = start_store(dir.path(), store_addr).await;
    let external = move |c: &mut peroxo_config::Config| {
        c.storage.embedded = false;
        c.storage.endpoint = format!("http://{store_addr}").into();
    };
    let near = TestServer::start_with(external).await;
    let far = TestServer::start_with(external).await;
    let (_bob, mut bob_events) = Client::connect(config(vec![url(near.gateway.http_addr, "bob")]))
        .await
        .unwrap();
    let (carol, _carol_events) = Client::connect(config(vec![url(far.gateway.http_addr, "carol")]))
        .await
        .unwrap();
    let (alice, _alice_events) =
        Client::connect(config(vec![url(near.gateway.http_addr, "alice")]))
            .await
            .unwrap();

    let missed = carol.send("bob", "through the other node").await.unwrap();
    let live = alice.send("bob", "through bob's node").await.unwrap();
    assert_eq!(
        (
            missed.conversation_id.as_str(),
            live.conversation_id.as_str()
        ),
        ("bob:carol", "alice:bob")
    );

    let mut synced = false;
    let stream = messages(&mut bob_events, 2, DEADLINE, |event| {
        synced |= matches!(event, Event::Synced { .. });
    })
    .await;
    assert_in_order_once("bob", &stream);
    assert_eq!(stream[0].from, "carol");
    assert_eq!(
        stream[0].via,
        Via::Sync,
        "the missed message came through sync"
    );
    assert_eq!(stream[1].from, "alice");
    assert_eq!(
        stream[1].via,
        Via::Live,
        "the live one waited for the gap to fill"
    );
    // The sync cycle completes after its last message is delivered.
    let until = Instant::now() + DEADLINE;
    while !synced {
        match tokio::time::timeout_at(until, bob_events.next()).await {
            Ok(Some(Event::Synced { delivered, .. })) => {
                assert_eq!(delivered, 2);
                synced = true;
            }
            Ok(Some(_)) => {}
            _ => panic!("no sync completed"),
        }
    }
    drop((near, far));
    store.stop().await;
}

#[tokio::test]
async fn a_protocol_1_client_passes_over_the_events_a_protocol_2_peer_puts_in_its_stream() {
    let server = TestServer::start().await;
    let addr = server.gateway.http_addr;
    let (bob, mut bob_events) = Client::connect(config(vec![url(addr, "bob")]))
        .await
        .unwrap();
    let mut alice = server.connect_v2("alice").await;

    let hi = bob.send("alice", "hi alice").await.unwrap();
    assert_eq!(hi.seq, 1);
    alice.wait_for("message").await;
    // Alice reads it: a `read_receipt` event takes seq 2 of bob's stream, which bob's
    // protocol-1 connection never sees.
    alice
        .send_json(json!({"type": "mark_read", "conversation_id": "alice:bob",
            "message_id": hi.message_id, "req_id": "m1"}))
        .await;
    assert_eq!(
        alice.wait_for("read_state").await["read_marker"],
        hi.message_id
    );
    let reply = alice.dm("bob", "hi bob", "a1").await;

    let mut anomalies = Vec::new();
    let stream = messages(&mut bob_events, 2, DEADLINE, |event| {
        if let Event::Anomaly(what) = event {
            anomalies.push(what.clone());
        }
    })
    .await;
    assert_eq!(stream[1].message_id, reply["message_id"]);
    assert_eq!(stream[1].seq, 3, "seq 2 is the receipt");
    assert!(anomalies.is_empty(), "{anomalies:?}");
    let until = Instant::now() + DEADLINE;
    while bob.last_seq() < 3 {
        assert!(
            Instant::now() < until,
            "bob's client stopped at {}",
            bob.last_seq()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
