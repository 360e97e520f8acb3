//! Retention: the storage service's background task that deletes messages older than their
//! tenant's `max_age` (`[retention]`).
//!
//! A pass asks the backend which tenants have messages, then, for each tenant with a
//! `max_age`, deletes its messages committed before `now - max_age` in batches of
//! `retention.batch`, each its own short transaction, yielding between batches: the writes
//! of the hot path queue behind one batch at most, never behind a pass. A batch deletes the
//! messages, their entries in every stream (raising each stream's floor, the `pruned_until`
//! of `sync`), and their count in unread counts; a conversation whose last message went shows
//! no preview. Passes are idempotent and resumable: a pass that stops half-way leaves whole
//! batches, and the next one carries on from what is left.
//!
//! [`pass`] takes `now`, so tests can prune without waiting; [`run`] is the task that calls
//! it every `retention.interval`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use peroxo_config::RetentionConfig;
use tokio_util::sync::CancellationToken;

use crate::{MessageStore, StoreError};

/// One batch of a pass: delete up to `limit` of `tenant`'s messages committed before
/// `before_ts`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneBatch {
    pub tenant: String,
    /// Milliseconds since the Unix epoch.
    pub before_ts: i64,
    pub limit: u32,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Messages deleted.
    pub deleted: u64,
    /// Transactions it took (a batch that found nothing counts).
    pub batches: u64,
    /// Tenants whose messages it looked at.
    pub tenants: u64,
}

/// Retention's figures since the service started, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct RetentionStats {
    deleted_total: AtomicU64,
    passes: AtomicU64,
    /// When the last pass ended, in milliseconds since the Unix epoch (0: none yet).
    last_pass_ms: AtomicI64,
    last_pass_deleted: AtomicU64,
}

impl RetentionStats {
    /// Messages deleted by every pass so far.
    pub fn deleted_total(&self) -> u64 {
        self.deleted_total.load(Ordering::Relaxed)
    }

    /// Passes completed so far.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    /// When the last pass ended (ms since the Unix epoch; 0 before the first).
    pub fn last_pass_ms(&self) -> i64 {
        self.last_pass_ms.load(Ordering::Relaxed)
    }

    /// Messages the last pass deleted.
    pub fn last_pass_deleted(&self) -> u64 {
        self.last_pass_deleted.load(Ordering::Relaxed)
    }

    fn record(&self, report: &RetentionReport, ended_ms: i64) {
        self.deleted_total
            .fetch_add(report.deleted, Ordering::Relaxed);
        self.last_pass_deleted
            .store(report.deleted, Ordering::Relaxed);
        self.last_pass_ms.store(ended_ms, Ordering::Relaxed);
        self.passes.fetch_add(1, Ordering::Relaxed);
    }
}

/// One pass at time `now_ms`: every tenant's messages past its `max_age` go.
pub async fn pass<S: MessageStore>(
    store: &S,
    config: &RetentionConfig,
    now_ms: i64,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    if !config.enabled() {
        return Ok(report);
    }
    for tenant in store.message_tenants().await? {
        let Some(max_age) = config.max_age_of(&tenant) else {
            continue;
        };
        report.tenants += 1;
        let max_age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let batch = PruneBatch {
            tenant,
            before_ts: now_ms.saturating_sub(max_age_ms),
            limit: config.batch,
        };
        loop {
            let deleted = store.prune(batch.clone()).await?;
            report.deleted += deleted;
            report.batches += 1;
            if deleted < u64::from(batch.limit) {
                break;
            }
            // Let the writes that queued behind this batch go first.
            tokio::task::yield_now().await;
        }
    }
    Ok(report)
}

/// The background task: a pass at start and every `retention.interval` after, until `stop`.
/// A failed pass is logged and retried at the next interval.
pub(crate) async fn run<S: MessageStore>(
    store: S,
    config: RetentionConfig,
    stats: Arc<RetentionStats>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = pass(&store, &config, peroxo_protocol::domain::now_ms()) => outcome,
        };
        match outcome {
            Ok(report) => {
                stats.record(&report, peroxo_protocol::domain::now_ms());
                tracing::info!(
                    deleted = report.deleted,
                    batches = report.batches,
                    tenants = report.tenants,
                    elapsed_ms = millis(started.elapsed()),
                    "retention pass done"
                );
            }
            Err(error) => {
                tracing::warn!(%error, "retention pass failed; the next one carries on");
            }
        }
    }
}

fn millis(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}
