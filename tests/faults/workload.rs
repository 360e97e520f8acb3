//! The simulated traffic. Every user is a `peroxo-client` [`Client`] on a protocol-2
//! connection (`?protocol=2`), which behaves as docs/PROTOCOL.md's "What a correct client
//! does" asks:
//!
//! - it keeps every send until it is acked, resends all of them with the same `client_msg_id`
//!   after reconnecting, retries `unavailable`, `rate_limited` and `internal` with backoff, and
//!   resends what a restarted session may have dropped (an `internal` error without ids);
//! - it keeps the user's stream (messages and events) by seq, ignores what it already has, and
//!   calls `sync` from the highest seq it holds without a gap after (re)connecting when
//!   `welcome.last_seq` is higher, on a seq that skips ahead, and on `sync_hint`;
//! - it reconnects with backoff, to the next node when the one it used does not answer.
//!
//! At setup, a few users each create a group of users spread over the population
//! (`create_group` with a fixed `client_msg_id`, repeated until answered). Then three
//! streams of intents run at steady rates, scheduled by the clock whatever the server answers:
//! direct messages between random users (sometimes to oneself), group messages from a random
//! member of a random group, and read marks (`mark_read`, sometimes `mark_unread`) of a
//! random user on one of its conversations. [`crate::user`] carries them out and records what
//! each user saw.
//!
//! A run has three phases: traffic (the pacer generates intents), drain (no new intents;
//! clients finish their sends and marks), final sync (every client syncs once more, reads its
//! conversation list and reports).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use peroxo_client::{Backoff, Client, ClientConfig, ClientError, CommandKind, ServerFrame};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::user::{Intent, Live, SimulatedUser, UserReport};

/// How much traffic a case offers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Traffic {
    pub(crate) users: usize,
    /// Direct messages per second, all users together.
    pub(crate) rate: f64,
    /// Groups created at setup, and the members of each (its creator included).
    pub(crate) groups: usize,
    pub(crate) group_size: usize,
    /// Group messages per second, all groups together.
    pub(crate) group_rate: f64,
    /// `mark_read` and `mark_unread` per second, all users together.
    pub(crate) mark_rate: f64,
    pub(crate) duration: Duration,
    pub(crate) seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Traffic,
    Drain,
    FinalSync,
}

/// A group the workload created: its id and every member, the creator included.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) id: String,
    pub(crate) members: BTreeSet<String>,
}

/// How long a request (`create_group`, a mark, a page of `conversations`) is repeated before
/// the workload gives up on it: longer than any outage a case injects.
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// How long one attempt of a request waits for its reply (the gateway answers `unavailable`
/// after its storage timeout, 2 s in the suite, when storage does not answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running workload.
pub(crate) struct Workload {
    phase: watch::Sender<Phase>,
    pub(crate) live: Arc<Live>,
    clients: Vec<JoinHandle<UserReport>>,
    pacer: JoinHandle<()>,
    users: usize,
    pub(crate) groups: Vec<Group>,
}

impl Workload {
    /// Connects `traffic.users` users of `tenant`, user `i` first to `urls[i % n]`, creates
    /// the groups and starts the traffic. Fails when a group could not be created.
    pub(crate) async fn start(
        urls: Vec<String>,
        tenant: &str,
        traffic: Traffic,
    ) -> Result<Self, String> {
        let (phase, phase_rx) = watch::channel(Phase::Traffic);
        let live = Arc::new(Live::default());
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        let mut clients = Vec::new();
        for i in 0..traffic.users {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            let (client, events) = Client::start(client_config(&urls, tenant, i));
            handles.push(client.clone());
            let seed = traffic.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let user = SimulatedUser::new(
                format!("u{i}"),
                rx,
                phase_rx.clone(),
                Arc::clone(&live),
                seed,
            );
            clients.push(tokio::spawn(user.run(client, events)));
        }
        // Every group at once: a creation is one storage round trip.
        let creations = plan_groups(&traffic)
            .into_iter()
            .enumerate()
            .map(|(n, members)| create_group(&handles[members[0]], n, members));
        let groups = futures_util::future::try_join_all(creations).await?;
        let pacer = tokio::spawn(pace(senders, groups.clone(), traffic));
        Ok(Self {
            phase,
            live,
            clients,
            pacer,
            users: traffic.users,
            groups,
        })
    }

    /// Waits for the traffic to end, then for every send and mark to be answered (until
    /// `deadline`), then lets every client sync a last time and read its conversation list.
    /// Returns every client's report.
    pub(crate) async fn finish(self, deadline: Duration) -> Vec<UserReport> {
        self.pacer.await.unwrap();
        self.phase.send_replace(Phase::Drain);
        let until = Instant::now() + deadline;
        while self.live.drained.load(Ordering::Relaxed) < self.users && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.phase.send_replace(Phase::FinalSync);
        let mut reports = Vec::new();
        for client in self.clients {
            reports.push(client.await.unwrap());
        }
        reports
    }
}

