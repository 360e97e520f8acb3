//! `peroxo bench dm`: direct messages at a fixed rate, measured open loop and verified.
//!
//! U users connect (one session each). A pacer thread hands message `i` to its sender's
//! writer at `start + i / rate`, whatever the replies do; latency is measured from that due
//! time, so a backed-up server or socket shows up as latency instead of a slower pace (no
//! coordinated omission). Readers match every ack, error and delivery to its message. After
//! the send phase the run waits (up to `--drain`) for every answer and delivery, closes all
//! sessions, and checks the delivery contract; it exits non-zero when that check fails.
//!
//! - [`plan`]: who sends what to whom, and when.
//! - [`ledger`]: the compact per-message state.
//! - [`pacer`]: the thread that keeps the pace.
//! - [`peer`]: one user's writer and reader tasks.
//! - [`analysis`]: latencies, throughput and the delivery check.

mod analysis;
mod ledger;
mod pacer;
mod peer;
mod plan;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use peroxo_client::WebSocket;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::analysis::{DeliveryCheck, Measured, MessageCounts};
use self::ledger::Ledger;
use self::peer::{PeerReport, Shared, Stop};
use self::plan::Plan;
use super::TargetArgs;
use super::client::{self, Buffers, CLOSE_TIMEOUT, Endpoint, OpenCounts};
use super::report::{self, Progress, Tally};
use super::rng;

/// Time between the last session opening and the first message being due, so that every
/// connection task is running when the clock starts.
const LEAD: Duration = Duration::from_millis(200);
/// How often the drain phase checks whether everything has arrived.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The arguments of `peroxo bench dm`.
#[derive(Debug, Args)]
pub struct DmArgs {
    /// Users, each with one session.
    #[arg(long, default_value_t = 1_000)]
    pub users: u32,
    /// Messages per second, over all users.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u32,
    /// How long the measured window lasts.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The size of each message's text, in bytes.
    #[arg(long, default_value_t = 100)]
    pub text_bytes: usize,
    /// Sending before the measured window, not counted in latency or throughput.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// The longest wait after the send phase for answers and deliveries still due.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Seed for the choice of peers [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sessions being opened at once while users connect.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Bind client sockets to 127.0.0.2 … 127.0.0.(1+K) in turn (0: the kernel chooses).
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,
}

/// What the dm benchmark measured and found.
#[derive(Debug, Serialize)]
struct DmReport {
    scenario: &'static str,
    /// The nodes' WebSocket URLs, in the order sessions were spread over them.
    urls: Vec<String>,
    tenant: String,
    auth: &'static str,
    users: u32,
    rate: u32,
    warmup_secs: f64,
    duration_secs: f64,
    text_bytes: usize,
    /// The seed that chose the peers, as a string: JSON numbers lose precision past 2^53.
    seed: String,
    messages: MessageCounts,
    measured: Measured,
    check: DeliveryCheck,
    passed: bool,
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

/// Runs the dm benchmark.
pub(super) async fn run(target: &TargetArgs, tenant: String, args: DmArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(rng::fresh_seed);
    let plan = Plan::new(args.users, args.rate, args.warmup, args.duration, seed)?;
    let endpoint = target
        .endpoint(tenant, args.source_ips, Buffers::Default)
        .await?;
    let sessions = connect_users(&endpoint, &plan, args.concurrency).await?;
    eprintln!(
        "dm: {} users connected; sending {} messages over {:?}",
        plan.users(),
        plan.len(),
        args.warmup + args.duration
    );
    let Traffic {
        shared,
        drained,
        drain_secs,
        write_failures,
        mut peers,
    } = send_traffic(sessions, plan, &args).await?;
    let window = (args.warmup, args.warmup + args.duration);
    let analysis = analysis::analyse(&shared.plan, &shared.ledger, window, &mut peers);
    let mut closed_by_server = Tally::default();
    for code in peers.iter().filter_map(|p| p.closed_by_server.clone()) {
        closed_by_server.add(code, 1);
    }
    let report = DmReport {
        scenario: "dm",
        urls: target.urls.clone(),
        tenant: endpoint.tenant().to_owned(),
        auth: target.auth_label(),
        users: args.users,
        rate: args.rate,
        warmup_secs: args.warmup.as_secs_f64(),
        duration_secs: args.duration.as_secs_f64(),
        text_bytes: args.text_bytes,
        seed: seed.to_string(),
        passed: analysis.check.passed(),
        messages: analysis.messages,
        measured: analysis.measured,
        check: analysis.check,
        drained,
        drain_secs,
        closed_by_server,
        write_failures,
        unclean_closes: peers.iter().filter(|p| !p.close_answered).count() as u64,
        sync_hints: peers.iter().map(|p| p.sync_hints).sum(),
    };
    report::print(&report, target.json)?;
    anyhow::ensure!(
        report.passed,
        "the delivery check failed: {} problems (see `check`)",
        report.check.problems()
    );
    Ok(())
}

/// What the traffic phase leaves for the analysis.
struct Traffic {
    shared: Arc<Shared>,
    /// Whether every sent message was answered and delivered within `--drain`.
    drained: bool,
    drain_secs: f64,
    write_failures: Tally,
    peers: Vec<PeerReport>,
}

/// Paces the plan's messages out over the open sessions, waits for them to drain, and
/// closes every session.
async fn send_traffic(
    sessions: Vec<WebSocket>,
    plan: Plan,
    args: &DmArgs,
) -> anyhow::Result<Traffic> {
    let shared = Arc::new(Shared {
        ledger: Ledger::new(plan.len()),
        plan,
        start: Instant::now() + LEAD,
        text_bytes: args.text_bytes,
    });
    let stop = Stop {
        close: CancellationToken::new(),
        abandon: CancellationToken::new(),
    };
    let (outboxes, writers, readers) = spawn_peers(sessions, &shared, &stop);
    let progress = progress(&shared);
    let pacer = {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || pacer::pace(&shared, &outboxes))
    };
    pacer.await?;
    let send_end = Instant::now();
    let drained = drain(&shared.ledger, args.drain).await;
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

/// Opens every user's session; all must open, and every user must start at seq 0.
async fn connect_users(
    endpoint: &Arc<Endpoint>,
    plan: &Plan,
    concurrency: usize,
) -> anyhow::Result<Vec<WebSocket>> {
    let users: Arc<[String]> = (0..plan.users()).map(plan::user_name).collect();
    let counts = Arc::new(OpenCounts::default());
    let (sessions, failures) = client::open_many(endpoint, users, concurrency, &counts).await;
    anyhow::ensure!(
        failures.total() == 0,
        "{} of {} sessions failed to open: {failures}",
        failures.total(),
        plan.users()
    );
    let mut sockets = Vec::with_capacity(sessions.len());
    for (n, session) in sessions.into_iter().enumerate() {
        let session = session.ok_or_else(|| anyhow::anyhow!("session {n} did not open"))?;
        let (socket, welcome) = session.into_parts();
        anyhow::ensure!(
            welcome.last_seq == 0,
            "user {} of tenant {} starts at seq {}, not 0: use a fresh --tenant",
            plan::user_name(n as u32),
            endpoint.tenant(),
            welcome.last_seq
        );
        sockets.push(socket);
    }
    Ok(sockets)
}

/// The connection tasks of a run: each user's outbox, the writers and the readers.
type Peers = (
    Vec<mpsc::UnboundedSender<u32>>,
    JoinSet<Option<String>>,
    JoinSet<PeerReport>,
);

/// Starts a writer and a reader for every user's session (user `n` is `sessions[n]`).
fn spawn_peers(sessions: Vec<WebSocket>, shared: &Arc<Shared>, stop: &Stop) -> Peers {
    let mut outboxes = Vec::with_capacity(sessions.len());
    let mut writers = JoinSet::new();
    let mut readers = JoinSet::new();
    for (n, ws) in sessions.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        let (outbox, queued) = mpsc::unbounded_channel();
        outboxes.push(outbox);
        writers.spawn(peer::write(sink, queued, Arc::clone(shared), stop.clone()));
        readers.spawn(peer::read(
            stream,
            n as u32,
            Arc::clone(shared),
            stop.clone(),
        ));
    }
    (outboxes, writers, readers)
}

