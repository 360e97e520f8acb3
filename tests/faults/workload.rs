//! The simulated traffic. Every user is a `peroxo-client` [`Client`], most on a protocol-3
//! connection (`?protocol=3`: groups, and edits, deletes and reactions), a few on protocol 1
//! (direct messages only); each behaves as docs/PROTOCOL.md's "What a correct client does"
//! asks:
//!
//! - it keeps every send until it is acked, resends all of them with the same `client_msg_id`
//!   after reconnecting, retries `unavailable`, `rate_limited` and `internal` with backoff, and
//!   resends what a restarted session may have dropped (an `internal` error without ids);
//! - it keeps the user's stream (messages and events) by seq, ignores what it already has, and
//!   calls `sync` from the highest seq it holds without a gap after (re)connecting when
//!   `welcome.last_seq` is higher, on a seq that skips ahead, and on `sync_hint`;
//! - it reconnects with backoff, to the next node when the one it used does not answer;
//! - it repeats every edit (with its `client_msg_id`), delete, reaction and reaction taken back
//!   until answered, and takes a refusal for good as that change's outcome.
//!
//! At setup, a few protocol-3 users each create a group of protocol-3 users spread over the
//! population (`create_group` with a fixed `client_msg_id`, repeated until answered). Then
//! six streams of intents run at steady rates, scheduled by the clock whatever the server
//! answers: direct messages between random users of either protocol (sometimes to oneself),
//! group messages from a random current member of a random group, read marks (`mark_read`,
//! sometimes `mark_unread`) of a random protocol-3 user on one of its conversations, and edits,
//! deletes and reactions of a random protocol-3 user (to messages of its choosing, see
//! [`crate::user`]). [`crate::user`] carries them out and records what each user saw. Beside
//! them, every group is changed at a steady rate ([`crate::changes`]): members added,
//! removed and leaving, roles changed, the group renamed.
//!
//! A run has three phases: traffic (the pacer generates intents, the groups change), drain
//! (no new intents; clients finish their sends and marks), final sync (every client syncs
//! once more, reads its conversation list, its groups' members and some read receipts, and
//! reports).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peroxo_client::{
    Backoff, Client, ClientConfig, ClientError, CommandKind, ServerError, ServerFrame,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::changes::{ChangeRecord, change_group};
use crate::report::UserReport;
use crate::user::{Intent, Live, SimulatedUser};

/// How much traffic a case offers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Traffic {
    /// Users on protocol 3 (`u0`, `u1`, …), who send and receive direct and group messages,
    /// mark, edit, delete and react.
    pub(crate) users: usize,
    /// Users on protocol 1 (numbered after them), who exchange direct messages only.
    pub(crate) v1_users: usize,
    /// Direct messages per second, all users together.
    pub(crate) rate: f64,
    /// Groups created at setup, and the members of each (its creator included).
    pub(crate) groups: usize,
    pub(crate) group_size: usize,
    /// Group messages per second, all groups together.
    pub(crate) group_rate: f64,
    /// `mark_read` and `mark_unread` per second, all users together.
    pub(crate) mark_rate: f64,
    /// Membership, role and title changes per second, all groups together.
    pub(crate) change_rate: f64,
    /// Edits, deletes, and reactions (made or taken back) per second, all users together.
    pub(crate) edit_rate: f64,
    pub(crate) delete_rate: f64,
    pub(crate) reaction_rate: f64,
    pub(crate) duration: Duration,
    pub(crate) seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Traffic,
    Drain,
    FinalSync,
}

/// A group the workload created.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) id: String,
    pub(crate) title: String,
    /// Its creator, who stays its owner and a member throughout.
    pub(crate) owner: String,
    /// Its initial members, the creator included.
    pub(crate) members: BTreeSet<String>,
    /// Its members as the workload's last answered change left them: the pacer picks the
    /// sender of each group message among them.
    pub(crate) roster: Arc<Mutex<BTreeSet<String>>>,
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
    /// One task per group changing it; each returns the changes it made.
    changers: Vec<JoinHandle<Vec<ChangeRecord>>>,
    /// Every user, of both protocols.
    population: usize,
    pub(crate) groups: Vec<Group>,
}

