//! Metrics: one process-wide Prometheus recorder, the node's metric handles, and the text
//! served at `/metrics`.
//!
//! Handles are registered once ([`metrics()`]), so the hot path increments an atomic instead
//! of looking a name up. Label values come from closed sets (error codes, close causes, actor
//! kinds): never a user id or a raw path. Gauges that mirror live state (connections, outbox,
//! storage) are read when `/metrics` is scraped rather than kept up to date on every change.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use peroxo_protocol::{CloseCause, ErrorCode};

const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Every metric the node records, registered once.
pub struct Metrics {
    handle: Option<PrometheusHandle>,
    process: metrics_process::Collector,
    pub connections: Gauge,
    pub sessions_opened: Counter,
    sessions_closed: Vec<(&'static str, Counter)>,
    pub messages_received: Counter,
    pub messages_delivered: Counter,
    acks_fresh: Counter,
    acks_duplicate: Counter,
    errors: Vec<(ErrorCode, Counter)>,
    pub send_to_ack: Histogram,
    pub persist_batch_size: Histogram,
    pub persist_rpc: Histogram,
    pub outbox_pending: Gauge,
    pub outbox_pending_peak: Gauge,
    pub storage_up: Gauge,
    pub storage_reconnects: Counter,
    restarts: Vec<(ActorKind, Counter)>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::install);

/// The node's metrics (the recorder is installed on first use).
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The labels of `peroxo_sessions_closed_total{reason}` besides the server's close causes.
pub const CLIENT_CLOSED: &str = "client_closed";
pub const CONNECTION_LOST: &str = "connection_lost";

impl Metrics {
    fn install() -> Self {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("peroxo_persist_batch_size".to_owned()),
                    BATCH_BUCKETS,
                )
            })
            .and_then(PrometheusBuilder::install_recorder);
        let handle = match handle {
            Ok(handle) => Some(handle),
            Err(error) => {
                // Another recorder owns the process (an embedding application's): record there.
                tracing::warn!(%error, "metrics recorder not installed; /metrics will be empty");
                None
            }
        };
        describe();
        let process = metrics_process::Collector::new("peroxo_");
        process.describe();
        let mut close_labels: Vec<&'static str> =
            CloseCause::ALL.iter().map(|c| c.label()).collect();
        close_labels.extend([CLIENT_CLOSED, CONNECTION_LOST]);
        Self {
            handle,
            process,
            connections: gauge!("peroxo_connections"),
            sessions_opened: counter!("peroxo_sessions_opened_total"),
            sessions_closed: close_labels
                .into_iter()
                .map(|reason| {
                    (
                        reason,
                        counter!("peroxo_sessions_closed_total", "reason" => reason),
                    )
                })
                .collect(),
            messages_received: counter!("peroxo_messages_received_total"),
            messages_delivered: counter!("peroxo_messages_delivered_total"),
            acks_fresh: counter!("peroxo_acks_total", "duplicate" => "false"),
            acks_duplicate: counter!("peroxo_acks_total", "duplicate" => "true"),
            errors: ErrorCode::ALL
                .iter()
                .map(|code| {
                    (
                        *code,
                        counter!("peroxo_errors_total", "code" => code.as_str()),
                    )
                })
                .collect(),
            send_to_ack: histogram!("peroxo_send_to_ack_seconds"),
            persist_batch_size: histogram!("peroxo_persist_batch_size"),
            persist_rpc: histogram!("peroxo_persist_rpc_seconds"),
            outbox_pending: gauge!("peroxo_outbox_pending"),
            outbox_pending_peak: gauge!("peroxo_outbox_pending_peak"),
            storage_up: gauge!("peroxo_storage_up"),
            storage_reconnects: counter!("peroxo_storage_reconnects_total"),
            restarts: ActorKind::ALL
                .iter()
                .map(|kind| {
                    (
                        *kind,
                        counter!("peroxo_actor_restarts_total", "actor" => kind.as_str()),
                    )
                })
                .collect(),
        }
    }

    pub fn session_closed(&self, reason: &str) {
        if let Some((_, counter)) = self.sessions_closed.iter().find(|(r, _)| *r == reason) {
            counter.increment(1);
        }
    }

    pub fn ack(&self, duplicate: bool) {
        if duplicate {
            self.acks_duplicate.increment(1);
        } else {
            self.acks_fresh.increment(1);
        }
    }

    pub fn error(&self, code: ErrorCode) {
        if let Some((_, counter)) = self.errors.iter().find(|(c, _)| *c == code) {
            counter.increment(1);
        }
    }

    pub fn restart(&self, kind: ActorKind) {
        if let Some((_, counter)) = self.restarts.iter().find(|(k, _)| *k == kind) {
            counter.increment(1);
        }
    }

    /// The Prometheus text exposition, after refreshing the process gauges.
    pub fn render(&self) -> String {
        self.process.collect();
        match &self.handle {
            Some(handle) => {
                handle.run_upkeep();
                handle.render()
            }
            None => String::new(),
        }
    }
}

