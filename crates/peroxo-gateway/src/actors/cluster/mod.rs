//! Cluster: this node's link to the other gateway nodes, through NATS.
//!
//! The only module that knows NATS and the format nodes exchange (JSON envelopes).
//!
//! - **Delivery.** Every user with a session on this node has an *interest subject*,
//!   `<prefix>.user.<tenant>.<user>`, which this node subscribes to while it holds one of
//!   that user's sessions. After a commit, the Router delivers locally and publishes the
//!   message on the recipient's and the sender's subjects; NATS hands it to exactly the
//!   nodes that hold those users. A session's subscription is confirmed by the NATS server
//!   (flush) before its `welcome` is built, so no message committed after `welcome` can miss
//!   the node.
//! - **Presence.** Each node publishes on `<prefix>.presence` when a user's first local
//!   session opens or last one closes (numbered per node), a heartbeat every third of
//!   `cluster.presence_ttl_secs`, and its full list of online users when asked (`hello`). A
//!   node not heard from for the TTL stops counting. A gap in a node's numbering, a new node
//!   or a reconnect triggers a `hello`, and every node answers with its list.
//! - **Outages.** async-nats reconnects with exponential backoff; subscriptions come back
//!   by themselves. After a reconnect this node asks for everyone's presence again and the
//!   Router tells every local session to `sync` (it may have missed deliveries).
//!
//! The Router hears about remote users going online and offline, and about deliveries and
//! typing for its users, through [`RouterMsg`]s.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ActorSlot;
use super::router::RouterMsg;
use super::session_supervisor::SessionSupervisorMsg;
use peroxo_config::ClusterConfig;
use peroxo_protocol::domain::{StoredMessage, UserKey};

/// Users per presence snapshot envelope (a snapshot may span several).
const SNAPSHOT_CHUNK: usize = 2_000;
/// The longest a new interest waits for the NATS server to confirm its subscription.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);
/// The least time between two `hello`s from this node.
const HELLO_SPACING: Duration = Duration::from_secs(1);

pub enum ClusterMsg {
    /// A session of `user` is about to open here: make sure this node receives the user's
    /// deliveries; answered once the NATS server has the subscription (or NATS is away).
    /// Answers whether the interest was counted (to be withdrawn with `Disinterest`).
    Interest(UserKey, RpcReplyPort<bool>),
    /// A session of `user` has closed here.
    Disinterest(UserKey),
    /// Committed messages to hand to the other nodes holding their participants.
    PublishMessages(Vec<StoredMessage>),
    /// A typing indicator for `to`'s sessions on other nodes.
    PublishTyping { from: UserKey, to: String },
    /// A user's first local session opened, or last one closed.
    LocalPresence { user: UserKey, online: bool },
    /// Every user online on other nodes (for a Router that restarted).
    RemoteUsers(RpcReplyPort<Vec<UserKey>>),
    /// A presence envelope from the presence subject.
    Presence(Envelope),
    /// Time to send a heartbeat and forget silent nodes.
    Tick,
    /// The NATS connection came back after a loss.
    Reconnected,
    /// Tell the other nodes this one is leaving (graceful shutdown).
    Leave(RpcReplyPort<()>),
    /// Every local connection is gone (SessionSupervisor failed): drop every interest and
    /// tell the other nodes these users are no longer here.
    ForgetLocal,
}

/// What nodes say to each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Envelope {
    /// A committed message, for its participants' sessions.
    Message {
        origin: String,
        message: WireMessage,
    },
    Typing {
        origin: String,
        tenant: String,
        from: String,
        to: String,
    },
    /// A user's first session opened (or last closed) on `node`; `version` numbers `node`'s
    /// presence changes.
    Presence {
        node: String,
        incarnation: u64,
        version: u64,
        tenant: String,
        user: String,
        online: bool,
    },
    Heartbeat {
        node: String,
        incarnation: u64,
        version: u64,
    },
    /// Part of `node`'s list of online users; `first` starts a new list.
    Snapshot {
        node: String,
        incarnation: u64,
        version: u64,
        first: bool,
        users: Vec<(String, String)>,
    },
    /// `node` asks every node for its list.
    Hello { node: String },
    /// Deliveries to the user of this subject may have been lost: its sessions should sync.
    Resync { origin: String },
    /// `node` is leaving.
    Bye { node: String },
}

