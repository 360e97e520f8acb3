//! The settings a reload changes while the node runs ([`LiveSettings`]).
//!
//! Whoever applies a limit reads it here when it applies it, never from a copy taken at
//! start: a reload (`SIGHUP`, see `docs/OPERATIONS.md`) swaps the whole set at once, and every
//! connection, old or new, goes on under the new values without being dropped. A connection
//! holds no copy of them; its per-connection state that depends on them (the rate bucket, the
//! read permits) adjusts itself the next time it is used.
//!
//! The keys of the configuration that apply live are listed in `peroxo_config::is_live`;
//! every other key keeps its running value until the next start.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use std::collections::HashMap;

use peroxo_config::{Config, GroupsConfig, IpRange, LimitsConfig, MessagesConfig, ServerApiConfig};
use peroxo_protocol::DecodeLimits;

/// The values of the live keys, as one consistent set.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: LimitsConfig,
    pub groups: GroupsConfig,
    pub messages: MessagesConfig,
    /// When not empty, the only `Origin`s allowed to open WebSockets.
    pub allowed_origins: Arc<[String]>,
    /// WebSocket connections the node holds at most.
    pub max_connections: usize,
    /// How long a graceful shutdown may take.
    pub grace_period: Duration,
    /// `[server_api]`: its limits, and its keys by SHA-256.
    pub server_api: ServerApiConfig,
    pub api_keys: Arc<HashMap<String, ApiKeyOwner>>,
    /// `server_api.allowed_ips`, parsed.
    pub api_allowed: Arc<[IpRange]>,
}

/// Whom an API key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyOwner {
    pub tenant: String,
    /// The key's name, for logs.
    pub name: String,
}

impl Settings {
    fn of(config: &Config) -> Self {
        Self {
            limits: config.limits.clone(),
            groups: config.groups.clone(),
            messages: config.messages.clone(),
            allowed_origins: config.http.allowed_origins.clone().into(),
            max_connections: config.http.max_connections,
            grace_period: config.shutdown.grace_period,
            server_api: config.server_api.clone(),
            api_keys: Arc::new(
                config
                    .server_api
                    .keys
                    .iter()
                    .map(|key| {
                        let owner = ApiKeyOwner {
                            tenant: key.tenant.clone(),
                            name: key.name.clone(),
                        };
                        (key.sha256.clone(), owner)
                    })
                    .collect(),
            ),
            api_allowed: config.server_api.allowed_ranges().into(),
        }
    }

    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_text_bytes: self.limits.max_text_bytes,
            max_watched_users: self.limits.max_watched_users,
        }
    }
}

/// The node's current [`Settings`], shared by everything that applies them.
#[derive(Debug)]
pub struct LiveSettings {
    current: ArcSwap<Settings>,
    /// `limits.outbound_queue`, apart: every frame queued to a client reads it.
    outbound_queue: QueueBound,
}

impl LiveSettings {
    pub fn new(config: &Config) -> Self {
        Self {
            current: ArcSwap::from_pointee(Settings::of(config)),
            outbound_queue: QueueBound::new(config.limits.outbound_queue),
        }
    }

    /// The settings now. Cheap; hold the guard only for the moment they are applied.
    pub fn load(&self) -> Guard<Arc<Settings>> {
        self.current.load()
    }

    /// Applies the live keys of `config` (the rest of it is ignored).
    pub fn apply(&self, config: &Config) {
        self.outbound_queue.set(config.limits.outbound_queue);
        self.current.store(Arc::new(Settings::of(config)));
    }

    /// The bound of every connection's outbound queue, shared with the queues.
    pub fn outbound_queue(&self) -> QueueBound {
        self.outbound_queue.clone()
    }
}

/// How many frames a connection's outbound queue holds at most; one value shared by the node's
/// queues, so a reload changes it for all of them at once.
#[derive(Debug, Clone)]
pub struct QueueBound(Arc<AtomicUsize>);

impl QueueBound {
    pub fn new(frames: usize) -> Self {
        Self(Arc::new(AtomicUsize::new(frames)))
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, frames: usize) {
        self.0.store(frames, Ordering::Relaxed);
    }
}

impl From<usize> for QueueBound {
    fn from(frames: usize) -> Self {
        Self::new(frames)
    }
}
