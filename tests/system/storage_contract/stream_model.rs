//! What a user's conversation list must say, worked out from that user's stream alone.
//!
//! Everything the list shows follows from the stream: a message makes (or moves) its
//! conversation, counts as unread unless the user sent it, and is the preview; membership
//! events make, move and end groups; `ReadMarker` events move the marker (and say the unread
//! count, which must be the count of the visible messages from others after the marker that
//! are not deleted). A `MessageDeleted` event takes its message out of the unread count and,
//! when it was the preview, makes the newest earlier message not deleted the preview (or none);
//! edits and reactions move nothing. A stream is read as it is now, so every message in it
//! already shows its current text, and each edit event the text as it is now.
//! [`assert_lists_match_streams`] reads the streams of some users, replays them and compares
//! the replay with what `conversations` answers: unread counts, markers, previews, order,
//! paging and the total. Cases call it last, so every case also checks the list.

use std::collections::BTreeMap;

use super::*;

/// One entry of a stream.
#[derive(Debug, Clone)]
pub(super) enum Entry {
    Message(StoredMessage),
    Event(StreamEvent),
}

/// A user's whole stream, in seq order.
#[derive(Debug)]
pub(super) struct Stream {
    pub(super) user: UserKey,
    pub(super) entries: Vec<Entry>,
}

impl Stream {
    /// The events of the stream, in seq order.
    pub(super) fn events(&self) -> Vec<StreamEvent> {
        self.entries
            .iter()
            .filter_map(|entry| match entry {
                Entry::Event(event) => Some(event.clone()),
                Entry::Message(_) => None,
            })
            .collect()
    }

    /// The messages of the stream, in seq order.
    pub(super) fn messages(&self) -> Vec<StoredMessage> {
        self.entries
            .iter()
            .filter_map(|entry| match entry {
                Entry::Message(message) => Some(message.clone()),
                Entry::Event(_) => None,
            })
            .collect()
    }
}

/// Reads `user`'s whole stream in pages and checks that its seqs are exactly 1..=last_seq.
pub(super) async fn read_stream(client: &StorageClient, user: &UserKey) -> Stream {
    let mut entries: Vec<(u64, Entry)> = Vec::new();
    let mut after = 0;
    let last_seq = loop {
        let page = client
            .sync(SyncQuery {
                user: user.clone(),
                after_seq: after,
                limit: 7,
                scope: SyncScope::Everything,
            })
            .await
            .unwrap();
        let mut page_entries: Vec<(u64, Entry)> = page
            .messages
            .into_iter()
            .map(|m| (m.seq_for(&user.user), Entry::Message(m)))
            .chain(page.events.into_iter().map(|e| (e.seq, Entry::Event(e))))
            .collect();
        page_entries.sort_by_key(|(seq, _)| *seq);
        assert!(
            page_entries.len() <= 7,
            "{user}: a page holds at most its limit"
        );
        assert!(
            page_entries
                .first()
                .is_none_or(|(seq, _)| *seq == after + 1),
            "{user}: a page after seq {after} starts right after it"
        );
        after = page_entries.last().map_or(after, |(seq, _)| *seq);
        entries.extend(page_entries);
        if !page.has_more {
            break page.last_seq;
        }
    };
    let mut seqs: Vec<u64> = entries.iter().map(|(seq, _)| *seq).collect();
    let audit = SeqAudit::of_unsorted(&mut seqs, last_seq);
    assert!(
        audit.is_gapless() && audit.highest_seen == last_seq,
        "{user}'s stream is not 1..={last_seq}: {audit:?}"
    );
    Stream {
        user: user.clone(),
        entries: entries.into_iter().map(|(_, entry)| entry).collect(),
    }
}

/// A conversation as the replay of a stream leaves it.
#[derive(Debug, Clone)]
struct Replayed {
    kind: ReplayedKind,
    /// Still in the list (a member of the group; direct conversations never leave it).
    active: bool,
    /// The visible messages, in stream order.
    visible: Vec<Seen>,
    read_marker: u64,
    last_message: Option<StoredMessage>,
    activity_seq: u64,
}

