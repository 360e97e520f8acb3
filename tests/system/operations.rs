//! What an operator relies on: metrics, health and readiness, the storage service's gRPC
//! health and reflection, and a graceful shutdown that loses nothing.

use crate::common;

use std::collections::{HashMap, HashSet};

use crate::common::metric_sample as sample;
use crate::common::{TestServer, eventually, free_addr, start_store};
use serde_json::{Value, json};

/// GET `path` on the node; returns the status and the body.
async fn get(server: &TestServer, path: &str) -> (u16, String) {
    common::http_request(server.gateway.http_addr, "GET", path, "").await
}

/// Scrapes `/metrics` until the series `name{labels}` is `expected`, and asserts it is at the
/// deadline: a count the scenario determines may still be on its way when the client has seen
/// its effect, and a gauge falls a moment after what it follows (the connection count drops
/// with the connection's context, after the socket tasks have counted the close).
async fn assert_count(server: &TestServer, name: &str, labels: &str, expected: f64) {
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let (_, text) = get(server, "/metrics").await;
        let value = sample(&text, name, labels);
        if value == Some(expected) || tokio::time::Instant::now() >= deadline {
            assert_eq!(value, Some(expected), "{name}{{{labels}}}:\n{text}");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Every sample of `name`, with its series (name and labels).
fn series<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| *series == name || series.starts_with(&format!("{name}{{")))
        .map(|(series, value)| (series, value.parse().unwrap()))
        .collect()
}

#[tokio::test]
async fn metrics_cover_connections_messages_storage_and_the_process() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.dm("bob", "counted", "m1").await;
    alice.dm("bob", "counted", "m1").await; // a duplicate
    bob.expect("message").await;
    alice.send_text("not json").await;
    alice.expect("error").await;

    let (status, text) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "peroxo_connections",
        "peroxo_sessions_opened_total",
        "peroxo_messages_received_total",
        "peroxo_messages_delivered_total",
        "peroxo_send_to_ack_seconds_bucket",
        "peroxo_persist_batch_size_bucket",
        "peroxo_persist_rpc_seconds_bucket",
        "peroxo_outbox_pending",
        "peroxo_outbox_pending_peak",
        "peroxo_storage_up",
        "peroxo_retention_deleted_total",
        "peroxo_retention_last_run_timestamp_seconds",
        "peroxo_process_resident_memory_bytes",
        "peroxo_process_cpu_seconds_total",
        "peroxo_process_open_fds",
    ] {
        assert!(sample(&text, name, "").is_some(), "{name} missing:\n{text}");
    }
    // This node's own counts: two connections, two sends of one message (the second a
    // duplicate, so acked but not delivered again), one bad frame.
    for (name, labels, expected) in [
        ("peroxo_connections", "", 2.0),
        ("peroxo_sessions_opened_total", "", 2.0),
        ("peroxo_messages_received_total", "", 2.0),
        ("peroxo_messages_delivered_total", "", 1.0),
        ("peroxo_acks_total", "duplicate=\"false\"", 1.0),
        ("peroxo_acks_total", "duplicate=\"true\"", 1.0),
        ("peroxo_errors_total", "code=\"bad_request\"", 1.0),
        ("peroxo_send_to_ack_seconds_count", "", 2.0),
        ("peroxo_persist_batch_size_count", "", 2.0),
        ("peroxo_persist_batch_size_sum", "", 2.0),
        ("peroxo_persist_rpc_seconds_count", "", 2.0),
        ("peroxo_outbox_pending", "", 0.0),
        ("peroxo_outbox_pending_peak", "", 1.0),
        ("peroxo_storage_up", "", 1.0),
        ("peroxo_storage_reconnects_total", "", 0.0),
    ] {
        assert_count(&server, name, labels, expected).await;
    }
    let (_, text) = get(&server, "/metrics").await;
    let errors = series(&text, "peroxo_errors_total");
    assert_eq!(
        errors.len(),
        peroxo_protocol::ErrorCode::ALL.len(),
        "{text}"
    );
    assert_eq!(
        errors.iter().map(|(_, v)| v).sum::<f64>(),
        1.0,
        "{errors:?}"
    );
    let restarts = series(&text, "peroxo_actor_restarts_total");
    assert_eq!(restarts.len(), 5, "one series per kind of actor:\n{text}");
    assert!(restarts.iter().all(|(_, v)| *v == 0.0), "{restarts:?}");
    let closed = series(&text, "peroxo_sessions_closed_total");
    // Every close cause, and the client's close and a lost connection.
    assert_eq!(
        closed.len(),
        peroxo_protocol::CloseCause::ALL.len() + 2,
        "{text}"
    );
    assert!(closed.iter().all(|(_, v)| *v == 0.0), "{closed:?}");
    for label in ["reason=\"client_closed\"", "actor=\"router\""] {
        assert!(text.contains(label), "{label} is pre-registered:\n{text}");
    }
    // Labels come from closed sets: no user ids, no paths.
    assert!(!text.contains("alice") && !text.contains("/ws"));

    bob.close().await;
    assert_count(
        &server,
        "peroxo_sessions_closed_total",
        "reason=\"client_closed\"",
        1.0,
    )
    .await;
    assert_count(&server, "peroxo_connections", "", 1.0).await;
    let (_, text) = get(&server, "/metrics").await;
    let closed = series(&text, "peroxo_sessions_closed_total");
    assert_eq!(
        closed.iter().map(|(_, v)| v).sum::<f64>(),
        1.0,
        "{closed:?}"
    );
    assert_count(&server, "peroxo_sessions_opened_total", "", 2.0).await;
}

