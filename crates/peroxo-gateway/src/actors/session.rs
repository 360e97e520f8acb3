//! A Session: one client connection's commands, as one actor.
//!
//! The reader task hands it each decoded frame and waits until it has taken it. It validates
//! what decoding cannot, then hands the work on: sends to Persistence, presence and typing to
//! the Router, reads (history, sync) to a task bounded by the connection's read permits. It
//! never awaits the socket: every reply goes into the connection's bounded [`Outbound`] queue.
//!
//! What must survive a restart of this actor lives in [`ConnectionContext`], owned by
//! SessionSupervisor: the queue, the identity and the presence watch list.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ActorSlot;
use super::cluster::ClusterMsg;
use super::context::{ConnectionContext, GatewayContext};
use super::conversation_commands::CommandContext;
use super::outbox::Origin;
use super::persistence::PersistenceMsg;
use super::router::RouterMsg;
use crate::connection::{Inbound, Refused, SessionInbox};
use crate::identity::AuthError;
use crate::rate_limit::Verdict;
use peroxo_protocol::CloseCause;
use peroxo_protocol::conversation::ConversationRef;
use peroxo_protocol::domain::NewMessage;
use peroxo_protocol::domain::conversation_id;
use peroxo_protocol::event::is_group_id;
use peroxo_protocol::{
    CONVERSATIONS_PROTOCOL_VERSION, Command, CommandKind, ErrorCode, EventView,
    LIFECYCLE_PROTOCOL_VERSION, MessageView, ProtocolError, ReqId, ServerFrame, now_ms,
};
use peroxo_storage::grpc::CallError;
use peroxo_storage::{HistoryQuery, SyncQuery, SyncScope};

/// How long a new session waits for each call that registers it: its interest with the
/// Cluster actor (clustered nodes) and its registration with the Router.
const REGISTRATION_CALL_TIMEOUT_MS: u64 = 5_000;

pub enum SessionMsg {
    /// A frame from the client; `accepted` is answered once the session has taken it, which
    /// lets the reader read the next one.
    Inbound {
        input: Inbound,
        accepted: oneshot::Sender<()>,
    },
    /// Time to check whether the token has expired (`generation` tells stale checks apart).
    CheckExpiry { generation: u64 },
    /// Panics inside `handle`, to exercise supervision.
    #[cfg(feature = "test-hooks")]
    Crash,
}

pub struct SessionArgs {
    pub connection: Arc<ConnectionContext>,
    pub gateway: Arc<GatewayContext>,
    /// True when this actor replaces one that failed: no `welcome` again.
    pub restarted: bool,
}

pub struct SessionState {
    connection: Arc<ConnectionContext>,
    gateway: Arc<GatewayContext>,
    restarted: bool,
    /// Tells the current expiry check from ones a refresh made stale.
    expiry_generation: u64,
}

pub struct Session;

impl Session {
    pub async fn spawn(
        args: SessionArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<ActorRef<SessionMsg>, ractor::SpawnErr> {
        let (actor, _) = Actor::spawn_linked(None, Session, args, supervisor).await?;
        Ok(actor)
    }
}

/// The reader hands each frame to the current Session actor as a message.
impl SessionInbox for ActorRef<SessionMsg> {
    fn offer(&self, input: Inbound, accepted: oneshot::Sender<()>) -> Result<(), Refused> {
        match self.cast(SessionMsg::Inbound { input, accepted }) {
            Ok(()) => Ok(()),
            Err(ractor::MessagingErr::SendErr(SessionMsg::Inbound { input, .. })) => {
                Err(Refused::Stopped(input))
            }
            Err(_) => Err(Refused::Gone),
        }
    }
}

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SessionState {
            connection: args.connection,
            gateway: args.gateway,
            restarted: args.restarted,
            expiry_generation: 0,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.restarted && state.connection.outbound.welcome().is_ready() {
            // Same connection, same queue: the Router entry only needs the new registration.
            register(state);
        } else {
            welcome(&myself, state).await;
        }
        state.schedule_expiry_check(&myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMsg::Inbound { input, accepted } => {
                if let Inbound::SocketClosed = input {
                    myself.stop(Some("socket closed".to_owned()));
                } else if state.within_rate(&myself, &input) {
                    match input {
                        // Boxed: ractor keeps `handle`'s future inside every actor's
                        // state, so an idle session would carry the largest command's.
                        Inbound::Command(Ok(command)) => {
                            Box::pin(state.command(&myself, command)).await;
                        }
                        Inbound::Command(Err(error)) => {
                            state.connection.outbound.error(&error);
                        }
                        Inbound::Binary => {
                            state.connection.outbound.error(&ProtocolError::new(
                                ErrorCode::BadRequest,
                                "binary frames are not supported; send JSON text frames",
                            ));
                        }
                        Inbound::SocketClosed => {}
                    }
                }
                let _ = accepted.send(());
            }
            SessionMsg::CheckExpiry { generation } => {
                if generation == state.expiry_generation {
                    state.check_expiry(&myself);
                }
            }
            #[cfg(feature = "test-hooks")]
            SessionMsg::Crash => panic!("session crash requested by a test hook"),
        }
        Ok(())
    }
}

