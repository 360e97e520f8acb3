//! The protocol-2 commands a Session hands off: group creation and changes, members, the
//! conversation list, read marks and receipts, group typing and group presence.
//!
//! Each runs as a task bounded by the connection's read permits (like `history` and `sync`):
//! one storage call, whose commit comes first; then the answer to the client, and the events
//! the commit made go to the Router as [`UserFrame`]s, one per stream they entered, each
//! encoded with that user's seq (persist, then deliver). Storage refusals become `error`
//! frames with their exact code.
//!
//! [`OnBehalf`] is the part that does not depend on who asked: the commit as a user and the
//! deliveries of its events; the server API (the `api` module) uses it too.
//!
//! [`stream_frames`] and [`message_frames`] build those frames; Persistence uses the latter
//! for committed group messages.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::time::Instant;

use super::context::{ConnectionContext, GatewayContext};
use super::router::{Protocols, RouterMsg, UserFrame};
use crate::connection::{Droppable, Outbound};
use peroxo_protocol::conversation::{
    ConversationPage, ConversationRef, ConversationsQuery, CreateGroup, GroupChange, GroupOp,
    GroupOutcome, ReadMark, ReadMarkKind, ReadOutcome,
};
use peroxo_protocol::domain::{SessionId, StoredMessage, UserKey};
use peroxo_protocol::event::{Fanout, Member, Role, StreamSeq};
use peroxo_protocol::lifecycle::{MessageChange, MessageOp, MessageOutcome};
use peroxo_protocol::{
    CommandKind, ConversationView, ErrorCode, EventView, MemberView, MessageView, ProtocolError,
    ReaderView, ReqId, ServerFrame,
};
use peroxo_storage::grpc::{CallError, StorageClient};

/// How long a group's member list is reused for typing and live receipts before it is read
/// again (changes made through this node drop it at once).
const MEMBERS_TTL: Duration = Duration::from_secs(5);
/// Groups whose member lists the node remembers; past this, it forgets them all.
const MEMBERS_CACHE_GROUPS: usize = 10_000;

/// Recently read member lists of groups, for the best-effort frames (typing, live receipts)
/// that should not cost a storage read each.
/// A group of a tenant: `(tenant, group id)`.
type GroupKey = (String, String);
/// A group's member list and when it was read.
type ReadMembers = (Instant, Arc<Vec<String>>);

#[derive(Default)]
pub struct MemberCache {
    /// When each group's member list was read, and the list.
    groups: Mutex<HashMap<GroupKey, ReadMembers>>,
    /// The member count each group had at its last commit seen here: what a send to it is
    /// charged (rate and outbox places) before storage says how many it reached.
    sizes: Mutex<HashMap<GroupKey, u32>>,
}

impl MemberCache {
    /// The member count of `group` as last seen here (1 when never seen).
    pub fn size(&self, tenant: &str, group: &str) -> u32 {
        self.sizes
            .lock()
            .expect("member cache poisoned")
            .get(&(tenant.to_owned(), group.to_owned()))
            .copied()
            .unwrap_or(1)
    }

    /// Remembers that `group` has `members` members.
    pub fn set_size(&self, tenant: &str, group: &str, members: u32) {
        let mut sizes = self.sizes.lock().expect("member cache poisoned");
        if sizes.len() >= MEMBERS_CACHE_GROUPS {
            sizes.clear();
        }
        sizes.insert((tenant.to_owned(), group.to_owned()), members);
    }

    fn get(&self, tenant: &str, group: &str) -> Option<Arc<Vec<String>>> {
        let groups = self.groups.lock().expect("member cache poisoned");
        groups
            .get(&(tenant.to_owned(), group.to_owned()))
            .filter(|(read_at, _)| read_at.elapsed() < MEMBERS_TTL)
            .map(|(_, members)| Arc::clone(members))
    }