#[tokio::test]
async fn readiness_follows_storage_and_liveness_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let store_addr = free_addr();
    let store = start_store(dir.path(), store_addr).await;
    let server = TestServer::start_with(|c| {
        c.storage.embedded = false;
        c.storage.endpoint = format!("http://{store_addr}").into();
        c.storage.reconnect_max_ms = 100;
    })
    .await;
    let _alice = server.connect("alice").await;
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!(status, 200, "{body}");

    store.stop().await;
    // Nobody sends: the node's own probe finds storage gone.
    eventually("storage is seen as down", || !server.gateway.storage_up()).await;
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!(status, 503);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["storage"], "unreachable");
    assert_eq!(body["accepting_connections"], true);
    let (status, _) = get(&server, "/healthz").await;
    assert_eq!(status, 200, "the process is alive all the same");

    let store = start_store(dir.path(), store_addr).await;
    eventually("storage is back", || server.gateway.storage_up()).await;
    assert_eq!(get(&server, "/readyz").await.0, 200);
    store.stop().await;
}

#[tokio::test]
async fn the_storage_service_answers_grpc_health_and_reflection() {
    let server = TestServer::start().await;
    let addr = server.gateway.store.as_ref().unwrap().addr;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "peroxo.storage.v1.Storage".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: HashSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains("peroxo.storage.v1.Storage"), "{names:?}");
    assert!(names.contains("grpc.health.v1.Health"), "{names:?}");
}

#[path = "../faults/proxy.rs"]
mod proxy;

