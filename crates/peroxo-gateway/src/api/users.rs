//! What a user sees and what happens to a user, through the server API: the conversation
//! list, history and `sync` (each the body of the WebSocket reply of the same name, protocol
//! 3, without `req_id`), read marks, presence, and disconnecting a user's sessions.

use std::borrow::Cow;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, ApiJson, ApiQuery, Caller, on_behalf, parse_message_id, storage};
use crate::actors::conversation_commands::conversations_frame;
use crate::actors::router::RouterMsg;
use crate::http::HttpState;
use peroxo_protocol::conversation::{ConversationsQuery, ReadMarkKind};
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::{
    CloseCause, DISCONNECTED_CODE, EventView, LATEST_PROTOCOL_VERSION, MessageView, ServerFrame,
};
use peroxo_storage::{HistoryQuery, SyncQuery, SyncScope};

/// How long a presence or disconnect request waits for the Router.
const ROUTER_WAIT_MS: u64 = 5_000;
/// The most users one presence request may name.
pub(super) const MAX_PRESENCE_USERS: usize = 1_000;

#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    before: Option<String>,
    limit: Option<u32>,
}

impl PageQuery {
    /// `before`: the `next_before` of the previous page (decimal digits), if given.
    fn before(&self) -> Result<Option<u64>, ApiError> {
        self.before
            .as_deref()
            .map(|b| parse_message_id("before", b))
            .transpose()
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct SyncParams {
    after_seq: Option<u64>,
    limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadRequest {
    /// The newest message read.
    message_id: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct PresenceQuery {
    /// Comma-separated user ids.
    users: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct DisconnectRequest {
    /// The close code, 4000 to 4999 (default 4003).
    #[serde(default)]
    code: Option<u16>,
    /// The close frame's reason (at most 120 bytes).
    #[serde(default)]
    reason: Option<String>,
}

/// The answer body of a WebSocket reply: the frame as JSON.
fn frame_body(frame: &ServerFrame<'_>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        frame.encode(),
    )
        .into_response()
}

/// `GET /api/v1/users/{user}/conversations?before=&limit=`
pub(super) async fn conversations(
    State(state): State<HttpState>,
    caller: Caller,
    Path(user): Path<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let user = caller.user("user", &user)?;
    let before = page.before()?;
    let list = storage(&state.gateway)?
        .conversations(ConversationsQuery {
            user: user.clone(),
            before,
            limit: page.limit.unwrap_or(50),
        })
        .await?;
    Ok(frame_body(&conversations_frame(
        &list,
        &user.user,
        LATEST_PROTOCOL_VERSION,
        None,
    )))
}

/// `GET /api/v1/users/{user}/conversations/{conversation_id}/messages?before=&limit=`
pub(super) async fn history(
    State(state): State<HttpState>,
    caller: Caller,
    Path((user, conversation_id)): Path<(String, String)>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let user = caller.user("user", &user)?;
    let before = page.before()?;
    let history = storage(&state.gateway)?
        .history(HistoryQuery {
            user: user.clone(),
            conversation_id: conversation_id.clone(),
            before,
            limit: page.limit.unwrap_or(50),
        })
        .await?;
    let next_before = history
        .messages
        .first()
        .filter(|_| history.has_more)
        .map(|m| m.message_id.to_string());
    Ok(frame_body(&ServerFrame::History {
        req_id: None,
        with: None,
        conversation_id,
        messages: history
            .messages
            .iter()
            .map(|m| MessageView::of(m, &user.user))
            .collect(),
        next_before,
        last_seq: Some(history.last_seq),
    }))
}

/// `GET /api/v1/users/{user}/sync?after_seq=&limit=`: the user's stream after a seq,
/// messages and events, as a protocol-3 client syncs it.
pub(super) async fn sync(
    State(state): State<HttpState>,
    caller: Caller,
    Path(user): Path<String>,
    ApiQuery(params): ApiQuery<SyncParams>,
) -> Result<Response, ApiError> {
    let user = caller.user("user", &user)?;
    let page = storage(&state.gateway)?
        .sync(SyncQuery {
            user: user.clone(),
            after_seq: params.after_seq.unwrap_or(0),
            limit: params.limit.unwrap_or(100),
            scope: SyncScope::Everything,
        })
        .await?;
    Ok(frame_body(&ServerFrame::Sync {
        req_id: None,
        messages: page
            .messages
            .iter()
            .map(|m| MessageView::of(m, &user.user))
            .collect(),
        events: Some(
            page.events
                .iter()
                .map(|e| EventView::of(&e.event, e.seq))
                .collect(),
        ),
        last_seq: page.last_seq,
        has_more: page.has_more,
        pruned_until: (page.pruned_until > 0).then_some(page.pruned_until),
    }))
}

/// `POST /api/v1/users/{user}/conversations/{conversation_id}/read`: moves the user's read
/// marker, exactly as the user's `mark_read` would (every device hears of it).
pub(super) async fn mark_read(
    State(state): State<HttpState>,
    caller: Caller,
    Path((user, conversation_id)): Path<(String, String)>,
    ApiJson(request): ApiJson<ReadRequest>,
) -> Result<Response, ApiError> {
    let user = caller.user("user", &user)?;
    let message_id = parse_message_id("message_id", &request.message_id)?;
    let outcome = on_behalf(&state.gateway, user)?
        .mark(&conversation_id, ReadMarkKind::Read { message_id })
        .await?;
    Ok(frame_body(&ServerFrame::ReadState {
        req_id: None,
        conversation_id: Cow::Borrowed(&conversation_id),
        read_marker: outcome.message_id.to_string(),
        unread_count: outcome.unread_count,
    }))
}

/// `GET /api/v1/presence?users=a,b`: whether each is online on any node.
pub(super) async fn presence(
    State(state): State<HttpState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PresenceQuery>,
) -> Result<Response, ApiError> {
    let names = query.users.unwrap_or_default();
    let users: Vec<String> = names
        .split(',')
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if users.is_empty() || users.len() > MAX_PRESENCE_USERS {
        return Err(ApiError::bad_request(format!(
            "?users= names 1 to {MAX_PRESENCE_USERS} users, comma-separated"
        )));
    }
    for user in &users {
        caller.user("users", user)?;
    }
    let router = state.gateway.router.get().ok_or_else(router_unavailable)?;
    let online = ractor::call_t!(
        router,
        |reply| RouterMsg::Presence {
            tenant: caller.tenant.clone(),
            users: users.clone(),
            reply,
        },
        ROUTER_WAIT_MS
    )
    .map_err(|_| router_unavailable())?;
    let statuses: Vec<_> = users
        .iter()
        .zip(online)
        .map(|(user, online)| serde_json::json!({ "user": user, "online": online }))
        .collect();
    Ok(Json(serde_json::json!({ "users": statuses })).into_response())
}

/// `POST /api/v1/users/{user}/disconnect`: closes the user's sessions on this node, after
/// what is queued to them, with the code and reason given.
pub(super) async fn disconnect(
    State(state): State<HttpState>,
    caller: Caller,
    Path(user): Path<String>,
    ApiJson(request): ApiJson<DisconnectRequest>,
) -> Result<Response, ApiError> {
    let user = caller.user("user", &user)?;
    let code = close_code(request.code)?;
    check_close_reason(request.reason.as_deref())?;
    let closed = close_sessions(&state, &user, code, request.reason).await?;
    tracing::info!(tenant = %user.tenant, user = %user.user, code, closed, key = %caller.key_name, "disconnected by the server API");
    Ok(Json(serde_json::json!({ "disconnected": closed })).into_response())
}

/// The close code a request names (default 4003), or 400.
pub(super) fn close_code(code: Option<u16>) -> Result<u16, ApiError> {
    let code = code.unwrap_or(DISCONNECTED_CODE);
    if !(4000..=4999).contains(&code) || code == 4001 {
        return Err(ApiError::bad_request(
            "code must be between 4000 and 4999 (4001 means an expired token)",
        ));
    }
    Ok(code)
}

/// 400 for a close reason longer than a close frame takes.
pub(super) fn check_close_reason(reason: Option<&str>) -> Result<(), ApiError> {
    if reason.is_some_and(|r| r.len() > 120) {
        return Err(ApiError::bad_request("reason must be at most 120 bytes"));
    }
    Ok(())
}

/// Closes `user`'s sessions on every node, after what is queued to them, with `code` and
/// `reason`; answers how many closed on this node.
pub(super) async fn close_sessions(
    state: &HttpState,
    user: &UserKey,
    code: u16,
    reason: Option<String>,
) -> Result<usize, ApiError> {
    let router = state.gateway.router.get().ok_or_else(router_unavailable)?;
    ractor::call_t!(
        router,
        |reply| RouterMsg::Disconnect {
            user: user.clone(),
            cause: CloseCause::Disconnected { code },
            reason,
            reply: Some(reply),
        },
        ROUTER_WAIT_MS
    )
    .map_err(|_| router_unavailable())
}

fn router_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the router is restarting; retry",
    )
}
