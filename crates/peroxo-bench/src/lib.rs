//! `peroxo bench`: a load generator that measures a running node over its public WebSocket
//! interface, exactly as clients see it.
//!
//! # Scenarios
//!
//! - `idle`: holds many sessions open and reports the server's resident memory per session.
//! - `dm`: users send direct messages to each other at a fixed rate (open loop); reports
//!   send→ack and send→delivery latency, throughput, and verifies the delivery contract
//!   (exactly once, in order per pair, gapless seqs). Exits non-zero when that check fails.
//! - `connect`: opens and closes sessions as fast as a given concurrency allows; reports
//!   handshakes per second and handshake latency.
//! - `group` (protocol 2): users in groups send group messages at a fixed rate (open loop);
//!   reports send→ack and send→delivery to a message's last member, messages and stream rows
//!   per second, and verifies the delivery contract live and in every user's stream read back
//!   afterwards. Exits non-zero when that check fails.
//! - `api`: messages sent through the server API (HTTP, with an API key) at a fixed rate
//!   (open loop), with an embedded webhook receiver; reports send→answer and commit→webhook
//!   latency, and exits non-zero when an acked message's `message.created` never arrives or a
//!   delivery's signature does not verify.
//! - `conversations` (protocol 2): one user with many conversations requests the first page
//!   of its conversation list at a fixed rate (open loop); reports request→reply latency.
//!   Exits non-zero when a reply is missing or wrong.
//!
//! `--url` may be repeated to spread the sessions over several nodes of a cluster: connection
//! `n` goes to the node of URL `n mod` their number (`idle` reads one node's memory and takes
//! one URL).
//!
//! Every run uses a fresh tenant (`bench-<unix-ms>`) unless `--tenant` names one, so runs never
//! see each other's messages and every user starts at seq 0.
//!
//! # Layout
//!
//! - `client`: endpoint, identities, source addresses; opening sessions as `peroxo-client`
//!   connections, and counting why some could not be opened.
//! - `histogram`: latency histograms and their percentile summary.
//! - `report`: tallies, the progress line, JSON or text output.
//! - `scrape`: reading one value from `/metrics`.
//! - `rng`: small seeded pseudo-random numbers.
//! - `traffic`: open-loop traffic at a fixed rate (pacing, the ledger of every command and
//!   delivery, the delivery check), shared by `dm`, `group` and `conversations`.
//! - `idle`, `dm`, `connect`, `group`, `conversations`, `api`: one module per scenario.
//! - `contract`: the delivery contract's rules, public: `dm` and the fault-injection suite
//!   both judge by them.

mod api;
mod client;
mod connect;
pub mod contract;
mod conversations;
mod dm;
mod group;
mod histogram;
mod idle;
mod report;
mod rng;
mod scrape;
mod traffic;

use clap::{ArgAction, Args, Subcommand};

pub use api::ApiArgs;
pub use connect::ConnectArgs;
pub use conversations::ConversationsArgs;
pub use dm::{DmArgs, MixArgs};
pub use group::GroupArgs;
pub use idle::IdleArgs;

/// The URL benchmarks connect to unless `--url` says otherwise.
const DEFAULT_URL: &str = "ws://127.0.0.1:8080/ws";

/// The arguments of `peroxo bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The options every scenario takes: which nodes, as whom, and how to report.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// A node's WebSocket URL. Repeat it (`--url A --url B`) to spread sessions over several
    /// nodes: connection n goes to the URL n mod their number, so in `dm` user i connects to
    /// URL i mod N. `idle` takes a single URL.
    #[arg(
        long = "url",
        value_name = "URL",
        global = true,
        action = ArgAction::Append,
        default_value = DEFAULT_URL
    )]
    pub urls: Vec<String>,
    /// Mint HS256 tokens signed with this secret (for a node in jwt mode) instead of naming
    /// users in the query string (dev mode).
    #[arg(
        long,
        global = true,
        env = "PEROXO_BENCH_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// The tenant of every benchmark user [default: a fresh one per run, named bench- and the
    /// Unix time in milliseconds].
    #[arg(long, global = true)]
    pub tenant: Option<String>,
    /// Print the report as one JSON object (the only output on stdout).
    #[arg(long, global = true)]
    pub json: bool,
}

impl TargetArgs {
    /// The endpoint every session of a scenario opens against: these URLs and identities,
    /// speaking `protocol`.
    async fn endpoint(
        &self,
        tenant: String,
        source_ips: u8,
        buffers: client::Buffers,
        protocol: client::Protocol,
    ) -> anyhow::Result<std::sync::Arc<client::Endpoint>> {
        let endpoint = client::Endpoint::resolve(
            &self.urls,
            tenant,
            self.jwt_secret.as_deref(),
            source_ips,
            buffers,
        )
        .await?;
        Ok(std::sync::Arc::new(endpoint.speaking(protocol)))
    }

    /// The identity of a run of `scenario` against these nodes, for its report.
    fn identity(
        &self,
        scenario: &'static str,
        tenant: &str,
        seed: Option<u64>,
    ) -> report::RunIdentity {
        report::RunIdentity {
            scenario,
            urls: self.urls.clone(),
            tenant: tenant.to_owned(),
            auth: self.auth_label(),
            seed: seed.map(|seed| seed.to_string()),
        }
    }

    /// How the load generator names its users, for the report.
    fn auth_label(&self) -> &'static str {
        if self.jwt_secret.is_some() {
            "jwt"
        } else {
            "dev"
        }
    }
}

/// When an open-loop scenario (`dm`, `group`, `conversations`) sends, and how long it waits
/// for what is still due.
#[derive(Debug, Clone, Args)]
pub struct WindowArgs {
    /// How long the measured window lasts.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Sending before the measured window, not counted in latency or throughput.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub warmup: std::time::Duration,
    /// The longest wait after the send phase for answers and deliveries still due.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain: std::time::Duration,
}

