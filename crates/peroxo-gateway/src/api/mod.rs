//! The server API: the door of an application's backend into PerOXO, HTTP/JSON under
//! `/api/v1/` (docs/API.md; the OpenAPI document is `docs/openapi.json`, served at
//! `/api/v1/openapi.json`).
//!
//! Handlers stay as thin as the WebSocket's: every write goes the way a client's does
//! (messages through the outbox and Persistence, so an answer means committed; group changes
//! and read marks through [`OnBehalf`], whose events reach live sessions after the commit).
//!
//! # Layout
//! - This file: the router, [`Caller`] (the key, the client's address, the key's rate),
//!   [`ApiJson`] (bodies within `server_api.max_body_bytes`) and [`ApiError`].
//! - `messages`: sending, alone or in batches.
//! - `groups`: creating and changing groups.
//! - `events`: the event feed, with long polls.
//! - `users`: what a user sees (conversations, history, sync), read marks, presence, and
//!   disconnecting a user.
//! - `moderation`: banning a user until a time, and revoking a user's tokens.

mod events;
pub(crate) use events::MAX_WAITING_POLLS;
mod groups;
mod messages;
mod moderation;
mod users;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::actors::context::GatewayContext;
use crate::actors::conversation_commands::OnBehalf;
use crate::http::{HttpState, error_response};
use crate::rate_limit::Verdict;
use peroxo_config::{API_KEY_PREFIX, MAX_API_BODY_BYTES};
use peroxo_protocol::domain::{UserKey, validate_id};
use peroxo_protocol::{ErrorCode, ProtocolError};
use peroxo_storage::grpc::{CallError, StorageClient};

/// The OpenAPI 3 document of this API, kept in the repository and tested against the routes.
pub const OPENAPI_DOCUMENT: &str = include_str!("../../../../docs/openapi.json");

/// The routes of `/api/v1/`, by path and method, as [`router`] serves them. The OpenAPI
/// document must list exactly these (a test holds them together).
pub const ROUTES: &[(&str, &str)] = &[
    ("/api/v1/openapi.json", "get"),
    ("/api/v1/messages", "post"),
    ("/api/v1/messages/batch", "post"),
    ("/api/v1/groups", "post"),
    ("/api/v1/groups/{conversation_id}", "patch"),
    ("/api/v1/groups/{conversation_id}/members", "get"),
    ("/api/v1/groups/{conversation_id}/members", "post"),
    ("/api/v1/groups/{conversation_id}/members/{user}", "delete"),
    ("/api/v1/users/{user}/conversations", "get"),
    (
        "/api/v1/users/{user}/conversations/{conversation_id}/messages",
        "get",
    ),
    (
        "/api/v1/users/{user}/conversations/{conversation_id}/read",
        "post",
    ),
    ("/api/v1/users/{user}/sync", "get"),
    ("/api/v1/users/{user}/disconnect", "post"),
    ("/api/v1/users/{user}/ban", "post"),
    ("/api/v1/users/{user}/ban", "delete"),
    ("/api/v1/users/{user}/revoke_tokens", "post"),
    ("/api/v1/users/{user}/restrictions", "get"),
    ("/api/v1/presence", "get"),
    ("/api/v1/events", "get"),
];

/// The routes of `/api/v1/`, to be nested under that prefix. Each path is checked against
/// [`ROUTES`] as the router is built, so a method served here and missing from the document
/// fails every test that starts a node.
pub fn router() -> Router<HttpState> {
    Router::new()
        .route(listed("/openapi.json", &["get"]), get(openapi))
        .route(listed("/messages", &["post"]), post(messages::send))
        .route(
            listed("/messages/batch", &["post"]),
            post(messages::send_batch),
        )
        .route(listed("/groups", &["post"]), post(groups::create))
        .route(
            listed("/groups/{conversation_id}", &["patch"]),
            axum::routing::patch(groups::rename),
        )
        .route(
            listed("/groups/{conversation_id}/members", &["get", "post"]),
            get(groups::members).post(groups::add_members),
        )
        .route(
            listed("/groups/{conversation_id}/members/{user}", &["delete"]),
            axum::routing::delete(groups::remove_member),
        )
        .route(
            listed("/users/{user}/conversations", &["get"]),
            get(users::conversations),
        )
        .route(
            listed(
                "/users/{user}/conversations/{conversation_id}/messages",
                &["get"],
            ),
            get(users::history),
        )
        .route(
            listed(
                "/users/{user}/conversations/{conversation_id}/read",
                &["post"],
            ),
            post(users::mark_read),
        )
        .route(listed("/users/{user}/sync", &["get"]), get(users::sync))
        .route(
            listed("/users/{user}/disconnect", &["post"]),
            post(users::disconnect),
        )
        .route(
            listed("/users/{user}/ban", &["post", "delete"]),
            post(moderation::ban).delete(moderation::lift_ban),
        )
        .route(
            listed("/users/{user}/revoke_tokens", &["post"]),
            post(moderation::revoke_tokens),
        )
        .route(
            listed("/users/{user}/restrictions", &["get"]),
            get(moderation::restrictions),
        )
        .route(listed("/presence", &["get"]), get(users::presence))
        .route(listed("/events", &["get"]), get(events::feed))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// `path` (under `/api/v1`), after checking that [`ROUTES`] lists it with `methods`.
fn listed(path: &'static str, methods: &[&str]) -> &'static str {
    for method in methods {
        assert!(
            ROUTES
                .iter()
                .any(|(p, m)| p.strip_prefix("/api/v1") == Some(path) && m == method),
            "{method} {path} is served but not in api::ROUTES (nor, then, in docs/openapi.json)"
        );
    }
    path
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI_DOCUMENT,
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take this method; see /api/v1/openapi.json",
    )
    .into_response()
}

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such method of the server API; see /api/v1/openapi.json",
    )
    .into_response()
}

