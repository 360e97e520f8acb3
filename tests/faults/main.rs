//! The fault-injection suite: kills, freezes and cuts PerOXO's own parts under traffic (direct
//! messages, group messages, group changes, read marks, edits, deletes and reactions over
//! protocol 3, direct messages over protocol 1), then checks that nothing acknowledged was
//! lost, nothing was stored twice or without a sender, every user ends with its whole stream
//! (messages and events) exactly once, gapless and in order, every member of a group with
//! exactly the group's messages and events of its memberships in the same order, every
//! group's members as its events imply, every conversation list and read receipt agrees with
//! the users' streams, every message ends in one state (text, edit, deletion, reactions) in
//! every participant's history, in every replayed stream and in the database, with every
//! answered change in it, memory stayed bounded, and only the process a case killed ever died;
//! and, where a case has a webhook receiver, that it got the whole event feed, signed and in
//! commit order, across the kill.
//!
//! Every part is a real OS process (`peroxo serve`, `peroxo store`, `nats-server`), so a kill
//! is a real kill. One line per case: the faults injected, direct and group messages sent,
//! acked and delivered, marks made, and each invariant's result; the details of any failure
//! follow it.
//!
//! ```text
//! cargo test --test faults                          # every case, short (the CI run)
//! cargo test --test faults -- storage               # the cases whose name contains "storage"
//! PEROXO_FAULTS=long cargo test --release --test faults
//! ```
//!
//! Needs PostgreSQL (`PEROXO_TEST_POSTGRES_URL`, default 127.0.0.1:5432, user postgres) and
//! the `nats-server` binary (Debian package `nats-server`, or `NATS_SERVER` naming it); see
//! docs/RELIABILITY.md.

mod changes;
#[path = "../system/common.rs"]
mod common;
mod final_reads;
mod probe;
mod proxy;
mod report;
mod rig;
mod totals;
mod user;
mod verdict;
mod webhook;
mod workload;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use rig::{Backend, Counters, Layout, Rig};
use tokio::time::Instant;
use totals::{ClientTotals, TrafficTotals};
use verdict::Evidence;
use workload::{Traffic, Workload};

/// The fault a case injects.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL the storage service, start it again after the outage.
    StorageKill,
    /// SIGSTOP the storage service, SIGCONT after the outage.
    StorageFreeze,
    /// SIGKILL the (only) gateway, with its embedded storage, and start it again.
    GatewayKill,
    /// Crash random users' session actors through the test hook, every few hundred ms.
    SessionPanics,
    /// Crash the Router through the test hook.
    RouterPanic,
    /// Crash SessionSupervisor through the test hook: every connection closes with 1011 and
    /// its client reconnects.
    SupervisorPanic,
    /// Crash the Cluster actor of the first node of a cluster through the test hook.
    ClusterPanic,
    /// SIGKILL one gateway node of a cluster for good; its users move to the others.
    NodeKill,
    /// SIGKILL NATS, start it again after the outage.
    NatsKill,
    /// Cut the link between the gateway and storage, restore it after the outage.
    LinkCut,
    /// SIGKILL the storage service the gateway uses, one of two: the gateway fails over to
    /// the other; the killed one comes back after the outage.
    StorageFailover,
    /// Reload the gateway's configuration (SIGHUP) with a rate limit the workload exceeds,
    /// then, after the outage, with the loose one again.
    Reload,
}

struct Case {
    name: &'static str,
    layout: Layout,
    fault: Fault,
    /// The gateway delivers the tenant's event feed to a webhook receiver in the suite, which
    /// the verdict checks (`webhooks-complete`).
    webhook: bool,
}

const fn layout(backend: Backend, embedded: bool, nodes: usize, proxy: bool) -> Layout {
    Layout {
        backend,
        embedded,
        nodes,
        proxy,
        stores: 1,
        max_pending: 10_000,
    }
}

