//! The storage service's contract, checked through its gRPC client against a real server.
//! Every backend passes the same cases; each case gets a fresh database.
//!
//! - `direct`: appends, idempotency, history and sync of direct messages.
//! - `groups`: creating groups and every change to them, with who may make it and whose
//!   streams its events enter.
//! - `group_messages`: messages to groups, history from a member's join, and sync of messages
//!   and events together.
//! - `erase`: erasing a user's texts and read state (`peroxo user erase`).
//! - `reads`: read markers, unread counts and read receipts.
//! - `lifecycle`: edits, deletes, reactions and replies (protocol 3), with their events.
//! - `conversations`: the conversation list.
//! - `outbox`: the event outbox and its feed, with its ids in commit order across instances.
//! - `consumers`: the leases and cursors of the feed's consumers.
//! - `restrictions`: bans and revoked tokens of users, and the active ones a gateway loads.
//! - `instances`: several service instances over one database, and concurrent writers.
//! - `retention`: deleting messages past their tenant's age.
//! - `stream_model`: what a user's conversation list must say, worked out from that user's
//!   stream; most cases end by checking it.
//! - `upgrade`: databases written before conversations existed.
//!
//! PostgreSQL cases use the server at `PEROXO_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, trust auth): each creates its own database
//! there and drops it afterwards. Point the variable at any PostgreSQL 13+ server where that
//! user may create databases.

use crate::common;

use crate::common::postgres::{create_database, drop_database};

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use peroxo_bench::contract::SeqAudit;
use peroxo_config::{Secret, StorageBackend};
use peroxo_protocol::conversation::{
    ConversationKind, ConversationPage, ConversationSummary, ConversationsQuery, CreateGroup,
    GroupChange, GroupLimits, GroupOp, GroupOutcome, ReadMark, ReadMarkKind, ReadOutcome,
};
use peroxo_protocol::domain::{AppendOutcome, NewMessage, StoredMessage, UserKey};
use peroxo_protocol::event::{
    Event, EventKind, Fanout, MAX_USERS_PER_CHANGE, Member, Refusal, RefusalCode, Role,
    StreamEvent, StreamSeq, is_group_id,
};
use peroxo_storage::grpc::{CallError, StorageClient};
use peroxo_storage::{HistoryQuery, SyncQuery, SyncScope};

use stream_model::assert_lists_match_streams;

/// A storage service over a fresh database, and a client of it.
struct Fixture {
    client: StorageClient,
    store: peroxo_storage::StoreServer,
    config: peroxo_config::StorageConfig,
    /// The PostgreSQL database to drop when done.
    database: Option<String>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(backend: StorageBackend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = common::test_config(dir.path()).storage;
        config.backend = backend;
        let database = match backend {
            StorageBackend::Sqlite | StorageBackend::Lsm => None,
            StorageBackend::Postgres => {
                let (name, url) = create_database().await;
                config.postgres.url = Secret::new(url);
                Some(name)
            }
        };
        let store = peroxo_storage::StoreServer::start(&config)
            .await
            .expect("store starts");
        let client = connect(store.addr).await;
        Self {
            client,
            store,
            config,
            database,
            _dir: dir,
        }
    }

    /// Stops the service and drops its database.
    async fn finish(self) {
        self.store.stop().await;
        if let Some(name) = self.database {
            drop_database(&name).await;
        }
    }
}

async fn connect(addr: std::net::SocketAddr) -> StorageClient {
    StorageClient::connect(
        &format!("http://{addr}"),
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

/// Runs each named case once per backend, as its own test (invoked in each case module).
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let f = crate::storage_contract::Fixture::new(peroxo_config::StorageBackend::Sqlite).await;
                    super::$case(&f).await;
                    f.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let f = crate::storage_contract::Fixture::new(peroxo_config::StorageBackend::Postgres).await;
                    super::$case(&f).await;
                    f.finish().await;
                }
            )*
        }
        mod lsm {
            $(
                #[tokio::test]
                async fn $case() {
                    let f = crate::storage_contract::Fixture::new(peroxo_config::StorageBackend::Lsm).await;
                    super::$case(&f).await;
                    f.finish().await;
                }
            )*
        }
    };
}

mod consumers;
mod conversations;
mod direct;
mod erase;
mod group_messages;
mod groups;
mod instances;
mod lifecycle;
mod outbox;
mod reads;
mod restrictions;
mod retention;
mod stream_model;
mod upgrade;

fn msg(tenant: &str, from: &str, to: &str, id: &str) -> NewMessage {
    NewMessage {
        tenant: tenant.into(),
        sender: from.into(),
        recipient: to.into(),
        client_msg_id: id.into(),
        text: format!("text of {id}"),
        reply_to: None,
    }
}

