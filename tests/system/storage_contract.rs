//! The storage service's contract, checked through its gRPC client against a real server.
//! Every backend passes the same cases; each case gets a fresh database.
//!
//! PostgreSQL cases use the server at `PEROXO_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, trust auth): each creates its own database
//! there and drops it afterwards. Point the variable at any PostgreSQL 13+ server where that
//! user may create databases.

use crate::common;

use crate::common::postgres::{admin, fresh_database_name, url_of};

use std::time::Duration;

use peroxo_config::{Secret, StorageBackend};
use peroxo_protocol::domain::{AppendOutcome, NewMessage, StoredMessage, UserKey};
use peroxo_storage::grpc::{CallError, StorageClient};
use peroxo_storage::{HistoryQuery, SyncQuery, SyncScope};

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
            StorageBackend::Sqlite => None,
            StorageBackend::Postgres => {
                let name = fresh_database_name();
                admin()
                    .await
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap();
                config.postgres.url = Secret::new(url_of(&name));
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
            admin()
                .await
                .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .await
                .unwrap();
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

/// Runs each named case once per backend, as its own test.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let f = super::Fixture::new(peroxo_config::StorageBackend::Sqlite).await;
                    super::$case(&f).await;
                    f.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let f = super::Fixture::new(peroxo_config::StorageBackend::Postgres).await;
                    super::$case(&f).await;
                    f.finish().await;
                }
            )*
        }
    };
}

contract!(
    append_assigns_each_participant_its_next_seq,
    append_is_idempotent_per_tenant_sender_and_client_msg_id,
    invalid_messages_are_rejected_alone,
    history_pages_are_stable_and_scoped_to_the_conversation,
    sync_returns_a_users_stream_after_a_seq_in_pages,
    concurrent_appends_keep_every_users_seq_gapless_and_unique,
    malformed_requests_are_refused_as_such,
    committed_messages_survive_a_restart_of_the_service,
    several_service_instances_share_one_database_safely,
);

fn msg(tenant: &str, from: &str, to: &str, id: &str) -> NewMessage {
    NewMessage {
        tenant: tenant.into(),
        sender: from.into(),
        recipient: to.into(),
        client_msg_id: id.into(),
        text: format!("text of {id}"),
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

async fn append_assigns_each_participant_its_next_seq(f: &Fixture) {
    let out = f
        .client
        .append(vec![
            msg("t", "alice", "bob", "1"),
            msg("t", "bob", "alice", "2"),
            msg("t", "carol", "bob", "3"),
            msg("t", "alice", "alice", "4"),
        ])
        .await
        .unwrap();
    let seqs: Vec<(u64, u64)> = out
        .iter()
        .map(|o| {
            let (m, _) = stored(o);
            (m.sender_seq, m.recipient_seq)
        })
        .collect();
    assert_eq!(seqs, [(1, 1), (2, 2), (1, 3), (3, 3)]);
    let ids: Vec<u64> = out.iter().map(|o| stored(o).0.message_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    assert_eq!(f.client.last_seq(key("t", "bob")).await.unwrap(), 3);
    assert_eq!(f.client.last_seq(key("t", "alice")).await.unwrap(), 3);
    assert_eq!(f.client.last_seq(key("t", "nobody")).await.unwrap(), 0);
}

async fn append_is_idempotent_per_tenant_sender_and_client_msg_id(f: &Fixture) {
    let first = f
        .client
        .append(vec![msg("t", "alice", "bob", "same")])
        .await
        .unwrap();
    let again = f
        .client
        .append(vec![
            msg("t", "alice", "bob", "same"),
            msg("t", "alice", "bob", "same"),
            // Another sender, or another tenant, may use the same id.
            msg("t", "bob", "alice", "same"),
            msg("u", "alice", "bob", "same"),
        ])
        .await
        .unwrap();
    let (original, duplicate) = stored(&first[0]);
    assert!(!duplicate);
    for outcome in &again[..2] {
        let (message, duplicate) = stored(outcome);
        assert!(duplicate);
        assert_eq!(message, original);
    }
    assert!(!stored(&again[2]).1);
    assert!(!stored(&again[3]).1);
    assert_eq!(f.client.last_seq(key("t", "bob")).await.unwrap(), 2);
    assert_eq!(f.client.last_seq(key("u", "bob")).await.unwrap(), 1);
}

async fn invalid_messages_are_rejected_alone(f: &Fixture) {
    let mut empty = msg("t", "alice", "bob", "2");
    empty.text.clear();
    let out = f
        .client
        .append(vec![
            msg("t", "alice", "bob", "1"),
            msg("t", "bad id", "bob", "x"),
            empty,
            msg("t", "alice", "bob", "3"),
        ])
        .await
        .unwrap();
    assert!(matches!(out[1], AppendOutcome::Rejected(ref r) if r.message.contains("sender")));
    assert!(matches!(out[2], AppendOutcome::Rejected(ref r) if r.message.contains("text")));
    assert_eq!(
        stored(&out[3]).0.sender_seq,
        2,
        "no seq is burnt by a rejection"
    );
}

async fn history_pages_are_stable_and_scoped_to_the_conversation(f: &Fixture) {
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.push(msg("t", "alice", "bob", &format!("ab{i}")));
        batch.push(msg("t", "alice", "carol", &format!("ac{i}")));
    }
    batch.push(msg("u", "alice", "bob", "other-tenant"));
    f.client.append(batch).await.unwrap();

    let query = |before| HistoryQuery {
        user: key("t", "bob"),
        conversation_id: "alice:bob".into(),
        before,
        limit: 2,
    };
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = f.client.history(query(before)).await.unwrap();
        assert!(page.messages.len() <= 2);
        let mut ids: Vec<String> = page
            .messages
            .iter()
            .map(|m| m.client_msg_id.clone())
            .collect();
        ids.extend(seen);
        seen = ids;
        if !page.has_more {
            break;
        }
        before = Some(page.messages[0].message_id);
    }
    assert_eq!(seen, ["ab0", "ab1", "ab2", "ab3", "ab4"]);
}

async fn sync_returns_a_users_stream_after_a_seq_in_pages(f: &Fixture) {
    let batch = (0..7)
        .map(|i| msg("t", &format!("s{}", i % 3), "dana", &format!("m{i}")))
        .collect();
    f.client.append(batch).await.unwrap();
    let page = f
        .client
        .sync(SyncQuery {
            user: key("t", "dana"),
            after_seq: 2,
            limit: 3,
            scope: SyncScope::Everything,
        })
        .await
        .unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.recipient_seq).collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert!(page.has_more);
    assert_eq!(page.last_seq, 7);
    let rest = f
        .client
        .sync(SyncQuery {
            user: key("t", "dana"),
            after_seq: 5,
            limit: 3,
            scope: SyncScope::Everything,
        })
        .await
        .unwrap();
    assert_eq!(rest.messages.len(), 2);
    assert!(!rest.has_more);
}

