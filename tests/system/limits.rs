//! Every limit, with its exact answer, and proof that one abusive client never disturbs the
//! others: they keep exchanging messages, in order, while it floods, stalls or overflows.

use crate::common;

use std::time::Duration;

use crate::common::{Client, TestServer, eventually};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Two bystanders exchange `n` messages and check they all arrive in order.
async fn bystanders_still_talk(alice: &mut Client, bob: &mut Client, tag: &str, n: usize) {
    for i in 0..n {
        alice
            .dm("bob", &format!("{tag}-{i}"), &format!("{tag}-{i}"))
            .await;
    }
    for i in 0..n {
        let message = bob.wait_for("message").await;
        assert_eq!(message["text"], format!("{tag}-{i}"));
    }
}

#[tokio::test]
async fn a_user_over_the_session_limit_gets_429_until_one_closes() {
    let server = TestServer::start_with(|c| c.limits.max_sessions_per_user = 2).await;
    let first = server.connect("alice").await;
    let _second = server.connect("alice").await;
    let Err((status, body)) = Client::try_connect(&server.ws_url("default", "alice")).await else {
        panic!("a third session was admitted");
    };
    assert_eq!(status, 429);
    assert_eq!(body["error"], "too_many_sessions");
    // Another user, or the same id in another tenant, is not affected.
    server.connect("bob").await;
    server.connect_in("other", "alice").await;

    first.close().await;
    let url = server.ws_url("default", "alice");
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        match Client::try_connect(&url).await {
            Ok(_) => break,
            Err((429, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(other) => panic!("expected a place to free up, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_full_node_answers_503() {
    let server = TestServer::start_with(|c| c.http.max_connections = 2).await;
    let _a = server.connect("a").await;
    let _b = server.connect("b").await;
    let Err((status, body)) = Client::try_connect(&server.ws_url("default", "c")).await else {
        panic!("a connection over the node limit was admitted");
    };
    assert_eq!(status, 503);
    assert_eq!(body["error"], "node_full");
}

#[tokio::test]
async fn upgrades_from_origins_not_allowed_get_403() {
    let server =
        TestServer::start_with(|c| c.http.allowed_origins = vec!["https://chat.example".into()])
            .await;
    let url = server.ws_url("default", "alice");
    let ok = Client::connect_with_headers(&url, &[("origin", "https://chat.example")]).await;
    assert_eq!(ok.welcome["user"], "alice");
    // No Origin header at all (a non-browser client) is allowed.
    server.connect("bob").await;

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_ref().unwrap()).unwrap();
            assert_eq!(body["error"], "forbidden_origin");
        }
        other => panic!("expected 403, got {other:?}"),
    }
}

#[tokio::test]
async fn commands_over_the_rate_are_refused_retryably_and_others_are_unaffected() {
    let server = TestServer::start_with(|c| {
        c.limits.rate_per_sec = 1;
        c.limits.rate_burst = 3;
    })
    .await;
    let mut flooder = server.connect("flooder").await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    for i in 0..3 {
        flooder
            .send_json(json!({"type": "ping", "req_id": i}))
            .await;
        assert_eq!(flooder.expect("pong").await["req_id"], i);
    }
    flooder
        .send_json(
            json!({"type": "send", "to": "bob", "text": "x", "client_msg_id": "c9", "req_id": 9}),
        )
        .await;
    let error = flooder.expect("error").await;
    assert_eq!(error["code"], "rate_limited");
    assert_eq!(error["retryable"], true);
    assert_eq!(error["req_id"], 9);
    assert_eq!(error["client_msg_id"], "c9");
    // Nothing was sent on its behalf.
    assert!(bob.frames_until_pong().await.is_empty());
    bystanders_still_talk(&mut alice, &mut bob, "calm", 2).await;
}

#[tokio::test]
async fn a_group_send_costs_its_fan_out_even_to_a_group_this_node_never_saw() {
    // Each member a token; a burst of 8 pays for a few commands, not for 20 members.
    let server = TestServer::start_with(|c| {
        c.limits.rate_per_sec = 1;
        c.limits.rate_burst = 8;
        c.groups.members_per_rate_token = 1;
    })
    .await;
    let mut alice = server.connect_v2("alice").await;
    let others: Vec<String> = (1..20).map(|i| format!("m{i}")).collect();
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    let group = alice.create_group("Big", &others, "g1").await;
    // The node has not seen the group's size yet: the send is charged as one member, and
    // the ack shows storage reached all 20.
    alice.send_to(&group, "hi", "s1").await;
    // 8 - 1 (create) - 1 (send) - 1 (one member) leaves 5 tokens; the 19 members more
    // than charged put the sender 14 tokens in debt, which 1 token per second cannot
    // repay before the next command.
    alice
        .send_json(
            json!({"type": "send", "to": "bob", "text": "x", "client_msg_id": "s2",
            "req_id": "s2"}),
        )
        .await;
    let error = alice.wait_for("error").await;
    assert_eq!(error["code"], "rate_limited", "{error}");
    assert_eq!(error["client_msg_id"], "s2");
}

#[tokio::test]
async fn a_refused_group_send_names_its_client_msg_id_so_the_client_can_retry_it() {
    let server = TestServer::start_with(|c| {
        c.limits.rate_per_sec = 1;
        c.limits.rate_burst = 3;
    })
    .await;
    let mut alice = server.connect_v2("alice").await;
    let group = alice.create_group("G", &["bob"], "g1").await;
    // Five sends at once spend the burst: one is refused, and says which send it was.
    let ids: Vec<String> = (1..=5).map(|i| format!("s{i}")).collect();
    for id in &ids {
        alice
            .send_json(
                json!({"type": "send", "conversation_id": group, "text": "x",
                "client_msg_id": id}),
            )
            .await;
    }
    let error = alice.wait_for("error").await;
    assert_eq!(error["code"], "rate_limited", "{error}");
    let named = error["client_msg_id"]
        .as_str()
        .expect("the refused send is named");
    assert!(ids.iter().any(|id| id == named), "{error}");
}

#[tokio::test]
async fn a_client_that_keeps_flooding_is_closed_with_1008_while_others_talk() {
    let server = TestServer::start_with(|c| {
        c.limits.rate_per_sec = 5;
        c.limits.rate_burst = 5;
        c.limits.abuse_close_secs = Duration::from_millis(500);
    })
    .await;
    let mut flooder = server.connect("flooder").await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;

    // Flood from another task until the server closes the connection.
    let flood = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + common::DEADLINE;
        let mut sent = 0u64;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "never closed");
            let open = flooder.try_send_text(r#"{"type":"ping"}"#).await;
            sent += 1;
            // Read what is there without waiting for it.
            if let Some(close) = flooder.poll_close().await {
                return (close, sent);
            }
            if !open {
                return (
                    flooder
                        .expect_close()
                        .await
                        .map_or(1005, |c| u16::from(c.code)),
                    sent,
                );
            }
        }
    });
    bystanders_still_talk(&mut alice, &mut bob, "during", 3).await;
    let (close, sent) = flood.await.unwrap();
    assert_eq!(close, 1008, "after {sent} frames");
    bystanders_still_talk(&mut alice, &mut bob, "after", 3).await;
}

