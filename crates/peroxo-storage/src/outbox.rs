//! What both SQL backends share of the event outbox: the settings a store writes events with,
//! the feed's request, and where a pruning batch may cut.
//!
//! Each backend writes a transaction's outbox events with the transaction's other rows and
//! takes their ids from a per-tenant counter (`outbox_counters`), so ids are gapless and
//! follow commit order within a tenant (see each backend for how). The payloads are built by
//! [`Payloads`], in the protocol crate, for both.

use peroxo_config::EventsConfig;
use peroxo_protocol::outbox::{NewOutboxEvent, Payloads};

/// A request for one page of a tenant's feed: the events with an id greater than `after`,
/// ascending, at most `limit` (capped at [`MAX_EVENTS_LIMIT`](crate::MAX_EVENTS_LIMIT)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    pub tenant: String,
    pub after: u64,
    pub limit: u32,
}

/// How a store writes outbox events (`[events]`). Cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxSettings {
    /// Whether committed changes write outbox events at all.
    pub enabled: bool,
    pub payloads: Payloads,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self::from(&EventsConfig::default())
    }
}

impl From<&EventsConfig> for OutboxSettings {
    fn from(config: &EventsConfig) -> Self {
        Self {
            enabled: config.enabled,
            payloads: Payloads {
                preview_chars: config.text_preview_chars as usize,
            },
        }
    }
}

impl OutboxSettings {
    /// The event `build` makes, when events are written at all (so nothing is built when
    /// they are not).
    pub(crate) fn event(
        self,
        build: impl FnOnce(Payloads) -> Option<NewOutboxEvent>,
    ) -> Option<NewOutboxEvent> {
        if self.enabled {
            build(self.payloads)
        } else {
            None
        }
    }
}

/// Claims a consumer's lease (`{0}` .. `{4}`: tenant, consumer, holder, expires_at, now), in
/// the placeholders of the backend: a row only when the claim succeeds.
pub(crate) fn claim_sql(p: [&str; 5]) -> String {
    format!(
        "INSERT INTO outbox_consumers (tenant, consumer, holder, expires_at, cursor)
         VALUES ({0}, {1}, {2}, {3}, 0)
         ON CONFLICT (tenant, consumer) DO UPDATE
             SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE outbox_consumers.holder = excluded.holder
                OR outbox_consumers.expires_at <= {4}
         RETURNING cursor, expires_at",
        p[0], p[1], p[2], p[3], p[4]
    )
}

/// The commit time at which a lease claimed at `now_ms` for `ttl_ms` ends.
pub(crate) fn lease_end(now_ms: i64, ttl_ms: u64) -> i64 {
    now_ms.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX))
}

/// Where a pruning batch cuts a tenant's oldest events, `(id, ts)` ascending by id: after
/// the longest prefix committed before `before_ts`. Only a prefix goes, so every id up to
/// the cut is gone and `pruned_until` can say so (commit times need not follow ids exactly
/// across PostgreSQL instances). `None` when nothing goes.
pub(crate) fn prune_cut(oldest: &[(u64, i64)], before_ts: i64) -> Option<u64> {
    oldest
        .iter()
        .take_while(|(_, ts)| *ts < before_ts)
        .last()
        .map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prune_cuts_only_the_prefix_older_than_the_limit() {
        let rows = [(4, 10), (5, 30), (6, 20), (7, 50)];
        assert_eq!(prune_cut(&rows, 35), Some(6));
        assert_eq!(prune_cut(&rows, 25), Some(4));
        assert_eq!(prune_cut(&rows, 5), None);
        assert_eq!(prune_cut(&[], 5), None);
    }
}
