//! Several gateway nodes over NATS, storage on PostgreSQL: every single-node guarantee
//! holds across nodes, a killed node's users move elsewhere and lose nothing, and NATS
//! restarting mid-traffic costs no message.
//!
//! Needs PostgreSQL (see `common::postgres`) and the `nats-server` binary (Debian package
//! `nats-server`; or `NATS_SERVER` naming it). The test starts NATS itself, on a free port,
//! with its own subjects.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::{Client, Process, free_addr, start_nats};
use peroxo_config::{Secret, StorageBackend};
use serde_json::{Value, json};

/// A gateway node run as its own process, so it can be killed for real.
struct Node {
    process: Process,
    addr: String,
}

impl Node {
    fn start(
        name: &str,
        store: std::net::SocketAddr,
        nats: std::net::SocketAddr,
        prefix: &str,
    ) -> Self {
        Self::start_with(name, store, nats, prefix, "")
    }

    /// [`Node::start`] with `extra` TOML appended to the node's configuration.
    fn start_with(
        name: &str,
        store: std::net::SocketAddr,
        nats: std::net::SocketAddr,
        prefix: &str,
        extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\
             [auth]\nmode = \"dev\"\n\
             [storage]\nembedded = false\nendpoint = \"http://{store}\"\nreconnect_max_ms = 200\n\
             [limits]\nrate_per_sec = 1000\nrate_burst = 1000\n\
             [cluster]\nmode = \"nats\"\nnats_url = \"nats://{nats}\"\nnode_id = \"{name}\"\n\
             subject_prefix = \"{prefix}\"\npresence_ttl_secs = \"2s\"\n\
             [[server_api.keys]]\ntenant = \"default\"\nname = \"test\"\nsha256 = \"{key}\"\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n{extra}",
            key = api_key_sha256()
        );
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_peroxo"));
        command.args(["serve", "--config"]).arg(&path);
        for (name, _) in std::env::vars() {
            if name.starts_with("PEROXO_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        let mut process = Process::spawn(&mut command);
        let addr = process.wait_for_log("gateway listening")["addr"]
            .as_str()
            .unwrap()
            .to_owned();
        // The config file may go: it has been read.
        drop(dir);
        Self { process, addr }
    }

    async fn connect(&self, user: &str) -> Client {
        Client::connect(&format!("ws://{}/ws?user={user}", self.addr)).await
    }
}

/// The server API key every node of these tests accepts.
const API_KEY: &str = "pxk_cluster_test_key";

fn api_key_sha256() -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(API_KEY.as_bytes()))
}

