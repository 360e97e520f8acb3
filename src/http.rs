//! The HTTP face of a gateway node: the WebSocket upgrade and health probes.
//!
//! Handlers stay tiny. The upgrade handler authenticates the request and hands the socket to
//! SessionSupervisor; everything a session does happens in actors. Every refusal is an HTTP
//! status with a JSON body `{"error": ..., "message": ...}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::actors::ActorSlot;
use crate::actors::session_supervisor::SessionSupervisorMsg;
use crate::config::LimitsConfig;
use crate::identity::Authenticator;

/// Bytes read from a socket at a time. Small, so idle connections stay cheap.
const WS_READ_BUFFER_BYTES: usize = 4_096;

#[derive(Clone)]
pub struct HttpState {
    pub sessions: ActorSlot<SessionSupervisorMsg>,
    pub auth: Arc<Authenticator>,
    pub limits: LimitsConfig,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
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
    let Ok(Query(query)) = query else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "malformed query string",
        );
    };
    let key = match state.auth.authenticate(&query, &headers) {
        Ok(key) => key,
        Err(error) => return error_response(error.status(), error.code(), error.to_string()),
    };
    let Some(sessions) = state.sessions.get() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the node is starting",
        );
    };
    let max_message = state.limits.max_message_bytes;
    upgrade
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_failed_upgrade(|error| tracing::debug!(%error, "websocket upgrade failed"))
        .on_upgrade(move |socket: WebSocket| async move {
            if sessions
                .cast(SessionSupervisorMsg::Open {
                    socket: Box::new(socket),
                    key,
                })
                .is_err()
            {
                tracing::warn!("session supervisor unavailable; dropping a new connection");
            }
        })
}

async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
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
