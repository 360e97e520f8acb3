//! Persistence: the gateway's only writer to the storage service.
//!
//! Sessions put accepted `send`s into the [`Outbox`] and wake it; it commits them in batches
//! over gRPC, acks each sender and hands the committed messages to the Router for delivery.
//! While one append call is in flight, new writes queue, and the next call takes all of them
//! up to `storage.max_batch` (and [`MAX_BATCH_BYTES`]): batching comes from load, never from a
//! timer.
//!
//! The outbox lives outside the actor's state, so a restarted Persistence finds every write
//! its predecessor had accepted and sends the interrupted batch again (appends are
//! idempotent, so that stores nothing twice).
//!
//! When the storage service is unreachable, Persistence keeps accepting writes into the
//! outbox and reconnects with exponential backoff and jitter; once connected, the outbox is
//! flushed in order.
//!
//! It also loads the active restrictions of users ([`Restrictions`]) each time it connects,
//! before the link counts as up, and again every [`RELOAD_INTERVAL`] while connected.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use super::ActorSlot;
use super::context::StorageLink;
use super::conversation_commands::MemberCache;
use super::outbox::{Outbox, PendingWrite};
use super::router::{Delivery, RouterMsg};
use crate::live::LiveSettings;
use crate::restrictions::{RELOAD_INTERVAL, Restrictions};
use crate::telemetry::{Metrics, seconds};
use peroxo_config::{StorageConfig, StorageEndpoints};
use peroxo_protocol::domain::{AppendOutcome, NewMessage, UserKey, now_ms};
use peroxo_protocol::{ErrorCode, ProtocolError};
use peroxo_storage::grpc::{CallError, StorageClient};

/// The most bytes of message content one append call carries, whatever `storage.max_batch`
/// allows: a batch stays well inside the storage service's 64 MiB gRPC message limit even when
/// every text is as long as `limits.max_text_bytes` permits.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

pub enum PersistenceMsg {
    /// New writes are in the outbox.
    Wake,
    /// Try to connect to the storage service (self-scheduled with backoff).
    Connect,
    /// The outcome of a connection attempt.
    Connected(Result<StorageClient, CallError>),
    /// The outcome of the append call of batch `generation`.
    BatchDone {
        generation: u64,
        result: Result<Vec<AppendOutcome>, CallError>,
    },
    /// Time to check that storage still answers (self-scheduled while connected).
    Probe,
    /// The outcome of a probe.
    Probed(Result<(), CallError>),
    /// A reload of the restrictions ended (whatever its outcome).
    RestrictionsLoaded,
    /// Panics inside `handle`, to exercise supervision.
    #[cfg(feature = "test-hooks")]
    Crash,
}

/// How often an idle Persistence checks that storage still answers, so readiness and the
/// reads of sessions learn of an outage even when nobody sends.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

pub struct PersistenceArgs {
    pub config: StorageConfig,
    /// The storage services' URLs: it connects to one, and moves to the next whenever the
    /// one it uses fails.
    pub endpoints: StorageEndpoints,
    pub outbox: Arc<Outbox>,
    pub link: StorageLink,
    /// Where sessions find Persistence; set in `pre_start`, so no wake-up goes to a
    /// predecessor once this incarnation can take it.
    pub myself_slot: ActorSlot<PersistenceMsg>,
    pub router: ActorSlot<RouterMsg>,
    /// The node's metrics (batches, acks, reconnects).
    pub metrics: Arc<Metrics>,
    /// Where the member counts of committed group messages are remembered (what the next
    /// send to the group is charged).
    pub member_cache: Arc<MemberCache>,
    /// What a group send costs the sender's rate (charged in full once its fan-out is known).
    pub live: Arc<LiveSettings>,
    /// Woken after each committed batch (readers of the event feed wait on it).
    pub committed: Arc<tokio::sync::Notify>,
    /// The node's restrictions of users, which it loads from storage.
    pub restrictions: Arc<Restrictions>,
}

