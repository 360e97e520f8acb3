//! The `[events]` section: the outbox of committed changes that an application's backend reads
//! as a feed (`GET /api/v1/events`, webhooks), how long it is kept and how much text it shows.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration_within, human_duration, within};
use peroxo_protocol::outbox::MAX_TEXT_PREVIEW_CHARS;

/// The shortest `events.retention`: a consumer must have time to read what was committed.
const MIN_RETENTION: Duration = Duration::from_secs(60);
/// The longest `events.retention` (ten years: "keep" in practice).
const MAX_RETENTION: Duration = Duration::from_secs(3650 * 86_400);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Whether committed changes write outbox events at all.
    pub enabled: bool,
    /// Outbox events older than this are deleted by the storage service's retention task.
    #[serde(with = "human_duration")]
    pub retention: Duration,
    /// How many characters of a message's text its events carry (0: none, the default, so
    /// that texts stay out of what backends and webhooks receive unless asked for).
    pub text_preview_chars: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retention: Duration::from_secs(7 * 86_400),
            text_preview_chars: 0,
        }
    }
}

impl EventsConfig {
    /// The checks of `[events]`.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        duration_within(
            "events.retention",
            self.retention,
            MIN_RETENTION,
            MAX_RETENTION,
        )?;
        within(
            "events.text_preview_chars",
            self.text_preview_chars,
            0,
            MAX_TEXT_PREVIEW_CHARS,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::tests::load;

    #[test]
    fn events_are_on_for_a_week_without_text_by_default() {
        let events = load("").unwrap().events;
        assert!(events.enabled);
        assert_eq!(events.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(events.text_preview_chars, 0);
        let events =
            load("[events]\nenabled = false\nretention = \"1h\"\ntext_preview_chars = 80\n")
                .unwrap()
                .events;
        assert!(!events.enabled);
        assert_eq!(events.retention, Duration::from_secs(3600));
        assert_eq!(events.text_preview_chars, 80);
    }

    #[test]
    fn bad_events_keys_are_named() {
        let error = load("[events]\nretention = \"30s\"\n").unwrap_err();
        assert_eq!(error.key, "events.retention");
        let error = load("[events]\nretention = \"soon\"\n").unwrap_err();
        assert!(error.to_string().contains("retention"), "{error}");
        let error = load("[events]\ntext_preview_chars = 1001\n").unwrap_err();
        assert_eq!(error.key, "events.text_preview_chars");
        let error = load("[events]\npreview = 1\n").unwrap_err();
        assert!(error.to_string().contains("preview"), "{error}");
    }
}
