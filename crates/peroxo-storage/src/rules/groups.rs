//! The rules of groups: what a creation or a change may do, which events it makes and whose
//! streams each enters (in commit order), and who inherits a group when its owner leaves.

use std::collections::BTreeSet;

use super::{bad_request, not_a_member, not_allowed};
use peroxo_protocol::conversation::{CreateGroup, GroupLimits, GroupOp};
use peroxo_protocol::domain::validate_id;
use peroxo_protocol::event::{
    EventKind, GROUP_ID_PREFIX, GROUP_ID_RANDOM_LEN, MAX_GROUP_MEMBERS, MAX_USERS_PER_CHANGE,
    Refusal, RefusalCode, Role, validate_title,
};

/// A fresh group id: [`GROUP_ID_PREFIX`] and [`GROUP_ID_RANDOM_LEN`] random lowercase hex
/// digits.
pub(crate) fn new_group_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let digits: String = (0..GROUP_ID_RANDOM_LEN)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).expect("a hex digit"))
        .collect();
    format!("{GROUP_ID_PREFIX}{digits}")
}

/// The most members a group may have under `limits`.
fn member_cap(limits: &GroupLimits) -> u64 {
    u64::from(limits.max_members.min(MAX_GROUP_MEMBERS))
}

/// Checks `users` named by a creation or an addition: valid ids, at most
/// [`MAX_USERS_PER_CHANGE`] once `except` and repeats are dropped. Returns them sorted.
fn checked_users(users: &[String], except: &str) -> Result<Vec<String>, Refusal> {
    let mut distinct = BTreeSet::new();
    for user in users {
        validate_id(user).map_err(|e| bad_request(format!("user {user:?} {e}")))?;
        if user != except {
            distinct.insert(user.clone());
        }
    }
    if distinct.len() > MAX_USERS_PER_CHANGE {
        return Err(bad_request(format!(
            "at most {MAX_USERS_PER_CHANGE} users may be named at once"
        )));
    }
    Ok(distinct.into_iter().collect())
}

fn checked_title(title: &str, limits: &GroupLimits) -> Result<(), Refusal> {
    validate_title(title, limits.max_title_bytes as usize)
        .map_err(|e| bad_request(format!("title {e}")))
}

fn group_full(limits: &GroupLimits) -> Refusal {
    Refusal::new(
        RefusalCode::GroupFull,
        format!("a group has at most {} members", member_cap(limits)),
    )
}

/// Checks a creation as far as it can be checked without reading the database: the title,
/// the members, and the group's size. Returns the members other than the creator, sorted.
/// The backend then checks every member's group count with [`check_group_count`].
pub(crate) fn check_creation(request: &CreateGroup) -> Result<Vec<String>, Refusal> {
    checked_title(&request.title, &request.limits)?;
    let others = checked_users(&request.members, &request.creator.user)?;
    if 1 + others.len() as u64 > member_cap(&request.limits) {
        return Err(group_full(&request.limits));
    }
    Ok(others)
}

/// Refuses to put `user`, already in `groups` groups, in one more.
pub(crate) fn check_group_count(
    user: &str,
    groups: u64,
    limits: &GroupLimits,
) -> Result<(), Refusal> {
    if groups >= u64::from(limits.max_groups_per_user) {
        return Err(Refusal::new(
            RefusalCode::TooManyGroups,
            format!(
                "{user} is already in {} groups, the most allowed",
                limits.max_groups_per_user
            ),
        ));
    }
    Ok(())
}

/// A current member of a group, as a change reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberRow {
    pub(crate) user: String,
    pub(crate) role: Role,
    /// When the member joined, as an order: earlier joins are smaller (members who joined
    /// together have the same value).
    pub(crate) joined: u64,
    /// When the member joined, in milliseconds since the Unix epoch.
    pub(crate) joined_ts: i64,
}

/// A group as a change reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupState<'a> {
    pub(crate) id: &'a str,
    pub(crate) title: &'a str,
    /// The current members, in any order.
    pub(crate) members: &'a [MemberRow],
}