/// A visible message, and whether a `MessageDeleted` event of it came yet.
#[derive(Debug, Clone)]
struct Seen {
    message: StoredMessage,
    deleted: bool,
}

#[derive(Debug, Clone)]
enum ReplayedKind {
    Direct {
        peer: String,
    },
    /// What the stream tells of a group; the title and the member count are unknown to a
    /// member who joined after the group was made, until an event says them.
    Group {
        role: Role,
        title: Option<String>,
        member_count: Option<u32>,
    },
}

impl Replayed {
    fn new(kind: ReplayedKind, activity_seq: u64) -> Self {
        Self {
            kind,
            active: true,
            visible: Vec::new(),
            read_marker: 0,
            last_message: None,
            activity_seq,
        }
    }

    fn unread_count(&self, user: &str) -> u64 {
        self.visible
            .iter()
            .filter(|seen| {
                seen.message.message_id > self.read_marker
                    && seen.message.sender != user
                    && !seen.deleted
            })
            .count() as u64
    }

    /// The visible message `id`, unless retention deleted it from the stream since.
    fn seen(&mut self, id: u64) -> Option<&mut Seen> {
        self.visible.iter_mut().find(|s| s.message.message_id == id)
    }

    /// An event that changes message `id` (protocol 3): only a delete changes the list.
    fn replay_lifecycle(&mut self, user: &str, kind: &EventKind) {
        let Some(id) = kind.changed_message() else {
            return;
        };
        let Some(seen) = self.seen(id) else {
            return;
        };
        match kind {
            EventKind::MessageEdited { text, .. } => {
                assert_eq!(
                    *text, seen.message.text,
                    "{user}: an edit event tells the text of message {id} as it is now"
                );
            }
            EventKind::MessageDeleted { .. } => {
                assert!(!seen.deleted, "{user}: message {id} deleted twice");
                assert!(
                    seen.message.is_deleted() && seen.message.text.is_empty(),
                    "{user}: deleted message {id} reads as a tombstone"
                );
                seen.deleted = true;
                if self.last_message.as_ref().map(|m| m.message_id) == Some(id) {
                    self.last_message = self
                        .visible
                        .iter()
                        .rev()
                        .find(|s| s.message.message_id < id && !s.deleted)
                        .map(|s| s.message.clone());
                }
            }
            _ => {}
        }
    }

    fn group(&mut self) -> (&mut Role, &mut Option<String>, &mut Option<u32>) {
        match &mut self.kind {
            ReplayedKind::Group {
                role,
                title,
                member_count,
            } => (role, title, member_count),
            ReplayedKind::Direct { .. } => panic!("a group event in a direct conversation"),
        }
    }
}

/// Replays `stream`: every conversation it has touched, by id.
fn replay(stream: &Stream) -> BTreeMap<String, Replayed> {
    let user = stream.user.user.as_str();
    let mut conversations: BTreeMap<String, Replayed> = BTreeMap::new();
    for entry in &stream.entries {
        match entry {
            Entry::Message(message) => replay_message(user, message, &mut conversations),
            Entry::Event(event) => replay_event(user, event, &mut conversations),
        }
    }
    conversations
}

fn replay_message(user: &str, message: &StoredMessage, into: &mut BTreeMap<String, Replayed>) {
    let seq = message.seq_for(user);
    let id = message.conversation_id();
    if message.is_group() {
        assert_eq!(
            message.recipient_seq, seq,
            "{user}: a group message in a member's stream carries that member's seq"
        );
    }
    let conversation = into.entry(id.clone()).or_insert_with(|| {
        assert!(
            !message.is_group(),
            "{user}: a message of group {id} before joining it"
        );
        let peer = if message.sender == user {
            &message.recipient
        } else {
            &message.sender
        };
        Replayed::new(ReplayedKind::Direct { peer: peer.clone() }, seq)
    });
    assert!(
        conversation.active,
        "{user}: a message of {id} after leaving it"
    );
    if let Some(previous) = conversation.visible.last() {
        assert!(
            previous.message.message_id < message.message_id,
            "{user}: message ids of {id} grow in stream order"
        );
    }
    conversation.visible.push(Seen {
        message: message.clone(),
        deleted: false,
    });
    if message.sender == user {
        conversation.read_marker = message.message_id;
    }
    conversation.last_message = Some(message.clone());
    conversation.activity_seq = seq;
}

