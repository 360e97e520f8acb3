//! `peroxo user export` and `peroxo user erase`: one user's data, read or erased in the
//! configured database directly (see `peroxo_storage::user_data` for why not through the
//! service). Both may run while nodes serve.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use peroxo_config::Config;
use peroxo_protocol::domain::{DEFAULT_TENANT, UserKey, validate_id};
use peroxo_storage::StoreBackend;
use peroxo_storage::user_data::UserDataError;

use super::EXIT_USAGE;

/// Exit status for a user the tenant does not have (EX_NOUSER).
const EXIT_NO_USER: u8 = 67;

#[derive(Subcommand)]
pub(crate) enum UserAction {
    /// Write the user's conversations (with read state), messages sent and received, and
    /// stream events as JSON lines, one object per line with a `type`.
    Export {
        #[command(flatten)]
        who: Who,
        /// The file to write; it must not exist [default: standard output].
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Erase the text of every message the user sent (each stays, empty and marked
    /// `erased`) and the user's read state, in batches; a re-run carries on or does nothing.
    Erase {
        #[command(flatten)]
        who: Who,
        /// Messages (or conversations) per transaction.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        batch: u32,
    },
}

/// Which user, and where the configuration is.
#[derive(Args)]
pub(crate) struct Who {
    /// The configuration file [default: config.toml, if present].
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// The user's tenant.
    #[arg(long, default_value = DEFAULT_TENANT)]
    tenant: String,
    /// The user id.
    #[arg(long)]
    user: String,
}

impl UserAction {
    pub(crate) fn config(&self) -> &Option<PathBuf> {
        match self {
            UserAction::Export { who, .. } | UserAction::Erase { who, .. } => &who.config,
        }
    }
}

/// Runs `action` on the database `config` names.
pub(crate) fn run(config: &Config, action: UserAction) -> ExitCode {
    let who = match &action {
        UserAction::Export { who, .. } | UserAction::Erase { who, .. } => who,
    };
    for (key, id) in [("--user", &who.user), ("--tenant", &who.tenant)] {
        if let Err(error) = validate_id(id) {
            eprintln!("peroxo: {key} {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let user = UserKey::new(&who.tenant, &who.user);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("peroxo: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let store = match StoreBackend::open(&config.storage).await {
            Ok(store) => store,
            Err(error) => {
                eprintln!("peroxo: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        match action {
            UserAction::Export { to, .. } => export(&store, &user, to.as_deref()).await,
            UserAction::Erase { batch, .. } => erase(&store, &user, batch).await,
        }
    })
}

async fn export(store: &StoreBackend, user: &UserKey, to: Option<&Path>) -> ExitCode {
    let (mut out, name): (Box<dyn Write + Send>, String) = match to {
        None => (Box::new(std::io::stdout()), "standard output".to_owned()),
        Some(path) => match std::fs::File::create_new(path) {
            Ok(file) => (Box::new(file), path.display().to_string()),
            Err(error) => {
                eprintln!("peroxo: cannot create {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        },
    };
    let mut out = BufWriter::new(&mut out);
    match store.export_user(user, &mut out).await {
        Ok(report) => {
            eprintln!(
                "exported {} (tenant {}) to {name}: {} conversations, {} messages, {} events",
                user.user, user.tenant, report.conversations, report.messages, report.events
            );
            ExitCode::SUCCESS
        }
        Err(error) => failed("export", &error),
    }
}

async fn erase(store: &StoreBackend, user: &UserKey, batch: u32) -> ExitCode {
    match store.erase_user(user, batch, None).await {
        Ok(report) if report.texts == 0 && report.event_texts == 0 && report.read_states == 0 => {
            println!(
                "nothing to erase for {} (tenant {}): already erased",
                user.user, user.tenant
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!(
                "erased {} (tenant {}): {} message texts, {} event text previews, read state of {} \
                 conversations, in {} batches",
                user.user,
                user.tenant,
                report.texts,
                report.event_texts,
                report.read_states,
                report.batches
            );
            ExitCode::SUCCESS
        }
        Err(error) => failed("erase", &error),
    }
}

fn failed(what: &str, error: &UserDataError) -> ExitCode {
    eprintln!("peroxo: {what} failed: {error}");
    match error {
        UserDataError::UnknownUser { .. } => ExitCode::from(EXIT_NO_USER),
        _ => ExitCode::FAILURE,
    }
}
