//! The shared harness: a gateway node in this process (what `peroxo serve` runs) on port 0 over
//! a temporary SQLite file, so that the client is tested against the server of the same commit,
//! and helpers that wait for a client's events with a deadline instead of sleeping.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use peroxo_client::{Backoff, ClientConfig, Event, Events};
use peroxo_config::{AuthMode, Config, Secret};
use peroxo_gateway::Gateway;
use tokio::time::Instant;

/// How long any single expectation may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The HS256 secret of a node in JWT mode.
pub const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// A running node and the directory its data lives in.
pub struct TestServer {
    pub gateway: Gateway,
    dir: tempfile::TempDir,
}

impl TestServer {
    /// A node in dev mode (`peroxo serve --dev`): the client names itself with `?user=`.
    pub async fn dev() -> Self {
        Self::start(|_| {}).await
    }

    /// A node in JWT mode that verifies HS256 tokens signed with [`SECRET`] and closes a
    /// session at its token's `exp` exactly (no leeway).
    pub async fn jwt() -> Self {
        Self::start(|config| {
            config.auth.mode = AuthMode::Jwt;
            config.auth.jwt_secret = Secret::new(SECRET);
            config.auth.leeway_secs = 0;
        })
        .await
    }

    async fn start(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.auth.mode = AuthMode::Dev;
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.storage.listen = "127.0.0.1:0".parse().unwrap();
        config.storage.sqlite_path = dir.path().join("peroxo.db");
        adjust(&mut config);
        let gateway = Gateway::start(config).await.expect("the node starts");
        Self { gateway, dir }
    }

    /// The WebSocket URL without a user (JWT mode, or to hand to a program).
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.gateway.http_addr)
    }

    /// The WebSocket URL of `user` on a dev node.
    pub fn user_url(&self, user: &str) -> String {
        format!("{}?user={user}", self.ws_url())
    }
}

/// A client config with quick reconnects, for tests.
pub fn config(url: String) -> ClientConfig {
    let mut config = ClientConfig::new(url);
    config.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(300),
    };
    config.connect_timeout = Duration::from_secs(3);
    config
}

/// The next event that `want` picks, waiting at most [`DEADLINE`]; every event before it is
/// handed to `other`.
pub async fn next_matching<T>(
    events: &mut Events,
    what: &str,
    mut want: impl FnMut(&Event) -> Option<T>,
    mut other: impl FnMut(&Event),
) -> T {
    let until = Instant::now() + DEADLINE;
    loop {
        let event = tokio::time::timeout_at(until, events.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("the client stopped before {what}"));
        match want(&event) {
            Some(found) => return found,
            None => other(&event),
        }
    }
}
