//! The simulated clients. Users send direct messages to random peers at a steady total rate
//! (scheduled by the clock, whatever the server answers), and each behaves as
//! docs/PROTOCOL.md's "What a correct client does" asks:
//!
//! - it keeps every send until it is acked, resends all of them with the same `client_msg_id`
//!   after reconnecting, retries `unavailable`, `rate_limited` and `internal` with backoff, and
//!   resends what a restarted session may have dropped (an `internal` error without ids);
//! - it keeps the user's stream by seq, ignores what it already has, and calls `sync` from the
//!   highest seq it holds without a gap after (re)connecting when `welcome.last_seq` is
//!   higher, on a seq that skips ahead, and on `sync_hint`;
//! - it reconnects with backoff, to the next node when the one it used does not answer.
//!
//! A run has three phases: traffic (the pacer generates sends), drain (no new sends; clients
//! finish theirs), final sync (every client syncs once more and reports what it holds).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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
        let urls: Arc<[String]> = urls.into();
        let mut senders = Vec::new();
        let mut clients = Vec::new();
        for i in 0..traffic.users {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            let client = Client::new(
                format!("u{i}"),
                tenant,
                Arc::clone(&urls),
                i,
                rx,
                phase_rx.clone(),
                Arc::clone(&live),
                traffic.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            clients.push(tokio::spawn(client.run()));
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

/// How a connection ended, for the client's loop.
enum Ended {
    /// The connection dropped or closed: reconnect.
    Lost,
    /// The final sync is done.
    Finished,
}

/// One simulated user.
struct Client {
    user: String,
    tenant: String,
    urls: Arc<[String]>,
    /// The node to try next.
    node: usize,
    intents: mpsc::UnboundedReceiver<String>,
    /// The pacer has finished and every intent has been taken.
    intents_done: bool,
    phase: watch::Receiver<Phase>,
    live: Arc<Live>,
    rng: Rng,
    sends: Vec<SendRecord>,
    /// Sends not acked yet, by index into `sends`.
    pending: BTreeSet<usize>,
    /// Sends written on the current connection and not answered there.
    unanswered: BTreeSet<usize>,
    /// Sends refused with a retryable error, and when to send them again.
    retry_at: BTreeMap<usize, Instant>,
    /// Retries so far per send, for the backoff.
    attempts: BTreeMap<usize, u32>,
    stream: BTreeMap<u64, Entry>,
    /// Every seq up to this one is in `stream`.
    contiguous: u64,
    last_seq: u64,
    sync: SyncState,
    drained: bool,
    received_live: u64,
    received_by_sync: u64,
    errors: BTreeMap<String, u64>,
    reconnects: u64,
    sync_hints: u64,
    violations: Vec<String>,
}

/// The client's `sync` requests: one at a time.
#[derive(Debug, Default)]
struct SyncState {
    in_flight: bool,
    /// Another reason to sync came while one was in flight.
    again: bool,
    /// Where the next sync starts when not after the client's contiguous seq (paging).
    next_after: Option<u64>,
    /// A sync failed (storage unavailable); try again at this time.
    retry_at: Option<Instant>,
    /// The final sync has been asked for, and whether it completed.
    final_started: bool,
    final_done: bool,
}

impl Client {
    #[allow(clippy::too_many_arguments)]
    fn new(
        user: String,
        tenant: &str,
        urls: Arc<[String]>,
        node: usize,
        intents: mpsc::UnboundedReceiver<String>,
        phase: watch::Receiver<Phase>,
        live: Arc<Live>,
        seed: u64,
    ) -> Self {
        Self {
            user,
            tenant: tenant.to_owned(),
            urls,
            node,
            intents,
            intents_done: false,
            phase,
            live,
            rng: Rng(seed | 1),
            sends: Vec::new(),
            pending: BTreeSet::new(),
            unanswered: BTreeSet::new(),
            retry_at: BTreeMap::new(),
            attempts: BTreeMap::new(),
            stream: BTreeMap::new(),
            contiguous: 0,
            last_seq: 0,
            sync: SyncState::default(),
            drained: false,
            received_live: 0,
            received_by_sync: 0,
            errors: BTreeMap::new(),
            reconnects: 0,
            sync_hints: 0,
            violations: Vec::new(),
        }
    }

    async fn run(mut self) -> UserReport {
        let mut failures = 0u32;
        loop {
            let url = format!(
                "{}?user={}&tenant={}",
                self.urls[self.node % self.urls.len()],
                self.user,
                self.tenant
            );
            let connected = tokio::time::timeout(
                Duration::from_secs(3),
                tokio_tungstenite::connect_async(url),
            )
            .await;
            match connected {
                Ok(Ok((ws, _))) => {
                    failures = 0;
                    if let Ended::Finished = self.serve(ws).await {
                        break;
                    }
                    self.reconnects += 1;
                }
                _ => {
                    // This node does not answer (or refuses): try the next one after a while.
                    failures += 1;
                    self.node += 1;
                }
            }
            self.pause(failures).await;
        }
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

    /// Exponential backoff with jitter between connection attempts: 20 ms doubling to 640 ms.
    async fn pause(&mut self, failures: u32) {
        let base = 20u64 << failures.min(5);
        let jitter = self.rng.below(base);
        tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
    }

    /// Serves one connection until it ends or the final sync is done.
    async fn serve(&mut self, mut ws: Ws) -> Ended {
        self.unanswered.clear();
        self.sync.in_flight = false;
        self.sync.next_after = None;
        // Every send not acked yet goes again, in order, with its client_msg_id.
        self.retry_at.clear();
        let now = Instant::now();
        for &i in &self.pending {
            self.retry_at.insert(i, now);
        }
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        loop {
            tokio::select! {
                frame = tokio::time::timeout(Duration::from_secs(15), ws.next()) => {
                    let text = match frame {
                        Ok(Some(Ok(Message::Text(text)))) => text,
                        Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) | Err(_) => {
                            return Ended::Lost;
                        }
                        Ok(Some(Ok(_))) => continue,
                    };
                    match serde_json::from_str::<Value>(&text) {
                        Ok(frame) => self.on_frame(&frame),
                        Err(_) => self.violations.push(format!("undecodable frame {text}")),
                    }
                }
                intent = self.intents.recv(), if !self.intents_done => match intent {
                    Some(to) => self.new_send(to),
                    None => self.intents_done = true,
                },
                _ = tick.tick() => {}
            }
            if self.flush(&mut ws).await.is_err() {
                return Ended::Lost;
            }
            if self.sync.final_done {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return Ended::Finished;
            }
        }
    }

    fn new_send(&mut self, to: String) {
        let n = self.sends.len();
        self.sends.push(SendRecord {
            client_msg_id: format!("{}-{n}", self.user),
            text: format!("{} to {to}, #{n}", self.user),
            to,
            ack: None,
        });
        self.pending.insert(n);
        self.retry_at.insert(n, Instant::now());
        self.live.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes whatever is due: sends and resends, and a sync when one is wanted.
    async fn flush(&mut self, ws: &mut Ws) -> Result<(), ()> {
        let now = Instant::now();
        let due: Vec<usize> = self
            .retry_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(i, _)| *i)
            .collect();
        for i in due {
            self.retry_at.remove(&i);
            if !self.pending.contains(&i) {
                continue;
            }
            let send = &self.sends[i];
            let frame = json!({"type": "send", "to": send.to, "text": send.text,
                               "client_msg_id": send.client_msg_id});
            ws.feed(Message::Text(frame.to_string().into()))
                .await
                .map_err(drop)?;
            self.unanswered.insert(i);
        }
        let phase = *self.phase.borrow();
        if phase != Phase::Traffic && self.intents_done && self.pending.is_empty() && !self.drained
        {
            self.drained = true;
            self.live.drained.fetch_add(1, Ordering::Relaxed);
        }
        if phase == Phase::FinalSync && !self.sync.final_started {
            self.sync.final_started = true;
            self.sync.again = true;
        }
        let retry_due = self.sync.retry_at.is_some_and(|at| at <= now);
        if !self.sync.in_flight && (self.sync.again || retry_due) {
            self.sync.again = false;
            self.sync.retry_at = None;
            self.sync.in_flight = true;
            let after = self.sync.next_after.take().unwrap_or(self.contiguous);
            let frame = json!({"type": "sync", "after_seq": after, "limit": 500,
                               "req_id": "sync"});
            ws.feed(Message::Text(frame.to_string().into()))
                .await
                .map_err(drop)?;
        }
        ws.flush().await.map_err(drop)
    }

    fn want_sync(&mut self) {
        self.sync.again = true;
    }

    fn on_frame(&mut self, frame: &Value) {
        match frame["type"].as_str().unwrap_or_default() {
            "welcome" => {
                let last_seq = frame["last_seq"].as_u64().unwrap_or(0);
                self.last_seq = self.last_seq.max(last_seq);
                if last_seq > self.contiguous {
                    self.want_sync();
                }
            }
            "ack" => self.on_ack(frame),
            "error" => self.on_error(frame),
            "message" => {
                let seq = frame["seq"].as_u64().unwrap_or(0);
                let skipped = seq > self.contiguous + 1;
                let fresh = self.take(frame, seq);
                if fresh && frame["from"] != self.user.as_str() {
                    self.received_live += 1;
                }
                if skipped {
                    self.want_sync();
                }
            }
            "sync" => {
                self.sync.in_flight = false;
                let before = self.contiguous;
                let mut page_end = None;
                for message in frame["messages"].as_array().into_iter().flatten() {
                    let seq = message["seq"].as_u64().unwrap_or(0);
                    page_end = Some(seq);
                    if self.take(message, seq) && message["from"] != self.user.as_str() {
                        self.received_by_sync += 1;
                    }
                }
                let last_seq = frame["last_seq"].as_u64().unwrap_or(0);
                self.last_seq = self.last_seq.max(last_seq);
                if frame["has_more"].as_bool().unwrap_or(false) {
                    // The next page starts after the last message of this one.
                    self.sync.next_after = page_end;
                    self.want_sync();
                } else if self.contiguous < last_seq && self.contiguous > before {
                    // The page filled a hole, and there was another past it.
                    self.want_sync();
                } else {
                    if self.contiguous < last_seq {
                        self.violations.push(format!(
                            "sync after seq {} returns nothing, but last_seq is {last_seq}",
                            self.contiguous
                        ));
                    }
                    if self.sync.final_started && !self.sync.again {
                        self.sync.final_done = true;
                    }
                }
            }
            "sync_hint" => {
                self.sync_hints += 1;
                let last_seq = frame["last_seq"].as_u64().unwrap_or(0);
                self.last_seq = self.last_seq.max(last_seq);
                self.want_sync();
            }
            _ => {}
        }
    }

    /// Adds a message of the user's stream; returns whether it was new to the client.
    fn take(&mut self, message: &Value, seq: u64) -> bool {
        let entry = Entry {
            message_id: message["message_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            from: message["from"].as_str().unwrap_or_default().to_owned(),
            to: message["to"].as_str().unwrap_or_default().to_owned(),
        };
        self.put(seq, entry)
    }

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
        while self.stream.contains_key(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        true
    }

    /// The send a frame's `client_msg_id` names, when it is one of this client's.
    fn send_of(&self, frame: &Value) -> Option<usize> {
        let id = frame["client_msg_id"].as_str()?;
        let n: usize = id.strip_prefix(&format!("{}-", self.user))?.parse().ok()?;
        (n < self.sends.len()).then_some(n)
    }

    fn on_ack(&mut self, frame: &Value) {
        let Some(i) = self.send_of(frame) else {
            self.violations
                .push(format!("ack for no send of mine: {frame}"));
            return;
        };
        self.unanswered.remove(&i);
        let message_id = frame["message_id"].as_str().unwrap_or_default().to_owned();
        let seq = frame["seq"].as_u64().unwrap_or(0);
        let send = &mut self.sends[i];
        match &send.ack {
            Some(first) if *first != (message_id.clone(), seq) => {
                self.violations.push(format!(
                    "{} acked as {first:?} and later as {:?}",
                    send.client_msg_id,
                    (&message_id, seq)
                ));
            }
            Some(_) => {}
            None => {
                send.ack = Some((message_id.clone(), seq));
                self.live.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
        let entry = Entry {
            message_id,
            from: self.user.clone(),
            to: self.sends[i].to.clone(),
        };
        self.pending.remove(&i);
        self.retry_at.remove(&i);
        self.put(seq, entry);
    }

    fn on_error(&mut self, frame: &Value) {
        let code = frame["code"].as_str().unwrap_or_default().to_owned();
        *self.errors.entry(code.clone()).or_default() += 1;
        let retryable = frame["retryable"].as_bool().unwrap_or(false);
        if frame["req_id"] == "sync" {
            // A read that found storage unreachable: try again shortly.
            self.sync.in_flight = false;
            self.sync.retry_at = Some(Instant::now() + Duration::from_millis(200));
            if !retryable {
                self.violations.push(format!("sync refused: {frame}"));
            }
            return;
        }
        if let Some(i) = self.send_of(frame) {
            self.unanswered.remove(&i);
            if !retryable {
                self.violations.push(format!("send refused: {frame}"));
                return;
            }
            let attempts = self.attempts.entry(i).or_default();
            *attempts += 1;
            let base = 25u64 << (*attempts).min(5);
            let delay = base / 2 + self.rng.below(base);
            if self.pending.contains(&i) {
                self.retry_at
                    .insert(i, Instant::now() + Duration::from_millis(delay));
            }
            return;
        }
        if code == "internal" {
            // The session restarted: what it was working on may not have been done. Sends
            // are safe to repeat.
            let now = Instant::now();
            for i in std::mem::take(&mut self.unanswered) {
                if self.pending.contains(&i) {
                    self.retry_at.insert(i, now);
                }
            }
            if self.sync.in_flight {
                self.sync.in_flight = false;
                self.want_sync();
            }
            return;
        }
        self.violations.push(format!("unexpected error: {frame}"));
    }
}
