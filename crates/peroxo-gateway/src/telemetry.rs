//! Metrics: each gateway's own Prometheus recorder, its metric handles, and the text served
//! at `/metrics`.
//!
//! A [`Metrics`] belongs to one gateway node (`GatewayContext::metrics`): its recorder is
//! never installed as the process's global one, so several nodes in one process (the test
//! suites run many) count apart. Handles are registered on it once, when the node starts, so
//! the hot path increments an atomic instead of looking a name up. Label values come from
//! closed sets (error codes, close causes, actor kinds): never a user id or a raw path.
//! Gauges that mirror live state (connections, outbox, storage) are read when `/metrics` is
//! scraped rather than kept up to date on every change.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use peroxo_protocol::{CloseCause, ErrorCode};

use crate::identity::{KeyStats, RefreshOutcome};

const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Every metric one node records, registered once on the node's own recorder.
pub struct Metrics {
    /// The node's recorder; `/metrics` renders it.
    recorder: PrometheusRecorder,
    /// The process's own figures (memory, CPU, descriptors). They describe the process, not
    /// the node: every node in one process reports the same values.
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
    /// The embedded storage service's retention, copied from its figures at each scrape.
    pub retention_deleted: Counter,
    pub retention_last_pass: Gauge,
    restarts: Vec<(ActorKind, Counter)>,
    jwks_keys: Gauge,
    jwks_refreshes: Vec<(RefreshOutcome, Counter)>,
    reloads: Vec<(ReloadOutcome, Counter)>,
    /// When the configuration was last applied (start or reload), in Unix seconds.
    pub config_applied_at: Gauge,
    pub push_skipped: Counter,
}

/// One webhook's metrics, labelled with its name.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    ok: Counter,
    failed: Counter,
    events: Counter,
    attempt: Histogram,
    pub dead_letters: Counter,
    pub lag: Histogram,
    pub cursor: Gauge,
    pub holding: Gauge,
}

impl WebhookMetrics {
    /// A delivery of `events` events succeeded after `took`.
    pub fn delivered(&self, events: usize, took: Duration) {
        self.ok.increment(1);
        self.events.increment(events as u64);
        self.attempt.record(seconds(took));
    }

    /// A delivery attempt failed after `took`.
    pub fn failed(&self, took: Duration) {
        self.failed.increment(1);
        self.attempt.record(seconds(took));
    }
}

/// How a reload of the configuration ended (`peroxo_config_reloads_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Live keys changed and were applied.
    Applied,
    /// Nothing a running node applies had changed.
    Unchanged,
    /// The file or the environment was invalid: nothing changed.
    Rejected,
}

