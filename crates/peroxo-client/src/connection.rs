//! One WebSocket connection to a gateway, with no policy: open it (TCP_NODELAY, optional extra
//! headers such as `Authorization: Bearer`, an optional local source address, WebSocket buffer
//! settings), wait for `welcome`, send typed commands or raw text, receive typed server frames
//! or the server's close, close it. A caller that runs its own reader and writer tasks (the
//! load generator) takes the socket with [`Connection::into_parts`] once `welcome` has come.
//!
//! What to do when a connection ends is the [`Client`](crate::Client)'s business; this module
//! only reports why one could not be opened ([`ConnectError`], precise enough for a load
//! generator to count failures by cause) and how an open one ended ([`Disconnect`], the
//! categories the client's reconnect policy chooses by).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use peroxo_protocol::{Command, ServerFrame};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The WebSocket of an open connection, as [`Connection::into_parts`] hands it over.
pub type WebSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the server said in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub session_id: String,
    pub user: String,
    pub tenant: String,
    /// The user's current (highest) seq.
    pub last_seq: u64,
    pub protocol: u32,
}

/// How a connection ended, or (from a [`ConnectError`]) why it could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Disconnect {
    /// No connection: TCP refused or reset, the handshake failed, or it timed out.
    #[error("node unreachable: {0}")]
    Unreachable(String),
    /// The node answered the upgrade with an HTTP error (`error` is the body's code, such as
    /// `unauthorized`, `too_many_sessions` or `draining`).
    #[error("upgrade refused with HTTP {status} {error:?}")]
    Refused { status: u16, error: Option<String> },
    /// The server closed the WebSocket with this code and reason.
    #[error("closed by the server with {code} ({reason})")]
    Closed { code: u16, reason: String },
    /// The connection dropped without a close frame, or stayed silent too long.
    #[error("connection lost: {0}")]
    Lost(String),
}

/// Why [`Connection::connect`] could not open a connection, step by step: the request, TCP,
/// the upgrade, then `welcome`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL or a header cannot make an upgrade request (not `ws://`, no host, a header
    /// that is not valid HTTP).
    #[error("{0}")]
    Invalid(String),
    /// The URL's host did not resolve to an address.
    #[error("cannot resolve {host}: {reason}")]
    Unresolved { host: String, reason: String },
    /// TCP failed: connecting (refused, unreachable, no local port left) or during the
    /// upgrade (reset).
    #[error("tcp connect to {server}: {error}")]
    Tcp {
        server: SocketAddr,
        error: std::io::Error,
    },
    /// The node answered the upgrade with an HTTP error (`error` is the body's code, such as
    /// `unauthorized`, `too_many_sessions` or `draining`).
    #[error("upgrade refused with HTTP {status} {error:?}")]
    Refused { status: u16, error: Option<String> },
    /// The upgrade failed otherwise (an answer that is not a WebSocket upgrade).
    #[error("websocket handshake: {0}")]
    Handshake(String),
    /// The server closed the WebSocket before `welcome`.
    #[error("closed by the server with {code} ({reason}) before welcome")]
    Closed { code: u16, reason: String },
    /// The connection broke or ended without a close frame before `welcome`.
    #[error("connection lost before welcome: {0}")]
    Lost(String),
    /// The first frame was not `welcome`.
    #[error("expected welcome, received {0}")]
    NoWelcome(String),
    /// No `welcome` within [`ConnectOptions::timeout`].
    #[error("no welcome within {0:?}")]
    Timeout(Duration),
}

impl From<ConnectError> for Disconnect {
    /// The category the client's reconnect policy chooses by: a node that could not be
    /// reached or upgraded is `Unreachable`; after the upgrade, a close is `Closed` and
    /// anything else `Lost`.
    fn from(error: ConnectError) -> Self {
        match error {
            ConnectError::Refused { status, error } => Disconnect::Refused { status, error },
            ConnectError::Closed { code, reason } => Disconnect::Closed { code, reason },
            ConnectError::Lost(reason) => Disconnect::Lost(reason),
            ConnectError::NoWelcome(_) => Disconnect::Lost(error.to_string()),
            ConnectError::Invalid(_)
            | ConnectError::Unresolved { .. }
            | ConnectError::Tcp { .. }
            | ConnectError::Handshake(_)
            | ConnectError::Timeout(_) => Disconnect::Unreachable(error.to_string()),
        }
    }
}

