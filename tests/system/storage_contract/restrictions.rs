//! Restrictions the server API imposes on users: a ban until a time (lifted with 0), and the
//! time before which a user's tokens are refused, which only moves forward. A gateway loads
//! the active ones at start.

use super::*;

use peroxo_protocol::restriction::{Restriction, RestrictionChange};

contract!(
    a_user_without_restriction_reads_all_zero,
    a_ban_is_recorded_lifted_and_keeps_the_revocation,
    a_revocation_only_moves_forward,
    active_restrictions_are_running_bans_and_revocations_of_every_tenant,
    invalid_changes_are_refused_and_change_nothing,
    a_restriction_outlives_the_service_that_recorded_it,
);

fn ban(until: i64, reason: &str) -> RestrictionChange {
    RestrictionChange {
        ban_until: Some(until),
        reason: Some(reason.into()),
        revoke_before: None,
    }
}

fn revoke(before: i64) -> RestrictionChange {
    RestrictionChange {
        revoke_before: Some(before),
        ..RestrictionChange::default()
    }
}

async fn a_user_without_restriction_reads_all_zero(f: &Fixture) {
    let r = f.client.restrictions(key(T, "alice")).await.unwrap();
    assert_eq!(r, Restriction::default());
}

async fn a_ban_is_recorded_lifted_and_keeps_the_revocation(f: &Fixture) {
    let alice = key(T, "alice");
    f.client
        .set_restriction(alice.clone(), revoke(500))
        .await
        .unwrap();
    let banned = f
        .client
        .set_restriction(alice.clone(), ban(9_000, "spam"))
        .await
        .unwrap();
    let expected = Restriction {
        banned_until: 9_000,
        ban_reason: "spam".into(),
        tokens_before: 500,
    };
    assert_eq!(banned, expected);
    assert_eq!(
        f.client.restrictions(alice.clone()).await.unwrap(),
        expected
    );
    // Another user of the tenant, and the same user of another tenant, are not touched.
    assert_eq!(
        f.client.restrictions(key(T, "bob")).await.unwrap(),
        Restriction::default()
    );
    assert_eq!(
        f.client.restrictions(key("other", "alice")).await.unwrap(),
        Restriction::default()
    );
    let lifted = RestrictionChange {
        ban_until: Some(0),
        ..RestrictionChange::default()
    };
    let after = f
        .client
        .set_restriction(alice.clone(), lifted)
        .await
        .unwrap();
    let expected = Restriction {
        tokens_before: 500,
        ..Restriction::default()
    };
    assert_eq!(after, expected);
    assert_eq!(f.client.restrictions(alice).await.unwrap(), expected);
}

async fn a_revocation_only_moves_forward(f: &Fixture) {
    let alice = key(T, "alice");
    f.client
        .set_restriction(alice.clone(), revoke(7_000))
        .await
        .unwrap();
    let r = f
        .client
        .set_restriction(alice.clone(), revoke(3_000))
        .await
        .unwrap();
    assert_eq!(r.tokens_before, 7_000);
    let r = f
        .client
        .set_restriction(alice.clone(), revoke(8_000))
        .await
        .unwrap();
    assert_eq!(r.tokens_before, 8_000);
    assert_eq!(
        f.client.restrictions(alice).await.unwrap().tokens_before,
        8_000
    );
}

async fn active_restrictions_are_running_bans_and_revocations_of_every_tenant(f: &Fixture) {
    let now = 1_000_000;
    f.client
        .set_restriction(key(T, "running"), ban(now + 1, "a"))
        .await
        .unwrap();
    f.client
        .set_restriction(key(T, "ended"), ban(now, "b"))
        .await
        .unwrap();
    f.client
        .set_restriction(key("other", "revoked"), revoke(5))
        .await
        .unwrap();
    f.client
        .set_restriction(key(T, "lifted"), ban(now + 10, "c"))
        .await
        .unwrap();
    let lift = RestrictionChange {
        ban_until: Some(0),
        ..RestrictionChange::default()
    };
    f.client
        .set_restriction(key(T, "lifted"), lift)
        .await
        .unwrap();
    let active = f.client.active_restrictions(now).await.unwrap();
    let names: Vec<(String, String)> = active
        .iter()
        .map(|(u, _)| (u.tenant.clone(), u.user.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("other".to_owned(), "revoked".to_owned()),
            (T.to_owned(), "running".to_owned())
        ]
    );
    assert_eq!(active[1].1.ban_reason, "a");
    assert_eq!(active[0].1.tokens_before, 5);
}

async fn invalid_changes_are_refused_and_change_nothing(f: &Fixture) {
    let alice = key(T, "alice");
    for change in [ban(-1, "x"), revoke(-5), ban(10, &"r".repeat(121))] {
        let error = f
            .client
            .set_restriction(alice.clone(), change)
            .await
            .unwrap_err();
        assert!(matches!(error, CallError::Rejected(_)), "{error:?}");
    }
    let bad_user = f
        .client
        .set_restriction(key(T, "not a valid id!"), ban(10, "x"))
        .await
        .unwrap_err();
    assert!(matches!(bad_user, CallError::Rejected(_)), "{bad_user:?}");
    assert_eq!(
        f.client.restrictions(alice).await.unwrap(),
        Restriction::default()
    );
}

async fn a_restriction_outlives_the_service_that_recorded_it(f: &Fixture) {
    let alice = key(T, "alice");
    let recorded = f
        .client
        .set_restriction(alice.clone(), ban(i64::MAX, "for good"))
        .await
        .unwrap();
    let mut config = f.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let again = peroxo_storage::StoreServer::start(&config)
        .await
        .expect("a second service over the same database");
    let client = connect(again.addr).await;
    assert_eq!(client.restrictions(alice).await.unwrap(), recorded);
    again.stop().await;
}