fn replay_event(user: &str, entry: &StreamEvent, into: &mut BTreeMap<String, Replayed>) {
    let event = &entry.event;
    let id = event.conversation_id.clone();
    let seq = entry.seq;
    match &event.kind {
        EventKind::GroupCreated {
            title,
            member_count,
        } => {
            let role = if event.actor == user {
                Role::Owner
            } else {
                Role::Member
            };
            let kind = ReplayedKind::Group {
                role,
                title: Some(title.clone()),
                member_count: Some(*member_count),
            };
            let fresh = into.insert(id.clone(), Replayed::new(kind, seq));
            assert!(fresh.is_none(), "{user}: group {id} created twice");
        }
        EventKind::MembersAdded { users } if users.iter().any(|u| u == user) => {
            let kind = ReplayedKind::Group {
                role: Role::Member,
                title: None,
                member_count: None,
            };
            let before = into.insert(id.clone(), Replayed::new(kind, seq));
            assert!(
                before.is_none_or(|b| !b.active),
                "{user}: added to {id} while a member"
            );
        }
        kind => {
            let conversation = into
                .get_mut(&id)
                .unwrap_or_else(|| panic!("{user}: an event of {id} before joining it"));
            assert!(
                conversation.active,
                "{user}: an event of {id} after leaving it"
            );
            replay_change(user, event, kind, seq, conversation);
        }
    }
}

/// An event of a conversation the user is in (not the one that made the user a member).
fn replay_change(user: &str, event: &Event, kind: &EventKind, seq: u64, into: &mut Replayed) {
    match kind {
        EventKind::GroupCreated { .. } => unreachable!("handled by replay_event"),
        EventKind::MessageEdited { .. }
        | EventKind::MessageDeleted { .. }
        | EventKind::ReactionAdded { .. }
        | EventKind::ReactionRemoved { .. } => into.replay_lifecycle(user, kind),
        EventKind::MembersAdded { users } => {
            let (_, _, member_count) = into.group();
            *member_count = member_count.map(|n| n + users.len() as u32);
            into.activity_seq = seq;
        }
        EventKind::MemberLeft { user: left } => {
            if left == user {
                into.active = false;
            } else {
                let (_, _, member_count) = into.group();
                *member_count = member_count.map(|n| n - 1);
            }
            into.activity_seq = seq;
        }
        EventKind::RoleChanged {
            user: changed,
            role,
        } => {
            if changed == user {
                *into.group().0 = *role;
            }
            into.activity_seq = seq;
        }
        EventKind::GroupRenamed { title } => {
            *into.group().1 = Some(title.clone());
            into.activity_seq = seq;
        }
        EventKind::ReadMarker {
            message_id,
            unread_count,
        } => {
            assert_eq!(
                event.actor, user,
                "a read marker enters its own user's stream only"
            );
            into.read_marker = *message_id;
            assert_eq!(
                *unread_count,
                into.unread_count(user),
                "{user}: a read marker's unread count is the count of the visible messages \
                 from others after it"
            );
        }
        EventKind::ReadReceipt { .. } => {
            assert_ne!(event.actor, user, "a receipt enters the peer's stream only");
            assert!(
                matches!(into.kind, ReplayedKind::Direct { .. }),
                "receipts are for direct conversations only"
            );
        }
    }
}