/// Registers again after this actor restarted. If the Router is down, its successor takes
/// every connection from SessionSupervisor when it starts.
fn register(state: &SessionState) {
    if let Some(registration) = state.connection.registration() {
        let _ = state.gateway.router.cast(RouterMsg::Register {
            registration,
            registered: None,
        });
    }
}

/// Sends `welcome` (with the user's current seq), then goes live. A client that connects
/// while storage is unreachable is closed with 1013 and reconnects later.
async fn welcome(myself: &ActorRef<SessionMsg>, state: &SessionState) {
    let connection = &state.connection;
    // Other nodes' deliveries for this user must reach this node before `last_seq` is read:
    // then nothing committed after it can miss the session.
    // Once per connection, even if this session restarts: the Cluster counts every
    // Interest it handles, also one whose answer comes too late.
    if let Some(cluster) = state.gateway.cluster.as_ref().and_then(ActorSlot::get)
        && !connection.cluster_interest.swap(true, Ordering::Relaxed)
    {
        let _ = ractor::call_t!(
            cluster,
            |reply| ClusterMsg::Interest(connection.key.clone(), reply),
            REGISTRATION_CALL_TIMEOUT_MS
        );
    }
    let client = state
        .gateway
        .storage
        .wait_for_client(state.gateway.storage_wait)
        .await;
    let last_seq = match client {
        Some(ref client) => client.last_seq(connection.key.clone()).await.ok(),
        None => None,
    };
    let (Some(client), Some(last_seq)) = (client, last_seq) else {
        connection
            .outbound
            .close_after_pending(CloseCause::StorageUnavailable);
        myself.stop(Some("storage unavailable".to_owned()));
        return;
    };
    connection.outbound.welcome().ready(Utf8Bytes::from(
        ServerFrame::Welcome {
            session_id: connection.outbound.session_id().to_string(),
            user: Cow::Borrowed(&connection.key.user),
            tenant: Cow::Borrowed(&connection.key.tenant),
            last_seq,
            protocol: connection.protocol,
        }
        .encode(),
    ));
    // The Router queues `welcome` right before the session becomes reachable, so no delivery
    // can overtake it, and confirms, so the client never sees it before it is reachable.
    if let (Some(router), Some(registration)) =
        (state.gateway.router.get(), connection.registration())
    {
        let _ = ractor::call_t!(
            router,
            |registered| RouterMsg::Register {
                registration,
                registered: Some(registered),
            },
            REGISTRATION_CALL_TIMEOUT_MS
        );
    }
    // No Router answered (it is restarting; its successor takes this connection from
    // SessionSupervisor): queue the welcome here unless a Router already did.
    connection.outbound.send_welcome_once();
    // A message committed between reading `last_seq` and registering was not delivered
    // live: tell the client to sync.
    if let Ok(now) = client.last_seq(connection.key.clone()).await
        && now > last_seq
    {
        connection
            .outbound
            .send(&ServerFrame::SyncHint { last_seq: now });
    }
}

fn unavailable(message: &str, req_id: Option<ReqId>) -> ProtocolError {
    ProtocolError::new(ErrorCode::Unavailable, message).with_req_id(req_id)
}

