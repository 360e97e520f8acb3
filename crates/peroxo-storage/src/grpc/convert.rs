//! Every conversion between the storage contract's Rust types and their protobuf messages,
//! in both directions: the service and the client share them, so the two sides cannot drift.
//!
//! A protobuf message can be malformed in ways the Rust type rules out (a missing `oneof`, an
//! unknown role from a newer peer); its conversion fails with [`Malformed`], which the service
//! answers as `INVALID_ARGUMENT` and the client reports as [`CallError::Unavailable`].

use tonic::Status;

use super::{CallError, pb};
use peroxo_protocol::conversation::{
    ConversationKind, ConversationPage, ConversationSummary, CreateGroup, GroupChange, GroupLimits,
    GroupOp, GroupOutcome, ReadMark, ReadMarkKind, ReadOutcome, Receipt,
};
use peroxo_protocol::domain::{
    AppendOutcome, Deletion, Lifecycle, NewMessage, Quote, ReactionCount, StoredMessage, UserKey,
};
use peroxo_protocol::event::{
    Event, EventKind, Fanout, Member, Refusal, RefusalCode, Role, StreamEvent, StreamSeq,
};
use peroxo_protocol::lifecycle::{MessageChange, MessageLimits, MessageOp, MessageOutcome};
use peroxo_protocol::outbox::{
    ConsumerLease, MAX_RECORDED_PAYLOAD_BYTES, NewOutboxEvent, OutboxEvent, OutboxKind, OutboxPage,
    is_json_object,
};
use peroxo_protocol::restriction::Restriction;

/// A protobuf message that has no Rust counterpart; the text says what is wrong.
#[derive(Debug)]
pub(super) struct Malformed(String);

impl Malformed {
    fn missing(what: &str) -> Self {
        Self(format!("{what} is missing"))
    }
}

impl From<Malformed> for Status {
    fn from(e: Malformed) -> Self {
        Status::invalid_argument(e.0)
    }
}

impl From<Malformed> for CallError {
    fn from(e: Malformed) -> Self {
        CallError::Unavailable(format!(
            "the storage service sent a malformed answer: {}",
            e.0
        ))
    }
}

pub(super) fn new_message_from_pb(m: pb::NewMessage) -> NewMessage {
    NewMessage {
        tenant: m.tenant,
        sender: m.sender,
        recipient: m.recipient,
        client_msg_id: m.client_msg_id,
        text: m.text,
        reply_to: m.reply_to,
    }
}

pub(super) fn new_message_to_pb(m: NewMessage) -> pb::NewMessage {
    pb::NewMessage {
        tenant: m.tenant,
        sender: m.sender,
        recipient: m.recipient,
        client_msg_id: m.client_msg_id,
        text: m.text,
        reply_to: m.reply_to,
    }
}

pub(super) fn message_to_pb(m: StoredMessage) -> pb::StoredMessage {
    pb::StoredMessage {
        message_id: m.message_id,
        tenant: m.tenant,
        sender: m.sender,
        recipient: m.recipient,
        client_msg_id: m.client_msg_id,
        text: m.text,
        ts: m.ts,
        sender_seq: m.sender_seq,
        recipient_seq: m.recipient_seq,
        lifecycle: (!m.lifecycle.is_empty()).then(|| lifecycle_to_pb(m.lifecycle)),
    }
}

fn lifecycle_to_pb(l: Lifecycle) -> pb::Lifecycle {
    pb::Lifecycle {
        reply_to: l.reply_to.map(|q| pb::Quote {
            message_id: q.message_id,
            sender: q.sender,
            excerpt: q.excerpt,
            deleted: q.deleted,
        }),
        edited_ts: l.edited_ts,
        deleted: l.deleted.map(|d| pb::Deletion { by: d.by, ts: d.ts }),
        reactions: l
            .reactions
            .into_iter()
            .map(|r| pb::ReactionCount {
                emoji: r.emoji,
                count: r.count,
                mine: r.mine,
            })
            .collect(),
    }
}

