//! `peroxo bench group`: group messages at a fixed rate, measured open loop and verified.
//!
//! U users connect with protocol 2 (one session each). Setup creates G groups of S members
//! and waits until every member has seen each of its groups created. Then group message `i`
//! is due at `start + i / rate`, goes to group `i mod G` from its members in turn, and must
//! reach every other member: the open-loop machinery of [`crate::traffic`] paces it and
//! matches its ack and its S − 1 deliveries, and a message's delivery latency is that of its
//! last member. After the traffic every user's stream is read back with `sync` and checked
//! against what was acked. The run exits non-zero when either check fails.
//!
//! - [`plan`]: who is in which group; who sends what to which group, and when.
//! - [`setup`]: creating the groups and waiting for every member to know them.
//! - [`stream_check`]: the streams as storage keeps them, after the run.

mod plan;
mod setup;
mod stream_check;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use self::plan::{Layout, Plan};
use self::stream_check::StreamCheck;
use super::client::{self, Buffers, Protocol};
use super::report::{self, RunIdentity};
use super::rng;
use super::traffic::analysis::{self, DeliveryCheck, Measured, MessageCounts};
use super::traffic::{self, SessionsReport, names};
use super::{TargetArgs, WindowArgs};

/// The arguments of `peroxo bench group`.
#[derive(Debug, Args)]
pub struct GroupArgs {
    /// Users, each with one session. Only as many as the groups hold take part.
    #[arg(long, default_value_t = 1_000)]
    pub users: u32,
    /// Groups.
    #[arg(long, default_value_t = 200)]
    pub groups: u32,
    /// Members of each group, its creator included; --users must be a multiple of it.
    #[arg(long, default_value_t = 20)]
    pub members: u32,
    /// Group messages per second, over all groups.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    #[command(flatten)]
    pub window: WindowArgs,
    /// The size of each message's text, in bytes.
    #[arg(long, default_value_t = 100)]
    pub text_bytes: usize,
    /// The longest wait for the groups to be created and known to all their members.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub setup_timeout: Duration,
    /// Seed for the membership of the groups [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sessions being opened at once (while users connect, and to read streams back).
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Bind client sockets to 127.0.0.2 … 127.0.0.(1+K) in turn (0: the kernel chooses).
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,
}

/// What the group benchmark measured and found.
#[derive(Debug, Serialize)]
struct GroupReport {
    #[serde(flatten)]
    run: RunIdentity,
    /// The users taking part.
    users: u32,
    groups: u32,
    members: u32,
    /// The groups each user is in (at most).
    groups_per_user: usize,
    rate: u32,
    warmup_secs: f64,
    duration_secs: f64,
    text_bytes: usize,
    /// From the first `create_group` to every member knowing all its groups.
    setup_secs: f64,
    messages: MessageCounts,
    measured: Measured,
    /// Stream rows (a message in the stream of each member of its group, the sender's
    /// included) committed during the measured window, per second: acked messages × members.
    rows_per_sec: f64,
    check: DeliveryCheck,
    stream: StreamCheck,
    passed: bool,
    #[serde(flatten)]
    sessions: SessionsReport,
}

/// Runs the group benchmark.
pub(super) async fn run(
    target: &TargetArgs,
    tenant: String,
    args: GroupArgs,
) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(rng::fresh_seed);
    let layout = Arc::new(Layout::new(args.users, args.groups, args.members, seed)?);
    let timeline = args.window.timeline(args.rate)?;
    let endpoint = target
        .endpoint(tenant, args.source_ips, Buffers::Default, Protocol::V2)
        .await?;
    let users: Arc<[String]> = (0..layout.users()).map(names::user_name).collect();
    let connections = client::open_fresh(&endpoint, users, args.concurrency).await?;
    eprintln!(
        "group: {} users connected; creating {} groups of {}",
        layout.users(),
        layout.groups(),
        layout.members()
    );
    let setup_started = Instant::now();
    let (sessions, ids) = setup::set_up(connections, &layout, args.setup_timeout).await?;
    let setup_secs = setup_started.elapsed().as_secs_f64();
    let layout = Arc::unwrap_or_clone(layout);
    let groups_per_user = layout.groups_of(0).len();
    let plan = Plan::new(layout, timeline, ids);
    eprintln!(
        "group: groups ready in {setup_secs:.1} s; sending {} messages over {:?}",
        traffic::Plan::timeline(&plan).len(),
        args.window.total()
    );
    let options = traffic::Options {
        name: "group",
        text_bytes: args.text_bytes,
        drain: args.window.drain,
    };
    let mut traffic = traffic::run(sessions, plan, options).await?;
    eprintln!("group: reading every user's stream back");
    let (stream, last_seqs) =
        stream_check::check(&endpoint, &traffic.shared, args.concurrency).await;
    for peer in &mut traffic.peers {
        peer.announced = last_seqs.get(peer.user as usize).copied().unwrap_or(0);
    }
    let window = args.window.measured();
    let shared = &traffic.shared;
    let analysis = analysis::analyse(&shared.plan, &shared.ledger, window, &mut traffic.peers);
    let report = GroupReport {
        run: target.identity("group", endpoint.tenant(), Some(seed)),
        users: shared.plan.layout().users(),
        groups: args.groups,
        members: args.members,
        groups_per_user,
        rate: args.rate,
        warmup_secs: args.window.warmup.as_secs_f64(),
        duration_secs: args.window.duration.as_secs_f64(),
        text_bytes: args.text_bytes,
        setup_secs,
        rows_per_sec: analysis.measured.acked_per_sec * f64::from(args.members),
        passed: analysis.check.passed() && stream.problems() == 0,
        messages: analysis.messages,
        measured: analysis.measured,
        check: analysis.check,
        stream,
        sessions: traffic.sessions(),
    };
    report::print(&report, target.json)?;
    anyhow::ensure!(
        report.passed,
        "the delivery check failed: {} problems live (see `check`), {} in the streams (see \
         `stream`)",
        report.check.problems(),
        report.stream.problems()
    );
    Ok(())
}

impl std::fmt::Display for GroupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.run)?;
        writeln!(
            f,
            "  load            {} users in {} groups of {} ({} each), {} msg/s ({} rows/s), {} B texts, {:.0} s warm-up + {:.0} s measured",
            self.users,
            self.groups,
            self.members,
            self.groups_per_user,
            self.rate,
            u64::from(self.rate) * u64::from(self.members),
            self.text_bytes,
            self.warmup_secs,
            self.duration_secs
        )?;
        writeln!(f, "  setup           {:.2} s", self.setup_secs)?;
        write!(f, "{}{}", self.messages, self.measured)?;
        writeln!(f, "  stream rows     {:.0}/s committed", self.rows_per_sec)?;
        write!(f, "{}{}{}", self.sessions, self.check, self.stream)?;
        writeln!(f, "  verdict         {}", traffic::verdict(self.passed))
    }
}