    fn put(&self, tenant: &str, group: &str, members: Arc<Vec<String>>) {
        self.set_size(
            tenant,
            group,
            u32::try_from(members.len()).unwrap_or(u32::MAX),
        );
        let mut groups = self.groups.lock().expect("member cache poisoned");
        if groups.len() >= MEMBERS_CACHE_GROUPS {
            groups.clear();
        }
        groups.insert(
            (tenant.to_owned(), group.to_owned()),
            (Instant::now(), members),
        );
    }

    /// Forgets a group whose membership this node just changed.
    pub fn forget(&self, tenant: &str, group: &str) {
        self.groups
            .lock()
            .expect("member cache poisoned")
            .remove(&(tenant.to_owned(), group.to_owned()));
    }
}

/// What a conversation command needs of its session.
pub struct CommandContext {
    pub connection: Arc<ConnectionContext>,
    pub gateway: Arc<GatewayContext>,
}

impl CommandContext {
    /// Carries out one protocol-2 command that needs storage, in a task bounded by the
    /// connection's read permits. Commands of protocol 1 are not handled here.
    pub async fn run(&self, kind: CommandKind, req_id: Option<ReqId>) {
        let most = self.gateway.live.load().limits.max_reads_in_flight;
        let Some(permit) = self.connection.reads.acquire(most).await else {
            return;
        };
        let outbound = self.connection.outbound.clone();
        let Some(client) = self.gateway.storage.client() else {
            outbound.error(&unavailable(req_id));
            return;
        };
        let task = Task {
            acting: OnBehalf {
                client,
                user: self.connection.key.clone(),
                gateway: Arc::clone(&self.gateway),
            },
            protocol: self.connection.protocol,
            outbound,
        };
        // A refused `create_group` or `edit` names its `client_msg_id`, like a refused send.
        let client_msg_id = kind.client_msg_id().map(str::to_owned);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = task.run(kind, req_id.as_ref()).await {
                task.outbound.error(
                    &call_error(error)
                        .with_req_id(req_id)
                        .with_client_msg_id(client_msg_id),
                );
            }
        });
    }
}

/// One command in flight.
struct Task {
    /// The user whose command it is, and how its commits reach storage and the Router.
    acting: OnBehalf,
    /// The connection's protocol version.
    protocol: u32,
    outbound: Outbound,
}

/// Commits on behalf of one user and hands what they made to the Router: the part of a
/// command that does not depend on who asked (a connection of the user, or the server API).
/// Storage commits first; the events of a commit then go to every stream they entered.
pub struct OnBehalf {
    pub client: StorageClient,
    pub user: UserKey,
    pub gateway: Arc<GatewayContext>,
}