impl GroupState<'_> {
    fn member(&self, user: &str) -> Option<&MemberRow> {
        self.members.iter().find(|m| m.user == user)
    }

    /// Every member's id, sorted.
    fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = self.members.iter().map(|m| m.user.clone()).collect();
        users.sort_unstable();
        users
    }
}

/// What one step of a change does to the group's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    Rename(String),
    /// New members, sorted: role member, history from now on.
    Join(Vec<String>),
    /// The member leaves (or is removed): its row turns inactive.
    Leave(String),
    SetRole {
        user: String,
        role: Role,
    },
}

/// One step of a change: its effect, and the event it makes, with the members whose streams
/// that event enters (sorted). Steps commit in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) effect: Effect,
    pub(crate) event: EventKind,
    pub(crate) audience: Vec<String>,
}

/// The steps of `actor`'s `op` on `group` (none when it changes nothing), or why it is
/// refused. New members of a [`Effect::Join`] must still pass [`check_group_count`].
pub(crate) fn plan_change(
    actor: &str,
    op: &GroupOp,
    group: GroupState<'_>,
    limits: &GroupLimits,
) -> Result<Vec<Step>, Refusal> {
    let Some(me) = group.member(actor) else {
        return Err(not_a_member(actor, group.id));
    };
    match op {
        GroupOp::Rename { title } => plan_rename(me, title, group, limits),
        GroupOp::AddMembers { users } => plan_add(me, users, group, limits),
        GroupOp::RemoveMember { user } => plan_remove(me, user, group),
        GroupOp::Leave => Ok(plan_leave(me, group)),
        GroupOp::SetRole { user, role } => plan_set_role(me, user, *role, group),
    }
}

fn plan_rename(
    me: &MemberRow,
    title: &str,
    group: GroupState<'_>,
    limits: &GroupLimits,
) -> Result<Vec<Step>, Refusal> {
    if !me.role.manages() {
        return Err(not_allowed("only the owner and admins rename a group"));
    }
    checked_title(title, limits)?;
    if title == group.title {
        return Ok(Vec::new());
    }
    Ok(vec![Step {
        effect: Effect::Rename(title.to_owned()),
        event: EventKind::GroupRenamed {
            title: title.to_owned(),
        },
        audience: group.users(),
    }])
}

fn plan_add(
    me: &MemberRow,
    users: &[String],
    group: GroupState<'_>,
    limits: &GroupLimits,
) -> Result<Vec<Step>, Refusal> {
    if !me.role.manages() {
        return Err(not_allowed("only the owner and admins add members"));
    }
    let mut new = checked_users(users, &me.user)?;
    new.retain(|user| group.member(user).is_none());
    if new.is_empty() {
        return Ok(Vec::new());
    }
    if (group.members.len() + new.len()) as u64 > member_cap(limits) {
        return Err(group_full(limits));
    }
    let mut audience = group.users();
    audience.extend(new.iter().cloned());
    audience.sort_unstable();
    Ok(vec![Step {
        effect: Effect::Join(new.clone()),
        event: EventKind::MembersAdded { users: new },
        audience,
    }])
}

fn plan_remove(me: &MemberRow, user: &str, group: GroupState<'_>) -> Result<Vec<Step>, Refusal> {
    if user == me.user {
        return Err(bad_request("to remove oneself, use leave"));
    }
    let Some(target) = group.member(user) else {
        return Err(not_a_member(user, group.id));
    };
    let allowed = match me.role {
        Role::Owner => true,
        Role::Admin => target.role == Role::Member,
        Role::Member => false,
    };
    if !allowed {
        return Err(not_allowed(format!(
            "a{} {} may not remove a{} {}",
            article_n(me.role),
            me.role.as_str(),
            article_n(target.role),
            target.role.as_str()
        )));
    }
    Ok(vec![Step {
        effect: Effect::Leave(user.to_owned()),
        event: EventKind::MemberLeft {
            user: user.to_owned(),
        },
        audience: group.users(),
    }])
}