/// Seconds as a histogram sample.
pub fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn describe() {
    describe_gauge!(
        "peroxo_connections",
        "WebSocket connections held by this node."
    );
    describe_counter!("peroxo_sessions_opened_total", "WebSocket sessions opened.");
    describe_counter!(
        "peroxo_sessions_closed_total",
        "WebSocket sessions closed, by reason."
    );
    describe_counter!(
        "peroxo_messages_received_total",
        "DMs accepted from clients for storage."
    );
    describe_counter!(
        "peroxo_messages_delivered_total",
        "DM frames queued to live sessions."
    );
    describe_counter!(
        "peroxo_acks_total",
        "Acks sent, by whether the send was a duplicate."
    );
    describe_counter!("peroxo_errors_total", "Error frames sent, by code.");
    describe_histogram!(
        "peroxo_send_to_ack_seconds",
        metrics::Unit::Seconds,
        "From accepting a send to acking it."
    );
    describe_histogram!(
        "peroxo_persist_batch_size",
        "Messages per append call to storage."
    );
    describe_histogram!(
        "peroxo_persist_rpc_seconds",
        metrics::Unit::Seconds,
        "Duration of append calls to storage."
    );
    describe_gauge!(
        "peroxo_outbox_pending",
        "Accepted sends not yet answered by storage."
    );
    describe_gauge!(
        "peroxo_outbox_pending_peak",
        "The most accepted sends ever waiting for storage at once since the node started; \
         never above storage.max_pending."
    );
    describe_gauge!(
        "peroxo_storage_up",
        "1 while the storage service is reachable, else 0."
    );
    describe_counter!(
        "peroxo_storage_reconnects_total",
        "Connections to storage re-established after a loss."
    );
    describe_counter!(
        "peroxo_actor_restarts_total",
        "Actors restarted after a failure, by kind."
    );
}

/// Which kind of actor was restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    Cluster,
    Router,
    Persistence,
    SessionSupervisor,
    Session,
}

impl ActorKind {
    pub const ALL: [ActorKind; 5] = [
        ActorKind::Cluster,
        ActorKind::Router,
        ActorKind::Persistence,
        ActorKind::SessionSupervisor,
        ActorKind::Session,
    ];

    /// The kind as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Cluster => "cluster",
            ActorKind::Router => "router",
            ActorKind::Persistence => "persistence",
            ActorKind::SessionSupervisor => "session_supervisor",
            ActorKind::Session => "session",
        }
    }
}

/// How many times each kind of actor has been restarted since the node started.
#[derive(Debug, Default)]
pub struct RestartCounts {
    cluster: AtomicU64,
    router: AtomicU64,
    persistence: AtomicU64,
    session_supervisor: AtomicU64,
    session: AtomicU64,
}

impl RestartCounts {
    fn counter(&self, kind: ActorKind) -> &AtomicU64 {
        match kind {
            ActorKind::Cluster => &self.cluster,
            ActorKind::Router => &self.router,
            ActorKind::Persistence => &self.persistence,
            ActorKind::SessionSupervisor => &self.session_supervisor,
            ActorKind::Session => &self.session,
        }
    }

    pub fn record(&self, kind: ActorKind) {
        self.counter(kind).fetch_add(1, Ordering::Relaxed);
        metrics().restart(kind);
    }

    pub fn get(&self, kind: ActorKind) -> u64 {
        self.counter(kind).load(Ordering::Relaxed)
    }
}
