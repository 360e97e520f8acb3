//! The `[webhooks]` and `[push]` sections: where the event feed is pushed to, and when a
//! recipient who did not get a message counts as needing a push notification.
//!
//! Each `[[webhooks.endpoints]]` receives its tenant's events (those its `events` list names,
//! or all) as signed HTTP POSTs, in commit order, at least once. `[push]` decides the `notify`
//! events: a recipient with no live session that got the message within `push.delay`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration_within, human_duration, within};
use crate::Secret;
use peroxo_protocol::domain::validate_id;
use peroxo_protocol::outbox::OutboxKind;

/// The shortest secret a webhook may be signed with.
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    pub endpoints: Vec<WebhookEndpoint>,
    /// How long one delivery may take before it counts as failed.
    #[serde(with = "human_duration")]
    pub timeout: Duration,
    /// Deliveries of one batch tried at most, the first included, before the batch is
    /// recorded as dead (a `webhook.failed` event) and the endpoint moves on.
    pub max_attempts: u32,
    /// The wait before the first retry; each next one doubles, with jitter, up to `retry_max`.
    #[serde(with = "human_duration")]
    pub retry_initial: Duration,
    #[serde(with = "human_duration")]
    pub retry_max: Duration,
    /// The most events one delivery carries.
    pub max_batch: u32,
    /// How long a node holds an endpoint's delivery once claimed, renewed while it delivers;
    /// a node that dies hands it over after this.
    #[serde(with = "human_duration")]
    pub lease: Duration,
}

/// One `[[webhooks.endpoints]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    /// Unique among the endpoints; names its cursor in storage, its metrics and its logs.
    pub name: String,
    /// The tenant whose events it receives.
    pub tenant: String,
    /// An `http://` or `https://` URL.
    pub url: String,
    /// The HMAC-SHA256 key deliveries are signed with (at least 16 bytes).
    pub secret: Secret,
    /// The kinds of events it receives (`message.created`, `notify`, ...); empty: all.
    #[serde(default)]
    pub events: Vec<String>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            timeout: Duration::from_secs(5),
            max_attempts: 10,
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            max_batch: 100,
            lease: Duration::from_secs(15),
        }
    }
}

impl WebhooksConfig {
    /// The checks of `[webhooks]`.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let at = |field: &str| format!("webhooks.endpoints[{i}].{field}");
            validate_id(&endpoint.name).map_err(|e| ConfigError::new(at("name"), e))?;
            if self.endpoints[..i].iter().any(|e| e.name == endpoint.name) {
                return Err(ConfigError::new(at("name"), "two endpoints have this name"));
            }
            validate_id(&endpoint.tenant).map_err(|e| ConfigError::new(at("tenant"), e))?;
            if !(endpoint.url.starts_with("http://") || endpoint.url.starts_with("https://")) {
                return Err(ConfigError::new(
                    at("url"),
                    "must be an http:// or https:// URL",
                ));
            }
            if endpoint.secret.expose().len() < MIN_WEBHOOK_SECRET_BYTES {
                return Err(ConfigError::new(
                    at("secret"),
                    format!("must be at least {MIN_WEBHOOK_SECRET_BYTES} bytes"),
                ));
            }
            for kind in &endpoint.events {
                if OutboxKind::parse(kind).is_none() {
                    return Err(ConfigError::new(
                        at("events"),
                        format!("{kind:?} is not an event kind (docs/API.md lists them)"),
                    ));
                }
            }
        }
        duration_within(
            "webhooks.timeout",
            self.timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;
        within("webhooks.max_attempts", self.max_attempts, 1, 100)?;
        duration_within(
            "webhooks.retry_initial",
            self.retry_initial,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )?;
        duration_within(
            "webhooks.retry_max",
            self.retry_max,
            self.retry_initial,
            Duration::from_secs(86_400),
        )?;
        within("webhooks.max_batch", self.max_batch, 1, 1_000)?;
        duration_within(
            "webhooks.lease",
            self.lease,
            Duration::from_secs(1),
            Duration::from_secs(600),
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// A recipient none of whose sessions got a message within this time gets a `notify`
    /// event; "0s" turns `notify` off.
    #[serde(with = "human_duration")]
    pub delay: Duration,
    /// Recipients waiting for their delay at most, per node; beyond, the oldest are decided
    /// at once.
    pub max_pending: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(5),
            max_pending: 100_000,
        }
    }
}

impl PushConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        duration_within(
            "push.delay",
            self.delay,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        within("push.max_pending", self.max_pending, 1, 10_000_000)
    }
}
