//! Several service instances over one database, and writers racing each other.

use super::*;

use std::collections::{BTreeMap, BTreeSet};

use peroxo_protocol::domain::conversation_id;
use peroxo_protocol::lifecycle::{MessageChange, MessageLimits, MessageOp};

contract!(
    several_service_instances_share_one_database_safely,
    concurrent_sends_and_marks_lose_no_update,
    group_changes_racing_sends_and_marks_lose_nothing,
    message_changes_racing_sends_and_marks_lose_no_update,
);

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
    let (name, url) = create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path()).storage;
    config.backend = StorageBackend::Postgres;
    config.postgres.url = Secret::new(url.clone());
    let starts = (0..4).map(|_| peroxo_storage::StoreServer::start(&config));
    let stores: Vec<_> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(|s| s.expect("every instance starts"))
        .collect();
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let applied: Vec<i32> = db
        .query(
            "SELECT version FROM peroxo_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(applied, [1, 2, 3, 4, 5, 6], "every migration, each once");
    drop(db);
    for store in stores {
        store.stop().await;
    }
    drop_database(&name).await;
}

/// The users of the racing workload, all members of one group.
const CROWD: [&str; 5] = ["u0", "u1", "u2", "u3", "u4"];

/// Makes the group of [`CROWD`], and gives everyone a direct message from the previous user
/// and a group message from everyone, so every mark of the workload has something to mark.
async fn crowd_group(f: &Fixture) -> String {
    let group = new_group(f, CROWD[0], &CROWD[1..]).await;
    for (i, user) in CROWD.iter().enumerate() {
        let next = CROWD[(i + 1) % CROWD.len()];
        f.client
            .append(vec![
                msg(T, user, next, "hello"),
                msg(T, user, &group, "hello"),
            ])
            .await
            .unwrap();
    }
    group
}

/// Moves a read marker, asking again while the service answers `Unavailable` (a mark is
/// idempotent: asking again moves the marker to the same place).
async fn mark_until_answered(
    client: &StorageClient,
    user: &str,
    conversation: &str,
    kind: ReadMarkKind,
) {
    mark_until_answered_or(client, user, conversation, kind, None).await;
}

/// [`mark_until_answered`], where a refusal with `allowed` is an answer too.
async fn mark_until_answered_or(
    client: &StorageClient,
    user: &str,
    conversation: &str,
    kind: ReadMarkKind,
    allowed: Option<RefusalCode>,
) {
    let mut attempts = 0;
    loop {
        let request = ReadMark {
            user: key(T, user),
            conversation_id: conversation.to_owned(),
            kind,
        };
        match client.mark_read(request).await {
            Ok(_) => return,
            Err(CallError::Refused(refusal)) if Some(refusal.code) == allowed => return,
            Err(error) => {
                attempts += 1;
                assert!(
                    matches!(error, CallError::Unavailable(_)) && attempts < 10,
                    "{user}'s mark of {conversation} failed for good: {error}"
                );
            }
        }
    }
}

/// Before a race: messages of two members to the group, and one of every user of [`CROWD`]
/// to the next, so that every `mark_unread` of the race has a message from others to mark,
/// however the race's tasks are scheduled.
async fn seed(client: &StorageClient, group: &str) {
    let mut batch = vec![
        msg(T, CROWD[0], group, "seed-group"),
        msg(T, CROWD[1], group, "seed-group"),
    ];
    for (i, user) in CROWD.iter().enumerate() {
        batch.push(msg(T, user, CROWD[(i + 1) % CROWD.len()], "seed"));
    }
    append_until_answered(client, batch).await;
}

