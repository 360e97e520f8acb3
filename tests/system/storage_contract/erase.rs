//! Erasing a user's data (`peroxo user erase`): the texts of every message the user sent
//! become tombstones everywhere they are read from, the user's read state is forgotten, and
//! an erasure stopped half-way is carried on by the next run.
//!
//! Each case erases through the backend opened directly, as the command does, while the
//! service keeps serving the same database (the lsm backend, whose database opens in one
//! place at a time, through the service's own).

use super::*;

use peroxo_storage::StoreBackend;
use peroxo_storage::user_data::UserDataError;

contract!(
    erasing_empties_every_text_the_user_sent_and_marks_it_erased,
    erasing_forgets_the_users_read_state,
    erasure_is_resumable_and_a_rerun_does_nothing,
    an_unknown_user_is_refused,
);

async fn opened(f: &Fixture) -> StoreBackend {
    match f.config.backend {
        // The lsm database opens in one place at a time: the running service's.
        StorageBackend::Lsm => f.store.backend().clone(),
        StorageBackend::Sqlite | StorageBackend::Postgres => {
            StoreBackend::open(&f.config).await.unwrap()
        }
    }
}

/// The texts `sender` (tenant `t`) has in the `messages` table, read with SQL (lsm: its rows,
/// through the running service's store).
async fn raw_texts(f: &Fixture, sender: &str) -> Vec<String> {
    const QUERY: &str = "SELECT text FROM messages WHERE tenant = 't' AND sender = ";
    match f.config.backend {
        StorageBackend::Lsm => match f.store.backend() {
            StoreBackend::Lsm(store) => store.stored_texts(T, sender).await.unwrap(),
            other => panic!("an lsm backend, not {other:?}"),
        },
        StorageBackend::Sqlite => {
            let conn = rusqlite::Connection::open(&f.config.sqlite_path).unwrap();
            let mut stmt = conn.prepare(&format!("{QUERY}?1 ORDER BY id")).unwrap();
            stmt.query_map([sender], |row| row.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        }
        StorageBackend::Postgres => {
            let url = f.config.postgres.url.expose();
            let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let rows = db
                .query(&format!("{QUERY}$1 ORDER BY id"), &[&sender])
                .await
                .unwrap();
            rows.iter().map(|row| row.get(0)).collect()
        }
    }
}

/// `user`'s messages of its stream (tenant `t`): (sender, text, erased).
async fn synced(f: &Fixture, user: &str) -> Vec<(String, String, bool)> {
    let page = f
        .client
        .sync(SyncQuery {
            user: key(T, user),
            after_seq: 0,
            limit: 100,
            scope: SyncScope::Everything,
        })
        .await
        .unwrap();
    page.messages
        .iter()
        .map(|m| (m.sender.clone(), m.text.clone(), m.is_erased()))
        .collect()
}

async fn erasing_empties_every_text_the_user_sent_and_marks_it_erased(f: &Fixture) {
    let group = new_group(f, "alice", &["bob", "carol"]).await;
    send(f, "bob", "alice").await;
    send(f, "alice", &group).await;
    send(f, "alice", "bob").await;
    let last = send(f, "alice", "bob").await;
    let report = opened(f)
        .await
        .erase_user(&key(T, "alice"), 500, None)
        .await
        .unwrap();
    assert_eq!((report.texts, report.complete), (3, true));
    // Gone from the table itself, not only from what is read through it.
    assert_eq!(raw_texts(f, "alice").await, ["", "", ""]);
    assert_eq!(raw_texts(f, "bob").await.len(), 1);
    assert!(
        !raw_texts(f, "bob").await[0].is_empty(),
        "others' texts stay"
    );
    // Tombstones in the other participants' history and sync: the message stays, erased.
    let page = history(f, "bob", "alice:bob", None, 50).await.unwrap();
    let seen: Vec<(&str, bool)> = page
        .iter()
        .map(|m| (m.sender.as_str(), m.is_erased()))
        .collect();
    assert_eq!(seen, [("bob", false), ("alice", true), ("alice", true)]);
    assert!(
        page.iter()
            .filter(|m| m.sender == "alice")
            .all(|m| m.text.is_empty())
    );
    for member in ["bob", "carol"] {
        let erased: Vec<bool> = synced(f, member)
            .await
            .into_iter()
            .filter(|(sender, ..)| sender == "alice")
            .map(|(_, text, erased)| erased && text.is_empty())
            .collect();
        assert!(
            !erased.is_empty() && erased.iter().all(|e| *e),
            "{member}: {erased:?}"
        );
    }
    // Previews that showed an erased text show the tombstone.
    let preview = entry(&list(f, "bob").await, "alice:bob")
        .last_message
        .clone()
        .unwrap();
    assert_eq!(preview.message_id, last.message_id);
    assert!(preview.is_erased() && preview.text.is_empty());
    let preview = entry(&list(f, "carol").await, &group)
        .last_message
        .clone()
        .unwrap();
    assert!(preview.is_erased());
}

async fn erasing_forgets_the_users_read_state(f: &Fixture) {
    send(f, "bob", "alice").await;
    let newest = send(f, "bob", "alice").await;
    mark(f, "alice", "alice:bob", read_up_to(newest.message_id))
        .await
        .unwrap();
    let before = list(f, "alice").await;
    assert_eq!(entry(&before, "alice:bob").unread_count, 0);
    let report = opened(f)
        .await
        .erase_user(&key(T, "alice"), 500, None)
        .await
        .unwrap();
    assert_eq!((report.texts, report.read_states), (0, 1));
    let alice = entry(&list(f, "alice").await, "alice:bob").clone();
    assert_eq!((alice.read_marker, alice.unread_count), (0, 2));
    // Bob no longer sees how far alice read.
    match &entry(&list(f, "bob").await, "alice:bob").kind {
        ConversationKind::Direct {
            peer_read_marker, ..
        } => assert_eq!(*peer_read_marker, 0),
        other => panic!("a direct conversation, not {other:?}"),
    }
}

async fn erasure_is_resumable_and_a_rerun_does_nothing(f: &Fixture) {
    for _ in 0..5 {
        send(f, "alice", "bob").await;
    }
    let alice = key(T, "alice");
    // A run that stops after one batch of two (as a crash would) ...
    let stopped = opened(f)
        .await
        .erase_user(&alice, 2, Some(1))
        .await
        .unwrap();
    assert_eq!((stopped.texts, stopped.complete), (2, false));
    let left = raw_texts(f, "alice").await;
    assert_eq!(left.iter().filter(|t| t.is_empty()).count(), 2);
    // ... is carried on by the next ...
    let rest = opened(f).await.erase_user(&alice, 2, None).await.unwrap();
    assert_eq!((rest.texts, rest.complete), (3, true));
    assert!(raw_texts(f, "alice").await.iter().all(String::is_empty));
    // ... and one more finds nothing to do.
    let again = opened(f).await.erase_user(&alice, 2, None).await.unwrap();
    assert_eq!(
        (again.texts, again.read_states, again.complete),
        (0, 0, true)
    );
}

async fn an_unknown_user_is_refused(f: &Fixture) {
    send(f, "alice", "bob").await;
    let store = opened(f).await;
    let nobody = key(T, "nobody");
    let erased = store.erase_user(&nobody, 500, None).await;
    assert!(
        matches!(erased, Err(UserDataError::UnknownUser { .. })),
        "{erased:?}"
    );
    let mut out = Vec::new();
    let exported = store.export_user(&nobody, &mut out).await;
    assert!(
        matches!(exported, Err(UserDataError::UnknownUser { .. })),
        "{exported:?}"
    );
    assert!(out.is_empty());
}
