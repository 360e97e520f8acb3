//! SessionSupervisor: opens connections and keeps a session actor serving each.
//!
//! axum hands it every upgraded socket. For each it builds the [`ConnectionContext`] (bounded
//! queue, identity, watch list), starts the socket's reader and writer tasks, and spawns a
//! linked [`Session`]. When a session actor fails, a new one takes over the *same* socket and
//! the client gets an `internal` error frame; after `session.max_restarts` restarts within
//! `session.restart_window_secs` the connection is closed with 1011 instead.
//!
//! It is also the node's list of live connections: a Router that restarts asks it for every
//! one of them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::WebSocket;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::time::Instant;

use super::cluster::ClusterMsg;
use super::context::{ConnectionContext, GatewayContext, ReadPermits};
use super::router::{Registration, RouterMsg};
use super::session::{Session, SessionArgs, SessionMsg};
use crate::admission::Ticket;
use crate::connection::{
    ConnectionRecord, CurrentSession, Outbound, SocketTasks, spawn_socket_tasks,
};
use crate::identity::Identity;
use crate::rate_limit::RateLimiter;
use crate::telemetry::ActorKind;
use peroxo_config::SessionConfig;
use peroxo_protocol::CloseCause;
use peroxo_protocol::domain::SessionId;
#[cfg(feature = "test-hooks")]
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::{ErrorCode, ProtocolError};

pub enum SessionSupervisorMsg {
    /// An authenticated, admitted, upgraded socket.
    Open {
        socket: Box<WebSocket>,
        identity: Identity,
        ticket: Ticket,
        /// The protocol version the client asked for (1 or 2).
        protocol: u32,
    },
    /// Every live connection, for a Router that just restarted.
    Registrations(ractor::RpcReplyPort<Vec<Registration>>),
    /// Closes every connection for `cause`; answers how many there were.
    CloseAll {
        cause: CloseCause,
        reply: ractor::RpcReplyPort<usize>,
    },
    /// Crashes the session actors of `key`; answers how many.
    #[cfg(feature = "test-hooks")]
    CrashSessionsOf(UserKey, ractor::RpcReplyPort<usize>),
    /// Makes this supervisor panic, taking every session with it.
    #[cfg(feature = "test-hooks")]
    Crash,
}

pub struct SessionSupervisorArgs {
    pub gateway: Arc<GatewayContext>,
    pub config: SessionConfig,
}

pub struct SessionSupervisorState {
    gateway: Arc<GatewayContext>,
    config: SessionConfig,
    /// Live connections by the id of the session actor serving them.
    connections: HashMap<ActorId, Connection>,
}

struct Connection {
    context: Arc<ConnectionContext>,
    /// Publishes the current session actor to the connection's reader task.
    current: Arc<CurrentSession<ActorRef<SessionMsg>>>,
    /// When recent restarts happened, oldest first.
    restarts: VecDeque<Instant>,
}

pub struct SessionSupervisor;

