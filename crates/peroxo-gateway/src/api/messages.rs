//! Sending through the server API: as any user of the caller's tenant (a system account is
//! a user id the application reserves, such as `system`), alone or in batches.
//!
//! A send takes the way a client's takes: into the outbox, committed by Persistence, acked,
//! then delivered by the Router. The answer comes after the commit, so `200` means durable;
//! a send retried with the same `client_msg_id` is answered as the first, `duplicate: true`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::oneshot;

use super::{ApiError, ApiJson, Caller, parse_message_id};
use crate::actors::outbox::{Answer, Origin};
use crate::actors::persistence::PersistenceMsg;
use crate::http::HttpState;
use peroxo_protocol::conversation::ConversationRef;
use peroxo_protocol::domain::{NewMessage, StoredMessage};
use peroxo_protocol::event::is_group_id;

/// How long a request waits for its message to be committed. Past it the answer is 504:
/// the message stays in the outbox and is committed when storage answers, so the same
/// request, retried, is answered with the original (`duplicate: true`).
const COMMIT_WAIT: Duration = Duration::from_secs(15);

/// One message to send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendRequest {
    /// The sender: any user id of the caller's tenant.
    from: String,
    /// A user, for a direct message; or use `conversation_id`.
    #[serde(default)]
    to: Option<String>,
    /// A direct conversation of `from` or a group `from` is a member of.
    #[serde(default)]
    conversation_id: Option<String>,
    text: String,
    client_msg_id: String,
    /// The message this one replies to, in the same conversation.
    #[serde(default)]
    reply_to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    messages: Vec<SendRequest>,
}

/// `POST /api/v1/messages`
pub(super) async fn send(
    State(state): State<HttpState>,
    caller: Caller,
    ApiJson(request): ApiJson<SendRequest>,
) -> Response {
    let waiting = match accept(&state, &caller, request) {
        Ok(waiting) => waiting,
        Err(error) => return error.into_response(),
    };
    wake(&state);
    match committed(waiting).await {
        Ok(acked) => Json(acked).into_response(),
        Err(error) => error.into_response(),
    }
}

/// `POST /api/v1/messages/batch`: every message is accepted in order, then the answers come
/// in the same order, each an ack or an error of its own.
pub(super) async fn send_batch(
    State(state): State<HttpState>,
    caller: Caller,
    ApiJson(request): ApiJson<BatchRequest>,
) -> Response {
    let most = state.gateway.live.load().server_api.max_batch;
    if request.messages.is_empty() || request.messages.len() > most {
        return ApiError::bad_request(format!(
            "a batch holds 1 to {most} messages (server_api.max_batch)"
        ))
        .into_response();
    }
    let waiting: Vec<_> = request
        .messages
        .into_iter()
        .map(|message| accept(&state, &caller, message))
        .collect();
    wake(&state);
    let mut results = Vec::with_capacity(waiting.len());
    for accepted in waiting {
        let result = match accepted {
            Ok(waiting) => committed(waiting).await,
            Err(error) => Err(error),
        };
        results.push(match result {
            Ok(acked) => serde_json::json!({ "ok": true, "ack": acked }),
            Err(error) => serde_json::json!({
                "ok": false,
                "error": error.code,
                "message": error.message,
            }),
        });
    }
    Json(serde_json::json!({ "results": results })).into_response()
}

/// The answer to a committed send.
#[derive(Debug, serde::Serialize)]
pub(super) struct Acked {
    client_msg_id: String,
    message_id: String,
    conversation_id: String,
    /// The sender's seq for the message.
    seq: u64,
    ts: i64,
    duplicate: bool,
}

impl Acked {
    fn of(message: &StoredMessage, duplicate: bool) -> Self {
        Self {
            client_msg_id: message.client_msg_id.clone(),
            message_id: message.message_id.to_string(),
            conversation_id: message.conversation_id(),
            seq: message.sender_seq,
            ts: message.ts,
            duplicate,
        }
    }
}

/// Checks a send and puts it in the outbox; returns where its answer will come.
fn accept(
    state: &HttpState,
    caller: &Caller,
    request: SendRequest,
) -> Result<oneshot::Receiver<Answer>, ApiError> {
    let sender = caller.user("from", &request.from)?;
    let recipient = match (request.to, request.conversation_id) {
        (Some(to), None) => {
            caller.user("to", &to)?;
            to
        }
        (None, Some(conversation)) => match ConversationRef::parse(&conversation) {
            Ok(ConversationRef::Group(id)) => id,
            Ok(direct) => direct
                .peer_of(&sender.user)
                .map(str::to_owned)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "not_a_member",
                        "`from` is not in this direct conversation",
                    )
                })?,
            Err(e) => return Err(ApiError::bad_request(format!("conversation_id {e}"))),
        },
        _ => {
            return Err(ApiError::bad_request(
                "name the recipient with exactly one of `to` and `conversation_id`",
            ));
        }
    };
    let reply_to = request
        .reply_to
        .as_deref()
        .map(|id| parse_message_id("reply_to", id))
        .transpose()?;
    let message = NewMessage {
        tenant: sender.tenant.clone(),
        sender: sender.user.clone(),
        recipient,
        client_msg_id: request.client_msg_id,
        text: request.text,
        reply_to,
    };
    let gateway = &state.gateway;
    let max_text = gateway.live.load().limits.max_text_bytes;
    message.validate(max_text).map_err(|e| {
        let code = if message.text.len() > max_text {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        let name = if code == StatusCode::BAD_REQUEST {
            "bad_request"
        } else {
            "too_large"
        };
        ApiError::new(code, name, e)
    })?;
    let rows = if is_group_id(&message.recipient) {
        gateway
            .member_cache
            .size(&message.tenant, &message.recipient)
    } else {
        1
    };
    let (answer, waiting) = oneshot::channel();
    match gateway
        .outbox
        .push(message, Origin::Api(answer), None, rows)
    {
        Ok(_) => {
            gateway.metrics.messages_received.increment(1);
            Ok(waiting)
        }
        Err(refused) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            refused.to_string(),
        )),
    }
}

/// Wakes Persistence for what was just accepted (one wake-up for a whole batch).
fn wake(state: &HttpState) {
    if state
        .gateway
        .persistence
        .cast(PersistenceMsg::Wake)
        .is_err()
    {
        // Persistence is restarting: its successor flushes the outbox once it connects.
        state.gateway.outbox.woken();
    }
}

/// Waits for a send's commit, at most [`COMMIT_WAIT`].
async fn committed(waiting: oneshot::Receiver<Answer>) -> Result<Acked, ApiError> {
    match tokio::time::timeout(COMMIT_WAIT, waiting).await {
        Ok(Ok(Ok((message, duplicate)))) => Ok(Acked::of(&message, duplicate)),
        Ok(Ok(Err(error))) => Err(error.into()),
        // Dropped unanswered: the node is going away with it.
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the node stopped before the message was committed; retry with the same client_msg_id",
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "not committed yet (storage is slow or unreachable); retry with the same client_msg_id",
        )),
    }
}
