//! # PerOXO
//!
//! A real-time direct-messaging server: clients connect over WebSocket, the gateway routes
//! direct messages between users and tracks presence, and a storage service behind gRPC makes
//! every message durable before anyone sees it.
//!
//! # Layout
//!
//! - [`config`]: the typed configuration, validated before any port is bound.
//! - [`server`]: starts and stops a gateway node ([`server::Gateway`]) and the storage service
//!   ([`server::StoreServer`]).
//! - [`http`]: the axum router; it authenticates upgrades and hands sockets over, nothing else.
//! - [`identity`]: who a connecting client is (JWT, or dev mode).
//! - [`admission`]: how many connections the node, and each user, may hold.
//! - [`rate_limit`]: the per-session command budget.
//! - [`connection`]: one client's WebSocket: the bounded outbound queue, reader and writer.
//! - [`actors`]: the supervised actor tree (RootSupervisor, Cluster, Persistence, Router,
//!   SessionSupervisor, Session).
//! - [`protocol`]: wire protocol v1, the only module that knows JSON.
//! - [`storage`]: the storage service: backend contract, SQLite and PostgreSQL backends, gRPC
//!   server and client; the only module that knows protobuf.
//! - [`domain`]: the plain types everything else speaks.
//! - [`telemetry`]: the Prometheus metrics served at `/metrics`.
//! - [`bench`]: `peroxo bench`, the load generator that measures a running node.

pub mod actors;
pub mod admission;
pub mod bench;
pub mod config;
pub mod connection;
pub mod domain;
pub mod http;
pub mod identity;
pub mod protocol;
pub mod rate_limit;
pub mod server;
pub mod storage;
pub mod telemetry;

pub use config::Config;
pub use server::{Gateway, StoreServer};
