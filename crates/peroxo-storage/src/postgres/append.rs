//! Appending a batch of direct and group messages in one transaction of a handful of
//! statements, whatever its size (arrays bound with `unnest`).
//!
//! Order of work: lock the rows of the groups the batch writes to (`FOR SHARE`, sorted) and
//! read their members, then lock the counter of every user the batch may add to (sorted, see
//! `streams`), then find the sends stored before (under the senders' locks none can be
//! stored meanwhile) and the messages replies quote (a delete locks the counters of everyone
//! who can see the message, the sender among them, so none is deleted meanwhile), then decide
//! every message in batch order and write messages, stream entries, conversation states and
//! counters, and last the batch's outbox events (one statement per tenant, whose counter is
//! the batch's last lock: see `outbox`). A group change locks its group row `FOR UPDATE`, so the members read here stay
//! the members until the batch commits, and message ids of a group grow in commit order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;

use deadpool_postgres::{Pool, Transaction};

use super::outbox::OutboxRows;
use super::streams::{Counters, InboxRows};
use super::{attach_reactions, backend, message_from_row};
use crate::seq_assignment::{next_seqs, stream_entries};
use crate::sql::{MESSAGE_COLUMNS, sql_int};
use crate::{MAX_STORED_TEXT_BYTES, OutboxSettings, StoreError, rules};
use peroxo_protocol::domain::{
    AppendOutcome, NewMessage, QUOTE_EXCERPT_CHARS, Quote, StoredMessage, UserKey, conversation_id,
    now_ms,
};
use peroxo_protocol::event::{Refusal, StreamSeq, is_group_id};

/// The identity of a send for idempotency.
type SendKey = (String, String, String);

fn send_key(tenant: &str, sender: &str, client_msg_id: &str) -> SendKey {
    (
        tenant.to_owned(),
        sender.to_owned(),
        client_msg_id.to_owned(),
    )
}

/// A group as (tenant, group id).
type GroupKey = (String, String);

/// The current members of each group a batch writes to, by user id, each with its boundary
/// (it sees the messages with a larger id). A group that does not exist has no entry.
type GroupMembers = HashMap<GroupKey, BTreeMap<String, u64>>;

/// A message a reply of the batch names, as a reply finds it.
#[derive(Debug)]
struct Quoted {
    tenant: String,
    conversation: String,
    sender: String,
    /// Its first [`QUOTE_EXCERPT_CHARS`] characters.
    excerpt: String,
    deleted: bool,
}

impl Quoted {
    /// A message this batch stores, for the replies after it in the batch.
    fn of(message: &StoredMessage) -> Self {
        Self {
            tenant: message.tenant.clone(),
            conversation: message.conversation_id(),
            sender: message.sender.clone(),
            excerpt: message.text.chars().take(QUOTE_EXCERPT_CHARS).collect(),
            deleted: false,
        }
    }
}

pub(super) async fn append(
    pool: &Pool,
    outbox: OutboxSettings,
    batch: Vec<NewMessage>,
) -> Result<Vec<AppendOutcome>, StoreError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut client = pool.get().await.map_err(backend)?;
    let tx = client.transaction().await.map_err(backend)?;

    let checks: Vec<Result<(), String>> = batch
        .iter()
        .map(|m| m.validate(MAX_STORED_TEXT_BYTES))
        .collect();
    let valid: Vec<&NewMessage> = batch
        .iter()
        .zip(&checks)
        .filter(|(_, check)| check.is_ok())
        .map(|(m, _)| m)
        .collect();
    let groups = lock_groups(&tx, &valid).await?;
    let counters = Counters::lock(&tx, participants(&valid, &groups)).await?;
    let sent = find_sent(&tx, &valid).await?;
    let quoted = find_quoted(&tx, &valid).await?;
    let ids = take_message_ids(&tx, valid.len()).await?;
    let mut batch_writes = BatchWrites {
        counters,
        sent,
        quoted,
        ids,
        fresh: Vec::new(),
        inbox: InboxRows::default(),
        states: StateChanges::default(),
        outbox: OutboxRows::new(outbox),
        ts: now_ms(),
    };
    let outcomes = batch
        .iter()
        .zip(checks)
        .map(|(message, check)| batch_writes.decide(message, check, &groups))
        .collect();
    if !batch_writes.fresh.is_empty() {
        insert_messages(&tx, &batch_writes.fresh).await?;
        batch_writes.inbox.insert(&tx).await?;
        batch_writes.states.store(&tx).await?;
        batch_writes.counters.store(&tx).await?;
        batch_writes.outbox.write(&tx, batch_writes.ts).await?;
    }
    tx.commit().await.map_err(backend)?;
    Ok(outcomes)
}