/// What a workload ends with: every client's report and every membership change made.
pub(crate) struct Outcome {
    pub(crate) reports: Vec<UserReport>,
    pub(crate) changes: Vec<ChangeRecord>,
}

impl Workload {
    /// Connects the users of `tenant` (`traffic.users` on protocol 3, then `traffic.v1_users`
    /// on protocol 1), user `i` first to `urls[i % n]`, creates the groups and starts the
    /// traffic and the membership changes. Fails when a group could not be created.
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
        let population = traffic.users + traffic.v1_users;
        for i in 0..population {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            let protocol = if i < traffic.users { 3 } else { 1 };
            let (client, events) = Client::start(client_config(&urls, tenant, i, protocol));
            handles.push(client.clone());
            let seed = traffic.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let user = SimulatedUser::new(
                format!("u{i}"),
                protocol,
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
        let per_group = traffic.change_rate / traffic.groups.max(1) as f64;
        let changers = groups
            .iter()
            .enumerate()
            .map(|(n, group)| {
                tokio::spawn(change_group(
                    group.clone(),
                    handles.clone(),
                    traffic.users,
                    per_group,
                    traffic.duration,
                    traffic.seed ^ (n as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
                ))
            })
            .collect();
        Ok(Self {
            phase,
            live,
            clients,
            pacer,
            changers,
            population,
            groups,
        })
    }

    /// Waits for the traffic and the changes to end, then for every send and mark to be
    /// answered (until `deadline`), then lets every client sync a last time and read its
    /// conversation list, its groups' members and some read receipts. Returns every client's
    /// report and every change.
    pub(crate) async fn finish(self, deadline: Duration) -> Outcome {
        self.pacer.await.unwrap();
        let mut changes = Vec::new();
        for changer in self.changers {
            changes.extend(changer.await.unwrap());
        }
        self.phase.send_replace(Phase::Drain);
        let until = Instant::now() + deadline;
        while self.live.drained.load(Ordering::Relaxed) < self.population && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.phase.send_replace(Phase::FinalSync);
        let mut reports = Vec::new();
        for client in self.clients {
            reports.push(client.await.unwrap());
        }
        Outcome { reports, changes }
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
    let creator = format!("u{}", members[0]);
    let kind = CommandKind::CreateGroup {
        title: format!("group {n}"),
        members: members[1..].iter().map(|m| format!("u{m}")).collect(),
        client_msg_id: format!("group-{n}"),
    };
    match request_until_answered(client, kind).await {
        Ok(ServerFrame::GroupCreated {
            conversation_id, ..
        }) => {
            let members: BTreeSet<String> = members.iter().map(|m| format!("u{m}")).collect();
            Ok(Group {
                id: conversation_id.into_owned(),
                title: format!("group {n}"),
                owner: creator,
                roster: Arc::new(Mutex::new(members.clone())),
                members,
            })
        }
        Ok(other) => Err(format!("create_group answered with {other:?}")),
        Err(error) => Err(format!("u{} could not create a group: {error}", members[0])),
    }
}

/// How a request repeated until answered ended.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one answer per request, consumed at once; boxing the frame gains nothing"
)]
pub(crate) enum Answer {
    Reply(ServerFrame<'static>),
    /// Refused for good. `repeated`: an earlier attempt's outcome was unknown (no reply, a
    /// disconnect, a session restart or a retryable error), so it may have been carried out.
    Refused {
        error: ServerError,
        repeated: bool,
    },
}

/// Sends a request until it is answered: again after a disconnect, a session restart, a
/// retryable error or a reply that does not come, with backoff, for at most
/// [`REQUEST_DEADLINE`]. Only requests that are safe to repeat go through here. Fails on a
/// stopped client or the deadline.
pub(crate) async fn answer_until_deadline(
    client: &Client,
    kind: CommandKind,
) -> Result<Answer, String> {
    let until = Instant::now() + REQUEST_DEADLINE;
    let mut pause = Duration::from_millis(20);
    let mut repeated = false;
    loop {
        let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, client.request(kind.clone())).await;
        let last = match attempt {
            Ok(Ok(reply)) => return Ok(Answer::Reply(reply)),
            Ok(Err(ClientError::Server(error))) if !error.retryable => {
                return Ok(Answer::Refused { error, repeated });
            }
            Ok(Err(error @ (ClientError::Closed | ClientError::Stopped(_)))) => {
                return Err(error.to_string());
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no reply within {ATTEMPT_TIMEOUT:?}"),
        };
        repeated = true;
        if Instant::now() >= until {
            return Err(format!(
                "not answered within {REQUEST_DEADLINE:?}; last: {last}"
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(640));
    }
}

/// [`answer_until_deadline`] for a request that no refusal answers correctly.
pub(crate) async fn request_until_answered(
    client: &Client,
    kind: CommandKind,
) -> Result<ServerFrame<'static>, String> {
    match answer_until_deadline(client, kind).await? {
        Answer::Reply(reply) => Ok(reply),
        Answer::Refused { error, .. } => Err(format!("refused: {error}")),
    }
}

/// Generates the intents, each stream spread evenly over time: every 10 ms, as many as the
/// clock says are due of each.
async fn pace(senders: Vec<mpsc::UnboundedSender<Intent>>, groups: Vec<Group>, traffic: Traffic) {
    let mut rng = Rng(traffic.seed | 1);
    let start = Instant::now();
    let mut done = [0u64; 6];
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    // Direct messages between any users; marks and changes by protocol-3 users only.
    let population = senders.len() as u64;
    let users = traffic.users as u64;
    let index = |user: &str| user[1..].parse::<usize>().unwrap();
    loop {
        tick.tick().await;
        let elapsed = start.elapsed().min(traffic.duration).as_secs_f64();
        let due = [
            (elapsed * traffic.rate) as u64,
            (elapsed * traffic.group_rate) as u64,
            (elapsed * traffic.mark_rate) as u64,
            (elapsed * traffic.edit_rate) as u64,
            (elapsed * traffic.delete_rate) as u64,
            (elapsed * traffic.reaction_rate) as u64,
        ];
        for _ in done[0]..due[0] {
            let from = rng.below(population) as usize;
            let to = rng.below(population);
            let _ = senders[from].send(Intent::Send(format!("u{to}")));
        }
        for _ in done[1]..due[1] {
            if groups.is_empty() {
                break;
            }
            let group = &groups[rng.below(groups.len() as u64) as usize];
            let from = {
                let roster = group.roster.lock().unwrap();
                let member = rng.below(roster.len() as u64) as usize;
                roster.iter().nth(member).unwrap().clone()
            };
            let _ = senders[index(&from)].send(Intent::Send(group.id.clone()));
        }
        let per_user = [Intent::Mark, Intent::Edit, Intent::Delete, Intent::React];
        for (stream, intent) in per_user.iter().enumerate().map(|(n, i)| (n + 2, i)) {
            for _ in done[stream]..due[stream] {
                let user = rng.below(users) as usize;
                let _ = senders[user].send(intent.clone());
            }
        }
        done = due;
        if elapsed >= traffic.duration.as_secs_f64() {
            return;
        }
    }
}

/// User `i`'s client: `protocol` 3 or 1, first to node `i mod n`, with the suite's quick
/// timeouts.
fn client_config(urls: &[String], tenant: &str, i: usize, protocol: u32) -> ClientConfig {
    let user = format!("u{i}");
    // Protocol 1 is what a connection gets without asking.
    let version = if protocol > 1 {
        format!("&protocol={protocol}")
    } else {
        String::new()
    };
    let mut config = ClientConfig::with_urls(
        urls.iter()
            .map(|url| format!("{url}?user={user}&tenant={tenant}{version}"))
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
