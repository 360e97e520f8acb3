//! The writer thread: the only writer of the lsm database, and the jobs it commits together.
//!
//! As the SQLite backend's writer: it takes a job, opens a transaction, does the job, and
//! while the transaction holds fewer than [`MAX_GROUP_COMMIT`] stream rows takes the next
//! waiting job into the same transaction (group commit); one journal write and one fsync
//! (`lsm_synchronous = "full"`) commit them all, and each job answers once it is durable. A
//! job refused by a rule of conversations is answered with its refusal and wrote nothing
//! (every rule is checked before the first write); any other error drops the whole
//! transaction and fails every job in it. Retention, erasure, consumers and restrictions run
//! in transactions of their own.
//!
//! [`WriteTx`] is what a job writes through: the open transaction (an [`Overlay`]: the
//! writes held in memory over a snapshot, read back by the jobs, committed as one batch), the
//! seqs of recent users and the members of recent groups (so a message need not read them),
//! the ids of messages, events and outbox events, stream entries, events fanned out to their
//! audience, and conversation states with the indexes kept from them.

use std::collections::HashMap;
use std::sync::{Arc, mpsc};

use fjall::{Database, PersistMode};

use super::outbox::{self, OutboxIds};
use super::overlay::Overlay;
pub(super) use super::tables::Entry;
use super::tables::{
    self, EventRow, META_LAST_EVENT_ID, META_LAST_MESSAGE_ID, MemberEntry, Source, StateRow, Table,
    Tables, key,
};
use super::{append, erase, groups, lifecycle, queries, reads, restrictions, retention};
use crate::jobs::{Done, group_done, refusal_answers};
pub(super) use crate::jobs::{Job, Reply};
use crate::sql::EventColumns;
use crate::{OutboxSettings, StoreError};
use peroxo_protocol::domain::{UserKey, now_ms};
use peroxo_protocol::event::{Event, EventKind, Fanout, StreamSeq};
use peroxo_protocol::outbox::{ConsumerLease, NewOutboxEvent, Payloads};
use peroxo_protocol::restriction::Restriction;

/// The most stream rows the writer commits in one transaction (a direct message counts as
/// one, a group message as one per member, an event as one per stream it enters). A single
/// job is never split.
const MAX_GROUP_COMMIT: usize = 8_192;
/// Users whose current seq the writer remembers; past this, it forgets them all.
const SEQ_CACHE_USERS: usize = 200_000;
/// Group members the writer remembers, over all groups; past this, it forgets every group.
const KNOWN_MEMBERS: usize = 500_000;

/// What a job that runs alone did, to answer once it commits.
enum DoneAlone {
    Count(u64),
    Lease(Option<ConsumerLease>),
    Advanced(bool),
    Restriction(Restriction),
}

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
        _ => Err(StoreError::Backend(
            "a job of its own was grouped with other writes".to_owned(),
        )),
    }
}

/// Does a `job` that runs alone inside `w`.
fn run_alone(job: &Job, w: &mut WriteTx<'_>) -> Result<DoneAlone, StoreError> {
    Ok(match job {
        Job::Prune(batch, _) => DoneAlone::Count(retention::prune(w, batch)?),
        Job::EraseTexts(user, limit, _) => DoneAlone::Count(erase::texts(w, user, *limit)?),
        Job::EraseReadState(user, limit, _) => {
            DoneAlone::Count(erase::read_state(w, user, *limit)?)
        }
        Job::PruneEvents(batch, _) => DoneAlone::Count(outbox::prune(w, batch)?),
        Job::EraseEventTexts(user, limit, _) => {
            DoneAlone::Count(outbox::erase_texts(w, user, *limit)?)
        }
        Job::ClaimConsumer(claim, _) => DoneAlone::Lease(outbox::claim(w, claim)?),
        Job::AdvanceConsumer(advance, _) => DoneAlone::Advanced(outbox::advance(w, advance)?),
        Job::SetRestriction(user, change, _) => {
            DoneAlone::Restriction(restrictions::set(w, user, change)?)
        }
        _ => {
            return Err(StoreError::Backend(
                "a grouped job was run alone".to_owned(),
            ));
        }
    })
}

