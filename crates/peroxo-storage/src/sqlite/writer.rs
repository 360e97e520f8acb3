//! The writer thread: the only connection that writes, and the jobs it commits together.
//!
//! It takes a job, opens a transaction, does the job, and while the transaction holds fewer
//! than [`MAX_GROUP_COMMIT`] stream rows takes the next waiting job into the same transaction
//! (group commit). Each job answers once the transaction commits. A job refused by a rule of
//! conversations is answered with its refusal and wrote nothing (every rule is checked before
//! the first write); any other error fails the whole transaction, and every job in it. A
//! retention batch ([`Job::Prune`]) is never grouped: it runs in a transaction of its own.
//!
//! [`WriteTx`] is what a job writes through: it takes the seqs (remembered across
//! transactions, so a direct message need not read them), knows the members of the groups it
//! saw lately (so a group message need not read them either), fans events out, and writes
//! the transaction's outbox events (`outbox`), whose counters it writes back before the
//! commit.

use std::collections::HashMap;
use std::sync::{Arc, mpsc};

use rusqlite::{Connection, TransactionBehavior, params};

use super::outbox::OutboxIds;
use super::schema::{EVENT, GROUP_MESSAGE, LIFECYCLE_EVENT};
use super::{
    append, backend, erase, groups, lifecycle, outbox, reads, restrictions, retention, state,
};
use crate::jobs::{Done, group_done, refusal_answers};
pub(super) use crate::jobs::{Job, Reply};
use crate::sql::{EventColumns, sql_int};
use crate::{OutboxSettings, StoreError};
use peroxo_protocol::domain::{UserKey, now_ms};
use peroxo_protocol::event::{Event, EventKind, Fanout, StreamSeq};
use peroxo_protocol::outbox::{NewOutboxEvent, Payloads};

/// The most stream rows the writer commits in one transaction (a direct message counts as
/// one, a group message as one per member, an event as one per stream it enters). A single
/// job is never split.
const MAX_GROUP_COMMIT: usize = 8_192;
/// Users whose current seq the writer remembers; past this, it forgets them all and reads
/// each again from the database when next needed.
const SEQ_CACHE_USERS: usize = 200_000;
/// Group members the writer remembers, over all groups; past this, it forgets every group and
/// reads each again from the database when next needed.
const KNOWN_MEMBERS: usize = 500_000;

/// Does a grouped `job` inside `w`, and says how many stream rows it wrote.
fn run(job: &Job, w: &mut WriteTx<'_>) -> Result<(Done, usize), StoreError> {
    match job {
        Job::Append(batch, _) => {
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut rows = 0;
            for message in batch {
                let (outcome, written) = append::append_one(w, message)?;
                outcomes.push(outcome);
                rows += written.max(1);
            }
            Ok((Done::Appended(outcomes), rows))
        }
        Job::CreateGroup(request, _) => {
            group_done(refusal_answers(groups::create_group(w, request))?)
        }
        Job::ChangeGroup(request, _) => {
            group_done(refusal_answers(groups::change_group(w, request))?)
        }
        Job::MarkRead(request, _) => {
            let done = refusal_answers(reads::mark_read(w, request))?;
            Ok((Done::Read(Box::new(done)), 1))
        }
        Job::ChangeMessage(request, _) => {
            let done = refusal_answers(lifecycle::change_message(w, request))?;
            let rows = done
                .as_ref()
                .ok()
                .and_then(|o| o.event.as_ref())
                .map_or(1, |e| e.seqs.len().max(1));
            Ok((Done::Message(Box::new(done)), rows))
        }
        Job::RecordEvents(tenant, events, _) => {
            let ids = w.record_all(tenant, events)?;
            Ok((Done::Recorded(ids), 1))
        }
        Job::Prune(..)
        | Job::EraseTexts(..)
        | Job::EraseReadState(..)
        | Job::PruneEvents(..)
        | Job::EraseEventTexts(..)
        | Job::ClaimConsumer(..)
        | Job::AdvanceConsumer(..)
        | Job::SetRestriction(..) => Err(StoreError::Backend(
            "a batch of its own was grouped with other writes".to_owned(),
        )),
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) conn: Connection,
    /// The current seq of recently seen users, as committed (or being committed by the open
    /// transaction). Cleared when a transaction fails, since it may then be ahead.
    pub(super) seqs: HashMap<UserKey, u64>,
    /// The members of recently seen groups, as committed (or being committed by the open
    /// transaction). Cleared when a transaction fails.
    pub(super) groups: KnownGroups,
    /// Wakes the checkpointer after a commit.
    pub(super) checkpoint: mpsc::SyncSender<()>,
    /// A retention batch taken while a group was open: it runs next, alone.
    pub(super) deferred: Option<Job>,
    /// Whether and how the writer writes outbox events.
    pub(super) outbox: OutboxSettings,
    pub(super) outbox_ids: OutboxIds,
}

