//! Starting and stopping the storage service: `peroxo store`, or embedded in a gateway
//! process. It binds its listener here, so tests run it on port 0 exactly as `main` runs it
//! on the configured port. When `[retention]` sets an age or `[events]` is on, the service
//! also runs the retention task ([`retention`](crate::retention)) beside the gRPC server; the
//! backend writes outbox events as `[events]` says.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use peroxo_config::{ConfigError, EventsConfig, RetentionConfig, StorageBackend, StorageConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::retention::{self, RetentionReport, RetentionStats};
use std::io::Write;

use crate::user_data::{self, EraseReport, ExportReport, UserDataError};
use crate::{
    LsmStore, MessageStore, OutboxSettings, PostgresStore, PruneBatch, SqliteStore, StoreError,
    grpc,
};
use peroxo_protocol::domain::UserKey;

/// A running storage service.
pub struct StoreServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The backend it serves, for retention passes asked for directly.
    backend: StoreBackend,
    /// What retention did since the service started.
    retention: Arc<RetentionStats>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The retention task, when `[retention]` sets an age or `[events]` is on.
    retention_task: Option<JoinHandle<()>>,
}

/// The configured backend, opened: what the storage service serves, and what operator
/// commands (`peroxo user`) work on directly. Both are cheap to clone.
#[derive(Debug, Clone)]
pub enum StoreBackend {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
    Lsm(LsmStore),
}

/// Evaluates `$body` with `$store` bound to the backend `$backend` holds, whichever it is.
macro_rules! with_store {
    ($backend:expr, $store:ident => $body:expr) => {
        match $backend {
            StoreBackend::Sqlite($store) => $body,
            StoreBackend::Postgres($store) => $body,
            StoreBackend::Lsm($store) => $body,
        }
    };
}

impl StoreBackend {
    /// Opens (and migrates) the database `[storage]` names. A SQLite database may be open in
    /// a running service at the same time: writes of both wait for each other.
    pub async fn open(config: &StorageConfig) -> anyhow::Result<Self> {
        Self::open_with(config, OutboxSettings::default()).await
    }

    /// [`StoreBackend::open`], writing outbox events as `outbox` says.
    pub async fn open_with(config: &StorageConfig, outbox: OutboxSettings) -> anyhow::Result<Self> {
        Ok(match config.backend {
            StorageBackend::Sqlite => Self::Sqlite(
                SqliteStore::open_with(&config.sqlite_path, config.sqlite_synchronous, outbox)
                    .with_context(|| {
                        format!(
                            "cannot open the SQLite database {}",
                            config.sqlite_path.display()
                        )
                    })?,
            ),
            StorageBackend::Postgres => Self::Postgres(
                PostgresStore::open_with(
                    config.postgres.url.expose(),
                    config.postgres.pool_size,
                    outbox,
                )
                .await
                .context("cannot open the PostgreSQL database (storage.postgres.url)")?,
            ),
            StorageBackend::Lsm => Self::Lsm(
                LsmStore::open_with(&config.lsm_path, config.lsm_synchronous, outbox)
                    .with_context(|| {
                        format!(
                            "cannot open the lsm database {} (storage.lsm_path)",
                            config.lsm_path.display()
                        )
                    })?,
            ),
        })
    }

    /// Writes `user`'s data to `out`, as [`user_data::export`] says.
    pub async fn export_user(
        &self,
        user: &UserKey,
        out: &mut (impl Write + Send),
    ) -> Result<ExportReport, UserDataError> {
        with_store!(self, store => user_data::export(store, user, out).await)
    }

    /// Erases `user`'s data, as [`user_data::erase`] says.
    pub async fn erase_user(
        &self,
        user: &UserKey,
        batch: u32,
        max_batches: Option<u64>,
    ) -> Result<EraseReport, UserDataError> {
        with_store!(self, store => user_data::erase(store, user, batch, max_batches).await)
    }
}

impl StoreServer {
    /// Opens the configured backend and serves it on `storage.listen`, without retention.
    pub async fn start(config: &StorageConfig) -> anyhow::Result<Self> {
        Self::start_with_retention(config, &RetentionConfig::default()).await
    }

    /// Opens the configured backend, serves it on `storage.listen`, and runs the retention
    /// task when `retention` sets an age for any tenant; outbox events as `[events]` does by
    /// default.
    pub async fn start_with_retention(
        config: &StorageConfig,
        retention: &RetentionConfig,
    ) -> anyhow::Result<Self> {
        Self::start_with(config, retention, &EventsConfig::default()).await
    }

    /// Opens the configured backend, writing outbox events as `events` says, serves it on
    /// `storage.listen`, and runs the retention task when `retention` sets an age for any
    /// tenant or `events` is on.
    pub async fn start_with(
        config: &StorageConfig,
        retention: &RetentionConfig,
        events: &EventsConfig,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on storage.listen = {}", config.listen))?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let backend = StoreBackend::open_with(config, OutboxSettings::from(events)).await?;
        let task = with_store!(backend.clone(), store => tokio::spawn(grpc::serve(store, listener, shutdown)));
        tracing::info!(%addr, backend = ?config.backend, "storage service listening (gRPC)");
        let stats = Arc::new(RetentionStats::default());
        let retention_task = (retention.enabled() || events.enabled).then(|| {
            tracing::info!(
                max_age = ?retention.max_age,
                tenants = retention.tenants.len(),
                events_retention = ?events.enabled.then_some(events.retention),
                interval = ?retention.interval,
                batch = retention.batch,
                "retention on"
            );
            let (config, events) = (retention.clone(), events.clone());
            let (stats, stop) = (Arc::clone(&stats), stop.clone());
            with_store!(backend.clone(), store => tokio::spawn(retention::run(store, config, events, stats, stop)))
        });
        Ok(Self {
            addr,
            backend,
            retention: stats,
            stop,
            task,
            retention_task,
        })
    }

    /// The backend it serves: what operator commands and tests use while it runs (the lsm
    /// backend's database opens in one place at a time).
    pub fn backend(&self) -> &StoreBackend {
        &self.backend
    }

    /// What retention did since the service started.
    pub fn retention_stats(&self) -> Arc<RetentionStats> {
        Arc::clone(&self.retention)
    }

    /// Runs one retention pass now, as if the time were `now_ms`, under `config` (whatever
    /// the service was started with). The background task's passes and this one may overlap:
    /// each batch is a transaction of its own, so they only share the work.
    pub async fn retention_pass(
        &self,
        config: &RetentionConfig,
        now_ms: i64,
    ) -> Result<RetentionReport, StoreError> {
        with_store!(&self.backend, store => retention::pass(store, config, now_ms).await)
    }

    /// Runs one retention pass of the outbox now, as if the time were `now_ms`, under
    /// `events` in batches of `batch` (whatever the service was started with).
    pub async fn events_retention_pass(
        &self,
        events: &EventsConfig,
        batch: u32,
        now_ms: i64,
    ) -> Result<RetentionReport, StoreError> {
        with_store!(&self.backend, store => retention::events_pass(store, events, batch, now_ms).await)
    }

    /// Runs one batch of retention now: what a pass interrupted after it would have done.
    pub async fn prune_batch(&self, batch: PruneBatch) -> Result<u64, StoreError> {
        with_store!(&self.backend, store => store.prune(batch).await)
    }

    /// Stops accepting calls, lets calls under way finish, and returns.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.retention_task
            && let Err(error) = task.await
        {
            tracing::error!(%error, "retention task failed");
        }
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