/// Reads every page of `user`'s conversation list (a few entries a page, to walk the cursor)
/// and checks that the pages fit together.
pub(super) async fn whole_list(client: &StorageClient, user: &UserKey) -> ConversationPage {
    let mut all = ConversationPage::default();
    let mut before = None;
    let mut first = true;
    loop {
        let page = client
            .conversations(ConversationsQuery {
                user: user.clone(),
                before,
                limit: 3,
            })
            .await
            .unwrap();
        assert!(
            page.conversations.len() <= 3,
            "{user}: a page holds its limit"
        );
        if first {
            all.total_unread = page.total_unread;
            first = false;
        }
        assert_eq!(
            page.total_unread, all.total_unread,
            "{user}: every page tells the same total"
        );
        for summary in &page.conversations {
            assert!(
                before.is_none_or(|b| summary.activity_seq < b),
                "{user}: the list runs from the latest activity down"
            );
            before = Some(summary.activity_seq);
        }
        let more = page.has_more;
        assert!(!more || !page.conversations.is_empty());
        all.conversations.extend(page.conversations);
        if !more {
            return all;
        }
    }
}

/// Checks, for each of `users` (tenant `t`), that the conversation list is what the user's
/// stream implies, and that each direct conversation shows the peer's read marker.
pub(super) async fn assert_lists_match_streams(client: &StorageClient, users: &[&str]) {
    let mut markers: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut peers_seen: Vec<(String, String, String, u64)> = Vec::new();
    for user in users {
        let key = key(T, user);
        let stream = read_stream(client, &key).await;
        let list = whole_list(client, &key).await;
        assert_list_matches(&stream, replay(&stream), &list);
        for summary in &list.conversations {
            markers.insert(
                (user.to_string(), summary.conversation_id.clone()),
                summary.read_marker,
            );
            if let ConversationKind::Direct {
                peer,
                peer_read_marker,
            } = &summary.kind
            {
                peers_seen.push((
                    user.to_string(),
                    peer.clone(),
                    summary.conversation_id.clone(),
                    *peer_read_marker,
                ));
            }
        }
    }
    for (user, peer, conversation, peer_read_marker) in peers_seen {
        if let Some(marker) = markers.get(&(peer.clone(), conversation.clone())) {
            assert_eq!(
                peer_read_marker, *marker,
                "{user} sees {peer}'s read marker of {conversation}"
            );
        }
    }
}

fn assert_list_matches(
    stream: &Stream,
    replayed: BTreeMap<String, Replayed>,
    list: &ConversationPage,
) {
    let user = stream.user.user.as_str();
    let mut expected: Vec<(String, Replayed)> =
        replayed.into_iter().filter(|(_, c)| c.active).collect();
    expected.sort_by_key(|(_, c)| std::cmp::Reverse(c.activity_seq));
    let listed: Vec<&str> = list
        .conversations
        .iter()
        .map(|c| c.conversation_id.as_str())
        .collect();
    let wanted: Vec<&str> = expected.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        listed, wanted,
        "{user}'s conversations, latest activity first"
    );
    let mut total = 0;
    for (summary, (id, replayed)) in list.conversations.iter().zip(&expected) {
        let unread = replayed.unread_count(user);
        total += unread;
        assert_eq!(
            summary.unread_count, unread,
            "{user}'s unread count of {id}"
        );
        assert_eq!(
            summary.read_marker, replayed.read_marker,
            "{user}'s marker of {id}"
        );
        assert_eq!(
            summary.activity_seq, replayed.activity_seq,
            "{user}'s activity of {id}"
        );
        assert_eq!(
            summary.last_message, replayed.last_message,
            "{user}'s preview of {id}"
        );
        match (&summary.kind, &replayed.kind) {
            (ConversationKind::Direct { peer, .. }, ReplayedKind::Direct { peer: expected }) => {
                assert_eq!(peer, expected, "{user}'s peer in {id}");
            }
            (
                ConversationKind::Group {
                    title,
                    role,
                    member_count,
                },
                ReplayedKind::Group {
                    role: expected_role,
                    title: expected_title,
                    member_count: expected_count,
                },
            ) => {
                assert_eq!(role, expected_role, "{user}'s role in {id}");
                if let Some(expected) = expected_title {
                    assert_eq!(title, expected, "the title of {id}");
                }
                if let Some(expected) = expected_count {
                    assert_eq!(member_count, expected, "the member count of {id}");
                }
            }
            (kind, _) => panic!("{user}: {id} is listed as {kind:?}"),
        }
    }
    assert_eq!(list.total_unread, total, "{user}'s total unread");
}
