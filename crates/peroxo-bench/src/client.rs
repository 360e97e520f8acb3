//! Opening benchmark sessions: where to connect, from which source address, with which
//! identity, and how failures are counted. The connections themselves are `peroxo-client`
//! [`Connection`]s (TCP connect, WebSocket handshake, `welcome`, close handshake); a scenario
//! that runs its own reader and writer takes the socket with [`Connection::into_parts`].
//!
//! Nodes: with several `--url`s, connection `n` goes to the node of URL `n mod` their number,
//! so consecutive connections (in `dm`, consecutive users) alternate between the nodes.
//!
//! Source addresses: one loopback address has about 28,000 ephemeral ports (32768–60999).
//! With `--source-ips K` client sockets are bound to 127.0.0.2 … 127.0.0.(1+K) in turn, which
//! multiplies the ports available (and spreads connections in TIME_WAIT).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use peroxo_client::{ConnectError, ConnectOptions, Connection, WebSocketConfig};

use super::report::Tally;

/// How long a session may take from TCP connect to `welcome` (the server's own handshake
/// timeout is 10 s by default).
pub(super) const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a client waits for the server's answer to its close frame.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a minted token is valid: longer than any benchmark run.
const TOKEN_TTL: Duration = Duration::from_secs(6 * 3_600);
/// The first loopback source address used with `--source-ips` (127.0.0.1 is left alone).
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// How benchmark clients prove who they are.
enum Credentials {
    /// Dev mode: `?user=<id>&tenant=<t>`.
    Dev,
    /// JWT mode: `?token=` with an HS256 token minted for each connection.
    Jwt(EncodingKey),
}

/// The protocol version sessions ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// Protocol 1: direct messages (no `protocol` parameter).
    V1,
    /// Protocol 2: conversations (`?protocol=2`).
    V2,
    /// Protocol 3: edits, deletes, reactions and replies (`?protocol=3`).
    V3,
}

impl Protocol {
    /// The query parameter that asks for this version, with its leading `&`.
    fn query(self) -> &'static str {
        match self {
            Protocol::V1 => "",
            Protocol::V2 => "&protocol=2",
            Protocol::V3 => "&protocol=3",
        }
    }

    /// The version `welcome.protocol` names.
    pub(super) fn number(self) -> u32 {
        match self {
            Protocol::V1 => 1,
            Protocol::V2 => 2,
            Protocol::V3 => 3,
        }
    }
}

/// How large the client's WebSocket buffers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Buffers {
    /// Small buffers, for many mostly idle connections.
    Lean,
    /// The library's defaults: writes gather until a flush.
    Default,
}

/// One node benchmark clients connect to.
struct Node {
    /// The WebSocket URL without query string.
    url: String,
    /// The node's address, resolved once at the start to check the options against it.
    address: SocketAddr,
}

/// Where and as whom benchmark clients connect.
pub(super) struct Endpoint {
    /// The nodes, in the order of `--url`; connection `n` goes to `nodes[n % nodes.len()]`.
    nodes: Vec<Node>,
    tenant: String,
    credentials: Credentials,
    /// Local addresses to bind to in turn; empty to let the kernel choose.
    sources: Vec<IpAddr>,
    /// The WebSocket's buffer sizes (see [`Buffers`]).
    websocket: WebSocketConfig,
    protocol: Protocol,
}