impl Task {
    async fn run(&self, kind: CommandKind, req_id: Option<&ReqId>) -> Result<(), CallError> {
        let req_id = req_id.map(Cow::Borrowed);
        let acting = &self.acting;
        let user = &acting.user;
        match kind {
            CommandKind::CreateGroup {
                title,
                members,
                client_msg_id,
            } => {
                let outcome = acting
                    .create_group(client_msg_id.clone(), title, members)
                    .await?;
                self.outbound.send(&ServerFrame::GroupCreated {
                    req_id,
                    client_msg_id: Cow::Borrowed(&client_msg_id),
                    conversation_id: Cow::Borrowed(&outcome.conversation_id),
                    duplicate: outcome.duplicate,
                });
            }
            CommandKind::RenameGroup {
                conversation_id,
                title,
            } => {
                self.change(conversation_id, GroupOp::Rename { title }, req_id)
                    .await?
            }
            CommandKind::AddMembers {
                conversation_id,
                users,
            } => {
                self.change(conversation_id, GroupOp::AddMembers { users }, req_id)
                    .await?;
            }
            CommandKind::RemoveMember {
                conversation_id,
                user,
            } => {
                self.change(conversation_id, GroupOp::RemoveMember { user }, req_id)
                    .await?;
            }
            CommandKind::LeaveGroup { conversation_id } => {
                self.change(conversation_id, GroupOp::Leave, req_id).await?;
            }
            CommandKind::SetRole {
                conversation_id,
                user,
                role,
            } => {
                let role = Role::parse(&role).unwrap_or(Role::Member);
                self.change(conversation_id, GroupOp::SetRole { user, role }, req_id)
                    .await?;
            }
            CommandKind::Members { conversation_id } => {
                let members = acting.member_list(&conversation_id).await?;
                self.outbound.send(&ServerFrame::Members {
                    req_id,
                    conversation_id: Cow::Borrowed(&conversation_id),
                    members: members.iter().map(MemberView::of).collect(),
                });
            }
            CommandKind::Conversations { before, limit } => {
                let page = acting
                    .client
                    .conversations(ConversationsQuery {
                        user: user.clone(),
                        before,
                        limit,
                    })
                    .await?;
                self.outbound.send(&conversations_frame(
                    &page,
                    &user.user,
                    self.protocol,
                    req_id,
                ));
            }
            CommandKind::MarkRead {
                conversation_id,
                message_id,
            } => {
                let kind = ReadMarkKind::Read { message_id };
                self.mark(conversation_id, kind, req_id).await?;
            }
            CommandKind::MarkUnread {
                conversation_id,
                message_id,
            } => {
                let kind = ReadMarkKind::Unread { message_id };
                self.mark(conversation_id, kind, req_id).await?;
            }
            CommandKind::ReadReceipts {
                conversation_id,
                message_id,
            } => {
                let readers = acting
                    .client
                    .read_receipts(user.clone(), conversation_id.clone(), message_id)
                    .await?;
                self.outbound.send(&ServerFrame::ReadReceipts {
                    req_id,
                    conversation_id: Cow::Borrowed(&conversation_id),
                    message_id: message_id.to_string(),
                    readers: readers.iter().map(ReaderView::of).collect(),
                });
            }
            CommandKind::TypingInConversation { conversation_id } => {
                acting.typing(&conversation_id).await?;
            }
            CommandKind::Edit {
                conversation_id,
                message_id,
                text,
                client_msg_id,
            } => {
                let op = MessageOp::Edit {
                    text,
                    client_msg_id,
                };
                self.change_message(conversation_id, message_id, op, req_id)
                    .await?;
            }
            CommandKind::Delete {
                conversation_id,
                message_id,
            } => {
                self.change_message(conversation_id, message_id, MessageOp::Delete, req_id)
                    .await?;
            }
            CommandKind::React {
                conversation_id,
                message_id,
                emoji,
            } => {
                let op = MessageOp::React { emoji };
                self.change_message(conversation_id, message_id, op, req_id)
                    .await?;
            }
            CommandKind::Unreact {
                conversation_id,
                message_id,
                emoji,
            } => {
                let op = MessageOp::Unreact { emoji };
                self.change_message(conversation_id, message_id, op, req_id)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Edits, deletes or reacts to a message: the answer is the message as it is now.
    async fn change_message(
        &self,
        conversation_id: String,
        message_id: u64,
        op: MessageOp,
        req_id: Option<Cow<'_, ReqId>>,
    ) -> Result<(), CallError> {
        let client_msg_id = match &op {
            MessageOp::Edit { client_msg_id, .. } => Some(client_msg_id.clone()),
            _ => None,
        };
        let user = &self.acting.user.user;
        let outcome = self
            .acting
            .change_message(conversation_id, message_id, op)
            .await?;
        self.outbound.send(&ServerFrame::MessageState {
            req_id,
            client_msg_id: client_msg_id.as_deref().map(Cow::Borrowed),
            message: MessageView::of(&outcome.message, user),
            duplicate: outcome.duplicate,
            seq: outcome.event.as_ref().and_then(|fanout| {
                let mine = fanout.seqs.iter().find(|s| s.user == *user);
                mine.map(|s| s.seq)
            }),
        });
        Ok(())
    }

    async fn change(
        &self,
        conversation_id: String,
        op: GroupOp,
        req_id: Option<Cow<'_, ReqId>>,
    ) -> Result<(), CallError> {
        self.acting.change_group(&conversation_id, op).await?;
        self.outbound.send(&ServerFrame::Done {
            req_id,
            conversation_id: Cow::Borrowed(&conversation_id),
        });
        Ok(())
    }

    async fn mark(
        &self,
        conversation_id: String,
        kind: ReadMarkKind,
        req_id: Option<Cow<'_, ReqId>>,
    ) -> Result<(), CallError> {
        let outcome = self.acting.mark(&conversation_id, kind).await?;
        self.outbound.send(&ServerFrame::ReadState {
            req_id,
            conversation_id: Cow::Borrowed(&conversation_id),
            read_marker: outcome.message_id.to_string(),
            unread_count: outcome.unread_count,
        });
        Ok(())
    }
}

/// The `conversations` answer to `user` of `protocol` for a page of the list.
pub fn conversations_frame<'a>(
    page: &'a ConversationPage,
    user: &'a str,
    protocol: u32,
    req_id: Option<Cow<'a, ReqId>>,
) -> ServerFrame<'a> {
    let next_before = page
        .conversations
        .last()
        .filter(|_| page.has_more)
        .map(|c| c.activity_seq.to_string());
    ServerFrame::Conversations {
        req_id,
        conversations: page
            .conversations
            .iter()
            .map(|c| {
                let mut view = ConversationView::of(c, user);
                if !Protocols::LIFECYCLE.admits(protocol) {
                    view.last_message = view.last_message.map(MessageView::without_lifecycle);
                }
                view
            })
            .collect(),
        next_before,
        total_unread: page.total_unread,
        last_seq: Protocols::LIFECYCLE
            .admits(protocol)
            .then_some(page.last_seq),
    }
}

impl OnBehalf {
    /// Creates a group with the user as owner; its events go to every initial member.
    pub async fn create_group(
        &self,
        client_msg_id: String,
        title: String,
        members: Vec<String>,
    ) -> Result<GroupOutcome, CallError> {
        let outcome = self
            .client
            .create_group(CreateGroup {
                creator: self.user.clone(),
                client_msg_id,
                title,
                members,
                limits: self.gateway.live.load().groups.limits(),
            })
            .await?;
        self.deliver_events(&outcome.events);
        Ok(outcome)
    }

