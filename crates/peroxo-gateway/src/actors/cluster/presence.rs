//! Cluster presence as plain bookkeeping: which users this node has announced, and which
//! users each other node holds.
//!
//! Nothing here knows NATS, actors or the wire format, and nothing is async: the Cluster actor
//! feeds in what it hears (with the time it heard it) and acts on what comes back, so the
//! rules can be tested without spawning anything.
//!
//! The rules. Each node numbers its presence changes (`version`) within an *incarnation* (a
//! number that tells one start of its Cluster actor from earlier ones, whose numbering
//! started again from 0). A change must carry the next number; a heartbeat or a snapshot
//! states the current one. A number beyond what was expected means changes were missed, and
//! the caller then asks every node for its list (`hello`). A message with another incarnation
//! than the one known for a node drops everything that node said before. The first chunk of a
//! snapshot replaces a node's list; later chunks add to it. A node not heard from for longer
//! than the TTL, or that said `bye`, is forgotten with its users. A user counts as online
//! remotely while at least one other node lists it, and only the edges (first node lists it,
//! last node drops it) are reported as [`RemoteChange`]s.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use peroxo_protocol::domain::UserKey;
use tokio::time::Instant;

/// Where a presence envelope stands in its node's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    /// Tells one start of a node's Cluster actor from earlier ones (never 0).
    pub(super) incarnation: u64,
    /// The number of the node's latest presence change.
    pub(super) version: u64,
}

/// A user that came online on some other node (no other node listed it before), or is no
/// longer online on any other node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RemoteChange {
    pub(super) user: UserKey,
    pub(super) online: bool,
}

/// What hearing from another node means for this one.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Heard {
    /// The node's numbering jumped: this node missed changes and should ask for lists.
    pub(super) missed: bool,
    /// Users whose cluster-wide presence changed, in the order it changed.
    pub(super) changes: Vec<RemoteChange>,
}

/// How an envelope relates to its node's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numbering {
    /// A change: it must carry the number after the last one.
    Next,
    /// A heartbeat or a snapshot: it states the current number.
    Current,
}

/// A new incarnation number for this start of the Cluster actor: the wall clock in
/// nanoseconds, never 0 (0 stands for "not known yet").
pub(super) fn new_incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos());
    u64::try_from(nanos % u128::from(u64::MAX))
        .unwrap_or(1)
        .max(1)
}

/// The users this node has announced as online, and its numbering of those announcements.
#[derive(Debug)]
pub(super) struct LocalUsers {
    incarnation: u64,
    version: u64,
    users: HashSet<UserKey>,
}

impl LocalUsers {
    pub(super) fn new(incarnation: u64) -> Self {
        Self {
            incarnation,
            version: 0,
            users: HashSet::new(),
        }
    }

    /// Where this node's numbering stands.
    pub(super) fn stamp(&self) -> Stamp {
        Stamp {
            incarnation: self.incarnation,
            version: self.version,
        }
    }

    /// Lists a user without numbering a change: a restarted Cluster's users are announced
    /// by the snapshot that follows.
    pub(super) fn restore(&mut self, user: UserKey) {
        self.users.insert(user);
    }

    /// Records that a user's first local session opened (`online`) or last one closed.
    /// Returns the change's stamp, or `None` when the user was already in that state.
    pub(super) fn set(&mut self, user: UserKey, online: bool) -> Option<Stamp> {
        let changed = if online {
            self.users.insert(user)
        } else {
            self.users.remove(&user)
        };
        if !changed {
            return None;
        }
        self.version += 1;
        Some(self.stamp())
    }

    /// Drops every user at once, as one numbered change (to be announced by a snapshot).
    pub(super) fn clear(&mut self) -> Stamp {
        self.users.clear();
        self.version += 1;
        self.stamp()
    }

    /// The users, as (tenant, user) pairs for a snapshot.
    pub(super) fn pairs(&self) -> Vec<(String, String)> {
        self.users
            .iter()
            .map(|k| (k.tenant.clone(), k.user.clone()))
            .collect()
    }
}

/// What this node knows of the other nodes' users.
#[derive(Debug, Default)]
pub(super) struct Peers {
    peers: HashMap<String, Peer>,
    /// How many other nodes list each remote user.
    remote: HashMap<UserKey, usize>,
}

/// What this node knows of one other node.
#[derive(Debug)]
struct Peer {
    /// 0 until known (a node first heard of through its `hello`).
    incarnation: u64,
    version: u64,
    last_seen: Instant,
    users: HashSet<UserKey>,
}

