//! The event outbox: every committed change writes its events in its own transaction, with
//! ids per tenant that are gapless and follow commit order, and the feed pages through them.

use super::*;

use peroxo_config::{EventsConfig, RetentionConfig};
use peroxo_protocol::lifecycle::{MessageChange, MessageOp};
use peroxo_protocol::outbox::{NewOutboxEvent, OutboxEvent, OutboxKind, OutboxPage};
use peroxo_storage::{EventsQuery, MessageStore, PostgresStore};
use serde_json::{Value, json};

contract!(
    ids_are_gapless_ascending_and_separate_per_tenant,
    each_stored_message_makes_one_created_event_and_a_duplicate_none,
    a_direct_message_event_names_its_recipient_and_carries_no_text_by_default,
    a_group_message_event_names_the_members_at_commit,
    group_changes_make_one_event_each_with_the_actor,
    a_read_marker_that_moves_makes_one_event_and_one_that_does_not_none,
    edits_deletes_and_reactions_make_their_events,
    previews_carry_the_first_characters_of_texts_when_enabled,
    paging_follows_after_limit_and_next_after,
    retention_prunes_the_oldest_events_and_reports_pruned_until,
    disabled_events_write_nothing,
    erasing_a_user_removes_the_text_previews_of_its_events,
    recorded_events_take_ids_in_commit_order_with_the_others,
    a_recorded_event_needs_a_json_object_payload,
);

/// The whole feed of `tenant`, read in pages of 2 so that paging is exercised too.
async fn feed(client: &StorageClient, tenant: &str) -> Vec<OutboxEvent> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = page(client, tenant, after, 2).await;
        if page.events.is_empty() {
            return events;
        }
        after = page.next_after;
        events.extend(page.events);
    }
}

async fn page(client: &StorageClient, tenant: &str, after: u64, limit: u32) -> OutboxPage {
    client
        .events(EventsQuery {
            tenant: tenant.to_owned(),
            after,
            limit,
        })
        .await
        .unwrap()
}