    /// Changes a group as the user (who must be allowed to); its events go to every stream
    /// they entered.
    pub async fn change_group(
        &self,
        conversation_id: &str,
        op: GroupOp,
    ) -> Result<GroupOutcome, CallError> {
        let outcome = self
            .client
            .change_group(GroupChange {
                actor: self.user.clone(),
                conversation_id: conversation_id.to_owned(),
                op,
                limits: self.gateway.live.load().groups.limits(),
            })
            .await?;
        self.gateway
            .member_cache
            .forget(&self.user.tenant, conversation_id);
        self.deliver_events(&outcome.events);
        Ok(outcome)
    }

    /// Edits, deletes or reacts to a message as the user; the change's event goes to
    /// everyone who can see the message.
    pub async fn change_message(
        &self,
        conversation_id: String,
        message_id: u64,
        op: MessageOp,
    ) -> Result<MessageOutcome, CallError> {
        let outcome = self
            .client
            .change_message(MessageChange {
                actor: self.user.clone(),
                conversation_id,
                message_id,
                op,
                limits: self.gateway.live.load().messages.limits(),
            })
            .await?;
        self.deliver_events(outcome.event.as_slice());
        Ok(outcome)
    }

    /// Moves the user's read marker: the marker's event goes to the user's devices, a
    /// durable receipt to a direct peer, a live receipt to a small group's members.
    pub async fn mark(
        &self,
        conversation_id: &str,
        kind: ReadMarkKind,
    ) -> Result<ReadOutcome, CallError> {
        let outcome = self
            .client
            .mark_read(ReadMark {
                user: self.user.clone(),
                conversation_id: conversation_id.to_owned(),
                kind,
            })
            .await?;
        let moved_forward = matches!(kind, ReadMarkKind::Read { .. }) && outcome.marker.is_some();
        let events: Vec<Fanout> = outcome
            .marker
            .iter()
            .chain(&outcome.receipt)
            .cloned()
            .collect();
        self.deliver_events(&events);
        if moved_forward
            && matches!(
                ConversationRef::parse(conversation_id),
                Ok(ConversationRef::Group(_))
            )
        {
            let receipt = ServerFrame::Receipt {
                conversation_id: Cow::Borrowed(conversation_id),
                user: Cow::Borrowed(&self.user.user),
                message_id: outcome.message_id.to_string(),
            };
            // The mark is committed already, and a live receipt is best-effort: failing to
            // read the members for it (storage unreachable since the mark) must not fail
            // the mark.
            if let Err(error) = self.to_live_members(conversation_id, &receipt).await {
                tracing::debug!(%error, conversation = %conversation_id, "live receipt not sent");
            }
        }
        Ok(outcome)
    }

