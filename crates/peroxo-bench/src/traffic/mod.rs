//! Open-loop traffic, shared by the scenarios that issue commands at a fixed rate: `dm`
//! (direct messages), `group` (group messages) and `conversations` (conversation-list reads).
//!
//! A scenario describes its run as a [`Plan`]: which session issues command `i`, what the
//! command is, and which frames answer or deliver it. Everything else is the same for all of
//! them. A pacer thread hands command `i` to its session's writer at `start + i / rate`,
//! whatever the replies do; latency is measured from that due time, so a backed-up server or
//! socket shows up as latency instead of a slower pace (no coordinated omission). Readers match
//! every reply, error and delivery to its command in a compact [`Ledger`]. After the send
//! phase the run waits (up to its drain limit) for every answer and delivery, closes all
//! sessions, and [`analysis`] checks the delivery contract and sums up latency and throughput.
//!
//! A message reaches `fanout` users besides its sender (1 for a direct message, a group's
//! other members for a group message, none for a read): each (message, recipient) pair is a
//! *row* of the ledger, and a message's delivery latency is that of its last row.
//!
//! - [`timeline`]: when each command is due, and which are measured.
//! - [`names`]: how users and messages are named so that frames can be matched.
//! - [`pacer`]: the thread that keeps the pace.
//! - [`ledger`]: the compact per-message and per-row state.
//! - [`peer`]: one session's writer and reader tasks.
//! - [`analysis`]: latencies, throughput and the delivery check.

pub(crate) mod analysis;
pub(crate) mod ledger;
pub(crate) mod names;
pub(crate) mod pacer;
mod peer;
pub(crate) mod timeline;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use peroxo_client::WebSocket;
use peroxo_protocol::{Command, EventView, MessageView, ServerFrame};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub(crate) use self::ledger::Ledger;
pub(crate) use self::peer::PeerReport;
pub(crate) use self::timeline::Timeline;
use crate::client::CLOSE_TIMEOUT;
use crate::report::{Progress, Tally};

/// Time between the last session opening and the first command being due, so that every
/// connection task is running when the clock starts.
pub(crate) const LEAD: Duration = Duration::from_millis(200);
/// How often the drain phase checks whether everything has arrived.
pub(crate) const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A scenario's schedule, fixed before the run starts.
pub(crate) trait Plan: Send + Sync + 'static {
    /// When each command is due.
    fn timeline(&self) -> &Timeline;
    /// The number of sessions (session `n` is user number `n`'s).
    fn users(&self) -> u32;
    /// The session that issues command `i`.
    fn sender(&self, i: u32) -> u32;
    /// Command `i`, with a message text of `text_bytes` bytes where it sends one.
    fn command(&self, i: u32, text_bytes: usize) -> Command;
    /// The users each message reaches besides its sender (0: the commands deliver nothing).
    fn fanout(&self) -> u32;
    /// The user of row `row` (below [`Plan::fanout`]) of message `i`.
    fn recipient(&self, i: u32, row: u32) -> u32;
    /// Which message, and which of its rows, a `message` frame that user `me` received is;
    /// `None` when the plan has no such delivery (a misrouted frame).
    fn route(&self, me: u32, message: &MessageView<'_>) -> Option<Route>;
    /// What a reply other than `ack`, `message`, `error`, `event` or `sync_hint` answers.
    fn reply(&self, _frame: &ServerFrame<'_>) -> Reply {
        Reply::Unplanned
    }
    /// What a stream event that user `me` received is: the delivery of a command that changed
    /// a message, the copy its actor gets, or nothing the plan made (the default: plans that
    /// change no message expect no event).
    fn route_event(&self, _me: u32, _event: &EventView<'_>) -> EventRoute {
        EventRoute::Unplanned
    }
    /// Command `i`, a send, was acked with `message_id`.
    fn acked(&self, _i: u32, _message_id: &str) {}
    /// Whether command `i` changes a message (an edit, a delete, a reaction) rather than
    /// sending one: its latencies are summed up apart.
    fn changes_a_message(&self, _i: u32) -> bool {
        false
    }
}

/// What a stream event is to the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventRoute {
    /// The delivery of a command's change to one of its recipients.
    Delivery(Route),
    /// The copy of its own change that a command's sender receives.
    Echo,
    /// Nothing the plan made.
    Unplanned,
}

/// Where a delivered message belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    /// The message's index.
    pub(crate) index: u32,
    /// The recipient's row of the message.
    pub(crate) row: u32,
    /// The sequence this delivery must keep its place in (a direct sender, a group): within
    /// one, `position` must rise from delivery to delivery.
    pub(crate) sequence: u32,
    /// The message's place in its sequence.
    pub(crate) position: u64,
}