/// The members of the groups the writer saw lately, so that a group message need not read
/// them: every change of membership is a job of the writer, which forgets the group's entry
/// in that job.
#[derive(Debug, Default)]
pub(super) struct KnownGroups {
    /// By tenant, then by group: the members' user ids, sorted.
    by_tenant: HashMap<String, HashMap<String, Arc<[String]>>>,
    /// The members held, over all groups.
    members: usize,
}

impl KnownGroups {
    fn get(&self, tenant: &str, group: &str) -> Option<Arc<[String]>> {
        self.by_tenant.get(tenant)?.get(group).cloned()
    }

    fn put(&mut self, tenant: &str, group: &str, members: Arc<[String]>) {
        if self.members + members.len() > KNOWN_MEMBERS {
            self.clear();
        }
        self.members += members.len();
        let groups = self.by_tenant.entry(tenant.to_owned()).or_default();
        if let Some(old) = groups.insert(group.to_owned(), members) {
            self.members -= old.len();
        }
    }

    fn forget(&mut self, tenant: &str, group: &str) {
        if let Some(old) = self
            .by_tenant
            .get_mut(tenant)
            .and_then(|groups| groups.remove(group))
        {
            self.members -= old.len();
        }
    }

    fn clear(&mut self) {
        self.by_tenant.clear();
        self.members = 0;
    }
}