/// A failed server API request: an HTTP status and `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds to wait before retrying (`Retry-After`), for 429.
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "storage unavailable; retry later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = error_response(self.status, self.code, self.message);
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The HTTP status of each error code the WebSocket protocol knows.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Forbidden
        | ErrorCode::NotAMember
        | ErrorCode::NotAllowed
        | ErrorCode::NotAuthor => StatusCode::FORBIDDEN,
        ErrorCode::UnknownConversation | ErrorCode::UnknownMessage => StatusCode::NOT_FOUND,
        ErrorCode::GroupFull
        | ErrorCode::TooManyGroups
        | ErrorCode::EditWindowPassed
        | ErrorCode::MessageDeleted
        | ErrorCode::TooManyReactions => StatusCode::CONFLICT,
    }
}

impl From<ProtocolError> for ApiError {
    fn from(error: ProtocolError) -> Self {
        Self::new(status_of(error.code), error.code.as_str(), error.message)
    }
}

impl From<CallError> for ApiError {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Rejected(reason) => Self::bad_request(reason),
            CallError::Unavailable(_) => Self::unavailable(),
            CallError::Refused(refusal) => ProtocolError::from(refusal).into(),
        }
    }
}

/// Who calls: the tenant of a valid API key, from an allowed address, within the key's rate.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: String,
    /// The key's name, for logs.
    pub key_name: String,
}

impl FromRequestParts<HttpState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let settings = state.gateway.live.load();
        if !settings.api_allowed.is_empty() {
            let ip = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip());
            if !ip.is_some_and(|ip: IpAddr| settings.api_allowed.iter().any(|r| r.contains(ip))) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden_ip",
                    "this address may not call the server API (server_api.allowed_ips)",
                ));
            }
        }
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "an API key is required: Authorization: Bearer <key>",
                )
            })?;
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        let Some(owner) = settings.api_keys.get(&digest) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown API key",
            ));
        };
        let api = &settings.server_api;
        let verdict =
            state
                .api_rates
                .check(&digest, api.rate_per_sec, api.rate_burst, Instant::now());
        if !matches!(verdict, Verdict::Allow) {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this key may make {} requests per second (server_api.rate_per_sec)",
                    api.rate_per_sec
                ),
            );
            error.retry_after = Some(1);
            return Err(error);
        }
        Ok(Caller {
            tenant: owner.tenant.clone(),
            key_name: owner.name.clone(),
        })
    }
}

impl Caller {
    /// A user of the caller's tenant, named by the request; 400 for an invalid id.
    pub fn user(&self, field: &str, user: &str) -> Result<UserKey, ApiError> {
        validate_id(user).map_err(|e| ApiError::bad_request(format!("{field} {e}")))?;
        Ok(UserKey::new(self.tenant.as_str(), user))
    }
}

/// A JSON request body within `server_api.max_body_bytes`, parsed into `T`; 413 or 400 with
/// what is wrong otherwise.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<HttpState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &HttpState) -> Result<Self, Self::Rejection> {
        let max = state.gateway.live.load().server_api.max_body_bytes;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body may hold at most {max} bytes (server_api.max_body_bytes)"),
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > max) {
            return Err(too_large());
        }
        let body = axum::body::to_bytes(request.into_body(), max.min(MAX_API_BODY_BYTES))
            .await
            .map_err(|_| too_large())?;
        parse_json(&body).map(ApiJson)
    }
}

/// A query string parsed into `T`; 400 with what is wrong otherwise.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<HttpState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(query)| ApiQuery(query))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// Parses a body; an empty one is `{}` (for methods whose fields are all optional).
fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not what this method takes: {e}")))
}

/// A new API key and its SHA-256 (what `[[server_api.keys]]` lists), for `peroxo apikey`:
/// [`API_KEY_PREFIX`] and 32 random bytes in hex.
pub fn new_api_key() -> (String, String) {
    let secret: [u8; 32] = rand::random();
    let key = format!("{API_KEY_PREFIX}{}", hex::encode(secret));
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    (key, digest)
}

/// The storage service's client, or 503.
fn storage(gateway: &GatewayContext) -> Result<StorageClient, ApiError> {
    gateway.storage.client().ok_or_else(ApiError::unavailable)
}

/// Acts as `user` for a commit, or 503 when storage is unreachable.
fn on_behalf(gateway: &Arc<GatewayContext>, user: UserKey) -> Result<OnBehalf, ApiError> {
    Ok(OnBehalf {
        client: storage(gateway)?,
        user,
        gateway: Arc::clone(gateway),
    })
}

/// An id of the protocol (message ids travel as decimal strings); 400 otherwise.
fn parse_message_id(field: &str, id: &str) -> Result<u64, ApiError> {
    id.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!("{field} must be a message id (decimal digits)"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes_served() {
        let document: serde_json::Value =
            serde_json::from_str(OPENAPI_DOCUMENT).expect("docs/openapi.json is JSON");
        assert!(
            document["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.")),
            "an OpenAPI 3 document"
        );
        let mut documented: Vec<(String, String)> = document["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .expect("a path item")
                    .keys()
                    .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                    .map(move |method| (format!("/api/v1{path}"), method.clone()))
            })
            .collect();
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_route_served_is_listed() {
        // `listed` panics on a route missing from ROUTES.
        let _ = router();
    }

    #[test]
    fn every_error_code_has_an_http_status() {
        for code in ErrorCode::ALL {
            let status = status_of(code);
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{code:?}"
            );
            assert_eq!(
                status.is_server_error(),
                code.retryable() && code != ErrorCode::RateLimited
            );
        }
    }
}
