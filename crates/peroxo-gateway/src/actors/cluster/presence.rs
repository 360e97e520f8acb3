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
