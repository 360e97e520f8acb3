//! The event feed, `notify` and webhooks, against a real HTTP receiver started by each test:
//! every change in commit order, long polls, pushes for offline recipients only, signed
//! deliveries retried after 500s and timeouts, dead letters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::common::{DEADLINE, TestServer, try_http_request_with_body};

const KEY: &str = "pxk_webhook_tests_key";
const SECRET: &str = "whsec_test_secret_0123";

fn sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn with_key(config: &mut peroxo_config::Config) {
    config.server_api.keys.push(peroxo_config::ApiKeyEntry {
        tenant: "default".to_owned(),
        name: "tests".to_owned(),
        sha256: sha256(KEY),
    });
}

async fn call(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let headers = format!("Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, text) =
        try_http_request_with_body(server.gateway.http_addr, method, path, &headers, &body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn send(server: &TestServer, from: &str, to: &str, text: &str, id: &str) -> Value {
    let body = json!({"from": from, "to": to, "text": text, "client_msg_id": id});
    let (status, ack) = call(server, "POST", "/api/v1/messages", Some(body)).await;
    assert_eq!(status, 200, "{ack}");
    ack
}

/// Every event of the feed after `after`, read until `done` holds for them or the deadline.
async fn feed_until(server: &TestServer, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut events = Vec::new();
    let mut after = "0".to_owned();
    loop {
        let path = format!("/api/v1/events?after={after}&wait=1");
        let (status, page) = call(server, "GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        after = page["next_after"].as_str().unwrap().to_owned();
        if done(&events) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed never had what was expected: {events:#?}"
        );
    }
}

#[tokio::test]
async fn the_feed_holds_every_change_in_commit_order_and_a_long_poll_waits_for_the_next() {
    let server = TestServer::start_with(with_key).await;
    send(&server, "system", "alice", "one", "f1").await;
    let create = json!({"owner": "alice", "title": "T", "members": ["bob"], "client_msg_id": "g1"});
    let (status, _) = call(&server, "POST", "/api/v1/groups", Some(create)).await;
    assert_eq!(status, 201);
    let events = feed_until(&server, |e| e.len() >= 2).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["message.created", "group.created"]);
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, [1, 2], "gapless, in commit order");
    assert_eq!(events[0]["data"]["recipients"], json!(["alice"]));
    assert!(
        events[0]["data"].get("text").is_none(),
        "no text unless previews are on"
    );

    // A long poll after the last event waits for the next one.
    let addr = server.gateway.http_addr;
    let poll = tokio::spawn(async move {
        let headers = format!("Authorization: Bearer {KEY}\r\n");
        try_http_request_with_body(addr, "GET", "/api/v1/events?after=2&wait=8", &headers, "")
            .await
            .unwrap()
    });
    // The poll is waiting: nothing has committed after event 2 yet.
    tokio::task::yield_now().await;
    send(&server, "system", "alice", "two", "f2").await;
    let (status, body) = tokio::time::timeout(DEADLINE, poll).await.unwrap().unwrap();
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["events"][0]["id"], "3", "{page}");
    assert_eq!(page["events"][0]["type"], "message.created");

    let (status, body) = call(&server, "GET", "/api/v1/events?wait=31", None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let (status, body) = call(&server, "GET", "/api/v1/events?after=x", None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
}

#[tokio::test]
async fn notify_fires_for_an_offline_recipient_and_not_for_one_that_got_the_message() {
    let server = TestServer::start_with(|config| {
        with_key(config);
        config.push.delay = Duration::from_millis(300);
        config.events.text_preview_chars = 5;
    })
    .await;
    let _bob = server.connect("bob").await;
    send(&server, "alice", "bob", "for bob, online", "n1").await;
    send(&server, "alice", "carol", "for carol, offline", "n2").await;
    send(&server, "alice", "carol", "and again", "n3").await;
    // Decisions are made in delivery order: once carol's second notify is in, bob's
    // (earlier) decision has been made too.
    let events = feed_until(&server, |e| {
        e.iter().filter(|e| e["type"] == "notify").count() >= 2
    })
    .await;
    let notifies: Vec<&Value> = events.iter().filter(|e| e["type"] == "notify").collect();
    assert_eq!(notifies.len(), 2, "{notifies:#?}");
    for notify in &notifies {
        assert_eq!(
            notify["data"]["user"], "carol",
            "only the offline recipient: {notify}"
        );
        assert_eq!(notify["data"]["from"], "alice");
        assert_eq!(notify["conversation_id"], "alice:carol");
    }
    assert_eq!(
        notifies[0]["data"]["text"], "for c",
        "a preview of 5 characters"
    );
    assert_eq!(
        notifies[1]["data"]["unread_total"], 2,
        "the badge counts both"
    );
}

/// What the receiver got: each request's headers and body, and how it answered.
#[derive(Default)]
struct Received {
    requests: Mutex<Vec<(HeaderMap, Bytes, u16)>>,
    /// Requests answered so far.
    count: AtomicUsize,
}

/// Starts a receiver that answers the n-th request (from 0) with `answer(n)`: a status, or
/// `None` to hang past the webhook timeout.
async fn receiver(
    answer: impl Fn(usize) -> Option<u16> + Send + Sync + 'static,
) -> (String, Arc<Received>) {
    let received = Arc::new(Received::default());
    let state = Arc::clone(&received);
    let answer = Arc::new(answer);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let state = Arc::clone(&state);
            let answer = Arc::clone(&answer);
            async move {
                let n = state.count.fetch_add(1, Ordering::SeqCst);
                match answer(n) {
                    Some(status) => {
                        state.requests.lock().unwrap().push((headers, body, status));
                        StatusCode::from_u16(status).unwrap()
                    }
                    None => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        StatusCode::OK
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn endpoint(name: &str, url: &str, events: &[&str]) -> peroxo_config::WebhookEndpoint {
    peroxo_config::WebhookEndpoint {
        name: name.to_owned(),
        tenant: "default".to_owned(),
        url: url.to_owned(),
        secret: peroxo_config::Secret::new(SECRET),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
    }
}

/// The events of every request answered 2xx, each request's signature checked.
fn accepted_events(received: &Received) -> Vec<Value> {
    let requests = received.requests.lock().unwrap();
    let mut events = Vec::new();
    for (headers, body, status) in requests.iter() {
        let timestamp = headers["PerOXO-Timestamp"].to_str().unwrap();
        let body_text = std::str::from_utf8(body).unwrap();
        assert_eq!(
            headers["PerOXO-Signature"].to_str().unwrap(),
            peroxo_gateway::webhooks::signature(SECRET, timestamp, body_text),
            "a delivery signed with the endpoint's secret"
        );
        if (200..300).contains(status) {
            let delivery: Value = serde_json::from_str(body_text).unwrap();
            events.extend(delivery["events"].as_array().unwrap().iter().cloned());
        }
    }
    events
}

async fn wait_for_events(received: &Received, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let events = accepted_events(received);
        if events.len() >= count {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receiver got {} events of {count}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn webhooks_are_signed_retried_after_500s_and_timeouts_and_keep_commit_order() {
    // The first two deliveries fail with 500, the third hangs past the timeout.
    let (url, received) = receiver(|n| match n {
        0 | 1 => Some(500),
        2 => None,
        _ => Some(200),
    })
    .await;
    let server = TestServer::start_with(|config| {
        with_key(config);
        config
            .webhooks
            .endpoints
            .push(endpoint("hook", &url, &["message.created"]));
        config.webhooks.timeout = Duration::from_millis(300);
        config.webhooks.retry_initial = Duration::from_millis(10);
        config.webhooks.retry_max = Duration::from_millis(50);
    })
    .await;
    for i in 0..10 {
        let to = if i % 2 == 0 { "dan" } else { "eve" };
        send(&server, "system", to, &format!("m{i}"), &format!("w{i}")).await;
    }
    let events = wait_for_events(&received, 10).await;
    assert!(
        received.count.load(Ordering::SeqCst) >= 4,
        "three failures, then success"
    );
    // At least once: a batch may come twice; deduped by id, each event once, in order.
    let mut ids: Vec<u64> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    ids.dedup();
    assert_eq!(
        ids,
        (1..=10).collect::<Vec<_>>(),
        "every event, in commit order"
    );
    for conversation in ["dan:system", "eve:system"] {
        let in_conversation: Vec<u64> = events
            .iter()
            .filter(|e| e["conversation_id"] == conversation)
            .map(|e| e["data"]["message_id"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(
            in_conversation.windows(2).all(|w| w[0] <= w[1]),
            "{in_conversation:?}"
        );
    }
    let metrics = crate::common::http_request(server.gateway.http_addr, "GET", "/metrics", "")
        .await
        .1;
    let failed = crate::common::metric_sample(
        &metrics,
        "peroxo_webhook_deliveries_total",
        "outcome=\"failed\"",
    );
    assert!(
        failed.is_some_and(|f| f >= 3.0),
        "failures counted: {failed:?}"
    );
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_is_dead_lettered_and_moves_on() {
    let (failing_url, failing) = receiver(|_| Some(503)).await;
    let (watch_url, watcher) = receiver(|_| Some(204)).await;
    let server = TestServer::start_with(|config| {
        with_key(config);
        config
            .webhooks
            .endpoints
            .push(endpoint("down", &failing_url, &[]));
        config.webhooks.endpoints.push(endpoint(
            "watch",
            &watch_url,
            &["webhook.failed", "message.created"],
        ));
        config.webhooks.max_attempts = 2;
        config.webhooks.retry_initial = Duration::from_millis(10);
        config.webhooks.retry_max = Duration::from_millis(20);
    })
    .await;
    send(&server, "system", "fay", "lost to a down endpoint", "d1").await;
    // The watcher gets the message, then the record of the batch the other endpoint dropped.
    let events = wait_for_events(&watcher, 2).await;
    let failed = events
        .iter()
        .find(|e| e["type"] == "webhook.failed")
        .expect("a webhook.failed event");
    assert_eq!(failed["data"]["webhook"], "down");
    assert_eq!(failed["data"]["first_id"], "1");
    assert_eq!(failed["data"]["attempts"], 2);
    assert_eq!(
        failing.count.load(Ordering::SeqCst),
        2,
        "tried max_attempts times"
    );
    // The down endpoint moved on: the next message is offered to it (and fails again).
    send(&server, "system", "fay", "next", "d2").await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while failing.count.load(Ordering::SeqCst) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the endpoint never moved on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It never receives the record of its own failure.
    for (_, body, _) in failing.requests.lock().unwrap().iter() {
        assert!(
            !std::str::from_utf8(body)
                .unwrap()
                .contains("webhook.failed")
        );
    }
}