/// Every case; `small_outbox` is the outbox of the case whose freeze must fill it.
fn cases(small_outbox: usize) -> Vec<Case> {
    use Backend::{Lsm, Postgres, Sqlite};
    vec![
        Case {
            name: "storage-kill/sqlite",
            layout: layout(Sqlite, false, 1, false),
            fault: Fault::StorageKill,
            webhook: false,
        },
        Case {
            name: "storage-kill/postgres",
            layout: layout(Postgres, false, 1, false),
            fault: Fault::StorageKill,
            webhook: false,
        },
        Case {
            name: "storage-kill/lsm",
            layout: layout(Lsm, false, 1, false),
            fault: Fault::StorageKill,
            webhook: false,
        },
        Case {
            name: "storage-freeze/sqlite",
            // A small outbox, so that the freeze fills it and senders are refused.
            layout: Layout {
                max_pending: small_outbox,
                ..layout(Sqlite, false, 1, false)
            },
            fault: Fault::StorageFreeze,
            webhook: false,
        },
        Case {
            name: "gateway-kill/sqlite",
            layout: layout(Sqlite, true, 1, false),
            fault: Fault::GatewayKill,
            webhook: false,
        },
        Case {
            name: "gateway-kill/lsm",
            layout: layout(Lsm, true, 1, false),
            fault: Fault::GatewayKill,
            webhook: false,
        },
        Case {
            name: "webhook-kill/sqlite",
            layout: layout(Sqlite, true, 1, false),
            fault: Fault::GatewayKill,
            webhook: true,
        },
        Case {
            name: "session-panics/sqlite",
            layout: layout(Sqlite, true, 1, false),
            fault: Fault::SessionPanics,
            webhook: false,
        },
        Case {
            name: "router-panic/sqlite",
            layout: layout(Sqlite, true, 1, false),
            fault: Fault::RouterPanic,
            webhook: false,
        },
        Case {
            name: "supervisor-panic/sqlite",
            layout: layout(Sqlite, true, 1, false),
            fault: Fault::SupervisorPanic,
            webhook: false,
        },
        Case {
            name: "cluster-panic/postgres",
            layout: layout(Postgres, false, 2, false),
            fault: Fault::ClusterPanic,
            webhook: false,
        },
        Case {
            name: "node-kill/postgres",
            layout: layout(Postgres, false, 3, false),
            fault: Fault::NodeKill,
            webhook: false,
        },
        Case {
            name: "nats-kill/postgres",
            layout: layout(Postgres, false, 2, false),
            fault: Fault::NatsKill,
            webhook: false,
        },
        Case {
            name: "link-cut/sqlite",
            layout: layout(Sqlite, false, 1, true),
            fault: Fault::LinkCut,
            webhook: false,
        },
        Case {
            name: "storage-failover/postgres",
            layout: Layout {
                stores: 2,
                ..layout(Postgres, false, 1, false)
            },
            fault: Fault::StorageFailover,
            webhook: false,
        },
        Case {
            name: "reload/sqlite",
            layout: layout(Sqlite, true, 1, false),
            fault: Fault::Reload,
            webhook: false,
        },
    ]
}

/// How hard the suite pushes: the short run for CI, the long one for a release.
#[derive(Debug, Clone, Copy)]
struct Scale {
    traffic: Traffic,
    /// When the first fault strikes, and between the starts of two faults.
    first_fault: Duration,
    fault_every: Duration,
    faults: u32,
    /// How long each kill, freeze or cut lasts.
    outage: Duration,
    /// `storage.max_pending` in `storage-freeze`: small enough that a freeze fills it at
    /// once, large enough to carry the offered load between freezes (a group message holds
    /// one place per member: the short run offers about 330 rows a second, the long one
    /// about 2,000, which 64 places, one SQLite commit per batch, do not carry on a loaded
    /// machine).
    small_outbox: usize,
}

impl Scale {
    fn from_env() -> Self {
        let long = std::env::var("PEROXO_FAULTS").is_ok_and(|v| v == "long");
        if long {
            Self {
                traffic: Traffic {
                    users: 200,
                    v1_users: 20,
                    rate: 1_000.0,
                    groups: 20,
                    group_size: 10,
                    group_rate: 100.0,
                    mark_rate: 50.0,
                    change_rate: 20.0,
                    edit_rate: 110.0,
                    delete_rate: 17.0,
                    reaction_rate: 55.0,
                    duration: Duration::from_secs(60),
                    seed: 7,
                },
                first_fault: Duration::from_secs(5),
                fault_every: Duration::from_secs(12),
                faults: 4,
                outage: Duration::from_secs(4),
                small_outbox: 512,
            }
        } else {
            Self {
                traffic: Traffic {
                    users: 16,
                    v1_users: 3,
                    rate: 150.0,
                    groups: 4,
                    group_size: 6,
                    group_rate: 30.0,
                    mark_rate: 20.0,
                    change_rate: 4.0,
                    edit_rate: 18.0,
                    delete_rate: 3.0,
                    reaction_rate: 9.0,
                    duration: Duration::from_secs(9),
                    seed: 7,
                },
                first_fault: Duration::from_secs(2),
                fault_every: Duration::from_secs(5),
                faults: 1,
                outage: Duration::from_secs(3),
                small_outbox: 64,
            }
        }
    }
}

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let scale = Scale::from_env();
    if std::env::args().any(|a| a == "--list") {
        for case in cases(scale.small_outbox) {
            println!("{}: test", case.name);
        }
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let selected: Vec<Case> = cases(scale.small_outbox)
        .into_iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str())))
        .collect();
    let traffic = scale.traffic;
    println!(
        "\nfault injection: {} cases, {} users (and {} on protocol 1), {} direct messages/s, {} \
         groups of {} with {} messages/s and {} changes/s, {} read marks/s, {} edits/s, {} \
         deletes/s, {} reactions/s, for {:?}; {} fault(s) of {:?} each",
        selected.len(),
        traffic.users,
        traffic.v1_users,
        traffic.rate,
        traffic.groups,
        traffic.group_size,
        traffic.group_rate,
        traffic.change_rate,
        traffic.mark_rate,
        traffic.edit_rate,
        traffic.delete_rate,
        traffic.reaction_rate,
        traffic.duration,
        scale.faults,
        scale.outage
    );
    let mut failed = Vec::new();
    for case in selected {
        let passed = runtime.block_on(run_case(&case, scale));
        if !passed {
            failed.push(case.name);
        }
    }
    if failed.is_empty() {
        println!("fault injection: every invariant held\n");
        ExitCode::SUCCESS
    } else {
        println!("fault injection: FAILED {failed:?}\n");
        ExitCode::FAILURE
    }
}

