//! The shared harness: a gateway with its embedded storage on port 0 over a temporary SQLite
//! file, and a WebSocket client that speaks the protocol with deadlines instead of sleeps.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use peroxo_config::Config;
use peroxo_gateway::Gateway;
use peroxo_storage::StoreServer;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expectation may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A config for tests: every listener on port 0, data in `dir`.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.auth.mode = peroxo_config::AuthMode::Dev;
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.storage.listen = "127.0.0.1:0".parse().unwrap();
    config.storage.sqlite_path = dir.join("peroxo.db");
    config.storage.lsm_path = dir.join("peroxo.lsm");
    config
}

/// A running gateway (with embedded storage unless the config says otherwise).
pub struct TestServer {
    pub gateway: Gateway,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let gateway = Gateway::start(config).await.expect("gateway starts");
        Self { gateway, dir }
    }

    pub fn ws_url(&self, tenant: &str, user: &str) -> String {
        format!(
            "ws://{}/ws?user={user}&tenant={tenant}",
            self.gateway.http_addr
        )
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.http_addr)
    }

    pub async fn connect(&self, user: &str) -> Client {
        Client::connect(&self.ws_url("default", user)).await
    }

    pub async fn connect_in(&self, tenant: &str, user: &str) -> Client {
        Client::connect(&self.ws_url(tenant, user)).await
    }

    /// A connection of `user` (tenant `default`) speaking protocol 2.
    pub async fn connect_v2(&self, user: &str) -> Client {
        Client::connect(&format!("{}&protocol=2", self.ws_url("default", user))).await
    }

    /// A connection of `user` (tenant `default`) speaking protocol 3.
    pub async fn connect_v3(&self, user: &str) -> Client {
        Client::connect(&format!("{}&protocol=3", self.ws_url("default", user))).await
    }

    /// The WebSocket URL with a token in the query string.
    pub fn ws_url_with_token(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.gateway.http_addr)
    }
}

/// Starts a storage service alone on `addr` over the SQLite file in `dir`.
pub async fn start_store(dir: &std::path::Path, addr: std::net::SocketAddr) -> StoreServer {
    let mut config = test_config(dir);
    config.storage.listen = addr;
    StoreServer::start(&config.storage)
        .await
        .expect("store starts")
}

/// The `[storage]` of a storage service on `listen` over the PostgreSQL database at `url`.
pub fn postgres_storage(
    dir: &std::path::Path,
    listen: std::net::SocketAddr,
    url: String,
) -> peroxo_config::StorageConfig {
    let mut config = test_config(dir).storage;
    config.listen = listen;
    config.backend = peroxo_config::StorageBackend::Postgres;
    config.postgres.url = peroxo_config::Secret::new(url);
    config
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Polls `condition` until it holds or the deadline passes.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the async `condition` until it holds or the deadline passes.
pub async fn eventually_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A protocol client over a real WebSocket.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `welcome` frame this connection received.
    pub welcome: Value,
}

impl Client {
    /// Sends `command` with `req_id` and returns the frame answering it (skipping others).
    pub async fn request(&mut self, mut command: Value, req_id: &str) -> Value {
        command["req_id"] = json!(req_id);
        self.send_json(command).await;
        loop {
            let frame = self.next().await;
            if frame["req_id"] == req_id {
                return frame;
            }
        }
    }

    /// Creates a group with `members` besides this user and returns its id.
    pub async fn create_group(&mut self, title: &str, members: &[&str], id: &str) -> String {
        let reply = self
            .request(
                json!({"type": "create_group", "title": title, "members": members, "client_msg_id": id}),
                id,
            )
            .await;
        assert_eq!(reply["type"], "group_created", "{reply}");
        reply["conversation_id"].as_str().unwrap().to_owned()
    }

    /// Sends a message to a conversation and returns its ack.
    pub async fn send_to(&mut self, conversation_id: &str, text: &str, id: &str) -> Value {
        let ack = self
            .request(
                json!({"type": "send", "conversation_id": conversation_id, "text": text, "client_msg_id": id}),
                id,
            )
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        ack
    }

    /// Connects and reads `welcome`.
    pub async fn connect(url: &str) -> Self {
        let mut client = Self::connect_raw(url).await;
        let welcome = client.next().await;
        assert_eq!(
            welcome["type"], "welcome",
            "first frame must be welcome: {welcome}"
        );
        client.welcome = welcome;
        client
    }

    /// Connects without reading anything.
    pub async fn connect_raw(url: &str) -> Self {
        Self::try_connect(url).await.expect("websocket handshake")
    }

