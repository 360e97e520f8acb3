//! The simulated clients. Users send direct messages to random peers at a steady total rate
//! (scheduled by the clock, whatever the server answers). Each user is a `peroxo-client`
//! [`Client`], which behaves as docs/PROTOCOL.md's "What a correct client does" asks:
//!
//! - it keeps every send until it is acked, resends all of them with the same `client_msg_id`
//!   after reconnecting, retries `unavailable`, `rate_limited` and `internal` with backoff, and
//!   resends what a restarted session may have dropped (an `internal` error without ids);
//! - it keeps the user's stream by seq, ignores what it already has, and calls `sync` from the
//!   highest seq it holds without a gap after (re)connecting when `welcome.last_seq` is
//!   higher, on a seq that skips ahead, and on `sync_hint`;
//! - it reconnects with backoff, to the next node when the one it used does not answer.
//!
//! This module only drives the clients and records, from their events, what each user saw:
//! every send and its ack, the stream by seq, and anything a correct server never does.
//!
//! A run has three phases: traffic (the pacer generates sends), drain (no new sends; clients
//! finish theirs), final sync (every client syncs once more and reports what it holds).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use peroxo_client::{Backoff, Client, ClientConfig, ErrorAbout, Event, Via};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How much traffic a case offers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Traffic {
    pub(crate) users: usize,
    /// Sends per second, all users together.
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
    pub(crate) seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Traffic,
    Drain,
    FinalSync,
}

/// Counts every client adds to while the run goes on.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    /// Users whose every send is acked after the traffic ended.
    drained: AtomicUsize,
}

/// One send, as its client knows it.
#[derive(Debug, Clone)]
pub(crate) struct SendRecord {
    pub(crate) client_msg_id: String,
    pub(crate) to: String,
    pub(crate) text: String,
    /// The message id and the sender's seq from its first ack.
    pub(crate) ack: Option<(String, u64)>,
}

/// One entry of a user's stream, as the client holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) message_id: String,
    pub(crate) from: String,
    pub(crate) to: String,
}

/// What one client reports at the end.
#[derive(Debug)]
pub(crate) struct UserReport {
    pub(crate) user: String,
    pub(crate) sends: Vec<SendRecord>,
    /// The user's stream by seq, from live frames, acks and syncs.
    pub(crate) stream: BTreeMap<u64, Entry>,
    /// The user's seq according to the server's last `sync`.
    pub(crate) last_seq: u64,
    /// Messages from others first seen live, and first seen through `sync`.
    pub(crate) received_live: u64,
    pub(crate) received_by_sync: u64,
    /// Error frames by code.
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) reconnects: u64,
    pub(crate) sync_hints: u64,
    /// Things a correct server never does (a seq naming two messages, a refused send).
    pub(crate) violations: Vec<String>,
}

/// A running workload.
pub(crate) struct Workload {
    phase: watch::Sender<Phase>,
    pub(crate) live: Arc<Live>,
    clients: Vec<JoinHandle<UserReport>>,
    pacer: JoinHandle<()>,
    users: usize,
}

impl Workload {
    /// Connects `traffic.users` users of `tenant`, user `i` first to `urls[i % n]`, and
    /// starts the traffic.
    pub(crate) fn start(urls: Vec<String>, tenant: &str, traffic: Traffic) -> Self {
        let (phase, phase_rx) = watch::channel(Phase::Traffic);
        let live = Arc::new(Live::default());
        let mut senders = Vec::new();
        let mut clients = Vec::new();
        for i in 0..traffic.users {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            let user = SimulatedUser::new(format!("u{i}"), rx, phase_rx.clone(), Arc::clone(&live));
            clients.push(tokio::spawn(user.run(client_config(&urls, tenant, i))));
        }
        let pacer = tokio::spawn(pace(senders, traffic));
        Self {
            phase,
            live,
            clients,
            pacer,
            users: traffic.users,
        }
    }