pub struct PersistenceState {
    args: PersistenceArgs,
    backoff: ExponentialBackoff,
    connecting: bool,
    /// The generation of the batch in flight, if any; answers of older ones are ignored.
    in_flight: Option<u64>,
    generation: u64,
    down_since: Option<Instant>,
    /// Whether this incarnation has connected before (the next connection is a reconnect).
    ever_connected: bool,
    /// Whether the periodic probe is scheduled.
    probing: bool,
    /// Which of `endpoints` it connects to (modulo their number).
    endpoint: usize,
    /// When the restrictions were last loaded (or a reload started): the probe reloads
    /// them once [`RELOAD_INTERVAL`] has passed.
    restrictions_loaded: Instant,
    /// Whether a reload of the restrictions is under way.
    reloading: bool,
}

pub struct Persistence;

impl Persistence {
    pub async fn spawn(
        args: PersistenceArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<ActorRef<PersistenceMsg>, ractor::SpawnErr> {
        let (actor, _) = Actor::spawn_linked(None, Persistence, args, supervisor).await?;
        Ok(actor)
    }
}

impl Actor for Persistence {
    type Msg = PersistenceMsg;
    type State = PersistenceState;
    type Arguments = PersistenceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PersistenceArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // After a restart, the batch the previous incarnation had in flight goes again.
        // A wake-up lost with the predecessor must not keep sessions from waking this one.
        args.outbox.lock().requeue_in_flight();
        args.outbox.woken();
        args.link.set(None);
        args.myself_slot.set(myself);
        Ok(PersistenceState {
            backoff: backoff(&args.config),
            args,
            connecting: false,
            in_flight: None,
            generation: 0,
            down_since: Some(Instant::now()),
            ever_connected: false,
            probing: false,
            endpoint: 0,
            restrictions_loaded: Instant::now(),
            reloading: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.connect(&myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PersistenceMsg::Wake => state.wake(&myself),
            PersistenceMsg::Connect => state.connect(&myself),
            PersistenceMsg::Connected(result) => state.connected(&myself, result),
            PersistenceMsg::Probe => state.probe(&myself),
            PersistenceMsg::Probed(result) => state.probed(&myself, result),
            PersistenceMsg::RestrictionsLoaded => state.reloading = false,
            PersistenceMsg::BatchDone { generation, result } => {
                state.batch_done(&myself, generation, result);
            }
            #[cfg(feature = "test-hooks")]
            PersistenceMsg::Crash => panic!("persistence crash requested by a test hook"),
        }
        Ok(())
    }
}

/// A fresh reconnect schedule: exponential, with jitter, without end.
fn backoff(config: &StorageConfig) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(config.reconnect_initial_ms))
        .with_max_delay(Duration::from_millis(config.reconnect_max_ms))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Replaces the node's restrictions with the active ones storage holds. A failure keeps
/// what the node knew (the next reload tries again).
async fn load_restrictions(client: &StorageClient, restrictions: &Restrictions) {
    let started = restrictions.mark();
    match client.active_restrictions(now_ms()).await {
        Ok(loaded) => {
            let count = loaded.len();
            restrictions.replace_all(loaded, started);
            tracing::debug!(count, "restrictions of users loaded");
        }
        Err(error) => tracing::warn!(%error, "cannot load the restrictions of users"),
    }
}

/// The user whose seq a probe reads (no client can be it: probes are not sessions).
fn probe_user() -> UserKey {
    UserKey::new("peroxo", "storage-probe")
}

impl PersistenceState {
    /// Sessions put new writes in the outbox.
    fn wake(&mut self, myself: &ActorRef<PersistenceMsg>) {
        self.args.outbox.woken();
        self.start_batch(myself);
    }

