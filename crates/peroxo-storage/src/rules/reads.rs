//! The rules of read state: where a read mark moves a marker, and who has read a message.

use super::unknown_message;
use peroxo_protocol::conversation::Receipt;
use peroxo_protocol::event::Refusal;

/// The marker a `Read` of up to `requested` aims at: never past the newest message the user
/// can see (0 when there is none).
pub(crate) fn read_target(requested: u64, newest_visible: u64) -> u64 {
    requested.min(newest_visible)
}

/// The marker an `Unread` aims at: just before `first_unread`, the message it names (or the
/// newest from others), which the backend found among the visible messages (`None`: no such
/// message).
pub(crate) fn unread_target(
    first_unread: Option<u64>,
    requested: Option<u64>,
    conversation_id: &str,
) -> Result<u64, Refusal> {
    first_unread
        .map(|id| id - 1)
        .ok_or_else(|| unknown_message(requested, conversation_id))
}

/// Whether a mark moves a marker now at `current` to `target`: a read moves it forward only,
/// an unread anywhere else.
pub(crate) fn marker_moves(current: u64, target: u64, forward_only: bool) -> bool {
    if forward_only {
        target > current
    } else {
        target != current
    }
}

/// The receipts of a message by `author` with id `message_id`, from the read markers of the
/// conversation's members or participants: everyone but the author at or past it, by user.
pub(crate) fn receipts(
    author: &str,
    message_id: u64,
    markers: impl IntoIterator<Item = (String, u64)>,
) -> Vec<Receipt> {
    let mut readers: Vec<Receipt> = markers
        .into_iter()
        .filter(|(user, marker)| user != author && *marker >= message_id)
        .map(|(user, read_marker)| Receipt { user, read_marker })
        .collect();
    readers.sort_by(|a, b| a.user.cmp(&b.user));
    readers
}

#[cfg(test)]
mod tests {
    use super::*;
    use peroxo_protocol::event::RefusalCode;

    const GROUP: &str = "g~0123456789abcdef01234567";

    #[test]
    fn a_read_stops_at_the_newest_visible_message_and_moves_forward_only() {
        assert_eq!(read_target(u64::MAX, 42), 42);
        assert_eq!(read_target(7, 42), 7);
        assert!(marker_moves(5, 7, true));
        assert!(!marker_moves(7, 5, true));
        assert!(!marker_moves(7, 7, true));
        assert!(marker_moves(7, 5, false));
        assert!(!marker_moves(5, 5, false));
    }

    #[test]
    fn an_unread_marks_from_the_message_it_found() {
        assert_eq!(unread_target(Some(10), Some(10), GROUP), Ok(9));
        let none = unread_target(None, None, GROUP).unwrap_err();
        assert_eq!(none.code, RefusalCode::UnknownMessage);
        assert!(none.message.contains("from others"), "{none}");
        let missing = unread_target(None, Some(3), GROUP).unwrap_err();
        assert!(missing.message.contains('3'), "{missing}");
    }

    #[test]
    fn receipts_leave_out_the_author_and_those_behind() {
        let markers =
            [("carol", 9), ("alice", 12), ("bob", 10), ("dave", 3)].map(|(u, m)| (u.to_owned(), m));
        assert_eq!(
            receipts("alice", 9, markers),
            [
                Receipt {
                    user: "bob".into(),
                    read_marker: 10
                },
                Receipt {
                    user: "carol".into(),
                    read_marker: 9
                }
            ]
        );
    }
}
