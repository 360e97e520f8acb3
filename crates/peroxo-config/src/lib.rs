//! The one typed configuration, loaded from `config.toml` and `PEROXO_<SECTION>__<KEY>`
//! environment overrides, and validated before any port is bound.
//!
//! Every error names the offending key (`storage.max_pending: ...`). `config.toml` at the top
//! of the repository documents every key; keep the two in step.
//!
//!
//! # Layout
//! - This file: [`Config`] and its sections. Each section checks its own keys;
//!   [`Config::validate`] runs those checks, and the few that span sections, in one fixed order.
//! - `auth`: the `[auth]` section, checked apart by [`Config::validate_auth`] because only the
//!   roles that authenticate clients need its keys.
//! - `secret`: [`Secret`], which keeps secrets out of logs and printed configs.
//! - `env`: the `PEROXO_<SECTION>__<KEY>` overrides.
//! - `reload`: what a reload may change live, and what it would change ([`Snapshot`]).
//! - `human_duration`: durations written as "30s".
//! - `retention`: the `[retention]` section, how long messages are kept per tenant.
//! - `server_api`: the `[server_api]` section, the keys and limits of the server API.
//! - `events`: the `[events]` section, the outbox of committed changes.
//! - `webhooks`: the `[webhooks]` and `[push]` sections, where the event feed is pushed.
//! - `seconds_or_duration`: the `*_secs` keys, a whole number of seconds or a duration.

use peroxo_protocol::conversation::GroupLimits;
use peroxo_protocol::event::{MAX_GROUP_MEMBERS, MAX_TITLE_BYTES};
use peroxo_protocol::lifecycle::{MAX_REACTIONS_PER_MESSAGE, MessageLimits};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use peroxo_protocol::domain::validate_id;
use peroxo_protocol::limits::{MAX_APPEND_BATCH, MAX_STORED_TEXT_BYTES};

mod auth;
mod endpoints;
mod env;
mod events;
mod human_duration;
mod reload;
mod retention;
mod seconds_or_duration;
mod secret;
mod server_api;
mod webhooks;

pub use auth::{AuthConfig, AuthMode, JwtAlgorithm, MIN_JWT_SECRET_BYTES, TenantAuth};
pub use endpoints::StorageEndpoints;
pub use env::ENV_PREFIX;
use env::{apply_env_overrides, deserialize_with_overrides};
pub use events::EventsConfig;
pub use reload::{Change, Snapshot, is_live};
pub use retention::{MAX_RETENTION_BATCH, RetentionConfig, TenantRetention};
pub use secret::Secret;
pub use server_api::{API_KEY_PREFIX, ApiKeyEntry, IpRange, MAX_API_BODY_BYTES, ServerApiConfig};
pub use webhooks::{MIN_WEBHOOK_SECRET_BYTES, PushConfig, WebhookEndpoint, WebhooksConfig};

/// A configuration problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The dotted key (`storage.max_pending`), or the file for problems reading it.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub session: SessionConfig,
    pub groups: GroupsConfig,
    pub messages: MessagesConfig,
    pub shutdown: ShutdownConfig,
    pub cluster: ClusterConfig,
    pub log: LogConfig,
    pub retention: RetentionConfig,
    pub server_api: ServerApiConfig,
    pub events: EventsConfig,
    pub webhooks: WebhooksConfig,
    pub push: PushConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where the gateway accepts HTTP and WebSocket connections.
    pub listen: SocketAddr,
    /// When not empty, WebSocket upgrades whose `Origin` is not listed get 403.
    pub allowed_origins: Vec<String>,
    /// A connection that has not sent a complete request within this time is closed.
    #[serde(with = "seconds_or_duration")]
    pub handshake_timeout_secs: Duration,
    /// WebSocket connections this node holds at most; more get 503.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_origins: Vec::new(),
            handshake_timeout_secs: Duration::from_secs(10),
            max_connections: 19_000,
        }
    }
}