fn ids(events: &[OutboxEvent]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

fn kinds(events: &[OutboxEvent]) -> Vec<OutboxKind> {
    events.iter().map(|e| e.kind).collect()
}

fn payload(event: &OutboxEvent) -> Value {
    serde_json::from_str(&event.payload).unwrap()
}

/// The events of tenant `t` after `after`.
async fn events_after(f: &Fixture, after: u64) -> Vec<OutboxEvent> {
    feed(&f.client, T)
        .await
        .into_iter()
        .filter(|e| e.id > after)
        .collect()
}

/// The id of tenant `t`'s newest event (0 when none).
async fn newest_id(f: &Fixture) -> u64 {
    feed(&f.client, T).await.last().map_or(0, |e| e.id)
}

/// A second service over the fixture's database, writing events as `events` says.
async fn service_with(
    f: &Fixture,
    events: &EventsConfig,
) -> (peroxo_storage::StoreServer, StorageClient) {
    let mut config = f.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let store =
        peroxo_storage::StoreServer::start_with(&config, &RetentionConfig::default(), events)
            .await
            .unwrap();
    let client = connect(store.addr).await;
    (store, client)
}

async fn ids_are_gapless_ascending_and_separate_per_tenant(f: &Fixture) {
    for round in 0..3 {
        let batch = vec![
            msg("t", "alice", "bob", &format!("a{round}")),
            msg("u", "alice", "bob", &format!("a{round}")),
            msg("t", "bob", "alice", &format!("b{round}")),
        ];
        f.client.append(batch).await.unwrap();
    }
    let t = feed(&f.client, "t").await;
    assert_eq!(ids(&t), (1..=6).collect::<Vec<_>>());
    assert!(t.iter().all(|e| e.tenant == "t"));
    let u = feed(&f.client, "u").await;
    assert_eq!(ids(&u), [1, 2, 3]);
    assert!(u.iter().all(|e| e.tenant == "u"));
}

async fn each_stored_message_makes_one_created_event_and_a_duplicate_none(f: &Fixture) {
    let first = msg(T, "alice", "bob", "c1");
    let outcomes = f
        .client
        .append(vec![first.clone(), msg(T, "bob", "alice", "c2")])
        .await
        .unwrap();
    let stored_ids: Vec<String> = outcomes
        .iter()
        .map(|o| stored(o).0.message_id.to_string())
        .collect();
    let resent = f.client.append(vec![first]).await.unwrap();
    assert!(stored(&resent[0]).1, "the resend is a duplicate");
    let events = feed(&f.client, T).await;
    assert_eq!(kinds(&events), [OutboxKind::MessageCreated; 2]);
    let named: Vec<String> = events
        .iter()
        .map(|e| payload(e)["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(named, stored_ids);
}

async fn a_direct_message_event_names_its_recipient_and_carries_no_text_by_default(f: &Fixture) {
    let m = send(f, "alice", "bob").await;
    let events = feed(&f.client, T).await;
    let [event] = &events[..] else {
        panic!("one event, not {events:?}")
    };
    assert_eq!(event.kind, OutboxKind::MessageCreated);
    assert_eq!(event.conversation_id, "alice:bob");
    assert_eq!(event.ts, m.ts);
    assert_eq!(
        payload(event),
        json!({
            "message_id": m.message_id.to_string(),
            "conversation_id": "alice:bob",
            "from": "alice",
            "client_msg_id": m.client_msg_id,
            "ts": m.ts,
            "recipients": ["bob"],
        })
    );
}

async fn a_group_message_event_names_the_members_at_commit(f: &Fixture) {
    let group = new_group(f, "alice", &["bob", "carol"]).await;
    let first = send(f, "bob", &group).await;
    let mut reply = msg(T, "carol", &group, "reply");
    reply.reply_to = Some(first.message_id);
    f.client.append(vec![reply]).await.unwrap();
    let events = feed(&f.client, T).await;
    assert_eq!(
        kinds(&events),
        [
            OutboxKind::GroupCreated,
            OutboxKind::MessageCreated,
            OutboxKind::MessageCreated
        ]
    );
    let sent = payload(&events[1]);
    assert_eq!(sent["recipients"], json!(["alice", "carol"]));
    assert_eq!(sent["conversation_id"], json!(group));
    assert_eq!(sent["from"], "bob");
    assert!(sent.get("reply_to").is_none());
    let replied = payload(&events[2]);
    assert_eq!(replied["recipients"], json!(["alice", "bob"]));
    assert_eq!(replied["reply_to"], json!(first.message_id.to_string()));
}

async fn group_changes_make_one_event_each_with_the_actor(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    change(
        f,
        "alice",
        &group,
        GroupOp::Rename {
            title: "Crew".into(),
        },
    )
    .await
    .unwrap();
    add_members(f, "alice", &group, &["carol", "dave"]).await;
    change(
        f,
        "alice",
        &group,
        GroupOp::RemoveMember { user: "bob".into() },
    )
    .await
    .unwrap();
    set_role(f, "alice", &group, "carol", Role::Admin).await;
    let events = feed(&f.client, T).await;
    assert!(events.iter().all(|e| e.conversation_id == group));
    let payloads: Vec<(OutboxKind, Value)> = events.iter().map(|e| (e.kind, payload(e))).collect();
    assert_eq!(
        payloads,
        [
            (
                OutboxKind::GroupCreated,
                json!({"by": "alice", "title": "Team", "member_count": 2})
            ),
            (
                OutboxKind::GroupRenamed,
                json!({"by": "alice", "title": "Crew"})
            ),
            (
                OutboxKind::MembersAdded,
                json!({"by": "alice", "users": ["carol", "dave"]})
            ),
            (
                OutboxKind::MemberLeft,
                json!({"by": "alice", "user": "bob"})
            ),
            (
                OutboxKind::RoleChanged,
                json!({"by": "alice", "user": "carol", "role": "admin"})
            ),
        ]
    );
}

async fn a_read_marker_that_moves_makes_one_event_and_one_that_does_not_none(f: &Fixture) {
    let m = send(f, "alice", "bob").await;
    let before = newest_id(f).await;
    mark(f, "bob", "alice:bob", read_up_to(m.message_id))
        .await
        .unwrap();
    mark(f, "bob", "alice:bob", read_up_to(m.message_id))
        .await
        .unwrap();
    let events = events_after(f, before).await;
    let [event] = &events[..] else {
        panic!("one event, not {events:?}")
    };
    assert_eq!(event.kind, OutboxKind::ReadMarker);
    assert_eq!(
        payload(event),
        json!({"user": "bob", "message_id": m.message_id.to_string(), "unread_count": 0,
               "receipt_to": "alice"})
    );
}

/// `actor` of `tenant` makes `op` to message `message_id` of `conversation`.
async fn change_message(
    client: &StorageClient,
    actor: &UserKey,
    conversation: &str,
    message_id: u64,
    op: MessageOp,
) {
    client
        .change_message(MessageChange {
            actor: actor.clone(),
            conversation_id: conversation.to_owned(),
            message_id,
            op,
            limits: super::lifecycle::LIMITS,
        })
        .await
        .unwrap();
}

async fn edits_deletes_and_reactions_make_their_events(f: &Fixture) {
    let m = send(f, "alice", "bob").await;
    let id = m.message_id;
    let before = newest_id(f).await;
    let edit = MessageOp::Edit {
        text: "edited".into(),
        client_msg_id: fresh_id("edit"),
    };
    change_message(&f.client, &key(T, "alice"), "alice:bob", id, edit.clone()).await;
    // A resent edit and a reaction already made change nothing.
    change_message(&f.client, &key(T, "alice"), "alice:bob", id, edit).await;
    let react = MessageOp::React {
        emoji: "👍".into()
    };
    change_message(&f.client, &key(T, "bob"), "alice:bob", id, react.clone()).await;
    change_message(&f.client, &key(T, "bob"), "alice:bob", id, react).await;
    let unreact = MessageOp::Unreact {
        emoji: "👍".into()
    };
    change_message(&f.client, &key(T, "bob"), "alice:bob", id, unreact).await;
    change_message(
        &f.client,
        &key(T, "alice"),
        "alice:bob",
        id,
        MessageOp::Delete,
    )
    .await;
    let events = events_after(f, before).await;
    let message_id = id.to_string();
    let payloads: Vec<(OutboxKind, Value)> = events.iter().map(|e| (e.kind, payload(e))).collect();
    assert_eq!(
        payloads,
        [
            (
                OutboxKind::MessageEdited,
                json!({"by": "alice", "message_id": message_id})
            ),
            (
                OutboxKind::ReactionAdded,
                json!({"by": "bob", "message_id": message_id, "emoji": "👍"})
            ),
            (
                OutboxKind::ReactionRemoved,
                json!({"by": "bob", "message_id": message_id, "emoji": "👍"})
            ),
            (
                OutboxKind::MessageDeleted,
                json!({"by": "alice", "message_id": message_id, "moderated": false})
            ),
        ]
    );
}

async fn previews_carry_the_first_characters_of_texts_when_enabled(f: &Fixture) {
    let events = EventsConfig {
        text_preview_chars: 4,
        ..EventsConfig::default()
    };
    let (store, client) = service_with(f, &events).await;
    let mut long = msg("p", "alice", "bob", "long");
    long.text = "héllo wörld".into();
    let mut short = msg("p", "bob", "alice", "short");
    short.text = "hé".into();
    client.append(vec![long, short]).await.unwrap();
    let feed = feed(&client, "p").await;
    let texts: Vec<Value> = feed.iter().map(|e| payload(e)["text"].clone()).collect();
    assert_eq!(texts, [json!("héll"), json!("hé")]);
    store.stop().await;
}

async fn paging_follows_after_limit_and_next_after(f: &Fixture) {
    for _ in 0..5 {
        send(f, "alice", "bob").await;
    }
    let first = page(&f.client, T, 0, 2).await;
    assert_eq!((ids(&first.events), first.next_after), (vec![1, 2], 2));
    let second = page(&f.client, T, first.next_after, 10).await;
    assert_eq!((ids(&second.events), second.next_after), (vec![3, 4, 5], 5));
    let empty = page(&f.client, T, 5, 10).await;
    assert_eq!((empty.events.len(), empty.next_after), (0, 5));
    assert_eq!(empty.pruned_until, 0);
    let middle = page(&f.client, T, 1, 1).await;
    assert_eq!(ids(&middle.events), [2]);
}

async fn retention_prunes_the_oldest_events_and_reports_pruned_until(f: &Fixture) {
    let old: Vec<StoredMessage> = [
        send(f, "alice", "bob").await,
        send(f, "bob", "alice").await,
        send(f, "alice", "bob").await,
    ]
    .into();
    let newest_old = old.iter().map(|m| m.ts).max().unwrap();
    wait_past(newest_old).await;
    let kept = send(f, "alice", "bob").await;
    let events = EventsConfig {
        retention: Duration::from_secs(60),
        ..EventsConfig::default()
    };
    // A minute after the old ones and before the kept one is a minute old.
    let now = newest_old + 60_000 + 1;
    assert!(kept.ts + 60_000 >= now);
    let report = f
        .store
        .events_retention_pass(&events, 2, now)
        .await
        .unwrap();
    assert_eq!(report.deleted, 3);
    assert_eq!(report.batches, 2, "batches of 2: a full one, then the rest");
    let from_start = page(&f.client, T, 0, 10).await;
    assert_eq!(from_start.pruned_until, 3);
    assert_eq!(ids(&from_start.events), [4]);
    // A pass with nothing old left deletes nothing, and ids go on from the last.
    let again = f
        .store
        .events_retention_pass(&events, 2, now)
        .await
        .unwrap();
    assert_eq!(again.deleted, 0);
    send(f, "bob", "alice").await;
    assert_eq!(ids(&feed(&f.client, T).await), [4, 5]);
}

async fn disabled_events_write_nothing(f: &Fixture) {
    let events = EventsConfig {
        enabled: false,
        ..EventsConfig::default()
    };
    let (store, client) = service_with(f, &events).await;
    let outcomes = client
        .append(vec![msg("off", "alice", "bob", "1")])
        .await
        .unwrap();
    let id = stored(&outcomes[0]).0.message_id;
    client
        .mark_read(ReadMark {
            user: key("off", "bob"),
            conversation_id: "alice:bob".into(),
            kind: read_up_to(id),
        })
        .await
        .unwrap();
    let recorded = client
        .record_events("off".into(), vec![notify(r#"{"a":1}"#)])
        .await
        .unwrap();
    assert!(recorded.is_empty(), "no ids: {recorded:?}");
    let page = page(&client, "off", 0, 10).await;
    assert!(page.events.is_empty(), "{page:?}");
    store.stop().await;
}

async fn erasing_a_user_removes_the_text_previews_of_its_events(f: &Fixture) {
    let events = EventsConfig {
        text_preview_chars: 100,
        ..EventsConfig::default()
    };
    let (store, client) = service_with(f, &events).await;
    let outcomes = client
        .append(vec![
            msg("p", "alice", "bob", "1"),
            msg("p", "bob", "alice", "2"),
        ])
        .await
        .unwrap();
    let id = stored(&outcomes[0]).0.message_id;
    let edit = MessageOp::Edit {
        text: "edited".into(),
        client_msg_id: "e1".into(),
    };
    change_message(&client, &key("p", "alice"), "alice:bob", id, edit).await;
    let texts = |events: &[OutboxEvent]| -> Vec<Value> {
        events.iter().map(|e| payload(e)["text"].clone()).collect()
    };
    let before = feed(&client, "p").await;
    assert_eq!(
        texts(&before),
        [json!("text of 1"), json!("text of 2"), json!("edited")]
    );
    let report = peroxo_storage::StoreBackend::open(&f.config)
        .await
        .unwrap()
        .erase_user(&key("p", "alice"), 1, None)
        .await
        .unwrap();
    assert_eq!(report.event_texts, 2);
    let after = feed(&client, "p").await;
    assert_eq!(
        texts(&after),
        [Value::Null, json!("text of 2"), Value::Null]
    );
    assert_eq!(ids(&after), ids(&before));
    store.stop().await;
}

fn notify(payload: &str) -> NewOutboxEvent {
    NewOutboxEvent {
        kind: OutboxKind::Notify,
        conversation_id: "alice:bob".into(),
        payload: payload.into(),
    }
}

async fn recorded_events_take_ids_in_commit_order_with_the_others(f: &Fixture) {
    send(f, "alice", "bob").await;
    let ids = f
        .client
        .record_events(T.into(), vec![notify(r#"{"n":1}"#), notify(r#"{"n":2}"#)])
        .await
        .unwrap();
    assert_eq!(ids, [2, 3]);
    send(f, "bob", "alice").await;
    let events = feed(&f.client, T).await;
    assert_eq!(
        kinds(&events),
        [
            OutboxKind::MessageCreated,
            OutboxKind::Notify,
            OutboxKind::Notify,
            OutboxKind::MessageCreated
        ]
    );
    assert_eq!(payload(&events[2]), json!({"n": 2}));
    assert_eq!(events[1].conversation_id, "alice:bob");
}

async fn a_recorded_event_needs_a_json_object_payload(f: &Fixture) {
    for bad in ["[1]", "not json", ""] {
        let result = f.client.record_events(T.into(), vec![notify(bad)]).await;
        assert_bad_request(result, "payload");
    }
    assert!(feed(&f.client, T).await.is_empty());
}

/// Two PostgreSQL stores over one database append to one tenant at once while a reader polls
/// the feed: every page the reader gets starts right after its cursor with no gap, so no
/// event it skipped can commit later with a smaller id, and the feed ends up 1..=N.
#[tokio::test]
async fn postgres_instances_appending_at_once_keep_the_feed_gapless_in_commit_order() {
    let (name, url) = create_database().await;
    let stores = [
        PostgresStore::open(&url, 4).await.unwrap(),
        PostgresStore::open(&url, 4).await.unwrap(),
    ];
    const WRITERS: usize = 4;
    const BATCHES: usize = 15;
    const PER_BATCH: usize = 3;
    let total = (WRITERS * BATCHES * PER_BATCH) as u64;
    let reader_store = stores[0].clone();
    let reader = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut cursor = 0;
        while cursor < total {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the feed stopped at {cursor}"
            );
            let page = reader_store
                .events(EventsQuery {
                    tenant: "t".into(),
                    after: cursor,
                    limit: 7,
                })
                .await
                .unwrap();
            let expected: Vec<u64> = (cursor + 1..=cursor + page.events.len() as u64).collect();
            assert_eq!(ids(&page.events), expected, "a gap after cursor {cursor}");
            cursor = page.next_after;
            tokio::task::yield_now().await;
        }
        cursor
    });
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = stores[writer % 2].clone();
        writers.push(tokio::spawn(async move {
            for batch in 0..BATCHES {
                let messages = (0..PER_BATCH)
                    .map(|i| {
                        let to = format!("u{}", (writer + i) % 3);
                        msg("t", &format!("w{writer}"), &to, &format!("{batch}-{i}"))
                    })
                    .collect();
                store.append(messages).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), total);
    let page = stores[1]
        .events(EventsQuery {
            tenant: "t".into(),
            after: 0,
            limit: 1000,
        })
        .await
        .unwrap();
    assert_eq!(ids(&page.events), (1..=total).collect::<Vec<_>>());
    drop(stores);
    drop_database(&name).await;
}
