//! # A client of PerOXO's public protocol
//!
//! Two levels:
//!
//! - [`Connection`]: one WebSocket to one gateway node, typed both ways with the frame types
//!   of `peroxo-protocol` (the very types the server encodes and decodes), and no policy.
//! - [`Client`]: the *correct client* of docs/PROTOCOL.md. It keeps every send until it is
//!   acked and resends it with the same `client_msg_id` after reconnects and retryable errors
//!   (a `duplicate: true` ack is a success); it keeps the user's position in their stream
//!   (`last_seq`), notices gaps, syncs on a gap, on `sync_hint` and after reconnecting (paging
//!   while `has_more`), ignores repeats, and delivers every message of the stream exactly
//!   once, in seq order; it reconnects with exponential backoff and jitter chosen by the close
//!   code, over several nodes when given several; in JWT mode it sends `refresh` with a token
//!   from [`ClientConfig::fresh_token`] before the token's `exp`. Its [`Status`] has the
//!   TypeScript SDK's connection states (`clients/js`), except `offline`, which has no signal
//!   in a Rust process.
//!
//! A connection asks for protocol 2 with `protocol=2` in its URL's query string. The client
//! then also sends to groups (a group id as `to`), delivers the stream's events
//! ([`Event::StreamEvent`]) in seq order among its messages, and answers protocol 2's
//! commands sent with [`Client::request`]. Without it (protocol 1), the user's stream still
//! holds the group messages and events that other connections see; their seqs are passed over
//! once a sync shows they are not direct messages.
//!
//! With `protocol=3` it also changes committed messages: [`Client::change`] edits, deletes,
//! reacts and takes a reaction back ([`Change`]), repeated like a send until the server
//! answers with the message as it is after it ([`Changed`]; an edit keeps its own
//! `client_msg_id`, the others change nothing the second time); [`Client::submit_reply`] sends
//! a reply. The changes' events (`message_edited`, `message_deleted`, `reaction_added`,
//! `reaction_removed`) are entries of the stream like the others, and the messages it delivers
//! carry what protocol 3 says of them ([`Delivered::edited_ts`], [`Delivered::deleted`],
//! [`Delivered::reactions`], [`Delivered::reply_to`]).
//!
//! ## Quick start
//!
//! ```no_run
//! use peroxo_client::{Client, ClientConfig, Event};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // A node started with `peroxo serve --dev` takes the user from the query string.
//! let config = ClientConfig::new("ws://127.0.0.1:8080/ws?user=alice");
//! let (client, mut events) = Client::connect(config).await?;
//! let ack = client.send("bob", "hi").await?;
//! println!("committed as message {} (seq {})", ack.message_id, ack.seq);
//! while let Some(event) = events.next().await {
//!     if let Event::Message(message) = event {
//!         println!("#{} {} → {}: {}", message.seq, message.from, message.to, message.text);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `cargo run -p peroxo-client --example chat -- --url ws://127.0.0.1:8080/ws --user alice
//! --to bob --line hi` is the same as a program; `examples/echo_bot.rs` answers every direct
//! message. The crate's README.md says what the client guarantees, how to run both examples,
//! and how it corresponds to the TypeScript SDK.
//!
//! ## Layout
//!
//! - [`connection`]: open, send, receive, close; why a connection could not be opened
//!   ([`ConnectError`]) and how one ended ([`Disconnect`]).
//! - [`reconnect`]: what to do after each way a connection ends, the backoff, and why a
//!   client stopped ([`ClosedReason`]).
//! - `token`: when to refresh a JWT, read from its `exp`, and what to do when that fails.
//! - `stream`: the user's stream by seq (messages and events): gaps, repeats, delivery in
//!   order.
//! - `outbox`: the sends not acked yet and the changes not answered yet, and when each goes
//!   again.
//! - `state`: the correct client's decisions, with no I/O (unit-tested without a server).
//! - `client`: the [`Client`] handle, its [`Event`]s and the task that runs the connection.
//!
//! The application reads [`Events`]: the client does not read the socket further while the
//! events wait unread (see [`ClientConfig::events_capacity`]).

mod client;
pub mod connection;
mod outbox;
pub mod reconnect;
mod state;
mod stream;
mod token;

pub use client::{
    Ack, Change, Changed, Client, ClientConfig, ClientError, ErrorAbout, Event, Events, SendError,
    ServerError, Status, Submitted, SubmittedChange, TokenSource,
};
pub use connection::{
    ConnectError, ConnectOptions, Connection, Disconnect, Incoming, WebSocket, WebSocketConfig,
    Welcome,
};
pub use peroxo_protocol::{
    Command, CommandKind, ConversationView, DeletionView, ErrorCode, EventView, MessageView,
    QuoteView, ReactionView, ReqId, ServerFrame,
};
pub use reconnect::{Backoff, ClosedReason, NextStep};
pub use stream::{Delivered, DeliveredEvent, EntryId, Via};

/// The README's Rust examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
