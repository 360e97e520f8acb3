//! `peroxo bench api`: messages sent through the server API (`POST /api/v1/messages`, or
//! `/messages/batch` with `--batch`) at a fixed rate, open loop, while an embedded webhook
//! receiver takes the node's deliveries of `message.created`.
//!
//! Message `i` is due at `start + i / rate` (the pacer of [`crate::traffic`]) and goes from
//! sender `i mod --users` to a seeded random one of as many recipients, all users named after
//! the run, over `--connections` keep-alive connections ([`send`]). The node must have
//! `--api-key` in `[[server_api.keys]]` and a `[[webhooks.endpoints]]` for the key's tenant
//! whose `url` is `--webhook-listen` and whose `secret` is `--webhook-secret`, taking
//! `message.created` ([`receiver`]). The figures: send→answer per message (from its due time),
//! commit→webhook per message (the receipt time of its event minus the event's `ts`, the
//! commit time, both from this machine's clock), and sends and events per second. An acked
//! message whose event has not come when `--drain` runs out is missing: the run exits
//! non-zero, as it does for a delivery signed wrongly or a send never answered.
//!
//! The tenant is the key's (the global `--tenant` does not apply); the run's users and
//! `client_msg_id`s carry a tag of the run, so events of other runs or other senders of the
//! tenant are told apart (counted as foreign).
//!
//! - [`book`]: what became of each message, and the histograms.
//! - [`send`]: the HTTP connections.
//! - [`receiver`]: the webhook endpoint, its signature check and dedupe.

mod book;
mod receiver;
mod send;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::book::{Book, lock};
use self::receiver::Receiver;
use super::histogram::LatencySummary;
use super::report::{self, Progress, RunIdentity, Tally};
use super::traffic::{self, DRAIN_POLL, LEAD, pacer};
use super::{TargetArgs, WindowArgs, rng};

/// The arguments of `peroxo bench api`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The node's HTTP base URL (the server API is under /api/v1/).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub http_url: String,
    /// A key of `[[server_api.keys]]` (`peroxo apikey` makes one).
    #[arg(long, env = "PEROXO_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Where the webhook receiver listens: the node's `[[webhooks.endpoints]]` url.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub webhook_listen: SocketAddr,
    /// The endpoint's `secret`, to check each delivery's `PerOXO-Signature`.
    #[arg(
        long,
        env = "PEROXO_BENCH_WEBHOOK_SECRET",
        hide_env_values = true,
        required_unless_present = "no_webhook"
    )]
    pub webhook_secret: Option<String>,
    /// Send only: no receiver, no events expected (for a node without webhooks, to compare).
    #[arg(long, conflicts_with = "webhook_secret")]
    pub no_webhook: bool,
    /// Messages per second.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u32,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Senders, and as many recipients.
    #[arg(long, default_value_t = 100)]
    pub users: u32,
    /// Messages one request carries at most: 1 sends each with `POST /messages`; above,
    /// messages waiting for a connection go together in one `POST /messages/batch`.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// HTTP keep-alive connections to the node.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// The size of each message's text, in bytes.
    #[arg(long, default_value_t = 100)]
    pub text_bytes: usize,
    /// Seed for the choice of recipients [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// What the api benchmark measured and found.
#[derive(Debug, Serialize)]
struct ApiReport {
    #[serde(flatten)]
    run: RunIdentity,
    /// Where the receiver listened (`None`: `--no-webhook`).
    webhook_listen: Option<String>,
    users: u32,
    rate: u32,
    batch: usize,
    connections: usize,
    warmup_secs: f64,
    duration_secs: f64,
    text_bytes: usize,
    messages: Messages,
    measured: Measured,
    webhook: Webhook,
    drained: bool,
    drain_secs: f64,
    passed: bool,
}

/// What became of the messages sent.
#[derive(Debug, Serialize)]
struct Messages {
    planned: u64,
    sent: u64,
    acked: u64,
    /// Refusals and failed requests, by error code.
    errors: Tally,
    /// Sent and never answered within the drain.
    unanswered: u64,
    /// HTTP requests made (fewer than messages with `--batch`).
    requests: u64,
}

/// Latency and throughput over the measured window (warm-up excluded).
#[derive(Debug, Serialize)]
struct Measured {
    window_secs: f64,
    offered_per_sec: f64,
    /// Acks received during the window, per second.
    acked_per_sec: f64,
    /// This run's `message.created` events received during the window, per second.
    events_per_sec: f64,
    /// From each message's due time to the answer carrying its ack.
    send_to_answer: LatencySummary,
    /// From each message's commit (its event's `ts`) to its event's arrival at the receiver.
    commit_to_webhook: LatencySummary,
}

