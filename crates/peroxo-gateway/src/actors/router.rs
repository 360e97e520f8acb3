//! The Router: which sessions are live for each (tenant, user), and who watches whom.
//!
//! Persistence hands it committed messages to deliver; sessions hand it presence queries and
//! typing events. It writes straight into each session's bounded [`Outbound`] queue, so it
//! never waits on a client and a slow client never slows it down. Replies that must stay in
//! order with events (a `presence_snapshot` before the `presence` events after it) are written
//! here for that reason.
//!
//! Its state is derived: after a restart it asks SessionSupervisor for every live session
//! before it handles anything else, and nothing is lost but deliveries in flight at the crash
//! (they are in storage; clients get them with `sync`). Which users it had announced online
//! lives outside it ([`AnnouncedOnline`]), so a restarted Router announces only the changes
//! it missed.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::ActorSlot;
use super::cluster::ClusterMsg;
use super::context::StorageLink;
use super::conversation_commands::message_frames;
use super::session_supervisor::SessionSupervisorMsg;
use crate::actors::push::PushQueue;
use crate::connection::{Droppable, Outbound};
use crate::telemetry::Metrics;
use peroxo_protocol::CloseCause;
use peroxo_protocol::domain::{SessionId, StoredMessage, UserKey};
use peroxo_protocol::event::StreamSeq;
use peroxo_protocol::{
    CONVERSATIONS_PROTOCOL_VERSION, LIFECYCLE_PROTOCOL_VERSION, MessageView, PresenceStatus, ReqId,
    ServerFrame, now_ms,
};

pub enum RouterMsg {
    /// A session is live (or registers again after its actor restarted); `registered` is
    /// answered once the session receives deliveries.
    Register {
        registration: Registration,
        registered: Option<RpcReplyPort<()>>,
    },
    /// Every connection is gone (SessionSupervisor failed): forget them all.
    ForgetAll,
    /// A connection has ended.
    Unregister(SessionId),
    /// Committed messages to hand to the live sessions of their participants.
    Deliver(Vec<Delivery>),
    /// Frames of protocol 2 and later (group messages, stream events, live receipts, group
    /// typing), each already encoded for its user: for the user's sessions here and on other
    /// nodes whose protocol the frame is for.
    DeliverFrames(Vec<UserFrame>),
    /// A protocol-2 frame from another node, for `user`'s sessions here whose protocol is
    /// in `protocols`.
    RemoteFrame {
        user: UserKey,
        text: Utf8Bytes,
        droppable: Droppable,
        protocols: Protocols,
    },
    /// Start watching `users` (of the session's tenant); answers `presence_snapshot`.
    Subscribe {
        session: SessionId,
        users: Vec<String>,
        req_id: Option<ReqId>,
    },
    /// Stop watching `users`.
    Unsubscribe {
        session: SessionId,
        users: Vec<String>,
    },
    /// Answers `online_users` for the session's tenant.
    OnlineUsers {
        session: SessionId,
        limit: u32,
        req_id: Option<ReqId>,
    },
    /// Relays a typing indicator to the live sessions of `to`.
    Typing { from: UserKey, to: String },
    /// Whether each of `users` of `tenant` is online, here or on another node (server API).
    Presence {
        tenant: String,
        users: Vec<String>,
        reply: RpcReplyPort<Vec<bool>>,
    },
    /// Closes every session of `user` on this node with `cause` (and `reason` in the close
    /// frame, when given) after what is queued to it. With `reply` (the server API asks this
    /// node), it answers how many and has the other nodes close theirs; without (another node
    /// asked), it only closes those here.
    Disconnect {
        user: UserKey,
        cause: CloseCause,
        reason: Option<String>,
        reply: Option<RpcReplyPort<usize>>,
    },
    /// A message committed elsewhere, for `user`'s sessions here.
    RemoteDeliver {
        user: UserKey,
        message: StoredMessage,
    },
    /// A typing indicator from another node, for `to`'s sessions here.
    RemoteTyping { from: UserKey, to: String },
    /// `user` came online on some other node, or is no longer online on any.
    RemotePresence { user: UserKey, online: bool },
    /// Deliveries may have been missed (the cluster link came back): every local session is
    /// told to `sync`.
    SyncHintAll,
    /// The cluster link restarted: forget what it said of other nodes (it will say it again).
    RemoteReset,
    /// These users' sessions here may have missed deliveries: tell them to `sync`.
    SyncHint(Vec<UserKey>),
    /// Panics inside `handle`, to exercise supervision.
    #[cfg(feature = "test-hooks")]
    Crash,
}

/// What the Router needs to know of a live session.
#[derive(Debug, Clone)]
pub struct Registration {
    pub key: UserKey,
    /// The connection's protocol version: protocol-2 frames go to version 2 only.
    pub protocol: u32,
    pub outbound: Outbound,
    /// Users of the same tenant this session watches for presence.
    pub watching: Vec<String>,
}