/// "n" where the role's name takes "an".
fn article_n(role: Role) -> &'static str {
    match role {
        Role::Owner | Role::Admin => "n",
        Role::Member => "",
    }
}

fn plan_leave(me: &MemberRow, group: GroupState<'_>) -> Vec<Step> {
    let mut steps = vec![Step {
        effect: Effect::Leave(me.user.clone()),
        event: EventKind::MemberLeft {
            user: me.user.clone(),
        },
        audience: group.users(),
    }];
    let remaining: Vec<MemberRow> = group
        .members
        .iter()
        .filter(|m| m.user != me.user)
        .cloned()
        .collect();
    if me.role == Role::Owner
        && let Some(heir) = successor(&remaining)
    {
        let heir = heir.to_owned();
        let mut audience: Vec<String> = remaining.into_iter().map(|m| m.user).collect();
        audience.sort_unstable();
        steps.push(Step {
            effect: Effect::SetRole {
                user: heir.clone(),
                role: Role::Owner,
            },
            event: EventKind::RoleChanged {
                user: heir,
                role: Role::Owner,
            },
            audience,
        });
    }
    steps
}

/// Who inherits a group whose owner leaves, among the `remaining` members: the
/// longest-standing admin, else the longest-standing member; ties by user id. `None` when
/// nobody remains.
fn successor(remaining: &[MemberRow]) -> Option<&str> {
    let longest_standing = |role: Role| {
        remaining
            .iter()
            .filter(|m| m.role == role)
            .min_by(|a, b| (a.joined, &a.user).cmp(&(b.joined, &b.user)))
    };
    longest_standing(Role::Admin)
        .or_else(|| longest_standing(Role::Member))
        .map(|m| m.user.as_str())
}