impl HttpConfig {
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout_secs
    }

    /// The checks of `[http]`: origins are compared as browsers send them, so a listed
    /// origin has a scheme and no trailing slash.
    fn validate(&self) -> Result<(), ConfigError> {
        duration_at_least(
            "http.handshake_timeout_secs",
            self.handshake_timeout_secs,
            MIN_SUBSECOND,
        )?;
        at_least("http.max_connections", self.max_connections, 1)?;
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let is_origin = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/');
            if !is_origin {
                return Err(ConfigError::new(
                    format!("http.allowed_origins[{i}]"),
                    format!("{origin:?} is not an origin like \"https://chat.example.com\""),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StorageBackend {
    #[default]
    Sqlite,
    Postgres,
    /// The embedded log-structured store (fjall): a directory.
    Lsm,
}

/// What an acknowledged message survives with the SQLite backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SqliteSync {
    /// fsync at every commit: an ack survives a power loss.
    #[default]
    Full,
    /// fsync at checkpoints: an ack survives a process crash, not a power loss.
    Normal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// The database, as a libpq-style URL or key=value string.
    pub url: Secret,
    /// Connections each storage instance keeps open.
    pub pool_size: usize,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/peroxo"),
            pool_size: 16,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Run the storage service inside the gateway process (and connect to it over gRPC).
    pub embedded: bool,
    /// Where the storage service listens: the embedded one, or `peroxo store`.
    pub listen: SocketAddr,
    /// Where the gateway finds the storage service when `embedded = false`: one URL, or
    /// several it fails over between.
    pub endpoint: StorageEndpoints,
    pub backend: StorageBackend,
    /// The SQLite database file of the `sqlite` backend.
    pub sqlite_path: PathBuf,
    /// What an ack survives with the `sqlite` backend.
    pub sqlite_synchronous: SqliteSync,
    /// The directory of the `lsm` backend's database.
    pub lsm_path: PathBuf,
    /// What an ack survives with the `lsm` backend (as `sqlite_synchronous`).
    pub lsm_synchronous: SqliteSync,
    /// The `postgres` backend.
    pub postgres: PostgresConfig,
    /// Accepted messages not yet committed, across the node, in stored rows (a group message
    /// counts its members). When full, sends are answered `unavailable` (retryable).
    pub max_pending: usize,
    /// The most messages one append call carries, in stored rows like `max_pending`.
    pub max_batch: usize,
    /// How long one storage call may take before it counts as failed.
    pub rpc_timeout_ms: u64,
    /// How long connecting to the storage service may take.
    pub connect_timeout_ms: u64,
    /// The first reconnect delay; it doubles (with jitter) up to `reconnect_max_ms`.
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            embedded: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            endpoint: StorageEndpoints::from("http://127.0.0.1:50051".to_owned()),
            backend: StorageBackend::Sqlite,
            sqlite_path: PathBuf::from("data/peroxo.db"),
            sqlite_synchronous: SqliteSync::Full,
            lsm_path: PathBuf::from("data/peroxo.lsm"),
            lsm_synchronous: SqliteSync::Full,
            postgres: PostgresConfig::default(),
            max_pending: 10_000,
            max_batch: 8_192,
            rpc_timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
            reconnect_initial_ms: 50,
            reconnect_max_ms: 5_000,
        }
    }
}

impl StorageConfig {
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The checks of `[storage]` that need no other section.
    fn validate(&self) -> Result<(), ConfigError> {
        at_least("storage.max_pending", self.max_pending, 1)?;
        within("storage.max_batch", self.max_batch, 1, MAX_APPEND_BATCH)?;
        at_least("storage.rpc_timeout_ms", self.rpc_timeout_ms, 1)?;
        at_least("storage.connect_timeout_ms", self.connect_timeout_ms, 1)?;
        at_least("storage.reconnect_initial_ms", self.reconnect_initial_ms, 1)?;
        at_least(
            "storage.reconnect_max_ms",
            self.reconnect_max_ms,
            self.reconnect_initial_ms,
        )?;
        // Plain HTTP/2 only: the storage link carries no TLS (run it on a private network).
        if !self.embedded {
            if self.endpoint.urls().is_empty() {
                return Err(ConfigError::new(
                    "storage.endpoint",
                    "must name at least one storage service",
                ));
            }
            if let Some(url) = self
                .endpoint
                .urls()
                .iter()
                .find(|u| !u.starts_with("http://"))
            {
                return Err(ConfigError::new(
                    "storage.endpoint",
                    format!("must be an http:// URL, got {url:?}"),
                ));
            }
        }
        within(
            "storage.postgres.pool_size",
            self.postgres.pool_size,
            1,
            1_000,
        )?;
        if self.sqlite_path.as_os_str().is_empty() {
            return Err(ConfigError::new("storage.sqlite_path", "must not be empty"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The largest WebSocket message (and frame) a client may send, in bytes.
    pub max_message_bytes: usize,
    /// The largest DM text, in bytes of UTF-8.
    pub max_text_bytes: usize,
    /// Frames queued towards one client. When full the session is closed (1013).
    pub outbound_queue: usize,
    /// Users one session may watch for presence.
    pub max_watched_users: usize,
    /// Storage reads (history, sync) one session may have in flight; further reads wait.
    pub max_reads_in_flight: usize,
    /// WebSocket sessions one user may hold on this node; more get 429.
    pub max_sessions_per_user: usize,
    /// Commands per second one session may send on average (token bucket refill rate).
    pub rate_per_sec: u32,
    /// Commands one session may send in a burst (token bucket size).
    pub rate_burst: u32,
    /// A session that stays over its rate this long is closed with 1008.
    #[serde(with = "seconds_or_duration")]
    pub abuse_close_secs: Duration,
    /// A connection idle this long is pinged.
    #[serde(with = "seconds_or_duration")]
    pub ping_interval_secs: Duration,
    /// A connection silent this long (no frame, not even a pong) is closed.
    #[serde(with = "seconds_or_duration")]
    pub idle_timeout_secs: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 65_536,
            max_text_bytes: 4_096,
            outbound_queue: 1_024,
            max_watched_users: 1_000,
            max_reads_in_flight: 4,
            max_sessions_per_user: 10,
            rate_per_sec: 20,
            rate_burst: 40,
            abuse_close_secs: Duration::from_secs(5),
            ping_interval_secs: Duration::from_secs(25),
            idle_timeout_secs: Duration::from_secs(60),
        }
    }
}

impl LimitsConfig {
    pub fn ping_interval(&self) -> Duration {
        self.ping_interval_secs
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout_secs
    }

    /// The checks of `[limits]`; the largest text must fit twice in the largest frame.
    fn validate(&self) -> Result<(), ConfigError> {
        within(
            "limits.max_message_bytes",
            self.max_message_bytes,
            1_024,
            16 * 1024 * 1024,
        )?;
        within(
            "limits.max_text_bytes",
            self.max_text_bytes,
            1,
            MAX_STORED_TEXT_BYTES.min(self.max_message_bytes / 2),
        )?;
        within("limits.outbound_queue", self.outbound_queue, 16, 1_000_000)?;
        within(
            "limits.max_watched_users",
            self.max_watched_users,
            1,
            100_000,
        )?;
        within(
            "limits.max_reads_in_flight",
            self.max_reads_in_flight,
            1,
            1_024,
        )?;
        within(
            "limits.max_sessions_per_user",
            self.max_sessions_per_user,
            1,
            100_000,
        )?;
        within("limits.rate_per_sec", self.rate_per_sec, 1, 1_000_000)?;
        within("limits.rate_burst", self.rate_burst, 1, 1_000_000)?;
        duration_at_least(
            "limits.abuse_close_secs",
            self.abuse_close_secs,
            MIN_SUBSECOND,
        )?;
        duration_at_least(
            "limits.ping_interval_secs",
            self.ping_interval_secs,
            MIN_SUBSECOND,
        )?;
        // After a ping the client gets one more second to answer, or one more ping interval
        // when that is shorter (whole seconds: at least `ping_interval_secs + 1`, as always).
        let answer = self.ping_interval_secs.min(Duration::from_secs(1));
        duration_at_least(
            "limits.idle_timeout_secs",
            self.idle_timeout_secs,
            self.ping_interval_secs + answer,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMode {
    /// One gateway node.
    #[default]
    None,
    /// Several gateway nodes, joined through NATS.
    Nats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub mode: ClusterMode,
    /// The NATS server(s), comma-separated.
    pub nats_url: String,
    /// This node's name in the cluster; generated at start when empty.
    pub node_id: String,
    /// The first token of every subject PerOXO uses, so several clusters can share NATS.
    pub subject_prefix: String,
    /// A node not heard from for this long no longer counts its users as online.
    #[serde(with = "seconds_or_duration")]
    pub presence_ttl_secs: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            mode: ClusterMode::None,
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            node_id: String::new(),
            subject_prefix: "peroxo".to_owned(),
            presence_ttl_secs: Duration::from_secs(10),
        }
    }
}

impl ClusterConfig {
    /// The checks of `[cluster]` that need no other section: subjects are built from the
    /// prefix and node id, so both must be valid NATS tokens.
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.node_id.is_empty() {
            validate_id(&self.node_id).map_err(|e| ConfigError::new("cluster.node_id", e))?;
        }
        let prefix_ok = !self.subject_prefix.is_empty()
            && self.subject_prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            });
        if !prefix_ok {
            return Err(ConfigError::new(
                "cluster.subject_prefix",
                "must be dot-separated tokens of letters, digits, _ and -",
            ));
        }
        // Heartbeats and NATS pings go out every third of the TTL; below a second and a half
        // a busy machine's pauses could expire a live node.
        duration_within(
            "cluster.presence_ttl_secs",
            self.presence_ttl_secs,
            Duration::from_millis(1_500),
            Duration::from_secs(3_600),
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// The longest a graceful shutdown may take (e.g. "30s", "2m").
    #[serde(with = "human_duration")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(30),
        }
    }
}

impl ShutdownConfig {
    /// The checks of `[shutdown]`.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.grace_period.is_zero() {
            return Err(ConfigError::new(
                "shutdown.grace_period",
                "must be longer than zero",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Session actor restarts allowed per connection within `restart_window_secs`; one more
    /// failure closes the connection with 1011.
    pub max_restarts: usize,
    #[serde(with = "seconds_or_duration")]
    pub restart_window_secs: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            restart_window_secs: Duration::from_secs(60),
        }
    }
}

impl SessionConfig {
    /// The checks of `[session]`.
    fn validate(&self) -> Result<(), ConfigError> {
        duration_at_least(
            "session.restart_window_secs",
            self.restart_window_secs,
            MIN_SUBSECOND,
        )
    }
}

/// `[groups]`: the limits of group conversations (protocol 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    /// The most members a group may have.
    pub max_members: u32,
    /// The most groups one user may be a member of.
    pub max_groups_per_user: u32,
    /// The longest group title, in bytes.
    pub max_title_bytes: u32,
    /// Groups up to this many members get live read receipts and typing indicators.
    pub live_receipts_max_members: u32,
    /// A send to a group costs one command of the sender's rate, plus one per this many
    /// members it reaches.
    pub members_per_rate_token: u32,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            max_members: 1_000,
            max_groups_per_user: 500,
            max_title_bytes: 128,
            live_receipts_max_members: 100,
            members_per_rate_token: 50,
        }
    }
}

