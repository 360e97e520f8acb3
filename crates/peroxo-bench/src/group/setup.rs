//! Setting up a `group` run: member 0 of every group creates it with its other members, and
//! every user waits on its own session until it has seen a `group_created` event for each of
//! its groups. The traffic starts only when every member of every group knows its groups, so
//! that no message can arrive before the membership it needs.
//!
//! A creation is idempotent by its `client_msg_id`: one refused with a retryable error is sent
//! again, unchanged, a few times. The events' seqs are the first entries of every user's
//! stream, and the traffic's check of gapless seqs starts from them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use peroxo_client::{Connection, Incoming, ServerFrame};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::plan::Layout;
use crate::report::Progress;
use crate::traffic::{Session, names};

/// How long a creation refused with a retryable error waits before it is sent again.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// How many times a creation is sent at most.
const MAX_ATTEMPTS: u32 = 5;
/// How many failed users a setup error names.
const FAILURES_NAMED: usize = 5;
/// The `event` of a group's creation.
pub(super) const GROUP_CREATED: &str = "group_created";

/// What one user's setup found.
struct Ready {
    user: u32,
    connection: Connection,
    /// The seqs of the events the user received.
    seen: Vec<u64>,
    /// The id of each of the user's groups, as the server told it.
    ids: Vec<(u32, String)>,
}

/// Creates every group and waits until every member has seen all of its groups created,
/// within `timeout`. Returns every user's session (user `n`'s at `n`) and each group's id.
pub(super) async fn set_up(
    connections: Vec<Connection>,
    layout: &Arc<Layout>,
    timeout: Duration,
) -> anyhow::Result<(Vec<Session>, Vec<String>)> {
    let deadline = Instant::now() + timeout;
    let ready_count = Arc::new(AtomicU64::new(0));
    let progress = {
        let (ready_count, users) = (Arc::clone(&ready_count), layout.users());
        Progress::start(move |elapsed| {
            let ready = ready_count.load(Ordering::Relaxed);
            format!(
                "group setup {:>4}s  {ready} of {users} users have all their groups",
                elapsed.as_secs()
            )
        })
    };
    let mut tasks = JoinSet::new();
    for (user, connection) in (0..).zip(connections) {
        let (layout, ready_count) = (Arc::clone(layout), Arc::clone(&ready_count));
        tasks.spawn(async move {
            let ready = prepare(connection, user, &layout, deadline).await;
            ready_count.fetch_add(u64::from(ready.is_ok()), Ordering::Relaxed);
            ready
        });
    }
    let mut ready = Vec::with_capacity(layout.users() as usize);
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(user)) => ready.push(user),
            Ok(Err(failure)) => failures.push(failure),
            Err(error) => failures.push(format!("setup task: {error}")),
        }
    }
    drop(progress);
    if !failures.is_empty() {
        failures.sort();
        failures.truncate(FAILURES_NAMED);
        anyhow::bail!(
            "setting up the groups failed for {} users: {}",
            layout.users() as usize - ready.len(),
            failures.join("; ")
        );
    }
    ready.sort_by_key(|r| r.user);
    let ids = agreed_ids(layout.groups(), ready.iter().flat_map(|r| r.ids.iter()))?;
    let sessions = ready
        .into_iter()
        .map(|r| Session {
            socket: r.connection.into_parts().0,
            seen: r.seen,
        })
        .collect();
    Ok((sessions, ids))
}

/// The id of every group, from what its members were told: all must agree.
fn agreed_ids<'a>(
    groups: u32,
    told: impl Iterator<Item = &'a (u32, String)>,
) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<Option<&str>> = vec![None; groups as usize];
    for (g, id) in told {
        let slot = &mut ids[*g as usize];
        match slot {
            Some(known) if *known != id => {
                anyhow::bail!("group {g} was told as both {known} and {id}")
            }
            _ => *slot = Some(id),
        }
    }
    (0..)
        .zip(ids)
        .map(|(g, id)| {
            id.map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no member learnt the id of group {g}"))
        })
        .collect()
}

