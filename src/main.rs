//! The `peroxo` command: parses the command line, loads the configuration, sets up logging and
//! runs a gateway node or a storage service until SIGINT or SIGTERM. `user.rs`: `peroxo user`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use peroxo_config::{Config, ConfigError, ConfigFile, StorageBackend};
use peroxo_gateway::Gateway;
use peroxo_gateway::identity::{Authenticator, sign_token};
use peroxo_protocol::domain::{DEFAULT_TENANT, UserKey, validate_id};
use peroxo_storage::StoreServer;
use tracing_subscriber::EnvFilter;

mod logging;
mod reload;

use logging::Logging;
mod user;

/// Exit status for a bad configuration or command line (EX_USAGE).
const EXIT_USAGE: u8 = 64;
const DEFAULT_CONFIG: &str = "config.toml";

#[derive(Parser)]
#[command(name = "peroxo", version, about = "Real-time direct-messaging server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway node (and, with `storage.embedded = true`, the storage service).
    Serve {
        /// The configuration file [default: config.toml, if present].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Dev identity: clients name themselves with `?user=`. Never in production.
        #[arg(long)]
        dev: bool,
        /// Write the process id here, and the applied configuration beside it
        /// (`<file>.json`), for `peroxo reload` and `peroxo check-config --diff`.
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Run the storage service alone (gateways point `storage.endpoint` at it).
    Store {
        /// The configuration file [default: config.toml, if present].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and print the effective values (secrets redacted).
    CheckConfig {
        /// The configuration file [default: config.toml, if present].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print instead what reloading it would change in the node started with
        /// `--pid-file`: each key, its running and new value, live or restart needed.
        #[arg(long, requires = "pid_file")]
        diff: bool,
        /// The running node's pid file (with `--diff`).
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Make the node started with `--pid-file` reload its configuration (SIGHUP), and print
    /// what it applied, what needs a restart, or why it refused the new file.
    Reload {
        /// The running node's pid file.
        #[arg(long)]
        pid_file: PathBuf,
        /// How long to wait for the node's answer.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Copy the SQLite database while it serves, and verify the copy (`storage.backend =
    /// "sqlite"`; for PostgreSQL use its own tools, see docs/OPERATIONS.md).
    Backup {
        /// The configuration file [default: config.toml, if present].
        #[arg(long)]
        config: Option<PathBuf>,
        /// The file to write; it must not exist.
        #[arg(long)]
        to: PathBuf,
    },
    /// Export or erase one user's data, in the configured database directly.
    User {
        #[command(subcommand)]
        action: user::UserAction,
    },
    /// Measure a running node: idle sessions, DM throughput and latency, connect rate.
    Bench(peroxo_bench::BenchArgs),
    /// Make a server API key for a tenant: prints the key (give it to the application's
    /// backend; it is shown once) and the `[[server_api.keys]]` entry for config.toml.
    Apikey {
        /// The tenant the key acts for.
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        /// A name for the key in logs, such as the backend that uses it.
        #[arg(long)]
        name: String,
    },
    /// Print a token signed with the configured HS256 secret, for trying PerOXO out and tests.
    Token {
        /// The configuration file [default: config.toml, if present].
        #[arg(long)]
        config: Option<PathBuf>,
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// The tenant.
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        /// How long the token is valid, e.g. 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn main() -> ExitCode {
    let command = match Cli::try_parse() {
        Ok(cli) => cli.command,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    // The load generator reads no configuration: it is pointed at a node.
    if let Command::Bench(args) = command {
        return bench(args);
    }
    // A new API key depends on no configuration.
    if let Command::Apikey { tenant, name } = &command {
        return print_api_key(tenant, name);
    }
    // Signalling a node reads no configuration: the node reloads its own.
    if let Command::Reload { pid_file, timeout } = &command {
        return reload::signal_and_report(pid_file, *timeout);
    }
    let config = match load_config_for(&command) {
        Ok(config) => config,
        Err(error) => return configuration_error(&error),
    };
    // `peroxo store`, `backup` and `user` serve no clients and need no `[auth]`.
    let command = match command {
        Command::Store { .. } => {
            Logging::init(&config);
            return run(store(config.clone()));
        }
        Command::Backup { to, .. } => return backup(&config, &to),
        Command::User { action } => return user::run(&config, action),
        command => command,
    };
    // The others read its keys now, once, so a bad key stops them before anything starts.
    let auth = match config
        .validate_auth()
        .and_then(|()| Authenticator::from_config(&config.auth))
    {
        Ok(auth) => auth,
        Err(error) => return configuration_error(&error),
    };
    match command {
        Command::CheckConfig {
            diff: true,
            pid_file: Some(pid_file),
            ..
        } => reload::print_diff(&config, &pid_file),
        Command::CheckConfig { .. } => {
            print!("{}", config.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Token {
            user, tenant, ttl, ..
        } => print_token(&config, &user, &tenant, ttl),
        Command::Serve { .. } => {
            let pid_file = match &command {
                Command::Serve { pid_file, .. } => pid_file.clone(),
                _ => None,
            };
            let logging = Logging::init(&config);
            let reload_config = move || {
                let config = load_config_for(&command)?;
                config.validate_auth()?;
                let auth = Authenticator::from_config(&config.auth)?;
                Ok((config, auth))
            };
            run(serve(
                config.clone(),
                auth,
                pid_file.clone(),
                logging,
                reload_config,
            ))
        }
        Command::Store { .. }
        | Command::Backup { .. }
        | Command::User { .. }
        | Command::Bench(_)
        | Command::Apikey { .. }
        | Command::Reload { .. } => {
            unreachable!("answered above")
        }
    }
}

/// The configuration a command runs with: the file it names (or `config.toml` when present),
/// the environment, and `--dev`.
fn load_config_for(command: &Command) -> Result<Config, ConfigError> {
    let (path, dev) = match command {
        Command::Serve { config, dev, .. } => (config, *dev),
        Command::Store { config }
        | Command::Backup { config, .. }
        | Command::CheckConfig { config, .. }
        | Command::Token { config, .. } => (config, false),
        Command::User { action } => (action.config(), false),
        Command::Bench(_) | Command::Reload { .. } | Command::Apikey { .. } => {
            unreachable!("the load generator, reload and apikey read no configuration")
        }
    };
    // The default file may be absent (all defaults apply); a file named explicitly must exist.
    let default_path = PathBuf::from(DEFAULT_CONFIG);
    let (path, file) = match path {
        Some(path) => (path, ConfigFile::Required),
        None => (&default_path, ConfigFile::Optional),
    };
    // `--dev` weighs like an environment override, so validation already knows the mode.
    let dev_override = dev.then(|| ("PEROXO_AUTH__MODE".to_owned(), "dev".to_owned()));
    load_config(path, file, dev_override)
}

/// `peroxo backup`: copies the configured SQLite database to `to` and verifies the copy.
fn backup(config: &Config, to: &std::path::Path) -> ExitCode {
    match config.storage.backend {
        StorageBackend::Sqlite => {}
        StorageBackend::Postgres => {
            eprintln!(
                "peroxo: backup copies the SQLite database; storage.backend is postgres: back it \
                 up with pg_dump or PostgreSQL's continuous archiving (docs/OPERATIONS.md, Backup)"
            );
            return ExitCode::from(EXIT_USAGE);
        }
        StorageBackend::Lsm => {
            eprintln!(
                "peroxo: backup copies the SQLite database; storage.backend is lsm: stop the \
                 service and copy the directory storage.lsm_path (docs/OPERATIONS.md, Backup)"
            );
            return ExitCode::from(EXIT_USAGE);
        }
    }
    match peroxo_storage::backup_sqlite(&config.storage.sqlite_path, to) {
        Ok(report) => {
            println!(
                "copied {} to {}: {} messages, {} events, {} bytes; integrity check ok",
                config.storage.sqlite_path.display(),
                to.display(),
                report.messages,
                report.events,
                report.bytes
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("peroxo: backup failed: {error}");
            ExitCode::FAILURE
        }
    }
}

fn configuration_error(error: &ConfigError) -> ExitCode {
    eprintln!("peroxo: configuration error: {error}");
    ExitCode::from(EXIT_USAGE)
}

/// Runs `role` (a gateway node or a storage service) on a new runtime until it stops.
fn run(role: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("peroxo: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(role) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("peroxo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads and validates the configuration: the file and environment (`peroxo-config`), then
/// what only the storage service, the cluster and logging know how to check.
fn load_config(
    path: &std::path::Path,
    file: ConfigFile,
    dev_override: Option<(String, String)>,
) -> Result<Config, ConfigError> {
    let config = Config::load(path, file, std::env::vars().chain(dev_override))?;
    peroxo_storage::check_config(&config.storage)?;
    peroxo_gateway::actors::cluster::check_config(&config.cluster)?;
    EnvFilter::try_new(&config.log.level)
        .map_err(|e| ConfigError::new("log.level", format!("not a valid filter: {e}")))?;
    Ok(config)
}

fn bench(args: peroxo_bench::BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("peroxo: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(peroxo_bench::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("peroxo bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_api_key(tenant: &str, name: &str) -> ExitCode {
    if let Err(error) = validate_id(tenant) {
        eprintln!("peroxo: --tenant {error}");
        return ExitCode::from(EXIT_USAGE);
    }
    if name.is_empty() || name.len() > 64 || name.contains(['"', '\\', '\n']) {
        eprintln!("peroxo: --name must be 1 to 64 bytes, without quotes or backslashes");
        return ExitCode::from(EXIT_USAGE);
    }
    let (key, sha256) = peroxo_gateway::api::new_api_key();
    println!("{key}");
    eprintln!(
        "# The key above is shown once: give it to the backend (Authorization: Bearer <key>).\n\
         # Add this entry to config.toml; the server keeps only the key's SHA-256:\n"
    );
    println!(
        "[[server_api.keys]]\ntenant = \"{tenant}\"\nname = \"{name}\"\nsha256 = \"{sha256}\""
    );
    ExitCode::SUCCESS
}

fn print_token(config: &Config, user: &str, tenant: &str, ttl: Duration) -> ExitCode {
    for (key, id) in [("--user", user), ("--tenant", tenant)] {
        if let Err(error) = validate_id(id) {
            eprintln!("peroxo: {key} {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    match sign_token(&config.auth, &UserKey::new(tenant, user), ttl) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("peroxo: configuration error: {error}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Runs a gateway node until SIGINT or SIGTERM; on SIGHUP it reloads its configuration
/// with `reload_config` and applies what can change live.
async fn serve(
    config: Config,
    auth: Authenticator,
    pid_file: Option<PathBuf>,
    logging: Logging,
    reload_config: impl Fn() -> Result<(Config, Authenticator), ConfigError>,
) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let mut hangups = reload::hangup_signal()?;
    let gateway = Gateway::start_with(config, auth).await?;
    let state = pid_file.map(reload::StateFile::new);
    if let Some(state) = &state {
        state.started(&gateway.applied_config())?;
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = hangups.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let outcome = match reload_config() {
                    Ok((config, auth)) => {
                        let report = gateway.reload(&config, auth).await;
                        logging.apply(&config, &report);
                        Ok(report)
                    }
                    Err(error) => {
                        gateway.reload_rejected(&error);
                        Err(error)
                    }
                };
                if let Some(state) = &state
                    && let Err(error) = state.reloaded(&gateway.applied_config(), &outcome)
                {
                    tracing::error!("{error:#}");
                }
            }
        }
    }
    tracing::info!("shutting down");
    gateway.shutdown().await;
    if let Some(state) = &state {
        state.remove();
    }
    Ok(())
}

async fn store(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let mut hangups = reload::hangup_signal()?;
    let mut store =
        StoreServer::start_with(&config.storage, &config.retention, &config.events).await?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutting down");
                store.stop().await;
                return Ok(());
            }
            result = store.stopped() => return result,
            Some(()) = hangups.recv() => tracing::warn!(
                "SIGHUP: the storage service changes nothing live; restart it to apply a new \
                 configuration"
            ),
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed at once, before any
/// port is bound: a signal that arrives while the process starts still shuts it down
/// gracefully instead of killing it.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