/// What the injected faults did, for the verdict.
#[derive(Debug, Default)]
struct Injected {
    faults: u64,
    /// Actors crashed through the test hooks, by the actor label of their restart metric.
    crashes: BTreeMap<&'static str, u64>,
    /// Storage failovers seen: the gateway was ready again while the killed service was down.
    failovers: u64,
    /// Webhook batches the receiver was answering when the gateway was killed.
    webhook_in_flight: u64,
}

impl Injected {
    fn crashed(&self, kind: &str) -> u64 {
        self.crashes.get(kind).copied().unwrap_or(0)
    }
}

async fn run_case(case: &Case, scale: Scale) -> bool {
    let started = Instant::now();
    let tenant = format!("faults{}", std::process::id());
    let receiver = if case.webhook {
        Some(webhook::Receiver::start(&tenant).await)
    } else {
        None
    };
    let extra_config = receiver.as_ref().map(|r| r.config()).unwrap_or_default();
    let mut rig = Rig::start(case.layout, &extra_config).await;
    let workload = match Workload::start(rig.urls(), &tenant, scale.traffic).await {
        Ok(workload) => workload,
        Err(error) => {
            println!(
                "{:<23} FAIL | setup: {error} | {:.1}s",
                case.name,
                started.elapsed().as_secs_f64()
            );
            rig.finish().await;
            return false;
        }
    };
    let groups = workload.groups.clone();
    let traffic_start = Instant::now();
    let mut injected = Injected::default();
    for n in 0..scale.faults {
        let at = traffic_start + scale.first_fault + scale.fault_every * n;
        tokio::time::sleep_until(at).await;
        inject(
            case.fault,
            &mut rig,
            scale,
            &tenant,
            &mut injected,
            receiver.as_ref(),
        )
        .await;
    }
    // Clients that can never reconnect would wait for their final sync forever: a case that
    // cannot end fails instead of hanging the suite.
    let finished = tokio::time::timeout(
        Duration::from_secs(150),
        workload.finish(Duration::from_secs(90)),
    )
    .await;
    let Ok(workload::Outcome { reports, changes }) = finished else {
        println!(
            "{:<23} FAIL | faults {} | the clients did not finish within 150s: some never \
             reconnected or synced | {:.1}s",
            case.name,
            injected.faults,
            started.elapsed().as_secs_f64()
        );
        rig.finish().await;
        return false;
    };
    rig.scrape().await;
    let mut totals = Counters::default();
    for node in &rig.nodes {
        totals.merge(&node.counters());
    }
    // With lsm this stops the processes that hold the database (one opener at a time), so the
    // lsm cases have no webhook receiver and one node: nothing below needs them.
    let stored = rig.stored(&tenant).await;
    // The feed is complete once the traffic is over: the receiver must get all of it.
    let received = match receiver {
        Some(receiver) => {
            let last = stored.outbox.last().map_or(0, |row| row.id as u64);
            let caught_up = receiver.wait_for(last, WEBHOOK_DEADLINE).await;
            Some(receiver.finish(injected.webhook_in_flight, caught_up))
        }
        None => None,
    };
    let cross_node = if rig.nodes.len() > 1 {
        Some(probe::cross_node_live(&rig.urls(), &format!("{tenant}-probe")).await)
    } else {
        None
    };
    let unexpected_deaths = rig
        .services()
        .into_iter()
        .filter_map(|s| (!s.alive() && !s.killed && !s.stopped).then(|| s.name.clone()))
        .collect();
    let nodes = rig
        .nodes
        .iter()
        .map(|n| n.was_read().then(|| n.counters()))
        .collect();
    let clients = ClientTotals::of(&reports);
    let (effect, effect_seen) = fault_effect(case, scale, &injected, &totals, &clients);
    let evidence = Evidence {
        reports: &reports,
        stored: &stored,
        groups: &groups,
        changes: &changes,
        max_pending: case.layout.max_pending,
        nodes,
        totals,
        crashes: injected.crashes.clone(),
        cross_node,
        webhooks: received.as_ref(),
        unexpected_deaths,
        effect,
        effect_seen,
    };
    let verdict = verdict::judge(&evidence);
    let passed = verdict.passed();
    println!(
        "{:<23} {} | faults {} | {} | reconnects {} errors {:?}{} | {:.1}s",
        case.name,
        if passed { "PASS" } else { "FAIL" },
        injected.faults,
        TrafficTotals::of(&reports, &changes),
        clients.reconnects,
        clients.errors,
        verdict.summary(),
        started.elapsed().as_secs_f64()
    );
    if !passed {
        print!("{}", verdict.details());
        println!();
    }
    rig.finish().await;
    passed
}

