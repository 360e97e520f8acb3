//! [`StorageClient`]: the gateway's client of the storage service, with one method per
//! [`MessageStore`](crate::MessageStore) method, taking and answering the same Rust types.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::pb::storage_client::StorageClient as PbClient;
use super::{CallError, MAX_GRPC_MESSAGE_BYTES, convert, pb};
use crate::{EventsQuery, HistoryQuery, SyncQuery, SyncScope};
use peroxo_protocol::conversation::{
    ConversationPage, ConversationsQuery, CreateGroup, GroupChange, GroupOutcome, ReadMark,
    ReadOutcome, Receipt,
};
use peroxo_protocol::domain::{AppendOutcome, HistoryPage, NewMessage, SyncPage, UserKey};
use peroxo_protocol::event::Member;
use peroxo_protocol::lifecycle::{MessageChange, MessageOutcome};
use peroxo_protocol::outbox::{ConsumerClaim, ConsumerLease, NewOutboxEvent, OutboxPage};
use peroxo_protocol::restriction::{Restriction, RestrictionChange};

/// The gateway's client of the storage service. Cheap to clone; clones share one connection.
#[derive(Debug, Clone)]
pub struct StorageClient {
    inner: PbClient<Channel>,
}

impl StorageClient {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:50051`). Every call then fails after
    /// `rpc_timeout` rather than hang on a frozen service.
    pub async fn connect(
        endpoint: &str,
        connect_timeout: Duration,
        rpc_timeout: Duration,
    ) -> Result<Self, CallError> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| CallError::Rejected(format!("invalid endpoint {endpoint:?}: {e}")))?
            .connect_timeout(connect_timeout)
            .timeout(rpc_timeout)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| CallError::Unavailable(format!("cannot connect to {endpoint}: {e}")))?;
        Ok(Self {
            inner: PbClient::new(channel)
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
        })
    }

    pub async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<AppendOutcome>, CallError> {
        let expected = batch.len();
        let request = pb::AppendRequest {
            messages: batch.into_iter().map(convert::new_message_to_pb).collect(),
        };
        let results = self
            .inner
            .clone()
            .append(request)
            .await?
            .into_inner()
            .results;
        if results.len() != expected {
            return Err(CallError::Unavailable(format!(
                "the storage service answered {} results for {expected} messages",
                results.len()
            )));
        }
        Ok(results.into_iter().map(convert::outcome_from_pb).collect())
    }

    pub async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, CallError> {
        let request = pb::HistoryRequest {
            tenant: query.user.tenant.clone(),
            user: query.user.user.clone(),
            peer: String::new(),
            before: query.before.unwrap_or(0),
            limit: query.limit,
            conversation_id: query.conversation_id,
        };
        let r = self.inner.clone().history(request).await?.into_inner();
        Ok(HistoryPage {
            messages: r
                .messages
                .into_iter()
                .map(convert::message_from_pb)
                .collect(),
            has_more: r.has_more,
            last_seq: r.last_seq,
        })
    }

    pub async fn sync(&self, query: SyncQuery) -> Result<SyncPage, CallError> {
        let request = pb::SyncRequest {
            tenant: query.user.tenant.clone(),
            user: query.user.user.clone(),
            after_seq: query.after_seq,
            limit: query.limit,
            everything: query.scope != SyncScope::DirectMessages,
            lifecycle: query.scope == SyncScope::Everything,
        };
        let r = self.inner.clone().sync(request).await?.into_inner();
        Ok(SyncPage {
            messages: r
                .messages
                .into_iter()
                .map(convert::message_from_pb)
                .collect(),
            events: r
                .events
                .into_iter()
                .map(convert::stream_event_from_pb)
                .collect::<Result<_, _>>()?,
            last_seq: r.last_seq,
            has_more: r.has_more,
            pruned_until: r.pruned_until,
        })
    }

    pub async fn last_seq(&self, user: UserKey) -> Result<u64, CallError> {
        let request = pb::LastSeqRequest {
            tenant: user.tenant.clone(),
            user: user.user.clone(),
        };
        Ok(self
            .inner
            .clone()
            .last_seq(request)
            .await?
            .into_inner()
            .last_seq)
    }

    pub async fn create_group(&self, request: CreateGroup) -> Result<GroupOutcome, CallError> {
        let request = convert::create_group_to_pb(request);
        let r = self.inner.clone().create_group(request).await?.into_inner();
        Ok(convert::group_outcome_from_pb(r)?)
    }

    pub async fn change_group(&self, request: GroupChange) -> Result<GroupOutcome, CallError> {
        let request = convert::group_change_to_pb(request);
        let r = self.inner.clone().change_group(request).await?.into_inner();
        Ok(convert::group_outcome_from_pb(r)?)
    }

    pub async fn members(
        &self,
        user: UserKey,
        conversation_id: String,
    ) -> Result<Vec<Member>, CallError> {
        let request = pb::MembersRequest {
            tenant: user.tenant.clone(),
            user: user.user.clone(),
            conversation_id,
        };
        let r = self.inner.clone().members(request).await?.into_inner();
        Ok(r.members
            .into_iter()
            .map(convert::member_from_pb)
            .collect::<Result<_, _>>()?)
    }

    pub async fn conversations(
        &self,
        query: ConversationsQuery,
    ) -> Result<ConversationPage, CallError> {
        let request = pb::ConversationsRequest {
            tenant: query.user.tenant.clone(),
            user: query.user.user.clone(),
            before: query.before.unwrap_or(0),
            limit: query.limit,
        };
        let r = self
            .inner
            .clone()
            .conversations(request)
            .await?
            .into_inner();
        Ok(convert::conversation_page_from_pb(r)?)
    }

    pub async fn mark_read(&self, request: ReadMark) -> Result<ReadOutcome, CallError> {
        let request = convert::read_mark_to_pb(request);
        let r = self.inner.clone().mark_read(request).await?.into_inner();
        Ok(convert::read_outcome_from_pb(r)?)
    }

    pub async fn change_message(
        &self,
        request: MessageChange,
    ) -> Result<MessageOutcome, CallError> {
        let request = convert::message_change_to_pb(request);
        let r = self
            .inner
            .clone()
            .change_message(request)
            .await?
            .into_inner();
        Ok(convert::message_outcome_from_pb(r)?)
    }

    pub async fn read_receipts(
        &self,
        user: UserKey,
        conversation_id: String,
        message_id: u64,
    ) -> Result<Vec<Receipt>, CallError> {
        let request = pb::ReadReceiptsRequest {
            tenant: user.tenant.clone(),
            user: user.user.clone(),
            conversation_id,
            message_id,
        };
        let r = self
            .inner
            .clone()
            .read_receipts(request)
            .await?
            .into_inner();
        Ok(r.receipts
            .into_iter()
            .map(convert::receipt_from_pb)
            .collect())
    }

    /// One page of a tenant's event outbox.
    pub async fn events(&self, query: EventsQuery) -> Result<OutboxPage, CallError> {
        let request = pb::EventsRequest {
            tenant: query.tenant,
            after: query.after,
            limit: query.limit,
        };
        let r = self.inner.clone().events(request).await?.into_inner();
        Ok(convert::outbox_page_from_pb(r)?)
    }

    /// Writes events the caller decides to the tenant's outbox and returns their ids.
    pub async fn record_events(
        &self,
        tenant: String,
        events: Vec<NewOutboxEvent>,
    ) -> Result<Vec<u64>, CallError> {
        let request = pb::RecordEventsRequest {
            tenant,
            events: events
                .into_iter()
                .map(convert::new_outbox_event_to_pb)
                .collect(),
        };
        Ok(self
            .inner
            .clone()
            .record_events(request)
            .await?
            .into_inner()
            .ids)
    }

    /// Claims or renews the lease of a consumer of a tenant's feed (`None`: another holder's
    /// lease runs).
    pub async fn claim_consumer(
        &self,
        claim: ConsumerClaim,
    ) -> Result<Option<ConsumerLease>, CallError> {
        let request = pb::ClaimConsumerRequest {
            tenant: claim.tenant,
            consumer: claim.consumer,
            holder: claim.holder,
            ttl_ms: claim.ttl_ms,
            now_ms: claim.now_ms,
        };
        let r = self
            .inner
            .clone()
            .claim_consumer(request)
            .await?
            .into_inner();
        Ok(convert::lease_from_pb(r))
    }

    /// Moves a consumer's cursor forward; false when `holder` lost the lease.
    pub async fn advance_consumer(
        &self,
        tenant: String,
        consumer: String,
        holder: String,
        cursor: u64,
    ) -> Result<bool, CallError> {
        let request = pb::AdvanceConsumerRequest {
            tenant,
            consumer,
            holder,
            cursor,
        };
        Ok(self
            .inner
            .clone()
            .advance_consumer(request)
            .await?
            .into_inner()
            .held)
    }

    /// Changes `user`'s restriction; answers it as committed.
    pub async fn set_restriction(
        &self,
        user: UserKey,
        change: RestrictionChange,
    ) -> Result<Restriction, CallError> {
        let request = pb::SetRestrictionRequest {
            tenant: user.tenant.clone(),
            user: user.user.clone(),
            ban_until: change.ban_until,
            reason: change.reason,
            revoke_before: change.revoke_before,
        };
        let r = self
            .inner
            .clone()
            .set_restriction(request)
            .await?
            .into_inner();
        Ok(convert::restriction_from_pb(r))
    }

    /// `user`'s restriction (all zero when the user has none).
    pub async fn restrictions(&self, user: UserKey) -> Result<Restriction, CallError> {
        let request = pb::GetRestrictionRequest {
            tenant: user.tenant.clone(),
            user: user.user.clone(),
        };
        let r = self
            .inner
            .clone()
            .get_restriction(request)
            .await?
            .into_inner();
        Ok(convert::restriction_from_pb(r))
    }

    /// Every restriction active at `now_ms`.
    pub async fn active_restrictions(
        &self,
        now_ms: i64,
    ) -> Result<Vec<(UserKey, Restriction)>, CallError> {
        let request = pb::ActiveRestrictionsRequest { now_ms };
        let r = self
            .inner
            .clone()
            .active_restrictions(request)
            .await?
            .into_inner();
        Ok(r.restrictions
            .into_iter()
            .map(|u| {
                let restriction = u.restriction.map(convert::restriction_from_pb);
                (
                    UserKey::new(u.tenant, u.user),
                    restriction.unwrap_or_default(),
                )
            })
            .collect())
    }
}
