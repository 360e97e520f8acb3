//! One WebSocket connection to a gateway, with no policy: open it (TCP_NODELAY, optional extra
//! headers such as `Authorization: Bearer`, an optional local source address, WebSocket buffer
//! settings), wait for `welcome`, send typed commands or raw text, receive typed server frames
//! or the server's close, close it. A caller that runs its own reader and writer tasks (the
//! load generator) takes the socket with [`Connection::into_parts`] once `welcome` has come.
//!
//! What to do when a connection ends is the [`Client`](crate::Client)'s business; this module
//! only reports how it ended ([`Disconnect`]).

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

/// How a connection ended, or why it could not be opened.
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
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self, Disconnect> {
        match tokio::time::timeout(options.timeout, Self::open(url, options)).await {
            Ok(result) => result,
            Err(_) => Err(Disconnect::Unreachable(format!(
                "no welcome within {:?}",
                options.timeout
            ))),
        }
    }

    async fn open(url: &str, options: &ConnectOptions) -> Result<Self, Disconnect> {
        let mut request = url
            .into_client_request()
            .map_err(|e| Disconnect::Unreachable(format!("bad URL {url}: {e}")))?;
        for (name, value) in &options.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| Disconnect::Unreachable(format!("bad header name {name}: {e}")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|e| Disconnect::Unreachable(format!("bad header value: {e}")))?;
            request.headers_mut().insert(name, value);
        }
        let stream = connect_tcp(request.uri(), options.local_address).await?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            request,
            MaybeTlsStream::Plain(stream),
            Some(options.websocket),
        )
        .await
        .map_err(refusal)?;
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
        match connection.recv().await? {
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
            other => Err(Disconnect::Lost(format!(
                "expected welcome, received {other:?}"
            ))),
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

    /// Closes the connection normally (1000), waiting at most `timeout` for the server.
    pub async fn close(mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async {
            let _ = self.ws.close(None).await;
            // Read until the server's answer, so the close completes cleanly.
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Connects a TCP socket (TCP_NODELAY) to the host of a `ws://` URL, bound to `local_address`
/// when there is one.
async fn connect_tcp(uri: &Uri, local_address: Option<IpAddr>) -> Result<TcpStream, Disconnect> {
    if uri.scheme_str() != Some("ws") {
        return Err(Disconnect::Unreachable(format!(
            "{uri}: only ws:// URLs are supported"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| Disconnect::Unreachable(format!("{uri} names no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let server = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Disconnect::Unreachable(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| Disconnect::Unreachable(format!("{host} resolves to no address")))?;
    let tcp = |e: std::io::Error| Disconnect::Unreachable(format!("tcp connect to {server}: {e}"));
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
    Ok(stream)
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

/// Turns a failed handshake into a [`Disconnect`], keeping the HTTP status and error code.
fn refusal(error: tungstenite::Error) -> Disconnect {
    match error {
        tungstenite::Error::Http(response) => {
            let error = response
                .body()
                .as_deref()
                .and_then(|body| std::str::from_utf8(body).ok())
                .and_then(error_code_of);
            Disconnect::Refused {
                status: response.status().as_u16(),
                error,
            }
        }
        other => Disconnect::Unreachable(other.to_string()),
    }
}

/// The `error` of a refusal's JSON body `{"error": "...", "message": "..."}`.
fn error_code_of(body: &str) -> Option<String> {
    let body: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(body.get("error")?.as_str()?.to_owned())
}

#[cfg(test)]
mod tests {
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

    /// Accepts one WebSocket on `listener`, sends `welcome`, and returns the client's address.
    async fn serve_welcome(listener: tokio::net::TcpListener) -> SocketAddr {
        let (stream, peer) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let welcome = ServerFrame::Welcome {
            session_id: "s1".into(),
            user: "alice".into(),
            tenant: "t".into(),
            last_seq: 7,
            protocol: peroxo_protocol::PROTOCOL_VERSION,
        };
        ws.send(Message::text(welcome.encode())).await.unwrap();
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
    async fn only_ws_urls_are_opened() {
        let options = ConnectOptions::default();
        let error = Connection::connect("wss://127.0.0.1:1/ws", &options)
            .await
            .unwrap_err();
        assert!(matches!(error, Disconnect::Unreachable(ref what) if what.contains("ws://")));
    }
}
