//! The changes a `dm` run mixes into its sends (`--edits`, `--reactions`, `--deletes`):
//! which command of the schedule is which, and what each change targets.
//!
//! The kind of command `i` is fixed by a seeded hash of `i`, like its peer. What a change
//! targets is decided when it is due, from what the run has seen by then: an edit or a delete
//! takes its sender's latest acked message that no delete has claimed (going back one turn of
//! the sender at a time, a few turns at most), a reaction the latest acked message sent *to*
//! its sender. A change that finds no target is sent as a plain message instead (counted in
//! `fallbacks`), so every command still has exactly one delivery to check.
//!
//! Every change names itself so its event can be matched: an edit's text starts with `m<i>`
//! like a message's, a reaction's emoji is `r<i>`, and a delete is found by the message id it
//! deletes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use clap::Args;
use serde::Serialize;

use crate::rng;

/// Sender turns an edit or a delete looks back for its target.
const OWN_TURNS: u32 = 8;
/// Sender turns a reaction looks back for a message its sender received.
const RECEIVED_TURNS: u32 = 4;
/// The shares of the mix are given in percent and kept in basis points.
const BASIS: u64 = 10_000;

/// The share of the commands, in percent, that change a message instead of sending one.
#[derive(Debug, Clone, Copy, Args, Serialize)]
pub struct MixArgs {
    /// Percent of the commands that edit one of their sender's messages.
    #[arg(long, default_value_t = 0.0)]
    pub edits: f64,
    /// Percent of the commands that react to a message their sender received.
    #[arg(long, default_value_t = 0.0)]
    pub reactions: f64,
    /// Percent of the commands that delete one of their sender's messages.
    #[arg(long, default_value_t = 0.0)]
    pub deletes: f64,
}

impl MixArgs {
    /// Whether the run changes messages at all (it then speaks protocol 3).
    pub(super) fn any(&self) -> bool {
        self.edits + self.reactions + self.deletes > 0.0
    }

    fn check(&self) -> anyhow::Result<()> {
        for (name, share) in [
            ("--edits", self.edits),
            ("--reactions", self.reactions),
            ("--deletes", self.deletes),
        ] {
            anyhow::ensure!(
                (0.0..=100.0).contains(&share),
                "{name} must be a percentage from 0 to 100"
            );
        }
        anyhow::ensure!(
            self.edits + self.reactions + self.deletes <= 50.0,
            "--edits, --reactions and --deletes together must leave at least half of the \
             commands to sends (changes need messages to change)"
        );
        Ok(())
    }
}

/// What command `i` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Send,
    Edit,
    React,
    Delete,
}

/// The kinds of a run's commands, and what the run learned of its messages while it ran.
pub(super) struct Mix {
    seed: u64,
    /// Cumulative basis points of edits, then reactions, then deletes.
    bounds: [u64; 3],
    /// The message id of message `i`, once its send was acked (0 before, and for changes).
    ids: Box<[AtomicU64]>,
    /// For a change: 1 + the index of the message it targets (0: sent as a plain message).
    targets: Box<[AtomicU32]>,
    /// Whether a delete has claimed message `i`.
    claimed: Box<[AtomicBool]>,
    /// The delete that targets each deleted message id.
    deletes: Mutex<HashMap<u64, u32>>,
    /// Changes sent as plain messages for want of a target.
    pub(super) fallbacks: AtomicU64,
}

impl Mix {
    pub(super) fn new(args: MixArgs, len: u32, seed: u64) -> anyhow::Result<Self> {
        args.check()?;
        let points = |share: f64| (share * 100.0).round() as u64;
        let edits = points(args.edits);
        let reactions = edits + points(args.reactions);
        let deletes = reactions + points(args.deletes);
        let slots = |_| AtomicU64::new(0);
        Ok(Self {
            seed: seed ^ 0x6d69_785f_6b69_6e64,
            bounds: [edits, reactions, deletes],
            ids: (0..len).map(slots).collect(),
            targets: (0..len).map(|_| AtomicU32::new(0)).collect(),
            claimed: (0..len).map(|_| AtomicBool::new(false)).collect(),
            deletes: Mutex::new(HashMap::new()),
            fallbacks: AtomicU64::new(0),
        })
    }

    /// What command `i` is meant to do (a change may still go out as a send: see
    /// [`Mix::target`]).
    pub(super) fn op(&self, i: u32) -> Op {
        let point = rng::below(rng::splitmix64(self.seed ^ u64::from(i)), BASIS);
        match self.bounds.iter().position(|bound| point < *bound) {
            Some(0) => Op::Edit,
            Some(1) => Op::React,
            Some(2) => Op::Delete,
            _ => Op::Send,
        }
    }