    /// The members of a group, for one of them (which refreshes the node's cache).
    pub async fn member_list(&self, conversation_id: &str) -> Result<Vec<Member>, CallError> {
        let members = self
            .client
            .members(self.user.clone(), conversation_id.to_owned())
            .await?;
        let names = Arc::new(members.iter().map(|m| m.user.clone()).collect());
        self.gateway
            .member_cache
            .put(&self.user.tenant, conversation_id, names);
        Ok(members)
    }

    /// Typing in a direct conversation goes to the peer; in a group, to every other member
    /// (groups up to `groups.live_receipts_max_members`).
    async fn typing(&self, conversation_id: &str) -> Result<(), CallError> {
        match ConversationRef::parse(conversation_id) {
            Ok(ConversationRef::Group(_)) => {
                let typing = ServerFrame::Typing {
                    from: Cow::Borrowed(&self.user.user),
                    conversation_id: Some(Cow::Borrowed(conversation_id)),
                };
                self.to_live_members(conversation_id, &typing).await
            }
            Ok(direct) => {
                let Some(peer) = direct.peer_of(&self.user.user) else {
                    return Err(not_in_conversation());
                };
                let _ = self.gateway.router.cast(RouterMsg::Typing {
                    from: self.user.clone(),
                    to: peer.to_owned(),
                });
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    /// Sends a droppable `frame` to the other members of a group small enough for live
    /// receipts. Refused when the user is not a member.
    async fn to_live_members(&self, group: &str, frame: &ServerFrame<'_>) -> Result<(), CallError> {
        let members = self.members(group).await?;
        if !members.contains(&self.user.user) {
            return Err(not_in_conversation());
        }
        if members.len() > self.gateway.live.load().groups.live_receipts_max_members as usize {
            return Ok(());
        }
        let text = Utf8Bytes::from(frame.encode());
        let frames = members
            .iter()
            .filter(|m| **m != self.user.user)
            .map(|m| UserFrame {
                user: self.user.peer(m.clone()),
                text: text.clone(),
                droppable: Droppable::Yes,
                skip: None,
                protocols: Protocols::CONVERSATIONS,
            })
            .collect();
        let _ = self.gateway.router.cast(RouterMsg::DeliverFrames(frames));
        Ok(())
    }

    async fn members(&self, group: &str) -> Result<Arc<Vec<String>>, CallError> {
        let cache = &self.gateway.member_cache;
        if let Some(members) = cache.get(&self.user.tenant, group) {
            return Ok(members);
        }
        let members = self
            .client
            .members(self.user.clone(), group.to_owned())
            .await?;
        let names = Arc::new(members.into_iter().map(|m| m.user).collect::<Vec<_>>());
        cache.put(&self.user.tenant, group, Arc::clone(&names));
        Ok(names)
    }

    fn deliver_events(&self, events: &[Fanout]) {
        let frames: Vec<UserFrame> = events
            .iter()
            .flat_map(|fanout| stream_frames(&self.user.tenant, fanout))
            .collect();
        if !frames.is_empty() {
            let _ = self.gateway.router.cast(RouterMsg::DeliverFrames(frames));
        }
    }
}

/// The `event` frame of a committed event for every stream it entered, each with that
/// stream's seq. An event that changes a message goes to protocol-3 sessions only.
pub fn stream_frames<'a>(
    tenant: &'a str,
    fanout: &'a Fanout,
) -> impl Iterator<Item = UserFrame> + 'a {
    let protocols = if fanout.event.kind.is_lifecycle() {
        Protocols::LIFECYCLE
    } else {
        Protocols::CONVERSATIONS
    };
    fanout
        .seqs
        .iter()
        .map(move |StreamSeq { user, seq }| UserFrame {
            user: UserKey::new(tenant, user.clone()),
            text: Utf8Bytes::from(
                ServerFrame::Event(Box::new(EventView::of(&fanout.event, *seq))).encode(),
            ),
            droppable: Droppable::No,
            skip: None,
            protocols,
        })
}

/// The `message` frames of a committed group message: one for every member with its seq,
/// and the sender's copy for the sender's other connections (`origin` got the `ack`). A
/// message with fields of protocol 3 (a reply) is encoded twice: with them for protocol 3,
/// without them for protocol 2.
pub fn message_frames(
    message: &StoredMessage,
    members: &[StreamSeq],
    origin: Option<SessionId>,
) -> Vec<UserFrame> {
    let mut frames = Vec::with_capacity(members.len() + 1);
    let sender = message.sender_key();
    let copies = |view: MessageView<'_>, user: UserKey, skip: Option<SessionId>| {
        let frame = |view: MessageView<'_>, protocols| UserFrame {
            text: Utf8Bytes::from(ServerFrame::Message(view).encode()),
            user: user.clone(),
            droppable: Droppable::No,
            skip,
            protocols,
        };
        if message.lifecycle.is_empty() {
            return vec![frame(view, Protocols::CONVERSATIONS)];
        }
        let older = view.clone().without_lifecycle();
        vec![
            frame(view, Protocols::LIFECYCLE),
            frame(older, Protocols::CONVERSATIONS_ONLY),
        ]
    };
    frames.extend(copies(
        MessageView::of(message, &message.sender),
        sender.clone(),
        origin,
    ));
    for StreamSeq { user, seq } in members {
        let mut view = MessageView::of(message, user);
        view.seq = *seq;
        frames.extend(copies(view, sender.peer(user.clone()), None));
    }
    frames
}

fn unavailable(req_id: Option<ReqId>) -> ProtocolError {
    ProtocolError::new(ErrorCode::Unavailable, "storage unavailable; retry later")
        .with_req_id(req_id)
}

fn not_in_conversation() -> CallError {
    CallError::Refused(peroxo_protocol::event::Refusal::new(
        peroxo_protocol::event::RefusalCode::NotAMember,
        "you are not a member of this conversation",
    ))
}

/// The `error` frame for a failed storage call.
fn call_error(error: CallError) -> ProtocolError {
    match error {
        CallError::Rejected(reason) => ProtocolError::new(ErrorCode::BadRequest, reason),
        CallError::Unavailable(_) => {
            ProtocolError::new(ErrorCode::Unavailable, "storage unavailable; retry later")
        }
        CallError::Refused(refusal) => ProtocolError::from(refusal),
    }
}
