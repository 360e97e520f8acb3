//! Starting and stopping the storage service: `peroxo store`, or embedded in a gateway
//! process. It binds its listener here, so tests run it on port 0 exactly as `main` runs it
//! on the configured port.

use std::net::SocketAddr;

use anyhow::Context;
use peroxo_config::{ConfigError, StorageBackend, StorageConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{PostgresStore, SqliteStore, grpc};

/// A running storage service.
pub struct StoreServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl StoreServer {
    /// Opens the configured backend and serves it on `storage.listen`.
    pub async fn start(config: &StorageConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on storage.listen = {}", config.listen))?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = match config.backend {
            StorageBackend::Sqlite => {
                let store = SqliteStore::open(&config.sqlite_path, config.sqlite_synchronous)
                    .with_context(|| {
                        format!(
                            "cannot open the SQLite database {}",
                            config.sqlite_path.display()
                        )
                    })?;
                tokio::spawn(grpc::serve(store, listener, shutdown))
            }
            StorageBackend::Postgres => {
                let store =
                    PostgresStore::open(config.postgres.url.expose(), config.postgres.pool_size)
                        .await
                        .context("cannot open the PostgreSQL database (storage.postgres.url)")?;
                tokio::spawn(grpc::serve(store, listener, shutdown))
            }
        };
        tracing::info!(%addr, backend = ?config.backend, "storage service listening (gRPC)");
        Ok(Self { addr, stop, task })
    }

    /// Stops accepting calls, lets calls under way finish, and returns.
    pub async fn stop(self) {
        self.stop.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "storage service failed"),
            Err(error) => tracing::error!(%error, "storage service task failed"),
        }
    }

    /// Completes when the service stops on its own (it failed).
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await??;
        Ok(())
    }
}

/// Checks what only the storage service knows of `[storage]` (the PostgreSQL URL's syntax),
/// before anything starts; [`peroxo_config::Config::validate`] checks the rest.
pub fn check_config(config: &StorageConfig) -> Result<(), ConfigError> {
    let url = config.postgres.url.expose();
    if config.backend == StorageBackend::Postgres && url.parse::<tokio_postgres::Config>().is_err()
    {
        return Err(ConfigError::new(
            "storage.postgres.url",
            "not a PostgreSQL connection URL like \"postgres://user@host:5432/db\"",
        ));
    }
    Ok(())
}
