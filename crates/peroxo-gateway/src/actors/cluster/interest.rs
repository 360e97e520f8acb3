//! Interest subscriptions: this node's subscription to the subject of each user it holds a
//! session of, and the task that forwards what arrives there to the Router.
//!
//! [`Interests`] counts each user's local sessions and owns one forwarding task per user;
//! dropping the task drops its subscriber, which unsubscribes. The forwarding task hands the
//! Router the messages, typing indicators and resync requests of other nodes, and ignores
//! what this node published itself.

use std::collections::HashMap;

use futures_util::StreamExt;
use peroxo_protocol::CloseCause;
use peroxo_protocol::domain::UserKey;
use tokio::task::JoinHandle;

use super::envelope::Envelope;
use crate::actors::ActorSlot;
use crate::actors::router::{Protocols, RouterMsg};
use crate::connection::Droppable;

/// Local sessions per interested user, and the task forwarding the user's subject.
#[derive(Debug, Default)]
pub(super) struct Interests {
    by_user: HashMap<UserKey, (usize, JoinHandle<()>)>,
}

impl Interests {
    /// Counts one more session of `user` if this node already subscribes to the user's
    /// subject; returns whether it did.
    pub(super) fn add_session(&mut self, user: &UserKey) -> bool {
        match self.by_user.get_mut(user) {
            Some((count, _)) => {
                *count += 1;
                true
            }
            None => false,
        }
    }

    /// Records `user`'s new subscription, forwarded by `task`, with its first session.
    pub(super) fn subscribed(&mut self, user: UserKey, task: JoinHandle<()>) {
        self.by_user.insert(user, (1, task));
    }

    /// Counts one session of `user` less; with the last one the subscription goes.
    pub(super) fn remove_session(&mut self, user: &UserKey) {
        if let Some((count, _)) = self.by_user.get_mut(user) {
            *count -= 1;
            if *count == 0
                && let Some((_, task)) = self.by_user.remove(user)
            {
                // Dropping the subscriber unsubscribes.
                task.abort();
            }
        }
    }

    /// Drops every subscription.
    pub(super) fn clear(&mut self) {
        for (_, (_, task)) in self.by_user.drain() {
            task.abort();
        }
    }
}

impl Drop for Interests {
    /// A failed Cluster leaves no forwarding task behind (its successor subscribes again).
    fn drop(&mut self) {
        self.clear();
    }
}

/// Forwards every envelope arriving on `user`'s subject to the Router, until the
/// subscription ends; `node` is this node, whose own envelopes are ignored.
pub(super) fn spawn_forwarder(
    mut subscriber: async_nats::Subscriber,
    router: ActorSlot<RouterMsg>,
    node: String,
    user: UserKey,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            let Some(envelope) = Envelope::decode(&message.payload) else {
                continue;
            };
            forward(&router, &node, &user, envelope);
        }
    })
}

/// Hands an envelope from `user`'s subject to the Router, unless this node sent it.
fn forward(router: &ActorSlot<RouterMsg>, node: &str, user: &UserKey, envelope: Envelope) {
    match envelope {
        Envelope::Message { origin, message } if origin != node => {
            let _ = router.cast(RouterMsg::RemoteDeliver {
                user: user.clone(),
                message: message.into(),
            });
        }
        Envelope::Typing {
            origin,
            tenant,
            from,
            to,
        } if origin != node => {
            let _ = router.cast(RouterMsg::RemoteTyping {
                from: UserKey::new(tenant, from),
                to,
            });
        }
        Envelope::Frame {
            origin,
            text,
            durable,
            min_protocol,
            max_protocol,
        } if origin != node => {
            let _ = router.cast(RouterMsg::RemoteFrame {
                user: user.clone(),
                text: text.into(),
                droppable: if durable {
                    Droppable::No
                } else {
                    Droppable::Yes
                },
                protocols: Protocols {
                    min: min_protocol,
                    max: max_protocol.unwrap_or(u32::MAX),
                },
            });
        }
        Envelope::Resync { origin } if origin != node => {
            let _ = router.cast(RouterMsg::SyncHint(vec![user.clone()]));
        }
        Envelope::Disconnect {
            origin,
            code,
            reason,
        } if origin != node => {
            let _ = router.cast(RouterMsg::Disconnect {
                user: user.clone(),
                cause: CloseCause::Disconnected { code },
                reason,
                reply: None,
            });
        }
        _ => {}
    }
}