async fn concurrent_appends_keep_every_users_seq_gapless_and_unique(f: &Fixture) {
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let client = f.client.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..10 {
                let batch = (0..5)
                    .map(|i| {
                        msg(
                            "t",
                            &format!("w{writer}"),
                            ["x", "y"][i % 2],
                            &format!("{round}-{i}"),
                        )
                    })
                    .collect::<Vec<_>>();
                append_until_answered(&client, batch).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for user in ["x", "y"] {
        let mut seqs = Vec::new();
        let mut after = 0;
        loop {
            let page = f
                .client
                .sync(SyncQuery {
                    user: key("t", user),
                    after_seq: after,
                    limit: 500,
                    scope: SyncScope::Everything,
                })
                .await
                .unwrap();
            seqs.extend(page.messages.iter().map(|m| m.recipient_seq));
            after = *seqs.last().unwrap_or(&0);
            if !page.has_more {
                break;
            }
        }
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "{user}'s seqs are 1..n");
    }
}

async fn malformed_requests_are_refused_as_such(f: &Fixture) {
    let err = f
        .client
        .history(HistoryQuery {
            user: key("t", "bob"),
            conversation_id: "alice:bob".into(),
            before: None,
            limit: 0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Rejected(ref m) if m.contains("limit")),
        "{err}"
    );
    let err = f
        .client
        .last_seq(key("bad tenant", "bob"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Rejected(ref m) if m.contains("tenant")),
        "{err}"
    );
}

async fn committed_messages_survive_a_restart_of_the_service(f: &Fixture) {
    f.client
        .append(vec![msg("t", "alice", "bob", "1")])
        .await
        .unwrap();
    // A second service over the same database, as after a restart.
    let mut config = f.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let again = peroxo_storage::StoreServer::start(&config).await.unwrap();
    let client = connect(again.addr).await;
    assert_eq!(client.last_seq(key("t", "bob")).await.unwrap(), 1);
    let repeat = client
        .append(vec![msg("t", "alice", "bob", "1")])
        .await
        .unwrap();
    assert!(stored(&repeat[0]).1, "idempotency survives the restart");
    again.stop().await;
}

async fn several_service_instances_share_one_database_safely(f: &Fixture) {
    let mut config = f.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let second = peroxo_storage::StoreServer::start(&config).await.unwrap();
    let clients = [f.client.clone(), connect(second.addr).await];
    // Writers on both instances, overlapping users, and resends of the same ids.
    let mut tasks = Vec::new();
    for writer in 0..6 {
        let client = clients[writer % 2].clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..8 {
                let batch = (0..6)
                    .map(|i| {
                        let to = ["x", "y", "z"][(i + writer) % 3];
                        msg(
                            "t",
                            &format!("w{}", writer % 3),
                            to,
                            &format!("{round}-{i}"),
                        )
                    })
                    .collect::<Vec<_>>();
                append_until_answered(&client, batch).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Each (sender, client_msg_id) stored once: writers w and w+3 share a sender.
    for user in ["x", "y", "z", "w0", "w1", "w2"] {
        let page = f
            .client
            .sync(SyncQuery {
                user: key("t", user),
                after_seq: 0,
                limit: 500,
                scope: SyncScope::Everything,
            })
            .await
            .unwrap();
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq_for(user)).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{user}");
        assert_eq!(page.last_seq, seqs.len() as u64);
    }
    let sent = f
        .client
        .sync(SyncQuery {
            user: key("t", "w0"),
            after_seq: 0,
            limit: 500,
            scope: SyncScope::Everything,
        })
        .await
        .unwrap();
    assert_eq!(
        sent.messages.len(),
        8 * 6,
        "resent ids were not stored twice"
    );
    second.stop().await;
}

#[tokio::test]
async fn postgres_instances_starting_together_apply_each_migration_once() {
    let name = fresh_database_name();
    admin()
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path()).storage;
    config.backend = StorageBackend::Postgres;
    config.postgres.url = Secret::new(url_of(&name));
    let starts = (0..4).map(|_| peroxo_storage::StoreServer::start(&config));
    let stores: Vec<_> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(|s| s.expect("every instance starts"))
        .collect();
    let (db, connection) = tokio_postgres::connect(&url_of(&name), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let applied: i64 = db
        .query_one("SELECT count(*) FROM peroxo_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 1);
    drop(db);
    for store in stores {
        store.stop().await;
    }
    admin()
        .await
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}
