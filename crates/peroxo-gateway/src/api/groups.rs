//! Groups through the server API. A change is made as a member of the group (`as`), with
//! that member's rights, exactly as if it came from that member's connection: the events
//! say who made it, and the rules of groups stay the same whoever calls.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, ApiJson, ApiQuery, Caller, on_behalf};
use crate::http::HttpState;
use peroxo_protocol::MemberView;
use peroxo_protocol::conversation::GroupOp;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateRequest {
    /// The group's owner (its creator).
    owner: String,
    title: String,
    /// The other members.
    #[serde(default)]
    members: Vec<String>,
    /// Makes the creation idempotent, like a send's.
    client_msg_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RenameRequest {
    /// The member who renames it (owner or admin).
    #[serde(rename = "as")]
    actor: String,
    title: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddRequest {
    /// The member who adds them (owner or admin).
    #[serde(rename = "as")]
    actor: String,
    users: Vec<String>,
}

/// `?as=`: the member on whose behalf a read or a removal is made.
#[derive(Debug, Deserialize)]
pub(super) struct ActingQuery {
    #[serde(rename = "as")]
    actor: Option<String>,
}

impl ActingQuery {
    fn actor(&self) -> Result<&str, ApiError> {
        self.actor
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("?as= must name the member who acts"))
    }
}

/// `POST /api/v1/groups`: 201 with the new group's id, or 200 for a repeated
/// `client_msg_id` (the group it created).
pub(super) async fn create(
    State(state): State<HttpState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateRequest>,
) -> Result<Response, ApiError> {
    let owner = caller.user("owner", &request.owner)?;
    let outcome = on_behalf(&state.gateway, owner)?
        .create_group(request.client_msg_id, request.title, request.members)
        .await?;
    let status = if outcome.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = serde_json::json!({
        "conversation_id": outcome.conversation_id,
        "duplicate": outcome.duplicate,
    });
    Ok((status, Json(body)).into_response())
}

/// `PATCH /api/v1/groups/{conversation_id}`: renames the group.
pub(super) async fn rename(
    State(state): State<HttpState>,
    caller: Caller,
    Path(conversation_id): Path<String>,
    ApiJson(request): ApiJson<RenameRequest>,
) -> Result<Response, ApiError> {
    let actor = caller.user("as", &request.actor)?;
    let op = GroupOp::Rename {
        title: request.title,
    };
    change(&state, actor, &conversation_id, op).await
}

/// `POST /api/v1/groups/{conversation_id}/members`: adds members.
pub(super) async fn add_members(
    State(state): State<HttpState>,
    caller: Caller,
    Path(conversation_id): Path<String>,
    ApiJson(request): ApiJson<AddRequest>,
) -> Result<Response, ApiError> {
    let actor = caller.user("as", &request.actor)?;
    let op = GroupOp::AddMembers {
        users: request.users,
    };
    change(&state, actor, &conversation_id, op).await
}

/// `DELETE /api/v1/groups/{conversation_id}/members/{user}?as=`: removes a member, or,
/// when `as` is that member, has it leave.
pub(super) async fn remove_member(
    State(state): State<HttpState>,
    caller: Caller,
    Path((conversation_id, user)): Path<(String, String)>,
    ApiQuery(acting): ApiQuery<ActingQuery>,
) -> Result<Response, ApiError> {
    let actor = caller.user("as", acting.actor()?)?;
    caller.user("user", &user)?;
    let op = if actor.user == user {
        GroupOp::Leave
    } else {
        GroupOp::RemoveMember { user }
    };
    change(&state, actor, &conversation_id, op).await
}

/// `GET /api/v1/groups/{conversation_id}/members?as=`: the members, as one of them sees them.
pub(super) async fn members(
    State(state): State<HttpState>,
    caller: Caller,
    Path(conversation_id): Path<String>,
    ApiQuery(acting): ApiQuery<ActingQuery>,
) -> Result<Response, ApiError> {
    let actor = caller.user("as", acting.actor()?)?;
    let members = on_behalf(&state.gateway, actor)?
        .member_list(&conversation_id)
        .await?;
    let views: Vec<MemberView<'_>> = members.iter().map(MemberView::of).collect();
    Ok(Json(serde_json::json!({
        "conversation_id": conversation_id,
        "members": views,
    }))
    .into_response())
}

async fn change(
    state: &HttpState,
    actor: peroxo_protocol::domain::UserKey,
    conversation_id: &str,
    op: GroupOp,
) -> Result<Response, ApiError> {
    let outcome = on_behalf(&state.gateway, actor)?
        .change_group(conversation_id, op)
        .await?;
    Ok(Json(serde_json::json!({
        "conversation_id": conversation_id,
        "changed": !outcome.events.is_empty(),
    }))
    .into_response())
}