    /// Starts a connection attempt, unless one is under way or storage is connected.
    fn connect(&mut self, myself: &ActorRef<PersistenceMsg>) {
        if self.connecting || self.args.link.is_up() {
            return;
        }
        self.connecting = true;
        let endpoint = self.endpoint_url().to_owned();
        let connect_timeout = self.args.config.connect_timeout();
        let rpc_timeout = self.args.config.rpc_timeout();
        let myself = myself.clone();
        let restrictions = Arc::clone(&self.args.restrictions);
        self.restrictions_loaded = Instant::now();
        tokio::spawn(async move {
            let result = match StorageClient::connect(&endpoint, connect_timeout, rpc_timeout).await
            {
                // Reachable is not enough: the service must answer (its database may be down).
                Ok(client) => client.last_seq(probe_user()).await.map(|_| client),
                Err(error) => Err(error),
            };
            // Before the link is up, so that no upgrade is decided without them.
            if let Ok(client) = &result {
                load_restrictions(client, &restrictions).await;
            }
            let _ = myself.cast(PersistenceMsg::Connected(result));
        });
    }

    /// Checks, while idle and connected, that storage still answers; reschedules itself.
    fn probe(&mut self, myself: &ActorRef<PersistenceMsg>) {
        myself.send_after(PROBE_INTERVAL, || PersistenceMsg::Probe);
        let Some(client) = self.args.link.client() else {
            return;
        };
        self.reload_restrictions_if_due(myself, &client);
        if self.in_flight.is_some() {
            return;
        }
        let myself = myself.clone();
        tokio::spawn(async move {
            let result = client.last_seq(probe_user()).await.map(drop);
            let _ = myself.cast(PersistenceMsg::Probed(result));
        });
    }

    /// Reloads the restrictions in a task of its own once [`RELOAD_INTERVAL`] has passed
    /// since the last load, unless one is under way.
    fn reload_restrictions_if_due(
        &mut self,
        myself: &ActorRef<PersistenceMsg>,
        client: &StorageClient,
    ) {
        if self.reloading || self.restrictions_loaded.elapsed() < RELOAD_INTERVAL {
            return;
        }
        self.reloading = true;
        self.restrictions_loaded = Instant::now();
        let (client, myself) = (client.clone(), myself.clone());
        let restrictions = Arc::clone(&self.args.restrictions);
        tokio::spawn(async move {
            load_restrictions(&client, &restrictions).await;
            let _ = myself.cast(PersistenceMsg::RestrictionsLoaded);
        });
    }

    /// A probe's answer: storage gone while idle clears the link and reconnects.
    fn probed(&mut self, myself: &ActorRef<PersistenceMsg>, result: Result<(), CallError>) {
        let Err(error) = result else {
            return;
        };
        // A batch in flight would have found out too; only an idle link is cleared here.
        if self.in_flight.is_none() && self.args.link.is_up() {
            self.args.link.set(None);
            self.down_since.get_or_insert_with(Instant::now);
            self.schedule_reconnect(myself, &error);
        }
    }

    fn connected(
        &mut self,
        myself: &ActorRef<PersistenceMsg>,
        result: Result<StorageClient, CallError>,
    ) {
        self.connecting = false;
        match result {
            Ok(client) => {
                if self.ever_connected {
                    self.args.metrics.storage_reconnects.increment(1);
                }
                self.ever_connected = true;
                self.args.link.set(Some(client));
                if !self.probing {
                    self.probing = true;
                    myself.send_after(PROBE_INTERVAL, || PersistenceMsg::Probe);
                }
                self.backoff = backoff(&self.args.config);
                let down_for = self.down_since.take().map(|t| t.elapsed());
                tracing::info!(endpoint = %self.endpoint_url(), ?down_for, "storage reachable");
                self.start_batch(myself);
            }
            Err(error) => self.schedule_reconnect(myself, &error),
        }
    }

    /// The storage service it uses now.
    fn endpoint_url(&self) -> &str {
        let urls = self.args.endpoints.urls();
        &urls[self.endpoint % urls.len()]
    }

    /// The storage service in use failed: the next attempt goes to the next one (the same,
    /// when there is only one), after the backoff.
    fn schedule_reconnect(&mut self, myself: &ActorRef<PersistenceMsg>, error: &CallError) {
        let failed = self.endpoint_url().to_owned();
        self.endpoint = self.endpoint.wrapping_add(1);
        let delay = self
            .backoff
            .next()
            .unwrap_or(Duration::from_millis(self.args.config.reconnect_max_ms));
        let pending = self.args.outbox.pending();
        tracing::warn!(
            endpoint = %failed,
            next = %self.endpoint_url(),
            %error,
            retry_in = ?delay,
            pending,
            "storage unreachable"
        );
        myself.send_after(delay, || PersistenceMsg::Connect);
    }

