//! `peroxo bench connect`: how fast the server opens sessions.
//!
//! `--concurrency` workers open sessions one after another until `--total` have been tried.
//! Each session is timed from TCP connect to `welcome` received (in jwt mode the token is
//! minted before the clock starts), then closed with a close handshake before the worker
//! opens the next one. Handshakes per second are the sessions opened divided by the whole
//! run's duration, closes included.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use tokio::task::JoinSet;

use super::TargetArgs;
use super::client::{Buffers, CLOSE_TIMEOUT, Endpoint, OpenCounts, Protocol};
use super::histogram::{Latency, LatencySummary};
use super::report::{self, Progress, Tally};

/// The arguments of `peroxo bench connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Sessions to open (and close) in all.
    #[arg(long)]
    pub total: usize,
    /// Sessions being opened or closed at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Bind client sockets to 127.0.0.2 … 127.0.0.(1+K) in turn (0: the kernel chooses).
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,
}

/// What the connect benchmark measured.
#[derive(Debug, Serialize)]
struct ConnectReport {
    scenario: &'static str,
    /// The nodes' WebSocket URLs, in the order sessions were spread over them.
    urls: Vec<String>,
    tenant: String,
    auth: &'static str,
    total: usize,
    concurrency: usize,
    source_ips: u8,
    opened: u64,
    failed: u64,
    failures_by_cause: Tally,
    /// Sessions whose close handshake the server did not complete.
    unclean_closes: u64,
    elapsed_secs: f64,
    handshakes_per_sec: f64,
    /// TCP connect to `welcome` received.
    handshake: LatencySummary,
}

/// What one worker saw.
struct WorkerResult {
    latency: Latency,
    failures: Tally,
    unclean_closes: u64,
}

/// Runs the connect benchmark.
pub(super) async fn run(
    target: &TargetArgs,
    tenant: String,
    args: ConnectArgs,
) -> anyhow::Result<()> {
    anyhow::ensure!(args.total > 0, "--total must be at least 1");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let endpoint = target
        .endpoint(tenant, args.source_ips, Buffers::Lean, Protocol::V1)
        .await?;
    let counts = Arc::new(OpenCounts::default());
    let progress = progress(&counts, args.total);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency.min(args.total) {
        let (endpoint, next, counts) = (
            Arc::clone(&endpoint),
            Arc::clone(&next),
            Arc::clone(&counts),
        );
        workers.spawn(worker(endpoint, next, args.total, counts));
    }
    let mut latency = Latency::new();
    let mut failures = Tally::default();
    let mut unclean_closes = 0;
    while let Some(result) = workers.join_next().await {
        let result = result?;
        latency.merge(&result.latency);
        failures.merge(result.failures);
        unclean_closes += result.unclean_closes;
    }
    let elapsed = started.elapsed();
    drop(progress);
    let opened = counts.opened.load(Ordering::Relaxed);
    let report = ConnectReport {
        scenario: "connect",
        urls: target.urls.clone(),
        tenant: endpoint.tenant().to_owned(),
        auth: target.auth_label(),
        total: args.total,
        concurrency: args.concurrency,
        source_ips: args.source_ips,
        opened,
        failed: failures.total(),
        failures_by_cause: failures,
        unclean_closes,
        elapsed_secs: elapsed.as_secs_f64(),
        handshakes_per_sec: report::per_second(opened, elapsed),
        handshake: latency.summary(),
    };
    report::print(&report, target.json)
}

/// Opens and closes sessions one after another until `total` have been tried in all.
async fn worker(
    endpoint: Arc<Endpoint>,
    next: Arc<AtomicUsize>,
    total: usize,
    counts: Arc<OpenCounts>,
) -> WorkerResult {
    let mut result = WorkerResult {
        latency: Latency::new(),
        failures: Tally::default(),
        unclean_closes: 0,
    };
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= total {
            return result;
        }
        let request = match endpoint.request_url(&format!("c{n}"), n) {
            Ok(request) => request,
            Err(error) => {
                result.failures.add(error.label(), 1);
                counts.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let started = Instant::now();
        match endpoint.open_session_at(&request, n).await {
            Ok(session) => {
                result.latency.record(started.elapsed());
                counts.opened.fetch_add(1, Ordering::Relaxed);
                if !session.close(CLOSE_TIMEOUT).await {
                    result.unclean_closes += 1;
                }
            }
            Err(error) => {
                result.failures.add(error.label(), 1);
                counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The progress line: sessions so far and the rate over the last second.
fn progress(counts: &Arc<OpenCounts>, total: usize) -> Progress {
    let counts = Arc::clone(counts);
    let last = AtomicU64::new(0);
    Progress::start(move |elapsed| {
        let opened = counts.opened.load(Ordering::Relaxed);
        let rate = opened - last.swap(opened, Ordering::Relaxed);
        format!(
            "connect {:>4}s  opened {opened} of {total}  failed {}  {rate}/s",
            elapsed.as_secs(),
            counts.failed.load(Ordering::Relaxed)
        )
    })
}

impl std::fmt::Display for ConnectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "connect against {} (tenant {}, {} identities)",
            self.urls.join(", "),
            self.tenant,
            self.auth
        )?;
        writeln!(
            f,
            "  sessions        {} opened and closed of {} ({} at a time, {} source addresses)",
            self.opened, self.total, self.concurrency, self.source_ips
        )?;
        writeln!(
            f,
            "  failures        {} ({})",
            self.failed, self.failures_by_cause
        )?;
        writeln!(f, "  unclean closes  {}", self.unclean_closes)?;
        writeln!(
            f,
            "  rate            {:.0} handshakes/s over {:.2} s",
            self.handshakes_per_sec, self.elapsed_secs
        )?;
        writeln!(f, "  handshake       {}", self.handshake)
    }
}