/// Locks the rows of the groups `valid` writes to, sorted, and reads their members. Two
/// statements: the members are read after the locks are held, so no change is half seen.
async fn lock_groups(
    tx: &Transaction<'_>,
    valid: &[&NewMessage],
) -> Result<GroupMembers, StoreError> {
    let wanted: BTreeSet<(&str, &str)> = valid
        .iter()
        .filter(|m| is_group_id(&m.recipient))
        .map(|m| (m.tenant.as_str(), m.recipient.as_str()))
        .collect();
    let mut groups = GroupMembers::new();
    if wanted.is_empty() {
        return Ok(groups);
    }
    let (tenants, ids): (Vec<&str>, Vec<&str>) = wanted.into_iter().unzip();
    let locked = tx
        .query(
            "SELECT tenant, id FROM groups
             WHERE (tenant, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
             ORDER BY tenant, id
             FOR SHARE",
            &[&tenants, &ids],
        )
        .await
        .map_err(backend)?;
    for row in &locked {
        groups.insert((row.get(0), row.get(1)), BTreeMap::new());
    }
    let members = tx
        .query(
            "SELECT tenant, conversation, owner, boundary FROM conversation_states
             WHERE (tenant, conversation) IN (SELECT * FROM unnest($1::text[], $2::text[]))
               AND active AND role IS NOT NULL",
            &[&tenants, &ids],
        )
        .await
        .map_err(backend)?;
    for row in &members {
        if let Some(members) = groups.get_mut(&(row.get(0), row.get(1))) {
            members.insert(row.get(2), row.get::<_, i64>(3) as u64);
        }
    }
    Ok(groups)
}

/// Every user whose stream `valid` may add to: each sender, each direct recipient, and every
/// member of each group written to.
fn participants(valid: &[&NewMessage], groups: &GroupMembers) -> BTreeSet<UserKey> {
    let mut users = BTreeSet::new();
    for message in valid {
        let sender = UserKey::new(message.tenant.clone(), message.sender.clone());
        if is_group_id(&message.recipient) {
            let group = (message.tenant.clone(), message.recipient.clone());
            for member in groups.get(&group).into_iter().flat_map(BTreeMap::keys) {
                users.insert(sender.peer(member.clone()));
            }
        } else {
            users.insert(sender.peer(message.recipient.clone()));
        }
        users.insert(sender);
    }
    users
}

/// The sends of `valid` stored before this batch, as they are now, seen by their senders.
/// Under the senders' locks no other batch can store one of them meanwhile.
async fn find_sent(
    tx: &Transaction<'_>,
    valid: &[&NewMessage],
) -> Result<HashMap<SendKey, StoredMessage>, StoreError> {
    let tenants: Vec<&str> = valid.iter().map(|m| m.tenant.as_str()).collect();
    let senders: Vec<&str> = valid.iter().map(|m| m.sender.as_str()).collect();
    let client_ids: Vec<&str> = valid.iter().map(|m| m.client_msg_id.as_str()).collect();
    let rows = tx
        .query(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m
                 JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(t, s, c)
                   ON m.tenant = k.t AND m.sender = k.s AND m.client_msg_id = k.c"
            ),
            &[&tenants, &senders, &client_ids],
        )
        .await
        .map_err(backend)?;
    let mut sent = HashMap::with_capacity(rows.len());
    for row in &rows {
        let mut original = message_from_row(row, 0);
        let sender = original.sender.clone();
        attach_reactions(tx, &sender, [&mut original]).await?;
        let key = send_key(&original.tenant, &original.sender, &original.client_msg_id);
        sent.insert(key, original);
    }
    Ok(sent)
}