fn lifecycle_from_pb(l: pb::Lifecycle) -> Lifecycle {
    Lifecycle {
        reply_to: l.reply_to.map(|q| {
            Box::new(Quote {
                message_id: q.message_id,
                sender: q.sender,
                excerpt: q.excerpt,
                deleted: q.deleted,
            })
        }),
        edited_ts: l.edited_ts,
        deleted: l.deleted.map(|d| Box::new(Deletion { by: d.by, ts: d.ts })),
        reactions: l
            .reactions
            .into_iter()
            .map(|r| ReactionCount {
                emoji: r.emoji,
                count: r.count,
                mine: r.mine,
            })
            .collect(),
    }
}

pub(super) fn message_from_pb(m: pb::StoredMessage) -> StoredMessage {
    StoredMessage {
        message_id: m.message_id,
        tenant: m.tenant,
        sender: m.sender,
        recipient: m.recipient,
        client_msg_id: m.client_msg_id,
        text: m.text,
        ts: m.ts,
        sender_seq: m.sender_seq,
        recipient_seq: m.recipient_seq,
        lifecycle: m.lifecycle.map(lifecycle_from_pb).unwrap_or_default(),
    }
}

pub(super) fn outcome_to_pb(outcome: AppendOutcome) -> pb::AppendResult {
    match outcome {
        AppendOutcome::Stored {
            message,
            duplicate,
            members,
        } => pb::AppendResult {
            outcome: Some(pb::append_result::Outcome::Stored(message_to_pb(message))),
            duplicate,
            refusal_code: String::new(),
            members: members.into_iter().map(stream_seq_to_pb).collect(),
        },
        AppendOutcome::Rejected(refusal) => pb::AppendResult {
            outcome: Some(pb::append_result::Outcome::Rejected(refusal.message)),
            duplicate: false,
            refusal_code: refusal.code.as_str().to_owned(),
            members: Vec::new(),
        },
    }
}

pub(super) fn outcome_from_pb(result: pb::AppendResult) -> AppendOutcome {
    match result.outcome {
        Some(pb::append_result::Outcome::Stored(message)) => AppendOutcome::Stored {
            message: message_from_pb(message),
            duplicate: result.duplicate,
            members: result.members.into_iter().map(stream_seq_from_pb).collect(),
        },
        Some(pb::append_result::Outcome::Rejected(reason)) => AppendOutcome::Rejected(
            Refusal::new(refusal_code_from_pb(&result.refusal_code), reason),
        ),
        None => AppendOutcome::Rejected(Refusal::new(
            RefusalCode::BadRequest,
            "the storage service sent an empty result",
        )),
    }
}

/// A refusal code as the service sent it; an empty or unknown one (from a newer service)
/// counts as `bad_request`, which no client retries.
pub(super) fn refusal_code_from_pb(code: &str) -> RefusalCode {
    RefusalCode::parse(code).unwrap_or(RefusalCode::BadRequest)
}

fn stream_seq_to_pb(s: StreamSeq) -> pb::StreamSeq {
    pb::StreamSeq {
        user: s.user,
        seq: s.seq,
    }
}

fn stream_seq_from_pb(s: pb::StreamSeq) -> StreamSeq {
    StreamSeq {
        user: s.user,
        seq: s.seq,
    }
}

fn role_to_pb(role: Role) -> i32 {
    let role = match role {
        Role::Owner => pb::Role::Owner,
        Role::Admin => pb::Role::Admin,
        Role::Member => pb::Role::Member,
    };
    role.into()
}

fn role_from_pb(role: i32) -> Result<Role, Malformed> {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Owner) => Ok(Role::Owner),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Member) => Ok(Role::Member),
        Ok(pb::Role::Unspecified) | Err(_) => Err(Malformed(format!("unknown role {role}"))),
    }
}