/// How long the webhook receiver may take, once the traffic is over, to hold the whole feed.
const WEBHOOK_DEADLINE: Duration = Duration::from_secs(30);

/// Injects one fault and repairs it after the outage.
async fn inject(
    fault: Fault,
    rig: &mut Rig,
    scale: Scale,
    tenant: &str,
    injected: &mut Injected,
    receiver: Option<&webhook::Receiver>,
) {
    injected.faults += 1;
    match fault {
        Fault::StorageKill => {
            let store = rig.store.as_mut().unwrap();
            store.kill();
            tokio::time::sleep(scale.outage).await;
            store.start();
        }
        Fault::StorageFreeze => {
            rig.store.as_ref().unwrap().freeze(true);
            tokio::time::sleep(scale.outage).await;
            rig.store.as_ref().unwrap().freeze(false);
        }
        Fault::GatewayKill => {
            injected.webhook_in_flight += receiver.map_or(0, webhook::Receiver::in_flight);
            rig.nodes[0].kill().await;
            tokio::time::sleep(scale.outage).await;
            rig.nodes[0].service.start();
        }
        Fault::SessionPanics => {
            let until = Instant::now() + scale.outage;
            let mut user = 0;
            while Instant::now() < until {
                user = (user + 5) % scale.traffic.users;
                let path = format!("/debug/crash/sessions?tenant={tenant}&user=u{user}");
                *injected.crashes.entry("session").or_default() += crash(rig, &path).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Fault::RouterPanic => {
            *injected.crashes.entry("router").or_default() +=
                crash(rig, "/debug/crash/router").await;
        }
        Fault::SupervisorPanic => {
            *injected.crashes.entry("session_supervisor").or_default() +=
                crash(rig, "/debug/crash/session_supervisor").await;
        }
        Fault::ClusterPanic => {
            *injected.crashes.entry("cluster").or_default() +=
                crash(rig, "/debug/crash/cluster").await;
        }
        Fault::NodeKill => {
            // Each fault takes another node than the first (which stays up throughout); the
            // victim comes back after the outage, so that every fault finds a full cluster.
            let victim = 1 + (injected.faults as usize - 1) % (rig.nodes.len() - 1);
            rig.nodes[victim].kill().await;
            tokio::time::sleep(scale.outage).await;
            rig.nodes[victim].service.start();
        }
        Fault::NatsKill => {
            let nats = rig.nats.as_mut().unwrap();
            nats.kill();
            tokio::time::sleep(scale.outage).await;
            nats.start();
        }
        Fault::LinkCut => {
            rig.proxy.as_ref().unwrap().cut();
            tokio::time::sleep(scale.outage).await;
            rig.proxy.as_ref().unwrap().restore();
        }
        Fault::StorageFailover => {
            // The gateway starts on the first service and stays on whichever it failed over
            // to: the faults take the two in turn.
            let until = Instant::now() + scale.outage;
            let victim = if injected.faults % 2 == 1 {
                rig.store.as_mut()
            } else {
                rig.second_store.as_mut()
            }
            .unwrap();
            let before = storage_reconnects(rig.nodes[0].http).await;
            victim.kill();
            if reconnected_before(rig.nodes[0].http, before, until).await {
                injected.failovers += 1;
            }
            tokio::time::sleep_until(until).await;
            let victim = if injected.faults % 2 == 1 {
                rig.store.as_mut()
            } else {
                rig.second_store.as_mut()
            };
            victim.unwrap().start();
        }
        Fault::Reload => {
            rig.reload_limits(0, "[limits]\nrate_per_sec = 4\nrate_burst = 4\n")
                .await;
            tokio::time::sleep(scale.outage).await;
            rig.reload_limits(0, rig::LIMITS).await;
        }
    }
}

/// Whether the node at `http` has reconnected to storage (more reconnects than `before`) and
/// is ready (`/readyz` 200) before `until`, asked every 50 ms.
async fn reconnected_before(http: std::net::SocketAddr, before: f64, until: Instant) -> bool {
    while Instant::now() < until {
        if storage_reconnects(http).await > before
            && let Ok((200, _)) = common::try_http_request(http, "GET", "/readyz", "").await
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// `peroxo_storage_reconnects_total` of the node at `http` (0 when it does not answer).
async fn storage_reconnects(http: std::net::SocketAddr) -> f64 {
    match common::try_http_request(http, "GET", "/metrics", "").await {
        Ok((200, text)) => {
            common::metric_sample(&text, "peroxo_storage_reconnects_total", "").unwrap_or(0.0)
        }
        _ => 0.0,
    }
}

/// Calls a crash hook on the first node; returns how many actors it crashed.
async fn crash(rig: &Rig, path: &str) -> u64 {
    let (status, body) = common::http_request(rig.nodes[0].http, "POST", path, "").await;
    assert_eq!(status, 200, "{path}: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    body["crashed"].as_u64().unwrap()
}

/// What shows that the case's fault struck, and whether it did: each fault leaves its own
/// trace (reconnects, refusals, restarts, closes).
fn fault_effect(
    case: &Case,
    scale: Scale,
    injected: &Injected,
    totals: &Counters,
    clients: &ClientTotals<'_>,
) -> (String, bool) {
    let storage_reconnects = totals.storage_reconnects;
    let reconnects = clients.reconnects;
    let sync_hints = clients.sync_hints;
    let refused = clients.errors.get("unavailable").copied().unwrap_or(0);
    match case.fault {
        Fault::StorageKill | Fault::LinkCut => (
            format!("storage reconnects {storage_reconnects}"),
            storage_reconnects >= 1.0,
        ),
        // The freeze must fill the outbox: senders are told to retry.
        Fault::StorageFreeze => (format!("sends refused {refused}"), refused >= 1),
        Fault::GatewayKill | Fault::NodeKill => {
            (format!("client reconnects {reconnects}"), reconnects >= 1)
        }
        Fault::SessionPanics => (
            format!("sessions crashed {}", injected.crashed("session")),
            injected.crashed("session") >= 1,
        ),
        Fault::RouterPanic => (
            format!("router crashed {}", injected.crashed("router")),
            injected.crashed("router") >= 1,
        ),
        // Every connection of the node was closed as `supervisor_failed` (1011), and every
        // client came back.
        Fault::SupervisorPanic => {
            let crashed = injected.crashed("session_supervisor");
            let closed = totals.supervisor_closed;
            (
                format!(
                    "supervisor crashed {crashed}, closed 1011 {closed}, client reconnects {reconnects}"
                ),
                crashed >= 1
                    && closed >= 1.0
                    && reconnects
                        >= crashed * (scale.traffic.users + scale.traffic.v1_users) as u64,
            )
        }
        Fault::ClusterPanic => (
            format!("cluster crashed {}", injected.crashed("cluster")),
            injected.crashed("cluster") >= 1,
        ),
        Fault::NatsKill => (format!("sync hints {sync_hints}"), sync_hints >= 1),
        // The gateway reconnected, to the other service, while the killed one was down.
        Fault::StorageFailover => (
            format!(
                "storage reconnects {storage_reconnects}, failovers {}",
                injected.failovers
            ),
            storage_reconnects >= 1.0 && injected.failovers >= 1,
        ),
        // Both reloads applied, the stricter limit refused sends, and no connection was
        // dropped for it.
        Fault::Reload => {
            let limited = clients.errors.get("rate_limited").copied().unwrap_or(0);
            let reloads = totals.reloads_applied;
            (
                format!(
                    "reloads {reloads}, sends refused rate_limited {limited}, client \
                     reconnects {reconnects}"
                ),
                reloads >= 2.0 && limited >= 1 && reconnects == 0,
            )
        }
    }
}