/// What the webhook receiver got.
#[derive(Debug, Serialize)]
struct Webhook {
    /// Deliveries (POSTs) whose signature held.
    deliveries: u64,
    /// This run's messages whose `message.created` arrived.
    events: u64,
    /// Acked messages whose event never arrived.
    missing: u64,
    /// Events received again (same id), dropped by the dedupe.
    duplicates: u64,
    /// Events of other kinds or of messages this run did not send.
    foreign: u64,
    /// Events of messages that were not acked (a refusal or no answer, yet committed).
    event_without_ack: u64,
    /// Deliveries refused for their signature or timestamp.
    bad_signatures: u64,
    /// Deliveries or events that could not be read.
    undecodable: u64,
    /// A second `message.created` for one message, or one naming no message of the run.
    misrouted: u64,
}

impl ApiReport {
    fn problems(&self) -> u64 {
        self.webhook.missing
            + self.webhook.bad_signatures
            + self.webhook.undecodable
            + self.webhook.misrouted
            + self.messages.unanswered
    }
}

/// Runs the api benchmark.
pub(super) async fn run(target: &TargetArgs, args: ApiArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.users >= 1, "--users must be at least 1");
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(
        (1..=1_000).contains(&args.batch),
        "--batch must be 1 to 1000"
    );
    let timeline = args.window.timeline(args.rate)?;
    let seed = args.seed.unwrap_or_else(rng::fresh_seed);
    let api = send::Api::new(&args.http_url, &args.api_key, args.connections);
    api.check_key().await?;
    let listener = match &args.webhook_secret {
        Some(secret) => {
            let listener = tokio::net::TcpListener::bind(args.webhook_listen)
                .await
                .with_context(|| {
                    format!(
                        "the webhook receiver cannot listen on {}",
                        args.webhook_listen
                    )
                })?;
            Some((listener, secret))
        }
        None => None,
    };
    let book = Arc::new(Book::new(
        timeline.clone(),
        args.window.measured(),
        Instant::now() + LEAD,
        listener.is_some(),
    ));
    let stop = CancellationToken::new();
    let server = listener.map(|(listener, secret)| {
        let app = Arc::new(Receiver::new(secret, Arc::clone(&book))).router();
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        })
    });
    let messages = Arc::new(send::Messages {
        users: args.users,
        seed,
        text_bytes: args.text_bytes,
    });
    let mut queues = Vec::with_capacity(args.connections);
    let mut connections = JoinSet::new();
    for _ in 0..args.connections {
        let (queue, queued) = mpsc::unbounded_channel();
        queues.push(queue);
        connections.spawn(send::connection(
            api.clone(),
            Arc::clone(&book),
            Arc::clone(&messages),
            args.batch,
            queued,
        ));
    }
    let receiving = if server.is_some() {
        format!("receiving webhooks on {}", args.webhook_listen)
    } else {
        "no webhook receiver".to_owned()
    };
    eprintln!(
        "api: sending {} messages over {:?} to {} ({receiving})",
        timeline.len(),
        args.window.total(),
        args.http_url,
    );
    let progress = progress(&book);
    let pacer = {
        let book = Arc::clone(&book);
        tokio::task::spawn_blocking(move || {
            pacer::pace_each(book.start, &book.timeline, |i| {
                // A connection's loop ends only when its queue closes, after the pacer.
                let _ = queues[i as usize % queues.len()].send(i);
            });
        })
    };
    pacer.await?;
    let send_end = Instant::now();
    let deadline = send_end + args.window.drain;
    let drained = drain(&book, &mut connections, deadline).await;
    let drain_secs = send_end.elapsed().as_secs_f64();
    drop(progress);
    connections.shutdown().await;
    stop.cancel();
    if let Some(server) = server {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }

    let report = report_of(&args, &book, seed, drained, drain_secs);
    report::print(&report, target.json)?;
    anyhow::ensure!(
        report.messages.acked > 0,
        "no message was acked (see `errors`)"
    );
    anyhow::ensure!(
        report.passed,
        "the webhook check failed: {} problems (missing {}, unanswered {}, bad signatures {}, \
         undecodable {}, misrouted {})",
        report.problems(),
        report.webhook.missing,
        report.messages.unanswered,
        report.webhook.bad_signatures,
        report.webhook.undecodable,
        report.webhook.misrouted
    );
    Ok(())
}

