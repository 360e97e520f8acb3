//! The push hand-off: a `notify` event in the feed for each recipient who did not get a
//! message in time, so the application's backend can send a push notification (PerOXO does
//! not call APNs or FCM itself).
//!
//! The node that commits a message decides, once, for every recipient: the Router, as it
//! delivers, offers each recipient with no live session on any node of the cluster
//! ([`PushQueue::offer`]). After `push.delay` the recipient is looked at again: still offline
//! on every node (it did not come back to read the message), it gets a `notify` event with
//! what a push needs: the conversation, the sender, the message, a text preview when
//! `events.text_preview_chars` allows one, and the recipient's unread total for the badge.
//! A recipient online when the message was delivered got it then, and is not offered.
//!
//! The waiting recipients are kept in memory, at most `push.max_pending` per node (beyond,
//! new ones are skipped and counted in `peroxo_push_skipped_total`); a node that stops loses
//! the decisions it had not made yet.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::context::GatewayContext;
use super::router::RouterMsg;
use peroxo_config::PushConfig;
use peroxo_protocol::conversation::ConversationsQuery;
use peroxo_protocol::domain::{StoredMessage, UserKey};
use peroxo_protocol::outbox::{NewOutboxEvent, OutboxKind, preview};

/// How long a decision waits for the Router's answer about who is online.
const ROUTER_WAIT_MS: u64 = 5_000;

/// A recipient waiting for its delay.
#[derive(Debug)]
pub struct Candidate {
    due: Instant,
    user: UserKey,
    conversation_id: String,
    message_id: u64,
    from: String,
    /// The message's text, cut to the preview length (`None`: no preview).
    preview: Option<String>,
}

/// Where the Router offers recipients it could not deliver to. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PushQueue {
    sender: mpsc::Sender<Candidate>,
    delay: Duration,
    preview_chars: usize,
    skipped: metrics::Counter,
}

impl PushQueue {
    /// Offers `user`, a recipient of `message` with no live session anywhere.
    pub fn offer(&self, user: UserKey, message: &StoredMessage) {
        let preview = preview(&message.text, self.preview_chars).map(str::to_owned);
        let candidate = Candidate {
            due: Instant::now() + self.delay,
            user,
            conversation_id: message.conversation_id(),
            message_id: message.message_id,
            from: message.sender.clone(),
            preview,
        };
        if self.sender.try_send(candidate).is_err() {
            self.skipped.increment(1);
        }
    }
}

/// The queue the Router offers recipients to, and its receiving end for [`PushHandoff`];
/// `None` when `push.delay` is 0 (no `notify` events).
pub fn queue(
    config: &PushConfig,
    preview_chars: u32,
    skipped: metrics::Counter,
) -> Option<(PushQueue, mpsc::Receiver<Candidate>)> {
    if config.delay.is_zero() {
        return None;
    }
    let (sender, receiver) = mpsc::channel(config.max_pending);
    let queue = PushQueue {
        sender,
        delay: config.delay,
        preview_chars: preview_chars as usize,
        skipped,
    };
    Some((queue, receiver))
}

/// The task that decides the candidates when their delay has passed.
pub struct PushHandoff {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl PushHandoff {
    pub fn start(receiver: mpsc::Receiver<Candidate>, gateway: &Arc<GatewayContext>) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(receiver, Arc::clone(gateway), stop.clone()));
        Self { task, stop }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn run(
    mut receiver: mpsc::Receiver<Candidate>,
    gateway: Arc<GatewayContext>,
    stop: CancellationToken,
) {
    // Every candidate waits the same delay, so arrival order is due order.
    let mut waiting: VecDeque<Candidate> = VecDeque::new();
    loop {
        let next_due = waiting.front().map(|c| c.due);
        tokio::select! {
            () = stop.cancelled() => return,
            received = receiver.recv() => match received {
                Some(candidate) => waiting.push_back(candidate),
                None => return,
            },
            () = sleep_until(next_due) => {
                let now = Instant::now();
                let due: Vec<Candidate> = std::iter::from_fn(|| {
                    waiting.front().filter(|c| c.due <= now)?;
                    waiting.pop_front()
                })
                .collect();
                decide(&gateway, due).await;
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Records a `notify` for each of `due` still offline everywhere.
async fn decide(gateway: &GatewayContext, due: Vec<Candidate>) {
    let mut by_tenant: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for candidate in due {
        by_tenant
            .entry(candidate.user.tenant.clone())
            .or_default()
            .push(candidate);
    }
    for (tenant, candidates) in by_tenant {
        let offline = still_offline(gateway, &tenant, candidates).await;
        if offline.is_empty() {
            continue;
        }
        let Some(client) = gateway.storage.client() else {
            tracing::warn!(
                tenant,
                count = offline.len(),
                "notify events not recorded: storage unreachable"
            );
            continue;
        };
        let mut badges: BTreeMap<String, u64> = BTreeMap::new();
        let mut events = Vec::with_capacity(offline.len());
        for candidate in offline {
            let badge = match badges.get(&candidate.user.user) {
                Some(badge) => *badge,
                None => {
                    let query = ConversationsQuery {
                        user: candidate.user.clone(),
                        before: None,
                        limit: 1,
                    };
                    let badge = client
                        .conversations(query)
                        .await
                        .map_or(0, |page| page.total_unread);
                    badges.insert(candidate.user.user.clone(), badge);
                    badge
                }
            };
            let mut payload = serde_json::json!({
                "user": candidate.user.user,
                "conversation_id": candidate.conversation_id,
                "message_id": candidate.message_id.to_string(),
                "from": candidate.from,
                "unread_total": badge,
            });
            if let Some(preview) = candidate.preview {
                payload["text"] = serde_json::Value::String(preview);
            }
            events.push(NewOutboxEvent {
                kind: OutboxKind::Notify,
                conversation_id: candidate.conversation_id,
                payload: payload.to_string(),
            });
        }
        match client.record_events(tenant.clone(), events).await {
            Ok(_) => gateway.committed.notify_waiters(),
            Err(error) => tracing::warn!(tenant, %error, "notify events not recorded"),
        }
    }
}

/// The candidates whose users are online on no node now.
async fn still_offline(
    gateway: &GatewayContext,
    tenant: &str,
    candidates: Vec<Candidate>,
) -> Vec<Candidate> {
    let users: Vec<String> = candidates.iter().map(|c| c.user.user.clone()).collect();
    let Some(router) = gateway.router.get() else {
        return candidates;
    };
    let online = ractor::call_t!(
        router,
        |reply| RouterMsg::Presence {
            tenant: tenant.to_owned(),
            users,
            reply,
        },
        ROUTER_WAIT_MS
    );
    match online {
        Ok(online) => candidates
            .into_iter()
            .zip(online)
            .filter_map(|(candidate, online)| (!online).then_some(candidate))
            .collect(),
        // Without an answer, nobody is known to be online: a push too many beats one missed.
        Err(_) => candidates,
    }
}
