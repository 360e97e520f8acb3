//! Every user's stream: the seq counters, locked in one order, and what enters the streams
//! (inbox rows pointing at messages or events, and the events themselves).
//!
//! A transaction that adds to streams locks the counter of every user it adds to in ONE
//! statement, sorted by (tenant, user), after any group rows it locks. Every writer follows
//! that order, so no two can deadlock, and a user's seqs are taken by one transaction at a
//! time: gapless and unique. Every other row of a user that writers change (the user's
//! conversation states) is only changed under that user's counter lock.

use std::collections::{BTreeMap, BTreeSet};

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::backend;
use crate::StoreError;
use crate::sql::{EventColumns, sql_int};
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::event::{Event, EventKind, Fanout, Role, StreamSeq};

/// The last seq of every user a transaction adds to, locked until it commits.
#[derive(Debug)]
pub(super) struct Counters {
    last: BTreeMap<UserKey, u64>,
}

impl Counters {
    /// Locks the counters of `users` in (tenant, user) order, creating those of users never
    /// seen, and reads their last seqs.
    ///
    /// `ON CONFLICT DO UPDATE ... WHERE false` locks an existing row without changing it, so
    /// creating a counter and locking it happen in the same pass, in the same order.
    pub(super) async fn lock(
        tx: &Transaction<'_>,
        users: BTreeSet<UserKey>,
    ) -> Result<Self, StoreError> {
        let mut last = BTreeMap::new();
        if users.is_empty() {
            return Ok(Self { last });
        }
        let (tenants, owners): (Vec<&str>, Vec<&str>) = users
            .iter()
            .map(|user| (user.tenant.as_str(), user.user.as_str()))
            .unzip();
        tx.execute(
            "INSERT INTO user_seqs (tenant, owner, last_seq)
             SELECT t, o, 0 FROM unnest($1::text[], $2::text[]) AS k(t, o)
             ORDER BY t, o
             ON CONFLICT (tenant, owner) DO UPDATE SET last_seq = EXCLUDED.last_seq WHERE false",
            &[&tenants, &owners],
        )
        .await
        .map_err(backend)?;
        let rows = tx
            .query(
                "SELECT tenant, owner, last_seq FROM user_seqs
                 WHERE (tenant, owner) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                &[&tenants, &owners],
            )
            .await
            .map_err(backend)?;
        for row in &rows {
            let user = UserKey::new(row.get::<_, String>(0), row.get::<_, String>(1));
            last.insert(user, row.get::<_, i64>(2) as u64);
        }
        Ok(Self { last })
    }

    /// The last seq `user` has taken so far.
    pub(super) fn last(&self, user: &UserKey) -> u64 {
        *self
            .last
            .get(user)
            .expect("a user's counter is locked before its stream grows")
    }

    /// Takes the next seq of `user`.
    pub(super) fn next(&mut self, user: &UserKey) -> u64 {
        let seq = self.last(user) + 1;
        self.set(user, seq);
        seq
    }

    /// Records that `user` has taken every seq up to `seq`.
    pub(super) fn set(&mut self, user: &UserKey, seq: u64) {
        self.last.insert(user.clone(), seq);
    }

    /// Writes back every counter that moved.
    pub(super) async fn store(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let tenants: Vec<&str> = self.last.keys().map(|u| u.tenant.as_str()).collect();
        let owners: Vec<&str> = self.last.keys().map(|u| u.user.as_str()).collect();
        let lasts: Vec<i64> = self.last.values().map(|last| sql_int(*last)).collect();
        tx.execute(
            "UPDATE user_seqs u SET last_seq = v.l
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS v(t, o, l)
             WHERE u.tenant = v.t AND u.owner = v.o AND u.last_seq <> v.l",
            &[&tenants, &owners, &lasts],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }
}

/// Stream entries to write: each a (tenant, owner, seq) that holds a message or an event.
#[derive(Debug, Default)]
pub(super) struct InboxRows {
    tenants: Vec<String>,
    owners: Vec<String>,
    seqs: Vec<i64>,
    message_ids: Vec<Option<i64>>,
    event_ids: Vec<Option<i64>>,
}

impl InboxRows {
    pub(super) fn message(&mut self, tenant: &str, owner: &str, seq: u64, message_id: u64) {
        self.push(tenant, owner, seq, Some(sql_int(message_id)), None);
    }

