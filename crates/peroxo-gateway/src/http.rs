//! The HTTP face of a gateway node: the accept loop, the WebSocket upgrade and health probes.
//!
//! Handlers stay tiny. The upgrade handler checks the request (origin, identity, admission)
//! and hands the socket to SessionSupervisor; everything a session does happens in actors.
//! Every refusal is an HTTP status with a JSON body `{"error": ..., "message": ...}`. Query
//! strings (which may carry tokens) are never logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ractor::ActorRef;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::actors::ActorSlot;
use crate::actors::context::GatewayContext;
use crate::actors::session_supervisor::SessionSupervisorMsg;
use crate::admission::{Admission, Refusal, Ticket};
use crate::identity::{Authenticator, Identity};
use crate::rate_limit::KeyRates;
use peroxo_protocol::domain::now_ms;
use peroxo_protocol::{LATEST_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// Bytes read from a socket at a time. Every connection holds this much from the start, so it
/// stays small: a client's frame is a few hundred bytes and fits in one read (a larger one
/// takes several). 512 bytes instead of 4 KiB saves about 3.5 KiB per idle session.
const WS_READ_BUFFER_BYTES: usize = 512;
/// Frames written to a WebSocket gather in its write buffer until this many bytes wait or
/// the writer flushes, so that a batch of frames leaves in one system call. The buffer grows
/// only as far as it is used: an idle connection holds a few hundred bytes of it.
const WS_WRITE_BUFFER_BYTES: usize = 16 * 1_024;
/// How long the accept loop pauses after an accept error (such as running out of files).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct HttpState {
    pub sessions: ActorSlot<SessionSupervisorMsg>,
    pub admission: Arc<Admission>,
    /// The node's state: its authenticator and live settings, and what `/readyz` and
    /// `/metrics` report.
    pub gateway: Arc<GatewayContext>,
    /// The server API keys' request rates.
    pub api_rates: Arc<KeyRates>,
    /// Places for the server API's long polls that wait (`api::events::MAX_WAITING_POLLS`).
    pub api_polls: Arc<tokio::sync::Semaphore>,
}

/// The node's routes, with `api` (the server API's routes) under `/api/v1`.
pub fn router(state: HttpState, api: Router<HttpState>) -> Router {
    let routes = Router::new();
    // Fault injection for the test suites; absent from every normal build.
    #[cfg(feature = "test-hooks")]
    let routes = routes
        .route("/debug/crash/router", axum::routing::post(crash_router))
        .route(
            "/debug/crash/persistence",
            axum::routing::post(crash_persistence),
        )
        .route("/debug/crash/sessions", axum::routing::post(crash_sessions))
        .route(
            "/debug/crash/session_supervisor",
            axum::routing::post(crash_session_supervisor),
        )
        .route("/debug/crash/cluster", axum::routing::post(crash_cluster));
    routes
        .route("/", get(chat_page))
        .route("/peroxo-client.js", get(client_bundle))
        .route("/api/info", get(info))
        .route("/ws", get(upgrade))
        .route("/ws/check", get(check))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .nest("/api/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves `app` on `listener` until `stop` is cancelled. A connection that does not send a
/// complete request within `handshake_timeout` is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    handshake_timeout: Duration,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: pause instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Without it, Nagle's algorithm meets delayed ACKs and small frames wait ~40 ms.
        let _ = stream.set_nodelay(true);
        // The client's address, for `server_api.allowed_ips`.
        let app =
            app.clone()
                .map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
        let connection = http
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
            .with_upgrades();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "http connection ended with an error");
            }
        });
    }
}

/// A JSON error response.
pub fn error_response(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": error, "message": message.into() });
    (status, Json(body)).into_response()
}

async fn upgrade(
    State(state): State<HttpState>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return error_response(
                rejection.status(),
                "websocket_required",
                format!(
                    "/ws takes WebSocket upgrades only: {}",
                    rejection.body_text()
                ),
            );
        }
    };
    let (sessions, identity, ticket, protocol) = match accept(&state, query, &headers).await {
        Ok(accepted) => accepted,
        Err(refused) => return refused.into_response(),
    };
    let max_message = state.gateway.live.load().limits.max_message_bytes;
    upgrade
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_failed_upgrade(|error| tracing::debug!(%error, "websocket upgrade failed"))
        .on_upgrade(move |socket: WebSocket| async move {
            let open = SessionSupervisorMsg::Open {
                socket: Box::new(socket),
                identity,
                ticket,
                protocol,
            };
            if sessions.cast(open).is_err() {
                tracing::warn!("session supervisor unavailable; dropping a new connection");
            }
        })
}