impl Endpoint {
    /// Resolves every one of `urls` and checks the options against them.
    pub(super) async fn resolve(
        urls: &[String],
        tenant: String,
        jwt_secret: Option<&str>,
        source_ips: u8,
        buffers: Buffers,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!urls.is_empty(), "no --url to connect to");
        let mut nodes = Vec::with_capacity(urls.len());
        for url in urls {
            nodes.push(Node::resolve(url).await?);
        }
        let addresses: Vec<SocketAddr> = nodes.iter().map(|node| node.address).collect();
        let sources = source_addresses(source_ips, &addresses)?;
        super::check_id("--tenant", &tenant)?;
        let credentials = match jwt_secret {
            Some(secret) => Credentials::Jwt(EncodingKey::from_secret(secret.as_bytes())),
            None => Credentials::Dev,
        };
        let websocket = match buffers {
            Buffers::Lean => WebSocketConfig::default()
                .read_buffer_size(4_096)
                .write_buffer_size(0),
            Buffers::Default => WebSocketConfig::default(),
        };
        Ok(Self {
            nodes,
            tenant,
            credentials,
            sources,
            websocket,
            protocol: Protocol::V1,
        })
    }

    /// The same endpoint, with sessions asking for `protocol`.
    pub(super) fn speaking(self, protocol: Protocol) -> Self {
        Self { protocol, ..self }
    }

    /// The tenant every session of this run belongs to.
    pub(super) fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The node connection number `n` goes to.
    fn node(&self, n: usize) -> &Node {
        &self.nodes[n % self.nodes.len()]
    }

    /// Opens connection number `n` as `user` and waits for `welcome`.
    pub(super) async fn open_session(&self, user: &str, n: usize) -> Result<Connection, OpenError> {
        let request = self.request_url(user, n)?;
        self.open_session_at(&request, n).await
    }

    /// Opens connection number `n` with the upgrade URL `request` (from
    /// [`Endpoint::request_url`] for the same `n`) and waits for `welcome`, within
    /// `OPEN_TIMEOUT`. The socket is bound to the `n`th source address in turn when there
    /// are some.
    pub(super) async fn open_session_at(
        &self,
        request: &str,
        n: usize,
    ) -> Result<Connection, OpenError> {
        let options = ConnectOptions {
            headers: Vec::new(),
            timeout: OPEN_TIMEOUT,
            local_address: (!self.sources.is_empty()).then(|| self.sources[n % self.sources.len()]),
            websocket: self.websocket,
        };
        Ok(Connection::connect(request, &options).await?)
    }

    /// The upgrade URL of connection number `n` that identifies `user` of this run's tenant
    /// (in jwt mode it carries a freshly minted token).
    pub(super) fn request_url(&self, user: &str, n: usize) -> Result<String, OpenError> {
        let url = &self.node(n).url;
        let protocol = self.protocol.query();
        match &self.credentials {
            Credentials::Dev => Ok(format!(
                "{url}?user={user}&tenant={}{protocol}",
                self.tenant
            )),
            Credentials::Jwt(key) => {
                let token = mint_token(key, user, &self.tenant).map_err(OpenError::Token)?;
                Ok(format!("{url}?token={token}{protocol}"))
            }
        }
    }
}

impl Node {
    /// Resolves the host of `url`.
    async fn resolve(url: &str) -> anyhow::Result<Self> {
        let authority = authority_of(url)?;
        let address = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("cannot resolve {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to no address"))?;
        Ok(Self {
            url: url.split('?').next().unwrap_or(url).to_owned(),
            address,
        })
    }
}

/// The `host:port` of a `ws://` URL.
fn authority_of(url: &str) -> anyhow::Result<&str> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("--url {url:?}: only ws:// URLs are supported"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    anyhow::ensure!(!authority.is_empty(), "--url {url:?} names no host");
    Ok(authority)
}

/// The source addresses for `--source-ips count`: none for 0, else 127.0.0.2 onwards, which
/// only reach servers on IPv4 loopback.
fn source_addresses(count: u8, servers: &[SocketAddr]) -> anyhow::Result<Vec<IpAddr>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if let Some(server) = servers
        .iter()
        .find(|server| !(server.ip().is_loopback() && server.is_ipv4()))
    {
        anyhow::bail!(
            "--source-ips binds to 127.0.0.x and needs servers on IPv4 loopback, not {server}"
        );
    }
    anyhow::ensure!(count <= 250, "--source-ips takes at most 250 addresses");
    let first = u32::from(FIRST_SOURCE);
    Ok((0..u32::from(count))
        .map(|i| IpAddr::V4(Ipv4Addr::from(first + i)))
        .collect())
}

/// An HS256 token for `user` of `tenant` (claims `sub`, `tenant`, `exp`, `iat`).
fn mint_token(
    key: &EncodingKey,
    user: &str,
    tenant: &str,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "sub": user,
        "tenant": tenant,
        "iat": now,
        "exp": now + TOKEN_TTL.as_secs(),
    });
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpenError {
    #[error("token: {0}")]
    Token(jsonwebtoken::errors::Error),
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

impl OpenError {
    /// A short label for counting failures of the same kind together.
    pub(super) fn label(&self) -> String {
        let OpenError::Connect(error) = self else {
            return "token".to_owned();
        };
        match error {
            ConnectError::Invalid(_) => "invalid request".to_owned(),
            ConnectError::Unresolved { .. } => "unresolved".to_owned(),
            ConnectError::Tcp { error, .. } => format!("tcp {:?}", error.kind()),
            ConnectError::Refused { status, .. } => format!("http {status}"),
            ConnectError::Handshake(_) => "handshake".to_owned(),
            ConnectError::Closed { code, .. } => format!("closed {code}"),
            ConnectError::Lost(_) => "lost".to_owned(),
            ConnectError::NoWelcome(_) => "no welcome".to_owned(),
            ConnectError::Timeout(_) => "timeout".to_owned(),
        }
    }
}

/// Live counts while many sessions open, for the progress line.
#[derive(Debug, Default)]
pub(super) struct OpenCounts {
    pub(super) opened: AtomicU64,
    pub(super) failed: AtomicU64,
}

/// Opens a session for each of `users` (connection `n` is `users[n]`), `concurrency` at a
/// time. Returns the sessions by connection number (`None` where it failed) and the
/// failures by cause.
pub(super) async fn open_many(
    endpoint: &Arc<Endpoint>,
    users: Arc<[String]>,
    concurrency: usize,
    counts: &Arc<OpenCounts>,
) -> (Vec<Option<Connection>>, Tally) {
    let next = Arc::new(AtomicUsize::new(0));
    let (results_tx, mut results) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..concurrency.clamp(1, users.len().max(1)) {
        let (endpoint, users, next, counts) = (
            Arc::clone(endpoint),
            Arc::clone(&users),
            Arc::clone(&next),
            Arc::clone(counts),
        );
        let results_tx = results_tx.clone();
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(user) = users.get(n) else { break };
                let result = endpoint.open_session(user, n).await;
                let counter = if result.is_ok() {
                    &counts.opened
                } else {
                    &counts.failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if results_tx.send((n, result)).is_err() {
                    break;
                }
            }
        });
    }
    drop(results_tx);
    let mut sessions: Vec<Option<Connection>> = (0..users.len()).map(|_| None).collect();
    let mut failures = Tally::default();
    while let Some((n, result)) = results.recv().await {
        match result {
            Ok(session) => sessions[n] = Some(session),
            Err(error) => failures.add(error.label(), 1),
        }
    }
    (sessions, failures)
}

