//! `peroxo bench dm`: direct messages at a fixed rate, measured open loop and verified.
//!
//! U users connect (one session each, protocol 1). Message `i` is due at `start + i / rate`
//! and goes from user `i mod U` to a seeded random other user; the open-loop machinery of
//! [`crate::traffic`] paces, matches and checks it. The run exits non-zero when the delivery
//! check fails.
//!
//! With `--edits`, `--reactions` or `--deletes`, users connect with protocol 3 and that share
//! of the commands changes an earlier message instead of sending one ([`mix`]); a change's
//! latency runs from its due time to its event's arrival at the other participant, reported
//! apart from the sends' in the same run.
//!
//! - [`plan`]: who sends what to whom, and when.
//! - [`mix`]: which commands change a message, and which message.

mod mix;
mod plan;

pub use mix::MixArgs;

use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use self::plan::Plan;
use super::client::{self, Buffers, Protocol};
use super::report::{self, RunIdentity};
use super::rng;
use super::traffic::analysis::{self, DeliveryCheck, Measured, MessageCounts};
use super::traffic::{self, Session, SessionsReport, names};
use super::{TargetArgs, WindowArgs};

/// The arguments of `peroxo bench dm`.
#[derive(Debug, Args)]
pub struct DmArgs {
    /// Users, each with one session.
    #[arg(long, default_value_t = 1_000)]
    pub users: u32,
    /// Messages per second, over all users.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u32,
    #[command(flatten)]
    pub window: WindowArgs,
    /// The size of each message's text, in bytes.
    #[arg(long, default_value_t = 100)]
    pub text_bytes: usize,
    /// Seed for the choice of peers [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sessions being opened at once while users connect.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Bind client sockets to 127.0.0.2 … 127.0.0.(1+K) in turn (0: the kernel chooses).
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,
    #[command(flatten)]
    pub mix: MixArgs,
}

/// What the dm benchmark measured and found.
#[derive(Debug, Serialize)]
struct DmReport {
    #[serde(flatten)]
    run: RunIdentity,
    users: u32,
    rate: u32,
    warmup_secs: f64,
    duration_secs: f64,
    text_bytes: usize,
    messages: MessageCounts,
    measured: Measured,
    check: DeliveryCheck,
    passed: bool,
    #[serde(flatten)]
    sessions: SessionsReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<mix::MixReport>,
}

/// Runs the dm benchmark.
pub(super) async fn run(target: &TargetArgs, tenant: String, args: DmArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(rng::fresh_seed);
    let mut plan = Plan::new(args.users, args.window.timeline(args.rate)?, seed)?;
    let mut protocol = Protocol::V1;
    let mix = if args.mix.any() {
        let mix = Arc::new(mix::Mix::new(args.mix, plan.len(), seed)?);
        plan = plan.with_mix(Arc::clone(&mix));
        protocol = Protocol::V3;
        Some(mix)
    } else {
        None
    };
    let endpoint = target
        .endpoint(tenant, args.source_ips, Buffers::Default, protocol)
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
        args.window.total()
    );
    let options = traffic::Options {
        name: "dm",
        text_bytes: args.text_bytes,
        drain: args.window.drain,
    };
    let mut traffic = traffic::run(sessions, plan, options).await?;
    let window = args.window.measured();
    let shared = &traffic.shared;
    let analysis = analysis::analyse(&shared.plan, &shared.ledger, window, &mut traffic.peers);
    let changes = mix.map(|mix| shared.plan.mix_report(&mix, args.mix));
    let report = DmReport {
        run: target.identity("dm", endpoint.tenant(), Some(seed)),
        users: args.users,
        rate: args.rate,
        warmup_secs: args.window.warmup.as_secs_f64(),
        duration_secs: args.window.duration.as_secs_f64(),
        text_bytes: args.text_bytes,
        passed: analysis.check.passed(),
        messages: analysis.messages,
        measured: analysis.measured,
        check: analysis.check,
        sessions: traffic.sessions(),
        changes,
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
        write!(f, "{}", self.run)?;
        writeln!(
            f,
            "  load            {} users, {} msg/s, {} B texts, {:.0} s warm-up + {:.0} s measured",
            self.users, self.rate, self.text_bytes, self.warmup_secs, self.duration_secs
        )?;
        write!(f, "{}", self.messages)?;
        if let Some(changes) = &self.changes {
            write!(f, "{changes}")?;
        }
        write!(f, "{}{}", self.measured, self.sessions)?;
        write!(f, "{}", self.check)?;
        writeln!(f, "  verdict         {}", traffic::verdict(self.passed))
    }
}