impl GroupsConfig {
    /// The limits storage checks group changes against.
    pub fn limits(&self) -> GroupLimits {
        GroupLimits {
            max_members: self.max_members,
            max_groups_per_user: self.max_groups_per_user,
            max_title_bytes: self.max_title_bytes,
        }
    }

    /// The rate tokens a send to a group of `members` members costs beyond its own command.
    pub fn rate_tokens(&self, members: u32) -> u32 {
        members / self.members_per_rate_token.max(1)
    }

    /// The checks of `[groups]`.
    fn validate(&self) -> Result<(), ConfigError> {
        let in_range = |key: &str, value: u32, max: u32| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    format!("groups.{key}"),
                    format!("must be between 1 and {max}"),
                ))
            }
        };
        in_range("max_members", self.max_members, MAX_GROUP_MEMBERS)?;
        in_range("max_groups_per_user", self.max_groups_per_user, u32::MAX)?;
        in_range(
            "max_title_bytes",
            self.max_title_bytes,
            MAX_TITLE_BYTES as u32,
        )?;
        in_range(
            "live_receipts_max_members",
            self.live_receipts_max_members,
            MAX_GROUP_MEMBERS,
        )?;
        in_range(
            "members_per_rate_token",
            self.members_per_rate_token,
            MAX_GROUP_MEMBERS,
        )
    }
}