/// The messages the replies of `valid` name, by id (whatever their tenant and conversation:
/// [`BatchWrites::quote`] checks those).
async fn find_quoted(
    tx: &Transaction<'_>,
    valid: &[&NewMessage],
) -> Result<HashMap<u64, Quoted>, StoreError> {
    let ids: Vec<i64> = valid
        .iter()
        .filter_map(|m| m.reply_to.map(sql_int))
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = tx
        .query(
            &format!(
                "SELECT id, tenant, conversation, sender, substr(text, 1, {QUOTE_EXCERPT_CHARS}),
                        deleted_ts IS NOT NULL
                 FROM messages WHERE id = ANY($1)"
            ),
            &[&ids],
        )
        .await
        .map_err(backend)?;
    Ok(rows
        .iter()
        .map(|row| {
            let quoted = Quoted {
                tenant: row.get(1),
                conversation: row.get(2),
                sender: row.get(3),
                excerpt: row.get(4),
                deleted: row.get(5),
            };
            (row.get::<_, i64>(0) as u64, quoted)
        })
        .collect())
}

/// `count` fresh message ids in ascending order, to be handed out in batch order. One is taken
/// for every valid message, duplicates and refusals included: ids need only be unique and
/// increasing.
async fn take_message_ids(
    tx: &Transaction<'_>,
    count: usize,
) -> Result<std::vec::IntoIter<i64>, StoreError> {
    let ids: Vec<i64> = tx
        .query(
            "SELECT nextval('messages_id_seq') AS id FROM generate_series(1, $1::bigint) ORDER BY id",
            &[&(count as i64)],
        )
        .await
        .map_err(backend)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(ids.into_iter())
}

/// What a batch writes, gathered while its messages are decided in order.
struct BatchWrites {
    counters: Counters,
    /// Every send stored so far, earlier in this batch included.
    sent: HashMap<SendKey, StoredMessage>,
    /// The messages replies name, by id, with those stored earlier in this batch.
    quoted: HashMap<u64, Quoted>,
    ids: std::vec::IntoIter<i64>,
    fresh: Vec<StoredMessage>,
    inbox: InboxRows,
    states: StateChanges,
    /// The `message.created` event of every message stored.
    outbox: OutboxRows,
    ts: i64,
}

impl BatchWrites {
    /// The outcome of one message: refused by `check` or by its group, a duplicate of a send
    /// stored before, or fresh with the next seqs of everyone it reaches.
    fn decide(
        &mut self,
        message: &NewMessage,
        check: Result<(), String>,
        groups: &GroupMembers,
    ) -> AppendOutcome {
        if let Err(reason) = check {
            return AppendOutcome::Rejected(rules::bad_request(reason));
        }
        let key = send_key(&message.tenant, &message.sender, &message.client_msg_id);
        if let Some(original) = self.sent.get(&key) {
            return AppendOutcome::Stored {
                message: original.clone(),
                duplicate: true,
                members: Vec::new(),
            };
        }
        let id = self.ids.next().expect("one id per valid message") as u64;
        // The group's members, the conversation, and the sender's boundary in it.
        let (members, conversation, boundary) = if is_group_id(&message.recipient) {
            let group = (message.tenant.clone(), message.recipient.clone());
            let Some(members) = groups.get(&group) else {
                return AppendOutcome::Rejected(rules::unknown_conversation(&message.recipient));
            };
            let Some(&boundary) = members.get(&message.sender) else {
                return AppendOutcome::Rejected(rules::not_a_member(
                    &message.sender,
                    &message.recipient,
                ));
            };
            (Some(members), message.recipient.clone(), boundary)
        } else {
            let conversation = conversation_id(&message.sender, &message.recipient);
            (None, conversation, 0)
        };
        let quote = match self.quote(message, &conversation, boundary) {
            Ok(quote) => quote,
            Err(refusal) => return AppendOutcome::Rejected(refusal),
        };
        let (mut stored, others) = match members {
            Some(members) => self.group(message, id, members),
            None => (self.direct(message, id), Vec::new()),
        };
        stored.lifecycle.reply_to = quote.map(Box::new);
        self.outbox.record(&message.tenant, |payloads| {
            let recipients: Vec<&str> = match members {
                Some(members) => members.keys().map(String::as_str).collect(),
                None => vec![message.recipient.as_str()],
            };
            Some(payloads.message_created(&stored, recipients))
        });
        self.quoted.insert(id, Quoted::of(&stored));
        self.sent.insert(key, stored.clone());
        self.fresh.push(stored.clone());
        AppendOutcome::Stored {
            message: stored,
            duplicate: false,
            members: others,
        }
    }