    /// Connects with extra request headers and reads `welcome`.
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap(),
                value.parse().unwrap(),
            );
        }
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time")
            .expect("websocket handshake");
        let mut client = Self {
            ws,
            welcome: Value::Null,
        };
        client.welcome = client.expect("welcome").await;
        client
    }

    /// Tries the handshake; a refusal comes back as the HTTP status and JSON body.
    pub async fn try_connect(url: &str) -> Result<Self, (u16, Value)> {
        use tokio_tungstenite::tungstenite::Error;
        match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
        {
            Ok((ws, _)) => Ok(Self {
                ws,
                welcome: Value::Null,
            }),
            Err(Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err((status, body))
            }
            Err(other) => panic!("handshake failed: {other}"),
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send frame");
    }

    /// Sends a text frame; false when the connection is already closed.
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        self.ws.send(Message::Text(text.into())).await.is_ok()
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .await
            .expect("send frame");
    }

    /// The next text frame as JSON; fails on close or after the deadline.
    pub async fn next(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame within the deadline")
                .expect("the connection is open")
                .expect("a valid frame");
            match frame {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame, which must be of `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let frame = self.next().await;
        assert_eq!(frame["type"], kind, "expected a {kind} frame, got {frame}");
        frame
    }

    /// Skips frames until one of `kind` arrives.
    pub async fn wait_for(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// The next frame, or the close code (if any) when the connection closes instead.
    pub async fn next_or_close(&mut self) -> Result<Value, Option<u16>> {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame within the deadline");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text).expect("JSON frame"));
                }
                Some(Ok(Message::Close(close))) => {
                    self.finish_closing().await;
                    return Err(close.map(|c| u16::from(c.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Whether the next frame is a ping (which the client library answers); fails on anything
    /// but a ping or a text frame.
    pub async fn next_raw_is_ping(&mut self) -> bool {
        let frame = tokio::time::timeout(DEADLINE, self.ws.next())
            .await
            .expect("a frame within the deadline")
            .expect("the connection is open")
            .expect("a valid frame");
        match frame {
            Message::Ping(_) => {
                // The library queues the pong; flushing sends it, as a browser would at once.
                self.ws.flush().await.expect("pong sent");
                true
            }
            Message::Text(_) | Message::Pong(_) => false,
            other => panic!("unexpected frame {other:?}"),
        }
    }

    /// Without waiting: the close code if the server has closed the connection.
    pub async fn poll_close(&mut self) -> Option<u16> {
        use futures_util::FutureExt;
        while let Some(frame) = self.ws.next().now_or_never() {
            match frame {
                Some(Ok(Message::Close(close))) => {
                    return Some(close.map_or(1005, |c| u16::from(c.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Some(1006),
            }
        }
        None
    }

    /// Answers the server's close frame and waits for the connection to end, as a
    /// well-behaved client does.
    async fn finish_closing(&mut self) {
        let _ = tokio::time::timeout(DEADLINE, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Waits for the close frame and returns it.
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a close within the deadline");
            match frame {
                Some(Ok(Message::Close(close))) => {
                    self.finish_closing().await;
                    return close;
                }
                Some(Ok(Message::Text(text))) => {
                    let _ = text;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed instead of closing: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Sends a DM and returns the frame that answers it (an `ack`, or an `error`).
    pub async fn send_dm(&mut self, to: &str, text: &str, client_msg_id: &str) -> Value {
        self.send_json(
            json!({"type": "send", "to": to, "text": text, "client_msg_id": client_msg_id}),
        )
        .await;
        loop {
            let frame = self.next().await;
            if (frame["type"] == "ack" || frame["type"] == "error")
                && frame["client_msg_id"] == client_msg_id
            {
                return frame;
            }
        }
    }

    /// Sends a DM that must be acked; returns the ack.
    pub async fn dm(&mut self, to: &str, text: &str, client_msg_id: &str) -> Value {
        let ack = self.send_dm(to, text, client_msg_id).await;
        assert_eq!(ack["type"], "ack", "expected an ack, got {ack}");
        ack
    }

    /// A round trip: every frame the server queued before the pong is returned, in order.
    pub async fn frames_until_pong(&mut self) -> Vec<Value> {
        self.send_json(json!({"type": "ping", "req_id": "barrier"}))
            .await;
        let mut frames = Vec::new();
        loop {
            let frame = self.next().await;
            if frame["type"] == "pong" && frame["req_id"] == "barrier" {
                return frames;
            }
            frames.push(frame);
        }
    }

    /// Every stream entry (messages and events) after `after_seq`, merged by seq, and the
    /// `last_seq` of the last page.
    pub async fn sync_entries(&mut self, mut after_seq: u64) -> (Vec<Value>, u64) {
        let mut entries = Vec::new();
        loop {
            let page = self
                .request(
                    json!({"type": "sync", "after_seq": after_seq, "limit": 500}),
                    "sync",
                )
                .await;
            let mut batch: Vec<Value> = page["messages"].as_array().unwrap().clone();
            batch.extend(page["events"].as_array().cloned().unwrap_or_default());
            batch.sort_by_key(|e| e["seq"].as_u64().unwrap());
            if let Some(last) = batch.last() {
                after_seq = last["seq"].as_u64().unwrap();
            }
            entries.extend(batch);
            if !page["has_more"].as_bool().unwrap() {
                return (entries, page["last_seq"].as_u64().unwrap());
            }
        }
    }

    /// Every message stored for this user after `after_seq`, through `sync` paging.
    pub async fn sync_all(&mut self, mut after_seq: u64) -> Vec<Value> {
        let mut messages = Vec::new();
        loop {
            self.send_json(
                json!({"type": "sync", "after_seq": after_seq, "limit": 500, "req_id": "sync"}),
            )
            .await;
            let page = self.wait_for("sync").await;
            let batch = page["messages"].as_array().unwrap().clone();
            if let Some(last) = batch.last() {
                after_seq = last["seq"].as_u64().unwrap();
            }
            messages.extend(batch);
            if !page["has_more"].as_bool().unwrap() {
                return messages;
            }
        }
    }

    /// Closes with 1000 and returns the server's answer to the close frame; fails when the
    /// connection ends without one.
    pub async fn close_expecting_answer(mut self) -> Option<CloseFrame> {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        self.ws.close(Some(frame)).await.expect("close frame sent");
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("an answer within the deadline");
            match frame {
                Some(Ok(Message::Close(answer))) => return answer,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed instead of answering the close: {e}"),
                None => panic!("connection ended without answering the close"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Wait for the server's side of the closing handshake.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, self.ws.next()).await {}
    }
}

/// A child process of the test (a `peroxo` node, or NATS), killed when dropped.
pub struct Process {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Process {
    /// Starts `command` with its stdout captured line by line.
    pub fn spawn(command: &mut std::process::Command) -> Self {
        use std::io::BufRead;
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the process starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Reads JSON log lines until one whose message starts with `prefix`; returns its fields.
    pub fn wait_for_log(&mut self, prefix: &str) -> Value {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log {prefix:?} in time"));
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
            {
                return entry["fields"].clone();
            }
        }
    }

    /// SIGKILL: no goodbye, no drain.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `nats-server` with JetStream on `addr`, storing in `dir`, and waits until it
/// accepts connections. Needs the Debian package `nats-server` (or `NATS_SERVER` naming the
/// binary).
pub fn start_nats(addr: std::net::SocketAddr, dir: &std::path::Path) -> Process {
    let binary = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned());
    let process = Process::spawn(
        std::process::Command::new(&binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "-js",
                "-sd",
            ])
            .arg(dir),
    );
    let deadline = std::time::Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{binary} did not start (install the Debian package nats-server)"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    process
}

/// A PostgreSQL server for tests: `PEROXO_TEST_POSTGRES_URL` (default
/// `postgres://postgres@127.0.0.1:5432/postgres`), where tests create and drop their own
/// databases.
pub mod postgres {
    use std::sync::atomic::{AtomicU32, Ordering};

    pub fn admin_url() -> String {
        std::env::var("PEROXO_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    pub async fn admin() -> tokio_postgres::Client {
        let url = admin_url();
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot reach PostgreSQL at {url} ({e}); set PEROXO_TEST_POSTGRES_URL to a \
                     server where this user may create databases"
                )
            });
        tokio::spawn(connection);
        client
    }

    /// A database name no other run uses.
    pub fn fresh_database_name() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!(
            "peroxo_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            nanos % 1_000_000_000
        )
    }

    /// The URL of `database` on the admin server.
    pub fn url_of(database: &str) -> String {
        let admin = admin_url();
        match admin.rsplit_once('/') {
            Some((server, _)) if admin.starts_with("postgres") => format!("{server}/{database}"),
            _ => format!("{admin} dbname={database}"),
        }
    }

    /// Creates a fresh database and returns its name and URL.
    pub async fn create_database() -> (String, String) {
        let name = fresh_database_name();
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = url_of(&name);
        (name, url)
    }

    pub async fn drop_database(name: &str) {
        admin()
            .await
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await
            .unwrap();
    }
}

/// One HTTP/1.1 request over a fresh connection; returns the status and the body (chunked
/// bodies are reassembled).
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String) {
    try_http_request(addr, method, path, headers)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`http_request`] that reports a failure (no connection, no answer in time, not HTTP)
/// instead of failing the test.
pub async fn try_http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> Result<(u16, String), String> {
    try_http_request_with_body(addr, method, path, headers, "").await
}

/// [`try_http_request`] with a request body (sent with its `Content-Length`).
pub async fn try_http_request_with_body(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let length = if body.is_empty() {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}{length}Connection: close\r\n\r\n{body}"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(DEADLINE, exchange)
        .await
        .map_err(|_| "no response in time".to_owned())?
        .map_err(|e| e.to_string())?;
    let response = String::from_utf8(response).map_err(|e| e.to_string())?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// The value of the first sample of metric `name` whose labels contain `labels`, in a
/// Prometheus text exposition.
pub fn metric_sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find(|l| {
            l.rsplit_once(' ').is_some_and(|(series, _)| {
                (series == name || series.starts_with(&format!("{name}{{")))
                    && series.contains(labels)
            })
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size + 2 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}