/// Performs a WebSocket handshake by hand and then never reads or answers anything.
async fn silent_client(server: &TestServer, user: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.gateway.http_addr).await.unwrap();
    let request = format!(
        "GET /ws?user={user} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Reads raw bytes until a close frame arrives or the connection ends; returns the close
/// code of the close frame seen. It does not wait for the server to give up on a close
/// handshake this client never answers.
async fn close_code_of(mut stream: TcpStream) -> Option<u16> {
    let mut bytes = Vec::new();
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(code) = close_code_in(&bytes) {
            return Some(code);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// The close code of the first close frame in what the server sent, if one is complete.
fn close_code_in(bytes: &[u8]) -> Option<u16> {
    // Skip the HTTP response, then walk the (unmasked) server frames.
    let start = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut i = start;
    while i + 2 <= bytes.len() {
        let opcode = bytes[i] & 0x0f;
        let mut len = usize::from(bytes[i + 1] & 0x7f);
        let mut header = 2;
        if len == 126 {
            if i + 4 > bytes.len() {
                return None;
            }
            len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
            header = 4;
        } else if len == 127 {
            return None;
        }
        if opcode == 0x8 && len >= 2 && i + header + 2 <= bytes.len() {
            return Some(u16::from_be_bytes([
                bytes[i + header],
                bytes[i + header + 1],
            ]));
        }
        i += header + len;
    }
    None
}

#[tokio::test]
async fn a_silent_connection_is_pinged_then_closed_but_a_live_one_stays() {
    let server = TestServer::start_with(|c| {
        // Short enough that the test takes about a second, long enough that the live client,
        // which reads all along, always answers a ping well before it would count as idle.
        c.limits.ping_interval_secs = Duration::from_millis(250);
        c.limits.idle_timeout_secs = Duration::from_secs(1);
    })
    .await;
    let silent = silent_client(&server, "ghost").await;
    let mut live = server.connect("alive").await;
    // The live client keeps reading, so it answers the pings, while the silent one is
    // dropped; it sees several pings and outlives the silent one.
    let mut silent_closed = tokio::spawn(close_code_of(silent));
    let mut pings = 0;
    let code = loop {
        tokio::select! {
            code = &mut silent_closed, if pings >= 3 => break code.unwrap(),
            is_ping = live.next_raw_is_ping() => pings += usize::from(is_ping),
        }
    };
    assert_eq!(code, Some(1001));
    assert!(live.frames_until_pong().await.is_empty());
}

#[tokio::test]
async fn a_connection_that_never_completes_its_request_is_closed() {
    let server =
        TestServer::start_with(|c| c.http.handshake_timeout_secs = Duration::from_millis(500))
            .await;
    let mut stream = TcpStream::connect(server.gateway.http_addr).await.unwrap();
    stream
        .write_all(b"GET /ws?user=slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(common::DEADLINE, stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept the half-open request");
    // A well-behaved client is served meanwhile.
    server.connect("fine").await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_1013_and_recovers_with_sync() {
    let server = TestServer::start_with(|c| {
        c.limits.outbound_queue = 64;
        c.limits.rate_per_sec = 100_000;
        c.limits.rate_burst = 100_000;
        c.storage.max_pending = 100_000;
    })
    .await;
    let mut stalled = server.connect("stalled").await;
    let mut sender = server.connect("sender").await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;

    // Far more than the queue and the socket buffers hold, while `stalled` reads nothing.
    let text = "x".repeat(4_000);
    let total = 3_000;
    for window in 0..total / 20 {
        for i in window * 20..(window + 1) * 20 {
            sender
                .send_json(json!({"type": "send", "to": "stalled", "text": text, "client_msg_id": format!("m{i}")}))
                .await;
        }
        for _ in 0..20 {
            assert_eq!(sender.next().await["type"], "ack");
        }
    }
    // The others were never held up; their messages pass the Router after the flood's.
    bystanders_still_talk(&mut alice, &mut bob, "meanwhile", 3).await;

    let mut received = 0;
    let code = loop {
        match stalled.next_or_close().await {
            Ok(_) => received += 1,
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(1013));
    assert!(received < total, "received {received} of {total}");

    // Nothing stored was lost: a new session syncs all of it.
    let mut again = server.connect("stalled").await;
    assert_eq!(again.sync_all(0).await.len(), total);
    eventually("the closed session is gone", || {
        server.gateway.pending_writes() == 0
    })
    .await;
}
