//! What a reload of the configuration may change while a node runs, and what it would change.
//!
//! A configuration is compared as a flat list of keys ([`Snapshot`]): `limits.rate_per_sec =
//! 50`. Secrets appear as a fingerprint (the first bytes of their SHA-256), never in clear, so
//! a snapshot can be written next to a pid file and compared by `peroxo check-config --diff`
//! in another process. Each key is either applied live or needs a restart ([`is_live`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Config;

/// The keys a running gateway applies without a restart: a key is live when it is one of
/// these or lies under one of these sections. Everything else keeps its running value until
/// the next start.
const LIVE_KEYS: &[&str] = &[
    "log.level",
    "log.format",
    "limits",
    "groups",
    "messages",
    "http.allowed_origins",
    "http.max_connections",
    "auth",
    "shutdown.grace_period",
    "server_api",
];

/// Whether a running gateway applies `key` (such as `limits.rate_per_sec`) on reload.
pub fn is_live(key: &str) -> bool {
    LIVE_KEYS.iter().any(|live| {
        key == *live
            || key
                .strip_prefix(live)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// A configuration as a flat, sorted list of keys and printable values, secrets fingerprinted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Snapshot(BTreeMap<String, String>);

/// One key whose value differs between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub key: String,
    /// The value before, `None` when the key was absent (an entry of a table or list).
    pub before: Option<String>,
    pub after: Option<String>,
    /// Whether a running gateway applies it; otherwise it needs a restart.
    pub live: bool,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".to_owned());
        write!(
            f,
            "{}: {} -> {} ({})",
            self.key,
            shown(&self.before),
            shown(&self.after),
            if self.live { "live" } else { "restart needed" }
        )
    }
}

impl Snapshot {
    pub fn of(config: &Config) -> Self {
        let value = toml::Value::try_from(config).expect("the configuration always serializes");
        let mut keys = BTreeMap::new();
        flatten("", &value, &mut keys);
        for (key, secret) in config.secrets() {
            if !secret.is_empty() {
                keys.insert(key.to_owned(), fingerprint(secret.expose()));
            }
        }
        Self(keys)
    }

    /// `self` with the live keys of `after`: what a node runs with after reloading `after`.
    pub fn with_live_keys_of(&self, after: &Snapshot) -> Snapshot {
        let kept = self.0.iter().filter(|(key, _)| !is_live(key));
        let reloaded = after.0.iter().filter(|(key, _)| is_live(key));
        Self(
            kept.chain(reloaded)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// What differs from `self` to `after`, in key order.
    pub fn diff(&self, after: &Snapshot) -> Vec<Change> {
        let mut keys: Vec<&String> = self.0.keys().chain(after.0.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|key| {
                let before = self.0.get(key);
                let now = after.0.get(key);
                (before != now).then(|| Change {
                    key: key.clone(),
                    before: before.cloned(),
                    after: now.cloned(),
                    live: is_live(key),
                })
            })
            .collect()
    }
}

/// Identifies a secret without revealing it.
fn fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("<redacted sha256:{hex}>")
}

fn flatten(prefix: &str, value: &toml::Value, keys: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(table) => {
            for (name, value) in table {
                let key = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                flatten(&key, value, keys);
            }
        }
        // A list is one value: `http.allowed_origins = ["https://a", "https://b"]`.
        other => {
            keys.insert(prefix.to_owned(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;

    #[test]
    fn live_keys_are_named_sections_and_keys_only() {
        assert!(is_live("limits.rate_per_sec"));
        assert!(is_live("log.level"));
        assert!(is_live("auth.tenants.acme.issuer"));
        assert!(is_live("http.allowed_origins"));
        assert!(!is_live("http.listen"));
        assert!(!is_live("storage.backend"));
        assert!(!is_live("logger"));
        assert!(!is_live("limits_extra"));
    }

    #[test]
    fn a_diff_names_each_changed_key_and_whether_it_applies_live() {
        let before = Config::default();
        let mut after = before.clone();
        after.limits.rate_per_sec = 7;
        after.http.listen = "127.0.0.1:9999".parse().unwrap();
        let changes = Snapshot::of(&before).diff(&Snapshot::of(&after));
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "http.listen: \"127.0.0.1:8080\" -> \"127.0.0.1:9999\" (restart needed)",
                "limits.rate_per_sec: 20 -> 7 (live)",
            ]
        );
        assert!(
            Snapshot::of(&before)
                .diff(&Snapshot::of(&before))
                .is_empty()
        );
    }

    #[test]
    fn secrets_show_as_fingerprints_that_change_with_the_secret() {
        let mut one = Config::default();
        one.auth.jwt_secret = Secret::new("a-secret-of-at-least-thirty-two-bytes!");
        let mut two = one.clone();
        two.auth.jwt_secret = Secret::new("another-secret-of-thirty-two-bytes-or-more");
        let changes = Snapshot::of(&one).diff(&Snapshot::of(&two));
        assert_eq!(changes.len(), 1);
        let change = &changes[0];
        assert_eq!(change.key, "auth.jwt_secret");
        assert!(change.live);
        for shown in [&change.before, &change.after] {
            let shown = shown.as_deref().unwrap();
            assert!(shown.starts_with("<redacted sha256:"), "{shown}");
            assert!(!shown.contains("secret"), "{shown}");
        }
    }
}
