//! What every scenario shares to tell its results: tallies by label, the once-a-second
//! progress line on stderr, and printing the final report as JSON or as text.
//!
//! With `--json` the report is the only thing written to stdout, so that scripts can read it
//! as one JSON object; progress always goes to stderr.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Counts by label, such as errors by code or failures by cause (sorted when shown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub(super) struct Tally(BTreeMap<String, u64>);

impl Tally {
    /// Adds `n` to `label`'s count.
    pub(super) fn add(&mut self, label: impl Into<String>, n: u64) {
        *self.0.entry(label.into()).or_insert(0) += n;
    }

    /// Adds every count of `other`.
    pub(super) fn merge(&mut self, other: Tally) {
        for (label, n) in other.0 {
            self.add(label, n);
        }
    }

    /// The sum of all counts.
    pub(super) fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k} {v}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// Which run a report is of: the scenario, the nodes, the tenant, how users were named, and
/// the seed of its random choices. Flattened into a report's JSON; shown as its first line.
#[derive(Debug, Serialize)]
pub(super) struct RunIdentity {
    pub(super) scenario: &'static str,
    /// The nodes' WebSocket URLs, in the order sessions were spread over them.
    pub(super) urls: Vec<String>,
    pub(super) tenant: String,
    /// `dev` or `jwt`.
    pub(super) auth: &'static str,
    /// The seed, as a string: JSON numbers lose precision past 2^53.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) seed: Option<String>,
}

impl Display for RunIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} against {} (tenant {}, {} identities",
            self.scenario,
            self.urls.join(", "),
            self.tenant,
            self.auth
        )?;
        if let Some(seed) = &self.seed {
            write!(f, ", seed {seed}")?;
        }
        writeln!(f, ")")
    }
}

/// Prints a line to stderr once a second until dropped.
pub(super) struct Progress(tokio::task::JoinHandle<()>);

impl Progress {
    /// Starts printing `line(elapsed)` every second.
    pub(super) fn start(line: impl Fn(Duration) -> String + Send + 'static) -> Self {
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            ticks.tick().await; // The first tick is immediate.
            loop {
                ticks.tick().await;
                eprintln!("{}", line(started.elapsed()));
            }
        });
        Self(task)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Prints the final report: one JSON object with `json`, the human summary otherwise.
pub(super) fn print<R: Serialize + Display>(report: &R, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// A count per second over `window`, 0 for an empty window.
pub(super) fn per_second(count: u64, window: Duration) -> f64 {
    let secs = window.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Bytes shown in MiB with one decimal.
pub(super) fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1_024.0 * 1_024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_adds_merges_and_shows_sorted_labels() {
        let mut a = Tally::default();
        a.add("unavailable", 2);
        let mut b = Tally::default();
        b.add("rate_limited", 1);
        b.add("unavailable", 1);
        a.merge(b);
        assert_eq!(a.total(), 4);
        assert_eq!(a.to_string(), "rate_limited 1, unavailable 3");
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"rate_limited":1,"unavailable":3}"#
        );
        assert_eq!(Tally::default().to_string(), "none");
    }
}