/// A committed message as nodes exchange it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireMessage {
    id: u64,
    tenant: String,
    sender: String,
    recipient: String,
    client_msg_id: String,
    text: String,
    ts: i64,
    sender_seq: u64,
    recipient_seq: u64,
}

impl From<&StoredMessage> for WireMessage {
    fn from(m: &StoredMessage) -> Self {
        Self {
            id: m.message_id,
            tenant: m.tenant.clone(),
            sender: m.sender.clone(),
            recipient: m.recipient.clone(),
            client_msg_id: m.client_msg_id.clone(),
            text: m.text.clone(),
            ts: m.ts,
            sender_seq: m.sender_seq,
            recipient_seq: m.recipient_seq,
        }
    }
}

impl From<WireMessage> for StoredMessage {
    fn from(m: WireMessage) -> Self {
        Self {
            message_id: m.id,
            tenant: m.tenant,
            sender: m.sender,
            recipient: m.recipient,
            client_msg_id: m.client_msg_id,
            text: m.text,
            ts: m.ts,
            sender_seq: m.sender_seq,
            recipient_seq: m.recipient_seq,
        }
    }
}

/// A NATS subject token for an id: ids may hold `.`, which separates tokens, so it is
/// written as `~` (a character ids cannot hold).
fn token(id: &str) -> String {
    id.replace('.', "~")
}

pub struct ClusterArgs {
    pub config: ClusterConfig,
    /// This node's name.
    pub node: String,
    pub client: async_nats::Client,
    pub router: ActorSlot<RouterMsg>,
    /// Where live connections are listed, to restore interests after a restart.
    pub sessions: ActorSlot<SessionSupervisorMsg>,
}

pub struct ClusterState {
    args: ClusterArgs,
    /// Tells this incarnation's presence numbering from a predecessor's (a restart starts
    /// again from 0).
    incarnation: u64,
    /// The subject this node answers on, so it can check the server has a subscription.
    echo_subject: String,
    /// Local sessions per interested user, and the task forwarding the user's subject.
    interests: HashMap<UserKey, (usize, JoinHandle<()>)>,
    /// Users online on this node, as announced.
    local: HashSet<UserKey>,
    /// This node's presence numbering.
    version: u64,
    peers: HashMap<String, Peer>,
    /// How many other nodes list each remote user.
    remote: HashMap<UserKey, usize>,
    presence_task: Option<JoinHandle<()>>,
    echo_task: Option<JoinHandle<()>>,
    /// Users this node published deliveries for lately, and when.
    recent: HashMap<UserKey, Instant>,
    last_hello: Option<Instant>,
}

struct Peer {
    incarnation: u64,
    version: u64,
    last_seen: Instant,
    users: HashSet<UserKey>,
}

