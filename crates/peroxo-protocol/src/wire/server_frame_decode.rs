//! How a client reads a server frame: `type` first, then the variant's fields straight from the
//! text, borrowing the strings that need no unescaping.
//!
//! The derived `Deserialize` of an internally tagged enum cannot know the variant before it
//! has found `type`, which may come anywhere in the object, so it first copies the whole frame
//! into an intermediate tree and then reads the variant from that tree: several allocations per
//! frame, and about twice the time. The server always writes `type` first (it is the tag of the
//! serialized enum), so [`type_first`] reads it, then hands the rest of the object to the
//! derived code of that one variant. A frame whose first field is not `type` (never one from
//! our server) fails here, and [`ServerFrame::decode`] then reads it the derived way, which
//! decides for every text this path refuses.
//!
//! `ServerFrameFields` and `MessageViewFields` restate the fields of [`ServerFrame`] and
//! [`MessageView`] with the attributes that make them borrow. Serde's `remote` derive builds
//! the real types from them, so the compiler checks that every field is there, with its type.
//! A variant missing here would still decode (the derived way, slowly); a test checks that
//! every frame of the test suite's list takes this path. Nested lists of user ids
//! (`presence_snapshot`, `online_users`) are read owned: borrowing them would cost a copy of
//! the list, and they are rare.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::{BorrowedStrDeserializer, MapAccessDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess};
use serde::de::{Unexpected, VariantAccess, Visitor};
use serde::{Deserialize, forward_to_deserialize_any};

use super::{
    ConversationView, DeletionView, ErrorCode, EventView, MemberView, MessageView, PresenceStatus,
    QuoteView, ReactionView, ReaderView, ReqId, ServerFrame,
};

/// Reads `text` as a server frame whose first field is `type`. Fails on any other text,
/// including a frame with `type` elsewhere.
pub(super) fn type_first(text: &str) -> Result<ServerFrame<'_>, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let frame = deserializer.deserialize_map(TypeFirst)?;
    deserializer.end()?;
    Ok(frame)
}

/// Visits the frame's object: its first entry must be `type` with a string that needs no
/// unescaping.
struct TypeFirst;

impl<'de> Visitor<'de> for TypeFirst {
    type Value = ServerFrame<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a server frame whose first field is `type`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        if map.next_key::<&'de str>()? != Some("type") {
            return Err(de::Error::custom("`type` is not the first field"));
        }
        let tag = map.next_value::<&'de str>()?;
        ServerFrameFields::deserialize(Variant { tag, rest: map })
    }
}

/// The rest of a frame after its `type`, shown to the derived code as the enum variant `tag`
/// with these fields.
struct Variant<'de, A> {
    tag: &'de str,
    rest: A,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Variant<'de, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_enum(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> EnumAccess<'de> for Variant<'de, A> {
    type Error = A::Error;
    type Variant = Fields<A>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Fields<A>), A::Error> {
        let variant = seed.deserialize(BorrowedStrDeserializer::new(self.tag))?;
        Ok((variant, Fields(self.rest)))
    }
}

/// A variant's fields: the entries of the frame after `type`.
struct Fields<A>(A);

