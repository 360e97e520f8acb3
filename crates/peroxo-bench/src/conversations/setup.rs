//! Setting up a `conversations` run: an owner, `u0`, with `direct` direct conversations and
//! `groups` groups. Each peer `u1` … `u<direct>` sends the owner one message, which stays
//! unread; then the owner creates each group with two peers and posts one message in it. The
//! owner's list is then read page by page and must hold every conversation, with the direct
//! messages as its unread count, before any request is timed.

use std::sync::Arc;
use std::time::Duration;

use peroxo_client::{Connection, Incoming, ServerFrame};
use peroxo_protocol::event::MAX_CONVERSATIONS_LIMIT;
use peroxo_protocol::{Command, CommandKind, ReqId};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{self, CLOSE_TIMEOUT, Endpoint};
use crate::traffic::{Session, names};

/// How long a command refused with a retryable error (`rate_limited` above all) waits before
/// it is sent again: a second ends a rate limiter's streak.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How many times a setup command is sent at most.
const MAX_ATTEMPTS: u32 = 5;

/// What the owner's list is made of.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub(super) direct: u32,
    pub(super) groups: u32,
}

impl Shape {
    /// `conversations` in all, `groups` of them groups.
    pub(super) fn new(conversations: u32, groups: u32) -> anyhow::Result<Self> {
        anyhow::ensure!(conversations >= 1, "--conversations must be at least 1");
        anyhow::ensure!(
            groups <= conversations,
            "--groups ({groups}) must not exceed --conversations ({conversations})"
        );
        Ok(Self {
            direct: conversations - groups,
            groups,
        })
    }

    /// The users besides the owner: one per direct conversation, and at least two to fill
    /// the groups.
    pub(super) fn peers(&self) -> u32 {
        if self.groups > 0 {
            self.direct.max(2)
        } else {
            self.direct
        }
    }

    /// The two peers the owner creates group `k` with.
    fn group_members(&self, k: u32) -> [u32; 2] {
        let peers = self.peers();
        [1 + (2 * k) % peers, 1 + (2 * k + 1) % peers]
    }
}

/// The owner's session, ready for the timed requests.
pub(super) struct Owner {
    pub(super) session: Session,
    /// The owner's unread count over every conversation: one per direct conversation.
    pub(super) total_unread: u64,
}

