//! Webhooks: each `[[webhooks.endpoints]]` receives its tenant's event feed as signed HTTP
//! POSTs, in commit order, at least once.
//!
//! One task per endpoint, so a slow or failing endpoint delays only itself: never another
//! endpoint, another tenant or the chat path (the feed is written by storage in the
//! transactions that commit messages; nothing here is on their way). An endpoint's cursor lives
//! in storage under a lease ([`MessageStore::claim_consumer`]), so in a cluster one node at a
//! time delivers to it; a node that dies hands it over when its lease runs out, and the next
//! holder starts after the last batch the endpoint acknowledged. A batch delivered but not yet
//! recorded when a node dies is delivered again: endpoints dedupe by event id. A busy endpoint
//! records its cursor every `RECORD_INTERVAL` (an idle one at once), so a crash redelivers
//! at most that much.
//!
//! A delivery carries up to `webhooks.max_batch` events. It is retried with exponential
//! backoff and jitter until `webhooks.max_attempts`; then it is recorded as dead (a
//! `webhook.failed` event in the feed, `peroxo_webhook_dead_letters_total`) and the endpoint
//! moves on. The signature scheme is in docs/API.md.
//!
//! [`MessageStore::claim_consumer`]: peroxo_storage::MessageStore::claim_consumer

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::actors::context::GatewayContext;
use crate::telemetry::{WebhookMetrics, seconds};
use peroxo_config::{WebhookEndpoint, WebhooksConfig};
use peroxo_protocol::outbox::{ConsumerClaim, NewOutboxEvent, OutboxEvent, OutboxKind, OutboxPage};
use peroxo_storage::EventsQuery;
use peroxo_storage::grpc::{CallError, StorageClient};

/// How often an idle endpoint looks for events committed by other nodes (this node's own
/// commits wake it at once).
const IDLE_POLL: Duration = Duration::from_millis(250);
/// After a delivery that did not fill a batch, how long an endpoint lets events gather before
/// it reads the feed again: under a steady load, a few deliveries of many events cost the node
/// less than one delivery per commit, for at most this much more latency.
const GATHER: Duration = Duration::from_millis(10);
/// How often a busy endpoint records the cursor it reached (an idle one records at once).
const RECORD_INTERVAL: Duration = Duration::from_millis(200);
/// How long an endpoint waits before trying again after storage failed it.
const STORAGE_PAUSE: Duration = Duration::from_secs(1);

/// The header names of a delivery.
pub const SIGNATURE_HEADER: &str = "PerOXO-Signature";
pub const TIMESTAMP_HEADER: &str = "PerOXO-Timestamp";
pub const WEBHOOK_HEADER: &str = "PerOXO-Webhook";