/// Waits until every connection has sent what it was given and every acked message's event
/// has come, or `deadline`. Returns whether it all arrived.
async fn drain(
    book: &Book,
    connections: &mut JoinSet<anyhow::Result<()>>,
    deadline: Instant,
) -> bool {
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        match tokio::time::timeout_at(deadline, connections.join_next()).await {
            Ok(Some(Ok(Err(error)))) => eprintln!("api: a connection failed: {error:#}"),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => return false,
        }
    }
    loop {
        if book.is_drained() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// The progress line: totals so far, and acks and events over the last second.
fn progress(book: &Arc<Book>) -> Progress {
    let book = Arc::clone(book);
    let last = (AtomicU64::new(0), AtomicU64::new(0));
    Progress::start(move |elapsed| {
        let fates = book.fates();
        let acked_rate = fates
            .acked
            .saturating_sub(last.0.swap(fates.acked, Ordering::Relaxed));
        let event_rate = fates
            .with_event
            .saturating_sub(last.1.swap(fates.with_event, Ordering::Relaxed));
        format!(
            "api {:>4}s  sent {}  acked {}  events {}  errors {}  in flight {}  acked/s {acked_rate}  events/s {event_rate}",
            elapsed.as_secs(),
            fates.sent,
            fates.acked,
            fates.with_event,
            fates.refused,
            fates.unanswered,
        )
    })
}

fn report_of(args: &ApiArgs, book: &Book, seed: u64, drained: bool, drain_secs: f64) -> ApiReport {
    let fates = book.fates();
    let c = &book.counters;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let window = args.window.duration;
    let measured = u64::from(book.timeline.measured_len());
    let tenant = lock(&book.tenant)
        .clone()
        .unwrap_or_else(|| "the API key's".to_owned());
    let mut report = ApiReport {
        run: RunIdentity {
            scenario: "api",
            urls: vec![args.http_url.clone()],
            tenant,
            auth: "api-key",
            seed: Some(seed.to_string()),
        },
        webhook_listen: (!args.no_webhook).then(|| args.webhook_listen.to_string()),
        users: args.users,
        rate: args.rate,
        batch: args.batch,
        connections: args.connections,
        warmup_secs: args.window.warmup.as_secs_f64(),
        duration_secs: window.as_secs_f64(),
        text_bytes: args.text_bytes,
        messages: Messages {
            planned: u64::from(book.timeline.len()),
            sent: fates.sent,
            acked: fates.acked,
            errors: lock(&book.errors).clone(),
            unanswered: fates.unanswered,
            requests: load(&c.requests),
        },
        measured: Measured {
            window_secs: window.as_secs_f64(),
            offered_per_sec: report::per_second(measured, window),
            acked_per_sec: report::per_second(load(&c.acked_in_window), window),
            events_per_sec: report::per_second(load(&c.events_in_window), window),
            send_to_answer: lock(&book.send_to_answer).summary(),
            commit_to_webhook: lock(&book.commit_to_webhook).summary(),
        },
        webhook: Webhook {
            deliveries: load(&c.deliveries),
            events: fates.with_event,
            missing: fates.missing,
            duplicates: load(&c.duplicates),
            foreign: load(&c.foreign),
            event_without_ack: fates.event_without_ack,
            bad_signatures: load(&c.bad_signatures),
            undecodable: load(&c.undecodable),
            misrouted: load(&c.misrouted),
        },
        drained,
        drain_secs,
        passed: false,
    };
    report.passed = report.problems() == 0;
    report
}

impl std::fmt::Display for ApiReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (m, w) = (&self.messages, &self.webhook);
        write!(f, "{}", self.run)?;
        let mode = if self.batch == 1 {
            "POST /messages each".to_owned()
        } else {
            format!("POST /messages/batch of up to {}", self.batch)
        };
        writeln!(
            f,
            "  load            {} senders, {} msg/s, {} B texts, {mode}, {} connections, {:.0} s warm-up + {:.0} s measured",
            self.users,
            self.rate,
            self.text_bytes,
            self.connections,
            self.warmup_secs,
            self.duration_secs
        )?;
        writeln!(
            f,
            "  messages        {} planned, {} sent, {} acked, {} unanswered ({} requests)",
            m.planned, m.sent, m.acked, m.unanswered, m.requests
        )?;
        writeln!(f, "  errors          {}", m.errors)?;
        writeln!(
            f,
            "  throughput      offered {:.0}/s, acked {:.0}/s, webhook events {:.0}/s",
            self.measured.offered_per_sec,
            self.measured.acked_per_sec,
            self.measured.events_per_sec
        )?;
        writeln!(f, "  send→answer     {}", self.measured.send_to_answer)?;
        writeln!(f, "  commit→webhook  {}", self.measured.commit_to_webhook)?;
        writeln!(
            f,
            "  webhook         {} deliveries, {} events of {} acked messages, {} missing, {} duplicates, {} foreign, {} without ack",
            w.deliveries,
            w.events,
            m.acked,
            w.missing,
            w.duplicates,
            w.foreign,
            w.event_without_ack
        )?;
        writeln!(
            f,
            "  checks          bad signatures {}, undecodable {}, misrouted {}",
            w.bad_signatures, w.undecodable, w.misrouted
        )?;
        let drain = if self.drained {
            "complete"
        } else {
            "INCOMPLETE"
        };
        writeln!(f, "  drain           {drain} in {:.2} s", self.drain_secs)?;
        writeln!(f, "  verdict         {}", traffic::verdict(self.passed))
    }
}
