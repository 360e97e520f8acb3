//! Starting and stopping a gateway node (`peroxo serve`), with the storage service embedded
//! when configured.
//!
//! The node binds its listeners here, so tests run it on port 0 exactly as `main` runs it on
//! the configured ports.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ractor::ActorRef;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::actors::ActorSlot;
use crate::actors::cluster::{self, ClusterMsg};
use crate::actors::context::GatewayContext;
use crate::actors::context::StorageLink;
use crate::actors::outbox::Outbox;
use crate::actors::push::{self, PushHandoff, PushQueue};
use crate::actors::root::{ClusterSetup, RootArgs, RootMsg, RootSupervisor};
use crate::actors::session_supervisor::SessionSupervisorMsg;
use crate::admission::Admission;
use crate::api;
use crate::http::{self, HttpState};
use crate::identity::Authenticator;
use crate::live::LiveSettings;
use crate::telemetry::{ActorKind, Metrics, ReloadOutcome, RestartCounts};
use crate::webhooks::Webhooks;
use arc_swap::ArcSwap;
use peroxo_config::{
    Change, ClusterConfig, ClusterMode, Config, ConfigError, Snapshot, StorageEndpoints,
};
use peroxo_protocol::CloseCause;
use peroxo_storage::{RetentionStats, StoreServer};

/// Connects this node to the cluster's NATS; after every reconnect the Cluster actor in
/// `slot` resynchronises.
async fn connect_cluster(
    config: &ClusterConfig,
    slot: ActorSlot<ClusterMsg>,
) -> anyhow::Result<ClusterSetup> {
    let node = if config.node_id.is_empty() {
        generated_node_id()
    } else {
        config.node_id.clone()
    };
    let client = cluster::connect(config, &node, move || {
        let _ = slot.cast(ClusterMsg::Reconnected);
    })
    .await
    .with_context(|| {
        format!(
            "cannot set up NATS at cluster.nats_url = {}",
            config.nats_url
        )
    })?;
    // Give the first connection a moment, so the first sessions find the cluster linked;
    // without NATS the node starts anyway (same-node delivery needs none).
    let deadline = tokio::time::Instant::now() + NATS_START_WAIT;
    while client.connection_state() != async_nats::connection::State::Connected
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if client.connection_state() != async_nats::connection::State::Connected {
        tracing::warn!(nats = %config.nats_url, "NATS unreachable at start; retrying in the background");
    }
    tracing::info!(%node, nats = %config.nats_url, "cluster node (NATS)");
    Ok(ClusterSetup {
        config: config.clone(),
        node,
        client,
    })
}

/// How long start-up waits for the first NATS connection.
const NATS_START_WAIT: Duration = Duration::from_secs(5);

/// A node name unlikely to repeat: the process id and the clock.
fn generated_node_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("node-{:x}-{:x}", std::process::id(), nanos % 0xffff_ffff)
}

/// Starts the embedded storage service when configured; returns it and the URLs the node's
/// Persistence connects to.
async fn start_storage(config: &Config) -> anyhow::Result<(Option<StoreServer>, StorageEndpoints)> {
    if !config.storage.embedded {
        return Ok((None, config.storage.endpoint.clone()));
    }
    let store = StoreServer::start_with(&config.storage, &config.retention, &config.events).await?;
    let endpoint = StorageEndpoints::from(format!("http://{}", store.addr));
    Ok((Some(store), endpoint))
}

/// The node's shared handles, each actor slot empty until the tree starts its actor.
fn gateway_context(
    config: &Config,
    auth: Authenticator,
    cluster: Option<ActorSlot<ClusterMsg>>,
    retention: Option<Arc<RetentionStats>>,
    metrics: Arc<Metrics>,
    push: Option<PushQueue>,
) -> GatewayContext {
    GatewayContext {
        router: ActorSlot::default(),
        persistence: ActorSlot::default(),
        storage: StorageLink::default(),
        outbox: Arc::new(Outbox::new(config.storage.max_pending)),
        live: Arc::new(LiveSettings::new(config)),
        member_cache: Arc::default(),
        announced: Arc::default(),
        storage_wait: config.storage.rpc_timeout(),
        restarts: Arc::new(RestartCounts::new(Arc::clone(&metrics))),
        metrics,
        auth: ArcSwap::from_pointee(auth),
        draining: AtomicBool::new(false),
        cluster,
        restrictions: Arc::default(),
        retention,
        committed: Arc::default(),
        push,
    }
}

