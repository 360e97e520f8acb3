//! `peroxo bench idle`: what an idle session costs the server.
//!
//! Reads the server's resident memory from `/metrics`, opens N sessions (one user each) and
//! waits for every `welcome`, reads the memory again once it has settled (two readings in a
//! row within 1%), and reports the growth per session. The sessions keep reading while they
//! are held, so the server's heartbeat pings are answered; then they are all closed with a
//! close handshake.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use peroxo_client::{Connection, Disconnect};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::TargetArgs;
use super::client::{self, Buffers, CLOSE_TIMEOUT, OpenCounts, Protocol};
use super::report::{self, Progress, Tally};
use super::scrape;

/// How often memory is read while waiting for it to settle.
const SETTLE_POLL: Duration = Duration::from_millis(500);
/// Two readings in a row closer than this (relative) count as settled.
const SETTLE_TOLERANCE: f64 = 0.01;

/// The arguments of `peroxo bench idle`.
#[derive(Debug, Args)]
pub struct IdleArgs {
    /// Sessions to open and hold (one user each).
    #[arg(long)]
    pub connections: usize,
    /// Bind client sockets to 127.0.0.2 … 127.0.0.(1+K) in turn (0: the kernel chooses).
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,
    /// The node's Prometheus endpoint, read for the server's resident memory.
    #[arg(long, default_value = "http://127.0.0.1:8080/metrics")]
    pub metrics_url: String,
    /// Sessions being opened at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// The longest wait for the server's memory to settle.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub settle_timeout: Duration,
}

/// What the idle benchmark measured.
#[derive(Debug, Serialize)]
struct IdleReport {
    scenario: &'static str,
    /// The nodes' WebSocket URLs, in the order sessions were spread over them.
    urls: Vec<String>,
    tenant: String,
    requested: usize,
    /// Sessions that received `welcome`.
    opened: u64,
    /// Sessions still open when memory was measured.
    held: u64,
    handshake_failures: u64,
    failures_by_cause: Tally,
    /// Sessions the server closed while they were held, by close code.
    closed_by_server: Tally,
    open_secs: f64,
    rss_before_bytes: f64,
    rss_after_bytes: f64,
    rss_per_session_kib: f64,
    /// Whether memory settled before `--settle-timeout`.
    rss_settled: bool,
    /// Sessions whose close handshake the server did not complete.
    unclean_closes: u64,
}

/// Runs the idle benchmark.
pub(super) async fn run(target: &TargetArgs, tenant: String, args: IdleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        target.urls.len() == 1,
        "idle reads one node's memory (--metrics-url): give a single --url"
    );
    let endpoint = target
        .endpoint(tenant, args.source_ips, Buffers::Lean, Protocol::V1)
        .await?;
    let (rss_before, _) = settled_memory(&args.metrics_url, args.settle_timeout).await?;

    let started = Instant::now();
    let counts = Arc::new(OpenCounts::default());
    let progress = open_progress(&counts, args.connections);
    let users: Arc<[String]> = (0..args.connections).map(|n| format!("i{n}")).collect();
    let (sessions, failures) = client::open_many(&endpoint, users, args.concurrency, &counts).await;
    let open_secs = started.elapsed().as_secs_f64();
    drop(progress);

    let release = CancellationToken::new();
    let dropped = Arc::new(AtomicU64::new(0));
    let mut holders = JoinSet::new();
    for session in sessions.into_iter().flatten() {
        holders.spawn(hold(session, release.clone(), Arc::clone(&dropped)));
    }
    let opened = holders.len() as u64;
    eprintln!("idle: {opened} sessions open; waiting for the server's memory to settle");
    let (rss_after, rss_settled) = settled_memory(&args.metrics_url, args.settle_timeout).await?;
    let held = opened - dropped.load(Ordering::Relaxed);

    release.cancel();
    let (closed_by_server, unclean_closes) = collect_holders(holders).await;
    let report = IdleReport {
        scenario: "idle",
        urls: target.urls.clone(),
        tenant: endpoint.tenant().to_owned(),
        requested: args.connections,
        opened,
        held,
        handshake_failures: failures.total(),
        failures_by_cause: failures,
        closed_by_server,
        open_secs,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        rss_per_session_kib: per_session_kib(rss_before, rss_after, held),
        rss_settled,
        unclean_closes,
    };
    report::print(&report, target.json)
}