/// Builds the owner's conversations, within `timeout`.
pub(super) async fn set_up(
    endpoint: &Arc<Endpoint>,
    shape: Shape,
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<Owner> {
    let deadline = Instant::now() + timeout;
    let owner_name: Arc<[String]> = Arc::from([names::user_name(0)]);
    let owner = client::open_fresh(endpoint, owner_name, 1).await?;
    let mut owner = Caller::new(owner.into_iter().next().expect("one session"), deadline);
    let peers: Arc<[String]> = (1..=shape.peers()).map(names::user_name).collect();
    let peers = client::open_fresh(endpoint, peers, concurrency).await?;
    eprintln!(
        "conversations: {} peers connected; each of {} sends the owner a message",
        shape.peers(),
        shape.direct
    );
    let (sent, received) = tokio::join!(
        send_direct(peers, shape.direct, deadline),
        owner.receive_messages(u64::from(shape.direct)),
    );
    sent?;
    received?;
    let mut ids = Vec::with_capacity(shape.groups as usize);
    for k in 0..shape.groups {
        let members = shape.group_members(k).map(names::user_name).to_vec();
        let create = CommandKind::CreateGroup {
            title: format!("c{k}"),
            members,
            client_msg_id: format!("create-{k}"),
        };
        match owner.call(create).await? {
            ServerFrame::GroupCreated {
                conversation_id, ..
            } => ids.push(conversation_id.into_owned()),
            other => anyhow::bail!("create_group answered with {other:?}"),
        }
    }
    for (k, id) in ids.into_iter().enumerate() {
        let send = CommandKind::SendToConversation {
            conversation_id: id,
            text: format!("hello c{k}"),
            client_msg_id: format!("post-{k}"),
            reply_to: None,
        };
        owner.call(send).await?;
    }
    owner.verify_list(shape).await?;
    Ok(Owner {
        total_unread: u64::from(shape.direct),
        session: Session {
            socket: owner.connection.into_parts().0,
            seen: owner.seen,
        },
    })
}

/// Has peer `n` (`u<n+1>`) send the owner one message, for the first `direct` peers, and
/// closes every peer's session.
async fn send_direct(peers: Vec<Connection>, direct: u32, deadline: Instant) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    for (n, peer) in (0..).zip(peers) {
        tasks.spawn(async move {
            let mut caller = Caller::new(peer, deadline);
            if n < direct {
                let send = CommandKind::Send {
                    to: names::user_name(0),
                    text: format!("hello from {}", names::user_name(n + 1)),
                    client_msg_id: "hello".to_owned(),
                };
                caller.call(send).await?;
            }
            caller.connection.close(CLOSE_TIMEOUT).await;
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

/// A session that issues one command at a time and waits for its answer, keeping the seqs of
/// everything it receives.
struct Caller {
    connection: Connection,
    deadline: Instant,
    /// The seqs of the acks, messages and events received.
    seen: Vec<u64>,
    /// The `req_id` of the next command.
    next_req: u64,
}

impl Caller {
    fn new(connection: Connection, deadline: Instant) -> Self {
        Self {
            connection,
            deadline,
            seen: Vec::new(),
            next_req: 0,
        }
    }

    /// The next frame, within the deadline; notes its seq.
    async fn next_frame(&mut self) -> anyhow::Result<ServerFrame<'static>> {
        let user = self.connection.welcome().user.clone();
        let received = tokio::time::timeout_at(self.deadline, self.connection.recv())
            .await
            .map_err(|_| anyhow::anyhow!("{user}: setup timed out"))?
            .map_err(|ended| anyhow::anyhow!("{user}: {ended}"))?;
        let frame = match received {
            Incoming::Frame(frame) => frame,
            Incoming::Undecodable { text, .. } => anyhow::bail!("{user}: undecodable {text}"),
        };
        match &frame {
            ServerFrame::Ack { seq, .. } => self.seen.push(*seq),
            ServerFrame::Message(message) => self.seen.push(message.seq),
            ServerFrame::Event(event) => self.seen.push(event.seq),
            _ => {}
        }
        Ok(frame)
    }

    /// Sends `kind` and returns its answer, sending it again (same ids) after a retryable
    /// error. Fails on any other error.
    async fn call(&mut self, kind: CommandKind) -> anyhow::Result<ServerFrame<'static>> {
        let req_id = ReqId::Text(format!("setup-{}", self.next_req));
        self.next_req += 1;
        let command = Command {
            req_id: Some(req_id.clone()),
            kind,
        };
        for attempt in 1.. {
            self.connection.send(&command).await?;
            loop {
                let frame = self.next_frame().await?;
                if answered(&frame) != Some(&req_id) {
                    continue;
                }
                match frame {
                    ServerFrame::Error {
                        retryable: true, ..
                    } if attempt < MAX_ATTEMPTS => break,
                    ServerFrame::Error { code, message, .. } => {
                        anyhow::bail!("setup command refused: {} {message}", code.as_str())
                    }
                    answer => return Ok(answer),
                }
            }
            tokio::time::sleep(RETRY_AFTER).await;
        }
        unreachable!("the attempts above end in a return")
    }

    /// Reads until `count` direct messages have arrived.
    async fn receive_messages(&mut self, count: u64) -> anyhow::Result<()> {
        let mut received = 0;
        while received < count {
            if let ServerFrame::Message(_) = self.next_frame().await? {
                received += 1;
            }
        }
        Ok(())
    }

    /// Reads the whole conversation list: it must hold every conversation of `shape`, and
    /// the direct messages as the unread count.
    async fn verify_list(&mut self, shape: Shape) -> anyhow::Result<()> {
        let (mut direct, mut groups) = (0, 0);
        let mut before = None;
        loop {
            let page = CommandKind::Conversations {
                before,
                limit: MAX_CONVERSATIONS_LIMIT,
            };
            let ServerFrame::Conversations {
                conversations,
                next_before,
                total_unread,
                ..
            } = self.call(page).await?
            else {
                anyhow::bail!("conversations answered with another frame");
            };
            anyhow::ensure!(
                total_unread == u64::from(shape.direct),
                "the owner has {total_unread} unread messages, not {}",
                shape.direct
            );
            for conversation in &conversations {
                match conversation.kind.as_ref() {
                    "direct" => direct += 1,
                    _ => groups += 1,
                }
            }
            before = match next_before {
                Some(cursor) => Some(cursor.parse()?),
                None => break,
            };
        }
        anyhow::ensure!(
            (direct, groups) == (shape.direct, shape.groups),
            "the owner's list holds {direct} direct conversations and {groups} groups, not {} \
             and {}",
            shape.direct,
            shape.groups
        );
        Ok(())
    }
}

/// The `req_id` a reply or error carries, for the frames setup waits for.
fn answered<'f>(frame: &'f ServerFrame<'_>) -> Option<&'f ReqId> {
    match frame {
        ServerFrame::Ack { req_id, .. }
        | ServerFrame::GroupCreated { req_id, .. }
        | ServerFrame::Conversations { req_id, .. }
        | ServerFrame::Error { req_id, .. } => req_id.as_deref(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_split_into_direct_conversations_and_groups() {
        let shape = Shape::new(1_000, 100).unwrap();
        assert_eq!((shape.direct, shape.groups, shape.peers()), (900, 100, 900));
        assert!(Shape::new(10, 11).is_err());
        assert!(Shape::new(0, 0).is_err());
    }

    #[test]
    fn groups_need_two_peers_even_without_direct_conversations() {
        let shape = Shape::new(5, 5).unwrap();
        assert_eq!(shape.peers(), 2);
        for k in 0..5 {
            let [a, b] = shape.group_members(k);
            assert_ne!(a, b);
            assert!((1..=2).contains(&a) && (1..=2).contains(&b));
        }
        assert_eq!(Shape::new(3, 0).unwrap().peers(), 3);
    }
}