/// What a reload changed ([`Gateway::reload`]).
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// Live keys whose new values now apply.
    pub applied: Vec<Change>,
    /// Keys that changed in the file but keep their running values until a restart.
    pub restart_needed: Vec<Change>,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Binds `http.listen` and serves the node's routes until `stop_http` is cancelled.
async fn start_http(
    config: &Config,
    state: HttpState,
) -> anyhow::Result<(SocketAddr, CancellationToken, JoinHandle<()>)> {
    let listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on http.listen = {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let stop_http = CancellationToken::new();
    let http_task = tokio::spawn(http::serve(
        listener,
        http::router(state, api::router()),
        stop_http.clone(),
        config.http.handshake_timeout(),
    ));
    Ok((http_addr, stop_http, http_task))
}

/// A running gateway node.
pub struct Gateway {
    /// Where clients connect (HTTP and WebSocket).
    pub http_addr: SocketAddr,
    /// The embedded storage service, when this node runs one.
    pub store: Option<StoreServer>,
    root: ActorRef<RootMsg>,
    sessions: ActorSlot<SessionSupervisorMsg>,
    gateway: Arc<GatewayContext>,
    admission: Arc<Admission>,
    /// The configuration the node runs with: its start-up values, and the live keys as the
    /// last reload left them.
    applied: Mutex<Snapshot>,
    stop_http: CancellationToken,
    http_task: JoinHandle<()>,
    /// Decides `notify` events (none when `push.delay` is 0).
    push: Option<PushHandoff>,
    /// Delivers the event feed to `[[webhooks.endpoints]]`.
    webhooks: Webhooks,
}

impl Gateway {
    /// Starts the node, reading the keys of `[auth]` first so a bad key stops it at once.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let auth = Authenticator::from_config(&config.auth)?;
        Self::start_with(config, auth).await
    }

    /// Starts the node with an authenticator already built from `config.auth` (`main` builds
    /// it while it validates the configuration): a key set to fetch (an issuer that is down
    /// does not stop the start), the embedded storage service when configured, the actor
    /// tree, then the HTTP listener.
    pub async fn start_with(config: Config, auth: Authenticator) -> anyhow::Result<Self> {
        auth.start().await;
        auth.announce();
        let (store, endpoint) = start_storage(&config).await?;
        let cluster_slot = (config.cluster.mode == ClusterMode::Nats).then(ActorSlot::default);
        let cluster = match &cluster_slot {
            Some(slot) => Some(connect_cluster(&config.cluster, slot.clone()).await?),
            None => None,
        };
        let retention = store.as_ref().map(StoreServer::retention_stats);
        // Who holds webhook leases: the cluster's name for this node; a node with embedded
        // storage is the only one that writes it, so it keeps one name across restarts and
        // takes its endpoints back at once after a crash.
        let node = match &cluster {
            Some(setup) => setup.node.clone(),
            None if config.storage.embedded => "embedded".to_owned(),
            None => generated_node_id(),
        };
        let metrics = Arc::new(Metrics::new());
        let preview = config.events.text_preview_chars;
        let (push, push_receiver) =
            push::queue(&config.push, preview, metrics.push_skipped.clone()).unzip();
        let gateway = Arc::new(gateway_context(
            &config,
            auth,
            cluster_slot,
            retention,
            metrics,
            push,
        ));
        let sessions = ActorSlot::default();
        let root = RootSupervisor::spawn(RootArgs {
            cluster,
            gateway: Arc::clone(&gateway),
            sessions: sessions.clone(),
            storage: config.storage.clone(),
            endpoint: endpoint.clone(),
            session: config.session.clone(),
        })
        .await
        .context("cannot start the actor tree")?;
        let push = push_receiver.map(|receiver| PushHandoff::start(receiver, &gateway));
        let webhooks = Webhooks::start(&config.webhooks, &node, &gateway)?;
        let admission = Arc::new(Admission::new(
            config.http.max_connections,
            config.limits.max_sessions_per_user,
        ));
        let state = HttpState {
            sessions: sessions.clone(),
            admission: Arc::clone(&admission),
            gateway: Arc::clone(&gateway),
            api_rates: Arc::default(),
            api_polls: Arc::new(tokio::sync::Semaphore::new(crate::api::MAX_WAITING_POLLS)),
        };
        let (http_addr, stop_http, http_task) = start_http(&config, state).await?;
        tracing::info!(addr = %http_addr, storage = %endpoint, "gateway listening (HTTP, WebSocket at /ws)");
        gateway.metrics.config_applied_at.set(unix_now());
        Ok(Self {
            http_addr,
            store,
            root,
            sessions,
            gateway,
            admission,
            applied: Mutex::new(Snapshot::of(&config)),
            stop_http,
            http_task,
            push,
            webhooks,
        })
    }

    /// Applies the live keys of `config` (already validated, with `auth` built from its
    /// `[auth]`) to every connection, without dropping any. The authenticator is replaced
    /// even when `[auth]` reads the same, so that key files are read anew, unless it keeps a
    /// key set fresh by itself. Keys that need a restart keep their running values and are
    /// reported. Reloads are not expected to overlap (one signal handler calls this).
    pub async fn reload(&self, config: &Config, auth: Authenticator) -> ReloadReport {
        let after = Snapshot::of(config);
        let before = self.applied_config();
        let (live, restart_needed): (Vec<Change>, Vec<Change>) =
            before.diff(&after).into_iter().partition(|c| c.live);
        self.gateway.live.apply(config);
        self.admission.set_limits(
            config.http.max_connections,
            config.limits.max_sessions_per_user,
        );
        // A key set that keeps itself fresh (`jwks_file`, `jwks_url`) is kept while `[auth]`
        // reads the same: a new one would start without the set the running one holds.
        let auth_changed = live.iter().any(|c| c.key.starts_with("auth."));
        if auth_changed || !self.gateway.auth.load().refreshes_itself() {
            auth.start().await;
            self.gateway.auth.store(Arc::new(auth));
        }
        *self.applied.lock().expect("applied configuration poisoned") =
            before.with_live_keys_of(&after);
        let report = ReloadReport {
            applied: live,
            restart_needed,
        };
        let outcome = if report.applied.is_empty() {
            ReloadOutcome::Unchanged
        } else {
            ReloadOutcome::Applied
        };
        let metrics = &self.gateway.metrics;
        metrics.reload(outcome);
        metrics.config_applied_at.set(unix_now());
        let keys = |changes: &[Change]| {
            changes
                .iter()
                .map(|c| c.key.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        tracing::info!(
            outcome = outcome.as_str(),
            applied = %keys(&report.applied),
            restart_needed = %keys(&report.restart_needed),
            "configuration reloaded"
        );
        for change in &report.restart_needed {
            tracing::warn!(key = %change.key, "{change}: kept the running value until a restart");
        }
        report
    }

    /// Records a reload refused because the new configuration is invalid: nothing changed.
    pub fn reload_rejected(&self, error: &ConfigError) {
        self.gateway.metrics.reload(ReloadOutcome::Rejected);
        tracing::error!(key = %error.key, %error, "configuration reload rejected; nothing changed");
    }

    /// The configuration the node runs with (what `peroxo check-config --diff` compares).
    pub fn applied_config(&self) -> Snapshot {
        self.applied
            .lock()
            .expect("applied configuration poisoned")
            .clone()
    }

    /// Whether the node is connected to the storage service.
    pub fn storage_up(&self) -> bool {
        self.gateway.storage.is_up()
    }

    /// How many times actors of `kind` have been restarted.
    pub fn restarts(&self, kind: ActorKind) -> u64 {
        self.gateway.restarts.get(kind)
    }

    /// Accepted messages not yet answered by storage.
    pub fn pending_writes(&self) -> usize {
        self.gateway.outbox.pending()
    }

    /// Stops the node gracefully, within `shutdown.grace_period`:
    /// 1. `/readyz` answers 503 and no new connection is accepted;
    /// 2. accepted messages are committed and acked on the still-open sockets, while new sends
    ///    are answered `unavailable`;
    /// 3. every session is closed with 1001 and the node waits for the sockets to close;
    /// 4. the actor tree stops, then the embedded storage service.
    pub async fn shutdown(self) {
        let grace_period = self.gateway.live.load().grace_period;
        let deadline = tokio::time::Instant::now() + grace_period;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        self.gateway.draining.store(true, Ordering::Relaxed);
        self.stop_http.cancel();
        tracing::info!(?grace_period, "shutdown: draining");
        if !self.gateway.outbox.close_and_drain(left()).await {
            tracing::error!(
                pending = self.pending_writes(),
                "shutdown: accepted messages not committed within the grace period; \
                 their senders will resend them"
            );
        }
        if let Some(sessions) = self.sessions.get() {
            let closing = ractor::call_t!(
                sessions,
                |reply| SessionSupervisorMsg::CloseAll {
                    cause: CloseCause::Shutdown,
                    reply,
                },
                // Even past the deadline, the close frames are worth a moment.
                u64::try_from(left().as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1_000)
            )
            .unwrap_or(0);
            if !self.admission.wait_until_empty(left()).await {
                tracing::warn!(closing, "shutdown: some connections did not close in time");
            }
        }
        if let Some(cluster) = self.gateway.cluster.as_ref().and_then(ActorSlot::get) {
            let _ = ractor::call_t!(cluster, ClusterMsg::Leave, 1_000);
        }
        // A webhook batch in flight goes again from whoever holds the endpoint next; notify
        // decisions not made yet are lost with the node.
        self.webhooks.stop().await;
        if let Some(push) = self.push {
            push.stop().await;
        }
        self.root.stop(Some("shutdown".to_owned()));
        let _ = self.http_task.await;
        if let Some(store) = self.store {
            store.stop().await;
        }
        tracing::info!("gateway stopped");
    }

    /// Makes the Router panic (test hook).
    #[cfg(feature = "test-hooks")]
    pub fn crash_router(&self) {
        let _ = self.root.cast(RootMsg::CrashRouter);
    }

    /// Makes Persistence panic (test hook).
    #[cfg(feature = "test-hooks")]
    pub fn crash_persistence(&self) {
        let _ = self.root.cast(RootMsg::CrashPersistence);
    }

    /// Makes SessionSupervisor panic (test hook): every connection of the node closes with
    /// 1011 and a new SessionSupervisor accepts the clients' reconnections.
    #[cfg(feature = "test-hooks")]
    pub fn crash_session_supervisor(&self) {
        let _ = self.root.cast(RootMsg::CrashSessionSupervisor);
    }

    /// Makes the Cluster actor panic (test hook); nothing on a node without a cluster.
    #[cfg(feature = "test-hooks")]
    pub fn crash_cluster(&self) {
        let _ = self.root.cast(RootMsg::CrashCluster);
    }

    /// Makes the session actors of `tenant`/`user` panic; returns how many (test hook).
    #[cfg(feature = "test-hooks")]
    pub async fn crash_sessions_of(&self, tenant: &str, user: &str) -> usize {
        let Some(sessions) = self.sessions.get() else {
            return 0;
        };
        let key = peroxo_protocol::domain::UserKey::new(tenant, user);
        ractor::call_t!(
            sessions,
            |reply| SessionSupervisorMsg::CrashSessionsOf(key, reply),
            5_000
        )
        .unwrap_or(0)
    }
}
