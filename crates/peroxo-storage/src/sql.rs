//! What the two SQL backends share about rows: the columns a message is read from, how an
//! event is stored in columns, how a `u64` is written to a signed 64-bit column, and how a page
//! is cut from the rows a query returns.
//!
//! A page query asks for one row more than the page holds: that row is never returned, it
//! only tells that there is more, so no backend has to count.

use peroxo_protocol::domain::{HistoryPage, StoredMessage, SyncPage};
use peroxo_protocol::event::{EventKind, Role, StreamEvent};

/// The columns of `messages m` that each backend's `row_to_message` reads, in its order.
pub(crate) const MESSAGE_COLUMNS: &str = "m.id, m.tenant, m.sender, m.recipient, m.client_msg_id, m.text, m.ts, m.sender_seq, m.recipient_seq";

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

/// A history page from the rows of its query, read newest first: the page runs oldest to
/// newest.
pub(crate) fn history_page(newest_first: Vec<StoredMessage>, limit: u32) -> HistoryPage {
    let (mut messages, has_more) = cut_page(newest_first, limit);
    messages.reverse();
    HistoryPage { messages, has_more }
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// `GroupCreated`: the member count; `ReadMarker`: the unread count.
    pub(crate) count: Option<i64>,
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
        let page = history_page(messages([9, 8, 7]), 2);
        assert_eq!(ids(&page.messages), [8, 9]);
        assert!(page.has_more);
        let page = history_page(messages([9, 8]), 2);
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
        ] {
            let (name, columns) = EventColumns::of(&kind);
            assert_eq!(columns.kind(name), Ok(kind));
        }
        assert!(EventColumns::default().kind("read_marker").is_err());
        assert!(EventColumns::default().kind("nonsense").is_err());
    }

    #[test]
    fn a_cursor_past_the_largest_sql_integer_means_no_bound() {
        assert_eq!(sql_int(42), 42);
        assert_eq!(sql_int(u64::MAX), i64::MAX);
    }
}
