//! What outlives any one actor: the node's shared handles ([`GatewayContext`]), one
//! connection's state ([`ConnectionContext`]), and the current link to the storage service
//! ([`StorageLink`]). They live beside the tree, never inside an actor that may be
//! restarted: a restarted actor finds them as its predecessor left them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use peroxo_protocol::domain::UserKey;
use peroxo_storage::RetentionStats;
use peroxo_storage::grpc::StorageClient;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::ActorSlot;
use super::cluster::ClusterMsg;
use super::conversation_commands::MemberCache;
use super::outbox::Outbox;
use super::persistence::PersistenceMsg;
use super::router::{AnnouncedOnline, Registration, RouterMsg};
use crate::admission::Ticket;
use crate::connection::Outbound;
use crate::identity::Authenticator;
use crate::live::LiveSettings;
use crate::rate_limit::RateLimiter;
use crate::restrictions::Restrictions;
use crate::telemetry::{Metrics, RestartCounts};

/// What a session needs from the rest of the node. One per node, shared by every session.
pub struct GatewayContext {
    pub router: ActorSlot<RouterMsg>,
    pub persistence: ActorSlot<PersistenceMsg>,
    pub storage: StorageLink,
    /// Accepted sends on their way to storage (bounded by `storage.max_pending`).
    pub outbox: Arc<Outbox>,
    /// The limits and settings a reload changes while the node runs.
    pub live: Arc<LiveSettings>,
    /// Recently read member lists of groups (typing, live receipts).
    pub member_cache: Arc<MemberCache>,
    /// The users this node has announced online, which a restarted Router starts from.
    pub announced: Arc<AnnouncedOnline>,
    /// How long a session waits for storage when the client connects.
    pub storage_wait: Duration,
    pub restarts: Arc<RestartCounts>,
    /// This node's metrics; each connection's queue holds them too.
    pub metrics: Arc<Metrics>,
    /// Verifies tokens (on upgrade and `refresh`); a reload may replace it.
    pub auth: ArcSwap<Authenticator>,
    /// Set once shutdown begins: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    /// The link to the other gateway nodes, when this node is part of a cluster.
    pub cluster: Option<ActorSlot<ClusterMsg>>,
    /// The active bans and revoked tokens, which upgrades are checked against without a
    /// storage call (Persistence loads them; the server API and the cluster update them).
    pub restrictions: Arc<Restrictions>,
    /// What the embedded storage service's retention task did, for `/metrics` (`None`
    /// without embedded storage: a `peroxo store` logs its passes).
    pub retention: Option<Arc<RetentionStats>>,
    /// Woken after every commit this node makes, so readers of the event feed (long polls,
    /// webhooks) look at once instead of at their next poll.
    pub committed: Arc<tokio::sync::Notify>,
    /// Where the Router offers recipients it could not deliver to (`None`: `push.delay` 0).
    pub push: Option<crate::actors::push::PushQueue>,
}

/// One connection, as it outlives the session actors that serve it.
pub struct ConnectionContext {
    pub key: UserKey,
    /// The protocol version of the connection: 1 (direct messages only), 2 (conversations)
    /// or 3 (what happens to messages).
    pub protocol: u32,
    pub outbound: Outbound,
    /// Users (of the same tenant) this connection watches for presence.
    pub watching: Mutex<BTreeSet<String>>,
    /// Storage reads this connection may have in flight.
    pub reads: ReadPermits,
    /// When the client's credential expires (Unix seconds); 0 for never.
    pub expires_at: AtomicU64,
    /// This connection's place in the node's admission counts.
    pub ticket: Ticket,
    /// Whether the cluster counts this connection in its user's interest (to be withdrawn
    /// when it closes).
    pub cluster_interest: AtomicBool,
    /// The connection's command rate: kept here, not in the session, so a session restarted
    /// after a crash goes on with the bucket as it was.
    pub rate: Mutex<RateLimiter>,
}

impl ConnectionContext {
    /// What the Router must know of this connection; `None` until its welcome is built (the
    /// session registers itself then).
    pub fn registration(&self) -> Option<Registration> {
        self.outbound.welcome().is_ready().then(|| Registration {
            key: self.key.clone(),
            protocol: self.protocol,
            outbound: self.outbound.clone(),
            watching: self
                .watching
                .lock()
                .expect("watch list poisoned")
                .iter()
                .cloned()
                .collect(),
        })
    }
}

/// The storage reads one connection may have in flight (`limits.max_reads_in_flight`, which a
/// reload may change: the permits follow it the next time one is asked for).
#[derive(Debug)]
pub struct ReadPermits {
    permits: Arc<Semaphore>,
    /// Permits in all, taken or not.
    total: Mutex<usize>,
}

impl ReadPermits {
    pub fn new(total: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total: Mutex::new(total),
        }
    }

    /// Waits for a permit out of `most` in all; `None` once the permits are closed.
    pub async fn acquire(&self, most: usize) -> Option<OwnedSemaphorePermit> {
        {
            let mut total = self.total.lock().expect("read permits poisoned");
            if most > *total {
                self.permits.add_permits(most - *total);
                *total = most;
            } else if most < *total {
                // Only free permits can go now; the rest go at a later call.
                *total -= self.permits.forget_permits(*total - most);
            }
        }
        Arc::clone(&self.permits).acquire_owned().await.ok()
    }
}

/// The current connection to the storage service, shared with sessions for their reads.
/// Persistence sets it when it connects and clears it when a call finds storage unreachable.
#[derive(Debug, Clone)]
pub struct StorageLink {
    client: Arc<watch::Sender<Option<StorageClient>>>,
}

impl Default for StorageLink {
    fn default() -> Self {
        Self {
            client: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl StorageLink {
    /// The connected client, or `None` while the storage service is unreachable.
    pub fn client(&self) -> Option<StorageClient> {
        self.client.borrow().clone()
    }

    /// The connected client, waiting up to `timeout` for storage to become reachable.
    pub async fn wait_for_client(&self, timeout: Duration) -> Option<StorageClient> {
        let mut updates = self.client.subscribe();
        let reachable = updates.wait_for(Option::is_some);
        match tokio::time::timeout(timeout, reachable).await {
            Ok(Ok(client)) => client.clone(),
            _ => None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.client.borrow().is_some()
    }

    pub(super) fn set(&self, client: Option<StorageClient>) {
        self.client.send_replace(client);
    }
}
