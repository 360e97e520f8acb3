//! The `[retention]` section: how long messages are kept, for every tenant and per tenant.
//!
//! A `max_age` is a duration ("365d") or `"off"` (keep forever, the default). A tenant's own
//! `[retention.tenants.<tenant>]` replaces the default for that tenant, `"off"` included.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConfigError, duration_within, human_duration, within};
use peroxo_protocol::domain::validate_id;

/// The shortest `max_age` accepted: anything shorter would prune messages still in flight.
const MIN_MAX_AGE: Duration = Duration::from_secs(1);
/// The most messages one pruning transaction may delete.
pub const MAX_RETENTION_BATCH: u32 = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Messages older than this are deleted; `None` (`"off"`) keeps them forever.
    #[serde(with = "max_age")]
    pub max_age: Option<Duration>,
    /// The time between two pruning passes.
    #[serde(with = "human_duration")]
    pub interval: Duration,
    /// The most messages one pruning transaction deletes. Small batches keep each
    /// transaction short, so the writes that wait behind it wait little.
    pub batch: u32,
    /// Tenants whose `max_age` differs from the default.
    pub tenants: BTreeMap<String, TenantRetention>,
}

/// One tenant's `[retention.tenants.<tenant>]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRetention {
    #[serde(with = "max_age")]
    pub max_age: Option<Duration>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: None,
            interval: Duration::from_secs(60),
            batch: 500,
            tenants: BTreeMap::new(),
        }
    }
}

impl RetentionConfig {
    /// The age past which `tenant`'s messages are deleted, if they are.
    pub fn max_age_of(&self, tenant: &str) -> Option<Duration> {
        match self.tenants.get(tenant) {
            Some(own) => own.max_age,
            None => self.max_age,
        }
    }

    /// Whether any tenant's messages are ever deleted.
    pub fn enabled(&self) -> bool {
        self.max_age.is_some() || self.tenants.values().any(|t| t.max_age.is_some())
    }

    /// The checks of `[retention]`.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        duration_within(
            "retention.interval",
            self.interval,
            Duration::from_millis(100),
            Duration::from_secs(86_400),
        )?;
        within("retention.batch", self.batch, 1, MAX_RETENTION_BATCH)?;
        check_max_age("retention.max_age", self.max_age)?;
        for (tenant, own) in &self.tenants {
            let key = format!("retention.tenants.{tenant}");
            validate_id(tenant).map_err(|e| ConfigError::new(&key, e))?;
            check_max_age(&format!("{key}.max_age"), own.max_age)?;
        }
        Ok(())
    }
}

fn check_max_age(key: &str, max_age: Option<Duration>) -> Result<(), ConfigError> {
    match max_age {
        Some(age) if age < MIN_MAX_AGE => Err(ConfigError::new(
            key,
            format!(
                "must be \"off\" or at least {}",
                humantime::format_duration(MIN_MAX_AGE)
            ),
        )),
        _ => Ok(()),
    }
}

/// A `max_age`: a duration, or `"off"`.
mod max_age {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(age) => human_duration::serialize(age, serializer),
            None => serializer.serialize_str("off"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "off" {
            return Ok(None);
        }
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not \"off\" or a duration like \"365d\": {e}"
            ))
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::Config;

    /// `text` read and checked as `Config::load` does (`[auth]` aside).
    pub(crate) fn load(text: &str) -> Result<Config, ConfigError> {
        let config = crate::deserialize(text.parse().unwrap())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn retention_is_off_unless_an_age_is_set() {
        let config = load("").unwrap();
        assert!(!config.retention.enabled());
        let config = load("[retention]\nmax_age = \"365d\"\n").unwrap();
        assert_eq!(
            config.retention.max_age_of("acme"),
            Some(Duration::from_secs(365 * 86_400))
        );
    }

    #[test]
    fn a_tenant_override_replaces_the_default_even_with_off() {
        let config = load(
            "[retention]\nmax_age = \"30d\"\n\
             [retention.tenants.acme]\nmax_age = \"1d\"\n\
             [retention.tenants.keep]\nmax_age = \"off\"\n",
        )
        .unwrap();
        let r = &config.retention;
        assert_eq!(r.max_age_of("acme"), Some(Duration::from_secs(86_400)));
        assert_eq!(r.max_age_of("keep"), None);
        assert_eq!(
            r.max_age_of("other"),
            Some(Duration::from_secs(30 * 86_400))
        );
    }

    #[test]
    fn bad_retention_keys_are_named() {
        let error = load("[retention]\nmax_age = \"soon\"\n").unwrap_err();
        assert!(error.to_string().contains("max_age"), "{error}");
        let error = load("[retention]\nmax_age = \"10ms\"\n").unwrap_err();
        assert_eq!(error.key, "retention.max_age");
        let error = load("[retention]\nbatch = 0\n").unwrap_err();
        assert_eq!(error.key, "retention.batch");
        let error = load("[retention.tenants.\"a b\"]\nmax_age = \"1d\"\n").unwrap_err();
        assert_eq!(error.key, "retention.tenants.a b");
        let error = load("[retention.tenants.acme]\nage = \"1d\"\n").unwrap_err();
        assert!(error.to_string().contains("age"), "{error}");
    }
}
