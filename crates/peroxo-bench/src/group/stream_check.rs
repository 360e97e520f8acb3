//! After a `group` run: every user's stream as storage keeps it, read back with `sync` on a
//! fresh session (sync is the source of truth), against what the run knows was committed.
//!
//! A user's stream must hold exactly: one `group_created` event for each of its groups, and
//! each acked message of each of its groups once (its own included), a group's messages with
//! rising message ids; its seqs are exactly 1 … `last_seq`. A message whose send was never
//! answered may or may not be there; a refused one must not. The live check then also holds
//! the seqs the user received live to that `last_seq`: every entry of the stream, events
//! included, must have reached the user live.

use std::collections::HashMap;
use std::sync::Arc;

use peroxo_client::{Connection, Incoming, ServerFrame};
use peroxo_protocol::{Command, CommandKind, MAX_SYNC_LIMIT};
use serde::Serialize;
use tokio::task::JoinSet;

use super::plan::Plan;
use super::setup::GROUP_CREATED;
use crate::client::{CLOSE_TIMEOUT, Endpoint};
use crate::contract::SeqAudit;
use crate::report::Tally;
use crate::traffic::ledger::Outcome;
use crate::traffic::{Plan as _, Shared, names};

/// What became of a message, as far as the stream check is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Acked: committed, so in every member's stream.
    Committed,
    /// Refused, or never sent: in nobody's stream.
    Absent,
    /// Sent and never answered: it may be in the streams or not.
    Unknown,
}

impl Fate {
    fn of(outcome: &Outcome) -> Self {
        if outcome.acks > 0 {
            Fate::Committed
        } else if outcome.error.is_some() || !outcome.sent {
            Fate::Absent
        } else {
            Fate::Unknown
        }
    }
}

/// One entry of a user's stream, as `sync` returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Message {
        /// The run's index for it (`None`: a text this run never sent).
        index: Option<u32>,
        conversation_id: String,
        message_id: Option<u64>,
    },
    Event {
        event: String,
    },
}

/// What the streams showed; every count must be zero.
#[derive(Debug, Default, Serialize)]
pub(super) struct StreamCheck {
    /// Users whose stream was read back.
    pub(super) users_read: u64,
    /// Stream entries read back.
    pub(super) entries: u64,
    /// Users whose stream could not be read, by cause.
    pub(super) unread: Tally,
    /// Seqs missing from a stream up to its `last_seq`.
    pub(super) seq_gaps: u64,
    /// Seqs listed twice in a stream.
    pub(super) seq_duplicates: u64,
    /// Acked messages missing from the stream of a member of their group.
    pub(super) missing: u64,
    /// Messages in a stream that do not belong there: not of the user's groups, refused,
    /// in the wrong conversation, or listed twice.
    pub(super) unexpected: u64,
    /// Messages of a group listed after a message with a higher id.
    pub(super) out_of_order: u64,
    /// Streams whose events are not exactly one `group_created` per group of the user.
    pub(super) wrong_events: u64,
}

impl StreamCheck {
    pub(super) fn problems(&self) -> u64 {
        self.unread.total()
            + self.seq_gaps
            + self.seq_duplicates
            + self.missing
            + self.unexpected
            + self.out_of_order
            + self.wrong_events
    }

    fn add(&mut self, other: &StreamCheck) {
        self.users_read += other.users_read;
        self.entries += other.entries;
        self.unread.merge(other.unread.clone());
        self.seq_gaps += other.seq_gaps;
        self.seq_duplicates += other.seq_duplicates;
        self.missing += other.missing;
        self.unexpected += other.unexpected;
        self.out_of_order += other.out_of_order;
        self.wrong_events += other.wrong_events;
    }
}

