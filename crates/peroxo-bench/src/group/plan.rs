//! The schedule of a `group` run: who is in which group ([`Layout`], fixed before the groups
//! exist), and which member sends message `i` to which group, when ([`Plan`], once the server
//! has named the groups).
//!
//! Membership: the users are shuffled (seeded) once per *round*, and each round cuts its
//! shuffle into consecutive groups of `members`; with U users there are U / members groups
//! a round, so every user is in one group of each round and in the same number of groups as
//! every other (when the groups fill their last round). Member 0 of each group creates it.
//!
//! Messages: message `i` goes to group `i mod G`, sent by that group's members in turn, so
//! every group gets `rate / G` messages per second and every member sends its share. Its
//! rows (see [`crate::traffic`]) are the group's other members, in member order.

use peroxo_protocol::{Command, CommandKind, MessageView};

use crate::rng;
use crate::traffic::{self, Route, Timeline, names};

/// Who is in which group.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    users: u32,
    groups: u32,
    members: u32,
    /// Per round, the users in shuffled order: group `r * per_round + j` is
    /// `rounds[r][j * members ..][.. members]`.
    rounds: Vec<Box<[u32]>>,
    /// Per round, each user's place in that round's shuffle.
    places: Vec<Box<[u32]>>,
}

impl Layout {
    /// `groups` groups of `members` members over (at most) `users` users, shuffled by `seed`.
    /// When fewer users would do, as many as the groups hold take part.
    pub(super) fn new(users: u32, groups: u32, members: u32, seed: u64) -> anyhow::Result<Self> {
        anyhow::ensure!(groups >= 1, "--groups must be at least 1");
        anyhow::ensure!(
            members >= 2,
            "--members must be at least 2 (a member sends to the others)"
        );
        let users = users.min(groups.saturating_mul(members));
        anyhow::ensure!(
            users >= members && users.is_multiple_of(members),
            "--users ({users}) must be a multiple of --members ({members})"
        );
        let per_round = users / members;
        let rounds: Vec<Box<[u32]>> = (0..groups.div_ceil(per_round))
            .map(|round| shuffled(users, rng::splitmix64(seed ^ u64::from(round))))
            .collect();
        let places = rounds
            .iter()
            .map(|order| {
                let mut places = vec![0; users as usize];
                for (place, user) in (0..).zip(order.iter()) {
                    places[*user as usize] = place;
                }
                places.into_boxed_slice()
            })
            .collect();
        Ok(Self {
            users,
            groups,
            members,
            rounds,
            places,
        })
    }

    /// The users taking part (user numbers `0..users`).
    pub(super) fn users(&self) -> u32 {
        self.users
    }

    pub(super) fn groups(&self) -> u32 {
        self.groups
    }

    /// The members of each group.
    pub(super) fn members(&self) -> u32 {
        self.members
    }

    /// Groups in one round: every user is in one of them.
    fn per_round(&self) -> u32 {
        self.users / self.members
    }

    /// Member `k` of group `g` (member 0 creates it).
    pub(super) fn member(&self, g: u32, k: u32) -> u32 {
        let (round, j) = (g / self.per_round(), g % self.per_round());
        self.rounds[round as usize][(j * self.members + k) as usize]
    }

    /// The members of group `g`, in member order.
    pub(super) fn members_of(&self, g: u32) -> impl Iterator<Item = u32> + '_ {
        (0..self.members).map(move |k| self.member(g, k))
    }

    /// Which member of group `g` user `user` is, if it is one.
    pub(super) fn position(&self, g: u32, user: u32) -> Option<u32> {
        let (round, j) = (g / self.per_round(), g % self.per_round());
        let place = *self.places.get(round as usize)?.get(user as usize)?;
        (place / self.members == j && g < self.groups).then_some(place % self.members)
    }

    /// The groups user `user` is in, ascending.
    pub(super) fn groups_of(&self, user: u32) -> Vec<u32> {
        (0..)
            .zip(&self.places)
            .filter_map(|(round, places)| {
                let place = *places.get(user as usize)?;
                let g = round * self.per_round() + place / self.members;
                (g < self.groups).then_some(g)
            })
            .collect()
    }

    /// The title group `g` is created with; its members recognise their groups by it.
    pub(super) fn title(g: u32) -> String {
        format!("g{g}")
    }

    /// The group a title names, if it is one of ours.
    pub(super) fn group_of_title(title: &str) -> Option<u32> {
        title.strip_prefix('g')?.parse().ok()
    }

    /// The `client_msg_id` of group `g`'s creation (distinct from every message's).
    pub(super) fn creation_id(g: u32) -> String {
        format!("create-{g}")
    }

    /// The group a creation's `client_msg_id` names, if it is one of ours.
    pub(super) fn group_of_creation_id(id: &str) -> Option<u32> {
        id.strip_prefix("create-")?.parse().ok()
    }

    /// The `create_group` of group `g`, sent by its member 0.
    pub(super) fn create(&self, g: u32) -> Command {
        Command {
            req_id: None,
            kind: CommandKind::CreateGroup {
                title: Self::title(g),
                members: (1..self.members)
                    .map(|k| names::user_name(self.member(g, k)))
                    .collect(),
                client_msg_id: Self::creation_id(g),
            },
        }
    }
}

