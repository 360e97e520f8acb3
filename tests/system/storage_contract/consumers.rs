//! Consumers of the event feed: a lease on each consumer's cursor goes to one holder at a
//! time (one node of a cluster sends a tenant's webhooks), passes on when it expires, and the
//! cursor it guards only moves forward and outlives its holders.

use super::*;

use peroxo_protocol::outbox::{ConsumerClaim, ConsumerLease};

contract!(
    racing_holders_get_the_lease_one_at_a_time,
    an_expired_lease_passes_on_with_its_cursor,
    a_cursor_only_moves_forward_and_only_for_the_holder,
    a_cursor_outlives_the_service_that_moved_it,
);

const CONSUMER: &str = "webhooks";
const TTL_MS: u64 = 10_000;

async fn claim(client: &StorageClient, holder: &str, now_ms: i64) -> Option<ConsumerLease> {
    client
        .claim_consumer(ConsumerClaim {
            tenant: T.into(),
            consumer: CONSUMER.into(),
            holder: holder.into(),
            ttl_ms: TTL_MS,
            now_ms,
        })
        .await
        .unwrap()
}

async fn advance(client: &StorageClient, holder: &str, cursor: u64) -> bool {
    client
        .advance_consumer(T.into(), CONSUMER.into(), holder.into(), cursor)
        .await
        .unwrap()
}

async fn racing_holders_get_the_lease_one_at_a_time(f: &Fixture) {
    let other = connect(f.store.addr).await;
    let (a, b) = tokio::join!(
        claim(&f.client, "node-a", 1_000),
        claim(&other, "node-b", 1_000)
    );
    let (winner, lease) = match (a, b) {
        (Some(lease), None) => ("node-a", lease),
        (None, Some(lease)) => ("node-b", lease),
        both => panic!("exactly one holder gets the lease, not {both:?}"),
    };
    assert_eq!(
        lease,
        ConsumerLease {
            cursor: 0,
            expires_at: 1_000 + TTL_MS as i64
        }
    );
    // The winner renews it; the loser still cannot take it while it runs.
    let renewed = claim(&f.client, winner, 5_000).await.unwrap();
    assert_eq!(renewed.expires_at, 5_000 + TTL_MS as i64);
    let loser = if winner == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    assert_eq!(
        claim(&f.client, loser, 5_000 + TTL_MS as i64 - 1).await,
        None
    );
}

async fn an_expired_lease_passes_on_with_its_cursor(f: &Fixture) {
    claim(&f.client, "node-a", 1_000).await.unwrap();
    assert!(advance(&f.client, "node-a", 5).await);
    assert_eq!(
        claim(&f.client, "node-b", 1_000 + TTL_MS as i64 - 1).await,
        None
    );
    let taken = claim(&f.client, "node-b", 1_000 + TTL_MS as i64).await;
    assert_eq!(
        taken,
        Some(ConsumerLease {
            cursor: 5,
            expires_at: 1_000 + 2 * TTL_MS as i64
        })
    );
    assert!(
        !advance(&f.client, "node-a", 9).await,
        "node-a lost the lease"
    );
    assert_eq!(claim(&f.client, "node-b", 2_000).await.unwrap().cursor, 5);
}

async fn a_cursor_only_moves_forward_and_only_for_the_holder(f: &Fixture) {
    assert!(
        !advance(&f.client, "node-a", 3).await,
        "nobody holds a new consumer"
    );
    claim(&f.client, "node-a", 1_000).await.unwrap();
    assert!(advance(&f.client, "node-a", 8).await);
    assert!(
        advance(&f.client, "node-a", 3).await,
        "the holder still holds it"
    );
    assert!(!advance(&f.client, "node-b", 20).await);
    assert_eq!(claim(&f.client, "node-a", 1_000).await.unwrap().cursor, 8);
}

async fn a_cursor_outlives_the_service_that_moved_it(f: &Fixture) {
    let mut config = f.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let second = peroxo_storage::StoreServer::start(&config).await.unwrap();
    let client = connect(second.addr).await;
    claim(&client, "node-a", 1_000).await.unwrap();
    assert!(advance(&client, "node-a", 42).await);
    second.stop().await;
    let later = 1_000 + TTL_MS as i64;
    assert_eq!(claim(&f.client, "node-b", later).await.unwrap().cursor, 42);
}
