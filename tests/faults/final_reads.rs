//! What a client reads once its final sync is done and nothing changes any more: the history
//! of every conversation it is in; and on protocol 2 or later its conversation list (every
//! page), the members of every group it is in, and the read receipts of a few of its own
//! messages, in groups and in direct conversations. The verdict holds each to what the
//! streams imply.

use std::collections::{BTreeMap, BTreeSet};

use peroxo_bench::contract::ReplayedMessage;
use peroxo_client::{Client, CommandKind, MessageView, ServerFrame};
use peroxo_protocol::MAX_HISTORY_LIMIT;
use peroxo_protocol::event::is_group_id;

use crate::workload::{Rng, request_until_answered};

/// Own messages asked about per kind of conversation (groups, direct conversations).
const RECEIPT_PROBES_PER_KIND: usize = 2;

/// One conversation of the user's list, as `conversations` answered at the end.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) conversation_id: String,
    pub(crate) read_marker: String,
    pub(crate) unread_count: u64,
    /// The preview's message id and the user's seq of it.
    pub(crate) last_message: Option<(String, u64)>,
    /// A direct conversation's `peer_read_marker`: how far the peer has read.
    pub(crate) peer_read_marker: Option<String>,
}

/// The user's conversation list at the end, every page of it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConversationList {
    pub(crate) conversations: Vec<Listed>,
    /// As the first page stated it.
    pub(crate) total_unread: u64,
}

/// A group's `members` as the user read it: (user, role) sorted by user, or why it could
/// not be read.
pub(crate) type MemberList = Result<Vec<(String, String)>, String>;

/// `read_receipts` of one of the user's own messages.
#[derive(Debug, Clone)]
pub(crate) struct ReceiptProbe {
    pub(crate) conversation_id: String,
    pub(crate) message_id: u64,
    /// The readers and their read markers, or why they could not be read.
    pub(crate) readers: Result<Vec<(String, u64)>, String>,
}

/// A conversation's history as the user read it: every message by id, as the user's
/// protocol shows it (protocol 1 and 2: a deleted message as erased, without edits,
/// reactions or quotes), or why it could not be read.
pub(crate) type History = Result<BTreeMap<u64, HistoryCopy>, String>;

/// A message as a history shows it.
#[derive(Debug, Clone)]
pub(crate) struct HistoryCopy {
    pub(crate) state: ReplayedMessage,
    /// Protocol 3: the quote of the message it replies to.
    pub(crate) quote: Option<Quote>,
}

/// A reply's quote, as a history shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Quote {
    pub(crate) message_id: String,
    pub(crate) excerpt: String,
    pub(crate) deleted: bool,
}

/// Everything read after the final sync.
#[derive(Debug, Default)]
pub(crate) struct FinalReads {
    /// By conversation: every conversation of the user's list (protocol 1: every direct
    /// conversation of its stream).
    pub(crate) histories: BTreeMap<String, History>,
    /// The conversation list (`None` when it could not be read, or on protocol 1).
    pub(crate) conversations: Option<ConversationList>,
    /// By group: every group the user's stream shows it in at the end.
    pub(crate) members: BTreeMap<String, MemberList>,
    pub(crate) receipts: Vec<ReceiptProbe>,
}

/// Every page of the user's conversation list.
pub(crate) async fn list_conversations(client: &Client) -> Result<ConversationList, String> {
    let mut list = ConversationList::default();
    let mut before = None;
    loop {
        let kind = CommandKind::Conversations { before, limit: 200 };
        let ServerFrame::Conversations {
            conversations,
            next_before,
            total_unread,
            ..
        } = request_until_answered(client, kind).await?
        else {
            return Err("a request for conversations answered with another frame".to_owned());
        };
        if before.is_none() {
            list.total_unread = total_unread;
        }
        list.conversations
            .extend(conversations.into_iter().map(|c| Listed {
                conversation_id: c.conversation_id.into_owned(),
                read_marker: c.read_marker,
                unread_count: c.unread_count,
                last_message: c.last_message.map(|m| (m.message_id, m.seq)),
                peer_read_marker: c.peer_read_marker,
            }));
        match next_page(next_before)? {
            None => return Ok(list),
            next => before = next,
        }
    }
}

/// The cursor of the next page from a page's `next_before`: `None` after the last page.
fn next_page(next_before: Option<String>) -> Result<Option<u64>, String> {
    next_before
        .map(|cursor| {
            cursor
                .parse()
                .map_err(|_| format!("next_before {cursor:?} is not a cursor"))
        })
        .transpose()
}