impl Writer {
    /// Takes every waiting job, commits them together, answers each.
    pub(super) fn run(mut self, jobs: mpsc::Receiver<Job>) {
        loop {
            let first = match self.deferred.take() {
                Some(job) => job,
                None => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            let first = match self.run_alone(first) {
                Some(job) => job,
                None => continue,
            };
            if self.seqs.len() > SEQ_CACHE_USERS {
                self.seqs.clear();
            }
            let mut group = vec![first];
            match self.commit_group(&mut group, &jobs) {
                Ok(done) => {
                    let _ = self.checkpoint.try_send(());
                    for (job, done) in group.into_iter().zip(done) {
                        job.answer(done);
                    }
                }
                Err(e) => {
                    self.seqs.clear();
                    self.groups.clear();
                    self.outbox_ids.clear();
                    tracing::error!(error = %e, "sqlite write transaction failed");
                    let error = e.to_string();
                    for job in group {
                        job.fail(StoreError::Backend(error.clone()));
                    }
                }
            }
        }
    }

    /// Runs `job` in a transaction of its own when it is a batch of retention or erasure, and
    /// answers it; gives any other job back.
    fn run_alone(&mut self, job: Job) -> Option<Job> {
        let (done, reply) = match job {
            Job::Prune(batch, reply) => (retention::prune(&mut self.conn, &batch), reply),
            Job::EraseTexts(user, limit, reply) => {
                (erase::texts(&mut self.conn, &user, limit), reply)
            }
            Job::EraseReadState(user, limit, reply) => {
                (erase::read_state(&mut self.conn, &user, limit), reply)
            }
            Job::PruneEvents(batch, reply) => (outbox::prune(&mut self.conn, &batch), reply),
            Job::EraseEventTexts(user, limit, reply) => {
                (outbox::erase_texts(&mut self.conn, &user, limit), reply)
            }
            Job::ClaimConsumer(claim, reply) => {
                let _ = reply.send(outbox::claim(&self.conn, &claim));
                return None;
            }
            Job::AdvanceConsumer(advance, reply) => {
                let _ = reply.send(outbox::advance(&self.conn, &advance));
                return None;
            }
            Job::SetRestriction(user, change, reply) => {
                let _ = reply.send(restrictions::set(&mut self.conn, &user, &change));
                let _ = self.checkpoint.try_send(());
                return None;
            }
            job => return Some(job),
        };
        if done.is_ok() {
            let _ = self.checkpoint.try_send(());
        }
        let _ = reply.send(done);
        None
    }

    /// Does `group`'s first job, and more waiting jobs (added to `group`) while the
    /// transaction has room, then commits.
    fn commit_group(
        &mut self,
        group: &mut Vec<Job>,
        jobs: &mpsc::Receiver<Job>,
    ) -> Result<Vec<Done>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let mut w = WriteTx {
            conn: &tx,
            seqs: &mut self.seqs,
            groups: &mut self.groups,
            ts: now_ms(),
            outbox: self.outbox,
            outbox_ids: &mut self.outbox_ids,
        };
        let mut done = Vec::with_capacity(group.len());
        let mut rows = 0;
        loop {
            let job = group.last().expect("a group holds a job");
            let (answer, written) = run(job, &mut w)?;
            done.push(answer);
            rows += written;
            if rows >= MAX_GROUP_COMMIT {
                break;
            }
            match jobs.try_recv() {
                Ok(job) if job.runs_alone() => {
                    self.deferred = Some(job);
                    break;
                }
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        self.outbox_ids.store(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(done)
    }
}

/// What an entry of a stream points at, besides direct messages (which the append path writes
/// itself).
#[derive(Debug, Clone, Copy)]
pub(super) enum Entry {
    GroupMessage(u64),
    Event(u64),
    /// An event that changes a message: protocol 3 only.
    LifecycleEvent(u64),
}

/// The open transaction of the writer, as its jobs write through it.
pub(super) struct WriteTx<'t> {
    pub(super) conn: &'t Connection,
    seqs: &'t mut HashMap<UserKey, u64>,
    groups: &'t mut KnownGroups,
    /// The commit time of everything in the transaction.
    pub(super) ts: i64,
    outbox: OutboxSettings,
    outbox_ids: &'t mut OutboxIds,
}

impl WriteTx<'_> {
    /// The current seq of `user`: remembered, or read inside the transaction.
    pub(super) fn current_seq(&self, user: &UserKey) -> Result<u64, StoreError> {
        match self.seqs.get(user) {
            Some(seq) => Ok(*seq),
            None => state::last_seq(self.conn, user),
        }
    }

    /// The members of `group` (user ids, sorted): remembered, or read inside the transaction.
    /// `None` when the tenant has no such group.
    pub(super) fn group_members(
        &mut self,
        tenant: &str,
        group: &str,
    ) -> Result<Option<Arc<[String]>>, StoreError> {
        if let Some(members) = self.groups.get(tenant, group) {
            return Ok(Some(members));
        }
        if state::group_title(self.conn, tenant, group)?.is_none() {
            return Ok(None);
        }
        let members: Arc<[String]> = state::members(self.conn, tenant, group)?
            .into_iter()
            .map(|member| member.user)
            .collect();
        self.groups.put(tenant, group, Arc::clone(&members));
        Ok(Some(members))
    }

    /// Writes the outbox event `build` makes, as the next of `tenant`, when events are on.
    pub(super) fn record(
        &mut self,
        tenant: &str,
        build: impl FnOnce(Payloads) -> Option<NewOutboxEvent>,
    ) -> Result<(), StoreError> {
        match self.outbox.event(build) {
            Some(event) => self
                .outbox_ids
                .write(self.conn, tenant, self.ts, &event)
                .map(drop),
            None => Ok(()),
        }
    }

    /// Writes `events` as the next events of `tenant`, when events are on, and returns their
    /// ids.
    fn record_all(
        &mut self,
        tenant: &str,
        events: &[NewOutboxEvent],
    ) -> Result<Vec<u64>, StoreError> {
        if !self.outbox.enabled {
            return Ok(Vec::new());
        }
        events
            .iter()
            .map(|event| self.outbox_ids.write(self.conn, tenant, self.ts, event))
            .collect()
    }

    /// Forgets the remembered members of `group`: the job is changing them.
    pub(super) fn forget_group(&mut self, tenant: &str, group: &str) {
        self.groups.forget(tenant, group);
    }

    /// Remembers that `user` took `seq` (only once its stream row is written: a refused or
    /// duplicate message takes none).
    pub(super) fn took(&mut self, user: UserKey, seq: u64) {
        self.seqs.insert(user, seq);
    }

    /// Adds `entry` to `owner`'s stream at its next seq, and returns that seq.
    pub(super) fn enter(
        &mut self,
        tenant: &str,
        owner: &str,
        entry: Entry,
    ) -> Result<u64, StoreError> {
        let key = UserKey::new(tenant, owner);
        let seq = self.current_seq(&key)? + 1;
        self.enter_at(&key, seq, entry)?;
        Ok(seq)
    }

    /// Adds `entry` to `owner`'s stream at `seq`, which must be its next.
    pub(super) fn enter_at(
        &mut self,
        owner: &UserKey,
        seq: u64,
        entry: Entry,
    ) -> Result<(), StoreError> {
        let (message_id, event_id, kind) = match entry {
            Entry::GroupMessage(id) => (Some(sql_int(id)), None, GROUP_MESSAGE),
            Entry::Event(id) => (None, Some(sql_int(id)), EVENT),
            Entry::LifecycleEvent(id) => (None, Some(sql_int(id)), LIFECYCLE_EVENT),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO inbox (tenant, owner, seq, message_id, event_id, kind)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    owner.tenant,
                    owner.user,
                    sql_int(seq),
                    message_id,
                    event_id,
                    kind
                ])
            })
            .map_err(backend)?;
        self.took(owner.clone(), seq);
        Ok(())
    }

    /// Commits an event of `conversation` by `actor` and enters it in the stream of each of
    /// `audience` (sorted by user id).
    pub(super) fn fan_out(
        &mut self,
        tenant: &str,
        conversation: &str,
        actor: &str,
        kind: EventKind,
        audience: &[String],
    ) -> Result<Fanout, StoreError> {
        let (name, columns) = EventColumns::of(&kind);
        self.conn
            .prepare_cached(
                "INSERT INTO events (tenant, conversation, actor, ts, kind, users, user, role,
                     title, message_id, count, emoji)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    tenant,
                    conversation,
                    actor,
                    self.ts,
                    name,
                    columns.users,
                    columns.user,
                    columns.role,
                    columns.title,
                    columns.message_id,
                    columns.count,
                    columns.emoji
                ])
            })
            .map_err(backend)?;
        let event_id = self.conn.last_insert_rowid() as u64;
        let entry = if kind.is_lifecycle() {
            Entry::LifecycleEvent(event_id)
        } else {
            Entry::Event(event_id)
        };
        let mut seqs = Vec::with_capacity(audience.len());
        for user in audience {
            let seq = self.enter(tenant, user, entry)?;
            seqs.push(StreamSeq {
                user: user.clone(),
                seq,
            });
        }
        let event = Event {
            event_id,
            tenant: tenant.to_owned(),
            conversation_id: conversation.to_owned(),
            actor: actor.to_owned(),
            ts: self.ts,
            kind,
        };
        self.record(tenant, |payloads| payloads.of_event(&event))?;
        Ok(Fanout { event, seqs })
    }
}
