//! The webhook receiver of the cases that configure one: a real HTTP server in the suite's
//! process, which the gateway POSTs its tenant's event feed to. It keeps every batch it took
//! as received (headers and raw body), for the verdict to check signatures, order and
//! completeness; it answers slowly, so that a delivery is usually in flight when a fault
//! strikes, and refuses some requests with 500, so that retries happen throughout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use peroxo_gateway::webhooks::{SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK_HEADER};
use tokio::time::Instant;

/// How long the receiver takes to answer a batch it took.
const ANSWER_AFTER: Duration = Duration::from_millis(200);
/// Every this many requests, one is refused with 500 (never two in a row, so no batch runs
/// out of attempts).
const REFUSE_EVERY: u64 = 7;

/// One batch the receiver took (answered 2xx, or would have had the gateway waited).
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    /// `PerOXO-Webhook`, `PerOXO-Timestamp` and `PerOXO-Signature`, empty when missing.
    pub(crate) webhook: String,
    pub(crate) timestamp: String,
    pub(crate) signature: String,
    pub(crate) body: String,
}

/// What the receiver saw.
#[derive(Debug, Default)]
struct Seen {
    /// The batches it took, in the order they arrived.
    batches: Mutex<Vec<Batch>>,
    requests: AtomicU64,
    refused: AtomicU64,
    /// Batches taken and not answered yet.
    in_flight: AtomicU64,
}

/// Counts a batch in flight until it is answered, or until the gateway's connection drops
/// and the answer with it.
struct InFlight(Arc<Seen>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running receiver, and the endpoint the gateway is configured with.
pub(crate) struct Receiver {
    pub(crate) name: &'static str,
    pub(crate) tenant: String,
    pub(crate) secret: &'static str,
    url: String,
    seen: Arc<Seen>,
    server: tokio::task::JoinHandle<()>,
}

/// What the receiver holds once the case is over, for the verdict.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) name: &'static str,
    pub(crate) tenant: String,
    pub(crate) secret: &'static str,
    pub(crate) batches: Vec<Batch>,
    pub(crate) requests: u64,
    pub(crate) refused: u64,
    /// Batches in flight when the gateway was killed, over all kills.
    pub(crate) in_flight_at_kills: u64,
    /// How long after the traffic settled the receiver held the feed's last event (`None`:
    /// not within the deadline).
    pub(crate) caught_up: Option<Duration>,
}

impl Receiver {
    pub(crate) async fn start(tenant: &str) -> Self {
        let seen = Arc::new(Seen::default());
        let state = Arc::clone(&seen);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let seen = Arc::clone(&state);
                async move { take(&seen, &headers, &body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            name: "faults",
            tenant: tenant.to_owned(),
            secret: "whsec_faults_0123456789",
            url,
            seen,
            server,
        }
    }

    /// The gateway's configuration for this receiver: every kind of event of the tenant (but
    /// `webhook.failed`), retries and leases short enough for a short case, and no `notify`
    /// (decided after `push.delay` by the node alone, and lost with it when it is killed: not
    /// a committed change).
    pub(crate) fn config(&self) -> String {
        format!(
            "[push]\ndelay = \"0s\"\n\
             [webhooks]\nlease = \"2s\"\nretry_initial = \"100ms\"\nretry_max = \"1s\"\n\
             [[webhooks.endpoints]]\nname = \"{}\"\ntenant = \"{}\"\nurl = \"{}\"\n\
             secret = \"{}\"\nevents = []\n",
            self.name, self.tenant, self.url, self.secret
        )
    }

    /// Batches in flight now.
    pub(crate) fn in_flight(&self) -> u64 {
        self.seen.in_flight.load(Ordering::SeqCst)
    }

    /// Whether every event id from 1 to `last` was received, asked every 50 ms until
    /// `deadline`; how long it took.
    pub(crate) async fn wait_for(&self, last: u64, deadline: Duration) -> Option<Duration> {
        let started = Instant::now();
        loop {
            let held = contiguous(&self.seen.batches.lock().unwrap());
            if held >= last {
                return Some(started.elapsed());
            }
            if started.elapsed() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the receiver; what it saw.
    pub(crate) fn finish(self, in_flight_at_kills: u64, caught_up: Option<Duration>) -> Received {
        self.server.abort();
        Received {
            name: self.name,
            tenant: self.tenant,
            secret: self.secret,
            batches: self.seen.batches.lock().unwrap().clone(),
            requests: self.seen.requests.load(Ordering::SeqCst),
            refused: self.seen.refused.load(Ordering::SeqCst),
            in_flight_at_kills,
            caught_up,
        }
    }
}

/// One request: refused with 500 now and then; otherwise the batch is recorded at once (as a
/// backend would process it), then answered after a while.
async fn take(seen: &Arc<Seen>, headers: &HeaderMap, body: &Bytes) -> StatusCode {
    let n = seen.requests.fetch_add(1, Ordering::SeqCst);
    if n % REFUSE_EVERY == REFUSE_EVERY - 1 {
        seen.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    seen.in_flight.fetch_add(1, Ordering::SeqCst);
    let _answering = InFlight(Arc::clone(seen));
    seen.batches.lock().unwrap().push(Batch {
        webhook: header(WEBHOOK_HEADER),
        timestamp: header(TIMESTAMP_HEADER),
        signature: header(SIGNATURE_HEADER),
        body: String::from_utf8_lossy(body).into_owned(),
    });
    tokio::time::sleep(ANSWER_AFTER).await;
    StatusCode::OK
}

/// The ids of a batch's events, in the order it holds them (unparsable ones as 0).
pub(crate) fn event_ids(batch: &Batch) -> Vec<u64> {
    serde_json::from_str::<serde_json::Value>(&batch.body)
        .ok()
        .and_then(|body| {
            body["events"].as_array().map(|events| {
                events
                    .iter()
                    .map(|e| e["id"].as_str().and_then(|id| id.parse().ok()).unwrap_or(0))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The highest id up to which every event id from 1 was received.
fn contiguous(batches: &[Batch]) -> u64 {
    let mut ids: Vec<u64> = batches.iter().flat_map(event_ids).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.iter().zip(1..).take_while(|(id, n)| **id == *n).count() as u64
}