/// One frame of protocol 2 or later for one user, encoded for that user (with its seq).
#[derive(Debug, Clone)]
pub struct UserFrame {
    pub user: UserKey,
    pub text: Utf8Bytes,
    /// Durable frames (a stream entry) are never dropped; live receipts and typing may be.
    pub droppable: Droppable,
    /// The session that caused it and got an answer instead (a sender's own connection).
    pub skip: Option<SessionId>,
    /// The protocol versions of the sessions that get it.
    pub protocols: Protocols,
}

/// The protocol versions a frame is for: from `min` to `max`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    pub min: u32,
    pub max: u32,
}

impl Protocols {
    /// Every version that knows conversations (protocol 2 and later).
    pub const CONVERSATIONS: Protocols = Protocols {
        min: CONVERSATIONS_PROTOCOL_VERSION,
        max: u32::MAX,
    };
    /// Every version that knows what happens to messages (protocol 3 and later).
    pub const LIFECYCLE: Protocols = Protocols {
        min: LIFECYCLE_PROTOCOL_VERSION,
        max: u32::MAX,
    };
    /// The versions that know conversations but not what happens to messages.
    pub const CONVERSATIONS_ONLY: Protocols = Protocols {
        min: CONVERSATIONS_PROTOCOL_VERSION,
        max: LIFECYCLE_PROTOCOL_VERSION - 1,
    };

    pub fn admits(self, protocol: u32) -> bool {
        (self.min..=self.max).contains(&protocol)
    }
}

/// A committed message and the session that sent it (which gets an `ack`, not a copy).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: StoredMessage,
    /// For a group message: every member's seq but the sender's.
    pub members: Vec<StreamSeq>,
    pub origin: Option<SessionId>,
}

/// What a Router is given when it starts; it never changes.
pub struct RouterArgs {
    /// Where the live sessions are listed, for recovery after a restart.
    pub sessions: ActorSlot<SessionSupervisorMsg>,
    /// The other gateway nodes, when this node is part of a cluster.
    pub cluster: Option<ActorSlot<ClusterMsg>>,
    /// For the `last_seq` of a `sync_hint`.
    pub storage: StorageLink,
    /// The node's metrics (deliveries).
    pub metrics: Arc<Metrics>,
    /// The users this node has announced online, kept across restarts of the Router.
    pub announced: Arc<AnnouncedOnline>,
    /// Where recipients with no live session anywhere are offered for a `notify`.
    pub push: Option<PushQueue>,
}

/// The users a node has said are online here (to its watchers and to the cluster), outside
/// the Router's state: a restarted Router compares it with the sessions it recovers and
/// announces only what changed meanwhile, so watchers hear no repeated `online` and miss no
/// `offline`.
#[derive(Default)]
pub struct AnnouncedOnline(std::sync::Mutex<HashSet<UserKey>>);

impl AnnouncedOnline {
    fn set(&self, user: &UserKey, online: bool) {
        let mut users = self.0.lock().expect("announced presence poisoned");
        if online {
            users.insert(user.clone());
        } else {
            users.remove(user);
        }
    }

    fn clear(&self) {
        self.0.lock().expect("announced presence poisoned").clear();
    }

    fn snapshot(&self) -> HashSet<UserKey> {
        self.0.lock().expect("announced presence poisoned").clone()
    }
}

#[cfg_attr(test, derive(Default))]
pub struct RouterState {
    /// SessionSupervisor, asked for every live session after a restart.
    supervisor: ActorSlot<SessionSupervisorMsg>,
    cluster: Option<ActorSlot<ClusterMsg>>,
    storage: StorageLink,
    metrics: Arc<Metrics>,
    /// tenant → users online on other nodes.
    remote: HashMap<String, HashSet<String>>,
    sessions: HashMap<SessionId, Entry>,
    /// tenant → user → live sessions.
    online: HashMap<String, HashMap<String, Vec<SessionId>>>,
    /// watched user → watching sessions.
    watchers: HashMap<UserKey, HashSet<SessionId>>,
    announced: Arc<AnnouncedOnline>,
    push: Option<PushQueue>,
    /// While a restarted Router registers the sessions it recovers: presence waits for
    /// [`RouterState::settle_presence`].
    recovering: bool,
}

struct Entry {
    key: UserKey,
    protocol: u32,
    outbound: Outbound,
    watching: HashSet<String>,
}

/// How long hints after a cluster reconnect wait for storage to answer.
const SYNC_HINT_STORAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a restarted Router waits for SessionSupervisor's list of live sessions.
const RECOVERY_TIMEOUT_MS: u64 = 10_000;

pub struct Router;

