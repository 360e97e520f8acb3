//! The system tests: PerOXO's processes started as `main` starts them (on port 0), driven
//! through the public protocol, the HTTP endpoints and the storage service's gRPC API. One
//! binary, one harness ([`common`]); one module per capability. The fault-injection suite is
//! the other test binary (`tests/faults`), because it runs its cases in order.

mod common;

mod auth;
mod bad_input;
mod cli;
mod client;
mod cluster;
mod conversations;
mod hostile_input;
mod lifecycle;
mod limits;
mod messaging;
mod moderation;
mod operations;
mod presence;
mod reload;
mod server_api;
mod storage_contract;
mod storage_outage;
mod supervision;
mod webhooks;