/// What a reply to a command says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// It answers command `i` as the plan expects.
    Answers(u32),
    /// It answers command `i`, but not with what the plan expects.
    Wrong(u32),
    /// It answers nothing the plan issued (a frame of a feature the run does not use).
    Unplanned,
}

/// What every connection task of a run shares.
pub(crate) struct Shared<P> {
    pub(crate) plan: P,
    pub(crate) ledger: Ledger,
    /// When command 0 is due; command `i` is due at `start + plan.timeline().due(i)`.
    pub(crate) start: Instant,
    pub(crate) text_bytes: usize,
}

impl<P: Plan> Shared<P> {
    /// How late, after it was due, something about command `i` happened now.
    fn latency(&self, i: u32) -> Duration {
        Instant::now().saturating_duration_since(self.start + self.plan.timeline().due(i))
    }
}

/// How the run tells connection tasks to finish.
#[derive(Clone)]
struct Stop {
    /// Send the close frame (writers), and expect the server's close (readers).
    close: CancellationToken,
    /// Give up waiting for the server's close (readers).
    abandon: CancellationToken,
}

/// One user's open session, handed to the traffic phase.
pub(crate) struct Session {
    pub(crate) socket: WebSocket,
    /// The seqs of the stream entries the user saw before the traffic (a setup's events):
    /// the user's stream must be gapless across both.
    pub(crate) seen: Vec<u64>,
}

/// How a traffic phase runs besides its plan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// The scenario's name, for the progress line.
    pub(crate) name: &'static str,
    pub(crate) text_bytes: usize,
    /// The longest wait after the send phase for answers and deliveries still due.
    pub(crate) drain: Duration,
}

/// What the traffic phase leaves for the analysis.
pub(crate) struct Traffic<P> {
    pub(crate) shared: Arc<Shared<P>>,
    /// Whether every command was answered and every message delivered within the drain limit.
    pub(crate) drained: bool,
    pub(crate) drain_secs: f64,
    pub(crate) write_failures: Tally,
    pub(crate) peers: Vec<PeerReport>,
}

impl<P> Traffic<P> {
    /// How the sessions fared, for the report.
    pub(crate) fn sessions(&self) -> SessionsReport {
        let mut closed_by_server = Tally::default();
        for code in self.peers.iter().filter_map(|p| p.closed_by_server.clone()) {
            closed_by_server.add(code, 1);
        }
        SessionsReport {
            drained: self.drained,
            drain_secs: self.drain_secs,
            closed_by_server,
            write_failures: self.write_failures.clone(),
            unclean_closes: self.peers.iter().filter(|p| !p.close_answered).count() as u64,
            sync_hints: self.peers.iter().map(|p| p.sync_hints).sum(),
        }
    }
}

/// How the sessions of a traffic phase fared, as every open-loop report shows it.
#[derive(Debug, Serialize)]
pub(crate) struct SessionsReport {
    /// Whether every answer and delivery arrived before `--drain` ran out.
    drained: bool,
    drain_secs: f64,
    /// Sessions the server closed during the run, by close code.
    closed_by_server: Tally,
    write_failures: Tally,
    /// Sessions whose close handshake the server did not complete.
    unclean_closes: u64,
    sync_hints: u64,
}

impl std::fmt::Display for SessionsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let drain = if self.drained {
            "complete"
        } else {
            "INCOMPLETE"
        };
        writeln!(f, "  drain           {drain} in {:.2} s", self.drain_secs)?;
        writeln!(f, "  server closes   {}", self.closed_by_server)?;
        writeln!(f, "  write failures  {}", self.write_failures)?;
        writeln!(f, "  unclean closes  {}", self.unclean_closes)
    }
}

/// The verdict line of a report.
pub(crate) fn verdict(passed: bool) -> &'static str {
    if passed { "PASS" } else { "FAIL" }
}

/// Paces the plan's commands out over `sessions` (user `n`'s is `sessions[n]`), waits for
/// them to drain, and closes every session.
pub(crate) async fn run<P: Plan>(
    sessions: Vec<Session>,
    plan: P,
    options: Options,
) -> anyhow::Result<Traffic<P>> {
    let shared = Arc::new(Shared {
        ledger: Ledger::new(plan.timeline().len(), plan.fanout()),
        plan,
        start: Instant::now() + LEAD,
        text_bytes: options.text_bytes,
    });
    let stop = Stop {
        close: CancellationToken::new(),
        abandon: CancellationToken::new(),
    };
    let (outboxes, writers, readers) = spawn_peers(sessions, &shared, &stop);
    let progress = progress(&shared, options.name);
    let pacer = {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || pacer::pace(&shared, &outboxes))
    };
    pacer.await?;
    let send_end = Instant::now();
    let drained = drain(&shared.ledger, options.drain).await;
    let drain_secs = send_end.elapsed().as_secs_f64();
    drop(progress);
    let (write_failures, peers) = finish(writers, readers, &stop).await;
    Ok(Traffic {
        shared,
        drained,
        drain_secs,
        write_failures,
        peers,
    })
}