fn event_to_pb(e: Event) -> pb::Event {
    use pb::event::Kind;
    let kind = match e.kind {
        EventKind::GroupCreated {
            title,
            member_count,
        } => Kind::GroupCreated(pb::GroupCreated {
            title,
            member_count,
        }),
        EventKind::MembersAdded { users } => Kind::MembersAdded(pb::MembersAdded { users }),
        EventKind::MemberLeft { user } => Kind::MemberLeft(pb::MemberLeft { user }),
        EventKind::RoleChanged { user, role } => Kind::RoleChanged(pb::RoleChanged {
            user,
            role: role_to_pb(role),
        }),
        EventKind::GroupRenamed { title } => Kind::GroupRenamed(pb::GroupRenamed { title }),
        EventKind::ReadMarker {
            message_id,
            unread_count,
        } => Kind::ReadMarker(pb::ReadMarker {
            message_id,
            unread_count,
        }),
        EventKind::ReadReceipt { message_id } => Kind::ReadReceipt(pb::ReadReceipt { message_id }),
        EventKind::MessageEdited { message_id, text } => {
            Kind::MessageEdited(pb::MessageEdited { message_id, text })
        }
        EventKind::MessageDeleted {
            message_id,
            moderated,
        } => Kind::MessageDeleted(pb::MessageDeleted {
            message_id,
            moderated,
        }),
        EventKind::ReactionAdded { message_id, emoji } => {
            Kind::ReactionAdded(pb::Reaction { message_id, emoji })
        }
        EventKind::ReactionRemoved { message_id, emoji } => {
            Kind::ReactionRemoved(pb::Reaction { message_id, emoji })
        }
    };
    pb::Event {
        event_id: e.event_id,
        tenant: e.tenant,
        conversation_id: e.conversation_id,
        actor: e.actor,
        ts: e.ts,
        kind: Some(kind),
    }
}

fn event_from_pb(e: pb::Event) -> Result<Event, Malformed> {
    use pb::event::Kind;
    let kind = match e
        .kind
        .ok_or_else(|| Malformed::missing("an event's kind"))?
    {
        Kind::GroupCreated(k) => EventKind::GroupCreated {
            title: k.title,
            member_count: k.member_count,
        },
        Kind::MembersAdded(k) => EventKind::MembersAdded { users: k.users },
        Kind::MemberLeft(k) => EventKind::MemberLeft { user: k.user },
        Kind::RoleChanged(k) => EventKind::RoleChanged {
            user: k.user,
            role: role_from_pb(k.role)?,
        },
        Kind::GroupRenamed(k) => EventKind::GroupRenamed { title: k.title },
        Kind::ReadMarker(k) => EventKind::ReadMarker {
            message_id: k.message_id,
            unread_count: k.unread_count,
        },
        Kind::ReadReceipt(k) => EventKind::ReadReceipt {
            message_id: k.message_id,
        },
        Kind::MessageEdited(k) => EventKind::MessageEdited {
            message_id: k.message_id,
            text: k.text,
        },
        Kind::MessageDeleted(k) => EventKind::MessageDeleted {
            message_id: k.message_id,
            moderated: k.moderated,
        },
        Kind::ReactionAdded(k) => EventKind::ReactionAdded {
            message_id: k.message_id,
            emoji: k.emoji,
        },
        Kind::ReactionRemoved(k) => EventKind::ReactionRemoved {
            message_id: k.message_id,
            emoji: k.emoji,
        },
    };
    Ok(Event {
        event_id: e.event_id,
        tenant: e.tenant,
        conversation_id: e.conversation_id,
        actor: e.actor,
        ts: e.ts,
        kind,
    })
}

fn fanout_to_pb(f: Fanout) -> pb::Fanout {
    pb::Fanout {
        event: Some(event_to_pb(f.event)),
        seqs: f.seqs.into_iter().map(stream_seq_to_pb).collect(),
    }
}

