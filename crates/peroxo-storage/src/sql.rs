//! What the two SQL backends share about rows: the columns a message is read from, how a
//! `u64` is written to a signed 64-bit column, and how a page is cut from the rows a query
//! returns.
//!
//! A page query asks for one row more than the page holds: that row is never returned, it
//! only tells that there is more, so no backend has to count.

use peroxo_protocol::domain::{HistoryPage, StoredMessage, SyncPage};

/// The columns of `messages m` that each backend's `row_to_message` reads, in its order.
pub(crate) const MESSAGE_COLUMNS: &str = "m.id, m.tenant, m.sender, m.recipient, m.client_msg_id, m.text, m.ts, m.sender_seq, m.recipient_seq";

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
    }
}

/// The first `limit` rows, and whether the query found more.
fn cut_page(mut rows: Vec<StoredMessage>, limit: u32) -> (Vec<StoredMessage>, bool) {
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
    fn a_cursor_past_the_largest_sql_integer_means_no_bound() {
        assert_eq!(sql_int(42), 42);
        assert_eq!(sql_int(u64::MAX), i64::MAX);
    }
}
