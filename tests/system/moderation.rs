//! Bans and revoked tokens through the server API: a banned user is refused at the door
//! (403 `banned`) until the ban ends or is lifted, even after a restart of the node; a
//! revoked token is refused (401 `token_revoked`) while a token issued after the revocation
//! is accepted; the user's open sessions close either way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use peroxo_config::{AuthMode, Config, Secret};
use peroxo_gateway::Gateway;
use serde_json::{Value, json};

use crate::common::{self, Client, TestServer};
use crate::server_api::{KEY, call, with_keys};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
const HOUR_MS: i64 = 3_600_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn jwt(config: &mut Config) {
    with_keys(config);
    config.auth.mode = AuthMode::Jwt;
    config.auth.jwt_secret = Secret::new(SECRET);
    config.auth.leeway_secs = 0;
}

/// A token of `user` (tenant `default`) issued at `iat` (seconds; none when `None`).
fn token(user: &str, iat: Option<i64>) -> String {
    let mut claims = json!({"sub": user, "exp": now_ms() / 1000 + 3600});
    if let Some(iat) = iat {
        claims["iat"] = json!(iat);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Calls the server API with the key of tenant `default`, expecting 200; returns the body.
async fn ok(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, answer) = call(server, KEY, method, path, body).await;
    assert_eq!(status, 200, "{method} {path}: {answer}");
    answer
}

/// What `/ws/check` answers for `query`: the status and the JSON body.
async fn check(server: &TestServer, query: &str) -> (u16, Value) {
    let path = format!("/ws/check?{query}");
    let (status, body) = common::http_request(server.gateway.http_addr, "GET", &path, "").await;
    (status, serde_json::from_str(&body).unwrap())
}

/// Stops `server` gracefully and starts a node again over the same data directory.
async fn restart(server: TestServer, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let TestServer { gateway, dir } = server;
    gateway.shutdown().await;
    let mut config = common::test_config(dir.path());
    adjust(&mut config);
    let gateway = Gateway::start(config).await.expect("gateway starts again");
    TestServer { gateway, dir }
}

/// Waits until the node reaches storage (and so has loaded the restrictions).
async fn until_ready(server: &TestServer) {
    let addr = server.gateway.http_addr;
    common::eventually_async("the node reaches storage", || async move {
        common::http_request(addr, "GET", "/readyz", "").await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn a_banned_user_is_disconnected_and_refused_until_the_ban_is_lifted() {
    let server = TestServer::start_with(with_keys).await;
    let mut mallory = server.connect("mallory").await;
    let mut bob = server.connect("bob").await;
    let until = now_ms() + HOUR_MS;
    let request = json!({"until": until, "reason": "spam", "code": 4010});
    let body = ok(&server, "POST", "/api/v1/users/mallory/ban", Some(request)).await;
    assert_eq!(body, json!({"banned_until": until, "disconnected": 1}));
    let close = mallory.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4010);
    assert_eq!(close.reason.as_str(), "spam");

    let (status, refusal) = Client::try_connect(&server.ws_url("default", "mallory"))
        .await
        .err()
        .expect("a banned user is refused");
    assert_eq!((status, refusal["error"].as_str()), (403, Some("banned")));
    let message = refusal["message"].as_str().unwrap();
    assert!(message.contains("spam"), "{message}");
    let end = UNIX_EPOCH + Duration::from_millis(until as u64);
    let end = humantime::format_rfc3339_millis(end).to_string();
    assert!(
        message.contains(&format!("until {end}")),
        "the ban's end as RFC 3339 ({end}): {message}"
    );
    assert_eq!(check(&server, "user=mallory").await.0, 403);
    // The same user id of another tenant, and other users, are not banned.
    assert_eq!(check(&server, "user=mallory&tenant=acme").await.0, 200);
    bob.dm("carol", "still here", "b1").await;

    let record = ok(&server, "GET", "/api/v1/users/mallory/restrictions", None).await;
    assert_eq!(
        record,
        json!({"banned": true, "banned_until": until, "ban_reason": "spam", "tokens_before": 0})
    );

    let lifted = ok(&server, "DELETE", "/api/v1/users/mallory/ban", None).await;
    assert_eq!(lifted["banned"], false);
    assert_eq!(lifted["banned_until"], 0);
    let mallory = server.connect("mallory").await;
    assert_eq!(mallory.welcome["user"], "mallory");
}

#[tokio::test]
async fn bad_ban_and_revocation_requests_are_answered_400() {
    let server = TestServer::start_with(with_keys).await;
    until_ready(&server).await;
    let future = now_ms() + HOUR_MS;
    for (path, body) in [
        ("/api/v1/users/mallory/ban", json!({"until": now_ms() - 1})),
        ("/api/v1/users/mallory/ban", json!({"until": i64::MAX})),
        ("/api/v1/users/mallory/ban", json!({"reason": "no end"})),
        ("/api/v1/users/mallory/ban", json!({"until": "tomorrow"})),
        (
            "/api/v1/users/mallory/ban",
            json!({"until": future, "code": 4001}),
        ),
        (
            "/api/v1/users/mallory/ban",
            json!({"until": future, "code": 1000}),
        ),
        (
            "/api/v1/users/mallory/ban",
            json!({"until": future, "reason": "x".repeat(121)}),
        ),
        (
            "/api/v1/users/mallory/ban",
            json!({"until": future, "extra": 1}),
        ),
        ("/api/v1/users/not%20valid/ban", json!({"until": future})),
        (
            "/api/v1/users/mallory/revoke_tokens",
            json!({"before": now_ms() + HOUR_MS}),
        ),
        ("/api/v1/users/mallory/revoke_tokens", json!({"before": -5})),
        ("/api/v1/users/mallory/revoke_tokens", json!({"after": 5})),
    ] {
        let (status, answer) = call(&server, KEY, "POST", path, Some(body.clone())).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("bad_request")),
            "{path} {body}: {answer}"
        );
    }
    // Nothing was recorded.
    let record = ok(&server, "GET", "/api/v1/users/mallory/restrictions", None).await;
    assert_eq!(
        record,
        json!({"banned": false, "banned_until": 0, "ban_reason": "", "tokens_before": 0})
    );
    assert_eq!(check(&server, "user=mallory").await.0, 200);
}

#[tokio::test]
async fn a_ban_survives_a_restart_of_the_node() {
    let server = TestServer::start_with(with_keys).await;
    until_ready(&server).await;
    let until = now_ms() + HOUR_MS;
    let body = ok(
        &server,
        "POST",
        "/api/v1/users/mallory/ban",
        Some(json!({"until": until})),
    )
    .await;
    assert_eq!(body["disconnected"], 0);

    let server = restart(server, with_keys).await;
    until_ready(&server).await;
    let (status, refusal) = check(&server, "user=mallory").await;
    assert_eq!((status, refusal["error"].as_str()), (403, Some("banned")));
    assert_eq!(check(&server, "user=bob").await.0, 200);
}

#[tokio::test]
async fn a_revoked_token_is_refused_and_a_token_issued_after_is_accepted() {
    let server = TestServer::start_with(jwt).await;
    let old = token("alice", Some(now_ms() / 1000 - 60));
    let mut alice = Client::connect(&server.ws_url_with_token(&old)).await;
    let bob_old = token("bob", Some(now_ms() / 1000 - 60));
    // Whole seconds: a token's `iat` is in seconds.
    let before = now_ms() / 1000 * 1000;
    let body = ok(
        &server,
        "POST",
        "/api/v1/users/alice/revoke_tokens",
        Some(json!({"before": before})),
    )
    .await;
    assert_eq!(body, json!({"tokens_before": before, "disconnected": 1}));
    let close = alice.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4003);
    assert_eq!(close.reason.as_str(), "token revoked");

    for refused in [
        old.clone(),
        token("alice", None),
        token("alice", Some(before / 1000 - 1)),
    ] {
        let (status, answer) = Client::try_connect(&server.ws_url_with_token(&refused))
            .await
            .err()
            .expect("a revoked token is refused");
        assert_eq!(
            (status, answer["error"].as_str()),
            (401, Some("token_revoked")),
            "{answer}"
        );
    }
    let (status, _) = check(&server, &format!("token={old}")).await;
    assert_eq!(status, 401);

    // A token issued at the revocation's time or later is accepted; bob's old one still is.
    let fresh = token("alice", Some(before / 1000));
    let mut alice = Client::connect(&server.ws_url_with_token(&fresh)).await;
    assert_eq!(alice.welcome["user"], "alice");
    let bob = Client::connect(&server.ws_url_with_token(&bob_old)).await;
    assert_eq!(bob.welcome["user"], "bob");

    // A revoked token cannot refresh an open session either.
    alice
        .send_json(json!({"type": "refresh", "token": old, "req_id": "r"}))
        .await;
    let error = alice.expect("error").await;
    assert_eq!(error["code"], "forbidden", "{error}");
    assert_eq!(error["req_id"], "r");

    // A revocation never moves back.
    let body = ok(
        &server,
        "POST",
        "/api/v1/users/alice/revoke_tokens",
        Some(json!({"before": before - HOUR_MS})),
    )
    .await;
    assert_eq!(body["tokens_before"], before);
    let record = ok(&server, "GET", "/api/v1/users/alice/restrictions", None).await;
    assert_eq!(record["tokens_before"], before);
}
