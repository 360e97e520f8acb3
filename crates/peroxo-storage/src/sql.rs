//! What the two SQL backends share about rows: the columns a message is read from, how an
//! event is stored in columns, how a `u64` is written to a signed 64-bit column, and how a page
//! is cut from the rows a query returns.
//!
//! A page query asks for one row more than the page holds: that row is never returned, it
//! only tells that there is more, so no backend has to count.

use peroxo_protocol::domain::{
    Deletion, HistoryPage, Lifecycle, Quote, ReactionCount, StoredMessage, SyncPage,
};
use peroxo_protocol::event::{EventKind, Role, StreamEvent};

/// The columns of `messages m` that each backend's `row_to_message` reads, in its order: the
/// message as sent, then its [`Lifecycle`](peroxo_protocol::domain::Lifecycle) (what it
/// replies to, edit, deletion, reaction count), then the message it replies to as it is now
/// (sender, excerpt, deletion time; all null when it has none, or when retention deleted it).
pub(crate) const MESSAGE_COLUMNS: &str = "m.id, m.tenant, m.sender, m.recipient, m.client_msg_id, m.text, m.ts, m.sender_seq, m.recipient_seq, \
     m.reply_to, m.edited_ts, m.deleted_by, m.deleted_ts, m.reaction_count, \
     (SELECT q.sender FROM messages q WHERE q.id = m.reply_to), \
     (SELECT substr(q.text, 1, 100) FROM messages q WHERE q.id = m.reply_to), \
     (SELECT q.deleted_ts FROM messages q WHERE q.id = m.reply_to)";
/// How many columns [`MESSAGE_COLUMNS`] has: what a query selects after them starts here.
pub(crate) const MESSAGE_COLUMN_COUNT: usize = 17;

/// The names of the event kinds that change a message (see
/// [`EventKind::is_lifecycle`]): a sync of [`SyncScope::Conversations`](crate::SyncScope)
/// leaves them out.
pub(crate) const LIFECYCLE_EVENT_KINDS: [&str; 4] = [
    "message_edited",
    "message_deleted",
    "reaction_added",
    "reaction_removed",
];

/// The lifecycle columns of a message row (after the nine of the message as sent), as read.
#[derive(Debug, Clone, Default)]
pub(crate) struct LifecycleColumns {
    pub(crate) reply_to: Option<i64>,
    pub(crate) edited_ts: Option<i64>,
    pub(crate) deleted_by: Option<String>,
    pub(crate) deleted_ts: Option<i64>,
    pub(crate) reaction_count: i64,
    pub(crate) quote_sender: Option<String>,
    pub(crate) quote_excerpt: Option<String>,
    pub(crate) quote_deleted_ts: Option<i64>,
}

impl LifecycleColumns {
    /// The lifecycle these columns describe. A message with reactions gets a placeholder
    /// (see [`pending_reactions`]) that the read replaces with the viewer's counts.
    pub(crate) fn lifecycle(self) -> Lifecycle {
        let reply_to = self.reply_to.map(|id| {
            Box::new(Quote {
                message_id: id as u64,
                deleted: self.quote_sender.is_none() || self.quote_deleted_ts.is_some(),
                sender: self.quote_sender.unwrap_or_default(),
                excerpt: self.quote_excerpt.unwrap_or_default(),
            })
        });
        let deleted = match (self.deleted_by, self.deleted_ts) {
            (Some(by), Some(ts)) => Some(Box::new(Deletion { by, ts })),
            _ => None,
        };
        Lifecycle {
            reply_to,
            edited_ts: self.edited_ts,
            deleted,
            reactions: pending_reactions(self.reaction_count),
        }
    }
}

/// What a message row says of its reactions before they are read for a viewer: nothing, or
/// one placeholder entry (an empty emoji) holding how many there are. Every read that returns
/// messages replaces it with [`reaction_counts`] for its viewer.
pub(crate) fn pending_reactions(count: i64) -> Vec<ReactionCount> {
    if count <= 0 {
        return Vec::new();
    }
    vec![ReactionCount {
        emoji: String::new(),
        count: u32::try_from(count).unwrap_or(u32::MAX),
        mine: false,
    }]
}

/// Whether `message` still holds the placeholder of [`pending_reactions`].
pub(crate) fn has_pending_reactions(message: &StoredMessage) -> bool {
    matches!(message.lifecycle.reactions.as_slice(), [only] if only.emoji.is_empty())
}