impl Drop for ClusterState {
    /// A failed Cluster leaves no forwarding task behind (its successor subscribes again).
    fn drop(&mut self) {
        for (_, (_, task)) in self.interests.drain() {
            task.abort();
        }
        for task in [self.presence_task.take(), self.echo_task.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

pub struct Cluster;

impl Cluster {
    pub async fn spawn(
        args: ClusterArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<ActorRef<ClusterMsg>, ractor::SpawnErr> {
        let (actor, _) = Actor::spawn_linked(None, Cluster, args, supervisor).await?;
        Ok(actor)
    }
}

impl Actor for Cluster {
    type Msg = ClusterMsg;
    type State = ClusterState;
    type Arguments = ClusterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ClusterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let echo_subject = format!(
            "{}.node.{}.echo",
            args.config.subject_prefix,
            token(&args.node)
        );
        Ok(ClusterState {
            incarnation: incarnation(),
            echo_subject,
            args,
            interests: HashMap::new(),
            local: HashSet::new(),
            version: 0,
            peers: HashMap::new(),
            remote: HashMap::new(),
            presence_task: None,
            echo_task: None,
            recent: HashMap::new(),
            last_hello: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let subject = format!("{}.presence", state.args.config.subject_prefix);
        match state.args.client.subscribe(subject).await {
            Ok(mut subscriber) => {
                let myself = myself.clone();
                state.presence_task = Some(tokio::spawn(async move {
                    while let Some(message) = subscriber.next().await {
                        if let Ok(envelope) = serde_json::from_slice(&message.payload) {
                            let _ = myself.cast(ClusterMsg::Presence(envelope));
                        }
                    }
                }));
            }
            Err(error) => tracing::error!(%error, "cannot subscribe to cluster presence"),
        }
        // The echo answers this node's own checks that the server holds a subscription.
        match state
            .args
            .client
            .subscribe(state.echo_subject.clone())
            .await
        {
            Ok(mut subscriber) => {
                let client = state.args.client.clone();
                state.echo_task = Some(tokio::spawn(async move {
                    while let Some(message) = subscriber.next().await {
                        if let Some(reply) = message.reply {
                            let _ = client.publish(reply, bytes::Bytes::new()).await;
                        }
                    }
                }));
            }
            Err(error) => tracing::error!(%error, "cannot subscribe the cluster echo"),
        }
        // A predecessor's view of the other nodes is stale: start from none.
        let _ = state.args.router.cast(RouterMsg::RemoteReset);
        // After a restart: the live connections' interests and presence, again.
        if let Some(sessions) = state.args.sessions.get()
            && let Ok(registrations) =
                ractor::call_t!(sessions, SessionSupervisorMsg::Registrations, 10_000)
        {
            for registration in registrations {
                state.add_interest(&myself, registration.key.clone()).await;
                state.local.insert(registration.key);
            }
        }
        state.announce(true).await;
        myself.send_after(state.heartbeat_interval(), || ClusterMsg::Tick);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ClusterMsg::Interest(user, reply) => {
                let ok = state.add_interest(&myself, user).await;
                let _ = reply.send(ok);
            }
            ClusterMsg::Disinterest(user) => state.remove_interest(&user),
            ClusterMsg::PublishMessages(messages) => state.publish_messages(&messages).await,
            ClusterMsg::PublishTyping { from, to } => state.publish_typing(from, to).await,
            ClusterMsg::LocalPresence { user, online } => state.local_presence(user, online).await,
            ClusterMsg::RemoteUsers(reply) => {
                let _ = reply.send(state.remote.keys().cloned().collect());
            }
            ClusterMsg::Presence(envelope) => state.presence(envelope).await,
            ClusterMsg::Tick => {
                state.tick().await;
                myself.send_after(state.heartbeat_interval(), || ClusterMsg::Tick);
            }
            ClusterMsg::Reconnected => {
                tracing::info!(node = %state.args.node, "NATS reconnected; resynchronising presence and sessions");
                state.last_hello = None;
                state.announce(true).await;
                state.resync_recent().await;
                let _ = state.args.router.cast(RouterMsg::SyncHintAll);
            }
            ClusterMsg::ForgetLocal => state.forget_local().await,
            ClusterMsg::Leave(reply) => {
                let node = state.args.node.clone();
                state.publish_presence(&Envelope::Bye { node }).await;
                let _ = state.args.client.flush().await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

impl ClusterState {
    fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.args.config.presence_ttl_secs) / 3
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.args.config.presence_ttl_secs)
    }

    fn user_subject(&self, user: &UserKey) -> String {
        format!(
            "{}.user.{}.{}",
            self.args.config.subject_prefix,
            token(&user.tenant),
            token(&user.user)
        )
    }

    async fn add_interest(&mut self, myself: &ActorRef<ClusterMsg>, user: UserKey) -> bool {
        if let Some((count, _)) = self.interests.get_mut(&user) {
            *count += 1;
            return true;
        }
        let subject = self.user_subject(&user);
        let mut subscriber = match self.args.client.subscribe(subject).await {
            Ok(subscriber) => subscriber,
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe a user's subject");
                return false;
            }
        };
        let router = self.args.router.clone();
        let node = self.args.node.clone();
        let key = user.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let Ok(envelope) = serde_json::from_slice::<Envelope>(&message.payload) else {
                    continue;
                };
                forward(&router, &node, &key, envelope);
            }
        });
        self.interests.insert(user, (1, task));
        let _ = myself;
        // The server handles a connection's commands in order: once it answers a request
        // sent after the subscription, it holds the subscription. While NATS is away there
        // is nothing to wait for: the subscription returns with the connection, and the
        // sync_hint sent then covers what was missed.
        if self.connected() {
            let echo = self
                .args
                .client
                .request(self.echo_subject.clone(), bytes::Bytes::new());
            if !matches!(tokio::time::timeout(CONFIRM_TIMEOUT, echo).await, Ok(Ok(_))) {
                tracing::debug!("the NATS server did not confirm a new interest in time");
            }
        }
        true
    }

    /// Drops every local interest and tells the other nodes none of these users is here.
    async fn forget_local(&mut self) {
        for (_, (_, task)) in self.interests.drain() {
            task.abort();
        }
        self.local.clear();
        self.version += 1;
        self.publish_snapshot().await;
    }

    fn connected(&self) -> bool {
        self.args.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Whether a link that was up is down now (before the first connection, publishes
    /// wait in the client and go out once it connects).
    fn link_lost(&self) -> bool {
        self.args.client.connection_state() == async_nats::connection::State::Disconnected
    }

    fn remove_interest(&mut self, user: &UserKey) {
        if let Some((count, _)) = self.interests.get_mut(user) {
            *count -= 1;
            if *count == 0
                && let Some((_, task)) = self.interests.remove(user)
            {
                // Dropping the subscriber unsubscribes.
                task.abort();
            }
        }
    }

    /// Publishes `envelope`, unless NATS is away: then it is dropped (every message is in
    /// storage, and the sync_hint after the reconnect covers it) rather than queued until
    /// the client's buffer fills and blocks this actor.
    async fn publish(&self, subject: String, envelope: &Envelope) {
        if self.link_lost() {
            return;
        }
        let payload = serde_json::to_vec(envelope).expect("envelopes always serialize");
        if let Err(error) = self.args.client.publish(subject, payload.into()).await {
            tracing::debug!(%error, "cluster publish failed");
        }
    }

    async fn publish_messages(&mut self, messages: &[StoredMessage]) {
        let now = Instant::now();
        for message in messages {
            let envelope = Envelope::Message {
                origin: self.args.node.clone(),
                message: WireMessage::from(message),
            };
            let mut participants = vec![message.recipient_key()];
            if message.sender != message.recipient {
                participants.push(message.sender_key());
            }
            for user in participants {
                self.publish(self.user_subject(&user), &envelope).await;
                // Remembered for a while: if the link turns out to have been down, these
                // users' nodes are told to sync once it is back.
                self.recent.insert(user, now);
            }
        }
    }

    /// After a reconnect, and whenever another node (re)joins: every user this node
    /// published for lately (perhaps into a dead link, or while that node was away) is told,
    /// on whatever node holds them, to sync.
    async fn resync_recent(&mut self) {
        let users: Vec<UserKey> = self.recent.keys().cloned().collect();
        let envelope = Envelope::Resync {
            origin: self.args.node.clone(),
        };
        for user in &users {
            self.publish(self.user_subject(user), &envelope).await;
        }
        if !users.is_empty() {
            tracing::info!(
                users = users.len(),
                "asked the nodes of recently messaged users to resync"
            );
        }
    }

    async fn publish_typing(&self, from: UserKey, to: String) {
        let subject = self.user_subject(&from.peer(to.clone()));
        let envelope = Envelope::Typing {
            origin: self.args.node.clone(),
            tenant: from.tenant.clone(),
            from: from.user.clone(),
            to,
        };
        self.publish(subject, &envelope).await;
    }

    async fn publish_presence(&self, envelope: &Envelope) {
        let subject = format!("{}.presence", self.args.config.subject_prefix);
        self.publish(subject, envelope).await;
    }

    async fn local_presence(&mut self, user: UserKey, online: bool) {
        let changed = if online {
            self.local.insert(user.clone())
        } else {
            self.local.remove(&user)
        };
        if !changed {
            return;
        }
        self.version += 1;
        let envelope = Envelope::Presence {
            node: self.args.node.clone(),
            incarnation: self.incarnation,
            version: self.version,
            tenant: user.tenant.clone(),
            user: user.user.clone(),
            online,
        };
        self.publish_presence(&envelope).await;
    }

    /// Publishes this node's full list (in chunks), and asks for everyone's when `hello`.
    async fn announce(&mut self, hello: bool) {
        if hello {
            self.last_hello = Some(Instant::now());
            let node = self.args.node.clone();
            self.publish_presence(&Envelope::Hello { node }).await;
        }
        self.publish_snapshot().await;
    }

    async fn publish_snapshot(&self) {
        let users: Vec<(String, String)> = self
            .local
            .iter()
            .map(|k| (k.tenant.clone(), k.user.clone()))
            .collect();
        let mut chunks: Vec<&[(String, String)]> = users.chunks(SNAPSHOT_CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for (i, chunk) in chunks.into_iter().enumerate() {
            let envelope = Envelope::Snapshot {
                node: self.args.node.clone(),
                incarnation: self.incarnation,
                version: self.version,
                first: i == 0,
                users: chunk.to_vec(),
            };
            self.publish_presence(&envelope).await;
        }
    }

    /// Asks every node for its list, at most once per [`HELLO_SPACING`].
    async fn hello(&mut self) {
        if self
            .last_hello
            .is_some_and(|at| at.elapsed() < HELLO_SPACING)
        {
            return;
        }
        self.announce(true).await;
    }

    async fn presence(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::Presence {
                node,
                incarnation,
                version,
                tenant,
                user,
                online,
            } if node != self.args.node => {
                let missed = self.heard(&node, incarnation, version, false);
                let key = UserKey::new(tenant, user);
                if online {
                    self.peer_adds(&node, key);
                } else {
                    self.peer_removes(&node, &key);
                }
                if missed {
                    self.hello().await;
                }
            }
            Envelope::Heartbeat {
                node,
                incarnation,
                version,
            } if node != self.args.node => {
                let missed = self.heard(&node, incarnation, version, true);
                if missed {
                    self.hello().await;
                }
            }
            Envelope::Snapshot {
                node,
                incarnation,
                version,
                first,
                users,
            } if node != self.args.node => {
                self.heard(&node, incarnation, version, true);
                if first {
                    let old: Vec<UserKey> = self
                        .peers
                        .get(&node)
                        .map(|p| p.users.iter().cloned().collect())
                        .unwrap_or_default();
                    for key in &old {
                        self.peer_removes(&node, key);
                    }
                }
                for (tenant, user) in users {
                    self.peer_adds(&node, UserKey::new(tenant, user));
                }
                if let Some(peer) = self.peers.get_mut(&node) {
                    peer.version = peer.version.max(version);
                }
            }
            Envelope::Hello { node } if node != self.args.node => {
                // A newcomer (or a node that lost track) needs our list; we may need theirs;
                // and it may have missed what we published lately.
                let known = self.peers.contains_key(&node);
                self.publish_snapshot().await;
                self.resync_recent().await;
                if !known {
                    self.peers.entry(node).or_insert_with(|| Peer {
                        incarnation: 0,
                        version: 0,
                        last_seen: Instant::now(),
                        users: HashSet::new(),
                    });
                }
            }
            Envelope::Bye { node } if node != self.args.node => self.forget(&node),
            _ => {}
        }
    }

    /// Records that `node` spoke with `version`; returns whether changes were missed.
    fn heard(&mut self, node: &str, incarnation: u64, version: u64, complete: bool) -> bool {
        if self
            .peers
            .get(node)
            .is_some_and(|p| p.incarnation != incarnation && p.incarnation != 0)
        {
            // The node's link restarted and numbers from 0 again: what it said before
            // no longer stands.
            self.forget(node);
        }
        let peer = self.peers.entry(node.to_owned()).or_insert_with(|| Peer {
            incarnation,
            version: 0,
            last_seen: Instant::now(),
            users: HashSet::new(),
        });
        if peer.incarnation == 0 {
            peer.incarnation = incarnation;
        }
        peer.last_seen = Instant::now();
        // A delta must be the next number; a heartbeat or snapshot states the current one.
        let expected = if complete {
            peer.version
        } else {
            peer.version + 1
        };
        let missed = version > expected;
        if !complete || version >= peer.version {
            peer.version = peer.version.max(version);
        }
        missed
    }

    fn peer_adds(&mut self, node: &str, key: UserKey) {
        let Some(peer) = self.peers.get_mut(node) else {
            return;
        };
        if peer.users.insert(key.clone()) {
            let count = self.remote.entry(key.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                let _ = self.args.router.cast(RouterMsg::RemotePresence {
                    user: key,
                    online: true,
                });
            }
        }
    }

    fn peer_removes(&mut self, node: &str, key: &UserKey) {
        let Some(peer) = self.peers.get_mut(node) else {
            return;
        };
        if peer.users.remove(key)
            && let Some(count) = self.remote.get_mut(key)
        {
            *count -= 1;
            if *count == 0 {
                self.remote.remove(key);
                let _ = self.args.router.cast(RouterMsg::RemotePresence {
                    user: key.clone(),
                    online: false,
                });
            }
        }
    }

    /// A node left or went silent: its users no longer count.
    fn forget(&mut self, node: &str) {
        let users: Vec<UserKey> = self
            .peers
            .get(node)
            .map(|p| p.users.iter().cloned().collect())
            .unwrap_or_default();
        for key in &users {
            self.peer_removes(node, key);
        }
        self.peers.remove(node);
        tracing::info!(%node, users = users.len(), "cluster node gone");
    }

    async fn tick(&mut self) {
        // A link that stayed up this long (NATS pings every third of the TTL, so a dead link
        // shows within two pings) delivered what was published before.
        let window = self.ttl() * 3;
        self.recent.retain(|_, at| at.elapsed() < window);
        let heartbeat = Envelope::Heartbeat {
            node: self.args.node.clone(),
            incarnation: self.incarnation,
            version: self.version,
        };
        self.publish_presence(&heartbeat).await;
        let ttl = self.ttl();
        let silent: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.last_seen.elapsed() > ttl)
            .map(|(n, _)| n.clone())
            .collect();
        for node in silent {
            self.forget(&node);
        }
    }
}

/// Hands an envelope from `user`'s subject to the Router, unless this node sent it.
fn forward(router: &ActorSlot<RouterMsg>, node: &str, user: &UserKey, envelope: Envelope) {
    match envelope {
        Envelope::Message { origin, message } if origin != node => {
            let _ = router.cast(RouterMsg::RemoteDeliver {
                user: user.clone(),
                message: message.into(),
            });
        }
        Envelope::Typing {
            origin,
            tenant,
            from,
            to,
        } if origin != node => {
            let _ = router.cast(RouterMsg::RemoteTyping {
                from: UserKey::new(tenant, from),
                to,
            });
        }
        Envelope::Resync { origin } if origin != node => {
            let _ = router.cast(RouterMsg::SyncHint(vec![user.clone()]));
        }
        _ => {}
    }
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
    let on_reconnect = std::sync::Arc::new(on_reconnect);
    let servers: Vec<async_nats::ServerAddr> = config
        .nats_url
        .split(',')
        .filter_map(|u| u.trim().parse().ok())
        .collect();
    let was_connected = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    async_nats::ConnectOptions::new()
        .name(format!("peroxo-{node}"))
        .retry_on_initial_connect()
        // A dead link shows within two pings; `recent` deliveries cover that window.
        .ping_interval(Duration::from_secs(config.presence_ttl_secs) / 3)
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let base = Duration::from_millis(50).saturating_mul(1 << attempts.min(7) as u32);
            let capped = base.min(Duration::from_secs(5));
            // Jitter: up to a quarter less, so nodes do not reconnect in lockstep.
            let jitter = (nuid_jitter() % 250) as u32;
            capped.mul_f64(1.0 - f64::from(jitter) / 1000.0)
        })
        .event_callback(move |event| {
            let on_reconnect = std::sync::Arc::clone(&on_reconnect);
            let was_connected = std::sync::Arc::clone(&was_connected);
            async move {
                match event {
                    async_nats::Event::Connected => {
                        if was_connected.swap(true, std::sync::atomic::Ordering::Relaxed) {
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

/// A number telling this Cluster incarnation from earlier ones of the same node.
fn incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos());
    u64::try_from(nanos % u128::from(u64::MAX))
        .unwrap_or(1)
        .max(1)
}

/// A cheap pseudo-random number for jitter (the low bits of the clock).
fn nuid_jitter() -> u64 {
    u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    )
}
