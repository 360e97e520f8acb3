//! `peroxo bench conversations`: the conversation list of a user with many conversations,
//! requested at a fixed rate and measured open loop.
//!
//! Setup gives one owner `--conversations` conversations (direct ones and `--groups` groups,
//! see [`setup`]). Then request `i`, the first page of the owner's list, is due at
//! `start + i / rate` on the owner's one session; the open-loop machinery of
//! [`crate::traffic`] paces it and times it from its due time to its reply. Every reply must
//! be a full page with the owner's whole unread count; the run exits non-zero when one is not,
//! or when a request goes unanswered.
//!
//! - [`plan`]: the requests and what their replies must say.
//! - [`setup`]: building the owner's conversations.

mod plan;
mod setup;

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use self::plan::Plan;
use self::setup::Shape;
use super::client::{Buffers, Protocol};
use super::histogram::LatencySummary;
use super::report::{self, RunIdentity, Tally};
use super::traffic::{self, SessionsReport};
use super::{TargetArgs, WindowArgs};

/// The arguments of `peroxo bench conversations`.
#[derive(Debug, Args)]
pub struct ConversationsArgs {
    /// Conversations the owner has.
    #[arg(long, default_value_t = 1_000)]
    pub conversations: u32,
    /// How many of them are groups (the others are direct conversations).
    #[arg(long, default_value_t = 100)]
    pub groups: u32,
    /// Conversations each request asks for (a page of the list).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// `conversations` requests per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    #[command(flatten)]
    pub window: WindowArgs,
    /// The longest wait for the owner's conversations to be built.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub setup_timeout: Duration,
    /// Sessions being opened at once while the peers connect.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
}

/// What the conversations benchmark measured and found.
#[derive(Debug, Serialize)]
struct ConversationsReport {
    #[serde(flatten)]
    run: RunIdentity,
    conversations: u32,
    groups: u32,
    direct: u32,
    limit: u32,
    rate: u32,
    warmup_secs: f64,
    duration_secs: f64,
    /// From the first peer's message to the owner's list being verified.
    setup_secs: f64,
    requests: Requests,
    /// From each request's due time to its reply.
    request_to_reply: LatencySummary,
    passed: bool,
    #[serde(flatten)]
    sessions: SessionsReport,
}

/// What became of the requests.
#[derive(Debug, Serialize)]
struct Requests {
    planned: u64,
    sent: u64,
    answered: u64,
    /// Requests answered with an error, by code.
    errors: Tally,
    /// Replies that were not a full page with the owner's whole unread count.
    wrong_replies: u64,
    /// Requests sent and never answered.
    unanswered: u64,
    undecodable: u64,
    offered_per_sec: f64,
    /// Replies received during the measured window, per second.
    answered_per_sec: f64,
}

impl Requests {
    fn problems(&self) -> u64 {
        self.errors.total() + self.wrong_replies + self.unanswered + self.undecodable
    }
}

/// Runs the conversations benchmark.
pub(super) async fn run(
    target: &TargetArgs,
    tenant: String,
    args: ConversationsArgs,
) -> anyhow::Result<()> {
    let shape = Shape::new(args.conversations, args.groups)?;
    anyhow::ensure!(
        (1..=peroxo_protocol::event::MAX_CONVERSATIONS_LIMIT).contains(&args.limit),
        "--limit must be 1 to {}",
        peroxo_protocol::event::MAX_CONVERSATIONS_LIMIT
    );
    let timeline = args.window.timeline(args.rate)?;
    let endpoint = target
        .endpoint(tenant, 0, Buffers::Default, Protocol::V2)
        .await?;
    let setup_started = Instant::now();
    let owner = setup::set_up(&endpoint, shape, args.concurrency, args.setup_timeout).await?;
    let setup_secs = setup_started.elapsed().as_secs_f64();
    let plan = Plan::new(timeline, args.limit, args.conversations, owner.total_unread);
    eprintln!(
        "conversations: the owner's {} conversations are ready ({setup_secs:.1} s); sending {} \
         requests over {:?}",
        args.conversations,
        traffic::Plan::timeline(&plan).len(),
        args.window.total()
    );
    let options = traffic::Options {
        name: "conversations",
        text_bytes: 0,
        drain: args.window.drain,
    };
    let mut traffic = traffic::run(vec![owner.session], plan, options).await?;
    let shared = &traffic.shared;
    let window = args.window.measured();
    let analysis =
        traffic::analysis::analyse(&shared.plan, &shared.ledger, window, &mut traffic.peers);
    let (counts, measured, check) = (&analysis.messages, &analysis.measured, &analysis.check);
    let requests = Requests {
        planned: counts.planned,
        sent: counts.sent,
        answered: counts.acked,
        errors: counts.errors.clone(),
        wrong_replies: check.misrouted,
        unanswered: check.unanswered,
        undecodable: check.undecodable,
        offered_per_sec: measured.offered_per_sec,
        answered_per_sec: measured.acked_per_sec,
    };
    let report = ConversationsReport {
        run: target.identity("conversations", endpoint.tenant(), None),
        conversations: args.conversations,
        groups: shape.groups,
        direct: shape.direct,
        limit: args.limit,
        rate: args.rate,
        warmup_secs: args.window.warmup.as_secs_f64(),
        duration_secs: args.window.duration.as_secs_f64(),
        setup_secs,
        passed: requests.problems() == 0 && check.passed(),
        requests,
        request_to_reply: measured.send_to_ack,
        sessions: traffic.sessions(),
    };
    report::print(&report, target.json)?;
    anyhow::ensure!(
        report.passed,
        "{} requests failed or were answered wrongly (see `requests`)",
        report.requests.problems()
    );
    Ok(())
}

impl std::fmt::Display for ConversationsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.requests;
        write!(f, "{}", self.run)?;
        writeln!(
            f,
            "  load            {} conversations ({} direct, {} groups), pages of {}, {} req/s, {:.0} s warm-up + {:.0} s measured",
            self.conversations,
            self.direct,
            self.groups,
            self.limit,
            self.rate,
            self.warmup_secs,
            self.duration_secs
        )?;
        writeln!(f, "  setup           {:.2} s", self.setup_secs)?;
        writeln!(
            f,
            "  requests        {} planned, {} sent, {} answered, {} unanswered",
            r.planned, r.sent, r.answered, r.unanswered
        )?;
        writeln!(f, "  errors          {}", r.errors)?;
        writeln!(
            f,
            "  wrong replies   {} (undecodable frames {})",
            r.wrong_replies, r.undecodable
        )?;
        writeln!(
            f,
            "  throughput      offered {:.0}/s, answered {:.0}/s",
            r.offered_per_sec, r.answered_per_sec
        )?;
        writeln!(f, "  request→reply   {}", self.request_to_reply)?;
        write!(f, "{}", self.sessions)?;
        writeln!(f, "  verdict         {}", traffic::verdict(self.passed))
    }
}