/// Calls the server API of the node at `addr`; returns the status and the JSON body.
async fn api(addr: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let headers = format!("Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n");
    let (status, text) = common::try_http_request_with_body(
        addr.parse().unwrap(),
        method,
        path,
        &headers,
        &body.to_string(),
    )
    .await
    .unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

/// Everything `user` has, through sync, as (seq, text).
async fn stored_for(client: &mut Client) -> Vec<(u64, String)> {
    client
        .sync_all(0)
        .await
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn assert_gapless(stream: &[(u64, String)]) {
    let seqs: Vec<u64> = stream.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gapless from 1"
    );
}

/// Waits until `client` receives a `presence` event for `user` with `status`.
async fn presence_of(client: &mut Client, user: &str, status: &str) {
    loop {
        let frame = client.wait_for("presence").await;
        if frame["user"] == user && frame["status"] == status {
            return;
        }
    }
}

#[tokio::test]
async fn nodes_share_delivery_presence_and_survive_a_node_kill_and_a_nats_restart() {
    let nats_dir = tempfile::tempdir().unwrap();
    let nats_addr = free_addr();
    let mut nats = start_nats(nats_addr, nats_dir.path());
    let (database, url) = common::postgres::create_database().await;
    let store_dir = tempfile::tempdir().unwrap();
    let mut stores = Vec::new();
    for _ in 0..2 {
        let mut config = common::test_config(store_dir.path()).storage;
        config.backend = StorageBackend::Postgres;
        config.postgres.url = Secret::new(url.clone());
        stores.push(peroxo_storage::StoreServer::start(&config).await.unwrap());
    }
    let prefix = format!("t{}x{}", std::process::id(), free_addr().port());
    let n1 = Node::start("n1", stores[0].addr, nats_addr, &prefix);
    let mut n2 = Node::start("n2", stores[0].addr, nats_addr, &prefix);
    let n3 = Node::start("n3", stores[1].addr, nats_addr, &prefix);

    // Users on different nodes exchange DMs, live.
    let mut alice = n1.connect("alice").await;
    let mut bob = n2.connect("bob").await;
    let ack = alice.dm("bob", "hello from n1", "a1").await;
    // (A `sync_hint` may come first: nodes that just met ask each other to resync.)
    let message = bob.wait_for("message").await;
    assert_eq!(message["message_id"], ack["message_id"]);
    bob.dm("alice", "hello from n2", "b1").await;
    assert_eq!(alice.wait_for("message").await["text"], "hello from n2");

    // Multi-device across nodes: the recipient's and the sender's other devices.
    let mut alice_2 = n3.connect("alice").await;
    let mut bob_2 = n3.connect("bob").await;
    let ack = alice.dm("bob", "to every device", "a2").await;
    assert_eq!(
        bob.wait_for("message").await["message_id"],
        ack["message_id"]
    );
    assert_eq!(
        bob_2.wait_for("message").await["message_id"],
        ack["message_id"]
    );
    let copy = alice_2.wait_for("message").await;
    assert_eq!(copy["message_id"], ack["message_id"]);
    assert_eq!(copy["seq"], ack["seq"]);

    // Presence is cluster-wide.
    let mut carol = n1.connect("carol").await;
    carol
        .send_json(json!({"type": "presence_subscribe", "users": ["dave", "bob"]}))
        .await;
    let snapshot = carol.wait_for("presence_snapshot").await;
    assert_eq!(
        snapshot["users"],
        json!({"bob": "online", "dave": "offline"})
    );
    let dave = n2.connect("dave").await;
    presence_of(&mut carol, "dave", "online").await;
    let mut erin = n3.connect("erin").await;
    erin.send_json(json!({"type": "online_users"})).await;
    let online = erin.wait_for("online_users").await;
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        assert!(
            online["users"].as_array().unwrap().contains(&json!(user)),
            "{online}"
        );
    }

    // n2 dies: dave goes offline for watchers within the TTL (bob has another device).
    n2.process.kill();
    drop(dave);
    presence_of(&mut carol, "dave", "offline").await;
    // bob's n2 device reconnects to n3 and finds everything, exactly once.
    let mut bob_again = n3.connect("bob").await;
    let stream = stored_for(&mut bob_again).await;
    assert_gapless(&stream);
    let texts: Vec<&str> = stream.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["hello from n1", "hello from n2", "to every device"]);

    // NATS dies mid-traffic and comes back: every message still reaches bob exactly once.
    let mut sent = Vec::new();
    let mut last_seen: u64 = stream.last().unwrap().0;
    let mut received: BTreeMap<u64, String> = BTreeMap::new();
    for i in 0..10 {
        if i == 4 {
            nats.kill();
        }
        if i == 7 {
            nats = start_nats(nats_addr, nats_dir.path());
        }
        let text = format!("through the outage {i}");
        alice.dm("bob", &text, &format!("o{i}")).await;
        sent.push(text);
    }
    // A correct client: take live messages, and sync on `sync_hint` or a gap.
    let deadline = tokio::time::Instant::now() + common::DEADLINE * 3;
    while received.len() < sent.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still missing {:?}",
            received
        );
        let frame = bob_again.next().await;
        let synced: Vec<Value> = match frame["type"].as_str() {
            Some("message") => {
                let seq = frame["seq"].as_u64().unwrap();
                if seq == last_seen + 1 {
                    vec![frame]
                } else {
                    bob_again.sync_all(last_seen).await
                }
            }
            Some("sync_hint") => bob_again.sync_all(last_seen).await,
            _ => Vec::new(),
        };
        for m in synced {
            let seq = m["seq"].as_u64().unwrap();
            if seq > last_seen {
                last_seen = seq;
                assert!(
                    received
                        .insert(seq, m["text"].as_str().unwrap().to_owned())
                        .is_none(),
                    "seq {seq} twice"
                );
            }
        }
    }
    let got: HashSet<&String> = received.values().collect();
    assert_eq!(got.len(), sent.len());
    for text in &sent {
        assert!(got.contains(text), "{text} missing");
    }
    let stream = stored_for(&mut bob_again).await;
    assert_gapless(&stream);
    assert_eq!(stream.len(), 3 + sent.len(), "nothing stored twice");

    drop((n1, n3, alice, alice_2, bob, bob_2, carol, erin, bob_again));
    for store in stores {
        store.stop().await;
    }
    common::postgres::drop_database(&database).await;
}