    /// The quote of the message `message` replies to, if it names one: refused unless that
    /// message is in `conversation` of the sender's tenant, past `boundary` (what the sender
    /// can see of a group), and not deleted.
    fn quote(
        &self,
        message: &NewMessage,
        conversation: &str,
        boundary: u64,
    ) -> Result<Option<Quote>, Refusal> {
        let Some(reply_to) = message.reply_to else {
            return Ok(None);
        };
        let quoted = self.quoted.get(&reply_to).filter(|q| {
            q.tenant == message.tenant && q.conversation == conversation && reply_to > boundary
        });
        match quoted {
            None => Err(rules::unknown_message(Some(reply_to), conversation)),
            Some(q) if q.deleted => Err(rules::deleted(reply_to)),
            Some(q) => Ok(Some(Quote {
                message_id: reply_to,
                sender: q.sender.clone(),
                excerpt: q.excerpt.clone(),
                deleted: false,
            })),
        }
    }

    /// A direct message: the next seq of its sender and of its recipient (one seq for a
    /// message to oneself), numbered as every backend numbers them.
    fn direct(&mut self, message: &NewMessage, id: u64) -> StoredMessage {
        let sender = UserKey::new(message.tenant.clone(), message.sender.clone());
        let recipient = sender.peer(message.recipient.clone());
        let counters = &self.counters;
        let Ok(seqs) = next_seqs(&sender, &recipient, |user| {
            Ok::<_, Infallible>(counters.last(user))
        });
        let stored = seqs.stored(message, id, self.ts);
        let conversation = stored.conversation_id();
        for (owner, seq) in stream_entries(&sender, &recipient, seqs) {
            self.counters.set(owner, seq);
            self.inbox.message(&owner.tenant, &owner.user, seq, id);
            let peer = if owner == &sender {
                &recipient
            } else {
                &sender
            };
            self.states.message(
                owner,
                &conversation,
                Some(&peer.user),
                &stored.sender,
                id,
                seq,
            );
        }
        stored
    }

    /// A group message: the next seq of every member, the sender's as `sender_seq` and the
    /// others' as the outcome's members (by user id).
    fn group(
        &mut self,
        message: &NewMessage,
        id: u64,
        members: &BTreeMap<String, u64>,
    ) -> (StoredMessage, Vec<StreamSeq>) {
        let sender = UserKey::new(message.tenant.clone(), message.sender.clone());
        let mut sender_seq = 0;
        let mut others = Vec::with_capacity(members.len().saturating_sub(1));
        for member in members.keys() {
            let owner = sender.peer(member.clone());
            let seq = self.counters.next(&owner);
            self.inbox.message(&owner.tenant, member, seq, id);
            self.states
                .message(&owner, &message.recipient, None, &message.sender, id, seq);
            if owner == sender {
                sender_seq = seq;
            } else {
                others.push(StreamSeq {
                    user: member.clone(),
                    seq,
                });
            }
        }
        let stored = StoredMessage {
            message_id: id,
            tenant: message.tenant.clone(),
            sender: message.sender.clone(),
            recipient: message.recipient.clone(),
            client_msg_id: message.client_msg_id.clone(),
            text: message.text.clone(),
            ts: self.ts,
            sender_seq,
            recipient_seq: 0,
            lifecycle: Default::default(),
        };
        (stored, others)
    }
}

/// How a batch changes one user's state of one conversation.
#[derive(Debug)]
struct StateChange {
    /// The other participant of a direct conversation; `None` for a group.
    peer: Option<String>,
    /// The user's own newest message of the batch (0: none): sending reads everything up
    /// to it.
    read_marker: u64,
    /// Messages from others after `read_marker` (after the stored marker when it is 0).
    unread: u64,
    last_message_id: u64,
    activity_seq: u64,
}

/// The conversation states a batch changes, by (tenant, owner, conversation).
#[derive(Debug, Default)]
struct StateChanges(BTreeMap<(String, String, String), StateChange>);