/// A message's reactions for `viewer` from its rows (emoji, user, ts), in any order: one count
/// per emoji, in the order each emoji first reached the message (then by emoji).
pub(crate) fn reaction_counts(
    rows: impl IntoIterator<Item = (String, String, i64)>,
    viewer: &str,
) -> Vec<ReactionCount> {
    let mut by_emoji: Vec<(i64, ReactionCount)> = Vec::new();
    for (emoji, user, ts) in rows {
        match by_emoji.iter_mut().find(|(_, c)| c.emoji == emoji) {
            Some((first, count)) => {
                *first = (*first).min(ts);
                count.count += 1;
                count.mine |= user == viewer;
            }
            None => by_emoji.push((
                ts,
                ReactionCount {
                    mine: user == viewer,
                    emoji,
                    count: 1,
                },
            )),
        }
    }
    by_emoji.sort_by(|(a, x), (b, y)| a.cmp(b).then_with(|| x.emoji.cmp(&y.emoji)));
    by_emoji.into_iter().map(|(_, count)| count).collect()
}

/// The tenants that have messages, in order: a walk of the index `messages_by_age` (both
/// backends have it) that reads one entry per tenant, however many messages each has.
pub(crate) const MESSAGE_TENANTS: &str = "
    WITH RECURSIVE t(name) AS (
        SELECT MIN(tenant) FROM messages
        UNION ALL
        SELECT (SELECT MIN(tenant) FROM messages WHERE tenant > t.name)
        FROM t WHERE t.name IS NOT NULL)
    SELECT name FROM t WHERE name IS NOT NULL";

/// `value` as an SQL integer (signed 64-bit). Seqs and ids never come near `i64::MAX`; a
/// cursor past it (a client may send any `u64`) means "no bound", so it saturates.
pub(crate) fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The `LIMIT` of a page query for a page of `limit` messages.
pub(crate) fn rows_for_page(limit: u32) -> i64 {
    i64::from(limit) + 1
}

/// A history page from the rows of its query, read newest first (the page runs oldest to
/// newest), when the user's seq was `last_seq`.
pub(crate) fn history_page(
    newest_first: Vec<StoredMessage>,
    limit: u32,
    last_seq: u64,
) -> HistoryPage {
    let (mut messages, has_more) = cut_page(newest_first, limit);
    messages.reverse();
    HistoryPage {
        messages,
        has_more,
        last_seq,
    }
}

/// A sync page from the rows of its query, read in ascending seq order.
pub(crate) fn sync_page(rows: Vec<StoredMessage>, limit: u32, last_seq: u64) -> SyncPage {
    let (messages, has_more) = cut_page(rows, limit);
    SyncPage {
        events: Vec::new(),
        messages,
        last_seq,
        has_more,
        pruned_until: 0,
    }
}

/// `page`, read after `after_seq`, telling what retention deleted of the stream after that
/// seq: the stream's floor (the highest seq retention deleted), when it is above `after_seq`.
pub(crate) fn with_floor(mut page: SyncPage, after_seq: u64, floor: u64) -> SyncPage {
    if floor > after_seq {
        page.pruned_until = floor;
    }
    page
}

/// One entry of a user's stream as a sync reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamEntry {
    Message(StoredMessage),
    Event(StreamEvent),
}

/// A sync page from the entries of its query, read in ascending seq order: messages and
/// events apart, each still ascending.
pub(crate) fn stream_page(rows: Vec<StreamEntry>, limit: u32, last_seq: u64) -> SyncPage {
    let (entries, has_more) = cut_page(rows, limit);
    let mut page = SyncPage {
        last_seq,
        has_more,
        ..SyncPage::default()
    };
    for entry in entries {
        match entry {
            StreamEntry::Message(message) => page.messages.push(message),
            StreamEntry::Event(event) => page.events.push(event),
        }
    }
    page
}

/// The columns an event is stored in besides its ids, actor and time: the kind's name and the
/// fields that kind has (the others are `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct EventColumns {
    /// `MembersAdded`: the users, separated by spaces (ids contain none).
    pub(crate) users: Option<String>,
    /// `MemberLeft`, `RoleChanged`: the user.
    pub(crate) user: Option<String>,
    /// `RoleChanged`: the role's name.
    pub(crate) role: Option<String>,
    /// `GroupCreated`, `GroupRenamed`: the title.
    pub(crate) title: Option<String>,
    /// `ReadMarker`, `ReadReceipt`: the message id.
    pub(crate) message_id: Option<i64>,
    /// `GroupCreated`: the member count; `ReadMarker`: the unread count; `MessageDeleted`: 1
    /// when moderated, else 0.
    pub(crate) count: Option<i64>,
    /// `ReactionAdded`, `ReactionRemoved`: the emoji.
    pub(crate) emoji: Option<String>,
    /// `MessageEdited`: the message's text as it is now. Never stored with the event (a
    /// delete must erase every copy of a text): a read takes it from the message.
    pub(crate) text: Option<String>,
}