fn fanout_from_pb(f: pb::Fanout) -> Result<Fanout, Malformed> {
    Ok(Fanout {
        event: event_from_pb(
            f.event
                .ok_or_else(|| Malformed::missing("a fanout's event"))?,
        )?,
        seqs: f.seqs.into_iter().map(stream_seq_from_pb).collect(),
    })
}

pub(super) fn stream_event_to_pb(e: StreamEvent) -> pb::StreamEvent {
    pb::StreamEvent {
        seq: e.seq,
        event: Some(event_to_pb(e.event)),
    }
}

pub(super) fn stream_event_from_pb(e: pb::StreamEvent) -> Result<StreamEvent, Malformed> {
    Ok(StreamEvent {
        seq: e.seq,
        event: event_from_pb(
            e.event
                .ok_or_else(|| Malformed::missing("a stream entry's event"))?,
        )?,
    })
}

fn limits_to_pb(l: GroupLimits) -> pb::GroupLimits {
    pb::GroupLimits {
        max_members: l.max_members,
        max_groups_per_user: l.max_groups_per_user,
        max_title_bytes: l.max_title_bytes,
    }
}

fn limits_from_pb(l: Option<pb::GroupLimits>) -> Result<GroupLimits, Malformed> {
    let l = l.ok_or_else(|| Malformed::missing("limits"))?;
    Ok(GroupLimits {
        max_members: l.max_members,
        max_groups_per_user: l.max_groups_per_user,
        max_title_bytes: l.max_title_bytes,
    })
}

pub(super) fn create_group_to_pb(r: CreateGroup) -> pb::CreateGroupRequest {
    pb::CreateGroupRequest {
        tenant: r.creator.tenant.clone(),
        creator: r.creator.user.clone(),
        client_msg_id: r.client_msg_id,
        title: r.title,
        members: r.members,
        limits: Some(limits_to_pb(r.limits)),
    }
}

/// The request, its creator not yet checked.
pub(super) fn create_group_from_pb(r: pb::CreateGroupRequest) -> Result<CreateGroup, Malformed> {
    Ok(CreateGroup {
        creator: UserKey::new(r.tenant, r.creator),
        client_msg_id: r.client_msg_id,
        title: r.title,
        members: r.members,
        limits: limits_from_pb(r.limits)?,
    })
}

pub(super) fn group_change_to_pb(r: GroupChange) -> pb::ChangeGroupRequest {
    use pb::change_group_request as op;
    let op = match r.op {
        GroupOp::Rename { title } => op::Op::Rename(op::Rename { title }),
        GroupOp::AddMembers { users } => op::Op::AddMembers(op::AddMembers { users }),
        GroupOp::RemoveMember { user } => op::Op::RemoveMember(op::RemoveMember { user }),
        GroupOp::Leave => op::Op::Leave(op::Leave {}),
        GroupOp::SetRole { user, role } => op::Op::SetRole(op::SetRole {
            user,
            role: role_to_pb(role),
        }),
    };
    pb::ChangeGroupRequest {
        tenant: r.actor.tenant.clone(),
        actor: r.actor.user.clone(),
        conversation_id: r.conversation_id,
        limits: Some(limits_to_pb(r.limits)),
        op: Some(op),
    }
}

/// The request, its actor and conversation id not yet checked.
pub(super) fn group_change_from_pb(r: pb::ChangeGroupRequest) -> Result<GroupChange, Malformed> {
    use pb::change_group_request::Op;
    let op = match r.op.ok_or_else(|| Malformed::missing("op"))? {
        Op::Rename(o) => GroupOp::Rename { title: o.title },
        Op::AddMembers(o) => GroupOp::AddMembers { users: o.users },
        Op::RemoveMember(o) => GroupOp::RemoveMember { user: o.user },
        Op::Leave(_) => GroupOp::Leave,
        Op::SetRole(o) => GroupOp::SetRole {
            user: o.user,
            role: role_from_pb(o.role)?,
        },
    };
    Ok(GroupChange {
        actor: UserKey::new(r.tenant, r.actor),
        conversation_id: r.conversation_id,
        op,
        limits: limits_from_pb(r.limits)?,
    })
}