/// Every user of [`CROWD`], each on the next of `clients`, at once: direct messages to the
/// next user, messages to the group, and read marks of both back and forth.
async fn race(clients: &[StorageClient], group: &str) {
    seed(&clients[0], group).await;
    let mut tasks = Vec::new();
    for (i, user) in CROWD.iter().enumerate() {
        let client = clients[i % clients.len()].clone();
        let group = group.to_owned();
        let next = CROWD[(i + 1) % CROWD.len()];
        let with_previous = conversation_id(user, CROWD[(i + CROWD.len() - 1) % CROWD.len()]);
        tasks.push(tokio::spawn(async move {
            for round in 0..18 {
                let id = |what: &str| format!("{what}{round}");
                match round % 6 {
                    0 => {
                        let batch =
                            vec![msg(T, user, next, &id("a")), msg(T, user, next, &id("b"))];
                        append_until_answered(&client, batch).await;
                    }
                    1 => append_until_answered(&client, vec![msg(T, user, &group, &id("g"))]).await,
                    2 => mark_until_answered(&client, user, &group, read_up_to(u64::MAX)).await,
                    3 => {
                        let kind = ReadMarkKind::Unread { message_id: None };
                        mark_until_answered(&client, user, &with_previous, kind).await;
                    }
                    4 => {
                        mark_until_answered(&client, user, &with_previous, read_up_to(u64::MAX))
                            .await
                    }
                    _ => {
                        let kind = ReadMarkKind::Unread { message_id: None };
                        mark_until_answered(&client, user, &group, kind).await;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn concurrent_sends_and_marks_lose_no_update(f: &Fixture) {
    let group = crowd_group(f).await;
    let clients = [f.client.clone(), connect(f.store.addr).await];
    race(&clients, &group).await;
    assert_lists_match_streams(&f.client, &CROWD).await;
}

/// The owner of the [`crowd_group`] removes and adds back its last member, renames it and
/// changes a role, while every member sends to it and marks it read and unread; the last
/// member's requests are refused while it is out.
async fn race_with_changes(clients: &[StorageClient], group: &str) {
    seed(&clients[0], group).await;
    let mut tasks = Vec::new();
    for (i, user) in CROWD.iter().enumerate() {
        let client = clients[i % clients.len()].clone();
        let group = group.to_owned();
        tasks.push(tokio::spawn(async move {
            for round in 0..15 {
                if i == 0 {
                    change_crowd(&client, &group, round).await;
                } else {
                    use_crowd(&client, user, &group, round).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// The owner's change of `round`.
async fn change_crowd(client: &StorageClient, group: &str, round: usize) {
    let last = CROWD[CROWD.len() - 1].to_owned();
    let op = match round % 5 {
        0 => GroupOp::RemoveMember { user: last },
        1 => GroupOp::AddMembers { users: vec![last] },
        2 => GroupOp::Rename {
            title: format!("Team {round}"),
        },
        3 => GroupOp::SetRole {
            user: CROWD[1].to_owned(),
            role: Role::Admin,
        },
        _ => GroupOp::SetRole {
            user: CROWD[1].to_owned(),
            role: Role::Member,
        },
    };
    let change = GroupChange {
        actor: key(T, CROWD[0]),
        conversation_id: group.to_owned(),
        op,
        limits: limits(),
    };
    client.change_group(change).await.unwrap();
}

/// A member's request of `round`: a message to the group, or a read or unread mark of it.
/// Only the member who comes and goes may be refused.
async fn use_crowd(client: &StorageClient, user: &str, group: &str, round: usize) {
    let may_be_out = user == CROWD[CROWD.len() - 1];
    let kind = match round % 3 {
        0 => {
            let outcomes = client
                .append(vec![msg(T, user, group, &format!("r{round}"))])
                .await
                .unwrap();
            assert!(
                may_be_out || matches!(outcomes[0], AppendOutcome::Stored { .. }),
                "{user}: {outcomes:?}"
            );
            return;
        }
        1 => read_up_to(u64::MAX),
        _ => ReadMarkKind::Unread { message_id: None },
    };
    let request = ReadMark {
        user: key(T, user),
        conversation_id: group.to_owned(),
        kind,
    };
    match client.mark_read(request).await {
        Ok(_) => {}
        Err(CallError::Refused(_)) if may_be_out => {}
        Err(error) => panic!("{user}'s mark failed: {error}"),
    }
}

async fn group_changes_racing_sends_and_marks_lose_nothing(f: &Fixture) {
    let group = crowd_group(f).await;
    let clients = [f.client.clone(), connect(f.store.addr).await];
    race_with_changes(&clients, &group).await;
    assert_lists_match_streams(&f.client, &CROWD).await;
}

/// The limits of the racing message changes: few reactions, so that racing ones meet them.
const RACE_LIMITS: MessageLimits = MessageLimits {
    edit_window_ms: 0,
    max_reactions_per_message: 3,
    max_reactions_per_user: 2,
};

/// Every user of [`CROWD`] at once, each on the next of `clients`: messages to the group,
/// edits and deletes of them, reactions to the two seed messages of the group and their
/// taking back, read and unread marks; the owner deletes one seed message halfway. A change
/// may only be refused for the limits or a deleted message.
async fn race_with_message_changes(clients: &[StorageClient], group: &str) {
    seed(&clients[0], group).await;
    let seeds: Vec<u64> = clients[0]
        .history(HistoryQuery {
            user: key(T, CROWD[0]),
            conversation_id: group.to_owned(),
            before: None,
            limit: 2,
        })
        .await
        .unwrap()
        .messages
        .iter()
        .map(|m| m.message_id)
        .collect();
    let mut tasks = Vec::new();
    for (i, user) in CROWD.iter().enumerate() {
        let client = clients[i % clients.len()].clone();
        let (group, seeds) = (group.to_owned(), seeds.clone());
        tasks.push(tokio::spawn(async move {
            let mut own = Vec::new();
            for round in 0..16 {
                let change = |message_id, op| MessageChange {
                    actor: key(T, user),
                    conversation_id: group.clone(),
                    message_id,
                    op,
                    limits: RACE_LIMITS,
                };
                let emoji = format!(":e{}:", (i + round) % 4);
                let request = match round % 4 {
                    0 => {
                        let outcome = client
                            .append(vec![msg(T, user, &group, &format!("c{round}"))])
                            .await
                            .unwrap();
                        own.push(stored(&outcome[0]).0.message_id);
                        continue;
                    }
                    1 if round % 8 == 1 => change(seeds[round / 8 % 2], MessageOp::React { emoji }),
                    1 => change(seeds[round / 8 % 2], MessageOp::Unreact { emoji }),
                    2 if i == 0 && round == 6 => change(seeds[1], MessageOp::Delete),
                    2 => {
                        let op = MessageOp::Edit {
                            text: format!("edited {round}"),
                            client_msg_id: format!("edit{round}"),
                        };
                        change(*own.last().unwrap(), op)
                    }
                    _ => {
                        let kind = if round % 8 == 3 {
                            ReadMarkKind::Unread { message_id: None }
                        } else {
                            read_up_to(u64::MAX)
                        };
                        // Every message from others may be deleted by now: then there is
                        // nothing to mark unread, as the contract says.
                        let nothing_left = Some(RefusalCode::UnknownMessage);
                        mark_until_answered_or(&client, user, &group, kind, nothing_left).await;
                        change(own.remove(0), MessageOp::Delete)
                    }
                };
                match client.change_message(request).await {
                    Ok(_) => {}
                    Err(CallError::Refused(refusal))
                        if matches!(
                            refusal.code,
                            RefusalCode::TooManyReactions | RefusalCode::MessageDeleted
                        ) => {}
                    Err(error) => panic!("{user}'s change of round {round} failed: {error}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Checks that the reactions every member of [`CROWD`] sees on the messages of `group` are
/// those the reaction events of the member's stream leave, within [`RACE_LIMITS`].
async fn assert_reactions_match_events(client: &StorageClient, group: &str) {
    for user in CROWD {
        let stream = stream_model::read_stream(client, &key(T, user)).await;
        // (message, emoji) -> who reacted
        let mut made: BTreeMap<(u64, String), BTreeSet<String>> = BTreeMap::new();
        for entry in stream.events() {
            let actor = entry.event.actor;
            match entry.event.kind {
                EventKind::ReactionAdded { message_id, emoji } => {
                    made.entry((message_id, emoji)).or_default().insert(actor);
                }
                EventKind::ReactionRemoved { message_id, emoji } => {
                    made.entry((message_id, emoji)).or_default().remove(&actor);
                }
                EventKind::MessageDeleted { message_id, .. } => {
                    made.retain(|(id, _), _| *id != message_id);
                }
                _ => {}
            }
        }
        let history = client
            .history(HistoryQuery {
                user: key(T, user),
                conversation_id: group.to_owned(),
                before: None,
                limit: 100,
            })
            .await
            .unwrap();
        for message in &history.messages {
            let id = message.message_id;
            let mut seen: Vec<(String, u32, bool)> = message
                .lifecycle
                .reactions
                .iter()
                .map(|r| (r.emoji.clone(), r.count, r.mine))
                .collect();
            seen.sort();
            let expected: Vec<(String, u32, bool)> = made
                .iter()
                .filter(|((message, _), users)| *message == id && !users.is_empty())
                .map(|((_, emoji), users)| {
                    (emoji.clone(), users.len() as u32, users.contains(user))
                })
                .collect();
            assert_eq!(seen, expected, "{user}'s reactions to {id}");
            assert!(seen.len() <= 3, "at most 3 emojis on {id}: {seen:?}");
        }
        let mut per_user: BTreeMap<(u64, &str), usize> = BTreeMap::new();
        for ((id, _), users) in &made {
            for reactor in users {
                *per_user.entry((*id, reactor.as_str())).or_default() += 1;
            }
        }
        assert!(per_user.values().all(|n| *n <= 2), "{per_user:?}");
    }
}

async fn message_changes_racing_sends_and_marks_lose_no_update(f: &Fixture) {
    let group = crowd_group(f).await;
    let clients = [f.client.clone(), connect(f.store.addr).await];
    race_with_message_changes(&clients, &group).await;
    assert_reactions_match_events(&f.client, &group).await;
    assert_lists_match_streams(&f.client, &CROWD).await;
}

/// Two more service instances over `f`'s database, and a client of each of the three.
async fn two_more_instances(f: &Fixture) -> (Vec<peroxo_storage::StoreServer>, Vec<StorageClient>) {
    let mut config = f.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let mut others = Vec::new();
    let mut clients = vec![f.client.clone()];
    for _ in 0..2 {
        let instance = peroxo_storage::StoreServer::start(&config).await.unwrap();
        clients.push(connect(instance.addr).await);
        others.push(instance);
    }
    (others, clients)
}

#[tokio::test]
async fn postgres_instances_changing_a_group_while_its_members_write_lose_nothing() {
    let f = Fixture::new(StorageBackend::Postgres).await;
    let (others, clients) = two_more_instances(&f).await;
    let group = crowd_group(&f).await;
    race_with_changes(&clients, &group).await;
    race(&clients, &group).await;
    assert_lists_match_streams(&f.client, &CROWD).await;
    for instance in others {
        instance.stop().await;
    }
    f.finish().await;
}

#[tokio::test]
async fn postgres_instances_changing_messages_while_their_members_write_lose_nothing() {
    let f = Fixture::new(StorageBackend::Postgres).await;
    let (others, clients) = two_more_instances(&f).await;
    let group = crowd_group(&f).await;
    race_with_message_changes(&clients, &group).await;
    assert_reactions_match_events(&f.client, &group).await;
    assert_lists_match_streams(&f.client, &CROWD).await;
    for instance in others {
        instance.stop().await;
    }
    f.finish().await;
}

#[tokio::test]
async fn postgres_instances_sending_and_marking_at_once_lose_no_update() {
    let f = Fixture::new(StorageBackend::Postgres).await;
    let (others, clients) = two_more_instances(&f).await;
    let group = crowd_group(&f).await;
    race(&clients, &group).await;
    assert_lists_match_streams(&f.client, &CROWD).await;
    for instance in others {
        instance.stop().await;
    }
    f.finish().await;
}