impl Router {
    /// Spawns a Router linked to `supervisor`.
    pub async fn spawn(
        args: RouterArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<ActorRef<RouterMsg>, ractor::SpawnErr> {
        let (actor, _) = Actor::spawn_linked(None, Router, args, supervisor).await?;
        Ok(actor)
    }
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RouterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RouterState {
            supervisor: args.sessions,
            cluster: args.cluster,
            storage: args.storage,
            metrics: args.metrics,
            remote: HashMap::new(),
            sessions: HashMap::new(),
            online: HashMap::new(),
            watchers: HashMap::new(),
            announced: args.announced,
            push: args.push,
            recovering: true,
        })
    }

    /// After a restart, registers every live session before handling any message, so no
    /// request finds its session unknown. (At first start there is no SessionSupervisor yet.)
    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.recover_remote_users().await;
        state.recover_sessions().await;
        state.settle_presence();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RouterMsg::Register {
                registration,
                registered,
            } => state.register_and_confirm(registration, registered),
            RouterMsg::Unregister(session) => state.unregister(session),
            RouterMsg::ForgetAll => state.forget_all(),
            RouterMsg::Deliver(deliveries) => state.deliver(&deliveries),
            RouterMsg::DeliverFrames(frames) => state.deliver_frames(frames),
            RouterMsg::RemoteFrame {
                user,
                text,
                droppable,
                protocols,
            } => state.send_frame(&user, &text, droppable, None, protocols),
            RouterMsg::Subscribe {
                session,
                users,
                req_id,
            } => state.subscribe(session, users, req_id.as_ref()),
            RouterMsg::Unsubscribe { session, users } => state.unsubscribe(session, &users),
            RouterMsg::OnlineUsers {
                session,
                limit,
                req_id,
            } => state.online_users(session, limit, req_id.as_ref()),
            RouterMsg::Typing { from, to } => state.local_typing(from, to),
            RouterMsg::Presence {
                tenant,
                users,
                reply,
            } => {
                let online = users
                    .into_iter()
                    .map(|user| state.is_online(&UserKey::new(tenant.clone(), user)))
                    .collect();
                let _ = reply.send(online);
            }
            RouterMsg::Disconnect {
                user,
                cause,
                reason,
                reply,
            } => {
                let closed = state.disconnect(&user, cause, reason.as_deref());
                if let Some(reply) = reply {
                    let _ = reply.send(closed);
                    if let Some(cluster) = &state.cluster {
                        let _ = cluster.cast(ClusterMsg::PublishDisconnect {
                            user,
                            code: cause.code(),
                            reason,
                        });
                    }
                }
            }
            RouterMsg::RemoteDeliver { user, message } => state.send_message(&user, &message, None),
            RouterMsg::RemoteTyping { from, to } => state.typing(&from, &to),
            RouterMsg::RemotePresence { user, online } => state.remote_presence(user, online),
            RouterMsg::SyncHintAll => state.sync_hint_all(),
            RouterMsg::SyncHint(users) => state.sync_hint(users),
            RouterMsg::RemoteReset => state.remote_reset(),
            #[cfg(feature = "test-hooks")]
            RouterMsg::Crash => panic!("router crash requested by a test hook"),
        }
        Ok(())
    }
}

impl RouterState {
    /// Learns from the Cluster which users are online on other nodes (after a restart).
    async fn recover_remote_users(&mut self) {
        let Some(cluster) = self.cluster.as_ref().and_then(ActorSlot::get) else {
            return;
        };
        if let Ok(users) = ractor::call_t!(cluster, ClusterMsg::RemoteUsers, RECOVERY_TIMEOUT_MS) {
            for user in users {
                self.remote
                    .entry(user.tenant.clone())
                    .or_default()
                    .insert(user.user.clone());
            }
        }
    }

    /// Registers every live session SessionSupervisor lists (after a restart).
    async fn recover_sessions(&mut self) {
        let Some(sessions) = self.supervisor.get() else {
            return;
        };
        match ractor::call_t!(
            sessions,
            SessionSupervisorMsg::Registrations,
            RECOVERY_TIMEOUT_MS
        ) {
            Ok(registrations) => {
                tracing::info!(
                    sessions = registrations.len(),
                    "router recovered live sessions"
                );
                for registration in registrations {
                    self.register(registration);
                }
            }
            Err(error) => tracing::error!(%error, "router could not recover live sessions"),
        }
    }

    /// Ends recovery: announces the users that came online or went offline while the Router
    /// was down, and nothing for those whose status did not change.
    fn settle_presence(&mut self) {
        self.recovering = false;
        let before = self.announced.snapshot();
        let now: HashSet<UserKey> = self
            .online
            .iter()
            .flat_map(|(tenant, users)| {
                users
                    .keys()
                    .map(|u| UserKey::new(tenant.clone(), u.clone()))
            })
            .collect();
        for user in before.difference(&now) {
            self.local_presence(user, false);
        }
        for user in now.difference(&before) {
            self.local_presence(user, true);
        }
    }

