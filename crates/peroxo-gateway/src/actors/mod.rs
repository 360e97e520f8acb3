//! The supervised actor tree of a gateway node.
//!
//! ```text
//! RootSupervisor
//! ├── Cluster           (clustered nodes only) the NATS link to the other gateway nodes
//! ├── Persistence       gRPC client of the storage service: batching, outbox, reconnect
//! ├── Router            (tenant, user) → live sessions, presence, typing
//! └── SessionSupervisor
//!     └── Session × N   one per WebSocket
//! ```
//!
//! Actors that get restarted are reached through an [`ActorSlot`], which always holds the
//! current incarnation, so nobody keeps sending to a dead one.

pub mod cluster;
pub mod context;
pub mod conversation_commands;
pub mod outbox;
pub mod persistence;
pub mod push;
pub mod root;
pub mod router;
pub mod session;
pub mod session_supervisor;

use std::sync::{Arc, RwLock};

use ractor::{ActorRef, Message, MessagingErr};

/// The current incarnation of a restartable actor. Cheap to clone; clones see replacements.
#[derive(Debug)]
pub struct ActorSlot<M: Message> {
    current: Arc<RwLock<Option<ActorRef<M>>>>,
}

impl<M: Message> Clone for ActorSlot<M> {
    fn clone(&self) -> Self {
        Self {
            current: Arc::clone(&self.current),
        }
    }
}

impl<M: Message> Default for ActorSlot<M> {
    fn default() -> Self {
        Self {
            current: Arc::new(RwLock::new(None)),
        }
    }
}

impl<M: Message> ActorSlot<M> {
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.current.read().expect("actor slot poisoned").clone()
    }

    pub fn set(&self, actor: ActorRef<M>) {
        *self.current.write().expect("actor slot poisoned") = Some(actor);
    }

    /// Sends `message` to the current incarnation. Fails when there is none or it has stopped.
    pub fn cast(&self, message: M) -> Result<(), MessagingErr<M>> {
        match self.get() {
            Some(actor) => actor.cast(message),
            None => Err(MessagingErr::SendErr(message)),
        }
    }
}
