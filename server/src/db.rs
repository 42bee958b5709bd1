//! Connecting to Postgres: the server given by `DATABASE_URL`, or the
//! embedded cluster in the data directory.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::embedded_pg::{ClusterOptions, EmbeddedPostgres};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// An open pool, plus the embedded cluster if this process started it.
pub struct Database {
    pub pool: PgPool,
    embedded: Option<EmbeddedPostgres>,
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
        let (options, embedded) = match database_url {
            Some(url) => {
                let options: PgConnectOptions = url.parse().context("DATABASE_URL is not a valid Postgres URL")?;
                (options, None)
            }
            None => {
                let cluster = EmbeddedPostgres::new(data_dir)?;
                let started = cluster.ensure_running(&ClusterOptions::default()).await?;
                let options = cluster.connect_options();
                (options, (started || own_cluster).then_some(cluster))
            }
        };
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .context("connecting to Postgres")?;
        MIGRATOR.run(&pool).await.context("running database migrations")?;
        Ok(Self { pool, embedded })
    }

    /// Closes the pool, then stops the embedded cluster if this process owns it.
    pub async fn close(self) -> anyhow::Result<()> {
        self.pool.close().await;
        if let Some(cluster) = self.embedded {
            cluster.stop().await?;
        }
        Ok(())
    }
}
