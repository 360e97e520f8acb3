//! The writes the embedded backends' writer threads take, and how each is answered: one
//! [`Job`] per write request, done in a transaction shared with other jobs or in one of its
//! own ([`Job::runs_alone`]), and answered once that transaction has committed. The SQLite and
//! lsm writers each say how a job is done in their database.

use tokio::sync::oneshot;

use crate::{PruneBatch, StoreError};
use peroxo_protocol::conversation::{
    CreateGroup, GroupChange, GroupOutcome, ReadMark, ReadOutcome,
};
use peroxo_protocol::domain::{AppendOutcome, NewMessage, UserKey};
use peroxo_protocol::lifecycle::{MessageChange, MessageOutcome};
use peroxo_protocol::outbox::{ConsumerClaim, ConsumerLease, NewOutboxEvent};
use peroxo_protocol::restriction::{Restriction, RestrictionChange};

/// A consumer's cursor to move, by its holder.
#[derive(Debug, Clone)]
pub(crate) struct Advance {
    pub(crate) tenant: String,
    pub(crate) consumer: String,
    pub(crate) holder: String,
    pub(crate) cursor: u64,
}

/// Where a job's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write for the writer thread.
pub(crate) enum Job {
    Append(Vec<NewMessage>, Reply<Vec<AppendOutcome>>),
    CreateGroup(CreateGroup, Reply<GroupOutcome>),
    ChangeGroup(GroupChange, Reply<GroupOutcome>),
    MarkRead(ReadMark, Reply<ReadOutcome>),
    ChangeMessage(MessageChange, Reply<MessageOutcome>),
    /// Retention: runs alone, in its own transaction.
    Prune(PruneBatch, Reply<u64>),
    /// Erasing a user's texts, then read state (`peroxo user erase`): each runs alone.
    EraseTexts(UserKey, u32, Reply<u64>),
    EraseReadState(UserKey, u32, Reply<u64>),
    /// Retention of the outbox: runs alone.
    PruneEvents(PruneBatch, Reply<u64>),
    /// Erasing a user's texts from the outbox: runs alone.
    EraseEventTexts(UserKey, u32, Reply<u64>),
    /// Events the caller decides, for the outbox.
    RecordEvents(String, Vec<NewOutboxEvent>, Reply<Vec<u64>>),
    /// A consumer's lease and cursor: each runs alone.
    ClaimConsumer(ConsumerClaim, Reply<Option<ConsumerLease>>),
    AdvanceConsumer(Advance, Reply<bool>),
    /// A change of a user's restriction: runs alone.
    SetRestriction(UserKey, RestrictionChange, Reply<Restriction>),
}

/// What a job did in its transaction, to answer once it commits.
pub(crate) enum Done {
    Appended(Vec<AppendOutcome>),
    Group(Result<GroupOutcome, StoreError>),
    /// Boxed: an outcome with its two events is large beside the others.
    Read(Box<Result<ReadOutcome, StoreError>>),
    Message(Box<Result<MessageOutcome, StoreError>>),
    Recorded(Vec<u64>),
}

impl Job {
    /// Whether the job runs in a transaction of its own, never grouped.
    pub(crate) fn runs_alone(&self) -> bool {
        matches!(
            self,
            Job::Prune(..)
                | Job::EraseTexts(..)
                | Job::EraseReadState(..)
                | Job::PruneEvents(..)
                | Job::EraseEventTexts(..)
                | Job::ClaimConsumer(..)
                | Job::AdvanceConsumer(..)
                | Job::SetRestriction(..)
        )
    }

    /// Answers the job with what it did, now committed. (A caller that stopped waiting has
    /// no use for the answer.)
    pub(crate) fn answer(self, done: Done) {
        match (self, done) {
            (Job::Append(_, reply), Done::Appended(outcomes)) => {
                let _ = reply.send(Ok(outcomes));
            }
            (Job::CreateGroup(_, reply) | Job::ChangeGroup(_, reply), Done::Group(result)) => {
                let _ = reply.send(result);
            }
            (Job::MarkRead(_, reply), Done::Read(result)) => {
                let _ = reply.send(*result);
            }
            (Job::ChangeMessage(_, reply), Done::Message(result)) => {
                let _ = reply.send(*result);
            }
            (Job::RecordEvents(_, _, reply), Done::Recorded(ids)) => {
                let _ = reply.send(Ok(ids));
            }
            (job, _) => job.fail(StoreError::Backend(
                "the writer mixed up the answers of its jobs".to_owned(),
            )),
        }
    }

    /// Answers the job with `error` (the error that failed its transaction).
    pub(crate) fn fail(self, error: StoreError) {
        match self {
            Job::Append(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Job::CreateGroup(_, reply) | Job::ChangeGroup(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Job::MarkRead(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Job::ChangeMessage(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Job::Prune(_, reply)
            | Job::EraseTexts(_, _, reply)
            | Job::EraseReadState(_, _, reply)
            | Job::PruneEvents(_, reply)
            | Job::EraseEventTexts(_, _, reply) => {
                let _ = reply.send(Err(error));
            }
            Job::RecordEvents(_, _, reply) => {
                let _ = reply.send(Err(error));
            }
            Job::ClaimConsumer(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Job::AdvanceConsumer(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Job::SetRestriction(_, _, reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// A job's own refusal is its answer (it wrote nothing); any other error fails the whole
/// transaction.
pub(crate) fn refusal_answers<T>(
    result: Result<T, StoreError>,
) -> Result<Result<T, StoreError>, StoreError> {
    match result {
        Err(StoreError::Refused(refusal)) => Ok(Err(StoreError::Refused(refusal))),
        Err(error) => Err(error),
        Ok(done) => Ok(Ok(done)),
    }
}

/// A group job's answer and the stream rows it wrote (a refused one wrote none).
pub(crate) fn group_done(
    done: Result<(GroupOutcome, usize), StoreError>,
) -> Result<(Done, usize), StoreError> {
    Ok(match done {
        Ok((outcome, rows)) => (Done::Group(Ok(outcome)), rows.max(1)),
        Err(refusal) => (Done::Group(Err(refusal)), 1),
    })
}
