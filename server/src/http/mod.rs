//! The HTTP server: one `router()` per resource module, merged here, plus the
//! Leptos pages.

mod datasets;
mod extract;
mod health;
mod questions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::FromRef;
use leptos::config::LeptosOptions;
use sqlx::PgPool;
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

pub use extract::ApiJson;

/// Shared state of every handler.
#[derive(Clone)]
pub struct ApiContext {
    pub db: PgPool,
    pub config: Arc<HttpConfig>,
}

#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub data_dir: PathBuf,
    pub static_dir: PathBuf,
}

/// Axum state: the API context plus what Leptos needs.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub api: ApiContext,
    pub leptos_options: LeptosOptions,
}

pub fn router(api: ApiContext) -> Router {
    let static_dir = api.config.static_dir.clone();
    let leptos_options = crate::ui::leptos_options(&static_dir);
    let state = AppState { api: api.clone(), leptos_options };
    let api_routes = Router::new()
        .merge(datasets::router())
        .merge(questions::router())
        .fallback(|| async { crate::error::Error::NotFound("API endpoint".to_owned()) });
    Router::new()
        .merge(health::router())
        .nest("/api/v1", api_routes)
        .nest_service("/static", ServeDir::new(&static_dir).precompressed_gzip())
        .merge(crate::ui::router(&state))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    api: ApiContext,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    on_listening(listener.local_addr()?);
    axum::serve(listener, router(api)).with_graceful_shutdown(shutdown).await.context("HTTP server failed")
}