/// The health status the storage service at `addr` reports for itself.
async fn storage_health(addr: std::net::SocketAddr) -> i32 {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "peroxo.storage.v1.Storage".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test]
async fn the_storage_health_follows_whether_its_database_answers() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let (name, url) = common::postgres::create_database().await;
    let upstream: tokio_postgres::Config = url.parse().unwrap();
    let (tokio_postgres::config::Host::Tcp(host), Some(port)) =
        (&upstream.get_hosts()[0], upstream.get_ports().first())
    else {
        panic!("the test server is not reached over TCP: {url}");
    };
    let proxy = proxy::Proxy::start(format!("{host}:{port}").parse().unwrap()).await;
    let mut through_proxy = format!(
        "host=127.0.0.1 port={} dbname={name} user={}",
        proxy.addr.port(),
        upstream.get_user().unwrap_or("postgres")
    );
    if let Some(password) = upstream.get_password() {
        through_proxy.push_str(&format!(" password={}", String::from_utf8_lossy(password)));
    }
    let dir = tempfile::tempdir().unwrap();
    let config =
        common::postgres_storage(dir.path(), "127.0.0.1:0".parse().unwrap(), through_proxy);
    let store = peroxo_storage::StoreServer::start(&config).await.unwrap();
    let status_becomes = |wanted: ServingStatus| {
        let addr = store.addr;
        async move {
            let deadline = tokio::time::Instant::now() + common::DEADLINE;
            loop {
                if storage_health(addr).await == wanted as i32 {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "never {wanted:?}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    status_becomes(ServingStatus::Serving).await;
    proxy.cut();
    status_becomes(ServingStatus::NotServing).await;
    proxy.restore();
    status_becomes(ServingStatus::Serving).await;
    store.stop().await;
    common::postgres::drop_database(&name).await;
}

/// What one client saw of its sends during the shutdown test.
#[derive(Default)]
struct Outcomes {
    acked: HashMap<String, String>,
    unacked: Vec<String>,
}

#[tokio::test]
async fn shutdown_mid_burst_loses_nothing_acked_and_resends_store_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("peroxo.db");
    let config = |c: &mut peroxo_config::Config| {
        c.storage.sqlite_path = db.clone();
        c.limits.rate_per_sec = 100_000;
        c.limits.rate_burst = 100_000;
    };
    let server = TestServer::start_with(config).await;
    let senders = ["s1", "s2", "s3"];
    let mut clients = Vec::new();
    for s in senders {
        clients.push(server.connect(s).await);
    }
    let mut recipient = server.connect("rcpt").await;
    recipient.dm("rcpt", "self note before", "pre").await;
    recipient.close().await;

    // Each sender fires a burst without waiting; shutdown starts once some acks are in.
    let total = 200;
    for (client, s) in clients.iter_mut().zip(senders) {
        for i in 0..total {
            let ok = client
                .try_send_text(
                    &json!({"type": "send", "to": "rcpt", "text": format!("{s}-{i}"), "client_msg_id": format!("{s}-{i}")})
                        .to_string(),
                )
                .await;
            if !ok {
                break;
            }
        }
    }
    let mut outcomes: Vec<Outcomes> = senders.iter().map(|_| Outcomes::default()).collect();
    // Read a few acks, then shut down while the rest is in flight.
    let first = clients[0].wait_for("ack").await;
    outcomes[0].acked.insert(
        first["client_msg_id"].as_str().unwrap().to_owned(),
        first["message_id"].as_str().unwrap().to_owned(),
    );
    let shutdown = tokio::spawn(server.gateway.shutdown());
    for (client, outcome) in clients.iter_mut().zip(outcomes.iter_mut()) {
        loop {
            match client.next_or_close().await {
                Ok(frame) if frame["type"] == "ack" => {
                    outcome.acked.insert(
                        frame["client_msg_id"].as_str().unwrap().to_owned(),
                        frame["message_id"].as_str().unwrap().to_owned(),
                    );
                }
                Ok(frame) => assert!(
                    frame["type"] == "error" && frame["code"] == "unavailable",
                    "only acks and `unavailable` during shutdown: {frame}"
                ),
                Err(code) => {
                    assert_eq!(code, Some(1001), "closed as going away");
                    break;
                }
            }
        }
    }
    shutdown.await.unwrap();
    for (outcome, s) in outcomes.iter_mut().zip(senders) {
        outcome.unacked = (0..total)
            .map(|i| format!("{s}-{i}"))
            .filter(|id| !outcome.acked.contains_key(id))
            .collect();
    }

    // Restart on the same data; every client resends what was not acked.
    let server = TestServer::start_with(config).await;
    for (outcome, s) in outcomes.iter().zip(senders) {
        let mut client = server.connect(s).await;
        for id in &outcome.unacked {
            let ack = client.dm("rcpt", id, id).await;
            // Stored now, or stored before the shutdown without the ack getting out.
            let _ = ack["duplicate"].as_bool().unwrap();
        }
        for (id, message_id) in &outcome.acked {
            let again = client.dm("rcpt", id, id).await;
            assert_eq!(again["duplicate"], true, "{id} was acked, so it is stored");
            assert_eq!(&again["message_id"], message_id);
        }
    }

    let mut recipient = server.connect("rcpt").await;
    let stored = recipient.sync_all(0).await;
    let seqs: Vec<u64> = stored.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gapless");
    let texts: Vec<&str> = stored.iter().map(|m| m["text"].as_str().unwrap()).collect();
    let unique: HashSet<&str> = texts.iter().copied().collect();
    assert_eq!(unique.len(), texts.len(), "nothing stored twice");
    assert_eq!(texts.len(), 1 + senders.len() * total, "everything stored");
}
