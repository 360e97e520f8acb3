//! Groups: creation and every change, who may make it, and whose streams its events enter.

use super::*;

contract!(
    creating_a_group_makes_the_creator_owner_and_tells_every_member_once,
    group_creation_is_idempotent_per_creator_and_client_msg_id,
    group_creation_ignores_repeated_members_and_the_creator,
    group_creation_refuses_invalid_titles_and_member_ids,
    a_group_over_its_member_limit_is_refused_as_full,
    nobody_is_put_in_more_groups_than_the_limit,
    changes_need_a_known_group_and_a_member,
    owners_and_admins_rename_a_group_and_members_may_not,
    added_members_are_told_with_everyone_and_see_history_from_their_join,
    adding_members_respects_the_member_and_group_limits,
    removals_follow_the_roles_and_tell_everyone_before_the_change,
    a_removed_member_loses_the_group_until_added_again,
    leaving_tells_everyone_before_the_change,
    an_owner_leaving_hands_the_group_to_the_longest_standing_admin,
    without_admins_the_longest_standing_member_inherits_the_group,
    the_last_member_leaving_leaves_an_empty_group,
    only_the_owner_sets_roles,
    handing_ownership_over_makes_the_old_owner_an_admin,
    members_are_listed_for_members_only,
    groups_of_one_tenant_are_unknown_in_another,
);

/// Checks that `user` sees nothing of `group` yet and that the next message (sent now, by
/// alice) is the first it sees; returns that message.
async fn assert_history_starts_now(f: &Fixture, user: &str, group: &str) -> StoredMessage {
    assert_eq!(history(f, user, group, None, 10).await.unwrap(), []);
    let next = send(f, "alice", group).await;
    let seen = history(f, user, group, None, 10).await.unwrap();
    let ids: Vec<u64> = seen.iter().map(|m| m.message_id).collect();
    assert_eq!(
        ids,
        [next.message_id],
        "{user} sees what came after its join"
    );
    next
}

fn members_of(list: &[Member]) -> Vec<(&str, Role)> {
    list.iter().map(|m| (m.user.as_str(), m.role)).collect()
}

async fn members(f: &Fixture, user: &str, group: &str) -> Vec<(String, Role)> {
    let list = f
        .client
        .members(key(T, user), group.to_owned())
        .await
        .unwrap();
    members_of(&list)
        .into_iter()
        .map(|(u, r)| (u.to_owned(), r))
        .collect()
}

fn roles(expected: &[(&str, Role)]) -> Vec<(String, Role)> {
    expected
        .iter()
        .map(|(u, r)| ((*u).to_owned(), *r))
        .collect()
}