/// Answers what an upgrade with the same query string and headers would get, without
/// upgrading: `200` with who the client would be, or the refusal `/ws` would answer. A browser
/// cannot read the status of a refused upgrade (it sees a close before `welcome`), so it asks
/// here to tell a bad token from a full or unreachable node. The place the check takes in the
/// node's connection counts is given back at once.
async fn check(
    State(state): State<HttpState>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let mut response = match accept(&state, query, &headers).await {
        Ok((_, identity, _ticket, protocol)) => {
            let body = serde_json::json!({
                "ok": true,
                "user": identity.key.user,
                "tenant": identity.key.tenant,
                "protocol": protocol,
                "expires_at": identity.expires_at,
            });
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(refused) => refused.into_response(),
    };
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// Why an upgrade request is refused: an HTTP status with a JSON body.
struct UpgradeRefused {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Ask for a bearer token (`WWW-Authenticate`), on 401 in JWT mode.
    bearer_challenge: bool,
}

impl UpgradeRefused {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            bearer_challenge: false,
        }
    }
}

impl IntoResponse for UpgradeRefused {
    fn into_response(self) -> Response {
        let mut response = error_response(self.status, self.code, self.message);
        if self.bearer_challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Decides an upgrade request: the cheap refusals first (origin, a draining or starting
/// node), so nothing is verified or counted for a request refused anyway; then who the
/// client is, and whether a ban or a revocation refuses it (from memory, never storage);
/// then its place in the node's connection counts.
async fn accept(
    state: &HttpState,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    headers: &HeaderMap,
) -> Result<(ActorRef<SessionSupervisorMsg>, Identity, Ticket, u32), UpgradeRefused> {
    check_origin(state, headers)?;
    let sessions = open_node(state)?;
    let Ok(Query(query)) = query else {
        return Err(UpgradeRefused::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "malformed query string",
        ));
    };
    let protocol = protocol_version(&query)?;
    let identity = authenticate(state, &query, headers).await?;
    check_restrictions(state, &identity)?;
    let ticket = admit(state, &identity)?;
    Ok((sessions, identity, ticket, protocol))
}

/// The protocol version the client asks for with `?protocol=` (1 when it names none), or
/// 400 for one this node does not speak.
fn protocol_version(query: &HashMap<String, String>) -> Result<u32, UpgradeRefused> {
    let Some(asked) = query.get("protocol") else {
        return Ok(PROTOCOL_VERSION);
    };
    asked
        .parse::<u32>()
        .ok()
        .filter(|v| (PROTOCOL_VERSION..=LATEST_PROTOCOL_VERSION).contains(v))
        .ok_or_else(|| {
            UpgradeRefused::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "unsupported protocol version; this node speaks {PROTOCOL_VERSION} to \
                     {LATEST_PROTOCOL_VERSION} (?protocol=)"
                ),
            )
        })
}

/// Refuses an `Origin` not in `http.allowed_origins` (when the list is not empty) with 403.
fn check_origin(state: &HttpState, headers: &HeaderMap) -> Result<(), UpgradeRefused> {
    let settings = state.gateway.live.load();
    if let Some(origin) = headers.get(header::ORIGIN)
        && !settings.allowed_origins.is_empty()
        && !settings
            .allowed_origins
            .iter()
            .any(|allowed| allowed.as_bytes() == origin.as_bytes())
    {
        return Err(UpgradeRefused::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "this origin may not open WebSockets here (http.allowed_origins)",
        ));
    }
    Ok(())
}

/// The node's SessionSupervisor, or 503 while the node drains or is still starting.
fn open_node(state: &HttpState) -> Result<ActorRef<SessionSupervisorMsg>, UpgradeRefused> {
    if state.gateway.draining.load(Ordering::Relaxed) {
        return Err(UpgradeRefused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this node is shutting down; connect to another",
        ));
    }
    state.sessions.get().ok_or_else(|| {
        UpgradeRefused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the node is starting",
        )
    })
}

