//! The process's log output: `log.level` and `log.format`, both of which a reload may change.

use peroxo_config::{Config, LogFormat};
use peroxo_gateway::server::ReloadReport;
use tracing_subscriber::layer::Layered;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type Format = Box<dyn Layer<Filtered> + Send + Sync>;

/// The installed subscriber's handles, through which a reload changes level and format.
pub(crate) struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<Format, Filtered>,
    /// `RUST_LOG` was set: it wins over `log.level`, at start and on reload.
    level_from_env: bool,
}

fn format_layer(format: LogFormat) -> Format {
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    }
}

impl Logging {
    /// Installs the process's subscriber, configured by `[log]` (and `RUST_LOG`, if set).
    pub(crate) fn init(config: &Config) -> Self {
        let from_env = EnvFilter::try_from_default_env().ok();
        let level_from_env = from_env.is_some();
        let filter = from_env.unwrap_or_else(|| EnvFilter::new(&config.log.level));
        let (filter, filter_handle) = reload::Layer::new(filter);
        let (format, format_handle) = reload::Layer::new(format_layer(config.log.format));
        tracing_subscriber::registry()
            .with(filter)
            .with(format)
            .init();
        Self {
            filter: filter_handle,
            format: format_handle,
            level_from_env,
        }
    }

    /// Applies `[log]` of a reloaded `config` when the reload changed it.
    pub(crate) fn apply(&self, config: &Config, report: &ReloadReport) {
        let changed = |key: &str| report.applied.iter().any(|c| c.key == key);
        if changed("log.level") {
            if self.level_from_env {
                tracing::warn!("log.level changed, but RUST_LOG is set and takes precedence");
            } else if let Err(error) = self.filter.reload(EnvFilter::new(&config.log.level)) {
                tracing::error!(%error, "cannot apply log.level");
            }
        }
        if changed("log.format")
            && let Err(error) = self.format.reload(format_layer(config.log.format))
        {
            tracing::error!(%error, "cannot apply log.format");
        }
    }
}