/// The connection tasks of a run: each user's outbox, the writers and the readers.
type Peers = (
    Vec<mpsc::UnboundedSender<u32>>,
    JoinSet<Option<String>>,
    JoinSet<PeerReport>,
);

/// Starts a writer and a reader for every user's session (user `n` is `sessions[n]`).
fn spawn_peers<P: Plan>(sessions: Vec<Session>, shared: &Arc<Shared<P>>, stop: &Stop) -> Peers {
    let mut outboxes = Vec::with_capacity(sessions.len());
    let mut writers = JoinSet::new();
    let mut readers = JoinSet::new();
    for (n, session) in sessions.into_iter().enumerate() {
        let (sink, stream) = session.socket.split();
        let (outbox, queued) = mpsc::unbounded_channel();
        outboxes.push(outbox);
        writers.spawn(peer::write(sink, queued, Arc::clone(shared), stop.clone()));
        readers.spawn(peer::read(
            stream,
            n as u32,
            session.seen,
            Arc::clone(shared),
            stop.clone(),
        ));
    }
    (outboxes, writers, readers)
}

/// The progress line: totals so far and acks (replies) over the last second, and deliveries
/// when the commands deliver anything.
fn progress<P: Plan>(shared: &Arc<Shared<P>>, name: &'static str) -> Progress {
    let shared = Arc::clone(shared);
    let last_acked = AtomicU64::new(0);
    Progress::start(move |elapsed| {
        let live = &shared.ledger.live;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let acked = load(&live.acked);
        let rate = acked.saturating_sub(last_acked.swap(acked, Ordering::Relaxed));
        let delivered = if shared.plan.fanout() > 0 {
            format!("  delivered {}", load(&live.delivered))
        } else {
            String::new()
        };
        format!(
            "{name} {:>4}s  sent {}  acked {acked}{delivered}  errors {}  in flight {}  acked/s {rate}",
            elapsed.as_secs(),
            load(&live.sent),
            load(&live.errors),
            load(&live.sent).saturating_sub(load(&live.answered)),
        )
    })
}

/// Waits until everything sent is answered and everything acked is delivered, or `limit`
/// passes. Returns whether it all arrived.
async fn drain(ledger: &Ledger, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ledger.is_drained() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Closes every session and collects the writers' failures and the readers' reports.
async fn finish(
    writers: JoinSet<Option<String>>,
    readers: JoinSet<PeerReport>,
    stop: &Stop,
) -> (Tally, Vec<PeerReport>) {
    stop.close.cancel();
    let write_failures = join_writers(writers).await;
    let peers = join_readers(readers, stop).await;
    (write_failures, peers)
}

/// Waits for the writers to send their close frames. Writers still blocked on a full socket
/// after `CLOSE_TIMEOUT` are aborted.
async fn join_writers(mut writers: JoinSet<Option<String>>) -> Tally {
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
    let mut failures = Tally::default();
    loop {
        match tokio::time::timeout_at(deadline, writers.join_next()).await {
            Ok(Some(Ok(None))) => {}
            Ok(Some(Ok(Some(failure)))) => failures.add(failure, 1),
            Ok(Some(Err(error))) => failures.add(format!("task: {error}"), 1),
            Ok(None) => return failures,
            Err(_) => {
                failures.add("close: socket still blocked", writers.len() as u64);
                writers.shutdown().await;
                return failures;
            }
        }
    }
}

/// Collects every reader's report. Readers still waiting for the server's close after
/// `CLOSE_TIMEOUT` are told to give up, and report what they have.
async fn join_readers(mut readers: JoinSet<PeerReport>, stop: &Stop) -> Vec<PeerReport> {
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
    let mut peers = Vec::with_capacity(readers.len());
    loop {
        let next = if stop.abandon.is_cancelled() {
            Ok(readers.join_next().await)
        } else {
            tokio::time::timeout_at(deadline, readers.join_next()).await
        };
        match next {
            Ok(Some(Ok(report))) => peers.push(report),
            // A reader that panicked has no report; its user's checks are skipped.
            Ok(Some(Err(_))) => {}
            Ok(None) => return peers,
            Err(_) => stop.abandon.cancel(),
        }
    }
}