pub(super) fn group_outcome_to_pb(o: GroupOutcome) -> pb::GroupResponse {
    pb::GroupResponse {
        conversation_id: o.conversation_id,
        events: o.events.into_iter().map(fanout_to_pb).collect(),
        duplicate: o.duplicate,
    }
}

pub(super) fn group_outcome_from_pb(r: pb::GroupResponse) -> Result<GroupOutcome, Malformed> {
    Ok(GroupOutcome {
        conversation_id: r.conversation_id,
        events: r
            .events
            .into_iter()
            .map(fanout_from_pb)
            .collect::<Result<_, _>>()?,
        duplicate: r.duplicate,
    })
}

pub(super) fn member_to_pb(m: Member) -> pb::Member {
    pb::Member {
        user: m.user,
        role: role_to_pb(m.role),
        joined_ts: m.joined_ts,
    }
}

pub(super) fn member_from_pb(m: pb::Member) -> Result<Member, Malformed> {
    Ok(Member {
        user: m.user,
        role: role_from_pb(m.role)?,
        joined_ts: m.joined_ts,
    })
}

fn summary_to_pb(s: ConversationSummary) -> pb::ConversationSummary {
    use pb::conversation_summary::Kind;
    let kind = match s.kind {
        ConversationKind::Direct {
            peer,
            peer_read_marker,
        } => Kind::Direct(pb::DirectConversation {
            peer,
            peer_read_marker,
        }),
        ConversationKind::Group {
            title,
            role,
            member_count,
        } => Kind::Group(pb::GroupConversation {
            title,
            role: role_to_pb(role),
            member_count,
        }),
    };
    pb::ConversationSummary {
        conversation_id: s.conversation_id,
        kind: Some(kind),
        last_message: s.last_message.map(message_to_pb),
        unread_count: s.unread_count,
        read_marker: s.read_marker,
        activity_seq: s.activity_seq,
    }
}

fn summary_from_pb(s: pb::ConversationSummary) -> Result<ConversationSummary, Malformed> {
    use pb::conversation_summary::Kind;
    let kind = match s
        .kind
        .ok_or_else(|| Malformed::missing("a conversation's kind"))?
    {
        Kind::Direct(d) => ConversationKind::Direct {
            peer: d.peer,
            peer_read_marker: d.peer_read_marker,
        },
        Kind::Group(g) => ConversationKind::Group {
            title: g.title,
            role: role_from_pb(g.role)?,
            member_count: g.member_count,
        },
    };
    Ok(ConversationSummary {
        conversation_id: s.conversation_id,
        kind,
        last_message: s.last_message.map(message_from_pb),
        unread_count: s.unread_count,
        read_marker: s.read_marker,
        activity_seq: s.activity_seq,
    })
}

pub(super) fn conversation_page_to_pb(p: ConversationPage) -> pb::ConversationsResponse {
    pb::ConversationsResponse {
        conversations: p.conversations.into_iter().map(summary_to_pb).collect(),
        has_more: p.has_more,
        total_unread: p.total_unread,
        last_seq: p.last_seq,
    }
}

pub(super) fn conversation_page_from_pb(
    r: pb::ConversationsResponse,
) -> Result<ConversationPage, Malformed> {
    Ok(ConversationPage {
        conversations: r
            .conversations
            .into_iter()
            .map(summary_from_pb)
            .collect::<Result<_, _>>()?,
        has_more: r.has_more,
        total_unread: r.total_unread,
        last_seq: r.last_seq,
    })
}