/// Reads the members of every group in `groups`, and the receipts of a random own message in
/// a few random conversations of `own` (the user's own messages by conversation), into
/// `reads`.
pub(crate) async fn members_and_receipts(
    client: &Client,
    groups: &BTreeSet<String>,
    own: &BTreeMap<String, Vec<u64>>,
    rng: &mut Rng,
    reads: &mut FinalReads,
) {
    for group in groups {
        let kind = CommandKind::Members {
            conversation_id: group.clone(),
        };
        let members = match request_until_answered(client, kind).await {
            Ok(ServerFrame::Members { members, .. }) => Ok(members
                .into_iter()
                .map(|m| (m.user.into_owned(), m.role.into_owned()))
                .collect()),
            Ok(other) => Err(format!("answered with {other:?}")),
            Err(error) => Err(error),
        };
        reads.members.insert(group.clone(), members);
    }
    for in_groups in [true, false] {
        let mut candidates: Vec<(&String, &Vec<u64>)> = own
            .iter()
            .filter(|(id, _)| is_group_id(id) == in_groups)
            .filter(|(id, _)| !in_groups || groups.contains(*id))
            .collect();
        for _ in 0..RECEIPT_PROBES_PER_KIND {
            if candidates.is_empty() {
                break;
            }
            let (conversation_id, messages) =
                candidates.swap_remove(rng.below(candidates.len() as u64) as usize);
            let message_id = messages[rng.below(messages.len() as u64) as usize];
            reads
                .receipts
                .push(read_receipts(client, conversation_id, message_id).await);
        }
    }
}

async fn read_receipts(client: &Client, conversation_id: &str, message_id: u64) -> ReceiptProbe {
    let kind = CommandKind::ReadReceipts {
        conversation_id: conversation_id.to_owned(),
        message_id,
    };
    let readers = match request_until_answered(client, kind).await {
        Ok(ServerFrame::ReadReceipts { readers, .. }) => readers
            .into_iter()
            .map(|r| {
                let marker = r.read_marker.parse().map_err(|_| {
                    format!("read marker {:?} of {} is not an id", r.read_marker, r.user)
                })?;
                Ok((r.user.into_owned(), marker))
            })
            .collect(),
        Ok(other) => Err(format!("answered with {other:?}")),
        Err(error) => Err(error),
    };
    ReceiptProbe {
        conversation_id: conversation_id.to_owned(),
        message_id,
        readers,
    }
}

/// Reads every page of the history of each of `conversations`: by its id (protocol 2 and
/// later), or with the peer of a direct conversation (protocol 1, which names `with`).
pub(crate) async fn histories(
    client: &Client,
    me: &str,
    conversations: impl IntoIterator<Item = String>,
    protocol: u32,
    reads: &mut FinalReads,
) {
    for conversation_id in conversations {
        let history = read_history(client, me, &conversation_id, protocol).await;
        reads.histories.insert(conversation_id, history);
    }
}

async fn read_history(client: &Client, me: &str, conversation_id: &str, protocol: u32) -> History {
    let mut messages = BTreeMap::new();
    let mut before = None;
    loop {
        let kind = if protocol >= 2 {
            CommandKind::ConversationHistory {
                conversation_id: conversation_id.to_owned(),
                before,
                limit: MAX_HISTORY_LIMIT,
            }
        } else {
            let (a, b) = conversation_id.split_once(':').unwrap_or((me, me));
            CommandKind::History {
                with: if a == me { b } else { a }.to_owned(),
                before,
                limit: MAX_HISTORY_LIMIT,
            }
        };
        let ServerFrame::History {
            messages: page,
            next_before,
            ..
        } = request_until_answered(client, kind).await?
        else {
            return Err("a request for history answered with another frame".to_owned());
        };
        for view in page {
            let id = view.message_id.parse().map_err(|_| {
                format!(
                    "message id {:?} of {conversation_id} is not an id",
                    view.message_id
                )
            })?;
            messages.insert(id, copy_of(view));
        }
        match next_page(next_before)? {
            None => return Ok(messages),
            next => before = next,
        }
    }
}

/// What a message view says of the message: its text, edit, deletion (or, before protocol 3,
/// erasure), reactions by emoji, and quote.
fn copy_of(view: MessageView<'static>) -> HistoryCopy {
    let quote = view.reply_to.map(|quote| Quote {
        message_id: quote.message_id,
        excerpt: quote.excerpt.into_owned(),
        deleted: quote.deleted,
    });
    let state = ReplayedMessage {
        text: view.text.into_owned(),
        edited: view.edited_ts.is_some(),
        deleted: view.deleted.is_some() || view.erased,
        reactions: view
            .reactions
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.emoji.into_owned(), r.count))
            .collect(),
    };
    HistoryCopy { state, quote }
}