impl SessionSupervisor {
    pub async fn spawn(
        args: SessionSupervisorArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<ActorRef<SessionSupervisorMsg>, ractor::SpawnErr> {
        let (actor, _) = Actor::spawn_linked(None, SessionSupervisor, args, supervisor).await?;
        Ok(actor)
    }
}

impl Actor for SessionSupervisor {
    type Msg = SessionSupervisorMsg;
    type State = SessionSupervisorState;
    type Arguments = SessionSupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SessionSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SessionSupervisorState {
            gateway: args.gateway,
            config: args.config,
            connections: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionSupervisorMsg::Open {
                socket,
                identity,
                ticket,
                protocol,
            } => {
                state
                    .open(&myself, *socket, identity, ticket, protocol)
                    .await;
            }
            SessionSupervisorMsg::Registrations(reply) => {
                let registrations = state
                    .connections
                    .values()
                    .filter_map(|c| c.context.registration())
                    .collect();
                let _ = reply.send(registrations);
            }
            SessionSupervisorMsg::CloseAll { cause, reply } => {
                for connection in state.connections.values() {
                    connection.context.outbound.close_after_pending(cause);
                }
                let _ = reply.send(state.connections.len());
            }
            #[cfg(feature = "test-hooks")]
            SessionSupervisorMsg::CrashSessionsOf(key, reply) => {
                let mut crashed = 0;
                for connection in state.connections.values() {
                    if connection.context.key == key
                        && let (Some(actor), _) = connection.current.get()
                        && actor.cast(SessionMsg::Crash).is_ok()
                    {
                        crashed += 1;
                    }
                }
                let _ = reply.send(crashed);
            }
            #[cfg(feature = "test-hooks")]
            SessionSupervisorMsg::Crash => {
                panic!("session supervisor crash requested by a test hook")
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Overridden: the default would stop this supervisor when any session ends.
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(connection) = state.connections.remove(&cell.get_id()) {
                    state.close(&connection, CloseCause::SessionEnded);
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(connection) = state.connections.remove(&cell.get_id()) {
                    state.restart(&myself, connection, &error.to_string()).await;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Drop for Connection {
    /// A connection dropped without being closed (this supervisor failed, and ractor killed
    /// its sessions) still gets its socket closed. After a normal close this changes nothing:
    /// the first close wins. Either way no session will serve it again: the reader stops
    /// waiting for one.
    fn drop(&mut self) {
        self.context
            .outbound
            .close_after_pending(CloseCause::SupervisorFailed);
        self.current.retire();
    }
}

impl SessionSupervisorState {
    async fn open(
        &mut self,
        myself: &ActorRef<SessionSupervisorMsg>,
        socket: WebSocket,
        identity: Identity,
        ticket: Ticket,
        protocol: u32,
    ) {
        let live = &self.gateway.live;
        let settings = live.load();
        let limits = &settings.limits;
        let (outbound, queue) = Outbound::new(
            SessionId::next(),
            live.outbound_queue(),
            Arc::clone(&self.gateway.metrics),
        );
        let context = Arc::new(ConnectionContext {
            key: identity.key,
            protocol,
            expires_at: AtomicU64::new(identity.expires_at.unwrap_or(0)),
            ticket,
            cluster_interest: AtomicBool::new(false),
            outbound: outbound.clone(),
            watching: Mutex::new(BTreeSet::new()),
            reads: ReadPermits::new(limits.max_reads_in_flight),
            rate: Mutex::new(RateLimiter::new(
                limits.rate_per_sec,
                limits.rate_burst,
                limits.abuse_close_secs,
                Instant::now(),
            )),
        });
        let args = SessionArgs {
            connection: Arc::clone(&context),
            gateway: Arc::clone(&self.gateway),
            restarted: false,
        };
        let actor = match Session::spawn(args, myself.get_cell()).await {
            Ok(actor) => actor,
            Err(error) => {
                tracing::error!(%error, "cannot start a session; dropping the connection");
                return;
            }
        };
        let current = CurrentSession::new(actor.clone());
        let tasks = SocketTasks {
            outbound: outbound.clone(),
            queue,
            session: Arc::clone(&current),
            live: Arc::clone(live),
            record: ConnectionRecord::opened(context.key.clone(), &outbound),
        };
        spawn_socket_tasks(socket, tasks);
        self.connections.insert(
            actor.get_id(),
            Connection {
                context,
                current,
                restarts: VecDeque::new(),
            },
        );
    }

    /// Ends a connection for good: the Router forgets it and the socket is closed.
    fn close(&self, connection: &Connection, cause: CloseCause) {
        if connection
            .context
            .cluster_interest
            .swap(false, Ordering::Relaxed)
            && let Some(cluster) = &self.gateway.cluster
        {
            let _ = cluster.cast(ClusterMsg::Disinterest(connection.context.key.clone()));
        }
        let _ = self.gateway.router.cast(RouterMsg::Unregister(
            connection.context.outbound.session_id(),
        ));
        connection.context.outbound.close_after_pending(cause);
    }

    /// A session actor failed: start another on the same connection, unless it failed too
    /// often lately.
    async fn restart(
        &mut self,
        myself: &ActorRef<SessionSupervisorMsg>,
        mut connection: Connection,
        error: &str,
    ) {
        let session = connection.context.outbound.session_id();
        let now = Instant::now();
        let window = self.config.restart_window_secs;
        while connection
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            connection.restarts.pop_front();
        }
        if connection.restarts.len() >= self.config.max_restarts {
            tracing::error!(%session, user = %connection.context.key, %error,
                "session failed too often; closing the connection");
            self.close(&connection, CloseCause::SessionFailed);
            return;
        }
        connection.restarts.push_back(now);
        self.gateway.restarts.record(ActorKind::Session);
        tracing::error!(%session, user = %connection.context.key, %error, "session failed; restarting it");
        connection.context.outbound.error(&ProtocolError::new(
            ErrorCode::Internal,
            "the session failed and was restarted; the last command may not have been processed",
        ));
        let args = SessionArgs {
            connection: Arc::clone(&connection.context),
            gateway: Arc::clone(&self.gateway),
            restarted: true,
        };
        match Session::spawn(args, myself.get_cell()).await {
            Ok(actor) => {
                connection.current.replace(actor.clone());
                self.connections.insert(actor.get_id(), connection);
            }
            Err(spawn_error) => {
                tracing::error!(%session, error = %spawn_error, "cannot restart a session");
                self.close(&connection, CloseCause::SessionFailed);
            }
        }
    }
}
