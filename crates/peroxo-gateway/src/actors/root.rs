//! RootSupervisor: starts Persistence, Router and SessionSupervisor, and restarts whichever
//! of them fails.
//!
//! - **Router** failed: a new Router takes every live connection from SessionSupervisor
//!   before anything else, and is published in its slot. No connection is dropped.
//! - **Persistence** failed: a new one takes over the outbox, which lives outside the actor,
//!   and sends the interrupted batch again (appends are idempotent).
//! - **SessionSupervisor** failed: its sessions died with it (ractor kills the children of a
//!   dead supervisor); their sockets close and clients reconnect. A new one accepts new
//!   connections.
//! - **Cluster** failed: a new one subscribes again, resets the Router's view of the other
//!   nodes and announces this node's live users.

use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::ActorSlot;
use super::cluster::{Cluster, ClusterArgs};
use super::context::GatewayContext;
use super::persistence::{Persistence, PersistenceArgs};
use super::router::{Router, RouterArgs, RouterMsg};
use super::session_supervisor::{SessionSupervisor, SessionSupervisorArgs, SessionSupervisorMsg};
use crate::telemetry::ActorKind;
use peroxo_config::{ClusterConfig, SessionConfig, StorageConfig, StorageEndpoints};

pub enum RootMsg {
    /// Makes the Router panic, to exercise its recovery.
    #[cfg(feature = "test-hooks")]
    CrashRouter,
    /// Makes Persistence panic, to exercise its recovery.
    #[cfg(feature = "test-hooks")]
    CrashPersistence,
    /// Makes SessionSupervisor panic (its sessions die with it), to exercise its recovery.
    #[cfg(feature = "test-hooks")]
    CrashSessionSupervisor,
    /// Makes the Cluster actor panic, to exercise its recovery; nothing on a single node.
    #[cfg(feature = "test-hooks")]
    CrashCluster,
}

/// What the Cluster actor needs, when the node is part of a cluster.
pub struct ClusterSetup {
    pub config: ClusterConfig,
    pub node: String,
    pub client: async_nats::Client,
}

pub struct RootArgs {
    pub cluster: Option<ClusterSetup>,
    pub gateway: Arc<GatewayContext>,
    pub sessions: ActorSlot<SessionSupervisorMsg>,
    pub storage: StorageConfig,
    /// The storage services' URLs.
    pub endpoint: StorageEndpoints,
    pub session: SessionConfig,
}

pub struct RootState {
    args: RootArgs,
    cluster: Option<ActorCell>,
    router: ActorCell,
    persistence: ActorCell,
    sessions: ActorCell,
}

pub struct RootSupervisor;

impl RootSupervisor {
    pub async fn spawn(args: RootArgs) -> Result<ActorRef<RootMsg>, ractor::SpawnErr> {
        let (actor, _) = Actor::spawn(None, RootSupervisor, args).await?;
        Ok(actor)
    }
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RootArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cluster = match &args.cluster {
            Some(_) => Some(spawn_cluster(&args, myself.get_cell()).await?),
            None => None,
        };
        let persistence = spawn_persistence(&args, myself.get_cell()).await?;
        let router = spawn_router(&args, myself.get_cell()).await?;
        let sessions = spawn_sessions(&args, myself.get_cell()).await?;
        Ok(RootState {
            args,
            cluster,
            router,
            persistence,
            sessions,
        })
    }

    // Without test hooks `RootMsg` has no variants, so nothing here is reachable.
    #[cfg_attr(not(feature = "test-hooks"), allow(unused_variables, unreachable_code))]
    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            #[cfg(feature = "test-hooks")]
            RootMsg::CrashRouter => {
                let _ = state.args.gateway.router.cast(RouterMsg::Crash);
            }
            #[cfg(feature = "test-hooks")]
            RootMsg::CrashPersistence => {
                let _ = state
                    .args
                    .gateway
                    .persistence
                    .cast(super::persistence::PersistenceMsg::Crash);
            }
            #[cfg(feature = "test-hooks")]
            RootMsg::CrashSessionSupervisor => {
                let _ = state.args.sessions.cast(SessionSupervisorMsg::Crash);
            }
            #[cfg(feature = "test-hooks")]
            RootMsg::CrashCluster => {
                if let Some(cluster) = &state.args.gateway.cluster {
                    let _ = cluster.cast(super::cluster::ClusterMsg::Crash);
                }
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
        // Overridden: the default would stop the whole node when one child ends.
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".to_owned()))
            }
            _ => return Ok(()),
        };
        let id = cell.get_id();
        if id == state.router.get_id() {
            tracing::error!(error = %why, "router ended; restarting it");
            state.args.gateway.restarts.record(ActorKind::Router);
            state.router = spawn_router(&state.args, myself.get_cell()).await?;
        } else if state.cluster.as_ref().is_some_and(|c| c.get_id() == id) {
            tracing::error!(error = %why, "cluster link ended; restarting it");
            state.args.gateway.restarts.record(ActorKind::Cluster);
            state.cluster = Some(spawn_cluster(&state.args, myself.get_cell()).await?);
        } else if id == state.persistence.get_id() {
            tracing::error!(error = %why, "persistence ended; restarting it");
            state.args.gateway.restarts.record(ActorKind::Persistence);
            state.persistence = spawn_persistence(&state.args, myself.get_cell()).await?;
        } else if id == state.sessions.get_id() {
            tracing::error!(error = %why, "session supervisor ended; its connections are lost; restarting it");
            state
                .args
                .gateway
                .restarts
                .record(ActorKind::SessionSupervisor);
            // Its connections are closing; neither the Router nor the cluster may count them.
            let _ = state.args.gateway.router.cast(RouterMsg::ForgetAll);
            if let Some(cluster) = &state.args.gateway.cluster {
                let _ = cluster.cast(super::cluster::ClusterMsg::ForgetLocal);
            }
            state.sessions = spawn_sessions(&state.args, myself.get_cell()).await?;
        }
        Ok(())
    }
}

