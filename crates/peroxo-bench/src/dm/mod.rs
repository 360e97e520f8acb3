//! `peroxo bench dm`: direct messages at a fixed rate, measured open loop and verified.
//!
//! U users connect (one session each, protocol 1). Message `i` is due at `start + i / rate`
//! and goes from user `i mod U` to a seeded random other user; the open-loop machinery of
//! [`crate::traffic`] paces, matches and checks it. The run exits non-zero when the delivery
//! check fails.
//!
//! - [`plan`]: who sends what to whom, and when.

mod plan;

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use self::plan::Plan;
use super::TargetArgs;
use super::client::{self, Buffers, Protocol};
use super::report;
use super::rng;
use super::traffic::analysis::{self, DeliveryCheck, Measured, MessageCounts};
use super::traffic::{self, Session, SessionsReport, names};

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
    #[serde(flatten)]
    sessions: SessionsReport,
}

/// Runs the dm benchmark.
pub(super) async fn run(target: &TargetArgs, tenant: String, args: DmArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(rng::fresh_seed);
    let plan = Plan::new(args.users, args.rate, args.warmup, args.duration, seed)?;
    let endpoint = target
        .endpoint(tenant, args.source_ips, Buffers::Default, Protocol::V1)
        .await?;
    let users: Arc<[String]> = (0..args.users).map(names::user_name).collect();
    let sessions = client::open_fresh(&endpoint, users, args.concurrency)
        .await?
        .into_iter()
        .map(|connection| Session {
            socket: connection.into_parts().0,
            seen: Vec::new(),
        })
        .collect();
    eprintln!(
        "dm: {} users connected; sending {} messages over {:?}",
        args.users,
        plan.len(),
        args.warmup + args.duration
    );
    let options = traffic::Options {
        name: "dm",
        text_bytes: args.text_bytes,
        drain: args.drain,
    };
    let mut traffic = traffic::run(sessions, plan, options).await?;
    let window = (args.warmup, args.warmup + args.duration);
    let shared = &traffic.shared;
    let analysis = analysis::analyse(&shared.plan, &shared.ledger, window, &mut traffic.peers);
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
        sessions: traffic.sessions(),
    };
    report::print(&report, target.json)?;
    anyhow::ensure!(
        report.passed,
        "the delivery check failed: {} problems (see `check`)",
        report.check.problems()
    );
    Ok(())
}

impl std::fmt::Display for DmReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
        write!(f, "{}{}{}", self.messages, self.measured, self.sessions)?;
        write!(f, "{}", self.check)?;
        writeln!(f, "  verdict         {}", traffic::verdict(self.passed))
    }
}
