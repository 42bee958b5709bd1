//! `rlt serve`: the web app, the API and in-process workers on one machine.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use tokio::sync::watch;

use super::GlobalArgs;
use super::worker::WorkerArgs;
use crate::db::Database;
use crate::http::{self, ApiContext, HttpConfig};
use crate::jobs::events::EventHub;
use crate::jobs::{Registry, worker};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "RLT_BIND", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "RLT_PORT", default_value_t = 8080)]
    port: u16,
    /// Do not import the demo datasets on first start.
    #[arg(long, env = "RLT_NO_DEMO")]
    no_demo: bool,
    /// Directory with style sheets, fonts and the built wasm bundle.
    #[arg(long, env = "RLT_STATIC_DIR")]
    static_dir: Option<PathBuf>,
    /// Database connections in the pool.
    #[arg(long, env = "RLT_DB_CONNECTIONS", default_value_t = 16)]
    db_connections: u32,
    /// In-process job workers (0 leaves all jobs to `rlt worker` processes).
    #[arg(long, env = "RLT_WORKERS", default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    worker: WorkerArgs,
}

pub async fn run(global: &GlobalArgs, args: ServeArgs) -> anyhow::Result<()> {
    let db = Database::open(global.database_url.as_deref(), &global.data_dir, args.db_connections, true).await?;
    let served = serve(global, &args, &db).await;
    // Stop the embedded cluster even when serving failed, so no postmaster is left behind.
    db.close().await?;
    served
}

async fn serve(global: &GlobalArgs, args: &ServeArgs, db: &Database) -> anyhow::Result<()> {
    if !args.no_demo {
        crate::demo::import_once(&db.pool, &global.data_dir).await?;
    }
    // Experiments need the default model in the registry; hashing it once
    // here keeps the first request fast.
    let registry = Arc::new(Registry::standard());
    match crate::models::ensure_default(&db.pool, &global.data_dir).await {
        Ok(model) => {
            tracing::info!(model = %model.name, sha256 = %model.sha256, "default model registered");
            if !args.no_demo {
                crate::demo::start_run_once(&db.pool, &registry, model.id).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "the default model is not available"),
    }
    let events = EventHub::start(db.pool.clone());
    let artifacts = global.artifacts()?;
    tracing::info!(location = %artifacts.location, "artifact store");
    let (stop_workers, workers_stopped) = watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        let config = args.worker.config(&global.data_dir, &artifacts)?;
        workers.push(tokio::spawn(worker::run(
            db.pool.clone(),
            registry.clone(),
            events.clone(),
            config,
            workers_stopped.clone(),
        )));
    }

    let config = HttpConfig {
        data_dir: global.data_dir.clone(),
        static_dir: args.static_dir.clone().unwrap_or_else(default_static_dir),
    };
    let ctx = ApiContext { db: db.pool.clone(), config: Arc::new(config), registry, events };
    let addr = SocketAddr::new(args.bind, args.port);
    let served = http::serve(ctx, addr, super::shutdown_signal(), |local| {
        let host = if local.ip().is_unspecified() { "127.0.0.1".to_owned() } else { local.ip().to_string() };
        println!("RLT Studio is running at http://{host}:{}/", local.port());
        tracing::info!(%local, "listening");
    })
    .await;
    // A job in flight goes back to the queue and resumes on the next start.
    let _ = stop_workers.send(true);
    for w in workers {
        if let Ok(Err(e)) = w.await {
            tracing::warn!(error = %e, "worker ended with an error");
        }
    }
    served
}

/// `./static` when run from the repository, else the one next to the sources.
fn default_static_dir() -> PathBuf {
    let here = PathBuf::from("static");
    if here.is_dir() { here } else { PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../static")) }
}