/// One user's setup: creates the groups it is member 0 of, then reads until every creation
/// is answered and every one of its groups has a `group_created` event.
async fn prepare(
    mut connection: Connection,
    me: u32,
    layout: &Layout,
    deadline: Instant,
) -> Result<Ready, String> {
    let who = names::user_name(me);
    let mine = layout.groups_of(me);
    let creating: Vec<u32> = mine
        .iter()
        .copied()
        .filter(|g| layout.member(*g, 0) == me)
        .collect();
    for g in &creating {
        send_create(&mut connection, layout, *g, &who).await?;
    }
    let mut awaited = Awaited {
        replies_due: creating.into_iter().collect(),
        events_due: mine.iter().copied().collect(),
        attempts: HashMap::new(),
        ids: HashMap::new(),
        seen: Vec::new(),
    };
    while !awaited.is_done() {
        let incoming = match tokio::time::timeout_at(deadline, connection.recv()).await {
            Ok(Ok(incoming)) => incoming,
            Ok(Err(ended)) => return Err(format!("{who}: {ended}")),
            Err(_) => {
                return Err(format!(
                    "{who}: timed out with {} creations unanswered and {} group_created events \
                     missing",
                    awaited.replies_due.len(),
                    awaited.events_due.len()
                ));
            }
        };
        let Incoming::Frame(frame) = incoming else {
            return Err(format!("{who}: undecodable frame {incoming:?}"));
        };
        if let Some(retry) = awaited
            .on_frame(frame, layout)
            .map_err(|e| format!("{who}: {e}"))?
        {
            tokio::time::sleep(RETRY_AFTER).await;
            send_create(&mut connection, layout, retry, &who).await?;
        }
    }
    Ok(Ready {
        user: me,
        connection,
        seen: awaited.seen,
        ids: awaited.ids.into_iter().collect(),
    })
}

async fn send_create(
    connection: &mut Connection,
    layout: &Layout,
    g: u32,
    who: &str,
) -> Result<(), String> {
    connection
        .send(&layout.create(g))
        .await
        .map_err(|ended| format!("{who}: creating group {g}: {ended}"))
}

/// What one user still waits for, and what it has learnt.
struct Awaited {
    /// The groups whose creation (by this user) is not answered yet.
    replies_due: HashSet<u32>,
    /// The user's groups whose `group_created` event has not arrived yet.
    events_due: HashSet<u32>,
    /// Creations sent again, by group.
    attempts: HashMap<u32, u32>,
    ids: HashMap<u32, String>,
    seen: Vec<u64>,
}

impl Awaited {
    fn is_done(&self) -> bool {
        self.replies_due.is_empty() && self.events_due.is_empty()
    }

    /// Takes one frame into account. Returns the group whose creation must be sent again, if
    /// the frame refused one with a retryable error.
    fn on_frame(&mut self, frame: ServerFrame<'_>, layout: &Layout) -> Result<Option<u32>, String> {
        match frame {
            ServerFrame::GroupCreated {
                client_msg_id,
                conversation_id,
                ..
            } => {
                let g = Layout::group_of_creation_id(&client_msg_id)
                    .filter(|g| self.replies_due.remove(g))
                    .ok_or_else(|| format!("an unexpected group_created reply {client_msg_id}"))?;
                self.learn(g, &conversation_id)?;
            }
            ServerFrame::Event(event) => {
                self.seen.push(event.seq);
                let created = event.event == GROUP_CREATED;
                let g = event
                    .title
                    .as_deref()
                    .and_then(Layout::group_of_title)
                    .filter(|g| created && self.events_due.remove(g))
                    .ok_or_else(|| format!("an unexpected {} event", event.event))?;
                if event.member_count != Some(layout.members()) {
                    return Err(format!(
                        "group {g} was created with {:?} members, not {}",
                        event.member_count,
                        layout.members()
                    ));
                }
                self.learn(g, &event.conversation_id)?;
            }
            ServerFrame::Error {
                code,
                message,
                retryable,
                client_msg_id,
                ..
            } => {
                let g = client_msg_id
                    .as_deref()
                    .and_then(Layout::group_of_creation_id);
                let attempts = g.map(|g| self.attempts.entry(g).or_insert(1));
                match (g, attempts) {
                    (Some(g), Some(attempts)) if retryable && *attempts < MAX_ATTEMPTS => {
                        *attempts += 1;
                        return Ok(Some(g));
                    }
                    _ => return Err(format!("refused with {}: {message}", code.as_str())),
                }
            }
            ServerFrame::Message(message) => {
                return Err(format!("a message before the traffic: {}", message.text));
            }
            // A `sync_hint` changes nothing here: every event is awaited by name.
            _ => {}
        }
        Ok(None)
    }

    fn learn(&mut self, g: u32, id: &str) -> Result<(), String> {
        match self.ids.insert(g, id.to_owned()) {
            Some(known) if known != id => Err(format!("group {g} is both {known} and {id}")),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_must_agree_on_every_group_id() {
        let told = [
            (0, "g~a".to_owned()),
            (1, "g~b".to_owned()),
            (0, "g~a".to_owned()),
        ];
        assert_eq!(agreed_ids(2, told.iter()).unwrap(), ["g~a", "g~b"]);
        let split = [(0, "g~a".to_owned()), (0, "g~c".to_owned())];
        assert!(agreed_ids(1, split.iter()).is_err());
        assert!(agreed_ids(2, told[..1].iter()).is_err(), "group 1 unknown");
    }
}