impl std::fmt::Display for StreamCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  streams         {} read back ({} entries), unread {}",
            self.users_read, self.entries, self.unread
        )?;
        writeln!(
            f,
            "  stream breaches missing {}, unexpected {}, out of order {}, seq gaps {}, seq duplicates {}, wrong events {}",
            self.missing,
            self.unexpected,
            self.out_of_order,
            self.seq_gaps,
            self.seq_duplicates,
            self.wrong_events
        )
    }
}

/// Reads every user's stream back, `concurrency` users at a time, and checks it. Returns the
/// check and each user's `last_seq` as storage stated it (0 where unread).
pub(super) async fn check(
    endpoint: &Arc<Endpoint>,
    shared: &Arc<Shared<Plan>>,
    concurrency: usize,
) -> (StreamCheck, Vec<u64>) {
    let expected = Arc::new(expected_streams(shared));
    let users = shared.plan.layout().users();
    let mut check = StreamCheck::default();
    let mut last_seqs = vec![0; users as usize];
    let mut tasks = JoinSet::new();
    let mut next = 0;
    loop {
        while next < users && tasks.len() < concurrency.max(1) {
            let (endpoint, shared, expected) = (
                Arc::clone(endpoint),
                Arc::clone(shared),
                Arc::clone(&expected),
            );
            let user = next;
            tasks.spawn(async move {
                let stream = read_stream(&endpoint, user).await;
                let verdict = stream.map(|(last_seq, entries)| {
                    let verdict = judge(&shared.plan, user, &expected, last_seq, &entries);
                    (last_seq, verdict)
                });
                (user, verdict)
            });
            next += 1;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        match joined {
            Ok((user, Ok((last_seq, verdict)))) => {
                last_seqs[user as usize] = last_seq;
                check.add(&verdict);
            }
            Ok((_, Err(cause))) => check.unread.add(cause, 1),
            Err(error) => check.unread.add(format!("task: {error}"), 1),
        }
    }
    (check, last_seqs)
}

/// What the streams must hold: each user's messages, by index ascending, and the fate of
/// every message of the run.
struct Expected {
    by_user: Vec<Vec<u32>>,
    fates: Vec<Fate>,
}

/// What every user's stream must hold, from the ledger.
fn expected_streams(shared: &Shared<Plan>) -> Expected {
    let plan = &shared.plan;
    let layout = plan.layout();
    let fates: Vec<Fate> = (0..plan.timeline().len())
        .map(|i| Fate::of(&shared.ledger.outcome(i)))
        .collect();
    let mut by_user = vec![Vec::new(); layout.users() as usize];
    for (i, fate) in (0..).zip(&fates) {
        if *fate == Fate::Committed {
            for user in layout.members_of(plan.group(i)) {
                by_user[user as usize].push(i);
            }
        }
    }
    Expected { by_user, fates }
}

/// Reads user `user`'s whole stream on a fresh session: its `last_seq` and its entries by seq.
/// Fails with a short cause.
async fn read_stream(endpoint: &Endpoint, user: u32) -> Result<(u64, Vec<(u64, Entry)>), String> {
    let mut connection = endpoint
        .open_session(&names::user_name(user), user as usize)
        .await
        .map_err(|error| format!("open: {}", error.label()))?;
    let mut entries = Vec::new();
    let mut after_seq = 0;
    let last_seq = loop {
        let sync = Command {
            req_id: None,
            kind: CommandKind::Sync {
                after_seq,
                limit: MAX_SYNC_LIMIT,
            },
        };
        connection
            .send(&sync)
            .await
            .map_err(|e| format!("sync: {e}"))?;
        let (page, last_seq, has_more) = sync_page(&mut connection).await?;
        let Some(&(highest, _)) = page.last() else {
            break last_seq;
        };
        after_seq = highest;
        entries.extend(page);
        if !has_more {
            break last_seq;
        }
    };
    connection.close(CLOSE_TIMEOUT).await;
    Ok((last_seq, entries))
}

/// Waits for the answer to a `sync`: its entries by seq, `last_seq` and `has_more`.
async fn sync_page(connection: &mut Connection) -> Result<(Vec<(u64, Entry)>, u64, bool), String> {
    loop {
        match connection.recv().await.map_err(|e| format!("sync: {e}"))? {
            Incoming::Frame(ServerFrame::Sync {
                messages,
                events,
                last_seq,
                has_more,
                ..
            }) => {
                let mut page: Vec<(u64, Entry)> = messages
                    .into_iter()
                    .map(|m| {
                        let entry = Entry::Message {
                            index: names::index_of_text(&m.text),
                            message_id: m.message_id.parse().ok(),
                            conversation_id: m.conversation_id,
                        };
                        (m.seq, entry)
                    })
                    .chain(events.into_iter().flatten().map(|e| {
                        let event = e.event.into_owned();
                        (e.seq, Entry::Event { event })
                    }))
                    .collect();
                page.sort_by_key(|(seq, _)| *seq);
                return Ok((page, last_seq, has_more));
            }
            Incoming::Frame(ServerFrame::Error { code, message, .. }) => {
                return Err(format!("sync refused: {} {message}", code.as_str()));
            }
            Incoming::Undecodable { .. } => return Err("sync: undecodable frame".to_owned()),
            // Nothing else is due on a fresh session after the run; anything live is skipped.
            Incoming::Frame(_) => {}
        }
    }
}

/// Checks user `user`'s stream (`entries` ascending by seq) against what it must hold.
fn judge(
    plan: &Plan,
    user: u32,
    expected: &Expected,
    last_seq: u64,
    entries: &[(u64, Entry)],
) -> StreamCheck {
    let seqs = SeqAudit::of_sorted(entries.iter().map(|(seq, _)| *seq), last_seq);
    let mut check = StreamCheck {
        users_read: 1,
        entries: entries.len() as u64,
        seq_gaps: seqs.gaps,
        seq_duplicates: seqs.duplicates,
        ..StreamCheck::default()
    };
    let mut found = Vec::with_capacity(entries.len());
    let mut last_in: HashMap<&str, u64> = HashMap::new();
    let mut created = 0;
    for (_, entry) in entries {
        match entry {
            Entry::Event { event } if event == GROUP_CREATED => created += 1,
            Entry::Event { .. } => check.wrong_events += 1,
            Entry::Message {
                index,
                conversation_id,
                message_id,
            } => {
                let in_place = index.filter(|i| {
                    (*i as usize) < expected.fates.len()
                        && plan.id(plan.group(*i)) == conversation_id
                });
                let Some(i) = in_place else {
                    check.unexpected += 1;
                    continue;
                };
                found.push(i);
                let id = message_id.unwrap_or(0);
                let last = last_in.entry(conversation_id).or_insert(0);
                if id <= *last {
                    check.out_of_order += 1;
                }
                *last = (*last).max(id);
            }
        }
    }
    if created != plan.layout().groups_of(user).len() {
        check.wrong_events += 1;
    }
    found.sort_unstable();
    let unknown = |i: u32| expected.fates[i as usize] == Fate::Unknown;
    let (missing, unexpected) = compare(&expected.by_user[user as usize], &found, unknown);
    check.missing += missing;
    check.unexpected += unexpected;
    check
}

/// Compares the messages a stream must hold with those it holds (both ascending): how many
/// are missing, and how many are there that should not be (repeats included). `unknown`
/// messages may be there or not.
fn compare(expected: &[u32], found: &[u32], unknown: impl Fn(u32) -> bool) -> (u64, u64) {
    let (mut missing, mut unexpected) = (0, 0);
    let (mut e, mut f) = (0, 0);
    let mut previous = None;
    while e < expected.len() || f < found.len() {
        match (expected.get(e), found.get(f)) {
            (Some(want), Some(have)) if want == have => {
                previous = Some(*have);
                e += 1;
                f += 1;
            }
            (Some(want), Some(have)) if want < have => {
                missing += 1;
                e += 1;
            }
            (Some(_), None) => {
                missing += 1;
                e += 1;
            }
            (_, Some(have)) => {
                let repeat = previous == Some(*have);
                unexpected += u64::from(repeat || !unknown(*have));
                previous = Some(*have);
                f += 1;
            }
            (None, None) => break,
        }
    }
    (missing, unexpected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_holding_exactly_what_was_committed_passes() {
        assert_eq!(compare(&[1, 4, 9], &[1, 4, 9], |_| false), (0, 0));
        assert_eq!(compare(&[], &[], |_| false), (0, 0));
    }

    #[test]
    fn missing_extra_and_repeated_messages_are_counted() {
        assert_eq!(compare(&[1, 4, 9], &[1, 9], |_| false), (1, 0));
        assert_eq!(compare(&[1, 4], &[1, 2, 4], |_| false), (0, 1));
        assert_eq!(compare(&[1, 4], &[1, 4, 4], |_| false), (0, 1));
        assert_eq!(compare(&[4], &[], |_| false), (1, 0));
    }

    /// Four users in two groups of two; four messages, all committed, 0 and 2 to group 0.
    fn fixture() -> (Plan, Expected) {
        let layout = super::super::plan::Layout::new(4, 2, 2, 5).unwrap();
        let timeline = crate::traffic::Timeline::new(
            4,
            std::time::Duration::ZERO,
            std::time::Duration::from_secs(1),
        )
        .unwrap();
        let plan = Plan::new(layout, timeline, vec!["g~0".to_owned(), "g~1".to_owned()]);
        let mut by_user = vec![Vec::new(); 4];
        for i in 0..4 {
            for user in plan.layout().members_of(plan.group(i)) {
                by_user[user as usize].push(i);
            }
        }
        let fates = vec![Fate::Committed; 4];
        (plan, Expected { by_user, fates })
    }

    fn message(i: u32, group: &str, id: u64) -> Entry {
        Entry::Message {
            index: Some(i),
            conversation_id: group.to_owned(),
            message_id: Some(id),
        }
    }

    fn created() -> Entry {
        Entry::Event {
            event: GROUP_CREATED.to_owned(),
        }
    }

    #[test]
    fn a_member_s_stream_is_its_group_s_creation_then_its_messages() {
        let (plan, expected) = fixture();
        let user = plan.layout().member(0, 1);
        let good = [
            (1, created()),
            (2, message(0, "g~0", 10)),
            (3, message(2, "g~0", 12)),
        ];
        let check = judge(&plan, user, &expected, 3, &good);
        assert_eq!(check.problems(), 0, "{check:?}");
        assert_eq!(check.entries, 3);

        let late = judge(&plan, user, &expected, 4, &good);
        assert_eq!(
            late.seq_gaps, 1,
            "last_seq 4 names an entry that is not there"
        );

        let swapped = [
            (1, created()),
            (2, message(2, "g~0", 12)),
            (3, message(0, "g~0", 10)),
        ];
        assert_eq!(judge(&plan, user, &expected, 3, &swapped).out_of_order, 1);

        let astray = [
            (1, created()),
            (2, message(0, "g~1", 10)),
            (3, message(2, "g~0", 12)),
        ];
        let check = judge(&plan, user, &expected, 3, &astray);
        assert_eq!((check.unexpected, check.missing), (1, 1));

        let uncreated = [(1, message(0, "g~0", 10)), (2, message(2, "g~0", 12))];
        assert_eq!(judge(&plan, user, &expected, 2, &uncreated).wrong_events, 1);
    }

    #[test]
    fn a_message_never_answered_may_be_there_once() {
        assert_eq!(compare(&[1], &[1, 2], |i| i == 2), (0, 0));
        assert_eq!(compare(&[1], &[1, 2, 2], |i| i == 2), (0, 1));
    }
}
