//! Environment overrides: a `PEROXO_<SECTION>__<KEY>` variable sets `<section>.<key>` in the
//! configuration table before it is deserialized, so a deployment can change any key (and
//! hand over secrets) without editing `config.toml`.
//!
//! A value is read as TOML when it is TOML (`500`, `true`) and as text otherwise
//! (`127.0.0.1:8080`); where a key wants text but the value read as a number or a boolean, it
//! is taken again as the text it was.

use crate::{Config, ConfigError, deserialize};

/// The prefix of environment overrides: `PEROXO_STORAGE__MAX_PENDING=500` sets
/// `storage.max_pending`.
pub const ENV_PREFIX: &str = "PEROXO_";

/// One `PEROXO_...` variable applied to the config table.
pub(crate) struct EnvOverride {
    /// The key's path (`["auth", "jwt_secret"]`).
    path: Vec<String>,
    raw: String,
}

/// Deserializes `table`; an override read as a number or boolean (`12345`, `true`) where the
/// key wants a string is taken as the string it was.
pub(crate) fn deserialize_with_overrides(
    mut table: toml::Table,
    overrides: &[EnvOverride],
) -> Result<Config, ConfigError> {
    let mut as_strings = vec![false; overrides.len()];
    loop {
        let error = match deserialize(table.clone()) {
            Ok(config) => return Ok(config),
            Err(error) => error,
        };
        let retry = overrides
            .iter()
            .enumerate()
            .find(|(i, o)| !as_strings[*i] && o.path.join(".") == error.key);
        let Some((i, o)) = retry else {
            return Err(error);
        };
        as_strings[i] = true;
        set(&mut table, &o.path, toml::Value::String(o.raw.clone()))?;
    }
}

/// Sets `path` in `table`, creating sections on the way.
fn set(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), ConfigError> {
    let key = path.join(".");
    let (last, sections) = path.split_last().expect("a key has at least one part");
    let mut current = table;
    for section in sections {
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::new(&key, format!("`{section}` is not a section")))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// Applies `PEROXO_<SECTION>__<KEY>` variables. The value is read as a TOML value when it is
/// one (`500`, `true`, `"text"`), and as a plain string otherwise (`127.0.0.1:8080`).
pub(crate) fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<EnvOverride>, ConfigError> {
    let mut applied = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.len() < 2 || path.iter().any(String::is_empty) {
            // PEROXO_FOO without a section is not ours to judge (e.g. PEROXO_TEST_*).
            continue;
        }
        set(table, &path, parse_env_value(&raw))?;
        applied.push(EnvOverride { path, raw });
    }
    Ok(applied)
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}