impl StateChanges {
    /// `owner` took `seq` for message `id` of `conversation` from `sender`.
    fn message(
        &mut self,
        owner: &UserKey,
        conversation: &str,
        peer: Option<&str>,
        sender: &str,
        id: u64,
        seq: u64,
    ) {
        let key = (
            owner.tenant.clone(),
            owner.user.clone(),
            conversation.to_owned(),
        );
        let change = self.0.entry(key).or_insert_with(|| StateChange {
            peer: peer.map(str::to_owned),
            read_marker: 0,
            unread: 0,
            last_message_id: 0,
            activity_seq: 0,
        });
        if sender == owner.user {
            change.read_marker = id;
            change.unread = 0;
        } else {
            change.unread += 1;
        }
        change.last_message_id = id;
        change.activity_seq = seq;
    }

    /// Creates the states of direct conversations seen for the first time and moves the
    /// others, in one statement. A marker moved by sending is always past the stored one
    /// (message ids of a conversation grow in commit order), so the batch's count replaces
    /// the stored one; otherwise it adds to it.
    async fn store(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let mut tenants = Vec::with_capacity(self.0.len());
        let mut owners = Vec::with_capacity(self.0.len());
        let mut conversations = Vec::with_capacity(self.0.len());
        let mut peers = Vec::with_capacity(self.0.len());
        let mut markers = Vec::with_capacity(self.0.len());
        let mut unread = Vec::with_capacity(self.0.len());
        let mut last = Vec::with_capacity(self.0.len());
        let mut activity = Vec::with_capacity(self.0.len());
        for ((tenant, owner, conversation), change) in &self.0 {
            tenants.push(tenant.as_str());
            owners.push(owner.as_str());
            conversations.push(conversation.as_str());
            peers.push(change.peer.as_deref());
            markers.push(sql_int(change.read_marker));
            unread.push(sql_int(change.unread));
            last.push(sql_int(change.last_message_id));
            activity.push(sql_int(change.activity_seq));
        }
        tx.execute(
            "INSERT INTO conversation_states AS s
                (tenant, owner, conversation, peer, read_marker, unread_count, last_message_id,
                 activity_seq)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                  $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[])
             ON CONFLICT (tenant, owner, conversation) DO UPDATE SET
                read_marker = CASE WHEN EXCLUDED.read_marker > 0
                                   THEN EXCLUDED.read_marker ELSE s.read_marker END,
                unread_count = CASE WHEN EXCLUDED.read_marker > 0
                                    THEN EXCLUDED.unread_count
                                    ELSE s.unread_count + EXCLUDED.unread_count END,
                last_message_id = EXCLUDED.last_message_id,
                activity_seq = EXCLUDED.activity_seq",
            &[
                &tenants,
                &owners,
                &conversations,
                &peers,
                &markers,
                &unread,
                &last,
                &activity,
            ],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }
}

async fn insert_messages(
    tx: &Transaction<'_>,
    messages: &[StoredMessage],
) -> Result<(), StoreError> {
    let ids: Vec<i64> = messages.iter().map(|m| sql_int(m.message_id)).collect();
    let tenants: Vec<&str> = messages.iter().map(|m| m.tenant.as_str()).collect();
    let senders: Vec<&str> = messages.iter().map(|m| m.sender.as_str()).collect();
    let recipients: Vec<&str> = messages.iter().map(|m| m.recipient.as_str()).collect();
    let conversations: Vec<String> = messages
        .iter()
        .map(StoredMessage::conversation_id)
        .collect();
    let client_ids: Vec<&str> = messages.iter().map(|m| m.client_msg_id.as_str()).collect();
    let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
    let ts: Vec<i64> = messages.iter().map(|m| m.ts).collect();
    let sender_seqs: Vec<i64> = messages.iter().map(|m| sql_int(m.sender_seq)).collect();
    let recipient_seqs: Vec<i64> = messages.iter().map(|m| sql_int(m.recipient_seq)).collect();
    let replies_to: Vec<Option<i64>> = messages
        .iter()
        .map(|m| m.lifecycle.reply_to.as_ref().map(|q| sql_int(q.message_id)))
        .collect();
    tx.execute(
        "INSERT INTO messages
            (id, tenant, sender, recipient, conversation, client_msg_id, text, ts, sender_seq,
             recipient_seq, reply_to)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[],
                              $11::bigint[])",
        &[
            &ids,
            &tenants,
            &senders,
            &recipients,
            &conversations,
            &client_ids,
            &texts,
            &ts,
            &sender_seqs,
            &recipient_seqs,
            &replies_to,
        ],
    )
    .await
    .map_err(backend)?;
    Ok(())
}
