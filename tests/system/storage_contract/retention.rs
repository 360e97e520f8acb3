//! Retention: messages past their tenant's age go with their stream entries, unread counts
//! and previews follow, and a sync from a pruned seq says how far the stream was pruned.
//!
//! Ages are tested by passing a `now` far enough ahead that the messages sent first are past
//! the age and those sent after them are not.

use super::*;

use peroxo_config::{RetentionConfig, TenantRetention};
use peroxo_storage::PruneBatch;

contract!(
    messages_past_the_max_age_go_and_newer_ones_stay,
    a_tenant_of_its_own_keeps_its_own_age,
    unread_counts_and_previews_follow_pruning,
    group_messages_leave_every_members_stream,
    sync_from_a_pruned_seq_reports_how_far_the_stream_was_pruned,
    pruning_is_resumable_and_idempotent,
);

const DAY_MS: i64 = 86_400_000;

/// Retention of one day for every tenant, in batches of `batch`.
pub(super) fn one_day(batch: u32) -> RetentionConfig {
    RetentionConfig {
        max_age: Some(Duration::from_secs(86_400)),
        batch,
        ..RetentionConfig::default()
    }
}

/// The time at which everything committed up to `ts` is past one day, and nothing later is.
pub(super) fn a_day_after(ts: i64) -> i64 {
    ts + DAY_MS + 1
}

/// Sends `(from, to)` pairs in tenant `t`, one batch, and returns what was stored.
async fn send_all(f: &Fixture, pairs: &[(&str, &str)]) -> Vec<StoredMessage> {
    let batch = pairs
        .iter()
        .map(|(from, to)| msg(T, from, to, &fresh_id("m")))
        .collect();
    let outcomes = f.client.append(batch).await.unwrap();
    outcomes.iter().map(|o| stored(o).0.clone()).collect()
}

/// The newest commit time of `messages`.
fn newest(messages: &[StoredMessage]) -> i64 {
    messages.iter().map(|m| m.ts).max().unwrap()
}

fn ids(messages: &[StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.message_id).collect()
}

/// `user`'s whole stream after `after_seq` (tenant `t`), in one page.
async fn sync_after(f: &Fixture, user: &str, after_seq: u64) -> peroxo_protocol::domain::SyncPage {
    f.client
        .sync(SyncQuery {
            user: key(T, user),
            after_seq,
            limit: 100,
            scope: SyncScope::Everything,
        })
        .await
        .unwrap()
}

async fn messages_past_the_max_age_go_and_newer_ones_stay(f: &Fixture) {
    let old = send_all(f, &[("alice", "bob"), ("bob", "alice"), ("alice", "bob")]).await;
    wait_past(newest(&old)).await;
    let new = send_all(f, &[("alice", "bob"), ("bob", "alice")]).await;
    let report = f
        .store
        .retention_pass(&one_day(100), a_day_after(newest(&old)))
        .await
        .unwrap();
    assert_eq!(report.deleted, 3);
    let page = history(f, "alice", "alice:bob", None, 50).await.unwrap();
    assert_eq!(ids(&page), ids(&new), "only the newer messages remain");
    // A pruned message's client_msg_id is free again: a resend is a new message.
    let resent = f
        .client
        .append(vec![msg(T, "alice", "bob", &old[0].client_msg_id)])
        .await
        .unwrap();
    let (message, duplicate) = stored(&resent[0]);
    assert!(!duplicate, "the dedupe key went with the message");
    assert_eq!(message.sender_seq, 6, "seqs go on after the pruned ones");
}

async fn a_tenant_of_its_own_keeps_its_own_age(f: &Fixture) {
    let mut config = one_day(100);
    config
        .tenants
        .insert("keep".to_owned(), TenantRetention { max_age: None });
    config.tenants.insert(
        "short".to_owned(),
        TenantRetention {
            max_age: Some(Duration::from_secs(3_600)),
        },
    );
    let batch = ["t", "keep", "short"]
        .iter()
        .map(|tenant| msg(tenant, "alice", "bob", "m1"))
        .collect();
    let stored_now = f.client.append(batch).await.unwrap();
    let ts = stored(&stored_now[0]).0.ts;
    // Two hours on: only the tenant with one hour loses its message.
    let report = f
        .store
        .retention_pass(&config, ts + 2 * 3_600_000)
        .await
        .unwrap();
    assert_eq!(report.deleted, 1);
    let remaining = |tenant: &'static str| async move {
        f.client
            .history(HistoryQuery {
                user: key(tenant, "alice"),
                conversation_id: "alice:bob".to_owned(),
                before: None,
                limit: 10,
            })
            .await
            .unwrap()
            .messages
            .len()
    };
    assert_eq!(
        (
            remaining("t").await,
            remaining("keep").await,
            remaining("short").await
        ),
        (1, 1, 0)
    );
    // Two days on: the default's day has passed too; "keep" keeps everything.
    let report = f
        .store
        .retention_pass(&config, ts + 2 * DAY_MS)
        .await
        .unwrap();
    assert_eq!(report.deleted, 1);
    assert_eq!(
        (
            remaining("t").await,
            remaining("keep").await,
            remaining("short").await
        ),
        (0, 1, 0)
    );
}

