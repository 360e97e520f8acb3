//! This node's NATS link: the connection, the subjects, and the checks that the link is up.
//!
//! [`connect`] sets up the async-nats client, which connects in the background and reconnects
//! by itself without limit, waiting [`reconnect_delay`] between attempts (exponential backoff
//! with jitter, so that nodes do not reconnect in lockstep). [`check_config`] checks the NATS
//! URLs before anything starts. [`Subjects`] names every subject the cluster uses, and the
//! *echo* lets the Cluster make sure the server already holds a new subscription.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use peroxo_config::ClusterConfig;
use peroxo_protocol::domain::UserKey;
use tokio::task::JoinHandle;

/// The longest a new interest waits for the NATS server to confirm its subscription.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);
/// The wait before the first reconnect attempt; it doubles with each attempt.
const RECONNECT_BASE: Duration = Duration::from_millis(50);
/// The longest wait between two reconnect attempts (before jitter).
const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// The subjects of one cluster, all under `cluster.subject_prefix`.
#[derive(Debug, Clone)]
pub(super) struct Subjects {
    prefix: String,
}

impl Subjects {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Where every node publishes its presence changes, heartbeats, snapshots, `hello` and
    /// `bye`.
    pub(super) fn presence(&self) -> String {
        format!("{}.presence", self.prefix)
    }

    /// The interest subject of `user`: deliveries and typing for that user's sessions.
    pub(super) fn user(&self, user: &UserKey) -> String {
        format!(
            "{}.user.{}.{}",
            self.prefix,
            subject_token(&user.tenant),
            subject_token(&user.user)
        )
    }

    /// Where `node` answers its own checks that the server holds a subscription.
    pub(super) fn echo(&self, node: &str) -> String {
        format!("{}.node.{}.echo", self.prefix, subject_token(node))
    }
}

/// Writes an id as one NATS subject token: ids may hold `.`, which separates tokens, so it is
/// written as `~` (a character ids cannot hold).
fn subject_token(id: &str) -> String {
    id.replace('.', "~")
}

/// Checks what only the cluster knows of `[cluster]` (the NATS URLs' syntax), before
/// anything starts; [`peroxo_config::Config::validate`] checks the rest.
pub fn check_config(config: &ClusterConfig) -> Result<(), peroxo_config::ConfigError> {
    let valid = |u: &str| {
        let u = u.trim();
        u.starts_with("nats://") && u.parse::<async_nats::ServerAddr>().is_ok()
    };
    if config.mode == peroxo_config::ClusterMode::Nats && !config.nats_url.split(',').all(valid) {
        return Err(peroxo_config::ConfigError::new(
            "cluster.nats_url",
            format!("must be nats:// URLs, got {:?}", config.nats_url),
        ));
    }
    Ok(())
}

/// Connects to NATS with exponential backoff and jitter on reconnects; `on_reconnect` runs
/// after every reconnect.
pub async fn connect(
    config: &ClusterConfig,
    node: &str,
    on_reconnect: impl Fn() + Send + Sync + 'static,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let on_reconnect = Arc::new(on_reconnect);
    let servers: Vec<async_nats::ServerAddr> = config
        .nats_url
        .split(',')
        .filter_map(|u| u.trim().parse().ok())
        .collect();
    let was_connected = Arc::new(AtomicBool::new(false));
    async_nats::ConnectOptions::new()
        .name(format!("peroxo-{node}"))
        .retry_on_initial_connect()
        // A dead link shows within two pings; `recent` deliveries cover that window.
        .ping_interval(config.presence_ttl_secs / 3)
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let on_reconnect = Arc::clone(&on_reconnect);
            let was_connected = Arc::clone(&was_connected);
            async move {
                match event {
                    async_nats::Event::Connected => {
                        if was_connected.swap(true, Ordering::Relaxed) {
                            on_reconnect();
                        }
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting");
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        })
        .connect(servers)
        .await
}

/// The wait before reconnect attempt number `attempts`, with a fresh jitter.
fn reconnect_delay(attempts: usize) -> Duration {
    let jitter_permille = (pseudo_random() % 250) as u32;
    backoff(attempts, jitter_permille)
}

/// Exponential backoff from [`RECONNECT_BASE`] up to [`RECONNECT_CAP`], shortened by
/// `jitter_permille` thousandths (up to a quarter, so nodes do not reconnect in lockstep).
fn backoff(attempts: usize, jitter_permille: u32) -> Duration {
    let base = RECONNECT_BASE.saturating_mul(1 << attempts.min(7) as u32);
    let capped = base.min(RECONNECT_CAP);
    capped.mul_f64(1.0 - f64::from(jitter_permille) / 1000.0)
}

/// A cheap pseudo-random number: the nanoseconds of the wall clock. Good enough to spread
/// reconnects, not for anything that must be unpredictable.
fn pseudo_random() -> u64 {
    u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    )
}

/// Whether the client is connected right now.
pub(super) fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Whether a link that was up is down now (before the first connection, publishes wait in
/// the client and go out once it connects).
pub(super) fn is_lost(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Disconnected
}

/// Answers every request on this node's echo subject with an empty reply, until the
/// subscription ends.
pub(super) fn serve_echo(
    client: async_nats::Client,
    mut subscriber: async_nats::Subscriber,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            if let Some(reply) = message.reply {
                let _ = client.publish(reply, bytes::Bytes::new()).await;
            }
        }
    })
}

/// Waits (at most [`CONFIRM_TIMEOUT`]) until the server holds every subscription made so far.
///
/// The server handles a connection's commands in order: once it answers a request sent after
/// the subscription, it holds the subscription. While NATS is away there is nothing to wait
/// for: the subscription returns with the connection, and the sync_hint sent then covers what
/// was missed.
pub(super) async fn confirm_subscriptions(client: &async_nats::Client, echo_subject: &str) {
    if !is_connected(client) {
        return;
    }
    let echo = client.request(echo_subject.to_owned(), bytes::Bytes::new());
    if !matches!(tokio::time::timeout(CONFIRM_TIMEOUT, echo).await, Ok(Ok(_))) {
        tracing::debug!("the NATS server did not confirm a new interest in time");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dot_in_an_id_becomes_a_tilde_so_each_id_is_one_token() {
        let subjects = Subjects::new("peroxo");
        let user = UserKey::new("acme.eu", "bob.smith");
        assert_eq!(subjects.user(&user), "peroxo.user.acme~eu.bob~smith");
        assert_eq!(subjects.echo("gw.1"), "peroxo.node.gw~1.echo");
        assert_eq!(subjects.presence(), "peroxo.presence");
    }

    #[test]
    fn the_backoff_doubles_from_50_ms_up_to_5_s() {
        let waits: Vec<Duration> = (0..9).map(|attempt| backoff(attempt, 0)).collect();
        let millis: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(usize::MAX, 0), RECONNECT_CAP);
    }

    #[test]
    fn jitter_takes_off_at_most_a_quarter() {
        assert_eq!(backoff(1, 249), Duration::from_millis(100).mul_f64(0.751));
        for _ in 0..100 {
            let wait = reconnect_delay(20);
            assert!(
                wait <= RECONNECT_CAP && wait > RECONNECT_CAP * 3 / 4,
                "{wait:?}"
            );
        }
    }
}