pub(super) fn read_mark_to_pb(r: ReadMark) -> pb::MarkReadRequest {
    use pb::mark_read_request as kind;
    let kind = match r.kind {
        ReadMarkKind::Read { message_id } => kind::Kind::Read(kind::Read { message_id }),
        ReadMarkKind::Unread { message_id } => kind::Kind::Unread(kind::Unread { message_id }),
    };
    pb::MarkReadRequest {
        tenant: r.user.tenant.clone(),
        user: r.user.user.clone(),
        conversation_id: r.conversation_id,
        kind: Some(kind),
    }
}

/// The request, its user and conversation id not yet checked.
pub(super) fn read_mark_from_pb(r: pb::MarkReadRequest) -> Result<ReadMark, Malformed> {
    use pb::mark_read_request::Kind;
    let kind = match r.kind.ok_or_else(|| Malformed::missing("kind"))? {
        Kind::Read(k) => ReadMarkKind::Read {
            message_id: k.message_id,
        },
        Kind::Unread(k) => ReadMarkKind::Unread {
            message_id: k.message_id,
        },
    };
    Ok(ReadMark {
        user: UserKey::new(r.tenant, r.user),
        conversation_id: r.conversation_id,
        kind,
    })
}

pub(super) fn read_outcome_to_pb(o: ReadOutcome) -> pb::MarkReadResponse {
    pb::MarkReadResponse {
        message_id: o.message_id,
        unread_count: o.unread_count,
        marker: o.marker.map(fanout_to_pb),
        receipt: o.receipt.map(fanout_to_pb),
    }
}

pub(super) fn read_outcome_from_pb(r: pb::MarkReadResponse) -> Result<ReadOutcome, Malformed> {
    Ok(ReadOutcome {
        message_id: r.message_id,
        unread_count: r.unread_count,
        marker: r.marker.map(fanout_from_pb).transpose()?,
        receipt: r.receipt.map(fanout_from_pb).transpose()?,
    })
}

pub(super) fn message_change_to_pb(r: MessageChange) -> pb::ChangeMessageRequest {
    use pb::change_message_request::{self as change, Op};
    let op = match r.op {
        MessageOp::Edit {
            text,
            client_msg_id,
        } => Op::Edit(change::Edit {
            text,
            client_msg_id,
        }),
        MessageOp::Delete => Op::Delete(change::Delete {}),
        MessageOp::React { emoji } => Op::React(change::Emoji { emoji }),
        MessageOp::Unreact { emoji } => Op::Unreact(change::Emoji { emoji }),
    };
    pb::ChangeMessageRequest {
        tenant: r.actor.tenant.clone(),
        actor: r.actor.user.clone(),
        conversation_id: r.conversation_id,
        message_id: r.message_id,
        op: Some(op),
        limits: Some(pb::MessageLimits {
            edit_window_ms: r.limits.edit_window_ms,
            max_reactions_per_message: r.limits.max_reactions_per_message,
            max_reactions_per_user: r.limits.max_reactions_per_user,
        }),
    }
}

pub(super) fn message_change_from_pb(
    r: pb::ChangeMessageRequest,
) -> Result<MessageChange, Malformed> {
    use pb::change_message_request::Op;
    let op = match r.op.ok_or_else(|| Malformed::missing("a change's op"))? {
        Op::Edit(e) => MessageOp::Edit {
            text: e.text,
            client_msg_id: e.client_msg_id,
        },
        Op::Delete(_) => MessageOp::Delete,
        Op::React(e) => MessageOp::React { emoji: e.emoji },
        Op::Unreact(e) => MessageOp::Unreact { emoji: e.emoji },
    };
    let limits = r.limits.ok_or_else(|| Malformed::missing("limits"))?;
    Ok(MessageChange {
        actor: UserKey::new(r.tenant, r.actor),
        conversation_id: r.conversation_id,
        message_id: r.message_id,
        op,
        limits: MessageLimits {
            edit_window_ms: limits.edit_window_ms,
            max_reactions_per_message: limits.max_reactions_per_message,
            max_reactions_per_user: limits.max_reactions_per_user,
        },
    })
}

