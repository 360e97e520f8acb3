//! Cluster: this node's link to the other gateway nodes, through NATS.
//!
//! The only module that knows NATS and the format nodes exchange (JSON envelopes).
//!
//! - **Delivery.** Every user with a session on this node has an *interest subject*,
//!   `<prefix>.user.<tenant>.<user>`, which this node subscribes to while it holds one of
//!   that user's sessions. After a commit, the Router delivers locally and publishes the
//!   message on the recipient's and the sender's subjects; NATS hands it to exactly the
//!   nodes that hold those users. A session's subscription is confirmed by the NATS server
//!   (a round trip on this node's echo subject) before its `welcome` is built, so no
//!   message committed after `welcome` can miss the node.
//! - **Presence.** Each node publishes on `<prefix>.presence` when a user's first local
//!   session opens or last one closes (numbered per node), a heartbeat every third of
//!   `cluster.presence_ttl_secs`, and its full list of online users when asked (`hello`). A
//!   node not heard from for the TTL stops counting. A gap in a node's numbering, a new node
//!   or a reconnect triggers a `hello`, and every node answers with its list.
//! - **Restrictions.** A ban or a revocation made through the server API of one node is
//!   published on the presence subject too, and every other node updates its
//!   [`Restrictions`] at once (a node that misses it learns it at its next reload).
//! - **Outages.** async-nats reconnects with exponential backoff; subscriptions come back
//!   by themselves. After a reconnect this node asks for everyone's presence again and the
//!   Router tells every local session to `sync` (it may have missed deliveries).
//!
//! The Router hears about remote users going online and offline, and about deliveries and
//! typing for its users, through [`RouterMsg`]s. The Session asks for interest when it opens,
//! SessionSupervisor withdraws it when the connection closes, RootSupervisor tells it to
//! forget every local user when SessionSupervisor fails, and the server's shutdown asks it to
//! `Leave`.
//!
//! # Layout
//!
//! - this file: the Cluster actor, which owns the state below and does every publish;
//! - `envelope`: the JSON envelopes nodes exchange (the wire format);
//! - `link`: the NATS connection, the subject names, the reconnect delay and the echo;
//! - `presence`: presence bookkeeping (this node's users, the other nodes' users) as plain
//!   state, with its unit tests;
//! - `interest`: the per-user subscriptions and the tasks that forward them to the Router.

mod envelope;
mod interest;
mod link;
mod presence;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ActorSlot;
use super::router::{RouterMsg, UserFrame};
use super::session_supervisor::SessionSupervisorMsg;
use crate::connection::Droppable;
use crate::restrictions::Restrictions;
use interest::Interests;
use link::Subjects;
use peroxo_config::ClusterConfig;
use peroxo_protocol::domain::{StoredMessage, UserKey};
use peroxo_protocol::restriction::Restriction;
use presence::{Heard, LocalUsers, Peers, RemoteChange, Stamp};

pub use envelope::{Envelope, WireMessage};
pub use link::{check_config, connect};

/// The least time between two `hello`s from this node.
const HELLO_SPACING: Duration = Duration::from_secs(1);

/// What the Cluster is asked to do, by the other actors and by its own tasks.
pub enum ClusterMsg {
    /// A session of `user` is about to open here: make sure this node receives the user's
    /// deliveries; answered once the NATS server has the subscription (or NATS is away).
    /// Answers whether the interest was counted (to be withdrawn with `Disinterest`).
    Interest(UserKey, RpcReplyPort<bool>),
    /// A session of `user` has closed here.
    Disinterest(UserKey),
    /// Committed messages to hand to the other nodes holding their participants.
    PublishMessages(Vec<StoredMessage>),
    /// Protocol-2 frames, each for its user's sessions on other nodes.
    PublishFrames(Vec<UserFrame>),
    /// A typing indicator for `to`'s sessions on other nodes.
    PublishTyping { from: UserKey, to: String },
    /// Closes `user`'s sessions on other nodes (the server API's disconnect).
    PublishDisconnect {
        user: UserKey,
        code: u16,
        reason: Option<String>,
    },
    /// Tells every other node of a change of `user`'s restriction (the server API's ban or
    /// revocation).
    PublishRestriction {
        user: UserKey,
        restriction: Restriction,
    },
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
    /// Makes this actor panic, to exercise its recovery.
    #[cfg(feature = "test-hooks")]
    Crash,
}

