//! Databases written before conversations existed: after the upgrade, every existing direct
//! conversation is in its participants' lists with what their streams imply (sending marks
//! read, so each participant has read up to their own newest message), and new messages carry
//! on from there.

use super::*;

use std::collections::BTreeMap;

use peroxo_protocol::domain::conversation_id;

/// The PostgreSQL schema as it was before conversations (migration 1), frozen here.
const POSTGRES_DIRECT_MESSAGES_SCHEMA: &str = "
    CREATE TABLE peroxo_schema_migrations (
        version INT PRIMARY KEY,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    INSERT INTO peroxo_schema_migrations (version) VALUES (1);
    CREATE TABLE messages (
        id BIGINT PRIMARY KEY,
        tenant TEXT NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        conversation TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        text TEXT NOT NULL,
        ts BIGINT NOT NULL,
        sender_seq BIGINT NOT NULL,
        recipient_seq BIGINT NOT NULL,
        UNIQUE (tenant, sender, client_msg_id)
    );
    CREATE SEQUENCE messages_id_seq OWNED BY messages.id;
    CREATE INDEX messages_by_conversation ON messages (tenant, conversation, id);
    CREATE TABLE user_seqs (
        tenant TEXT NOT NULL,
        owner TEXT NOT NULL,
        last_seq BIGINT NOT NULL,
        PRIMARY KEY (tenant, owner)
    );
    CREATE TABLE inbox (
        tenant TEXT NOT NULL,
        owner TEXT NOT NULL,
        seq BIGINT NOT NULL,
        message_id BIGINT NOT NULL REFERENCES messages (id),
        PRIMARY KEY (tenant, owner, seq)
    );";

/// The direct messages written before the upgrade, (tenant, from, to), in commit order.
const BEFORE: [(&str, &str, &str); 11] = [
    (T, "alice", "bob"),
    (T, "alice", "bob"),
    (T, "bob", "alice"),
    (T, "alice", "bob"),
    (T, "carol", "bob"),
    (T, "carol", "bob"),
    (T, "alice", "alice"),
    (T, "carol", "bob"),
    (T, "alice", "alice"),
    (T, "bob", "dave"),
    ("u", "alice", "bob"),
];

/// Writes [`BEFORE`] as the direct-message schema stored messages: each takes the next seq
/// of its sender and of its recipient (one seq for a message to oneself).
async fn write_direct_messages(db: &tokio_postgres::Client) {
    db.batch_execute(POSTGRES_DIRECT_MESSAGES_SCHEMA)
        .await
        .unwrap();
    let mut last: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (i, (tenant, from, to)) in BEFORE.into_iter().enumerate() {
        let id = i as i64 + 1;
        let sender_seq = *last.entry((tenant, from)).or_default() + 1;
        last.insert((tenant, from), sender_seq);
        let recipient_seq = if from == to {
            sender_seq
        } else {
            let seq = *last.entry((tenant, to)).or_default() + 1;
            last.insert((tenant, to), seq);
            seq
        };
        db.execute(
            "INSERT INTO messages VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9)",
            &[
                &id,
                &tenant,
                &from,
                &to,
                &conversation_id(from, to),
                &format!("old-{id}"),
                &format!("text of old-{id}"),
                &sender_seq,
                &recipient_seq,
            ],
        )
        .await
        .unwrap();
        let mut entries = vec![(from, sender_seq)];
        if from != to {
            entries.push((to, recipient_seq));
        }
        for (owner, seq) in entries {
            db.execute(
                "INSERT INTO inbox VALUES ($1, $2, $3, $4)",
                &[&tenant, &owner, &seq, &id],
            )
            .await
            .unwrap();
        }
    }
    for ((tenant, owner), seq) in last {
        db.execute(
            "INSERT INTO user_seqs VALUES ($1, $2, $3)",
            &[&tenant, &owner, &seq],
        )
        .await
        .unwrap();
    }
    db.execute(
        "SELECT setval('messages_id_seq', $1)",
        &[&(BEFORE.len() as i64)],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn postgres_upgrade_lists_existing_direct_conversations_with_their_unread_counts() {
    let (name, url) = create_database().await;
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    write_direct_messages(&db).await;
    drop(db);

    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path()).storage;
    config.backend = StorageBackend::Postgres;
    config.postgres.url = Secret::new(url);
    let store = peroxo_storage::StoreServer::start(&config).await.unwrap();
    let client = connect(store.addr).await;
    let users = ["alice", "bob", "carol", "dave"];
    assert_lists_match_streams(&client, &users).await;

    let bobs = stream_model::whole_list(&client, &key(T, "bob")).await;
    let unread: Vec<(&str, u64, u64)> = bobs
        .conversations
        .iter()
        .map(|c| (c.conversation_id.as_str(), c.unread_count, c.read_marker))
        .collect();
    assert_eq!(
        unread,
        [
            ("bob:dave", 0, 10),
            ("bob:carol", 3, 0),
            ("alice:bob", 1, 3)
        ],
        "bob replied to alice once, then she wrote again; carol he never answered"
    );
    assert_eq!(bobs.total_unread, 4);
    let in_u = stream_model::whole_list(&client, &key("u", "bob")).await;
    assert_eq!(in_u.total_unread, 1, "tenants stay apart");

    // New messages and marks carry on from the upgraded state.
    client
        .append(vec![
            msg(T, "alice", "bob", "new-1"),
            msg(T, "bob", "carol", "new-2"),
        ])
        .await
        .unwrap();
    client
        .mark_read(ReadMark {
            user: key(T, "bob"),
            conversation_id: "alice:bob".into(),
            kind: ReadMarkKind::Read {
                message_id: u64::MAX,
            },
        })
        .await
        .unwrap();
    assert_lists_match_streams(&client, &users).await;
    assert_eq!(
        stream_model::whole_list(&client, &key(T, "bob"))
            .await
            .total_unread,
        0
    );
    store.stop().await;
    drop_database(&name).await;
}