    /// Message `i` was acked with `message_id`.
    pub(super) fn acked(&self, i: u32, message_id: u64) {
        if let Some(slot) = self.ids.get(i as usize) {
            slot.store(message_id, Ordering::Relaxed);
        }
    }

    /// The message id of message `j`, once acked.
    pub(super) fn id(&self, j: u32) -> Option<u64> {
        self.ids
            .get(j as usize)
            .map(|id| id.load(Ordering::Relaxed))
            .filter(|id| *id > 0)
    }

    /// The message change `i` targets, once it has been decided (`None`: sent as a message).
    pub(super) fn target(&self, i: u32) -> Option<u32> {
        let target = self.targets.get(i as usize)?.load(Ordering::Relaxed);
        target.checked_sub(1)
    }

    /// Decides what change `i` targets among `candidates` (message indices, newest first):
    /// the first acked one no delete has claimed, claimed now when `i` is a delete. `None`
    /// (and one more fallback) when there is none.
    pub(super) fn choose(&self, i: u32, candidates: impl Iterator<Item = u32>) -> Option<u32> {
        let delete = self.op(i) == Op::Delete;
        let mut candidates = candidates;
        let chosen = candidates.find(|&j| {
            self.id(j).is_some()
                && if delete {
                    !self.claimed[j as usize].swap(true, Ordering::Relaxed)
                } else {
                    !self.claimed[j as usize].load(Ordering::Relaxed)
                }
        });
        match chosen {
            Some(j) => {
                self.targets[i as usize].store(j + 1, Ordering::Relaxed);
                if delete && let Some(id) = self.id(j) {
                    self.deletes.lock().expect("deletes poisoned").insert(id, i);
                }
            }
            None => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
            }
        }
        chosen
    }

    /// The delete of the message with id `message_id`.
    pub(super) fn delete_of(&self, message_id: u64) -> Option<u32> {
        self.deletes
            .lock()
            .expect("deletes poisoned")
            .get(&message_id)
            .copied()
    }

    /// How far back a change looks for its target, in sender turns.
    pub(super) fn turns(op: Op) -> u32 {
        if op == Op::React {
            RECEIVED_TURNS
        } else {
            OWN_TURNS
        }
    }
}

/// What the run's changes came to, for the report.
#[derive(Debug, Serialize)]
pub(super) struct MixReport {
    #[serde(flatten)]
    pub(super) shares: MixArgs,
    pub(super) edits: u64,
    pub(super) reactions: u64,
    pub(super) deletes: u64,
    /// Changes sent as plain messages for want of a target.
    pub(super) fallbacks: u64,
}

impl std::fmt::Display for MixReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  changes         {} edits, {} reactions, {} deletes ({} sent as messages for want of a target)",
            self.edits, self.reactions, self.deletes, self.fallbacks
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(len: u32) -> Mix {
        let args = MixArgs {
            edits: 10.0,
            reactions: 5.0,
            deletes: 1.0,
        };
        Mix::new(args, len, 7).unwrap()
    }

    #[test]
    fn the_shares_come_out_as_asked() {
        let mix = mix(100_000);
        let mut counts = [0u32; 4];
        for i in 0..100_000 {
            counts[mix.op(i) as usize] += 1;
        }
        let [sends, edits, reacts, deletes] = counts;
        assert!((9_500..10_500).contains(&edits), "{counts:?}");
        assert!((4_500..5_500).contains(&reacts), "{counts:?}");
        assert!((800..1_200).contains(&deletes), "{counts:?}");
        assert_eq!(sends + edits + reacts + deletes, 100_000);
    }

    #[test]
    fn a_change_targets_an_acked_message_and_a_delete_claims_it() {
        let mix = mix(1_000);
        let delete = (0..1_000).find(|i| mix.op(*i) == Op::Delete).unwrap();
        assert_eq!(
            mix.choose(delete, [3, 2].into_iter()),
            None,
            "nothing acked"
        );
        assert_eq!(mix.fallbacks.load(Ordering::Relaxed), 1);
        mix.acked(2, 42);
        assert_eq!(mix.choose(delete, [3, 2].into_iter()), Some(2));
        assert_eq!(mix.target(delete), Some(2));
        assert_eq!(mix.delete_of(42), Some(delete));
        // A claimed message is nobody's target any more.
        let edit = (0..1_000).find(|i| mix.op(*i) == Op::Edit).unwrap();
        assert_eq!(mix.choose(edit, [2].into_iter()), None);
    }

    #[test]
    fn a_mix_that_leaves_too_few_sends_is_refused() {
        let args = MixArgs {
            edits: 40.0,
            reactions: 20.0,
            deletes: 0.0,
        };
        assert!(Mix::new(args, 10, 1).is_err());
    }
}
