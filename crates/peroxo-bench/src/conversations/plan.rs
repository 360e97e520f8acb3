//! The schedule of a `conversations` run: request `i` is the first page of the owner's
//! conversation list, due at `i / rate` seconds, sent on the owner's one session with `req_id`
//! `i`; its reply must list a full page and the owner's whole unread count.

use peroxo_protocol::{Command, CommandKind, MessageView, ReqId, ServerFrame};

use crate::traffic::{self, Reply, Route, Timeline, names};

/// The conversation-list requests of a run, and what their replies must say.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    timeline: Timeline,
    /// Conversations a page asks for.
    limit: u32,
    /// Conversations the owner has.
    conversations: u32,
    /// The owner's unread messages over all conversations.
    total_unread: u64,
}

impl Plan {
    pub(super) fn new(
        timeline: Timeline,
        limit: u32,
        conversations: u32,
        total_unread: u64,
    ) -> Self {
        Self {
            timeline,
            limit,
            conversations,
            total_unread,
        }
    }
}

impl traffic::Plan for Plan {
    fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// The owner alone.
    fn users(&self) -> u32 {
        1
    }

    fn sender(&self, _i: u32) -> u32 {
        0
    }

    fn command(&self, i: u32, _text_bytes: usize) -> Command {
        Command {
            req_id: Some(ReqId::Text(i.to_string())),
            kind: CommandKind::Conversations {
                before: None,
                limit: self.limit,
            },
        }
    }

    /// A read delivers nothing.
    fn fanout(&self) -> u32 {
        0
    }

    fn recipient(&self, _i: u32, _row: u32) -> u32 {
        0
    }

    fn route(&self, _me: u32, _message: &MessageView<'_>) -> Option<Route> {
        None
    }

    fn reply(&self, frame: &ServerFrame<'_>) -> Reply {
        let ServerFrame::Conversations {
            req_id: Some(req_id),
            conversations,
            total_unread,
            ..
        } = frame
        else {
            return Reply::Unplanned;
        };
        let ReqId::Text(id) = req_id.as_ref() else {
            return Reply::Unplanned;
        };
        let Some(i) = names::index_of_id(id) else {
            return Reply::Unplanned;
        };
        let full_page = conversations.len() == self.limit.min(self.conversations) as usize;
        if full_page && *total_unread == self.total_unread {
            Reply::Answers(i)
        } else {
            Reply::Wrong(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use peroxo_protocol::ConversationView;

    use super::*;
    use crate::traffic::Plan as _;

    fn plan() -> Plan {
        let timeline = Timeline::new(200, Duration::ZERO, Duration::from_secs(1)).unwrap();
        Plan::new(timeline, 50, 1_000, 900)
    }

    fn page(req_id: &str, len: usize, total_unread: u64) -> ServerFrame<'static> {
        let entry = ConversationView {
            conversation_id: Cow::Borrowed("u0:u1"),
            kind: Cow::Borrowed("direct"),
            peer: Some(Cow::Borrowed("u1")),
            peer_read_marker: Some("0".to_owned()),
            title: None,
            role: None,
            member_count: 2,
            last_message: None,
            unread_count: 1,
            read_marker: "0".to_owned(),
            activity_seq: 1,
        };
        ServerFrame::Conversations {
            req_id: Some(Cow::Owned(ReqId::Text(req_id.to_owned()))),
            conversations: vec![entry; len],
            next_before: Some("1".to_owned()),
            total_unread,
            last_seq: None,
        }
    }

    #[test]
    fn every_request_is_the_owner_s_first_page_named_by_its_index() {
        let plan = plan();
        assert_eq!(plan.timeline().len(), 200);
        let command = plan.command(17, 0);
        assert_eq!(command.req_id, Some(ReqId::Text("17".to_owned())));
        assert_eq!(
            command.kind,
            CommandKind::Conversations {
                before: None,
                limit: 50
            }
        );
        assert_eq!((plan.sender(17), plan.fanout()), (0, 0));
    }

    #[test]
    fn a_reply_must_be_a_full_page_with_the_whole_unread_count() {
        let plan = plan();
        assert_eq!(plan.reply(&page("17", 50, 900)), Reply::Answers(17));
        assert_eq!(plan.reply(&page("17", 49, 900)), Reply::Wrong(17));
        assert_eq!(plan.reply(&page("17", 50, 899)), Reply::Wrong(17));
        assert_eq!(plan.reply(&page("x", 50, 900)), Reply::Unplanned);
        let pong = ServerFrame::Pong {
            req_id: None,
            ts: 0,
        };
        assert_eq!(plan.reply(&pong), Reply::Unplanned);
    }
}
