//! The `peroxo` command: parses the command line, loads the configuration, sets up logging and
//! runs a gateway node or a storage service until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use peroxo::config::{AuthMode, Config, LogFormat};
use peroxo::{Gateway, StoreServer};
use tracing_subscriber::EnvFilter;

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
    },
    /// Run the storage service alone (gateways point `storage.endpoint` at it).
    Store {
        /// The configuration file [default: config.toml, if present].
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    let (path, dev) = match &cli.command {
        Command::Serve { config, dev } => (config, *dev),
        Command::Store { config } => (config, false),
    };
    // The default file may be absent (all defaults apply); a file named explicitly must exist.
    let default_path = PathBuf::from(DEFAULT_CONFIG);
    let (path, required) = match path {
        Some(path) => (path, true),
        None => (&default_path, false),
    };
    let mut config = match Config::load(path, required, std::env::vars()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("peroxo: configuration error: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if dev {
        config.auth.mode = AuthMode::Dev;
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("peroxo: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { .. } => serve(config).await,
            Command::Store { .. } => store(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("peroxo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let gateway = Gateway::start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}

async fn store(config: Config) -> anyhow::Result<()> {
    let mut store = StoreServer::start(&config.storage).await?;
    tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            store.stop().await;
            Ok(())
        }
        result = store.stopped() => result,
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
