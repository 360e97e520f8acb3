//! One user's data, for the operator: [`export`] writes it as JSON lines (`peroxo user
//! export`), [`erase`] erases it (`peroxo user erase`).
//!
//! Both work on the database directly, through the backend's [`MessageStore`], not through a
//! running service: an operator command then needs no reachable service and adds no call to
//! the service's API, which has no authentication of its own and must not offer erasure to
//! whoever reaches it. SQLite waits for the service's writer (WAL, busy timeout), PostgreSQL
//! serializes with it through the user's counter lock.
//!
//! Erasure is resumable without a record of its own: each batch picks what is not erased yet
//! (a text not empty, an outbox event with a text preview, a read marker set), so a run stopped half-way (a crash, `max_batches`)
//! is carried on by the next, and a run after a complete one finds nothing to do.

use std::future::Future;
use std::io::Write;

use crate::{MAX_SYNC_LIMIT, MessageStore, StoreError, SyncQuery, SyncScope};
use peroxo_protocol::conversation::ConversationsQuery;
use peroxo_protocol::domain::{UserKey, now_ms};
use peroxo_protocol::{ConversationView, EventView, ExportLine, MessageView};

/// Conversations read per page of an export.
const CONVERSATIONS_PAGE: u32 = 200;

/// Why an export or an erasure failed.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    /// The tenant has no such user: its stream is empty.
    #[error("no user {user:?} in tenant {tenant:?} (it has never sent or received anything)")]
    UnknownUser { tenant: String, user: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportReport {
    pub conversations: u64,
    pub messages: u64,
    pub events: u64,
}

/// What an erasure did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EraseReport {
    /// Messages whose text this run erased.
    pub texts: u64,
    /// Conversations whose read state this run forgot.
    pub read_states: u64,
    /// Outbox events of the user's messages whose text preview this run removed.
    pub event_texts: u64,
    /// Transactions this run took.
    pub batches: u64,
    /// False when `max_batches` stopped the run before the end: run it again.
    pub complete: bool,
}

/// Fails with [`UserDataError::UnknownUser`] unless `user` has a stream.
async fn known<S: MessageStore>(store: &S, user: &UserKey) -> Result<u64, UserDataError> {
    match store.last_seq(user.clone()).await? {
        0 => Err(UserDataError::UnknownUser {
            tenant: user.tenant.clone(),
            user: user.user.clone(),
        }),
        last_seq => Ok(last_seq),
    }
}

/// Writes `user`'s data to `out`, one JSON object per line (see
/// [`ExportLine`]): the user, every conversation with the user's read state, then every
/// message and event of the user's stream in seq order.
pub async fn export<S: MessageStore>(
    store: &S,
    user: &UserKey,
    out: &mut (impl Write + Send),
) -> Result<ExportReport, UserDataError> {
    let last_seq = known(store, user).await?;
    let mut report = ExportReport::default();
    let head = ExportLine::User {
        tenant: &user.tenant,
        user: &user.user,
        last_seq,
        exported_ts: now_ms(),
    };
    writeln!(out, "{}", head.to_json())?;
    write_conversations(store, user, out, &mut report).await?;
    write_stream(store, user, out, &mut report).await?;
    out.flush()?;
    Ok(report)
}

/// Writes a `conversation` line for each of `user`'s conversations, newest activity first.
async fn write_conversations<S: MessageStore>(
    store: &S,
    user: &UserKey,
    out: &mut (impl Write + Send),
    report: &mut ExportReport,
) -> Result<(), UserDataError> {
    let mut before = None;
    loop {
        let page = store
            .conversations(ConversationsQuery {
                user: user.clone(),
                before,
                limit: CONVERSATIONS_PAGE,
            })
            .await?;
        for summary in &page.conversations {
            let line = ExportLine::Conversation(ConversationView::of(summary, &user.user));
            writeln!(out, "{}", line.to_json())?;
            report.conversations += 1;
        }
        before = page.conversations.last().map(|c| c.activity_seq);
        if !page.has_more || before.is_none() {
            break;
        }
    }
    Ok(())
}

/// Writes a `message` or `event` line for each entry of `user`'s stream, by seq.
async fn write_stream<S: MessageStore>(
    store: &S,
    user: &UserKey,
    out: &mut (impl Write + Send),
    report: &mut ExportReport,
) -> Result<(), UserDataError> {
    let mut after_seq = 0;
    loop {
        let page = store
            .sync(SyncQuery {
                user: user.clone(),
                after_seq,
                limit: MAX_SYNC_LIMIT,
                scope: SyncScope::Everything,
            })
            .await?;
        let mut lines: Vec<(u64, String)> = Vec::new();
        for message in &page.messages {
            let view = MessageView::of(message, &user.user);
            lines.push((view.seq, ExportLine::Message(view).to_json()));
            report.messages += 1;
        }
        for entry in &page.events {
            let view = EventView::of(&entry.event, entry.seq);
            lines.push((entry.seq, ExportLine::Event(view).to_json()));
            report.events += 1;
        }
        lines.sort_unstable_by_key(|(seq, _)| *seq);
        for (_, line) in &lines {
            writeln!(out, "{line}")?;
        }
        match lines.last() {
            Some((seq, _)) if page.has_more => after_seq = *seq,
            _ => break,
        }
    }
    Ok(())
}

/// Erases `user`'s data in batches of `batch`, each its own transaction: the text of every
/// message the user sent (tombstones: empty text, shown as `erased`), then the text previews
/// of the outbox events of messages the user sent or edited, then the user's read state.
/// `max_batches` stops the run after that many transactions (the rest is left for the
/// next run).
pub async fn erase<S: MessageStore>(
    store: &S,
    user: &UserKey,
    batch: u32,
    max_batches: Option<u64>,
) -> Result<EraseReport, UserDataError> {
    known(store, user).await?;
    let mut report = EraseReport::default();
    let (texts, finished) = in_batches(batch, max_batches, &mut report.batches, || {
        store.erase_texts(user.clone(), batch)
    })
    .await?;
    report.texts = texts;
    if !finished {
        return Ok(report);
    }
    let (event_texts, finished) = in_batches(batch, max_batches, &mut report.batches, || {
        store.erase_event_texts(user.clone(), batch)
    })
    .await?;
    report.event_texts = event_texts;
    if !finished {
        return Ok(report);
    }
    let (read_states, finished) = in_batches(batch, max_batches, &mut report.batches, || {
        store.erase_read_state(user.clone(), batch)
    })
    .await?;
    report.read_states = read_states;
    report.complete = finished;
    Ok(report)
}

/// Runs `step` (one batch) until it does less than `batch` or `batches` reaches
/// `max_batches`; returns what the steps did and whether they were done.
async fn in_batches<F, Step>(
    batch: u32,
    max_batches: Option<u64>,
    batches: &mut u64,
    mut step: F,
) -> Result<(u64, bool), StoreError>
where
    F: FnMut() -> Step,
    Step: Future<Output = Result<u64, StoreError>>,
{
    let mut done = 0;
    loop {
        if max_batches.is_some_and(|max| *batches >= max) {
            return Ok((done, false));
        }
        let did = step().await?;
        done += did;
        *batches += 1;
        if did < u64::from(batch) {
            return Ok((done, true));
        }
    }
}