impl Node {
    async fn connect_v2(&self, user: &str) -> Client {
        Client::connect(&format!("ws://{}/ws?user={user}&protocol=2", self.addr)).await
    }

    async fn connect_v3(&self, user: &str) -> Client {
        Client::connect(&format!("ws://{}/ws?user={user}&protocol=3", self.addr)).await
    }
}

#[tokio::test]
async fn edits_reactions_and_replies_cross_nodes_for_protocol_3_only() {
    let pair = NodePair::start("l").await;
    let (n1, n2) = (&pair.n1, &pair.n2);
    let mut alice = n1.connect_v3("alice").await;
    let mut bob = n2.connect_v3("bob").await;
    let mut bob_v2 = n2.connect_v2("bob").await;

    let ack = request(
        &mut alice,
        json!({"type": "send", "conversation_id": "alice:bob", "text": "typo", "client_msg_id": "m1"}),
        "r1",
    )
    .await;
    let id = ack["message_id"].as_str().unwrap().to_owned();
    bob.wait_for("message").await;
    let edited = request(
        &mut alice,
        json!({"type": "edit", "conversation_id": "alice:bob", "message_id": id, "text": "fixed", "client_msg_id": "e1"}),
        "r2",
    )
    .await;
    assert_eq!(edited["type"], "message_state", "{edited}");
    assert_eq!(
        wait_for_event(&mut bob, "message_edited").await["text"],
        "fixed"
    );
    let reacted = request(
        &mut bob,
        json!({"type": "react", "conversation_id": "alice:bob", "message_id": id, "emoji": "👍"}),
        "r3",
    )
    .await;
    assert_eq!(reacted["type"], "message_state", "{reacted}");
    assert_eq!(
        wait_for_event(&mut alice, "reaction_added").await["emoji"],
        "👍"
    );
    // A reply crosses with its quote to protocol 3, without it to protocol 2.
    request(
        &mut alice,
        json!({"type": "send", "conversation_id": "alice:bob", "text": "see above", "client_msg_id": "m2", "reply_to": id}),
        "r4",
    )
    .await;
    let reply = bob.wait_for("message").await;
    assert_eq!(reply["reply_to"]["excerpt"], "fixed", "{reply}");
    let frames: Vec<Value> = {
        let mut frames = Vec::new();
        while frames
            .last()
            .is_none_or(|f: &Value| f["text"] != "see above")
        {
            frames.push(bob_v2.next().await);
        }
        frames
    };
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["message", "message"], "{frames:?}");
    assert!(frames[1].get("reply_to").is_none(), "{}", frames[1]);

    drop((alice, bob, bob_v2));
    pair.stop().await;
}

/// Two gateway nodes joined through a NATS server of their own, over one storage service and
/// a fresh PostgreSQL database.
struct NodePair {
    n1: Node,
    n2: Node,
    store: peroxo_storage::StoreServer,
    database: String,
    _nats: Process,
    _dirs: [tempfile::TempDir; 2],
}

impl NodePair {
    /// Starts the pair; `tag` keeps its NATS subjects apart from other tests'.
    async fn start(tag: &str) -> Self {
        Self::start_with(tag, "").await
    }