fn stored(outcome: &AppendOutcome) -> (&StoredMessage, bool) {
    match outcome {
        AppendOutcome::Stored {
            message, duplicate, ..
        } => (message, *duplicate),
        AppendOutcome::Rejected(reason) => panic!("unexpectedly rejected: {reason}"),
    }
}

/// Appends `batch`, resending it while the service answers `Unavailable`, as the gateway does
/// (idempotency makes a resend safe). With SQLite, an instance whose remembered seqs another
/// writer of the same file overtook fails that commit as `Unavailable` and reads them again.
async fn append_until_answered(client: &StorageClient, batch: Vec<NewMessage>) {
    let mut attempts = 0;
    while let Err(error) = client.append(batch.clone()).await {
        attempts += 1;
        assert!(
            matches!(error, CallError::Unavailable(_)) && attempts < 10,
            "append failed for good: {error}"
        );
    }
}

fn key(tenant: &str, user: &str) -> UserKey {
    UserKey::new(tenant, user)
}

/// The tenant of most cases.
const T: &str = "t";

/// The limits most cases create and change groups with.
fn limits() -> GroupLimits {
    GroupLimits {
        max_members: 6,
        max_groups_per_user: 3,
        max_title_bytes: 32,
    }
}

/// A `client_msg_id` no other request of the run uses.
fn fresh_id(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{what}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A group id no group has.
fn unknown_group() -> String {
    "g~0123456789abcdef01234567".to_owned()
}

/// A request to create a group in tenant `t`, under a fresh `client_msg_id`.
fn creation(creator: &str, title: &str, members: &[&str]) -> CreateGroup {
    CreateGroup {
        creator: key(T, creator),
        client_msg_id: fresh_id("create"),
        title: title.to_owned(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        limits: limits(),
    }
}

/// Creates a group "Team" in tenant `t` and returns its id.
async fn new_group(f: &Fixture, creator: &str, members: &[&str]) -> String {
    f.client
        .create_group(creation(creator, "Team", members))
        .await
        .unwrap()
        .conversation_id
}

/// `actor` (tenant `t`) makes `op` to `group` under [`limits`].
async fn change(
    f: &Fixture,
    actor: &str,
    group: &str,
    op: GroupOp,
) -> Result<GroupOutcome, CallError> {
    f.client
        .change_group(GroupChange {
            actor: key(T, actor),
            conversation_id: group.to_owned(),
            op,
            limits: limits(),
        })
        .await
}

/// `actor` adds `users` to `group`.
async fn add_members(f: &Fixture, actor: &str, group: &str, users: &[&str]) -> GroupOutcome {
    let users = users.iter().map(|u| (*u).to_owned()).collect();
    change(f, actor, group, GroupOp::AddMembers { users })
        .await
        .unwrap()
}

/// `actor` gives `user` of `group` a new `role`.
async fn set_role(f: &Fixture, actor: &str, group: &str, user: &str, role: Role) -> GroupOutcome {
    let user = user.to_owned();
    change(f, actor, group, GroupOp::SetRole { user, role })
        .await
        .unwrap()
}

/// The one event `outcome` made.
fn only_event(outcome: &GroupOutcome) -> &Fanout {
    match &outcome.events[..] {
        [event] => event,
        events => panic!("expected one event, got {events:?}"),
    }
}

/// Sends one message in tenant `t` and returns it as stored now.
async fn send(f: &Fixture, from: &str, to: &str) -> StoredMessage {
    let outcome = send_outcome(f, from, to).await;
    let (message, duplicate) = stored(&outcome);
    assert!(!duplicate);
    message.clone()
}

/// Sends one message in tenant `t` and returns its outcome.
async fn send_outcome(f: &Fixture, from: &str, to: &str) -> AppendOutcome {
    let mut outcomes = f
        .client
        .append(vec![msg(T, from, to, &fresh_id("m"))])
        .await
        .unwrap();
    outcomes.pop().unwrap()
}

/// The refusal of an append outcome.
fn rejection(outcome: &AppendOutcome) -> &Refusal {
    match outcome {
        AppendOutcome::Rejected(refusal) => refusal,
        AppendOutcome::Stored { message, .. } => panic!("unexpectedly stored: {message:?}"),
    }
}

/// `user` (tenant `t`) moves its read marker of `conversation`.
async fn mark(
    f: &Fixture,
    user: &str,
    conversation: &str,
    kind: ReadMarkKind,
) -> Result<ReadOutcome, CallError> {
    f.client
        .mark_read(ReadMark {
            user: key(T, user),
            conversation_id: conversation.to_owned(),
            kind,
        })
        .await
}

fn read_up_to(message_id: u64) -> ReadMarkKind {
    ReadMarkKind::Read { message_id }
}

/// `user`'s history of `conversation` (tenant `t`), at most `limit` before `before`.
async fn history(
    f: &Fixture,
    user: &str,
    conversation: &str,
    before: Option<u64>,
    limit: u32,
) -> Result<Vec<StoredMessage>, CallError> {
    let seq_before = f.client.last_seq(key(T, user)).await.unwrap();
    let page = f
        .client
        .history(HistoryQuery {
            user: key(T, user),
            conversation_id: conversation.to_owned(),
            before,
            limit,
        })
        .await?;
    // The page says which seq of the user's stream it was read at.
    let seq_after = f.client.last_seq(key(T, user)).await.unwrap();
    assert!(
        (seq_before..=seq_after).contains(&page.last_seq),
        "history read at seq {} outside {seq_before}..={seq_after}",
        page.last_seq
    );
    Ok(page.messages)
}

/// Waits until the clock is past `ts`, so that what commits next is newer.
async fn wait_past(ts: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while peroxo_protocol::domain::now_ms() <= ts {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the clock stands still"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `user`'s whole conversation list (tenant `t`).
async fn list(f: &Fixture, user: &str) -> ConversationPage {
    stream_model::whole_list(&f.client, &key(T, user)).await
}

/// The entry of `conversation` in `page`.
fn entry<'p>(page: &'p ConversationPage, conversation: &str) -> &'p ConversationSummary {
    page.conversations
        .iter()
        .find(|c| c.conversation_id == conversation)
        .unwrap_or_else(|| panic!("{conversation} is not in the list: {page:?}"))
}

/// The events of `user`'s stream (tenant `t`), in seq order.
async fn events_of(f: &Fixture, user: &str) -> Vec<StreamEvent> {
    stream_model::read_stream(&f.client, &key(T, user))
        .await
        .events()
}

/// The (user, seq) pairs of a fanout, as `(&str, u64)` for comparison.
fn seqs(fanout: &Fanout) -> Vec<(&str, u64)> {
    fanout
        .seqs
        .iter()
        .map(|s| (s.user.as_str(), s.seq))
        .collect()
}

/// The users a fanout entered the streams of, in the order it lists them.
fn reached(fanout: &Fanout) -> Vec<&str> {
    fanout.seqs.iter().map(|s| s.user.as_str()).collect()
}

/// Checks that `fanout`'s event stands in each named stream at the named seq.
async fn assert_entered(f: &Fixture, fanout: &Fanout) {
    let users = reached(fanout);
    let mut sorted = users.clone();
    sorted.sort_unstable();
    assert_eq!(users, sorted, "a fanout lists its streams by user id");
    for StreamSeq { user, seq } in &fanout.seqs {
        let page = f
            .client
            .sync(SyncQuery {
                user: key(&fanout.event.tenant, user),
                after_seq: seq - 1,
                limit: 1,
                scope: SyncScope::Everything,
            })
            .await
            .unwrap();
        assert!(page.messages.is_empty(), "{user}'s seq {seq} is an event");
        assert_eq!(
            page.events,
            [StreamEvent {
                seq: *seq,
                event: fanout.event.clone()
            }],
            "{user}'s seq {seq}"
        );
    }
}

/// Checks what `fanout` says, who made it, and that it entered the streams of `users` (and
/// only theirs) at the seqs it names.
async fn assert_fanout(f: &Fixture, fanout: &Fanout, actor: &str, kind: EventKind, users: &[&str]) {
    assert_eq!(fanout.event.kind, kind);
    assert_eq!(fanout.event.actor, actor);
    assert_eq!(reached(fanout), users);
    assert_entered(f, fanout).await;
}

/// The refusal `result` failed with.
fn refusal<T: Debug>(result: Result<T, CallError>) -> Refusal {
    match result {
        Err(CallError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Checks that `result` is a refusal with `code` whose message names `names`.
fn assert_refused<T: Debug>(result: Result<T, CallError>, code: RefusalCode, names: &str) {
    let refusal = refusal(result);
    assert_eq!(refusal.code, code, "{refusal}");
    assert!(
        refusal.message.contains(names),
        "{refusal:?} names {names:?}"
    );
}

/// Checks that a request breaking a rule of its own was refused as a bad request naming
/// `names`: by the service as it read the request (`Rejected`), or by the backend
/// (`Refused` with `BadRequest`). Which of the two does it is the service's choice.
fn assert_bad_request<T: Debug>(result: Result<T, CallError>, names: &str) {
    match result {
        Err(CallError::Rejected(message)) => {
            assert!(message.contains(names), "{message:?} names {names:?}")
        }
        other => assert_refused(other, RefusalCode::BadRequest, names),
    }
}