/// How to open a connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Extra request headers, such as `("Authorization", "Bearer <jwt>")`.
    pub headers: Vec<(String, String)>,
    /// The longest time from the TCP connect to `welcome`.
    pub timeout: Duration,
    /// The local address to bind the socket to before connecting; `None` lets the kernel
    /// choose. One source address has about 28,000 ephemeral ports, so a load generator that
    /// opens more connections to one server spreads them over several (127.0.0.x on loopback).
    pub local_address: Option<IpAddr>,
    /// The WebSocket's buffer sizes and limits: small buffers suit many mostly idle
    /// connections, the defaults suit a busy one.
    pub websocket: WebSocketConfig,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            local_address: None,
            websocket: WebSocketConfig::default(),
        }
    }
}

/// What [`Connection::recv`] returns.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "a frame is moved once, from the reader to its consumer; boxing it would cost an \
              allocation for every frame received"
)]
pub enum Incoming {
    /// A server frame.
    Frame(ServerFrame<'static>),
    /// A text frame that is not a server frame of protocol v1 (a protocol violation).
    Undecodable { text: String, error: String },
}

/// An open WebSocket connection that has received its `welcome`.
pub struct Connection {
    ws: WebSocket,
    welcome: Welcome,
    /// When anything (a frame, a ping, a pong) last came from the server.
    last_received: tokio::time::Instant,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("welcome", &self.welcome)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens a WebSocket to `url` (`ws://host:port/ws?...`) and waits for `welcome`.
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self, ConnectError> {
        tokio::time::timeout(options.timeout, Self::open(url, options))
            .await
            .unwrap_or(Err(ConnectError::Timeout(options.timeout)))
    }