/// What a Cluster starts from; RootSupervisor builds it again for each successor.
pub struct ClusterArgs {
    pub config: ClusterConfig,
    /// This node's name.
    pub node: String,
    pub client: async_nats::Client,
    pub router: ActorSlot<RouterMsg>,
    /// Where live connections are listed, to restore interests after a restart.
    pub sessions: ActorSlot<SessionSupervisorMsg>,
    /// The node's restrictions of users, which other nodes' changes update.
    pub restrictions: Arc<Restrictions>,
}

/// What a Cluster changes as it runs; all of it can be rebuilt by a successor.
pub struct ClusterState {
    args: ClusterArgs,
    subjects: Subjects,
    /// The subject this node answers on, so it can check the server has a subscription.
    echo_subject: String,
    /// Local sessions per interested user, and the task forwarding the user's subject.
    interests: Interests,
    /// Users online on this node, as announced, with this incarnation's numbering (a
    /// restart starts again from 0 under a new incarnation).
    local: LocalUsers,
    /// What this node knows of the other nodes and their users.
    peers: Peers,
    presence_task: Option<JoinHandle<()>>,
    echo_task: Option<JoinHandle<()>>,
    /// Users this node published deliveries for lately, and when.
    recent: HashMap<UserKey, Instant>,
    last_hello: Option<Instant>,
}

impl Drop for ClusterState {
    /// A failed Cluster leaves no task behind (its successor subscribes again); the
    /// interests' forwarding tasks go with `interests`.
    fn drop(&mut self) {
        for task in [self.presence_task.take(), self.echo_task.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// The Cluster actor; everything it holds is in [`ClusterState`].
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
        let subjects = Subjects::new(&args.config.subject_prefix);
        Ok(ClusterState {
            echo_subject: subjects.echo(&args.node),
            subjects,
            args,
            interests: Interests::default(),
            local: LocalUsers::new(presence::new_incarnation()),
            peers: Peers::default(),
            presence_task: None,
            echo_task: None,
            recent: HashMap::new(),
            last_hello: None,
        })
    }

    /// Subscribing is I/O that may fail, so it happens here rather than in `pre_start`.
    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.subscribe_presence(&myself).await;
        state.subscribe_echo().await;
        // A predecessor's view of the other nodes is stale: start from none.
        let _ = state.args.router.cast(RouterMsg::RemoteReset);
        state.restore_live_sessions().await;
        state.send_hello().await;
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
            ClusterMsg::Interest(user, reply) => state.interest(user, reply).await,
            ClusterMsg::Disinterest(user) => state.disinterest(&user),
            ClusterMsg::PublishMessages(messages) => state.publish_messages(&messages).await,
            ClusterMsg::PublishFrames(frames) => state.publish_frames(frames).await,
            ClusterMsg::PublishTyping { from, to } => state.publish_typing(from, to).await,
            ClusterMsg::PublishDisconnect { user, code, reason } => {
                let envelope = Envelope::Disconnect {
                    origin: state.args.node.clone(),
                    code,
                    reason,
                };
                state.publish(state.subjects.user(&user), &envelope).await;
            }
            ClusterMsg::PublishRestriction { user, restriction } => {
                let envelope = Envelope::Restriction {
                    origin: state.args.node.clone(),
                    tenant: user.tenant.clone(),
                    user: user.user.clone(),
                    banned_until: restriction.banned_until,
                    ban_reason: restriction.ban_reason,
                    tokens_before: restriction.tokens_before,
                };
                state.publish_presence(&envelope).await;
            }
            ClusterMsg::LocalPresence { user, online } => state.local_presence(user, online).await,
            ClusterMsg::RemoteUsers(reply) => state.remote_users(reply),
            ClusterMsg::Presence(envelope) => state.presence(envelope).await,
            ClusterMsg::Tick => state.tick(&myself).await,
            ClusterMsg::Reconnected => state.reconnected().await,
            ClusterMsg::ForgetLocal => state.forget_local().await,
            ClusterMsg::Leave(reply) => state.leave(reply).await,
            #[cfg(feature = "test-hooks")]
            ClusterMsg::Crash => panic!("cluster crash requested by a test hook"),
        }
        Ok(())
    }

    // No `post_stop`: the state's `Drop` ends every task, and it runs after a failure too,
    // when `post_stop` would not.
}