impl ReloadOutcome {
    pub const ALL: [ReloadOutcome; 3] = [Self::Applied, Self::Unchanged, Self::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Rejected => "rejected",
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The labels of `peroxo_sessions_closed_total{reason}` besides the server's close causes.
pub const CLIENT_CLOSED: &str = "client_closed";
pub const CONNECTION_LOST: &str = "connection_lost";

/// What registering a handle tells the recorder besides its key (Prometheus ignores it).
const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

impl Metrics {
    /// A fresh set of metrics, all at zero, on a recorder of its own.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("peroxo_persist_batch_size".to_owned()),
                    BATCH_BUCKETS,
                )
            })
            .expect("the bucket lists are not empty")
            .build_recorder();
        describe(&recorder);
        let process = metrics_process::Collector::new("peroxo_");
        // The collector speaks only through the `metrics` macros: point them at this recorder.
        metrics::with_local_recorder(&recorder, || process.describe());
        let r = &recorder;
        let mut close_labels: Vec<&'static str> =
            CloseCause::ALL.iter().map(|c| c.label()).collect();
        close_labels.extend([CLIENT_CLOSED, CONNECTION_LOST]);
        Self {
            connections: gauge(r, "peroxo_connections"),
            sessions_opened: counter(r, "peroxo_sessions_opened_total", None),
            sessions_closed: by_label(
                r,
                "peroxo_sessions_closed_total",
                "reason",
                close_labels,
                |r| r,
            ),
            messages_received: counter(r, "peroxo_messages_received_total", None),
            messages_delivered: counter(r, "peroxo_messages_delivered_total", None),
            acks_fresh: counter(r, "peroxo_acks_total", Some(("duplicate", "false"))),
            acks_duplicate: counter(r, "peroxo_acks_total", Some(("duplicate", "true"))),
            errors: by_label(r, "peroxo_errors_total", "code", ErrorCode::ALL, |c| {
                c.as_str()
            }),
            send_to_ack: histogram(r, "peroxo_send_to_ack_seconds"),
            persist_batch_size: histogram(r, "peroxo_persist_batch_size"),
            persist_rpc: histogram(r, "peroxo_persist_rpc_seconds"),
            outbox_pending: gauge(r, "peroxo_outbox_pending"),
            outbox_pending_peak: gauge(r, "peroxo_outbox_pending_peak"),
            storage_up: gauge(r, "peroxo_storage_up"),
            storage_reconnects: counter(r, "peroxo_storage_reconnects_total", None),
            restarts: by_label(
                r,
                "peroxo_actor_restarts_total",
                "actor",
                ActorKind::ALL,
                |k| k.as_str(),
            ),
            jwks_keys: gauge(r, "peroxo_jwks_keys"),
            jwks_refreshes: by_label(
                r,
                "peroxo_jwks_refresh_total",
                "outcome",
                RefreshOutcome::ALL,
                RefreshOutcome::label,
            ),
            reloads: by_label(
                r,
                "peroxo_config_reloads_total",
                "outcome",
                ReloadOutcome::ALL,
                |o| o.as_str(),
            ),
            config_applied_at: gauge(r, "peroxo_config_applied_timestamp_seconds"),
            retention_deleted: counter(r, "peroxo_retention_deleted_total", None),
            retention_last_pass: gauge(r, "peroxo_retention_last_run_timestamp_seconds"),
            push_skipped: counter(r, "peroxo_push_skipped_total", None),
            recorder,
            process,
        }
    }

    /// Mirrors the verification keys' figures, which the authenticator keeps (it is built
    /// before the node's metrics).
    pub fn key_stats(&self, stats: KeyStats) {
        self.jwks_keys.set(stats.keys as f64);
        for (outcome, count) in stats.refreshes {
            if let Some((_, counter)) = self.jwks_refreshes.iter().find(|(o, _)| *o == outcome) {
                counter.absolute(count);
            }
        }
    }

    /// The metrics of the webhook `name`.
    pub fn webhook(&self, name: &str) -> WebhookMetrics {
        let r = &self.recorder;
        let labelled = |metric: &'static str, extra: Option<(&'static str, &'static str)>| {
            let mut labels = vec![Label::new("webhook", name.to_owned())];
            if let Some((label, value)) = extra {
                labels.push(Label::new(label, value));
            }
            Key::from_parts(metric, labels)
        };
        WebhookMetrics {
            ok: r.register_counter(
                &labelled("peroxo_webhook_deliveries_total", Some(("outcome", "ok"))),
                &METADATA,
            ),
            failed: r.register_counter(
                &labelled(
                    "peroxo_webhook_deliveries_total",
                    Some(("outcome", "failed")),
                ),
                &METADATA,
            ),
            events: r.register_counter(&labelled("peroxo_webhook_events_total", None), &METADATA),
            dead_letters: r.register_counter(
                &labelled("peroxo_webhook_dead_letters_total", None),
                &METADATA,
            ),
            attempt: r.register_histogram(
                &labelled("peroxo_webhook_delivery_seconds", None),
                &METADATA,
            ),
            lag: r.register_histogram(&labelled("peroxo_webhook_lag_seconds", None), &METADATA),
            cursor: r.register_gauge(&labelled("peroxo_webhook_cursor", None), &METADATA),
            holding: r.register_gauge(&labelled("peroxo_webhook_holding", None), &METADATA),
        }
    }

    pub fn reload(&self, outcome: ReloadOutcome) {
        if let Some((_, counter)) = self.reloads.iter().find(|(o, _)| *o == outcome) {
            counter.increment(1);
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
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        let handle = self.recorder.handle();
        handle.run_upkeep();
        handle.render()
    }
}

fn key(name: &'static str, label: Option<(&'static str, &'static str)>) -> Key {
    match label {
        Some((label, value)) => Key::from_parts(name, vec![Label::new(label, value)]),
        None => Key::from_static_name(name),
    }
}

fn counter(
    recorder: &PrometheusRecorder,
    name: &'static str,
    label: Option<(&'static str, &'static str)>,
) -> Counter {
    recorder.register_counter(&key(name, label), &METADATA)
}

/// One counter of `name` per value of a closed set, labelled `label` with the value's text.
fn by_label<T: Copy>(
    recorder: &PrometheusRecorder,
    name: &'static str,
    label: &'static str,
    values: impl IntoIterator<Item = T>,
    text: impl Fn(T) -> &'static str,
) -> Vec<(T, Counter)> {
    values
        .into_iter()
        .map(|value| (value, counter(recorder, name, Some((label, text(value))))))
        .collect()
}

fn gauge(recorder: &PrometheusRecorder, name: &'static str) -> Gauge {
    recorder.register_gauge(&key(name, None), &METADATA)
}

fn histogram(recorder: &PrometheusRecorder, name: &'static str) -> Histogram {
    recorder.register_histogram(&key(name, None), &METADATA)
}