    async fn open(url: &str, options: &ConnectOptions) -> Result<Self, ConnectError> {
        let mut request = url
            .into_client_request()
            .map_err(|e| ConnectError::Invalid(format!("bad URL {url}: {e}")))?;
        for (name, value) in &options.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| ConnectError::Invalid(format!("bad header name {name}: {e}")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|e| ConnectError::Invalid(format!("bad header value: {e}")))?;
            request.headers_mut().insert(name, value);
        }
        let (stream, server) = connect_tcp(request.uri(), options.local_address).await?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            request,
            MaybeTlsStream::Plain(stream),
            Some(options.websocket),
        )
        .await
        .map_err(|error| refusal(error, server))?;
        let mut connection = Self {
            ws,
            last_received: tokio::time::Instant::now(),
            welcome: Welcome {
                session_id: String::new(),
                user: String::new(),
                tenant: String::new(),
                last_seq: 0,
                protocol: 0,
            },
        };
        let first = connection.recv().await.map_err(|ended| match ended {
            Disconnect::Closed { code, reason } => ConnectError::Closed { code, reason },
            Disconnect::Lost(reason) => ConnectError::Lost(reason),
            other => ConnectError::Lost(other.to_string()),
        })?;
        match first {
            Incoming::Frame(ServerFrame::Welcome {
                session_id,
                user,
                tenant,
                last_seq,
                protocol,
            }) => {
                connection.welcome = Welcome {
                    session_id,
                    user: user.into_owned(),
                    tenant: tenant.into_owned(),
                    last_seq,
                    protocol,
                };
                Ok(connection)
            }
            other => Err(ConnectError::NoWelcome(format!("{other:?}"))),
        }
    }

    /// What the server said in `welcome`.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The WebSocket and the `welcome` it began with, for a caller that splits the socket
    /// into a sink and a stream owned by its own writer and reader tasks (and so decodes and
    /// encodes frames itself).
    pub fn into_parts(self) -> (WebSocket, Welcome) {
        (self.ws, self.welcome)
    }

    /// When anything last came from the server, pings included: a connection silent for
    /// longer than the server's ping interval is dead.
    pub fn last_received(&self) -> tokio::time::Instant {
        self.last_received
    }

    /// Sends one command.
    pub async fn send(&mut self, command: &Command) -> Result<(), Disconnect> {
        self.send_text(command.encode()).await
    }

    /// Sends one text frame as it is (for frames the protocol types cannot express).
    pub async fn send_text(&mut self, text: String) -> Result<(), Disconnect> {
        self.ws.send(Message::text(text)).await.map_err(lost)
    }

    /// Queues one command without flushing; [`Connection::flush`] sends what is queued.
    pub async fn feed(&mut self, command: &Command) -> Result<(), Disconnect> {
        self.ws
            .feed(Message::text(command.encode()))
            .await
            .map_err(lost)
    }

    /// Sends what [`Connection::feed`] queued.
    pub async fn flush(&mut self) -> Result<(), Disconnect> {
        self.ws.flush().await.map_err(lost)
    }

    /// Waits for the next server frame. Answers the server's pings on the way. Returns
    /// [`Disconnect::Closed`] when the server closes the connection, and another
    /// [`Disconnect`] when it drops.
    pub async fn recv(&mut self) -> Result<Incoming, Disconnect> {
        loop {
            let message = self.ws.next().await;
            self.last_received = tokio::time::Instant::now();
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Ok(match ServerFrame::decode(&text) {
                        Ok(frame) => Incoming::Frame(frame.into_owned()),
                        Err(error) => Incoming::Undecodable {
                            text: text.to_string(),
                            error: error.to_string(),
                        },
                    });
                }
                Some(Ok(Message::Close(frame))) => return Err(closed(frame)),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(lost(error)),
                None => return Err(Disconnect::Lost("connection ended".to_owned())),
            }
        }
    }

    /// Closes the connection normally (1000) and reads until the server's answer ends it, for
    /// at most `timeout`. Returns whether the server completed the close handshake in time.
    pub async fn close(mut self, timeout: Duration) -> bool {
        let handshake = async {
            if self.ws.close(None).await.is_err() {
                return false;
            }
            while let Some(message) = self.ws.next().await {
                if message.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, handshake)
            .await
            .unwrap_or(false)
    }
}