/// `[messages]`: what may happen to a message after it is sent (protocol 3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagesConfig {
    /// How long after sending its author may edit a message; 0: forever.
    #[serde(with = "human_duration")]
    pub edit_window: Duration,
    /// The most distinct reactions (emojis) one message may hold.
    pub max_reactions_per_message: u32,
    /// The most reactions one user may make to one message.
    pub max_reactions_per_user: u32,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        Self {
            edit_window: Duration::from_secs(48 * 3600),
            max_reactions_per_message: 20,
            max_reactions_per_user: 10,
        }
    }
}

impl MessagesConfig {
    /// The limits storage checks changes to messages against.
    pub fn limits(&self) -> MessageLimits {
        MessageLimits {
            edit_window_ms: u64::try_from(self.edit_window.as_millis()).unwrap_or(u64::MAX),
            max_reactions_per_message: self.max_reactions_per_message,
            max_reactions_per_user: self.max_reactions_per_user,
        }
    }

    /// The checks of `[messages]`.
    fn validate(&self) -> Result<(), ConfigError> {
        let in_range = |key: &str, value: u32, max: u32| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    format!("messages.{key}"),
                    format!("must be between 1 and {max}"),
                ))
            }
        };
        in_range(
            "max_reactions_per_message",
            self.max_reactions_per_message,
            MAX_REACTIONS_PER_MESSAGE,
        )?;
        in_range(
            "max_reactions_per_user",
            self.max_reactions_per_user,
            MAX_REACTIONS_PER_MESSAGE,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `peroxo=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Whether the configuration file must exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFile {
    /// Named by the operator: a missing file is an error.
    Required,
    /// The default `config.toml`: when absent, every default applies.
    Optional,
}

impl Config {
    /// The effective configuration as TOML, secrets redacted (for `peroxo check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration always serializes")
    }

    /// Loads `path`, applies environment overrides from `env`, and validates the result (all
    /// but `[auth]`: see [`Config::validate_auth`]).
    pub fn load(
        path: &Path,
        file: ConfigFile,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let file_key = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file == ConfigFile::Optional => {
                String::new()
            }
            Err(e) => return Err(ConfigError::new(file_key, format!("cannot read: {e}"))),
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::new(file_key, e.to_string()))?;
        let overrides = apply_env_overrides(&mut table, env)?;
        let config = deserialize_with_overrides(table, &overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// Builds a config from a TOML document and validates all of it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::new("config", e.to_string()))?;
        Self::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        let config = deserialize(table)?;
        config.validate()?;
        config.validate_auth()?;
        Ok(config)
    }

    /// Checks what types alone cannot: each section by itself, and what several sections must
    /// agree on. The first problem found is the one reported, so the order is part of the
    /// behaviour: a cluster that needs shared storage is reported before `[cluster]`'s own keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.storage.validate()?;
        self.limits.validate()?;
        self.http.validate()?;
        self.session.validate()?;
        self.groups.validate()?;
        self.messages.validate()?;
        self.validate_cluster_storage()?;
        self.cluster.validate()?;
        self.shutdown.validate()?;
        self.retention.validate()?;
        self.server_api.validate()?;
        self.events.validate()?;
        self.webhooks.validate()?;
        self.push.validate()
    }

    /// A cluster of gateways must share one storage service: an embedded one would give
    /// each node its own.
    fn validate_cluster_storage(&self) -> Result<(), ConfigError> {
        if self.cluster.mode == ClusterMode::Nats && self.storage.embedded {
            return Err(ConfigError::new(
                "storage.embedded",
                "cluster.mode = \"nats\" needs one storage shared by every node: set \
                 storage.embedded = false and storage.endpoint to a `peroxo store`",
            ));
        }
        Ok(())
    }

    /// The secrets of the configuration, by key (shown as fingerprints in a [`Snapshot`]).
    pub fn secrets(&self) -> [(&'static str, &Secret); 2] {
        [
            ("auth.jwt_secret", &self.auth.jwt_secret),
            ("storage.postgres.url", &self.storage.postgres.url),
        ]
    }

    /// Checks `[auth]` as far as it can without reading keys: the gateway reads and parses
    /// them when it builds its authenticator. Only roles that authenticate clients need it
    /// (`peroxo store` does not).
    pub fn validate_auth(&self) -> Result<(), ConfigError> {
        self.auth.validate()
    }
}