/// Who the client is, or 401/403 (503 while no key set is loaded) with the reason.
async fn authenticate(
    state: &HttpState,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Identity, UpgradeRefused> {
    // Owned: verifying may wait for a fetch of the key set, and a reload may replace the
    // authenticator meanwhile.
    let auth = state.gateway.auth.load_full();
    auth.authenticate(query, headers)
        .await
        .map_err(|error| UpgradeRefused {
            status: error.status(),
            code: error.code(),
            message: error.to_string(),
            bearer_challenge: error.status() == StatusCode::UNAUTHORIZED
                && matches!(auth.as_ref(), Authenticator::Jwt(_)),
        })
}

/// 403 for a banned user, 401 for a revoked token (see [`crate::restrictions`]).
fn check_restrictions(state: &HttpState, identity: &Identity) -> Result<(), UpgradeRefused> {
    state
        .gateway
        .restrictions
        .check(identity, now_ms())
        .map_err(|refused| UpgradeRefused {
            status: refused.status(),
            code: refused.code(),
            message: refused.message(),
            bearer_challenge: refused.status() == StatusCode::UNAUTHORIZED,
        })
}

/// A place in the node's connection counts, or 429 (this user) / 503 (this node) when full.
fn admit(state: &HttpState, identity: &Identity) -> Result<Ticket, UpgradeRefused> {
    state.admission.admit(&identity.key).map_err(|refusal| {
        let (status, code) = match refusal {
            Refusal::UserFull(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_sessions"),
            Refusal::NodeFull(_) => (StatusCode::SERVICE_UNAVAILABLE, "node_full"),
        };
        UpgradeRefused::new(status, code, refusal.to_string())
    })
}

/// The self-contained web chat page (HTML, CSS and JS in one file, built into the binary).
const CHAT_PAGE: &str = include_str!("../../../web/chat.html");

async fn chat_page() -> Response {
    built_in_file("text/html; charset=utf-8", CHAT_PAGE)
}

/// The TypeScript SDK (`clients/js`) bundled as one ES module, which the chat page imports.
/// It is generated by `npm run build:web` and committed, so building the server needs no Node.js.
const CLIENT_BUNDLE: &str = include_str!("../../../web/peroxo-client.js");

async fn client_bundle() -> Response {
    built_in_file("text/javascript; charset=utf-8", CLIENT_BUNDLE)
}

/// A file built into the binary. `no-cache`: a browser asks again (and gets the page and the
/// bundle of the same build) whenever the server may have been upgraded.
fn built_in_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// What a client needs to know before it connects.
async fn info(State(state): State<HttpState>) -> Response {
    let auth_mode = match state.gateway.auth.load().as_ref() {
        Authenticator::Dev => "dev",
        Authenticator::Jwt(_) => "jwt",
    };
    let settings = state.gateway.live.load();
    let (limits, groups) = (&settings.limits, &settings.groups);
    Json(serde_json::json!({
        "name": "peroxo",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": PROTOCOL_VERSION,
        "protocols": (PROTOCOL_VERSION..=LATEST_PROTOCOL_VERSION).collect::<Vec<_>>(),
        "auth_mode": auth_mode,
        "limits": {
            "max_text_bytes": limits.max_text_bytes,
            "max_message_bytes": limits.max_message_bytes,
            "rate_per_sec": limits.rate_per_sec,
            "rate_burst": limits.rate_burst,
            "max_watched_users": limits.max_watched_users,
            "max_history_limit": peroxo_protocol::MAX_HISTORY_LIMIT,
            "max_sync_limit": peroxo_protocol::MAX_SYNC_LIMIT,
            "max_online_users_limit": peroxo_protocol::MAX_ONLINE_USERS_LIMIT,
        },
        "groups": {
            "max_members": groups.max_members,
            "max_groups_per_user": groups.max_groups_per_user,
            "max_title_bytes": groups.max_title_bytes,
            "live_receipts_max_members": groups.live_receipts_max_members,
        },
        "messages": {
            "edit_window_secs": settings.messages.edit_window.as_secs(),
            "max_reactions_per_message": settings.messages.max_reactions_per_message,
            "max_reactions_per_user": settings.messages.max_reactions_per_user,
        },
    }))
    .into_response()
}

async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// 200 while the node can serve: storage reachable and not shutting down; otherwise 503
/// naming what is degraded.
async fn readyz(State(state): State<HttpState>) -> Response {
    let storage_up = state.gateway.storage.is_up();
    let draining = state.gateway.draining.load(Ordering::Relaxed);
    let body = serde_json::json!({
        "status": if storage_up && !draining { "ready" } else { "degraded" },
        "storage": if storage_up { "reachable" } else { "unreachable" },
        "accepting_connections": !draining,
    });
    let status = if storage_up && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition of the node's metrics.
async fn prometheus(State(state): State<HttpState>) -> Response {
    let metrics = &state.gateway.metrics;
    metrics
        .connections
        .set(state.admission.connections() as f64);
    metrics
        .outbox_pending
        .set(state.gateway.outbox.pending() as f64);
    metrics
        .outbox_pending_peak
        .set(state.gateway.outbox.peak() as f64);
    metrics.storage_up.set(if state.gateway.storage.is_up() {
        1.0
    } else {
        0.0
    });
    if let Some(stats) = state.gateway.auth.load().key_stats() {
        metrics.key_stats(stats);
    }
    if let Some(retention) = &state.gateway.retention {
        metrics
            .retention_deleted
            .absolute(retention.deleted_total());
        metrics
            .retention_last_pass
            .set(retention.last_pass_ms() as f64 / 1000.0);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; try /ws or /healthz",
    )
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "only GET is served here",
    )
}

#[cfg(feature = "test-hooks")]
async fn crash_router(State(state): State<HttpState>) -> Response {
    let sent = state
        .gateway
        .router
        .cast(crate::actors::router::RouterMsg::Crash)
        .is_ok();
    Json(serde_json::json!({ "crashed": u32::from(sent) })).into_response()
}

#[cfg(feature = "test-hooks")]
async fn crash_persistence(State(state): State<HttpState>) -> Response {
    let sent = state
        .gateway
        .persistence
        .cast(crate::actors::persistence::PersistenceMsg::Crash)
        .is_ok();
    Json(serde_json::json!({ "crashed": u32::from(sent) })).into_response()
}

#[cfg(feature = "test-hooks")]
async fn crash_session_supervisor(State(state): State<HttpState>) -> Response {
    let sent = state.sessions.cast(SessionSupervisorMsg::Crash).is_ok();
    Json(serde_json::json!({ "crashed": u32::from(sent) })).into_response()
}

/// Crashes the Cluster actor; `"crashed": 0` on a node without a cluster.
#[cfg(feature = "test-hooks")]
async fn crash_cluster(State(state): State<HttpState>) -> Response {
    let sent = state
        .gateway
        .cluster
        .as_ref()
        .is_some_and(|c| c.cast(crate::actors::cluster::ClusterMsg::Crash).is_ok());
    Json(serde_json::json!({ "crashed": u32::from(sent) })).into_response()
}

/// Crashes the session actors of `?tenant=&user=`.
#[cfg(feature = "test-hooks")]
async fn crash_sessions(
    State(state): State<HttpState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (Some(user), Some(sessions)) = (query.get("user"), state.sessions.get()) else {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", "?user= is required");
    };
    let tenant = query
        .get("tenant")
        .map_or(peroxo_protocol::domain::DEFAULT_TENANT, String::as_str);
    let key = peroxo_protocol::domain::UserKey::new(tenant, user.as_str());
    let crashed = ractor::call_t!(
        sessions,
        |reply| SessionSupervisorMsg::CrashSessionsOf(key, reply),
        5_000
    )
    .unwrap_or(0);
    Json(serde_json::json!({ "crashed": crashed })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a static body");
        String::from_utf8(bytes.to_vec()).expect("UTF-8")
    }

    #[tokio::test]
    async fn the_client_bundle_is_served_as_javascript_with_the_page_s_caching() {
        let page = chat_page().await;
        let bundle = client_bundle().await;
        assert_eq!(bundle.status(), StatusCode::OK);
        assert_eq!(
            bundle.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            bundle.headers()[header::CACHE_CONTROL],
            page.headers()[header::CACHE_CONTROL]
        );
        assert!(
            CHAT_PAGE.contains("from './peroxo-client.js'"),
            "the page imports the bundle from the route that serves it"
        );
        let code = body_of(bundle).await;
        assert!(code.contains("export {"), "an ES module");
        assert!(code.contains("connect"), "the SDK's entry point");
    }
}
