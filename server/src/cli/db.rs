//! `rlt db start|stop|url`: the embedded cluster on its own, for tests,
//! psql sessions and `cargo sqlx prepare`.

use clap::{Args, Subcommand};

use super::GlobalArgs;
use crate::embedded_pg::{ClusterOptions, EmbeddedPostgres};

#[derive(Debug, Args)]
pub struct DbArgs {
    #[command(subcommand)]
    command: DbCommand,
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Create (if needed) and start the cluster, then print its DATABASE_URL.
    Start {
        /// Turn off fsync: faster, but a crash can lose data. For test clusters only.
        #[arg(long)]
        unsafe_fast: bool,
    },
    /// Stop the cluster if it is running.
    Stop,
    /// Print the cluster's DATABASE_URL.
    Url,
}

pub async fn run(global: &GlobalArgs, args: DbArgs) -> anyhow::Result<()> {
    let cluster = EmbeddedPostgres::new(&global.data_dir)?;
    match args.command {
        DbCommand::Start { unsafe_fast } => {
            cluster.ensure_running(&ClusterOptions { unsafe_fast }).await?;
            super::print_line(cluster.url())?;
        }
        DbCommand::Stop => cluster.stop().await?,
        DbCommand::Url => super::print_line(cluster.url())?,
    }
    Ok(())
}
