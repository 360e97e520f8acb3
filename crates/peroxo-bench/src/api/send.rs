//! The sending side of `peroxo bench api`: `--connections` HTTP/1.1 keep-alive connections to
//! the server API, each taking the messages the pacer hands it in turn (message `i` goes to
//! connection `i mod C`). With `--batch 1` each message is its own `POST /api/v1/messages`;
//! above, a connection that finds several messages waiting sends them (up to `--batch`) in one
//! `POST /api/v1/messages/batch`, as a backend does, without waiting for a batch to fill.
//! Either way each message's latency runs from its due time to the answer that carries its
//! ack, so time spent queued behind a busy connection counts (open loop).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use super::book::Book;
use crate::rng;
use crate::traffic::names;

/// Who sends what to whom.
pub(super) struct Messages {
    /// Senders, and as many recipients.
    pub(super) users: u32,
    pub(super) seed: u64,
    pub(super) text_bytes: usize,
}

impl Messages {
    /// The sender of message `i`: `<tag>s<i mod users>`.
    fn from(&self, book: &Book, i: u32) -> String {
        format!("{}s{}", book.tag, i % self.users)
    }

    /// The recipient of message `i`, one of the users `<tag>r<n>`, chosen by the seed.
    fn to(&self, book: &Book, i: u32) -> String {
        let bits = rng::splitmix64(self.seed ^ u64::from(i));
        format!("{}r{}", book.tag, rng::below(bits, u64::from(self.users)))
    }

    fn json(&self, book: &Book, i: u32) -> Value {
        json!({
            "from": self.from(book, i),
            "to": self.to(book, i),
            "text": names::message_text(i, self.text_bytes),
            "client_msg_id": book.client_msg_id(i),
        })
    }
}

/// The server API as the load generator calls it.
#[derive(Clone)]
pub(super) struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    authorization: Arc<str>,
}

impl Api {
    pub(super) fn new(http_url: &str, api_key: &str, connections: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .build(connector);
        Self {
            client,
            base: format!("{}/api/v1", http_url.trim_end_matches('/')),
            authorization: format!("Bearer {api_key}").into(),
        }
    }

    fn uri(&self, path: &str) -> anyhow::Result<Uri> {
        let uri = format!("{}{path}", self.base);
        uri.parse().with_context(|| format!("bad URL {uri}"))
    }

    /// One call: the status and the body as JSON (`Null` when it is not JSON).
    async fn call(
        &self,
        method: &str,
        uri: Uri,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(AUTHORIZATION, &*self.authorization)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let response = self.client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// Checks that the node answers and takes the key, before the run starts.
    pub(super) async fn check_key(&self) -> anyhow::Result<()> {
        let uri = self.uri("/presence?users=bench")?;
        let (status, body) = self
            .call("GET", uri.clone(), Bytes::new())
            .await
            .with_context(|| format!("the server API at {uri} did not answer"))?;
        anyhow::ensure!(
            status.is_success(),
            "the server API refused the key: {status} {body}"
        );
        Ok(())
    }
}

/// One connection's loop: sends what the pacer queues for it until the queue closes.
pub(super) async fn connection(
    api: Api,
    book: Arc<Book>,
    messages: Arc<Messages>,
    batch: usize,
    mut queue: UnboundedReceiver<u32>,
) -> anyhow::Result<()> {
    let single = api.uri("/messages")?;
    let several = api.uri("/messages/batch")?;
    let mut due = Vec::with_capacity(batch);
    while let Some(i) = queue.recv().await {
        due.clear();
        due.push(i);
        while due.len() < batch {
            match queue.try_recv() {
                Ok(i) => due.push(i),
                Err(_) => break,
            }
        }
        for i in &due {
            book.sent(*i);
        }
        book.counters.requests.fetch_add(1, Ordering::Relaxed);
        if batch == 1 {
            let body = messages.json(&book, i).to_string();
            match api.call("POST", single.clone(), body.into()).await {
                Ok((status, _)) if status == StatusCode::OK => book.acked(i),
                Ok((status, answer)) => book.refused(i, &error_code(status, &answer)),
                Err(error) => book.refused(i, &transport(&error)),
            }
        } else {
            let list: Vec<Value> = due.iter().map(|i| messages.json(&book, *i)).collect();
            let body = json!({ "messages": list }).to_string();
            match api.call("POST", several.clone(), body.into()).await {
                Ok((status, answer)) if status == StatusCode::OK => {
                    let results = answer["results"].as_array();
                    for (k, i) in due.iter().enumerate() {
                        let result = results.and_then(|r| r.get(k));
                        match result {
                            Some(r) if r["ok"] == true => book.acked(*i),
                            Some(r) => book.refused(*i, &error_code(status, r)),
                            None => book.refused(*i, "batch answer without this message"),
                        }
                    }
                }
                Ok((status, answer)) => {
                    let code = error_code(status, &answer);
                    due.iter().for_each(|i| book.refused(*i, &code));
                }
                Err(error) => {
                    let code = transport(&error);
                    due.iter().for_each(|i| book.refused(*i, &code));
                }
            }
        }
    }
    Ok(())
}

/// A refusal's label: the API's error code, or the status when the body names none.
fn error_code(status: StatusCode, answer: &Value) -> String {
    match answer["error"].as_str() {
        Some(code) => code.to_owned(),
        None => format!("http {}", status.as_u16()),
    }
}

fn transport(error: &anyhow::Error) -> String {
    format!("transport: {error}")
}