/// Opens a session for each of `users` (connection `n` is `users[n]`), `concurrency` at a
/// time; all must open, speak the endpoint's protocol, and start at seq 0 (a fresh tenant).
pub(super) async fn open_fresh(
    endpoint: &Arc<Endpoint>,
    users: Arc<[String]>,
    concurrency: usize,
) -> anyhow::Result<Vec<Connection>> {
    let counts = Arc::new(OpenCounts::default());
    let (sessions, failures) = open_many(endpoint, Arc::clone(&users), concurrency, &counts).await;
    anyhow::ensure!(
        failures.total() == 0,
        "{} of {} sessions failed to open: {failures}",
        failures.total(),
        users.len()
    );
    let mut connections = Vec::with_capacity(sessions.len());
    for (session, user) in sessions.into_iter().zip(users.iter()) {
        let session = session.ok_or_else(|| anyhow::anyhow!("{user}'s session did not open"))?;
        let welcome = session.welcome();
        anyhow::ensure!(
            welcome.protocol == endpoint.protocol.number(),
            "the node answered protocol {} to a request for protocol {}",
            welcome.protocol,
            endpoint.protocol.number()
        );
        anyhow::ensure!(
            welcome.last_seq == 0,
            "user {user} of tenant {} starts at seq {}, not 0: use a fresh --tenant",
            endpoint.tenant(),
            welcome.last_seq
        );
        connections.push(session);
    }
    Ok(connections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_comes_from_a_ws_url() {
        assert_eq!(
            authority_of("ws://127.0.0.1:8080/ws").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            authority_of("ws://localhost:80?x=1").unwrap(),
            "localhost:80"
        );
        assert!(authority_of("wss://example.com/ws").is_err());
        assert!(authority_of("ws:///ws").is_err());
    }

    #[test]
    fn source_addresses_start_at_127_0_0_2_and_need_loopback() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let remote: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert!(source_addresses(0, &[local]).unwrap().is_empty());
        let sources = source_addresses(3, &[local]).unwrap();
        assert_eq!(sources.len(), 3);
        assert_eq!(sources[0].to_string(), "127.0.0.2");
        assert_eq!(sources[2].to_string(), "127.0.0.4");
        assert!(source_addresses(1, &[remote]).is_err());
        assert!(source_addresses(1, &[local, remote]).is_err());
    }

    #[tokio::test]
    async fn connections_take_the_nodes_in_turn() {
        let urls = ["ws://127.0.0.1:8080/ws", "ws://127.0.0.1:8081/ws?x=1"].map(String::from);
        let endpoint = Endpoint::resolve(&urls, "t".to_owned(), None, 0, Buffers::Lean)
            .await
            .unwrap();
        let request = |n| endpoint.request_url("u", n).unwrap();
        assert_eq!(request(0), "ws://127.0.0.1:8080/ws?user=u&tenant=t");
        assert_eq!(request(1), "ws://127.0.0.1:8081/ws?user=u&tenant=t");
        assert_eq!(request(2), request(0));
        assert_eq!(endpoint.node(3).address.port(), 8081);
        let endpoint = endpoint.speaking(Protocol::V2);
        assert_eq!(
            endpoint.request_url("u", 0).unwrap(),
            "ws://127.0.0.1:8080/ws?user=u&tenant=t&protocol=2"
        );
        assert!(
            Endpoint::resolve(&[], "t".to_owned(), None, 0, Buffers::Lean)
                .await
                .is_err()
        );
    }

    #[test]
    fn a_minted_token_carries_the_claims_the_server_reads() {
        let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let token = mint_token(&key, "u1", "bench-1").unwrap();
        let secret = jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &secret, &validation)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "u1");
        assert_eq!(claims["tenant"], "bench-1");
        assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());
    }
}