/// Connects a TCP socket (TCP_NODELAY) to the host of a `ws://` URL, bound to `local_address`
/// when there is one. Returns it with the server's address.
async fn connect_tcp(
    uri: &Uri,
    local_address: Option<IpAddr>,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    if uri.scheme_str() != Some("ws") {
        return Err(ConnectError::Invalid(format!(
            "{uri}: only ws:// URLs are supported"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| ConnectError::Invalid(format!("{uri} names no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let unresolved = |reason: String| ConnectError::Unresolved {
        host: host.to_owned(),
        reason,
    };
    let server = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| unresolved(e.to_string()))?
        .next()
        .ok_or_else(|| unresolved("no address".to_owned()))?;
    let tcp = |error| ConnectError::Tcp { server, error };
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(tcp)?;
    if let Some(local) = local_address {
        socket.bind(SocketAddr::new(local, 0)).map_err(tcp)?;
    }
    let stream = socket.connect(server).await.map_err(tcp)?;
    // Without it small frames wait for delayed ACKs (Nagle's algorithm).
    stream.set_nodelay(true).map_err(tcp)?;
    Ok((stream, server))
}

fn closed(frame: Option<CloseFrame>) -> Disconnect {
    match frame {
        Some(frame) => Disconnect::Closed {
            code: u16::from(frame.code),
            reason: frame.reason.to_string(),
        },
        None => Disconnect::Closed {
            code: u16::from(CloseCode::Status),
            reason: String::new(),
        },
    }
}

fn lost(error: tungstenite::Error) -> Disconnect {
    Disconnect::Lost(error.to_string())
}

/// Turns a failed upgrade with `server` into a [`ConnectError`], keeping the HTTP status and
/// error code of a refusal, and the I/O error of a broken socket.
fn refusal(error: tungstenite::Error, server: SocketAddr) -> ConnectError {
    match error {
        tungstenite::Error::Http(response) => {
            let error = response
                .body()
                .as_deref()
                .and_then(|body| std::str::from_utf8(body).ok())
                .and_then(error_code_of);
            ConnectError::Refused {
                status: response.status().as_u16(),
                error,
            }
        }
        tungstenite::Error::Io(error) => ConnectError::Tcp { server, error },
        other => ConnectError::Handshake(other.to_string()),
    }
}

/// The `error` of a refusal's JSON body `{"error": "...", "message": "..."}`.
fn error_code_of(body: &str) -> Option<String> {
    let body: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(body.get("error")?.as_str()?.to_owned())
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::http::StatusCode;

    use super::*;

    #[test]
    fn a_refusal_keeps_its_error_code() {
        assert_eq!(
            error_code_of(r#"{"error": "draining", "message": "later"}"#).as_deref(),
            Some("draining")
        );
        assert_eq!(
            error_code_of(r#"{"message":"x","error":"unauthorized"}"#).as_deref(),
            Some("unauthorized")
        );
        assert_eq!(error_code_of("not json"), None);
    }

    /// The `welcome` of a session of alice whose seq is `last_seq`.
    fn welcome(last_seq: u64) -> Message {
        let welcome = ServerFrame::Welcome {
            session_id: "s1".into(),
            user: "alice".into(),
            tenant: "t".into(),
            last_seq,
            protocol: peroxo_protocol::PROTOCOL_VERSION,
        };
        Message::text(welcome.encode())
    }

    /// Accepts one WebSocket on `listener`, sends `welcome`, and returns the client's address.
    async fn serve_welcome(listener: tokio::net::TcpListener) -> SocketAddr {
        let (stream, peer) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        ws.send(welcome(7)).await.unwrap();
        // Keep the socket open until the client has read the welcome and gone.
        while let Some(Ok(_)) = ws.next().await {}
        peer
    }

    #[tokio::test]
    async fn a_connection_binds_the_local_address_it_is_given_and_hands_over_its_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws?user=alice", listener.local_addr().unwrap());
        let server = tokio::spawn(serve_welcome(listener));
        let options = ConnectOptions {
            local_address: Some("127.0.0.3".parse().unwrap()),
            websocket: WebSocketConfig::default()
                .read_buffer_size(4_096)
                .write_buffer_size(0),
            ..ConnectOptions::default()
        };
        let connection = Connection::connect(&url, &options).await.unwrap();
        let (mut ws, welcome) = connection.into_parts();
        assert_eq!(welcome.last_seq, 7);
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        let peer = server.await.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.3");
    }

    #[tokio::test]
    async fn a_close_says_whether_the_server_completed_the_handshake() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        tokio::spawn(serve_welcome(listener));
        let connection = Connection::connect(&url, &ConnectOptions::default())
            .await
            .unwrap();
        assert!(connection.close(Duration::from_secs(5)).await);

        let deaf = server_of_one(|stream| async move {
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            ws.send(welcome(0)).await.unwrap();
            // Never reads again, so never answers the close.
            tokio::time::sleep(Duration::from_secs(10)).await;
        })
        .await;
        let connection = Connection::connect(&deaf, &ConnectOptions::default())
            .await
            .unwrap();
        assert!(!connection.close(Duration::from_millis(200)).await);
    }

    /// The URL of a server that answers one connection with `serve`.
    async fn server_of_one<F, Fut>(serve: F) -> String
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(stream).await;
        });
        url
    }

    /// How connecting to `url` fails, with a short timeout.
    async fn failure(url: &str) -> ConnectError {
        let options = ConnectOptions {
            timeout: Duration::from_millis(300),
            ..ConnectOptions::default()
        };
        Connection::connect(url, &options).await.unwrap_err()
    }

    /// Keeps a server's socket open longer than any test here waits for it.
    async fn hold(stream: TcpStream) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(stream);
    }

    #[tokio::test]
    async fn a_failed_connect_says_which_step_failed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nobody = format!("ws://{}/ws", listener.local_addr().unwrap());
        drop(listener);
        let error = failure(&nobody).await;
        assert!(
            matches!(error, ConnectError::Tcp { ref error, .. }
                if error.kind() == std::io::ErrorKind::ConnectionRefused),
            "{error}"
        );

        let refusing = server_of_one(|stream| async move {
            // The shape of tungstenite's callback, large error and all.
            #[allow(clippy::result_large_err)]
            let refuse = |_: &Request, _: Response| {
                let mut response = ErrorResponse::new(Some(r#"{"error":"draining"}"#.to_owned()));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                Err(response)
            };
            let _ = tokio_tungstenite::accept_hdr_async(stream, refuse).await;
        })
        .await;
        let error = failure(&refusing).await;
        assert!(
            matches!(error, ConnectError::Refused { status: 503, error: Some(ref code) }
                if code == "draining"),
            "{error}"
        );

        let not_websocket = server_of_one(|stream| async move {
            stream.writable().await.unwrap();
            stream.try_write(b"hello\r\n\r\n").unwrap();
            hold(stream).await;
        })
        .await;
        let error = failure(&not_websocket).await;
        assert!(matches!(error, ConnectError::Handshake(_)), "{error}");

        let closing = server_of_one(|stream| async move {
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let close = CloseFrame {
                code: CloseCode::Policy,
                reason: "go away".into(),
            };
            let _ = ws.close(Some(close)).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        let error = failure(&closing).await;
        assert!(
            matches!(error, ConnectError::Closed { code: 1008, .. }),
            "{error}"
        );

        let talking = server_of_one(|stream| async move {
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let pong = ServerFrame::Pong {
                req_id: None,
                ts: 1,
            };
            ws.send(Message::text(pong.encode())).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        let error = failure(&talking).await;
        assert!(matches!(error, ConnectError::NoWelcome(_)), "{error}");

        let silent = server_of_one(hold).await;
        let error = failure(&silent).await;
        assert!(matches!(error, ConnectError::Timeout(_)), "{error}");
    }

    #[test]
    fn a_connect_failure_becomes_the_disconnect_the_reconnect_policy_expects() {
        let refused = ConnectError::Refused {
            status: 401,
            error: None,
        };
        assert!(matches!(
            Disconnect::from(refused),
            Disconnect::Refused { status: 401, .. }
        ));
        let closed = ConnectError::Closed {
            code: 1013,
            reason: String::new(),
        };
        assert!(matches!(
            Disconnect::from(closed),
            Disconnect::Closed { code: 1013, .. }
        ));
        let lost = ConnectError::Lost("reset".to_owned());
        assert_eq!(Disconnect::from(lost), Disconnect::Lost("reset".to_owned()));
        let no_welcome = ConnectError::NoWelcome("Pong".to_owned());
        assert!(matches!(Disconnect::from(no_welcome), Disconnect::Lost(_)));
        let timeout = ConnectError::Timeout(Duration::from_secs(1));
        assert!(matches!(
            Disconnect::from(timeout),
            Disconnect::Unreachable(_)
        ));
    }

    #[tokio::test]
    async fn only_ws_urls_are_opened() {
        let options = ConnectOptions::default();
        let error = Connection::connect("wss://127.0.0.1:1/ws", &options)
            .await
            .unwrap_err();
        assert!(matches!(error, ConnectError::Invalid(ref what) if what.contains("ws://")));
        assert!(matches!(
            Disconnect::from(error),
            Disconnect::Unreachable(_)
        ));
    }
}