/// Answers a `job` that ran alone with what it did, now committed, or with its error.
fn answer_alone(job: Job, done: Result<DoneAlone, StoreError>) {
    let done = match done {
        Ok(done) => done,
        Err(e) => return job.fail(e),
    };
    match (job, done) {
        (
            Job::Prune(_, reply)
            | Job::EraseTexts(_, _, reply)
            | Job::EraseReadState(_, _, reply)
            | Job::PruneEvents(_, reply)
            | Job::EraseEventTexts(_, _, reply),
            DoneAlone::Count(n),
        ) => {
            let _ = reply.send(Ok(n));
        }
        (Job::ClaimConsumer(_, reply), DoneAlone::Lease(lease)) => {
            let _ = reply.send(Ok(lease));
        }
        (Job::AdvanceConsumer(_, reply), DoneAlone::Advanced(held)) => {
            let _ = reply.send(Ok(held));
        }
        (Job::SetRestriction(_, _, reply), DoneAlone::Restriction(restriction)) => {
            let _ = reply.send(Ok(restriction));
        }
        (job, _) => job.fail(StoreError::Backend(
            "the writer mixed up the answers of its jobs".to_owned(),
        )),
    }
}

/// The members of the groups the writer saw lately, so that a group message need not read
/// them: every change of membership is a job of the writer, which forgets the group's entry
/// in that job.
#[derive(Debug, Default)]
pub(super) struct KnownGroups {
    /// By (tenant, group): the members' user ids, sorted.
    groups: HashMap<(String, String), Arc<[String]>>,
    /// The members held, over all groups.
    members: usize,
}

impl KnownGroups {
    fn put(&mut self, tenant: &str, group: &str, members: Arc<[String]>) {
        if self.members + members.len() > KNOWN_MEMBERS {
            self.clear();
        }
        self.members += members.len();
        if let Some(old) = self
            .groups
            .insert((tenant.to_owned(), group.to_owned()), members)
        {
            self.members -= old.len();
        }
    }

    fn clear(&mut self) {
        self.groups.clear();
        self.members = 0;
    }
}

/// The ids the writer gives out: the last message and event ids, as committed (or being
/// committed by the open transaction).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LastIds {
    pub(super) message: u64,
    pub(super) event: u64,
}

impl LastIds {
    pub(super) fn load(db: &Database, t: &Tables) -> Result<Self, StoreError> {
        let r = db.snapshot();
        Ok(Self {
            message: tables::get_u64(&r, &t.meta, META_LAST_MESSAGE_ID)?.unwrap_or(0),
            event: tables::get_u64(&r, &t.meta, META_LAST_EVENT_ID)?.unwrap_or(0),
        })
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) db: Database,
    pub(super) tables: Arc<Tables>,
    /// How a commit is made durable (`None`: left to the engine).
    pub(super) durability: Option<PersistMode>,
    /// The current seq of recently seen users. Cleared when a transaction fails.
    pub(super) seqs: HashMap<UserKey, u64>,
    pub(super) groups: KnownGroups,
    pub(super) ids: LastIds,
    pub(super) outbox_ids: OutboxIds,
    /// A job taken while a group was open that must run alone: it runs next.
    pub(super) deferred: Option<Sent>,
}

/// A job as a store sends it, with how the store writes outbox events (stores over one
/// database share its writer, and each may have its own `[events]`).
pub(super) type Sent = (OutboxSettings, Job);

