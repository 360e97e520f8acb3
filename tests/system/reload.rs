//! Reloading the configuration of a running node: the live keys apply to the sessions already
//! open, none of which is dropped; keys that need a restart keep their running values and
//! are reported.

use crate::common::{self, TestServer};

use peroxo_config::Config;
use peroxo_gateway::identity::Authenticator;
use serde_json::{Value, json};

/// The node's configuration as a test would edit its file: what it started with, changed.
fn reloaded(server: &TestServer, adjust: impl FnOnce(&mut Config)) -> Config {
    let mut config = common::test_config(server.dir.path());
    adjust(&mut config);
    config
}

async fn reload(server: &TestServer, config: &Config) -> peroxo_gateway::server::ReloadReport {
    let auth = Authenticator::from_config(&config.auth).unwrap();
    server.gateway.reload(config, auth).await
}

async fn pings_until_limited(client: &mut common::Client, most: u64) -> u64 {
    for i in 0..most {
        client.send_json(json!({"type": "ping", "req_id": i})).await;
        let answer = client.next().await;
        if answer["type"] == "error" {
            assert_eq!(answer["code"], "rate_limited", "{answer}");
            return i;
        }
        assert_eq!(answer["type"], "pong", "{answer}");
    }
    most
}

async fn info(server: &TestServer) -> Value {
    let (status, body) =
        common::http_request(server.gateway.http_addr, "GET", "/api/info", "").await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn a_stricter_then_a_looser_rate_applies_to_open_sessions_without_dropping_them() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;

    let report = reload(
        &server,
        &reloaded(&server, |c| {
            c.limits.rate_per_sec = 1;
            c.limits.rate_burst = 3;
        }),
    )
    .await;
    let keys: Vec<&str> = report.applied.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["limits.rate_burst", "limits.rate_per_sec"]);
    assert!(report.restart_needed.is_empty());
    // The open session now has a burst of 3: the fourth ping in a row is refused.
    assert_eq!(pings_until_limited(&mut alice, 10).await, 3);
    assert_eq!(info(&server).await["limits"]["rate_burst"], 3);

    reload(
        &server,
        &reloaded(&server, |c| {
            c.limits.rate_per_sec = 1_000;
            c.limits.rate_burst = 500;
        }),
    )
    .await;
    // A looser limit: once a paced ping passes (the bucket refills at 1,000 a second), 100
    // pings in a row pass, which the stricter one never let through. Paced, because a client
    // refused without pause is closed as abusive.
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    while pings_until_limited(&mut alice, 100).await < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the looser rate never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // Nobody was dropped: both still talk.
    alice.dm("bob", "still here", "m1").await;
    assert_eq!(bob.expect("message").await["text"], "still here");
}

#[tokio::test]
async fn lower_session_limits_refuse_new_connections_and_keep_the_ones_held() {
    let server = TestServer::start().await;
    let mut first = server.connect("alice").await;
    let mut second = server.connect("alice").await;
    reload(
        &server,
        &reloaded(&server, |c| c.limits.max_sessions_per_user = 1),
    )
    .await;
    let refused = common::Client::try_connect(&server.ws_url("default", "alice")).await;
    let (status, body) = refused.err().expect("a third session is refused");
    assert_eq!(status, 429);
    assert_eq!(body["error"], "too_many_sessions");
    for client in [&mut first, &mut second] {
        client.send_json(json!({"type": "ping", "req_id": 1})).await;
        assert_eq!(client.expect("pong").await["req_id"], 1);
    }
}

#[tokio::test]
async fn a_lower_message_size_closes_a_session_that_exceeds_it_with_1009() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    reload(
        &server,
        &reloaded(&server, |c| {
            c.limits.max_message_bytes = 1_024;
            c.limits.max_text_bytes = 512;
        }),
    )
    .await;
    alice.dm("bob", "short enough", "m1").await;
    alice
        .send_json(
            json!({"type": "send", "to": "bob", "text": "x".repeat(2_000),
            "client_msg_id": "m2"}),
        )
        .await;
    let close = alice.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);
}

#[tokio::test]
async fn keys_that_need_a_restart_keep_their_running_values_and_are_reported() {
    let server = TestServer::start().await;
    let edited = reloaded(&server, |c| {
        c.http.listen = "127.0.0.1:1".parse().unwrap();
        c.storage.max_batch = 7;
        c.groups.max_members = 9;
    });
    let report = reload(&server, &edited).await;
    let live: Vec<&str> = report.applied.iter().map(|c| c.key.as_str()).collect();
    let restart: Vec<&str> = report
        .restart_needed
        .iter()
        .map(|c| c.key.as_str())
        .collect();
    assert_eq!(live, ["groups.max_members"]);
    assert_eq!(restart, ["http.listen", "storage.max_batch"]);
    // The node still serves where it listened.
    let mut alice = server.connect("alice").await;
    alice.send_json(json!({"type": "ping", "req_id": 1})).await;
    alice.expect("pong").await;
    assert_eq!(info(&server).await["groups"]["max_members"], 9);
    // What it runs with: the live key changed, the others did not.
    let running = server.gateway.applied_config();
    let unchanged = running.diff(&peroxo_config::Snapshot::of(&reloaded(&server, |c| {
        c.groups.max_members = 9;
    })));
    assert!(unchanged.is_empty(), "{unchanged:?}");
    // A second reload of the same file applies nothing new and still reports the restart.
    let again = reload(&server, &edited).await;
    assert!(again.applied.is_empty());
    assert_eq!(again.restart_needed.len(), 2);
    let (_, metrics) = common::http_request(server.gateway.http_addr, "GET", "/metrics", "").await;
    for (outcome, count) in [("applied", 1.0), ("unchanged", 1.0)] {
        let label = format!("outcome=\"{outcome}\"");
        assert_eq!(
            common::metric_sample(&metrics, "peroxo_config_reloads_total", &label),
            Some(count),
            "{outcome}"
        );
    }
}

#[tokio::test]
async fn a_reload_reads_the_secret_file_again_and_rotates_the_key_for_new_connections() {
    use peroxo_protocol::domain::UserKey;
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("jwt-secret");
    std::fs::write(&secret_file, "the-first-secret-of-at-least-32-bytes\n").unwrap();
    let jwt = |c: &mut Config| {
        c.auth.mode = peroxo_config::AuthMode::Jwt;
        c.auth.jwt_secret_file = Some(secret_file.clone());
    };
    let server = TestServer::start_with(jwt).await;
    let config = reloaded(&server, jwt);
    let token = |user: &str| {
        let key = UserKey::new("default", user);
        peroxo_gateway::identity::sign_token(&config.auth, &key, std::time::Duration::from_secs(60))
            .unwrap()
    };
    let old_token = token("alice");
    let mut alice = common::Client::connect(&server.ws_url_with_token(&old_token)).await;

    std::fs::write(&secret_file, "the-second-secret-of-at-least-32-bytes\n").unwrap();
    let report = reload(&server, &config).await;
    // The file's name did not change, so no key did; the file was read again all the same.
    assert!(report.applied.is_empty(), "{:?}", report.applied);
    let refused = common::Client::try_connect(&server.ws_url_with_token(&old_token)).await;
    assert_eq!(refused.err().expect("the old key is retired").0, 401);
    common::Client::connect(&server.ws_url_with_token(&token("bob"))).await;
    // The session admitted with the old key stays open.
    alice.send_json(json!({"type": "ping", "req_id": 1})).await;
    alice.expect("pong").await;
}