/// Seconds as a histogram sample.
pub fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Gives every metric of the node its help text (and unit) on `recorder`.
fn describe(recorder: &PrometheusRecorder) {
    let gauge =
        |name, help| recorder.describe_gauge(KeyName::from_const_str(name), None, text(help));
    let counter =
        |name, help| recorder.describe_counter(KeyName::from_const_str(name), None, text(help));
    let histogram = |name, unit, help| {
        recorder.describe_histogram(KeyName::from_const_str(name), unit, text(help));
    };
    gauge(
        "peroxo_connections",
        "WebSocket connections held by this node.",
    );
    counter("peroxo_sessions_opened_total", "WebSocket sessions opened.");
    counter(
        "peroxo_sessions_closed_total",
        "WebSocket sessions closed, by reason.",
    );
    counter(
        "peroxo_messages_received_total",
        "DMs accepted from clients for storage.",
    );
    counter(
        "peroxo_messages_delivered_total",
        "DM frames queued to live sessions.",
    );
    counter(
        "peroxo_acks_total",
        "Acks sent, by whether the send was a duplicate.",
    );
    counter("peroxo_errors_total", "Error frames sent, by code.");
    counter(
        "peroxo_config_reloads_total",
        "Reloads of the configuration, by outcome (applied, unchanged, rejected).",
    );
    gauge(
        "peroxo_config_applied_timestamp_seconds",
        "When the configuration was last applied (start or reload), Unix seconds.",
    );
    histogram(
        "peroxo_send_to_ack_seconds",
        Some(Unit::Seconds),
        "From accepting a send to acking it.",
    );
    histogram(
        "peroxo_persist_batch_size",
        None,
        "Messages per append call to storage.",
    );
    histogram(
        "peroxo_persist_rpc_seconds",
        Some(Unit::Seconds),
        "Duration of append calls to storage.",
    );
    gauge(
        "peroxo_outbox_pending",
        "Accepted sends not yet answered by storage.",
    );
    gauge(
        "peroxo_outbox_pending_peak",
        "The most accepted sends ever waiting for storage at once since the node started; \
         never above storage.max_pending.",
    );
    gauge(
        "peroxo_storage_up",
        "1 while the storage service is reachable, else 0.",
    );
    counter(
        "peroxo_storage_reconnects_total",
        "Connections to storage re-established after a loss.",
    );
    counter(
        "peroxo_retention_deleted_total",
        "Messages deleted by retention in the embedded storage service.",
    );
    gauge(
        "peroxo_retention_last_run_timestamp_seconds",
        "When the embedded storage service's last retention pass ended (Unix time; 0: none yet).",
    );
    counter(
        "peroxo_actor_restarts_total",
        "Actors restarted after a failure, by kind.",
    );
    gauge(
        "peroxo_jwks_keys",
        "Keys tokens may be verified with (1 for a static key).",
    );
    counter(
        "peroxo_jwks_refresh_total",
        "Fetches of the key set (auth.jwks_file or auth.jwks_url), by outcome; a failed \
         one keeps the last good set.",
    );
    counter(
        "peroxo_push_skipped_total",
        "Recipients not considered for a notify event because push.max_pending were waiting.",
    );
    counter(
        "peroxo_webhook_deliveries_total",
        "Webhook delivery attempts, by webhook and outcome (ok, failed).",
    );
    counter(
        "peroxo_webhook_events_total",
        "Events delivered to webhooks, by webhook.",
    );
    counter(
        "peroxo_webhook_dead_letters_total",
        "Batches a webhook gave up on after webhooks.max_attempts (each a webhook.failed event).",
    );
    histogram(
        "peroxo_webhook_delivery_seconds",
        Some(Unit::Seconds),
        "How long one webhook delivery attempt took, by webhook.",
    );
    histogram(
        "peroxo_webhook_lag_seconds",
        Some(Unit::Seconds),
        "From an event's commit to its delivery to a webhook, by webhook.",
    );
    gauge(
        "peroxo_webhook_cursor",
        "The last event id each webhook has acknowledged (on the node delivering it).",
    );
    gauge(
        "peroxo_webhook_holding",
        "1 while this node holds the webhook's lease and delivers to it.",
    );
}

fn text(help: &'static str) -> SharedString {
    SharedString::const_str(help)
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
#[derive(Debug)]
pub struct RestartCounts {
    cluster: AtomicU64,
    router: AtomicU64,
    persistence: AtomicU64,
    session_supervisor: AtomicU64,
    session: AtomicU64,
    /// Where each restart is counted for `/metrics` too.
    metrics: Arc<Metrics>,
}

impl RestartCounts {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            cluster: AtomicU64::new(0),
            router: AtomicU64::new(0),
            persistence: AtomicU64::new(0),
            session_supervisor: AtomicU64::new(0),
            session: AtomicU64::new(0),
            metrics,
        }
    }

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
        self.metrics.restart(kind);
    }

    pub fn get(&self, kind: ActorKind) -> u64 {
        self.counter(kind).load(Ordering::Relaxed)
    }
}
