//! Admission: how many WebSocket connections this node holds, in all and per user.
//!
//! The upgrade handler asks for a [`Ticket`] before it upgrades; the ticket travels with the
//! connection and gives its place back when the connection ends (dropped). Refusals become
//! HTTP statuses: 429 for a user at `limits.max_sessions_per_user`, 503 for a node at
//! `http.max_connections`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use peroxo_protocol::domain::UserKey;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this user already holds {0} sessions, the most allowed")]
    UserFull(usize),
    #[error("this node already holds {0} connections, the most allowed")]
    NodeFull(usize),
}

#[derive(Debug)]
pub struct Admission {
    /// The limits, which a reload may change: connections held beyond a lowered limit stay,
    /// and new ones wait for room under it.
    max_total: AtomicUsize,
    max_per_user: AtomicUsize,
    counts: Mutex<Counts>,
    /// The total, published for whoever waits for the node to empty (shutdown).
    total: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_user: HashMap<UserKey, usize>,
}

/// One admitted connection's place; released on drop.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    key: UserKey,
}

impl Admission {
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        Self {
            max_total: AtomicUsize::new(max_total),
            max_per_user: AtomicUsize::new(max_per_user),
            counts: Mutex::new(Counts::default()),
            total: watch::Sender::new(0),
        }
    }

    /// Takes a place for a connection of `key`, if there is one.
    pub fn admit(self: &Arc<Self>, key: &UserKey) -> Result<Ticket, Refusal> {
        let max_total = self.max_total.load(Ordering::Relaxed);
        let max_per_user = self.max_per_user.load(Ordering::Relaxed);
        let mut counts = self.counts.lock().expect("admission counts poisoned");
        if counts.total >= max_total {
            return Err(Refusal::NodeFull(max_total));
        }
        let user = counts.per_user.entry(key.clone()).or_insert(0);
        if *user >= max_per_user {
            return Err(Refusal::UserFull(max_per_user));
        }
        *user += 1;
        counts.total += 1;
        self.total.send_replace(counts.total);
        Ok(Ticket {
            admission: Arc::clone(self),
            key: key.clone(),
        })
    }

    /// Applies new limits to the connections admitted from now on.
    pub fn set_limits(&self, max_total: usize, max_per_user: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_user.store(max_per_user, Ordering::Relaxed);
    }

    /// Connections held now.
    pub fn connections(&self) -> usize {
        self.counts.lock().expect("admission counts poisoned").total
    }

    /// Waits until no connection is held, for at most `timeout`; returns whether it emptied.
    pub async fn wait_until_empty(&self, timeout: std::time::Duration) -> bool {
        let mut total = self.total.subscribe();
        matches!(
            tokio::time::timeout(timeout, total.wait_for(|n| *n == 0)).await,
            Ok(Ok(_))
        )
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .expect("admission counts poisoned");
        counts.total -= 1;
        self.admission.total.send_replace(counts.total);
        if let Some(user) = counts.per_user.get_mut(&self.key) {
            *user -= 1;
            if *user == 0 {
                counts.per_user.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_limited_per_user_and_per_node_and_given_back() {
        let admission = Arc::new(Admission::new(3, 2));
        let alice = UserKey::new("t", "alice");
        let bob = UserKey::new("t", "bob");
        let a1 = admission.admit(&alice).unwrap();
        let _a2 = admission.admit(&alice).unwrap();
        assert_eq!(admission.admit(&alice).unwrap_err(), Refusal::UserFull(2));
        let _b1 = admission.admit(&bob).unwrap();
        assert_eq!(admission.admit(&bob).unwrap_err(), Refusal::NodeFull(3));
        drop(a1);
        assert_eq!(admission.connections(), 2);
        admission.admit(&alice).unwrap();
    }

    #[test]
    fn new_limits_apply_to_the_next_admissions_and_keep_those_held() {
        let admission = Arc::new(Admission::new(10, 3));
        let alice = UserKey::new("t", "alice");
        let held: Vec<Ticket> = (0..3).map(|_| admission.admit(&alice).unwrap()).collect();
        admission.set_limits(10, 1);
        assert_eq!(admission.admit(&alice).unwrap_err(), Refusal::UserFull(1));
        assert_eq!(admission.connections(), 3);
        drop(held);
        let _alice = admission.admit(&alice).unwrap();
        admission.set_limits(1, 5);
        assert_eq!(
            admission.admit(&UserKey::new("t", "bob")).unwrap_err(),
            Refusal::NodeFull(1)
        );
    }
}