/// The members of every group, by user index, the creator first: group `n` is created by
/// user `n · users / groups` (creators spread over the population, and so over the nodes),
/// with `group_size - 1` other users drawn at random.
fn plan_groups(traffic: &Traffic) -> Vec<Vec<usize>> {
    let mut rng = Rng(traffic.seed.rotate_left(17) | 1);
    let size = traffic.group_size.min(traffic.users);
    (0..traffic.groups)
        .map(|n| {
            let creator = n * traffic.users / traffic.groups;
            let mut members = vec![creator];
            while members.len() < size {
                let user = rng.below(traffic.users as u64) as usize;
                if !members.contains(&user) {
                    members.push(user);
                }
            }
            members
        })
        .collect()
}

/// Has the first of `members` (user indexes) create group `n` with the others, with the
/// `client_msg_id` `group-<n>`, which makes repeating it safe.
async fn create_group(client: &Client, n: usize, members: Vec<usize>) -> Result<Group, String> {
    let kind = CommandKind::CreateGroup {
        title: format!("group {n}"),
        members: members[1..].iter().map(|m| format!("u{m}")).collect(),
        client_msg_id: format!("group-{n}"),
    };
    match request_until_answered(client, kind).await {
        Ok(ServerFrame::GroupCreated {
            conversation_id, ..
        }) => Ok(Group {
            id: conversation_id.into_owned(),
            members: members.iter().map(|m| format!("u{m}")).collect(),
        }),
        Ok(other) => Err(format!("create_group answered with {other:?}")),
        Err(error) => Err(format!("u{} could not create a group: {error}", members[0])),
    }
}

/// Sends a request until it is answered: again after a disconnect, a session restart, a
/// retryable error or a reply that does not come, with backoff, for at most
/// [`REQUEST_DEADLINE`]. Only requests that are safe to repeat go through here. Fails on a
/// refusal for good, a stopped client, or the deadline.
pub(crate) async fn request_until_answered(
    client: &Client,
    kind: CommandKind,
) -> Result<ServerFrame<'static>, String> {
    let until = Instant::now() + REQUEST_DEADLINE;
    let mut pause = Duration::from_millis(20);
    loop {
        let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, client.request(kind.clone())).await;
        let last = match attempt {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(ClientError::Server(error))) if !error.retryable => {
                return Err(format!("refused: {error}"));
            }
            Ok(Err(error @ (ClientError::Closed | ClientError::Stopped(_)))) => {
                return Err(error.to_string());
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no reply within {ATTEMPT_TIMEOUT:?}"),
        };
        if Instant::now() >= until {
            return Err(format!(
                "not answered within {REQUEST_DEADLINE:?}; last: {last}"
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(640));
    }
}

/// Generates the intents, each stream spread evenly over time: every 10 ms, as many as the
/// clock says are due of each.
async fn pace(senders: Vec<mpsc::UnboundedSender<Intent>>, groups: Vec<Group>, traffic: Traffic) {
    let mut rng = Rng(traffic.seed | 1);
    let start = Instant::now();
    let mut done = [0u64; 3];
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let users = senders.len() as u64;
    let index = |user: &str| user[1..].parse::<usize>().unwrap();
    loop {
        tick.tick().await;
        let elapsed = start.elapsed().min(traffic.duration).as_secs_f64();
        let due = [
            (elapsed * traffic.rate) as u64,
            (elapsed * traffic.group_rate) as u64,
            (elapsed * traffic.mark_rate) as u64,
        ];
        for _ in done[0]..due[0] {
            let from = rng.below(users) as usize;
            let to = rng.below(users);
            let _ = senders[from].send(Intent::Send(format!("u{to}")));
        }
        for _ in done[1]..due[1] {
            if groups.is_empty() {
                break;
            }
            let group = &groups[rng.below(groups.len() as u64) as usize];
            let member = rng.below(group.members.len() as u64) as usize;
            let from = group.members.iter().nth(member).unwrap();
            let _ = senders[index(from)].send(Intent::Send(group.id.clone()));
        }
        for _ in done[2]..due[2] {
            let user = rng.below(users) as usize;
            let _ = senders[user].send(Intent::Mark);
        }
        done = due;
        if elapsed >= traffic.duration.as_secs_f64() {
            return;
        }
    }
}

/// User `i`'s client: protocol 2, first to node `i mod n`, with the suite's quick timeouts.
fn client_config(urls: &[String], tenant: &str, i: usize) -> ClientConfig {
    let user = format!("u{i}");
    let mut config = ClientConfig::with_urls(
        urls.iter()
            .map(|url| format!("{url}?user={user}&tenant={tenant}&protocol=2"))
            .collect(),
    );
    config.first_node = i;
    // 20 ms doubling to 640 ms between connection attempts; 25 ms doubling per send retry.
    config.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(640),
    };
    config.retry_base = Duration::from_millis(25);
    config.connect_timeout = Duration::from_secs(3);
    config.idle_timeout = Duration::from_secs(15);
    // Ids `u<i>-<n>`: unique per user for the run, and readable in a failure.
    config.client_msg_id_prefix = Some(user);
    config
}

/// A small xorshift generator: the same seed gives the same traffic.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