    /// Sends the next batch if storage is connected and no batch is in flight.
    fn start_batch(&mut self, myself: &ActorRef<PersistenceMsg>) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(client) = self.args.link.client() else {
            return;
        };
        let Some(batch) = self.take_batch() else {
            return;
        };
        self.generation += 1;
        let generation = self.generation;
        self.in_flight = Some(generation);
        self.args
            .metrics
            .persist_batch_size
            .record(batch.len() as f64);
        let rpc_seconds = self.args.metrics.persist_rpc.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = client.append(batch).await;
            rpc_seconds.record(seconds(started.elapsed()));
            let _ = myself.cast(PersistenceMsg::BatchDone { generation, result });
        });
    }

    /// Moves the next batch from the outbox's waiting writes to its in-flight ones, and
    /// returns its messages; `None` when nothing waits.
    fn take_batch(&self) -> Option<Vec<NewMessage>> {
        let mut outbox = self.args.outbox.lock();
        let take = batch_len(
            outbox.waiting.iter().map(|w| (&w.message, w.rows)),
            self.args.config.max_batch,
        );
        if take == 0 {
            return None;
        }
        let writes: Vec<PendingWrite> = outbox.waiting.drain(..take).collect();
        let batch = writes.iter().map(|w| w.message.clone()).collect();
        outbox.in_flight = writes;
        Some(batch)
    }

    /// The answer to batch `generation`; answers to batches given up on are ignored.
    fn batch_done(
        &mut self,
        myself: &ActorRef<PersistenceMsg>,
        generation: u64,
        result: Result<Vec<AppendOutcome>, CallError>,
    ) {
        if self.in_flight != Some(generation) {
            return;
        }
        self.in_flight = None;
        match result {
            Ok(outcomes) => {
                self.committed(outcomes);
                self.args.committed.notify_waiters();
                self.start_batch(myself);
            }
            Err(CallError::Rejected(reason)) => {
                self.refused(&reason);
                self.start_batch(myself);
            }
            Err(CallError::Refused(refusal)) => {
                self.refused(&refusal.message);
                self.start_batch(myself);
            }
            Err(error) => {
                self.args.outbox.lock().requeue_in_flight();
                self.args.link.set(None);
                self.down_since.get_or_insert_with(Instant::now);
                self.schedule_reconnect(myself, &error);
            }
        }
    }

    /// Storage answered the batch in flight: each sender gets its answer, and the Router
    /// what was newly committed.
    fn committed(&self, outcomes: Vec<AppendOutcome>) {
        let writes = std::mem::take(&mut self.args.outbox.lock().in_flight);
        let mut deliveries = Vec::with_capacity(writes.len());
        for (write, outcome) in writes.into_iter().zip(outcomes) {
            if let Some(delivery) = self.answer(write, outcome) {
                deliveries.push(delivery);
            }
        }
        if !deliveries.is_empty()
            && self
                .args
                .router
                .cast(RouterMsg::Deliver(deliveries))
                .is_err()
        {
            tracing::warn!(
                "router unavailable; committed messages will reach recipients through sync"
            );
        }
    }

    /// The service refused the batch as a whole: retrying cannot help.
    fn refused(&self, reason: &str) {
        tracing::error!(%reason, "storage refused an append batch");
        let writes = std::mem::take(&mut self.args.outbox.lock().in_flight);
        for write in writes {
            write.origin.refuse(
                ProtocolError::new(
                    ErrorCode::Internal,
                    "the storage service refused the message",
                )
                .with_req_id(write.req_id.clone())
                .with_client_msg_id(Some(write.message.client_msg_id.clone())),
            );
        }
    }

    /// Acks one committed write to its sender; returns what the Router must deliver.
    fn answer(&self, write: PendingWrite, outcome: AppendOutcome) -> Option<Delivery> {
        let metrics = &self.args.metrics;
        match outcome {
            AppendOutcome::Stored {
                message,
                duplicate,
                members,
            } => {
                // A retried write found stored was stored by its own earlier, unanswered call.
                let duplicate = duplicate && !write.retried;
                metrics.ack(duplicate);
                metrics
                    .send_to_ack
                    .record(seconds(write.accepted_at.elapsed()));
                if message.is_group() && !duplicate {
                    let members = u32::try_from(members.len() + 1).unwrap_or(u32::MAX);
                    self.args
                        .member_cache
                        .set_size(&message.tenant, &message.recipient, members);
                    // The send was charged for the members last seen here (`rows`); the
                    // sender owes the rest.
                    let groups = &self.args.live.load().groups;
                    let owed = groups
                        .rate_tokens(members)
                        .saturating_sub(groups.rate_tokens(write.rows));
                    if owed > 0 {
                        write.origin.owe_rate(owed);
                    }
                }
                let origin = write.origin.session_id();
                write.origin.ack(&message, write.req_id.as_ref(), duplicate);
                (!duplicate).then_some(Delivery {
                    message,
                    members,
                    origin,
                })
            }
            AppendOutcome::Rejected(refusal) => {
                write.origin.refuse(
                    ProtocolError::from(refusal)
                        .with_req_id(write.req_id)
                        .with_client_msg_id(Some(write.message.client_msg_id)),
                );
                None
            }
        }
    }
}