fn storage_error(error: CallError, req_id: Option<ReqId>) -> ProtocolError {
    match error {
        CallError::Rejected(reason) => {
            ProtocolError::new(ErrorCode::BadRequest, reason).with_req_id(req_id)
        }
        CallError::Unavailable(_) => unavailable("storage unavailable; retry later", req_id),
        CallError::Refused(refusal) => ProtocolError::from(refusal).with_req_id(req_id),
    }
}

impl SessionState {
    /// Charges one command to the rate limit. Refuses it (`rate_limited`) when over the rate,
    /// and disconnects (1008) a client that stays over it.
    fn within_rate(&mut self, myself: &ActorRef<SessionMsg>, input: &Inbound) -> bool {
        let verdict = {
            let mut rate = self.connection.rate.lock().expect("rate limiter poisoned");
            let settings = self.gateway.live.load();
            let limits = &settings.limits;
            let now = Instant::now();
            rate.reconfigure(
                limits.rate_per_sec,
                limits.rate_burst,
                limits.abuse_close_secs,
                now,
            );
            let owed = self.connection.outbound.take_rate_debt();
            if owed > 0 {
                rate.charge(f64::from(owed));
            }
            rate.check(now)
        };
        if verdict == Verdict::Allow {
            return true;
        }
        let outbound = &self.connection.outbound;
        if verdict == Verdict::Disconnect {
            tracing::warn!(user = %self.connection.key, "closing a session that keeps exceeding its rate");
            outbound.close_now(CloseCause::RateAbuse);
            myself.stop(Some("rate abuse".to_owned()));
            return false;
        }
        let (req_id, client_msg_id) = match input {
            Inbound::Command(Ok(command)) => (
                command.req_id.clone(),
                command.kind.client_msg_id().map(str::to_owned),
            ),
            Inbound::Command(Err(error)) => (error.req_id.clone(), error.client_msg_id.clone()),
            _ => (None, None),
        };
        let settings = self.gateway.live.load();
        let limits = &settings.limits;
        outbound.error(
            &ProtocolError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} commands per second (burst {}); slow down and retry",
                    limits.rate_per_sec, limits.rate_burst
                ),
            )
            .with_req_id(req_id)
            .with_client_msg_id(client_msg_id),
        );
        false
    }

    /// Schedules a check for when the current credential expires (plus the leeway).
    fn schedule_expiry_check(&mut self, myself: &ActorRef<SessionMsg>) {
        let expires_at = self.connection.expires_at.load(Ordering::Relaxed);
        if expires_at == 0 {
            return;
        }
        self.expiry_generation += 1;
        let generation = self.expiry_generation;
        let deadline =
            UNIX_EPOCH + Duration::from_secs(expires_at) + self.gateway.auth.load().leeway();
        let wait = deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        myself.send_after(wait, move || SessionMsg::CheckExpiry { generation });
    }

    fn check_expiry(&mut self, myself: &ActorRef<SessionMsg>) {
        let expires_at = self.connection.expires_at.load(Ordering::Relaxed);
        let deadline =
            UNIX_EPOCH + Duration::from_secs(expires_at) + self.gateway.auth.load().leeway();
        if SystemTime::now() >= deadline {
            self.connection
                .outbound
                .close_after_pending(CloseCause::TokenExpired);
            myself.stop(Some("token expired".to_owned()));
        } else {
            self.schedule_expiry_check(myself);
        }
    }

    /// Takes a fresh token for the same user and tenant. Verifying it may wait for one fetch
    /// of the key set (bounded by its timeout), when it names a key id the set lacks.
    async fn refresh(&mut self, myself: &ActorRef<SessionMsg>, token: &str, req_id: Option<ReqId>) {
        let outbound = self.connection.outbound.clone();
        // The authenticator of now (a reload may replace it meanwhile).
        let auth = self.gateway.auth.load_full();
        let identity = match auth.verify_token(token).await {
            Ok(identity) => identity,
            Err(error) => {
                let code = match error {
                    AuthError::Unavailable(_) => ErrorCode::Unavailable,
                    AuthError::Unauthenticated(_) | AuthError::BadRequest(_) => {
                        ErrorCode::BadRequest
                    }
                };
                outbound.error(
                    &ProtocolError::new(code, format!("refresh refused: {error}"))
                        .with_req_id(req_id),
                );
                return;
            }
        };
        if identity.key != self.connection.key {
            outbound.error(
                &ProtocolError::new(
                    ErrorCode::Forbidden,
                    "the token is for another user or tenant than this session",
                )
                .with_req_id(req_id),
            );
            return;
        }
        // A token revoked (or a user banned) since: the session keeps its old token's expiry.
        if let Err(refused) = self
            .gateway
            .restrictions
            .check(&identity, peroxo_protocol::domain::now_ms())
        {
            outbound.error(
                &ProtocolError::new(
                    ErrorCode::Forbidden,
                    format!("refresh refused: {}", refused.message()),
                )
                .with_req_id(req_id),
            );
            return;
        }
        let exp = identity.expires_at.unwrap_or(0);
        self.connection.expires_at.store(exp, Ordering::Relaxed);
        self.schedule_expiry_check(myself);
        outbound.send(&ServerFrame::Refreshed {
            req_id: req_id.as_ref().map(Cow::Borrowed),
            exp,
        });
    }

    async fn command(&mut self, myself: &ActorRef<SessionMsg>, command: Command) {
        let Command { req_id, kind } = command;
        let needed = kind.needs_protocol();
        if needed > self.connection.protocol {
            let client_msg_id = kind.client_msg_id().map(str::to_owned);
            self.connection.outbound.error(
                &ProtocolError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "this command needs protocol {needed}: connect with ?protocol={needed}"
                    ),
                )
                .with_req_id(req_id)
                .with_client_msg_id(client_msg_id),
            );
            return;
        }
        match kind {
            CommandKind::Send {
                to,
                text,
                client_msg_id,
            } => self.send(to, text, client_msg_id, None, req_id),
            CommandKind::SendToConversation {
                conversation_id,
                text,
                client_msg_id,
                reply_to,
            } => self.send_to_conversation(conversation_id, text, client_msg_id, reply_to, req_id),
            CommandKind::History {
                with,
                before,
                limit,
            } => {
                let conversation_id = conversation_id(&self.connection.key.user, &with);
                self.history(conversation_id, Some(with), before, limit, req_id)
                    .await;
            }
            CommandKind::ConversationHistory {
                conversation_id,
                before,
                limit,
            } => {
                self.history(conversation_id, None, before, limit, req_id)
                    .await;
            }
            CommandKind::PresenceSubscribeGroup { conversation_id } => {
                self.subscribe_to_group(conversation_id, req_id).await;
            }
            CommandKind::Sync { after_seq, limit } => self.sync(after_seq, limit, req_id).await,
            CommandKind::PresenceSubscribe { users } => self.subscribe(users, req_id),
            CommandKind::PresenceUnsubscribe { users } => self.unsubscribe(users),
            CommandKind::OnlineUsers { limit } => {
                self.to_router(
                    RouterMsg::OnlineUsers {
                        session: self.connection.outbound.session_id(),
                        limit,
                        req_id: req_id.clone(),
                    },
                    req_id,
                );
            }
            CommandKind::Typing { to } => {
                self.to_router(
                    RouterMsg::Typing {
                        from: self.connection.key.clone(),
                        to,
                    },
                    req_id,
                );
            }
            CommandKind::Ping => {
                self.connection.outbound.send(&ServerFrame::Pong {
                    req_id: req_id.as_ref().map(Cow::Borrowed),
                    ts: now_ms(),
                });
            }
            CommandKind::Refresh { token } => self.refresh(myself, &token, req_id).await,
            other => {
                let commands = CommandContext {
                    connection: Arc::clone(&self.connection),
                    gateway: Arc::clone(&self.gateway),
                };
                commands.run(other, req_id).await;
            }
        }
    }

    /// `send` with a conversation id: a direct conversation is a send to its other user; a
    /// group id is a message to every member (storage checks membership).
    fn send_to_conversation(
        &mut self,
        conversation_id: String,
        text: String,
        client_msg_id: String,
        reply_to: Option<u64>,
        req_id: Option<ReqId>,
    ) {
        let recipient = match ConversationRef::parse(&conversation_id) {
            Ok(ConversationRef::Group(id)) => id,
            Ok(direct) => match direct.peer_of(&self.connection.key.user) {
                Some(peer) => peer.to_owned(),
                None => {
                    self.connection.outbound.error(
                        &ProtocolError::new(
                            ErrorCode::NotAMember,
                            "you are not in this direct conversation",
                        )
                        .with_req_id(req_id)
                        .with_client_msg_id(Some(client_msg_id)),
                    );
                    return;
                }
            },
            Err(_) => return,
        };
        self.send(recipient, text, client_msg_id, reply_to, req_id);
    }

    /// `presence_subscribe` to a group: its members (the user aside) join the watch list.
    async fn subscribe_to_group(&self, conversation_id: String, req_id: Option<ReqId>) {
        let Some(client) = self.gateway.storage.client() else {
            self.connection
                .outbound
                .error(&unavailable("storage unavailable; retry later", req_id));
            return;
        };
        match client
            .members(self.connection.key.clone(), conversation_id)
            .await
        {
            Ok(members) => {
                let users = members
                    .into_iter()
                    .map(|m| m.user)
                    .filter(|u| *u != self.connection.key.user)
                    .collect::<Vec<_>>();
                if users.is_empty() {
                    self.connection
                        .outbound
                        .send(&ServerFrame::PresenceSnapshot {
                            req_id: req_id.as_ref().map(Cow::Borrowed),
                            users: Default::default(),
                        });
                } else {
                    self.subscribe(users, req_id);
                }
            }
            Err(error) => {
                self.connection
                    .outbound
                    .error(&storage_error(error, req_id));
            }
        }
    }

    fn to_router(&self, message: RouterMsg, req_id: Option<ReqId>) {
        if self.gateway.router.cast(message).is_err() {
            self.connection
                .outbound
                .error(&unavailable("the router is restarting; retry", req_id));
        }
    }

    /// Accepts a send into the outbox. A group message holds as many outbox places as the
    /// group had members when last seen here, and costs the sender's rate in proportion;
    /// Persistence charges the rest once storage says how many members it reached.
    fn send(
        &mut self,
        to: String,
        text: String,
        client_msg_id: String,
        reply_to: Option<u64>,
        req_id: Option<ReqId>,
    ) {
        let outbound = &self.connection.outbound;
        let rows = if is_group_id(&to) {
            let members = self
                .gateway
                .member_cache
                .size(&self.connection.key.tenant, &to);
            self.connection
                .rate
                .lock()
                .expect("rate limiter poisoned")
                .charge(f64::from(
                    self.gateway.live.load().groups.rate_tokens(members),
                ));
            members
        } else {
            1
        };
        let message = NewMessage {
            tenant: self.connection.key.tenant.clone(),
            sender: self.connection.key.user.clone(),
            recipient: to,
            client_msg_id,
            text,
            reply_to,
        };
        let client_msg_id = message.client_msg_id.clone();
        let pushed = self.gateway.outbox.push(
            message,
            Origin::Connection(outbound.clone()),
            req_id.clone(),
            rows,
        );
        if pushed.is_ok() {
            self.gateway.metrics.messages_received.increment(1);
        }
        match pushed {
            Ok(true) => {
                if self.gateway.persistence.cast(PersistenceMsg::Wake).is_err() {
                    // Persistence is restarting: its successor flushes the outbox once it
                    // connects, and the next send wakes it again.
                    self.gateway.outbox.woken();
                }
            }
            Ok(false) => {}
            Err(refused) => {
                outbound.error(
                    &unavailable(&refused.to_string(), req_id)
                        .with_client_msg_id(Some(client_msg_id)),
                );
            }
        }
    }

    /// Waits for a read permit (pushing back on the client), then reads in a task.
    async fn read_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let most = self.gateway.live.load().limits.max_reads_in_flight;
        self.connection.reads.acquire(most).await
    }

    async fn history(
        &self,
        conversation_id: String,
        with: Option<String>,
        before: Option<u64>,
        limit: u32,
        req_id: Option<ReqId>,
    ) {
        let Some(permit) = self.read_permit().await else {
            return;
        };
        let outbound = self.connection.outbound.clone();
        let Some(client) = self.gateway.storage.client() else {
            outbound.error(&unavailable("storage unavailable; retry later", req_id));
            return;
        };
        let user = self.connection.key.clone();
        let protocol = self.connection.protocol;
        tokio::spawn(async move {
            let _permit = permit;
            let query = HistoryQuery {
                user: user.clone(),
                conversation_id: conversation_id.clone(),
                before,
                limit,
            };
            match client.history(query).await {
                Ok(page) => {
                    let next_before = page
                        .messages
                        .first()
                        .filter(|_| page.has_more)
                        .map(|m| m.message_id.to_string());
                    outbound.send(&ServerFrame::History {
                        req_id: req_id.as_ref().map(Cow::Borrowed),
                        with: with.as_deref().map(Cow::Borrowed),
                        conversation_id,
                        messages: page
                            .messages
                            .iter()
                            .map(|m| MessageView::for_protocol(m, &user.user, protocol))
                            .collect(),
                        next_before,
                        last_seq: (protocol >= LIFECYCLE_PROTOCOL_VERSION).then_some(page.last_seq),
                    });
                }
                Err(error) => {
                    outbound.error(&storage_error(error, req_id));
                }
            }
        });
    }

    async fn sync(&self, after_seq: u64, limit: u32, req_id: Option<ReqId>) {
        let Some(permit) = self.read_permit().await else {
            return;
        };
        let outbound = self.connection.outbound.clone();
        let Some(client) = self.gateway.storage.client() else {
            outbound.error(&unavailable("storage unavailable; retry later", req_id));
            return;
        };
        let user = self.connection.key.clone();
        let protocol = self.connection.protocol;
        let scope = match protocol {
            1 => SyncScope::DirectMessages,
            CONVERSATIONS_PROTOCOL_VERSION => SyncScope::Conversations,
            _ => SyncScope::Everything,
        };
        let everything = scope != SyncScope::DirectMessages;
        tokio::spawn(async move {
            let _permit = permit;
            let query = SyncQuery {
                user: user.clone(),
                after_seq,
                limit,
                scope,
            };
            match client.sync(query).await {
                Ok(page) => {
                    outbound.send(&ServerFrame::Sync {
                        req_id: req_id.as_ref().map(Cow::Borrowed),
                        messages: page
                            .messages
                            .iter()
                            .map(|m| MessageView::for_protocol(m, &user.user, protocol))
                            .collect(),
                        events: everything.then(|| {
                            page.events
                                .iter()
                                .map(|e| EventView::of(&e.event, e.seq))
                                .collect()
                        }),
                        last_seq: page.last_seq,
                        has_more: page.has_more,
                        pruned_until: (page.pruned_until > 0).then_some(page.pruned_until),
                    });
                }
                Err(error) => {
                    outbound.error(&storage_error(error, req_id));
                }
            }
        });
    }

    fn subscribe(&self, users: Vec<String>, req_id: Option<ReqId>) {
        let max = self.gateway.live.load().limits.max_watched_users;
        {
            let mut watching = self
                .connection
                .watching
                .lock()
                .expect("watch list poisoned");
            let added = users.iter().filter(|u| !watching.contains(*u)).count();
            if watching.len() + added > max {
                self.connection.outbound.error(
                    &ProtocolError::new(
                        ErrorCode::BadRequest,
                        format!(
                            "the watch list would hold {} users; the limit is {max}",
                            watching.len() + added
                        ),
                    )
                    .with_req_id(req_id),
                );
                return;
            }
            watching.extend(users.iter().cloned());
        }
        self.to_router(
            RouterMsg::Subscribe {
                session: self.connection.outbound.session_id(),
                users,
                req_id: req_id.clone(),
            },
            req_id,
        );
    }

    fn unsubscribe(&self, users: Vec<String>) {
        {
            let mut watching = self
                .connection
                .watching
                .lock()
                .expect("watch list poisoned");
            for user in &users {
                watching.remove(user);
            }
        }
        self.to_router(
            RouterMsg::Unsubscribe {
                session: self.connection.outbound.session_id(),
                users,
            },
            None,
        );
    }
}
