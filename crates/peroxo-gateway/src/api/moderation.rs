//! What an application's backend imposes on a user through the server API: a ban until a
//! time (the user's sessions close, and every node refuses the user's upgrades until then)
//! and the revocation of the user's tokens issued before a time (the user's sessions close,
//! and every node refuses those tokens). Storage records each change; this node's
//! [`Restrictions`](crate::restrictions::Restrictions) learn it at once, and the other nodes
//! of a cluster through NATS.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::users::{check_close_reason, close_code, close_sessions};
use super::{ApiError, ApiJson, Caller, storage};
use crate::actors::cluster::ClusterMsg;
use crate::http::HttpState;
use crate::restrictions::{MAX_TIME_MS, rfc3339};
use peroxo_protocol::domain::{UserKey, now_ms};
use peroxo_protocol::restriction::{Restriction, RestrictionChange};

/// The close reason of the sessions a revocation closes.
const REVOKED_REASON: &str = "token revoked";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BanRequest {
    /// The end of the ban, in milliseconds since the Unix epoch; in the future.
    until: i64,
    /// Why (at most 120 bytes): the refused upgrades and the close frames say it.
    #[serde(default)]
    reason: Option<String>,
    /// The close code of the user's sessions, 4000 to 4999 (default 4003).
    #[serde(default)]
    code: Option<u16>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeRequest {
    /// Tokens issued before this time (milliseconds since the Unix epoch) are refused;
    /// default now. Never in the future.
    #[serde(default)]
    before: Option<i64>,
}

/// `POST /api/v1/users/{user}/ban`: records the ban, then closes the user's sessions on
/// every node.
pub(super) async fn ban(
    State(state): State<HttpState>,
    caller: Caller,
    Path(user): Path<String>,
    ApiJson(request): ApiJson<BanRequest>,
) -> Result<Response, ApiError> {
    let user = caller.user("user", &user)?;
    let now = now_ms();
    if request.until <= now || request.until > MAX_TIME_MS {
        return Err(ApiError::bad_request(format!(
            "until must be a time in the future, in milliseconds since the Unix epoch, up to \
             {MAX_TIME_MS} (DELETE lifts a ban); it is now {now}"
        )));
    }
    let code = close_code(request.code)?;
    check_close_reason(request.reason.as_deref())?;
    let change = RestrictionChange {
        ban_until: Some(request.until),
        reason: Some(request.reason.clone().unwrap_or_default()),
        revoke_before: None,
    };
    let restriction = record(&state, &user, change).await?;
    let closed = close_sessions(&state, &user, code, request.reason).await?;
    tracing::info!(tenant = %user.tenant, user = %user.user, until = %rfc3339(restriction.banned_until), closed, key = %caller.key_name, "banned by the server API");
    Ok(Json(serde_json::json!({
        "banned_until": restriction.banned_until,
        "disconnected": closed,
    }))
    .into_response())
}

/// `DELETE /api/v1/users/{user}/ban`: lifts the user's ban (a revocation stays).
pub(super) async fn lift_ban(
    State(state): State<HttpState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    let user = caller.user("user", &user)?;
    let change = RestrictionChange {
        ban_until: Some(0),
        ..RestrictionChange::default()
    };
    let restriction = record(&state, &user, change).await?;
    tracing::info!(tenant = %user.tenant, user = %user.user, key = %caller.key_name, "ban lifted by the server API");
    Ok(Json(view(&restriction)).into_response())
}

/// `POST /api/v1/users/{user}/revoke_tokens`: records that the user's tokens issued before
/// a time are refused, then closes the user's sessions on every node (code 4003, reason
/// "token revoked").
pub(super) async fn revoke_tokens(
    State(state): State<HttpState>,
    caller: Caller,
    Path(user): Path<String>,
    ApiJson(request): ApiJson<RevokeRequest>,
) -> Result<Response, ApiError> {
    let user = caller.user("user", &user)?;
    let now = now_ms();
    let before = request.before.unwrap_or(now);
    if !(1..=now).contains(&before) {
        return Err(ApiError::bad_request(format!(
            "before must be a time in milliseconds since the Unix epoch, not in the future; \
             it is now {now}"
        )));
    }
    let change = RestrictionChange {
        revoke_before: Some(before),
        ..RestrictionChange::default()
    };
    let restriction = record(&state, &user, change).await?;
    let code = close_code(None)?;
    let closed = close_sessions(&state, &user, code, Some(REVOKED_REASON.to_owned())).await?;
    tracing::info!(tenant = %user.tenant, user = %user.user, before = %rfc3339(restriction.tokens_before), closed, key = %caller.key_name, "tokens revoked by the server API");
    Ok(Json(serde_json::json!({
        "tokens_before": restriction.tokens_before,
        "disconnected": closed,
    }))
    .into_response())
}

/// `GET /api/v1/users/{user}/restrictions`: the user's restriction, as storage records it.
pub(super) async fn restrictions(
    State(state): State<HttpState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    let user = caller.user("user", &user)?;
    let restriction = storage(&state.gateway)?.restrictions(user).await?;
    Ok(Json(view(&restriction)).into_response())
}

/// Commits `change`, then has this node and the others of a cluster enforce the result.
async fn record(
    state: &HttpState,
    user: &UserKey,
    change: RestrictionChange,
) -> Result<Restriction, ApiError> {
    let restriction = storage(&state.gateway)?
        .set_restriction(user.clone(), change)
        .await?;
    let gateway = &state.gateway;
    gateway.restrictions.set(user.clone(), restriction.clone());
    if let Some(cluster) = gateway.cluster.as_ref().and_then(|slot| slot.get()) {
        let _ = cluster.cast(ClusterMsg::PublishRestriction {
            user: user.clone(),
            restriction: restriction.clone(),
        });
    }
    Ok(restriction)
}

/// A restriction as the API answers it.
fn view(r: &Restriction) -> serde_json::Value {
    serde_json::json!({
        "banned": r.banned_at(now_ms()),
        "banned_until": r.banned_until,
        "ban_reason": r.ban_reason,
        "tokens_before": r.tokens_before,
    })
}