/// Start-up: the subscriptions every Cluster holds, and what a predecessor left.
impl ClusterState {
    /// Forwards every envelope on the presence subject to this actor.
    async fn subscribe_presence(&mut self, myself: &ActorRef<ClusterMsg>) {
        match self.args.client.subscribe(self.subjects.presence()).await {
            Ok(mut subscriber) => {
                let myself = myself.clone();
                self.presence_task = Some(tokio::spawn(async move {
                    while let Some(message) = subscriber.next().await {
                        if let Some(envelope) = Envelope::decode(&message.payload) {
                            let _ = myself.cast(ClusterMsg::Presence(envelope));
                        }
                    }
                }));
            }
            Err(error) => tracing::error!(%error, "cannot subscribe to cluster presence"),
        }
    }

    /// The echo answers this node's own checks that the server holds a subscription.
    async fn subscribe_echo(&mut self) {
        match self.args.client.subscribe(self.echo_subject.clone()).await {
            Ok(subscriber) => {
                self.echo_task = Some(link::serve_echo(self.args.client.clone(), subscriber));
            }
            Err(error) => tracing::error!(%error, "cannot subscribe the cluster echo"),
        }
    }

    /// After a restart: the live connections' interests and presence, again.
    async fn restore_live_sessions(&mut self) {
        let Some(sessions) = self.args.sessions.get() else {
            return;
        };
        let Ok(registrations) =
            ractor::call_t!(sessions, SessionSupervisorMsg::Registrations, 10_000)
        else {
            return;
        };
        for registration in registrations {
            self.add_interest(registration.key.clone()).await;
            self.local.restore(registration.key);
        }
    }
}

/// Delivery: interests and what is published on users' subjects.
impl ClusterState {
    async fn interest(&mut self, user: UserKey, reply: RpcReplyPort<bool>) {
        let counted = self.add_interest(user).await;
        let _ = reply.send(counted);
    }

    fn disinterest(&mut self, user: &UserKey) {
        self.interests.remove_session(user);
    }