pub(super) fn message_outcome_to_pb(o: MessageOutcome) -> pb::ChangeMessageResponse {
    pb::ChangeMessageResponse {
        message: Some(message_to_pb(o.message)),
        event: o.event.map(fanout_to_pb),
        duplicate: o.duplicate,
    }
}

pub(super) fn message_outcome_from_pb(
    r: pb::ChangeMessageResponse,
) -> Result<MessageOutcome, Malformed> {
    Ok(MessageOutcome {
        message: message_from_pb(
            r.message
                .ok_or_else(|| Malformed::missing("the changed message"))?,
        ),
        event: r.event.map(fanout_from_pb).transpose()?,
        duplicate: r.duplicate,
    })
}

pub(super) fn receipt_to_pb(r: Receipt) -> pb::Receipt {
    pb::Receipt {
        user: r.user,
        read_marker: r.read_marker,
    }
}

pub(super) fn receipt_from_pb(r: pb::Receipt) -> Receipt {
    Receipt {
        user: r.user,
        read_marker: r.read_marker,
    }
}

pub(super) fn outbox_page_to_pb(page: OutboxPage) -> pb::EventsResponse {
    pb::EventsResponse {
        events: page
            .events
            .into_iter()
            .map(|e| pb::OutboxEvent {
                id: e.id,
                tenant: e.tenant,
                ts: e.ts,
                kind: e.kind.name().to_owned(),
                conversation_id: e.conversation_id,
                payload: e.payload,
            })
            .collect(),
        next_after: page.next_after,
        pruned_until: page.pruned_until,
    }
}

pub(super) fn outbox_page_from_pb(r: pb::EventsResponse) -> Result<OutboxPage, Malformed> {
    let events = r
        .events
        .into_iter()
        .map(|e| {
            Ok(OutboxEvent {
                kind: OutboxKind::parse(&e.kind)
                    .ok_or_else(|| Malformed(format!("unknown outbox event kind {:?}", e.kind)))?,
                id: e.id,
                tenant: e.tenant,
                ts: e.ts,
                conversation_id: e.conversation_id,
                payload: e.payload,
            })
        })
        .collect::<Result<_, Malformed>>()?;
    Ok(OutboxPage {
        events,
        next_after: r.next_after,
        pruned_until: r.pruned_until,
    })
}

pub(super) fn lease_to_pb(lease: Option<ConsumerLease>) -> pb::ClaimConsumerResponse {
    match lease {
        Some(lease) => pb::ClaimConsumerResponse {
            leased: true,
            cursor: lease.cursor,
            expires_at: lease.expires_at,
        },
        None => pb::ClaimConsumerResponse::default(),
    }
}

pub(super) fn lease_from_pb(r: pb::ClaimConsumerResponse) -> Option<ConsumerLease> {
    r.leased.then_some(ConsumerLease {
        cursor: r.cursor,
        expires_at: r.expires_at,
    })
}

pub(super) fn new_outbox_event_to_pb(event: NewOutboxEvent) -> pb::NewOutboxEvent {
    pb::NewOutboxEvent {
        kind: event.kind.name().to_owned(),
        conversation_id: event.conversation_id,
        payload: event.payload,
    }
}

/// An event to record: a known kind, a conversation id of at most 256 bytes, and a JSON
/// object of at most [`MAX_RECORDED_PAYLOAD_BYTES`].
pub(super) fn new_outbox_event_from_pb(e: pb::NewOutboxEvent) -> Result<NewOutboxEvent, Malformed> {
    let kind = OutboxKind::parse(&e.kind)
        .ok_or_else(|| Malformed(format!("unknown outbox event kind {:?}", e.kind)))?;
    if e.conversation_id.len() > 256 {
        return Err(Malformed(
            "conversation_id is longer than 256 bytes".to_owned(),
        ));
    }
    if e.payload.len() > MAX_RECORDED_PAYLOAD_BYTES || !is_json_object(&e.payload) {
        return Err(Malformed(format!(
            "payload must be a JSON object of at most {MAX_RECORDED_PAYLOAD_BYTES} bytes"
        )));
    }
    Ok(NewOutboxEvent {
        kind,
        conversation_id: e.conversation_id,
        payload: e.payload,
    })
}