impl Writer {
    /// Takes every waiting job, commits them together, answers each.
    pub(super) fn run(mut self, jobs: mpsc::Receiver<Sent>) {
        loop {
            let (outbox, first) = match self.deferred.take() {
                Some(job) => job,
                None => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            if self.seqs.len() > SEQ_CACHE_USERS {
                self.seqs.clear();
            }
            if first.runs_alone() {
                let done = self.commit_alone(&first, outbox);
                if done.is_err() {
                    self.forget();
                }
                answer_alone(first, done);
                continue;
            }
            let mut group = vec![first];
            match self.commit_group(&mut group, outbox, &jobs) {
                Ok(done) => {
                    for (job, done) in group.into_iter().zip(done) {
                        job.answer(done);
                    }
                }
                Err(e) => {
                    self.forget();
                    tracing::error!(error = %e, "lsm write transaction failed");
                    let error = e.to_string();
                    for job in group {
                        job.fail(StoreError::Backend(error.clone()));
                    }
                }
            }
        }
    }

    /// After a failed transaction: what the writer remembered may be ahead of the database.
    fn forget(&mut self) {
        self.seqs.clear();
        self.groups.clear();
        self.outbox_ids.clear();
        match LastIds::load(&self.db, &self.tables) {
            Ok(ids) => self.ids = ids,
            Err(e) => tracing::error!(error = %e, "lsm: cannot read the last ids back"),
        }
    }

    fn write_tx(&mut self, outbox: OutboxSettings) -> WriteTx<'_> {
        WriteTx {
            tx: Overlay::new(&self.db, self.durability),
            t: &self.tables,
            seqs: &mut self.seqs,
            groups: &mut self.groups,
            ids: &mut self.ids,
            ids_moved: false,
            ts: now_ms(),
            outbox,
            outbox_ids: &mut self.outbox_ids,
        }
    }

    fn commit_alone(&mut self, job: &Job, outbox: OutboxSettings) -> Result<DoneAlone, StoreError> {
        let mut w = self.write_tx(outbox);
        let done = run_alone(job, &mut w)?;
        w.commit()?;
        Ok(done)
    }

    /// Does `group`'s first job, and more waiting jobs (added to `group`) while the
    /// transaction has room, then commits.
    fn commit_group(
        &mut self,
        group: &mut Vec<Job>,
        outbox: OutboxSettings,
        jobs: &mpsc::Receiver<Sent>,
    ) -> Result<Vec<Done>, StoreError> {
        let mut deferred = None;
        let mut w = self.write_tx(outbox);
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
                Ok(sent) if sent.1.runs_alone() => {
                    deferred = Some(sent);
                    break;
                }
                Ok((outbox, job)) => {
                    w.outbox = outbox;
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        w.commit()?;
        self.deferred = deferred;
        Ok(done)
    }
}

/// The open transaction of the writer, as its jobs write through it.
pub(super) struct WriteTx<'a> {
    /// The transaction: reads through it see its own writes.
    pub(super) tx: Overlay,
    pub(super) t: &'a Tables,
    seqs: &'a mut HashMap<UserKey, u64>,
    groups: &'a mut KnownGroups,
    ids: &'a mut LastIds,
    ids_moved: bool,
    /// The commit time of everything in the transaction.
    pub(super) ts: i64,
    outbox: OutboxSettings,
    outbox_ids: &'a mut OutboxIds,
}