impl<'de, A: MapAccess<'de>> VariantAccess<'de> for Fields<A> {
    type Error = A::Error;

    fn unit_variant(mut self) -> Result<(), A::Error> {
        // Like the derived code, a variant without fields ignores any the frame has.
        while self.0.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        seed.deserialize(MapAccessDeserializer::new(self.0))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, A::Error> {
        Err(de::Error::invalid_type(Unexpected::Map, &visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        visitor.visit_map(self.0)
    }
}

/// The fields of every [`ServerFrame`] variant, borrowing their strings.
#[derive(Deserialize)]
#[serde(remote = "ServerFrame", rename_all = "snake_case")]
enum ServerFrameFields<'a> {
    Welcome {
        session_id: String,
        #[serde(borrow)]
        user: Cow<'a, str>,
        #[serde(borrow)]
        tenant: Cow<'a, str>,
        last_seq: u64,
        protocol: u32,
    },
    Ack {
        req_id: Option<Cow<'a, ReqId>>,
        #[serde(borrow)]
        client_msg_id: Cow<'a, str>,
        message_id: String,
        conversation_id: String,
        seq: u64,
        ts: i64,
        duplicate: bool,
    },
    Message(#[serde(borrow, with = "MessageViewFields")] MessageView<'a>),
    History {
        req_id: Option<Cow<'a, ReqId>>,
        #[serde(borrow, default, deserialize_with = "optional")]
        with: Option<Cow<'a, str>>,
        conversation_id: String,
        #[serde(borrow, deserialize_with = "views")]
        messages: Vec<MessageView<'a>>,
        next_before: Option<String>,
        #[serde(default)]
        last_seq: Option<u64>,
    },
    Sync {
        req_id: Option<Cow<'a, ReqId>>,
        #[serde(borrow, deserialize_with = "views")]
        messages: Vec<MessageView<'a>>,
        #[serde(default)]
        events: Option<Vec<EventView<'a>>>,
        last_seq: u64,
        has_more: bool,
        #[serde(default)]
        pruned_until: Option<u64>,
    },
    SyncHint {
        last_seq: u64,
    },
    PresenceSnapshot {
        req_id: Option<Cow<'a, ReqId>>,
        users: BTreeMap<Cow<'a, str>, PresenceStatus>,
    },
    Presence {
        #[serde(borrow)]
        user: Cow<'a, str>,
        status: PresenceStatus,
        ts: i64,
    },
    OnlineUsers {
        req_id: Option<Cow<'a, ReqId>>,
        users: Vec<Cow<'a, str>>,
        truncated: bool,
    },
    Typing {
        #[serde(borrow)]
        from: Cow<'a, str>,
        #[serde(borrow, default, deserialize_with = "optional")]
        conversation_id: Option<Cow<'a, str>>,
    },
    Pong {
        req_id: Option<Cow<'a, ReqId>>,
        ts: i64,
    },
    Refreshed {
        req_id: Option<Cow<'a, ReqId>>,
        exp: u64,
    },
    Error {
        code: ErrorCode,
        #[serde(borrow)]
        message: Cow<'a, str>,
        retryable: bool,
        req_id: Option<Cow<'a, ReqId>>,
        #[serde(borrow, default, deserialize_with = "optional")]
        client_msg_id: Option<Cow<'a, str>>,
    },
    // Protocol 2's frames other than `message` are read owned: they are rare.
    Event(Box<EventView<'a>>),
    GroupCreated {
        req_id: Option<Cow<'a, ReqId>>,
        client_msg_id: Cow<'a, str>,
        conversation_id: Cow<'a, str>,
        duplicate: bool,
    },
    Done {
        req_id: Option<Cow<'a, ReqId>>,
        conversation_id: Cow<'a, str>,
    },
    Members {
        req_id: Option<Cow<'a, ReqId>>,
        conversation_id: Cow<'a, str>,
        members: Vec<MemberView<'a>>,
    },
    Conversations {
        req_id: Option<Cow<'a, ReqId>>,
        conversations: Vec<ConversationView<'a>>,
        next_before: Option<String>,
        total_unread: u64,
        #[serde(default)]
        last_seq: Option<u64>,
    },
    ReadState {
        req_id: Option<Cow<'a, ReqId>>,
        conversation_id: Cow<'a, str>,
        read_marker: String,
        unread_count: u64,
    },
    ReadReceipts {
        req_id: Option<Cow<'a, ReqId>>,
        conversation_id: Cow<'a, str>,
        message_id: String,
        readers: Vec<ReaderView<'a>>,
    },
    Receipt {
        conversation_id: Cow<'a, str>,
        user: Cow<'a, str>,
        message_id: String,
    },
    MessageState {
        req_id: Option<Cow<'a, ReqId>>,
        #[serde(default)]
        client_msg_id: Option<Cow<'a, str>>,
        #[serde(borrow, with = "MessageViewFields")]
        message: MessageView<'a>,
        duplicate: bool,
        #[serde(default)]
        seq: Option<u64>,
    },
}

/// The fields of a [`MessageView`], borrowing its strings.
#[derive(Deserialize)]
#[serde(remote = "MessageView")]
struct MessageViewFields<'a> {
    message_id: String,
    conversation_id: String,
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    to: Cow<'a, str>,
    #[serde(borrow)]
    text: Cow<'a, str>,
    ts: i64,
    seq: u64,
    #[serde(borrow, default, deserialize_with = "optional")]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(default)]
    erased: bool,
    // Protocol 3's fields are read owned: most messages have none.
    #[serde(default)]
    reply_to: Option<QuoteView<'a>>,
    #[serde(default)]
    edited_ts: Option<i64>,
    #[serde(default)]
    deleted: Option<DeletionView<'a>>,
    #[serde(default)]
    reactions: Option<Vec<ReactionView<'a>>>,
}

/// A string, borrowed when it needs no unescaping.
#[derive(Deserialize)]
struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);

/// An optional string, borrowed when it can be: serde borrows a `Cow<str>` field, but not one
/// inside an `Option`.
fn optional<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    Ok(Option::<Borrowed<'a>>::deserialize(deserializer)?.map(|Borrowed(text)| text))
}

/// A page of messages, each borrowing its strings.
fn views<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<MessageView<'a>>, D::Error> {
    #[derive(Deserialize)]
    struct View<'a>(#[serde(borrow, with = "MessageViewFields")] MessageView<'a>);
    let views = Vec::<View<'a>>::deserialize(deserializer)?;
    Ok(views.into_iter().map(|View(view)| view).collect())
}

