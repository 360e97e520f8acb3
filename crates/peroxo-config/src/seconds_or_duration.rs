//! The `*_secs` duration keys, for `#[serde(with)]`: a whole number of seconds, as they have
//! always been written (`ping_interval_secs = 25`), or a duration written as humans do
//! ("500ms", "1.5s", "2m"), so that a test or a tight deployment can go below a second
//! without renaming keys or breaking existing files.
//!
//! A whole number of seconds is printed back as that integer, so `peroxo check-config` shows
//! an existing file as it was; anything else is printed as a duration ("1s 500ms").

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

pub(super) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    if value.subsec_nanos() == 0 {
        serializer.serialize_u64(value.as_secs())
    } else {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }
}

pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(SecondsOrDuration)
}

struct SecondsOrDuration;

impl Visitor<'_> for SecondsOrDuration {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number of seconds or a duration like \"500ms\" or \"1.5s\"")
    }

    fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(secs))
    }

    fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
        u64::try_from(secs)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("{secs} is negative; a duration cannot be")))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).ok_or_else(|| {
            E::custom(format!(
                "{text:?} is not a duration like \"500ms\", \"1.5s\" or \"2m\""
            ))
        })
    }
}

/// "1.5s" (a decimal number of seconds), or anything `humantime` reads ("500ms", "1m 30s").
fn parse(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Some(number) = text.strip_suffix('s')
        && number.contains('.')
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return number
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok());
    }
    humantime::parse_duration(text).ok()
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::time::Duration;

    #[test]
    fn reads_milliseconds_decimal_seconds_and_compound_durations() {
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1_500)));
        assert_eq!(parse("0.25s"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1m 30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("1.2.3s"), None);
        assert_eq!(parse("soon"), None);
        assert_eq!(parse(""), None);
    }
}