impl EventColumns {
    /// The kind's name and its columns.
    pub(crate) fn of(kind: &EventKind) -> (&'static str, Self) {
        let columns = match kind {
            EventKind::GroupCreated {
                title,
                member_count,
            } => Self {
                title: Some(title.clone()),
                count: Some(i64::from(*member_count)),
                ..Self::default()
            },
            EventKind::MembersAdded { users } => Self {
                users: Some(users.join(" ")),
                ..Self::default()
            },
            EventKind::MemberLeft { user } => Self {
                user: Some(user.clone()),
                ..Self::default()
            },
            EventKind::RoleChanged { user, role } => Self {
                user: Some(user.clone()),
                role: Some(role.as_str().to_owned()),
                ..Self::default()
            },
            EventKind::GroupRenamed { title } => Self {
                title: Some(title.clone()),
                ..Self::default()
            },
            EventKind::ReadMarker {
                message_id,
                unread_count,
            } => Self {
                message_id: Some(sql_int(*message_id)),
                count: Some(sql_int(*unread_count)),
                ..Self::default()
            },
            EventKind::ReadReceipt { message_id } => Self {
                message_id: Some(sql_int(*message_id)),
                ..Self::default()
            },
            EventKind::MessageEdited { message_id, text } => Self {
                message_id: Some(sql_int(*message_id)),
                text: Some(text.clone()),
                ..Self::default()
            },
            EventKind::MessageDeleted {
                message_id,
                moderated,
            } => Self {
                message_id: Some(sql_int(*message_id)),
                count: Some(i64::from(*moderated)),
                ..Self::default()
            },
            EventKind::ReactionAdded { message_id, emoji }
            | EventKind::ReactionRemoved { message_id, emoji } => Self {
                message_id: Some(sql_int(*message_id)),
                emoji: Some(emoji.clone()),
                ..Self::default()
            },
        };
        (kind.name(), columns)
    }

    /// The event kind named `name` with these columns, or why the row makes none.
    pub(crate) fn kind(self, name: &str) -> Result<EventKind, String> {
        let missing = |column: &str| format!("a {name} event without its {column}");
        let unsigned = |value: Option<i64>, column: &str| {
            value
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| missing(column))
        };
        let kind = match name {
            "group_created" => EventKind::GroupCreated {
                title: self.title.ok_or_else(|| missing("title"))?,
                member_count: u32::try_from(unsigned(self.count, "member count")?)
                    .map_err(|_| missing("member count"))?,
            },
            "members_added" => EventKind::MembersAdded {
                users: self
                    .users
                    .ok_or_else(|| missing("users"))?
                    .split(' ')
                    .map(str::to_owned)
                    .collect(),
            },
            "member_left" => EventKind::MemberLeft {
                user: self.user.ok_or_else(|| missing("user"))?,
            },
            "role_changed" => EventKind::RoleChanged {
                user: self.user.ok_or_else(|| missing("user"))?,
                role: self
                    .role
                    .as_deref()
                    .and_then(Role::parse)
                    .ok_or_else(|| missing("role"))?,
            },
            "group_renamed" => EventKind::GroupRenamed {
                title: self.title.ok_or_else(|| missing("title"))?,
            },
            "read_marker" => EventKind::ReadMarker {
                message_id: unsigned(self.message_id, "message id")?,
                unread_count: unsigned(self.count, "unread count")?,
            },
            "read_receipt" => EventKind::ReadReceipt {
                message_id: unsigned(self.message_id, "message id")?,
            },
            "message_edited" => EventKind::MessageEdited {
                message_id: unsigned(self.message_id, "message id")?,
                // A message retention deleted since has no text left.
                text: self.text.unwrap_or_default(),
            },
            "message_deleted" => EventKind::MessageDeleted {
                message_id: unsigned(self.message_id, "message id")?,
                moderated: self.count.unwrap_or(0) != 0,
            },
            "reaction_added" => EventKind::ReactionAdded {
                message_id: unsigned(self.message_id, "message id")?,
                emoji: self.emoji.ok_or_else(|| missing("emoji"))?,
            },
            "reaction_removed" => EventKind::ReactionRemoved {
                message_id: unsigned(self.message_id, "message id")?,
                emoji: self.emoji.ok_or_else(|| missing("emoji"))?,
            },
            other => return Err(format!("an event of unknown kind {other:?}")),
        };
        Ok(kind)
    }
}