/// A restriction as the protobuf carries it.
pub(super) fn restriction_to_pb(r: Restriction) -> pb::Restriction {
    pb::Restriction {
        banned_until: r.banned_until,
        ban_reason: r.ban_reason,
        tokens_before: r.tokens_before,
    }
}

pub(super) fn restriction_from_pb(r: pb::Restriction) -> Restriction {
    Restriction {
        banned_until: r.banned_until,
        ban_reason: r.ban_reason,
        tokens_before: r.tokens_before,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> Event {
        Event {
            event_id: 7,
            tenant: "t".to_owned(),
            conversation_id: "g~0123456789abcdef01234567".to_owned(),
            actor: "alice".to_owned(),
            ts: 1_000,
            kind,
        }
    }

    #[test]
    fn every_event_kind_survives_the_wire() {
        let kinds = [
            EventKind::GroupCreated {
                title: "Team".to_owned(),
                member_count: 3,
            },
            EventKind::MembersAdded {
                users: vec!["bob".to_owned(), "carol".to_owned()],
            },
            EventKind::MemberLeft {
                user: "bob".to_owned(),
            },
            EventKind::RoleChanged {
                user: "bob".to_owned(),
                role: Role::Admin,
            },
            EventKind::GroupRenamed {
                title: "Crew".to_owned(),
            },
            EventKind::ReadMarker {
                message_id: 4,
                unread_count: 2,
            },
            EventKind::ReadReceipt { message_id: 4 },
        ];
        for kind in kinds {
            let fanout = Fanout {
                event: event(kind),
                seqs: vec![StreamSeq {
                    user: "alice".to_owned(),
                    seq: 9,
                }],
            };
            let back = fanout_from_pb(fanout_to_pb(fanout.clone())).unwrap();
            assert_eq!(back, fanout);
        }
    }

    #[test]
    fn every_group_change_survives_the_wire() {
        let limits = GroupLimits {
            max_members: 10,
            max_groups_per_user: 5,
            max_title_bytes: 64,
        };
        let ops = [
            GroupOp::Rename {
                title: "Crew".to_owned(),
            },
            GroupOp::AddMembers {
                users: vec!["bob".to_owned()],
            },
            GroupOp::RemoveMember {
                user: "bob".to_owned(),
            },
            GroupOp::Leave,
            GroupOp::SetRole {
                user: "bob".to_owned(),
                role: Role::Owner,
            },
        ];
        for op in ops {
            let change = GroupChange {
                actor: UserKey::new("t", "alice"),
                conversation_id: "g~0123456789abcdef01234567".to_owned(),
                op,
                limits,
            };
            let back = group_change_from_pb(group_change_to_pb(change.clone())).unwrap();
            assert_eq!(back, change);
        }
    }

    #[test]
    fn read_marks_keep_an_absent_message_id_apart_from_zero() {
        for kind in [
            ReadMarkKind::Read { message_id: 3 },
            ReadMarkKind::Unread { message_id: None },
            ReadMarkKind::Unread {
                message_id: Some(0),
            },
        ] {
            let mark = ReadMark {
                user: UserKey::new("t", "alice"),
                conversation_id: "alice:bob".to_owned(),
                kind,
            };
            assert_eq!(
                read_mark_from_pb(read_mark_to_pb(mark.clone())).unwrap(),
                mark
            );
        }
    }

    #[test]
    fn an_unknown_role_or_a_missing_kind_is_malformed() {
        assert!(role_from_pb(0).is_err());
        assert!(role_from_pb(99).is_err());
        let mut pb_event = event_to_pb(event(EventKind::ReadReceipt { message_id: 1 }));
        pb_event.kind = None;
        assert!(event_from_pb(pb_event).is_err());
    }
}
