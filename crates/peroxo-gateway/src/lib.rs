//! # PerOXO's gateway node
//!
//! Clients connect over WebSocket; the gateway authenticates them, routes messages between
//! them, tracks presence, and commits every message through the storage service (gRPC)
//! before anyone sees it. Several nodes serve as one when joined through NATS.
//!
//! # Layout
//!
//! - [`server`]: starts and stops a node ([`Gateway`]).
//! - [`http`]: the axum router; it authenticates upgrades and hands sockets over, nothing else.
//! - [`api`]: the server API (`/api/v1/`), an application backend's door: API keys, sends,
//!   groups, what a user sees, presence, disconnects.
//! - [`identity`]: who a connecting client is (JWT, or dev mode).
//! - [`admission`]: how many connections the node, and each user, may hold.
//! - [`live`]: the settings a reload changes while the node runs.
//! - [`outbound_http`]: the HTTP client for calls to other services (key sets, webhooks).
//! - [`rate_limit`]: the per-session command budget.
//! - [`restrictions`]: the bans and revoked tokens the node refuses at the door, in memory.
//! - [`connection`]: one client's WebSocket: the bounded outbound queue, reader and writer.
//! - [`actors`]: the supervised actor tree (RootSupervisor, Cluster, Persistence, Router,
//!   SessionSupervisor, Session).
//! - [`telemetry`]: the Prometheus metrics served at `/metrics`.
//! - [`webhooks`]: the event feed pushed to `[[webhooks.endpoints]]`, signed, at least once.
//!
//! The protocol's JSON lives in `peroxo-protocol`, the configuration in `peroxo-config`, and
//! the storage service (and its gRPC client) in `peroxo-storage`. This is the only crate that
//! knows NATS.

pub mod actors;
pub mod admission;
pub mod api;
pub mod connection;
pub mod http;
pub mod identity;
pub mod live;
pub mod outbound_http;
pub mod rate_limit;
pub mod restrictions;
pub mod server;
pub mod telemetry;
pub mod webhooks;

pub use server::Gateway;
