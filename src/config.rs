//! The one typed configuration, loaded from `config.toml` and `PEROXO_<SECTION>__<KEY>`
//! environment overrides, and validated before any port is bound.
//!
//! Every error names the offending key (`storage.max_pending: ...`). `config.toml` at the top
//! of the repository documents every key; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::storage::MAX_APPEND_BATCH;

/// The prefix of environment overrides: `PEROXO_STORAGE__MAX_PENDING=500` sets
/// `storage.max_pending`.
pub const ENV_PREFIX: &str = "PEROXO_";

/// A configuration problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The dotted key (`storage.max_pending`), or the file for problems reading it.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub session: SessionConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where the gateway accepts HTTP and WebSocket connections.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// The client names itself in the query string. For trying PerOXO out only.
    #[default]
    Dev,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StorageBackend {
    #[default]
    Sqlite,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Run the storage service inside the gateway process (and connect to it over gRPC).
    pub embedded: bool,
    /// Where the storage service listens: the embedded one, or `peroxo store`.
    pub listen: SocketAddr,
    /// Where the gateway finds the storage service when `embedded = false`.
    pub endpoint: String,
    pub backend: StorageBackend,
    /// The SQLite database file of the `sqlite` backend.
    pub sqlite_path: PathBuf,
    /// Accepted messages not yet committed, across the node. When full, sends are answered
    /// `unavailable` (retryable).
    pub max_pending: usize,
    /// The most messages one append call carries.
    pub max_batch: usize,
    /// How long one storage call may take before it counts as failed.
    pub rpc_timeout_ms: u64,
    /// How long connecting to the storage service may take.
    pub connect_timeout_ms: u64,
    /// The first reconnect delay; it doubles (with jitter) up to `reconnect_max_ms`.
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            embedded: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            endpoint: "http://127.0.0.1:50051".to_owned(),
            backend: StorageBackend::Sqlite,
            sqlite_path: PathBuf::from("data/peroxo.db"),
            max_pending: 10_000,
            max_batch: 256,
            rpc_timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
            reconnect_initial_ms: 50,
            reconnect_max_ms: 5_000,
        }
    }
}