fn plan_set_role(
    me: &MemberRow,
    user: &str,
    role: Role,
    group: GroupState<'_>,
) -> Result<Vec<Step>, Refusal> {
    if me.role != Role::Owner {
        return Err(not_allowed("only the owner sets roles"));
    }
    let Some(target) = group.member(user) else {
        return Err(not_a_member(user, group.id));
    };
    if user == me.user {
        return Err(bad_request(
            "the owner cannot change their own role: hand ownership over instead",
        ));
    }
    if target.role == role {
        return Ok(Vec::new());
    }
    let step = |user: &str, role| Step {
        effect: Effect::SetRole {
            user: user.to_owned(),
            role,
        },
        event: EventKind::RoleChanged {
            user: user.to_owned(),
            role,
        },
        audience: group.users(),
    };
    let mut steps = vec![step(user, role)];
    if role == Role::Owner {
        steps.push(step(&me.user, Role::Admin));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use peroxo_protocol::domain::UserKey;
    use peroxo_protocol::event::is_group_id;

    const GROUP: &str = "g~0123456789abcdef01234567";

    fn limits() -> GroupLimits {
        GroupLimits {
            max_members: 6,
            max_groups_per_user: 2,
            max_title_bytes: 16,
        }
    }

    fn member(user: &str, role: Role, joined: u64) -> MemberRow {
        MemberRow {
            user: user.to_owned(),
            role,
            joined,
            joined_ts: 0,
        }
    }

    /// alice owns; bob is an admin; carol and dave are members; dave joined last.
    fn crew() -> Vec<MemberRow> {
        vec![
            member("dave", Role::Member, 2),
            member("alice", Role::Owner, 1),
            member("carol", Role::Member, 1),
            member("bob", Role::Admin, 1),
        ]
    }

    fn plan(actor: &str, op: GroupOp) -> Result<Vec<Step>, Refusal> {
        let members = crew();
        let group = GroupState {
            id: GROUP,
            title: "Team",
            members: &members,
        };
        plan_change(actor, &op, group, &limits())
    }

    fn code(result: Result<Vec<Step>, Refusal>) -> RefusalCode {
        result.expect_err("refused").code
    }

    fn names(users: &[&str]) -> Vec<String> {
        users.iter().map(|u| (*u).to_owned()).collect()
    }

    const EVERYONE: [&str; 4] = ["alice", "bob", "carol", "dave"];

    #[test]
    fn group_ids_are_fresh_and_well_formed() {
        let (a, b) = (new_group_id(), new_group_id());
        assert!(is_group_id(&a), "{a}");
        assert_ne!(a, b);
    }

    fn creation(members: &[&str], title: &str) -> CreateGroup {
        CreateGroup {
            creator: UserKey::new("t", "alice"),
            client_msg_id: "c".into(),
            title: title.into(),
            members: names(members),
            limits: limits(),
        }
    }

    #[test]
    fn a_creation_drops_repeats_and_the_creator_and_checks_its_size() {
        assert_eq!(
            check_creation(&creation(&["carol", "bob", "carol", "alice"], "Team")),
            Ok(names(&["bob", "carol"]))
        );
        let full = check_creation(&creation(&["b", "c", "d", "e", "f", "g"], "Team"));
        assert_eq!(full.unwrap_err().code, RefusalCode::GroupFull);
        assert!(check_creation(&creation(&["b", "c", "d", "e", "f"], "Team")).is_ok());
    }

    #[test]
    fn a_creation_refuses_bad_titles_and_ids_naming_them() {
        let title = check_creation(&creation(&["bob"], "")).unwrap_err();
        assert!(title.message.contains("title"), "{title}");
        let long = check_creation(&creation(&["bob"], &"x".repeat(17))).unwrap_err();
        assert_eq!(long.code, RefusalCode::BadRequest);
        let id = check_creation(&creation(&["bob", "bad id"], "Team")).unwrap_err();
        assert!(id.message.contains("bad id"), "{id}");
        let crowd: Vec<String> = (0..=MAX_USERS_PER_CHANGE)
            .map(|i| format!("u{i}"))
            .collect();
        let crowd: Vec<&str> = crowd.iter().map(String::as_str).collect();
        let many = check_creation(&creation(&crowd, "Team")).unwrap_err();
        assert_eq!(many.code, RefusalCode::BadRequest);
    }

    #[test]
    fn the_configured_member_limit_is_capped() {
        let mut huge = limits();
        huge.max_members = u32::MAX;
        assert_eq!(member_cap(&huge), u64::from(MAX_GROUP_MEMBERS));
    }

    #[test]
    fn a_user_at_the_group_limit_joins_no_more() {
        assert!(check_group_count("bob", 1, &limits()).is_ok());
        let refusal = check_group_count("bob", 2, &limits()).unwrap_err();
        assert_eq!(refusal.code, RefusalCode::TooManyGroups);
        assert!(refusal.message.contains("bob"));
    }

    #[test]
    fn outsiders_change_nothing() {
        assert_eq!(code(plan("erin", GroupOp::Leave)), RefusalCode::NotAMember);
    }

    #[test]
    fn owners_and_admins_rename_and_the_same_title_changes_nothing() {
        let rename = |title: &str| GroupOp::Rename {
            title: title.into(),
        };
        let steps = plan("bob", rename("New")).unwrap();
        assert_eq!(steps[0].effect, Effect::Rename("New".into()));
        assert_eq!(steps[0].audience, names(&EVERYONE));
        assert_eq!(code(plan("carol", rename("New"))), RefusalCode::NotAllowed);
        assert_eq!(plan("alice", rename("Team")), Ok(Vec::new()));
        assert_eq!(code(plan("alice", rename(" "))), RefusalCode::BadRequest);
    }

    #[test]
    fn additions_skip_members_and_tell_everyone_after() {
        let add = |users: &[&str]| GroupOp::AddMembers {
            users: names(users),
        };
        let steps = plan("bob", add(&["erin", "carol", "aaron"])).unwrap();
        assert_eq!(
            steps,
            [Step {
                effect: Effect::Join(names(&["aaron", "erin"])),
                event: EventKind::MembersAdded {
                    users: names(&["aaron", "erin"])
                },
                audience: names(&["aaron", "alice", "bob", "carol", "dave", "erin"]),
            }]
        );
        assert_eq!(plan("alice", add(&["carol", "alice"])), Ok(Vec::new()));
        assert_eq!(code(plan("carol", add(&["erin"]))), RefusalCode::NotAllowed);
        assert_eq!(
            code(plan("alice", add(&["erin", "frank", "gina"]))),
            RefusalCode::GroupFull
        );
        assert_eq!(
            code(plan("alice", add(&["bad id"]))),
            RefusalCode::BadRequest
        );
    }

    #[test]
    fn removals_follow_the_roles() {
        let remove = |user: &str| GroupOp::RemoveMember { user: user.into() };
        assert_eq!(code(plan("bob", remove("bob"))), RefusalCode::BadRequest);
        let outsider = plan("bob", remove("erin")).unwrap_err();
        assert_eq!(outsider.code, RefusalCode::NotAMember);
        assert!(outsider.message.contains("erin"));
        assert_eq!(code(plan("bob", remove("alice"))), RefusalCode::NotAllowed);
        assert_eq!(code(plan("carol", remove("dave"))), RefusalCode::NotAllowed);
        let steps = plan("bob", remove("dave")).unwrap();
        assert_eq!(steps[0].effect, Effect::Leave("dave".into()));
        assert_eq!(
            steps[0].audience,
            names(&EVERYONE),
            "the removed member included"
        );
        assert!(plan("alice", remove("bob")).is_ok());
    }

    #[test]
    fn an_owner_leaving_passes_the_group_on_after_the_departure() {
        let steps = plan("alice", GroupOp::Leave).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].audience, names(&EVERYONE));
        assert_eq!(
            steps[1].event,
            EventKind::RoleChanged {
                user: "bob".into(),
                role: Role::Owner
            }
        );
        assert_eq!(steps[1].audience, names(&["bob", "carol", "dave"]));
        assert_eq!(plan("carol", GroupOp::Leave).unwrap().len(), 1);
    }

    #[test]
    fn the_heir_is_the_longest_standing_admin_else_member_then_by_id() {
        let members = [
            member("aaron", Role::Admin, 5),
            member("zoe", Role::Admin, 3),
            member("bob", Role::Member, 1),
        ];
        assert_eq!(successor(&members), Some("zoe"));
        let members = [
            member("aaron", Role::Member, 5),
            member("carol", Role::Member, 3),
            member("bob", Role::Member, 3),
        ];
        assert_eq!(successor(&members), Some("bob"));
        assert_eq!(successor(&[]), None);
    }

    #[test]
    fn only_the_owner_sets_roles_and_a_hand_over_demotes_the_owner() {
        let set = |user: &str, role| GroupOp::SetRole {
            user: user.into(),
            role,
        };
        assert_eq!(
            code(plan("bob", set("carol", Role::Admin))),
            RefusalCode::NotAllowed
        );
        assert_eq!(
            code(plan("alice", set("erin", Role::Admin))),
            RefusalCode::NotAMember
        );
        assert_eq!(
            code(plan("alice", set("alice", Role::Admin))),
            RefusalCode::BadRequest
        );
        assert_eq!(plan("alice", set("bob", Role::Admin)), Ok(Vec::new()));
        let events: Vec<EventKind> = plan("alice", set("carol", Role::Owner))
            .unwrap()
            .into_iter()
            .map(|s| s.event)
            .collect();
        assert_eq!(
            events,
            [
                EventKind::RoleChanged {
                    user: "carol".into(),
                    role: Role::Owner
                },
                EventKind::RoleChanged {
                    user: "alice".into(),
                    role: Role::Admin
                }
            ]
        );
    }
}
