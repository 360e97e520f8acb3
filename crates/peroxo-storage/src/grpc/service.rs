//! [`StorageService`]: the gRPC face of a [`MessageStore`]. Each rpc checks what the backend
//! relies on (ids, limits, conversation ids) and answers a bad request with
//! `INVALID_ARGUMENT` before the backend sees it; the rules of conversations (membership,
//! roles, titles, ...) are the backend's, which refuses with an exact code.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb;
use super::pb::storage_server::Storage;
use crate::{
    EventsQuery, HistoryQuery, MAX_APPEND_BATCH, MAX_EVENTS_LIMIT, MAX_HISTORY_LIMIT,
    MAX_SYNC_LIMIT, MessageStore, SyncQuery, SyncScope,
};
use peroxo_protocol::conversation::{ConversationRef, ConversationsQuery};
use peroxo_protocol::domain::{self, UserKey};
use peroxo_protocol::event::MAX_CONVERSATIONS_LIMIT;
use peroxo_protocol::outbox::{ConsumerClaim, MAX_CONSUMER_NAME_BYTES};
use peroxo_protocol::restriction::RestrictionChange;

/// The gRPC face of a [`MessageStore`].
#[derive(Debug)]
pub struct StorageService<S> {
    store: Arc<S>,
}

impl<S> StorageService<S> {
    pub(super) fn new(store: Arc<S>) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl<S: MessageStore> Storage for StorageService<S> {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let messages = request.into_inner().messages;
        if messages.len() > MAX_APPEND_BATCH {
            return Err(Status::invalid_argument(format!(
                "a batch holds at most {MAX_APPEND_BATCH} messages"
            )));
        }
        let batch = messages
            .into_iter()
            .map(convert::new_message_from_pb)
            .collect();
        let outcomes = self.store.append(batch).await?;
        Ok(Response::new(pb::AppendResponse {
            results: outcomes.into_iter().map(convert::outcome_to_pb).collect(),
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let r = request.into_inner();
        let user = user_key(r.tenant, r.user)?;
        let conversation_id = if r.conversation_id.is_empty() {
            domain::validate_id(&r.peer)
                .map_err(|e| Status::invalid_argument(format!("peer {e}")))?;
            domain::conversation_id(&user.user, &r.peer)
        } else {
            check_conversation_id(&r.conversation_id)?;
            r.conversation_id
        };
        let limit = check_limit(r.limit, MAX_HISTORY_LIMIT)?;
        let page = self
            .store
            .history(HistoryQuery {
                user,
                conversation_id,
                before: (r.before != 0).then_some(r.before),
                limit,
            })
            .await?;
        Ok(Response::new(pb::HistoryResponse {
            messages: page
                .messages
                .into_iter()
                .map(convert::message_to_pb)
                .collect(),
            has_more: page.has_more,
            last_seq: page.last_seq,
        }))
    }

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        let r = request.into_inner();
        let user = user_key(r.tenant, r.user)?;
        let limit = check_limit(r.limit, MAX_SYNC_LIMIT)?;
        let page = self
            .store
            .sync(SyncQuery {
                user,
                after_seq: r.after_seq,
                limit,
                scope: match (r.everything, r.lifecycle) {
                    (true, true) => SyncScope::Everything,
                    (true, false) => SyncScope::Conversations,
                    (false, _) => SyncScope::DirectMessages,
                },
            })
            .await?;
        Ok(Response::new(pb::SyncResponse {
            messages: page
                .messages
                .into_iter()
                .map(convert::message_to_pb)
                .collect(),
            last_seq: page.last_seq,
            pruned_until: page.pruned_until,
            has_more: page.has_more,
            events: page
                .events
                .into_iter()
                .map(convert::stream_event_to_pb)
                .collect(),
        }))
    }

    async fn last_seq(
        &self,
        request: Request<pb::LastSeqRequest>,
    ) -> Result<Response<pb::LastSeqResponse>, Status> {
        let r = request.into_inner();
        let user = user_key(r.tenant, r.user)?;
        let last_seq = self.store.last_seq(user).await?;
        Ok(Response::new(pb::LastSeqResponse { last_seq }))
    }

    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::GroupResponse>, Status> {
        let request = convert::create_group_from_pb(request.into_inner())?;
        check_user(&request.creator)?;
        domain::validate_client_msg_id(&request.client_msg_id)
            .map_err(|e| Status::invalid_argument(format!("client_msg_id {e}")))?;
        let outcome = self.store.create_group(request).await?;
        Ok(Response::new(convert::group_outcome_to_pb(outcome)))
    }

    async fn change_group(
        &self,
        request: Request<pb::ChangeGroupRequest>,
    ) -> Result<Response<pb::GroupResponse>, Status> {
        let request = convert::group_change_from_pb(request.into_inner())?;
        check_user(&request.actor)?;
        check_conversation_id(&request.conversation_id)?;
        let outcome = self.store.change_group(request).await?;
        Ok(Response::new(convert::group_outcome_to_pb(outcome)))
    }

    async fn members(
        &self,
        request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let r = request.into_inner();
        let user = user_key(r.tenant, r.user)?;
        check_conversation_id(&r.conversation_id)?;
        let members = self.store.members(user, r.conversation_id).await?;
        Ok(Response::new(pb::MembersResponse {
            members: members.into_iter().map(convert::member_to_pb).collect(),
        }))
    }

    async fn conversations(
        &self,
        request: Request<pb::ConversationsRequest>,
    ) -> Result<Response<pb::ConversationsResponse>, Status> {
        let r = request.into_inner();
        let user = user_key(r.tenant, r.user)?;
        let limit = check_limit(r.limit, MAX_CONVERSATIONS_LIMIT)?;
        let page = self
            .store
            .conversations(ConversationsQuery {
                user,
                before: (r.before != 0).then_some(r.before),
                limit,
            })
            .await?;
        Ok(Response::new(convert::conversation_page_to_pb(page)))
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let request = convert::read_mark_from_pb(request.into_inner())?;
        check_user(&request.user)?;
        check_conversation_id(&request.conversation_id)?;
        let outcome = self.store.mark_read(request).await?;
        Ok(Response::new(convert::read_outcome_to_pb(outcome)))
    }

    async fn change_message(
        &self,
        request: Request<pb::ChangeMessageRequest>,
    ) -> Result<Response<pb::ChangeMessageResponse>, Status> {
        let request = convert::message_change_from_pb(request.into_inner())?;
        check_user(&request.actor)?;
        check_conversation_id(&request.conversation_id)?;
        let outcome = self.store.change_message(request).await?;
        Ok(Response::new(convert::message_outcome_to_pb(outcome)))
    }

    async fn read_receipts(
        &self,
        request: Request<pb::ReadReceiptsRequest>,
    ) -> Result<Response<pb::ReadReceiptsResponse>, Status> {
        let r = request.into_inner();
        let user = user_key(r.tenant, r.user)?;
        check_conversation_id(&r.conversation_id)?;
        let receipts = self
            .store
            .read_receipts(user, r.conversation_id, r.message_id)
            .await?;
        Ok(Response::new(pb::ReadReceiptsResponse {
            receipts: receipts.into_iter().map(convert::receipt_to_pb).collect(),
        }))
    }

    async fn events(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<pb::EventsResponse>, Status> {
        let r = request.into_inner();
        check_tenant(&r.tenant)?;
        let query = EventsQuery {
            tenant: r.tenant,
            after: r.after,
            limit: check_limit(r.limit, MAX_EVENTS_LIMIT)?,
        };
        let page = self.store.events(query).await?;
        Ok(Response::new(convert::outbox_page_to_pb(page)))
    }

    async fn record_events(
        &self,
        request: Request<pb::RecordEventsRequest>,
    ) -> Result<Response<pb::RecordEventsResponse>, Status> {
        let r = request.into_inner();
        check_tenant(&r.tenant)?;
        if r.events.is_empty() || r.events.len() > MAX_EVENTS_LIMIT as usize {
            return Err(Status::invalid_argument(format!(
                "a request records 1 to {MAX_EVENTS_LIMIT} events"
            )));
        }
        let events = r
            .events
            .into_iter()
            .map(convert::new_outbox_event_from_pb)
            .collect::<Result<_, _>>()?;
        let ids = self.store.record_events(r.tenant, events).await?;
        Ok(Response::new(pb::RecordEventsResponse { ids }))
    }

    async fn claim_consumer(
        &self,
        request: Request<pb::ClaimConsumerRequest>,
    ) -> Result<Response<pb::ClaimConsumerResponse>, Status> {
        let r = request.into_inner();
        check_tenant(&r.tenant)?;
        check_consumer(&r.consumer, &r.holder)?;
        let claim = ConsumerClaim {
            tenant: r.tenant,
            consumer: r.consumer,
            holder: r.holder,
            ttl_ms: r.ttl_ms,
            now_ms: r.now_ms,
        };
        let lease = self.store.claim_consumer(claim).await?;
        Ok(Response::new(convert::lease_to_pb(lease)))
    }

    async fn advance_consumer(
        &self,
        request: Request<pb::AdvanceConsumerRequest>,
    ) -> Result<Response<pb::AdvanceConsumerResponse>, Status> {
        let r = request.into_inner();
        check_tenant(&r.tenant)?;
        check_consumer(&r.consumer, &r.holder)?;
        let held = self
            .store
            .advance_consumer(r.tenant, r.consumer, r.holder, r.cursor)
            .await?;
        Ok(Response::new(pb::AdvanceConsumerResponse { held }))
    }

    async fn set_restriction(
        &self,
        request: Request<pb::SetRestrictionRequest>,
    ) -> Result<Response<pb::Restriction>, Status> {
        let r = request.into_inner();
        let user = user_key(r.tenant, r.user)?;
        let change = RestrictionChange {
            ban_until: r.ban_until,
            reason: r.reason,
            revoke_before: r.revoke_before,
        };
        change
            .validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let restriction = self.store.set_restriction(user, change).await?;
        Ok(Response::new(convert::restriction_to_pb(restriction)))
    }

    async fn get_restriction(
        &self,
        request: Request<pb::GetRestrictionRequest>,
    ) -> Result<Response<pb::Restriction>, Status> {
        let r = request.into_inner();
        let user = user_key(r.tenant, r.user)?;
        let restriction = self.store.restrictions(user).await?;
        Ok(Response::new(convert::restriction_to_pb(restriction)))
    }

    async fn active_restrictions(
        &self,
        request: Request<pb::ActiveRestrictionsRequest>,
    ) -> Result<Response<pb::ActiveRestrictionsResponse>, Status> {
        let now_ms = request.into_inner().now_ms;
        let restrictions = self
            .store
            .active_restrictions(now_ms)
            .await?
            .into_iter()
            .map(|(user, restriction)| pb::UserRestriction {
                tenant: user.tenant.clone(),
                user: user.user.clone(),
                restriction: Some(convert::restriction_to_pb(restriction)),
            })
            .collect();
        Ok(Response::new(pb::ActiveRestrictionsResponse {
            restrictions,
        }))
    }
}

fn check_tenant(tenant: &str) -> Result<(), Status> {
    domain::validate_id(tenant).map_err(|e| Status::invalid_argument(format!("tenant {e}")))
}

/// A consumer and a holder are names of 1 to [`MAX_CONSUMER_NAME_BYTES`] bytes.
fn check_consumer(consumer: &str, holder: &str) -> Result<(), Status> {
    for (what, name) in [("consumer", consumer), ("holder", holder)] {
        if name.is_empty() || name.len() > MAX_CONSUMER_NAME_BYTES {
            return Err(Status::invalid_argument(format!(
                "{what} must be 1 to {MAX_CONSUMER_NAME_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

fn user_key(tenant: String, user: String) -> Result<UserKey, Status> {
    let key = UserKey::new(tenant, user);
    check_user(&key)?;
    Ok(key)
}

fn check_user(key: &UserKey) -> Result<(), Status> {
    check_tenant(&key.tenant)?;
    domain::validate_id(&key.user).map_err(|e| Status::invalid_argument(format!("user {e}")))
}

/// A direct or group conversation id as [`ConversationRef::parse`] accepts it. Whether the
/// user takes part in it is the backend's to say.
fn check_conversation_id(id: &str) -> Result<(), Status> {
    ConversationRef::parse(id)
        .map(drop)
        .map_err(|e| Status::invalid_argument(format!("conversation_id {e}")))
}

fn check_limit(limit: u32, max: u32) -> Result<u32, Status> {
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(Status::invalid_argument(format!(
            "limit must be between 1 and {max}"
        )))
    }
}