impl Peer {
    fn new(incarnation: u64, now: Instant) -> Self {
        Self {
            incarnation,
            version: 0,
            last_seen: now,
            users: HashSet::new(),
        }
    }
}

impl Peers {
    /// `node` says `user`'s first session there opened (`online`) or last one closed.
    pub(super) fn change(
        &mut self,
        node: &str,
        stamp: Stamp,
        user: UserKey,
        online: bool,
        now: Instant,
    ) -> Heard {
        let mut changes = Vec::new();
        let missed = self.heard(node, stamp, Numbering::Next, now, &mut changes);
        if online {
            self.peer_adds(node, user, &mut changes);
        } else {
            self.peer_removes(node, &user, &mut changes);
        }
        Heard { missed, changes }
    }

    /// `node` is alive and its numbering stands at `stamp`.
    pub(super) fn heartbeat(&mut self, node: &str, stamp: Stamp, now: Instant) -> Heard {
        let mut changes = Vec::new();
        let missed = self.heard(node, stamp, Numbering::Current, now, &mut changes);
        Heard { missed, changes }
    }

    /// A chunk of `node`'s list of online users; the `first` chunk replaces the list. A
    /// snapshot states the node's whole list, so a jump in its numbering is not a gap.
    pub(super) fn snapshot(
        &mut self,
        node: &str,
        stamp: Stamp,
        first: bool,
        users: impl IntoIterator<Item = UserKey>,
        now: Instant,
    ) -> Vec<RemoteChange> {
        let mut changes = Vec::new();
        self.heard(node, stamp, Numbering::Current, now, &mut changes);
        if first {
            for user in self.users_of(node) {
                self.peer_removes(node, &user, &mut changes);
            }
        }
        for user in users {
            self.peer_adds(node, user, &mut changes);
        }
        changes
    }

    /// `node` said `hello`: a node not known yet becomes known (its incarnation is taken
    /// from the first envelope numbered by it), so that it expires if it never speaks again.
    pub(super) fn hello(&mut self, node: &str, now: Instant) {
        self.peers
            .entry(node.to_owned())
            .or_insert_with(|| Peer::new(0, now));
    }

    /// `node` left: its users no longer count.
    pub(super) fn forget(&mut self, node: &str) -> Vec<RemoteChange> {
        let mut changes = Vec::new();
        self.forget_into(node, &mut changes);
        changes
    }