/// The first `limit` rows, and whether the query found more.
fn cut_page<T>(mut rows: Vec<T>, limit: u32) -> (Vec<T>, bool) {
    let has_more = rows.len() as u64 > u64::from(limit);
    rows.truncate(limit as usize);
    (rows, has_more)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(ids: impl IntoIterator<Item = u64>) -> Vec<StoredMessage> {
        ids.into_iter()
            .map(|message_id| StoredMessage {
                message_id,
                tenant: "t".to_owned(),
                sender: "alice".to_owned(),
                recipient: "bob".to_owned(),
                client_msg_id: format!("c{message_id}"),
                text: "hi".to_owned(),
                ts: 0,
                sender_seq: message_id,
                recipient_seq: message_id,
                lifecycle: Lifecycle::default(),
            })
            .collect()
    }

    fn ids(messages: &[StoredMessage]) -> Vec<u64> {
        messages.iter().map(|m| m.message_id).collect()
    }

    #[test]
    fn a_page_query_reads_one_row_past_the_page() {
        assert_eq!(rows_for_page(50), 51);
        assert_eq!(rows_for_page(u32::MAX), i64::from(u32::MAX) + 1);
    }

    #[test]
    fn the_extra_row_only_says_there_is_more() {
        let page = sync_page(messages(1..=4), 3, 9);
        assert_eq!(ids(&page.messages), [1, 2, 3]);
        assert!(page.has_more);
        assert_eq!(page.last_seq, 9);
        let page = sync_page(messages(1..=3), 3, 3);
        assert_eq!(ids(&page.messages), [1, 2, 3]);
        assert!(!page.has_more);
    }

    #[test]
    fn a_history_page_runs_oldest_to_newest() {
        let page = history_page(messages([9, 8, 7]), 2, 5);
        assert_eq!(ids(&page.messages), [8, 9]);
        assert!(page.has_more);
        assert_eq!(page.last_seq, 5);
        let page = history_page(messages([9, 8]), 2, 5);
        assert_eq!(ids(&page.messages), [8, 9]);
        assert!(!page.has_more);
    }

    #[test]
    fn a_stream_page_keeps_messages_and_events_apart_in_seq_order() {
        let event = |seq| {
            StreamEntry::Event(StreamEvent {
                seq,
                event: peroxo_protocol::event::Event {
                    event_id: seq,
                    tenant: "t".into(),
                    conversation_id: "alice:bob".into(),
                    actor: "bob".into(),
                    ts: 0,
                    kind: EventKind::ReadReceipt { message_id: 1 },
                },
            })
        };
        let mut rows: Vec<StreamEntry> = messages([1, 3])
            .into_iter()
            .map(StreamEntry::Message)
            .collect();
        rows.insert(1, event(2));
        rows.push(event(4));
        let page = stream_page(rows, 3, 4);
        assert_eq!(ids(&page.messages), [1, 3]);
        assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
        assert!(page.has_more);
    }

    #[test]
    fn every_event_kind_survives_its_columns() {
        for kind in [
            EventKind::GroupCreated {
                title: "Team".into(),
                member_count: 3,
            },
            EventKind::MembersAdded {
                users: vec!["bob".into(), "carol".into()],
            },
            EventKind::MemberLeft { user: "bob".into() },
            EventKind::RoleChanged {
                user: "bob".into(),
                role: Role::Admin,
            },
            EventKind::GroupRenamed {
                title: "New".into(),
            },
            EventKind::ReadMarker {
                message_id: 7,
                unread_count: 2,
            },
            EventKind::ReadReceipt { message_id: 7 },
            EventKind::MessageEdited {
                message_id: 7,
                text: "fixed".into(),
            },
            EventKind::MessageDeleted {
                message_id: 7,
                moderated: true,
            },
            EventKind::ReactionAdded {
                message_id: 7,
                emoji: "👍".into(),
            },
            EventKind::ReactionRemoved {
                message_id: 7,
                emoji: "👍".into(),
            },
        ] {
            let (name, columns) = EventColumns::of(&kind);
            assert_eq!(
                LIFECYCLE_EVENT_KINDS.contains(&name),
                kind.is_lifecycle(),
                "{name}"
            );
            assert_eq!(columns.kind(name), Ok(kind));
        }
        assert!(EventColumns::default().kind("read_marker").is_err());
        assert!(EventColumns::default().kind("nonsense").is_err());
    }

    #[test]
    fn reactions_count_per_emoji_in_the_order_they_first_came() {
        let rows = [
            ("🎉".to_owned(), "carol".to_owned(), 30),
            ("👍".to_owned(), "bob".to_owned(), 20),
            ("🎉".to_owned(), "alice".to_owned(), 10),
            ("👍".to_owned(), "carol".to_owned(), 40),
        ];
        let counts = reaction_counts(rows, "alice");
        let seen: Vec<(&str, u32, bool)> = counts
            .iter()
            .map(|c| (c.emoji.as_str(), c.count, c.mine))
            .collect();
        assert_eq!(seen, [("🎉", 2, true), ("👍", 2, false)]);
        assert!(pending_reactions(0).is_empty());
        assert_eq!(pending_reactions(3)[0].count, 3);
    }

    #[test]
    fn a_cursor_past_the_largest_sql_integer_means_no_bound() {
        assert_eq!(sql_int(42), 42);
        assert_eq!(sql_int(u64::MAX), i64::MAX);
    }
}
