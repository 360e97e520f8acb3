//! The server API (`/api/v1/`): API keys by hash, one tenant per key, the methods an
//! application's backend calls, and exact JSON errors for bad requests.

use serde_json::{Value, json};

use crate::common::{TestServer, try_http_request_with_body};

/// A key of tenant `default`, and one of tenant `acme`.
pub(crate) const KEY: &str = "pxk_test_default_0123456789abcdef";
const ACME_KEY: &str = "pxk_test_acme_0123456789abcdef";

fn sha256(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

pub(crate) fn with_keys(config: &mut peroxo_config::Config) {
    for (tenant, key) in [("default", KEY), ("acme", ACME_KEY)] {
        config.server_api.keys.push(peroxo_config::ApiKeyEntry {
            tenant: tenant.to_owned(),
            name: format!("{tenant}-backend"),
            sha256: sha256(key),
        });
    }
}

async fn api_server() -> TestServer {
    TestServer::start_with(with_keys).await
}

/// Calls the API with `key` (none when empty); returns the status and the JSON body.
pub(crate) async fn call(
    server: &TestServer,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut headers = String::new();
    if !key.is_empty() {
        headers.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    if !body.is_empty() {
        headers.push_str("Content-Type: application/json\r\n");
    }
    raw(server, method, path, &headers, &body).await
}

async fn raw(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, Value) {
    let (status, text) =
        try_http_request_with_body(server.gateway.http_addr, method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path} answered {status} without JSON ({e}): {text}"));
    (status, value)
}

#[tokio::test]
async fn a_key_is_required_and_reaches_only_its_own_tenant() {
    let server = api_server().await;
    let message = json!({"from": "shop", "to": "alice", "text": "hi", "client_msg_id": "k1"});
    let (status, body) = call(
        &server,
        "",
        "POST",
        "/api/v1/messages",
        Some(message.clone()),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = call(
        &server,
        "pxk_unknown",
        "POST",
        "/api/v1/messages",
        Some(message.clone()),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );

    let mut acme_alice = server.connect_in("acme", "alice").await;
    let mut default_alice = server.connect("alice").await;
    let (status, ack) = call(&server, ACME_KEY, "POST", "/api/v1/messages", Some(message)).await;
    assert_eq!(status, 200, "{ack}");
    let delivered = acme_alice.wait_for("message").await;
    assert_eq!(delivered["from"], "shop");
    assert_eq!(delivered["text"], "hi");
    // The same user id in another tenant is someone else: nothing reaches it.
    let frames = default_alice.frames_until_pong().await;
    assert!(
        frames.iter().all(|f| f["type"] != "message"),
        "a key of acme reached tenant default: {frames:?}"
    );
}

#[tokio::test]
async fn a_send_is_answered_after_its_commit_delivered_and_idempotent() {
    let server = api_server().await;
    let mut bob = server.connect_v3("bob").await;
    let message = json!({"from": "system", "to": "bob", "text": "your order shipped", "client_msg_id": "order-1"});
    let (status, first) = call(
        &server,
        KEY,
        "POST",
        "/api/v1/messages",
        Some(message.clone()),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    assert_eq!(first["conversation_id"], "bob:system");
    assert_eq!(first["seq"], 1);
    let delivered = bob.wait_for("message").await;
    assert_eq!(delivered["message_id"], first["message_id"]);
    assert_eq!(delivered["text"], "your order shipped");

    let (status, again) = call(&server, KEY, "POST", "/api/v1/messages", Some(message)).await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message_id"], first["message_id"]);
    let (status, sync) = call(
        &server,
        KEY,
        "GET",
        "/api/v1/users/bob/sync?after_seq=0",
        None,
    )
    .await;
    assert_eq!(status, 200, "{sync}");
    assert_eq!(
        sync["messages"].as_array().unwrap().len(),
        1,
        "stored once: {sync}"
    );
}

#[tokio::test]
async fn a_batch_answers_every_message_in_order_each_on_its_own() {
    let server = api_server().await;
    let batch = json!({"messages": [
        {"from": "system", "to": "carol", "text": "one", "client_msg_id": "b1"},
        {"from": "system", "to": "not a user!", "text": "two", "client_msg_id": "b2"},
        {"from": "system", "conversation_id": "carol:system", "text": "three", "client_msg_id": "b3"},
    ]});
    let (status, body) = call(&server, KEY, "POST", "/api/v1/messages/batch", Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["ok"], true);
    assert_eq!(results[0]["ack"]["seq"], 1);
    assert_eq!(results[1]["ok"], false);
    assert_eq!(results[1]["error"], "bad_request");
    assert_eq!(results[2]["ok"], true);
    assert_eq!(results[2]["ack"]["seq"], 2, "in order, after the first");

    let empty = json!({"messages": []});
    let (status, body) = call(&server, KEY, "POST", "/api/v1/messages/batch", Some(empty)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
}

#[tokio::test]
async fn groups_are_created_and_changed_with_the_acting_member_s_rights() {
    let server = api_server().await;
    let mut bob = server.connect_v3("bob").await;
    let create =
        json!({"owner": "alice", "title": "Team", "members": ["bob"], "client_msg_id": "team-1"});
    let (status, created) =
        call(&server, KEY, "POST", "/api/v1/groups", Some(create.clone())).await;
    assert_eq!(status, 201, "{created}");
    let group = created["conversation_id"].as_str().unwrap().to_owned();
    let event = bob.wait_for("event").await;
    assert_eq!(event["event"], "group_created");
    let (status, again) = call(&server, KEY, "POST", "/api/v1/groups", Some(create)).await;
    assert_eq!((status, again["duplicate"].as_bool()), (200, Some(true)));
    assert_eq!(again["conversation_id"], group.as_str());

    let rename_as_bob = json!({"as": "bob", "title": "Mine"});
    let path = format!("/api/v1/groups/{group}");
    let (status, body) = call(&server, KEY, "PATCH", &path, Some(rename_as_bob)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("not_allowed")),
        "{body}"
    );
    let (status, body) = call(
        &server,
        KEY,
        "PATCH",
        &path,
        Some(json!({"as": "alice", "title": "Ours"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let renamed = bob.wait_for("event").await;
    assert_eq!(renamed["event"], "group_renamed");
    assert_eq!(renamed["title"], "Ours");

    let members_path = format!("/api/v1/groups/{group}/members");
    let (status, body) = call(
        &server,
        KEY,
        "POST",
        &members_path,
        Some(json!({"as": "alice", "users": ["carol"]})),
    )
    .await;
    assert_eq!(
        (status, body["changed"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let (status, body) = call(&server, KEY, "GET", &format!("{members_path}?as=bob"), None).await;
    assert_eq!(status, 200, "{body}");
    let mut names: Vec<&str> = body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["alice", "bob", "carol"]);
    let (status, body) = call(
        &server,
        KEY,
        "DELETE",
        &format!("{members_path}/carol?as=alice"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        &server,
        KEY,
        "GET",
        &format!("{members_path}?as=carol"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("not_a_member")),
        "{body}"
    );
    let (status, body) = call(&server, KEY, "GET", &members_path, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
}

#[tokio::test]
async fn a_user_s_conversations_history_and_read_marks_are_those_the_user_sees() {
    let server = api_server().await;
    let mut dana = server.connect_v3("dana").await;
    let mut last = Value::Null;
    for i in 0..3 {
        let send = json!({"from": "erin", "to": "dana", "text": format!("m{i}"), "client_msg_id": format!("h{i}")});
        let (status, ack) = call(&server, KEY, "POST", "/api/v1/messages", Some(send)).await;
        assert_eq!(status, 200, "{ack}");
        last = ack;
    }
    let (status, list) = call(
        &server,
        KEY,
        "GET",
        "/api/v1/users/dana/conversations",
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total_unread"], 3);
    assert_eq!(list["conversations"][0]["conversation_id"], "dana:erin");
    let path = "/api/v1/users/dana/conversations/dana:erin/messages?limit=2";
    let (status, history) = call(&server, KEY, "GET", path, None).await;
    assert_eq!(status, 200, "{history}");
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m1", "m2"]);
    assert!(history["next_before"].is_string(), "{history}");

    let read = json!({"message_id": last["message_id"]});
    let (status, state) = call(
        &server,
        KEY,
        "POST",
        "/api/v1/users/dana/conversations/dana:erin/read",
        Some(read),
    )
    .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["unread_count"], 0);
    // Every device of the user hears of the mark, as if the user had made it.
    let marker = dana.wait_for("event").await;
    assert_eq!(marker["event"], "read_marker");
    let (_, list) = call(
        &server,
        KEY,
        "GET",
        "/api/v1/users/dana/conversations",
        None,
    )
    .await;
    assert_eq!(list["total_unread"], 0);

    let (status, body) = call(
        &server,
        KEY,
        "GET",
        "/api/v1/users/zed/conversations/dana:erin/messages",
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not a participant"),
        "{body}"
    );
}

#[tokio::test]
async fn presence_answers_for_the_tenant_and_disconnect_closes_with_the_code_given() {
    let server = api_server().await;
    let mut frank = server.connect("frank").await;
    let (status, body) = call(
        &server,
        KEY,
        "GET",
        "/api/v1/presence?users=frank,gina",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["users"],
        json!([{"user": "frank", "online": true}, {"user": "gina", "online": false}])
    );
    let (_, other_tenant) = call(
        &server,
        ACME_KEY,
        "GET",
        "/api/v1/presence?users=frank",
        None,
    )
    .await;
    assert_eq!(other_tenant["users"][0]["online"], false);

    let request = json!({"code": 4010, "reason": "account suspended"});
    let (status, body) = call(
        &server,
        KEY,
        "POST",
        "/api/v1/users/frank/disconnect",
        Some(request),
    )
    .await;
    assert_eq!(
        (status, body["disconnected"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let close = frank.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4010);
    assert_eq!(close.reason.as_str(), "account suspended");
    let mut online = true;
    for _ in 0..200 {
        let (_, body) = call(&server, KEY, "GET", "/api/v1/presence?users=frank", None).await;
        online = body["users"][0]["online"].as_bool().unwrap();
        if !online {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(!online, "frank still online after the disconnect");
    let bad = json!({"code": 1000});
    let (status, body) = call(
        &server,
        KEY,
        "POST",
        "/api/v1/users/frank/disconnect",
        Some(bad),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
}

#[tokio::test]
async fn bad_requests_get_exact_json_errors() {
    let server = TestServer::start_with(|config| {
        with_keys(config);
        config.server_api.max_body_bytes = 2048;
    })
    .await;
    let auth = format!("Authorization: Bearer {KEY}\r\n");
    let (status, body) = raw(&server, "POST", "/api/v1/messages", &auth, "{not json").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let unknown_field =
        json!({"from": "a", "to": "b", "text": "x", "client_msg_id": "1", "colour": "red"});
    let (status, body) = call(
        &server,
        KEY,
        "POST",
        "/api/v1/messages",
        Some(unknown_field),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("colour"),
        "{body}"
    );
    let both = json!({"from": "a", "to": "b", "conversation_id": "a:b", "text": "x", "client_msg_id": "1"});
    let (status, _) = call(&server, KEY, "POST", "/api/v1/messages", Some(both)).await;
    assert_eq!(status, 400);
    let big = json!({"from": "a", "to": "b", "text": "x".repeat(4096), "client_msg_id": "1"});
    let (status, body) = call(&server, KEY, "POST", "/api/v1/messages", Some(big)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    let (status, body) = call(&server, KEY, "GET", "/api/v1/nothing", None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = call(&server, KEY, "GET", "/api/v1/messages", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, body) = call(
        &server,
        KEY,
        "GET",
        "/api/v1/users/bad%20id/conversations",
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (status, body) = call(
        &server,
        KEY,
        "GET",
        "/api/v1/users/a/sync?after_seq=minus",
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (status, body) = call(
        &server,
        KEY,
        "GET",
        "/api/v1/users/a/conversations/a:b/messages?before=x",
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
}

#[tokio::test]
async fn allowed_ips_and_the_rate_per_key_are_enforced() {
    let server = TestServer::start_with(|config| {
        with_keys(config);
        config.server_api.allowed_ips = vec!["10.0.0.0/8".to_owned()];
    })
    .await;
    let (status, body) = call(&server, KEY, "GET", "/api/v1/presence?users=a", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden_ip")),
        "{body}"
    );

    let server = TestServer::start_with(|config| {
        with_keys(config);
        config.server_api.rate_per_sec = 1;
        config.server_api.rate_burst = 1;
    })
    .await;
    let (status, _) = call(&server, KEY, "GET", "/api/v1/presence?users=a", None).await;
    assert_eq!(status, 200);
    let (status, body) = call(&server, KEY, "GET", "/api/v1/presence?users=a", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    // Another key has its own budget.
    let (status, _) = call(&server, ACME_KEY, "GET", "/api/v1/presence?users=a", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_documented_method_is_served() {
    let server = api_server().await;
    let (status, document) = call(&server, "", "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    let paths = document["paths"].as_object().expect("paths");
    assert!(!paths.is_empty());
    for (path, item) in paths {
        let concrete = path
            .replace("{conversation_id}", "g~000000000000000000000000")
            .replace("{user}", "someone");
        for method in item.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            let (status, body) =
                call(&server, KEY, &method, &format!("/api/v1{concrete}"), None).await;
            assert!(
                status != 405 && body["error"] != "not_found",
                "{method} {path} is documented but answered {status} {body}"
            );
        }
    }
    let in_repository: Value = serde_json::from_str(peroxo_gateway::api::OPENAPI_DOCUMENT).unwrap();
    assert_eq!(
        document, in_repository,
        "the document served is docs/openapi.json"
    );
}