    /// Forgets every node not heard from for longer than `ttl` before `now`.
    pub(super) fn expire(&mut self, now: Instant, ttl: Duration) -> Vec<RemoteChange> {
        let silent: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_seen) > ttl)
            .map(|(n, _)| n.clone())
            .collect();
        let mut changes = Vec::new();
        for node in silent {
            self.forget_into(&node, &mut changes);
        }
        changes
    }

    /// Every user online on at least one other node.
    pub(super) fn remote_users(&self) -> Vec<UserKey> {
        self.remote.keys().cloned().collect()
    }

    /// Records that `node` spoke with `stamp`; returns whether changes were missed.
    fn heard(
        &mut self,
        node: &str,
        stamp: Stamp,
        numbering: Numbering,
        now: Instant,
        changes: &mut Vec<RemoteChange>,
    ) -> bool {
        if self
            .peers
            .get(node)
            .is_some_and(|p| p.incarnation != stamp.incarnation && p.incarnation != 0)
        {
            // The node's link restarted and numbers from 0 again: what it said before
            // no longer stands.
            self.forget_into(node, changes);
        }
        let peer = self
            .peers
            .entry(node.to_owned())
            .or_insert_with(|| Peer::new(stamp.incarnation, now));
        if peer.incarnation == 0 {
            peer.incarnation = stamp.incarnation;
        }
        peer.last_seen = now;
        let expected = match numbering {
            Numbering::Next => peer.version + 1,
            Numbering::Current => peer.version,
        };
        peer.version = peer.version.max(stamp.version);
        stamp.version > expected
    }

    fn users_of(&self, node: &str) -> Vec<UserKey> {
        self.peers
            .get(node)
            .map(|p| p.users.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn peer_adds(&mut self, node: &str, user: UserKey, changes: &mut Vec<RemoteChange>) {
        let Some(peer) = self.peers.get_mut(node) else {
            return;
        };
        if peer.users.insert(user.clone()) {
            let count = self.remote.entry(user.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                changes.push(RemoteChange { user, online: true });
            }
        }
    }

    fn peer_removes(&mut self, node: &str, user: &UserKey, changes: &mut Vec<RemoteChange>) {
        let Some(peer) = self.peers.get_mut(node) else {
            return;
        };
        if peer.users.remove(user)
            && let Some(count) = self.remote.get_mut(user)
        {
            *count -= 1;
            if *count == 0 {
                self.remote.remove(user);
                changes.push(RemoteChange {
                    user: user.clone(),
                    online: false,
                });
            }
        }
    }

    /// A node left or went silent: its users no longer count.
    fn forget_into(&mut self, node: &str, changes: &mut Vec<RemoteChange>) {
        let users = self.users_of(node);
        for user in &users {
            self.peer_removes(node, user, changes);
        }
        self.peers.remove(node);
        tracing::info!(%node, users = users.len(), "cluster node gone");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn user(name: &str) -> UserKey {
        UserKey::new("acme", name)
    }

    fn stamp(incarnation: u64, version: u64) -> Stamp {
        Stamp {
            incarnation,
            version,
        }
    }

    fn online(name: &str) -> RemoteChange {
        RemoteChange {
            user: user(name),
            online: true,
        }
    }

    fn offline(name: &str) -> RemoteChange {
        RemoteChange {
            user: user(name),
            online: false,
        }
    }

    fn sorted(mut users: Vec<UserKey>) -> Vec<UserKey> {
        users.sort();
        users
    }

    /// Peers where `node` (incarnation 1) has announced `names` as changes 1, 2, ...
    fn peers_with(node: &str, names: &[&str], now: Instant) -> Peers {
        let mut peers = Peers::default();
        for (i, name) in names.iter().enumerate() {
            peers.change(node, stamp(1, i as u64 + 1), user(name), true, now);
        }
        peers
    }

    #[test]
    fn a_user_a_peer_announces_comes_online_once() {
        let now = Instant::now();
        let mut peers = Peers::default();
        let heard = peers.change("gw-2", stamp(1, 1), user("bob"), true, now);
        assert_eq!(
            heard,
            Heard {
                missed: false,
                changes: vec![online("bob")]
            }
        );
        assert_eq!(peers.remote_users(), vec![user("bob")]);
        // Said again (a repeated or reordered change), it is no news.
        let again = peers.change("gw-2", stamp(1, 2), user("bob"), true, now);
        assert!(again.changes.is_empty());
    }

    #[test]
    fn a_user_on_two_peers_stays_online_until_neither_lists_it() {
        let now = Instant::now();
        let mut peers = peers_with("gw-2", &["bob"], now);
        let second = peers.change("gw-3", stamp(1, 1), user("bob"), true, now);
        assert!(second.changes.is_empty());

        let first_gone = peers.change("gw-2", stamp(1, 2), user("bob"), false, now);
        assert!(first_gone.changes.is_empty());
        assert_eq!(peers.remote_users(), vec![user("bob")]);

        let both_gone = peers.change("gw-3", stamp(1, 2), user("bob"), false, now);
        assert_eq!(both_gone.changes, vec![offline("bob")]);
        assert!(peers.remote_users().is_empty());
    }

    #[test]
    fn removing_a_user_the_peer_never_listed_changes_nothing() {
        let now = Instant::now();
        let mut peers = peers_with("gw-2", &["bob"], now);
        let heard = peers.change("gw-2", stamp(1, 2), user("carol"), false, now);
        assert!(heard.changes.is_empty());
        assert_eq!(peers.remote_users(), vec![user("bob")]);
    }

    #[test]
    fn a_peers_users_stay_online_until_the_ttl_passes_without_word_from_it() {
        let start = Instant::now();
        let mut peers = peers_with("gw-2", &["bob"], start);
        assert!(peers.expire(start + TTL, TTL).is_empty());
        assert_eq!(peers.remote_users(), vec![user("bob")]);

        let changes = peers.expire(start + TTL + Duration::from_millis(1), TTL);
        assert_eq!(changes, vec![offline("bob")]);
        assert!(peers.remote_users().is_empty());
    }

    #[test]
    fn a_heartbeat_keeps_a_peer_from_expiring() {
        let start = Instant::now();
        let mut peers = peers_with("gw-2", &["bob"], start);
        peers.heartbeat("gw-2", stamp(1, 1), start + TTL);
        assert!(peers.expire(start + TTL * 3 / 2, TTL).is_empty());
        assert_eq!(peers.remote_users(), vec![user("bob")]);
    }

    #[test]
    fn a_forgotten_peer_takes_only_the_users_no_other_peer_lists() {
        let now = Instant::now();
        let mut peers = peers_with("gw-2", &["bob", "carol"], now);
        peers.change("gw-3", stamp(1, 1), user("carol"), true, now);
        assert_eq!(peers.forget("gw-2"), vec![offline("bob")]);
        assert_eq!(peers.remote_users(), vec![user("carol")]);
    }

    #[test]
    fn a_forgotten_peer_starts_afresh_when_heard_again() {
        let now = Instant::now();
        let mut peers = peers_with("gw-2", &["bob", "carol"], now);
        peers.forget("gw-2");
        // Its numbering is forgotten too: version 1 is the next change again.
        let heard = peers.change("gw-2", stamp(1, 1), user("dave"), true, now);
        assert_eq!(
            heard,
            Heard {
                missed: false,
                changes: vec![online("dave")]
            }
        );
        assert_eq!(peers.remote_users(), vec![user("dave")]);
    }

    #[test]
    fn the_next_change_is_no_gap_and_a_skipped_number_is() {
        let now = Instant::now();
        let mut peers = peers_with("gw-2", &["bob"], now);
        let next = peers.change("gw-2", stamp(1, 2), user("carol"), true, now);
        assert!(!next.missed);
        let skipped = peers.change("gw-2", stamp(1, 4), user("dave"), true, now);
        assert!(skipped.missed);
        // The change that revealed the gap is applied all the same.
        assert_eq!(skipped.changes, vec![online("dave")]);
    }

    #[test]
    fn a_peer_first_heard_of_mid_way_is_a_gap() {
        let now = Instant::now();
        let mut peers = Peers::default();
        let change = peers.change("gw-2", stamp(1, 5), user("bob"), true, now);
        assert!(change.missed);
        let heartbeat = peers.heartbeat("gw-3", stamp(1, 5), now);
        assert!(heartbeat.missed);
        let fresh = peers.heartbeat("gw-4", stamp(1, 0), now);
        assert!(!fresh.missed);
    }

    #[test]
    fn a_heartbeat_ahead_of_the_known_number_is_a_gap_and_one_level_with_it_is_not() {
        let now = Instant::now();
        let mut peers = peers_with("gw-2", &["bob", "carol"], now);
        assert!(!peers.heartbeat("gw-2", stamp(1, 2), now).missed);
        assert!(peers.heartbeat("gw-2", stamp(1, 3), now).missed);
        // The heartbeat moved the number on: the change after it is no gap.
        let next = peers.change("gw-2", stamp(1, 4), user("dave"), true, now);
        assert!(!next.missed);
    }

    #[test]
    fn an_older_change_is_still_applied_but_does_not_move_the_number_back() {
        let now = Instant::now();
        let mut peers = peers_with("gw-2", &["bob", "carol", "dave"], now);
        // Numbered 2 while 3 is known: late, and applied anyway.
        let late = peers.change("gw-2", stamp(1, 2), user("bob"), false, now);
        assert_eq!(
            late,
            Heard {
                missed: false,
                changes: vec![offline("bob")]
            }
        );
        // The number stayed at 3, so 4 is the next change.
        assert!(
            !peers
                .change("gw-2", stamp(1, 4), user("erin"), true, now)
                .missed
        );
    }

    #[test]
    fn a_new_incarnation_drops_everything_the_previous_one_said() {
        let now = Instant::now();
        let mut peers = peers_with("gw-2", &["bob", "carol"], now);
        let heard = peers.change("gw-2", stamp(2, 1), user("carol"), true, now);
        // Numbering starts again: version 1 of the new incarnation is no gap.
        assert!(!heard.missed);
        let mut changes = heard.changes;
        changes.sort_by(|a, b| (&a.user, a.online).cmp(&(&b.user, b.online)));
        assert_eq!(
            changes,
            vec![offline("bob"), offline("carol"), online("carol")]
        );
        assert_eq!(peers.remote_users(), vec![user("carol")]);
    }

    #[test]
    fn an_older_incarnation_also_replaces_the_peers_view() {
        // Incarnations are compared for equality only: any other one is taken as a restart.
        let now = Instant::now();
        let mut peers = Peers::default();
        peers.change("gw-2", stamp(9, 1), user("bob"), true, now);
        let heard = peers.heartbeat("gw-2", stamp(3, 0), now);
        assert_eq!(heard.changes, vec![offline("bob")]);
        assert!(peers.remote_users().is_empty());
    }

    #[test]
    fn a_first_snapshot_chunk_replaces_what_was_known_of_the_peer() {
        let now = Instant::now();
        let mut peers = peers_with("gw-2", &["bob", "carol"], now);
        let changes = peers.snapshot(
            "gw-2",
            stamp(1, 2),
            true,
            [user("carol"), user("dave")],
            now,
        );
        assert_eq!(
            sorted(peers.remote_users()),
            vec![user("carol"), user("dave")]
        );
        assert!(changes.contains(&offline("bob")));
        assert!(changes.contains(&online("dave")));
        // A user in both lists is dropped and listed again, and the changes say so in order.
        let carol: Vec<&RemoteChange> =
            changes.iter().filter(|c| c.user == user("carol")).collect();
        assert_eq!(carol, vec![&offline("carol"), &online("carol")]);
    }

    #[test]
    fn a_later_snapshot_chunk_adds_to_the_list() {
        let now = Instant::now();
        let mut peers = Peers::default();
        peers.snapshot("gw-2", stamp(1, 2), true, [user("bob")], now);
        let changes = peers.snapshot("gw-2", stamp(1, 2), false, [user("carol")], now);
        assert_eq!(changes, vec![online("carol")]);
        assert_eq!(
            sorted(peers.remote_users()),
            vec![user("bob"), user("carol")]
        );
    }

    #[test]
    fn an_empty_first_snapshot_chunk_takes_every_user_of_the_peer_offline() {
        let now = Instant::now();
        let mut peers = peers_with("gw-2", &["bob"], now);
        let changes = peers.snapshot("gw-2", stamp(1, 2), true, [], now);
        assert_eq!(changes, vec![offline("bob")]);
        assert!(peers.remote_users().is_empty());
    }

    #[test]
    fn a_snapshot_sets_the_peers_number() {
        let now = Instant::now();
        let mut peers = Peers::default();
        peers.snapshot("gw-2", stamp(1, 7), true, [user("bob")], now);
        assert!(
            !peers
                .change("gw-2", stamp(1, 8), user("carol"), true, now)
                .missed
        );
    }

    #[test]
    fn a_node_known_only_from_its_hello_takes_the_incarnation_it_numbers_with() {
        let now = Instant::now();
        let mut peers = Peers::default();
        peers.hello("gw-2", now);
        let heard = peers.change("gw-2", stamp(5, 1), user("bob"), true, now);
        assert_eq!(
            heard,
            Heard {
                missed: false,
                changes: vec![online("bob")]
            }
        );
        // Incarnation 5 is now the known one: the same again is no restart.
        let same = peers.heartbeat("gw-2", stamp(5, 1), now);
        assert!(same.changes.is_empty());
        assert_eq!(peers.remote_users(), vec![user("bob")]);
    }

    #[test]
    fn a_hello_from_a_known_node_keeps_its_users() {
        let now = Instant::now();
        let mut peers = peers_with("gw-2", &["bob"], now);
        peers.hello("gw-2", now);
        assert_eq!(peers.remote_users(), vec![user("bob")]);
        assert!(
            !peers
                .change("gw-2", stamp(1, 2), user("carol"), true, now)
                .missed
        );
    }

    #[test]
    fn a_local_change_is_numbered_once_and_a_repeat_is_not_a_change() {
        let mut local = LocalUsers::new(7);
        assert_eq!(local.stamp(), stamp(7, 0));
        assert_eq!(local.set(user("bob"), true), Some(stamp(7, 1)));
        assert_eq!(local.set(user("bob"), true), None);
        assert_eq!(local.set(user("bob"), false), Some(stamp(7, 2)));
        assert_eq!(local.set(user("bob"), false), None);
        assert!(local.pairs().is_empty());
    }

    #[test]
    fn restoring_a_local_user_lists_it_without_numbering_a_change() {
        let mut local = LocalUsers::new(7);
        local.restore(user("bob"));
        assert_eq!(local.stamp(), stamp(7, 0));
        assert_eq!(local.pairs(), vec![("acme".to_owned(), "bob".to_owned())]);
        assert_eq!(local.set(user("bob"), true), None);
    }

    #[test]
    fn clearing_local_users_is_one_numbered_change() {
        let mut local = LocalUsers::new(7);
        local.set(user("bob"), true);
        local.set(user("carol"), true);
        assert_eq!(local.clear(), stamp(7, 3));
        assert!(local.pairs().is_empty());
    }

    #[test]
    fn an_incarnation_is_never_zero() {
        assert_ne!(new_incarnation(), 0);
    }
}