/// The progress line: totals so far and acks over the last second.
fn progress(shared: &Arc<Shared>) -> Progress {
    let shared = Arc::clone(shared);
    let last_acked = AtomicU64::new(0);
    Progress::start(move |elapsed| {
        let live = &shared.ledger.live;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let acked = load(&live.acked);
        let rate = acked.saturating_sub(last_acked.swap(acked, Ordering::Relaxed));
        format!(
            "dm {:>4}s  sent {}  acked {acked}  delivered {}  errors {}  in flight {}  acked/s {rate}",
            elapsed.as_secs(),
            load(&live.sent),
            load(&live.delivered),
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

impl std::fmt::Display for DmReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (m, w, c) = (&self.messages, &self.measured, &self.check);
        writeln!(
            f,
            "dm against {} (tenant {}, {} identities, seed {})",
            self.urls.join(", "),
            self.tenant,
            self.auth,
            self.seed
        )?;
        writeln!(
            f,
            "  load            {} users, {} msg/s, {} B texts, {:.0} s warm-up + {:.0} s measured",
            self.users, self.rate, self.text_bytes, self.warmup_secs, self.duration_secs
        )?;
        writeln!(
            f,
            "  messages        {} planned, {} sent, {} acked, {} delivered, {} not sent",
            m.planned, m.sent, m.acked, m.delivered, m.not_sent
        )?;
        writeln!(f, "  errors          {}", m.errors)?;
        writeln!(
            f,
            "  throughput      offered {:.0}/s, acked {:.0}/s, delivered {:.0}/s",
            w.offered_per_sec, w.acked_per_sec, w.delivered_per_sec
        )?;
        writeln!(f, "  send→ack        {}", w.send_to_ack)?;
        writeln!(f, "  send→delivery   {}", w.send_to_delivery)?;
        let drain = if self.drained {
            "complete"
        } else {
            "INCOMPLETE"
        };
        writeln!(f, "  drain           {drain} in {:.2} s", self.drain_secs)?;
        writeln!(f, "  server closes   {}", self.closed_by_server)?;
        writeln!(f, "  write failures  {}", self.write_failures)?;
        writeln!(f, "  unclean closes  {}", self.unclean_closes)?;
        write!(f, "{c}")?;
        writeln!(
            f,
            "  verdict         {}",
            if self.passed { "PASS" } else { "FAIL" }
        )
    }
}
