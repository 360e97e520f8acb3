//! How a run names its users and messages, so that every frame can be matched with the plan:
//! user number `n` is `u<n>`; the `client_msg_id` of message `i` is `i` in decimal, and its
//! text starts with `m<i>` (a recipient does not see `client_msg_id`).

/// The id of user number `n`.
pub(crate) fn user_name(n: u32) -> String {
    format!("u{n}")
}

/// The number of the user with id `name`, if it is one of ours.
pub(crate) fn user_number(name: &str) -> Option<u32> {
    name.strip_prefix('u')?.parse().ok()
}

/// The text of message `i`: `m<i>`, then a space and filler up to `text_bytes` (longer only
/// when `m<i>` alone is).
pub(crate) fn message_text(i: u32, text_bytes: usize) -> String {
    let mut text = format!("m{i}");
    if text.len() < text_bytes {
        text.push(' ');
    }
    while text.len() < text_bytes {
        text.push('x');
    }
    text
}

/// The message index a received text carries, if it is one of ours.
pub(crate) fn index_of_text(text: &str) -> Option<u32> {
    let rest = text.strip_prefix('m')?;
    let digits = rest.split(' ').next()?;
    digits.parse().ok()
}

/// The index an id of ours carries: a `client_msg_id`, or a `req_id` given as its text.
pub(crate) fn index_of_id(id: &str) -> Option<u32> {
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_carries_its_index_at_any_length() {
        let text = message_text(1234, 32);
        assert_eq!(text.len(), 32);
        assert_eq!(index_of_text(&text), Some(1234));
        assert_eq!(message_text(98765, 1), "m98765");
        assert_eq!(index_of_text("m98765"), Some(98765));
        assert_eq!(index_of_text("hello"), None);
    }

    #[test]
    fn user_names_and_ids_round_trip() {
        assert_eq!(user_number(&user_name(42)), Some(42));
        assert_eq!(user_number("bob"), None);
        assert_eq!(index_of_id("17"), Some(17));
        assert_eq!(index_of_id("g17"), None);
    }
}