async fn creating_a_group_makes_the_creator_owner_and_tells_every_member_once(f: &Fixture) {
    f.client
        .append(vec![msg(T, "bob", "carol", "before")])
        .await
        .unwrap();
    let outcome = f
        .client
        .create_group(creation("alice", "Team", &["carol", "bob"]))
        .await
        .unwrap();
    let group = outcome.conversation_id.clone();
    assert!(is_group_id(&group), "{group}");
    assert!(!outcome.duplicate);
    let created = only_event(&outcome);
    assert_eq!(
        created.event.kind,
        EventKind::GroupCreated {
            title: "Team".into(),
            member_count: 3
        }
    );
    assert_eq!(created.event.actor, "alice");
    assert_eq!(created.event.tenant, T);
    assert_eq!(created.event.conversation_id, group);
    assert_eq!(seqs(created), [("alice", 1), ("bob", 2), ("carol", 2)]);
    assert_entered(f, created).await;
    assert_eq!(
        members(f, "bob", &group).await,
        roles(&[
            ("alice", Role::Owner),
            ("bob", Role::Member),
            ("carol", Role::Member)
        ])
    );
    let bobs = list(f, "bob").await;
    let summary = entry(&bobs, &group);
    assert_eq!(
        summary.kind,
        ConversationKind::Group {
            title: "Team".into(),
            role: Role::Member,
            member_count: 3
        }
    );
    assert_eq!(summary.last_message, None);
    assert_eq!((summary.unread_count, summary.read_marker), (0, 0));
    assert_eq!(
        summary.activity_seq, 2,
        "the creation is the group's activity"
    );
    assert_eq!(bobs.conversations[0].conversation_id, group, "newest first");
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn group_creation_is_idempotent_per_creator_and_client_msg_id(f: &Fixture) {
    let request = creation("alice", "Team", &["bob"]);
    let first = f.client.create_group(request.clone()).await.unwrap();
    let mut changed = request.clone();
    changed.title = "Another".into();
    changed.members = vec!["carol".into()];
    let again = f.client.create_group(changed).await.unwrap();
    assert_eq!(
        again,
        GroupOutcome {
            conversation_id: first.conversation_id.clone(),
            events: Vec::new(),
            duplicate: true
        },
        "a resent creation is the original group, whatever it asks now"
    );
    assert_eq!(f.client.last_seq(key(T, "bob")).await.unwrap(), 1);
    assert_eq!(f.client.last_seq(key(T, "carol")).await.unwrap(), 0);
    // Another creator may use the same id, and messages have their own namespace.
    let mut by_bob = request.clone();
    by_bob.creator = key(T, "bob");
    let other = f.client.create_group(by_bob).await.unwrap();
    assert!(!other.duplicate);
    assert_ne!(other.conversation_id, first.conversation_id);
    let sent = f
        .client
        .append(vec![msg(T, "alice", "bob", &request.client_msg_id)])
        .await
        .unwrap();
    assert!(!stored(&sent[0]).1, "a message may reuse a creation's id");
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn group_creation_ignores_repeated_members_and_the_creator(f: &Fixture) {
    let outcome = f
        .client
        .create_group(creation("alice", "Team", &["bob", "bob", "alice", "carol"]))
        .await
        .unwrap();
    let created = only_event(&outcome);
    assert_eq!(
        created.event.kind,
        EventKind::GroupCreated {
            title: "Team".into(),
            member_count: 3
        }
    );
    assert_eq!(reached(created), ["alice", "bob", "carol"]);
    assert_eq!(f.client.last_seq(key(T, "bob")).await.unwrap(), 1);
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn group_creation_refuses_invalid_titles_and_member_ids(f: &Fixture) {
    let blank = f
        .client
        .create_group(creation("alice", "  ", &["bob"]))
        .await;
    assert_bad_request(blank, "title");
    let long = "x".repeat(limits().max_title_bytes as usize + 1);
    let too_long = f
        .client
        .create_group(creation("alice", &long, &["bob"]))
        .await;
    assert_bad_request(too_long, "title");
    let bad_member = f
        .client
        .create_group(creation("alice", "Team", &["bob", "bad id"]))
        .await;
    assert_bad_request(bad_member, "bad id");
    let crowd: Vec<String> = (0..=MAX_USERS_PER_CHANGE)
        .map(|i| format!("u{i}"))
        .collect();
    let crowd: Vec<&str> = crowd.iter().map(String::as_str).collect();
    let too_many = f
        .client
        .create_group(creation("alice", "Team", &crowd))
        .await;
    assert_bad_request(too_many, &MAX_USERS_PER_CHANGE.to_string());
    for user in ["alice", "bob"] {
        assert_eq!(f.client.last_seq(key(T, user)).await.unwrap(), 0, "{user}");
    }
    assert!(list(f, "alice").await.conversations.is_empty());
}

async fn a_group_over_its_member_limit_is_refused_as_full(f: &Fixture) {
    let mut request = creation("alice", "Team", &["b", "c", "d", "e", "f", "g"]);
    assert_eq!(request.limits.max_members, 6);
    let full = f.client.create_group(request.clone()).await;
    assert_refused(full, RefusalCode::GroupFull, "");
    request.members.pop();
    request.client_msg_id = fresh_id("create");
    let outcome = f.client.create_group(request).await.unwrap();
    assert_eq!(reached(only_event(&outcome)).len(), 6);
    assert_eq!(f.client.last_seq(key(T, "g")).await.unwrap(), 0);
}

async fn nobody_is_put_in_more_groups_than_the_limit(f: &Fixture) {
    assert_eq!(limits().max_groups_per_user, 3);
    let mut bobs_groups = Vec::new();
    for creator in ["c1", "c2", "c3"] {
        bobs_groups.push(new_group(f, creator, &["bob"]).await);
    }
    let with_bob = f
        .client
        .create_group(creation("dave", "Team", &["bob"]))
        .await;
    assert_refused(with_bob, RefusalCode::TooManyGroups, "bob");
    let by_bob = f
        .client
        .create_group(creation("bob", "Team", &["dave"]))
        .await;
    assert_refused(by_bob, RefusalCode::TooManyGroups, "bob");
    assert_eq!(f.client.last_seq(key(T, "dave")).await.unwrap(), 0);
    // Leaving a group makes room for another.
    change(f, "bob", &bobs_groups[0], GroupOp::Leave)
        .await
        .unwrap();
    f.client
        .create_group(creation("dave", "Team", &["bob"]))
        .await
        .unwrap();
    assert_lists_match_streams(&f.client, &["bob", "dave", "c1"]).await;
}

async fn changes_need_a_known_group_and_a_member(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    send(f, "alice", "bob").await;
    let direct = change(f, "alice", "alice:bob", GroupOp::Leave).await;
    assert_bad_request(direct, "direct");
    let rename = GroupOp::Rename {
        title: "New".into(),
    };
    let unknown = change(f, "alice", &unknown_group(), rename.clone()).await;
    assert_refused(unknown, RefusalCode::UnknownConversation, "");
    for op in [
        rename,
        GroupOp::Leave,
        GroupOp::AddMembers {
            users: vec!["dave".into()],
        },
        GroupOp::RemoveMember { user: "bob".into() },
        GroupOp::SetRole {
            user: "bob".into(),
            role: Role::Admin,
        },
    ] {
        let outsider = change(f, "dave", &group, op.clone()).await;
        assert_refused(outsider, RefusalCode::NotAMember, "");
    }
    assert_eq!(f.client.last_seq(key(T, "dave")).await.unwrap(), 0);
    assert_lists_match_streams(&f.client, &["alice", "bob", "dave"]).await;
}

async fn owners_and_admins_rename_a_group_and_members_may_not(f: &Fixture) {
    let group = new_group(f, "alice", &["bob", "carol"]).await;
    let rename = |title: &str| GroupOp::Rename {
        title: title.to_owned(),
    };
    let outcome = change(f, "alice", &group, rename("Renamed")).await.unwrap();
    let renamed = only_event(&outcome);
    assert_fanout(
        f,
        renamed,
        "alice",
        EventKind::GroupRenamed {
            title: "Renamed".into(),
        },
        &["alice", "bob", "carol"],
    )
    .await;
    let by_member = change(f, "carol", &group, rename("Mine")).await;
    assert_refused(by_member, RefusalCode::NotAllowed, "");
    set_role(f, "alice", &group, "bob", Role::Admin).await;
    let by_admin = change(f, "bob", &group, rename("Admin's")).await.unwrap();
    assert_eq!(only_event(&by_admin).event.actor, "bob");
    let same = change(f, "alice", &group, rename("Admin's")).await.unwrap();
    assert!(same.events.is_empty(), "the same title changes nothing");
    assert!(!same.duplicate);
    let blank = change(f, "alice", &group, rename(" ")).await;
    assert_bad_request(blank, "title");
    let carols = list(f, "carol").await;
    assert!(
        matches!(&entry(&carols, &group).kind, ConversationKind::Group { title, .. } if title == "Admin's")
    );
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn added_members_are_told_with_everyone_and_see_history_from_their_join(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    let before = send(f, "alice", &group).await;
    let add = |users: &[&str]| GroupOp::AddMembers {
        users: users.iter().map(|u| (*u).to_owned()).collect(),
    };
    let outcome = change(f, "alice", &group, add(&["erin", "dave", "bob"]))
        .await
        .unwrap();
    let added = only_event(&outcome);
    assert_eq!(
        added.event.kind,
        EventKind::MembersAdded {
            users: vec!["dave".into(), "erin".into()]
        },
        "only the new members, by user id"
    );
    assert_eq!(reached(added), ["alice", "bob", "dave", "erin"]);
    assert_entered(f, added).await;
    let after = assert_history_starts_now(f, "dave", &group).await;
    let bobs = history(f, "bob", &group, None, 10).await.unwrap();
    let ids: Vec<u64> = bobs.iter().map(|m| m.message_id).collect();
    assert_eq!(ids, [before.message_id, after.message_id]);
    let nobody_new = change(f, "alice", &group, add(&["bob", "dave"]))
        .await
        .unwrap();
    assert!(nobody_new.events.is_empty());
    let by_member = change(f, "bob", &group, add(&["frank"])).await;
    assert_refused(by_member, RefusalCode::NotAllowed, "");
    let bad = change(f, "alice", &group, add(&["bad id"])).await;
    assert_bad_request(bad, "bad id");
    assert_eq!(
        members(f, "erin", &group).await,
        roles(&[
            ("alice", Role::Owner),
            ("bob", Role::Member),
            ("dave", Role::Member),
            ("erin", Role::Member)
        ])
    );
    assert_lists_match_streams(&f.client, &["alice", "bob", "dave", "erin"]).await;
}

async fn adding_members_respects_the_member_and_group_limits(f: &Fixture) {
    let group = new_group(f, "alice", &["b", "c", "d"]).await;
    let add = |users: &[&str]| GroupOp::AddMembers {
        users: users.iter().map(|u| (*u).to_owned()).collect(),
    };
    let full = change(f, "alice", &group, add(&["e", "f", "g"])).await;
    assert_refused(full, RefusalCode::GroupFull, "");
    for creator in ["x1", "x2", "x3"] {
        new_group(f, creator, &["frank"]).await;
    }
    let busy = change(f, "alice", &group, add(&["e", "frank"])).await;
    assert_refused(busy, RefusalCode::TooManyGroups, "frank");
    assert_eq!(f.client.last_seq(key(T, "e")).await.unwrap(), 0);
    change(f, "alice", &group, add(&["e", "f"])).await.unwrap();
    assert_lists_match_streams(&f.client, &["alice", "b", "e", "f", "frank"]).await;
}

async fn removals_follow_the_roles_and_tell_everyone_before_the_change(f: &Fixture) {
    let group = new_group(f, "alice", &["bob", "carol", "dave", "erin"]).await;
    for admin in ["bob", "carol"] {
        set_role(f, "alice", &group, admin, Role::Admin).await;
    }
    let remove = |user: &str| GroupOp::RemoveMember {
        user: user.to_owned(),
    };
    assert_bad_request(change(f, "bob", &group, remove("bob")).await, "leave");
    assert_refused(
        change(f, "bob", &group, remove("frank")).await,
        RefusalCode::NotAMember,
        "frank",
    );
    for target in ["carol", "alice"] {
        let admin_removes = change(f, "bob", &group, remove(target)).await;
        assert_refused(admin_removes, RefusalCode::NotAllowed, "");
    }
    let member_removes = change(f, "dave", &group, remove("erin")).await;
    assert_refused(member_removes, RefusalCode::NotAllowed, "");
    let outcome = change(f, "bob", &group, remove("dave")).await.unwrap();
    let left = only_event(&outcome);
    assert_fanout(
        f,
        left,
        "bob",
        EventKind::MemberLeft {
            user: "dave".into(),
        },
        &["alice", "bob", "carol", "dave", "erin"],
    )
    .await;
    let outcome = change(f, "alice", &group, remove("carol")).await.unwrap();
    assert_eq!(
        reached(only_event(&outcome)),
        ["alice", "bob", "carol", "erin"]
    );
    assert_eq!(
        members(f, "alice", &group).await,
        roles(&[
            ("alice", Role::Owner),
            ("bob", Role::Admin),
            ("erin", Role::Member)
        ])
    );
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol", "dave", "erin"]).await;
}

async fn a_removed_member_loses_the_group_until_added_again(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    send(f, "alice", &group).await;
    change(
        f,
        "alice",
        &group,
        GroupOp::RemoveMember { user: "bob".into() },
    )
    .await
    .unwrap();
    assert!(list(f, "bob").await.conversations.is_empty());
    let bobs_seq = f.client.last_seq(key(T, "bob")).await.unwrap();
    let refused = send_outcome(f, "bob", &group).await;
    assert_eq!(rejection(&refused).code, RefusalCode::NotAMember);
    assert_refused(
        history(f, "bob", &group, None, 10).await,
        RefusalCode::NotAMember,
        "",
    );
    assert_refused(
        f.client.members(key(T, "bob"), group.clone()).await,
        RefusalCode::NotAMember,
        "",
    );
    assert_refused(
        mark(f, "bob", &group, read_up_to(1)).await,
        RefusalCode::NotAMember,
        "",
    );
    send(f, "alice", &group).await;
    assert_eq!(
        f.client.last_seq(key(T, "bob")).await.unwrap(),
        bobs_seq,
        "a former member's stream gets nothing more"
    );
    add_members(f, "alice", &group, &["bob"]).await;
    let bobs = list(f, "bob").await;
    let back = entry(&bobs, &group);
    assert_eq!((back.last_message.clone(), back.unread_count), (None, 0));
    assert_history_starts_now(f, "bob", &group).await;
    assert_eq!(entry(&list(f, "bob").await, &group).unread_count, 1);
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}

async fn leaving_tells_everyone_before_the_change(f: &Fixture) {
    let group = new_group(f, "alice", &["bob", "carol"]).await;
    let outcome = change(f, "carol", &group, GroupOp::Leave).await.unwrap();
    let left = only_event(&outcome);
    assert_fanout(
        f,
        left,
        "carol",
        EventKind::MemberLeft {
            user: "carol".into(),
        },
        &["alice", "bob", "carol"],
    )
    .await;
    assert!(list(f, "carol").await.conversations.is_empty());
    assert_refused(
        change(f, "carol", &group, GroupOp::Leave).await,
        RefusalCode::NotAMember,
        "",
    );
    assert_eq!(
        members(f, "bob", &group).await,
        roles(&[("alice", Role::Owner), ("bob", Role::Member)])
    );
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn an_owner_leaving_hands_the_group_to_the_longest_standing_admin(f: &Fixture) {
    let group = new_group(f, "alice", &["bob", "carol", "dave"]).await;
    add_members(f, "alice", &group, &["aaron"]).await;
    // aaron sorts first, but dave joined earlier.
    for admin in ["aaron", "dave"] {
        set_role(f, "alice", &group, admin, Role::Admin).await;
    }
    let outcome = change(f, "alice", &group, GroupOp::Leave).await.unwrap();
    let [left, succession] = &outcome.events[..] else {
        panic!("expected two events: {outcome:?}");
    };
    assert_eq!(
        left.event.kind,
        EventKind::MemberLeft {
            user: "alice".into()
        }
    );
    assert_eq!(reached(left), ["aaron", "alice", "bob", "carol", "dave"]);
    assert_eq!(
        succession.event.kind,
        EventKind::RoleChanged {
            user: "dave".into(),
            role: Role::Owner
        }
    );
    assert_eq!(succession.event.actor, "alice");
    assert_eq!(reached(succession), ["aaron", "bob", "carol", "dave"]);
    for (before, after) in left
        .seqs
        .iter()
        .filter(|s| s.user != "alice")
        .zip(&succession.seqs)
    {
        assert_eq!(
            after.seq,
            before.seq + 1,
            "{}: the succession follows",
            after.user
        );
    }
    assert_entered(f, left).await;
    assert_entered(f, succession).await;
    assert_eq!(
        members(f, "bob", &group).await,
        roles(&[
            ("aaron", Role::Admin),
            ("bob", Role::Member),
            ("carol", Role::Member),
            ("dave", Role::Owner)
        ])
    );
    assert_lists_match_streams(&f.client, &["aaron", "alice", "bob", "carol", "dave"]).await;
}

async fn without_admins_the_longest_standing_member_inherits_the_group(f: &Fixture) {
    let group = new_group(f, "alice", &["carol", "bob"]).await;
    add_members(f, "alice", &group, &["aaron"]).await;
    let outcome = change(f, "alice", &group, GroupOp::Leave).await.unwrap();
    assert_eq!(
        outcome.events[1].event.kind,
        EventKind::RoleChanged {
            user: "bob".into(),
            role: Role::Owner
        },
        "bob and carol joined together, before aaron: the first by user id"
    );
    let outcome = change(f, "bob", &group, GroupOp::Leave).await.unwrap();
    assert_eq!(
        outcome.events[1].event.kind,
        EventKind::RoleChanged {
            user: "carol".into(),
            role: Role::Owner
        }
    );
    assert_lists_match_streams(&f.client, &["aaron", "alice", "bob", "carol"]).await;
}

async fn the_last_member_leaving_leaves_an_empty_group(f: &Fixture) {
    let group = new_group(f, "alice", &[]).await;
    let outcome = change(f, "alice", &group, GroupOp::Leave).await.unwrap();
    assert_eq!(reached(only_event(&outcome)), ["alice"]);
    assert!(list(f, "alice").await.conversations.is_empty());
    assert_refused(
        f.client.members(key(T, "alice"), group.clone()).await,
        RefusalCode::NotAMember,
        "",
    );
    assert_refused(
        change(f, "alice", &group, GroupOp::Leave).await,
        RefusalCode::NotAMember,
        "",
    );
    assert_lists_match_streams(&f.client, &["alice"]).await;
}

async fn only_the_owner_sets_roles(f: &Fixture) {
    let group = new_group(f, "alice", &["bob", "carol"]).await;
    let set = |user: &str, role| GroupOp::SetRole {
        user: user.to_owned(),
        role,
    };
    let by_member = change(f, "bob", &group, set("carol", Role::Admin)).await;
    assert_refused(by_member, RefusalCode::NotAllowed, "");
    let outcome = change(f, "alice", &group, set("bob", Role::Admin))
        .await
        .unwrap();
    let promoted = only_event(&outcome);
    assert_eq!(
        promoted.event.kind,
        EventKind::RoleChanged {
            user: "bob".into(),
            role: Role::Admin
        }
    );
    assert_eq!(reached(promoted), ["alice", "bob", "carol"]);
    assert_entered(f, promoted).await;
    let by_admin = change(f, "bob", &group, set("carol", Role::Admin)).await;
    assert_refused(by_admin, RefusalCode::NotAllowed, "");
    let same = change(f, "alice", &group, set("bob", Role::Admin))
        .await
        .unwrap();
    assert!(same.events.is_empty(), "the same role changes nothing");
    assert_bad_request(
        change(f, "alice", &group, set("alice", Role::Member)).await,
        "",
    );
    assert_refused(
        change(f, "alice", &group, set("dave", Role::Admin)).await,
        RefusalCode::NotAMember,
        "dave",
    );
    let outcome = change(f, "alice", &group, set("bob", Role::Member))
        .await
        .unwrap();
    assert_eq!(
        only_event(&outcome).event.kind,
        EventKind::RoleChanged {
            user: "bob".into(),
            role: Role::Member
        }
    );
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn handing_ownership_over_makes_the_old_owner_an_admin(f: &Fixture) {
    let group = new_group(f, "alice", &["bob", "carol"]).await;
    let outcome = set_role(f, "alice", &group, "carol", Role::Owner).await;
    let kinds: Vec<&EventKind> = outcome.events.iter().map(|e| &e.event.kind).collect();
    assert_eq!(
        kinds,
        [
            &EventKind::RoleChanged {
                user: "carol".into(),
                role: Role::Owner
            },
            &EventKind::RoleChanged {
                user: "alice".into(),
                role: Role::Admin
            }
        ]
    );
    for event in &outcome.events {
        assert_eq!(reached(event), ["alice", "bob", "carol"]);
        assert_entered(f, event).await;
    }
    assert_eq!(
        members(f, "bob", &group).await,
        roles(&[
            ("alice", Role::Admin),
            ("bob", Role::Member),
            ("carol", Role::Owner)
        ])
    );
    let former = change(
        f,
        "alice",
        &group,
        GroupOp::SetRole {
            user: "bob".into(),
            role: Role::Admin,
        },
    )
    .await;
    assert_refused(former, RefusalCode::NotAllowed, "");
    assert_lists_match_streams(&f.client, &["alice", "bob", "carol"]).await;
}

async fn members_are_listed_for_members_only(f: &Fixture) {
    let start = peroxo_protocol::domain::now_ms();
    let group = new_group(f, "alice", &["bob"]).await;
    send(f, "alice", "bob").await;
    add_members(f, "alice", &group, &["carol"]).await;
    let listed = f
        .client
        .members(key(T, "carol"), group.clone())
        .await
        .unwrap();
    assert_eq!(
        members_of(&listed),
        [
            ("alice", Role::Owner),
            ("bob", Role::Member),
            ("carol", Role::Member)
        ]
    );
    let end = peroxo_protocol::domain::now_ms();
    assert!(listed.iter().all(|m| (start..=end).contains(&m.joined_ts)));
    assert!(listed[0].joined_ts <= listed[2].joined_ts);
    assert_bad_request(
        f.client.members(key(T, "alice"), "alice:bob".into()).await,
        "",
    );
    assert_refused(
        f.client.members(key(T, "alice"), unknown_group()).await,
        RefusalCode::UnknownConversation,
        "",
    );
    assert_refused(
        f.client.members(key(T, "dave"), group).await,
        RefusalCode::NotAMember,
        "",
    );
}

async fn groups_of_one_tenant_are_unknown_in_another(f: &Fixture) {
    let group = new_group(f, "alice", &["bob"]).await;
    let elsewhere = key("u", "alice");
    assert_refused(
        f.client.members(elsewhere.clone(), group.clone()).await,
        RefusalCode::UnknownConversation,
        "",
    );
    let sent = f
        .client
        .append(vec![msg("u", "alice", &group, "x")])
        .await
        .unwrap();
    assert_eq!(rejection(&sent[0]).code, RefusalCode::UnknownConversation);
    let changed = f
        .client
        .change_group(GroupChange {
            actor: elsewhere.clone(),
            conversation_id: group.clone(),
            op: GroupOp::Leave,
            limits: limits(),
        })
        .await;
    assert_refused(changed, RefusalCode::UnknownConversation, "");
    assert_eq!(f.client.last_seq(elsewhere).await.unwrap(), 0);
    assert_lists_match_streams(&f.client, &["alice", "bob"]).await;
}