    /// [`NodePair::start`] with `extra` TOML in both nodes' configuration.
    async fn start_with(tag: &str, extra: &str) -> Self {
        let nats_dir = tempfile::tempdir().unwrap();
        let nats_addr = free_addr();
        let nats = start_nats(nats_addr, nats_dir.path());
        let (database, url) = common::postgres::create_database().await;
        let store_dir = tempfile::tempdir().unwrap();
        let mut config = common::test_config(store_dir.path()).storage;
        config.backend = StorageBackend::Postgres;
        config.postgres.url = Secret::new(url);
        let store = peroxo_storage::StoreServer::start(&config).await.unwrap();
        let prefix = format!("t{}{tag}{}", std::process::id(), free_addr().port());
        Self {
            n1: Node::start_with("n1", store.addr, nats_addr, &prefix, extra),
            n2: Node::start_with("n2", store.addr, nats_addr, &prefix, extra),
            store,
            database,
            _nats: nats,
            _dirs: [nats_dir, store_dir],
        }
    }

    async fn stop(self) {
        drop((self.n1, self.n2));
        self.store.stop().await;
        common::postgres::drop_database(&self.database).await;
    }
}

/// Sends `command` with `req_id` and returns the frame answering it.
async fn request(client: &mut Client, mut command: Value, req_id: &str) -> Value {
    command["req_id"] = json!(req_id);
    client.send_json(command).await;
    loop {
        let frame = client.next().await;
        if frame["req_id"] == req_id {
            return frame;
        }
    }
}

/// Skips frames until a frame of `kind` (and, for events, of `event`) arrives.
async fn wait_for_event(client: &mut Client, event: &str) -> Value {
    loop {
        let frame = client.wait_for("event").await;
        if frame["event"] == event {
            return frame;
        }
    }
}

#[tokio::test]
async fn group_messages_events_and_receipts_reach_members_on_every_node() {
    let pair = NodePair::start("g").await;
    let (n1, n2) = (&pair.n1, &pair.n2);

    let mut alice = n1.connect_v2("alice").await;
    let mut carol = n1.connect_v2("carol").await;
    let mut bob = n2.connect_v2("bob").await;
    let mut bob_v1 = n2.connect("bob").await;

    let created = request(
        &mut alice,
        json!({"type": "create_group", "title": "Across", "members": ["bob", "carol"], "client_msg_id": "g1"}),
        "r1",
    )
    .await;
    assert_eq!(created["type"], "group_created", "{created}");
    let group = created["conversation_id"].as_str().unwrap().to_owned();
    assert_eq!(
        wait_for_event(&mut bob, "group_created").await["conversation_id"],
        group.as_str()
    );

    let ack = request(
        &mut alice,
        json!({"type": "send", "conversation_id": group, "text": "to both nodes", "client_msg_id": "m1"}),
        "r2",
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let message_id = ack["message_id"].as_str().unwrap().to_owned();
    let on_n2 = bob.wait_for("message").await;
    assert_eq!(on_n2["message_id"], message_id.as_str());
    assert_eq!(on_n2["seq"], 2, "bob's own seq: group_created, then this");
    assert_eq!(
        carol.wait_for("message").await["message_id"],
        message_id.as_str()
    );

    // Typing and live receipts cross nodes too.
    bob.send_json(json!({"type": "typing", "conversation_id": group}))
        .await;
    assert_eq!(alice.wait_for("typing").await["from"], "bob");
    let read = request(
        &mut bob,
        json!({"type": "mark_read", "conversation_id": group, "message_id": message_id}),
        "r3",
    )
    .await;
    assert_eq!(read["type"], "read_state", "{read}");
    let receipt = alice.wait_for("receipt").await;
    assert_eq!(receipt["user"], "bob");

    // A direct read receipt is durable and crosses nodes as a stream event.
    let dm = alice.dm("bob", "direct", "d1").await;
    bob.wait_for("message").await;
    request(
        &mut bob,
        json!({"type": "mark_read", "conversation_id": "alice:bob", "message_id": dm["message_id"]}),
        "r4",
    )
    .await;
    let receipt = wait_for_event(&mut alice, "read_receipt").await;
    assert_eq!(receipt["message_id"], dm["message_id"]);

    // Bob's protocol-1 connection got the direct message only.
    let first = bob_v1.wait_for("message").await;
    assert_eq!(first["text"], "direct");
    let synced = bob_v1.sync_all(0).await;
    assert_eq!(synced.len(), 1, "{synced:?}");

    drop((alice, carol, bob, bob_v1));
    pair.stop().await;
}

#[tokio::test]
async fn the_server_api_of_one_node_reaches_users_on_another() {
    let pair = NodePair::start("api").await;
    let (n1, n2) = (&pair.n1, &pair.n2);
    let mut bob = n2.connect("bob").await;
    let send = json!({"from": "system", "to": "bob", "text": "hello from the backend", "client_msg_id": "c1"});
    let (status, ack) = api(&n1.addr, "POST", "/api/v1/messages", send).await;
    assert_eq!(status, 200, "{ack}");
    let delivered = bob.wait_for("message").await;
    assert_eq!(delivered["text"], "hello from the backend");

    let (status, body) = api(&n1.addr, "GET", "/api/v1/presence?users=bob", Value::Null).await;
    assert_eq!(
        (status, &body["users"][0]["online"]),
        (200, &json!(true)),
        "{body}"
    );
    let request = json!({"code": 4010, "reason": "suspended"});
    let (status, body) = api(&n1.addr, "POST", "/api/v1/users/bob/disconnect", request).await;
    assert_eq!(status, 200, "{body}");
    let close = bob.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4010);
    assert_eq!(close.reason.as_str(), "suspended");
    pair.stop().await;
}