impl StorageConfig {
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The largest WebSocket message (and frame) a client may send, in bytes.
    pub max_message_bytes: usize,
    /// The largest DM text, in bytes of UTF-8.
    pub max_text_bytes: usize,
    /// Frames queued towards one client. When full the session is closed (1013).
    pub outbound_queue: usize,
    /// Users one session may watch for presence.
    pub max_watched_users: usize,
    /// Storage reads (history, sync) one session may have in flight; further reads wait.
    pub max_reads_in_flight: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 65_536,
            max_text_bytes: 4_096,
            outbound_queue: 1_024,
            max_watched_users: 1_000,
            max_reads_in_flight: 4,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Session actor restarts allowed per connection within `restart_window_secs`; one more
    /// failure closes the connection with 1011.
    pub max_restarts: usize,
    pub restart_window_secs: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            restart_window_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `peroxo=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Loads `path` (which must exist when `required`), applies environment overrides from
    /// `env`, and validates the result.
    pub fn load(
        path: &Path,
        required: bool,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let file_key = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(e) => return Err(ConfigError::new(file_key, format!("cannot read: {e}"))),
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::new(file_key, e.to_string()))?;
        apply_env_overrides(&mut table, env)?;
        Self::from_table(table)
    }

    /// Builds a validated config from a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::new("config", e.to_string()))?;
        Self::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                // The TOML deserializer appends "in `section`"; the key already says it.
                let message = e.into_inner().to_string();
                let message = message.lines().next().unwrap_or_default().to_owned();
                ConfigError::new(if key == "." { "config".to_owned() } else { key }, message)
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.storage;
        at_least("storage.max_pending", s.max_pending, 1)?;
        within("storage.max_batch", s.max_batch, 1, MAX_APPEND_BATCH)?;
        at_least("storage.rpc_timeout_ms", s.rpc_timeout_ms, 1)?;
        at_least("storage.connect_timeout_ms", s.connect_timeout_ms, 1)?;
        at_least("storage.reconnect_initial_ms", s.reconnect_initial_ms, 1)?;
        at_least(
            "storage.reconnect_max_ms",
            s.reconnect_max_ms,
            s.reconnect_initial_ms,
        )?;
        let endpoint_is_url =
            s.endpoint.starts_with("http://") || s.endpoint.starts_with("https://");
        if !s.embedded && !endpoint_is_url {
            return Err(ConfigError::new(
                "storage.endpoint",
                format!("must be an http:// or https:// URL, got {:?}", s.endpoint),
            ));
        }
        if s.sqlite_path.as_os_str().is_empty() {
            return Err(ConfigError::new("storage.sqlite_path", "must not be empty"));
        }
        let l = &self.limits;
        within(
            "limits.max_message_bytes",
            l.max_message_bytes,
            1_024,
            16 * 1024 * 1024,
        )?;
        within(
            "limits.max_text_bytes",
            l.max_text_bytes,
            1,
            crate::storage::MAX_STORED_TEXT_BYTES.min(l.max_message_bytes / 2),
        )?;
        within("limits.outbound_queue", l.outbound_queue, 16, 1_000_000)?;
        within("limits.max_watched_users", l.max_watched_users, 1, 100_000)?;
        within(
            "limits.max_reads_in_flight",
            l.max_reads_in_flight,
            1,
            1_024,
        )?;
        at_least(
            "session.restart_window_secs",
            self.session.restart_window_secs,
            1,
        )?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::new("log.level", format!("not a valid filter: {e}")))?;
        Ok(())
    }
}

fn at_least<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::new(
            key,
            format!("must be at least {min}, got {value}"),
        ));
    }
    Ok(())
}

fn within<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            key,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(())
}

/// Applies `PEROXO_<SECTION>__<KEY>` variables. The value is read as a TOML value when it is
/// one (`500`, `true`, `"text"`), and as a plain string otherwise (`127.0.0.1:8080`).
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.len() < 2 || path.iter().any(String::is_empty) {
            // PEROXO_FOO without a section is not ours to judge (e.g. PEROXO_TEST_*).
            continue;
        }
        let value = parse_env_value(&raw);
        let key = path.join(".");
        let (last, sections) = path.split_last().expect("path has at least two parts");
        let mut current = &mut *table;
        for section in sections {
            let entry = current
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            current = entry.as_table_mut().ok_or_else(|| {
                ConfigError::new(
                    &key,
                    format!("{name} sets a key inside `{section}`, which is not a section"),
                )
            })?;
        }
        current.insert(last.clone(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().unwrap();
        apply_env_overrides(
            &mut table,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        Config::from_table(table)
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
            .expect("config.toml ships with the repository");
        Config::from_toml(&text).expect("the shipped config validates");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Config::from_toml("[storage]\nmax_pendin = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_pendin"), "{err}");
        let err = Config::from_toml("[storag]\n").unwrap_err();
        assert!(err.to_string().contains("storag"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let err = Config::from_toml("[storage]\nmax_pending = 0\n").unwrap_err();
        assert_eq!(err.key, "storage.max_pending");
        let err = Config::from_toml("[storage]\nmax_pending = \"lots\"\n").unwrap_err();
        assert_eq!(err.key, "storage.max_pending");
        let err = Config::from_toml("[auth]\nmode = \"open\"\n").unwrap_err();
        assert_eq!(err.key, "auth.mode");
    }

    #[test]
    fn environment_overrides_win_over_the_file() {
        let config = load_with_env(
            "[storage]\nmax_pending = 5\n",
            &[
                ("PEROXO_STORAGE__MAX_PENDING", "7"),
                ("PEROXO_HTTP__LISTEN", "127.0.0.1:9999"),
                ("PEROXO_LOG__FORMAT", "json"),
                ("HOME", "/root"),
            ],
        )
        .unwrap();
        assert_eq!(config.storage.max_pending, 7);
        assert_eq!(config.http.listen.port(), 9999);
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn bad_environment_overrides_name_their_key() {
        let err = load_with_env("", &[("PEROXO_STORAGE__MAX_BATCH", "0")]).unwrap_err();
        assert_eq!(err.key, "storage.max_batch");
        let err = load_with_env("", &[("PEROXO_STORAGE__NOPE", "1")]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