async fn spawn_cluster(
    args: &RootArgs,
    supervisor: ActorCell,
) -> Result<ActorCell, ActorProcessingErr> {
    let (Some(setup), Some(slot)) = (&args.cluster, &args.gateway.cluster) else {
        return Err("spawn_cluster called for a node without a cluster".into());
    };
    let cluster = Cluster::spawn(
        ClusterArgs {
            config: setup.config.clone(),
            node: setup.node.clone(),
            client: setup.client.clone(),
            router: args.gateway.router.clone(),
            sessions: args.sessions.clone(),
            restrictions: Arc::clone(&args.gateway.restrictions),
        },
        supervisor,
    )
    .await?;
    slot.set(cluster.clone());
    Ok(cluster.get_cell())
}

async fn spawn_router(
    args: &RootArgs,
    supervisor: ActorCell,
) -> Result<ActorCell, ActorProcessingErr> {
    let router = Router::spawn(
        RouterArgs {
            sessions: args.sessions.clone(),
            cluster: args.gateway.cluster.clone(),
            storage: args.gateway.storage.clone(),
            metrics: Arc::clone(&args.gateway.metrics),
            announced: Arc::clone(&args.gateway.announced),
            push: args.gateway.push.clone(),
        },
        supervisor,
    )
    .await?;
    args.gateway.router.set(router.clone());
    Ok(router.get_cell())
}

async fn spawn_persistence(
    args: &RootArgs,
    supervisor: ActorCell,
) -> Result<ActorCell, ActorProcessingErr> {
    let persistence = Persistence::spawn(
        PersistenceArgs {
            config: args.storage.clone(),
            endpoints: args.endpoint.clone(),
            outbox: Arc::clone(&args.gateway.outbox),
            link: args.gateway.storage.clone(),
            myself_slot: args.gateway.persistence.clone(),
            router: args.gateway.router.clone(),
            metrics: Arc::clone(&args.gateway.metrics),
            member_cache: Arc::clone(&args.gateway.member_cache),
            live: Arc::clone(&args.gateway.live),
            committed: Arc::clone(&args.gateway.committed),
            restrictions: Arc::clone(&args.gateway.restrictions),
        },
        supervisor,
    )
    .await?;
    Ok(persistence.get_cell())
}

async fn spawn_sessions(
    args: &RootArgs,
    supervisor: ActorCell,
) -> Result<ActorCell, ActorProcessingErr> {
    let sessions = SessionSupervisor::spawn(
        SessionSupervisorArgs {
            gateway: Arc::clone(&args.gateway),
            config: args.session.clone(),
        },
        supervisor,
    )
    .await?;
    args.sessions.set(sessions.clone());
    Ok(sessions.get_cell())
}