    /// Counts a session of `user`, subscribing to the user's subject with the first one;
    /// returns whether it was counted.
    async fn add_interest(&mut self, user: UserKey) -> bool {
        if self.interests.add_session(&user) {
            return true;
        }
        let subscriber = match self.args.client.subscribe(self.subjects.user(&user)).await {
            Ok(subscriber) => subscriber,
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe a user's subject");
                return false;
            }
        };
        let task = interest::spawn_forwarder(
            subscriber,
            self.args.router.clone(),
            self.args.node.clone(),
            user.clone(),
        );
        self.interests.subscribed(user, task);
        link::confirm_subscriptions(&self.args.client, &self.echo_subject).await;
        true
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
                self.publish(self.subjects.user(&user), &envelope).await;
                // Remembered for a while: if the link turns out to have been down, these
                // users' nodes are told to sync once it is back.
                self.recent.insert(user, now);
            }
        }
    }

    async fn publish_frames(&mut self, frames: Vec<UserFrame>) {
        let now = Instant::now();
        for frame in frames {
            let durable = frame.droppable == Droppable::No;
            let envelope = Envelope::Frame {
                origin: self.args.node.clone(),
                text: frame.text.as_str().to_owned(),
                durable,
                min_protocol: frame.protocols.min,
                max_protocol: (frame.protocols.max != u32::MAX).then_some(frame.protocols.max),
            };
            self.publish(self.subjects.user(&frame.user), &envelope)
                .await;
            if durable {
                self.recent.insert(frame.user, now);
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
            self.publish(self.subjects.user(user), &envelope).await;
        }
        if !users.is_empty() {
            tracing::info!(
                users = users.len(),
                "asked the nodes of recently messaged users to resync"
            );
        }
    }

    async fn publish_typing(&self, from: UserKey, to: String) {
        let subject = self.subjects.user(&from.peer(to.clone()));
        let envelope = Envelope::Typing {
            origin: self.args.node.clone(),
            tenant: from.tenant.clone(),
            from: from.user.clone(),
            to,
        };
        self.publish(subject, &envelope).await;
    }

    /// Publishes `envelope`, unless NATS is away: then it is dropped (every message is in
    /// storage, and the sync_hint after the reconnect covers it) rather than queued until
    /// the client's buffer fills and blocks this actor.
    async fn publish(&self, subject: String, envelope: &Envelope) {
        if link::is_lost(&self.args.client) {
            return;
        }
        if let Err(error) = self
            .args
            .client
            .publish(subject, envelope.encode().into())
            .await
        {
            tracing::debug!(%error, "cluster publish failed");
        }
    }
}

/// This node's presence, as the other nodes hear it.
impl ClusterState {
    async fn local_presence(&mut self, user: UserKey, online: bool) {
        let Some(stamp) = self.local.set(user.clone(), online) else {
            return;
        };
        let envelope = Envelope::Presence {
            node: self.args.node.clone(),
            incarnation: stamp.incarnation,
            version: stamp.version,
            tenant: user.tenant.clone(),
            user: user.user.clone(),
            online,
        };
        self.publish_presence(&envelope).await;
    }

    /// Drops every local interest and tells the other nodes none of these users is here.
    async fn forget_local(&mut self) {
        self.interests.clear();
        self.local.clear();
        self.publish_snapshot().await;
    }

    /// Asks every node for its list (`hello`), and publishes this node's.
    async fn send_hello(&mut self) {
        self.last_hello = Some(Instant::now());
        let node = self.args.node.clone();
        self.publish_presence(&Envelope::Hello { node }).await;
        self.publish_snapshot().await;
    }

    /// [`Self::send_hello`], unless this node sent one less than [`HELLO_SPACING`] ago.
    async fn send_hello_unless_recent(&mut self) {
        if self
            .last_hello
            .is_some_and(|at| at.elapsed() < HELLO_SPACING)
        {
            return;
        }
        self.send_hello().await;
    }

    /// Publishes this node's full list of online users (in chunks).
    async fn publish_snapshot(&self) {
        let Stamp {
            incarnation,
            version,
        } = self.local.stamp();
        let users = self.local.pairs();
        for envelope in Envelope::snapshots(&self.args.node, incarnation, version, &users) {
            self.publish_presence(&envelope).await;
        }
    }

    async fn publish_presence(&self, envelope: &Envelope) {
        self.publish(self.subjects.presence(), envelope).await;
    }

    /// Sends a heartbeat, forgets nodes silent for the TTL and recent deliveries old enough
    /// to have surely arrived, and schedules the next tick.
    async fn tick(&mut self, myself: &ActorRef<ClusterMsg>) {
        // A link that stayed up this long (NATS pings every third of the TTL, so a dead link
        // shows within two pings) delivered what was published before.
        let window = self.ttl() * 3;
        self.recent.retain(|_, at| at.elapsed() < window);
        let Stamp {
            incarnation,
            version,
        } = self.local.stamp();
        let heartbeat = Envelope::Heartbeat {
            node: self.args.node.clone(),
            incarnation,
            version,
        };
        self.publish_presence(&heartbeat).await;
        let changes = self.peers.expire(Instant::now(), self.ttl());
        self.tell_router(changes);
        myself.send_after(self.heartbeat_interval(), || ClusterMsg::Tick);
    }