/// The delivery tasks of a node's endpoints.
pub struct Webhooks {
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Webhooks {
    /// Starts one task per endpoint; `node` names this node's leases.
    pub fn start(
        config: &WebhooksConfig,
        node: &str,
        gateway: &Arc<GatewayContext>,
    ) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for endpoint in &config.endpoints {
            let client = crate::outbound_http::client_builder()
                .map_err(|e| anyhow::anyhow!("webhook client: {e}"))?
                .timeout(config.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?;
            let worker = Endpoint {
                metrics: gateway.metrics.webhook(&endpoint.name),
                kinds: (!endpoint.events.is_empty()).then(|| {
                    endpoint
                        .events
                        .iter()
                        .filter_map(|k| OutboxKind::parse(k))
                        .collect()
                }),
                consumer: format!("webhook:{}", endpoint.name),
                endpoint: endpoint.clone(),
                settings: config.clone(),
                http: client,
                holder: node.to_owned(),
                gateway: Arc::clone(gateway),
            };
            tasks.push(tokio::spawn(worker.run(stop.clone())));
        }
        Ok(Self { tasks, stop })
    }

    /// Stops every delivery; a batch in flight is delivered again by whoever holds the
    /// endpoint next.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// One endpoint's delivery.
struct Endpoint {
    endpoint: WebhookEndpoint,
    settings: WebhooksConfig,
    /// The kinds it receives; `None`: all but `webhook.failed`.
    kinds: Option<HashSet<OutboxKind>>,
    /// The name of its cursor in storage.
    consumer: String,
    http: reqwest::Client,
    /// This node, as the holder of leases.
    holder: String,
    gateway: Arc<GatewayContext>,
    metrics: WebhookMetrics,
}

/// Why delivering stopped while the lease was held.
enum Interrupted {
    /// Another node holds the endpoint now.
    LeaseLost,
    Storage(CallError),
    Stopped,
}

impl From<CallError> for Interrupted {
    fn from(error: CallError) -> Self {
        Interrupted::Storage(error)
    }
}

impl Endpoint {
    async fn run(self, stop: CancellationToken) {
        loop {
            if stop.is_cancelled() {
                return;
            }
            let pause = match self.gateway.storage.client() {
                None => STORAGE_PAUSE,
                Some(client) => match self.claim(&client).await {
                    Ok(Some(cursor)) => {
                        self.metrics.holding.set(1.0);
                        let outcome = self.deliver_while_held(&client, cursor, &stop).await;
                        self.metrics.holding.set(0.0);
                        match outcome {
                            Interrupted::Stopped => return,
                            Interrupted::LeaseLost => self.settings.lease / 3,
                            Interrupted::Storage(error) => {
                                tracing::warn!(webhook = %self.endpoint.name, %error, "webhook paused: storage failed");
                                STORAGE_PAUSE
                            }
                        }
                    }
                    // Another node delivers; look again before its lease could run out.
                    Ok(None) => self.settings.lease / 3,
                    Err(_) => STORAGE_PAUSE,
                },
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Claims or renews this node's lease; the cursor when held.
    async fn claim(&self, client: &StorageClient) -> Result<Option<u64>, CallError> {
        let lease = client
            .claim_consumer(ConsumerClaim {
                tenant: self.endpoint.tenant.clone(),
                consumer: self.consumer.clone(),
                holder: self.holder.clone(),
                ttl_ms: u64::try_from(self.settings.lease.as_millis()).unwrap_or(u64::MAX),
                now_ms: now_ms(),
            })
            .await?;
        Ok(lease.map(|l| l.cursor))
    }

    /// Delivers batch after batch from `cursor` while this node holds the lease. The cursor
    /// reached is recorded in storage when the endpoint is idle and otherwise at most every
    /// [`RECORD_INTERVAL`], so a busy endpoint adds a few writes per second, not one per
    /// batch; a node that dies between two records has the batches since delivered again.
    async fn deliver_while_held(
        &self,
        client: &StorageClient,
        mut cursor: u64,
        stop: &CancellationToken,
    ) -> Interrupted {
        let mut recorded = cursor;
        let mut record_at = Instant::now() + RECORD_INTERVAL;
        let mut renew_at = Instant::now() + self.settings.lease / 3;
        let mut read_at = Instant::now();
        loop {
            if Instant::now() < read_at {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep_until(read_at) => {}
                }
            }
            if stop.is_cancelled() {
                let _ = self.record(client, cursor, &mut recorded).await;
                return Interrupted::Stopped;
            }
            if Instant::now() >= renew_at {
                match self.claim(client).await {
                    Ok(Some(_)) => renew_at = Instant::now() + self.settings.lease / 3,
                    Ok(None) => return Interrupted::LeaseLost,
                    Err(error) => return Interrupted::Storage(error),
                }
            }
            // Armed before the read, so a commit between the read and the wait is not missed.
            let committed = self.gateway.committed.notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            let page = match client
                .events(EventsQuery {
                    tenant: self.endpoint.tenant.clone(),
                    after: cursor,
                    limit: self.settings.max_batch,
                })
                .await
            {
                Ok(page) => page,
                Err(error) => return Interrupted::Storage(error),
            };
            if page.pruned_until > cursor {
                tracing::warn!(webhook = %self.endpoint.name, cursor, pruned_until = page.pruned_until, "events were deleted by retention before this webhook got them");
            }
            if page.events.is_empty() {
                if let Err(interrupted) = self.record(client, cursor, &mut recorded).await {
                    return interrupted;
                }
                tokio::select! {
                    () = stop.cancelled() => return Interrupted::Stopped,
                    () = committed => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
            match self.deliver_page(client, &page, &mut renew_at, stop).await {
                Ok(()) => {}
                Err(Interrupted::Stopped) => {
                    let _ = self.record(client, cursor, &mut recorded).await;
                    return Interrupted::Stopped;
                }
                Err(interrupted) => return interrupted,
            }
            cursor = page.next_after;
            self.metrics.cursor.set(cursor as f64);
            if page.events.len() < self.settings.max_batch as usize {
                read_at = Instant::now() + GATHER;
            }
            if Instant::now() >= record_at {
                if let Err(interrupted) = self.record(client, cursor, &mut recorded).await {
                    return interrupted;
                }
                record_at = Instant::now() + RECORD_INTERVAL;
            }
        }
    }

    /// Records `cursor` in storage unless it is there already; `LeaseLost` when another node
    /// took the endpoint meanwhile.
    async fn record(
        &self,
        client: &StorageClient,
        cursor: u64,
        recorded: &mut u64,
    ) -> Result<(), Interrupted> {
        if cursor <= *recorded {
            return Ok(());
        }
        let held = client
            .advance_consumer(
                self.endpoint.tenant.clone(),
                self.consumer.clone(),
                self.holder.clone(),
                cursor,
            )
            .await?;
        if !held {
            return Err(Interrupted::LeaseLost);
        }
        *recorded = cursor;
        Ok(())
    }

    /// Delivers the events of `page` this endpoint takes, retrying until it succeeds or gives
    /// up (then records the batch as dead).
    async fn deliver_page(
        &self,
        client: &StorageClient,
        page: &OutboxPage,
        renew_at: &mut Instant,
        stop: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let events: Vec<&OutboxEvent> = page.events.iter().filter(|e| self.takes(e)).collect();
        if events.is_empty() {
            return Ok(());
        }
        let body = serde_json::json!({
            "webhook": self.endpoint.name,
            "tenant": self.endpoint.tenant,
            "events": events.iter().map(|e| e.feed_json()).collect::<Vec<_>>(),
        })
        .to_string();
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.settings.retry_initial)
            .with_max_delay(self.settings.retry_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        let mut last_error = String::new();
        for attempt in 1..=self.settings.max_attempts {
            if Instant::now() >= *renew_at {
                match self.claim(client).await {
                    Ok(Some(_)) => *renew_at = Instant::now() + self.settings.lease / 3,
                    Ok(None) => return Err(Interrupted::LeaseLost),
                    Err(error) => return Err(Interrupted::Storage(error)),
                }
            }
            let started = Instant::now();
            match self.post(&body).await {
                Ok(()) => {
                    self.metrics.delivered(events.len(), started.elapsed());
                    let now = now_ms();
                    for event in &events {
                        let lag = Duration::from_millis(u64::try_from(now - event.ts).unwrap_or(0));
                        self.metrics.lag.record(seconds(lag));
                    }
                    return Ok(());
                }
                Err(error) => {
                    self.metrics.failed(started.elapsed());
                    tracing::debug!(webhook = %self.endpoint.name, attempt, %error, "webhook delivery failed");
                    last_error = error;
                }
            }
            if attempt == self.settings.max_attempts {
                break;
            }
            let delay = backoff.next().unwrap_or(self.settings.retry_max);
            tokio::select! {
                () = stop.cancelled() => return Err(Interrupted::Stopped),
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.dead_letter(client, &events, &last_error).await
    }

    /// Whether this endpoint receives `event`: the kinds it asked for (all when it named none,
    /// but records of failed deliveries), never the record of its own failures.
    fn takes(&self, event: &OutboxEvent) -> bool {
        match &self.kinds {
            Some(kinds) => {
                kinds.contains(&event.kind)
                    && !(event.kind == OutboxKind::WebhookFailed && self.is_own_failure(event))
            }
            None => event.kind != OutboxKind::WebhookFailed,
        }
    }

    fn is_own_failure(&self, event: &OutboxEvent) -> bool {
        serde_json::from_str::<serde_json::Value>(&event.payload)
            .is_ok_and(|p| p["webhook"] == self.endpoint.name.as_str())
    }

    /// One signed POST; a 2xx status is success.
    async fn post(&self, body: &str) -> Result<(), String> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string();
        let response = self
            .http
            .post(&self.endpoint.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(WEBHOOK_HEADER, &self.endpoint.name)
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(
                SIGNATURE_HEADER,
                signature(self.endpoint.secret.expose(), &timestamp, body),
            )
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", response.status()))
        }
    }

    /// Records a batch the endpoint never took as a `webhook.failed` event, and moves on.
    async fn dead_letter(
        &self,
        client: &StorageClient,
        events: &[&OutboxEvent],
        error: &str,
    ) -> Result<(), Interrupted> {
        let (first, last) = (events[0].id, events[events.len() - 1].id);
        tracing::error!(webhook = %self.endpoint.name, first, last, %error, "webhook gave up on a batch");
        self.metrics.dead_letters.increment(1);
        let payload = serde_json::json!({
            "webhook": self.endpoint.name,
            "first_id": first.to_string(),
            "last_id": last.to_string(),
            "events": events.len(),
            "attempts": self.settings.max_attempts,
            "error": error,
        });
        client
            .record_events(
                self.endpoint.tenant.clone(),
                vec![NewOutboxEvent {
                    kind: OutboxKind::WebhookFailed,
                    conversation_id: String::new(),
                    payload: payload.to_string(),
                }],
            )
            .await?;
        Ok(())
    }
}

/// The `PerOXO-Signature` of a delivery: `v1=` and the hex HMAC-SHA256, under the endpoint's
/// secret, of the timestamp, a dot and the body.
pub fn signature(secret: &str, timestamp: &str, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn now_ms() -> i64 {
    peroxo_protocol::now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_body() {
        // The documented example (docs/API.md): the same inputs give the same header.
        let sig = signature("whsec_example_secret", "1764700000", r#"{"events":[]}"#);
        assert!(sig.starts_with("v1="));
        assert_eq!(sig.len(), 3 + 64);
        assert_ne!(
            sig,
            signature("whsec_example_secret", "1764700001", r#"{"events":[]}"#)
        );
        assert_ne!(
            sig,
            signature("whsec_other_secret__", "1764700000", r#"{"events":[]}"#)
        );
    }
}