impl WriteTx<'_> {
    /// Writes back the counters the transaction moved, then commits.
    fn commit(mut self) -> Result<(), StoreError> {
        if self.ids_moved {
            let (message, event) = (self.ids.message, self.ids.event);
            self.put_raw(
                &self.t.meta,
                META_LAST_MESSAGE_ID.to_vec(),
                tables::encode_u64(message).to_vec(),
            );
            self.put_raw(
                &self.t.meta,
                META_LAST_EVENT_ID.to_vec(),
                tables::encode_u64(event).to_vec(),
            );
        }
        self.outbox_ids.store(&mut self.tx, self.t)?;
        self.tx.commit()
    }

    /// Reads the row at `key` of `table`, as the transaction sees it.
    pub(super) fn get<T: serde::de::DeserializeOwned>(
        &self,
        table: &Table,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        tables::get(&self.tx, table, key)
    }

    /// Writes `value` at `key` of `table`.
    pub(super) fn put<T: serde::Serialize>(
        &mut self,
        table: &Table,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = tables::encode(value)?;
        self.tx.insert(table, key, bytes);
        Ok(())
    }

    /// Writes the bytes `value` at `key` of `table`.
    pub(super) fn put_raw(&mut self, table: &Table, key: Vec<u8>, value: Vec<u8>) {
        self.tx.insert(table, key, value);
    }

    /// Deletes `key` of `table`.
    pub(super) fn delete(&mut self, table: &Table, key: Vec<u8>) {
        self.tx.remove(table, key);
    }

    /// The next message id.
    pub(super) fn next_message_id(&mut self) -> u64 {
        self.ids.message += 1;
        self.ids_moved = true;
        self.ids.message
    }

    /// The current seq of `user`: remembered, or read inside the transaction.
    pub(super) fn current_seq(&self, user: &UserKey) -> Result<u64, StoreError> {
        match self.seqs.get(user) {
            Some(seq) => Ok(*seq),
            None => queries::last_seq(&self.tx, self.t, user),
        }
    }

    /// Remembers that `user` took `seq` (only once its stream entry is written: a refused or
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
        let user = UserKey::new(tenant, owner);
        let seq = self.current_seq(&user)? + 1;
        self.enter_at(&user, seq, entry)?;
        Ok(seq)
    }

    /// Adds `entry` to `owner`'s stream at `seq`, which must be its next; a group message's
    /// entry is also found by (message, member).
    pub(super) fn enter_at(
        &mut self,
        owner: &UserKey,
        seq: u64,
        entry: Entry,
    ) -> Result<(), StoreError> {
        self.put(
            &self.t.inbox,
            key::inbox(&owner.tenant, &owner.user, seq),
            &entry,
        )?;
        if let Entry::GroupMessage(id) = entry {
            self.put_raw(
                &self.t.group_entries,
                key::group_entry(&owner.tenant, id, &owner.user),
                tables::encode_u64(seq).to_vec(),
            );
        }
        self.took(owner.clone(), seq);
        Ok(())
    }

    /// Commits an event of `conversation` by `actor` and enters it in the stream of each of
    /// `audience` (sorted by user id); `client_msg_id` makes an edit idempotent.
    pub(super) fn fan_out_with(
        &mut self,
        tenant: &str,
        conversation: &str,
        actor: &str,
        kind: EventKind,
        audience: &[String],
        client_msg_id: Option<&str>,
    ) -> Result<Fanout, StoreError> {
        let (name, mut columns) = EventColumns::of(&kind);
        columns.text = None;
        self.ids.event += 1;
        self.ids_moved = true;
        let event_id = self.ids.event;
        let row = EventRow {
            conversation: conversation.to_owned(),
            actor: actor.to_owned(),
            ts: self.ts,
            kind: name.to_owned(),
            columns,
            client_msg_id: client_msg_id.map(str::to_owned),
        };
        self.put(&self.t.events, key::event(tenant, event_id), &row)?;
        if let Some(client_msg_id) = client_msg_id {
            self.put_raw(
                &self.t.event_dedupe,
                tables::key::dedupe(tenant, actor, client_msg_id),
                tables::encode_u64(event_id).to_vec(),
            );
        }
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

    /// [`WriteTx::fan_out_with`] without a `client_msg_id`.
    pub(super) fn fan_out(
        &mut self,
        tenant: &str,
        conversation: &str,
        actor: &str,
        kind: EventKind,
        audience: &[String],
    ) -> Result<Fanout, StoreError> {
        self.fan_out_with(tenant, conversation, actor, kind, audience, None)
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
                .write(&mut self.tx, self.t, tenant, self.ts, &event)
                .map(drop),
            None => Ok(()),
        }
    }

    /// Forgets the writer's remembered outbox counter of `tenant`: the job writes the row
    /// itself (its `pruned_until`).
    pub(super) fn forget_outbox_counter(&mut self, tenant: &str) {
        self.outbox_ids.forget(tenant);
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
            .map(|event| {
                self.outbox_ids
                    .write(&mut self.tx, self.t, tenant, self.ts, event)
            })
            .collect()
    }

    /// The members of `group` (user ids, sorted): remembered, or read inside the transaction.
    /// `None` when the tenant has no such group.
    pub(super) fn group_members(
        &mut self,
        tenant: &str,
        group: &str,
    ) -> Result<Option<Arc<[String]>>, StoreError> {
        if let Some(members) = self
            .groups
            .groups
            .get(&(tenant.to_owned(), group.to_owned()))
        {
            return Ok(Some(Arc::clone(members)));
        }
        if !tables::contains(&self.tx, &self.t.groups, &key::group(tenant, group))? {
            return Ok(None);
        }
        let members: Arc<[String]> = member_rows(&self.tx, self.t, tenant, group)?
            .into_iter()
            .map(|(user, _)| user)
            .collect();
        self.groups.put(tenant, group, Arc::clone(&members));
        Ok(Some(members))
    }

    /// Forgets the remembered members of `group`: the job is changing them.
    pub(super) fn forget_group(&mut self, tenant: &str, group: &str) {
        if let Some(old) = self
            .groups
            .groups
            .remove(&(tenant.to_owned(), group.to_owned()))
        {
            self.groups.members -= old.len();
        }
    }

    /// `user`'s state of `conversation`, active or not.
    pub(super) fn state(
        &self,
        user: &UserKey,
        conversation: &str,
    ) -> Result<Option<StateRow>, StoreError> {
        self.get(
            &self.t.states,
            &key::state(&user.tenant, &user.user, conversation),
        )
    }

    /// Writes `user`'s state of `conversation` (`old`: as it was, `None` when new), and keeps
    /// `list` and `members` in step with it. A change of membership must also
    /// [`forget_group`](WriteTx::forget_group).
    pub(super) fn put_state(
        &mut self,
        user: &UserKey,
        conversation: &str,
        old: Option<&StateRow>,
        new: &StateRow,
    ) -> Result<(), StoreError> {
        let (tenant, who) = (&user.tenant, &user.user);
        let listed = |s: &StateRow| s.active.then_some(s.activity_seq);
        let old_listed = old.and_then(listed);
        let new_listed = listed(new);
        if old_listed != new_listed {
            if let Some(seq) = old_listed {
                self.delete(&self.t.list, key::list(tenant, who, seq, conversation));
            }
            if let Some(seq) = new_listed {
                self.put_raw(
                    &self.t.list,
                    key::list(tenant, who, seq, conversation),
                    Vec::new(),
                );
            }
        }
        let member = |s: &StateRow| match (&s.role, s.active) {
            (Some(role), true) => Some(MemberEntry {
                role: role.clone(),
                joined: s.joined,
                joined_ts: s.joined_ts,
            }),
            _ => None,
        };
        let old_member = old.and_then(member);
        let new_member = member(new);
        if old_member != new_member {
            match &new_member {
                Some(entry) => self.put(
                    &self.t.members,
                    key::member(tenant, conversation, who),
                    entry,
                )?,
                None => self.delete(&self.t.members, key::member(tenant, conversation, who)),
            }
        }
        if old != Some(new) {
            self.put(&self.t.states, key::state(tenant, who, conversation), new)?;
        }
        Ok(())
    }
}

/// The current members of `group`, sorted by user id, with what `members` holds of each.
pub(super) fn member_rows(
    r: &impl Source,
    t: &Tables,
    tenant: &str,
    group: &str,
) -> Result<Vec<(String, MemberEntry)>, StoreError> {
    let prefix = key::group(tenant, group);
    tables::scan(r, &t.members, &prefix, false, usize::MAX)?
        .into_iter()
        .map(|(rest, value)| {
            let user = super::keys::KeyReader::new(&rest).str()?;
            Ok((user, tables::decode(&value)?))
        })
        .collect()
}