    /// Waits for the traffic to end, then for every send to be acked (until `deadline`), then
    /// lets every client sync a last time. Returns every client's report.
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

/// Generates the sends, spread evenly over time: every 10 ms, as many as the clock says are
/// due, each from a random user to a random user (sometimes oneself).
async fn pace(senders: Vec<mpsc::UnboundedSender<String>>, traffic: Traffic) {
    let mut rng = Rng(traffic.seed | 1);
    let start = Instant::now();
    let mut due_so_far = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let users = senders.len() as u64;
    loop {
        tick.tick().await;
        let elapsed = start.elapsed().min(traffic.duration);
        let due = (elapsed.as_secs_f64() * traffic.rate) as u64;
        for _ in due_so_far..due {
            let from = rng.below(users) as usize;
            let to = rng.below(users);
            let _ = senders[from].send(format!("u{to}"));
        }
        due_so_far = due;
        if elapsed >= traffic.duration {
            return;
        }
    }
}

/// User `i`'s client: first to node `i mod n`, with the suite's quick timeouts.
fn client_config(urls: &[String], tenant: &str, i: usize) -> ClientConfig {
    let user = format!("u{i}");
    let mut config = ClientConfig::with_urls(
        urls.iter()
            .map(|url| format!("{url}?user={user}&tenant={tenant}"))
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
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One simulated user: its client, and what it saw.
struct SimulatedUser {
    user: String,
    intents: mpsc::UnboundedReceiver<String>,
    /// The pacer has finished and every intent has been taken.
    intents_done: bool,
    phase: watch::Receiver<Phase>,
    live: Arc<Live>,
    sends: Vec<SendRecord>,
    /// Index into `sends` by `client_msg_id`.
    index: HashMap<String, usize>,
    /// Sends not acked yet.
    unacked: usize,
    stream: BTreeMap<u64, Entry>,
    last_seq: u64,
    drained: bool,
    received_live: u64,
    received_by_sync: u64,
    errors: BTreeMap<String, u64>,
    reconnects: u64,
    sync_hints: u64,
    violations: Vec<String>,
}

impl SimulatedUser {
    fn new(
        user: String,
        intents: mpsc::UnboundedReceiver<String>,
        phase: watch::Receiver<Phase>,
        live: Arc<Live>,
    ) -> Self {
        Self {
            user,
            intents,
            intents_done: false,
            phase,
            live,
            sends: Vec::new(),
            index: HashMap::new(),
            unacked: 0,
            stream: BTreeMap::new(),
            last_seq: 0,
            drained: false,
            received_live: 0,
            received_by_sync: 0,
            errors: BTreeMap::new(),
            reconnects: 0,
            sync_hints: 0,
            violations: Vec::new(),
        }
    }

    async fn run(mut self, config: ClientConfig) -> UserReport {
        let (client, mut events) = Client::start(config);
        let mut final_sync: Option<JoinHandle<_>> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                intent = self.intents.recv(), if !self.intents_done => match intent {
                    Some(to) => self.new_send(&client, to),
                    None => self.intents_done = true,
                },
                synced = async { final_sync.as_mut().unwrap().await }, if final_sync.is_some() => {
                    match synced.unwrap() {
                        Ok(last_seq) => self.last_seq = self.last_seq.max(last_seq),
                        Err(error) => self.violations.push(format!("final sync failed: {error}")),
                    }
                    // Every event of the final sync was handed on before its answer.
                    while let Some(event) = events.try_next() {
                        self.on_event(event);
                    }
                    break;
                }
                _ = tick.tick() => {}
            }
            let phase = *self.phase.borrow();
            if phase != Phase::Traffic && self.intents_done && self.unacked == 0 && !self.drained {
                self.drained = true;
                self.live.drained.fetch_add(1, Ordering::Relaxed);
            }
            if phase == Phase::FinalSync && final_sync.is_none() {
                let client = client.clone();
                final_sync = Some(tokio::spawn(async move { client.sync().await }));
            }
        }
        client.close().await;
        self.report()
    }

    fn report(self) -> UserReport {
        UserReport {
            user: self.user,
            sends: self.sends,
            stream: self.stream,
            last_seq: self.last_seq,
            received_live: self.received_live,
            received_by_sync: self.received_by_sync,
            errors: self.errors,
            reconnects: self.reconnects,
            sync_hints: self.sync_hints,
            violations: self.violations,
        }
    }

    fn new_send(&mut self, client: &Client, to: String) {
        let n = self.sends.len();
        let text = format!("{} to {to}, #{n}", self.user);
        let submitted = match client.submit(to.clone(), text.clone()) {
            Ok(submitted) => submitted,
            Err(error) => {
                self.violations.push(format!("could not submit: {error}"));
                return;
            }
        };
        // The outcome arrives as an event; the receiver is not needed.
        let client_msg_id = submitted.client_msg_id;
        self.index.insert(client_msg_id.clone(), n);
        self.sends.push(SendRecord {
            client_msg_id,
            to,
            text,
            ack: None,
        });
        self.unacked += 1;
        self.live.sent.fetch_add(1, Ordering::Relaxed);
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected { last_seq, .. } | Event::SyncHint { last_seq } => {
                self.last_seq = self.last_seq.max(last_seq);
                if matches!(event, Event::SyncHint { .. }) {
                    self.sync_hints += 1;
                }
            }
            Event::Synced { last_seq, .. } => self.last_seq = self.last_seq.max(last_seq),
            Event::Disconnected { .. } => self.reconnects += 1,
            Event::Message(message) => {
                let entry = Entry {
                    message_id: message.message_id,
                    from: message.from,
                    to: message.to,
                };
                let from_other = entry.from != self.user;
                if self.put(message.seq, entry) && from_other {
                    match message.via {
                        Via::Live => self.received_live += 1,
                        Via::Sync => self.received_by_sync += 1,
                        Via::Ack => {}
                    }
                }
            }
            Event::Acked { ack, .. } => self.on_ack(ack),
            Event::Error { error, about } => {
                *self
                    .errors
                    .entry(error.code.as_str().to_owned())
                    .or_default() += 1;
                match about {
                    ErrorAbout::Sync if !error.retryable => {
                        self.violations.push(format!("sync refused: {error}"));
                    }
                    ErrorAbout::Send(_) if !error.retryable => {
                        self.violations.push(format!("send refused: {error}"));
                    }
                    ErrorAbout::Other | ErrorAbout::Request => {
                        self.violations.push(format!("unexpected error: {error}"));
                    }
                    _ => {}
                }
            }
            Event::Repeat { seq, message_id } => {
                if let Some(known) = self.stream.get(&seq)
                    && known.message_id != message_id
                {
                    self.violations.push(format!(
                        "seq {seq} is {known:?} and also message {message_id}"
                    ));
                }
            }
            Event::Anomaly(what) => self.violations.push(what),
            Event::Stopped(error) => self.violations.push(format!("client stopped: {error}")),
            _ => {}
        }
    }

    /// Adds a message of the user's stream; returns whether it was new to the client.
    fn put(&mut self, seq: u64, entry: Entry) -> bool {
        if seq == 0 {
            self.violations.push(format!("seq 0 for {entry:?}"));
            return false;
        }
        if let Some(known) = self.stream.get(&seq) {
            if *known != entry {
                self.violations
                    .push(format!("seq {seq} is {known:?} and also {entry:?}"));
            }
            return false;
        }
        self.stream.insert(seq, entry);
        true
    }

    fn on_ack(&mut self, ack: peroxo_client::Ack) {
        let Some(&i) = self.index.get(&ack.client_msg_id) else {
            self.violations
                .push(format!("ack for no send of mine: {ack:?}"));
            return;
        };
        let send = &mut self.sends[i];
        let this = (ack.message_id, ack.seq);
        match &send.ack {
            Some(first) if *first != this => {
                self.violations.push(format!(
                    "{} acked as {first:?} and later as {this:?}",
                    send.client_msg_id
                ));
            }
            Some(_) => {}
            None => {
                send.ack = Some(this);
                self.unacked -= 1;
                self.live.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