/// How many of `waiting` (each with the stored rows it counts for) the next append call
/// takes: at most `max_batch` rows, and no more than [`MAX_BATCH_BYTES`] of content (but
/// always the first, which storage accepts on its own).
fn batch_len<'a>(waiting: impl Iterator<Item = (&'a NewMessage, u32)>, max_batch: usize) -> usize {
    let mut bytes = 0;
    let mut rows = 0;
    let mut take = 0;
    for (message, message_rows) in waiting {
        bytes += message.content_bytes();
        rows += message_rows as usize;
        if take > 0 && (bytes > MAX_BATCH_BYTES || rows > max_batch) {
            break;
        }
        take += 1;
    }
    take
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text_bytes: usize) -> NewMessage {
        NewMessage {
            tenant: "t".to_owned(),
            sender: "a".to_owned(),
            recipient: "b".to_owned(),
            client_msg_id: "c".to_owned(),
            text: "x".repeat(text_bytes),
            reply_to: None,
        }
    }

    #[test]
    fn a_batch_takes_at_most_max_batch_messages() {
        let waiting: Vec<NewMessage> = (0..10).map(|_| message(10)).collect();
        let one_row_each = || waiting.iter().map(|m| (m, 1));
        assert_eq!(batch_len(one_row_each(), 4), 4);
        assert_eq!(batch_len(one_row_each(), 100), 10);
        assert_eq!(batch_len(std::iter::empty(), 4), 0);
    }

    #[test]
    fn a_batch_counts_the_rows_of_group_messages_but_always_takes_the_first() {
        let waiting: Vec<NewMessage> = (0..4).map(|_| message(10)).collect();
        let rows = [30, 30, 50, 1];
        let batch = || waiting.iter().zip(rows);
        assert_eq!(batch_len(batch(), 100), 2, "30 + 30 + 50 is over 100 rows");
        assert_eq!(
            batch_len(batch(), 10),
            1,
            "the first goes alone, whatever its rows"
        );
    }

    #[test]
    fn a_batch_stops_before_max_batch_bytes_but_always_takes_the_first() {
        let big = MAX_BATCH_BYTES / 3;
        let waiting: Vec<NewMessage> = (0..5).map(|_| message(big)).collect();
        // Three such messages (with their identifiers) are just over the limit.
        assert_eq!(batch_len(waiting.iter().map(|m| (m, 1)), 100), 2);
        let huge = [message(MAX_BATCH_BYTES * 2), message(1)];
        assert_eq!(batch_len(huge.iter().map(|m| (m, 1)), 100), 1);
    }
}
