//! Bad input gets an `error` frame that names the problem; the session stays open and
//! nothing else is affected. Bad upgrade requests get an HTTP status with a JSON body.

use crate::common;

use crate::common::TestServer;
use serde_json::{Value, json};

async fn error_for(client: &mut common::Client, frame: &str) -> Value {
    client.send_text(frame).await;
    client.expect("error").await
}

#[tokio::test]
async fn every_bad_frame_gets_a_specific_error_and_the_session_keeps_working() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let long_text = "x".repeat(4097);
    let cases: Vec<(String, &str, &str)> = vec![
        ("{not json".into(), "bad_request", "malformed JSON"),
        ("[1,2]".into(), "bad_request", "JSON object"),
        (r#"{"text":"no type"}"#.into(), "bad_request", "`type`"),
        (
            r#"{"type":"teleport"}"#.into(),
            "bad_request",
            "unknown type",
        ),
        (r#"{"type":7}"#.into(), "bad_request", "`type`"),
        (
            r#"{"type":"send","text":"x","client_msg_id":"c"}"#.into(),
            "bad_request",
            "`to`",
        ),
        (
            r#"{"type":"send","to":"bob","client_msg_id":"c"}"#.into(),
            "bad_request",
            "`text`",
        ),
        (
            r#"{"type":"send","to":"bob","text":"x"}"#.into(),
            "bad_request",
            "`client_msg_id`",
        ),
        (
            r#"{"type":"send","to":"b o b","text":"x","client_msg_id":"c"}"#.into(),
            "bad_request",
            "`to`",
        ),
        (
            r#"{"type":"send","to":"bob","text":"","client_msg_id":"c"}"#.into(),
            "bad_request",
            "`text`",
        ),
        (
            format!(
                r#"{{"type":"send","to":"bob","text":"x","client_msg_id":"{}"}}"#,
                "c".repeat(65)
            ),
            "bad_request",
            "`client_msg_id`",
        ),
        (
            format!(r#"{{"type":"send","to":"bob","text":"{long_text}","client_msg_id":"c"}}"#),
            "too_large",
            "limit is 4096",
        ),
        (r#"{"type":"history"}"#.into(), "bad_request", "`with`"),
        (
            r#"{"type":"history","with":"bob","limit":0}"#.into(),
            "bad_request",
            "`limit`",
        ),
        (
            r#"{"type":"history","with":"bob","before":"nope"}"#.into(),
            "bad_request",
            "`before`",
        ),
        (
            r#"{"type":"sync","after_seq":-1}"#.into(),
            "bad_request",
            "`after_seq`",
        ),
        (
            r#"{"type":"sync","after_seq":0,"limit":501}"#.into(),
            "bad_request",
            "`limit`",
        ),
        (
            r#"{"type":"presence_subscribe","users":"bob"}"#.into(),
            "bad_request",
            "`users`",
        ),
        (
            r#"{"type":"presence_subscribe","users":[]}"#.into(),
            "bad_request",
            "`users`",
        ),
        (
            r#"{"type":"presence_subscribe","users":["ok",3]}"#.into(),
            "bad_request",
            "`users[1]`",
        ),
        (
            r#"{"type":"online_users","limit":1001}"#.into(),
            "bad_request",
            "`limit`",
        ),
        (r#"{"type":"typing"}"#.into(), "bad_request", "`to`"),
        (
            r#"{"type":"ping","req_id":[1]}"#.into(),
            "bad_request",
            "`req_id`",
        ),
        (
            format!(r#"{{"type":"ping","req_id":"{}"}}"#, "r".repeat(65)),
            "bad_request",
            "`req_id`",
        ),
    ];
    for (frame, code, needle) in &cases {
        let error = error_for(&mut alice, frame).await;
        assert_eq!(error["code"], *code, "for {frame}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "for {frame}: {message:?} should mention {needle:?}"
        );
        assert_eq!(error["retryable"], false, "for {frame}");
    }

    alice.send_binary(b"\x00\x01").await;
    let error = alice.expect("error").await;
    assert_eq!(error["code"], "bad_request");
    assert!(error["message"].as_str().unwrap().contains("binary"));

    // Still the same session, still working.
    let ack = alice.dm("bob", "still here", "ok-1").await;
    assert_eq!(ack["seq"], 1);
    assert_eq!(bob.expect("message").await["text"], "still here");
}

#[tokio::test]
async fn errors_echo_req_id_and_client_msg_id_when_known() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let error = error_for(
        &mut alice,
        r#"{"type":"send","to":"bad id","text":"x","client_msg_id":"c-9","req_id":"r-9"}"#,
    )
    .await;
    assert_eq!(error["req_id"], "r-9");
    assert_eq!(error["client_msg_id"], "c-9");
}

#[tokio::test]
async fn the_watch_list_is_bounded_per_session() {
    let server = TestServer::start_with(|c| c.limits.max_watched_users = 3).await;
    let mut alice = server.connect("alice").await;
    alice
        .send_json(json!({"type": "presence_subscribe", "users": ["a", "b"]}))
        .await;
    alice.expect("presence_snapshot").await;
    alice
        .send_json(json!({"type": "presence_subscribe", "users": ["c", "d"], "req_id": 5}))
        .await;
    let error = alice.expect("error").await;
    assert_eq!(error["code"], "bad_request");
    assert_eq!(error["req_id"], 5);
    assert!(error["message"].as_str().unwrap().contains("limit is 3"));
}

#[tokio::test]
async fn bad_upgrade_requests_get_a_status_and_a_json_body() {
    let server = TestServer::start().await;
    let client = HttpClient::new();
    let (status, body) = client.get(&server.http_url("/ws?user=alice")).await;
    assert_eq!(status, 400, "a plain GET is not an upgrade: {body}");
    assert_eq!(body["error"], "websocket_required");

    let (status, body) = client.get(&server.http_url("/nowhere")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");

    let (status, body) = client.get(&server.http_url("/healthz")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");

    for (query, status, error) in [
        ("", 401, "unauthorized"),
        ("?user=bad%20id", 400, "bad_request"),
        ("?user=alice&tenant=no:colons", 400, "bad_request"),
    ] {
        let (got, body) = client
            .upgrade(&server.http_url(&format!("/ws{query}")))
            .await;
        assert_eq!(got, status, "for {query}: {body}");
        assert_eq!(body["error"], error, "for {query}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

/// Requests to the node under test, with JSON bodies.
struct HttpClient;

impl HttpClient {
    fn new() -> Self {
        Self
    }

    async fn get(&self, url: &str) -> (u16, Value) {
        self.request("GET", url, "").await
    }

    async fn upgrade(&self, url: &str) -> (u16, Value) {
        self.request(
            "GET",
            url,
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        )
        .await
    }

    async fn request(&self, method: &str, url: &str, headers: &str) -> (u16, Value) {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let (status, body) =
            common::http_request(host.parse().unwrap(), method, path, headers).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_with_1009_and_others_are_unaffected() {
    let server = TestServer::start_with(|c| c.limits.max_message_bytes = 8_192).await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;
    alice.send_text(&"x".repeat(10_000)).await;
    let close = alice.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);

    carol.dm("bob", "unaffected", "c1").await;
    assert_eq!(bob.expect("message").await["text"], "unaffected");
}

#[tokio::test]
async fn a_wrong_method_gets_405_with_a_json_body() {
    let server = TestServer::start().await;
    let (status, body) = HttpClient::new()
        .request(
            "POST",
            &server.http_url("/healthz"),
            "Content-Length: 0\r\n",
        )
        .await;
    assert_eq!(status, 405);
    assert_eq!(body["error"], "method_not_allowed");
}