    async fn reconnected(&mut self) {
        tracing::info!(node = %self.args.node, "NATS reconnected; resynchronising presence and sessions");
        self.last_hello = None;
        self.send_hello().await;
        self.resync_recent().await;
        let _ = self.args.router.cast(RouterMsg::SyncHintAll);
    }

    /// Tells the other nodes this one is leaving, and makes sure the server has it.
    async fn leave(&mut self, reply: RpcReplyPort<()>) {
        let node = self.args.node.clone();
        self.publish_presence(&Envelope::Bye { node }).await;
        let _ = self.args.client.flush().await;
        let _ = reply.send(());
    }

    fn heartbeat_interval(&self) -> Duration {
        self.args.config.presence_ttl_secs / 3
    }

    fn ttl(&self) -> Duration {
        self.args.config.presence_ttl_secs
    }
}

/// The other nodes' presence, as this node hears it.
impl ClusterState {
    fn remote_users(&self, reply: RpcReplyPort<Vec<UserKey>>) {
        let _ = reply.send(self.peers.remote_users());
    }

    /// An envelope from the presence subject; this node's own are ignored.
    async fn presence(&mut self, envelope: Envelope) {
        let now = Instant::now();
        match envelope {
            Envelope::Presence {
                node,
                incarnation,
                version,
                tenant,
                user,
                online,
            } if node != self.args.node => {
                let stamp = Stamp {
                    incarnation,
                    version,
                };
                let user = UserKey::new(tenant, user);
                let heard = self.peers.change(&node, stamp, user, online, now);
                self.act_on(heard).await;
            }
            Envelope::Heartbeat {
                node,
                incarnation,
                version,
            } if node != self.args.node => {
                let stamp = Stamp {
                    incarnation,
                    version,
                };
                let heard = self.peers.heartbeat(&node, stamp, now);
                self.act_on(heard).await;
            }
            Envelope::Snapshot {
                node,
                incarnation,
                version,
                first,
                users,
            } if node != self.args.node => {
                let stamp = Stamp {
                    incarnation,
                    version,
                };
                let users = users.into_iter().map(|(t, u)| UserKey::new(t, u));
                let changes = self.peers.snapshot(&node, stamp, first, users, now);
                self.tell_router(changes);
            }
            Envelope::Hello { node } if node != self.args.node => self.answer_hello(&node).await,
            Envelope::Restriction {
                origin,
                tenant,
                user,
                banned_until,
                ban_reason,
                tokens_before,
            } if origin != self.args.node => {
                let restriction = Restriction {
                    banned_until,
                    ban_reason,
                    tokens_before,
                };
                self.args
                    .restrictions
                    .set(UserKey::new(tenant, user), restriction);
            }
            Envelope::Bye { node } if node != self.args.node => {
                let changes = self.peers.forget(&node);
                self.tell_router(changes);
            }
            _ => {}
        }
    }

    /// A newcomer (or a node that lost track) needs our list; we may need theirs; and it
    /// may have missed what we published lately.
    async fn answer_hello(&mut self, node: &str) {
        self.publish_snapshot().await;
        self.resync_recent().await;
        self.peers.hello(node, Instant::now());
    }

    /// Passes on presence changes, and asks for everyone's list after a gap.
    async fn act_on(&mut self, heard: Heard) {
        self.tell_router(heard.changes);
        if heard.missed {
            self.send_hello_unless_recent().await;
        }
    }

    fn tell_router(&self, changes: Vec<RemoteChange>) {
        for RemoteChange { user, online } in changes {
            let _ = self
                .args
                .router
                .cast(RouterMsg::RemotePresence { user, online });
        }
    }
}