/// The progress line while sessions open.
fn open_progress(counts: &Arc<OpenCounts>, requested: usize) -> Progress {
    let counts = Arc::clone(counts);
    Progress::start(move |elapsed| {
        format!(
            "idle {:>4}s  opened {} of {requested}  failed {}",
            elapsed.as_secs(),
            counts.opened.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed)
        )
    })
}

/// Reads the server's memory until two readings in a row agree within 1%, or `timeout`
/// passes. Returns the last reading and whether it settled.
async fn settled_memory(metrics_url: &str, timeout: Duration) -> anyhow::Result<(f64, bool)> {
    let deadline = Instant::now() + timeout;
    let mut previous = scrape::metric(metrics_url, scrape::RESIDENT_MEMORY).await?;
    loop {
        tokio::time::sleep(SETTLE_POLL).await;
        let current = scrape::metric(metrics_url, scrape::RESIDENT_MEMORY).await?;
        if (current - previous).abs() <= previous * SETTLE_TOLERANCE {
            return Ok((current, true));
        }
        if Instant::now() >= deadline {
            return Ok((current, false));
        }
        previous = current;
    }
}

/// How one held session ended.
enum HoldOutcome {
    /// Closed by us when released; `clean` if the server completed the close handshake.
    Released { clean: bool },
    /// The server closed it (or it broke) while held; the label says how.
    Dropped(String),
}

/// Keeps a session open, reading (so pings are answered), until `release`; then closes it.
async fn hold(
    mut session: Connection,
    release: CancellationToken,
    dropped: Arc<AtomicU64>,
) -> HoldOutcome {
    let ended = loop {
        tokio::select! {
            () = release.cancelled() => {
                return HoldOutcome::Released { clean: session.close(CLOSE_TIMEOUT).await };
            }
            incoming = session.recv() => match incoming {
                // Nothing comes to an idle session but pings, answered on the way.
                Ok(_) => {}
                Err(ended) => break ended,
            },
        }
    };
    dropped.fetch_add(1, Ordering::Relaxed);
    HoldOutcome::Dropped(match ended {
        Disconnect::Closed { code, reason } => format!("{code} {reason}"),
        other => other.to_string(),
    })
}

/// Waits for every holder; returns the server's closes by label and the unclean closes.
async fn collect_holders(mut holders: JoinSet<HoldOutcome>) -> (Tally, u64) {
    let mut closed_by_server = Tally::default();
    let mut unclean = 0;
    while let Some(outcome) = holders.join_next().await {
        match outcome {
            Ok(HoldOutcome::Released { clean: true }) => {}
            Ok(HoldOutcome::Released { clean: false }) => unclean += 1,
            Ok(HoldOutcome::Dropped(label)) => closed_by_server.add(label, 1),
            Err(_) => unclean += 1,
        }
    }
    (closed_by_server, unclean)
}

/// The memory growth per session, in KiB (0 without sessions).
fn per_session_kib(before: f64, after: f64, sessions: u64) -> f64 {
    if sessions == 0 {
        return 0.0;
    }
    (after - before) / sessions as f64 / 1_024.0
}

impl std::fmt::Display for IdleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "idle sessions against {} (tenant {})",
            self.urls.join(", "),
            self.tenant
        )?;
        writeln!(
            f,
            "  sessions held       {} of {} requested (opened {} in {:.1} s)",
            self.held, self.requested, self.opened, self.open_secs
        )?;
        writeln!(
            f,
            "  handshake failures  {} ({})",
            self.handshake_failures, self.failures_by_cause
        )?;
        writeln!(f, "  closed by server    {}", self.closed_by_server)?;
        writeln!(
            f,
            "  server RSS          {} before, {} after{}",
            report::mib(self.rss_before_bytes),
            report::mib(self.rss_after_bytes),
            if self.rss_settled {
                ""
            } else {
                " (not settled)"
            }
        )?;
        writeln!(
            f,
            "  RSS per session     {:.2} KiB",
            self.rss_per_session_kib
        )?;
        writeln!(f, "  unclean closes      {}", self.unclean_closes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_per_session_is_in_kib_and_zero_without_sessions() {
        assert_eq!(
            per_session_kib(1_000.0, 1_000.0 + 8.0 * 1_024.0 * 10.0, 10),
            8.0
        );
        assert_eq!(per_session_kib(1.0, 2.0, 0), 0.0);
    }
}
