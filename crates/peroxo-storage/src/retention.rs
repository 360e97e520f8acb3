//! Retention: the storage service's background task that deletes messages older than their
//! tenant's `max_age` (`[retention]`), and outbox events older than `events.retention`.
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
//! The outbox is pruned the same way ([`events_pass`]): per tenant, its oldest events in
//! batches of `retention.batch`, raising the feed's `pruned_until`. The task runs when either
//! kind of retention has work: messages when an age is set, events whenever `[events]` is on.
//!
//! [`pass`] and [`events_pass`] take `now`, so tests can prune without waiting; [`run`] is the
//! task that calls them every `retention.interval`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use peroxo_config::{EventsConfig, RetentionConfig};
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
    events_deleted_total: AtomicU64,
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

    /// Outbox events deleted by every pass so far.
    pub fn events_deleted_total(&self) -> u64 {
        self.events_deleted_total.load(Ordering::Relaxed)
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
        let batch = PruneBatch {
            tenant,
            before_ts: before(now_ms, max_age),
            limit: config.batch,
        };
        prune_tenant(&mut report, batch, |batch| store.prune(batch)).await?;
    }
    Ok(report)
}

/// One pass of the outbox at time `now_ms`: every tenant's events older than
/// `events.retention` go, in batches of `batch`.
pub async fn events_pass<S: MessageStore>(
    store: &S,
    events: &EventsConfig,
    batch: u32,
    now_ms: i64,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    for tenant in store.event_tenants().await? {
        let batch = PruneBatch {
            tenant,
            before_ts: before(now_ms, events.retention),
            limit: batch,
        };
        prune_tenant(&mut report, batch, |batch| store.prune_events(batch)).await?;
    }
    Ok(report)
}

/// The commit time before which what is `max_age` old at `now_ms` was committed.
fn before(now_ms: i64, max_age: Duration) -> i64 {
    now_ms.saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX))
}

/// Runs `prune` on one tenant's `batch` until a batch deletes less than its limit.
async fn prune_tenant<F, Batch>(
    report: &mut RetentionReport,
    batch: PruneBatch,
    mut prune: F,
) -> Result<(), StoreError>
where
    F: FnMut(PruneBatch) -> Batch,
    Batch: Future<Output = Result<u64, StoreError>>,
{
    report.tenants += 1;
    loop {
        let deleted = prune(batch.clone()).await?;
        report.deleted += deleted;
        report.batches += 1;
        if deleted < u64::from(batch.limit) {
            return Ok(());
        }
        // Let the writes that queued behind this batch go first.
        tokio::task::yield_now().await;
    }
}

/// The background task: a pass at start and every `retention.interval` after, until `stop`:
/// of messages when `[retention]` sets an age, of the outbox when `[events]` is on. A failed
/// pass is logged and retried at the next interval.
pub(crate) async fn run<S: MessageStore>(
    store: S,
    config: RetentionConfig,
    events: EventsConfig,
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
        if config.enabled() {
            let started = Instant::now();
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = pass(&store, &config, peroxo_protocol::domain::now_ms()) => outcome,
            };
            messages_pass_done(&stats, outcome, started);
        }
        if events.enabled {
            let now = peroxo_protocol::domain::now_ms();
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = events_pass(&store, &events, config.batch, now) => outcome,
            };
            events_pass_done(&stats, outcome);
        }
    }
}

/// Records and logs what a pass of messages did.
fn messages_pass_done(
    stats: &RetentionStats,
    outcome: Result<RetentionReport, StoreError>,
    started: Instant,
) {
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

/// Records and logs (when it deleted any) what a pass of the outbox did.
fn events_pass_done(stats: &RetentionStats, outcome: Result<RetentionReport, StoreError>) {
    match outcome {
        Ok(report) => {
            stats
                .events_deleted_total
                .fetch_add(report.deleted, Ordering::Relaxed);
            if report.deleted > 0 {
                tracing::info!(
                    deleted = report.deleted,
                    batches = report.batches,
                    "outbox retention pass done"
                );
            }
        }
        Err(error) => {
            tracing::warn!(%error, "outbox retention pass failed; the next one carries on");
        }
    }
}

fn millis(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}