impl ServerFrame<'_> {
    /// The same frame, owning its strings: for a client that keeps a frame longer than the
    /// text it was decoded from.
    pub fn into_owned(self) -> ServerFrame<'static> {
        match self {
            ServerFrame::Welcome {
                session_id,
                user,
                tenant,
                last_seq,
                protocol,
            } => ServerFrame::Welcome {
                session_id,
                user: owned(user),
                tenant: owned(tenant),
                last_seq,
                protocol,
            },
            ServerFrame::Ack {
                req_id,
                client_msg_id,
                message_id,
                conversation_id,
                seq,
                ts,
                duplicate,
            } => ServerFrame::Ack {
                req_id: owned_req_id(req_id),
                client_msg_id: owned(client_msg_id),
                message_id,
                conversation_id,
                seq,
                ts,
                duplicate,
            },
            ServerFrame::Message(view) => ServerFrame::Message(view.into_owned()),
            ServerFrame::History {
                req_id,
                with,
                conversation_id,
                messages,
                next_before,
                last_seq,
            } => ServerFrame::History {
                req_id: owned_req_id(req_id),
                with: with.map(owned),
                conversation_id,
                messages: owned_views(messages),
                next_before,
                last_seq,
            },
            ServerFrame::Sync {
                req_id,
                messages,
                events: None,
                last_seq,
                has_more,
                pruned_until,
            } => ServerFrame::Sync {
                req_id: owned_req_id(req_id),
                messages: owned_views(messages),
                events: None,
                last_seq,
                has_more,
                pruned_until,
            },
            ServerFrame::SyncHint { last_seq } => ServerFrame::SyncHint { last_seq },
            ServerFrame::PresenceSnapshot { req_id, users } => ServerFrame::PresenceSnapshot {
                req_id: owned_req_id(req_id),
                users: users
                    .into_iter()
                    .map(|(user, status)| (owned(user), status))
                    .collect(),
            },
            ServerFrame::Presence { user, status, ts } => ServerFrame::Presence {
                user: owned(user),
                status,
                ts,
            },
            ServerFrame::OnlineUsers {
                req_id,
                users,
                truncated,
            } => ServerFrame::OnlineUsers {
                req_id: owned_req_id(req_id),
                users: users.into_iter().map(owned).collect(),
                truncated,
            },
            ServerFrame::Typing {
                from,
                conversation_id,
            } => ServerFrame::Typing {
                from: owned(from),
                conversation_id: conversation_id.map(owned),
            },
            ServerFrame::Pong { req_id, ts } => ServerFrame::Pong {
                req_id: owned_req_id(req_id),
                ts,
            },
            ServerFrame::Refreshed { req_id, exp } => ServerFrame::Refreshed {
                req_id: owned_req_id(req_id),
                exp,
            },
            ServerFrame::Error {
                code,
                message,
                retryable,
                req_id,
                client_msg_id,
            } => ServerFrame::Error {
                code,
                message: owned(message),
                retryable,
                req_id: owned_req_id(req_id),
                client_msg_id: client_msg_id.map(owned),
            },
            // Protocol 2's rarer frames (and a sync page with events): read again, owned.
            other => serde_json::from_str(&other.encode())
                .expect("a frame reads back from its own encoding"),
        }
    }
}

fn owned(text: Cow<'_, str>) -> Cow<'static, str> {
    Cow::Owned(text.into_owned())
}

fn owned_req_id(req_id: Option<Cow<'_, ReqId>>) -> Option<Cow<'static, ReqId>> {
    req_id.map(|id| Cow::Owned(id.into_owned()))
}

fn owned_views(views: Vec<MessageView<'_>>) -> Vec<MessageView<'static>> {
    views.into_iter().map(MessageView::into_owned).collect()
}