impl WindowArgs {
    /// The schedule of `rate` commands per second over the warm-up and the window.
    fn timeline(&self, rate: u32) -> anyhow::Result<traffic::Timeline> {
        traffic::Timeline::new(rate, self.warmup, self.duration)
    }

    /// The measured window, as offsets from the start.
    fn measured(&self) -> (std::time::Duration, std::time::Duration) {
        (self.warmup, self.warmup + self.duration)
    }

    /// The warm-up and the window together.
    fn total(&self) -> std::time::Duration {
        self.warmup + self.duration
    }
}

/// The benchmark to run.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Hold many idle sessions and measure the server's memory per session.
    Idle(IdleArgs),
    /// Send direct messages at a fixed rate; measure latency and verify delivery.
    Dm(DmArgs),
    /// Open and close sessions; measure handshakes per second and their latency.
    Connect(ConnectArgs),
    /// Send group messages at a fixed rate (protocol 2); measure latency to every member and
    /// verify delivery.
    Group(GroupArgs),
    /// Request a user's conversation list at a fixed rate (protocol 2); measure its latency.
    Conversations(ConversationsArgs),
    /// Send messages through the server API at a fixed rate, with a webhook receiver; measure
    /// send→answer and commit→webhook latency and verify every acked message's event arrives.
    Api(ApiArgs),
}

/// Runs the benchmark described by `args` and prints its report. Fails when the benchmark
/// could not run, when `dm` or `group` found the delivery contract broken, or when
/// `conversations` found a reply missing or wrong.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let tenant = match &args.target.tenant {
        Some(tenant) => tenant.clone(),
        None => fresh_tenant(),
    };
    match args.scenario {
        Scenario::Idle(scenario) => idle::run(&args.target, tenant, scenario).await,
        Scenario::Dm(scenario) => dm::run(&args.target, tenant, scenario).await,
        Scenario::Connect(scenario) => connect::run(&args.target, tenant, scenario).await,
        Scenario::Group(scenario) => group::run(&args.target, tenant, scenario).await,
        Scenario::Conversations(scenario) => {
            conversations::run(&args.target, tenant, scenario).await
        }
        // The API key decides the tenant.
        Scenario::Api(scenario) => api::run(&args.target, scenario).await,
    }
}

/// A tenant no earlier run used: `bench-<unix-ms>`.
fn fresh_tenant() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("bench-{millis}")
}

/// Checks a tenant or user id given on the command line, naming the option.
fn check_id(option: &str, id: &str) -> anyhow::Result<()> {
    peroxo_protocol::domain::validate_id(id).map_err(|e| anyhow::anyhow!("{option} {e}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `peroxo bench` as the binary wires it.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn urls_of(args: &[&str]) -> Vec<String> {
        let args = std::iter::once("bench").chain(args.iter().copied());
        Cli::try_parse_from(args).unwrap().bench.target.urls
    }

    #[test]
    fn url_may_be_repeated_and_defaults_to_one_local_node() {
        assert_eq!(urls_of(&["dm"]), [DEFAULT_URL]);
        assert_eq!(
            urls_of(&["dm", "--url", "ws://a:1/ws", "--url", "ws://b:2/ws"]),
            ["ws://a:1/ws", "ws://b:2/ws"]
        );
        assert_eq!(
            urls_of(&[
                "--url",
                "ws://a:1/ws",
                "--url",
                "ws://b:2/ws",
                "connect",
                "--total",
                "1"
            ]),
            ["ws://a:1/ws", "ws://b:2/ws"]
        );
    }

    fn scenario_of(args: &[&str]) -> Scenario {
        let args = std::iter::once("bench").chain(args.iter().copied());
        Cli::try_parse_from(args).unwrap().bench.scenario
    }

    #[test]
    fn group_defaults_to_a_thousand_users_in_two_hundred_groups_of_twenty() {
        let Scenario::Group(group) = scenario_of(&["group"]) else {
            panic!("not group");
        };
        assert_eq!((group.users, group.groups, group.members), (1_000, 200, 20));
        assert_eq!(group.rate, 1_000);
        assert_eq!(
            group.window.measured().1,
            std::time::Duration::from_secs(35)
        );
        let Scenario::Group(large) = scenario_of(&[
            "group",
            "--groups",
            "1",
            "--members",
            "1000",
            "--rate",
            "10",
            "--duration",
            "20s",
        ]) else {
            panic!("not group");
        };
        assert_eq!((large.groups, large.members, large.rate), (1, 1_000, 10));
        assert_eq!(large.window.duration, std::time::Duration::from_secs(20));
    }

    #[test]
    fn api_defaults_to_two_thousand_single_sends_a_second_to_the_local_node() {
        let Scenario::Api(api) = scenario_of(&["api", "--api-key", "k", "--webhook-secret", "s"])
        else {
            panic!("not api");
        };
        assert_eq!((api.rate, api.batch), (2_000, 1));
        assert_eq!(api.http_url, "http://127.0.0.1:8080");
        assert_eq!(api.webhook_listen.to_string(), "127.0.0.1:9100");
        assert_eq!(api.webhook_secret.as_deref(), Some("s"));
        let cli = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
        };
        assert!(cli(&["api", "--api-key", "k", "--no-webhook"]).is_ok());
        assert!(
            cli(&["api", "--api-key", "k"]).is_err(),
            "a secret, or --no-webhook"
        );
        assert!(
            cli(&[
                "api",
                "--api-key",
                "k",
                "--webhook-secret",
                "s",
                "--no-webhook"
            ])
            .is_err()
        );
    }
}