async fn unread_counts_and_previews_follow_pruning(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    let old = send_all(
        f,
        &[
            ("alice", "bob"),
            ("alice", "bob"),
            ("carol", "bob"),
            ("alice", &group),
        ],
    )
    .await;
    wait_past(newest(&old)).await;
    let new = send_all(f, &[("alice", "bob")]).await;
    let before = list(f, "bob").await;
    assert_eq!(entry(&before, "alice:bob").unread_count, 3);
    assert_eq!(before.total_unread, 5);
    f.store
        .retention_pass(&one_day(100), a_day_after(newest(&old)))
        .await
        .unwrap();
    let after = list(f, "bob").await;
    let direct = entry(&after, "alice:bob");
    assert_eq!(
        direct.unread_count, 1,
        "pruned messages are no longer unread"
    );
    assert_eq!(
        direct.last_message.as_ref().map(|m| m.message_id),
        Some(new[0].message_id)
    );
    // Conversations whose every message was pruned stay listed, without a preview.
    for conversation in ["bob:carol", group.as_str()] {
        let pruned = entry(&after, conversation);
        assert_eq!(pruned.last_message, None, "{conversation}");
        assert_eq!(pruned.unread_count, 0, "{conversation}");
    }
    assert_eq!(after.total_unread, 1);
    // The sender's own side agrees.
    let alice = list(f, "alice").await;
    assert_eq!(entry(&alice, "alice:bob").unread_count, 0);
    assert_eq!(entry(&alice, &group).last_message, None);
}

async fn group_messages_leave_every_members_stream(f: &Fixture) {
    let group = new_group(f, "alice", &["bob", "carol"]).await;
    let old = send_all(f, &[("bob", &group), ("carol", &group)]).await;
    wait_past(newest(&old)).await;
    let new = send_all(f, &[("alice", &group)]).await;
    f.store
        .retention_pass(&one_day(100), a_day_after(newest(&old)))
        .await
        .unwrap();
    for member in ["alice", "bob", "carol"] {
        let page = history(f, member, &group, None, 50).await.unwrap();
        assert_eq!(ids(&page), ids(&new), "{member}'s history");
        let stream = sync_after(f, member, 0).await;
        assert_eq!(ids(&stream.messages), ids(&new), "{member}'s stream");
        // The group's creation stays: events are not pruned.
        assert_eq!(stream.events.len(), 1, "{member}'s events");
        assert_eq!(
            stream.pruned_until, 3,
            "{member}: created (1), two messages (2, 3)"
        );
    }
}

async fn sync_from_a_pruned_seq_reports_how_far_the_stream_was_pruned(f: &Fixture) {
    let old = send_all(f, &[("alice", "bob"), ("alice", "bob"), ("bob", "alice")]).await;
    wait_past(newest(&old)).await;
    let new = send_all(f, &[("alice", "bob")]).await;
    f.store
        .retention_pass(&one_day(100), a_day_after(newest(&old)))
        .await
        .unwrap();
    // From before the pruned seqs, or inside them: the floor, and what follows it.
    for after_seq in [0, 2] {
        let page = sync_after(f, "bob", after_seq).await;
        assert_eq!(page.pruned_until, 3, "after {after_seq}");
        assert_eq!(ids(&page.messages), ids(&new), "after {after_seq}");
        assert_eq!(page.last_seq, 4);
        assert!(!page.has_more);
    }
    // From the floor on, nothing was pruned.
    let page = sync_after(f, "bob", 3).await;
    assert_eq!(page.pruned_until, 0);
    assert_eq!(ids(&page.messages), ids(&new));
    // A stream pruned to nothing keeps its numbering.
    f.store
        .retention_pass(&one_day(100), a_day_after(newest(&new)))
        .await
        .unwrap();
    assert_eq!(f.client.last_seq(key(T, "bob")).await.unwrap(), 4);
    let page = sync_after(f, "bob", 0).await;
    assert!(page.messages.is_empty());
    assert_eq!((page.pruned_until, page.last_seq), (4, 4));
    assert_eq!(send(f, "alice", "bob").await.recipient_seq, 5);
}

async fn pruning_is_resumable_and_idempotent(f: &Fixture) {
    let old = send_all(f, &[("alice", "bob"); 5]).await;
    wait_past(newest(&old)).await;
    let new = send_all(f, &[("bob", "alice")]).await;
    let now = a_day_after(newest(&old));
    // A pass stopped after its first batch of two...
    let first = f
        .store
        .prune_batch(PruneBatch {
            tenant: T.to_owned(),
            before_ts: now - DAY_MS,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(first, 2);
    // ... is carried on by the next, which deletes the rest ...
    let report = f.store.retention_pass(&one_day(2), now).await.unwrap();
    assert_eq!(report.deleted, 3);
    assert_eq!(report.batches, 2, "two, then one and the end");
    // ... and a pass over a pruned database deletes nothing.
    let again = f.store.retention_pass(&one_day(2), now).await.unwrap();
    assert_eq!(again.deleted, 0);
    let page = history(f, "bob", "alice:bob", None, 50).await.unwrap();
    assert_eq!(ids(&page), ids(&new));
    assert_eq!(sync_after(f, "alice", 0).await.pruned_until, 5);
}

/// The service's own task prunes, without being asked, every `retention.interval`.
#[tokio::test]
async fn the_retention_task_prunes_by_itself_and_counts_what_it_deleted() {
    let f = Fixture::new(StorageBackend::Sqlite).await;
    send(&f, "alice", "bob").await;
    let retention = RetentionConfig {
        max_age: Some(Duration::from_secs(1)),
        interval: Duration::from_millis(100),
        ..RetentionConfig::default()
    };
    // A second service over the same file, with retention on.
    let mut config = f.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let pruning = peroxo_storage::StoreServer::start_with_retention(&config, &retention)
        .await
        .unwrap();
    let stats = pruning.retention_stats();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stats.deleted_total() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "nothing was pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stats.passes() >= 1 && stats.last_pass_ms() > 0);
    assert!(
        history(&f, "alice", "alice:bob", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    pruning.stop().await;
    f.finish().await;
}
