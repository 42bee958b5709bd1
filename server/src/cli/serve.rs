//! `rlt serve`: the web app and API on one port.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::GlobalArgs;
use crate::db::Database;
use crate::http::{self, ApiContext, HttpConfig};

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
    let config = HttpConfig {
        data_dir: global.data_dir.clone(),
        static_dir: args.static_dir.clone().unwrap_or_else(default_static_dir),
    };
    let ctx = ApiContext { db: db.pool.clone(), config: Arc::new(config) };
    let addr = SocketAddr::new(args.bind, args.port);
    http::serve(ctx, addr, shutdown_signal(), |local| {
        let host = if local.ip().is_unspecified() { "127.0.0.1".to_owned() } else { local.ip().to_string() };
        println!("RLT Studio is running at http://{host}:{}/", local.port());
        tracing::info!(%local, "listening");
    })
    .await
}

/// `./static` when run from the repository, else the one next to the sources.
fn default_static_dir() -> PathBuf {
    let here = PathBuf::from("static");
    if here.is_dir() { here } else { PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../static")) }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