    pub(super) fn event(&mut self, tenant: &str, owner: &str, seq: u64, event_id: u64) {
        self.push(tenant, owner, seq, None, Some(sql_int(event_id)));
    }

    fn push(
        &mut self,
        tenant: &str,
        owner: &str,
        seq: u64,
        message_id: Option<i64>,
        event_id: Option<i64>,
    ) {
        self.tenants.push(tenant.to_owned());
        self.owners.push(owner.to_owned());
        self.seqs.push(sql_int(seq));
        self.message_ids.push(message_id);
        self.event_ids.push(event_id);
    }

    pub(super) async fn insert(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        if self.seqs.is_empty() {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO inbox (tenant, owner, seq, message_id, event_id)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])",
            &[
                &self.tenants,
                &self.owners,
                &self.seqs,
                &self.message_ids,
                &self.event_ids,
            ],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }
}

/// Commits an event (not yet in any stream) and returns it with its id.
pub(super) async fn insert_event(
    tx: &Transaction<'_>,
    tenant: &str,
    conversation_id: &str,
    actor: &str,
    ts: i64,
    kind: EventKind,
) -> Result<Event, StoreError> {
    let (name, c) = EventColumns::of(&kind);
    let row = tx
        .query_one(
            "INSERT INTO events (id, tenant, conversation, actor, ts, kind, users, member, role,
                                 title, message_id, count, emoji)
             VALUES (nextval('events_id_seq'), $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                     $12)
             RETURNING id",
            &[
                &tenant,
                &conversation_id,
                &actor,
                &ts,
                &name,
                &c.users,
                &c.user,
                &c.role,
                &c.title,
                &c.message_id,
                &c.count,
                &c.emoji,
            ],
        )
        .await
        .map_err(backend)?;
    Ok(Event {
        event_id: row.get::<_, i64>(0) as u64,
        tenant: tenant.to_owned(),
        conversation_id: conversation_id.to_owned(),
        actor: actor.to_owned(),
        ts,
        kind,
    })
}

/// Puts `event` in the streams of `audience` (sorted by user id), at each user's next seq,
/// and returns it with those seqs.
pub(super) fn fan_out(
    event: Event,
    audience: &[String],
    counters: &mut Counters,
    inbox: &mut InboxRows,
) -> Fanout {
    let seqs = audience
        .iter()
        .map(|user| {
            let seq = counters.next(&UserKey::new(event.tenant.clone(), user.clone()));
            inbox.event(&event.tenant, user, seq, event.event_id);
            StreamSeq {
                user: user.clone(),
                seq,
            }
        })
        .collect();
    Fanout { event, seqs }
}

/// The columns of `events e` that [`event_from_row`] reads, in its order: an edit's text is
/// the message's text as it is now.
pub(super) const EVENT_COLUMNS: &str = "e.id, e.tenant, e.conversation, e.actor, e.ts, e.kind, e.users, e.member, e.role, e.title, e.message_id, e.count, e.emoji, \
     CASE WHEN e.kind = 'message_edited' THEN (SELECT x.text FROM messages x WHERE x.id = e.message_id) END";

/// Reads an event from [`EVENT_COLUMNS`] starting at column `at` of `row`.
pub(super) fn event_from_row(row: &Row, at: usize) -> Result<Event, StoreError> {
    let columns = EventColumns {
        users: row.get(at + 6),
        user: row.get(at + 7),
        role: row.get(at + 8),
        title: row.get(at + 9),
        message_id: row.get(at + 10),
        count: row.get(at + 11),
        emoji: row.get(at + 12),
        text: row.get(at + 13),
    };
    let kind = columns.kind(row.get(at + 5)).map_err(backend)?;
    Ok(Event {
        event_id: row.get::<_, i64>(at) as u64,
        tenant: row.get(at + 1),
        conversation_id: row.get(at + 2),
        actor: row.get(at + 3),
        ts: row.get(at + 4),
        kind,
    })
}

/// A role as a `role` column holds it.
pub(super) fn role_from_sql(text: &str) -> Result<Role, StoreError> {
    Role::parse(text).ok_or_else(|| backend(format!("an unknown role {text:?}")))
}
