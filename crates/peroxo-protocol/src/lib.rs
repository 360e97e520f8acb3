//! # PerOXO's client protocol
//!
//! What a client and a gateway agree on, with no I/O: the ids and plain message types every
//! other crate speaks ([`domain`]), the JSON frames of wire protocol v1 in both directions
//! ([`Command`] with the server's [`decode`] and a client's [`Command::encode`];
//! [`ServerFrame`] with the server's [`ServerFrame::encode`] and a client's
//! [`ServerFrame::decode`]) and the limits that are part of the protocol ([`limits`]).
//! `docs/PROTOCOL.md` is the normative description; keep the two in step.
//!
//! This is the only crate that knows the protocol's JSON. Its tests also derive the JSON Schema
//! of the frames, committed as `docs/protocol.schema.json` for clients in other languages
//! (`schema`).

mod close;
pub mod conversation;
pub mod domain;
pub mod event;
pub mod lifecycle;
pub mod limits;
pub mod outbox;
pub mod restriction;
#[cfg(test)]
mod schema;
mod wire;

pub use close::{CloseCause, DISCONNECTED_CODE};
pub use wire::*;