#[tokio::test]
async fn one_node_at_a_time_delivers_to_a_webhook_both_nodes_configure() {
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let sink = Arc::clone(&sink);
            async move {
                let delivery: Value = serde_json::from_str(&body).unwrap();
                sink.lock().unwrap().push(delivery);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let extra = format!(
        "[push]\ndelay = \"0s\"\n[webhooks]\nlease = \"10s\"\n[[webhooks.endpoints]]\nname = \"hook\"\n\
         tenant = \"default\"\nurl = \"{url}\"\nsecret = \"whsec_cluster_test_secret\"\n\
         events = [\"message.created\"]\n"
    );
    let pair = NodePair::start_with("wh", &extra).await;
    for i in 0..20 {
        let node = if i % 2 == 0 { &pair.n1 } else { &pair.n2 };
        let send = json!({"from": "system", "to": format!("u{}", i % 3), "text": "x", "client_msg_id": format!("c{i}")});
        let (status, ack) = api(&node.addr, "POST", "/api/v1/messages", send).await;
        assert_eq!(status, 200, "{ack}");
    }
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    let ids = loop {
        let ids: Vec<u64> = received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|d| d["events"].as_array().unwrap().clone())
            .map(|e| e["id"].as_str().unwrap().parse().unwrap())
            .collect();
        if ids.len() >= 20 {
            break ids;
        }
        assert!(tokio::time::Instant::now() < deadline, "got {ids:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // Both nodes were up and configured the endpoint, yet each event came once, in order:
    // one node held the lease.
    assert_eq!(ids, (1..=20).collect::<Vec<_>>());
    pair.stop().await;
}

#[tokio::test]
async fn a_ban_made_through_one_node_refuses_the_user_on_the_other_at_once() {
    let pair = NodePair::start("ban").await;
    let (n1, n2) = (&pair.n1, &pair.n2);
    // Both nodes hear each other: bob, on node 2, is online as node 1 sees it.
    let _bob = n2.connect("bob").await;
    common::eventually_async("node 1 sees bob of node 2 online", || async {
        let (_, body) = api(&n1.addr, "GET", "/api/v1/presence?users=bob", Value::Null).await;
        body["users"][0]["online"] == json!(true)
    })
    .await;
    let check = |addr: String| async move {
        let (status, _) =
            common::http_request(addr.parse().unwrap(), "GET", "/ws/check?user=mallory", "").await;
        status
    };
    assert_eq!(check(n2.addr.clone()).await, 200);

    let until = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 3_600_000;
    let (status, body) = api(
        &n1.addr,
        "POST",
        "/api/v1/users/mallory/ban",
        json!({"until": until}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Well before node 2's next reload from storage.
    common::eventually_async("node 2 refuses mallory", || async {
        check(n2.addr.clone()).await == 403
    })
    .await;
    let (status, body) = api(&n1.addr, "DELETE", "/api/v1/users/mallory/ban", Value::Null).await;
    assert_eq!(status, 200, "{body}");
    common::eventually_async("node 2 admits mallory again", || async {
        check(n2.addr.clone()).await == 200
    })
    .await;
    pair.stop().await;
}
