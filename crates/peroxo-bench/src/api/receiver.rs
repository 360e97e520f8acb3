//! The webhook receiver of `peroxo bench api`: the HTTP endpoint a node's
//! `[[webhooks.endpoints]]` points at. It checks each delivery as docs/API.md tells a backend
//! to (the `PerOXO-Signature` HMAC-SHA256 of the timestamp, a dot and the raw body, compared in
//! constant time, and a timestamp within 5 minutes), dedupes events by id, and records each
//! of this run's `message.created` events in the [`Book`]: its arrival time minus its `ts`
//! (the commit time) is the commit→webhook latency.
//!
//! The signature is computed here from the documented scheme, not borrowed from the
//! gateway: the load generator checks the server from the outside.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::book::{Book, lock};

const SIGNATURE_HEADER: &str = "PerOXO-Signature";
const TIMESTAMP_HEADER: &str = "PerOXO-Timestamp";
/// The oldest (or most future) delivery timestamp accepted, in seconds, against replays.
const TOLERANCE_SECS: u64 = 300;

/// Why a delivery was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    MissingHeader,
    StaleTimestamp,
    BadSignature,
}

/// Checks a delivery's signature on the bytes received: `v1=` and the hex HMAC-SHA256 under
/// `secret` of `timestamp`, `.` and `body`, compared in constant time; and that `timestamp`
/// (Unix seconds) is within [`TOLERANCE_SECS`] of `now_secs`.
pub(super) fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_secs: u64,
) -> Result<(), Refusal> {
    let sent: u64 = timestamp.parse().map_err(|_| Refusal::StaleTimestamp)?;
    if sent.abs_diff(now_secs) > TOLERANCE_SECS {
        return Err(Refusal::StaleTimestamp);
    }
    let given = signature
        .strip_prefix("v1=")
        .and_then(|hex_mac| hex::decode(hex_mac).ok())
        .ok_or(Refusal::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).map_err(|_| Refusal::BadSignature)
}

/// A delivery's body, as far as the receiver reads it.
#[derive(Deserialize)]
struct Delivery {
    #[serde(default)]
    tenant: Option<String>,
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    ts: i64,
    #[serde(default)]
    data: EventData,
}

#[derive(Default, Deserialize)]
struct EventData {
    #[serde(default)]
    client_msg_id: Option<String>,
}

/// The receiver's state.
pub(super) struct Receiver {
    secret: Vec<u8>,
    book: Arc<Book>,
    /// The ids of the events seen, for the dedupe.
    seen: Mutex<HashSet<u64>>,
}

