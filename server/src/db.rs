//! Connecting to Postgres: the server given by `DATABASE_URL`, or the
//! embedded cluster in the data directory.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::embedded_pg::{ClusterOptions, EmbeddedPostgres};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// An open pool, plus the embedded cluster if this process started it.
pub struct Database {
    pub pool: PgPool,
    embedded: Option<EmbeddedPostgres>,
    /// Held shared while this process uses the embedded cluster, so the
    /// owner never stops it under another `rlt` process (a second server, a
    /// CLI command) that is still connected.
    users_lock: Option<Flock<File>>,
}

impl Database {
    /// Connects and brings the schema up to date. Without a URL the embedded
    /// cluster is used; `own_cluster` makes this process stop it on `close`
    /// even when another process had started it (the server takes ownership,
    /// one-shot commands leave a running cluster as they found it).
    pub async fn open(
        database_url: Option<&str>,
        data_dir: &Path,
        max_connections: u32,
        own_cluster: bool,
    ) -> anyhow::Result<Self> {
        let (options, embedded, users_lock) = match database_url {
            Some(url) => {
                let options: PgConnectOptions = url.parse().context("DATABASE_URL is not a valid Postgres URL")?;
                (options, None, None)
            }
            None => {
                let cluster = EmbeddedPostgres::new(data_dir)?;
                let lock = users_lock(&cluster)?;
                let started = cluster.ensure_running(&ClusterOptions::default()).await?;
                let options = cluster.connect_options();
                (options, (started || own_cluster).then_some(cluster), Some(lock))
            }
        };
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .context("connecting to Postgres")?;
        MIGRATOR.run(&pool).await.context("running database migrations")?;
        Ok(Self { pool, embedded, users_lock })
    }

    /// Closes the pool, then stops the embedded cluster if this process owns it.
    pub async fn close(self) -> anyhow::Result<()> {
        self.pool.close().await;
        if let Some(cluster) = self.embedded {
            let alone = self.users_lock.as_ref().is_none_or(|l| l.relock(FlockArg::LockExclusiveNonblock).is_ok());
            if alone {
                cluster.stop().await?;
            } else {
                tracing::info!("another rlt process still uses the embedded Postgres; leaving it running");
            }
        }
        Ok(())
    }
}

fn users_lock(cluster: &EmbeddedPostgres) -> anyhow::Result<Flock<File>> {
    let root = cluster.pgdata().parent().expect("pgdata has a parent");
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let path = root.join("users.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Flock::lock(file, FlockArg::LockShared).map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}