    /// Registers a session, then answers `registered` (the session is reachable from now on).
    fn register_and_confirm(
        &mut self,
        registration: Registration,
        registered: Option<RpcReplyPort<()>>,
    ) {
        self.register(registration);
        if let Some(registered) = registered {
            let _ = registered.send(());
        }
    }

    /// Every connection is gone: forget them all (what other nodes said stays). The Cluster
    /// tells the other nodes (`ForgetLocal`), and no watcher is left here.
    fn forget_all(&mut self) {
        self.sessions.clear();
        self.online.clear();
        self.watchers.clear();
        self.announced.clear();
    }

    /// A typing indicator from a local session: relayed here, and to the other nodes.
    fn local_typing(&self, from: UserKey, to: String) {
        self.typing(&from, &to);
        if let Some(cluster) = &self.cluster {
            let _ = cluster.cast(ClusterMsg::PublishTyping { from, to });
        }
    }

    /// Tells every local session to `sync`.
    fn sync_hint_all(&self) {
        let users = self.sessions.values().map(|e| e.key.clone()).collect();
        self.sync_hint(users);
    }

    /// The cluster link restarted: every user it said was online elsewhere goes offline
    /// until it says so again.
    fn remote_reset(&mut self) {
        let remote: Vec<UserKey> = self
            .remote
            .iter()
            .flat_map(|(t, users)| users.iter().map(|u| UserKey::new(t.clone(), u.clone())))
            .collect();
        for user in remote {
            self.remote_presence(user, false);
        }
    }

    fn register(&mut self, registration: Registration) {
        let session = registration.outbound.session_id();
        let Registration {
            key,
            protocol,
            outbound,
            watching,
        } = registration;
        outbound.send_welcome_once();
        if let Some(entry) = self.sessions.get_mut(&session) {
            // The session's actor restarted: same connection, same queue.
            entry.outbound = outbound;
        } else {
            let sessions = self
                .online
                .entry(key.tenant.clone())
                .or_default()
                .entry(key.user.clone())
                .or_default();
            sessions.push(session);
            let came_online = sessions.len() == 1;
            self.sessions.insert(
                session,
                Entry {
                    key: key.clone(),
                    protocol,
                    outbound,
                    watching: HashSet::new(),
                },
            );
            if came_online && !self.recovering {
                self.local_presence(&key, true);
            }
        }
        self.watch(session, &key.tenant, watching);
    }

    fn unregister(&mut self, session: SessionId) {
        let Some(entry) = self.sessions.remove(&session) else {
            return;
        };
        for user in &entry.watching {
            self.unwatch(session, &entry.key.peer(user.clone()));
        }
        let mut went_offline = false;
        if let Some(users) = self.online.get_mut(&entry.key.tenant) {
            if let Some(sessions) = users.get_mut(&entry.key.user) {
                sessions.retain(|s| *s != session);
                if sessions.is_empty() {
                    users.remove(&entry.key.user);
                    went_offline = true;
                }
            }
            if users.is_empty() {
                self.online.remove(&entry.key.tenant);
            }
        }
        if went_offline && !self.recovering {
            self.local_presence(&entry.key, false);
        }
    }

    /// A user's first local session opened (or last one closed): tell the cluster, and the
    /// watchers when that changes whether the user is online anywhere.
    fn local_presence(&self, key: &UserKey, online: bool) {
        self.announced.set(key, online);
        if let Some(cluster) = &self.cluster {
            let _ = cluster.cast(ClusterMsg::LocalPresence {
                user: key.clone(),
                online,
            });
        }
        if !self.is_remote(key) {
            self.announce(key, status(online));
        }
    }

    fn remote_presence(&mut self, key: UserKey, online: bool) {
        let changed = if online {
            self.remote
                .entry(key.tenant.clone())
                .or_default()
                .insert(key.user.clone())
        } else {
            let users = self.remote.get_mut(&key.tenant);
            let removed = users.is_some_and(|u| u.remove(&key.user));
            if self.remote.get(&key.tenant).is_some_and(HashSet::is_empty) {
                self.remote.remove(&key.tenant);
            }
            removed
        };
        if changed && !self.is_local(&key) {
            self.announce(&key, status(online));
        }
    }

    fn unwatch(&mut self, session: SessionId, watched: &UserKey) {
        if let Some(watchers) = self.watchers.get_mut(watched) {
            watchers.remove(&session);
            if watchers.is_empty() {
                self.watchers.remove(watched);
            }
        }
    }