impl Receiver {
    pub(super) fn new(secret: &str, book: Arc<Book>) -> Self {
        Self {
            secret: secret.as_bytes().to_vec(),
            book,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// The axum app: every POST, whatever its path, is a delivery.
    pub(super) fn router(self: Arc<Self>) -> Router {
        Router::new().fallback(receive).with_state(self)
    }

    /// Takes one delivery received at `now`: 200 when its signature holds and its body reads,
    /// 401 or 400 otherwise (the node then retries it, which a wrong secret never passes).
    pub(super) fn accept(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> StatusCode {
        let counters = &self.book.counters;
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let checked = match (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER)) {
            (Some(timestamp), Some(signature)) => verify(
                &self.secret,
                timestamp,
                signature,
                body,
                since_epoch.as_secs(),
            ),
            _ => Err(Refusal::MissingHeader),
        };
        if checked.is_err() {
            counters.bad_signatures.fetch_add(1, Ordering::Relaxed);
            return StatusCode::UNAUTHORIZED;
        }
        let Ok(delivery) = serde_json::from_slice::<Delivery>(body) else {
            counters.undecodable.fetch_add(1, Ordering::Relaxed);
            return StatusCode::BAD_REQUEST;
        };
        counters.deliveries.fetch_add(1, Ordering::Relaxed);
        if let Some(tenant) = delivery.tenant {
            lock(&self.book.tenant).get_or_insert(tenant);
        }
        let now_us = i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX);
        let mut seen = lock(&self.seen);
        for event in delivery.events {
            let Ok(id) = event.id.parse::<u64>() else {
                counters.undecodable.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if !seen.insert(id) {
                counters.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let ours = (event.kind == "message.created")
                .then_some(event.data.client_msg_id)
                .flatten()
                .and_then(|id| self.book.index_of(&id));
            match ours {
                None => counters.foreign.fetch_add(1, Ordering::Relaxed),
                Some(Ok(i)) if self.book.event(i, event.ts, now_us) => 0,
                Some(_) => counters.misrouted.fetch_add(1, Ordering::Relaxed),
            };
        }
        StatusCode::OK
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    receiver.accept(&headers, &body, SystemTime::now())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::HeaderValue;

    use super::*;
    use crate::traffic::Timeline;

    const SECRET: &str = "whsec_test_secret_0123";
    const NOW: u64 = 1_764_700_000;

    /// `v1=` and the HMAC of `1764700000.{"events":[]}` under SECRET, computed apart with
    /// Python's `hmac.new(SECRET, b'1764700000.{"events":[]}', hashlib.sha256)`.
    const KNOWN: &str = "v1=a0c349524c646d22906cd9bfb2491606aefa1abca86e0686a82c1d754a91da4b";

    fn sign(secret: &str, timestamp: &str, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.{body}").as_bytes());
        format!("v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn a_signature_verifies_only_with_its_secret_timestamp_and_body() {
        let body = r#"{"events":[]}"#;
        let good = sign(SECRET, "1764700000", body);
        assert_eq!(
            good, KNOWN,
            "the documented scheme, as another language computes it"
        );
        let ok = |ts: &str, sig: &str, body: &str, now| {
            verify(SECRET.as_bytes(), ts, sig, body.as_bytes(), now)
        };
        assert_eq!(ok("1764700000", &good, body, NOW), Ok(()));
        assert_eq!(ok("1764700000", &good, body, NOW + 300), Ok(()));
        assert_eq!(
            ok("1764700000", &good, body, NOW + 301),
            Err(Refusal::StaleTimestamp)
        );
        assert_eq!(
            ok("1764700001", &good, body, NOW),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            ok("1764700000", &good, r#"{"events":[ ]}"#, NOW),
            Err(Refusal::BadSignature)
        );
        let other = sign("whsec_other_secret__", "1764700000", body);
        assert_eq!(
            ok("1764700000", &other, body, NOW),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            ok("1764700000", &good[3..], body, NOW),
            Err(Refusal::BadSignature)
        );
    }

    fn receiver() -> Receiver {
        let timeline = Timeline::new(10, Duration::ZERO, Duration::from_secs(1)).unwrap();
        let window = (Duration::ZERO, Duration::from_secs(1));
        let book = Book::with_tag(timeline, window, std::time::Instant::now(), "t1".into());
        Receiver::new(SECRET, Arc::new(book))
    }

    fn headers(timestamp: &str, body: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(TIMESTAMP_HEADER, HeaderValue::from_str(timestamp).unwrap());
        let signature = sign(SECRET, timestamp, body);
        headers.insert(SIGNATURE_HEADER, HeaderValue::from_str(&signature).unwrap());
        headers
    }

    #[test]
    fn events_are_deduped_by_id_and_timed_from_their_commit() {
        let receiver = receiver();
        let now = UNIX_EPOCH + Duration::from_secs(NOW);
        let commit_ms = NOW * 1_000 - 40;
        let body = format!(
            r#"{{"webhook":"w","tenant":"acme","events":[
              {{"id":"7","type":"message.created","ts":{commit_ms},"data":{{"client_msg_id":"t1-3"}}}},
              {{"id":"8","type":"message.created","ts":{commit_ms},"data":{{"client_msg_id":"other-3"}}}},
              {{"id":"9","type":"notify","ts":{commit_ms},"data":{{}}}}]}}"#
        );
        let h = headers(&NOW.to_string(), &body);
        assert_eq!(receiver.accept(&h, body.as_bytes(), now), StatusCode::OK);
        // The same delivery again (a retry after a lost answer): every event is a duplicate.
        assert_eq!(receiver.accept(&h, body.as_bytes(), now), StatusCode::OK);
        let c = &receiver.book.counters;
        assert_eq!(c.deliveries.load(Ordering::Relaxed), 2);
        assert_eq!(c.duplicates.load(Ordering::Relaxed), 3);
        assert_eq!(c.foreign.load(Ordering::Relaxed), 2);
        let latency = lock(&receiver.book.commit_to_webhook).summary();
        assert_eq!(latency.count, 1);
        // 40 ms, within the histogram's three significant digits.
        assert!((40_000..40_100).contains(&latency.max_us), "{latency:?}");
        assert_eq!(receiver.book.fates().with_event, 1);
        assert_eq!(lock(&receiver.book.tenant).as_deref(), Some("acme"));

        // Another event id for the same message is not a new message.
        let again = format!(
            r#"{{"events":[{{"id":"10","type":"message.created","ts":{commit_ms},"data":{{"client_msg_id":"t1-3"}}}}]}}"#
        );
        let h = headers(&NOW.to_string(), &again);
        assert_eq!(receiver.accept(&h, again.as_bytes(), now), StatusCode::OK);
        assert_eq!(c.misrouted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_delivery_with_a_wrong_signature_is_refused_and_not_counted() {
        let receiver = receiver();
        let now = UNIX_EPOCH + Duration::from_secs(NOW);
        let body = r#"{"events":[{"id":"1","type":"message.created","ts":1,"data":{"client_msg_id":"t1-0"}}]}"#;
        let h = headers(&NOW.to_string(), body);
        let tampered = body.replace("t1-0", "t1-1");
        assert_eq!(
            receiver.accept(&h, tampered.as_bytes(), now),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            receiver.accept(&HeaderMap::new(), body.as_bytes(), now),
            StatusCode::UNAUTHORIZED
        );
        let c = &receiver.book.counters;
        assert_eq!(c.bad_signatures.load(Ordering::Relaxed), 2);
        assert_eq!(c.deliveries.load(Ordering::Relaxed), 0);
        assert_eq!(receiver.book.fates().with_event, 0);
    }
}
