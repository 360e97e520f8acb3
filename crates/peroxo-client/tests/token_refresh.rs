//! Token refresh against a node in JWT mode: a client with a token source sends `refresh`
//! before its token's `exp`, so the connection outlives the token it opened with.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{SECRET, TestServer, config, next_matching};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use peroxo_client::{Client, Event, Status};
use serde_json::json;

/// An HS256 token for `user` that expires in `ttl_secs` (whole seconds, as `exp` is).
fn token_for(user: &str, ttl_secs: u64) -> (String, SystemTime) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = now + ttl_secs;
    let claims = json!({"sub": user, "iat": now, "exp": exp});
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    (token, UNIX_EPOCH + Duration::from_secs(exp))
}

fn session_id(status: &Status) -> String {
    match status {
        Status::Connected { welcome, .. } => welcome.session_id.clone(),
        other => panic!("not connected: {other:?}"),
    }
}

#[tokio::test]
async fn a_short_lived_token_is_refreshed_and_the_connection_outlives_its_exp() {
    let server = TestServer::jwt().await;
    // The node closes a session with 4001 at its token's `exp` (no leeway). Every token lives
    // 3 s, so the client refreshes halfway, again and again.
    let (first, first_exp) = token_for("alice", 3);
    let mut config = config(server.ws_url());
    config.token = Some(first);
    config.fresh_token = Some(Arc::new(|| Some(token_for("alice", 3).0)));
    let (alice, mut events) = Client::connect(config).await.unwrap();
    let session = session_id(&alice.status());

    next_matching(
        &mut events,
        "a refresh",
        |event| matches!(event, Event::TokenRefreshed { .. }).then_some(()),
        |event| assert!(!ends_connection(event), "{event:?}"),
    )
    .await;

    // Watch the connection until a second past the first token's `exp`.
    let until = first_exp + Duration::from_secs(1);
    while let Ok(left) = until.duration_since(SystemTime::now()) {
        let Ok(event) = tokio::time::timeout(left, events.next()).await else {
            break;
        };
        let event = event.expect("the client runs");
        assert!(!ends_connection(&event), "{event:?}");
    }
    assert_eq!(
        session_id(&alice.status()),
        session,
        "the same connection, never closed with 4001"
    );
    let ack = alice.send("bob", "after the first token's exp").await;
    assert!(ack.is_ok(), "{ack:?}");
    assert_eq!(session_id(&alice.status()), session);
    alice.close().await;
}

/// An event that says the connection ended, or that refreshing did not work.
fn ends_connection(event: &Event) -> bool {
    matches!(
        event,
        Event::Disconnected { .. }
            | Event::ConnectFailed { .. }
            | Event::Stopped(_)
            | Event::TokenRefreshFailed { .. }
    )
}