    /// Tells every local session of `users` to `sync`, with its user's current seq.
    fn sync_hint(&self, users: Vec<UserKey>) {
        let targets: Vec<(UserKey, Outbound)> = users
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .flat_map(|key| {
                self.live_sessions(&key)
                    .iter()
                    .filter_map(|s| self.sessions.get(s))
                    .map(|e| (key.clone(), e.outbound.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        if targets.is_empty() {
            return;
        }
        let storage = self.storage.clone();
        tokio::spawn(async move {
            // Storage may be coming back too; the hints are worth a wait.
            let Some(client) = storage.wait_for_client(SYNC_HINT_STORAGE_WAIT).await else {
                tracing::warn!(
                    "storage unreachable; no sync_hint sent after the cluster link came back"
                );
                return;
            };
            let mut last_seqs: HashMap<UserKey, u64> = HashMap::new();
            for (key, outbound) in targets {
                let last_seq = match last_seqs.get(&key) {
                    Some(seq) => *seq,
                    None => match client.last_seq(key.clone()).await {
                        Ok(seq) => *last_seqs.entry(key).or_insert(seq),
                        Err(_) => continue,
                    },
                };
                outbound.send(&ServerFrame::SyncHint { last_seq });
            }
        });
    }

    /// Closes `key`'s sessions here after what is queued to them; returns how many.
    fn disconnect(&self, key: &UserKey, cause: CloseCause, reason: Option<&str>) -> usize {
        let sessions = self.live_sessions(key);
        for entry in sessions.iter().filter_map(|s| self.sessions.get(s)) {
            match reason {
                Some(reason) => entry.outbound.close_with_reason(cause, reason),
                None => entry.outbound.close_after_pending(cause),
            }
        }
        sessions.len()
    }

    fn live_sessions(&self, key: &UserKey) -> &[SessionId] {
        self.online
            .get(&key.tenant)
            .and_then(|users| users.get(&key.user))
            .map_or(&[], Vec::as_slice)
    }

    fn is_local(&self, key: &UserKey) -> bool {
        !self.live_sessions(key).is_empty()
    }

    fn is_remote(&self, key: &UserKey) -> bool {
        self.remote
            .get(&key.tenant)
            .is_some_and(|users| users.contains(&key.user))
    }

    /// Online on this node or any other.
    fn is_online(&self, key: &UserKey) -> bool {
        self.is_local(key) || self.is_remote(key)
    }

    /// Sends a `presence` event about `key` to every session watching it.
    fn announce(&self, key: &UserKey, status: PresenceStatus) {
        let Some(watchers) = self.watchers.get(key) else {
            return;
        };
        let text = Utf8Bytes::from(
            ServerFrame::Presence {
                user: Cow::Borrowed(&key.user),
                status,
                ts: now_ms(),
            }
            .encode(),
        );
        for session in watchers {
            if let Some(entry) = self.sessions.get(session) {
                entry.outbound.send_text(text.clone(), Droppable::Yes);
            }
        }
    }

    fn watch(&mut self, session: SessionId, tenant: &str, users: Vec<String>) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        for user in users {
            self.watchers
                .entry(UserKey::new(tenant, user.clone()))
                .or_default()
                .insert(session);
            entry.watching.insert(user);
        }
    }

    fn deliver(&self, deliveries: &[Delivery]) {
        let mut group_frames = Vec::new();
        for Delivery {
            message,
            members,
            origin,
        } in deliveries
        {
            self.offer_to_push(message, members);
            if message.is_group() {
                group_frames.extend(message_frames(message, members, *origin));
                continue;
            }
            let recipient = message.recipient_key();
            self.send_message(&recipient, message, *origin);
            if message.recipient != message.sender {
                // The sender's other devices get a copy with the sender's seq.
                self.send_message(&message.sender_key(), message, *origin);
            }
        }
        if let Some(cluster) = &self.cluster {
            let messages: Vec<StoredMessage> = deliveries
                .iter()
                .filter(|d| !d.message.is_group())
                .map(|d| d.message.clone())
                .collect();
            if !messages.is_empty() {
                let _ = cluster.cast(ClusterMsg::PublishMessages(messages));
            }
        }
        if !group_frames.is_empty() {
            self.deliver_frames(group_frames);
        }
    }

    /// Offers each recipient of `message` with no live session on any node to the push
    /// hand-off (the sender's other devices are not recipients).
    fn offer_to_push(&self, message: &StoredMessage, members: &[StreamSeq]) {
        let Some(push) = &self.push else {
            return;
        };
        if message.is_group() {
            for member in members {
                let key = UserKey::new(message.tenant.as_str(), member.user.as_str());
                if !self.is_online(&key) {
                    push.offer(key, message);
                }
            }
        } else if message.recipient != message.sender {
            let key = message.recipient_key();
            if !self.is_online(&key) {
                push.offer(key, message);
            }
        }
    }

    /// Writes each frame to its user's protocol-2 sessions here, and hands the frames to the
    /// cluster for the user's sessions on other nodes.
    fn deliver_frames(&self, frames: Vec<UserFrame>) {
        for frame in &frames {
            self.send_frame(
                &frame.user,
                &frame.text,
                frame.droppable,
                frame.skip,
                frame.protocols,
            );
        }
        if let Some(cluster) = &self.cluster {
            let _ = cluster.cast(ClusterMsg::PublishFrames(frames));
        }
    }

    /// Writes `text` to every live session of `user` but `skip` whose protocol is in
    /// `protocols`.
    fn send_frame(
        &self,
        user: &UserKey,
        text: &Utf8Bytes,
        droppable: Droppable,
        skip: Option<SessionId>,
        protocols: Protocols,
    ) {
        for session in self.live_sessions(user) {
            if Some(*session) == skip {
                continue;
            }
            if let Some(entry) = self.sessions.get(session)
                && protocols.admits(entry.protocol)
                && entry.outbound.send_text(text.clone(), droppable)
                && droppable == Droppable::No
            {
                self.metrics.messages_delivered.increment(1);
            }
        }
    }

    /// Sends `message` as `viewer` sees it to every live session of `viewer` but `skip`: a
    /// message with fields of protocol 3 (a reply) is encoded apart for older protocols.
    fn send_message(&self, viewer: &UserKey, message: &StoredMessage, skip: Option<SessionId>) {
        let sessions = self.live_sessions(viewer);
        if sessions.iter().all(|s| Some(*s) == skip) {
            return;
        }
        let encode = |view: MessageView<'_>| Utf8Bytes::from(ServerFrame::Message(view).encode());
        let text = encode(MessageView::of(message, &viewer.user));
        let older = (!message.lifecycle.is_empty())
            .then(|| encode(MessageView::of(message, &viewer.user).without_lifecycle()));
        for session in sessions.iter().filter(|s| Some(**s) != skip) {
            if let Some(entry) = self.sessions.get(session)
                && entry.outbound.send_text(
                    match &older {
                        Some(older) if !Protocols::LIFECYCLE.admits(entry.protocol) => {
                            older.clone()
                        }
                        _ => text.clone(),
                    },
                    Droppable::No,
                )
            {
                self.metrics.messages_delivered.increment(1);
            }
        }
    }

    fn subscribe(&mut self, session: SessionId, users: Vec<String>, req_id: Option<&ReqId>) {
        let Some(tenant) = self.sessions.get(&session).map(|e| e.key.tenant.clone()) else {
            return;
        };
        self.watch(session, &tenant, users.clone());
        let statuses = users
            .iter()
            .map(|user| {
                let status = if self.is_online(&UserKey::new(tenant.clone(), user.clone())) {
                    PresenceStatus::Online
                } else {
                    PresenceStatus::Offline
                };
                (Cow::Borrowed(user.as_str()), status)
            })
            .collect();
        if let Some(entry) = self.sessions.get(&session) {
            entry.outbound.send(&ServerFrame::PresenceSnapshot {
                req_id: req_id.map(Cow::Borrowed),
                users: statuses,
            });
        }
    }

    fn unsubscribe(&mut self, session: SessionId, users: &[String]) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        let key = entry.key.clone();
        let removed: Vec<String> = users
            .iter()
            .filter(|user| entry.watching.remove(*user))
            .cloned()
            .collect();
        for user in removed {
            self.unwatch(session, &key.peer(user));
        }
    }

    fn online_users(&self, session: SessionId, limit: u32, req_id: Option<&ReqId>) {
        let Some(entry) = self.sessions.get(&session) else {
            return;
        };
        let local = self
            .online
            .get(&entry.key.tenant)
            .into_iter()
            .flat_map(|u| u.keys());
        let remote = self.remote.get(&entry.key.tenant).into_iter().flatten();
        let mut users: Vec<Cow<'_, str>> = local
            .chain(remote)
            .map(|user| Cow::Borrowed(user.as_str()))
            .collect();
        users.sort_unstable();
        users.dedup();
        let truncated = users.len() > limit as usize;
        users.truncate(limit as usize);
        entry.outbound.send(&ServerFrame::OnlineUsers {
            req_id: req_id.map(Cow::Borrowed),
            users,
            truncated,
        });
    }

    fn typing(&self, from: &UserKey, to: &str) {
        let recipient = from.peer(to);
        let text = Utf8Bytes::from(
            ServerFrame::Typing {
                from: Cow::Borrowed(&from.user),
                conversation_id: None,
            }
            .encode(),
        );
        for session in self.live_sessions(&recipient) {
            if let Some(entry) = self.sessions.get(session) {
                entry.outbound.send_text(text.clone(), Droppable::Yes);
            }
        }
    }
}

fn status(online: bool) -> PresenceStatus {
    if online {
        PresenceStatus::Online
    } else {
        PresenceStatus::Offline
    }
}

#[cfg(test)]
mod tests {
    use peroxo_protocol::domain::conversation_id;
    use serde_json::Value;

    use super::*;
    use crate::connection::OutboundQueue;

    /// A connection of `user` (tenant `t`) watching `watching`.
    fn connect(user: &str, watching: &[&str]) -> (Registration, OutboundQueue) {
        let (outbound, queue) = Outbound::new(SessionId::next(), 64, Arc::default());
        outbound.welcome().ready(Utf8Bytes::from_static("welcome"));
        let registration = Registration {
            key: UserKey::new("t", user),
            protocol: 1,
            outbound,
            watching: watching.iter().map(|u| (*u).to_owned()).collect(),
        };
        (registration, queue)
    }

    /// The frames queued on `queue`, as JSON, without the welcome.
    fn frames(queue: &OutboundQueue) -> Vec<Value> {
        queue
            .take_texts()
            .into_iter()
            .filter(|t| t != "welcome")
            .map(|t| serde_json::from_str(&t).unwrap())
            .collect()
    }

    fn presence_of(frames: &[Value]) -> Vec<(String, String)> {
        frames
            .iter()
            .filter(|f| f["type"] == "presence")
            .map(|f| {
                let field = |k: &str| f[k].as_str().unwrap().to_owned();
                (field("user"), field("status"))
            })
            .collect()
    }

    fn message(
        sender: &str,
        recipient: &str,
        sender_seq: u64,
        recipient_seq: u64,
    ) -> StoredMessage {
        StoredMessage {
            message_id: 1,
            tenant: "t".to_owned(),
            sender: sender.to_owned(),
            recipient: recipient.to_owned(),
            client_msg_id: "c1".to_owned(),
            text: "hi".to_owned(),
            ts: 0,
            sender_seq,
            recipient_seq,
            lifecycle: Default::default(),
        }
    }

    #[test]
    fn the_welcome_goes_out_once_when_a_connection_registers() {
        let mut state = RouterState::default();
        let (alice, queue) = connect("alice", &[]);
        let again = alice.clone();
        state.register(alice);
        state.register(again);
        assert_eq!(queue.take_texts(), ["welcome"]);
    }

    #[test]
    fn watchers_hear_when_a_user_comes_online_and_when_the_last_session_goes() {
        let mut state = RouterState::default();
        let (alice, alice_queue) = connect("alice", &["bob"]);
        state.register(alice);
        let (bob_phone, bob_phone_queue) = connect("bob", &[]);
        let phone = bob_phone.outbound.session_id();
        state.register(bob_phone);
        let (bob_laptop, _bob_laptop_queue) = connect("bob", &[]);
        let laptop = bob_laptop.outbound.session_id();
        state.register(bob_laptop);
        assert_eq!(
            presence_of(&frames(&alice_queue)),
            [("bob".into(), "online".into())]
        );
        state.unregister(phone);
        assert!(
            presence_of(&frames(&alice_queue)).is_empty(),
            "bob is still online"
        );
        state.unregister(laptop);
        assert_eq!(
            presence_of(&frames(&alice_queue)),
            [("bob".into(), "offline".into())]
        );
        assert!(frames(&bob_phone_queue).is_empty());
    }

    #[test]
    fn a_restarted_router_announces_only_what_changed_while_it_was_down() {
        let announced = Arc::new(AnnouncedOnline::default());
        let mut before = RouterState {
            announced: Arc::clone(&announced),
            ..RouterState::default()
        };
        let (alice, alice_queue) = connect("alice", &["bob", "carol", "dave"]);
        before.register(alice.clone());
        let (bob, _bob_queue) = connect("bob", &[]);
        before.register(bob.clone());
        let (carol, _carol_queue) = connect("carol", &[]);
        before.register(carol);
        assert_eq!(
            presence_of(&frames(&alice_queue)),
            [
                ("bob".into(), "online".into()),
                ("carol".into(), "online".into())
            ]
        );
        // The Router crashes; meanwhile carol's connection closes and dave connects. The new
        // Router recovers alice, bob and dave.
        let mut after = RouterState {
            announced,
            recovering: true,
            ..RouterState::default()
        };
        let (dave, _dave_queue) = connect("dave", &[]);
        for registration in [alice, bob, dave] {
            after.register(registration);
        }
        after.settle_presence();
        let mut heard = presence_of(&frames(&alice_queue));
        heard.sort();
        assert_eq!(
            heard,
            [
                ("carol".into(), "offline".into()),
                ("dave".into(), "online".into())
            ],
            "no repeated online for alice or bob"
        );
    }

    #[test]
    fn a_user_online_on_another_node_stays_online_when_the_local_session_goes() {
        let mut state = RouterState::default();
        let (alice, alice_queue) = connect("alice", &["bob"]);
        state.register(alice);
        state.remote_presence(UserKey::new("t", "bob"), true);
        assert_eq!(
            presence_of(&frames(&alice_queue)),
            [("bob".into(), "online".into())]
        );
        let (bob, _bob_queue) = connect("bob", &[]);
        let session = bob.outbound.session_id();
        state.register(bob);
        state.unregister(session);
        assert!(presence_of(&frames(&alice_queue)).is_empty());
        state.remote_presence(UserKey::new("t", "bob"), false);
        assert_eq!(
            presence_of(&frames(&alice_queue)),
            [("bob".into(), "offline".into())]
        );
    }

    #[test]
    fn a_message_reaches_the_recipient_and_the_senders_other_devices_only() {
        let mut state = RouterState::default();
        let (alice_phone, alice_phone_queue) = connect("alice", &[]);
        let origin = alice_phone.outbound.session_id();
        state.register(alice_phone);
        let (alice_laptop, alice_laptop_queue) = connect("alice", &[]);
        state.register(alice_laptop);
        let (bob, bob_queue) = connect("bob", &[]);
        state.register(bob);
        let (carol, carol_queue) = connect("carol", &[]);
        state.register(carol);
        state.deliver(&[Delivery {
            message: message("alice", "bob", 7, 3),
            members: Vec::new(),
            origin: Some(origin),
        }]);
        let to_bob = frames(&bob_queue);
        assert_eq!(to_bob.len(), 1);
        assert_eq!(to_bob[0]["type"], "message");
        assert_eq!(to_bob[0]["seq"], 3, "the recipient's own seq");
        assert_eq!(
            to_bob[0]["conversation_id"],
            conversation_id("alice", "bob")
        );
        let copy = frames(&alice_laptop_queue);
        assert_eq!(copy.len(), 1);
        assert_eq!(copy[0]["seq"], 7, "the sender's own seq");
        assert!(
            frames(&alice_phone_queue).is_empty(),
            "the origin gets an ack instead"
        );
        assert!(frames(&carol_queue).is_empty());
    }

    #[test]
    fn a_group_message_reaches_each_members_protocol_2_sessions_with_their_seq() {
        let mut state = RouterState::default();
        let (alice_phone, alice_phone_queue) = connect("alice", &[]);
        let origin = alice_phone.outbound.session_id();
        state.register(Registration {
            protocol: 2,
            ..alice_phone
        });
        let (alice_laptop, alice_laptop_queue) = connect("alice", &[]);
        state.register(Registration {
            protocol: 2,
            ..alice_laptop
        });
        let (bob_v1, bob_v1_queue) = connect("bob", &[]);
        state.register(bob_v1);
        let (bob_v2, bob_v2_queue) = connect("bob", &[]);
        state.register(Registration {
            protocol: 2,
            ..bob_v2
        });
        let group = "g~0123456789abcdef01234567";
        state.deliver(&[Delivery {
            message: message("alice", group, 7, 0),
            members: vec![
                StreamSeq {
                    user: "bob".to_owned(),
                    seq: 4,
                },
                StreamSeq {
                    user: "carol".to_owned(),
                    seq: 9,
                },
            ],
            origin: Some(origin),
        }]);
        let to_bob = frames(&bob_v2_queue);
        assert_eq!(to_bob.len(), 1);
        assert_eq!(to_bob[0]["conversation_id"], group);
        assert_eq!(to_bob[0]["seq"], 4, "bob's own seq");
        assert!(to_bob[0].get("client_msg_id").is_none());
        assert!(
            frames(&bob_v1_queue).is_empty(),
            "protocol 1 never sees groups"
        );
        let copy = frames(&alice_laptop_queue);
        assert_eq!(copy.len(), 1);
        assert_eq!(copy[0]["seq"], 7, "the sender's own seq");
        assert_eq!(copy[0]["client_msg_id"], "c1");
        assert!(
            frames(&alice_phone_queue).is_empty(),
            "the origin gets an ack"
        );
    }

    #[test]
    fn presence_does_not_cross_tenants() {
        let mut state = RouterState::default();
        let (alice, alice_queue) = connect("alice", &["bob"]);
        state.register(alice);
        let (outbound, _queue) = Outbound::new(SessionId::next(), 64, Arc::default());
        outbound.welcome().ready(Utf8Bytes::from_static("welcome"));
        state.register(Registration {
            key: UserKey::new("other", "bob"),
            protocol: 1,
            outbound,
            watching: Vec::new(),
        });
        assert!(presence_of(&frames(&alice_queue)).is_empty());
    }
}