fn at_least<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::new(
            key,
            format!("must be at least {min}, got {value}"),
        ));
    }
    Ok(())
}

/// The shortest value of the `*_secs` keys that may go below a second: shorter is surely a
/// typo (and `0` was never allowed).
const MIN_SUBSECOND: Duration = Duration::from_millis(100);

fn duration_at_least(key: &str, value: Duration, min: Duration) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::new(
            key,
            format!(
                "must be at least {}, got {}",
                humantime::format_duration(min),
                humantime::format_duration(value)
            ),
        ));
    }
    Ok(())
}

fn duration_within(
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            key,
            format!(
                "must be between {} and {}, got {}",
                humantime::format_duration(min),
                humantime::format_duration(max),
                humantime::format_duration(value)
            ),
        ));
    }
    Ok(())
}

fn within<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            key,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(())
}

fn deserialize(table: toml::Table) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        // The TOML deserializer appends "in `section`"; the key already says it.
        let message = e.into_inner().to_string();
        let message = message.lines().next().unwrap_or_default().to_owned();
        ConfigError::new(if key == "." { "config".to_owned() } else { key }, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().unwrap();
        let overrides = apply_env_overrides(
            &mut table,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        let config = deserialize_with_overrides(table, &overrides)?;
        config.validate()?;
        config.validate_auth()?;
        Ok(config)
    }

    fn shipped_config() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config.toml"))
            .expect("config.toml ships with the repository")
    }

    #[test]
    fn the_shipped_config_is_valid_once_a_secret_is_given() {
        let config = load_with_env(
            &shipped_config(),
            &[("PEROXO_AUTH__JWT_SECRET", &"s".repeat(32))],
        )
        .expect("the shipped config validates");
        assert_eq!(config.auth.mode, AuthMode::Jwt);
        load_with_env(&shipped_config(), &[("PEROXO_AUTH__MODE", "dev")])
            .expect("the shipped config validates in dev mode");
    }

    #[test]
    fn jwt_mode_without_a_secret_says_how_to_set_one() {
        let err = Config::from_toml(&shipped_config()).unwrap_err();
        assert_eq!(err.key, "auth.jwt_secret");
        assert!(err.message.contains("PEROXO_AUTH__JWT_SECRET"), "{err}");
        assert!(err.message.contains("auth.jwt_secret_file"), "{err}");
        let err = Config::from_toml("[auth]\njwt_secret = \"short\"\n").unwrap_err();
        assert!(err.message.contains("at least 32 bytes"), "{err}");
        let err = Config::from_toml("[auth]\nalgorithm = \"RS256\"\n").unwrap_err();
        assert_eq!(err.key, "auth.public_key_file");
    }

    #[test]
    fn a_tenant_rule_needs_a_valid_tenant_id_and_falls_back_to_the_global_keys() {
        let secret = [("PEROXO_AUTH__JWT_SECRET", "s".repeat(32))];
        let secret: Vec<(&str, &str)> = secret.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let text = "[auth]\naudience = \"all\"\n[auth.tenants.acme]\nissuer = \"https://acme\"\n";
        let config = load_with_env(text, &secret).unwrap();
        assert_eq!(
            config.auth.claims_for("acme"),
            (Some("all"), Some("https://acme"))
        );
        assert_eq!(config.auth.claims_for("other"), (Some("all"), None));
        let err =
            load_with_env("[auth.tenants.\"no spaces\"]\nissuer = \"x\"\n", &secret).unwrap_err();
        assert_eq!(err.key, "auth.tenants.no spaces");
        let err = load_with_env("[auth.tenants.acme]\nissuers = \"x\"\n", &secret).unwrap_err();
        assert!(err.key.starts_with("auth.tenants"), "{err}");
    }

    #[test]
    fn a_key_set_stands_alone_and_its_refresh_times_are_bounded() {
        let url = "[auth]\njwks_url = \"https://login.example/jwks\"\n";
        let config = Config::from_toml(url).unwrap();
        assert!(config.auth.uses_jwks());
        assert_eq!(config.auth.jwks_refresh_secs, Duration::from_secs(300));
        assert_eq!(config.auth.jwks_min_refresh_secs, Duration::from_secs(30));
        let secret = [("PEROXO_AUTH__JWT_SECRET", "s".repeat(32))];
        let secret: Vec<(&str, &str)> = secret.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let err = load_with_env(url, &secret).unwrap_err();
        assert_eq!(err.key, "auth.jwt_secret");
        let err = Config::from_toml(&format!("{url}public_key_file = \"k.pem\"\n")).unwrap_err();
        assert_eq!(err.key, "auth.public_key_file");
        let err = Config::from_toml(&format!("{url}jwks_file = \"k.json\"\n")).unwrap_err();
        assert_eq!(err.key, "auth.jwks_url");
        let err = Config::from_toml("[auth]\njwks_url = \"ftp://x\"\n").unwrap_err();
        assert_eq!(err.key, "auth.jwks_url");
        let err = Config::from_toml(&format!("{url}jwks_refresh_secs = 10\n")).unwrap_err();
        assert_eq!(err.key, "auth.jwks_refresh_secs");
        let err =
            Config::from_toml("[auth]\njwks_file = \"/nonexistent/jwks.json\"\n").unwrap_err();
        assert_eq!(err.key, "auth.jwks_file");
    }

    #[test]
    fn storage_endpoint_takes_one_url_or_several_and_names_a_bad_one() {
        let dev = [("PEROXO_AUTH__MODE", "dev")];
        let one = load_with_env(
            "[storage]\nembedded = false\nendpoint = \"http://a:1\"\n",
            &dev,
        )
        .unwrap();
        assert_eq!(one.storage.endpoint.urls(), ["http://a:1"]);
        let text = "[storage]\nembedded = false\nendpoint = [\"http://a:1\", \"http://b:2\"]\n";
        let two = load_with_env(text, &dev).unwrap();
        assert_eq!(two.storage.endpoint.urls(), ["http://a:1", "http://b:2"]);
        // Printed back as written, and overridable from the environment as a TOML list.
        let printed: toml::Table = two.to_redacted_toml().parse().unwrap();
        let printed = printed["storage"]["endpoint"].as_array().unwrap();
        assert_eq!(printed.len(), 2);
        let one_printed: toml::Table = one.to_redacted_toml().parse().unwrap();
        assert_eq!(
            one_printed["storage"]["endpoint"].as_str(),
            Some("http://a:1")
        );
        let env = [
            ("PEROXO_AUTH__MODE", "dev"),
            (
                "PEROXO_STORAGE__ENDPOINT",
                r#"["http://c:3", "http://d:4"]"#,
            ),
        ];
        let overridden = load_with_env("[storage]\nembedded = false\n", &env).unwrap();
        assert_eq!(
            overridden.storage.endpoint.urls(),
            ["http://c:3", "http://d:4"]
        );
        for bad in ["[]", r#"["http://a:1", "a:2"]"#, "5"] {
            let text = format!("[storage]\nembedded = false\nendpoint = {bad}\n");
            let err = load_with_env(&text, &dev).unwrap_err();
            assert_eq!(err.key, "storage.endpoint", "{bad}: {err}");
        }
    }

    #[test]
    fn the_printed_config_hides_secrets_and_reads_back() {
        let secret = "s".repeat(40);
        let config = load_with_env("", &[("PEROXO_AUTH__JWT_SECRET", &secret)]).unwrap();
        let printed = config.to_redacted_toml();
        assert!(!printed.contains(&secret));
        assert!(printed.contains("<redacted>"));
        assert!(printed.contains("grace_period = \"30s\""), "{printed}");
        // Everything but the secret reads back as it was.
        let again: toml::Table = printed.parse().unwrap();
        assert_eq!(again["storage"]["max_pending"].as_integer(), Some(10_000));
    }

    #[test]
    fn a_numeric_looking_override_of_a_string_key_stays_a_string() {
        let secret = "1".repeat(40);
        let config = load_with_env("", &[("PEROXO_AUTH__JWT_SECRET", &secret)]).unwrap();
        assert_eq!(config.auth.jwt_secret.expose(), secret);
        assert!(
            !format!("{config:?}").contains(&secret),
            "secrets never print"
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Config::from_toml("[storage]\nmax_pendin = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_pendin"), "{err}");
        let err = Config::from_toml("[storag]\n").unwrap_err();
        assert!(err.to_string().contains("storag"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let err = Config::from_toml("[storage]\nmax_pending = 0\n").unwrap_err();
        assert_eq!(err.key, "storage.max_pending");
        let err = Config::from_toml("[storage]\nmax_pending = \"lots\"\n").unwrap_err();
        assert_eq!(err.key, "storage.max_pending");
        let err = Config::from_toml("[auth]\nmode = \"open\"\n").unwrap_err();
        assert_eq!(err.key, "auth.mode");
    }

    #[test]
    fn a_nats_cluster_needs_a_shared_storage_before_its_own_keys_are_checked() {
        let dev = "[auth]\nmode = \"dev\"\n";
        let err = Config::from_toml(&format!(
            "{dev}[cluster]\nmode = \"nats\"\nsubject_prefix = \"bad prefix\"\n"
        ))
        .unwrap_err();
        assert_eq!(err.key, "storage.embedded");
        assert!(err.message.contains("peroxo store"), "{err}");
        let err = Config::from_toml(&format!(
            "{dev}[storage]\nembedded = false\n[cluster]\nmode = \"nats\"\n\
             subject_prefix = \"bad prefix\"\n"
        ))
        .unwrap_err();
        assert_eq!(err.key, "cluster.subject_prefix");
    }

    #[test]
    fn the_first_section_in_error_is_the_one_reported() {
        let err = Config::from_toml(
            "[shutdown]\ngrace_period = \"0s\"\n[http]\nallowed_origins = [\"x\"]\n\
             [limits]\nrate_burst = 0\n[storage]\nmax_pending = 0\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "storage.max_pending");
        let err = Config::from_toml(
            "[shutdown]\ngrace_period = \"0s\"\n[http]\nallowed_origins = [\"x\"]\n\
             [limits]\nrate_burst = 0\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "limits.rate_burst");
        let err = Config::from_toml(
            "[shutdown]\ngrace_period = \"0s\"\n[http]\nallowed_origins = [\"x\"]\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "http.allowed_origins[0]");
        let err = Config::from_toml("[shutdown]\ngrace_period = \"0s\"\n").unwrap_err();
        assert_eq!(err.key, "shutdown.grace_period");
    }

    #[test]
    fn environment_overrides_win_over_the_file() {
        let config = load_with_env(
            "[storage]\nmax_pending = 5\n",
            &[
                ("PEROXO_STORAGE__MAX_PENDING", "7"),
                ("PEROXO_HTTP__LISTEN", "127.0.0.1:9999"),
                ("PEROXO_LOG__FORMAT", "json"),
                ("PEROXO_AUTH__MODE", "dev"),
                ("HOME", "/root"),
            ],
        )
        .unwrap();
        assert_eq!(config.storage.max_pending, 7);
        assert_eq!(config.http.listen.port(), 9999);
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn bad_environment_overrides_name_their_key() {
        let err = load_with_env("", &[("PEROXO_STORAGE__MAX_BATCH", "0")]).unwrap_err();
        assert_eq!(err.key, "storage.max_batch");
        let err = load_with_env("", &[("PEROXO_STORAGE__NOPE", "1")]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn secs_keys_take_whole_seconds_as_before_or_a_duration() {
        let config = Config::from_toml(
            "[auth]\nmode = \"dev\"\n[limits]\nping_interval_secs = 25\nidle_timeout_secs = 26\nabuse_close_secs = 1\n\
             [http]\nhandshake_timeout_secs = 10\n[session]\nrestart_window_secs = 60\n",
        )
        .unwrap();
        assert_eq!(config.limits.ping_interval(), Duration::from_secs(25));
        assert_eq!(config.limits.idle_timeout(), Duration::from_secs(26));
        assert_eq!(config.limits.abuse_close_secs, Duration::from_secs(1));
        let config = Config::from_toml(
            "[auth]\nmode = \"dev\"\n[limits]\nping_interval_secs = \"250ms\"\nidle_timeout_secs = \"1.5s\"\n\
             abuse_close_secs = \"100ms\"\n[http]\nhandshake_timeout_secs = \"500ms\"\n\
             [session]\nrestart_window_secs = \"2m\"\n",
        )
        .unwrap();
        assert_eq!(config.limits.ping_interval(), Duration::from_millis(250));
        assert_eq!(config.limits.idle_timeout(), Duration::from_millis(1_500));
        assert_eq!(config.limits.abuse_close_secs, Duration::from_millis(100));
        assert_eq!(config.http.handshake_timeout(), Duration::from_millis(500));
        assert_eq!(config.session.restart_window_secs, Duration::from_secs(120));
        let config = load_with_env(
            "[auth]\nmode = \"dev\"\n",
            &[("PEROXO_LIMITS__PING_INTERVAL_SECS", "300ms")],
        )
        .unwrap();
        assert_eq!(config.limits.ping_interval(), Duration::from_millis(300));
    }

    #[test]
    fn secs_keys_print_whole_seconds_as_integers_and_the_rest_as_durations() {
        let mut config = Config::default();
        config.auth.mode = AuthMode::Dev;
        config.limits.ping_interval_secs = Duration::from_millis(1_500);
        let printed = toml::to_string(&config).unwrap();
        assert!(printed.contains("idle_timeout_secs = 60\n"), "{printed}");
        assert!(
            printed.contains("ping_interval_secs = \"1s 500ms\""),
            "{printed}"
        );
        let again = Config::from_toml(&printed).unwrap();
        assert_eq!(again.limits.ping_interval(), Duration::from_millis(1_500));
    }

    #[test]
    fn secs_keys_keep_their_bounds_and_name_their_key() {
        let cases = [
            (
                "[limits]\nping_interval_secs = 0\n",
                "limits.ping_interval_secs",
            ),
            (
                "[limits]\nping_interval_secs = \"50ms\"\n",
                "limits.ping_interval_secs",
            ),
            (
                "[limits]\nabuse_close_secs = \"10ms\"\n",
                "limits.abuse_close_secs",
            ),
            (
                "[http]\nhandshake_timeout_secs = 0\n",
                "http.handshake_timeout_secs",
            ),
            (
                "[session]\nrestart_window_secs = \"0s\"\n",
                "session.restart_window_secs",
            ),
            (
                "[cluster]\npresence_ttl_secs = 1\n",
                "cluster.presence_ttl_secs",
            ),
            (
                "[cluster]\npresence_ttl_secs = 3601\n",
                "cluster.presence_ttl_secs",
            ),
            (
                "[limits]\nping_interval_secs = -1\n",
                "limits.ping_interval_secs",
            ),
            (
                "[limits]\nping_interval_secs = 1.5\n",
                "limits.ping_interval_secs",
            ),
            (
                "[limits]\nping_interval_secs = \"soon\"\n",
                "limits.ping_interval_secs",
            ),
            // Whole seconds: the idle timeout exceeds the ping interval by a second, as always.
            (
                "[limits]\nping_interval_secs = 25\nidle_timeout_secs = 25\n",
                "limits.idle_timeout_secs",
            ),
            // Below a second: by the ping interval itself.
            (
                "[limits]\nping_interval_secs = \"200ms\"\nidle_timeout_secs = \"399ms\"\n",
                "limits.idle_timeout_secs",
            ),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        }
        let dev = "[auth]\nmode = \"dev\"\n";
        Config::from_toml(&format!(
            "{dev}[limits]\nping_interval_secs = \"200ms\"\nidle_timeout_secs = \"400ms\"\n"
        ))
        .unwrap();
        Config::from_toml(&format!("{dev}[cluster]\npresence_ttl_secs = \"1.5s\"\n")).unwrap();
    }
}