/// `0..n` in an order shuffled by `seed` (Fisher–Yates).
fn shuffled(n: u32, seed: u64) -> Box<[u32]> {
    let mut order: Vec<u32> = (0..n).collect();
    for i in (1..order.len()).rev() {
        let bits = rng::splitmix64(seed ^ rng::splitmix64(i as u64));
        let j = rng::below(bits, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order.into_boxed_slice()
}

/// Who sends which message to which group, and when.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    layout: Layout,
    timeline: Timeline,
    /// The server's id of each group.
    ids: Vec<String>,
}

impl Plan {
    /// The plan of `layout`'s groups, named `ids` by the server, at `timeline`'s pace.
    pub(super) fn new(layout: Layout, timeline: Timeline, ids: Vec<String>) -> Self {
        debug_assert_eq!(ids.len(), layout.groups as usize);
        Self {
            layout,
            timeline,
            ids,
        }
    }

    pub(super) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The server's id of group `g`.
    pub(super) fn id(&self, g: u32) -> &str {
        &self.ids[g as usize]
    }

    /// The group message `i` goes to.
    pub(super) fn group(&self, i: u32) -> u32 {
        i % self.layout.groups
    }

    /// Which member of its group sends message `i`.
    fn sending_member(&self, i: u32) -> u32 {
        (i / self.layout.groups) % self.layout.members
    }

    /// The index of the message a delivered text names, if it is one of this run's.
    pub(super) fn index_of(&self, message: &MessageView<'_>) -> Option<u32> {
        names::index_of_text(&message.text).filter(|i| *i < self.timeline.len())
    }
}

impl traffic::Plan for Plan {
    fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    fn users(&self) -> u32 {
        self.layout.users
    }

    fn sender(&self, i: u32) -> u32 {
        self.layout.member(self.group(i), self.sending_member(i))
    }

    /// The `send` of message `i` to its group.
    fn command(&self, i: u32, text_bytes: usize) -> Command {
        Command {
            req_id: None,
            kind: CommandKind::SendToConversation {
                conversation_id: self.ids[self.group(i) as usize].clone(),
                text: names::message_text(i, text_bytes),
                client_msg_id: i.to_string(),
                reply_to: None,
            },
        }
    }

    /// Every member but the sender.
    fn fanout(&self) -> u32 {
        self.layout.members - 1
    }

    fn recipient(&self, i: u32, row: u32) -> u32 {
        let sender = self.sending_member(i);
        let k = if row < sender { row } else { row + 1 };
        self.layout.member(self.group(i), k)
    }

    /// A message must come from its planned sender, in its group, to a member other than the
    /// sender; within a group, message ids must rise.
    fn route(&self, me: u32, message: &MessageView<'_>) -> Option<Route> {
        let i = self.index_of(message)?;
        let g = self.group(i);
        let id = &self.ids[g as usize];
        let planned = message.conversation_id == *id
            && message.to == id.as_str()
            && names::user_number(&message.from) == Some(self.sender(i));
        let me_k = self.layout.position(g, me).filter(|_| planned)?;
        let sender = self.sending_member(i);
        let row = match me_k.cmp(&sender) {
            std::cmp::Ordering::Less => me_k,
            std::cmp::Ordering::Equal => return None,
            std::cmp::Ordering::Greater => me_k - 1,
        };
        Some(Route {
            index: i,
            row,
            sequence: g,
            position: message.message_id.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;
    use crate::traffic::Plan as _;

    fn layout() -> Layout {
        Layout::new(1_000, 200, 20, 7).unwrap()
    }

    #[test]
    fn every_user_is_in_as_many_groups_as_the_others_and_never_twice_in_one() {
        let layout = layout();
        assert_eq!(layout.users(), 1_000);
        let mut memberships = vec![0u32; 1_000];
        for g in 0..200 {
            let members: HashSet<u32> = layout.members_of(g).collect();
            assert_eq!(members.len(), 20, "group {g} has a repeated member");
            for (k, user) in (0..).zip(layout.members_of(g)) {
                memberships[user as usize] += 1;
                assert_eq!(layout.position(g, user), Some(k));
            }
        }
        assert!(memberships.iter().all(|n| *n == 4), "{memberships:?}");
        for user in [0, 1, 999] {
            let groups = layout.groups_of(user);
            assert_eq!(groups.len(), 4);
            assert!(groups.iter().all(|g| layout.position(*g, user).is_some()));
        }
        assert_eq!(layout.position(0, layout.member(1, 0)), None);
    }

    #[test]
    fn rounds_mix_the_users_differently() {
        let layout = layout();
        let first: HashSet<u32> = layout.members_of(0).collect();
        let later: HashSet<u32> = layout.members_of(50).collect();
        assert!(first.intersection(&later).count() < 20);
    }

    #[test]
    fn one_large_group_holds_everyone_and_fewer_users_are_taken_when_fewer_fit() {
        let one = Layout::new(1_000, 1, 1_000, 1).unwrap();
        assert_eq!(one.groups_of(123), [0]);
        let small = Layout::new(1_000, 2, 10, 1).unwrap();
        assert_eq!(small.users(), 20, "two groups of ten need twenty users");
        assert!(
            Layout::new(30, 4, 20, 1).is_err(),
            "30 users do not split into 20s"
        );
        assert!(Layout::new(10, 1, 1, 1).is_err());
    }

    #[test]
    fn a_creation_names_every_member_but_its_creator() {
        let layout = layout();
        let Command {
            kind:
                CommandKind::CreateGroup {
                    title,
                    members,
                    client_msg_id,
                },
            ..
        } = layout.create(42)
        else {
            panic!("not a create_group");
        };
        assert_eq!(Layout::group_of_title(&title), Some(42));
        assert_eq!(Layout::group_of_creation_id(&client_msg_id), Some(42));
        assert_eq!(
            names::index_of_id(&client_msg_id),
            None,
            "not a message's id"
        );
        assert_eq!(members.len(), 19);
        assert!(!members.contains(&names::user_name(layout.member(42, 0))));
    }

    fn plan() -> Plan {
        let layout = Layout::new(40, 8, 10, 3).unwrap();
        let timeline = Timeline::new(80, Duration::ZERO, Duration::from_secs(2)).unwrap();
        let ids = (0..8).map(|g| format!("g~{g:024x}")).collect();
        Plan::new(layout, timeline, ids)
    }

    #[test]
    fn members_take_turns_and_each_message_is_owed_to_every_other_member() {
        let plan = plan();
        assert_eq!(plan.fanout(), 9);
        let mut sent = [0u32; 40];
        for i in 0..plan.timeline().len() {
            let g = plan.group(i);
            let sender = plan.sender(i);
            assert!(plan.layout().position(g, sender).is_some());
            sent[sender as usize] += 1;
            let rows: HashSet<u32> = (0..9).map(|row| plan.recipient(i, row)).collect();
            let others: HashSet<u32> = plan
                .layout()
                .members_of(g)
                .filter(|u| *u != sender)
                .collect();
            assert_eq!(rows, others);
        }
        // 20 messages a group, 2 a member, and every user is in two groups.
        assert!(sent.iter().all(|n| *n == 4), "{sent:?}");
    }

    #[test]
    fn a_delivery_is_routed_to_its_member_row_and_ordered_by_message_id() {
        let plan = plan();
        let i = 13;
        let g = plan.group(i);
        let id = plan.ids[g as usize].clone();
        let message = |from: u32, conversation: &str| MessageView {
            message_id: "57".to_owned(),
            conversation_id: conversation.to_owned(),
            from: Cow::Owned(names::user_name(from)),
            to: Cow::Owned(conversation.to_owned()),
            text: Cow::Owned(names::message_text(i, 20)),
            ts: 0,
            seq: 1,
            client_msg_id: None,
            erased: false,
            reply_to: None,
            edited_ts: None,
            deleted: None,
            reactions: None,
        };
        let sender = plan.sender(i);
        for row in 0..plan.fanout() {
            let me = plan.recipient(i, row);
            let route = plan.route(me, &message(sender, &id)).unwrap();
            assert_eq!((route.index, route.row, route.sequence), (i, row, g));
            assert_eq!(route.position, 57);
        }
        let me = plan.recipient(i, 0);
        assert_eq!(
            plan.route(sender, &message(sender, &id)),
            None,
            "no copy to the sender"
        );
        assert_eq!(plan.route(me, &message(me, &id)), None, "wrong sender");
        let other = plan.ids[(g as usize + 1) % 8].clone();
        assert_eq!(
            plan.route(me, &message(sender, &other)),
            None,
            "wrong group"
        );
        let outsider = (0..40)
            .find(|u| plan.layout().position(g, *u).is_none())
            .unwrap();
        assert_eq!(
            plan.route(outsider, &message(sender, &id)),
            None,
            "not a member"
        );
    }
}
